/* mod_kmdc_keys.c - card secrets under the master keys (DESIGN 3.8). */
#include "mod_kmdc_keys.h"

#include "kmdc_util.h"

static const kmdc_master_key *
find_key(const kmdc_master_keys *keys, uint32_t id)
{
    int i;

    if (keys == NULL)
        return NULL;
    for (i = 0; i < keys->n; i++)
        if (keys->keys[i].id == id)
            return &keys->keys[i];
    return NULL;
}

kmdc_status
kmdc_keys_unwrap(const kmdc_master_keys *keys, uint64_t serial, const char *field,
                 uint64_t counter, const uint8_t *wrapped, size_t wlen,
                 uint8_t out[32], kmdc_err *err)
{
    const kmdc_master_key *mk;
    uint8_t buf[64];
    size_t n = 0;
    uint32_t id;
    kmdc_status rc;

    if ((rc = kmdc_wrap_key_id(wrapped, wlen, &id, err)) != KMDC_OK)
        return rc;
    if ((mk = find_key(keys, id)) == NULL)
        return kmdc_err_set(err, KMDC_ERR_NOTFOUND,
                            "card %016llx: %s is wrapped under master key id %u, "
                            "which is not configured (KmdcMasterKey)",
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
kmdc_keys_wrap(const kmdc_master_keys *keys, uint64_t serial, const char *field,
               uint64_t counter, const uint8_t in[32],
               uint8_t out[KMDC_WRAPPED_LEN], kmdc_err *err)
{
    const kmdc_master_key *mk = keys ? find_key(keys, keys->newest) : NULL;
    size_t n = 0;

    if (mk == NULL)
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "no master key is loaded");
    return kmdc_wrap(out, KMDC_WRAPPED_LEN, &n, mk->id, mk->key, serial, field,
                     counter, in, 32, err);
}
