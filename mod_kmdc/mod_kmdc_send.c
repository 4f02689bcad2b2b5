/*
 * mod_kmdc_send.c - POST {location}/send: the datacenter intake of
 * DESIGN 3.7, read top to bottom as its steps.
 *
 *  1. The header arrives: load the sender's card (no lock), check status,
 *     window and receipts, derive MK_seq from a copy of the chain.  The
 *     reader opens the keyblock and checks the TLV; on_meta checks SENT and
 *     the limits and resolves every recipient.  Nothing is written before.
 *  2. The payload streams through: each verified chunk is re-encrypted under
 *     a fresh DEK into upload rows (committed in batches, referencing no
 *     card), in constant memory.
 *  3. Only when the body was read to its end and validated, publish() runs
 *     one short transaction; a refusal after authentication spends the
 *     counter in spend(); every other failure changes nothing.
 *
 * Receipts: an accepted envelope's receipt holds the SHA-256 of the whole
 * envelope; a refused one's holds the SHA-256 of header || kb_len ||
 * keyblock (docs/PROTOCOL.md 4 explains why), so a refused upload need not
 * be read further.
 */
#include <string.h>

#include "apr_strings.h"
#include "http_protocol.h"
#include "http_request.h"

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_multipart.h"
#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_db.h"
#include "mod_kmdc_http.h"
#include "mod_kmdc_metrics.h"

#define ENVELOPE_TYPE "application/vnd.kmdc.envelope"
#define PREFIX_HDR (KMDC_HEADER_LEN + 4)
#define BATCH_BYTES (4u << 20)           /* upload rows of about 4 MiB */
#define READ_BYTES (64u * 1024)          /* bytes asked of the input filters */

enum mode {
    MODE_OPEN,      /* the reader decrypts and re-encrypts */
    MODE_RETRY,     /* seq below up_next: only hash and compare to the receipt */
    MODE_STOP       /* an answer is decided; stop reading */
};

struct answer {
    int set;
    int status;
    const char *code;
    char message[200];
    int spend;              /* refused after authentication: spend the counter */
};

struct rcpt {
    uint64_t serial;
    char address[KMDC_ADDR_MAX + 1];
};

struct intake {
    request_rec *r;
    const kmdc_srv_conf *sc;
    kmdc_db *db;
    enum mode mode;
    struct answer ans;

    /* envelope bytes and their hashes */
    kmdc_open *op;
    kmdc_sha256_ctx *sha_full, *sha_prefix;
    uint64_t offset, prefix_len, max_len;
    uint8_t first[PREFIX_HDR];
    uint8_t prefix_hash[32];
    uint8_t full_hash[32];               /* set by publish() */
    int prefix_done;

    /* the sender (step 1) */
    int have_header;
    uint64_t serial, seq;
    char sender[KMDC_ADDR_MAX + 1];
    uint8_t ck_next[32];                 /* CK_{seq+1} of the up chain */
    int have_ck;

    /* a retry (seq below up_next) */
    int have_receipt;
    uint8_t receipt_hash[32];
    int receipt_scope_keyblock;
    int receipt_status;
    char *receipt_answer;
    uint64_t receipt_message;

    /* after authentication (steps 1-2) */
    kmdc_meta meta;
    struct rcpt rcpt[KMDC_RCPT_MAX];
    size_t n_rcpt;
    int slot_held;
    int32_t slot_key, slot;
    int64_t upload_id;
    uint8_t dek[KMDC_DEK_LEN];
    kmdc_payload_enc *enc;
    uint8_t *batch;
    size_t batch_len;
    int batch_idx;

    /* multipart */
    kmdc_mp *mp;
    int part;                            /* 0 none, 1 envelope, 2 serial */
    int saw_envelope, saw_serial;
    char serial_text[17];
    size_t serial_len;
    uint64_t serial_part;
};

/* ---- answers -------------------------------------------------------------- */

__attribute__((format(printf, 5, 6))) static kmdc_status
refuse(struct intake *in, int status, const char *code, int spend, const char *fmt, ...)
{
    va_list ap;

    if (!in->ans.set) {
        in->ans.set = 1;
        in->ans.status = status;
        in->ans.code = code;
        in->ans.spend = spend;
        va_start(ap, fmt);
        apr_vsnprintf(in->ans.message, sizeof(in->ans.message), fmt, ap);
        va_end(ap);
    }
    in->mode = MODE_STOP;
    return KMDC_ERR_ARG;                 /* aborts the reader; ans says why */
}

static kmdc_status
rejected(struct intake *in)
{
    return refuse(in, HTTP_FORBIDDEN, "rejected", 0, "the envelope was rejected");
}

static kmdc_status
unavailable(struct intake *in)
{
    return refuse(in, HTTP_SERVICE_UNAVAILABLE, "unavailable", 0,
                  "the database is unavailable; send the same envelope again later");
}

static char *
answer_json(apr_pool_t *p, const char *code, const char *message)
{
    json_t *o = json_pack("{s:s, s:s}", "error", code, "message", message);
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    char *copy = s ? apr_pstrdup(p, s) : NULL;

    free(s);
    json_decref(o);
    return copy;
}

/* Answer with a stored JSON text (a receipt) and status. */
static int
answer_text(request_rec *r, int status, const char *text, uint64_t message)
{
    json_error_t jerr;
    json_t *o = json_loads(text, 0, &jerr);

    if (o == NULL)
        return kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal",
                               "a stored receipt is unreadable");
    if (message != 0)
        apr_table_setn(r->headers_out, "Location",
                       apr_psprintf(r->pool, "%s/messages/%016" APR_UINT64_T_HEX_FMT,
                                    kmdc_conf_find_base(r) ? kmdc_conf_find_base(r)->path : "",
                                    (apr_uint64_t)message));
    return kmdc_http_json(r, status, o);
}

/* ---- store: the SQL of the intake ----------------------------------------- */

static uint64_t
now_ms(void)
{
    return (uint64_t)(apr_time_now() / 1000);
}

static char *
hex16(apr_pool_t *p, uint64_t v)
{
    char *s = apr_palloc(p, 17);

    kmdc_serial_format(s, v);
    return s;
}

/* Step 1: the sender's card, without a lock. */
static kmdc_status
store_load_sender(struct intake *in, uint8_t mk[32])
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    const unsigned char *wrapped;
    size_t wlen;
    int64_t up_next;
    const char *status, *addr;
    uint8_t ck[32];
    kmdc_err err;
    kmdc_status rc;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)in->serial);
    if (kmdc_db_exec(in->db, "SELECT status, address, up_next, up_chain FROM cards "
                     "WHERE serial = $1", &pp, 1, &res) != KMDC_DB_OK) {
        kmdc_db_clear(in->db, res);
        return unavailable(in);
    }
    if (PQntuples(res) != 1) {
        kmdc_db_clear(in->db, res);
        return rejected(in);
    }
    status = PQgetvalue(res, 0, 0);
    addr = PQgetvalue(res, 0, 1);
    if (strcmp(status, "active") != 0 || !kmdc_db_get_int64(res, 0, 2, &up_next) ||
        !kmdc_db_get_bytea(res, 0, 3, &wrapped, &wlen) ||
        strlen(addr) > KMDC_ADDR_MAX) {
        kmdc_db_clear(in->db, res);
        return rejected(in);
    }
    apr_cpystrn(in->sender, addr, sizeof(in->sender));

    if (in->seq < (uint64_t)up_next) {
        /* a spent counter: the answer comes from its receipt */
        kmdc_db_clear(in->db, res);
        kmdc_db_params_init(&pp);
        kmdc_db_param_int8(&pp, (int64_t)in->serial);
        kmdc_db_param_int8(&pp, (int64_t)in->seq);
        if (kmdc_db_exec(in->db, "SELECT envelope_sha256, hash_scope, http_status, answer, "
                         "coalesce(message_id, 0) FROM receipts WHERE serial = $1 AND seq = $2",
                         &pp, 1, &res) != KMDC_DB_OK) {
            kmdc_db_clear(in->db, res);
            return unavailable(in);
        }
        if (PQntuples(res) == 1) {
            const unsigned char *h;
            size_t hl;
            int64_t st, msg;
            if (kmdc_db_get_bytea(res, 0, 0, &h, &hl) && hl == 32 &&
                kmdc_db_get_int64(res, 0, 2, &st) && kmdc_db_get_int64(res, 0, 4, &msg)) {
                memcpy(in->receipt_hash, h, 32);
                in->receipt_scope_keyblock = strcmp(PQgetvalue(res, 0, 1), "keyblock") == 0;
                in->receipt_status = (int)st;
                in->receipt_answer = apr_pstrdup(in->r->pool, PQgetvalue(res, 0, 3));
                in->receipt_message = (uint64_t)msg;
                in->have_receipt = 1;
            }
        }
        kmdc_db_clear(in->db, res);
        if (!in->have_receipt)
            return rejected(in);
        in->mode = MODE_RETRY;
        return KMDC_ERR_ARG;             /* stop the reader; keep hashing */
    }
    if (in->seq - (uint64_t)up_next >= (uint64_t)in->sc->seq_window ||
        in->seq >= KMDC_U63_MAX) {
        kmdc_db_clear(in->db, res);
        return rejected(in);
    }
    rc = kmdc_keyring_unwrap(in->sc->keys, in->serial, KMDC_FIELD_UP_CHAIN,
                          (uint64_t)up_next, wrapped, wlen, ck, &err);
    kmdc_db_clear(in->db, res);
    if (rc != KMDC_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, in->r,
                      "send: card %016" APR_UINT64_T_HEX_FMT ": cannot unwrap the up chain: %s",
                      (apr_uint64_t)in->serial, err.msg);
        kmdc_wipe(ck, sizeof(ck));
        return refuse(in, HTTP_INTERNAL_SERVER_ERROR, "internal", 0,
                      "the card's keys cannot be read at the datacenter");
    }
    if ((rc = kmdc_chain_seek(ck, (uint64_t)up_next, in->seq, mk, &err)) == KMDC_OK)
        rc = kmdc_chain_step(NULL, in->ck_next, ck, &err);
    kmdc_wipe(ck, sizeof(ck));
    if (rc != KMDC_OK)
        return refuse(in, HTTP_INTERNAL_SERVER_ERROR, "internal", 0, "key derivation failed");
    in->have_ck = 1;
    return KMDC_OK;
}

/* At most KmdcMaxUploadsPerCard uploads of one card at once, across every
 * child and front-end: one session advisory lock per slot. */
static kmdc_status
store_take_slot(struct intake *in)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    int32_t s;

    in->slot_key = (int32_t)(uint32_t)(in->serial ^ (in->serial >> 32));
    for (s = 0; s < in->sc->max_uploads_per_card; s++) {
        int got;
        kmdc_db_params_init(&pp);
        kmdc_db_param_int4(&pp, in->slot_key);
        kmdc_db_param_int4(&pp, s);
        if (kmdc_db_exec(in->db, "SELECT pg_try_advisory_lock($1, $2)", &pp, 0, &res)
            != KMDC_DB_OK) {
            kmdc_db_clear(in->db, res);
            return unavailable(in);
        }
        got = PQgetvalue(res, 0, 0)[0] == 't';
        kmdc_db_clear(in->db, res);
        if (got) {
            in->slot_held = 1;
            in->slot = s;
            return KMDC_OK;
        }
    }
    return refuse(in, HTTP_TOO_MANY_REQUESTS, "too_many_uploads", 0,
                  "this card has %d uploads in progress; try again when one finished",
                  in->sc->max_uploads_per_card);
}

static void
store_release_slot(struct intake *in)
{
    kmdc_db_params pp;
    PGresult *res = NULL;

    if (!in->slot_held)
        return;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int4(&pp, in->slot_key);
    kmdc_db_param_int4(&pp, in->slot);
    if (kmdc_db_exec(in->db, "SELECT pg_advisory_unlock($1, $2)", &pp, 0, &res) != KMDC_DB_OK)
        kmdc_db_invalidate(in->db);     /* a fresh session holds no lock */
    kmdc_db_clear(in->db, res);
    in->slot_held = 0;
}

/* Every RCPT must name an active card; recipients come back in RCPT order. */
static kmdc_status
store_resolve_recipients(struct intake *in)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    size_t i;
    int row;
    char *list = "{";

    for (i = 0; i < in->meta.n_rcpt; i++)   /* addresses are [a-z0-9._-]: safe in an array literal */
        list = apr_pstrcat(in->r->pool, list, i ? "," : "", in->meta.rcpt[i], NULL);
    list = apr_pstrcat(in->r->pool, list, "}", NULL);
    kmdc_db_params_init(&pp);
    kmdc_db_param_text(&pp, list);
    if (kmdc_db_exec(in->db, "SELECT serial, address FROM cards "
                     "WHERE address = ANY($1::text[]) AND status = 'active'",
                     &pp, 0, &res) != KMDC_DB_OK) {
        kmdc_db_clear(in->db, res);
        return unavailable(in);
    }
    in->n_rcpt = 0;
    for (i = 0; i < in->meta.n_rcpt; i++) {
        for (row = 0; row < PQntuples(res); row++) {
            int64_t s;
            if (strcmp(PQgetvalue(res, row, 1), in->meta.rcpt[i]) == 0 &&
                kmdc_db_get_int64(res, row, 0, &s)) {
                in->rcpt[in->n_rcpt].serial = (uint64_t)s;
                apr_cpystrn(in->rcpt[in->n_rcpt].address, in->meta.rcpt[i],
                            sizeof(in->rcpt[0].address));
                in->n_rcpt++;
                break;
            }
        }
        if (row == PQntuples(res)) {
            kmdc_db_clear(in->db, res);
            return refuse(in, HTTP_NOT_FOUND, "unknown_recipient", 1,
                          "recipient %" APR_SIZE_T_FMT " of %" APR_SIZE_T_FMT " is unknown or not active", i + 1,
                          in->meta.n_rcpt);
        }
    }
    kmdc_db_clear(in->db, res);
    return KMDC_OK;
}

/* KmdcMailboxQuota: pending deliveries and bytes of every recipient. */
static kmdc_status
store_check_quota(struct intake *in)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    uint64_t add = kmdc_payload_len(in->meta.size) + PREFIX_HDR + KMDC_KB_MAX;
    size_t i;

    for (i = 0; i < in->n_rcpt; i++) {
        int64_t count, bytes;
        kmdc_db_params_init(&pp);
        kmdc_db_param_int8(&pp, (int64_t)in->rcpt[i].serial);
        if (kmdc_db_exec(in->db,
                         "SELECT count(*), coalesce(sum(octet_length(d.head) + m.payload_len), 0) "
                         "FROM deliveries d JOIN messages m ON m.id = d.message_id "
                         "WHERE d.recipient = $1 AND d.state = 'queued'", &pp, 0, &res)
            != KMDC_DB_OK || !kmdc_db_get_int64(res, 0, 0, &count) ||
            !kmdc_db_get_int64(res, 0, 1, &bytes)) {
            kmdc_db_clear(in->db, res);
            return unavailable(in);
        }
        kmdc_db_clear(in->db, res);
        if (count + 1 > in->sc->mailbox_quota_count ||
            (uint64_t)bytes + add > (uint64_t)in->sc->mailbox_quota_bytes)
            return refuse(in, HTTP_INSUFFICIENT_STORAGE, "mailbox_full", 1,
                          "the mailbox of recipient %" APR_SIZE_T_FMT " is full", i + 1);
    }
    return KMDC_OK;
}

static kmdc_status
store_create_upload(struct intake *in)
{
    kmdc_db_params pp;
    PGresult *res = NULL;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)in->meta.size);
    if (kmdc_db_exec(in->db, "INSERT INTO uploads (size) VALUES ($1) RETURNING id",
                     &pp, 0, &res) != KMDC_DB_OK ||
        !kmdc_db_get_int64(res, 0, 0, &in->upload_id)) {
        kmdc_db_clear(in->db, res);
        in->upload_id = 0;
        return unavailable(in);
    }
    kmdc_db_clear(in->db, res);
    return KMDC_OK;
}

static kmdc_status
store_flush_batch(struct intake *in)
{
    kmdc_db_params pp;
    PGresult *res = NULL;

    if (in->batch_len == 0)
        return KMDC_OK;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, in->upload_id);
    kmdc_db_param_int4(&pp, in->batch_idx);
    kmdc_db_param_bytea(&pp, in->batch, in->batch_len);
    if (kmdc_db_exec(in->db, "INSERT INTO upload_chunks (upload_id, idx, data) "
                     "VALUES ($1, $2, $3)", &pp, 0, &res) != KMDC_DB_OK) {
        kmdc_db_clear(in->db, res);
        return unavailable(in);
    }
    kmdc_db_clear(in->db, res);
    in->batch_idx++;
    in->batch_len = 0;
    return KMDC_OK;
}

static void
store_drop_upload(struct intake *in)
{
    kmdc_db_params pp;
    PGresult *res = NULL;

    if (in->upload_id == 0 || in->db == NULL)
        return;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, in->upload_id);
    /* a failure leaves an orphan for `kmdcadm purge` */
    (void)kmdc_db_exec(in->db, "DELETE FROM uploads WHERE id = $1", &pp, 0, &res);
    kmdc_db_clear(in->db, res);
    in->upload_id = 0;
}

/* Lock the sender row; 1 when its counter is still ours to spend. */
static int
lock_sender(struct intake *in, kmdc_db_rc *dbrc)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    int64_t up_next = 0;
    int ok;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)in->serial);
    *dbrc = kmdc_db_exec(in->db, "SELECT up_next, status FROM cards WHERE serial = $1 "
                         "FOR NO KEY UPDATE", &pp, 0, &res);
    ok = *dbrc == KMDC_DB_OK && PQntuples(res) == 1 &&
         kmdc_db_get_int64(res, 0, 0, &up_next) && (uint64_t)up_next <= in->seq;
    kmdc_db_clear(in->db, res);
    return ok;
}

static kmdc_db_rc
advance_sender(struct intake *in)
{
    uint8_t wrapped[KMDC_WRAPPED_LEN];
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc rc;

    if (kmdc_keyring_wrap(in->sc->keys, in->serial, KMDC_FIELD_UP_CHAIN, in->seq + 1,
                       in->ck_next, wrapped, NULL) != KMDC_OK)
        return KMDC_DB_ERROR;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)(in->seq + 1));
    kmdc_db_param_bytea(&pp, wrapped, sizeof(wrapped));
    kmdc_db_param_int8(&pp, (int64_t)in->serial);
    rc = kmdc_db_exec(in->db, "UPDATE cards SET up_next = $1, up_chain = $2 "
                      "WHERE serial = $3", &pp, 0, &res);
    kmdc_db_clear(in->db, res);
    return rc;
}

static kmdc_db_rc
insert_receipt(struct intake *in, const uint8_t hash[32], int keyblock_scope,
               int status, const char *answer, uint64_t message)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_db_rc rc;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)in->serial);
    kmdc_db_param_int8(&pp, (int64_t)in->seq);
    kmdc_db_param_bytea(&pp, hash, 32);
    kmdc_db_param_text(&pp, keyblock_scope ? "keyblock" : "envelope");
    kmdc_db_param_int4(&pp, status);
    kmdc_db_param_text(&pp, answer);
    if (message)
        kmdc_db_param_int8(&pp, (int64_t)message);
    else
        kmdc_db_param_null(&pp);
    rc = kmdc_db_exec(in->db, "INSERT INTO receipts (serial, seq, envelope_sha256, hash_scope, "
                      "http_status, answer, message_id) VALUES ($1, $2, $3, $4, $5, $6, $7)",
                      &pp, 0, &res);
    kmdc_db_clear(in->db, res);
    return rc;
}

/*
 * A refusal after authentication: advance the sender's chain past seq and
 * record the answer in a receipt, in one transaction.  If that cannot be
 * done, the answer becomes 503 and nothing was spent.
 */
static void
spend(struct intake *in)
{
    kmdc_db_rc rc;
    char *text = answer_json(in->r->pool, in->ans.code, in->ans.message);

    if (kmdc_db_command(in->db, "BEGIN") != KMDC_DB_OK)
        goto unavailable;
    if (!lock_sender(in, &rc)) {
        kmdc_db_rollback(in->db);
        if (rc != KMDC_DB_OK)
            goto unavailable;
        return;                          /* a concurrent retry spent it */
    }
    if (advance_sender(in) != KMDC_DB_OK ||
        insert_receipt(in, in->prefix_hash, 1, in->ans.status, text, 0) != KMDC_DB_OK ||
        kmdc_db_audit(in->db, in->serial, "send.refused",
              apr_psprintf(in->r->pool, "{\"seq\":%" APR_UINT64_T_FMT ",\"error\":\"%s\"}",
                           (apr_uint64_t)in->seq, in->ans.code)) != KMDC_DB_OK ||
        kmdc_db_command(in->db, "COMMIT") != KMDC_DB_OK) {
        kmdc_db_rollback(in->db);
        goto unavailable;
    }
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, in->r,
                  "send: card %016" APR_UINT64_T_HEX_FMT " seq %" APR_UINT64_T_FMT
                  " refused after authentication: %s (counter spent)",
                  (apr_uint64_t)in->serial, (apr_uint64_t)in->seq, in->ans.code);
    return;
unavailable:
    in->ans.status = HTTP_SERVICE_UNAVAILABLE;
    in->ans.code = "unavailable";
    apr_cpystrn(in->ans.message, "the database is unavailable; send the same envelope again later",
                sizeof(in->ans.message));
    in->ans.spend = 0;
}

/* One recipient's delivery: take its down counter, seal its keyblock. */
static kmdc_status
publish_delivery(struct intake *in, const struct rcpt *rc, uint64_t msgid,
                 uint64_t rcvd, int64_t down_next, const unsigned char *wrapped,
                 size_t wlen)
{
    uint8_t ck[32], mk[32], wrapped_next[KMDC_WRAPPED_LEN];
    uint8_t head[KMDC_HEADER_LEN + KMDC_KB_FRAME_MAX];
    kmdc_header h;
    kmdc_meta md;
    kmdc_db_params pp;
    PGresult *res = NULL;
    size_t kblen = 0;
    kmdc_err err;
    kmdc_status st = KMDC_ERR_INTERNAL;

    if ((uint64_t)down_next >= KMDC_U63_MAX)
        goto out;
    if (kmdc_keyring_unwrap(in->sc->keys, rc->serial, KMDC_FIELD_DOWN_CHAIN,
                         (uint64_t)down_next, wrapped, wlen, ck, &err) != KMDC_OK) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, in->r,
                      "send: card %016" APR_UINT64_T_HEX_FMT ": cannot unwrap the down chain: %s",
                      (apr_uint64_t)rc->serial, err.msg);
        goto out;
    }
    kmdc_meta_copy_shared(&md, &in->meta);
    md.has_fromserial = md.has_msgid = md.has_rcvd = 1;
    md.fromserial = in->serial;
    md.msgid = msgid;
    md.rcvd = rcvd;
    if (kmdc_chain_step(mk, ck, ck, &err) != KMDC_OK ||
        kmdc_keyring_wrap(in->sc->keys, rc->serial, KMDC_FIELD_DOWN_CHAIN,
                       (uint64_t)down_next + 1, ck, wrapped_next, &err) != KMDC_OK ||
        kmdc_meta_set_from(&md, in->sender, strlen(in->sender), &err) != KMDC_OK ||
        kmdc_header_new(&h, KMDC_DIR_DOWN, rc->serial, (uint64_t)down_next, &err) != KMDC_OK ||
        kmdc_header_new_salt(&h, &err) != KMDC_OK ||
        kmdc_header_encode(head, &h, &err) != KMDC_OK ||
        kmdc_keyblock_seal(head + KMDC_HEADER_LEN, sizeof(head) - KMDC_HEADER_LEN, &kblen,
                           head, mk, in->dek, &md, &err) != KMDC_OK)
        goto out;

    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)msgid);
    kmdc_db_param_int8(&pp, (int64_t)rc->serial);
    kmdc_db_param_int8(&pp, down_next);
    kmdc_db_param_bytea(&pp, head, KMDC_HEADER_LEN + kblen);
    kmdc_db_param_int8(&pp, in->sc->mailbox_ttl);
    if (kmdc_db_exec(in->db, "INSERT INTO deliveries (message_id, recipient, seq, head, "
                     "expires_at) VALUES ($1, $2, $3, $4, now() + $5::bigint * interval '1 second')",
                     &pp, 0, &res) != KMDC_DB_OK)
        goto out;
    kmdc_db_clear(in->db, res);
    res = NULL;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, down_next + 1);
    kmdc_db_param_bytea(&pp, wrapped_next, sizeof(wrapped_next));
    kmdc_db_param_int8(&pp, (int64_t)rc->serial);
    if (kmdc_db_exec(in->db, "UPDATE cards SET down_next = $1, down_chain = $2 "
                     "WHERE serial = $3", &pp, 0, &res) != KMDC_DB_OK)
        goto out;
    st = KMDC_OK;
out:
    kmdc_db_clear(in->db, res);
    kmdc_wipe(ck, sizeof(ck));
    kmdc_wipe(mk, sizeof(mk));
    kmdc_wipe(&md, sizeof(md));
    return st;
}

/*
 * Step 3: publish in one short transaction at READ COMMITTED.  Answers
 * through in->ans on any refusal; on success answers 201 itself.
 */
static int
publish(struct intake *in)
{
    request_rec *r = in->r;
    kmdc_db_params pp;
    PGresult *res = NULL;
    uint8_t *full = in->full_hash;
    uint64_t msgid = 0, rcvd = now_ms();
    const char *ids = "{";
    char *text;
    json_t *body;
    size_t i;
    int row, nrows;
    kmdc_db_rc dbrc;

    if (kmdc_sha256_final(in->sha_full, full, NULL) != KMDC_OK ||
        kmdc_random_u63(&msgid, NULL) != KMDC_OK) {
        refuse(in, HTTP_INTERNAL_SERVER_ERROR, "internal", 0, "internal error");
        return DECLINED;
    }
    if (kmdc_db_command(in->db, "BEGIN") != KMDC_DB_OK) {
        unavailable(in);
        return DECLINED;
    }
    /* lock the sender and every recipient in serial order */
    ids = apr_psprintf(r->pool, "{%" APR_UINT64_T_FMT, (apr_uint64_t)in->serial);
    for (i = 0; i < in->n_rcpt; i++)
        ids = apr_psprintf(r->pool, "%s,%" APR_UINT64_T_FMT, ids, (apr_uint64_t)in->rcpt[i].serial);
    ids = apr_pstrcat(r->pool, ids, "}", NULL);
    kmdc_db_params_init(&pp);
    kmdc_db_param_text(&pp, ids);
    if (kmdc_db_exec(in->db, "SELECT serial, status, up_next, down_next, down_chain FROM cards "
                     "WHERE serial = ANY($1::bigint[]) ORDER BY serial FOR NO KEY UPDATE",
                     &pp, 1, &res) != KMDC_DB_OK)
        goto unavailable;
    nrows = PQntuples(res);
    for (row = 0; row < nrows; row++) {
        int64_t s, up_next;
        if (!kmdc_db_get_int64(res, row, 0, &s) || !kmdc_db_get_int64(res, row, 2, &up_next))
            goto unavailable;
        if ((uint64_t)s == in->serial) {
            if ((uint64_t)up_next > in->seq) {
                /* a byte-identical retry published first: answer from its receipt */
                kmdc_db_clear(in->db, res);
                kmdc_db_rollback(in->db);
                refuse(in, HTTP_FORBIDDEN, "rejected", 0, "the envelope was rejected");
                in->mode = MODE_RETRY;
                return DONE;
            }
            if (PQgetlength(res, row, 1) != 6 || memcmp(PQgetvalue(res, row, 1), "active", 6) != 0) {
                kmdc_db_clear(in->db, res);
                kmdc_db_rollback(in->db);
                rejected(in);
                return DECLINED;
            }
        }
    }
    /* every recipient still active?  (the sender's row may be one of them) */
    for (i = 0; i < in->n_rcpt; i++) {
        for (row = 0; row < nrows; row++) {
            int64_t s;
            kmdc_db_get_int64(res, row, 0, &s);
            if ((uint64_t)s == in->rcpt[i].serial && PQgetlength(res, row, 1) == 6 &&
                memcmp(PQgetvalue(res, row, 1), "active", 6) == 0)
                break;
        }
        if (row == nrows) {
            kmdc_db_clear(in->db, res);
            kmdc_db_rollback(in->db);
            refuse(in, HTTP_NOT_FOUND, "unknown_recipient", 1,
                   "recipient %" APR_SIZE_T_FMT " of %" APR_SIZE_T_FMT " is unknown or not active", i + 1, in->n_rcpt);
            return DECLINED;
        }
    }
    kmdc_db_clear(in->db, res);
    res = NULL;
    /* the quota again, now that the recipients' rows are locked */
    if (store_check_quota(in) != KMDC_OK) {
        kmdc_db_rollback(in->db);
        return DECLINED;
    }

    /* the message, the sender's chain */
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)msgid);
    kmdc_db_param_int8(&pp, (int64_t)in->serial);
    kmdc_db_param_int8(&pp, (int64_t)in->seq);
    kmdc_db_param_int8(&pp, in->upload_id);
    kmdc_db_param_int8(&pp, (int64_t)in->meta.size);
    kmdc_db_param_int8(&pp, (int64_t)kmdc_payload_len(in->meta.size));
    if (kmdc_db_exec(in->db, "INSERT INTO messages (id, sender, sender_seq, upload_id, size, "
                     "payload_len) VALUES ($1, $2, $3, $4, $5, $6)", &pp, 0, &res) != KMDC_DB_OK)
        goto unavailable;
    kmdc_db_clear(in->db, res);
    res = NULL;
    if (advance_sender(in) != KMDC_DB_OK)
        goto unavailable;

    /* each recipient: read its down chain under the lock, then deliver */
    for (i = 0; i < in->n_rcpt; i++) {
        const unsigned char *w;
        size_t wl;
        int64_t down_next;

        kmdc_db_params_init(&pp);
        kmdc_db_param_int8(&pp, (int64_t)in->rcpt[i].serial);
        if (kmdc_db_exec(in->db, "SELECT down_next, down_chain FROM cards WHERE serial = $1",
                         &pp, 1, &res) != KMDC_DB_OK || PQntuples(res) != 1 ||
            !kmdc_db_get_int64(res, 0, 0, &down_next) ||
            !kmdc_db_get_bytea(res, 0, 1, &w, &wl) ||
            publish_delivery(in, &in->rcpt[i], msgid, rcvd, down_next, w, wl) != KMDC_OK)
            goto unavailable;
        kmdc_db_clear(in->db, res);
        res = NULL;
    }
    body = json_pack("{s:s, s:i}", "message", hex16(r->pool, msgid),
                     "deliveries", (json_int_t)in->n_rcpt);
    text = json_dumps(body, JSON_COMPACT);
    if (text == NULL ||
        insert_receipt(in, full, 0, HTTP_OK, text, msgid) != KMDC_DB_OK ||
        kmdc_db_audit(in->db, in->serial, "send",
              apr_psprintf(r->pool, "{\"seq\":%" APR_UINT64_T_FMT ",\"message\":\"%s\","
                           "\"deliveries\":%" APR_SIZE_T_FMT "}", (apr_uint64_t)in->seq,
                           hex16(r->pool, msgid), in->n_rcpt)) != KMDC_DB_OK) {
        free(text);
        json_decref(body);
        goto unavailable;
    }
    free(text);
    for (i = 0; i < in->n_rcpt; i++) {
        kmdc_db_params_init(&pp);
        kmdc_db_param_text(&pp, hex16(r->pool, in->rcpt[i].serial));
        dbrc = kmdc_db_exec(in->db, "SELECT pg_notify('kmdc_mailbox', $1)", &pp, 0, &res);
        kmdc_db_clear(in->db, res);
        res = NULL;
        if (dbrc != KMDC_DB_OK) {
            json_decref(body);
            goto unavailable;
        }
    }
    if (kmdc_db_command(in->db, "COMMIT") != KMDC_DB_OK) {
        /* the outcome is unknown to us; the client retries byte for byte and
         * the receipt (if it committed) answers */
        json_decref(body);
        kmdc_db_invalidate(in->db);
        unavailable(in);
        return DECLINED;
    }
    in->upload_id = 0;                   /* it belongs to the message now */
    ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                  "send: card %016" APR_UINT64_T_HEX_FMT " seq %" APR_UINT64_T_FMT
                  " published message %016" APR_UINT64_T_HEX_FMT " to %" APR_SIZE_T_FMT " recipient(s)",
                  (apr_uint64_t)in->serial, (apr_uint64_t)in->seq, (apr_uint64_t)msgid,
                  in->n_rcpt);
    apr_table_setn(r->headers_out, "Location",
                   apr_psprintf(r->pool, "%s/messages/%s",
                                kmdc_conf_find_base(r) ? kmdc_conf_find_base(r)->path : "",
                                hex16(r->pool, msgid)));
    return kmdc_http_json(r, HTTP_CREATED, body);

unavailable:
    kmdc_db_clear(in->db, res);
    kmdc_db_rollback(in->db);
    unavailable(in);
    return DECLINED;
}

/* ---- the envelope reader's callbacks ------------------------------------- */

static kmdc_status
on_header(void *arg, const kmdc_header *h, uint8_t mk_out[32], kmdc_err *err)
{
    struct intake *in = arg;

    (void)err;
    in->serial = h->serial;
    in->seq = h->seq;
    in->have_header = 1;
    if (in->saw_serial && in->serial_part != h->serial)
        return refuse(in, HTTP_BAD_REQUEST, "bad_multipart", 0,
                      "the serial part does not match the envelope");
    return store_load_sender(in, mk_out);
}

static kmdc_status
on_meta(void *arg, const kmdc_header *h, const kmdc_meta *m, kmdc_err *err)
{
    struct intake *in = arg;
    uint64_t now = now_ms(), age_ms = (uint64_t)in->sc->envelope_max_age * 1000;
    kmdc_status rc;

    (void)h;
    memcpy(&in->meta, m, sizeof(in->meta));
    if ((m->sent > now ? m->sent - now : now - m->sent) > age_ms)
        return refuse(in, HTTP_BAD_REQUEST, "too_old", 1,
                      "the envelope's SENT time is more than %" APR_INT64_T_FMT
                      " s from the datacenter's clock", in->sc->envelope_max_age);
    if (m->n_rcpt > (size_t)in->sc->max_recipients)
        return refuse(in, HTTP_REQUEST_ENTITY_TOO_LARGE, "too_large", 1,
                      "%" APR_SIZE_T_FMT " recipients; at most %d are allowed", m->n_rcpt,
                      in->sc->max_recipients);
    if (m->size > (uint64_t)in->sc->max_document_size)
        return refuse(in, HTTP_REQUEST_ENTITY_TOO_LARGE, "too_large", 1,
                      "the document is larger than %" APR_INT64_T_FMT " bytes",
                      in->sc->max_document_size);
    if ((rc = store_take_slot(in)) != KMDC_OK ||
        (rc = store_resolve_recipients(in)) != KMDC_OK ||
        (rc = store_check_quota(in)) != KMDC_OK ||
        (rc = store_create_upload(in)) != KMDC_OK)
        return rc;
    if ((rc = kmdc_random(in->dek, sizeof(in->dek), err)) != KMDC_OK ||
        (in->enc = kmdc_payload_enc_new(in->dek, m->size, err)) == NULL)
        return refuse(in, HTTP_INTERNAL_SERVER_ERROR, "internal", 0, "internal error");
    return KMDC_OK;
}

static kmdc_status
emit_batch(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    struct intake *in = arg;

    (void)err;
    if (in->batch_len + len > BATCH_BYTES + KMDC_CHUNK_CT_MAX)
        return refuse(in, HTTP_INTERNAL_SERVER_ERROR, "internal", 0, "internal error");
    memcpy(in->batch + in->batch_len, p, len);
    in->batch_len += len;
    if (in->batch_len >= BATCH_BYTES)
        return store_flush_batch(in);
    return KMDC_OK;
}

static kmdc_status
on_data(void *arg, const uint8_t *pt, size_t len, kmdc_err *err)
{
    struct intake *in = arg;

    return kmdc_payload_enc_update(in->enc, pt, len, emit_batch, in, err);
}

/* ---- feeding envelope bytes ------------------------------------------------ */

/* Hash header || kb_len || keyblock separately (the refused-receipt hash). */
static void
hash_prefix(struct intake *in, const uint8_t *p, size_t len)
{
    uint64_t off = in->offset;

    while (len > 0 && !in->prefix_done) {
        size_t take;
        if (off < PREFIX_HDR) {
            take = PREFIX_HDR - (size_t)off < len ? PREFIX_HDR - (size_t)off : len;
            memcpy(in->first + off, p, take);
        } else {
            uint64_t left = in->prefix_len - off;
            take = left < len ? (size_t)left : len;
        }
        kmdc_sha256_update(in->sha_prefix, p, take, NULL);
        off += take;
        p += take;
        len -= take;
        if (off == PREFIX_HDR && in->prefix_len == 0) {
            uint32_t kb = kmdc_get_u32(in->first + KMDC_HEADER_LEN);
            in->prefix_len = (kb >= KMDC_KB_MIN && kb <= KMDC_KB_MAX)
                                 ? PREFIX_HDR + (uint64_t)kb : UINT64_MAX;
        }
        if (in->prefix_len != 0 && off == in->prefix_len) {
            kmdc_sha256_final(in->sha_prefix, in->prefix_hash, NULL);
            in->prefix_done = 1;
        }
    }
}

static void
classify_reader_error(struct intake *in, kmdc_status rc, const kmdc_err *err)
{
    if (in->ans.set || in->mode == MODE_RETRY)
        return;
    if (!kmdc_open_authenticated(in->op)) {
        if (rc == KMDC_ERR_AUTH)
            rejected(in);
        else if (rc == KMDC_ERR_TRUNCATED)
            refuse(in, HTTP_BAD_REQUEST, "incomplete", 0,
                   "the body ended before the envelope did; send it again");
        else
            refuse(in, HTTP_BAD_REQUEST, "bad_envelope", 0, "%s", err->msg);
        return;
    }
    switch (rc) {
    case KMDC_ERR_NAME:
        refuse(in, HTTP_BAD_REQUEST, "bad_name", 1, "the document name is not allowed");
        break;
    case KMDC_ERR_TRUNCATED:
        refuse(in, HTTP_BAD_REQUEST, "incomplete", 0,
               "the body ended before the envelope did; send it again");
        break;
    case KMDC_ERR_AUTH:
        refuse(in, HTTP_BAD_REQUEST, "protocol", 1, "a payload chunk failed to verify");
        break;
    case KMDC_ERR_INTERNAL:
        refuse(in, HTTP_INTERNAL_SERVER_ERROR, "internal", 0, "internal error");
        break;
    default:
        refuse(in, HTTP_BAD_REQUEST, "protocol", 1, "%s", err->msg);
        break;
    }
}

/* Decide a retry once enough is hashed.  Returns 1 when decided. */
static int
retry_decide(struct intake *in, int at_end)
{
    uint8_t full[32];

    if (in->receipt_scope_keyblock) {
        if (!in->prefix_done)
            return at_end ? (rejected(in), 1) : 0;
        if (!kmdc_ct_eq(in->prefix_hash, 32, in->receipt_hash, 32))
            return rejected(in), 1;
    } else {
        if (!at_end)
            return 0;
        kmdc_sha256_final(in->sha_full, full, NULL);
        if (!kmdc_ct_eq(full, 32, in->receipt_hash, 32))
            return rejected(in), 1;
    }
    in->ans.set = 1;
    in->ans.status = in->receipt_status == HTTP_CREATED ? HTTP_OK : in->receipt_status;
    in->ans.code = NULL;                 /* answer with the stored text */
    in->mode = MODE_STOP;
    return 1;
}

static kmdc_status
feed(struct intake *in, const uint8_t *p, size_t len)
{
    kmdc_err err;
    kmdc_status rc;

    if (in->mode == MODE_STOP)
        return KMDC_ERR_ARG;
    if (in->offset + len > in->max_len)
        return in->mode == MODE_RETRY ? rejected(in)
               : refuse(in, HTTP_REQUEST_ENTITY_TOO_LARGE, "too_large", 0,
                        "the upload is larger than the largest allowed envelope");
    kmdc_sha256_update(in->sha_full, p, len, NULL);
    hash_prefix(in, p, len);
    in->offset += len;
    if (in->mode == MODE_OPEN) {
        kmdc_err_clear(&err);
        rc = kmdc_open_update(in->op, p, len, &err);
        if (rc != KMDC_OK)
            classify_reader_error(in, rc, &err);
    }
    if (in->mode == MODE_RETRY && retry_decide(in, 0))
        return KMDC_ERR_ARG;
    return in->mode == MODE_STOP ? KMDC_ERR_ARG : KMDC_OK;
}

/* ---- multipart ------------------------------------------------------------- */

static kmdc_status
mp_begin(void *arg, const char *name, const char *filename, const char *ctype,
         kmdc_err *err)
{
    struct intake *in = arg;

    (void)filename;
    (void)ctype;
    (void)err;
    if (strcmp(name, "envelope") == 0 && !in->saw_envelope) {
        in->part = 1;
        in->saw_envelope = 1;
    } else if (strcmp(name, "serial") == 0 && !in->saw_serial) {
        in->part = 2;
        in->serial_len = 0;
    } else {
        return refuse(in, HTTP_BAD_REQUEST, "bad_multipart", 0,
                      "only one part 'envelope' and one part 'serial' are allowed");
    }
    return KMDC_OK;
}

static kmdc_status
mp_data(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    struct intake *in = arg;

    (void)err;
    if (in->part == 1)
        return feed(in, p, len);
    if (in->serial_len + len > 16)
        return refuse(in, HTTP_BAD_REQUEST, "bad_multipart",
                      0, "the serial part is not 16 hex digits");
    memcpy(in->serial_text + in->serial_len, p, len);
    in->serial_len += len;
    return KMDC_OK;
}

static kmdc_status
mp_end(void *arg, kmdc_err *err)
{
    struct intake *in = arg;

    (void)err;
    if (in->part == 2) {
        if (kmdc_serial_parse(&in->serial_part, in->serial_text, in->serial_len, NULL) != KMDC_OK)
            return refuse(in, HTTP_BAD_REQUEST, "bad_multipart", 0,
                          "the serial part is not 16 hex digits");
        in->saw_serial = 1;
        if (in->have_header && in->serial_part != in->serial)
            return refuse(in, HTTP_BAD_REQUEST, "bad_multipart", 0,
                          "the serial part does not match the envelope");
    }
    in->part = 0;
    return KMDC_OK;
}

/*
 * publish() found the counter spent by an upload that committed while this
 * one streamed (the client retried before the first answer came).  Repeat
 * that receipt's answer when it is for these same bytes, else reject.
 */
static void
concurrent_retry(struct intake *in)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    const unsigned char *h;
    size_t hl;
    int64_t st, msg;

    in->ans.set = 0;
    kmdc_db_params_init(&pp);
    kmdc_db_param_int8(&pp, (int64_t)in->serial);
    kmdc_db_param_int8(&pp, (int64_t)in->seq);
    if (kmdc_db_exec(in->db, "SELECT envelope_sha256, hash_scope, http_status, answer, "
                     "coalesce(message_id, 0) FROM receipts WHERE serial = $1 AND seq = $2",
                     &pp, 1, &res) == KMDC_DB_OK && PQntuples(res) == 1 &&
        kmdc_db_get_bytea(res, 0, 0, &h, &hl) && kmdc_db_get_int64(res, 0, 2, &st) &&
        kmdc_db_get_int64(res, 0, 4, &msg) &&
        kmdc_ct_eq(h, hl, strcmp(PQgetvalue(res, 0, 1), "keyblock") == 0
                              ? in->prefix_hash : in->full_hash, 32)) {
        in->receipt_status = (int)st;
        in->receipt_answer = apr_pstrdup(in->r->pool, PQgetvalue(res, 0, 3));
        in->receipt_message = (uint64_t)msg;
        in->ans.set = 1;
        in->ans.code = NULL;
        in->ans.status = st == HTTP_CREATED ? HTTP_OK : (int)st;
    } else {
        rejected(in);
    }
    kmdc_db_clear(in->db, res);
}

/* ---- the handler ------------------------------------------------------------ */

static void
intake_cleanup(struct intake *in)
{
    if (in->db != NULL) {
        store_release_slot(in);
        store_drop_upload(in);
        kmdc_db_release(in->db);
        in->db = NULL;
    }
    kmdc_open_free(in->op);
    kmdc_payload_enc_free(in->enc);
    kmdc_mp_free(in->mp);
    kmdc_sha256_free(in->sha_full);
    kmdc_sha256_free(in->sha_prefix);
    free(in->batch);
    kmdc_wipe(in->dek, sizeof(in->dek));
    kmdc_wipe(in->ck_next, sizeof(in->ck_next));
    kmdc_wipe(&in->meta, sizeof(in->meta));
    in->op = NULL;
    in->enc = NULL;
    in->mp = NULL;
    in->sha_full = in->sha_prefix = NULL;
    in->batch = NULL;
}

static apr_status_t
intake_pool_cleanup(void *data)
{
    intake_cleanup(data);
    return APR_SUCCESS;
}

/* Read the body to its end (or until an answer is decided). */
static int
read_body(struct intake *in)
{
    request_rec *r = in->r;
    apr_bucket_brigade *bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    int seen_eos = 0;

    while (!seen_eos && in->mode != MODE_STOP) {
        apr_bucket *b;
        apr_status_t rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES,
                                         APR_BLOCK_READ, READ_BYTES);
        if (rv != APR_SUCCESS) {
            int st = ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
            if (st == HTTP_REQUEST_ENTITY_TOO_LARGE)
                refuse(in, st, "too_large", 0, "the request body is larger than the server allows "
                       "(LimitRequestBody)");
            else
                refuse(in, HTTP_BAD_REQUEST, "incomplete",
                       0, "the body could not be read to its end; send it again");
            apr_brigade_cleanup(bb);
            return 0;
        }
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb) && in->mode != MODE_STOP;
             b = APR_BUCKET_NEXT(b)) {
            const char *data;
            apr_size_t len;
            kmdc_err err;
            kmdc_status rc;

            if (APR_BUCKET_IS_EOS(b)) {
                seen_eos = 1;
                break;
            }
            if (APR_BUCKET_IS_METADATA(b))
                continue;
            if (apr_bucket_read(b, &data, &len, APR_BLOCK_READ) != APR_SUCCESS) {
                refuse(in, HTTP_BAD_REQUEST, "incomplete", 0,
                       "the body could not be read to its end; send it again");
                break;
            }
            if (len == 0)
                continue;
            if (in->mp != NULL) {
                kmdc_err_clear(&err);
                rc = kmdc_mp_update(in->mp, data, len, &err);
                if (rc != KMDC_OK && !in->ans.set && in->mode != MODE_RETRY)
                    refuse(in, HTTP_BAD_REQUEST, "bad_multipart", 0, "%s", err.msg);
            } else {
                (void)feed(in, (const uint8_t *)data, len);
            }
        }
        apr_brigade_cleanup(bb);
    }
    return seen_eos;
}

static int handle_send(struct intake *in, kmdc_req *kr);

/*
 * The handler: run the intake, then release its resources at once (the
 * upload slot, an unpublished upload, the connection) rather than at the end
 * of the request, so the next request of this card finds them free.
 */
int
kmdc_handle_send(kmdc_req *kr)
{
    struct intake *in = apr_pcalloc(kr->r->pool, sizeof(*in));
    int status;

    apr_pool_cleanup_register(kr->r->pool, in, intake_pool_cleanup, apr_pool_cleanup_null);
    status = handle_send(in, kr);
    kmdc_metrics_send(kr->r->status, in->ans.set && !in->ans.code, in->ans.spend, in->offset, in->n_rcpt);
    intake_cleanup(in);
    return status;
}

static int
handle_send(struct intake *in, kmdc_req *kr)
{
    request_rec *r = kr->r;
    struct kmdc_open_cbs cbs = { on_header, on_meta, on_data };
    struct kmdc_mp_cbs mcbs = { mp_begin, mp_data, mp_end };
    const char *ct = apr_table_get(r->headers_in, "Content-Type");
    char boundary[KMDC_MP_BOUNDARY_MAX + 1];
    kmdc_mp_limits lim;
    kmdc_db_rc dbrc;
    kmdc_err err;
    int at_end, status;

    in->r = r;
    in->sc = kr->sc;
    in->mode = MODE_OPEN;
    in->max_len = PREFIX_HDR + KMDC_KB_MAX + kmdc_payload_len((uint64_t)kr->sc->max_document_size);

    if (ct != NULL && strncasecmp(ct, ENVELOPE_TYPE, sizeof(ENVELOPE_TYPE) - 1) == 0 &&
        (ct[sizeof(ENVELOPE_TYPE) - 1] == '\0' || ct[sizeof(ENVELOPE_TYPE) - 1] == ';')) {
        /* raw */
    } else if (ct != NULL && strncasecmp(ct, "multipart/form-data", 19) == 0) {
        kmdc_mp_limits_default(&lim);
        if (kmdc_mp_boundary_from_content_type(ct, boundary, &err) != KMDC_OK)
            return kmdc_http_error(r, HTTP_BAD_REQUEST, "bad_multipart", "%s", err.msg);
        if ((in->mp = kmdc_mp_new(boundary, &lim, &mcbs, in, &err)) == NULL)
            return kmdc_http_error(r, HTTP_BAD_REQUEST, "bad_multipart", "%s", err.msg);
    } else {
        return kmdc_http_error(r, HTTP_UNSUPPORTED_MEDIA_TYPE, "unsupported_media_type",
                               "send the envelope as " ENVELOPE_TYPE
                               " or as multipart/form-data with a part 'envelope'");
    }
    if ((dbrc = kmdc_db_acquire(r, &in->db)) != KMDC_DB_OK) {
        in->db = NULL;
        return kmdc_db_answer_unavailable(r, dbrc);
    }
    if ((in->sha_full = kmdc_sha256_new(NULL)) == NULL ||
        (in->sha_prefix = kmdc_sha256_new(NULL)) == NULL ||
        (in->batch = malloc(BATCH_BYTES + KMDC_CHUNK_CT_MAX)) == NULL ||
        (in->op = kmdc_open_new(KMDC_DIR_UP, &cbs, in, &err)) == NULL)
        return kmdc_http_error(r, HTTP_INTERNAL_SERVER_ERROR, "internal", "internal error");

    at_end = read_body(in);

    if (at_end && in->mp != NULL && in->mode != MODE_STOP) {
        kmdc_err_clear(&err);
        if (kmdc_mp_final(in->mp, &err) != KMDC_OK && !in->ans.set)
            refuse(in, HTTP_BAD_REQUEST, "bad_multipart", 0, "%s", err.msg);
        else if (!in->saw_envelope)
            refuse(in, HTTP_BAD_REQUEST, "bad_multipart", 0, "the part 'envelope' is missing");
    }
    if (at_end && in->mode == MODE_RETRY)
        retry_decide(in, 1);
    if (at_end && in->mode == MODE_OPEN) {
        kmdc_err_clear(&err);
        if (!in->have_header)
            refuse(in, HTTP_BAD_REQUEST, "incomplete", 0, "the body holds no envelope header");
        else if (kmdc_open_final(in->op, &err) != KMDC_OK)
            classify_reader_error(in, err.code ? err.code : KMDC_ERR_TRUNCATED, &err);
        else if (kmdc_payload_enc_final(in->enc, emit_batch, in, &err) != KMDC_OK)
            refuse(in, HTTP_INTERNAL_SERVER_ERROR, "internal", 0, "internal error");
        else if (store_flush_batch(in) == KMDC_OK) {
            status = publish(in);
            if (status != DECLINED && in->mode != MODE_RETRY)
                return status;
            if (in->mode == MODE_RETRY)
                concurrent_retry(in);
        }
    }
    if (!in->ans.set)
        refuse(in, HTTP_BAD_REQUEST, "incomplete", 0,
               "the body ended before the envelope did; send it again");
    if (!at_end)
        r->connection->keepalive = AP_CONN_CLOSE;   /* do not read the rest */
    if (in->ans.spend)
        spend(in);
    if (in->ans.code == NULL)
        return answer_text(r, in->ans.status, in->receipt_answer, in->receipt_message);
    if (in->ans.status != HTTP_FORBIDDEN || strcmp(in->ans.code, "rejected") != 0)
        ap_log_rerror(APLOG_MARK, APLOG_INFO, 0, r,
                      "send: card %016" APR_UINT64_T_HEX_FMT " seq %" APR_UINT64_T_FMT
                      ": %d %s", (apr_uint64_t)in->serial, (apr_uint64_t)in->seq,
                      in->ans.status, in->ans.code);
    return kmdc_http_error(r, in->ans.status, in->ans.code, "%s", in->ans.message);
}
