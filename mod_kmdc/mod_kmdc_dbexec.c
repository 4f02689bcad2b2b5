/*
 * mod_kmdc_dbexec.c - how a statement reaches PostgreSQL: prepared once per
 * connection, and batches of statements sent in one round trip (libpq's
 * pipeline mode).
 *
 * Prepared statements.  A connection made by the pool carries a small table
 * of the statements prepared on it (libpq's event procedures keep it with
 * the PGconn: PQsetInstanceData, cleared on PQreset, freed on PQfinish).  A
 * statement is prepared the first time a connection runs it and executed by
 * name from then on, so PostgreSQL parses it once per connection, and plans
 * it once too since the session runs with plan_cache_mode =
 * force_generic_plan (kmdc_db_session_generic_plans, from mod_kmdc_db.c).
 * The table is keyed by the SQL text; it holds at most KMDC_DB_MAX_PREPARED
 * statements (the module has fewer), beyond which statements run
 * unprepared.  A connection without
 * the table (the pool was told not to prepare, e.g. behind a pooler in
 * transaction mode) runs every statement with PQexecParams.
 *
 * Batches.  Statements added to a kmdc_db_batch are sent together, followed
 * by one Sync, and their results read in order: one network round trip for
 * the lot.  The server runs them one after the other as if they had been
 * sent apart (each its own snapshot under READ COMMITTED); after the first
 * error it skips the rest until the Sync, so a batch ending in COMMIT commits
 * only when every statement before succeeded.  The connection is blocking:
 * the results of the statements batched here are small, so the server never
 * waits on us while we are still writing.  A batch may also be sent
 * (kmdc_db_batch_send) and its results read later (kmdc_db_batch_collect):
 * libpq has copied every parameter and written every byte by the time the
 * send returns, and until the collect the connection stays in pipeline mode
 * with the answers pending (a connection given back like that is thrown
 * away, mod_kmdc_db.c).
 */
#include <stdlib.h>
#include <string.h>

#include <libpq-events.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"

#include "mod_kmdc.h"
#include "mod_kmdc_db_int.h"
#include "mod_kmdc_metrics.h"

/* ---- the statements prepared on one connection ----------------------------- */

typedef struct prepared_set {
    int n;                                   /* slots used */
    char *sql[KMDC_DB_MAX_PREPARED];         /* NULL: free slot */
} prepared_set;

static void prepared_clear(prepared_set *ps)
{
    int i;

    for (i = 0; i < ps->n; i++) {
        free(ps->sql[i]);
        ps->sql[i] = NULL;
    }
    ps->n = 0;
}

static int prepared_event(PGEventId id, void *info, void *pass)
{
    (void)pass;
    switch (id) {
    case PGEVT_REGISTER: {
        PGEventRegister *e = info;
        prepared_set *ps = calloc(1, sizeof(*ps));

        if (ps == NULL || !PQsetInstanceData(e->conn, prepared_event, ps)) {
            free(ps);
            return 0;
        }
        return 1;
    }
    case PGEVT_CONNRESET: {
        /* a new session: nothing is prepared on it */
        PGEventConnReset *e = info;
        prepared_set *ps = PQinstanceData(e->conn, prepared_event);

        if (ps != NULL) {
            prepared_clear(ps);
        }
        return 1;
    }
    case PGEVT_CONNDESTROY: {
        PGEventConnDestroy *e = info;
        prepared_set *ps = PQinstanceData(e->conn, prepared_event);

        if (ps != NULL) {
            prepared_clear(ps);
            free(ps);
        }
        return 1;
    }
    default:
        return 1;
    }
}

int kmdc_db_stmt_register(PGconn *pg)
{
    return PQregisterEventProc(pg, prepared_event, "mod_kmdc prepared statements",
                               NULL);
}

/* The slot of sql on pg, -1 when it is not prepared (or pg keeps no table). */
static int prepared_find(const prepared_set *ps, const char *sql)
{
    int i;

    if (ps == NULL) {
        return -1;
    }
    for (i = 0; i < ps->n; i++) {
        if (ps->sql[i] != NULL && strcmp(ps->sql[i], sql) == 0) {
            return i;
        }
    }
    return -1;
}

/* The first free slot of ps (KMDC_DB_MAX_PREPARED when it is full). */
static int prepared_free_slot(const prepared_set *ps)
{
    int i;

    for (i = 0; i < ps->n && ps->sql[i] != NULL; i++) {
    }
    return i;
}

/* A free slot for sql (not yet prepared), -1 when the table is full. */
static int prepared_claim(prepared_set *ps, const char *sql)
{
    int i;

    if (ps == NULL) {
        return -1;
    }
    i = prepared_free_slot(ps);
    if (i == KMDC_DB_MAX_PREPARED || (ps->sql[i] = strdup(sql)) == NULL) {
        return -1;
    }
    if (i == ps->n) {
        ps->n++;
    }
    return i;
}

static void prepared_forget(prepared_set *ps, int slot)
{
    free(ps->sql[slot]);
    ps->sql[slot] = NULL;
}

static void stmt_name(char *buf, int slot)
{
    apr_snprintf(buf, 16, "kmdc_%d", slot);
}

int kmdc_db_stmt_ready(PGconn *pg, const char *sql)
{
    prepared_set *ps = PQinstanceData(pg, prepared_event);

    if (ps == NULL || prepared_find(ps, sql) >= 0) {
        return 1;
    }
    /* full: it will run unprepared */
    return prepared_free_slot(ps) == KMDC_DB_MAX_PREPARED;
}

PGresult *kmdc_db_stmt_exec(PGconn *pg, const char *sql, const kmdc_db_params *pp,
                            int binary_result)
{
    prepared_set *ps = PQinstanceData(pg, prepared_event);
    int n = pp != NULL ? pp->n : 0;
    const char *const *values = pp != NULL ? pp->values : NULL;
    const int *lengths = pp != NULL ? pp->lengths : NULL;
    const int *formats = pp != NULL ? pp->formats : NULL;
    char name[16];
    int slot;

    if ((slot = prepared_find(ps, sql)) < 0 && (slot = prepared_claim(ps, sql)) >= 0) {
        PGresult *prep;

        stmt_name(name, slot);
        kmdc_metrics_db_round_trip();
        prep = PQprepare(pg, name, sql, 0, NULL);
        if (prep == NULL || PQresultStatus(prep) != PGRES_COMMAND_OK) {
            /* e.g. inside an aborted transaction: run it unprepared, which
             * reports the same error */
            prepared_forget(ps, slot);
            slot = -1;
        }
        PQclear(prep);
    }
    kmdc_metrics_db_round_trip();
    if (slot < 0) {
        return PQexecParams(pg, sql, n, NULL, values, lengths, formats, binary_result);
    }
    stmt_name(name, slot);
    return PQexecPrepared(pg, name, n, values, lengths, formats, binary_result);
}

/* ---- batches ------------------------------------------------------------------ */

void kmdc_db_batch_init(kmdc_db_batch *b, kmdc_db *db)
{
    memset(b, 0, sizeof(*b));
    b->db = db;
}

int kmdc_db_batch_add(kmdc_db_batch *b, const char *sql, const kmdc_db_params *pp,
                      int binary_result)
{
    kmdc_db_batch_item *it;
    int i;

    if (b->n >= KMDC_DB_BATCH_MAX || (pp != NULL && pp->overflow)) {
        b->overflow = 1;
        return -1;
    }
    it = &b->items[b->n];
    memset(it, 0, sizeof(*it));
    it->sql = sql;
    it->binary = binary_result;
    it->prepare_slot = -1;
    if (pp != NULL) {
        /* the integers live inside the caller's kmdc_db_params, which it may
         * reuse for the next statement: point at the copy's */
        it->pp = *pp;
        for (i = 0; i < pp->n; i++) {
            if (pp->values[i] == (const char *)pp->ints[i]) {
                it->pp.values[i] = (const char *)it->pp.ints[i];
            }
        }
    }
    return b->n++;
}

int kmdc_db_batch_command(kmdc_db_batch *b, const char *sql)
{
    return kmdc_db_batch_add(b, sql, NULL, 0);
}

/* Queue item it on pg; 0 when libpq refused to (the connection is gone). */
static int batch_send(PGconn *pg, prepared_set *ps, kmdc_db_batch_item *it)
{
    char name[16];
    int slot;

    slot = prepared_find(ps, it->sql);
    if (slot < 0 && (slot = prepared_claim(ps, it->sql)) >= 0) {
        stmt_name(name, slot);
        if (!PQsendPrepare(pg, name, it->sql, 0, NULL)) {
            prepared_forget(ps, slot);
            return 0;
        }
        it->prepare_slot = slot;         /* its result comes first */
    }
    if (slot < 0) {
        return PQsendQueryParams(pg, it->sql, it->pp.n, NULL, it->pp.values,
                                 it->pp.lengths, it->pp.formats, it->binary);
    }
    stmt_name(name, slot);
    return PQsendQueryPrepared(pg, name, it->pp.n, it->pp.values, it->pp.lengths,
                               it->pp.formats, it->binary);
}

/* The next result of the pipeline and the NULL that ends it; NULL when the
 * connection failed. */
static PGresult *batch_result(PGconn *pg)
{
    PGresult *res = PQgetResult(pg), *extra;

    if (res == NULL) {
        return NULL;
    }
    while ((extra = PQgetResult(pg)) != NULL) {
        PQclear(extra);                  /* not expected from one statement */
    }
    return res;
}

void kmdc_db_defer(kmdc_db *db, kmdc_db_batch *prefix)
{
    db->prefix = prefix;
}

/* Item i of the statements pre (may be NULL) then b. */
static kmdc_db_batch_item *item_at(kmdc_db_batch *pre, kmdc_db_batch *b, int i)
{
    int np = pre != NULL ? pre->n : 0;

    return i < np ? &pre->items[i] : &b->items[i - np];
}

kmdc_db_rc kmdc_db_batch_send(kmdc_db_batch *b)
{
    kmdc_db *db = b->db;
    PGconn *pg = db != NULL ? db->pg : NULL;
    kmdc_db_batch *pre = db != NULL ? db->prefix : NULL;
    prepared_set *ps;
    int i, total;

    b->failed = -1;
    b->pre = NULL;
    b->sent = 0;
    b->total = 0;
    b->lost = 0;
    b->in_flight = 0;
    if (pg == NULL) {
        return KMDC_DB_UNAVAILABLE;
    }
    db->prefix = NULL;                   /* sent now, whatever happens */
    if (b->overflow || (pre != NULL && pre->overflow)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, db->r,
                      "kmdc: a batch of statements is larger than the module allows");
        return KMDC_DB_ERROR;
    }
    total = (pre != NULL ? pre->n : 0) + b->n;
    if (total == 0) {
        return KMDC_DB_OK;
    }
    ps = PQinstanceData(pg, prepared_event);
    if (!PQenterPipelineMode(pg)) {
        db->broken = 1;
        return KMDC_DB_UNAVAILABLE;
    }
    b->pre = pre;
    b->total = total;
    b->in_flight = 1;
    for (i = 0; i < total; i++) {
        if (!batch_send(pg, ps, item_at(pre, b, i))) {
            break;
        }
        b->sent++;
    }
    kmdc_metrics_db_round_trip();
    /* the Sync flushes: in blocking mode every byte has left when it returns */
    if (b->sent < total || !PQpipelineSync(pg)) {
        b->lost = 1;
    }
    return KMDC_DB_OK;
}

kmdc_db_rc kmdc_db_batch_collect(kmdc_db_batch *b)
{
    kmdc_db *db = b->db;
    PGconn *pg = db != NULL ? db->pg : NULL;
    kmdc_db_batch *pre = b->pre;
    prepared_set *ps;
    kmdc_db_rc rc = KMDC_DB_OK;
    int i, lost = b->lost, failed = -1;

    if (!b->in_flight) {
        return b->total == 0 && pg != NULL ? KMDC_DB_OK : KMDC_DB_UNAVAILABLE;
    }
    b->in_flight = 0;
    if (pg == NULL) {
        return KMDC_DB_UNAVAILABLE;
    }
    ps = PQinstanceData(pg, prepared_event);
    /* the results, in order: a Prepare's first when one was sent */
    for (i = 0; i < b->sent && !lost; i++) {
        kmdc_db_batch_item *it = item_at(pre, b, i);
        PGresult *res;

        if (it->prepare_slot >= 0) {
            if ((res = batch_result(pg)) == NULL) {
                lost = 1;
                break;
            }
            if (PQresultStatus(res) != PGRES_COMMAND_OK) {
                prepared_forget(ps, it->prepare_slot);
            }
            PQclear(res);
        }
        if ((res = batch_result(pg)) == NULL) {
            lost = 1;
            break;
        }
        kmdc_db_keep_result(db, res);
        it->res = res;
        if (rc != KMDC_DB_OK) {
            continue;                    /* skipped by the server */
        }
        if (pre != NULL && i < pre->n && PQresultStatus(res) == PGRES_FATAL_ERROR
            && kmdc_db_is_unique_violation(res)) {
            /* a deferred statement's unique violation is its answer (a
             * replayed nonce), not a failure to log */
            rc = KMDC_DB_DEFERRED_CONFLICT;
            failed = i;
        }
        else if ((rc = kmdc_db_check_result(db, res, it->sql)) != KMDC_DB_OK) {
            failed = i;
        }
    }
    if (!lost) {
        PGresult *sync = PQgetResult(pg);

        if (sync == NULL || PQresultStatus(sync) != PGRES_PIPELINE_SYNC) {
            lost = 1;
        }
        PQclear(sync);
    }
    if (lost || !PQexitPipelineMode(pg) || PQstatus(pg) != CONNECTION_OK) {
        /* prepares whose answer never came may or may not exist now */
        for (i = 0; i < b->total; i++) {
            kmdc_db_batch_item *it = item_at(pre, b, i);

            if (it->prepare_slot >= 0 && it->res == NULL) {
                prepared_forget(ps, it->prepare_slot);
            }
        }
        db->broken = 1;
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, db->r,
                      "kmdc: the database connection was lost during a batch of "
                      "statements");
        return KMDC_DB_UNAVAILABLE;
    }
    if (failed >= 0 && pre != NULL && failed < pre->n) {
        b->failed = 0;                   /* the deferred statements failed:
                                          * nothing of b ran */
        return rc;
    }
    if (failed >= 0) {
        b->failed = failed - (pre != NULL ? pre->n : 0);
    }
    return rc;
}

kmdc_db_rc kmdc_db_batch_run(kmdc_db_batch *b)
{
    kmdc_db_rc rc = kmdc_db_batch_send(b);

    if (rc != KMDC_DB_OK || b->total == 0) {
        return rc;
    }
    return kmdc_db_batch_collect(b);
}

PGresult *kmdc_db_batch_result(const kmdc_db_batch *b, int i)
{
    return i >= 0 && i < b->n ? b->items[i].res : NULL;
}
