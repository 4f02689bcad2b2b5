/* kmdc_card.c - the card in memory: create, validate, free, getters; passphrase files.
 * The other parts of the card are listed in kmdc_card_int.h. */
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

/* ---- small helpers ---------------------------------------------------------- */

kmdc_status
kmdc_card_oom(kmdc_err *err)
{
    return kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
}

/* malloc'd a || b || c. */
char *
kmdc_card_str3(const char *a, const char *b, const char *c)
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
kmdc_status
kmdc_card_split_path(const char *path, char **dir, const char **base, kmdc_err *err)
{
    if (path[0] == '\0' || path[strlen(path) - 1] == '/')
        return kmdc_err_set(err, KMDC_ERR_ARG, "a card path names a file, not a folder");
    return kmdc_path_split(path, dir, base, err);
}

int
kmdc_card_cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

    return x < y ? -1 : x > y;
}

/* ---- validation ------------------------------------------------------------- */

int
kmdc_card_url_valid(const char *s, size_t len)
{
    size_t i;

    if (len < 1 || len > KMDC_CARD_MAX_URL)
        return 0;
    for (i = 0; i < len; i++)
        if ((unsigned char)s[i] < 0x21 || (unsigned char)s[i] > 0x7e)
            return 0;
    return 1;
}

int
kmdc_card_kdf_valid(unsigned log2n, unsigned r, unsigned p)
{
    uint64_t rn;

    if (log2n < 1 || log2n > KMDC_CARD_SCRYPT_LOG2N_MAX || r < 1 ||
        r > KMDC_CARD_SCRYPT_R_MAX || p < 1 || p > KMDC_CARD_SCRYPT_P_MAX)
        return 0;
    rn = (uint64_t)r << log2n;
    return rn <= (UINT64_C(1) << 20) && (uint64_t)p * rn <= (UINT64_C(1) << 22);
}

/* ---- the card in memory --------------------------------------------------- */

kmdc_card *
kmdc_card_alloc(void)
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
    if (!kmdc_card_url_valid(url, ulen))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "the datacenter URL must be 1-%d printable characters without spaces",
                            KMDC_CARD_MAX_URL);
    if ((c = kmdc_card_alloc()) == NULL || (c->url = malloc(ulen + 1)) == NULL) {
        rc = kmdc_card_oom(err);
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
    if (!kmdc_card_kdf_valid(log2n, r, p))
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
    int fd = -1;

    if (path == NULL || buf == NULL || cap < 2)
        return kmdc_err_set(err, KMDC_ERR_ARG, "passphrase: missing argument");
    buf[0] = '\0';
    /* Any type but a regular file (a pipe: kmdc --passphrase-file <(...)) is read as is. */
    if ((rc = kmdc_file_open_private(path, 0, &fd, &st, "passphrase file", err)) != KMDC_OK)
        goto out;
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
    if (fd >= 0)
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
