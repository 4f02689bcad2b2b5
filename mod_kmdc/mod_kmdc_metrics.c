/*
 * mod_kmdc_metrics.c - counters in anonymous shared memory, summed over all
 * children by construction (see mod_kmdc_metrics.h for the design): the
 * segment made at post_config, each child's gauge slot, the counting
 * functions the handlers call, and the degraded state of each database.
 * The Prometheus text page is mod_kmdc_metrics_page.c; the layout of the
 * segment, which both read, is mod_kmdc_metrics_int.h.
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
#include "mod_kmdc_metrics_int.h"

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

const endpoint kmdc_metrics_endpoints[N_KNOWN] = {
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

/* The upper bounds of the request duration buckets, in seconds (+Inf is
 * the count): from a cached answer to an upload of a gigabyte; a long-poll
 * waits up to 60 s. */
static const double duration_bounds[N_BUCKETS] = {
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300
};
_Static_assert(sizeof(duration_bounds) / sizeof(duration_bounds[0]) == N_BUCKETS,
               "one bound per bucket");

/* This process's view: the segment (inherited from the parent) and, in a
 * child, its gauge slot. */
metrics_seg *kmdc_metrics_seg;
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
    kmdc_metrics_seg = NULL;
    if (apr_pool_userdata_get(&data, KMDC_METRICS_KEY, pp) == APR_SUCCESS
        && data != NULL) {
        m = apr_shm_baseaddr_get(data);
        if (seg_usable(m) && apr_shm_size_get(data) >= m->size) {
            kmdc_metrics_seg = m;
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
    kmdc_metrics_seg = m;
    return OK;
}

/* 1 when a process with this pid exists (EPERM: it does, not ours). */
int kmdc_metrics_process_alive(int pid)
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
    if (kmdc_metrics_seg == NULL) {
        return;
    }
    for (i = 0; i < kmdc_metrics_seg->nslots && my_slot == NULL; i++) {
        gauge_slot *slot = &kmdc_metrics_seg->slots[i];
        int owner = atomic_load(&slot->pid);

        if ((owner == 0 || (owner != me && !kmdc_metrics_process_alive(owner)))
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
                     "long-polls are counted without one", kmdc_metrics_seg->nslots);
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
        const endpoint *e = &kmdc_metrics_endpoints[i];

        if (e->nseg == nseg && e->method == method && strcmp(e->name, name) == 0) {
            label = e->label;
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

    if (kmdc_metrics_seg == NULL) {
        return;
    }
    if (label != NULL) {
        ep = EP_OTHER;
        for (i = 0; i < N_KNOWN; i++) {
            if (strcmp(kmdc_metrics_endpoints[i].label, label) == 0) {
                ep = i;
                break;
            }
        }
    }
    add(&kmdc_metrics_seg->requests[ep], 1);
    if (status >= STATUS_MIN && status < STATUS_MIN + N_STATUS) {
        add(&kmdc_metrics_seg->by_status[ep][status - STATUS_MIN], 1);
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
                add(&kmdc_metrics_seg->duration_bucket[ep][i], 1);
            }
        }
        add(&kmdc_metrics_seg->duration_count[ep], 1);
        add(&kmdc_metrics_seg->duration_usec[ep], (uint64_t)took);
    }
    if (status == HTTP_SERVICE_UNAVAILABLE) {
        add(&kmdc_metrics_seg->db_unavailable, 1);
    }
}

void kmdc_metrics_send(int status, int from_receipt, int spent, uint64_t bytes,
                       size_t deliveries)
{
    kmdc_metric_send result;

    if (kmdc_metrics_seg == NULL) {
        return;
    }
    if (from_receipt) {
        result = KMDC_METRIC_SEND_RETRY;
    }
    else if (status == HTTP_CREATED) {
        result = KMDC_METRIC_SEND_ACCEPTED;
        add(&kmdc_metrics_seg->send_bytes, bytes);
        add(&kmdc_metrics_seg->deliveries, (uint64_t)deliveries);
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
    add(&kmdc_metrics_seg->send[result], 1);
}

void kmdc_metrics_auth_failure(void)
{
    if (kmdc_metrics_seg != NULL) {
        add(&kmdc_metrics_seg->auth_failures, 1);
    }
}

void kmdc_metrics_activation(kmdc_metric_activation result)
{
    if (kmdc_metrics_seg != NULL && (int)result >= 0 && result < KMDC_METRIC_ACT_N) {
        add(&kmdc_metrics_seg->activations[result], 1);
    }
}

void kmdc_metrics_db_round_trip(void)
{
    if (kmdc_metrics_seg != NULL) {
        add(&kmdc_metrics_seg->db_round_trips, 1);
    }
}

void kmdc_metrics_longpoll(int delta)
{
    if (kmdc_metrics_seg == NULL) {
        return;
    }
    atomic_fetch_add_explicit(my_slot != NULL ? &my_slot->waiting
                              : &kmdc_metrics_seg->waiting_unslotted,
                              (long long)delta, memory_order_relaxed);
}

void kmdc_metrics_longpoll_suspended(int delta)
{
    if (kmdc_metrics_seg == NULL) {
        return;
    }
    atomic_fetch_add_explicit(my_slot != NULL ? &my_slot->suspended
                              : &kmdc_metrics_seg->suspended_unslotted,
                              (long long)delta, memory_order_relaxed);
}

void kmdc_metrics_gauge(kmdc_metric_gauge g, int delta)
{
    if (kmdc_metrics_seg == NULL || (int)g < 0 || g >= KMDC_GAUGE_N) {
        return;
    }
    atomic_fetch_add_explicit(my_slot != NULL ? &my_slot->gauges[g]
                              : &kmdc_metrics_seg->gauges_unslotted[g],
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
        degraded_slot *d =
            &kmdc_metrics_seg->degraded[(key + (uint64_t)i) % N_DEGRADED_SLOTS];
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
    if (kmdc_metrics_seg == NULL) {
        return;
    }
    add(&kmdc_metrics_seg->db_errors[class_index(sqlstate)], 1);
    if (why != KMDC_DEGRADED_NONE) {
        degraded_slot *d = degraded_find(conninfo_key(conninfo), 1);

        if (d != NULL) {
            atomic_store(&d->seen[why], (long long)now);
        }
    }
}

kmdc_degraded kmdc_metrics_db_degraded(const char *conninfo, apr_time_t now, int *ago)
{
    degraded_slot *d = kmdc_metrics_seg != NULL
                       ? degraded_find(conninfo_key(conninfo), 0) : NULL;
    kmdc_degraded best = KMDC_DEGRADED_NONE;
    apr_time_t best_t = 0;
    int k;

    *ago = 0;
    for (k = 1; k < KMDC_DEGRADED_N; k++) {
        apr_time_t t = kmdc_metrics_seg == NULL ? local_seen[k]
                       : d != NULL ? (apr_time_t)atomic_load(&d->seen[k]) : 0;

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
