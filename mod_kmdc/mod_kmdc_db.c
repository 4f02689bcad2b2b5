/*
 * mod_kmdc_db.c - the per-child pools of libpq connections (apr_reslist):
 * connecting (with the schema check and the pooler probe), a maintenance
 * thread that shrinks idle pools, borrowing a connection for a request and
 * giving it back (reset or thrown away when broken), the pool's state in the
 * log once per change, and the check of a KmdcDatabase string.
 *
 * Running statements is mod_kmdc_dbquery.c and mod_kmdc_dbexec.c; the
 * parameter lists, SQLSTATE helpers, column readers and the schema-version
 * query are lib/kmdc_pq.c, shared with kmdcadm.
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <errno.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>

#include "apr_atomic.h"
#include "apr_reslist.h"
#include "apr_strings.h"
#include "apr_thread_cond.h"
#include "apr_thread_mutex.h"
#include "apr_thread_proc.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"

#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_db_int.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"

/* The state last logged for a pool, so an outage is logged once per change. */
#define KMDC_STATE_UNKNOWN 0u
#define KMDC_STATE_OK 1u
#define KMDC_STATE_DOWN 2u
#define KMDC_STATE_SCHEMA_BASE 16u     /* + the version that was found */

/* Returned by the constructor when the schema version is wrong. */
#define KMDC_RV_SCHEMA APR_EINVAL

/* libpq defaults a KmdcDatabase string may override (it is expanded after
 * them): a connection attempt to a host that is gone gives up after 10 s per
 * host and goes on to the next one of a multi-host string. */
#define KMDC_DB_CONNECT_TIMEOUT "10"
#define KMDC_DB_APPNAME "mod_kmdc"

/* ------------------------------------------------------------------------ */
/* logging the pool's state                                                  */

/* libpq messages end in newlines and may span lines: copy msg into buf
 * (cap bytes) as one log line. */
const char *kmdc_db_one_line(char *buf, size_t cap, const char *msg)
{
    size_t n = 0;
    const char *c;

    for (c = msg != NULL ? msg : ""; *c != '\0' && n + 1 < cap; c++) {
        char ch = *c;

        if (ch == '\n' || ch == '\r' || ch == '\t') {
            ch = ' ';
        }
        if (ch == ' ' && (n == 0 || buf[n - 1] == ' ')) {
            continue;   /* no leading or doubled spaces */
        }
        buf[n++] = ch;
    }
    while (n > 0 && buf[n - 1] == ' ') {
        n--;
    }
    buf[n] = '\0';
    return buf;
}

/* Record the new state; returns 1 when it changed (then the caller logs). */
static int state_changed(kmdc_db_pool *pool, apr_uint32_t state)
{
    return apr_atomic_xchg32(&pool->state, state) != state;
}

static void note_ok(kmdc_db_pool *pool)
{
    apr_uint32_t old = apr_atomic_xchg32(&pool->state, KMDC_STATE_OK);

    if (old != KMDC_STATE_OK && old != KMDC_STATE_UNKNOWN) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, pool->s,
                     "kmdc: the database is available again (schema version %d)",
                     KMDC_SCHEMA_VERSION);
    }
}

void kmdc_db_note_down(kmdc_db_pool *pool, const char *why)
{
    if (state_changed(pool, KMDC_STATE_DOWN)) {
        char buf[512];

        ap_log_error(APLOG_MARK, APLOG_ERR, 0, pool->s,
                     "kmdc: the database (%s) cannot be used: %s; answering 503 "
                     "until it is back", KMDC_DIR_DATABASE,
                     kmdc_db_one_line(buf, sizeof(buf), why));
    }
}

static void note_schema(kmdc_db_pool *pool, int version)
{
    if (state_changed(pool, KMDC_STATE_SCHEMA_BASE + (apr_uint32_t)version)) {
        ap_log_error(APLOG_MARK, APLOG_ERR, 0, pool->s,
                     "kmdc: schema version %d found, this module needs %d: %s",
                     version, KMDC_SCHEMA_VERSION,
                     version < KMDC_SCHEMA_VERSION ? "run kmdcadm migrate"
                     : "install the mod_kmdc that matches the database");
    }
}

/* ------------------------------------------------------------------------ */
/* schema                                                                    */

/* The schema version of pg (kmdc_db_schema_version of kmdc_pq.c):
 * KMDC_DB_OK (version set), KMDC_DB_ERROR (the statement failed) or
 * KMDC_DB_UNAVAILABLE (the connection is broken).  Does not log. */
static kmdc_db_rc schema_version(PGconn *pg, int *version)
{
    switch (kmdc_db_schema_version(pg, version, NULL)) {
    case KMDC_PQ_OK:
        return KMDC_DB_OK;
    case KMDC_PQ_BROKEN:
        return KMDC_DB_UNAVAILABLE;
    default:
        return KMDC_DB_ERROR;
    }
}

/* ------------------------------------------------------------------------ */
/* the pool                                                                  */

/*
 * A connection pooler (pgbouncer) answers the client with a backend key of its
 * own: the process id libpq was given is not the server's.  Seen once, the
 * pool keeps to what every pooling mode allows (no named prepared statement,
 * no session state) and says so once.  A failed probe proves nothing.
 */
static void note_pooler(kmdc_db_pool *pool, PGconn *pg)
{
    PGresult *res;
    int behind = 0;

    if (apr_atomic_read32(&pool->pooler)) {
        return;
    }
    res = PQexecParams(pg, "SELECT pg_backend_pid()", 0, NULL, NULL, NULL, NULL, 0);
    if (res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1
        && !PQgetisnull(res, 0, 0)) {
        behind = atoi(PQgetvalue(res, 0, 0)) != PQbackendPID(pg);
    }
    PQclear(res);
    if (behind && apr_atomic_xchg32(&pool->pooler, 1) == 0) {
        ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, pool->s,
                     "kmdc: %s reaches PostgreSQL through a connection pooler; "
                     "prepared statements and session state are not used%s",
                     KMDC_DIR_DATABASE, pool->txn_pooling ? ""
                     : " (with transaction pooling, set " KMDC_DIR_DATABASE_POOLING
                       " transaction and " KMDC_DIR_LISTEN_DATABASE ")");
    }
}

/*
 * A session of our own (not through a pooler): statements are prepared once
 * on it (mod_kmdc_dbexec.c) and run on their generic plan, so that each is
 * planned once too (kmdc_db_session_generic_plans, set again after PQreset,
 * which starts a new session).
 */
static int own_session(kmdc_db_pool *pool)
{
    return !pool->txn_pooling && !apr_atomic_read32(&pool->pooler);
}

static apr_status_t db_construct(void **resource, void *params, apr_pool_t *p)
{
    kmdc_db_pool *pool = params;
    PGconn *pg = NULL;
    apr_status_t rv = APR_EGENERAL;
    int version = 0;
    kmdc_db_rc rc;

    (void)p;
    *resource = NULL;
    {
        const char *const keys[] = { "connect_timeout", "fallback_application_name",
                                     "dbname", NULL };
        const char *const values[] = { KMDC_DB_CONNECT_TIMEOUT, KMDC_DB_APPNAME,
                                       pool->conninfo, NULL };

        pg = PQconnectdbParams(keys, values, 1);
    }
    if (pg == NULL) {
        kmdc_db_note_down(pool, "out of memory");
        rv = APR_ENOMEM;
        goto out;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        kmdc_db_note_down(pool, PQerrorMessage(pg));
        goto out;
    }
    rc = schema_version(pg, &version);
    if (rc != KMDC_DB_OK) {
        kmdc_db_note_down(pool, rc == KMDC_DB_UNAVAILABLE
                  ? PQerrorMessage(pg)
                  : "the schema version query failed (no permission on "
                    "schema_migrations?)");
        goto out;
    }
    if (version != KMDC_SCHEMA_VERSION) {
        note_schema(pool, version);
        rv = KMDC_RV_SCHEMA;
        goto out;
    }
    note_pooler(pool, pg);
    /* named prepared statements only on a session of our own: not through
     * transaction pooling, nor once a pooler showed itself */
    if (own_session(pool)) {
        if (!kmdc_db_stmt_register(pg)) {
            kmdc_db_note_down(pool, "out of memory");
            rv = APR_ENOMEM;
            goto out;
        }
        if (kmdc_db_session_generic_plans(pg) != KMDC_PQ_OK) {
            kmdc_db_note_down(pool, PQerrorMessage(pg));
            goto out;
        }
    }
    note_ok(pool);
    *resource = pg;
    pg = NULL;
    rv = APR_SUCCESS;

out:
    if (pg != NULL) {
        PQfinish(pg);
    }
    return rv;
}

static apr_status_t db_destruct(void *resource, void *params, apr_pool_t *p)
{
    (void)params;
    (void)p;
    if (resource != NULL) {
        PQfinish(resource);
    }
    return APR_SUCCESS;
}

/* ------------------------------------------------------------------------ */
/* shrinking the pools                                                       */

/*
 * apr_reslist closes the connections above the soft maximum (KmdcDbPoolMin)
 * idle for KmdcDbPoolIdle when one is given back; after a burst followed by
 * silence nothing is given back, so a thread per child calls
 * apr_reslist_maintain every quarter of the shortest idle time (at least
 * every second, at most every minute).
 */
static apr_thread_t *maint_thread;
static apr_thread_mutex_t *maint_mu;
static apr_thread_cond_t *maint_cond;
static int maint_stop;                       /* under maint_mu */
static apr_array_header_t *maint_pools;      /* kmdc_db_pool * */
static apr_interval_time_t maint_every;

static void *APR_THREAD_FUNC maint_main(apr_thread_t *thread, void *data)
{
    (void)data;
    apr_thread_mutex_lock(maint_mu);
    while (!maint_stop) {
        int i;

        (void)apr_thread_cond_timedwait(maint_cond, maint_mu, maint_every);
        if (maint_stop) {
            break;
        }
        for (i = 0; i < maint_pools->nelts; i++) {
            kmdc_db_pool *pool = APR_ARRAY_IDX(maint_pools, i, kmdc_db_pool *);

            if (pool->list != NULL) {
                (void)apr_reslist_maintain(pool->list);
            }
        }
    }
    apr_thread_mutex_unlock(maint_mu);
    apr_thread_exit(thread, APR_SUCCESS);
    return NULL;
}

/* pre-cleanup of pchild: the thread goes before the pools it maintains */
static apr_status_t maint_cleanup(void *data)
{
    apr_status_t trv;

    (void)data;
    if (maint_thread != NULL) {
        apr_thread_mutex_lock(maint_mu);
        maint_stop = 1;
        apr_thread_cond_signal(maint_cond);
        apr_thread_mutex_unlock(maint_mu);
        (void)apr_thread_join(&trv, maint_thread);
        maint_thread = NULL;
    }
    return APR_SUCCESS;
}

static void pools_maintain_start(apr_pool_t *pchild, server_rec *s,
                                 apr_array_header_t *pools)
{
    apr_int64_t shortest = KMDC_MAX_DB_POOL_IDLE;
    sigset_t all, old;
    apr_status_t rv;
    int i;

    maint_thread = NULL;
    maint_stop = 0;
    maint_pools = pools;
    if (pools->nelts == 0) {
        return;
    }
    for (i = 0; i < pools->nelts; i++) {
        kmdc_db_pool *pool = APR_ARRAY_IDX(pools, i, kmdc_db_pool *);

        if (pool->idle < shortest) {
            shortest = pool->idle;
        }
    }
    maint_every = apr_time_from_sec(shortest) / 4;
    if (maint_every < apr_time_from_sec(1)) {
        maint_every = apr_time_from_sec(1);
    }
    if (maint_every > apr_time_from_sec(60)) {
        maint_every = apr_time_from_sec(60);
    }
    rv = apr_thread_mutex_create(&maint_mu, APR_THREAD_MUTEX_DEFAULT, pchild);
    if (rv == APR_SUCCESS) {
        rv = apr_thread_cond_create(&maint_cond, pchild);
    }
    if (rv == APR_SUCCESS) {
        apr_pool_pre_cleanup_register(pchild, NULL, maint_cleanup);
        /* the thread takes no signal meant for the MPM's threads */
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        rv = apr_thread_create(&maint_thread, NULL, maint_main, NULL, pchild);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (rv != APR_SUCCESS) {
        maint_thread = NULL;
        ap_log_error(APLOG_MARK, APLOG_WARNING, rv, s,
                     "kmdc: cannot start the database pool maintenance thread; "
                     "idle connections close only when others are given back");
    }
}

void kmdc_db_child_init(apr_pool_t *pchild, server_rec *s)
{
    apr_array_header_t *made = apr_array_make(pchild, 2, sizeof(kmdc_db_pool *));
    server_rec *vs;
    int i;

    for (vs = s; vs != NULL; vs = vs->next) {
        kmdc_srv_conf *sc = kmdc_conf_get(vs);
        kmdc_db_pool *pool = NULL;
        apr_status_t rv;

        sc->db_pool = NULL;
        if (!sc->handler_used || sc->conninfo == NULL) {
            continue;
        }
        for (i = 0; i < made->nelts; i++) {
            kmdc_db_pool *o = APR_ARRAY_IDX(made, i, kmdc_db_pool *);
            if (strcmp(o->conninfo, sc->conninfo) == 0 && o->min == sc->db_pool_min
                && o->max == sc->db_pool_max && o->idle == sc->db_pool_idle
                && o->txn_pooling == (sc->db_pooling == KMDC_POOLING_TRANSACTION)) {
                pool = o;
                break;
            }
        }
        if (pool == NULL) {
            pool = apr_pcalloc(pchild, sizeof(*pool));
            pool->conninfo = sc->conninfo;
            pool->min = sc->db_pool_min;
            pool->max = sc->db_pool_max;
            pool->idle = sc->db_pool_idle;
            pool->s = vs;
            pool->state = KMDC_STATE_UNKNOWN;
            pool->txn_pooling = sc->db_pooling == KMDC_POOLING_TRANSACTION;
            pool->pooler = 0;
            /* soft maximum = the minimum: connections above it close after
             * KmdcDbPoolIdle without use (when a connection is given back,
             * and by pool_maintain while nothing happens) */
            rv = apr_reslist_create(&pool->list, pool->min, pool->min, pool->max,
                                    apr_time_from_sec(pool->idle), db_construct,
                                    db_destruct, pool, pchild);
            if (rv != APR_SUCCESS && pool->min > 0) {
                /* the database is not there yet: connect on demand */
                rv = apr_reslist_create(&pool->list, 0, pool->min, pool->max,
                                        apr_time_from_sec(pool->idle), db_construct,
                                        db_destruct, pool, pchild);
            }
            if (rv != APR_SUCCESS) {
                ap_log_error(APLOG_MARK, APLOG_ERR, rv, vs,
                             "kmdc: cannot create the database pool");
                pool->list = NULL;
            }
            else {
                apr_reslist_timeout_set(pool->list, KMDC_DB_ACQUIRE_TIMEOUT);
            }
            APR_ARRAY_PUSH(made, kmdc_db_pool *) = pool;
        }
        sc->db_pool = pool;
    }
    pools_maintain_start(pchild, s, made);
}

/* An idle connection has nothing to read; when it has, the server most
 * likely closed it (restart, idle timeout): let libpq find out. */
static int idle_connection_alive(PGconn *pg)
{
    struct pollfd pfd;
    int n;

    if (PQstatus(pg) != CONNECTION_OK) {
        return 0;
    }
    pfd.fd = PQsocket(pg);
    pfd.events = POLLIN;
    pfd.revents = 0;
    if (pfd.fd < 0) {
        return 0;
    }
    n = poll(&pfd, 1, 0);
    if (n == 0) {
        return 1;
    }
    if (n < 0 || PQconsumeInput(pg) == 0) {
        return 0;
    }
    /*
     * An idle connection received something.  A server that closes it
     * (shutdown, restart, pg_terminate_backend) first sends a FATAL error and
     * only then the end of the stream, so one read can leave it looking fine:
     * ask it, once, rather than trust it.
     */
    if (PQstatus(pg) != CONNECTION_OK) {
        return 0;
    }
    {
        PGresult *res = PQexec(pg, "SELECT 1");
        int ok = res != NULL && PQresultStatus(res) == PGRES_TUPLES_OK;

        PQclear(res);
        return ok && PQstatus(pg) == CONNECTION_OK;
    }
}

static apr_status_t db_release_cleanup(void *data)
{
    kmdc_db *db = data;
    PGconn *pg = db->pg;

    if (pg == NULL || db->pool == NULL || db->pool->list == NULL) {
        return APR_SUCCESS;
    }
    db->pg = NULL;
    kmdc_metrics_gauge(KMDC_GAUGE_DB_IN_USE, -1);
    if (!db->broken && PQpipelineStatus(pg) != PQ_PIPELINE_OFF) {
        /* given back with a batch's answers pending (an abandoned
         * kmdc_db_batch_send): its state is unknown, never pool it */
        db->broken = 1;
    }
    if (!db->broken) {
        PGTransactionStatusType ts = PQtransactionStatus(pg);

        if (ts == PQTRANS_INTRANS || ts == PQTRANS_INERROR) {
            PGresult *res = PQexecParams(pg, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0);

            if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
                db->broken = 1;
            }
            PQclear(res);
        }
        else if (ts != PQTRANS_IDLE) {
            db->broken = 1;
        }
    }
    if (db->broken || PQstatus(pg) != CONNECTION_OK) {
        apr_reslist_invalidate(db->pool->list, pg);
    }
    else {
        apr_reslist_release(db->pool->list, pg);
    }
    return APR_SUCCESS;
}

kmdc_db_rc kmdc_db_acquire(request_rec *r, kmdc_db **out)
{
    const kmdc_srv_conf *sc = kmdc_conf_get(r->server);
    kmdc_db_pool *pool = sc != NULL ? sc->db_pool : NULL;
    kmdc_db *db = NULL;
    PGconn *pg = NULL;
    void *res = NULL;
    apr_status_t rv;
    kmdc_db_rc rc = KMDC_DB_UNAVAILABLE;
    int version = 0;
    int attempt;

    *out = NULL;
    if (pool == NULL || pool->list == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "kmdc: no database pool for this server (is %s set?)",
                      KMDC_DIR_DATABASE);
        goto out;
    }
    for (attempt = 0; attempt < 2 && pg == NULL; attempt++) {
        kmdc_metrics_gauge(KMDC_GAUGE_DB_WAITING, 1);
        rv = apr_reslist_acquire(pool->list, &res);
        kmdc_metrics_gauge(KMDC_GAUGE_DB_WAITING, -1);
        if (rv == KMDC_RV_SCHEMA) {
            rc = KMDC_DB_SCHEMA;
            goto out;
        }
        if (APR_STATUS_IS_TIMEUP(rv) || APR_STATUS_IS_EAGAIN(rv)) {
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                          "kmdc: all %d database connections of this child are "
                          "busy (%s)", pool->max, KMDC_DIR_DB_POOL_MAX);
            goto out;
        }
        if (rv != APR_SUCCESS) {
            goto out;    /* logged by the constructor */
        }
        pg = res;
        if (idle_connection_alive(pg)) {
            break;
        }
        /* broken while idle: try to reconnect it in place, check it again */
        PQreset(pg);
        if (PQstatus(pg) == CONNECTION_OK
            && schema_version(pg, &version) == KMDC_DB_OK) {
            if (version != KMDC_SCHEMA_VERSION) {
                note_schema(pool, version);
                apr_reslist_invalidate(pool->list, pg);
                rc = KMDC_DB_SCHEMA;
                goto out;
            }
            if (!own_session(pool)
                || kmdc_db_session_generic_plans(pg) == KMDC_PQ_OK) {
                break;
            }
            kmdc_db_note_down(pool, PQerrorMessage(pg));
        }
        apr_reslist_invalidate(pool->list, pg);
        pg = NULL;
    }
    if (pg == NULL) {
        goto out;
    }
    db = apr_pcalloc(r->pool, sizeof(*db));
    db->pg = pg;
    db->r = r;
    db->pool = pool;
    kmdc_metrics_gauge(KMDC_GAUGE_DB_IN_USE, 1);
    apr_pool_cleanup_register(r->pool, db, db_release_cleanup,
                              apr_pool_cleanup_null);
    *out = db;
    rc = KMDC_DB_OK;

out:
    return rc;
}

void kmdc_db_release(kmdc_db *db)
{
    if (db != NULL && db->r != NULL) {
        apr_pool_cleanup_run(db->r->pool, db, db_release_cleanup);
    }
}

void kmdc_db_invalidate(kmdc_db *db)
{
    if (db != NULL) {
        db->broken = 1;
        kmdc_db_release(db);
    }
}

kmdc_db_rc kmdc_db_check_schema(kmdc_db *db)
{
    int version = 0;
    kmdc_db_rc rc;

    if (db->pg == NULL) {
        return KMDC_DB_UNAVAILABLE;
    }
    rc = schema_version(db->pg, &version);
    if (rc == KMDC_DB_UNAVAILABLE || PQstatus(db->pg) != CONNECTION_OK) {
        db->broken = 1;
        kmdc_db_note_down(db->pool, PQerrorMessage(db->pg));
        return KMDC_DB_UNAVAILABLE;
    }
    if (rc != KMDC_DB_OK) {
        return rc;
    }
    if (version != KMDC_SCHEMA_VERSION) {
        note_schema(db->pool, version);
        return KMDC_DB_SCHEMA;
    }
    note_ok(db->pool);
    return KMDC_DB_OK;
}

int kmdc_db_answer_unavailable(request_rec *r, kmdc_db_rc rc)
{
    apr_table_setn(r->headers_out, "Retry-After", "5");
    if (rc == KMDC_DB_SCHEMA) {
        return kmdc_http_error(r, HTTP_SERVICE_UNAVAILABLE, "schema_mismatch",
                               "the database is not at schema version %d, "
                               "the one this server needs; see the server log", KMDC_SCHEMA_VERSION);
    }
    return kmdc_http_error(r, HTTP_SERVICE_UNAVAILABLE, "unavailable",
                           "the database is unavailable; try again later");
}

const char *kmdc_db_conninfo_problem(apr_pool_t *p, const char *directive,
                                     const char *conninfo)
{
    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(conninfo, &err);
    const char *hosts = NULL, *hostaddrs = NULL, *tsa = NULL;
    const char *problem = NULL;
    char buf[256];

    if (opts == NULL) {
        problem = apr_psprintf(p, "%s: not a libpq connection string or URI: %s",
                               directive, err != NULL
                               ? kmdc_db_one_line(buf, sizeof(buf), err) : "out of memory");
        PQfreemem(err);
        return problem;
    }
    for (const PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL) {
            continue;
        }
        if (strcmp(o->keyword, "host") == 0) {
            hosts = o->val;
        }
        else if (strcmp(o->keyword, "hostaddr") == 0) {
            hostaddrs = o->val;
        }
        else if (strcmp(o->keyword, "target_session_attrs") == 0) {
            tsa = o->val;
        }
    }
    if (((hosts != NULL && strchr(hosts, ',') != NULL)
         || (hostaddrs != NULL && strchr(hostaddrs, ',') != NULL))
        && (tsa == NULL || (strcmp(tsa, "read-write") != 0
                            && strcmp(tsa, "primary") != 0))) {
        problem = apr_psprintf(p, "%s names several hosts but not "
                               "target_session_attrs=read-write: connections "
                               "could land on a read-only standby; add "
                               "target_session_attrs=read-write", directive);
    }
    PQconninfoFree(opts);
    return problem;
}
