/*
 * mod_kmdc.h - what the parts of mod_kmdc share: the module record, the
 * per-request context built by the dispatcher, and the entry points of the
 * endpoint files.
 *
 * The dispatcher (mod_kmdc.c) works out the path below the <Location> that
 * holds `SetHandler kmdc`, has the router of lib/kmdc_route.h find the route
 * and parse the serial and id in the path, answers 404/405 itself, runs
 * request authentication for the routes that need it (mod_kmdc_reqauth.c)
 * and then calls one endpoint function.
 * Each endpoint function answers the request completely and returns what the
 * httpd handler returns (normally OK, from the kmdc_http_* answer helpers).
 */
#ifndef MOD_KMDC_H
#define MOD_KMDC_H

#include <stdint.h>

#include "httpd.h"
#include "http_config.h"
#include "http_log.h"

#include "kmdc_route.h"
#include "mod_kmdc_config.h"

#ifdef APLOG_USE_MODULE
APLOG_USE_MODULE(kmdc);
#endif

extern module AP_MODULE_DECLARE_DATA kmdc_module;

/* The handler names (SetHandler): the protocol endpoints and the
 * Prometheus metrics page (mod_kmdc_metrics.c). */
#define KMDC_HANDLER "kmdc"
#define KMDC_METRICS_HANDLER "kmdc-metrics"

/* Room for the path segments below the location (at least
 * KMDC_ROUTE_MAX_SEGMENTS, the most any route has: mailbox/S/ID). */
#define KMDC_MAX_SEGMENTS 4

/* Largest authenticated request body (docs/PROTOCOL.md section 5). */
#define KMDC_AUTH_BODY_MAX 4096

/* The route flags (KMDC_ROUTE_AUTH, KMDC_ROUTE_INACTIVE, KMDC_ROUTE_SERIAL)
 * are those of the route table in lib/kmdc_route.h. */

/*
 * One request as the dispatcher hands it to an endpoint.  Everything is
 * allocated from r->pool.  The body fields are filled by request
 * authentication (which must hash the body) and are NULL/0 before.
 */
typedef struct kmdc_req {
    request_rec *r;
    const kmdc_srv_conf *sc;     /* the server's merged configuration */
    const char *base;            /* the location prefix, "" for "/" */
    const char *subpath;         /* r->uri below base, e.g. "/mailbox/..." */
    int nseg;                    /* number of path segments */
    const char *seg[KMDC_MAX_SEGMENTS]; /* the segments, decoded, no "/" */
    int route_flags;             /* KMDC_ROUTE_* of the matched route */
    uint64_t serial;             /* serial in the path (ROUTE_SERIAL), else 0 */
    uint64_t id;                 /* message or delivery id in the path
                                  * (messages/ID, mailbox/S/ID), else 0 */
    uint64_t signer;             /* serial that signed the request, else 0 */
    const char *body;            /* authenticated body, NUL terminated */
    apr_size_t body_len;         /* its length (<= KMDC_AUTH_BODY_MAX) */
} kmdc_req;

/* An endpoint: answers the request, returns the handler's return value. */
typedef int kmdc_endpoint_fn(kmdc_req *kr);

/*
 * Request authentication (mod_kmdc_reqauth.c), run by the dispatcher before
 * every route flagged KMDC_ROUTE_AUTH.  Reads the (bounded) body, verifies
 * the Authorization header of docs/PROTOCOL.md section 5, records the nonce, checks that the
 * signer equals kr->serial when the path names one and that the card may use
 * the route (kr->route_flags), and fills kr->signer, kr->body, kr->body_len.
 * Returns OK when the request may proceed; otherwise it has already answered
 * (401/403/400/413/503 JSON) and returns DONE.
 */
int kmdc_reqauth_check(kmdc_req *kr);

/* Answer 401: the request's nonce was seen before (a replay).  Used when the
 * store finds it out with the endpoint's first operation (KMDC_STORE_REPLAY). */
int kmdc_reqauth_answer_replay(request_rec *r);

/* POST {location}/send: the envelope intake of docs/PROTOCOL.md section 6 (mod_kmdc_send.c).
 * Not authenticated by header: the envelope authenticates itself. */
int kmdc_handle_send(kmdc_req *kr);

/* GET {location}/messages/{id}: the sender's view of one message, each
 * recipient's state (mod_kmdc_message.c).  kr->id is the id (seg[1] its
 * text). */
int kmdc_handle_message(kmdc_req *kr);

/* POST {location}/activate/{serial}: key rotation of docs/PROTOCOL.md section 2/3.6
 * (mod_kmdc_activate.c).  kr->serial is set, kr->body holds the form. */
int kmdc_handle_activate(kmdc_req *kr);

/* GET {location}/card/{serial}: status, up_next, down_next and server time
 * for resynchronisation (mod_kmdc_activate.c). */
int kmdc_handle_card(kmdc_req *kr);

/* GET {location}/mailbox/{serial}: pending deliveries, ETag, ?wait=S
 * (mod_kmdc_mailbox.c). */
int kmdc_handle_mailbox_list(kmdc_req *kr);

/* GET {location}/mailbox/{serial}/{id}: one down envelope, streamed
 * (mod_kmdc_mailbox.c).  kr->id is the delivery id (seg[2] its text). */
int kmdc_handle_mailbox_fetch(kmdc_req *kr);

/* DELETE {location}/mailbox/{serial}/{id}: acknowledge a delivery, 204
 * (mod_kmdc_mailbox.c).  kr->id is the delivery id. */
int kmdc_handle_mailbox_delete(kmdc_req *kr);

/* GET {location} and GET {location}/ (kr->nseg 0): the browser page, an
 * upload form for a sealed .kmdc file and a status form for a message, with
 * a strict Content-Security-Policy (mod_kmdc_page.c). */
int kmdc_handle_page(kmdc_req *kr);

#endif
