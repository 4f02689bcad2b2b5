/*
 * mod_kmdc_message.c - GET /messages/{id} (docs/API.md): the sender's view of
 * one message, each recipient's state.
 *
 * Only the card that sent the message sees it; for every other signer the
 * message does not exist (404, the same answer as for an unknown id, so ids
 * cannot be probed).  A delivery still queued past its expiry shows
 * "expired" although the purge has not marked it yet.  Recipients are listed
 * in the order the message named them.
 */
#include <string.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"

#include "kmdc_store.h"
#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_store.h"

/* The kmdc_message_rcpt_fn: one recipient into the JSON array arg. */
static int add_recipient(void *arg, const char *address, const char *state)
{
    json_t *recipients = arg;

    return json_array_append_new(recipients,
                                 json_pack("{s:s, s:s}", "address", address,
                                           "state", state)) != 0;
}

int kmdc_handle_message(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_store *st = kmdc_store_pg(r);
    kmdc_message_info info;
    kmdc_store_rc src;
    uint64_t id = 0;
    json_t *recipients = NULL, *body = NULL;
    char idhex[17];
    int rv = OK;

    id = kr->id;           /* parsed by the router (404 when malformed) */
    if ((recipients = json_array()) == NULL) {
        goto internal;
    }
    src = st->ops->message_status(st, id, kr->signer, &info, add_recipient, recipients);
    if (src == KMDC_STORE_NOTFOUND) {
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such message");
        goto out;
    }
    if (src == KMDC_STORE_ERROR) {
        goto internal;
    }
    if (src != KMDC_STORE_OK) {
        rv = kmdc_store_answer_failure(r, src);
        goto out;
    }
    kmdc_serial_format(idhex, id);
    body = json_pack("{s:s, s:I, s:I, s:O}", "message", idhex,
                     "created", (json_int_t)info.created_ms, "size", (json_int_t)info.size,
                     "recipients", recipients);
    if (body == NULL) {
        goto internal;
    }
    rv = kmdc_http_json(r, HTTP_OK, body);
    goto out;

internal:
    rv = kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal", "internal error");
out:
    json_decref(recipients);
    return rv;
}
