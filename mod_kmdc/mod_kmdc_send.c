/*
 * mod_kmdc_send.c - POST {location}/send: the HTTP side of the intake.
 *
 *  1. The Content-Type picks the framing around the envelope: raw or
 *     multipart/form-data (lib/kmdc_sendbody.c); anything else is 415.
 *  2. The brigade loop reads the body as it arrives (Content-Length or
 *     chunked; httpd removes the transfer coding) and feeds it on until the
 *     intake has decided or the body ended; a read error or the server's own
 *     body limit cuts the intake off.
 *  3. The intake (lib/kmdc_intake.c) runs the steps of the datacenter intake
 *     against the PostgreSQL store (mod_kmdc_store_send.c), which borrows a
 *     connection per operation: none is taken before the envelope's prefix is
 *     complete, none is held while this loop waits for bytes.  An upload
 *     batch is written while the loop reads the next one; the loop reads
 *     without blocking, and when nothing has arrived it settles that batch
 *     (kmdc_intake_settle) before it blocks.
 *  4. The intake is freed at once (its slot and an unpublished upload go
 *     now, not at the end of the request), then its answer is written.
 */
#include <string.h>

#include "apr_strings.h"
#include "http_protocol.h"
#include "http_request.h"

#include "kmdc_intake.h"
#include "kmdc_sendbody.h"
#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"
#include "mod_kmdc_store.h"

#define READ_BYTES (64u * 1024)          /* bytes asked of the input filters */

/* The request's intake and body, freed by a pool cleanup on every path. */
typedef struct send_ctx {
    kmdc_intake *in;
    kmdc_sendbody *body;
} send_ctx;

static apr_status_t send_cleanup(void *data)
{
    send_ctx *c = data;

    kmdc_sendbody_free(c->body);
    kmdc_intake_free(c->in);
    c->body = NULL;
    c->in = NULL;
    return APR_SUCCESS;
}

/* Step 2: read the body until it ends or the intake has decided.  Returns 1
 * when it was read to its end. */
static int read_body(request_rec *r, send_ctx *c)
{
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    int want = 1;

    while (want) {
        /* what has arrived, without waiting: HTTP_IN answers EAGAIN (or an
         * empty brigade) when nothing has, for a Content-Length and a
         * chunked body alike */
        apr_status_t rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES,
                                         APR_NONBLOCK_READ, READ_BYTES);
        apr_bucket *b;

        if (APR_STATUS_IS_EAGAIN(rv) || (rv == APR_SUCCESS && APR_BRIGADE_EMPTY(bb))) {
            /* about to wait for the client: the batch the store is writing
             * is settled first and its connection given back (6.3) */
            apr_brigade_cleanup(bb);
            if (!kmdc_intake_settle(c->in)) {
                return 0;                /* the batch failed: answered */
            }
            rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES,
                                APR_BLOCK_READ, READ_BYTES);
        }
        if (rv != APR_SUCCESS) {
            int st = ap_map_http_request_error(rv, HTTP_BAD_REQUEST);

            kmdc_intake_cut_off(c->in, st == HTTP_REQUEST_ENTITY_TOO_LARGE
                                       ? KMDC_INTAKE_CUT_TOO_LARGE : KMDC_INTAKE_CUT_BROKEN);
            apr_brigade_cleanup(bb);
            return 0;
        }
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb) && want;
             b = APR_BUCKET_NEXT(b)) {
            const char *data;
            apr_size_t len;

            if (APR_BUCKET_IS_EOS(b)) {
                apr_brigade_cleanup(bb);
                return 1;
            }
            if (APR_BUCKET_IS_METADATA(b)) {
                continue;
            }
            if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) != APR_SUCCESS) {
                kmdc_intake_cut_off(c->in, KMDC_INTAKE_CUT_BROKEN);
                want = 0;
                break;
            }
            if (len > 0) {
                want = kmdc_sendbody_feed(c->body, (const uint8_t *)data, len);
            }
        }
        apr_brigade_cleanup(bb);
    }
    return 0;
}

/* Step 4: write the decided answer (its body is JSON text). */
static int write_answer(request_rec *r, int status, const char *body, uint64_t message,
                        int retry_after)
{
    json_error_t jerr;
    json_t *o = json_loads(body, 0, &jerr);

    if (o == NULL) {
        return kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                               "a stored answer is unreadable");
    }
    if (message != 0) {
        char id[17];
        const kmdc_base *base = kmdc_conf_find_base(r);

        kmdc_serial_format(id, message);
        apr_table_setn(r->headers_out, "Location",
                       apr_psprintf(r->pool, "%s/messages/%s",
                                    base != NULL ? base->path : "", id));
    }
    if (retry_after > 0) {
        apr_table_setn(r->headers_out, "Retry-After", apr_itoa(r->pool, retry_after));
    }
    return kmdc_http_json(r, status, o);
}

int kmdc_handle_send(kmdc_req *kr)
{
    request_rec *r = kr->r;
    const kmdc_srv_conf *sc = kr->sc;
    kmdc_intake_conf *conf = apr_pcalloc(r->pool, sizeof(*conf));
    send_ctx *c = apr_pcalloc(r->pool, sizeof(*c));
    const kmdc_intake_answer *ans;
    const char *problem, *body;
    uint64_t serial = 0, seq = 0, bytes;
    size_t deliveries;
    int at_end, status, retry_after;
    uint64_t message;
    kmdc_intake_result result;
    kmdc_err err;

    conf->keys = sc->keys;
    conf->seq_window = sc->seq_window;
    conf->envelope_max_age = sc->envelope_max_age;
    conf->max_document_size = (uint64_t)sc->max_document_size;
    conf->max_recipients = sc->max_recipients;
    conf->max_uploads_per_card = sc->max_uploads_per_card;
    conf->mailbox_ttl = sc->mailbox_ttl;
    conf->quota_count = sc->mailbox_quota_count;
    conf->quota_bytes = sc->mailbox_quota_bytes;
    apr_pool_cleanup_register(r->pool, c, send_cleanup, apr_pool_cleanup_null);

    /* 1. the framing */
    kmdc_err_clear(&err);
    if ((c->in = kmdc_intake_new(conf, kmdc_store_pg(r), &err)) == NULL) {
        kmdc_metrics_send(HTTP_INTERNAL_SERVER_ERROR, 0, 0, 0, 0);
        return kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal", "internal error");
    }
    if ((c->body = kmdc_sendbody_new(apr_table_get(r->headers_in, "Content-Type"), c->in,
                                     &err)) == NULL) {
        status = err.code == KMDC_ERR_ARG ? HTTP_UNSUPPORTED_MEDIA_TYPE
                 : err.code == KMDC_ERR_FORMAT ? HTTP_BAD_REQUEST
                 : HTTP_INTERNAL_SERVER_ERROR;
        kmdc_metrics_send(status, 0, 0, 0, 0);
        if (status == HTTP_UNSUPPORTED_MEDIA_TYPE) {
            return kmdc_http_error(r, status, "unsupported_media_type", "%s", err.msg);
        }
        if (status == HTTP_BAD_REQUEST) {
            return kmdc_http_error(r, status, "bad_multipart", "%s", err.msg);
        }
        return kmdc_http_error(r, status, "internal", "internal error");
    }

    /* 2, 3. the body through the intake */
    at_end = read_body(r, c);
    if (at_end) {
        kmdc_sendbody_finish(c->body);
    }
    if (!at_end) {
        r->connection->keepalive = AP_CONN_CLOSE;   /* do not read the rest */
    }

    /* 4. free the intake now, keep its answer */
    ans = kmdc_intake_decision(c->in);
    if (ans == NULL) {
        kmdc_intake_cut_off(c->in, KMDC_INTAKE_CUT_BROKEN);
        ans = kmdc_intake_decision(c->in);
    }
    status = ans->status;
    body = apr_pstrdup(r->pool, ans->body);
    message = ans->message_id;
    retry_after = ans->retry_after;
    result = ans->result;
    (void)kmdc_intake_header(c->in, &serial, &seq);
    bytes = kmdc_intake_bytes(c->in);
    deliveries = kmdc_intake_recipients(c->in);
    if ((problem = kmdc_intake_problem(c->in)) != NULL) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r, "send: card %016" APR_UINT64_T_HEX_FMT
                      " seq %" APR_UINT64_T_FMT ": %s", (apr_uint64_t)serial,
                      (apr_uint64_t)seq, problem);
    }
    if (result == KMDC_INTAKE_ACCEPTED) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "send: card %016" APR_UINT64_T_HEX_FMT " seq %" APR_UINT64_T_FMT
                      " published message %016" APR_UINT64_T_HEX_FMT " to %" APR_SIZE_T_FMT
                      " recipient(s)", (apr_uint64_t)serial, (apr_uint64_t)seq,
                      (apr_uint64_t)message, deliveries);
    }
    else if (ans->code != NULL && status != HTTP_FORBIDDEN) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "send: card %016" APR_UINT64_T_HEX_FMT " seq %" APR_UINT64_T_FMT
                      ": %d %s", (apr_uint64_t)serial, (apr_uint64_t)seq, status, ans->code);
    }
    apr_pool_cleanup_run(r->pool, c, send_cleanup);

    kmdc_metrics_send(status, result == KMDC_INTAKE_REPEATED, result == KMDC_INTAKE_REFUSED,
                      bytes, deliveries);
    return write_answer(r, status, body, message, retry_after);
}
