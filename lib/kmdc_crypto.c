/* kmdc_crypto.c - SHA-256, HMAC, HKDF, AES-256-GCM and the chain, on EVP. */
#include "kmdc_crypto.h"
#include "kmdc_util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

struct kmdc_sha256_ctx {
    EVP_MD_CTX *md;
};

struct kmdc_gcm {
    EVP_CIPHER_CTX *enc;
    EVP_CIPHER_CTX *dec;
};

static kmdc_status
ossl_fail(kmdc_err *err, const char *what)
{
    return kmdc_err_set(err, KMDC_ERR_INTERNAL, "OpenSSL %s failed", what);
}

kmdc_status
kmdc_sha256(uint8_t out[KMDC_HASH_LEN], const void *in, size_t len, kmdc_err *err)
{
    if (EVP_Digest(in, len, out, NULL, EVP_sha256(), NULL) != 1)
        return ossl_fail(err, "SHA-256");
    return KMDC_OK;
}

kmdc_sha256_ctx *
kmdc_sha256_new(kmdc_err *err)
{
    kmdc_sha256_ctx *c = calloc(1, sizeof(*c));

    if (c == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    if ((c->md = EVP_MD_CTX_new()) == NULL ||
        EVP_DigestInit_ex(c->md, EVP_sha256(), NULL) != 1) {
        kmdc_sha256_free(c);
        ossl_fail(err, "SHA-256 init");
        return NULL;
    }
    return c;
}

kmdc_status
kmdc_sha256_update(kmdc_sha256_ctx *c, const void *in, size_t len, kmdc_err *err)
{
    if (len > 0 && EVP_DigestUpdate(c->md, in, len) != 1)
        return ossl_fail(err, "SHA-256 update");
    return KMDC_OK;
}

kmdc_status
kmdc_sha256_final(kmdc_sha256_ctx *c, uint8_t out[KMDC_HASH_LEN], kmdc_err *err)
{
    if (EVP_DigestFinal_ex(c->md, out, NULL) != 1)
        return ossl_fail(err, "SHA-256 final");
    return KMDC_OK;
}

void
kmdc_sha256_free(kmdc_sha256_ctx *c)
{
    if (c == NULL)
        return;
    EVP_MD_CTX_free(c->md);
    free(c);
}

kmdc_status
kmdc_hmac_parts(uint8_t out[KMDC_HASH_LEN], const uint8_t *key, size_t keylen,
                size_t n, const void *const *ptrs, const size_t *lens,
                kmdc_err *err)
{
    EVP_MAC *mac = NULL;
    EVP_MAC_CTX *ctx = NULL;
    OSSL_PARAM params[2];
    size_t i, outlen = 0;
    kmdc_status rc = KMDC_ERR_INTERNAL;

    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    if ((mac = EVP_MAC_fetch(NULL, "HMAC", NULL)) == NULL ||
        (ctx = EVP_MAC_CTX_new(mac)) == NULL ||
        EVP_MAC_init(ctx, key, keylen, params) != 1) {
        ossl_fail(err, "HMAC init");
        goto out;
    }
    for (i = 0; i < n; i++) {
        if (lens[i] > 0 && EVP_MAC_update(ctx, ptrs[i], lens[i]) != 1) {
            ossl_fail(err, "HMAC update");
            goto out;
        }
    }
    if (EVP_MAC_final(ctx, out, &outlen, KMDC_HASH_LEN) != 1 ||
        outlen != KMDC_HASH_LEN) {
        ossl_fail(err, "HMAC final");
        goto out;
    }
    rc = KMDC_OK;
out:
    EVP_MAC_CTX_free(ctx);
    EVP_MAC_free(mac);
    return rc;
}

kmdc_status
kmdc_hmac(uint8_t out[KMDC_HASH_LEN], const uint8_t *key, size_t keylen,
          const void *msg, size_t msglen, kmdc_err *err)
{
    const void *ptrs[1] = { msg };
    size_t lens[1] = { msglen };

    return kmdc_hmac_parts(out, key, keylen, 1, ptrs, lens, err);
}

kmdc_status
kmdc_hkdf(uint8_t *out, size_t outlen, const uint8_t *salt, size_t saltlen,
          const uint8_t *ikm, size_t ikmlen, const void *info, size_t infolen,
          kmdc_err *err)
{
    EVP_KDF *kdf = NULL;
    EVP_KDF_CTX *ctx = NULL;
    OSSL_PARAM params[5], *p = params;
    static const uint8_t empty[1] = { 0 };
    kmdc_status rc = KMDC_ERR_INTERNAL;

    *p++ = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST,
                                            (char *)"SHA256", 0);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY,
                                             (void *)(ikmlen ? ikm : empty), ikmlen);
    /* An empty salt is the RFC default (HashLen zeros); OpenSSL applies it
     * when no salt parameter is given. */
    if (salt != NULL && saltlen > 0)
        *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT,
                                                 (void *)salt, saltlen);
    *p++ = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_INFO,
                                             (void *)(infolen ? info : empty),
                                             infolen);
    *p = OSSL_PARAM_construct_end();
    if ((kdf = EVP_KDF_fetch(NULL, "HKDF", NULL)) == NULL ||
        (ctx = EVP_KDF_CTX_new(kdf)) == NULL ||
        EVP_KDF_derive(ctx, out, outlen, params) != 1) {
        ossl_fail(err, "HKDF");
        goto out;
    }
    rc = KMDC_OK;
out:
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return rc;
}

static kmdc_status
gcm_seal_with(EVP_CIPHER_CTX *c, const uint8_t *key, uint8_t *out,
              const uint8_t iv[KMDC_IV_LEN], const void *aad, size_t aadlen,
              const uint8_t *pt, size_t ptlen, kmdc_err *err)
{
    int n = 0;

    if (ptlen > INT_MAX || aadlen > INT_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "AES-GCM input too large");
    if (EVP_EncryptInit_ex(c, key ? EVP_aes_256_gcm() : NULL, NULL, key, iv) != 1)
        return ossl_fail(err, "AES-GCM init");
    if (aadlen > 0 && EVP_EncryptUpdate(c, NULL, &n, aad, (int)aadlen) != 1)
        return ossl_fail(err, "AES-GCM aad");
    if (ptlen > 0 && EVP_EncryptUpdate(c, out, &n, pt, (int)ptlen) != 1)
        return ossl_fail(err, "AES-GCM encrypt");
    if (EVP_EncryptFinal_ex(c, out + ptlen, &n) != 1 ||
        EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, KMDC_TAG_LEN,
                            out + ptlen) != 1)
        return ossl_fail(err, "AES-GCM final");
    return KMDC_OK;
}

static kmdc_status
gcm_open_with(EVP_CIPHER_CTX *c, const uint8_t *key, uint8_t *out,
              const uint8_t iv[KMDC_IV_LEN], const void *aad, size_t aadlen,
              const uint8_t *in, size_t inlen, kmdc_err *err)
{
    int n = 0;
    size_t ctlen;
    uint8_t tag[KMDC_TAG_LEN];

    if (inlen < KMDC_TAG_LEN)
        return kmdc_err_set(err, KMDC_ERR_TRUNCATED,
                            "ciphertext shorter than its tag");
    if (inlen > INT_MAX || aadlen > INT_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "AES-GCM input too large");
    ctlen = inlen - KMDC_TAG_LEN;
    memcpy(tag, in + ctlen, KMDC_TAG_LEN);
    if (EVP_DecryptInit_ex(c, key ? EVP_aes_256_gcm() : NULL, NULL, key, iv) != 1)
        return ossl_fail(err, "AES-GCM init");
    if (aadlen > 0 && EVP_DecryptUpdate(c, NULL, &n, aad, (int)aadlen) != 1)
        return ossl_fail(err, "AES-GCM aad");
    if (ctlen > 0 && EVP_DecryptUpdate(c, out, &n, in, (int)ctlen) != 1)
        return ossl_fail(err, "AES-GCM decrypt");
    if (EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, KMDC_TAG_LEN, tag) != 1)
        return ossl_fail(err, "AES-GCM tag");
    if (EVP_DecryptFinal_ex(c, out + ctlen, &n) != 1) {
        kmdc_wipe(out, ctlen);
        return kmdc_err_set(err, KMDC_ERR_AUTH, "authentication tag mismatch");
    }
    return KMDC_OK;
}

kmdc_status
kmdc_gcm_seal(uint8_t *out, const uint8_t key[KMDC_KEY_LEN],
              const uint8_t iv[KMDC_IV_LEN], const void *aad, size_t aadlen,
              const uint8_t *pt, size_t ptlen, kmdc_err *err)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    kmdc_status rc;

    if (c == NULL)
        return ossl_fail(err, "cipher context");
    rc = gcm_seal_with(c, key, out, iv, aad, aadlen, pt, ptlen, err);
    EVP_CIPHER_CTX_free(c);
    return rc;
}

kmdc_status
kmdc_gcm_open(uint8_t *out, const uint8_t key[KMDC_KEY_LEN],
              const uint8_t iv[KMDC_IV_LEN], const void *aad, size_t aadlen,
              const uint8_t *in, size_t inlen, kmdc_err *err)
{
    EVP_CIPHER_CTX *c = EVP_CIPHER_CTX_new();
    kmdc_status rc;

    if (c == NULL)
        return ossl_fail(err, "cipher context");
    rc = gcm_open_with(c, key, out, iv, aad, aadlen, in, inlen, err);
    EVP_CIPHER_CTX_free(c);
    return rc;
}

kmdc_gcm *
kmdc_gcm_new(const uint8_t key[KMDC_KEY_LEN], kmdc_err *err)
{
    static const uint8_t zero_iv[KMDC_IV_LEN];
    kmdc_gcm *g = calloc(1, sizeof(*g));

    if (g == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    if ((g->enc = EVP_CIPHER_CTX_new()) == NULL ||
        (g->dec = EVP_CIPHER_CTX_new()) == NULL ||
        EVP_EncryptInit_ex(g->enc, EVP_aes_256_gcm(), NULL, key, zero_iv) != 1 ||
        EVP_DecryptInit_ex(g->dec, EVP_aes_256_gcm(), NULL, key, zero_iv) != 1) {
        kmdc_gcm_free(g);
        ossl_fail(err, "AES-GCM key setup");
        return NULL;
    }
    return g;
}

kmdc_status
kmdc_gcm_seal_ctx(kmdc_gcm *g, uint8_t *out, const uint8_t iv[KMDC_IV_LEN],
                  const void *aad, size_t aadlen, const uint8_t *pt,
                  size_t ptlen, kmdc_err *err)
{
    return gcm_seal_with(g->enc, NULL, out, iv, aad, aadlen, pt, ptlen, err);
}

kmdc_status
kmdc_gcm_open_ctx(kmdc_gcm *g, uint8_t *out, const uint8_t iv[KMDC_IV_LEN],
                  const void *aad, size_t aadlen, const uint8_t *in,
                  size_t inlen, kmdc_err *err)
{
    return gcm_open_with(g->dec, NULL, out, iv, aad, aadlen, in, inlen, err);
}

void
kmdc_gcm_free(kmdc_gcm *g)
{
    if (g == NULL)
        return;
    EVP_CIPHER_CTX_free(g->enc);   /* frees (and cleanses) the key schedule */
    EVP_CIPHER_CTX_free(g->dec);
    free(g);
}

kmdc_status
kmdc_chain_step(uint8_t mk[KMDC_KEY_LEN], uint8_t ck_next[KMDC_KEY_LEN],
                const uint8_t ck[KMDC_KEY_LEN], kmdc_err *err)
{
    static const uint8_t one = 0x01, two = 0x02;
    uint8_t m[KMDC_KEY_LEN], n[KMDC_KEY_LEN];
    kmdc_status rc;

    if ((rc = kmdc_hmac(m, ck, KMDC_KEY_LEN, &one, 1, err)) != KMDC_OK ||
        (rc = kmdc_hmac(n, ck, KMDC_KEY_LEN, &two, 1, err)) != KMDC_OK)
        goto out;
    if (mk != NULL)
        memcpy(mk, m, KMDC_KEY_LEN);
    memcpy(ck_next, n, KMDC_KEY_LEN);
out:
    kmdc_wipe(m, sizeof(m));
    kmdc_wipe(n, sizeof(n));
    return rc;
}

kmdc_status
kmdc_chain_seek(uint8_t ck[KMDC_KEY_LEN], uint64_t from, uint64_t to,
                uint8_t mk[KMDC_KEY_LEN], kmdc_err *err)
{
    kmdc_status rc;

    if (to < from)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "a chain cannot step back from %llu to %llu",
                            (unsigned long long)from, (unsigned long long)to);
    if (to > KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_EXHAUSTED, "counter out of range");
    for (; from < to; from++)
        if ((rc = kmdc_chain_step(NULL, ck, ck, err)) != KMDC_OK)
            return rc;
    if (mk != NULL) {
        static const uint8_t one = 0x01;
        return kmdc_hmac(mk, ck, KMDC_KEY_LEN, &one, 1, err);
    }
    return KMDC_OK;
}

kmdc_status
kmdc_activate_key(uint8_t out[KMDC_KEY_LEN], const uint8_t r[KMDC_KEY_LEN],
                  const uint8_t k[KMDC_KEY_LEN], const char *name, kmdc_err *err)
{
    static const char prefix[] = "KMDC/1 activate ";
    char info[64];
    size_t plen = sizeof(prefix) - 1, nlen = strlen(name);
    uint8_t tmp[KMDC_KEY_LEN];
    kmdc_status rc;

    if (strcmp(name, "up_chain") != 0 && strcmp(name, "down_chain") != 0 &&
        strcmp(name, "auth_key") != 0)
        return kmdc_err_set(err, KMDC_ERR_ARG, "unknown key name for activation");
    memcpy(info, prefix, plen);
    memcpy(info + plen, name, nlen);
    rc = kmdc_hkdf(tmp, sizeof(tmp), r, KMDC_KEY_LEN, k, KMDC_KEY_LEN, info,
                   plen + nlen, err);
    if (rc == KMDC_OK)
        memcpy(out, tmp, KMDC_KEY_LEN);
    kmdc_wipe(tmp, sizeof(tmp));
    return rc;
}
