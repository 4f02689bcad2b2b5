/*
 * kmdc-vectors - print the KMDC/1 protocol vectors of docs/vectors/.
 *
 *   kmdc-vectors DIR      write DIR/{chain,activation,kdf,envelopes,request,wrap}.json
 *
 * Every "random" input is derived from a fixed label (SHA-256 of
 * "KMDC/1 vectors " || label) so the output is reproducible, and every input
 * is written out, so another implementation needs nothing but the JSON.
 * tests/test_vectors.c recomputes every output from the inputs.
 */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kmdc_auth.h"
#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"
#include "vecio.h"

#define SENT_MS UINT64_C(1795000000000)   /* 2026-11-18T...Z, a fixed clock */

__attribute__((noreturn)) static void
fail(const char *what, const kmdc_err *err)
{
    fprintf(stderr, "kmdc-vectors: %s: %s\n", what, err ? err->msg : "failed");
    exit(1);
}

/* Fixed pseudo-random input: SHA-256("KMDC/1 vectors " || label), truncated. */
static void
fixed(uint8_t *out, size_t len, const char *label)
{
    char buf[128];
    uint8_t h[32];
    int n = snprintf(buf, sizeof(buf), "KMDC/1 vectors %s", label);

    if (n < 0 || (size_t)n >= sizeof(buf) || len > sizeof(h))
        fail("label", NULL);
    if (kmdc_sha256(h, buf, (size_t)n, NULL) != KMDC_OK)
        fail("sha256", NULL);
    memcpy(out, h, len);
}

static void
write_json(const char *dir, const char *name, json_t *root)
{
    char path[4096];
    int n = snprintf(path, sizeof(path), "%s/%s", dir, name);

    if (n < 0 || (size_t)n >= sizeof(path))
        fail("path too long", NULL);
    if (json_dump_file(root, path, JSON_INDENT(2) | JSON_ENSURE_ASCII) != 0) {
        fprintf(stderr, "kmdc-vectors: cannot write %s: %s\n", path, strerror(errno));
        exit(1);
    }
    /* json_dump_file ends without a newline; add one for tidy diffs */
    {
        FILE *f = fopen(path, "a");
        if (f == NULL || fputc('\n', f) == EOF || fclose(f) != 0)
            fail("append newline", NULL);
    }
    json_decref(root);
}

static json_t *
chain_vectors(void)
{
    static const uint64_t counters[] = { 0, 1, 2, 1000 };
    json_t *root = json_object(), *steps = json_array();
    uint8_t ck0[32], ck[32], mk[32], next[32];
    kmdc_err err;
    size_t i;

    fixed(ck0, 32, "chain ck0");
    json_object_set_new(root, "description", json_string(
        "Chain steps: MK_n = HMAC(CK_n, 0x01), CK_{n+1} = HMAC(CK_n, 0x02), from CK_0."));
    vec_set_hex(root, "ck0", ck0, 32);
    for (i = 0; i < sizeof(counters) / sizeof(counters[0]); i++) {
        json_t *s = json_object();
        memcpy(ck, ck0, 32);
        if (kmdc_chain_seek(ck, 0, counters[i], mk, &err) != KMDC_OK ||
            kmdc_chain_step(NULL, next, ck, &err) != KMDC_OK)
            fail("chain", &err);
        vec_set_u64(s, "n", counters[i]);
        vec_set_hex(s, "chain_key", ck, 32);
        vec_set_hex(s, "message_key", mk, 32);
        vec_set_hex(s, "next_chain_key", next, 32);
        json_array_append_new(steps, s);
    }
    json_object_set_new(root, "steps", steps);
    return root;
}

static json_t *
activation_vectors(void)
{
    static const char *const names[] = { "up_chain", "down_chain", "auth_key" };
    json_t *root = json_object(), *keys = json_array();
    uint8_t r[32], k[32], out[32];
    kmdc_err err;
    size_t i;

    fixed(r, 32, "activation r");
    json_object_set_new(root, "description", json_string(
        "Activation: K' = HKDF(salt = r, ikm = K, info = \"KMDC/1 activate \" || name, 32)."));
    vec_set_hex(root, "r", r, 32);
    for (i = 0; i < 3; i++) {
        json_t *e = json_object();
        char label[64];
        snprintf(label, sizeof(label), "activation %s", names[i]);
        fixed(k, 32, label);
        if (kmdc_activate_key(out, r, k, names[i], &err) != KMDC_OK)
            fail("activate", &err);
        json_object_set_new(e, "name", json_string(names[i]));
        vec_set_hex(e, "key", k, 32);
        vec_set_hex(e, "rotated", out, 32);
        json_array_append_new(keys, e);
    }
    json_object_set_new(root, "keys", keys);
    return root;
}

static json_t *
kdf_vectors(void)
{
    json_t *root = json_object(), *kb = json_object(), *pk = json_object();
    uint8_t salt[16], mk[32], dek[32], out[32];
    kmdc_err err;

    fixed(salt, 16, "kdf salt");
    fixed(mk, 32, "kdf mk");
    fixed(dek, 32, "kdf dek");
    json_object_set_new(root, "description", json_string(
        "KBK = HKDF(salt, MK, \"KMDC/1 keyblock\", 32); PK = HKDF(\"\", DEK, \"KMDC/1 payload\", 32)."));
    if (kmdc_kbk_derive(out, salt, mk, &err) != KMDC_OK)
        fail("kbk", &err);
    vec_set_hex(kb, "salt", salt, 16);
    vec_set_hex(kb, "message_key", mk, 32);
    vec_set_hex(kb, "kbk", out, 32);
    if (kmdc_pk_derive(out, dek, &err) != KMDC_OK)
        fail("pk", &err);
    vec_set_hex(pk, "dek", dek, 32);
    vec_set_hex(pk, "pk", out, 32);
    json_object_set_new(root, "keyblock_key", kb);
    json_object_set_new(root, "payload_key", pk);
    return root;
}

struct env_spec {
    const char *name;
    int direction;
    uint64_t serial, seq;
    size_t doc_len;
    const char *rcpt[3];
    const char *fname, *type;
};

/* Seal one envelope and describe it. */
static json_t *
envelope_vector(const struct env_spec *sp)
{
    json_t *v = json_object(), *in = json_object(), *out = json_object(), *doc;
    uint8_t ck[32], mk[32], dek[32], kbk[32], pk[32], hb[KMDC_HEADER_LEN], h[32];
    char label[128];
    kmdc_header hdr;
    kmdc_meta meta;
    kmdc_seal *s;
    kmdc_err err;
    struct vec_buf buf = { 0 };
    uint8_t *docbytes;
    size_t i, kb_len;

    snprintf(label, sizeof(label), "envelope %s chain key", sp->name);
    fixed(ck, 32, label);
    snprintf(label, sizeof(label), "envelope %s dek", sp->name);
    fixed(dek, 32, label);
    if (kmdc_header_new(&hdr, sp->direction, sp->serial, sp->seq, &err) != KMDC_OK)
        fail("header", &err);
    snprintf(label, sizeof(label), "envelope %s salt", sp->name);
    fixed(hdr.salt, KMDC_SALT_LEN, label);
    kmdc_meta_init(&meta);
    for (i = 0; i < 3 && sp->rcpt[i] != NULL; i++)
        if (kmdc_meta_add_rcpt(&meta, sp->rcpt[i], strlen(sp->rcpt[i]), &err) != KMDC_OK)
            fail("rcpt", &err);
    if (sp->fname != NULL &&
        kmdc_meta_set_name(&meta, (const uint8_t *)sp->fname, strlen(sp->fname), &err) != KMDC_OK)
        fail("name", &err);
    if (sp->type != NULL && kmdc_meta_set_type(&meta, sp->type, strlen(sp->type), &err) != KMDC_OK)
        fail("type", &err);
    meta.has_size = 1;
    meta.size = sp->doc_len;
    meta.has_sent = 1;
    meta.sent = SENT_MS;
    if (sp->direction == KMDC_DIR_DOWN) {
        if (kmdc_meta_set_from(&meta, "alice", 5, &err) != KMDC_OK)
            fail("from", &err);
        meta.has_fromserial = 1;
        meta.fromserial = UINT64_C(0x1a2b3c4d5e6f7081);
        meta.has_msgid = 1;
        meta.msgid = UINT64_C(0x0123456789abcdef);
        meta.has_rcvd = 1;
        meta.rcvd = SENT_MS + 1234;
    }

    /* the message key of counter seq, from the chain key of counter seq */
    if (kmdc_chain_step(mk, ck, ck, &err) != KMDC_OK)
        fail("chain", &err);
    snprintf(label, sizeof(label), "envelope %s chain key", sp->name);
    fixed(ck, 32, label);   /* restore CK_seq for the record */

    if ((docbytes = malloc(sp->doc_len ? sp->doc_len : 1)) == NULL)
        fail("malloc", NULL);
    vec_document(docbytes, sp->doc_len);
    if ((s = kmdc_seal_new(&hdr, mk, dek, &meta, &err)) == NULL ||
        kmdc_seal_update(s, docbytes, sp->doc_len, vec_buf_emit, &buf, &err) != KMDC_OK ||
        kmdc_seal_final(s, vec_buf_emit, &buf, &err) != KMDC_OK)
        fail("seal", &err);
    kmdc_seal_free(s);
    free(docbytes);

    if (kmdc_header_encode(hb, &hdr, &err) != KMDC_OK ||
        kmdc_kbk_derive(kbk, hdr.salt, mk, &err) != KMDC_OK ||
        kmdc_pk_derive(pk, dek, &err) != KMDC_OK)
        fail("derive", &err);
    kb_len = kmdc_get_u32(buf.p + KMDC_HEADER_LEN);

    json_object_set_new(v, "name", json_string(sp->name));
    vec_set_u64(in, "direction", (uint64_t)sp->direction);
    vec_set_u64(in, "serial", sp->serial);
    vec_set_u64(in, "seq", sp->seq);
    vec_set_hex(in, "chain_key", ck, 32);
    vec_set_hex(in, "salt", hdr.salt, KMDC_SALT_LEN);
    vec_set_hex(in, "dek", dek, 32);
    json_object_set_new(in, "meta", vec_meta_to_json(&meta));
    doc = json_object();
    vec_set_u64(doc, "length", sp->doc_len);
    json_object_set_new(doc, "pattern", json_string("byte i is i mod 251"));
    json_object_set_new(in, "document", doc);

    vec_set_hex(out, "message_key", mk, 32);
    vec_set_hex(out, "kbk", kbk, 32);
    vec_set_hex(out, "pk", pk, 32);
    vec_set_hex(out, "header", hb, KMDC_HEADER_LEN);
    vec_set_u64(out, "kb_len", kb_len);
    vec_set_hex(out, "keyblock", buf.p + KMDC_HEADER_LEN + 4, kb_len);
    vec_set_u64(out, "payload_len", buf.len - KMDC_HEADER_LEN - 4 - kb_len);
    kmdc_sha256(h, buf.p + KMDC_HEADER_LEN + 4 + kb_len,
                buf.len - KMDC_HEADER_LEN - 4 - kb_len, NULL);
    vec_set_hex(out, "payload_sha256", h, 32);
    vec_set_u64(out, "envelope_len", buf.len);
    kmdc_sha256(h, buf.p, buf.len, NULL);
    vec_set_hex(out, "envelope_sha256", h, 32);
    if (buf.len <= 4096)
        vec_set_hex(out, "envelope", buf.p, buf.len);
    json_object_set_new(v, "input", in);
    json_object_set_new(v, "output", out);
    vec_buf_free(&buf);
    kmdc_wipe(mk, sizeof(mk));
    return v;
}

static json_t *
envelope_vectors(void)
{
    static const struct env_spec specs[] = {
        { "up, empty document, one recipient", KMDC_DIR_UP,
          UINT64_C(0x1a2b3c4d5e6f7081), 0, 0, { "bob" }, NULL, NULL },
        { "up, 1 byte, one recipient", KMDC_DIR_UP,
          UINT64_C(0x1a2b3c4d5e6f7081), 1, 1, { "bob" }, NULL, NULL },
        { "up, 65536 bytes, three recipients, NAME and TYPE", KMDC_DIR_UP,
          UINT64_C(0x1a2b3c4d5e6f7081), 2, 65536, { "bob", "carol", "alice" },
          "report.pdf", "application/pdf" },
        { "up, 65537 bytes, one recipient, non-ASCII NAME", KMDC_DIR_UP,
          UINT64_C(0x1a2b3c4d5e6f7081), 1000, 65537, { "carol" },
          "r\xc3\xa9sum\xc3\xa9.txt", "text/plain" },
        { "down, 65537 bytes, NAME and TYPE", KMDC_DIR_DOWN,
          UINT64_C(0x2b3c4d5e6f708192), 7, 65537, { NULL },
          "report.pdf", "application/pdf" },
        { "down, 1 byte", KMDC_DIR_DOWN,
          UINT64_C(0x2b3c4d5e6f708192), 0, 1, { NULL }, NULL, NULL },
    };
    json_t *root = json_object(), *list = json_array();
    size_t i;

    json_object_set_new(root, "description", json_string(
        "Sealed envelopes. message_key = HMAC(chain_key, 0x01) (chain_key is CK_seq). "
        "The document is given by length; byte i is i mod 251. 'envelope' is the whole "
        "envelope in hex when it is at most 4096 bytes; larger ones are checked by SHA-256."));
    for (i = 0; i < sizeof(specs) / sizeof(specs[0]); i++)
        json_array_append_new(list, envelope_vector(&specs[i]));
    json_object_set_new(root, "envelopes", list);
    return root;
}

static json_t *
request_vector(const char *label, const char *method, const char *target,
               const char *body, int64_t ts)
{
    json_t *v = json_object();
    uint8_t ak[32], nonce[KMDC_AUTH_NONCE_LEN], bh[32], sig[32];
    char hdr[KMDC_AUTH_HDR_BUFSZ], lab[128];
    uint64_t serial = UINT64_C(0x1a2b3c4d5e6f7081);
    kmdc_err err;

    fixed(ak, 32, "request ak");
    snprintf(lab, sizeof(lab), "request %s nonce", label);
    fixed(nonce, sizeof(nonce), lab);
    if (kmdc_sha256(bh, body, strlen(body), &err) != KMDC_OK ||
        kmdc_auth_sig(sig, ak, method, target, ts, nonce, bh, &err) != KMDC_OK ||
        kmdc_auth_sign_nonce(hdr, sizeof(hdr), serial, ak, method, target, body,
                             strlen(body), ts, nonce, &err) != KMDC_OK)
        fail("request", &err);
    json_object_set_new(v, "name", json_string(label));
    vec_set_hex(v, "auth_key", ak, 32);
    vec_set_u64(v, "serial", serial);
    json_object_set_new(v, "method", json_string(method));
    json_object_set_new(v, "target", json_string(target));
    json_object_set_new(v, "body", json_string(body));
    vec_set_u64(v, "ts", (uint64_t)ts);
    vec_set_hex(v, "nonce", nonce, sizeof(nonce));
    vec_set_hex(v, "body_sha256", bh, 32);
    vec_set_hex(v, "sig", sig, 32);
    json_object_set_new(v, "authorization", json_string(hdr));
    return v;
}

static json_t *
request_vectors(void)
{
    json_t *root = json_object(), *list = json_array();

    json_object_set_new(root, "description", json_string(
        "sig = HMAC(AK, \"KMDC/1 request\\n\" || METHOD || \"\\n\" || target || \"\\n\" || ts || "
        "\"\\n\" || nonce (32 hex) || \"\\n\" || hex SHA-256 of the body); 'authorization' is "
        "the header value."));
    json_array_append_new(list, request_vector("mailbox long-poll", "GET",
        "/kmdc/mailbox/1a2b3c4d5e6f7081?wait=30", "", 1795000000));
    json_array_append_new(list, request_vector("activation", "POST",
        "/kmdc/activate/1a2b3c4d5e6f7081",
        "code=ABCDE12345&r=000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
        1795000042));
    json_object_set_new(root, "requests", list);
    return root;
}

static json_t *
wrap_vectors(void)
{
    static const char *const fields[] = { "up_chain", "down_chain", "auth_key" };
    static const uint64_t counters[] = { 5, 0, 0 };
    json_t *root = json_object(), *list = json_array(), *ac = json_object();
    uint8_t master[32], value[32], salt[KMDC_WRAP_SALT_LEN], out[128], mac[32];
    char lab[64], canon[KMDC_ACCESS_CODE_LEN + 1];
    uint64_t serial = UINT64_C(0x1a2b3c4d5e6f7081);
    size_t i, outlen;
    kmdc_err err;

    fixed(master, 32, "wrap master key");
    json_object_set_new(root, "description", json_string(
        "u32 key id || salt (24) || AES-256-GCM(HKDF(salt, master, \"KMDC/1 wrap\", 32), "
        "iv 12 zero bytes, aad = \"KMDC/1 wrap\" || u32 key id || u64 serial || field || "
        "u64 counter). Access code mac = HMAC(HKDF(\"\", master, \"KMDC/1 access code\", 32), "
        "u64 serial || canonical code)."));
    vec_set_hex(root, "master_key", master, 32);
    for (i = 0; i < 3; i++) {
        json_t *v = json_object();
        snprintf(lab, sizeof(lab), "wrap value %s", fields[i]);
        fixed(value, 32, lab);
        snprintf(lab, sizeof(lab), "wrap salt %s", fields[i]);
        fixed(salt, sizeof(salt), lab);
        if (kmdc_wrap_salt(out, sizeof(out), &outlen, 1, master, serial, fields[i],
                           counters[i], value, 32, salt, &err) != KMDC_OK)
            fail("wrap", &err);
        vec_set_u64(v, "key_id", 1);
        vec_set_u64(v, "serial", serial);
        json_object_set_new(v, "field", json_string(fields[i]));
        vec_set_u64(v, "counter", counters[i]);
        vec_set_hex(v, "value", value, 32);
        vec_set_hex(v, "salt", salt, sizeof(salt));
        vec_set_hex(v, "wrapped", out, outlen);
        json_array_append_new(list, v);
    }
    json_object_set_new(root, "wrapped", list);

    if (kmdc_access_code_normalize("abcde-i2l0o", 11, canon, &err) != KMDC_OK ||
        kmdc_access_code_mac(mac, master, serial, canon, &err) != KMDC_OK)
        fail("access code", &err);
    vec_set_u64(ac, "serial", serial);
    json_object_set_new(ac, "typed", json_string("abcde-i2l0o"));
    json_object_set_new(ac, "canonical", json_string(canon));
    vec_set_hex(ac, "mac", mac, 32);
    json_object_set_new(root, "access_code", ac);
    return root;
}

int
main(int argc, char **argv)
{
    const char *dir;

    if (argc != 2 || argv[1][0] == '-') {
        fprintf(stderr, "usage: kmdc-vectors DIR\n"
                        "Writes the KMDC/1 protocol vectors as JSON files into DIR.\n");
        return 2;
    }
    dir = argv[1];
    if (mkdir(dir, 0755) != 0 && errno != EEXIST) {
        fprintf(stderr, "kmdc-vectors: cannot create %s: %s\n", dir, strerror(errno));
        return 1;
    }
    write_json(dir, "chain.json", chain_vectors());
    write_json(dir, "activation.json", activation_vectors());
    write_json(dir, "kdf.json", kdf_vectors());
    write_json(dir, "envelopes.json", envelope_vectors());
    write_json(dir, "request.json", request_vectors());
    write_json(dir, "wrap.json", wrap_vectors());
    return 0;
}
