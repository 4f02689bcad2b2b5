/*
 * kmdc_http.h - the kmdc client's HTTP layer over libcurl: TLS verified by
 * default (--cacert, --insecure only when asked), no redirects, a 10 s
 * connect timeout, the Authorization header of docs/PROTOCOL.md section 5, bodies from
 * memory or a file, streaming answers, JSON error answers and a progress bar.
 */
#ifndef KMDC_HTTP_H
#define KMDC_HTTP_H

#include <signal.h>
#include <stddef.h>
#include <stdint.h>

#include "kmdc_cli.h"
#include "kmdc_err.h"

#define KMDC_HTTP_MAX_BODY (1u << 20)   /* collected answer bodies, bytes */

/* One request, below the datacenter location. */
typedef struct kmdc_http_req {
    const char *method;             /* "GET", "POST", "DELETE" */
    const char *path;               /* "/mailbox/<serial>?wait=60": starts with '/' */
    const uint8_t *ak;              /* sign with this key; NULL: no Authorization */
    uint64_t serial;                /* the signer's serial */
    const char *content_type;       /* of the body, or NULL */
    const void *body;               /* a small body in memory (signed requests) */
    size_t bodylen;
    int upload_fd;                  /* >= 0: the body is upload_len bytes of this file */
    uint64_t upload_len;
    const char *if_none_match;      /* an ETag, or NULL */
    const char *progress_label;     /* non-NULL: a progress line (kmdc_progress.h) */
    long idle_timeout;              /* seconds without a byte before giving up; 0: 120 */
    /* Where a 2xx answer's body goes; NULL: collected into resp.body.  An
     * error from the sink aborts the transfer and is kept in resp.sink_err. */
    kmdc_status (*sink)(void *arg, const uint8_t *p, size_t len, kmdc_err *err);
    void *sink_arg;
} kmdc_http_req;

/* The answer. */
typedef struct kmdc_http_resp {
    long status;                    /* HTTP status, 0 when none arrived */
    char *body;                     /* collected body, NUL-terminated (or NULL) */
    size_t bodylen;
    char etag[160];                 /* the ETag header, without quotes removed */
    char location[512];             /* the Location header */
    char content_type[128];         /* its media type, lower case, no parameters */
    long retry_after;               /* Retry-After seconds, -1 when none */
    int dc_error;                   /* the body is the datacenter's own JSON error
                                     * (kmdc_parse_error_body): error/message below */
    char error[64];                 /* "error" of the datacenter's JSON error answer */
    char message[256];              /* "message" of it, control characters removed */
    int resigned;                   /* a signed request was signed again after its
                                     * connection died before any answer */
    int sink_failed;                /* the sink refused: see sink_err */
    kmdc_err sink_err;
    char neterr[512];               /* why no answer arrived (status 0) */
} kmdc_http_resp;

/* Set by SIGINT/SIGTERM handlers: transfers in flight are aborted. */
extern volatile sig_atomic_t kmdc_http_interrupted;

/* Start libcurl (once, at program start).  0 or -1. */
int kmdc_http_global_init(void);

/* Release the connection cache and libcurl. */
void kmdc_http_global_cleanup(void);

/*
 * Perform rq against base (the datacenter URL, e.g. https://host/kmdc).  The
 * request-target that is signed is the base URL's path followed by rq->path,
 * exactly what goes on the request line.  Returns KMDC_EXIT_OK when an answer
 * arrived (whatever its status: see resp->status), KMDC_EXIT_NETWORK when
 * none did (resp->neterr says why), KMDC_EXIT_CONFIG when none can (the TLS
 * certificate did not verify, TLS spoken to a plain HTTP port, an unusable
 * URL), KMDC_EXIT_FAIL when the sink refused or the request could not be
 * built; the caller reports.  resp is filled in every case; release it with
 * kmdc_http_resp_free.
 *
 * A signed request is never resent by libcurl: when a reused connection
 * turns out dead before any answer, libcurl would resend the same request
 * (same nonce, which the datacenter refuses as a replay); the transfer is
 * stopped before that and the request signed again with a fresh nonce, on a
 * new connection (at most three times).
 */
int kmdc_http_do(const kmdc_cli *c, const char *base, const kmdc_http_req *rq,
                 kmdc_http_resp *resp);

/* Free the collected body of resp (accepts a zeroed resp). */
void kmdc_http_resp_free(kmdc_http_resp *resp);

/*
 * The exit code of an exchange (rc from kmdc_http_do): no answer -> rc;
 * 2xx and 304 -> 0; the datacenter's own JSON error: 401 -> 5, 408, 429 and
 * 5xx but 507 -> 6, any other (507 included) -> 4; an answer that is not the
 * datacenter's (an HTML page, a redirect, a proxy's error): 408, 429, 5xx ->
 * 6 (an outage on the way), anything else -> 8 (the URL is wrong).
 */
int kmdc_http_exit_resp(int rc, const kmdc_http_resp *resp);

/*
 * Report a failed exchange on stderr ("kmdc: WHAT: the datacenter refused:
 * 403 rejected: ...", or the network error) and return its exit code
 * (kmdc_http_exit_for, or 6 when no answer arrived).  rc is what
 * kmdc_http_do returned.
 */
int kmdc_http_report(const char *what, int rc, const kmdc_http_resp *resp);

/* 1 when retrying may help: no answer (a network failure), 408, 429, a 5xx
 * other than the datacenter's 507, or its 400 "incomplete". */
int kmdc_http_transient(int rc, const kmdc_http_resp *resp);

/* 1 when the answer is the datacenter's final word on an upload: its JSON
 * error for a refusal that is not passing (kmdc_http_transient).  A 2xx is
 * final too, but only with the documented body (the caller checks it). */
int kmdc_http_final_refusal(int rc, const kmdc_http_resp *resp);

#endif
