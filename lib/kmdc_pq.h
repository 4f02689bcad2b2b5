/*
 * kmdc_pq.h - the libpq helpers that mod_kmdc and kmdcadm share (one copy,
 * as PostgreSQL's own fe_utils serve every frontend program).
 *
 *   - the schema version this build needs (KMDC_SCHEMA_VERSION) and the one
 *     query that reads it from a connection (kmdc_db_schema_version); the
 *     session setting for prepared statements (kmdc_db_session_generic_plans);
 *   - parameter lists for PQexecParams/PQexecPrepared: text, int4 and int8
 *     (binary, network order), bytea (binary) and one-dimensional arrays in
 *     PostgreSQL's binary array format;
 *   - SQLSTATE helpers (unique violation, retryable, class);
 *   - column readers for integers, bytea, text and booleans, each checking
 *     the row, the column, NULL, the format and the type before reading.
 *
 * Free of httpd and APR: memory an array needs comes from a caller-supplied
 * buffer (kmdc_db_array_encode) or a caller-supplied allocator
 * (kmdc_db_param_array_alloc and friends); the module keeps APR-pool
 * wrappers in mod_kmdc_db.c.  Nothing here logs, and nothing keeps state
 * between calls.  Built as lib/libkmdcpq.la so that lib/libkmdc.la stays
 * free of libpq; it uses the byte-order helpers of kmdc_util.
 */
#ifndef KMDC_PQ_H
#define KMDC_PQ_H

#include <stddef.h>
#include <stdint.h>

#include <libpq-fe.h>

/* The schema version (max(version) of schema_migrations) that this build of
 * the store, the module and kmdcadm needs: sql/NNN_*.sql up to it. */
#define KMDC_SCHEMA_VERSION 6

/* ---- schema ------------------------------------------------------------- */

/* What a helper that runs a statement found. */
typedef enum kmdc_pq_rc {
    KMDC_PQ_OK = 0,
    KMDC_PQ_ERROR,            /* the statement failed (see its SQLSTATE) */
    KMDC_PQ_BROKEN            /* no result, or the connection is gone */
} kmdc_pq_rc;

/*
 * Read the schema version of pg: max(version) of schema_migrations, 0 when
 * the table is missing (undefined_table) or empty.  KMDC_PQ_OK sets
 * *version.  On KMDC_PQ_ERROR and KMDC_PQ_BROKEN *version is 0 and, when
 * failed is not NULL, *failed is the failed result (NULL when there was
 * none) for the caller's message, to be freed with PQclear; otherwise it is
 * cleared here.  Run it outside a transaction: a missing table fails the
 * statement.
 */
kmdc_pq_rc kmdc_db_schema_version(PGconn *pg, int *version, PGresult **failed);

/*
 * Make pg's session run prepared statements on their generic plan
 * (plan_cache_mode = force_generic_plan), so that a statement prepared on it
 * is planned once, not at each execution.  For a session of the caller's
 * own only (never through a transaction pooler).  KMDC_PQ_OK, or
 * KMDC_PQ_ERROR / KMDC_PQ_BROKEN with the reason in PQerrorMessage(pg).
 */
kmdc_pq_rc kmdc_db_session_generic_plans(PGconn *pg);

/* ---- parameters --------------------------------------------------------- */

/* Most parameters of one statement through kmdc_db_params. */
#define KMDC_DB_MAX_PARAMS 32

/* Parameters of one statement; fill with the kmdc_db_param_* functions and
 * pass n, values, lengths and formats to PQexecParams. */
typedef struct kmdc_db_params {
    int n;
    const char *values[KMDC_DB_MAX_PARAMS];
    int lengths[KMDC_DB_MAX_PARAMS];
    int formats[KMDC_DB_MAX_PARAMS];
    unsigned char ints[KMDC_DB_MAX_PARAMS][8];
    int overflow;             /* more than KMDC_DB_MAX_PARAMS were added, a
                               * value was too long, or memory ran out: the
                               * statement must not run */
} kmdc_db_params;

/* Start an empty parameter list. */
void kmdc_db_params_init(kmdc_db_params *pp);

/* Add a text parameter (NUL-terminated, must stay valid until the query;
 * NULL is SQL NULL). */
void kmdc_db_param_text(kmdc_db_params *pp, const char *s);

/* Add a bigint parameter, sent in binary (network order). */
void kmdc_db_param_int8(kmdc_db_params *pp, int64_t v);

/* Add an integer parameter, sent in binary (network order). */
void kmdc_db_param_int4(kmdc_db_params *pp, int32_t v);

/* Add a bytea parameter, sent in binary (must stay valid until the query;
 * zero bytes are an empty bytea, not NULL). */
void kmdc_db_param_bytea(kmdc_db_params *pp, const void *b, size_t len);

/* PostgreSQL type oids (pg_type.h): array element types and the types the
 * readers below accept. */
#define KMDC_DB_BOOLOID 16
#define KMDC_DB_BYTEAOID 17
#define KMDC_DB_INT8OID 20
#define KMDC_DB_INT2OID 21
#define KMDC_DB_INT4OID 23
#define KMDC_DB_TEXTOID 25

/*
 * One-dimensional arrays in PostgreSQL's binary array format (array_recv),
 * so that no element is ever read as anything but itself (a text literal
 * would read an unquoted element `null` as NULL).  Element i is vals[i] of
 * lens[i] bytes (int8: 8 bytes in network order).  The statement casts the
 * parameter to the matching array type, e.g. $1::text[].
 */

/* Bytes the encoding of n elements of lens[] takes; 0 when n < 0, a length
 * is negative, or the whole would not fit a parameter (2 GiB). */
size_t kmdc_db_array_size(int n, const int *lens);

/* Encode the array into buf (cap bytes, at least kmdc_db_array_size).
 * Returns the bytes written, 0 when it does not fit or is invalid. */
size_t kmdc_db_array_encode(unsigned char *buf, size_t cap, uint32_t elem_oid,
                            int n, const void *const *vals, const int *lens);

/* An allocator for the array helpers: size bytes that stay valid until the
 * statement ran (an arena, a pool); NULL when out of memory.  The helpers
 * never free what it returns. */
typedef void *(*kmdc_db_alloc_fn)(void *ctx, size_t size);

/* Add an array parameter whose encoding is allocated with alloc(ctx, ...).
 * A failure (bad input, no memory) sets pp->overflow. */
void kmdc_db_param_array_alloc(kmdc_db_params *pp, kmdc_db_alloc_fn alloc, void *ctx,
                               uint32_t elem_oid, int n, const void *const *vals,
                               const int *lens);

/* Add a bigint[] parameter of the n values v (binary, see above). */
void kmdc_db_param_int8_array_alloc(kmdc_db_params *pp, kmdc_db_alloc_fn alloc,
                                    void *ctx, const int64_t *v, int n);

/* Add a text[] parameter of the n NUL-terminated strings v (binary). */
void kmdc_db_param_text_array_alloc(kmdc_db_params *pp, kmdc_db_alloc_fn alloc,
                                    void *ctx, const char *const *v, int n);

/* ---- SQLSTATE ----------------------------------------------------------- */

/* SQLSTATEs the callers act on (PostgreSQL's errcodes appendix). */
#define KMDC_SQLSTATE_UNIQUE_VIOLATION "23505"
#define KMDC_SQLSTATE_SERIALIZATION "40001"
#define KMDC_SQLSTATE_DEADLOCK "40P01"
#define KMDC_SQLSTATE_UNDEFINED_TABLE "42P01"

/* The SQLSTATE of a failed result ("" when there is none, res NULL too). */
const char *kmdc_db_sqlstate(const PGresult *res);

/* 1 when res's SQLSTATE begins with prefix (a class such as "23", or a
 * whole code); 0 when it does not or res has none. */
int kmdc_db_sqlstate_is(const PGresult *res, const char *prefix);

/* 1 when res failed with unique_violation (23505). */
int kmdc_db_is_unique_violation(const PGresult *res);

/* 1 when res failed with serialization_failure (40001) or deadlock (40P01):
 * the transaction may be retried. */
int kmdc_db_is_retryable(const PGresult *res);

/* ---- column readers ----------------------------------------------------- */

/* Read a bigint/integer/smallint column: binary int8/int4/int2, or decimal
 * text.  Returns 1 and sets *v, 0 for NULL, a value of another type or a
 * row or column out of range. */
int kmdc_db_get_int64(const PGresult *res, int row, int col, int64_t *v);

/* A bytea column of a binary result: *data points into res (valid until it
 * is cleared), *len its length.  Returns 1, or 0 for NULL/a text result. */
int kmdc_db_get_bytea(const PGresult *res, int row, int col,
                      const unsigned char **data, size_t *len);

/* A text column as libpq holds it, NUL-terminated (NULL for SQL NULL or a
 * row or column out of range). */
const char *kmdc_db_get_text(const PGresult *res, int row, int col);

/*
 * A boolean column, the one rule for every caller: the column must be of
 * type bool; binary is one byte (non-zero: true), text is "t" or "f".
 * Returns 1 and sets *v, 0 for NULL, another type or any other spelling.
 */
int kmdc_db_get_bool(const PGresult *res, int row, int col, int *v);

#endif
