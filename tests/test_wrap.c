/* test_wrap.c - wrapped values, master key files, access codes. */
#include "tap.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kmdc_util.h"
#include "kmdc_wrap.h"

/* Vectors computed independently (Python cryptography): master = 40..5f,
 * value = 80..9f, salt = c0..d7, serial 0123456789abcdef. */
#define SERIAL UINT64_C(0x0123456789abcdef)
#define SALT_HEX "c0c1c2c3c4c5c6c7c8c9cacbcccdcecfd0d1d2d3d4d5d6d7"
#define CT_HEX "ee99530afedb984cbb30372aeee47968bf06daae6fe8e56b9fb8f57c378a332f"
#define W1 "00000007" SALT_HEX CT_HEX "ca323d36eb4ceee17233d1db6b16329b"
#define W2 "fffffffe" SALT_HEX CT_HEX "06ba4043c30135f6c73e8857c2a1d553"
#define W3 "00000001" SALT_HEX CT_HEX "b002d9938cb805a8d6eee80b8bbe4de3"
#define MAC1 "302eee960a8338ae3134e6bb98ff8c01b9046df03d994f5b49aaeb45849ccea4"
#define MAC2 "fdda02b4b41fe857b81fc553a9baf0f020cb23169aea9803f0e2d0e3258f156c"
#define KEY_HEX "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5f"

static uint8_t master[32], value[32], salt[24];
static char tmpdir[] = "/tmp/kmdc-test-wrap-XXXXXX";

static int
all_zero(const uint8_t *p, size_t n)
{
    size_t i;
    for (i = 0; i < n; i++)
        if (p[i] != 0)
            return 0;
    return 1;
}

static void
vector(uint32_t kid, const char *field, uint64_t counter, const char *hex,
       const char *name)
{
    uint8_t out[128], want[128];
    size_t outlen = 0, wl = strlen(hex) / 2;

    kmdc_hex_decode(want, wl, hex, 2 * wl, NULL);
    tap_ok(kmdc_wrap_salt(out, sizeof(out), &outlen, kid, master, SERIAL, field,
                          counter, value, 32, salt, NULL) == KMDC_OK &&
           outlen == 32 + KMDC_WRAP_OVERHEAD, "wrap_salt: %s", name);
    tap_mem_eq(out, outlen, want, wl, name);
}

static void
test_wrap(void)
{
    uint8_t w[128], w2[128], mod[128], out[64], m2[32];
    size_t wl = 0, wl2 = 0, ol = 0, i;
    uint32_t kid = 0;
    kmdc_err e;
    int all;

    vector(7, KMDC_FIELD_UP_CHAIN, 5, W1, "vector: up_chain, key id 7, counter 5");
    vector(0xfffffffe, KMDC_FIELD_DOWN_CHAIN, KMDC_U63_MAX, W2,
           "vector: down_chain, key id fffffffe, counter 2^63-1");
    vector(1, KMDC_FIELD_AUTH_KEY, 0, W3, "vector: auth_key, key id 1, counter 0");

    tap_ok(kmdc_wrap(w, sizeof(w), &wl, 3, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                     value, 32, &e) == KMDC_OK && wl == 76, "wrap: 32-byte key gives 76 bytes");
    tap_ok(kmdc_wrap(w2, sizeof(w2), &wl2, 3, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                     value, 32, NULL) == KMDC_OK && wl2 == wl &&
           memcmp(w + 4, w2 + 4, 24) != 0, "wrap: fresh salt each time");
    tap_ok(kmdc_wrap_key_id(w, wl, &kid, NULL) == KMDC_OK && kid == 3,
           "wrap_key_id reads the key id");
    tap_ok(kmdc_wrap_key_id(w, KMDC_WRAP_OVERHEAD, &kid, &e) == KMDC_ERR_FORMAT,
           "wrap_key_id refuses a value no longer than the overhead");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                       w, wl, &e) == KMDC_OK && ol == 32, "unwrap: round trip");
    tap_mem_eq(out, ol, value, 32, "unwrap: plaintext restored");

    memset(out, 0xaa, sizeof(out));
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL + 1, KMDC_FIELD_UP_CHAIN,
                       9, w, wl, &e) == KMDC_ERR_AUTH && ol == 0,
           "unwrap: refused for another serial");
    tap_ok(all_zero(out, sizeof(out)), "unwrap: output wiped after a refusal");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_DOWN_CHAIN, 9,
                       w, wl, NULL) == KMDC_ERR_AUTH, "unwrap: refused for down_chain");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_AUTH_KEY, 9,
                       w, wl, NULL) == KMDC_ERR_AUTH, "unwrap: refused for auth_key");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 10,
                       w, wl, NULL) == KMDC_ERR_AUTH, "unwrap: refused for counter + 1");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 8,
                       w, wl, NULL) == KMDC_ERR_AUTH, "unwrap: refused for counter - 1");
    memcpy(m2, master, 32);
    m2[0] ^= 1;
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, m2, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                       w, wl, NULL) == KMDC_ERR_AUTH, "unwrap: refused under another master key");
    memcpy(mod, w, wl);
    kmdc_put_u32(mod, 4);
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                       mod, wl, NULL) == KMDC_ERR_AUTH, "unwrap: refused when the key id is changed");
    all = 1;
    for (i = 0; i < wl * 8; i++) {
        memcpy(mod, w, wl);
        mod[i / 8] ^= (uint8_t)(1u << (i % 8));
        memset(out, 0xaa, sizeof(out));
        if (kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                        mod, wl, NULL) != KMDC_ERR_AUTH || !all_zero(out, sizeof(out)))
            all = 0;
    }
    tap_ok(all, "unwrap: every one of the 608 single-bit flips refused, output wiped");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                       w, wl - 1, NULL) == KMDC_ERR_AUTH, "unwrap: truncated by one byte refused");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                       w, 45, NULL) == KMDC_ERR_AUTH, "unwrap: truncated to one ciphertext byte refused");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                       w, KMDC_WRAP_OVERHEAD, NULL) == KMDC_ERR_FORMAT,
           "unwrap: truncated to the overhead is a format error");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                       w, 3, NULL) == KMDC_ERR_FORMAT, "unwrap: 3 bytes is a format error");
    memcpy(mod, w, wl);
    mod[wl] = 0;
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                       mod, wl + 1, NULL) == KMDC_ERR_AUTH, "unwrap: a trailing byte refused");
    tap_ok(kmdc_unwrap(out, 31, &ol, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                       w, wl, NULL) == KMDC_ERR_ARG, "unwrap: short output buffer refused");
    tap_ok(kmdc_unwrap(out, sizeof(out), &ol, master, SERIAL, "up-chain", 9,
                       w, wl, NULL) == KMDC_ERR_ARG, "unwrap: unknown field refused");
    tap_ok(kmdc_wrap(w2, sizeof(w2), &wl2, 3, master, SERIAL, "UP_CHAIN", 9, value, 32,
                     NULL) == KMDC_ERR_ARG, "wrap: unknown field refused");
    tap_ok(kmdc_wrap(w2, sizeof(w2), &wl2, 3, master, 0, KMDC_FIELD_UP_CHAIN, 9, value,
                     32, NULL) == KMDC_ERR_ARG, "wrap: serial 0 refused");
    tap_ok(kmdc_wrap(w2, sizeof(w2), &wl2, 3, master, SERIAL, KMDC_FIELD_UP_CHAIN,
                     KMDC_U63_MAX + 1, value, 32, NULL) == KMDC_ERR_ARG,
           "wrap: counter 2^63 refused");
    tap_ok(kmdc_wrap(w2, sizeof(w2), &wl2, 3, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9,
                     value, 0, NULL) == KMDC_ERR_ARG, "wrap: empty value refused");
    tap_ok(kmdc_wrap(w2, 75, &wl2, 3, master, SERIAL, KMDC_FIELD_UP_CHAIN, 9, value, 32,
                     NULL) == KMDC_ERR_ARG && wl2 == 0, "wrap: short output buffer refused");
}

/* --- master key files ------------------------------------------------------ */

static const char *
mkfile(const char *name, const char *content, size_t len, mode_t mode)
{
    static char path[256];
    int fd;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    unlink(path);
    fd = open(path, O_WRONLY | O_CREAT | O_EXCL, 0600);
    if (fd < 0 || write(fd, content, len) != (ssize_t)len || fchmod(fd, mode) != 0) {
        tap_diag("cannot create %s", path);
    }
    if (fd >= 0)
        close(fd);
    return path;
}

static kmdc_status
load(const char *name, const char *content, mode_t mode, uint8_t key[32], kmdc_err *e)
{
    return kmdc_master_key_load(mkfile(name, content, strlen(content), mode), key, e);
}

static void
test_master_key(void)
{
    uint8_t key[32], key2[32], zero[32] = { 0 };
    char path[256], dirpath[256];
    struct stat st;
    kmdc_err e;

    memset(key, 0, sizeof(key));
    tap_ok(load("good", KEY_HEX "\n", 0600, key, &e) == KMDC_OK,
           "master key: good file with a newline");
    tap_mem_eq(key, 32, master, 32, "master key: bytes decoded");
    tap_ok(load("good2", KEY_HEX, 0400, key, NULL) == KMDC_OK,
           "master key: good file without a newline, mode 0400");
    tap_ok(load("good3", KEY_HEX "\n", 0700, key, NULL) == KMDC_OK,
           "master key: mode 0700 (owner only) accepted");
    memset(key, 0, sizeof(key));
    tap_ok(load("m644", KEY_HEX "\n", 0644, key, &e) == KMDC_ERR_PERM &&
           strstr(e.msg, "chmod 600") != NULL, "master key: 0644 refused, message names chmod");
    tap_mem_eq(key, 32, zero, 32, "master key: key untouched after a refusal");
    tap_ok(load("m640", KEY_HEX "\n", 0640, key, NULL) == KMDC_ERR_PERM,
           "master key: 0640 refused");
    tap_ok(load("m604", KEY_HEX "\n", 0604, key, NULL) == KMDC_ERR_PERM,
           "master key: 0604 refused");
    tap_ok(load("m610", KEY_HEX "\n", 0610, key, NULL) == KMDC_ERR_PERM,
           "master key: group execute bit refused");
    tap_ok(load("m601", KEY_HEX "\n", 0601, key, NULL) == KMDC_ERR_PERM,
           "master key: other execute bit refused");
    tap_ok(load("badhex",
                "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5g\n",
                0600, key, &e) == KMDC_ERR_FORMAT, "master key: bad hex digit refused");
    tap_ok(load("upper",
                "404142434445464748494A4B4C4D4E4F505152535455565758595A5B5C5D5E5F\n",
                0600, key, NULL) == KMDC_ERR_FORMAT, "master key: uppercase hex refused");
    tap_ok(load("short",
                "404142434445464748494a4b4c4d4e4f505152535455565758595a5b5c5d5e5\n",
                0600, key, NULL) == KMDC_ERR_FORMAT, "master key: 63 digits refused");
    tap_ok(load("long", KEY_HEX "0\n", 0600, key, NULL) == KMDC_ERR_FORMAT,
           "master key: 65 digits refused");
    tap_ok(load("half", "4041424344454647", 0600, key, NULL) == KMDC_ERR_FORMAT,
           "master key: 16 digits refused");
    tap_ok(load("garbage", KEY_HEX "\nx", 0600, key, NULL) == KMDC_ERR_FORMAT,
           "master key: trailing garbage refused");
    tap_ok(load("twonl", KEY_HEX "\n\n", 0600, key, NULL) == KMDC_ERR_FORMAT,
           "master key: two newlines refused");
    tap_ok(load("crlf", KEY_HEX "\r\n", 0600, key, NULL) == KMDC_ERR_FORMAT,
           "master key: CRLF refused");
    tap_ok(load("space", KEY_HEX " ", 0600, key, NULL) == KMDC_ERR_FORMAT,
           "master key: trailing space refused");
    tap_ok(load("lead", " " KEY_HEX, 0600, key, NULL) == KMDC_ERR_FORMAT,
           "master key: leading space refused");
    tap_ok(load("empty", "", 0600, key, NULL) == KMDC_ERR_FORMAT,
           "master key: empty file refused");
    snprintf(path, sizeof(path), "%s/absent", tmpdir);
    tap_ok(kmdc_master_key_load(path, key, &e) == KMDC_ERR_IO,
           "master key: missing file is an I/O error");
    snprintf(dirpath, sizeof(dirpath), "%s/dir", tmpdir);
    mkdir(dirpath, 0700);
    tap_ok(kmdc_master_key_load(dirpath, key, &e) == KMDC_ERR_FORMAT,
           "master key: a directory refused");

    snprintf(path, sizeof(path), "%s/generated", tmpdir);
    tap_ok(kmdc_master_key_generate(path, &e) == KMDC_OK, "generate: new key file");
    tap_ok(stat(path, &st) == 0 && (st.st_mode & 07777) == 0600 && st.st_size == 65,
           "generate: mode 0600, 65 bytes");
    tap_ok(kmdc_master_key_load(path, key, &e) == KMDC_OK, "generate: the file loads");
    tap_ok(kmdc_master_key_generate(path, &e) == KMDC_ERR_IO &&
           strstr(e.msg, "never overwritten") != NULL, "generate: refuses an existing path");
    tap_ok(kmdc_master_key_load(path, key2, NULL) == KMDC_OK &&
           memcmp(key, key2, 32) == 0, "generate: the existing key is unchanged");
    snprintf(path, sizeof(path), "%s/nodir/key", tmpdir);
    tap_ok(kmdc_master_key_generate(path, &e) == KMDC_ERR_IO,
           "generate: missing directory is an I/O error");
    snprintf(path, sizeof(path), "%s/link", tmpdir);
    tap_ok(symlink("generated2", path) == 0 &&
           kmdc_master_key_generate(path, &e) == KMDC_ERR_IO,
           "generate: refuses to follow a symlink");
}

/* --- access codes ------------------------------------------------------------ */

static int
norm_is(const char *in, const char *want)
{
    char c[11];
    kmdc_err e;

    if (kmdc_access_code_normalize(in, strlen(in), c, &e) != KMDC_OK) {
        tap_diag("normalize: %s", e.msg);
        return 0;
    }
    return strcmp(c, want) == 0;
}

static int
norm_bad(const char *in, size_t len)
{
    char c[11];

    memset(c, 'x', sizeof(c));
    if (kmdc_access_code_normalize(in, len, c, NULL) != KMDC_ERR_FORMAT)
        return 0;
    return all_zero((const uint8_t *)c, sizeof(c));
}

static void
test_access_code(void)
{
    char a[11], b[11], c[11];
    uint8_t mac[32], want[32];
    size_t i;
    int ok;
    kmdc_err e;

    tap_ok(kmdc_access_code_new(a, &e) == KMDC_OK && strlen(a) == 10,
           "access code: new gives 10 characters");
    ok = 1;
    for (i = 0; i < 10; i++)
        if (strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", a[i]) == NULL)
            ok = 0;
    tap_ok(ok, "access code: new uses the Crockford alphabet only");
    tap_ok(kmdc_access_code_new(b, NULL) == KMDC_OK && strcmp(a, b) != 0,
           "access code: two new codes differ");
    tap_ok(kmdc_access_code_normalize(a, 10, c, NULL) == KMDC_OK && strcmp(a, c) == 0,
           "access code: a new code is canonical");
    tap_ok(norm_is("abcdefghjk", "ABCDEFGHJK"), "normalize: lowercase accepted");
    tap_ok(norm_is("IiLlOo0123", "1111000123"), "normalize: I and L read as 1, O as 0");
    tap_ok(norm_is("ABCDE-FGHJK", "ABCDEFGHJK"), "normalize: hyphen ignored");
    tap_ok(norm_is(" abc de-fg hjk ", "ABCDEFGHJK"), "normalize: spaces and hyphens ignored");
    tap_ok(norm_is("mnpqr-stvwx", "MNPQRSTVWX"), "normalize: rest of the alphabet");
    tap_ok(norm_is("--yz012-34567--", "YZ01234567"), "normalize: leading/trailing hyphens");
    tap_ok(norm_bad("ABCDEFGHJU", 10), "normalize: U refused, output wiped");
    tap_ok(norm_bad("abcdefghju", 10), "normalize: lowercase u refused");
    tap_ok(norm_bad("ABCDEFGHJ", 9), "normalize: 9 symbols refused");
    tap_ok(norm_bad("ABCDEFGHJKM", 11), "normalize: 11 symbols refused");
    tap_ok(norm_bad("", 0), "normalize: empty refused");
    tap_ok(norm_bad("----------", 10), "normalize: only hyphens refused");
    tap_ok(norm_bad("ABCDEFGHJ*", 10), "normalize: symbol outside the alphabet refused");
    tap_ok(norm_bad("ABCDE\0FGHJK", 11), "normalize: NUL refused");
    tap_ok(norm_bad("ABCDE\tFGHJK", 11), "normalize: tab refused");
    tap_ok(norm_bad("ABCDE-FGHJK-------------------------------------------------------",
                    66), "normalize: more than 64 characters refused");

    /* the check symbol (PROTOCOL.md: activation) */
    tap_ok(kmdc_access_code_check("ABCDEFGHJK") == 'J' &&
           kmdc_access_code_check("0123456789") == '0' &&
           kmdc_access_code_check("0000000001") == '2' &&
           kmdc_access_code_check("1000000000") == 'H' &&
           kmdc_access_code_check("YZ01234567") == '8',
           "check symbol: the values of the documented examples");
    tap_ok(kmdc_access_code_check("abcdefghjk") == 0 &&
           kmdc_access_code_check("ABCDEFGHJU") == 0,
           "check symbol: none for a non-canonical code");
    tap_ok(norm_is("ABCDE-FGHJK-J", "ABCDEFGHJK"), "normalize: code and check symbol");
    tap_ok(norm_is("abcde fghjk j", "ABCDEFGHJK"), "normalize: check symbol in lowercase");
    tap_ok(norm_is("01234-56789-o", "0123456789"), "normalize: check symbol O read as 0");
    tap_ok(norm_bad("ABCDE-FGHJK-K", 13), "normalize: wrong check symbol refused");
    tap_ok(norm_bad("ABCDE-FGHJM-J", 13), "normalize: one wrong symbol is caught by the check");
    tap_ok(norm_bad("BACDE-FGHJK-J", 13), "normalize: two swapped symbols are caught");
    tap_ok(norm_bad("ABCDE-FGHKJ-J", 13), "normalize: a swap next to the check is caught");
    tap_ok(norm_bad("ABCDE-FGHJK-J0", 14), "normalize: 12 symbols refused");
    tap_ok(norm_bad("12345", 5), "normalize: 5 symbols refused");
    {
        /* every single substitution and adjacent swap of random codes is caught */
        char code[12], typo[12], cn[11];
        int k, j, v, caught = 1;
        for (k = 0; k < 200 && caught; k++) {
            if (kmdc_access_code_new(code, NULL) != KMDC_OK)
                caught = 0;
            code[10] = kmdc_access_code_check(code);
            code[11] = '\0';
            if (kmdc_access_code_normalize(code, 11, cn, NULL) != KMDC_OK)
                caught = 0;
            for (j = 0; j < 11 && caught; j++) {
                for (v = 0; v < 32; v++) {
                    memcpy(typo, code, sizeof(typo));
                    typo[j] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"[v];
                    if (typo[j] != code[j] &&
                        kmdc_access_code_normalize(typo, 11, cn, NULL) != KMDC_ERR_FORMAT)
                        caught = 0;
                }
                if (j < 10 && code[j] != code[j + 1]) {
                    memcpy(typo, code, sizeof(typo));
                    typo[j] = code[j + 1];
                    typo[j + 1] = code[j];
                    if (kmdc_access_code_normalize(typo, 11, cn, NULL) != KMDC_ERR_FORMAT)
                        caught = 0;
                }
            }
        }
        tap_ok(caught, "check symbol: every single typo and adjacent swap of 200 codes is caught");
    }

    tap_ok(kmdc_access_code_mac(mac, master, SERIAL, "0123456789", &e) == KMDC_OK,
           "access code MAC computed");
    kmdc_hex_decode(want, 32, MAC1, 64, NULL);
    tap_mem_eq(mac, 32, want, 32, "vector: access code MAC of 0123456789");
    kmdc_access_code_mac(mac, master, SERIAL, "ABCDEFGHJK", NULL);
    kmdc_hex_decode(want, 32, MAC2, 64, NULL);
    tap_mem_eq(mac, 32, want, 32, "vector: access code MAC of ABCDEFGHJK");
    tap_ok(kmdc_access_code_mac(mac, master, SERIAL, "abcdefghjk", NULL) == KMDC_ERR_ARG,
           "access code MAC: non-canonical code refused");
    tap_ok(kmdc_access_code_mac(mac, master, SERIAL, "ABCDEFGHJKM", NULL) == KMDC_ERR_ARG,
           "access code MAC: 11 characters refused");
    tap_ok(kmdc_access_code_mac(mac, master, 0, "ABCDEFGHJK", NULL) == KMDC_ERR_ARG,
           "access code MAC: serial 0 refused");
    tap_ok(kmdc_access_code_verify(want, master, SERIAL, "abcde-fghjk", 11, &e) == KMDC_OK,
           "access code verify: typed form accepted");
    tap_ok(kmdc_access_code_verify(want, master, SERIAL, "abcde-fghjk-j", 13, &e) == KMDC_OK,
           "access code verify: with its check symbol accepted (same MAC)");
    tap_ok(kmdc_access_code_verify(want, master, SERIAL, "abcde-fghjk-k", 13, NULL) ==
           KMDC_ERR_FORMAT, "access code verify: a wrong check symbol is a format error");
    tap_ok(kmdc_access_code_verify(want, master, SERIAL, "abcde-fghjm", 11, &e) ==
           KMDC_ERR_AUTH, "access code verify: wrong code refused");
    tap_ok(kmdc_access_code_verify(want, master, SERIAL + 1, "ABCDEFGHJK", 10, NULL) ==
           KMDC_ERR_AUTH, "access code verify: another serial refused");
    tap_ok(kmdc_access_code_verify(want, master, SERIAL, "ABCDEFGHJU", 10, NULL) ==
           KMDC_ERR_FORMAT, "access code verify: malformed code is a format error");
}

static void
cleanup(void)
{
    char cmd[300];

    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    if (system(cmd) != 0)
        tap_diag("could not remove %s", tmpdir);
}

int
main(void)
{
    size_t i;

    for (i = 0; i < 32; i++) {
        master[i] = (uint8_t)(0x40 + i);
        value[i] = (uint8_t)(0x80 + i);
    }
    for (i = 0; i < 24; i++)
        salt[i] = (uint8_t)(0xc0 + i);
    if (mkdtemp(tmpdir) == NULL) {
        printf("Bail out! mkdtemp failed\n");
        return 1;
    }
    test_wrap();
    test_master_key();
    test_access_code();
    cleanup();
    return tap_done();
}
