/*
 * mod_kmdc_store_mailbox.c - the PostgreSQL store: mailbox listing, fetch,
 * acknowledgement and message status.  (Being written: the endpoints do not
 * use these operations yet.)
 */
#include "mod_kmdc_store_pg.h"

kmdc_store_rc kmdc_pg_mailbox_list(kmdc_store *st, uint64_t serial, uint64_t *down_next,
                                   kmdc_mailbox_row_fn row, void *arg)
{ (void)st; (void)serial; (void)down_next; (void)row; (void)arg; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_fetch_open(kmdc_store *st, uint64_t serial, uint64_t id,
                                 kmdc_fetch **f, const uint8_t **head, size_t *head_len,
                                 uint64_t *payload_len)
{ (void)st; (void)serial; (void)id; (void)f; (void)head; (void)head_len; (void)payload_len;
  return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_fetch_next(kmdc_fetch *f, const uint8_t **data, size_t *len)
{ (void)f; (void)data; (void)len; return KMDC_STORE_ERROR; }
void kmdc_pg_fetch_close(kmdc_fetch *f) { (void)f; }
kmdc_store_rc kmdc_pg_ack(kmdc_store *st, uint64_t serial, uint64_t id, int *acked,
                          int *payload_deleted)
{ (void)st; (void)serial; (void)id; (void)acked; (void)payload_deleted; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_message_status(kmdc_store *st, uint64_t id, uint64_t sender,
                                     kmdc_message_info *out, kmdc_message_rcpt_fn fn,
                                     void *arg)
{ (void)st; (void)id; (void)sender; (void)out; (void)fn; (void)arg; return KMDC_STORE_ERROR; }
