/* test_auth.c - the KMDC1-HMAC-SHA256 Authorization header (docs/PROTOCOL.md section 5). */
#include "tap.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "kmdc_auth.h"
#include "kmdc_crypto.h"
#include "kmdc_util.h"

/* Fixed vector, computed independently (Python hmac/hashlib):
 * AK = 00 01 .. 1f, nonce = a0 a1 .. af, serial 0123456789abcdef. */
static uint8_t ak[32];
static uint8_t nonce[16];
#define SERIAL UINT64_C(0x0123456789abcdef)
#define TS INT64_C(1700000000)
#define TARGET "/kmdc/mailbox/0123456789abcdef?wait=30"
#define SIG_GET "8df3b1c0c87ca049fe2808a2392cb71e7416d38dce22832d17a792404b03b00d"
#define SIG_POST "cff05a8aea5e8a2808c1ba147c0131784c8a1e8c9aa03a8f0ec034f00a902528"
#define SIG_DEL0 "c54540f63184cbfbf513aa6c343e0185348b1fab8dc39f810bc6cd9d23390cf4"
#define NONCE_HEX "a0a1a2a3a4a5a6a7a8a9aaabacadaeaf"
#define GOOD "KMDC1-HMAC-SHA256 serial=0123456789abcdef,ts=1700000000," \
             "nonce=" NONCE_HEX ",sig=" SIG_GET

static int
parses(const char *v, size_t len, kmdc_status want)
{
    kmdc_auth_hdr h;
    kmdc_err e;

    memset(&h, 0x5a, sizeof(h));
    kmdc_err_clear(&e);
    kmdc_status rc = kmdc_auth_parse(v, len, &h, &e);
    if (rc != want)
        tap_diag("got %s (%s)", kmdc_status_name(rc), e.msg);
    if (rc != KMDC_OK) {
        /* out untouched on failure */
        size_t i;
        const uint8_t *b = (const uint8_t *)&h;
        for (i = 0; i < sizeof(h); i++)
            if (b[i] != 0x5a)
                return 0;
    }
    return rc == want;
}

static void
bad(const char *v, const char *name)
{
    tap_ok(parses(v, strlen(v), KMDC_ERR_FORMAT), "parse refuses: %s", name);
}

static void
test_malformed(void)
{
    char buf[512];
    const char *S = "KMDC1-HMAC-SHA256 ";
    const char *N = "nonce=" NONCE_HEX;
    const char *G = "sig=" SIG_GET;

    tap_ok(parses(GOOD, strlen(GOOD), KMDC_OK), "parse accepts the reference header");

    bad("", "empty value");
    bad("serial=0123456789abcdef,ts=1700000000,nonce=" NONCE_HEX ",sig=" SIG_GET,
        "missing scheme");
    bad("kmdc1-hmac-sha256 serial=0123456789abcdef,ts=1700000000,nonce=" NONCE_HEX
        ",sig=" SIG_GET, "lowercase scheme");
    bad("Bearer serial=0123456789abcdef,ts=1700000000,nonce=" NONCE_HEX
        ",sig=" SIG_GET, "other scheme");
    bad("KMDC1-HMAC-SHA256", "scheme only");
    bad("KMDC1-HMAC-SHA256 ", "scheme and space only");
    bad("KMDC1-HMAC-SHA256  serial=0123456789abcdef,ts=1700000000,nonce="
        NONCE_HEX ",sig=" SIG_GET, "two spaces after the scheme");
    bad("KMDC1-HMAC-SHA256\tserial=0123456789abcdef,ts=1700000000,nonce="
        NONCE_HEX ",sig=" SIG_GET, "tab after the scheme");
    bad(" " GOOD, "leading space");
    snprintf(buf, sizeof(buf), "%sts=1700000000,serial=0123456789abcdef,%s,%s", S, N, G);
    bad(buf, "reordered: ts before serial");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=1700000000,%s,%s", S, G, N);
    bad(buf, "reordered: sig before nonce");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,%s,%s", S, N, G);
    bad(buf, "missing param: ts");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=1700000000,%s", S, N);
    bad(buf, "missing param: sig");
    snprintf(buf, sizeof(buf), "%sts=1700000000,%s,%s", S, N, G);
    bad(buf, "missing param: serial");
    snprintf(buf, sizeof(buf), "%s,x=1", GOOD);
    bad(buf, "extra param at the end");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,v=1,ts=1700000000,%s,%s",
             S, N, G);
    bad(buf, "extra param in the middle");
    snprintf(buf, sizeof(buf),
             "%sserial=0123456789abcdef,serial=0123456789abcdef,ts=1700000000,%s,%s",
             S, N, G);
    bad(buf, "duplicate param: serial");
    snprintf(buf, sizeof(buf), "%s,%s", GOOD, G);
    bad(buf, "duplicate param: sig at the end");
    snprintf(buf, sizeof(buf), "%sserial=0123456789ABCDEF,ts=1700000000,%s,%s", S, N, G);
    bad(buf, "uppercase hex in serial");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=1700000000,%s,"
             "sig=8DF3B1C0C87CA049FE2808A2392CB71E7416D38DCE22832D17A792404B03B00D", S, N);
    bad(buf, "uppercase hex in sig");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=1700000000,"
             "nonce=A0a1a2a3a4a5a6a7a8a9aaabacadaeaf,%s", S, G);
    bad(buf, "uppercase hex in nonce");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcde,ts=1700000000,%s,%s", S, N, G);
    bad(buf, "short serial (15 hex)");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef0,ts=1700000000,%s,%s", S, N, G);
    bad(buf, "long serial (17 hex)");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=1700000000,"
             "nonce=a0a1a2a3a4a5a6a7a8a9aaabacadaea,%s", S, G);
    bad(buf, "short nonce (31 hex)");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=1700000000,"
             "nonce=a0a1a2a3a4a5a6a7a8a9aaabacadaeaf0,%s", S, G);
    bad(buf, "long nonce (33 hex)");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=1700000000,%s,sig=%.63s",
             S, N, SIG_GET);
    bad(buf, "short sig (63 hex)");
    snprintf(buf, sizeof(buf), "%s0", GOOD);
    bad(buf, "long sig (65 hex)");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=1700000000,"
             "nonce=a0a1a2a3a4a5a6a7a8a9aaabacadaeag,%s", S, G);
    bad(buf, "non-hex digit in nonce");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=01700000000,%s,%s", S, N, G);
    bad(buf, "leading zero in ts");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=00,%s,%s", S, N, G);
    bad(buf, "ts 00");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=+1700000000,%s,%s", S, N, G);
    bad(buf, "signed ts (+)");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=-1,%s,%s", S, N, G);
    bad(buf, "negative ts");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=9223372036854775808,%s,%s",
             S, N, G);
    bad(buf, "ts overflow (2^63)");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=99999999999999999999,%s,%s",
             S, N, G);
    bad(buf, "ts overflow (20 digits)");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=,%s,%s", S, N, G);
    bad(buf, "empty ts");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef,ts=1700000000.5,%s,%s", S, N, G);
    bad(buf, "fractional ts");
    snprintf(buf, sizeof(buf), "%sserial=0000000000000000,ts=1700000000,%s,%s", S, N, G);
    bad(buf, "serial 0");
    snprintf(buf, sizeof(buf), "%sserial=8000000000000000,ts=1700000000,%s,%s", S, N, G);
    bad(buf, "serial with the top bit set");
    snprintf(buf, sizeof(buf), "%s,", GOOD);
    bad(buf, "trailing comma");
    snprintf(buf, sizeof(buf), "%s ", GOOD);
    bad(buf, "trailing space");
    snprintf(buf, sizeof(buf), "%s\r\n", GOOD);
    bad(buf, "trailing CRLF");
    snprintf(buf, sizeof(buf), "%sserial=\"0123456789abcdef\",ts=1700000000,%s,%s",
             S, N, G);
    bad(buf, "quoted value");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef, ts=1700000000,%s,%s", S, N, G);
    bad(buf, "whitespace after a comma");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef ,ts=1700000000,%s,%s", S, N, G);
    bad(buf, "whitespace before a comma");
    snprintf(buf, sizeof(buf), "%sserial = 0123456789abcdef,ts=1700000000,%s,%s", S, N, G);
    bad(buf, "whitespace around '='");
    snprintf(buf, sizeof(buf), "%sserial=0123456789abcdef;ts=1700000000;%s;%s", S, N, G);
    bad(buf, "semicolons instead of commas");
    snprintf(buf, sizeof(buf), "%sSERIAL=0123456789abcdef,ts=1700000000,%s,%s", S, N, G);
    bad(buf, "uppercase parameter name");

    /* embedded NUL: inside the value, and one extra NUL counted in len */
    memcpy(buf, GOOD, sizeof(GOOD));
    buf[30] = '\0';
    tap_ok(parses(buf, sizeof(GOOD) - 1, KMDC_ERR_FORMAT),
           "parse refuses: embedded NUL in the serial");
    tap_ok(parses(GOOD, sizeof(GOOD), KMDC_ERR_FORMAT),
           "parse refuses: trailing NUL counted in the length");
    memset(buf, 'a', sizeof(buf));
    memcpy(buf, GOOD, sizeof(GOOD) - 1);
    tap_ok(parses(buf, KMDC_AUTH_HDR_MAX + 1, KMDC_ERR_FORMAT),
           "parse refuses: over-long value");
    tap_ok(parses(GOOD, sizeof(GOOD) - 2, KMDC_ERR_FORMAT),
           "parse refuses: value cut one byte short");
}

static void
test_edges(void)
{
    char buf[512];
    kmdc_auth_hdr h;
    char out[KMDC_AUTH_HDR_BUFSZ];
    kmdc_err e;

    snprintf(buf, sizeof(buf), "KMDC1-HMAC-SHA256 serial=0000000000000001,ts=0,"
             "nonce=%s,sig=%s", NONCE_HEX, SIG_GET);
    tap_ok(kmdc_auth_parse(buf, strlen(buf), &h, NULL) == KMDC_OK && h.ts == 0 &&
           h.serial == 1, "parse accepts ts 0 and serial 1");
    snprintf(buf, sizeof(buf), "KMDC1-HMAC-SHA256 serial=7fffffffffffffff,"
             "ts=9223372036854775807,nonce=%s,sig=%s", NONCE_HEX, SIG_GET);
    tap_ok(strlen(buf) == KMDC_AUTH_HDR_MAX, "longest header is KMDC_AUTH_HDR_MAX bytes");
    tap_ok(kmdc_auth_parse(buf, strlen(buf), &h, NULL) == KMDC_OK &&
           h.ts == INT64_MAX && h.serial == KMDC_U63_MAX,
           "parse accepts ts 2^63-1 and serial 2^63-1");
    tap_ok(kmdc_auth_format(out, sizeof(out), &h, NULL) == KMDC_OK &&
           strcmp(out, buf) == 0, "format gives back the longest header exactly");
    tap_ok(kmdc_auth_format(out, KMDC_AUTH_HDR_MAX, &h, &e) == KMDC_ERR_ARG,
           "format refuses a buffer one byte short");
    h.ts = -1;
    tap_ok(kmdc_auth_format(out, sizeof(out), &h, NULL) == KMDC_ERR_ARG,
           "format refuses a negative ts");
}

static void
test_vectors(void)
{
    char out[KMDC_AUTH_HDR_BUFSZ];
    uint8_t bh[32], sig[32];
    kmdc_auth_hdr h;
    kmdc_err e;
    const char *body = "code=ABCDE12345&r=00";

    tap_ok(kmdc_auth_sign_nonce(out, sizeof(out), SERIAL, ak, "GET", TARGET, NULL, 0,
                                TS, nonce, &e) == KMDC_OK, "sign GET with a fixed nonce");
    tap_ok(strcmp(out, GOOD) == 0, "vector: GET header value matches");
    kmdc_sha256(bh, body, strlen(body), NULL);
    tap_ok(kmdc_auth_sig(sig, ak, "POST", "/kmdc/activate/0123456789abcdef", TS, nonce,
                         bh, NULL) == KMDC_OK, "sig of a POST");
    {
        uint8_t want[32];
        kmdc_hex_decode(want, 32, SIG_POST, 64, NULL);
        tap_mem_eq(sig, 32, want, 32, "vector: POST with a body");
    }
    tap_ok(kmdc_auth_sign_nonce(out, sizeof(out), SERIAL, ak, "DELETE",
                                "/kmdc/mailbox/0123456789abcdef/42", "", 0, 0, nonce,
                                NULL) == KMDC_OK &&
           kmdc_auth_parse(out, strlen(out), &h, NULL) == KMDC_OK && h.ts == 0,
           "sign DELETE at ts 0");
    {
        uint8_t want[32];
        kmdc_hex_decode(want, 32, SIG_DEL0, 64, NULL);
        tap_mem_eq(h.sig, 32, want, 32, "vector: DELETE at ts 0");
    }
}

static void
test_sign_verify(void)
{
    char out[KMDC_AUTH_HDR_BUFSZ], out2[KMDC_AUTH_HDR_BUFSZ];
    uint8_t bh[32], bh2[32], ak2[32];
    kmdc_auth_hdr h, h2;
    kmdc_err e;
    const char *body = "{\"x\":1}";
    const char *tgt = "/kmdc/card/0123456789abcdef";

    kmdc_sha256(bh, body, strlen(body), NULL);
    kmdc_sha256(bh2, "{\"x\":2}", 7, NULL);
    memcpy(ak2, ak, 32);
    ak2[31] ^= 1;

    tap_ok(kmdc_auth_sign(out, sizeof(out), SERIAL, ak, "POST", tgt, body,
                          strlen(body), TS, &e) == KMDC_OK, "sign with a random nonce");
    tap_ok(kmdc_auth_parse(out, strlen(out), &h, &e) == KMDC_OK && h.serial == SERIAL &&
           h.ts == TS, "signed header parses back");
    tap_ok(kmdc_auth_sign(out2, sizeof(out2), SERIAL, ak, "POST", tgt, body,
                          strlen(body), TS, NULL) == KMDC_OK &&
           kmdc_auth_parse(out2, strlen(out2), &h2, NULL) == KMDC_OK &&
           !kmdc_ct_eq(h.nonce, 16, h2.nonce, 16), "two signatures use different nonces");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", tgt, bh, TS, KMDC_AUTH_MAX_SKEW, &e) == KMDC_OK,
           "verify: round trip");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", tgt, bh, TS + 300, 300, NULL) == KMDC_OK,
           "verify: accepted 300 s late");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", tgt, bh, TS - 300, 300, NULL) == KMDC_OK,
           "verify: accepted 300 s early");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", tgt, bh, TS + 301, 300, &e) == KMDC_ERR_STALE,
           "verify: stale, ts 301 s behind the server");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", tgt, bh, TS - 301, 300, &e) == KMDC_ERR_STALE,
           "verify: stale, ts 301 s ahead of the server");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", tgt, bh, INT64_MIN, 300, NULL) ==
           KMDC_ERR_STALE, "verify: now = INT64_MIN does not overflow");
    tap_ok(kmdc_auth_verify(&h, ak2, "POST", tgt, bh, TS, 300, &e) == KMDC_ERR_AUTH,
           "verify: wrong key refused");
    tap_ok(kmdc_auth_verify(&h, ak2, "POST", tgt, bh, TS + 1000, 300, NULL) ==
           KMDC_ERR_AUTH, "verify: wrong key and stale answers auth (signature first)");
    tap_ok(kmdc_auth_verify(&h, ak, "PUT", tgt, bh, TS, 300, NULL) == KMDC_ERR_AUTH,
           "verify: wrong method refused");
    tap_ok(kmdc_auth_verify(&h, ak, "post", tgt, bh, TS, 300, NULL) == KMDC_ERR_AUTH,
           "verify: method is case-sensitive");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", "/kmdc/card/0123456789abcdee", bh, TS, 300,
                            NULL) == KMDC_ERR_AUTH, "verify: wrong target refused");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", "/kmdc/card/0123456789abcdef?", bh, TS, 300,
                            NULL) == KMDC_ERR_AUTH, "verify: target with an added '?'");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", tgt, bh2, TS, 300, NULL) == KMDC_ERR_AUTH,
           "verify: wrong body refused");
    h2 = h;
    h2.ts = TS + 1;
    tap_ok(kmdc_auth_verify(&h2, ak, "POST", tgt, bh, TS, 300, NULL) == KMDC_ERR_AUTH,
           "verify: changed ts refused");
    h2 = h;
    h2.nonce[0] ^= 1;
    tap_ok(kmdc_auth_verify(&h2, ak, "POST", tgt, bh, TS, 300, NULL) == KMDC_ERR_AUTH,
           "verify: changed nonce refused");
    h2 = h;
    h2.sig[31] ^= 0x80;
    tap_ok(kmdc_auth_verify(&h2, ak, "POST", tgt, bh, TS, 300, NULL) == KMDC_ERR_AUTH,
           "verify: flipped signature bit refused");
    tap_ok(kmdc_auth_verify(&h, ak, "POST", tgt, bh, TS, -1, NULL) == KMDC_ERR_ARG,
           "verify: negative skew is an argument error");
    tap_ok(kmdc_auth_sign(out, sizeof(out), 0, ak, "GET", tgt, NULL, 0, TS, NULL) ==
           KMDC_ERR_ARG, "sign: serial 0 refused");
    tap_ok(kmdc_auth_sign(out, sizeof(out), SERIAL, ak, "GET", tgt, NULL, 0, -5, NULL) ==
           KMDC_ERR_ARG, "sign: negative time refused");
    tap_ok(kmdc_auth_sign(out, 100, SERIAL, ak, "GET", tgt, NULL, 0, TS, NULL) ==
           KMDC_ERR_ARG && out[0] == '\0', "sign: short buffer refused, left empty");
    tap_ok(kmdc_auth_sign(out, sizeof(out), SERIAL, ak, "GET", "/a b", NULL, 0, TS,
                          NULL) == KMDC_ERR_ARG, "sign: target with a space refused");
    tap_ok(kmdc_auth_sign(out, sizeof(out), SERIAL, ak, "GET", "/a\nb", NULL, 0, TS,
                          NULL) == KMDC_ERR_ARG, "sign: target with a newline refused");
    tap_ok(kmdc_auth_sign(out, sizeof(out), SERIAL, ak, "", tgt, NULL, 0, TS, NULL) ==
           KMDC_ERR_ARG, "sign: empty method refused");
    tap_ok(kmdc_auth_sign(out, sizeof(out), SERIAL, ak, "GET\n", tgt, NULL, 0, TS,
                          NULL) == KMDC_ERR_ARG, "sign: method with a newline refused");
}

int
main(void)
{
    size_t i;

    for (i = 0; i < 32; i++)
        ak[i] = (uint8_t)i;
    for (i = 0; i < 16; i++)
        nonce[i] = (uint8_t)(0xa0 + i);
    test_malformed();
    test_edges();
    test_vectors();
    test_sign_verify();
    return tap_done();
}
