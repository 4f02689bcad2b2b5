/* kmdc_auth.c - the KMDC1-HMAC-SHA256 Authorization header (docs/PROTOCOL.md section 5). */
#include "kmdc_auth.h"
#include "kmdc_crypto.h"
#include "kmdc_util.h"

#include <stdio.h>
#include <string.h>

static const char req_label[] = "KMDC/1 request\n";

/* A cursor over the header value being parsed. */
struct cur {
    const char *p;
    size_t left;
};

/* Consume the literal lit when the input starts with it. */
static int
take_lit(struct cur *c, const char *lit)
{
    size_t n = strlen(lit);

    if (c->left < n || memcmp(c->p, lit, n) != 0)
        return 0;
    c->p += n;
    c->left -= n;
    return 1;
}

/* Consume exactly 2*outlen lowercase hex digits into out. */
static int
take_hex(struct cur *c, uint8_t *out, size_t outlen)
{
    if (c->left < 2 * outlen ||
        kmdc_hex_decode(out, outlen, c->p, 2 * outlen, NULL) != KMDC_OK)
        return 0;
    c->p += 2 * outlen;
    c->left -= 2 * outlen;
    return 1;
}

/* Consume a canonical non-negative decimal that fits in int64. */
static int
take_ts(struct cur *c, int64_t *out)
{
    uint64_t v = 0;
    size_t n = 0;

    while (n < c->left && c->p[n] >= '0' && c->p[n] <= '9') {
        unsigned d = (unsigned)(c->p[n] - '0');
        if (n > 0 && v == 0)
            return 0;                       /* leading zero */
        if (v > ((uint64_t)INT64_MAX - d) / 10)
            return 0;                       /* overflow */
        v = v * 10 + d;
        n++;
    }
    if (n == 0)
        return 0;
    c->p += n;
    c->left -= n;
    *out = (int64_t)v;
    return 1;
}

kmdc_status
kmdc_auth_parse(const char *value, size_t len, kmdc_auth_hdr *out,
                kmdc_err *err)
{
    struct cur c = { value, len };
    kmdc_auth_hdr h;
    uint8_t sb[8];
    const char *what = "scheme";

    memset(&h, 0, sizeof(h));
    if (value == NULL || out == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "auth: no header value");
    if (len > KMDC_AUTH_HDR_MAX) {
        what = "length";
        goto bad;
    }
    if (!take_lit(&c, KMDC_AUTH_SCHEME " serial="))
        goto bad;
    what = "serial";
    if (!take_hex(&c, sb, sizeof(sb)))
        goto bad;
    h.serial = kmdc_get_u64(sb);
    if (h.serial == 0 || h.serial > KMDC_U63_MAX)
        goto bad;
    what = "ts";
    if (!take_lit(&c, ",ts=") || !take_ts(&c, &h.ts))
        goto bad;
    what = "nonce";
    if (!take_lit(&c, ",nonce=") || !take_hex(&c, h.nonce, sizeof(h.nonce)))
        goto bad;
    what = "sig";
    if (!take_lit(&c, ",sig=") || !take_hex(&c, h.sig, sizeof(h.sig)))
        goto bad;
    what = "end";
    if (c.left != 0)
        goto bad;
    *out = h;
    return KMDC_OK;
bad:
    return kmdc_err_set(err, KMDC_ERR_FORMAT,
                        "auth: malformed Authorization header (at %s); expected "
                        KMDC_AUTH_SCHEME " serial=<16 hex>,ts=<decimal>,"
                        "nonce=<32 hex>,sig=<64 hex>", what);
}

kmdc_status
kmdc_auth_format(char *out, size_t cap, const kmdc_auth_hdr *h, kmdc_err *err)
{
    char serial[17];
    char nonce[2 * KMDC_AUTH_NONCE_LEN + 1];
    char sig[2 * KMDC_AUTH_SIG_LEN + 1];
    int n;

    if (out == NULL || h == NULL || h->serial == 0 || h->serial > KMDC_U63_MAX ||
        h->ts < 0)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "auth: serial or timestamp out of range");
    kmdc_serial_format(serial, h->serial);
    kmdc_hex_encode(nonce, h->nonce, sizeof(h->nonce));
    kmdc_hex_encode(sig, h->sig, sizeof(h->sig));
    n = snprintf(out, cap, "%s serial=%s,ts=%lld,nonce=%s,sig=%s",
                 KMDC_AUTH_SCHEME, serial, (long long)h->ts, nonce, sig);
    if (n < 0 || (size_t)n >= cap) {
        if (cap > 0)
            out[0] = '\0';
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "auth: output buffer too small (%zu bytes)", cap);
    }
    return KMDC_OK;
}

/* 1 when s is a non-empty string of at most max printable non-space bytes. */
static int
sign_field_ok(const char *s, size_t max, size_t *len)
{
    size_t i;

    if (s == NULL)
        return 0;
    for (i = 0; s[i] != '\0'; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (i >= max || ch <= 0x20 || ch == 0x7f)
            return 0;
    }
    *len = i;
    return i > 0;
}

kmdc_status
kmdc_auth_sig(uint8_t sig[KMDC_AUTH_SIG_LEN], const uint8_t ak[32],
              const char *method, const char *target, int64_t ts,
              const uint8_t nonce[KMDC_AUTH_NONCE_LEN],
              const uint8_t body_sha256[32], kmdc_err *err)
{
    char tsbuf[24];
    char noncehex[2 * KMDC_AUTH_NONCE_LEN + 1];
    char bodyhex[2 * 32 + 1];
    size_t mlen = 0, tlen = 0;
    int n;
    const void *ptrs[10];
    size_t lens[10];

    if (sig == NULL || ak == NULL || nonce == NULL || body_sha256 == NULL || ts < 0)
        return kmdc_err_set(err, KMDC_ERR_ARG, "auth: invalid signing argument");
    if (!sign_field_ok(method, KMDC_AUTH_METHOD_MAX, &mlen))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "auth: method must be 1..%d printable characters",
                            KMDC_AUTH_METHOD_MAX);
    if (!sign_field_ok(target, KMDC_AUTH_TARGET_MAX, &tlen))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "auth: request-target must be 1..%d printable "
                            "characters without spaces", KMDC_AUTH_TARGET_MAX);
    n = snprintf(tsbuf, sizeof(tsbuf), "%lld", (long long)ts);
    if (n <= 0 || (size_t)n >= sizeof(tsbuf))
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "auth: timestamp format");
    kmdc_hex_encode(noncehex, nonce, KMDC_AUTH_NONCE_LEN);
    kmdc_hex_encode(bodyhex, body_sha256, 32);

    ptrs[0] = req_label;  lens[0] = sizeof(req_label) - 1;
    ptrs[1] = method;     lens[1] = mlen;
    ptrs[2] = "\n";       lens[2] = 1;
    ptrs[3] = target;     lens[3] = tlen;
    ptrs[4] = "\n";       lens[4] = 1;
    ptrs[5] = tsbuf;      lens[5] = (size_t)n;
    ptrs[6] = "\n";       lens[6] = 1;
    ptrs[7] = noncehex;   lens[7] = 2 * KMDC_AUTH_NONCE_LEN;
    ptrs[8] = "\n";       lens[8] = 1;
    ptrs[9] = bodyhex;    lens[9] = 2 * 32;
    return kmdc_hmac_parts(sig, ak, 32, 10, ptrs, lens, err);
}

kmdc_status
kmdc_auth_sign_nonce(char *out, size_t cap, uint64_t serial, const uint8_t ak[32],
                     const char *method, const char *target, const void *body,
                     size_t bodylen, int64_t now,
                     const uint8_t nonce[KMDC_AUTH_NONCE_LEN], kmdc_err *err)
{
    kmdc_status rc;
    kmdc_auth_hdr h;
    uint8_t bh[32];

    memset(&h, 0, sizeof(h));
    if (out == NULL || ak == NULL || nonce == NULL || (body == NULL && bodylen > 0)) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "auth: invalid signing argument");
        goto out;
    }
    if (cap > 0)
        out[0] = '\0';
    if (serial == 0 || serial > KMDC_U63_MAX || now < 0) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG,
                          "auth: serial or timestamp out of range");
        goto out;
    }
    if ((rc = kmdc_sha256(bh, bodylen > 0 ? body : "", bodylen, err)) != KMDC_OK)
        goto out;
    h.serial = serial;
    h.ts = now;
    memcpy(h.nonce, nonce, sizeof(h.nonce));
    if ((rc = kmdc_auth_sig(h.sig, ak, method, target, now, h.nonce, bh, err)) !=
        KMDC_OK)
        goto out;
    rc = kmdc_auth_format(out, cap, &h, err);
out:
    kmdc_wipe(&h, sizeof(h));
    return rc;
}

kmdc_status
kmdc_auth_sign(char *out, size_t cap, uint64_t serial, const uint8_t ak[32],
               const char *method, const char *target, const void *body,
               size_t bodylen, int64_t now, kmdc_err *err)
{
    uint8_t nonce[KMDC_AUTH_NONCE_LEN];
    kmdc_status rc;

    if ((rc = kmdc_random(nonce, sizeof(nonce), err)) != KMDC_OK)
        return rc;
    return kmdc_auth_sign_nonce(out, cap, serial, ak, method, target, body,
                                bodylen, now, nonce, err);
}

kmdc_status
kmdc_auth_verify(const kmdc_auth_hdr *h, const uint8_t ak[32], const char *method,
                 const char *target, const uint8_t body_sha256[32], int64_t now,
                 int64_t max_skew, kmdc_err *err)
{
    uint8_t want[KMDC_AUTH_SIG_LEN];
    uint64_t diff;
    kmdc_status rc;

    if (h == NULL || max_skew < 0) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "auth: invalid verify argument");
        goto out;
    }
    if ((rc = kmdc_auth_sig(want, ak, method, target, h->ts, h->nonce,
                            body_sha256, err)) != KMDC_OK)
        goto out;
    if (!kmdc_ct_eq(want, sizeof(want), h->sig, sizeof(h->sig))) {
        rc = kmdc_err_set(err, KMDC_ERR_AUTH,
                          "auth: request signature does not verify");
        goto out;
    }
    /* |now - ts| without overflow: both differences fit in uint64. */
    diff = now >= h->ts ? (uint64_t)now - (uint64_t)h->ts
                        : (uint64_t)h->ts - (uint64_t)now;
    if (diff > (uint64_t)max_skew) {
        rc = kmdc_err_set(err, KMDC_ERR_STALE,
                          "auth: request timestamp is %s the server clock by "
                          "more than %lld s; check the client's clock",
                          now >= h->ts ? "behind" : "ahead of",
                          (long long)max_skew);
        goto out;
    }
    rc = KMDC_OK;
out:
    kmdc_wipe(want, sizeof(want));
    return rc;
}
