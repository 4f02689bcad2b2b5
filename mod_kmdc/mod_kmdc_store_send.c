/* mod_kmdc_store_send.c - the PostgreSQL store: the intake (being written). */
#include "mod_kmdc_store_pg.h"

kmdc_store_rc kmdc_pg_sender_load(kmdc_store *st, uint64_t serial, uint64_t seq,
                                  kmdc_sender *out)
{ (void)st; (void)serial; (void)seq; (void)out; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_receipt_find(kmdc_store *st, uint64_t serial, uint64_t seq,
                                   kmdc_receipt *out)
{ (void)st; (void)serial; (void)seq; (void)out; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_slot_take(kmdc_store *st, uint64_t serial, int max, kmdc_lease *lease)
{ (void)st; (void)serial; (void)max; (void)lease; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_slot_release(kmdc_store *st, const kmdc_lease *lease)
{ (void)st; (void)lease; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_recipients_resolve(kmdc_store *st,
                                         const char (*addr)[KMDC_ADDR_MAX + 1],
                                         size_t n, kmdc_recipient *out)
{ (void)st; (void)addr; (void)n; (void)out; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_upload_append(kmdc_store *st, int64_t *upload_id, uint64_t size,
                                    int idx, const uint8_t *data, size_t len,
                                    const kmdc_lease *lease)
{ (void)st; (void)upload_id; (void)size; (void)idx; (void)data; (void)len; (void)lease;
  return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_upload_drop(kmdc_store *st, int64_t upload_id)
{ (void)st; (void)upload_id; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_publish(kmdc_store *st, const kmdc_publication *pub,
                              kmdc_publish_outcome *outcome, size_t *which)
{ (void)st; (void)pub; (void)outcome; (void)which; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_spend(kmdc_store *st, const kmdc_spending *sp)
{ (void)st; (void)sp; return KMDC_STORE_ERROR; }
