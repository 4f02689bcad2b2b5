/*
 * fuzz_route.c - the router of lib/kmdc_route.h.  The input is a path below
 * the location (any bytes); it is routed with every method and the answers
 * are checked against each other and against the route table:
 *   - a route found (or one with a malformed serial or id) has the path's
 *     method and shape, and its serial and id, formatted again, give back
 *     exactly the bytes of the path;
 *   - a path unknown for one method is unknown for all;
 *   - a known path answers 405 (and OPTIONS) with one nonempty Allow text
 *     that lists exactly the methods that found a route;
 *   - fields that do not belong to an answer are empty.
 * Any broken rule aborts.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_route.h"
#include "kmdc_util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define NMETHODS 5

static void
check(int cond)
{
    if (!cond)
        abort();
}

/* The one Allow token of method, NULL for OPTIONS and OTHER. */
static const char *
allow_token(kmdc_method method)
{
    switch (method) {
    case KMDC_METHOD_GET: return "GET, HEAD";
    case KMDC_METHOD_POST: return "POST";
    case KMDC_METHOD_DELETE: return "DELETE";
    default: return NULL;
    }
}

/* 1 when the Allow text lists token as a whole item. */
static int
allow_has(const char *allow, const char *token)
{
    static const char *const items[] = { "GET, HEAD", "POST", "DELETE" };
    const char *p = allow;
    size_t i;

    while (*p != '\0') {
        for (i = 0; i < sizeof(items) / sizeof(items[0]); i++)
            if (strncmp(p, items[i], strlen(items[i])) == 0)
                break;
        check(i < sizeof(items) / sizeof(items[0]));    /* only known items */
        if (token != NULL && strcmp(items[i], token) == 0)
            return 1;
        p += strlen(items[i]);
        if (*p != '\0') {
            check(p[0] == ',' && p[1] == ' ' && p[2] != '\0');
            p += 2;
        }
    }
    return 0;
}

/* The path a route and its parsed values stand for, written again. */
static size_t
reformat(const kmdc_route_match *m, char *out, size_t cap)
{
    const kmdc_route *rt = m->route;
    char hex[17];
    size_t n = 0;
    int i;

    for (i = 0; i < rt->nseg; i++) {
        const char *text = NULL;
        size_t tlen = 0;

        if (i == 0) {
            text = rt->name;
        } else if (i == 1 && (rt->flags & KMDC_ROUTE_SERIAL)) {
            kmdc_serial_format(hex, m->serial);
            text = hex;
        } else if (i == rt->id_seg) {
            kmdc_serial_format(hex, m->id);
            text = hex;
        } else {
            abort();                 /* a segment the table does not explain */
        }
        tlen = strlen(text);
        check(n + 1 + tlen <= cap);
        out[n++] = '/';
        memcpy(out + n, text, tlen);
        n += tlen;
    }
    return n;
}

/* The spans cover the path: "/" seg "/" seg ..., no empty segment. */
static void
check_spans(const kmdc_route_match *m, const char *path, size_t len)
{
    size_t pos = 1;
    int i;

    check(m->nseg >= 0 && m->nseg <= KMDC_ROUTE_MAX_SEGMENTS);
    if (m->nseg == 0) {
        check(len == 0 || (len == 1 && path[0] == '/'));
        return;
    }
    for (i = 0; i < m->nseg; i++) {
        check(m->seg[i].off == pos && m->seg[i].len > 0);
        check(path[pos - 1] == '/');
        check(memchr(path + pos, '/', m->seg[i].len) == NULL);
        pos += m->seg[i].len + 1;
    }
    check(pos - 1 == len);
}

static void
check_one(const char *path, size_t len, kmdc_method method, const kmdc_route_match *m)
{
    char again[128];
    uint64_t v;

    switch (m->status) {
    case KMDC_ROUTE_FOUND:
    case KMDC_ROUTE_BAD_SERIAL:
    case KMDC_ROUTE_BAD_ID:
        check(m->route != NULL && m->route == &kmdc_route_table()[m->route->id]);
        check(m->route->method == method && m->nseg == m->route->nseg);
        check(m->allow[0] == '\0');
        check_spans(m, path, len);
        check(m->nseg == 0 || (m->seg[0].len == strlen(m->route->name)
                               && memcmp(path + 1, m->route->name, m->seg[0].len) == 0));
        break;
    case KMDC_ROUTE_METHOD_NOT_ALLOWED:
    case KMDC_ROUTE_OPTIONS:
        check(m->route == NULL && m->serial == 0 && m->id == 0);
        check(m->allow[0] != '\0' && strlen(m->allow) < KMDC_ROUTE_ALLOW_MAX);
        check((m->status == KMDC_ROUTE_OPTIONS) == (method == KMDC_METHOD_OPTIONS));
        check(!allow_has(m->allow, allow_token(method)));
        check_spans(m, path, len);
        break;
    case KMDC_ROUTE_NOT_FOUND:
        check(m->route == NULL && m->serial == 0 && m->id == 0 && m->allow[0] == '\0');
        break;
    default:
        abort();
    }
    switch (m->status) {
    case KMDC_ROUTE_FOUND:
        /* found: the parsed values, written again, are the path's bytes */
        check(((m->route->flags & KMDC_ROUTE_SERIAL) != 0) == (m->serial != 0));
        check((m->route->id_seg > 0) == (m->id != 0));
        check(m->serial <= KMDC_U63_MAX && m->id <= KMDC_U63_MAX);
        if (m->nseg > 0)
            check(reformat(m, again, sizeof(again)) == len
                  && memcmp(again, path, len) == 0);
        break;
    case KMDC_ROUTE_BAD_SERIAL:
        check((m->route->flags & KMDC_ROUTE_SERIAL) && m->serial == 0 && m->id == 0);
        check(kmdc_serial_parse(&v, path + m->seg[1].off, m->seg[1].len, NULL) != KMDC_OK);
        break;
    case KMDC_ROUTE_BAD_ID:
        check(m->route->id_seg > 0 && m->id == 0);
        check(((m->route->flags & KMDC_ROUTE_SERIAL) != 0) == (m->serial != 0));
        check(kmdc_serial_parse(&v, path + m->seg[m->route->id_seg].off,
                                m->seg[m->route->id_seg].len, NULL) != KMDC_OK);
        if (m->serial != 0) {
            char hex[17];

            kmdc_serial_format(hex, m->serial);
            check(m->seg[1].len == 16 && memcmp(path + m->seg[1].off, hex, 16) == 0);
        }
        break;
    default:
        break;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *path = (const char *)data;
    kmdc_route_match m[NMETHODS], again;
    int i, unknown = 0, routed = 0;

    for (i = 0; i < NMETHODS; i++) {
        kmdc_route_lookup(path, size, (kmdc_method)i, &m[i]);
        check_one(path, size, (kmdc_method)i, &m[i]);
        unknown += m[i].status == KMDC_ROUTE_NOT_FOUND;
        /* the same answer twice */
        kmdc_route_lookup(path, size, (kmdc_method)i, &again);
        check(again.status == m[i].status && again.route == m[i].route
              && again.serial == m[i].serial && again.id == m[i].id
              && strcmp(again.allow, m[i].allow) == 0);
    }
    /* a path is unknown for every method or for none */
    check(unknown == 0 || unknown == NMETHODS);
    if (unknown == 0) {
        const char *allow = m[KMDC_METHOD_OPTIONS].allow;

        check(m[KMDC_METHOD_OPTIONS].status == KMDC_ROUTE_OPTIONS);
        check(m[KMDC_METHOD_OTHER].status == KMDC_ROUTE_METHOD_NOT_ALLOWED
              && strcmp(m[KMDC_METHOD_OTHER].allow, allow) == 0);
        for (i = KMDC_METHOD_GET; i <= KMDC_METHOD_DELETE; i++) {
            int has = allow_has(allow, allow_token((kmdc_method)i));

            if (m[i].status == KMDC_ROUTE_METHOD_NOT_ALLOWED) {
                check(!has && strcmp(m[i].allow, allow) == 0);
            } else {
                check(has);
                routed++;
            }
        }
        check(routed > 0);
    }
    return 0;
}
