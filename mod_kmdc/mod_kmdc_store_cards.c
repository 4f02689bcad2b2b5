/*
 * mod_kmdc_store_cards.c - the PostgreSQL store: request authentication,
 * health, cards and activation.
 *
 * Columns are read one way throughout: a result is asked for in binary (so
 * bytea, bigint and int come back as their bytes), `status` is text (its
 * characters) parsed with kmdc_card_status_parse, and a boolean is read with
 * get_bool below, never by peeking at a text spelling.
 */
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"

#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_store_pg.h"

/* The status column (text, in either result format); 0 when unreadable. */
static kmdc_card_status get_status(const PGresult *res, int row, int col)
{
    return kmdc_card_status_parse(kmdc_db_get_text(res, row, col));
}

/* Log that card serial's row could not be read (column what). */
static void log_unreadable(kmdc_pg_store *ps, uint64_t serial, const char *what)
{
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, ps->r,
                  "store: card %016" APR_UINT64_T_HEX_FMT ": its %s cannot be read",
                  (apr_uint64_t)serial, what);
}

/* ------------------------------------------------------------------------ */
/* request authentication                                                    */

kmdc_store_rc kmdc_pg_auth_load(kmdc_store *st, uint64_t serial, kmdc_auth_card *out)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_store_rc rc;

    memset(out, 0, sizeof(*out));
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        goto out;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    rc = kmdc_pg_row(db, "SELECT status, auth_key FROM cards WHERE serial = $1",
                     &pp, 1, &res);
    if (rc != KMDC_STORE_OK) {
        goto out;
    }
    out->status = get_status(res, 0, 0);
    if (out->status == 0 || !kmdc_pg_get_bytes(res, 0, 1, out->auth_key, KMDC_WRAPPED_LEN)) {
        log_unreadable(ps, serial, "status or auth_key");
        rc = KMDC_STORE_ERROR;
        goto out;
    }
    rc = KMDC_STORE_OK;
out:
    kmdc_db_clear(db, res);
    kmdc_db_release(db);
    return rc;
}

/* The nonce record as a batch of its own: a transaction that commits before
 * whatever follows it in the round trip.  A nonce recorded before fails the
 * INSERT (no ON CONFLICT here), and the server then skips the rest. */
static kmdc_db_batch *nonce_batch(kmdc_pg_store *ps, uint64_t serial,
                                  const uint8_t *nonce, size_t len, int durable, int *ins)
{
    kmdc_db_batch *b = apr_palloc(ps->r->pool, sizeof(*b));
    kmdc_db_params pp;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_bytea(&pp, apr_pmemdup(ps->r->pool, nonce, len), len);
    kmdc_db_batch_init(b, NULL);
    *ins = kmdc_pg_add_own_tx(b, "INSERT INTO request_nonces (serial, nonce) "
                              "VALUES ($1, $2)", &pp, durable);
    return b;
}

kmdc_store_rc kmdc_pg_nonce_record(kmdc_store *st, uint64_t serial,
                                   const uint8_t *nonce, size_t len, int durable)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db_batch *b;
    kmdc_store_rc rc;
    int ins = 0;

    b = nonce_batch(ps, serial, nonce, len, durable, &ins);
    if (!durable) {
        ps->deferred = b;                /* with the next operation */
        return KMDC_STORE_OK;
    }
    ps->deferred = b;
    rc = kmdc_pg_settle(st);
    return rc == KMDC_STORE_REPLAY ? KMDC_STORE_CONFLICT : rc;
}

kmdc_store_rc kmdc_pg_settle(kmdc_store *st)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = NULL;
    kmdc_db_batch none;
    kmdc_store_rc rc;

    if (ps->deferred == NULL) {
        return KMDC_STORE_OK;
    }
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        return rc;
    }
    kmdc_db_batch_init(&none, db);       /* the deferred statements alone */
    rc = kmdc_pg_failed(kmdc_db_batch_run(&none));
    kmdc_db_release(db);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* health                                                                    */

kmdc_store_rc kmdc_pg_health(kmdc_store *st)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = NULL;
    kmdc_db_rc dbrc;
    kmdc_store_rc rc;

    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        goto out;
    }
    dbrc = kmdc_db_check_schema(db);
    if (dbrc == KMDC_DB_UNAVAILABLE) {
        /* the pooled connection died since its last use: one fresh try */
        kmdc_db_invalidate(db);
        db = NULL;
        if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
            goto out;
        }
        dbrc = kmdc_db_check_schema(db);
    }
    rc = kmdc_pg_failed(dbrc);
out:
    kmdc_db_release(db);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* cards                                                                     */

kmdc_store_rc kmdc_pg_card_get(kmdc_store *st, uint64_t serial, kmdc_card_info *out)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_store_rc rc;

    memset(out, 0, sizeof(*out));
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        goto out;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    rc = kmdc_pg_row(db, "SELECT status, locked, up_next, down_next FROM cards "
                     "WHERE serial = $1", &pp, 1, &res);
    if (rc != KMDC_STORE_OK) {
        goto out;
    }
    out->status = get_status(res, 0, 0);
    if (out->status == 0 || !kmdc_db_get_bool(res, 0, 1, &out->locked)
        || !kmdc_pg_get_counter(res, 0, 2, &out->up_next)
        || !kmdc_pg_get_counter(res, 0, 3, &out->down_next)) {
        log_unreadable(ps, serial, "row");
        rc = KMDC_STORE_ERROR;
        goto out;
    }
    rc = KMDC_STORE_OK;
out:
    kmdc_db_clear(db, res);
    kmdc_db_release(db);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* activation                                                                */

/* Read the locked row res into row. */
static int read_activation(const PGresult *res, kmdc_activation *row)
{
    const unsigned char *mac = NULL;
    size_t maclen = 0;
    int64_t key_id = 0;

    row->status = get_status(res, 0, 0);
    if (row->status == 0 || !kmdc_db_get_bool(res, 0, 1, &row->locked)
        || !kmdc_db_get_bool(res, 0, 3, &row->code_expired)
        || !kmdc_db_get_int64(res, 0, 4, &key_id) || key_id < 0
        || key_id > (int64_t)UINT32_MAX
        || !kmdc_pg_get_counter(res, 0, 5, &row->up_next)
        || !kmdc_pg_get_counter(res, 0, 6, &row->down_next)
        || !kmdc_pg_get_bytes(res, 0, 7, row->up_chain, KMDC_WRAPPED_LEN)
        || !kmdc_pg_get_bytes(res, 0, 8, row->down_chain, KMDC_WRAPPED_LEN)
        || !kmdc_pg_get_bytes(res, 0, 9, row->auth_key, KMDC_WRAPPED_LEN)) {
        return 0;
    }
    row->key_id = (uint32_t)key_id;
    if (!PQgetisnull(res, 0, 2)) {
        if (!kmdc_db_get_bytea(res, 0, 2, &mac, &maclen) || maclen != sizeof(row->access_mac)) {
            return 0;
        }
        memcpy(row->access_mac, mac, maclen);
        row->has_access_mac = 1;
    }
    return 1;
}

/* A failed attempt on the locked row: count it (and lock at the limit),
 * write the audit row, COMMIT. */
static kmdc_db_rc count_failure(kmdc_db *db, uint64_t serial, int failure_limit,
                                kmdc_activation_result *result)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc rc;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_int4(&pp, (int32_t)failure_limit);
    rc = kmdc_db_exec(db, "UPDATE cards SET activation_failures = activation_failures + 1, "
                      "locked = locked OR activation_failures + 1 >= $2 "
                      "WHERE serial = $1 RETURNING activation_failures, locked",
                      &pp, 1, &res);
    if (rc == KMDC_DB_OK && (PQntuples(res) != 1
                             || !kmdc_db_get_int64(res, 0, 0, &result->failures)
                             || !kmdc_db_get_bool(res, 0, 1, &result->locked))) {
        rc = KMDC_DB_ERROR;
    }
    kmdc_db_clear(db, res);
    if (rc == KMDC_DB_OK) {
        rc = kmdc_pg_audit(db, serial, "card.activation_failed",
                        json_pack("{s:I, s:b}", "failures", (json_int_t)result->failures,
                                  "locked", result->locked));
    }
    if (rc == KMDC_DB_OK) {
        rc = kmdc_db_command(db, "COMMIT");
    }
    return rc;
}

/* Store the rotated keys of an accepted activation, write the audit row,
 * COMMIT. */
static kmdc_db_rc store_activation(kmdc_db *db, uint64_t serial,
                                   const kmdc_activation_keys *keys)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc rc;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_bytea(&pp, keys->up_chain, KMDC_WRAPPED_LEN);
    kmdc_db_param_bytea(&pp, keys->down_chain, KMDC_WRAPPED_LEN);
    kmdc_db_param_bytea(&pp, keys->auth_key, KMDC_WRAPPED_LEN);
    kmdc_db_param_int4(&pp, (int32_t)keys->key_id);
    rc = kmdc_db_exec(db, "UPDATE cards SET status = 'active', activated_at = now(), "
                      "access_mac = NULL, access_expires = NULL, "
                      "activation_failures = 0, locked = false, "
                      "up_chain = $2, down_chain = $3, auth_key = $4, key_id = $5 "
                      "WHERE serial = $1 AND status = 'issued'", &pp, 0, &res);
    if (rc == KMDC_DB_OK && strcmp(PQcmdTuples(res), "1") != 0) {
        rc = KMDC_DB_ERROR;
    }
    kmdc_db_clear(db, res);
    if (rc == KMDC_DB_OK) {
        rc = kmdc_pg_audit(db, serial, "card.activated",
                        json_pack("{s:I}", "key_id", (json_int_t)keys->key_id));
    }
    if (rc == KMDC_DB_OK) {
        rc = kmdc_db_command(db, "COMMIT");
    }
    return rc;
}

kmdc_store_rc kmdc_pg_activate(kmdc_store *st, uint64_t serial, int failure_limit,
                               kmdc_activation_fn decide, void *arg,
                               kmdc_activation_result *result)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc dbrc;
    kmdc_store_rc rc;
    kmdc_activation row;
    kmdc_activation_keys keys;
    int in_tx = 0;

    memset(&row, 0, sizeof(row));
    memset(&keys, 0, sizeof(keys));
    memset(result, 0, sizeof(*result));
    result->verdict = KMDC_ACTIVATION_ABORT;
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        goto out;
    }
    if ((dbrc = kmdc_db_command(db, "BEGIN")) != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
        goto out;
    }
    in_tx = 1;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    rc = kmdc_pg_row(db, "SELECT status, locked, access_mac, "
                     "coalesce(access_expires <= now(), true), key_id, "
                     "up_next, down_next, up_chain, down_chain, auth_key "
                     "FROM cards WHERE serial = $1 FOR NO KEY UPDATE",
                     &pp, 1, &res);
    if (rc != KMDC_STORE_OK) {
        goto out;
    }
    if (!read_activation(res, &row)) {
        log_unreadable(ps, serial, "row");
        rc = KMDC_STORE_ERROR;
        goto out;
    }
    kmdc_db_clear(db, res);
    res = NULL;

    result->verdict = decide(arg, &row, &keys);
    switch (result->verdict) {
    case KMDC_ACTIVATION_FAIL:
        dbrc = count_failure(db, serial, failure_limit, result);
        break;
    case KMDC_ACTIVATION_ACCEPT:
        dbrc = store_activation(db, serial, &keys);
        break;
    default:
        result->verdict = KMDC_ACTIVATION_ABORT;
        rc = KMDC_STORE_OK;     /* rolled back below */
        goto out;
    }
    if (dbrc != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
        goto out;
    }
    in_tx = 0;                  /* committed */
    rc = KMDC_STORE_OK;
out:
    kmdc_db_clear(db, res);
    if (in_tx && db != NULL) {
        (void)kmdc_db_rollback(db);     /* invalidates db when it fails */
    }
    kmdc_db_release(db);
    kmdc_wipe(&row, sizeof(row));
    kmdc_wipe(&keys, sizeof(keys));
    return rc;
}
