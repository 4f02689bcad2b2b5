/*
 * kmdc_cli.h - what the parts of the kmdc client share: the exit codes, the
 * global options, messages, option parsing, card loading and locking, file
 * helpers and the fault-injection points.  One command per file:
 *   kmdc.c          main, command table, help, option parsing
 *   kmdc_cli.c      what this header declares: messages, files, card helpers
 *   kmdc_cardcmd.c  card, sign
 *   kmdc_seal.c     seal and the sealing core (input, options, counter)
 *   kmdc_send.c     send (outbox protocol), outbox
 *   kmdc_recv.c     the receive core (docs/PROTOCOL.md section 4) and placing files
 *   kmdc_fetch.c    fetch, watch
 *   kmdc_open.c     open
 *   kmdc_account.c  activate, status, card --resync
 *   kmdc_pass.c     the passphrase prompt, card passphrase
 *   kmdc_http.c     libcurl: TLS, signing, errors, progress bar
 *   kmdc_testcmd.c  test-only commands (configure --enable-test-hooks)
 */
#ifndef KMDC_CLI_H
#define KMDC_CLI_H

#include <getopt.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "kmdc_card.h"
#include "kmdc_envelope.h"
#include "kmdc_err.h"
#include "kmdc_file.h"

/* Exit codes (kmdc(1), EXIT STATUS).  Scripts rely on them: never renumber. */
#define KMDC_EXIT_OK 0
#define KMDC_EXIT_FAIL 1       /* failed (generic) */
#define KMDC_EXIT_USAGE 2      /* bad usage */
#define KMDC_EXIT_LOCKED 3     /* card's send/recv lock held by another kmdc */
#define KMDC_EXIT_REFUSED 4    /* datacenter refused (4xx other than 401/429) */
#define KMDC_EXIT_AUTH 5       /* authentication refused (401) */
#define KMDC_EXIT_NETWORK 6    /* network, 5xx or 429: retry later, nothing lost */
#define KMDC_EXIT_CARD 7       /* card file problem: corrupt, mode, passphrase */
#define KMDC_EXIT_CONFIG 8     /* configuration: wrong URL, not a datacenter's
                                * answer, TLS certificate or TLS mismatch */

#define KMDC_PASS_MAX 1024     /* passphrase buffer, bytes incl. NUL */

/* The global options and what every command shares. */
typedef struct kmdc_cli {
    const char *card_path;     /* --card, $KMDC_CARD, ~/.kmdc/card */
    char *card_path_alloc;     /* owns card_path when built from $HOME */
    const char *passfile;      /* --passphrase-file, $KMDC_PASSPHRASE_FILE */
    char pass[KMDC_PASS_MAX];  /* the passphrase once read (wiped at exit) */
    int pass_read;             /* pass holds the file's passphrase */
    const char *cacert;        /* --cacert */
    int insecure;              /* --insecure */
    int wait;                  /* --wait: wait for the send/recv lock */
    int quiet;                 /* -q: no information lines, no progress line */
    int progress;              /* -1 when stderr is a tty, 1 --progress, 0 --no-progress */
    const char *url;           /* --url: overrides the card's datacenter URL */
    const char *cmd;           /* the running command, for messages */
    int json;                  /* --json: one JSON document on standard output */
} kmdc_cli;

/* A command: its name, runner, one-line synopsis and help text. */
typedef struct kmdc_cmd {
    const char *name;
    int (*run)(kmdc_cli *c, int argc, char **argv);
    const char *synopsis;
    const char *help;
    int hidden;                /* test-only: not listed by --help */
} kmdc_cmd;

/* ---- messages (stderr, prefixed "kmdc: ") ---------------------------------- */

/* Print a message and return code. */
int kmdc_cli_fail(int code, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

/* Print e's message (or its status name) and return code. */
int kmdc_cli_fail_err(int code, const kmdc_err *e);

/* A usage error for the running command: message, a hint, KMDC_EXIT_USAGE. */
int kmdc_cli_usage(const kmdc_cli *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* Print doc (NULL: failed to build) on standard output, indented, with a
 * final newline, and flush.  Returns an exit code (the failure printed). */
struct json_t;
int kmdc_cli_print_json(struct json_t *doc);

/* An information line on stderr, suppressed by -q. */
void kmdc_cli_info(const kmdc_cli *c, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

/* The exit code for a library failure: KMDC_ERR_LOCKED -> 3, a card file
 * problem (corrupt, permissions, passphrase, format) -> 7, else 1. */
int kmdc_cli_exit_for(kmdc_status st);

/* ---- option parsing ---------------------------------------------------------- */

/* A command's own option handler: 0 when handled, else an exit code (the
 * handler printed the usage error). */
typedef int (*kmdc_cli_opt_fn)(kmdc_cli *c, void *ctx, int opt, const char *arg);

/* Long-only codes of the global options; commands number theirs from
 * KMDC_OPT_OWN upwards. */
enum {
    KMDC_OPT_CARD = 256, KMDC_OPT_PASSFILE, KMDC_OPT_CACERT, KMDC_OPT_INSECURE,
    KMDC_OPT_WAIT, KMDC_OPT_URL, KMDC_OPT_HELP, KMDC_OPT_JSON, KMDC_OPT_PROGRESS,
    KMDC_OPT_NO_PROGRESS, KMDC_OPT_VERSION,
    KMDC_OPT_OWN = 300
};

/*
 * Parse argv (argv[0] is the command name) with the command's own long
 * options own[0..nown) and short options `shortopts` (may be NULL) plus the
 * global ones, which may come before or after the command.  Returns -1 with
 * *first the index of the first operand, or an exit code: KMDC_EXIT_OK after
 * printing --help, KMDC_EXIT_USAGE after a usage error.
 */
int kmdc_cli_parse(kmdc_cli *c, const kmdc_cmd *cmd, int argc, char **argv,
                   const struct option *own, size_t nown, const char *shortopts,
                   kmdc_cli_opt_fn fn, void *ctx, int *first);

/* The command table entry of name (NULL when unknown). */
const kmdc_cmd *kmdc_cli_find(const char *name);

/* ---- the card ------------------------------------------------------------------- */

/* The passphrase for the card (NULL when none was given); reads the
 * passphrase file once.  Returns an exit code (7 when unreadable). */
int kmdc_cli_passphrase(kmdc_cli *c, const char **pass);

/* Load the card file (no lock); a protected card without --passphrase-file
 * asks for its passphrase on the terminal.  Returns an exit code; the
 * message is printed. */
int kmdc_cli_load(kmdc_cli *c, kmdc_card **card);

/* ---- the passphrase on the terminal (kmdc_pass.c) ------------------------------- */

/*
 * Print prompt on /dev/tty and read one line from it with echo off into
 * buf[0..cap) (without the line end).  0 read; -1 no terminal; -2
 * interrupted or unreadable; -3 longer than cap - 2 bytes (buf wiped).
 */
int kmdc_cli_tty_read(const char *prompt, char *buf, size_t cap);

/* kmdc_cli_load for a protected card without a passphrase file: ask on the
 * terminal (3 tries) and keep the passphrase for the run. */
int kmdc_cli_load_prompting(kmdc_cli *c, kmdc_card **card);

/* `kmdc card passphrase`: set or change (new one from newfile, else typed
 * twice) or remove the card file's passphrase. */
int kmdc_cmd_card_passphrase(kmdc_cli *c, int remove, const char *newfile);

/*
 * Take one of the card's locks: KMDC_LOCK_CARD always waits (it is held only
 * for a read-modify-write); SEND and RECV wait only with --wait, otherwise a
 * held lock is KMDC_EXIT_LOCKED with a message.  Returns an exit code.
 */
int kmdc_cli_lock(kmdc_cli *c, kmdc_card_lockwhich which, kmdc_card_lockh **h);

/*
 * A read-modify-write of the card file: lock CARD, load, fn(card), save,
 * unlock.  fn may be NULL (only reload).  When out is non-NULL it receives
 * the card as saved (the caller frees it).  Returns an exit code; fn's
 * failure is reported with its own message.
 */
typedef kmdc_status (*kmdc_cli_update_fn)(void *arg, kmdc_card *card, kmdc_err *err);
int kmdc_cli_update(kmdc_cli *c, kmdc_cli_update_fn fn, void *arg, kmdc_card **out);

/* KMDC_EXIT_OK for an activated card, else the failure (printed). */
int kmdc_cli_need_active(const kmdc_card *card);

/* The datacenter base URL: --url, else the card's (without a final '/'). */
const char *kmdc_cli_base_url(const kmdc_cli *c, const kmdc_card *card);

/* ---- files and small helpers ------------------------------------------------ */

/* read(2) that tries again when a signal interrupted it. */
ssize_t kmdc_cli_read(int fd, void *buf, size_t len);

/*
 * Open path for a command's output file (-o OUT).  A device or pipe that
 * exists (/dev/null, a FIFO) is written to directly (*a NULL): renaming a
 * file over it would replace it.  Anything else gets a temporary file (0600)
 * beside it, *a, which kmdc_atomic_commit renames over path (or
 * kmdc_atomic_abort drops); *fd is then the writer's.  Returns an exit code
 * (the failure printed).
 */
int kmdc_cli_open_output(const char *path, int *fd, kmdc_atomic **a);

/* The delivery record `kmdc open` writes for down counter seq: datacenter
 * delivery ids are below 2^63, so the top bit marks "opened offline". */
#define KMDC_OPENED_ID(seq) ((UINT64_C(1) << 63) | (uint64_t)(seq))

/* The current time in Unix milliseconds. */
uint64_t kmdc_cli_now_ms(void);

/* Parse an address as a person types it: lower-cased, then checked.  out has
 * room for 65 bytes.  0 or -1 (invalid). */
int kmdc_cli_address(const char *in, size_t len, char *out);

/* Parse an id or serial written as 16 lowercase hex digits (1 .. 2^63-1). */
int kmdc_cli_parse_id(const char *s, uint64_t *id);

/* Remove control characters from a string coming from the network, in place,
 * so it cannot drive the terminal. */
void kmdc_cli_sanitize(char *s);

/* ---- sealing (kmdc_seal.c) ------------------------------------------------- */

/*
 * Open a document to seal: path "-" is standard input.  A regular file is
 * used as it is; anything else (a pipe, a terminal) is first spooled into a
 * temporary file of mode 0600 in $TMPDIR (unlinked at once), because SIZE
 * must be known before the first byte is sealed.  *size receives the length
 * (at most 2^40).  Returns an exit code; the message is printed.
 */
int kmdc_cli_open_input(const char *path, int *fd, uint64_t *size);

/*
 * Seal the document read from in_fd (exactly m->size bytes from its current
 * position) into out_fd: header h, message key mk, metadata m.
 */
kmdc_status kmdc_cli_seal_stream(const kmdc_header *h, const uint8_t mk[32],
                                 const kmdc_meta *m, int in_fd, int out_fd,
                                 kmdc_err *err);

/* The options seal and send share (send adds --again and --outbox, seal -o). */
enum {
    KMDC_SEAL_OPT_TO = KMDC_OPT_OWN, KMDC_SEAL_OPT_NAME, KMDC_SEAL_OPT_TYPE, KMDC_SEAL_OPT_OUT,
    KMDC_SEAL_OPT_AGAIN, KMDC_SEAL_OPT_OUTBOX
};

typedef struct kmdc_seal_opts {
    kmdc_meta rcpts;          /* only the recipients are used */
    const char *name;
    const char *type;
    const char *out;
    int again;                /* send: a deliberate second copy */
    int outbox_only;          /* send: only what the outbox holds */
} kmdc_seal_opts;

/* The option handler of seal and send (ctx is a kmdc_seal_opts). */
int kmdc_cli_seal_opt(kmdc_cli *c, void *ctx, int opt, const char *arg);

/*
 * Build the up metadata for one document: recipients, NAME (o->name, else
 * the base name of path unless path is "-"), TYPE, SIZE, SENT; then check it
 * as the encoder will.  Returns an exit code.
 */
int kmdc_cli_build_meta(kmdc_cli *c, const kmdc_seal_opts *o, const char *path, uint64_t size,
                        kmdc_meta *m);

/* A reserved up counter and its message key (wiped by the caller). */
typedef struct kmdc_reserve {
    uint64_t seq;
    uint8_t mk[KMDC_KEY_LEN];
} kmdc_reserve;

/* Reserve the next up counter and save the card; *serial, r->seq, r->mk.
 * Returns an exit code (r->mk wiped on failure). */
int kmdc_cli_reserve(kmdc_cli *c, kmdc_reserve *r, uint64_t *serial);

/* ---- fault injection (configure --enable-test-hooks) -------------------------- */

/*
 * Crash at a named step when KMDC_CRASH_AT names it: the process kills itself
 * with SIGKILL, as a power cut would stop it.  The steps (send and fetch are
 * tested to lose nothing when killed at any of them):
 *   send:after-reserve        counter reserved in memory, card not yet saved
 *   send:after-card-save      card saved past the counter, envelope not sealed
 *   send:after-seal           envelope sealed into the outbox temp file
 *   send:after-outbox-commit  outbox entry committed, not yet uploaded
 *   send:after-upload         the datacenter answered, entry not yet removed
 *   fetch:after-advance       down chain advanced and card saved, document
 *                             not yet written
 *   fetch:after-rename        document in its final place, not yet recorded
 *   fetch:after-record        delivery recorded in the card, not acknowledged
 *   fetch:before-ack          just before the DELETE is sent
 * In builds without KMDC_TEST_HOOKS this is an empty function.
 */
void kmdc_crash_point(const char *step);

/* ---- the commands ----------------------------------------------------------------- */

int kmdc_cmd_seal(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_send(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_outbox(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_fetch(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_watch(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_open(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_activate(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_status(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_card_resync(kmdc_cli *c);
int kmdc_cmd_card(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_sign(kmdc_cli *c, int argc, char **argv);
#ifdef KMDC_TEST_HOOKS
int kmdc_cmd_test_mkcard(kmdc_cli *c, int argc, char **argv);
int kmdc_cmd_test_seal_down(kmdc_cli *c, int argc, char **argv);
#endif

#endif
