/*
 * fuzz_auth.c - the Authorization header parser and the access code
 * normaliser, both fed outside input.  Checks beyond "no crash": a parsed
 * header formats back to exactly the input (the grammar is canonical), and a
 * normalised access code is 10 symbols of the Crockford alphabet.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_auth.h"
#include "kmdc_wrap.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static const uint8_t ak[32] = { 1, 2, 3 };
    static const uint8_t body_sha[32] = { 4, 5, 6 };
    const char *s = (const char *)data;
    char out[KMDC_AUTH_HDR_BUFSZ];
    char canon[KMDC_ACCESS_CODE_LEN + 1];
    kmdc_auth_hdr h;
    kmdc_err e;
    size_t i;

    if (kmdc_auth_parse(s, size, &h, &e) == KMDC_OK) {
        if (kmdc_auth_format(out, sizeof(out), &h, &e) != KMDC_OK ||
            strlen(out) != size || memcmp(out, data, size) != 0)
            abort();
        if (kmdc_auth_verify(&h, ak, "GET", "/kmdc/card/0123456789abcdef", body_sha,
                             h.ts, KMDC_AUTH_MAX_SKEW, &e) == KMDC_OK)
            abort();    /* a forged signature verified */
    }
    if (kmdc_access_code_normalize(s, size, canon, &e) == KMDC_OK) {
        if (strlen(canon) != KMDC_ACCESS_CODE_LEN)
            abort();
        for (i = 0; i < KMDC_ACCESS_CODE_LEN; i++)
            if (strchr("0123456789ABCDEFGHJKMNPQRSTVWXYZ", canon[i]) == NULL)
                abort();
    }
    return 0;
}
