/* kmdc_reqparse.c - activation form, wait query, If-None-Match. */
#include "kmdc_reqparse.h"

#include <string.h>

#include "kmdc_util.h"

/* Decode one urlencoded value into out (cap bytes, NUL-terminated); 0 on a
 * broken escape, a NUL byte, or a value that does not fit. */
static int
form_decode(const char *in, size_t len, char *out, size_t cap)
{
    size_t i, n = 0;

    for (i = 0; i < len; i++) {
        int c = (unsigned char)in[i];

        if (c == '+') {
            c = ' ';
        } else if (c == '%') {
            int hi, lo;
            if (len - i < 3)
                return 0;
            hi = kmdc_hex_nibble_anycase(in[i + 1]);
            lo = kmdc_hex_nibble_anycase(in[i + 2]);
            if (hi < 0 || lo < 0)
                return 0;
            c = hi * 16 + lo;
            i += 2;
        }
        if (c == 0 || n + 1 >= cap)
            return 0;
        out[n++] = (char)c;
    }
    out[n] = '\0';
    return 1;
}

int
kmdc_activation_form_parse(const char *body, size_t len,
                           char code[KMDC_FORM_CODE_MAX + 1], uint8_t r[32])
{
    int have_code = 0, have_r = 0, ok = 0;
    size_t pos = 0;

    if (len == 0 || memchr(body, '\0', len) != NULL)
        goto out;
    while (pos < len) {
        const char *field = body + pos;
        const char *amp = memchr(field, '&', len - pos);
        size_t flen = amp != NULL ? (size_t)(amp - field) : len - pos;
        const char *eq = memchr(field, '=', flen);
        size_t nlen, vlen;

        if (eq == NULL)
            goto out;                    /* an empty field or one without "=" */
        nlen = (size_t)(eq - field);
        vlen = flen - nlen - 1;
        if (nlen == 4 && memcmp(field, "code", 4) == 0 && !have_code) {
            if (vlen == 0 || !form_decode(eq + 1, vlen, code, KMDC_FORM_CODE_MAX + 1))
                goto out;
            have_code = 1;
        } else if (nlen == 1 && field[0] == 'r' && !have_r) {
            if (vlen != 64 || kmdc_hex_decode(r, 32, eq + 1, vlen, NULL) != KMDC_OK)
                goto out;
            have_r = 1;
        } else {
            goto out;                    /* another field, or one given twice */
        }
        if (amp == NULL)
            break;
        pos += flen + 1;
        if (pos == len)
            goto out;                    /* a trailing "&" */
    }
    ok = have_code && have_r;
out:
    if (!ok) {
        kmdc_wipe(code, KMDC_FORM_CODE_MAX + 1);
        kmdc_wipe(r, 32);
    }
    return ok;
}

int
kmdc_wait_query_parse(const char *args, int max, int *wait)
{
    const char *p;
    int v = 0;

    *wait = 0;
    if (args == NULL || *args == '\0')
        return 1;
    if (strncmp(args, "wait=", 5) != 0 || args[5] == '\0')
        return 0;
    for (p = args + 5; *p != '\0'; p++) {
        if (*p < '0' || *p > '9' || p - (args + 5) >= 9)
            return 0;
        v = v * 10 + (*p - '0');
    }
    *wait = v > max ? max : v;
    return 1;
}

int
kmdc_if_none_match(const char *header, const char *etag)
{
    size_t tlen = strlen(etag);
    const char *p = header;

    if (p == NULL)
        return 0;
    while (*p != '\0') {
        const char *end;

        while (*p == ' ' || *p == '\t' || *p == ',')
            p++;
        if (*p == '\0')
            break;
        if (*p == '*')
            return 1;
        if (p[0] == 'W' && p[1] == '/')
            p += 2;
        if (*p != '"')
            return 0;                    /* malformed: no match */
        end = strchr(p + 1, '"');
        if (end == NULL)
            return 0;
        if ((size_t)(end + 1 - p) == tlen && memcmp(p, etag, tlen) == 0)
            return 1;
        p = end + 1;
    }
    return 0;
}
