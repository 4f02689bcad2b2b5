/*
 * mod_kmdc_activate.c - POST /activate/{serial} (DESIGN 3.2, 3.6) and
 * GET /card/{serial}.
 *
 * Activation, after request authentication (signed with the issued AK):
 *  1. parse the form body strictly: exactly the fields code and r, once
 *     each, in either order (400 bad_request otherwise);
 *  2. lock the card row; an active card answers 409 already_active, a locked
 *     one 403 locked;
 *  3. check the access code (not expired, HMAC under the master key of the
 *     card's key_id, compared in constant time).  A failure counts: the
 *     failure counter (and at 5 the lock) is committed although the request
 *     fails, 403 activation_failed or 403 locked;
 *  4. in the same transaction: unwrap the three keys at their counters,
 *     rotate each with HKDF(r, K, "KMDC/1 activate " || name), rewrap them
 *     under the newest master key, mark the card active, drop the code,
 *     write the audit row, COMMIT; 204.
 */
#include <string.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"

#include "kmdc_crypto.h"
#include "kmdc_reqparse.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"

#include "mod_kmdc.h"
#include "mod_kmdc_db.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"

/* Failed attempts that lock a card (DESIGN 3.6). */
#define KMDC_ACTIVATION_MAX_FAILURES 5

/* Longest decoded access code accepted from the form (what
 * kmdc_access_code_normalize accepts). */

/* The three card keys, in the order they are rotated. */
static const char *const key_fields[3] = {
    KMDC_FIELD_UP_CHAIN, KMDC_FIELD_DOWN_CHAIN, KMDC_FIELD_AUTH_KEY
};

static uint64_t now_ms(void)
{
    return (uint64_t)(apr_time_now() / 1000);
}

/* A failed attempt: count it (and lock at the limit) and commit.  Sets
 * *locked; KMDC_DB_OK when committed. */
static kmdc_db_rc count_failure(kmdc_req *kr, kmdc_db *db, int *locked,
                                int64_t *failures)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc rc;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)kr->serial);
    kmdc_db_param_int4(&pp, KMDC_ACTIVATION_MAX_FAILURES);
    rc = kmdc_db_exec(db, "UPDATE cards SET activation_failures = activation_failures + 1, "
                      "locked = locked OR activation_failures + 1 >= $2 "
                      "WHERE serial = $1 RETURNING activation_failures, locked",
                      &pp, 0, &res);
    if (rc == KMDC_DB_OK && (PQntuples(res) != 1
                             || !kmdc_db_get_int64(res, 0, 0, failures))) {
        rc = KMDC_DB_ERROR;
    }
    if (rc == KMDC_DB_OK) {
        *locked = PQgetvalue(res, 0, 1)[0] == 't';
    }
    kmdc_db_clear(db, res);
    if (rc == KMDC_DB_OK) {
        rc = kmdc_db_audit(db, kr->serial, "card.activation_failed",
                   apr_psprintf(kr->r->pool, "{\"failures\":%" APR_INT64_T_FMT
                                ",\"locked\":%s}", *failures,
                                *locked ? "true" : "false"));
    }
    if (rc == KMDC_DB_OK) {
        rc = kmdc_db_command(db, "COMMIT");
    }
    return rc;
}

/*
 * Rotate and rewrap the three keys of the locked row res (columns 5..9:
 * up_next, down_next, up_chain, down_chain, auth_key) and store the active
 * card.  KMDC_DB_OK when the UPDATE and the audit row went through (not yet
 * committed); *internal set when a key could not be read or written.
 */
static kmdc_db_rc rotate_keys(kmdc_req *kr, kmdc_db *db, const PGresult *row,
                              const uint8_t rnd[KMDC_KEY_LEN], int *internal)
{
    const kmdc_master_keys *keys = kr->sc->keys;
    uint8_t k[KMDC_KEY_LEN];
    uint8_t wrapped[3][KMDC_WRAPPED_LEN];
    int64_t counter[3] = { 0, 0, 0 };
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_err err;
    kmdc_db_rc rc = KMDC_DB_ERROR;
    int i;

    *internal = 1;
    if (!kmdc_db_get_int64(row, 0, 5, &counter[0])
        || !kmdc_db_get_int64(row, 0, 6, &counter[1])) {
        goto out;
    }
    for (i = 0; i < 3; i++) {
        const unsigned char *w = NULL;
        size_t wlen = 0;

        if (!kmdc_db_get_bytea(row, 0, 7 + i, &w, &wlen)
            || kmdc_keyring_unwrap(keys, kr->serial, key_fields[i], (uint64_t)counter[i],
                                w, wlen, k, &err) != KMDC_OK
            || kmdc_activate_key(k, rnd, k, key_fields[i], &err) != KMDC_OK
            || kmdc_keyring_wrap(keys, kr->serial, key_fields[i], (uint64_t)counter[i],
                              k, wrapped[i], &err) != KMDC_OK) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, kr->r,
                          "activate: card %016" APR_UINT64_T_HEX_FMT
                          ": cannot rotate %s: %s", (apr_uint64_t)kr->serial,
                          key_fields[i], w == NULL ? "missing" : err.msg);
            goto out;
        }
    }
    *internal = 0;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)kr->serial);
    kmdc_db_param_bytea(&pp, wrapped[0], KMDC_WRAPPED_LEN);
    kmdc_db_param_bytea(&pp, wrapped[1], KMDC_WRAPPED_LEN);
    kmdc_db_param_bytea(&pp, wrapped[2], KMDC_WRAPPED_LEN);
    kmdc_db_param_int4(&pp, (int32_t)keys->newest);
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
        rc = kmdc_db_audit(db, kr->serial, "card.activated",
                   apr_psprintf(kr->r->pool, "{\"key_id\":%u}", keys->newest));
    }
out:
    kmdc_wipe(k, sizeof(k));
    kmdc_wipe(wrapped, sizeof(wrapped));
    return rc;
}

int kmdc_handle_activate(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc dbrc;
    char code[KMDC_FORM_CODE_MAX + 1];
    uint8_t rnd[KMDC_KEY_LEN];
    const kmdc_master_key *mk;
    const unsigned char *mac = NULL;
    size_t maclen = 0;
    int64_t key_id = 0, failures = 0;
    int in_tx = 0, locked = 0, expired, good, internal = 0;
    int rv = OK;

    memset(code, 0, sizeof(code));
    memset(rnd, 0, sizeof(rnd));
    good = kmdc_activation_form_parse(kr->body, kr->body_len, code, rnd);
    /* the body holds the access code: only the parsed copies live on (the
     * buffer is the request's own, from kmdc_http_read_body) */
    kmdc_wipe((char *)kr->body, kr->body_len);
    if (!good) {
        rv = kmdc_http_error(r, HTTP_BAD_REQUEST, "bad_request",
                             "the body must be the form code=<access code>&r=<64 hex>");
        goto out;
    }
    if ((dbrc = kmdc_db_acquire(r, &db)) != KMDC_DB_OK) {
        db = NULL;
        rv = kmdc_db_answer_unavailable(r, dbrc);
        goto out;
    }
    if (kmdc_db_command(db, "BEGIN") != KMDC_DB_OK) {
        goto unavailable;
    }
    in_tx = 1;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)kr->serial);
    if (kmdc_db_exec(db, "SELECT status, locked, access_mac, "
                     "coalesce(access_expires <= now(), true), key_id, "
                     "up_next, down_next, up_chain, down_chain, auth_key "
                     "FROM cards WHERE serial = $1 FOR NO KEY UPDATE",
                     &pp, 1, &res) != KMDC_DB_OK) {
        goto unavailable;
    }
    if (PQntuples(res) != 1) {
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such card");
        goto out;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "active") == 0) {
        rv = kmdc_http_error(r, HTTP_CONFLICT, "already_active",
                             "the card is already active");
        goto out;
    }
    if (strcmp(PQgetvalue(res, 0, 0), "issued") != 0) {
        rv = kmdc_http_error(r, HTTP_FORBIDDEN, "forbidden", "the card is %s",
                             PQgetvalue(res, 0, 0));
        goto out;
    }
    if (PQgetvalue(res, 0, 1)[0] != 0) {
        kmdc_metrics_activation(KMDC_METRIC_ACT_LOCKED);
        rv = kmdc_http_error(r, HTTP_FORBIDDEN, "locked",
                             "too many failed activation attempts locked this card; "
                             "ask the administrator for a new card");
        goto out;
    }
    expired = PQgetvalue(res, 0, 3)[0] != 0;
    if (!kmdc_db_get_int64(res, 0, 4, &key_id)
        || (!expired && !kmdc_db_get_bytea(res, 0, 2, &mac, &maclen))) {
        internal = 1;
        goto out;
    }
    mk = key_id >= 0 && key_id <= (int64_t)UINT32_MAX
         ? kmdc_conf_master_key(kr->sc, (uint32_t)key_id) : NULL;
    if (mk == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "activate: card %016" APR_UINT64_T_HEX_FMT ": master key id %"
                      APR_INT64_T_FMT " is not configured (%s)",
                      (apr_uint64_t)kr->serial, key_id, KMDC_DIR_MASTER_KEY);
        internal = 1;
        goto out;
    }
    good = !expired && maclen == 32
           && kmdc_access_code_verify(mac, mk->key, kr->serial, code, strlen(code),
                                      NULL) == KMDC_OK;
    if (!good) {
        kmdc_db_clear(db, res);
        res = NULL;
        if (count_failure(kr, db, &locked, &failures) != KMDC_DB_OK) {
            goto unavailable;
        }
        in_tx = 0;
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "activate: card %016" APR_UINT64_T_HEX_FMT ": %s access code, "
                      "failure %" APR_INT64_T_FMT "%s", (apr_uint64_t)kr->serial,
                      expired ? "expired" : "wrong", failures,
                      locked ? ", card locked" : "");
        kmdc_metrics_activation(locked ? KMDC_METRIC_ACT_LOCKED : KMDC_METRIC_ACT_FAILED);
        if (locked) {
            rv = kmdc_http_error(r, HTTP_FORBIDDEN, "locked",
                                 "too many failed activation attempts locked this "
                                 "card; ask the administrator for a new card");
        }
        else if (expired) {
            rv = kmdc_http_error(r, HTTP_FORBIDDEN, "activation_failed",
                                 "the access code has expired; ask the administrator "
                                 "for a new card");
        }
        else {
            rv = kmdc_http_error(r, HTTP_FORBIDDEN, "activation_failed",
                                 "wrong access code (%" APR_INT64_T_FMT " of %d "
                                 "attempts used)", failures,
                                 KMDC_ACTIVATION_MAX_FAILURES);
        }
        goto out;
    }
    if (rotate_keys(kr, db, res, rnd, &internal) != KMDC_DB_OK) {
        if (internal) {
            goto out;
        }
        goto unavailable;
    }
    kmdc_db_clear(db, res);
    res = NULL;
    if (kmdc_db_command(db, "COMMIT") != KMDC_DB_OK) {
        goto unavailable;
    }
    in_tx = 0;
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  "activate: card %016" APR_UINT64_T_HEX_FMT " activated",
                  (apr_uint64_t)kr->serial);
    kmdc_metrics_activation(KMDC_METRIC_ACT_OK);
    rv = kmdc_http_no_content(r);
    goto out;

unavailable:
    rv = kmdc_db_answer_unavailable(r, KMDC_DB_UNAVAILABLE);
out:
    if (internal) {
        rv = kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                             "the card's keys cannot be read at the datacenter; "
                             "see the server log");
    }
    kmdc_db_clear(db, res);
    if (in_tx && db != NULL && kmdc_db_command(db, "ROLLBACK") != KMDC_DB_OK) {
        kmdc_db_invalidate(db);
        db = NULL;
    }
    kmdc_db_release(db);
    kmdc_wipe(code, sizeof(code));
    kmdc_wipe(rnd, sizeof(rnd));
    return rv;
}

int kmdc_handle_card(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc dbrc;
    int64_t up_next = 0, down_next = 0;
    char serial[17];
    json_t *body;
    int rv;

    if ((dbrc = kmdc_db_acquire(r, &db)) != KMDC_DB_OK) {
        return kmdc_db_answer_unavailable(r, dbrc);
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)kr->serial);
    if (kmdc_db_exec(db, "SELECT status, locked, up_next, down_next FROM cards "
                     "WHERE serial = $1", &pp, 0, &res) != KMDC_DB_OK) {
        rv = kmdc_db_answer_unavailable(r, KMDC_DB_UNAVAILABLE);
        goto out;
    }
    if (PQntuples(res) != 1 || !kmdc_db_get_int64(res, 0, 2, &up_next)
        || !kmdc_db_get_int64(res, 0, 3, &down_next)) {
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such card");
        goto out;
    }
    kmdc_serial_format(serial, kr->serial);
    body = json_pack("{s:s, s:s, s:b, s:I, s:I, s:I}",
                     "serial", serial,
                     "status", PQgetvalue(res, 0, 0),
                     "locked", PQgetvalue(res, 0, 1)[0] == 't',
                     "up_next", (json_int_t)up_next,
                     "down_next", (json_int_t)down_next,
                     "time", (json_int_t)now_ms());
    rv = kmdc_http_json(r, HTTP_OK, body);
out:
    kmdc_db_clear(db, res);
    kmdc_db_release(db);
    return rv;
}
