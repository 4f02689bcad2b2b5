/* test_reqparse.c - the activation form, the wait query and If-None-Match. */
#include "kmdc_reqparse.h"
#include "tap.h"

#define R64 "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f"

static int
form(const char *body)
{
    char code[KMDC_FORM_CODE_MAX + 1];
    uint8_t r[32];

    return kmdc_activation_form_parse(body, strlen(body), code, r);
}

static void
test_form(void)
{
    char code[KMDC_FORM_CODE_MAX + 1];
    uint8_t r[32];
    const char *b = "code=ABCDE-12345&r=" R64;

    tap_ok(kmdc_activation_form_parse(b, strlen(b), code, r) && strcmp(code, "ABCDE-12345") == 0 &&
           r[0] == 0 && r[31] == 0x1f, "form: code and r");
    b = "r=" R64 "&code=abcde+12%2D345";
    tap_ok(kmdc_activation_form_parse(b, strlen(b), code, r) && strcmp(code, "abcde 12-345") == 0,
           "form: either order, + and %%XX decoded");
    tap_ok(!form("code=ABCDE12345"), "form: r missing");
    tap_ok(!form("r=" R64), "form: code missing");
    tap_ok(!form("code=A&code=B&r=" R64), "form: code twice");
    tap_ok(!form("code=A&r=" R64 "&r=" R64), "form: r twice");
    tap_ok(!form("code=A&r=" R64 "&x=1"), "form: another field");
    tap_ok(!form("code=A&r=" R64 "&"), "form: trailing &");
    tap_ok(!form("&code=A&r=" R64), "form: empty first field");
    tap_ok(!form("code=&r=" R64), "form: empty code");
    tap_ok(!form("code=A&r=" "000102030405060708090A0B0C0D0E0F101112131415161718191A1B1C1D1E1F"),
           "form: uppercase hex r");
    tap_ok(!form("code=A&r=0001"), "form: short r");
    tap_ok(!form("code=%4&r=" R64), "form: broken escape");
    tap_ok(!form("code=%00&r=" R64), "form: escaped NUL");
    tap_ok(!form("code&r=" R64), "form: field without =");
    tap_ok(!form(""), "form: empty body");
    tap_ok(!form("code=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA&r=" R64),
           "form: code over 64 bytes");
    {
        const char nul[] = "code=A\0&r=" R64;
        tap_ok(!kmdc_activation_form_parse(nul, sizeof(nul) - 1, code, r), "form: raw NUL");
    }
}

static void
test_wait(void)
{
    int w = -1;

    tap_ok(kmdc_wait_query_parse(NULL, 60, &w) && w == 0, "wait: no query");
    tap_ok(kmdc_wait_query_parse("", 60, &w) && w == 0, "wait: empty query");
    tap_ok(kmdc_wait_query_parse("wait=30", 60, &w) && w == 30, "wait=30");
    tap_ok(kmdc_wait_query_parse("wait=999", 60, &w) && w == 60, "wait=999 clamped to 60");
    tap_ok(!kmdc_wait_query_parse("wait=", 60, &w), "wait= without digits");
    tap_ok(!kmdc_wait_query_parse("wait=-1", 60, &w), "wait=-1");
    tap_ok(!kmdc_wait_query_parse("wait=1&x=2", 60, &w), "wait with another parameter");
    tap_ok(!kmdc_wait_query_parse("wait=1234567890", 60, &w), "wait with 10 digits");
    tap_ok(!kmdc_wait_query_parse("x=1", 60, &w), "another parameter");
}

static void
test_inm(void)
{
    const char *tag = "\"abc\"";

    tap_ok(kmdc_if_none_match("\"abc\"", tag), "If-None-Match: the tag");
    tap_ok(kmdc_if_none_match("W/\"abc\"", tag), "If-None-Match: weak form of the tag");
    tap_ok(kmdc_if_none_match("\"x\", \"abc\"", tag), "If-None-Match: in a list");
    tap_ok(kmdc_if_none_match("*", tag), "If-None-Match: *");
    tap_ok(!kmdc_if_none_match("\"abd\"", tag), "If-None-Match: another tag");
    tap_ok(!kmdc_if_none_match(NULL, tag), "If-None-Match: absent");
    tap_ok(!kmdc_if_none_match("abc", tag), "If-None-Match: unquoted");
    tap_ok(!kmdc_if_none_match("\"abc", tag), "If-None-Match: unterminated");
}

int
main(void)
{
    test_form();
    test_wait();
    test_inm();
    return tap_done();
}
