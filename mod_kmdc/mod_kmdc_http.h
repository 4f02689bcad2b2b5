/*
 * mod_kmdc_http.h - the HTTP side every endpoint shares: JSON answers and
 * errors, reading a small request body, parsing a serial or id from a path
 * segment (the path itself is split by the router, lib/kmdc_route.h).
 *
 * Answer helpers (kmdc_http_json, kmdc_http_error, ...) write the whole
 * response themselves (status, headers, body) and return OK, the value the
 * httpd handler then returns.  Check helpers return OK or an HTTP status that
 * has not been answered yet.
 */
#ifndef MOD_KMDC_HTTP_H
#define MOD_KMDC_HTTP_H

#include <stdint.h>

#include <jansson.h>

#include "httpd.h"

/*
 * Answer with status and the JSON value body (the reference is taken, body
 * may be NULL for no body).  Content-Type application/json, Content-Length,
 * Cache-Control no-store, X-Content-Type-Options nosniff; no body for HEAD.
 * Returns OK.
 */
int kmdc_http_json(request_rec *r, int status, json_t *body);

/*
 * Answer status with {"error":code,"message":...} (the message is printf
 * style; it must never hold a secret, document name or address).  When status
 * is AP_FILTER_ERROR (the input filters answered already), writes nothing and
 * returns AP_FILTER_ERROR; otherwise returns OK.
 */
int kmdc_http_error(request_rec *r, int status, const char *code,
                    const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The error code a plain status maps to ("bad_request", "not_found",
 * "too_large", "unavailable", ...; "error" for an unknown one). */
const char *kmdc_http_error_code(int status);

/* Answer a status returned by a check helper with its standard code and
 * message (kmdc_http_error with kmdc_http_error_code). */
int kmdc_http_error_status(request_rec *r, int status);

/* Answer 405 with an Allow header listing allow (e.g. "GET, HEAD"). */
int kmdc_http_method_not_allowed(request_rec *r, const char *allow);

/* Answer 204 without a body. Returns OK. */
int kmdc_http_no_content(request_rec *r);

/* The largest limit kmdc_http_read_body accepts: bodies above it (the
 * envelope) are streamed, never buffered. */
#define KMDC_HTTP_BODY_MAX (64 * 1024)

/*
 * Read the whole request body (Content-Length or chunked) into *body,
 * NUL-terminated, at most limit bytes.  Reads with ap_get_brigade until EOS,
 * skips metadata buckets, enforces limit as bytes arrive (and at once from a
 * Content-Length that announces more), never trusts r->remaining.  limit is
 * at most KMDC_HTTP_BODY_MAX (else 500, logged).  Returns OK,
 * HTTP_REQUEST_ENTITY_TOO_LARGE (keep-alive is then switched off), or the
 * status ap_map_http_request_error gives for a read error (including
 * AP_FILTER_ERROR).  A request without a body gives "" and 0.
 */
int kmdc_http_read_body(request_rec *r, apr_size_t limit, char **body,
                        apr_size_t *len);


#endif
