/* kmdc_payload.c - the chunked payload of a KMDC/1 envelope (docs/PROTOCOL.md section 3):
 * chunk sizes and IVs, the streaming encryptor and the verify-then-release decryptor
 * (the datacenter re-encrypts a payload with these; kmdc_envelope.c builds the
 * whole-envelope writer and reader on them).  Declared in kmdc_envelope.h. */
#include "kmdc_envelope.h"
#include "kmdc_crypto.h"
#include "kmdc_util.h"

#include <stdlib.h>
#include <string.h>

/* ------------------------------------------------------------------ */
/* payload                                                            */

uint64_t
kmdc_payload_chunks(uint64_t size)
{
    return size == 0 ? 1 : (size - 1) / KMDC_CHUNK_LEN + 1;
}

uint64_t
kmdc_payload_len(uint64_t size)
{
    return size + kmdc_payload_chunks(size) * KMDC_TAG_LEN;
}

/* Plaintext length of chunk i of a document of `size` bytes. */
static size_t
chunk_len(uint64_t size, uint64_t nchunks, uint64_t i)
{
    if (i + 1 < nchunks)
        return KMDC_CHUNK_LEN;
    return (size_t)(size - (nchunks - 1) * KMDC_CHUNK_LEN);
}

/* iv = u88(i) || flag */
static void
chunk_iv(uint8_t iv[KMDC_IV_LEN], uint64_t i, int last)
{
    memset(iv, 0, 3);
    kmdc_put_u64(iv + 3, i);
    iv[11] = last ? 0x01 : 0x00;
}

static kmdc_gcm *
payload_gcm(const uint8_t dek[KMDC_DEK_LEN], uint64_t size, kmdc_err *err)
{
    uint8_t pk[32];
    kmdc_gcm *g = NULL;

    if (size > KMDC_MAX_DOC) {
        kmdc_err_set(err, KMDC_ERR_LIMIT, "a document holds at most 2^40 bytes");
        return NULL;
    }
    if (kmdc_pk_derive(pk, dek, err) == KMDC_OK)
        g = kmdc_gcm_new(pk, err);
    kmdc_wipe(pk, sizeof(pk));
    return g;
}

/* After an error a stream keeps no key and no plaintext. */
static void
stream_wipe(kmdc_gcm **g, uint8_t *buf, size_t len)
{
    kmdc_gcm_free(*g);
    *g = NULL;
    kmdc_wipe(buf, len);
}

struct kmdc_payload_enc {
    kmdc_gcm *gcm;
    uint64_t size;       /* document bytes expected */
    uint64_t nchunks;
    uint64_t idx;        /* chunk being filled */
    uint64_t taken;      /* plaintext bytes taken so far */
    size_t fill;         /* plaintext bytes of chunk idx in buf */
    int finished;
    kmdc_status failed;  /* sticky error */
    uint8_t buf[KMDC_CHUNK_CT_MAX];
};

kmdc_payload_enc *
kmdc_payload_enc_new(const uint8_t dek[KMDC_DEK_LEN], uint64_t size,
                     kmdc_err *err)
{
    kmdc_payload_enc *e = calloc(1, sizeof(*e));

    if (e == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    if ((e->gcm = payload_gcm(dek, size, err)) == NULL) {
        kmdc_payload_enc_free(e);
        return NULL;
    }
    e->size = size;
    e->nchunks = kmdc_payload_chunks(size);
    return e;
}

/* Seal chunk e->idx, its len bytes of plaintext at pt (buf itself, or the
 * caller's input when it holds the whole chunk), into buf and emit it. */
static kmdc_status
enc_flush(kmdc_payload_enc *e, const uint8_t *pt, size_t len, kmdc_emit_fn emit,
          void *arg, kmdc_err *err)
{
    uint8_t iv[KMDC_IV_LEN];
    kmdc_status rc;

    chunk_iv(iv, e->idx, e->idx + 1 == e->nchunks);
    if ((rc = kmdc_gcm_seal_ctx(e->gcm, e->buf, iv, NULL, 0, pt, len,
                                err)) != KMDC_OK)
        return rc;
    if ((rc = emit(arg, e->buf, len + KMDC_TAG_LEN, err)) != KMDC_OK)
        return rc;
    e->idx++;
    e->fill = 0;
    return KMDC_OK;
}

kmdc_status
kmdc_payload_enc_update(kmdc_payload_enc *e, const uint8_t *in, size_t len,
                        kmdc_emit_fn emit, void *arg, kmdc_err *err)
{
    kmdc_status rc = KMDC_OK;

    if (e->failed != KMDC_OK)
        return kmdc_err_set(err, e->failed, "the payload stream failed before");
    if (len > e->size - e->taken) {
        rc = kmdc_err_set(err, KMDC_ERR_LIMIT,
                          "more plaintext than the declared SIZE");
        goto out;
    }
    while (len > 0) {
        size_t want = chunk_len(e->size, e->nchunks, e->idx) - e->fill;
        size_t n = len < want ? len : want;

        if (e->fill == 0 && n == want) {
            /* the whole chunk is in the input: sealed from there, no copy */
            e->taken += n;
            if ((rc = enc_flush(e, in, n, emit, arg, err)) != KMDC_OK)
                goto out;
            in += n;
            len -= n;
            continue;
        }
        memcpy(e->buf + e->fill, in, n);
        e->fill += n;
        e->taken += n;
        in += n;
        len -= n;
        if (n == want && (rc = enc_flush(e, e->buf, e->fill, emit, arg, err)) != KMDC_OK)
            goto out;
    }
out:
    if (rc != KMDC_OK) {
        e->failed = rc;
        stream_wipe(&e->gcm, e->buf, sizeof(e->buf));
    }
    return rc;
}

kmdc_status
kmdc_payload_enc_final(kmdc_payload_enc *e, kmdc_emit_fn emit, void *arg,
                       kmdc_err *err)
{
    kmdc_status rc = KMDC_OK;

    if (e->failed != KMDC_OK)
        return kmdc_err_set(err, e->failed, "the payload stream failed before");
    if (e->finished) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "the payload is already complete");
        goto out;
    }
    if (e->taken != e->size) {
        rc = kmdc_err_set(err, KMDC_ERR_TRUNCATED,
                          "less plaintext than the declared SIZE");
        goto out;
    }
    if (e->size == 0 && (rc = enc_flush(e, e->buf, 0, emit, arg, err)) != KMDC_OK)
        goto out;
    e->finished = 1;
out:
    if (rc != KMDC_OK) {
        e->failed = rc;
        stream_wipe(&e->gcm, e->buf, sizeof(e->buf));
    }
    return rc;
}

void
kmdc_payload_enc_free(kmdc_payload_enc *e)
{
    if (e == NULL)
        return;
    kmdc_gcm_free(e->gcm);
    kmdc_freezero(e, sizeof(*e));
}

struct kmdc_payload_dec {
    kmdc_gcm *gcm;
    uint64_t size;
    uint64_t nchunks;
    uint64_t idx;        /* chunk being collected */
    size_t fill;         /* ciphertext bytes of chunk idx in buf */
    int done;            /* the last chunk verified */
    kmdc_status failed;  /* sticky error */
    uint8_t buf[KMDC_CHUNK_CT_MAX];
};

kmdc_payload_dec *
kmdc_payload_dec_new(const uint8_t dek[KMDC_DEK_LEN], uint64_t size,
                     kmdc_err *err)
{
    kmdc_payload_dec *d = calloc(1, sizeof(*d));

    if (d == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    if ((d->gcm = payload_gcm(dek, size, err)) == NULL) {
        kmdc_payload_dec_free(d);
        return NULL;
    }
    d->size = size;
    d->nchunks = kmdc_payload_chunks(size);
    return d;
}

/* Verify the complete chunk of ctlen bytes at ct (buf itself, or the
 * caller's input when it holds the whole chunk) into buf, then release its
 * plaintext and wipe it. */
static kmdc_status
dec_chunk(kmdc_payload_dec *d, const uint8_t *ct, size_t ctlen, kmdc_emit_fn emit,
          void *arg, kmdc_err *err)
{
    uint8_t iv[KMDC_IV_LEN];
    size_t ptlen = ctlen - KMDC_TAG_LEN;
    kmdc_status rc;

    chunk_iv(iv, d->idx, d->idx + 1 == d->nchunks);
    rc = kmdc_gcm_open_ctx(d->gcm, d->buf, iv, NULL, 0, ct, ctlen, err);
    if (rc == KMDC_ERR_AUTH)
        kmdc_err_set(err, rc, "payload chunk %llu of %llu failed to verify",
                     (unsigned long long)d->idx + 1,
                     (unsigned long long)d->nchunks);
    if (rc == KMDC_OK && ptlen > 0 && emit != NULL)
        rc = emit(arg, d->buf, ptlen, err);
    kmdc_wipe(d->buf, ptlen);
    if (rc != KMDC_OK)
        return rc;
    d->idx++;
    d->fill = 0;
    if (d->idx == d->nchunks)
        d->done = 1;
    return KMDC_OK;
}

kmdc_status
kmdc_payload_dec_update(kmdc_payload_dec *d, const uint8_t *in, size_t len,
                        kmdc_emit_fn emit, void *arg, kmdc_err *err)
{
    kmdc_status rc = KMDC_OK;

    if (d->failed != KMDC_OK)
        return kmdc_err_set(err, d->failed, "the payload stream failed before");
    while (len > 0) {
        size_t want, n;

        if (d->done) {
            rc = kmdc_err_set(err, KMDC_ERR_TRAILING,
                              "bytes after the last payload chunk");
            goto out;
        }
        want = chunk_len(d->size, d->nchunks, d->idx) + KMDC_TAG_LEN - d->fill;
        n = len < want ? len : want;
        if (d->fill == 0 && n == want) {
            /* the whole chunk is in the input: opened from there, no copy */
            if ((rc = dec_chunk(d, in, n, emit, arg, err)) != KMDC_OK)
                goto out;
            in += n;
            len -= n;
            continue;
        }
        memcpy(d->buf + d->fill, in, n);
        d->fill += n;
        in += n;
        len -= n;
        if (n == want && (rc = dec_chunk(d, d->buf, d->fill, emit, arg, err)) != KMDC_OK)
            goto out;
    }
out:
    if (rc != KMDC_OK) {
        d->failed = rc;
        stream_wipe(&d->gcm, d->buf, sizeof(d->buf));
    }
    return rc;
}

kmdc_status
kmdc_payload_dec_final(kmdc_payload_dec *d, kmdc_err *err)
{
    if (d->failed != KMDC_OK)
        return kmdc_err_set(err, d->failed, "the payload stream failed before");
    if (!d->done) {
        d->failed = KMDC_ERR_TRUNCATED;
        stream_wipe(&d->gcm, d->buf, sizeof(d->buf));
        return kmdc_err_set(err, KMDC_ERR_TRUNCATED,
                            "the payload ends inside chunk %llu of %llu",
                            (unsigned long long)d->idx + 1,
                            (unsigned long long)d->nchunks);
    }
    return KMDC_OK;
}

void
kmdc_payload_dec_free(kmdc_payload_dec *d)
{
    if (d == NULL)
        return;
    kmdc_gcm_free(d->gcm);
    kmdc_freezero(d, sizeof(*d));
}
