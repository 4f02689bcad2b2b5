/* test_intake.c - the send intake (lib/kmdc_intake.h) and the body adapter
 * (lib/kmdc_sendbody.h) against the in-memory store (tests/memstore.h).
 *
 * Every case builds its own fixture: a fresh memstore, a keyring with one
 * master key, the cards it needs (chain keys derived from the serial), and a
 * fixed clock.  Envelopes are sealed on the client side with the card's raw
 * up chain, fed in slices of 1 byte, 7 bytes or whole, and the answer and
 * the store are checked afterwards: a delivery is opened with the
 * recipient's down chain and its payload decrypted back to the document.
 * Each check is one TAP line whatever happens, so the count is fixed.
 *
 * `test_intake --seeds DIR` writes the seed corpus of fuzz/fuzz_intake.c
 * (fuzz/corpus/intake/): authentic envelopes of the fuzzer's fixture. */
#include <inttypes.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_intake.h"
#include "kmdc_sendbody.h"
#include "kmdc_util.h"
#include "fixtures.h"
#include "memstore.h"
#include "tap.h"

#define MAX_AGE 86400
#define CH KMDC_CHUNK_LEN
#define CT KMDC_CHUNK_CT_MAX

/* cards */
#define ALICE UINT64_C(0x1a11ce0000000001)
#define BOB UINT64_C(0x0b0b000000000002)
#define CAROL UINT64_C(0x0ca2010000000003)
#define DAVE UINT64_C(0x0da0e00000000004)
#define NULLC UINT64_C(0x0000000000000ab5)
#define FOLD1 UINT64_C(0x0000000100000001)
#define FOLD2 UINT64_C(0x0000000200000002)

static const uint8_t MASTER[32] = {
    0x6b, 0x6d, 0x64, 0x63, 0x2d, 0x74, 0x65, 0x73, 0x74, 0x2d, 0x6d,
    0x61, 0x73, 0x74, 0x65, 0x72, 0x2d, 0x6b, 0x65, 0x79, 0x2d, 0x30,
    0x31, 0x32, 0x33, 0x34, 0x35, 0x36, 0x37, 0x38, 0x39, 0x0a,
};

/* ------------------------------------------------------------------ */
/* buffers and documents                                              */

/* A document of len bytes; seed varies its content. */
static uint8_t *
make_doc(size_t len, unsigned seed)
{
    uint8_t *p = malloc(len ? len : 1);
    size_t i;

    if (p == NULL)
        exit(2);
    for (i = 0; i < len; i++)
        p[i] = (uint8_t)(((i + seed * 977u) * 2654435761u) >> 13 ^ (i >> 16) ^ seed);
    return p;
}

__attribute__((noreturn)) static void
die(const char *what)
{
    fprintf(stderr, "test_intake: %s\n", what);
    exit(2);
}

/* ------------------------------------------------------------------ */
/* the fixture                                                        */

struct fx {
    memstore *ms;
    kmdc_master_key mkey;
    kmdc_keyring ring;
    kmdc_intake_conf conf;
};

/* MK_n of a chain and, when ck_next is not NULL, CK_{n+1}. */
static void
chain_at(uint64_t serial, int up, uint64_t n, uint8_t mk[32], uint8_t ck_next[32])
{
    uint8_t ck[32];

    card_key(serial, up, ck);
    if (kmdc_chain_seek(ck, 0, n, mk, NULL) != KMDC_OK)
        die("chain_seek");
    if (ck_next != NULL && kmdc_chain_step(NULL, ck_next, ck, NULL) != KMDC_OK)
        die("chain_step");
    kmdc_wipe(ck, sizeof(ck));
}

/* CK_n itself. */
static void
chain_ck(uint64_t serial, int up, uint64_t n, uint8_t out[32])
{
    card_key(serial, up, out);
    if (kmdc_chain_seek(out, 0, n, NULL, NULL) != KMDC_OK)
        die("chain_seek");
}

static void
fx_init(struct fx *f)
{
    memset(f, 0, sizeof(*f));
    if ((f->ms = memstore_new()) == NULL)
        die("memstore_new");
    f->mkey.id = 7;
    memcpy(f->mkey.key, MASTER, 32);
    f->ring.n = 1;
    f->ring.keys = &f->mkey;
    f->ring.newest = 7;
    f->conf.keys = &f->ring;
    f->conf.seq_window = 64;
    f->conf.envelope_max_age = MAX_AGE;
    f->conf.max_document_size = UINT64_C(1) << 20;
    f->conf.max_recipients = 8;
    f->conf.max_uploads_per_card = 4;
    f->conf.mailbox_ttl = 7 * 86400;
    f->conf.quota_count = 1000;
    f->conf.quota_bytes = INT64_C(1) << 34;
    f->conf.batch_bytes = 0;
    f->conf.now_ms = fixed_now;
}

static void
fx_card(struct fx *f, uint64_t serial, const char *addr, kmdc_card_status st)
{
    uint8_t uck[32], dck[32];

    card_key(serial, 1, uck);
    card_key(serial, 0, dck);
    if (memstore_add_card(f->ms, &f->ring, serial, addr, st, uck, dck) != 0)
        die("memstore_add_card");
}

/* The usual cast: alice sends, bob, carol and dave receive. */
static void
fx_std(struct fx *f)
{
    fx_init(f);
    fx_card(f, ALICE, "alice", KMDC_CARD_ST_ACTIVE);
    fx_card(f, BOB, "bob", KMDC_CARD_ST_ACTIVE);
    fx_card(f, CAROL, "carol", KMDC_CARD_ST_ACTIVE);
    fx_card(f, DAVE, "dave", KMDC_CARD_ST_ACTIVE);
}

static uint64_t
up_next(struct fx *f, uint64_t serial)
{
    ms_card *c = memstore_card(f->ms, serial);

    return c != NULL ? c->up_next : UINT64_MAX;
}

/* One TAP line: the store saw nothing a correct caller never does. */
static void
fx_done(struct fx *f, const char *name)
{
    if (!tap_ok(f->ms->violations == 0 && !memstore_slots_conflict(f->ms),
                "%s: the store saw no violation", name))
        tap_diag("%lu violation(s): %s", f->ms->violations, f->ms->violation);
    memstore_free(f->ms);
    f->ms = NULL;
}

/* ------------------------------------------------------------------ */
/* sealing on the client side                                         */

struct spec {
    uint64_t serial, seq;
    const char *to;          /* comma-separated addresses */
    const char *name;        /* NULL: none */
    const char *type;        /* NULL: none */
    uint64_t sent;           /* 0: the fixed clock */
    const uint8_t *doc;
    size_t len;
    int key_off;             /* seal with MK_{seq + key_off} */
};

static void
seal(struct buf *out, const struct spec *s)
{
    kmdc_header h;
    kmdc_meta m;
    kmdc_seal *sl;
    uint8_t mk[32];
    const char *p = s->to, *comma;
    kmdc_err err;
    size_t off;

    kmdc_meta_init(&m);
    while (p != NULL && *p) {
        size_t n;

        comma = strchr(p, ',');
        n = comma ? (size_t)(comma - p) : strlen(p);
        if (kmdc_meta_add_rcpt(&m, p, n, &err) != KMDC_OK)
            die(err.msg);
        p = comma ? comma + 1 : NULL;
    }
    if (s->name != NULL &&
        kmdc_meta_set_name(&m, (const uint8_t *)s->name, strlen(s->name), &err) != KMDC_OK)
        die(err.msg);
    if (s->type != NULL && kmdc_meta_set_type(&m, s->type, strlen(s->type), &err) != KMDC_OK)
        die(err.msg);
    m.has_size = 1;
    m.size = s->len;
    m.has_sent = 1;
    m.sent = s->sent ? s->sent : NOW_MS;
    chain_at(s->serial, 1, s->seq + (uint64_t)s->key_off, mk, NULL);
    if (kmdc_header_new(&h, KMDC_DIR_UP, s->serial, s->seq, &err) != KMDC_OK ||
        (sl = kmdc_seal_new(&h, mk, NULL, &m, &err)) == NULL)
        die(err.msg);
    for (off = 0; off < s->len; off += 100000) {
        size_t n = s->len - off < 100000 ? s->len - off : 100000;
        if (kmdc_seal_update(sl, s->doc + off, n, emit_buf, out, &err) != KMDC_OK)
            die(err.msg);
    }
    if (kmdc_seal_final(sl, emit_buf, out, &err) != KMDC_OK)
        die(err.msg);
    kmdc_seal_free(sl);
    kmdc_wipe(mk, sizeof(mk));
}

/* TLV entries by hand, for what kmdc_meta refuses to hold. */
static void
tlv_add(struct buf *t, uint8_t type, const void *v, size_t len)
{
    uint8_t h[3];

    h[0] = type;
    kmdc_put_u16(h + 1, (uint16_t)len);
    buf_add(t, h, 3);
    buf_add(t, v, len);
}

static void
tlv_u64(struct buf *t, uint8_t type, uint64_t v)
{
    uint8_t b[8];

    kmdc_put_u64(b, v);
    tlv_add(t, type, b, 8);
}

/* An up envelope whose keyblock holds DEK || tlv as given (authentic: it is
 * sealed with the card's MK_seq), payload of doc for `size`. */
static void
seal_tlv(struct buf *out, uint64_t serial, uint64_t seq, const struct buf *tlv,
         const uint8_t *doc, size_t len)
{
    static const uint8_t zero_iv[12];
    uint8_t hb[KMDC_HEADER_LEN], mk[32], kbk[32], dek[32], lenb[4];
    uint8_t *pt, *kb;
    kmdc_header h;
    kmdc_payload_enc *e;
    kmdc_err err;

    chain_at(serial, 1, seq, mk, NULL);
    if (kmdc_header_new(&h, KMDC_DIR_UP, serial, seq, &err) != KMDC_OK ||
        kmdc_header_encode(hb, &h, &err) != KMDC_OK ||
        kmdc_random(dek, 32, &err) != KMDC_OK ||
        kmdc_kbk_derive(kbk, h.salt, mk, &err) != KMDC_OK)
        die(err.msg);
    if ((pt = malloc(32 + tlv->n)) == NULL || (kb = malloc(32 + tlv->n + 16)) == NULL)
        die("out of memory");
    memcpy(pt, dek, 32);
    memcpy(pt + 32, tlv->p, tlv->n);
    if (kmdc_gcm_seal(kb, kbk, zero_iv, hb, sizeof(hb), pt, 32 + tlv->n, &err) != KMDC_OK)
        die(err.msg);
    buf_add(out, hb, sizeof(hb));
    kmdc_put_u32(lenb, (uint32_t)(32 + tlv->n + 16));
    buf_add(out, lenb, 4);
    buf_add(out, kb, 32 + tlv->n + 16);
    if ((e = kmdc_payload_enc_new(dek, len, &err)) == NULL ||
        kmdc_payload_enc_update(e, doc, len, emit_buf, out, &err) != KMDC_OK ||
        kmdc_payload_enc_final(e, emit_buf, out, &err) != KMDC_OK)
        die(err.msg);
    kmdc_payload_enc_free(e);
    free(pt);
    free(kb);
}

static size_t
prefix_len(const struct buf *env)
{
    return KMDC_HEADER_LEN + 4 + kmdc_get_u32(env->p + KMDC_HEADER_LEN);
}

static void
sha(uint8_t out[32], const void *p, size_t len)
{
    if (kmdc_sha256(out, p, len, NULL) != KMDC_OK)
        die("sha256");
}

/* ------------------------------------------------------------------ */
/* running the intake                                                 */

enum end { END_FINISH, END_BROKEN, END_TOO_LARGE, END_NONE };

struct res {
    int decided;
    int stopped;                 /* feed returned 0 */
    kmdc_intake_result result;
    int status;
    char code[64];               /* "" for none */
    char body[KMDC_RECEIPT_ANSWER_MAX + 64];
    uint64_t msg;
    size_t recipients;
    uint64_t bytes;
    int have_header;
    uint64_t hserial, hseq;
    char problem[256];           /* kmdc_intake_problem, for a 500 */
};

static kmdc_intake *
in_new(struct fx *f)
{
    kmdc_err err;
    kmdc_intake *in = kmdc_intake_new(&f->conf, &f->ms->base, &err);

    if (in == NULL)
        die(err.msg);
    return in;
}

/* Feed len bytes in slices (0: whole); 0 once the intake stopped reading. */
static int
feed(kmdc_intake *in, const uint8_t *p, size_t len, size_t slice)
{
    size_t off = 0;

    if (slice == 0)
        slice = len ? len : 1;
    while (off < len) {
        size_t n = len - off < slice ? len - off : slice;
        if (!kmdc_intake_feed(in, p + off, n))
            return 0;
        off += n;
    }
    return 1;
}

static void
grab(kmdc_intake *in, struct res *r)
{
    const kmdc_intake_answer *a = kmdc_intake_decision(in);

    r->decided = a != NULL;
    r->recipients = kmdc_intake_recipients(in);
    r->bytes = kmdc_intake_bytes(in);
    r->have_header = kmdc_intake_header(in, &r->hserial, &r->hseq);
    snprintf(r->problem, sizeof(r->problem), "%s",
             kmdc_intake_problem(in) ? kmdc_intake_problem(in) : "");
    if (a == NULL)
        return;
    r->result = a->result;
    r->status = a->status;
    snprintf(r->code, sizeof(r->code), "%s", a->code ? a->code : "");
    snprintf(r->body, sizeof(r->body), "%s", a->body ? a->body : "");
    r->msg = a->message_id;
}

/* Run one upload of env[0..len) (len may cut it) and free the intake. */
static void
run_n(struct fx *f, const uint8_t *p, size_t len, size_t slice, enum end end, struct res *r)
{
    kmdc_intake *in = in_new(f);

    memset(r, 0, sizeof(*r));
    r->stopped = !feed(in, p, len, slice);
    if (!r->stopped) {
        if (end == END_FINISH)
            kmdc_intake_finish(in);
        else if (end == END_BROKEN)
            kmdc_intake_cut_off(in, KMDC_INTAKE_CUT_BROKEN);
        else if (end == END_TOO_LARGE)
            kmdc_intake_cut_off(in, KMDC_INTAKE_CUT_TOO_LARGE);
    }
    grab(in, r);
    kmdc_intake_free(in);
}

static void
run(struct fx *f, const struct buf *env, size_t slice, struct res *r)
{
    run_n(f, env->p, env->n, slice, END_FINISH, r);
}

/* ------------------------------------------------------------------ */
/* checking answers                                                   */

static const char *
result_name(kmdc_intake_result r)
{
    switch (r) {
    case KMDC_INTAKE_ACCEPTED: return "accepted";
    case KMDC_INTAKE_REPEATED: return "repeated";
    case KMDC_INTAKE_REFUSED: return "refused";
    case KMDC_INTAKE_REJECTED: return "rejected";
    case KMDC_INTAKE_UNAVAILABLE: return "unavailable";
    }
    return "none";
}

/* The JSON error code of body, or "" when it is not an error body. */
static void
err_code_of(const char *body, char *out, size_t cap)
{
    json_error_t je;
    json_t *o = json_loads(body, 0, &je);
    json_t *e = o ? json_object_get(o, "error") : NULL;
    json_t *m = o ? json_object_get(o, "message") : NULL;

    snprintf(out, cap, "%s", "");
    if (json_is_string(e) && json_is_string(m) && json_object_size(o) == 2)
        snprintf(out, cap, "%s", json_string_value(e));
    json_decref(o);
}

/* 1 when body is {"message":"<16 hex of msg>","deliveries":n}. */
static int
json_created(const char *body, uint64_t msg, size_t n)
{
    json_error_t je;
    json_t *o = json_loads(body, 0, &je);
    json_t *m = o ? json_object_get(o, "message") : NULL;
    json_t *d = o ? json_object_get(o, "deliveries") : NULL;
    char hex[17];
    int ok;

    kmdc_serial_format(hex, msg);
    ok = json_is_string(m) && strcmp(json_string_value(m), hex) == 0 &&
         json_is_integer(d) && json_integer_value(d) == (json_int_t)n &&
         json_object_size(o) == 2;
    json_decref(o);
    return ok;
}

/* One TAP line: the answer is an error with this status and code (and
 * result; 0 = any), its body the JSON error of that code. */
static int
expect_error(const struct res *r, int status, const char *code,
             kmdc_intake_result result, const char *name)
{
    char jcode[64];
    int ok;

    err_code_of(r->body, jcode, sizeof(jcode));
    ok = r->decided && r->status == status && strcmp(r->code, code) == 0 &&
         strcmp(jcode, code) == 0 && (result == 0 || r->result == result) &&
         r->msg == 0;
    if (!tap_ok(ok, "%s: %d %s (%s)", name, status, code,
                result ? result_name(result) : "any"))
        tap_diag("got decided=%d %d '%s' %s, body %s %s", r->decided, r->status, r->code,
                 result_name(r->result), r->body, r->problem);
    return ok;
}

/* One TAP line: a repeated answer: status, body as stored, result REPEATED. */
static int
expect_repeat(const struct res *r, int status, const char *body, uint64_t msg,
              const char *name)
{
    int ok = r->decided && r->status == status && r->result == KMDC_INTAKE_REPEATED &&
             strcmp(r->body, body) == 0 && r->msg == msg;

    if (!tap_ok(ok, "%s: %d repeated from the receipt", name, status))
        tap_diag("got decided=%d %d '%s' %s msg %016" PRIx64 ", body %s (want %s)",
                 r->decided, r->status, r->code, result_name(r->result), r->msg,
                 r->body, body);
    return ok;
}

/* What a case checks against after the upload. */
struct snap {
    uint64_t up_next;
    size_t messages, receipts, deliveries;
    unsigned long audit;
};

static void
snap(struct fx *f, uint64_t serial, struct snap *s)
{
    s->up_next = up_next(f, serial);
    s->messages = f->ms->n_messages;
    s->receipts = f->ms->n_receipts;
    s->deliveries = f->ms->n_deliveries;
    s->audit = f->ms->audit_rows;
}

/* One TAP line: nothing changed (no counter, message, receipt, delivery,
 * audit row; no lease and no unpublished upload left). */
static int
expect_nothing(struct fx *f, uint64_t serial, const struct snap *s, const char *name)
{
    int ok = up_next(f, serial) == s->up_next && f->ms->n_messages == s->messages &&
             f->ms->n_receipts == s->receipts && f->ms->n_deliveries == s->deliveries &&
             f->ms->audit_rows == s->audit && memstore_leases(f->ms, 0, 0) == 0 &&
             memstore_orphans(f->ms) == 0;

    if (!tap_ok(ok, "%s: nothing spent or written, nothing left behind", name))
        tap_diag("up_next %" PRIu64 " (was %" PRIu64 "), messages %zu/%zu, receipts %zu/%zu, "
                 "audit %lu/%lu, leases %zu, orphans %zu", up_next(f, serial), s->up_next,
                 f->ms->n_messages, s->messages, f->ms->n_receipts, s->receipts,
                 f->ms->audit_rows, s->audit, memstore_leases(f->ms, 0, 0),
                 memstore_orphans(f->ms));
    return ok;
}

/* One TAP line: seq was spent with this answer: up_next = seq + 1, the up
 * chain is CK_{seq+1}, a keyblock-scope receipt over the prefix holds the
 * answer, an audit row, no message, nothing left behind. */
static int
expect_spent(struct fx *f, const struct buf *env, const struct res *r, const struct snap *s,
             const char *name)
{
    uint64_t serial = kmdc_get_u64(env->p + 8), seq = kmdc_get_u64(env->p + 16);
    const ms_receipt *rc = memstore_receipt(f->ms, serial, seq);
    uint8_t ph[32], ck[32], want[32];
    int ok;

    sha(ph, env->p, prefix_len(env));
    chain_ck(serial, 1, seq + 1, want);
    ok = up_next(f, serial) == seq + 1 &&
         memstore_card_chain(f->ms, &f->ring, serial, 1, ck) == 0 &&
         memcmp(ck, want, 32) == 0 && rc != NULL && rc->r.scope == KMDC_SCOPE_KEYBLOCK &&
         memcmp(rc->r.hash, ph, 32) == 0 && rc->r.http_status == r->status &&
         strcmp(rc->r.answer, r->body) == 0 && rc->r.message_id == 0 &&
         f->ms->n_receipts == s->receipts + 1 && f->ms->audit_rows == s->audit + 1 &&
         f->ms->n_messages == s->messages && f->ms->n_deliveries == s->deliveries &&
         memstore_leases(f->ms, 0, 0) == 0 && memstore_orphans(f->ms) == 0 &&
         r->result == KMDC_INTAKE_REFUSED;
    if (!tap_ok(ok, "%s: the counter is spent with a keyblock-scope receipt", name))
        tap_diag("up_next %" PRIu64 " (seq %" PRIu64 "), receipt %s scope %d status %d, "
                 "messages %zu/%zu, audit %lu/%lu, leases %zu, orphans %zu, result %s",
                 up_next(f, serial), seq, rc ? "yes" : "no", rc ? (int)rc->r.scope : 0,
                 rc ? rc->r.http_status : 0, f->ms->n_messages, s->messages,
                 f->ms->audit_rows, s->audit, memstore_leases(f->ms, 0, 0),
                 memstore_orphans(f->ms), result_name(r->result));
    return ok;
}

/* Open a delivery as its recipient does; 0 on success (dek and m filled). */
static int
open_delivery(const ms_delivery *d, uint64_t rserial, uint8_t dek[32], kmdc_meta *m,
              char *why, size_t whycap)
{
    kmdc_header h;
    uint8_t mk[32];
    uint32_t kb;
    int auth = 0;
    kmdc_err err;

    if (d->head_len < KMDC_HEADER_LEN + 4) {
        snprintf(why, whycap, "head of %zu bytes", d->head_len);
        return -1;
    }
    if (kmdc_header_decode(&h, d->head, &err) != KMDC_OK || h.direction != KMDC_DIR_DOWN ||
        h.serial != rserial || h.seq != d->seq) {
        snprintf(why, whycap, "down header wrong");
        return -1;
    }
    kb = kmdc_get_u32(d->head + KMDC_HEADER_LEN);
    if ((size_t)kb + KMDC_HEADER_LEN + 4 != d->head_len) {
        snprintf(why, whycap, "kb_len %u in a head of %zu", kb, d->head_len);
        return -1;
    }
    chain_at(rserial, 0, d->seq, mk, NULL);
    if (kmdc_keyblock_open(dek, m, &auth, d->head, mk, d->head + KMDC_HEADER_LEN + 4, kb,
                           &err) != KMDC_OK) {
        snprintf(why, whycap, "keyblock_open: %.200s", err.msg);
        return -1;
    }
    return 0;
}

/* Decrypt a message's stored payload with dek; 1 when it is the doc. */
static int
payload_is(struct fx *f, const ms_message *msg, const uint8_t dek[32], const uint8_t *doc,
           size_t len)
{
    struct buf out = { 0 };
    size_t plen = 0;
    uint8_t *p = memstore_payload(f->ms, msg->upload_id, &plen);
    kmdc_payload_dec *d;
    kmdc_err err;
    int ok = 0;

    if (p == NULL)
        return 0;
    if ((d = kmdc_payload_dec_new(dek, msg->size, &err)) != NULL &&
        kmdc_payload_dec_update(d, p, plen, emit_buf, &out, &err) == KMDC_OK &&
        kmdc_payload_dec_final(d, &err) == KMDC_OK)
        ok = out.n == len && (len == 0 || memcmp(out.p, doc, len) == 0);
    kmdc_payload_dec_free(d);
    free(p);
    buf_free(&out);
    return ok;
}

struct want {
    uint64_t sender;
    const char *from;            /* the sender's address */
    uint64_t rcpt[KMDC_RCPT_MAX];
    size_t n;
    const char *name;            /* NULL: none */
    const char *type;
    uint64_t sent;               /* 0: NOW_MS */
    const uint8_t *doc;
    size_t len;
};

/*
 * Three TAP lines for an accepted envelope: the answer; the store (message,
 * receipt, chains, nothing left behind); and every recipient opening its
 * delivery and decrypting the document.  down_before[i]: recipient i's
 * down_next before the upload.
 */
static void
expect_accepted(struct fx *f, const struct buf *env, const struct res *r,
                const struct snap *s, const struct want *w, const uint64_t *down_before,
                const char *name)
{
    uint64_t seq = kmdc_get_u64(env->p + 16);
    const ms_message *msg = memstore_message(f->ms, r->msg);
    const ms_receipt *rc = memstore_receipt(f->ms, w->sender, seq);
    uint8_t full[32], ph[32], ck[32], want_ck[32];
    char why[256] = "";
    size_t i;
    int ok;

    ok = r->decided && r->status == 201 && r->code[0] == '\0' &&
         r->result == KMDC_INTAKE_ACCEPTED && r->msg != 0 && json_created(r->body, r->msg, w->n) &&
         r->recipients == w->n && r->bytes == env->n && r->have_header &&
         r->hserial == w->sender && r->hseq == seq;
    if (!tap_ok(ok, "%s: 201 with {message, deliveries: %zu}", name, w->n))
        tap_diag("got decided=%d %d '%s' %s msg %016" PRIx64 " rcpts %zu bytes %" PRIu64
                 ", body %s", r->decided, r->status, r->code, result_name(r->result),
                 r->msg, r->recipients, r->bytes, r->body);

    sha(full, env->p, env->n);
    sha(ph, env->p, prefix_len(env));
    chain_ck(w->sender, 1, seq + 1, want_ck);
    ok = msg != NULL && msg->sender == w->sender && msg->seq == seq && msg->size == w->len &&
         msg->payload_len == kmdc_payload_len(w->len) && msg->n_rcpt == w->n &&
         memcmp(msg->rcpt, w->rcpt, w->n * sizeof(w->rcpt[0])) == 0 &&
         f->ms->n_messages == s->messages + 1 &&
         memstore_message_deliveries(f->ms, r->msg) == w->n &&
         f->ms->n_deliveries == s->deliveries + w->n &&
         rc != NULL && rc->r.scope == KMDC_SCOPE_ENVELOPE && memcmp(rc->r.hash, full, 32) == 0 &&
         rc->r.has_prefix_hash && memcmp(rc->r.prefix_hash, ph, 32) == 0 &&
         rc->r.http_status == 201 && strcmp(rc->r.answer, r->body) == 0 &&
         rc->r.message_id == r->msg && f->ms->audit_rows == s->audit + 1 &&
         up_next(f, w->sender) == seq + 1 &&
         memstore_card_chain(f->ms, &f->ring, w->sender, 1, ck) == 0 &&
         memcmp(ck, want_ck, 32) == 0 && memstore_leases(f->ms, 0, 0) == 0 &&
         memstore_orphans(f->ms) == 0;
    if (!tap_ok(ok, "%s: message, receipt, up chain at %" PRIu64 ", nothing left behind",
                name, seq + 1))
        tap_diag("msg %s, messages %zu/%zu, deliveries %zu, receipt %s, audit %lu/%lu, "
                 "up_next %" PRIu64 ", leases %zu, orphans %zu", msg ? "yes" : "no",
                 f->ms->n_messages, s->messages,
                 memstore_message_deliveries(f->ms, r->msg), rc ? "yes" : "no",
                 f->ms->audit_rows, s->audit, up_next(f, w->sender),
                 memstore_leases(f->ms, 0, 0), memstore_orphans(f->ms));

    ok = msg != NULL;
    for (i = 0; ok && i < w->n; i++) {
        const ms_delivery *d = NULL;
        size_t k;
        uint8_t dek[32];
        kmdc_meta m;

        for (k = 0; (d = memstore_delivery(f->ms, w->rcpt[i], k)) != NULL; k++)
            if (d->message_id == r->msg)
                break;
        if (d == NULL) {
            snprintf(why, sizeof(why), "no delivery for recipient %zu", i);
            ok = 0;
            break;
        }
        if (d->seq != down_before[i]) {
            snprintf(why, sizeof(why), "recipient %zu: down seq %" PRIu64 ", want %" PRIu64,
                     i, d->seq, down_before[i]);
            ok = 0;
            break;
        }
        if (open_delivery(d, w->rcpt[i], dek, &m, why, sizeof(why)) != 0) {
            ok = 0;
            break;
        }
        ok = m.has_from && strcmp(m.from, w->from) == 0 && m.has_fromserial &&
             m.fromserial == w->sender && m.has_msgid && m.msgid == r->msg &&
             m.has_size && m.size == w->len && m.has_rcvd && m.rcvd == NOW_MS &&
             m.has_sent && m.sent == (w->sent ? w->sent : NOW_MS) && m.n_rcpt == 0 &&
             (w->name == NULL ? !m.has_name
                              : m.has_name && m.name_len == strlen(w->name) &&
                                memcmp(m.name, w->name, m.name_len) == 0) &&
             (w->type == NULL ? !m.has_type : m.has_type && strcmp(m.type, w->type) == 0);
        if (!ok) {
            snprintf(why, sizeof(why), "recipient %zu: the down TLV is wrong", i);
            break;
        }
        if (!payload_is(f, msg, dek, w->doc, w->len)) {
            snprintf(why, sizeof(why), "recipient %zu: the payload does not decrypt to the "
                     "document", i);
            ok = 0;
            break;
        }
        chain_ck(w->rcpt[i], 0, down_before[i] + 1, want_ck);
        if (memstore_card(f->ms, w->rcpt[i])->down_next != down_before[i] + 1 ||
            memstore_card_chain(f->ms, &f->ring, w->rcpt[i], 0, ck) != 0 ||
            memcmp(ck, want_ck, 32) != 0) {
            snprintf(why, sizeof(why), "recipient %zu: the down chain did not advance", i);
            ok = 0;
        }
    }
    if (!tap_ok(ok, "%s: each recipient opens its delivery and gets the document", name))
        tap_diag("%s", why);
}

/* ------------------------------------------------------------------ */
/* the cases                                                          */

static const size_t slices[] = { 1, 7, 0 };

static const char *
slice_name(size_t s)
{
    return s == 1 ? "1-byte slices" : s == 7 ? "7-byte slices" : "whole";
}

/* Accepted to 1 and 3 recipients (and to oneself), in every slicing. */
static void
test_accepted(void)
{
    size_t si;

    for (si = 0; si < 3; si++) {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        uint8_t *doc = make_doc(100000, 1);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .name = "report.pdf",
                           .type = "application/pdf", .doc = doc, .len = 100000 };
        struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                          .name = "report.pdf", .type = "application/pdf", .doc = doc,
                          .len = 100000 };
        uint64_t down[1] = { 0 };
        char name[80];

        fx_std(&f);
        seal(&env, &sp);
        snap(&f, ALICE, &s);
        run(&f, &env, slices[si], &r);
        snprintf(name, sizeof(name), "accepted, 1 recipient, %s", slice_name(slices[si]));
        expect_accepted(&f, &env, &r, &s, &w, down, name);
        fx_done(&f, name);
        buf_free(&env);
        free(doc);
    }
    for (si = 0; si < 3; si++) {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        uint8_t *doc = make_doc(70000, 2);
        struct spec sp = { .serial = ALICE, .seq = 3, .to = "carol,bob,dave", .doc = doc,
                           .len = 70000, .sent = NOW_MS - 5000 };
        struct want w = { .sender = ALICE, .from = "alice", .rcpt = { CAROL, BOB, DAVE },
                          .n = 3, .doc = doc, .len = 70000, .sent = NOW_MS - 5000 };
        uint64_t down[3] = { 0, 0, 0 };
        char name[80];

        fx_std(&f);
        seal(&env, &sp);
        snap(&f, ALICE, &s);
        run(&f, &env, slices[si], &r);
        snprintf(name, sizeof(name), "accepted, 3 recipients, seq 3, %s",
                 slice_name(slices[si]));
        expect_accepted(&f, &env, &r, &s, &w, down, name);
        fx_done(&f, name);
        buf_free(&env);
        free(doc);
    }
    {
        /* to oneself and another, twice: the down counters move on */
        struct fx f;
        struct buf env = { 0 }, env2 = { 0 };
        struct res r;
        struct snap s;
        uint8_t *doc = make_doc(10, 3);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "alice,bob", .name = "x",
                           .doc = doc, .len = 10 };
        struct want w = { .sender = ALICE, .from = "alice", .rcpt = { ALICE, BOB }, .n = 2,
                          .name = "x", .doc = doc, .len = 10 };
        uint64_t down[2] = { 0, 0 }, down2[2] = { 1, 1 };

        fx_std(&f);
        seal(&env, &sp);
        snap(&f, ALICE, &s);
        run(&f, &env, 0, &r);
        expect_accepted(&f, &env, &r, &s, &w, down, "to oneself and bob");
        sp.seq = 1;
        seal(&env2, &sp);
        snap(&f, ALICE, &s);
        run(&f, &env2, 0, &r);
        expect_accepted(&f, &env2, &r, &s, &w, down2, "again: down counters 1");
        fx_done(&f, "to oneself");
        buf_free(&env);
        buf_free(&env2);
        free(doc);
    }
}

/* Document sizes at the chunk edges, and several upload batches. */
static void
test_sizes(void)
{
    static const struct {
        size_t len, batch;
        const char *what;
    } cases[] = {
        { 0, 0, "empty document" },
        { 1, 0, "1-byte document" },
        { CH, 0, "64 KiB document" },
        { CH + 1, 0, "64 KiB + 1 document" },
        { 5 * CH + 100, 2 * CT, "6 chunks in batches of 2 chunks" },
        { 4 * CH, 2 * CT, "4 chunks in batches of 2 chunks" },
    };
    size_t i, si;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        for (si = 0; si < 3; si++) {
            struct fx f;
            struct buf env = { 0 };
            struct res r;
            struct snap s;
            uint8_t *doc;
            char name[96];
            uint64_t down[1] = { 0 };

            if (slices[si] == 1 && cases[i].len > 2 * CH)
                continue;                /* the 64 KiB ones cover 1-byte slices */
            doc = make_doc(cases[i].len, (unsigned)i + 10);
            {
                struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .name = "d.bin",
                                   .doc = doc, .len = cases[i].len };
                struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                                  .name = "d.bin", .doc = doc, .len = cases[i].len };

                fx_std(&f);
                f.conf.batch_bytes = cases[i].batch;
                seal(&env, &sp);
                snap(&f, ALICE, &s);
                run(&f, &env, slices[si], &r);
                snprintf(name, sizeof(name), "%s, %s", cases[i].what, slice_name(slices[si]));
                expect_accepted(&f, &env, &r, &s, &w, down, name);
            }
            if (cases[i].batch != 0) {
                const ms_message *m = memstore_message(f.ms, r.msg);
                const ms_upload *u = m ? memstore_upload(f.ms, m->upload_id) : NULL;
                size_t nch = (size_t)kmdc_payload_chunks(cases[i].len), b;
                int ok = u != NULL && u->n_batches >= 2 && u->n_batches <= (nch + 1) / 2;

                for (b = 0; ok && b < u->n_batches; b++)
                    ok = u->batches[b].idx == (int)b &&
                         u->batches[b].len <= cases[i].batch + CT &&
                         (b + 1 == u->n_batches || u->batches[b].len % CT == 0);
                if (!tap_ok(ok, "%s: 2 .. %zu batches of whole chunks, numbered from 0", name,
                            (nch + 1) / 2))
                    tap_diag("upload %s, %zu batches", u ? "found" : "missing",
                             u ? u->n_batches : 0);
            }
            fx_done(&f, name);
            buf_free(&env);
            free(doc);
        }
    }
}

/* The window: up_next + W - 1 is accepted, up_next + W rejected. */
static void
test_window(void)
{
    struct fx f;
    struct buf env = { 0 };
    struct res r;
    struct snap s;
    uint8_t *doc = make_doc(50, 4), ck0[32];
    struct spec sp = { .serial = ALICE, .to = "bob", .doc = doc, .len = 50 };
    struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                      .doc = doc, .len = 50 };
    uint64_t down[1] = { 0 };

    fx_std(&f);
    f.conf.seq_window = 16;
    card_key(ALICE, 1, ck0);
    memstore_set_up(f.ms, &f.ring, ALICE, 10, ck0);
    sp.seq = 10 + 16;
    seal(&env, &sp);
    snap(&f, ALICE, &s);
    run(&f, &env, 7, &r);
    expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED, "seq = up_next + W");
    expect_nothing(&f, ALICE, &s, "seq = up_next + W");
    tap_ok(memstore_write_calls(f.ms) == 0, "seq = up_next + W: no write operation called");
    buf_free(&env);

    sp.seq = 10 + 16 - 1;
    seal(&env, &sp);
    run(&f, &env, 7, &r);
    expect_accepted(&f, &env, &r, &s, &w, down, "seq = up_next + W - 1");
    buf_free(&env);

    /* below up_next without a receipt: rejected */
    sp.seq = 9;
    seal(&env, &sp);
    snap(&f, ALICE, &s);
    run(&f, &env, 0, &r);
    expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED, "seq below up_next, no receipt");
    expect_nothing(&f, ALICE, &s, "seq below up_next, no receipt");
    buf_free(&env);
    fx_done(&f, "window");
    free(doc);
}

/* Unknown, issued, suspended and revoked senders: the same 403. */
static void
test_senders(void)
{
    static const struct {
        int add;
        kmdc_card_status st;
        const char *what;
    } cases[] = {
        { 0, 0, "unknown sender" },
        { 1, KMDC_CARD_ST_ISSUED, "issued sender" },
        { 1, KMDC_CARD_ST_SUSPENDED, "suspended sender" },
        { 1, KMDC_CARD_ST_REVOKED, "revoked sender" },
    };
    char bodies[4][KMDC_RECEIPT_ANSWER_MAX + 64];
    size_t i;
    int same = 1;

    for (i = 0; i < 4; i++) {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        uint8_t *doc = make_doc(1000, 5);
        struct spec sp = { .serial = 0x5e7de2, .seq = 0, .to = "bob", .doc = doc,
                           .len = 1000 };

        fx_std(&f);
        if (cases[i].add)
            fx_card(&f, 0x5e7de2, "sender", cases[i].st);
        seal(&env, &sp);
        snap(&f, 0x5e7de2, &s);
        run(&f, &env, 7, &r);
        expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED, cases[i].what);
        tap_ok(f.ms->calls[MS_SENDER_LOAD] == 1 && memstore_write_calls(f.ms) == 0 &&
               f.ms->n_messages == 0 && f.ms->n_receipts == 0 && f.ms->audit_rows == 0 &&
               (!cases[i].add || up_next(&f, 0x5e7de2) == 0),
               "%s: loaded once, no write operation called", cases[i].what);
        snprintf(bodies[i], sizeof(bodies[i]), "%s", r.body);
        if (strcmp(bodies[i], bodies[0]) != 0)
            same = 0;
        fx_done(&f, cases[i].what);
        buf_free(&env);
        free(doc);
    }
    tap_ok(same, "unknown, issued, suspended, revoked: the same body");
}

/* Framing of the prefix: decided before the card is looked up. */
static void
test_prefix(void)
{
    static const uint32_t bad_kb[] = { 0, 58, 16433, 0xffffffffu };
    uint8_t *doc = make_doc(200, 6);
    struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = 200 };
    struct buf good = { 0 };
    size_t i, si;

    seal(&good, &sp);
    for (i = 0; i < 4; i++) {
        for (si = 0; si < 3; si += 2) {
            struct fx f;
            struct buf env = { 0 };
            struct res r;
            struct snap s;
            char name[80];

            fx_std(&f);
            buf_add(&env, good.p, good.n);
            kmdc_put_u32(env.p + KMDC_HEADER_LEN, bad_kb[i]);
            snap(&f, ALICE, &s);
            run(&f, &env, slices[si], &r);
            snprintf(name, sizeof(name), "kb_len %u, %s", bad_kb[i], slice_name(slices[si]));
            expect_error(&r, 400, "bad_envelope", KMDC_INTAKE_REJECTED, name);
            tap_ok(f.ms->calls[MS_SENDER_LOAD] == 0 && memstore_write_calls(f.ms) == 0 &&
                   r.stopped, "%s: decided at kb_len, the card never looked up", name);
            fx_done(&f, name);
            buf_free(&env);
        }
    }
    {
        /* other framing errors of the header */
        static const struct {
            size_t off;
            uint8_t val;
            const char *what;
        } hb[] = {
            { 0, 'X', "bad magic" },
            { 4, 2, "version 2" },
            { 5, 2, "direction down" },
            { 5, 3, "direction 3" },
            { 7, 1, "flags 1" },
            { 8, 0x80, "serial with the top bit" },
        };
        for (i = 0; i < sizeof(hb) / sizeof(hb[0]); i++) {
            struct fx f;
            struct buf env = { 0 };
            struct res r;

            fx_std(&f);
            buf_add(&env, good.p, good.n);
            env.p[hb[i].off] = hb[i].val;
            run(&f, &env, 1, &r);
            expect_error(&r, 400, "bad_envelope", KMDC_INTAKE_REJECTED, hb[i].what);
            tap_ok(f.ms->calls[MS_SENDER_LOAD] == 0 && memstore_write_calls(f.ms) == 0,
                   "%s: the card never looked up", hb[i].what);
            fx_done(&f, hb[i].what);
            buf_free(&env);
        }
    }
    {
        /* the body ends inside the prefix */
        size_t kb = prefix_len(&good);
        const size_t cuts[] = { 0, 1, 39, 40, 43, 44, 45, kb - 1 };
        for (i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
            struct fx f;
            struct res r;
            char name[80];

            fx_std(&f);
            run_n(&f, good.p, cuts[i], 1, END_FINISH, &r);
            snprintf(name, sizeof(name), "body of %zu bytes (prefix %zu)", cuts[i], kb);
            expect_error(&r, 400, "incomplete", KMDC_INTAKE_REJECTED, name);
            tap_ok(f.ms->calls[MS_SENDER_LOAD] == 0 && memstore_write_calls(f.ms) == 0,
                   "%s: the card never looked up", name);
            fx_done(&f, name);
        }
    }
    buf_free(&good);
    free(doc);
}

/* A keyblock that fails: 403 rejected after the lookup, nothing written. */
static void
test_keyblock(void)
{
    uint8_t *doc = make_doc(300, 7);
    int k;

    for (k = 0; k < 3; k++) {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        struct spec sp = { .serial = ALICE, .seq = 2, .to = "bob", .doc = doc, .len = 300 };
        const char *what = k == 0 ? "keyblock sealed under MK_{seq+1}"
                           : k == 1 ? "keyblock tag flipped" : "salt changed";

        fx_std(&f);
        if (k == 0)
            sp.key_off = 1;
        seal(&env, &sp);
        if (k == 1)
            env.p[prefix_len(&env) - 1] ^= 1;
        if (k == 2)
            env.p[30] ^= 1;
        snap(&f, ALICE, &s);
        run(&f, &env, 7, &r);
        expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED, what);
        expect_nothing(&f, ALICE, &s, what);
        tap_ok(memstore_write_calls(f.ms) == 0, "%s: no write operation called", what);
        fx_done(&f, what);
        buf_free(&env);
    }
    free(doc);
}

/* Retries of accepted and refused envelopes. */
static void
test_retries(void)
{
    struct fx f;
    struct buf env = { 0 }, other = { 0 }, bad = { 0 }, mod = { 0 };
    struct res r, first;
    struct snap s;
    uint8_t *doc = make_doc(3 * CH, 8);
    struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob,carol", .doc = doc,
                       .len = 3 * CH };
    size_t si;

    fx_std(&f);
    seal(&env, &sp);
    run(&f, &env, 0, &first);
    tap_ok(first.status == 201, "retries: the first upload is accepted");
    for (si = 0; si < 3; si++) {
        char name[80];

        snprintf(name, sizeof(name), "byte-identical retry of an accepted envelope, %s",
                 slice_name(slices[si]));
        snap(&f, ALICE, &s);
        run(&f, &env, slices[si], &r);
        expect_repeat(&r, 200, first.body, first.msg, name);
        expect_nothing(&f, ALICE, &s, name);
    }

    /* the same seq sealed again (another salt and document) */
    seal(&other, &sp);
    snap(&f, ALICE, &s);
    run(&f, &other, 7, &r);
    expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED, "another envelope, same seq");
    expect_nothing(&f, ALICE, &s, "another envelope, same seq");

    /* the accepted envelope with its last payload byte changed */
    buf_add(&mod, env.p, env.n);
    mod.p[mod.n - 1] ^= 1;
    run(&f, &mod, 0, &r);
    expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED,
                 "accepted envelope, payload changed");
    expect_nothing(&f, ALICE, &s, "accepted envelope, payload changed");
    /* ... and cut short */
    run_n(&f, env.p, env.n - 100, 0, END_FINISH, &r);
    tap_ok(r.decided && r.status != 200 && r.status != 201 && r.result != KMDC_INTAKE_REPEATED,
           "accepted envelope cut short: not repeated (%d %s)", r.status, r.code);
    expect_nothing(&f, ALICE, &s, "accepted envelope cut short");

    /* a refused (spent) envelope, retried */
    sp.seq = 1;
    sp.to = "bob,nobody";
    seal(&bad, &sp);
    snap(&f, ALICE, &s);
    run(&f, &bad, 0, &first);
    expect_error(&first, 404, "unknown_recipient", KMDC_INTAKE_REFUSED, "refused envelope");
    for (si = 0; si < 3; si++) {
        char name[80];

        snprintf(name, sizeof(name), "byte-identical retry of a refused envelope, %s",
                 slice_name(slices[si]));
        snap(&f, ALICE, &s);
        run(&f, &bad, slices[si], &r);
        expect_repeat(&r, 404, first.body, 0, name);
        expect_nothing(&f, ALICE, &s, name);
    }
    /* the receipt covers the prefix: a retry with another payload gets the
     * recorded error too, one with another prefix is rejected */
    buf_free(&mod);
    buf_add(&mod, bad.p, bad.n);
    mod.p[mod.n - 1] ^= 1;
    run(&f, &mod, 7, &r);
    expect_repeat(&r, 404, first.body, 0, "refused envelope, payload changed");
    buf_free(&mod);
    buf_add(&mod, bad.p, prefix_len(&bad));
    run(&f, &mod, 7, &r);
    expect_repeat(&r, 404, first.body, 0, "refused envelope, prefix only");
    buf_free(&other);
    seal(&other, &sp);
    run(&f, &other, 7, &r);
    expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED,
                 "refused seq sealed again (another keyblock)");
    expect_nothing(&f, ALICE, &s, "refused seq sealed again");
    fx_done(&f, "retries");
    buf_free(&env);
    buf_free(&other);
    buf_free(&bad);
    buf_free(&mod);
    free(doc);

    {
        /* a receipt of schema 1 (no prefix hash) still answers */
        struct fx g;
        struct buf e = { 0 };
        uint8_t ck0[32];
        uint8_t *d2 = make_doc(1234, 9);
        struct spec s2 = { .serial = ALICE, .seq = 5, .to = "bob", .doc = d2, .len = 1234 };
        kmdc_receipt rc;
        const char *ans = "{\"message\":\"00000000000000aa\",\"deliveries\":1}";

        fx_std(&g);
        seal(&e, &s2);
        card_key(ALICE, 1, ck0);
        memstore_set_up(g.ms, &g.ring, ALICE, 6, ck0);
        memset(&rc, 0, sizeof(rc));
        rc.scope = KMDC_SCOPE_ENVELOPE;
        sha(rc.hash, e.p, e.n);
        rc.http_status = 201;
        snprintf(rc.answer, sizeof(rc.answer), "%s", ans);
        rc.message_id = 0xaa;
        memstore_add_receipt(g.ms, ALICE, 5, &rc);
        snap(&g, ALICE, &s);
        run(&g, &e, 7, &r);
        expect_repeat(&r, 200, ans, 0xaa, "schema-1 receipt, same envelope");
        e.p[e.n - 1] ^= 1;
        run(&g, &e, 7, &r);
        expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED,
                     "schema-1 receipt, another envelope");
        expect_nothing(&g, ALICE, &s, "schema-1 receipt");
        fx_done(&g, "schema-1 receipt");
        buf_free(&e);
        free(d2);
    }
}

/* Refusals after authentication spend the counter. */
static void
test_spent(void)
{
    enum { K_UNKNOWN, K_INACTIVE, K_TOO_MANY, K_SIZE, K_OLD, K_FUTURE, K_CHUNK, K_TRAILING,
           K_NAME_SLASH, K_NAME_DOTDOT, K_NAME_BIDI, K_NAME_ZWSP, K_NAME_BOM, K_N };
    static const struct {
        int status;
        const char *code, *what;
    } cases[K_N] = {
        [K_UNKNOWN] = { 404, "unknown_recipient", "unknown recipient" },
        [K_INACTIVE] = { 404, "unknown_recipient", "suspended recipient" },
        [K_TOO_MANY] = { 413, "too_large", "too many recipients" },
        [K_SIZE] = { 413, "too_large", "SIZE over the maximum" },
        [K_OLD] = { 400, "too_old", "SENT too old" },
        [K_FUTURE] = { 400, "too_old", "SENT too far ahead" },
        [K_CHUNK] = { 400, "protocol", "a chunk fails to verify mid-payload" },
        [K_TRAILING] = { 400, "protocol", "bytes after the last chunk" },
        [K_NAME_SLASH] = { 400, "bad_name", "NAME with a slash" },
        [K_NAME_DOTDOT] = { 400, "bad_name", "NAME .." },
        [K_NAME_BIDI] = { 400, "bad_name", "NAME with U+202E" },
        [K_NAME_ZWSP] = { 400, "bad_name", "NAME with U+200B (zero width space)" },
        [K_NAME_BOM] = { 400, "bad_name", "NAME with U+FEFF" },
    };
    int k;

    for (k = 0; k < K_N; k++) {
        struct fx f;
        struct buf env = { 0 };
        struct res r, again;
        struct snap s;
        size_t len = k == K_CHUNK ? 4 * CH + 10 : 2000;
        uint8_t *doc = make_doc(len, (unsigned)k + 20);
        struct spec sp = { .serial = ALICE, .seq = 1, .to = "bob,carol", .doc = doc,
                           .len = len };

        fx_std(&f);
        f.conf.max_recipients = 3;
        f.conf.max_document_size = k == K_SIZE ? 1999 : UINT64_C(1) << 20;
        f.conf.batch_bytes = CT;         /* a batch per chunk: chunk 1 is written */
        if (k == K_UNKNOWN)
            sp.to = "bob,nobody";
        if (k == K_INACTIVE)
            memstore_card(f.ms, CAROL)->status = KMDC_CARD_ST_SUSPENDED;
        if (k == K_TOO_MANY)
            sp.to = "bob,carol,dave,alice";
        if (k == K_OLD)
            sp.sent = NOW_MS - (uint64_t)MAX_AGE * 1000 - 1;
        if (k == K_FUTURE)
            sp.sent = NOW_MS + (uint64_t)MAX_AGE * 1000 + 1;
        if (k >= K_NAME_SLASH && k <= K_NAME_BOM) {
            struct buf t = { 0 };
            const char *nm = k == K_NAME_SLASH ? "a/b" : k == K_NAME_DOTDOT ? ".." :
                             k == K_NAME_ZWSP ? "report\xe2\x80\x8b.pdf" :
                             k == K_NAME_BOM ? "\xef\xbb\xbfreport.pdf" :
                             "evil\xe2\x80\xaetxt.exe";
            tlv_add(&t, KMDC_TLV_RCPT, "bob", 3);
            tlv_add(&t, KMDC_TLV_NAME, nm, strlen(nm));
            tlv_u64(&t, KMDC_TLV_SIZE, len);
            tlv_u64(&t, KMDC_TLV_SENT, NOW_MS);
            seal_tlv(&env, ALICE, 1, &t, doc, len);
            buf_free(&t);
        } else {
            seal(&env, &sp);
        }
        if (k == K_CHUNK)
            env.p[prefix_len(&env) + 3 * CT + 100] ^= 0x20;   /* inside chunk 4 */
        if (k == K_TRAILING)
            buf_add(&env, "x", 1);
        snap(&f, ALICE, &s);
        run(&f, &env, k % 2 ? 7 : 0, &r);
        expect_error(&r, cases[k].status, cases[k].code, KMDC_INTAKE_REFUSED, cases[k].what);
        expect_spent(&f, &env, &r, &s, cases[k].what);
        if (k == K_CHUNK)
            tap_ok(f.ms->calls[MS_UPLOAD_APPEND] >= 1 && f.ms->calls[MS_UPLOAD_DROP] == 1 &&
                   f.ms->n_uploads == 0, "%s: the upload written so far is dropped",
                   cases[k].what);
        snap(&f, ALICE, &s);
        run(&f, &env, 0, &again);
        expect_repeat(&again, cases[k].status, r.body, 0, cases[k].what);
        fx_done(&f, cases[k].what);
        buf_free(&env);
        free(doc);
    }
}

/* Bytes after the last chunk are a protocol error after authentication,
 * also when they pass the largest envelope the configuration allows: the
 * answer must not depend on how the body was sliced. */
static void
test_trailing(void)
{
    size_t si;

    for (si = 0; si < 3; si++) {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        size_t len = 2 * CH;
        uint8_t *doc = make_doc(len, 30), *junk = make_doc(20000, 31);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = len };
        char name[96];

        fx_std(&f);
        f.conf.max_document_size = len;
        seal(&env, &sp);
        buf_add(&env, junk, 20000);
        snap(&f, ALICE, &s);
        run(&f, &env, slices[si], &r);
        snprintf(name, sizeof(name), "20000 bytes after the last chunk of a document of "
                 "the largest size, %s", slice_name(slices[si]));
        expect_error(&r, 400, "protocol", KMDC_INTAKE_REFUSED, name);
        expect_spent(&f, &env, &r, &s, name);
        fx_done(&f, name);
        buf_free(&env);
        free(doc);
        free(junk);
    }
}

/* Passing failures of the store spend nothing; the retry then succeeds. */
static void
test_unavailable(void)
{
    static const struct {
        memstore_op op;
        unsigned long nth;
        int refused;                 /* the envelope is refused (spend) */
        const char *what;
    } cases[] = {
        { MS_SENDER_LOAD, 1, 0, "sender_load unavailable" },
        { MS_SLOT_TAKE, 1, 0, "slot_take unavailable" },
        { MS_RECIPIENTS_RESOLVE, 1, 0, "recipients_resolve unavailable" },
        { MS_UPLOAD_APPEND, 1, 0, "upload_append unavailable (first batch)" },
        { MS_UPLOAD_APPEND, 2, 0, "upload_append unavailable (second batch)" },
        { MS_UPLOAD_APPEND, 3, 0, "upload_append unavailable (third batch)" },
        { MS_PUBLISH, 1, 0, "publish unavailable" },
        { MS_SPEND, 1, 1, "spend unavailable" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        size_t len = 7 * CH + 7;
        uint8_t *doc = make_doc(len, (unsigned)i + 40);
        struct spec sp = { .serial = ALICE, .seq = 4, .to = "bob", .doc = doc, .len = len };
        struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                          .doc = doc, .len = len };
        uint64_t down[1] = { 0 };
        char name[96];

        fx_std(&f);
        f.conf.batch_bytes = 2 * CT;
        if (cases[i].refused)
            sp.to = "bob,nobody";
        seal(&env, &sp);
        memstore_fail_nth(f.ms, cases[i].op, cases[i].nth);
        snap(&f, ALICE, &s);
        run(&f, &env, 7, &r);
        expect_error(&r, 503, "unavailable", KMDC_INTAKE_UNAVAILABLE, cases[i].what);
        tap_ok(r.decided && r.status == 503 && f.ms->failures == 1,
               "%s: the failure was injected once (retry_after ignored)", cases[i].what);
        expect_nothing(&f, ALICE, &s, cases[i].what);
        snprintf(name, sizeof(name), "%s, then retried", cases[i].what);
        run(&f, &env, 0, &r);
        if (cases[i].refused) {
            expect_error(&r, 404, "unknown_recipient", KMDC_INTAKE_REFUSED, name);
            expect_spent(&f, &env, &r, &s, name);
        } else {
            expect_accepted(&f, &env, &r, &s, &w, down, name);
        }
        fx_done(&f, cases[i].what);
        buf_free(&env);
        free(doc);
    }

    {
        /* the publish committed but its answer was lost */
        struct fx f;
        struct buf env = { 0 };
        struct res r, again;
        struct snap s;
        uint8_t *doc = make_doc(CH + 5, 50);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob,carol", .doc = doc,
                           .len = CH + 5 };
        const ms_receipt *rc;

        fx_std(&f);
        seal(&env, &sp);
        memstore_publish_lost_nth(f.ms, 1);
        snap(&f, ALICE, &s);
        run(&f, &env, 0, &r);
        expect_error(&r, 503, "unavailable", KMDC_INTAKE_UNAVAILABLE, "lost COMMIT answer");
        rc = memstore_receipt(f.ms, ALICE, 0);
        tap_ok(f.ms->publish_lost_fired && f.ms->n_messages == 1 && up_next(&f, ALICE) == 1 &&
               rc != NULL && memstore_orphans(f.ms) == 0 &&
               memstore_upload(f.ms, f.ms->messages[0].upload_id) != NULL,
               "lost COMMIT answer: the message stands, its payload too");
        run(&f, &env, 7, &again);
        expect_repeat(&again, 200, rc ? rc->r.answer : "?", rc ? rc->r.message_id : 0,
                      "lost COMMIT answer, byte-identical retry");
        tap_ok(f.ms->n_messages == 1 && f.ms->n_deliveries == 2,
               "lost COMMIT answer: still one message");
        if (f.ms->drop_referenced > 0)
            tap_diag("the intake asked to drop the published upload %lu time(s) after the "
                     "lost COMMIT answer: the store must refuse that (the memstore does)",
                     f.ms->drop_referenced);
        fx_done(&f, "lost COMMIT answer");
        buf_free(&env);
        free(doc);
    }
}

/* Slots: at most max uploads per card at once; per card, never shared. */
static void
test_slots(void)
{
    {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        kmdc_lease l;
        uint8_t *doc = make_doc(500, 60);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = 500 };
        struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                          .doc = doc, .len = 500 };
        uint64_t down[1] = { 0 };
        int i;

        fx_std(&f);
        for (i = 0; i < 4; i++)
            f.ms->base.ops->slot_take(&f.ms->base, ALICE, 4, &l);
        seal(&env, &sp);
        snap(&f, ALICE, &s);
        run(&f, &env, 7, &r);
        expect_error(&r, 429, "too_many_uploads", KMDC_INTAKE_REJECTED, "all slots taken");
        tap_ok(up_next(&f, ALICE) == 0 && f.ms->n_receipts == 0 && f.ms->n_messages == 0 &&
               memstore_leases(f.ms, ALICE, 0) == 4 && memstore_orphans(f.ms) == 0,
               "all slots taken: nothing spent, the four leases untouched");
        memstore_expire_leases(f.ms, ALICE);
        run(&f, &env, 7, &r);
        {
            /* expect_accepted wants no live lease: the expired ones are not */
            expect_accepted(&f, &env, &r, &s, &w, down, "a lease expired: accepted");
        }
        fx_done(&f, "slots");
        buf_free(&env);
        free(doc);
    }
    {
        /* two cards whose serials fold to the same 32-bit value */
        struct fx f;
        struct buf env[2][5];
        kmdc_intake *in[2][5];
        struct res r;
        uint8_t *doc = make_doc(CH + 100, 61);
        const uint64_t ser[2] = { FOLD1, FOLD2 };
        int c, i, open_ok = 1, all_ok = 1;

        fx_std(&f);
        fx_card(&f, FOLD1, "fold1", KMDC_CARD_ST_ACTIVE);
        fx_card(&f, FOLD2, "fold2", KMDC_CARD_ST_ACTIVE);
        memset(env, 0, sizeof(env));
        for (c = 0; c < 2; c++) {
            for (i = 0; i < 5; i++) {
                struct spec sp = { .serial = ser[c], .seq = (uint64_t)i, .to = "bob",
                                   .doc = doc, .len = CH + 100 };
                seal(&env[c][i], &sp);
            }
        }
        /* four uploads of FOLD1 in flight */
        for (i = 0; i < 4; i++) {
            in[0][i] = in_new(&f);
            if (!feed(in[0][i], env[0][i].p, prefix_len(&env[0][i]) + 10, 0) ||
                kmdc_intake_decision(in[0][i]) != NULL)
                open_ok = 0;
        }
        tap_ok(open_ok && memstore_leases(f.ms, FOLD1, 0) == 4,
               "folding serials: four uploads of the first card in flight");
        /* (a fifth that has to wait for its bytes: one whose every byte
         * has arrived takes no slot, see "whole envelopes" below) */
        run(&f, &env[0][4], 4096, &r);
        expect_error(&r, 429, "too_many_uploads", KMDC_INTAKE_REJECTED,
                     "folding serials: a fifth of the first card");
        open_ok = 1;
        for (i = 0; i < 4; i++) {
            in[1][i] = in_new(&f);
            if (!feed(in[1][i], env[1][i].p, prefix_len(&env[1][i]) + 10, 0) ||
                kmdc_intake_decision(in[1][i]) != NULL)
                open_ok = 0;
        }
        tap_ok(open_ok && memstore_leases(f.ms, FOLD2, 0) == 4 &&
               memstore_leases(f.ms, 0, 0) == 8,
               "folding serials: the second card gets its own four slots");
        for (c = 0; c < 2; c++) {
            for (i = 0; i < 4; i++) {
                const kmdc_intake_answer *a;
                feed(in[c][i], env[c][i].p + prefix_len(&env[c][i]) + 10,
                     env[c][i].n - prefix_len(&env[c][i]) - 10, 7);
                kmdc_intake_finish(in[c][i]);
                a = kmdc_intake_decision(in[c][i]);
                if (a == NULL || a->status != 201)
                    all_ok = 0;
                kmdc_intake_free(in[c][i]);
            }
        }
        tap_ok(all_ok && f.ms->n_messages == 8 && up_next(&f, FOLD1) == 4 &&
               up_next(&f, FOLD2) == 4 && memstore_leases(f.ms, 0, 1) == 0 &&
               memstore_orphans(f.ms) == 0,
               "folding serials: all eight accepted, no lease left");
        fx_done(&f, "folding serials");
        for (c = 0; c < 2; c++)
            for (i = 0; i < 5; i++)
                buf_free(&env[c][i]);
        free(doc);
    }
}

/* An envelope whose every byte has arrived waits on nothing: no slot, and a
 * payload of one batch travels inside the publication (no upload_append). */
static void
test_whole(void)
{
    struct fx f;
    struct buf env[6];
    kmdc_intake *held[4];
    struct res r;
    struct snap sn;
    uint8_t *doc = make_doc(3 * CH + 7, 62);
    struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                      .doc = doc, .len = 3 * CH + 7 };
    uint64_t down[1] = { 0 };
    int i, open_ok = 1;

    fx_std(&f);
    memset(env, 0, sizeof(env));
    for (i = 0; i < 6; i++) {
        struct spec sp = { .serial = ALICE, .seq = (uint64_t)i, .to = "bob",
                           .doc = doc, .len = 3 * CH + 7 };
        seal(&env[i], &sp);
    }
    snap(&f, ALICE, &sn);
    run(&f, &env[0], 0, &r);
    expect_accepted(&f, &env[0], &r, &sn, &w, down, "whole envelope");
    tap_ok(f.ms->calls[MS_SLOT_TAKE] == 0 && f.ms->calls[MS_UPLOAD_APPEND] == 0 &&
           f.ms->inline_publications == 1,
           "whole envelope: no slot taken, no upload row before the publication");

    /* every slot of the card held by uploads still waiting for bytes */
    for (i = 0; i < 4; i++) {
        held[i] = in_new(&f);
        if (!feed(held[i], env[1 + i].p, prefix_len(&env[1 + i]) + 10, 0) ||
            kmdc_intake_decision(held[i]) != NULL)
            open_ok = 0;
    }
    tap_ok(open_ok && memstore_leases(f.ms, ALICE, 0) == 4,
           "whole envelope: four uploads waiting for bytes hold the card's four slots");
    run(&f, &env[5], 0, &r);
    tap_ok(r.decided && r.status == 201,
           "whole envelope: relayed while every slot is held (it waits on nothing)");
    for (i = 0; i < 4; i++)
        kmdc_intake_free(held[i]);
    tap_ok(memstore_leases(f.ms, ALICE, 0) == 0 && f.ms->inline_publications == 2,
           "whole envelope: the waiting uploads gave their slots back");
    fx_done(&f, "whole envelope");
    for (i = 0; i < 6; i++)
        buf_free(&env[i]);
    free(doc);
}

/* The body cut off, and the intake freed mid-way. */
static void
test_cut(void)
{
    static const struct {
        enum end end;
        int status;
        const char *code, *what;
    } cases[] = {
        { END_FINISH, 400, "incomplete", "body ends mid-payload" },
        { END_BROKEN, 400, "incomplete", "read error mid-payload" },
        { END_TOO_LARGE, 413, "too_large", "LimitRequestBody mid-payload" },
        { END_NONE, 0, NULL, "freed mid-payload" },
    };
    size_t i;

    for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        uint8_t *doc = make_doc(6 * CH, 70);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc,
                           .len = 6 * CH };

        fx_std(&f);
        f.conf.batch_bytes = 2 * CT;
        seal(&env, &sp);
        snap(&f, ALICE, &s);
        run_n(&f, env.p, prefix_len(&env) + 5 * CT + 3, 7, cases[i].end, &r);
        if (cases[i].code != NULL)
            expect_error(&r, cases[i].status, cases[i].code, KMDC_INTAKE_REJECTED,
                         cases[i].what);
        else
            tap_ok(!r.decided, "%s: no answer yet", cases[i].what);
        tap_ok(f.ms->calls[MS_UPLOAD_APPEND] >= 1,
               "%s: batches were written before the cut", cases[i].what);
        expect_nothing(&f, ALICE, &s, cases[i].what);
        fx_done(&f, cases[i].what);
        buf_free(&env);
        free(doc);
    }
    {
        /* cut inside the prefix: nothing looked up */
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        uint8_t *doc = make_doc(10, 71);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = 10 };

        fx_std(&f);
        seal(&env, &sp);
        run_n(&f, env.p, 50, 1, END_BROKEN, &r);
        expect_error(&r, 400, "incomplete", KMDC_INTAKE_REJECTED, "read error in the prefix");
        tap_ok(f.ms->calls[MS_SENDER_LOAD] == 0,
               "read error in the prefix: the card never looked up");
        fx_done(&f, "read error in the prefix");
        buf_free(&env);
        free(doc);
    }
}

/* KmdcMailboxQuota, at resolution and again at publication. */
static void
test_quota(void)
{
    enum { Q_COUNT_AT, Q_COUNT_BELOW, Q_BYTES_OVER, Q_BYTES_AT, Q_N };
    int k;

    for (k = 0; k < Q_N; k++) {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        size_t len = 3000;
        uint8_t *doc = make_doc(len, 80);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob,carol", .doc = doc,
                           .len = len };
        struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB, CAROL }, .n = 2,
                          .doc = doc, .len = len };
        uint64_t down[2] = { 0, 0 };
        int64_t add = (int64_t)kmdc_intake_envelope_max(len);
        const char *what[Q_N] = { "carol's pending count at the quota",
                                  "carol's pending count one below",
                                  "carol's pending bytes one over",
                                  "carol's pending bytes exactly at" };

        fx_std(&f);
        f.conf.quota_count = 5;
        f.conf.quota_bytes = 1000000;
        if (k == Q_COUNT_AT)
            memstore_card(f.ms, CAROL)->extra_count = 5;
        if (k == Q_COUNT_BELOW)
            memstore_card(f.ms, CAROL)->extra_count = 4;
        if (k == Q_BYTES_OVER)
            memstore_card(f.ms, CAROL)->extra_bytes = 1000000 - add + 1;
        if (k == Q_BYTES_AT)
            memstore_card(f.ms, CAROL)->extra_bytes = 1000000 - add;
        seal(&env, &sp);
        snap(&f, ALICE, &s);
        run(&f, &env, 7, &r);
        if (k == Q_COUNT_AT || k == Q_BYTES_OVER) {
            expect_error(&r, 507, "mailbox_full", KMDC_INTAKE_REFUSED, what[k]);
            expect_spent(&f, &env, &r, &s, what[k]);
        } else {
            expect_accepted(&f, &env, &r, &s, &w, down, what[k]);
        }
        fx_done(&f, what[k]);
        buf_free(&env);
        free(doc);
    }
    {
        /* max_document_size exactly, into an empty mailbox of that quota */
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        struct snap s;
        size_t max = 3 * CH + 5;
        uint8_t *doc = make_doc(max + 1, 81);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = max };
        struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                          .doc = doc, .len = max };
        uint64_t down[1] = { 0 };

        fx_std(&f);
        f.conf.max_document_size = max;
        f.conf.quota_count = 1;
        f.conf.quota_bytes = (int64_t)kmdc_intake_envelope_max(max);
        seal(&env, &sp);
        snap(&f, ALICE, &s);
        run(&f, &env, 0, &r);
        expect_accepted(&f, &env, &r, &s, &w, down,
                        "max_document_size into an empty mailbox of envelope_max(max)");
        buf_free(&env);
        sp.seq = 1;
        sp.len = max + 1;
        seal(&env, &sp);
        snap(&f, ALICE, &s);
        run(&f, &env, 0, &r);
        expect_error(&r, 413, "too_large", KMDC_INTAKE_REFUSED, "max_document_size + 1");
        expect_spent(&f, &env, &r, &s, "max_document_size + 1");
        fx_done(&f, "max_document_size");
        buf_free(&env);
        free(doc);
    }
    {
        /* the mailbox fills, a recipient or the sender is suspended, while
         * the payload streams: publish decides */
        enum { P_QUOTA, P_RCPT, P_SENDER, P_N };
        static const char *const what[P_N] = {
            "the mailbox fills during the upload",
            "a recipient is suspended during the upload",
            "the sender is suspended during the upload",
        };
        int p;

        for (p = 0; p < P_N; p++) {
            struct fx f;
            struct buf env = { 0 };
            struct res r;
            struct snap s;
            kmdc_intake *in;
            uint8_t *doc = make_doc(2 * CH, 82);
            struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob,carol", .doc = doc,
                               .len = 2 * CH };
            size_t half;

            fx_std(&f);
            f.conf.quota_count = 3;
            seal(&env, &sp);
            half = prefix_len(&env) + 1000;
            snap(&f, ALICE, &s);
            in = in_new(&f);
            memset(&r, 0, sizeof(r));
            feed(in, env.p, half, 0);
            if (p == P_QUOTA)
                memstore_card(f.ms, CAROL)->extra_count = 3;
            if (p == P_RCPT)
                memstore_card(f.ms, CAROL)->status = KMDC_CARD_ST_SUSPENDED;
            if (p == P_SENDER)
                memstore_card(f.ms, ALICE)->status = KMDC_CARD_ST_SUSPENDED;
            feed(in, env.p + half, env.n - half, 0);
            kmdc_intake_finish(in);
            grab(in, &r);
            kmdc_intake_free(in);
            if (p == P_QUOTA) {
                expect_error(&r, 507, "mailbox_full", KMDC_INTAKE_REFUSED, what[p]);
                expect_spent(&f, &env, &r, &s, what[p]);
            } else if (p == P_RCPT) {
                expect_error(&r, 404, "unknown_recipient", KMDC_INTAKE_REFUSED, what[p]);
                expect_spent(&f, &env, &r, &s, what[p]);
            } else {
                expect_error(&r, 403, "rejected", 0, what[p]);
                tap_ok(f.ms->n_messages == 0 && f.ms->n_deliveries == 0 &&
                       memstore_leases(f.ms, 0, 0) == 0 && memstore_orphans(f.ms) == 0,
                       "%s: nothing published, nothing left behind", what[p]);
            }
            fx_done(&f, what[p]);
            buf_free(&env);
            free(doc);
        }
    }
}

/* "null" is an address like any other. */
static void
test_null_address(void)
{
    struct fx f;
    struct buf env = { 0 };
    struct res r;
    struct snap s;
    uint8_t *doc = make_doc(77, 90);
    struct spec sp = { .serial = ALICE, .seq = 0, .to = "null,bob", .name = "null",
                       .doc = doc, .len = 77 };
    struct want w = { .sender = ALICE, .from = "alice", .rcpt = { NULLC, BOB }, .n = 2,
                      .name = "null", .doc = doc, .len = 77 };
    uint64_t down[2] = { 0, 0 };

    fx_std(&f);
    fx_card(&f, NULLC, "null", KMDC_CARD_ST_ACTIVE);
    seal(&env, &sp);
    snap(&f, ALICE, &s);
    run(&f, &env, 7, &r);
    expect_accepted(&f, &env, &r, &s, &w, down, "the address null");
    fx_done(&f, "the address null");
    buf_free(&env);
    free(doc);
}

/* publish finds the counter spent by a concurrent upload. */
static void
test_concurrent(void)
{
    int same;

    for (same = 1; same >= 0; same--) {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        uint8_t *doc = make_doc(CH * 2, 91);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc,
                           .len = CH * 2 };
        const char *what = same ? "concurrent retry of the same envelope published first"
                                : "another envelope of the seq published first";
        const ms_receipt *rc;

        fx_std(&f);
        seal(&env, &sp);
        memstore_publish_concurrent(f.ms, same);
        run(&f, &env, 7, &r);
        rc = memstore_receipt(f.ms, ALICE, 0);
        if (same)
            expect_repeat(&r, 200, rc ? rc->r.answer : "?", rc ? rc->r.message_id : 0, what);
        else
            expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED, what);
        tap_ok(f.ms->publish_concurrent_fired && f.ms->n_messages == 0 &&
               memstore_leases(f.ms, 0, 0) == 0 && memstore_orphans(f.ms) == 0,
               "%s: this upload is dropped, its lease released", what);
        fx_done(&f, what);
        buf_free(&env);
        free(doc);
    }
    {
        struct fx f;
        struct buf env = { 0 };
        struct res r;
        uint8_t *doc = make_doc(100, 92);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = 100 };

        fx_std(&f);
        seal(&env, &sp);
        memstore_publish_concurrent(f.ms, 1);
        memstore_fail_nth(f.ms, MS_RECEIPT_FIND, 1);
        run(&f, &env, 0, &r);
        expect_error(&r, 503, "unavailable", KMDC_INTAKE_UNAVAILABLE,
                     "concurrent retry, receipt_find unavailable");
        fx_done(&f, "concurrent retry, receipt_find unavailable");
        buf_free(&env);
        free(doc);
    }
}

/*
 * A refusal that loses the race to spend: the retry B read the card before
 * A (the same bytes) published, and finds the mailbox full of A's own
 * delivery.  Its spend finds the counter spent, and the receipt answers:
 * the same envelope repeats A's 201 as 200 (B reads on to compare the whole
 * envelope); another envelope with that seq is 403 rejected.
 */
struct race {
    struct fx *f;
    const struct buf *env;
    struct res first;
};

static void
race_publish_first(void *arg)
{
    struct race *rc = arg;

    run(rc->f, rc->env, 0, &rc->first);
}

static void
test_spend_race(void)
{
    int same;

    for (same = 1; same >= 0; same--) {
        struct fx f;
        struct buf env = { 0 }, other = { 0 };
        struct res r;
        struct race race;
        uint8_t *doc = make_doc(3 * CH, 93);
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = 3 * CH };
        const char *what = same ? "spend race, the same envelope" : "spend race, another envelope";

        fx_std(&f);
        f.conf.quota_count = 1;          /* A's delivery fills bob's mailbox */
        seal(&env, &sp);
        if (!same)
            seal(&other, &sp);           /* seq 0 sealed again: a fresh salt and DEK */
        memset(&race, 0, sizeof(race));
        race.f = &f;
        race.env = &env;
        memstore_before_resolve(f.ms, race_publish_first, &race);
        run(&f, same ? &env : &other, 7, &r);
        tap_ok(race.first.decided && race.first.status == 201,
               "%s: the first upload published (201)", what);
        if (same)
            expect_repeat(&r, 200, race.first.body, race.first.msg, what);
        else
            expect_error(&r, 403, "rejected", KMDC_INTAKE_REJECTED, what);
        tap_ok(up_next(&f, ALICE) == 1 && f.ms->n_messages == 1 && f.ms->n_receipts == 1 &&
               memstore_leases(f.ms, 0, 0) == 0 && memstore_orphans(f.ms) == 0,
               "%s: one message, one receipt, nothing left behind", what);
        fx_done(&f, what);
        buf_free(&env);
        buf_free(&other);
        free(doc);
    }
}

/* ------------------------------------------------------------------ */
/* batches written while the next is read                             */

/* Feed env from *off in quarter-chunk slices until the store has been sent
 * n batches in all (or the envelope ends, or the intake stops); 0 when the
 * intake stopped reading. */
static int
feed_until_sent(struct fx *f, kmdc_intake *in, const struct buf *env, size_t *off,
                unsigned long n)
{
    while (*off < env->n && f->ms->sent_batches < n) {
        size_t k = env->n - *off < CT / 4 ? env->n - *off : CT / 4;

        if (!kmdc_intake_feed(in, env->p + *off, k)) {
            *off += k;
            return 0;
        }
        *off += k;
    }
    return 1;
}

/* The lease of serial now held by another upload (its own expired and the
 * other took the slot), as the memstore's slot_take would leave it. */
static void
lease_taken(struct fx *f, uint64_t serial)
{
    size_t i;

    for (i = 0; i < f->ms->n_leases; i++)
        if (f->ms->leases[i].serial == serial)
            f->ms->leases[i].holder += 1000;
}

/* Where a batch's failure is found: the endpoint about to wait for bytes
 * (kmdc_intake_settle), the next batch sent, the body's end, the body cut
 * off, the multipart framing refused, a chunk that fails to verify, bytes
 * beyond the largest envelope, or the intake freed (the client went away). */
enum found { AT_SETTLE, AT_NEXT, AT_END, AT_CUT, AT_FRAMING, AT_BAD_CHUNK, AT_OVER,
             AT_FREE, AT_N };

static const char *const found_name[AT_N] = {
    "before waiting for bytes", "at the next batch", "at the end of the body",
    "when the body is cut off", "when the framing is refused",
    "when a later chunk fails to verify", "when the body passes the largest envelope",
    "when the intake is freed",
};

static void
test_overlap(void)
{
    size_t len = 9 * CH + 7;             /* 10 chunks: several batches */
    uint8_t *doc = make_doc(len, 95);
    struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                      .doc = doc, .len = len };
    uint64_t down[1] = { 0 };

    {
        /* the intake goes on reading while a batch is written */
        struct fx f;
        struct buf env = { 0 };
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = len };
        struct snap s;
        struct res r;
        kmdc_intake *in;
        const ms_upload *u;
        size_t off = 0;
        int more, settled;

        fx_std(&f);
        f.conf.batch_bytes = CT;
        seal(&env, &sp);
        snap(&f, ALICE, &s);
        in = in_new(&f);
        more = feed_until_sent(&f, in, &env, &off, 1);
        tap_ok(more && f.ms->pend.active && f.ms->settles == 0 && f.ms->n_uploads == 0 &&
               kmdc_intake_decision(in) == NULL,
               "overlap: the first batch is sent and the intake reads on without its answer");
        more = feed_until_sent(&f, in, &env, &off, 2);
        u = f.ms->n_uploads == 1 ? &f.ms->uploads[0] : NULL;
        tap_ok(more && f.ms->pend.active && f.ms->settles == 1 && u != NULL &&
               u->n_batches == 1 && f.ms->pend.idx == 1 && f.ms->pend.sent_id == u->id,
               "overlap: the second batch is sent after the first settled, with its upload id");
        settled = kmdc_intake_settle(in);
        u = f.ms->n_uploads == 1 ? &f.ms->uploads[0] : NULL;
        tap_ok(settled == 1 && !f.ms->pend.active && f.ms->settles == 2 && u != NULL &&
               u->n_batches == 2 && kmdc_intake_decision(in) == NULL,
               "overlap: kmdc_intake_settle collects the batch in flight and wants more bytes");
        tap_ok(kmdc_intake_settle(in) == 1 && f.ms->settles == 2,
               "overlap: settling with nothing in flight does nothing");
        memset(&r, 0, sizeof(r));
        r.stopped = !feed(in, env.p + off, env.n - off, 7);
        if (!r.stopped)
            kmdc_intake_finish(in);
        grab(in, &r);
        kmdc_intake_free(in);
        expect_accepted(&f, &env, &r, &s, &w, down, "overlap");
        tap_ok(f.ms->sent_batches >= 3 && f.ms->settles == f.ms->sent_batches &&
               !f.ms->pend.active && f.ms->violations == 0,
               "overlap: every batch settled, none pending at the publication");
        fx_done(&f, "overlap");
        buf_free(&env);
    }

    {
        /* the memstore itself refuses to publish over a pending batch (the
         * check behind every "the store saw no violation" line) */
        struct fx f;
        kmdc_publication pub;
        kmdc_publish_outcome outcome;
        size_t which;
        int64_t id = 0;
        uint8_t b[16] = { 1 };
        kmdc_store_rc rc;

        fx_std(&f);
        memset(&pub, 0, sizeof(pub));
        rc = f.ms->base.ops->upload_append(&f.ms->base, &id, 100, 0, b, sizeof(b), NULL);
        tap_ok(rc == KMDC_STORE_OK && id == 0 && f.ms->pend.active,
               "memstore: an appended batch is pending, its id not known yet");
        rc = f.ms->base.ops->publish(&f.ms->base, &pub, &outcome, &which);
        tap_ok(rc == KMDC_STORE_ERROR && f.ms->violations == 1 && f.ms->n_messages == 0 &&
               !f.ms->pend.active && id != 0,
               "memstore: publish with a batch pending is a violation and publishes nothing");
        memstore_free(f.ms);
    }

    {
        /* a batch that fails gives the answer it gave when each batch was
         * written before the next byte was read, wherever it is found */
        static const struct {
            int busy;                    /* the lease lost, not the store gone */
            int on_send;                 /* the failure shows when it is sent */
        } kinds[] = { { 0, 0 }, { 1, 0 }, { 0, 1 } };
        size_t ki;
        int at;
        unsigned long k;

        for (ki = 0; ki < sizeof(kinds) / sizeof(kinds[0]); ki++) {
            for (k = 1; k <= 2; k++) {
                for (at = 0; at < AT_N; at++) {
                    struct fx f;
                    struct buf env = { 0 };
                    struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc,
                                       .len = len };
                    struct snap s;
                    struct res r;
                    kmdc_intake *in;
                    char name[192];
                    size_t off = 0;
                    int more, ok;

                    if (kinds[ki].on_send && at != AT_NEXT)
                        continue;        /* found at once: no later place */
                    snprintf(name, sizeof(name), "batch %lu %s, found %s", k,
                             kinds[ki].busy ? "loses its slot" :
                             kinds[ki].on_send ? "cannot be sent" : "fails",
                             kinds[ki].on_send ? "when it is sent" : found_name[at]);
                    fx_std(&f);
                    f.conf.batch_bytes = CT;
                    if (at == AT_OVER)
                        f.conf.max_document_size = len;
                    seal(&env, &sp);
                    if (at == AT_BAD_CHUNK)      /* the chunk after batch k's last */
                        env.p[prefix_len(&env) + 2 * k * CT + 100] ^= 0x20;
                    if (at == AT_OVER)
                        buf_add(&env, doc, 3 * CT);
                    snap(&f, ALICE, &s);
                    in = in_new(&f);
                    if (kinds[ki].on_send) {
                        f.ms->fail_on_send = 1;
                        memstore_fail_nth(f.ms, MS_UPLOAD_APPEND, k);
                    } else if (!kinds[ki].busy) {
                        memstore_fail_nth(f.ms, MS_UPLOAD_APPEND, k);
                    }
                    more = feed_until_sent(&f, in, &env, &off, k - (kinds[ki].on_send != 0));
                    if (kinds[ki].busy)
                        lease_taken(&f, ALICE);   /* while batch k is in flight */
                    ok = kinds[ki].on_send || (more && f.ms->pend.active &&
                                               kmdc_intake_decision(in) == NULL);
                    memset(&r, 0, sizeof(r));
                    switch (at) {
                    case AT_SETTLE:
                        r.stopped = !kmdc_intake_settle(in);
                        ok = ok && r.stopped;
                        break;
                    case AT_NEXT:
                        r.stopped = !feed_until_sent(&f, in, &env, &off, k + 1);
                        ok = ok && r.stopped;
                        break;
                    case AT_END:
                    case AT_BAD_CHUNK:
                    case AT_OVER:
                        r.stopped = !feed(in, env.p + off, env.n - off, 7);
                        if (!r.stopped)
                            kmdc_intake_finish(in);
                        break;
                    case AT_CUT:
                        kmdc_intake_cut_off(in, KMDC_INTAKE_CUT_BROKEN);
                        break;
                    case AT_FRAMING:
                        kmdc_intake_refuse_framing(in, "bad_multipart", "a framing error");
                        break;
                    case AT_FREE:
                        break;
                    }
                    grab(in, &r);
                    kmdc_intake_free(in);
                    if (at == AT_FREE) {
                        tap_ok(!r.decided, "%s: no answer (the client is gone)", name);
                    } else if (kinds[ki].busy) {
                        expect_error(&r, 429, "too_many_uploads", KMDC_INTAKE_REJECTED, name);
                    } else {
                        expect_error(&r, 503, "unavailable", KMDC_INTAKE_UNAVAILABLE, name);
                    }
                    if (!tap_ok(ok && !f.ms->pend.active &&
                                f.ms->settles == f.ms->sent_batches &&
                                up_next(&f, ALICE) == s.up_next &&
                                f.ms->n_receipts == s.receipts && f.ms->n_messages == 0 &&
                                memstore_orphans(f.ms) == 0 &&
                                memstore_leases(f.ms, 0, 0) == (kinds[ki].busy ? 1u : 0u),
                                "%s: found before anything else, nothing spent or published, "
                                "the upload dropped", name))
                        tap_diag("ok %d pending %d settles %lu sent %lu up_next %" PRIu64
                                 " receipts %zu messages %zu orphans %zu leases %zu", ok,
                                 f.ms->pend.active, f.ms->settles, f.ms->sent_batches,
                                 up_next(&f, ALICE), f.ms->n_receipts, f.ms->n_messages,
                                 memstore_orphans(f.ms), memstore_leases(f.ms, 0, 0));
                    fx_done(&f, name);
                    buf_free(&env);
                }
            }
        }
    }
    free(doc);
}

/* ------------------------------------------------------------------ */
/* the body adapter                                                   */

static void
mp_part(struct buf *b, const char *name, const char *filename, const void *p, size_t len)
{
    buf_str(b, "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"");
    buf_str(b, name);
    buf_str(b, "\"");
    if (filename != NULL) {
        buf_str(b, "; filename=\"");
        buf_str(b, filename);
        buf_str(b, "\"\r\nContent-Type: application/octet-stream");
    }
    buf_str(b, "\r\n\r\n");
    buf_add(b, p, len);
    buf_str(b, "\r\n");
}

static void
mp_close(struct buf *b)
{
    buf_str(b, "--" BOUNDARY "--\r\n");
}

/* Run a body through a sendbody; r->status -1 when _new refused it. */
static void
run_body(struct fx *f, const char *ct, const struct buf *body, size_t slice, struct res *r,
         kmdc_err *err)
{
    kmdc_intake *in = in_new(f);
    kmdc_sendbody *sb = kmdc_sendbody_new(ct, in, err);
    size_t off = 0;
    int more = 1;

    memset(r, 0, sizeof(*r));
    if (sb == NULL) {
        r->status = -1;
        kmdc_intake_free(in);
        return;
    }
    if (slice == 0)
        slice = body->n ? body->n : 1;
    while (more && off < body->n) {
        size_t n = body->n - off < slice ? body->n - off : slice;
        more = kmdc_sendbody_feed(sb, body->p + off, n);
        off += n;
    }
    r->stopped = !more;
    if (more)
        kmdc_sendbody_finish(sb);
    grab(in, r);
    kmdc_sendbody_free(sb);
    kmdc_intake_free(in);
}

static void
test_sendbody(void)
{
    uint8_t *doc = make_doc(CH + 33, 100);
    char ser[17], other[17];

    kmdc_serial_format(ser, ALICE);
    kmdc_serial_format(other, BOB);
    {
        /* raw, the media type with parameters and in capitals */
        static const char *const types[] = {
            KMDC_ENVELOPE_TYPE,
            KMDC_ENVELOPE_TYPE "; charset=binary",
            "Application/VND.KMDC.Envelope",
        };
        size_t t;

        for (t = 0; t < 3; t++) {
            struct fx f;
            struct buf env = { 0 };
            struct res r;
            struct snap s;
            kmdc_err err;
            struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc,
                               .len = CH + 33 };
            struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                              .doc = doc, .len = CH + 33 };
            uint64_t down[1] = { 0 };
            char name[96];

            fx_std(&f);
            seal(&env, &sp);
            snap(&f, ALICE, &s);
            run_body(&f, types[t], &env, 7, &r, &err);
            snprintf(name, sizeof(name), "raw body, Content-Type %s", types[t]);
            expect_accepted(&f, &env, &r, &s, &w, down, name);
            fx_done(&f, name);
            buf_free(&env);
        }
    }
    {
        /* multipart: serial before, after, absent */
        static const char *const what[3] = {
            "multipart, serial part before the envelope",
            "multipart, serial part after the envelope",
            "multipart, envelope part only",
        };
        int order;
        size_t si;

        for (order = 0; order < 3; order++) {
            for (si = 0; si < 3; si += 1) {
                struct fx f;
                struct buf env = { 0 }, body = { 0 };
                struct res r;
                struct snap s;
                kmdc_err err;
                struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc,
                                   .len = CH + 33 };
                struct want w = { .sender = ALICE, .from = "alice", .rcpt = { BOB }, .n = 1,
                                  .doc = doc, .len = CH + 33 };
                uint64_t down[1] = { 0 };
                char name[120];

                if (si == 0 && order != 1)
                    continue;            /* 1-byte slices once */
                fx_std(&f);
                seal(&env, &sp);
                if (order == 0)
                    mp_part(&body, "serial", NULL, ser, 16);
                mp_part(&body, "envelope", "doc.kmdc", env.p, env.n);
                if (order == 1)
                    mp_part(&body, "serial", NULL, ser, 16);
                mp_close(&body);
                snap(&f, ALICE, &s);
                run_body(&f, MP_TYPE, &body, slices[si], &r, &err);
                snprintf(name, sizeof(name), "%s, %s", what[order], slice_name(slices[si]));
                expect_accepted(&f, &env, &r, &s, &w, down, name);
                fx_done(&f, name);
                buf_free(&env);
                buf_free(&body);
            }
        }
    }
    {
        /* malformed multipart bodies: 400, nothing spent or published */
        enum { B_MISMATCH_BEFORE, B_MISMATCH_AFTER, B_THIRD, B_SERIAL_ONLY, B_TWO_ENV,
               B_NO_CLOSE, B_BAD_SERIAL, B_N };
        static const char *const what[B_N] = {
            "multipart, serial part before and not matching",
            "multipart, serial part after and not matching",
            "multipart, a third part",
            "multipart, no envelope part",
            "multipart, two envelope parts",
            "multipart, no close delimiter",
            "multipart, serial part not 16 hex digits",
        };
        int k;

        for (k = 0; k < B_N; k++) {
            struct fx f;
            struct buf env = { 0 }, body = { 0 };
            struct res r;
            struct snap s;
            kmdc_err err;
            struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc,
                               .len = CH + 33 };

            fx_std(&f);
            seal(&env, &sp);
            if (k == B_MISMATCH_BEFORE)
                mp_part(&body, "serial", NULL, other, 16);
            if (k == B_BAD_SERIAL)
                mp_part(&body, "serial", NULL, "1a11ce000000000", 15);
            if (k != B_SERIAL_ONLY)
                mp_part(&body, "envelope", "doc.kmdc", env.p, env.n);
            if (k == B_MISMATCH_AFTER)
                mp_part(&body, "serial", NULL, other, 16);
            if (k == B_THIRD)
                mp_part(&body, "comment", NULL, "hello", 5);
            if (k == B_SERIAL_ONLY)
                mp_part(&body, "serial", NULL, ser, 16);
            if (k == B_TWO_ENV)
                mp_part(&body, "envelope", "doc.kmdc", env.p, env.n);
            if (k != B_NO_CLOSE)
                mp_close(&body);
            snap(&f, ALICE, &s);
            run_body(&f, MP_TYPE, &body, 7, &r, &err);
            if (k == B_NO_CLOSE)
                tap_ok(r.decided && r.status == 400 &&
                       (strcmp(r.code, "bad_multipart") == 0 ||
                        strcmp(r.code, "incomplete") == 0),
                       "%s: 400 bad_multipart or incomplete (%d %s)", what[k], r.status,
                       r.code);
            else
                expect_error(&r, 400, "bad_multipart", KMDC_INTAKE_REJECTED, what[k]);
            expect_nothing(&f, ALICE, &s, what[k]);
            fx_done(&f, what[k]);
            buf_free(&env);
            buf_free(&body);
        }
    }
    {
        /* Content-Types that are refused at once */
        static const struct {
            const char *ct;
            kmdc_status code;
        } cts[] = {
            { "text/plain", KMDC_ERR_ARG },
            { NULL, KMDC_ERR_ARG },
            { "application/octet-stream", KMDC_ERR_ARG },
            { "application/vnd.kmdc.envelopex", KMDC_ERR_ARG },
            { "multipart/mixed; boundary=abc", KMDC_ERR_ARG },
            { "multipart/form-data", KMDC_ERR_FORMAT },
            { "multipart/form-data; boundary=", KMDC_ERR_FORMAT },
        };
        size_t i;

        for (i = 0; i < sizeof(cts) / sizeof(cts[0]); i++) {
            struct fx f;
            struct buf body = { 0 };
            struct res r;
            kmdc_err err;

            fx_std(&f);
            buf_str(&body, "KMDC");
            kmdc_err_clear(&err);
            run_body(&f, cts[i].ct, &body, 0, &r, &err);
            tap_ok(r.status == -1 && err.code == cts[i].code &&
                   f.ms->calls[MS_SENDER_LOAD] == 0,
                   "Content-Type %s: kmdc_sendbody_new fails with %s",
                   cts[i].ct ? cts[i].ct : "(none)", kmdc_status_name(cts[i].code));
            memstore_free(f.ms);
            buf_free(&body);
        }
    }
    free(doc);
}

/* ------------------------------------------------------------------ */
/* seeds for fuzz/fuzz_intake.c (test_intake --seeds DIR)             */

static int seed_failed;

/* Write control bytes c0..c3 then body as DIR/name. */
static void
seed_write(const char *dir, const char *name, uint8_t c0, uint8_t c1, uint8_t c2, uint8_t c3,
           const struct buf *body)
{
    char path[1024];
    uint8_t c[4];
    FILE *fp;

    c[0] = c0;
    c[1] = c1;
    c[2] = c2;
    c[3] = c3;
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    if ((fp = fopen(path, "wb")) == NULL || fwrite(c, 1, 4, fp) != 4 ||
        (body->n > 0 && fwrite(body->p, 1, body->n, fp) != body->n) || fclose(fp) != 0) {
        fprintf(stderr, "test_intake: cannot write %s\n", path);
        seed_failed = 1;
    }
}

/* One envelope of alice (as fuzz_intake's fixture knows her) per seed. */
static void
seed_env(const char *dir, const char *name, uint8_t c0, uint8_t c1, uint8_t c2, uint8_t c3,
         uint64_t seq, const char *to, size_t len, const char *fname, uint64_t sent)
{
    struct buf env = { 0 };
    uint8_t *doc = make_doc(len, (unsigned)seq + 200);
    struct spec sp = { .serial = ALICE, .seq = seq, .to = to, .name = fname, .doc = doc,
                       .len = len, .sent = sent };

    seal(&env, &sp);
    seed_write(dir, name, c0, c1, c2, c3, &env);
    buf_free(&env);
    free(doc);
}

static int
write_seeds(const char *dir)
{
    struct buf env = { 0 }, body = { 0 }, t = { 0 };
    uint8_t *doc = make_doc(CH + 100, 300);
    char ser[17];

    /* raw, accepted: whole, random brigades, 7-byte slices */
    seed_env(dir, "raw_accept", 0x00, 0x00, 0, 0, 0, "bob", 300, "a.txt", 0);
    seed_env(dir, "raw_empty_k7", 0x00, 2 | 6 << 2, 0, 0, 2, "bob", 0, NULL, 0);
    seed_env(dir, "raw_2chunks_3rcpt_batches", 0x00, 3 | 5 << 2, 0, 0x40, 1,
             "bob,carol,alice", CH + 100, "two.bin", 0);
    /* multipart as curl sends it */
    seed_env(dir, "mp_serial_first_bytes", 0x01, 0x01, 0, 0, 0, "carol", 50, NULL, 0);
    seed_env(dir, "mp_serial_after_k7", 0x02, 2 | 6 << 2, 0, 0, 0, "bob", 700, "x", 0);
    seed_env(dir, "mp_no_serial", 0x41, 0x00, 0, 0, 0, "bob", 10, NULL, 0);
    seed_env(dir, "mp_other_serial", 0x81, 0x00, 0, 0, 0, "bob", 10, NULL, 0);
    {
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = 100 };

        kmdc_serial_format(ser, ALICE);
        seal(&env, &sp);
        mp_part(&body, "serial", NULL, ser, 16);
        mp_part(&body, "envelope", "doc.kmdc", env.p, env.n);
        mp_close(&body);
        seed_write(dir, "mp_verbatim", 0x03, 0x00, 0, 0, &body);
        buf_free(&env);
        buf_free(&body);
    }
    /* retries: a keyblock-scope and an envelope-scope receipt */
    seed_env(dir, "retry_keyblock", 0x10, 0x00, 0, 0, 5, "zed", 20, NULL, 0);
    seed_env(dir, "retry_envelope", 0x20, 0x00, 0, 0, 6, "bob", 20, NULL, 0);
    seed_env(dir, "retry_envelope_other", 0x30, 0x01, 0, 0, 6, "bob", 20, NULL, 0);
    /* store failures and hooks */
    seed_env(dir, "fail_sender_load", 0x00, 0x00, MS_SENDER_LOAD + 1, 0, 0, "bob", 20, NULL, 0);
    seed_env(dir, "fail_append_1st", 0x00, 0x03, MS_UPLOAD_APPEND + 1, 0x40, 0, "bob",
             CH + 100, NULL, 0);
    seed_env(dir, "fail_spend", 0x00, 0x00, MS_SPEND + 1, 0, 0, "zed", 20, NULL, 0);
    seed_env(dir, "fail_publish_always", 0x00, 0x00, (MS_PUBLISH + 1) | 0x80, 0, 0, "bob", 20,
             NULL, 0);
    seed_env(dir, "publish_lost", 0x00, 0x00, 0, 0x01, 0, "bob,carol", 30, NULL, 0);
    seed_env(dir, "publish_concurrent", 0x00, 0x00, 0, 0x02, 0, "bob", 30, NULL, 0);
    seed_env(dir, "quota_full", 0x00, 0x00, 0, 0x08, 0, "bob,carol", 30, NULL, 0);
    seed_env(dir, "bob_suspended", 0x00, 0x00, 0, 0x80, 0, "bob", 30, NULL, 0);
    seed_env(dir, "too_many_rcpt", 0x00, 0x00, 0, 0x10, 0, "bob,carol", 30, NULL, 0);
    seed_env(dir, "too_large", 0x00, 0x00, 0, 0x20, 0, "bob", 1001, NULL, 0);
    /* refusals after authentication, and cuts */
    seed_env(dir, "unknown_rcpt", 0x00, 0x00, 0, 0, 0, "zed", 20, NULL, 0);
    seed_env(dir, "too_old", 0x00, 0x00, 0, 0, 0, "bob", 20, NULL, NOW_MS - 86400001);
    seed_env(dir, "cut_broken", 0x08, 0x00, 0, 0, 0, "bob", 20, NULL, 0);
    seed_env(dir, "cut_too_large", 0x0c, 0x00, 0, 0, 0, "bob", 20, NULL, 0);
    {
        tlv_add(&t, KMDC_TLV_RCPT, "bob", 3);
        tlv_add(&t, KMDC_TLV_NAME, "../x", 4);
        tlv_u64(&t, KMDC_TLV_SIZE, 40);
        tlv_u64(&t, KMDC_TLV_SENT, NOW_MS);
        seal_tlv(&env, ALICE, 0, &t, doc, 40);
        seed_write(dir, "bad_name", 0x00, 0x00, 0, 0, &env);
        buf_free(&env);
    }
    {
        struct spec sp = { .serial = ALICE, .seq = 0, .to = "bob", .doc = doc, .len = 300 };

        seal(&env, &sp);
        env.p[env.n - 20] ^= 1;
        seed_write(dir, "chunk_flipped", 0x00, 0x00, 0, 0, &env);
        env.p[env.n - 20] ^= 1;
        buf_add(&env, "xyz", 3);
        seed_write(dir, "trailing", 0x00, 0x00, 0, 0, &env);
        env.n = prefix_len(&env) + 10;
        seed_write(dir, "truncated_payload", 0x00, 0x00, 0, 0, &env);
        env.n = 60;
        seed_write(dir, "truncated_keyblock", 0x00, 0x01, 0, 0, &env);
        env.n = 44;
        kmdc_put_u32(env.p + 40, 58);
        seed_write(dir, "kb_len_58", 0x00, 0x00, 0, 0, &env);
        buf_free(&env);
    }
    buf_free(&t);
    free(doc);
    return seed_failed;
}

int
main(int argc, char **argv)
{
    if (argc == 3 && strcmp(argv[1], "--seeds") == 0)
        return write_seeds(argv[2]);
    if (argc != 1) {
        fprintf(stderr, "usage: test_intake [--seeds DIR]\n");
        return 2;
    }
    test_accepted();
    test_sizes();
    test_window();
    test_senders();
    test_prefix();
    test_keyblock();
    test_retries();
    test_spent();
    test_trailing();
    test_unavailable();
    test_slots();
    test_whole();
    test_cut();
    test_quota();
    test_null_address();
    test_concurrent();
    test_spend_race();
    test_overlap();
    test_sendbody();
    return tap_done();
}
