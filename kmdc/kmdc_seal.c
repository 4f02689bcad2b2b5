/*
 * kmdc_seal.c - sealing a document: reading the input (a file, or a pipe
 * spooled to a temporary file), the sealing core, the options and metadata
 * seal and send share, reserving an up counter, and `kmdc seal` (offline).
 * `kmdc send` and the outbox are in kmdc_send.c.
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
    kmdc_err e;

    kmdc_err_clear(&e);
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
        n = kmdc_cli_read(in, buf, IO_BUF);
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
        if (kmdc_write_all(fd, buf, (size_t)n, "the temporary file", &e) != KMDC_OK) {
            rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
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
    return kmdc_write_all(*(int *)arg, p, len, "the envelope", err);
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
        n = kmdc_cli_read(in_fd, buf, left < IO_BUF ? (size_t)left : IO_BUF);
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

static const struct option seal_long[] = {
    { "to", required_argument, NULL, KMDC_SEAL_OPT_TO },
    { "name", required_argument, NULL, KMDC_SEAL_OPT_NAME },
    { "type", required_argument, NULL, KMDC_SEAL_OPT_TYPE },
    { "out", required_argument, NULL, 'o' },
};


int
kmdc_cli_seal_opt(kmdc_cli *c, void *ctx, int opt, const char *arg)
{
    kmdc_seal_opts *o = ctx;
    char addr[KMDC_ADDR_MAX + 1];
    const char *p = arg, *comma;
    size_t len;

    switch (opt) {
    case KMDC_SEAL_OPT_TO:
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
    case KMDC_SEAL_OPT_NAME:
        o->name = arg;
        return 0;
    case KMDC_SEAL_OPT_TYPE:
        o->type = arg;
        return 0;
    case 'o':
        o->out = arg;
        return 0;
    case KMDC_SEAL_OPT_AGAIN:
        o->again = 1;
        return 0;
    case KMDC_SEAL_OPT_OUTBOX:
        o->outbox_only = 1;
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
int
kmdc_cli_build_meta(kmdc_cli *c, const kmdc_seal_opts *o, const char *path, uint64_t size,
                    kmdc_meta *m)
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


static kmdc_status
reserve_fn(void *arg, kmdc_card *card, kmdc_err *err)
{
    kmdc_reserve *r = arg;
    kmdc_status st = kmdc_card_up_reserve(card, &r->seq, r->mk, err);

    if (st == KMDC_OK)
        kmdc_crash_point("send:after-reserve");
    return st;
}

/* Reserve the next up counter and save the card; *serial, r->seq, r->mk. */
int
kmdc_cli_reserve(kmdc_cli *c, kmdc_reserve *r, uint64_t *serial)
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
    kmdc_seal_opts o;
    kmdc_meta m;
    kmdc_header h;
    kmdc_reserve r;
    kmdc_err e;
    kmdc_atomic *a = NULL;
    kmdc_status st;
    uint64_t size = 0, serial = 0;
    char hex[17];
    int rc, first, in = -1, out = -1, have_counter = 0;

    memset(&o, 0, sizeof o);
    memset(&r, 0, sizeof r);
    kmdc_meta_init(&o.rcpts);
    kmdc_err_clear(&e);
    rc = kmdc_cli_parse(c, kmdc_cli_find("seal"), argc, argv, seal_long,
                        sizeof seal_long / sizeof seal_long[0], "o:", kmdc_cli_seal_opt, &o,
                        &first);
    if (rc >= 0)
        return rc;
    if (argc - first != 1)
        return kmdc_cli_usage(c, "seal takes one FILE (or '-' for standard input)");
    if (o.rcpts.n_rcpt == 0)
        return kmdc_cli_usage(c, "seal needs --to ADDR");
    if ((o.out == NULL || strcmp(o.out, "-") == 0) && isatty(STDOUT_FILENO))
        return kmdc_cli_usage(c, "an envelope is binary: give -o OUT or redirect the output");

    if ((rc = kmdc_cli_open_input(argv[first], &in, &size)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_build_meta(c, &o, argv[first], size, &m)) != KMDC_EXIT_OK)
        goto out;
    /* The output file is created before a counter is spent on it. */
    if (o.out != NULL && strcmp(o.out, "-") != 0) {
        if ((rc = kmdc_cli_open_output(o.out, &out, &a)) != KMDC_EXIT_OK)
            goto out;
    } else {
        out = STDOUT_FILENO;
    }
    if ((rc = kmdc_cli_reserve(c, &r, &serial)) != KMDC_EXIT_OK)
        goto out;
    have_counter = 1;
    if (kmdc_header_new(&h, KMDC_DIR_UP, serial, r.seq, &e) != KMDC_OK ||
        kmdc_cli_seal_stream(&h, r.mk, &m, in, out, &e) != KMDC_OK) {
        rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
        goto out;
    }
    if (a != NULL) {
        out = -1;                       /* the writer's: closed by the commit */
        st = kmdc_atomic_commit(a, &e);
        a = NULL;
        if (st != KMDC_OK) {
            rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
            goto out;
        }
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
    if (a != NULL)
        kmdc_atomic_abort(a);           /* closes out, removes the temporary file */
    else if (out >= 0 && out != STDOUT_FILENO)
        close(out);
    return rc;
}
