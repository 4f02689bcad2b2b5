/*
 * mod_kmdc_mailbox.c - GET /mailbox/{serial}, GET and DELETE
 * /mailbox/{serial}/{id} (docs/API.md).  Request authentication has already
 * checked that the signer is the card of the path and that it is active.
 *
 * The listing shows the queued, unexpired deliveries in seq order with the
 * card's down_next, read in one snapshot.  Its ETag is a strong tag: the
 * first 16 bytes of SHA-256 over down_next and every listed (id, seq, size,
 * created), so any change of the listing (a new delivery, an acknowledgement,
 * an expiry) changes it; If-None-Match with that tag answers 304.  With
 * ?wait=S (S clamped to 60) a matching If-None-Match makes the answer wait
 * up to S seconds for a change, then 304: the request is woken by the NOTIFY
 * that POST /send and an acknowledgement send (mod_kmdc_notify.c), never by
 * polling, and holds no pooled connection while it waits (and, on the event
 * MPM, no thread: it is suspended).
 *
 * A fetch streams head || payload: the delivery's head, then the payload
 * rows of its message in order (the upload's rows, or the one payload kept
 * in the message's row), one row at a time (memory stays at one row, a few
 * MiB), each passed down the filters with a flush.  The store reads them in
 * one snapshot (fetch_open .. fetch_close), so an acknowledgement that
 * drops the payload meanwhile cannot cut the stream.
 *
 * An acknowledgement (DELETE) tombstones the delivery and, once no delivery
 * of the message is queued any more, the store deletes the message's payload
 * (kmdc_store.h, ack).
 *
 * The SQL of all three is in mod_kmdc_store_mailbox.c.
 */
/* first: with offsetof defined, APR's ring macros use it instead of
 * arithmetic on a NULL pointer (which UBSan reports) */
#include <stddef.h>
#include <string.h>

#include "apr_buckets.h"
#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"
#include "http_request.h"
#include "util_filter.h"

#include "kmdc_crypto.h"
#include "kmdc_reqparse.h"
#include "kmdc_store.h"
#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"
#include "mod_kmdc_notify.h"
#include "mod_kmdc_store.h"

#define ENVELOPE_TYPE "application/vnd.kmdc.envelope"

/* Longest ?wait=S honoured (docs/API.md). */
#define KMDC_WAIT_MAX 60

/* Bytes of SHA-256 the ETag shows. */
#define ETAG_BYTES 16

/* ------------------------------------------------------------------------ */
/* GET /mailbox/{serial}                                                     */

/* Feed one u64 into the ETag hash. */
static kmdc_status hash_u64(kmdc_sha256_ctx *c, uint64_t v)
{
    uint8_t b[8];

    kmdc_put_u64(b, v);
    return kmdc_sha256_update(c, b, sizeof(b), NULL);
}

/* One reading of a mailbox. */
typedef struct listing {
    uint64_t down_next;
    apr_array_header_t *rows;        /* kmdc_mailbox_entry, in seq order */
    char etag[2 * ETAG_BYTES + 3];   /* the quoted strong tag */
} listing;

/* The kmdc_mailbox_row_fn: keep a copy of the row. */
static int collect_row(void *arg, const kmdc_mailbox_entry *e)
{
    apr_array_header_t *rows = arg;

    *(kmdc_mailbox_entry *)apr_array_push(rows) = *e;
    return 0;
}

/*
 * Read the mailbox of kr->serial in one snapshot into ls (its rows array made
 * by the caller, emptied here) and compute its ETag.  KMDC_STORE_OK, or the
 * store's failure (KMDC_STORE_ERROR also when the ETag cannot be computed).
 */
static kmdc_store_rc load_listing(kmdc_req *kr, kmdc_store *st, listing *ls)
{
    kmdc_sha256_ctx *sha = NULL;
    uint8_t digest[KMDC_HASH_LEN];
    char hex[2 * ETAG_BYTES + 1];
    kmdc_store_rc rc;
    int i;

    apr_array_clear(ls->rows);
    rc = st->ops->mailbox_list(st, kr->serial, &ls->down_next, collect_row, ls->rows);
    if (rc != KMDC_STORE_OK) {
        goto out;
    }
    rc = KMDC_STORE_ERROR;
    if ((sha = kmdc_sha256_new(NULL)) == NULL
        || kmdc_sha256_update(sha, "KMDC/1 mailbox", 14, NULL) != KMDC_OK
        || hash_u64(sha, ls->down_next) != KMDC_OK) {
        goto out;
    }
    for (i = 0; i < ls->rows->nelts; i++) {
        const kmdc_mailbox_entry *e = &APR_ARRAY_IDX(ls->rows, i, kmdc_mailbox_entry);

        if (hash_u64(sha, e->id) != KMDC_OK || hash_u64(sha, e->seq) != KMDC_OK
            || hash_u64(sha, (uint64_t)e->size) != KMDC_OK
            || hash_u64(sha, (uint64_t)e->created_ms) != KMDC_OK) {
            goto out;
        }
    }
    if (kmdc_sha256_final(sha, digest, NULL) != KMDC_OK) {
        goto out;
    }
    kmdc_hex_encode(hex, digest, ETAG_BYTES);
    ls->etag[0] = '"';
    memcpy(ls->etag + 1, hex, 2 * ETAG_BYTES);
    ls->etag[2 * ETAG_BYTES + 1] = '"';
    ls->etag[2 * ETAG_BYTES + 2] = '\0';
    rc = KMDC_STORE_OK;
out:
    kmdc_sha256_free(sha);
    return rc;
}

/* Answer 200 with the listing ls. */
static int answer_listing(request_rec *r, const listing *ls)
{
    json_t *list = json_array();
    json_t *body = NULL;
    int i;

    if (list == NULL) {
        goto internal;
    }
    for (i = 0; i < ls->rows->nelts; i++) {
        const kmdc_mailbox_entry *e = &APR_ARRAY_IDX(ls->rows, i, kmdc_mailbox_entry);
        char id[17];

        kmdc_serial_format(id, e->id);
        if (json_array_append_new(list, json_pack("{s:s, s:I, s:I, s:I}",
                                                  "id", id,
                                                  "seq", (json_int_t)e->seq,
                                                  "size", (json_int_t)e->size,
                                                  "created", (json_int_t)e->created_ms))
            != 0) {
            goto internal;
        }
    }
    body = json_pack("{s:I, s:o}", "down_next", (json_int_t)ls->down_next,
                     "deliveries", list);
    list = NULL;                     /* "o" took it, also on failure */
    if (body == NULL) {
        goto internal;
    }
    return kmdc_http_json(r, HTTP_OK, body);
internal:
    json_decref(list);
    return kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal", "internal error");
}

/* A long-poll in progress. */
typedef struct longpoll {
    kmdc_req *kr;
    kmdc_store *st;
    kmdc_notify_waiter *w;           /* NULL without a listener */
    const char *inm;                 /* If-None-Match */
    apr_time_t deadline;
    listing ls;
} longpoll;

/* How long past its deadline a long-poll's record in mailbox_watchers lasts
 * (the deadline's last read, a slow callback). */
#define KMDC_WATCH_MARGIN 5

/*
 * Read the mailbox once.  Returns 1 with *rv the handler's value when the
 * request is answered (a change, an error, or, when final, 304), 0 when the
 * listing still matches If-None-Match and the wait goes on.
 */
static int poll_once(longpoll *lp, int final, int *rv)
{
    request_rec *r = lp->kr->r;
    kmdc_store_rc src;

    if (!final && lp->w != NULL) {
        /* the mailbox is watched (committed before the read below): a
         * change committed after that read sends the NOTIFY that wakes us */
        apr_time_t left = lp->deadline - apr_time_now();

        (void)lp->st->ops->mailbox_watch(lp->st, lp->kr->serial,
                                         (int)apr_time_sec(left > 0 ? left : 0) + 1
                                         + KMDC_WATCH_MARGIN);
    }
    src = load_listing(lp->kr, lp->st, &lp->ls);

    if (src == KMDC_STORE_NOTFOUND) {
        *rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such card");
        return 1;
    }
    if (src == KMDC_STORE_ERROR) {
        *rv = kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                              "internal error");
        return 1;
    }
    if (src != KMDC_STORE_OK) {
        *rv = kmdc_store_answer_failure(r, src);
        return 1;
    }
    apr_table_set(r->headers_out, "ETag", lp->ls.etag);
    if (!kmdc_if_none_match(lp->inm, lp->ls.etag)) {
        *rv = answer_listing(r, &lp->ls);
        return 1;
    }
    if (final || r->connection->aborted) {
        *rv = kmdc_http_json(r, HTTP_NOT_MODIFIED, NULL);
        return 1;
    }
    return 0;
}

/* The kmdc_notify_resume_fn of a suspended long-poll (a worker thread). */
static int longpoll_resume(void *arg, int final)
{
    longpoll *lp = arg;
    request_rec *r = lp->kr->r;
    int answered;
    int rv = OK;

    /* the handler's thread has let go of r once httpd unlocked this */
    apr_thread_mutex_lock(r->invoke_mtx);
    answered = poll_once(lp, final, &rv);
    if (answered) {
        kmdc_notify_unwatch(lp->w);
        kmdc_metrics_answered(r, rv);
    }
    apr_thread_mutex_unlock(r->invoke_mtx);
    if (answered) {
        kmdc_notify_finish(r, rv);
    }
    return answered;
}

/*
 * The listing.  With ?wait=S and an If-None-Match that matches, the answer
 * waits up to S seconds for the mailbox to change, then answers 304.  The
 * wait holds no pooled connection: the request registers with this child's
 * NOTIFY listener (mod_kmdc_notify.c) and, committed in the same round trip
 * before each read that may be followed by a wait, in mailbox_watchers
 * (changes of mailboxes nobody watches notify nobody); each read borrows a
 * connection and gives it back before returning.  It is woken by a NOTIFY
 * for this serial (or the listener's return after an outage); then it
 * reads again and compares the ETag (a NOTIFY that did not change the
 * listing, such as one for an acknowledgement already seen, waits on).  At
 * the deadline it reads once more.  On the event MPM the wait holds no
 * thread either: the handler returns SUSPENDED and the reads after the first
 * run in timed callbacks of the MPM (kmdc_notify_suspend); elsewhere the
 * thread sleeps in kmdc_notify_wait.
 */
int kmdc_handle_mailbox_list(kmdc_req *kr)
{
    request_rec *r = kr->r;
    longpoll *lp = apr_pcalloc(r->pool, sizeof(*lp));
    apr_time_t deadline;
    int wait = 0;
    int final;
    int rv = OK;

    if (!kmdc_wait_query_parse(r->args, KMDC_WAIT_MAX, &wait)) {
        return kmdc_http_error(r, HTTP_BAD_REQUEST, "bad_request",
                               "the only query parameter is wait=<seconds>");
    }
    lp->kr = kr;
    lp->st = kmdc_store_pg(r);
    lp->inm = apr_table_get(r->headers_in, "If-None-Match");
    lp->ls.rows = apr_array_make(r->pool, 16, sizeof(kmdc_mailbox_entry));
    deadline = apr_time_now() + apr_time_from_sec(wait);
    lp->deadline = deadline;
    final = wait == 0 || lp->inm == NULL;
    if (!final) {
        /* before the first read: a change committed after it wakes us */
        lp->w = kmdc_notify_watch(r, kr->serial);
    }
    if (poll_once(lp, final, &rv)) {
        goto out;
    }
    rv = kmdc_notify_suspend(lp->w, r, deadline, longpoll_resume, lp);
    if (rv == SUSPENDED) {
        return SUSPENDED;             /* lp->w now belongs to the callbacks */
    }
    for (;;) {
        if (kmdc_notify_wait(lp->w, deadline) == KMDC_NOTIFY_FINAL) {
            final = 1;        /* the deadline: one last read, then 304 */
        }
        if (poll_once(lp, final, &rv)) {
            break;
        }
    }
out:
    kmdc_notify_unwatch(lp->w);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* GET /mailbox/{serial}/{id}                                                */

/* Pass data (copied by the filters when they keep it) and a flush. */
static apr_status_t pass(request_rec *r, apr_bucket_brigade *bb,
                         const void *data, apr_size_t len)
{
    apr_bucket_alloc_t *ba = r->connection->bucket_alloc;
    apr_status_t rv;

    if (len > 0) {
        APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_transient_create(data, len, ba));
    }
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_flush_create(ba));
    rv = ap_pass_brigade(r->output_filters, bb);
    apr_brigade_cleanup(bb);
    if (rv == APR_SUCCESS && r->connection->aborted) {
        rv = APR_ECONNABORTED;
    }
    return rv;
}

int kmdc_handle_mailbox_fetch(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_store *st = kmdc_store_pg(r);
    kmdc_fetch *f = NULL;
    kmdc_store_rc src;
    apr_bucket_brigade *bb = NULL;
    uint64_t id = 0, payload_len = 0;
    const uint8_t *head = NULL, *data = NULL;
    size_t head_len = 0, len = 0;
    int rv = OK;

    id = kr->id;           /* parsed by the router (404 when malformed) */
    src = st->ops->fetch_open(st, kr->serial, id, &f, &head, &head_len, &payload_len);
    if (src == KMDC_STORE_NOTFOUND) {
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                             "no such delivery in this mailbox (acknowledged, "
                             "expired or never there)");
        goto out;
    }
    if (src == KMDC_STORE_ERROR) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "mailbox: card %016" APR_UINT64_T_HEX_FMT " delivery %016"
                      APR_UINT64_T_HEX_FMT ": its stored envelope is incomplete",
                      (apr_uint64_t)kr->serial, (apr_uint64_t)id);
        rv = kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                             "the stored envelope is incomplete; see the server log");
        goto out;
    }
    if (src != KMDC_STORE_OK) {
        rv = kmdc_store_answer_failure(r, src);
        goto out;
    }

    ap_set_content_type(r, ENVELOPE_TYPE);
    ap_set_content_length(r, (apr_off_t)head_len + (apr_off_t)payload_len);
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    apr_table_setn(r->headers_out, "X-Content-Type-Options", "nosniff");
    r->status = HTTP_OK;
    if (r->header_only) {
        goto out;
    }
    bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    if (pass(r, bb, head, head_len) != APR_SUCCESS) {
        goto aborted;
    }
    for (;;) {
        src = st->ops->fetch_next(f, &data, &len);
        if (src != KMDC_STORE_OK) {
            /* logged by the store; the status line is gone: cut the answer */
            APR_BRIGADE_INSERT_TAIL(bb, ap_bucket_error_create(HTTP_BAD_GATEWAY, NULL,
                                                               r->pool,
                                                               r->connection->bucket_alloc));
            APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(r->connection->bucket_alloc));
            r->connection->keepalive = AP_CONN_CLOSE;
            (void)ap_pass_brigade(r->output_filters, bb);
            apr_brigade_cleanup(bb);
            goto out;
        }
        if (len == 0) {
            break;
        }
        if (pass(r, bb, data, len) != APR_SUCCESS) {
            goto aborted;
        }
    }
    /* the snapshot is no longer needed: give the connection back first */
    st->ops->fetch_close(f);
    f = NULL;
    APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(r->connection->bucket_alloc));
    (void)ap_pass_brigade(r->output_filters, bb);
    apr_brigade_cleanup(bb);
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                  "mailbox: card %016" APR_UINT64_T_HEX_FMT " fetched delivery %016"
                  APR_UINT64_T_HEX_FMT, (apr_uint64_t)kr->serial, (apr_uint64_t)id);
    goto out;

aborted:
    ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                  "mailbox: the client went away during a fetch");
    r->connection->keepalive = AP_CONN_CLOSE;
out:
    st->ops->fetch_close(f);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* DELETE /mailbox/{serial}/{id}                                             */

int kmdc_handle_mailbox_delete(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_store *st = kmdc_store_pg(r);
    kmdc_store_rc src;
    uint64_t id = 0;
    int acked = 0, payload_deleted = 0;

    id = kr->id;           /* parsed by the router (404 when malformed) */
    src = st->ops->ack(st, kr->serial, id, &acked, &payload_deleted);
    if (src == KMDC_STORE_NOTFOUND) {
        return kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                               "no such delivery in this mailbox");
    }
    if (src != KMDC_STORE_OK) {
        return kmdc_store_answer_failure(r, src);
    }
    if (acked) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "mailbox: card %016" APR_UINT64_T_HEX_FMT " acknowledged delivery %016"
                      APR_UINT64_T_HEX_FMT "%s", (apr_uint64_t)kr->serial, (apr_uint64_t)id,
                      payload_deleted ? "; the message's payload was deleted" : "");
    }
    return kmdc_http_no_content(r);
}
