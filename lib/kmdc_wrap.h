/*
 * kmdc_wrap.h - secrets at rest (docs/PROTOCOL.md section 8): wrapping card keys under a
 * master key, master key files, and the activation access codes
 * (docs/PROTOCOL.md section 7).
 *
 * A wrapped value is
 *   u32 key id || salt (24 random bytes) || AES-256-GCM(
 *       key = HKDF(salt, master, "KMDC/1 wrap", 32), iv = 12 zero bytes,
 *       aad = "KMDC/1 wrap" || u32 key id || u64 serial || field || u64 counter,
 *       plaintext = value) (ciphertext || 16-byte tag)
 * field is one of the ASCII names below (no length prefix, no terminator);
 * counter is the chain's next for a chain key and 0 for auth_key.
 *
 * An access code is 10 symbols of Crockford base32 (50 random bits), kept
 * only as
 *   HMAC(HKDF("", master, "KMDC/1 access code", 32), u64 serial || code)
 * where code is the 10-character canonical form (uppercase, no separators).
 * It is shown with an 11th, check symbol (kmdc_access_code_check) that lets
 * a client refuse a mistyped code before it spends an attempt; the check
 * symbol is never part of the MAC, so codes shown without one stay valid.
 */
#ifndef KMDC_WRAP_H
#define KMDC_WRAP_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"

#define KMDC_FIELD_UP_CHAIN "up_chain"
#define KMDC_FIELD_DOWN_CHAIN "down_chain"
#define KMDC_FIELD_AUTH_KEY "auth_key"

#define KMDC_MASTER_KEY_LEN 32
#define KMDC_WRAP_SALT_LEN 24
/* Bytes a wrapped value adds to its plaintext: key id, salt, tag. */
#define KMDC_WRAP_OVERHEAD (4 + KMDC_WRAP_SALT_LEN + 16)
/* Length of a wrapped 32-byte key (the cards' chain and request keys). */
#define KMDC_WRAPPED_LEN (KMDC_WRAP_OVERHEAD + 32)
/* Largest plaintext accepted (the values wrapped are 32-byte keys). */
#define KMDC_WRAP_MAX_VALUE 4096

#define KMDC_ACCESS_CODE_LEN 10        /* symbols; char buffers need 11 */

/*
 * Wrap value[0..vlen) (1 .. KMDC_WRAP_MAX_VALUE bytes) for card serial
 * (1 .. 2^63-1), field (KMDC_FIELD_*) and counter (0 .. 2^63-1) under the
 * 32-byte master key with identifier key_id, with a fresh random salt.
 * Writes vlen + KMDC_WRAP_OVERHEAD bytes to out (cap bytes) and sets *outlen.
 * KMDC_ERR_ARG on an unknown field, a value out of range or a short buffer.
 */
kmdc_status kmdc_wrap(uint8_t *out, size_t cap, size_t *outlen, uint32_t key_id,
                      const uint8_t master[KMDC_MASTER_KEY_LEN], uint64_t serial,
                      const char *field, uint64_t counter, const uint8_t *value,
                      size_t vlen, kmdc_err *err);

/* kmdc_wrap with a caller-chosen salt, for test vectors only. */
kmdc_status kmdc_wrap_salt(uint8_t *out, size_t cap, size_t *outlen,
                           uint32_t key_id,
                           const uint8_t master[KMDC_MASTER_KEY_LEN],
                           uint64_t serial, const char *field, uint64_t counter,
                           const uint8_t *value, size_t vlen,
                           const uint8_t salt[KMDC_WRAP_SALT_LEN], kmdc_err *err);

/*
 * Read the key id of the wrapped value buf[0..len) so the caller can pick the
 * master key to unwrap it with.  KMDC_ERR_FORMAT when len is too short to be
 * a wrapped value.
 */
kmdc_status kmdc_wrap_key_id(const uint8_t *buf, size_t len, uint32_t *key_id,
                             kmdc_err *err);

/*
 * Unwrap buf[0..len) with the master key its key id names, for the given
 * serial, field and counter, into out (cap bytes; *outlen is set).
 * KMDC_ERR_AUTH when the value was tampered with, truncated inside its
 * ciphertext, wrapped under another master key, or belongs to another card,
 * field or counter; KMDC_ERR_FORMAT when shorter than the overhead;
 * KMDC_ERR_ARG on bad arguments or a short out buffer.  On any failure out
 * (cap bytes) is wiped and *outlen is 0.
 */
kmdc_status kmdc_unwrap(uint8_t *out, size_t cap, size_t *outlen,
                        const uint8_t master[KMDC_MASTER_KEY_LEN], uint64_t serial,
                        const char *field, uint64_t counter, const uint8_t *buf,
                        size_t len, kmdc_err *err);

/*
 * Load a master key file: exactly 64 lowercase hex digits, optionally
 * followed by one "\n".  The file is opened once and checked with fstat on
 * that descriptor: it must be a regular file with no permission bit for
 * group or others (KMDC_ERR_PERM: "<path> is readable by group or others;
 * chmod 600 <path>", or "is accessible to" for a write or execute bit).
 * KMDC_ERR_FORMAT when the content is wrong, KMDC_ERR_IO when it cannot be
 * opened or read.  Every buffer holding key material is wiped; key is only
 * written on success.
 */
kmdc_status kmdc_master_key_load(const char *path,
                                 uint8_t key[KMDC_MASTER_KEY_LEN], kmdc_err *err);

/*
 * Create a new master key file at path: 32 random bytes written as 64
 * lowercase hex digits and "\n", mode 0600, with kmdc_file_write_atomic
 * (a temporary file beside it, fsynced, moved into place without replacing,
 * the folder fsynced), so the file appears whole or not at all.  An existing
 * path (a symbolic link included) is never overwritten (KMDC_ERR_IO, "...
 * never overwritten"); on a failure nothing is left behind.
 */
kmdc_status kmdc_master_key_generate(const char *path, kmdc_err *err);

/*
 * Draw a new access code: 10 Crockford base32 symbols from
 * "0123456789ABCDEFGHJKMNPQRSTVWXYZ" (50 random bits), NUL-terminated.
 * This is the canonical form; show it to the user as is or as two groups of
 * five separated by a hyphen.
 */
kmdc_status kmdc_access_code_new(char out[KMDC_ACCESS_CODE_LEN + 1], kmdc_err *err);

/*
 * The check symbol of a canonical code canon[0..10) (0 when canon is not
 * canonical): with d_1..d_10 the symbols' values (0..31, their places in
 * the alphabet) and arithmetic in GF(32) = GF(2)[x]/(x^5 + x^2 + 1) (addition
 * is XOR, alpha = x = 2), the symbol of value sum_i d_i * alpha^(11-i), so
 * that Horner's s = s * alpha + d over all 11 symbols ends at 0.  It detects
 * every single wrong symbol and every swap of two adjacent different ones.
 */
char kmdc_access_code_check(const char canon[KMDC_ACCESS_CODE_LEN]);

/*
 * Normalise what a user typed, in[0..len), to the canonical code: Crockford
 * decoding is case-insensitive, I and L read as 1, O as 0, hyphens and
 * spaces are ignored.  11 symbols are the code and its check symbol, which
 * must match (kmdc_access_code_check); 10 symbols are a code shown without
 * one (before check symbols existed), taken as they are.  U and anything
 * else outside the alphabet, another count of symbols, a wrong check symbol
 * or len above 64 is KMDC_ERR_FORMAT (the message never repeats the input).
 * canon receives the 10 symbols, NUL-terminated, on success and is wiped on
 * failure.
 */
kmdc_status kmdc_access_code_normalize(const char *in, size_t len,
                                       char canon[KMDC_ACCESS_CODE_LEN + 1],
                                       kmdc_err *err);

/*
 * mac = HMAC(HKDF("", master, "KMDC/1 access code", 32), u64 serial || canon)
 * with canon the 10-character canonical code (KMDC_ERR_ARG when it is not
 * canonical, or serial is outside 1 .. 2^63-1).  This is what the database
 * stores instead of the code.
 */
kmdc_status kmdc_access_code_mac(uint8_t mac[32],
                                 const uint8_t master[KMDC_MASTER_KEY_LEN],
                                 uint64_t serial, const char *canon,
                                 kmdc_err *err);

/*
 * Check a code as typed, in[0..len), against the stored mac: normalise it
 * (KMDC_ERR_FORMAT), compute its MAC and compare in constant time
 * (KMDC_ERR_AUTH when it differs).
 */
kmdc_status kmdc_access_code_verify(const uint8_t mac[32],
                                    const uint8_t master[KMDC_MASTER_KEY_LEN],
                                    uint64_t serial, const char *in, size_t len,
                                    kmdc_err *err);

#endif
