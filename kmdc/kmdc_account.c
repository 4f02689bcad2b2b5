/*
 * kmdc_account.c - the card's standing with the datacenter: `kmdc activate`
 * (docs/PROTOCOL.md section 7: a lost answer never strands the card), `kmdc
 * status` of a sent message, and `kmdc card --resync` (GET /card).
 */
#define _GNU_SOURCE
#include "config.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <jansson.h>

#include "kmdc_cli.h"
#include "kmdc_http.h"
#include "kmdc_parse.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"

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

/*
 * Check the access code as typed before anything is sent: its alphabet, its
 * length and, for a code shown with one, its check symbol (PROTOCOL.md,
 * activation).  A mistyped code never reaches the datacenter, so it spends
 * none of the card's attempts.  out receives the 10 canonical symbols, the
 * form every datacenter version accepts.
 */
static int
check_code(kmdc_cli *c, const char *code, char out[KMDC_ACCESS_CODE_LEN + 1])
{
    size_t i, n = 0, len = strlen(code);
    kmdc_err e;

    kmdc_err_clear(&e);
    if (kmdc_access_code_normalize(code, len, out, &e) != KMDC_OK)
        return kmdc_cli_fail(KMDC_EXIT_USAGE, "activate: the access code is mistyped (%s); "
                             "it looks like XXXXX-XXXXX-X, as kmdcadm issue printed it.  "
                             "Nothing was sent: no attempt was used", e.msg);
    for (i = 0; i < len; i++)
        n += code[i] != '-' && code[i] != ' ';
    if (n == KMDC_ACCESS_CODE_LEN)
        kmdc_cli_info(c, "this access code has no check character (an older kmdcadm issued "
                      "it), so a typo in it cannot be caught before it is sent");
    return KMDC_EXIT_OK;
}

/* What the card holder can do after the datacenter refused the code. */
static void
refusal_advice(kmdc_cli *c, const kmdc_card *card, const kmdc_http_resp *rs)
{
    char serial[17];

    kmdc_serial_format(serial, kmdc_card_serial(card));
    if (strcmp(rs->error, "locked") == 0)
        fprintf(stderr, "kmdc: card %s is locked after 5 wrong access codes and can no longer "
                "be activated.  Ask the datacenter's operator for a new card: they run "
                "'kmdcadm revoke %s' and then 'kmdcadm issue --address %s --url URL --out "
                "FILE', and give you the new card file and its access code.\n", serial,
                serial, kmdc_card_address(card));
    else if (strcmp(rs->error, "activation_failed") == 0 && strstr(rs->message, "expired") != NULL)
        fprintf(stderr, "kmdc: the access code of card %s has expired.  Ask the datacenter's "
                "operator for a new card ('kmdcadm revoke %s', then 'kmdcadm issue --address "
                "%s ...').\n", serial, serial, kmdc_card_address(card));
    else if (strcmp(rs->error, "activation_failed") == 0)
        kmdc_cli_info(c, "check the access code and run kmdc activate CODE again; five wrong "
                      "codes lock the card");
    else if (kmdc_http_transient(KMDC_EXIT_OK, rs))
        kmdc_cli_info(c, "the card keeps its activation value: run kmdc activate again");
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
    char code[KMDC_ACCESS_CODE_LEN + 1], rhex[2 * KMDC_KEY_LEN + 1], path[40];
    char body[sizeof code + sizeof rhex + 16], base[KMDC_CARD_MAX_URL + 1];
    int rc, first, hrc, p, tries, was_pending;

    memset(&rs, 0, sizeof rs);
    rc = kmdc_cli_parse(c, kmdc_cli_find("activate"), argc, argv, NULL, 0, NULL, NULL, NULL,
                        &first);
    if (rc >= 0)
        return rc;
    if (argc - first != 1)
        return kmdc_cli_usage(c, "activate takes the access CODE");
    if ((rc = check_code(c, argv[first], code)) != KMDC_EXIT_OK)
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
    if (hrc != KMDC_EXIT_OK || rs.status == 0)
        kmdc_cli_info(c, "the card keeps its activation value: run kmdc activate again");
    else
        refusal_advice(c, card, &rs);
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
    kmdc_message_answer ma;
    json_t *j = NULL;
    uint64_t id;
    size_t i;
    char path[40];
    int rc, first, hrc;

    memset(&rs, 0, sizeof rs);
    memset(&ma, 0, sizeof ma);
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
    if (kmdc_parse_message(rs.body, rs.bodylen, &ma) != 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "status: the answer is not what the datacenter sends "
                           "(docs/API.md)");
        goto out;
    }
    if (c->json) {
        json_t *arr = json_array();
        char hex[17];
        for (i = 0; arr != NULL && i < ma.n_rcpts; i++)
            json_array_append_new(arr, json_pack("{s:s, s:s}", "address", ma.rcpts[i].address,
                                                 "state", ma.rcpts[i].state));
        kmdc_serial_format(hex, ma.message);
        j = json_pack("{s:s, s:I, s:I, s:o}", "message", hex, "created", (json_int_t)ma.created,
                      "size", (json_int_t)ma.size, "recipients", arr != NULL ? arr : json_null());
        if (kmdc_cli_print_json(j) != KMDC_EXIT_OK)
            rc = KMDC_EXIT_FAIL;
    } else {
        for (i = 0; i < ma.n_rcpts; i++)
            printf("%s %s\n", ma.rcpts[i].address, ma.rcpts[i].state);
    }
    if (fflush(stdout) != 0)
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output");
out:
    kmdc_parse_message_free(&ma);
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

/* GET path signed by the card; the 200 answer's body in rs.  Exit code. */
static int
get_body(kmdc_cli *c, const kmdc_card *card, const char *base, const char *path,
         const char *what, kmdc_http_resp *rs)
{
    kmdc_http_req rq;
    int hrc, rc = KMDC_EXIT_OK;

    memset(&rq, 0, sizeof rq);
    rq.method = "GET";
    rq.path = path;
    rq.ak = kmdc_card_ak(card);
    rq.serial = kmdc_card_serial(card);
    rq.upload_fd = -1;
    hrc = kmdc_http_do(c, base, &rq, rs);
    if (hrc != KMDC_EXIT_OK || rs->status != 200) {
        rc = kmdc_http_report(what, hrc, rs);
        if (rc == KMDC_EXIT_OK)
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: unexpected answer %ld", what, rs->status);
    }
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
    kmdc_http_resp crs, mrs;
    kmdc_card_answer ca;
    kmdc_delivery *v = NULL;
    resync_ctx r;
    uint64_t dn;
    char path[48], base[KMDC_CARD_MAX_URL + 1];
    size_t i, n = 0;
    int rc;

    memset(&crs, 0, sizeof crs);
    memset(&mrs, 0, sizeof mrs);
    if ((rc = kmdc_cli_lock(c, KMDC_LOCK_SEND, &slk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_lock(c, KMDC_LOCK_RECV, &rlk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK)
        goto out;
    if ((rc = kmdc_cli_need_active(card)) != KMDC_EXIT_OK)
        goto out;
    snprintf(base, sizeof base, "%s", kmdc_cli_base_url(c, card));
    snprintf(path, sizeof path, "/card/%016" PRIx64, kmdc_card_serial(card));
    if ((rc = get_body(c, card, base, path, "resync", &crs)) != KMDC_EXIT_OK)
        goto out;
    if (kmdc_parse_card(crs.body, crs.bodylen, &ca) != 0 || ca.serial != kmdc_card_serial(card)) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "resync: the answer is not what the datacenter sends "
                           "for this card (docs/API.md)");
        goto out;
    }
    r.up = ca.up_next;
    r.down = ca.down_next;
    snprintf(path, sizeof path, "/mailbox/%016" PRIx64, kmdc_card_serial(card));
    if ((rc = get_body(c, card, base, path, "resync", &mrs)) != KMDC_EXIT_OK)
        goto out;
    if (kmdc_parse_listing(mrs.body, mrs.bodylen, &v, &n, &dn) != 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "resync: the mailbox listing is not what the "
                           "datacenter sends (docs/API.md)");
        goto out;
    }
    for (i = 0; i < n; i++)
        if (v[i].seq < r.down)
            r.down = v[i].seq;
    rc = kmdc_cli_update(c, resync_fn, &r, NULL);
out:
    free(v);
    kmdc_http_resp_free(&crs);
    kmdc_http_resp_free(&mrs);
    kmdc_card_free(card);
    kmdc_card_unlock(rlk);
    kmdc_card_unlock(slk);
    return rc;
}
