/*
 * fuzz_headers.c - the kmdc client's reading of an answer's headers and of
 * an error body by what the headers say (kmdc/kmdc_parse.h).  The input
 * is a header block as libcurl hands it over, one line per callback (split
 * at '\n', any bytes), then an empty line and the body.  The headers read
 * must be NUL-terminated, bounded and free of control characters; the
 * Content-Type is a lower-case media type without parameters; a new status
 * line forgets what came before it; the error body is recognised only with
 * application/json.  Any broken promise aborts.
 */
#include <ctype.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "kmdc_parse.h"

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *p = (const char *)data, *end = p + size, *nl;
    kmdc_hdrs h;
    char error[64], message[256];
    size_t n, i;
    long status = 400;
    int r;

    kmdc_parse_hdrs_init(&h);
    while (p < end) {
        nl = memchr(p, '\n', (size_t)(end - p));
        n = nl != NULL ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        if (n == 1 || (n == 2 && p[0] == '\r')) {
            p += n;
            break;                          /* the body follows */
        }
        kmdc_parse_header_line(&h, p, n);
        if (n >= 5 && memcmp(p, "HTTP/", 5) == 0) {
            check(h.etag[0] == '\0' && h.location[0] == '\0' && h.content_type[0] == '\0' &&
                  h.retry_after == -1);
            status = n > 5 ? 100 + (long)((unsigned char)p[5] % 500) : 400;
        }
        p += n;
    }
    check_text(h.etag, sizeof h.etag);
    check_text(h.location, sizeof h.location);
    check_text(h.content_type, sizeof h.content_type);
    for (i = 0; h.content_type[i] != '\0'; i++)
        check(h.content_type[i] != ';' && h.content_type[i] != ' ' &&
              !isupper((unsigned char)h.content_type[i]));
    check(h.retry_after >= -1 && h.retry_after <= 999999999);
    r = kmdc_parse_error_body(status, h.content_type, p, (size_t)(end - p), error, sizeof error,
                              message, sizeof message);
    if (r)
        check(strcmp(h.content_type, "application/json") == 0);
    return 0;
}
