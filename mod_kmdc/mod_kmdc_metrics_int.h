/*
 * mod_kmdc_metrics_int.h - the layout of the shared metrics segment, which
 * mod_kmdc_metrics.c (the segment, counting) writes and
 * mod_kmdc_metrics_page.c (the Prometheus page) reads; nothing else
 * includes it.
 */
#ifndef MOD_KMDC_METRICS_INT_H
#define MOD_KMDC_METRICS_INT_H

#include <stdatomic.h>
#include <stdint.h>

#include "apr_time.h"
#include "httpd.h"

#include "mod_kmdc_metrics.h"

/* The endpoints of kmdc_requests_total: the routes of mod_kmdc.c. */
typedef struct endpoint {
    const char *name;         /* first path segment */
    int nseg;                 /* segments */
    int method;               /* M_GET (HEAD too), M_POST, M_DELETE */
    const char *label;        /* the label value */
} endpoint;

/* The known endpoints (mod_kmdc_metrics.c), N_KNOWN of them. */
#define N_KNOWN 9
extern const endpoint kmdc_metrics_endpoints[N_KNOWN];

#define EP_OTHER N_KNOWN              /* a route this table does not know */
#define EP_UNKNOWN (N_KNOWN + 1)      /* no route matched (404, 405), or a
                                       * malformed serial or id (404) */
#define N_ENDPOINTS (N_KNOWN + 2)

/* The r->notes key the dispatcher's route is noted under. */
#define NOTE_ENDPOINT "kmdc-endpoint"

/* SQLSTATE classes: two characters of [0-9A-Z]. */
#define N_SQLCLASS (36 * 36)

/* Databases (KmdcDatabase strings) whose degraded state is kept. */
#define N_DEGRADED_SLOTS 16

/* When one database last saw each reason to be degraded. */
typedef struct degraded_slot {
    atomic_ullong key;            /* hash of its conninfo, 0 when free */
    atomic_llong seen[KMDC_DEGRADED_N];   /* apr_time_t, 0 never */
} degraded_slot;

/* Status codes counted per endpoint: 100 .. 599. */
#define STATUS_MIN 100
#define N_STATUS 500

/* The request duration buckets (bounds in mod_kmdc_metrics.c, their
 * spelling in mod_kmdc_metrics_page.c). */
#define N_BUCKETS 15

/* One child's share of the gauges. */
typedef struct gauge_slot {
    atomic_int pid;               /* the owner, 0 when free */
    atomic_llong waiting;         /* its long-polls in progress */
    atomic_llong suspended;       /* of which suspended (no thread held) */
    atomic_llong gauges[KMDC_GAUGE_N];
} gauge_slot;

/* The shared segment. */
typedef struct metrics_seg {
    uint32_t magic;               /* KMDC_METRICS_MAGIC */
    uint32_t layout;              /* KMDC_METRICS_LAYOUT */
    apr_size_t size;              /* bytes of the segment */
    int nslots;                   /* gauge slots */
    apr_time_t start;             /* when the counters began */
    atomic_ullong send[KMDC_METRIC_SEND_N];
    atomic_ullong send_bytes;
    atomic_ullong deliveries;
    atomic_ullong requests[N_ENDPOINTS];
    atomic_ullong by_status[N_ENDPOINTS][N_STATUS];
    atomic_ullong duration_bucket[N_ENDPOINTS][N_BUCKETS];
    atomic_ullong duration_count[N_ENDPOINTS];
    atomic_ullong duration_usec[N_ENDPOINTS];
    atomic_ullong auth_failures;
    atomic_ullong activations[KMDC_METRIC_ACT_N];
    atomic_ullong db_unavailable;
    atomic_ullong db_round_trips;
    atomic_llong suspended_unslotted;
    atomic_ullong db_errors[N_SQLCLASS];
    degraded_slot degraded[N_DEGRADED_SLOTS];
    atomic_llong waiting_unslotted;  /* children that found no free slot */
    atomic_llong gauges_unslotted[KMDC_GAUGE_N];
    gauge_slot slots[];
} metrics_seg;

/* The segment (inherited from the parent; NULL: metrics are off). */
extern metrics_seg *kmdc_metrics_seg;

/* 1 when a process with this pid exists (EPERM: it does, not ours). */
int kmdc_metrics_process_alive(int pid);

#endif
