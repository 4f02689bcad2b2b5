/* kmdc_util.c - wiping, constant-time compare, integers, hex, randomness. */
#define _DEFAULT_SOURCE 1                /* explicit_bzero (glibc 2.25) */
#include "kmdc_util.h"

#include <stdlib.h>
#include <string.h>
#include <openssl/crypto.h>
#include <openssl/rand.h>

void
kmdc_wipe(void *p, size_t len)
{
    if (p == NULL || len == 0)
        return;
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 25))
    /* memset that the compiler may not drop: about 4x faster than
     * OPENSSL_cleanse, which stores byte by byte (the payload streams wipe
     * every 64 KiB chunk they release) */
    explicit_bzero(p, len);
#else
    OPENSSL_cleanse(p, len);
#endif
}

void
kmdc_freezero(void *p, size_t len)
{
    if (p == NULL)
        return;
    kmdc_wipe(p, len);
    free(p);
}

int
kmdc_ct_eq(const void *a, size_t alen, const void *b, size_t blen)
{
    if (alen != blen)
        return 0;
    if (alen == 0)
        return 1;
    return CRYPTO_memcmp(a, b, alen) == 0;
}

kmdc_status
kmdc_random(void *buf, size_t len, kmdc_err *err)
{
    if (len > (size_t)INT32_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "random: request too large");
    if (RAND_bytes(buf, (int)len) != 1)
        return kmdc_err_set(err, KMDC_ERR_INTERNAL,
                            "random: the system random generator failed");
    return KMDC_OK;
}

void
kmdc_put_u16(uint8_t *p, uint16_t v)
{
    p[0] = (uint8_t)(v >> 8);
    p[1] = (uint8_t)v;
}

void
kmdc_put_u32(uint8_t *p, uint32_t v)
{
    p[0] = (uint8_t)(v >> 24);
    p[1] = (uint8_t)(v >> 16);
    p[2] = (uint8_t)(v >> 8);
    p[3] = (uint8_t)v;
}

void
kmdc_put_u64(uint8_t *p, uint64_t v)
{
    kmdc_put_u32(p, (uint32_t)(v >> 32));
    kmdc_put_u32(p + 4, (uint32_t)v);
}

uint16_t
kmdc_get_u16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

uint32_t
kmdc_get_u32(const uint8_t *p)
{
    return ((uint32_t)p[0] << 24) | ((uint32_t)p[1] << 16) |
           ((uint32_t)p[2] << 8) | (uint32_t)p[3];
}

uint64_t
kmdc_get_u64(const uint8_t *p)
{
    return ((uint64_t)kmdc_get_u32(p) << 32) | kmdc_get_u32(p + 4);
}

void
kmdc_hex_encode(char *out, const uint8_t *in, size_t len)
{
    static const char digits[] = "0123456789abcdef";
    size_t i;

    for (i = 0; i < len; i++) {
        out[2 * i] = digits[in[i] >> 4];
        out[2 * i + 1] = digits[in[i] & 0x0f];
    }
    out[2 * len] = '\0';
}

int
kmdc_hex_nibble(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int
kmdc_hex_nibble_anycase(char c)
{
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return kmdc_hex_nibble(c);
}

kmdc_status
kmdc_hex_decode(uint8_t *out, size_t outlen, const char *in, size_t inlen,
                kmdc_err *err)
{
    size_t i;

    if (inlen != 2 * outlen)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "expected %zu hex digits, got %zu", 2 * outlen, inlen);
    for (i = 0; i < outlen; i++) {
        int hi = kmdc_hex_nibble(in[2 * i]), lo = kmdc_hex_nibble(in[2 * i + 1]);
        if (hi < 0 || lo < 0)
            return kmdc_err_set(err, KMDC_ERR_FORMAT,
                                "not lowercase hex at position %zu", 2 * i);
        out[i] = (uint8_t)((hi << 4) | lo);
    }
    return KMDC_OK;
}

void
kmdc_serial_format(char out[17], uint64_t serial)
{
    uint8_t b[8];

    kmdc_put_u64(b, serial);
    kmdc_hex_encode(out, b, sizeof(b));
}

kmdc_status
kmdc_serial_parse(uint64_t *serial, const char *s, size_t len, kmdc_err *err)
{
    uint8_t b[8];
    uint64_t v;

    if (kmdc_hex_decode(b, sizeof(b), s, len, NULL) != KMDC_OK)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "a serial is 16 lowercase hex digits");
    v = kmdc_get_u64(b);
    if (v == 0 || v > KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "a serial lies in 1 .. 2^63-1");
    *serial = v;
    return KMDC_OK;
}

kmdc_status
kmdc_random_u63(uint64_t *out, kmdc_err *err)
{
    uint8_t b[8];
    uint64_t v;
    kmdc_status rc;

    do {
        if ((rc = kmdc_random(b, sizeof(b), err)) != KMDC_OK)
            return rc;
        v = kmdc_get_u64(b) & KMDC_U63_MAX;
    } while (v == 0);
    *out = v;
    return KMDC_OK;
}

int
kmdc_address_valid(const char *s, size_t len)
{
    size_t i;

    if (len < 1 || len > 64)
        return 0;
    for (i = 0; i < len; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (i == 0 ? !alnum : !(alnum || c == '.' || c == '_' || c == '-'))
            return 0;
    }
    return 1;
}
