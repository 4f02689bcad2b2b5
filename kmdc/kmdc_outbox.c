/*
 * kmdc_outbox.c - the records of outbox entries (see kmdc_outbox.h).
 */
#define _GNU_SOURCE
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <jansson.h>

#include "kmdc_card.h"
#include "kmdc_cli.h"
#include "kmdc_file.h"
#include "kmdc_outbox.h"
#include "kmdc_util.h"

#define REC_MAX (64 * 1024)       /* a record is far smaller */

/* CARD.outbox/.<seq>.json (malloc'd), from the envelope's path
 * CARD.outbox/<seq>.kmdc.  The leading dot keeps records out of a plain
 * listing of the outbox, which shows the envelopes. */
static char *
rec_path(const char *card_path, uint64_t seq)
{
    char *p = NULL, *q, *slash;
    size_t l;
    kmdc_err e;

    kmdc_err_clear(&e);
    if (kmdc_outbox_path(card_path, seq, &p, &e) != KMDC_OK)
        return NULL;
    l = strlen(p);
    if (l < 5 || strcmp(p + l - 5, ".kmdc") != 0 || (slash = strrchr(p, '/')) == NULL ||
        (q = malloc(l + 2)) == NULL) {
        free(p);
        return NULL;
    }
    memcpy(q, p, (size_t)(slash - p) + 1);
    q[slash - p + 1] = '.';
    memcpy(q + (slash - p) + 2, slash + 1, l - (size_t)(slash - p) - 1 - 5);
    memcpy(q + l + 1 - 5, ".json", 6);
    free(p);
    return q;
}

kmdc_status
kmdc_outbox_rec_write(const char *card_path, const kmdc_outbox_rec *rec, kmdc_err *err)
{
    json_t *j = NULL, *to = NULL;
    char *text = NULL, *path = NULL, hex[65];
    size_t i;
    kmdc_status rc = KMDC_ERR_INTERNAL;

    if ((path = rec_path(card_path, rec->seq)) == NULL)
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
    kmdc_hex_encode(hex, rec->sha256, sizeof rec->sha256);
    if ((j = json_object()) == NULL || (to = json_array()) == NULL)
        goto oom;
    for (i = 0; i < rec->m.n_rcpt; i++)
        if (json_array_append_new(to, json_string(rec->m.rcpt[i])) != 0)
            goto oom;
    if (json_object_set_new(j, "file", json_stringn(rec->file, strlen(rec->file))) != 0 ||
        json_object_set_new(j, "sha256", json_string(hex)) != 0 ||
        json_object_set_new(j, "size", json_integer((json_int_t)rec->m.size)) != 0 ||
        json_object_set(j, "to", to) != 0 ||
        json_object_set_new(j, "sealed", json_integer((json_int_t)rec->m.sent)) != 0)
        goto oom;
    if (rec->m.has_name &&
        json_object_set_new(j, "name", json_stringn((const char *)rec->m.name,
                                                    rec->m.name_len)) != 0)
        goto oom;
    if (rec->m.has_type && json_object_set_new(j, "type", json_string(rec->m.type)) != 0)
        goto oom;
    if ((text = json_dumps(j, JSON_COMPACT)) == NULL)
        goto oom;
    /* atomically, beside the entry: kmdc_outbox_sweep removes a stray ".*.tmp" */
    rc = kmdc_file_write_atomic(path, text, strlen(text), 0, 0, err);
    goto out;
oom:
    rc = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
out:
    free(text);
    json_decref(to);
    json_decref(j);
    free(path);
    return rc;
}

int
kmdc_outbox_rec_read(const char *card_path, uint64_t seq, kmdc_outbox_rec *rec)
{
    json_t *j = NULL, *v, *it;
    json_error_t je;
    char *path, *buf = NULL;
    ssize_t n;
    size_t i, len = 0;
    int fd, rc = -1;

    memset(rec, 0, sizeof *rec);
    kmdc_meta_init(&rec->m);
    rec->seq = seq;
    if ((path = rec_path(card_path, seq)) == NULL)
        return -1;
    fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
    free(path);
    if (fd < 0)
        return -1;
    if ((buf = malloc(REC_MAX)) == NULL)
        goto out;
    while (len < REC_MAX) {
        n = kmdc_cli_read(fd, buf + len, REC_MAX - len);
        if (n <= 0)
            break;
        len += (size_t)n;
    }
    if ((j = json_loadb(buf, len, JSON_REJECT_DUPLICATES, &je)) == NULL || !json_is_object(j))
        goto out;
    v = json_object_get(j, "file");
    if (!json_is_string(v) || json_string_length(v) >= sizeof rec->file)
        goto out;
    snprintf(rec->file, sizeof rec->file, "%s", json_string_value(v));
    v = json_object_get(j, "sha256");
    if (!json_is_string(v) || json_string_length(v) != 64 ||
        kmdc_hex_decode(rec->sha256, sizeof rec->sha256, json_string_value(v), 64, NULL) != KMDC_OK)
        goto out;
    v = json_object_get(j, "size");
    if (!json_is_integer(v) || json_integer_value(v) < 0)
        goto out;
    rec->m.has_size = 1;
    rec->m.size = (uint64_t)json_integer_value(v);
    v = json_object_get(j, "sealed");
    if (json_is_integer(v) && json_integer_value(v) >= 0) {
        rec->m.has_sent = 1;
        rec->m.sent = (uint64_t)json_integer_value(v);
    }
    v = json_object_get(j, "to");
    if (!json_is_array(v) || json_array_size(v) == 0 || json_array_size(v) > KMDC_RCPT_MAX)
        goto out;
    json_array_foreach(v, i, it) {
        if (!json_is_string(it) ||
            kmdc_meta_add_rcpt(&rec->m, json_string_value(it), json_string_length(it), NULL) != KMDC_OK)
            goto out;
    }
    v = json_object_get(j, "name");
    if (v != NULL && (!json_is_string(v) ||
                      kmdc_meta_set_name(&rec->m, (const uint8_t *)json_string_value(v),
                                         json_string_length(v), NULL) != KMDC_OK))
        goto out;
    v = json_object_get(j, "type");
    if (v != NULL && (!json_is_string(v) ||
                      kmdc_meta_set_type(&rec->m, json_string_value(v), json_string_length(v),
                                         NULL) != KMDC_OK))
        goto out;
    rc = 0;
out:
    if (rc != 0) {
        memset(rec, 0, sizeof *rec);
        kmdc_meta_init(&rec->m);
        rec->seq = seq;
    }
    json_decref(j);
    free(buf);
    close(fd);
    return rc;
}

void
kmdc_outbox_rec_remove(const char *card_path, uint64_t seq)
{
    char *path = rec_path(card_path, seq);

    if (path == NULL)
        return;
    if (unlink(path) == 0)
        (void)kmdc_fsync_parent(path, NULL);
    free(path);
}

void
kmdc_outbox_rec_sweep(const char *card_path, const uint64_t *pending, size_t n)
{
    char *dir = NULL, *p;
    DIR *d;
    struct dirent *de;
    uint8_t b[8];
    uint64_t seq;
    size_t i;
    int found;

    if ((p = rec_path(card_path, 0)) == NULL)
        return;
    if ((dir = strdup(p)) == NULL) {
        free(p);
        return;
    }
    free(p);
    *strrchr(dir, '/') = '\0';
    if ((d = opendir(dir)) == NULL) {
        free(dir);
        return;
    }
    while ((de = readdir(d)) != NULL) {
        if (strlen(de->d_name) != 22 || de->d_name[0] != '.' ||
            strcmp(de->d_name + 17, ".json") != 0 ||
            kmdc_hex_decode(b, sizeof b, de->d_name + 1, 16, NULL) != KMDC_OK)
            continue;
        seq = kmdc_get_u64(b);
        for (found = 0, i = 0; i < n && !found; i++)
            found = pending[i] == seq;
        if (!found)
            (void)unlinkat(dirfd(d), de->d_name, 0);
    }
    closedir(d);
    free(dir);
}

static int
same_rcpts(const kmdc_meta *a, const kmdc_meta *b)
{
    size_t i, k;
    int found;

    if (a->n_rcpt != b->n_rcpt)
        return 0;
    for (i = 0; i < a->n_rcpt; i++) {
        for (found = 0, k = 0; k < b->n_rcpt && !found; k++)
            found = strcmp(a->rcpt[i], b->rcpt[k]) == 0;
        if (!found)
            return 0;
    }
    return 1;
}

int
kmdc_outbox_rec_same(const kmdc_outbox_rec *a, const kmdc_outbox_rec *b)
{
    return a->m.size == b->m.size && kmdc_ct_eq(a->sha256, 32, b->sha256, 32) &&
           same_rcpts(&a->m, &b->m) && a->m.has_name == b->m.has_name &&
           (!a->m.has_name || (a->m.name_len == b->m.name_len &&
                               memcmp(a->m.name, b->m.name, a->m.name_len) == 0)) &&
           a->m.has_type == b->m.has_type &&
           (!a->m.has_type || strcmp(a->m.type, b->m.type) == 0);
}
