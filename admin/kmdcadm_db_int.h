/*
 * kmdcadm_db_int.h - what the kmdcadm_db*.c files share and nothing else
 * sees: the connection handle's layout, the error mapping and the statement
 * helpers (defined in kmdcadm_db.c).
 */
#ifndef KMDCADM_DB_INT_H
#define KMDCADM_DB_INT_H

#include <stdint.h>

#include <libpq-fe.h>

#include "kmdc_err.h"
#include "kmdc_pq.h"
#include "kmdcadm_db.h"

struct kmdcadm_db {
    PGconn *conn;
};

/* A timestamp column as UTC "YYYY-MM-DDTHH:MM:SSZ" text. */
#define TS_FMT(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

/* Copy the first line of s (without its newline) into buf. */
void first_line(char *buf, size_t buflen, const char *s);

/* A failed result (or a NULL one) as a status and "could not WHAT: reason". */
kmdc_status db_error(kmdcadm_db *db, const PGresult *res, const char *what, kmdc_err *err);

/* What a statement runner calls to turn a failed result (or a NULL one) into
 * a status and "could not WHAT: reason". */
typedef kmdc_status (*pq_fail_fn)(PGconn *conn, const PGresult *res, const char *what,
                                  kmdc_err *err);

/* Run sql with the parameters pp (lib/kmdc_pq; NULL: none), results in format
 * (0 text, 1 binary); its status must be want, else fail() says why.  *out
 * is the result (NULL on failure); out NULL: the result is cleared. */
kmdc_status pq_run(PGconn *conn, PGresult **out, ExecStatusType want, const char *sql,
                   const kmdc_db_params *pp, int format, pq_fail_fn fail,
                   const char *what, kmdc_err *err);

/* A parameterised statement (text results) whose status must be want. */
kmdc_status db_exec(kmdcadm_db *db, PGresult **out, ExecStatusType want, const char *sql,
                    const kmdc_db_params *pp, const char *what, kmdc_err *err);

/* A statement whose result is not needed. */
kmdc_status db_command(kmdcadm_db *db, const char *sql, const kmdc_db_params *pp,
                       const char *what, kmdc_err *err);

/* A query with binary results. */
kmdc_status db_exec_bin(kmdcadm_db *db, PGresult **out, const char *sql,
                        const kmdc_db_params *pp, const char *what, kmdc_err *err);

/* Connect with conninfo (expanded: a string or a URI; NULL: libpq's
 * environment), to database dbname instead of its own when not NULL, as
 * application "kmdcadm".  KMDC_ERR_IO "database unavailable: ..." when the
 * server cannot be reached; *out (may be set then) is the caller's to PQfinish. */
kmdc_status pq_connect(PGconn **out, const char *conninfo, const char *dbname,
                       kmdc_err *err);

#endif
