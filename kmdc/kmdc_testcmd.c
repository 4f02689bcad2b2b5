/*
 * kmdc_testcmd.c - commands that exist only in test builds (configure
 * --enable-test-hooks, which defines KMDC_TEST_HOOKS): they stand in for the
 * datacenter so that the offline commands can be tested without one.
 *
 *   kmdc test-mkcard     write a card with chosen keys, activated unless
 *                        --issued, and print its effective keys in hex
 *   kmdc test-seal-down  seal a down envelope exactly as the datacenter
 *                        would, from the recipient's down chain key
 *
 * They print secrets on purpose.  A release build does not contain them.
 */
#define _GNU_SOURCE
#include "config.h"

#ifdef KMDC_TEST_HOOKS

#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kmdc_cli.h"
#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_tlv.h"
#include "kmdc_util.h"

enum {
    OPT_SERIAL = KMDC_OPT_OWN, OPT_ADDRESS, OPT_OUT, OPT_UPKEY, OPT_DOWNKEY, OPT_AUTHKEY,
    OPT_ISSUED, OPT_SEQ, OPT_FROM, OPT_FROMSERIAL, OPT_MSGID, OPT_NAME, OPT_TYPE, OPT_SENT,
    OPT_RCVD, OPT_CARDURL
};

typedef struct test_opts {
    uint64_t serial, seq, fromserial, msgid, sent, rcvd;
    int has_serial, has_seq, has_fromserial, has_msgid, has_sent, has_rcvd, issued;
    const char *address, *url, *out, *from, *name, *type;
    uint8_t uck[KMDC_KEY_LEN], dck[KMDC_KEY_LEN], ak[KMDC_KEY_LEN];
    int has_uck, has_dck, has_ak;
} test_opts;

static int
key_arg(kmdc_cli *c, const char *arg, uint8_t key[KMDC_KEY_LEN], int *has)
{
    if (kmdc_hex_decode(key, KMDC_KEY_LEN, arg, strlen(arg), NULL) != KMDC_OK)
        return kmdc_cli_usage(c, "a key is 64 lowercase hex digits");
    *has = 1;
    return 0;
}

static int
u64_arg(kmdc_cli *c, const char *arg, uint64_t *v, int *has)
{
    char *end;
    unsigned long long x;

    x = strtoull(arg, &end, 10);
    if (arg[0] < '0' || arg[0] > '9' || *end != '\0' || x > KMDC_U63_MAX)
        return kmdc_cli_usage(c, "'%s' is not a number in 0 .. 2^63-1", arg);
    *v = (uint64_t)x;
    *has = 1;
    return 0;
}

static int
id_arg(kmdc_cli *c, const char *arg, uint64_t *v, int *has)
{
    if (kmdc_cli_parse_id(arg, v) != 0)
        return kmdc_cli_usage(c, "'%s' is not 16 lowercase hex digits in 1 .. 2^63-1", arg);
    *has = 1;
    return 0;
}

static int
test_opt(kmdc_cli *c, void *ctx, int opt, const char *arg)
{
    test_opts *o = ctx;

    switch (opt) {
    case OPT_SERIAL: return id_arg(c, arg, &o->serial, &o->has_serial);
    case OPT_FROMSERIAL: return id_arg(c, arg, &o->fromserial, &o->has_fromserial);
    case OPT_MSGID: return id_arg(c, arg, &o->msgid, &o->has_msgid);
    case OPT_SEQ: return u64_arg(c, arg, &o->seq, &o->has_seq);
    case OPT_SENT: return u64_arg(c, arg, &o->sent, &o->has_sent);
    case OPT_RCVD: return u64_arg(c, arg, &o->rcvd, &o->has_rcvd);
    case OPT_UPKEY: return key_arg(c, arg, o->uck, &o->has_uck);
    case OPT_DOWNKEY: return key_arg(c, arg, o->dck, &o->has_dck);
    case OPT_AUTHKEY: return key_arg(c, arg, o->ak, &o->has_ak);
    case OPT_ADDRESS: o->address = arg; return 0;
    case OPT_CARDURL: o->url = arg; return 0;
    case OPT_OUT: case 'o': o->out = arg; return 0;
    case OPT_FROM: o->from = arg; return 0;
    case OPT_NAME: o->name = arg; return 0;
    case OPT_TYPE: o->type = arg; return 0;
    case OPT_ISSUED: o->issued = 1; return 0;
    default: return kmdc_cli_usage(c, "unknown option");
    }
}

static void
print_key(const char *label, const uint8_t key[KMDC_KEY_LEN])
{
    char hex[2 * KMDC_KEY_LEN + 1];

    kmdc_hex_encode(hex, key, KMDC_KEY_LEN);
    printf("%s %s\n", label, hex);
    kmdc_wipe(hex, sizeof hex);
}

int
kmdc_cmd_test_mkcard(kmdc_cli *c, int argc, char **argv)
{
    static const struct option own[] = {
        { "serial", required_argument, NULL, OPT_SERIAL },
        { "address", required_argument, NULL, OPT_ADDRESS },
        { "card-url", required_argument, NULL, OPT_CARDURL },
        { "out", required_argument, NULL, OPT_OUT },
        { "up-key", required_argument, NULL, OPT_UPKEY },
        { "down-key", required_argument, NULL, OPT_DOWNKEY },
        { "auth-key", required_argument, NULL, OPT_AUTHKEY },
        { "issued", no_argument, NULL, OPT_ISSUED },
    };
    test_opts o;
    kmdc_card *card = NULL;
    const char *pass = NULL;
    uint8_t r[KMDC_KEY_LEN];
    kmdc_err e;
    int rc, first;

    memset(&o, 0, sizeof o);
    kmdc_err_clear(&e);
    rc = kmdc_cli_parse(c, kmdc_cli_find("test-mkcard"), argc, argv, own,
                        sizeof own / sizeof own[0], NULL, test_opt, &o, &first);
    if (rc >= 0)
        return rc;
    /* --url is the global option; for this command it names the card's URL. */
    if (o.url == NULL)
        o.url = c->url;
    if (first < argc || !o.has_serial || o.address == NULL || o.url == NULL || o.out == NULL)
        return kmdc_cli_usage(c, "test-mkcard needs --serial S --address A --url U --out FILE");
    if ((!o.has_uck && kmdc_random(o.uck, KMDC_KEY_LEN, &e) != KMDC_OK) ||
        (!o.has_dck && kmdc_random(o.dck, KMDC_KEY_LEN, &e) != KMDC_OK) ||
        (!o.has_ak && kmdc_random(o.ak, KMDC_KEY_LEN, &e) != KMDC_OK)) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    if (kmdc_card_new(&card, o.serial, o.address, o.url, o.uck, o.dck, o.ak, &e) != KMDC_OK ||
        kmdc_card_set_kdf(card, 10, 8, 1, &e) != KMDC_OK) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    if (!o.issued) {
        if (kmdc_card_activation_begin(card, r, &e) != KMDC_OK ||
            kmdc_card_activation_preview(card, o.uck, o.dck, o.ak, &e) != KMDC_OK ||
            kmdc_card_activation_confirm(card, &e) != KMDC_OK) {
            rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
            goto out;
        }
    }
    if ((rc = kmdc_cli_passphrase(c, &pass)) != KMDC_EXIT_OK)
        goto out;
    if (kmdc_card_save_new(card, o.out, pass, 0, &e) != KMDC_OK) {
        rc = kmdc_cli_fail_err(kmdc_cli_exit_for(e.code), &e);
        goto out;
    }
    print_key("up-key", o.uck);
    print_key("down-key", o.dck);
    print_key("auth-key", o.ak);
    fflush(stdout);
out:
    kmdc_wipe(r, sizeof r);
    kmdc_wipe(&o, sizeof o);
    kmdc_card_free(card);
    return rc;
}

int
kmdc_cmd_test_seal_down(kmdc_cli *c, int argc, char **argv)
{
    static const struct option own[] = {
        { "serial", required_argument, NULL, OPT_SERIAL },
        { "seq", required_argument, NULL, OPT_SEQ },
        { "down-key", required_argument, NULL, OPT_DOWNKEY },
        { "from", required_argument, NULL, OPT_FROM },
        { "fromserial", required_argument, NULL, OPT_FROMSERIAL },
        { "msgid", required_argument, NULL, OPT_MSGID },
        { "name", required_argument, NULL, OPT_NAME },
        { "type", required_argument, NULL, OPT_TYPE },
        { "sent", required_argument, NULL, OPT_SENT },
        { "rcvd", required_argument, NULL, OPT_RCVD },
        { "out", required_argument, NULL, 'o' },
    };
    test_opts o;
    kmdc_meta m;
    kmdc_header h;
    uint8_t mk[KMDC_KEY_LEN];
    uint64_t size = 0;
    kmdc_err e;
    int rc, first, in = -1, out = -1;

    memset(&o, 0, sizeof o);
    kmdc_err_clear(&e);
    kmdc_meta_init(&m);
    rc = kmdc_cli_parse(c, kmdc_cli_find("test-seal-down"), argc, argv, own,
                        sizeof own / sizeof own[0], "o:", test_opt, &o, &first);
    if (rc >= 0)
        return rc;
    if (argc - first != 1 || !o.has_serial || !o.has_seq || !o.has_dck || o.from == NULL ||
        !o.has_fromserial || !o.has_msgid)
        return kmdc_cli_usage(c, "test-seal-down needs --serial --seq --down-key --from "
                              "--fromserial --msgid and one FILE");
    if ((rc = kmdc_cli_open_input(argv[first], &in, &size)) != KMDC_EXIT_OK)
        goto out;
    m.has_size = 1;
    m.size = size;
    m.has_sent = 1;
    m.sent = o.has_sent ? o.sent : kmdc_cli_now_ms();
    m.has_fromserial = 1;
    m.fromserial = o.fromserial;
    m.has_msgid = 1;
    m.msgid = o.msgid;
    m.has_rcvd = 1;
    m.rcvd = o.has_rcvd ? o.rcvd : kmdc_cli_now_ms();
    if (kmdc_meta_set_from(&m, o.from, strlen(o.from), &e) != KMDC_OK ||
        (o.name != NULL &&
         kmdc_meta_set_name(&m, (const uint8_t *)o.name, strlen(o.name), &e) != KMDC_OK) ||
        (o.type != NULL && kmdc_meta_set_type(&m, o.type, strlen(o.type), &e) != KMDC_OK) ||
        kmdc_chain_seek(o.dck, 0, o.seq, mk, &e) != KMDC_OK ||
        kmdc_header_new(&h, KMDC_DIR_DOWN, o.serial, o.seq, &e) != KMDC_OK) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    if (o.out != NULL &&
        (out = open(o.out, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600)) < 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot create %s", o.out);
        goto out;
    }
    if (kmdc_cli_seal_stream(&h, mk, &m, in, out >= 0 ? out : STDOUT_FILENO, &e) != KMDC_OK)
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
out:
    kmdc_wipe(mk, sizeof mk);
    kmdc_wipe(&o, sizeof o);
    if (in >= 0 && in != STDIN_FILENO)
        close(in);
    if (out >= 0)
        close(out);
    return rc;
}

#endif /* KMDC_TEST_HOOKS */
