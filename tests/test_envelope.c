/* test_envelope.c - the KMDC/1 envelope (docs/PROTOCOL.md section 3): header, keyblock,
 * payload stream, writer and reader; round trips, every refusal, and the
 * constant-memory bound of the streaming writer and reader. */
#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_util.h"
#include "fixtures.h"
#include "tap.h"

#include <malloc.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <openssl/crypto.h>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TEST_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__) && !defined(TEST_ASAN)
#define TEST_ASAN 1
#endif
#ifdef TEST_ASAN
#include <sanitizer/allocator_interface.h>
#endif

#define MiB (UINT64_C(1) << 20)
#define CH KMDC_CHUNK_LEN
#define SZ3 (2 * CH + 1000)   /* a 3-chunk document */

static const uint8_t MK[32] = {
    0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa,
    0xbb, 0xcc, 0xdd, 0xee, 0xff, 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
    0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98, 0x76, 0x54, 0x32, 0x10,
};
static const uint8_t DEK[32] = {
    0xde, 0xad, 0xbe, 0xef, 0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x06,
    0x07, 0x08, 0x09, 0x0a, 0x0b, 0x0c, 0x0d, 0x0e, 0x0f, 0x10, 0x11,
    0x12, 0x13, 0x14, 0x15, 0x16, 0x17, 0x18, 0x19, 0x1a, 0x1b,
};

/* ------------------------------------------------------------------ */
/* helpers                                                            */

static uint64_t rng_state = UINT64_C(0x9e3779b97f4a7c15);

static uint64_t
rng(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* The document generator: byte at offset off. */
static void
gen(uint8_t *p, uint64_t off, size_t len)
{
    size_t i;

    for (i = 0; i < len; i++) {
        uint64_t x = off + i;
        p[i] = (uint8_t)((x * UINT64_C(2654435761)) >> 13 ^ (x >> 16));
    }
}

/* Slice length for mode: 0 all at once, 1 one byte, 2 random. */
static size_t
slice(int mode, size_t left)
{
    size_t n;

    if (mode == 0)
        return left;
    if (mode == 1)
        return left ? 1 : 0;
    n = (size_t)(rng() % 3 == 0 ? rng() % 17 + 1 : rng() % 200000 + 1);
    return n < left ? n : left;
}

static void
mkheader(kmdc_header *h, int dir, uint64_t serial, uint64_t seq)
{
    size_t i;

    memset(h, 0, sizeof(*h));
    h->version = 1;
    h->direction = (uint8_t)dir;
    h->serial = serial;
    h->seq = seq;
    for (i = 0; i < KMDC_SALT_LEN; i++)
        h->salt[i] = (uint8_t)(0xa0 + i);
}

static void
mkmeta(kmdc_meta *m, uint64_t size, size_t nrcpt, int name_type)
{
    static const char *const rc[3] = { "alice", "bob", "carol.x" };
    size_t i;

    kmdc_meta_init(m);
    for (i = 0; i < nrcpt; i++)
        kmdc_meta_add_rcpt(m, rc[i], strlen(rc[i]), NULL);
    if (name_type) {
        kmdc_meta_set_name(m, (const uint8_t *)"r\xc3\xa9sum\xc3\xa9.pdf", 12, NULL);
        kmdc_meta_set_type(m, "application/pdf", 15, NULL);
    }
    m->has_size = 1;
    m->size = size;
    m->has_sent = 1;
    m->sent = UINT64_C(1700000000000);
}

static void
mkmeta_down(kmdc_meta *m, uint64_t size)
{
    kmdc_meta_init(m);
    m->has_size = 1;
    m->size = size;
    m->has_sent = 1;
    m->sent = 1;
    kmdc_meta_set_from(m, "sender", 6, NULL);
    m->has_fromserial = m->has_msgid = m->has_rcvd = 1;
    m->fromserial = 77;
    m->msgid = 88;
    m->rcvd = 99;
}

/* Seal doc[0..size) (generated when doc is NULL) with the given slicing. */
static kmdc_status
seal_doc(struct buf *out, const kmdc_header *h, const uint8_t *mk,
         const uint8_t *dek, const kmdc_meta *m, const uint8_t *doc,
         size_t size, int mode)
{
    kmdc_err err;
    kmdc_seal *s = kmdc_seal_new(h, mk, dek, m, &err);
    kmdc_status rc = KMDC_OK;
    size_t off = 0;

    if (s == NULL)
        return err.code;
    while (off < size && rc == KMDC_OK) {
        size_t n = slice(mode, size - off);
        rc = kmdc_seal_update(s, doc + off, n, emit_buf, out, &err);
        off += n;
    }
    if (rc == KMDC_OK)
        rc = kmdc_seal_final(s, emit_buf, out, &err);
    kmdc_seal_free(s);
    return rc;
}

/* Reader context. */
struct rd {
    const uint8_t *mk;
    kmdc_status header_rc, meta_rc, data_rc;
    int headers, metas;
    uint64_t released;
    size_t calls;
    struct buf *pt;           /* collect plaintext here when set */
    int verify;               /* compare with gen() instead */
    int mismatch;
    size_t bad_sizes;         /* on_data calls that are not a whole chunk */
    uint64_t expect_size;
    kmdc_header h;
    kmdc_meta m;
    size_t heap_peak;
    int track_heap;
};

static size_t heap_now(void);

static kmdc_status
cb_header(void *arg, const kmdc_header *h, uint8_t mk_out[32], kmdc_err *err)
{
    struct rd *r = arg;

    r->headers++;
    r->h = *h;
    if (r->header_rc != KMDC_OK)
        return kmdc_err_set(err, r->header_rc, "test refuses the header");
    memcpy(mk_out, r->mk, 32);
    return KMDC_OK;
}

static kmdc_status
cb_meta(void *arg, const kmdc_header *h, const kmdc_meta *m, kmdc_err *err)
{
    struct rd *r = arg;

    (void)h;
    r->metas++;
    r->m = *m;
    r->expect_size = m->size;
    if (r->meta_rc != KMDC_OK)
        return kmdc_err_set(err, r->meta_rc, "test refuses the meta");
    return KMDC_OK;
}

static kmdc_status
cb_data(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    static uint8_t want[CH];
    struct rd *r = arg;

    if (r->data_rc != KMDC_OK)
        return kmdc_err_set(err, r->data_rc, "test refuses the data");
    /* Every call is one whole chunk: 65536 bytes, or the rest at the end. */
    if (!(len == CH || r->released + len == r->expect_size))
        r->bad_sizes++;
    if (r->pt != NULL)
        buf_add(r->pt, p, len);
    if (r->verify && len <= CH) {
        gen(want, r->released, len);
        if (memcmp(want, p, len) != 0)
            r->mismatch++;
    }
    r->released += len;
    r->calls++;
    if (r->track_heap) {
        size_t h = heap_now();
        if (h > r->heap_peak)
            r->heap_peak = h;
    }
    return KMDC_OK;
}

static const struct kmdc_open_cbs CBS = { cb_header, cb_meta, cb_data };

static void
rd_init(struct rd *r, const uint8_t *mk, struct buf *pt)
{
    memset(r, 0, sizeof(*r));
    r->mk = mk;
    r->pt = pt;
}

/* Open env[0..len) fed in the given slicing; the first error is returned. */
static kmdc_status
open_bytes(const uint8_t *env, size_t len, int dir, int mode, struct rd *r,
           int *authenticated)
{
    kmdc_err err;
    kmdc_open *o = kmdc_open_new(dir, &CBS, r, &err);
    kmdc_status rc = KMDC_OK;
    size_t off = 0;

    if (o == NULL)
        return err.code;
    while (off < len && rc == KMDC_OK) {
        size_t n = slice(mode, len - off);
        rc = kmdc_open_update(o, env + off, n, &err);
        off += n;
    }
    if (rc == KMDC_OK)
        rc = kmdc_open_final(o, &err);
    if (authenticated != NULL)
        *authenticated = kmdc_open_authenticated(o);
    kmdc_open_free(o);
    return rc;
}

/* A keyblock sealed by hand over DEK || tlv (no TLV validation). */
static void
raw_keyblock(struct buf *out, const uint8_t hdr[40], const uint8_t *mk,
             const uint8_t *dek, const uint8_t *tlv, size_t tlvlen)
{
    static const uint8_t iv[12];
    uint8_t kbk[32], pt[KMDC_KB_MAX], ct[KMDC_KB_MAX + 16], l[4];
    kmdc_header h;

    kmdc_header_decode(&h, hdr, NULL);
    kmdc_kbk_derive(kbk, h.salt, mk, NULL);
    memcpy(pt, dek, 32);
    memcpy(pt + 32, tlv, tlvlen);
    kmdc_gcm_seal(ct, kbk, iv, hdr, 40, pt, 32 + tlvlen, NULL);
    kmdc_put_u32(l, (uint32_t)(32 + tlvlen + 16));
    buf_add(out, l, 4);
    buf_add(out, ct, 32 + tlvlen + 16);
}

/*
 * Build an envelope from the primitives: header, keyblock (meta m, whose
 * SIZE may disagree with the payload), then the chunks of doc[0..ptlen)
 * under PK with the right flags, except that chunk flip_flag (when >= 0)
 * gets the other flag, and only the first max_chunks chunks are written.
 */
static void
hand_env(struct buf *out, const kmdc_header *h, const kmdc_meta *m,
         const uint8_t *doc, size_t ptlen, long flip_flag, size_t max_chunks)
{
    static uint8_t ct[CH + 16];
    uint8_t hdr[40], kb[KMDC_KB_FRAME_MAX], pk[32], iv[12];
    size_t kblen = 0, nch = ptlen == 0 ? 1 : (ptlen - 1) / CH + 1, i;

    kmdc_header_encode(hdr, h, NULL);
    buf_add(out, hdr, 40);
    kmdc_keyblock_seal(kb, sizeof(kb), &kblen, hdr, MK, DEK, m, NULL);
    buf_add(out, kb, kblen);
    kmdc_pk_derive(pk, DEK, NULL);
    for (i = 0; i < nch && i < max_chunks; i++) {
        size_t n = i + 1 < nch ? CH : ptlen - i * CH;
        int last = i + 1 == nch;
        if ((long)i == flip_flag)
            last = !last;
        memset(iv, 0, sizeof(iv));
        kmdc_put_u64(iv + 3, i);
        iv[11] = (uint8_t)last;
        kmdc_gcm_seal(ct, pk, iv, NULL, 0, doc + i * CH, n, NULL);
        buf_add(out, ct, n + 16);
    }
}

static kmdc_status
expect_open(const struct buf *env, int dir, kmdc_status want, int want_auth,
            uint64_t want_released, const char *name)
{
    struct rd r;
    int auth = -1;
    kmdc_status rc;

    rd_init(&r, MK, NULL);
    rc = open_bytes(env->p, env->n, dir, 0, &r, &auth);
    if (!tap_ok(rc == want && auth == want_auth && r.released == want_released,
                "envelope: %s", name))
        tap_diag("got %s auth %d released %llu; want %s auth %d released %llu",
                 kmdc_status_name(rc), auth, (unsigned long long)r.released,
                 kmdc_status_name(want), want_auth,
                 (unsigned long long)want_released);
    return rc;
}

/* ------------------------------------------------------------------ */
/* memory accounting                                                  */

static size_t ossl_allocs;

static void *
cnt_malloc(size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    ossl_allocs++;
    return malloc(n);
}

static void *
cnt_realloc(void *p, size_t n, const char *file, int line)
{
    (void)file;
    (void)line;
    ossl_allocs++;
    return realloc(p, n);
}

static void
cnt_free(void *p, const char *file, int line)
{
    (void)file;
    (void)line;
    free(p);
}

static size_t
heap_now(void)
{
#ifdef TEST_ASAN
    return __sanitizer_get_current_allocated_bytes();
#else
    struct mallinfo2 mi = mallinfo2();
    return mi.uordblks;
#endif
}

static long
maxrss_kb(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return -1;
    return ru.ru_maxrss;
}

static kmdc_status
pipe_emit(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    return kmdc_open_update(arg, p, len, err);
}

struct stream_result {
    kmdc_status rc;
    size_t heap_peak;        /* heap in use at its highest while streaming */
    size_t allocs;           /* OpenSSL allocations during the run */
    uint64_t released;
    int mismatch;
};

/* Seal a generated document of `size` bytes and pipe the envelope straight
 * into a reader: nothing of the document is ever buffered by the test. */
static struct stream_result
stream_run(uint64_t size)
{
    static uint8_t block[99991];
    struct stream_result res;
    kmdc_header h;
    kmdc_meta m;
    kmdc_err err;
    struct rd r;
    kmdc_seal *s = NULL;
    kmdc_open *o = NULL;
    uint64_t off = 0;
    size_t allocs0 = ossl_allocs;

    memset(&res, 0, sizeof(res));
    mkheader(&h, KMDC_DIR_UP, 5, 6);
    mkmeta(&m, size, 1, 1);
    rd_init(&r, MK, NULL);
    r.verify = 1;
    r.track_heap = 1;
    res.rc = KMDC_ERR_INTERNAL;
    if ((s = kmdc_seal_new(&h, MK, NULL, &m, &err)) == NULL ||
        (o = kmdc_open_new(KMDC_DIR_UP, &CBS, &r, &err)) == NULL)
        goto out;
    while (off < size) {
        size_t n = size - off < sizeof(block) ? (size_t)(size - off) : sizeof(block);
        gen(block, off, n);
        if ((res.rc = kmdc_seal_update(s, block, n, pipe_emit, o, &err)) != KMDC_OK)
            goto out;
        off += n;
    }
    if ((res.rc = kmdc_seal_final(s, pipe_emit, o, &err)) != KMDC_OK ||
        (res.rc = kmdc_open_final(o, &err)) != KMDC_OK)
        goto out;
out:
    kmdc_seal_free(s);
    kmdc_open_free(o);
    res.heap_peak = r.heap_peak;
    res.allocs = ossl_allocs - allocs0;
    res.released = r.released;
    res.mismatch = r.mismatch + (int)r.bad_sizes;
    return res;
}

static void
test_memory_bound(int mem_hook_ok)
{
    struct stream_result warm, a, b;
    size_t base, after;
    long rss_a, rss_b;
    const uint64_t big = 100 * MiB, small = 10 * MiB;
#ifdef TEST_ASAN
    const char *how = "ASan allocator";
#else
    const char *how = "mallinfo2";
#endif

    warm = stream_run(MiB);
    base = heap_now();
    a = stream_run(small);
    rss_a = maxrss_kb();
    b = stream_run(big);
    rss_b = maxrss_kb();
    after = heap_now();
    tap_ok(warm.rc == KMDC_OK && a.rc == KMDC_OK && b.rc == KMDC_OK &&
           a.released == small && b.released == big && !a.mismatch && !b.mismatch,
           "envelope: streamed %llu and %llu MiB documents round-trip intact",
           (unsigned long long)(small / MiB), (unsigned long long)(big / MiB));
    tap_diag("heap in use (%s): base %zu, peak %zu (%llu MiB), peak %zu (%llu MiB), "
             "after %zu", how, base, a.heap_peak, (unsigned long long)(small / MiB),
             b.heap_peak, (unsigned long long)(big / MiB), after);
    tap_ok(b.heap_peak <= a.heap_peak + 4096,
           "envelope: heap in use does not grow with document size (%s)", how);
    tap_ok(a.heap_peak < base + 512 * 1024,
           "envelope: streaming holds under 512 KiB of heap (%zu bytes)",
           a.heap_peak - base);
    tap_ok(after <= base + 1024, "envelope: the heap returns to its base after free");
    tap_diag("peak RSS: %ld KiB after %llu MiB, %ld KiB after %llu MiB", rss_a,
             (unsigned long long)(small / MiB), rss_b, (unsigned long long)(big / MiB));
    tap_ok(rss_a > 0 && rss_b - rss_a < 1024,
           "envelope: peak RSS grows by less than 1 MiB from %llu to %llu MiB",
           (unsigned long long)(small / MiB), (unsigned long long)(big / MiB));
    tap_ok(mem_hook_ok && a.allocs == b.allocs && a.allocs > 0,
           "envelope: OpenSSL allocations do not depend on size (%zu and %zu)",
           a.allocs, b.allocs);
}

/* ------------------------------------------------------------------ */
/* header, keyblock and payload                                       */

static void
test_header(void)
{
    static const uint8_t want[40] = {
        'K', 'M', 'D', 'C', 1, 1, 0, 0,
        0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
        0, 0, 0, 0, 0, 0, 0, 7,
        0xa0, 0xa1, 0xa2, 0xa3, 0xa4, 0xa5, 0xa6, 0xa7,
        0xa8, 0xa9, 0xaa, 0xab, 0xac, 0xad, 0xae, 0xaf,
    };
    uint8_t b[40];
    kmdc_header h, d, n;
    kmdc_err err;
    int ok;

    mkheader(&h, KMDC_DIR_UP, UINT64_C(0x0123456789abcdef), 7);
    ok = kmdc_header_encode(b, &h, &err) == KMDC_OK;
    tap_mem_eq(b, ok ? 40 : 0, want, 40, "envelope: header encodes byte for byte");
    ok = kmdc_header_decode(&d, b, &err) == KMDC_OK;
    tap_ok(ok && d.version == 1 && d.direction == 1 && d.flags == 0 &&
           d.serial == h.serial && d.seq == 7 && memcmp(d.salt, h.salt, 16) == 0,
           "envelope: header decodes back");
    ok = kmdc_header_new(&n, KMDC_DIR_DOWN, 9, KMDC_U63_MAX, &err) == KMDC_OK &&
         kmdc_header_new(&d, KMDC_DIR_DOWN, 9, KMDC_U63_MAX, &err) == KMDC_OK;
    tap_ok(ok && n.direction == 2 && n.seq == KMDC_U63_MAX &&
           memcmp(n.salt, d.salt, 16) != 0, "envelope: header_new draws a fresh salt");
    h.serial = 0;
    tap_ok(kmdc_header_encode(b, &h, &err) == KMDC_ERR_ARG,
           "envelope: header_encode refuses serial 0");
    mkheader(&h, KMDC_DIR_UP, 1, KMDC_U63_MAX + 1);
    tap_ok(kmdc_header_encode(b, &h, &err) == KMDC_ERR_ARG,
           "envelope: header_encode refuses seq 2^63");
    tap_ok(kmdc_header_new(&h, 3, 1, 1, &err) == KMDC_ERR_ARG,
           "envelope: header_new refuses direction 3");

    memcpy(b, want, 40);
    b[8] = 0x80;
    tap_ok(kmdc_header_decode(&d, b, &err) == KMDC_ERR_FORMAT,
           "envelope: header with serial >= 2^63 is refused");
    memcpy(b, want, 40);
    memset(b + 8, 0, 8);
    tap_ok(kmdc_header_decode(&d, b, &err) == KMDC_ERR_FORMAT,
           "envelope: header with serial 0 is refused");
    memcpy(b, want, 40);
    b[16] = 0x80;
    tap_ok(kmdc_header_decode(&d, b, &err) == KMDC_ERR_FORMAT,
           "envelope: header with seq 2^63 is refused");
    memcpy(b, want, 40);
    b[5] = 0;
    tap_ok(kmdc_header_decode(&d, b, &err) == KMDC_ERR_FORMAT,
           "envelope: header with direction 0 is refused");
}

static void
test_keyblock(void)
{
    uint8_t hdr[40], kb[KMDC_KB_FRAME_MAX], dek[32];
    size_t kblen = 0;
    kmdc_header h;
    kmdc_meta m, got;
    kmdc_err err;
    int auth = -1, ok;
    struct buf raw = { 0 };
    uint8_t tlv[64];
    size_t tlvlen = 0;

    mkheader(&h, KMDC_DIR_UP, 11, 12);
    kmdc_header_encode(hdr, &h, NULL);
    mkmeta(&m, 1234, 3, 1);
    ok = kmdc_keyblock_seal(kb, sizeof(kb), &kblen, hdr, MK, DEK, &m, &err) == KMDC_OK;
    tap_ok(ok && kblen >= 4 + KMDC_KB_MIN && kmdc_get_u32(kb) == kblen - 4,
           "envelope: keyblock_seal writes u32 kb_len || keyblock");
    ok = kmdc_keyblock_open(dek, &got, &auth, hdr, MK, kb + 4, kblen - 4, &err) == KMDC_OK;
    tap_ok(ok && auth == 1 && kmdc_ct_eq(dek, 32, DEK, 32) && got.n_rcpt == 3 &&
           got.size == 1234 && got.has_name,
           "envelope: keyblock_open gives back the DEK and metadata");
    kb[10] ^= 0x04;
    tap_ok(kmdc_keyblock_open(dek, &got, &auth, hdr, MK, kb + 4, kblen - 4, &err) ==
           KMDC_ERR_AUTH && auth == 0 && !got.has_size &&
           kmdc_ct_eq(dek, 32, (const uint8_t[32]){ 0 }, 32),
           "envelope: keyblock with a flipped bit fails, DEK and meta wiped");
    kb[10] ^= 0x04;
    hdr[30] ^= 1;
    tap_ok(kmdc_keyblock_open(dek, &got, &auth, hdr, MK, kb + 4, kblen - 4, &err) ==
           KMDC_ERR_AUTH && auth == 0, "envelope: keyblock is bound to its header");
    hdr[30] ^= 1;
    tap_ok(kmdc_keyblock_open(dek, &got, &auth, hdr, MK, kb + 4, 58, &err) ==
           KMDC_ERR_FORMAT && auth == 0, "envelope: keyblock_open refuses kb_len 58");
    tap_ok(kmdc_keyblock_seal(kb, 60, &kblen, hdr, MK, DEK, &m, &err) == KMDC_ERR_LIMIT,
           "envelope: keyblock_seal refuses a buffer too small");
    kmdc_meta_init(&got);
    got.has_size = got.has_sent = 1;
    tap_ok(kmdc_keyblock_seal(kb, sizeof(kb), &kblen, hdr, MK, DEK, &got, &err) ==
           KMDC_ERR_ARG, "envelope: keyblock_seal refuses up metadata without RCPT");
    m.name[0] = '/';
    tap_ok(kmdc_keyblock_seal(kb, sizeof(kb), &kblen, hdr, MK, DEK, &m, &err) ==
           KMDC_ERR_NAME, "envelope: keyblock_seal refuses a bad NAME");

    /* Authenticated keyblocks whose TLV is bad keep specific errors. */
    memcpy(tlv, "\x01\x00\x01" "a" "\x02\x00\x02" ".." "\x04\x00\x08\0\0\0\0\0\0\0\0"
                "\x05\x00\x08\0\0\0\0\0\0\0\0", 3 + 1 + 3 + 2 + 11 + 11);
    tlvlen = 31;
    raw_keyblock(&raw, hdr, MK, DEK, tlv, tlvlen);
    tap_ok(kmdc_keyblock_open(dek, &got, &auth, hdr, MK, raw.p + 4, raw.n - 4, &err) ==
           KMDC_ERR_NAME && auth == 1,
           "envelope: authenticated keyblock with NAME \"..\" is KMDC_ERR_NAME");
    raw.n = 0;
    tlv[0] = 0x06;
    raw_keyblock(&raw, hdr, MK, DEK, tlv, tlvlen);
    tap_ok(kmdc_keyblock_open(dek, &got, &auth, hdr, MK, raw.p + 4, raw.n - 4, &err) ==
           KMDC_ERR_FORMAT && auth == 1,
           "envelope: authenticated keyblock with unknown type 0x06 is KMDC_ERR_FORMAT");
    buf_free(&raw);
}

static void
test_payload(void)
{
    struct buf ct = { 0 }, pt = { 0 };
    static uint8_t doc[3 * CH];
    kmdc_err err;
    kmdc_payload_enc *e;
    kmdc_payload_dec *d;
    struct rd r;
    int ok;

    gen(doc, 0, sizeof(doc));
    e = kmdc_payload_enc_new(DEK, SZ3, &err);
    ok = e != NULL && kmdc_payload_enc_update(e, doc, 100, emit_buf, &ct, &err) == KMDC_OK &&
         kmdc_payload_enc_update(e, doc + 100, SZ3 - 100, emit_buf, &ct, &err) == KMDC_OK &&
         kmdc_payload_enc_final(e, emit_buf, &ct, &err) == KMDC_OK;
    tap_ok(ok && ct.n == kmdc_payload_len(SZ3) && ct.n == SZ3 + 3 * 16 &&
           kmdc_payload_chunks(SZ3) == 3,
           "envelope: payload encoder writes 3 chunks with their tags");
    kmdc_payload_enc_free(e);

    rd_init(&r, MK, &pt);
    r.expect_size = SZ3;
    d = kmdc_payload_dec_new(DEK, SZ3, &err);
    ok = d != NULL && kmdc_payload_dec_update(d, ct.p, ct.n, cb_data, &r, &err) == KMDC_OK &&
         kmdc_payload_dec_final(d, &err) == KMDC_OK;
    tap_ok(ok && pt.n == SZ3 && memcmp(pt.p, doc, SZ3) == 0 && r.calls == 3 &&
           r.bad_sizes == 0,
           "envelope: payload decoder releases 3 whole chunks, intact");
    kmdc_payload_dec_free(d);

    d = kmdc_payload_dec_new(DEK, SZ3, &err);
    rd_init(&r, MK, NULL);
    ok = d != NULL && kmdc_payload_dec_update(d, ct.p, ct.n - 1, cb_data, &r, &err) == KMDC_OK &&
         kmdc_payload_dec_final(d, &err) == KMDC_ERR_TRUNCATED && r.released == 2 * CH;
    tap_ok(ok, "envelope: payload decoder reports a missing byte at final");
    kmdc_payload_dec_free(d);

    e = kmdc_payload_enc_new(DEK, 10, &err);
    ct.n = 0;
    tap_ok(e != NULL && kmdc_payload_enc_update(e, doc, 11, emit_buf, &ct, &err) ==
           KMDC_ERR_LIMIT && kmdc_payload_enc_final(e, emit_buf, &ct, &err) ==
           KMDC_ERR_LIMIT, "envelope: payload encoder refuses more than SIZE (sticky)");
    kmdc_payload_enc_free(e);
    e = kmdc_payload_enc_new(DEK, 10, &err);
    tap_ok(e != NULL && kmdc_payload_enc_update(e, doc, 9, emit_buf, &ct, &err) == KMDC_OK &&
           kmdc_payload_enc_final(e, emit_buf, &ct, &err) == KMDC_ERR_TRUNCATED,
           "envelope: payload encoder refuses fewer bytes than SIZE");
    kmdc_payload_enc_free(e);
    tap_ok(kmdc_payload_enc_new(DEK, KMDC_MAX_DOC + 1, &err) == NULL &&
           err.code == KMDC_ERR_LIMIT, "envelope: payload encoder refuses SIZE > 2^40");
    tap_ok(kmdc_payload_chunks(0) == 1 && kmdc_payload_chunks(CH) == 1 &&
           kmdc_payload_chunks(CH + 1) == 2 &&
           kmdc_payload_chunks(KMDC_MAX_DOC) == (UINT64_C(1) << 24),
           "envelope: chunk counts for 0, 64 KiB, 64 KiB + 1 and 2^40 bytes");
    buf_free(&ct);
    buf_free(&pt);
}

/* ------------------------------------------------------------------ */
/* round trips                                                        */

static void
round_trip(size_t size, int seal_mode, int open_mode, size_t nrcpt, int name_type,
           int dir, const char *label)
{
    static uint8_t *doc;
    static size_t doc_cap;
    struct buf env = { 0 }, pt = { 0 };
    kmdc_header h;
    kmdc_meta m;
    struct rd r;
    kmdc_status rc1, rc2 = KMDC_ERR_INTERNAL;
    int auth = 0;
    const char *modes[3] = { "at once", "1 byte at a time", "in random slices" };

    if (size > doc_cap) {
        free(doc);
        doc = malloc(size);
        doc_cap = size;
    }
    if (size > 0)
        gen(doc, 0, size);
    mkheader(&h, dir, 0x1234, 99);
    if (dir == KMDC_DIR_UP)
        mkmeta(&m, size, nrcpt, name_type);
    else
        mkmeta_down(&m, size);
    rc1 = seal_doc(&env, &h, MK, NULL, &m, doc, size, seal_mode);
    rd_init(&r, MK, &pt);
    if (rc1 == KMDC_OK)
        rc2 = open_bytes(env.p, env.n, dir, open_mode, &r, &auth);
    tap_ok(rc1 == KMDC_OK && rc2 == KMDC_OK && auth == 1 && pt.n == size &&
           (size == 0 || memcmp(pt.p, doc, size) == 0) && r.headers == 1 &&
           r.metas == 1 && r.bad_sizes == 0 && r.m.size == size &&
           r.m.n_rcpt == (dir == KMDC_DIR_UP ? nrcpt : 0) &&
           r.m.has_name == (dir == KMDC_DIR_UP && name_type) &&
           r.h.serial == 0x1234 && r.h.seq == 99 &&
           env.n > 44 && env.n == 44 + kmdc_get_u32(env.p + 40) + kmdc_payload_len(size),
           "envelope: %s round trip, %zu bytes, sealed %s, opened %s", label, size,
           modes[seal_mode], modes[open_mode]);
    buf_free(&env);
    buf_free(&pt);
    if (size >= 10 * MiB) {
        free(doc);
        doc = NULL;
        doc_cap = 0;
    }
}

static void
test_round_trips(void)
{
    static const size_t sizes[] = { 0, 1, CH - 1, CH, CH + 1 };
    size_t i;
    struct buf a = { 0 }, b = { 0 }, pt = { 0 };
    static uint8_t doc[SZ3];
    kmdc_header h;
    kmdc_meta m;
    struct rd r;
    kmdc_err err;
    kmdc_open *o;
    int ok;

    for (i = 0; i < sizeof(sizes) / sizeof(sizes[0]); i++) {
        round_trip(sizes[i], 2, 2, 1, 0, KMDC_DIR_UP, "up, 1 recipient,");
        round_trip(sizes[i], 1, 1, 3, 1, KMDC_DIR_UP, "up, 3 recipients, NAME and TYPE,");
    }
    round_trip(SZ3, 0, 1, 1, 1, KMDC_DIR_UP, "up, 3 chunks,");
    round_trip(SZ3, 2, 2, 2, 0, KMDC_DIR_DOWN, "down,");
    round_trip(0, 0, 0, 0, 0, KMDC_DIR_DOWN, "down, empty,");
    round_trip(10 * MiB, 2, 2, 3, 1, KMDC_DIR_UP, "up, 3 recipients,");
    round_trip(10 * MiB + 7, 0, 0, 1, 0, KMDC_DIR_UP, "up,");

    /* The writer's output is exactly the construction from the primitives. */
    gen(doc, 0, SZ3);
    mkheader(&h, KMDC_DIR_UP, 3, 4);
    mkmeta(&m, SZ3, 2, 1);
    hand_env(&a, &h, &m, doc, SZ3, -1, 99);
    seal_doc(&b, &h, MK, DEK, &m, doc, SZ3, 2);
    tap_mem_eq(b.p, b.n, a.p, a.n,
               "envelope: writer output equals header || keyblock || chunks built by hand");

    /* A random DEK: two seals differ, both open. */
    a.n = 0;
    b.n = 0;
    seal_doc(&a, &h, MK, NULL, &m, doc, 1000, 0);
    seal_doc(&b, &h, MK, NULL, &m, doc, 1000, 0);
    ok = a.n == b.n && memcmp(a.p + 44, b.p + 44, a.n - 44) != 0;
    tap_ok(ok, "envelope: a random DEK makes each seal different");

    /* Accessors and the DEK. */
    a.n = 0;
    mkmeta(&m, 1000, 1, 0);
    seal_doc(&a, &h, MK, DEK, &m, doc, 1000, 0);
    rd_init(&r, MK, &pt);
    o = kmdc_open_new(KMDC_DIR_UP, &CBS, &r, &err);
    ok = o != NULL && kmdc_open_header(o) == NULL && kmdc_open_meta(o) == NULL &&
         !kmdc_open_authenticated(o) &&
         kmdc_open_update(o, a.p, 40, &err) == KMDC_OK && kmdc_open_header(o) != NULL &&
         kmdc_open_header(o)->serial == 3 && kmdc_open_meta(o) == NULL &&
         kmdc_open_update(o, a.p + 40, a.n - 40 - 1016, &err) == KMDC_OK &&
         kmdc_open_authenticated(o) && kmdc_open_meta(o) != NULL &&
         kmdc_open_meta(o)->size == 1000 && kmdc_open_dek(o) != NULL &&
         kmdc_ct_eq(kmdc_open_dek(o), 32, DEK, 32) && r.released == 0 &&
         kmdc_open_update(o, a.p + a.n - 1016, 1016, &err) == KMDC_OK &&
         r.released == 1000 && kmdc_open_final(o, &err) == KMDC_OK;
    tap_ok(ok, "envelope: accessors follow the reader through header, keyblock and payload");
    kmdc_open_free(o);

    /* Seal argument checks. */
    mkmeta(&m, 10, 1, 0);
    h.flags = 1;
    tap_ok(kmdc_seal_new(&h, MK, NULL, &m, &err) == NULL && err.code == KMDC_ERR_ARG,
           "envelope: the writer refuses a header with flags set");
    h.flags = 0;
    a.n = 0;
    tap_ok(seal_doc(&a, &h, MK, DEK, &m, doc, 11, 0) == KMDC_ERR_LIMIT,
           "envelope: the writer refuses more plaintext than SIZE");
    a.n = 0;
    tap_ok(seal_doc(&a, &h, MK, DEK, &m, doc, 9, 0) == KMDC_ERR_TRUNCATED,
           "envelope: the writer refuses less plaintext than SIZE");
    mkheader(&h, KMDC_DIR_DOWN, 3, 4);
    tap_ok(kmdc_seal_new(&h, MK, NULL, &m, &err) == NULL,
           "envelope: the writer refuses up metadata under a down header");
    buf_free(&a);
    buf_free(&b);
    buf_free(&pt);
}

/* ------------------------------------------------------------------ */
/* refusals                                                           */

/* The fixture of the refusal cases, built anew by each: a 3-chunk document,
 * the up envelope the writer makes of it (p0: its first payload byte), and a
 * scratch buffer to damage a copy of it in. */
struct rfx {
    uint8_t *doc;
    struct buf env, bad;
    kmdc_header h;
    kmdc_meta m;
    size_t p0;
};

static void
rfx_init(struct rfx *f)
{
    memset(f, 0, sizeof(*f));
    if ((f->doc = malloc(3 * CH)) == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    gen(f->doc, 0, 3 * CH);
    mkheader(&f->h, KMDC_DIR_UP, 21, 22);
    mkmeta(&f->m, SZ3, 1, 0);
    seal_doc(&f->env, &f->h, MK, DEK, &f->m, f->doc, SZ3, 0);
    f->p0 = 44 + kmdc_get_u32(f->env.p + 40);
}

/* A fresh copy of the envelope in f->bad. */
static void
rfx_copy(struct rfx *f)
{
    f->bad.n = 0;
    buf_add(&f->bad, f->env.p, f->env.n);
}

static void
rfx_done(struct rfx *f)
{
    buf_free(&f->env);
    buf_free(&f->bad);
    free(f->doc);
}

/* Header bits. */
static void
refuse_header(void)
{
    struct rfx f;
    size_t i;
    char name[128];

    rfx_init(&f);
    tap_ok(f.env.n == f.p0 + SZ3 + 48, "envelope: 3-chunk envelope has the expected length");
    {
        static const struct { size_t off; uint8_t bit; kmdc_status rc; const char *what; }
        hb[] = {
            { 0, 0x01, KMDC_ERR_FORMAT, "magic" },
            { 4, 0x02, KMDC_ERR_FORMAT, "version (1 -> 3)" },
            { 5, 0x02, KMDC_ERR_FORMAT, "direction (1 -> 3)" },
            { 7, 0x01, KMDC_ERR_FORMAT, "flags" },
            { 15, 0x01, KMDC_ERR_AUTH, "serial" },
            { 23, 0x01, KMDC_ERR_AUTH, "seq" },
            { 30, 0x40, KMDC_ERR_AUTH, "salt" },
        };
        for (i = 0; i < sizeof(hb) / sizeof(hb[0]); i++) {
            rfx_copy(&f);
            f.bad.p[hb[i].off] ^= hb[i].bit;
            snprintf(name, sizeof(name), "a flipped bit in the header %s is refused",
                     hb[i].what);
            expect_open(&f.bad, KMDC_DIR_UP, hb[i].rc, 0, 0, name);
        }
    }
    rfx_copy(&f);
    f.bad.p[4] = 2;
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_FORMAT, 0, 0, "version 2 is refused");
    rfx_copy(&f);
    kmdc_put_u16(f.bad.p + 6, 0x8000);
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_FORMAT, 0, 0, "non-zero flags are refused");
    rfx_copy(&f);
    memcpy(f.bad.p, "KMDD", 4);
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_FORMAT, 0, 0, "bad magic is refused");
    expect_open(&f.env, KMDC_DIR_DOWN, KMDC_ERR_FORMAT, 0, 0,
                "an up envelope is refused by a down reader");
    rfx_done(&f);
}

/* kb_len. */
static void
refuse_kb_len(void)
{
    struct rfx f;
    struct rd r;
    size_t i;
    kmdc_status rc;
    kmdc_err err;

    rfx_init(&f);
    rfx_copy(&f);
    f.bad.p[43] ^= 0x01;
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 0, 0,
                "a flipped low bit in kb_len fails authentication");
    rfx_copy(&f);
    f.bad.p[40] ^= 0x80;
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_FORMAT, 0, 0,
                "a flipped high bit in kb_len is a framing error");
    {
        static const uint32_t lens[] = { 0, 58, KMDC_KB_MAX + 1, UINT32_MAX };
        for (i = 0; i < sizeof(lens) / sizeof(lens[0]); i++) {
            kmdc_open *o;
            rd_init(&r, MK, NULL);
            f.bad.n = 0;
            buf_add(&f.bad, f.env.p, 40);
            f.bad.p[40] = 0;   /* placeholder, overwritten below */
            f.bad.n = 44;
            kmdc_put_u32(f.bad.p + 40, lens[i]);
            o = kmdc_open_new(KMDC_DIR_UP, &CBS, &r, &err);
            rc = kmdc_open_update(o, f.bad.p, 44, &err);
            tap_ok(rc == KMDC_ERR_FORMAT && !kmdc_open_authenticated(o) && r.headers == 1,
                   "envelope: kb_len %lu is refused as soon as it is read",
                   (unsigned long)lens[i]);
            kmdc_open_free(o);
        }
    }
    f.bad.n = 0;
    buf_add(&f.bad, f.env.p, 40);
    {
        uint8_t l[4], z[KMDC_KB_MAX];
        memset(z, 0x5a, sizeof(z));
        kmdc_put_u32(l, KMDC_KB_MIN);
        buf_add(&f.bad, l, 4);
        buf_add(&f.bad, z, KMDC_KB_MIN);
        expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 0, 0,
                    "kb_len 59 is read in full and fails only its tag");
        f.bad.n = 40;
        kmdc_put_u32(l, KMDC_KB_MAX);
        buf_add(&f.bad, l, 4);
        buf_add(&f.bad, z, KMDC_KB_MAX);
        expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 0, 0,
                    "kb_len 16 KiB + 48 is read in full and fails only its tag");
    }
    rfx_done(&f);
}

/* Keyblock bits. */
static void
refuse_keyblock(void)
{
    struct rfx f;
    struct rd r;
    kmdc_status rc;
    int auth = 0;
    uint8_t wrong_mk[32];

    rfx_init(&f);
    rfx_copy(&f);
    f.bad.p[44] ^= 0x01;
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 0, 0,
                "a flipped bit in the keyblock's first byte fails authentication");
    rfx_copy(&f);
    f.bad.p[f.p0 - 1] ^= 0x80;
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 0, 0,
                "a flipped bit in the keyblock's tag fails authentication");
    memset(wrong_mk, 0x42, sizeof(wrong_mk));
    rd_init(&r, wrong_mk, NULL);
    rc = open_bytes(f.env.p, f.env.n, KMDC_DIR_UP, 0, &r, &auth);
    tap_ok(rc == KMDC_ERR_AUTH && auth == 0 && r.metas == 0 && r.released == 0,
           "envelope: a reader given the wrong MK is refused before any metadata");
    rfx_done(&f);
}

/* Chunk bits: no plaintext of the failing chunk is released. */
static void
refuse_chunks(void)
{
    struct rfx f;
    struct rd r;
    size_t i;
    kmdc_status rc;
    int auth = 0;
    char name[128];

    rfx_init(&f);
    {
        static const char *const which[3] = { "first", "middle", "last" };
        for (i = 0; i < 3; i++) {
            size_t at = f.p0 + i * (CH + 16) + 100;
            rfx_copy(&f);
            f.bad.p[at] ^= 0x10;
            snprintf(name, sizeof(name),
                     "a flipped bit in the %s chunk fails, %zu bytes released before it",
                     which[i], i * CH);
            expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 1, i * CH, name);
            rfx_copy(&f);
            f.bad.p[f.p0 + i * (CH + 16) + (i < 2 ? CH : 1000) + 15] ^= 0x01;
            snprintf(name, sizeof(name), "a flipped bit in the %s chunk's tag fails",
                     which[i]);
            expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 1, i * CH, name);
        }
    }
    /* Byte-at-a-time reader also releases nothing of a failing chunk. */
    rfx_copy(&f);
    f.bad.p[f.p0 + CH + 16 + CH + 15] ^= 0x01;
    rd_init(&r, MK, NULL);
    rc = open_bytes(f.bad.p, f.bad.n, KMDC_DIR_UP, 1, &r, &auth);
    tap_ok(rc == KMDC_ERR_AUTH && r.released == CH && r.calls == 1,
           "envelope: fed 1 byte at a time, a bad middle chunk releases none of its bytes");
    rfx_done(&f);
}

/* Truncation at every chunk boundary and mid-chunk. */
static void
refuse_truncation(void)
{
    struct rfx f;
    size_t i;
    char name[128];

    rfx_init(&f);
    {
        static const struct { long off; const char *what; uint64_t rel; } cut[] = {
            { 0, "empty input", 0 },
            { 20, "inside the header", 0 },
            { 40, "after the header", 0 },
            { 42, "inside kb_len", 0 },
            { 44, "after kb_len", 0 },
            { -3, "inside the keyblock", 0 },   /* f.p0 - 3 */
            { -1, "after the keyblock (no payload)", 0 },
            { -2, "inside chunk 1", 0 },
            { -10, "after chunk 1", CH },
            { -11, "inside chunk 2", CH },
            { -20, "after chunk 2 (missing last chunk)", 2 * CH },
            { -21, "inside the last chunk", 2 * CH },
            { -22, "inside the last chunk's tag", 2 * CH },
        };
        for (i = 0; i < sizeof(cut) / sizeof(cut[0]); i++) {
            size_t n;
            switch (cut[i].off) {
            case -3: n = f.p0 - 3; break;
            case -1: n = f.p0; break;
            case -2: n = f.p0 + 30000; break;
            case -10: n = f.p0 + CH + 16; break;
            case -11: n = f.p0 + CH + 16 + 5; break;
            case -20: n = f.p0 + 2 * (CH + 16); break;
            case -21: n = f.p0 + 2 * (CH + 16) + 500; break;
            case -22: n = f.env.n - 1; break;
            default: n = (size_t)cut[i].off; break;
            }
            rfx_copy(&f);
            f.bad.n = n;
            snprintf(name, sizeof(name), "truncated %s is refused", cut[i].what);
            expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_TRUNCATED, n >= f.p0, cut[i].rel, name);
        }
    }
    rfx_done(&f);
}

static void
refuse_hand_built(void)
{
    struct rfx f;


    rfx_init(&f);
    /* Hand-built chunk sequences. */
    f.bad.n = 0;
    hand_env(&f.bad, &f.h, &f.m, f.doc, SZ3, -1, 99);
    tap_ok(f.bad.n == f.env.n && memcmp(f.bad.p, f.env.p, f.env.n) == 0,
           "envelope: the hand-built envelope matches the writer's");
    f.bad.n = 0;
    hand_env(&f.bad, &f.h, &f.m, f.doc, SZ3, -1, 2);
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_TRUNCATED, 1, 2 * CH,
                "missing last chunk is refused at final");
    f.bad.n = 0;
    hand_env(&f.bad, &f.h, &f.m, f.doc, SZ3, 2, 99);
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 1, 2 * CH,
                "last chunk sealed with flag 0 is refused");
    f.bad.n = 0;
    hand_env(&f.bad, &f.h, &f.m, f.doc, SZ3, 0, 99);
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 1, 0,
                "first chunk sealed with flag 1 is refused");
    f.bad.n = 0;
    hand_env(&f.bad, &f.h, &f.m, f.doc, SZ3, 1, 2);
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 1, CH,
                "a premature last chunk (flag 1 on chunk 2 of 3) is refused");
    {
        kmdc_meta m1;
        mkmeta(&m1, 0, 1, 0);
        f.bad.n = 0;
        hand_env(&f.bad, &f.h, &m1, f.doc, 0, 0, 99);
        expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 1, 0,
                    "an empty document's only chunk with flag 0 is refused");
        f.bad.n = 0;
        hand_env(&f.bad, &f.h, &m1, f.doc, 0, -1, 99);
        expect_open(&f.bad, KMDC_DIR_UP, KMDC_OK, 1, 0,
                    "an empty document's only chunk with flag 1 is accepted");
        buf_add(&f.bad, "x", 1);
        expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_TRAILING, 1, 0,
                    "a byte after an empty document's chunk is refused");
    }
    rfx_done(&f);
}

static void
refuse_trailing(void)
{
    struct rfx f;


    rfx_init(&f);
    /* Trailing bytes. */
    rfx_copy(&f);
    buf_add(&f.bad, "\0", 1);
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_TRAILING, 1, SZ3,
                "one trailing byte after the last chunk is refused");
    rfx_copy(&f);
    buf_add(&f.bad, f.env.p + f.p0, CH + 16);
    expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_TRAILING, 1, SZ3,
                "an extra chunk after the last chunk is refused");

    /* SIZE not matching the payload. */
    {
        kmdc_meta ms;
        mkmeta(&ms, 1000, 1, 0);
        f.bad.n = 0;
        hand_env(&f.bad, &f.h, &ms, f.doc, 1001, -1, 99);
        expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 1, 0,
                    "a payload one byte longer than SIZE is refused");
        mkmeta(&ms, 1001, 1, 0);
        f.bad.n = 0;
        hand_env(&f.bad, &f.h, &ms, f.doc, 1000, -1, 99);
        expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_TRUNCATED, 1, 0,
                    "a payload one byte shorter than SIZE is refused");
        mkmeta(&ms, CH, 1, 0);
        f.bad.n = 0;
        hand_env(&f.bad, &f.h, &ms, f.doc, CH + 1, -1, 99);
        expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 1, 0,
                    "SIZE of one chunk with a payload of two is refused");
        mkmeta(&ms, CH + 1, 1, 0);
        f.bad.n = 0;
        hand_env(&f.bad, &f.h, &ms, f.doc, CH, -1, 99);
        expect_open(&f.bad, KMDC_DIR_UP, KMDC_ERR_AUTH, 1, 0,
                    "SIZE of two chunks with a payload of one is refused");
    }
    rfx_done(&f);
}

/* Bad TLV in an authenticated keyblock keeps its specific code. */
static void
refuse_tlv(void)
{
    struct rfx f;
    struct rd r;
    kmdc_status rc;
    int auth = 0;

    rfx_init(&f);
    {
        uint8_t hdr[40];
        static const uint8_t tlv[] = {
            0x01, 0, 1, 'a', 0x02, 0, 1, '/', 0x04, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0,
            0x05, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0,
        };
        kmdc_header_encode(hdr, &f.h, NULL);
        f.bad.n = 0;
        buf_add(&f.bad, hdr, 40);
        raw_keyblock(&f.bad, hdr, MK, DEK, tlv, sizeof(tlv));
        rd_init(&r, MK, NULL);
        rc = open_bytes(f.bad.p, f.bad.n, KMDC_DIR_UP, 2, &r, &auth);
        tap_ok(rc == KMDC_ERR_NAME && auth == 1 && r.metas == 0,
               "envelope: NAME \"/\" in an authenticated keyblock is KMDC_ERR_NAME");
    }
    rfx_done(&f);
}

/* Callbacks refusing. */
static void
refuse_callbacks(void)
{
    struct rfx f;
    struct rd r;
    kmdc_status rc;
    int auth = 0;
    kmdc_err err;

    rfx_init(&f);
    rd_init(&r, MK, NULL);
    r.header_rc = KMDC_ERR_NOTFOUND;
    rc = open_bytes(f.env.p, f.env.n, KMDC_DIR_UP, 0, &r, &auth);
    tap_ok(rc == KMDC_ERR_NOTFOUND && auth == 0 && r.metas == 0,
           "envelope: on_header's refusal is returned as is");
    rd_init(&r, MK, NULL);
    r.meta_rc = KMDC_ERR_LIMIT;
    rc = open_bytes(f.env.p, f.env.n, KMDC_DIR_UP, 2, &r, &auth);
    tap_ok(rc == KMDC_ERR_LIMIT && auth == 1 && r.released == 0,
           "envelope: on_meta's refusal is returned as is, no data released");
    rd_init(&r, MK, NULL);
    r.data_rc = KMDC_ERR_IO;
    rc = open_bytes(f.env.p, f.env.n, KMDC_DIR_UP, 0, &r, &auth);
    tap_ok(rc == KMDC_ERR_IO && auth == 1,
           "envelope: on_data's error aborts the reader and is returned as is");
    {
        kmdc_open *o;
        kmdc_err e2;
        rfx_copy(&f);
        f.bad.p[f.p0 + 5] ^= 1;
        rd_init(&r, MK, NULL);
        o = kmdc_open_new(KMDC_DIR_UP, &CBS, &r, &err);
        rc = kmdc_open_update(o, f.bad.p, f.bad.n, &err);
        tap_ok(rc == KMDC_ERR_AUTH && kmdc_open_update(o, f.bad.p, 1, &e2) == KMDC_ERR_AUTH &&
               e2.code == KMDC_ERR_AUTH && strcmp(e2.msg, err.msg) == 0 &&
               kmdc_open_final(o, NULL) == KMDC_ERR_AUTH && kmdc_open_meta(o) == NULL &&
               kmdc_open_dek(o) == NULL,
               "envelope: the first error sticks and the DEK is gone");
        kmdc_open_free(o);
    }
    tap_ok(kmdc_open_new(3, &CBS, NULL, &err) == NULL && err.code == KMDC_ERR_ARG,
           "envelope: open_new refuses direction 3");
    rfx_done(&f);
}

static void
test_refusals(void)
{
    TEST_RUN(refuse_header);
    TEST_RUN(refuse_kb_len);
    TEST_RUN(refuse_keyblock);
    TEST_RUN(refuse_chunks);
    TEST_RUN(refuse_truncation);
    TEST_RUN(refuse_hand_built);
    TEST_RUN(refuse_trailing);
    TEST_RUN(refuse_tlv);
    TEST_RUN(refuse_callbacks);
}

int
main(void)
{
    int hook = CRYPTO_set_mem_functions(cnt_malloc, cnt_realloc, cnt_free);

    /* First, before anything buffers a document and raises the peak RSS. */
    test_memory_bound(hook);
    test_header();
    test_keyblock();
    test_payload();
    test_round_trips();
    test_refusals();
    return tap_done();
}
