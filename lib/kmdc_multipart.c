/* kmdc_multipart.c - strict streaming multipart/form-data parser. */
#include "kmdc_multipart.h"
#include "kmdc_util.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

#define CT_MAX 1024            /* longest Content-Type value accepted */

enum mp_state {
    ST_FIRST,       /* matching "--" B at the very start */
    ST_AFTER_DELIM, /* a delimiter was just matched */
    ST_CLOSE_DASH,  /* one '-' after a delimiter */
    ST_PAD,         /* transport padding after a boundary */
    ST_PAD_LF,      /* CR at the end of a boundary line */
    ST_HDR,         /* inside a part header line */
    ST_HDR_LF,      /* CR at the end of a header line */
    ST_DATA_START,  /* start of part content: "--" B here is refused */
    ST_DATA,        /* part content */
    ST_EPI_PAD,     /* transport padding after the close delimiter */
    ST_EPI_LF,      /* CR in the epilogue */
    ST_EPI,         /* after a CRLF of the epilogue */
    ST_FAILED
};

struct kmdc_mp {
    kmdc_mp_limits lim;
    struct kmdc_mp_cbs cbs;
    void *arg;
    uint8_t delim[4 + KMDC_MP_BOUNDARY_MAX];  /* CRLF "--" B */
    size_t dlen;
    enum mp_state st;
    kmdc_status failed;     /* the error that stopped the parser */
    size_t match;           /* delimiter bytes matched (held back) */
    size_t pad;             /* padding bytes after the current boundary */
    size_t epi;             /* epilogue bytes */
    size_t parts;           /* parts begun */
    size_t hdr_total;       /* bytes of the current header block */
    char *line;             /* current header line, max_header_bytes + 1 */
    size_t line_len;
    char *name;             /* max_name + 1 */
    char *filename;         /* max_name + 1 */
    char *ctype;            /* max_header_bytes + 1 */
    int has_cd, has_ct, has_name, has_filename;
};

static int
is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static int
is_ows(unsigned char c)
{
    return c == ' ' || c == '\t';
}

static int
is_bchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return 1;
    return c != '\0' && strchr("'()+_,-./:=? ", c) != NULL;
}

/* 1 when b[0..n) is a valid RFC 2046 boundary. */
static int
boundary_ok(const char *b, size_t n)
{
    size_t i;

    if (n < 1 || n > KMDC_MP_BOUNDARY_MAX || b[n - 1] == ' ')
        return 0;
    for (i = 0; i < n; i++)
        if (!is_bchar((unsigned char)b[i]))
            return 0;
    return 1;
}

void
kmdc_mp_limits_default(kmdc_mp_limits *lim)
{
    lim->max_parts = 4;
    lim->max_header_bytes = 1024;
    lim->max_name = 255;
    lim->max_padding = 32;
    lim->max_epilogue = 2;
}

/* --- parameter lists (Content-Type and Content-Disposition) --------------- */

struct pcur {
    const char *s;
    size_t n, i;
};

static void
skip_ows(struct pcur *c)
{
    while (c->i < c->n && is_ows((unsigned char)c->s[c->i]))
        c->i++;
}

/* A token; returns its length (0 when there is none). */
static size_t
take_token(struct pcur *c, const char **start)
{
    size_t b = c->i;

    while (c->i < c->n && is_tchar((unsigned char)c->s[c->i]))
        c->i++;
    *start = c->s + b;
    return c->i - b;
}

/*
 * A parameter value, token or quoted-string, unescaped into out (cap bytes
 * including a NUL; out may be NULL to only skip it).  Returns KMDC_OK,
 * KMDC_ERR_FORMAT or KMDC_ERR_LIMIT (too long for out).
 */
static kmdc_status
take_value(struct pcur *c, char *out, size_t cap, size_t *outlen)
{
    size_t n = 0;

    if (c->i < c->n && c->s[c->i] == '"') {
        c->i++;
        for (;;) {
            unsigned char ch;
            if (c->i >= c->n)
                return KMDC_ERR_FORMAT;            /* unterminated */
            ch = (unsigned char)c->s[c->i++];
            if (ch == '"')
                break;
            if (ch == '\\') {
                if (c->i >= c->n)
                    return KMDC_ERR_FORMAT;
                ch = (unsigned char)c->s[c->i++];
            }
            if (ch == '\0' || ch == '\r' || ch == '\n' ||
                (ch < 0x20 && ch != '\t') || ch == 0x7f)
                return KMDC_ERR_FORMAT;
            if (out != NULL) {
                if (n + 1 >= cap)
                    return KMDC_ERR_LIMIT;
                out[n] = (char)ch;
            }
            n++;
        }
    } else {
        const char *t;
        size_t tl = take_token(c, &t);
        if (tl == 0)
            return KMDC_ERR_FORMAT;
        if (out != NULL) {
            if (tl >= cap)
                return KMDC_ERR_LIMIT;
            memcpy(out, t, tl);
        }
        n = tl;
    }
    if (out != NULL)
        out[n] = '\0';
    if (outlen != NULL)
        *outlen = n;
    return KMDC_OK;
}

kmdc_status
kmdc_mp_boundary_from_content_type(const char *ct,
                                   char out[KMDC_MP_BOUNDARY_MAX + 1],
                                   kmdc_err *err)
{
    static const char want[] = "multipart/form-data";
    char b[KMDC_MP_BOUNDARY_MAX + 1];
    struct pcur c;
    const char *t;
    size_t tl, blen = 0;
    int seen = 0;
    kmdc_status rc;

    if (ct == NULL || out == NULL)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "multipart: no Content-Type header");
    c.s = ct;
    c.n = strnlen(ct, CT_MAX + 1);
    c.i = 0;
    if (c.n > CT_MAX)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "multipart: Content-Type header too long");
    skip_ows(&c);
    t = c.s + c.i;
    while (c.i < c.n && (is_tchar((unsigned char)c.s[c.i]) || c.s[c.i] == '/'))
        c.i++;
    tl = (size_t)(c.s + c.i - t);
    if (tl != sizeof(want) - 1 || strncasecmp(t, want, tl) != 0)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "multipart: Content-Type is not multipart/form-data");
    for (;;) {
        skip_ows(&c);
        if (c.i == c.n)
            break;
        if (c.s[c.i] != ';')
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: malformed Content-Type parameters");
        c.i++;
        skip_ows(&c);
        if (c.i == c.n || c.s[c.i] == ';')
            continue;                       /* empty parameter (RFC 9110) */
        tl = take_token(&c, &t);
        if (tl == 0 || c.i == c.n || c.s[c.i] != '=')
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: malformed Content-Type parameter");
        c.i++;
        if (tl == 8 && strncasecmp(t, "boundary", 8) == 0) {
            if (seen)
                return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                    "multipart: more than one boundary parameter");
            seen = 1;
            rc = take_value(&c, b, sizeof(b), &blen);
        } else
            rc = take_value(&c, NULL, 0, NULL);
        if (rc == KMDC_ERR_LIMIT)
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: boundary longer than 70 characters");
        if (rc != KMDC_OK)
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: malformed Content-Type parameter value");
    }
    if (!seen)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "multipart: Content-Type has no boundary parameter");
    if (!boundary_ok(b, blen))
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "multipart: boundary must be 1..70 characters of "
                            "RFC 2046 bchars, not ending in a space");
    memcpy(out, b, blen + 1);
    return KMDC_OK;
}

/* --- the parser ------------------------------------------------------------ */

kmdc_mp *
kmdc_mp_new(const char *boundary, const kmdc_mp_limits *lim,
            const struct kmdc_mp_cbs *cbs, void *arg, kmdc_err *err)
{
    kmdc_mp *mp = NULL;
    kmdc_mp_limits l;
    size_t blen;

    if (lim != NULL)
        l = *lim;
    else
        kmdc_mp_limits_default(&l);
    if (boundary == NULL ||
        !boundary_ok(boundary, blen = strnlen(boundary, KMDC_MP_BOUNDARY_MAX + 1))) {
        kmdc_err_set(err, KMDC_ERR_ARG, "multipart: invalid boundary");
        goto fail;
    }
    if (l.max_parts < 1 || l.max_parts > 1024 || l.max_header_bytes < 64 ||
        l.max_header_bytes > 65536 || l.max_name < 1 || l.max_name > 4096 ||
        l.max_padding > 4096 || l.max_epilogue > 4096) {
        kmdc_err_set(err, KMDC_ERR_ARG, "multipart: limits out of range");
        goto fail;
    }
    if ((mp = calloc(1, sizeof(*mp))) == NULL ||
        (mp->line = malloc(l.max_header_bytes + 1)) == NULL ||
        (mp->ctype = malloc(l.max_header_bytes + 1)) == NULL ||
        (mp->name = malloc(l.max_name + 1)) == NULL ||
        (mp->filename = malloc(l.max_name + 1)) == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        goto fail;
    }
    mp->lim = l;
    if (cbs != NULL)
        mp->cbs = *cbs;
    mp->arg = arg;
    memcpy(mp->delim, "\r\n--", 4);
    memcpy(mp->delim + 4, boundary, blen);
    mp->dlen = 4 + blen;
    mp->st = ST_FIRST;
    return mp;
fail:
    kmdc_mp_free(mp);
    return NULL;
}

void
kmdc_mp_free(kmdc_mp *mp)
{
    if (mp == NULL)
        return;
    kmdc_freezero(mp->line, mp->lim.max_header_bytes + 1);
    kmdc_freezero(mp->ctype, mp->lim.max_header_bytes + 1);
    kmdc_freezero(mp->name, mp->lim.max_name + 1);
    kmdc_freezero(mp->filename, mp->lim.max_name + 1);
    kmdc_freezero(mp, sizeof(*mp));
}

size_t
kmdc_mp_parts(const kmdc_mp *mp)
{
    return mp == NULL ? 0 : mp->parts;
}

/* Parse a Content-Disposition value v[0..n). */
static kmdc_status
parse_disposition(kmdc_mp *mp, const char *v, size_t n, kmdc_err *err)
{
    struct pcur c = { v, n, 0 };
    const char *t;
    size_t tl, vl = 0;
    kmdc_status rc;

    tl = take_token(&c, &t);
    if (tl != 9 || strncasecmp(t, "form-data", 9) != 0)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "multipart: part disposition is not form-data");
    for (;;) {
        char *dst;
        int *flag;
        skip_ows(&c);
        if (c.i == c.n)
            break;
        if (c.s[c.i] != ';')
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: malformed Content-Disposition");
        c.i++;
        skip_ows(&c);
        tl = take_token(&c, &t);
        if (tl == 4 && strncasecmp(t, "name", 4) == 0) {
            dst = mp->name;
            flag = &mp->has_name;
        } else if (tl == 8 && strncasecmp(t, "filename", 8) == 0) {
            dst = mp->filename;
            flag = &mp->has_filename;
        } else
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: Content-Disposition parameter other "
                                "than name and filename");
        if (*flag)
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: Content-Disposition parameter repeated");
        skip_ows(&c);
        if (c.i == c.n || c.s[c.i] != '=')
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: malformed Content-Disposition");
        c.i++;
        skip_ows(&c);
        rc = take_value(&c, dst, mp->lim.max_name + 1, &vl);
        if (rc == KMDC_ERR_LIMIT)
            return kmdc_err_set(err, KMDC_ERR_LIMIT,
                                "multipart: part name or file name longer than "
                                "%zu bytes", mp->lim.max_name);
        if (rc != KMDC_OK)
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: malformed Content-Disposition value");
        if (flag == &mp->has_name && vl == 0)
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: empty part name");
        *flag = 1;
    }
    if (!mp->has_name)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "multipart: Content-Disposition without a name");
    return KMDC_OK;
}

/* Parse the complete header line mp->line[0..line_len). */
static kmdc_status
parse_header_line(kmdc_mp *mp, kmdc_err *err)
{
    const char *l = mp->line;
    size_t n = mp->line_len, i, vb, ve;
    const char *colon;

    if (is_ows((unsigned char)l[0]))
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "multipart: folded part header (obs-fold) refused");
    if ((colon = memchr(l, ':', n)) == NULL || colon == l)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "multipart: malformed part header line");
    for (i = 0; l + i < colon; i++)
        if (!is_tchar((unsigned char)l[i]))
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: malformed part header name");
    vb = (size_t)(colon - l) + 1;
    ve = n;
    while (vb < ve && is_ows((unsigned char)l[vb]))
        vb++;
    while (ve > vb && is_ows((unsigned char)l[ve - 1]))
        ve--;
    if (vb == ve)
        return kmdc_err_set(err, KMDC_ERR_FORMAT, "multipart: empty part header");
    if (i == 19 && strncasecmp(l, "content-disposition", 19) == 0) {
        if (mp->has_cd)
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: Content-Disposition repeated in a part");
        mp->has_cd = 1;
        return parse_disposition(mp, l + vb, ve - vb, err);
    }
    if (i == 12 && strncasecmp(l, "content-type", 12) == 0) {
        if (mp->has_ct)
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "multipart: Content-Type repeated in a part");
        mp->has_ct = 1;
        memcpy(mp->ctype, l + vb, ve - vb);
        mp->ctype[ve - vb] = '\0';
        return KMDC_OK;
    }
    return kmdc_err_set(err, KMDC_ERR_FORMAT,
                        "multipart: part header other than Content-Disposition "
                        "and Content-Type");
}

static kmdc_status
emit(kmdc_mp *mp, const uint8_t *p, size_t n, kmdc_err *err)
{
    if (n == 0 || mp->cbs.part_data == NULL)
        return KMDC_OK;
    return mp->cbs.part_data(mp->arg, p, n, err);
}

#define FAIL(code, ...)                                   \
    do {                                                  \
        rc = kmdc_err_set(err, (code), __VA_ARGS__);      \
        goto fail;                                        \
    } while (0)
#define CALL(expr)                                        \
    do {                                                  \
        if ((rc = (expr)) != KMDC_OK)                     \
            goto fail;                                    \
    } while (0)

kmdc_status
kmdc_mp_update(kmdc_mp *mp, const void *in, size_t len, kmdc_err *err)
{
    const uint8_t *p = in, *end;
    kmdc_status rc = KMDC_OK;

    if (mp == NULL || (in == NULL && len > 0))
        return kmdc_err_set(err, KMDC_ERR_ARG, "multipart: invalid argument");
    if (mp->st == ST_FAILED)
        return kmdc_err_set(err, mp->failed,
                            "multipart: the body was already refused");
    if (len == 0)
        return KMDC_OK;
    end = p + len;
    while (p < end) {
        uint8_t ch = *p;

        switch (mp->st) {
        case ST_DATA:
            if (mp->match == 0) {
                const uint8_t *cr = memchr(p, '\r', (size_t)(end - p));
                const uint8_t *stop = cr != NULL ? cr : end;
                CALL(emit(mp, p, (size_t)(stop - p), err));
                p = stop;
                if (cr != NULL) {
                    mp->match = 1;
                    p++;
                }
            } else if (ch == mp->delim[mp->match]) {
                p++;
                if (++mp->match == mp->dlen) {
                    mp->match = 0;
                    mp->st = ST_AFTER_DELIM;
                    if (mp->cbs.part_end != NULL)
                        CALL(mp->cbs.part_end(mp->arg, err));
                }
            } else {
                /* The held-back bytes are a delimiter prefix with its only CR
                 * at the start: none of them can begin a delimiter, so all
                 * are data.  The current byte is looked at again. */
                CALL(emit(mp, mp->delim, mp->match, err));
                mp->match = 0;
            }
            break;
        case ST_DATA_START:
            /* The blank line's CRLF must not double as a delimiter's: content
             * that starts with "--" B would be a line of content starting
             * with the boundary (or a part without its blank line). */
            if (ch == mp->delim[2 + mp->match]) {
                p++;
                if (++mp->match == mp->dlen - 2)
                    FAIL(KMDC_ERR_FORMAT, "multipart: part content starts with "
                         "the boundary");
            } else {
                CALL(emit(mp, mp->delim + 2, mp->match, err));
                mp->match = 0;
                mp->st = ST_DATA;
            }
            break;
        case ST_FIRST:
            if (ch != mp->delim[2 + mp->match])
                FAIL(KMDC_ERR_FORMAT, "multipart: the body does not start with "
                     "its boundary line (no preamble is accepted)");
            p++;
            if (++mp->match == mp->dlen - 2) {
                mp->match = 0;
                mp->st = ST_AFTER_DELIM;
            }
            break;
        case ST_AFTER_DELIM:
            mp->pad = 0;
            if (ch == '-') {
                p++;
                mp->st = ST_CLOSE_DASH;
            } else
                mp->st = ST_PAD;
            break;
        case ST_CLOSE_DASH:
            if (ch != '-')
                FAIL(KMDC_ERR_FORMAT, "multipart: a boundary is followed by "
                     "something other than a line end or \"--\"");
            if (mp->parts == 0)
                FAIL(KMDC_ERR_FORMAT, "multipart: the body has no parts");
            p++;
            mp->st = ST_EPI_PAD;
            break;
        case ST_PAD:
            if (is_ows(ch)) {
                if (++mp->pad > mp->lim.max_padding)
                    FAIL(KMDC_ERR_LIMIT, "multipart: more than %zu bytes of "
                         "padding after a boundary", mp->lim.max_padding);
                p++;
            } else if (ch == '\r') {
                p++;
                mp->st = ST_PAD_LF;
            } else
                FAIL(KMDC_ERR_FORMAT, "multipart: a line starts with the "
                     "boundary but is not a delimiter");
            break;
        case ST_PAD_LF:
            if (ch != '\n')
                FAIL(KMDC_ERR_FORMAT, "multipart: bare CR after a boundary");
            p++;
            if (mp->parts >= mp->lim.max_parts)
                FAIL(KMDC_ERR_LIMIT, "multipart: more than %zu parts",
                     mp->lim.max_parts);
            mp->parts++;
            mp->hdr_total = 0;
            mp->line_len = 0;
            mp->has_cd = mp->has_ct = mp->has_name = mp->has_filename = 0;
            mp->st = ST_HDR;
            break;
        case ST_HDR:
            if (++mp->hdr_total > mp->lim.max_header_bytes)
                FAIL(KMDC_ERR_LIMIT, "multipart: part header block longer than "
                     "%zu bytes", mp->lim.max_header_bytes);
            p++;
            if (ch == '\r')
                mp->st = ST_HDR_LF;
            else if (ch == '\n')
                FAIL(KMDC_ERR_FORMAT, "multipart: bare LF in part headers "
                     "(lines end with CRLF)");
            else if ((ch < 0x20 && ch != '\t') || ch == 0x7f)
                FAIL(KMDC_ERR_FORMAT, "multipart: control character in part "
                     "headers");
            else
                mp->line[mp->line_len++] = (char)ch;
            break;
        case ST_HDR_LF:
            if (ch != '\n')
                FAIL(KMDC_ERR_FORMAT, "multipart: bare CR in part headers");
            if (++mp->hdr_total > mp->lim.max_header_bytes)
                FAIL(KMDC_ERR_LIMIT, "multipart: part header block longer than "
                     "%zu bytes", mp->lim.max_header_bytes);
            p++;
            if (mp->line_len > 0) {
                mp->line[mp->line_len] = '\0';
                CALL(parse_header_line(mp, err));
                mp->line_len = 0;
                mp->st = ST_HDR;
                break;
            }
            if (!mp->has_cd)
                FAIL(KMDC_ERR_FORMAT, "multipart: part without "
                     "Content-Disposition");
            mp->st = ST_DATA_START;
            mp->match = 0;
            if (mp->cbs.part_begin != NULL)
                CALL(mp->cbs.part_begin(mp->arg, mp->name,
                                        mp->has_filename ? mp->filename : NULL,
                                        mp->has_ct ? mp->ctype : NULL, err));
            break;
        case ST_EPI_PAD:
            if (is_ows(ch)) {
                if (++mp->pad > mp->lim.max_padding)
                    FAIL(KMDC_ERR_LIMIT, "multipart: more than %zu bytes of "
                         "padding after the close delimiter",
                         mp->lim.max_padding);
                p++;
                break;
            }
            __attribute__((fallthrough));
        case ST_EPI:
            if (ch != '\r' || mp->epi + 2 > mp->lim.max_epilogue)
                FAIL(KMDC_ERR_TRAILING, "multipart: data after the close "
                     "delimiter");
            p++;
            mp->st = ST_EPI_LF;
            break;
        case ST_EPI_LF:
            if (ch != '\n')
                FAIL(KMDC_ERR_TRAILING, "multipart: data after the close "
                     "delimiter");
            p++;
            mp->epi += 2;
            mp->st = ST_EPI;
            break;
        case ST_FAILED:
        default:
            FAIL(KMDC_ERR_INTERNAL, "multipart: parser state");
        }
    }
    return KMDC_OK;
fail:
    mp->st = ST_FAILED;
    mp->failed = rc;
    return rc;
}

kmdc_status
kmdc_mp_final(kmdc_mp *mp, kmdc_err *err)
{
    if (mp == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "multipart: invalid argument");
    switch (mp->st) {
    case ST_EPI_PAD:
    case ST_EPI:
        return KMDC_OK;
    case ST_EPI_LF:
        mp->st = ST_FAILED;
        mp->failed = KMDC_ERR_TRAILING;
        return kmdc_err_set(err, KMDC_ERR_TRAILING,
                            "multipart: data after the close delimiter");
    case ST_FAILED:
        return kmdc_err_set(err, mp->failed,
                            "multipart: the body was already refused");
    default:
        mp->st = ST_FAILED;
        mp->failed = KMDC_ERR_TRUNCATED;
        return kmdc_err_set(err, KMDC_ERR_TRUNCATED,
                            "multipart: the body ended before its close "
                            "delimiter");
    }
}
