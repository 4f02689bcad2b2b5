/* kmdc_card_lock.c - the lock files beside a card (flock; see kmdc_card.h for the order). */
#ifndef _GNU_SOURCE
#define _GNU_SOURCE
#endif
#include "kmdc_card_int.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <unistd.h>
#include <sys/file.h>

struct kmdc_card_lockh {
    int fd;
};

/* ---- lock files ------------------------------------------------------------------- */

kmdc_status
kmdc_card_lock(const char *card_path, kmdc_card_lockwhich which, int wait,
               kmdc_card_lockh **out, kmdc_err *err)
{
    static const char *const suffix[] = { ".lock", ".send.lock", ".recv.lock" };
    kmdc_card_lockh *h = NULL;
    char *path = NULL;
    kmdc_status rc = KMDC_OK;
    int fd = -1;

    if (card_path == NULL || out == NULL || (unsigned)which > KMDC_LOCK_RECV)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card lock: bad argument");
    *out = NULL;
    if ((path = kmdc_card_str3(card_path, suffix[which], "")) == NULL ||
        (h = malloc(sizeof(*h))) == NULL) {
        rc = kmdc_card_oom(err);
        goto out;
    }
    fd = open(path, O_RDWR | O_CREAT | O_NOFOLLOW | O_CLOEXEC | O_NOCTTY, 0600);
    if (fd < 0) {
        rc = kmdc_err_sys(err, "cannot open lock file", path);
        goto out;
    }
    for (;;) {
        if (flock(fd, LOCK_EX | (wait ? 0 : LOCK_NB)) == 0)
            break;
        if (errno == EINTR)
            continue;
        if (errno == EWOULDBLOCK) {
            rc = kmdc_err_set(err, KMDC_ERR_LOCKED,
                              "%s is held by another %s", path,
                              which == KMDC_LOCK_SEND ? "sender"
                              : which == KMDC_LOCK_RECV ? "receiver" : "process");
            goto out;
        }
        rc = kmdc_err_sys(err, "cannot lock", path);
        goto out;
    }
    h->fd = fd;
    fd = -1;
    *out = h;
    h = NULL;
out:
    if (fd >= 0)
        close(fd);
    free(h);
    free(path);
    return rc;
}

void
kmdc_card_unlock(kmdc_card_lockh *h)
{
    if (h == NULL)
        return;
    /* Closing the descriptor releases the flock; the file stays. */
    close(h->fd);
    free(h);
}
