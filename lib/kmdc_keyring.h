/*
 * kmdc_keyring.h - the master keys of a datacenter (docs/PROTOCOL.md,
 * secrets at rest): every loaded key unwraps the values it wrapped, the
 * highest id wraps new values.  The module loads its ring at start-up
 * (KmdcMasterKey); kmdcadm from --master-key; both with kmdc_keyring_load.
 * Key bytes live in the ring until its owner wipes them (kmdc_keyring_free,
 * or kmdc_keyring_wipe for a ring whose array the owner allocated).
 */
#ifndef KMDC_KEYRING_H
#define KMDC_KEYRING_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"
#include "kmdc_wrap.h"

/* The highest master key id (ids are 1 .. 2^31-1, docs/PROTOCOL.md). */
#define KMDC_KEYRING_ID_MAX UINT32_C(2147483647)

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

/* One master key file to load: its id (1 .. 2^31-1) and its path. */
typedef struct kmdc_master_key_file {
    uint32_t id;
    const char *path;
} kmdc_master_key_file;

/*
 * Load n master key files into ring, in the order given: each with
 * kmdc_master_key_load (a regular file, no permission bit for group or
 * others, 64 lowercase hex digits and an optional newline; its messages name
 * the path).  Every file is read, so a bad one is reported even if its key
 * would not be used.  ring->newest is the highest id.
 *
 * Errors: KMDC_ERR_ARG when n is 0 ("no master key is given"), an id is out
 * of range ("master key id N is out of range 1 .. 2147483647") or given twice
 * ("master key id N is given twice; each master key needs its own id");
 * otherwise kmdc_master_key_load's code and message.  *failed (may be NULL)
 * gets the index of the file that failed (n when no single file did).  On
 * failure ring is left empty (n 0, keys NULL) and no key byte stays in memory.
 * ring is overwritten: pass an empty one (free a loaded ring first).
 *
 * Memory: ring->keys is malloc'd; release it with kmdc_keyring_free (which
 * wipes first).  A ring is read-only once loaded: find, newest, wrap and
 * unwrap may run in several threads at once; load and free may not run
 * concurrently with anything else on the same ring.
 */
kmdc_status kmdc_keyring_load(kmdc_keyring *ring, const kmdc_master_key_file *files,
                              size_t n, size_t *failed, kmdc_err *err);

/* Wipe and free the keys of a ring from kmdc_keyring_load; the ring is left
 * empty.  Accepts NULL and an empty ring. */
void kmdc_keyring_free(kmdc_keyring *ring);

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
