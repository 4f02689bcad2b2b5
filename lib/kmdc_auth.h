/*
 * kmdc_auth.h - request authentication of KMDC/1 (docs/PROTOCOL.md section 5): the
 * Authorization header value, its strict parser, the signature, signing and
 * verification.
 *
 *   KMDC1-HMAC-SHA256 serial=<16 hex>,ts=<decimal>,nonce=<32 hex>,sig=<64 hex>
 *
 *   sig = HMAC(AK, "KMDC/1 request\n" || METHOD || "\n" || request-target ||
 *              "\n" || ts || "\n" || nonce || "\n" || hex(SHA-256(body)))
 *
 * ts enters the signature as its decimal text and nonce as its 32 lowercase
 * hex characters, both exactly as written in the header (the parser accepts
 * only the canonical spelling, so re-encoding the parsed values gives the
 * same text).  Recording nonces against replay is the caller's job.
 */
#ifndef KMDC_AUTH_H
#define KMDC_AUTH_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"

#define KMDC_AUTH_SCHEME "KMDC1-HMAC-SHA256"
#define KMDC_AUTH_NONCE_LEN 16
#define KMDC_AUTH_SIG_LEN 32
#define KMDC_AUTH_MAX_SKEW 300       /* seconds, docs/PROTOCOL.md section 5 */
/* Longest header value: scheme, space, serial, a 19-digit ts, nonce, sig. */
#define KMDC_AUTH_HDR_MAX 172
#define KMDC_AUTH_HDR_BUFSZ (KMDC_AUTH_HDR_MAX + 1)
/* Longest method and request-target accepted for signing. */
#define KMDC_AUTH_METHOD_MAX 32
#define KMDC_AUTH_TARGET_MAX 8192

/* A parsed Authorization header value. */
typedef struct kmdc_auth_hdr {
    uint64_t serial;                      /* 1 .. 2^63-1 */
    int64_t ts;                           /* Unix seconds, 0 .. INT64_MAX */
    uint8_t nonce[KMDC_AUTH_NONCE_LEN];
    uint8_t sig[KMDC_AUTH_SIG_LEN];
} kmdc_auth_hdr;

/*
 * Parse the header value value[0..len) (without "Authorization:" and without
 * the line ending) into out.  Strict: the scheme exactly as above followed by
 * exactly one space, the four parameters in that order separated by single
 * commas with no whitespace, lowercase hex of the exact length, ts in decimal
 * without sign or leading zero ("0" itself is allowed) that fits in int64,
 * serial in 1 .. 2^63-1, nothing after sig.  Any deviation (and any length
 * above KMDC_AUTH_HDR_MAX, any NUL byte) is KMDC_ERR_FORMAT; out is written
 * only on success.
 */
kmdc_status kmdc_auth_parse(const char *value, size_t len, kmdc_auth_hdr *out,
                            kmdc_err *err);

/*
 * Write the canonical header value of h into out (cap bytes, NUL-terminated;
 * KMDC_AUTH_HDR_BUFSZ always suffices).  KMDC_ERR_ARG when a field is out of
 * range or cap is too small.
 */
kmdc_status kmdc_auth_format(char *out, size_t cap, const kmdc_auth_hdr *h,
                             kmdc_err *err);

/*
 * Compute the signature of docs/PROTOCOL.md section 5 into sig: HMAC under the 32-byte ak of
 * the signing string built from method (e.g. "GET"), target (the raw
 * request-target as on the request line, query included), ts (>= 0, as
 * decimal text), the nonce (as 32 hex characters) and the SHA-256 of the body
 * (as 64 hex characters).  method and target are NUL-terminated, non-empty,
 * bounded (KMDC_AUTH_METHOD_MAX, KMDC_AUTH_TARGET_MAX) and may not contain
 * spaces or control characters (KMDC_ERR_ARG), so the string is unambiguous.
 */
kmdc_status kmdc_auth_sig(uint8_t sig[KMDC_AUTH_SIG_LEN], const uint8_t ak[32],
                          const char *method, const char *target, int64_t ts,
                          const uint8_t nonce[KMDC_AUTH_NONCE_LEN],
                          const uint8_t body_sha256[32], kmdc_err *err);

/*
 * Sign a request: hash body[0..bodylen) (body may be NULL when bodylen is 0),
 * draw a random nonce, sign with ts = now and write the full header value
 * (NUL-terminated) into out (cap >= KMDC_AUTH_HDR_BUFSZ is always enough).
 * serial must lie in 1 .. 2^63-1 and now be >= 0 (KMDC_ERR_ARG).
 */
kmdc_status kmdc_auth_sign(char *out, size_t cap, uint64_t serial,
                           const uint8_t ak[32], const char *method,
                           const char *target, const void *body, size_t bodylen,
                           int64_t now, kmdc_err *err);

/* kmdc_auth_sign with a caller-chosen nonce, for test vectors. */
kmdc_status kmdc_auth_sign_nonce(char *out, size_t cap, uint64_t serial,
                                 const uint8_t ak[32], const char *method,
                                 const char *target, const void *body,
                                 size_t bodylen, int64_t now,
                                 const uint8_t nonce[KMDC_AUTH_NONCE_LEN],
                                 kmdc_err *err);

/*
 * Verify a parsed header against the card's ak, the request's method and raw
 * target and the SHA-256 of the body as received.  The signature is checked
 * first, in constant time (KMDC_ERR_AUTH when it does not match), then the
 * clock: KMDC_ERR_STALE when |now - h->ts| > max_skew (max_skew >= 0, use
 * KMDC_AUTH_MAX_SKEW).  The caller must still record (serial, nonce) and
 * refuse a nonce seen before.
 */
kmdc_status kmdc_auth_verify(const kmdc_auth_hdr *h, const uint8_t ak[32],
                             const char *method, const char *target,
                             const uint8_t body_sha256[32], int64_t now,
                             int64_t max_skew, kmdc_err *err);

#endif
