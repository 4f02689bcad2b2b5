/*
 * mod_kmdc_store_cards.c - the PostgreSQL store: request authentication,
 * health, cards and activation.  (Being written: the endpoints do not use
 * these operations yet.)
 */
#include "mod_kmdc_store_pg.h"

kmdc_store_rc kmdc_pg_auth_load(kmdc_store *st, uint64_t serial, kmdc_auth_card *out)
{ (void)st; (void)serial; (void)out; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_nonce_record(kmdc_store *st, uint64_t serial,
                                   const uint8_t *nonce, size_t len)
{ (void)st; (void)serial; (void)nonce; (void)len; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_health(kmdc_store *st)
{ (void)st; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_card_get(kmdc_store *st, uint64_t serial, kmdc_card_info *out)
{ (void)st; (void)serial; (void)out; return KMDC_STORE_ERROR; }
kmdc_store_rc kmdc_pg_activate(kmdc_store *st, uint64_t serial, int failure_limit,
                               kmdc_activation_fn decide, void *arg,
                               kmdc_activation_result *result)
{ (void)st; (void)serial; (void)failure_limit; (void)decide; (void)arg; (void)result;
  return KMDC_STORE_ERROR; }
