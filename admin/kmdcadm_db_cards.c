/*
 * kmdcadm_db_cards.c - kmdcadm's queries on cards (see kmdcadm_db.h): insert,
 * list, show and status transitions, the wrapped keys resync and rekey read
 * and store, and which master key ids are in use.  Parameterised SQL only;
 * wrapped keys travel as binary bytea and are never printed.
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

/* --- cards ------------------------------------------------------------------ */

kmdc_status
kmdcadm_db_card_insert(kmdcadm_db *db, const kmdcadm_new_card *c,
                       kmdcadm_conflict *conflict, kmdc_err *err)
{
    kmdc_db_params pp;
    const char *constraint;
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;

    *conflict = KMDCADM_CONFLICT_NONE;
    if (c->serial == 0 || c->serial > KMDC_U63_MAX || c->access_days <= 0) {
        st = kmdc_err_set(err, KMDC_ERR_ARG, "invalid card row");
        goto out;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)c->serial);
    kmdc_db_param_text(&pp, c->address);
    kmdc_db_param_bytea(&pp, c->up_chain, KMDC_WRAPPED_LEN);
    kmdc_db_param_bytea(&pp, c->down_chain, KMDC_WRAPPED_LEN);
    kmdc_db_param_bytea(&pp, c->auth_key, KMDC_WRAPPED_LEN);
    kmdc_db_param_int8(&pp, (int64_t)c->key_id);
    kmdc_db_param_bytea(&pp, c->access_mac, KMDCADM_ACCESS_MAC_LEN);
    kmdc_db_param_int4(&pp, c->access_days);
    /* pp cannot overflow: eight fixed parameters */
    res = PQexecParams(db->conn,
                       "INSERT INTO cards (serial, address, status, up_chain, down_chain, "
                       "auth_key, key_id, access_mac, access_expires) "
                       "VALUES ($1::bigint, $2, 'issued', $3::bytea, $4::bytea, $5::bytea, "
                       "$6::bigint, $7::bytea, now() + make_interval(days => $8::int))",
                       pp.n, NULL, pp.values, pp.lengths, pp.formats, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
        if (kmdc_db_is_unique_violation(res) && constraint != NULL) {
            if (strcmp(constraint, "cards_pkey") == 0) {
                *conflict = KMDCADM_CONFLICT_SERIAL;
                st = kmdc_err_set(err, KMDC_ERR_ARG, "the drawn serial is taken");
                goto out;
            }
            if (strcmp(constraint, "cards_address_live") == 0) {
                *conflict = KMDCADM_CONFLICT_ADDRESS;
                st = kmdc_err_set(err, KMDC_ERR_ARG,
                                  "an active card for that address already exists "
                                  "(revoke it first)");
                goto out;
            }
        }
        st = db_error(db, res, "store the card", err);
        goto out;
    }
    PQclear(res);
    res = NULL;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)c->serial);
    kmdc_db_param_int8(&pp, (int64_t)c->key_id);
    st = db_command(db,
                    "INSERT INTO audit_log (serial, event, detail) VALUES ($1::bigint, "
                    "'card.issued', jsonb_build_object('key_id', $2::bigint, "
                    "'by', 'kmdcadm', 'db_user', current_user))",
                    &pp, "record the issue in the audit log", err);
out:
    PQclear(res);
    return st;
}

/* The filter's parameters: status and address, NULL for "any". */
#define LIST_WHERE \
    " WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR address = $2) "

kmdc_status
kmdcadm_db_card_list(kmdcadm_db *db, const kmdcadm_filter *filter, int json,
                     FILE *out, kmdc_err *err)
{
    static const char *const head[7] = {
        "SERIAL", "ADDRESS", "STATUS", "LOCKED", "UP_NEXT", "DOWN_NEXT", "CREATED"
    };
    kmdc_db_params pp;
    int width[7];
    PGresult *res = NULL;
    kmdc_status st;
    int rows, r, c;

    kmdc_db_params_init(&pp);
    kmdc_db_param_text(&pp, filter ? filter->status : NULL);
    kmdc_db_param_text(&pp, filter ? filter->address : NULL);
    if (json) {
        st = db_exec(db, &res, PGRES_TUPLES_OK,
                     "SELECT coalesce(json_agg(json_build_object("
                     "'serial', lpad(to_hex(serial), 16, '0'), 'address', address, "
                     "'status', status, 'locked', locked, 'up_next', up_next, "
                     "'down_next', down_next, 'created', " TS_FMT("created_at") ") "
                     "ORDER BY created_at, serial), '[]'::json) FROM cards" LIST_WHERE,
                     &pp, "list the cards", err);
        if (st != KMDC_OK)
            goto out;
        fprintf(out, "%s\n", PQgetvalue(res, 0, 0));
        goto out;
    }
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT lpad(to_hex(serial), 16, '0'), address, status, "
                 "CASE WHEN locked THEN 'yes' ELSE 'no' END, up_next, down_next, "
                 TS_FMT("created_at") " FROM cards" LIST_WHERE
                 "ORDER BY created_at, serial",
                 &pp, "list the cards", err);
    if (st != KMDC_OK)
        goto out;
    rows = PQntuples(res);
    if (PQnfields(res) != 7) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected result shape");
        goto out;
    }
    for (c = 0; c < 7; c++) {
        width[c] = (int)strlen(head[c]);
        for (r = 0; r < rows; r++)
            if (PQgetlength(res, r, c) > width[c])
                width[c] = PQgetlength(res, r, c);
    }
    for (c = 0; c < 6; c++)
        fprintf(out, "%-*s  ", width[c], head[c]);
    fprintf(out, "%s\n", head[6]);
    for (r = 0; r < rows; r++)
        for (c = 0; c < 7; c++) {
            if (c == 6)
                fprintf(out, "%s\n", PQgetvalue(res, r, c));
            else if (c == 4 || c == 5)   /* counters right-aligned */
                fprintf(out, "%*s  ", width[c], PQgetvalue(res, r, c));
            else
                fprintf(out, "%-*s  ", width[c], PQgetvalue(res, r, c));
        }
out:
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_card_show(kmdcadm_db *db, uint64_t serial, int json, FILE *out,
                     kmdc_err *err)
{
    /* Everything but the wrapped keys and the access-code MAC. */
    static const char *const sql =
        "SELECT lpad(to_hex(c.serial), 16, '0') AS serial, c.address, c.status, "
        "c.locked, c.activation_failures, c.up_next, c.down_next, c.key_id, "
        TS_FMT("c.created_at") " AS created, "
        TS_FMT("c.updated_at") " AS updated, "
        TS_FMT("c.activated_at") " AS activated, "
        "CASE WHEN c.status = 'issued' THEN " TS_FMT("c.access_expires")
        " END AS access_code_expires, "
        "(SELECT count(*) FROM deliveries d WHERE d.recipient = c.serial "
        "   AND d.state = 'queued') AS deliveries_queued, "
        "(SELECT count(*) FROM deliveries d WHERE d.recipient = c.serial "
        "   AND d.state = 'delivered') AS deliveries_delivered, "
        "(SELECT count(*) FROM deliveries d WHERE d.recipient = c.serial "
        "   AND d.state = 'expired') AS deliveries_expired, "
        "(SELECT count(*) FROM messages m WHERE m.sender = c.serial) AS messages_sent "
        "FROM cards c WHERE c.serial = $1::bigint";
    char *query = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_status st;
    int c, width = 0;
    size_t qlen;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    if (json) {
        static const char *const pre = "SELECT row_to_json(s) FROM (";
        qlen = strlen(pre) + strlen(sql) + 4;
        query = malloc(qlen);
        if (query == NULL) {
            st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
            goto out;
        }
        snprintf(query, qlen, "%s%s) s", pre, sql);
    }
    st = db_exec(db, &res, PGRES_TUPLES_OK, json ? query : sql, &pp,
                 "show the card", err);
    if (st != KMDC_OK)
        goto out;
    if (PQntuples(res) != 1) {
        char hex[17];
        kmdc_serial_format(hex, serial);
        st = kmdc_err_set(err, KMDC_ERR_NOTFOUND, "no card with serial %s", hex);
        goto out;
    }
    if (json) {
        fprintf(out, "%s\n", PQgetvalue(res, 0, 0));
        goto out;
    }
    for (c = 0; c < PQnfields(res); c++)
        if ((int)strlen(PQfname(res, c)) > width)
            width = (int)strlen(PQfname(res, c));
    for (c = 0; c < PQnfields(res); c++) {
        const char *v = PQgetisnull(res, 0, c) ? "-" : PQgetvalue(res, 0, c);
        int b = 0;

        if (strcmp(PQfname(res, c), "locked") == 0)
            v = kmdc_db_get_bool(res, 0, c, &b) && b ? "yes" : "no";
        fprintf(out, "%-*s  %s\n", width + 1, PQfname(res, c), v);
    }
out:
    free(query);
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_card_transition(kmdcadm_db *db, uint64_t serial, kmdcadm_action action,
                           const char *reason, char from[16], char to[16],
                           kmdc_err *err)
{
    static const char *const verbs[] = { "suspend", "resume", "revoke" };
    static const char *const events[] = { "card.suspended", "card.resumed", "card.revoked" };
    char hex[17], old[16];
    kmdc_db_params pp;
    const char *next = NULL;
    PGresult *res = NULL;
    kmdc_status st;
    int activated, intrans = 0;

    if ((int)action < 0 || action > KMDCADM_REVOKE)
        return kmdc_err_set(err, KMDC_ERR_ARG, "unknown action");
    kmdc_serial_format(hex, serial);
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    st = kmdcadm_db_begin(db, err);
    if (st != KMDC_OK)
        goto out;
    intrans = 1;
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT status, activated_at IS NOT NULL FROM cards "
                 "WHERE serial = $1::bigint FOR UPDATE", &pp, "read the card", err);
    if (st != KMDC_OK)
        goto out;
    if (PQntuples(res) != 1) {
        st = kmdc_err_set(err, KMDC_ERR_NOTFOUND, "no card with serial %s", hex);
        goto out;
    }
    first_line(old, sizeof old, PQgetvalue(res, 0, 0));
    if (!kmdc_db_get_bool(res, 0, 1, &activated)) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected card row shape");
        goto out;
    }
    PQclear(res);
    res = NULL;

    if (strcmp(old, "revoked") == 0) {
        st = kmdc_err_set(err, KMDC_ERR_ARG,
                          "cannot %s card %s: it is revoked, and revocation is final",
                          verbs[action], hex);
        goto out;
    }
    switch (action) {
    case KMDCADM_SUSPEND:
        if (strcmp(old, "suspended") == 0) {
            st = kmdc_err_set(err, KMDC_ERR_ARG, "card %s is already suspended", hex);
            goto out;
        }
        next = "suspended";
        break;
    case KMDCADM_RESUME:
        if (strcmp(old, "suspended") != 0) {
            st = kmdc_err_set(err, KMDC_ERR_ARG,
                              "cannot resume card %s: it is %s, not suspended", hex, old);
            goto out;
        }
        next = activated ? "active" : "issued";
        break;
    case KMDCADM_REVOKE:
        next = "revoked";
        break;
    }
    kmdc_db_param_text(&pp, next);
    st = db_command(db, "UPDATE cards SET status = $2 WHERE serial = $1::bigint",
                    &pp, "change the card status", err);
    if (st != KMDC_OK)
        goto out;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_text(&pp, events[action]);
    kmdc_db_param_text(&pp, old);
    kmdc_db_param_text(&pp, next);
    kmdc_db_param_text(&pp, reason);
    st = db_command(db,
                    "INSERT INTO audit_log (serial, event, detail) VALUES ($1::bigint, $2, "
                    "jsonb_strip_nulls(jsonb_build_object('from', $3::text, 'to', $4::text, "
                    "'reason', $5::text, 'by', 'kmdcadm', 'db_user', current_user)))",
                    &pp, "record the change in the audit log", err);
    if (st != KMDC_OK)
        goto out;
    st = kmdcadm_db_commit(db, err);
    intrans = 0;
    if (st != KMDC_OK)
        goto out;
    if (from != NULL)
        first_line(from, 16, old);
    if (to != NULL)
        first_line(to, 16, next);
out:
    PQclear(res);
    if (intrans)
        kmdcadm_db_rollback(db);
    return st;
}

/* --- keys: resync and rekey -------------------------------------------------- */

/* Whether the card still holds an access code that can activate it. */
#define CODE_LIVE \
    "(access_mac IS NOT NULL AND status IN ('issued', 'suspended') AND NOT locked " \
    "AND access_expires > now())"
#define KEYS_COLUMNS \
    "SELECT serial, status, up_next, down_next, up_chain, down_chain, auth_key, " \
    "key_id, " CODE_LIVE " FROM cards "

/* Fill k from row `row` of a KEYS_COLUMNS result in binary format. */
static kmdc_status
keys_from_row(const PGresult *res, int row, kmdcadm_card_keys *k, kmdc_err *err)
{
    int64_t serial, up, down, key_id;
    int len, live;

    memset(k, 0, sizeof *k);
    if (PQnfields(res) != 9 || !kmdc_db_get_int64(res, row, 0, &serial) || serial < 0
        || !kmdc_db_get_int64(res, row, 2, &up) || up < 0
        || !kmdc_db_get_int64(res, row, 3, &down) || down < 0
        || PQgetisnull(res, row, 1) || PQftype(res, 7) != KMDC_DB_INT4OID
        || !kmdc_db_get_int64(res, row, 7, &key_id) || !kmdc_db_get_bool(res, row, 8, &live))
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected card row shape");
    k->serial = (uint64_t)serial;
    k->up_next = (uint64_t)up;
    k->down_next = (uint64_t)down;
    k->key_id = (uint32_t)key_id;   /* int4's bits, as the column stores them */
    k->code_live = live;
    len = PQgetlength(res, row, 1);
    if (len <= 0 || (size_t)len >= sizeof k->status)
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected card status");
    memcpy(k->status, PQgetvalue(res, row, 1), (size_t)len);
    k->status[len] = '\0';
    if (PQgetlength(res, row, 4) != KMDC_WRAPPED_LEN
        || PQgetlength(res, row, 5) != KMDC_WRAPPED_LEN
        || PQgetlength(res, row, 6) != KMDC_WRAPPED_LEN) {
        char hex[17];
        kmdc_serial_format(hex, k->serial);
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "card %s: a wrapped key has the wrong length", hex);
    }
    memcpy(k->up_chain, PQgetvalue(res, row, 4), KMDC_WRAPPED_LEN);
    memcpy(k->down_chain, PQgetvalue(res, row, 5), KMDC_WRAPPED_LEN);
    memcpy(k->auth_key, PQgetvalue(res, row, 6), KMDC_WRAPPED_LEN);
    return KMDC_OK;
}

kmdc_status
kmdcadm_db_card_keys_batch(kmdcadm_db *db, uint64_t after, int lock,
                           kmdcadm_card_keys *rows, size_t cap, size_t *n,
                           kmdc_err *err)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;
    int r, nt;

    *n = 0;
    if (cap == 0 || cap > 100000 || after > KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "invalid batch");
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)after);
    kmdc_db_param_int4(&pp, (int32_t)cap);
    st = db_exec_bin(db, &res,
                     lock ? KEYS_COLUMNS "WHERE serial > $1::bigint ORDER BY serial "
                            "LIMIT $2::int FOR NO KEY UPDATE"
                          : KEYS_COLUMNS "WHERE serial > $1::bigint ORDER BY serial "
                            "LIMIT $2::int",
                     &pp, "read the cards", err);
    if (st != KMDC_OK)
        goto out;
    nt = PQntuples(res);
    if (nt < 0 || (size_t)nt > cap) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected number of rows");
        goto out;
    }
    for (r = 0; r < nt; r++) {
        st = keys_from_row(res, r, &rows[r], err);
        if (st != KMDC_OK)
            goto out;
    }
    *n = (size_t)nt;
out:
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_card_keys_lock(kmdcadm_db *db, uint64_t serial, kmdcadm_card_keys *out,
                          kmdc_err *err)
{
    char hex[17];
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_status st;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    st = db_exec_bin(db, &res, KEYS_COLUMNS "WHERE serial = $1::bigint FOR NO KEY UPDATE",
                     &pp, "read the card", err);
    if (st != KMDC_OK)
        goto out;
    if (PQntuples(res) != 1) {
        kmdc_serial_format(hex, serial);
        st = kmdc_err_set(err, KMDC_ERR_NOTFOUND, "no card with serial %s", hex);
        goto out;
    }
    st = keys_from_row(res, 0, out, err);
out:
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_card_keys_store(kmdcadm_db *db, const kmdcadm_card_keys *c, kmdc_err *err)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;

    if (c->serial == 0 || c->serial > KMDC_U63_MAX || c->up_next > KMDC_U63_MAX
        || c->down_next > KMDC_U63_MAX || c->key_id > INT32_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "invalid card keys");
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)c->serial);
    kmdc_db_param_int8(&pp, (int64_t)c->up_next);
    kmdc_db_param_int8(&pp, (int64_t)c->down_next);
    kmdc_db_param_bytea(&pp, c->up_chain, KMDC_WRAPPED_LEN);
    kmdc_db_param_bytea(&pp, c->down_chain, KMDC_WRAPPED_LEN);
    kmdc_db_param_bytea(&pp, c->auth_key, KMDC_WRAPPED_LEN);
    kmdc_db_param_int4(&pp, (int32_t)c->key_id);   /* <= INT32_MAX, checked above */
    res = PQexecParams(db->conn,
                       "UPDATE cards SET up_next = $2::bigint, down_next = $3::bigint, "
                       "up_chain = $4::bytea, down_chain = $5::bytea, auth_key = $6::bytea, "
                       "key_id = $7::int WHERE serial = $1::bigint",
                       pp.n, NULL, pp.values, pp.lengths, pp.formats, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        st = db_error(db, res, "store the card's keys", err);
        goto out;
    }
    if (strcmp(PQcmdTuples(res), "1") != 0)
        st = kmdc_err_set(err, KMDC_ERR_NOTFOUND, "the card row is gone");
out:
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_audit_resync(kmdcadm_db *db, uint64_t serial, const char *chain,
                        uint64_t from, uint64_t to, kmdc_err *err)
{
    kmdc_db_params pp;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_text(&pp, chain);
    kmdc_db_param_int8(&pp, (int64_t)from);
    kmdc_db_param_int8(&pp, (int64_t)to);
    return db_command(db,
                      "INSERT INTO audit_log (serial, event, detail) VALUES ($1::bigint, "
                      "'card.resynced', jsonb_build_object('chain', $2::text, "
                      "'from', $3::bigint, 'to', $4::bigint, 'by', 'kmdcadm', "
                      "'db_user', current_user))",
                      &pp, "record the resync in the audit log", err);
}

kmdc_status
kmdcadm_db_audit_rekey(kmdcadm_db *db, uint32_t key_id, uint64_t cards,
                       uint64_t nvalues, kmdc_err *err)
{
    kmdc_db_params pp;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)key_id);
    kmdc_db_param_int8(&pp, (int64_t)cards);
    kmdc_db_param_int8(&pp, (int64_t)nvalues);
    return db_command(db,
                      "INSERT INTO audit_log (event, detail) VALUES ('master.rekeyed', "
                      "jsonb_build_object('key_id', $1::bigint, 'cards', $2::bigint, "
                      "'values', $3::bigint, 'by', 'kmdcadm', 'db_user', current_user))",
                      &pp, "record the rekey in the audit log", err);
}

kmdc_status
kmdcadm_db_live_codes(kmdcadm_db *db, uint32_t newest, kmdcadm_code_use *out,
                      size_t cap, size_t *n, kmdc_err *err)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_status st;
    int64_t id, count;
    int r, nt;

    *n = 0;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)newest);
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT key_id, count(*), " TS_FMT("max(access_expires)")
                 " FROM cards WHERE " CODE_LIVE " AND key_id <> $1::bigint "
                 "GROUP BY key_id ORDER BY key_id",
                 &pp, "look for access codes under older keys", err);
    if (st != KMDC_OK)
        goto out;
    nt = PQntuples(res);
    for (r = 0; r < nt && (size_t)r < cap; r++) {
        if (!kmdc_db_get_int64(res, r, 0, &id) || !kmdc_db_get_int64(res, r, 1, &count)) {
            st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected access code row");
            goto out;
        }
        out[r].key_id = (uint32_t)id;
        out[r].cards = (uint64_t)count;
        first_line(out[r].latest_expiry, sizeof out[r].latest_expiry,
                   PQgetvalue(res, r, 2));
    }
    *n = (size_t)r;
out:
    PQclear(res);
    return st;
}

/* --- key ids in use ---------------------------------------------------------------- */

#define WRAP_ID(col) \
    "((get_byte(" col ", 0)::bigint << 24) | (get_byte(" col ", 1) << 16) " \
    "| (get_byte(" col ", 2) << 8) | get_byte(" col ", 3))"

kmdc_status
kmdcadm_db_key_ids(kmdcadm_db *db, kmdcadm_key_use *out, size_t cap, size_t *n,
                   int *more, kmdc_err *err)
{
    PGresult *res = NULL;
    kmdc_status st;
    int64_t id, count;
    int r, nt;

    *n = 0;
    *more = 0;
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT id, count(*) FROM ("
                 "SELECT " WRAP_ID("up_chain") " AS id FROM cards UNION ALL "
                 "SELECT " WRAP_ID("down_chain") " FROM cards UNION ALL "
                 "SELECT " WRAP_ID("auth_key") " FROM cards) s GROUP BY id ORDER BY id",
                 NULL, "count the master key ids in use", err);
    if (st != KMDC_OK)
        goto out;
    nt = PQntuples(res);
    for (r = 0; r < nt && (size_t)r < cap; r++) {
        if (!kmdc_db_get_int64(res, r, 0, &id) || !kmdc_db_get_int64(res, r, 1, &count)) {
            st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected key id row");
            goto out;
        }
        out[r].key_id = (uint32_t)id;
        out[r].values = (uint64_t)count;
    }
    *n = (size_t)r;
    *more = nt > r;
out:
    PQclear(res);
    return st;
}
