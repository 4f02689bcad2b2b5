/*
 * test_crypto.c - published vectors (RFC 5869 HKDF-SHA-256 cases 1-3,
 * RFC 4231 HMAC-SHA-256 cases 1-7) and the helpers of kmdc_util/kmdc_crypto.
 */
#include "kmdc_crypto.h"
#include "kmdc_util.h"
#include "tap.h"

#include <stdlib.h>

static size_t
unhex(uint8_t *out, const char *hex)
{
    size_t n = strlen(hex) / 2;

    if (kmdc_hex_decode(out, n, hex, 2 * n, NULL) != KMDC_OK) {
        fprintf(stderr, "bad hex in test\n");
        exit(2);
    }
    return n;
}

static void
fill_range(uint8_t *p, size_t n, unsigned start)
{
    size_t i;

    for (i = 0; i < n; i++)
        p[i] = (uint8_t)(start + i);
}

static void
test_rfc5869(void)
{
    uint8_t ikm[80], salt[80], info[80], okm[82], want[82];
    size_t wl;

    /* Test case 1 */
    memset(ikm, 0x0b, 22);
    fill_range(salt, 13, 0x00);
    fill_range(info, 10, 0xf0);
    wl = unhex(want, "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf"
                     "34007208d5b887185865");
    tap_ok(kmdc_hkdf(okm, 42, salt, 13, ikm, 22, info, 10, NULL) == KMDC_OK,
           "rfc5869 case 1 derives");
    tap_mem_eq(okm, 42, want, wl, "rfc5869 case 1 OKM");

    /* Test case 2 */
    fill_range(ikm, 80, 0x00);
    fill_range(salt, 80, 0x60);
    fill_range(info, 80, 0xb0);
    wl = unhex(want, "b11e398dc80327a1c8e7f78c596a49344f012eda2d4efad8a050cc4c19afa97c"
                     "59045a99cac7827271cb41c65e590e09da3275600c2f09b8367793a9aca3db71"
                     "cc30c58179ec3e87c14c01d5c1f3434f1d87");
    tap_ok(kmdc_hkdf(okm, 82, salt, 80, ikm, 80, info, 80, NULL) == KMDC_OK,
           "rfc5869 case 2 derives");
    tap_mem_eq(okm, 82, want, wl, "rfc5869 case 2 OKM");

    /* Test case 3: empty salt and info */
    memset(ikm, 0x0b, 22);
    wl = unhex(want, "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
                     "9d201395faa4b61a96c8");
    tap_ok(kmdc_hkdf(okm, 42, NULL, 0, ikm, 22, NULL, 0, NULL) == KMDC_OK,
           "rfc5869 case 3 derives");
    tap_mem_eq(okm, 42, want, wl, "rfc5869 case 3 OKM (empty salt = RFC default)");
}

struct hmac_case {
    const char *name;
    uint8_t keybyte;     /* repeated key byte, or 0 for the special keys */
    size_t keylen;
    const char *data;    /* text data, or NULL for repeated databyte */
    uint8_t databyte;
    size_t datalen;
    const char *mac;     /* expected, hex (case 5 truncated to 128 bits) */
};

static void
test_rfc4231(void)
{
    static const struct hmac_case cases[] = {
        { "rfc4231 case 1", 0x0b, 20, "Hi There", 0, 0,
          "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7" },
        { "rfc4231 case 2", 0, 4, "what do ya want for nothing?", 0, 0,
          "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843" },
        { "rfc4231 case 3", 0xaa, 20, NULL, 0xdd, 50,
          "773ea91e36800e46854db8ebd09181a72959098b3ef8c122d9635514ced565fe" },
        { "rfc4231 case 4", 0, 25, NULL, 0xcd, 50,
          "82558a389a443c0ea4cc819899f2083a85f0faa3e578f8077a2e3ff46729665b" },
        { "rfc4231 case 5 (truncated)", 0x0c, 20, "Test With Truncation", 0, 0,
          "a3b6167473100ee06e0c796c2955552b" },
        { "rfc4231 case 6", 0xaa, 131,
          "Test Using Larger Than Block-Size Key - Hash Key First", 0, 0,
          "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54" },
        { "rfc4231 case 7", 0xaa, 131,
          "This is a test using a larger than block-size key and a larger than "
          "block-size data. The key needs to be hashed before being used by the "
          "HMAC algorithm.", 0, 0,
          "9b09ffa71b942fcb27635fbcd5b0e944bfdc63644f0713938a7f51535c3a35e2" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        const struct hmac_case *c = &cases[i];
        uint8_t key[131], data[64], mac[32], want[32];
        const uint8_t *d;
        size_t dl, wl;

        if (c->keybyte)
            memset(key, c->keybyte, c->keylen);
        else if (c->keylen == 4)
            memcpy(key, "Jefe", 4);
        else
            fill_range(key, c->keylen, 0x01);
        if (c->data) {
            d = (const uint8_t *)c->data;
            dl = strlen(c->data);
        } else {
            memset(data, c->databyte, c->datalen);
            d = data;
            dl = c->datalen;
        }
        wl = unhex(want, c->mac);
        tap_ok(kmdc_hmac(mac, key, c->keylen, d, dl, NULL) == KMDC_OK,
               "%s computes", c->name);
        tap_mem_eq(mac, wl, want, wl, c->name);
    }
}

static void
test_hmac_parts(void)
{
    uint8_t key[32], a[32], b[32];
    const void *ptrs[3] = { "KMDC/1 ", "request", "\n" };
    size_t lens[3] = { 7, 7, 1 };

    memset(key, 0x42, sizeof(key));
    kmdc_hmac(a, key, sizeof(key), "KMDC/1 request\n", 15, NULL);
    kmdc_hmac_parts(b, key, sizeof(key), 3, ptrs, lens, NULL);
    tap_mem_eq(b, 32, a, 32, "hmac over parts equals hmac over the concatenation");
}

static void
test_chain(void)
{
    uint8_t ck[32], ck2[32], mk[32], mk_a[32], want[32];
    static const uint8_t one = 1, two = 2;
    int i;

    memset(ck, 0x11, sizeof(ck));
    kmdc_hmac(want, ck, 32, &one, 1, NULL);
    tap_ok(kmdc_chain_step(mk, ck2, ck, NULL) == KMDC_OK, "chain step runs");
    tap_mem_eq(mk, 32, want, 32, "MK_n = HMAC(CK_n, 0x01)");
    kmdc_hmac(want, ck, 32, &two, 1, NULL);
    tap_mem_eq(ck2, 32, want, 32, "CK_{n+1} = HMAC(CK_n, 0x02)");

    /* in-place ratchet equals out-of-place */
    memcpy(ck2, ck, 32);
    kmdc_chain_step(NULL, ck2, ck2, NULL);
    kmdc_hmac(want, ck, 32, &two, 1, NULL);
    tap_mem_eq(ck2, 32, want, 32, "in-place chain step");

    /* seek to 5 equals five steps and the sixth message key */
    memcpy(ck2, ck, 32);
    for (i = 0; i < 5; i++)
        kmdc_chain_step(NULL, ck2, ck2, NULL);
    kmdc_chain_step(mk_a, ck2, ck2, NULL);
    memcpy(ck2, ck, 32);
    tap_ok(kmdc_chain_seek(ck2, 0, 5, mk, NULL) == KMDC_OK, "chain seek runs");
    tap_mem_eq(mk, 32, mk_a, 32, "seek(0 -> 5) gives MK_5");
    tap_ok(kmdc_chain_seek(ck2, 5, 4, mk, NULL) == KMDC_ERR_ARG,
           "a chain cannot step backwards");
}

/* The walk takes MK_s and CK_{s+1} at its step s, for every s, and leaves
 * its input alone. */
static void
test_chain_walk(void)
{
    uint8_t ck[32], ck_copy[32], seek[32], mk_want[32], ck_want[32], mk[32], next[32];
    uint64_t at;
    int bad_mk = 0, bad_ck = 0;

    memset(ck, 0x3c, sizeof(ck));
    memcpy(ck_copy, ck, sizeof(ck));
    for (at = 0; at < 16; at++) {
        memcpy(seek, ck, 32);
        kmdc_chain_seek(seek, 0, at, NULL, NULL);
        kmdc_chain_step(mk_want, ck_want, seek, NULL);
        if (kmdc_chain_walk(ck, 16, at, mk, next, NULL) != KMDC_OK) {
            bad_mk++;
            continue;
        }
        bad_mk += memcmp(mk, mk_want, 32) != 0;
        bad_ck += memcmp(next, ck_want, 32) != 0;
    }
    tap_ok(bad_mk == 0, "walk of 16 takes MK_s at step s, s = 0 .. 15");
    tap_ok(bad_ck == 0, "walk of 16 takes CK_{s+1} at step s, s = 0 .. 15");
    tap_mem_eq(ck, 32, ck_copy, 32, "the walk leaves its input key alone");
    tap_ok(kmdc_chain_walk(ck, 16, 16, mk, next, NULL) == KMDC_ERR_ARG,
           "a walk of 16 steps has no step 16");
    tap_ok(kmdc_chain_walk(ck, 1, 0, mk, next, NULL) == KMDC_OK, "a walk of one step");
    kmdc_chain_step(mk_want, ck_want, ck, NULL);
    tap_mem_eq(mk, 32, mk_want, 32, "... gives MK of its key");
}

static void
test_activate(void)
{
    uint8_t r[32], k[32], out[32], want[32];
    static const char info[] = "KMDC/1 activate up_chain";

    memset(r, 0x5a, sizeof(r));
    memset(k, 0xa5, sizeof(k));
    kmdc_hkdf(want, 32, r, 32, k, 32, info, sizeof(info) - 1, NULL);
    tap_ok(kmdc_activate_key(out, r, k, "up_chain", NULL) == KMDC_OK,
           "activation rotation runs");
    tap_mem_eq(out, 32, want, 32, "activation = HKDF(r, K, 'KMDC/1 activate ' || name)");
    tap_ok(kmdc_activate_key(out, r, k, "other", NULL) == KMDC_ERR_ARG,
           "activation refuses an unknown key name");
}

static void
test_gcm(void)
{
    uint8_t key[32], iv[12] = { 0 }, pt[100], ct[116], back[100];
    kmdc_gcm *g;

    memset(key, 7, sizeof(key));
    memset(pt, 'x', sizeof(pt));
    tap_ok(kmdc_gcm_seal(ct, key, iv, "aad", 3, pt, sizeof(pt), NULL) == KMDC_OK,
           "gcm seals");
    tap_ok(kmdc_gcm_open(back, key, iv, "aad", 3, ct, sizeof(ct), NULL) == KMDC_OK &&
           memcmp(back, pt, sizeof(pt)) == 0, "gcm opens what it sealed");
    ct[5] ^= 1;
    tap_ok(kmdc_gcm_open(back, key, iv, "aad", 3, ct, sizeof(ct), NULL) == KMDC_ERR_AUTH,
           "gcm refuses a flipped ciphertext bit");
    ct[5] ^= 1;
    tap_ok(kmdc_gcm_open(back, key, iv, "aaD", 3, ct, sizeof(ct), NULL) == KMDC_ERR_AUTH,
           "gcm refuses other aad");
    tap_ok(kmdc_gcm_open(back, key, iv, "aad", 3, ct, 10, NULL) == KMDC_ERR_TRUNCATED,
           "gcm refuses input shorter than a tag");
    g = kmdc_gcm_new(key, NULL);
    tap_ok(g != NULL, "gcm context");
    memset(back, 0, sizeof(back));
    tap_ok(kmdc_gcm_open_ctx(g, back, iv, "aad", 3, ct, sizeof(ct), NULL) == KMDC_OK &&
           memcmp(back, pt, sizeof(pt)) == 0, "gcm context opens the one-shot seal");
    tap_ok(kmdc_gcm_seal_ctx(g, ct, iv, NULL, 0, pt, 0, NULL) == KMDC_OK &&
           kmdc_gcm_open_ctx(g, back, iv, NULL, 0, ct, 16, NULL) == KMDC_OK,
           "gcm context round-trips an empty plaintext");
    kmdc_gcm_free(g);
}

static void
test_util(void)
{
    uint8_t b[8];
    char hex[17];
    uint64_t s;

    tap_ok(kmdc_ct_eq("abc", 3, "abc", 3) == 1, "ct_eq equal");
    tap_ok(kmdc_ct_eq("abc", 3, "abd", 3) == 0, "ct_eq differs");
    tap_ok(kmdc_ct_eq("abc", 3, "abcd", 4) == 0, "ct_eq other length");
    kmdc_put_u64(b, UINT64_C(0x0102030405060708));
    kmdc_hex_encode(hex, b, 8);
    tap_ok(strcmp(hex, "0102030405060708") == 0, "u64 big-endian and lowercase hex");
    tap_ok(kmdc_get_u64(b) == UINT64_C(0x0102030405060708), "u64 decodes");
    tap_ok(kmdc_serial_parse(&s, "7fffffffffffffff", 16, NULL) == KMDC_OK &&
           s == KMDC_U63_MAX, "largest serial parses");
    tap_ok(kmdc_serial_parse(&s, "8000000000000000", 16, NULL) == KMDC_ERR_FORMAT,
           "serial with the top bit set is refused");
    tap_ok(kmdc_serial_parse(&s, "0000000000000000", 16, NULL) == KMDC_ERR_FORMAT,
           "serial zero is refused");
    tap_ok(kmdc_serial_parse(&s, "00000000000000AB", 16, NULL) == KMDC_ERR_FORMAT,
           "uppercase hex serial is refused");
    tap_ok(kmdc_serial_parse(&s, "00000000000000a", 15, NULL) == KMDC_ERR_FORMAT,
           "short serial is refused");
    kmdc_serial_format(hex, 0xab);
    tap_ok(strcmp(hex, "00000000000000ab") == 0, "serial formats as 16 hex digits");
    tap_ok(kmdc_address_valid("alice", 5), "address alice");
    tap_ok(kmdc_address_valid("a.b_c-9", 7), "address with . _ -");
    tap_ok(!kmdc_address_valid(".alice", 6), "address may not start with a dot");
    tap_ok(!kmdc_address_valid("Alice", 5), "address must be lower-case");
    tap_ok(!kmdc_address_valid("", 0), "empty address");
    tap_ok(kmdc_address_valid("a234567890123456789012345678901234567890123456789012345678901234", 64),
           "address of 64 characters");
    tap_ok(!kmdc_address_valid("a2345678901234567890123456789012345678901234567890123456789012345", 65),
           "address of 65 characters");
    tap_ok(kmdc_random_u63(&s, NULL) == KMDC_OK && s >= 1 && s <= KMDC_U63_MAX,
           "random u63 in range");
}

int
main(void)
{
    test_rfc5869();
    test_rfc4231();
    test_hmac_parts();
    test_chain();
    test_chain_walk();
    test_activate();
    test_gcm();
    test_util();
    return tap_done();
}
