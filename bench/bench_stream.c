/*
 * bench_stream - throughput of the envelope streams against a baseline of
 * plain AES-256-GCM over 64 KiB chunks, in the same run: the seal against
 * one cache-hot chunk (its document is read from such a chunk here), the
 * open and the relay against the envelope's own bytes read from memory once
 * (what they read).
 *
 *   bench_stream [MiB] [rounds]      (default 256 MiB, 3 rounds, best of)
 *
 * Reports MB/s and the ratio to the baseline for: sealing an up envelope
 * (what kmdc does), opening one (what a receiver does), and the
 * datacenter's relay (open the up payload and re-encrypt it under a new
 * DEK).  The open and the relay are timed alone: the envelope is sealed
 * once, before the rounds, into memory, and each round opens it from there,
 * fed in the pieces the seal emitted.  The machine is shared and noisy: read
 * the ratios, not the MB/s.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_util.h"

#define CHUNK KMDC_CHUNK_LEN

static uint8_t *doc_buf;

static double
now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static kmdc_status
discard(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    (void)arg; (void)p; (void)len; (void)err;
    return KMDC_OK;
}

/* Baseline: AES-256-GCM over size bytes in 64 KiB chunks with a reused
 * context.  src NULL: the same cache-hot chunk every time, as the seal reads
 * its document here; else size bytes of src, each chunk read once from
 * memory, as the open and the relay read the sealed envelope. */
static double
baseline(uint64_t size, const uint8_t *src)
{
    uint8_t key[32] = { 1 }, iv[12] = { 0 };
    static uint8_t out[CHUNK + 16];
    kmdc_gcm *g = kmdc_gcm_new(key, NULL);
    uint64_t done;
    double t0 = now();

    for (done = 0; done < size; done += CHUNK) {
        kmdc_put_u64(iv + 4, done);
        if (kmdc_gcm_seal_ctx(g, out, iv, NULL, 0, src != NULL ? src + done : doc_buf, CHUNK,
                              NULL) != KMDC_OK)
            abort();
    }
    kmdc_gcm_free(g);
    return now() - t0;
}

static void
meta_for(kmdc_meta *m, uint64_t size)
{
    kmdc_meta_init(m);
    kmdc_meta_add_rcpt(m, "bob", 3, NULL);
    m->has_size = m->has_sent = 1;
    m->size = size;
    m->sent = 1795000000000ull;
}

/* A sealed envelope in memory, and the pieces the seal emitted it in. */
struct sealed {
    uint8_t *p;
    size_t len, cap;
    size_t *piece;
    size_t npiece, cappiece;
};

/* Seal an envelope of size bytes; every emitted byte goes to emit/arg. */
static double
seal(uint64_t size, kmdc_emit_fn emit, void *arg)
{
    uint8_t mk[32] = { 2 };
    kmdc_header h;
    kmdc_meta m;
    kmdc_seal *s;
    uint64_t done;
    double t0 = now();

    meta_for(&m, size);
    if (kmdc_header_new(&h, KMDC_DIR_UP, 1, 0, NULL) != KMDC_OK ||
        (s = kmdc_seal_new(&h, mk, NULL, &m, NULL)) == NULL)
        abort();
    for (done = 0; done < size; done += CHUNK)
        if (kmdc_seal_update(s, doc_buf, CHUNK, emit, arg, NULL) != KMDC_OK)
            abort();
    if (kmdc_seal_final(s, emit, arg, NULL) != KMDC_OK)
        abort();
    kmdc_seal_free(s);
    return now() - t0;
}

static kmdc_status
on_header(void *arg, const kmdc_header *h, uint8_t mk[32], kmdc_err *err)
{
    (void)arg; (void)h; (void)err;
    memset(mk, 0, 32);
    mk[0] = 2;
    return KMDC_OK;
}

static kmdc_payload_enc *relay_enc;

static kmdc_status
on_data_relay(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    (void)arg;
    return kmdc_payload_enc_update(relay_enc, p, len, discard, NULL, err);
}

static kmdc_status
to_sealed(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    struct sealed *e = arg;

    (void)err;
    if (e->len + len > e->cap) {
        size_t cap = e->cap ? e->cap : 1 << 20;

        while (cap < e->len + len)
            cap *= 2;
        if ((e->p = realloc(e->p, cap)) == NULL)
            abort();
        e->cap = cap;
    }
    if (e->npiece == e->cappiece) {
        e->cappiece = e->cappiece ? 2 * e->cappiece : 1024;
        if ((e->piece = realloc(e->piece, e->cappiece * sizeof *e->piece)) == NULL)
            abort();
    }
    memcpy(e->p + e->len, p, len);
    e->len += len;
    e->piece[e->npiece++] = len;
    return KMDC_OK;
}

/* Open the sealed envelope e (a reader of it; with relay, the datacenter's
 * relay: the payload re-encrypted under a new DEK), fed in the pieces the
 * seal emitted; the time of the open alone, its final check included. */
static double
open_sealed(const struct sealed *e, uint64_t size, int relay)
{
    struct kmdc_open_cbs cbs = { on_header, NULL, relay ? on_data_relay : NULL };
    uint8_t dek[32] = { 3 };
    kmdc_open *o = kmdc_open_new(KMDC_DIR_UP, &cbs, NULL, NULL);
    const uint8_t *p = e->p;
    size_t i;
    double t0, t;

    if (o == NULL)
        abort();
    if (relay && (relay_enc = kmdc_payload_enc_new(dek, size, NULL)) == NULL)
        abort();
    t0 = now();
    for (i = 0; i < e->npiece; i++) {
        if (kmdc_open_update(o, p, e->piece[i], NULL) != KMDC_OK)
            abort();
        p += e->piece[i];
    }
    if (kmdc_open_final(o, NULL) != KMDC_OK)
        abort();
    if (relay && kmdc_payload_enc_final(relay_enc, discard, NULL, NULL) != KMDC_OK)
        abort();
    t = now() - t0;
    if (relay)
        kmdc_payload_enc_free(relay_enc);
    kmdc_open_free(o);
    return t;
}

int
main(int argc, char **argv)
{
    uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 256;
    int rounds = argc > 2 ? atoi(argv[2]) : 3, i;
    uint64_t size = mib << 20;
    double b = 1e9, bm = 1e9, s = 1e9, o = 1e9, r = 1e9, t;
    struct sealed env = { 0 };

    if (mib == 0 || rounds < 1) {
        fprintf(stderr, "usage: bench_stream [MiB] [rounds]\n");
        return 2;
    }
    if ((doc_buf = malloc(CHUNK)) == NULL)
        return 1;
    memset(doc_buf, 0x5a, CHUNK);
    (void)seal(size, to_sealed, &env);       /* once, untimed: what is opened */
    for (i = 0; i < rounds; i++) {
        if ((t = baseline(size, NULL)) < b) b = t;
        if ((t = baseline(size, env.p)) < bm) bm = t;
        if ((t = seal(size, discard, NULL)) < s) s = t;
        if ((t = open_sealed(&env, size, 0)) < o) o = t;
        if ((t = open_sealed(&env, size, 1)) < r) r = t;
    }
    {
        double open_t = o > 1e-9 ? o : 1e-9;
        double relay_t = r > 1e-9 ? r : 1e-9;
        double mb = (double)size / 1e6;
        printf("# %llu MiB, best of %d rounds\n", (unsigned long long)mib, rounds);
        printf("%-34s %9.0f MB/s  ratio 1.00 (baseline of the seal)\n",
               "AES-256-GCM, 64 KiB chunks", mb / b);
        printf("%-34s %9.0f MB/s  ratio %.2f\n", "seal (kmdc send)", mb / s, b / s);
        printf("%-34s %9.0f MB/s  ratio 1.00 (baseline of the open and the relay)\n",
               "AES-256-GCM, from memory", mb / bm);
        printf("%-34s %9.0f MB/s  ratio %.2f\n", "open (kmdc fetch)", mb / open_t, bm / open_t);
        printf("%-34s %9.0f MB/s  ratio %.2f\n", "relay: open + re-encrypt (module)", mb / relay_t,
               bm / relay_t);
    }
    free(env.p);
    free(env.piece);
    free(doc_buf);
    return 0;
}
