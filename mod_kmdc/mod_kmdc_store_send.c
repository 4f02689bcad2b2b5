/*
 * mod_kmdc_store_send.c - the PostgreSQL store: the operations of the send
 * intake (lib/kmdc_store.h).
 *
 * Before publication every operation is one autocommitted statement on a
 * connection borrowed for it alone: the sender and its receipt in one read,
 * a slot lease, the recipients with their mailbox totals in one read, and
 * one statement per upload batch (which also renews the lease and the
 * upload's touched_at), sent by upload_append and answered at
 * upload_settle, so the database writes a batch while the intake reads the
 * next.  Publication is one READ COMMITTED transaction in two round trips:
 * first BEGIN, the rows that lock no card (message, with its payload in
 * its own row when it fits one batch, receipt, audit row), then the sender
 * and the recipients locked in serial order with their mailbox totals (kept
 * on the card rows since schema 3); the intake seals each delivery with
 * the locked down counter; then the chains and the deliveries, the lease
 * dropped, COMMIT, and (same round trip) NOTIFY for the recipients whose
 * mailbox a long-poll watches.  A recipient's row is locked from the end of
 * the first round trip to the COMMIT, and every publication to that
 * recipient queues behind it, so only what needs the lock runs while it is
 * held.
 */
#include <string.h>

#include <jansson.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"

#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_store_pg.h"

/* A lease left by a front-end that died frees itself after this long; the
 * intake renews it with every batch. */
#define KMDC_LEASE_SECONDS 900

/* ---- helpers ---------------------------------------------------------------- */

/*
 * Read a receipt from columns col.. of a binary result: envelope_sha256,
 * hash_scope, http_status, answer, message_id (0 for NULL), prefix_sha256.
 * 0 when the row is unreadable.
 */
static int get_receipt(const PGresult *res, int row, int col, kmdc_receipt *rc)
{
    char scope[16];
    int64_t status = 0, msg = 0;

    memset(rc, 0, sizeof(*rc));
    if (!kmdc_pg_get_bytes(res, row, col, rc->hash, 32)
        || !kmdc_pg_get_text(res, row, col + 1, scope, sizeof(scope))
        || !kmdc_db_get_int64(res, row, col + 2, &status)
        || !kmdc_pg_get_text(res, row, col + 3, rc->answer, sizeof(rc->answer))
        || !kmdc_db_get_int64(res, row, col + 4, &msg)) {
        return 0;
    }
    rc->scope = strcmp(scope, "keyblock") == 0 ? KMDC_SCOPE_KEYBLOCK : KMDC_SCOPE_ENVELOPE;
    rc->http_status = (int)status;
    rc->message_id = (uint64_t)msg;
    rc->has_prefix_hash = kmdc_pg_get_bytes(res, row, col + 5, rc->prefix_hash, 32);
    return 1;
}

#define RECEIPT_COLUMNS "r.envelope_sha256, r.hash_scope, r.http_status, r.answer, " \
                        "coalesce(r.message_id, 0), r.prefix_sha256"

static kmdc_db_rc release_lease(kmdc_db *db, const kmdc_lease *lease)
{
    kmdc_db_params pp;

    if (lease == NULL) {
        return KMDC_DB_OK;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)lease->serial);
    kmdc_db_param_int4(&pp, lease->slot);
    kmdc_db_param_int8(&pp, (int64_t)lease->holder);
    return kmdc_pg_run(db, "DELETE FROM upload_leases WHERE serial = $1 AND slot = $2 "
               "AND holder = $3", &pp);
}

/* ---- step 1 ------------------------------------------------------------------ */

kmdc_store_rc kmdc_pg_sender_load(kmdc_store *st, uint64_t serial, uint64_t seq,
                                  kmdc_sender *out)
{
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_store_rc rc;
    char status[16];
    int64_t up_next = 0;

    memset(out, 0, sizeof(*out));
    if ((rc = kmdc_pg_borrow(KMDC_PG(st), &db)) != KMDC_STORE_OK) {
        return rc;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_int8(&pp, (int64_t)seq);
    rc = kmdc_pg_row(db, "SELECT c.status, c.address, c.up_next, c.up_chain, "
                     RECEIPT_COLUMNS " FROM cards c LEFT JOIN receipts r "
                     "ON r.serial = c.serial AND r.seq = $2 WHERE c.serial = $1",
                     &pp, 1, &res);
    if (rc != KMDC_STORE_OK) {
        goto out;
    }
    if (!kmdc_pg_get_text(res, 0, 0, status, sizeof(status))
        || !kmdc_pg_get_text(res, 0, 1, out->address, sizeof(out->address))
        || !kmdc_db_get_int64(res, 0, 2, &up_next) || up_next < 0
        || !kmdc_pg_get_bytes(res, 0, 3, out->up_chain, sizeof(out->up_chain))) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, KMDC_PG(st)->r,
                      "store: card %016" APR_UINT64_T_HEX_FMT " has an unreadable row",
                      (apr_uint64_t)serial);
        rc = KMDC_STORE_ERROR;
        goto out;
    }
    out->status = kmdc_card_status_parse(status);
    out->up_next = (uint64_t)up_next;
    out->has_receipt = !PQgetisnull(res, 0, 4);
    if (out->has_receipt && !get_receipt(res, 0, 4, &out->receipt)) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, KMDC_PG(st)->r,
                      "store: card %016" APR_UINT64_T_HEX_FMT " seq %" APR_UINT64_T_FMT
                      ": its receipt cannot be read", (apr_uint64_t)serial,
                      (apr_uint64_t)seq);
        rc = KMDC_STORE_ERROR;
        goto out;
    }
    rc = KMDC_STORE_OK;
out:
    kmdc_db_clear(db, res);
    kmdc_db_release(db);
    return rc;
}

kmdc_store_rc kmdc_pg_receipt_find(kmdc_store *st, uint64_t serial, uint64_t seq,
                                   kmdc_receipt *out)
{
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_store_rc rc;

    if ((rc = kmdc_pg_borrow(KMDC_PG(st), &db)) != KMDC_STORE_OK) {
        return rc;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_int8(&pp, (int64_t)seq);
    rc = kmdc_pg_row(db, "SELECT " RECEIPT_COLUMNS " FROM receipts r "
                     "WHERE r.serial = $1 AND r.seq = $2", &pp, 1, &res);
    if (rc == KMDC_STORE_OK && !get_receipt(res, 0, 0, out)) {
        rc = KMDC_STORE_ERROR;
    }
    kmdc_db_clear(db, res);
    kmdc_db_release(db);
    return rc;
}

/* ---- step 2 ------------------------------------------------------------------ */

kmdc_store_rc kmdc_pg_slot_take(kmdc_store *st, uint64_t serial, int max,
                                kmdc_lease *lease)
{
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_store_rc rc;
    kmdc_db_rc dbrc;
    uint64_t holder = 0;
    int attempt;

    if (kmdc_random_u63(&holder, NULL) != KMDC_OK) {
        return KMDC_STORE_ERROR;
    }
    if ((rc = kmdc_pg_borrow(KMDC_PG(st), &db)) != KMDC_STORE_OK) {
        return rc;
    }
    /*
     * The lowest slot without a live lease, taken in one statement.  Two
     * uploads of one card that pick the same slot at once: the second finds
     * the first's lease (the conflict waits for it) and takes nothing; it
     * tries again, and sees that lease then.  "free" tells that case from
     * no free slot at all.
     */
    rc = KMDC_STORE_BUSY;
    for (attempt = 0; attempt < max + 1; attempt++) {
        int64_t slot = -1, free_seen = 0;

        kmdc_db_params_init(&pp);
        kmdc_db_param_int8(&pp, (int64_t)serial);
        kmdc_db_param_int4(&pp, max);
        kmdc_db_param_int8(&pp, (int64_t)holder);
        kmdc_db_param_int4(&pp, KMDC_LEASE_SECONDS);
        dbrc = kmdc_db_exec(db,
            "WITH free AS ("
            "  SELECT s FROM generate_series(0, $2::int - 1) AS s"
            "  WHERE NOT EXISTS (SELECT 1 FROM upload_leases x WHERE x.serial = $1::bigint"
            "                    AND x.slot = s AND x.expires_at > now())"
            "  ORDER BY s LIMIT 1),"
            " taken AS ("
            "  INSERT INTO upload_leases AS l (serial, slot, holder, expires_at)"
            "  SELECT $1::bigint, s, $3::bigint, now() + $4::int * interval '1 second' FROM free"
            "  ON CONFLICT (serial, slot) DO UPDATE SET holder = excluded.holder,"
            "     expires_at = excluded.expires_at WHERE l.expires_at <= now()"
            "  RETURNING slot)"
            " SELECT coalesce((SELECT slot FROM taken), -1)::bigint,"
            "        (SELECT count(*) FROM free)",
            &pp, 1, &res);
        if (dbrc != KMDC_DB_OK || !kmdc_db_get_int64(res, 0, 0, &slot)
            || !kmdc_db_get_int64(res, 0, 1, &free_seen)) {
            rc = dbrc != KMDC_DB_OK ? kmdc_pg_failed(dbrc) : KMDC_STORE_ERROR;
            break;
        }
        kmdc_db_clear(db, res);
        res = NULL;
        if (slot >= 0) {
            lease->serial = serial;
            lease->slot = (int)slot;
            lease->holder = holder;
            rc = KMDC_STORE_OK;
            break;
        }
        if (free_seen == 0) {
            break;                       /* every slot is held: BUSY */
        }
    }
    kmdc_db_clear(db, res);
    kmdc_db_release(db);
    return rc;
}

kmdc_store_rc kmdc_pg_slot_release(kmdc_store *st, const kmdc_lease *lease)
{
    kmdc_db *db = NULL;
    kmdc_store_rc rc;
    kmdc_db_rc dbrc;

    (void)kmdc_pg_upload_settle(st);     /* whatever its answer: one connection */
    if ((rc = kmdc_pg_borrow(KMDC_PG(st), &db)) != KMDC_STORE_OK) {
        return rc;       /* the lease expires by itself */
    }
    dbrc = release_lease(db, lease);
    kmdc_db_release(db);
    return kmdc_pg_failed(dbrc);
}

kmdc_store_rc kmdc_pg_recipients_resolve(kmdc_store *st,
                                         const char (*addr)[KMDC_ADDR_MAX + 1],
                                         size_t n, kmdc_recipient *out)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    const char *list[KMDC_RCPT_MAX];
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_store_rc rc;
    kmdc_db_rc dbrc;
    size_t i;
    int row;

    if (n > KMDC_RCPT_MAX) {
        return KMDC_STORE_ERROR;
    }
    memset(out, 0, n * sizeof(*out));
    for (i = 0; i < n; i++) {
        list[i] = addr[i];
    }
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        return rc;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_text_array(&pp, ps->r->pool, list, (int)n);
    /* the mailbox totals are the card's (schema 3 keeps them) */
    dbrc = kmdc_db_exec(db,
        "SELECT a.i, c.serial, c.queued_count, c.queued_bytes"
        " FROM unnest($1::text[]) WITH ORDINALITY AS a(address, i)"
        " JOIN cards c ON c.address = a.address AND c.status = 'active'",
        &pp, 1, &res);
    if (dbrc != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
        goto out;
    }
    rc = KMDC_STORE_OK;
    for (row = 0; row < PQntuples(res); row++) {
        int64_t idx = 0, serial = 0, count = 0, bytes = 0;

        if (!kmdc_db_get_int64(res, row, 0, &idx) || idx < 1 || (size_t)idx > n
            || !kmdc_db_get_int64(res, row, 1, &serial)
            || !kmdc_db_get_int64(res, row, 2, &count)
            || !kmdc_db_get_int64(res, row, 3, &bytes)) {
            rc = KMDC_STORE_ERROR;
            goto out;
        }
        out[idx - 1].serial = (uint64_t)serial;
        out[idx - 1].pending_count = count;
        out[idx - 1].pending_bytes = bytes;
    }
out:
    kmdc_db_clear(db, res);
    kmdc_db_release(db);
    return rc;
}

/*
 * Batches are written while the intake reads the next one: upload_append
 * sends the statement on a borrowed connection and returns; upload_settle
 * reads its answer and gives the connection back.  The intake settles
 * before it waits for its client's bytes (docs/PROTOCOL.md 6.3).
 */
kmdc_store_rc kmdc_pg_upload_append(kmdc_store *st, int64_t *upload_id, uint64_t size,
                                    int idx, const uint8_t *data, size_t len,
                                    const kmdc_lease *lease)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    kmdc_store_rc rc;
    kmdc_db_rc dbrc;
    int64_t id;

    if ((rc = kmdc_pg_upload_settle(st)) != KMDC_STORE_OK) {
        return rc;                       /* the batch before failed */
    }
    id = *upload_id;
    if ((id == 0) != (idx == 0)) {
        return KMDC_STORE_ERROR;         /* a batch after one that failed */
    }
    if (ps->up_batch == NULL) {
        ps->up_batch = apr_palloc(ps->r->pool, sizeof(*ps->up_batch));
    }
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        return rc;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, id);
    kmdc_db_param_int8(&pp, (int64_t)size);
    kmdc_db_param_int4(&pp, idx);
    kmdc_db_param_bytea(&pp, data, len);
    kmdc_db_param_int8(&pp, lease != NULL ? (int64_t)lease->serial : 0);
    kmdc_db_param_int4(&pp, lease != NULL ? lease->slot : -1);
    kmdc_db_param_int8(&pp, lease != NULL ? (int64_t)lease->holder : 0);
    kmdc_db_param_int4(&pp, KMDC_LEASE_SECONDS);
    /* the lease renewed, then (only while it is held) the upload created on
     * the first batch or touched on the others, and the batch: one
     * autocommitted statement */
    kmdc_db_batch_init(ps->up_batch, db);
    kmdc_db_batch_add(ps->up_batch,
        "WITH renewed AS (UPDATE upload_leases"
        "   SET expires_at = now() + $8::int * interval '1 second'"
        "   WHERE serial = $5::bigint AND slot = $6::int AND holder = $7::bigint RETURNING 1),"
        " ok AS (SELECT $5::bigint = 0 OR EXISTS (SELECT 1 FROM renewed) AS held),"
        " made AS (INSERT INTO uploads (size) SELECT $2::bigint FROM ok"
        "   WHERE held AND $1::bigint = 0 RETURNING id),"
        " touched AS (UPDATE uploads SET touched_at = now()"
        "   WHERE id = $1::bigint AND (SELECT held FROM ok) RETURNING id),"
        " up AS (SELECT id FROM made UNION ALL SELECT id FROM touched),"
        " ins AS (INSERT INTO upload_chunks (upload_id, idx, data)"
        "   SELECT id, $3::int, $4::bytea FROM up RETURNING upload_id)"
        " SELECT (SELECT held FROM ok), coalesce((SELECT upload_id FROM ins), 0)::bigint",
        &pp, 1);
    if ((dbrc = kmdc_db_batch_send(ps->up_batch)) != KMDC_DB_OK) {
        kmdc_db_release(db);             /* thrown away if it broke */
        return kmdc_pg_failed(dbrc);
    }
    ps->up_pending = 1;
    ps->up_db = db;
    ps->up_id = upload_id;
    ps->up_sent_id = id;
    return KMDC_STORE_OK;
}

kmdc_store_rc kmdc_pg_upload_settle(kmdc_store *st)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    kmdc_db *db = ps->up_db;
    PGresult *res;
    kmdc_store_rc rc;
    kmdc_db_rc dbrc;
    int64_t id = 0;
    int held = 0;

    if (!ps->up_pending) {
        return KMDC_STORE_OK;
    }
    ps->up_pending = 0;
    ps->up_db = NULL;
    dbrc = kmdc_db_batch_collect(ps->up_batch);
    res = kmdc_db_batch_result(ps->up_batch, 0);
    if (dbrc != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
    }
    else if (res == NULL || PQntuples(res) != 1 || !kmdc_db_get_bool(res, 0, 0, &held)
             || !kmdc_db_get_int64(res, 0, 1, &id)) {
        rc = KMDC_STORE_ERROR;
    }
    else if (!held) {
        rc = KMDC_STORE_BUSY;            /* the lease expired and was taken */
    }
    else if (id == 0 || (ps->up_sent_id != 0 && id != ps->up_sent_id)) {
        rc = KMDC_STORE_ERROR;           /* the upload is gone (purged?) */
    }
    else {
        *ps->up_id = id;
        rc = KMDC_STORE_OK;
    }
    kmdc_db_clear(db, res);
    kmdc_db_release(db);
    ps->up_id = NULL;
    return rc;
}

kmdc_store_rc kmdc_pg_upload_drop(kmdc_store *st, int64_t upload_id)
{
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    kmdc_store_rc rc;
    kmdc_db_rc dbrc;

    (void)kmdc_pg_upload_settle(st);     /* whatever its answer: one connection */
    if ((rc = kmdc_pg_borrow(KMDC_PG(st), &db)) != KMDC_STORE_OK) {
        return rc;       /* an orphan for `kmdcadm purge` */
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, upload_id);
    /* never the upload of a message: a publication whose COMMIT answer was
     * lost may have committed, and the message then owns this upload */
    dbrc = kmdc_pg_run(db, "DELETE FROM uploads WHERE id = $1::bigint AND NOT EXISTS "
               "(SELECT 1 FROM messages WHERE upload_id = $1::bigint)", &pp);
    kmdc_db_release(db);
    return kmdc_pg_failed(dbrc);
}

/* ---- step 3 ------------------------------------------------------------------ */

/* The locked row of one card in the publication. */
typedef struct locked_card {
    uint64_t serial;
    int active;
    uint64_t up_next, down_next;
    uint8_t down_chain[KMDC_WRAPPED_LEN];
    int64_t count, bytes;                  /* its queued deliveries */
} locked_card;

static locked_card *find_locked(locked_card *rows, int n, uint64_t serial)
{
    int i;

    for (i = 0; i < n; i++) {
        if (rows[i].serial == serial) {
            return &rows[i];
        }
    }
    return NULL;
}

/*
 * Into b: lock the sender and the recipients in serial order (rows) with
 * their mailbox totals.  A locked row is read as its last committed
 * version, so the totals include what a publication or an acknowledgement
 * that held the row before us committed (both change them under the row's
 * lock).  Returns the statement's index in b.
 */
static int add_lock(kmdc_pg_store *ps, kmdc_db_batch *b, const kmdc_publication *pub)
{
    int64_t serials[KMDC_RCPT_MAX + 1];
    kmdc_db_params pp;
    size_t i;

    serials[0] = (int64_t)pub->serial;
    for (i = 0; i < pub->n_rcpt; i++) {
        serials[i + 1] = (int64_t)pub->rcpt[i];
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8_array(&pp, ps->r->pool, serials, (int)pub->n_rcpt + 1);
    return kmdc_db_batch_add(b, "SELECT serial, status = 'active', up_next, down_next, "
                             "down_chain, queued_count, queued_bytes FROM cards "
                             "WHERE serial = ANY($1::bigint[]) "
                             "ORDER BY serial FOR NO KEY UPDATE", &pp, 1);
}

/* The locked rows of res (add_lock's statement); KMDC_DB_OK and *n rows. */
static kmdc_db_rc read_locked(kmdc_db *db, PGresult *res, locked_card *rows, int *n)
{
    int row;

    *n = 0;
    for (row = 0; row < PQntuples(res) && row <= KMDC_RCPT_MAX; row++) {
        locked_card *c = &rows[row];
        int64_t s = 0, up = 0, down = 0;

        if (!kmdc_db_get_int64(res, row, 0, &s) || !kmdc_db_get_bool(res, row, 1, &c->active)
            || !kmdc_db_get_int64(res, row, 2, &up) || !kmdc_db_get_int64(res, row, 3, &down)
            || !kmdc_pg_get_bytes(res, row, 4, c->down_chain, sizeof(c->down_chain))
            || !kmdc_db_get_int64(res, row, 5, &c->count)
            || !kmdc_db_get_int64(res, row, 6, &c->bytes)) {
            return KMDC_DB_ERROR;
        }
        c->serial = (uint64_t)s;
        c->up_next = (uint64_t)up;
        c->down_next = (uint64_t)down;
        (*n)++;
    }
    kmdc_db_clear(db, res);
    return KMDC_DB_OK;
}

/* 1 when statement i of b inserted its row (0: ON CONFLICT DO NOTHING). */
static int inserted_one(const kmdc_db_batch *b, int i)
{
    PGresult *res = kmdc_db_batch_result(b, i);

    return res != NULL && strcmp(PQcmdTuples(res), "1") == 0;
}

/* Check the locked rows again; KMDC_PUBLISHED when the publication may go on. */
static kmdc_publish_outcome recheck(const kmdc_publication *pub, locked_card *rows, int n,
                                    size_t *which)
{
    locked_card *s = find_locked(rows, n, pub->serial);
    size_t i;

    if (s == NULL || s->up_next > pub->seq) {
        return s == NULL ? KMDC_PUBLISH_SENDER_INACTIVE : KMDC_PUBLISH_SPENT;
    }
    if (!s->active) {
        return KMDC_PUBLISH_SENDER_INACTIVE;
    }
    for (i = 0; i < pub->n_rcpt; i++) {
        locked_card *c = find_locked(rows, n, pub->rcpt[i]);

        *which = i;
        if (c == NULL || !c->active) {
            return KMDC_PUBLISH_RECIPIENT_INACTIVE;
        }
    }
    for (i = 0; i < pub->n_rcpt; i++) {
        locked_card *c = find_locked(rows, n, pub->rcpt[i]);

        *which = i;
        if (c->count + 1 > pub->quota_count
            || (uint64_t)c->bytes + pub->quota_add > (uint64_t)pub->quota_bytes) {
            return KMDC_PUBLISH_QUOTA;
        }
    }
    *which = 0;
    return KMDC_PUBLISHED;
}

/*
 * The message (with its payload when it travels inside the publication),
 * into b; it locks no card.  A concurrent byte-identical retry's message
 * that committed first makes it insert nothing (DO NOTHING: the locked
 * sender then shows the counter spent).  Returns the statement's index.
 */
static int add_message(kmdc_db_batch *b, const kmdc_publication *pub)
{
    kmdc_db_params pp;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)pub->message_id);
    kmdc_db_param_int8(&pp, (int64_t)pub->serial);
    kmdc_db_param_int8(&pp, (int64_t)pub->seq);
    kmdc_db_param_int8(&pp, (int64_t)pub->size);
    kmdc_db_param_int8(&pp, (int64_t)pub->payload_len);
    if (pub->upload_id != 0) {
        kmdc_db_param_int8(&pp, pub->upload_id);
        return kmdc_db_batch_add(b, "INSERT INTO messages (id, sender, sender_seq, size, "
                                 "payload_len, upload_id) VALUES ($1::bigint, $2::bigint, "
                                 "$3::bigint, $4::bigint, $5::bigint, $6::bigint) "
                                 "ON CONFLICT DO NOTHING", &pp, 0);
    }
    /* a payload that fits one batch travels in the message's own row (schema
     * 6): no upload, and nothing to join when it is fetched */
    kmdc_db_param_bytea(&pp, pub->inline_data, pub->inline_len);
    return kmdc_db_batch_add(b, "INSERT INTO messages (id, sender, sender_seq, size, "
                             "payload_len, payload) VALUES ($1::bigint, $2::bigint, "
                             "$3::bigint, $4::bigint, $5::bigint, $6::bytea) "
                             "ON CONFLICT DO NOTHING", &pp, 0);
}

/* The receipt of the publication, into b (DO NOTHING as add_message);
 * returns the statement's index. */
static int add_receipt(kmdc_db_batch *b, const kmdc_publication *pub)
{
    kmdc_db_params pp;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)pub->serial);
    kmdc_db_param_int8(&pp, (int64_t)pub->seq);
    kmdc_db_param_bytea(&pp, pub->envelope_hash, 32);
    kmdc_db_param_text(&pp, pub->answer);
    kmdc_db_param_int8(&pp, (int64_t)pub->message_id);
    kmdc_db_param_bytea(&pp, pub->prefix_hash, 32);
    return kmdc_db_batch_add(b, "INSERT INTO receipts (serial, seq, envelope_sha256, "
                             "hash_scope, http_status, answer, message_id, prefix_sha256) "
                             "VALUES ($1, $2, $3, 'envelope', 201, $4, $5, $6) "
                             "ON CONFLICT DO NOTHING", &pp, 0);
}

/*
 * Seal every delivery; into b, one statement: the sender's up chain and the
 * recipients' down chains advanced and their mailbox totals grown (one
 * UPDATE of cards, so a card that both sends and receives is one row changed
 * once), then the deliveries.
 */
static kmdc_store_rc add_deliveries(kmdc_pg_store *ps, kmdc_db_batch *b,
                                    const kmdc_publication *pub, locked_card *rows, int n)
{
    apr_pool_t *p = ps->r->pool;
    int count = (int)pub->n_rcpt;
    int64_t *serials = apr_palloc(p, sizeof(int64_t) * (size_t)count);
    int64_t *seqs = apr_palloc(p, sizeof(int64_t) * (size_t)count);
    const void **heads = apr_palloc(p, sizeof(void *) * (size_t)count);
    int *head_lens = apr_palloc(p, sizeof(int) * (size_t)count);
    const void **chains = apr_palloc(p, sizeof(void *) * (size_t)count);
    int *chain_lens = apr_palloc(p, sizeof(int) * (size_t)count);
    kmdc_db_params pp;
    size_t i;

    for (i = 0; i < pub->n_rcpt; i++) {
        locked_card *c = find_locked(rows, n, pub->rcpt[i]);
        uint8_t *head = apr_palloc(p, KMDC_HEAD_MAX);
        uint8_t *next = apr_palloc(p, KMDC_WRAPPED_LEN);
        size_t head_len = 0;

        if (c == NULL || pub->seal(pub->seal_arg, i, c->serial, c->down_next, c->down_chain,
                                   head, KMDC_HEAD_MAX, &head_len, next) != KMDC_OK) {
            return KMDC_STORE_ERROR;
        }
        serials[i] = (int64_t)c->serial;
        seqs[i] = (int64_t)c->down_next;
        heads[i] = head;
        head_lens[i] = (int)head_len;
        chains[i] = next;
        chain_lens[i] = KMDC_WRAPPED_LEN;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)pub->message_id);
    kmdc_db_param_int8_array(&pp, p, serials, count);
    kmdc_db_param_int8_array(&pp, p, seqs, count);
    kmdc_db_param_array(&pp, p, KMDC_DB_BYTEAOID, count, heads, head_lens);
    kmdc_db_param_int8(&pp, pub->ttl);
    kmdc_db_param_array(&pp, p, KMDC_DB_BYTEAOID, count, chains, chain_lens);
    kmdc_db_param_int8(&pp, (int64_t)pub->serial);
    kmdc_db_param_int8(&pp, (int64_t)pub->seq);
    kmdc_db_param_bytea(&pp, pub->up_chain_next, KMDC_WRAPPED_LEN);
    kmdc_db_param_int8(&pp, (int64_t)pub->payload_len);
    /* each recipient's mailbox totals grow by its delivery (head and
     * payload, as the schema counts them) in the same UPDATE; the marker
     * names the message, so that the deliveries' insert trigger (schema 5)
     * leaves its rows out instead of updating the cards a second time */
    kmdc_db_batch_add(b, "WITH k AS (UPDATE cards c SET "
                      "up_next = CASE WHEN c.serial = $7::bigint THEN $8::bigint + 1 "
                      "ELSE c.up_next END, up_chain = CASE WHEN c.serial = $7::bigint "
                      "THEN $9::bytea ELSE c.up_chain END, "
                      "down_next = c.down_next + CASE WHEN u.k IS NULL THEN 0 ELSE 1 END, "
                      "down_chain = coalesce(u.k, c.down_chain), "
                      "queued_count = c.queued_count + CASE WHEN u.k IS NULL THEN 0 ELSE 1 END, "
                      "queued_bytes = c.queued_bytes + coalesce(u.n, 0) "
                      "FROM (SELECT s, k, octet_length(h)::bigint + $10::bigint "
                      "FROM unnest($2::bigint[], $6::bytea[], $4::bytea[]) AS x(s, k, h) "
                      "UNION ALL SELECT $7::bigint, NULL::bytea, NULL::bigint "
                      "WHERE $7::bigint <> ALL ($2)) AS u(s, k, n) "
                      "WHERE c.serial = u.s "
                      "AND set_config('kmdc.totals_kept', $1::bigint::text, true) IS NOT NULL) "
                      "INSERT INTO deliveries (message_id, recipient, seq, head, expires_at) "
                      "SELECT $1::bigint, r, s, h, now() + $5::bigint * interval '1 second' "
                      "FROM unnest($2::bigint[], $3::bigint[], $4::bytea[]) WITH ORDINALITY "
                      "AS u(r, s, h, i) ORDER BY i", &pp, 0);
    return KMDC_STORE_OK;
}

/* Give the lease back, into b (nothing when there is none). */
static void add_release(kmdc_db_batch *b, const kmdc_lease *lease)
{
    kmdc_db_params pp;

    if (lease == NULL) {
        return;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)lease->serial);
    kmdc_db_param_int4(&pp, lease->slot);
    kmdc_db_param_int8(&pp, (int64_t)lease->holder);
    kmdc_db_batch_add(b, "DELETE FROM upload_leases WHERE serial = $1 AND slot = $2 "
                      "AND holder = $3", &pp, 0);
}

kmdc_store_rc kmdc_pg_publish(kmdc_store *st, const kmdc_publication *pub,
                              kmdc_publish_outcome *outcome, size_t *which)
{
    kmdc_pg_store *ps = KMDC_PG(st);
    locked_card rows[KMDC_RCPT_MAX + 1];
    char idhex[17];
    kmdc_db *db = NULL;
    kmdc_db_batch b;
    kmdc_store_rc rc;
    kmdc_db_rc dbrc;
    int n = 0, msg, rcpt, locked, commit;

    *outcome = KMDC_PUBLISHED;
    *which = 0;
    if (ps->up_pending) {
        /* the caller settles its last batch first: never publish an upload
         * whose every batch is not known to be written */
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, ps->r,
                      "send: publish called with an upload batch pending; not published");
        (void)kmdc_pg_upload_settle(st);
        return KMDC_STORE_ERROR;
    }
    if (pub->n_rcpt == 0 || pub->n_rcpt > KMDC_RCPT_MAX
        || (pub->upload_id == 0 && pub->inline_data == NULL)) {
        return KMDC_STORE_ERROR;
    }
    if ((rc = kmdc_pg_borrow(ps, &db)) != KMDC_STORE_OK) {
        return rc;
    }
    /* round trip 1: BEGIN, the rows that lock no card, then the cards
     * locked with their quotas (the recipients' locks are held from here) */
    kmdc_db_batch_init(&b, db);
    kmdc_db_batch_command(&b, "BEGIN");
    msg = add_message(&b, pub);
    rcpt = add_receipt(&b, pub);
    kmdc_serial_format(idhex, pub->message_id);
    kmdc_pg_audit_add(&b, pub->serial, "send",
                      json_pack("{s:I, s:s, s:I}", "seq", (json_int_t)pub->seq,
                                "message", idhex, "deliveries", (json_int_t)pub->n_rcpt));
    locked = add_lock(ps, &b, pub);
    if ((dbrc = kmdc_db_batch_run(&b)) != KMDC_DB_OK
        || (dbrc = read_locked(db, kmdc_db_batch_result(&b, locked), rows, &n)) != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
        goto out;
    }
    if ((*outcome = recheck(pub, rows, n, which)) != KMDC_PUBLISHED) {
        rc = KMDC_STORE_OK;              /* rolled back: the intake answers */
        goto out;
    }
    if (!inserted_one(&b, msg) || !inserted_one(&b, rcpt)) {
        /* a message or receipt of this counter committed while the sender
         * looked unspent: cannot be, but never publish twice */
        *outcome = KMDC_PUBLISH_SPENT;
        rc = KMDC_STORE_OK;
        goto out;
    }

    /* round trip 2: the chains, the deliveries, COMMIT, then the watched
     * mailboxes woken */
    kmdc_db_batch_init(&b, db);
    if ((rc = add_deliveries(ps, &b, pub, rows, n)) != KMDC_STORE_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, ps->r,
                      "send: card %016" APR_UINT64_T_HEX_FMT " seq %" APR_UINT64_T_FMT
                      ": a delivery could not be sealed",
                      (apr_uint64_t)pub->serial, (apr_uint64_t)pub->seq);
        goto out;
    }
    add_release(&b, pub->lease);
    commit = kmdc_db_batch_command(&b, "COMMIT");
    kmdc_pg_wake_add(&b, ps->r->pool, pub->rcpt, (int)pub->n_rcpt);
    dbrc = kmdc_pg_committed(&b, commit, kmdc_db_batch_run(&b));
    if (dbrc == KMDC_DB_UNAVAILABLE) {
        /* the COMMIT may have been carried out and its answer lost; a
         * byte-identical retry is answered from the receipt if it was */
        *outcome = KMDC_PUBLISH_UNKNOWN;
    }
    rc = kmdc_pg_failed(dbrc);

out:
    /* not committed: the transaction is rolled back when db goes back */
    kmdc_db_release(db);
    kmdc_wipe(rows, sizeof(rows));
    return rc;
}

kmdc_store_rc kmdc_pg_spend(kmdc_store *st, const kmdc_spending *sp)
{
    kmdc_db *db = NULL;
    kmdc_db_batch b;
    kmdc_db_params pp;
    PGresult *res;
    kmdc_store_rc rc;
    kmdc_db_rc dbrc;
    int64_t up_next = 0;
    int row;

    (void)kmdc_pg_upload_settle(st);     /* whatever its answer: one connection */
    if ((rc = kmdc_pg_borrow(KMDC_PG(st), &db)) != KMDC_STORE_OK) {
        return rc;
    }
    /* round trip 1: BEGIN and the card locked */
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)sp->serial);
    kmdc_db_batch_init(&b, db);
    kmdc_db_batch_command(&b, "BEGIN");
    row = kmdc_db_batch_add(&b, "SELECT up_next FROM cards WHERE serial = $1 "
                            "FOR NO KEY UPDATE", &pp, 1);
    if ((dbrc = kmdc_db_batch_run(&b)) != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
        goto out;
    }
    res = kmdc_db_batch_result(&b, row);
    if (PQntuples(res) != 1 || !kmdc_db_get_int64(res, 0, 0, &up_next)
        || (uint64_t)up_next > sp->seq) {
        rc = KMDC_STORE_CONFLICT;        /* a concurrent retry spent it */
        goto out;
    }
    /* round trip 2: the chain, the receipt, the audit row, the lease, COMMIT */
    kmdc_db_batch_init(&b, db);
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)sp->serial);
    kmdc_db_param_int8(&pp, (int64_t)sp->seq);
    kmdc_db_param_bytea(&pp, sp->up_chain_next, KMDC_WRAPPED_LEN);
    kmdc_db_param_bytea(&pp, sp->prefix_hash, 32);
    kmdc_db_param_int4(&pp, sp->http_status);
    kmdc_db_param_text(&pp, sp->answer);
    kmdc_db_batch_add(&b, "WITH c AS (UPDATE cards SET up_next = $2::bigint + 1, "
                      "up_chain = $3::bytea WHERE serial = $1::bigint) "
                      "INSERT INTO receipts (serial, seq, envelope_sha256, hash_scope, "
                      "http_status, answer, prefix_sha256) VALUES ($1::bigint, $2::bigint, "
                      "$4::bytea, 'keyblock', $5::int, $6::text, $4::bytea)", &pp, 0);
    kmdc_pg_audit_add(&b, sp->serial, "send.refused",
                      json_pack("{s:I, s:s}", "seq", (json_int_t)sp->seq, "error", sp->error));
    add_release(&b, sp->lease);
    kmdc_db_batch_command(&b, "COMMIT");
    if ((dbrc = kmdc_db_batch_run(&b)) != KMDC_DB_OK) {
        rc = kmdc_pg_failed(dbrc);
        goto out;
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, KMDC_PG(st)->r,
                  "send: card %016" APR_UINT64_T_HEX_FMT " seq %" APR_UINT64_T_FMT
                  " refused after authentication: %s (counter spent)",
                  (apr_uint64_t)sp->serial, (apr_uint64_t)sp->seq, sp->error);
    rc = KMDC_STORE_OK;

out:
    kmdc_db_release(db);      /* rolled back there unless committed */
    return rc;
}
