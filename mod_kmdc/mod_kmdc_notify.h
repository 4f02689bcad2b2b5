/*
 * mod_kmdc_notify.h - the NOTIFY listener that wakes mailbox long-polls
 * (GET /mailbox/{serial}?wait=S, docs/API.md and docs/ADMIN.md section 11).
 *
 * Every child keeps, per database (KmdcDatabase), one dedicated libpq
 * connection outside the pool that runs `LISTEN kmdc_mailbox`, and one thread
 * that waits on its socket (poll() on PQsocket and a stop pipe; PQconsumeInput,
 * PQnotifies).  POST /send and DELETE /mailbox/... send
 * `pg_notify('kmdc_mailbox', '<recipient serial hex>')` in their transaction;
 * the thread wakes the waiters of that serial.  A waiter holds no pooled
 * connection while it waits.  On the event MPM it holds no thread either: the
 * handler returns SUSPENDED (kmdc_notify_suspend) and a timed callback of the
 * MPM resumes it, scheduled by the LISTEN thread on a NOTIFY or at the
 * deadline; elsewhere (prefork, worker, TLS terminated by mod_ssl, HTTP/2)
 * the request thread sleeps on its own condition variable until it is woken
 * or its deadline passes.
 *
 * When the listening connection fails, the thread reconnects with a backoff
 * (0.25 s doubling to 10 s).  While it is down nothing can be missed for
 * good: when LISTEN is active again every waiter is woken to read its mailbox
 * again, and every waiter reads once more at its deadline before it answers
 * (which also catches changes that send no NOTIFY, such as an expiry).  A heartbeat query every 30 s of
 * silence finds a connection that died without a word.  When the child stops
 * (the MPM's child_stopping hook) every waiter is answered at once, and the
 * thread is stopped and joined before the child's pool goes.
 */
#ifndef MOD_KMDC_NOTIFY_H
#define MOD_KMDC_NOTIFY_H

#include <stdint.h>

#include "httpd.h"
#include "apr_pools.h"
#include "apr_time.h"

/* One request waiting for a change of one mailbox. */
typedef struct kmdc_notify_waiter kmdc_notify_waiter;

/* What kmdc_notify_wait() found. */
typedef enum kmdc_notify_rc {
    KMDC_NOTIFY_RECHECK = 0,  /* woken (a NOTIFY, or LISTEN back): read again,
                               * and wait again if nothing changed */
    KMDC_NOTIFY_FINAL         /* the deadline passed or the child is stopping:
                               * read once more, then answer */
} kmdc_notify_rc;

/* Register the child_stopping hook (from the module's register_hooks). */
void kmdc_notify_register_hooks(apr_pool_t *p);

/*
 * Start this child's listeners, one per distinct KmdcDatabase of the servers
 * that use the handler (child_init).  Each connects in its own thread, so a
 * database that is down does not delay the child.  The threads are stopped
 * and joined by a pre-cleanup of pchild.
 */
void kmdc_notify_child_init(apr_pool_t *pchild, server_rec *s);

/*
 * Start watching the mailbox of serial for r, before the mailbox is read
 * (so that a change committed after that read wakes it).  Counts the request
 * in kmdc_longpoll_waiting until r->pool is cleared (or kmdc_notify_unwatch).
 * Returns NULL when the server has no listener (no KmdcDatabase, threads
 * unavailable); kmdc_notify_wait() then simply waits for the deadline.
 */
kmdc_notify_waiter *kmdc_notify_watch(request_rec *r, uint64_t serial);

/*
 * Wait, holding no database connection, until w is woken or deadline passes
 * (w may be NULL).  See kmdc_notify_rc.  Never returns RECHECK without having
 * been woken, so callers loop without spinning.
 */
kmdc_notify_rc kmdc_notify_wait(kmdc_notify_waiter *w, apr_time_t deadline);

/* Stop watching now (otherwise done when r->pool is cleared).  Accepts NULL. */
void kmdc_notify_unwatch(kmdc_notify_waiter *w);

/* 1 when r can be suspended: the event MPM, a top-level HTTP/1.x request on a
 * connection the MPM handles asynchronously (httpd 2.4's mod_ssl makes its
 * connections synchronous). */
int kmdc_notify_can_suspend(const request_rec *r);

/*
 * Resume a suspended request, in a worker thread: read again and answer
 * (call kmdc_notify_finish, return 1), or return 0 to stay suspended; with
 * final set it must answer.  Calls for one request never overlap.
 */
typedef int kmdc_notify_resume_fn(void *arg, int final);

/*
 * Suspend r, watched by w, until deadline: returns SUSPENDED (the handler
 * returns it; resume is then called when w is woken and at the deadline) or
 * DECLINED when r cannot be suspended (the caller waits with
 * kmdc_notify_wait).  The answer carries "Connection: close": httpd 2.4
 * cannot hand a suspended connection back to the MPM, so it is closed.
 */
int kmdc_notify_suspend(kmdc_notify_waiter *w, request_rec *r, apr_time_t deadline,
                        kmdc_notify_resume_fn *resume, void *arg);

/* End the suspended request r whose handler work gave rv (OK once the answer
 * is made, or an HTTP status for ap_die), then close its connection.  r is
 * gone afterwards.  From the resume function only. */
void kmdc_notify_finish(request_rec *r, int rv);

#endif
