/* test_tlv.c - the keyblock metadata TLV (docs/PROTOCOL.md section 3): round trips and one
 * named negative case per rule. */
#include "kmdc_tlv.h"
#include "kmdc_util.h"
#include "tap.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* A list of entries, serialised sorted by type (stable) unless raw. */
#define MAX_ENT 64
struct ent {
    unsigned type;
    uint8_t v[300];
    size_t len;
    int forced_len;      /* when >= 0, the length field written instead */
};
struct tl {
    struct ent e[MAX_ENT];
    size_t n;
    uint8_t out[MAX_ENT * 310];
    size_t outlen;
};

static void
add(struct tl *t, unsigned type, const void *v, size_t len)
{
    struct ent *e = &t->e[t->n++];

    e->type = type;
    memcpy(e->v, v, len);
    e->len = len;
    e->forced_len = -1;
}

static void
add_str(struct tl *t, unsigned type, const char *s)
{
    add(t, type, s, strlen(s));
}

static void
add_u64(struct tl *t, unsigned type, uint64_t v)
{
    uint8_t b[8];

    kmdc_put_u64(b, v);
    add(t, type, b, 8);
}

/* Remove every entry of a type. */
static void
drop(struct tl *t, unsigned type)
{
    size_t i, j = 0;

    for (i = 0; i < t->n; i++)
        if (t->e[i].type != type)
            t->e[j++] = t->e[i];
    t->n = j;
}

static void
serialise(struct tl *t, int raw)
{
    size_t i, j;

    if (!raw)   /* insertion sort: stable */
        for (i = 1; i < t->n; i++)
            for (j = i; j > 0 && t->e[j - 1].type > t->e[j].type; j--) {
                struct ent x = t->e[j];
                t->e[j] = t->e[j - 1];
                t->e[j - 1] = x;
            }
    t->outlen = 0;
    for (i = 0; i < t->n; i++) {
        struct ent *e = &t->e[i];
        t->out[t->outlen] = (uint8_t)e->type;
        kmdc_put_u16(t->out + t->outlen + 1,
                     (uint16_t)(e->forced_len >= 0 ? (size_t)e->forced_len : e->len));
        memcpy(t->out + t->outlen + 3, e->v, e->len);
        t->outlen += 3 + e->len;
    }
}

static void
base_up(struct tl *t)
{
    t->n = 0;
    add_str(t, KMDC_TLV_RCPT, "alice");
    add_u64(t, KMDC_TLV_SIZE, 12345);
    add_u64(t, KMDC_TLV_SENT, UINT64_C(1700000000000));
}

static void
base_down(struct tl *t)
{
    t->n = 0;
    add_u64(t, KMDC_TLV_SIZE, 12345);
    add_u64(t, KMDC_TLV_SENT, UINT64_C(1700000000000));
    add_str(t, KMDC_TLV_FROM, "bob.smith");
    add_u64(t, KMDC_TLV_FROMSERIAL, UINT64_C(0x1234567890abcdef));
    add_u64(t, KMDC_TLV_MSGID, 42);
    add_u64(t, KMDC_TLV_RCVD, UINT64_C(1700000000500));
}

static kmdc_status
dec(struct tl *t, int dir, int raw, kmdc_meta *m)
{
    kmdc_err err;

    serialise(t, raw);
    return kmdc_tlv_decode(m, t->out, t->outlen, dir, &err);
}

/* Expect decoding to fail with `want`. */
static void
expect(struct tl *t, int dir, int raw, kmdc_status want, const char *name)
{
    kmdc_meta m;
    kmdc_status rc = dec(t, dir, raw, &m);

    if (!tap_ok(rc == want, "tlv: %s", name))
        tap_diag("got %s, want %s", kmdc_status_name(rc), kmdc_status_name(want));
}

static int
dir_of(unsigned type)
{
    switch (type) {
    case KMDC_TLV_FROM: case KMDC_TLV_FROMSERIAL: case KMDC_TLV_MSGID:
    case KMDC_TLV_RCVD:
        return KMDC_DIR_DOWN;
    default:
        return KMDC_DIR_UP;
    }
}

static void
base_for(struct tl *t, int dir)
{
    if (dir == KMDC_DIR_UP)
        base_up(t);
    else
        base_down(t);
}

static void
test_round_trips(void)
{
    kmdc_meta m, m2, d;
    uint8_t buf[KMDC_TLV_MAX], buf2[KMDC_TLV_MAX];
    size_t len = 0, len2 = 0, nlen = 0;
    kmdc_err err;
    static const char name[] = "r\xc3\xa9sum\xc3\xa9.pdf";
    int ok;

    kmdc_meta_init(&m);
    ok = kmdc_meta_add_rcpt(&m, "alice", 5, &err) == KMDC_OK &&
         kmdc_meta_add_rcpt(&m, "bob-2", 5, &err) == KMDC_OK &&
         kmdc_meta_add_rcpt(&m, "0carol.x_y", 10, &err) == KMDC_OK &&
         kmdc_meta_set_name(&m, (const uint8_t *)name, strlen(name), &err) == KMDC_OK &&
         kmdc_meta_set_type(&m, "application/pdf", 15, &err) == KMDC_OK;
    m.has_size = 1;
    m.size = KMDC_MAX_DOC;
    m.has_sent = 1;
    m.sent = UINT64_C(1700000000123);
    tap_ok(ok, "tlv: meta helpers accept valid recipients, NAME and TYPE");
    ok = kmdc_tlv_encode(NULL, 0, &nlen, &m, KMDC_DIR_UP, &err) == KMDC_OK &&
         kmdc_tlv_encode(buf, sizeof(buf), &len, &m, KMDC_DIR_UP, &err) == KMDC_OK;
    tap_ok(ok && nlen == len, "tlv: up encode, and the NULL-buffer length matches");
    ok = kmdc_tlv_decode(&m2, buf, len, KMDC_DIR_UP, &err) == KMDC_OK;
    tap_ok(ok && m2.n_rcpt == 3 && strcmp(m2.rcpt[0], "alice") == 0 &&
           strcmp(m2.rcpt[1], "bob-2") == 0 && strcmp(m2.rcpt[2], "0carol.x_y") == 0 &&
           m2.has_name && m2.name_len == strlen(name) &&
           memcmp(m2.name, name, m2.name_len) == 0 && m2.has_type &&
           strcmp(m2.type, "application/pdf") == 0 && m2.has_size &&
           m2.size == KMDC_MAX_DOC && m2.has_sent && m2.sent == m.sent &&
           !m2.has_from && !m2.has_msgid,
           "tlv: up round trip keeps every field");
    ok = kmdc_tlv_encode(buf2, sizeof(buf2), &len2, &m2, KMDC_DIR_UP, &err) == KMDC_OK;
    tap_mem_eq(buf2, ok ? len2 : 0, buf, len, "tlv: up re-encoding is byte-identical");
    tap_ok(len > 3 && buf[0] == KMDC_TLV_RCPT && kmdc_get_u16(buf + 1) == 5 &&
           memcmp(buf + 3, "alice", 5) == 0,
           "tlv: encoding starts with RCPT 00 05 \"alice\"");

    kmdc_meta_copy_shared(&d, &m2);
    ok = kmdc_meta_set_from(&d, "sender", 6, &err) == KMDC_OK;
    d.has_fromserial = 1;
    d.fromserial = KMDC_U63_MAX;
    d.has_msgid = 1;
    d.msgid = 1;
    d.has_rcvd = 1;
    d.rcvd = UINT64_C(1700000000999);
    tap_ok(ok && d.n_rcpt == 0 && d.has_name && d.has_type && d.size == m2.size,
           "tlv: copy_shared takes NAME/TYPE/SIZE/SENT and no recipient");
    ok = kmdc_tlv_encode(buf, sizeof(buf), &len, &d, KMDC_DIR_DOWN, &err) == KMDC_OK &&
         kmdc_tlv_decode(&m2, buf, len, KMDC_DIR_DOWN, &err) == KMDC_OK;
    tap_ok(ok && m2.n_rcpt == 0 && m2.has_from && strcmp(m2.from, "sender") == 0 &&
           m2.fromserial == KMDC_U63_MAX && m2.msgid == 1 && m2.rcvd == d.rcvd &&
           m2.sent == d.sent && m2.has_name && m2.name_len == strlen(name),
           "tlv: down round trip keeps every field");

    /* A down encoding of the up meta leaves RCPT out (with down fields set). */
    m.has_from = d.has_from;
    memcpy(m.from, d.from, sizeof(m.from));
    m.has_fromserial = m.has_msgid = m.has_rcvd = 1;
    m.fromserial = 7;
    m.msgid = 8;
    m.rcvd = 9;
    ok = kmdc_tlv_encode(buf, sizeof(buf), &len, &m, KMDC_DIR_DOWN, &err) == KMDC_OK &&
         kmdc_tlv_decode(&m2, buf, len, KMDC_DIR_DOWN, &err) == KMDC_OK;
    tap_ok(ok && m2.n_rcpt == 0 && memchr(buf, KMDC_TLV_RCPT, 1) == NULL,
           "tlv: a down encoding never carries RCPT");
    ok = kmdc_tlv_encode(buf, sizeof(buf), &len, &m, KMDC_DIR_UP, &err) == KMDC_OK &&
         kmdc_tlv_decode(&m2, buf, len, KMDC_DIR_UP, &err) == KMDC_OK;
    tap_ok(ok && !m2.has_from && !m2.has_msgid,
           "tlv: an up encoding never carries down-only fields");

    /* Encoder checks. */
    tap_ok(kmdc_tlv_encode(buf, 10, &len, &m, KMDC_DIR_UP, &err) == KMDC_ERR_LIMIT,
           "tlv: encode refuses a buffer that is too small");
    tap_ok(kmdc_tlv_encode(buf, sizeof(buf), &len, &m, 3, &err) == KMDC_ERR_ARG,
           "tlv: encode refuses an unknown direction");
    m2 = m;
    m2.name[0] = '/';
    tap_ok(kmdc_tlv_encode(buf, sizeof(buf), &len, &m2, KMDC_DIR_UP, &err) ==
           KMDC_ERR_NAME, "tlv: encode refuses a bad NAME with KMDC_ERR_NAME");
    m2 = m;
    m2.has_sent = 0;
    tap_ok(kmdc_tlv_encode(buf, sizeof(buf), &len, &m2, KMDC_DIR_UP, &err) ==
           KMDC_ERR_ARG, "tlv: encode refuses a meta without SENT");
    m2 = m;
    m2.n_rcpt = 0;
    tap_ok(kmdc_tlv_encode(buf, sizeof(buf), &len, &m2, KMDC_DIR_UP, &err) ==
           KMDC_ERR_ARG, "tlv: encode refuses an up meta without recipient");
    m2 = m;
    memcpy(m2.rcpt[1], "alice", 6);
    tap_ok(kmdc_tlv_encode(buf, sizeof(buf), &len, &m2, KMDC_DIR_UP, &err) ==
           KMDC_ERR_ARG, "tlv: encode refuses a duplicate recipient");
    m2 = m;
    m2.size = KMDC_MAX_DOC + 1;
    tap_ok(kmdc_tlv_encode(buf, sizeof(buf), &len, &m2, KMDC_DIR_UP, &err) ==
           KMDC_ERR_ARG, "tlv: encode refuses SIZE > 2^40");
    m2 = d;
    m2.msgid = 0;
    tap_ok(kmdc_tlv_encode(buf, sizeof(buf), &len, &m2, KMDC_DIR_DOWN, &err) ==
           KMDC_ERR_ARG, "tlv: encode refuses MSGID 0");

    /* Helpers. */
    ok = kmdc_meta_add_rcpt(&m, "alice", 5, &err) == KMDC_ERR_ARG &&
         kmdc_meta_add_rcpt(&m, "Alice", 5, &err) == KMDC_ERR_ARG;
    tap_ok(ok, "tlv: add_rcpt refuses a duplicate and an invalid address");
    tap_ok(kmdc_meta_set_name(&m, (const uint8_t *)"..", 2, &err) == KMDC_ERR_NAME,
           "tlv: set_name refuses \"..\" with KMDC_ERR_NAME");
}

static const unsigned known_types[] = {
    KMDC_TLV_NAME, KMDC_TLV_TYPE, KMDC_TLV_SIZE, KMDC_TLV_SENT,
    KMDC_TLV_FROM, KMDC_TLV_FROMSERIAL, KMDC_TLV_MSGID, KMDC_TLV_RCVD,
};
static const unsigned u64_types[] = {
    KMDC_TLV_SIZE, KMDC_TLV_SENT, KMDC_TLV_FROMSERIAL, KMDC_TLV_MSGID,
    KMDC_TLV_RCVD,
};

/* Each rule case builds its own entry list (too large for the stack). */
static struct tl *
tl_new(void)
{
    struct tl *t = calloc(1, sizeof(*t));

    if (t == NULL) {
        fprintf(stderr, "out of memory\n");
        exit(2);
    }
    return t;
}

/* Minimal up and down metadata. */
static void
rules_minimal(void)
{
    struct tl *t = tl_new();
    kmdc_meta m;

    base_up(t);
    tap_ok(dec(t, KMDC_DIR_UP, 0, &m) == KMDC_OK && m.n_rcpt == 1 &&
           m.size == 12345, "tlv: minimal up metadata is accepted");
    base_down(t);
    tap_ok(dec(t, KMDC_DIR_DOWN, 0, &m) == KMDC_OK && m.has_rcvd,
           "tlv: minimal down metadata is accepted");
    free(t);
}

/* Unknown types. */
static void
rules_unknown(void)
{
    struct tl *t = tl_new();
    kmdc_meta m;
    kmdc_status rc;

    base_up(t);
    add_str(t, 0x06, "x");
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "unknown critical type 0x06 is refused");
    base_up(t);
    add_str(t, 0x7f, "x");
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "unknown critical type 0x7f is refused");
    base_down(t);
    add_str(t, 0x14, "x");
    expect(t, KMDC_DIR_DOWN, 0, KMDC_ERR_FORMAT, "unknown critical type 0x14 is refused");
    base_up(t);
    add_str(t, 0x80, "optional");
    add(t, 0xff, "", 0);
    rc = dec(t, KMDC_DIR_UP, 0, &m);
    tap_ok(rc == KMDC_OK && m.n_rcpt == 1 && !m.has_name && !m.has_type,
           "tlv: optional types 0x80 and 0xff are skipped and not kept");
    free(t);
}

/* Duplicates of every type but RCPT, and of an unknown optional type. */
static void
rules_duplicates(void)
{
    struct tl *t = tl_new();
    char name[96];
    size_t i;

    for (i = 0; i < sizeof(known_types) / sizeof(known_types[0]); i++) {
        int dir = dir_of(known_types[i]);
        base_for(t, dir);
        drop(t, known_types[i]);
        switch (known_types[i]) {
        case KMDC_TLV_NAME:
            add_str(t, known_types[i], "a.txt");
            add_str(t, known_types[i], "b.txt");
            break;
        case KMDC_TLV_TYPE:
            add_str(t, known_types[i], "text/plain");
            add_str(t, known_types[i], "text/plain");
            break;
        case KMDC_TLV_FROM:
            add_str(t, known_types[i], "bob");
            add_str(t, known_types[i], "bob");
            break;
        default:
            add_u64(t, known_types[i], 5);
            add_u64(t, known_types[i], 5);
            break;
        }
        snprintf(name, sizeof(name), "duplicate type 0x%02x is refused", known_types[i]);
        expect(t, dir, 0, KMDC_ERR_FORMAT, name);
    }
    base_up(t);
    add_str(t, 0x80, "a");
    add_str(t, 0x80, "b");
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT,
           "duplicate unknown optional type 0x80 is refused");
    free(t);
}

/* RCPT rules. */
static void
rules_rcpt(void)
{
    struct tl *t = tl_new();
    kmdc_meta m;
    char name[96];
    size_t i;

    base_up(t);
    add_str(t, KMDC_TLV_RCPT, "bob");
    add_str(t, KMDC_TLV_RCPT, "alice");
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "duplicate RCPT address is refused");
    base_up(t);
    add_str(t, KMDC_TLV_RCPT, "bob");
    tap_ok(dec(t, KMDC_DIR_UP, 0, &m) == KMDC_OK && m.n_rcpt == 2,
           "tlv: two distinct RCPT entries are accepted");
    base_up(t);
    for (i = 1; i < 32; i++) {
        char a[8];
        snprintf(a, sizeof(a), "u%zu", i);
        add_str(t, KMDC_TLV_RCPT, a);
    }
    tap_ok(dec(t, KMDC_DIR_UP, 0, &m) == KMDC_OK && m.n_rcpt == 32,
           "tlv: 32 RCPT entries are accepted");
    add_str(t, KMDC_TLV_RCPT, "u32");
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "33 RCPT entries are refused");
    base_up(t);
    add_str(t, KMDC_TLV_RCPT, "Bob");
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "RCPT with an upper-case letter is refused");
    base_up(t);
    add(t, KMDC_TLV_RCPT, "", 0);
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "empty RCPT is refused");
    base_up(t);
    memset(name, 'a', 65);
    add(t, KMDC_TLV_RCPT, name, 65);
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "RCPT of 65 characters is refused");
    base_up(t);
    add(t, KMDC_TLV_RCPT, "bo\0b", 4);
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "RCPT with a NUL byte is refused");
    base_down(t);
    drop(t, KMDC_TLV_FROM);
    add_str(t, KMDC_TLV_FROM, ".bob");
    expect(t, KMDC_DIR_DOWN, 0, KMDC_ERR_FORMAT, "FROM that is not an address is refused");
    free(t);
}

/* Order. */
static void
rules_order(void)
{
    struct tl *t = tl_new();


    base_up(t);
    t->n = 0;
    add_str(t, KMDC_TLV_RCPT, "alice");
    add_u64(t, KMDC_TLV_SENT, 1);
    add_u64(t, KMDC_TLV_SIZE, 1);
    expect(t, KMDC_DIR_UP, 1, KMDC_ERR_FORMAT, "unsorted entries (SENT before SIZE) are refused");
    t->n = 0;
    add_u64(t, KMDC_TLV_SIZE, 1);
    add_str(t, KMDC_TLV_RCPT, "alice");
    add_u64(t, KMDC_TLV_SENT, 1);
    expect(t, KMDC_DIR_UP, 1, KMDC_ERR_FORMAT, "unsorted entries (RCPT after SIZE) are refused");
    t->n = 0;
    add_str(t, KMDC_TLV_RCPT, "alice");
    add_u64(t, KMDC_TLV_SIZE, 1);
    add_str(t, 0x80, "x");
    add_u64(t, KMDC_TLV_SENT, 1);
    expect(t, KMDC_DIR_UP, 1, KMDC_ERR_FORMAT, "an optional type before SENT is refused");
    free(t);
}

/* Wrong direction. */
static void
rules_direction(void)
{
    struct tl *t = tl_new();
    kmdc_meta m;

    base_down(t);
    add_str(t, KMDC_TLV_RCPT, "alice");
    expect(t, KMDC_DIR_DOWN, 0, KMDC_ERR_FORMAT, "RCPT in a down envelope is refused");
    base_up(t);
    add_str(t, KMDC_TLV_FROM, "bob");
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "FROM in an up envelope is refused");
    base_up(t);
    add_u64(t, KMDC_TLV_FROMSERIAL, 5);
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "FROMSERIAL in an up envelope is refused");
    base_up(t);
    add_u64(t, KMDC_TLV_MSGID, 5);
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "MSGID in an up envelope is refused");
    base_up(t);
    add_u64(t, KMDC_TLV_RCVD, 5);
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "RCVD in an up envelope is refused");
    tap_ok(dec(t, 0, 0, &m) == KMDC_ERR_ARG, "tlv: decode refuses an unknown direction");
    free(t);
}

/* 8-byte fields of length 7 and 9. */
static void
rules_u64_lengths(void)
{
    struct tl *t = tl_new();
    char name[96];
    size_t i;

    for (i = 0; i < sizeof(u64_types) / sizeof(u64_types[0]); i++) {
        static const size_t lens[2] = { 7, 9 };
        size_t k;
        for (k = 0; k < 2; k++) {
            uint8_t v[9] = { 0, 0, 0, 0, 0, 0, 0, 1, 0 };
            int dir = dir_of(u64_types[i]);
            base_for(t, dir);
            drop(t, u64_types[i]);
            add(t, u64_types[i], v, lens[k]);
            snprintf(name, sizeof(name), "type 0x%02x with a %zu-byte value is refused",
                     u64_types[i], lens[k]);
            expect(t, dir, 0, KMDC_ERR_FORMAT, name);
        }
    }
    free(t);
}

/* Ranges. */
static void
rules_ranges(void)
{
    struct tl *t = tl_new();
    kmdc_meta m;
    char name[96];

    base_up(t);
    drop(t, KMDC_TLV_SIZE);
    add_u64(t, KMDC_TLV_SIZE, KMDC_MAX_DOC);
    tap_ok(dec(t, KMDC_DIR_UP, 0, &m) == KMDC_OK && m.size == KMDC_MAX_DOC,
           "tlv: SIZE = 2^40 is accepted");
    drop(t, KMDC_TLV_SIZE);
    add_u64(t, KMDC_TLV_SIZE, KMDC_MAX_DOC + 1);
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "SIZE = 2^40 + 1 is refused");
    drop(t, KMDC_TLV_SIZE);
    add_u64(t, KMDC_TLV_SIZE, 0);
    tap_ok(dec(t, KMDC_DIR_UP, 0, &m) == KMDC_OK && m.has_size && m.size == 0,
           "tlv: SIZE = 0 is accepted");
    {
        static const unsigned ids[2] = { KMDC_TLV_FROMSERIAL, KMDC_TLV_MSGID };
        static const uint64_t badv[2] = { 0, KMDC_U63_MAX + 1 };
        size_t k, j;
        for (k = 0; k < 2; k++) {
            base_down(t);
            drop(t, ids[k]);
            add_u64(t, ids[k], KMDC_U63_MAX);
            snprintf(name, sizeof(name), "type 0x%02x = 2^63-1 is accepted", ids[k]);
            tap_ok(dec(t, KMDC_DIR_DOWN, 0, &m) == KMDC_OK, "tlv: %s", name);
            for (j = 0; j < 2; j++) {
                base_down(t);
                drop(t, ids[k]);
                add_u64(t, ids[k], badv[j]);
                snprintf(name, sizeof(name), "type 0x%02x = %s is refused", ids[k],
                         j == 0 ? "0" : "2^63");
                expect(t, KMDC_DIR_DOWN, 0, KMDC_ERR_FORMAT, name);
            }
        }
    }
    free(t);
}

/* Missing required fields. */
static void
rules_missing(void)
{
    struct tl *t = tl_new();
    kmdc_meta m;
    char name[96];
    size_t i;

    {
        static const unsigned up_req[] = { KMDC_TLV_RCPT, KMDC_TLV_SIZE, KMDC_TLV_SENT };
        static const unsigned down_req[] = {
            KMDC_TLV_SIZE, KMDC_TLV_SENT, KMDC_TLV_FROM, KMDC_TLV_FROMSERIAL,
            KMDC_TLV_MSGID, KMDC_TLV_RCVD,
        };
        for (i = 0; i < 3; i++) {
            base_up(t);
            drop(t, up_req[i]);
            snprintf(name, sizeof(name), "up metadata without type 0x%02x is refused",
                     up_req[i]);
            expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, name);
        }
        for (i = 0; i < 6; i++) {
            base_down(t);
            drop(t, down_req[i]);
            snprintf(name, sizeof(name), "down metadata without type 0x%02x is refused",
                     down_req[i]);
            expect(t, KMDC_DIR_DOWN, 0, KMDC_ERR_FORMAT, name);
        }
    }
    tap_ok(kmdc_tlv_decode(&m, (const uint8_t *)"", 0, KMDC_DIR_UP, NULL) ==
           KMDC_ERR_FORMAT, "tlv: empty metadata is refused");
    free(t);
}

/* Truncation. */
static void
rules_truncation(void)
{
    struct tl *t = tl_new();
    kmdc_meta m;

    base_up(t);
    serialise(t, 0);
    tap_ok(kmdc_tlv_decode(&m, t->out, t->outlen - 1, KMDC_DIR_UP, NULL) == KMDC_ERR_FORMAT,
           "tlv: a value cut short by the end is refused");
    t->out[t->outlen] = 0x80;
    tap_ok(kmdc_tlv_decode(&m, t->out, t->outlen + 1, KMDC_DIR_UP, NULL) == KMDC_ERR_FORMAT,
           "tlv: a 1-byte entry header at the end is refused");
    t->out[t->outlen + 1] = 0;
    tap_ok(kmdc_tlv_decode(&m, t->out, t->outlen + 2, KMDC_DIR_UP, NULL) == KMDC_ERR_FORMAT,
           "tlv: a 2-byte entry header at the end is refused");
    base_up(t);
    add(t, 0x80, "abc", 3);
    t->e[t->n - 1].forced_len = 4;
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "a value length past the end is refused");
    base_up(t);
    add(t, 0x80, "abc", 3);
    t->e[t->n - 1].forced_len = 0xffff;
    expect(t, KMDC_DIR_UP, 0, KMDC_ERR_FORMAT, "a value length of 65535 past the end is refused");
    base_up(t);
    add(t, 0x80, "", 0);
    t->e[t->n - 1].forced_len = 0;
    tap_ok(dec(t, KMDC_DIR_UP, 0, &m) == KMDC_OK,
           "tlv: an empty optional entry at the end is accepted");
    free(t);
}

static void
test_rules(void)
{
    TEST_RUN(rules_minimal);
    TEST_RUN(rules_unknown);
    TEST_RUN(rules_duplicates);
    TEST_RUN(rules_rcpt);
    TEST_RUN(rules_order);
    TEST_RUN(rules_direction);
    TEST_RUN(rules_u64_lengths);
    TEST_RUN(rules_ranges);
    TEST_RUN(rules_missing);
    TEST_RUN(rules_truncation);
}

struct name_case {
    const char *label;
    const char *v;
    size_t len;          /* 0: strlen */
    int ok;
};

/* The file name a receiver makes of a NAME: '_' before a leading '.' or '-'. */
static void
test_name_local(const char *max255)
{
    static const struct {
        const char *in, *out;
    } cases[] = {
        { ".bash_profile", "_.bash_profile" },
        { "-rf", "_-rf" },
        { "--help", "_--help" },
        { "...", "_..." },
        { "report.pdf", "report.pdf" },
        { "_x", "_x" },
        { "a-b.c", "a-b.c" },
        { "r\xc3\xa9sum\xc3\xa9", "r\xc3\xa9sum\xc3\xa9" },
    };
    char out[KMDC_NAME_MAX + 2], big[260];
    size_t i;
    int n;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        n = kmdc_name_local((const uint8_t *)cases[i].in, strlen(cases[i].in), out,
                            sizeof(out));
        tap_ok(n == (int)strlen(cases[i].out) && strcmp(out, cases[i].out) == 0,
               "tlv: name_local \"%s\" -> \"%s\"", cases[i].in, cases[i].out);
    }
    tap_ok(kmdc_name_local((const uint8_t *)"..", 2, out, sizeof(out)) == -1 &&
           kmdc_name_local((const uint8_t *)"a\xe2\x80\x8b", 4, out, sizeof(out)) == -1 &&
           kmdc_name_local((const uint8_t *)"a/b", 3, out, sizeof(out)) == -1,
           "tlv: name_local refuses what kmdc_name_valid refuses");
    big[0] = '-';
    memcpy(big + 1, max255, 254);
    n = kmdc_name_local((const uint8_t *)big, 255, out, sizeof(out));
    tap_ok(n == 256 && out[0] == '_' && out[1] == '-' && out[256] == '\0',
           "tlv: name_local of a 255-byte NAME starting with '-' is 256 bytes");
    tap_ok(kmdc_name_local((const uint8_t *)"-rf", 3, out, 4) == -1 &&
           kmdc_name_local((const uint8_t *)"-rf", 3, out, 5) == 4,
           "tlv: name_local needs room for the prefix and the NUL");
}

static void
test_names(void)
{
    static char big[300], max[300], maxu[300];
    static struct tl t;
    kmdc_meta m;
    size_t i;
    struct name_case cases[] = {
        { "\".\" is refused", ".", 0, 0 },
        { "\"..\" is refused", "..", 0, 0 },
        { "a slash is refused", "a/b", 0, 0 },
        { "a backslash is refused", "a\\b", 0, 0 },
        { "a NUL byte is refused", "a\0b", 3, 0 },
        { "0x1f (C0 control) is refused", "a\x1f" "b", 0, 0 },
        { "a tab is refused", "a\tb", 0, 0 },
        { "DEL is refused", "a\x7f" "b", 0, 0 },
        { "U+0085 (C1 control) is refused", "a\xc2\x85" "b", 0, 0 },
        { "U+009F (C1 control) is refused", "a\xc2\x9f", 0, 0 },
        { "U+202A is refused", "a\xe2\x80\xaa", 0, 0 },
        { "U+202E (RLO) is refused", "gpj\xe2\x80\xae.exe", 0, 0 },
        { "U+2066 is refused", "\xe2\x81\xa6" "a", 0, 0 },
        { "U+2069 is refused", "a\xe2\x81\xa9", 0, 0 },
        { "U+061C (Arabic letter mark) is refused", "a\xd8\x9c" "b", 0, 0 },
        { "U+200B (zero width space) is refused", "a\xe2\x80\x8b" "b", 0, 0 },
        { "U+200C is refused", "a\xe2\x80\x8c", 0, 0 },
        { "U+200D is refused", "\xe2\x80\x8d" "a", 0, 0 },
        { "U+200E (LRM) is refused", "a\xe2\x80\x8e", 0, 0 },
        { "U+200F (RLM) is refused", "a\xe2\x80\x8f", 0, 0 },
        { "U+2060 (word joiner) is refused", "a\xe2\x81\xa0", 0, 0 },
        { "U+2061 is refused", "a\xe2\x81\xa1", 0, 0 },
        { "U+2062 is refused", "a\xe2\x81\xa2", 0, 0 },
        { "U+2063 is refused", "a\xe2\x81\xa3", 0, 0 },
        { "U+2064 is refused", "a\xe2\x81\xa4", 0, 0 },
        { "U+2067 is refused", "a\xe2\x81\xa7", 0, 0 },
        { "U+2068 is refused", "a\xe2\x81\xa8", 0, 0 },
        { "U+FEFF (BOM) is refused", "\xef\xbb\xbf" "a.txt", 0, 0 },
        { "overlong 2-byte '/' is refused", "a\xc0\xaf" "b", 0, 0 },
        { "overlong 3-byte '/' is refused", "a\xe0\x80\xaf" "b", 0, 0 },
        { "overlong 4-byte form is refused", "\xf0\x82\x82\xac", 0, 0 },
        { "a UTF-16 surrogate is refused", "a\xed\xa0\x80" "b", 0, 0 },
        { "a code point above U+10FFFF is refused", "\xf4\x90\x80\x80", 0, 0 },
        { "a lone continuation byte is refused", "a\x80", 0, 0 },
        { "a truncated sequence is refused", "a\xc3", 0, 0 },
        { "byte 0xff is refused", "a\xff", 0, 0 },
        { "256 bytes are refused", big, 256, 0 },
        { "an empty name is refused", "", 0, 0 },
        { "\"r\xc3\xa9sum\xc3\xa9.pdf\" is accepted", "r\xc3\xa9sum\xc3\xa9.pdf", 0, 1 },
        { "255 ASCII bytes are accepted", max, 255, 1 },
        { "255 bytes of 3-byte characters are accepted", maxu, 255, 1 },
        { "\"...\" is accepted", "...", 0, 1 },
        { "\".hidden\" is accepted", ".hidden", 0, 1 },
        { "U+00A0 is accepted", "a\xc2\xa0" "b", 0, 1 },
        { "U+202F is accepted", "a\xe2\x80\xaf", 0, 1 },
        { "U+061B is accepted", "a\xd8\x9b", 0, 1 },
        { "U+200A is accepted", "a\xe2\x80\x8a", 0, 1 },
        { "U+2010 is accepted", "a\xe2\x80\x90", 0, 1 },
        { "U+2065 is accepted", "a\xe2\x81\xa5", 0, 1 },
        { "U+206A is accepted", "a\xe2\x81\xaa", 0, 1 },
        { "U+FEFE is accepted", "a\xef\xbb\xbe", 0, 1 },
        { "U+FF00 is accepted", "a\xef\xbc\x80", 0, 1 },
        { "\"-rf\" is accepted (the receiver prefixes it)", "-rf", 0, 1 },
        { "a 4-byte emoji is accepted", "\xf0\x9f\x93\x84.txt", 0, 1 },
        { "U+10FFFF is accepted", "\xf4\x8f\xbf\xbf", 0, 1 },
        { "spaces are accepted", "my report (final).txt", 0, 1 },
    };

    memset(big, 'a', 256);
    memset(max, 'b', 255);
    for (i = 0; i + 3 <= 255; i += 3)
        memcpy(maxu + i, "\xe6\x96\x87", 3);
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].v);
        kmdc_status rc;
        int direct = kmdc_name_valid((const uint8_t *)cases[i].v, len);

        base_up(&t);
        add(&t, KMDC_TLV_NAME, cases[i].v, len);
        rc = dec(&t, KMDC_DIR_UP, 0, &m);
        if (cases[i].ok)
            tap_ok(direct == 1 && rc == KMDC_OK && m.has_name && m.name_len == len &&
                   memcmp(m.name, cases[i].v, len) == 0 && m.name[len] == 0,
                   "tlv: NAME %s", cases[i].label);
        else
            tap_ok(direct == 0 && rc == KMDC_ERR_NAME,
                   "tlv: NAME %s (KMDC_ERR_NAME)", cases[i].label);
    }
    test_name_local(max);
}

static void
test_types(void)
{
    static char t127[128], t128[129];
    static struct tl t;
    kmdc_meta m;
    size_t i;
    struct name_case cases[] = {
        { "text/plain is accepted", "text/plain", 0, 1 },
        { "application/vnd.kmdc.envelope is accepted", "application/vnd.kmdc.envelope", 0, 1 },
        { "application/ld+json is accepted", "application/ld+json", 0, 1 },
        { "x-foo/a!#$&-^_.+ is accepted", "x-foo/a!#$&-^_.+", 0, 1 },
        { "127 bytes are accepted", t127, 127, 1 },
        { "128 bytes are refused", t128, 128, 0 },
        { "a type without subtype is refused", "text", 0, 0 },
        { "an empty subtype is refused", "text/", 0, 0 },
        { "an empty type is refused", "/plain", 0, 0 },
        { "a parameter is refused", "text/plain;charset=utf-8", 0, 0 },
        { "a space is refused", "text/pl ain", 0, 0 },
        { "a second slash is refused", "a/b/c", 0, 0 },
        { "a type starting with '-' is refused", "-text/plain", 0, 0 },
        { "a subtype starting with '+' is refused", "text/+plain", 0, 0 },
        { "a NUL byte is refused", "text/pl\0n", 9, 0 },
        { "a non-ASCII byte is refused", "text/pl\xc3\xa4n", 0, 0 },
        { "an empty TYPE is refused", "", 0, 0 },
    };

    memset(t127, 'a', 127);
    t127[1] = '/';
    memset(t128, 'a', 128);
    t128[64] = '/';
    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        size_t len = cases[i].len ? cases[i].len : strlen(cases[i].v);
        kmdc_status rc;
        int direct = kmdc_type_valid((const uint8_t *)cases[i].v, len);

        base_up(&t);
        add(&t, KMDC_TLV_TYPE, cases[i].v, len);
        rc = dec(&t, KMDC_DIR_UP, 0, &m);
        if (cases[i].ok)
            tap_ok(direct == 1 && rc == KMDC_OK && m.has_type && m.type_len == len &&
                   memcmp(m.type, cases[i].v, len) == 0,
                   "tlv: TYPE %s", cases[i].label);
        else
            tap_ok(direct == 0 && rc == KMDC_ERR_FORMAT, "tlv: TYPE %s", cases[i].label);
    }
}

int
main(void)
{
    test_round_trips();
    test_rules();
    test_names();
    test_types();
    return tap_done();
}
