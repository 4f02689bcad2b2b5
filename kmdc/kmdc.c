/*
 * kmdc.c - the kmdc client's entry point: the command table, the help texts,
 * the global options, option parsing and main().
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

static int json_capable(const char *name);

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
    { "card", kmdc_cmd_card,
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
    { "sign", kmdc_cmd_sign,
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
