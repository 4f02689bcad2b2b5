/*
 * mod_kmdc_store_pg.h - what the files of the PostgreSQL store share (and
 * nothing else includes): the handle, borrowing a connection for one
 * operation, and the operations each file defines.
 *
 *   mod_kmdc_store.c          the operation table, kmdc_store_pg(), helpers
 *   mod_kmdc_store_send.c     the intake: sender, receipts, slots, recipients,
 *                             uploads, publish, spend
 *   mod_kmdc_store_cards.c    request authentication, health, cards, activation
 *   mod_kmdc_store_mailbox.c  mailbox listing, fetch, acknowledgement, messages
 *
 * Every SQL string of the module lives in these files; statements are
 * parameterised, bigint/int/bytea travel in binary, arrays are bound as
 * binary arrays (kmdc_db_param_array), never spelled as text literals.
 */
#ifndef MOD_KMDC_STORE_PG_H
#define MOD_KMDC_STORE_PG_H

#include <jansson.h>

#include "mod_kmdc_config.h"
#include "mod_kmdc_db.h"
#include "mod_kmdc_store.h"

typedef struct kmdc_pg_store {
    kmdc_store base;              /* first: a kmdc_store * is a kmdc_pg_store * */
    request_rec *r;               /* the request served (pool, logging) */
    const kmdc_srv_conf *sc;      /* its server's configuration */
    kmdc_db_batch *deferred;      /* the nonce record, sent with the next
                                   * statement (nonce_record) */
    /* an upload batch sent and not yet settled (upload_append) */
    int up_pending;
    kmdc_db *up_db;               /* its connection, held until settled */
    kmdc_db_batch *up_batch;      /* its statement (from r->pool, reused) */
    int64_t *up_id;               /* where the settle puts the upload's id */
    int64_t up_sent_id;           /* the id it was sent with (0: new upload) */
} kmdc_pg_store;

#define KMDC_PG(st) ((kmdc_pg_store *)(st))

/* Borrow a connection for one operation: KMDC_STORE_OK (*db set, give it
 * back with kmdc_db_release), UNAVAILABLE or SCHEMA (*db NULL).  A deferred
 * nonce record goes with its first statement.  op names
 * the operation in the log of a failed statement (kmdc_pg_borrow passes the
 * calling function's name: "kmdc_pg_publish" is logged as "publish"). */
kmdc_store_rc kmdc_pg_borrow_for(kmdc_pg_store *ps, kmdc_db **db, const char *op);
#define kmdc_pg_borrow(ps, db) kmdc_pg_borrow_for((ps), (db), __func__)

/* The store's code for a statement that failed with rc (the connection is
 * rolled back and given back by the caller). */
kmdc_store_rc kmdc_pg_failed(kmdc_db_rc rc);

/* ---- column readers and statements every store file uses ------------------ */

/* A bytea column of a binary result of exactly len bytes, copied to out. */
int kmdc_pg_get_bytes(const PGresult *res, int row, int col, uint8_t *out, size_t len);

/* A text column (binary results hold its characters) copied NUL-terminated
 * into buf (cap bytes); 0 for NULL or a value that does not fit. */
int kmdc_pg_get_text(const PGresult *res, int row, int col, char *buf, size_t cap);

/* A counter column (bigint >= 0). */
int kmdc_pg_get_counter(const PGresult *res, int row, int col, uint64_t *v);

/* Run one statement that reads one row (binary: every column in binary):
 * OK with *res that row, NOTFOUND for none, ERROR for more, else the
 * failure's code (kmdc_pg_failed).  *res is cleared with r->pool or by the
 * caller with kmdc_db_clear, whatever the result. */
kmdc_store_rc kmdc_pg_row(kmdc_db *db, const char *sql, const kmdc_db_params *pp,
                          int binary, PGresult **res);

/* Run one statement whose result does not matter beyond its success. */
kmdc_db_rc kmdc_pg_run(kmdc_db *db, const char *sql, const kmdc_db_params *pp);

/* Into b: sql (parameters pp) in a transaction of its own, BEGIN ...
 * COMMIT, which waits for the disk only when durable; it commits before
 * whatever follows it in the round trip.  Returns the statement's index. */
int kmdc_pg_add_own_tx(kmdc_db_batch *b, const char *sql, const kmdc_db_params *pp,
                       int durable);

/* One audit row whose detail is the JSON object obj (the reference is
 * taken); never a secret, an address or a document name in it. */
kmdc_db_rc kmdc_pg_audit(kmdc_db *db, uint64_t serial, const char *event, json_t *obj);

/* The same, added to a batch (the batch fails when obj is NULL or cannot
 * be printed: no memory). */
void kmdc_pg_audit_add(kmdc_db_batch *b, uint64_t serial, const char *event, json_t *obj);

/* mod_kmdc_store_send.c */
kmdc_store_rc kmdc_pg_sender_load(kmdc_store *st, uint64_t serial, uint64_t seq,
                                  kmdc_sender *out);
kmdc_store_rc kmdc_pg_receipt_find(kmdc_store *st, uint64_t serial, uint64_t seq,
                                   kmdc_receipt *out);
kmdc_store_rc kmdc_pg_slot_take(kmdc_store *st, uint64_t serial, int max,
                                kmdc_lease *lease);
kmdc_store_rc kmdc_pg_slot_release(kmdc_store *st, const kmdc_lease *lease);
kmdc_store_rc kmdc_pg_recipients_resolve(kmdc_store *st,
                                         const char (*addr)[KMDC_ADDR_MAX + 1],
                                         size_t n, kmdc_recipient *out);
kmdc_store_rc kmdc_pg_upload_append(kmdc_store *st, int64_t *upload_id, uint64_t size,
                                    int idx, const uint8_t *data, size_t len,
                                    const kmdc_lease *lease);
kmdc_store_rc kmdc_pg_upload_settle(kmdc_store *st);
kmdc_store_rc kmdc_pg_upload_drop(kmdc_store *st, int64_t upload_id);
kmdc_store_rc kmdc_pg_publish(kmdc_store *st, const kmdc_publication *pub,
                              kmdc_publish_outcome *outcome, size_t *which);
kmdc_store_rc kmdc_pg_spend(kmdc_store *st, const kmdc_spending *sp);

/* mod_kmdc_store_cards.c */
kmdc_store_rc kmdc_pg_auth_load(kmdc_store *st, uint64_t serial, kmdc_auth_card *out);
kmdc_store_rc kmdc_pg_nonce_record(kmdc_store *st, uint64_t serial,
                                   const uint8_t *nonce, size_t len, int durable);
kmdc_store_rc kmdc_pg_settle(kmdc_store *st);
kmdc_store_rc kmdc_pg_health(kmdc_store *st);
kmdc_store_rc kmdc_pg_card_get(kmdc_store *st, uint64_t serial, kmdc_card_info *out);
kmdc_store_rc kmdc_pg_activate(kmdc_store *st, uint64_t serial, int failure_limit,
                               kmdc_activation_fn decide, void *arg,
                               kmdc_activation_result *result);

/* mod_kmdc_store_mailbox.c */
kmdc_store_rc kmdc_pg_mailbox_list(kmdc_store *st, uint64_t serial, uint64_t *down_next,
                                   kmdc_mailbox_row_fn row, void *arg);
kmdc_store_rc kmdc_pg_mailbox_watch(kmdc_store *st, uint64_t serial, int seconds);
/*
 * Into b, after its COMMIT: NOTIFY kmdc_mailbox for each of the n serials
 * whose mailbox a long-poll watches (mailbox_watchers), in a transaction of
 * its own that does not wait for the disk; a mailbox nobody watches costs
 * a read and no transaction.  Notifying after the COMMIT, not inside the
 * transaction, keeps NOTIFY's database-wide lock out of the commit's wait
 * for the disk.  Returns the statement's index.
 */
int kmdc_pg_wake_add(kmdc_db_batch *b, apr_pool_t *p, const uint64_t *serials, int n);
/*
 * The run of a batch whose statement `commit` is its COMMIT and whose
 * statements after it only wake long-polls: KMDC_DB_OK when the COMMIT was
 * carried out, whatever became of the rest (logged), else dbrc.
 */
kmdc_db_rc kmdc_pg_committed(kmdc_db_batch *b, int commit, kmdc_db_rc dbrc);
kmdc_store_rc kmdc_pg_fetch_open(kmdc_store *st, uint64_t serial, uint64_t id,
                                 kmdc_fetch **f, const uint8_t **head, size_t *head_len,
                                 uint64_t *payload_len);
kmdc_store_rc kmdc_pg_fetch_next(kmdc_fetch *f, const uint8_t **data, size_t *len);
void kmdc_pg_fetch_close(kmdc_fetch *f);
kmdc_store_rc kmdc_pg_ack(kmdc_store *st, uint64_t serial, uint64_t id, int *acked,
                          int *payload_deleted);
kmdc_store_rc kmdc_pg_message_status(kmdc_store *st, uint64_t id, uint64_t sender,
                                     kmdc_message_info *out, kmdc_message_rcpt_fn fn,
                                     void *arg);

#endif
