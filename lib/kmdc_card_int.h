/*
 * kmdc_card_int.h - what the parts of the card share, inside lib/ only: the
 * card in memory and a few helpers.  kmdc_card.h stays the public header;
 * the parts are
 *   kmdc_card.c         the card in memory, validation, passphrase files;
 *   kmdc_card_format.c  the file format: scrypt, serialise, parse, load, save;
 *   kmdc_card_chain.c   activation and the up and down chains;
 *   kmdc_card_lock.c    the lock files;
 *   kmdc_card_outbox.c  the outbox of sealed, not yet answered envelopes.
 */
#ifndef KMDC_CARD_INT_H
#define KMDC_CARD_INT_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_card.h"

typedef struct skip_ent {
    uint64_t seq;
    uint8_t mk[KMDC_KEY_LEN];
} skip_ent;

typedef struct dlv_ent {
    uint64_t id;
    char *name;   /* NUL-terminated, len bytes */
    size_t len;
} dlv_ent;

struct kmdc_card {
    uint64_t serial;
    kmdc_card_state state;
    char address[65];
    size_t address_len;
    char *url;
    size_t url_len;
    uint8_t up_ck[KMDC_KEY_LEN];
    uint64_t up_next;
    uint8_t down_ck[KMDC_KEY_LEN];
    uint64_t down_next;
    uint8_t ak[KMDC_KEY_LEN];
    int has_r;
    uint8_t r[KMDC_KEY_LEN];
    size_t nskip;                                /* sorted by seq, ascending */
    skip_ent skip[KMDC_CARD_MAX_SKIPPED];
    size_t ndlv;                                 /* oldest first */
    dlv_ent dlv[KMDC_CARD_MAX_DELIVERIES];
    unsigned log2n, sr, sp;                      /* scrypt parameters */
    int protect;                                 /* loaded from a protected file */
};

/* "out of memory" (KMDC_ERR_INTERNAL). */
kmdc_status kmdc_card_oom(kmdc_err *err);

/* malloc'd a || b || c, NULL when out of memory. */
char *kmdc_card_str3(const char *a, const char *b, const char *c);

/* kmdc_path_split, refusing a card path that names a folder. */
kmdc_status kmdc_card_split_path(const char *path, char **dir, const char **base,
                                 kmdc_err *err);

/* 1 when the datacenter URL is 1..KMDC_CARD_MAX_URL printable ASCII bytes. */
int kmdc_card_url_valid(const char *s, size_t len);

/* 1 when the scrypt parameters lie within the bounds kmdc_card.h states. */
int kmdc_card_kdf_valid(unsigned log2n, unsigned r, unsigned p);

/* A zeroed card with the default scrypt parameters, NULL when out of memory. */
kmdc_card *kmdc_card_alloc(void);

/* qsort comparison of two uint64_t. */
int kmdc_card_cmp_u64(const void *a, const void *b);

#endif
