/*
 * mod_kmdc.c - the module record, the hooks and the request dispatcher.
 *
 * `SetHandler kmdc` inside <Location /some/path> serves the KMDC/1 API below
 * that path.  The handler does not guess the prefix from the URL: at start-up
 * the configuration tree is read for every <Location> that holds
 * `SetHandler kmdc` (kmdc_conf_startup), and a request is served relative to
 * the longest of those paths that its URI starts with.  Nested sections such
 * as <Location /kmdc/send> (to raise LimitRequestBody) therefore do not move
 * the base.  The dispatcher answers 404 for unknown paths and 405 (with Allow)
 * for a known path with a wrong method, then hands the request to the
 * endpoint of mod_kmdc.h.
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <string.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"

#include "mod_kmdc.h"
#include "mod_kmdc_config.h"
#include "mod_kmdc_db.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"
#include "mod_kmdc_notify.h"
#include "mod_kmdc_store.h"

/* ------------------------------------------------------------------------ */
/* GET /health                                                               */

static int kmdc_handle_health(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_store *st = kmdc_store_pg(r);
    kmdc_store_rc rc;

    rc = st->ops->health(st);
    if (rc != KMDC_STORE_OK) {
        return kmdc_store_answer_failure(r, rc);
    }
    return kmdc_http_json(r, HTTP_OK,
                          json_pack("{s:s, s:i}", "status", "ok", "schema",
                                    KMDC_SCHEMA_VERSION));
}

/* ------------------------------------------------------------------------ */
/* routing                                                                   */

typedef struct kmdc_route {
    const char *name;           /* the first path segment */
    int nseg;                   /* the number of segments */
    int method;                 /* M_GET (HEAD included), M_POST, M_DELETE */
    int flags;                  /* KMDC_ROUTE_* */
    kmdc_endpoint_fn *fn;
} kmdc_route;

static const kmdc_route kmdc_routes[] = {
    { "", 0, M_GET, 0, kmdc_handle_page },     /* {location} and {location}/ */
    { "health", 1, M_GET, 0, kmdc_handle_health },
    { "send", 1, M_POST, 0, kmdc_handle_send },
    { "activate", 2, M_POST,
      KMDC_ROUTE_AUTH | KMDC_ROUTE_INACTIVE | KMDC_ROUTE_SERIAL,
      kmdc_handle_activate },
    { "card", 2, M_GET, KMDC_ROUTE_AUTH | KMDC_ROUTE_INACTIVE | KMDC_ROUTE_SERIAL,
      kmdc_handle_card },
    { "mailbox", 2, M_GET, KMDC_ROUTE_AUTH | KMDC_ROUTE_SERIAL,
      kmdc_handle_mailbox_list },
    { "mailbox", 3, M_GET, KMDC_ROUTE_AUTH | KMDC_ROUTE_SERIAL,
      kmdc_handle_mailbox_fetch },
    { "mailbox", 3, M_DELETE, KMDC_ROUTE_AUTH | KMDC_ROUTE_SERIAL,
      kmdc_handle_mailbox_delete },
    { "messages", 2, M_GET, KMDC_ROUTE_AUTH, kmdc_handle_message },
};

#define KMDC_NROUTES ((int)(sizeof(kmdc_routes) / sizeof(kmdc_routes[0])))

/* The Allow header value for every route of this path shape. */
static const char *allow_for(apr_pool_t *p, const char *name, int nseg)
{
    const char *allow = NULL;
    int i;

    for (i = 0; i < KMDC_NROUTES; i++) {
        const kmdc_route *rt = &kmdc_routes[i];
        const char *m = NULL;

        if (rt->nseg != nseg || strcmp(rt->name, name) != 0) {
            continue;
        }
        switch (rt->method) {
        case M_GET: m = "GET, HEAD"; break;
        case M_POST: m = "POST"; break;
        case M_DELETE: m = "DELETE"; break;
        default: continue;
        }
        allow = allow == NULL ? m : apr_pstrcat(p, allow, ", ", m, NULL);
    }
    return allow;
}

static int kmdc_dispatch(request_rec *r)
{
    kmdc_req *kr = apr_pcalloc(r->pool, sizeof(*kr));
    const kmdc_base *base = kmdc_conf_find_base(r);
    const kmdc_route *route = NULL;
    int found_path = 0;
    int st;
    int i;

    kr->r = r;
    kr->sc = kmdc_conf_get(r->server);
    if (base == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "kmdc: the %s handler was set for a URL outside every "
                      "<Location> that holds SetHandler %s at start-up "
                      "(.htaccess or a rewrite rule?); set it in a <Location>",
                      KMDC_HANDLER, KMDC_HANDLER);
        return kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                               "the server is misconfigured; see its error log");
    }
    kr->base = base->path;
    kr->subpath = r->uri + base->len;
    if (strcmp(kr->subpath, "/") == 0) {
        kr->subpath = "";   /* {location}/ is {location}: the browser page */
    }
    kr->nseg = kmdc_http_split_path(r->pool, kr->subpath, kr->seg,
                                    KMDC_MAX_SEGMENTS);
    if (kr->nseg < 0) {
        return kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such resource");
    }
    if (kr->nseg == 0) {
        kr->seg[0] = "";    /* the route named "" */
    }
    for (i = 0; i < KMDC_NROUTES; i++) {
        const kmdc_route *rt = &kmdc_routes[i];

        if (rt->nseg != kr->nseg || strcmp(rt->name, kr->seg[0]) != 0) {
            continue;
        }
        found_path = 1;
        if (rt->method == r->method_number) {
            route = rt;
            break;
        }
    }
    if (!found_path) {
        return kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such resource");
    }
    if (route == NULL) {
        const char *allow = allow_for(r->pool, kr->seg[0], kr->nseg);

        if (r->method_number == M_OPTIONS) {
            apr_table_setn(r->headers_out, "Allow", allow);
            return kmdc_http_no_content(r);
        }
        return kmdc_http_method_not_allowed(r, allow);
    }
    kr->route_flags = route->flags;
    kmdc_metrics_route(r, route->name, route->nseg, route->method);
    if ((route->flags & KMDC_ROUTE_SERIAL)
        && !kmdc_http_parse_serial(kr->seg[1], &kr->serial)) {
        return kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                               "no such card: a serial is 16 lowercase hex digits");
    }
    if (route->flags & KMDC_ROUTE_AUTH) {
        st = kmdc_reqauth_check(kr);
        if (st != OK) {
            return st == DONE ? OK : st;
        }
    }
    return route->fn(kr);
}

static int kmdc_handler(request_rec *r)
{
    int st;

    if (r->handler == NULL) {
        return DECLINED;
    }
    if (strcasecmp(r->handler, KMDC_METRICS_HANDLER) == 0) {
        return kmdc_metrics_handler(r);
    }
    if (strcasecmp(r->handler, KMDC_HANDLER) != 0) {
        return DECLINED;
    }
    st = kmdc_dispatch(r);
    kmdc_metrics_answered(r, st);
    return st;
}

/* ------------------------------------------------------------------------ */
/* hooks                                                                     */

static int kmdc_check_config(apr_pool_t *pconf, apr_pool_t *plog,
                             apr_pool_t *ptemp, server_rec *s)
{
    (void)plog;
    return kmdc_conf_startup(pconf, ptemp, s, 0);
}

static int kmdc_post_config(apr_pool_t *pconf, apr_pool_t *plog,
                            apr_pool_t *ptemp, server_rec *s)
{
    int st;

    (void)plog;
    st = kmdc_conf_startup(pconf, ptemp, s, 1);
    return st != OK ? st : kmdc_metrics_post_config(pconf, s);
}

static void kmdc_child_init(apr_pool_t *pchild, server_rec *s)
{
    kmdc_db_child_init(pchild, s);
    kmdc_metrics_child_init(pchild, s);
    kmdc_notify_child_init(pchild, s);
}

static void kmdc_register_hooks(apr_pool_t *p)
{
    (void)p;
    ap_hook_check_config(kmdc_check_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_post_config(kmdc_post_config, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_child_init(kmdc_child_init, NULL, NULL, APR_HOOK_MIDDLE);
    ap_hook_handler(kmdc_handler, NULL, NULL, APR_HOOK_MIDDLE);
    kmdc_notify_register_hooks(p);
}

module AP_MODULE_DECLARE_DATA kmdc_module = {
    STANDARD20_MODULE_STUFF,
    NULL,                       /* create per-directory config */
    NULL,                       /* merge per-directory config */
    kmdc_conf_create_server,    /* create per-server config */
    kmdc_conf_merge_server,     /* merge per-server config */
    kmdc_cmds,                  /* directives */
    kmdc_register_hooks,
#if defined(AP_MODULE_FLAG_ALWAYS_MERGE)
    AP_MODULE_FLAG_ALWAYS_MERGE /* every virtual host gets its own merged copy */
#endif
};
