/*
 * kmdc_util.h - wiping, constant-time comparison, big-endian integers, hex,
 * and the CSPRNG.  Every other file uses these rather than its own copies.
 */
#ifndef KMDC_UTIL_H
#define KMDC_UTIL_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"

#define KMDC_U63_MAX UINT64_C(0x7fffffffffffffff)

/* Erase len bytes at p in a way the compiler may not elide (OPENSSL_cleanse). */
void kmdc_wipe(void *p, size_t len);

/* Wipe then free.  Accepts NULL. */
void kmdc_freezero(void *p, size_t len);

/* Constant-time equality: 1 when equal lengths and equal bytes, else 0.
 * The length check is not secret; the content comparison is constant-time. */
int kmdc_ct_eq(const void *a, size_t alen, const void *b, size_t blen);

/* Fill buf with len cryptographically secure random bytes. */
kmdc_status kmdc_random(void *buf, size_t len, kmdc_err *err);

/* Big-endian encoders/decoders. */
void kmdc_put_u16(uint8_t *p, uint16_t v);
void kmdc_put_u32(uint8_t *p, uint32_t v);
void kmdc_put_u64(uint8_t *p, uint64_t v);
uint16_t kmdc_get_u16(const uint8_t *p);
uint32_t kmdc_get_u32(const uint8_t *p);
uint64_t kmdc_get_u64(const uint8_t *p);

/* Lowercase hex of len bytes into out (2*len+1 bytes incl. NUL). */
void kmdc_hex_encode(char *out, const uint8_t *in, size_t len);

/* The value 0..15 of one lowercase hex digit, -1 for anything else (the
 * protocol's hex: serials, keys, hashes). */
int kmdc_hex_nibble(char c);

/* The same, accepting A-F as well: for percent-escapes in urlencoded forms,
 * where RFC 3986 allows either case.  -1 for a non-hex character. */
int kmdc_hex_nibble_anycase(char c);

/* Decode exactly 2*outlen lowercase hex digits from in (inlen must equal
 * 2*outlen).  Uppercase is rejected: the protocol's hex is lowercase. */
kmdc_status kmdc_hex_decode(uint8_t *out, size_t outlen, const char *in,
                            size_t inlen, kmdc_err *err);

/* A serial as 16 lowercase hex digits (17 bytes incl. NUL). */
void kmdc_serial_format(char out[17], uint64_t serial);

/* Parse 16 lowercase hex digits into a serial in 1 .. 2^63-1. */
kmdc_status kmdc_serial_parse(uint64_t *serial, const char *s, size_t len,
                              kmdc_err *err);

/* Draw a random value in 1 .. 2^63-1 (serials, message ids). */
kmdc_status kmdc_random_u63(uint64_t *out, kmdc_err *err);

/* 1 when s[0..len) is a valid address: ^[a-z0-9][a-z0-9._-]{0,63}$ */
int kmdc_address_valid(const char *s, size_t len);

#endif
