/* kmdc_progress.c - the transfer progress line (see kmdc_progress.h). */
#define _GNU_SOURCE
#include "config.h"

#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kmdc_progress.h"

#define TTY_EVERY 0.25           /* seconds between redraws in place */
#define LOG_EVERY 1.0            /* seconds between lines when not a terminal */

static double
mono(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_MONOTONIC, &ts) != 0)
        return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* "512 B", "12.5 KiB", "3.0 MiB", "1.2 GiB" */
static void
human(char *out, size_t cap, double v)
{
    static const char *const unit[] = { "B", "KiB", "MiB", "GiB", "TiB" };
    int u = 0;

    while (v >= 1024.0 && u < 4) {
        v /= 1024.0;
        u++;
    }
    if (u == 0)
        snprintf(out, cap, "%.0f B", v);
    else
        snprintf(out, cap, "%.1f %s", v, unit[u]);
}

static void
duration(char *out, size_t cap, double s)
{
    unsigned long t = s < 0 ? 0 : (unsigned long)(s + 0.5);

    if (t >= 3600)
        snprintf(out, cap, "%lu:%02lu:%02lu", t / 3600, t / 60 % 60, t % 60);
    else
        snprintf(out, cap, "%lu:%02lu", t / 60, t % 60);
}

static void
draw(kmdc_progress *p, double now, int final)
{
    char line[400], done[32], total[32], rate[32], left[32];
    double el = p->t_first > 0 ? now - p->t_first : 0, r = 0;
    int n, pad;

    human(done, sizeof done, (double)p->done);
    if (el > 0 && p->done > 0)
        r = (double)p->done / el;
    if (p->total > 0) {
        human(total, sizeof total, (double)p->total);
        n = snprintf(line, sizeof line, "%s: %3u%% %s of %s", p->label,
                     (unsigned)(p->done >= p->total ? 100 : p->done * 100 / p->total), done,
                     total);
    } else {
        n = snprintf(line, sizeof line, "%s: %s", p->label, done);
    }
    if (n > 0 && (size_t)n < sizeof line && r > 0) {
        human(rate, sizeof rate, r);
        n += snprintf(line + n, sizeof line - (size_t)n, ", %s/s", rate);
    }
    if (n > 0 && (size_t)n < sizeof line) {
        if (p->upload && p->total > 0 && p->done >= p->total) {
            n += snprintf(line + n, sizeof line - (size_t)n, ", publishing");
            p->publishing = 1;
        } else if (p->total > 0 && r > 0 && p->done < p->total) {
            duration(left, sizeof left, (double)(p->total - p->done) / r);
            n += snprintf(line + n, sizeof line - (size_t)n, ", %s left", left);
        }
    }
    if (n < 0)
        return;
    if ((size_t)n >= sizeof line)
        n = (int)sizeof line - 1;
    if (p->tty) {
        pad = p->width > n ? p->width - n : 0;
        fprintf(stderr, "\r%s%*s%s", line, pad, "", final ? "\n" : "");
        p->width = n;
        p->drawn = !final;
    } else {
        fprintf(stderr, "%s\n", line);
        p->drawn = 0;
    }
    fflush(stderr);
    p->last_draw = now;
    p->drawn_done = p->done;
}

void
kmdc_progress_start(kmdc_progress *p, const kmdc_cli *c, const char *label, int upload)
{
    int tty = isatty(STDERR_FILENO);

    memset(p, 0, sizeof *p);
    if (label != NULL && strrchr(label, '/') != NULL && strrchr(label, '/')[1] != '\0')
        label = strrchr(label, '/') + 1;       /* a file's name, not its whole path */
    p->label = label;
    p->upload = upload;
    p->tty = tty;
    if (label == NULL || c->progress == 0)
        p->on = 0;
    else if (c->progress > 0)
        p->on = 1;               /* --progress */
    else
        p->on = tty && !c->quiet;
    p->t0 = mono();
    p->last_draw = -1;
}

void
kmdc_progress_update(kmdc_progress *p, uint64_t done, uint64_t total)
{
    double now;
    int became_publishing;

    if (!p->on)
        return;
    if (total > 0)
        p->total = total;
    if (done == 0 && p->done == 0)
        return;                  /* nothing moved yet (curl calls before the first byte) */
    now = mono();
    if (p->t_first == 0)
        p->t_first = p->t0;
    p->done = done;
    became_publishing = p->upload && p->total > 0 && done >= p->total && !p->publishing;
    if (became_publishing || p->last_draw < 0 ||
        now - p->last_draw >= (p->tty ? TTY_EVERY : LOG_EVERY)) {
        if (!p->tty && p->publishing)
            return;              /* a log says "publishing" once */
        draw(p, now, 0);
    }
}

void
kmdc_progress_finish(kmdc_progress *p)
{
    if (!p->on)
        return;
    if (p->tty) {
        if (p->drawn)
            draw(p, mono(), 1);
    } else if (p->done > 0 && p->done != p->drawn_done && !p->publishing) {
        draw(p, mono(), 1);
    }
    p->on = 0;
}
