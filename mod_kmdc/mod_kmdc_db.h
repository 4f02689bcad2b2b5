/*
 * mod_kmdc_db.h - the PostgreSQL connection pool of mod_kmdc and the query
 * helpers every store function uses.
 *
 * Each child keeps one apr_reslist of libpq connections per distinct
 * (KmdcDatabase, KmdcDbPoolMin, KmdcDbPoolMax).  A connection is only pooled
 * after it answered CONNECTION_OK and showed the schema version this module
 * was built for (KMDC_SCHEMA_VERSION).  A request borrows one with
 * kmdc_db_acquire(); it goes back to the pool when the request ends (a cleanup
 * on r->pool) or earlier with kmdc_db_release().  A connection found broken,
 * or left inside a transaction that cannot be rolled back, is reset or thrown
 * away instead of being pooled.
 *
 * Every statement is parameterised (PQexecParams), bytea travels in binary
 * format both ways, and nothing keeps an error buffer outside the request.
 */
#ifndef MOD_KMDC_DB_H
#define MOD_KMDC_DB_H

#include <stdint.h>

#include <libpq-fe.h>

#include "httpd.h"
#include "apr_pools.h"

#include "mod_kmdc_config.h"

/* KMDC_SCHEMA_VERSION, the schema version this module needs, the
 * parameter lists (kmdc_db_params), the SQLSTATE helpers and the column
 * readers come from lib/kmdc_pq.h, shared with kmdcadm. */
#include "kmdc_pq.h"

/* How long a request waits for a free pooled connection. */
#define KMDC_DB_ACQUIRE_TIMEOUT apr_time_from_sec(10)

typedef struct kmdc_db_pool kmdc_db_pool;

/* A connection borrowed by one request. */
typedef struct kmdc_db {
    PGconn *pg;               /* the libpq connection */
    request_rec *r;           /* the borrowing request */
    kmdc_db_pool *pool;       /* where it goes back to */
    int broken;               /* a failure showed the connection is unusable */
    struct kmdc_db_batch *prefix; /* sent ahead of the next statement or batch
                               * (kmdc_db_defer), in the same round trip */
    const char *purpose;      /* what it was borrowed for, a short label for
                               * the log ("publish"); NULL: none given */
} kmdc_db;

/* Why the database could not be used. */
typedef enum kmdc_db_rc {
    KMDC_DB_OK = 0,
    KMDC_DB_UNAVAILABLE,      /* no connection (server down, pool exhausted) */
    KMDC_DB_SCHEMA,           /* connected, but the schema version is wrong */
    KMDC_DB_ERROR,            /* a statement failed (see SQLSTATE) */
    KMDC_DB_DEFERRED_CONFLICT /* a deferred statement (kmdc_db_defer) hit a
                               * unique constraint; nothing after it ran */
} kmdc_db_rc;

/*
 * Create this child's pools for every server that uses the handler (servers
 * with the same database settings share one pool) and store them in each
 * server's configuration.  Run from child_init; the pools and their
 * connections are closed when pchild is destroyed.  A database that is down
 * now does not stop the child: connections are made when requests need them.
 */
void kmdc_db_child_init(apr_pool_t *pchild, server_rec *s);

/*
 * Borrow a connection for r.  On KMDC_DB_OK *db is set and is given back at
 * the end of the request at the latest.  Otherwise the reason was logged
 * (once per change of state per pool, so an outage does not flood the log)
 * and *db is NULL; answer with kmdc_db_answer_unavailable().
 */
kmdc_db_rc kmdc_db_acquire(request_rec *r, kmdc_db **db);

/* Give db back to its pool now (rolled back first if a transaction is still
 * open; thrown away if broken).  Accepts NULL. */
void kmdc_db_release(kmdc_db *db);

/* Throw db away instead of pooling it (the connection is closed).  Accepts
 * NULL. */
void kmdc_db_invalidate(kmdc_db *db);

/*
 * Check a KmdcDatabase or KmdcListenDatabase string (key=value or URI,
 * multi-host included) with libpq's own parser, and that a string naming
 * several hosts asks for target_session_attrs=read-write (or primary).
 * NULL when it is fine, else the message (from p) naming directive.
 */
const char *kmdc_db_conninfo_problem(apr_pool_t *p, const char *directive,
                                     const char *conninfo);

/* Answer the 503 JSON for rc (KMDC_DB_SCHEMA: "schema_mismatch", otherwise
 * "unavailable").  Returns OK. */
int kmdc_db_answer_unavailable(request_rec *r, kmdc_db_rc rc);

/*
 * Check again, on a borrowed connection, that the database answers with the
 * expected schema version (what GET /health reports).  KMDC_DB_OK,
 * KMDC_DB_SCHEMA (logged once per change), KMDC_DB_UNAVAILABLE (db is marked
 * broken) or KMDC_DB_ERROR.
 */
kmdc_db_rc kmdc_db_check_schema(kmdc_db *db);

/*
 * Add a one-dimensional array parameter in PostgreSQL's binary array format
 * (kmdc_db_param_array_alloc of kmdc_pq.h with its memory from p).  Element
 * i is vals[i] of lens[i] bytes; the statement casts the parameter to the
 * matching array type, e.g. $1::text[].
 */
void kmdc_db_param_array(kmdc_db_params *pp, apr_pool_t *p, uint32_t elem_oid,
                         int n, const void *const *vals, const int *lens);

/* Add a bigint[] parameter of the n values v (binary, see above). */
void kmdc_db_param_int8_array(kmdc_db_params *pp, apr_pool_t *p,
                              const int64_t *v, int n);

/* Add a text[] parameter of the n NUL-terminated strings v (binary). */
void kmdc_db_param_text_array(kmdc_db_params *pp, apr_pool_t *p,
                              const char *const *v, int n);

/*
 * Run one parameterised statement (pp may be NULL for none).  binary_result
 * 1 asks for every result column in binary (needed for bytea).  On
 * KMDC_DB_OK *res is the result (PGRES_COMMAND_OK or PGRES_TUPLES_OK), freed
 * with r->pool or earlier with kmdc_db_clear().  On failure *res still holds
 * the failed result when there is one (for kmdc_db_sqlstate), and a broken
 * connection marks db broken (KMDC_DB_UNAVAILABLE).  Every failure is logged
 * at error level with its SQLSTATE and class and what the statement was for
 * (db->purpose and the statement's verb and table, never a value: the
 * server's message goes to debug only, it may name a file), counted in
 * kmdc_db_errors_total, and a permission (42501) or resource (53xxx) error
 * makes /health answer degraded for KMDC_DEGRADED_WINDOW seconds.
 */
kmdc_db_rc kmdc_db_exec(kmdc_db *db, const char *sql, const kmdc_db_params *pp,
                        int binary_result, PGresult **res);

/* ---- mod_kmdc_dbexec.c: batches ------------------------------------------- */

/* Most statements in one batch. */
#define KMDC_DB_BATCH_MAX 16

typedef struct kmdc_db_batch_item {
    const char *sql;
    kmdc_db_params pp;        /* a copy: the caller may reuse its own */
    int binary;
    int prepare_slot;         /* a Prepare was sent before it (-1: none) */
    PGresult *res;            /* its result after kmdc_db_batch_run */
} kmdc_db_batch_item;

/* Statements sent in one round trip (pipeline mode) and answered in order. */
typedef struct kmdc_db_batch {
    kmdc_db *db;
    int n;
    int overflow;             /* more than KMDC_DB_BATCH_MAX were added */
    int failed;               /* after a failed run: the statement that failed */
    /* between kmdc_db_batch_send and kmdc_db_batch_collect: */
    struct kmdc_db_batch *pre;/* the deferred statements sent ahead of it */
    int total, sent;          /* statements to send, statements sent */
    int lost;                 /* the connection failed while sending */
    int in_flight;            /* sent, the results not read yet */
    kmdc_db_batch_item items[KMDC_DB_BATCH_MAX];
} kmdc_db_batch;

/* An empty batch for db. */
void kmdc_db_batch_init(kmdc_db_batch *b, kmdc_db *db);

/* Add a statement (pp may be NULL; its integers are copied, its text,
 * bytea and array values must stay valid until the run).  Returns its
 * index, -1 when the batch is full (the run then fails). */
int kmdc_db_batch_add(kmdc_db_batch *b, const char *sql, const kmdc_db_params *pp,
                      int binary_result);

/* Add a statement without parameters (BEGIN, COMMIT, ...). */
int kmdc_db_batch_command(kmdc_db_batch *b, const char *sql);

/*
 * Send every statement, then read every result.  KMDC_DB_OK when all
 * succeeded.  Otherwise b->failed is the first that did not and the return
 * is its kmdc_db_check_result (the statements after it were skipped by the
 * server), or KMDC_DB_UNAVAILABLE when the connection was lost (db marked
 * broken; a COMMIT in the batch may or may not have been carried out).
 */
kmdc_db_rc kmdc_db_batch_run(kmdc_db_batch *b);

/*
 * kmdc_db_batch_run in two halves, so the caller can work while PostgreSQL
 * runs the batch.  kmdc_db_batch_send writes every statement and the Sync
 * (blocking until libpq has sent them all: the parameters' memory may be
 * reused as soon as it returns) and does not wait for an answer:
 * KMDC_DB_OK, or a failure as kmdc_db_batch_run gives it (then nothing is
 * pending).  kmdc_db_batch_collect then reads the results and returns what
 * kmdc_db_batch_run would have.  Between the two, b must stay where it is,
 * and db runs nothing else; a db given back in between is thrown away
 * (kmdc_db_release), never pooled.
 */
kmdc_db_rc kmdc_db_batch_send(kmdc_db_batch *b);
kmdc_db_rc kmdc_db_batch_collect(kmdc_db_batch *b);

/*
 * Send the statements of prefix (a batch nobody runs) ahead of db's next
 * statement or batch, in its round trip.  Its results only count for
 * success: a failure there fails the statement that carried it
 * (KMDC_DB_DEFERRED_CONFLICT for a unique violation), and the server skips
 * what follows.  prefix must live as long as the request.
 */
void kmdc_db_defer(kmdc_db *db, kmdc_db_batch *prefix);

/* Statement i's result after a run (NULL when it has none); freed with the
 * request's pool. */
PGresult *kmdc_db_batch_result(const kmdc_db_batch *b, int i);

/* Run a statement without parameters or rows (BEGIN, COMMIT, ...). */
kmdc_db_rc kmdc_db_command(kmdc_db *db, const char *sql);

/* ROLLBACK; a connection where even that fails is invalidated.  Returns
 * the ROLLBACK's result. */
kmdc_db_rc kmdc_db_rollback(kmdc_db *db);

/* Free a result from kmdc_db_exec now.  Accepts NULL. */
void kmdc_db_clear(kmdc_db *db, PGresult *res);

#endif
