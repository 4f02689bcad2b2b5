/*
 * mod_kmdc_reqauth.c - request authentication (DESIGN 3.5), run by the
 * dispatcher before every route flagged KMDC_ROUTE_AUTH.
 *
 * In this order, so that each refusal says as little as it must:
 *  1. parse the Authorization header strictly (401 when missing/malformed);
 *  2. read the body (at most KMDC_AUTH_BODY_MAX bytes; none for GET, HEAD and
 *     DELETE: 400) and hash it;
 *  3. load the signer's card (unknown: 401), unwrap its AK, verify the
 *     signature over the raw request-target and the clock (401);
 *  4. record (serial, nonce) with INSERT ... ON CONFLICT DO NOTHING in its
 *     own autocommitted statement, so the record stays whatever happens next;
 *     nothing inserted means a replay (401);
 *  5. with a good signature: the path serial must be the signer's, and the
 *     card's status must allow the route (403 forbidden).
 *
 * Status rules (docs/API.md): an active card may use every route; an issued
 * (not yet activated) card only the routes flagged KMDC_ROUTE_INACTIVE
 * (POST /activate, GET /card); a suspended or revoked card only GET /card,
 * which lets its owner see why everything else is refused.  A locked card is
 * refused by the activation endpoint itself (403 locked).
 */
#include <string.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"

#include "kmdc_auth.h"
#include "kmdc_crypto.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"

#include "mod_kmdc.h"
#include "mod_kmdc_db.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"

/* The handler's return value after an answer was written: the dispatcher
 * turns DONE into OK; AP_FILTER_ERROR passes through. */
static int answered(int rv)
{
    return rv == OK ? DONE : rv;
}

/* 401 with the challenge of DESIGN 3.5. */
static int unauthorized(request_rec *r, const char *msg)
{
    apr_table_setn(r->headers_out, "WWW-Authenticate", KMDC_AUTH_SCHEME);
    kmdc_metrics_auth_failure();
    return answered(kmdc_http_error(r, HTTP_UNAUTHORIZED, "unauthorized", "%s", msg));
}

static int forbidden(request_rec *r, const char *msg)
{
    return answered(kmdc_http_error(r, HTTP_FORBIDDEN, "forbidden", "%s", msg));
}

/* 1 when the route is GET (or HEAD) /card/{serial}. */
static int is_card_status(const kmdc_req *kr)
{
    return kr->r->method_number == M_GET && kr->nseg == 2
           && strcmp(kr->seg[0], "card") == 0;
}

/* Step 2: read and hash the body. */
static int read_body(kmdc_req *kr, uint8_t sha[KMDC_HASH_LEN])
{
    request_rec *r = kr->r;
    int bodiless = r->method_number == M_GET || r->method_number == M_DELETE;
    char *body = NULL;
    apr_size_t len = 0;
    int st;

    st = kmdc_http_read_body(r, bodiless ? 0 : KMDC_AUTH_BODY_MAX, &body, &len);
    if (st == HTTP_REQUEST_ENTITY_TOO_LARGE) {
        if (bodiless) {
            return answered(kmdc_http_error(r, HTTP_BAD_REQUEST, "bad_request",
                                            "a %s request carries no body",
                                            r->method));
        }
        return answered(kmdc_http_error(r, HTTP_BAD_REQUEST, "bad_request",
                                        "an authenticated request body is at "
                                        "most %d bytes", KMDC_AUTH_BODY_MAX));
    }
    if (st != OK) {
        return answered(kmdc_http_error_status(r, st));
    }
    if (kmdc_sha256(sha, body, len, NULL) != KMDC_OK) {
        return answered(kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                                        "internal error"));
    }
    kr->body = body;
    kr->body_len = len;
    return OK;
}

/* Step 4: 1 when (serial, nonce) was new, 0 when seen before, -1 on a
 * database failure. */
static int record_nonce(kmdc_db *db, uint64_t serial,
                        const uint8_t nonce[KMDC_AUTH_NONCE_LEN])
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    int fresh = -1;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_bytea(&pp, nonce, KMDC_AUTH_NONCE_LEN);
    if (kmdc_db_exec(db, "INSERT INTO request_nonces (serial, nonce) VALUES ($1, $2) "
                     "ON CONFLICT DO NOTHING", &pp, 0, &res) == KMDC_DB_OK) {
        fresh = strcmp(PQcmdTuples(res), "1") == 0 ? 1 : 0;
    }
    kmdc_db_clear(db, res);
    return fresh;
}

int kmdc_reqauth_check(kmdc_req *kr)
{
    request_rec *r = kr->r;
    const char *value = apr_table_get(r->headers_in, "Authorization");
    kmdc_auth_hdr h;
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc dbrc;
    kmdc_err err;
    kmdc_status ks;
    uint8_t sha[KMDC_HASH_LEN];
    uint8_t ak[KMDC_KEY_LEN];
    const unsigned char *wrapped = NULL;
    size_t wlen = 0;
    char status[16];
    int fresh;
    int rv;

    memset(&h, 0, sizeof(h));
    kmdc_wipe(ak, sizeof(ak));

    /* 1. the header */
    if (value == NULL) {
        rv = unauthorized(r, "this request must be signed (Authorization: "
                          KMDC_AUTH_SCHEME " ...)");
        goto out;
    }
    if (kmdc_auth_parse(value, strlen(value), &h, &err) != KMDC_OK) {
        rv = unauthorized(r, "the Authorization header is malformed");
        goto out;
    }

    /* 2. the body */
    if ((rv = read_body(kr, sha)) != OK) {
        goto out;
    }

    /* 3. the card and the signature */
    if ((dbrc = kmdc_db_acquire(r, &db)) != KMDC_DB_OK) {
        db = NULL;
        rv = answered(kmdc_db_answer_unavailable(r, dbrc));
        goto out;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)h.serial);
    dbrc = kmdc_db_exec(db, "SELECT status, auth_key FROM cards WHERE serial = $1",
                        &pp, 1, &res);
    if (dbrc != KMDC_DB_OK) {
        rv = answered(kmdc_db_answer_unavailable(r, KMDC_DB_UNAVAILABLE));
        goto out;
    }
    if (PQntuples(res) != 1) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "reqauth: unknown card %016" APR_UINT64_T_HEX_FMT,
                      (apr_uint64_t)h.serial);
        rv = unauthorized(r, "the request is not signed by a known card");
        goto out;
    }
    if (PQgetisnull(res, 0, 0) || !kmdc_db_get_bytea(res, 0, 1, &wrapped, &wlen)) {
        rv = answered(kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                                      "internal error; see the server log"));
        goto out;
    }
    /* text columns come back as their characters in binary format too */
    apr_cpystrn(status, PQgetvalue(res, 0, 0), sizeof(status));
    ks = kmdc_keyring_unwrap(kr->sc->keys, h.serial, KMDC_FIELD_AUTH_KEY, 0,
                          wrapped, wlen, ak, &err);
    kmdc_db_clear(db, res);
    res = NULL;
    if (ks != KMDC_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "reqauth: cannot unwrap the request key: %s", err.msg);
        rv = answered(kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                                      "the card's keys cannot be read at the "
                                      "datacenter; see the server log"));
        goto out;
    }
    ks = kmdc_auth_verify(&h, ak, r->method, r->unparsed_uri, sha,
                          (int64_t)apr_time_sec(apr_time_now()),
                          (int64_t)kr->sc->auth_skew, &err);
    kmdc_wipe(ak, sizeof(ak));
    if (ks == KMDC_ERR_STALE) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "reqauth: card %016" APR_UINT64_T_HEX_FMT ": stale timestamp",
                      (apr_uint64_t)h.serial);
        rv = unauthorized(r, apr_psprintf(r->pool, "the request's time is more than %"
                                          APR_INT64_T_FMT " s from the server's "
                                          "clock; check the clock", kr->sc->auth_skew));
        goto out;
    }
    if (ks != KMDC_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "reqauth: card %016" APR_UINT64_T_HEX_FMT ": bad signature",
                      (apr_uint64_t)h.serial);
        rv = unauthorized(r, "the request's signature does not verify");
        goto out;
    }

    /* 4. the nonce, kept whatever happens next */
    fresh = record_nonce(db, h.serial, h.nonce);
    if (fresh < 0) {
        rv = answered(kmdc_db_answer_unavailable(r, KMDC_DB_UNAVAILABLE));
        goto out;
    }
    if (fresh == 0) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "reqauth: card %016" APR_UINT64_T_HEX_FMT ": replayed nonce",
                      (apr_uint64_t)h.serial);
        rv = unauthorized(r, "this request was seen before (replayed nonce); "
                          "sign every request anew");
        goto out;
    }

    /* 5. may this card do this? */
    if (kr->serial != 0 && kr->serial != h.serial) {
        rv = forbidden(r, "a card may only use its own resources");
        goto out;
    }
    if (strcmp(status, "active") == 0) {
        rv = OK;
    }
    else if (strcmp(status, "issued") == 0) {
        rv = (kr->route_flags & KMDC_ROUTE_INACTIVE)
             ? OK : forbidden(r, "the card is not activated yet; run kmdc activate");
    }
    else if (is_card_status(kr)) {
        rv = OK;       /* suspended or revoked: it may still see its status */
    }
    else {
        rv = forbidden(r, apr_psprintf(r->pool, "the card is %s",
                                       strcmp(status, "suspended") == 0
                                       ? "suspended" : "revoked"));
    }
    if (rv == OK) {
        kr->signer = h.serial;
    }

out:
    kmdc_db_clear(db, res);
    kmdc_db_release(db);
    kmdc_wipe(ak, sizeof(ak));
    kmdc_wipe(&h, sizeof(h));
    return rv;
}
