/*
 * kmdcadm_cards.c - kmdcadm's commands on cards: issue, list, show, and
 * suspend / resume / revoke (kmdcadm(8)).  The dispatcher in kmdcadm.c has
 * parsed the options, loaded the master keys (issue) and opened the database
 * before a cmd_* here runs, and releases them after it.
 *
 * issue stores the new card's row in a transaction, writes the card file to a
 * temp file beside its place, commits, then moves the file in place: a card
 * file never exists for a row that was not stored, and a lost COMMIT answer
 * keeps the file and says what to do.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kmdc_card.h"
#include "kmdc_crypto.h"
#include "kmdc_file.h"
#include "kmdc_keyring.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"
#include "kmdcadm.h"

#define ACCESS_DAYS 7            /* the access code is valid 7 days (PROTOCOL.md 7) */
#define SERIAL_ATTEMPTS 8        /* draws before giving up on a free serial */
#define PASSPHRASE_MAX 1024

/* An address option, lower-cased into out (65 bytes): 0, or a usage error. */
static int
address_arg(const char *cmd, const char *arg, char out[65])
{
    size_t len = strlen(arg), i;

    if (len == 0 || len > 64)
        return usage_error(cmd, "an address is 1 to 64 characters");
    for (i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)arg[i]);
    out[len] = '\0';
    return 0;
}

/* --- issue -------------------------------------------------------------------- */

typedef struct issue_opts {
    char address[65];
    int have_address;
    const char *url;
    const char *out;
    const char *passfile;
    int force;
    char pass[PASSPHRASE_MAX];   /* wiped with the struct by the dispatcher */
} issue_opts;

static int
issue_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    issue_opts *o = opts;

    switch (opt) {
    case OPT_ADDRESS:
        if (address_arg(ctx->cmd->name, arg, o->address) != 0)
            return EXIT_USAGE;
        if (!kmdc_address_valid(o->address, strlen(o->address)))
            return usage_error(ctx->cmd->name, "an address starts with a letter or digit and "
                               "holds only a-z, 0-9, '.', '_' and '-'");
        o->have_address = 1;
        return 0;
    case OPT_URL:
        o->url = arg;
        return 0;
    case OPT_OUT:
        o->out = arg;
        return 0;
    case OPT_PASSFILE:
        o->passfile = arg;
        return 0;
    case OPT_FORCE:
        o->force = 1;
        return 0;
    default:
        return 1;
    }
}

/* Write the card image to a new temp file beside out (0600, fsynced and
 * closed; lib's kmdc_file makes and names it), kept until place_card. */
static int
write_temp_card(const char *out, const uint8_t *img, size_t len, char **tmp_out)
{
    char *dir = NULL, *stem = NULL, *tmp = NULL;
    const char *base = NULL;
    kmdc_err e;
    int fd = -1, rc = EXIT_OK;

    kmdc_err_clear(&e);
    *tmp_out = NULL;
    if (kmdc_path_split(out, &dir, &base, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    if ((stem = malloc(strlen(base) + sizeof ".issue-pending")) == NULL) {
        rc = fail("out of memory");
        goto out;
    }
    strcpy(stem, base);
    strcat(stem, ".issue-pending");
    if (kmdc_file_open_temp(dir, stem, 0600, &fd, &tmp, &e) != KMDC_OK
        || kmdc_write_all(fd, img, len, tmp, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        rc = fail("cannot write the card file: %s", strerror(errno));
        goto out;
    }
    fd = -1;
    *tmp_out = tmp;
    tmp = NULL;
out:
    kmdc_file_abort_temp(fd, tmp);   /* closes fd, removes tmp: both only on failure */
    free(stem);
    free(dir);
    return rc;
}

/* Move the committed temp card file to its place, and sync the folder.
 * Without force an existing file is never replaced. */
static kmdc_status
place_card(const char *tmp, const char *out, int force, kmdc_err *e)
{
    kmdc_status st;

    st = kmdc_file_move(tmp, out, force ? 0 : KMDC_FILE_NOREPLACE, e);
    if (st == KMDC_OK)
        (void)kmdc_fsync_parent(out, NULL);
    return st;
}

static void
print_access_code(const char *code)
{
    /* the ten symbols, then the check symbol that lets kmdc refuse a typo */
    printf("access code: %.5s-%.5s-%c\n", code, code + 5, kmdc_access_code_check(code));
    printf("The access code is shown only this once: give it to the card holder by "
           "another channel than the card file. It expires in %d days.\n", ACCESS_DAYS);
}

/*
 * The serial of a new card: random, or in a build with test hooks (configure
 * --enable-test-hooks) the one in KMDC_TEST_SERIAL (16 lowercase hex digits),
 * so that a test can issue cards whose serials it chooses (t/048_slots.t:
 * two serials that fold to the same 32 bits).  *fixed is set when the serial
 * was chosen: a taken serial is then an error, not a reason to draw again.
 */
static kmdc_status
draw_serial(uint64_t *serial, int *fixed, kmdc_err *e)
{
#ifdef KMDC_TEST_HOOKS
    const char *s = getenv("KMDC_TEST_SERIAL");

    if (s != NULL && s[0] != '\0') {
        *fixed = 1;
        if (kmdc_serial_parse(serial, s, strlen(s), NULL) != KMDC_OK)
            return kmdc_err_set(e, KMDC_ERR_FORMAT, "KMDC_TEST_SERIAL: '%s' is not a serial "
                                "(16 lowercase hex digits, 1 .. 7fffffffffffffff)", s);
        return KMDC_OK;
    }
#endif
    *fixed = 0;
    return kmdc_random_u63(serial, e);
}

static int
issue_check(const kmdcadm_ctx *ctx, void *opts, int argc, char **argv)
{
    issue_opts *o = opts;
    const char *name = ctx->cmd->name;
    struct stat sb;

    if (no_operands(ctx, argc, argv) != EXIT_OK)
        return EXIT_USAGE;
    if (!o->have_address || o->url == NULL || o->out == NULL)
        return usage_error(name, "issue needs --address A, --url U and --out FILE");
    if (strncmp(o->url, "https://", 8) != 0 && strncmp(o->url, "http://", 7) != 0)
        return usage_error(name, "--url is the datacenter's http:// or https:// URL");
    if (!o->force && lstat(o->out, &sb) == 0)
        return fail("%s exists: pass --force to replace it", o->out);
    return EXIT_OK;
}

static const struct option issue_table[] = {
    { "address", required_argument, NULL, OPT_ADDRESS },
    { "url", required_argument, NULL, OPT_URL },
    { "out", required_argument, NULL, OPT_OUT },
    { "passphrase-file", required_argument, NULL, OPT_PASSFILE },
    { "force", no_argument, NULL, OPT_FORCE },
};
const kmdcadm_options issue_options = {
    issue_table, sizeof issue_table / sizeof issue_table[0], sizeof(issue_opts), NULL,
    issue_opt, issue_check
};

int
cmd_issue(kmdcadm_ctx *ctx, void *opts)
{
    issue_opts *o = opts;
    const kmdc_master_key *mk = ctx->newest;
    kmdcadm_db *db = ctx->db;
    kmdcadm_new_card row;
    kmdcadm_conflict conflict = KMDCADM_CONFLICT_NONE;
    kmdc_card *card = NULL;
    uint8_t uck[KMDC_KEY_LEN], dck[KMDC_KEY_LEN], ak[KMDC_KEY_LEN];
    char code[KMDC_ACCESS_CODE_LEN + 1];
    char serialhex[17];
    uint8_t *img = NULL;
    size_t imglen = 0;
    char *tmp = NULL;
    uint64_t serial = 0;
    kmdc_err e;
    int rc = EXIT_OK, attempt, intrans = 0, committed = 0, fixed = 0;

    memset(&row, 0, sizeof row);
    memset(code, 0, sizeof code);
    kmdc_err_clear(&e);
    if (o->passfile != NULL) {
        if (kmdc_passphrase_file_read(o->passfile, o->pass, sizeof o->pass, &e) != KMDC_OK) {
            rc = fail("%s", e.msg);
            goto out;
        }
    }

    /* The keys do not depend on the serial: draw them once. */
    if (kmdc_random(uck, sizeof uck, &e) != KMDC_OK
        || kmdc_random(dck, sizeof dck, &e) != KMDC_OK
        || kmdc_random(ak, sizeof ak, &e) != KMDC_OK
        || kmdc_access_code_new(code, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    row.address = o->address;
    row.key_id = mk->id;
    row.access_days = ACCESS_DAYS;
    /* 1. store the row (retrying on a serial collision), uncommitted */
    for (attempt = 0;; attempt++) {
        if (attempt == SERIAL_ATTEMPTS || (fixed && attempt > 0)) {
            if (fixed)
                rc = fail("KMDC_TEST_SERIAL: serial %016" PRIx64 " is taken", serial);
            else
                rc = fail("could not find a free serial in %d draws", SERIAL_ATTEMPTS);
            goto out;
        }
        if (draw_serial(&serial, &fixed, &e) != KMDC_OK
            || kmdc_keyring_wrap(&ctx->ring, serial, KMDC_FIELD_UP_CHAIN, 0, uck,
                                 row.up_chain, &e) != KMDC_OK
            || kmdc_keyring_wrap(&ctx->ring, serial, KMDC_FIELD_DOWN_CHAIN, 0, dck,
                                 row.down_chain, &e) != KMDC_OK
            || kmdc_keyring_wrap(&ctx->ring, serial, KMDC_FIELD_AUTH_KEY, 0, ak,
                                 row.auth_key, &e) != KMDC_OK
            || kmdc_access_code_mac(row.access_mac, mk->key, serial, code, &e) != KMDC_OK) {
            rc = fail_err(&e);
            goto out;
        }
        row.serial = serial;
        if (kmdcadm_db_begin(db, &e) != KMDC_OK) {
            rc = fail_err(&e);
            goto out;
        }
        intrans = 1;
        if (kmdcadm_db_card_insert(db, &row, &conflict, &e) == KMDC_OK)
            break;
        kmdcadm_db_rollback(db);
        intrans = 0;
        if (conflict != KMDCADM_CONFLICT_SERIAL) {
            rc = fail_err(&e);
            goto out;
        }
    }
    kmdc_serial_format(serialhex, serial);

    /* 2. the card file, in a temp file beside its place */
    if (kmdc_card_new(&card, serial, o->address, o->url, uck, dck, ak, &e) != KMDC_OK
        || kmdc_card_serialize(card, o->pass[0] ? o->pass : NULL, &img, &imglen, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    rc = write_temp_card(o->out, img, imglen, &tmp);
    if (rc != EXIT_OK)
        goto out;

    /* 3. commit: from here the database has the card */
    if (kmdcadm_db_commit(db, &e) != KMDC_OK) {
        intrans = 0;
        if (e.code == KMDC_ERR_IO) {
            /* The answer to COMMIT was lost: the outcome is unknown. */
            rc = fail("%s; card %s may or may not be stored: its file is kept at %s. "
                      "If 'kmdcadm show %s' finds it, move that file to %s and give "
                      "the holder the access code below; otherwise delete the file",
                      e.msg, serialhex, tmp, serialhex, o->out);
            print_access_code(code);
            free(tmp);
            tmp = NULL;
        } else {
            rc = fail_err(&e);
        }
        goto out;
    }
    intrans = 0;
    committed = 1;

    /* 4. put the card file in place */
    if (place_card(tmp, o->out, o->force, &e) != KMDC_OK) {
        rc = fail("card %s is stored, but its file could not be moved to %s (%s): "
                  "it is at %s; move it there yourself",
                  serialhex, o->out, e.msg, tmp);
        print_access_code(code);
        free(tmp);
        tmp = NULL;
        goto out;
    }
    free(tmp);
    tmp = NULL;
    printf("serial: %s\n", serialhex);
    printf("card file: %s\n", o->out);
    print_access_code(code);
out:
    if (intrans)
        kmdcadm_db_rollback(db);
    if (tmp != NULL && !committed)
        (void)unlink(tmp);
    free(tmp);
    kmdc_card_free(card);
    kmdc_freezero(img, imglen);
    kmdc_wipe(uck, sizeof uck);
    kmdc_wipe(dck, sizeof dck);
    kmdc_wipe(ak, sizeof ak);
    kmdc_wipe(code, sizeof code);
    kmdc_wipe(&row, sizeof row);
    return rc;
}

/* --- list / show ---------------------------------------------------------------- */

typedef struct list_opts {
    kmdcadm_filter filter;
    char address[65];
    int json;
} list_opts;

static int
list_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    list_opts *o = opts;

    switch (opt) {
    case OPT_STATUS:
        if (strcmp(arg, "issued") != 0 && strcmp(arg, "active") != 0
            && strcmp(arg, "suspended") != 0 && strcmp(arg, "revoked") != 0)
            return usage_error(ctx->cmd->name, "--status is issued, active, suspended or revoked");
        o->filter.status = arg;
        return 0;
    case OPT_ADDRESS:
        if (address_arg(ctx->cmd->name, arg, o->address) != 0)
            return EXIT_USAGE;
        o->filter.address = o->address;
        return 0;
    case OPT_JSON:
        o->json = 1;
        return 0;
    default:
        return 1;
    }
}

static const struct option list_table[] = {
    { "status", required_argument, NULL, OPT_STATUS },
    { "address", required_argument, NULL, OPT_ADDRESS },
    { "json", no_argument, NULL, OPT_JSON },
};
const kmdcadm_options list_options = {
    list_table, sizeof list_table / sizeof list_table[0], sizeof(list_opts), NULL,
    list_opt, NULL
};

int
cmd_list(kmdcadm_ctx *ctx, void *opts)
{
    list_opts *o = opts;
    kmdc_err e;

    kmdc_err_clear(&e);
    if (kmdcadm_db_card_list(ctx->db, &o->filter, o->json, stdout, &e) != KMDC_OK)
        return fail_err(&e);
    return EXIT_OK;
}

/* show's and the transitions' options: SERIAL, --json or --reason. */
typedef struct serial_opts {
    uint64_t serial;
    int json;
    const char *reason;
} serial_opts;

static int
serial_check(const kmdcadm_ctx *ctx, void *opts, int argc, char **argv)
{
    return one_serial(ctx, argc, argv, &((serial_opts *)opts)->serial);
}

static int
show_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    (void)ctx;
    (void)arg;
    if (opt == OPT_JSON) {
        ((serial_opts *)opts)->json = 1;
        return 0;
    }
    return 1;
}

static const struct option show_table[] = { { "json", no_argument, NULL, OPT_JSON } };
const kmdcadm_options show_options = {
    show_table, 1, sizeof(serial_opts), NULL, show_opt, serial_check
};

int
cmd_show(kmdcadm_ctx *ctx, void *opts)
{
    serial_opts *o = opts;
    kmdc_err e;

    kmdc_err_clear(&e);
    if (kmdcadm_db_card_show(ctx->db, o->serial, o->json, stdout, &e) != KMDC_OK)
        return fail_err(&e);
    return EXIT_OK;
}

/* --- suspend / resume / revoke ------------------------------------------------------ */

static int
reason_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    size_t i;

    if (opt != OPT_REASON)
        return 1;
    if (strlen(arg) > 500)
        return usage_error(ctx->cmd->name, "--reason is at most 500 bytes");
    for (i = 0; arg[i] != '\0'; i++)
        if ((unsigned char)arg[i] < 0x20 || arg[i] == 0x7f)
            return usage_error(ctx->cmd->name, "--reason is one line of text");
    ((serial_opts *)opts)->reason = arg;
    return 0;
}

static const struct option reason_table[] = {
    { "reason", required_argument, NULL, OPT_REASON }
};
const kmdcadm_options reason_options = {
    reason_table, 1, sizeof(serial_opts), NULL, reason_opt, serial_check
};

/* suspend, resume and revoke: the command's action (kmdcadm.c's table). */
int
cmd_transition(kmdcadm_ctx *ctx, void *opts)
{
    serial_opts *o = opts;
    char from[16], to[16], hex[17];
    kmdc_err e;

    kmdc_err_clear(&e);
    if (kmdcadm_db_card_transition(ctx->db, o->serial, (kmdcadm_action)ctx->cmd->action,
                                   o->reason, from, to, &e) != KMDC_OK)
        return fail_err(&e);
    kmdc_serial_format(hex, o->serial);
    printf("card %s: %s -> %s\n", hex, from, to);
    return EXIT_OK;
}
