/*
 * kmdcadm_keys.c - kmdcadm's commands on master keys and on the keys wrapped
 * under them: keygen, resync (step a card's stored chain keys forward) and
 * rekey (rewrap every card's keys under the newest master key), with the
 * unwrap and wrap steps they share (kmdcadm(8), docs/ADMIN.md).
 *
 * The dispatcher in kmdcadm.c has loaded every --master-key (ctx->ring, lib's
 * keyring; ctx->newest the highest id) and opened the database before resync and
 * rekey run; it wipes the keys after.  A value is unwrapped only with the key
 * its stored id names and is only ever rewrapped under ctx->newest.
 */
#include "config.h"

#include <errno.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_card.h"
#include "kmdc_crypto.h"
#include "kmdc_keyring.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"
#include "kmdcadm.h"

/* --- keygen ------------------------------------------------------------------- */

typedef struct keygen_opts {
    const char *out;
} keygen_opts;

static int
keygen_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    (void)ctx;
    if (opt == OPT_OUT) {
        ((keygen_opts *)opts)->out = arg;
        return 0;
    }
    return 1;
}

static int
keygen_check(const kmdcadm_ctx *ctx, void *opts, int argc, char **argv)
{
    if (no_operands(ctx, argc, argv) != EXIT_OK)
        return EXIT_USAGE;
    if (((keygen_opts *)opts)->out == NULL)
        return usage_error(ctx->cmd->name, "keygen needs --out FILE");
    return EXIT_OK;
}

static const struct option keygen_table[] = { { "out", required_argument, NULL, OPT_OUT } };
const kmdcadm_options keygen_options = {
    keygen_table, 1, sizeof(keygen_opts), NULL, keygen_opt, keygen_check
};

int
cmd_keygen(kmdcadm_ctx *ctx, void *opts)
{
    keygen_opts *o = opts;
    kmdc_err e;

    (void)ctx;
    kmdc_err_clear(&e);
    if (kmdc_master_key_generate(o->out, &e) != KMDC_OK)
        return fail_err(&e);
    printf("wrote a new master key to %s (mode 0600); keep it out of database backups\n",
           o->out);
    return EXIT_OK;
}

/* --- unwrap and wrap, shared by resync and rekey ---------------------------------- */

/*
 * Unwrap a stored value of card serial with the --master-key its id names
 * (lib's keyring), into key.  KMDC_ERR_NOTFOUND when the key was not given,
 * KMDC_ERR_AUTH when the value does not unwrap; both with a message naming
 * the card, the field, the counter and the id, and what to do.
 */
static kmdc_status
unwrap_value(const kmdcadm_ctx *ctx, uint64_t serial, const char *field, uint64_t counter,
             const uint8_t wrapped[KMDC_WRAPPED_LEN], uint8_t key[KMDC_KEY_LEN], kmdc_err *e)
{
    uint32_t id = 0;
    char hex[17];
    kmdc_status st;

    kmdc_serial_format(hex, serial);
    st = kmdc_wrap_key_id(wrapped, KMDC_WRAPPED_LEN, &id, e);
    if (st != KMDC_OK)
        return st;
    st = kmdc_keyring_unwrap(&ctx->ring, serial, field, counter, wrapped, KMDC_WRAPPED_LEN,
                             key, e);
    if (st == KMDC_ERR_NOTFOUND)
        st = kmdc_err_set(e, KMDC_ERR_NOTFOUND,
                          "card %s: its %s is wrapped under master key id %" PRIu32
                          ", which was not given: add --master-key %" PRIu32 ":FILE",
                          hex, field, id, id);
    else if (st == KMDC_ERR_AUTH)
        st = kmdc_err_set(e, KMDC_ERR_AUTH,
                          "card %s: its %s (counter %" PRIu64 ") does not unwrap under "
                          "master key id %" PRIu32 ": that key file is not the one it was "
                          "wrapped with, or the row was changed outside kmdc", hex, field,
                          counter, id);
    else if (st == KMDC_ERR_FORMAT)
        st = kmdc_err_set(e, KMDC_ERR_FORMAT, "card %s: its %s has the wrong length",
                          hex, field);
    return st;
}

/* Wrap key for card serial, field and counter under the newest --master-key
 * into out. */
static kmdc_status
wrap_value(const kmdcadm_ctx *ctx, uint64_t serial, const char *field, uint64_t counter,
           const uint8_t key[KMDC_KEY_LEN], uint8_t out[KMDC_WRAPPED_LEN], kmdc_err *e)
{
    return kmdc_keyring_wrap(&ctx->ring, serial, field, counter, key, out, e);
}

/* Parse a counter: decimal digits only, 0 .. 2^63-1. */
static int
parse_counter(const char *cmd, const char *opt, const char *s, uint64_t *v)
{
    unsigned long long x;
    char *end;
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (s[i] < '0' || s[i] > '9')
            break;
    if (i == 0 || s[i] != '\0' || i > 19)
        return usage_error(cmd, "%s takes a counter in 0 .. 9223372036854775807", opt);
    errno = 0;
    x = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || x > KMDC_U63_MAX)
        return usage_error(cmd, "%s takes a counter in 0 .. 9223372036854775807", opt);
    *v = (uint64_t)x;
    return 0;
}

/* --- resync -------------------------------------------------------------------------- */

/* The most steps resync takes in one go (a bounded walk of the chain: kmdcadm(8), resync). */
#define RESYNC_MAX_STEPS (UINT64_C(1) << 20)

typedef struct resync_opts {
    uint64_t serial;
    uint64_t up, down;
    int have_up, have_down;
} resync_opts;

static int
resync_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    resync_opts *o = opts;

    switch (opt) {
    case OPT_UP:
        o->have_up = 1;
        return parse_counter(ctx->cmd->name, "--up", arg, &o->up);
    case OPT_DOWN:
        o->have_down = 1;
        return parse_counter(ctx->cmd->name, "--down", arg, &o->down);
    default:
        return 1;
    }
}

static int
resync_check(const kmdcadm_ctx *ctx, void *opts, int argc, char **argv)
{
    resync_opts *o = opts;
    int rc;

    rc = one_serial(ctx, argc, argv, &o->serial);
    if (rc != EXIT_OK)
        return rc;
    if (!o->have_up && !o->have_down)
        return usage_error(ctx->cmd->name, "resync needs --up N, --down N or both");
    return EXIT_OK;
}

static const struct option resync_table[] = {
    { "up", required_argument, NULL, OPT_UP },
    { "down", required_argument, NULL, OPT_DOWN },
};
const kmdcadm_options resync_options = {
    resync_table, sizeof resync_table / sizeof resync_table[0], sizeof(resync_opts), NULL,
    resync_opt, resync_check
};

/*
 * Move one chain of k from *next to target: unwrap CK_next (field, counter
 * *next), step it to CK_target, wrap it at target under newest.  Refuses to
 * go back or more than RESYNC_MAX_STEPS ahead (KMDC_ERR_ARG).
 */
static kmdc_status
resync_chain(const kmdcadm_ctx *ctx, uint64_t serial,
             const char *field, const char *name, uint64_t *next,
             uint8_t wrapped[KMDC_WRAPPED_LEN], uint64_t target, kmdc_err *e)
{
    uint8_t ck[KMDC_KEY_LEN];
    char hex[17];
    kmdc_status st;

    kmdc_serial_format(hex, serial);
    if (target < *next) {
        st = kmdc_err_set(e, KMDC_ERR_ARG,
                          "card %s: %s is %" PRIu64 ": resync never moves a counter back "
                          "(to %" PRIu64 "), that would reuse a key", hex, name, *next,
                          target);
        goto out;
    }
    if (target - *next > RESYNC_MAX_STEPS) {
        st = kmdc_err_set(e, KMDC_ERR_ARG,
                          "card %s: %s is %" PRIu64 ": %" PRIu64 " is more than %" PRIu64
                          " steps ahead; move it in several resyncs if you are sure",
                          hex, name, *next, target, RESYNC_MAX_STEPS);
        goto out;
    }
    st = unwrap_value(ctx, serial, field, *next, wrapped, ck, e);
    if (st != KMDC_OK)
        goto out;
    st = kmdc_chain_seek(ck, *next, target, NULL, e);
    if (st != KMDC_OK)
        goto out;
    st = wrap_value(ctx, serial, field, target, ck, wrapped, e);
    if (st != KMDC_OK)
        goto out;
    *next = target;
out:
    kmdc_wipe(ck, sizeof ck);
    return st;
}

int
cmd_resync(kmdcadm_ctx *ctx, void *opts)
{
    resync_opts *o = opts;
    const kmdc_master_key *mk = ctx->newest;
    kmdcadm_db *db = ctx->db;
    kmdcadm_card_keys k;
    uint64_t serial = o->serial, old_up = 0, old_down = 0;
    char hex[17];
    kmdc_err e;
    int rc = EXIT_OK, intrans = 0;

    memset(&k, 0, sizeof k);
    kmdc_err_clear(&e);
    kmdc_serial_format(hex, serial);
    if (kmdcadm_db_begin(db, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    intrans = 1;
    if (kmdcadm_db_card_keys_lock(db, serial, &k, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    if (strcmp(k.status, "revoked") == 0) {
        rc = fail("card %s is revoked: there is nothing to resync", hex);
        goto out;
    }
    /* Never wrap under an older key than the card already uses: a resync
     * with an outdated --master-key set would undo a rekey. */
    {
        const char *fields[3] = { KMDC_FIELD_UP_CHAIN, KMDC_FIELD_DOWN_CHAIN,
                                  KMDC_FIELD_AUTH_KEY };
        const uint8_t *vals[3] = { k.up_chain, k.down_chain, k.auth_key };
        uint32_t id = 0;
        size_t f;
        for (f = 0; f < 3; f++) {
            if (kmdc_wrap_key_id(vals[f], KMDC_WRAPPED_LEN, &id, &e) != KMDC_OK) {
                rc = fail_err(&e);
                goto out;
            }
            if (id > mk->id) {
                rc = fail("card %s: its %s is wrapped under master key id %" PRIu32
                          ", newer than the newest key given (%" PRIu32 "): add "
                          "--master-key %" PRIu32 ":FILE", hex, fields[f], id, mk->id, id);
                goto out;
            }
        }
    }
    old_up = k.up_next;
    old_down = k.down_next;
    if ((o->have_up && o->up != k.up_next
         && resync_chain(ctx, serial, KMDC_FIELD_UP_CHAIN, "up_next", &k.up_next,
                         k.up_chain, o->up, &e) != KMDC_OK)
        || (o->have_down && o->down != k.down_next
            && resync_chain(ctx, serial, KMDC_FIELD_DOWN_CHAIN, "down_next",
                            &k.down_next, k.down_chain, o->down, &e) != KMDC_OK)) {
        rc = fail_err(&e);
        goto out;
    }
    if (k.up_next == old_up && k.down_next == old_down) {
        kmdcadm_db_rollback(db);   /* nothing to change: end the transaction */
        intrans = 0;
    } else {
        if (kmdcadm_db_card_keys_store(db, &k, &e) != KMDC_OK
            || (k.up_next != old_up
                && kmdcadm_db_audit_resync(db, serial, "up", old_up, k.up_next, &e) != KMDC_OK)
            || (k.down_next != old_down
                && kmdcadm_db_audit_resync(db, serial, "down", old_down, k.down_next,
                                           &e) != KMDC_OK)) {
            rc = fail_err(&e);
            goto out;
        }
        if (kmdcadm_db_commit(db, &e) != KMDC_OK) {
            rc = fail_err(&e);   /* the rollback below ends a failed transaction */
            goto out;
        }
        intrans = 0;
    }
    if (o->have_up)
        printf("card %s: up_next %" PRIu64 " -> %" PRIu64 "%s\n", hex, old_up, k.up_next,
               old_up == k.up_next ? " (unchanged)" : "");
    if (o->have_down)
        printf("card %s: down_next %" PRIu64 " -> %" PRIu64 "%s\n", hex, old_down,
               k.down_next, old_down == k.down_next ? " (unchanged)" : "");
out:
    if (intrans)
        kmdcadm_db_rollback(db);
    kmdc_wipe(&k, sizeof k);
    return rc;
}

/* --- rekey ---------------------------------------------------------------------------- */

/* Cards per transaction: short row locks while the service runs. */
#define REKEY_BATCH 100
/* Distinct master key ids reported. */
#define REKEY_MAX_IDS 64

typedef struct rekey_opts {
    int check;
} rekey_opts;

static int
rekey_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    (void)ctx;
    (void)arg;
    if (opt == OPT_CHECK) {
        ((rekey_opts *)opts)->check = 1;
        return 0;
    }
    return 1;
}

static const struct option rekey_table[] = { { "check", no_argument, NULL, OPT_CHECK } };
const kmdcadm_options rekey_options = {
    rekey_table, 1, sizeof(rekey_opts), NULL, rekey_opt, NULL
};

/*
 * Rewrap one stored value under newest unless it is already under it.
 * *changed is set when the value was rewritten.
 */
static kmdc_status
rewrap_value(const kmdcadm_ctx *ctx, const kmdc_master_key *newest, uint64_t serial,
             const char *field, uint64_t counter, uint8_t wrapped[KMDC_WRAPPED_LEN],
             int *changed, kmdc_err *e)
{
    uint8_t key[KMDC_KEY_LEN];
    uint32_t id = 0;
    kmdc_status st;

    *changed = 0;
    st = kmdc_wrap_key_id(wrapped, KMDC_WRAPPED_LEN, &id, e);
    if (st != KMDC_OK || id == newest->id)
        return st;
    st = unwrap_value(ctx, serial, field, counter, wrapped, key, e);
    if (st == KMDC_OK)
        st = wrap_value(ctx, serial, field, counter, key, wrapped, e);
    if (st == KMDC_OK)
        *changed = 1;
    kmdc_wipe(key, sizeof key);
    return st;
}

/*
 * Report which master key ids the database still needs: the ids wrapped
 * values name, and the key ids of live access codes.  Sets *old when any id
 * other than newest is needed.  Prints to stdout.
 */
static int
report_key_use(kmdcadm_db *db, uint32_t newest, int *old)
{
    kmdcadm_key_use ids[REKEY_MAX_IDS];
    kmdcadm_code_use codes[REKEY_MAX_IDS];
    size_t nids = 0, ncodes = 0, i;
    kmdc_err e;
    int more = 0;

    kmdc_err_clear(&e);
    *old = 0;
    if (kmdcadm_db_key_ids(db, ids, REKEY_MAX_IDS, &nids, &more, &e) != KMDC_OK
        || kmdcadm_db_live_codes(db, newest, codes, REKEY_MAX_IDS, &ncodes, &e) != KMDC_OK)
        return fail_err(&e);
    for (i = 0; i < nids; i++) {
        printf("master key id %" PRIu32 ": %" PRIu64 " wrapped value%s\n", ids[i].key_id,
               ids[i].values, ids[i].values == 1 ? "" : "s");
        if (ids[i].key_id != newest)
            *old = 1;
    }
    if (more) {
        printf("(more master key ids are in use)\n");
        *old = 1;
    }
    for (i = 0; i < ncodes; i++) {
        printf("master key id %" PRIu32 ": %" PRIu64 " access code%s not yet used "
               "(valid until %s at the latest)\n", codes[i].key_id, codes[i].cards,
               codes[i].cards == 1 ? "" : "s", codes[i].latest_expiry);
        *old = 1;
    }
    if (ncodes > 0)
        printf("An access code is checked with the master key it was made with: keep "
               "those key files until the cards are activated or their codes expire, "
               "or revoke the cards.\n");
    return EXIT_OK;
}

/* rekey --check: verify every value unwraps under the given keys, then report. */
static int
rekey_check(const kmdcadm_ctx *ctx, kmdcadm_db *db, const kmdc_master_key *newest)
{
    kmdcadm_card_keys *rows = NULL;
    uint64_t after = 0, verified = 0, failures = 0;
    uint8_t key[KMDC_KEY_LEN];
    size_t n = 0, i, f;
    kmdc_err e;
    int rc = EXIT_OK, old = 0;

    kmdc_err_clear(&e);
    rows = calloc(REKEY_BATCH, sizeof *rows);
    if (rows == NULL)
        return fail("out of memory");
    do {
        if (kmdcadm_db_card_keys_batch(db, after, 0, rows, REKEY_BATCH, &n, &e) != KMDC_OK) {
            rc = fail_err(&e);
            goto out;
        }
        for (i = 0; i < n; i++) {
            const char *fields[3] = { KMDC_FIELD_UP_CHAIN, KMDC_FIELD_DOWN_CHAIN,
                                      KMDC_FIELD_AUTH_KEY };
            const uint8_t *vals[3] = { rows[i].up_chain, rows[i].down_chain,
                                       rows[i].auth_key };
            const uint64_t counters[3] = { rows[i].up_next, rows[i].down_next, 0 };
            for (f = 0; f < 3; f++) {
                kmdc_status st = unwrap_value(ctx, rows[i].serial, fields[f], counters[f],
                                              vals[f], key, &e);
                kmdc_wipe(key, sizeof key);
                if (st == KMDC_OK) {
                    verified++;
                } else if (st != KMDC_ERR_NOTFOUND) {
                    /* a key that was not given is reported by id below */
                    failures++;
                    fprintf(stderr, "kmdcadm: %s\n", e.msg);
                }
            }
        }
        if (n > 0)
            after = rows[n - 1].serial;
    } while (n == REKEY_BATCH);
    printf("%" PRIu64 " wrapped value%s under the given master keys\n", verified,
           verified == 1 ? " unwraps" : "s unwrap");
    rc = report_key_use(db, newest->id, &old);
    if (rc != EXIT_OK)
        goto out;
    if (failures > 0) {
        rc = fail("%" PRIu64 " wrapped value%s not unwrap: do not destroy any master key "
                  "file", failures, failures == 1 ? " does" : "s do");
    } else if (old) {
        printf("master key ids other than %" PRIu32 " are still needed: run 'kmdcadm rekey' "
               "and keep the older key files\n", newest->id);
        rc = EXIT_FAIL;
    } else {
        printf("only master key id %" PRIu32 " is needed: older master key files may be "
               "destroyed\n", newest->id);
    }
out:
    free(rows);
    return rc;
}

int
cmd_rekey(kmdcadm_ctx *ctx, void *opts)
{
    rekey_opts *o = opts;
    const kmdc_master_key *mk = ctx->newest;
    kmdcadm_db *db = ctx->db;
    kmdcadm_card_keys *rows = NULL;
    uint64_t after = 0, cards = 0, values = 0, current = 0;
    size_t n = 0, i;
    kmdc_err e;
    int rc = EXIT_OK, intrans = 0, old = 0;

    kmdc_err_clear(&e);
    if (o->check) {
        rc = rekey_check(ctx, db, mk);
        goto out;
    }
    rows = calloc(REKEY_BATCH, sizeof *rows);
    if (rows == NULL) {
        rc = fail("out of memory");
        goto out;
    }
    do {
        if (kmdcadm_db_begin(db, &e) != KMDC_OK) {
            rc = fail_err(&e);
            goto out;
        }
        intrans = 1;
        if (kmdcadm_db_card_keys_batch(db, after, 1, rows, REKEY_BATCH, &n, &e) != KMDC_OK) {
            rc = fail_err(&e);
            goto out;
        }
        for (i = 0; i < n; i++) {
            kmdcadm_card_keys *k = &rows[i];
            int cu = 0, cd = 0, ca = 0;
            uint32_t kid;
            if (rewrap_value(ctx, mk, k->serial, KMDC_FIELD_UP_CHAIN, k->up_next, k->up_chain,
                             &cu, &e) != KMDC_OK
                || rewrap_value(ctx, mk, k->serial, KMDC_FIELD_DOWN_CHAIN, k->down_next,
                                k->down_chain, &cd, &e) != KMDC_OK
                || rewrap_value(ctx, mk, k->serial, KMDC_FIELD_AUTH_KEY, 0, k->auth_key, &ca,
                                &e) != KMDC_OK) {
                rc = fail_err(&e);
                goto out;
            }
            /* key_id keys a live access code: it stays until the card is
             * activated (the module then sets it); otherwise it follows. */
            kid = k->code_live ? k->key_id : mk->id;
            if (cu + cd + ca == 0 && kid == k->key_id) {
                current++;
                continue;
            }
            k->key_id = kid;
            if (kmdcadm_db_card_keys_store(db, k, &e) != KMDC_OK) {
                rc = fail_err(&e);
                goto out;
            }
            values += (uint64_t)(cu + cd + ca);
            if (cu + cd + ca > 0)
                cards++;
            else
                current++;
        }
        if (kmdcadm_db_commit(db, &e) != KMDC_OK) {
            intrans = 0;
            rc = fail_err(&e);
            goto out;
        }
        intrans = 0;
        if (n > 0)
            after = rows[n - 1].serial;
    } while (n == REKEY_BATCH);
    if (kmdcadm_db_audit_rekey(db, mk->id, cards, values, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    printf("rewrapped %" PRIu64 " value%s of %" PRIu64 " card%s under master key id %"
           PRIu32 "; %" PRIu64 " card%s already current\n", values, values == 1 ? "" : "s",
           cards, cards == 1 ? "" : "s", mk->id, current, current == 1 ? "" : "s");
    rc = report_key_use(db, mk->id, &old);
    if (rc != EXIT_OK)
        goto out;
    if (old)
        printf("some values still need an older master key: keep its file; "
               "'kmdcadm rekey --check' tells when it may go\n");
    else
        printf("no value needs a master key other than id %" PRIu32 "; confirm with "
               "'kmdcadm rekey --check' given only that key, then destroy the older "
               "key files\n", mk->id);
out:
    if (intrans)
        kmdcadm_db_rollback(db);
    if (rows != NULL)
        kmdc_freezero(rows, REKEY_BATCH * sizeof *rows);
    return rc;
}

