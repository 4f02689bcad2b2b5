/*
 * test_vectors.c - recompute every vector of docs/vectors/ from its inputs.
 *
 * The vectors are printed by tools/kmdc-vectors; scripts/check also checks
 * that the generator prints exactly the committed files.  This program reads
 * only the inputs and recomputes every output with the library, then opens
 * each sealed envelope with the streaming reader.
 */
#include <stdlib.h>

#include "kmdc_auth.h"
#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"
#include "tap.h"
#include "vecio.h"

static char vecdir[4096];

static json_t *
load(const char *name)
{
    char path[4200];
    json_error_t jerr;
    json_t *root;

    snprintf(path, sizeof(path), "%s/%s", vecdir, name);
    root = json_load_file(path, 0, &jerr);
    if (!tap_ok(root != NULL, "%s loads", name))
        tap_diag("%s: %s (line %d)", path, jerr.text, jerr.line);
    return root;
}

/* hex field of obj equals got[0..len) */
static void
check_hex(const json_t *obj, const char *key, const uint8_t *got, size_t len,
          const char *what)
{
    uint8_t want[20000];
    long n = vec_get_hex(obj, key, want, sizeof(want));
    char name[256];

    snprintf(name, sizeof(name), "%s: %s", what, key);
    if (n < 0) {
        tap_ok(0, "%s (missing in the vector)", name);
        return;
    }
    tap_mem_eq(got, len, want, (size_t)n, name);
}

static void
test_chain(void)
{
    json_t *root = load("chain.json"), *s;
    uint8_t ck0[32], ck[32], mk[32], next[32];
    size_t i;
    uint64_t n;

    if (root == NULL)
        return;
    vec_get_hex(root, "ck0", ck0, 32);
    json_array_foreach(json_object_get(root, "steps"), i, s) {
        char what[64];
        vec_get_u64(s, "n", &n);
        snprintf(what, sizeof(what), "chain n=%llu", (unsigned long long)n);
        memcpy(ck, ck0, 32);
        tap_ok(kmdc_chain_seek(ck, 0, n, mk, NULL) == KMDC_OK &&
               kmdc_chain_step(NULL, next, ck, NULL) == KMDC_OK, "%s: derives", what);
        check_hex(s, "chain_key", ck, 32, what);
        check_hex(s, "message_key", mk, 32, what);
        check_hex(s, "next_chain_key", next, 32, what);
    }
    json_decref(root);
}

static void
test_activation(void)
{
    json_t *root = load("activation.json"), *e;
    uint8_t r[32], k[32], out[32];
    size_t i;

    if (root == NULL)
        return;
    vec_get_hex(root, "r", r, 32);
    json_array_foreach(json_object_get(root, "keys"), i, e) {
        const char *name = json_string_value(json_object_get(e, "name"));
        char what[64];
        snprintf(what, sizeof(what), "activation %s", name ? name : "?");
        vec_get_hex(e, "key", k, 32);
        tap_ok(name && kmdc_activate_key(out, r, k, name, NULL) == KMDC_OK,
               "%s: derives", what);
        check_hex(e, "rotated", out, 32, what);
    }
    json_decref(root);
}

static void
test_kdf(void)
{
    json_t *root = load("kdf.json"), *kb, *pk;
    uint8_t salt[16], mk[32], dek[32], out[32];

    if (root == NULL)
        return;
    kb = json_object_get(root, "keyblock_key");
    pk = json_object_get(root, "payload_key");
    vec_get_hex(kb, "salt", salt, 16);
    vec_get_hex(kb, "message_key", mk, 32);
    tap_ok(kmdc_kbk_derive(out, salt, mk, NULL) == KMDC_OK, "kdf: KBK derives");
    check_hex(kb, "kbk", out, 32, "kdf");
    vec_get_hex(pk, "dek", dek, 32);
    tap_ok(kmdc_pk_derive(out, dek, NULL) == KMDC_OK, "kdf: PK derives");
    check_hex(pk, "pk", out, 32, "kdf");
    json_decref(root);
}

struct open_ctx {
    const uint8_t *mk;
    kmdc_sha256_ctx *doc_hash;
    uint64_t released;
};

static kmdc_status
on_header(void *arg, const kmdc_header *h, uint8_t mk_out[32], kmdc_err *err)
{
    struct open_ctx *c = arg;

    (void)h;
    (void)err;
    memcpy(mk_out, c->mk, 32);
    return KMDC_OK;
}

static kmdc_status
on_data(void *arg, const uint8_t *pt, size_t len, kmdc_err *err)
{
    struct open_ctx *c = arg;

    c->released += len;
    return kmdc_sha256_update(c->doc_hash, pt, len, err);
}

static void
test_envelope(const json_t *v)
{
    const json_t *in = json_object_get(v, "input"), *out = json_object_get(v, "output");
    const char *what = json_string_value(json_object_get(v, "name"));
    uint8_t ck[32], mk[32], dek[32], hb[KMDC_HEADER_LEN], h[32], want[32];
    uint64_t direction, serial, seq, doclen, kb_len;
    struct vec_buf buf = { 0 };
    struct open_ctx oc = { 0 };
    struct kmdc_open_cbs cbs = { on_header, NULL, on_data };
    kmdc_header hdr;
    kmdc_meta meta, back;
    kmdc_seal *s = NULL;
    kmdc_open *o = NULL;
    uint8_t *doc = NULL;
    kmdc_err err;
    json_t *got_meta;

    if (what == NULL)
        what = "envelope";
    vec_get_u64(in, "direction", &direction);
    vec_get_u64(in, "serial", &serial);
    vec_get_u64(in, "seq", &seq);
    vec_get_hex(in, "chain_key", ck, 32);
    vec_get_hex(in, "dek", dek, 32);
    vec_get_u64(json_object_get(in, "document"), "length", &doclen);
    tap_ok(vec_meta_from_json(&meta, json_object_get(in, "meta")) == 0,
           "%s: meta reads", what);
    tap_ok(kmdc_header_new(&hdr, (int)direction, serial, seq, NULL) == KMDC_OK &&
           vec_get_hex(in, "salt", hdr.salt, KMDC_SALT_LEN) == KMDC_SALT_LEN,
           "%s: header inputs", what);
    kmdc_chain_step(mk, ck, ck, NULL);
    check_hex(out, "message_key", mk, 32, what);
    kmdc_header_encode(hb, &hdr, NULL);
    check_hex(out, "header", hb, sizeof(hb), what);
    kmdc_kbk_derive(h, hdr.salt, mk, NULL);
    check_hex(out, "kbk", h, 32, what);
    kmdc_pk_derive(h, dek, NULL);
    check_hex(out, "pk", h, 32, what);

    if ((doc = malloc(doclen ? doclen : 1)) == NULL)
        abort();
    vec_document(doc, doclen);
    s = kmdc_seal_new(&hdr, mk, dek, &meta, &err);
    tap_ok(s != NULL && kmdc_seal_update(s, doc, doclen, vec_buf_emit, &buf, &err) == KMDC_OK &&
           kmdc_seal_final(s, vec_buf_emit, &buf, &err) == KMDC_OK, "%s: seals", what);
    kmdc_seal_free(s);
    if (buf.len < KMDC_HEADER_LEN + 4)
        goto out;
    kb_len = kmdc_get_u32(buf.p + KMDC_HEADER_LEN);
    {
        uint64_t want_kb = 0;
        vec_get_u64(out, "kb_len", &want_kb);
        tap_ok(kb_len == want_kb, "%s: kb_len %llu", what, (unsigned long long)want_kb);
    }
    check_hex(out, "keyblock", buf.p + KMDC_HEADER_LEN + 4, kb_len, what);
    kmdc_sha256(h, buf.p + KMDC_HEADER_LEN + 4 + kb_len,
                buf.len - KMDC_HEADER_LEN - 4 - kb_len, NULL);
    check_hex(out, "payload_sha256", h, 32, what);
    kmdc_sha256(h, buf.p, buf.len, NULL);
    check_hex(out, "envelope_sha256", h, 32, what);
    if (json_object_get(out, "envelope") != NULL)
        check_hex(out, "envelope", buf.p, buf.len, what);

    /* open it again with the streaming reader */
    oc.mk = mk;
    oc.doc_hash = kmdc_sha256_new(NULL);
    o = kmdc_open_new((int)direction, &cbs, &oc, &err);
    tap_ok(o != NULL && kmdc_open_update(o, buf.p, buf.len, &err) == KMDC_OK &&
           kmdc_open_final(o, &err) == KMDC_OK, "%s: opens", what);
    kmdc_sha256_final(oc.doc_hash, h, NULL);
    kmdc_sha256(want, doc, doclen, NULL);
    tap_ok(oc.released == doclen && memcmp(h, want, 32) == 0,
           "%s: opened document equals the input", what);
    if (o != NULL && kmdc_open_meta(o) != NULL) {
        char *a, *b;
        back = *kmdc_open_meta(o);
        got_meta = vec_meta_to_json(&back);
        a = json_dumps(got_meta, JSON_SORT_KEYS);
        b = json_dumps(json_object_get(in, "meta"), JSON_SORT_KEYS);
        tap_ok(a && b && strcmp(a, b) == 0, "%s: opened TLV equals the input", what);
        free(a);
        free(b);
        json_decref(got_meta);
    } else {
        tap_ok(0, "%s: opened TLV equals the input", what);
    }
out:
    kmdc_open_free(o);
    kmdc_sha256_free(oc.doc_hash);
    vec_buf_free(&buf);
    free(doc);
}

static void
test_envelopes(void)
{
    json_t *root = load("envelopes.json"), *v;
    size_t i;

    if (root == NULL)
        return;
    tap_ok(json_array_size(json_object_get(root, "envelopes")) >= 6,
           "envelopes: at least six vectors");
    json_array_foreach(json_object_get(root, "envelopes"), i, v)
        test_envelope(v);
    json_decref(root);
}

static void
test_requests(void)
{
    json_t *root = load("request.json"), *v;
    uint8_t ak[32], nonce[KMDC_AUTH_NONCE_LEN], bh[32], sig[32];
    char hdr[KMDC_AUTH_HDR_BUFSZ];
    kmdc_auth_hdr parsed;
    size_t i;

    if (root == NULL)
        return;
    json_array_foreach(json_object_get(root, "requests"), i, v) {
        const char *what = json_string_value(json_object_get(v, "name"));
        const char *method = json_string_value(json_object_get(v, "method"));
        const char *target = json_string_value(json_object_get(v, "target"));
        const char *body = json_string_value(json_object_get(v, "body"));
        const char *want = json_string_value(json_object_get(v, "authorization"));
        uint64_t serial, ts;

        vec_get_hex(v, "auth_key", ak, 32);
        vec_get_hex(v, "nonce", nonce, sizeof(nonce));
        vec_get_u64(v, "serial", &serial);
        vec_get_u64(v, "ts", &ts);
        kmdc_sha256(bh, body, strlen(body), NULL);
        check_hex(v, "body_sha256", bh, 32, what);
        tap_ok(kmdc_auth_sig(sig, ak, method, target, (int64_t)ts, nonce, bh, NULL) == KMDC_OK,
               "%s: signs", what);
        check_hex(v, "sig", sig, 32, what);
        tap_ok(kmdc_auth_sign_nonce(hdr, sizeof(hdr), serial, ak, method, target, body,
                                    strlen(body), (int64_t)ts, nonce, NULL) == KMDC_OK &&
               want != NULL && strcmp(hdr, want) == 0, "%s: Authorization header", what);
        tap_ok(kmdc_auth_parse(want, strlen(want), &parsed, NULL) == KMDC_OK &&
               kmdc_auth_verify(&parsed, ak, method, target, bh, (int64_t)ts,
                                KMDC_AUTH_MAX_SKEW, NULL) == KMDC_OK,
               "%s: verifies", what);
    }
    json_decref(root);
}

static void
test_wrap(void)
{
    json_t *root = load("wrap.json"), *v, *ac;
    uint8_t master[32], value[32], salt[KMDC_WRAP_SALT_LEN], out[128], back[64], mac[32];
    char canon[KMDC_ACCESS_CODE_LEN + 1];
    size_t i, outlen, backlen;

    if (root == NULL)
        return;
    vec_get_hex(root, "master_key", master, 32);
    json_array_foreach(json_object_get(root, "wrapped"), i, v) {
        const char *field = json_string_value(json_object_get(v, "field"));
        uint64_t key_id, serial, counter;
        char what[64];

        snprintf(what, sizeof(what), "wrap %s", field ? field : "?");
        vec_get_u64(v, "key_id", &key_id);
        vec_get_u64(v, "serial", &serial);
        vec_get_u64(v, "counter", &counter);
        vec_get_hex(v, "value", value, 32);
        vec_get_hex(v, "salt", salt, sizeof(salt));
        tap_ok(field && kmdc_wrap_salt(out, sizeof(out), &outlen, (uint32_t)key_id, master,
                                       serial, field, counter, value, 32, salt,
                                       NULL) == KMDC_OK, "%s: wraps", what);
        check_hex(v, "wrapped", out, outlen, what);
        tap_ok(kmdc_unwrap(back, sizeof(back), &backlen, master, serial, field, counter,
                           out, outlen, NULL) == KMDC_OK &&
               backlen == 32 && memcmp(back, value, 32) == 0, "%s: unwraps", what);
    }
    ac = json_object_get(root, "access_code");
    {
        const char *typed = json_string_value(json_object_get(ac, "typed"));
        const char *want = json_string_value(json_object_get(ac, "canonical"));
        uint64_t serial;
        vec_get_u64(ac, "serial", &serial);
        tap_ok(typed && want && kmdc_access_code_normalize(typed, strlen(typed), canon,
                                                           NULL) == KMDC_OK &&
               strcmp(canon, want) == 0, "access code: canonical form");
        tap_ok(kmdc_access_code_mac(mac, master, serial, canon, NULL) == KMDC_OK,
               "access code: mac computes");
        check_hex(ac, "mac", mac, 32, "access code");
    }
    json_decref(root);
}

int
main(void)
{
    const char *src = getenv("KMDC_SRCDIR");

    snprintf(vecdir, sizeof(vecdir), "%s/docs/vectors", src ? src : ".");
    test_chain();
    test_activation();
    test_kdf();
    test_envelopes();
    test_requests();
    test_wrap();
    return tap_done();
}
