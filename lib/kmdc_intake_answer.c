/*
 * kmdc_intake_answer.c - the send intake's answers: an intake decides once,
 * and every decision goes through here (errors as {"error","message"} JSON,
 * a receipt repeated, a counter spent with its refusal stored).
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kmdc_intake_int.h"
#include "kmdc_util.h"

/* Decide the answer: status, code (NULL: body is the stored text given). */
void
intake_answer_text(kmdc_intake *in, kmdc_intake_result result, int status, const char *code,
                   const char *text, uint64_t message_id)
{
    if (in->st == ST_ANSWERED)
        return;
    in->st = ST_ANSWERED;
    free(in->body);
    in->body = strdup(text != NULL ? text : "{}");
    in->ans.result = result;
    in->ans.status = status;
    in->ans.code = code;
    in->ans.body = in->body;
    in->ans.message_id = message_id;
    in->ans.retry_after = status == 503 ? 5 : 0;
}

/* The JSON error body {"error":code,"message":...} (printf style); malloc'd. */
__attribute__((format(printf, 2, 0))) static char *
error_json(const char *code, const char *fmt, va_list ap)
{
    char message[200];
    json_t *o;
    char *s;

    vsnprintf(message, sizeof(message), fmt, ap);
    o = json_pack("{s:s, s:s}", "error", code, "message", message);
    s = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

__attribute__((format(printf, 5, 6))) void
intake_answer_error(kmdc_intake *in, kmdc_intake_result result, int status, const char *code,
                    const char *fmt, ...)
{
    char *text;
    va_list ap;

    va_start(ap, fmt);
    text = error_json(code, fmt, ap);
    va_end(ap);
    intake_answer_text(in, result, status, code, text, 0);
    free(text);
}

void
intake_rejected(kmdc_intake *in)
{
    intake_answer_error(in, KMDC_INTAKE_REJECTED, 403, "rejected", "the envelope was rejected");
}

void
intake_unavailable(kmdc_intake *in)
{
    intake_answer_error(in, KMDC_INTAKE_UNAVAILABLE, 503, "unavailable",
                        "the database is unavailable; send the same envelope again later");
}

void
intake_internal(kmdc_intake *in, const char *message)
{
    intake_answer_error(in, KMDC_INTAKE_REJECTED, 500, "internal", "%s", message);
}

/* A store failure other than the ones an operation defines. */
void
intake_store_failed(kmdc_intake *in, kmdc_store_rc rc)
{
    if (rc == KMDC_STORE_UNAVAILABLE || rc == KMDC_STORE_SCHEMA)
        intake_unavailable(in);
    else
        intake_internal(in, "internal error");
}

/* The receipt repeats its answer: 200 for a success, else the error. */
void
intake_repeat(kmdc_intake *in, const kmdc_receipt *rc)
{
    intake_answer_text(in, KMDC_INTAKE_REPEATED, rc->http_status == 201 ? 200 : rc->http_status,
                       NULL, rc->answer, rc->message_id);
}

/*
 * The counter was spent by another upload while this one ran (the client
 * retried before the first answer came).  Its receipt answers if it is for
 * these same bytes: a keyblock-scope receipt is judged on the prefix; an
 * envelope-scope one on the whole envelope, at once when the body was read
 * to its end, else by reading on as a retry (RETRY).  Any other bytes are
 * 403 rejected.
 */
void
intake_spent_meanwhile(kmdc_intake *in)
{
    kmdc_receipt rc;
    kmdc_store_rc src = in->store->ops->receipt_find(in->store, in->hdr.serial,
                                                      in->hdr.seq, &rc);

    if (src == KMDC_STORE_NOTFOUND) {
        intake_rejected(in);
        return;
    }
    if (src != KMDC_STORE_OK) {
        intake_store_failed(in, src);
        return;
    }
    if (rc.scope == KMDC_SCOPE_KEYBLOCK ||
        (rc.has_prefix_hash && !kmdc_ct_eq(rc.prefix_hash, 32, in->prefix_hash, 32))) {
        if (rc.scope == KMDC_SCOPE_KEYBLOCK && kmdc_ct_eq(rc.hash, 32, in->prefix_hash, 32))
            intake_repeat(in, &rc);
        else
            intake_rejected(in);
        return;
    }
    if (in->st == ST_PUBLISH) {          /* the whole envelope was hashed */
        if (kmdc_ct_eq(rc.hash, 32, in->full_hash, 32))
            intake_repeat(in, &rc);
        else
            intake_rejected(in);
        return;
    }
    in->sender.receipt = rc;             /* compare at the end of the body */
    in->sender.has_receipt = 1;
    in->st = ST_RETRY;
}

/*
 * A refusal after the keyblock authenticated: spend the counter (advance the
 * chain past seq, a receipt over the prefix), then answer.  If the store
 * cannot, the answer is 503 and nothing was spent.
 */
__attribute__((format(printf, 4, 5))) void
intake_spend(kmdc_intake *in, int status, const char *code, const char *fmt, ...)
{
    kmdc_spending sp;
    kmdc_store_rc rc;
    char *text;
    va_list ap;

    va_start(ap, fmt);
    text = error_json(code, fmt, ap);
    va_end(ap);
    if (text == NULL) {
        intake_internal(in, "internal error");
        return;
    }
    memset(&sp, 0, sizeof(sp));
    sp.serial = in->hdr.serial;
    sp.seq = in->hdr.seq;
    memcpy(sp.prefix_hash, in->prefix_hash, 32);
    sp.http_status = status;
    sp.answer = text;
    sp.error = code;
    sp.lease = in->lease_held ? &in->lease : NULL;
    if (kmdc_keyring_wrap(in->conf->keys, in->hdr.serial, KMDC_FIELD_UP_CHAIN,
                          in->hdr.seq + 1, in->ck_next, sp.up_chain_next, NULL) != KMDC_OK) {
        free(text);
        intake_internal(in, "internal error");
        return;
    }
    rc = in->store->ops->spend(in->store, &sp);
    if (rc == KMDC_STORE_OK && sp.lease != NULL)
        in->lease_held = 0;
    if (rc == KMDC_STORE_OK)
        intake_answer_text(in, KMDC_INTAKE_REFUSED, status, code, text, 0);
    else if (rc == KMDC_STORE_CONFLICT)
        intake_spent_meanwhile(in);             /* a concurrent retry spent it first */
    else
        intake_unavailable(in);
    kmdc_wipe(&sp, sizeof(sp));
    free(text);
}
