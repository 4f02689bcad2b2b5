/*
 * memstore.h - an in-memory kmdc_store (lib/kmdc_store.h) for the unit tests
 * and the fuzz target of the send intake.
 *
 * It fills in the operations of the intake (sender_load .. spend) and leaves
 * every other one NULL.  Its semantics are the comments of kmdc_store.h taken
 * literally, checked as strictly as PostgreSQL's constraints would:
 *  - publish: the sender's up_next must still be <= seq (else SPENT), the
 *    sender active (else SENDER_INACTIVE), every recipient active (else
 *    RECIPIENT_INACTIVE, *which), every recipient under its quota (pending
 *    count + 1 <= quota_count and pending bytes + quota_add <= quota_bytes,
 *    else QUOTA, *which); then each delivery is sealed through pub->seal in
 *    RCPT order with the recipient's down_next and wrapped down chain, and
 *    only when all succeeded is anything written (message, deliveries, down
 *    chains, the sender's up chain, the receipt, an audit row; the lease is
 *    released).  All or nothing.
 *  - spend: CONFLICT when up_next > seq; else the chain advances, a receipt
 *    of scope KEYBLOCK (hash = prefix_hash) and an audit row are written and
 *    the lease released.
 *  - upload_drop never drops an upload a message refers to (it counts the
 *    attempt in drop_referenced instead).
 *  - upload_append settles the batch before, then only copies the new one
 *    and returns; the batch is written (or refused: BUSY when the lease is
 *    gone, an injected UNAVAILABLE) when it is settled, by upload_settle or
 *    the next upload_append.  Any other operation called while a batch is
 *    pending is a violation (it is settled then), and publish then answers
 *    ERROR without publishing.
 * Anything a correct caller never does (a batch index out of order, a
 * payload whose length is not the publication's, a message id used twice, a
 * head longer than its cap, an answer too long for a receipt) is a
 * violation: counted, described in `violation`, and answered ERROR.
 *
 * For the tests it adds: failure injection (the Nth call of an operation, or
 * every call, answers UNAVAILABLE; a publish that commits and then answers
 * UNAVAILABLE, as a lost COMMIT answer; a publish that finds its counter
 * spent by a concurrent retry), a call counter per operation, lease expiry,
 * and read-back helpers.
 */
#ifndef KMDC_MEMSTORE_H
#define KMDC_MEMSTORE_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_keyring.h"
#include "kmdc_store.h"

/* The operations, for counters and failure injection. */
typedef enum memstore_op {
    MS_SENDER_LOAD = 0,
    MS_RECEIPT_FIND,
    MS_SLOT_TAKE,
    MS_SLOT_RELEASE,
    MS_RECIPIENTS_RESOLVE,
    MS_UPLOAD_APPEND,
    MS_UPLOAD_DROP,
    MS_PUBLISH,
    MS_SPEND,
    MS_N_OPS
} memstore_op;

/* "sender_load", ... */
const char *memstore_op_name(memstore_op op);

typedef struct ms_card {
    uint64_t serial;
    char address[KMDC_ADDR_MAX + 1];
    kmdc_card_status status;
    uint64_t up_next;
    uint8_t up_chain[KMDC_WRAPPED_LEN];      /* CK_{up_next}, wrapped */
    uint64_t down_next;
    uint8_t down_chain[KMDC_WRAPPED_LEN];    /* CK_{down_next}, wrapped */
    int64_t extra_count, extra_bytes;        /* pending beyond the deliveries held */
} ms_card;

typedef struct ms_receipt {
    uint64_t serial, seq;
    kmdc_receipt r;
} ms_receipt;

typedef struct ms_lease {
    uint64_t serial;
    int slot;
    uint64_t holder;
    int expired;                             /* free for slot_take */
} ms_lease;

typedef struct ms_batch {
    int idx;
    uint8_t *data;
    size_t len;
} ms_batch;

typedef struct ms_upload {
    int64_t id;
    uint64_t size;                           /* document bytes */
    ms_batch *batches;
    size_t n_batches, cap;
    uint64_t bytes;                          /* sum of the batches */
} ms_upload;

typedef struct ms_message {
    uint64_t id, sender, seq, size, payload_len;
    int64_t upload_id;
    size_t n_rcpt;
    uint64_t rcpt[KMDC_RCPT_MAX];
} ms_message;

typedef struct ms_delivery {
    uint64_t message_id, recipient, seq;
    uint8_t *head;
    size_t head_len;
    int64_t ttl;
} ms_delivery;

/* The upload batch sent and not yet settled (upload_append .. upload_settle):
 * written, or refused, when it is settled. */
typedef struct ms_pending {
    int active;
    int64_t *upload_id;                      /* the caller's, set at the settle */
    int64_t sent_id;                         /* *upload_id when it was sent */
    uint64_t size;
    int idx;
    uint8_t *data;                           /* a copy */
    size_t len;
    int has_lease;
    kmdc_lease lease;
    int fail;                                /* injected: answers UNAVAILABLE */
} ms_pending;

typedef struct memstore {
    kmdc_store base;                         /* first: a memstore is a kmdc_store */

    ms_card *cards;
    size_t n_cards, cap_cards;
    ms_receipt *receipts;
    size_t n_receipts, cap_receipts;
    ms_lease *leases;
    size_t n_leases, cap_leases;
    ms_upload *uploads;
    size_t n_uploads, cap_uploads;
    ms_message *messages;
    size_t n_messages, cap_messages;
    ms_delivery *deliveries;
    size_t n_deliveries, cap_deliveries;
    int64_t next_upload_id;
    uint64_t next_holder;
    unsigned long audit_rows;

    ms_pending pend;                         /* one batch in flight at most */
    unsigned long sent_batches;              /* upload_append calls that sent one */
    unsigned long settles;                   /* batches settled (written or not) */

    /* counters and failure injection */
    unsigned long calls[MS_N_OPS];           /* every call, failed ones too */
    unsigned long fail_at[MS_N_OPS];         /* this call number answers UNAVAILABLE */
    int fail_always[MS_N_OPS];               /* every call answers UNAVAILABLE */
    unsigned long failures;                  /* UNAVAILABLE answers injected */
    int fail_on_send;                        /* an injected upload_append failure
                                              * answers at once (nothing sent), not
                                              * when the batch is settled */
    unsigned long publish_lost_at;           /* this publish commits, then UNAVAILABLE */
    int publish_lost_fired;
    int publish_concurrent;                  /* next publish: 1 same hash, 2 other hash */
    void (*before_resolve)(void *);          /* run once, first thing in the next
                                              * recipients_resolve (a race) */
    void *before_resolve_arg;
    int publish_concurrent_fired;

    /* what a correct caller never does */
    unsigned long violations;
    char violation[256];                     /* the first one */
    unsigned long drop_referenced;           /* upload_drop of a published upload */
    unsigned long inline_publications;       /* publish with the payload inside */
} memstore;

/* A new, empty store (NULL when out of memory). */
memstore *memstore_new(void);
void memstore_free(memstore *ms);

/* Add a card with raw chain keys CK_0 of each chain (counters 0), wrapped
 * under ring's newest key as the intake unwraps them.  0 on success. */
int memstore_add_card(memstore *ms, const kmdc_keyring *ring, uint64_t serial,
                      const char *address, kmdc_card_status status,
                      const uint8_t uck[32], const uint8_t dck[32]);

/* Move a card's up chain to counter up_next, ck being CK_0 (it is walked
 * forward and wrapped).  0 on success. */
int memstore_set_up(memstore *ms, const kmdc_keyring *ring, uint64_t serial,
                    uint64_t up_next, const uint8_t ck0[32]);

/* The card, or NULL.  The pointer is valid until the next change. */
ms_card *memstore_card(memstore *ms, uint64_t serial);

/* Unwrap a card's current up (up = 1) or down chain key.  0 on success. */
int memstore_card_chain(memstore *ms, const kmdc_keyring *ring, uint64_t serial,
                        int up, uint8_t ck[32]);

/* Insert a receipt as is (the tests' retries).  0 on success. */
int memstore_add_receipt(memstore *ms, uint64_t serial, uint64_t seq,
                         const kmdc_receipt *r);

/* The receipt of (serial, seq), or NULL. */
const ms_receipt *memstore_receipt(const memstore *ms, uint64_t serial, uint64_t seq);

/* Leases of serial (0: of every card); expired ones counted only when asked. */
size_t memstore_leases(const memstore *ms, uint64_t serial, int with_expired);

/* Mark every lease of serial (0: all) expired, as when their holders died. */
void memstore_expire_leases(memstore *ms, uint64_t serial);

/* 1 when two live leases share (serial, slot), or a slot is negative. */
int memstore_slots_conflict(const memstore *ms);

/* Uploads no message refers to. */
size_t memstore_orphans(const memstore *ms);

/* The upload, or NULL. */
const ms_upload *memstore_upload(const memstore *ms, int64_t id);

/* The message, or NULL. */
const ms_message *memstore_message(const memstore *ms, uint64_t id);

/* The payload of an upload, its batches in order, in a malloc'd buffer
 * (*len set; NULL when there is no such upload or no memory). */
uint8_t *memstore_payload(const memstore *ms, int64_t id, size_t *len);

/* Deliveries to recipient, in the order written: the i-th one, or NULL. */
const ms_delivery *memstore_delivery(const memstore *ms, uint64_t recipient, size_t i);
size_t memstore_deliveries(const memstore *ms, uint64_t recipient);

/* Deliveries of one message. */
size_t memstore_message_deliveries(const memstore *ms, uint64_t message_id);

/* What a recipient's mailbox holds now, as recipients_resolve reports it. */
void memstore_pending(const memstore *ms, uint64_t serial, int64_t *count,
                      int64_t *bytes);

/* Make the n-th call from now (n >= 1) of op answer UNAVAILABLE (for
 * upload_append: when that batch is settled, unless fail_on_send is set). */
void memstore_fail_nth(memstore *ms, memstore_op op, unsigned long n);

/* Make every call of op answer UNAVAILABLE (on 0: stop). */
void memstore_fail_always(memstore *ms, memstore_op op, int on);

/* Make the n-th publish from now commit and then answer UNAVAILABLE (the
 * answer to its COMMIT was lost). */
void memstore_publish_lost_nth(memstore *ms, unsigned long n);

/* Make the next publish find its counter spent by a concurrent upload that
 * committed a receipt first: with the publication's own hashes (same = 1)
 * or other ones (same = 0).  Nothing else is written; the sender's up_next
 * moves past the counter. */
void memstore_publish_concurrent(memstore *ms, int same);

/* Run fn(arg) once, at the start of the next recipients_resolve: another
 * upload that commits between this one's sender_load and its recipients. */
void memstore_before_resolve(memstore *ms, void (*fn)(void *), void *arg);

/* Clear every injected failure and hook. */
void memstore_fail_clear(memstore *ms);

/* Calls of the operations that write (slot_take, slot_release,
 * upload_append, upload_drop, publish, spend). */
unsigned long memstore_write_calls(const memstore *ms);

#endif
