/*
 * kmdc_envelope.h - the KMDC/1 envelope (docs/PROTOCOL.md section 3):
 *   header (40) || u32 kb_len || keyblock || payload
 * in three layers that the client and the datacenter combine as they need:
 *   - the header codec and the two key derivations (KBK, PK);
 *   - the keyblock: seal and open one "u32 kb_len || keyblock" (the
 *     datacenter writes one per recipient);
 *   - the payload stream: encrypt or verify-and-decrypt the chunk sequence
 *     (the datacenter re-encrypts a payload with these);
 * and on top a whole-envelope streaming writer (kmdc_seal_*) and a
 * push-based reader (kmdc_open_*), both in constant memory: one chunk
 * buffer, no allocation per chunk.
 */
#ifndef KMDC_ENVELOPE_H
#define KMDC_ENVELOPE_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"
#include "kmdc_tlv.h"

#define KMDC_HEADER_LEN 40
#define KMDC_SALT_LEN 16
#define KMDC_CHUNK_LEN 65536                 /* plaintext bytes per chunk */
#define KMDC_CHUNK_CT_MAX (KMDC_CHUNK_LEN + 16)
#define KMDC_KB_MIN 59                       /* DEK + one u64 entry + tag */
#define KMDC_KB_MAX (16384 + 48)
#define KMDC_KB_FRAME_MAX (4 + KMDC_KB_MAX)  /* u32 kb_len || keyblock */
#define KMDC_VERSION 1
#define KMDC_DEK_LEN 32
/* KMDC_DIR_UP, KMDC_DIR_DOWN and KMDC_MAX_DOC come from kmdc_tlv.h. */

typedef struct kmdc_header {
    uint8_t version;                 /* 1 */
    uint8_t direction;               /* KMDC_DIR_UP or KMDC_DIR_DOWN */
    uint16_t flags;                  /* 0 */
    uint64_t serial;                 /* 1 .. 2^63-1 */
    uint64_t seq;                    /* 0 .. 2^63-1 */
    uint8_t salt[KMDC_SALT_LEN];
} kmdc_header;

/* Fill h for a new envelope: version 1, flags 0, the given direction, serial
 * and seq, and a fresh random salt. */
kmdc_status kmdc_header_new(kmdc_header *h, int direction, uint64_t serial,
                            uint64_t seq, kmdc_err *err);

/* Replace the salt of h with 16 fresh random bytes. */
kmdc_status kmdc_header_new_salt(kmdc_header *h, kmdc_err *err);

/* Write the 40 header bytes of h after checking it as kmdc_header_decode
 * would (KMDC_ERR_ARG when it would not decode). */
kmdc_status kmdc_header_encode(uint8_t out[KMDC_HEADER_LEN],
                               const kmdc_header *h, kmdc_err *err);

/* Parse 40 header bytes: magic "KMDC", version 1, flags 0, direction 1 or 2,
 * serial in 1 .. 2^63-1, seq <= 2^63-1; anything else is KMDC_ERR_FORMAT. */
kmdc_status kmdc_header_decode(kmdc_header *h, const uint8_t in[KMDC_HEADER_LEN],
                               kmdc_err *err);

/* KBK = HKDF(salt, MK, "KMDC/1 keyblock", 32). */
kmdc_status kmdc_kbk_derive(uint8_t kbk[32], const uint8_t salt[KMDC_SALT_LEN],
                            const uint8_t mk[32], kmdc_err *err);

/* PK = HKDF("", DEK, "KMDC/1 payload", 32). */
kmdc_status kmdc_pk_derive(uint8_t pk[32], const uint8_t dek[KMDC_DEK_LEN],
                           kmdc_err *err);

/*
 * Seal a keyblock for the 40 header bytes `header` (the TLV direction is the
 * header's): out receives u32 kb_len || AES-256-GCM(KBK, zero iv, aad =
 * header, DEK || TLV(m)).  cap must be at least the result (KMDC_KB_FRAME_MAX
 * always suffices); *outlen receives its length.  m is validated as
 * kmdc_tlv_encode does (KMDC_ERR_NAME for a bad NAME).
 */
kmdc_status kmdc_keyblock_seal(uint8_t *out, size_t cap, size_t *outlen,
                               const uint8_t header[KMDC_HEADER_LEN],
                               const uint8_t mk[32],
                               const uint8_t dek[KMDC_DEK_LEN],
                               const kmdc_meta *m, kmdc_err *err);

/*
 * Open the keyblock kb[0..kb_len) (without its u32 length) that follows the
 * 40 header bytes `header`, with the message key mk.  On success dek and m
 * are filled.  *authenticated (may be NULL) is set to 1 once the tag
 * verified, so a caller can tell a refusal before authentication (kb_len
 * outside 59 .. 16 KiB + 48: KMDC_ERR_FORMAT; bad tag or wrong key:
 * KMDC_ERR_AUTH) from a bad TLV after it (KMDC_ERR_NAME or KMDC_ERR_FORMAT,
 * as kmdc_tlv_decode).  On any failure dek and m are wiped.
 */
kmdc_status kmdc_keyblock_open(uint8_t dek[KMDC_DEK_LEN], kmdc_meta *m,
                               int *authenticated,
                               const uint8_t header[KMDC_HEADER_LEN],
                               const uint8_t mk[32], const uint8_t *kb,
                               size_t kb_len, kmdc_err *err);

/* Where a stream hands its output.  An error aborts the stream and is
 * returned as is by the function that called it. */
typedef kmdc_status (*kmdc_emit_fn)(void *arg, const uint8_t *p, size_t len,
                                    kmdc_err *err);

/* Number of chunks of a document of `size` bytes (1 for an empty one). */
uint64_t kmdc_payload_chunks(uint64_t size);

/* Bytes of the payload of a document of `size` bytes (chunks + tags). */
uint64_t kmdc_payload_len(uint64_t size);

/*
 * Payload encryption.  _new takes the DEK and the document length (at most
 * 2^40); _update takes plaintext in slices of any size and emits each chunk
 * (ciphertext || tag, flag 1 on the last) as soon as it is complete; _final
 * emits the one empty chunk of an empty document and checks the count.
 * More plaintext than `size` is KMDC_ERR_LIMIT at _update, fewer is
 * KMDC_ERR_TRUNCATED at _final.  After an error every call fails.
 * _free wipes the key and the buffer; it accepts NULL.
 */
typedef struct kmdc_payload_enc kmdc_payload_enc;
kmdc_payload_enc *kmdc_payload_enc_new(const uint8_t dek[KMDC_DEK_LEN],
                                       uint64_t size, kmdc_err *err);
kmdc_status kmdc_payload_enc_update(kmdc_payload_enc *e, const uint8_t *in,
                                    size_t len, kmdc_emit_fn emit, void *arg,
                                    kmdc_err *err);
kmdc_status kmdc_payload_enc_final(kmdc_payload_enc *e, kmdc_emit_fn emit,
                                   void *arg, kmdc_err *err);
void kmdc_payload_enc_free(kmdc_payload_enc *e);

/*
 * Payload decryption.  _new takes the DEK and SIZE, which fix the length of
 * every chunk and which one is last.  _update takes payload bytes in slices
 * of any size and emits the plaintext of each chunk, whole, only after its
 * tag verified (KMDC_ERR_AUTH otherwise, a wrong flag included).  Bytes past
 * the last chunk are KMDC_ERR_TRAILING; _final reports KMDC_ERR_TRUNCATED
 * unless the last chunk verified.  After an error every call fails.
 */
typedef struct kmdc_payload_dec kmdc_payload_dec;
kmdc_payload_dec *kmdc_payload_dec_new(const uint8_t dek[KMDC_DEK_LEN],
                                       uint64_t size, kmdc_err *err);
kmdc_status kmdc_payload_dec_update(kmdc_payload_dec *d, const uint8_t *in,
                                    size_t len, kmdc_emit_fn emit, void *arg,
                                    kmdc_err *err);
kmdc_status kmdc_payload_dec_final(kmdc_payload_dec *d, kmdc_err *err);
void kmdc_payload_dec_free(kmdc_payload_dec *d);

/*
 * Whole-envelope writer.  _new checks the header and the metadata (SIZE is
 * m->size, the TLV direction is h->direction), takes the header's salt as
 * given (fill it with kmdc_header_new or kmdc_random), uses dek or, when it
 * is NULL, a random DEK, and seals the keyblock.  The header and keyblock are
 * emitted by the first _update or _final, followed by the payload chunks as
 * they complete.  Same size rules as kmdc_payload_enc.  _free wipes all key
 * material and accepts NULL.
 */
typedef struct kmdc_seal kmdc_seal;
kmdc_seal *kmdc_seal_new(const kmdc_header *h, const uint8_t mk[32],
                         const uint8_t *dek, const kmdc_meta *m, kmdc_err *err);
kmdc_status kmdc_seal_update(kmdc_seal *s, const uint8_t *in, size_t len,
                             kmdc_emit_fn emit, void *arg, kmdc_err *err);
kmdc_status kmdc_seal_final(kmdc_seal *s, kmdc_emit_fn emit, void *arg,
                            kmdc_err *err);
void kmdc_seal_free(kmdc_seal *s);

/*
 * Reader callbacks.  on_header (required) sees the decoded header, which is
 * already known to be of the expected direction, and supplies the message key
 * in mk_out or refuses with an error.  on_meta (may be NULL) is called once,
 * after the keyblock authenticated and its TLV proved valid, and may refuse.
 * on_data (may be NULL) receives verified plaintext, one whole chunk at a
 * time; the document is only valid once kmdc_open_final succeeded.  A
 * callback's error aborts the reader and is returned as is.
 */
struct kmdc_open_cbs {
    kmdc_status (*on_header)(void *arg, const kmdc_header *h,
                             uint8_t mk_out[32], kmdc_err *err);
    kmdc_status (*on_meta)(void *arg, const kmdc_header *h,
                           const kmdc_meta *m, kmdc_err *err);
    kmdc_status (*on_data)(void *arg, const uint8_t *pt, size_t len,
                           kmdc_err *err);
};

/*
 * Whole-envelope reader, fed arbitrary slices (down to one byte) by
 * _update.  A header of the other direction is KMDC_ERR_FORMAT; kb_len
 * outside 59 .. 16 KiB + 48 is KMDC_ERR_FORMAT before any of the keyblock is
 * read; a keyblock that fails its tag is KMDC_ERR_AUTH; after it authenticated
 * the errors are those of kmdc_keyblock_open and kmdc_payload_dec.  The
 * first error sticks: later calls return it again.  _final fails with
 * KMDC_ERR_TRUNCATED unless the whole envelope was read and verified.
 * _free wipes all key material and accepts NULL.  cbs is copied.
 */
typedef struct kmdc_open kmdc_open;
kmdc_open *kmdc_open_new(int expected_direction, const struct kmdc_open_cbs *cbs,
                         void *arg, kmdc_err *err);
kmdc_status kmdc_open_update(kmdc_open *o, const uint8_t *in, size_t len,
                             kmdc_err *err);
kmdc_status kmdc_open_final(kmdc_open *o, kmdc_err *err);
void kmdc_open_free(kmdc_open *o);

/* 1 once the keyblock's tag verified (even if its TLV is then refused):
 * before that every refusal is "rejected", after it errors are specific. */
int kmdc_open_authenticated(const kmdc_open *o);

/* The decoded header once 40 bytes were read and accepted, else NULL. */
const kmdc_header *kmdc_open_header(const kmdc_open *o);

/* The metadata once the keyblock authenticated and its TLV was valid and
 * accepted by on_meta, else NULL. */
const kmdc_meta *kmdc_open_meta(const kmdc_open *o);

/* The DEK under the same condition as kmdc_open_meta, else NULL. */
const uint8_t *kmdc_open_dek(const kmdc_open *o);

#endif
