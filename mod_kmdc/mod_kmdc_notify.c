/*
 * mod_kmdc_notify.c - one LISTEN connection and thread per child and
 * database, and the waiters of mailbox long-polls (see mod_kmdc_notify.h).
 *
 * Locking: the waiter list and each waiter's flag are under the listener's
 * mutex; each waiter sleeps on its own condition variable with that mutex, so
 * a NOTIFY wakes exactly the waiters of its serial.  The PGconn belongs to the
 * thread alone.  Stopping takes no lock (prefork runs child_stopping on its
 * exit path, which may be a signal handler): an atomic flag and one byte down
 * a pipe; the thread then wakes every waiter.
 *
 * Suspended long-polls (event MPM) are described above kmdc_notify_suspend:
 * the waiter then has no thread; the LISTEN thread and a clock thread ask
 * the MPM for callbacks that resume the request.
 *
 * Nothing is lost while the listener is down: when LISTEN is active again on
 * a fresh connection every waiter is woken and reads its mailbox, and at its
 * deadline a waiter always reads once more (which also catches what sends no
 * NOTIFY: an expiry, an administrator's purge).
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdlib.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "apr_strings.h"
#include "apr_tables.h"
#include "apr_thread_cond.h"
#include "apr_thread_mutex.h"
#include "apr_thread_proc.h"
#include "ap_mmn.h"
#include "ap_mpm.h"
#include "httpd.h"
#include "http_connection.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "mpm_common.h"
#include "util_filter.h"

#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_config.h"
#include "mod_kmdc_metrics.h"
#include "mod_kmdc_notify.h"

/* The channel POST /send and DELETE /mailbox/... notify (payload: serial). */
#define CHANNEL "kmdc_mailbox"
/* with the server's process id: a connection pooler in between shows as a
 * backend key of its own (LISTEN then holds only under session pooling) */
#define LISTEN_SQL "LISTEN " CHANNEL "; SELECT pg_backend_pid()"
#define HEARTBEAT_SQL "SELECT 1"
#define LISTENER_APPNAME "mod_kmdc listener"

#define BACKOFF_MIN_MS 250            /* first pause after a failure */
#define BACKOFF_MAX_MS 10000          /* longest pause between attempts */
#define CONNECT_TIMEOUT_MS 10000      /* a connection attempt gives up */
#define HEARTBEAT_MS 30000            /* silence before a heartbeat query, and
                                       * the time it has to answer */

#if APR_HAS_THREADS

typedef struct listener listener;

/*
 * A waiter is malloc'd, not taken from the request's pool: a suspended
 * waiter has timed callbacks of the event MPM pending, which cannot be
 * cancelled and may run after the request is gone.  refs counts the request
 * (dropped by waiter_cleanup when r->pool goes) and every callback scheduled;
 * the last one frees it.  Every field below l is under home->mu.
 */
struct kmdc_notify_waiter {
    listener *home;                   /* the listener, for its mutex */
    listener *l;                      /* NULL once unlinked */
    apr_pool_t *pool;                 /* the request's, holding the cleanup */
    uint64_t serial;                  /* the mailbox watched */
    apr_thread_cond_t *cond;          /* blocking: signalled when woken */
    kmdc_notify_waiter *prev, *next;  /* the listener's list */
    int woken;                        /* a NOTIFY or LISTEN came back */
    int refs;                         /* see above */
    /* suspended requests (event MPM) only */
    int async;                        /* the handler returned SUSPENDED */
    int suspended;                    /* the MPM let go of the connection */
    int scheduled;                    /* a wake callback is pending */
    apr_time_t deadline;              /* when it answers 304 at the latest */
    int expired;                      /* the deadline passed (clock thread) */
    int busy;                         /* a callback is working on the request */
    int finished;                     /* the request was answered */
    kmdc_notify_resume_fn *resume;    /* reads and answers, or not */
    void *resume_arg;
};

struct listener {
    const char *conninfo;             /* KmdcDatabase */
    server_rec *s;                    /* for logging */
    apr_thread_mutex_t *mu;           /* guards the fields below */
    kmdc_notify_waiter *waiters;      /* linked waiters */
    atomic_int stopping;              /* the child is going away (no lock) */
    int stop_fd[2];                   /* written once to stop the thread */
    apr_thread_t *thread;             /* NULL when it could not start */
    int logged_down;                  /* thread only: an outage was logged */
    int logged_pooler;                /* thread only: a pooler was reported */
    unsigned rotate;                  /* thread only: attempts that timed out */
};

/* This child's listeners (listener *), made in child_init. */
static apr_array_header_t *listeners;

/* The event MPM, asynchronous: suspension possible (child_init). */
static int mpm_suspends;

/* The clock thread (see clock_main) and what it guards. */
#define CLOCK_TICK_MS 50
typedef struct conn_release conn_release;
struct conn_release {
    apr_pool_t *pool;                 /* a closed connection's pool */
    apr_time_t due;                   /* when to destroy it */
    conn_release *next;
};
static apr_thread_t *clock_thread;
static apr_thread_mutex_t *clock_mu;
static apr_thread_cond_t *clock_cond;
static int clock_stop;                /* under clock_mu */
static conn_release *releases;        /* under clock_mu */

#if AP_MODULE_MAGIC_AT_LEAST(20120211, 33)
static void notify_suspend_connection(conn_rec *c, request_rec *r);
#endif
static void clock_start(apr_pool_t *pchild, server_rec *s);
/* The LISTEN connection's string: KmdcListenDatabase, else KmdcDatabase. */
static const char *listen_conninfo(const kmdc_srv_conf *sc)
{
    return sc->listen_conninfo != NULL ? sc->listen_conninfo : sc->conninfo;
}

/* ------------------------------------------------------------------------ */
/* the shared state                                                          */

static int is_stopping(listener *l)
{
    return atomic_load(&l->stopping);
}

static void schedule_locked(kmdc_notify_waiter *w);

/* Wake one waiter; mu held.  A blocked thread is signalled; a suspended
 * request gets a callback of the MPM (see schedule_locked). */
static void wake_locked(kmdc_notify_waiter *w)
{
    w->woken = 1;
    if (w->async) {
        schedule_locked(w);
    }
    else if (w->cond != NULL) {
        apr_thread_cond_signal(w->cond);
    }
}

/* Wake every waiter (LISTEN came back, or the child stops); mu held. */
static void wake_all_locked(listener *l)
{
    kmdc_notify_waiter *w;

    for (w = l->waiters; w != NULL; w = w->next) {
        wake_locked(w);
    }
}

/* LISTEN is active on a fresh connection: a NOTIFY may have been missed
 * while there was none, so every waiter reads its mailbox again. */
static void listening_again(listener *l)
{
    apr_thread_mutex_lock(l->mu);
    wake_all_locked(l);
    apr_thread_mutex_unlock(l->mu);
}

static void wake_serial(listener *l, uint64_t serial)
{
    kmdc_notify_waiter *w;

    apr_thread_mutex_lock(l->mu);
    for (w = l->waiters; w != NULL; w = w->next) {
        if (w->serial == serial) {
            wake_locked(w);
        }
    }
    apr_thread_mutex_unlock(l->mu);
}

/*
 * Ask the thread to finish; it wakes every waiter on its way out.
 * Idempotent, and async-signal-safe (a lock-free atomic and write()).
 */
static void request_stop(listener *l)
{
    static const char byte = 'x';

    if (!atomic_exchange(&l->stopping, 1) && l->stop_fd[1] >= 0) {
        /* the pipe is empty and non-blocking: one byte always fits */
        ssize_t n = write(l->stop_fd[1], &byte, 1);

        (void)n;
    }
}

/* The child is stopping: every waiter answers now. */
static void wake_all(listener *l)
{
    apr_thread_mutex_lock(l->mu);
    wake_all_locked(l);
    apr_thread_mutex_unlock(l->mu);
}

/* ------------------------------------------------------------------------ */
/* the thread                                                                */

enum { WAIT_READY, WAIT_TIMEOUT, WAIT_STOP };

/* Wait up to ms (-1: no limit) for events on fd (fd < 0: none) or the stop
 * pipe.  A poll() failure other than EINTR counts as ready, so that libpq
 * finds out what is wrong with the socket. */
static int wait_fd(listener *l, int fd, short events, int ms)
{
    struct pollfd pfd[2];
    int n;

    pfd[0].fd = l->stop_fd[0];
    pfd[0].events = POLLIN;
    pfd[0].revents = 0;
    pfd[1].fd = fd;
    pfd[1].events = events;
    pfd[1].revents = 0;
    do {
        n = poll(pfd, fd >= 0 ? 2 : 1, ms);
    } while (n < 0 && errno == EINTR);
    if (pfd[0].revents != 0 || is_stopping(l)) {
        return WAIT_STOP;
    }
    if (n == 0) {
        return WAIT_TIMEOUT;
    }
    return WAIT_READY;
}

/* Log a failure of the listening connection once per outage. */
static void note_failure(listener *l, const char *what, PGconn *pg)
{
    char msg[256];
    const char *e = pg != NULL ? PQerrorMessage(pg) : "out of memory";
    size_t i, n = 0;

    if (l->logged_down) {
        return;
    }
    /* libpq's message may span lines: keep it on one */
    for (i = 0; e[i] != '\0' && n + 1 < sizeof(msg); i++) {
        msg[n++] = (e[i] == '\n' || e[i] == '\r' || e[i] == '\t') ? ' ' : e[i];
    }
    while (n > 0 && msg[n - 1] == ' ') {
        n--;
    }
    msg[n] = '\0';
    l->logged_down = 1;
    ap_log_error(APLOG_MARK, APLOG_WARNING, 0, l->s,
                 "kmdc: the long-poll listener (%s) %s: %s; long-polls fall back "
                 "to reading at their deadline until it reconnects",
                 KMDC_DIR_DATABASE, what, n > 0 ? msg : "no detail");
}

/* The answer to LISTEN_SQL's pg_backend_pid(): a pooler in between is said
 * once per child (LISTEN through pgbouncer holds only in session pooling). */
static void note_pooler(listener *l, PGconn *pg, const PGresult *res)
{
    if (l->logged_pooler || PQntuples(res) != 1 || PQgetisnull(res, 0, 0)
        || atoi(PQgetvalue(res, 0, 0)) == PQbackendPID(pg)) {
        return;
    }
    l->logged_pooler = 1;
    ap_log_error(APLOG_MARK, APLOG_WARNING, 0, l->s,
                 "kmdc: the long-poll listener reaches PostgreSQL through a "
                 "connection pooler: its LISTEN holds only with session pooling "
                 "(with transaction pooling long-polls wake at their deadline "
                 "only); point %s at PostgreSQL itself",
                 KMDC_DIR_LISTEN_DATABASE);
}

/* The comma-separated list `list` started at its item k, which exists
 * (malloc; NULL when out of memory). */
static char *rotate_list(const char *list, size_t k)
{
    size_t len = strlen(list);
    char *out = malloc(len + 2);
    const char *c = list;
    size_t i;

    if (out == NULL) {
        return NULL;
    }
    for (i = 0; i < k; i++) {            /* skip to item k */
        c = strchr(c, ',') + 1;
    }
    /* items k..n-1, then 0..k-1 */
    memcpy(out, c, len - (size_t)(c - list));
    out[len - (size_t)(c - list)] = '\0';
    if (k > 0) {
        strcat(out, ",");
        strncat(out, list, (size_t)(c - list) - 1);
    }
    return out;
}

static size_t list_items(const char *v)
{
    size_t n = 1;

    for (; *v != '\0'; v++) {
        n += *v == ',';
    }
    return n;
}

/*
 * Start a connection to l->conninfo.  libpq applies no connect_timeout to a
 * non-blocking connection: a first host that drops packets (a machine lost)
 * would hold every attempt until CONNECT_TIMEOUT_MS and the next host would
 * never be tried.  So after each attempt that timed out, the host list (with
 * hostaddr and port lists of the same length) starts one host further on.
 */
static PGconn *listener_start_conn(listener *l)
{
    PQconninfoOption *opts = PQconninfoParse(l->conninfo, NULL);
    const char **keys = NULL, **values = NULL;
    char *rotated[3] = { NULL, NULL, NULL };
    PGconn *pg = NULL;
    size_t n = 0, hosts = 0, i, k = 0;

    if (opts == NULL) {
        return NULL;                     /* checked at start-up: memory */
    }
    for (const PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        n++;
        if (o->val != NULL && (strcmp(o->keyword, "host") == 0
                               || strcmp(o->keyword, "hostaddr") == 0)) {
            hosts = list_items(o->val);
        }
    }
    keys = malloc((n + 2) * sizeof(*keys));
    values = malloc((n + 2) * sizeof(*values));
    if (keys == NULL || values == NULL) {
        goto out;
    }
    keys[k] = "fallback_application_name";
    values[k++] = LISTENER_APPNAME;
    for (const PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        const char *v = o->val;

        if (v == NULL) {
            continue;
        }
        if (hosts > 1 && l->rotate % hosts != 0 && list_items(v) == hosts
            && (strcmp(o->keyword, "host") == 0 || strcmp(o->keyword, "hostaddr") == 0
                || strcmp(o->keyword, "port") == 0)) {
            i = o->keyword[0] == 'p' ? 2 : o->keyword[4] == 'a' ? 1 : 0;
            if ((rotated[i] = rotate_list(v, l->rotate % hosts)) == NULL) {
                goto out;
            }
            v = rotated[i];
        }
        keys[k] = o->keyword;
        values[k++] = v;
    }
    keys[k] = NULL;
    values[k] = NULL;
    pg = PQconnectStartParams(keys, values, 0);
out:
    for (i = 0; i < 3; i++) {
        free(rotated[i]);
    }
    free(keys);
    free(values);
    PQconninfoFree(opts);
    return pg;
}

/* Connect without blocking the stop pipe.  Returns the connection or NULL
 * (failure logged, or stopping).  The connection shows in pg_stat_activity as
 * LISTENER_APPNAME unless KmdcDatabase names an application_name itself. */
static PGconn *listener_connect(listener *l)
{
    PGconn *pg = listener_start_conn(l);
    PostgresPollingStatusType st = PGRES_POLLING_WRITING;
    apr_time_t deadline = apr_time_now() + apr_time_from_msec(CONNECT_TIMEOUT_MS);

    if (pg == NULL || PQstatus(pg) == CONNECTION_BAD) {
        note_failure(l, "cannot connect", pg);
        goto fail;
    }
    while (st != PGRES_POLLING_OK) {
        apr_time_t left = deadline - apr_time_now();
        int w;

        if (st == PGRES_POLLING_FAILED) {
            note_failure(l, "cannot connect", pg);
            goto fail;
        }
        if (left <= 0) {
            note_failure(l, "timed out connecting", pg);
            l->rotate++;           /* the next attempt starts at the next host */
            goto fail;
        }
        w = wait_fd(l, PQsocket(pg), st == PGRES_POLLING_READING ? POLLIN : POLLOUT,
                    (int)apr_time_as_msec(left) + 1);
        if (w == WAIT_STOP) {
            goto fail;
        }
        if (w == WAIT_TIMEOUT) {
            continue;              /* the deadline check above ends it */
        }
        st = PQconnectPoll(pg);
    }
    return pg;
fail:
    if (pg != NULL) {
        PQfinish(pg);
    }
    return NULL;
}

/* Deliver the NOTIFYs libpq has read. */
static void drain_notifies(listener *l, PGconn *pg)
{
    PGnotify *n;

    while ((n = PQnotifies(pg)) != NULL) {
        uint64_t serial = 0;

        if (strcmp(n->relname, CHANNEL) == 0 && n->extra != NULL
            && kmdc_serial_parse(&serial, n->extra, strlen(n->extra), NULL) == KMDC_OK) {
            wake_serial(l, serial);
        }
        PQfreemem(n);
    }
}

/*
 * LISTEN on pg and deliver notifications until the connection fails or the
 * child stops.  Returns 1 when LISTEN had become active.
 */
static int listener_serve(listener *l, PGconn *pg)
{
    int pending = 0;           /* a query (LISTEN or heartbeat) is unanswered */
    int listening = 0;
    int probed = 0;            /* LISTEN_SQL's process id was read */

    if (!PQsendQuery(pg, LISTEN_SQL)) {
        note_failure(l, "cannot send LISTEN", pg);
        return 0;
    }
    pending = 1;
    for (;;) {
        int w = wait_fd(l, PQsocket(pg), POLLIN, HEARTBEAT_MS);

        if (w == WAIT_STOP) {
            return listening;
        }
        if (w == WAIT_TIMEOUT) {
            if (pending) {
                note_failure(l, "stopped answering", pg);
                return listening;
            }
            if (!PQsendQueryParams(pg, HEARTBEAT_SQL, 0, NULL, NULL, NULL, NULL, 0)) {
                note_failure(l, "lost its connection", pg);
                return listening;
            }
            pending = 1;
            continue;
        }
        if (!PQconsumeInput(pg)) {
            note_failure(l, "lost its connection", pg);
            return listening;
        }
        while (pending && !PQisBusy(pg)) {
            PGresult *res = PQgetResult(pg);
            ExecStatusType rs;

            if (res == NULL) {
                pending = 0;
                break;
            }
            rs = PQresultStatus(res);
            if (!probed && rs == PGRES_TUPLES_OK) {
                probed = 1;    /* the first rows are LISTEN_SQL's */
                note_pooler(l, pg, res);
            }
            PQclear(res);
            if (rs != PGRES_COMMAND_OK && rs != PGRES_TUPLES_OK) {
                note_failure(l, listening ? "failed a heartbeat" : "cannot LISTEN", pg);
                return listening;
            }
            if (!listening) {
                listening = 1;
                if (l->logged_down) {
                    ap_log_error(APLOG_MARK, APLOG_NOTICE, 0, l->s,
                                 "kmdc: the long-poll listener is listening again");
                    l->logged_down = 0;
                }
                listening_again(l);
            }
        }
        drain_notifies(l, pg);
        if (PQstatus(pg) == CONNECTION_BAD) {
            note_failure(l, "lost its connection", pg);
            return listening;
        }
    }
}

static void *APR_THREAD_FUNC listener_main(apr_thread_t *thread, void *data)
{
    listener *l = data;
    int backoff = BACKOFF_MIN_MS;

    while (!is_stopping(l)) {
        PGconn *pg = listener_connect(l);
        apr_time_t since = apr_time_now();

        if (pg != NULL) {
            int listened = listener_serve(l, pg);

            PQfinish(pg);
            /* a connection that held for a while starts the backoff anew;
             * one that fails at once keeps backing off */
            if (listened && apr_time_now() - since >= apr_time_from_msec(BACKOFF_MAX_MS)) {
                backoff = BACKOFF_MIN_MS;
            }
        }
        if (wait_fd(l, -1, 0, backoff) == WAIT_STOP) {
            break;
        }
        backoff = backoff >= BACKOFF_MAX_MS / 2 ? BACKOFF_MAX_MS : backoff * 2;
    }
    wake_all(l);
    apr_thread_exit(thread, APR_SUCCESS);
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* start and stop                                                            */

/* pre-cleanup of pchild: runs before the thread's pool is destroyed. */
static apr_status_t listener_cleanup(void *data)
{
    listener *l = data;
    apr_status_t trv;

    request_stop(l);
    if (l->thread != NULL) {
        (void)apr_thread_join(&trv, l->thread);
        l->thread = NULL;
    }
    wake_all(l);
    if (l->stop_fd[0] >= 0) {
        close(l->stop_fd[0]);
        l->stop_fd[0] = -1;
    }
    if (l->stop_fd[1] >= 0) {
        close(l->stop_fd[1]);
        l->stop_fd[1] = -1;
    }
    return APR_SUCCESS;
}

static listener *listener_start(apr_pool_t *pchild, server_rec *s, const char *conninfo)
{
    listener *l = apr_pcalloc(pchild, sizeof(*l));
    sigset_t all, old;
    apr_status_t rv;
    int i;

    l->conninfo = conninfo;
    l->s = s;
    l->stop_fd[0] = l->stop_fd[1] = -1;
    atomic_init(&l->stopping, 0);
    rv = apr_thread_mutex_create(&l->mu, APR_THREAD_MUTEX_DEFAULT, pchild);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s,
                     "kmdc: cannot create the long-poll listener's mutex; "
                     "long-polls wait for their deadline");
        return NULL;
    }
    if (pipe(l->stop_fd) != 0) {
        ap_log_error(APLOG_MARK, APLOG_ERR, errno, s,
                     "kmdc: cannot create the long-poll listener's pipe; "
                     "long-polls wait for their deadline");
        l->stop_fd[0] = l->stop_fd[1] = -1;
        return NULL;
    }
    for (i = 0; i < 2; i++) {
        (void)fcntl(l->stop_fd[i], F_SETFD, FD_CLOEXEC);
        (void)fcntl(l->stop_fd[i], F_SETFL, O_NONBLOCK);
    }
    apr_pool_pre_cleanup_register(pchild, l, listener_cleanup);
    /* the thread takes no signal meant for the MPM's threads */
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, &old);
    rv = apr_thread_create(&l->thread, NULL, listener_main, l, pchild);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    if (rv != APR_SUCCESS) {
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s,
                     "kmdc: cannot start the long-poll listener thread; "
                     "long-polls wait for their deadline");
        l->thread = NULL;
    }
    return l;
}

void kmdc_notify_child_init(apr_pool_t *pchild, server_rec *s)
{
    server_rec *vs;
    int async = 0;
    int i;

    listeners = apr_array_make(pchild, 2, sizeof(listener *));
    /* only the event MPM's connection pool is known to be the one
     * kmdc_notify_finish may destroy */
    mpm_suspends = ap_mpm_query(AP_MPMQ_IS_ASYNC, &async) == APR_SUCCESS && async
                   && strcmp(ap_show_mpm(), "event") == 0;
    clock_thread = NULL;
    releases = NULL;
    for (vs = s; vs != NULL; vs = vs->next) {
        const kmdc_srv_conf *sc = kmdc_conf_get(vs);
        listener *l = NULL;
        int found = 0;

        if (sc == NULL || !sc->handler_used || sc->conninfo == NULL) {
            continue;
        }
        for (i = 0; i < listeners->nelts && !found; i++) {
            found = strcmp(APR_ARRAY_IDX(listeners, i, listener *)->conninfo,
                           listen_conninfo(sc)) == 0;
        }
        if (!found && (l = listener_start(pchild, vs, listen_conninfo(sc))) != NULL) {
            APR_ARRAY_PUSH(listeners, listener *) = l;
        }
    }
    if (mpm_suspends && listeners->nelts > 0) {
        clock_start(pchild, s);
    }
}

#if AP_MODULE_MAGIC_AT_LEAST(20120211, 110)
/* The MPM is stopping this child: answer every long-poll now (a graceful
 * restart must not wait up to a minute for them). */
static void notify_child_stopping(apr_pool_t *pchild, int graceful)
{
    int i;

    (void)pchild;
    (void)graceful;
    for (i = 0; listeners != NULL && i < listeners->nelts; i++) {
        request_stop(APR_ARRAY_IDX(listeners, i, listener *));
    }
}
#endif

void kmdc_notify_register_hooks(apr_pool_t *p)
{
    (void)p;
#if AP_MODULE_MAGIC_AT_LEAST(20120211, 110)
    ap_hook_child_stopping(notify_child_stopping, NULL, NULL, APR_HOOK_MIDDLE);
#endif
#if AP_MODULE_MAGIC_AT_LEAST(20120211, 33)
    ap_hook_suspend_connection(notify_suspend_connection, NULL, NULL, APR_HOOK_MIDDLE);
#endif
}

/* ------------------------------------------------------------------------ */
/* waiters                                                                   */

static listener *listener_for(const request_rec *r)
{
    const kmdc_srv_conf *sc = kmdc_conf_get(r->server);
    int i;

    if (listeners == NULL || sc == NULL || sc->conninfo == NULL) {
        return NULL;
    }
    for (i = 0; i < listeners->nelts; i++) {
        listener *l = APR_ARRAY_IDX(listeners, i, listener *);

        if (strcmp(l->conninfo, listen_conninfo(sc)) == 0) {
            return l->thread != NULL ? l : NULL;
        }
    }
    return NULL;
}

/* Drop one reference to w; mu held.  Returns 1 when the caller must free w
 * (after unlocking). */
static int unref_locked(kmdc_notify_waiter *w)
{
    return --w->refs == 0;
}

/* r->pool's cleanup: the request is gone, unlink w and drop its reference. */
static apr_status_t waiter_cleanup(void *data)
{
    kmdc_notify_waiter *w = data;
    listener *l = w->home;
    int gone;

    apr_thread_mutex_lock(l->mu);
    if (w->l != NULL) {
        if (w->prev != NULL) {
            w->prev->next = w->next;
        }
        else {
            l->waiters = w->next;
        }
        if (w->next != NULL) {
            w->next->prev = w->prev;
        }
        w->l = NULL;
        w->prev = w->next = NULL;
    }
    w->cond = NULL;                   /* goes with r->pool */
    w->pool = NULL;
    if (w->async) {
        kmdc_metrics_longpoll_suspended(-1);
    }
    gone = unref_locked(w);
    apr_thread_mutex_unlock(l->mu);
    kmdc_metrics_longpoll(-1);
    if (gone) {
        free(w);
    }
    return APR_SUCCESS;
}

kmdc_notify_waiter *kmdc_notify_watch(request_rec *r, uint64_t serial)
{
    listener *l = listener_for(r);
    kmdc_notify_waiter *w;

    if (l == NULL || (w = calloc(1, sizeof(*w))) == NULL) {
        return NULL;
    }
    w->home = l;
    w->pool = r->pool;
    w->serial = serial;
    w->refs = 1;                      /* the request's */
    apr_thread_mutex_lock(l->mu);
    w->l = l;
    w->next = l->waiters;
    if (l->waiters != NULL) {
        l->waiters->prev = w;
    }
    l->waiters = w;
    apr_thread_mutex_unlock(l->mu);
    kmdc_metrics_longpoll(1);
    apr_pool_cleanup_register(r->pool, w, waiter_cleanup, apr_pool_cleanup_null);
    return w;
}

void kmdc_notify_unwatch(kmdc_notify_waiter *w)
{
    if (w != NULL && w->pool != NULL) {
        apr_pool_cleanup_run(w->pool, w, waiter_cleanup);
    }
}

kmdc_notify_rc kmdc_notify_wait(kmdc_notify_waiter *w, apr_time_t deadline)
{
    listener *l = w != NULL ? w->l : NULL;
    apr_thread_cond_t *cond = NULL;
    kmdc_notify_rc rc;

    if (l != NULL && w->cond == NULL
        && apr_thread_cond_create(&cond, w->pool) != APR_SUCCESS) {
        l = NULL;                     /* no condition: wait for the deadline */
    }
    if (l == NULL) {
        apr_time_t left = deadline - apr_time_now();

        if (left > 0) {
            apr_sleep(left);
        }
        return KMDC_NOTIFY_FINAL;
    }
    apr_thread_mutex_lock(l->mu);
    if (cond != NULL) {
        w->cond = cond;
    }
    for (;;) {
        apr_time_t left;

        if (is_stopping(l)) {
            rc = KMDC_NOTIFY_FINAL;
            break;
        }
        if (w->woken) {
            w->woken = 0;
            rc = KMDC_NOTIFY_RECHECK;
            break;
        }
        left = deadline - apr_time_now();
        if (left <= 0) {
            rc = KMDC_NOTIFY_FINAL;
            break;
        }
        (void)apr_thread_cond_timedwait(w->cond, l->mu, left);
    }
    apr_thread_mutex_unlock(l->mu);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* suspended requests (event MPM)                                            */

/*
 * The life of a suspended long-poll (kmdc_notify_suspend):
 *
 * 1. The handler thread marks the waiter async (with its deadline) and
 *    returns SUSPENDED.  httpd then unlocks
 *    r->invoke_mtx and the MPM lets go of the connection (it is in no queue
 *    and no pollset any more) and runs the suspend_connection hook on that
 *    same thread, at the very end: notify_suspend_connection below marks the
 *    waiter suspended.  Until then no callback touches the request, because
 *    the MPM still reads the connection's state (a callback that answered
 *    first would make the MPM take the connection back as well).
 * 2. The LISTEN thread never touches the request: on a NOTIFY it marks the
 *    waiter woken and asks the MPM for a callback now
 *    (ap_mpm_register_timed_callback with no delay, thread-safe in the event
 *    MPM: it takes the MPM's timer mutex and wakes its listener).  The clock
 *    thread (clock_main) does the same when the deadline passes.
 * 3. The callbacks run in worker threads, one at a time per waiter (busy):
 *    under r->invoke_mtx the resume function reads the mailbox again and
 *    either answers (the end) or leaves the request suspended.
 * 4. Answering (kmdc_notify_finish) ends the request the way httpd's
 *    mod_dialup does (ap_finalize_request_protocol,
 *    ap_process_request_after_handler), then closes the connection: httpd
 *    2.4 has no call that hands a suspended connection back to the MPM
 *    (trunk's ap_mpm_resume_suspended), so the response carries
 *    "Connection: close", the connection is closed with httpd's lingering
 *    close, and its pool (the MPM's transaction pool, which the MPM itself
 *    destroys when it has too many spare ones) is destroyed a second later
 *    (the clock thread has a callback do it), which also gives the MPM back
 *    its count of connections.  The second is a margin for the handler's
 *    thread, which after the suspend hook still writes two fields of the
 *    MPM's connection state in that pool.
 *
 * Callbacks cannot be cancelled, so the waiter counts them (refs) and
 * outlives the request until the last one has run.  While suspended, a
 * client that goes away is noticed at the next wake or the deadline (nobody
 * polls its socket); the connection is then closed like any other.
 */

/* A callback of the MPM for w (a worker thread). */
static void wake_callback(void *baton)
{
    kmdc_notify_waiter *w = baton;
    listener *l = w->home;
    int gone;

    apr_thread_mutex_lock(l->mu);
    w->scheduled = 0;
    if (w->async && !w->finished && !w->busy && w->suspended) {
        w->busy = 1;
        for (;;) {
            int final = w->expired || is_stopping(l);
            int answered;

            if (!final && !w->woken) {
                break;                /* nothing new: stay suspended */
            }
            w->woken = 0;
            apr_thread_mutex_unlock(l->mu);
            answered = w->resume(w->resume_arg, final);
            apr_thread_mutex_lock(l->mu);
            if (answered) {
                w->finished = 1;
                break;
            }
        }
        w->busy = 0;
    }
    gone = unref_locked(w);
    apr_thread_mutex_unlock(l->mu);
    if (gone) {
        free(w);
    }
}

/* Ask the MPM to run wake_callback for w now; mu held.  Only once the MPM
 * has let go of the connection (before, the suspend hook does it), and one
 * at a time. */
static void schedule_locked(kmdc_notify_waiter *w)
{
    if (!w->suspended || w->scheduled || w->finished) {
        return;
    }
    w->scheduled = 1;
    w->refs++;
    if (ap_mpm_register_timed_callback(0, wake_callback, w) != APR_SUCCESS) {
        w->scheduled = 0;
        w->refs--;                    /* the clock thread tries again */
    }
}

#if AP_MODULE_MAGIC_AT_LEAST(20120211, 33)
/* The MPM let go of c (on the thread that ran the handler, as its last step
 * with the connection). */
static void notify_suspend_connection(conn_rec *c, request_rec *r)
{
    kmdc_notify_waiter *w = ap_get_module_config(c->conn_config, &kmdc_module);
    listener *l;

    (void)r;
    if (w == NULL) {
        return;
    }
    l = w->home;
    apr_thread_mutex_lock(l->mu);
    if (w->async && !w->suspended) {
        w->suspended = 1;
        if (w->woken || w->expired || is_stopping(l)) {
            schedule_locked(w);
        }
    }
    apr_thread_mutex_unlock(l->mu);
}
#endif

int kmdc_notify_can_suspend(const request_rec *r)
{
    const conn_rec *c = r->connection;

    return mpm_suspends && r->main == NULL && r->prev == NULL
           && r->invoke_mtx != NULL && c->cs != NULL && c->master == NULL
           && !c->clogging_input_filters && !c->aborted
           && r->proto_num < 2000;
}

int kmdc_notify_suspend(kmdc_notify_waiter *w, request_rec *r, apr_time_t deadline,
                        kmdc_notify_resume_fn *resume, void *arg)
{
    listener *l = w != NULL ? w->l : NULL;

    if (l == NULL || clock_thread == NULL || !kmdc_notify_can_suspend(r)) {
        return DECLINED;
    }
    apr_thread_mutex_lock(l->mu);
    if (is_stopping(l)) {
        apr_thread_mutex_unlock(l->mu);
        return DECLINED;
    }
    w->deadline = deadline;
    w->async = 1;
    w->resume = resume;
    w->resume_arg = arg;
    apr_thread_mutex_unlock(l->mu);
    kmdc_metrics_longpoll_suspended(1);
    /* httpd 2.4 cannot hand the connection back to the MPM: see above */
    r->connection->keepalive = AP_CONN_CLOSE;
    ap_set_module_config(r->connection->conn_config, &kmdc_module, w);
    return SUSPENDED;
}

static void conn_release_callback(void *baton)
{
    apr_pool_destroy(baton);
}

/* Hand the pool of a closed connection to the clock thread, which has it
 * destroyed a second later (see above). */
static void conn_release_later(apr_pool_t *cp)
{
    conn_release *cr = apr_palloc(cp, sizeof(*cr));

    cr->pool = cp;
    cr->due = apr_time_now() + apr_time_from_sec(1);
    apr_thread_mutex_lock(clock_mu);
    cr->next = releases;
    releases = cr;
    apr_thread_mutex_unlock(clock_mu);
}

void kmdc_notify_finish(request_rec *r, int rv)
{
    conn_rec *c = r->connection;
    apr_bucket_brigade *bb;

    ap_set_module_config(c->conn_config, &kmdc_module, NULL);
    if (rv == OK || rv == DONE) {
        ap_finalize_request_protocol(r);
    }
    else {
        r->status = HTTP_OK;
        ap_die(rv, r);
    }
    /* logs the request and destroys r->pool (the EOR bucket) */
    ap_process_request_after_handler(r);
    r = NULL;
    /* what the core output filter set aside for the MPM: write it now */
    bb = apr_brigade_create(c->pool, c->bucket_alloc);
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_flush_create(c->bucket_alloc));
    (void)ap_pass_brigade(c->output_filters, bb);
    apr_brigade_destroy(bb);
    ap_lingering_close(c);
    /* the MPM counts the connection as suspended until its pool goes */
    c->cs->state = CONN_STATE_SUSPENDED;
    conn_release_later(c->pool);
}

/* ------------------------------------------------------------------------ */
/* the clock thread                                                          */

/*
 * Every CLOCK_TICK_MS it marks the suspended waiters whose deadline passed
 * and asks the MPM to run them, and has the pools of closed connections
 * destroyed.  The MPM's own delayed callbacks are not used: httpd 2.4.71's
 * event MPM wakes its listener for a new timer but then computes its poll
 * timeout only from timers already due, so a timer registered for later
 * runs when some other event happens to wake the listener (measured: a
 * 2 s deadline answered after 22 s, the first after 600 s).  Callbacks
 * registered for now run at once.
 */
static void *APR_THREAD_FUNC clock_main(apr_thread_t *thread, void *data)
{
    (void)data;
    apr_thread_mutex_lock(clock_mu);
    while (!clock_stop) {
        apr_time_t now;
        conn_release **pp, *due = NULL;
        int i;

        (void)apr_thread_cond_timedwait(clock_cond, clock_mu,
                                        apr_time_from_msec(CLOCK_TICK_MS));
        if (clock_stop) {
            break;
        }
        now = apr_time_now();
        for (pp = &releases; *pp != NULL;) {
            conn_release *cr = *pp;

            if (cr->due <= now) {
                *pp = cr->next;
                cr->next = due;
                due = cr;
            }
            else {
                pp = &cr->next;
            }
        }
        apr_thread_mutex_unlock(clock_mu);
        while (due != NULL) {
            conn_release *cr = due;

            due = cr->next;
            if (ap_mpm_register_timed_callback(0, conn_release_callback, cr->pool)
                != APR_SUCCESS) {
                apr_pool_destroy(cr->pool);
            }
        }
        for (i = 0; listeners != NULL && i < listeners->nelts; i++) {
            listener *l = APR_ARRAY_IDX(listeners, i, listener *);
            kmdc_notify_waiter *w;

            apr_thread_mutex_lock(l->mu);
            for (w = l->waiters; w != NULL; w = w->next) {
                if (w->async && !w->finished
                    && (w->deadline <= now || is_stopping(l))) {
                    w->expired = 1;
                    schedule_locked(w);   /* if not yet, the suspend hook does */
                }
            }
            apr_thread_mutex_unlock(l->mu);
        }
        apr_thread_mutex_lock(clock_mu);
    }
    apr_thread_mutex_unlock(clock_mu);
    apr_thread_exit(thread, APR_SUCCESS);
    return NULL;
}

static apr_status_t clock_cleanup(void *data)
{
    apr_status_t trv;

    (void)data;
    if (clock_thread != NULL) {
        apr_thread_mutex_lock(clock_mu);
        clock_stop = 1;
        apr_thread_cond_signal(clock_cond);
        apr_thread_mutex_unlock(clock_mu);
        (void)apr_thread_join(&trv, clock_thread);
        clock_thread = NULL;
    }
    return APR_SUCCESS;
}

/* Start the clock thread (child_init, on the event MPM only). */
static void clock_start(apr_pool_t *pchild, server_rec *s)
{
    sigset_t all, old;
    apr_status_t rv;

    clock_stop = 0;
    rv = apr_thread_mutex_create(&clock_mu, APR_THREAD_MUTEX_DEFAULT, pchild);
    if (rv == APR_SUCCESS) {
        rv = apr_thread_cond_create(&clock_cond, pchild);
    }
    if (rv == APR_SUCCESS) {
        apr_pool_pre_cleanup_register(pchild, NULL, clock_cleanup);
        sigfillset(&all);
        pthread_sigmask(SIG_BLOCK, &all, &old);
        rv = apr_thread_create(&clock_thread, NULL, clock_main, NULL, pchild);
        pthread_sigmask(SIG_SETMASK, &old, NULL);
    }
    if (rv != APR_SUCCESS) {
        clock_thread = NULL;
        ap_log_error(APLOG_MARK, APLOG_ERR, rv, s,
                     "kmdc: cannot start the long-poll clock thread; long-polls "
                     "hold a worker thread while they wait");
    }
}

#else /* !APR_HAS_THREADS: no listener; long-polls wait for their deadline */

struct kmdc_notify_waiter {
    int unused;
};

void kmdc_notify_register_hooks(apr_pool_t *p)
{
    (void)p;
}

void kmdc_notify_child_init(apr_pool_t *pchild, server_rec *s)
{
    (void)pchild;
    (void)s;
}

kmdc_notify_waiter *kmdc_notify_watch(request_rec *r, uint64_t serial)
{
    (void)r;
    (void)serial;
    return NULL;
}

void kmdc_notify_unwatch(kmdc_notify_waiter *w)
{
    (void)w;
}

int kmdc_notify_can_suspend(const request_rec *r)
{
    (void)r;
    return 0;
}

int kmdc_notify_suspend(kmdc_notify_waiter *w, request_rec *r, apr_time_t deadline,
                        kmdc_notify_resume_fn *resume, void *arg)
{
    (void)w;
    (void)r;
    (void)deadline;
    (void)resume;
    (void)arg;
    return DECLINED;
}

void kmdc_notify_finish(request_rec *r, int rv)
{
    (void)r;
    (void)rv;
}

kmdc_notify_rc kmdc_notify_wait(kmdc_notify_waiter *w, apr_time_t deadline)
{
    apr_time_t left = deadline - apr_time_now();

    (void)w;
    if (left > 0) {
        apr_sleep(left);
    }
    return KMDC_NOTIFY_FINAL;
}

#endif
