/*
 * mod_kmdc_store_mailbox.c - the PostgreSQL store: mailbox listing, fetch,
 * acknowledgement and message status.
 *
 * Reads that must agree with each other (a listing and its down_next, a
 * delivery's head and its payload rows, a message and its deliveries) run in
 * one REPEATABLE READ READ ONLY transaction.  A listing and a message status
 * give their connection back before the caller's callback sees the rows (the
 * results do not need it), so a slow caller holds nothing.
 *
 * A fetch keeps its connection and its snapshot from fetch_open to
 * fetch_close: an acknowledgement that drops the payload meanwhile cannot
 * cut the stream.  The payload is read one upload row per query, each freed
 * before the next, so memory stays at one row (a few MiB); a payload that
 * fits one batch is kept in the message's own row (schema 6) and comes with
 * the head.
 *
 * An acknowledgement locks the message row first, so two recipients
 * acknowledging at once cannot both miss that they were the last one with the
 * message queued (then the payload goes: the upload is deleted and its rows
 * cascade, or the message's payload column is cleared).
 */
#include <string.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"

#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_store_pg.h"

/* ------------------------------------------------------------------------ */
/* the listing                                                               */

kmdc_store_rc kmdc_pg_mailbox_list(kmdc_store *st, uint64_t serial, uint64_t *down_next,
                                   kmdc_mailbox_row_fn row, void *arg)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc dbrc;
    kmdc_store_rc rc;
    int64_t dn = 0;
    int i, n;

    *down_next = 0;
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        return rc;
    }
    /* one statement, so one snapshot: the card's down_next and its queued
     * deliveries (none: one row of NULLs after the card's) */
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    dbrc = kmdc_db_exec(db, "SELECT c.down_next, d.id, d.seq, "
                        "octet_length(d.head)::bigint + d.payload_len, "
                        "floor(extract(epoch FROM d.created_at) * 1000)::bigint "
                        "FROM cards c LEFT JOIN LATERAL (SELECT d.id, d.seq, d.head, "
                        "d.created_at, m.payload_len FROM deliveries d JOIN messages m "
                        "ON m.id = d.message_id WHERE d.recipient = c.serial "
                        "AND d.state = 'queued' AND d.expires_at > now()) d ON true "
                        "WHERE c.serial = $1 ORDER BY d.seq", &pp, 1, &res);
    /* the rows live in res, not in the connection: give it back first */
    kmdc_db_release(db);
    if (dbrc != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
        goto out;
    }
    n = PQntuples(res);
    if (n == 0 || !kmdc_db_get_int64(res, 0, 0, &dn) || dn < 0) {
        rc = KMDC_STORE_NOTFOUND;
        goto out;
    }
    *down_next = (uint64_t)dn;
    for (i = 0; i < n && !PQgetisnull(res, i, 1); i++) {
        kmdc_mailbox_entry e;
        int64_t id = 0, seq = 0;

        if (!kmdc_db_get_int64(res, i, 1, &id) || !kmdc_db_get_int64(res, i, 2, &seq)
            || !kmdc_db_get_int64(res, i, 3, &e.size)
            || !kmdc_db_get_int64(res, i, 4, &e.created_ms)) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, ps->r,
                          "store: card %016" APR_UINT64_T_HEX_FMT ": a delivery of "
                          "its mailbox cannot be read", (apr_uint64_t)serial);
            rc = KMDC_STORE_ERROR;
            goto out;
        }
        e.id = (uint64_t)id;
        e.seq = (uint64_t)seq;
        if (row(arg, &e) != 0) {
            rc = KMDC_STORE_ERROR;
            goto out;
        }
    }
    rc = KMDC_STORE_OK;
out:
    kmdc_db_clear(db, res);   /* db was given back; its request still frees res */
    return rc;
}

kmdc_store_rc kmdc_pg_mailbox_watch(kmdc_store *st, uint64_t serial, int seconds)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db_batch *b = ps->deferred;
    kmdc_db_params pp;

    if (b == NULL) {
        b = apr_palloc(ps->r->pool, sizeof(*b));
        kmdc_db_batch_init(b, NULL);
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_int4(&pp, seconds);
    /* committed before the read that follows it in the round trip */
    kmdc_pg_add_own_tx(b, "INSERT INTO mailbox_watchers (serial, until) VALUES ($1::bigint, "
                       "now() + $2::int * interval '1 second') ON CONFLICT (serial) DO UPDATE "
                       "SET until = greatest(mailbox_watchers.until, excluded.until)", &pp, 0);
    if (b->overflow) {
        return KMDC_STORE_ERROR;
    }
    ps->deferred = b;
    return KMDC_STORE_OK;
}

int kmdc_pg_wake_add(kmdc_db_batch *b, apr_pool_t *p, const uint64_t *serials, int n)
{
    int64_t *s = apr_palloc(p, sizeof(*s) * (size_t)n);
    const char **hex = apr_palloc(p, sizeof(*hex) * (size_t)n);
    kmdc_db_params pp;
    int i;

    for (i = 0; i < n; i++) {
        char *h = apr_palloc(p, 17);

        kmdc_serial_format(h, serials[i]);
        s[i] = (int64_t)serials[i];
        hex[i] = h;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8_array(&pp, p, s, n);
    kmdc_db_param_text_array(&pp, p, hex, n);
    return kmdc_db_batch_add(b, "SELECT set_config('synchronous_commit', 'off', true), "
                             "pg_notify('kmdc_mailbox', u.h) FROM unnest($1::bigint[], "
                             "$2::text[]) AS u(s, h) WHERE EXISTS (SELECT 1 FROM "
                             "mailbox_watchers w WHERE w.serial = u.s AND w.until > now())",
                             &pp, 0);
}

kmdc_db_rc kmdc_pg_committed(kmdc_db_batch *b, int commit, kmdc_db_rc dbrc)
{
    PGresult *res = kmdc_db_batch_result(b, commit);

    if (dbrc == KMDC_DB_OK || res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        return dbrc;
    }
    /* committed; only the wake-up failed: the long-polls answer at their
     * deadline instead */
    ap_log_rerror(APLOG_MARK, APLOG_WARNING, 0, b->db->r,
                  "kmdc: committed, but the long-polls could not be woken");
    return KMDC_DB_OK;
}

/* ------------------------------------------------------------------------ */
/* fetch                                                                     */

struct kmdc_fetch {
    kmdc_pg_store *ps;
    kmdc_db *db;                  /* held, in its transaction, until close */
    uint64_t serial, id;          /* the mailbox and the delivery (logging) */
    PGresult *head_res;           /* holds the head until close */
    PGresult *row;                /* the payload row handed out last */
    int64_t upload_id;            /* 0: the payload is in the message's row */
    uint64_t payload_len;         /* bytes of payload */
    uint64_t sent;                /* bytes handed out so far */
    int32_t idx;                  /* index of the row in row */
    int pending;                  /* row was read but not yet handed out */
    int in_tx;
};

/* Read payload row f->idx into f->row, checking it is not empty and fits in
 * what remains of the payload; logs why when a row after the first is
 * missing or wrong. */
/* The payload row in f->row (row f->idx), or why it is unusable. */
static kmdc_store_rc check_row(kmdc_fetch *f)
{
    const unsigned char *data = NULL;
    size_t len = 0;
    const char *why = "could not be read";

    if (!kmdc_db_get_bytea(f->row, 0, 0, &data, &len)) {
        /* the row is missing */
    }
    else if (len == 0 || (uint64_t)len > f->payload_len - f->sent
             || (f->upload_id == 0 && (uint64_t)len != f->payload_len)) {
        /* a payload in the message's row is the whole of it */
        why = "has the wrong length";
    }
    else {
        return KMDC_STORE_OK;
    }
    if (f->idx > 0) {
        /* the first row fails before any answer: the caller says why */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, f->ps->r,
                      "mailbox: card %016" APR_UINT64_T_HEX_FMT " delivery %016"
                      APR_UINT64_T_HEX_FMT ": payload row %d %s; the answer was cut",
                      (apr_uint64_t)f->serial, (apr_uint64_t)f->id, (int)f->idx, why);
    }
    kmdc_db_clear(f->db, f->row);
    f->row = NULL;
    return KMDC_STORE_ERROR;
}

static kmdc_store_rc load_row(kmdc_fetch *f)
{
    kmdc_db_params pp;
    kmdc_db_rc dbrc;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, f->upload_id);
    kmdc_db_param_int4(&pp, f->idx);
    dbrc = kmdc_db_exec(f->db, "SELECT data FROM upload_chunks WHERE upload_id = $1 "
                        "AND idx = $2", &pp, 1, &f->row);
    if (dbrc != KMDC_DB_OK) {
        kmdc_db_clear(f->db, f->row);
        f->row = NULL;
        return kmdc_pg_failed(dbrc);
    }
    return check_row(f);
}

kmdc_store_rc kmdc_pg_fetch_open(kmdc_store *st, uint64_t serial, uint64_t id,
                                 kmdc_fetch **fp, const uint8_t **head, size_t *head_len,
                                 uint64_t *payload_len)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_fetch *f = apr_pcalloc(ps->r->pool, sizeof(*f));
    kmdc_db_batch b;
    int i_head, i_first;
    kmdc_db_params pp;
    kmdc_db_rc dbrc;
    kmdc_store_rc rc;
    const unsigned char *h = NULL;
    size_t hlen = 0;
    int64_t plen = 0;

    *fp = NULL;
    *head = NULL;
    *head_len = 0;
    *payload_len = 0;
    f->ps = ps;
    f->serial = serial;
    f->id = id;
    if ((rc = kmdc_pg_borrow(ps, &f->db)) != KMDC_STORE_OK) {
        goto out;
    }
    /* one round trip: the snapshot, the head, the first payload row (so a
     * lost upload is known before any answer), which for a payload kept in
     * the message's row (schema 6) is the whole payload */
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)id);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_batch_init(&b, f->db);
    kmdc_db_batch_command(&b, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY");
    i_head = kmdc_db_batch_add(&b, "SELECT d.head, coalesce(m.upload_id, 0), m.payload_len "
                             "FROM deliveries d JOIN messages m ON m.id = d.message_id "
                             "WHERE d.id = $1 AND d.recipient = $2 AND d.state = 'queued' "
                             "AND d.expires_at > now()", &pp, 1);
    i_first = kmdc_db_batch_add(&b, "SELECT coalesce(m.payload, c.data) FROM deliveries d "
                              "JOIN messages m ON m.id = d.message_id LEFT JOIN "
                              "upload_chunks c ON c.upload_id = m.upload_id AND c.idx = 0 "
                              "WHERE d.id = $1 AND d.recipient = $2", &pp, 1);
    dbrc = kmdc_db_batch_run(&b);
    f->in_tx = 1;          /* or aborted, or lost: closing rolls back alike */
    if (dbrc != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
        goto out;
    }
    f->head_res = kmdc_db_batch_result(&b, i_head);
    f->row = kmdc_db_batch_result(&b, i_first);
    if (PQntuples(f->head_res) != 1) {
        rc = KMDC_STORE_NOTFOUND;
        goto out;
    }
    if (!kmdc_db_get_bytea(f->head_res, 0, 0, &h, &hlen)
        || !kmdc_db_get_int64(f->head_res, 0, 1, &f->upload_id)
        || !kmdc_db_get_int64(f->head_res, 0, 2, &plen) || plen < 0) {
        rc = KMDC_STORE_ERROR;
        goto out;
    }
    f->payload_len = (uint64_t)plen;
    if (f->payload_len > 0) {
        if ((rc = check_row(f)) != KMDC_STORE_OK) {
            goto out;
        }
        f->pending = 1;
    }
    *fp = f;
    *head = h;
    *head_len = hlen;
    *payload_len = f->payload_len;
    rc = KMDC_STORE_OK;
out:
    if (rc != KMDC_STORE_OK) {
        kmdc_pg_fetch_close(f);
    }
    return rc;
}

kmdc_store_rc kmdc_pg_fetch_next(kmdc_fetch *f, const uint8_t **data, size_t *len)
{
    const unsigned char *p = NULL;
    size_t n = 0;
    kmdc_store_rc rc;

    *data = NULL;
    *len = 0;
    if (!f->pending) {
        /* the row handed out last is done with: one row in memory at a time */
        kmdc_db_clear(f->db, f->row);
        f->row = NULL;
        if (f->sent == f->payload_len) {
            return KMDC_STORE_OK;               /* the end */
        }
        f->idx++;
        if ((rc = load_row(f)) != KMDC_STORE_OK) {
            return rc;
        }
    }
    f->pending = 0;
    (void)kmdc_db_get_bytea(f->row, 0, 0, &p, &n);   /* checked by load_row */
    f->sent += (uint64_t)n;
    *data = p;
    *len = n;
    return KMDC_STORE_OK;
}

void kmdc_pg_fetch_close(kmdc_fetch *f)
{
    if (f == NULL) {
        return;
    }
    kmdc_db_clear(f->db, f->row);
    kmdc_db_clear(f->db, f->head_res);
    f->row = NULL;
    f->head_res = NULL;
    if (f->in_tx && f->db != NULL) {
        /* read only: COMMIT and ROLLBACK end it alike */
        (void)kmdc_db_rollback(f->db);
    }
    f->in_tx = 0;
    kmdc_db_release(f->db);
    f->db = NULL;
}

/* ------------------------------------------------------------------------ */
/* acknowledgement                                                           */

kmdc_store_rc kmdc_pg_ack(kmdc_store *st, uint64_t serial, uint64_t id, int *acked,
                          int *payload_deleted)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = NULL;
    kmdc_db_batch b;
    kmdc_db_params pp;
    kmdc_db_rc dbrc;
    kmdc_store_rc rc;
    int64_t queued = 0;
    int found, upd, count, commit;

    *acked = 0;
    *payload_deleted = 0;
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        return rc;
    }
    /*
     * One transaction in one round trip; each statement takes its snapshot
     * after the locks before it.  The message's row first: acknowledgements
     * of one message take turns, so the last one sees no other delivery
     * queued and drops the bytes.  A delivery id that is not this mailbox's
     * makes every statement after the first match nothing.
     */
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)id);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_batch_init(&b, db);
    kmdc_db_batch_command(&b, "BEGIN");
    found = kmdc_db_batch_add(&b, "SELECT message_id FROM deliveries WHERE id = $1 "
                              "AND recipient = $2", &pp, 0);
    kmdc_db_batch_add(&b, "SELECT 1 FROM messages WHERE id = (SELECT message_id FROM "
                      "deliveries WHERE id = $1 AND recipient = $2) FOR NO KEY UPDATE", &pp, 0);
    upd = kmdc_db_batch_add(&b, "UPDATE deliveries SET state = 'delivered', acked_at = now(), "
                            "head = NULL WHERE id = $1 AND recipient = $2 "
                            "AND state = 'queued'", &pp, 0);
    count = kmdc_db_batch_add(&b, "SELECT count(*) FROM deliveries WHERE message_id = "
                              "(SELECT message_id FROM deliveries WHERE id = $1 "
                              "AND recipient = $2) AND state = 'queued'", &pp, 0);
    /* no delivery of the message queued any more: the bytes go, from its
     * upload or from its own row (schema 6), in one statement: a message
     * has its payload in one of the two */
    kmdc_db_batch_add(&b, "WITH m AS (SELECT m.id, m.upload_id FROM messages m WHERE m.id = "
                      "(SELECT message_id FROM deliveries WHERE id = $1 AND recipient = $2) "
                      "AND NOT EXISTS (SELECT 1 FROM deliveries q WHERE q.message_id = m.id "
                      "AND q.state = 'queued')), u AS (DELETE FROM uploads u USING m "
                      "WHERE u.id = m.upload_id) UPDATE messages x SET payload = NULL "
                      "FROM m WHERE x.id = m.id AND x.payload IS NOT NULL", &pp, 0);
    commit = kmdc_db_batch_command(&b, "COMMIT");
    /* then wake the long-polls of this mailbox, if any watch it (one that
     * finds the listing unchanged, after an acknowledgement seen before,
     * waits on) */
    kmdc_pg_wake_add(&b, ps->r->pool, &serial, 1);
    if ((dbrc = kmdc_pg_committed(&b, commit, kmdc_db_batch_run(&b))) != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
    }
    else if (PQntuples(kmdc_db_batch_result(&b, found)) != 1) {
        rc = KMDC_STORE_NOTFOUND;        /* committed, having changed nothing */
    }
    else if (!kmdc_db_get_int64(kmdc_db_batch_result(&b, count), 0, 0, &queued)) {
        rc = KMDC_STORE_ERROR;
    }
    else {
        *acked = strcmp(PQcmdTuples(kmdc_db_batch_result(&b, upd)), "1") == 0;
        *payload_deleted = queued == 0;
        rc = KMDC_STORE_OK;
    }
    kmdc_db_release(db);
    return rc;
}

/* ------------------------------------------------------------------------ */
/* a message as its sender sees it                                           */

kmdc_store_rc kmdc_pg_message_status(kmdc_store *st, uint64_t id, uint64_t sender,
                                     kmdc_message_info *out, kmdc_message_rcpt_fn fn,
                                     void *arg)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc dbrc = KMDC_DB_ERROR;
    kmdc_store_rc rc;
    int64_t size = 0;
    int in_tx = 0;
    int i, n;

    memset(out, 0, sizeof(*out));
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        goto out;
    }
    if ((dbrc = kmdc_db_command(db, "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY"))
        != KMDC_DB_OK) {
        goto failed;
    }
    in_tx = 1;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)id);
    kmdc_db_param_int8(&pp, (int64_t)sender);
    if ((rc = kmdc_pg_row(db, "SELECT floor(extract(epoch FROM created_at) * 1000)::bigint, "
                          "size FROM messages WHERE id = $1 AND sender = $2",
                          &pp, 1, &res)) != KMDC_STORE_OK) {
        goto out;
    }
    if (!kmdc_db_get_int64(res, 0, 0, &out->created_ms)
        || !kmdc_db_get_int64(res, 0, 1, &size) || size < 0) {
        rc = KMDC_STORE_ERROR;
        goto out;
    }
    out->size = (uint64_t)size;
    kmdc_db_clear(db, res);
    res = NULL;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)id);
    if ((dbrc = kmdc_db_exec(db, "SELECT c.address, CASE WHEN d.state = 'queued' "
                             "AND d.expires_at <= now() THEN 'expired' ELSE d.state END "
                             "FROM deliveries d JOIN cards c ON c.serial = d.recipient "
                             "WHERE d.message_id = $1 ORDER BY d.id", &pp, 0, &res))
        != KMDC_DB_OK
        || (dbrc = kmdc_db_command(db, "COMMIT")) != KMDC_DB_OK) {
        goto failed;
    }
    in_tx = 0;
    /* the rows live in res, not in the connection: give it back first */
    kmdc_db_release(db);

    n = PQntuples(res);
    for (i = 0; i < n; i++) {
        const char *address = kmdc_db_get_text(res, i, 0);
        const char *state = kmdc_db_get_text(res, i, 1);

        if (address == NULL || state == NULL || fn(arg, address, state) != 0) {
            rc = KMDC_STORE_ERROR;
            goto out;
        }
    }
    rc = KMDC_STORE_OK;
    goto out;

failed:
    rc = kmdc_pg_failed(dbrc);
out:
    kmdc_db_clear(db, res);
    if (in_tx) {
        (void)kmdc_db_rollback(db);
    }
    kmdc_db_release(db);
    return rc;
}
