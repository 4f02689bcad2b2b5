/*
 * mod_kmdc.c - the module record, the hooks and the request dispatcher.
 *
 * `SetHandler kmdc` inside <Location /some/path> serves the KMDC/1 API below
 * that path.  The handler does not guess the prefix from the URL: at start-up
 * the configuration tree is read for every <Location> that holds
 * `SetHandler kmdc` (kmdc_conf_startup), and a request is served relative to
 * the longest of those paths that its URI starts with.  Nested sections such
 * as <Location /kmdc/send> (to raise LimitRequestBody) therefore do not move
 * the base.  The routes are the table of lib/kmdc_route.h; the dispatcher
 * answers what its router decides: 404 for unknown paths and malformed
 * serials or ids, 405 (with Allow) for a known path with a wrong method, 204
 * (with Allow) for OPTIONS, and otherwise hands the request to the endpoint
 * of mod_kmdc.h.
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
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"
#include "mod_kmdc_notify.h"
#include "mod_kmdc_store.h"
#include "kmdc_pq.h"         /* KMDC_SCHEMA_VERSION */

/* ------------------------------------------------------------------------ */
/* GET /health                                                               */

static int kmdc_handle_health(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_store *st = kmdc_store_pg(r);
    kmdc_store_rc rc;
    kmdc_degraded why;
    int ago = 0;

    rc = st->ops->health(st);
    if (rc != KMDC_STORE_OK) {
        return kmdc_store_answer_failure(r, rc);
    }
    /* connected with the right schema, but statements were refused lately
     * (a missing grant, a full disk): not healthy, though it answers */
    why = kmdc_store_degraded(r, &ago);
    if (why != KMDC_DEGRADED_NONE) {
        apr_table_setn(r->headers_out, "Retry-After", "5");
        return kmdc_http_json(r, HTTP_SERVICE_UNAVAILABLE,
                              json_pack("{s:s, s:s, s:i, s:s, s:s}",
                                        "status", "degraded",
                                        "error", "degraded",
                                        "schema", KMDC_SCHEMA_VERSION,
                                        "reason", kmdc_degraded_name(why),
                                        "message", apr_psprintf(r->pool,
                                            "the database refused a statement "
                                            "(%s) %d s ago; see the error log",
                                            kmdc_degraded_name(why), ago)));
    }
    return kmdc_http_json(r, HTTP_OK,
                          json_pack("{s:s, s:i}", "status", "ok", "schema",
                                    KMDC_SCHEMA_VERSION));
}

/* ------------------------------------------------------------------------ */
/* routing                                                                   */

/* The endpoint of every route of lib/kmdc_route.h. */
static kmdc_endpoint_fn *const kmdc_endpoints[KMDC_RT_N] = {
    [KMDC_RT_PAGE] = kmdc_handle_page,          /* {location} and {location}/ */
    [KMDC_RT_HEALTH] = kmdc_handle_health,
    [KMDC_RT_SEND] = kmdc_handle_send,
    [KMDC_RT_ACTIVATE] = kmdc_handle_activate,
    [KMDC_RT_CARD] = kmdc_handle_card,
    [KMDC_RT_MAILBOX_LIST] = kmdc_handle_mailbox_list,
    [KMDC_RT_MAILBOX_FETCH] = kmdc_handle_mailbox_fetch,
    [KMDC_RT_MAILBOX_DELETE] = kmdc_handle_mailbox_delete,
    [KMDC_RT_MESSAGE] = kmdc_handle_message,
};

/* The router's name of r's method (HEAD is M_GET in httpd). */
static kmdc_method kmdc_method_of(const request_rec *r)
{
    switch (r->method_number) {
    case M_GET: return KMDC_METHOD_GET;
    case M_POST: return KMDC_METHOD_POST;
    case M_DELETE: return KMDC_METHOD_DELETE;
    case M_OPTIONS: return KMDC_METHOD_OPTIONS;
    default: return KMDC_METHOD_OTHER;
    }
}

/*
 * Route r and answer it.  A malformed serial is answered 404 before request
 * authentication, a malformed message or delivery id after it (the order the
 * endpoints had when they parsed ids themselves).  Neither is counted under
 * the route's endpoint: kmdc_metrics_route is called for a found route only,
 * so kmdc_requests_total counts them as "unknown".
 */
static int kmdc_dispatch(request_rec *r)
{
    kmdc_req *kr = apr_pcalloc(r->pool, sizeof(*kr));
    const kmdc_base *base = kmdc_conf_find_base(r);
    kmdc_route_match m;
    int rv = OK;
    int i;

    kr->r = r;
    kr->sc = kmdc_conf_get(r->server);
    if (base == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "kmdc: the %s handler was set for a URL outside every "
                      "<Location> that holds SetHandler %s at start-up "
                      "(.htaccess or a rewrite rule?); set it in a <Location>",
                      KMDC_HANDLER, KMDC_HANDLER);
        rv = kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                             "the server is misconfigured; see its error log");
        goto out;
    }
    kr->base = base->path;
    kr->subpath = r->uri + base->len;
    if (strcmp(kr->subpath, "/") == 0) {
        kr->subpath = "";   /* {location}/ is {location}: the browser page */
    }
    switch (kmdc_route_lookup(kr->subpath, strlen(kr->subpath), kmdc_method_of(r), &m)) {
    case KMDC_ROUTE_FOUND:
    case KMDC_ROUTE_BAD_ID:
        break;
    case KMDC_ROUTE_OPTIONS:
        apr_table_setn(r->headers_out, "Allow", apr_pstrdup(r->pool, m.allow));
        rv = kmdc_http_no_content(r);
        goto out;
    case KMDC_ROUTE_METHOD_NOT_ALLOWED:
        rv = kmdc_http_method_not_allowed(r, apr_pstrdup(r->pool, m.allow));
        goto out;
    case KMDC_ROUTE_BAD_SERIAL:
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                             "no such card: a serial is 16 lowercase hex digits");
        goto out;
    case KMDC_ROUTE_NOT_FOUND:
    default:
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such resource");
        goto out;
    }
    kr->nseg = m.nseg;
    kr->seg[0] = "";        /* the route named "" (the page) */
    for (i = 0; i < m.nseg; i++) {
        kr->seg[i] = apr_pstrmemdup(r->pool, kr->subpath + m.seg[i].off, m.seg[i].len);
    }
    kr->route_flags = m.route->flags;
    kr->serial = m.serial;
    kr->id = m.id;
    if (m.status == KMDC_ROUTE_FOUND) {
        kmdc_metrics_route(r, m.route->name, m.route->nseg, r->method_number);
    }
    if (m.route->flags & KMDC_ROUTE_AUTH) {
        rv = kmdc_reqauth_check(kr);
        if (rv != OK) {
            rv = rv == DONE ? OK : rv;
            goto out;
        }
    }
    if (m.status == KMDC_ROUTE_BAD_ID) {
        kmdc_store *st = kmdc_store_pg(r);
        kmdc_store_rc src = st->ops->settle(st);   /* the nonce record first */

        if (src != KMDC_STORE_OK) {
            rv = kmdc_store_answer_failure(r, src);
            goto out;
        }
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                             "no such %s: an id is 16 lowercase hex digits",
                             m.route->id == KMDC_RT_MESSAGE ? "message" : "delivery");
        goto out;
    }
    if (m.route->id == KMDC_RT_SEND) {
        kmdc_metrics_gauge(KMDC_GAUGE_UPLOADS, 1);
        rv = kmdc_endpoints[m.route->id](kr);
        kmdc_metrics_gauge(KMDC_GAUGE_UPLOADS, -1);
    }
    else {
        rv = kmdc_endpoints[m.route->id](kr);
    }
    if ((m.route->flags & KMDC_ROUTE_AUTH) && rv != SUSPENDED) {
        /* every signed endpoint's first operation carries the deferred nonce
         * record; should one ever answer without the store, record it now */
        kmdc_store *st = kmdc_store_pg(r);

        if (st->ops->settle(st) != KMDC_STORE_OK) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          "kmdc: a nonce record deferred past the answer failed");
        }
    }
out:
    return rv;
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
    if (st != SUSPENDED) {
        kmdc_metrics_answered(r, st);   /* else when resumed (mod_kmdc_mailbox.c) */
    }
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
    kmdc_store_child_init(pchild, s);
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
