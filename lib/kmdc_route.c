/* kmdc_route.c - the route table of the KMDC/1 API and the router. */
#include "kmdc_route.h"

#include <string.h>

#include "kmdc_util.h"

/* Indexed by kmdc_route_id.  Routes of one path shape (name and segment
 * count) stand together; their order is the order of the Allow text. */
static const kmdc_route routes[KMDC_RT_N] = {
    [KMDC_RT_PAGE] = { KMDC_RT_PAGE, "", 0, KMDC_METHOD_GET, 0, 0 },
    [KMDC_RT_HEALTH] = { KMDC_RT_HEALTH, "health", 1, KMDC_METHOD_GET, 0, 0 },
    [KMDC_RT_SEND] = { KMDC_RT_SEND, "send", 1, KMDC_METHOD_POST, 0, 0 },
    [KMDC_RT_ACTIVATE] = { KMDC_RT_ACTIVATE, "activate", 2, KMDC_METHOD_POST,
                           KMDC_ROUTE_AUTH | KMDC_ROUTE_INACTIVE | KMDC_ROUTE_SERIAL, 0 },
    [KMDC_RT_CARD] = { KMDC_RT_CARD, "card", 2, KMDC_METHOD_GET,
                       KMDC_ROUTE_AUTH | KMDC_ROUTE_INACTIVE | KMDC_ROUTE_SERIAL, 0 },
    [KMDC_RT_MAILBOX_LIST] = { KMDC_RT_MAILBOX_LIST, "mailbox", 2, KMDC_METHOD_GET,
                               KMDC_ROUTE_AUTH | KMDC_ROUTE_SERIAL, 0 },
    [KMDC_RT_MAILBOX_FETCH] = { KMDC_RT_MAILBOX_FETCH, "mailbox", 3, KMDC_METHOD_GET,
                                KMDC_ROUTE_AUTH | KMDC_ROUTE_SERIAL, 2 },
    [KMDC_RT_MAILBOX_DELETE] = { KMDC_RT_MAILBOX_DELETE, "mailbox", 3, KMDC_METHOD_DELETE,
                                 KMDC_ROUTE_AUTH | KMDC_ROUTE_SERIAL, 2 },
    [KMDC_RT_MESSAGE] = { KMDC_RT_MESSAGE, "messages", 2, KMDC_METHOD_GET,
                          KMDC_ROUTE_AUTH, 1 },
};

const kmdc_route *
kmdc_route_table(void)
{
    return routes;
}

/* Split path[0..len) into seg; "" and "/" give 0 segments.  Returns the
 * count, or -1 for a path that does not start with "/", has an empty segment
 * ("//", a trailing "/") or more than KMDC_ROUTE_MAX_SEGMENTS segments. */
static int
split(const char *path, size_t len, kmdc_route_span seg[KMDC_ROUTE_MAX_SEGMENTS])
{
    size_t pos = 1;
    int n = 0;

    if (len == 0 || (len == 1 && path[0] == '/'))
        goto out;
    if (path[0] != '/') {
        n = -1;
        goto out;
    }
    for (;;) {
        const char *slash = memchr(path + pos, '/', len - pos);
        size_t end = slash != NULL ? (size_t)(slash - path) : len;

        if (end == pos || n >= KMDC_ROUTE_MAX_SEGMENTS) {
            n = -1;                      /* empty segment, or too many */
            goto out;
        }
        seg[n].off = pos;
        seg[n].len = end - pos;
        n++;
        if (slash == NULL)
            break;
        pos = end + 1;
    }
out:
    return n;
}

/* 1 when route rt has the path shape of segment 0 (name) and nseg. */
static int
same_path(const kmdc_route *rt, const char *name, size_t nlen, int nseg)
{
    return rt->nseg == nseg && strlen(rt->name) == nlen
           && memcmp(rt->name, name, nlen) == 0;
}

/* Append ", " (unless first) and s to the Allow text in out. */
static void
allow_add(char out[KMDC_ROUTE_ALLOW_MAX], const char *s)
{
    size_t have = strlen(out);
    size_t sep = have > 0 ? 2 : 0;
    size_t slen = strlen(s);

    if (have + sep + slen >= KMDC_ROUTE_ALLOW_MAX)
        return;                          /* cannot happen with this table */
    if (sep)
        memcpy(out + have, ", ", 2);
    memcpy(out + have + sep, s, slen + 1);
}

static int
parse_u63(const char *path, const kmdc_route_span *sp, uint64_t *v)
{
    return kmdc_serial_parse(v, path + sp->off, sp->len, NULL) == KMDC_OK;
}

kmdc_route_status
kmdc_route_lookup(const char *path, size_t len, kmdc_method method, kmdc_route_match *m)
{
    const char *name = "";
    size_t nlen = 0;
    int nseg, i;

    memset(m, 0, sizeof(*m));
    m->status = KMDC_ROUTE_NOT_FOUND;
    nseg = split(path, len, m->seg);
    if (nseg < 0)
        goto out;
    m->nseg = nseg;
    if (nseg > 0) {
        name = path + m->seg[0].off;
        nlen = m->seg[0].len;
    }
    for (i = 0; i < KMDC_RT_N; i++) {
        const kmdc_route *rt = &routes[i];

        if (!same_path(rt, name, nlen, nseg))
            continue;
        if (rt->method == method) {
            m->route = rt;
            break;
        }
        switch (rt->method) {
        case KMDC_METHOD_GET: allow_add(m->allow, "GET, HEAD"); break;
        case KMDC_METHOD_POST: allow_add(m->allow, "POST"); break;
        case KMDC_METHOD_DELETE: allow_add(m->allow, "DELETE"); break;
        default: break;
        }
    }
    if (m->route == NULL) {
        if (m->allow[0] != '\0')
            m->status = method == KMDC_METHOD_OPTIONS ? KMDC_ROUTE_OPTIONS
                                                      : KMDC_ROUTE_METHOD_NOT_ALLOWED;
        goto out;
    }
    /* The Allow text is only for answers without a route. */
    m->allow[0] = '\0';
    if ((m->route->flags & KMDC_ROUTE_SERIAL) && !parse_u63(path, &m->seg[1], &m->serial)) {
        m->serial = 0;
        m->status = KMDC_ROUTE_BAD_SERIAL;
        goto out;
    }
    if (m->route->id_seg > 0 && !parse_u63(path, &m->seg[m->route->id_seg], &m->id)) {
        m->id = 0;
        m->status = KMDC_ROUTE_BAD_ID;
        goto out;
    }
    m->status = KMDC_ROUTE_FOUND;
out:
    return m->status;
}
