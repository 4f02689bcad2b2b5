/*
 * kmdc_keyring.h - the master keys of a datacenter (docs/PROTOCOL.md,
 * secrets at rest): every loaded key unwraps the values it wrapped, the
 * highest id wraps new values.  The module loads its ring at start-up
 * (KmdcMasterKey); kmdcadm from --master-key.  Key bytes live in the ring
 * until its owner wipes them (kmdc_keyring_wipe).
 */
#ifndef KMDC_KEYRING_H
#define KMDC_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"
#include "kmdc_wrap.h"

/* One master key. */
typedef struct kmdc_master_key {
    uint32_t id;                             /* 1 .. 2^31-1 */
    uint8_t key[KMDC_MASTER_KEY_LEN];
} kmdc_master_key;

/* The keys of one datacenter. */
typedef struct kmdc_keyring {
    int n;                                   /* number of keys, >= 1 */
    kmdc_master_key *keys;                   /* n keys, in the order given */
    uint32_t newest;                         /* the highest id: it wraps */
} kmdc_keyring;

/* The key with this id, or NULL (ring may be NULL). */
const kmdc_master_key *kmdc_keyring_find(const kmdc_keyring *ring, uint32_t id);

/* The key that wraps new values, or NULL. */
const kmdc_master_key *kmdc_keyring_newest(const kmdc_keyring *ring);

/* Unwrap a 32-byte key of card `serial`, column `field`, chain counter
 * `counter` (0 for auth_key).  KMDC_ERR_NOTFOUND when the value names a
 * master key that is not in the ring; KMDC_ERR_AUTH when it does not belong
 * here.  out is wiped on failure. */
kmdc_status kmdc_keyring_unwrap(const kmdc_keyring *ring, uint64_t serial,
                                const char *field, uint64_t counter,
                                const uint8_t *wrapped, size_t wlen,
                                uint8_t out[32], kmdc_err *err);

/* Wrap a 32-byte key under the newest key into out[KMDC_WRAPPED_LEN]. */
kmdc_status kmdc_keyring_wrap(const kmdc_keyring *ring, uint64_t serial,
                              const char *field, uint64_t counter,
                              const uint8_t in[32], uint8_t out[KMDC_WRAPPED_LEN],
                              kmdc_err *err);

/* Wipe every key of the ring (the array itself stays). */
void kmdc_keyring_wipe(kmdc_keyring *ring);

#endif
