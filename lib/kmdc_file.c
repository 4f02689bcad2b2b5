/* kmdc_file.c - atomic file replacement and folder sync (contract in kmdc_file.h). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "kmdc_file.h"
#include "kmdc_util.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct kmdc_atomic {
    int fd;
    char *tmppath;
    char *path;
    unsigned flags;
};

static kmdc_status
oom(kmdc_err *err)
{
    return kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
}

kmdc_status
kmdc_fsync_dir(const char *dir, kmdc_err *err)
{
    int fd;
    kmdc_status rc = KMDC_OK;

    if (dir == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "fsync: no folder");
    if ((fd = open(dir, O_RDONLY | O_DIRECTORY | O_CLOEXEC)) < 0)
        return kmdc_err_sys(err, "cannot open folder", dir);
    /* Some file systems cannot fsync a folder (EINVAL): nothing more to do. */
    if (fsync(fd) != 0 && errno != EINVAL && errno != EROFS)
        rc = kmdc_err_sys(err, "cannot fsync folder", dir);
    close(fd);
    return rc;
}

kmdc_status
kmdc_path_split(const char *path, char **dir, const char **base, kmdc_err *err)
{
    const char *slash;
    size_t dlen;

    if (dir == NULL || base == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "path: missing argument");
    *dir = NULL;
    *base = NULL;
    if (path == NULL || path[0] == '\0')
        return kmdc_err_set(err, KMDC_ERR_ARG, "a path names a file, not a folder");
    slash = strrchr(path, '/');
    if (slash != NULL && slash[1] == '\0')
        return kmdc_err_set(err, KMDC_ERR_ARG, "%s names a folder, not a file", path);
    if (slash == NULL) {
        *dir = strdup(".");
        *base = path;
    } else {
        dlen = slash == path ? 1 : (size_t)(slash - path);
        if ((*dir = malloc(dlen + 1)) != NULL) {
            memcpy(*dir, path, dlen);
            (*dir)[dlen] = '\0';
        }
        *base = slash + 1;
    }
    return *dir == NULL ? oom(err) : KMDC_OK;
}

kmdc_status
kmdc_fsync_parent(const char *path, kmdc_err *err)
{
    char *dir = NULL;
    const char *base;
    kmdc_status rc;

    if ((rc = kmdc_path_split(path, &dir, &base, err)) == KMDC_OK)
        rc = kmdc_fsync_dir(dir, err);
    free(dir);
    return rc;
}

kmdc_status
kmdc_write_all(int fd, const void *buf, size_t len, const char *name, kmdc_err *err)
{
    const uint8_t *p = buf;

    while (len > 0) {
        ssize_t w = write(fd, p, len);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            return kmdc_err_sys(err, "cannot write", name);
        }
        if (w == 0) {
            errno = EIO;
            return kmdc_err_sys(err, "cannot write", name);
        }
        p += w;
        len -= (size_t)w;
    }
    return KMDC_OK;
}

kmdc_status
kmdc_file_open_temp(const char *dir, const char *stem, mode_t mode, int *fd,
                    char **tmppath, kmdc_err *err)
{
    uint8_t rnd[8];
    char hex[17], *name = NULL;
    size_t cap;
    kmdc_status rc = KMDC_OK;
    int tries, n;

    if (fd == NULL || tmppath == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "temporary file: missing argument");
    *fd = -1;
    *tmppath = NULL;
    if (dir == NULL || stem == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "temporary file: missing argument");
    if (mode == 0)
        mode = KMDC_FILE_MODE_DEFAULT;
    cap = strlen(dir) + strlen(stem) + sizeof("/..0123456789abcdef.tmp");
    if ((name = malloc(cap)) == NULL)
        return oom(err);
    for (tries = 0; tries < 16; tries++) {
        if ((rc = kmdc_random(rnd, sizeof(rnd), err)) != KMDC_OK)
            goto out;
        kmdc_hex_encode(hex, rnd, sizeof(rnd));
        n = snprintf(name, cap, "%s/.%s.%s.tmp", dir, stem, hex);
        if (n < 0 || (size_t)n >= cap) {
            rc = kmdc_err_set(err, KMDC_ERR_INTERNAL, "temporary file name too long");
            goto out;
        }
        *fd = open(name, O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode & 07777);
        if (*fd >= 0)
            break;
        if (errno != EEXIST) {
            rc = kmdc_err_sys(err, "cannot create a temporary file in", dir);
            goto out;
        }
    }
    if (*fd < 0) {
        rc = kmdc_err_set(err, KMDC_ERR_IO, "cannot find a free temporary name in %s", dir);
        goto out;
    }
    /* umask-proof: the mode is exactly the one asked for. */
    if (fchmod(*fd, mode & 07777) != 0) {
        int e = errno;
        rc = kmdc_err_set(err, KMDC_ERR_IO, "cannot set mode %04o on %s: %s",
                          (unsigned)(mode & 07777), name, strerror(e));
        close(*fd);
        *fd = -1;
        unlink(name);
        goto out;
    }
    *tmppath = name;
    name = NULL;
out:
    free(name);
    return rc;
}

int
kmdc_rename_noreplace(int dirfd, const char *from, const char *to)
{
    if (renameat2(dirfd, from, dirfd, to, RENAME_NOREPLACE) == 0)
        return 0;
    if (errno == EEXIST)
        return 1;
    if (errno != EINVAL && errno != ENOSYS && errno != ENOTSUP)
        return -1;
    /* No RENAME_NOREPLACE on this file system: link() never replaces either. */
    if (linkat(dirfd, from, dirfd, to, 0) != 0)
        return errno == EEXIST ? 1 : -1;
    /* Moved: both names are the file now; a failure to drop the old name
     * leaves a temporary file behind, not a lost one. */
    (void)unlinkat(dirfd, from, 0);
    return 0;
}

kmdc_status
kmdc_file_move(const char *tmp, const char *path, unsigned flags, kmdc_err *err)
{
    if (tmp == NULL || path == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "move: missing argument");
    if (!(flags & KMDC_FILE_NOREPLACE)) {
        if (rename(tmp, path) != 0)
            return kmdc_err_sys(err, "cannot rename a temporary file onto", path);
        return KMDC_OK;
    }
    switch (kmdc_rename_noreplace(AT_FDCWD, tmp, path)) {
    case 0:
        break;
    case 1:
        return kmdc_err_set(err, KMDC_ERR_IO, "%s already exists; refusing to overwrite it", path);
    default:
        return kmdc_err_sys(err, "cannot move a temporary file to", path);
    }
    return KMDC_OK;
}

void
kmdc_file_abort_temp(int fd, char *tmppath)
{
    if (fd >= 0)
        close(fd);
    if (tmppath != NULL) {
        unlink(tmppath);
        free(tmppath);
    }
}

kmdc_status
kmdc_file_commit_temp(int fd, char *tmppath, const char *path, unsigned flags,
                      kmdc_err *err)
{
    kmdc_status rc;

    if (fd < 0 || tmppath == NULL || path == NULL) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "commit: missing argument");
        goto out;
    }
    if (fsync(fd) != 0) {
        rc = kmdc_err_sys(err, "cannot fsync", tmppath);
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = kmdc_err_sys(err, "cannot close", tmppath);
        goto out;
    }
    fd = -1;
    if ((rc = kmdc_file_move(tmppath, path, flags, err)) != KMDC_OK)
        goto out;
    free(tmppath);
    tmppath = NULL;
    rc = kmdc_fsync_parent(path, err);
out:
    kmdc_file_abort_temp(fd, tmppath);
    return rc;
}

kmdc_status
kmdc_atomic_open(kmdc_atomic **out, const char *path, const char *stem, mode_t mode,
                 unsigned flags, kmdc_err *err)
{
    kmdc_atomic *a = NULL;
    char *dir = NULL;
    const char *base;
    struct stat st;
    kmdc_status rc;

    if (out == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "atomic write: missing argument");
    *out = NULL;
    if ((rc = kmdc_path_split(path, &dir, &base, err)) != KMDC_OK)
        goto out;
    if ((flags & KMDC_FILE_NOREPLACE) && lstat(path, &st) == 0) {
        rc = kmdc_err_set(err, KMDC_ERR_IO, "%s already exists; refusing to overwrite it", path);
        goto out;
    }
    if ((a = calloc(1, sizeof(*a))) == NULL || (a->path = strdup(path)) == NULL) {
        rc = oom(err);
        goto out;
    }
    a->fd = -1;
    a->flags = flags;
    if ((rc = kmdc_file_open_temp(dir, stem != NULL ? stem : base, mode, &a->fd,
                                  &a->tmppath, err)) != KMDC_OK)
        goto out;
    *out = a;
    a = NULL;
out:
    if (a != NULL) {
        free(a->path);
        free(a);
    }
    free(dir);
    return rc;
}

int
kmdc_atomic_fd(const kmdc_atomic *a)
{
    return a != NULL ? a->fd : -1;
}

const char *
kmdc_atomic_tmppath(const kmdc_atomic *a)
{
    return a != NULL ? a->tmppath : NULL;
}

kmdc_status
kmdc_atomic_commit(kmdc_atomic *a, kmdc_err *err)
{
    kmdc_status rc;

    if (a == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "atomic write: missing argument");
    rc = kmdc_file_commit_temp(a->fd, a->tmppath, a->path, a->flags, err);
    free(a->path);
    free(a);
    return rc;
}

void
kmdc_atomic_abort(kmdc_atomic *a)
{
    if (a == NULL)
        return;
    kmdc_file_abort_temp(a->fd, a->tmppath);
    free(a->path);
    free(a);
}

kmdc_status
kmdc_file_write_atomic(const char *path, const void *data, size_t len, mode_t mode,
                       unsigned flags, kmdc_err *err)
{
    kmdc_atomic *a = NULL;
    kmdc_status rc;

    if (data == NULL && len > 0)
        return kmdc_err_set(err, KMDC_ERR_ARG, "atomic write: missing argument");
    if ((rc = kmdc_atomic_open(&a, path, NULL, mode, flags, err)) != KMDC_OK)
        return rc;
    if ((rc = kmdc_write_all(a->fd, data, len, a->tmppath, err)) != KMDC_OK) {
        kmdc_atomic_abort(a);
        return rc;
    }
    return kmdc_atomic_commit(a, err);
}

/* ---- private files -------------------------------------------------------------- */

kmdc_status
kmdc_file_check_private(const struct stat *st, const char *what, const char *path,
                        unsigned flags, kmdc_err *err)
{
    const char *mode = S_ISDIR(st->st_mode) ? "700" : "600";

    if ((st->st_mode & 077) == 0)
        return KMDC_OK;
    if ((flags & KMDC_PRIVATE_READABLE) && (st->st_mode & (S_IRGRP | S_IROTH)) != 0)
        return kmdc_err_set(err, KMDC_ERR_PERM, "%s is readable by group or others; chmod %s %s",
                            path, mode, path);
    if (flags & KMDC_PRIVATE_READABLE)
        return kmdc_err_set(err, KMDC_ERR_PERM,
                            "%s is accessible to group or others; chmod %s %s", path, mode, path);
    return kmdc_err_set(err, KMDC_ERR_PERM, "%s can be read or written by others; run: chmod %s %s",
                        what, mode, path);
}

kmdc_status
kmdc_file_open_private(const char *path, unsigned flags, int *fd, struct stat *st,
                       const char *what, kmdc_err *err)
{
    int oflags = O_RDONLY | O_CLOEXEC | O_NOCTTY;
    kmdc_status rc = KMDC_OK;
    int e;

    if (fd == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "private file: missing argument");
    *fd = -1;
    if (path == NULL || st == NULL || what == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "private file: missing argument");
    if (flags & KMDC_PRIVATE_NOFOLLOW)
        oflags |= O_NOFOLLOW;
    if (flags & KMDC_PRIVATE_NONBLOCK)
        oflags |= O_NONBLOCK;
    if ((*fd = open(path, oflags)) < 0) {
        e = errno;
        if (e == ELOOP && (flags & KMDC_PRIVATE_NOFOLLOW))
            return kmdc_err_set(err, KMDC_ERR_PERM,
                                "%s %s is a symbolic link; give the path of the file itself",
                                what, path);
        return kmdc_err_set(err, KMDC_ERR_IO, "cannot open %s %s: %s", what, path, strerror(e));
    }
    if (fstat(*fd, st) != 0) {
        e = errno;
        rc = kmdc_err_set(err, KMDC_ERR_IO, "cannot stat %s %s: %s", what, path, strerror(e));
        goto out;
    }
    if (S_ISREG(st->st_mode))
        rc = kmdc_file_check_private(st, what, path, flags, err);
out:
    if (rc != KMDC_OK) {
        close(*fd);
        *fd = -1;
    }
    return rc;
}
