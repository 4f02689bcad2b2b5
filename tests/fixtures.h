/*
 * fixtures.h - what the unit tests and the fuzz targets build their fixtures
 * from, one copy: a growable byte buffer (struct buf) and an emit callback
 * that appends to one, the fixed clock, the multipart boundary of the intake
 * cases, and the raw chain keys of a test card derived from its serial.
 *
 * tests/test_intake.c and fuzz/fuzz_intake.c must derive a card's keys the
 * same way: `test_intake --seeds DIR` writes authentic envelopes of the
 * fuzzer's cards.  Header only (static functions); memory exhaustion and a
 * failing hash abort, as nothing here can go on without them.
 */
#ifndef KMDC_TEST_FIXTURES_H
#define KMDC_TEST_FIXTURES_H

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_crypto.h"
#include "kmdc_util.h"

/* The fixed clock of the intake cases (2023-11-14 22:13:20 UTC). */
#define NOW_MS UINT64_C(1700000000000)

/* The multipart boundary of the request bodies the intake cases build. */
#define BOUNDARY "------------------------d74496d66958873e"
#define MP_TYPE "multipart/form-data; boundary=" BOUNDARY

__attribute__((unused)) static uint64_t
fixed_now(void)
{
    return NOW_MS;
}

struct buf {
    uint8_t *p;
    size_t n, cap;
};

__attribute__((unused)) static void
buf_add(struct buf *b, const void *p, size_t len)
{
    if (b->n + len > b->cap) {
        size_t cap = b->cap ? b->cap : 1024;
        while (cap < b->n + len)
            cap *= 2;
        if ((b->p = realloc(b->p, cap)) == NULL) {
            fprintf(stderr, "out of memory\n");
            abort();
        }
        b->cap = cap;
    }
    if (len > 0)
        memcpy(b->p + b->n, p, len);
    b->n += len;
}

__attribute__((unused)) static void
buf_str(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

__attribute__((unused)) static void
buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* A kmdc emit callback appending to the struct buf given as its argument. */
__attribute__((unused)) static kmdc_status
emit_buf(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    (void)err;
    buf_add(arg, p, len);
    return KMDC_OK;
}

/* The raw CK_0 of a test card's up (up = 1) or down chain: SHA-256 of 'u' or
 * 'd' and the serial (big-endian). */
__attribute__((unused)) static void
card_key(uint64_t serial, int up, uint8_t ck[32])
{
    uint8_t in[9];

    in[0] = up ? 'u' : 'd';
    kmdc_put_u64(in + 1, serial);
    if (kmdc_sha256(ck, in, sizeof(in), NULL) != KMDC_OK) {
        fprintf(stderr, "sha256 failed\n");
        abort();
    }
}

#endif
