/*
 * kmdc_fetch.c - `kmdc fetch` and `kmdc watch`: listing the mailbox,
 * downloading each delivery and acknowledging it, with the card's receive
 * rules (docs/PROTOCOL.md section 4):
 *   - deliveries are processed in seq order, with the recv lock held;
 *   - the down chain advances (card saved) only after a keyblock
 *     authenticated, from the reader's on_meta callback;
 *   - plaintext goes to a temp file (O_EXCL, 0600) that is fsynced and moved
 *     to its final name without ever replacing a file;
 *   - the delivery is then recorded ("id -> file", the key erased, card
 *     saved) and only then acknowledged with DELETE;
 *   - a delivery already recorded is just acknowledged again.
 * Ordering note: the file is put in place before the record is written, so a
 * crash between the two can at worst write the document a second time
 * ("name (1)") on the next fetch; the other order could acknowledge a
 * document that never reached its final name.
 */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <dirent.h>
#include <jansson.h>

#include "kmdc_cli.h"
#include "kmdc_envelope.h"
#include "kmdc_http.h"
#include "kmdc_parse.h"
#include "kmdc_recv.h"
#include "kmdc_tlv.h"
#include "kmdc_util.h"

#define WAIT_SECONDS 60           /* ?wait=S, the datacenter clamps to 60 */
#define BACKOFF_MIN 1             /* watch: first pause after a failure, seconds */
#define BACKOFF_MAX 60            /* ... doubling up to this */

/* ---- fetch ------------------------------------------------------------------------- */

typedef kmdc_delivery dlv;

/* Parse the mailbox listing into *out (sorted by seq). */
static int
parse_listing(const char *body, size_t len, dlv **out, size_t *n)
{
    uint64_t down_next;

    if (kmdc_parse_listing(body, len, out, n, &down_next) != 0)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "the mailbox listing is not what the datacenter "
                             "sends (docs/API.md)");
    return KMDC_EXIT_OK;
}

typedef struct fetch_env {
    kmdc_cli *c;
    const char *dir;          /* as given, for printing */
    int dirfd;
    uint64_t serial;
    const uint8_t *ak;        /* owned by `card` below */
    kmdc_card *card;          /* loaded at the start: serial, AK, URL */
    char base[KMDC_CARD_MAX_URL + 1];
    json_t *written;          /* --json: the files written */
} fetch_env;

/* One file written: its path on standard output, or into the JSON list. */
static int
report_written(fetch_env *f, uint64_t id, const char *path)
{
    char hex[17];

    if (f->written != NULL) {
        kmdc_serial_format(hex, id);
        json_array_append_new(f->written, json_pack("{s:s, s:s}", "delivery", hex, "path", path));
        return KMDC_EXIT_OK;
    }
    printf("%s\n", path);
    if (fflush(stdout) != 0)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
    return KMDC_EXIT_OK;
}

static kmdc_status
sink_open(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    return kmdc_open_update((kmdc_open *)arg, p, len, err);
}

/* DELETE /mailbox/{serial}/{id}.  Returns an exit code (reported). */
static int
ack(fetch_env *f, uint64_t id)
{
    kmdc_http_req rq;
    kmdc_http_resp rs;
    char path[64];
    int rc;

    memset(&rq, 0, sizeof rq);
    snprintf(path, sizeof path, "/mailbox/%016" PRIx64 "/%016" PRIx64, f->serial, id);
    rq.method = "DELETE";
    rq.path = path;
    rq.ak = f->ak;
    rq.serial = f->serial;
    rq.upload_fd = -1;
    kmdc_crash_point("fetch:before-ack");
    rc = kmdc_http_do(f->c, f->base, &rq, &rs);
    if (rc != KMDC_EXIT_OK || kmdc_http_exit_resp(rc, &rs) != KMDC_EXIT_OK)
        rc = kmdc_http_report("acknowledge", rc, &rs);
    kmdc_http_resp_free(&rs);
    return rc;
}

/*
 * Fetch one delivery.  Returns an exit code: 0 written (or already written)
 * and acknowledged; 1 the envelope failed (left in the mailbox, reported);
 * 4/5/6 the datacenter refused or is unreachable (stop).
 */
static int
fetch_one(fetch_env *f, const dlv *d)
{
    kmdc_http_req rq;
    kmdc_http_resp rs;
    kmdc_open *o = NULL;
    kmdc_recv r;
    kmdc_recv_done dn;
    kmdc_err e;
    const char *written;
    char path[64], tmp[64], fallback[32], final[512], record[KMDC_CARD_MAX_FILENAME + 1];
    char what[64], local[KMDC_NAME_MAX + 2];
    int rc = KMDC_EXIT_OK, hrc, fd = -1;

    memset(&r, 0, sizeof r);
    memset(&rs, 0, sizeof rs);
    kmdc_err_clear(&e);
    tmp[0] = '\0';
    snprintf(what, sizeof what, "delivery %016" PRIx64, d->id);
    if ((rc = kmdc_cli_load(f->c, &r.card)) != KMDC_EXIT_OK)
        return rc;
    kmdc_recv_temp_name(tmp, sizeof tmp, f->serial, d->id);
    if (kmdc_card_delivery_lookup(r.card, d->id, &written, NULL) != KMDC_OK &&
        kmdc_card_delivery_lookup(r.card, KMDC_OPENED_ID(d->seq), &written, NULL) == KMDC_OK) {
        tmp[0] = '\0';
        kmdc_cli_info(f->c, "%s was opened with kmdc open (%s); acknowledging it", what, written);
        rc = ack(f, d->id);
        goto out;
    }
    if (kmdc_card_delivery_lookup(r.card, d->id, &written, NULL) == KMDC_OK) {
        struct stat st;
        const char *slash = strrchr(written, '/');
        /* recorded, but a crash came before the rename: finish it */
        if (fstatat(f->dirfd, tmp, &st, AT_SYMLINK_NOFOLLOW) == 0 && S_ISREG(st.st_mode)) {
            snprintf(fallback, sizeof fallback, "delivery-%016" PRIx64, d->id);
            if (kmdc_recv_place(f->dirfd, tmp, slash ? slash + 1 : written, fallback, final,
                                sizeof final) != 0 || fsync(f->dirfd) != 0) {
                rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: cannot move the document into place "
                                   "in %s: %s", what, f->dir, strerror(errno));
                tmp[0] = '\0';
                goto out;
            }
            tmp[0] = '\0';
            kmdc_recv_record_path(record, sizeof record, f->dir, final, final);
            (void)report_written(f, d->id, record);
        } else {
            tmp[0] = '\0';
            kmdc_cli_info(f->c, "%s was written before; acknowledging it again", what);
        }
        rc = ack(f, d->id);
        goto out;
    }
    (void)unlinkat(f->dirfd, tmp, 0);    /* a partial one of a crashed fetch */
    if ((fd = openat(f->dirfd, tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW,
                     0600)) < 0) {
        tmp[0] = '\0';
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot create a file in %s: %s", f->dir,
                           strerror(errno));
        goto out;
    }
    r.c = f->c;
    r.has_expect = 1;
    r.expect_seq = d->seq;
    r.out_fd = fd;
    if ((o = kmdc_open_new(KMDC_DIR_DOWN, &kmdc_recv_cbs, &r, &e)) == NULL) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    memset(&rq, 0, sizeof rq);
    snprintf(path, sizeof path, "/mailbox/%016" PRIx64 "/%016" PRIx64, f->serial, d->id);
    rq.method = "GET";
    rq.path = path;
    rq.ak = f->ak;
    rq.serial = f->serial;
    rq.upload_fd = -1;
    rq.sink = sink_open;
    rq.sink_arg = o;
    rq.progress_label = what;
    hrc = kmdc_http_do(f->c, f->base, &rq, &rs);
    if (hrc == KMDC_EXIT_FAIL && rs.sink_failed) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s is refused and left in the mailbox: %s", what,
                           rs.sink_err.msg);
        goto out;
    }
    if (hrc != KMDC_EXIT_OK || rs.status != 200) {
        rc = kmdc_http_report(what, hrc, &rs);
        if (rc == KMDC_EXIT_OK)
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: unexpected answer %ld", what, rs.status);
        goto out;
    }
    if (kmdc_open_final(o, &e) != KMDC_OK) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s is refused and left in the mailbox: %s", what,
                           e.msg);
        goto out;
    }
    if (fsync(fd) != 0 || close(fd) != 0) {
        fd = -1;
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write %s/%s: %s", f->dir, tmp, strerror(errno));
        goto out;
    }
    fd = -1;
    /*
     * Record "delivery -> file" (and erase the message key) BEFORE the final
     * rename, as docs/PROTOCOL.md section 4 asks: the document is already safe in its .part
     * file, which a later run finishes (see above) if a crash comes between
     * the record and the rename.  So a crash neither loses the document nor
     * writes it twice.
     */
    snprintf(fallback, sizeof fallback, "delivery-%016" PRIx64, d->id);
    kmdc_recv_record_path(record, sizeof record, f->dir,
                          kmdc_recv_local_name(&r.meta, fallback, local, sizeof local), fallback);
    dn.seq = r.seq;
    dn.id = d->id;
    dn.name = record;
    if ((rc = kmdc_cli_update(f->c, kmdc_recv_done_fn, &dn, NULL)) != KMDC_EXIT_OK)
        goto out;
    kmdc_crash_point("fetch:after-record");
    if (kmdc_recv_place(f->dirfd, tmp,
                        kmdc_recv_local_name(&r.meta, fallback, local, sizeof local),
                        fallback, final, sizeof final) != 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: cannot move the document into place in %s: %s",
                           what, f->dir, strerror(errno));
        tmp[0] = '\0';                  /* keep it: the next run finishes it */
        goto out;
    }
    tmp[0] = '\0';
    if (fsync(f->dirfd) != 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot fsync %s: %s", f->dir, strerror(errno));
        goto out;
    }
    kmdc_crash_point("fetch:after-rename");
    kmdc_recv_record_path(record, sizeof record, f->dir, final, final);
    rc = report_written(f, d->id, record);
    if (rc == KMDC_EXIT_OK)
        rc = ack(f, d->id);
out:
    if (fd >= 0)
        close(fd);
    if (tmp[0] != '\0')
        (void)unlinkat(f->dirfd, tmp, 0);
    kmdc_open_free(o);
    kmdc_http_resp_free(&rs);
    kmdc_card_free(r.card);
    kmdc_wipe(&r.meta, sizeof r.meta);
    return rc;
}

/*
 * One pass: list the mailbox (etag receives its ETag), fetch every delivery
 * in seq order.  Returns an exit code: 1 when some delivery failed to verify
 * (the others were handled), 4/5/6/7 when the pass had to stop.
 */
static int
fetch_pass(fetch_env *f, char *etag, size_t etagcap)
{
    kmdc_http_req rq;
    kmdc_http_resp rs;
    dlv *v = NULL;
    size_t n = 0, i;
    char path[64];
    int rc, r, failed = 0;

    memset(&rq, 0, sizeof rq);
    snprintf(path, sizeof path, "/mailbox/%016" PRIx64, f->serial);
    rq.method = "GET";
    rq.path = path;
    rq.ak = f->ak;
    rq.serial = f->serial;
    rq.upload_fd = -1;
    rc = kmdc_http_do(f->c, f->base, &rq, &rs);
    if (rc != KMDC_EXIT_OK || rs.status != 200) {
        rc = kmdc_http_report("mailbox", rc, &rs);
        if (rc == KMDC_EXIT_OK)
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "mailbox: unexpected answer %ld", rs.status);
        goto out;
    }
    if (etag != NULL)
        snprintf(etag, etagcap, "%s", rs.etag);
    if ((rc = parse_listing(rs.body, rs.bodylen, &v, &n)) != KMDC_EXIT_OK)
        goto out;
    for (i = 0; i < n && !kmdc_http_interrupted; i++) {
        r = fetch_one(f, &v[i]);
        if (r == KMDC_EXIT_OK)
            continue;
        if (r == KMDC_EXIT_FAIL) {
            failed = 1;            /* reported; the next delivery may be fine */
            continue;
        }
        rc = r;
        goto out;
    }
    if (failed)
        rc = KMDC_EXIT_FAIL;
out:
    free(v);
    kmdc_http_resp_free(&rs);
    return rc;
}

static const struct option dir_long[] = { { "dir", required_argument, NULL, 'd' } };

/* Parse [-d DIR], take the recv lock, load the card, open DIR. */
static int
fetch_setup(kmdc_cli *c, const char *cmdname, int argc, char **argv, fetch_env *f,
            kmdc_card_lockh **lk)
{
    kmdc_recv_opts o = { NULL, "." };
    int rc, first;

    memset(f, 0, sizeof *f);
    f->dirfd = -1;
    f->c = c;
    rc = kmdc_cli_parse(c, kmdc_cli_find(cmdname), argc, argv, dir_long, 1, "d:", kmdc_recv_opt, &o,
                        &first);
    if (rc >= 0)
        return rc;
    if (first < argc)
        return kmdc_cli_usage(c, "unexpected argument '%s'", argv[first]);
    f->dir = o.dir;
    if ((f->dirfd = open(o.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot open the folder %s: %s", o.dir,
                             strerror(errno));
    if ((rc = kmdc_cli_lock(c, KMDC_LOCK_RECV, lk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_load(c, &f->card)) != KMDC_EXIT_OK)
        return rc;
    if ((rc = kmdc_cli_need_active(f->card)) != KMDC_EXIT_OK)
        return rc;
    f->serial = kmdc_card_serial(f->card);
    f->ak = kmdc_card_ak(f->card);
    snprintf(f->base, sizeof f->base, "%s", kmdc_cli_base_url(c, f->card));
    kmdc_recv_sweep_temps(f->dirfd, f->serial, f->card);
    return -1;
}

static void
fetch_teardown(fetch_env *f, kmdc_card_lockh *lk)
{
    if (f->dirfd >= 0)
        close(f->dirfd);
    kmdc_card_free(f->card);
    kmdc_card_unlock(lk);
}

int
kmdc_cmd_fetch(kmdc_cli *c, int argc, char **argv)
{
    kmdc_card_lockh *lk = NULL;
    fetch_env f;
    json_t *doc;
    int rc;

    rc = fetch_setup(c, "fetch", argc, argv, &f, &lk);
    if (rc < 0 && c->json && (f.written = json_array()) == NULL)
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
    if (rc < 0)
        rc = fetch_pass(&f, NULL, 0);
    if (f.written != NULL) {
        doc = json_pack("{s:O, s:i}", "written", f.written, "exit", rc);
        if (kmdc_cli_print_json(doc) != KMDC_EXIT_OK)
            rc = KMDC_EXIT_FAIL;
        json_decref(doc);
        json_decref(f.written);
        f.written = NULL;
    }
    fetch_teardown(&f, lk);
    return rc;
}

/* Sleep up to s seconds, returning early on SIGINT/SIGTERM. */
static void
pause_for(unsigned s)
{
    while (s > 0 && !kmdc_http_interrupted)
        s = sleep(s);
}

int
kmdc_cmd_watch(kmdc_cli *c, int argc, char **argv)
{
    kmdc_card_lockh *lk = NULL;
    kmdc_http_req rq;
    kmdc_http_resp rs;
    fetch_env f;
    char etag[sizeof rs.etag], path[80];
    unsigned backoff = BACKOFF_MIN;
    int rc, hrc, need_fetch = 1;

    etag[0] = '\0';
    rc = fetch_setup(c, "watch", argc, argv, &f, &lk);
    if (rc >= 0)
        goto out;
    rc = KMDC_EXIT_OK;
    snprintf(path, sizeof path, "/mailbox/%016" PRIx64 "?wait=%d", f.serial, WAIT_SECONDS);
    while (!kmdc_http_interrupted) {
        if (need_fetch) {
            hrc = fetch_pass(&f, etag, sizeof etag);
            if (hrc == KMDC_EXIT_NETWORK) {
                pause_for(backoff);
                backoff = backoff * 2 < BACKOFF_MAX ? backoff * 2 : BACKOFF_MAX;
                continue;
            }
            if (hrc != KMDC_EXIT_OK && hrc != KMDC_EXIT_FAIL) {
                rc = hrc;         /* refused, authentication, card: stop */
                break;
            }
            need_fetch = 0;
            backoff = BACKOFF_MIN;
        }
        memset(&rq, 0, sizeof rq);
        rq.method = "GET";
        rq.path = path;
        rq.ak = f.ak;
        rq.serial = f.serial;
        rq.upload_fd = -1;
        rq.if_none_match = etag;
        rq.idle_timeout = WAIT_SECONDS + 30;
        hrc = kmdc_http_do(c, f.base, &rq, &rs);
        if (kmdc_http_interrupted) {
            kmdc_http_resp_free(&rs);
            break;
        }
        if (hrc == KMDC_EXIT_OK && rs.status == 304) {
            kmdc_http_resp_free(&rs);
            continue;
        }
        if (hrc == KMDC_EXIT_OK && rs.status == 200) {
            need_fetch = 1;
        } else {
            int r = kmdc_http_report("mailbox", hrc, &rs);
            if (r != KMDC_EXIT_NETWORK) {
                rc = r != KMDC_EXIT_OK ? r : KMDC_EXIT_FAIL;
                kmdc_http_resp_free(&rs);
                break;
            }
            kmdc_cli_info(c, "watch: trying again in %u s", backoff);
            pause_for(backoff);
            backoff = backoff * 2 < BACKOFF_MAX ? backoff * 2 : BACKOFF_MAX;
            need_fetch = 1;
        }
        kmdc_http_resp_free(&rs);
    }
out:
    fetch_teardown(&f, lk);
    return rc;
}
