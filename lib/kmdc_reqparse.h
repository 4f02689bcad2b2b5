/*
 * kmdc_reqparse.h - the small request parsers of the datacenter that take
 * outside input and are not protocol objects of their own: the activation
 * form, the `wait` query of a mailbox listing and If-None-Match.  They live
 * here, httpd-free, so that a fuzz target (fuzz/fuzz_reqparse.c) drives the
 * same code the module runs.
 */
#ifndef KMDC_REQPARSE_H
#define KMDC_REQPARSE_H

#include <stddef.h>
#include <stdint.h>

#define KMDC_FORM_CODE_MAX 64       /* bytes of a typed access code */

/*
 * Parse the form body of POST /activate: exactly the fields `code` and `r`,
 * once each, in either order, application/x-www-form-urlencoded ("+" and
 * %XX decoded in code; r is 64 lowercase hex digits).  Empty fields, a
 * trailing "&", NUL bytes or any other field are refused.  Returns 1 with
 * code (NUL-terminated) and r set, else 0 with both wiped.
 */
int kmdc_activation_form_parse(const char *body, size_t len,
                               char code[KMDC_FORM_CODE_MAX + 1], uint8_t r[32]);

/*
 * The query string of a mailbox listing: NULL or empty (wait 0), or
 * `wait=S` with S 1..9 decimal digits, clamped to max.  Returns 1 with *wait
 * set, 0 for anything else.
 */
int kmdc_wait_query_parse(const char *args, int max, int *wait);

/*
 * 1 when the If-None-Match header value lists etag (a quoted opaque tag such
 * as "\"abc\""), or is "*"; "W/" prefixes are ignored (the weak comparison
 * RFC 9110 asks for).  A malformed list matches nothing.
 */
int kmdc_if_none_match(const char *header, const char *etag);

#endif
