/*
 * kmdc_intake.h - the datacenter's send intake (docs/PROTOCOL.md 4): an
 * httpd-free state machine over the bytes of one up envelope, against a
 * store (kmdc_store.h).  The endpoint feeds it the request body as it
 * arrives and writes the answer it decides; nothing here knows HTTP framing
 * beyond status numbers.
 *
 * The states are the steps, in this order (one function each in
 * kmdc_intake.c, in the same order):
 *
 *   PREFIX      read header || u32 kb_len || keyblock and check their framing
 *               (magic, version, direction, flags, serial, kb_len range).
 *               Nothing is looked up before the whole prefix is here, so a
 *               framing error (400 bad_envelope) and a body that ends inside
 *               the prefix (400 incomplete) answer the same whatever the card.
 *   SENDER      step 1: load the sender's card and the receipt of its seq in
 *               one read; below up_next go to RETRY; check status and window;
 *               derive MK_seq from a copy of the chain and open the keyblock.
 *               Every refusal here is the same 403 rejected, and costs the
 *               same work whatever the card (a dummy unwrap and derivation
 *               for a card that is unknown, inactive or outside the window).
 *   CHECK       step 1: SENT, the limits (recipients, size), the NAME rule
 *               (checked by the keyblock's TLV).  A refusal from here on
 *               spends the counter (a receipt over the prefix).
 *   RECIPIENTS  step 2: take an upload slot, resolve every RCPT to an active
 *               card and check its mailbox quota.
 *   PAYLOAD     step 2: verify each chunk, re-encrypt it under a fresh DEK
 *               and append the ciphertext to the upload in batches (a
 *               connection per batch, none while waiting for bytes).  A
 *               full batch is sent to the store, which writes it while the
 *               intake goes on with the next; its answer is collected
 *               (settled) before the next batch is sent, before the
 *               publication, before the intake answers otherwise or is
 *               freed, and when the endpoint calls kmdc_intake_settle()
 *               because it is about to wait for the client's bytes.  A
 *               batch's failure gives the answer it gave when batches were
 *               written one at a time (429 too_many_uploads when its slot
 *               was lost, else the store failure).
 *   END         step 3: the body ended: the last chunk verified, the last
 *               batch is written.
 *   PUBLISH     step 3: one transaction in the store; a counter spent meanwhile
 *               by a byte-identical retry is answered from its receipt.
 *   RETRY       seq below up_next: hash the body as far as the receipt's
 *               scope needs; the same bytes repeat the stored answer, any
 *               other are 403 rejected.
 *   ANSWERED    an answer is decided; later input is ignored.
 *
 * Passing failures (the body ended early, the store unavailable, too many
 * uploads at once) spend nothing.  Whatever happens, kmdc_intake_free()
 * releases the slot and drops an upload that was not published.
 */
#ifndef KMDC_INTAKE_H
#define KMDC_INTAKE_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"
#include "kmdc_keyring.h"
#include "kmdc_store.h"

/* Upload rows of about this many bytes (whole chunks). */
#define KMDC_INTAKE_BATCH_DEFAULT (4u << 20)

/* What the intake needs from the configuration. */
typedef struct kmdc_intake_conf {
    const kmdc_keyring *keys;       /* the master keys */
    int seq_window;                 /* KmdcSequenceWindow, 1 .. 1024 */
    int64_t envelope_max_age;       /* KmdcEnvelopeMaxAge, seconds */
    uint64_t max_document_size;     /* KmdcMaxDocumentSize, bytes */
    int max_recipients;             /* KmdcMaxRecipients, 1 .. 32 */
    int max_uploads_per_card;       /* KmdcMaxUploadsPerCard */
    int64_t mailbox_ttl;            /* KmdcMailboxTTL, seconds */
    int64_t quota_count;            /* KmdcMailboxQuota: deliveries */
    int64_t quota_bytes;            /* KmdcMailboxQuota: bytes */
    size_t batch_bytes;             /* 0: KMDC_INTAKE_BATCH_DEFAULT */
    uint64_t (*now_ms)(void);       /* the clock, Unix ms; NULL: the system's */
} kmdc_intake_conf;

/*
 * Bytes one delivery of a document of `size` bytes counts against a mailbox
 * quota: the down envelope's header, the largest keyblock frame and the
 * payload.  KmdcMailboxQuota must hold at least this for
 * KmdcMaxDocumentSize (the module checks it at start-up).
 */
uint64_t kmdc_intake_envelope_max(uint64_t size);

/* How an intake ended (the metrics' result label). */
typedef enum kmdc_intake_result {
    KMDC_INTAKE_ACCEPTED = 1,       /* 201: published */
    KMDC_INTAKE_REPEATED,           /* a byte-identical retry, from its receipt */
    KMDC_INTAKE_REFUSED,            /* refused after authentication: spent */
    KMDC_INTAKE_REJECTED,           /* refused without spending anything */
    KMDC_INTAKE_UNAVAILABLE         /* the store could not be used: 503 */
} kmdc_intake_result;

/* The decided answer. */
typedef struct kmdc_intake_answer {
    kmdc_intake_result result;
    int status;                     /* HTTP status: 200 for a repeated 201 */
    const char *code;               /* the error code; NULL for 201 and repeats */
    const char *body;               /* the JSON body */
    uint64_t message_id;            /* the message (Location), 0 for none */
    int retry_after;                /* 503: seconds the client should wait, else 0 */
} kmdc_intake_answer;

typedef struct kmdc_intake kmdc_intake;

/* A new intake.  conf and store must outlive it (conf is not copied). */
kmdc_intake *kmdc_intake_new(const kmdc_intake_conf *conf, kmdc_store *store,
                             kmdc_err *err);

/*
 * Feed the next bytes of the envelope.  Returns 1 while more are wanted, 0
 * once an answer is decided (stop reading: the rest of the body is not
 * needed, and the connection should not be reused).
 */
int kmdc_intake_feed(kmdc_intake *in, const uint8_t *p, size_t len);

/*
 * The caller is about to wait for more bytes: settle the batch the store is
 * writing (its connection goes back now; nothing may be held while the
 * client is waited for).  Returns 1 while more bytes are wanted, 0 once an
 * answer is decided (the batch failed: stop reading, as after feed).
 */
int kmdc_intake_settle(kmdc_intake *in);

/* The envelope's bytes ended (the body was read to its end and its framing
 * was valid): check that the envelope was complete, then publish. */
void kmdc_intake_finish(kmdc_intake *in);

/* Why the body could not be given whole. */
typedef enum kmdc_intake_cut {
    KMDC_INTAKE_CUT_BROKEN = 1,     /* a read error, the client went away: 400 incomplete */
    KMDC_INTAKE_CUT_TOO_LARGE       /* the server's own body limit: 413 too_large */
} kmdc_intake_cut;

/* The body could not be read to its end: answer for why (spends nothing). */
void kmdc_intake_cut_off(kmdc_intake *in, kmdc_intake_cut why);

/* The body around the envelope is malformed (the multipart framing, a serial
 * part that does not match): 400 with code and message; spends nothing. */
void kmdc_intake_refuse_framing(kmdc_intake *in, const char *code, const char *message);

/* The answer once decided (after feed returned 0, finish, cut_off or
 * refuse_framing), else NULL.  Valid until kmdc_intake_free. */
const kmdc_intake_answer *kmdc_intake_decision(const kmdc_intake *in);

/* 1 and *serial, *seq once the 40-byte header was read and framed. */
int kmdc_intake_header(const kmdc_intake *in, uint64_t *serial, uint64_t *seq);

/* Envelope bytes fed so far. */
uint64_t kmdc_intake_bytes(const kmdc_intake *in);

/* Recipients of an accepted envelope (0 before). */
size_t kmdc_intake_recipients(const kmdc_intake *in);

/* A message for the operator's log about an internal failure (a key that
 * cannot be unwrapped, ...), or NULL.  Never holds a secret or an address. */
const char *kmdc_intake_problem(const kmdc_intake *in);

/* Settle a batch still pending, release the slot, drop an unpublished
 * upload, wipe every key.  Accepts NULL. */
void kmdc_intake_free(kmdc_intake *in);

#endif
