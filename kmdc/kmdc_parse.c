/*
 * kmdc_parse.c - readers of the datacenter's answers (see kmdc_parse.h).
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include <jansson.h>

#include "kmdc_parse.h"
#include "kmdc_units.h"
#include "kmdc_util.h"

#define BODY_MAX (1u << 24)      /* no answer the client parses is near this */

void
kmdc_parse_sanitize(char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

/* ---- headers ------------------------------------------------------------------- */

void
kmdc_parse_hdrs_init(kmdc_hdrs *h)
{
    memset(h, 0, sizeof *h);
    h->retry_after = -1;
}

/* Copy the value v[0..len) trimmed of blanks and CRLF into dst (truncated). */
static void
copy_value(char *dst, size_t cap, const char *v, size_t len)
{
    while (len > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' ' ||
                       v[len - 1] == '\t'))
        len--;
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, v, len);
    dst[len] = '\0';
    /* a NUL inside the value ends it; controls are masked */
    kmdc_parse_sanitize(dst);
}

/* Does line[0..n) start with the header name `name` followed by ':'? */
static int
is_header(const char *line, size_t n, const char *name, size_t *vstart)
{
    size_t l = strlen(name);

    if (n <= l || line[l] != ':' || strncasecmp(line, name, l) != 0)
        return 0;
    *vstart = l + 1;
    return 1;
}

void
kmdc_parse_header_line(kmdc_hdrs *h, const char *line, size_t n)
{
    char tmp[32];
    size_t v, i;
    int64_t secs;

    if (line == NULL)
        return;
    if (n >= 5 && strncmp(line, "HTTP/", 5) == 0) {
        kmdc_parse_hdrs_init(h);
        return;
    }
    if (is_header(line, n, "ETag", &v)) {
        copy_value(h->etag, sizeof h->etag, line + v, n - v);
    } else if (is_header(line, n, "Location", &v)) {
        copy_value(h->location, sizeof h->location, line + v, n - v);
    } else if (is_header(line, n, "Content-Type", &v)) {
        copy_value(h->content_type, sizeof h->content_type, line + v, n - v);
        /* the media type only: parameters (charset) go, lower case */
        h->content_type[strcspn(h->content_type, "; \t")] = '\0';
        for (i = 0; h->content_type[i] != '\0'; i++)
            h->content_type[i] = (char)tolower((unsigned char)h->content_type[i]);
    } else if (is_header(line, n, "Retry-After", &v)) {
        copy_value(tmp, sizeof tmp, line + v, n - v);
        h->retry_after = -1;
        if (strlen(tmp) <= 9 && kmdc_parse_decimal(tmp, 999999999, &secs) == KMDC_UNITS_OK)
            h->retry_after = (long)secs;
    }
}

/* ---- JSON helpers ----------------------------------------------------------------- */

static json_t *
load(const char *body, size_t len)
{
    json_error_t je;

    if (body == NULL || len == 0 || len > BODY_MAX)
        return NULL;
    return json_loadb(body, len, JSON_REJECT_DUPLICATES, &je);
}

/* A JSON integer in [0, 2^63-1]. */
static int
get_u64(json_t *o, const char *key, uint64_t *v)
{
    json_t *j = json_object_get(o, key);

    if (!json_is_integer(j) || json_integer_value(j) < 0)
        return -1;
    *v = (uint64_t)json_integer_value(j);
    return 0;
}

/* A 16-hex-digit id string in 1 .. 2^63-1. */
static int
get_id(json_t *o, const char *key, uint64_t *v)
{
    json_t *j = json_object_get(o, key);
    const char *s;

    if (!json_is_string(j))
        return -1;
    s = json_string_value(j);
    if (json_string_length(j) != 16 || strspn(s, "0123456789abcdef") != 16)
        return -1;
    return kmdc_serial_parse(v, s, 16, NULL) == KMDC_OK ? 0 : -1;
}

/* 16 lowercase hex digits, any value (the send answer is printed as given). */
static int
get_hex16(json_t *o, const char *key, uint64_t *v)
{
    json_t *j = json_object_get(o, key);
    uint8_t b[8];

    if (!json_is_string(j) || json_string_length(j) != 16 ||
        strspn(json_string_value(j), "0123456789abcdef") != 16 ||
        kmdc_hex_decode(b, sizeof b, json_string_value(j), 16, NULL) != KMDC_OK)
        return -1;
    *v = kmdc_get_u64(b);
    return 0;
}

static int
is_json_type(const char *content_type)
{
    return content_type != NULL && strcmp(content_type, "application/json") == 0;
}

/* ---- error bodies ------------------------------------------------------------------- */

int
kmdc_parse_error_body(long status, const char *content_type, const char *body, size_t len,
                      char *error, size_t ecap, char *message, size_t mcap)
{
    json_t *j = NULL, *e, *m;
    const char *code;
    size_t cl;
    int ok = 0;

    if (ecap > 0)
        error[0] = '\0';
    if (mcap > 0)
        message[0] = '\0';
    if (status < 400 || status > 599 || !is_json_type(content_type) || ecap == 0 || mcap == 0)
        return 0;
    if ((j = load(body, len)) == NULL || !json_is_object(j) || json_object_size(j) != 2)
        goto out;
    e = json_object_get(j, "error");
    m = json_object_get(j, "message");
    if (!json_is_string(e) || !json_is_string(m))
        goto out;
    code = json_string_value(e);
    cl = json_string_length(e);
    if (cl == 0 || cl > 40 || strspn(code, "abcdefghijklmnopqrstuvwxyz_") != cl)
        goto out;
    snprintf(error, ecap, "%s", code);
    snprintf(message, mcap, "%s", json_string_value(m));
    kmdc_parse_sanitize(message);
    ok = 1;
out:
    json_decref(j);
    return ok;
}

/* ---- POST /send --------------------------------------------------------------------- */

int
kmdc_parse_send_answer(const char *content_type, const char *body, size_t len,
                       uint64_t *message, int64_t *deliveries)
{
    json_t *j, *d;
    int rc = -1;

    if (!is_json_type(content_type) || (j = load(body, len)) == NULL)
        return -1;
    d = json_object_get(j, "deliveries");
    if (json_is_object(j) && get_hex16(j, "message", message) == 0 && json_is_integer(d) &&
        json_integer_value(d) >= 1 && json_integer_value(d) <= 1024) {
        *deliveries = (int64_t)json_integer_value(d);
        rc = 0;
    }
    json_decref(j);
    return rc;
}

/* ---- GET /mailbox ---------------------------------------------------------------------- */

static int
cmp_delivery(const void *a, const void *b)
{
    const kmdc_delivery *x = a, *y = b;

    if (x->seq != y->seq)
        return x->seq < y->seq ? -1 : 1;
    return x->id < y->id ? -1 : x->id > y->id;
}

int
kmdc_parse_listing(const char *body, size_t len, kmdc_delivery **out, size_t *n,
                   uint64_t *down_next)
{
    json_t *j, *arr, *it;
    kmdc_delivery *v = NULL;
    size_t i, cnt;
    int rc = -1;

    *out = NULL;
    *n = 0;
    *down_next = 0;
    if ((j = load(body, len)) == NULL)
        return -1;
    arr = json_object_get(j, "deliveries");
    if (!json_is_object(j) || !json_is_array(arr) || get_u64(j, "down_next", down_next) != 0)
        goto out;
    cnt = json_array_size(arr);
    if (cnt > KMDC_PARSE_MAX_DELIVERIES)
        cnt = KMDC_PARSE_MAX_DELIVERIES;     /* the rest on the next pass */
    if (cnt > 0 && (v = calloc(cnt, sizeof *v)) == NULL)
        goto out;
    for (i = 0; i < cnt; i++) {
        it = json_array_get(arr, i);
        if (!json_is_object(it) || get_id(it, "id", &v[i].id) != 0 ||
            get_u64(it, "seq", &v[i].seq) != 0 || get_u64(it, "size", &v[i].size) != 0)
            goto out;
    }
    if (cnt > 1)
        qsort(v, cnt, sizeof *v, cmp_delivery);
    *out = v;
    *n = cnt;
    v = NULL;
    rc = 0;
out:
    free(v);
    json_decref(j);
    return rc;
}

/* ---- GET /card -------------------------------------------------------------------------- */

int
kmdc_parse_card(const char *body, size_t len, kmdc_card_answer *out)
{
    json_t *j, *st, *lk, *t;
    int rc = -1;

    memset(out, 0, sizeof *out);
    if ((j = load(body, len)) == NULL)
        return -1;
    st = json_object_get(j, "status");
    lk = json_object_get(j, "locked");
    t = json_object_get(j, "time");
    if (!json_is_object(j) || get_id(j, "serial", &out->serial) != 0 || !json_is_string(st) ||
        json_string_length(st) >= sizeof out->status ||
        get_u64(j, "up_next", &out->up_next) != 0 ||
        get_u64(j, "down_next", &out->down_next) != 0 || !json_is_integer(t))
        goto out;
    if (lk != NULL && !json_is_boolean(lk))
        goto out;
    snprintf(out->status, sizeof out->status, "%s", json_string_value(st));
    kmdc_parse_sanitize(out->status);
    out->locked = json_is_true(lk);
    out->time = (int64_t)json_integer_value(t);
    rc = 0;
out:
    json_decref(j);
    return rc;
}

/* ---- GET /messages ----------------------------------------------------------------------- */

void
kmdc_parse_message_free(kmdc_message_answer *m)
{
    if (m == NULL)
        return;
    free(m->rcpts);
    m->rcpts = NULL;
    m->n_rcpts = 0;
}

int
kmdc_parse_message(const char *body, size_t len, kmdc_message_answer *out)
{
    json_t *j, *arr, *it, *a, *s, *cr;
    size_t i, cnt;
    int rc = -1;

    memset(out, 0, sizeof *out);
    if ((j = load(body, len)) == NULL)
        return -1;
    arr = json_object_get(j, "recipients");
    cr = json_object_get(j, "created");
    if (!json_is_object(j) || get_id(j, "message", &out->message) != 0 || !json_is_array(arr) ||
        !json_is_integer(cr) || get_u64(j, "size", &out->size) != 0)
        goto out;
    out->created = (int64_t)json_integer_value(cr);
    cnt = json_array_size(arr);
    if (cnt > KMDC_PARSE_MAX_RCPTS)
        goto out;
    if (cnt > 0 && (out->rcpts = calloc(cnt, sizeof *out->rcpts)) == NULL)
        goto out;
    for (i = 0; i < cnt; i++) {
        it = json_array_get(arr, i);
        a = json_object_get(it, "address");
        s = json_object_get(it, "state");
        if (!json_is_object(it) || !json_is_string(a) || !json_is_string(s) ||
            json_string_length(a) >= sizeof out->rcpts[i].address ||
            json_string_length(s) >= sizeof out->rcpts[i].state)
            goto out;
        snprintf(out->rcpts[i].address, sizeof out->rcpts[i].address, "%s", json_string_value(a));
        snprintf(out->rcpts[i].state, sizeof out->rcpts[i].state, "%s", json_string_value(s));
        kmdc_parse_sanitize(out->rcpts[i].address);
        kmdc_parse_sanitize(out->rcpts[i].state);
    }
    out->n_rcpts = cnt;
    rc = 0;
out:
    if (rc != 0)
        kmdc_parse_message_free(out);
    json_decref(j);
    return rc;
}

/* ---- unknown_recipient ------------------------------------------------------------------- */

/* 1 to 4 decimal digits at *p (no sign, no blank): the value, p moved past. */
static int
small_number(const char **p, size_t *v)
{
    size_t n = 0, k = 0;

    while (k < 5 && (*p)[k] >= '0' && (*p)[k] <= '9') {
        n = n * 10 + (size_t)((*p)[k] - '0');
        k++;
    }
    if (k == 0 || k > 4)
        return -1;
    *p += k;
    *v = n;
    return 0;
}

int
kmdc_parse_rcpt_index(const char *message, size_t *i, size_t *of)
{
    const char *p;
    size_t a, b;

    if (message == NULL || (p = strstr(message, "recipient ")) == NULL)
        return -1;
    p += strlen("recipient ");
    if (small_number(&p, &a) != 0 || strncmp(p, " of ", 4) != 0)
        return -1;
    p += 4;
    if (small_number(&p, &b) != 0 || a == 0 || a > b)
        return -1;
    *i = a;
    *of = b;
    return 0;
}
