/*
 * mod_kmdc_notify_listen.c - the LISTEN thread of a child: one libpq
 * connection per database (KmdcListenDatabase, else KmdcDatabase) that
 * LISTENs on the mailbox channel and wakes the waiters of each serial a
 * NOTIFY names (mod_kmdc_notify.c keeps the waiters).
 *
 * The PGconn belongs to the thread alone.  It connects without blocking
 * (a multi-host string is tried in a rotating order when attempts time
 * out), backs off between failures, sends a heartbeat after a silence, and
 * wakes every waiter when LISTEN is active again on a fresh connection, so
 * that nothing is lost while it was down.  Stopping takes no lock: an atomic
 * flag and one byte down a pipe (kmdc_notify_request_stop).
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
#include "mod_kmdc_notify_int.h"

#if APR_HAS_THREADS

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
    if (pfd[0].revents != 0 || kmdc_notify_is_stopping(l)) {
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
            kmdc_notify_wake_serial(l, serial);
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
                kmdc_notify_listening_again(l);
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

    while (!kmdc_notify_is_stopping(l)) {
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
    kmdc_notify_wake_all(l);
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

    kmdc_notify_request_stop(l);
    if (l->thread != NULL) {
        (void)apr_thread_join(&trv, l->thread);
        l->thread = NULL;
    }
    kmdc_notify_wake_all(l);
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

listener *kmdc_notify_listener_start(apr_pool_t *pchild, server_rec *s, const char *conninfo)
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

#endif /* APR_HAS_THREADS */
