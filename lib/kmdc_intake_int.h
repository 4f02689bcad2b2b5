/*
 * kmdc_intake_int.h - what the files of the send intake share (not an API:
 * kmdc_intake.h is): the intake's state and struct, its answers
 * (kmdc_intake_answer.c) and its steps (kmdc_intake_steps.c), which the
 * driver (kmdc_intake.c) runs.
 */
#ifndef KMDC_INTAKE_INT_H
#define KMDC_INTAKE_INT_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_intake.h"

#define PREFIX_HDR (KMDC_HEADER_LEN + 4)
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
    int batch_idx;                       /* batches sent */
    int batch_pending;                   /* the last one sent is not settled */
    uint64_t batch_since;                /* when the last batch was written */
    size_t ahead;                        /* bytes of this feed after the prefix */
    int64_t upload_id;

    /* PUBLISH */
    uint64_t msgid, rcvd;
    int published;
    int keep_upload;                     /* publication outcome unknown */
};

/* ---- answers (kmdc_intake_answer.c): each decides at most once ------------- */

/* Decide the answer: status, code (NULL: body is the stored text given). */
void intake_answer_text(kmdc_intake *in, kmdc_intake_result result, int status,
                        const char *code, const char *text, uint64_t message_id);
/* Decide an error answer {"error":code,"message":...} (printf style). */
__attribute__((format(printf, 5, 6))) void
intake_answer_error(kmdc_intake *in, kmdc_intake_result result, int status, const char *code,
                    const char *fmt, ...);
void intake_rejected(kmdc_intake *in);                       /* 403 rejected */
void intake_unavailable(kmdc_intake *in);                    /* 503 unavailable */
void intake_internal(kmdc_intake *in, const char *message);  /* 500 internal */
/* A store failure other than the ones an operation defines. */
void intake_store_failed(kmdc_intake *in, kmdc_store_rc rc);
/* The receipt repeats its answer: 200 for a success, else the error. */
void intake_repeat(kmdc_intake *in, const kmdc_receipt *rc);
/* The counter was spent by another upload while this one ran. */
void intake_spent_meanwhile(kmdc_intake *in);
/* A refusal after the keyblock authenticated: the counter spent, then the
 * answer (503 and nothing spent when the store cannot). */
__attribute__((format(printf, 4, 5))) void
intake_spend(kmdc_intake *in, int status, const char *code, const char *fmt, ...);

/* ---- steps (kmdc_intake_steps.c), in the order of the states ------------------ */

size_t intake_step_prefix(kmdc_intake *in, const uint8_t *p, size_t len);
void intake_step_sender(kmdc_intake *in);
void intake_step_check(kmdc_intake *in);
void intake_step_recipients(kmdc_intake *in);
void intake_step_payload(kmdc_intake *in, const uint8_t *p, size_t len);
void intake_step_end(kmdc_intake *in);
void intake_step_publish(kmdc_intake *in);
void intake_step_retry(kmdc_intake *in, int at_end);

/* Settle the batch sent last, if any (the store's upload_settle); a
 * failure is answered as the batch's.  KMDC_OK when it was written. */
kmdc_status intake_settle_batch(kmdc_intake *in);

#endif
