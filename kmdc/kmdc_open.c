/*
 * kmdc_open.c - `kmdc open`: open a down envelope offline (from a file or
 * standard input) with the card, and write the document to standard
 * output, a file (-o) or a folder (-d).  The message key is then erased and
 * the delivery recorded as opened offline, so that `kmdc fetch` only
 * acknowledges it when the datacenter lists it.
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
#include "kmdc_recv.h"
#include "kmdc_tlv.h"
#include "kmdc_util.h"

#define IO_BUF 65536
#define STDOUT_RECORD "(standard output)"

int
kmdc_cmd_open(kmdc_cli *c, int argc, char **argv)
{
    static const struct option own[] = {
        { "out", required_argument, NULL, 'o' },
        { "dir", required_argument, NULL, 'd' },
    };
    kmdc_recv_opts oo = { NULL, NULL };
    kmdc_open *o = NULL;
    kmdc_recv r;
    kmdc_recv_done dn;
    kmdc_err e;
    kmdc_atomic *a = NULL;
    kmdc_status st;
    uint8_t *buf = NULL;
    char tmp[600], final[512], fallback[32], record[KMDC_CARD_MAX_FILENAME + 1];
    char local[KMDC_NAME_MAX + 2];
    const char *where;
    ssize_t n;
    int rc, first, in = -1, dirfd = -1, fd = -1, to_stdout, special = 0;

    memset(&r, 0, sizeof r);
    kmdc_err_clear(&e);
    tmp[0] = '\0';
    rc = kmdc_cli_parse(c, kmdc_cli_find("open"), argc, argv, own, 2, "o:d:", kmdc_recv_opt, &oo,
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
    if ((rc = kmdc_cli_need_active(r.card)) != KMDC_EXIT_OK)
        goto out;
    where = oo.dir != NULL ? oo.dir : ".";
    if (oo.dir != NULL) {
        if ((dirfd = open(oo.dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot open the folder %s: %s", oo.dir,
                               strerror(errno));
            goto out;
        }
        if ((fd = kmdc_recv_open_temp(dirfd, kmdc_card_serial(r.card), tmp, sizeof tmp)) < 0) {
            tmp[0] = '\0';
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot create a file in %s: %s", oo.dir,
                               strerror(errno));
            goto out;
        }
    } else if (!to_stdout) {
        if ((rc = kmdc_cli_open_output(oo.out, &fd, &a)) != KMDC_EXIT_OK)
            goto out;
        special = a == NULL;
    } else {
        fd = STDOUT_FILENO;
    }
    r.c = c;
    r.out_fd = fd;
    r.print_fields = 1;
    if ((o = kmdc_open_new(KMDC_DIR_DOWN, &kmdc_recv_cbs, &r, &e)) == NULL ||
        (buf = malloc(IO_BUF)) == NULL) {
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot start the reader: %s",
                           e.msg[0] ? e.msg : "out of memory");
        goto out;
    }
    for (;;) {
        n = kmdc_cli_read(in, buf, IO_BUF);
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
    if (!to_stdout && a == NULL) {
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
        if (kmdc_recv_place(dirfd, tmp,
                            kmdc_recv_local_name(&r.meta, fallback, local, sizeof local),
                            fallback, final, sizeof final) != 0) {
            rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot move the document into place in %s: %s",
                               where, strerror(errno));
            goto out;
        }
        tmp[0] = '\0';
        (void)fsync(dirfd);
        kmdc_recv_record_path(record, sizeof record, oo.dir, final, final);
    } else if (special) {
        snprintf(record, sizeof record, "%s", oo.out);
    } else if (!to_stdout) {
        fd = -1;                        /* the writer's: closed by the commit */
        st = kmdc_atomic_commit(a, &e);
        a = NULL;
        if (st != KMDC_OK) {
            rc = kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
            goto out;
        }
        snprintf(record, sizeof record, "%s", oo.out);
    } else {
        snprintf(record, sizeof record, "%s", STDOUT_RECORD);
    }
    /* Erase the message key; the record says "seq opened offline", so that a
     * later kmdc fetch that lists this delivery just acknowledges it. */
    dn.seq = r.seq;
    dn.id = KMDC_OPENED_ID(r.seq);
    dn.name = record;
    if ((rc = kmdc_cli_update(c, kmdc_recv_done_fn, &dn, NULL)) != KMDC_EXIT_OK)
        goto out;
    if (!to_stdout)
        printf("%s\n", record);
    if (fflush(stdout) != 0)
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
out:
    if (a != NULL)
        kmdc_atomic_abort(a);           /* closes fd, removes the temporary file */
    else if (fd >= 0 && fd != STDOUT_FILENO)
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
