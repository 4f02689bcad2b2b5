/*
 * mod_kmdc_notify_suspend.c - suspended long-polls (event MPM): the request
 * lets go of its worker thread while it waits, the LISTEN thread and a
 * clock thread ask the MPM for callbacks that resume it, and answering
 * closes the connection (httpd 2.4 cannot hand it back to the MPM).  The
 * steps are described above wake_callback; the waiters themselves are
 * mod_kmdc_notify.c's.
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

int kmdc_notify_suspend_child_init(void)
{
    int async = 0;

    /* only the event MPM's connection pool is known to be the one
     * kmdc_notify_finish may destroy */
    mpm_suspends = ap_mpm_query(AP_MPMQ_IS_ASYNC, &async) == APR_SUCCESS && async
                   && strcmp(ap_show_mpm(), "event") == 0;
    clock_thread = NULL;
    releases = NULL;
    return mpm_suspends;
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
 *    same thread, at the very end: kmdc_notify_suspend_connection below marks the
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
            int final = w->expired || kmdc_notify_is_stopping(l);
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
    gone = kmdc_notify_unref_locked(w);
    apr_thread_mutex_unlock(l->mu);
    if (gone) {
        free(w);
    }
}

/* Ask the MPM to run wake_callback for w now; mu held.  Only once the MPM
 * has let go of the connection (before, the suspend hook does it), and one
 * at a time. */
void kmdc_notify_schedule_locked(kmdc_notify_waiter *w)
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
void kmdc_notify_suspend_connection(conn_rec *c, request_rec *r)
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
        if (w->woken || w->expired || kmdc_notify_is_stopping(l)) {
            kmdc_notify_schedule_locked(w);
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
    if (kmdc_notify_is_stopping(l)) {
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
        for (i = 0; kmdc_notify_listeners != NULL && i < kmdc_notify_listeners->nelts; i++) {
            listener *l = APR_ARRAY_IDX(kmdc_notify_listeners, i, listener *);
            kmdc_notify_waiter *w;

            apr_thread_mutex_lock(l->mu);
            for (w = l->waiters; w != NULL; w = w->next) {
                if (w->async && !w->finished
                    && (w->deadline <= now || kmdc_notify_is_stopping(l))) {
                    w->expired = 1;
                    kmdc_notify_schedule_locked(w);   /* if not yet, the suspend hook does */
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
void kmdc_notify_clock_start(apr_pool_t *pchild, server_rec *s)
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

#endif /* APR_HAS_THREADS */
