/*
 * kmdc_http.c - libcurl for the kmdc client (see kmdc_http.h).
 *
 * One easy handle is kept for the whole run, so a fetch of many deliveries
 * reuses its TLS connection; curl_easy_reset clears the options between
 * requests but keeps the connection cache.
 */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>
#include <jansson.h>

#include "kmdc_auth.h"
#include "kmdc_http.h"
#include "kmdc_progress.h"
#include "kmdc_util.h"

#define CONNECT_TIMEOUT 10L      /* seconds */
#define IDLE_TIMEOUT 120L        /* seconds without a byte, by default */
#define URL_MAX 4096

volatile sig_atomic_t kmdc_http_interrupted;

static CURL *g_curl;
static int warned_insecure;

/* What the callbacks share during one transfer. */
typedef struct xfer {
    const kmdc_http_req *rq;
    kmdc_http_resp *resp;
    CURL *h;
    int too_big;                  /* collected body over KMDC_HTTP_MAX_BODY */
    kmdc_progress progress;
} xfer;

int
kmdc_http_global_init(void)
{
    return curl_global_init(CURL_GLOBAL_DEFAULT) == CURLE_OK ? 0 : -1;
}

void
kmdc_http_global_cleanup(void)
{
    if (g_curl != NULL)
        curl_easy_cleanup(g_curl);
    g_curl = NULL;
    curl_global_cleanup();
}

void
kmdc_http_resp_free(kmdc_http_resp *resp)
{
    if (resp == NULL)
        return;
    free(resp->body);
    resp->body = NULL;
    resp->bodylen = 0;
}

int
kmdc_http_exit_for(long status)
{
    if ((status >= 200 && status < 300) || status == 304)
        return KMDC_EXIT_OK;
    if (status == 401)
        return KMDC_EXIT_AUTH;
    if (status == 408 || status == 429 || (status >= 500 && status < 600))
        return KMDC_EXIT_NETWORK;
    if (status >= 400 && status < 500)
        return KMDC_EXIT_REFUSED;
    return KMDC_EXIT_FAIL;
}

int
kmdc_http_transient(int rc, const kmdc_http_resp *resp)
{
    if (rc == KMDC_EXIT_NETWORK || resp->status == 0)
        return 1;
    if (resp->status == 408 || resp->status == 429 || resp->status >= 500)
        return 1;
    return resp->status == 400 && strcmp(resp->error, "incomplete") == 0;
}

int
kmdc_http_report(const char *what, int rc, const kmdc_http_resp *resp)
{
    int code;

    if (rc == KMDC_EXIT_FAIL && resp->sink_failed)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: %s", what,
                             resp->sink_err.msg[0] ? resp->sink_err.msg
                                                   : kmdc_status_name(resp->sink_err.code));
    if (rc != KMDC_EXIT_OK || resp->status == 0)
        return kmdc_cli_fail(rc == KMDC_EXIT_OK ? KMDC_EXIT_NETWORK : rc,
                             "%s: %s%s", what,
                             resp->neterr[0] ? resp->neterr : "no answer from the datacenter",
                             rc == KMDC_EXIT_NETWORK ? " (retry later; nothing was lost)" : "");
    code = kmdc_http_exit_for(resp->status);
    if (code == KMDC_EXIT_OK)
        return KMDC_EXIT_OK;
    return kmdc_cli_fail(code, "%s: the datacenter answered %ld%s%s%s%s%s", what,
                         resp->status, resp->error[0] ? " " : "", resp->error,
                         resp->message[0] ? ": " : "", resp->message,
                         code == KMDC_EXIT_NETWORK ? " (retry later; nothing was lost)"
                         : code == KMDC_EXIT_AUTH ? " (is the card activated and the clock right?)"
                                                  : "");
}

/* ---- callbacks ------------------------------------------------------------------- */

static long
current_status(CURL *h)
{
    long status = 0;

    if (curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &status) != CURLE_OK)
        return 0;
    return status;
}

static int
collect(xfer *x, const char *p, size_t n)
{
    kmdc_http_resp *r = x->resp;
    char *nb;

    if (x->too_big || n > KMDC_HTTP_MAX_BODY - r->bodylen) {
        x->too_big = 1;          /* keep what we have; the answer is not JSON anyway */
        return 0;
    }
    if ((nb = realloc(r->body, r->bodylen + n + 1)) == NULL)
        return -1;
    memcpy(nb + r->bodylen, p, n);
    r->bodylen += n;
    nb[r->bodylen] = '\0';
    r->body = nb;
    return 0;
}

static size_t
write_cb(char *p, size_t size, size_t nmemb, void *arg)
{
    xfer *x = arg;
    size_t n = size * nmemb;
    long status = current_status(x->h);

    if (x->rq->sink != NULL && status >= 200 && status < 300) {
        if (x->rq->sink(x->rq->sink_arg, (const uint8_t *)p, n, &x->resp->sink_err) != KMDC_OK) {
            x->resp->sink_failed = 1;
            return 0;            /* aborts the transfer: CURLE_WRITE_ERROR */
        }
        return n;
    }
    if (collect(x, p, n) != 0)
        return 0;
    return n;
}

static void
copy_header_value(char *dst, size_t cap, const char *v, size_t len)
{
    while (len > 0 && (*v == ' ' || *v == '\t')) {
        v++;
        len--;
    }
    while (len > 0 && (v[len - 1] == '\r' || v[len - 1] == '\n' || v[len - 1] == ' '))
        len--;
    if (len >= cap)
        len = cap - 1;
    memcpy(dst, v, len);
    dst[len] = '\0';
    kmdc_cli_sanitize(dst);
}

static size_t
header_cb(char *p, size_t size, size_t nmemb, void *arg)
{
    xfer *x = arg;
    size_t n = size * nmemb;

    /* A new status line (after a 100 Continue) starts a new header set. */
    if (n >= 5 && strncmp(p, "HTTP/", 5) == 0) {
        x->resp->etag[0] = '\0';
        x->resp->location[0] = '\0';
    } else if (n > 5 && strncasecmp(p, "ETag:", 5) == 0) {
        copy_header_value(x->resp->etag, sizeof x->resp->etag, p + 5, n - 5);
    } else if (n > 9 && strncasecmp(p, "Location:", 9) == 0) {
        copy_header_value(x->resp->location, sizeof x->resp->location, p + 9, n - 9);
    }
    return n;
}

static size_t
read_cb(char *buf, size_t size, size_t nmemb, void *arg)
{
    xfer *x = arg;
    ssize_t r;

    for (;;) {
        r = read(x->rq->upload_fd, buf, size * nmemb);
        if (r >= 0)
            return (size_t)r;
        if (errno != EINTR)
            return CURL_READFUNC_ABORT;
    }
}

static int
seek_cb(void *arg, curl_off_t off, int origin)
{
    xfer *x = arg;

    if (origin != SEEK_SET)
        return CURL_SEEKFUNC_CANTSEEK;
    return lseek(x->rq->upload_fd, (off_t)off, SEEK_SET) < 0 ? CURL_SEEKFUNC_FAIL
                                                            : CURL_SEEKFUNC_OK;
}

static int
xferinfo_cb(void *arg, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
            curl_off_t ulnow)
{
    xfer *x = arg;

    if (kmdc_http_interrupted)
        return 1;                /* aborts: CURLE_ABORTED_BY_CALLBACK */
    if (x->progress.upload)
        kmdc_progress_update(&x->progress, ulnow > 0 ? (uint64_t)ulnow : 0,
                             ultotal > 0 ? (uint64_t)ultotal : 0);
    else if (current_status(x->h) / 100 == 2)   /* the document, not an error body */
        kmdc_progress_update(&x->progress, dlnow > 0 ? (uint64_t)dlnow : 0,
                             dltotal > 0 ? (uint64_t)dltotal : 0);
    return 0;
}

/* ---- the request ----------------------------------------------------------------- */

#define SETOPT(opt, val)                                                          \
    do {                                                                          \
        if ((cc = curl_easy_setopt(h, opt, val)) != CURLE_OK) {                   \
            snprintf(resp->neterr, sizeof resp->neterr, "libcurl refused %s: %s", \
                     #opt, curl_easy_strerror(cc));                               \
            rc = KMDC_EXIT_FAIL;                                                  \
            goto out;                                                             \
        }                                                                         \
    } while (0)

/* The request-target curl will put on the request line: path and query. */
static int
request_target(const char *url, char *out, size_t cap)
{
    CURLU *u = curl_url();
    char *path = NULL, *query = NULL;
    int rc = -1, w;

    if (u == NULL)
        return -1;
    if (curl_url_set(u, CURLUPART_URL, url, 0) != CURLUE_OK ||
        curl_url_get(u, CURLUPART_PATH, &path, 0) != CURLUE_OK)
        goto out;
    if (curl_url_get(u, CURLUPART_QUERY, &query, 0) != CURLUE_OK)
        query = NULL;
    w = snprintf(out, cap, "%s%s%s", path, query ? "?" : "", query ? query : "");
    if (w > 0 && (size_t)w < cap)
        rc = 0;
out:
    curl_free(path);
    curl_free(query);
    curl_url_cleanup(u);
    return rc;
}

static void
parse_error_body(kmdc_http_resp *resp)
{
    json_t *j, *e, *m;
    json_error_t je;

    if (resp->body == NULL || resp->bodylen == 0)
        return;
    j = json_loadb(resp->body, resp->bodylen, 0, &je);
    if (j == NULL)
        return;
    e = json_object_get(j, "error");
    m = json_object_get(j, "message");
    if (json_is_string(e)) {
        snprintf(resp->error, sizeof resp->error, "%s", json_string_value(e));
        kmdc_cli_sanitize(resp->error);
    }
    if (json_is_string(m)) {
        snprintf(resp->message, sizeof resp->message, "%s", json_string_value(m));
        kmdc_cli_sanitize(resp->message);
    }
    json_decref(j);
}

int
kmdc_http_do(const kmdc_cli *c, const char *base, const kmdc_http_req *rq,
             kmdc_http_resp *resp)
{
    char url[URL_MAX], target[URL_MAX], *ctype = NULL;
    char hdr_auth[KMDC_AUTH_HDR_BUFSZ + 32], hdr_inm[sizeof resp->etag + 32];
    char errbuf[CURL_ERROR_SIZE];
    struct curl_slist *hdrs = NULL, *nh;
    kmdc_err e;
    xfer x;
    CURL *h;
    CURLcode cc;
    int rc = KMDC_EXIT_OK, w;
    int post = strcmp(rq->method, "POST") == 0;

    memset(resp, 0, sizeof *resp);
    memset(&x, 0, sizeof x);
    kmdc_err_clear(&e);
    errbuf[0] = '\0';
    if (g_curl == NULL && (g_curl = curl_easy_init()) == NULL) {
        snprintf(resp->neterr, sizeof resp->neterr, "cannot start libcurl");
        return KMDC_EXIT_FAIL;
    }
    h = g_curl;
    curl_easy_reset(h);
    if (c->insecure && !warned_insecure) {
        warned_insecure = 1;
        fputs("kmdc: warning: --insecure: the datacenter's TLS certificate is not verified\n",
              stderr);
    }
    x.rq = rq;
    x.resp = resp;
    x.h = h;
    kmdc_progress_start(&x.progress, c, rq->progress_label, post && rq->upload_fd >= 0);

    w = snprintf(url, sizeof url, "%s%s", base, rq->path);
    if (w < 0 || (size_t)w >= sizeof url || request_target(url, target, sizeof target) != 0) {
        snprintf(resp->neterr, sizeof resp->neterr,
                 "the datacenter URL is not usable (check the card's URL or --url)");
        return KMDC_EXIT_FAIL;
    }
    if (rq->ak != NULL) {
        static const char prefix[] = "Authorization: ";
        const void *body = rq->body;
        size_t blen = rq->body != NULL ? rq->bodylen : 0;

        memcpy(hdr_auth, prefix, sizeof prefix - 1);
        if (kmdc_auth_sign(hdr_auth + sizeof prefix - 1, sizeof hdr_auth - (sizeof prefix - 1),
                           rq->serial, rq->ak, rq->method, target, body, blen,
                           (int64_t)time(NULL), &e) != KMDC_OK) {
            snprintf(resp->neterr, sizeof resp->neterr, "cannot sign the request: %.200s", e.msg);
            return KMDC_EXIT_FAIL;
        }
        if ((nh = curl_slist_append(hdrs, hdr_auth)) == NULL)
            goto oom;
        hdrs = nh;
    }
    if (rq->content_type != NULL) {
        size_t l = strlen(rq->content_type) + sizeof "Content-Type: ";
        if ((ctype = malloc(l)) == NULL)
            goto oom;
        snprintf(ctype, l, "Content-Type: %s", rq->content_type);
        if ((nh = curl_slist_append(hdrs, ctype)) == NULL)
            goto oom;
        hdrs = nh;
    }
    if (rq->if_none_match != NULL && rq->if_none_match[0] != '\0') {
        snprintf(hdr_inm, sizeof hdr_inm, "If-None-Match: %s", rq->if_none_match);
        if ((nh = curl_slist_append(hdrs, hdr_inm)) == NULL)
            goto oom;
        hdrs = nh;
    }
    if (post && (nh = curl_slist_append(hdrs, "Expect:")) != NULL)
        hdrs = nh;   /* no 100-continue round trip: the body follows at once */

    SETOPT(CURLOPT_URL, url);
    SETOPT(CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(CURLOPT_NOSIGNAL, 1L);
    SETOPT(CURLOPT_ERRORBUFFER, errbuf);
    SETOPT(CURLOPT_CONNECTTIMEOUT, CONNECT_TIMEOUT);
    SETOPT(CURLOPT_LOW_SPEED_LIMIT, 1L);
    SETOPT(CURLOPT_LOW_SPEED_TIME, rq->idle_timeout > 0 ? rq->idle_timeout : IDLE_TIMEOUT);
    SETOPT(CURLOPT_USERAGENT, "kmdc/" PACKAGE_VERSION);
    SETOPT(CURLOPT_SSL_VERIFYPEER, c->insecure ? 0L : 1L);
    SETOPT(CURLOPT_SSL_VERIFYHOST, c->insecure ? 0L : 2L);
    if (c->cacert != NULL)
        SETOPT(CURLOPT_CAINFO, c->cacert);
    SETOPT(CURLOPT_HTTPHEADER, hdrs);
    SETOPT(CURLOPT_WRITEFUNCTION, write_cb);
    SETOPT(CURLOPT_WRITEDATA, &x);
    SETOPT(CURLOPT_HEADERFUNCTION, header_cb);
    SETOPT(CURLOPT_HEADERDATA, &x);
    SETOPT(CURLOPT_NOPROGRESS, 0L);
    SETOPT(CURLOPT_XFERINFOFUNCTION, xferinfo_cb);
    SETOPT(CURLOPT_XFERINFODATA, &x);
    if (post) {
        SETOPT(CURLOPT_POST, 1L);
        if (rq->upload_fd >= 0) {
            SETOPT(CURLOPT_READFUNCTION, read_cb);
            SETOPT(CURLOPT_READDATA, &x);
            SETOPT(CURLOPT_SEEKFUNCTION, seek_cb);
            SETOPT(CURLOPT_SEEKDATA, &x);
            SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)rq->upload_len);
        } else {
            SETOPT(CURLOPT_POSTFIELDS, rq->body != NULL ? (const char *)rq->body : "");
            SETOPT(CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)(rq->body != NULL ? rq->bodylen : 0));
        }
    } else if (strcmp(rq->method, "GET") != 0) {
        SETOPT(CURLOPT_CUSTOMREQUEST, rq->method);
    }

    cc = curl_easy_perform(h);
    kmdc_progress_finish(&x.progress);
    resp->status = cc == CURLE_OK || cc == CURLE_WRITE_ERROR ? current_status(h) : 0;
    if (resp->sink_failed) {
        rc = KMDC_EXIT_FAIL;
    } else if (cc != CURLE_OK) {
        resp->status = 0;
        if (cc == CURLE_ABORTED_BY_CALLBACK && kmdc_http_interrupted)
            snprintf(resp->neterr, sizeof resp->neterr, "interrupted");
        else if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE)
            snprintf(resp->neterr, sizeof resp->neterr,
                     "the datacenter's TLS certificate did not verify (%.150s); give its CA "
                     "with --cacert FILE", errbuf[0] ? errbuf : curl_easy_strerror(cc));
        else
            snprintf(resp->neterr, sizeof resp->neterr, "%s",
                     errbuf[0] ? errbuf : curl_easy_strerror(cc));
        kmdc_cli_sanitize(resp->neterr);
        /* A certificate that does not verify is a setup problem, not an outage. */
        rc = cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE
                 ? KMDC_EXIT_FAIL : KMDC_EXIT_NETWORK;
    } else if (resp->status < 200 || resp->status >= 300) {
        parse_error_body(resp);
    }
    goto out;
oom:
    snprintf(resp->neterr, sizeof resp->neterr, "out of memory");
    rc = KMDC_EXIT_FAIL;
out:
    kmdc_wipe(hdr_auth, sizeof hdr_auth);
    curl_slist_free_all(hdrs);
    free(ctype);
    /* Drop our pointers from the handle before the stack they point to goes. */
    curl_easy_reset(h);
    return rc;
}
