/*
 * kmdcadm.c - the datacenter administrator's tool: schema migrations, master
 * keys, issuing cards and changing their status (docs/ADMIN.md, kmdcadm(8)).
 *
 *   kmdcadm [GLOBAL OPTIONS] COMMAND [OPTIONS]     (kmdcadm --help)
 *
 * Commands: setup, migrate, keygen, issue, list, show, suspend, resume, revoke,
 * resync, rekey, purge, audit (kmdcadm(8) documents them all).
 *
 * This file holds main, the command table and the one dispatcher that every
 * command goes through (kmdcadm.h lists its steps): the global options, each
 * command's options and operands, the master keys, the database connection,
 * and the cleanup.  The commands themselves are in kmdcadm_cards.c (issue,
 * list, show, suspend/resume/revoke), kmdcadm_keys.c (keygen, resync, rekey)
 * and kmdcadm_maint.c (setup, migrate, purge, audit); the database side is in
 * kmdcadm_db*.c.
 *
 * Exit status: 0 done, 1 the operation failed (message on stderr prefixed
 * "kmdcadm: "), 2 usage error.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_card.h"
#include "kmdc_keyring.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"
#include "kmdcadm.h"

#define GLOBAL_OPTIONS \
    { "db", required_argument, NULL, OPT_DB }, \
    { "master-key", required_argument, NULL, OPT_MASTER_KEY }, \
    { "sqldir", required_argument, NULL, OPT_SQLDIR }, \
    { "help", no_argument, NULL, OPT_HELP }, \
    { "version", no_argument, NULL, OPT_VERSION }

/* The most options a command's table may hold with the global ones. */
#define MAX_OPTIONS 24

/* --- messages -------------------------------------------------------------- */

int
fail(const char *fmt, ...)
{
    va_list ap;

    fputs("kmdcadm: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_FAIL;
}

int
usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fputs("kmdcadm: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'kmdcadm %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
    return EXIT_USAGE;
}

int
fail_err(const kmdc_err *e)
{
    return fail("%s", e->msg[0] ? e->msg : kmdc_status_name(e->code));
}

/* Flush stdout and report a write error (a full disk, a closed pipe). */
static int
finish_output(int rc)
{
    if (fflush(stdout) != 0 || ferror(stdout))
        return rc == EXIT_OK ? fail("cannot write the output: %s", strerror(errno)) : rc;
    return rc;
}

/* --- operands shared by several commands ------------------------------------ */

int
parse_serial(const char *cmd, const char *s, uint64_t *serial)
{
    char buf[17];
    size_t len = strlen(s), i;

    if (len == 0 || len > 16)
        return usage_error(cmd, "a serial is up to 16 hex digits");
    memset(buf, '0', 16);
    for (i = 0; i < len; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return usage_error(cmd, "a serial is up to 16 hex digits");
        buf[16 - len + i] = (char)tolower((unsigned char)s[i]);
    }
    buf[16] = '\0';
    if (kmdc_serial_parse(serial, buf, 16, NULL) != KMDC_OK)
        return usage_error(cmd, "a serial lies in 1 .. 7fffffffffffffff");
    return 0;
}

int
no_operands(const kmdcadm_ctx *ctx, int argc, char **argv)
{
    if (argc > 0)
        return usage_error(ctx->cmd->name, "unexpected argument '%s'", argv[0]);
    return EXIT_OK;
}

int
one_serial(const kmdcadm_ctx *ctx, int argc, char **argv, uint64_t *serial)
{
    const char *name = ctx->cmd->name;

    if (argc != 1)
        return usage_error(name, "%s takes one SERIAL", name);
    if (parse_serial(name, argv[0], serial) != 0)
        return EXIT_USAGE;
    return EXIT_OK;
}

/* --- the command table ----------------------------------------------------------- */

static const kmdcadm_command commands[] = {
    { "setup", cmd_setup, &setup_options, 0, 0,
      "setup [--database D] [--owner R] [--httpd-role R] [--httpd-user U] "
      "[--admin-user U] [--key-dir DIR] [--no-key] [--peer-map] [--as USER] "
      "[--print-grants]",
      "Prepare everything the module needs, in one step, on a connection as a\n"
      "PostgreSQL superuser: the roles R (default kmdc_owner: owns the schema, what\n"
      "kmdcadm connects as) and --httpd-role (default kmdc_httpd: httpd's children,\n"
      "only the grants of docs/ADMIN.md section 2), the database D (default kmdc)\n"
      "owned by the owner, with PUBLIC's rights revoked, the schema (migrated as the\n"
      "owner) and the grants; then a master key: the folder DIR (default /etc/kmdc) is\n"
      "created with mode 0700 and a new DIR/master-1.key with mode 0600, both owned by\n"
      "the user running kmdcadm (root: httpd reads master keys before it drops\n"
      "privileges), unless a master-N.key is there.  Every step looks first: running it\n"
      "again changes nothing.  Prints each step and the KmdcDatabase and KmdcMasterKey\n"
      "lines to use.\n"
      "  --peer-map      also add to the server's pg_ident.conf the map kmdc (system\n"
      "                  user --httpd-user, default www-data, as the httpd role;\n"
      "                  --admin-user, default the user running kmdcadm, as the owner)\n"
      "                  and to pg_hba.conf, above its rules, 'local D R1,R2 peer\n"
      "                  map=kmdc'; then reload PostgreSQL (the files must be writable\n"
      "                  by the user that connects: see --as)\n"
      "  --as USER       do the database part as system user USER (peer authentication\n"
      "                  over the Unix socket); default postgres when kmdcadm runs as\n"
      "                  root without --db and without PGUSER; --as '' for none\n"
      "  --no-key        no master key\n"
      "  --print-grants  print the GRANT statements for the httpd role and stop\n" },
    { "migrate", cmd_migrate, NULL, KMDCADM_NEEDS_DB, 0,
      "migrate [--sqldir DIR]",
      "Apply the schema migrations the database lacks, in order, each in one\n"
      "transaction, under an advisory lock (two migrators never race).  Running it\n"
      "again does nothing.  The migrations folder is --sqldir DIR, else $KMDC_SQLDIR,\n"
      "else the source tree's sql/ when kmdcadm runs from a build tree, else the\n"
      "installed folder " KMDC_SQLDIR ".\n" },
    { "keygen", cmd_keygen, &keygen_options, 0, 0,
      "keygen --out FILE",
      "Write a new master key (32 random bytes as 64 hex digits) to FILE, created\n"
      "with mode 0600; an existing FILE is never replaced.  Keep master keys out of\n"
      "database backups.\n" },
    { "issue", cmd_issue, &issue_options, KMDCADM_NEEDS_KEYS | KMDCADM_NEEDS_SCHEMA, 0,
      "issue --address A --url U --out FILE [--passphrase-file F] [--force]",
      "Issue a card for mailbox address A (lower-cased; [a-z0-9][a-z0-9._-]{0,63})\n"
      "served at datacenter URL U, and write its card file to FILE (mode 0600;\n"
      "an existing FILE is replaced only with --force).  Needs --master-key: the\n"
      "card's keys are stored wrapped under the highest master key.  Prints the\n"
      "serial and the access code, once; the code activates the card within 7 days.\n"
      "  --passphrase-file F  protect the card file with the first line of F\n"
      "Fails when a card for A that is not revoked exists.\n" },
    { "list", cmd_list, &list_options, KMDCADM_NEEDS_SCHEMA, 0,
      "list [--status S] [--address A] [--json]",
      "List the cards: serial, address, status, locked, up_next, down_next, created\n"
      "(UTC).  Never shows a key.\n"
      "  --status S   only cards in status S (issued, active, suspended, revoked)\n"
      "  --address A  only cards for address A\n"
      "  --json       one JSON array instead of columns\n" },
    { "show", cmd_show, &show_options, KMDCADM_NEEDS_SCHEMA, 0,
      "show SERIAL [--json]",
      "Show one card (SERIAL: its 16 hex digits) with its delivery and message\n"
      "counts.  Never shows a key.\n" },
    { "suspend", cmd_transition, &reason_options, KMDCADM_NEEDS_SCHEMA, KMDCADM_SUSPEND,
      "suspend SERIAL [--reason TEXT]",
      "Suspend an issued or active card: the datacenter refuses it until resumed.\n"
      "Writes an audit log row (with TEXT: never put an address or a secret in it).\n" },
    { "resume", cmd_transition, &reason_options, KMDCADM_NEEDS_SCHEMA, KMDCADM_RESUME,
      "resume SERIAL [--reason TEXT]",
      "Resume a suspended card (to active, or to issued if it was never\n"
      "activated).  Writes an audit log row.\n" },
    { "revoke", cmd_transition, &reason_options, KMDCADM_NEEDS_SCHEMA, KMDCADM_REVOKE,
      "revoke SERIAL [--reason TEXT]",
      "Revoke a card for good: it cannot be resumed, and its address may be issued\n"
      "a new card.  Writes an audit log row.\n" },
    { "resync", cmd_resync, &resync_options, KMDCADM_NEEDS_KEYS | KMDCADM_NEEDS_SCHEMA, 0,
      "resync SERIAL [--up N] [--down N]",
      "Move a card's datacenter counters forward to N (up_next with --up, down_next\n"
      "with --down), stepping its stored chain key to match, in one transaction with\n"
      "the row locked.  Never moves a counter back, nor more than 1048576 steps at\n"
      "once; a counter already at N is left as it is.  Needs --master-key (the chain\n"
      "is unwrapped with the key it names and rewrapped under the highest).  Use it\n"
      "when the database is behind a card (restored from a backup, or the card\n"
      "skipped more counters than the window allows); 'kmdc card' shows the card's\n"
      "counters.  Writes an audit row per chain moved.\n"
      "  --up N    set up_next to N (0 .. 9223372036854775807)\n"
      "  --down N  set down_next to N\n" },
    { "rekey", cmd_rekey, &rekey_options, KMDCADM_NEEDS_KEYS | KMDCADM_NEEDS_SCHEMA, 0,
      "rekey [--check]",
      "Rewrap every card's up_chain, down_chain and auth_key under the highest\n"
      "--master-key, 100 cards per transaction (safe while the service runs; give\n"
      "httpd the new key with KmdcMasterKey first).  Every key a value names must be\n"
      "given.  Access codes are not rewrapped: a card not yet activated keeps the key\n"
      "its code was made with until it is activated or the code expires.  Prints what\n"
      "was rewrapped and which ids are still needed.\n"
      "  --check  change nothing: check that every value unwraps under the given keys\n"
      "           and exit 0 only when no master key but the highest is needed, else 1\n"
      "           (listing the ids in use).  Destroy an old master key file only after\n"
      "           'kmdcadm rekey --check' given only the new key exits 0.\n" },
    { "purge", cmd_purge, &purge_options, KMDCADM_NEEDS_SCHEMA, 0,
      "purge [--dry-run] [--receipt-age D] [--tombstone-age D] [--upload-age D] "
      "[--nonce-age D]",
      "Remove what the datacenter no longer needs, in short transactions that skip\n"
      "rows the service holds: tombstone queued deliveries past their expiry; delete\n"
      "the payload of messages with no queued delivery, uploads no message references\n"
      "older than --upload-age (a crashed intake), receipts older than --receipt-age,\n"
      "request nonces older than --nonce-age, delivered or expired deliveries older\n"
      "than --tombstone-age, then messages left with no delivery and no receipt.\n"
      "Prints the count per kind; writes an audit row.  D is seconds or a number with\n"
      "s, m, h or d.\n"
      "  --dry-run           print the counts only, change nothing\n"
      "  --receipt-age D     default 2d (KmdcEnvelopeMaxAge 24h + 1 day), at least 1d\n"
      "  --tombstone-age D   default 30d, at least 1d\n"
      "  --upload-age D      default 1h, at least 10m: longer than the longest upload\n"
      "  --nonce-age D       default 600s, at least 600s: twice KmdcAuthSkew\n" },
    { "audit", cmd_audit, &audit_options, KMDCADM_NEEDS_SCHEMA, 0,
      "audit [--serial S] [--since TIME] [--limit N] [--json]",
      "Print the audit log, newest first: time (UTC), serial, event, detail.\n"
      "  --serial S    only rows of card S\n"
      "  --since TIME  only rows since TIME: a date/time PostgreSQL reads (2024-05-01,\n"
      "                '2024-05-01 12:00+00') or a duration back from now (90m, 2d)\n"
      "  --limit N     at most N rows (default 100; 0 for all)\n"
      "  --json        one JSON array instead of columns\n" },
};

#define NCOMMANDS (sizeof commands / sizeof commands[0])

static const kmdcadm_command *
find_command(const char *name)
{
    size_t i;

    for (i = 0; i < NCOMMANDS; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

/* --- help ---------------------------------------------------------------------------- */

static const char global_help[] =
    "Global options (accepted before or after the command):\n"
    "  --db CONNINFO        libpq connection string or URI; without it libpq's\n"
    "                       environment (PGHOST, PGPORT, PGDATABASE, PGUSER, ...)\n"
    "  --master-key ID:FILE master key number ID (1 .. 2147483647) in FILE (64 hex\n"
    "                       digits, mode 0600); repeatable, the highest ID wraps\n"
    "                       (issue, resync, rekey)\n"
    "  --sqldir DIR         migrations folder (migrate only)\n"
    "  -h, --help           this text; 'kmdcadm COMMAND --help' for a command\n"
    "  --version            the version\n";

static void
print_command_help(const kmdcadm_command *c)
{
    printf("Usage: kmdcadm [GLOBAL OPTIONS] %s\n\n%s\n%s", c->synopsis, c->help,
           global_help);
}

static void
print_main_help(void)
{
    size_t i;

    printf("Usage: kmdcadm [GLOBAL OPTIONS] COMMAND [OPTIONS]\n\n"
           "The mod_kmdc datacenter's administration tool.\n\nCommands:\n");
    for (i = 0; i < NCOMMANDS; i++)
        printf("  %s\n", commands[i].synopsis);
    printf("  help [COMMAND]\n");
    printf("\n%s\nExit status: 0 done, 1 the operation failed, 2 usage error.\n",
           global_help);
}

/* --- options ----------------------------------------------------------------------- */

/*
 * Handle an option every command accepts.  Returns 1 when handled, 0 when opt
 * is not global, -1 after a usage error (already printed).
 */
static int
global_option(kmdcadm_ctx *ctx, const char *cmd, int opt, const char *arg)
{
    const char *colon;
    char *end;
    unsigned long id;
    size_t i;

    switch (opt) {
    case OPT_DB:
        ctx->conninfo = arg;
        return 1;
    case OPT_SQLDIR:
        ctx->sqldir = arg;
        return 1;
    case OPT_MASTER_KEY:
        colon = strchr(arg, ':');
        if (colon == NULL || colon == arg || colon[1] == '\0') {
            usage_error(cmd, "--master-key takes ID:FILE, e.g. --master-key 1:/etc/kmdc/master-1.key");
            return -1;
        }
        errno = 0;
        id = strtoul(arg, &end, 10);
        if (end != colon || errno != 0 || id < 1 || id > KMDC_KEYRING_ID_MAX
            || !isdigit((unsigned char)arg[0])) {
            usage_error(cmd, "--master-key: the ID is a number in 1 .. 2147483647");
            return -1;
        }
        for (i = 0; i < ctx->nkeys; i++)
            if (ctx->keys[i].id == (uint32_t)id) {
                usage_error(cmd, "--master-key: ID %lu is given twice", id);
                return -1;
            }
        if (ctx->nkeys == MAX_MASTER_KEYS) {
            usage_error(cmd, "--master-key: at most %d keys", MAX_MASTER_KEYS);
            return -1;
        }
        ctx->keys[ctx->nkeys].id = (uint32_t)id;
        ctx->keys[ctx->nkeys].path = colon + 1;
        ctx->nkeys++;
        return 1;
    default:
        return 0;
    }
}

/*
 * Parse a command's options: its own table plus the global options.  Returns
 * -1 on success with *first_arg the index of the first operand, EXIT_OK when
 * --help or --version was printed, EXIT_USAGE after a usage error.
 */
static int
parse_options(kmdcadm_ctx *ctx, const kmdcadm_command *c, int argc, char **argv,
              void *opts, int *first_arg)
{
    static const struct option glob[] = { GLOBAL_OPTIONS };
    const kmdcadm_options *own = c->opts;
    struct option table[MAX_OPTIONS];
    size_t n = 0, i;
    int opt, r;

    for (i = 0; own != NULL && i < own->n && n + 1 < MAX_OPTIONS; i++)
        table[n++] = own->table[i];
    for (i = 0; i < sizeof glob / sizeof glob[0] && n + 1 < MAX_OPTIONS; i++)
        table[n++] = glob[i];
    memset(&table[n], 0, sizeof table[n]);

    optind = 0;   /* glibc: full re-initialisation */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", table, NULL)) != -1) {
        if (opt == 'h' || opt == OPT_HELP) {
            print_command_help(c);
            return EXIT_OK;
        }
        if (opt == OPT_VERSION) {
            printf("kmdcadm %s\n", PACKAGE_VERSION);
            return EXIT_OK;
        }
        if (opt == '?')
            return usage_error(c->name, "unknown option '%s'", argv[optind - 1]);
        if (opt == ':')
            return usage_error(c->name, "option '%s' needs a value", argv[optind - 1]);
        r = global_option(ctx, c->name, opt, optarg);
        if (r < 0)
            return EXIT_USAGE;
        if (r > 0)
            continue;
        if (own == NULL || own->option == NULL || own->option(ctx, opts, opt, optarg) != 0)
            return EXIT_USAGE;
    }
    *first_arg = optind;
    return -1;
}

/* --- resources -------------------------------------------------------------------- */

/* Load every --master-key file into ctx->ring (so a bad one is reported even
 * if unused) and set ctx->newest to the one with the highest id. */
static int
load_master_keys(kmdcadm_ctx *ctx)
{
    const char *cmd = ctx->cmd->name;
    size_t failed = 0;
    kmdc_err e;

    kmdc_err_clear(&e);
    if (ctx->nkeys == 0)
        return usage_error(cmd, "%s needs --master-key ID:FILE", cmd);
    if (kmdc_keyring_load(&ctx->ring, ctx->keys, ctx->nkeys, &failed, &e) != KMDC_OK)
        return fail("master key %" PRIu32 ": %s",
                    ctx->keys[failed < ctx->nkeys ? failed : 0].id, e.msg);
    ctx->newest = kmdc_keyring_newest(&ctx->ring);
    return EXIT_OK;
}

/* Open the database and, with check_schema, check its schema version. */
static int
open_db(kmdcadm_ctx *ctx, int check_schema)
{
    kmdc_err e;

    kmdc_err_clear(&e);
    if (kmdcadm_db_open(&ctx->db, ctx->conninfo, &e) != KMDC_OK)
        return fail_err(&e);
    if (check_schema && kmdcadm_db_check_schema(ctx->db, &e) != KMDC_OK)
        return fail_err(&e);
    return EXIT_OK;
}

/* --- dispatch ------------------------------------------------------------------------- */

/* Run command c with its argv (argv[0] is its name): the steps of kmdcadm.h. */
static int
dispatch(kmdcadm_ctx *ctx, const kmdcadm_command *c, int argc, char **argv)
{
    size_t size = c->opts != NULL && c->opts->size > 0 ? c->opts->size : 1;
    void *opts;
    int rc, first = argc;

    ctx->cmd = c;
    opts = calloc(1, size);
    if (opts == NULL) {
        rc = fail("out of memory");
        goto out;
    }
    if (c->opts != NULL && c->opts->init != NULL)
        c->opts->init(opts);
    rc = parse_options(ctx, c, argc, argv, opts, &first);
    if (rc >= 0)
        goto out;
    if (c->opts != NULL && c->opts->check != NULL)
        rc = c->opts->check(ctx, opts, argc - first, argv + first);
    else
        rc = no_operands(ctx, argc - first, argv + first);
    if (rc != EXIT_OK)
        goto out;
    if ((c->needs & KMDCADM_NEEDS_KEYS) && (rc = load_master_keys(ctx)) != EXIT_OK)
        goto out;
    if ((c->needs & KMDCADM_NEEDS_DB)
        && (rc = open_db(ctx, (c->needs & KMDCADM_NEEDS_SCHEMA) == KMDCADM_NEEDS_SCHEMA))
           != EXIT_OK)
        goto out;
    rc = c->run(ctx, opts);
out:
    kmdcadm_db_close(ctx->db);
    ctx->db = NULL;
    kmdc_keyring_free(&ctx->ring);
    ctx->newest = NULL;
    if (opts != NULL)
        kmdc_freezero(opts, size);
    return finish_output(rc);
}

int
main(int argc, char **argv)
{
    static const struct option glob[] = {
        GLOBAL_OPTIONS,
        { NULL, 0, NULL, 0 }
    };
    kmdcadm_ctx ctx;
    const kmdcadm_command *c;
    int opt, rc;

    memset(&ctx, 0, sizeof ctx);
    opterr = 0;
    /* "+": stop at the command name; the command parses the rest. */
    while ((opt = getopt_long(argc, argv, "+:h", glob, NULL)) != -1) {
        if (opt == 'h' || opt == OPT_HELP) {
            print_main_help();
            return finish_output(EXIT_OK);
        }
        if (opt == OPT_VERSION) {
            printf("kmdcadm %s\n", PACKAGE_VERSION);
            return finish_output(EXIT_OK);
        }
        if (opt == '?')
            return usage_error(NULL, "unknown option '%s'", argv[optind - 1]);
        if (opt == ':')
            return usage_error(NULL, "option '%s' needs a value", argv[optind - 1]);
        if (global_option(&ctx, NULL, opt, optarg) < 0)
            return EXIT_USAGE;
    }
    if (optind >= argc)
        return usage_error(NULL, "no command given");
    if (strcmp(argv[optind], "help") == 0) {
        if (optind + 1 < argc && (c = find_command(argv[optind + 1])) != NULL)
            print_command_help(c);
        else
            print_main_help();
        return finish_output(EXIT_OK);
    }
    c = find_command(argv[optind]);
    if (c == NULL)
        return usage_error(NULL, "unknown command '%s'", argv[optind]);
    rc = dispatch(&ctx, c, argc - optind, argv + optind);
    return rc;
}
