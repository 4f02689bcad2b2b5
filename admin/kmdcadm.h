/*
 * kmdcadm.h - what kmdcadm's command files share: the command descriptor the
 * dispatcher in kmdcadm.c runs, the context it hands each command, the option
 * codes and the message helpers.
 *
 * A command is a row of the table in kmdcadm.c: its run function (in the
 * file of its capability) and its kmdcadm_options.  The dispatcher
 * (kmdcadm.c) does, in this order and once for every command:
 *   1. zero the command's options struct (opts->size bytes) and call init;
 *   2. parse the command's own options (opts->option) with the global ones
 *      (--db, --master-key, --sqldir, --help, --version);
 *   3. hand the operands to opts->check (none allowed when it is NULL);
 *   4. NEEDS_KEYS: load every --master-key into ctx->ring (lib's keyring;
 *      ctx->newest: the highest id);
 *   5. NEEDS_DB: connect (ctx->db), NEEDS_SCHEMA: and check the schema version;
 *   6. run;
 *   7. close the database, wipe the master keys and the options struct, and
 *      flush stdout (a failed write is exit status 1).
 * Steps 1-3 print only usage errors (exit 2); run returns EXIT_OK or EXIT_FAIL
 * after printing its message with fail().
 */
#ifndef KMDCADM_H
#define KMDCADM_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"
#include "kmdc_keyring.h"
#include "kmdc_wrap.h"
#include "kmdcadm_db.h"

#ifndef KMDC_SQLDIR
#define KMDC_SQLDIR "/usr/local/share/mod_kmdc/sql"
#endif

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

#define MAX_MASTER_KEYS 16

struct kmdcadm_command;

/* What the dispatcher prepared for a command (steps 2, 4 and 5 above). */
typedef struct kmdcadm_ctx {
    const char *conninfo;                 /* --db, else libpq's environment */
    const char *sqldir;                   /* --sqldir */
    kmdc_master_key_file keys[MAX_MASTER_KEYS];  /* --master-key, in the given order */
    size_t nkeys;
    kmdc_keyring ring;                    /* NEEDS_KEYS: every --master-key, loaded */
    const kmdc_master_key *newest;        /* NEEDS_KEYS: the highest id (it wraps) */
    kmdcadm_db *db;                       /* NEEDS_DB: the open connection */
    const struct kmdcadm_command *cmd;    /* the command running */
} kmdcadm_ctx;

/* kmdcadm_command.needs */
#define KMDCADM_NEEDS_DB 1u          /* connect before run */
#define KMDCADM_NEEDS_SCHEMA 3u      /* ... and check the schema version */
#define KMDCADM_NEEDS_KEYS 4u        /* load the --master-key files first */

/* A command's options and operands (steps 1-3), beside its run function. */
typedef struct kmdcadm_options {
    const struct option *table;           /* the command's own long options */
    size_t n;
    size_t size;                          /* the command's options struct */
    void (*init)(void *opts);             /* defaults into the zeroed struct; may be NULL */
    /* One of the command's own options: 0, or a usage error (printed). */
    int (*option)(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg);
    /* The operands: EXIT_OK, or the exit status after a printed message.
     * NULL: the command takes none. */
    int (*check)(const kmdcadm_ctx *ctx, void *opts, int argc, char **argv);
} kmdcadm_options;

/* One command: the table in kmdcadm.c (git's cmd_struct). */
typedef struct kmdcadm_command {
    const char *name;
    int (*run)(kmdcadm_ctx *ctx, void *opts);
    const kmdcadm_options *opts;          /* NULL: no own options, no operands */
    unsigned needs;                       /* KMDCADM_NEEDS_* */
    int action;                           /* for a run shared by commands (suspend, ...) */
    const char *synopsis;                 /* the usage line after "kmdcadm [GLOBAL OPTIONS] " */
    const char *help;                     /* 'kmdcadm COMMAND --help' */
} kmdcadm_command;

/* The commands' run functions and options, by capability:
 * kmdcadm_cards.c */
int cmd_issue(kmdcadm_ctx *ctx, void *opts);
int cmd_list(kmdcadm_ctx *ctx, void *opts);
int cmd_show(kmdcadm_ctx *ctx, void *opts);
int cmd_transition(kmdcadm_ctx *ctx, void *opts);     /* suspend, resume, revoke */
extern const kmdcadm_options issue_options, list_options, show_options, reason_options;
/* kmdcadm_keys.c */
int cmd_keygen(kmdcadm_ctx *ctx, void *opts);
int cmd_resync(kmdcadm_ctx *ctx, void *opts);
int cmd_rekey(kmdcadm_ctx *ctx, void *opts);
extern const kmdcadm_options keygen_options, resync_options, rekey_options;
/* kmdcadm_maint.c */
int cmd_setup(kmdcadm_ctx *ctx, void *opts);
int cmd_migrate(kmdcadm_ctx *ctx, void *opts);
int cmd_purge(kmdcadm_ctx *ctx, void *opts);
int cmd_audit(kmdcadm_ctx *ctx, void *opts);
extern const kmdcadm_options setup_options, purge_options, audit_options;

/* Long-only option codes. */
enum {
    OPT_DB = 256, OPT_MASTER_KEY, OPT_SQLDIR, OPT_HELP, OPT_ADDRESS, OPT_URL,
    OPT_OUT, OPT_PASSFILE, OPT_FORCE, OPT_STATUS, OPT_JSON, OPT_REASON, OPT_UP,
    OPT_DOWN, OPT_CHECK, OPT_DRY_RUN, OPT_RECEIPT_AGE, OPT_TOMBSTONE_AGE, OPT_UPLOAD_AGE,
    OPT_NONCE_AGE, OPT_SERIAL, OPT_SINCE, OPT_LIMIT, OPT_VERSION, OPT_DATABASE, OPT_OWNER,
    OPT_HTTPD_ROLE, OPT_HTTPD_USER, OPT_ADMIN_USER, OPT_KEY_DIR, OPT_NO_KEY, OPT_PEER_MAP,
    OPT_AS, OPT_PRINT_GRANTS
};

/* "kmdcadm: MESSAGE" on stderr; returns EXIT_FAIL. */
__attribute__((format(printf, 1, 2))) int fail(const char *fmt, ...);
/* A usage error for cmd (NULL: the global level); returns EXIT_USAGE. */
__attribute__((format(printf, 2, 3))) int usage_error(const char *cmd, const char *fmt, ...);
/* fail() with e's message (or its status name). */
int fail_err(const kmdc_err *e);

/* Parse a serial as typed: 1..16 hex digits, either case.  0, or a usage
 * error (printed) for cmd. */
int parse_serial(const char *cmd, const char *s, uint64_t *serial);

/* An empty operand list ("unexpected argument" otherwise). */
int no_operands(const kmdcadm_ctx *ctx, int argc, char **argv);

/* An operand list of exactly one SERIAL ("CMD takes one SERIAL" otherwise). */
int one_serial(const kmdcadm_ctx *ctx, int argc, char **argv, uint64_t *serial);

#endif
