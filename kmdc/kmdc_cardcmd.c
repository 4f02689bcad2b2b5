/*
 * kmdc_cardcmd.c - the two commands about the card itself: `kmdc card`
 * (show it, --resync, `card passphrase`) and `kmdc sign` (an Authorization
 * header made with the card's key, for curl).  Neither sends a document.
 */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "kmdc_auth.h"
#include "kmdc_cli.h"
#include "kmdc_http.h"
#include "kmdc_util.h"

#define SIGN_BODY_MAX 4096        /* authenticated bodies: at most 4 KiB (PROTOCOL.md 5) */

/* ---- card ------------------------------------------------------------------------- */

typedef struct card_opts {
    int resync, remove;
    const char *newfile;
} card_opts;

static int
card_opt(kmdc_cli *c, void *ctx, int opt, const char *arg)
{
    card_opts *o = ctx;

    (void)c;
    if (opt == KMDC_OPT_OWN)
        o->resync = 1;
    else if (opt == KMDC_OPT_OWN + 1)
        o->remove = 1;
    else if (opt == KMDC_OPT_OWN + 2)
        o->newfile = arg;
    else
        return KMDC_EXIT_USAGE;
    return 0;
}

static const char *
card_state(const kmdc_card *card)
{
    return kmdc_card_get_state(card) == KMDC_CARD_ACTIVE ? "active"
           : kmdc_card_activation_pending(card) ? "issued (activation pending)" : "issued";
}

/* kmdc card --json: the same fields as one object. */
static int
card_json(const kmdc_card *card, const uint64_t *seqs, size_t n)
{
    json_t *o, *arr;
    char hex[17];
    size_t i;
    int rc;

    if ((arr = json_array()) == NULL)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
    for (i = 0; i < n; i++) {
        kmdc_serial_format(hex, seqs[i]);
        json_array_append_new(arr, json_string(hex));
    }
    kmdc_serial_format(hex, kmdc_card_serial(card));
    o = json_pack("{s:s, s:s, s:s, s:s, s:b, s:I, s:I, s:I, s:I, s:I, s:o}",
                  "serial", hex, "address", kmdc_card_address(card), "url", kmdc_card_url(card),
                  "state", card_state(card), "protected", kmdc_card_is_protected(card),
                  "up_next", (json_int_t)kmdc_card_up_next(card),
                  "down_next", (json_int_t)kmdc_card_down_next(card),
                  "stored_down_keys", (json_int_t)kmdc_card_skipped_count(card),
                  "deliveries_recorded", (json_int_t)kmdc_card_delivery_count(card),
                  "outbox", (json_int_t)n, "outbox_entries", arr);
    rc = kmdc_cli_print_json(o);
    json_decref(o);
    return rc;
}

int
kmdc_cmd_card(kmdc_cli *c, int argc, char **argv)
{
    static const struct option own[] = {
        { "resync", no_argument, NULL, KMDC_OPT_OWN },
        { "remove", no_argument, NULL, KMDC_OPT_OWN + 1 },
        { "new-passphrase-file", required_argument, NULL, KMDC_OPT_OWN + 2 },
    };
    card_opts o = { 0, 0, NULL };
    kmdc_card *card = NULL;
    uint64_t *seqs = NULL;
    size_t n = 0, i;
    char serial[17], hex[17];
    kmdc_err e;
    int rc, first;

    kmdc_err_clear(&e);
    rc = kmdc_cli_parse(c, kmdc_cli_find("card"), argc, argv, own, 3, NULL, card_opt,
                        &o, &first);
    if (rc >= 0)
        return rc;
    if (first < argc && strcmp(argv[first], "passphrase") == 0 && first + 1 == argc &&
        !o.resync)
        return kmdc_cmd_card_passphrase(c, o.remove, o.newfile);
    if (first < argc)
        return kmdc_cli_usage(c, "unexpected argument '%s'", argv[first]);
    if (o.remove || o.newfile != NULL)
        return kmdc_cli_usage(c, "--remove and --new-passphrase-file go with "
                              "'kmdc card passphrase'");
    if (o.resync && (rc = kmdc_cmd_card_resync(c)) != KMDC_EXIT_OK)
        return rc;
    if ((rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK)
        return rc;
    if (kmdc_outbox_list(c->card_path, &seqs, &n, &e) != KMDC_OK) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_CARD, &e);
        goto out;
    }
    kmdc_serial_format(serial, kmdc_card_serial(card));
    if (c->json) {
        rc = card_json(card, seqs, n);
        goto out;
    }
    printf("serial: %s\n", serial);
    printf("address: %s\n", kmdc_card_address(card));
    printf("url: %s\n", kmdc_card_url(card));
    printf("state: %s\n", card_state(card));
    printf("protected: %s\n", kmdc_card_is_protected(card) ? "yes" : "no");
    printf("up_next: %" PRIu64 "\n", kmdc_card_up_next(card));
    printf("down_next: %" PRIu64 "\n", kmdc_card_down_next(card));
    printf("stored_down_keys: %zu\n", kmdc_card_skipped_count(card));
    printf("deliveries_recorded: %zu\n", kmdc_card_delivery_count(card));
    printf("outbox: %zu\n", n);
    for (i = 0; i < n; i++) {
        kmdc_serial_format(hex, seqs[i]);
        printf("outbox_entry: %s\n", hex);
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
out:
    free(seqs);
    kmdc_card_free(card);
    return rc;
}

/* ---- sign ------------------------------------------------------------------------- */

/* The body to sign: "@FILE" reads FILE ("@-" standard input), else the text. */
static int
sign_body(const char *arg, uint8_t **body, size_t *len)
{
    FILE *f;
    size_t n;
    uint8_t *b;
    int rc = KMDC_EXIT_OK;

    *body = NULL;
    *len = 0;
    if (arg[0] != '@') {
        *len = strlen(arg);
        if (*len > SIGN_BODY_MAX)
            return kmdc_cli_fail(KMDC_EXIT_FAIL, "a signed body is at most %d bytes",
                                 SIGN_BODY_MAX);
        *body = (uint8_t *)strdup(arg);
        return *body != NULL ? KMDC_EXIT_OK : kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
    }
    f = strcmp(arg + 1, "-") == 0 ? stdin : fopen(arg + 1, "rbe");
    if (f == NULL)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot read %s: %s", arg + 1, strerror(errno));
    if ((b = malloc(SIGN_BODY_MAX + 1)) == NULL) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
        goto out;
    }
    n = fread(b, 1, SIGN_BODY_MAX + 1, f);
    if (ferror(f)) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot read %s: %s", arg + 1, strerror(errno));
        free(b);
        goto out;
    }
    if (n > SIGN_BODY_MAX) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "a signed body is at most %d bytes", SIGN_BODY_MAX);
        free(b);
        goto out;
    }
    *body = b;
    *len = n;
out:
    if (f != stdin)
        fclose(f);
    return rc;
}

int
kmdc_cmd_sign(kmdc_cli *c, int argc, char **argv)
{
    char hdr[KMDC_AUTH_HDR_BUFSZ];
    kmdc_card *card = NULL;
    uint8_t *body = NULL;
    size_t bodylen = 0;
    kmdc_err e;
    int rc, first;

    kmdc_err_clear(&e);
    rc = kmdc_cli_parse(c, kmdc_cli_find("sign"), argc, argv, NULL, 0, NULL, NULL, NULL,
                        &first);
    if (rc >= 0)
        return rc;
    if (argc - first < 2 || argc - first > 3)
        return kmdc_cli_usage(c, "sign takes METHOD TARGET [BODY]");
    if (argv[first + 1][0] != '/')
        return kmdc_cli_usage(c, "TARGET is the request-target as sent, e.g. /kmdc/mailbox/SERIAL");
    if (argc - first == 3 && (rc = sign_body(argv[first + 2], &body, &bodylen)) != KMDC_EXIT_OK)
        return rc;
    if ((rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK)
        goto out;
    if (kmdc_auth_sign(hdr, sizeof hdr, kmdc_card_serial(card), kmdc_card_ak(card),
                       argv[first], argv[first + 1], body, bodylen, (int64_t)time(NULL),
                       &e) != KMDC_OK) {
        rc = e.code == KMDC_ERR_ARG ? kmdc_cli_usage(c, "%s", e.msg)
                                    : kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    printf("Authorization: %s\n", hdr);
    if (fflush(stdout) != 0 || ferror(stdout))
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
out:
    free(body);
    kmdc_card_free(card);
    return rc;
}
