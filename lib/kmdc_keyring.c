/* kmdc_keyring.c - card secrets under the master keys. */
#include <stdlib.h>
#include <string.h>

#include "kmdc_keyring.h"
#include "kmdc_util.h"

const kmdc_master_key *
kmdc_keyring_find(const kmdc_keyring *ring, uint32_t id)
{
    int i;

    if (ring == NULL)
        return NULL;
    for (i = 0; i < ring->n; i++)
        if (ring->keys[i].id == id)
            return &ring->keys[i];
    return NULL;
}

const kmdc_master_key *
kmdc_keyring_newest(const kmdc_keyring *ring)
{
    return ring != NULL ? kmdc_keyring_find(ring, ring->newest) : NULL;
}

kmdc_status
kmdc_keyring_unwrap(const kmdc_keyring *ring, uint64_t serial, const char *field,
                    uint64_t counter, const uint8_t *wrapped, size_t wlen,
                    uint8_t out[32], kmdc_err *err)
{
    const kmdc_master_key *mk;
    uint8_t buf[64];
    size_t n = 0;
    uint32_t id;
    kmdc_status rc;

    kmdc_wipe(out, 32);
    if ((rc = kmdc_wrap_key_id(wrapped, wlen, &id, err)) != KMDC_OK)
        return rc;
    if ((mk = kmdc_keyring_find(ring, id)) == NULL)
        return kmdc_err_set(err, KMDC_ERR_NOTFOUND,
                            "card %016llx: %s is wrapped under master key id %u, "
                            "which is not configured",
                            (unsigned long long)serial, field, id);
    rc = kmdc_unwrap(buf, sizeof(buf), &n, mk->key, serial, field, counter,
                     wrapped, wlen, err);
    if (rc == KMDC_OK && n != 32)
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT, "card %016llx: %s has the wrong length",
                          (unsigned long long)serial, field);
    if (rc == KMDC_OK)
        memcpy(out, buf, 32);
    kmdc_wipe(buf, sizeof(buf));
    return rc;
}

kmdc_status
kmdc_keyring_wrap(const kmdc_keyring *ring, uint64_t serial, const char *field,
                  uint64_t counter, const uint8_t in[32],
                  uint8_t out[KMDC_WRAPPED_LEN], kmdc_err *err)
{
    const kmdc_master_key *mk = kmdc_keyring_newest(ring);
    size_t n = 0;

    if (mk == NULL)
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "no master key is loaded");
    return kmdc_wrap(out, KMDC_WRAPPED_LEN, &n, mk->id, mk->key, serial, field,
                     counter, in, 32, err);
}

void
kmdc_keyring_wipe(kmdc_keyring *ring)
{
    int i;

    if (ring == NULL || ring->keys == NULL)
        return;
    for (i = 0; i < ring->n; i++)
        kmdc_wipe(ring->keys[i].key, sizeof(ring->keys[i].key));
}

void
kmdc_keyring_free(kmdc_keyring *ring)
{
    if (ring == NULL)
        return;
    if (ring->keys != NULL) {
        kmdc_wipe(ring->keys, (size_t)ring->n * sizeof(*ring->keys));
        free(ring->keys);
    }
    ring->keys = NULL;
    ring->n = 0;
    ring->newest = 0;
}

kmdc_status
kmdc_keyring_load(kmdc_keyring *ring, const kmdc_master_key_file *files, size_t n,
                  size_t *failed, kmdc_err *err)
{
    kmdc_keyring r = { 0, NULL, 0 };
    kmdc_status rc = KMDC_OK;
    size_t i, k, bad = n;

    if (ring == NULL || (files == NULL && n > 0)) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "master keys: missing argument");
        goto out;
    }
    if (n == 0) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "no master key is given");
        goto out;
    }
    if (n > INT32_MAX / sizeof(*r.keys)) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "too many master keys");
        goto out;
    }
    for (i = 0; i < n; i++) {
        if (files[i].id < 1 || files[i].id > KMDC_KEYRING_ID_MAX) {
            bad = i;
            rc = kmdc_err_set(err, KMDC_ERR_ARG,
                              "master key id %lu is out of range 1 .. %lu",
                              (unsigned long)files[i].id,
                              (unsigned long)KMDC_KEYRING_ID_MAX);
            goto out;
        }
        for (k = 0; k < i; k++)
            if (files[k].id == files[i].id) {
                bad = i;
                rc = kmdc_err_set(err, KMDC_ERR_ARG,
                                  "master key id %lu is given twice; each master key "
                                  "needs its own id", (unsigned long)files[i].id);
                goto out;
            }
    }
    if ((r.keys = calloc(n, sizeof(*r.keys))) == NULL) {
        rc = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        goto out;
    }
    for (i = 0; i < n; i++) {
        if ((rc = kmdc_master_key_load(files[i].path, r.keys[i].key, err)) != KMDC_OK) {
            bad = i;
            goto out;
        }
        r.keys[i].id = files[i].id;
        r.n++;
        if (files[i].id > r.newest)
            r.newest = files[i].id;
    }
    *ring = r;
    r.keys = NULL;
    bad = n;
out:
    if (r.keys != NULL) {
        kmdc_wipe(r.keys, n * sizeof(*r.keys));
        free(r.keys);
    }
    if (rc != KMDC_OK && ring != NULL) {
        ring->n = 0;
        ring->keys = NULL;
        ring->newest = 0;
    }
    if (failed != NULL)
        *failed = rc == KMDC_OK ? n : bad;
    return rc;
}
