/*
 * kmdc_recv.c - the receive core `kmdc fetch`, `kmdc watch` and `kmdc open`
 * share (declared in kmdc_recv.h): the reader's callbacks that check an
 * envelope against the card and advance its down chain, the delivery
 * record, and placing a document in its folder without replacing a file.
 * The receive rules are those of docs/PROTOCOL.md section 4 (see
 * kmdc_fetch.c's head for the order of the steps).
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
#include "kmdc_file.h"
#include "kmdc_http.h"
#include "kmdc_recv.h"
#include "kmdc_tlv.h"
#include "kmdc_util.h"

#define MAX_SUFFIX 9999           /* "name (9999).ext" at most */

/* ---- the receive core ------------------------------------------------------------- */

static kmdc_status
on_header(void *arg, const kmdc_header *h, uint8_t mk_out[32], kmdc_err *err)
{
    kmdc_recv *r = arg;

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
    kmdc_recv *r = arg;
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
    kmdc_recv *r = arg;

    return kmdc_write_all(r->out_fd, pt, len, "the document", err);
}

const struct kmdc_open_cbs kmdc_recv_cbs = { on_header, on_meta, on_data };

kmdc_status
kmdc_recv_done_fn(void *arg, kmdc_card *card, kmdc_err *err)
{
    kmdc_recv_done *d = arg;

    return kmdc_card_down_done(card, d->seq, d->id, d->name, err);
}

/* ---- files ------------------------------------------------------------------------- */

/* The temp file of one delivery, ".kmdc-<serial>-<delivery id>.part". */
void
kmdc_recv_temp_name(char *name, size_t cap, uint64_t serial, uint64_t id)
{
    snprintf(name, cap, ".kmdc-%016" PRIx64 "-%016" PRIx64 ".part", serial, id);
}

/* A fresh temp file ".kmdc-<serial>-<random>.part" in dirfd; name gets its name. */
int
kmdc_recv_open_temp(int dirfd, uint64_t serial, char *name, size_t cap)
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
void
kmdc_recv_sweep_temps(int dirfd, uint64_t serial, const kmdc_card *card)
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

/*
 * Put tmp in place under `want` or, when taken, "stem (N).ext"; a name that
 * would be too long falls back to `fallback`.  final receives the name.
 * Returns 0 or -1 (errno set).
 */
int
kmdc_recv_place(int dirfd, const char *tmp, const char *want, const char *fallback,
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
        r = kmdc_rename_noreplace(dirfd, tmp, final);
        if (r <= 0)
            return r;
    }
    errno = EEXIST;
    return -1;
}

/* The file name for a delivery's NAME (a '_' before a leading '.' or '-',
 * kmdc_name_local), else fallback.  local has room for KMDC_NAME_MAX + 2. */
const char *
kmdc_recv_local_name(const kmdc_meta *m, const char *fallback, char *local, size_t cap)
{
    if (m->has_name && kmdc_name_local(m->name, m->name_len, local, cap) > 0)
        return local;
    return fallback;
}

void
kmdc_recv_record_path(char *out, size_t cap, const char *dir, const char *name,
                      const char *fallback)
{
    int w = strcmp(dir, ".") == 0 ? snprintf(out, cap, "%s", name)
                                  : snprintf(out, cap, "%s/%s", dir, name);

    if (w < 0 || (size_t)w >= cap)
        snprintf(out, cap, "%s", fallback);
}

int
kmdc_recv_opt(kmdc_cli *c, void *ctx, int opt, const char *arg)
{
    kmdc_recv_opts *o = ctx;

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
