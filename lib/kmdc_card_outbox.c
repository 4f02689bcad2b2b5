/* kmdc_card_outbox.c - the outbox beside a card: sealed envelopes kept until the
 * datacenter answered, written atomically, listed in counter order after a crash. */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "kmdc_card_int.h"
#include "kmdc_file.h"
#include "kmdc_util.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>

/* ---- outbox ------------------------------------------------------------------------ */

static kmdc_status
outbox_dir(const char *card_path, char **dir, kmdc_err *err)
{
    if (card_path == NULL || card_path[0] == '\0')
        return kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing card path");
    if ((*dir = kmdc_card_str3(card_path, ".outbox", "")) == NULL)
        return kmdc_card_oom(err);
    return KMDC_OK;
}

/* Make sure the outbox folder exists, is a real folder, and is private. */
static kmdc_status
outbox_ensure(const char *card_path, const char *dir, kmdc_err *err)
{
    struct stat st;
    char *parent = NULL;
    const char *base;
    kmdc_status rc = KMDC_OK;

    if (mkdir(dir, 0700) == 0) {
        if (chmod(dir, 0700) != 0)
            return kmdc_err_sys(err, "cannot set mode 0700 on", dir);
        if ((rc = kmdc_card_split_path(card_path, &parent, &base, err)) == KMDC_OK)
            rc = kmdc_fsync_dir(parent, err);
        free(parent);
        return rc;
    }
    if (errno != EEXIST)
        return kmdc_err_sys(err, "cannot create outbox folder", dir);
    if (lstat(dir, &st) != 0)
        return kmdc_err_sys(err, "cannot stat", dir);
    if (!S_ISDIR(st.st_mode))
        return kmdc_err_set(err, KMDC_ERR_PERM, "%s is not a folder", dir);
    return kmdc_file_check_private(&st, "outbox", dir, 0, err);
}

static kmdc_status
outbox_entry(const char *dir, uint64_t seq, char **out, kmdc_err *err)
{
    char hex[17];

    kmdc_serial_format(hex, seq);
    if ((*out = malloc(strlen(dir) + 1 + 16 + 5 + 1)) == NULL)
        return kmdc_card_oom(err);
    memcpy(*out, dir, strlen(dir));
    (*out)[strlen(dir)] = '/';
    memcpy(*out + strlen(dir) + 1, hex, 16);
    memcpy(*out + strlen(dir) + 17, ".kmdc", 6);
    return KMDC_OK;
}

kmdc_status
kmdc_outbox_create(const char *card_path, uint64_t seq, int *fd, char **tmppath,
                   kmdc_err *err)
{
    char *dir = NULL, hex[17];
    kmdc_status rc;

    if (fd == NULL || tmppath == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing argument");
    *fd = -1;
    *tmppath = NULL;
    kmdc_serial_format(hex, seq);
    if ((rc = outbox_dir(card_path, &dir, err)) == KMDC_OK &&
        (rc = outbox_ensure(card_path, dir, err)) == KMDC_OK)
        rc = kmdc_file_open_temp(dir, hex, 0600, fd, tmppath, err);
    free(dir);
    return rc;
}

kmdc_status
kmdc_outbox_commit(const char *card_path, uint64_t seq, int fd, char *tmppath,
                   kmdc_err *err)
{
    char *dir = NULL, *final = NULL;
    kmdc_status rc;

    if (tmppath == NULL || fd < 0) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing argument");
        goto out;
    }
    if ((rc = outbox_dir(card_path, &dir, err)) != KMDC_OK ||
        (rc = outbox_entry(dir, seq, &final, err)) != KMDC_OK)
        goto out;
    /* fsync, close, move without replacing <seq>.kmdc, fsync the outbox */
    rc = kmdc_file_commit_temp(fd, tmppath, final, KMDC_FILE_NOREPLACE, err);
    fd = -1;
    tmppath = NULL;
out:
    kmdc_file_abort_temp(fd, tmppath);
    free(dir);
    free(final);
    return rc;
}

void
kmdc_outbox_abort(int fd, char *tmppath)
{
    kmdc_file_abort_temp(fd, tmppath);
}

/* 1 and *seq when name is exactly <16 lowercase hex>.kmdc */
static int
entry_name(const char *name, uint64_t *seq)
{
    uint8_t b[8];

    if (strlen(name) != 21 || memcmp(name + 16, ".kmdc", 5) != 0 ||
        kmdc_hex_decode(b, sizeof(b), name, 16, NULL) != KMDC_OK)
        return 0;
    *seq = kmdc_get_u64(b);
    return 1;
}

/* Called by outbox_scan for each entry name of the outbox folder dir (dfd open on it). */
typedef kmdc_status (*outbox_entry_fn)(void *arg, int dfd, const char *dir, const char *name,
                                       kmdc_err *err);

/* Call fn for every entry of the outbox of card_path, stopping at its first
 * error.  A missing outbox has no entries. */
static kmdc_status
outbox_scan(const char *card_path, outbox_entry_fn fn, void *arg, kmdc_err *err)
{
    char *dir = NULL;
    DIR *d = NULL;
    struct dirent *de;
    kmdc_status rc;

    if ((rc = outbox_dir(card_path, &dir, err)) != KMDC_OK)
        goto out;
    if ((d = opendir(dir)) == NULL) {
        if (errno != ENOENT)
            rc = kmdc_err_sys(err, "cannot open outbox", dir);
        goto out;
    }
    for (;;) {
        errno = 0;
        if ((de = readdir(d)) == NULL) {
            if (errno != 0)
                rc = kmdc_err_sys(err, "cannot read outbox", dir);
            break;
        }
        if ((rc = fn(arg, dirfd(d), dir, de->d_name, err)) != KMDC_OK)
            break;
    }
out:
    if (d != NULL)
        closedir(d);
    free(dir);
    return rc;
}

typedef struct seq_list {
    uint64_t *v;
    size_t cnt, cap;
} seq_list;

static kmdc_status
list_entry(void *arg, int dfd, const char *dir, const char *name, kmdc_err *err)
{
    seq_list *l = arg;
    uint64_t seq;

    (void)dfd;
    (void)dir;
    if (!entry_name(name, &seq))
        return KMDC_OK;
    if (l->cnt == l->cap) {
        size_t ncap = l->cap ? l->cap * 2 : 16;
        uint64_t *nv = realloc(l->v, ncap * sizeof(*nv));
        if (nv == NULL)
            return kmdc_card_oom(err);
        l->v = nv;
        l->cap = ncap;
    }
    l->v[l->cnt++] = seq;
    return KMDC_OK;
}

kmdc_status
kmdc_outbox_list(const char *card_path, uint64_t **seqs, size_t *n, kmdc_err *err)
{
    seq_list l = { NULL, 0, 0 };
    kmdc_status rc;

    if (seqs == NULL || n == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing argument");
    *seqs = NULL;
    *n = 0;
    if ((rc = outbox_scan(card_path, list_entry, &l, err)) != KMDC_OK) {
        free(l.v);
        return rc;
    }
    if (l.cnt > 1)
        qsort(l.v, l.cnt, sizeof(*l.v), kmdc_card_cmp_u64);
    *seqs = l.v;
    *n = l.cnt;
    return KMDC_OK;
}

kmdc_status
kmdc_outbox_path(const char *card_path, uint64_t seq, char **out, kmdc_err *err)
{
    char *dir = NULL;
    kmdc_status rc;

    if (out == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "outbox: missing argument");
    *out = NULL;
    if ((rc = outbox_dir(card_path, &dir, err)) == KMDC_OK)
        rc = outbox_entry(dir, seq, out, err);
    free(dir);
    return rc;
}

kmdc_status
kmdc_outbox_remove(const char *card_path, uint64_t seq, kmdc_err *err)
{
    char *dir = NULL, *path = NULL;
    kmdc_status rc;

    if ((rc = outbox_dir(card_path, &dir, err)) != KMDC_OK ||
        (rc = outbox_entry(dir, seq, &path, err)) != KMDC_OK)
        goto out;
    if (unlink(path) != 0) {
        if (errno != ENOENT)
            rc = kmdc_err_sys(err, "cannot remove", path);
        goto out;
    }
    rc = kmdc_fsync_dir(dir, err);
out:
    free(dir);
    free(path);
    return rc;
}

/* Remove a temporary file ".<...>.tmp" a crash left. */
static kmdc_status
sweep_entry(void *arg, int dfd, const char *dir, const char *name, kmdc_err *err)
{
    size_t l = strlen(name);

    (void)arg;
    if (name[0] != '.' || l < 5 || strcmp(name + l - 4, ".tmp") != 0)
        return KMDC_OK;
    if (unlinkat(dfd, name, 0) != 0 && errno != ENOENT)
        return kmdc_err_sys(err, "cannot remove a temporary file in", dir);
    return KMDC_OK;
}

kmdc_status
kmdc_outbox_sweep(const char *card_path, kmdc_err *err)
{
    return outbox_scan(card_path, sweep_entry, NULL, err);
}
