/*
 * kmdc_crypto.h - the primitives of KMDC/1 over OpenSSL 3 EVP: SHA-256,
 * HMAC-SHA-256, HKDF-SHA-256 (RFC 5869), AES-256-GCM, the chain step and the
 * activation rotation (docs/PROTOCOL.md section 2).  Nothing here is hand-written crypto.
 */
#ifndef KMDC_CRYPTO_H
#define KMDC_CRYPTO_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"

#define KMDC_KEY_LEN 32
#define KMDC_HASH_LEN 32
#define KMDC_TAG_LEN 16
#define KMDC_IV_LEN 12

/* One-shot SHA-256. */
kmdc_status kmdc_sha256(uint8_t out[KMDC_HASH_LEN], const void *in, size_t len,
                        kmdc_err *err);

/* Incremental SHA-256 (for hashing a streamed envelope). */
typedef struct kmdc_sha256_ctx kmdc_sha256_ctx;
kmdc_sha256_ctx *kmdc_sha256_new(kmdc_err *err);
kmdc_status kmdc_sha256_update(kmdc_sha256_ctx *c, const void *in, size_t len,
                               kmdc_err *err);
kmdc_status kmdc_sha256_final(kmdc_sha256_ctx *c, uint8_t out[KMDC_HASH_LEN],
                              kmdc_err *err);
void kmdc_sha256_free(kmdc_sha256_ctx *c);

/* HMAC-SHA-256 over the concatenation of up to n parts (ptrs[i], lens[i]). */
kmdc_status kmdc_hmac_parts(uint8_t out[KMDC_HASH_LEN], const uint8_t *key,
                            size_t keylen, size_t n, const void *const *ptrs,
                            const size_t *lens, kmdc_err *err);

/* HMAC-SHA-256 of one message. */
kmdc_status kmdc_hmac(uint8_t out[KMDC_HASH_LEN], const uint8_t *key,
                      size_t keylen, const void *msg, size_t msglen,
                      kmdc_err *err);

/* HKDF-SHA-256, extract then expand.  salt may be NULL/0 (the RFC default). */
kmdc_status kmdc_hkdf(uint8_t *out, size_t outlen, const uint8_t *salt,
                      size_t saltlen, const uint8_t *ikm, size_t ikmlen,
                      const void *info, size_t infolen, kmdc_err *err);

/* AES-256-GCM seal: out receives ptlen bytes of ciphertext then the 16-byte
 * tag (out must hold ptlen + 16).  out may equal pt. */
kmdc_status kmdc_gcm_seal(uint8_t *out, const uint8_t key[KMDC_KEY_LEN],
                          const uint8_t iv[KMDC_IV_LEN], const void *aad,
                          size_t aadlen, const uint8_t *pt, size_t ptlen,
                          kmdc_err *err);

/* AES-256-GCM open: in is ciphertext || tag (inlen >= 16); out receives
 * inlen - 16 bytes, and is wiped if the tag does not verify (KMDC_ERR_AUTH). */
kmdc_status kmdc_gcm_open(uint8_t *out, const uint8_t key[KMDC_KEY_LEN],
                          const uint8_t iv[KMDC_IV_LEN], const void *aad,
                          size_t aadlen, const uint8_t *in, size_t inlen,
                          kmdc_err *err);

/* A reusable AES-256-GCM context for the chunk loop (no allocation per chunk). */
typedef struct kmdc_gcm kmdc_gcm;
kmdc_gcm *kmdc_gcm_new(const uint8_t key[KMDC_KEY_LEN], kmdc_err *err);
kmdc_status kmdc_gcm_seal_ctx(kmdc_gcm *g, uint8_t *out,
                              const uint8_t iv[KMDC_IV_LEN], const void *aad,
                              size_t aadlen, const uint8_t *pt, size_t ptlen,
                              kmdc_err *err);
kmdc_status kmdc_gcm_open_ctx(kmdc_gcm *g, uint8_t *out,
                              const uint8_t iv[KMDC_IV_LEN], const void *aad,
                              size_t aadlen, const uint8_t *in, size_t inlen,
                              kmdc_err *err);
void kmdc_gcm_free(kmdc_gcm *g);   /* wipes the key schedule */

/*
 * One chain step (docs/PROTOCOL.md section 2): mk = HMAC(ck, 0x01), ck_next = HMAC(ck, 0x02).
 * ck_next may equal ck (in-place ratchet; the old value is overwritten).
 * mk may be NULL when only the ratchet is wanted.
 */
kmdc_status kmdc_chain_step(uint8_t mk[KMDC_KEY_LEN],
                            uint8_t ck_next[KMDC_KEY_LEN],
                            const uint8_t ck[KMDC_KEY_LEN], kmdc_err *err);

/*
 * Walk a chain key from counter `from` to counter `to` (to >= from), in place,
 * and give the message key of counter `to` in mk (may be NULL).  ck then holds
 * CK_to (not CK_{to+1}): call kmdc_chain_step to consume it.
 */
kmdc_status kmdc_chain_seek(uint8_t ck[KMDC_KEY_LEN], uint64_t from,
                            uint64_t to, uint8_t mk[KMDC_KEY_LEN], kmdc_err *err);

/*
 * Walk `steps` chain steps from ck whatever `at` is (the same work for every
 * at < steps): mk = MK and ck_next = CK of the step after step `at`, i.e.
 * for ck = CK_u and at = s - u, mk = MK_s and ck_next = CK_{s+1}.  ck is
 * not changed; mk and ck_next must not overlap it.
 */
kmdc_status kmdc_chain_walk(const uint8_t ck[KMDC_KEY_LEN], uint64_t steps, uint64_t at,
                            uint8_t mk[KMDC_KEY_LEN], uint8_t ck_next[KMDC_KEY_LEN],
                            kmdc_err *err);

/* Activation rotation (PROTOCOL.md section 2): out = HKDF(r, k, "KMDC/1 activate " || name, 32).
 * name is "up_chain", "down_chain" or "auth_key".  out may equal k. */
kmdc_status kmdc_activate_key(uint8_t out[KMDC_KEY_LEN],
                              const uint8_t r[KMDC_KEY_LEN],
                              const uint8_t k[KMDC_KEY_LEN], const char *name,
                              kmdc_err *err);

#endif
