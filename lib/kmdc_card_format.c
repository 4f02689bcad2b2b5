/* kmdc_card_format.c - the card file (docs/PROTOCOL.md section 9): the scrypt key,
 * serialising and parsing the body, sealing it, loading and saving the file. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "kmdc_card_int.h"
#include "kmdc_file.h"
#include "kmdc_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

#include <openssl/core_names.h>
#include <openssl/evp.h>
#include <openssl/kdf.h>
#include <openssl/params.h>

#define CARD_IV_LEN KMDC_IV_LEN
#define CARD_OFF_BODYLEN 12
#define CARD_OFF_LOG2N 16
#define CARD_OFF_R 17
#define CARD_OFF_P 18
#define CARD_OFF_RSVD 19
#define CARD_OFF_SALT 20
#define CARD_OFF_IV 36
#define CARD_MIN_FILE (KMDC_CARD_HEADER_LEN + KMDC_CARD_SUM_LEN)
#define CARD_MAX_FILE (CARD_MIN_FILE + (size_t)KMDC_CARD_MAX_BODY)
#define CARD_SKIP_ENT_LEN (8 + KMDC_KEY_LEN)
#define CARD_FLAG_R 0x01
/* scrypt memory ceiling handed to OpenSSL: above what the bounds allow
 * (128 * r * N <= 128 MiB plus 128 * r * p), below anything harmful. */
#define CARD_SCRYPT_MAXMEM (UINT64_C(256) << 20)

/* ---- scrypt ------------------------------------------------------------------ */

static kmdc_status
scrypt_key(uint8_t key[KMDC_KEY_LEN], const char *pass,
           const uint8_t salt[KMDC_CARD_SALT_LEN], unsigned log2n, unsigned r,
           unsigned p, kmdc_err *err)
{
    EVP_KDF *kdf = NULL;
    EVP_KDF_CTX *ctx = NULL;
    OSSL_PARAM params[7];
    uint64_t n = UINT64_C(1) << log2n, maxmem = CARD_SCRYPT_MAXMEM;
    uint32_t rr = r, pp = p;
    kmdc_status rc = KMDC_OK;

    if (!kmdc_card_kdf_valid(log2n, r, p))
        return kmdc_err_set(err, KMDC_ERR_ARG, "scrypt parameters out of bounds");
    if ((kdf = EVP_KDF_fetch(NULL, "SCRYPT", NULL)) == NULL ||
        (ctx = EVP_KDF_CTX_new(kdf)) == NULL) {
        rc = kmdc_err_set(err, KMDC_ERR_INTERNAL, "OpenSSL scrypt is not available");
        goto out;
    }
    params[0] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PASSWORD,
                                                  (void *)pass, strlen(pass));
    params[1] = OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_SALT,
                                                  (void *)salt, KMDC_CARD_SALT_LEN);
    params[2] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_N, &n);
    params[3] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_R, &rr);
    params[4] = OSSL_PARAM_construct_uint32(OSSL_KDF_PARAM_SCRYPT_P, &pp);
    params[5] = OSSL_PARAM_construct_uint64(OSSL_KDF_PARAM_SCRYPT_MAXMEM, &maxmem);
    params[6] = OSSL_PARAM_construct_end();
    if (EVP_KDF_derive(ctx, key, KMDC_KEY_LEN, params) != 1) {
        kmdc_wipe(key, KMDC_KEY_LEN);
        rc = kmdc_err_set(err, KMDC_ERR_INTERNAL, "OpenSSL scrypt failed");
    }
out:
    EVP_KDF_CTX_free(ctx);
    EVP_KDF_free(kdf);
    return rc;
}

/* ---- serialising ------------------------------------------------------------ */

static size_t
body_size(const kmdc_card *c)
{
    size_t n = 8 + 1 + 1 + 2 + c->address_len + 2 + c->url_len +
               KMDC_KEY_LEN + 8 + KMDC_KEY_LEN + 8 + KMDC_KEY_LEN +
               (c->has_r ? KMDC_KEY_LEN : 0) + 2 + c->nskip * CARD_SKIP_ENT_LEN + 2;
    size_t i;

    for (i = 0; i < c->ndlv; i++)
        n += 8 + 2 + c->dlv[i].len;
    return n;
}

static uint8_t *
put_bytes(uint8_t *p, const void *v, size_t len)
{
    memcpy(p, v, len);
    return p + len;
}

static uint8_t *
put16(uint8_t *p, uint16_t v)
{
    kmdc_put_u16(p, v);
    return p + 2;
}

static uint8_t *
put64(uint8_t *p, uint64_t v)
{
    kmdc_put_u64(p, v);
    return p + 8;
}

/* Write the plaintext body (exactly body_size(c) bytes) at p. */
static void
body_write(uint8_t *p, const kmdc_card *c)
{
    size_t i;

    p = put64(p, c->serial);
    *p++ = (uint8_t)c->state;
    *p++ = c->has_r ? CARD_FLAG_R : 0;
    p = put16(p, (uint16_t)c->address_len);
    p = put_bytes(p, c->address, c->address_len);
    p = put16(p, (uint16_t)c->url_len);
    p = put_bytes(p, c->url, c->url_len);
    p = put_bytes(p, c->up_ck, KMDC_KEY_LEN);
    p = put64(p, c->up_next);
    p = put_bytes(p, c->down_ck, KMDC_KEY_LEN);
    p = put64(p, c->down_next);
    p = put_bytes(p, c->ak, KMDC_KEY_LEN);
    if (c->has_r)
        p = put_bytes(p, c->r, KMDC_KEY_LEN);
    p = put16(p, (uint16_t)c->nskip);
    for (i = 0; i < c->nskip; i++) {
        p = put64(p, c->skip[i].seq);
        p = put_bytes(p, c->skip[i].mk, KMDC_KEY_LEN);
    }
    p = put16(p, (uint16_t)c->ndlv);
    for (i = 0; i < c->ndlv; i++) {
        p = put64(p, c->dlv[i].id);
        p = put16(p, (uint16_t)c->dlv[i].len);
        p = put_bytes(p, c->dlv[i].name, c->dlv[i].len);
    }
}

kmdc_status
kmdc_card_serialize(const kmdc_card *card, const char *pass, uint8_t **out,
                    size_t *outlen, kmdc_err *err)
{
    uint8_t *file = NULL, *pt = NULL, key[KMDC_KEY_LEN];
    size_t ptlen, bodylen, flen = 0;
    int prot = pass != NULL && pass[0] != '\0';
    kmdc_status rc = KMDC_OK;

    if (card == NULL || out == NULL || outlen == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card: missing argument");
    *out = NULL;
    *outlen = 0;
    if (!prot && card->protect)
        return kmdc_err_set(err, KMDC_ERR_PASSPHRASE,
                            "this card is protected by a passphrase: give it to save the card");
    ptlen = body_size(card);
    bodylen = ptlen + (prot ? KMDC_TAG_LEN : 0);
    if (bodylen > KMDC_CARD_MAX_BODY)
        return kmdc_err_set(err, KMDC_ERR_LIMIT, "card body too large");
    flen = KMDC_CARD_HEADER_LEN + bodylen + KMDC_CARD_SUM_LEN;
    if ((file = calloc(1, flen)) == NULL) {
        rc = kmdc_card_oom(err);
        goto out;
    }
    memcpy(file, KMDC_CARD_MAGIC, KMDC_CARD_MAGIC_LEN);
    file[8] = KMDC_CARD_VERSION;
    file[9] = prot ? KMDC_CARD_PROT_SCRYPT : KMDC_CARD_PROT_NONE;
    kmdc_put_u32(file + CARD_OFF_BODYLEN, (uint32_t)bodylen);
    if (!prot) {
        body_write(file + KMDC_CARD_HEADER_LEN, card);
    } else {
        file[CARD_OFF_LOG2N] = (uint8_t)card->log2n;
        file[CARD_OFF_R] = (uint8_t)card->sr;
        file[CARD_OFF_P] = (uint8_t)card->sp;
        if ((rc = kmdc_random(file + CARD_OFF_SALT, KMDC_CARD_SALT_LEN, err)) != KMDC_OK ||
            (rc = kmdc_random(file + CARD_OFF_IV, CARD_IV_LEN, err)) != KMDC_OK)
            goto out;
        if ((pt = malloc(ptlen)) == NULL) {
            rc = kmdc_card_oom(err);
            goto out;
        }
        body_write(pt, card);
        if ((rc = scrypt_key(key, pass, file + CARD_OFF_SALT, card->log2n,
                             card->sr, card->sp, err)) != KMDC_OK ||
            (rc = kmdc_gcm_seal(file + KMDC_CARD_HEADER_LEN, key,
                                file + CARD_OFF_IV, file, KMDC_CARD_HEADER_LEN,
                                pt, ptlen, err)) != KMDC_OK)
            goto out;
    }
    if ((rc = kmdc_sha256(file + KMDC_CARD_HEADER_LEN + bodylen, file,
                          KMDC_CARD_HEADER_LEN + bodylen, err)) != KMDC_OK)
        goto out;
    *out = file;
    *outlen = flen;
    file = NULL;
out:
    kmdc_wipe(key, sizeof(key));
    kmdc_freezero(pt, ptlen);
    kmdc_freezero(file, flen);
    return rc;
}

/* ---- parsing ------------------------------------------------------------------ */

typedef struct rd {
    const uint8_t *p;
    size_t len, off;
} rd;

static int
rd_has(const rd *r, size_t n)
{
    return r->len - r->off >= n;
}

#define NEED(n)                                                              \
    do {                                                                     \
        if (!rd_has(&r, (n))) {                                              \
            rc = kmdc_err_set(err, KMDC_ERR_TRUNCATED,                       \
                              "card body ends early (at byte %zu)", r.off);  \
            goto out;                                                        \
        }                                                                    \
    } while (0)

#define BAD(...)                                                             \
    do {                                                                     \
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT, __VA_ARGS__);                \
        goto out;                                                            \
    } while (0)

/* Parse the plaintext body into c (freshly allocated, empty). */
static kmdc_status
body_parse(kmdc_card *c, const uint8_t *buf, size_t len, kmdc_err *err)
{
    rd r = { buf, len, 0 };
    uint64_t *ids = NULL;
    kmdc_status rc = KMDC_OK;
    size_t n, i, l;
    uint8_t st, flags;

    NEED(8 + 1 + 1 + 2);
    c->serial = kmdc_get_u64(r.p + r.off);
    st = r.p[r.off + 8];
    flags = r.p[r.off + 9];
    l = kmdc_get_u16(r.p + r.off + 10);
    r.off += 12;
    if (c->serial == 0 || c->serial > KMDC_U63_MAX)
        BAD("card serial out of range");
    if (st != KMDC_CARD_ISSUED && st != KMDC_CARD_ACTIVE)
        BAD("card state %u is unknown", st);
    c->state = (kmdc_card_state)st;
    if ((flags & ~CARD_FLAG_R) != 0)
        BAD("card flags 0x%02x are unknown", flags);
    c->has_r = (flags & CARD_FLAG_R) != 0;
    if (c->has_r && c->state != KMDC_CARD_ISSUED)
        BAD("an active card cannot have an activation pending");
    NEED(l);
    if (!kmdc_address_valid((const char *)r.p + r.off, l))
        BAD("card address is not valid");
    memcpy(c->address, r.p + r.off, l);
    c->address[l] = '\0';
    c->address_len = l;
    r.off += l;

    NEED(2);
    l = kmdc_get_u16(r.p + r.off);
    r.off += 2;
    NEED(l);
    if (!kmdc_card_url_valid((const char *)r.p + r.off, l))
        BAD("card datacenter URL is not valid");
    if ((c->url = malloc(l + 1)) == NULL) {
        rc = kmdc_card_oom(err);
        goto out;
    }
    memcpy(c->url, r.p + r.off, l);
    c->url[l] = '\0';
    c->url_len = l;
    r.off += l;

    NEED(3 * KMDC_KEY_LEN + 16 + (c->has_r ? KMDC_KEY_LEN : 0));
    memcpy(c->up_ck, r.p + r.off, KMDC_KEY_LEN);
    c->up_next = kmdc_get_u64(r.p + r.off + KMDC_KEY_LEN);
    r.off += KMDC_KEY_LEN + 8;
    memcpy(c->down_ck, r.p + r.off, KMDC_KEY_LEN);
    c->down_next = kmdc_get_u64(r.p + r.off + KMDC_KEY_LEN);
    r.off += KMDC_KEY_LEN + 8;
    memcpy(c->ak, r.p + r.off, KMDC_KEY_LEN);
    r.off += KMDC_KEY_LEN;
    if (c->has_r) {
        memcpy(c->r, r.p + r.off, KMDC_KEY_LEN);
        r.off += KMDC_KEY_LEN;
    }
    if (c->up_next > KMDC_U63_MAX || c->down_next > KMDC_U63_MAX)
        BAD("card counter out of range");

    NEED(2);
    n = kmdc_get_u16(r.p + r.off);
    r.off += 2;
    if (n > KMDC_CARD_MAX_SKIPPED)
        BAD("card stores %zu down keys, more than %d", n, KMDC_CARD_MAX_SKIPPED);
    NEED(n * CARD_SKIP_ENT_LEN);
    for (i = 0; i < n; i++) {
        uint64_t seq = kmdc_get_u64(r.p + r.off);
        if (seq >= c->down_next || c->down_next - seq > KMDC_CARD_MAX_SKIPPED)
            BAD("stored down key %zu lies outside the window", i);
        if (i > 0 && seq <= c->skip[i - 1].seq)
            BAD("stored down keys are not in increasing order");
        c->skip[i].seq = seq;
        memcpy(c->skip[i].mk, r.p + r.off + 8, KMDC_KEY_LEN);
        c->nskip = i + 1;
        r.off += CARD_SKIP_ENT_LEN;
    }

    NEED(2);
    n = kmdc_get_u16(r.p + r.off);
    r.off += 2;
    if (n > KMDC_CARD_MAX_DELIVERIES)
        BAD("card keeps %zu delivery records, more than %d", n,
            KMDC_CARD_MAX_DELIVERIES);
    for (i = 0; i < n; i++) {
        NEED(10);
        c->dlv[i].id = kmdc_get_u64(r.p + r.off);
        l = kmdc_get_u16(r.p + r.off + 8);
        r.off += 10;
        if (l < 1 || l > KMDC_CARD_MAX_FILENAME)
            BAD("delivery record %zu has a bad file name length", i);
        NEED(l);
        if (memchr(r.p + r.off, 0, l) != NULL)
            BAD("delivery record %zu has a NUL in its file name", i);
        if ((c->dlv[i].name = malloc(l + 1)) == NULL) {
            rc = kmdc_card_oom(err);
            goto out;
        }
        memcpy(c->dlv[i].name, r.p + r.off, l);
        c->dlv[i].name[l] = '\0';
        c->dlv[i].len = l;
        c->ndlv = i + 1;
        r.off += l;
    }
    if (r.off != r.len) {
        rc = kmdc_err_set(err, KMDC_ERR_TRAILING,
                          "card body has %zu bytes after its last field", r.len - r.off);
        goto out;
    }
    if (c->ndlv > 1) {
        if ((ids = malloc(c->ndlv * sizeof(*ids))) == NULL) {
            rc = kmdc_card_oom(err);
            goto out;
        }
        for (i = 0; i < c->ndlv; i++)
            ids[i] = c->dlv[i].id;
        qsort(ids, c->ndlv, sizeof(*ids), kmdc_card_cmp_u64);
        for (i = 1; i < c->ndlv; i++)
            if (ids[i] == ids[i - 1])
                BAD("a delivery id is recorded twice");
    }
out:
    free(ids);
    return rc;
}

#undef NEED
#undef BAD

kmdc_status
kmdc_card_parse(const uint8_t *buf, size_t len, const char *pass,
                kmdc_card **out, kmdc_err *err)
{
    uint8_t sum[KMDC_HASH_LEN], key[KMDC_KEY_LEN];
    uint8_t *pt = NULL;
    size_t bodylen, ptlen = 0, i;
    const uint8_t *body;
    kmdc_card *c = NULL;
    kmdc_status rc = KMDC_OK;

    if (out == NULL || (buf == NULL && len > 0))
        return kmdc_err_set(err, KMDC_ERR_ARG, "card: missing argument");
    *out = NULL;
    if (len < CARD_MIN_FILE)
        return kmdc_err_set(err, KMDC_ERR_CORRUPT,
                            "card file is damaged: only %zu bytes long", len);
    if (len > CARD_MAX_FILE)
        return kmdc_err_set(err, KMDC_ERR_LIMIT, "file too large to be a card");
    /* The checksum first: damage anywhere is reported as damage. */
    if ((rc = kmdc_sha256(sum, buf, len - KMDC_CARD_SUM_LEN, err)) != KMDC_OK)
        return rc;
    if (!kmdc_ct_eq(sum, sizeof(sum), buf + len - KMDC_CARD_SUM_LEN, KMDC_CARD_SUM_LEN)) {
        if (memcmp(buf, KMDC_CARD_MAGIC, KMDC_CARD_MAGIC_LEN) != 0)
            return kmdc_err_set(err, KMDC_ERR_CORRUPT,
                                "not a card file, or a damaged one (checksum mismatch)");
        return kmdc_err_set(err, KMDC_ERR_CORRUPT,
                            "card file is damaged: its checksum does not match");
    }
    if (memcmp(buf, KMDC_CARD_MAGIC, KMDC_CARD_MAGIC_LEN) != 0)
        return kmdc_err_set(err, KMDC_ERR_FORMAT, "not a KMDC card file");
    if (buf[8] != KMDC_CARD_VERSION)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "card file version %u is not supported (this build reads version %d)",
                            buf[8], KMDC_CARD_VERSION);
    if (kmdc_get_u16(buf + 10) != 0)
        return kmdc_err_set(err, KMDC_ERR_FORMAT, "card file has unknown flags");
    bodylen = kmdc_get_u32(buf + CARD_OFF_BODYLEN);
    if (bodylen != len - CARD_MIN_FILE)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "card file length does not match its header");
    body = buf + KMDC_CARD_HEADER_LEN;
    if ((c = kmdc_card_alloc()) == NULL)
        return kmdc_card_oom(err);
    if (buf[9] == KMDC_CARD_PROT_NONE) {
        for (i = CARD_OFF_LOG2N; i < KMDC_CARD_HEADER_LEN; i++)
            if (buf[i] != 0) {
                rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                                  "unprotected card file has non-zero key derivation fields");
                goto out;
            }
        rc = body_parse(c, body, bodylen, err);
    } else if (buf[9] == KMDC_CARD_PROT_SCRYPT) {
        unsigned log2n = buf[CARD_OFF_LOG2N], sr = buf[CARD_OFF_R], sp = buf[CARD_OFF_P];
        if (!kmdc_card_kdf_valid(log2n, sr, sp) || buf[CARD_OFF_RSVD] != 0) {
            rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                              "card file asks for scrypt parameters out of bounds");
            goto out;
        }
        if (bodylen < KMDC_TAG_LEN) {
            rc = kmdc_err_set(err, KMDC_ERR_TRUNCATED, "protected card body too short");
            goto out;
        }
        if (pass == NULL || pass[0] == '\0') {
            rc = kmdc_err_set(err, KMDC_ERR_PASSPHRASE,
                              "this card is protected by a passphrase: one is needed to open it");
            goto out;
        }
        ptlen = bodylen - KMDC_TAG_LEN;
        if ((pt = malloc(ptlen > 0 ? ptlen : 1)) == NULL) {
            rc = kmdc_card_oom(err);
            goto out;
        }
        if ((rc = scrypt_key(key, pass, buf + CARD_OFF_SALT, log2n, sr, sp, err)) != KMDC_OK)
            goto out;
        rc = kmdc_gcm_open(pt, key, buf + CARD_OFF_IV, buf, KMDC_CARD_HEADER_LEN,
                           body, bodylen, err);
        if (rc == KMDC_ERR_AUTH) {
            rc = kmdc_err_set(err, KMDC_ERR_PASSPHRASE, "wrong passphrase for this card");
            goto out;
        }
        if (rc != KMDC_OK)
            goto out;
        c->log2n = log2n;
        c->sr = sr;
        c->sp = sp;
        c->protect = 1;
        rc = body_parse(c, pt, ptlen, err);
    } else {
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT, "card file protection %u is unknown", buf[9]);
    }
    if (rc != KMDC_OK)
        goto out;
    *out = c;
    c = NULL;
out:
    kmdc_wipe(key, sizeof(key));
    kmdc_freezero(pt, ptlen > 0 ? ptlen : 1);
    kmdc_card_free(c);
    return rc;
}

/* ---- load and save -------------------------------------------------------------- */

kmdc_status
kmdc_card_load(const char *path, const char *pass, kmdc_card **out, kmdc_err *err)
{
    struct stat st;
    uint8_t *buf = NULL;
    size_t size = 0, got = 0;
    kmdc_status rc = KMDC_OK;
    int fd = -1;

    if (path == NULL || out == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card: missing argument");
    *out = NULL;
    if ((rc = kmdc_file_open_private(path, KMDC_PRIVATE_NOFOLLOW, &fd, &st, "card file",
                                     err)) != KMDC_OK)
        return rc;
    if (!S_ISREG(st.st_mode)) {
        rc = kmdc_err_set(err, KMDC_ERR_IO, "card file %s is not a regular file", path);
        goto out;
    }
    if ((uint64_t)st.st_size > CARD_MAX_FILE) {
        rc = kmdc_err_set(err, KMDC_ERR_LIMIT, "file %s is too large to be a card", path);
        goto out;
    }
    size = (size_t)st.st_size;
    if ((buf = malloc(size > 0 ? size : 1)) == NULL) {
        rc = kmdc_card_oom(err);
        goto out;
    }
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = kmdc_err_sys(err, "cannot read card file", path);
            goto out;
        }
        if (n == 0)
            break;
        got += (size_t)n;
    }
    rc = kmdc_card_parse(buf, got, pass, out, err);
out:
    kmdc_freezero(buf, size > 0 ? size : 1);
    if (fd >= 0)
        close(fd);
    return rc;
}

static kmdc_status
card_write(const kmdc_card *card, const char *path, const char *pass,
           int replace, kmdc_err *err)
{
    uint8_t *img = NULL;
    size_t imglen = 0;
    char *dir = NULL, *tmp = NULL;
    const char *base;
    struct stat st;
    kmdc_status rc;
    int fd = -1;

    if (card == NULL || path == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card: missing argument");
    if ((rc = kmdc_card_split_path(path, &dir, &base, err)) != KMDC_OK)
        goto out;
    if (lstat(path, &st) == 0) {
        if (S_ISLNK(st.st_mode)) {
            rc = kmdc_err_set(err, KMDC_ERR_PERM,
                              "card file %s is a symbolic link; give the path of the card itself",
                              path);
            goto out;
        }
        if (!S_ISREG(st.st_mode)) {
            rc = kmdc_err_set(err, KMDC_ERR_IO, "%s is not a regular file", path);
            goto out;
        }
        if (!replace) {
            rc = kmdc_err_set(err, KMDC_ERR_IO, "%s already exists; refusing to overwrite it",
                              path);
            goto out;
        }
    } else if (errno != ENOENT) {
        rc = kmdc_err_sys(err, "cannot stat", path);
        goto out;
    }
    if ((rc = kmdc_card_serialize(card, pass, &img, &imglen, err)) != KMDC_OK)
        goto out;
    if ((rc = kmdc_file_open_temp(dir, base, 0600, &fd, &tmp, err)) != KMDC_OK)
        goto out;
    if ((rc = kmdc_write_all(fd, img, imglen, tmp, err)) != KMDC_OK)
        goto out;
    rc = kmdc_file_commit_temp(fd, tmp, path, replace ? 0 : KMDC_FILE_NOREPLACE, err);
    fd = -1;
    tmp = NULL;
out:
    kmdc_file_abort_temp(fd, tmp);
    free(dir);
    kmdc_freezero(img, imglen);
    return rc;
}

kmdc_status
kmdc_card_save(const kmdc_card *card, const char *path, const char *pass,
               kmdc_err *err)
{
    return card_write(card, path, pass, 1, err);
}

kmdc_status
kmdc_card_save_new(const kmdc_card *card, const char *path, const char *pass,
                   int overwrite, kmdc_err *err)
{
    return card_write(card, path, pass, overwrite != 0, err);
}
