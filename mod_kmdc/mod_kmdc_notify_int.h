/*
 * mod_kmdc_notify_int.h - what the three files of the long-poll machinery
 * share, and nothing else includes (the handlers see mod_kmdc_notify.h):
 *
 *   mod_kmdc_notify.c          the waiters: table, waking, blocking wait,
 *                              child init and stop
 *   mod_kmdc_notify_listen.c   the LISTEN thread of each database
 *   mod_kmdc_notify_suspend.c  suspended long-polls (event MPM), clock thread
 *
 * Locking: the waiter list and each waiter's flags are under the listener's
 * mutex; each blocked waiter sleeps on its own condition variable with that
 * mutex, so a NOTIFY wakes exactly the waiters of its serial.  Functions
 * named _locked want that mutex held.
 */
#ifndef MOD_KMDC_NOTIFY_INT_H
#define MOD_KMDC_NOTIFY_INT_H

#include <stdatomic.h>
#include <stdint.h>

#include "apr_tables.h"
#include "apr_thread_cond.h"
#include "apr_thread_mutex.h"
#include "apr_thread_proc.h"
#include "ap_mmn.h"
#include "httpd.h"

#include "mod_kmdc_notify.h"

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

/* This child's listeners (listener *), made in child_init
 * (mod_kmdc_notify.c). */
extern apr_array_header_t *kmdc_notify_listeners;

/* The child is stopping (no lock needed). */
static inline int kmdc_notify_is_stopping(listener *l)
{
    return atomic_load(&l->stopping);
}

/* ---- mod_kmdc_notify.c ---------------------------------------------------- */

/* LISTEN is active on a fresh connection: a NOTIFY may have been missed
 * while there was none, so every waiter reads its mailbox again. */
void kmdc_notify_listening_again(listener *l);

/* Wake the waiters of serial. */
void kmdc_notify_wake_serial(listener *l, uint64_t serial);

/* The child is stopping: every waiter answers now. */
void kmdc_notify_wake_all(listener *l);

/* Ask the thread to finish; it wakes every waiter on its way out.
 * Idempotent, and async-signal-safe (a lock-free atomic and write()). */
void kmdc_notify_request_stop(listener *l);

/* Drop one reference to w; mu held.  Returns 1 when the caller must free w
 * (after unlocking). */
int kmdc_notify_unref_locked(kmdc_notify_waiter *w);

/* ---- mod_kmdc_notify_listen.c ---------------------------------------------- */

/* Start the LISTEN thread of conninfo (its mutex, stop pipe and thread, all
 * released with pchild).  NULL when even the mutex or the pipe failed
 * (logged); a listener whose thread did not start has thread NULL. */
listener *kmdc_notify_listener_start(apr_pool_t *pchild, server_rec *s,
                                     const char *conninfo);

/* ---- mod_kmdc_notify_suspend.c --------------------------------------------- */

/* Find out whether this child's MPM can suspend requests and forget the
 * clock thread of the parent; returns 1 when it can (child_init). */
int kmdc_notify_suspend_child_init(void);

/* Start the clock thread (child_init, on the event MPM only). */
void kmdc_notify_clock_start(apr_pool_t *pchild, server_rec *s);

/* Ask the MPM to run the wake callback of a suspended w now; mu held. */
void kmdc_notify_schedule_locked(kmdc_notify_waiter *w);

#if AP_MODULE_MAGIC_AT_LEAST(20120211, 33)
/* The suspend_connection hook: the MPM let go of c. */
void kmdc_notify_suspend_connection(conn_rec *c, request_rec *r);
#endif

#endif /* APR_HAS_THREADS */

#endif
