/*
 * mod_kmdc_metrics.h - the counters of mod_kmdc and the `kmdc-metrics`
 * handler that shows them in the Prometheus text format (0.0.4).
 *
 * The counters live in one anonymous shared-memory segment (apr_shm) that the
 * parent creates at the first post_config, in the process pool, so that every
 * child inherits it through fork() and the counts survive graceful and plain
 * restarts (kmdc_start_time_seconds says when they began).  Every counter is a
 * lock-free C11 atomic on that segment: children add to it without a lock and
 * the handler sums nothing, it reads the one shared value.  The only gauge,
 * kmdc_longpoll_waiting, is kept per child (a slot claimed in child_init and
 * freed when the child exits) so that a child that dies in the middle of a
 * long-poll does not leave the gauge too high: the handler adds up the slots
 * of live processes only.
 *
 * Every increment is a no-op when the segment does not exist (a module loaded
 * without post_config, or shared memory refused by the system), so callers
 * never check anything.  docs/ADMIN.md "Metrics" lists the names, types and
 * meanings.
 */
#ifndef MOD_KMDC_METRICS_H
#define MOD_KMDC_METRICS_H

#include <stddef.h>
#include <stdint.h>

#include "httpd.h"
#include "apr_pools.h"
#include "apr_time.h"

/* The outcomes of POST /send (kmdc_send_total{result=...}). */
typedef enum kmdc_metric_send {
    KMDC_METRIC_SEND_ACCEPTED = 0,    /* 201: published */
    KMDC_METRIC_SEND_REJECTED,        /* refused, no counter spent */
    KMDC_METRIC_SEND_REFUSED,         /* refused after authentication, spent */
    KMDC_METRIC_SEND_RETRY,           /* a retry answered from its receipt */
    KMDC_METRIC_SEND_UNAVAILABLE,     /* 503: the database could not be used */
    KMDC_METRIC_SEND_N
} kmdc_metric_send;

/* The outcomes of POST /activate (kmdc_activations_total{result=...}). */
typedef enum kmdc_metric_activation {
    KMDC_METRIC_ACT_OK = 0,           /* 204: the card is active */
    KMDC_METRIC_ACT_FAILED,           /* wrong or expired access code */
    KMDC_METRIC_ACT_LOCKED,           /* the card is (or just became) locked */
    KMDC_METRIC_ACT_N
} kmdc_metric_activation;

/*
 * Create the shared segment (post_config, in the parent).  The first call
 * makes it in s->process->pool and stores it there; later calls (the second
 * start-up pass, restarts) find it again.  Returns OK; when shared memory
 * cannot be had it logs one line and returns OK anyway (metrics are then
 * off: the page answers 503), because the service does not depend on them.
 */
int kmdc_metrics_post_config(apr_pool_t *pconf, server_rec *s);

/*
 * Claim this child's slot for the long-poll gauge (child_init); the slot is
 * given back when pchild is destroyed.  A slot left by a child that died is
 * taken over.
 */
void kmdc_metrics_child_init(apr_pool_t *pchild, server_rec *s);

/*
 * The `kmdc-metrics` handler: GET (and HEAD) answer 200 with every metric in
 * the Prometheus text format 0.0.4; other methods 405.  Returns what the
 * httpd handler returns.
 */
int kmdc_metrics_handler(request_rec *r);

/*
 * Note which endpoint serves r (called by the dispatcher once a route
 * matched with well-formed identifiers: its first segment, segment count and
 * method number).  The request is counted by kmdc_metrics_answered().
 */
void kmdc_metrics_route(request_rec *r, const char *name, int nseg, int method);

/*
 * Count a request the kmdc handler answered (rv: what the handler returns):
 * kmdc_requests_total under the endpoint noted by kmdc_metrics_route
 * ("unknown" when none was noted: no route matched, or its serial or id
 * was malformed) and the answer's status code, its duration since
 * r->request_time in kmdc_request_duration_seconds, and
 * kmdc_db_unavailable_total when the answer was 503.
 */
void kmdc_metrics_answered(request_rec *r, int rv);

/*
 * Count one POST /send: status is the answer's HTTP status, from_receipt 1
 * when the answer was repeated from a receipt, spent 1 when a refusal after
 * authentication spent the counter, bytes the envelope's length and
 * deliveries its recipients (both counted only when accepted).
 */
void kmdc_metrics_send(int status, int from_receipt, int spent, uint64_t bytes,
                       size_t deliveries);

/* Count a request refused 401 by request authentication. */
void kmdc_metrics_auth_failure(void);

/* Count one activation attempt with this outcome. */
void kmdc_metrics_activation(kmdc_metric_activation result);

/* Add delta (+1 or -1) to this child's long-polls in progress. */
void kmdc_metrics_longpoll(int delta);

/* One round trip to PostgreSQL for a request (a statement, a prepare, or a
 * batch of pipelined statements). */
void kmdc_metrics_db_round_trip(void);

/* Add delta (+1 or -1) to this child's long-polls suspended in the event MPM
 * (a part of those counted by kmdc_metrics_longpoll). */
void kmdc_metrics_longpoll_suspended(int delta);

/* Gauges kept per child like the long-poll gauge (kmdc_metrics_gauge). */
typedef enum kmdc_metric_gauge {
    KMDC_GAUGE_DB_IN_USE = 0,     /* pooled connections borrowed by requests */
    KMDC_GAUGE_DB_WAITING,        /* requests waiting for a pooled connection */
    KMDC_GAUGE_UPLOADS,           /* POST /send requests in progress */
    KMDC_GAUGE_N
} kmdc_metric_gauge;

/* Add delta (+1 or -1) to this child's share of gauge g. */
void kmdc_metrics_gauge(kmdc_metric_gauge g, int delta);

/* How long a permission or resource error of the database keeps /health
 * degraded after it was last seen, in seconds (docs/ADMIN.md, Logs). */
#define KMDC_DEGRADED_WINDOW 60

/* Why a database is degraded (kmdc_metrics_db_degraded). */
typedef enum kmdc_degraded {
    KMDC_DEGRADED_NONE = 0,
    KMDC_DEGRADED_PERMISSION,     /* SQLSTATE 42501 insufficient_privilege */
    KMDC_DEGRADED_DISK_FULL,      /* SQLSTATE 53100 disk_full */
    KMDC_DEGRADED_RESOURCES,      /* any other of class 53 (memory, connections) */
    KMDC_DEGRADED_N
} kmdc_degraded;

/*
 * Count one failed statement of the database named by conninfo (its
 * KmdcDatabase) under kmdc_db_errors_total{class=...}, the first two
 * characters of sqlstate ("" or anything malformed counts as class "XX",
 * internal error).  42501 and class 53 also mark that database degraded
 * now, in the shared segment (every child's /health sees it) and in this
 * process (when there is no segment).
 */
void kmdc_metrics_db_error(const char *conninfo, const char *sqlstate);

/*
 * Whether the database named by conninfo saw a permission or resource
 * error within the last KMDC_DEGRADED_WINDOW seconds before now (in any
 * child; in this child only when shared memory is off).  Returns the most
 * recent such reason and sets *ago to its age in seconds, or
 * KMDC_DEGRADED_NONE.
 */
kmdc_degraded kmdc_metrics_db_degraded(const char *conninfo, apr_time_t now, int *ago);

/* The stable name of a reason ("permission_denied", "disk_full",
 * "insufficient_resources"; "none"). */
const char *kmdc_degraded_name(kmdc_degraded why);

#endif
