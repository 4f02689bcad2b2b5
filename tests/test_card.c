/*
 * test_card.c - the card file (docs/PROTOCOL.md section 9) and the card side of the counter
 * rules (docs/PROTOCOL.md section 4): format, corruption, modes, atomic replace, locks,
 * chains, activation, outbox.
 *
 * With KMDC_CARD_CORPUS=<folder> set it also writes the seed corpus for
 * fuzz/fuzz_card into that folder.
 */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "kmdc_card.h"
#include "kmdc_crypto.h"
#include "kmdc_util.h"
#include "tap.h"

#define SERIAL UINT64_C(0x0123456789abcdef)
#define ADDR "alice"
#define URL "https://kmdc.example/kmdc"
#define PASS "correct horse battery staple"
#define TEST_LOG2N 4

static uint8_t uck0[32], dck0[32], ak0[32];
static char tdir[256];

/* ---- helpers ---------------------------------------------------------------- */

static char *
tpath(const char *name)
{
    static char buf[8][512];
    static int i;
    char *p = buf[i++ % 8];

    snprintf(p, 512, "%s/%s", tdir, name);
    return p;
}

static int
rm_cb(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static int
write_file(const char *path, const uint8_t *buf, size_t len, mode_t mode)
{
    int fd;
    ssize_t w;

    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, mode);
    if (fd < 0)
        return -1;
    w = write(fd, buf, len);
    if (fchmod(fd, mode) != 0 || close(fd) != 0)
        return -1;
    return w == (ssize_t)len ? 0 : -1;
}

static int
read_file(const char *path, uint8_t **buf, size_t *len)
{
    struct stat st;
    int fd = open(path, O_RDONLY);
    ssize_t r;

    *buf = NULL;
    if (fd < 0 || fstat(fd, &st) != 0)
        return -1;
    *buf = malloc((size_t)st.st_size + 1);
    r = read(fd, *buf, (size_t)st.st_size);
    close(fd);
    *len = r < 0 ? 0 : (size_t)r;
    return r == st.st_size ? 0 : -1;
}

static void
fix_sum(uint8_t *buf, size_t len)
{
    kmdc_sha256(buf + len - 32, buf, len - 32, NULL);
}

/* A fresh issued card. */
static kmdc_card *
issued_card(void)
{
    kmdc_card *c = NULL;

    if (kmdc_card_new(&c, SERIAL, ADDR, URL, uck0, dck0, ak0, NULL) != KMDC_OK)
        return NULL;
    kmdc_card_set_kdf(c, TEST_LOG2N, 8, 1, NULL);
    return c;
}

/* A fresh active card, rotated with r (r_out may be NULL). */
static kmdc_card *
active_card(uint8_t *r_out)
{
    kmdc_card *c = issued_card();
    uint8_t r[32];

    if (c == NULL || kmdc_card_activation_begin(c, r, NULL) != KMDC_OK ||
        kmdc_card_activation_confirm(c, NULL) != KMDC_OK) {
        kmdc_card_free(c);
        return NULL;
    }
    if (r_out != NULL)
        memcpy(r_out, r, 32);
    return c;
}

/* An active card with stored down keys and delivery records. */
static kmdc_card *
rich_card(void)
{
    kmdc_card *c = active_card(NULL);
    uint8_t mk[32];
    uint64_t seq;
    int ok = c != NULL;

    ok = ok && kmdc_card_up_reserve(c, &seq, mk, NULL) == KMDC_OK;
    ok = ok && kmdc_card_up_reserve(c, &seq, mk, NULL) == KMDC_OK;
    ok = ok && kmdc_card_down_advance(c, 4, NULL) == KMDC_OK;
    ok = ok && kmdc_card_down_done(c, 1, 77, "report.pdf", NULL) == KMDC_OK;
    ok = ok && kmdc_card_down_done(c, 3, 78, "notes (2).txt", NULL) == KMDC_OK;
    kmdc_wipe(mk, sizeof(mk));
    if (!ok) {
        kmdc_card_free(c);
        return NULL;
    }
    return c;
}

static int
same_image(const kmdc_card *a, const kmdc_card *b)
{
    uint8_t *x = NULL, *y = NULL;
    size_t xl = 0, yl = 0;
    int eq;

    if (kmdc_card_serialize(a, NULL, &x, &xl, NULL) != KMDC_OK ||
        kmdc_card_serialize(b, NULL, &y, &yl, NULL) != KMDC_OK)
        eq = 0;
    else
        eq = xl == yl && memcmp(x, y, xl) == 0;
    kmdc_freezero(x, xl);
    kmdc_freezero(y, yl);
    return eq;
}

static kmdc_status
parse_code(const uint8_t *buf, size_t len, const char *pass)
{
    kmdc_card *c = NULL;
    kmdc_status rc = kmdc_card_parse(buf, len, pass, &c, NULL);

    kmdc_card_free(c);
    return rc;
}

static kmdc_status
load_code(const char *path, const char *pass, kmdc_err *err)
{
    kmdc_card *c = NULL;
    kmdc_status rc = kmdc_card_load(path, pass, &c, err);

    kmdc_card_free(c);
    return rc;
}

static size_t
count_dir(const char *dir, const char *skip)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    size_t n = 0;

    if (d == NULL)
        return 0;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0 &&
            (skip == NULL || strcmp(de->d_name, skip) != 0))
            n++;
    closedir(d);
    return n;
}

/* Expected chain: MK_n for a chain starting at ck0. */
static void
chain_mk(uint8_t mk[32], const uint8_t ck0[32], uint64_t n)
{
    uint8_t ck[32];

    memcpy(ck, ck0, 32);
    kmdc_chain_seek(ck, 0, n, mk, NULL);
    kmdc_wipe(ck, 32);
}

/* Offset in a plain image of the up_next field of a card made by issued_card. */
static size_t
off_up_next(void)
{
    return KMDC_CARD_HEADER_LEN + 12 + strlen(ADDR) + 2 + strlen(URL) + 32;
}

/* ---- corpus ------------------------------------------------------------------ */

static void
write_corpus(const char *dir)
{
    kmdc_card *c = issued_card(), *r = rich_card(), *p = issued_card();
    uint8_t *img = NULL, rr[32];
    size_t len = 0;
    char path[512];

    kmdc_card_set_kdf(p, 1, 1, 1, NULL);
    kmdc_card_activation_begin(p, rr, NULL);
    if (kmdc_card_serialize(c, NULL, &img, &len, NULL) == KMDC_OK) {
        snprintf(path, sizeof(path), "%s/plain-issued.card", dir);
        write_file(path, img, len, 0644);
        /* truncated and trailing variants */
        snprintf(path, sizeof(path), "%s/short.card", dir);
        write_file(path, img, 60, 0644);
        kmdc_freezero(img, len);
    }
    if (kmdc_card_serialize(r, NULL, &img, &len, NULL) == KMDC_OK) {
        snprintf(path, sizeof(path), "%s/plain-rich.card", dir);
        write_file(path, img, len, 0644);
        kmdc_freezero(img, len);
    }
    /* Protected with the fuzz target's passphrase "fuzz" and N = 2. */
    if (kmdc_card_serialize(p, "fuzz", &img, &len, NULL) == KMDC_OK) {
        snprintf(path, sizeof(path), "%s/scrypt-pending.card", dir);
        write_file(path, img, len, 0644);
        kmdc_freezero(img, len);
    }
    kmdc_card_free(c);
    kmdc_card_free(r);
    kmdc_card_free(p);
}

/* ---- tests -------------------------------------------------------------------- */

static void
test_new(void)
{
    kmdc_card *c = issued_card(), *bad = NULL;

    tap_ok(c != NULL, "new: an issued card is created");
    if (c == NULL)
        return;
    tap_ok(kmdc_card_serial(c) == SERIAL, "new: serial");
    tap_ok(strcmp(kmdc_card_address(c), ADDR) == 0, "new: address");
    tap_ok(strcmp(kmdc_card_url(c), URL) == 0, "new: url");
    tap_ok(kmdc_card_get_state(c) == KMDC_CARD_ISSUED, "new: state is issued");
    tap_ok(kmdc_card_up_next(c) == 0 && kmdc_card_down_next(c) == 0,
           "new: both counters start at 0");
    tap_mem_eq(kmdc_card_ak(c), 32, ak0, 32, "new: AK is the issued key");
    tap_ok(!kmdc_card_activation_pending(c), "new: no activation pending");
    tap_ok(kmdc_card_new(&bad, 0, ADDR, URL, uck0, dck0, ak0, NULL) == KMDC_ERR_ARG &&
               kmdc_card_new(&bad, UINT64_C(1) << 63, ADDR, URL, uck0, dck0, ak0,
                             NULL) == KMDC_ERR_ARG,
           "new: serial 0 and 2^63 are refused");
    tap_ok(kmdc_card_new(&bad, SERIAL, "Alice", URL, uck0, dck0, ak0, NULL) == KMDC_ERR_ARG &&
               kmdc_card_new(&bad, SERIAL, ADDR, "https://a b", uck0, dck0, ak0, NULL) ==
                   KMDC_ERR_ARG &&
               kmdc_card_new(&bad, SERIAL, ADDR, "", uck0, dck0, ak0, NULL) == KMDC_ERR_ARG,
           "new: bad address, URL with a space, empty URL are refused");
    tap_ok(kmdc_card_set_kdf(c, 21, 8, 1, NULL) == KMDC_ERR_ARG &&
               kmdc_card_set_kdf(c, 20, 8, 1, NULL) == KMDC_ERR_ARG &&
               kmdc_card_set_kdf(c, 0, 8, 1, NULL) == KMDC_ERR_ARG &&
               kmdc_card_set_kdf(c, 15, 8, 1, NULL) == KMDC_OK,
           "new: scrypt parameters are bounded (2^21, r*N > 2^20, N = 1 refused)");
    kmdc_card_free(c);
}

static void
test_round_trip(void)
{
    kmdc_card *c = rich_card(), *l = NULL, *i = issued_card();
    kmdc_err err = { .code = KMDC_OK };
    struct stat st;
    mode_t old;
    uint8_t r[32], *img = NULL;
    size_t len = 0;
    const char *fn = NULL;

    if (c == NULL || i == NULL) {
        tap_ok(0, "round trip: fixtures");
        return;
    }
    old = umask(0277);
    tap_ok(kmdc_card_save_new(c, tpath("plain.card"), NULL, 0, &err) == KMDC_OK,
           "round trip: a plain card is created (%s)", err.msg);
    umask(old);
    tap_ok(stat(tpath("plain.card"), &st) == 0 && (st.st_mode & 0777) == 0600,
           "round trip: the card is mode 0600 even under umask 0277");
    tap_ok(kmdc_card_load(tpath("plain.card"), NULL, &l, &err) == KMDC_OK,
           "round trip: the plain card loads");
    tap_ok(l != NULL && same_image(c, l), "round trip: every field survives (plain)");
    tap_ok(l != NULL && kmdc_card_skipped_count(l) == 3 && kmdc_card_delivery_count(l) == 2 &&
               kmdc_card_up_next(l) == 2 && kmdc_card_down_next(l) == 5 &&
               kmdc_card_get_state(l) == KMDC_CARD_ACTIVE && !kmdc_card_is_protected(l),
           "round trip: counters, stores and state read back");
    tap_ok(l != NULL && kmdc_card_delivery_lookup(l, 78, &fn, NULL) == KMDC_OK &&
               strcmp(fn, "notes (2).txt") == 0,
           "round trip: a delivery record reads back");
    kmdc_card_free(l);
    l = NULL;

    /* Issued card with a pending r, protected. */
    kmdc_card_activation_begin(i, r, NULL);
    tap_ok(kmdc_card_save_new(i, tpath("prot.card"), PASS, 0, &err) == KMDC_OK,
           "round trip: a protected card is created");
    tap_ok(read_file(tpath("prot.card"), &img, &len) == 0 &&
               memmem(img, len, ADDR, strlen(ADDR)) == NULL &&
               memmem(img, len, URL, strlen(URL)) == NULL && img[9] == 1 &&
               img[16] == TEST_LOG2N && img[17] == 8 && img[18] == 1,
           "round trip: the protected file holds no clear text and its scrypt parameters");
    free(img);
    tap_ok(kmdc_card_load(tpath("prot.card"), PASS, &l, &err) == KMDC_OK,
           "round trip: the protected card loads with its passphrase (%s)", err.msg);
    tap_ok(l != NULL && kmdc_card_is_protected(l), "round trip: the loaded card knows it is protected");
    if (l != NULL) {
        uint8_t *x = NULL;
        size_t xl = 0;
        tap_ok(kmdc_card_serialize(l, NULL, &x, &xl, &err) == KMDC_ERR_PASSPHRASE,
               "round trip: a protected card is not written out without a passphrase");
        kmdc_card_set_unprotected(l);
        tap_ok(same_image(i, l), "round trip: every field survives (protected, r pending)");
        tap_ok(kmdc_card_save(l, tpath("prot.card"), PASS, &err) == KMDC_OK &&
                   load_code(tpath("prot.card"), PASS, NULL) == KMDC_OK,
               "round trip: a protected card is saved again with its passphrase");
    } else {
        tap_ok(0, "round trip: protected card missing");
        tap_ok(0, "round trip: protected card missing");
        tap_ok(0, "round trip: protected card missing");
    }
    kmdc_card_free(l);
    l = NULL;

    tap_ok(load_code(tpath("prot.card"), "wrong horse", &err) == KMDC_ERR_PASSPHRASE,
           "passphrase: a wrong passphrase is refused");
    tap_ok(load_code(tpath("prot.card"), NULL, &err) == KMDC_ERR_PASSPHRASE &&
               strstr(err.msg, "needed") != NULL,
           "passphrase: an encrypted card without a passphrase says one is needed");
    tap_ok(load_code(tpath("prot.card"), "", NULL) == KMDC_ERR_PASSPHRASE,
           "passphrase: an empty passphrase counts as none");
    tap_ok(load_code(tpath("plain.card"), PASS, NULL) == KMDC_OK,
           "passphrase: a plain card ignores a passphrase");

    tap_ok(read_file(tpath("plain.card"), &img, &len) == 0 &&
               kmdc_card_save_new(i, tpath("plain.card"), NULL, 0, &err) == KMDC_ERR_IO,
           "save_new: an existing card is not overwritten");
    {
        uint8_t *after = NULL;
        size_t alen = 0;
        tap_ok(read_file(tpath("plain.card"), &after, &alen) == 0 && alen == len &&
                   memcmp(after, img, len) == 0,
               "save_new: the existing card is left byte for byte");
        free(after);
    }
    free(img);
    tap_ok(kmdc_card_save_new(c, tpath("plain.card"), NULL, 1, &err) == KMDC_OK,
           "save_new: overwrite when told to");
    kmdc_card_free(c);
    kmdc_card_free(i);
}

static void
test_corruption(void)
{
    kmdc_card *c = rich_card(), *p = issued_card();
    uint8_t *img = NULL, *pimg = NULL, *b = NULL;
    size_t len = 0, plen = 0, i;
    int hdr = 1, body = 1, sum = 1, pall = 1, trunc = 1;
    kmdc_err err = { .code = KMDC_OK };

    if (c == NULL || p == NULL ||
        kmdc_card_serialize(c, NULL, &img, &len, NULL) != KMDC_OK ||
        kmdc_card_serialize(p, PASS, &pimg, &plen, NULL) != KMDC_OK) {
        tap_ok(0, "corrupt: fixtures");
        goto out;
    }
    tap_ok(parse_code(img, len, NULL) == KMDC_OK && parse_code(pimg, plen, PASS) == KMDC_OK,
           "corrupt: the untouched images parse");
    for (i = 0; i < len * 8; i++) {
        kmdc_status rc;
        img[i / 8] ^= (uint8_t)(1u << (i % 8));
        rc = parse_code(img, len, NULL);
        img[i / 8] ^= (uint8_t)(1u << (i % 8));
        if (rc != KMDC_ERR_CORRUPT) {
            if (i / 8 < KMDC_CARD_HEADER_LEN)
                hdr = 0;
            else if (i / 8 < len - 32)
                body = 0;
            else
                sum = 0;
        }
    }
    tap_ok(hdr, "corrupt: any flipped bit in the header is detected");
    tap_ok(body, "corrupt: any flipped bit in the body is detected");
    tap_ok(sum, "corrupt: any flipped bit in the checksum is detected");
    for (i = 0; i < plen * 8; i++) {
        pimg[i / 8] ^= (uint8_t)(1u << (i % 8));
        if (parse_code(pimg, plen, PASS) != KMDC_ERR_CORRUPT)
            pall = 0;
        pimg[i / 8] ^= (uint8_t)(1u << (i % 8));
    }
    tap_ok(pall, "corrupt: any flipped bit in a protected card is detected before scrypt");
    for (i = 0; i < len; i++)
        if (parse_code(img, i, NULL) != KMDC_ERR_CORRUPT)
            trunc = 0;
    tap_ok(trunc, "corrupt: a card truncated at any length is refused");
    tap_ok(write_file(tpath("trunc.card"), img, len - 1, 0600) == 0 &&
               load_code(tpath("trunc.card"), NULL, &err) == KMDC_ERR_CORRUPT,
           "corrupt: a truncated card file on disk is refused");

    /* Trailing bytes after the checksum. */
    b = malloc(len + 1);
    memcpy(b, img, len);
    b[len] = 0;
    tap_ok(parse_code(b, len + 1, NULL) == KMDC_ERR_CORRUPT,
           "corrupt: a byte appended after the checksum is refused");
    /* A body one byte longer, header and checksum consistent. */
    memcpy(b, img, len - 32);
    b[len - 32] = 0;
    kmdc_put_u32(b + 12, (uint32_t)(len - 80 + 1));
    fix_sum(b, len + 1);
    tap_ok(parse_code(b, len + 1, NULL) == KMDC_ERR_TRAILING,
           "format: a byte after the last body field is refused (trailing)");
    /* A body one byte shorter. */
    memcpy(b, img, len - 33);
    kmdc_put_u32(b + 12, (uint32_t)(len - 80 - 1));
    fix_sum(b, len - 1);
    tap_ok(parse_code(b, len - 1, NULL) == KMDC_ERR_TRUNCATED,
           "format: a body missing its last byte is refused (truncated)");
    /* Header length disagreeing with the file. */
    memcpy(b, img, len);
    kmdc_put_u32(b + 12, (uint32_t)(len - 80 - 1));
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT,
           "format: a body length that disagrees with the file is refused");
    memcpy(b, img, len);
    b[8] = 2;
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT,
           "format: version 2 is refused");
    memcpy(b, img, len);
    b[0] = 'X';
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT, "format: a wrong magic is refused");
    memcpy(b, img, len);
    b[9] = 7;
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT,
           "format: an unknown protection is refused");
    memcpy(b, img, len);
    b[11] = 1;
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT, "format: non-zero flags are refused");
    memcpy(b, img, len);
    b[20] = 1;
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT,
           "format: a plain card with a salt is refused");
    memcpy(b, img, len);
    b[KMDC_CARD_HEADER_LEN + 8] = 3;
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT, "format: an unknown state is refused");
    memcpy(b, img, len);
    b[KMDC_CARD_HEADER_LEN + 9] = 1;   /* active with r pending: then body shifts too */
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT,
           "format: an active card with an activation pending is refused");
    memcpy(b, img, len);
    b[KMDC_CARD_HEADER_LEN] |= 0x80;
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT,
           "format: a serial with the top bit set is refused");
    memcpy(b, img, len);
    b[KMDC_CARD_HEADER_LEN + 12] = 'A';
    fix_sum(b, len);
    tap_ok(parse_code(b, len, NULL) == KMDC_ERR_FORMAT, "format: a bad address is refused");

    /* Hostile scrypt parameters in a protected image. */
    memcpy(b, pimg, plen);
    b[16] = 30;
    fix_sum(b, plen);
    tap_ok(parse_code(b, plen, PASS) == KMDC_ERR_FORMAT,
           "format: scrypt N = 2^30 is refused before any work");
    memcpy(b, pimg, plen);
    b[16] = 20;
    b[17] = 8;
    fix_sum(b, plen);
    tap_ok(parse_code(b, plen, PASS) == KMDC_ERR_FORMAT,
           "format: scrypt r*N = 2^23 (1 GiB) is refused");
    memcpy(b, pimg, plen);
    b[16] = 16;
    b[17] = 8;
    b[18] = 16;
    fix_sum(b, plen);
    tap_ok(parse_code(b, plen, PASS) == KMDC_ERR_FORMAT,
           "format: scrypt p*r*N = 2^23 (too much work) is refused");
    memcpy(b, pimg, plen);
    b[20] ^= 1;        /* the salt, checksum fixed: the key differs */
    fix_sum(b, plen);
    tap_ok(parse_code(b, plen, PASS) == KMDC_ERR_PASSPHRASE,
           "format: a changed salt with a valid checksum fails as a wrong passphrase");
out:
    free(b);
    kmdc_freezero(img, len);
    kmdc_freezero(pimg, plen);
    kmdc_card_free(c);
    kmdc_card_free(p);
}

static void
test_modes(void)
{
    static const mode_t bad[] = { 0644, 0640, 0604, 0660, 0606, 0620 };
    kmdc_card *c = issued_card();
    kmdc_err err = { .code = KMDC_OK };
    size_t i;
    char name[32];

    if (c == NULL || kmdc_card_save(c, tpath("mode.card"), NULL, &err) != KMDC_OK) {
        tap_ok(0, "mode: fixture");
        kmdc_card_free(c);
        return;
    }
    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        chmod(tpath("mode.card"), bad[i]);
        tap_ok(load_code(tpath("mode.card"), NULL, &err) == KMDC_ERR_PERM &&
                   strstr(err.msg, "chmod 600") != NULL,
               "mode: a card with mode 0%o is refused and the chmod is named", (unsigned)bad[i]);
    }
    chmod(tpath("mode.card"), 0400);
    tap_ok(load_code(tpath("mode.card"), NULL, &err) == KMDC_OK,
           "mode: a card with mode 0400 loads");
    chmod(tpath("mode.card"), 0600);
    tap_ok(load_code(tpath("mode.card"), NULL, &err) == KMDC_OK,
           "mode: a card with mode 0600 loads");
    tap_ok(symlink("mode.card", tpath("link.card")) == 0 &&
               load_code(tpath("link.card"), NULL, &err) == KMDC_ERR_PERM,
           "symlink: a card path that is a symbolic link is refused on load");
    tap_ok(kmdc_card_save(c, tpath("link.card"), NULL, &err) == KMDC_ERR_PERM,
           "symlink: and on save (the link is not replaced)");
    {
        struct stat st;
        tap_ok(lstat(tpath("link.card"), &st) == 0 && S_ISLNK(st.st_mode),
               "symlink: the link is still a link");
    }
    snprintf(name, sizeof(name), "missing.card");
    tap_ok(load_code(tpath(name), NULL, &err) == KMDC_ERR_IO, "load: a missing card is an I/O error");
    kmdc_card_free(c);
}

static void
test_atomic(void)
{
    kmdc_card *c = rich_card();
    char sub[512];
    kmdc_err err = { .code = KMDC_OK };
    int i, ok = 1;
    uint8_t junk[10] = { 1, 2, 3 };

    snprintf(sub, sizeof(sub), "%s/atomic", tdir);
    mkdir(sub, 0700);
    for (i = 0; i < 5 && c != NULL; i++) {
        uint64_t seq;
        uint8_t mk[32];
        ok = ok && kmdc_card_up_reserve(c, &seq, mk, NULL) == KMDC_OK &&
             kmdc_card_save(c, tpath("atomic/card"), NULL, &err) == KMDC_OK;
    }
    tap_ok(ok, "atomic: five saves in a row succeed");
    tap_ok(count_dir(sub, NULL) == 1, "atomic: replacing leaves no temp files behind");
    tap_ok(write_file(tpath("atomic/.card.0123456789abcdef.tmp"), junk, sizeof(junk), 0600) == 0 &&
               load_code(tpath("atomic/card"), NULL, &err) == KMDC_OK &&
               kmdc_card_save(c, tpath("atomic/card"), NULL, &err) == KMDC_OK,
           "atomic: a stale temp file is ignored by load and save");
    {
        kmdc_card *l = NULL;
        tap_ok(kmdc_card_load(tpath("atomic/card"), NULL, &l, NULL) == KMDC_OK &&
                   kmdc_card_up_next(l) == 7,
               "atomic: the last save is what loads");
        kmdc_card_free(l);
    }
    kmdc_card_free(c);
}

/* In a child: try a lock, exit 0 when the result is `want`. */
static pid_t
child_lock(const char *card, kmdc_card_lockwhich which, int wait, kmdc_status want)
{
    pid_t pid = fork();

    if (pid == 0) {
        kmdc_card_lockh *h = NULL;
        kmdc_status rc;
        int fd;
        /* Drop the descriptors inherited from the parent: a flock belongs to
         * the open file, so an inherited copy would keep the parent's lock. */
        for (fd = 3; fd < 1024; fd++)
            close(fd);
        rc = kmdc_card_lock(card, which, wait, &h, NULL);
        kmdc_card_unlock(h);
        _exit(rc == want ? 0 : 1);
    }
    return pid;
}

static int
child_ok(pid_t pid)
{
    int st = 0;

    if (pid < 0 || waitpid(pid, &st, 0) != pid)
        return 0;
    return WIFEXITED(st) && WEXITSTATUS(st) == 0;
}

static void
test_locks(void)
{
    const char *card = tpath("lock.card");
    kmdc_card_lockh *s = NULL, *r = NULL, *c = NULL, *s2 = NULL;
    struct timespec ts = { 0, 300 * 1000 * 1000 };
    struct stat st;
    pid_t pid;
    int st_ = 0;

    tap_ok(kmdc_card_lock(card, KMDC_LOCK_SEND, 0, &s, NULL) == KMDC_OK,
           "lock: a sender takes the send lock");
    tap_ok(stat(tpath("lock.card.send.lock"), &st) == 0 && (st.st_mode & 0777) == 0600,
           "lock: the send lock file is CARD.send.lock, mode 0600");
    tap_ok(child_ok(child_lock(card, KMDC_LOCK_SEND, 0, KMDC_ERR_LOCKED)),
           "lock: a second sender (another process) fails at once with KMDC_ERR_LOCKED");
    tap_ok(kmdc_card_lock(card, KMDC_LOCK_SEND, 0, &s2, NULL) == KMDC_ERR_LOCKED,
           "lock: a second sender in the same process fails too");
    tap_ok(kmdc_card_lock(card, KMDC_LOCK_RECV, 0, &r, NULL) == KMDC_OK &&
               child_ok(child_lock(card, KMDC_LOCK_RECV, 0, KMDC_ERR_LOCKED)),
           "lock: a receiver beside the sender succeeds; a second receiver fails");
    kmdc_card_unlock(r);
    r = NULL;
    tap_ok(child_ok(child_lock(card, KMDC_LOCK_RECV, 0, KMDC_OK)),
           "lock: a receiver in another process works beside the sender");

    /* A waiting sender gets the lock when the holder releases it. */
    pid = child_lock(card, KMDC_LOCK_SEND, 1, KMDC_OK);
    nanosleep(&ts, NULL);
    tap_ok(pid > 0 && waitpid(pid, &st_, WNOHANG) == 0,
           "lock: a sender asked to wait is still waiting while the lock is held");
    kmdc_card_unlock(s);
    s = NULL;
    tap_ok(child_ok(pid), "lock: the waiting sender gets the lock once released");

    tap_ok(kmdc_card_lock(card, KMDC_LOCK_CARD, 0, &c, NULL) == KMDC_OK &&
               child_ok(child_lock(card, KMDC_LOCK_CARD, 0, KMDC_ERR_LOCKED)),
           "lock: the card lock is exclusive");
    tap_ok(child_ok(child_lock(card, KMDC_LOCK_SEND, 0, KMDC_OK)),
           "lock: the card lock does not block a sender's lock");
    kmdc_card_unlock(c);
    tap_ok(child_ok(child_lock(card, KMDC_LOCK_CARD, 0, KMDC_OK)),
           "lock: the card lock is free after unlock");
}

static void
test_up(void)
{
    uint8_t r[32], uck[32], mk[32], want[32];
    kmdc_card *c = active_card(r), *l = NULL, *i = issued_card();
    uint64_t seq = 99;
    uint8_t *img = NULL;
    size_t len = 0;
    int ok = 1;
    kmdc_err err = { .code = KMDC_OK };

    if (c == NULL || i == NULL) {
        tap_ok(0, "up: fixtures");
        goto out;
    }
    kmdc_activate_key(uck, r, uck0, "up_chain", NULL);
    tap_ok(kmdc_card_up_reserve(c, &seq, mk, NULL) == KMDC_OK && seq == 0,
           "up: the first reserve gives seq 0");
    chain_mk(want, uck, 0);
    tap_mem_eq(mk, 32, want, 32, "up: MK_0 equals kmdc_chain_step of the rotated up key");
    tap_ok(kmdc_card_up_reserve(c, &seq, mk, NULL) == KMDC_OK && seq == 1 &&
               kmdc_card_up_next(c) == 2,
           "up: the second reserve gives seq 1, up_next 2");
    chain_mk(want, uck, 1);
    tap_mem_eq(mk, 32, want, 32, "up: MK_1 matches the chain");
    tap_ok(kmdc_card_save(c, tpath("up.card"), NULL, NULL) == KMDC_OK &&
               kmdc_card_load(tpath("up.card"), NULL, &l, NULL) == KMDC_OK &&
               kmdc_card_up_next(l) == 2,
           "up: the reserved counter persists");
    chain_mk(want, uck, 2);
    tap_ok(l != NULL && kmdc_card_up_reserve(l, &seq, mk, NULL) == KMDC_OK && seq == 2 &&
               kmdc_ct_eq(mk, 32, want, 32),
           "up: the reloaded card continues the chain with MK_2");
    tap_ok(kmdc_card_up_reserve(i, &seq, mk, &err) == KMDC_ERR_ARG,
           "up: an issued card cannot send");

    /* Exhaustion: set up_next in a plain image, fix the checksum. */
    kmdc_card_free(l);
    l = NULL;
    if (kmdc_card_serialize(c, NULL, &img, &len, NULL) == KMDC_OK) {
        kmdc_put_u64(img + off_up_next(), KMDC_U63_MAX - 1);
        fix_sum(img, len);
        ok = kmdc_card_parse(img, len, NULL, &l, NULL) == KMDC_OK;
    } else {
        ok = 0;
    }
    tap_ok(ok && kmdc_card_up_next(l) == KMDC_U63_MAX - 1,
           "up: a card at up_next 2^63-2 parses");
    tap_ok(ok && kmdc_card_up_reserve(l, &seq, mk, NULL) == KMDC_OK && seq == KMDC_U63_MAX - 1,
           "up: seq 2^63-2 is the last one reserved");
    tap_ok(ok && kmdc_card_up_reserve(l, &seq, mk, &err) == KMDC_ERR_EXHAUSTED &&
               kmdc_card_up_next(l) == KMDC_U63_MAX,
           "up: past that the card is exhausted and nothing moves");
    kmdc_card_free(l);
    l = NULL;
    if (img != NULL) {
        kmdc_put_u64(img + off_up_next(), KMDC_U63_MAX + 1);
        fix_sum(img, len);
    }
    tap_ok(img != NULL && parse_code(img, len, NULL) == KMDC_ERR_FORMAT,
           "up: a counter of 2^63 in a file is refused");
out:
    kmdc_wipe(mk, 32);
    kmdc_freezero(img, len);
    kmdc_card_free(c);
    kmdc_card_free(l);
    kmdc_card_free(i);
}

static void
test_down(void)
{
    uint8_t r[32], dck[32], mk[32], want[32];
    kmdc_card *c = active_card(r), *i = issued_card(), *l = NULL;
    const char *fn = NULL;
    kmdc_err err = { .code = KMDC_OK };
    uint64_t k;
    int ok;

    if (c == NULL || i == NULL) {
        tap_ok(0, "down: fixtures");
        goto out;
    }
    kmdc_activate_key(dck, r, dck0, "down_chain", NULL);
    chain_mk(want, dck, 0);
    tap_ok(kmdc_card_down_key(c, 0, mk, NULL) == KMDC_OK && kmdc_ct_eq(mk, 32, want, 32) &&
               kmdc_card_down_next(c) == 0,
           "down: in order, the key for seq 0 matches and the card does not move");
    tap_ok(kmdc_card_down_advance(c, 0, NULL) == KMDC_OK && kmdc_card_down_next(c) == 1 &&
               kmdc_card_skipped_count(c) == 1,
           "down: advancing over 0 keeps its key pending, down_next 1");
    tap_ok(kmdc_card_down_key(c, 0, mk, NULL) == KMDC_OK && kmdc_ct_eq(mk, 32, want, 32),
           "down: the pending key of 0 is served from the store");
    tap_ok(kmdc_card_down_done(c, 0, 1000, "first.txt", NULL) == KMDC_OK &&
               kmdc_card_skipped_count(c) == 0 &&
               kmdc_card_down_key(c, 0, mk, &err) == KMDC_ERR_NOTFOUND,
           "down: once written, the key of 0 is erased");

    /* Out of order: m+2 (3) first, then m (1). */
    chain_mk(want, dck, 3);
    tap_ok(kmdc_card_down_key(c, 3, mk, NULL) == KMDC_OK && kmdc_ct_eq(mk, 32, want, 32),
           "down: out of order, the key for seq 3 (two ahead) is right");
    tap_ok(kmdc_card_down_advance(c, 3, NULL) == KMDC_OK && kmdc_card_down_next(c) == 4 &&
               kmdc_card_skipped_count(c) == 3,
           "down: advancing to 3 keeps the keys of 1, 2 and 3");
    chain_mk(want, dck, 1);
    tap_ok(kmdc_card_down_key(c, 1, mk, NULL) == KMDC_OK && kmdc_ct_eq(mk, 32, want, 32),
           "down: then the key for the skipped seq 1 is right");
    tap_ok(kmdc_card_down_advance(c, 1, NULL) == KMDC_OK && kmdc_card_down_next(c) == 4,
           "down: advancing over an already passed seq changes nothing");
    tap_ok(kmdc_card_down_done(c, 1, 1001, "second.txt", NULL) == KMDC_OK &&
               kmdc_card_down_done(c, 3, 1003, "fourth.txt", NULL) == KMDC_OK &&
               kmdc_card_down_key(c, 1, mk, NULL) == KMDC_ERR_NOTFOUND &&
               kmdc_card_down_key(c, 3, mk, NULL) == KMDC_ERR_NOTFOUND &&
               kmdc_card_down_key(c, 2, mk, NULL) == KMDC_OK,
           "down: written keys are erased, the skipped key of 2 stays");
    tap_ok(kmdc_card_down_advance(c, 1, &err) == KMDC_ERR_NOTFOUND,
           "down: a seq whose key is gone cannot be advanced again");
    tap_ok(kmdc_card_down_done(c, 4, 1004, "x", &err) == KMDC_ERR_ARG,
           "down: done before advance is refused");

    /* The window. */
    tap_ok(kmdc_card_down_key(c, 4 + 1025, mk, &err) == KMDC_ERR_LIMIT &&
               kmdc_card_down_advance(c, 4 + 1025, &err) == KMDC_ERR_LIMIT,
           "down: more than 1024 ahead is refused");
    chain_mk(want, dck, 4 + 1024);
    tap_ok(kmdc_card_down_key(c, 4 + 1024, mk, NULL) == KMDC_OK && kmdc_ct_eq(mk, 32, want, 32),
           "down: exactly 1024 ahead is served");
    tap_ok(kmdc_card_down_advance(c, 4 + 1024, NULL) == KMDC_OK &&
               kmdc_card_down_next(c) == 1029 && kmdc_card_skipped_count(c) == 1024,
           "down: a jump of 1024 stores at most 1024 keys");
    chain_mk(want, dck, 5);
    tap_ok(kmdc_card_down_key(c, 2, mk, NULL) == KMDC_ERR_NOTFOUND &&
               kmdc_card_down_key(c, 5, mk, NULL) == KMDC_OK && kmdc_ct_eq(mk, 32, want, 32),
           "down: keys more than 1024 behind are dropped, the rest kept");
    tap_ok(kmdc_card_down_key(i, 0, mk, &err) == KMDC_ERR_ARG,
           "down: an issued card cannot receive");

    /* Delivery records. */
    tap_ok(kmdc_card_delivery_lookup(c, 1001, &fn, NULL) == KMDC_OK &&
               strcmp(fn, "second.txt") == 0,
           "delivery: a written delivery is found with its file name");
    tap_ok(kmdc_card_delivery_lookup(c, 4242, &fn, &err) == KMDC_ERR_NOTFOUND,
           "delivery: an unknown delivery is not found");
    tap_ok(kmdc_card_down_done(c, 3, 1001, "second (1).txt", NULL) == KMDC_OK &&
               kmdc_card_delivery_lookup(c, 1001, &fn, NULL) == KMDC_OK &&
               strcmp(fn, "second (1).txt") == 0 && kmdc_card_delivery_count(c) == 3,
           "delivery: a repeated id takes the new name, no duplicate");
    tap_ok(kmdc_card_delivery_record(c, 1002, "third.txt", NULL) == KMDC_OK &&
               kmdc_card_down_key(c, 6, mk, NULL) == KMDC_OK &&
               kmdc_card_delivery_lookup(c, 1002, &fn, NULL) == KMDC_OK &&
               strcmp(fn, "third.txt") == 0,
           "delivery: recording before the rename keeps the key");
    tap_ok(kmdc_card_down_forget(c, 6, NULL) == KMDC_OK &&
               kmdc_card_down_key(c, 6, mk, NULL) == KMDC_ERR_NOTFOUND &&
               kmdc_card_down_forget(c, 6, NULL) == KMDC_OK &&
               kmdc_card_down_forget(c, kmdc_card_down_next(c), &err) == KMDC_ERR_ARG,
           "delivery: forget erases the key after the rename (twice is fine)");
    tap_ok(kmdc_card_save(c, tpath("down.card"), NULL, NULL) == KMDC_OK &&
               kmdc_card_load(tpath("down.card"), NULL, &l, NULL) == KMDC_OK && same_image(c, l),
           "down: stores and records persist");
    ok = 1;
    for (k = 0; k < KMDC_CARD_MAX_DELIVERIES && ok; k++)
        ok = kmdc_card_down_done(c, 3, 50000 + k, "many.bin", NULL) == KMDC_OK;
    tap_ok(ok && kmdc_card_delivery_count(c) == KMDC_CARD_MAX_DELIVERIES &&
               kmdc_card_delivery_lookup(c, 1000, &fn, NULL) == KMDC_ERR_NOTFOUND &&
               kmdc_card_delivery_lookup(c, 50000, &fn, NULL) == KMDC_OK &&
               kmdc_card_delivery_lookup(c, 50000 + KMDC_CARD_MAX_DELIVERIES - 1, &fn, NULL) ==
                   KMDC_OK,
           "delivery: past 4096 records the oldest are dropped");
    kmdc_card_free(l);
    l = NULL;
    tap_ok(kmdc_card_save(c, tpath("down.card"), NULL, NULL) == KMDC_OK &&
               kmdc_card_load(tpath("down.card"), NULL, &l, NULL) == KMDC_OK && same_image(c, l),
           "down: a full card (1024 keys, 4096 records) round-trips");

    /* Resync. */
    tap_ok(kmdc_card_resync(c, 10, kmdc_card_down_next(c) + 2000, NULL) == KMDC_OK &&
               kmdc_card_up_next(c) == 10 && kmdc_card_down_next(c) == 3029 &&
               kmdc_card_skipped_count(c) == 0,
           "resync: counters move forward, keys out of the window are dropped");
    chain_mk(want, dck, 3029);
    tap_ok(kmdc_card_down_key(c, 3029, mk, NULL) == KMDC_OK && kmdc_ct_eq(mk, 32, want, 32),
           "resync: the down chain was stepped to the new counter");
    tap_ok(kmdc_card_resync(c, 9, 3029, &err) == KMDC_ERR_ARG,
           "resync: a counter never moves back");
    tap_ok(kmdc_card_resync(c, 10 + KMDC_CARD_RESYNC_MAX + 1, 3029, &err) == KMDC_ERR_LIMIT,
           "resync: a jump beyond the resync bound is refused");
out:
    kmdc_wipe(mk, 32);
    kmdc_card_free(c);
    kmdc_card_free(i);
    kmdc_card_free(l);
}

static void
test_activation(void)
{
    kmdc_card *c = issued_card(), *l = NULL;
    uint8_t r[32], r2[32], want[32], got[32], mk[32], ck[32];
    kmdc_err err = { .code = KMDC_OK };

    if (c == NULL) {
        tap_ok(0, "activation: fixture");
        return;
    }
    tap_ok(kmdc_card_activation_confirm(c, &err) == KMDC_ERR_ARG,
           "activation: confirm without begin is refused");
    tap_ok(kmdc_card_activation_begin(c, r, NULL) == KMDC_OK && kmdc_card_activation_pending(c),
           "activation: begin draws r");
    tap_ok(kmdc_card_save(c, tpath("act.card"), PASS, NULL) == KMDC_OK &&
               kmdc_card_load(tpath("act.card"), PASS, &l, NULL) == KMDC_OK &&
               kmdc_card_activation_pending(l) && kmdc_card_get_state(l) == KMDC_CARD_ISSUED,
           "activation: r is persisted, the card is still issued");
    tap_ok(l != NULL && kmdc_card_activation_begin(l, r2, NULL) == KMDC_OK &&
               kmdc_ct_eq(r, 32, r2, 32),
           "activation: begin again (lost answer) gives the same r");
    tap_mem_eq(l ? kmdc_card_ak(l) : ak0, 32, ak0, 32,
               "activation: the reloaded card still has the old AK");
    kmdc_activate_key(want, r, ak0, "auth_key", NULL);
    tap_ok(l != NULL && kmdc_card_activation_preview(l, NULL, NULL, got, NULL) == KMDC_OK &&
               kmdc_ct_eq(got, 32, want, 32) && kmdc_ct_eq(kmdc_card_ak(l), 32, ak0, 32),
           "activation: preview gives the rotated AK for a trial, the card unchanged");
    tap_ok(l != NULL && kmdc_card_activation_confirm(l, NULL) == KMDC_OK &&
               kmdc_card_get_state(l) == KMDC_CARD_ACTIVE && !kmdc_card_activation_pending(l),
           "activation: confirm makes the card active and drops r");
    tap_mem_eq(l ? kmdc_card_ak(l) : ak0, 32, want, 32,
               "activation: AK equals kmdc_activate_key(r, AK0, auth_key)");
    kmdc_activate_key(ck, r, uck0, "up_chain", NULL);
    chain_mk(want, ck, 0);
    {
        uint64_t seq;
        tap_ok(l != NULL && kmdc_card_up_reserve(l, &seq, mk, NULL) == KMDC_OK &&
                   kmdc_ct_eq(mk, 32, want, 32),
               "activation: the up chain key equals kmdc_activate_key(r, UCK0, up_chain)");
    }
    kmdc_activate_key(ck, r, dck0, "down_chain", NULL);
    chain_mk(want, ck, 0);
    tap_ok(l != NULL && kmdc_card_down_key(l, 0, mk, NULL) == KMDC_OK &&
               kmdc_ct_eq(mk, 32, want, 32),
           "activation: the down chain key equals kmdc_activate_key(r, DCK0, down_chain)");
    tap_ok(l != NULL && kmdc_card_activation_begin(l, r2, &err) == KMDC_ERR_ARG &&
               kmdc_card_activation_preview(l, NULL, NULL, got, &err) == KMDC_ERR_ARG,
           "activation: an active card refuses begin and preview");
    kmdc_card_free(c);
    c = NULL;
    tap_ok(l != NULL && kmdc_card_save(l, tpath("act.card"), PASS, NULL) == KMDC_OK &&
               kmdc_card_load(tpath("act.card"), PASS, &c, NULL) == KMDC_OK &&
               kmdc_card_get_state(c) == KMDC_CARD_ACTIVE && !kmdc_card_activation_pending(c) &&
               (kmdc_card_set_unprotected(c), kmdc_card_set_unprotected(l), same_image(c, l)),
           "activation: the active card persists without r");
    kmdc_wipe(r, 32);
    kmdc_wipe(mk, 32);
    kmdc_card_free(c);
    kmdc_card_free(l);
}

static void
test_outbox(void)
{
    const char *card = tpath("ob.card");
    uint64_t *seqs = NULL;
    size_t n = 0;
    int fd = -1;
    char *tmp = NULL, *p = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    struct stat st;
    kmdc_err err = { .code = KMDC_OK };
    mode_t old;

    old = umask(0);
    tap_ok(kmdc_outbox_create(card, 5, &fd, &tmp, &err) == KMDC_OK && fd >= 0 &&
               write(fd, "hello", 5) == 5,
           "outbox: an entry for seq 5 is started");
    umask(old);
    tap_ok(stat(tpath("ob.card.outbox"), &st) == 0 && S_ISDIR(st.st_mode) &&
               (st.st_mode & 0777) == 0700,
           "outbox: CARD.outbox/ is a folder of mode 0700 even under umask 0");
    tap_ok(kmdc_outbox_list(card, &seqs, &n, NULL) == KMDC_OK && n == 0,
           "outbox: an uncommitted entry is not listed");
    free(seqs);
    tap_ok(kmdc_outbox_commit(card, 5, fd, tmp, &err) == KMDC_OK,
           "outbox: the entry is committed");
    tap_ok(kmdc_outbox_create(card, 2, &fd, &tmp, NULL) == KMDC_OK &&
               kmdc_outbox_commit(card, 2, fd, tmp, NULL) == KMDC_OK &&
               kmdc_outbox_create(card, 0x1000, &fd, &tmp, NULL) == KMDC_OK &&
               kmdc_outbox_commit(card, 0x1000, fd, tmp, NULL) == KMDC_OK,
           "outbox: entries for seq 2 and 4096 are committed");
    tap_ok(kmdc_outbox_create(card, 9, &fd, &tmp, NULL) == KMDC_OK, "outbox: seq 9 started");
    kmdc_outbox_abort(fd, tmp);
    tap_ok(kmdc_outbox_create(card, 11, &fd, &tmp, NULL) == KMDC_OK,
           "outbox: seq 11 started and left (a crash)");
    close(fd);
    free(tmp);
    seqs = NULL;
    tap_ok(kmdc_outbox_list(card, &seqs, &n, NULL) == KMDC_OK && n == 3 && seqs[0] == 2 &&
               seqs[1] == 5 && seqs[2] == 0x1000,
           "outbox: list gives the committed entries in seq order, temp files ignored");
    free(seqs);
    seqs = NULL;
    tap_ok(kmdc_outbox_path(card, 5, &p, NULL) == KMDC_OK &&
               strcmp(p, tpath("ob.card.outbox/0000000000000005.kmdc")) == 0 &&
               read_file(p, &buf, &len) == 0 && len == 5 && memcmp(buf, "hello", 5) == 0,
           "outbox: the entry is <seq 16 hex>.kmdc and holds what was written");
    free(p);
    free(buf);
    tap_ok(kmdc_outbox_create(card, 5, &fd, &tmp, NULL) == KMDC_OK &&
               kmdc_outbox_commit(card, 5, fd, tmp, &err) == KMDC_ERR_IO,
           "outbox: a second entry for the same seq is refused");
    tap_ok(kmdc_outbox_remove(card, 2, NULL) == KMDC_OK &&
               kmdc_outbox_remove(card, 2, NULL) == KMDC_OK &&
               kmdc_outbox_list(card, &seqs, &n, NULL) == KMDC_OK && n == 2 && seqs[0] == 5,
           "outbox: remove after the answer (twice is fine)");
    free(seqs);
    tap_ok(kmdc_outbox_sweep(card, NULL) == KMDC_OK &&
               count_dir(tpath("ob.card.outbox"), NULL) == 2,
           "outbox: sweep deletes leftover temp files only");
    seqs = NULL;
    tap_ok(kmdc_outbox_list(tpath("none.card"), &seqs, &n, NULL) == KMDC_OK && n == 0 &&
               seqs == NULL,
           "outbox: a card without an outbox has an empty list");
    chmod(tpath("ob.card.outbox"), 0755);
    tap_ok(kmdc_outbox_create(card, 12, &fd, &tmp, &err) == KMDC_ERR_PERM,
           "outbox: an outbox others can read is refused");
}

/* Write text to the file name in the test folder with mode m. */
static int
write_mode(const char *name, const char *text, size_t len, mode_t m)
{
    FILE *f = fopen(tpath(name), "w");

    if (f == NULL)
        return -1;
    if (fwrite(text, 1, len, f) != len) {
        fclose(f);
        return -1;
    }
    if (fclose(f) != 0)
        return -1;
    return chmod(tpath(name), m);
}

/* Passphrase files: refused like cards when others may read them. */
static void
test_passfile(void)
{
    static const mode_t bad[] = { 0644, 0640, 0604, 0660, 0602 };
    char buf[16];
    kmdc_err err = { .code = KMDC_OK };
    size_t i;
    int ok;

    for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        memset(buf, 'x', sizeof(buf));
        ok = write_mode("pass.txt", "secret\n", 7, bad[i]) == 0 &&
             kmdc_passphrase_file_read(tpath("pass.txt"), buf, sizeof(buf), &err) ==
                 KMDC_ERR_PERM &&
             strstr(err.msg, "chmod 600") != NULL && buf[0] == 0 && buf[15] == 0;
        tap_ok(ok, "passphrase file: mode 0%o is refused, the chmod named, the buffer wiped",
               (unsigned)bad[i]);
    }
    tap_ok(write_mode("pass.txt", "secret\r\nsecond line\n", 20, 0600) == 0 &&
               kmdc_passphrase_file_read(tpath("pass.txt"), buf, sizeof(buf), &err) ==
                   KMDC_OK && strcmp(buf, "secret") == 0,
           "passphrase file: mode 0600, the first line without CR LF");
    tap_ok(write_mode("pass.txt", "secret", 6, 0400) == 0 &&
               kmdc_passphrase_file_read(tpath("pass.txt"), buf, sizeof(buf), &err) ==
                   KMDC_OK && strcmp(buf, "secret") == 0,
           "passphrase file: mode 0400 without a line end");
    tap_ok(write_mode("pass.txt", "", 0, 0600) == 0 &&
               kmdc_passphrase_file_read(tpath("pass.txt"), buf, sizeof(buf), &err) ==
                   KMDC_ERR_PASSPHRASE && strstr(err.msg, "empty") != NULL,
           "passphrase file: an empty file is refused");
    tap_ok(write_mode("pass.txt", "\nsecret\n", 8, 0600) == 0 &&
               kmdc_passphrase_file_read(tpath("pass.txt"), buf, sizeof(buf), &err) ==
                   KMDC_ERR_PASSPHRASE && strstr(err.msg, "empty line") != NULL,
           "passphrase file: an empty first line is refused");
    tap_ok(write_mode("pass.txt", "0123456789abcdef\n", 17, 0600) == 0 &&
               kmdc_passphrase_file_read(tpath("pass.txt"), buf, sizeof(buf), &err) ==
                   KMDC_ERR_PASSPHRASE && strstr(err.msg, "longer") != NULL && buf[0] == 0,
           "passphrase file: a line longer than the buffer is refused");
    tap_ok(kmdc_passphrase_file_read(tpath("nope.txt"), buf, sizeof(buf), &err) == KMDC_ERR_IO,
           "passphrase file: a missing file is an I/O error");
}

int
main(void)
{
    const char *base = getenv("TMPDIR");
    const char *corpus = getenv("KMDC_CARD_CORPUS");

    memset(uck0, 0x11, 32);
    memset(dck0, 0x22, 32);
    memset(ak0, 0x33, 32);
    snprintf(tdir, sizeof(tdir), "%s/kmdc-test-card-XXXXXX",
             base != NULL && base[0] != '\0' ? base : "/tmp");
    if (mkdtemp(tdir) == NULL) {
        tap_ok(0, "setup: temporary folder (%s)", strerror(errno));
        return tap_done();
    }
    if (corpus != NULL && corpus[0] != '\0')
        write_corpus(corpus);
    test_new();
    test_round_trip();
    test_corruption();
    test_modes();
    test_atomic();
    test_locks();
    test_up();
    test_down();
    test_activation();
    test_outbox();
    test_passfile();
    nftw(tdir, rm_cb, 16, FTW_DEPTH | FTW_PHYS);
    return tap_done();
}
