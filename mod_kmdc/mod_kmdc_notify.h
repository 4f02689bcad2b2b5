/*
 * mod_kmdc_notify.h - the NOTIFY listener that wakes mailbox long-polls
 * (GET /mailbox/{serial}?wait=S, docs/API.md and docs/ADMIN.md section 11).
 *
 * Every child keeps, per database (KmdcDatabase), one dedicated libpq
 * connection outside the pool that runs `LISTEN kmdc_mailbox`, and one thread
 * that waits on its socket (poll() on PQsocket and a stop pipe; PQconsumeInput,
 * PQnotifies).  POST /send and DELETE /mailbox/... send
 * `pg_notify('kmdc_mailbox', '<recipient serial hex>')` in their transaction;
 * the thread wakes the waiters of that serial.  A waiter is a request thread
 * that holds no pooled connection while it waits: it sleeps on its own
 * condition variable until it is woken or its deadline passes.
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

#endif
