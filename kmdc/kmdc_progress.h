/*
 * kmdc_progress.h - the transfer progress line of kmdc on standard error,
 * both ways: bytes done and expected, percentage, rate, time left, and for
 * an upload whose last byte left a "publishing" state until the datacenter
 * answers.
 *
 * It is drawn when standard error is a terminal (one line, redrawn in place
 * at most every 250 ms), never otherwise; --progress forces it on (when
 * standard error is not a terminal, one line per update, at most one per
 * second, for logs), --no-progress and -q turn it off.  The line:
 *   LABEL: 45% 18.0 MiB of 40.0 MiB, 5.2 MiB/s, 0:04 left
 *   LABEL: 100% 40.0 MiB of 40.0 MiB, 5.2 MiB/s, publishing
 *   LABEL: 1.5 MiB, 2.0 MiB/s                  (total unknown)
 */
#ifndef KMDC_PROGRESS_H
#define KMDC_PROGRESS_H

#include <stdint.h>

#include "kmdc_cli.h"

typedef struct kmdc_progress {
    int on;                 /* drawing at all */
    int tty;                /* in place (\r) rather than line by line */
    int upload;             /* 1 upload (publishing after the last byte) */
    const char *label;
    uint64_t done, total;   /* bytes; total 0 when unknown */
    uint64_t drawn_done;    /* done when the line was last drawn */
    double t0, t_first;     /* start, first byte (monotonic seconds) */
    double last_draw;
    int drawn;              /* something is on the line */
    int width;              /* length of the last line drawn in place */
    int publishing;         /* the publishing state was drawn */
} kmdc_progress;

/* Decide whether to draw (c's --progress / --no-progress / -q and whether
 * stderr is a terminal) and start the clock.  label may be NULL: then off. */
void kmdc_progress_start(kmdc_progress *p, const kmdc_cli *c, const char *label, int upload);

/* Bytes done of total (0: unknown); draws when it is time to. */
void kmdc_progress_update(kmdc_progress *p, uint64_t done, uint64_t total);

/* The transfer ended: draw the last state and end the line. */
void kmdc_progress_finish(kmdc_progress *p);

#endif
