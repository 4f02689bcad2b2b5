/*
 * kmdc_intake.c - the send intake: one function per state of kmdc_intake.h,
 * in the order the states follow each other, then the driver.
 *
 * Memory is fixed per intake: the prefix buffer (header, kb_len, the
 * largest keyblock), one batch buffer, and the two payload streams (one
 * chunk each).  Keys live in the intake struct and are wiped by
 * kmdc_intake_free.
 */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <jansson.h>

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_intake.h"
#include "kmdc_util.h"

#define PREFIX_HDR (KMDC_HEADER_LEN + 4)
/* A batch that has waited this long is written even if not full: each
 * write renews the upload's slot lease and its touched_at (the orphan
 * purge's clock), so a slow upload keeps both. */
#define BATCH_MAX_WAIT_MS 60000
#define PREFIX_MAX (PREFIX_HDR + KMDC_KB_MAX)

typedef enum state {
    ST_PREFIX,
    ST_SENDER,
    ST_CHECK,
    ST_RECIPIENTS,
    ST_PAYLOAD,
    ST_END,
    ST_PUBLISH,
    ST_RETRY,
    ST_ANSWERED
} state;

struct kmdc_intake {
    const kmdc_intake_conf *conf;
    kmdc_store *store;
    state st;
    kmdc_intake_answer ans;
    char *body;                          /* ans.body (malloc) */
    char problem[256];                   /* for the operator's log */

    /* PREFIX: header || kb_len || keyblock, and the hashes */
    uint8_t prefix[PREFIX_MAX];
    size_t prefix_fill, prefix_len;      /* prefix_len 0 until kb_len is read */
    kmdc_header hdr;
    int have_header;
    uint8_t prefix_hash[32];
    kmdc_sha256_ctx *sha_full;
    uint8_t full_hash[32];
    uint64_t fed, max_len;

    /* SENDER */
    kmdc_sender sender;
    uint8_t ck_next[32];                 /* CK_{seq+1} */
    uint8_t dek_in[KMDC_DEK_LEN];        /* the sender's DEK */
    kmdc_meta meta;

    /* RECIPIENTS */
    kmdc_lease lease;
    int lease_held;
    kmdc_recipient rcpt[KMDC_RCPT_MAX];
    size_t n_rcpt;

    /* PAYLOAD */
    uint8_t dek[KMDC_DEK_LEN];           /* the datacenter's fresh DEK */
    kmdc_payload_dec *dec;
    kmdc_payload_enc *enc;
    uint8_t *batch;
    size_t batch_len, batch_cap;
    int batch_idx;
    uint64_t batch_since;                /* when the last batch was written */
    size_t ahead;                        /* bytes of this feed after the prefix */
    int64_t upload_id;

    /* PUBLISH */
    uint64_t msgid, rcvd;
    int published;
    int keep_upload;                     /* publication outcome unknown */
};

/* ---- answers --------------------------------------------------------------- */

static uint64_t
now_ms(const kmdc_intake *in)
{
    struct timeval tv;

    if (in->conf->now_ms != NULL)
        return in->conf->now_ms();
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* Decide the answer: status, code (NULL: body is the stored text given). */
static void
answer_text(kmdc_intake *in, kmdc_intake_result result, int status, const char *code,
            const char *text, uint64_t message_id)
{
    if (in->st == ST_ANSWERED)
        return;
    in->st = ST_ANSWERED;
    free(in->body);
    in->body = strdup(text != NULL ? text : "{}");
    in->ans.result = result;
    in->ans.status = status;
    in->ans.code = code;
    in->ans.body = in->body;
    in->ans.message_id = message_id;
    in->ans.retry_after = status == 503 ? 5 : 0;
}

/* The JSON error body {"error":code,"message":...} (printf style); malloc'd. */
__attribute__((format(printf, 2, 0))) static char *
error_json(const char *code, const char *fmt, va_list ap)
{
    char message[200];
    json_t *o;
    char *s;

    vsnprintf(message, sizeof(message), fmt, ap);
    o = json_pack("{s:s, s:s}", "error", code, "message", message);
    s = o != NULL ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

__attribute__((format(printf, 5, 6))) static void
answer_error(kmdc_intake *in, kmdc_intake_result result, int status, const char *code,
             const char *fmt, ...)
{
    char *text;
    va_list ap;

    va_start(ap, fmt);
    text = error_json(code, fmt, ap);
    va_end(ap);
    answer_text(in, result, status, code, text, 0);
    free(text);
}

static void
rejected(kmdc_intake *in)
{
    answer_error(in, KMDC_INTAKE_REJECTED, 403, "rejected", "the envelope was rejected");
}

static void
unavailable(kmdc_intake *in)
{
    answer_error(in, KMDC_INTAKE_UNAVAILABLE, 503, "unavailable",
                 "the database is unavailable; send the same envelope again later");
}

static void
internal(kmdc_intake *in, const char *message)
{
    answer_error(in, KMDC_INTAKE_REJECTED, 500, "internal", "%s", message);
}

/* A store failure other than the ones an operation defines. */
static void
store_failed(kmdc_intake *in, kmdc_store_rc rc)
{
    if (rc == KMDC_STORE_UNAVAILABLE || rc == KMDC_STORE_SCHEMA)
        unavailable(in);
    else
        internal(in, "internal error");
}

/* The receipt repeats its answer: 200 for a success, else the error. */
static void
repeat(kmdc_intake *in, const kmdc_receipt *rc)
{
    answer_text(in, KMDC_INTAKE_REPEATED, rc->http_status == 201 ? 200 : rc->http_status,
                NULL, rc->answer, rc->message_id);
}

/*
 * The counter was spent by another upload while this one ran (the client
 * retried before the first answer came).  Its receipt answers if it is for
 * these same bytes: a keyblock-scope receipt is judged on the prefix; an
 * envelope-scope one on the whole envelope, at once when the body was read
 * to its end, else by reading on as a retry (RETRY).  Any other bytes are
 * 403 rejected.
 */
static void
spent_meanwhile(kmdc_intake *in)
{
    kmdc_receipt rc;
    kmdc_store_rc src = in->store->ops->receipt_find(in->store, in->hdr.serial,
                                                      in->hdr.seq, &rc);

    if (src == KMDC_STORE_NOTFOUND) {
        rejected(in);
        return;
    }
    if (src != KMDC_STORE_OK) {
        store_failed(in, src);
        return;
    }
    if (rc.scope == KMDC_SCOPE_KEYBLOCK ||
        (rc.has_prefix_hash && !kmdc_ct_eq(rc.prefix_hash, 32, in->prefix_hash, 32))) {
        if (rc.scope == KMDC_SCOPE_KEYBLOCK && kmdc_ct_eq(rc.hash, 32, in->prefix_hash, 32))
            repeat(in, &rc);
        else
            rejected(in);
        return;
    }
    if (in->st == ST_PUBLISH) {          /* the whole envelope was hashed */
        if (kmdc_ct_eq(rc.hash, 32, in->full_hash, 32))
            repeat(in, &rc);
        else
            rejected(in);
        return;
    }
    in->sender.receipt = rc;             /* compare at the end of the body */
    in->sender.has_receipt = 1;
    in->st = ST_RETRY;
}

/*
 * A refusal after the keyblock authenticated: spend the counter (advance the
 * chain past seq, a receipt over the prefix), then answer.  If the store
 * cannot, the answer is 503 and nothing was spent.
 */
__attribute__((format(printf, 4, 5))) static void
spend(kmdc_intake *in, int status, const char *code, const char *fmt, ...)
{
    kmdc_spending sp;
    kmdc_store_rc rc;
    char *text;
    va_list ap;

    va_start(ap, fmt);
    text = error_json(code, fmt, ap);
    va_end(ap);
    if (text == NULL) {
        internal(in, "internal error");
        return;
    }
    memset(&sp, 0, sizeof(sp));
    sp.serial = in->hdr.serial;
    sp.seq = in->hdr.seq;
    memcpy(sp.prefix_hash, in->prefix_hash, 32);
    sp.http_status = status;
    sp.answer = text;
    sp.error = code;
    sp.lease = in->lease_held ? &in->lease : NULL;
    if (kmdc_keyring_wrap(in->conf->keys, in->hdr.serial, KMDC_FIELD_UP_CHAIN,
                          in->hdr.seq + 1, in->ck_next, sp.up_chain_next, NULL) != KMDC_OK) {
        free(text);
        internal(in, "internal error");
        return;
    }
    rc = in->store->ops->spend(in->store, &sp);
    if (rc == KMDC_STORE_OK && sp.lease != NULL)
        in->lease_held = 0;
    if (rc == KMDC_STORE_OK)
        answer_text(in, KMDC_INTAKE_REFUSED, status, code, text, 0);
    else if (rc == KMDC_STORE_CONFLICT)
        spent_meanwhile(in);             /* a concurrent retry spent it first */
    else
        unavailable(in);
    kmdc_wipe(&sp, sizeof(sp));
    free(text);
}

/* ---- PREFIX ----------------------------------------------------------------- */

/*
 * Collect header || kb_len || keyblock and check their framing.  Returns the
 * bytes of p used; moves to SENDER once the prefix is whole.
 */
static size_t
step_prefix(kmdc_intake *in, const uint8_t *p, size_t len)
{
    size_t want, take;
    kmdc_err err;

    want = (in->prefix_len != 0 ? in->prefix_len : PREFIX_HDR) - in->prefix_fill;
    take = len < want ? len : want;
    memcpy(in->prefix + in->prefix_fill, p, take);
    in->prefix_fill += take;

    if (!in->have_header && in->prefix_fill >= KMDC_HEADER_LEN) {
        kmdc_err_clear(&err);
        if (kmdc_header_decode(&in->hdr, in->prefix, &err) != KMDC_OK) {
            answer_error(in, KMDC_INTAKE_REJECTED, 400, "bad_envelope", "%s", err.msg);
            return take;
        }
        if (in->hdr.direction != KMDC_DIR_UP) {
            answer_error(in, KMDC_INTAKE_REJECTED, 400, "bad_envelope",
                         "the envelope is not an up envelope (direction %u)",
                         (unsigned)in->hdr.direction);
            return take;
        }
        in->have_header = 1;
    }
    if (in->prefix_len == 0 && in->prefix_fill == PREFIX_HDR) {
        uint32_t kb = kmdc_get_u32(in->prefix + KMDC_HEADER_LEN);

        if (kb < KMDC_KB_MIN || kb > KMDC_KB_MAX) {
            answer_error(in, KMDC_INTAKE_REJECTED, 400, "bad_envelope",
                         "keyblock length %u outside %u .. %u", (unsigned)kb,
                         (unsigned)KMDC_KB_MIN, (unsigned)KMDC_KB_MAX);
            return take;
        }
        in->prefix_len = PREFIX_HDR + kb;
        return take;             /* the driver calls again for the keyblock */
    }
    if (in->prefix_len != 0 && in->prefix_fill == in->prefix_len) {
        if (kmdc_sha256(in->prefix_hash, in->prefix, in->prefix_len, NULL) != KMDC_OK) {
            internal(in, "internal error");
            return take;
        }
        in->st = ST_SENDER;
    }
    return take;
}

/* ---- SENDER ----------------------------------------------------------------- */

/*
 * W chain steps and one unwrap whatever the card: a card that exists, is
 * active and has seq inside its window walks d = seq - up_next real steps and
 * W - 1 - d dummy ones; every other case unwraps a dummy value and walks
 * W - 1 dummy steps, then opens the keyblock with a random key (which fails).
 * Returns 1 when mk is the real MK_seq (and ck_next CK_{seq+1}).
 */
static int
derive(kmdc_intake *in, int real, uint8_t mk[32])
{
    const kmdc_sender *s = &in->sender;
    uint64_t window = (uint64_t)in->conf->seq_window, d = 0, i;
    uint8_t ck[32], dummy[KMDC_WRAPPED_LEN];
    kmdc_err err;
    int ok = 0;

    kmdc_err_clear(&err);
    if (real) {
        d = in->hdr.seq - s->up_next;
        if (kmdc_keyring_unwrap(in->conf->keys, in->hdr.serial, KMDC_FIELD_UP_CHAIN,
                                s->up_next, s->up_chain, sizeof(s->up_chain), ck,
                                &err) != KMDC_OK) {
            snprintf(in->problem, sizeof(in->problem),
                     "cannot unwrap the up chain: %.180s", err.msg);
            internal(in, "the card's keys cannot be read at the datacenter");
            goto out;
        }
        if (kmdc_chain_seek(ck, s->up_next, in->hdr.seq, mk, NULL) != KMDC_OK ||
            kmdc_chain_step(NULL, in->ck_next, ck, NULL) != KMDC_OK) {
            internal(in, "key derivation failed");
            goto out;
        }
        ok = 1;
    } else {
        const kmdc_master_key *newest = kmdc_keyring_newest(in->conf->keys);

        memset(dummy, 0, sizeof(dummy));
        kmdc_put_u32(dummy, newest != NULL ? newest->id : 0);
        (void)kmdc_keyring_unwrap(in->conf->keys, in->hdr.serial, KMDC_FIELD_UP_CHAIN, 0,
                                  dummy, sizeof(dummy), ck, NULL);
        if (kmdc_random(ck, sizeof(ck), NULL) != KMDC_OK ||
            kmdc_random(mk, 32, NULL) != KMDC_OK) {
            internal(in, "internal error");
            goto out;
        }
    }
    /* W steps in all: the real path took d + 1, the dummy one none yet */
    for (i = real ? d + 1 : 0; i < window; i++)
        (void)kmdc_chain_step(NULL, ck, ck, NULL);
out:
    kmdc_wipe(ck, sizeof(ck));
    return ok;
}

/*
 * Step 1: the sender.  Every refusal is the same 403 rejected after the same
 * work; below up_next the receipt decides (RETRY).
 */
static void
step_sender(kmdc_intake *in)
{
    kmdc_sender *s = &in->sender;
    uint8_t mk[32];
    kmdc_store_rc rc;
    kmdc_err err;
    int authenticated = 0, real, retry;
    kmdc_status ks;

    rc = in->store->ops->sender_load(in->store, in->hdr.serial, in->hdr.seq, s);
    if (rc != KMDC_STORE_OK && rc != KMDC_STORE_NOTFOUND) {
        store_failed(in, rc);
        return;
    }
    retry = rc == KMDC_STORE_OK && in->hdr.seq < s->up_next && s->has_receipt;
    real = rc == KMDC_STORE_OK && s->status == KMDC_CARD_ST_ACTIVE &&
           in->hdr.seq >= s->up_next &&
           in->hdr.seq - s->up_next < (uint64_t)in->conf->seq_window &&
           in->hdr.seq < KMDC_U63_MAX;
    if (derive(in, real, mk) != real || in->st == ST_ANSWERED) {
        kmdc_wipe(mk, sizeof(mk));
        return;                          /* answered (internal) */
    }
    kmdc_err_clear(&err);
    ks = kmdc_keyblock_open(in->dek_in, &in->meta, &authenticated, in->prefix, mk,
                            in->prefix + PREFIX_HDR, in->prefix_len - PREFIX_HDR, &err);
    kmdc_wipe(mk, sizeof(mk));
    if (retry) {
        in->st = ST_RETRY;
        return;
    }
    if (!real || !authenticated) {
        rejected(in);
        return;
    }
    if (ks == KMDC_ERR_NAME) {
        spend(in, 400, "bad_name", "the document name is not allowed");
        return;
    }
    if (ks != KMDC_OK) {
        spend(in, 400, "protocol", "%s", err.msg);
        return;
    }
    in->st = ST_CHECK;
}

/* ---- CHECK ------------------------------------------------------------------ */

/* Step 1, after authentication: SENT and the configured limits. */
static void
step_check(kmdc_intake *in)
{
    const kmdc_meta *m = &in->meta;
    uint64_t now = now_ms(in), age_ms = (uint64_t)in->conf->envelope_max_age * 1000;

    if ((m->sent > now ? m->sent - now : now - m->sent) > age_ms) {
        spend(in, 400, "too_old", "the envelope's SENT time is more than %lld s from "
              "the datacenter's clock", (long long)in->conf->envelope_max_age);
        return;
    }
    if (m->n_rcpt > (size_t)in->conf->max_recipients) {
        spend(in, 413, "too_large", "%zu recipients; at most %d are allowed", m->n_rcpt,
              in->conf->max_recipients);
        return;
    }
    if (m->size > in->conf->max_document_size) {
        spend(in, 413, "too_large", "the document is larger than %llu bytes",
              (unsigned long long)in->conf->max_document_size);
        return;
    }
    in->st = ST_RECIPIENTS;
}

/* ---- RECIPIENTS ----------------------------------------------------------- */

/* Step 2: a slot, every RCPT an active card, every mailbox under its quota. */
static void
step_recipients(kmdc_intake *in)
{
    uint64_t add = kmdc_intake_envelope_max(in->meta.size);
    kmdc_store_rc rc;
    kmdc_err err;
    size_t i;

    /* an envelope whose every byte has arrived waits on nothing but the
     * store: it takes no slot (and no round trip for one) */
    if (in->ahead >= kmdc_payload_len(in->meta.size))
        rc = KMDC_STORE_OK;
    else if ((rc = in->store->ops->slot_take(in->store, in->hdr.serial,
                                             in->conf->max_uploads_per_card,
                                             &in->lease)) == KMDC_STORE_OK)
        in->lease_held = 1;
    if (rc == KMDC_STORE_BUSY) {
        answer_error(in, KMDC_INTAKE_REJECTED, 429, "too_many_uploads",
                     "this card has %d uploads in progress; try again when one finished",
                     in->conf->max_uploads_per_card);
        return;
    }
    if (rc != KMDC_STORE_OK) {
        store_failed(in, rc);
        return;
    }
    rc = in->store->ops->recipients_resolve(in->store,
                                            (const char (*)[KMDC_ADDR_MAX + 1])in->meta.rcpt,
                                            in->meta.n_rcpt, in->rcpt);
    if (rc != KMDC_STORE_OK) {
        store_failed(in, rc);
        return;
    }
    for (i = 0; i < in->meta.n_rcpt; i++) {
        if (in->rcpt[i].serial == 0) {
            spend(in, 404, "unknown_recipient", "recipient %zu of %zu is unknown or not active",
                  i + 1, in->meta.n_rcpt);
            return;
        }
    }
    for (i = 0; i < in->meta.n_rcpt; i++) {
        if (in->rcpt[i].pending_count + 1 > in->conf->quota_count ||
            (uint64_t)in->rcpt[i].pending_bytes + add > (uint64_t)in->conf->quota_bytes) {
            spend(in, 507, "mailbox_full", "the mailbox of recipient %zu is full", i + 1);
            return;
        }
    }
    in->n_rcpt = in->meta.n_rcpt;
    kmdc_err_clear(&err);
    if ((in->batch = malloc(in->batch_cap)) == NULL ||
        kmdc_random(in->dek, sizeof(in->dek), &err) != KMDC_OK ||
        (in->dec = kmdc_payload_dec_new(in->dek_in, in->meta.size, &err)) == NULL ||
        (in->enc = kmdc_payload_enc_new(in->dek, in->meta.size, &err)) == NULL) {
        internal(in, "internal error");
        return;
    }
    in->batch_since = now_ms(in);
    in->st = ST_PAYLOAD;
}

/* ---- PAYLOAD ---------------------------------------------------------------- */

/* Write the batch as the upload's next row (a connection for this only). */
static kmdc_status
flush_batch(kmdc_intake *in)
{
    kmdc_store_rc rc;

    if (in->batch_len == 0)
        return KMDC_OK;
    rc = in->store->ops->upload_append(in->store, &in->upload_id, in->meta.size,
                                       in->batch_idx, in->batch, in->batch_len,
                                       in->lease_held ? &in->lease : NULL);
    if (rc == KMDC_STORE_BUSY) {
        /* the slot's lease expired while this upload waited and another
         * upload of the card took it: passing, like any full slot table */
        answer_error(in, KMDC_INTAKE_REJECTED, 429, "too_many_uploads",
                     "this card has %d uploads in progress; try again when one finished",
                     in->conf->max_uploads_per_card);
        return KMDC_ERR_IO;
    }
    if (rc != KMDC_STORE_OK) {
        store_failed(in, rc);
        return KMDC_ERR_IO;
    }
    in->batch_idx++;
    in->batch_len = 0;
    in->batch_since = now_ms(in);
    return KMDC_OK;
}

/* The re-encrypted chunks, into the batch. */
static kmdc_status
emit_ciphertext(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    kmdc_intake *in = arg;

    (void)err;
    if (in->batch_len + len > in->batch_cap) {
        internal(in, "internal error");
        return KMDC_ERR_INTERNAL;
    }
    memcpy(in->batch + in->batch_len, p, len);
    in->batch_len += len;
    if (in->batch_len + KMDC_CHUNK_CT_MAX > in->batch_cap ||
        now_ms(in) - in->batch_since >= BATCH_MAX_WAIT_MS)
        return flush_batch(in);
    return KMDC_OK;
}

/* Verified plaintext of one chunk: re-encrypt it at once. */
static kmdc_status
emit_plaintext(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    kmdc_intake *in = arg;

    return kmdc_payload_enc_update(in->enc, p, len, emit_ciphertext, in, err);
}

/* A payload stream failed: say why (the answer may already be decided). */
static void
payload_failed(kmdc_intake *in, kmdc_status rc, const kmdc_err *err)
{
    if (in->st == ST_ANSWERED)
        return;                          /* a batch could not be written */
    if (rc == KMDC_ERR_TRUNCATED)
        answer_error(in, KMDC_INTAKE_REJECTED, 400, "incomplete",
                     "the body ended before the envelope did; send it again");
    else if (rc == KMDC_ERR_AUTH)
        spend(in, 400, "protocol", "a payload chunk failed to verify");
    else if (rc == KMDC_ERR_INTERNAL)
        internal(in, "internal error");
    else
        spend(in, 400, "protocol", "%s", err->msg);
}

/* Step 2: verify and re-encrypt the payload bytes p. */
static void
step_payload(kmdc_intake *in, const uint8_t *p, size_t len)
{
    kmdc_status rc;
    kmdc_err err;

    kmdc_err_clear(&err);
    rc = kmdc_payload_dec_update(in->dec, p, len, emit_plaintext, in, &err);
    if (rc != KMDC_OK)
        payload_failed(in, rc, &err);
}

/* ---- END -------------------------------------------------------------------- */

/* Step 3, first half: the last chunk verified, the last batch written. */
static void
step_end(kmdc_intake *in)
{
    kmdc_status rc;
    kmdc_err err;

    kmdc_err_clear(&err);
    if ((rc = kmdc_payload_dec_final(in->dec, &err)) != KMDC_OK ||
        (rc = kmdc_payload_enc_final(in->enc, emit_ciphertext, in, &err)) != KMDC_OK) {
        payload_failed(in, rc, &err);
        return;
    }
    /* a payload that fit one batch travels inside the publication; a
     * longer one has its last batch written now */
    if (in->upload_id != 0 && flush_batch(in) != KMDC_OK)
        return;
    if (kmdc_sha256_final(in->sha_full, in->full_hash, NULL) != KMDC_OK) {
        internal(in, "internal error");
        return;
    }
    in->st = ST_PUBLISH;
}

/* ---- PUBLISH ---------------------------------------------------------------- */

/* Seal recipient i's delivery (called by the store with its row locked). */
static kmdc_status
seal_delivery(void *arg, size_t i, uint64_t serial, uint64_t down_next,
              const uint8_t down_chain[KMDC_WRAPPED_LEN], uint8_t *head, size_t head_cap,
              size_t *head_len, uint8_t down_chain_next[KMDC_WRAPPED_LEN])
{
    kmdc_intake *in = arg;
    uint8_t ck[32], mk[32];
    kmdc_header h;
    kmdc_meta md;
    size_t kblen = 0;
    kmdc_err err;
    kmdc_status rc = KMDC_ERR_INTERNAL;

    (void)i;
    kmdc_err_clear(&err);
    if (head_cap < KMDC_HEADER_LEN || down_next >= KMDC_U63_MAX)
        goto out;
    if (kmdc_keyring_unwrap(in->conf->keys, serial, KMDC_FIELD_DOWN_CHAIN, down_next,
                            down_chain, KMDC_WRAPPED_LEN, ck, &err) != KMDC_OK) {
        snprintf(in->problem, sizeof(in->problem),
                 "card %016llx: cannot unwrap the down chain: %.180s",
                 (unsigned long long)serial, err.msg);
        goto out;
    }
    kmdc_meta_copy_shared(&md, &in->meta);
    md.has_fromserial = md.has_msgid = md.has_rcvd = 1;
    md.fromserial = in->hdr.serial;
    md.msgid = in->msgid;
    md.rcvd = in->rcvd;
    if (kmdc_chain_step(mk, ck, ck, &err) != KMDC_OK ||
        kmdc_keyring_wrap(in->conf->keys, serial, KMDC_FIELD_DOWN_CHAIN, down_next + 1,
                          ck, down_chain_next, &err) != KMDC_OK ||
        kmdc_meta_set_from(&md, in->sender.address, strlen(in->sender.address),
                           &err) != KMDC_OK ||
        kmdc_header_new(&h, KMDC_DIR_DOWN, serial, down_next, &err) != KMDC_OK ||
        kmdc_header_encode(head, &h, &err) != KMDC_OK ||
        kmdc_keyblock_seal(head + KMDC_HEADER_LEN, head_cap - KMDC_HEADER_LEN, &kblen,
                           head, mk, in->dek, &md, &err) != KMDC_OK)
        goto out;
    *head_len = KMDC_HEADER_LEN + kblen;
    rc = KMDC_OK;
out:
    kmdc_wipe(ck, sizeof(ck));
    kmdc_wipe(mk, sizeof(mk));
    kmdc_wipe(&md, sizeof(md));
    return rc;
}

/* Step 3: publish in one transaction of the store. */
static void
step_publish(kmdc_intake *in)
{
    kmdc_publication *pub;
    kmdc_publish_outcome outcome = KMDC_PUBLISHED;
    size_t which = 0, i;
    char id[17];
    json_t *o = NULL;
    char *text = NULL;
    kmdc_store_rc rc;

    if ((pub = calloc(1, sizeof(*pub))) == NULL ||
        kmdc_random_u63(&in->msgid, NULL) != KMDC_OK) {
        internal(in, "internal error");
        goto out;
    }
    in->rcvd = now_ms(in);
    kmdc_serial_format(id, in->msgid);
    o = json_pack("{s:s, s:I}", "message", id, "deliveries", (json_int_t)in->n_rcpt);
    if (o == NULL || (text = json_dumps(o, JSON_COMPACT)) == NULL ||
        kmdc_keyring_wrap(in->conf->keys, in->hdr.serial, KMDC_FIELD_UP_CHAIN,
                          in->hdr.seq + 1, in->ck_next, pub->up_chain_next, NULL) != KMDC_OK) {
        internal(in, "internal error");
        goto out;
    }
    pub->serial = in->hdr.serial;
    pub->seq = in->hdr.seq;
    pub->message_id = in->msgid;
    pub->size = in->meta.size;
    pub->payload_len = kmdc_payload_len(in->meta.size);
    pub->upload_id = in->upload_id;
    if (in->upload_id == 0) {
        pub->inline_data = in->batch;
        pub->inline_len = in->batch_len;
    }
    pub->n_rcpt = in->n_rcpt;
    for (i = 0; i < in->n_rcpt; i++)
        pub->rcpt[i] = in->rcpt[i].serial;
    pub->quota_count = in->conf->quota_count;
    pub->quota_bytes = in->conf->quota_bytes;
    pub->quota_add = kmdc_intake_envelope_max(in->meta.size);
    pub->ttl = in->conf->mailbox_ttl;
    memcpy(pub->envelope_hash, in->full_hash, 32);
    memcpy(pub->prefix_hash, in->prefix_hash, 32);
    pub->answer = text;
    pub->lease = in->lease_held ? &in->lease : NULL;
    pub->seal = seal_delivery;
    pub->seal_arg = in;

    rc = in->store->ops->publish(in->store, pub, &outcome, &which);
    if (rc != KMDC_STORE_OK) {
        /* UNAVAILABLE: a lost COMMIT answer leaves the outcome unknown; the
         * client retries byte for byte and the receipt (if any) answers.
         * The upload may belong to a message now: leave it to the purge. */
        if (rc == KMDC_STORE_UNAVAILABLE && outcome == KMDC_PUBLISH_UNKNOWN)
            in->keep_upload = 1;
        if (rc == KMDC_STORE_ERROR)
            internal(in, "the card's keys cannot be read at the datacenter");
        else
            store_failed(in, rc);
        goto out;
    }
    switch (outcome) {
    case KMDC_PUBLISHED:
        in->published = 1;
        in->upload_id = 0;               /* it belongs to the message now */
        if (pub->lease != NULL)
            in->lease_held = 0;
        answer_text(in, KMDC_INTAKE_ACCEPTED, 201, NULL, text, in->msgid);
        break;
    case KMDC_PUBLISH_SPENT:
        spent_meanwhile(in);
        break;
    case KMDC_PUBLISH_SENDER_INACTIVE:
        rejected(in);
        break;
    case KMDC_PUBLISH_RECIPIENT_INACTIVE:
        spend(in, 404, "unknown_recipient", "recipient %zu of %zu is unknown or not active",
              which + 1, in->n_rcpt);
        break;
    case KMDC_PUBLISH_QUOTA:
        spend(in, 507, "mailbox_full", "the mailbox of recipient %zu is full", which + 1);
        break;
    case KMDC_PUBLISH_UNKNOWN:           /* only with UNAVAILABLE, above */
        unavailable(in);
        break;
    }
out:
    if (pub != NULL)
        kmdc_wipe(pub, sizeof(*pub));
    free(pub);
    free(text);
    json_decref(o);
}

/* ---- RETRY ------------------------------------------------------------------ */

/*
 * seq below up_next.  Called once the prefix is in (at_end 0) and at the end
 * of the body (at_end 1).  A keyblock-scope receipt decides on the prefix; an
 * envelope-scope one refuses a different prefix at once when it holds the
 * prefix hash, and otherwise compares the whole envelope at the end.
 */
static void
step_retry(kmdc_intake *in, int at_end)
{
    const kmdc_receipt *rc = &in->sender.receipt;

    if (rc->scope == KMDC_SCOPE_KEYBLOCK) {
        if (kmdc_ct_eq(in->prefix_hash, 32, rc->hash, 32))
            repeat(in, rc);
        else
            rejected(in);
        return;
    }
    if (rc->has_prefix_hash && !kmdc_ct_eq(in->prefix_hash, 32, rc->prefix_hash, 32)) {
        rejected(in);
        return;
    }
    if (!at_end)
        return;
    if (kmdc_sha256_final(in->sha_full, in->full_hash, NULL) != KMDC_OK) {
        internal(in, "internal error");
        return;
    }
    if (kmdc_ct_eq(in->full_hash, 32, rc->hash, 32))
        repeat(in, rc);
    else
        rejected(in);
}

/* ---- the driver -------------------------------------------------------------- */

/* Run the steps that need no more bytes. */
static void
advance(kmdc_intake *in)
{
    if (in->st == ST_SENDER)
        step_sender(in);
    if (in->st == ST_CHECK)
        step_check(in);
    if (in->st == ST_RECIPIENTS)
        step_recipients(in);
    if (in->st == ST_RETRY)
        step_retry(in, 0);
}

int
kmdc_intake_feed(kmdc_intake *in, const uint8_t *p, size_t len)
{
    size_t over = 0;

    if (in->st == ST_ANSWERED)
        return 0;
    if (len > in->max_len - in->fed) {
        /* the bytes up to the largest envelope first, so the answer does not
         * depend on how the body was sliced */
        over = len - (size_t)(in->max_len - in->fed);
        len -= over;
    }
    in->fed += len;
    if (kmdc_sha256_update(in->sha_full, p, len, NULL) != KMDC_OK) {
        internal(in, "internal error");
        return 0;
    }
    while (len > 0 && in->st != ST_ANSWERED) {
        size_t used;

        switch (in->st) {
        case ST_PREFIX:
            used = step_prefix(in, p, len);
            p += used;
            len -= used;
            in->ahead = len;
            advance(in);
            in->ahead = 0;
            break;
        case ST_PAYLOAD:
            step_payload(in, p, len);
            len = 0;
            break;
        case ST_RETRY:
            len = 0;                     /* hashed above */
            break;
        default:
            internal(in, "internal error");
            break;
        }
    }
    if (over > 0 && in->st != ST_ANSWERED) {
        if (in->st == ST_RETRY)
            rejected(in);
        else
            answer_error(in, KMDC_INTAKE_REJECTED, 413, "too_large",
                         "the upload is larger than the largest allowed envelope");
    }
    return in->st != ST_ANSWERED;
}

void
kmdc_intake_finish(kmdc_intake *in)
{
    switch (in->st) {
    case ST_PREFIX:
        if (!in->have_header)
            answer_error(in, KMDC_INTAKE_REJECTED, 400, "incomplete",
                         "the body holds no envelope header");
        else
            answer_error(in, KMDC_INTAKE_REJECTED, 400, "incomplete",
                         "the body ended before the envelope did; send it again");
        break;
    case ST_PAYLOAD:
        in->st = ST_END;
        step_end(in);
        if (in->st == ST_PUBLISH)
            step_publish(in);
        else if (in->st == ST_RETRY)     /* a spend lost to a retry: compare */
            step_retry(in, 1);
        break;
    case ST_RETRY:
        step_retry(in, 1);
        break;
    default:
        break;
    }
    if (in->st != ST_ANSWERED)
        internal(in, "internal error");
}

void
kmdc_intake_cut_off(kmdc_intake *in, kmdc_intake_cut why)
{
    if (in->st == ST_RETRY && why == KMDC_INTAKE_CUT_TOO_LARGE) {
        rejected(in);
        return;
    }
    if (why == KMDC_INTAKE_CUT_TOO_LARGE)
        answer_error(in, KMDC_INTAKE_REJECTED, 413, "too_large",
                     "the request body is larger than the server allows (LimitRequestBody)");
    else
        answer_error(in, KMDC_INTAKE_REJECTED, 400, "incomplete",
                     "the body could not be read to its end; send it again");
}

void
kmdc_intake_refuse_framing(kmdc_intake *in, const char *code, const char *message)
{
    answer_error(in, KMDC_INTAKE_REJECTED, 400, code, "%s", message);
}

/* ---- the rest of the API ------------------------------------------------------ */

uint64_t
kmdc_intake_envelope_max(uint64_t size)
{
    return KMDC_HEADER_LEN + KMDC_KB_FRAME_MAX + kmdc_payload_len(size);
}

kmdc_intake *
kmdc_intake_new(const kmdc_intake_conf *conf, kmdc_store *store, kmdc_err *err)
{
    kmdc_intake *in;

    if (conf == NULL || store == NULL || conf->seq_window < 1) {
        kmdc_err_set(err, KMDC_ERR_ARG, "an intake needs a configuration and a store");
        return NULL;
    }
    if ((in = calloc(1, sizeof(*in))) == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    in->conf = conf;
    in->store = store;
    in->st = ST_PREFIX;
    in->max_len = kmdc_intake_envelope_max(conf->max_document_size);
    in->batch_cap = (conf->batch_bytes != 0 ? conf->batch_bytes : KMDC_INTAKE_BATCH_DEFAULT)
                    + KMDC_CHUNK_CT_MAX;
    if ((in->sha_full = kmdc_sha256_new(err)) == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        kmdc_intake_free(in);
        return NULL;
    }
    return in;
}

const kmdc_intake_answer *
kmdc_intake_decision(const kmdc_intake *in)
{
    return in->st == ST_ANSWERED ? &in->ans : NULL;
}

int
kmdc_intake_header(const kmdc_intake *in, uint64_t *serial, uint64_t *seq)
{
    if (!in->have_header)
        return 0;
    *serial = in->hdr.serial;
    *seq = in->hdr.seq;
    return 1;
}

uint64_t
kmdc_intake_bytes(const kmdc_intake *in)
{
    return in->fed;
}

size_t
kmdc_intake_recipients(const kmdc_intake *in)
{
    return in->published ? in->n_rcpt : 0;
}

const char *
kmdc_intake_problem(const kmdc_intake *in)
{
    return in->problem[0] != '\0' ? in->problem : NULL;
}

void
kmdc_intake_free(kmdc_intake *in)
{
    if (in == NULL)
        return;
    if (in->lease_held)
        (void)in->store->ops->slot_release(in->store, &in->lease);
    if (in->upload_id != 0 && !in->published && !in->keep_upload)
        (void)in->store->ops->upload_drop(in->store, in->upload_id);
    kmdc_payload_dec_free(in->dec);
    kmdc_payload_enc_free(in->enc);
    kmdc_sha256_free(in->sha_full);
    free(in->batch);                     /* ciphertext only */
    free(in->body);
    kmdc_wipe(in, sizeof(*in));
    free(in);
}
