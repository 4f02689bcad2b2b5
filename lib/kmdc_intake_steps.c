/*
 * kmdc_intake_steps.c - the send intake's steps, one function per state of
 * kmdc_intake.h in the order the states follow each other:
 * PREFIX, SENDER, CHECK, RECIPIENTS, PAYLOAD, END, PUBLISH, RETRY.  The
 * driver that calls them is kmdc_intake.c; the answers they decide are
 * kmdc_intake_answer.c.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#include <jansson.h>

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_intake_int.h"
#include "kmdc_util.h"

/* A batch that has waited this long is written even if not full: each
 * write renews the upload's slot lease and its touched_at (the orphan
 * purge's clock), so a slow upload keeps both. */
#define BATCH_MAX_WAIT_MS 60000

static uint64_t
now_ms(const kmdc_intake *in)
{
    struct timeval tv;

    if (in->conf->now_ms != NULL)
        return in->conf->now_ms();
    gettimeofday(&tv, NULL);
    return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* ---- PREFIX ----------------------------------------------------------------- */

/*
 * Collect header || kb_len || keyblock and check their framing.  Returns the
 * bytes of p used; moves to SENDER once the prefix is whole.
 */
size_t
intake_step_prefix(kmdc_intake *in, const uint8_t *p, size_t len)
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
            intake_answer_error(in, KMDC_INTAKE_REJECTED, 400, "bad_envelope", "%s", err.msg);
            return take;
        }
        if (in->hdr.direction != KMDC_DIR_UP) {
            intake_answer_error(in, KMDC_INTAKE_REJECTED, 400, "bad_envelope",
                                "the envelope is not an up envelope (direction %u)",
                                (unsigned)in->hdr.direction);
            return take;
        }
        in->have_header = 1;
    }
    if (in->prefix_len == 0 && in->prefix_fill == PREFIX_HDR) {
        uint32_t kb = kmdc_get_u32(in->prefix + KMDC_HEADER_LEN);

        if (kb < KMDC_KB_MIN || kb > KMDC_KB_MAX) {
            intake_answer_error(in, KMDC_INTAKE_REJECTED, 400, "bad_envelope",
                                "keyblock length %u outside %u .. %u", (unsigned)kb,
                                (unsigned)KMDC_KB_MIN, (unsigned)KMDC_KB_MAX);
            return take;
        }
        in->prefix_len = PREFIX_HDR + kb;
        return take;             /* the driver calls again for the keyblock */
    }
    if (in->prefix_len != 0 && in->prefix_fill == in->prefix_len) {
        if (kmdc_sha256(in->prefix_hash, in->prefix, in->prefix_len, NULL) != KMDC_OK) {
            intake_internal(in, "internal error");
            return take;
        }
        in->st = ST_SENDER;
    }
    return take;
}

/* ---- SENDER ----------------------------------------------------------------- */

/*
 * One unwrap and a walk of W chain steps whatever the card: a card that
 * exists, is active and has seq inside its window takes MK_seq and
 * CK_{seq+1} at its step d = seq - up_next of the walk; every other case
 * unwraps a dummy value and walks from a random key, then opens the keyblock
 * with a random key (which fails).  Returns 1 when mk is the real MK_seq
 * (and ck_next CK_{seq+1}).
 */
static int
derive(kmdc_intake *in, int real, uint8_t mk[32])
{
    const kmdc_sender *s = &in->sender;
    uint64_t window = (uint64_t)in->conf->seq_window;
    uint8_t ck[32], scratch_mk[32], scratch_ck[32], dummy[KMDC_WRAPPED_LEN];
    kmdc_err err;
    int ok = 0;

    kmdc_err_clear(&err);
    if (real) {
        if (kmdc_keyring_unwrap(in->conf->keys, in->hdr.serial, KMDC_FIELD_UP_CHAIN,
                                s->up_next, s->up_chain, sizeof(s->up_chain), ck,
                                &err) != KMDC_OK) {
            snprintf(in->problem, sizeof(in->problem),
                     "cannot unwrap the up chain: %.180s", err.msg);
            intake_internal(in, "the card's keys cannot be read at the datacenter");
            goto out;
        }
        if (kmdc_chain_walk(ck, window, in->hdr.seq - s->up_next, mk, in->ck_next,
                            NULL) != KMDC_OK) {
            intake_internal(in, "key derivation failed");
            goto out;
        }
        ok = 1;
    } else {
        const kmdc_master_key *newest = kmdc_keyring_newest(in->conf->keys);

        memset(dummy, 0, sizeof(dummy));
        kmdc_put_u32(dummy, newest != NULL ? newest->id : 0);
        (void)kmdc_keyring_unwrap(in->conf->keys, in->hdr.serial, KMDC_FIELD_UP_CHAIN, 0,
                                  dummy, sizeof(dummy), ck, NULL);
        if (kmdc_random(ck, sizeof(ck), NULL) != KMDC_OK) {
            intake_internal(in, "internal error");
            goto out;
        }
        (void)kmdc_chain_walk(ck, window, 0, scratch_mk, scratch_ck, NULL);
        if (kmdc_random(mk, 32, NULL) != KMDC_OK) {
            intake_internal(in, "internal error");
            goto out;
        }
    }
out:
    kmdc_wipe(ck, sizeof(ck));
    kmdc_wipe(scratch_mk, sizeof(scratch_mk));
    kmdc_wipe(scratch_ck, sizeof(scratch_ck));
    return ok;
}

/*
 * Step 1: the sender.  Every refusal is the same 403 rejected after the same
 * work; below up_next the receipt decides (RETRY).
 */
void
intake_step_sender(kmdc_intake *in)
{
    kmdc_sender *s = &in->sender;
    uint8_t mk[32];
    kmdc_store_rc rc;
    kmdc_err err;
    int authenticated = 0, real, retry;
    kmdc_status ks;

    rc = in->store->ops->sender_load(in->store, in->hdr.serial, in->hdr.seq, s);
    if (rc != KMDC_STORE_OK && rc != KMDC_STORE_NOTFOUND) {
        intake_store_failed(in, rc);
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
        intake_rejected(in);
        return;
    }
    if (ks == KMDC_ERR_NAME) {
        intake_spend(in, 400, "bad_name", "the document name is not allowed");
        return;
    }
    if (ks != KMDC_OK) {
        intake_spend(in, 400, "protocol", "%s", err.msg);
        return;
    }
    in->st = ST_CHECK;
}

/* ---- CHECK ------------------------------------------------------------------ */

/* Step 1, after authentication: SENT and the configured limits. */
void
intake_step_check(kmdc_intake *in)
{
    const kmdc_meta *m = &in->meta;
    uint64_t now = now_ms(in), age_ms = (uint64_t)in->conf->envelope_max_age * 1000;

    if ((m->sent > now ? m->sent - now : now - m->sent) > age_ms) {
        intake_spend(in, 400, "too_old", "the envelope's SENT time is more than %lld s from "
                     "the datacenter's clock", (long long)in->conf->envelope_max_age);
        return;
    }
    if (m->n_rcpt > (size_t)in->conf->max_recipients) {
        intake_spend(in, 413, "too_large", "%zu recipients; at most %d are allowed", m->n_rcpt,
                     in->conf->max_recipients);
        return;
    }
    if (m->size > in->conf->max_document_size) {
        intake_spend(in, 413, "too_large", "the document is larger than %llu bytes",
                     (unsigned long long)in->conf->max_document_size);
        return;
    }
    in->st = ST_RECIPIENTS;
}

/* ---- RECIPIENTS ----------------------------------------------------------- */

/* Step 2: a slot, every RCPT an active card, every mailbox under its quota. */
void
intake_step_recipients(kmdc_intake *in)
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
        intake_answer_error(in, KMDC_INTAKE_REJECTED, 429, "too_many_uploads",
                            "this card has %d uploads in progress; try again when one finished",
                            in->conf->max_uploads_per_card);
        return;
    }
    if (rc != KMDC_STORE_OK) {
        intake_store_failed(in, rc);
        return;
    }
    rc = in->store->ops->recipients_resolve(in->store,
                                            (const char (*)[KMDC_ADDR_MAX + 1])in->meta.rcpt,
                                            in->meta.n_rcpt, in->rcpt);
    if (rc != KMDC_STORE_OK) {
        intake_store_failed(in, rc);
        return;
    }
    for (i = 0; i < in->meta.n_rcpt; i++) {
        if (in->rcpt[i].serial == 0) {
            intake_spend(in, 404, "unknown_recipient",
                         "recipient %zu of %zu is unknown or not active", i + 1,
                         in->meta.n_rcpt);
            return;
        }
    }
    for (i = 0; i < in->meta.n_rcpt; i++) {
        if (in->rcpt[i].pending_count + 1 > in->conf->quota_count ||
            (uint64_t)in->rcpt[i].pending_bytes + add > (uint64_t)in->conf->quota_bytes) {
            intake_spend(in, 507, "mailbox_full", "the mailbox of recipient %zu is full", i + 1);
            return;
        }
    }
    in->n_rcpt = in->meta.n_rcpt;
    kmdc_err_clear(&err);
    if ((in->batch = malloc(in->batch_cap)) == NULL ||
        kmdc_random(in->dek, sizeof(in->dek), &err) != KMDC_OK ||
        (in->dec = kmdc_payload_dec_new(in->dek_in, in->meta.size, &err)) == NULL ||
        (in->enc = kmdc_payload_enc_new(in->dek, in->meta.size, &err)) == NULL) {
        intake_internal(in, "internal error");
        return;
    }
    in->batch_since = now_ms(in);
    in->st = ST_PAYLOAD;
}

/* ---- PAYLOAD ---------------------------------------------------------------- */

/* A batch could not be written: the answer (the same whether its failure
 * showed when it was sent or when it was settled). */
static kmdc_status
batch_failed(kmdc_intake *in, kmdc_store_rc rc)
{
    if (rc == KMDC_STORE_BUSY) {
        /* the slot's lease expired while this upload waited and another
         * upload of the card took it: passing, like any full slot table */
        intake_answer_error(in, KMDC_INTAKE_REJECTED, 429, "too_many_uploads",
                            "this card has %d uploads in progress; try again when one finished",
                            in->conf->max_uploads_per_card);
        return KMDC_ERR_IO;
    }
    intake_store_failed(in, rc);
    return KMDC_ERR_IO;
}

/*
 * Send the batch as the upload's next row (a connection for this only): the
 * store writes it while the intake reads on, and answers when it is
 * settled.  Sending settles the batch before.
 */
static kmdc_status
flush_batch(kmdc_intake *in)
{
    kmdc_store_rc rc;

    if (in->batch_len == 0)
        return KMDC_OK;
    rc = in->store->ops->upload_append(in->store, &in->upload_id, in->meta.size,
                                       in->batch_idx, in->batch, in->batch_len,
                                       in->lease_held ? &in->lease : NULL);
    in->batch_pending = rc == KMDC_STORE_OK;
    if (rc != KMDC_STORE_OK)
        return batch_failed(in, rc);
    in->batch_idx++;
    in->batch_len = 0;
    in->batch_since = now_ms(in);
    return KMDC_OK;
}

kmdc_status
intake_settle_batch(kmdc_intake *in)
{
    kmdc_store_rc rc;

    if (!in->batch_pending)
        return KMDC_OK;
    in->batch_pending = 0;
    rc = in->store->ops->upload_settle(in->store);
    if (rc != KMDC_STORE_OK)
        return batch_failed(in, rc);
    return KMDC_OK;
}

/* The re-encrypted chunks, into the batch. */
static kmdc_status
emit_ciphertext(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    kmdc_intake *in = arg;

    (void)err;
    if (in->batch_len + len > in->batch_cap) {
        intake_internal(in, "internal error");
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
    /* a batch that failed would have been answered before these bytes were
     * read: its answer first */
    (void)intake_settle_batch(in);
    if (in->st == ST_ANSWERED)
        return;                          /* a batch could not be written */
    if (rc == KMDC_ERR_TRUNCATED)
        intake_answer_error(in, KMDC_INTAKE_REJECTED, 400, "incomplete",
                            "the body ended before the envelope did; send it again");
    else if (rc == KMDC_ERR_AUTH)
        intake_spend(in, 400, "protocol", "a payload chunk failed to verify");
    else if (rc == KMDC_ERR_INTERNAL)
        intake_internal(in, "internal error");
    else
        intake_spend(in, 400, "protocol", "%s", err->msg);
}

/* Step 2: verify and re-encrypt the payload bytes p. */
void
intake_step_payload(kmdc_intake *in, const uint8_t *p, size_t len)
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
void
intake_step_end(kmdc_intake *in)
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
     * longer one has its last batch written now, and every batch settled
     * before anything is published */
    if (in->batch_idx > 0 && flush_batch(in) != KMDC_OK)
        return;
    if (intake_settle_batch(in) != KMDC_OK)
        return;
    if ((in->batch_idx > 0) != (in->upload_id != 0)) {
        intake_internal(in, "internal error");
        return;
    }
    if (kmdc_sha256_final(in->sha_full, in->full_hash, NULL) != KMDC_OK) {
        intake_internal(in, "internal error");
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
void
intake_step_publish(kmdc_intake *in)
{
    kmdc_publication *pub;
    kmdc_publish_outcome outcome = KMDC_PUBLISHED;
    size_t which = 0, i;
    char id[17];
    json_t *o = NULL;
    char *text = NULL;
    kmdc_store_rc rc;

    if (in->batch_pending) {             /* never: intake_step_end settled */
        intake_internal(in, "internal error");
        return;
    }
    if ((pub = calloc(1, sizeof(*pub))) == NULL ||
        kmdc_random_u63(&in->msgid, NULL) != KMDC_OK) {
        intake_internal(in, "internal error");
        goto out;
    }
    in->rcvd = now_ms(in);
    kmdc_serial_format(id, in->msgid);
    o = json_pack("{s:s, s:I}", "message", id, "deliveries", (json_int_t)in->n_rcpt);
    if (o == NULL || (text = json_dumps(o, JSON_COMPACT)) == NULL ||
        kmdc_keyring_wrap(in->conf->keys, in->hdr.serial, KMDC_FIELD_UP_CHAIN,
                          in->hdr.seq + 1, in->ck_next, pub->up_chain_next, NULL) != KMDC_OK) {
        intake_internal(in, "internal error");
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
            intake_internal(in, "the card's keys cannot be read at the datacenter");
        else
            intake_store_failed(in, rc);
        goto out;
    }
    switch (outcome) {
    case KMDC_PUBLISHED:
        in->published = 1;
        in->upload_id = 0;               /* it belongs to the message now */
        if (pub->lease != NULL)
            in->lease_held = 0;
        intake_answer_text(in, KMDC_INTAKE_ACCEPTED, 201, NULL, text, in->msgid);
        break;
    case KMDC_PUBLISH_SPENT:
        intake_spent_meanwhile(in);
        break;
    case KMDC_PUBLISH_SENDER_INACTIVE:
        intake_rejected(in);
        break;
    case KMDC_PUBLISH_RECIPIENT_INACTIVE:
        intake_spend(in, 404, "unknown_recipient", "recipient %zu of %zu is unknown or not active",
                     which + 1, in->n_rcpt);
        break;
    case KMDC_PUBLISH_QUOTA:
        intake_spend(in, 507, "mailbox_full", "the mailbox of recipient %zu is full", which + 1);
        break;
    case KMDC_PUBLISH_UNKNOWN:           /* only with UNAVAILABLE, above */
        intake_unavailable(in);
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
void
intake_step_retry(kmdc_intake *in, int at_end)
{
    const kmdc_receipt *rc = &in->sender.receipt;

    if (rc->scope == KMDC_SCOPE_KEYBLOCK) {
        if (kmdc_ct_eq(in->prefix_hash, 32, rc->hash, 32))
            intake_repeat(in, rc);
        else
            intake_rejected(in);
        return;
    }
    if (rc->has_prefix_hash && !kmdc_ct_eq(in->prefix_hash, 32, rc->prefix_hash, 32)) {
        intake_rejected(in);
        return;
    }
    if (!at_end)
        return;
    if (kmdc_sha256_final(in->sha_full, in->full_hash, NULL) != KMDC_OK) {
        intake_internal(in, "internal error");
        return;
    }
    if (kmdc_ct_eq(in->full_hash, 32, rc->hash, 32))
        intake_repeat(in, rc);
    else
        intake_rejected(in);
}
