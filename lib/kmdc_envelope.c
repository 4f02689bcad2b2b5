/* kmdc_envelope.c - the KMDC/1 envelope (docs/PROTOCOL.md section 3): header, keyblock,
 * and the streaming writer and reader built on them (the payload is in kmdc_payload.c). */
#include "kmdc_envelope.h"
#include "kmdc_crypto.h"
#include "kmdc_util.h"

#include <stdlib.h>
#include <string.h>

static const uint8_t magic[4] = { 'K', 'M', 'D', 'C' };
static const char info_keyblock[] = "KMDC/1 keyblock";
static const char info_payload[] = "KMDC/1 payload";

/* ------------------------------------------------------------------ */
/* header                                                             */

static kmdc_status
header_check(const kmdc_header *h, kmdc_status code, kmdc_err *err)
{
    if (h->version != KMDC_VERSION)
        return kmdc_err_set(err, code, "unsupported envelope version %u",
                            (unsigned)h->version);
    if (h->flags != 0)
        return kmdc_err_set(err, code, "envelope flags must be 0 (got 0x%04x)",
                            (unsigned)h->flags);
    if (h->direction != KMDC_DIR_UP && h->direction != KMDC_DIR_DOWN)
        return kmdc_err_set(err, code, "unknown envelope direction %u",
                            (unsigned)h->direction);
    if (h->serial == 0 || h->serial > KMDC_U63_MAX)
        return kmdc_err_set(err, code, "the envelope serial lies outside "
                            "1 .. 2^63-1");
    if (h->seq > KMDC_U63_MAX)
        return kmdc_err_set(err, code, "the envelope counter exceeds 2^63-1");
    return KMDC_OK;
}

kmdc_status
kmdc_header_new_salt(kmdc_header *h, kmdc_err *err)
{
    return kmdc_random(h->salt, sizeof(h->salt), err);
}

kmdc_status
kmdc_header_new(kmdc_header *h, int direction, uint64_t serial, uint64_t seq,
                kmdc_err *err)
{
    kmdc_status rc;

    memset(h, 0, sizeof(*h));
    h->version = KMDC_VERSION;
    h->direction = (uint8_t)direction;
    h->serial = serial;
    h->seq = seq;
    if (direction != KMDC_DIR_UP && direction != KMDC_DIR_DOWN)
        return kmdc_err_set(err, KMDC_ERR_ARG, "unknown direction %d", direction);
    if ((rc = header_check(h, KMDC_ERR_ARG, err)) != KMDC_OK)
        return rc;
    return kmdc_header_new_salt(h, err);
}

kmdc_status
kmdc_header_encode(uint8_t out[KMDC_HEADER_LEN], const kmdc_header *h,
                   kmdc_err *err)
{
    kmdc_status rc;

    if ((rc = header_check(h, KMDC_ERR_ARG, err)) != KMDC_OK)
        return rc;
    memcpy(out, magic, sizeof(magic));
    out[4] = h->version;
    out[5] = h->direction;
    kmdc_put_u16(out + 6, h->flags);
    kmdc_put_u64(out + 8, h->serial);
    kmdc_put_u64(out + 16, h->seq);
    memcpy(out + 24, h->salt, KMDC_SALT_LEN);
    return KMDC_OK;
}

kmdc_status
kmdc_header_decode(kmdc_header *h, const uint8_t in[KMDC_HEADER_LEN],
                   kmdc_err *err)
{
    kmdc_header t;
    kmdc_status rc;

    if (memcmp(in, magic, sizeof(magic)) != 0)
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "not a KMDC envelope (bad magic)");
    t.version = in[4];
    t.direction = in[5];
    t.flags = kmdc_get_u16(in + 6);
    t.serial = kmdc_get_u64(in + 8);
    t.seq = kmdc_get_u64(in + 16);
    memcpy(t.salt, in + 24, KMDC_SALT_LEN);
    if ((rc = header_check(&t, KMDC_ERR_FORMAT, err)) != KMDC_OK)
        return rc;
    *h = t;
    return KMDC_OK;
}

/* ------------------------------------------------------------------ */
/* key derivations                                                    */

kmdc_status
kmdc_kbk_derive(uint8_t kbk[32], const uint8_t salt[KMDC_SALT_LEN],
                const uint8_t mk[32], kmdc_err *err)
{
    return kmdc_hkdf(kbk, 32, salt, KMDC_SALT_LEN, mk, 32, info_keyblock,
                     sizeof(info_keyblock) - 1, err);
}

kmdc_status
kmdc_pk_derive(uint8_t pk[32], const uint8_t dek[KMDC_DEK_LEN], kmdc_err *err)
{
    return kmdc_hkdf(pk, 32, NULL, 0, dek, KMDC_DEK_LEN, info_payload,
                     sizeof(info_payload) - 1, err);
}

/* ------------------------------------------------------------------ */
/* keyblock                                                           */

kmdc_status
kmdc_keyblock_seal(uint8_t *out, size_t cap, size_t *outlen,
                   const uint8_t header[KMDC_HEADER_LEN], const uint8_t mk[32],
                   const uint8_t dek[KMDC_DEK_LEN], const kmdc_meta *m,
                   kmdc_err *err)
{
    static const uint8_t zero_iv[KMDC_IV_LEN];
    uint8_t pt[KMDC_KB_MAX - KMDC_TAG_LEN];
    uint8_t kbk[32];
    kmdc_header h;
    size_t tlvlen = 0, kb_len;
    kmdc_status rc;

    *outlen = 0;
    if ((rc = kmdc_header_decode(&h, header, err)) != KMDC_OK) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "keyblock: invalid header given");
        goto out;
    }
    memcpy(pt, dek, KMDC_DEK_LEN);
    if ((rc = kmdc_tlv_encode(pt + KMDC_DEK_LEN, sizeof(pt) - KMDC_DEK_LEN,
                              &tlvlen, m, h.direction, err)) != KMDC_OK)
        goto out;
    kb_len = KMDC_DEK_LEN + tlvlen + KMDC_TAG_LEN;
    if (kb_len < KMDC_KB_MIN || kb_len > KMDC_KB_MAX) {
        rc = kmdc_err_set(err, KMDC_ERR_LIMIT, "keyblock of %zu bytes is "
                          "outside %d .. %d", kb_len, KMDC_KB_MIN, KMDC_KB_MAX);
        goto out;
    }
    if (cap < 4 + kb_len) {
        rc = kmdc_err_set(err, KMDC_ERR_LIMIT,
                          "keyblock: output buffer too small");
        goto out;
    }
    if ((rc = kmdc_kbk_derive(kbk, h.salt, mk, err)) != KMDC_OK)
        goto out;
    if ((rc = kmdc_gcm_seal(out + 4, kbk, zero_iv, header, KMDC_HEADER_LEN, pt,
                            KMDC_DEK_LEN + tlvlen, err)) != KMDC_OK)
        goto out;
    kmdc_put_u32(out, (uint32_t)kb_len);
    *outlen = 4 + kb_len;
out:
    kmdc_wipe(pt, sizeof(pt));
    kmdc_wipe(kbk, sizeof(kbk));
    return rc;
}

kmdc_status
kmdc_keyblock_open(uint8_t dek[KMDC_DEK_LEN], kmdc_meta *m, int *authenticated,
                   const uint8_t header[KMDC_HEADER_LEN], const uint8_t mk[32],
                   const uint8_t *kb, size_t kb_len, kmdc_err *err)
{
    static const uint8_t zero_iv[KMDC_IV_LEN];
    uint8_t pt[KMDC_KB_MAX - KMDC_TAG_LEN];
    uint8_t kbk[32];
    kmdc_header h;
    kmdc_status rc;

    if (authenticated != NULL)
        *authenticated = 0;
    kmdc_wipe(dek, KMDC_DEK_LEN);
    kmdc_meta_init(m);
    if (kb_len < KMDC_KB_MIN || kb_len > KMDC_KB_MAX) {
        rc = kmdc_err_set(err, KMDC_ERR_FORMAT, "keyblock length %zu is "
                          "outside %d .. %d", kb_len, KMDC_KB_MIN, KMDC_KB_MAX);
        goto out;
    }
    if ((rc = kmdc_header_decode(&h, header, err)) != KMDC_OK)
        goto out;
    if ((rc = kmdc_kbk_derive(kbk, h.salt, mk, err)) != KMDC_OK)
        goto out;
    if ((rc = kmdc_gcm_open(pt, kbk, zero_iv, header, KMDC_HEADER_LEN, kb,
                            kb_len, err)) != KMDC_OK) {
        if (rc == KMDC_ERR_AUTH)
            kmdc_err_set(err, rc, "the keyblock did not authenticate");
        goto out;
    }
    if (authenticated != NULL)
        *authenticated = 1;
    if ((rc = kmdc_tlv_decode(m, pt + KMDC_DEK_LEN,
                              kb_len - KMDC_TAG_LEN - KMDC_DEK_LEN, h.direction,
                              err)) != KMDC_OK)
        goto out;
    memcpy(dek, pt, KMDC_DEK_LEN);
out:
    kmdc_wipe(pt, sizeof(pt));
    kmdc_wipe(kbk, sizeof(kbk));
    if (rc != KMDC_OK) {
        kmdc_wipe(dek, KMDC_DEK_LEN);
        kmdc_wipe(m, sizeof(*m));
    }
    return rc;
}

/* ------------------------------------------------------------------ */
/* whole-envelope writer                                              */

struct kmdc_seal {
    kmdc_payload_enc *enc;
    size_t prefix_len;   /* header || u32 kb_len || keyblock */
    int prefix_sent;
    kmdc_status failed;
    uint8_t prefix[KMDC_HEADER_LEN + KMDC_KB_FRAME_MAX];
};

kmdc_seal *
kmdc_seal_new(const kmdc_header *h, const uint8_t mk[32], const uint8_t *dek,
              const kmdc_meta *m, kmdc_err *err)
{
    kmdc_seal *s = calloc(1, sizeof(*s));
    uint8_t k[KMDC_DEK_LEN];
    size_t kblen = 0;
    kmdc_status rc = KMDC_ERR_INTERNAL;

    if (s == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        goto out;
    }
    if ((rc = kmdc_header_encode(s->prefix, h, err)) != KMDC_OK)
        goto out;
    if (dek != NULL)
        memcpy(k, dek, sizeof(k));
    else if ((rc = kmdc_random(k, sizeof(k), err)) != KMDC_OK)
        goto out;
    if ((rc = kmdc_keyblock_seal(s->prefix + KMDC_HEADER_LEN,
                                 sizeof(s->prefix) - KMDC_HEADER_LEN, &kblen,
                                 s->prefix, mk, k, m, err)) != KMDC_OK)
        goto out;
    s->prefix_len = KMDC_HEADER_LEN + kblen;
    if ((s->enc = kmdc_payload_enc_new(k, m->size, err)) == NULL) {
        rc = err != NULL ? err->code : KMDC_ERR_INTERNAL;
        goto out;
    }
    rc = KMDC_OK;
out:
    kmdc_wipe(k, sizeof(k));
    if (rc != KMDC_OK) {
        kmdc_seal_free(s);
        s = NULL;
    }
    return s;
}

static kmdc_status
seal_prefix(kmdc_seal *s, kmdc_emit_fn emit, void *arg, kmdc_err *err)
{
    kmdc_status rc;

    if (s->prefix_sent)
        return KMDC_OK;
    if ((rc = emit(arg, s->prefix, s->prefix_len, err)) != KMDC_OK)
        return rc;
    s->prefix_sent = 1;
    return KMDC_OK;
}

kmdc_status
kmdc_seal_update(kmdc_seal *s, const uint8_t *in, size_t len,
                 kmdc_emit_fn emit, void *arg, kmdc_err *err)
{
    kmdc_status rc;

    if (s->failed != KMDC_OK)
        return kmdc_err_set(err, s->failed, "the envelope writer failed before");
    if ((rc = seal_prefix(s, emit, arg, err)) == KMDC_OK)
        rc = kmdc_payload_enc_update(s->enc, in, len, emit, arg, err);
    if ((s->failed = rc) != KMDC_OK) {
        kmdc_payload_enc_free(s->enc);   /* no key kept after an error */
        s->enc = NULL;
    }
    return rc;
}

kmdc_status
kmdc_seal_final(kmdc_seal *s, kmdc_emit_fn emit, void *arg, kmdc_err *err)
{
    kmdc_status rc;

    if (s->failed != KMDC_OK)
        return kmdc_err_set(err, s->failed, "the envelope writer failed before");
    if ((rc = seal_prefix(s, emit, arg, err)) == KMDC_OK)
        rc = kmdc_payload_enc_final(s->enc, emit, arg, err);
    if ((s->failed = rc) != KMDC_OK) {
        kmdc_payload_enc_free(s->enc);   /* no key kept after an error */
        s->enc = NULL;
    }
    return rc;
}

void
kmdc_seal_free(kmdc_seal *s)
{
    if (s == NULL)
        return;
    kmdc_payload_enc_free(s->enc);
    kmdc_freezero(s, sizeof(*s));
}

/* ------------------------------------------------------------------ */
/* whole-envelope reader                                              */

enum open_state { ST_HEADER, ST_KBLEN, ST_KEYBLOCK, ST_PAYLOAD, ST_FAILED };

struct kmdc_open {
    int direction;                 /* expected */
    struct kmdc_open_cbs cbs;
    void *arg;
    enum open_state state;
    kmdc_err failure;              /* the sticky first error */
    int authenticated;
    int have_header;
    int have_meta;
    kmdc_header h;
    kmdc_meta m;
    uint8_t mk[32];
    uint8_t dek[KMDC_DEK_LEN];
    uint8_t hdr[KMDC_HEADER_LEN];
    size_t fill;                   /* bytes collected for the current part */
    uint32_t kb_len;
    kmdc_payload_dec *dec;
    uint8_t buf[KMDC_KB_MAX];      /* kb_len, then the keyblock */
};

kmdc_open *
kmdc_open_new(int expected_direction, const struct kmdc_open_cbs *cbs,
              void *arg, kmdc_err *err)
{
    kmdc_open *o;

    if (expected_direction != KMDC_DIR_UP && expected_direction != KMDC_DIR_DOWN) {
        kmdc_err_set(err, KMDC_ERR_ARG, "unknown direction %d",
                     expected_direction);
        return NULL;
    }
    if (cbs == NULL || cbs->on_header == NULL) {
        kmdc_err_set(err, KMDC_ERR_ARG, "the reader needs an on_header callback");
        return NULL;
    }
    if ((o = calloc(1, sizeof(*o))) == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    o->direction = expected_direction;
    o->cbs = *cbs;
    o->arg = arg;
    o->state = ST_HEADER;
    return o;
}

/* Wipe every secret the reader holds. */
static void
open_wipe(kmdc_open *o)
{
    kmdc_wipe(o->mk, sizeof(o->mk));
    kmdc_wipe(o->dek, sizeof(o->dek));
    kmdc_wipe(&o->m, sizeof(o->m));
    kmdc_wipe(o->buf, sizeof(o->buf));
    kmdc_payload_dec_free(o->dec);
    o->dec = NULL;
    o->have_meta = 0;
}

/* Record the first error (from e), wipe, and hand it to the caller. */
static kmdc_status
open_fail(kmdc_open *o, kmdc_status rc, const kmdc_err *e, kmdc_err *err)
{
    o->state = ST_FAILED;
    o->failure.code = rc;
    if (e->code == rc && e->msg[0] != '\0')
        memcpy(o->failure.msg, e->msg, sizeof(o->failure.msg));
    else
        kmdc_err_set(&o->failure, rc, "the envelope was refused (%s)",
                     kmdc_status_name(rc));
    open_wipe(o);
    if (err != NULL)
        *err = o->failure;
    return rc;
}

static kmdc_status
open_emit(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    kmdc_open *o = arg;

    if (o->cbs.on_data == NULL)
        return KMDC_OK;
    return o->cbs.on_data(o->arg, p, len, err);
}

/* Copy up to `want - o->fill` bytes into dst; 1 when the part is complete. */
static int
collect(kmdc_open *o, uint8_t *dst, size_t want, const uint8_t **in,
        size_t *len)
{
    size_t n = want - o->fill;

    if (n > *len)
        n = *len;
    memcpy(dst + o->fill, *in, n);
    o->fill += n;
    *in += n;
    *len -= n;
    return o->fill == want;
}

static kmdc_status
open_header(kmdc_open *o, kmdc_err *e)
{
    kmdc_status rc;

    if ((rc = kmdc_header_decode(&o->h, o->hdr, e)) != KMDC_OK)
        return rc;
    if (o->h.direction != o->direction)
        return kmdc_err_set(e, KMDC_ERR_FORMAT, "an %s envelope where a %s "
                            "one is expected",
                            o->h.direction == KMDC_DIR_UP ? "up" : "down",
                            o->direction == KMDC_DIR_UP ? "up" : "down");
    o->have_header = 1;
    return o->cbs.on_header(o->arg, &o->h, o->mk, e);
}

static kmdc_status
open_keyblock(kmdc_open *o, kmdc_err *e)
{
    kmdc_status rc;

    rc = kmdc_keyblock_open(o->dek, &o->m, &o->authenticated, o->hdr, o->mk,
                            o->buf, o->kb_len, e);
    kmdc_wipe(o->mk, sizeof(o->mk));
    kmdc_wipe(o->buf, o->kb_len);
    if (rc != KMDC_OK)
        return rc;
    if (o->cbs.on_meta != NULL &&
        (rc = o->cbs.on_meta(o->arg, &o->h, &o->m, e)) != KMDC_OK)
        return rc;
    if ((o->dec = kmdc_payload_dec_new(o->dek, o->m.size, e)) == NULL)
        return e->code != KMDC_OK ? e->code : KMDC_ERR_INTERNAL;
    o->have_meta = 1;
    return KMDC_OK;
}

kmdc_status
kmdc_open_update(kmdc_open *o, const uint8_t *in, size_t len, kmdc_err *err)
{
    kmdc_err e;
    kmdc_status rc = KMDC_OK;

    if (o->state == ST_FAILED) {
        if (err != NULL)
            *err = o->failure;
        return o->failure.code;
    }
    kmdc_err_clear(&e);
    while (len > 0 && rc == KMDC_OK) {
        switch (o->state) {
        case ST_HEADER:
            if (collect(o, o->hdr, KMDC_HEADER_LEN, &in, &len)) {
                o->fill = 0;
                if ((rc = open_header(o, &e)) == KMDC_OK)
                    o->state = ST_KBLEN;
            }
            break;
        case ST_KBLEN:
            if (collect(o, o->buf, 4, &in, &len)) {
                uint32_t l = kmdc_get_u32(o->buf);
                o->fill = 0;
                if (l < KMDC_KB_MIN || l > KMDC_KB_MAX)
                    rc = kmdc_err_set(&e, KMDC_ERR_FORMAT, "keyblock length "
                                      "%lu is outside %d .. %d",
                                      (unsigned long)l, KMDC_KB_MIN,
                                      KMDC_KB_MAX);
                else {
                    o->kb_len = l;
                    o->state = ST_KEYBLOCK;
                }
            }
            break;
        case ST_KEYBLOCK:
            if (collect(o, o->buf, o->kb_len, &in, &len)) {
                o->fill = 0;
                if ((rc = open_keyblock(o, &e)) == KMDC_OK)
                    o->state = ST_PAYLOAD;
            }
            break;
        case ST_PAYLOAD:
            rc = kmdc_payload_dec_update(o->dec, in, len, open_emit, o, &e);
            len = 0;
            break;
        case ST_FAILED:
        default:
            rc = kmdc_err_set(&e, KMDC_ERR_INTERNAL, "reader in a bad state");
            break;
        }
    }
    if (rc != KMDC_OK)
        return open_fail(o, rc, &e, err);
    return KMDC_OK;
}

kmdc_status
kmdc_open_final(kmdc_open *o, kmdc_err *err)
{
    kmdc_err e;
    kmdc_status rc;

    if (o->state == ST_FAILED) {
        if (err != NULL)
            *err = o->failure;
        return o->failure.code;
    }
    kmdc_err_clear(&e);
    if (o->state != ST_PAYLOAD)
        rc = kmdc_err_set(&e, KMDC_ERR_TRUNCATED, "the envelope ends inside "
                          "its %s", o->state == ST_HEADER ? "header" :
                          o->state == ST_KBLEN ? "keyblock length" : "keyblock");
    else
        rc = kmdc_payload_dec_final(o->dec, &e);
    if (rc != KMDC_OK)
        return open_fail(o, rc, &e, err);
    return KMDC_OK;
}

void
kmdc_open_free(kmdc_open *o)
{
    if (o == NULL)
        return;
    open_wipe(o);
    kmdc_freezero(o, sizeof(*o));
}

int
kmdc_open_authenticated(const kmdc_open *o)
{
    return o != NULL && o->authenticated;
}

const kmdc_header *
kmdc_open_header(const kmdc_open *o)
{
    return o != NULL && o->have_header ? &o->h : NULL;
}

const kmdc_meta *
kmdc_open_meta(const kmdc_open *o)
{
    return o != NULL && o->have_meta ? &o->m : NULL;
}

const uint8_t *
kmdc_open_dek(const kmdc_open *o)
{
    return o != NULL && o->have_meta ? o->dek : NULL;
}
