/*
 * bench_stream - throughput of the envelope streams against a baseline of
 * plain AES-256-GCM over the same 64 KiB chunks, in the same run.
 *
 *   bench_stream [MiB] [rounds]      (default 256 MiB, 3 rounds, best of)
 *
 * Reports MB/s and the ratio to the baseline for: sealing an up envelope
 * (what kmdc does), opening one (what a receiver does), and the
 * datacenter's relay (open the up payload and re-encrypt it under a new
 * DEK).  The machine is shared and noisy: read the ratios, not the MB/s.
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

/* Baseline: AES-256-GCM over 64 KiB chunks with a reused context. */
static double
baseline(uint64_t size)
{
    uint8_t key[32] = { 1 }, iv[12] = { 0 };
    static uint8_t out[CHUNK + 16];
    kmdc_gcm *g = kmdc_gcm_new(key, NULL);
    uint64_t done;
    double t0 = now();

    for (done = 0; done < size; done += CHUNK) {
        kmdc_put_u64(iv + 4, done);
        if (kmdc_gcm_seal_ctx(g, out, iv, NULL, 0, doc_buf, CHUNK, NULL) != KMDC_OK)
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

struct sink {
    struct kmdc_open_cbs cbs;
    kmdc_open *o;
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
to_open(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    return kmdc_open_update(arg, p, len, err);
}

/* Seal into a reader: the time of seal+open minus the time of seal alone
 * is the reader's time (no buffer of the whole envelope needed). */
static double
seal_open(uint64_t size, int relay)
{
    struct kmdc_open_cbs cbs = { on_header, NULL, relay ? on_data_relay : NULL };
    uint8_t dek[32] = { 3 };
    kmdc_open *o = kmdc_open_new(KMDC_DIR_UP, &cbs, NULL, NULL);
    double t;

    if (o == NULL)
        abort();
    if (relay && (relay_enc = kmdc_payload_enc_new(dek, size, NULL)) == NULL)
        abort();
    t = seal(size, to_open, o);
    if (kmdc_open_final(o, NULL) != KMDC_OK)
        abort();
    if (relay) {
        if (kmdc_payload_enc_final(relay_enc, discard, NULL, NULL) != KMDC_OK)
            abort();
        kmdc_payload_enc_free(relay_enc);
    }
    kmdc_open_free(o);
    return t;
}

int
main(int argc, char **argv)
{
    uint64_t mib = argc > 1 ? strtoull(argv[1], NULL, 10) : 256;
    int rounds = argc > 2 ? atoi(argv[2]) : 3, i;
    uint64_t size = mib << 20;
    double b = 1e9, s = 1e9, so = 1e9, sr = 1e9, t;

    if (mib == 0 || rounds < 1) {
        fprintf(stderr, "usage: bench_stream [MiB] [rounds]\n");
        return 2;
    }
    if ((doc_buf = malloc(CHUNK)) == NULL)
        return 1;
    memset(doc_buf, 0x5a, CHUNK);
    for (i = 0; i < rounds; i++) {
        if ((t = baseline(size)) < b) b = t;
        if ((t = seal(size, discard, NULL)) < s) s = t;
        if ((t = seal_open(size, 0)) < so) so = t;
        if ((t = seal_open(size, 1)) < sr) sr = t;
    }
    /* reader alone = (seal+open) - seal; relay alone = (seal+open+enc) - seal */
    {
        double open_t = so - s > 1e-9 ? so - s : 1e-9;
        double relay_t = sr - s > 1e-9 ? sr - s : 1e-9;
        double mb = (double)size / 1e6;
        printf("# %llu MiB, best of %d rounds\n", (unsigned long long)mib, rounds);
        printf("%-34s %9.0f MB/s  ratio 1.00 (baseline)\n", "AES-256-GCM, 64 KiB chunks", mb / b);
        printf("%-34s %9.0f MB/s  ratio %.2f\n", "seal (kmdc send)", mb / s, b / s);
        printf("%-34s %9.0f MB/s  ratio %.2f\n", "open (kmdc fetch)", mb / open_t, b / open_t);
        printf("%-34s %9.0f MB/s  ratio %.2f\n", "relay: open + re-encrypt (module)", mb / relay_t,
               b / relay_t);
    }
    free(doc_buf);
    return 0;
}
