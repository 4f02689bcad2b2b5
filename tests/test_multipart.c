/* test_multipart.c - the strict streaming multipart/form-data parser. */
#include "tap.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_multipart.h"

#define B "------------------------d74496d66958873e"   /* what curl sends */
#define CT "multipart/form-data; boundary=" B
#define SERIAL "0123456789abcdef"

/* --- a growable byte buffer ------------------------------------------------ */

struct buf {
    uint8_t *p;
    size_t len, cap;
};

static void
buf_add(struct buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 256;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->p = realloc(b->p, cap);
        if (b->p == NULL)
            abort();
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = 0;
}

static void
buf_s(struct buf *b, const char *s)
{
    buf_add(b, s, strlen(s));
}

static void
buf_free(struct buf *b)
{
    free(b->p);
    memset(b, 0, sizeof(*b));
}

/* --- a recorder for the callbacks ------------------------------------------ */

#define MAXP 8

struct part {
    char name[512], filename[512], ctype[2048];
    int has_fn, has_ct, ended;
    struct buf data;
};

struct rec {
    struct part p[MAXP];
    size_t n;
    int in_part;
    int bad_order;       /* data or end outside a part, begin inside one */
    int zero_len;        /* part_data called with len 0 */
    kmdc_status fail_begin, fail_data;   /* inject a callback error */
};

static kmdc_status
cb_begin(void *arg, const char *name, const char *filename, const char *ct,
         kmdc_err *err)
{
    struct rec *r = arg;
    struct part *p;

    if (r->fail_begin != KMDC_OK)
        return kmdc_err_set(err, r->fail_begin, "injected begin error");
    if (r->in_part || r->n >= MAXP) {
        r->bad_order = 1;
        return KMDC_OK;
    }
    p = &r->p[r->n++];
    snprintf(p->name, sizeof(p->name), "%s", name);
    if ((p->has_fn = filename != NULL))
        snprintf(p->filename, sizeof(p->filename), "%s", filename);
    if ((p->has_ct = ct != NULL))
        snprintf(p->ctype, sizeof(p->ctype), "%s", ct);
    r->in_part = 1;
    return KMDC_OK;
}

static kmdc_status
cb_data(void *arg, const uint8_t *d, size_t len, kmdc_err *err)
{
    struct rec *r = arg;

    if (r->fail_data != KMDC_OK)
        return kmdc_err_set(err, r->fail_data, "injected data error");
    if (len == 0)
        r->zero_len = 1;
    if (!r->in_part)
        r->bad_order = 1;
    else
        buf_add(&r->p[r->n - 1].data, d, len);
    return KMDC_OK;
}

static kmdc_status
cb_end(void *arg, kmdc_err *err)
{
    struct rec *r = arg;

    (void)err;
    if (!r->in_part)
        r->bad_order = 1;
    else
        r->p[r->n - 1].ended = 1;
    r->in_part = 0;
    return KMDC_OK;
}

static const struct kmdc_mp_cbs cbs = { cb_begin, cb_data, cb_end };

static void
rec_free(struct rec *r)
{
    size_t i;
    for (i = 0; i < MAXP; i++)
        buf_free(&r->p[i].data);
    memset(r, 0, sizeof(*r));
}

/* Feeding modes. */
enum { WHOLE, BYTES, RANDOM };

static unsigned long rng = 1;

static size_t
rnd(size_t n)
{
    rng = rng * 6364136223846793005UL + 1442695040888963407UL;
    return (size_t)((rng >> 33) % n);
}

/*
 * Parse body in the given mode; returns the first error or the result of
 * final.  r receives the events (pass a zeroed struct; rec_free after).
 */
static kmdc_status
run(const void *body, size_t len, const char *boundary, int mode,
    const kmdc_mp_limits *lim, struct rec *r, kmdc_err *e)
{
    const uint8_t *p = body;
    kmdc_mp *mp;
    kmdc_status rc = KMDC_OK;
    size_t off = 0;

    kmdc_err_clear(e);
    if ((mp = kmdc_mp_new(boundary, lim, &cbs, r, e)) == NULL)
        return e->code;
    while (off < len && rc == KMDC_OK) {
        size_t n = mode == WHOLE ? len : mode == BYTES ? 1 : rnd(97);
        if (n > len - off)
            n = len - off;
        rc = kmdc_mp_update(mp, p + off, n, e);
        off += n;
    }
    if (rc == KMDC_OK)
        rc = kmdc_mp_final(mp, e);
    kmdc_mp_free(mp);
    return rc;
}

/* Run body whole, byte by byte and in random slices; want the same status
 * each time (diagnosing mismatches). */
static int
status_all(const struct buf *body, const char *boundary, const kmdc_mp_limits *lim,
           kmdc_status want)
{
    int mode, seed, ok = 1;

    for (mode = WHOLE; mode <= RANDOM; mode++) {
        for (seed = 0; seed < (mode == RANDOM ? 5 : 1); seed++) {
            struct rec r;
            kmdc_err e;
            kmdc_status rc;
            memset(&r, 0, sizeof(r));
            rng = (unsigned long)seed + 11;
            rc = run(body->p, body->len, boundary, mode, lim, &r, &e);
            if (rc != want) {
                tap_diag("mode %d seed %d: got %s (%s), want %s", mode, seed,
                         kmdc_status_name(rc), e.msg, kmdc_status_name(want));
                ok = 0;
            }
            if (r.bad_order || r.zero_len) {
                tap_diag("mode %d: callbacks out of order or empty data", mode);
                ok = 0;
            }
            rec_free(&r);
        }
    }
    return ok;
}

/* --- bodies -------------------------------------------------------------- */

static void
add_part(struct buf *b, const char *headers, const void *data, size_t len)
{
    buf_s(b, "--" B "\r\n");
    buf_s(b, headers);
    buf_s(b, "\r\n");
    buf_add(b, data, len);
    buf_s(b, "\r\n");
}

static void
add_close(struct buf *b)
{
    buf_s(b, "--" B "--\r\n");
}

#define CD_SERIAL "Content-Disposition: form-data; name=\"serial\"\r\n"
#define CD_ENV "Content-Disposition: form-data; name=\"envelope\"; " \
               "filename=\"doc.kmdc\"\r\nContent-Type: application/octet-stream\r\n"

static uint8_t envdata[200000];

/* The body curl -F sends; serial first or envelope first. */
static void
curl_body(struct buf *b, int serial_first, size_t envlen)
{
    if (serial_first)
        add_part(b, CD_SERIAL, SERIAL, 16);
    add_part(b, CD_ENV, envdata, envlen);
    if (!serial_first)
        add_part(b, CD_SERIAL, SERIAL, 16);
    add_close(b);
}

/* Check that parsing body in every mode yields the two curl parts. */
static void
check_curl(const struct buf *b, int serial_first, size_t envlen, const char *what)
{
    static const char *const mname[] = { "whole", "1 byte at a time",
                                         "random slices" };
    int mode, seed;

    for (mode = WHOLE; mode <= RANDOM; mode++) {
        int ok = 1;
        for (seed = 0; seed < (mode == RANDOM ? 20 : 1); seed++) {
            struct rec r;
            kmdc_err e;
            const struct part *env, *ser;
            memset(&r, 0, sizeof(r));
            rng = (unsigned long)seed * 7919 + 1;
            if (run(b->p, b->len, B, mode, NULL, &r, &e) != KMDC_OK) {
                tap_diag("%s", e.msg);
                ok = 0;
            } else {
                env = &r.p[serial_first ? 1 : 0];
                ser = &r.p[serial_first ? 0 : 1];
                ok &= r.n == 2 && !r.bad_order && !r.zero_len && !r.in_part &&
                      env->ended && ser->ended;
                ok &= strcmp(ser->name, "serial") == 0 && !ser->has_fn &&
                      !ser->has_ct && ser->data.len == 16 &&
                      memcmp(ser->data.p, SERIAL, 16) == 0;
                ok &= strcmp(env->name, "envelope") == 0 && env->has_fn &&
                      strcmp(env->filename, "doc.kmdc") == 0 && env->has_ct &&
                      strcmp(env->ctype, "application/octet-stream") == 0 &&
                      env->data.len == envlen &&
                      (envlen == 0 || memcmp(env->data.p, envdata, envlen) == 0);
            }
            rec_free(&r);
        }
        tap_ok(ok, "curl -F (%s), %s: %s", what, mname[mode],
               serial_first ? "serial then envelope" : "envelope then serial");
    }
}

static void
test_curl(void)
{
    struct buf b = { 0 };
    size_t i;

    for (i = 0; i < sizeof(envdata); i++)
        envdata[i] = (uint8_t)rnd(256);
    curl_body(&b, 1, 5000);
    check_curl(&b, 1, 5000, "5000 random bytes");
    buf_free(&b);
    curl_body(&b, 0, 5000);
    check_curl(&b, 0, 5000, "5000 random bytes");
    buf_free(&b);
    curl_body(&b, 1, sizeof(envdata));
    check_curl(&b, 1, sizeof(envdata), "200000 random bytes");
    buf_free(&b);
    curl_body(&b, 0, 0);
    check_curl(&b, 0, 0, "empty envelope part");
    buf_free(&b);
}

/* Binary content full of near-delimiters, every one of them data. */
static void
test_near_boundary(void)
{
    struct buf d = { 0 }, d2 = { 0 }, b = { 0 };
    const char *bb = B;
    size_t k, bl = strlen(bb);
    int mode, seed, ok = 1;

    buf_s(&d, "\r");                       /* content starts with CR */
    buf_s(&d, "--");                       /* "--" at content start, not B */
    buf_s(&d, "\r\n--");                   /* the delimiter's prefix */
    buf_s(&d, "\r\n-\r\n\r\r\n--x");
    for (k = 0; k < bl; k++) {             /* every proper prefix of CRLF--B */
        buf_s(&d, "\r\n--");
        buf_add(&d, bb, k);
        buf_s(&d, "#");
    }
    buf_s(&d, "x--" B "\r\n");             /* boundary not at a line start */
    buf_s(&d, "\n--" B "\n");              /* LF-only delimiter lookalike */
    buf_s(&d, "\r--" B "\r");              /* CR-only lookalike */
    buf_s(&d, "\r\n--");
    buf_add(&d, bb, bl - 1);               /* all but the last char, then CR */
    buf_s(&d, "\r\r\n");
    buf_add(&d, "\0\xff\r\n\0", 5);
    buf_s(&d, "\r");                       /* content ends with CR */
    add_part(&b, "Content-Disposition: form-data; name=\"envelope\"; "
             "filename=\"x.kmdc\"\r\n", d.p, d.len);
    /* a second part whose content starts with "--" and most of B */
    buf_s(&d2, "--");
    buf_add(&d2, bb, bl - 1);
    buf_s(&d2, "#\r\n--");
    add_part(&b, CD_SERIAL, d2.p, d2.len);
    add_close(&b);
    for (mode = WHOLE; mode <= RANDOM; mode++) {
        for (seed = 0; seed < (mode == RANDOM ? 50 : 1); seed++) {
            struct rec r;
            kmdc_err e;
            memset(&r, 0, sizeof(r));
            rng = (unsigned long)seed + 3;
            if (run(b.p, b.len, B, mode, NULL, &r, &e) != KMDC_OK || r.n != 2 ||
                r.p[0].data.len != d.len || memcmp(r.p[0].data.p, d.p, d.len) != 0 ||
                r.p[1].data.len != d2.len ||
                memcmp(r.p[1].data.p, d2.p, d2.len) != 0 || r.bad_order || r.zero_len)
                ok = 0;
            rec_free(&r);
        }
    }
    tap_ok(ok, "binary parts with CRLF-- and near-boundary sequences, every slicing");
    buf_free(&b);
    buf_free(&d);
    buf_free(&d2);
}

static void
expect(const char *body, kmdc_status want, const char *name)
{
    struct buf b = { 0 };

    buf_s(&b, body);
    tap_ok(status_all(&b, B, NULL, want), "%s -> %s", name, kmdc_status_name(want));
    buf_free(&b);
}

/* A body with one part whose header block is hdrs (each line with CRLF). */
static void
one_part(const char *hdrs, kmdc_status want, const char *name)
{
    struct buf b = { 0 };

    add_part(&b, hdrs, "data", 4);
    add_close(&b);
    tap_ok(status_all(&b, B, NULL, want), "%s -> %s", name, kmdc_status_name(want));
    buf_free(&b);
}

/* Parse one part; return its recorded name (or "" on error). */
static int
one_part_name(const char *hdrs, const char *want_name, const char *want_fn)
{
    struct buf b = { 0 };
    struct rec r;
    kmdc_err e;
    int ok;

    memset(&r, 0, sizeof(r));
    add_part(&b, hdrs, "data", 4);
    add_close(&b);
    ok = run(b.p, b.len, B, BYTES, NULL, &r, &e) == KMDC_OK && r.n == 1 &&
         strcmp(r.p[0].name, want_name) == 0 &&
         (want_fn == NULL ? !r.p[0].has_fn
                          : r.p[0].has_fn && strcmp(r.p[0].filename, want_fn) == 0);
    if (!ok)
        tap_diag("%s / name '%s'", e.msg, r.n ? r.p[0].name : "");
    rec_free(&r);
    buf_free(&b);
    return ok;
}

#define P1 "--" B "\r\n" CD_SERIAL "\r\n" SERIAL "\r\n"
#define CLOSE "--" B "--"

static void
test_structure(void)
{
    struct buf b = { 0 };
    kmdc_mp_limits lim;
    int i;

    expect(P1 CLOSE "\r\n", KMDC_OK, "one part, close with CRLF");
    expect(P1 CLOSE, KMDC_OK, "one part, close without CRLF");
    expect(P1 CLOSE " \t \r\n", KMDC_OK, "padding after the close delimiter");
    expect("--" B " \t\r\n" CD_SERIAL "\r\n" SERIAL "\r\n" CLOSE "\r\n", KMDC_OK,
           "padding after the first boundary");
    expect("--" B "\r\n" CD_SERIAL "\r\n\r\n" CLOSE "\r\n", KMDC_OK, "empty part body");
    expect("--" B "\r\n" CD_SERIAL "\r\n" SERIAL "\r\n--" B "   \r\n" CD_ENV "\r\nx\r\n"
           CLOSE, KMDC_OK, "padding after an inner delimiter");
    expect("", KMDC_ERR_TRUNCATED, "empty body");
    expect(P1, KMDC_ERR_TRUNCATED, "missing close delimiter");
    expect(P1 "--" B, KMDC_ERR_TRUNCATED, "ends after a delimiter without --");
    expect(P1 "--" B "-", KMDC_ERR_TRUNCATED, "ends after a single dash");
    expect("--" B "\r\n" "Content-Disposition: form-data; name=\"se", KMDC_ERR_TRUNCATED,
           "ends inside the part headers");
    expect("--" B "\r\n" CD_SERIAL "\r\n" "0123", KMDC_ERR_TRUNCATED,
           "ends inside part content");
    expect("--" B "\r\n" CD_SERIAL "\r\n" "0123\r\n--" B "\r\n", KMDC_ERR_TRUNCATED,
           "ends after an inner boundary line");
    expect(P1 CLOSE "\r\njunk", KMDC_ERR_TRAILING, "trailing junk after close and CRLF");
    expect(P1 CLOSE "junk", KMDC_ERR_TRAILING, "trailing junk right after close");
    expect(P1 CLOSE "\r\n\r\n", KMDC_ERR_TRAILING, "two CRLFs after close (bound 2)");
    expect(P1 CLOSE "\r", KMDC_ERR_TRAILING, "lone CR after close");
    expect(P1 CLOSE "\n", KMDC_ERR_TRAILING, "LF after close");
    expect(P1 CLOSE "--\r\n", KMDC_ERR_TRAILING, "four dashes after the boundary");
    expect(P1 CLOSE "\r\n" "--" B "\r\n", KMDC_ERR_TRAILING, "a part after close");
    buf_s(&b, P1 CLOSE "\r\n\r\n");
    kmdc_mp_limits_default(&lim);
    lim.max_epilogue = 4;
    tap_ok(status_all(&b, B, &lim, KMDC_OK), "two CRLFs after close with bound 4 -> ok");
    buf_free(&b);

    expect("preamble\r\n" P1 CLOSE, KMDC_ERR_FORMAT, "a preamble is refused");
    expect("\r\n" P1 CLOSE, KMDC_ERR_FORMAT, "leading CRLF is refused");
    expect("--" B "x\r\n" CD_SERIAL "\r\n" SERIAL "\r\n" CLOSE, KMDC_ERR_FORMAT,
           "first boundary with an extra character");
    expect("--------------------------d74496d66958873f\r\n", KMDC_ERR_FORMAT,
           "another boundary");
    expect(CLOSE "\r\n", KMDC_ERR_FORMAT, "close delimiter with no parts");
    expect("--" B "\n" CD_SERIAL "\r\n" SERIAL "\r\n" CLOSE, KMDC_ERR_FORMAT,
           "LF after the first boundary");
    expect("--" B "\r\nContent-Disposition: form-data; name=\"serial\"\n\r\n" SERIAL
           "\r\n" CLOSE, KMDC_ERR_FORMAT, "LF ending a header line");
    expect("--" B "\r\n" CD_SERIAL "\n" SERIAL "\r\n" CLOSE, KMDC_ERR_FORMAT,
           "LF as the blank line");
    expect("--" B "\n" "Content-Disposition: form-data; name=\"serial\"\n\n" SERIAL
           "\n--" B "--\n", KMDC_ERR_FORMAT, "a body with LF line endings");
    expect("--" B "\rX", KMDC_ERR_FORMAT, "bare CR after the boundary");
    expect("--" B "\r\n" CD_SERIAL "\r\n" SERIAL "\r\n--" B "x\r\n", KMDC_ERR_FORMAT,
           "a content line starting with the boundary");
    expect("--" B "\r\n" CD_SERIAL "\r\n" SERIAL "\r\n--" B "-x", KMDC_ERR_FORMAT,
           "delimiter followed by a single dash");
    expect("--" B "\r\n" CD_SERIAL "\r\n--" B "\r\n", KMDC_ERR_FORMAT,
           "part content starting with the boundary (no blank line)");
    expect("--" B "\r\n" CD_SERIAL "\r\n--" B "--\r\n", KMDC_ERR_FORMAT,
           "part content starting with the close delimiter");
    {
        char pad[200];
        snprintf(pad, sizeof(pad), "--" B "%33s\r\n", "");
        expect(pad, KMDC_ERR_LIMIT, "33 bytes of transport padding");
        snprintf(pad, sizeof(pad), "--" B "%32s\r\n" CD_SERIAL "\r\nx\r\n" CLOSE, "");
        expect(pad, KMDC_OK, "32 bytes of transport padding");
    }

    for (i = 0; i < 4; i++)
        add_part(&b, CD_SERIAL, "x", 1);
    add_close(&b);
    tap_ok(status_all(&b, B, NULL, KMDC_OK), "four parts -> ok");
    buf_free(&b);
    for (i = 0; i < 5; i++)
        add_part(&b, CD_SERIAL, "x", 1);
    add_close(&b);
    tap_ok(status_all(&b, B, NULL, KMDC_ERR_LIMIT), "five parts (max 4) -> limit");
    buf_free(&b);
}

static void
test_headers(void)
{
    char h[4096], name[300];
    kmdc_mp_limits lim;
    struct buf b = { 0 };
    size_t fixed;

    one_part("Content-Disposition: form-data; name=\"a\"\r\n"
             "Content-Disposition: form-data; name=\"b\"\r\n", KMDC_ERR_FORMAT,
             "duplicate Content-Disposition");
    one_part(CD_SERIAL "Content-Type: text/plain\r\ncontent-type: text/plain\r\n",
             KMDC_ERR_FORMAT, "duplicate Content-Type (differing case)");
    one_part("Content-Type: text/plain\r\n", KMDC_ERR_FORMAT,
             "missing Content-Disposition");
    one_part("", KMDC_ERR_FORMAT, "no part headers at all");
    one_part(CD_SERIAL "Content-Transfer-Encoding: binary\r\n", KMDC_ERR_FORMAT,
             "unknown header Content-Transfer-Encoding");
    one_part(CD_SERIAL "X-Foo: 1\r\n", KMDC_ERR_FORMAT, "unknown header X-Foo");
    one_part("Content-Disposition: form-data;\r\n name=\"serial\"\r\n", KMDC_ERR_FORMAT,
             "obs-fold refused");
    one_part("Content-Disposition : form-data; name=\"serial\"\r\n", KMDC_ERR_FORMAT,
             "space before the colon");
    one_part("Content-Disposition:\r\n", KMDC_ERR_FORMAT, "empty header value");
    one_part("Content-Disposition form-data; name=\"serial\"\r\n", KMDC_ERR_FORMAT,
             "header without a colon");
    one_part("Content-Disposition: attachment; name=\"serial\"\r\n", KMDC_ERR_FORMAT,
             "disposition other than form-data");
    one_part("Content-Disposition: form-data\r\n", KMDC_ERR_FORMAT,
             "Content-Disposition without a name");
    one_part("Content-Disposition: form-data; name=\"\"\r\n", KMDC_ERR_FORMAT,
             "empty part name");
    one_part("Content-Disposition: form-data; name=\"a\"; name=\"b\"\r\n",
             KMDC_ERR_FORMAT, "name parameter twice");
    one_part("Content-Disposition: form-data; name=\"a\"; size=3\r\n", KMDC_ERR_FORMAT,
             "unknown Content-Disposition parameter");
    one_part("Content-Disposition: form-data; name=\"a\"; filename*=UTF-8''x\r\n",
             KMDC_ERR_FORMAT, "filename* refused (RFC 7578 4.2)");
    one_part("Content-Disposition: form-data; name=\"a\";\r\n", KMDC_ERR_FORMAT,
             "trailing semicolon in Content-Disposition");
    one_part("Content-Disposition: form-data; name=\"a\"b\"\r\n", KMDC_ERR_FORMAT,
             "part name with an unescaped quote");
    one_part("Content-Disposition: form-data; name=\"ab\r\n", KMDC_ERR_FORMAT,
             "unterminated quoted name");
    one_part("Content-Disposition: form-data; name=a b\r\n", KMDC_ERR_FORMAT,
             "unquoted name with a space");
    {
        static const char nulhdr[] = "Content-Disposition: form-data; name=\"a\0b\"\r\n";
        struct buf bb = { 0 };
        buf_s(&bb, "--" B "\r\n");
        buf_add(&bb, nulhdr, sizeof(nulhdr) - 1);
        buf_s(&bb, "\r\nx\r\n" CLOSE);
        tap_ok(status_all(&bb, B, NULL, KMDC_ERR_FORMAT), "NUL in a part name -> format");
        buf_free(&bb);
    }
    one_part("Content-Disposition: form-data; name=\"a\rb\"\r\n", KMDC_ERR_FORMAT,
             "CR in a part name");
    one_part("Content-Disposition: form-data; name=\"a\x01" "b\"\r\n", KMDC_ERR_FORMAT,
             "control character in a header");

    tap_ok(one_part_name("Content-Disposition: form-data; name=\"a\\\"b\"\r\n",
                         "a\"b", NULL), "part name with an escaped quote");
    tap_ok(one_part_name("Content-Disposition: form-data; name=\"a%22b\"\r\n",
                         "a%22b", NULL), "percent-encoded quote kept as is");
    tap_ok(one_part_name("content-disposition: FORM-DATA; NAME=serial\r\n",
                         "serial", NULL), "case-insensitive names, token value");
    tap_ok(one_part_name("Content-Disposition:form-data;name=\"x\";filename=\"\"\r\n",
                         "x", ""), "no optional whitespace, empty filename");
    tap_ok(one_part_name("Content-Disposition: \tform-data ;  filename = \"f.kmdc\" ; "
                         "name = \"env\" \t\r\n", "env", "f.kmdc"),
           "whitespace around ; and =, filename first");
    tap_ok(one_part_name("Content-Disposition: form-data; name=\"\xc3\xa9t\xc3\xa9\"; "
                         "filename=\"r\xc3\xa9sum\xc3\xa9.kmdc\"\r\n",
                         "\xc3\xa9t\xc3\xa9", "r\xc3\xa9sum\xc3\xa9.kmdc"),
           "UTF-8 name and filename");

    memset(name, 'n', 255);
    name[255] = '\0';
    snprintf(h, sizeof(h), "Content-Disposition: form-data; name=\"%s\"\r\n", name);
    tap_ok(one_part_name(h, name, NULL), "part name of 255 bytes accepted");
    snprintf(h, sizeof(h), "Content-Disposition: form-data; name=\"%sn\"\r\n", name);
    one_part(h, KMDC_ERR_LIMIT, "part name of 256 bytes");
    snprintf(h, sizeof(h), "Content-Disposition: form-data; name=x; filename=%sn\r\n",
             name);
    one_part(h, KMDC_ERR_LIMIT, "file name of 256 bytes");

    /* header block bound: exactly max_header_bytes is fine, one more is not */
    kmdc_mp_limits_default(&lim);
    lim.max_header_bytes = 128;
    fixed = strlen(CD_SERIAL "Content-Type: \r\n\r\n");
    memset(h, 't', sizeof(h));
    {
        char hdrs[512];
        snprintf(hdrs, sizeof(hdrs), CD_SERIAL "Content-Type: %.*s\r\n",
                 (int)(128 - fixed), h);
        buf_s(&b, "--" B "\r\n");
        buf_s(&b, hdrs);
        buf_s(&b, "\r\nx\r\n" CLOSE);
        tap_ok(status_all(&b, B, &lim, KMDC_OK), "header block of exactly the bound -> ok");
        buf_free(&b);
        snprintf(hdrs, sizeof(hdrs), CD_SERIAL "Content-Type: %.*st\r\n",
                 (int)(128 - fixed), h);
        buf_s(&b, "--" B "\r\n");
        buf_s(&b, hdrs);
        buf_s(&b, "\r\nx\r\n" CLOSE);
        tap_ok(status_all(&b, B, &lim, KMDC_ERR_LIMIT),
               "header block one byte over the bound -> limit");
        buf_free(&b);
    }
    memset(h, 'a', 1100);
    h[1100] = '\0';
    {
        char hdrs[1300];
        snprintf(hdrs, sizeof(hdrs), CD_SERIAL "Content-Type: %.1100s\r\n", h);
        one_part(hdrs, KMDC_ERR_LIMIT, "1100-byte Content-Type (default bound 1024)");
    }
    {
        /* endless header line without CRLF: refused once past the bound */
        struct buf bb = { 0 };
        buf_s(&bb, "--" B "\r\nX-");
        memset(h, 'a', 2000);
        buf_add(&bb, h, 2000);
        tap_ok(status_all(&bb, B, NULL, KMDC_ERR_LIMIT), "endless header line -> limit");
        buf_free(&bb);
    }
}

static void
test_callbacks(void)
{
    struct buf b = { 0 };
    struct rec r;
    kmdc_err e;
    kmdc_mp *mp;
    kmdc_status rc1, rc2;

    curl_body(&b, 1, 100);
    memset(&r, 0, sizeof(r));
    r.fail_begin = KMDC_ERR_NOTFOUND;
    tap_ok(run(b.p, b.len, B, WHOLE, NULL, &r, &e) == KMDC_ERR_NOTFOUND &&
           strcmp(e.msg, "injected begin error") == 0,
           "part_begin error returned as is");
    rec_free(&r);
    r.fail_data = KMDC_ERR_LIMIT;
    tap_ok(run(b.p, b.len, B, BYTES, NULL, &r, &e) == KMDC_ERR_LIMIT &&
           strcmp(e.msg, "injected data error") == 0, "part_data error returned as is");
    rec_free(&r);
    r.fail_data = KMDC_ERR_IO;
    mp = kmdc_mp_new(B, NULL, &cbs, &r, &e);
    rc1 = kmdc_mp_update(mp, b.p, b.len, &e);
    rc2 = kmdc_mp_update(mp, "x", 1, &e);
    tap_ok(rc1 == KMDC_ERR_IO && rc2 == KMDC_ERR_IO &&
           kmdc_mp_final(mp, &e) == KMDC_ERR_IO, "a failed parser stays failed");
    kmdc_mp_free(mp);
    rec_free(&r);
    mp = kmdc_mp_new(B, NULL, NULL, NULL, &e);
    tap_ok(mp != NULL && kmdc_mp_update(mp, b.p, b.len, &e) == KMDC_OK &&
           kmdc_mp_update(mp, NULL, 0, &e) == KMDC_OK &&
           kmdc_mp_final(mp, &e) == KMDC_OK && kmdc_mp_parts(mp) == 2,
           "no callbacks: parses, counts 2 parts");
    kmdc_mp_free(mp);
    buf_free(&b);
    tap_ok(kmdc_mp_new("bad boundary ", NULL, &cbs, &r, &e) == NULL &&
           e.code == KMDC_ERR_ARG, "new: boundary ending in a space refused");
    tap_ok(kmdc_mp_new("", NULL, &cbs, &r, &e) == NULL, "new: empty boundary refused");
    {
        kmdc_mp_limits lim;
        kmdc_mp_limits_default(&lim);
        lim.max_parts = 0;
        tap_ok(kmdc_mp_new(B, &lim, &cbs, &r, &e) == NULL && e.code == KMDC_ERR_ARG,
               "new: max_parts 0 refused");
    }
}

static void
ct_ok(const char *ct, const char *want, const char *name)
{
    char out[KMDC_MP_BOUNDARY_MAX + 1];
    kmdc_err e;
    int ok = kmdc_mp_boundary_from_content_type(ct, out, &e) == KMDC_OK &&
             strcmp(out, want) == 0;

    if (!ok)
        tap_diag("%s", e.msg);
    tap_ok(ok, "Content-Type: %s", name);
}

static void
ct_bad(const char *ct, const char *name)
{
    char out[KMDC_MP_BOUNDARY_MAX + 1];

    tap_ok(kmdc_mp_boundary_from_content_type(ct, out, NULL) == KMDC_ERR_FORMAT,
           "Content-Type refused: %s", name);
}

static void
test_content_type(void)
{
    char ct[300], b70[71];

    memset(b70, 'b', 70);
    b70[70] = '\0';
    ct_ok(CT, B, "what curl sends");
    ct_ok("multipart/form-data; boundary=\"" B "\"", B, "quoted boundary");
    ct_ok("Multipart/Form-Data;BOUNDARY=abc", "abc", "case-insensitive, no space");
    ct_ok("multipart/form-data; charset=utf-8; boundary=abc", "abc",
          "another parameter first");
    ct_ok("multipart/form-data ; boundary=abc ; x=\"y;z\"", "abc",
          "another parameter after, whitespace around ;");
    ct_ok("multipart/form-data; boundary=\"a b:c,d/e=f?g(h)i+j_k.l'm\"",
          "a b:c,d/e=f?g(h)i+j_k.l'm", "quoted boundary with every bchar");
    ct_ok("multipart/form-data; boundary=abc;", "abc", "trailing semicolon");
    snprintf(ct, sizeof(ct), "multipart/form-data; boundary=%s", b70);
    ct_ok(ct, b70, "boundary of 70 characters");
    snprintf(ct, sizeof(ct), "multipart/form-data; boundary=%sb", b70);
    ct_bad(ct, "boundary of 71 characters");
    ct_bad("multipart/form-data", "no boundary");
    ct_bad("multipart/form-data; charset=utf-8", "no boundary, another parameter");
    ct_bad("multipart/form-data; boundary=a; boundary=a", "two boundary parameters");
    ct_bad("multipart/mixed; boundary=abc", "multipart/mixed");
    ct_bad("application/vnd.kmdc.envelope", "the raw envelope type");
    ct_bad("multipart/form-datax; boundary=abc", "type with a suffix");
    ct_bad("multipart/form-data; boundary=", "empty boundary");
    ct_bad("multipart/form-data; boundary=\"\"", "empty quoted boundary");
    ct_bad("multipart/form-data; boundary=\"abc \"", "boundary ending in a space");
    ct_bad("multipart/form-data; boundary=\"a@b\"", "boundary with a non-bchar");
    ct_bad("multipart/form-data; boundary=\"abc", "unterminated quote");
    ct_bad("multipart/form-data; boundary abc", "parameter without =");
    ct_bad("multipart/form-data boundary=abc", "missing semicolon");
    ct_bad("", "empty value");
    ct_bad(NULL, "no header");
}

int
main(void)
{
    test_content_type();
    test_curl();
    test_near_boundary();
    test_structure();
    test_headers();
    test_callbacks();
    return tap_done();
}
