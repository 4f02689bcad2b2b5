/* memstore.c - the in-memory kmdc_store of the tests (see memstore.h). */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_util.h"
#include "memstore.h"

#define MS(st) ((memstore *)(st))

static const char *const op_names[MS_N_OPS] = {
    "sender_load", "receipt_find", "slot_take", "slot_release",
    "recipients_resolve", "upload_append", "upload_drop", "publish", "spend",
};

const char *
memstore_op_name(memstore_op op)
{
    return (unsigned)op < MS_N_OPS ? op_names[op] : "?";
}

/* ---- helpers ---------------------------------------------------------------- */

/* Grow an array to hold one more element; 0 on success. */
static int
grow(void *pp, size_t *cap, size_t n, size_t elem)
{
    void **p = pp;
    size_t c;
    void *q;

    if (n < *cap)
        return 0;
    c = *cap ? *cap * 2 : 8;
    if ((q = realloc(*p, c * elem)) == NULL)
        return -1;
    *p = q;
    *cap = c;
    return 0;
}

__attribute__((format(printf, 2, 3))) static kmdc_store_rc
violation(memstore *ms, const char *fmt, ...)
{
    va_list ap;

    if (ms->violations++ == 0) {
        va_start(ap, fmt);
        vsnprintf(ms->violation, sizeof(ms->violation), fmt, ap);
        va_end(ap);
    }
    return KMDC_STORE_ERROR;
}

static void nothing_pending(memstore *ms, memstore_op op);

/* Count a call; 1 when it must answer UNAVAILABLE. */
static int
called(memstore *ms, memstore_op op)
{
    ms->calls[op]++;
    if (ms->fail_always[op] || ms->calls[op] == ms->fail_at[op]) {
        ms->failures++;
        return 1;
    }
    return 0;
}

static ms_card *
find_card(const memstore *ms, uint64_t serial)
{
    size_t i;

    for (i = 0; i < ms->n_cards; i++)
        if (ms->cards[i].serial == serial)
            return &ms->cards[i];
    return NULL;
}

static ms_card *
find_address(const memstore *ms, const char *addr)
{
    size_t i;

    for (i = 0; i < ms->n_cards; i++)
        if (strcmp(ms->cards[i].address, addr) == 0)
            return &ms->cards[i];
    return NULL;
}

static ms_receipt *
find_receipt(const memstore *ms, uint64_t serial, uint64_t seq)
{
    size_t i;

    for (i = 0; i < ms->n_receipts; i++)
        if (ms->receipts[i].serial == serial && ms->receipts[i].seq == seq)
            return &ms->receipts[i];
    return NULL;
}

static ms_upload *
find_upload(const memstore *ms, int64_t id)
{
    size_t i;

    for (i = 0; i < ms->n_uploads; i++)
        if (ms->uploads[i].id == id)
            return &ms->uploads[i];
    return NULL;
}

static int
upload_referenced(const memstore *ms, int64_t id)
{
    size_t i;

    for (i = 0; i < ms->n_messages; i++)
        if (ms->messages[i].upload_id == id)
            return 1;
    return 0;
}

static ms_lease *
find_lease(const memstore *ms, const kmdc_lease *l)
{
    size_t i;

    if (l == NULL)
        return NULL;
    for (i = 0; i < ms->n_leases; i++)
        if (ms->leases[i].serial == l->serial && ms->leases[i].slot == l->slot &&
            ms->leases[i].holder == l->holder)
            return &ms->leases[i];
    return NULL;
}

static void
release_lease(memstore *ms, const kmdc_lease *l)
{
    ms_lease *x = find_lease(ms, l);

    if (x != NULL) {
        *x = ms->leases[ms->n_leases - 1];
        ms->n_leases--;
    }
}

static int
insert_receipt(memstore *ms, uint64_t serial, uint64_t seq, const kmdc_receipt *r)
{
    if (grow(&ms->receipts, &ms->cap_receipts, ms->n_receipts, sizeof(ms_receipt)) != 0)
        return -1;
    ms->receipts[ms->n_receipts].serial = serial;
    ms->receipts[ms->n_receipts].seq = seq;
    ms->receipts[ms->n_receipts].r = *r;
    ms->n_receipts++;
    return 0;
}

void
memstore_pending(const memstore *ms, uint64_t serial, int64_t *count, int64_t *bytes)
{
    const ms_card *c = find_card(ms, serial);
    int64_t n = c != NULL ? c->extra_count : 0, b = c != NULL ? c->extra_bytes : 0;
    size_t i;

    for (i = 0; i < ms->n_deliveries; i++) {
        const ms_delivery *d = &ms->deliveries[i];
        const ms_message *m;
        if (d->recipient != serial)
            continue;
        m = memstore_message(ms, d->message_id);
        n++;
        b += (int64_t)d->head_len + (m != NULL ? (int64_t)m->payload_len : 0);
    }
    *count = n;
    *bytes = b;
}

/* ---- the operations ------------------------------------------------------- */

static kmdc_store_rc
op_sender_load(kmdc_store *st, uint64_t serial, uint64_t seq, kmdc_sender *out)
{
    memstore *ms = MS(st);
    const ms_card *c;
    const ms_receipt *r;

    nothing_pending(ms, MS_SENDER_LOAD);
    if (called(ms, MS_SENDER_LOAD))
        return KMDC_STORE_UNAVAILABLE;
    memset(out, 0, sizeof(*out));
    if ((c = find_card(ms, serial)) == NULL)
        return KMDC_STORE_NOTFOUND;
    out->status = c->status;
    memcpy(out->address, c->address, sizeof(out->address));
    out->up_next = c->up_next;
    memcpy(out->up_chain, c->up_chain, sizeof(out->up_chain));
    if ((r = find_receipt(ms, serial, seq)) != NULL) {
        out->has_receipt = 1;
        out->receipt = r->r;
    }
    return KMDC_STORE_OK;
}

static kmdc_store_rc
op_receipt_find(kmdc_store *st, uint64_t serial, uint64_t seq, kmdc_receipt *out)
{
    memstore *ms = MS(st);
    const ms_receipt *r;

    nothing_pending(ms, MS_RECEIPT_FIND);
    if (called(ms, MS_RECEIPT_FIND))
        return KMDC_STORE_UNAVAILABLE;
    if ((r = find_receipt(ms, serial, seq)) == NULL)
        return KMDC_STORE_NOTFOUND;
    *out = r->r;
    return KMDC_STORE_OK;
}

static kmdc_store_rc
op_slot_take(kmdc_store *st, uint64_t serial, int max, kmdc_lease *lease)
{
    memstore *ms = MS(st);
    int slot;
    size_t i;

    nothing_pending(ms, MS_SLOT_TAKE);
    if (called(ms, MS_SLOT_TAKE))
        return KMDC_STORE_UNAVAILABLE;
    if (serial == 0 || max < 1)
        return violation(ms, "slot_take: serial %016llx, max %d",
                         (unsigned long long)serial, max);
    for (slot = 0; slot < max; slot++) {
        ms_lease *free_row = NULL;
        int taken = 0;
        for (i = 0; i < ms->n_leases; i++) {
            ms_lease *l = &ms->leases[i];
            if (l->serial != serial || l->slot != slot)
                continue;
            if (l->expired)
                free_row = l;
            else
                taken = 1;
        }
        if (taken)
            continue;
        if (free_row == NULL) {
            if (grow(&ms->leases, &ms->cap_leases, ms->n_leases, sizeof(ms_lease)) != 0)
                return KMDC_STORE_ERROR;
            free_row = &ms->leases[ms->n_leases++];
        }
        free_row->serial = serial;
        free_row->slot = slot;
        free_row->holder = ++ms->next_holder;
        free_row->expired = 0;
        lease->serial = serial;
        lease->slot = slot;
        lease->holder = free_row->holder;
        return KMDC_STORE_OK;
    }
    return KMDC_STORE_BUSY;
}

static kmdc_store_rc
op_slot_release(kmdc_store *st, const kmdc_lease *lease)
{
    memstore *ms = MS(st);

    nothing_pending(ms, MS_SLOT_RELEASE);
    if (called(ms, MS_SLOT_RELEASE))
        return KMDC_STORE_UNAVAILABLE;
    release_lease(ms, lease);
    return KMDC_STORE_OK;
}

static kmdc_store_rc
op_recipients_resolve(kmdc_store *st, const char (*addr)[KMDC_ADDR_MAX + 1], size_t n,
                      kmdc_recipient *out)
{
    memstore *ms = MS(st);
    size_t i;

    if (ms->before_resolve != NULL) {
        void (*fn)(void *) = ms->before_resolve;

        ms->before_resolve = NULL;
        fn(ms->before_resolve_arg);
    }
    nothing_pending(ms, MS_RECIPIENTS_RESOLVE);
    if (called(ms, MS_RECIPIENTS_RESOLVE))
        return KMDC_STORE_UNAVAILABLE;
    if (n < 1 || n > KMDC_RCPT_MAX)
        return violation(ms, "recipients_resolve: %zu addresses", n);
    for (i = 0; i < n; i++) {
        const ms_card *c;
        size_t len = strnlen(addr[i], KMDC_ADDR_MAX + 1);
        if (!kmdc_address_valid(addr[i], len))
            return violation(ms, "recipients_resolve: address %zu is not valid", i);
        memset(&out[i], 0, sizeof(out[i]));
        c = find_address(ms, addr[i]);
        if (c == NULL || c->status != KMDC_CARD_ST_ACTIVE)
            continue;
        out[i].serial = c->serial;
        memstore_pending(ms, c->serial, &out[i].pending_count, &out[i].pending_bytes);
    }
    return KMDC_STORE_OK;
}

/* The pending batch written (or refused) now, as the database does while
 * the caller reads on. */
static kmdc_store_rc
settle_pending(memstore *ms)
{
    ms_pending *pb = &ms->pend;
    ms_upload *u;
    ms_lease *l = NULL;
    kmdc_store_rc rc = KMDC_STORE_ERROR;

    if (!pb->active)
        return KMDC_STORE_OK;
    pb->active = 0;
    ms->settles++;
    if (pb->fail) {
        rc = KMDC_STORE_UNAVAILABLE;     /* nothing written */
        goto out;
    }
    if (pb->has_lease && (l = find_lease(ms, &pb->lease)) == NULL) {
        rc = KMDC_STORE_BUSY;            /* expired, and another upload took it */
        goto out;
    }
    if (pb->sent_id == 0) {
        if (grow(&ms->uploads, &ms->cap_uploads, ms->n_uploads, sizeof(ms_upload)) != 0)
            goto out;
        u = &ms->uploads[ms->n_uploads];
        memset(u, 0, sizeof(*u));
        u->id = ++ms->next_upload_id;
        u->size = pb->size;
        /* the row is created with the first batch, in the same statement */
    } else {
        if ((u = find_upload(ms, pb->sent_id)) == NULL) {
            rc = violation(ms, "upload_append: no upload %lld", (long long)pb->sent_id);
            goto out;
        }
        if (upload_referenced(ms, u->id)) {
            rc = violation(ms, "upload_append: upload %lld is published", (long long)u->id);
            goto out;
        }
        if ((size_t)pb->idx != u->n_batches) {
            rc = violation(ms, "upload_append: batch %d after %zu batches", pb->idx,
                           u->n_batches);
            goto out;
        }
    }
    if (grow(&u->batches, &u->cap, u->n_batches, sizeof(ms_batch)) != 0)
        goto out;
    u->batches[u->n_batches].idx = pb->idx;
    u->batches[u->n_batches].data = pb->data;
    u->batches[u->n_batches].len = pb->len;
    pb->data = NULL;                     /* the upload's now */
    u->n_batches++;
    u->bytes += pb->len;
    if (pb->sent_id == 0)
        ms->n_uploads++;
    *pb->upload_id = u->id;
    if (l != NULL)
        l->expired = 0;                  /* renewed */
    rc = KMDC_STORE_OK;
out:
    free(pb->data);
    pb->data = NULL;
    pb->upload_id = NULL;
    return rc;
}

/* Every operation but the upload's own: the caller settles first. */
static void
nothing_pending(memstore *ms, memstore_op op)
{
    if (!ms->pend.active)
        return;
    (void)violation(ms, "%s with an upload batch pending", memstore_op_name(op));
    (void)settle_pending(ms);
}

static kmdc_store_rc
op_upload_settle(kmdc_store *st)
{
    return settle_pending(MS(st));
}

static kmdc_store_rc
op_upload_append(kmdc_store *st, int64_t *upload_id, uint64_t size, int idx,
                 const uint8_t *data, size_t len, const kmdc_lease *lease)
{
    memstore *ms = MS(st);
    ms_pending *pb = &ms->pend;
    kmdc_store_rc rc;
    int fail;

    if ((rc = settle_pending(ms)) != KMDC_STORE_OK)
        return rc;                       /* the batch before failed */
    fail = called(ms, MS_UPLOAD_APPEND);
    if (fail && ms->fail_on_send)
        return KMDC_STORE_UNAVAILABLE;   /* the connection was gone: nothing sent */
    if ((*upload_id == 0) != (idx == 0))
        return violation(ms, "upload_append: batch %d of upload %lld", idx,
                         (long long)*upload_id);
    if (len == 0 || data == NULL)
        return violation(ms, "upload_append: an empty batch %d", idx);
    memset(pb, 0, sizeof(*pb));
    if ((pb->data = malloc(len)) == NULL)
        return KMDC_STORE_ERROR;
    memcpy(pb->data, data, len);         /* the caller reuses its buffer */
    pb->len = len;
    pb->idx = idx;
    pb->size = size;
    pb->sent_id = *upload_id;
    pb->upload_id = upload_id;
    pb->fail = fail;
    if (lease != NULL) {
        pb->has_lease = 1;
        pb->lease = *lease;
    }
    pb->active = 1;
    ms->sent_batches++;
    return KMDC_STORE_OK;
}

static void
upload_free(ms_upload *u)
{
    size_t i;

    for (i = 0; i < u->n_batches; i++)
        free(u->batches[i].data);
    free(u->batches);
}

static kmdc_store_rc
op_upload_drop(kmdc_store *st, int64_t upload_id)
{
    memstore *ms = MS(st);
    ms_upload *u;

    nothing_pending(ms, MS_UPLOAD_DROP);
    if (called(ms, MS_UPLOAD_DROP))
        return KMDC_STORE_UNAVAILABLE;
    if ((u = find_upload(ms, upload_id)) == NULL)
        return KMDC_STORE_OK;
    if (upload_referenced(ms, upload_id)) {
        ms->drop_referenced++;
        return KMDC_STORE_OK;
    }
    upload_free(u);
    *u = ms->uploads[ms->n_uploads - 1];
    ms->n_uploads--;
    return KMDC_STORE_OK;
}

/* The concurrent-retry hook: a byte-identical (or another) upload of the
 * same counter committed while this one streamed. */
static kmdc_store_rc
concurrent_publish(memstore *ms, const kmdc_publication *pub, ms_card *s,
                   kmdc_publish_outcome *outcome)
{
    kmdc_receipt r;

    memset(&r, 0, sizeof(r));
    r.scope = KMDC_SCOPE_ENVELOPE;
    memcpy(r.hash, pub->envelope_hash, 32);
    if (ms->publish_concurrent == 2)
        r.hash[0] ^= 0x80;
    r.has_prefix_hash = 1;
    memcpy(r.prefix_hash, pub->prefix_hash, 32);
    if (ms->publish_concurrent == 2)
        r.prefix_hash[0] ^= 0x80;
    r.http_status = 201;
    r.message_id = UINT64_C(0x0123456789abcdef);
    snprintf(r.answer, sizeof(r.answer), "{\"message\":\"0123456789abcdef\",\"deliveries\":%zu}",
             pub->n_rcpt);
    if (find_receipt(ms, pub->serial, pub->seq) == NULL &&
        insert_receipt(ms, pub->serial, pub->seq, &r) != 0)
        return KMDC_STORE_ERROR;
    s->up_next = pub->seq + 1;
    memcpy(s->up_chain, pub->up_chain_next, KMDC_WRAPPED_LEN);
    ms->publish_concurrent = 0;
    ms->publish_concurrent_fired = 1;
    *outcome = KMDC_PUBLISH_SPENT;
    return KMDC_STORE_OK;
}

static kmdc_store_rc
op_publish(kmdc_store *st, const kmdc_publication *pub, kmdc_publish_outcome *outcome,
           size_t *which)
{
    memstore *ms = MS(st);
    ms_card *s, *rc[KMDC_RCPT_MAX];
    uint8_t *heads[KMDC_RCPT_MAX];
    size_t head_len[KMDC_RCPT_MAX];
    uint8_t next[KMDC_RCPT_MAX][KMDC_WRAPPED_LEN];
    ms_upload *u = NULL;
    kmdc_receipt r;
    kmdc_store_rc ret = KMDC_STORE_ERROR;
    size_t i, j, alen;
    int lost;

    if (ms->pend.active) {
        /* never publish before every batch is known to be written */
        nothing_pending(ms, MS_PUBLISH);
        return KMDC_STORE_ERROR;
    }
    if (called(ms, MS_PUBLISH))
        return KMDC_STORE_UNAVAILABLE;
    lost = ms->publish_lost_at != 0 && ms->calls[MS_PUBLISH] == ms->publish_lost_at;
    *outcome = KMDC_PUBLISHED;
    *which = 0;
    memset(heads, 0, sizeof(heads));

    /* what the caller must get right */
    if (pub->n_rcpt < 1 || pub->n_rcpt > KMDC_RCPT_MAX)
        return violation(ms, "publish: %zu recipients", pub->n_rcpt);
    if (pub->message_id == 0 || pub->message_id > KMDC_U63_MAX ||
        memstore_message(ms, pub->message_id) != NULL)
        return violation(ms, "publish: message id %016llx unusable",
                         (unsigned long long)pub->message_id);
    if (pub->seal == NULL || pub->answer == NULL)
        return violation(ms, "publish: no seal function or answer");
    alen = strlen(pub->answer);
    if (alen == 0 || alen >= KMDC_RECEIPT_ANSWER_MAX)
        return violation(ms, "publish: an answer of %zu bytes", alen);
    if (pub->size > KMDC_MAX_DOC || pub->payload_len != kmdc_payload_len(pub->size))
        return violation(ms, "publish: payload_len %llu for size %llu",
                         (unsigned long long)pub->payload_len,
                         (unsigned long long)pub->size);
    if (pub->upload_id == 0) {
        /* the payload travels inside the publication */
        if (pub->inline_data == NULL || pub->inline_len != pub->payload_len)
            return violation(ms, "publish: no upload and %zu inline bytes for a payload "
                             "of %llu", pub->inline_len,
                             (unsigned long long)pub->payload_len);
        ms->inline_publications++;
    } else if ((u = find_upload(ms, pub->upload_id)) == NULL)
        return violation(ms, "publish: no upload %lld", (long long)pub->upload_id);
    else if (pub->inline_data != NULL)
        return violation(ms, "publish: upload %lld and inline bytes",
                         (long long)pub->upload_id);
    else if (upload_referenced(ms, u->id))
        return violation(ms, "publish: upload %lld is already published",
                         (long long)u->id);
    if (pub->upload_id != 0 && (u->bytes != pub->payload_len || u->size != pub->size))
        return violation(ms, "publish: upload %lld holds %llu bytes of size %llu, "
                         "the publication says %llu of %llu", (long long)u->id,
                         (unsigned long long)u->bytes, (unsigned long long)u->size,
                         (unsigned long long)pub->payload_len,
                         (unsigned long long)pub->size);
    for (i = 0; i < pub->n_rcpt; i++)
        for (j = 0; j < i; j++)
            if (pub->rcpt[i] == pub->rcpt[j])
                return violation(ms, "publish: recipient %016llx twice",
                                 (unsigned long long)pub->rcpt[i]);

    /* the rows, "locked", checked again */
    if ((s = find_card(ms, pub->serial)) == NULL)
        return violation(ms, "publish: no sender %016llx", (unsigned long long)pub->serial);
    if (ms->publish_concurrent)
        return concurrent_publish(ms, pub, s, outcome);
    if (s->up_next > pub->seq) {
        *outcome = KMDC_PUBLISH_SPENT;
        return KMDC_STORE_OK;
    }
    if (s->status != KMDC_CARD_ST_ACTIVE) {
        *outcome = KMDC_PUBLISH_SENDER_INACTIVE;
        return KMDC_STORE_OK;
    }
    for (i = 0; i < pub->n_rcpt; i++) {
        rc[i] = find_card(ms, pub->rcpt[i]);
        if (rc[i] == NULL || rc[i]->status != KMDC_CARD_ST_ACTIVE) {
            *outcome = KMDC_PUBLISH_RECIPIENT_INACTIVE;
            *which = i;
            return KMDC_STORE_OK;
        }
    }
    for (i = 0; i < pub->n_rcpt; i++) {
        int64_t count, bytes;
        memstore_pending(ms, rc[i]->serial, &count, &bytes);
        if (count + 1 > pub->quota_count ||
            (uint64_t)bytes + pub->quota_add > (uint64_t)pub->quota_bytes) {
            *outcome = KMDC_PUBLISH_QUOTA;
            *which = i;
            return KMDC_STORE_OK;
        }
    }

    /* seal every delivery before writing anything */
    for (i = 0; i < pub->n_rcpt; i++) {
        kmdc_status sst;
        if ((heads[i] = malloc(KMDC_HEAD_MAX)) == NULL)
            goto out;
        head_len[i] = 0;
        memset(next[i], 0, sizeof(next[i]));
        sst = pub->seal(pub->seal_arg, i, rc[i]->serial, rc[i]->down_next,
                        rc[i]->down_chain, heads[i], KMDC_HEAD_MAX, &head_len[i], next[i]);
        if (sst != KMDC_OK)
            goto out;                    /* rolled back: ERROR */
        if (head_len[i] < KMDC_HEADER_LEN + 4 + KMDC_KB_MIN || head_len[i] > KMDC_HEAD_MAX) {
            ret = violation(ms, "publish: a head of %zu bytes", head_len[i]);
            goto out;
        }
    }
    if (grow(&ms->messages, &ms->cap_messages, ms->n_messages, sizeof(ms_message)) != 0 ||
        grow(&ms->receipts, &ms->cap_receipts, ms->n_receipts, sizeof(ms_receipt)) != 0)
        goto out;
    while (ms->n_deliveries + pub->n_rcpt > ms->cap_deliveries) {
        if (grow(&ms->deliveries, &ms->cap_deliveries, ms->cap_deliveries,
                 sizeof(ms_delivery)) != 0)
            goto out;
    }
    if (find_receipt(ms, pub->serial, pub->seq) != NULL) {
        ret = violation(ms, "publish: a receipt for %016llx/%llu exists below up_next",
                        (unsigned long long)pub->serial, (unsigned long long)pub->seq);
        goto out;
    }

    if (pub->upload_id == 0) {
        /* the upload row the publication makes (room first, then the row) */
        uint8_t *copy;
        if (grow(&ms->uploads, &ms->cap_uploads, ms->n_uploads, sizeof(ms_upload)) != 0 ||
            (copy = malloc(pub->inline_len)) == NULL)
            goto out;
        u = &ms->uploads[ms->n_uploads];
        memset(u, 0, sizeof(*u));
        if (grow(&u->batches, &u->cap, 0, sizeof(ms_batch)) != 0) {
            free(copy);
            goto out;
        }
        memcpy(copy, pub->inline_data, pub->inline_len);
        u->id = ++ms->next_upload_id;
        u->size = pub->size;
        u->batches[0].idx = 0;
        u->batches[0].data = copy;
        u->batches[0].len = pub->inline_len;
        u->n_batches = 1;
        u->bytes = pub->inline_len;
        ms->n_uploads++;
    }

    /* COMMIT */
    {
        ms_message *m = &ms->messages[ms->n_messages++];
        memset(m, 0, sizeof(*m));
        m->id = pub->message_id;
        m->sender = pub->serial;
        m->seq = pub->seq;
        m->size = pub->size;
        m->payload_len = pub->payload_len;
        m->upload_id = u->id;
        m->n_rcpt = pub->n_rcpt;
        memcpy(m->rcpt, pub->rcpt, pub->n_rcpt * sizeof(pub->rcpt[0]));
    }
    for (i = 0; i < pub->n_rcpt; i++) {
        ms_delivery *d = &ms->deliveries[ms->n_deliveries++];
        d->message_id = pub->message_id;
        d->recipient = rc[i]->serial;
        d->seq = rc[i]->down_next;
        d->head = heads[i];
        d->head_len = head_len[i];
        d->ttl = pub->ttl;
        heads[i] = NULL;
        rc[i]->down_next++;
        memcpy(rc[i]->down_chain, next[i], KMDC_WRAPPED_LEN);
    }
    s->up_next = pub->seq + 1;
    memcpy(s->up_chain, pub->up_chain_next, KMDC_WRAPPED_LEN);
    memset(&r, 0, sizeof(r));
    r.scope = KMDC_SCOPE_ENVELOPE;
    memcpy(r.hash, pub->envelope_hash, 32);
    r.has_prefix_hash = 1;
    memcpy(r.prefix_hash, pub->prefix_hash, 32);
    r.http_status = 201;
    memcpy(r.answer, pub->answer, alen + 1);
    r.message_id = pub->message_id;
    (void)insert_receipt(ms, pub->serial, pub->seq, &r);   /* room was made above */
    ms->audit_rows++;
    release_lease(ms, pub->lease);
    ret = KMDC_STORE_OK;
    if (lost) {
        ms->publish_lost_fired = 1;
        ms->failures++;
        *outcome = KMDC_PUBLISH_UNKNOWN;  /* committed, the answer lost */
        ret = KMDC_STORE_UNAVAILABLE;
    }
out:
    for (i = 0; i < pub->n_rcpt; i++)
        free(heads[i]);
    return ret;
}

static kmdc_store_rc
op_spend(kmdc_store *st, const kmdc_spending *sp)
{
    memstore *ms = MS(st);
    ms_card *s;
    kmdc_receipt r;
    size_t alen;

    nothing_pending(ms, MS_SPEND);
    if (called(ms, MS_SPEND))
        return KMDC_STORE_UNAVAILABLE;
    if (sp->answer == NULL || sp->error == NULL)
        return violation(ms, "spend: no answer or error code");
    alen = strlen(sp->answer);
    if (alen == 0 || alen >= KMDC_RECEIPT_ANSWER_MAX)
        return violation(ms, "spend: an answer of %zu bytes", alen);
    if (sp->http_status < 400 || sp->http_status > 599 || sp->http_status == 503 ||
        sp->http_status == 429)
        return violation(ms, "spend: status %d", sp->http_status);
    if ((s = find_card(ms, sp->serial)) == NULL)
        return violation(ms, "spend: no card %016llx", (unsigned long long)sp->serial);
    if (s->up_next > sp->seq)
        return KMDC_STORE_CONFLICT;
    if (find_receipt(ms, sp->serial, sp->seq) != NULL)
        return violation(ms, "spend: a receipt for %016llx/%llu exists below up_next",
                         (unsigned long long)sp->serial, (unsigned long long)sp->seq);
    memset(&r, 0, sizeof(r));
    r.scope = KMDC_SCOPE_KEYBLOCK;
    memcpy(r.hash, sp->prefix_hash, 32);
    r.has_prefix_hash = 1;
    memcpy(r.prefix_hash, sp->prefix_hash, 32);
    r.http_status = sp->http_status;
    memcpy(r.answer, sp->answer, alen + 1);
    r.message_id = 0;
    if (insert_receipt(ms, sp->serial, sp->seq, &r) != 0)
        return KMDC_STORE_ERROR;
    s->up_next = sp->seq + 1;
    memcpy(s->up_chain, sp->up_chain_next, KMDC_WRAPPED_LEN);
    ms->audit_rows++;
    release_lease(ms, sp->lease);
    return KMDC_STORE_OK;
}

static const kmdc_store_ops memstore_ops = {
    .sender_load = op_sender_load,
    .receipt_find = op_receipt_find,
    .slot_take = op_slot_take,
    .slot_release = op_slot_release,
    .recipients_resolve = op_recipients_resolve,
    .upload_append = op_upload_append,
    .upload_settle = op_upload_settle,
    .upload_drop = op_upload_drop,
    .publish = op_publish,
    .spend = op_spend,
};

/* ---- the tests' side ----------------------------------------------------------- */

memstore *
memstore_new(void)
{
    memstore *ms = calloc(1, sizeof(*ms));

    if (ms != NULL)
        ms->base.ops = &memstore_ops;
    return ms;
}

void
memstore_free(memstore *ms)
{
    size_t i;

    if (ms == NULL)
        return;
    free(ms->pend.data);
    for (i = 0; i < ms->n_uploads; i++)
        upload_free(&ms->uploads[i]);
    for (i = 0; i < ms->n_deliveries; i++)
        free(ms->deliveries[i].head);
    free(ms->cards);
    free(ms->receipts);
    free(ms->leases);
    free(ms->uploads);
    free(ms->messages);
    free(ms->deliveries);
    free(ms);
}

int
memstore_add_card(memstore *ms, const kmdc_keyring *ring, uint64_t serial,
                  const char *address, kmdc_card_status status, const uint8_t uck[32],
                  const uint8_t dck[32])
{
    ms_card *c;
    size_t alen = strlen(address);

    if (find_card(ms, serial) != NULL || alen > KMDC_ADDR_MAX ||
        grow(&ms->cards, &ms->cap_cards, ms->n_cards, sizeof(ms_card)) != 0)
        return -1;
    c = &ms->cards[ms->n_cards];
    memset(c, 0, sizeof(*c));
    c->serial = serial;
    memcpy(c->address, address, alen + 1);
    c->status = status;
    if (kmdc_keyring_wrap(ring, serial, KMDC_FIELD_UP_CHAIN, 0, uck, c->up_chain, NULL)
        != KMDC_OK ||
        kmdc_keyring_wrap(ring, serial, KMDC_FIELD_DOWN_CHAIN, 0, dck, c->down_chain, NULL)
        != KMDC_OK)
        return -1;
    ms->n_cards++;
    return 0;
}

int
memstore_set_up(memstore *ms, const kmdc_keyring *ring, uint64_t serial, uint64_t up_next,
                const uint8_t ck0[32])
{
    ms_card *c = find_card(ms, serial);
    uint8_t ck[32];
    int rc = -1;

    if (c == NULL)
        return -1;
    memcpy(ck, ck0, 32);
    if (kmdc_chain_seek(ck, 0, up_next, NULL, NULL) == KMDC_OK &&
        kmdc_keyring_wrap(ring, serial, KMDC_FIELD_UP_CHAIN, up_next, ck, c->up_chain, NULL)
        == KMDC_OK) {
        c->up_next = up_next;
        rc = 0;
    }
    kmdc_wipe(ck, sizeof(ck));
    return rc;
}

ms_card *
memstore_card(memstore *ms, uint64_t serial)
{
    return find_card(ms, serial);
}

int
memstore_card_chain(memstore *ms, const kmdc_keyring *ring, uint64_t serial, int up,
                    uint8_t ck[32])
{
    const ms_card *c = find_card(ms, serial);

    if (c == NULL)
        return -1;
    return kmdc_keyring_unwrap(ring, serial,
                               up ? KMDC_FIELD_UP_CHAIN : KMDC_FIELD_DOWN_CHAIN,
                               up ? c->up_next : c->down_next,
                               up ? c->up_chain : c->down_chain, KMDC_WRAPPED_LEN, ck,
                               NULL) == KMDC_OK ? 0 : -1;
}

int
memstore_add_receipt(memstore *ms, uint64_t serial, uint64_t seq, const kmdc_receipt *r)
{
    if (find_receipt(ms, serial, seq) != NULL)
        return -1;
    return insert_receipt(ms, serial, seq, r);
}

const ms_receipt *
memstore_receipt(const memstore *ms, uint64_t serial, uint64_t seq)
{
    return find_receipt(ms, serial, seq);
}

size_t
memstore_leases(const memstore *ms, uint64_t serial, int with_expired)
{
    size_t i, n = 0;

    for (i = 0; i < ms->n_leases; i++)
        if ((serial == 0 || ms->leases[i].serial == serial) &&
            (with_expired || !ms->leases[i].expired))
            n++;
    return n;
}

void
memstore_expire_leases(memstore *ms, uint64_t serial)
{
    size_t i;

    for (i = 0; i < ms->n_leases; i++)
        if (serial == 0 || ms->leases[i].serial == serial)
            ms->leases[i].expired = 1;
}

int
memstore_slots_conflict(const memstore *ms)
{
    size_t i, j;

    for (i = 0; i < ms->n_leases; i++) {
        const ms_lease *a = &ms->leases[i];
        if (a->slot < 0)
            return 1;
        if (a->expired)
            continue;
        for (j = i + 1; j < ms->n_leases; j++) {
            const ms_lease *b = &ms->leases[j];
            if (!b->expired && a->serial == b->serial && a->slot == b->slot)
                return 1;
        }
    }
    return 0;
}

size_t
memstore_orphans(const memstore *ms)
{
    size_t i, n = 0;

    for (i = 0; i < ms->n_uploads; i++)
        if (!upload_referenced(ms, ms->uploads[i].id))
            n++;
    return n;
}

const ms_upload *
memstore_upload(const memstore *ms, int64_t id)
{
    return find_upload(ms, id);
}

const ms_message *
memstore_message(const memstore *ms, uint64_t id)
{
    size_t i;

    for (i = 0; i < ms->n_messages; i++)
        if (ms->messages[i].id == id)
            return &ms->messages[i];
    return NULL;
}

uint8_t *
memstore_payload(const memstore *ms, int64_t id, size_t *len)
{
    const ms_upload *u = find_upload(ms, id);
    uint8_t *p;
    size_t i, off = 0;

    *len = 0;
    if (u == NULL || (p = malloc(u->bytes ? (size_t)u->bytes : 1)) == NULL)
        return NULL;
    for (i = 0; i < u->n_batches; i++) {
        memcpy(p + off, u->batches[i].data, u->batches[i].len);
        off += u->batches[i].len;
    }
    *len = off;
    return p;
}

const ms_delivery *
memstore_delivery(const memstore *ms, uint64_t recipient, size_t i)
{
    size_t k;

    for (k = 0; k < ms->n_deliveries; k++)
        if (ms->deliveries[k].recipient == recipient && i-- == 0)
            return &ms->deliveries[k];
    return NULL;
}

size_t
memstore_deliveries(const memstore *ms, uint64_t recipient)
{
    size_t k, n = 0;

    for (k = 0; k < ms->n_deliveries; k++)
        if (ms->deliveries[k].recipient == recipient)
            n++;
    return n;
}

size_t
memstore_message_deliveries(const memstore *ms, uint64_t message_id)
{
    size_t k, n = 0;

    for (k = 0; k < ms->n_deliveries; k++)
        if (ms->deliveries[k].message_id == message_id)
            n++;
    return n;
}

void
memstore_fail_nth(memstore *ms, memstore_op op, unsigned long n)
{
    ms->fail_at[op] = ms->calls[op] + n;
}

void
memstore_fail_always(memstore *ms, memstore_op op, int on)
{
    ms->fail_always[op] = on;
}

void
memstore_before_resolve(memstore *ms, void (*fn)(void *), void *arg)
{
    ms->before_resolve = fn;
    ms->before_resolve_arg = arg;
}

void
memstore_publish_lost_nth(memstore *ms, unsigned long n)
{
    ms->publish_lost_at = ms->calls[MS_PUBLISH] + n;
}

void
memstore_publish_concurrent(memstore *ms, int same)
{
    ms->publish_concurrent = same ? 1 : 2;
}

void
memstore_fail_clear(memstore *ms)
{
    memset(ms->fail_at, 0, sizeof(ms->fail_at));
    memset(ms->fail_always, 0, sizeof(ms->fail_always));
    ms->publish_lost_at = 0;
    ms->publish_concurrent = 0;
    ms->fail_on_send = 0;
}

unsigned long
memstore_write_calls(const memstore *ms)
{
    return ms->calls[MS_SLOT_TAKE] + ms->calls[MS_SLOT_RELEASE] +
           ms->calls[MS_UPLOAD_APPEND] + ms->calls[MS_UPLOAD_DROP] +
           ms->calls[MS_PUBLISH] + ms->calls[MS_SPEND];
}
