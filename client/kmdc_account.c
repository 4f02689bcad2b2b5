/*
 * kmdc_account.c - the card's standing with the datacenter: `kmdc activate`
 * (docs/PROTOCOL.md section 7: a lost answer never strands the card), `kmdc
 * status` of a sent message, and `kmdc card --resync` (GET /card).
 */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kmdc_cli.h"
#include "kmdc_http.h"
#include "kmdc_util.h"

#define CODE_MAX 32              /* an access code as typed, hyphens and spaces included */
#define ACTIVATE_TRIES 2         /* POSTs of the same r in one run */

/* ---- activate ------------------------------------------------------------------- */

static kmdc_status
begin_fn(void *arg, kmdc_card *card, kmdc_err *err)
{
    return kmdc_card_activation_begin(card, (uint8_t *)arg, err);
}

static kmdc_status
confirm_fn(void *arg, kmdc_card *card, kmdc_err *err)
{
    (void)arg;
    if (kmdc_card_get_state(card) == KMDC_CARD_ACTIVE)
        return KMDC_OK;          /* another kmdc confirmed meanwhile */
    return kmdc_card_activation_confirm(card, err);
}

/*
 * Does the datacenter accept the rotated keys?  GET /card/{serial} signed
 * with the rotated AK.  Returns 1 yes (200), 0 no (any other answer),
 * -1 no answer (network).
 */
static int
probe_rotated(kmdc_cli *c, const kmdc_card *card, const char *base)
{
    uint8_t ak[KMDC_KEY_LEN];
    kmdc_http_req rq;
    kmdc_http_resp rs;
    char path[40];
    kmdc_err e;
    int hrc, r;

    kmdc_err_clear(&e);
    if (kmdc_card_activation_preview(card, NULL, NULL, ak, &e) != KMDC_OK) {
        kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        return 0;
    }
    memset(&rq, 0, sizeof rq);
    snprintf(path, sizeof path, "/card/%016" PRIx64, kmdc_card_serial(card));
    rq.method = "GET";
    rq.path = path;
    rq.ak = ak;
    rq.serial = kmdc_card_serial(card);
    rq.upload_fd = -1;
    hrc = kmdc_http_do(c, base, &rq, &rs);
    kmdc_wipe(ak, sizeof ak);
    r = hrc != KMDC_EXIT_OK ? -1 : rs.status == 200 ? 1 : 0;
    kmdc_http_resp_free(&rs);
    return r;
}

/* The access code, form-encoded: letters, digits, '-' and ' ' only. */
static int
check_code(kmdc_cli *c, const char *code, char *out, size_t cap)
{
    size_t i, j = 0, len = strlen(code);

    if (len == 0 || len > CODE_MAX)
        return kmdc_cli_usage(c, "an access code looks like XXXXX-XXXXX");
    for (i = 0; i < len; i++) {
        if (!isalnum((unsigned char)code[i]) && code[i] != '-' && code[i] != ' ')
            return kmdc_cli_usage(c, "an access code looks like XXXXX-XXXXX");
        if (j + 2 >= cap)
            return kmdc_cli_usage(c, "an access code looks like XXXXX-XXXXX");
        out[j++] = code[i] == ' ' ? '+' : code[i];
    }
    out[j] = '\0';
    return KMDC_EXIT_OK;
}

static int
activated(kmdc_cli *c, const kmdc_card *card)
{
    int rc = kmdc_cli_update(c, confirm_fn, NULL, NULL);

    if (rc == KMDC_EXIT_OK)
        printf("card %016" PRIx64 " is active\n", kmdc_card_serial(card));
    return rc;
}

int
kmdc_cmd_activate(kmdc_cli *c, int argc, char **argv)
{
    kmdc_card_lockh *slk = NULL, *rlk = NULL;
    kmdc_card *card = NULL;
    kmdc_http_req rq;
    kmdc_http_resp rs;
    uint8_t r[KMDC_KEY_LEN];
    char code[CODE_MAX * 2 + 1], rhex[2 * KMDC_KEY_LEN + 1], path[40];
    char body[sizeof code + sizeof rhex + 16], base[KMDC_CARD_MAX_URL + 1];
    int rc, first, hrc, p, tries, was_pending;

    memset(&rs, 0, sizeof rs);
    rc = kmdc_cli_parse(c, kmdc_cli_find("activate"), argc, argv, NULL, 0, NULL, NULL, NULL,
                        &first);
    if (rc >= 0)
        return rc;
    if (argc - first != 1)
        return kmdc_cli_usage(c, "activate takes the access CODE");
    if ((rc = check_code(c, argv[first], code, sizeof code)) != KMDC_EXIT_OK)
        return rc;
    /* No send or fetch may run while the keys change. */
    if ((rc = kmdc_cli_lock(c, KMDC_LOCK_SEND, &slk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_lock(c, KMDC_LOCK_RECV, &rlk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK)
        goto out;
    if (kmdc_card_get_state(card) == KMDC_CARD_ACTIVE) {
        printf("card %016" PRIx64 " is active already\n", kmdc_card_serial(card));
        goto out;
    }
    snprintf(base, sizeof base, "%s", kmdc_cli_base_url(c, card));
    was_pending = kmdc_card_activation_pending(card);
    /* Persist r before it leaves the machine. */
    kmdc_card_free(card);
    card = NULL;
    if ((rc = kmdc_cli_update(c, begin_fn, r, &card)) != KMDC_EXIT_OK)
        goto out;
    if (was_pending) {
        /* An earlier run may have been activated without seeing the answer. */
        if ((p = probe_rotated(c, card, base)) == 1) {
            rc = activated(c, card);
            goto out;
        }
    }
    kmdc_hex_encode(rhex, r, sizeof r);
    snprintf(body, sizeof body, "code=%s&r=%s", code, rhex);
    snprintf(path, sizeof path, "/activate/%016" PRIx64, kmdc_card_serial(card));
    for (tries = 0; tries < ACTIVATE_TRIES; tries++) {
        memset(&rq, 0, sizeof rq);
        rq.method = "POST";
        rq.path = path;
        rq.ak = kmdc_card_ak(card);
        rq.serial = kmdc_card_serial(card);
        rq.content_type = "application/x-www-form-urlencoded";
        rq.body = body;
        rq.bodylen = strlen(body);
        rq.upload_fd = -1;
        kmdc_http_resp_free(&rs);
        hrc = kmdc_http_do(c, base, &rq, &rs);
        if (hrc == KMDC_EXIT_OK && rs.status == 204) {
            rc = activated(c, card);
            goto out;
        }
        if (hrc == KMDC_EXIT_FAIL) {
            rc = kmdc_http_report("activate", hrc, &rs);
            goto out;
        }
        /* Lost answer, already active, or our old key refused: did it take? */
        p = probe_rotated(c, card, base);
        if (p == 1) {
            rc = activated(c, card);
            goto out;
        }
        if (hrc == KMDC_EXIT_OK && !kmdc_http_transient(hrc, &rs))
            break;               /* a clear refusal: report it */
        if (p < 0)
            break;               /* the datacenter is unreachable: later */
    }
    rc = kmdc_http_report("activate", hrc, &rs);
    if (rc == KMDC_EXIT_OK)
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "activate: unexpected answer %ld", rs.status);
    kmdc_cli_info(c, "the card keeps its activation value: run kmdc activate again");
out:
    kmdc_wipe(r, sizeof r);
    kmdc_wipe(rhex, sizeof rhex);
    kmdc_wipe(body, sizeof body);
    kmdc_wipe(code, sizeof code);
    kmdc_http_resp_free(&rs);
    kmdc_card_free(card);
    kmdc_card_unlock(rlk);
    kmdc_card_unlock(slk);
    return rc;
}

/* ---- status ------------------------------------------------------------------------ */

int
kmdc_cmd_status(kmdc_cli *c, int argc, char **argv)
{
    kmdc_card *card = NULL;
    kmdc_http_req rq;
    kmdc_http_resp rs;
    json_t *j = NULL, *arr, *it, *addr, *state;
    json_error_t je;
    uint64_t id;
    size_t i;
    char path[40], a[KMDC_ADDR_MAX + 1], s[32];
    int rc, first, hrc;

    memset(&rs, 0, sizeof rs);
    rc = kmdc_cli_parse(c, kmdc_cli_find("status"), argc, argv, NULL, 0, NULL, NULL, NULL,
                        &first);
    if (rc >= 0)
        return rc;
    if (argc - first != 1 || kmdc_cli_parse_id(argv[first], &id) != 0)
        return kmdc_cli_usage(c, "status takes a MESSAGE-ID (16 hex digits, as send printed it)");
    if ((rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK)
        return rc;
    memset(&rq, 0, sizeof rq);
    snprintf(path, sizeof path, "/messages/%016" PRIx64, id);
    rq.method = "GET";
    rq.path = path;
    rq.ak = kmdc_card_ak(card);
    rq.serial = kmdc_card_serial(card);
    rq.upload_fd = -1;
    hrc = kmdc_http_do(c, kmdc_cli_base_url(c, card), &rq, &rs);
    if (hrc != KMDC_EXIT_OK || rs.status != 200) {
        rc = kmdc_http_report("status", hrc, &rs);
        if (rc == KMDC_EXIT_OK)
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "status: unexpected answer %ld", rs.status);
        goto out;
    }
    j = rs.body != NULL ? json_loadb(rs.body, rs.bodylen, 0, &je) : NULL;
    arr = json_object_get(j, "recipients");
    if (!json_is_array(arr)) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "status: the answer has no recipients list");
        goto out;
    }
    json_array_foreach(arr, i, it) {
        addr = json_object_get(it, "address");
        state = json_object_get(it, "state");
        if (!json_is_string(addr) || !json_is_string(state))
            continue;
        snprintf(a, sizeof a, "%s", json_string_value(addr));
        snprintf(s, sizeof s, "%s", json_string_value(state));
        kmdc_cli_sanitize(a);
        kmdc_cli_sanitize(s);
        printf("%s %s\n", a, s);
    }
    if (fflush(stdout) != 0)
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output");
out:
    json_decref(j);
    kmdc_http_resp_free(&rs);
    kmdc_card_free(card);
    return rc;
}

/* ---- card --resync ------------------------------------------------------------------- */

typedef struct resync_ctx {
    uint64_t up, down;
} resync_ctx;

static kmdc_status
resync_fn(void *arg, kmdc_card *card, kmdc_err *err)
{
    resync_ctx *r = arg;
    uint64_t up = r->up > kmdc_card_up_next(card) ? r->up : kmdc_card_up_next(card);
    uint64_t down = r->down > kmdc_card_down_next(card) ? r->down : kmdc_card_down_next(card);

    return kmdc_card_resync(card, up, down, err);
}

/* GET path signed by the card; the JSON answer in *out.  Exit code. */
static int
get_json(kmdc_cli *c, const kmdc_card *card, const char *base, const char *path,
         const char *what, json_t **out)
{
    kmdc_http_req rq;
    kmdc_http_resp rs;
    json_error_t je;
    int hrc, rc = KMDC_EXIT_OK;

    *out = NULL;
    memset(&rq, 0, sizeof rq);
    rq.method = "GET";
    rq.path = path;
    rq.ak = kmdc_card_ak(card);
    rq.serial = kmdc_card_serial(card);
    rq.upload_fd = -1;
    hrc = kmdc_http_do(c, base, &rq, &rs);
    if (hrc != KMDC_EXIT_OK || rs.status != 200) {
        rc = kmdc_http_report(what, hrc, &rs);
        if (rc == KMDC_EXIT_OK)
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: unexpected answer %ld", what, rs.status);
    } else if (rs.body == NULL || (*out = json_loadb(rs.body, rs.bodylen, 0, &je)) == NULL) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: the answer is not JSON", what);
    }
    kmdc_http_resp_free(&rs);
    return rc;
}

/*
 * Move the counters to what the datacenter reports, never backwards.  The
 * down counter stops at the lowest delivery still in the mailbox, so that no
 * pending delivery loses its key (a resync stores no keys).  Both the send
 * and the recv locks are held.
 */
int
kmdc_cmd_card_resync(kmdc_cli *c)
{
    kmdc_card_lockh *slk = NULL, *rlk = NULL;
    kmdc_card *card = NULL;
    json_t *cj = NULL, *mj = NULL, *v, *arr, *it;
    resync_ctx r;
    char path[48], base[KMDC_CARD_MAX_URL + 1];
    size_t i;
    int rc;

    if ((rc = kmdc_cli_lock(c, KMDC_LOCK_SEND, &slk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_lock(c, KMDC_LOCK_RECV, &rlk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK)
        goto out;
    if (kmdc_card_get_state(card) != KMDC_CARD_ACTIVE) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "the card is not activated yet (run kmdc activate CODE)");
        goto out;
    }
    snprintf(base, sizeof base, "%s", kmdc_cli_base_url(c, card));
    snprintf(path, sizeof path, "/card/%016" PRIx64, kmdc_card_serial(card));
    if ((rc = get_json(c, card, base, path, "resync", &cj)) != KMDC_EXIT_OK)
        goto out;
    v = json_object_get(cj, "up_next");
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "resync: the answer has no up_next");
        goto out;
    }
    r.up = (uint64_t)json_integer_value(v);
    v = json_object_get(cj, "down_next");
    if (!json_is_integer(v) || json_integer_value(v) < 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "resync: the answer has no down_next");
        goto out;
    }
    r.down = (uint64_t)json_integer_value(v);
    snprintf(path, sizeof path, "/mailbox/%016" PRIx64, kmdc_card_serial(card));
    if ((rc = get_json(c, card, base, path, "resync", &mj)) != KMDC_EXIT_OK)
        goto out;
    arr = json_object_get(mj, "deliveries");
    json_array_foreach(arr, i, it) {
        v = json_object_get(it, "seq");
        if (json_is_integer(v) && json_integer_value(v) >= 0 &&
            (uint64_t)json_integer_value(v) < r.down)
            r.down = (uint64_t)json_integer_value(v);
    }
    rc = kmdc_cli_update(c, resync_fn, &r, NULL);
out:
    json_decref(cj);
    json_decref(mj);
    kmdc_card_free(card);
    kmdc_card_unlock(rlk);
    kmdc_card_unlock(slk);
    return rc;
}
