/*
 * mod_kmdc_store.c - the PostgreSQL store of mod_kmdc: its operation table,
 * the per-request handle, and borrowing a pooled connection per operation.
 * The operations themselves are in mod_kmdc_store_{send,cards,mailbox}.c.
 */
#include <stdlib.h>
#include <string.h>

#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_store_pg.h"

static const kmdc_store_ops pg_ops = {
    kmdc_pg_sender_load,
    kmdc_pg_receipt_find,
    kmdc_pg_slot_take,
    kmdc_pg_slot_release,
    kmdc_pg_recipients_resolve,
    kmdc_pg_upload_append,
    kmdc_pg_upload_settle,
    kmdc_pg_upload_drop,
    kmdc_pg_publish,
    kmdc_pg_spend,
    kmdc_pg_auth_load,
    kmdc_pg_nonce_record,
    kmdc_pg_settle,
    kmdc_pg_health,
    kmdc_pg_card_get,
    kmdc_pg_activate,
    kmdc_pg_mailbox_list,
    kmdc_pg_mailbox_watch,
    kmdc_pg_fetch_open,
    kmdc_pg_fetch_next,
    kmdc_pg_fetch_close,
    kmdc_pg_ack,
    kmdc_pg_message_status,
};

void kmdc_store_child_init(apr_pool_t *pchild, server_rec *s)
{
    kmdc_db_child_init(pchild, s);
}

/* One handle per request, so that what request authentication deferred
 * reaches the endpoint's first operation. */
#define KMDC_STORE_KEY "mod_kmdc store"

kmdc_store *kmdc_store_pg(request_rec *r)
{
    kmdc_pg_store *ps = NULL;

    if (apr_pool_userdata_get((void **)&ps, KMDC_STORE_KEY, r->pool) == APR_SUCCESS
        && ps != NULL) {
        return &ps->base;
    }
    ps = apr_pcalloc(r->pool, sizeof(*ps));
    ps->base.ops = &pg_ops;
    ps->r = r;
    ps->sc = kmdc_conf_get(r->server);
    (void)apr_pool_userdata_setn(ps, KMDC_STORE_KEY, NULL, r->pool);
    return &ps->base;
}

kmdc_store_rc kmdc_pg_borrow_for(kmdc_pg_store *ps, kmdc_db **db, const char *op)
{
    kmdc_db_rc rc = kmdc_db_acquire(ps->r, db);

    if (rc == KMDC_DB_OK) {
        if (op != NULL && strncmp(op, "kmdc_pg_", 8) == 0) {
            op += 8;
        }
        (*db)->purpose = op;
        if (ps->deferred != NULL) {
            kmdc_db_defer(*db, ps->deferred);
            ps->deferred = NULL;
        }
        return KMDC_STORE_OK;
    }
    *db = NULL;
    return rc == KMDC_DB_SCHEMA ? KMDC_STORE_SCHEMA : KMDC_STORE_UNAVAILABLE;
}

kmdc_store_rc kmdc_pg_failed(kmdc_db_rc rc)
{
    switch (rc) {
    case KMDC_DB_OK:
        return KMDC_STORE_OK;
    case KMDC_DB_SCHEMA:
        return KMDC_STORE_SCHEMA;
    case KMDC_DB_DEFERRED_CONFLICT:
        return KMDC_STORE_REPLAY;        /* the only statement ever deferred */
    default:
        /* an outage, or a statement the database refused (permissions, a
         * full disk): passing, from the client's side */
        return KMDC_STORE_UNAVAILABLE;
    }
}

int kmdc_pg_get_bytes(const PGresult *res, int row, int col, uint8_t *out, size_t len)
{
    const unsigned char *p = NULL;
    size_t n = 0;

    if (!kmdc_db_get_bytea(res, row, col, &p, &n) || n != len) {
        return 0;
    }
    memcpy(out, p, len);
    return 1;
}

int kmdc_pg_get_text(const PGresult *res, int row, int col, char *buf, size_t cap)
{
    int len;

    if (row < 0 || row >= PQntuples(res) || col < 0 || col >= PQnfields(res)
        || PQgetisnull(res, row, col)) {
        return 0;
    }
    len = PQgetlength(res, row, col);
    if (len < 0 || (size_t)len >= cap) {
        return 0;
    }
    memcpy(buf, PQgetvalue(res, row, col), (size_t)len);
    buf[len] = '\0';
    return 1;
}

int kmdc_pg_get_counter(const PGresult *res, int row, int col, uint64_t *v)
{
    int64_t t = 0;

    if (!kmdc_db_get_int64(res, row, col, &t) || t < 0) {
        return 0;
    }
    *v = (uint64_t)t;
    return 1;
}

kmdc_store_rc kmdc_pg_row(kmdc_db *db, const char *sql, const kmdc_db_params *pp,
                          int binary, PGresult **res)
{
    kmdc_db_rc rc = kmdc_db_exec(db, sql, pp, binary, res);

    if (rc != KMDC_DB_OK) {
        return kmdc_pg_failed(rc);
    }
    switch (PQntuples(*res)) {
    case 1:
        return KMDC_STORE_OK;
    case 0:
        return KMDC_STORE_NOTFOUND;
    default:
        return KMDC_STORE_ERROR;
    }
}

kmdc_db_rc kmdc_pg_run(kmdc_db *db, const char *sql, const kmdc_db_params *pp)
{
    PGresult *res = NULL;
    kmdc_db_rc rc = kmdc_db_exec(db, sql, pp, 0, &res);

    kmdc_db_clear(db, res);
    return rc;
}

kmdc_db_rc kmdc_pg_audit(kmdc_db *db, uint64_t serial, const char *event, json_t *obj)
{
    char *detail = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    kmdc_db_params pp;
    kmdc_db_rc rc = KMDC_DB_ERROR;

    if (detail != NULL) {
        kmdc_db_params_init(&pp);
        kmdc_db_param_int8(&pp, (int64_t)serial);
        kmdc_db_param_text(&pp, event);
        kmdc_db_param_text(&pp, detail);
        rc = kmdc_pg_run(db, "INSERT INTO audit_log (serial, event, detail) "
                         "VALUES ($1::bigint, $2::text, $3::jsonb)", &pp);
    }
    free(detail);
    json_decref(obj);
    return rc;
}

int kmdc_pg_add_own_tx(kmdc_db_batch *b, const char *sql, const kmdc_db_params *pp,
                       int durable)
{
    int i;

    kmdc_db_batch_command(b, "BEGIN");
    if (!durable) {
        kmdc_db_batch_command(b, "SET LOCAL synchronous_commit TO off");
    }
    i = kmdc_db_batch_add(b, sql, pp, 0);
    kmdc_db_batch_command(b, "COMMIT");
    return i;
}

void kmdc_pg_audit_add(kmdc_db_batch *b, uint64_t serial, const char *event, json_t *obj)
{
    char *detail = obj != NULL ? json_dumps(obj, JSON_COMPACT) : NULL;
    kmdc_db_params pp;

    if (detail == NULL) {
        b->overflow = 1;                 /* out of memory: the batch fails */
        json_decref(obj);
        return;
    }
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)serial);
    kmdc_db_param_text(&pp, event);
    kmdc_db_param_text(&pp, apr_pstrdup(b->db->r->pool, detail));
    kmdc_db_batch_add(b, "INSERT INTO audit_log (serial, event, detail) "
                      "VALUES ($1::bigint, $2::text, $3::jsonb)", &pp, 0);
    free(detail);
    json_decref(obj);
}

kmdc_degraded kmdc_store_degraded(request_rec *r, int *ago)
{
    const kmdc_srv_conf *sc = kmdc_conf_get(r->server);

    return kmdc_metrics_db_degraded(sc != NULL ? sc->conninfo : NULL, apr_time_now(), ago);
}

int kmdc_store_answer_failure(request_rec *r, kmdc_store_rc rc)
{
    switch (rc) {
    case KMDC_STORE_REPLAY:
        return kmdc_reqauth_answer_replay(r);
    case KMDC_STORE_SCHEMA:
        return kmdc_db_answer_unavailable(r, KMDC_DB_SCHEMA);
    case KMDC_STORE_UNAVAILABLE:
        return kmdc_db_answer_unavailable(r, KMDC_DB_UNAVAILABLE);
    default:
        return kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                               "internal error; see the server log");
    }
}
