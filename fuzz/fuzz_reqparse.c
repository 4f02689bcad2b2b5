/* fuzz_reqparse.c - the activation form, the wait query and If-None-Match. */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_reqparse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char code[KMDC_FORM_CODE_MAX + 1];
    uint8_t r[32];
    char *s;
    int wait;

    (void)kmdc_activation_form_parse((const char *)data, size, code, r);
    if ((s = malloc(size + 1)) == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    if (kmdc_wait_query_parse(s, 60, &wait) && (wait < 0 || wait > 60))
        abort();
    (void)kmdc_if_none_match(s, "\"0123456789abcdef0123456789abcdef\"");
    (void)kmdc_if_none_match("\"x\", W/\"y\"", s[0] == '"' ? s : "\"y\"");
    free(s);
    return 0;
}
