/*
 * kmdc_parse.h - the kmdc client's readers of what a datacenter answers
 * (docs/API.md): response headers, the datacenter's own JSON error body, the
 * 201 body of POST /send, the mailbox listing, GET /card and GET /messages.
 *
 * Everything here is pure: bytes in, a verdict and plain C values out; no
 * I/O, no messages.  The network is not trusted: every reader bounds what it
 * keeps, refuses what is not exactly the documented shape, and strips
 * control characters from any text it hands back.  fuzz/fuzz_answer.c and
 * fuzz/fuzz_headers.c drive these functions.
 */
#ifndef KMDC_PARSE_H
#define KMDC_PARSE_H

#include <stddef.h>
#include <stdint.h>

#define KMDC_PARSE_MAX_DELIVERIES 100000  /* listed deliveries taken in one pass */
#define KMDC_PARSE_MAX_RCPTS 1024         /* recipients kept from /messages */

/* The headers the client reads from an answer. */
typedef struct kmdc_hdrs {
    char etag[160];             /* ETag, as sent (quotes kept) */
    char location[512];         /* Location */
    char content_type[128];     /* Content-Type, lower-cased media type only */
    long retry_after;           /* Retry-After in seconds, -1 when absent/unusable */
} kmdc_hdrs;

/* Reset h for a new set of headers (after each status line). */
void kmdc_parse_hdrs_init(kmdc_hdrs *h);

/*
 * Take one header line as libcurl hands it over (n bytes, with or without
 * CRLF, not NUL-terminated).  A status line ("HTTP/...") starts a new set.
 * Unknown headers are ignored.
 */
void kmdc_parse_header_line(kmdc_hdrs *h, const char *line, size_t n);

/*
 * Is this the datacenter's own JSON error body?  Strictly: a 4xx or 5xx
 * status, Content-Type application/json, and a body that is one JSON object
 * with exactly two members, "error" (a code: 1 to 40 of [a-z_]) and
 * "message" (a string).  1 and error/message filled (message sanitised,
 * truncated) when it is, else 0 (error/message emptied).
 */
int kmdc_parse_error_body(long status, const char *content_type, const char *body,
                          size_t len, char *error, size_t ecap, char *message,
                          size_t mcap);

/*
 * The body of a successful POST /send (201, or 200 for a retry answered from
 * its receipt): {"message":"<16 hex>","deliveries":n}.  0 and the values, or
 * -1 when it is not that.
 */
int kmdc_parse_send_answer(const char *content_type, const char *body, size_t len,
                           uint64_t *message, int64_t *deliveries);

/* One listed delivery. */
typedef struct kmdc_delivery {
    uint64_t id, seq, size;
} kmdc_delivery;

/*
 * The mailbox listing {"down_next":n,"deliveries":[{"id","seq","size",
 * "created"}...]}: *out (malloc'd, sorted by seq then id, at most
 * KMDC_PARSE_MAX_DELIVERIES), *n, *down_next.  0, or -1 when malformed
 * (nothing allocated).
 */
int kmdc_parse_listing(const char *body, size_t len, kmdc_delivery **out, size_t *n,
                       uint64_t *down_next);

/* GET /card/{serial}. */
typedef struct kmdc_card_answer {
    uint64_t serial;
    char status[16];            /* issued, active, suspended, revoked */
    int locked;
    uint64_t up_next, down_next;
    int64_t time;               /* the datacenter's clock, Unix ms */
} kmdc_card_answer;

/* 0 and *out filled, or -1 when the body is not the documented object. */
int kmdc_parse_card(const char *body, size_t len, kmdc_card_answer *out);

/* GET /messages/{id}: each recipient's state. */
typedef struct kmdc_rcpt_state {
    char address[65];
    char state[16];             /* queued, delivered, expired (or what came, sanitised) */
} kmdc_rcpt_state;

typedef struct kmdc_message_answer {
    uint64_t message;
    int64_t created;
    uint64_t size;
    kmdc_rcpt_state *rcpts;     /* malloc'd */
    size_t n_rcpts;
} kmdc_message_answer;

/* 0 and *out filled (free with kmdc_parse_message_free), or -1. */
int kmdc_parse_message(const char *body, size_t len, kmdc_message_answer *out);
void kmdc_parse_message_free(kmdc_message_answer *m);

/*
 * The datacenter's unknown_recipient message names the recipient by its
 * place in the envelope: "recipient I of N ...".  0 and *i (1-based), *of,
 * or -1.
 */
int kmdc_parse_rcpt_index(const char *message, size_t *i, size_t *of);

/* Replace control characters (C0, DEL) with '?', in place. */
void kmdc_parse_sanitize(char *s);

#endif
