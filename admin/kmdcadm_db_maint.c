/*
 * kmdcadm_db_maint.c - kmdcadm's queries on the database as a whole (see
 * kmdcadm_db.h): purge, in short batches that skip the rows the service
 * holds, and printing the audit log.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "kmdc_util.h"
#include "kmdcadm_db.h"
#include "kmdcadm_db_int.h"

/* --- purge ---------------------------------------------------------------------- */

/*
 * Parameters of every purge statement: $1 receipt age, $2 tombstone age,
 * $3 upload age, $4 nonce age (seconds).  Each DELETE/UPDATE works on one
 * batch of rows locked with SKIP LOCKED and is repeated until it finds
 * nothing.
 */
#define AGO(p) "(now() - " p "::bigint * interval '1 second')"
/* Every purge statement declares the four parameters, used or not. */
static const Oid purge_types[4] = { 20, 20, 20, 20 };   /* int8 */
#define PURGE_BATCH "500"

typedef struct purge_kind {
    const char *name;         /* for messages and the audit detail */
    const char *run;          /* one batch; its row count is added */
    const char *count;        /* dry run: what a run now would remove */
    int repeatable_read;      /* run under REPEATABLE READ (see orphans) */
} purge_kind;

static const purge_kind purge_kinds[] = {
    /* (a) queued deliveries past their expiry become tombstones */
    { "expired",
      "UPDATE deliveries SET state = 'expired', head = NULL WHERE state = 'queued' "
      "AND id IN (SELECT id FROM deliveries WHERE state = 'queued' "
      "AND expires_at <= now() ORDER BY id LIMIT " PURGE_BATCH " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM deliveries WHERE state = 'queued' AND expires_at <= now()",
      0 },
    /* (b) the payload of a message none of whose deliveries is queued; the
     * message row is locked first, as the module's acknowledgement does */
    { "uploads",
      "WITH m AS (SELECT id, upload_id FROM messages mm WHERE upload_id IS NOT NULL "
      "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = mm.id "
      "AND d.state = 'queued') ORDER BY id LIMIT 100 FOR NO KEY UPDATE SKIP LOCKED) "
      "DELETE FROM uploads u USING m WHERE u.id = m.upload_id",
      "SELECT count(*) FROM messages m JOIN uploads u ON u.id = m.upload_id "
      "WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id "
      "AND d.state = 'queued' AND d.expires_at > now())",
      0 },
    /* (b) the same for a payload kept in its message's row (schema 6),
     * found by the partial index messages_with_payload */
    { "payloads",
      "UPDATE messages SET payload = NULL WHERE id IN (SELECT mm.id FROM messages mm "
      "WHERE mm.payload IS NOT NULL AND NOT EXISTS (SELECT 1 FROM deliveries d "
      "WHERE d.message_id = mm.id AND d.state = 'queued') ORDER BY mm.id LIMIT 100 "
      "FOR NO KEY UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM messages m WHERE m.payload IS NOT NULL "
      "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id "
      "AND d.state = 'queued' AND d.expires_at > now())",
      0 },
    /* (b') uploads no message references whose last batch is older than the
     * longest intake (touched_at moves with every batch, so an upload still
     * streaming is never taken for an orphan).
     * REPEATABLE READ: should an intake publish a message referencing one of
     * them after our snapshot, the ON DELETE SET NULL would otherwise strip
     * that new message of its payload; under REPEATABLE READ it fails with a
     * serialization error instead, and the batch is retried. */
    { "orphans",
      "DELETE FROM uploads WHERE id IN (SELECT u.id FROM uploads u "
      "WHERE u.touched_at < " AGO("$3") " AND NOT EXISTS (SELECT 1 FROM messages m "
      "WHERE m.upload_id = u.id) ORDER BY u.id LIMIT 100 FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM uploads u WHERE u.touched_at < " AGO("$3")
      " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.upload_id = u.id)",
      1 },
    /* (c) receipts past the retry horizon */
    { "receipts",
      "DELETE FROM receipts WHERE (serial, seq) IN (SELECT serial, seq FROM receipts "
      "WHERE created_at < " AGO("$1") " ORDER BY created_at LIMIT " PURGE_BATCH
      " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM receipts WHERE created_at < " AGO("$1"),
      0 },
    /* (d) request nonces past the replay horizon */
    { "nonces",
      "DELETE FROM request_nonces WHERE (serial, nonce) IN (SELECT serial, nonce "
      "FROM request_nonces WHERE seen_at < " AGO("$4") " ORDER BY seen_at LIMIT "
      PURGE_BATCH " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM request_nonces WHERE seen_at < " AGO("$4"),
      0 },
    /* (e) old tombstones: delivered (counted from the acknowledgement) or
     * expired (from the expiry) */
    { "tombstones",
      "DELETE FROM deliveries WHERE state <> 'queued' AND id IN (SELECT id "
      "FROM deliveries WHERE state <> 'queued' AND coalesce(acked_at, expires_at) < "
      AGO("$2") " ORDER BY id LIMIT " PURGE_BATCH " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM deliveries WHERE (state <> 'queued' OR expires_at <= now()) "
      "AND coalesce(acked_at, expires_at) < " AGO("$2"),
      0 },
    /* (e') messages no delivery and no receipt references any more */
    { "messages",
      "DELETE FROM messages WHERE id IN (SELECT m.id FROM messages m "
      "WHERE m.created_at < " AGO("$2") " AND NOT EXISTS (SELECT 1 FROM deliveries d "
      "WHERE d.message_id = m.id) AND NOT EXISTS (SELECT 1 FROM receipts r "
      "WHERE r.message_id = m.id) ORDER BY m.id LIMIT " PURGE_BATCH
      " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM messages m WHERE m.created_at < " AGO("$2")
      " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id "
      "AND NOT ((d.state <> 'queued' OR d.expires_at <= now()) "
      "AND coalesce(d.acked_at, d.expires_at) < " AGO("$2") ")) "
      "AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.message_id = m.id "
      "AND r.created_at >= " AGO("$1") ")",
      0 },
};

/* How many times a batch is retried after a serialization failure or a
 * deadlock before purge gives up. */
#define PURGE_RETRIES 5

/* Run one kind's batches until a batch finds nothing; add the rows to *total. */
static kmdc_status
purge_run_kind(kmdcadm_db *db, const purge_kind *k, const kmdc_db_params *pp,
               uint64_t *total, kmdc_err *err)
{
    char what[64];
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;
    unsigned long long rows;
    int retries = 0, intrans = 0;

    snprintf(what, sizeof what, "purge %s", k->name);
    for (;;) {
        if (k->repeatable_read) {
            st = db_command(db, "BEGIN ISOLATION LEVEL REPEATABLE READ", NULL, what, err);
            if (st != KMDC_OK)
                goto out;
            intrans = 1;
        }
        res = PQexecParams(db->conn, k->run, pp->n, purge_types, pp->values, pp->lengths,
                           pp->formats, 0);
        if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
            if (kmdc_db_is_retryable(res) && retries < PURGE_RETRIES) {
                retries++;
                PQclear(res);
                res = NULL;
                kmdcadm_db_rollback(db);
                intrans = 0;
                continue;
            }
            st = db_error(db, res, what, err);
            goto out;
        }
        rows = strtoull(PQcmdTuples(res), NULL, 10);
        PQclear(res);
        res = NULL;
        if (intrans) {
            st = kmdcadm_db_commit(db, err);
            intrans = 0;
            if (st != KMDC_OK)
                goto out;
        }
        *total += rows;
        if (rows == 0)
            break;
        retries = 0;
    }
out:
    PQclear(res);
    if (intrans)
        kmdcadm_db_rollback(db);
    return st;
}

kmdc_status
kmdcadm_db_purge(kmdcadm_db *db, const kmdcadm_purge_opts *opts,
                 kmdcadm_purge_counts *counts, kmdc_err *err)
{
    kmdc_db_params pp;
    uint64_t *slot[sizeof purge_kinds / sizeof purge_kinds[0]];
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;
    uint64_t sum;
    size_t i;

    memset(counts, 0, sizeof *counts);
    if (opts->receipt_age < 0 || opts->tombstone_age < 0 || opts->upload_age < 0
        || opts->nonce_age < 0)
        return kmdc_err_set(err, KMDC_ERR_ARG, "purge ages must not be negative");
    kmdc_db_params_init(&pp);   /* four fixed parameters: cannot overflow */
    kmdc_db_param_int8(&pp, opts->receipt_age);
    kmdc_db_param_int8(&pp, opts->tombstone_age);
    kmdc_db_param_int8(&pp, opts->upload_age);
    kmdc_db_param_int8(&pp, opts->nonce_age);
    slot[0] = &counts->expired;
    slot[1] = &counts->uploads;
    slot[2] = &counts->uploads;     /* a payload in its message's row */
    slot[3] = &counts->orphans;
    slot[4] = &counts->receipts;
    slot[5] = &counts->nonces;
    slot[6] = &counts->tombstones;
    slot[7] = &counts->messages;
    for (i = 0; i < sizeof purge_kinds / sizeof purge_kinds[0]; i++) {
        if (opts->dry_run) {
            char what[64];
            int64_t count;

            snprintf(what, sizeof what, "count %s", purge_kinds[i].name);
            res = PQexecParams(db->conn, purge_kinds[i].count, pp.n, purge_types,
                               pp.values, pp.lengths, pp.formats, 0);
            if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
                st = db_error(db, res, what, err);
                goto out;
            }
            if (PQntuples(res) != 1 || !kmdc_db_get_int64(res, 0, 0, &count) || count < 0) {
                st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected count result");
                goto out;
            }
            *slot[i] += (uint64_t)count;
            PQclear(res);
            res = NULL;
        } else {
            st = purge_run_kind(db, &purge_kinds[i], &pp, slot[i], err);
            if (st != KMDC_OK)
                goto out;
        }
    }
    sum = counts->expired + counts->uploads + counts->orphans + counts->receipts
          + counts->nonces + counts->tombstones + counts->messages;
    if (!opts->dry_run && sum > 0) {
        kmdc_db_params_init(&pp);
        kmdc_db_param_int8(&pp, (int64_t)counts->expired);
        kmdc_db_param_int8(&pp, (int64_t)counts->uploads);
        kmdc_db_param_int8(&pp, (int64_t)counts->orphans);
        kmdc_db_param_int8(&pp, (int64_t)counts->receipts);
        kmdc_db_param_int8(&pp, (int64_t)counts->nonces);
        kmdc_db_param_int8(&pp, (int64_t)counts->tombstones);
        kmdc_db_param_int8(&pp, (int64_t)counts->messages);
        st = db_command(db,
                        "INSERT INTO audit_log (event, detail) VALUES ('db.purged', "
                        "jsonb_build_object('expired', $1::bigint, 'uploads', $2::bigint, "
                        "'orphans', $3::bigint, 'receipts', $4::bigint, "
                        "'nonces', $5::bigint, 'tombstones', $6::bigint, "
                        "'messages', $7::bigint, 'by', 'kmdcadm', "
                        "'db_user', current_user))",
                        &pp, "record the purge in the audit log", err);
    }
out:
    PQclear(res);
    return st;
}

/* --- audit ------------------------------------------------------------------------ */

#define AUDIT_ROWS \
    "SELECT id, at, " TS_FMT("at") " AS at_text, " \
    "CASE WHEN serial IS NULL THEN NULL ELSE lpad(to_hex(serial), 16, '0') END " \
    "AS serial_hex, event, detail FROM audit_log " \
    "WHERE ($1::bigint IS NULL OR serial = $1::bigint) " \
    "AND ($2::timestamptz IS NULL OR at >= $2::timestamptz) " \
    "AND ($3::bigint IS NULL OR at >= " AGO("$3") ") " \
    "ORDER BY at DESC, id DESC LIMIT $4::bigint"

kmdc_status
kmdcadm_db_audit_print(kmdcadm_db *db, const kmdcadm_audit_query *q, FILE *out,
                       kmdc_err *err)
{
    static const char *const head[3] = { "AT", "SERIAL", "EVENT" };
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;
    int width[3], rows, r, c;

    kmdc_db_params_init(&pp);   /* four fixed parameters: cannot overflow */
    if (q->serial != 0)
        kmdc_db_param_int8(&pp, (int64_t)q->serial);
    else
        kmdc_db_param_text(&pp, NULL);
    kmdc_db_param_text(&pp, q->since);
    if (q->since_secs >= 0)
        kmdc_db_param_int8(&pp, q->since_secs);
    else
        kmdc_db_param_text(&pp, NULL);
    if (q->limit > 0)
        kmdc_db_param_int8(&pp, q->limit);
    else
        kmdc_db_param_text(&pp, NULL);
    res = PQexecParams(db->conn,
                       q->json
                       ? "SELECT coalesce(json_agg(json_build_object('id', id, "
                         "'at', at_text, 'serial', serial_hex, 'event', event, "
                         "'detail', detail) ORDER BY at DESC, id DESC), '[]'::json) "
                         "FROM (" AUDIT_ROWS ") s"
                       : "SELECT at_text, coalesce(serial_hex, '-'), event, "
                         "coalesce(detail::text, '{}') FROM (" AUDIT_ROWS ") s "
                         "ORDER BY at DESC, id DESC",
                       pp.n, NULL, pp.values, pp.lengths, pp.formats, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        if (kmdc_db_sqlstate_is(res, "22") && q->since != NULL)
            st = kmdc_err_set(err, KMDC_ERR_FORMAT,
                              "--since: not a time (use e.g. 2024-05-01, "
                              "'2024-05-01 12:00:00+00' or a duration such as 2h)");
        else
            st = db_error(db, res, "read the audit log", err);
        goto out;
    }
    if (q->json) {
        fprintf(out, "%s\n", PQgetvalue(res, 0, 0));
        goto out;
    }
    rows = PQntuples(res);
    if (PQnfields(res) != 4) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected result shape");
        goto out;
    }
    for (c = 0; c < 3; c++) {
        width[c] = (int)strlen(head[c]);
        for (r = 0; r < rows; r++)
            if (PQgetlength(res, r, c) > width[c])
                width[c] = PQgetlength(res, r, c);
    }
    fprintf(out, "%-*s  %-*s  %-*s  DETAIL\n", width[0], head[0], width[1], head[1],
            width[2], head[2]);
    for (r = 0; r < rows; r++)
        fprintf(out, "%-*s  %-*s  %-*s  %s\n", width[0], PQgetvalue(res, r, 0),
                width[1], PQgetvalue(res, r, 1), width[2], PQgetvalue(res, r, 2),
                PQgetvalue(res, r, 3));
out:
    PQclear(res);
    return st;
}
