/*
 * loadgen - the load generator of bench/run: drives a mod_kmdc datacenter
 * (or a static file) with libcurl's multi interface and prints one line of
 * figures.  It seals real envelopes with lib/ and signs real requests with
 * kmdc_auth, so the module does all of its work.
 *
 *   loadgen MODE --url BASE [options]
 *
 * Modes:
 *   relay    POST /send of a --size byte document to --to ADDR[,ADDR...],
 *            one stream per card (each card's up chain is one sequence, so
 *            concurrent streams need their own cards); the id and the
 *            number of deliveries of every 201 go to --ids FILE
 *   upload   one POST /send of --size bytes, sealed while it streams
 *   poll     signed GET /mailbox/{serial} with If-None-Match: its ETag,
 *            expecting 304 (an empty mailbox)
 *   drain    per card: list the mailbox, fetch and acknowledge every
 *            delivery, until the mailbox is empty or the time is up; with
 *            --relist yes, list again before each delivery (list, fetch
 *            the oldest, acknowledge it, list ...)
 *   ack      as drain without the fetch (clears big deliveries)
 *   get      GET BASE itself (a static file: the HTTP floor)
 *   resync   only the resynchronisation below, then the cards saved (so
 *            that a measured run that follows needs none: --resync no)
 *
 * Options:
 *   --url BASE          e.g. http://127.0.0.1:8080/kmdc (get: the file's URL)
 *   --cards FILE        card file paths, one per line (relay, upload, poll,
 *                       drain, ack)
 *   --to ADDRS          recipients, comma-separated (relay, upload); "self":
 *                       each stream's card sends to its own address
 *   --spread yes        relay: card i sends to the (i mod n)-th of the n --to
 *                       addresses only (one recipient per message; with as
 *                       many addresses as streams, no mailbox is shared)
 *   --size N            document bytes (relay 1024, upload 64 MiB)
 *   --concurrency N     transfers in flight (default: number of cards, or 16)
 *   --seconds S         stop starting new requests after S seconds (10)
 *   --count N           stop after N operations instead (relay, poll, get)
 *   --ids FILE          relay, upload: append "message-id deliveries" per 201
 *   --relist yes        drain: one listing per delivery, the oldest
 *                       taken (bench/run's drain before 9041da8; it now
 *                       lists once, as kmdc fetch does); a stream stops at
 *                       its first unexpected answer.  Without it, a stream
 *                       stops at a listing that follows a failed fetch or
 *                       acknowledgement
 *   --resync yes|no     relay, upload: resynchronise the cards first (yes);
 *                       no when a `resync` run has just done it, so that
 *                       what the run costs the database is the sends' alone
 *
 * Output, one line on stdout:
 *   ops=N reqs=N secs=S rate=OPS/s mbps=MB/s p50_ms= p99_ms= max_ms= errors=N cpu_ms=
 * (cpu_ms: the load generator's own CPU time per operation, user + system,
 * from the first measured request on)
 * An operation is a relay (201), an upload (201), a poll (304), a drained
 * delivery (fetched and acknowledged, 204) or a static GET (200).  Cards used
 * for relay or upload are resynchronised with GET /card first (one signed
 * request per card) and saved at the end, so a run never reuses a counter a
 * previous run spent.
 */
#include <curl/curl.h>
#include <jansson.h>

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>

#include "kmdc_auth.h"
#include "kmdc_card.h"
#include "kmdc_envelope.h"
#include "kmdc_tlv.h"
#include "kmdc_util.h"

enum mode { M_RELAY, M_UPLOAD, M_POLL, M_DRAIN, M_ACK, M_GET, M_RESYNC };

struct buf {
    char *p;
    size_t len, cap;
};

struct card {
    char *path;
    kmdc_card *c;
    uint64_t serial;
    char hex[17];
};

/* One stream: a card (if any) and the transfer it has in flight. */
struct stream {
    int idx;
    struct card *card;
    CURL *h;
    struct curl_slist *hdrs;
    struct buf req;             /* request body */
    struct buf resp;            /* response body (not for fetches) */
    char etag[80];
    double t0;
    int busy, done;
    /* drain state */
    int phase;                  /* 0 list, 1 fetch, 2 ack */
    uint64_t *ids;
    size_t nids, next;
    int seen_empty;
    int failed;                 /* a fetch or ack failed since the last listing */
};

static struct {
    enum mode mode;
    const char *url, *cards_file, *to, *ids_file;
    char base_path[1024];       /* the path part of url: what is signed */
    uint64_t size;
    int concurrency;
    double seconds;
    long count;
    int no_resync;
} opt;

static struct card *cards;
static size_t ncards;
static kmdc_meta rcpt_meta;
static int to_self;                     /* --to self: each card to itself */
static int spread;                      /* --spread: card i to recipient i mod n */
static int relist;                      /* --relist: drain lists before each delivery */
static FILE *ids_out;

static long ops, reqs, errors, started;
static double *lat;
static size_t nlat, caplat;
static uint64_t bytes_moved;

static double
now(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void
die(const char *msg, const char *a)
{
    fprintf(stderr, "loadgen: %s%s%s\n", msg, a ? " " : "", a ? a : "");
    exit(2);
}

/* curl_easy_setopt, checked: a refused option is a bug of this program. */
#define SETOPT(h, opt, val)                                                   \
    do {                                                                      \
        if (curl_easy_setopt((h), (opt), (val)) != CURLE_OK)                  \
            die("curl_easy_setopt refused", #opt);                            \
    } while (0)

/* curl_slist_append, checked. */
static struct curl_slist *
hdr_add(struct curl_slist *l, const char *h)
{
    struct curl_slist *n = curl_slist_append(l, h);

    if (n == NULL)
        die("out of memory", NULL);
    return n;
}

static void *
xrealloc(void *p, size_t n)
{
    void *q = realloc(p, n);

    if (q == NULL)
        die("out of memory", NULL);
    return q;
}

static void
buf_add(struct buf *b, const void *p, size_t n)
{
    if (b->len + n + 1 > b->cap) {
        size_t c = b->cap ? b->cap : 4096;

        while (c < b->len + n + 1)
            c *= 2;
        b->p = xrealloc(b->p, c);
        b->cap = c;
    }
    memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
}

static void
record_latency(double ms)
{
    if (nlat == caplat) {
        caplat = caplat ? caplat * 2 : 65536;
        lat = xrealloc(lat, caplat * sizeof *lat);
    }
    lat[nlat++] = ms;
}

static size_t
on_body(char *p, size_t sz, size_t n, void *arg)
{
    struct stream *s = arg;

    bytes_moved += sz * n;
    if (!(opt.mode == M_DRAIN && s->phase == 1))
        buf_add(&s->resp, p, sz * n);
    return sz * n;
}

static size_t
on_header(char *p, size_t sz, size_t n, void *arg)
{
    struct stream *s = arg;
    size_t len = sz * n;

    if (len > 6 && strncasecmp(p, "ETag:", 5) == 0) {
        const char *v = p + 5;
        size_t vl = len - 5;

        while (vl && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl < sizeof s->etag) {
            memcpy(s->etag, v, vl);
            s->etag[vl] = '\0';
        }
    }
    return len;
}

/* ---- cards --------------------------------------------------------------- */

static void
load_cards(void)
{
    FILE *f = fopen(opt.cards_file, "r");
    char line[4096];
    kmdc_err e;

    if (f == NULL)
        die("cannot open", opt.cards_file);
    while (fgets(line, sizeof line, f) != NULL) {
        size_t l = strcspn(line, "\r\n");
        struct card *c;

        line[l] = '\0';
        if (l == 0)
            continue;
        cards = xrealloc(cards, (ncards + 1) * sizeof *cards);
        c = &cards[ncards++];
        memset(c, 0, sizeof *c);
        if ((c->path = strdup(line)) == NULL)
            die("out of memory", NULL);
        if (kmdc_card_load(line, NULL, &c->c, &e) != KMDC_OK) {
            fprintf(stderr, "loadgen: %s: %s\n", line, e.msg);
            exit(2);
        }
        c->serial = kmdc_card_serial(c->c);
        kmdc_serial_format(c->hex, c->serial);
    }
    if (fclose(f) != 0)
        die("cannot read", opt.cards_file);
    if (ncards == 0)
        die("no card in", opt.cards_file);
}

/* Sign a request into an "Authorization: ..." header line. */
static void
sign(char *hdr, size_t cap, const struct card *c, const char *method,
     const char *target, const void *body, size_t len)
{
    char v[KMDC_AUTH_HDR_BUFSZ];
    kmdc_err e;

    if (kmdc_auth_sign(v, sizeof v, c->serial, kmdc_card_ak(c->c), method,
                       target, body, len, (int64_t)time(NULL), &e) != KMDC_OK)
        die("signing failed:", e.msg);
    snprintf(hdr, cap, "Authorization: %s", v);
}

static kmdc_status
emit_buf(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    (void)err;
    buf_add(arg, p, len);
    return KMDC_OK;
}

static uint64_t
now_ms(void)
{
    struct timespec ts;

    clock_gettime(CLOCK_REALTIME, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

/* Reserve the card's next counter and start a seal of size bytes. */
static kmdc_seal *
seal_begin(struct card *c, uint64_t size)
{
    kmdc_header h;
    kmdc_meta m;
    uint64_t seq;
    uint8_t mk[32];
    kmdc_seal *s;
    kmdc_err e;

    if (kmdc_card_up_reserve(c->c, &seq, mk, &e) != KMDC_OK)
        die("up_reserve:", e.msg);
    if (kmdc_header_new(&h, KMDC_DIR_UP, c->serial, seq, &e) != KMDC_OK)
        die("header:", e.msg);
    if (to_self || spread) {
        const char *a = to_self ? kmdc_card_address(c->c)
                                : rcpt_meta.rcpt[(size_t)(c - cards) % rcpt_meta.n_rcpt];

        kmdc_meta_init(&m);
        if (kmdc_meta_add_rcpt(&m, a, strlen(a), &e) != KMDC_OK)
            die("bad recipient:", a);
    }
    else {
        m = rcpt_meta;
    }
    m.has_size = m.has_sent = 1;
    m.size = size;
    m.sent = now_ms();
    if (kmdc_meta_set_name(&m, (const uint8_t *)"bench.bin", 9, &e) != KMDC_OK)
        die("name:", e.msg);
    s = kmdc_seal_new(&h, mk, NULL, &m, &e);
    kmdc_wipe(mk, sizeof mk);
    if (s == NULL)
        die("seal:", e.msg);
    return s;
}

/* A whole small envelope into b. */
static void
seal_small(struct card *c, uint64_t size, struct buf *b)
{
    static uint8_t zero[65536];
    kmdc_seal *s = seal_begin(c, size);
    uint64_t left = size;
    kmdc_err e;

    b->len = 0;
    while (left > 0) {
        size_t n = left > sizeof zero ? sizeof zero : (size_t)left;

        if (kmdc_seal_update(s, zero, n, emit_buf, b, &e) != KMDC_OK)
            die("seal:", e.msg);
        left -= n;
    }
    if (kmdc_seal_final(s, emit_buf, b, &e) != KMDC_OK)
        die("seal:", e.msg);
    kmdc_seal_free(s);
}

/* ---- requests ------------------------------------------------------------ */

static void
target_of(char *out, size_t cap, const char *suffix)
{
    if ((size_t)snprintf(out, cap, "%s%s", opt.base_path, suffix) >= cap)
        die("request target too long:", suffix);
}

static void
start(CURLM *m, struct stream *s, const char *method, const char *target,
      const char *extra_hdr)
{
    char url[2048], auth[256];
    const char *scheme_host_end;
    CURL *h = s->h;

    /* url = scheme://host[:port] + target */
    scheme_host_end = strstr(opt.url, "://");
    scheme_host_end = scheme_host_end ? strchr(scheme_host_end + 3, '/') : NULL;
    if (scheme_host_end == NULL)
        die("bad url", opt.url);
    snprintf(url, sizeof url, "%.*s%s", (int)(scheme_host_end - opt.url), opt.url, target);

    curl_easy_reset(h);
    curl_slist_free_all(s->hdrs);
    s->hdrs = NULL;
    s->resp.len = 0;
    SETOPT(h, CURLOPT_URL, url);
    SETOPT(h, CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(h, CURLOPT_WRITEDATA, s);
    SETOPT(h, CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(h, CURLOPT_HEADERDATA, s);
    SETOPT(h, CURLOPT_PRIVATE, s);
    SETOPT(h, CURLOPT_NOSIGNAL, 1L);
    SETOPT(h, CURLOPT_TIMEOUT, 120L);
    if (s->card != NULL && opt.mode != M_RELAY) {
        sign(auth, sizeof auth, s->card, method, target, NULL, 0);
        s->hdrs = hdr_add(s->hdrs, auth);
    }
    if (extra_hdr != NULL)
        s->hdrs = hdr_add(s->hdrs, extra_hdr);
    if (strcmp(method, "POST") == 0) {
        s->hdrs = hdr_add(s->hdrs, "Content-Type: application/vnd.kmdc.envelope");
        s->hdrs = hdr_add(s->hdrs, "Expect:");
        SETOPT(h, CURLOPT_POST, 1L);
        SETOPT(h, CURLOPT_POSTFIELDS, s->req.p);
        SETOPT(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)s->req.len);
    } else if (strcmp(method, "DELETE") == 0) {
        SETOPT(h, CURLOPT_CUSTOMREQUEST, "DELETE");
    }
    SETOPT(h, CURLOPT_HTTPHEADER, s->hdrs);
    s->t0 = now();
    s->busy = 1;
    reqs++;
    if (curl_multi_add_handle(m, h) != CURLM_OK)
        die("curl_multi_add_handle failed", NULL);
}

/* Start the next request of stream s; 0 when it has nothing more to do. */
static int
next_request(CURLM *m, struct stream *s)
{
    char target[512], path[128], inm[128];

    if (opt.count > 0 && started >= opt.count && opt.mode != M_DRAIN && opt.mode != M_ACK)
        return 0;
    switch (opt.mode) {
    case M_RELAY:
        seal_small(s->card, opt.size, &s->req);
        target_of(target, sizeof target, "/send");
        start(m, s, "POST", target, NULL);
        break;
    case M_POLL:
        snprintf(path, sizeof path, "/mailbox/%s", s->card->hex);
        target_of(target, sizeof target, path);
        if (s->etag[0]) {
            snprintf(inm, sizeof inm, "If-None-Match: %s", s->etag);
            start(m, s, "GET", target, inm);
        } else {
            start(m, s, "GET", target, NULL);
        }
        break;
    case M_GET:
        start(m, s, "GET", opt.base_path, NULL);
        break;
    case M_DRAIN:
    case M_ACK:
        if (s->phase == 0 || s->next >= s->nids) {
            if (s->seen_empty)
                return 0;
            s->phase = 0;
            snprintf(path, sizeof path, "/mailbox/%s", s->card->hex);
        } else {
            char idhex[17];

            kmdc_serial_format(idhex, s->ids[s->next]);
            snprintf(path, sizeof path, "/mailbox/%s/%s", s->card->hex, idhex);
        }
        target_of(target, sizeof target, path);
        start(m, s, s->phase == 2 ? "DELETE" : "GET", target, NULL);
        break;
    case M_UPLOAD:
    case M_RESYNC:
        return 0;
    }
    started++;
    return 1;
}

static void
bad(struct stream *s, long code)
{
    errors++;
    if (errors <= 5)
        fprintf(stderr, "loadgen: unexpected %ld: %.300s\n", code, s->resp.p ? s->resp.p : "");
}

/* A 201 of POST /send: record the message id and its deliveries. */
static int
record_201(struct stream *s)
{
    json_error_t je;
    json_t *j = json_loadb(s->resp.p ? s->resp.p : "", s->resp.len, 0, &je);
    json_t *mid, *nd;
    int ok = 0;

    if (j && (mid = json_object_get(j, "message")) && json_is_string(mid) &&
        (nd = json_object_get(j, "deliveries")) && json_is_integer(nd)) {
        if (ids_out)
            fprintf(ids_out, "%s %" JSON_INTEGER_FORMAT " %zu\n",
                    json_string_value(mid), json_integer_value(nd),
                    to_self || spread ? (size_t)1 : rcpt_meta.n_rcpt);
        ok = 1;
    }
    json_decref(j);
    return ok;
}

/* The listing: remember the ids of the deliveries. */
static void
parse_list(struct stream *s)
{
    json_error_t je;
    json_t *j = json_loadb(s->resp.p ? s->resp.p : "", s->resp.len, 0, &je);
    json_t *arr = j ? json_object_get(j, "deliveries") : NULL;
    size_t i;

    s->nids = s->next = 0;
    if (!json_is_array(arr)) {
        bad(s, 200);
        s->seen_empty = 1;
        json_decref(j);
        return;
    }
    s->ids = xrealloc(s->ids, (json_array_size(arr) + 1) * sizeof *s->ids);
    for (i = 0; i < json_array_size(arr); i++) {
        json_t *id = json_object_get(json_array_get(arr, i), "id");
        uint64_t v;
        kmdc_err e;

        if (json_is_string(id) &&
            kmdc_serial_parse(&v, json_string_value(id), strlen(json_string_value(id)), &e) == KMDC_OK)
            s->ids[s->nids++] = v;
    }
    if (s->nids == 0)
        s->seen_empty = 1;
    json_decref(j);
}

static void
finished(struct stream *s, long code, double t_end)
{
    double ms = (t_end - s->t0) * 1000.0;

    record_latency(ms);
    switch (opt.mode) {
    case M_RELAY:
        if (code == 201 && record_201(s))
            ops++;
        else
            bad(s, code);
        break;
    case M_POLL:
        if (code == 304)
            ops++;
        else if (code != 200)
            bad(s, code);       /* 200: the first poll, which learns the ETag */
        break;
    case M_GET:
        if (code == 200)
            ops++;
        else
            bad(s, code);
        break;
    case M_DRAIN:
    case M_ACK:
        if (s->phase == 0) {
            if (code == 200) {
                parse_list(s);
                s->phase = opt.mode == M_DRAIN ? 1 : 2;
                /* a listing after a failure would offer the same delivery
                 * again: stop rather than loop on it until the deadline */
                if (s->failed && s->nids > 0)
                    s->seen_empty = 1;
                s->failed = 0;
            } else {
                bad(s, code);
                s->seen_empty = 1;
            }
        } else if (s->phase == 1) {
            if (code == 200) {
                s->phase = 2;
            } else {
                bad(s, code);
                s->next++;
                s->failed = 1;
                if (relist)
                    s->seen_empty = 1;  /* the next listing would offer it again */
            }
        } else {
            if (code == 204)
                ops++;
            else {
                bad(s, code);
                s->failed = 1;
                if (relist)
                    s->seen_empty = 1;
            }
            s->next++;
            /* --relist: the next delivery is the oldest of a new listing */
            s->phase = relist ? 0 : opt.mode == M_DRAIN ? 1 : 2;
        }
        break;
    case M_UPLOAD:
    case M_RESYNC:
        break;
    }
}

static int
cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;

    return x < y ? -1 : x > y;
}

static double
pct(double p)
{
    size_t i;

    if (nlat == 0)
        return 0;
    i = (size_t)(p * (double)(nlat - 1) + 0.5);
    return lat[i];
}

/* This process's CPU time (user + system) so far, in milliseconds. */
static double
cpu_ms(void)
{
    struct rusage ru;

    if (getrusage(RUSAGE_SELF, &ru) != 0)
        return 0.0;
    return (double)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000.0
           + (double)(ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1000.0;
}

/* cpu0: cpu_ms() when the measured operations began; the line gives the
 * load generator's own CPU per operation since then (cpu_ms=), so that a
 * table can charge the client's work on shared cores to the side it is on. */
static void
report(double secs, double cpu0)
{
    double cpu = cpu_ms() - cpu0;

    qsort(lat, nlat, sizeof *lat, cmp_double);
    printf("ops=%ld reqs=%ld secs=%.3f rate=%.1f mbps=%.2f p50_ms=%.2f p99_ms=%.2f max_ms=%.2f "
           "errors=%ld cpu_ms=%.3f\n",
           ops, reqs, secs, secs > 0 ? (double)ops / secs : 0.0,
           secs > 0 ? (double)bytes_moved / secs / 1e6 : 0.0,
           pct(0.5), pct(0.99), nlat ? lat[nlat - 1] : 0.0, errors,
           ops > 0 ? cpu / (double)ops : 0.0);
}

/* ---- resync and save ------------------------------------------------------ */

static size_t
to_buf(char *p, size_t sz, size_t n, void *arg)
{
    buf_add(arg, p, sz * n);
    return sz * n;
}

/* GET /card/{serial}: move the card's up counter to the datacenter's. */
static void
resync(struct card *c)
{
    char target[256], path[64], url[2048], auth[256];
    const char *hostend = strchr(strstr(opt.url, "://") + 3, '/');
    struct buf b = { 0 };
    struct curl_slist *hd = NULL;
    CURL *h = curl_easy_init();
    long code = 0;
    json_error_t je;
    json_t *j, *up;
    kmdc_err e;

    snprintf(path, sizeof path, "/card/%s", c->hex);
    target_of(target, sizeof target, path);
    snprintf(url, sizeof url, "%.*s%s", (int)(hostend - opt.url), opt.url, target);
    sign(auth, sizeof auth, c, "GET", target, NULL, 0);
    hd = hdr_add(hd, auth);
    SETOPT(h, CURLOPT_URL, url);
    SETOPT(h, CURLOPT_HTTPHEADER, hd);
    SETOPT(h, CURLOPT_WRITEFUNCTION, to_buf);
    SETOPT(h, CURLOPT_WRITEDATA, &b);
    SETOPT(h, CURLOPT_TIMEOUT, 30L);
    if (curl_easy_perform(h) != CURLE_OK ||
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK || code != 200)
        die("GET /card failed for", c->path);
    j = json_loadb(b.p, b.len, 0, &je);
    up = j ? json_object_get(j, "up_next") : NULL;
    if (!json_is_integer(up))
        die("GET /card: no up_next for", c->path);
    if ((uint64_t)json_integer_value(up) > kmdc_card_up_next(c->c) &&
        kmdc_card_resync(c->c, (uint64_t)json_integer_value(up),
                         kmdc_card_down_next(c->c), &e) != KMDC_OK)
        die("resync:", e.msg);
    json_decref(j);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    free(b.p);
}

static void
save_cards(void)
{
    size_t i;
    kmdc_err e;

    for (i = 0; i < ncards; i++)
        if (kmdc_card_save(cards[i].c, cards[i].path, NULL, &e) != KMDC_OK)
            fprintf(stderr, "loadgen: saving %s: %s\n", cards[i].path, e.msg);
}

/* ---- upload: one big envelope, sealed while it streams --------------------- */

struct up {
    kmdc_seal *seal;
    uint64_t left;
    struct buf out;
    size_t off;
    int final;
};

static size_t
up_read(char *dst, size_t sz, size_t n, void *arg)
{
    static uint8_t zero[65536];
    struct up *u = arg;
    size_t want = sz * n, got;
    kmdc_err e;

    while (u->off == u->out.len && !u->final) {
        u->out.len = u->off = 0;
        if (u->left > 0) {
            size_t k = u->left > sizeof zero ? sizeof zero : (size_t)u->left;

            if (kmdc_seal_update(u->seal, zero, k, emit_buf, &u->out, &e) != KMDC_OK)
                die("seal:", e.msg);
            u->left -= k;
        } else {
            if (kmdc_seal_final(u->seal, emit_buf, &u->out, &e) != KMDC_OK)
                die("seal:", e.msg);
            u->final = 1;
        }
    }
    got = u->out.len - u->off;
    if (got > want)
        got = want;
    memcpy(dst, u->out.p + u->off, got);
    u->off += got;
    return got;
}

static void
run_upload(void)
{
    struct up u = { 0 };
    struct stream s = { 0 };
    char target[512], url[2048];
    const char *hostend = strchr(strstr(opt.url, "://") + 3, '/');
    struct curl_slist *hd = NULL;
    CURL *h = curl_easy_init();
    long code = 0;
    double t0, t1, cpu0 = cpu_ms();
    kmdc_err e;
    uint64_t total;

    /* the prefix (header, kb_len, keyblock) first, to know the length */
    u.seal = seal_begin(&cards[0], opt.size);
    if (kmdc_seal_update(u.seal, NULL, 0, emit_buf, &u.out, &e) != KMDC_OK)
        die("seal:", e.msg);
    u.left = opt.size;
    total = u.out.len + kmdc_payload_len(opt.size);
    target_of(target, sizeof target, "/send");
    snprintf(url, sizeof url, "%.*s%s", (int)(hostend - opt.url), opt.url, target);
    hd = hdr_add(hd, "Content-Type: application/vnd.kmdc.envelope");
    hd = hdr_add(hd, "Expect:");
    SETOPT(h, CURLOPT_URL, url);
    SETOPT(h, CURLOPT_HTTPHEADER, hd);
    SETOPT(h, CURLOPT_POST, 1L);
    SETOPT(h, CURLOPT_READFUNCTION, up_read);
    SETOPT(h, CURLOPT_READDATA, &u);
    SETOPT(h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)total);
    SETOPT(h, CURLOPT_WRITEFUNCTION, to_buf);
    SETOPT(h, CURLOPT_WRITEDATA, &s.resp);
    SETOPT(h, CURLOPT_TIMEOUT, 3600L);
    t0 = now();
    reqs = 1;
    if (curl_easy_perform(h) != CURLE_OK ||
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code) != CURLE_OK)
        code = 0;
    t1 = now();
    record_latency((t1 - t0) * 1000.0);
    bytes_moved = total;
    if (code == 201 && record_201(&s))
        ops = 1;
    else
        bad(&s, code);
    kmdc_seal_free(u.seal);
    free(u.out.p);
    free(s.resp.p);
    curl_slist_free_all(hd);
    curl_easy_cleanup(h);
    report(t1 - t0, cpu0);
}

/* ---- main ---------------------------------------------------------------- */

static void
usage(void)
{
    fprintf(stderr, "usage: loadgen relay|upload|poll|drain|ack|get|resync --url BASE\n"
                    "       [--cards FILE] [--to ADDRS] [--size N] [--concurrency N]\n"
                    "       [--seconds S] [--count N] [--ids FILE] [--resync yes|no] [--spread yes]\n"
                    "       [--relist yes]\n");
    exit(2);
}

int
main(int argc, char **argv)
{
    CURLM *m = NULL;
    struct stream *st;
    int i, n, running = 0;
    double t0, deadline, last = 0, cpu0;
    const char *p;

    if (argc < 2)
        usage();
    if (strcmp(argv[1], "relay") == 0) opt.mode = M_RELAY;
    else if (strcmp(argv[1], "upload") == 0) opt.mode = M_UPLOAD;
    else if (strcmp(argv[1], "poll") == 0) opt.mode = M_POLL;
    else if (strcmp(argv[1], "drain") == 0) opt.mode = M_DRAIN;
    else if (strcmp(argv[1], "ack") == 0) opt.mode = M_ACK;
    else if (strcmp(argv[1], "get") == 0) opt.mode = M_GET;
    else if (strcmp(argv[1], "resync") == 0) opt.mode = M_RESYNC;
    else usage();
    opt.seconds = 10;
    opt.size = opt.mode == M_UPLOAD ? (64u << 20) : 1024;
    for (i = 2; i < argc; i += 2) {      /* --option value pairs */
        const char *a = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;

        if (v == NULL)
            usage();
        if (strcmp(a, "--url") == 0) opt.url = v;
        else if (strcmp(a, "--cards") == 0) opt.cards_file = v;
        else if (strcmp(a, "--to") == 0) opt.to = v;
        else if (strcmp(a, "--ids") == 0) opt.ids_file = v;
        else if (strcmp(a, "--size") == 0) opt.size = strtoull(v, NULL, 10);
        else if (strcmp(a, "--concurrency") == 0) opt.concurrency = atoi(v);
        else if (strcmp(a, "--seconds") == 0) opt.seconds = atof(v);
        else if (strcmp(a, "--count") == 0) opt.count = atol(v);
        else if (strcmp(a, "--resync") == 0 && strcmp(v, "yes") == 0) opt.no_resync = 0;
        else if (strcmp(a, "--spread") == 0 && strcmp(v, "yes") == 0) spread = 1;
        else if (strcmp(a, "--relist") == 0 && strcmp(v, "yes") == 0) relist = 1;
        else if (strcmp(a, "--resync") == 0 && strcmp(v, "no") == 0) opt.no_resync = 1;
        else usage();
    }
    if (opt.url == NULL || (p = strstr(opt.url, "://")) == NULL ||
        (p = strchr(p + 3, '/')) == NULL || strlen(p) >= sizeof opt.base_path)
        die("--url must be http://host[:port]/path", NULL);
    strcpy(opt.base_path, p);
    if (opt.mode != M_GET) {
        if (opt.cards_file == NULL)
            die("--cards is required", NULL);
        load_cards();
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        die("curl_global_init failed", NULL);
    kmdc_meta_init(&rcpt_meta);
    if (opt.mode == M_RESYNC) {
        for (i = 0; i < (int)ncards; i++)
            resync(&cards[i]);
        save_cards();
        for (i = 0; i < (int)ncards; i++)
            kmdc_card_free(cards[i].c);
        curl_global_cleanup();
        return 0;
    }
    if (opt.mode == M_RELAY || opt.mode == M_UPLOAD) {
        const char *a = opt.to;
        kmdc_err e;

        if (a == NULL)
            die("--to is required", NULL);
        if (strcmp(a, "self") == 0) {
            to_self = 1;                 /* rcpt_meta counts one recipient */
            a = "self";
        }
        while (*a) {
            size_t l = strcspn(a, ",");

            if (kmdc_meta_add_rcpt(&rcpt_meta, a, l, &e) != KMDC_OK)
                die("bad recipient list", opt.to);
            a += l;
            if (*a == ',')
                a++;
        }
        for (i = 0; i < (int)ncards && !opt.no_resync; i++)
            resync(&cards[i]);
        if (opt.ids_file && (ids_out = fopen(opt.ids_file, "a")) == NULL)
            die("cannot open", opt.ids_file);
    }
    if (opt.mode == M_UPLOAD) {
        run_upload();
        save_cards();
        if (ids_out && fclose(ids_out) != 0)
            die("writing the ids failed", NULL);
        return errors ? 1 : 0;
    }

    n = opt.concurrency > 0 ? opt.concurrency : (ncards ? (int)ncards : 16);
    if (opt.mode == M_RELAY && (size_t)n > ncards)
        die("relay needs one card per concurrent stream", NULL);
    if ((opt.mode == M_DRAIN || opt.mode == M_ACK) && (size_t)n > ncards)
        n = (int)ncards;
    st = calloc((size_t)n, sizeof *st);
    if (st == NULL || (m = curl_multi_init()) == NULL)
        die("out of memory", NULL);
    if (curl_multi_setopt(m, CURLMOPT_MAX_HOST_CONNECTIONS, (long)n) != CURLM_OK)
        die("curl_multi_setopt refused", "CURLMOPT_MAX_HOST_CONNECTIONS");
    t0 = now();
    cpu0 = cpu_ms();
    deadline = t0 + opt.seconds;
    for (i = 0; i < n; i++) {
        st[i].idx = i;
        st[i].card = ncards ? &cards[(size_t)i % ncards] : NULL;
        if ((st[i].h = curl_easy_init()) == NULL)
            die("curl_easy_init failed", NULL);
        if (next_request(m, &st[i]))
            running++;
    }
    while (running > 0) {
        int still, q;
        CURLMsg *msg;

        if (curl_multi_perform(m, &still) != CURLM_OK)
            die("curl_multi_perform failed", NULL);
        while ((msg = curl_multi_info_read(m, &q)) != NULL) {
            struct stream *s;
            long code = 0;
            double t;

            if (msg->msg != CURLMSG_DONE)
                continue;
            curl_easy_getinfo(msg->easy_handle, CURLINFO_PRIVATE, (char **)&s);
            if (msg->data.result == CURLE_OK)
                curl_easy_getinfo(msg->easy_handle, CURLINFO_RESPONSE_CODE, &code);
            if (curl_multi_remove_handle(m, msg->easy_handle) != CURLM_OK)
                die("curl_multi_remove_handle failed", NULL);
            t = now();
            last = t;
            s->busy = 0;
            if (msg->data.result != CURLE_OK) {
                errors++;
                if (errors <= 5)
                    fprintf(stderr, "loadgen: %s\n", curl_easy_strerror(msg->data.result));
                if (opt.mode == M_DRAIN || opt.mode == M_ACK)
                    s->seen_empty = 1;
            } else {
                finished(s, code, t);
            }
            if ((opt.count > 0 || t < deadline) && next_request(m, s))
                continue;
            running--;
        }
        if (running > 0 && curl_multi_poll(m, NULL, 0, 100, NULL) != CURLM_OK)
            die("curl_multi_poll failed", NULL);
    }
    report(last > t0 ? last - t0 : 0, cpu0);
    for (i = 0; i < n; i++) {
        curl_easy_cleanup(st[i].h);
        curl_slist_free_all(st[i].hdrs);
        free(st[i].req.p);
        free(st[i].resp.p);
        free(st[i].ids);
    }
    curl_multi_cleanup(m);
    if (opt.mode == M_RELAY)
        save_cards();
    if (ids_out && fclose(ids_out) != 0)
        die("writing the ids failed", NULL);
    for (i = 0; i < (int)ncards; i++)
        kmdc_card_free(cards[i].c);
    curl_global_cleanup();
    return 0;
}
