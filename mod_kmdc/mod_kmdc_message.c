/*
 * mod_kmdc_message.c - GET /messages/{id} (DESIGN 3.6): the sender's view of
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

#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_db.h"
#include "mod_kmdc_http.h"

int kmdc_handle_message(kmdc_req *kr)
{
    request_rec *r = kr->r;
    kmdc_db *db = NULL;
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc dbrc;
    uint64_t id = 0;
    int64_t created = 0, size = 0;
    json_t *recipients = NULL, *body = NULL;
    char idhex[17];
    int in_tx = 0;
    int rv = OK;
    int i, n;

    if (!kmdc_http_parse_serial(kr->seg[1], &id)) {
        return kmdc_http_error(r, HTTP_NOT_FOUND, "not_found",
                               "no such message: an id is 16 lowercase hex digits");
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
    kmdc_db_param_int8(&pp, (int64_t)kr->signer);
    if (kmdc_db_exec(db, "SELECT floor(extract(epoch FROM created_at) * 1000)::bigint, size "
                     "FROM messages WHERE id = $1 AND sender = $2",
                     &pp, 1, &res) != KMDC_DB_OK) {
        goto unavailable;
    }
    if (PQntuples(res) != 1) {
        rv = kmdc_http_error(r, HTTP_NOT_FOUND, "not_found", "no such message");
        goto out;
    }
    if (!kmdc_db_get_int64(res, 0, 0, &created) || !kmdc_db_get_int64(res, 0, 1, &size)) {
        goto internal;
    }
    kmdc_db_clear(db, res);
    res = NULL;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)id);
    if (kmdc_db_exec(db, "SELECT c.address, CASE WHEN d.state = 'queued' "
                     "AND d.expires_at <= now() THEN 'expired' ELSE d.state END "
                     "FROM deliveries d JOIN cards c ON c.serial = d.recipient "
                     "WHERE d.message_id = $1 ORDER BY d.id", &pp, 0, &res) != KMDC_DB_OK) {
        goto unavailable;
    }
    if (kmdc_db_command(db, "COMMIT") != KMDC_DB_OK) {
        goto unavailable;
    }
    in_tx = 0;
    if ((recipients = json_array()) == NULL) {
        goto internal;
    }
    n = PQntuples(res);
    for (i = 0; i < n; i++) {
        if (json_array_append_new(recipients,
                                  json_pack("{s:s, s:s}",
                                            "address", PQgetvalue(res, i, 0),
                                            "state", PQgetvalue(res, i, 1))) != 0) {
            goto internal;
        }
    }
    kmdc_serial_format(idhex, id);
    body = json_pack("{s:s, s:I, s:I, s:O}", "message", idhex,
                     "created", (json_int_t)created, "size", (json_int_t)size,
                     "recipients", recipients);
    if (body == NULL) {
        goto internal;
    }
    rv = kmdc_http_json(r, HTTP_OK, body);
    goto out;

internal:
    rv = kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal", "internal error");
    goto out;
unavailable:
    rv = kmdc_db_answer_unavailable(r, KMDC_DB_UNAVAILABLE);
out:
    kmdc_db_clear(db, res);
    if (in_tx && kmdc_db_command(db, "ROLLBACK") != KMDC_DB_OK) {
        kmdc_db_invalidate(db);
        db = NULL;
    }
    kmdc_db_release(db);
    json_decref(recipients);
    return rv;
}
