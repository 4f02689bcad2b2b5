/*
 * mod_kmdc_activate.c - POST /activate/{serial} (docs/PROTOCOL.md sections 2 and 7) and
 * GET /card/{serial}.
 *
 * Activation, after request authentication (signed with the issued AK):
 *  1. parse the form body strictly: exactly the fields code and r, once
 *     each, in either order (400 bad_request otherwise);
 *  2. the store locks the card row and hands it to decide() below; an
 *     active card answers 409 already_active, a locked one 403 locked;
 *  3. check the access code (not expired, HMAC under the master key of the
 *     card's key_id, compared in constant time).  A failure counts: the
 *     failure counter (and at 5 the lock) is committed although the request
 *     fails, 403 activation_failed or 403 locked;
 *  4. in the same transaction: unwrap the three keys at their counters,
 *     rotate each with HKDF(r, K, "KMDC/1 activate " || name), rewrap them
 *     under the newest master key; the store marks the card active, drops
 *     the code, writes the audit row and commits; 204.
 * The code check and the key rotation (steps 3 and 4: crypto and the master
 * keys) happen here, in decide(); the store owns the row, its lock and the
 * transaction (kmdc_store.h, activate).
 */
#include <string.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"

#include "kmdc_crypto.h"
#include "kmdc_keyring.h"
#include "kmdc_reqparse.h"
#include "kmdc_store.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"
#include "mod_kmdc_store.h"

/* Failed attempts that lock a card (docs/PROTOCOL.md section 7). */
#define KMDC_ACTIVATION_MAX_FAILURES 5

/* The three card keys, in the order they are rotated. */
static const char *const key_fields[3] = {
    KMDC_FIELD_UP_CHAIN, KMDC_FIELD_DOWN_CHAIN, KMDC_FIELD_AUTH_KEY
};

static uint64_t now_ms(void)
{
    return (uint64_t)(apr_time_now() / 1000);
}

/* Why decide() gave up (KMDC_ACTIVATION_ABORT), for the answer. */
typedef enum abort_reason {
    ABORT_NONE = 0,
    ABORT_ACTIVE,           /* 409 already_active */
    ABORT_NOT_ISSUED,       /* 403 forbidden: suspended or revoked */
    ABORT_LOCKED,           /* 403 locked */
    ABORT_INTERNAL          /* 500: a key cannot be read or written */
} abort_reason;

/* What decide() works with and leaves behind. */
typedef struct activation_ctx {
    kmdc_req *kr;
    const char *code;                 /* the access code from the form */
    const uint8_t *rnd;               /* r from the form, KMDC_KEY_LEN bytes */
    abort_reason why;                 /* after ABORT */
    kmdc_card_status status;          /* the row's status */
    int expired;                      /* after FAIL: the code had expired */
} activation_ctx;

/*
 * Rotate and rewrap the three keys of the locked row into keys.  0 when a key
 * could not be read or written (logged).
 */
static int rotate_keys(const activation_ctx *ctx, const kmdc_activation *row,
                       kmdc_activation_keys *keys)
{
    const kmdc_req *kr = ctx->kr;
    const kmdc_master_keys *ring = kr->sc->keys;
    const uint8_t *in[3] = { row->up_chain, row->down_chain, row->auth_key };
    uint8_t *out[3] = { keys->up_chain, keys->down_chain, keys->auth_key };
    const uint64_t counter[3] = { row->up_next, row->down_next, 0 };
    uint8_t k[KMDC_KEY_LEN];
    kmdc_err err;
    int ok = 0;
    int i;

    kmdc_err_clear(&err);
    for (i = 0; i < 3; i++) {
        if (kmdc_keyring_unwrap(ring, kr->serial, key_fields[i], counter[i],
                                in[i], KMDC_WRAPPED_LEN, k, &err) != KMDC_OK
            || kmdc_activate_key(k, ctx->rnd, k, key_fields[i], &err) != KMDC_OK
            || kmdc_keyring_wrap(ring, kr->serial, key_fields[i], counter[i],
                                 k, out[i], &err) != KMDC_OK) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, kr->r,
                          "activate: card %016" APR_UINT64_T_HEX_FMT
                          ": cannot rotate %s: %s", (apr_uint64_t)kr->serial,
                          key_fields[i], err.msg);
            goto out;
        }
    }
    keys->key_id = ring->newest;
    ok = 1;
out:
    kmdc_wipe(k, sizeof(k));
    return ok;
}

/* The kmdc_activation_fn: judge the locked row (steps 2 to 4). */
static kmdc_activation_verdict decide(void *arg, const kmdc_activation *row,
                                      kmdc_activation_keys *keys)
{
    activation_ctx *ctx = arg;
    const kmdc_req *kr = ctx->kr;
    const kmdc_master_key *mk;
    int good;

    ctx->status = row->status;
    if (row->status == KMDC_CARD_ST_ACTIVE) {
        ctx->why = ABORT_ACTIVE;
        return KMDC_ACTIVATION_ABORT;
    }
    if (row->status != KMDC_CARD_ST_ISSUED) {
        ctx->why = ABORT_NOT_ISSUED;
        return KMDC_ACTIVATION_ABORT;
    }
    if (row->locked) {
        ctx->why = ABORT_LOCKED;
        return KMDC_ACTIVATION_ABORT;
    }
    ctx->expired = row->code_expired;
    if (!row->code_expired && !row->has_access_mac) {
        ctx->why = ABORT_INTERNAL;
        return KMDC_ACTIVATION_ABORT;
    }
    mk = kmdc_keyring_find(kr->sc->keys, row->key_id);
    if (mk == NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, kr->r,
                      "activate: card %016" APR_UINT64_T_HEX_FMT ": master key id %"
                      APR_INT64_T_FMT " is not configured (%s)",
                      (apr_uint64_t)kr->serial, (apr_int64_t)row->key_id,
                      KMDC_DIR_MASTER_KEY);
        ctx->why = ABORT_INTERNAL;
        return KMDC_ACTIVATION_ABORT;
    }
    good = !row->code_expired && row->has_access_mac
           && kmdc_access_code_verify(row->access_mac, mk->key, kr->serial, ctx->code,
                                      strlen(ctx->code), NULL) == KMDC_OK;
    if (!good) {
        return KMDC_ACTIVATION_FAIL;
    }
    if (!rotate_keys(ctx, row, keys)) {
        ctx->why = ABORT_INTERNAL;
        return KMDC_ACTIVATION_ABORT;
    }
    return KMDC_ACTIVATION_ACCEPT;
}

/* 403 locked, the answer of a card locked now or before. */
static int answer_locked(request_rec *r)
{
    return kmdc_http_error(r, HTTP_FORBIDDEN, "locked",
                           "too many failed activation attempts locked this card; "
                           "ask the administrator for a new card");
}

int kmdc_handle_activate(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_store *st = kmdc_store_pg(r);
    kmdc_activation_result result;
    activation_ctx ctx;
    kmdc_store_rc src;
    char code[KMDC_FORM_CODE_MAX + 1];
    uint8_t rnd[KMDC_KEY_LEN];
    int good;
    int rv = OK;

    memset(code, 0, sizeof(code));
    memset(rnd, 0, sizeof(rnd));
    memset(&ctx, 0, sizeof(ctx));
    good = kmdc_activation_form_parse(kr->body, kr->body_len, code, rnd);
    /* the body holds the access code: only the parsed copies live on (the
     * buffer is the request's own, from kmdc_http_read_body) */
    kmdc_wipe((char *)kr->body, kr->body_len);
    if (!good) {
        rv = kmdc_http_error(r, HTTP_BAD_REQUEST, "bad_request",
                             "the body must be the form code=<access code>&r=<64 hex>");
        goto out;
    }
    ctx.kr = kr;
    ctx.code = code;
    ctx.rnd = rnd;
    src = st->ops->activate(st, kr->serial, KMDC_ACTIVATION_MAX_FAILURES, decide, &ctx,
                            &result);
    if (src == KMDC_STORE_NOTFOUND) {
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such card");
        goto out;
    }
    if (src != KMDC_STORE_OK) {
        rv = kmdc_store_answer_failure(r, src);
        goto out;
    }
    switch (result.verdict) {
    case KMDC_ACTIVATION_ACCEPT:
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "activate: card %016" APR_UINT64_T_HEX_FMT " activated",
                      (apr_uint64_t)kr->serial);
        kmdc_metrics_activation(KMDC_METRIC_ACT_OK);
        rv = kmdc_http_no_content(r);
        break;
    case KMDC_ACTIVATION_FAIL:
        /* an operator sees failed attempts at warn and a card that locks at
         * error (someone guessing, or a user who needs a new card) */
        ap_log_rerror(APLOG_MARK, result.locked ? APLOG_ERR : APLOG_WARNING, 0, r,
                      "activate: card %016" APR_UINT64_T_HEX_FMT ": %s access code, "
                      "failure %" APR_INT64_T_FMT "%s", (apr_uint64_t)kr->serial,
                      ctx.expired ? "expired" : "wrong", (apr_int64_t)result.failures,
                      result.locked ? ", card locked" : "");
        kmdc_metrics_activation(result.locked ? KMDC_METRIC_ACT_LOCKED
                                : KMDC_METRIC_ACT_FAILED);
        if (result.locked) {
            rv = answer_locked(r);
        }
        else if (ctx.expired) {
            rv = kmdc_http_error(r, HTTP_FORBIDDEN, "activation_failed",
                                 "the access code has expired; ask the administrator "
                                 "for a new card");
        }
        else {
            rv = kmdc_http_error(r, HTTP_FORBIDDEN, "activation_failed",
                                 "wrong access code (%" APR_INT64_T_FMT " of %d "
                                 "attempts used)", (apr_int64_t)result.failures,
                                 KMDC_ACTIVATION_MAX_FAILURES);
        }
        break;
    default:
        switch (ctx.why) {
        case ABORT_ACTIVE:
            rv = kmdc_http_error(r, HTTP_CONFLICT, "already_active",
                                 "the card is already active");
            break;
        case ABORT_NOT_ISSUED:
            rv = kmdc_http_error(r, HTTP_FORBIDDEN, "forbidden", "the card is %s",
                                 kmdc_card_status_name(ctx.status));
            break;
        case ABORT_LOCKED:
            ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, r,
                          "activate: card %016" APR_UINT64_T_HEX_FMT ": an attempt "
                          "on a locked card", (apr_uint64_t)kr->serial);
            kmdc_metrics_activation(KMDC_METRIC_ACT_LOCKED);
            rv = answer_locked(r);
            break;
        default:
            rv = kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                                 "the card's keys cannot be read at the datacenter; "
                                 "see the server log");
            break;
        }
        break;
    }
out:
    kmdc_wipe(code, sizeof(code));
    kmdc_wipe(rnd, sizeof(rnd));
    kmdc_wipe(&ctx, sizeof(ctx));
    return rv;
}

int kmdc_handle_card(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_store *st = kmdc_store_pg(r);
    kmdc_card_info info;
    kmdc_store_rc src;
    char serial[17];

    src = st->ops->card_get(st, kr->serial, &info);
    if (src == KMDC_STORE_NOTFOUND) {
        return kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such card");
    }
    if (src != KMDC_STORE_OK) {
        return kmdc_store_answer_failure(r, src);
    }
    kmdc_serial_format(serial, kr->serial);
    return kmdc_http_json(r, HTTP_OK,
                          json_pack("{s:s, s:s, s:b, s:I, s:I, s:I}",
                                    "serial", serial,
                                    "status", kmdc_card_status_name(info.status),
                                    "locked", info.locked,
                                    "up_next", (json_int_t)info.up_next,
                                    "down_next", (json_int_t)info.down_next,
                                    "time", (json_int_t)now_ms()));
}
