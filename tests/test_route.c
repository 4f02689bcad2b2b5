/*
 * test_route.c - the route table and the router (lib/kmdc_route.h): every
 * route, wrong methods and their Allow text, OPTIONS, paths that do not split
 * (empty segments, a trailing slash, too many segments), malformed serials
 * and ids, and that the router takes the path as httpd left it (no decoding).
 */
#include <stdint.h>
#include <string.h>

#include "kmdc_route.h"
#include "kmdc_util.h"
#include "tap.h"

#define S1 "0123456789abcdef"          /* a serial */
#define I1 "0000000000000001"          /* the smallest id */
#define MAXV "7fffffffffffffff"        /* the largest serial or id */

static kmdc_route_status
route(const char *path, kmdc_method method, kmdc_route_match *m)
{
    return kmdc_route_lookup(path, strlen(path), method, m);
}

static const char *
method_name(kmdc_method method)
{
    switch (method) {
    case KMDC_METHOD_GET: return "GET";
    case KMDC_METHOD_POST: return "POST";
    case KMDC_METHOD_DELETE: return "DELETE";
    case KMDC_METHOD_OPTIONS: return "OPTIONS";
    default: return "PUT";
    }
}

/* 1 when segment i of m holds text. */
static int
seg_is(const char *path, const kmdc_route_match *m, int i, const char *text)
{
    return i < m->nseg && m->seg[i].len == strlen(text)
           && memcmp(path + m->seg[i].off, text, m->seg[i].len) == 0;
}

/* A route found, with its flags, segments, serial and id. */
static void
found(const char *path, kmdc_method method, kmdc_route_id id, int flags,
      uint64_t serial, uint64_t msgid)
{
    kmdc_route_match m;
    int ok;

    ok = route(path, method, &m) == KMDC_ROUTE_FOUND && m.route != NULL
         && m.route->id == id && m.serial == serial && m.id == msgid
         && m.allow[0] == '\0';
    tap_ok(ok, "%s \"%s\": route %d, serial and id", method_name(method), path, (int)id);
    tap_ok(ok && m.route->flags == flags, "%s \"%s\": flags 0x%x", method_name(method),
           path, flags);
}

/* The path exists, the method does not: 405 (or 204 for OPTIONS) with allow. */
static void
not_allowed(const char *path, kmdc_method method, const char *allow)
{
    kmdc_route_match m;
    kmdc_route_status want = method == KMDC_METHOD_OPTIONS ? KMDC_ROUTE_OPTIONS
                                                           : KMDC_ROUTE_METHOD_NOT_ALLOWED;
    kmdc_route_status st = route(path, method, &m);

    if (!tap_ok(st == want && m.route == NULL && strcmp(m.allow, allow) == 0,
                "%s \"%s\": %s, Allow: %s", method_name(method), path,
                want == KMDC_ROUTE_OPTIONS ? "options" : "405", allow))
        tap_diag("status %d, allow \"%s\"", (int)st, m.allow);
}

static void
not_found(const char *path, size_t len, const char *name)
{
    kmdc_route_match m;
    int ok = 1;
    int meth;

    for (meth = KMDC_METHOD_GET; meth <= KMDC_METHOD_OTHER; meth++) {
        ok = ok && kmdc_route_lookup(path, len, (kmdc_method)meth, &m) == KMDC_ROUTE_NOT_FOUND
             && m.route == NULL && m.allow[0] == '\0' && m.serial == 0 && m.id == 0;
    }
    tap_ok(ok, "not found for every method: %s", name);
}

/* A literal path, its length from sizeof (NUL bytes inside count). */
#define NOT_FOUND(lit, name) not_found(lit, sizeof(lit) - 1, name)

static void
bad(const char *path, kmdc_method method, kmdc_route_status want, kmdc_route_id id,
    const char *name)
{
    kmdc_route_match m;
    kmdc_route_status st = route(path, method, &m);

    if (!tap_ok(st == want && m.route != NULL && m.route->id == id && m.id == 0
                && (want == KMDC_ROUTE_BAD_ID || m.serial == 0),
                "%s: bad %s", name, want == KMDC_ROUTE_BAD_SERIAL ? "serial" : "id"))
        tap_diag("status %d", (int)st);
}

static void
test_table(void)
{
    const kmdc_route *t = kmdc_route_table();
    int i, ok = 1;

    for (i = 0; i < KMDC_RT_N; i++)
        ok = ok && t[i].id == (kmdc_route_id)i && t[i].nseg <= KMDC_ROUTE_MAX_SEGMENTS
             && (t[i].id_seg == 0 || (t[i].id_seg >= 1 && t[i].id_seg < t[i].nseg))
             && (t[i].method == KMDC_METHOD_GET || t[i].method == KMDC_METHOD_POST
                 || t[i].method == KMDC_METHOD_DELETE)
             && ((t[i].flags & KMDC_ROUTE_SERIAL) == 0 || t[i].nseg >= 2);
    tap_ok(ok, "table: indexed by id, ids and serials inside the path, GET/POST/DELETE only");
}

static void
test_routes(void)
{
    const int auth_serial = KMDC_ROUTE_AUTH | KMDC_ROUTE_SERIAL;
    const int inactive = auth_serial | KMDC_ROUTE_INACTIVE;
    kmdc_route_match m;
    const char *p;

    found("", KMDC_METHOD_GET, KMDC_RT_PAGE, 0, 0, 0);
    found("/", KMDC_METHOD_GET, KMDC_RT_PAGE, 0, 0, 0);
    found("/health", KMDC_METHOD_GET, KMDC_RT_HEALTH, 0, 0, 0);
    found("/send", KMDC_METHOD_POST, KMDC_RT_SEND, 0, 0, 0);
    found("/activate/" S1, KMDC_METHOD_POST, KMDC_RT_ACTIVATE, inactive,
          UINT64_C(0x0123456789abcdef), 0);
    found("/card/" S1, KMDC_METHOD_GET, KMDC_RT_CARD, inactive,
          UINT64_C(0x0123456789abcdef), 0);
    found("/mailbox/" S1, KMDC_METHOD_GET, KMDC_RT_MAILBOX_LIST, auth_serial,
          UINT64_C(0x0123456789abcdef), 0);
    found("/mailbox/" S1 "/" I1, KMDC_METHOD_GET, KMDC_RT_MAILBOX_FETCH, auth_serial,
          UINT64_C(0x0123456789abcdef), 1);
    found("/mailbox/" S1 "/" MAXV, KMDC_METHOD_DELETE, KMDC_RT_MAILBOX_DELETE, auth_serial,
          UINT64_C(0x0123456789abcdef), KMDC_U63_MAX);
    found("/messages/" MAXV, KMDC_METHOD_GET, KMDC_RT_MESSAGE, KMDC_ROUTE_AUTH, 0,
          KMDC_U63_MAX);
    found("/mailbox/" I1, KMDC_METHOD_GET, KMDC_RT_MAILBOX_LIST, auth_serial, 1, 0);
    found("/card/" MAXV, KMDC_METHOD_GET, KMDC_RT_CARD, inactive, KMDC_U63_MAX, 0);

    p = "/mailbox/" S1 "/" I1;
    tap_ok(route(p, KMDC_METHOD_GET, &m) == KMDC_ROUTE_FOUND && m.nseg == 3
           && seg_is(p, &m, 0, "mailbox") && seg_is(p, &m, 1, S1) && seg_is(p, &m, 2, I1),
           "mailbox fetch: three segments, offsets into the path");
    tap_ok(route("", KMDC_METHOD_GET, &m) == KMDC_ROUTE_FOUND && m.nseg == 0,
           "the page: no segments");
    tap_ok(route("/", KMDC_METHOD_GET, &m) == KMDC_ROUTE_FOUND && m.nseg == 0,
           "the page with a slash: no segments");
    tap_ok(kmdc_route_lookup(NULL, 0, KMDC_METHOD_GET, &m) == KMDC_ROUTE_FOUND
           && m.route->id == KMDC_RT_PAGE, "a NULL path of length 0 is the page");
    p = "/health/extra";
    tap_ok(kmdc_route_lookup(p, 7, KMDC_METHOD_GET, &m) == KMDC_ROUTE_FOUND
           && m.route->id == KMDC_RT_HEALTH, "only len bytes of the path are read");
}

static void
test_methods(void)
{
    /* a wrong method: 405 with the methods of the path, in table order */
    not_allowed("", KMDC_METHOD_POST, "GET, HEAD");
    not_allowed("/", KMDC_METHOD_DELETE, "GET, HEAD");
    not_allowed("/health", KMDC_METHOD_POST, "GET, HEAD");
    not_allowed("/health", KMDC_METHOD_DELETE, "GET, HEAD");
    not_allowed("/health", KMDC_METHOD_OTHER, "GET, HEAD");
    not_allowed("/send", KMDC_METHOD_GET, "POST");
    not_allowed("/send", KMDC_METHOD_DELETE, "POST");
    not_allowed("/activate/" S1, KMDC_METHOD_GET, "POST");
    not_allowed("/card/" S1, KMDC_METHOD_POST, "GET, HEAD");
    not_allowed("/mailbox/" S1, KMDC_METHOD_DELETE, "GET, HEAD");
    not_allowed("/mailbox/" S1 "/" I1, KMDC_METHOD_POST, "GET, HEAD, DELETE");
    not_allowed("/mailbox/" S1 "/" I1, KMDC_METHOD_OTHER, "GET, HEAD, DELETE");
    not_allowed("/messages/" I1, KMDC_METHOD_DELETE, "GET, HEAD");
    not_allowed("/messages/" I1, KMDC_METHOD_POST, "GET, HEAD");
    /* the method is decided before the identifiers are parsed */
    not_allowed("/mailbox/XYZ", KMDC_METHOD_POST, "GET, HEAD");
    not_allowed("/mailbox/XYZ/notanid", KMDC_METHOD_POST, "GET, HEAD, DELETE");
    not_allowed("/activate/0000000000000000", KMDC_METHOD_GET, "POST");

    /* OPTIONS: the same Allow text, no route */
    not_allowed("", KMDC_METHOD_OPTIONS, "GET, HEAD");
    not_allowed("/health", KMDC_METHOD_OPTIONS, "GET, HEAD");
    not_allowed("/send", KMDC_METHOD_OPTIONS, "POST");
    not_allowed("/activate/" S1, KMDC_METHOD_OPTIONS, "POST");
    not_allowed("/card/" S1, KMDC_METHOD_OPTIONS, "GET, HEAD");
    not_allowed("/mailbox/" S1, KMDC_METHOD_OPTIONS, "GET, HEAD");
    not_allowed("/mailbox/" S1 "/" I1, KMDC_METHOD_OPTIONS, "GET, HEAD, DELETE");
    not_allowed("/messages/" I1, KMDC_METHOD_OPTIONS, "GET, HEAD");
    not_allowed("/mailbox/XYZ", KMDC_METHOD_OPTIONS, "GET, HEAD");
}

static void
test_not_found(void)
{
    static const char nul[] = "/health\0";
    static const char nul2[] = "/he\0lth";

    NOT_FOUND("/nope", "an unknown first segment");
    NOT_FOUND("nope", "no leading slash");
    NOT_FOUND("health", "a route's name without its slash");
    NOT_FOUND("/health/extra", "health with an extra segment");
    NOT_FOUND("/health/", "health with a trailing slash");
    NOT_FOUND("/send/", "send with a trailing slash");
    NOT_FOUND("//health", "an empty first segment");
    NOT_FOUND("//", "two slashes");
    NOT_FOUND("/mailbox//" I1, "mailbox with an empty serial");
    NOT_FOUND("/mailbox/" S1 "/", "mailbox with a trailing slash");
    NOT_FOUND("/mailbox/" S1 "//" I1, "mailbox with an empty middle segment");
    NOT_FOUND("/mailbox", "mailbox without a serial");
    NOT_FOUND("/mailbox/" S1 "/1/2", "mailbox with four segments");
    NOT_FOUND("/mailbox/" S1 "/1/2/3", "mailbox with five segments");
    NOT_FOUND("/a/b/c/d/e/f/g/h", "many segments");
    NOT_FOUND("/card", "card without a serial");
    NOT_FOUND("/card/" S1 "/" I1, "card with an id");
    NOT_FOUND("/messages", "messages without an id");
    NOT_FOUND("/messages/" S1 "/" I1, "messages with two ids");
    NOT_FOUND("/activate/" S1 "/x", "activate with an extra segment");
    NOT_FOUND("/Health", "names are case-sensitive");
    NOT_FOUND("/HEALTH", "names are case-sensitive (upper)");
    NOT_FOUND("/health ", "a name with a trailing space");
    NOT_FOUND(nul, "a NUL byte after a name");
    NOT_FOUND(nul2, "a NUL byte inside a name");
    NOT_FOUND("/healthx", "a longer name");
    NOT_FOUND("/healt", "a shorter name");
    NOT_FOUND("x", "a path of one byte other than /");
    NOT_FOUND("/./health", "a dot segment (httpd resolves them before)");
    /* %XX was decoded by httpd into r->uri; a "%" left is an ordinary byte */
    NOT_FOUND("/mail%62ox/" S1, "a percent escape is not decoded again");
    NOT_FOUND("/health%2F", "an escaped slash is not a slash");
}

static void
test_bad_ids(void)
{
    bad("/mailbox/XYZ", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL, KMDC_RT_MAILBOX_LIST,
        "mailbox/XYZ");
    bad("/mailbox/zz", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL, KMDC_RT_MAILBOX_LIST,
        "mailbox/zz");
    bad("/mailbox/0123456789abcde", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "15 digits");
    bad("/mailbox/0123456789abcdef0", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "17 digits");
    bad("/mailbox/0123456789ABCDEF", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "uppercase");
    bad("/mailbox/0123456789abcdeF", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "one uppercase digit");
    bad("/mailbox/0000000000000000", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "serial zero");
    bad("/mailbox/8000000000000000", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "top bit set");
    bad("/mailbox/ffffffffffffffff", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "2^64-1");
    bad("/mailbox/%30123456789abcde", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "a percent escape in a serial");
    bad("/mailbox/ 123456789abcdef", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "a space in a serial");
    bad("/mailbox/+123456789abcdef", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_LIST, "a sign in a serial");
    bad("/activate/0123456789abcde", KMDC_METHOD_POST, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_ACTIVATE, "activate, 15 digits");
    bad("/activate/8000000000000001", KMDC_METHOD_POST, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_ACTIVATE, "activate, top bit set");
    bad("/card/0000000000000000", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL, KMDC_RT_CARD,
        "card, serial zero");
    bad("/card/0123456789ABCDEF", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL, KMDC_RT_CARD,
        "card, uppercase");
    bad("/mailbox/XYZ/notanid", KMDC_METHOD_GET, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_FETCH, "fetch: the serial is checked before the id");
    bad("/mailbox/0000000000000000/" I1, KMDC_METHOD_DELETE, KMDC_ROUTE_BAD_SERIAL,
        KMDC_RT_MAILBOX_DELETE, "delete, serial zero");

    bad("/mailbox/" S1 "/notanid", KMDC_METHOD_GET, KMDC_ROUTE_BAD_ID,
        KMDC_RT_MAILBOX_FETCH, "fetch/notanid");
    bad("/mailbox/" S1 "/000000000000001", KMDC_METHOD_GET, KMDC_ROUTE_BAD_ID,
        KMDC_RT_MAILBOX_FETCH, "fetch, 15 digits");
    bad("/mailbox/" S1 "/00000000000000001", KMDC_METHOD_GET, KMDC_ROUTE_BAD_ID,
        KMDC_RT_MAILBOX_FETCH, "fetch, 17 digits");
    bad("/mailbox/" S1 "/000000000000000A", KMDC_METHOD_GET, KMDC_ROUTE_BAD_ID,
        KMDC_RT_MAILBOX_FETCH, "fetch, uppercase");
    bad("/mailbox/" S1 "/0000000000000000", KMDC_METHOD_DELETE, KMDC_ROUTE_BAD_ID,
        KMDC_RT_MAILBOX_DELETE, "delete, id zero");
    bad("/mailbox/" S1 "/8000000000000000", KMDC_METHOD_DELETE, KMDC_ROUTE_BAD_ID,
        KMDC_RT_MAILBOX_DELETE, "delete, top bit set");
    bad("/messages/notanid", KMDC_METHOD_GET, KMDC_ROUTE_BAD_ID, KMDC_RT_MESSAGE,
        "messages/notanid");
    bad("/messages/0000000000000000", KMDC_METHOD_GET, KMDC_ROUTE_BAD_ID,
        KMDC_RT_MESSAGE, "messages, id zero");
    bad("/messages/fedcba9876543210", KMDC_METHOD_GET, KMDC_ROUTE_BAD_ID,
        KMDC_RT_MESSAGE, "messages, top bit set");
    bad("/messages/FEDCBA9876543210", KMDC_METHOD_GET, KMDC_ROUTE_BAD_ID,
        KMDC_RT_MESSAGE, "messages, uppercase");
    {
        kmdc_route_match m;

        tap_ok(route("/mailbox/" S1 "/notanid", KMDC_METHOD_GET, &m) == KMDC_ROUTE_BAD_ID
               && m.serial == UINT64_C(0x0123456789abcdef) && m.nseg == 3
               && seg_is("/mailbox/" S1 "/notanid", &m, 2, "notanid"),
               "a bad id keeps the parsed serial and the segments");
    }
}

int
main(void)
{
    test_table();
    test_routes();
    test_methods();
    test_not_found();
    test_bad_ids();
    return tap_done();
}
