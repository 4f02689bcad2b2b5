/*
 * kmdc_route.h - the URL routes of the KMDC/1 API and the router that maps a
 * path below the handler's <Location> and a method to one of them.
 *
 * The table of routes lives here, httpd-free, so that the module's dispatcher
 * (mod_kmdc/mod_kmdc.c), the unit tests (tests/test_route.c) and a fuzz
 * target (fuzz/fuzz_route.c) run the same code.  The router splits the path,
 * finds the route, tells a wrong method from an unknown path (with the Allow
 * header's text), and parses the serial and the message or delivery id the
 * path carries.  It allocates nothing and never decodes: the path is what
 * httpd leaves in r->uri (%XX already decoded, "//" merged by MergeSlashes,
 * "." and ".." resolved), taken byte for byte.
 */
#ifndef KMDC_ROUTE_H
#define KMDC_ROUTE_H

#include <stddef.h>
#include <stdint.h>

/* The methods routes tell apart.  HEAD is GET (httpd gives it M_GET). */
typedef enum kmdc_method {
    KMDC_METHOD_GET = 0,        /* GET and HEAD */
    KMDC_METHOD_POST,
    KMDC_METHOD_DELETE,
    KMDC_METHOD_OPTIONS,
    KMDC_METHOD_OTHER           /* any other method */
} kmdc_method;

/* The routes, one per endpoint function of mod_kmdc.h. */
typedef enum kmdc_route_id {
    KMDC_RT_PAGE = 0,           /* GET {location} and {location}/ */
    KMDC_RT_HEALTH,             /* GET /health */
    KMDC_RT_SEND,               /* POST /send */
    KMDC_RT_ACTIVATE,           /* POST /activate/{serial} */
    KMDC_RT_CARD,               /* GET /card/{serial} */
    KMDC_RT_MAILBOX_LIST,       /* GET /mailbox/{serial} */
    KMDC_RT_MAILBOX_FETCH,      /* GET /mailbox/{serial}/{id} */
    KMDC_RT_MAILBOX_DELETE,     /* DELETE /mailbox/{serial}/{id} */
    KMDC_RT_MESSAGE,            /* GET /messages/{id} */
    KMDC_RT_N
} kmdc_route_id;

/* Route flags. */
#define KMDC_ROUTE_AUTH 0x01       /* request authentication (3.5) required */
#define KMDC_ROUTE_INACTIVE 0x02   /* a not yet activated card may use it */
#define KMDC_ROUTE_SERIAL 0x04     /* segment 1 is a card serial */

/* The most path segments a route has (mailbox/{serial}/{id}); longer paths
 * are not found. */
#define KMDC_ROUTE_MAX_SEGMENTS 3

/* Room for the longest Allow text ("GET, HEAD, POST, DELETE") and its NUL. */
#define KMDC_ROUTE_ALLOW_MAX 32

/* One route of the table. */
typedef struct kmdc_route {
    kmdc_route_id id;
    const char *name;           /* the first path segment, "" for the page */
    int nseg;                   /* the number of segments (0 for the page) */
    kmdc_method method;         /* GET (HEAD too), POST or DELETE */
    int flags;                  /* KMDC_ROUTE_* */
    int id_seg;                 /* the segment holding a message or delivery
                                 * id, 0 when the route has none */
} kmdc_route;

/* What the router decided. */
typedef enum kmdc_route_status {
    KMDC_ROUTE_FOUND = 0,          /* route, serial and id are set */
    KMDC_ROUTE_NOT_FOUND,          /* no route has this path (any method) */
    KMDC_ROUTE_METHOD_NOT_ALLOWED, /* the path has routes, none for this
                                    * method (not OPTIONS): allow is set */
    KMDC_ROUTE_OPTIONS,            /* OPTIONS on a path that has routes:
                                    * allow is set */
    KMDC_ROUTE_BAD_SERIAL,         /* the route matched, its serial segment is
                                    * not 16 lowercase hex digits in
                                    * 1 .. 2^63-1: route is set, serial 0 */
    KMDC_ROUTE_BAD_ID              /* the route matched and its serial (if
                                    * any) is good, the id segment is
                                    * malformed: route and serial are set */
} kmdc_route_status;

/* A segment of the path: offset and length in the caller's path, without
 * the slashes around it. */
typedef struct kmdc_route_span {
    size_t off;
    size_t len;
} kmdc_route_span;

/* The router's answer. */
typedef struct kmdc_route_match {
    kmdc_route_status status;
    const kmdc_route *route;    /* FOUND, BAD_SERIAL, BAD_ID; else NULL */
    int nseg;                   /* the path's segments, 0 when it did not
                                 * split (and for the page) */
    kmdc_route_span seg[KMDC_ROUTE_MAX_SEGMENTS];
    uint64_t serial;            /* segment 1 of a KMDC_ROUTE_SERIAL route,
                                 * else 0 */
    uint64_t id;                /* segment id_seg of the route, else 0 */
    char allow[KMDC_ROUTE_ALLOW_MAX]; /* METHOD_NOT_ALLOWED, OPTIONS: the
                                 * methods of the path for the Allow header,
                                 * e.g. "GET, HEAD"; else "" */
} kmdc_route_match;

/*
 * Look up path[0..len) (the URI below the location: "" or "/" for the page,
 * else "/seg" or "/seg/seg..." without an empty segment, a trailing "/" or
 * more than KMDC_ROUTE_MAX_SEGMENTS segments; anything else is not found)
 * with method.  Fills *m and returns m->status.  The path's bytes are
 * compared as they are: a NUL byte or "%" is an ordinary byte that no name
 * and no identifier holds.  The order is that of the module's answers:
 * unknown path (404), then wrong method (405, or 204 for OPTIONS), then the
 * serial, then the id.
 */
kmdc_route_status kmdc_route_lookup(const char *path, size_t len,
                                    kmdc_method method, kmdc_route_match *m);

/* The route table (KMDC_RT_N entries, indexed by kmdc_route_id). */
const kmdc_route *kmdc_route_table(void);

#endif
