/*
 * mod_kmdc_metrics_page.c - the Prometheus text page of `SetHandler
 * kmdc-metrics`: every counter of the shared segment (mod_kmdc_metrics.c),
 * the gauges summed over the slots of live children, the build info.
 * Counter names, labels and help texts are the documented interface
 * (docs/): change none of them lightly.
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>

#include "apr_strings.h"
#include "apr_tables.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics_int.h"
#include "kmdc_pq.h"

#ifndef KMDC_VERSION
#define KMDC_VERSION "unknown"
#endif

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

static const char *const send_labels[KMDC_METRIC_SEND_N] = {
    "accepted", "rejected", "refused", "retry", "unavailable"
};

static const char *const activation_labels[KMDC_METRIC_ACT_N] = {
    "ok", "failed", "locked"
};

/* The same bounds as the page writes them (le="..."). */
static const char *const duration_les[N_BUCKETS] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
    "60", "120", "300"
};

/* The character of an SQLSTATE class digit d (0..35): the inverse of
 * class_digit in mod_kmdc_metrics.c. */
static char class_char(int d)
{
    return (char)(d < 10 ? '0' + d : 'A' + (d - 10));
}

/* ------------------------------------------------------------------------ */
/* the page                                                                  */

/* The text being built. */
typedef struct page {
    apr_pool_t *p;
    apr_array_header_t *buf;      /* chars, not NUL-terminated */
} page;

__attribute__((format(printf, 2, 3)))
static void emit(page *pg, const char *fmt, ...)
{
    va_list ap;
    char *s;
    apr_size_t n;

    va_start(ap, fmt);
    s = apr_pvsprintf(pg->p, fmt, ap);
    va_end(ap);
    n = strlen(s);
    while (n-- > 0) {
        APR_ARRAY_PUSH(pg->buf, char) = *s++;
    }
}

static void header(page *pg, const char *name, const char *type, const char *help)
{
    emit(pg, "# HELP %s %s\n# TYPE %s %s\n", name, help, name, type);
}

static uint64_t get(atomic_ullong *c)
{
    return (uint64_t)atomic_load_explicit(c, memory_order_relaxed);
}

static void counter(page *pg, const char *name, const char *help, atomic_ullong *c)
{
    header(pg, name, "counter", help);
    emit(pg, "%s %" APR_UINT64_T_FMT "\n", name, (apr_uint64_t)get(c));
}

static void labelled(page *pg, const char *name, const char *label,
                     const char *value, atomic_ullong *c)
{
    emit(pg, "%s{%s=\"%s\"} %" APR_UINT64_T_FMT "\n", name, label, value,
         (apr_uint64_t)get(c));
}

/* The long-polls in progress (suspended: those of them holding no thread):
 * the slots of live children. */
static long long waiting_now(int suspended)
{
    metrics_seg *seg = kmdc_metrics_seg;
    long long sum = atomic_load(suspended ? &seg->suspended_unslotted
                                : &seg->waiting_unslotted);
    int i;

    for (i = 0; i < seg->nslots; i++) {
        int pid = atomic_load(&seg->slots[i].pid);

        if (pid != 0 && kmdc_metrics_process_alive(pid)) {
            sum += atomic_load(suspended ? &seg->slots[i].suspended
                               : &seg->slots[i].waiting);
        }
    }
    return sum < 0 ? 0 : sum;
}

/* Gauge g now: the slots of live children. */
static long long gauge_now(kmdc_metric_gauge g)
{
    metrics_seg *seg = kmdc_metrics_seg;
    long long sum = atomic_load(&seg->gauges_unslotted[g]);
    int i;

    for (i = 0; i < seg->nslots; i++) {
        int pid = atomic_load(&seg->slots[i].pid);

        if (pid != 0 && kmdc_metrics_process_alive(pid)) {
            sum += atomic_load(&seg->slots[i].gauges[g]);
        }
    }
    return sum < 0 ? 0 : sum;
}

/* The label value of endpoint index ep. */
static const char *endpoint_label(int ep)
{
    return ep < N_KNOWN ? kmdc_metrics_endpoints[ep].label
           : ep == EP_OTHER ? "other" : "unknown";
}

int kmdc_metrics_handler(request_rec *r)
{
    metrics_seg *seg = kmdc_metrics_seg;
    page pg;
    apr_time_t start;
    int st, i;

    if (r->method_number != M_GET) {
        return kmdc_http_method_not_allowed(r, "GET, HEAD");
    }
    if ((st = ap_discard_request_body(r)) != OK) {
        return st;
    }
    if (seg == NULL) {
        return kmdc_http_error(r, HTTP_SERVICE_UNAVAILABLE, "unavailable",
                               "metrics are off: no shared memory; see the "
                               "error log of the server's start");
    }
    pg.p = r->pool;
    pg.buf = apr_array_make(r->pool, 8192, sizeof(char));

    header(&pg, "kmdc_send_total", "counter",
           "POST /send answers by result: accepted (published), rejected "
           "(refused, no counter spent), refused (refused after the keyblock "
           "authenticated, counter spent), retry (repeated from a receipt), "
           "unavailable (503, database).");
    for (i = 0; i < KMDC_METRIC_SEND_N; i++) {
        labelled(&pg, "kmdc_send_total", "result", send_labels[i], &seg->send[i]);
    }
    counter(&pg, "kmdc_send_bytes_total",
            "Envelope bytes of accepted sends.", &seg->send_bytes);
    counter(&pg, "kmdc_deliveries_total",
            "Deliveries queued by accepted sends (one per recipient).",
            &seg->deliveries);
    header(&pg, "kmdc_requests_total", "counter",
           "Requests answered by the kmdc handler, by endpoint (unknown: no "
           "route matched) and HTTP status code (each code once seen).");
    for (i = 0; i < N_ENDPOINTS; i++) {
        for (int k = 0; k < N_STATUS; k++) {
            uint64_t n = get(&seg->by_status[i][k]);

            if (n != 0) {
                emit(&pg, "kmdc_requests_total{endpoint=\"%s\",code=\"%d\"} %"
                     APR_UINT64_T_FMT "\n", endpoint_label(i), STATUS_MIN + k,
                     (apr_uint64_t)n);
            }
        }
    }
    header(&pg, "kmdc_request_duration_seconds", "histogram",
           "Time from the request line to the handler's answer, by endpoint "
           "(a streamed answer: until its last byte was handed to httpd).");
    for (i = 0; i < N_ENDPOINTS; i++) {
        const char *ep = endpoint_label(i);
        uint64_t usec = get(&seg->duration_usec[i]);

        for (int k = 0; k < N_BUCKETS; k++) {
            emit(&pg, "kmdc_request_duration_seconds_bucket{endpoint=\"%s\",le=\"%s\"} %"
                 APR_UINT64_T_FMT "\n", ep, duration_les[k],
                 (apr_uint64_t)get(&seg->duration_bucket[i][k]));
        }
        emit(&pg, "kmdc_request_duration_seconds_bucket{endpoint=\"%s\",le=\"+Inf\"} %"
             APR_UINT64_T_FMT "\n", ep, (apr_uint64_t)get(&seg->duration_count[i]));
        emit(&pg, "kmdc_request_duration_seconds_sum{endpoint=\"%s\"} %" APR_UINT64_T_FMT
             ".%06" APR_UINT64_T_FMT "\n", ep, (apr_uint64_t)(usec / 1000000u),
             (apr_uint64_t)(usec % 1000000u));
        emit(&pg, "kmdc_request_duration_seconds_count{endpoint=\"%s\"} %"
             APR_UINT64_T_FMT "\n", ep, (apr_uint64_t)get(&seg->duration_count[i]));
    }
    counter(&pg, "kmdc_auth_failures_total",
            "Requests refused 401 by request authentication.", &seg->auth_failures);
    header(&pg, "kmdc_activations_total", "counter",
           "Activation attempts by result: ok, failed (wrong or expired code), "
           "locked (the card is or just became locked).");
    for (i = 0; i < KMDC_METRIC_ACT_N; i++) {
        labelled(&pg, "kmdc_activations_total", "result", activation_labels[i],
                 &seg->activations[i]);
    }
    header(&pg, "kmdc_longpoll_waiting", "gauge",
           "Mailbox long-polls (?wait=S) in progress.");
    emit(&pg, "kmdc_longpoll_waiting %" APR_INT64_T_FMT "\n", (apr_int64_t)waiting_now(0));
    header(&pg, "kmdc_longpoll_suspended", "gauge",
           "Of kmdc_longpoll_waiting, those suspended in the event MPM, holding no "
           "worker thread; the others each hold one.");
    emit(&pg, "kmdc_longpoll_suspended %" APR_INT64_T_FMT "\n", (apr_int64_t)waiting_now(1));
    counter(&pg, "kmdc_db_round_trips_total",
            "Round trips to PostgreSQL made for requests (a batch of pipelined "
            "statements is one)", &seg->db_round_trips);
    header(&pg, "kmdc_db_pool_in_use", "gauge",
           "Pooled database connections borrowed by requests now (all children; "
           "each child has KmdcDbPoolMax).");
    emit(&pg, "kmdc_db_pool_in_use %" APR_INT64_T_FMT "\n",
         (apr_int64_t)gauge_now(KMDC_GAUGE_DB_IN_USE));
    header(&pg, "kmdc_db_pool_waiting", "gauge",
           "Requests waiting now for a pooled database connection (up to 10 s, "
           "then 503).");
    emit(&pg, "kmdc_db_pool_waiting %" APR_INT64_T_FMT "\n",
         (apr_int64_t)gauge_now(KMDC_GAUGE_DB_WAITING));
    header(&pg, "kmdc_uploads_in_flight", "gauge",
           "POST /send requests in progress now (reading and storing an envelope).");
    emit(&pg, "kmdc_uploads_in_flight %" APR_INT64_T_FMT "\n",
         (apr_int64_t)gauge_now(KMDC_GAUGE_UPLOADS));
    header(&pg, "kmdc_build_info", "gauge",
           "Always 1; the labels say which build of mod_kmdc answers and the "
           "schema version it needs.");
    emit(&pg, "kmdc_build_info{version=\"%s\",schema=\"%d\"} 1\n", KMDC_VERSION,
         KMDC_SCHEMA_VERSION);
    counter(&pg, "kmdc_db_unavailable_total",
            "Requests answered 503 because the database could not be used.",
            &seg->db_unavailable);
    header(&pg, "kmdc_db_errors_total", "counter",
           "Statements the database refused or failed, by SQLSTATE class (the "
           "first two characters: 08 connection, 23 integrity, 40 transaction "
           "rollback, 42 permission or syntax, 53 insufficient resources such as "
           "a full disk, 57 operator intervention; XX none or internal).");
    for (i = 0; i < N_SQLCLASS; i++) {
        uint64_t n = get(&seg->db_errors[i]);
        char cls[3];

        cls[0] = class_char(i / 36);
        cls[1] = class_char(i % 36);
        cls[2] = '\0';
        /* the classes an alert watches are always there; others once seen */
        if (n != 0 || strcmp(cls, "08") == 0 || strcmp(cls, "42") == 0
            || strcmp(cls, "53") == 0) {
            emit(&pg, "kmdc_db_errors_total{class=\"%s\"} %" APR_UINT64_T_FMT "\n",
                 cls, (apr_uint64_t)n);
        }
    }
    header(&pg, "kmdc_start_time_seconds", "gauge",
           "When these counters started, in Unix seconds (reset only when httpd "
           "stops, not by a restart).");
    start = seg->start;
    emit(&pg, "kmdc_start_time_seconds %" APR_INT64_T_FMT ".%03d\n",
         (apr_int64_t)apr_time_sec(start), (int)(apr_time_msec(start) % 1000));

    r->status = HTTP_OK;
    ap_set_content_type(r, METRICS_CONTENT_TYPE);
    ap_set_content_length(r, (apr_off_t)pg.buf->nelts);
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    apr_table_setn(r->headers_out, "X-Content-Type-Options", "nosniff");
    if (!r->header_only && ap_rwrite(pg.buf->elts, pg.buf->nelts, r) < 0) {
        ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                      "kmdc: client went away while reading the metrics");
    }
    return OK;
}
