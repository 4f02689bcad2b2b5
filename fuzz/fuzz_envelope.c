/*
 * fuzz_envelope.c - libFuzzer target for the streaming envelope reader.
 *
 * The first input byte picks a mode:
 *   0: the rest is an envelope fed to the reader (direction from byte 1),
 *      split in two slices at a point taken from bytes 2-3;
 *   1: the rest is u16 tlv_len || tlv || payload: a header and a keyblock
 *      sealed over DEK || tlv with the reader's key are put in front, so the
 *      TLV rules and the payload framing run after authentication;
 *   2: the rest is u8 mutation || u32 position || document: the document is
 *      sealed, then optionally cut, bit-flipped or extended, and read back;
 *      an unmutated envelope must open to the same document.
 * Nothing here may crash, leak or trip a sanitizer.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_util.h"

static const uint8_t MK[32] = { 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14,
                                15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, 26,
                                27, 28, 29, 30, 31, 32 };
static const uint8_t DEK[32] = { 0xd0, 0xd1, 0xd2, 0xd3 };

struct ctx {
    const uint8_t *doc;     /* expected plaintext (mode 2), or NULL */
    size_t doclen;
    size_t got;
    int mismatch;
};

static kmdc_status
on_header(void *arg, const kmdc_header *h, uint8_t mk_out[32], kmdc_err *err)
{
    (void)arg;
    (void)err;
    (void)h;
    memcpy(mk_out, MK, 32);
    return KMDC_OK;
}

static kmdc_status
on_meta(void *arg, const kmdc_header *h, const kmdc_meta *m, kmdc_err *err)
{
    (void)arg;
    (void)h;
    (void)err;
    if (m->has_name && !kmdc_name_valid(m->name, m->name_len))
        abort();
    return KMDC_OK;
}

static kmdc_status
on_data(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    struct ctx *c = arg;

    (void)err;
    if (c->doc != NULL) {
        if (c->got + len > c->doclen || memcmp(c->doc + c->got, p, len) != 0)
            c->mismatch = 1;
    }
    c->got += len;
    return KMDC_OK;
}

static kmdc_status
run_reader(const uint8_t *p, size_t len, int dir, size_t split, struct ctx *c)
{
    static const struct kmdc_open_cbs cbs = { on_header, on_meta, on_data };
    kmdc_err err;
    kmdc_open *o = kmdc_open_new(dir, &cbs, c, &err);
    kmdc_status rc;

    if (o == NULL)
        abort();
    if (split > len)
        split = len;
    rc = kmdc_open_update(o, p, split, &err);
    if (rc == KMDC_OK)
        rc = kmdc_open_update(o, p + split, len - split, &err);
    if (rc == KMDC_OK)
        rc = kmdc_open_final(o, &err);
    if (rc != KMDC_OK && kmdc_open_meta(o) != NULL && !kmdc_open_authenticated(o))
        abort();
    (void)kmdc_open_header(o);
    (void)kmdc_open_dek(o);
    kmdc_open_free(o);
    return rc;
}

static kmdc_status
emit_buf(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    uint8_t **bp = arg;

    (void)err;
    memcpy(*bp, p, len);
    *bp += len;
    return KMDC_OK;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    struct ctx c;
    kmdc_header h;
    uint8_t hdr[KMDC_HEADER_LEN];
    uint8_t *env = NULL;

    memset(&c, 0, sizeof(c));
    if (size < 4)
        return 0;
    memset(&h, 0, sizeof(h));
    h.version = 1;
    h.serial = 7;
    h.seq = 8;
    memset(h.salt, 0x5a, sizeof(h.salt));
    switch (data[0] % 3) {
    case 0:
        run_reader(data + 4, size - 4, (data[1] & 1) ? KMDC_DIR_DOWN : KMDC_DIR_UP,
                   ((size_t)data[2] << 8) | data[3], &c);
        break;
    case 1: {
        static const uint8_t zero_iv[KMDC_IV_LEN];
        uint8_t kbk[32], pt[KMDC_KB_MAX];
        size_t tlvlen = ((size_t)data[2] << 8) | data[3], rest = size - 4;
        size_t kb_len, envlen;

        if (tlvlen > rest || tlvlen > KMDC_KB_MAX - 48)
            return 0;
        h.direction = (data[1] & 1) ? KMDC_DIR_DOWN : KMDC_DIR_UP;
        kb_len = 32 + tlvlen + 16;
        envlen = KMDC_HEADER_LEN + 4 + kb_len + (rest - tlvlen);
        if ((env = malloc(envlen)) == NULL)
            return 0;
        if (kmdc_header_encode(hdr, &h, NULL) != KMDC_OK ||
            kmdc_kbk_derive(kbk, h.salt, MK, NULL) != KMDC_OK)
            abort();
        memcpy(pt, DEK, 32);
        memcpy(pt + 32, data + 4, tlvlen);
        memcpy(env, hdr, KMDC_HEADER_LEN);
        kmdc_put_u32(env + KMDC_HEADER_LEN, (uint32_t)kb_len);
        if (kmdc_gcm_seal(env + KMDC_HEADER_LEN + 4, kbk, zero_iv, hdr,
                          KMDC_HEADER_LEN, pt, 32 + tlvlen, NULL) != KMDC_OK)
            abort();
        memcpy(env + KMDC_HEADER_LEN + 4 + kb_len, data + 4 + tlvlen, rest - tlvlen);
        run_reader(env, envlen, h.direction, data[1] >> 1, &c);
        break;
    }
    case 2: {
        const uint8_t *doc;
        size_t doclen, envlen, pos;
        uint8_t kind, *wp;
        kmdc_meta m;
        kmdc_seal *s;
        kmdc_status rc;

        if (size < 6)
            return 0;
        kind = data[1] & 3;
        pos = ((size_t)data[2] << 16) | ((size_t)data[3] << 8) | data[4];
        doc = data + 5;
        doclen = size - 5;
        h.direction = KMDC_DIR_UP;
        kmdc_meta_init(&m);
        if (kmdc_meta_add_rcpt(&m, "a", 1, NULL) != KMDC_OK)
            abort();
        m.has_size = m.has_sent = 1;
        m.size = doclen;
        envlen = KMDC_HEADER_LEN + KMDC_KB_FRAME_MAX + kmdc_payload_len(doclen) + 1;
        if ((env = malloc(envlen)) == NULL)
            return 0;
        wp = env;
        if ((s = kmdc_seal_new(&h, MK, DEK, &m, NULL)) == NULL ||
            kmdc_seal_update(s, doc, doclen, emit_buf, &wp, NULL) != KMDC_OK ||
            kmdc_seal_final(s, emit_buf, &wp, NULL) != KMDC_OK)
            abort();
        kmdc_seal_free(s);
        envlen = (size_t)(wp - env);
        switch (kind) {
        case 1:
            envlen = pos % envlen;
            break;
        case 2:
            env[(pos >> 3) % envlen] ^= (uint8_t)(1u << (pos & 7));
            break;
        case 3:
            env[envlen++] = (uint8_t)pos;
            break;
        default:
            break;
        }
        c.doc = doc;
        c.doclen = doclen;
        rc = run_reader(env, envlen, KMDC_DIR_UP, pos % (envlen + 1), &c);
        if (c.mismatch || (kind == 0 && (rc != KMDC_OK || c.got != doclen)))
            abort();
        if (kind != 0 && rc == KMDC_OK)
            abort();   /* every mutation must be detected */
        break;
    }
    }
    free(env);
    return 0;
}
