/*
 * vecio.h - JSON helpers shared by the vector generator (tools/kmdc_vectors.c)
 * and the test that recomputes the vectors (tests/test_vectors.c).
 */
#ifndef KMDC_VECIO_H
#define KMDC_VECIO_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "kmdc_tlv.h"

/* Set key to the lowercase hex of p[0..len). */
void vec_set_hex(json_t *obj, const char *key, const uint8_t *p, size_t len);

/* Set key to a u64 as a JSON integer when it fits in int64, which every
 * protocol value does (serials, counters, times, sizes). */
void vec_set_u64(json_t *obj, const char *key, uint64_t v);

/* Decode obj[key] (lowercase hex) into out; returns the length or -1 when
 * missing, malformed or longer than cap. */
long vec_get_hex(const json_t *obj, const char *key, uint8_t *out, size_t cap);

/* obj[key] as u64; returns 0 on success, -1 when missing or negative. */
int vec_get_u64(const json_t *obj, const char *key, uint64_t *out);

/* The documents in vectors: byte i of a document of length n is i mod 251. */
void vec_document(uint8_t *out, size_t n);

/* meta <-> JSON object ("rcpt": [..], "name": "...", "type", "size", "sent",
 * "from", "fromserial", "msgid", "rcvd"; absent fields are omitted). */
json_t *vec_meta_to_json(const kmdc_meta *m);
int vec_meta_from_json(kmdc_meta *m, const json_t *obj);

/* A growing byte buffer usable as a kmdc_emit_fn target. */
struct vec_buf {
    uint8_t *p;
    size_t len, cap;
};
kmdc_status vec_buf_emit(void *arg, const uint8_t *p, size_t len, kmdc_err *err);
void vec_buf_free(struct vec_buf *b);

#endif
