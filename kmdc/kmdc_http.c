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
#include "kmdc_parse.h"
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
    kmdc_hdrs hdrs;               /* the answer's headers */
    int requests_sent;            /* prereq_cb calls in this transfer */
    int resend_blocked;           /* libcurl wanted to resend a signed request */
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

/* The datacenter's passing refusals: nothing was spent, retrying may help. */
static int
passing_status(long status)
{
    return status == 408 || status == 429 || (status >= 500 && status < 600 && status != 507);
}

int
kmdc_http_exit_resp(int rc, const kmdc_http_resp *resp)
{
    long st = resp->status;

    if (rc != KMDC_EXIT_OK)
        return rc;
    if (st == 0)
        return KMDC_EXIT_NETWORK;
    if ((st >= 200 && st < 300) || st == 304)
        return KMDC_EXIT_OK;
    if (resp->dc_error) {
        if (st == 401)
            return KMDC_EXIT_AUTH;
        return passing_status(st) ? KMDC_EXIT_NETWORK : KMDC_EXIT_REFUSED;
    }
    /* not the datacenter's answer: a proxy's outage, or the wrong place */
    if (st == 408 || st == 429 || (st >= 500 && st < 600))
        return KMDC_EXIT_NETWORK;
    return KMDC_EXIT_CONFIG;
}

int
kmdc_http_transient(int rc, const kmdc_http_resp *resp)
{
    if (rc == KMDC_EXIT_NETWORK || (rc == KMDC_EXIT_OK && resp->status == 0))
        return 1;
    if (rc != KMDC_EXIT_OK)
        return 0;
    if (resp->dc_error)
        return passing_status(resp->status) ||
               (resp->status == 400 && strcmp(resp->error, "incomplete") == 0);
    return resp->status == 408 || resp->status == 429 ||
           (resp->status >= 500 && resp->status < 600);
}

int
kmdc_http_final_refusal(int rc, const kmdc_http_resp *resp)
{
    return rc == KMDC_EXIT_OK && resp->dc_error && resp->status >= 400 &&
           !kmdc_http_transient(rc, resp);
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
                             rc == KMDC_EXIT_NETWORK || rc == KMDC_EXIT_OK
                                 ? " (retry later; nothing was lost)" : "");
    code = kmdc_http_exit_resp(rc, resp);
    if (code == KMDC_EXIT_OK)
        return KMDC_EXIT_OK;
    if (!resp->dc_error) {
        if (resp->status >= 300 && resp->status < 400)
            return kmdc_cli_fail(code, "%s: the server answered %ld, a redirect%s%s: redirects "
                                 "are not followed; check the datacenter URL (--url, "
                                 "KMDC_URL or the card's)", what, resp->status,
                                 resp->location[0] ? " to " : "", resp->location);
        return kmdc_cli_fail(code, "%s: the server answered %ld%s%s, which is not a KMDC "
                             "datacenter's answer%s", what, resp->status,
                             resp->content_type[0] ? " with " : "", resp->content_type,
                             code == KMDC_EXIT_NETWORK
                                 ? " (a proxy or server on the way is unavailable; retry later)"
                                 : ": check the datacenter URL (--url, KMDC_URL or the card's)");
    }
    return kmdc_cli_fail(code, "%s: the datacenter answered %ld %s%s%s%s", what,
                         resp->status, resp->error, resp->message[0] ? ": " : "",
                         resp->message,
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

static size_t
header_cb(char *p, size_t size, size_t nmemb, void *arg)
{
    xfer *x = arg;
    size_t n = size * nmemb;

    /* A new status line (after a 100 Continue) starts a new header set. */
    kmdc_parse_header_line(&x->hdrs, p, n);
    return n;
}

/* Called before each request goes out on a connection (libcurl 7.80+).  A
 * second call in one transfer is libcurl about to resend the request after
 * the reused connection died: stop it, so that a signed request is signed
 * again with a fresh nonce. */
static int
prereq_cb(void *arg, char *primary_ip, char *local_ip, int primary_port, int local_port)
{
    xfer *x = arg;

    (void)primary_ip;
    (void)local_ip;
    (void)primary_port;
    (void)local_port;
    if (x->requests_sent++ > 0 && x->rq->ak != NULL) {
        x->resend_blocked = 1;
        return CURL_PREREQFUNC_ABORT;
    }
    return CURL_PREREQFUNC_OK;
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

/* Is this libcurl failure one that retrying cannot cure (configuration)? */
static int
config_failure(CURLcode cc, const char *errbuf)
{
    switch (cc) {
    case CURLE_PEER_FAILED_VERIFICATION:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_ISSUER_ERROR:
    case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
    case CURLE_SSL_CRL_BADFILE:
    case CURLE_UNSUPPORTED_PROTOCOL:
    case CURLE_URL_MALFORMAT:
        return 1;
    case CURLE_SSL_CONNECT_ERROR:
        /* a handshake that failed for what the peer said, not for a reset */
        return strstr(errbuf, "reset") == NULL && strstr(errbuf, "timed out") == NULL &&
               strstr(errbuf, "SSL_ERROR_SYSCALL") == NULL;
    default:
        return 0;
    }
}

/* TLS spoken to a port that answers plain HTTP: OpenSSL reads the HTTP
 * answer as a TLS record ("wrong version number", "packet length too long"). */
static int
tls_mismatch(CURLcode cc, const char *errbuf)
{
    return cc == CURLE_SSL_CONNECT_ERROR &&
           (strstr(errbuf, "wrong version number") != NULL ||
            strstr(errbuf, "packet length too long") != NULL ||
            strstr(errbuf, "unknown protocol") != NULL ||
            strstr(errbuf, "record layer failure") != NULL);
}

static int
attempt(const kmdc_cli *c, const char *base, const kmdc_http_req *rq, kmdc_http_resp *resp,
        int *resend_blocked)
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
    resp->retry_after = -1;
    *resend_blocked = 0;
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
    kmdc_parse_hdrs_init(&x.hdrs);
    kmdc_progress_start(&x.progress, c, rq->progress_label, post && rq->upload_fd >= 0);

    w = snprintf(url, sizeof url, "%s%s", base, rq->path);
    if (w < 0 || (size_t)w >= sizeof url || request_target(url, target, sizeof target) != 0) {
        snprintf(resp->neterr, sizeof resp->neterr,
                 "the datacenter URL is not usable (check --url, KMDC_URL or the card's URL)");
        return KMDC_EXIT_CONFIG;
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
    SETOPT(CURLOPT_PREREQFUNCTION, prereq_cb);
    SETOPT(CURLOPT_PREREQDATA, &x);
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
    snprintf(resp->etag, sizeof resp->etag, "%s", x.hdrs.etag);
    snprintf(resp->location, sizeof resp->location, "%s", x.hdrs.location);
    snprintf(resp->content_type, sizeof resp->content_type, "%s", x.hdrs.content_type);
    resp->retry_after = x.hdrs.retry_after;
    resp->status = cc == CURLE_OK || cc == CURLE_WRITE_ERROR ? current_status(h) : 0;
    if (cc == CURLE_ABORTED_BY_CALLBACK && x.resend_blocked && !kmdc_http_interrupted) {
        *resend_blocked = 1;
        resp->status = 0;
        snprintf(resp->neterr, sizeof resp->neterr,
                 "the connection closed before the datacenter answered");
        rc = KMDC_EXIT_NETWORK;
    } else if (resp->sink_failed) {
        rc = KMDC_EXIT_FAIL;
    } else if (cc != CURLE_OK) {
        resp->status = 0;
        if (cc == CURLE_ABORTED_BY_CALLBACK && kmdc_http_interrupted)
            snprintf(resp->neterr, sizeof resp->neterr, "interrupted");
        else if (tls_mismatch(cc, errbuf))
            snprintf(resp->neterr, sizeof resp->neterr,
                     "TLS mismatch: %.60s does not speak TLS on that port (%.120s); is the "
                     "URL http:// rather than https://, or the port wrong?", base, errbuf);
        else if (cc == CURLE_PEER_FAILED_VERIFICATION || cc == CURLE_SSL_CACERT_BADFILE ||
                 cc == CURLE_SSL_CERTPROBLEM || cc == CURLE_SSL_ISSUER_ERROR)
            snprintf(resp->neterr, sizeof resp->neterr,
                     "the datacenter's TLS certificate did not verify (%.150s); give its CA "
                     "with --cacert FILE or KMDC_CACERT", errbuf[0] ? errbuf : curl_easy_strerror(cc));
        else
            snprintf(resp->neterr, sizeof resp->neterr, "%s",
                     errbuf[0] ? errbuf : curl_easy_strerror(cc));
        kmdc_cli_sanitize(resp->neterr);
        /* A certificate that does not verify, TLS against a plain port or an
         * unusable URL is a setup problem, not an outage. */
        rc = config_failure(cc, errbuf) ? KMDC_EXIT_CONFIG : KMDC_EXIT_NETWORK;
    } else if (resp->status < 200 || resp->status >= 300) {
        resp->dc_error = kmdc_parse_error_body(resp->status, resp->content_type, resp->body,
                                               resp->bodylen, resp->error, sizeof resp->error,
                                               resp->message, sizeof resp->message);
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

#define RESIGN_MAX 3

int
kmdc_http_do(const kmdc_cli *c, const char *base, const kmdc_http_req *rq,
             kmdc_http_resp *resp)
{
    int rc, blocked, tries;

    for (tries = 0;; tries++) {
        rc = attempt(c, base, rq, resp, &blocked);
        if (!blocked || tries >= RESIGN_MAX)
            break;
        /* The reused connection died before any answer: sign again (fresh
         * nonce) on a new connection rather than let libcurl replay it. */
        kmdc_http_resp_free(resp);
    }
    resp->resigned = tries > 0;
    return rc;
}
