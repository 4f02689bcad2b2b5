/*
 * kmdc.c - the kmdc client: command table, global options, help, messages,
 * card helpers, and the two small commands `card` and `sign`.
 *
 *   kmdc [GLOBAL OPTIONS] COMMAND [OPTIONS] [ARGS]     (kmdc --help, kmdc(1))
 *
 * Exit status (scripts rely on it, see kmdc_cli.h and kmdc(1)): 0 ok, 1 failed,
 * 2 usage, 3 card locked by another kmdc, 4 refused by the datacenter, 5
 * authentication refused, 6 network or server unavailable (retry later), 7
 * card file problem.
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

static int json_capable(const char *name);

/* ---- messages ----------------------------------------------------------------- */

int
kmdc_cli_fail(int code, const char *fmt, ...)
{
    va_list ap;

    fputs("kmdc: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return code;
}

int
kmdc_cli_fail_err(int code, const kmdc_err *e)
{
    return kmdc_cli_fail(code, "%s", e->msg[0] ? e->msg : kmdc_status_name(e->code));
}

int
kmdc_cli_usage(const kmdc_cli *c, const char *fmt, ...)
{
    va_list ap;

    fputs("kmdc: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'kmdc %s%s--help'.\n", c->cmd ? c->cmd : "", c->cmd ? " " : "");
    return KMDC_EXIT_USAGE;
}

void
kmdc_cli_info(const kmdc_cli *c, const char *fmt, ...)
{
    va_list ap;

    if (c->quiet)
        return;
    fputs("kmdc: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int
kmdc_cli_exit_for(kmdc_status st)
{
    switch (st) {
    case KMDC_OK:
        return KMDC_EXIT_OK;
    case KMDC_ERR_LOCKED:
        return KMDC_EXIT_LOCKED;
    case KMDC_ERR_PERM:
    case KMDC_ERR_CORRUPT:
    case KMDC_ERR_PASSPHRASE:
        return KMDC_EXIT_CARD;
    default:
        return KMDC_EXIT_FAIL;
    }
}

void
kmdc_cli_sanitize(char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

/* ---- small helpers -------------------------------------------------------------- */

int
kmdc_cli_write_all(int fd, const void *p, size_t len)
{
    const uint8_t *b = p;
    ssize_t w;

    while (len > 0) {
        w = write(fd, b, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return -1;
        }
        b += w;
        len -= (size_t)w;
    }
    return 0;
}

int
kmdc_cli_fsync_parent(const char *path)
{
    char *copy = strdup(path), *slash;
    int fd, rc = -1;

    if (copy == NULL)
        return -1;
    slash = strrchr(copy, '/');
    if (slash == NULL) {
        fd = open(".", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    } else {
        if (slash == copy)
            slash[1] = '\0';
        else
            *slash = '\0';
        fd = open(copy, O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    }
    if (fd >= 0) {
        rc = fsync(fd);
        close(fd);
    }
    free(copy);
    return rc;
}

uint64_t
kmdc_cli_now_ms(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int
kmdc_cli_address(const char *in, size_t len, char *out)
{
    size_t i;

    if (len == 0 || len > KMDC_ADDR_MAX)
        return -1;
    for (i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[len] = '\0';
    return kmdc_address_valid(out, len) ? 0 : -1;
}

int
kmdc_cli_parse_id(const char *s, uint64_t *id)
{
    return kmdc_serial_parse(id, s, strlen(s), NULL) == KMDC_OK ? 0 : -1;
}

/* ---- fault injection -------------------------------------------------------------- */

void
kmdc_crash_point(const char *step)
{
#ifdef KMDC_TEST_HOOKS
    const char *at = getenv("KMDC_CRASH_AT");

    if (at != NULL && strcmp(at, step) == 0) {
        fflush(NULL);
        raise(SIGKILL);
        _exit(137);
    }
#else
    (void)step;
#endif
}

/* ---- the card ----------------------------------------------------------------------- */

int
kmdc_cli_passphrase(kmdc_cli *c, const char **pass)
{
    kmdc_err e;

    *pass = NULL;
    if (c->pass_read) {          /* read from the file, or typed, once */
        *pass = c->pass;
        return KMDC_EXIT_OK;
    }
    if (c->passfile == NULL)
        return KMDC_EXIT_OK;
    kmdc_err_clear(&e);
    if (kmdc_passphrase_file_read(c->passfile, c->pass, sizeof c->pass, &e) != KMDC_OK)
        return kmdc_cli_fail_err(KMDC_EXIT_CARD, &e);
    c->pass_read = 1;
    *pass = c->pass;
    return KMDC_EXIT_OK;
}

int
kmdc_cli_load(kmdc_cli *c, kmdc_card **card)
{
    const char *pass;
    kmdc_err e;
    kmdc_status st;
    int rc;

    *card = NULL;
    kmdc_err_clear(&e);
    if ((rc = kmdc_cli_passphrase(c, &pass)) != KMDC_EXIT_OK)
        return rc;
    st = kmdc_card_load(c->card_path, pass, card, &e);
    if (st == KMDC_OK)
        return KMDC_EXIT_OK;
    if (st == KMDC_ERR_PASSPHRASE && pass == NULL)
        return kmdc_cli_load_prompting(c, card);     /* on the terminal, if there is one */
    if (st == KMDC_ERR_PASSPHRASE)
        return kmdc_cli_fail(KMDC_EXIT_CARD, "%s: wrong passphrase", c->card_path);
    return kmdc_cli_fail(st == KMDC_ERR_INTERNAL ? KMDC_EXIT_FAIL : KMDC_EXIT_CARD,
                         "card %s: %s", c->card_path, e.msg);
}

int
kmdc_cli_lock(kmdc_cli *c, kmdc_card_lockwhich which, kmdc_card_lockh **h)
{
    kmdc_err e;
    kmdc_status st;
    int wait = which == KMDC_LOCK_CARD ? 1 : c->wait;

    kmdc_err_clear(&e);
    st = kmdc_card_lock(c->card_path, which, wait, h, &e);
    if (st == KMDC_OK)
        return KMDC_EXIT_OK;
    if (st == KMDC_ERR_LOCKED)
        return kmdc_cli_fail(KMDC_EXIT_LOCKED, "%s (another kmdc is %s with this card; "
                             "use --wait to wait for it)", e.msg,
                             which == KMDC_LOCK_SEND ? "sending" : "fetching");
    return kmdc_cli_fail_err(KMDC_EXIT_CARD, &e);
}

int
kmdc_cli_update(kmdc_cli *c, kmdc_cli_update_fn fn, void *arg, kmdc_card **out)
{
    kmdc_card_lockh *lk = NULL;
    kmdc_card *card = NULL;
    const char *pass;
    kmdc_err e;
    kmdc_status st;
    int rc;

    kmdc_err_clear(&e);
    if (out != NULL)
        *out = NULL;
    if ((rc = kmdc_cli_lock(c, KMDC_LOCK_CARD, &lk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_passphrase(c, &pass)) != KMDC_EXIT_OK)   /* after a prompt, too */
        goto out;
    if (fn != NULL) {
        if ((st = fn(arg, card, &e)) != KMDC_OK) {
            rc = kmdc_cli_fail_err(kmdc_cli_exit_for(st), &e);
            goto out;
        }
        if ((st = kmdc_card_save(card, c->card_path, pass, &e)) != KMDC_OK) {
            rc = kmdc_cli_fail(kmdc_cli_exit_for(st), "cannot save the card: %s", e.msg);
            goto out;
        }
    }
    if (out != NULL) {
        *out = card;
        card = NULL;
    }
out:
    kmdc_card_unlock(lk);
    kmdc_card_free(card);
    return rc;
}

const char *
kmdc_cli_base_url(const kmdc_cli *c, const kmdc_card *card)
{
    static char buf[KMDC_CARD_MAX_URL + 1];
    const char *u = c->url != NULL ? c->url : kmdc_card_url(card);
    size_t len = strlen(u);

    if (len > KMDC_CARD_MAX_URL)
        len = KMDC_CARD_MAX_URL;
    memcpy(buf, u, len);
    while (len > 0 && buf[len - 1] == '/')
        len--;
    buf[len] = '\0';
    return buf;
}

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
    int rc = KMDC_EXIT_OK;

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
    if (o == NULL || json_dumpf(o, stdout, JSON_INDENT(2)) != 0 || fputc('\n', stdout) == EOF ||
        fflush(stdout) != 0)
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
    json_decref(o);
    return rc;
}

static int
cmd_card(kmdc_cli *c, int argc, char **argv)
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

static int
cmd_sign(kmdc_cli *c, int argc, char **argv)
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

/* ---- the command table -------------------------------------------------------------- */

static const kmdc_cmd commands[] = {
    { "send", kmdc_cmd_send,
      "send --to ADDR[,ADDR...] [--name N] [--type T] [--again] FILE...\n"
      "  send --outbox",
      "Seal each FILE for the recipients into the card's outbox and upload it.\n"
      "An envelope stays in the outbox until the datacenter itself answered.\n"
      "Running the same send again (same document, recipients, NAME, TYPE)\n"
      "resumes its outbox entry instead of sealing it again, whatever failed:\n"
      "a document is never delivered twice by accident.  Every outbox entry goes\n"
      "out in order, byte for byte, entries of earlier runs first.  Prints one\n"
      "line per envelope sent:\n"
      "  MESSAGE-ID DELIVERIES FILE      (FILE 'outbox:ENTRY' for an entry of\n"
      "                                   an earlier run that no FILE matched)\n"
      "  --to ADDR[,ADDR...]  recipients (repeatable, 1 to 32 in all)\n"
      "  --name N             the NAME to send (default: FILE's base name; only\n"
      "                       with a single FILE)\n"
      "  --type T             media type, e.g. application/pdf\n"
      "  --again              seal a second copy even though an outbox entry\n"
      "                       holds the same document for the same recipients\n"
      "  --outbox             send only what the outbox holds (= kmdc outbox send)\n"
      "FILE '-' reads standard input (spooled to a 0600 temporary file first).\n", 0 },
    { "outbox", kmdc_cmd_outbox,
      "outbox [list | send]",
      "List the envelopes waiting in the card's outbox, one per line:\n"
      "  ENTRY SEALED SIZE TO NAME FILE     (tab-separated)\n"
      "or send them ('outbox send', the same as 'send --outbox').\n", 0 },
    { "fetch", kmdc_cmd_fetch,
      "fetch [-d DIR]",
      "Download, verify and decrypt every pending delivery into DIR (default:\n"
      "the current folder), never overwriting a file (\"name (1).ext\"), then\n"
      "acknowledge it.  Prints the path of each file written.  A delivery that\n"
      "fails to verify is reported and left in the mailbox (exit 1).\n"
      "  -d, --dir DIR        where to write\n", 0 },
    { "watch", kmdc_cmd_watch,
      "watch [-d DIR]",
      "Fetch, then wait for new mail (long poll) and fetch again, until SIGINT\n"
      "or SIGTERM.  Network failures are retried with a growing pause.\n"
      "  -d, --dir DIR        where to write\n", 0 },
    { "activate", kmdc_cmd_activate,
      "activate CODE",
      "Activate an issued card with the access code printed by kmdcadm issue\n"
      "(XXXXX-XXXXX-C).  A mistyped code is refused before anything is sent, so it\n"
      "uses none of the card's five attempts (exit 2).\n"
      "Safe to repeat after an interruption: the card keeps its activation value\n"
      "until it has seen the new keys work.\n", 0 },
    { "status", kmdc_cmd_status,
      "status MESSAGE-ID",
      "Show the state of each recipient of a message this card sent:\n"
      "  ADDRESS STATE        (queued, delivered or expired)\n", 0 },
    { "card", cmd_card,
      "card [--resync] | card passphrase [--remove | --new-passphrase-file F]",
      "Show the card: serial, address, URL, state, counters, outbox.  Never\n"
      "shows a secret.\n"
      "  --resync             first move the counters forward to what the\n"
      "                       datacenter reports (GET /card); never backwards\n"
      "'card passphrase' sets or changes the card file's passphrase: the new one\n"
      "is typed twice on the terminal (not echoed), or read from F.\n"
      "  --remove             store the card without a passphrase\n"
      "  --new-passphrase-file F  the new passphrase, first line of F (mode 0600)\n",
      0 },
    { "seal", kmdc_cmd_seal,
      "seal --to ADDR[,ADDR...] [--name N] [--type T] [-o OUT] FILE|-",
      "Seal FILE offline into an envelope for upload with any HTTP client, e.g.\n"
      "  curl -F serial=SERIAL -F envelope=@doc.kmdc URL/send\n"
      "Uses up one counter of the card.  FILE '-' reads standard input (spooled\n"
      "to a 0600 temporary file first, as SIZE must be known up front).\n"
      "  -o, --out OUT        write the envelope to OUT (default: standard output)\n"
      "  --to, --name, --type as for send\n", 0 },
    { "open", kmdc_cmd_open,
      "open [-o OUT | -d DIR] FILE|-",
      "Open a down envelope (as fetched from the mailbox) offline with the card\n"
      "and write the document; the message key is then erased, so an envelope\n"
      "opens once.  The fields FROM, NAME, TYPE, SIZE, SENT go to stderr.\n"
      "  -o, --out OUT        write the document to OUT ('-': standard output)\n"
      "  -d, --dir DIR        write it into DIR under its NAME, never overwriting\n"
      "Without -o or -d the document goes to standard output.\n", 0 },
    { "sign", cmd_sign,
      "sign METHOD TARGET [BODY]",
      "Print an Authorization header for a request, for use with curl:\n"
      "  curl -H \"$(kmdc sign GET /kmdc/mailbox/SERIAL)\" https://HOST/kmdc/mailbox/SERIAL\n"
      "TARGET is the request-target exactly as sent (path and query).  BODY is\n"
      "the request body; '@FILE' reads it from FILE.  The card is not changed.\n", 0 },
#ifdef KMDC_TEST_HOOKS
    { "test-mkcard", kmdc_cmd_test_mkcard,
      "test-mkcard --serial S --address A --url U --out FILE [--up-key HEX]\n"
      "            [--down-key HEX] [--auth-key HEX] [--issued]",
      "TEST BUILDS ONLY.  Write a card with the given (or random) keys, activated\n"
      "unless --issued; print the card's effective keys in hex.\n", 1 },
    { "test-seal-down", kmdc_cmd_test_seal_down,
      "test-seal-down --serial S --seq M --down-key HEX --from A --fromserial S\n"
      "               --msgid ID [--name N] [--type T] [-o OUT] FILE",
      "TEST BUILDS ONLY.  Seal a down envelope as the datacenter would, with the\n"
      "down chain key of counter 0.\n", 1 },
#endif
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

const kmdc_cmd *
kmdc_cli_find(const char *name)
{
    size_t i;

    for (i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static const char global_help[] =
    "Global options (before or after the command):\n"
    "  --card FILE          the card (default $KMDC_CARD, else ~/.kmdc/card)\n"
    "  --passphrase-file F  the card's passphrase, first line of F (a file\n"
    "                       others can read is refused; default\n"
    "                       $KMDC_PASSPHRASE_FILE; else it is asked for on\n"
    "                       the terminal)\n"
    "  --url URL            the datacenter, instead of the card's URL\n"
    "  --cacert FILE        CA certificates to verify the datacenter with\n"
    "  --insecure           do not verify the datacenter's TLS certificate\n"
    "  --wait               wait for another kmdc using the card, instead of\n"
    "                       failing with exit status 3\n"
    "  -q, --quiet          no information lines and no progress line\n"
    "  --json               one JSON document on standard output (send, fetch,\n"
    "                       status, card, outbox)\n"
    "  --progress           show the transfer progress (bytes, rate, time left,\n"
    "                       publishing) even when stderr is not a terminal\n"
    "  --no-progress        never show it (default: shown on a terminal)\n"
    "  -h, --help           help; 'kmdc COMMAND --help' for a command\n"
    "  --version            the version\n"
    "Environment: KMDC_CARD, KMDC_PASSPHRASE_FILE, KMDC_URL, KMDC_CACERT stand\n"
    "for --card, --passphrase-file, --url, --cacert.\n"
    "Exit status: 0 ok, 1 failed, 2 usage, 3 card locked by another kmdc,\n"
    "4 refused by the datacenter, 5 authentication refused, 6 network or server\n"
    "unavailable (retry later, nothing lost), 7 card file problem, 8 configuration\n"
    "(wrong URL, not a datacenter's answer, TLS certificate or TLS mismatch).\n";

static void
print_main_help(void)
{
    size_t i;

    printf("Usage: kmdc [GLOBAL OPTIONS] COMMAND [OPTIONS] [ARGS]\n\n"
           "Send and receive documents through a KMDC/1 key management datacenter.\n\n"
           "Commands:\n");
    for (i = 0; i < NCOMMANDS; i++)
        if (!commands[i].hidden)
            printf("  %s\n", commands[i].synopsis);
    printf("\n%s", global_help);
}

static void
print_command_help(const kmdc_cmd *cmd)
{
    printf("Usage: kmdc [GLOBAL OPTIONS] %s\n\n%s\n%s", cmd->synopsis, cmd->help, global_help);
}

#define GLOBAL_LONG_OPTIONS \
    { "card", required_argument, NULL, KMDC_OPT_CARD }, \
    { "passphrase-file", required_argument, NULL, KMDC_OPT_PASSFILE }, \
    { "cacert", required_argument, NULL, KMDC_OPT_CACERT }, \
    { "insecure", no_argument, NULL, KMDC_OPT_INSECURE }, \
    { "wait", no_argument, NULL, KMDC_OPT_WAIT }, \
    { "url", required_argument, NULL, KMDC_OPT_URL }, \
    { "json", no_argument, NULL, KMDC_OPT_JSON }, \
    { "quiet", no_argument, NULL, 'q' }, \
    { "progress", no_argument, NULL, KMDC_OPT_PROGRESS }, \
    { "no-progress", no_argument, NULL, KMDC_OPT_NO_PROGRESS }, \
    { "help", no_argument, NULL, 'h' }, \
    { "version", no_argument, NULL, KMDC_OPT_VERSION }

/* 1 when handled, 0 when opt is not a global option. */
static int
global_option(kmdc_cli *c, int opt, const char *arg)
{
    switch (opt) {
    case KMDC_OPT_CARD:
        c->card_path = arg;
        return 1;
    case KMDC_OPT_PASSFILE:
        c->passfile = arg;
        return 1;
    case KMDC_OPT_CACERT:
        c->cacert = arg;
        return 1;
    case KMDC_OPT_INSECURE:
        c->insecure = 1;
        return 1;
    case KMDC_OPT_WAIT:
        c->wait = 1;
        return 1;
    case KMDC_OPT_URL:
        c->url = arg;
        return 1;
    case KMDC_OPT_JSON:
        c->json = 1;
        return 1;
    case 'q':
        c->quiet = 1;
        return 1;
    case KMDC_OPT_PROGRESS:
    case KMDC_OPT_NO_PROGRESS:
        c->progress = opt == KMDC_OPT_PROGRESS;
        return 1;
    default:
        return 0;
    }
}

int
kmdc_cli_parse(kmdc_cli *c, const kmdc_cmd *cmd, int argc, char **argv,
               const struct option *own, size_t nown, const char *shortopts,
               kmdc_cli_opt_fn fn, void *ctx, int *first)
{
    static const struct option glob[] = { GLOBAL_LONG_OPTIONS };
    struct option table[40];
    char shorts[64];
    size_t n = 0, i;
    int opt, r;

    for (i = 0; i < nown && n + 1 < sizeof table / sizeof table[0]; i++)
        table[n++] = own[i];
    for (i = 0; i < sizeof glob / sizeof glob[0] && n + 1 < sizeof table / sizeof table[0]; i++)
        table[n++] = glob[i];
    memset(&table[n], 0, sizeof table[n]);
    snprintf(shorts, sizeof shorts, ":hq%s", shortopts != NULL ? shortopts : "");

    optind = 0;   /* glibc: full re-initialisation */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, shorts, table, NULL)) != -1) {
        if (opt == 'h') {
            print_command_help(cmd);
            return KMDC_EXIT_OK;
        }
        if (opt == KMDC_OPT_VERSION) {
            printf("kmdc %s\n", PACKAGE_VERSION);
            return KMDC_EXIT_OK;
        }
        if (opt == '?') {
            if (optopt != 0 && optopt < 256 && argv[optind - 1][1] != '-')
                return kmdc_cli_usage(c, "unknown option '-%c'", optopt);
            return kmdc_cli_usage(c, "unknown option '%s'", argv[optind - 1]);
        }
        if (opt == ':')
            return kmdc_cli_usage(c, "option '%s' needs a value", argv[optind - 1]);
        if (global_option(c, opt, optarg))
            continue;
        if (fn == NULL)
            return kmdc_cli_usage(c, "unknown option '%s'", argv[optind - 1]);
        if ((r = fn(c, ctx, opt, optarg)) != 0)
            return r;
    }
    if (c->json && !json_capable(cmd->name))
        return kmdc_cli_usage(c, "--json goes with send, fetch, status, card and outbox");
    *first = optind;
    return -1;
}

/* ---- main --------------------------------------------------------------------------- */

/* Damerau-Levenshtein distance (optimal string alignment) of two short words. */
static size_t
edit_distance(const char *a, const char *b)
{
    size_t la = strlen(a), lb = strlen(b), i, j, d[17][17], v;

    if (la > 16 || lb > 16)
        return 99;
    for (i = 0; i <= la; i++)
        d[i][0] = i;
    for (j = 0; j <= lb; j++)
        d[0][j] = j;
    for (i = 1; i <= la; i++)
        for (j = 1; j <= lb; j++) {
            v = d[i - 1][j - 1] + (a[i - 1] != b[j - 1]);
            if (d[i - 1][j] + 1 < v)
                v = d[i - 1][j] + 1;
            if (d[i][j - 1] + 1 < v)
                v = d[i][j - 1] + 1;
            if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1] &&
                d[i - 2][j - 2] + 1 < v)
                v = d[i - 2][j - 2] + 1;
            d[i][j] = v;
        }
    return d[la][lb];
}

/* The visible command nearest to word (at most 2 edits), or NULL. */
static const char *
nearest_command(const char *word)
{
    const char *best = NULL;
    size_t i, dist, bd = 3;

    for (i = 0; i < NCOMMANDS; i++) {
        if (commands[i].hidden)
            continue;
        dist = edit_distance(word, commands[i].name);
        if (dist < bd && dist < strlen(commands[i].name)) {
            bd = dist;
            best = commands[i].name;
        }
    }
    return best;
}

static int
json_capable(const char *name)
{
    return strcmp(name, "send") == 0 || strcmp(name, "fetch") == 0 ||
           strcmp(name, "status") == 0 || strcmp(name, "card") == 0 ||
           strcmp(name, "outbox") == 0;
}

/* Does the command line ask for help (then no card is needed)? */
static int
wants_help(int argc, char **argv)
{
    int i;

    for (i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--") == 0)
            return 0;
        if (strcmp(argv[i], "-h") == 0 || strcmp(argv[i], "--help") == 0)
            return 1;
    }
    return 0;
}

static void
on_signal(int sig)
{
    (void)sig;
    kmdc_http_interrupted = 1;
}

static void
install_signals(void)
{
    struct sigaction sa;

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;             /* no SA_RESTART: a blocking wait returns */
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGTERM, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
}

int
main(int argc, char **argv)
{
    static const struct option glob[] = {
        GLOBAL_LONG_OPTIONS,
        { NULL, 0, NULL, 0 }
    };
    const kmdc_cmd *cmd;
    kmdc_cli c;
    const char *home;
    size_t len;
    int opt, rc, card_from_env = 0;

    memset(&c, 0, sizeof c);
    c.progress = -1;
    umask(077);
    opterr = 0;
    while ((opt = getopt_long(argc, argv, "+:hq", glob, NULL)) != -1) {
        if (opt == 'h') {
            print_main_help();
            return KMDC_EXIT_OK;
        }
        if (opt == KMDC_OPT_VERSION) {
            printf("kmdc %s\n", PACKAGE_VERSION);
            return KMDC_EXIT_OK;
        }
        if (opt == '?')
            return kmdc_cli_usage(&c, "unknown option '%s'", argv[optind - 1]);
        if (opt == ':')
            return kmdc_cli_usage(&c, "option '%s' needs a value", argv[optind - 1]);
        global_option(&c, opt, optarg);
    }
    if (optind >= argc)
        return kmdc_cli_usage(&c, "which command? (send, outbox, fetch, watch, activate, "
                              "status, card, seal, open, sign)");
    cmd = kmdc_cli_find(argv[optind]);
    if (cmd == NULL) {
        const char *near = nearest_command(argv[optind]);
        if (near != NULL)
            return kmdc_cli_usage(&c, "unknown command '%s'; did you mean '%s'?",
                                  argv[optind], near);
        return kmdc_cli_usage(&c, "unknown command '%s'", argv[optind]);
    }
    c.cmd = cmd->name;
    if (c.json && !json_capable(cmd->name))
        return kmdc_cli_usage(&c, "--json goes with send, fetch, status, card and outbox");
    if (c.url == NULL && getenv("KMDC_URL") != NULL && getenv("KMDC_URL")[0] != '\0')
        c.url = getenv("KMDC_URL");
    if (c.cacert == NULL && getenv("KMDC_CACERT") != NULL && getenv("KMDC_CACERT")[0] != '\0')
        c.cacert = getenv("KMDC_CACERT");

    if (c.card_path == NULL && getenv("KMDC_CARD") != NULL && getenv("KMDC_CARD")[0] != '\0') {
        c.card_path = getenv("KMDC_CARD");
        card_from_env = 1;
    }
    if (c.passfile == NULL && getenv("KMDC_PASSPHRASE_FILE") != NULL &&
        getenv("KMDC_PASSPHRASE_FILE")[0] != '\0')
        c.passfile = getenv("KMDC_PASSPHRASE_FILE");
    if (c.card_path == NULL) {
        home = getenv("HOME");
        if (home == NULL || home[0] == '\0')
            return kmdc_cli_usage(&c, "no card: give --card FILE or set KMDC_CARD");
        len = strlen(home) + sizeof "/.kmdc/card";
        if ((c.card_path_alloc = malloc(len)) == NULL)
            return kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
        snprintf(c.card_path_alloc, len, "%s/.kmdc/card", home);
        c.card_path = c.card_path_alloc;
    }
    if (!cmd->hidden && !wants_help(argc - optind, argv + optind) &&
        access(c.card_path, F_OK) != 0 && errno == ENOENT) {
        if (c.card_path_alloc != NULL)
            rc = kmdc_cli_fail(KMDC_EXIT_CARD,
                               "no card at %s yet.\n"
                               "A card is issued by the datacenter's operator (kmdcadm issue) "
                               "together with an access code.\nSave it as %s (mode 0600), or "
                               "give its place with --card FILE or KMDC_CARD;\nthen run: "
                               "kmdc activate CODE", c.card_path, c.card_path);
        else
            rc = kmdc_cli_fail(KMDC_EXIT_CARD, "no card at %s (given with %s)", c.card_path,
                               card_from_env ? "KMDC_CARD" : "--card");
        free(c.card_path_alloc);
        return rc;
    }
    if (kmdc_http_global_init() != 0) {
        free(c.card_path_alloc);
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot initialise libcurl");
    }
    install_signals();

    rc = cmd->run(&c, argc - optind, argv + optind);

    kmdc_http_global_cleanup();
    kmdc_wipe(c.pass, sizeof c.pass);
    free(c.card_path_alloc);
    return rc;
}

int
kmdc_cli_is_special(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && !S_ISREG(st.st_mode);
}
