/*
 * kmdc_store.h - the datacenter's store: typed rows and operations, no SQL,
 * no libpq, no httpd.
 *
 * The module has three layers (docs/PROTOCOL.md section 4): the endpoint
 * speaks HTTP, the intake (kmdc_intake.h) is a state machine over bytes, and
 * the store keeps the cards, uploads, messages, deliveries, receipts and
 * nonces.  A store is a table of operations, like mod_md's md_store_t: the
 * PostgreSQL implementation (mod_kmdc/mod_kmdc_store*.c) owns every SQL
 * string, transaction, column number, binary encoding and SQLSTATE; the unit
 * tests use an in-memory one (tests/memstore.c), which fills in only the
 * operations of the intake.
 *
 * Rules every implementation keeps:
 *  - An operation borrows a database connection for its own duration and
 *    gives it back before it returns (fetch_open .. fetch_close and
 *    upload_append .. upload_settle excepted), so nothing is held while the
 *    caller waits on the network.  A batch sent by upload_append is settled
 *    before the caller waits for its client's bytes, and before any other
 *    operation of the same store.
 *  - KMDC_STORE_UNAVAILABLE is a passing failure: nothing was changed (or,
 *    for a COMMIT whose answer was lost, the outcome is unknown and a
 *    byte-identical retry is answered from the receipt).  The implementation
 *    has logged why; the caller only answers 503.
 *  - Rows are copied into caller-owned structs or handed to a callback one at
 *    a time; no pointer into the store outlives the call unless said.
 *  - Secrets never pass through here unwrapped: chain keys and request keys
 *    travel wrapped (kmdc_keyring.h), access codes as their HMAC.
 */
#ifndef KMDC_STORE_H
#define KMDC_STORE_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"
#include "kmdc_tlv.h"
#include "kmdc_wrap.h"

/* A receipt's stored answer (a JSON text) is at most this long. */
#define KMDC_RECEIPT_ANSWER_MAX 1024

/* Longest head (down header || u32 kb_len || keyblock) of one delivery. */
#define KMDC_HEAD_MAX (40 + 4 + 16384 + 48)

typedef enum kmdc_store_rc {
    KMDC_STORE_OK = 0,
    KMDC_STORE_NOTFOUND,      /* no such row (card, delivery, message) */
    KMDC_STORE_CONFLICT,      /* seen before / spent meanwhile (per operation) */
    KMDC_STORE_BUSY,          /* every upload slot of the card is taken */
    KMDC_STORE_UNAVAILABLE,   /* the database cannot be used now (passing) */
    KMDC_STORE_SCHEMA,        /* connected, but the schema version is wrong */
    KMDC_STORE_ERROR,         /* stored data is unreadable or inconsistent */
    KMDC_STORE_REPLAY         /* the request's nonce, whose record was
                               * deferred to this operation (nonce_record),
                               * was recorded before: nothing was done */
} kmdc_store_rc;

typedef enum kmdc_card_status {
    KMDC_CARD_ST_ISSUED = 1,     /* not yet activated */
    KMDC_CARD_ST_ACTIVE,
    KMDC_CARD_ST_SUSPENDED,
    KMDC_CARD_ST_REVOKED
} kmdc_card_status;

/* "issued", "active", "suspended", "revoked" ("unknown" otherwise). */
const char *kmdc_card_status_name(kmdc_card_status st);

/* Parse one of those names; 0 when it is none of them. */
kmdc_card_status kmdc_card_status_parse(const char *name);

/* What a receipt's hash covers (docs/PROTOCOL.md, receipts). */
typedef enum kmdc_receipt_scope {
    KMDC_SCOPE_ENVELOPE = 1,  /* the whole envelope (an accepted upload) */
    KMDC_SCOPE_KEYBLOCK       /* header || kb_len || keyblock (refused after auth) */
} kmdc_receipt_scope;

/* One spent up counter. */
typedef struct kmdc_receipt {
    kmdc_receipt_scope scope;
    uint8_t hash[32];               /* SHA-256 over the scope */
    int has_prefix_hash;            /* 0 for receipts older than schema 2 */
    uint8_t prefix_hash[32];        /* SHA-256 of header || kb_len || keyblock */
    int http_status;                /* the status first given (201 success) */
    char answer[KMDC_RECEIPT_ANSWER_MAX]; /* the JSON body first given */
    uint64_t message_id;            /* the message published, 0 for none */
} kmdc_receipt;

/* ---- the intake (send) ---------------------------------------------------- */

/* The sending card as step 1 of the intake reads it (no lock). */
typedef struct kmdc_sender {
    kmdc_card_status status;
    char address[KMDC_ADDR_MAX + 1];
    uint64_t up_next;
    uint8_t up_chain[KMDC_WRAPPED_LEN];  /* CK_{up_next}, wrapped */
    int has_receipt;                     /* a receipt for (serial, seq) exists */
    kmdc_receipt receipt;
} kmdc_sender;

/* An upload slot of a card (KmdcMaxUploadsPerCard), held as a lease that
 * expires by itself when its holder dies. */
typedef struct kmdc_lease {
    uint64_t serial;
    int slot;                       /* 0 .. max - 1 */
    uint64_t holder;                /* random, identifies this upload */
} kmdc_lease;

/* One RCPT resolved, with what its mailbox holds now. */
typedef struct kmdc_recipient {
    uint64_t serial;                /* 0: no active card has this address */
    int64_t pending_count;          /* queued deliveries */
    int64_t pending_bytes;          /* their stored bytes (head + payload) */
} kmdc_recipient;

/*
 * Seal recipient i's delivery while its row is locked: down_next and
 * down_chain (wrapped CK_{down_next}) are the row's; write the head (down
 * header || u32 kb_len || keyblock, at most head_cap = KMDC_HEAD_MAX bytes)
 * and the wrapped CK_{down_next + 1}.  Anything but KMDC_OK rolls the
 * publication back (KMDC_STORE_ERROR).
 */
typedef kmdc_status (*kmdc_seal_delivery_fn)(void *arg, size_t i, uint64_t serial,
                                             uint64_t down_next,
                                             const uint8_t down_chain[KMDC_WRAPPED_LEN],
                                             uint8_t *head, size_t head_cap,
                                             size_t *head_len,
                                             uint8_t down_chain_next[KMDC_WRAPPED_LEN]);

/* Everything step 3 publishes in one transaction. */
typedef struct kmdc_publication {
    uint64_t serial, seq;                       /* the sender and its counter */
    uint8_t up_chain_next[KMDC_WRAPPED_LEN];    /* CK_{seq+1}, wrapped */
    uint64_t message_id;                        /* random, 1 .. 2^63-1 */
    uint64_t size;                              /* SIZE of the document */
    uint64_t payload_len;                       /* bytes of the stored payload */
    int64_t upload_id;                          /* upload_append's id, or 0: */
    const uint8_t *inline_data;                 /* the whole payload, stored */
    size_t inline_len;                          /* with the publication */
    size_t n_rcpt;
    uint64_t rcpt[KMDC_RCPT_MAX];               /* recipients, in RCPT order */
    int64_t quota_count, quota_bytes;           /* KmdcMailboxQuota, checked again */
    uint64_t quota_add;                         /* bytes one delivery counts */
    int64_t ttl;                                /* seconds a delivery is kept */
    uint8_t envelope_hash[32], prefix_hash[32]; /* for the receipt */
    const char *answer;                         /* the 201 body, for the receipt */
    const kmdc_lease *lease;                    /* released with it; may be NULL */
    kmdc_seal_delivery_fn seal;
    void *seal_arg;
} kmdc_publication;

/* Why a publication was not made although the database answered. */
typedef enum kmdc_publish_outcome {
    KMDC_PUBLISHED = 0,
    KMDC_PUBLISH_SPENT,             /* the counter was spent meanwhile */
    KMDC_PUBLISH_SENDER_INACTIVE,   /* the sender is no longer active */
    KMDC_PUBLISH_RECIPIENT_INACTIVE,/* recipient *which is no longer active */
    KMDC_PUBLISH_QUOTA,             /* recipient *which is over its quota */
    KMDC_PUBLISH_UNKNOWN            /* with UNAVAILABLE: the COMMIT was sent and
                                     * its answer lost; it may have committed */
} kmdc_publish_outcome;

/* A refusal after authentication: spend the counter (docs/PROTOCOL.md 4). */
typedef struct kmdc_spending {
    uint64_t serial, seq;
    uint8_t up_chain_next[KMDC_WRAPPED_LEN];    /* CK_{seq+1}, wrapped */
    uint8_t prefix_hash[32];                    /* the receipt's hash */
    int http_status;                            /* the answer given */
    const char *answer;                         /* its JSON body */
    const char *error;                          /* its error code (audit) */
    const kmdc_lease *lease;                    /* released with it; may be NULL */
} kmdc_spending;

/* ---- request authentication, cards, activation ---------------------------- */

typedef struct kmdc_auth_card {
    kmdc_card_status status;
    uint8_t auth_key[KMDC_WRAPPED_LEN];         /* AK, wrapped (counter 0) */
} kmdc_auth_card;

typedef struct kmdc_card_info {
    kmdc_card_status status;
    int locked;                                 /* five failed activations */
    uint64_t up_next, down_next;
} kmdc_card_info;

/* The card row an activation sees, locked. */
typedef struct kmdc_activation {
    kmdc_card_status status;
    int locked;
    int code_expired;                           /* no code, or past its expiry */
    int has_access_mac;
    uint8_t access_mac[32];
    uint32_t key_id;                            /* master key of the code's HMAC */
    uint64_t up_next, down_next;
    uint8_t up_chain[KMDC_WRAPPED_LEN];
    uint8_t down_chain[KMDC_WRAPPED_LEN];
    uint8_t auth_key[KMDC_WRAPPED_LEN];
} kmdc_activation;

typedef enum kmdc_activation_verdict {
    KMDC_ACTIVATION_ABORT = 0,      /* change nothing (roll back) */
    KMDC_ACTIVATION_FAIL,           /* count a failed attempt (lock at the limit) */
    KMDC_ACTIVATION_ACCEPT          /* store the rotated keys, card active */
} kmdc_activation_verdict;

/* The rotated keys an accepted activation stores. */
typedef struct kmdc_activation_keys {
    uint8_t up_chain[KMDC_WRAPPED_LEN];
    uint8_t down_chain[KMDC_WRAPPED_LEN];
    uint8_t auth_key[KMDC_WRAPPED_LEN];
    uint32_t key_id;                            /* the master key that wrapped them */
} kmdc_activation_keys;

/* Decide on the locked row; fill *keys when accepting. */
typedef kmdc_activation_verdict (*kmdc_activation_fn)(void *arg,
                                                      const kmdc_activation *row,
                                                      kmdc_activation_keys *keys);

/* What activate() did. */
typedef struct kmdc_activation_result {
    kmdc_activation_verdict verdict;
    int64_t failures;               /* after a FAIL: failed attempts so far */
    int locked;                     /* after a FAIL: the card is now locked */
} kmdc_activation_result;

/* ---- mailboxes and messages ---------------------------------------------- */

typedef struct kmdc_mailbox_entry {
    uint64_t id, seq;
    int64_t size;                               /* head + payload bytes */
    int64_t created_ms;                         /* Unix ms */
} kmdc_mailbox_entry;

/* One row of a listing; return non-zero to stop (the listing fails). */
typedef int (*kmdc_mailbox_row_fn)(void *arg, const kmdc_mailbox_entry *e);

typedef struct kmdc_message_info {
    int64_t created_ms;
    uint64_t size;
} kmdc_message_info;

/* One recipient of a message (state "queued", "delivered" or "expired");
 * return non-zero to stop (the call fails). */
typedef int (*kmdc_message_rcpt_fn)(void *arg, const char *address, const char *state);

/* A delivery being streamed (fetch_open .. fetch_close). */
typedef struct kmdc_fetch kmdc_fetch;

/* ---- the operations -------------------------------------------------------- */

typedef struct kmdc_store kmdc_store;

typedef struct kmdc_store_ops {
    /* the intake */

    /* The card (no lock) and, in the same read, the receipt of (serial, seq)
     * if there is one.  NOTFOUND: no such card. */
    kmdc_store_rc (*sender_load)(kmdc_store *st, uint64_t serial, uint64_t seq,
                                 kmdc_sender *out);
    /* The receipt of (serial, seq).  NOTFOUND: none. */
    kmdc_store_rc (*receipt_find)(kmdc_store *st, uint64_t serial, uint64_t seq,
                                  kmdc_receipt *out);
    /* Take a free slot of serial among 0 .. max-1 (an expired lease is free);
     * BUSY when none.  Slots of two cards never share anything. */
    kmdc_store_rc (*slot_take)(kmdc_store *st, uint64_t serial, int max,
                               kmdc_lease *lease);
    /* Give the slot back (a missing lease is not an error). */
    kmdc_store_rc (*slot_release)(kmdc_store *st, const kmdc_lease *lease);
    /* Resolve n addresses (each matching the address rule) to active cards,
     * out[i] for addr[i]; no address is special. */
    kmdc_store_rc (*recipients_resolve)(kmdc_store *st,
                                        const char (*addr)[KMDC_ADDR_MAX + 1],
                                        size_t n, kmdc_recipient *out);
    /* Append batch idx (from 0, consecutive) of an upload's payload, in two
     * halves so the caller can go on reading while the database writes it.
     * upload_append first settles the batch still pending (as upload_settle;
     * when that failed it returns its failure and sends nothing), then sends
     * batch idx and returns without waiting: OK (the batch is pending; data
     * may be reused at once) or a failure to send it (nothing pending).  The
     * store holds one connection while a batch is pending.
     * upload_settle waits for the pending batch's answer, gives the
     * connection back and returns it (OK when nothing is pending):
     * *upload_id 0 at the append creates the upload (of `size` document
     * bytes) first, and the settle sets *upload_id (which must stay valid
     * until then: batch idx + 1 is sent only after batch idx settled, so it
     * has the id).  The lease (may be NULL) is renewed; BUSY (nothing
     * written) when it expired and another upload took its slot meanwhile;
     * UNAVAILABLE or ERROR otherwise.  Nothing may be published while a
     * batch is pending (publish refuses), and upload_drop, spend and
     * slot_release settle a pending batch first, whatever its answer. */
    kmdc_store_rc (*upload_append)(kmdc_store *st, int64_t *upload_id, uint64_t size,
                                   int idx, const uint8_t *data, size_t len,
                                   const kmdc_lease *lease);
    kmdc_store_rc (*upload_settle)(kmdc_store *st);
    /* Drop an upload no message refers to (a failure leaves an orphan for
     * `kmdcadm purge`). */
    kmdc_store_rc (*upload_drop)(kmdc_store *st, int64_t upload_id);
    /* Step 3: lock the sender and the recipients in serial order, check them
     * again, seal each delivery through pub->seal, write message, deliveries,
     * chains, receipt and audit row, release the lease, COMMIT, wake the
     * recipients' long-polls.  OK with *outcome KMDC_PUBLISHED, or OK with
     * another outcome (nothing written; *which names the recipient index);
     * UNAVAILABLE (nothing written, or *outcome KMDC_PUBLISH_UNKNOWN when the
     * COMMIT's answer was lost); ERROR (a seal failed or a row is
     * unreadable, or the caller left an upload batch pending: it is settled
     * and nothing is published). */
    kmdc_store_rc (*publish)(kmdc_store *st, const kmdc_publication *pub,
                             kmdc_publish_outcome *outcome, size_t *which);
    /* Spend a counter refused after authentication: advance the chain, write
     * the receipt and an audit row, release the lease, in one transaction.
     * CONFLICT: the counter was spent meanwhile (nothing written). */
    kmdc_store_rc (*spend)(kmdc_store *st, const kmdc_spending *sp);

    /* request authentication */

    /* NOTFOUND: no such card. */
    kmdc_store_rc (*auth_load)(kmdc_store *st, uint64_t serial, kmdc_auth_card *out);
    /* Record (serial, nonce); CONFLICT when it was recorded before.  Kept
     * whatever happens to the request.  durable 0 lets the record commit
     * without waiting for the disk (a crash may forget the last moments'
     * nonces: docs/PROTOCOL.md, request authentication), and lets the store
     * defer it to the request's next operation, in the same round trip:
     * that operation then answers REPLAY instead of doing anything when the
     * nonce was recorded before.  A request that answers without another
     * operation calls settle() first. */
    kmdc_store_rc (*nonce_record)(kmdc_store *st, uint64_t serial,
                                  const uint8_t *nonce, size_t len, int durable);
    /* Carry out a deferred nonce record now: OK (or nothing was deferred),
     * REPLAY, or a failure. */
    kmdc_store_rc (*settle)(kmdc_store *st);

    /* cards */

    /* OK when the database answers with KMDC_SCHEMA_VERSION; SCHEMA or
     * UNAVAILABLE otherwise. */
    kmdc_store_rc (*health)(kmdc_store *st);
    /* NOTFOUND: no such card. */
    kmdc_store_rc (*card_get)(kmdc_store *st, uint64_t serial, kmdc_card_info *out);
    /* Lock the card's row, let decide() judge it, and store its verdict in
     * the same transaction (a FAIL is committed too, with an audit row; at
     * failure_limit failures the card locks).  NOTFOUND: no such card. */
    kmdc_store_rc (*activate)(kmdc_store *st, uint64_t serial, int failure_limit,
                              kmdc_activation_fn decide, void *arg,
                              kmdc_activation_result *result);

    /* mailboxes */

    /* In one snapshot: the card's down_next and its queued, unexpired
     * deliveries in seq order.  NOTFOUND: no such card. */
    kmdc_store_rc (*mailbox_list)(kmdc_store *st, uint64_t serial, uint64_t *down_next,
                                  kmdc_mailbox_row_fn row, void *arg);
    /* A long-poll of serial's mailbox is about to read it and may wait up to
     * `seconds`: record that the mailbox is watched, committed before that
     * read (deferred into the next operation's round trip, as a non-durable
     * nonce record is), so that a change committed after the read wakes it.
     * A change of a mailbox nobody watches sends no wake-up at all. */
    kmdc_store_rc (*mailbox_watch)(kmdc_store *st, uint64_t serial, int seconds);
    /* Start streaming delivery id of serial's mailbox (queued, unexpired) in
     * one snapshot: *head (valid until fetch_close) and the payload length.
     * The first payload row is read here, so a lost payload is ERROR before
     * anything is answered.  NOTFOUND: no such delivery.  The connection is
     * held until fetch_close. */
    kmdc_store_rc (*fetch_open)(kmdc_store *st, uint64_t serial, uint64_t id,
                                kmdc_fetch **f, const uint8_t **head, size_t *head_len,
                                uint64_t *payload_len);
    /* The next run of payload bytes (*data valid until the next call); *len 0
     * at the end.  ERROR when a row is missing or of the wrong length. */
    kmdc_store_rc (*fetch_next)(kmdc_fetch *f, const uint8_t **data, size_t *len);
    /* End the stream and give the connection back.  Accepts NULL. */
    void (*fetch_close)(kmdc_fetch *f);
    /* Acknowledge: tombstone the delivery, drop the payload once no recipient
     * still has it queued, wake the mailbox's long-polls.  *acked 0 when it
     * was acknowledged before.  NOTFOUND: not in this mailbox. */
    kmdc_store_rc (*ack)(kmdc_store *st, uint64_t serial, uint64_t id, int *acked,
                         int *payload_deleted);
    /* The sender's view of message id (NOTFOUND unless sender sent it): its
     * time and size, then each recipient in RCPT order. */
    kmdc_store_rc (*message_status)(kmdc_store *st, uint64_t id, uint64_t sender,
                                    kmdc_message_info *out, kmdc_message_rcpt_fn fn,
                                    void *arg);
} kmdc_store_ops;

/* Every implementation's handle starts with this. */
struct kmdc_store {
    const kmdc_store_ops *ops;
};

#endif
