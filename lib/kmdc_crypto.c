/* kmdc_crypto.c - SHA-256, HMAC, HKDF, AES-256-GCM and the chain, on EVP. */
#include "kmdc_crypto.h"
#include "kmdc_util.h"

#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/core_names.h>
#include <openssl/crypto.h>
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

/*
 * The algorithms, fetched once per process.  OpenSSL 3 looks an algorithm up
 * in its provider store (under a lock) on every EVP_MAC_fetch and on every
 * use of EVP_sha256() or EVP_aes_256_gcm(); the intake's constant work of W
 * chain steps made that most of a small relay's crypto time.  They hold no
 * key and stay until the process ends.
 */
static CRYPTO_ONCE algs_once = CRYPTO_ONCE_STATIC_INIT;
static EVP_MD *alg_sha256;
static EVP_CIPHER *alg_gcm;
static EVP_MAC *alg_hmac;
static EVP_KDF *alg_hkdf;

static void
algs_fetch(void)
{
    alg_sha256 = EVP_MD_fetch(NULL, "SHA256", NULL);
    alg_gcm = EVP_CIPHER_fetch(NULL, "AES-256-GCM", NULL);
    alg_hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
    alg_hkdf = EVP_KDF_fetch(NULL, "HKDF", NULL);
}

/* 1 when every algorithm is there. */
static int
algs(void)
{
    return CRYPTO_THREAD_run_once(&algs_once, algs_fetch) == 1 && alg_sha256 != NULL &&
           alg_gcm != NULL && alg_hmac != NULL && alg_hkdf != NULL;
}

/* A new HMAC-SHA-256 context without a key (NULL on failure). */
static EVP_MAC_CTX *
hmac_new(void)
{
    EVP_MAC_CTX *ctx;
    OSSL_PARAM params[2];

    if (!algs() || (ctx = EVP_MAC_CTX_new(alg_hmac)) == NULL)
        return NULL;
    params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
                                                 (char *)"SHA256", 0);
    params[1] = OSSL_PARAM_construct_end();
    if (EVP_MAC_CTX_set_params(ctx, params) != 1) {
        EVP_MAC_CTX_free(ctx);
        return NULL;
    }
    return ctx;
}

/* out = HMAC(key, one byte) on ctx; key NULL: the key ctx was last given. */
static int
hmac_byte(EVP_MAC_CTX *ctx, const uint8_t *key, uint8_t byte, uint8_t out[KMDC_HASH_LEN])
{
    size_t outlen = 0;

    return EVP_MAC_init(ctx, key, key != NULL ? KMDC_KEY_LEN : 0, NULL) == 1 &&
           EVP_MAC_update(ctx, &byte, 1) == 1 &&
           EVP_MAC_final(ctx, out, &outlen, KMDC_HASH_LEN) == 1 && outlen == KMDC_HASH_LEN;
}

kmdc_status
kmdc_sha256(uint8_t out[KMDC_HASH_LEN], const void *in, size_t len, kmdc_err *err)
{
    if (!algs() || EVP_Digest(in, len, out, NULL, alg_sha256, NULL) != 1)
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
    if (!algs() || (c->md = EVP_MD_CTX_new()) == NULL ||
        EVP_DigestInit_ex(c->md, alg_sha256, NULL) != 1) {
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
    EVP_MAC_CTX *ctx;
    size_t i, outlen = 0;
    kmdc_status rc = KMDC_ERR_INTERNAL;

    if ((ctx = hmac_new()) == NULL || EVP_MAC_init(ctx, key, keylen, NULL) != 1) {
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
    EVP_MAC_CTX_free(ctx);                 /* cleanses the key's pads */
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
    if (!algs() || (ctx = EVP_KDF_CTX_new(alg_hkdf)) == NULL ||
        EVP_KDF_derive(ctx, out, outlen, params) != 1) {
        ossl_fail(err, "HKDF");
        goto out;
    }
    rc = KMDC_OK;
out:
    EVP_KDF_CTX_free(ctx);
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
    if (!algs() || EVP_EncryptInit_ex(c, key ? alg_gcm : NULL, NULL, key, iv) != 1)
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
    if (!algs() || EVP_DecryptInit_ex(c, key ? alg_gcm : NULL, NULL, key, iv) != 1)
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
        !algs() ||
        EVP_EncryptInit_ex(g->enc, alg_gcm, NULL, key, zero_iv) != 1 ||
        EVP_DecryptInit_ex(g->dec, alg_gcm, NULL, key, zero_iv) != 1) {
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

/* mk = HMAC(ck, 0x01) and n = HMAC(ck, 0x02) on ctx (one key setup). */
static int
step_on(EVP_MAC_CTX *ctx, uint8_t m[KMDC_KEY_LEN], uint8_t n[KMDC_KEY_LEN],
        const uint8_t ck[KMDC_KEY_LEN])
{
    return hmac_byte(ctx, ck, 0x01, m) && hmac_byte(ctx, NULL, 0x02, n);
}

kmdc_status
kmdc_chain_step(uint8_t mk[KMDC_KEY_LEN], uint8_t ck_next[KMDC_KEY_LEN],
                const uint8_t ck[KMDC_KEY_LEN], kmdc_err *err)
{
    EVP_MAC_CTX *ctx = hmac_new();
    uint8_t m[KMDC_KEY_LEN], n[KMDC_KEY_LEN];
    kmdc_status rc = KMDC_OK;

    if (ctx == NULL || !step_on(ctx, m, n, ck)) {
        rc = ossl_fail(err, "HMAC");
        goto out;
    }
    if (mk != NULL)
        memcpy(mk, m, KMDC_KEY_LEN);
    memcpy(ck_next, n, KMDC_KEY_LEN);
out:
    EVP_MAC_CTX_free(ctx);
    kmdc_wipe(m, sizeof(m));
    kmdc_wipe(n, sizeof(n));
    return rc;
}

kmdc_status
kmdc_chain_seek(uint8_t ck[KMDC_KEY_LEN], uint64_t from, uint64_t to,
                uint8_t mk[KMDC_KEY_LEN], kmdc_err *err)
{
    EVP_MAC_CTX *ctx;
    uint8_t n[KMDC_KEY_LEN];
    kmdc_status rc = KMDC_OK;

    if (to < from)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "a chain cannot step back from %llu to %llu",
                            (unsigned long long)from, (unsigned long long)to);
    if (to > KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_EXHAUSTED, "counter out of range");
    if ((ctx = hmac_new()) == NULL)
        return ossl_fail(err, "HMAC");
    for (; from < to; from++) {
        if (!hmac_byte(ctx, ck, 0x02, n)) {
            rc = ossl_fail(err, "HMAC");
            goto out;
        }
        memcpy(ck, n, KMDC_KEY_LEN);
    }
    if (mk != NULL && !hmac_byte(ctx, ck, 0x01, mk))
        rc = ossl_fail(err, "HMAC");
out:
    EVP_MAC_CTX_free(ctx);
    kmdc_wipe(n, sizeof(n));
    return rc;
}

kmdc_status
kmdc_chain_walk(const uint8_t ck[KMDC_KEY_LEN], uint64_t steps, uint64_t at,
                uint8_t mk[KMDC_KEY_LEN], uint8_t ck_next[KMDC_KEY_LEN], kmdc_err *err)
{
    EVP_MAC_CTX *ctx;
    uint8_t cur[KMDC_KEY_LEN], m[KMDC_KEY_LEN], n[KMDC_KEY_LEN];
    kmdc_status rc = KMDC_OK;
    uint64_t i;
    size_t j;

    if (at >= steps)
        return kmdc_err_set(err, KMDC_ERR_ARG, "a chain walk of %llu steps has no step %llu",
                            (unsigned long long)steps, (unsigned long long)at);
    if ((ctx = hmac_new()) == NULL)
        return ossl_fail(err, "HMAC");
    memcpy(cur, ck, KMDC_KEY_LEN);
    memset(mk, 0, KMDC_KEY_LEN);
    memset(ck_next, 0, KMDC_KEY_LEN);
    for (i = 0; i < steps; i++) {
        /* 0xff at step `at`, 0 elsewhere, without a branch on it */
        uint64_t d = i ^ at;
        uint8_t take = (uint8_t)(((d | (0 - d)) >> 63) - 1);

        if (!step_on(ctx, m, n, cur)) {
            rc = ossl_fail(err, "HMAC");
            goto out;
        }
        for (j = 0; j < KMDC_KEY_LEN; j++) {
            mk[j] |= m[j] & take;
            ck_next[j] |= n[j] & take;
        }
        memcpy(cur, n, KMDC_KEY_LEN);
    }
out:
    EVP_MAC_CTX_free(ctx);
    kmdc_wipe(cur, sizeof(cur));
    kmdc_wipe(m, sizeof(m));
    kmdc_wipe(n, sizeof(n));
    if (rc != KMDC_OK) {
        kmdc_wipe(mk, KMDC_KEY_LEN);
        kmdc_wipe(ck_next, KMDC_KEY_LEN);
    }
    return rc;
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
