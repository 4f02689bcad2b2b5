/*
 * kmdc_pq.c - the libpq helpers shared by mod_kmdc and kmdcadm (see
 * kmdc_pq.h): the schema-version query, parameter lists with binary
 * integers, bytea and arrays, SQLSTATE tests and the column readers.
 *
 * In file order: schema, parameters, arrays, SQLSTATE, readers.  No APR,
 * no httpd, no logging, no global state.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_pq.h"
#include "kmdc_util.h"

/* The largest value one parameter may carry (libpq takes an int length). */
#define KMDC_DB_PARAM_MAX ((size_t)0x7fffffff)

/* The header of a one-dimensional binary array: ndim, has-null flag,
 * element type, then size and lower bound of the one dimension. */
#define KMDC_DB_ARRAY_HEAD 20

/* ------------------------------------------------------------------------ */
/* schema                                                                    */

kmdc_pq_rc kmdc_db_schema_version(PGconn *pg, int *version, PGresult **failed)
{
    static const char sql[] = "SELECT max(version) FROM schema_migrations";
    PGresult *res = NULL;
    kmdc_pq_rc rc = KMDC_PQ_ERROR;

    *version = 0;
    if (failed != NULL) {
        *failed = NULL;
    }
    res = PQexecParams(pg, sql, 0, NULL, NULL, NULL, NULL, 0);
    if (res == NULL) {
        rc = KMDC_PQ_BROKEN;
        goto out;
    }
    if (PQresultStatus(res) == PGRES_TUPLES_OK) {
        if (PQntuples(res) == 1 && PQnfields(res) == 1 && !PQgetisnull(res, 0, 0)) {
            char *end = NULL;
            long v = strtol(PQgetvalue(res, 0, 0), &end, 10);

            if (end == NULL || *end != '\0' || v < 0 || v > 1000000) {
                goto out;      /* not a version: an error without SQLSTATE */
            }
            *version = (int)v;
        }
        rc = KMDC_PQ_OK;
        goto out;
    }
    if (PQstatus(pg) != CONNECTION_OK) {
        rc = KMDC_PQ_BROKEN;
        goto out;
    }
    if (strcmp(kmdc_db_sqlstate(res), KMDC_SQLSTATE_UNDEFINED_TABLE) == 0) {
        rc = KMDC_PQ_OK;       /* no migration applied yet */
        goto out;
    }

out:
    if (rc != KMDC_PQ_OK && failed != NULL) {
        *failed = res;
        res = NULL;
    }
    PQclear(res);
    return rc;
}

/*
 * PostgreSQL plans a prepared statement again at every execution when it
 * estimates the generic plan dearer than one made for the values at hand; it
 * did so for mod_kmdc's mailbox listing (ten times longer to plan than to
 * run) and three statements of its relay.  Every statement the module
 * prepares finds its rows by key, whose generic plan is the one the values
 * would get.
 */
kmdc_pq_rc kmdc_db_session_generic_plans(PGconn *pg)
{
    PGresult *res = PQexecParams(pg, "SET plan_cache_mode TO force_generic_plan", 0, NULL,
                                 NULL, NULL, NULL, 0);
    kmdc_pq_rc rc = KMDC_PQ_OK;

    if (res == NULL || PQstatus(pg) != CONNECTION_OK) {
        rc = KMDC_PQ_BROKEN;
    }
    else if (PQresultStatus(res) != PGRES_COMMAND_OK) {
        rc = KMDC_PQ_ERROR;
    }
    PQclear(res);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* parameters                                                                */

void kmdc_db_params_init(kmdc_db_params *pp)
{
    memset(pp, 0, sizeof(*pp));
}

/* The index of the next parameter, -1 (and overflow set) when full. */
static int param_slot(kmdc_db_params *pp)
{
    if (pp->n >= KMDC_DB_MAX_PARAMS) {
        pp->overflow = 1;
        return -1;
    }
    return pp->n++;
}

/* Set parameter i to len binary bytes at b. */
static void param_binary(kmdc_db_params *pp, int i, const void *b, size_t len)
{
    if (len > KMDC_DB_PARAM_MAX) {
        pp->overflow = 1;
        return;
    }
    /* a non-NULL pointer even for 0 bytes: NULL would mean SQL NULL */
    pp->values[i] = b != NULL ? (const char *)b : "";
    pp->lengths[i] = (int)len;
    pp->formats[i] = 1;
}

void kmdc_db_param_text(kmdc_db_params *pp, const char *s)
{
    int i = param_slot(pp);

    if (i >= 0) {
        pp->values[i] = s;
        pp->lengths[i] = 0;
        pp->formats[i] = 0;
    }
}

void kmdc_db_param_int8(kmdc_db_params *pp, int64_t v)
{
    int i = param_slot(pp);

    if (i >= 0) {
        kmdc_put_u64(pp->ints[i], (uint64_t)v);
        param_binary(pp, i, pp->ints[i], 8);
    }
}

void kmdc_db_param_int4(kmdc_db_params *pp, int32_t v)
{
    int i = param_slot(pp);

    if (i >= 0) {
        kmdc_put_u32(pp->ints[i], (uint32_t)v);
        param_binary(pp, i, pp->ints[i], 4);
    }
}

void kmdc_db_param_bytea(kmdc_db_params *pp, const void *b, size_t len)
{
    int i = param_slot(pp);

    if (i >= 0) {
        param_binary(pp, i, b, len);
    }
}

/* ------------------------------------------------------------------------ */
/* arrays                                                                    */

/* Bytes of an array of n elements holding `payload` bytes in all, 0 when it
 * is too large for one parameter. */
static size_t array_total(int n, size_t payload)
{
    size_t total;

    if (n < 0 || (size_t)n > (KMDC_DB_PARAM_MAX - KMDC_DB_ARRAY_HEAD) / 4) {
        return 0;
    }
    total = KMDC_DB_ARRAY_HEAD + 4 * (size_t)n;
    if (payload > KMDC_DB_PARAM_MAX - total) {
        return 0;
    }
    return total + payload;
}

/* Write the header of an n-element array of elem_oid; returns the first
 * element's position. */
static unsigned char *array_head(unsigned char *w, uint32_t elem_oid, int n)
{
    kmdc_put_u32(w, 1);                /* one dimension */
    kmdc_put_u32(w + 4, 0);            /* no NULL element */
    kmdc_put_u32(w + 8, elem_oid);
    kmdc_put_u32(w + 12, (uint32_t)n); /* its size */
    kmdc_put_u32(w + 16, 1);           /* its lower bound */
    return w + KMDC_DB_ARRAY_HEAD;
}

/* Write one element: u32 length || bytes. */
static unsigned char *array_elem(unsigned char *w, const void *val, size_t len)
{
    kmdc_put_u32(w, (uint32_t)len);
    if (len > 0) {
        memcpy(w + 4, val, len);
    }
    return w + 4 + len;
}

size_t kmdc_db_array_size(int n, const int *lens)
{
    size_t payload = 0;

    if (n < 0 || (n > 0 && lens == NULL)) {
        return 0;
    }
    for (int k = 0; k < n; k++) {
        if (lens[k] < 0 || (size_t)lens[k] > KMDC_DB_PARAM_MAX - payload) {
            return 0;
        }
        payload += (size_t)lens[k];
    }
    return array_total(n, payload);
}

size_t kmdc_db_array_encode(unsigned char *buf, size_t cap, uint32_t elem_oid,
                            int n, const void *const *vals, const int *lens)
{
    size_t total = kmdc_db_array_size(n, lens);
    unsigned char *w;

    if (total == 0 || buf == NULL || cap < total || (n > 0 && vals == NULL)) {
        return 0;
    }
    w = array_head(buf, elem_oid, n);
    for (int k = 0; k < n; k++) {
        w = array_elem(w, vals[k], (size_t)lens[k]);
    }
    return total;
}

/* Take the next slot for an array of total bytes and allocate it; NULL
 * (overflow set) when full, invalid (total 0) or out of memory. */
static unsigned char *array_param(kmdc_db_params *pp, kmdc_db_alloc_fn alloc, void *ctx,
                                  size_t total)
{
    unsigned char *buf = NULL;
    int i = param_slot(pp);

    if (i < 0) {
        return NULL;
    }
    if (total == 0 || alloc == NULL || (buf = alloc(ctx, total)) == NULL) {
        pp->overflow = 1;
        return NULL;
    }
    param_binary(pp, i, buf, total);
    return buf;
}

void kmdc_db_param_array_alloc(kmdc_db_params *pp, kmdc_db_alloc_fn alloc, void *ctx,
                               uint32_t elem_oid, int n, const void *const *vals,
                               const int *lens)
{
    size_t total = kmdc_db_array_size(n, lens);
    unsigned char *buf;

    if (n > 0 && vals == NULL) {
        total = 0;
    }
    buf = array_param(pp, alloc, ctx, total);
    if (buf != NULL) {
        (void)kmdc_db_array_encode(buf, total, elem_oid, n, vals, lens);
    }
}

void kmdc_db_param_int8_array_alloc(kmdc_db_params *pp, kmdc_db_alloc_fn alloc,
                                    void *ctx, const int64_t *v, int n)
{
    size_t total = n > 0 && v == NULL ? 0
                   : array_total(n, n > 0 ? 8 * (size_t)n : 0);
    unsigned char *w = array_param(pp, alloc, ctx, total);

    if (w == NULL) {
        return;
    }
    w = array_head(w, KMDC_DB_INT8OID, n);
    for (int k = 0; k < n; k++) {
        unsigned char be[8];

        kmdc_put_u64(be, (uint64_t)v[k]);
        w = array_elem(w, be, sizeof(be));
    }
}

/* Bytes of a text[] of the n strings v, 0 when invalid or too large. */
static size_t text_array_size(const char *const *v, int n)
{
    size_t payload = 0;

    if (n < 0 || (n > 0 && v == NULL)) {
        return 0;
    }
    for (int k = 0; k < n; k++) {
        size_t len;

        if (v[k] == NULL) {
            return 0;
        }
        len = strlen(v[k]);
        if (len > KMDC_DB_PARAM_MAX - payload) {
            return 0;
        }
        payload += len;
    }
    return array_total(n, payload);
}

void kmdc_db_param_text_array_alloc(kmdc_db_params *pp, kmdc_db_alloc_fn alloc,
                                    void *ctx, const char *const *v, int n)
{
    unsigned char *w = array_param(pp, alloc, ctx, text_array_size(v, n));

    if (w == NULL) {
        return;
    }
    w = array_head(w, KMDC_DB_TEXTOID, n);
    for (int k = 0; k < n; k++) {
        w = array_elem(w, v[k], strlen(v[k]));
    }
}

/* ------------------------------------------------------------------------ */
/* SQLSTATE                                                                  */

const char *kmdc_db_sqlstate(const PGresult *res)
{
    const char *s = res != NULL ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    return s != NULL ? s : "";
}

int kmdc_db_sqlstate_is(const PGresult *res, const char *prefix)
{
    const char *s = kmdc_db_sqlstate(res);
    size_t n = prefix != NULL ? strlen(prefix) : 0;

    return n > 0 && strncmp(s, prefix, n) == 0;
}

int kmdc_db_is_unique_violation(const PGresult *res)
{
    return strcmp(kmdc_db_sqlstate(res), KMDC_SQLSTATE_UNIQUE_VIOLATION) == 0;
}

int kmdc_db_is_retryable(const PGresult *res)
{
    const char *s = kmdc_db_sqlstate(res);

    return strcmp(s, KMDC_SQLSTATE_SERIALIZATION) == 0
        || strcmp(s, KMDC_SQLSTATE_DEADLOCK) == 0;
}

/* ------------------------------------------------------------------------ */
/* column readers                                                            */

/* 1 when (row, col) is a non-NULL value of res. */
static int has_value(const PGresult *res, int row, int col)
{
    return res != NULL && row >= 0 && row < PQntuples(res) && col >= 0
        && col < PQnfields(res) && !PQgetisnull(res, row, col);
}

int kmdc_db_get_int64(const PGresult *res, int row, int col, int64_t *v)
{
    const unsigned char *p = NULL;
    int len = 0;

    if (!has_value(res, row, col)) {
        return 0;
    }
    p = (const unsigned char *)PQgetvalue(res, row, col);
    len = PQgetlength(res, row, col);
    if (PQfformat(res, col) == 0) {
        long long t = 0;
        char *end = NULL;

        errno = 0;
        t = strtoll((const char *)p, &end, 10);
        if (len == 0 || end == NULL || *end != '\0' || errno != 0) {
            return 0;
        }
        *v = (int64_t)t;
        return 1;
    }
    switch (PQftype(res, col)) {
    case KMDC_DB_INT8OID:
        if (len != 8) return 0;
        *v = (int64_t)kmdc_get_u64(p);
        return 1;
    case KMDC_DB_INT4OID:
        if (len != 4) return 0;
        *v = (int32_t)kmdc_get_u32(p);
        return 1;
    case KMDC_DB_INT2OID:
        if (len != 2) return 0;
        *v = (int16_t)kmdc_get_u16(p);
        return 1;
    default:
        return 0;
    }
}

int kmdc_db_get_bytea(const PGresult *res, int row, int col,
                      const unsigned char **data, size_t *len)
{
    if (!has_value(res, row, col) || PQfformat(res, col) != 1) {
        return 0;
    }
    *data = (const unsigned char *)PQgetvalue(res, row, col);
    *len = (size_t)PQgetlength(res, row, col);
    return 1;
}

const char *kmdc_db_get_text(const PGresult *res, int row, int col)
{
    if (!has_value(res, row, col)) {
        return NULL;
    }
    return PQgetvalue(res, row, col);
}

int kmdc_db_get_bool(const PGresult *res, int row, int col, int *v)
{
    const char *p;

    if (!has_value(res, row, col) || PQftype(res, col) != KMDC_DB_BOOLOID) {
        return 0;
    }
    p = PQgetvalue(res, row, col);
    if (PQfformat(res, col) == 1) {
        if (PQgetlength(res, row, col) != 1) {
            return 0;
        }
        *v = p[0] != 0;
        return 1;
    }
    if (strcmp(p, "t") == 0 || strcmp(p, "f") == 0) {
        *v = p[0] == 't';
        return 1;
    }
    return 0;
}
