/*
 * kmdc_send.c - `kmdc send` (the outbox protocol of docs/PROTOCOL.md
 * section 4) and `kmdc outbox` (list or send what waits in it).  Sealing
 * itself (input, counter, metadata) is in kmdc_seal.c; the steps for one
 * document are described at its head.
 */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <time.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "kmdc_cli.h"
#include "kmdc_envelope.h"
#include "kmdc_http.h"
#include "kmdc_outbox.h"
#include "kmdc_parse.h"
#include "kmdc_tlv.h"
#include "kmdc_util.h"

#define IO_BUF 65536
#define ENVELOPE_TYPE "application/vnd.kmdc.envelope"

/* ---- options ------------------------------------------------------------------------- */

static const struct option send_long[] = {
    { "to", required_argument, NULL, KMDC_SEAL_OPT_TO },
    { "name", required_argument, NULL, KMDC_SEAL_OPT_NAME },
    { "type", required_argument, NULL, KMDC_SEAL_OPT_TYPE },
    { "again", no_argument, NULL, KMDC_SEAL_OPT_AGAIN },
    { "outbox", no_argument, NULL, KMDC_SEAL_OPT_OUTBOX },
};
/* ---- send ----------------------------------------------------------------------------- */

/*
 * The outbox protocol of docs/PROTOCOL.md section 4, with the
 * rule "clients never re-seal": every FILE is first compared with the
 * records of the pending outbox entries (SHA-256 and size of the document,
 * recipients, NAME, TYPE); a match is resumed, anything else is sealed into
 * a new entry.  Then every entry goes out in counter order (the datacenter's
 * window needs that order), byte for byte.  Only the datacenter's own answer
 * ends an entry: a 2xx with its documented body, or its JSON error for a
 * refusal that spent the counter.  Anything else (no answer, a passing
 * refusal, a page that is not the datacenter's) keeps it and stops.
 */

typedef struct pending {
    uint64_t seq;
    int has_rec;
    kmdc_outbox_rec *rec;     /* malloc'd when has_rec */
    int file;                 /* index in argv of the FILE it serves, or -1 */
    int resumed;              /* a FILE of this run matched it */
    int fresh;                /* sealed by this run */
} pending;

typedef struct send_run {
    kmdc_cli *c;
    char base[KMDC_CARD_MAX_URL + 1];
    pending *v;
    size_t n, cap;
    json_t *results;          /* --json: one object per entry or FILE */
} send_run;

static int
cmp_pending(const void *a, const void *b)
{
    const pending *x = a, *y = b;

    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

static pending *
add_pending(send_run *s, uint64_t seq)
{
    pending *nv;

    if (s->n == s->cap) {
        size_t ncap = s->cap ? s->cap * 2 : 16;
        if ((nv = realloc(s->v, ncap * sizeof *nv)) == NULL)
            return NULL;
        s->v = nv;
        s->cap = ncap;
    }
    memset(&s->v[s->n], 0, sizeof s->v[s->n]);
    s->v[s->n].seq = seq;
    s->v[s->n].file = -1;
    return &s->v[s->n++];
}

static void
free_pending(send_run *s)
{
    size_t i;

    for (i = 0; i < s->n; i++)
        free(s->v[i].rec);
    free(s->v);
    s->v = NULL;
    s->n = s->cap = 0;
}

/* SHA-256 of the size bytes of fd from its start; the offset is put back to 0. */
static int
hash_fd(int fd, uint64_t size, uint8_t out[32])
{
    kmdc_sha256_ctx *h = NULL;
    uint8_t *buf = NULL;
    uint64_t left = size;
    ssize_t n;
    int rc = -1;

    if (lseek(fd, 0, SEEK_SET) != 0 || (buf = malloc(IO_BUF)) == NULL ||
        (h = kmdc_sha256_new(NULL)) == NULL)
        goto out;
    while (left > 0) {
        n = kmdc_cli_read(fd, buf, left < IO_BUF ? (size_t)left : IO_BUF);
        if (n <= 0)
            goto out;
        if (kmdc_sha256_update(h, buf, (size_t)n, NULL) != KMDC_OK)
            goto out;
        left -= (uint64_t)n;
    }
    if (kmdc_sha256_final(h, out, NULL) != KMDC_OK || lseek(fd, 0, SEEK_SET) != 0)
        goto out;
    rc = 0;
out:
    kmdc_sha256_free(h);
    if (buf != NULL)
        kmdc_freezero(buf, IO_BUF);
    return rc;
}

static void
json_add(send_run *s, json_t *o)
{
    if (s->results != NULL && o != NULL)
        json_array_append_new(s->results, o);
    else
        json_decref(o);
}

/* The label of an entry in messages and in the output line. */
static void
entry_label(const send_run *s, const pending *p, char **argv, char *out, size_t cap)
{
    (void)s;
    if (p->file >= 0)
        snprintf(out, cap, "%s", argv[p->file]);
    else
        snprintf(out, cap, "outbox:%016" PRIx64, p->seq);
}

/* "recipient 2 of 3 is unknown" -> the address, from the entry's record. */
static void
name_recipient(const pending *p, const kmdc_http_resp *rs)
{
    size_t i, of;

    if (strcmp(rs->error, "unknown_recipient") != 0 || !p->has_rec ||
        kmdc_parse_rcpt_index(rs->message, &i, &of) != 0 || of != p->rec->m.n_rcpt)
        return;
    kmdc_cli_fail(KMDC_EXIT_REFUSED, "the unknown or inactive recipient is '%s'",
                  p->rec->m.rcpt[i - 1]);
}

/*
 * Upload the entry p and handle the answer.  *kept is 1 when the entry stays
 * in the outbox.  Returns an exit code.
 */
static int
upload_entry(send_run *s, pending *p, const char *label, int *kept)
{
    kmdc_cli *c = s->c;
    kmdc_http_req rq;
    kmdc_http_resp rs;
    struct stat st;
    json_t *jo = NULL;
    char *path = NULL, hex[17], idhex[17];
    uint64_t msgid = 0;
    int64_t dlv = 0;
    kmdc_err e;
    int fd = -1, rc, hrc;

    memset(&rq, 0, sizeof rq);
    memset(&rs, 0, sizeof rs);
    kmdc_err_clear(&e);
    *kept = 1;
    kmdc_serial_format(hex, p->seq);
    if (s->results != NULL &&
        (jo = json_pack("{s:s, s:s, s:b}", "file", p->has_rec ? p->rec->file : label,
                        "entry", hex, "resumed", p->resumed)) == NULL)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
    if (kmdc_outbox_path(c->card_path, p->seq, &path, &e) != KMDC_OK) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW)) < 0 || fstat(fd, &st) != 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot read the outbox entry %s: %s", path,
                           strerror(errno));
        goto out;
    }
    rq.method = "POST";
    rq.path = "/send";
    rq.content_type = ENVELOPE_TYPE;
    rq.upload_fd = fd;
    rq.upload_len = (uint64_t)st.st_size;
    rq.progress_label = label;
    hrc = kmdc_http_do(c, s->base, &rq, &rs);
    if (hrc == KMDC_EXIT_OK)
        kmdc_crash_point("send:after-upload");
    if (hrc == KMDC_EXIT_OK && rs.status >= 200 && rs.status < 300) {
        if (kmdc_parse_send_answer(rs.content_type, rs.body, rs.bodylen, &msgid, &dlv) != 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_CONFIG, "%s: the server answered %ld but not as a "
                               "KMDC datacenter does: check the datacenter URL (--url, "
                               "KMDC_URL or the card's)", label, rs.status);
            kmdc_cli_info(c, "the envelope stays in the outbox (entry %s)", hex);
            goto out;
        }
        kmdc_serial_format(idhex, msgid);
        if (jo != NULL) {
            json_object_set_new(jo, "state", json_string("sent"));
            json_object_set_new(jo, "message", json_string(idhex));
            json_object_set_new(jo, "deliveries", json_integer(dlv));
        } else {
            printf("%s %" PRId64 " %s\n", idhex, dlv, label);
        }
        rc = KMDC_EXIT_OK;
        if (fflush(stdout) != 0)
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
    } else if (kmdc_http_final_refusal(hrc, &rs)) {
        rc = kmdc_http_report(label, hrc, &rs);
        name_recipient(p, &rs);
        kmdc_cli_info(c, "that answer is final (the datacenter keeps it for this envelope): "
                      "the envelope was removed from the outbox%s",
                      rs.status == 507 ? "; once the recipient made room, send the document "
                                         "again as a new message with kmdc send --again" : "");
        if (jo != NULL) {
            json_object_set_new(jo, "state", json_string("refused"));
            json_object_set_new(jo, "http_status", json_integer(rs.status));
            json_object_set_new(jo, "error", json_string(rs.error));
            json_object_set_new(jo, "detail", json_string(rs.message));
        }
    } else {
        rc = kmdc_http_report(label, hrc, &rs);
        if (rc == KMDC_EXIT_OK)
            rc = KMDC_EXIT_FAIL;
        kmdc_cli_info(c, "the envelope stays in the outbox (entry %s); %s", hex,
                      rc == KMDC_EXIT_NETWORK
                          ? "run the same kmdc send again later (or kmdc outbox send)"
                          : "fix the cause, then run the same kmdc send again");
        if (jo != NULL) {
            json_object_set_new(jo, "state", json_string("pending"));
            if (rs.status != 0)
                json_object_set_new(jo, "http_status", json_integer(rs.status));
            if (rs.dc_error)
                json_object_set_new(jo, "error", json_string(rs.error));
            json_object_set_new(jo, "detail", json_string(rs.dc_error ? rs.message
                                                                      : rs.neterr));
        }
        goto out;
    }
    close(fd);
    fd = -1;
    *kept = 0;
    if (kmdc_outbox_remove(c->card_path, p->seq, &e) != KMDC_OK)
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
    else
        kmdc_outbox_rec_remove(c->card_path, p->seq);
out:
    if (jo != NULL)
        json_object_set_new(jo, "exit", json_integer(rc));
    json_add(s, jo);
    if (fd >= 0)
        close(fd);
    kmdc_http_resp_free(&rs);
    free(path);
    return rc;
}

/* The record of a FILE about to be sent: path, hash, and its metadata. */
static int
file_record(kmdc_cli *c, const kmdc_seal_opts *o, const char *file, int fd, uint64_t size,
            kmdc_outbox_rec *rec)
{
    char real[PATH_MAX];
    int rc;

    memset(rec, 0, sizeof *rec);
    if ((rc = kmdc_cli_build_meta(c, o, file, size, &rec->m)) != KMDC_EXIT_OK)
        return rc;
    if (strcmp(file, "-") == 0)
        snprintf(rec->file, sizeof rec->file, "-");
    else if (realpath(file, real) != NULL && strlen(real) < sizeof rec->file)
        snprintf(rec->file, sizeof rec->file, "%s", real);
    else
        snprintf(rec->file, sizeof rec->file, "%.*s", (int)sizeof rec->file - 1, file);
    if (hash_fd(fd, size, rec->sha256) != 0)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot read %s: %s", file, strerror(errno));
    return KMDC_EXIT_OK;
}

/* Seal one document (rec->m) from in into a committed outbox entry with its
 * record; rec->seq receives its counter. */
static int
seal_to_outbox(kmdc_cli *c, const char *file, int in, kmdc_outbox_rec *rec)
{
    kmdc_header h;
    kmdc_reserve r;
    kmdc_err e;
    uint64_t serial = 0;
    char *tmp = NULL;
    int rc, ofd = -1;

    memset(&r, 0, sizeof r);
    kmdc_err_clear(&e);
    if ((rc = kmdc_cli_reserve(c, &r, &serial)) != KMDC_EXIT_OK)
        goto out;
    rec->seq = r.seq;
    if (kmdc_outbox_create(c->card_path, r.seq, &ofd, &tmp, &e) != KMDC_OK ||
        kmdc_header_new(&h, KMDC_DIR_UP, serial, r.seq, &e) != KMDC_OK ||
        kmdc_cli_seal_stream(&h, r.mk, &rec->m, in, ofd, &e) != KMDC_OK) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: %s", file, e.msg);
        goto out;
    }
    kmdc_crash_point("send:after-seal");
    if (kmdc_outbox_rec_write(c->card_path, rec, &e) != KMDC_OK) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: %s", file, e.msg);
        goto out;
    }
    rc = kmdc_outbox_commit(c->card_path, r.seq, ofd, tmp, &e) == KMDC_OK
             ? KMDC_EXIT_OK : kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: %s", file, e.msg);
    ofd = -1;
    tmp = NULL;
    if (rc == KMDC_EXIT_OK)
        kmdc_crash_point("send:after-outbox-commit");
    else
        kmdc_outbox_rec_remove(c->card_path, r.seq);
out:
    kmdc_wipe(r.mk, sizeof r.mk);
    if (ofd >= 0 || tmp != NULL)
        kmdc_outbox_abort(ofd, tmp);
    return rc;
}

/* Lock, load, check the card; list the pending entries with their records. */
static int
send_setup(send_run *s, kmdc_card_lockh **lk)
{
    kmdc_card *card = NULL;
    uint64_t *seqs = NULL;
    size_t n = 0, i;
    kmdc_err e;
    pending *p;
    int rc;

    kmdc_err_clear(&e);
    if ((rc = kmdc_cli_lock(s->c, KMDC_LOCK_SEND, lk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_load(s->c, &card)) != KMDC_EXIT_OK)
        goto out;
    if ((rc = kmdc_cli_need_active(card)) != KMDC_EXIT_OK)
        goto out;
    snprintf(s->base, sizeof s->base, "%s", kmdc_cli_base_url(s->c, card));
    if (kmdc_outbox_sweep(s->c->card_path, &e) != KMDC_OK ||
        kmdc_outbox_list(s->c->card_path, &seqs, &n, &e) != KMDC_OK) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    kmdc_outbox_rec_sweep(s->c->card_path, seqs, n);
    for (i = 0; i < n; i++) {
        if ((p = add_pending(s, seqs[i])) == NULL ||
            (p->rec = malloc(sizeof *p->rec)) == NULL) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
            goto out;
        }
        p->has_rec = kmdc_outbox_rec_read(s->c->card_path, seqs[i], p->rec) == 0;
    }
out:
    free(seqs);
    kmdc_card_free(card);
    return rc;
}

/* Send every entry in counter order; stop at the first one kept. */
static int
send_all(send_run *s, char **argv)
{
    char label[KMDC_OUTBOX_FILE_MAX + 32];
    size_t i, k;
    int rc = KMDC_EXIT_OK, r, kept = 0;

    if (s->n > 1)
        qsort(s->v, s->n, sizeof *s->v, cmp_pending);
    for (i = 0; i < s->n && !kmdc_http_interrupted; i++) {
        entry_label(s, &s->v[i], argv, label, sizeof label);
        if (s->v[i].file < 0)
            kmdc_cli_info(s->c, "sending outbox entry %016" PRIx64 " (%s), left by an "
                          "earlier run", s->v[i].seq,
                          s->v[i].has_rec ? s->v[i].rec->file : "no record");
        r = upload_entry(s, &s->v[i], label, &kept);
        if (r != KMDC_EXIT_OK && rc == KMDC_EXIT_OK)
            rc = r;
        if (kept) {
            rc = r;
            for (k = i + 1; k < s->n; k++) {
                entry_label(s, &s->v[k], argv, label, sizeof label);
                kmdc_cli_info(s->c, "%s waits in the outbox (entry %016" PRIx64 ")", label,
                              s->v[k].seq);
                if (s->results != NULL) {
                    char hex[17];
                    kmdc_serial_format(hex, s->v[k].seq);
                    json_add(s, json_pack("{s:s, s:s, s:b, s:s}", "file",
                                          s->v[k].has_rec ? s->v[k].rec->file : label,
                                          "entry", hex, "resumed", s->v[k].resumed,
                                          "state", "pending"));
                }
            }
            break;
        }
    }
    return rc;
}

static int
send_finish(send_run *s, int rc)
{
    json_t *doc;

    if (s->results == NULL)
        return rc;
    doc = json_pack("{s:O, s:i}", "results", s->results, "exit", rc);
    if (kmdc_cli_print_json(doc) != KMDC_EXIT_OK)
        rc = KMDC_EXIT_FAIL;
    json_decref(doc);
    return rc;
}

int
kmdc_cmd_send(kmdc_cli *c, int argc, char **argv)
{
    kmdc_seal_opts o;
    kmdc_card_lockh *lk = NULL;
    send_run s;
    kmdc_outbox_rec rec;
    pending *p;
    uint64_t size = 0;
    size_t i;
    int rc, first, r, fi, stdin_used = 0, in = -1, candidate;

    memset(&o, 0, sizeof o);
    memset(&s, 0, sizeof s);
    kmdc_meta_init(&o.rcpts);
    s.c = c;
    rc = kmdc_cli_parse(c, kmdc_cli_find("send"), argc, argv, send_long,
                        sizeof send_long / sizeof send_long[0], NULL, kmdc_cli_seal_opt, &o,
                        &first);
    if (rc >= 0)
        return rc;
    if (o.outbox_only) {
        if (first < argc || o.rcpts.n_rcpt > 0 || o.name != NULL || o.type != NULL || o.again)
            return kmdc_cli_usage(c, "--outbox sends what the outbox holds: no FILE, --to, "
                                  "--name, --type or --again");
    } else {
        if (first >= argc)
            return kmdc_cli_usage(c, "send needs at least one FILE (or --outbox)");
        if (o.rcpts.n_rcpt == 0)
            return kmdc_cli_usage(c, "send needs --to ADDR");
        if (o.name != NULL && argc - first > 1)
            return kmdc_cli_usage(c, "--name goes with a single FILE");
        for (fi = first; fi < argc; fi++)
            if (strcmp(argv[fi], "-") == 0 && stdin_used++)
                return kmdc_cli_usage(c, "standard input ('-') can be sent once");
    }
    if (c->json && (s.results = json_array()) == NULL)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");

    if ((rc = send_setup(&s, &lk)) != KMDC_EXIT_OK)
        goto out;
    for (fi = first; fi < argc; fi++) {
        if ((r = kmdc_cli_open_input(argv[fi], &in, &size)) != KMDC_EXIT_OK ||
            (r = file_record(c, &o, argv[fi], in, size, &rec)) != KMDC_EXIT_OK) {
            rc = r;
            goto next;
        }
        /* the same send again resumes its entry: never seal a document twice */
        candidate = -1;
        for (i = 0; i < s.n && !o.again; i++)
            if (s.v[i].has_rec && s.v[i].file < 0 && !s.v[i].fresh &&
                kmdc_outbox_rec_same(s.v[i].rec, &rec)) {
                candidate = (int)i;
                break;
            }
        if (candidate >= 0) {
            s.v[candidate].file = fi;
            s.v[candidate].resumed = 1;
            kmdc_cli_info(c, "%s: resuming outbox entry %016" PRIx64 ", sealed earlier from "
                          "the same document for the same recipients (use --again for a "
                          "second copy)", argv[fi], s.v[candidate].seq);
            goto next;
        }
        if ((r = seal_to_outbox(c, argv[fi], in, &rec)) != KMDC_EXIT_OK) {
            rc = r;
            goto next;
        }
        if ((p = add_pending(&s, rec.seq)) == NULL || (p->rec = malloc(sizeof *p->rec)) == NULL) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
            goto out;
        }
        *p->rec = rec;
        p->has_rec = 1;
        p->file = fi;
        p->fresh = 1;
next:
        if (in >= 0 && in != STDIN_FILENO)
            close(in);
        in = -1;
    }
    if (o.outbox_only && s.n == 0)
        kmdc_cli_info(c, "the outbox is empty");
    r = send_all(&s, argv);
    if (r != KMDC_EXIT_OK)
        rc = r;
out:
    if (in >= 0 && in != STDIN_FILENO)
        close(in);
    kmdc_card_unlock(lk);
    rc = send_finish(&s, rc);
    json_decref(s.results);
    free_pending(&s);
    return rc;
}

/* ---- outbox ----------------------------------------------------------------------------- */

int
kmdc_cmd_outbox(kmdc_cli *c, int argc, char **argv)
{
    kmdc_outbox_rec *rec = NULL;
    uint64_t *seqs = NULL;
    size_t n = 0, i, k;
    json_t *arr = NULL, *o, *to;
    char hex[17], when[32], *path;
    struct stat st;
    struct tm tm;
    time_t t;
    kmdc_err e;
    int rc, first;

    kmdc_err_clear(&e);
    rc = kmdc_cli_parse(c, kmdc_cli_find("outbox"), argc, argv, NULL, 0, NULL, NULL, NULL,
                        &first);
    if (rc >= 0)
        return rc;
    rc = KMDC_EXIT_OK;
    if (first < argc && strcmp(argv[first], "send") == 0) {
        char *args[] = { (char *)"send", (char *)"--outbox", NULL };
        if (first + 1 < argc)
            return kmdc_cli_usage(c, "outbox send takes no argument");
        c->cmd = "send";
        return kmdc_cmd_send(c, 2, args);
    }
    if (first < argc && strcmp(argv[first], "list") != 0)
        return kmdc_cli_usage(c, "outbox takes 'list' (the default) or 'send'");
    if (first + 1 < argc)
        return kmdc_cli_usage(c, "unexpected argument '%s'", argv[first + 1]);
    if (access(c->card_path, F_OK) != 0)
        return kmdc_cli_fail(KMDC_EXIT_CARD, "no card at %s (kmdc --help tells where a card is "
                             "looked for)", c->card_path);
    if (kmdc_outbox_list(c->card_path, &seqs, &n, &e) != KMDC_OK)
        return kmdc_cli_fail_err(KMDC_EXIT_CARD, &e);
    if ((rec = malloc(sizeof *rec)) == NULL || (c->json && (arr = json_array()) == NULL)) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
        goto out;
    }
    for (i = 0; i < n; i++) {
        int has = kmdc_outbox_rec_read(c->card_path, seqs[i], rec) == 0;
        kmdc_serial_format(hex, seqs[i]);
        when[0] = '\0';
        if (has && rec->m.has_sent) {
            t = (time_t)(rec->m.sent / 1000u);
            if (gmtime_r(&t, &tm) == NULL || strftime(when, sizeof when, "%Y-%m-%dT%H:%M:%SZ",
                                                       &tm) == 0)
                when[0] = '\0';
        }
        if (arr != NULL) {
            o = json_pack("{s:s}", "entry", hex);
            if (o == NULL) {
                rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
                goto out;
            }
            if (kmdc_outbox_path(c->card_path, seqs[i], &path, &e) == KMDC_OK) {
                if (stat(path, &st) == 0)
                    json_object_set_new(o, "envelope_size", json_integer(st.st_size));
                free(path);
            }
            if (has) {
                to = json_array();
                for (k = 0; to != NULL && k < rec->m.n_rcpt; k++)
                    json_array_append_new(to, json_string(rec->m.rcpt[k]));
                json_object_set_new(o, "file", json_string(rec->file));
                json_object_set_new(o, "size", json_integer((json_int_t)rec->m.size));
                json_object_set_new(o, "to", to != NULL ? to : json_null());
                if (rec->m.has_name)
                    json_object_set_new(o, "name", json_stringn((const char *)rec->m.name,
                                                                rec->m.name_len));
                if (rec->m.has_type)
                    json_object_set_new(o, "type", json_string(rec->m.type));
                if (when[0])
                    json_object_set_new(o, "sealed", json_string(when));
            }
            json_array_append_new(arr, o);
            continue;
        }
        if (!has) {
            printf("%s\t-\t-\t-\t-\t(sealed by an older kmdc: no record)\n", hex);
            continue;
        }
        printf("%s\t%s\t%" PRIu64 "\t", hex, when[0] ? when : "-", rec->m.size);
        for (k = 0; k < rec->m.n_rcpt; k++)
            printf("%s%s", k ? "," : "", rec->m.rcpt[k]);
        printf("\t%s\t%s\n", rec->m.has_name ? (const char *)rec->m.name : "-",
               strcmp(rec->file, "-") == 0 ? "(standard input)" : rec->file);
    }
    if (arr != NULL) {
        o = json_pack("{s:O}", "pending", arr);
        if (kmdc_cli_print_json(o) != KMDC_EXIT_OK)
            rc = KMDC_EXIT_FAIL;
        json_decref(o);
    }
    if (fflush(stdout) != 0 || ferror(stdout))
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
out:
    json_decref(arr);
    free(rec);
    free(seqs);
    return rc;
}
