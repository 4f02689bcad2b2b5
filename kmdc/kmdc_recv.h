/*
 * kmdc_recv.h - the receive core shared by `kmdc fetch`, `kmdc watch`
 * (kmdc_fetch.c) and `kmdc open` (kmdc_open.c); defined in kmdc_recv.c.
 */
#ifndef KMDC_RECV_H
#define KMDC_RECV_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_cli.h"
#include "kmdc_envelope.h"

/* The state of one envelope being opened: the reader's callback argument. */
typedef struct kmdc_recv {
    kmdc_cli *c;
    kmdc_card *card;          /* a loaded copy: keys for on_header */
    int has_expect;           /* the listing's seq must match the header's */
    uint64_t expect_seq;
    int out_fd;               /* where verified plaintext goes */
    int print_fields;         /* open: the TLV fields to stderr */
    int advanced;             /* the card was saved past this seq */
    uint64_t seq;
    kmdc_meta meta;           /* after on_meta */
} kmdc_recv;

/* The options of fetch and watch (-d DIR) and open (-o OUT, -d DIR). */
typedef struct kmdc_recv_opts {
    const char *out;
    const char *dir;
} kmdc_recv_opts;
int kmdc_recv_opt(kmdc_cli *c, void *ctx, int opt, const char *arg);

/* The reader's callbacks (argument a kmdc_recv): check the header against
 * the card, advance the down chain and save the card once the keyblock
 * authenticated, write the plaintext to out_fd. */
extern const struct kmdc_open_cbs kmdc_recv_cbs;

/* Record delivery id (seq) as written to `name`, erasing its key: a
 * kmdc_cli_update function whose argument is a kmdc_recv_done. */
typedef struct kmdc_recv_done {
    uint64_t seq, id;
    const char *name;
} kmdc_recv_done;
kmdc_status kmdc_recv_done_fn(void *arg, kmdc_card *card, kmdc_err *err);

/* The temp file of one delivery, ".kmdc-<serial>-<delivery id>.part". */
void kmdc_recv_temp_name(char *name, size_t cap, uint64_t serial, uint64_t id);

/* A fresh temp file ".kmdc-<serial>-<random>.part" (O_EXCL, 0600) in dirfd;
 * name gets its name.  The fd, or -1 (errno). */
int kmdc_recv_open_temp(int dirfd, uint64_t serial, char *name, size_t cap);

/* Remove temp files a crashed fetch of this card left in dirfd, except
 * those of deliveries the card already recorded (fetch finishes them). */
void kmdc_recv_sweep_temps(int dirfd, uint64_t serial, const kmdc_card *card);

/*
 * Put tmp in place under `want` or, when taken, "stem (N).ext"; a name that
 * would be too long falls back to `fallback`.  final receives the name.
 * Never replaces a file.  Returns 0 or -1 (errno set).
 */
int kmdc_recv_place(int dirfd, const char *tmp, const char *want, const char *fallback,
                    char *final, size_t cap);

/* The file name for a delivery's NAME (a '_' before a leading '.' or '-',
 * kmdc_name_local), else fallback.  local has room for KMDC_NAME_MAX + 2. */
const char *kmdc_recv_local_name(const kmdc_meta *m, const char *fallback, char *local,
                                 size_t cap);

/* The path to record and print for `name` in folder dir ("." is left out);
 * fallback when it does not fit in out[0..cap). */
void kmdc_recv_record_path(char *out, size_t cap, const char *dir, const char *name,
                           const char *fallback);

#endif
