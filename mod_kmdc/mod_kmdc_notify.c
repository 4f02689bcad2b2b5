/*
 * mod_kmdc_notify.c - the waiters of mailbox long-polls (see
 * mod_kmdc_notify.h): the table of waiters per listener, waking them, the
 * blocking wait, and starting and stopping the whole with the child.  The
 * LISTEN thread is mod_kmdc_notify_listen.c, suspended long-polls (event
 * MPM) and their clock thread mod_kmdc_notify_suspend.c; what the three
 * share is mod_kmdc_notify_int.h.
 *
 * Locking: the waiter list and each waiter's flag are under the listener's
 * mutex; each waiter sleeps on its own condition variable with that mutex, so
 * a NOTIFY wakes exactly the waiters of its serial.  The PGconn belongs to the
 * thread alone.  Stopping takes no lock (prefork runs child_stopping on its
 * exit path, which may be a signal handler): an atomic flag and one byte down
 * a pipe; the thread then wakes every waiter.
 *
 * Suspended long-polls (event MPM) are described in mod_kmdc_notify_suspend.c:
 * the waiter then has no thread; the LISTEN thread and a clock thread ask
 * the MPM for callbacks that resume the request.
 *
 * Nothing is lost while the listener is down: when LISTEN is active again on
 * a fresh connection every waiter is woken and reads its mailbox, and at its
 * deadline a waiter always reads once more (which also catches what sends no
 * NOTIFY: an expiry, an administrator's purge).
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "apr_strings.h"
#include "apr_tables.h"
#include "apr_thread_cond.h"
#include "apr_thread_mutex.h"
#include "ap_mmn.h"
#include "ap_mpm.h"
#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "mpm_common.h"

#include "mod_kmdc.h"
#include "mod_kmdc_config.h"
#include "mod_kmdc_metrics.h"
#include "mod_kmdc_notify_int.h"

#if APR_HAS_THREADS

/* This child's listeners (listener *), made in child_init. */
apr_array_header_t *kmdc_notify_listeners;

/* The LISTEN connection's string: KmdcListenDatabase, else KmdcDatabase. */
static const char *listen_conninfo(const kmdc_srv_conf *sc)
{
    return sc->listen_conninfo != NULL ? sc->listen_conninfo : sc->conninfo;
}

/* ------------------------------------------------------------------------ */
/* the shared state                                                          */

/* Wake one waiter; mu held.  A blocked thread is signalled; a suspended
 * request gets a callback of the MPM (see schedule_locked). */
static void wake_locked(kmdc_notify_waiter *w)
{
    w->woken = 1;
    if (w->async) {
        kmdc_notify_schedule_locked(w);
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
void kmdc_notify_listening_again(listener *l)
{
    apr_thread_mutex_lock(l->mu);
    wake_all_locked(l);
    apr_thread_mutex_unlock(l->mu);
}

void kmdc_notify_wake_serial(listener *l, uint64_t serial)
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
void kmdc_notify_request_stop(listener *l)
{
    static const char byte = 'x';

    if (!atomic_exchange(&l->stopping, 1) && l->stop_fd[1] >= 0) {
        /* the pipe is empty and non-blocking: one byte always fits */
        ssize_t n = write(l->stop_fd[1], &byte, 1);

        (void)n;
    }
}

/* The child is stopping: every waiter answers now. */
void kmdc_notify_wake_all(listener *l)
{
    apr_thread_mutex_lock(l->mu);
    wake_all_locked(l);
    apr_thread_mutex_unlock(l->mu);
}

void kmdc_notify_child_init(apr_pool_t *pchild, server_rec *s)
{
    server_rec *vs;
    int suspends;
    int i;

    kmdc_notify_listeners = apr_array_make(pchild, 2, sizeof(listener *));
    suspends = kmdc_notify_suspend_child_init();
    for (vs = s; vs != NULL; vs = vs->next) {
        const kmdc_srv_conf *sc = kmdc_conf_get(vs);
        listener *l = NULL;
        int found = 0;

        if (sc == NULL || !sc->handler_used || sc->conninfo == NULL) {
            continue;
        }
        for (i = 0; i < kmdc_notify_listeners->nelts && !found; i++) {
            found = strcmp(APR_ARRAY_IDX(kmdc_notify_listeners, i, listener *)->conninfo,
                           listen_conninfo(sc)) == 0;
        }
        if (!found
            && (l = kmdc_notify_listener_start(pchild, vs, listen_conninfo(sc))) != NULL) {
            APR_ARRAY_PUSH(kmdc_notify_listeners, listener *) = l;
        }
    }
    if (suspends && kmdc_notify_listeners->nelts > 0) {
        kmdc_notify_clock_start(pchild, s);
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
    for (i = 0; kmdc_notify_listeners != NULL && i < kmdc_notify_listeners->nelts; i++) {
        kmdc_notify_request_stop(APR_ARRAY_IDX(kmdc_notify_listeners, i, listener *));
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
    ap_hook_suspend_connection(kmdc_notify_suspend_connection, NULL, NULL, APR_HOOK_MIDDLE);
#endif
}

/* ------------------------------------------------------------------------ */
/* waiters                                                                   */

static listener *listener_for(const request_rec *r)
{
    const kmdc_srv_conf *sc = kmdc_conf_get(r->server);
    int i;

    if (kmdc_notify_listeners == NULL || sc == NULL || sc->conninfo == NULL) {
        return NULL;
    }
    for (i = 0; i < kmdc_notify_listeners->nelts; i++) {
        listener *l = APR_ARRAY_IDX(kmdc_notify_listeners, i, listener *);

        if (strcmp(l->conninfo, listen_conninfo(sc)) == 0) {
            return l->thread != NULL ? l : NULL;
        }
    }
    return NULL;
}

/* Drop one reference to w; mu held.  Returns 1 when the caller must free w
 * (after unlocking). */
int kmdc_notify_unref_locked(kmdc_notify_waiter *w)
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
    gone = kmdc_notify_unref_locked(w);
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

        if (kmdc_notify_is_stopping(l)) {
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
