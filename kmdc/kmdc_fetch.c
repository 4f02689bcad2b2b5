/*
 * kmdc_fetch.c - receiving: `kmdc fetch`, `kmdc watch` and `kmdc open`, with
 * the card's receive rules (docs/PROTOCOL.md section 4):
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
#include "kmdc_tlv.h"
#include "kmdc_util.h"

#define IO_BUF 65536
#define MAX_DELIVERIES 100000     /* listed deliveries handled in one pass */
#define MAX_SUFFIX 9999           /* "name (9999).ext" at most */
#define WAIT_SECONDS 60           /* ?wait=S, the datacenter clamps to 60 */
#define STDOUT_RECORD "(standard output)"
#define BACKOFF_MIN 1             /* watch: first pause after a failure, seconds */
#define BACKOFF_MAX 60            /* ... doubling up to this */

/* ---- the receive core ------------------------------------------------------------- */

typedef struct recv_ctx {
    kmdc_cli *c;
    kmdc_card *card;          /* a loaded copy: keys for on_header */
    int has_expect;           /* the listing's seq must match the header's */
    uint64_t expect_seq;
    int out_fd;               /* where verified plaintext goes */
    int print_fields;         /* open: the TLV fields to stderr */
    int advanced;             /* the card was saved past this seq */
    uint64_t seq;
    kmdc_meta meta;           /* after on_meta */
} recv_ctx;

static kmdc_status
on_header(void *arg, const kmdc_header *h, uint8_t mk_out[32], kmdc_err *err)
{
    recv_ctx *r = arg;

    if (h->serial != kmdc_card_serial(r->card))
        return kmdc_err_set(err, KMDC_ERR_FORMAT, "the envelope is for card %016" PRIx64
                            ", not this card", h->serial);
    if (r->has_expect && h->seq != r->expect_seq)
        return kmdc_err_set(err, KMDC_ERR_FORMAT, "the envelope's counter %" PRIu64
                            " is not the one listed (%" PRIu64 ")", h->seq, r->expect_seq);
    r->seq = h->seq;
    return kmdc_card_down_key(r->card, h->seq, mk_out, err);
}

/* Advance the down chain over seq and save the card (CARD lock held). */
static kmdc_status
card_advance(kmdc_cli *c, uint64_t seq, kmdc_err *err)
{
    kmdc_card_lockh *lk = NULL;
    kmdc_card *card = NULL;
    const char *pass = NULL;
    kmdc_status st;

    if (kmdc_cli_passphrase(c, &pass) != KMDC_EXIT_OK)
        return kmdc_err_set(err, KMDC_ERR_PASSPHRASE, "cannot read the passphrase file");
    if ((st = kmdc_card_lock(c->card_path, KMDC_LOCK_CARD, 1, &lk, err)) != KMDC_OK)
        return st;
    if ((st = kmdc_card_load(c->card_path, pass, &card, err)) == KMDC_OK &&
        (st = kmdc_card_down_advance(card, seq, err)) == KMDC_OK)
        st = kmdc_card_save(card, c->card_path, pass, err);
    kmdc_card_free(card);
    kmdc_card_unlock(lk);
    return st;
}

static void
print_fields(const kmdc_meta *m)
{
    time_t t;
    struct tm tm;
    char when[64];

    if (m->has_from)
        fprintf(stderr, "from: %s (card %016" PRIx64 ")\n", m->from, m->fromserial);
    if (m->has_name)
        fprintf(stderr, "name: %s\n", (const char *)m->name);
    if (m->has_type)
        fprintf(stderr, "type: %s\n", m->type);
    fprintf(stderr, "size: %" PRIu64 "\n", m->size);
    if (m->has_sent) {
        t = (time_t)(m->sent / 1000u);
        if (gmtime_r(&t, &tm) != NULL && strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ", &tm) > 0)
            fprintf(stderr, "sent: %s (the sender's clock)\n", when);
    }
    if (m->has_msgid)
        fprintf(stderr, "message: %016" PRIx64 "\n", m->msgid);
}

static kmdc_status
on_meta(void *arg, const kmdc_header *h, const kmdc_meta *m, kmdc_err *err)
{
    recv_ctx *r = arg;
    kmdc_status st;

    /* The decoder checked these; a receiver checks them again before it uses them. */
    if (m->has_name && !kmdc_name_valid(m->name, m->name_len))
        return kmdc_err_set(err, KMDC_ERR_NAME, "the envelope's NAME breaks the rules");
    if (!m->has_from || !kmdc_address_valid(m->from, strlen(m->from)) || !m->has_size)
        return kmdc_err_set(err, KMDC_ERR_FORMAT, "the envelope lacks FROM or SIZE");
    if ((st = card_advance(r->c, h->seq, err)) != KMDC_OK)
        return st;
    r->advanced = 1;
    r->meta = *m;
    kmdc_crash_point("fetch:after-advance");
    if (r->print_fields)
        print_fields(m);
    return KMDC_OK;
}

static kmdc_status
on_data(void *arg, const uint8_t *pt, size_t len, kmdc_err *err)
{
    recv_ctx *r = arg;

    if (kmdc_cli_write_all(r->out_fd, pt, len) != 0)
        return kmdc_err_set(err, KMDC_ERR_IO, "cannot write the document: %s", strerror(errno));
    return KMDC_OK;
}

static const struct kmdc_open_cbs recv_cbs = { on_header, on_meta, on_data };

/* Record delivery id (seq) as written to `name`, erasing its key. */
typedef struct done_ctx {
    uint64_t seq, id;
    const char *name;
} done_ctx;

static kmdc_status
done_fn(void *arg, kmdc_card *card, kmdc_err *err)
{
    done_ctx *d = arg;

    return kmdc_card_down_done(card, d->seq, d->id, d->name, err);
}

/* ---- files ------------------------------------------------------------------------- */

/* The temp file of one delivery, ".kmdc-<serial>-<delivery id>.part". */
static void
delivery_temp_name(char *name, size_t cap, uint64_t serial, uint64_t id)
{
    snprintf(name, cap, ".kmdc-%016" PRIx64 "-%016" PRIx64 ".part", serial, id);
}

/* A fresh temp file ".kmdc-<serial>-<random>.part" in dirfd; name gets its name. */
static int
open_temp(int dirfd, uint64_t serial, char *name, size_t cap)
{
    uint8_t rnd[8];
    char hex[17];
    int fd, tries;

    for (tries = 0; tries < 16; tries++) {
        if (kmdc_random(rnd, sizeof rnd, NULL) != KMDC_OK)
            return -1;
        kmdc_hex_encode(hex, rnd, sizeof rnd);
        snprintf(name, cap, ".kmdc-%016" PRIx64 "-%s.part", serial, hex);
        fd = openat(dirfd, name, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
        if (fd >= 0 || errno != EEXIST)
            return fd;
    }
    return -1;
}

/* Remove temp files a crashed fetch of this card left in dirfd, except
 * those of deliveries the card already recorded: fetch_one finishes them. */
static void
sweep_temps(int dirfd, uint64_t serial, const kmdc_card *card)
{
    char prefix[32];
    DIR *d;
    struct dirent *de;
    int fd = dup(dirfd);
    size_t pl, l;

    if (fd < 0)
        return;
    if ((d = fdopendir(fd)) == NULL) {
        close(fd);
        return;
    }
    snprintf(prefix, sizeof prefix, ".kmdc-%016" PRIx64 "-", serial);
    pl = strlen(prefix);
    while ((de = readdir(d)) != NULL) {
        l = strlen(de->d_name);
        if (l > pl + 5 && strncmp(de->d_name, prefix, pl) == 0 &&
            strcmp(de->d_name + l - 5, ".part") == 0) {
            uint64_t id;
            if (l == pl + 16 + 5 && kmdc_serial_parse(&id, de->d_name + pl, 16, NULL) == KMDC_OK &&
                kmdc_card_delivery_lookup(card, id, NULL, NULL) == KMDC_OK)
                continue;
            (void)unlinkat(dirfd, de->d_name, 0);
        }
    }
    closedir(d);
}

/* Move tmp to name without replacing anything: 0, -1 (errno), 1 when taken. */
static int
move_noreplace(int dirfd, const char *tmp, const char *name)
{
    if (renameat2(dirfd, tmp, dirfd, name, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno == EEXIST)
        return 1;
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return -1;
    /* A file system without RENAME_NOREPLACE: link never replaces either. */
    if (linkat(dirfd, tmp, dirfd, name, 0) != 0)
        return errno == EEXIST ? 1 : -1;
    (void)unlinkat(dirfd, tmp, 0);
    return 0;
}

/*
 * Put tmp in place under `want` or, when taken, "stem (N).ext"; a name that
 * would be too long falls back to `fallback`.  final receives the name.
 * Returns 0 or -1 (errno set).
 */
static int
place_file(int dirfd, const char *tmp, const char *want, const char *fallback,
           char *final, size_t cap)
{
    const char *base = want, *dot;
    size_t stem;
    int n, r, w;

    for (n = 0; n <= MAX_SUFFIX; n++) {
        dot = strrchr(base, '.');
        if (dot == NULL || dot == base)
            dot = base + strlen(base);
        stem = (size_t)(dot - base);
        if (n == 0)
            w = snprintf(final, cap, "%s", base);
        else
            w = snprintf(final, cap, "%.*s (%d)%s", (int)stem, base, n, dot);
        if (w < 0 || (size_t)w >= cap || w > 255) {
            if (base == fallback) {
                errno = ENAMETOOLONG;
                return -1;
            }
            base = fallback;
            n = -1;
            continue;
        }
        r = move_noreplace(dirfd, tmp, final);
        if (r <= 0)
            return r;
    }
    errno = EEXIST;
    return -1;
}

/* The file name for a delivery's NAME (a '_' before a leading '.' or '-',
 * kmdc_name_local), else fallback.  local has room for KMDC_NAME_MAX + 2. */
static const char *
local_name(const kmdc_meta *m, const char *fallback, char *local, size_t cap)
{
    if (m->has_name && kmdc_name_local(m->name, m->name_len, local, cap) > 0)
        return local;
    return fallback;
}

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
    recv_ctx r;
    done_ctx dn;
    kmdc_err e;
    const char *written;
    char path[64], tmp[64], fallback[32], final[512], record[KMDC_CARD_MAX_FILENAME + 1];
    char what[64], local[KMDC_NAME_MAX + 2];
    int rc = KMDC_EXIT_OK, hrc, fd = -1, w;

    memset(&r, 0, sizeof r);
    memset(&rs, 0, sizeof rs);
    kmdc_err_clear(&e);
    tmp[0] = '\0';
    snprintf(what, sizeof what, "delivery %016" PRIx64, d->id);
    if ((rc = kmdc_cli_load(f->c, &r.card)) != KMDC_EXIT_OK)
        return rc;
    delivery_temp_name(tmp, sizeof tmp, f->serial, d->id);
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
            if (place_file(f->dirfd, tmp, slash ? slash + 1 : written, fallback, final,
                           sizeof final) != 0 || fsync(f->dirfd) != 0) {
                rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: cannot move the document into place "
                                   "in %s: %s", what, f->dir, strerror(errno));
                tmp[0] = '\0';
                goto out;
            }
            tmp[0] = '\0';
            w = strcmp(f->dir, ".") == 0 ? snprintf(record, sizeof record, "%s", final)
                                         : snprintf(record, sizeof record, "%s/%s", f->dir, final);
            if (w < 0 || (size_t)w >= sizeof record)
                snprintf(record, sizeof record, "%s", final);
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
    if ((o = kmdc_open_new(KMDC_DIR_DOWN, &recv_cbs, &r, &e)) == NULL) {
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
    {
        const char *want = local_name(&r.meta, fallback, local, sizeof local);
        w = strcmp(f->dir, ".") == 0 ? snprintf(record, sizeof record, "%s", want)
                                     : snprintf(record, sizeof record, "%s/%s", f->dir, want);
        if (w < 0 || (size_t)w >= sizeof record)
            snprintf(record, sizeof record, "%s", fallback);
    }
    dn.seq = r.seq;
    dn.id = d->id;
    dn.name = record;
    if ((rc = kmdc_cli_update(f->c, done_fn, &dn, NULL)) != KMDC_EXIT_OK)
        goto out;
    kmdc_crash_point("fetch:after-record");
    if (place_file(f->dirfd, tmp, local_name(&r.meta, fallback, local, sizeof local),
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
    w = strcmp(f->dir, ".") == 0 ? snprintf(record, sizeof record, "%s", final)
                                 : snprintf(record, sizeof record, "%s/%s", f->dir, final);
    if (w < 0 || (size_t)w >= sizeof record)
        snprintf(record, sizeof record, "%s", final);
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

typedef struct dir_opts {
    const char *dir;
} dir_opts;

static int
dir_opt(kmdc_cli *c, void *ctx, int opt, const char *arg)
{
    dir_opts *o = ctx;

    if (opt == 'd') {
        o->dir = arg;
        return 0;
    }
    return kmdc_cli_usage(c, "unknown option");
}

static const struct option dir_long[] = { { "dir", required_argument, NULL, 'd' } };

/* Parse [-d DIR], take the recv lock, load the card, open DIR. */
static int
fetch_setup(kmdc_cli *c, const char *cmdname, int argc, char **argv, fetch_env *f,
            kmdc_card_lockh **lk)
{
    dir_opts o = { "." };
    int rc, first;

    memset(f, 0, sizeof *f);
    f->dirfd = -1;
    f->c = c;
    rc = kmdc_cli_parse(c, kmdc_cli_find(cmdname), argc, argv, dir_long, 1, "d:", dir_opt, &o,
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
    if (kmdc_card_get_state(f->card) != KMDC_CARD_ACTIVE)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "the card is not activated yet (run kmdc activate CODE)");
    f->serial = kmdc_card_serial(f->card);
    f->ak = kmdc_card_ak(f->card);
    snprintf(f->base, sizeof f->base, "%s", kmdc_cli_base_url(c, f->card));
    sweep_temps(f->dirfd, f->serial, f->card);
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
        if (doc == NULL || json_dumpf(doc, stdout, JSON_INDENT(2)) != 0 ||
            fputc('\n', stdout) == EOF || fflush(stdout) != 0)
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
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

/* ---- open ------------------------------------------------------------------------- */

typedef struct open_opts {
    const char *out;
    const char *dir;
} open_opts;

static int
open_opt(kmdc_cli *c, void *ctx, int opt, const char *arg)
{
    open_opts *o = ctx;

    if (opt == 'o') {
        o->out = arg;
        return 0;
    }
    if (opt == 'd') {
        o->dir = arg;
        return 0;
    }
    return kmdc_cli_usage(c, "unknown option");
}

int
kmdc_cmd_open(kmdc_cli *c, int argc, char **argv)
{
    static const struct option own[] = {
        { "out", required_argument, NULL, 'o' },
        { "dir", required_argument, NULL, 'd' },
    };
    open_opts oo = { NULL, NULL };
    kmdc_open *o = NULL;
    recv_ctx r;
    done_ctx dn;
    kmdc_err e;
    uint8_t *buf = NULL;
    char tmp[600], final[512], fallback[32], record[KMDC_CARD_MAX_FILENAME + 1];
    char local[KMDC_NAME_MAX + 2];
    const char *where;
    ssize_t n;
    int rc, first, in = -1, dirfd = -1, fd = -1, to_stdout, w, special = 0;

    memset(&r, 0, sizeof r);
    kmdc_err_clear(&e);
    tmp[0] = '\0';
    rc = kmdc_cli_parse(c, kmdc_cli_find("open"), argc, argv, own, 2, "o:d:", open_opt, &oo,
                        &first);
    if (rc >= 0)
        return rc;
    if (argc - first != 1)
        return kmdc_cli_usage(c, "open takes one FILE (or '-' for standard input)");
    if (oo.out != NULL && oo.dir != NULL)
        return kmdc_cli_usage(c, "give -o OUT or -d DIR, not both");
    to_stdout = oo.dir == NULL && (oo.out == NULL || strcmp(oo.out, "-") == 0);

    if (strcmp(argv[first], "-") == 0)
        in = STDIN_FILENO;
    else if ((in = open(argv[first], O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot open %s: %s", argv[first], strerror(errno));
    if ((rc = kmdc_cli_load(c, &r.card)) != KMDC_EXIT_OK)
        goto out;
    if (kmdc_card_get_state(r.card) != KMDC_CARD_ACTIVE) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "the card is not activated yet (run kmdc activate CODE)");
        goto out;
    }
    where = oo.dir != NULL ? oo.dir : ".";
    if (oo.dir != NULL) {
        if ((dirfd = open(oo.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot open the folder %s: %s", oo.dir,
                               strerror(errno));
            goto out;
        }
        if ((fd = open_temp(dirfd, kmdc_card_serial(r.card), tmp, sizeof tmp)) < 0) {
            tmp[0] = '\0';
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot create a file in %s: %s", oo.dir,
                               strerror(errno));
            goto out;
        }
    } else if (!to_stdout && kmdc_cli_is_special(oo.out)) {
        /* a device or a pipe: write to it, never rename a file over it */
        if ((fd = open(oo.out, O_WRONLY | O_CLOEXEC)) < 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot open %s: %s", oo.out, strerror(errno));
            goto out;
        }
        special = 1;
    } else if (!to_stdout) {
        snprintf(tmp, sizeof tmp, "%s.kmdc-XXXXXX", oo.out);
        if (strlen(oo.out) > 500 || (fd = mkostemp(tmp, O_CLOEXEC)) < 0) {
            tmp[0] = '\0';
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot create a file beside %s: %s", oo.out,
                               strerror(errno));
            goto out;
        }
    } else {
        fd = STDOUT_FILENO;
    }
    r.c = c;
    r.out_fd = fd;
    r.print_fields = 1;
    if ((o = kmdc_open_new(KMDC_DIR_DOWN, &recv_cbs, &r, &e)) == NULL ||
        (buf = malloc(IO_BUF)) == NULL) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot start the reader: %s",
                           e.msg[0] ? e.msg : "out of memory");
        goto out;
    }
    for (;;) {
        n = read(in, buf, IO_BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot read %s: %s", argv[first], strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        if (kmdc_open_update(o, buf, (size_t)n, &e) != KMDC_OK)
            break;
    }
    if (e.code != KMDC_OK || kmdc_open_final(o, &e) != KMDC_OK) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: the envelope is refused: %s%s", argv[first],
                           e.msg, to_stdout && r.advanced
                               ? " (what was written to standard output is not valid)" : "");
        goto out;
    }
    if (!to_stdout) {
        if ((!special && fsync(fd) != 0) || close(fd) != 0) {
            fd = -1;
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the document: %s", strerror(errno));
            goto out;
        }
        fd = -1;
    }
    if (oo.dir != NULL) {
        snprintf(fallback, sizeof fallback, "message-%016" PRIx64,
                 r.meta.has_msgid ? r.meta.msgid : r.seq);
        if (place_file(dirfd, tmp, local_name(&r.meta, fallback, local, sizeof local),
                       fallback, final, sizeof final) != 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot move the document into place in %s: %s",
                               where, strerror(errno));
            goto out;
        }
        tmp[0] = '\0';
        (void)fsync(dirfd);
        w = strcmp(oo.dir, ".") == 0 ? snprintf(record, sizeof record, "%s", final)
                                     : snprintf(record, sizeof record, "%s/%s", oo.dir, final);
        if (w < 0 || (size_t)w >= sizeof record)
            snprintf(record, sizeof record, "%s", final);
    } else if (special) {
        snprintf(record, sizeof record, "%s", oo.out);
    } else if (!to_stdout) {
        if (rename(tmp, oo.out) != 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot rename the document to %s: %s", oo.out,
                               strerror(errno));
            goto out;
        }
        tmp[0] = '\0';
        (void)kmdc_cli_fsync_parent(oo.out);
        snprintf(record, sizeof record, "%s", oo.out);
    } else {
        snprintf(record, sizeof record, "%s", STDOUT_RECORD);
    }
    /* Erase the message key; the record says "seq opened offline", so that a
     * later kmdc fetch that lists this delivery just acknowledges it. */
    dn.seq = r.seq;
    dn.id = KMDC_OPENED_ID(r.seq);
    dn.name = record;
    if ((rc = kmdc_cli_update(c, done_fn, &dn, NULL)) != KMDC_EXIT_OK)
        goto out;
    if (!to_stdout)
        printf("%s\n", record);
    if (fflush(stdout) != 0)
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
out:
    if (fd >= 0 && fd != STDOUT_FILENO)
        close(fd);
    if (tmp[0] != '\0')
        (void)(dirfd >= 0 ? unlinkat(dirfd, tmp, 0) : unlink(tmp));
    if (dirfd >= 0)
        close(dirfd);
    if (in >= 0 && in != STDIN_FILENO)
        close(in);
    kmdc_open_free(o);
    if (buf != NULL)
        kmdc_freezero(buf, IO_BUF);
    kmdc_card_free(r.card);
    kmdc_wipe(&r.meta, sizeof r.meta);
    return rc;
}
