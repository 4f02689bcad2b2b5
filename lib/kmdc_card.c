/* kmdc_card.c - the card file: format, atomic replace, locks, outbox, chains. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "kmdc_card.h"
#include "kmdc_file.h"
#include "kmdc_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
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

typedef struct skip_ent {
    uint64_t seq;
    uint8_t mk[KMDC_KEY_LEN];
} skip_ent;

typedef struct dlv_ent {
    uint64_t id;
    char *name;   /* NUL-terminated, len bytes */
    size_t len;
} dlv_ent;

struct kmdc_card {
    uint64_t serial;
    kmdc_card_state state;
    char address[65];
    size_t address_len;
    char *url;
    size_t url_len;
    uint8_t up_ck[KMDC_KEY_LEN];
    uint64_t up_next;
    uint8_t down_ck[KMDC_KEY_LEN];
    uint64_t down_next;
    uint8_t ak[KMDC_KEY_LEN];
    int has_r;
    uint8_t r[KMDC_KEY_LEN];
    size_t nskip;                                /* sorted by seq, ascending */
    skip_ent skip[KMDC_CARD_MAX_SKIPPED];
    size_t ndlv;                                 /* oldest first */
    dlv_ent dlv[KMDC_CARD_MAX_DELIVERIES];
    unsigned log2n, sr, sp;                      /* scrypt parameters */
    int protect;                                 /* loaded from a protected file */
};

struct kmdc_card_lockh {
    int fd;
};

/* ---- small helpers ---------------------------------------------------------- */

static kmdc_status
sys_fail(kmdc_err *err, const char *what, const char *path)
{
    int e = errno;

    return kmdc_err_set(err, KMDC_ERR_IO, "%s %s: %s", what, path, strerror(e));
}

static kmdc_status
oom(kmdc_err *err)
{
    return kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
}

/* malloc'd a || b || c. */
static char *
str3(const char *a, const char *b, const char *c)
{
    size_t la = strlen(a), lb = strlen(b), lc = strlen(c);
    char *s = malloc(la + lb + lc + 1);

    if (s == NULL)
        return NULL;
    memcpy(s, a, la);
    memcpy(s + la, b, lb);
    memcpy(s + la + lb, c, lc);
    s[la + lb + lc] = '\0';
    return s;
}

/* Split path into a malloc'd folder ("." when none) and a pointer to the base. */
static kmdc_status
split_path(const char *path, char **dir, const char **base, kmdc_err *err)
{
    if (path[0] == '\0' || path[strlen(path) - 1] == '/')
        return kmdc_err_set(err, KMDC_ERR_ARG, "a card path names a file, not a folder");
    return kmdc_path_split(path, dir, base, err);
}

/* ---- validation ------------------------------------------------------------- */

static int
url_valid(const char *s, size_t len)
{
    size_t i;

    if (len < 1 || len > KMDC_CARD_MAX_URL)
        return 0;
    for (i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

static int
kdf_valid(unsigned log2n, unsigned r, unsigned p)
{
    uint64_t rn;

    if (log2n < 1 || log2n > KMDC_CARD_SCRYPT_LOG2N_MAX || r < 1 ||
        r > KMDC_CARD_SCRYPT_R_MAX || p < 1 || p > KMDC_CARD_SCRYPT_P_MAX)
        return 0;
    rn = (uint64_t)r << log2n;
    return rn <= (UINT64_C(1) << 20) && (uint64_t)p * rn <= (UINT64_C(1) << 22);
}

/* ---- the card in memory --------------------------------------------------- */

static kmdc_card *
card_alloc(void)
{
    kmdc_card *c = calloc(1, sizeof(*c));

    if (c == NULL)
        return NULL;
    c->log2n = KMDC_CARD_SCRYPT_LOG2N;
    c->sr = KMDC_CARD_SCRYPT_R;
    c->sp = KMDC_CARD_SCRYPT_P;
    return c;
}

void
kmdc_card_free(kmdc_card *card)
{
    size_t i;

    if (card == NULL)
        return;
    for (i = 0; i < card->ndlv; i++)
        kmdc_freezero(card->dlv[i].name, card->dlv[i].len + 1);
    kmdc_freezero(card->url, card->url_len + 1);
    kmdc_freezero(card, sizeof(*card));
}

kmdc_status
kmdc_card_new(kmdc_card **out, uint64_t serial, const char *address,
              const char *url, const uint8_t uck0[KMDC_KEY_LEN],
              const uint8_t dck0[KMDC_KEY_LEN], const uint8_t ak[KMDC_KEY_LEN],
              kmdc_err *err)
{
    kmdc_card *c = NULL;
    kmdc_status rc = KMDC_OK;
    size_t alen, ulen;

    if (out == NULL || address == NULL || url == NULL || uck0 == NULL ||
        dck0 == NULL || ak == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card: missing argument");
    *out = NULL;
    alen = strlen(address);
    ulen = strlen(url);
    if (serial == 0 || serial > KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "a serial lies in 1 .. 2^63-1");
    if (!kmdc_address_valid(address, alen))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "an address is 1-64 of a-z 0-9 . _ - starting with a letter or digit");
    if (!url_valid(url, ulen))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "the datacenter URL must be 1-%d printable characters without spaces",
                            KMDC_CARD_MAX_URL);
    if ((c = card_alloc()) == NULL || (c->url = malloc(ulen + 1)) == NULL) {
        rc = oom(err);
        goto out;
    }
    c->serial = serial;
    c->state = KMDC_CARD_ISSUED;
    memcpy(c->address, address, alen + 1);
    c->address_len = alen;
    memcpy(c->url, url, ulen + 1);
    c->url_len = ulen;
    memcpy(c->up_ck, uck0, KMDC_KEY_LEN);
    memcpy(c->down_ck, dck0, KMDC_KEY_LEN);
    memcpy(c->ak, ak, KMDC_KEY_LEN);
    *out = c;
    c = NULL;
out:
    kmdc_card_free(c);
    return rc;
}

kmdc_status
kmdc_card_set_kdf(kmdc_card *card, unsigned log2n, unsigned r, unsigned p,
                  kmdc_err *err)
{
    if (!kdf_valid(log2n, r, p))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "scrypt parameters out of bounds (1 <= log2 N <= %d, "
                            "r <= %d, p <= %d, r*N <= 2^20, p*r*N <= 2^22)",
                            KMDC_CARD_SCRYPT_LOG2N_MAX, KMDC_CARD_SCRYPT_R_MAX,
                            KMDC_CARD_SCRYPT_P_MAX);
    card->log2n = log2n;
    card->sr = r;
    card->sp = p;
    return KMDC_OK;
}

void
kmdc_card_set_unprotected(kmdc_card *card)
{
    card->protect = 0;
}

kmdc_status
kmdc_passphrase_file_read(const char *path, char *buf, size_t cap, kmdc_err *err)
{
    struct stat st;
    size_t len = 0;
    kmdc_status rc = KMDC_OK;
    char ch;
    ssize_t n;
    int fd;

    if (path == NULL || buf == NULL || cap < 2)
        return kmdc_err_set(err, KMDC_ERR_ARG, "passphrase: missing argument");
    buf[0] = '\0';
    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0)
        return kmdc_err_set(err, KMDC_ERR_IO, "cannot read the passphrase file %s: %s", path,
                            strerror(errno));
    if (fstat(fd, &st) != 0) {
        rc = kmdc_err_set(err, KMDC_ERR_IO, "cannot stat the passphrase file %s: %s", path,
                          strerror(errno));
        goto out;
    }
    if (S_ISREG(st.st_mode) && (st.st_mode & 077) != 0) {
        rc = kmdc_err_set(err, KMDC_ERR_PERM,
                          "passphrase file can be read or written by others; run: chmod 600 %s",
                          path);
        goto out;
    }
    /* Byte by byte: nothing past the first line is read into any buffer. */
    for (;;) {
        n = read(fd, &ch, 1);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = kmdc_err_set(err, KMDC_ERR_IO, "cannot read the passphrase file %s: %s",
                              path, strerror(errno));
            goto out;
        }
        if (n == 0 || ch == '\n')
            break;
        if (len + 1 >= cap) {
            rc = kmdc_err_set(err, KMDC_ERR_PASSPHRASE,
                              "the passphrase in %s is longer than %zu bytes", path, cap - 2);
            goto out;
        }
        buf[len++] = ch;
    }
    if (len > 0 && buf[len - 1] == '\r')
        len--;
    buf[len] = '\0';
    if (len == 0)
        rc = kmdc_err_set(err, KMDC_ERR_PASSPHRASE, n == 0 && st.st_size == 0
                          ? "the passphrase file %s is empty"
                          : "the passphrase file %s starts with an empty line", path);
out:
    close(fd);
    ch = 0;
    if (rc != KMDC_OK)
        kmdc_wipe(buf, cap);
    return rc;
}

uint64_t kmdc_card_serial(const kmdc_card *card) { return card->serial; }
const char *kmdc_card_address(const kmdc_card *card) { return card->address; }
const char *kmdc_card_url(const kmdc_card *card) { return card->url; }
kmdc_card_state kmdc_card_get_state(const kmdc_card *card) { return card->state; }
uint64_t kmdc_card_up_next(const kmdc_card *card) { return card->up_next; }
uint64_t kmdc_card_down_next(const kmdc_card *card) { return card->down_next; }
const uint8_t *kmdc_card_ak(const kmdc_card *card) { return card->ak; }
int kmdc_card_is_protected(const kmdc_card *card) { return card->protect; }
int kmdc_card_activation_pending(const kmdc_card *card) { return card->has_r; }
size_t kmdc_card_skipped_count(const kmdc_card *card) { return card->nskip; }
size_t kmdc_card_delivery_count(const kmdc_card *card) { return card->ndlv; }

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

    if (!kdf_valid(log2n, r, p))
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
        rc = oom(err);
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
            rc = oom(err);
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

static int
cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
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
    if (!url_valid((const char *)r.p + r.off, l))
        BAD("card datacenter URL is not valid");
    if ((c->url = malloc(l + 1)) == NULL) {
        rc = oom(err);
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
            rc = oom(err);
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
            rc = oom(err);
            goto out;
        }
        for (i = 0; i < c->ndlv; i++)
            ids[i] = c->dlv[i].id;
        qsort(ids, c->ndlv, sizeof(*ids), cmp_u64);
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
    if ((c = card_alloc()) == NULL)
        return oom(err);
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
        if (!kdf_valid(log2n, sr, sp) || buf[CARD_OFF_RSVD] != 0) {
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
            rc = oom(err);
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
    fd = open(path, O_RDONLY | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY);
    if (fd < 0) {
        if (errno == ELOOP)
            return kmdc_err_set(err, KMDC_ERR_PERM,
                                "card file %s is a symbolic link; give the path of the card itself",
                                path);
        return sys_fail(err, "cannot open card file", path);
    }
    if (fstat(fd, &st) != 0) {
        rc = sys_fail(err, "cannot stat card file", path);
        goto out;
    }
    if (!S_ISREG(st.st_mode)) {
        rc = kmdc_err_set(err, KMDC_ERR_IO, "card file %s is not a regular file", path);
        goto out;
    }
    if ((st.st_mode & 077) != 0) {
        rc = kmdc_err_set(err, KMDC_ERR_PERM,
                          "card file can be read or written by others; run: chmod 600 %s",
                          path);
        goto out;
    }
    if ((uint64_t)st.st_size > CARD_MAX_FILE) {
        rc = kmdc_err_set(err, KMDC_ERR_LIMIT, "file %s is too large to be a card", path);
        goto out;
    }
    size = (size_t)st.st_size;
    if ((buf = malloc(size > 0 ? size : 1)) == NULL) {
        rc = oom(err);
        goto out;
    }
    while (got < size) {
        ssize_t n = read(fd, buf + got, size - got);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            rc = sys_fail(err, "cannot read card file", path);
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
    if ((rc = split_path(path, &dir, &base, err)) != KMDC_OK)
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
        rc = sys_fail(err, "cannot stat", path);
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

/* ---- activation ---------------------------------------------------------------- */

kmdc_status
kmdc_card_activation_begin(kmdc_card *card, uint8_t r_out[KMDC_KEY_LEN],
                           kmdc_err *err)
{
    kmdc_status rc;

    if (card->state != KMDC_CARD_ISSUED)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card %016llx is already activated",
                            (unsigned long long)card->serial);
    if (!card->has_r) {
        if ((rc = kmdc_random(card->r, KMDC_KEY_LEN, err)) != KMDC_OK) {
            kmdc_wipe(card->r, KMDC_KEY_LEN);
            return rc;
        }
        card->has_r = 1;
    }
    memcpy(r_out, card->r, KMDC_KEY_LEN);
    return KMDC_OK;
}

static kmdc_status
rotate_all(const kmdc_card *card, uint8_t uck[KMDC_KEY_LEN],
           uint8_t dck[KMDC_KEY_LEN], uint8_t ak[KMDC_KEY_LEN], kmdc_err *err)
{
    kmdc_status rc;

    if (!card->has_r)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card %016llx has no activation pending",
                            (unsigned long long)card->serial);
    if ((rc = kmdc_activate_key(uck, card->r, card->up_ck, "up_chain", err)) != KMDC_OK ||
        (rc = kmdc_activate_key(dck, card->r, card->down_ck, "down_chain", err)) != KMDC_OK ||
        (rc = kmdc_activate_key(ak, card->r, card->ak, "auth_key", err)) != KMDC_OK) {
        kmdc_wipe(uck, KMDC_KEY_LEN);
        kmdc_wipe(dck, KMDC_KEY_LEN);
        kmdc_wipe(ak, KMDC_KEY_LEN);
    }
    return rc;
}

kmdc_status
kmdc_card_activation_preview(const kmdc_card *card, uint8_t uck[KMDC_KEY_LEN],
                             uint8_t dck[KMDC_KEY_LEN], uint8_t ak[KMDC_KEY_LEN],
                             kmdc_err *err)
{
    uint8_t u[KMDC_KEY_LEN], d[KMDC_KEY_LEN], a[KMDC_KEY_LEN];
    kmdc_status rc;

    if ((rc = rotate_all(card, u, d, a, err)) == KMDC_OK) {
        if (uck != NULL)
            memcpy(uck, u, KMDC_KEY_LEN);
        if (dck != NULL)
            memcpy(dck, d, KMDC_KEY_LEN);
        if (ak != NULL)
            memcpy(ak, a, KMDC_KEY_LEN);
    }
    kmdc_wipe(u, sizeof(u));
    kmdc_wipe(d, sizeof(d));
    kmdc_wipe(a, sizeof(a));
    return rc;
}

kmdc_status
kmdc_card_activation_confirm(kmdc_card *card, kmdc_err *err)
{
    uint8_t u[KMDC_KEY_LEN], d[KMDC_KEY_LEN], a[KMDC_KEY_LEN];
    kmdc_status rc;

    if ((rc = rotate_all(card, u, d, a, err)) == KMDC_OK) {
        memcpy(card->up_ck, u, KMDC_KEY_LEN);
        memcpy(card->down_ck, d, KMDC_KEY_LEN);
        memcpy(card->ak, a, KMDC_KEY_LEN);
        kmdc_wipe(card->r, KMDC_KEY_LEN);
        card->has_r = 0;
        card->state = KMDC_CARD_ACTIVE;
    }
    kmdc_wipe(u, sizeof(u));
    kmdc_wipe(d, sizeof(d));
    kmdc_wipe(a, sizeof(a));
    return rc;
}

/* ---- up chain -------------------------------------------------------------------- */

static kmdc_status
need_active(const kmdc_card *card, kmdc_err *err)
{
    if (card->state != KMDC_CARD_ACTIVE)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "card %016llx is not activated yet (run kmdc activate)",
                            (unsigned long long)card->serial);
    return KMDC_OK;
}

kmdc_status
kmdc_card_up_reserve(kmdc_card *card, uint64_t *seq, uint8_t mk_out[KMDC_KEY_LEN],
                     kmdc_err *err)
{
    uint8_t mk[KMDC_KEY_LEN], ck[KMDC_KEY_LEN];
    kmdc_status rc;

    if ((rc = need_active(card, err)) != KMDC_OK)
        return rc;
    /* up_next = n + 1 must stay within 0 .. 2^63-1. */
    if (card->up_next >= KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_EXHAUSTED,
                            "card %016llx has used all its up counters; it needs a new card",
                            (unsigned long long)card->serial);
    if ((rc = kmdc_chain_step(mk, ck, card->up_ck, err)) == KMDC_OK) {
        *seq = card->up_next;
        memcpy(mk_out, mk, KMDC_KEY_LEN);
        memcpy(card->up_ck, ck, KMDC_KEY_LEN);
        card->up_next++;
    }
    kmdc_wipe(mk, sizeof(mk));
    kmdc_wipe(ck, sizeof(ck));
    return rc;
}

/* ---- down chain ------------------------------------------------------------------ */

static skip_ent *
skip_find(const kmdc_card *card, uint64_t seq)
{
    size_t lo = 0, hi = card->nskip;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (card->skip[mid].seq == seq)
            return (skip_ent *)&card->skip[mid];
        if (card->skip[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Drop stored keys more than KMDC_CARD_MAX_SKIPPED behind down_next. */
static void
skip_prune(kmdc_card *card)
{
    uint64_t low = card->down_next > KMDC_CARD_MAX_SKIPPED
                       ? card->down_next - KMDC_CARD_MAX_SKIPPED : 0;
    size_t k = 0;

    while (k < card->nskip && card->skip[k].seq < low)
        k++;
    if (k == 0)
        return;
    kmdc_wipe(card->skip, k * sizeof(skip_ent));
    memmove(card->skip, card->skip + k, (card->nskip - k) * sizeof(skip_ent));
    card->nskip -= k;
    kmdc_wipe(card->skip + card->nskip, k * sizeof(skip_ent));
}

kmdc_status
kmdc_card_down_key(const kmdc_card *card, uint64_t m, uint8_t mk_out[KMDC_KEY_LEN],
                   kmdc_err *err)
{
    uint8_t ck[KMDC_KEY_LEN], mk[KMDC_KEY_LEN];
    const skip_ent *e;
    kmdc_status rc;

    if ((rc = need_active(card, err)) != KMDC_OK)
        return rc;
    if (m < card->down_next) {
        if ((e = skip_find(card, m)) == NULL)
            return kmdc_err_set(err, KMDC_ERR_NOTFOUND,
                                "card has no key for down seq %llu (already used or too old)",
                                (unsigned long long)m);
        memcpy(mk_out, e->mk, KMDC_KEY_LEN);
        return KMDC_OK;
    }
    if (m - card->down_next > KMDC_CARD_MAX_AHEAD)
        return kmdc_err_set(err, KMDC_ERR_LIMIT,
                            "down seq %llu is more than %d ahead of the card's counter %llu; "
                            "resynchronise the card",
                            (unsigned long long)m, KMDC_CARD_MAX_AHEAD,
                            (unsigned long long)card->down_next);
    memcpy(ck, card->down_ck, KMDC_KEY_LEN);
    if ((rc = kmdc_chain_seek(ck, card->down_next, m, mk, err)) == KMDC_OK)
        memcpy(mk_out, mk, KMDC_KEY_LEN);
    kmdc_wipe(ck, sizeof(ck));
    kmdc_wipe(mk, sizeof(mk));
    return rc;
}

kmdc_status
kmdc_card_down_advance(kmdc_card *card, uint64_t m, kmdc_err *err)
{
    uint8_t ck[KMDC_KEY_LEN];
    skip_ent *tmp = NULL;
    uint64_t s, low, next;
    size_t k = 0, i;
    kmdc_status rc;

    if ((rc = need_active(card, err)) != KMDC_OK)
        return rc;
    if (m < card->down_next) {
        if (skip_find(card, m) == NULL)
            return kmdc_err_set(err, KMDC_ERR_NOTFOUND,
                                "card has no key for down seq %llu (already used or too old)",
                                (unsigned long long)m);
        return KMDC_OK;
    }
    if (m - card->down_next > KMDC_CARD_MAX_AHEAD)
        return kmdc_err_set(err, KMDC_ERR_LIMIT,
                            "down seq %llu is more than %d ahead of the card's counter %llu",
                            (unsigned long long)m, KMDC_CARD_MAX_AHEAD,
                            (unsigned long long)card->down_next);
    if (m >= KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_EXHAUSTED,
                            "card %016llx has used all its down counters",
                            (unsigned long long)card->serial);
    next = m + 1;
    low = next > KMDC_CARD_MAX_SKIPPED ? next - KMDC_CARD_MAX_SKIPPED : 0;
    if ((tmp = calloc(KMDC_CARD_MAX_SKIPPED, sizeof(*tmp))) == NULL)
        return oom(err);
    for (i = 0; i < card->nskip; i++)
        if (card->skip[i].seq >= low)
            tmp[k++] = card->skip[i];
    memcpy(ck, card->down_ck, KMDC_KEY_LEN);
    for (s = card->down_next; s <= m; s++) {
        uint8_t mk[KMDC_KEY_LEN];
        rc = kmdc_chain_step(mk, ck, ck, err);
        if (rc == KMDC_OK && s >= low && k < KMDC_CARD_MAX_SKIPPED) {
            tmp[k].seq = s;
            memcpy(tmp[k].mk, mk, KMDC_KEY_LEN);
            k++;
        }
        kmdc_wipe(mk, sizeof(mk));
        if (rc != KMDC_OK)
            goto out;
    }
    kmdc_wipe(card->skip, sizeof(card->skip));
    memcpy(card->skip, tmp, k * sizeof(*tmp));
    card->nskip = k;
    memcpy(card->down_ck, ck, KMDC_KEY_LEN);
    card->down_next = next;
out:
    kmdc_wipe(ck, sizeof(ck));
    kmdc_freezero(tmp, KMDC_CARD_MAX_SKIPPED * sizeof(*tmp));
    return rc;
}

static void
dlv_remove(kmdc_card *card, size_t i)
{
    kmdc_freezero(card->dlv[i].name, card->dlv[i].len + 1);
    memmove(card->dlv + i, card->dlv + i + 1, (card->ndlv - i - 1) * sizeof(dlv_ent));
    card->ndlv--;
    memset(&card->dlv[card->ndlv], 0, sizeof(dlv_ent));
}

kmdc_status
kmdc_card_delivery_record(kmdc_card *card, uint64_t delivery_id,
                          const char *filename, kmdc_err *err)
{
    char *copy;
    size_t len, i;

    if (filename == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card: missing file name");
    len = strlen(filename);
    if (len < 1 || len > KMDC_CARD_MAX_FILENAME)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "a recorded file name is 1-%d bytes", KMDC_CARD_MAX_FILENAME);
    if ((copy = malloc(len + 1)) == NULL)
        return oom(err);
    memcpy(copy, filename, len + 1);
    for (i = 0; i < card->ndlv; i++)
        if (card->dlv[i].id == delivery_id) {
            dlv_remove(card, i);
            break;
        }
    if (card->ndlv == KMDC_CARD_MAX_DELIVERIES)
        dlv_remove(card, 0);
    card->dlv[card->ndlv].id = delivery_id;
    card->dlv[card->ndlv].name = copy;
    card->dlv[card->ndlv].len = len;
    card->ndlv++;
    return KMDC_OK;
}

kmdc_status
kmdc_card_down_forget(kmdc_card *card, uint64_t m, kmdc_err *err)
{
    skip_ent *e;
    size_t at;

    if (m >= card->down_next)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "down seq %llu was not advanced over yet", (unsigned long long)m);
    if ((e = skip_find(card, m)) == NULL)
        return KMDC_OK;
    at = (size_t)(e - card->skip);
    kmdc_wipe(e, sizeof(*e));
    memmove(card->skip + at, card->skip + at + 1,
            (card->nskip - at - 1) * sizeof(skip_ent));
    card->nskip--;
    kmdc_wipe(card->skip + card->nskip, sizeof(skip_ent));
    return KMDC_OK;
}

kmdc_status
kmdc_card_down_done(kmdc_card *card, uint64_t m, uint64_t delivery_id,
                    const char *filename, kmdc_err *err)
{
    kmdc_status rc;

    if (m >= card->down_next)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "down seq %llu was not advanced over yet", (unsigned long long)m);
    if ((rc = kmdc_card_delivery_record(card, delivery_id, filename, err)) != KMDC_OK)
        return rc;
    return kmdc_card_down_forget(card, m, err);
}

kmdc_status
kmdc_card_delivery_lookup(const kmdc_card *card, uint64_t id,
                          const char **filename, kmdc_err *err)
{
    size_t i;

    for (i = card->ndlv; i-- > 0;)
        if (card->dlv[i].id == id) {
            if (filename != NULL)
                *filename = card->dlv[i].name;
            return KMDC_OK;
        }
    return kmdc_err_set(err, KMDC_ERR_NOTFOUND, "delivery %llu was not written yet",
                        (unsigned long long)id);
}

kmdc_status
kmdc_card_resync(kmdc_card *card, uint64_t up_next, uint64_t down_next,
                 kmdc_err *err)
{
    uint8_t uck[KMDC_KEY_LEN], dck[KMDC_KEY_LEN];
    kmdc_status rc;

    if (up_next > KMDC_U63_MAX || down_next > KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "a counter lies in 0 .. 2^63-1");
    if (up_next < card->up_next || down_next < card->down_next)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "a card's counters only move forward (up %llu, down %llu)",
                            (unsigned long long)card->up_next,
                            (unsigned long long)card->down_next);
    if (up_next - card->up_next > KMDC_CARD_RESYNC_MAX ||
        down_next - card->down_next > KMDC_CARD_RESYNC_MAX)
        return kmdc_err_set(err, KMDC_ERR_LIMIT,
                            "a resync moves a counter at most %llu steps",
                            (unsigned long long)KMDC_CARD_RESYNC_MAX);
    memcpy(uck, card->up_ck, KMDC_KEY_LEN);
    memcpy(dck, card->down_ck, KMDC_KEY_LEN);
    if ((rc = kmdc_chain_seek(uck, card->up_next, up_next, NULL, err)) == KMDC_OK &&
        (rc = kmdc_chain_seek(dck, card->down_next, down_next, NULL, err)) == KMDC_OK) {
        memcpy(card->up_ck, uck, KMDC_KEY_LEN);
        memcpy(card->down_ck, dck, KMDC_KEY_LEN);
        card->up_next = up_next;
        card->down_next = down_next;
        skip_prune(card);
    }
    kmdc_wipe(uck, sizeof(uck));
    kmdc_wipe(dck, sizeof(dck));
    return rc;
}

/* ---- lock files ------------------------------------------------------------------- */

kmdc_status
kmdc_card_lock(const char *card_path, kmdc_card_lockwhich which, int wait,
               kmdc_card_lockh **out, kmdc_err *err)
{
    static const char *const suffix[] = { ".lock", ".send.lock", ".recv.lock" };
    kmdc_card_lockh *h = NULL;
    char *path = NULL;
    kmdc_status rc = KMDC_OK;
    int fd = -1;

    if (card_path == NULL || out == NULL || (unsigned)which > KMDC_LOCK_RECV)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card lock: bad argument");
    *out = NULL;
    if ((path = str3(card_path, suffix[which], "")) == NULL ||
        (h = malloc(sizeof(*h))) == NULL) {
        rc = oom(err);
        goto out;
    }
    fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0) {
        rc = sys_fail(err, "cannot open lock file", path);
        goto out;
    }
    for (;;) {
        if (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EWOULDBLOCK) {
            rc = kmdc_err_set(err, KMDC_ERR_LOCKED,
                              "%s is held by another %s", path,
                              which == KMDC_LOCK_SEND ? "sender"
                              : which == KMDC_LOCK_RECV ? "receiver" : "process");
            goto out;
        }
        rc = sys_fail(err, "cannot lock", path);
        goto out;
    }
    h->fd = fd;
    fd = -1;
    *out = h;
    h = NULL;
out:
    if (fd >= 0)
        close(fd);
    free(h);
    free(path);
    return rc;
}

void
kmdc_card_unlock(kmdc_card_lockh *h)
{
    if (h == NULL)
        return;
    /* Closing the descriptor releases the flock; the file stays. */
    close(h->fd);
    free(h);
}

/* ---- outbox ------------------------------------------------------------------------ */

static kmdc_status
outbox_dir(const char *card_path, char **dir, kmdc_err *err)
{
    if (card_path == NULL || card_path[0] == '\0')
        return kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing card path");
    if ((*dir = str3(card_path, ".outbox", "")) == NULL)
        return oom(err);
    return KMDC_OK;
}

/* Make sure the outbox folder exists, is a real folder, and is private. */
static kmdc_status
outbox_ensure(const char *card_path, const char *dir, kmdc_err *err)
{
    struct stat st;
    char *parent = NULL;
    const char *base;
    kmdc_status rc = KMDC_OK;

    if (mkdir(dir, 0700) == 0) {
        if (chmod(dir, 0700) != 0)
            return sys_fail(err, "cannot set mode 0700 on", dir);
        if ((rc = split_path(card_path, &parent, &base, err)) == KMDC_OK)
            rc = kmdc_fsync_dir(parent, err);
        free(parent);
        return rc;
    }
    if (errno != EEXIST)
        return sys_fail(err, "cannot create outbox folder", dir);
    if (lstat(dir, &st) != 0)
        return sys_fail(err, "cannot stat", dir);
    if (!S_ISDIR(st.st_mode))
        return kmdc_err_set(err, KMDC_ERR_PERM, "%s is not a folder", dir);
    if ((st.st_mode & 077) != 0)
        return kmdc_err_set(err, KMDC_ERR_PERM,
                            "outbox can be read or written by others; run: chmod 700 %s", dir);
    return KMDC_OK;
}

static kmdc_status
outbox_entry(const char *dir, uint64_t seq, char **out, kmdc_err *err)
{
    char hex[17];

    kmdc_serial_format(hex, seq);
    if ((*out = malloc(strlen(dir) + 1 + 16 + 5 + 1)) == NULL)
        return oom(err);
    memcpy(*out, dir, strlen(dir));
    (*out)[strlen(dir)] = '/';
    memcpy(*out + strlen(dir) + 1, hex, 16);
    memcpy(*out + strlen(dir) + 17, ".kmdc", 6);
    return KMDC_OK;
}

kmdc_status
kmdc_outbox_create(const char *card_path, uint64_t seq, int *fd, char **tmppath,
                   kmdc_err *err)
{
    char *dir = NULL, hex[17];
    kmdc_status rc;

    if (fd == NULL || tmppath == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing argument");
    *fd = -1;
    *tmppath = NULL;
    kmdc_serial_format(hex, seq);
    if ((rc = outbox_dir(card_path, &dir, err)) == KMDC_OK &&
        (rc = outbox_ensure(card_path, dir, err)) == KMDC_OK)
        rc = kmdc_file_open_temp(dir, hex, 0600, fd, tmppath, err);
    free(dir);
    return rc;
}

kmdc_status
kmdc_outbox_commit(const char *card_path, uint64_t seq, int fd, char *tmppath,
                   kmdc_err *err)
{
    char *dir = NULL, *final = NULL;
    kmdc_status rc;

    if (tmppath == NULL || fd < 0) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing argument");
        goto out;
    }
    if ((rc = outbox_dir(card_path, &dir, err)) != KMDC_OK ||
        (rc = outbox_entry(dir, seq, &final, err)) != KMDC_OK)
        goto out;
    /* fsync, close, move without replacing <seq>.kmdc, fsync the outbox */
    rc = kmdc_file_commit_temp(fd, tmppath, final, KMDC_FILE_NOREPLACE, err);
    fd = -1;
    tmppath = NULL;
out:
    kmdc_file_abort_temp(fd, tmppath);
    free(dir);
    free(final);
    return rc;
}

void
kmdc_outbox_abort(int fd, char *tmppath)
{
    kmdc_file_abort_temp(fd, tmppath);
}

/* 1 and *seq when name is exactly <16 lowercase hex>.kmdc */
static int
entry_name(const char *name, uint64_t *seq)
{
    uint8_t b[8];

    if (strlen(name) != 21 || memcmp(name + 16, ".kmdc", 5) != 0 ||
        kmdc_hex_decode(b, sizeof(b), name, 16, NULL) != KMDC_OK)
        return 0;
    *seq = kmdc_get_u64(b);
    return 1;
}

kmdc_status
kmdc_outbox_list(const char *card_path, uint64_t **seqs, size_t *n, kmdc_err *err)
{
    char *dir = NULL;
    DIR *d = NULL;
    struct dirent *de;
    uint64_t *v = NULL, seq;
    size_t cnt = 0, cap = 0;
    kmdc_status rc;

    if (seqs == NULL || n == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing argument");
    *seqs = NULL;
    *n = 0;
    if ((rc = outbox_dir(card_path, &dir, err)) != KMDC_OK)
        goto out;
    if ((d = opendir(dir)) == NULL) {
        if (errno != ENOENT)
            rc = sys_fail(err, "cannot open outbox", dir);
        goto out;
    }
    for (;;) {
        errno = 0;
        if ((de = readdir(d)) == NULL) {
            if (errno != 0)
                rc = sys_fail(err, "cannot read outbox", dir);
            break;
        }
        if (!entry_name(de->d_name, &seq))
            continue;
        if (cnt == cap) {
            size_t ncap = cap ? cap * 2 : 16;
            uint64_t *nv = realloc(v, ncap * sizeof(*nv));
            if (nv == NULL) {
                rc = oom(err);
                goto out;
            }
            v = nv;
            cap = ncap;
        }
        v[cnt++] = seq;
    }
    if (rc != KMDC_OK)
        goto out;
    if (cnt > 1)
        qsort(v, cnt, sizeof(*v), cmp_u64);
    *seqs = v;
    *n = cnt;
    v = NULL;
out:
    if (d != NULL)
        closedir(d);
    free(v);
    free(dir);
    return rc;
}

kmdc_status
kmdc_outbox_path(const char *card_path, uint64_t seq, char **out, kmdc_err *err)
{
    char *dir = NULL;
    kmdc_status rc;

    if (out == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing argument");
    *out = NULL;
    if ((rc = outbox_dir(card_path, &dir, err)) == KMDC_OK)
        rc = outbox_entry(dir, seq, out, err);
    free(dir);
    return rc;
}

kmdc_status
kmdc_outbox_remove(const char *card_path, uint64_t seq, kmdc_err *err)
{
    char *dir = NULL, *path = NULL;
    kmdc_status rc;

    if ((rc = outbox_dir(card_path, &dir, err)) != KMDC_OK ||
        (rc = outbox_entry(dir, seq, &path, err)) != KMDC_OK)
        goto out;
    if (unlink(path) != 0) {
        if (errno != ENOENT)
            rc = sys_fail(err, "cannot remove", path);
        goto out;
    }
    rc = kmdc_fsync_dir(dir, err);
out:
    free(dir);
    free(path);
    return rc;
}

kmdc_status
kmdc_outbox_sweep(const char *card_path, kmdc_err *err)
{
    char *dir = NULL;
    DIR *d = NULL;
    struct dirent *de;
    kmdc_status rc;

    if ((rc = outbox_dir(card_path, &dir, err)) != KMDC_OK)
        goto out;
    if ((d = opendir(dir)) == NULL) {
        if (errno != ENOENT)
            rc = sys_fail(err, "cannot open outbox", dir);
        goto out;
    }
    for (;;) {
        size_t l;
        errno = 0;
        if ((de = readdir(d)) == NULL) {
            if (errno != 0)
                rc = sys_fail(err, "cannot read outbox", dir);
            break;
        }
        l = strlen(de->d_name);
        if (de->d_name[0] != '.' || l < 5 || strcmp(de->d_name + l - 4, ".tmp") != 0)
            continue;
        if (unlinkat(dirfd(d), de->d_name, 0) != 0 && errno != ENOENT) {
            rc = sys_fail(err, "cannot remove a temporary file in", dir);
            break;
        }
    }
out:
    if (d != NULL)
        closedir(d);
    free(dir);
    return rc;
}
