/*
 * mod_kmdc_dbquery.c - one statement on a borrowed connection: run it
 * (kmdc_db_exec, through a prepared statement or a batch when one is due),
 * check its result, and log and count a failure by what the statement was
 * for and its SQLSTATE class (never a value); the results are tied to the
 * request's pool.  Also the APR-pool wrappers of lib/kmdc_pq's array
 * parameters.
 *
 * A failure is logged at error level with the purpose, the statement's verb
 * and table, the SQLSTATE and its class; the server's message only at debug
 * (it may name a file or quote a value).  A read-only server or a lost
 * connection marks the connection broken, so the pool drops it.
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <string.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"

#include "mod_kmdc.h"
#include "mod_kmdc_db_int.h"
#include "mod_kmdc_metrics.h"

/* SQLSTATE read_only_sql_transaction: the connection reached a standby (a
 * demoted primary, or a string without target_session_attrs). */
#define KMDC_SQLSTATE_READ_ONLY "25006"

/* ------------------------------------------------------------------------ */
/* array parameters from the request's pool                                  */

/* kmdc_db_alloc_fn over an APR pool. */
static void *pool_alloc(void *ctx, size_t size)
{
    return apr_palloc(ctx, size);
}

void kmdc_db_param_array(kmdc_db_params *pp, apr_pool_t *p, uint32_t elem_oid,
                         int n, const void *const *vals, const int *lens)
{
    kmdc_db_param_array_alloc(pp, pool_alloc, p, elem_oid, n, vals, lens);
}

void kmdc_db_param_int8_array(kmdc_db_params *pp, apr_pool_t *p,
                              const int64_t *v, int n)
{
    kmdc_db_param_int8_array_alloc(pp, pool_alloc, p, v, n);
}

void kmdc_db_param_text_array(kmdc_db_params *pp, apr_pool_t *p,
                              const char *const *v, int n)
{
    kmdc_db_param_text_array_alloc(pp, pool_alloc, p, v, n);
}

/* ------------------------------------------------------------------------ */
/* failures                                                                  */

/* The names of the SQLSTATE classes an operator meets (PostgreSQL's
 * errcodes appendix); NULL for the others. */
static const char *class_name(const char *state)
{
    static const struct { const char cls[3]; const char *name; } names[] = {
        { "08", "connection exception" },
        { "22", "data exception" },
        { "23", "integrity constraint violation" },
        { "25", "invalid transaction state" },
        { "28", "invalid authorization specification" },
        { "40", "transaction rollback" },
        { "42", "syntax error or access rule violation" },
        { "53", "insufficient resources" },
        { "54", "program limit exceeded" },
        { "55", "object not in prerequisite state" },
        { "57", "operator intervention" },
        { "58", "system error" },
        { "XX", "internal error" },
    };
    size_t i;

    for (i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
        if (strncmp(state, names[i].cls, 2) == 0) {
            return names[i].name;
        }
    }
    return NULL;
}

/* Is c part of an SQL identifier? */
static int ident_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9')
           || c == '_';
}

/* Does the keyword kw start at sql + i, as a whole word? */
static int keyword_at(const char *sql, size_t i, const char *kw)
{
    size_t n = strlen(kw);

    return (i == 0 || !ident_char(sql[i - 1])) && strncmp(sql + i, kw, n) == 0
           && !ident_char(sql[i + n]);
}

/*
 * What a statement does, from its text (the module's own constant SQL, never
 * a value): its verb and the table it writes or reads, e.g. "INSERT
 * audit_log", "SELECT cards", "COMMIT".  A WITH statement is named by the
 * first INSERT, UPDATE or DELETE inside it; a SELECT by its first FROM
 * outside parentheses.
 */
static const char *statement_label(char *buf, size_t cap, const char *sql)
{
    static const struct { const char *kw; const char *verb; } dml[] = {
        { "INSERT INTO", "INSERT" }, { "UPDATE", "UPDATE" }, { "DELETE FROM", "DELETE" },
    };
    const char *verb = NULL;
    const char *table = NULL;
    size_t i, k, n = 0;
    int depth = 0;

    while (*sql == ' ' || *sql == '\n' || *sql == '\t') {
        sql++;
    }
    for (i = 0; sql[i] != '\0' && table == NULL; i++) {
        char c = sql[i];

        if (c == '\'') {        /* a literal: skip to its end */
            for (i++; sql[i] != '\0' && sql[i] != '\''; i++) {
            }
            if (sql[i] == '\0') {
                break;
            }
            continue;
        }
        if (c == '(') {
            depth++;
            continue;
        }
        if (c == ')') {
            depth--;
            continue;
        }
        for (k = 0; k < sizeof(dml) / sizeof(dml[0]); k++) {
            if (keyword_at(sql, i, dml[k].kw)) {
                verb = dml[k].verb;
                table = sql + i + strlen(dml[k].kw);
                break;
            }
        }
        if (table == NULL && depth == 0 && keyword_at(sql, i, "FROM")
            && keyword_at(sql, 0, "SELECT")) {
            verb = "SELECT";
            table = sql + i + 4;
        }
    }
    if (table == NULL) {
        /* BEGIN, COMMIT, ROLLBACK, a SELECT of no table: its first word */
        while (ident_char(sql[n]) && n + 1 < cap) {
            buf[n] = sql[n];
            n++;
        }
        buf[n] = '\0';
        return n > 0 ? buf : "statement";
    }
    while (*table == ' ' || *table == '\n') {
        table++;
    }
    n = (size_t)apr_snprintf(buf, cap, "%s ", verb);
    while (ident_char(*table) && n + 1 < cap) {
        buf[n++] = *table++;
    }
    buf[n] = '\0';
    return buf;
}

/*
 * One failed statement: logged at error level (purpose, statement, SQLSTATE
 * and its class; the server's own message only at debug, since it may name a
 * file or quote a value), counted by class, and noted for /health.
 */
static void note_failure(kmdc_db *db, const char *sql, const char *sqlstate,
                         const char *primary, int lost)
{
    const char *state = sqlstate != NULL && sqlstate[0] != '\0' ? sqlstate
                        : lost ? "08006" : "";
    const char *cname = state[0] != '\0' ? class_name(state) : NULL;
    char what[64];

    statement_label(what, sizeof(what), sql);
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, db->r,
                  "kmdc: database statement failed: %s (%s), SQLSTATE %s, "
                  "class %.2s%s%s%s", db->purpose != NULL ? db->purpose : "request",
                  what, state[0] != '\0' ? state : "none",
                  state[0] != '\0' ? state : "--", cname != NULL ? " (" : "",
                  cname != NULL ? cname : "", cname != NULL ? ")" : "");
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, db->r,
                  "kmdc: the database's message: %s", primary != NULL ? primary : "?");
    kmdc_metrics_db_error(db->pool != NULL ? db->pool->conninfo : NULL, state);
}

static apr_status_t res_cleanup(void *data)
{
    PQclear(data);
    return APR_SUCCESS;
}

kmdc_db_rc kmdc_db_exec(kmdc_db *db, const char *sql, const kmdc_db_params *pp,
                        int binary_result, PGresult **res)
{
    request_rec *r = db->r;
    PGresult *pr = NULL;

    *res = NULL;
    if (db->pg == NULL) {
        return KMDC_DB_UNAVAILABLE;
    }
    if (pp != NULL && pp->overflow) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "kmdc: a statement has more than %d parameters",
                      KMDC_DB_MAX_PARAMS);
        return KMDC_DB_ERROR;
    }
    if (db->prefix != NULL || !kmdc_db_stmt_ready(db->pg, sql)) {
        /* the deferred statements or the Prepare ride along: one round trip
         * for all */
        kmdc_db_batch *b = apr_palloc(r->pool, sizeof(*b));
        kmdc_db_rc rc;
        int i;

        kmdc_db_batch_init(b, db);
        i = kmdc_db_batch_add(b, sql, pp, binary_result);
        rc = kmdc_db_batch_run(b);
        *res = kmdc_db_batch_result(b, i);
        return rc;
    }
    pr = kmdc_db_stmt_exec(db->pg, sql, pp, binary_result);
    if (pr == NULL) {
        db->broken = 1;
        note_failure(db, sql, NULL, "no result (out of memory, or the connection "
                     "is gone)", 1);
        return KMDC_DB_UNAVAILABLE;
    }
    apr_pool_cleanup_register(r->pool, pr, res_cleanup, apr_pool_cleanup_null);
    *res = pr;
    return kmdc_db_check_result(db, pr, sql);
}

kmdc_db_rc kmdc_db_check_result(kmdc_db *db, const PGresult *pr, const char *sql)
{
    request_rec *r = db->r;
    ExecStatusType st = PQresultStatus(pr);
    const char *primary = NULL;

    if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
        return KMDC_DB_OK;
    }
    primary = PQresultErrorField(pr, PG_DIAG_MESSAGE_PRIMARY);
    if (strcmp(kmdc_db_sqlstate(pr), KMDC_SQLSTATE_READ_ONLY) == 0) {
        /* a standby (after a failover, or a string that does not ask for
         * read-write): this connection is dropped, the next one is made
         * afresh and finds the primary */
        db->broken = 1;
        kmdc_db_note_down(db->pool, "a connection reached a read-only server (is "
                  "target_session_attrs=read-write in the connection string?)");
        return KMDC_DB_UNAVAILABLE;
    }
    if (PQstatus(db->pg) != CONNECTION_OK) {
        char buf[512];

        db->broken = 1;
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "kmdc: the database connection was lost: %s",
                      kmdc_db_one_line(buf, sizeof(buf), PQerrorMessage(db->pg)));
        note_failure(db, sql, kmdc_db_sqlstate(pr), primary, 1);
        return KMDC_DB_UNAVAILABLE;
    }
    note_failure(db, sql, kmdc_db_sqlstate(pr), primary, 0);
    return KMDC_DB_ERROR;
}

kmdc_db_rc kmdc_db_command(kmdc_db *db, const char *sql)
{
    PGresult *res = NULL;
    kmdc_db_rc rc = kmdc_db_exec(db, sql, NULL, 0, &res);

    kmdc_db_clear(db, res);
    return rc;
}

void kmdc_db_keep_result(kmdc_db *db, PGresult *res)
{
    apr_pool_cleanup_register(db->r->pool, res, res_cleanup, apr_pool_cleanup_null);
}

void kmdc_db_clear(kmdc_db *db, PGresult *res)
{
    if (res != NULL && db != NULL && db->r != NULL) {
        apr_pool_cleanup_run(db->r->pool, res, res_cleanup);
    }
}

kmdc_db_rc kmdc_db_rollback(kmdc_db *db)
{
    kmdc_db_rc rc = kmdc_db_command(db, "ROLLBACK");

    if (rc != KMDC_DB_OK) {
        kmdc_db_invalidate(db);
    }
    return rc;
}
