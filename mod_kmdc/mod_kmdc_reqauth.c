/*
 * mod_kmdc_reqauth.c - request authentication (docs/PROTOCOL.md section 5), run by the
 * dispatcher before every route flagged KMDC_ROUTE_AUTH.
 *
 * In this order, so that each refusal says as little as it must:
 *  1. parse the Authorization header strictly (401 when missing/malformed);
 *  2. read the body (at most KMDC_AUTH_BODY_MAX bytes; none for GET, HEAD and
 *     DELETE: 400) and hash it;
 *  3. the clock: a ts more than KmdcAuthSkew from now is 401 whatever card
 *     the header names, before the card is looked up, so the answer cannot
 *     tell whether the card exists;
 *  4. load the signer's card, unwrap its AK and verify the signature (401).
 *     An unknown serial gets the same 401 body as a bad signature and costs
 *     the same work: a decoy wrapped key is unwrapped and the signature
 *     checked against a random key, so neither the answer nor its timing
 *     tells which serials exist;
 *  5. record (serial, nonce) through the store, in its own autocommitted
 *     statement, so the record stays whatever happens next; a nonce recorded
 *     before means a replay (401);
 *  6. with a good signature: the path serial must be the signer's, and the
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
#include "kmdc_keyring.h"
#include "kmdc_store.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"
#include "mod_kmdc_store.h"

/* The handler's return value after an answer was written: the dispatcher
 * turns DONE into OK; AP_FILTER_ERROR passes through. */
static int answered(int rv)
{
    return rv == OK ? DONE : rv;
}

/* 401 with the challenge of docs/PROTOCOL.md section 5. */
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

/* Step 3: 1 when ts lies more than skew seconds from now, either way. */
static int is_stale(int64_t ts, int64_t now, int64_t skew)
{
    uint64_t diff = now >= ts ? (uint64_t)now - (uint64_t)ts
                              : (uint64_t)ts - (uint64_t)now;

    return diff > (uint64_t)skew;
}

/*
 * Step 4 for a serial that is no card's: the work a known card costs, whose
 * outcome is thrown away.  A fixed value of a wrapped key's shape, naming the
 * newest master key, is unwrapped with the ring (HKDF and AES-GCM, failing at
 * the tag as a real unwrap would succeed there), then the signature is checked
 * against a random key.  The caller answers exactly as for a bad signature.
 */
static void decoy_verify(const kmdc_req *kr, const kmdc_auth_hdr *h,
                         const uint8_t sha[KMDC_HASH_LEN], int64_t now)
{
    const kmdc_keyring *ring = kr->sc->keys;
    uint8_t wrapped[KMDC_WRAPPED_LEN];
    uint8_t ak[KMDC_KEY_LEN];
    kmdc_err err;

    memset(wrapped, 0x5a, sizeof(wrapped));
    kmdc_put_u32(wrapped, ring != NULL ? ring->newest : 0);
    (void)kmdc_keyring_unwrap(ring, h->serial, KMDC_FIELD_AUTH_KEY, 0, wrapped,
                              sizeof(wrapped), ak, &err);
    if (kmdc_random(ak, sizeof(ak), &err) != KMDC_OK) {
        memset(ak, 0x5a, sizeof(ak));  /* the outcome is ignored either way */
    }
    (void)kmdc_auth_verify(h, ak, kr->r->method, kr->r->unparsed_uri, sha, now,
                           (int64_t)kr->sc->auth_skew, &err);
    kmdc_wipe(ak, sizeof(ak));
}

int kmdc_reqauth_answer_replay(request_rec *r)
{
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r, "reqauth: replayed nonce");
    return unauthorized(r, "this request was seen before (replayed nonce); "
                        "sign every request anew") == DONE ? OK : HTTP_UNAUTHORIZED;
}

int kmdc_reqauth_check(kmdc_req *kr)
{
    request_rec *r = kr->r;
    const char *value = apr_table_get(r->headers_in, "Authorization");
    kmdc_store *st = kmdc_store_pg(r);
    kmdc_auth_hdr h;
    kmdc_auth_card card;
    const char *deny = NULL;
    kmdc_store_rc src;
    kmdc_err err;
    kmdc_status ks;
    uint8_t sha[KMDC_HASH_LEN];
    uint8_t ak[KMDC_KEY_LEN];
    int64_t now;
    int rv;

    memset(&h, 0, sizeof(h));
    memset(&card, 0, sizeof(card));
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

    /* 3. the clock, whatever card the header names */
    now = (int64_t)apr_time_sec(apr_time_now());
    if (is_stale(h.ts, now, (int64_t)kr->sc->auth_skew)) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "reqauth: card %016" APR_UINT64_T_HEX_FMT ": stale timestamp",
                      (apr_uint64_t)h.serial);
        rv = unauthorized(r, apr_psprintf(r->pool, "the request's time is more than %"
                                          APR_INT64_T_FMT " s from the server's "
                                          "clock; check the clock", kr->sc->auth_skew));
        goto out;
    }

    /* 4. the card and the signature: an unknown card costs the same work and
     * gets the same answer as a bad signature */
    src = st->ops->auth_load(st, h.serial, &card);
    if (src == KMDC_STORE_NOTFOUND) {
        decoy_verify(kr, &h, sha, now);
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "reqauth: unknown card %016" APR_UINT64_T_HEX_FMT,
                      (apr_uint64_t)h.serial);
        rv = unauthorized(r, "the request's signature does not verify");
        goto out;
    }
    if (src != KMDC_STORE_OK) {
        rv = answered(kmdc_store_answer_failure(r, src));
        goto out;
    }
    ks = kmdc_keyring_unwrap(kr->sc->keys, h.serial, KMDC_FIELD_AUTH_KEY, 0,
                             card.auth_key, sizeof(card.auth_key), ak, &err);
    if (ks != KMDC_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "reqauth: cannot unwrap the request key: %s", err.msg);
        rv = answered(kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                                      "the card's keys cannot be read at the "
                                      "datacenter; see the server log"));
        goto out;
    }
    ks = kmdc_auth_verify(&h, ak, r->method, r->unparsed_uri, sha, now,
                          (int64_t)kr->sc->auth_skew, &err);
    kmdc_wipe(ak, sizeof(ak));
    if (ks != KMDC_OK) {
        /* not KMDC_ERR_STALE: step 3 checked the clock with the same now */
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "reqauth: card %016" APR_UINT64_T_HEX_FMT ": bad signature",
                      (apr_uint64_t)h.serial);
        rv = unauthorized(r, "the request's signature does not verify");
        goto out;
    }

    /* 5. the nonce, kept whatever happens next; only a request that changes
     * the card (POST /activate) waits for the record to reach the disk */
    src = st->ops->nonce_record(st, h.serial, h.nonce, sizeof(h.nonce),
                                r->method_number == M_POST);
    if (src == KMDC_STORE_CONFLICT) {
        rv = answered(kmdc_reqauth_answer_replay(r));
        goto out;
    }
    if (src != KMDC_STORE_OK) {
        rv = answered(kmdc_store_answer_failure(r, src));
        goto out;
    }

    /* 6. may this card do this? */
    if (kr->serial != 0 && kr->serial != h.serial) {
        deny = "a card may only use its own resources";
    }
    else if (card.status == KMDC_CARD_ST_ACTIVE) {
        deny = NULL;
    }
    else if (card.status == KMDC_CARD_ST_ISSUED) {
        deny = (kr->route_flags & KMDC_ROUTE_INACTIVE)
               ? NULL : "the card is not activated yet; run kmdc activate";
    }
    else if (!is_card_status(kr)) {
        /* suspended or revoked: it may still see its status */
        deny = card.status == KMDC_CARD_ST_SUSPENDED ? "the card is suspended"
                                                     : "the card is revoked";
    }
    if (deny == NULL) {
        kr->signer = h.serial;
        rv = OK;
        goto out;
    }
    /* answered here: the deferred nonce record first, so that a replay is
     * answered as one */
    src = st->ops->settle(st);
    rv = src == KMDC_STORE_OK ? forbidden(r, deny)
                              : answered(kmdc_store_answer_failure(r, src));

out:
    kmdc_wipe(ak, sizeof(ak));
    kmdc_wipe(&card, sizeof(card));
    kmdc_wipe(&h, sizeof(h));
    return rv;
}
