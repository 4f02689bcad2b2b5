/*
 * mod_kmdc_locations.c - where `SetHandler kmdc` is used: the scan of the
 * configuration tree at start-up, the LimitRequestBody that applies to a
 * base's send URL, and the base that serves a request.
 *
 * The handler does not guess its prefix from the URL: kmdc_conf_startup()
 * calls kmdc_locations_scan() once the configuration is complete, which
 * walks httpd's tree (ap_conftree) and records every literal <Location> that
 * holds `SetHandler kmdc` (refusing the handler in any other section, where
 * it could not tell its base), and every LimitRequestBody with the virtual
 * host and location it stands in.  A request is then served relative to the
 * longest of those paths that its URI starts with (kmdc_conf_find_base).
 */
#include <string.h>

#include "apr_fnmatch.h"
#include "apr_strings.h"
#include "httpd.h"
#include "http_config.h"
#include "util_cfgtree.h"

#include "mod_kmdc.h"
#include "mod_kmdc_config.h"

/* ------------------------------------------------------------------------ */
/* start-up: where the handler is used                                       */

typedef struct scan_ctx {
    apr_pool_t *p;
    server_rec *main_s;
    apr_array_header_t *bases;
    apr_array_header_t *body_limits;   /* every LimitRequestBody (body_limit) */
    const char *error;
} scan_ctx;

/* A LimitRequestBody directive of the tree and where it stands. */
typedef struct body_limit {
    server_rec *vhost;        /* NULL: the main server (or every server) */
    const char *loc;          /* its <Location> path, NULL: server level */
    apr_off_t bytes;          /* 0: no limit */
} body_limit;

/* httpd's own LimitRequestBody when none is set (2.4.54 and later). */
#define KMDC_HTTPD_DEFAULT_BODY_LIMIT ((apr_off_t)1 << 30)

/* Where a node sits: inside a literal <Location> (loc != NULL), inside some
 * other section that SetHandler kmdc may not use (bad != NULL), or neither. */
typedef struct scan_where {
    server_rec *vhost;
    const char *loc;
    const char *bad;
} scan_where;

/* The first word of a section's arguments ("/kmdc>" -> "/kmdc"). */
static const char *section_arg(apr_pool_t *p, const char *args)
{
    char *a = apr_pstrdup(p, args != NULL ? args : "");
    char *gt = strrchr(a, '>');
    const char *cur = a;

    if (gt != NULL) {
        *gt = '\0';
    }
    return ap_getword_conf(p, &cur);
}

static server_rec *find_vhost(server_rec *main_s, const ap_directive_t *d)
{
    server_rec *s;

    for (s = main_s->next; s != NULL; s = s->next) {
        if (s->defn_name != NULL && d->filename != NULL
            && strcmp(s->defn_name, d->filename) == 0
            && s->defn_line_number == (unsigned)d->line_num) {
            return s;
        }
    }
    return NULL;
}

static void scan_tree(scan_ctx *c, const ap_directive_t *d, scan_where w)
{
    for (; d != NULL && c->error == NULL; d = d->next) {
        const char *name = d->directive;
        scan_where inner = w;

        if (name == NULL) {
            continue;
        }
        if (strcasecmp(name, "SetHandler") == 0) {
            const char *cur = d->args != NULL ? d->args : "";
            const char *h = ap_getword_conf(c->p, &cur);

            if (strcasecmp(h, KMDC_HANDLER) != 0) {
                continue;
            }
            if (w.loc == NULL) {
                c->error = apr_psprintf(c->p, "SetHandler %s on line %d of %s "
                    "must be inside a <Location /path> section with a literal "
                    "path (%s); the module serves the paths below that location",
                    KMDC_HANDLER, d->line_num, d->filename,
                    w.bad != NULL ? w.bad : "it is outside any <Location>");
                continue;
            }
            {
                kmdc_base *b = apr_array_push(c->bases);
                b->s = w.vhost;
                b->path = w.loc;
                b->len = strlen(w.loc);
            }
            continue;
        }
        if (strcasecmp(name, "LimitRequestBody") == 0 && w.bad == NULL) {
            body_limit *l = apr_array_push(c->body_limits);
            char *end = NULL;

            l->vhost = w.vhost;
            l->loc = w.loc;
            if (apr_strtoff(&l->bytes, d->args != NULL ? d->args : "", &end, 10)
                != APR_SUCCESS || l->bytes < 0) {
                apr_array_pop(c->body_limits);   /* httpd itself refuses it */
            }
            continue;
        }
        if (name[0] != '<' || d->first_child == NULL) {
            continue;
        }
        if (strcasecmp(name, "<VirtualHost") == 0) {
            inner.vhost = find_vhost(c->main_s, d);
            inner.loc = NULL;
            inner.bad = NULL;
        }
        else if (strcasecmp(name, "<Location") == 0) {
            const char *path = section_arg(c->p, d->args);

            if (path[0] != '/' || apr_fnmatch_test(path)) {
                inner.loc = NULL;
                inner.bad = "not a regular expression or a wildcard";
            }
            else {
                char *pp = apr_pstrdup(c->p, path);
                apr_size_t n = strlen(pp);

                while (n > 0 && pp[n - 1] == '/') {
                    pp[--n] = '\0';
                }
                inner.loc = pp;
                inner.bad = NULL;
            }
        }
        else if (strcasecmp(name, "<LocationMatch") == 0) {
            inner.loc = NULL;
            inner.bad = "not <LocationMatch>";
        }
        else if (strncasecmp(name, "<Directory", 10) == 0
                 || strncasecmp(name, "<Files", 6) == 0
                 || strncasecmp(name, "<Proxy", 6) == 0) {
            inner.loc = NULL;
            inner.bad = apr_pstrcat(c->p, "not ", name, ">", NULL);
        }
        /* <If>, <IfModule>, <IfDefine>, ... keep the enclosing context */
        scan_tree(c, d->first_child, inner);
    }
}

/* 1 when location path loc covers uri (at a "/" boundary). */
static int covers(const char *loc, const char *uri)
{
    apr_size_t n = strlen(loc);

    return strncmp(loc, uri, n) == 0 && (uri[n] == '\0' || uri[n] == '/' || n == 0);
}

/*
 * The LimitRequestBody that applies to {base}/send: the longest <Location>
 * of the base's server that covers it, else the server's own, else the main
 * server's, else httpd's default.  (Sections other than <Location> are not
 * followed: they do not apply to the handler's URLs.)
 */
apr_off_t kmdc_locations_send_limit(apr_pool_t *p, const apr_array_header_t *limits,
                                    const kmdc_base *b)
{
    const char *uri = apr_pstrcat(p, b->path, "/send", NULL);
    const body_limit *best = NULL, *server = NULL, *main_level = NULL;
    int i;

    for (i = 0; i < limits->nelts; i++) {
        const body_limit *l = &APR_ARRAY_IDX(limits, i, body_limit);

        if (l->vhost != NULL && l->vhost != b->s) {
            continue;
        }
        if (l->loc == NULL) {
            if (l->vhost != NULL) {
                server = l;
            }
            else {
                main_level = l;
            }
        }
        else if (covers(l->loc, uri)
                 && (best == NULL || strlen(l->loc) >= strlen(best->loc))) {
            best = l;
        }
    }
    best = best != NULL ? best : server != NULL ? server : main_level;
    return best != NULL ? best->bytes : KMDC_HTTPD_DEFAULT_BODY_LIMIT;
}

const char *kmdc_locations_scan(apr_pool_t *pconf, apr_pool_t *ptemp,
                                server_rec *s, apr_array_header_t **bases,
                                apr_array_header_t **limits)
{
    scan_ctx c;
    scan_where top;

    memset(&c, 0, sizeof(c));
    c.p = pconf;
    c.main_s = s;
    c.bases = apr_array_make(pconf, 4, sizeof(kmdc_base));
    c.body_limits = apr_array_make(ptemp, 4, sizeof(body_limit));
    memset(&top, 0, sizeof(top));
    scan_tree(&c, ap_conftree, top);
    *bases = c.bases;
    *limits = c.body_limits;
    return c.error;
}

const kmdc_base *kmdc_conf_find_base(const request_rec *r)
{
    const kmdc_srv_conf *sc = kmdc_conf_get(r->server);
    const kmdc_base *best = NULL;
    int i;

    if (sc == NULL || sc->bases == NULL || r->uri == NULL) {
        return NULL;
    }
    for (i = 0; i < sc->bases->nelts; i++) {
        const kmdc_base *b = &APR_ARRAY_IDX(sc->bases, i, kmdc_base);

        if (b->s != NULL && b->s != r->server) {
            continue;
        }
        if (strncmp(r->uri, b->path, b->len) != 0) {
            continue;
        }
        if (r->uri[b->len] != '\0' && r->uri[b->len] != '/') {
            continue;
        }
        if (best == NULL || b->len > best->len) {
            best = b;
        }
    }
    return best;
}
