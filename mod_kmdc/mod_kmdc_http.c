/*
 * mod_kmdc_http.c - JSON answers, bounded body reading, the serial parser of
 * path segments.
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

#include "apr_buckets.h"
#include "apr_strings.h"
#include "httpd.h"
#include "http_log.h"
#include "http_protocol.h"
#include "util_filter.h"

#include "kmdc_util.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"

int kmdc_http_json(request_rec *r, int status, json_t *body)
{
    static const char fallback[] =
        "{\"error\":\"internal\",\"message\":\"the answer could not be encoded\"}";
    char *text = NULL;
    const char *out = NULL;
    apr_size_t len = 0;

    if (body != NULL) {
        text = json_dumps(body, JSON_COMPACT | JSON_ENSURE_ASCII);
        json_decref(body);
        if (text == NULL) {
            ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                          "kmdc: could not encode a JSON answer");
            status = HTTP_INTERNAL_SERVER_ERROR;
            out = fallback;
        }
        else {
            out = text;
        }
        len = strlen(out);
    }
    r->status = status;
    apr_table_setn(r->headers_out, "Cache-Control", "no-store");
    apr_table_setn(r->headers_out, "X-Content-Type-Options", "nosniff");
    if (out != NULL) {
        ap_set_content_type(r, "application/json");
        ap_set_content_length(r, (apr_off_t)len);
        if (!r->header_only && ap_rwrite(out, (int)len, r) < 0) {
            ap_log_rerror(APLOG_MARK, APLOG_DEBUG, 0, r,
                          "kmdc: client went away while answering");
        }
    }
    else if (status != HTTP_NO_CONTENT && status != HTTP_NOT_MODIFIED) {
        ap_set_content_length(r, 0);
    }
    free(text);
    return OK;
}

const char *kmdc_http_error_code(int status)
{
    switch (status) {
    case HTTP_BAD_REQUEST: return "bad_request";
    case HTTP_UNAUTHORIZED: return "unauthorized";
    case HTTP_FORBIDDEN: return "rejected";
    case HTTP_NOT_FOUND: return "not_found";
    case HTTP_METHOD_NOT_ALLOWED: return "method_not_allowed";
    case HTTP_REQUEST_TIME_OUT: return "timeout";
    case HTTP_LENGTH_REQUIRED: return "length_required";
    case HTTP_REQUEST_ENTITY_TOO_LARGE: return "too_large";
    case HTTP_UNSUPPORTED_MEDIA_TYPE: return "unsupported_media_type";
    case HTTP_TOO_MANY_REQUESTS: return "too_many";
    case HTTP_INTERNAL_SERVER_ERROR: return "internal";
    case HTTP_NOT_IMPLEMENTED: return "not_implemented";
    case HTTP_SERVICE_UNAVAILABLE: return "unavailable";
    case HTTP_INSUFFICIENT_STORAGE: return "quota";
    default: return "error";
    }
}

static const char *status_message(int status)
{
    switch (status) {
    case HTTP_BAD_REQUEST: return "the request is malformed";
    case HTTP_UNAUTHORIZED: return "the request is not signed correctly";
    case HTTP_FORBIDDEN: return "the request was rejected";
    case HTTP_NOT_FOUND: return "no such resource";
    case HTTP_METHOD_NOT_ALLOWED: return "this method is not allowed here";
    case HTTP_REQUEST_TIME_OUT: return "the request body did not arrive in time";
    case HTTP_LENGTH_REQUIRED: return "a request body length is required";
    case HTTP_REQUEST_ENTITY_TOO_LARGE: return "the request body is too large";
    case HTTP_INTERNAL_SERVER_ERROR: return "internal error; see the server log";
    case HTTP_NOT_IMPLEMENTED: return "not implemented";
    case HTTP_SERVICE_UNAVAILABLE: return "the service is unavailable; try again later";
    default: return "the request failed";
    }
}

int kmdc_http_error(request_rec *r, int status, const char *code,
                    const char *fmt, ...)
{
    json_t *obj = NULL;
    const char *msg = NULL;
    va_list ap;

    if (status == AP_FILTER_ERROR) {
        return AP_FILTER_ERROR;
    }
    va_start(ap, fmt);
    msg = apr_pvsprintf(r->pool, fmt, ap);
    va_end(ap);
    obj = json_pack("{s:s, s:s}", "error", code, "message", msg);
    if (obj == NULL) {
        /* only on allocation failure or a message that is not UTF-8 */
        obj = json_pack("{s:s, s:s}", "error", code, "message",
                        status_message(status));
    }
    return kmdc_http_json(r, status, obj);
}

int kmdc_http_error_status(request_rec *r, int status)
{
    return kmdc_http_error(r, status, kmdc_http_error_code(status), "%s",
                           status_message(status));
}

int kmdc_http_method_not_allowed(request_rec *r, const char *allow)
{
    apr_table_setn(r->headers_out, "Allow", allow);
    return kmdc_http_error(r, HTTP_METHOD_NOT_ALLOWED, "method_not_allowed",
                           "use %s here", allow);
}

int kmdc_http_no_content(request_rec *r)
{
    return kmdc_http_json(r, HTTP_NO_CONTENT, NULL);
}

int kmdc_http_read_body(request_rec *r, apr_size_t limit, char **body,
                        apr_size_t *len)
{
    apr_bucket_brigade *bb = NULL;
    const char *cl = apr_table_get(r->headers_in, "Content-Length");
    char *buf = NULL;
    apr_size_t have = 0;
    int seen_eos = 0;
    int status = OK;

    *body = NULL;
    *len = 0;
    if (limit > KMDC_HTTP_BODY_MAX) {
        ap_log_rerror(APLOG_MARK, APLOG_ERR, 0, r,
                      "kmdc: a body of up to %" APR_SIZE_T_FMT " bytes was to be "
                      "buffered; stream it instead", limit);
        status = HTTP_INTERNAL_SERVER_ERROR;
        goto out;
    }
    if (cl != NULL) {
        apr_off_t announced = 0;
        char *end = NULL;

        /* HTTP_IN has validated the header; refuse early what cannot fit */
        if (apr_strtoff(&announced, cl, &end, 10) == APR_SUCCESS
            && announced > 0 && (apr_uint64_t)announced > (apr_uint64_t)limit) {
            status = HTTP_REQUEST_ENTITY_TOO_LARGE;
            goto out;
        }
    }
    buf = apr_palloc(r->pool, limit + 1);
    bb = apr_brigade_create(r->pool, r->connection->bucket_alloc);
    do {
        apr_bucket *b;
        apr_status_t rv = ap_get_brigade(r->input_filters, bb, AP_MODE_READBYTES,
                                         APR_BLOCK_READ, HUGE_STRING_LEN);

        if (rv != APR_SUCCESS) {
            status = ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
            goto out;
        }
        for (b = APR_BRIGADE_FIRST(bb); b != APR_BRIGADE_SENTINEL(bb);
             b = APR_BUCKET_NEXT(b)) {
            const char *data = NULL;
            apr_size_t n = 0;

            if (APR_BUCKET_IS_EOS(b)) {
                seen_eos = 1;
                break;
            }
            if (APR_BUCKET_IS_METADATA(b)) {
                continue;
            }
            rv = apr_bucket_read(b, &data, &n, APR_BLOCK_READ);
            if (rv != APR_SUCCESS) {
                status = ap_map_http_request_error(rv, HTTP_BAD_REQUEST);
                goto out;
            }
            if (n > limit - have) {
                status = HTTP_REQUEST_ENTITY_TOO_LARGE;
                goto out;
            }
            memcpy(buf + have, data, n);
            have += n;
        }
        apr_brigade_cleanup(bb);
    } while (!seen_eos);
    buf[have] = '\0';
    *body = buf;
    *len = have;

out:
    if (bb != NULL) {
        apr_brigade_destroy(bb);
    }
    if (status == HTTP_REQUEST_ENTITY_TOO_LARGE) {
        /* the rest of the body is not read: do not parse it as a request */
        r->connection->keepalive = AP_CONN_CLOSE;
    }
    if (status != OK && buf != NULL) {
        kmdc_wipe(buf, have);
    }
    return status;
}
