/*
 * mod_kmdc_mailbox.c - GET /mailbox/{serial}, GET and DELETE
 * /mailbox/{serial}/{id} (DESIGN 3.6).  Request authentication has already
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
 * polling, and holds no pooled connection while it waits.
 *
 * A fetch streams head || payload: the delivery's head, then the upload rows
 * of its message in idx order, one row per query (memory stays at one row, a
 * few MiB), each passed down the filters with a flush.  It runs in one
 * REPEATABLE READ READ ONLY transaction, so an acknowledgement that deletes
 * the upload meanwhile cannot cut the stream.
 *
 * An acknowledgement (DELETE) tombstones the delivery (state delivered,
 * acked_at now, head NULL) and, once no delivery of the message is queued any
 * more, deletes the message's upload so the bytes go (its rows cascade).  The
 * message row is locked first, so two recipients acknowledging at once cannot
 * both miss that they were the last.
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
#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_db.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_notify.h"

#define ENVELOPE_TYPE "application/vnd.kmdc.envelope"

/* Longest ?wait=S honoured (DESIGN 3.6). */
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
    int64_t down_next;
    PGresult *rows;                  /* id, seq, size, created (binary) */
    char etag[2 * ETAG_BYTES + 3];   /* the quoted strong tag */
} listing;

/*
 * Read the mailbox of kr->serial in one snapshot into ls and compute its
 * ETag.  Returns OK, or an HTTP status not yet answered (HTTP_NOT_FOUND,
 * HTTP_SERVICE_UNAVAILABLE, HTTP_INTERNAL_SERVER_ERROR).
 */
static int load_listing(kmdc_req *kr, kmdc_db *db, listing *ls)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_sha256_ctx *sha = NULL;
    uint8_t digest[KMDC_HASH_LEN];
    char hex[2 * ETAG_BYTES + 1];
    int in_tx = 0;
    int st = HTTP_SERVICE_UNAVAILABLE;
    int i, j, n;

    ls->rows = NULL;
    if (kmdc_db_command(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        != KMDC_DB_OK) {
        goto out;
    }
    in_tx = 1;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)kr->serial);
    if (kmdc_db_exec(db, "SELECT down_next FROM cards WHERE serial = $1",
                     &pp, 1, &res) != KMDC_DB_OK) {
        goto out;
    }
    if (!kmdc_db_get_int64(res, 0, 0, &ls->down_next)) {
        st = HTTP_NOT_FOUND;
        goto out;
    }
    kmdc_db_clear(db, res);
    res = NULL;
    if (kmdc_db_exec(db, "SELECT d.id, d.seq, octet_length(d.head)::bigint + m.payload_len, "
                     "floor(extract(epoch FROM d.created_at) * 1000)::bigint "
                     "FROM deliveries d JOIN messages m ON m.id = d.message_id "
                     "WHERE d.recipient = $1 AND d.state = 'queued' "
                     "AND d.expires_at > now() ORDER BY d.seq",
                     &pp, 1, &res) != KMDC_DB_OK
        || kmdc_db_command(db, "COMMIT") != KMDC_DB_OK) {
        goto out;
    }
    in_tx = 0;
    st = HTTP_INTERNAL_SERVER_ERROR;
    if ((sha = kmdc_sha256_new(NULL)) == NULL
        || kmdc_sha256_update(sha, "KMDC/1 mailbox", 14, NULL) != KMDC_OK
        || hash_u64(sha, (uint64_t)ls->down_next) != KMDC_OK) {
        goto out;
    }
    n = PQntuples(res);
    for (i = 0; i < n; i++) {
        for (j = 0; j < 4; j++) {
            int64_t v;

            if (!kmdc_db_get_int64(res, i, j, &v) || hash_u64(sha, (uint64_t)v) != KMDC_OK) {
                goto out;
            }
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
    ls->rows = res;
    res = NULL;
    st = OK;
out:
    kmdc_db_clear(db, res);
    if (in_tx) {
        (void)kmdc_db_rollback(db);
    }
    kmdc_sha256_free(sha);
    return st;
}

/* Answer 200 with the listing ls. */
static int answer_listing(request_rec *r, const listing *ls)
{
    json_t *list = json_array();
    json_t *body = NULL;
    int i, n = PQntuples(ls->rows);

    if (list == NULL) {
        goto internal;
    }
    for (i = 0; i < n; i++) {
        int64_t v[4];
        char id[17];
        int j;

        for (j = 0; j < 4; j++) {
            if (!kmdc_db_get_int64(ls->rows, i, j, &v[j])) {
                goto internal;
            }
        }
        kmdc_serial_format(id, (uint64_t)v[0]);
        if (json_array_append_new(list, json_pack("{s:s, s:I, s:I, s:I}",
                                                  "id", id,
                                                  "seq", (json_int_t)v[1],
                                                  "size", (json_int_t)v[2],
                                                  "created", (json_int_t)v[3])) != 0) {
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

/*
 * The listing.  With ?wait=S and an If-None-Match that matches, the answer
 * waits up to S seconds for the mailbox to change, then answers 304.  The
 * wait holds no pooled connection: the request registers with this child's
 * NOTIFY listener (mod_kmdc_notify.c) before its first read, gives the
 * connection back, and sleeps until a NOTIFY for this serial (or the
 * listener's return after an outage) wakes it; then it reads again and
 * compares the ETag (a NOTIFY that did not change the listing, such as one
 * for an acknowledgement already seen, waits on).
 */
int kmdc_handle_mailbox_list(kmdc_req *kr)
{
    request_rec *r = kr->r;
    const char *inm = apr_table_get(r->headers_in, "If-None-Match");
    kmdc_notify_waiter *w = NULL;
    kmdc_db *db = NULL;
    kmdc_db_rc dbrc;
    listing ls;
    apr_time_t deadline;
    int wait = 0;
    int final;
    int st;

    if (!kmdc_wait_query_parse(r->args, KMDC_WAIT_MAX, &wait)) {
        return kmdc_http_error(r, HTTP_BAD_REQUEST, "bad_request",
                               "the only query parameter is wait=<seconds>");
    }
    deadline = apr_time_now() + apr_time_from_sec(wait);
    final = wait == 0 || inm == NULL;
    if (!final) {
        /* before the first read: a change committed after it wakes us */
        w = kmdc_notify_watch(r, kr->serial);
    }
    for (;;) {
        if ((dbrc = kmdc_db_acquire(r, &db)) != KMDC_DB_OK) {
            st = kmdc_db_answer_unavailable(r, dbrc);
            goto out;
        }
        st = load_listing(kr, db, &ls);
        if (st != OK) {
            kmdc_db_release(db);
            if (st == HTTP_NOT_FOUND) {
                st = kmdc_http_error(r, st, "not_found", "no such card");
            }
            else if (st == HTTP_SERVICE_UNAVAILABLE) {
                st = kmdc_db_answer_unavailable(r, KMDC_DB_UNAVAILABLE);
            }
            else {
                st = kmdc_http_error(r, st, "internal", "internal error");
            }
            goto out;
        }
        apr_table_set(r->headers_out, "ETag", ls.etag);
        if (!kmdc_if_none_match(inm, ls.etag)) {
            st = answer_listing(r, &ls);
            kmdc_db_clear(db, ls.rows);
            kmdc_db_release(db);
            goto out;
        }
        kmdc_db_clear(db, ls.rows);
        kmdc_db_release(db);
        db = NULL;
        if (final || r->connection->aborted) {
            break;
        }
        if (kmdc_notify_wait(w, deadline) == KMDC_NOTIFY_FINAL) {
            final = 1;        /* the deadline: one last read, then 304 */
        }
    }
    st = kmdc_http_json(r, HTTP_NOT_MODIFIED, NULL);
out:
    kmdc_notify_unwatch(w);
    return st;
}

/* ------------------------------------------------------------------------ */
/* GET /mailbox/{serial}/{id}                                                */

/* One upload row: its bytes in *res (binary).  0 when it is missing. */
static kmdc_db_rc load_row(kmdc_db *db, int64_t upload_id, int32_t idx,
                           PGresult **res, const unsigned char **data, size_t *len)
{
    kmdc_db_params pp;
    kmdc_db_rc rc;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, upload_id);
    kmdc_db_param_int4(&pp, idx);
    rc = kmdc_db_exec(db, "SELECT data FROM upload_chunks WHERE upload_id = $1 "
                      "AND idx = $2", &pp, 1, res);
    if (rc == KMDC_DB_OK && !kmdc_db_get_bytea(*res, 0, 0, data, len)) {
        rc = KMDC_DB_ERROR;
    }
    return rc;
}

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
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL, *row = NULL;
    kmdc_db_rc dbrc;
    apr_bucket_brigade *bb = NULL;
    uint64_t id = 0;
    int64_t upload_id = 0, payload_len = 0, sent = 0;
    const unsigned char *head = NULL, *data = NULL;
    size_t head_len = 0, len = 0;
    int32_t idx = 0;
    int in_tx = 0;
    int rv = OK;

    if (!kmdc_http_parse_serial(kr->seg[2], &id)) {
        return kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                               "no such delivery: an id is 16 lowercase hex digits");
    }
    if ((dbrc = kmdc_db_acquire(r, &db)) != KMDC_DB_OK) {
        return kmdc_db_answer_unavailable(r, dbrc);
    }
    if (kmdc_db_command(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        != KMDC_DB_OK) {
        goto unavailable;
    }
    in_tx = 1;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)id);
    kmdc_db_param_int8(&pp, (int64_t)kr->serial);
    if (kmdc_db_exec(db, "SELECT d.head, coalesce(m.upload_id, 0), m.payload_len "
                     "FROM deliveries d JOIN messages m ON m.id = d.message_id "
                     "WHERE d.id = $1 AND d.recipient = $2 AND d.state = 'queued' "
                     "AND d.expires_at > now()", &pp, 1, &res) != KMDC_DB_OK) {
        goto unavailable;
    }
    if (PQntuples(res) != 1) {
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                             "no such delivery in this mailbox (acknowledged, "
                             "expired or never there)");
        goto out;
    }
    if (!kmdc_db_get_bytea(res, 0, 0, &head, &head_len)
        || !kmdc_db_get_int64(res, 0, 1, &upload_id)
        || !kmdc_db_get_int64(res, 0, 2, &payload_len) || payload_len < 0
        || (upload_id == 0 && payload_len > 0)) {
        goto broken;
    }
    /* the first row before the answer starts, so a lost upload is a 500 */
    if (payload_len > 0 && !r->header_only) {
        dbrc = load_row(db, upload_id, 0, &row, &data, &len);
        if (dbrc == KMDC_DB_ERROR || (dbrc == KMDC_DB_OK && (int64_t)len > payload_len)) {
            goto broken;
        }
        if (dbrc != KMDC_DB_OK) {
            goto unavailable;
        }
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
    kmdc_db_clear(db, res);
    res = NULL;
    while (row != NULL) {
        sent += (int64_t)len;
        if (pass(r, bb, data, len) != APR_SUCCESS) {
            goto aborted;
        }
        kmdc_db_clear(db, row);
        row = NULL;
        if (sent == payload_len) {
            break;
        }
        idx++;
        dbrc = load_row(db, upload_id, idx, &row, &data, &len);
        if (dbrc != KMDC_DB_OK || len == 0 || (int64_t)len > payload_len - sent) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          "mailbox: card %016" APR_UINT64_T_HEX_FMT " delivery %016"
                          APR_UINT64_T_HEX_FMT ": payload row %d %s; the answer was cut",
                          (apr_uint64_t)kr->serial, (apr_uint64_t)id, (int)idx,
                          dbrc == KMDC_DB_OK ? "has the wrong length" : "could not be read");
            APR_BRIGADE_INSERT_TAIL(bb, ap_bucket_error_create(HTTP_BAD_GATEWAY, NULL,
                                                               r->pool,
                                                               r->connection->bucket_alloc));
            APR_BRIGADE_INSERT_TAIL(bb, apr_bucket_eos_create(r->connection->bucket_alloc));
            r->connection->keepalive = AP_CONN_CLOSE;
            (void)ap_pass_brigade(r->output_filters, bb);
            apr_brigade_cleanup(bb);
            goto out;
        }
    }
    if (kmdc_db_command(db, "COMMIT") == KMDC_DB_OK) {
        in_tx = 0;
    }
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
    goto out;
broken:
    ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                  "mailbox: card %016" APR_UINT64_T_HEX_FMT " delivery %016"
                  APR_UINT64_T_HEX_FMT ": its stored envelope is incomplete",
                  (apr_uint64_t)kr->serial, (apr_uint64_t)id);
    rv = kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                         "the stored envelope is incomplete; see the server log");
    goto out;
unavailable:
    rv = kmdc_db_answer_unavailable(r, KMDC_DB_UNAVAILABLE);
out:
    kmdc_db_clear(db, row);
    kmdc_db_clear(db, res);
    if (in_tx && kmdc_db_rollback(db) != KMDC_DB_OK) {
        db = NULL;
    }
    kmdc_db_release(db);
    return rv;
}

/* ------------------------------------------------------------------------ */
/* DELETE /mailbox/{serial}/{id}                                             */

int kmdc_handle_mailbox_delete(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc dbrc;
    uint64_t id = 0;
    int64_t message = 0, queued = 0;
    char serial[17];
    int acked = 0;
    int in_tx = 0;
    int rv = OK;

    if (!kmdc_http_parse_serial(kr->seg[2], &id)) {
        return kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                               "no such delivery: an id is 16 lowercase hex digits");
    }
    if ((dbrc = kmdc_db_acquire(r, &db)) != KMDC_DB_OK) {
        return kmdc_db_answer_unavailable(r, dbrc);
    }
    if (kmdc_db_command(db, "BEGIN") != KMDC_DB_OK) {
        goto unavailable;
    }
    in_tx = 1;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)id);
    kmdc_db_param_int8(&pp, (int64_t)kr->serial);
    if (kmdc_db_exec(db, "SELECT message_id FROM deliveries WHERE id = $1 "
                     "AND recipient = $2", &pp, 0, &res) != KMDC_DB_OK) {
        goto unavailable;
    }
    if (PQntuples(res) != 1) {
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                             "no such delivery in this mailbox");
        goto out;
    }
    if (!kmdc_db_get_int64(res, 0, 0, &message)) {
        goto unavailable;
    }
    kmdc_db_clear(db, res);
    res = NULL;

    /* the message first: acknowledgements of one message take turns */
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, message);
    if (kmdc_db_exec(db, "SELECT 1 FROM messages WHERE id = $1 FOR NO KEY UPDATE",
                     &pp, 0, &res) != KMDC_DB_OK) {
        goto unavailable;
    }
    kmdc_db_clear(db, res);
    res = NULL;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)id);
    if (kmdc_db_exec(db, "UPDATE deliveries SET state = 'delivered', acked_at = now(), "
                     "head = NULL WHERE id = $1 AND state = 'queued'",
                     &pp, 0, &res) != KMDC_DB_OK) {
        goto unavailable;
    }
    acked = strcmp(PQcmdTuples(res), "1") == 0;
    kmdc_db_clear(db, res);
    res = NULL;

    /* no delivery of the message queued any more: the bytes go */
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, message);
    if (kmdc_db_exec(db, "SELECT count(*) FROM deliveries WHERE message_id = $1 "
                     "AND state = 'queued'", &pp, 0, &res) != KMDC_DB_OK
        || !kmdc_db_get_int64(res, 0, 0, &queued)) {
        goto unavailable;
    }
    kmdc_db_clear(db, res);
    res = NULL;
    if (queued == 0) {
        if (kmdc_db_exec(db, "DELETE FROM uploads u USING messages m "
                         "WHERE m.id = $1 AND u.id = m.upload_id",
                         &pp, 0, &res) != KMDC_DB_OK) {
            goto unavailable;
        }
        kmdc_db_clear(db, res);
        res = NULL;
    }
    if (acked) {
        /* wake long-polls of this mailbox: its listing changed */
        kmdc_serial_format(serial, kr->serial);
        kmdc_db_params_init(&pp);
        kmdc_db_param_text(&pp, serial);
        if (kmdc_db_exec(db, "SELECT pg_notify('kmdc_mailbox', $1)", &pp, 0, &res)
            != KMDC_DB_OK) {
            goto unavailable;
        }
        kmdc_db_clear(db, res);
        res = NULL;
    }
    if (kmdc_db_command(db, "COMMIT") != KMDC_DB_OK) {
        goto unavailable;
    }
    in_tx = 0;
    if (acked) {
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "mailbox: card %016" APR_UINT64_T_HEX_FMT " acknowledged delivery %016"
                      APR_UINT64_T_HEX_FMT "%s", (apr_uint64_t)kr->serial, (apr_uint64_t)id,
                      queued == 0 ? "; the message's payload was deleted" : "");
    }
    rv = kmdc_http_no_content(r);
    goto out;

unavailable:
    rv = kmdc_db_answer_unavailable(r, KMDC_DB_UNAVAILABLE);
out:
    kmdc_db_clear(db, res);
    if (in_tx && kmdc_db_rollback(db) != KMDC_DB_OK) {
        db = NULL;
    }
    kmdc_db_release(db);
    return rv;
}
