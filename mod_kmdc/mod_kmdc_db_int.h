/*
 * mod_kmdc_db_int.h - what the files of the module's database layer share,
 * and nothing else includes (the store sees mod_kmdc_db.h only):
 *
 *   mod_kmdc_db.c        the per-child pools: connecting, the schema check,
 *                        borrowing and giving back, the pool's state in the log
 *   mod_kmdc_dbquery.c   one statement: run it, check its result, log a failure
 *   mod_kmdc_dbexec.c    prepared statements and batches (pipeline mode)
 */
#ifndef MOD_KMDC_DB_INT_H
#define MOD_KMDC_DB_INT_H

#include "apr_reslist.h"

#include "mod_kmdc_db.h"

struct kmdc_db_pool {
    apr_reslist_t *list;          /* the connections (PGconn *) */
    const char *conninfo;         /* KmdcDatabase */
    int min;                      /* KmdcDbPoolMin */
    int max;                      /* KmdcDbPoolMax */
    apr_int64_t idle;             /* KmdcDbPoolIdle, seconds */
    server_rec *s;                /* the first server using it, for logging */
    volatile apr_uint32_t state;  /* KMDC_STATE_* last logged */
    int txn_pooling;              /* KmdcDatabasePooling transaction */
    volatile apr_uint32_t pooler; /* a connection showed a pooler in between */
};

/* libpq messages end in newlines and may span lines: copy msg into buf
 * (cap bytes) as one log line.  Returns buf. */
const char *kmdc_db_one_line(char *buf, size_t cap, const char *msg);

/* Log that pool's database is unavailable for why (once per change of
 * state). */
void kmdc_db_note_down(kmdc_db_pool *pool, const char *why);

/* The result of one statement: KMDC_DB_OK for PGRES_COMMAND_OK or
 * PGRES_TUPLES_OK; KMDC_DB_UNAVAILABLE (db marked broken) when the
 * connection is gone or reached a read-only server; otherwise KMDC_DB_ERROR,
 * logged with its SQLSTATE and what sql was for (mod_kmdc_dbquery.c). */
kmdc_db_rc kmdc_db_check_result(kmdc_db *db, const PGresult *res, const char *sql);

/* Tie res to the request (freed with its pool, or by kmdc_db_clear). */
void kmdc_db_keep_result(kmdc_db *db, PGresult *res);

/* ---- mod_kmdc_dbexec.c: prepared statements ------------------------------- */

/* Most statements one connection keeps prepared. */
#define KMDC_DB_MAX_PREPARED 128

/* Let pg prepare the statements it runs (once each, by SQL text).  Called
 * by the pool on a new connection; 0 when libpq refused. */
int kmdc_db_stmt_register(PGconn *pg);

/* 1 when sql runs on pg without a Prepare first (prepared before, or pg
 * prepares nothing). */
int kmdc_db_stmt_ready(PGconn *pg, const char *sql);

/* Run one statement on pg: prepared when pg keeps a table of them (a
 * separate round trip prepares it the first time), else PQexecParams.  The
 * result as PQexecParams gives it. */
PGresult *kmdc_db_stmt_exec(PGconn *pg, const char *sql, const kmdc_db_params *pp,
                            int binary_result);

#endif
