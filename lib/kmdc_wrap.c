/* kmdc_wrap.c - wrapped values, master key files and access codes. */
#include "kmdc_wrap.h"
#include "kmdc_crypto.h"
#include "kmdc_file.h"
#include "kmdc_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char wrap_label[] = "KMDC/1 wrap";
static const char code_label[] = "KMDC/1 access code";
static const char crockford[] = "0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/* Longest aad: label, key id, serial, "down_chain", counter. */
#define WRAP_AAD_MAX (sizeof(wrap_label) - 1 + 4 + 8 + 10 + 8)

static const uint8_t zero_iv[KMDC_IV_LEN];

/* Length of a known field name, 0 when field is not one of them. */
static size_t
field_len(const char *field)
{
    if (field == NULL)
        return 0;
    if (strcmp(field, KMDC_FIELD_UP_CHAIN) == 0 ||
        strcmp(field, KMDC_FIELD_DOWN_CHAIN) == 0 ||
        strcmp(field, KMDC_FIELD_AUTH_KEY) == 0)
        return strlen(field);
    return 0;
}

/* Build the aad into a (WRAP_AAD_MAX bytes); returns its length or 0. */
static size_t
wrap_aad(uint8_t *a, uint32_t key_id, uint64_t serial, const char *field,
         uint64_t counter)
{
    size_t fl = field_len(field), n = 0;

    if (fl == 0)
        return 0;
    memcpy(a, wrap_label, sizeof(wrap_label) - 1);
    n += sizeof(wrap_label) - 1;
    kmdc_put_u32(a + n, key_id);
    n += 4;
    kmdc_put_u64(a + n, serial);
    n += 8;
    memcpy(a + n, field, fl);
    n += fl;
    kmdc_put_u64(a + n, counter);
    n += 8;
    return n;
}

kmdc_status
kmdc_wrap_salt(uint8_t *out, size_t cap, size_t *outlen, uint32_t key_id,
               const uint8_t master[KMDC_MASTER_KEY_LEN], uint64_t serial,
               const char *field, uint64_t counter, const uint8_t *value,
               size_t vlen, const uint8_t salt[KMDC_WRAP_SALT_LEN], kmdc_err *err)
{
    uint8_t key[KMDC_KEY_LEN];
    uint8_t aad[WRAP_AAD_MAX];
    size_t aadlen;
    kmdc_status rc;

    if (outlen != NULL)
        *outlen = 0;
    if (out == NULL || outlen == NULL || master == NULL || value == NULL ||
        salt == NULL || vlen == 0 || vlen > KMDC_WRAP_MAX_VALUE) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "wrap: invalid argument");
        goto out;
    }
    if (serial == 0 || serial > KMDC_U63_MAX || counter > KMDC_U63_MAX) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "wrap: serial or counter out of range");
        goto out;
    }
    if ((aadlen = wrap_aad(aad, key_id, serial, field, counter)) == 0) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "wrap: unknown field name");
        goto out;
    }
    if (cap < vlen + KMDC_WRAP_OVERHEAD) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "wrap: output buffer too small");
        goto out;
    }
    if ((rc = kmdc_hkdf(key, sizeof(key), salt, KMDC_WRAP_SALT_LEN, master,
                        KMDC_MASTER_KEY_LEN, wrap_label, sizeof(wrap_label) - 1,
                        err)) != KMDC_OK)
        goto out;
    kmdc_put_u32(out, key_id);
    memmove(out + 4, salt, KMDC_WRAP_SALT_LEN);
    if ((rc = kmdc_gcm_seal(out + 4 + KMDC_WRAP_SALT_LEN, key, zero_iv, aad,
                            aadlen, value, vlen, err)) != KMDC_OK) {
        kmdc_wipe(out, vlen + KMDC_WRAP_OVERHEAD);
        goto out;
    }
    *outlen = vlen + KMDC_WRAP_OVERHEAD;
out:
    kmdc_wipe(key, sizeof(key));
    return rc;
}

kmdc_status
kmdc_wrap(uint8_t *out, size_t cap, size_t *outlen, uint32_t key_id,
          const uint8_t master[KMDC_MASTER_KEY_LEN], uint64_t serial,
          const char *field, uint64_t counter, const uint8_t *value, size_t vlen,
          kmdc_err *err)
{
    uint8_t salt[KMDC_WRAP_SALT_LEN];
    kmdc_status rc;

    if (outlen != NULL)
        *outlen = 0;
    if ((rc = kmdc_random(salt, sizeof(salt), err)) != KMDC_OK)
        return rc;
    return kmdc_wrap_salt(out, cap, outlen, key_id, master, serial, field,
                          counter, value, vlen, salt, err);
}

kmdc_status
kmdc_wrap_key_id(const uint8_t *buf, size_t len, uint32_t *key_id, kmdc_err *err)
{
    if (buf == NULL || key_id == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "wrap: invalid argument");
    if (len <= KMDC_WRAP_OVERHEAD)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "wrap: stored value too short (%zu bytes)", len);
    *key_id = kmdc_get_u32(buf);
    return KMDC_OK;
}

kmdc_status
kmdc_unwrap(uint8_t *out, size_t cap, size_t *outlen,
            const uint8_t master[KMDC_MASTER_KEY_LEN], uint64_t serial,
            const char *field, uint64_t counter, const uint8_t *buf, size_t len,
            kmdc_err *err)
{
    uint8_t key[KMDC_KEY_LEN];
    uint8_t aad[WRAP_AAD_MAX];
    size_t aadlen, ptlen;
    uint32_t key_id = 0;
    kmdc_status rc;

    if (outlen != NULL)
        *outlen = 0;
    if (out == NULL || outlen == NULL || master == NULL || buf == NULL) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "unwrap: invalid argument");
        goto out;
    }
    if (serial == 0 || serial > KMDC_U63_MAX || counter > KMDC_U63_MAX) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG,
                          "unwrap: serial or counter out of range");
        goto out;
    }
    if ((rc = kmdc_wrap_key_id(buf, len, &key_id, err)) != KMDC_OK)
        goto out;
    if ((aadlen = wrap_aad(aad, key_id, serial, field, counter)) == 0) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "unwrap: unknown field name");
        goto out;
    }
    ptlen = len - KMDC_WRAP_OVERHEAD;
    if (ptlen > cap) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG,
                          "unwrap: output buffer too small (%zu for %zu bytes)",
                          cap, ptlen);
        goto out;
    }
    if ((rc = kmdc_hkdf(key, sizeof(key), buf + 4, KMDC_WRAP_SALT_LEN, master,
                        KMDC_MASTER_KEY_LEN, wrap_label, sizeof(wrap_label) - 1,
                        err)) != KMDC_OK)
        goto out;
    rc = kmdc_gcm_open(out, key, zero_iv, aad, aadlen,
                       buf + 4 + KMDC_WRAP_SALT_LEN, len - 4 - KMDC_WRAP_SALT_LEN,
                       err);
    if (rc == KMDC_ERR_AUTH) {
        rc = kmdc_err_set(err, KMDC_ERR_AUTH,
                          "unwrap: stored %s (master key id %lu) does not "
                          "authenticate: wrong master key, or moved or damaged",
                          field, (unsigned long)key_id);
        goto out;
    }
    if (rc != KMDC_OK)
        goto out;
    *outlen = ptlen;
out:
    if (rc != KMDC_OK && out != NULL)
        kmdc_wipe(out, cap);
    kmdc_wipe(key, sizeof(key));
    return rc;
}

/* --- master key files ---------------------------------------------------- */

kmdc_status
kmdc_master_key_load(const char *path, uint8_t key[KMDC_MASTER_KEY_LEN],
                     kmdc_err *err)
{
    uint8_t tmp[KMDC_MASTER_KEY_LEN];
    char buf[2 * KMDC_MASTER_KEY_LEN + 16];
    size_t total = 0;
    struct stat st;
    kmdc_status rc;
    int fd = -1;

    if (path == NULL || key == NULL) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "master key: no path");
        goto out;
    }
    /* The module's wording since its first release (t/002_config.t). */
    if ((rc = kmdc_file_open_private(path, KMDC_PRIVATE_NONBLOCK | KMDC_PRIVATE_READABLE, &fd,
                                     &st, "master key file", err)) != KMDC_OK)
        goto out;
    if (!S_ISREG(st.st_mode)) {
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                          "master key file %.120s is not a regular file", path);
        goto out;
    }
    if (st.st_size != 2 * KMDC_MASTER_KEY_LEN &&
        st.st_size != 2 * KMDC_MASTER_KEY_LEN + 1) {
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                          "master key file %.120s must hold exactly 64 lowercase "
                          "hex digits and an optional newline", path);
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf + total, sizeof(buf) - total);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = kmdc_err_set(err, KMDC_ERR_IO, "master key file %.120s: %s",
                              path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        total += (size_t)n;
        if (total == sizeof(buf))
            break;
    }
    if (!(total == 2 * KMDC_MASTER_KEY_LEN ||
          (total == 2 * KMDC_MASTER_KEY_LEN + 1 &&
           buf[2 * KMDC_MASTER_KEY_LEN] == '\n')) ||
        kmdc_hex_decode(tmp, sizeof(tmp), buf, 2 * KMDC_MASTER_KEY_LEN, NULL) !=
            KMDC_OK) {
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                          "master key file %.120s must hold exactly 64 lowercase "
                          "hex digits and an optional newline", path);
        goto out;
    }
    memcpy(key, tmp, sizeof(tmp));
    rc = KMDC_OK;
out:
    if (fd >= 0)
        close(fd);
    kmdc_wipe(tmp, sizeof(tmp));
    kmdc_wipe(buf, sizeof(buf));
    return rc;
}

kmdc_status
kmdc_master_key_generate(const char *path, kmdc_err *err)
{
    uint8_t key[KMDC_MASTER_KEY_LEN];
    char hex[2 * KMDC_MASTER_KEY_LEN + 2];
    struct stat st;
    kmdc_err e;
    kmdc_status rc;

    kmdc_err_clear(&e);
    if (path == NULL || path[0] == '\0') {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "master key: no path");
        goto out;
    }
    /* The same words as an O_EXCL refusal; the move at the end refuses a
     * name that appears meanwhile as well. */
    if (lstat(path, &st) == 0) {
        rc = kmdc_err_set(err, KMDC_ERR_IO, "master key file %.120s: %s (an existing key "
                          "is never overwritten)", path, strerror(EEXIST));
        goto out;
    }
    if ((rc = kmdc_random(key, sizeof(key), err)) != KMDC_OK)
        goto out;
    kmdc_hex_encode(hex, key, sizeof(key));
    hex[2 * KMDC_MASTER_KEY_LEN] = '\n';
    hex[2 * KMDC_MASTER_KEY_LEN + 1] = '\0';
    rc = kmdc_file_write_atomic(path, hex, 2 * KMDC_MASTER_KEY_LEN + 1, 0600,
                                KMDC_FILE_NOREPLACE, &e);
    if (rc != KMDC_OK)
        kmdc_err_set(err, rc, "master key file %.120s: %s%s", path, e.msg,
                     strstr(e.msg, "already exists") != NULL
                         ? " (an existing key is never overwritten)" : "");
out:
    kmdc_wipe(key, sizeof(key));
    kmdc_wipe(hex, sizeof(hex));
    return rc;
}

/* --- access codes ---------------------------------------------------------- */

kmdc_status
kmdc_access_code_new(char out[KMDC_ACCESS_CODE_LEN + 1], kmdc_err *err)
{
    uint8_t b[8];
    uint64_t v = 0;
    kmdc_status rc;
    int i;

    if (out == NULL) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "access code: no buffer");
        goto out;
    }
    if ((rc = kmdc_random(b, sizeof(b), err)) != KMDC_OK)
        goto out;
    v = kmdc_get_u64(b);   /* the low 50 bits are used */
    for (i = 0; i < KMDC_ACCESS_CODE_LEN; i++)
        out[i] = crockford[(v >> (5 * (KMDC_ACCESS_CODE_LEN - 1 - i))) & 31];
    out[KMDC_ACCESS_CODE_LEN] = '\0';
out:
    kmdc_wipe(b, sizeof(b));
    kmdc_wipe(&v, sizeof(v));
    return rc;
}

/* x * alpha in GF(32) = GF(2)[x] / (x^5 + x^2 + 1). */
static unsigned
gf32_times_alpha(unsigned s)
{
    s <<= 1;
    return (s & 0x20) ? s ^ 0x25 : s;
}

/* Horner over n canonical symbols: s = s * alpha + value. */
static unsigned
code_poly(const char *canon, size_t n)
{
    unsigned s = 0;
    size_t i;

    for (i = 0; i < n; i++)
        s = gf32_times_alpha(s) ^ (unsigned)(strchr(crockford, canon[i]) - crockford);
    return s;
}

char
kmdc_access_code_check(const char canon[KMDC_ACCESS_CODE_LEN])
{
    size_t i;

    for (i = 0; i < KMDC_ACCESS_CODE_LEN; i++)
        if (canon[i] == '\0' || strchr(crockford, canon[i]) == NULL)
            return 0;
    return crockford[gf32_times_alpha(code_poly(canon, KMDC_ACCESS_CODE_LEN))];
}

/* The canonical symbol of typed character c, or 0 when it has none. */
static char
crockford_canon(char c)
{
    if (c >= 'a' && c <= 'z')
        c = (char)(c - 'a' + 'A');
    if (c == 'I' || c == 'L')
        return '1';
    if (c == 'O')
        return '0';
    if (c == 'U' || c == '\0')
        return 0;
    return strchr(crockford, c) != NULL ? c : 0;
}

kmdc_status
kmdc_access_code_normalize(const char *in, size_t len,
                           char canon[KMDC_ACCESS_CODE_LEN + 1], kmdc_err *err)
{
    char tmp[KMDC_ACCESS_CODE_LEN + 2];
    size_t i, n = 0;
    kmdc_status rc;

    if (canon == NULL || (in == NULL && len > 0))
        return kmdc_err_set(err, KMDC_ERR_ARG, "access code: invalid argument");
    if (len > 64) {
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                          "access code: too long, it has 10 characters");
        goto out;
    }
    for (i = 0; i < len; i++) {
        char c;
        if (in[i] == '-' || in[i] == ' ')
            continue;
        if ((c = crockford_canon(in[i])) == 0) {
            rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                              "access code: character %zu is not in its "
                              "alphabet (digits and letters except U)", i + 1);
            goto out;
        }
        if (n == KMDC_ACCESS_CODE_LEN + 1) {
            rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                              "access code: too long, it has 11 characters "
                              "(10 for a code without a check character)");
            goto out;
        }
        tmp[n++] = c;
    }
    if (n < KMDC_ACCESS_CODE_LEN) {
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                          "access code: too short, it has 11 characters "
                          "(10 for a code without a check character)");
        goto out;
    }
    /* 11 symbols: the last is the check character of the first ten. */
    if (n == KMDC_ACCESS_CODE_LEN + 1 && code_poly(tmp, n) != 0) {
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                          "access code: the check character does not match, so a "
                          "character is mistyped or two are swapped");
        goto out;
    }
    tmp[KMDC_ACCESS_CODE_LEN] = '\0';
    memcpy(canon, tmp, KMDC_ACCESS_CODE_LEN + 1);
    rc = KMDC_OK;
out:
    if (rc != KMDC_OK)
        kmdc_wipe(canon, KMDC_ACCESS_CODE_LEN + 1);
    kmdc_wipe(tmp, sizeof(tmp));
    return rc;
}

kmdc_status
kmdc_access_code_mac(uint8_t mac[32], const uint8_t master[KMDC_MASTER_KEY_LEN],
                     uint64_t serial, const char *canon, kmdc_err *err)
{
    uint8_t k[KMDC_KEY_LEN];
    uint8_t sb[8];
    const void *ptrs[2];
    size_t lens[2], i;
    kmdc_status rc;

    if (mac == NULL || master == NULL || canon == NULL ||
        serial == 0 || serial > KMDC_U63_MAX) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "access code: invalid argument");
        goto out;
    }
    for (i = 0; i < KMDC_ACCESS_CODE_LEN; i++)
        if (canon[i] == '\0' || strchr(crockford, canon[i]) == NULL)
            break;
    if (i != KMDC_ACCESS_CODE_LEN || canon[i] != '\0') {
        rc = kmdc_err_set(err, KMDC_ERR_ARG,
                          "access code: not in canonical form (normalise first)");
        goto out;
    }
    if ((rc = kmdc_hkdf(k, sizeof(k), NULL, 0, master, KMDC_MASTER_KEY_LEN,
                        code_label, sizeof(code_label) - 1, err)) != KMDC_OK)
        goto out;
    kmdc_put_u64(sb, serial);
    ptrs[0] = sb;     lens[0] = sizeof(sb);
    ptrs[1] = canon;  lens[1] = KMDC_ACCESS_CODE_LEN;
    rc = kmdc_hmac_parts(mac, k, sizeof(k), 2, ptrs, lens, err);
out:
    kmdc_wipe(k, sizeof(k));
    return rc;
}

kmdc_status
kmdc_access_code_verify(const uint8_t mac[32],
                        const uint8_t master[KMDC_MASTER_KEY_LEN], uint64_t serial,
                        const char *in, size_t len, kmdc_err *err)
{
    char canon[KMDC_ACCESS_CODE_LEN + 1];
    uint8_t got[32];
    kmdc_status rc;

    if (mac == NULL) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "access code: invalid argument");
        goto out;
    }
    if ((rc = kmdc_access_code_normalize(in, len, canon, err)) != KMDC_OK)
        goto out;
    if ((rc = kmdc_access_code_mac(got, master, serial, canon, err)) != KMDC_OK)
        goto out;
    if (!kmdc_ct_eq(got, sizeof(got), mac, 32)) {
        rc = kmdc_err_set(err, KMDC_ERR_AUTH, "access code: wrong code");
        goto out;
    }
    rc = KMDC_OK;
out:
    kmdc_wipe(canon, sizeof(canon));
    kmdc_wipe(got, sizeof(got));
    return rc;
}
