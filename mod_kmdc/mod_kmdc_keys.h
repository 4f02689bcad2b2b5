/*
 * mod_kmdc_keys.h - wrapping and unwrapping card secrets under the master
 * keys loaded at start-up (DESIGN 3.8).  The highest id wraps new values;
 * every loaded id unwraps.
 */
#ifndef MOD_KMDC_KEYS_H
#define MOD_KMDC_KEYS_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"
#include "kmdc_wrap.h"
#include "mod_kmdc_config.h"

/* Length of a wrapped 32-byte key. */
#define KMDC_WRAPPED_LEN (KMDC_WRAP_OVERHEAD + 32)

/* Unwrap a 32-byte key of card `serial`, column `field`, chain counter
 * `counter` (0 for auth_key).  KMDC_ERR_NOTFOUND when the value names a
 * master key that is not loaded; KMDC_ERR_AUTH when it does not belong here. */
kmdc_status kmdc_keys_unwrap(const kmdc_master_keys *keys, uint64_t serial,
                             const char *field, uint64_t counter,
                             const uint8_t *wrapped, size_t wlen,
                             uint8_t out[32], kmdc_err *err);

/* Wrap a 32-byte key under the newest master key into out[KMDC_WRAPPED_LEN]. */
kmdc_status kmdc_keys_wrap(const kmdc_master_keys *keys, uint64_t serial,
                           const char *field, uint64_t counter,
                           const uint8_t in[32], uint8_t out[KMDC_WRAPPED_LEN],
                           kmdc_err *err);

#endif
