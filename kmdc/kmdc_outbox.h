/*
 * kmdc_outbox.h - what each outbox entry was sealed from (docs/PROTOCOL.md section 4,
 * "clients never re-seal").
 *
 * Beside every envelope CARD.outbox/<seq>.kmdc the sender keeps a record
ZZ, the SHA-256 and size of the
 * document, the recipients (in envelope order), NAME, TYPE and when it was
 * sealed.  The record is written (temp file, fsync, rename) before the
 * envelope is committed, and removed after it.  `kmdc send` compares a FILE
 * with the records of the pending entries and resumes a match instead of
 * sealing the document a second time; `kmdc outbox` lists them.
 */
#ifndef KMDC_OUTBOX_H
#define KMDC_OUTBOX_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"
#include "kmdc_tlv.h"

#define KMDC_OUTBOX_FILE_MAX 4096

typedef struct kmdc_outbox_rec {
    uint64_t seq;
    char file[KMDC_OUTBOX_FILE_MAX];   /* FILE as given ("-": standard input) */
    uint8_t sha256[32];                /* of the document */
    kmdc_meta m;                       /* recipients, NAME, TYPE, SIZE, SENT */
} kmdc_outbox_rec;

/* Write rec as the record of entry rec->seq (atomic; the outbox exists). */
kmdc_status kmdc_outbox_rec_write(const char *card_path, const kmdc_outbox_rec *rec,
                                  kmdc_err *err);

/* Read the record of entry seq: 0, or -1 when there is none or it is not
 * readable (an entry written by an older kmdc, a damaged record). */
int kmdc_outbox_rec_read(const char *card_path, uint64_t seq, kmdc_outbox_rec *rec);

/* Remove the record of seq (after its envelope is gone); best effort. */
void kmdc_outbox_rec_remove(const char *card_path, uint64_t seq);

/* Remove records whose envelope is gone (a crash between the two removals or
 * before the commit).  pending[0..n) are the committed entries.  Call with
 * the SEND lock held. */
void kmdc_outbox_rec_sweep(const char *card_path, const uint64_t *pending, size_t n);

/* 1 when a and b describe the same send: same document (SHA-256, size), the
 * same recipients (in any order), NAME and TYPE. */
int kmdc_outbox_rec_same(const kmdc_outbox_rec *a, const kmdc_outbox_rec *b);

#endif
