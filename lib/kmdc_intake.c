/*
 * kmdc_intake.c - the send intake's driver and API: feed, finish, cut off,
 * and the accessors.  The intake is three files by concern: this one, the
 * steps (kmdc_intake_steps.c, one function per state in order) and the
 * answers (kmdc_intake_answer.c); kmdc_intake_int.h is what they share.
 *
 * Memory is fixed per intake: the prefix buffer (header, kb_len, the
 * largest keyblock), one batch buffer, and the two payload streams (one
 * chunk each).  Keys live in the intake struct and are wiped by
 * kmdc_intake_free.
 */
#include <stdlib.h>
#include <string.h>

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_intake_int.h"
#include "kmdc_util.h"

/* ---- the driver -------------------------------------------------------------- */

/* Run the steps that need no more bytes. */
static void
advance(kmdc_intake *in)
{
    if (in->st == ST_SENDER)
        intake_step_sender(in);
    if (in->st == ST_CHECK)
        intake_step_check(in);
    if (in->st == ST_RECIPIENTS)
        intake_step_recipients(in);
    if (in->st == ST_RETRY)
        intake_step_retry(in, 0);
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
        intake_internal(in, "internal error");
        return 0;
    }
    while (len > 0 && in->st != ST_ANSWERED) {
        size_t used;

        switch (in->st) {
        case ST_PREFIX:
            used = intake_step_prefix(in, p, len);
            p += used;
            len -= used;
            in->ahead = len;
            advance(in);
            in->ahead = 0;
            break;
        case ST_PAYLOAD:
            intake_step_payload(in, p, len);
            len = 0;
            break;
        case ST_RETRY:
            len = 0;                     /* hashed above */
            break;
        default:
            intake_internal(in, "internal error");
            break;
        }
    }
    if (over > 0 && in->st != ST_ANSWERED &&
        intake_settle_batch(in) == KMDC_OK) {
        if (in->st == ST_RETRY)
            intake_rejected(in);
        else
            intake_answer_error(in, KMDC_INTAKE_REJECTED, 413, "too_large",
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
            intake_answer_error(in, KMDC_INTAKE_REJECTED, 400, "incomplete",
                                "the body holds no envelope header");
        else
            intake_answer_error(in, KMDC_INTAKE_REJECTED, 400, "incomplete",
                                "the body ended before the envelope did; send it again");
        break;
    case ST_PAYLOAD:
        in->st = ST_END;
        intake_step_end(in);
        if (in->st == ST_PUBLISH)
            intake_step_publish(in);
        else if (in->st == ST_RETRY)     /* a spend lost to a retry: compare */
            intake_step_retry(in, 1);
        break;
    case ST_RETRY:
        intake_step_retry(in, 1);
        break;
    default:
        break;
    }
    if (in->st != ST_ANSWERED)
        intake_internal(in, "internal error");
}

int
kmdc_intake_settle(kmdc_intake *in)
{
    (void)intake_settle_batch(in);
    return in->st != ST_ANSWERED;
}

void
kmdc_intake_cut_off(kmdc_intake *in, kmdc_intake_cut why)
{
    /* a batch that failed was answered before the body broke */
    if (intake_settle_batch(in) != KMDC_OK)
        return;
    if (in->st == ST_RETRY && why == KMDC_INTAKE_CUT_TOO_LARGE) {
        intake_rejected(in);
        return;
    }
    if (why == KMDC_INTAKE_CUT_TOO_LARGE)
        intake_answer_error(in, KMDC_INTAKE_REJECTED, 413, "too_large",
                            "the request body is larger than the server allows (LimitRequestBody)");
    else
        intake_answer_error(in, KMDC_INTAKE_REJECTED, 400, "incomplete",
                            "the body could not be read to its end; send it again");
}

void
kmdc_intake_refuse_framing(kmdc_intake *in, const char *code, const char *message)
{
    if (intake_settle_batch(in) != KMDC_OK)
        return;
    intake_answer_error(in, KMDC_INTAKE_REJECTED, 400, code, "%s", message);
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
    /* the batch in flight first: its answer names the upload to drop */
    if (in->batch_pending) {
        in->batch_pending = 0;
        (void)in->store->ops->upload_settle(in->store);
    }
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
