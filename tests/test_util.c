/*
 * test_util.c - the one-copy mechanisms of lib/: atomic file replacement
 * (kmdc_file.h), durations and sizes (kmdc_units.h), hex digits
 * (kmdc_util.h), loading the master-key ring (kmdc_keyring.h) and opening a
 * file only its owner may access (kmdc_file_open_private).  Each case
 * builds its own fixture in a fresh folder under one temporary root.
 */
#include "tap.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kmdc_file.h"
#include "kmdc_keyring.h"
#include "kmdc_units.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"

#define KEY1_HEX "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"
#define KEY2_HEX "606162636465666768696a6b6c6d6e6f707172737475767778797a7b7c7d7e7f"

static char root[] = "/tmp/kmdc-test-util-XXXXXX";

/* A fresh folder root/name; returns a static path. */
static const char *
fixture_dir(const char *name)
{
    static char path[512];

    snprintf(path, sizeof(path), "%s/%s", root, name);
    if (mkdir(path, 0700) != 0) {
        perror(path);
        exit(2);
    }
    return path;
}

static void
join(char *out, size_t cap, const char *dir, const char *name)
{
    snprintf(out, cap, "%s/%s", dir, name);
}

/* The content of path into buf (NUL-terminated); -1 when it cannot be read. */
static ssize_t
slurp(const char *path, char *buf, size_t cap)
{
    int fd = open(path, O_RDONLY);
    ssize_t n;

    if (fd < 0)
        return -1;
    n = read(fd, buf, cap - 1);
    close(fd);
    if (n >= 0)
        buf[n] = '\0';
    return n;
}

static void
put(const char *path, const char *content, mode_t mode)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);

    if (fd < 0 || write(fd, content, strlen(content)) != (ssize_t)strlen(content) ||
        fchmod(fd, mode) != 0) {
        perror(path);
        exit(2);
    }
    close(fd);
}

/* Number of entries in dir besides . and .. */
static int
entries(const char *dir)
{
    DIR *d = opendir(dir);
    struct dirent *de;
    int n = 0;

    if (d == NULL)
        return -1;
    while ((de = readdir(d)) != NULL)
        if (strcmp(de->d_name, ".") != 0 && strcmp(de->d_name, "..") != 0)
            n++;
    closedir(d);
    return n;
}

static mode_t
mode_of(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 ? st.st_mode & 07777 : (mode_t)-1;
}

/* ---- kmdc_file ------------------------------------------------------------------ */

static void
test_write_atomic(void)
{
    const char *dir = fixture_dir("write");
    char path[600], buf[64];
    kmdc_err e;

    join(path, sizeof(path), dir, "a.txt");
    kmdc_err_clear(&e);
    tap_ok(kmdc_file_write_atomic(path, "hello", 5, 0, 0, &e) == KMDC_OK,
           "write_atomic: a new file");
    tap_ok(slurp(path, buf, sizeof(buf)) == 5 && strcmp(buf, "hello") == 0,
           "write_atomic: content written");
    tap_ok(mode_of(path) == 0600, "write_atomic: mode 0 means 0600");
    tap_ok(entries(dir) == 1, "write_atomic: no temporary file left");
    tap_ok(kmdc_file_write_atomic(path, "bye", 3, 0640, 0, &e) == KMDC_OK &&
           slurp(path, buf, sizeof(buf)) == 3 && strcmp(buf, "bye") == 0,
           "write_atomic: replaces an existing file");
    tap_ok(mode_of(path) == 0640, "write_atomic: the mode given is set exactly");
    tap_ok(kmdc_file_write_atomic(path, "no", 2, 0, KMDC_FILE_NOREPLACE, &e) == KMDC_ERR_IO &&
           strstr(e.msg, "already exists; refusing to overwrite it") != NULL,
           "write_atomic: NOREPLACE refuses an existing file");
    tap_ok(slurp(path, buf, sizeof(buf)) == 3 && entries(dir) == 1,
           "write_atomic: a refusal leaves the old file and no temporary");
    join(path, sizeof(path), dir, "b.txt");
    tap_ok(kmdc_file_write_atomic(path, "", 0, 0, KMDC_FILE_NOREPLACE, NULL) == KMDC_OK &&
           slurp(path, buf, sizeof(buf)) == 0, "write_atomic: NOREPLACE creates an empty file");
    join(path, sizeof(path), dir, "missing/c.txt");
    tap_ok(kmdc_file_write_atomic(path, "x", 1, 0, 0, &e) == KMDC_ERR_IO &&
           strstr(e.msg, "cannot create a temporary file in") != NULL,
           "write_atomic: a missing folder is an I/O error naming it");
    tap_ok(kmdc_file_write_atomic(dir, "x", 1, 0, 0, NULL) != KMDC_OK,
           "write_atomic: a folder as target is refused");
    join(path, sizeof(path), dir, "d/");
    tap_ok(kmdc_file_write_atomic(path, "x", 1, 0, 0, &e) == KMDC_ERR_ARG,
           "write_atomic: a path ending in / is an argument error");
    tap_ok(kmdc_file_write_atomic("", "x", 1, 0, 0, NULL) == KMDC_ERR_ARG,
           "write_atomic: an empty path is an argument error");
}

static void
test_stream(void)
{
    const char *dir = fixture_dir("stream");
    char path[600], buf[64];
    const char *tmp;
    kmdc_atomic *a = NULL;
    kmdc_err e;

    join(path, sizeof(path), dir, "doc");
    kmdc_err_clear(&e);
    tap_ok(kmdc_atomic_open(&a, path, "stem", 0, 0, &e) == KMDC_OK && a != NULL &&
           kmdc_atomic_fd(a) >= 0, "atomic: open");
    tmp = kmdc_atomic_tmppath(a);
    tap_ok(tmp != NULL && strncmp(tmp, dir, strlen(dir)) == 0 &&
           strncmp(tmp + strlen(dir), "/.stem.", 7) == 0 &&
           strlen(tmp) == strlen(dir) + 7 + 16 + 4 &&
           strcmp(tmp + strlen(tmp) - 4, ".tmp") == 0,
           "atomic: temporary \"<dir>/.<stem>.<16 hex>.tmp\" beside the target");
    tap_ok(access(path, F_OK) != 0, "atomic: the target does not exist before commit");
    tap_ok(kmdc_write_all(kmdc_atomic_fd(a), "part1", 5, tmp, &e) == KMDC_OK &&
           kmdc_write_all(kmdc_atomic_fd(a), "part2", 5, tmp, &e) == KMDC_OK,
           "atomic: stream two writes");
    tap_ok(kmdc_atomic_commit(a, &e) == KMDC_OK, "atomic: commit");
    tap_ok(slurp(path, buf, sizeof(buf)) == 10 && strcmp(buf, "part1part2") == 0 &&
           entries(dir) == 1, "atomic: committed content, nothing else in the folder");

    a = NULL;
    tap_ok(kmdc_atomic_open(&a, path, NULL, 0, 0, NULL) == KMDC_OK, "atomic: open again");
    tap_ok(strstr(kmdc_atomic_tmppath(a), "/.doc.") != NULL,
           "atomic: stem defaults to the base name");
    kmdc_write_all(kmdc_atomic_fd(a), "zz", 2, "t", NULL);
    kmdc_atomic_abort(a);
    tap_ok(slurp(path, buf, sizeof(buf)) == 10 && entries(dir) == 1,
           "atomic: abort leaves the target and removes the temporary");
    kmdc_atomic_abort(NULL);
    tap_ok(1, "atomic: abort accepts NULL");

    a = NULL;
    tap_ok(kmdc_atomic_open(&a, path, NULL, 0, KMDC_FILE_NOREPLACE, &e) == KMDC_ERR_IO &&
           a == NULL && entries(dir) == 1, "atomic: NOREPLACE refused at open");

    /* the target appears between open and commit: commit refuses, atomically */
    join(path, sizeof(path), dir, "late");
    tap_ok(kmdc_atomic_open(&a, path, NULL, 0, KMDC_FILE_NOREPLACE, &e) == KMDC_OK,
           "atomic: NOREPLACE open of a new name");
    put(path, "other", 0600);
    tap_ok(kmdc_atomic_commit(a, &e) == KMDC_ERR_IO &&
           strstr(e.msg, "already exists; refusing to overwrite it") != NULL,
           "atomic: NOREPLACE commit refuses a target created meanwhile");
    tap_ok(slurp(path, buf, sizeof(buf)) == 5 && strcmp(buf, "other") == 0 &&
           entries(dir) == 2, "atomic: that target is untouched, the temporary removed");
}

static void
test_temp_trio(void)
{
    const char *dir = fixture_dir("trio");
    char path[600], buf[64], *tmp = NULL;
    int fd = -1;
    kmdc_err e;

    kmdc_err_clear(&e);
    join(path, sizeof(path), dir, "0000000000000005.kmdc");
    tap_ok(kmdc_file_open_temp(dir, "0000000000000005", 0, &fd, &tmp, &e) == KMDC_OK &&
           fd >= 0 && tmp != NULL, "temp: open");
    tap_ok(mode_of(tmp) == 0600, "temp: mode 0600");
    tap_ok(kmdc_write_all(fd, "env", 3, tmp, &e) == KMDC_OK &&
           kmdc_file_commit_temp(fd, tmp, path, KMDC_FILE_NOREPLACE, &e) == KMDC_OK,
           "temp: commit without replacing");
    tap_ok(slurp(path, buf, sizeof(buf)) == 3 && entries(dir) == 1, "temp: in place");
    tmp = NULL;
    tap_ok(kmdc_file_open_temp(dir, "x", 0, &fd, &tmp, NULL) == KMDC_OK &&
           kmdc_file_commit_temp(fd, tmp, path, KMDC_FILE_NOREPLACE, &e) == KMDC_ERR_IO &&
           entries(dir) == 1, "temp: commit onto an existing name refused, temporary gone");
    tmp = NULL;
    tap_ok(kmdc_file_open_temp(dir, "y", 0, &fd, &tmp, NULL) == KMDC_OK, "temp: open for abort");
    kmdc_file_abort_temp(fd, tmp);
    tap_ok(entries(dir) == 1, "temp: abort removes it");
    tap_ok(kmdc_file_commit_temp(-1, NULL, path, 0, &e) == KMDC_ERR_ARG,
           "temp: commit without a file is an argument error");
    tmp = (char *)"unchanged";
    fd = 7;
    join(path, sizeof(path), dir, "nope/sub");
    tap_ok(kmdc_file_open_temp(path, "z", 0, &fd, &tmp, &e) == KMDC_ERR_IO && fd == -1 &&
           tmp == NULL, "temp: failure clears fd and path");
}

static void
test_fsync_split(void)
{
    const char *dir = fixture_dir("sync");
    char path[600], *d = NULL;
    const char *base = NULL;
    kmdc_err e;

    kmdc_err_clear(&e);
    tap_ok(kmdc_fsync_dir(dir, &e) == KMDC_OK, "fsync_dir: a folder");
    join(path, sizeof(path), dir, "absent");
    tap_ok(kmdc_fsync_dir(path, &e) == KMDC_ERR_IO &&
           strncmp(e.msg, "cannot open folder ", 19) == 0, "fsync_dir: a missing folder");
    tap_ok(kmdc_fsync_parent(path, &e) == KMDC_OK, "fsync_parent: the folder of a new name");
    tap_ok(kmdc_fsync_parent("relative-name", &e) == KMDC_OK, "fsync_parent: no slash is .");
    tap_ok(kmdc_path_split("a/b/c", &d, &base, NULL) == KMDC_OK && strcmp(d, "a/b") == 0 &&
           strcmp(base, "c") == 0, "path_split: a/b/c");
    free(d);
    tap_ok(kmdc_path_split("/c", &d, &base, NULL) == KMDC_OK && strcmp(d, "/") == 0 &&
           strcmp(base, "c") == 0, "path_split: /c");
    free(d);
    tap_ok(kmdc_path_split("c", &d, &base, NULL) == KMDC_OK && strcmp(d, ".") == 0 &&
           strcmp(base, "c") == 0, "path_split: c");
    free(d);
    tap_ok(kmdc_path_split("a/", &d, &base, NULL) == KMDC_ERR_ARG && d == NULL,
           "path_split: a/ refused");
}

/* ---- kmdc_units ----------------------------------------------------------------- */

typedef struct units_case {
    const char *in;
    kmdc_units_rc rc;
    int64_t v;
} units_case;

static void
test_units(void)
{
    static const units_case dur[] = {
        { "0", KMDC_UNITS_OK, 0 },
        { "90", KMDC_UNITS_OK, 90 },
        { "90s", KMDC_UNITS_OK, 90 },
        { "15m", KMDC_UNITS_OK, 900 },
        { "2h", KMDC_UNITS_OK, 7200 },
        { "7d", KMDC_UNITS_OK, 604800 },
        { "007d", KMDC_UNITS_OK, 604800 },
        { "9223372036854775807", KMDC_UNITS_OK, INT64_MAX },
        { "", KMDC_UNITS_NOT_NUMBER, 0 },
        { "s", KMDC_UNITS_NOT_NUMBER, 0 },
        { "-1", KMDC_UNITS_NOT_NUMBER, 0 },
        { "+1", KMDC_UNITS_NOT_NUMBER, 0 },
        { " 1", KMDC_UNITS_NOT_NUMBER, 0 },
        { "1 ", KMDC_UNITS_BAD_UNIT, 0 },
        { "1.5h", KMDC_UNITS_BAD_UNIT, 0 },
        { "1H", KMDC_UNITS_BAD_UNIT, 0 },
        { "1D", KMDC_UNITS_BAD_UNIT, 0 },
        { "1w", KMDC_UNITS_BAD_UNIT, 0 },
        { "1hs", KMDC_UNITS_BAD_UNIT, 0 },
        { "1k", KMDC_UNITS_BAD_UNIT, 0 },
        { "9223372036854775808", KMDC_UNITS_TOO_LARGE, 0 },
        { "99999999999999999999x", KMDC_UNITS_TOO_LARGE, 0 },
        { "106751991167301d", KMDC_UNITS_TOO_LARGE, 0 },
        { "153722867280912931m", KMDC_UNITS_TOO_LARGE, 0 },
    };
    static const units_case size[] = {
        { "0", KMDC_UNITS_OK, 0 },
        { "65536", KMDC_UNITS_OK, 65536 },
        { "64k", KMDC_UNITS_OK, 65536 },
        { "64K", KMDC_UNITS_OK, 65536 },
        { "16m", KMDC_UNITS_OK, 16 << 20 },
        { "16M", KMDC_UNITS_OK, 16 << 20 },
        { "1g", KMDC_UNITS_OK, INT64_C(1) << 30 },
        { "1G", KMDC_UNITS_OK, INT64_C(1) << 30 },
        { "8589934591G", KMDC_UNITS_OK, INT64_C(8589934591) << 30 },
        { "8589934592G", KMDC_UNITS_TOO_LARGE, 0 },
        { "1T", KMDC_UNITS_BAD_UNIT, 0 },
        { "1KB", KMDC_UNITS_BAD_UNIT, 0 },
        { "1s", KMDC_UNITS_BAD_UNIT, 0 },
        { "k", KMDC_UNITS_NOT_NUMBER, 0 },
        { "-5k", KMDC_UNITS_NOT_NUMBER, 0 },
    };
    size_t i;
    int64_t v;
    kmdc_units_rc rc;

    for (i = 0; i < sizeof(dur) / sizeof(dur[0]); i++) {
        v = -7;
        rc = kmdc_parse_duration(dur[i].in, INT64_MAX, &v);
        tap_ok(rc == dur[i].rc && (rc != KMDC_UNITS_OK ? v == -7 : v == dur[i].v),
               "duration \"%s\": %d", dur[i].in, (int)dur[i].rc);
    }
    for (i = 0; i < sizeof(size) / sizeof(size[0]); i++) {
        v = -7;
        rc = kmdc_parse_size(size[i].in, INT64_MAX, &v);
        tap_ok(rc == size[i].rc && (rc != KMDC_UNITS_OK ? v == -7 : v == size[i].v),
               "size \"%s\": %d", size[i].in, (int)size[i].rc);
    }
    /* kmdcadm's bound: at most 100 years */
    tap_ok(kmdc_parse_duration("36500d", INT64_C(3153600000), &v) == KMDC_UNITS_OK &&
           v == INT64_C(3153600000), "duration: exactly the bound");
    tap_ok(kmdc_parse_duration("3153600001", INT64_C(3153600000), &v) == KMDC_UNITS_TOO_LARGE,
           "duration: one above the bound");
    tap_ok(kmdc_parse_size("2k", 2047, &v) == KMDC_UNITS_TOO_LARGE, "size: above the bound");
    tap_ok(kmdc_parse_decimal("42", INT64_MAX, &v) == KMDC_UNITS_OK && v == 42,
           "decimal: 42");
    tap_ok(kmdc_parse_decimal("42s", INT64_MAX, &v) == KMDC_UNITS_BAD_UNIT,
           "decimal: no suffix allowed");
    tap_ok(kmdc_parse_duration(NULL, INT64_MAX, &v) == KMDC_UNITS_NOT_NUMBER,
           "duration: NULL is not a number");
}

/* ---- hex ------------------------------------------------------------------------ */

static void
test_hex(void)
{
    int c, bad_lower = 0, bad_any = 0;
    uint8_t b[2];

    for (c = -128; c < 128; c++) {
        int want_lower = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        int want_any = c >= 'A' && c <= 'F' ? c - 'A' + 10 : want_lower;
        if (kmdc_hex_nibble((char)c) != want_lower)
            bad_lower++;
        if (kmdc_hex_nibble_anycase((char)c) != want_any)
            bad_any++;
    }
    tap_ok(bad_lower == 0, "hex_nibble: 0-9 a-f only, every char value");
    tap_ok(bad_any == 0, "hex_nibble_anycase: 0-9 a-f A-F, every char value");
    tap_ok(kmdc_hex_decode(b, 2, "0aff", 4, NULL) == KMDC_OK && b[0] == 0x0a && b[1] == 0xff,
           "hex_decode: lowercase");
    tap_ok(kmdc_hex_decode(b, 2, "0AFF", 4, NULL) == KMDC_ERR_FORMAT,
           "hex_decode: uppercase still refused");
}

/* ---- keyring -------------------------------------------------------------------- */

static void
test_keyring(void)
{
    const char *dir = fixture_dir("keys");
    char k1[600], k2[600], k3[600], bad[600], open_[600];
    kmdc_master_key_file f[3];
    kmdc_keyring ring = { 0, NULL, 0 };
    const kmdc_master_key *mk;
    uint8_t want1[32], want2[32], wrapped[KMDC_WRAPPED_LEN], in[32], out[32];
    size_t failed = 99;
    kmdc_err e;

    kmdc_hex_decode(want1, 32, KEY1_HEX, 64, NULL);
    kmdc_hex_decode(want2, 32, KEY2_HEX, 64, NULL);
    join(k1, sizeof(k1), dir, "m1.key");
    join(k2, sizeof(k2), dir, "m2.key");
    join(k3, sizeof(k3), dir, "m3.key");
    join(bad, sizeof(bad), dir, "bad.key");
    join(open_, sizeof(open_), dir, "open.key");
    put(k1, KEY1_HEX "\n", 0600);
    put(k2, KEY2_HEX, 0400);
    put(k3, KEY1_HEX "\n", 0600);
    put(bad, "not hex\n", 0600);
    put(open_, KEY1_HEX "\n", 0644);
    kmdc_err_clear(&e);

    f[0].id = 7;
    f[0].path = k2;
    f[1].id = 3;
    f[1].path = k1;
    tap_ok(kmdc_keyring_load(&ring, f, 2, &failed, &e) == KMDC_OK && ring.n == 2 &&
           failed == 2, "keyring: two files load");
    tap_ok(ring.newest == 7, "keyring: newest is the highest id, not the last given");
    mk = kmdc_keyring_find(&ring, 3);
    tap_ok(mk != NULL && memcmp(mk->key, want1, 32) == 0, "keyring: find id 3, its bytes");
    mk = kmdc_keyring_newest(&ring);
    tap_ok(mk != NULL && mk->id == 7 && memcmp(mk->key, want2, 32) == 0,
           "keyring: newest is id 7");
    tap_ok(ring.keys[0].id == 7 && ring.keys[1].id == 3, "keyring: in the order given");
    memset(in, 0x5a, sizeof(in));
    tap_ok(kmdc_keyring_wrap(&ring, 1, KMDC_FIELD_AUTH_KEY, 0, in, wrapped, &e) == KMDC_OK &&
           kmdc_keyring_unwrap(&ring, 1, KMDC_FIELD_AUTH_KEY, 0, wrapped, sizeof(wrapped),
                               out, &e) == KMDC_OK && memcmp(in, out, 32) == 0,
           "keyring: a loaded ring wraps and unwraps");
    kmdc_keyring_free(&ring);
    tap_ok(ring.n == 0 && ring.keys == NULL && ring.newest == 0 &&
           kmdc_keyring_newest(&ring) == NULL, "keyring: free leaves it empty");
    kmdc_keyring_free(&ring);
    kmdc_keyring_free(NULL);
    tap_ok(1, "keyring: free twice and free NULL are harmless");

    f[0].id = 1;
    f[0].path = k1;
    f[1].id = 2;
    f[1].path = bad;
    f[2].id = 3;
    f[2].path = k3;
    failed = 99;
    tap_ok(kmdc_keyring_load(&ring, f, 3, &failed, &e) == KMDC_ERR_FORMAT && failed == 1 &&
           strstr(e.msg, bad) != NULL, "keyring: a bad file is reported by index and path");
    tap_ok(ring.n == 0 && ring.keys == NULL, "keyring: a failed load leaves the ring empty");
    f[1].path = open_;
    tap_ok(kmdc_keyring_load(&ring, f, 3, &failed, &e) == KMDC_ERR_PERM && failed == 1 &&
           strstr(e.msg, "is readable by group or others; chmod 600") != NULL,
           "keyring: a file others may read is refused, naming chmod 600");
    f[1].id = 1;
    f[1].path = k2;
    tap_ok(kmdc_keyring_load(&ring, f, 2, &failed, &e) == KMDC_ERR_ARG && failed == 1 &&
           strstr(e.msg, "master key id 1 is given twice") != NULL,
           "keyring: a duplicate id is refused");
    f[1].id = 0;
    tap_ok(kmdc_keyring_load(&ring, f, 2, &failed, &e) == KMDC_ERR_ARG && failed == 1,
           "keyring: id 0 is refused");
    f[1].id = UINT32_C(0x80000000);
    tap_ok(kmdc_keyring_load(&ring, f, 2, &failed, &e) == KMDC_ERR_ARG && failed == 1,
           "keyring: id 2^31 is refused");
    f[1].id = KMDC_KEYRING_ID_MAX;
    tap_ok(kmdc_keyring_load(&ring, f, 2, &failed, &e) == KMDC_OK &&
           ring.newest == KMDC_KEYRING_ID_MAX, "keyring: id 2^31-1 is the highest");
    kmdc_keyring_free(&ring);
    tap_ok(kmdc_keyring_load(&ring, f, 0, &failed, &e) == KMDC_ERR_ARG && failed == 0,
           "keyring: no file is an argument error");
    f[0].path = dir;
    tap_ok(kmdc_keyring_load(&ring, f, 1, &failed, &e) == KMDC_ERR_FORMAT && failed == 0,
           "keyring: a folder is not a key file");

    /* a generated key file is written atomically: only the file remains */
    {
        const char *gdir = fixture_dir("gen");
        char gpath[600];

        join(gpath, sizeof(gpath), gdir, "master-1.key");
        f[0].id = 1;
        f[0].path = gpath;
        tap_ok(kmdc_master_key_generate(gpath, &e) == KMDC_OK && entries(gdir) == 1 &&
                   mode_of(gpath) == 0600 &&
                   kmdc_keyring_load(&ring, f, 1, &failed, &e) == KMDC_OK,
               "keyring: a generated key file loads, nothing else left in its folder");
        kmdc_keyring_free(&ring);
    }
}

/* ---- private files (kmdc_file_open_private, kmdc_file_check_private) ------------- */

static void
test_private(void)
{
    const char *dir = fixture_dir("private");
    char path[600], link[600], fifo[600], want[700];
    struct stat st;
    kmdc_err e;
    int fd = 7;

    join(path, sizeof(path), dir, "f");
    put(path, "x", 0644);
    tap_ok(kmdc_file_open_private(path, 0, &fd, &st, "card file", &e) == KMDC_ERR_PERM && fd == -1,
           "private: a 0644 file is refused, no descriptor left");
    snprintf(want, sizeof(want), "card file can be read or written by others; run: chmod 600 %s",
             path);
    tap_ok(strcmp(e.msg, want) == 0, "private: the message names the chmod to run");
    chmod(path, 0640);
    tap_ok(kmdc_file_open_private(path, KMDC_PRIVATE_READABLE, &fd, &st, "x", &e) ==
               KMDC_ERR_PERM && strstr(e.msg, "is readable by group or others; chmod 600") != NULL,
           "private: 0640 refused, in the module's wording when asked");
    chmod(path, 0610);
    tap_ok(kmdc_file_open_private(path, KMDC_PRIVATE_READABLE, &fd, &st, "x", &e) ==
               KMDC_ERR_PERM && strstr(e.msg, "is accessible to group or others") != NULL,
           "private: 0610 (no read bit) refused as accessible");
    chmod(path, 0602);
    tap_ok(kmdc_file_open_private(path, 0, &fd, &st, "x", NULL) == KMDC_ERR_PERM && fd == -1,
           "private: 0602 refused (a write bit is enough)");
    chmod(path, 0600);
    tap_ok(kmdc_file_open_private(path, 0, &fd, &st, "x", &e) == KMDC_OK && fd >= 0 &&
               S_ISREG(st.st_mode) && st.st_size == 1,
           "private: a 0600 file opens, its stat returned");
    if (fd >= 0)
        close(fd);
    chmod(path, 0400);
    tap_ok(kmdc_file_open_private(path, KMDC_PRIVATE_NONBLOCK, &fd, &st, "x", &e) == KMDC_OK &&
               fd >= 0, "private: a 0400 file opens (nonblocking too)");
    if (fd >= 0)
        close(fd);
    chmod(path, 0600);

    join(link, sizeof(link), dir, "missing");
    tap_ok(kmdc_file_open_private(link, 0, &fd, &st, "card file", &e) == KMDC_ERR_IO &&
               fd == -1 && strstr(e.msg, "cannot open card file") != NULL &&
               strstr(e.msg, strerror(ENOENT)) != NULL,
           "private: a missing file is an I/O error naming it");

    join(link, sizeof(link), dir, "link");
    tap_ok(symlink("f", link) == 0 &&
               kmdc_file_open_private(link, KMDC_PRIVATE_NOFOLLOW, &fd, &st, "card file", &e) ==
                   KMDC_ERR_PERM && fd == -1 && strstr(e.msg, "is a symbolic link") != NULL,
           "private: a symbolic link is refused under NOFOLLOW");
    tap_ok(kmdc_file_open_private(link, 0, &fd, &st, "passphrase file", &e) == KMDC_OK && fd >= 0,
           "private: without NOFOLLOW the link's target is opened");
    if (fd >= 0)
        close(fd);

    tap_ok(kmdc_file_open_private(dir, 0, &fd, &st, "x", &e) == KMDC_OK && fd >= 0 &&
               S_ISDIR(st.st_mode),
           "private: a folder is returned for the caller to judge (not a regular file)");
    if (fd >= 0)
        close(fd);
    join(fifo, sizeof(fifo), dir, "fifo");
    tap_ok(mkfifo(fifo, 0644) == 0 &&
               kmdc_file_open_private(fifo, KMDC_PRIVATE_NONBLOCK, &fd, &st, "x", &e) == KMDC_OK &&
               S_ISFIFO(st.st_mode),
           "private: a FIFO of mode 0644 opens without waiting (its type is the caller's call)");
    if (fd >= 0)
        close(fd);

    tap_ok(kmdc_file_open_private(NULL, 0, &fd, &st, "x", &e) == KMDC_ERR_ARG && fd == -1,
           "private: no path is an argument error");

    chmod(dir, 0750);
    tap_ok(stat(dir, &st) == 0 && kmdc_file_check_private(&st, "outbox", dir, 0, &e) ==
                                      KMDC_ERR_PERM,
           "private: a folder of mode 0750 is refused by the check");
    snprintf(want, sizeof(want), "outbox can be read or written by others; run: chmod 700 %s",
             dir);
    tap_ok(strcmp(e.msg, want) == 0, "private: a folder's chmod is 700");
    chmod(dir, 0700);
    tap_ok(stat(dir, &st) == 0 && kmdc_file_check_private(&st, "outbox", dir, 0, &e) == KMDC_OK,
           "private: a folder of mode 0700 passes the check");
}

/* kmdc_rename_noreplace: moves, never replaces, relative to a folder handle. */
static void
test_rename_noreplace(void)
{
    const char *dir = fixture_dir("noreplace");
    char a[600], b[600], buf[16];
    int dfd = open(dir, O_RDONLY | O_DIRECTORY);
    int fd;

    tap_ok(dfd >= 0, "rename_noreplace: the fixture folder opens");
    join(a, sizeof a, dir, "a");
    join(b, sizeof b, dir, "b");
    fd = open(a, O_WRONLY | O_CREAT | O_EXCL, 0600);
    tap_ok(fd >= 0 && write(fd, "one", 3) == 3 && close(fd) == 0, "rename_noreplace: a written");
    tap_ok(kmdc_rename_noreplace(dfd, "a", "b") == 0 && access(a, F_OK) != 0
           && slurp(b, buf, sizeof buf) == 3 && strcmp(buf, "one") == 0,
           "rename_noreplace: a moves to b (relative to the folder handle)");
    fd = open(a, O_WRONLY | O_CREAT | O_EXCL, 0600);
    tap_ok(fd >= 0 && write(fd, "two", 3) == 3 && close(fd) == 0, "rename_noreplace: a written again");
    tap_ok(kmdc_rename_noreplace(dfd, "a", "b") == 1 && slurp(a, buf, sizeof buf) == 3
           && strcmp(buf, "two") == 0 && slurp(b, buf, sizeof buf) == 3 && strcmp(buf, "one") == 0,
           "rename_noreplace: an existing b is kept and reported (1), a stays as it was");
    errno = 0;
    tap_ok(kmdc_rename_noreplace(dfd, "missing", "c") == -1 && errno == ENOENT,
           "rename_noreplace: a missing source is -1 with errno ENOENT");
    if (dfd >= 0)
        close(dfd);
}

int
main(void)
{
    char cmd[600];

    if (mkdtemp(root) == NULL) {
        perror("mkdtemp");
        return 2;
    }
    umask(022);
    test_write_atomic();
    test_stream();
    test_temp_trio();
    test_fsync_split();
    test_units();
    test_hex();
    test_keyring();
    test_private();
    test_rename_noreplace();
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", root);
    if (system(cmd) != 0)
        tap_diag("could not remove %s", root);
    return tap_done();
}
