/*
 * mod_kmdc_metrics.c - counters in anonymous shared memory, summed over all
 * children by construction, and the Prometheus text page of `SetHandler
 * kmdc-metrics` (see mod_kmdc_metrics.h for the design).
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/types.h>
#include <unistd.h>

#include "apr_shm.h"
#include "apr_strings.h"
#include "apr_tables.h"
#include "ap_mpm.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"
#include "kmdc_pq.h"

#ifndef KMDC_VERSION
#define KMDC_VERSION "unknown"
#endif

/* Children add to the counters without a lock, from several processes: that
 * is only sound when the atomics are lock-free (no process-local lock). */
_Static_assert(ATOMIC_LLONG_LOCK_FREE == 2, "64-bit atomics must be lock-free");
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "int atomics must be lock-free");

/* The process-pool key of the segment (survives restarts). */
#define KMDC_METRICS_KEY "mod_kmdc metrics segment"

/* "KMDM" and the layout version: a module of another layout loaded by a
 * restart makes a new segment instead of misreading the old one. */
#define KMDC_METRICS_MAGIC 0x4b4d444du
#define KMDC_METRICS_LAYOUT 4u

/* Gauge slots when the MPM does not say how many children it may run. */
#define KMDC_METRICS_DEFAULT_SLOTS 64
#define KMDC_METRICS_MAX_SLOTS 20000

#define METRICS_CONTENT_TYPE "text/plain; version=0.0.4; charset=utf-8"

/* The endpoints of kmdc_requests_total: the routes of mod_kmdc.c. */
typedef struct endpoint {
    const char *name;         /* first path segment */
    int nseg;                 /* segments */
    int method;               /* M_GET (HEAD too), M_POST, M_DELETE */
    const char *label;        /* the label value */
} endpoint;

static const endpoint endpoints[] = {
    { "", 0, M_GET, "page" },
    { "health", 1, M_GET, "health" },
    { "send", 1, M_POST, "send" },
    { "activate", 2, M_POST, "activate" },
    { "card", 2, M_GET, "card" },
    { "mailbox", 2, M_GET, "mailbox_list" },
    { "mailbox", 3, M_GET, "mailbox_fetch" },
    { "mailbox", 3, M_DELETE, "mailbox_ack" },
    { "messages", 2, M_GET, "messages" },
};

#define N_KNOWN ((int)(sizeof(endpoints) / sizeof(endpoints[0])))
#define EP_OTHER N_KNOWN              /* a route this table does not know */
#define EP_UNKNOWN (N_KNOWN + 1)      /* no route matched (404, 405), or a
                                       * malformed serial or id (404) */
#define N_ENDPOINTS (N_KNOWN + 2)

static const char *const send_labels[KMDC_METRIC_SEND_N] = {
    "accepted", "rejected", "refused", "retry", "unavailable"
};

static const char *const activation_labels[KMDC_METRIC_ACT_N] = {
    "ok", "failed", "locked"
};

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

/* The upper bounds of the request duration buckets, in seconds (+Inf is
 * the count): from a cached answer to an upload of a gigabyte; a long-poll
 * waits up to 60 s. */
static const double duration_bounds[] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300
};
#define N_BUCKETS ((int)(sizeof(duration_bounds) / sizeof(duration_bounds[0])))

/* The same bounds as the page writes them (le="..."). */
static const char *const duration_les[N_BUCKETS] = {
    "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5", "10", "30",
    "60", "120", "300"
};

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

/* This process's view: the segment (inherited from the parent) and, in a
 * child, its gauge slot. */
static metrics_seg *seg;
static gauge_slot *my_slot;

static apr_size_t seg_size(int nslots)
{
    return sizeof(metrics_seg) + (apr_size_t)nslots * sizeof(gauge_slot);
}

static int seg_usable(const metrics_seg *m)
{
    return m != NULL && m->magic == KMDC_METRICS_MAGIC
           && m->layout == KMDC_METRICS_LAYOUT && m->nslots >= 0
           && m->size == seg_size(m->nslots);
}

int kmdc_metrics_post_config(apr_pool_t *pconf, server_rec *s)
{
    apr_pool_t *pp = s->process->pool;
    void *data = NULL;
    apr_shm_t *shm = NULL;
    metrics_seg *m = NULL;
    apr_status_t rv;
    int limit = 0;
    int nslots = KMDC_METRICS_DEFAULT_SLOTS;
    int i;

    (void)pconf;
    seg = NULL;
    if (apr_pool_userdata_get(&data, KMDC_METRICS_KEY, pp) == APR_SUCCESS
        && data != NULL) {
        m = apr_shm_baseaddr_get(data);
        if (seg_usable(m) && apr_shm_size_get(data) >= m->size) {
            seg = m;
            return OK;
        }
        /* another layout (a new module build): start a new segment */
    }
    if (ap_mpm_query(AP_MPMQ_HARD_LIMIT_DAEMONS, &limit) == APR_SUCCESS
        && limit > 0) {
        /* children of an old generation may still run beside the new ones */
        nslots = limit > KMDC_METRICS_MAX_SLOTS / 2 - 8
                 ? KMDC_METRICS_MAX_SLOTS : 2 * limit + 8;
    }
    rv = apr_shm_create(&shm, seg_size(nslots), NULL, pp);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s,
                     "kmdc: no anonymous shared memory for the metrics; the %s "
                     "page answers 503", KMDC_METRICS_HANDLER);
        return OK;
    }
    m = apr_shm_baseaddr_get(shm);
    memset(m, 0, seg_size(nslots));
    m->magic = KMDC_METRICS_MAGIC;
    m->layout = KMDC_METRICS_LAYOUT;
    m->size = seg_size(nslots);
    m->nslots = nslots;
    m->start = apr_time_now();
    for (i = 0; i < KMDC_METRIC_SEND_N; i++) {
        atomic_init(&m->send[i], 0);
    }
    atomic_init(&m->send_bytes, 0);
    atomic_init(&m->deliveries, 0);
    for (i = 0; i < N_ENDPOINTS; i++) {
        atomic_init(&m->requests[i], 0);
        for (int k = 0; k < N_STATUS; k++) {
            atomic_init(&m->by_status[i][k], 0);
        }
        for (int k = 0; k < N_BUCKETS; k++) {
            atomic_init(&m->duration_bucket[i][k], 0);
        }
        atomic_init(&m->duration_count[i], 0);
        atomic_init(&m->duration_usec[i], 0);
    }
    atomic_init(&m->auth_failures, 0);
    for (i = 0; i < KMDC_METRIC_ACT_N; i++) {
        atomic_init(&m->activations[i], 0);
    }
    atomic_init(&m->db_unavailable, 0);
    atomic_init(&m->db_round_trips, 0);
    atomic_init(&m->suspended_unslotted, 0);
    for (i = 0; i < N_SQLCLASS; i++) {
        atomic_init(&m->db_errors[i], 0);
    }
    for (i = 0; i < N_DEGRADED_SLOTS; i++) {
        atomic_init(&m->degraded[i].key, 0);
        for (int k = 0; k < KMDC_DEGRADED_N; k++) {
            atomic_init(&m->degraded[i].seen[k], 0);
        }
    }
    atomic_init(&m->waiting_unslotted, 0);
    for (int k = 0; k < KMDC_GAUGE_N; k++) {
        atomic_init(&m->gauges_unslotted[k], 0);
    }
    for (i = 0; i < nslots; i++) {
        atomic_init(&m->slots[i].pid, 0);
        atomic_init(&m->slots[i].waiting, 0);
        atomic_init(&m->slots[i].suspended, 0);
        for (int k = 0; k < KMDC_GAUGE_N; k++) {
            atomic_init(&m->slots[i].gauges[k], 0);
        }
    }
    /* userdata_set copies the key; the segment goes with the process pool */
    rv = apr_pool_userdata_set(shm, KMDC_METRICS_KEY, apr_pool_cleanup_null, pp);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s,
                     "kmdc: cannot keep the metrics segment across restarts");
    }
    seg = m;
    return OK;
}

/* 1 when a process with this pid exists (EPERM: it does, not ours). */
static int process_alive(int pid)
{
    return pid > 0 && (kill((pid_t)pid, 0) == 0 || errno == EPERM);
}

static apr_status_t slot_release(void *data)
{
    gauge_slot *slot = data;

    atomic_store(&slot->waiting, 0);
    atomic_store(&slot->suspended, 0);
    for (int k = 0; k < KMDC_GAUGE_N; k++) {
        atomic_store(&slot->gauges[k], 0);
    }
    atomic_store(&slot->pid, 0);
    if (my_slot == slot) {
        my_slot = NULL;
    }
    return APR_SUCCESS;
}

void kmdc_metrics_child_init(apr_pool_t *pchild, server_rec *s)
{
    int me = (int)getpid();
    int i;

    my_slot = NULL;
    if (seg == NULL) {
        return;
    }
    for (i = 0; i < seg->nslots && my_slot == NULL; i++) {
        gauge_slot *slot = &seg->slots[i];
        int owner = atomic_load(&slot->pid);

        if ((owner == 0 || (owner != me && !process_alive(owner)))
            && atomic_compare_exchange_strong(&slot->pid, &owner, me)) {
            atomic_store(&slot->waiting, 0);
            atomic_store(&slot->suspended, 0);
            for (int k = 0; k < KMDC_GAUGE_N; k++) {
                atomic_store(&slot->gauges[k], 0);
            }
            my_slot = slot;
        }
    }
    if (my_slot == NULL) {
        ap_log_error(APLOG_MARK, APLOG_WARNING, 0, s,
                     "kmdc: all %d metrics slots are taken; this child's "
                     "long-polls are counted without one", seg->nslots);
        return;
    }
    apr_pool_cleanup_register(pchild, my_slot, slot_release, apr_pool_cleanup_null);
}

/* ------------------------------------------------------------------------ */
/* counting                                                                  */

static void add(atomic_ullong *c, uint64_t n)
{
    atomic_fetch_add_explicit(c, (unsigned long long)n, memory_order_relaxed);
}

void kmdc_metrics_route(request_rec *r, const char *name, int nseg, int method)
{
    const char *label = "other";
    int i;

    for (i = 0; i < N_KNOWN; i++) {
        if (endpoints[i].nseg == nseg && endpoints[i].method == method
            && strcmp(endpoints[i].name, name) == 0) {
            label = endpoints[i].label;
            break;
        }
    }
    apr_table_setn(r->notes, NOTE_ENDPOINT, label);
}

void kmdc_metrics_answered(request_rec *r, int rv)
{
    const char *label = apr_table_get(r->notes, NOTE_ENDPOINT);
    int status = rv == OK || rv == DONE ? r->status : rv;
    int ep = EP_UNKNOWN;
    int i;

    if (seg == NULL) {
        return;
    }
    if (label != NULL) {
        ep = EP_OTHER;
        for (i = 0; i < N_KNOWN; i++) {
            if (strcmp(endpoints[i].label, label) == 0) {
                ep = i;
                break;
            }
        }
    }
    add(&seg->requests[ep], 1);
    if (status >= STATUS_MIN && status < STATUS_MIN + N_STATUS) {
        add(&seg->by_status[ep][status - STATUS_MIN], 1);
    }
    {
        apr_time_t took = apr_time_now() - r->request_time;
        double secs;

        if (took < 0) {
            took = 0;
        }
        secs = (double)took / (double)APR_USEC_PER_SEC;
        for (i = 0; i < N_BUCKETS; i++) {
            if (secs <= duration_bounds[i]) {
                add(&seg->duration_bucket[ep][i], 1);
            }
        }
        add(&seg->duration_count[ep], 1);
        add(&seg->duration_usec[ep], (uint64_t)took);
    }
    if (status == HTTP_SERVICE_UNAVAILABLE) {
        add(&seg->db_unavailable, 1);
    }
}

void kmdc_metrics_send(int status, int from_receipt, int spent, uint64_t bytes,
                       size_t deliveries)
{
    kmdc_metric_send result;

    if (seg == NULL) {
        return;
    }
    if (from_receipt) {
        result = KMDC_METRIC_SEND_RETRY;
    }
    else if (status == HTTP_CREATED) {
        result = KMDC_METRIC_SEND_ACCEPTED;
        add(&seg->send_bytes, bytes);
        add(&seg->deliveries, (uint64_t)deliveries);
    }
    else if (status == HTTP_SERVICE_UNAVAILABLE) {
        result = KMDC_METRIC_SEND_UNAVAILABLE;
    }
    else if (spent) {
        result = KMDC_METRIC_SEND_REFUSED;
    }
    else {
        result = KMDC_METRIC_SEND_REJECTED;
    }
    add(&seg->send[result], 1);
}

void kmdc_metrics_auth_failure(void)
{
    if (seg != NULL) {
        add(&seg->auth_failures, 1);
    }
}

void kmdc_metrics_activation(kmdc_metric_activation result)
{
    if (seg != NULL && (int)result >= 0 && result < KMDC_METRIC_ACT_N) {
        add(&seg->activations[result], 1);
    }
}

void kmdc_metrics_db_round_trip(void)
{
    if (seg != NULL) {
        add(&seg->db_round_trips, 1);
    }
}

void kmdc_metrics_longpoll(int delta)
{
    if (seg == NULL) {
        return;
    }
    atomic_fetch_add_explicit(my_slot != NULL ? &my_slot->waiting
                              : &seg->waiting_unslotted,
                              (long long)delta, memory_order_relaxed);
}

void kmdc_metrics_longpoll_suspended(int delta)
{
    if (seg == NULL) {
        return;
    }
    atomic_fetch_add_explicit(my_slot != NULL ? &my_slot->suspended
                              : &seg->suspended_unslotted,
                              (long long)delta, memory_order_relaxed);
}

void kmdc_metrics_gauge(kmdc_metric_gauge g, int delta)
{
    if (seg == NULL || (int)g < 0 || g >= KMDC_GAUGE_N) {
        return;
    }
    atomic_fetch_add_explicit(my_slot != NULL ? &my_slot->gauges[g]
                              : &seg->gauges_unslotted[g],
                              (long long)delta, memory_order_relaxed);
}

/* ------------------------------------------------------------------------ */
/* database errors and the degraded state                                    */

/* The index of one SQLSTATE character, -1 when it is not [0-9A-Z]. */
static int class_digit(char c)
{
    if (c >= '0' && c <= '9') {
        return c - '0';
    }
    if (c >= 'A' && c <= 'Z') {
        return 10 + (c - 'A');
    }
    return -1;
}

/* The counter index of sqlstate's class; "XX" (internal_error) when it is
 * not a SQLSTATE. */
static int class_index(const char *sqlstate)
{
    int a = sqlstate != NULL && sqlstate[0] != '\0' ? class_digit(sqlstate[0]) : -1;
    int b = a >= 0 ? class_digit(sqlstate[1]) : -1;

    if (a < 0 || b < 0) {
        a = class_digit('X');
        b = class_digit('X');
    }
    return a * 36 + b;
}

static char class_char(int d)
{
    return (char)(d < 10 ? '0' + d : 'A' + (d - 10));
}

/* FNV-1a of the conninfo, never 0 (0 marks a free slot). */
static uint64_t conninfo_key(const char *conninfo)
{
    uint64_t h = 0xcbf29ce484222325ull;
    const unsigned char *c;

    for (c = (const unsigned char *)(conninfo != NULL ? conninfo : ""); *c != '\0'; c++) {
        h ^= *c;
        h *= 0x100000001b3ull;
    }
    return h != 0 ? h : 1;
}

/* The slot of key: its own, else a free one claimed now; NULL when every
 * slot belongs to another database (more than N_DEGRADED_SLOTS of them). */
static degraded_slot *degraded_find(uint64_t key, int claim)
{
    int i;

    for (i = 0; i < N_DEGRADED_SLOTS; i++) {
        degraded_slot *d = &seg->degraded[(key + (uint64_t)i) % N_DEGRADED_SLOTS];
        unsigned long long k = atomic_load(&d->key);

        if (k == key) {
            return d;
        }
        if (k == 0) {
            if (!claim) {
                return NULL;
            }
            if (atomic_compare_exchange_strong(&d->key, &k, (unsigned long long)key)
                || k == key) {
                return d;
            }
        }
    }
    return NULL;
}

/* This process's record, used when there is no segment. */
static apr_time_t local_seen[KMDC_DEGRADED_N];

static kmdc_degraded degraded_reason(const char *sqlstate)
{
    if (sqlstate == NULL) {
        return KMDC_DEGRADED_NONE;
    }
    if (strcmp(sqlstate, "42501") == 0) {
        return KMDC_DEGRADED_PERMISSION;
    }
    if (strcmp(sqlstate, "53100") == 0) {
        return KMDC_DEGRADED_DISK_FULL;
    }
    if (strncmp(sqlstate, "53", 2) == 0) {
        return KMDC_DEGRADED_RESOURCES;
    }
    return KMDC_DEGRADED_NONE;
}

void kmdc_metrics_db_error(const char *conninfo, const char *sqlstate)
{
    kmdc_degraded why = degraded_reason(sqlstate);
    apr_time_t now = apr_time_now();

    if (why != KMDC_DEGRADED_NONE) {
        local_seen[why] = now;
    }
    if (seg == NULL) {
        return;
    }
    add(&seg->db_errors[class_index(sqlstate)], 1);
    if (why != KMDC_DEGRADED_NONE) {
        degraded_slot *d = degraded_find(conninfo_key(conninfo), 1);

        if (d != NULL) {
            atomic_store(&d->seen[why], (long long)now);
        }
    }
}

kmdc_degraded kmdc_metrics_db_degraded(const char *conninfo, apr_time_t now, int *ago)
{
    degraded_slot *d = seg != NULL ? degraded_find(conninfo_key(conninfo), 0) : NULL;
    kmdc_degraded best = KMDC_DEGRADED_NONE;
    apr_time_t best_t = 0;
    int k;

    *ago = 0;
    for (k = 1; k < KMDC_DEGRADED_N; k++) {
        apr_time_t t = seg != NULL ? (d != NULL ? (apr_time_t)atomic_load(&d->seen[k]) : 0)
                       : local_seen[k];

        if (t != 0 && now - t < apr_time_from_sec(KMDC_DEGRADED_WINDOW) && t > best_t) {
            best = (kmdc_degraded)k;
            best_t = t;
        }
    }
    if (best != KMDC_DEGRADED_NONE) {
        *ago = now > best_t ? (int)apr_time_sec(now - best_t) : 0;
    }
    return best;
}

const char *kmdc_degraded_name(kmdc_degraded why)
{
    switch (why) {
    case KMDC_DEGRADED_PERMISSION: return "permission_denied";
    case KMDC_DEGRADED_DISK_FULL: return "disk_full";
    case KMDC_DEGRADED_RESOURCES: return "insufficient_resources";
    default: return "none";
    }
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
    long long sum = atomic_load(suspended ? &seg->suspended_unslotted
                                : &seg->waiting_unslotted);
    int i;

    for (i = 0; i < seg->nslots; i++) {
        int pid = atomic_load(&seg->slots[i].pid);

        if (pid != 0 && process_alive(pid)) {
            sum += atomic_load(suspended ? &seg->slots[i].suspended
                               : &seg->slots[i].waiting);
        }
    }
    return sum < 0 ? 0 : sum;
}

/* Gauge g now: the slots of live children. */
static long long gauge_now(kmdc_metric_gauge g)
{
    long long sum = atomic_load(&seg->gauges_unslotted[g]);
    int i;

    for (i = 0; i < seg->nslots; i++) {
        int pid = atomic_load(&seg->slots[i].pid);

        if (pid != 0 && process_alive(pid)) {
            sum += atomic_load(&seg->slots[i].gauges[g]);
        }
    }
    return sum < 0 ? 0 : sum;
}

/* The label value of endpoint index ep. */
static const char *endpoint_label(int ep)
{
    return ep < N_KNOWN ? endpoints[ep].label : ep == EP_OTHER ? "other" : "unknown";
}

int kmdc_metrics_handler(request_rec *r)
{
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
