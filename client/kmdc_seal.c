/*
 * kmdc_seal.c - `kmdc seal` (offline) and `kmdc send` (the outbox protocol of
 * docs/PROTOCOL.md section 4), and the sealing core they share.
 *
 * The order for one document, with the card's send lock held throughout:
 *   1. check the metadata (recipients, NAME, TYPE, SIZE) before any counter
 *      is used;
 *   2. lock CARD, load, reserve counter n, save (up_next = n + 1 on disk),
 *      unlock CARD  -- the card lock is held only for this, so a receiver
 *      is never kept waiting while a large document is sealed;
 *   3. seal into a temp file of the outbox, commit it as <n>.kmdc;
 *   4. upload it byte for byte; on an answer that is final (success or a
 *      refusal that spent the counter) remove the entry.
 * A crash before 3 completes only skips counter n (the datacenter's window
 * absorbs it); after 3 the entry is resent as is by the next send.  No
 * envelope exists whose counter the saved card has not passed.
 */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <jansson.h>

#include "kmdc_cli.h"
#include "kmdc_envelope.h"
#include "kmdc_http.h"
#include "kmdc_tlv.h"
#include "kmdc_util.h"

#define IO_BUF 65536
#define ENVELOPE_TYPE "application/vnd.kmdc.envelope"

/* ---- input --------------------------------------------------------------------- */

/* Copy everything from in to a fresh unlinked 0600 file in $TMPDIR. */
static int
spool(int in, int *out, uint64_t *size)
{
    const char *dir = getenv("TMPDIR");
    char *tmpl = NULL;
    uint8_t *buf = NULL;
    uint64_t total = 0;
    ssize_t n;
    size_t len;
    int fd = -1, rc = KMDC_EXIT_OK;

    if (dir == NULL || dir[0] == '\0')
        dir = "/tmp";
    fd = open(dir, O_TMPFILE | O_RDWR | O_CLOEXEC, 0600);
    if (fd < 0) {
        len = strlen(dir) + sizeof "/kmdc-spool.XXXXXX";
        if ((tmpl = malloc(len)) == NULL) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
            goto out;
        }
        snprintf(tmpl, len, "%s/kmdc-spool.XXXXXX", dir);
        if ((fd = mkstemp(tmpl)) < 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot create a temporary file in %s: %s",
                               dir, strerror(errno));
            goto out;
        }
        unlink(tmpl);
    }
    if ((buf = malloc(IO_BUF)) == NULL) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
        goto out;
    }
    for (;;) {
        n = read(in, buf, IO_BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot read the input: %s", strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        total += (uint64_t)n;
        if (total > KMDC_MAX_DOC) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "a document is at most 1 TiB");
            goto out;
        }
        if (kmdc_cli_write_all(fd, buf, (size_t)n) != 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the temporary file: %s",
                               strerror(errno));
            goto out;
        }
    }
    if (lseek(fd, 0, SEEK_SET) != 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot rewind the temporary file: %s",
                           strerror(errno));
        goto out;
    }
    *out = fd;
    *size = total;
    fd = -1;
out:
    if (buf != NULL)
        kmdc_freezero(buf, IO_BUF);
    if (fd >= 0)
        close(fd);
    free(tmpl);
    return rc;
}

int
kmdc_cli_open_input(const char *path, int *fd, uint64_t *size)
{
    struct stat st;
    int in, rc;

    *fd = -1;
    *size = 0;
    if (strcmp(path, "-") == 0) {
        in = STDIN_FILENO;
    } else if ((in = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY)) < 0) {
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot open %s: %s", path, strerror(errno));
    }
    if (fstat(in, &st) != 0) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot stat %s: %s", path, strerror(errno));
        goto out;
    }
    if (S_ISDIR(st.st_mode)) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s is a folder", path);
        goto out;
    }
    if (S_ISREG(st.st_mode) && in != STDIN_FILENO) {
        if ((uint64_t)st.st_size > KMDC_MAX_DOC) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: a document is at most 1 TiB", path);
            goto out;
        }
        *fd = in;
        *size = (uint64_t)st.st_size;
        return KMDC_EXIT_OK;
    }
    rc = spool(in, fd, size);   /* a pipe, a terminal, or redirected stdin */
out:
    if (in != STDIN_FILENO)
        close(in);
    return rc;
}

/* ---- the sealing core ------------------------------------------------------------ */

static kmdc_status
emit_fd(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    if (kmdc_cli_write_all(*(int *)arg, p, len) != 0)
        return kmdc_err_set(err, KMDC_ERR_IO, "cannot write the envelope: %s", strerror(errno));
    return KMDC_OK;
}

kmdc_status
kmdc_cli_seal_stream(const kmdc_header *h, const uint8_t mk[32], const kmdc_meta *m,
                     int in_fd, int out_fd, kmdc_err *err)
{
    kmdc_seal *s = NULL;
    uint8_t *buf = NULL;
    uint64_t left = m->size;
    kmdc_status rc = KMDC_OK;
    ssize_t n;

    if ((buf = malloc(IO_BUF)) == NULL)
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
    if ((s = kmdc_seal_new(h, mk, NULL, m, err)) == NULL) {
        rc = err != NULL && err->code != KMDC_OK ? err->code : KMDC_ERR_INTERNAL;
        goto out;
    }
    while (left > 0) {
        n = read(in_fd, buf, left < IO_BUF ? (size_t)left : IO_BUF);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            rc = kmdc_err_set(err, KMDC_ERR_IO, "cannot read the document: %s", strerror(errno));
            goto out;
        }
        if (n == 0) {
            rc = kmdc_err_set(err, KMDC_ERR_TRUNCATED,
                              "the document became shorter while it was sealed");
            goto out;
        }
        if ((rc = kmdc_seal_update(s, buf, (size_t)n, emit_fd, &out_fd, err)) != KMDC_OK)
            goto out;
        left -= (uint64_t)n;
    }
    rc = kmdc_seal_final(s, emit_fd, &out_fd, err);
out:
    kmdc_seal_free(s);
    kmdc_freezero(buf, IO_BUF);
    return rc;
}

/* ---- options shared by seal and send ------------------------------------------------ */

enum { OPT_TO = KMDC_OPT_OWN, OPT_NAME, OPT_TYPE, OPT_OUT };

typedef struct seal_opts {
    kmdc_meta rcpts;          /* only the recipients are used */
    const char *name;
    const char *type;
    const char *out;
} seal_opts;

static const struct option seal_long[] = {
    { "to", required_argument, NULL, OPT_TO },
    { "name", required_argument, NULL, OPT_NAME },
    { "type", required_argument, NULL, OPT_TYPE },
    { "out", required_argument, NULL, 'o' },
};

static int
seal_opt(kmdc_cli *c, void *ctx, int opt, const char *arg)
{
    seal_opts *o = ctx;
    char addr[KMDC_ADDR_MAX + 1];
    const char *p = arg, *comma;
    size_t len;

    switch (opt) {
    case OPT_TO:
        for (;;) {
            comma = strchr(p, ',');
            len = comma != NULL ? (size_t)(comma - p) : strlen(p);
            if (len > 0) {
                if (kmdc_cli_address(p, len, addr) != 0)
                    return kmdc_cli_usage(c, "'%.*s' is not an address (a-z, 0-9, '.', '_', "
                                          "'-'; at most 64, starting with a letter or digit)",
                                          (int)(len > 80 ? 80 : len), p);
                if (kmdc_meta_add_rcpt(&o->rcpts, addr, len, NULL) != KMDC_OK)
                    return kmdc_cli_usage(c, "a recipient is listed twice, or more than %d "
                                          "recipients", KMDC_RCPT_MAX);
            }
            if (comma == NULL)
                break;
            p = comma + 1;
        }
        return 0;
    case OPT_NAME:
        o->name = arg;
        return 0;
    case OPT_TYPE:
        o->type = arg;
        return 0;
    case 'o':
        o->out = arg;
        return 0;
    default:
        return kmdc_cli_usage(c, "unknown option");
    }
}

/*
 * Build the up metadata for one document: recipients, NAME (o->name, else
 * the base name of path unless path is "-"), TYPE, SIZE, SENT; then check it
 * as the encoder will.  Returns an exit code.
 */
static int
build_meta(kmdc_cli *c, const seal_opts *o, const char *path, uint64_t size, kmdc_meta *m)
{
    char *copy = NULL;
    const char *name = o->name;
    kmdc_err e;
    size_t tlvlen;
    int rc = KMDC_EXIT_OK;

    kmdc_err_clear(&e);
    *m = o->rcpts;
    if (name == NULL && strcmp(path, "-") != 0) {
        if ((copy = strdup(path)) == NULL)
            return kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
        name = basename(copy);
    }
    if (name != NULL &&
        kmdc_meta_set_name(m, (const uint8_t *)name, strlen(name), &e) != KMDC_OK) {
        rc = o->name != NULL ? kmdc_cli_usage(c, "--name: %s", e.msg)
                             : kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: the file name cannot be sent "
                                             "as a NAME (%s); give one with --name", path, e.msg);
        goto out;
    }
    if (o->type != NULL &&
        kmdc_meta_set_type(m, o->type, strlen(o->type), &e) != KMDC_OK) {
        rc = kmdc_cli_usage(c, "--type: a media type is type/subtype, e.g. application/pdf");
        goto out;
    }
    m->has_size = 1;
    m->size = size;
    m->has_sent = 1;
    m->sent = kmdc_cli_now_ms();
    if (kmdc_tlv_encode(NULL, 0, &tlvlen, m, KMDC_DIR_UP, &e) != KMDC_OK)
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: %s", path, e.msg);
out:
    free(copy);
    return rc;
}

/* ---- reserving a counter ---------------------------------------------------------------- */

typedef struct reserve_ctx {
    uint64_t seq;
    uint8_t mk[KMDC_KEY_LEN];
} reserve_ctx;

static kmdc_status
reserve_fn(void *arg, kmdc_card *card, kmdc_err *err)
{
    reserve_ctx *r = arg;
    kmdc_status st = kmdc_card_up_reserve(card, &r->seq, r->mk, err);

    if (st == KMDC_OK)
        kmdc_crash_point("send:after-reserve");
    return st;
}

/* Reserve the next up counter and save the card; *serial, r->seq, r->mk. */
static int
reserve(kmdc_cli *c, reserve_ctx *r, uint64_t *serial)
{
    kmdc_card *card = NULL;
    int rc;

    rc = kmdc_cli_update(c, reserve_fn, r, &card);
    if (rc == KMDC_EXIT_OK) {
        *serial = kmdc_card_serial(card);
        kmdc_crash_point("send:after-card-save");
    } else {
        kmdc_wipe(r->mk, sizeof r->mk);
    }
    kmdc_card_free(card);
    return rc;
}

/* ---- seal --------------------------------------------------------------------------- */

int
kmdc_cmd_seal(kmdc_cli *c, int argc, char **argv)
{
    seal_opts o;
    kmdc_meta m;
    kmdc_header h;
    reserve_ctx r;
    kmdc_err e;
    uint64_t size = 0, serial = 0;
    char *tmp = NULL, hex[17];
    int rc, first, in = -1, out = -1, have_counter = 0;
    size_t len;

    memset(&o, 0, sizeof o);
    memset(&r, 0, sizeof r);
    kmdc_meta_init(&o.rcpts);
    kmdc_err_clear(&e);
    rc = kmdc_cli_parse(c, kmdc_cli_find("seal"), argc, argv, seal_long,
                        sizeof seal_long / sizeof seal_long[0], "o:", seal_opt, &o, &first);
    if (rc >= 0)
        return rc;
    if (argc - first != 1)
        return kmdc_cli_usage(c, "seal takes one FILE (or '-' for standard input)");
    if (o.rcpts.n_rcpt == 0)
        return kmdc_cli_usage(c, "seal needs --to ADDR");
    if ((o.out == NULL || strcmp(o.out, "-") == 0) && isatty(STDOUT_FILENO))
        return kmdc_cli_usage(c, "an envelope is binary: give -o OUT or redirect the output");

    if ((rc = kmdc_cli_open_input(argv[first], &in, &size)) != KMDC_EXIT_OK ||
        (rc = build_meta(c, &o, argv[first], size, &m)) != KMDC_EXIT_OK)
        goto out;
    /* The output file is created before a counter is spent on it.  An
     * existing device or pipe (/dev/null, a FIFO) is written to directly:
     * renaming a temporary file over it would replace it. */
    if (o.out != NULL && strcmp(o.out, "-") != 0 && kmdc_cli_is_special(o.out)) {
        if ((out = open(o.out, O_WRONLY | O_CLOEXEC)) < 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot open %s: %s", o.out, strerror(errno));
            goto out;
        }
    } else if (o.out != NULL && strcmp(o.out, "-") != 0) {
        len = strlen(o.out) + sizeof ".kmdc-XXXXXX";
        if ((tmp = malloc(len)) == NULL) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "out of memory");
            goto out;
        }
        snprintf(tmp, len, "%s.kmdc-XXXXXX", o.out);
        if ((out = mkostemp(tmp, O_CLOEXEC)) < 0) {
            free(tmp);
            tmp = NULL;
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot create a file beside %s: %s", o.out,
                               strerror(errno));
            goto out;
        }
    } else {
        out = STDOUT_FILENO;
    }
    if ((rc = reserve(c, &r, &serial)) != KMDC_EXIT_OK)
        goto out;
    have_counter = 1;
    if (kmdc_header_new(&h, KMDC_DIR_UP, serial, r.seq, &e) != KMDC_OK ||
        kmdc_cli_seal_stream(&h, r.mk, &m, in, out, &e) != KMDC_OK) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    if (tmp != NULL) {
        if (fsync(out) != 0 || close(out) != 0) {
            out = -1;
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write %s: %s", o.out, strerror(errno));
            goto out;
        }
        out = -1;
        if (rename(tmp, o.out) != 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot rename the envelope to %s: %s", o.out,
                               strerror(errno));
            goto out;
        }
        free(tmp);
        tmp = NULL;
        (void)kmdc_cli_fsync_parent(o.out);
    }
    kmdc_serial_format(hex, r.seq);
    kmdc_cli_info(c, "sealed counter %s of card %016" PRIx64 " for %zu recipient(s)", hex,
                  serial, m.n_rcpt);
out:
    if (rc != KMDC_EXIT_OK && have_counter)
        kmdc_cli_info(c, "counter %" PRIu64 " was used up; nothing to undo", r.seq);
    kmdc_wipe(r.mk, sizeof r.mk);
    if (in >= 0 && in != STDIN_FILENO)
        close(in);
    if (out >= 0 && out != STDOUT_FILENO)
        close(out);
    if (tmp != NULL) {
        unlink(tmp);
        free(tmp);
    }
    return rc;
}

/* ---- send --------------------------------------------------------------------------- */

/*
 * Upload the outbox entry for seq and handle the answer: a success prints
 * "MESSAGE-ID DELIVERIES LABEL"; a final answer removes the entry; a passing
 * one (network, 5xx, 429, "incomplete", or no answer at all) keeps it and
 * sets *kept.  Returns an exit code.
 */
static int
upload_entry(kmdc_cli *c, const char *base, uint64_t seq, const char *label, int *kept)
{
    kmdc_http_req rq;
    kmdc_http_resp rs;
    struct stat st;
    json_t *j = NULL, *msg, *dlv;
    json_error_t je;
    char *path = NULL, what[300];
    kmdc_err e;
    int fd = -1, rc, hrc;

    memset(&rq, 0, sizeof rq);
    memset(&rs, 0, sizeof rs);
    kmdc_err_clear(&e);
    *kept = 1;
    snprintf(what, sizeof what, "%s", label);
    if (kmdc_outbox_path(c->card_path, seq, &path, &e) != KMDC_OK)
        return kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
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
    hrc = kmdc_http_do(c, base, &rq, &rs);
    if (hrc == KMDC_EXIT_OK)
        kmdc_crash_point("send:after-upload");
    if (kmdc_http_transient(hrc, &rs)) {
        rc = kmdc_http_report(what, hrc, &rs);
        if (hrc != KMDC_EXIT_FAIL)
            rc = KMDC_EXIT_NETWORK;     /* nothing was spent: retry later */
        kmdc_cli_info(c, "the envelope stays in the outbox and is sent again by the next "
                      "kmdc send");
        goto out;
    }
    if (hrc != KMDC_EXIT_OK) {
        rc = kmdc_http_report(what, hrc, &rs);
        goto out;
    }
    rc = kmdc_http_exit_for(rs.status);
    if (rc == KMDC_EXIT_OK) {
        j = rs.body != NULL ? json_loadb(rs.body, rs.bodylen, 0, &je) : NULL;
        msg = json_object_get(j, "message");
        dlv = json_object_get(j, "deliveries");
        if (json_is_string(msg) && strlen(json_string_value(msg)) == 16 &&
            strspn(json_string_value(msg), "0123456789abcdef") == 16 && json_is_integer(dlv))
            printf("%s %" JSON_INTEGER_FORMAT " %s\n", json_string_value(msg),
                   json_integer_value(dlv), label);
        else
            printf("unknown - %s\n", label);
        if (fflush(stdout) != 0)
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
    } else {
        rc = kmdc_http_report(what, KMDC_EXIT_OK, &rs);
        kmdc_cli_info(c, "that answer is final: the envelope was removed from the outbox");
    }
    close(fd);
    fd = -1;
    *kept = 0;
    if (kmdc_outbox_remove(c->card_path, seq, &e) != KMDC_OK)
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
out:
    if (fd >= 0)
        close(fd);
    json_decref(j);
    kmdc_http_resp_free(&rs);
    free(path);
    return rc;
}

/* Seal one document into a committed outbox entry; *seq receives its counter. */
static int
seal_to_outbox(kmdc_cli *c, const seal_opts *o, const char *file, uint64_t *seq)
{
    kmdc_meta m;
    kmdc_header h;
    reserve_ctx r;
    kmdc_err e;
    uint64_t size = 0, serial = 0;
    char *tmp = NULL;
    int rc, in = -1, ofd = -1;

    memset(&r, 0, sizeof r);
    kmdc_err_clear(&e);
    if ((rc = kmdc_cli_open_input(file, &in, &size)) != KMDC_EXIT_OK ||
        (rc = build_meta(c, o, file, size, &m)) != KMDC_EXIT_OK ||
        (rc = reserve(c, &r, &serial)) != KMDC_EXIT_OK)
        goto out;
    if (kmdc_outbox_create(c->card_path, r.seq, &ofd, &tmp, &e) != KMDC_OK ||
        kmdc_header_new(&h, KMDC_DIR_UP, serial, r.seq, &e) != KMDC_OK ||
        kmdc_cli_seal_stream(&h, r.mk, &m, in, ofd, &e) != KMDC_OK) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: %s", file, e.msg);
        goto out;
    }
    kmdc_crash_point("send:after-seal");
    rc = kmdc_outbox_commit(c->card_path, r.seq, ofd, tmp, &e) == KMDC_OK
             ? KMDC_EXIT_OK : kmdc_cli_fail(KMDC_EXIT_FAIL, "%s: %s", file, e.msg);
    ofd = -1;
    tmp = NULL;
    if (rc == KMDC_EXIT_OK) {
        kmdc_crash_point("send:after-outbox-commit");
        *seq = r.seq;
    }
out:
    kmdc_wipe(r.mk, sizeof r.mk);
    if (ofd >= 0 || tmp != NULL)
        kmdc_outbox_abort(ofd, tmp);
    if (in >= 0 && in != STDIN_FILENO)
        close(in);
    return rc;
}

int
kmdc_cmd_send(kmdc_cli *c, int argc, char **argv)
{
    seal_opts o;
    kmdc_card_lockh *lk = NULL;
    kmdc_card *card = NULL;
    uint64_t *seqs = NULL, seq = 0;
    size_t n = 0, i;
    char label[64], base[KMDC_CARD_MAX_URL + 1];
    kmdc_err e;
    int rc, first, r, fi, stdin_used = 0, kept = 0;

    memset(&o, 0, sizeof o);
    kmdc_meta_init(&o.rcpts);
    kmdc_err_clear(&e);
    rc = kmdc_cli_parse(c, kmdc_cli_find("send"), argc, argv, seal_long, 3, NULL, seal_opt,
                        &o, &first);
    if (rc >= 0)
        return rc;
    if (first >= argc)
        return kmdc_cli_usage(c, "send needs at least one FILE");
    if (o.rcpts.n_rcpt == 0)
        return kmdc_cli_usage(c, "send needs --to ADDR");
    if (o.name != NULL && argc - first > 1)
        return kmdc_cli_usage(c, "--name goes with a single FILE");
    for (fi = first; fi < argc; fi++)
        if (strcmp(argv[fi], "-") == 0 && stdin_used++)
            return kmdc_cli_usage(c, "standard input ('-') can be sent once");

    if ((rc = kmdc_cli_lock(c, KMDC_LOCK_SEND, &lk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK)
        goto out;
    if (kmdc_card_get_state(card) != KMDC_CARD_ACTIVE) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "the card is not activated yet (run kmdc activate CODE)");
        goto out;
    }
    snprintf(base, sizeof base, "%s", kmdc_cli_base_url(c, card));
    if (kmdc_outbox_sweep(c->card_path, &e) != KMDC_OK ||
        kmdc_outbox_list(c->card_path, &seqs, &n, &e) != KMDC_OK) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    /* What an earlier run left behind goes first, byte for byte. */
    for (i = 0; i < n; i++) {
        snprintf(label, sizeof label, "outbox:%016" PRIx64, seqs[i]);
        r = upload_entry(c, base, seqs[i], label, &kept);
        if (kept) {
            rc = r;
            if (first < argc)
                kmdc_cli_info(c, "nothing new was sent; run the same kmdc send again later");
            goto out;
        }
        if (r != KMDC_EXIT_OK)
            rc = r;
    }
    for (fi = first; fi < argc; fi++) {
        if ((r = seal_to_outbox(c, &o, argv[fi], &seq)) != KMDC_EXIT_OK) {
            rc = r;
            continue;
        }
        r = upload_entry(c, base, seq, argv[fi], &kept);
        if (kept) {
            rc = r;
            if (fi + 1 < argc)
                kmdc_cli_info(c, "stopped: %d file(s) after %s were not sent", argc - fi - 1,
                              argv[fi]);
            goto out;
        }
        if (r != KMDC_EXIT_OK)
            rc = r;
    }
out:
    free(seqs);
    kmdc_card_free(card);
    kmdc_card_unlock(lk);
    return rc;
}
