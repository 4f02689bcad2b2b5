/*
 * fuzz_intake.c - the send intake (kmdc_intake) behind the body adapter
 * (kmdc_sendbody), against the in-memory store of the unit tests.
 *
 * The fixture is fixed: cards alice (the sender), bob and carol, their
 * chain keys derived from their serials by tests/fixtures.h, exactly as
 * tests/test_intake.c derives them (so the seeds it writes, `test_intake
 * --seeds DIR`, are authentic up envelopes of alice and reach the payload
 * and publication),
 * one master key, a fixed clock.
 *
 * Input: four control bytes, then the envelope (or, in body mode 3, the
 * whole request body).
 *   c0  bits 0-1  body: 0 raw; 1 multipart, serial part first; 2 multipart,
 *                 serial part after the envelope; 3 the rest is a multipart
 *                 body as is (boundary BOUNDARY below)
 *       bits 2-3  end: 0/1 finish; 2 cut off (read error); 3 cut off (too large)
 *       bits 4-5  a receipt for the header's seq (and up_next past it):
 *                 0 none; 1 keyblock scope over the prefix; 2 envelope scope
 *                 over the whole; 3 envelope scope, another hash
 *       bit 6     multipart without a serial part
 *       bit 7     the serial part names another card
 *   c1  slicing (what httpd's brigades do to a Content-Length or chunked
 *       body): bits 0-1 0 whole; 1 one byte; 2 k = (c1 >> 2) + 1 bytes;
 *       3 pseudo-random sizes of 1 .. 16 KiB seeded by c1 >> 2, with
 *       kmdc_intake_settle after about one slice in four (the endpoint
 *       found nothing more to read and settles before it waits)
 *   c2  store failure: bits 0-3 the operation + 1 (0 and >= 10: none);
 *       bits 4-6 the n-th call (1 .. 8); bit 7 every call
 *   c3  bit 0 publish commits and answers UNAVAILABLE; bit 1 publish finds
 *       the counter spent by the same bytes; bit 2 by other bytes; bit 3
 *       carol's mailbox is full; bit 4 KmdcMaxRecipients 1; bit 5
 *       KmdcMaxDocumentSize 1000; bit 6 a batch per chunk; bit 7 bob is
 *       suspended
 *
 * Each input runs twice on fresh fixtures: sliced as c1 says, and whole.
 * Invariants (abort on violation):
 *  - after the end (finish or cut off) an answer is decided;
 *  - 201 only when the store holds exactly one new message and one delivery
 *    per recipient of it; no message is added by any other answer (a
 *    publish whose COMMIT answer was lost excepted);
 *  - a counter moves only to the envelope's seq + 1 (one counter spent),
 *    only the sender's, and only for ACCEPTED or REFUSED (hooks that move
 *    it themselves excepted);
 *  - after kmdc_intake_free no lease and no unpublished upload remain
 *    (unless slot_release or upload_drop was made to fail);
 *  - the store saw no call a correct caller never makes;
 *  - both runs give the same status, code and result.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_intake.h"
#include "kmdc_sendbody.h"
#include "kmdc_util.h"
#include "fixtures.h"
#include "memstore.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ALICE UINT64_C(0x1a11ce0000000001)
#define BOB UINT64_C(0x0b0b000000000002)
#define CAROL UINT64_C(0x0ca2010000000003)
#define CT KMDC_CHUNK_CT_MAX

static const uint8_t MASTER[32] = { 0x4d, 0x4b, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                    15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26, 27, 28,
                                    29, 30 };

#define CHECK(cond, what)                                                       \
    do {                                                                        \
        if (!(cond)) {                                                          \
            fprintf(stderr, "fuzz_intake: invariant broken: %s (line %d)\n",    \
                    what, __LINE__);                                            \
            abort();                                                            \
        }                                                                       \
    } while (0)

static void
add_card(memstore *ms, const kmdc_keyring *ring, uint64_t serial, const char *addr,
         kmdc_card_status st)
{
    uint8_t uck[32], dck[32];

    card_key(serial, 1, uck);
    card_key(serial, 0, dck);
    if (memstore_add_card(ms, ring, serial, addr, st, uck, dck) != 0)
        abort();
}

struct ctl {
    int body, end, receipt, no_serial, other_serial;
    int slicing, slice_k, slice_seed;
    int fail_op, fail_nth, fail_always;
    int lost, concurrent_same, concurrent_other, carol_full, one_rcpt, small_doc,
        batch_chunk, bob_suspended;
};

struct outcome {
    int decided, status;
    kmdc_intake_result result;
    char code[40];
};

static uint32_t
xorshift(uint32_t *s)
{
    *s ^= *s << 13;
    *s ^= *s >> 17;
    *s ^= *s << 5;
    return *s;
}

/* Install the receipt c0 asks for, for the header's (serial, seq). */
static void
put_receipt(memstore *ms, const kmdc_keyring *ring, const struct ctl *c, const uint8_t *env,
            size_t n)
{
    uint64_t serial, seq;
    uint32_t kb;
    size_t plen;
    kmdc_receipt r;
    uint8_t ck0[32];

    if (c->receipt == 0 || n < KMDC_HEADER_LEN + 4)
        return;
    serial = kmdc_get_u64(env + 8);
    seq = kmdc_get_u64(env + 16);
    if (serial != ALICE || seq >= 512)
        return;
    kb = kmdc_get_u32(env + KMDC_HEADER_LEN);
    plen = KMDC_HEADER_LEN + 4 + (size_t)kb;
    if (plen > n)
        plen = n;
    memset(&r, 0, sizeof(r));
    r.has_prefix_hash = 1;
    if (kmdc_sha256(r.prefix_hash, env, plen, NULL) != KMDC_OK)
        abort();
    if (c->receipt == 1) {
        r.scope = KMDC_SCOPE_KEYBLOCK;
        memcpy(r.hash, r.prefix_hash, 32);
        r.http_status = 404;
        snprintf(r.answer, sizeof(r.answer), "%s",
                 "{\"error\":\"unknown_recipient\",\"message\":\"recipient 1 of 1 is unknown\"}");
    } else {
        r.scope = KMDC_SCOPE_ENVELOPE;
        if (kmdc_sha256(r.hash, env, n, NULL) != KMDC_OK)
            abort();
        if (c->receipt == 3)
            r.hash[5] ^= 0x40;
        r.http_status = 201;
        r.message_id = 0xaa;
        snprintf(r.answer, sizeof(r.answer), "%s",
                 "{\"message\":\"00000000000000aa\",\"deliveries\":1}");
    }
    card_key(ALICE, 1, ck0);
    if (memstore_set_up(ms, ring, ALICE, seq + 1, ck0) != 0 ||
        memstore_add_receipt(ms, ALICE, seq, &r) != 0)
        abort();
}

/* The request body for the envelope, as c0 says. */
static void
make_body(struct buf *b, const struct ctl *c, const uint8_t *env, size_t n)
{
    char ser[17];

    if (c->body == 0 || c->body == 3) {
        buf_add(b, env, n);
        return;
    }
    kmdc_serial_format(ser, c->other_serial ? BOB : ALICE);
    if (c->body == 1 && !c->no_serial) {
        buf_str(b, "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"serial\"\r\n\r\n");
        buf_str(b, ser);
        buf_str(b, "\r\n");
    }
    buf_str(b, "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"envelope\"; "
               "filename=\"doc.kmdc\"\r\nContent-Type: application/octet-stream\r\n\r\n");
    buf_add(b, env, n);
    buf_str(b, "\r\n");
    if (c->body == 2 && !c->no_serial) {
        buf_str(b, "--" BOUNDARY "\r\nContent-Disposition: form-data; name=\"serial\"\r\n\r\n");
        buf_str(b, ser);
        buf_str(b, "\r\n");
    }
    buf_str(b, "--" BOUNDARY "--\r\n");
}

static void
run_once(const struct ctl *c, const uint8_t *env, size_t n, int whole, struct outcome *o)
{
    kmdc_master_key mkey;
    kmdc_keyring ring;
    kmdc_intake_conf conf;
    memstore *ms = memstore_new();
    kmdc_intake *in;
    kmdc_sendbody *sb;
    const kmdc_intake_answer *a;
    struct buf body = { 0 };
    kmdc_err err;
    uint64_t before[3];
    const uint64_t serials[3] = { ALICE, BOB, CAROL };
    size_t messages, i, off = 0;
    uint32_t rs = (uint32_t)c->slice_seed * 2654435761u + 1;
    uint64_t hserial = 0, hseq = 0;
    int more = 1, moved = 0, have_header;

    if (ms == NULL)
        abort();
    mkey.id = 3;
    memcpy(mkey.key, MASTER, 32);
    ring.n = 1;
    ring.keys = &mkey;
    ring.newest = 3;
    memset(&conf, 0, sizeof(conf));
    conf.keys = &ring;
    conf.seq_window = 8;                 /* W chain steps per upload: keep it cheap */
    conf.envelope_max_age = 86400;
    conf.max_document_size = c->small_doc ? 1000 : 256 * 1024;
    conf.max_recipients = c->one_rcpt ? 1 : 8;
    conf.max_uploads_per_card = 4;
    conf.mailbox_ttl = 86400;
    conf.quota_count = 100;
    conf.quota_bytes = INT64_C(1) << 32;
    conf.batch_bytes = c->batch_chunk ? CT : 2 * CT;
    conf.now_ms = fixed_now;

    add_card(ms, &ring, ALICE, "alice", KMDC_CARD_ST_ACTIVE);
    add_card(ms, &ring, BOB, "bob",
             c->bob_suspended ? KMDC_CARD_ST_SUSPENDED : KMDC_CARD_ST_ACTIVE);
    add_card(ms, &ring, CAROL, "carol", KMDC_CARD_ST_ACTIVE);
    if (c->carol_full)
        memstore_card(ms, CAROL)->extra_count = 100;
    put_receipt(ms, &ring, c, env, n);
    for (i = 0; i < 3; i++)
        before[i] = memstore_card(ms, serials[i])->up_next;
    messages = ms->n_messages;
    if (c->fail_op >= 0) {
        if (c->fail_always)
            memstore_fail_always(ms, (memstore_op)c->fail_op, 1);
        else
            memstore_fail_nth(ms, (memstore_op)c->fail_op, (unsigned long)c->fail_nth);
    }
    if (c->lost)
        memstore_publish_lost_nth(ms, 1);
    if (c->concurrent_same || c->concurrent_other)
        memstore_publish_concurrent(ms, c->concurrent_same);

    make_body(&body, c, env, n);
    if ((in = kmdc_intake_new(&conf, &ms->base, &err)) == NULL)
        abort();
    sb = kmdc_sendbody_new(c->body == 0 ? KMDC_ENVELOPE_TYPE : MP_TYPE, in, &err);
    CHECK(sb != NULL, "kmdc_sendbody_new refused a good Content-Type");
    while (more && off < body.n) {
        size_t k = body.n - off;
        if (!whole) {
            size_t want = c->slicing == 0 ? k
                          : c->slicing == 1 ? 1
                          : c->slicing == 2 ? (size_t)c->slice_k
                                            : (size_t)(xorshift(&rs) % 16384) + 1;
            if (want < k)
                k = want;
        }
        more = kmdc_sendbody_feed(sb, body.p + off, k);
        CHECK(more == (kmdc_intake_decision(in) == NULL), "feed's return and the decision");
        off += k;
        if (more && c->slicing == 3 && (xorshift(&rs) & 3) == 0) {
            /* the endpoint found nothing more to read: it settles the
             * batch in flight before it waits */
            more = kmdc_intake_settle(in);
            CHECK(more == (kmdc_intake_decision(in) == NULL),
                  "settle's return and the decision");
            CHECK(!ms->pend.active, "a batch still pending after kmdc_intake_settle");
        }
    }
    if (more) {
        if (c->end == 2)
            kmdc_intake_cut_off(in, KMDC_INTAKE_CUT_BROKEN);
        else if (c->end == 3)
            kmdc_intake_cut_off(in, KMDC_INTAKE_CUT_TOO_LARGE);
        else
            kmdc_sendbody_finish(sb);
    }
    a = kmdc_intake_decision(in);
    CHECK(a != NULL, "no answer after the end of the body");
    CHECK(a->body != NULL && a->body[0] == '{', "an answer without a JSON body");
    o->decided = 1;
    o->status = a->status;
    o->result = a->result;
    snprintf(o->code, sizeof(o->code), "%s", a->code ? a->code : "");

    /* what the answer says against what the store holds */
    if (a->status == 201) {
        const ms_message *m = memstore_message(ms, a->message_id);
        CHECK(a->result == KMDC_INTAKE_ACCEPTED && a->code == NULL, "201 not ACCEPTED");
        CHECK(ms->n_messages == messages + 1 && m != NULL, "201 without its message");
        CHECK(memstore_message_deliveries(ms, m->id) == m->n_rcpt && m->n_rcpt >= 1,
              "201 without one delivery per recipient");
        for (i = 0; i < m->n_rcpt; i++) {
            size_t k, got = 0;
            const ms_delivery *d;
            for (k = 0; (d = memstore_delivery(ms, m->rcpt[i], k)) != NULL; k++)
                if (d->message_id == m->id)
                    got++;
            CHECK(got == 1, "a recipient without exactly one delivery");
        }
        CHECK(kmdc_intake_recipients(in) == m->n_rcpt, "kmdc_intake_recipients");
    } else if (!ms->publish_lost_fired) {
        CHECK(ms->n_messages == messages, "a message added without a 201");
    }
    if (a->result == KMDC_INTAKE_ACCEPTED)
        CHECK(a->status == 201, "ACCEPTED without 201");
    if (a->result == KMDC_INTAKE_REPEATED)
        CHECK(a->status != 201 && a->code == NULL, "REPEATED answers 201 or with a code");
    if (a->result == KMDC_INTAKE_UNAVAILABLE)
        CHECK(a->status == 503 && ms->failures > 0, "UNAVAILABLE without a store failure");
    have_header = kmdc_intake_header(in, &hserial, &hseq);
    for (i = 0; i < 3; i++) {
        uint64_t now = memstore_card(ms, serials[i])->up_next;
        CHECK(now >= before[i], "a counter moved back");
        if (now != before[i]) {
            moved++;
            CHECK(have_header && serials[i] == hserial && now == hseq + 1,
                  "a counter other than the envelope's moved");
        }
    }
    CHECK(moved <= 1, "two counters moved");
    if (!ms->publish_lost_fired && !ms->publish_concurrent_fired) {
        int spends = a->result == KMDC_INTAKE_ACCEPTED || a->result == KMDC_INTAKE_REFUSED;
        CHECK(moved == spends, "a counter moved without ACCEPTED/REFUSED, or not with them");
    }

    kmdc_sendbody_free(sb);
    kmdc_intake_free(in);
    if (c->fail_op != MS_SLOT_RELEASE)
        CHECK(memstore_leases(ms, 0, 1) == 0, "a lease left after kmdc_intake_free");
    if (c->fail_op != MS_UPLOAD_DROP)
        CHECK(memstore_orphans(ms) == 0, "an unpublished upload left after kmdc_intake_free");
    if (ms->violations != 0)
        fprintf(stderr, "fuzz_intake: store violation: %s\n", ms->violation);
    CHECK(ms->violations == 0, "the store saw a call a correct caller never makes");
    CHECK(!memstore_slots_conflict(ms), "two leases of one slot");
    memstore_free(ms);
    free(body.p);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ctl c;
    struct outcome o1, o2;
    int op;

    if (size < 4 || size > 400000)
        return 0;
    memset(&c, 0, sizeof(c));
    c.body = data[0] & 3;
    c.end = data[0] >> 2 & 3;
    c.receipt = data[0] >> 4 & 3;
    c.no_serial = data[0] >> 6 & 1;
    c.other_serial = data[0] >> 7 & 1;
    c.slicing = data[1] & 3;
    c.slice_k = (data[1] >> 2) + 1;
    c.slice_seed = data[1] >> 2;
    op = data[2] & 15;
    c.fail_op = op >= 1 && op <= MS_N_OPS ? op - 1 : -1;
    c.fail_nth = (data[2] >> 4 & 7) + 1;
    c.fail_always = data[2] >> 7 & 1;
    c.lost = data[3] & 1;
    c.concurrent_same = data[3] >> 1 & 1;
    c.concurrent_other = !c.concurrent_same && (data[3] >> 2 & 1);
    c.carol_full = data[3] >> 3 & 1;
    c.one_rcpt = data[3] >> 4 & 1;
    c.small_doc = data[3] >> 5 & 1;
    c.batch_chunk = data[3] >> 6 & 1;
    c.bob_suspended = data[3] >> 7 & 1;
    if (c.slicing == 1 && size > 20000)
        c.slicing = 2;                   /* keep one-byte feeding to small inputs */

    memset(&o1, 0, sizeof(o1));
    memset(&o2, 0, sizeof(o2));
    run_once(&c, data + 4, size - 4, 0, &o1);
    run_once(&c, data + 4, size - 4, 1, &o2);
    if (getenv("FUZZ_INTAKE_VERBOSE") != NULL)   /* to see what the seeds reach */
        fprintf(stderr, "fuzz_intake: %zu bytes: sliced %d %s (%d), whole %d %s (%d)\n", size,
                o1.status, o1.code, (int)o1.result, o2.status, o2.code, (int)o2.result);
    if (o1.status != o2.status || o1.result != o2.result || strcmp(o1.code, o2.code) != 0)
        fprintf(stderr, "fuzz_intake: sliced %d %s (%d), whole %d %s (%d)\n", o1.status,
                o1.code, (int)o1.result, o2.status, o2.code, (int)o2.result);
    CHECK(o1.status == o2.status && o1.result == o2.result &&
          strcmp(o1.code, o2.code) == 0, "the answer depends on the slicing");
    return 0;
}
