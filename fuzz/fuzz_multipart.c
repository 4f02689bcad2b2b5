/*
 * fuzz_multipart.c - the multipart/form-data parser and the Content-Type
 * boundary extraction.
 *
 * Input: byte 0 picks the limits and a split point; then, when a "\n" occurs
 * in the next 200 bytes, the text before it is a Content-Type value whose
 * boundary is used (else the boundary "XyZ"); the rest is the body.  The body
 * is parsed whole, in two slices split at an arbitrary point, and (when
 * short) one byte at a time; the three runs must agree on the status and on
 * the events (part headers, content bytes, ends), and the callbacks must come
 * in order with no empty data and no delimiter bytes.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_multipart.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

struct trace {
    uint64_t h;          /* FNV-1a over the event stream */
    int in_part;
    const char *delim;   /* CRLF "--" B, for the no-delimiter check */
    size_t dlen;
    size_t tail_len;     /* content bytes of this part so far (capped) */
    uint8_t tail[80];    /* the last bytes of content, to find a delimiter */
};

static void
mix(struct trace *t, const void *p, size_t n)
{
    const uint8_t *b = p;
    size_t i;

    for (i = 0; i < n; i++) {
        t->h ^= b[i];
        t->h *= UINT64_C(0x100000001b3);
    }
}

static void
mix_str(struct trace *t, const char *s)
{
    size_t n = s != NULL ? strlen(s) + 1 : 0;

    mix(t, &n, sizeof(n));
    if (s != NULL)
        mix(t, s, n);
}

static kmdc_status
on_begin(void *arg, const char *name, const char *fn, const char *ct, kmdc_err *err)
{
    struct trace *t = arg;

    (void)err;
    if (t->in_part || name == NULL || name[0] == '\0')
        abort();
    t->in_part = 1;
    t->tail_len = 0;
    mix(t, "B", 1);
    mix_str(t, name);
    mix_str(t, fn);
    mix_str(t, ct);
    return KMDC_OK;
}

static kmdc_status
on_data(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    struct trace *t = arg;
    size_t i;

    (void)err;
    if (!t->in_part || len == 0)
        abort();
    mix(t, p, len);
    /* the content must never contain CRLF "--" B: slide a window over it */
    for (i = 0; i < len; i++) {
        if (t->tail_len == sizeof(t->tail)) {
            memmove(t->tail, t->tail + 1, sizeof(t->tail) - 1);
            t->tail_len--;
        }
        t->tail[t->tail_len++] = p[i];
        if (t->tail_len >= t->dlen &&
            memcmp(t->tail + t->tail_len - t->dlen, t->delim, t->dlen) == 0)
            abort();
    }
    return KMDC_OK;
}

static kmdc_status
on_end(void *arg, kmdc_err *err)
{
    struct trace *t = arg;

    (void)err;
    if (!t->in_part)
        abort();
    t->in_part = 0;
    mix(t, "E", 1);
    return KMDC_OK;
}

static const struct kmdc_mp_cbs cbs = { on_begin, on_data, on_end };

static kmdc_status
parse(const char *boundary, const kmdc_mp_limits *lim, const uint8_t *body,
      size_t len, size_t step, size_t split, struct trace *t)
{
    char delim[4 + KMDC_MP_BOUNDARY_MAX + 1];
    kmdc_err e;
    kmdc_mp *mp;
    kmdc_status rc = KMDC_OK;
    size_t off = 0;

    memset(t, 0, sizeof(*t));
    t->h = UINT64_C(0xcbf29ce484222325);
    t->dlen = 4 + strlen(boundary);
    memcpy(delim, "\r\n--", 4);
    memcpy(delim + 4, boundary, t->dlen - 4 + 1);
    t->delim = delim;
    if ((mp = kmdc_mp_new(boundary, lim, &cbs, t, &e)) == NULL)
        abort();
    if (split > 0) {
        rc = kmdc_mp_update(mp, body, split, &e);
        off = split;
    }
    while (rc == KMDC_OK && off < len) {
        size_t n = len - off < step ? len - off : step;
        rc = kmdc_mp_update(mp, body + off, n, &e);
        off += n;
    }
    if (rc == KMDC_OK)
        rc = kmdc_mp_final(mp, &e);
    if (rc == KMDC_OK && t->in_part)
        abort();
    if (kmdc_mp_final(mp, &e) != rc)
        abort();    /* final is stable */
    kmdc_mp_free(mp);
    t->delim = NULL;
    mix(t, &rc, sizeof(rc));
    return rc;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char boundary[KMDC_MP_BOUNDARY_MAX + 1] = "XyZ";
    char ct[201];
    kmdc_mp_limits lim;
    struct trace t1, t2, t3;
    kmdc_status r1, r2, r3;
    const uint8_t *body, *nl;
    size_t len, split;
    uint8_t sel;

    if (size < 1)
        return 0;
    sel = data[0];
    data++;
    size--;
    nl = memchr(data, '\n', size < 200 ? size : 200);
    if (nl != NULL) {
        size_t n = (size_t)(nl - data);
        memcpy(ct, data, n);
        ct[n] = '\0';
        if (kmdc_mp_boundary_from_content_type(ct, boundary, NULL) != KMDC_OK)
            memcpy(boundary, "XyZ", 4);
        data = nl + 1;
        size -= n + 1;
    }
    body = data;
    len = size;

    kmdc_mp_limits_default(&lim);
    if (sel & 1) {
        lim.max_parts = 1 + (sel >> 1 & 3);
        lim.max_header_bytes = 64 + (sel >> 3 & 3) * 40;
        lim.max_name = 1 + (sel >> 5 & 7) * 4;
        lim.max_padding = sel >> 5 & 3;
        lim.max_epilogue = (sel >> 3 & 3) * 2;
    }
    split = len > 0 ? (size_t)sel * len / 256 : 0;

    r1 = parse(boundary, &lim, body, len, len > 0 ? len : 1, 0, &t1);
    r2 = parse(boundary, &lim, body, len, len > 0 ? len : 1, split, &t2);
    if (r1 != r2 || t1.h != t2.h)
        abort();
    if (len <= 4096) {
        r3 = parse(boundary, &lim, body, len, 1, 0, &t3);
        if (r1 != r3 || t1.h != t3.h)
            abort();
    }
    return 0;
}
