/*
 * kmdc_cli.c - what every kmdc command shares (declared in kmdc_cli.h):
 * messages and exit codes, small file helpers, the fault-injection points,
 * and the card helpers (passphrase, load, lock, read-modify-write, URL).
 */
#define _GNU_SOURCE
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <jansson.h>

#include "kmdc_auth.h"
#include "kmdc_cli.h"
#include "kmdc_http.h"
#include "kmdc_util.h"

/* ---- messages ----------------------------------------------------------------- */

int
kmdc_cli_fail(int code, const char *fmt, ...)
{
    va_list ap;

    fputs("kmdc: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return code;
}

int
kmdc_cli_fail_err(int code, const kmdc_err *e)
{
    return kmdc_cli_fail(code, "%s", e->msg[0] ? e->msg : kmdc_status_name(e->code));
}

int
kmdc_cli_usage(const kmdc_cli *c, const char *fmt, ...)
{
    va_list ap;

    fputs("kmdc: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'kmdc %s%s--help'.\n", c->cmd ? c->cmd : "", c->cmd ? " " : "");
    return KMDC_EXIT_USAGE;
}

void
kmdc_cli_info(const kmdc_cli *c, const char *fmt, ...)
{
    va_list ap;

    if (c->quiet)
        return;
    fputs("kmdc: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
}

int
kmdc_cli_exit_for(kmdc_status st)
{
    switch (st) {
    case KMDC_OK:
        return KMDC_EXIT_OK;
    case KMDC_ERR_LOCKED:
        return KMDC_EXIT_LOCKED;
    case KMDC_ERR_PERM:
    case KMDC_ERR_CORRUPT:
    case KMDC_ERR_PASSPHRASE:
        return KMDC_EXIT_CARD;
    default:
        return KMDC_EXIT_FAIL;
    }
}

void
kmdc_cli_sanitize(char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f)
            *s = '?';
}

int
kmdc_cli_print_json(struct json_t *doc)
{
    if (doc == NULL || json_dumpf(doc, stdout, JSON_INDENT(2)) != 0 || fputc('\n', stdout) == EOF ||
        fflush(stdout) != 0)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output: %s", strerror(errno));
    return KMDC_EXIT_OK;
}

/* ---- small helpers -------------------------------------------------------------- */

ssize_t
kmdc_cli_read(int fd, void *buf, size_t len)
{
    ssize_t n;

    do
        n = read(fd, buf, len);
    while (n < 0 && errno == EINTR);
    return n;
}

uint64_t
kmdc_cli_now_ms(void)
{
    struct timespec ts;

    if (clock_gettime(CLOCK_REALTIME, &ts) != 0)
        return 0;
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int
kmdc_cli_address(const char *in, size_t len, char *out)
{
    size_t i;

    if (len == 0 || len > KMDC_ADDR_MAX)
        return -1;
    for (i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)in[i]);
    out[len] = '\0';
    return kmdc_address_valid(out, len) ? 0 : -1;
}

int
kmdc_cli_parse_id(const char *s, uint64_t *id)
{
    return kmdc_serial_parse(id, s, strlen(s), NULL) == KMDC_OK ? 0 : -1;
}

int
kmdc_cli_need_active(const kmdc_card *card)
{
    if (kmdc_card_get_state(card) != KMDC_CARD_ACTIVE)
        return kmdc_cli_fail(KMDC_EXIT_FAIL,
                             "the card is not activated yet (run kmdc activate CODE)");
    return KMDC_EXIT_OK;
}

/* ---- fault injection -------------------------------------------------------------- */

void
kmdc_crash_point(const char *step)
{
#ifdef KMDC_TEST_HOOKS
    const char *at = getenv("KMDC_CRASH_AT");

    if (at != NULL && strcmp(at, step) == 0) {
        fflush(NULL);
        raise(SIGKILL);
        _exit(137);
    }
#else
    (void)step;
#endif
}

/* ---- the card ----------------------------------------------------------------------- */

int
kmdc_cli_passphrase(kmdc_cli *c, const char **pass)
{
    kmdc_err e;

    *pass = NULL;
    if (c->pass_read) {          /* read from the file, or typed, once */
        *pass = c->pass;
        return KMDC_EXIT_OK;
    }
    if (c->passfile == NULL)
        return KMDC_EXIT_OK;
    kmdc_err_clear(&e);
    if (kmdc_passphrase_file_read(c->passfile, c->pass, sizeof c->pass, &e) != KMDC_OK)
        return kmdc_cli_fail_err(KMDC_EXIT_CARD, &e);
    c->pass_read = 1;
    *pass = c->pass;
    return KMDC_EXIT_OK;
}

int
kmdc_cli_load(kmdc_cli *c, kmdc_card **card)
{
    const char *pass;
    kmdc_err e;
    kmdc_status st;
    int rc;

    *card = NULL;
    kmdc_err_clear(&e);
    if ((rc = kmdc_cli_passphrase(c, &pass)) != KMDC_EXIT_OK)
        return rc;
    st = kmdc_card_load(c->card_path, pass, card, &e);
    if (st == KMDC_OK)
        return KMDC_EXIT_OK;
    if (st == KMDC_ERR_PASSPHRASE && pass == NULL)
        return kmdc_cli_load_prompting(c, card);     /* on the terminal, if there is one */
    if (st == KMDC_ERR_PASSPHRASE)
        return kmdc_cli_fail(KMDC_EXIT_CARD, "%s: wrong passphrase", c->card_path);
    return kmdc_cli_fail(st == KMDC_ERR_INTERNAL ? KMDC_EXIT_FAIL : KMDC_EXIT_CARD,
                         "card %s: %s", c->card_path, e.msg);
}

int
kmdc_cli_lock(kmdc_cli *c, kmdc_card_lockwhich which, kmdc_card_lockh **h)
{
    kmdc_err e;
    kmdc_status st;
    int wait = which == KMDC_LOCK_CARD ? 1 : c->wait;

    kmdc_err_clear(&e);
    st = kmdc_card_lock(c->card_path, which, wait, h, &e);
    if (st == KMDC_OK)
        return KMDC_EXIT_OK;
    if (st == KMDC_ERR_LOCKED)
        return kmdc_cli_fail(KMDC_EXIT_LOCKED, "%s (another kmdc is %s with this card; "
                             "use --wait to wait for it)", e.msg,
                             which == KMDC_LOCK_SEND ? "sending" : "fetching");
    return kmdc_cli_fail_err(KMDC_EXIT_CARD, &e);
}

int
kmdc_cli_update(kmdc_cli *c, kmdc_cli_update_fn fn, void *arg, kmdc_card **out)
{
    kmdc_card_lockh *lk = NULL;
    kmdc_card *card = NULL;
    const char *pass;
    kmdc_err e;
    kmdc_status st;
    int rc;

    kmdc_err_clear(&e);
    if (out != NULL)
        *out = NULL;
    if ((rc = kmdc_cli_lock(c, KMDC_LOCK_CARD, &lk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_passphrase(c, &pass)) != KMDC_EXIT_OK)   /* after a prompt, too */
        goto out;
    if (fn != NULL) {
        if ((st = fn(arg, card, &e)) != KMDC_OK) {
            rc = kmdc_cli_fail_err(kmdc_cli_exit_for(st), &e);
            goto out;
        }
        if ((st = kmdc_card_save(card, c->card_path, pass, &e)) != KMDC_OK) {
            rc = kmdc_cli_fail(kmdc_cli_exit_for(st), "cannot save the card: %s", e.msg);
            goto out;
        }
    }
    if (out != NULL) {
        *out = card;
        card = NULL;
    }
out:
    kmdc_card_unlock(lk);
    kmdc_card_free(card);
    return rc;
}

const char *
kmdc_cli_base_url(const kmdc_cli *c, const kmdc_card *card)
{
    static char buf[KMDC_CARD_MAX_URL + 1];
    const char *u = c->url != NULL ? c->url : kmdc_card_url(card);
    size_t len = strlen(u);

    if (len > KMDC_CARD_MAX_URL)
        len = KMDC_CARD_MAX_URL;
    memcpy(buf, u, len);
    while (len > 0 && buf[len - 1] == '/')
        len--;
    buf[len] = '\0';
    return buf;
}

/* 1 when path exists and is not a regular file (a device such as /dev/null,
 * a FIFO). */
static int
is_special(const char *path)
{
    struct stat st;

    return stat(path, &st) == 0 && !S_ISREG(st.st_mode);
}

int
kmdc_cli_open_output(const char *path, int *fd, kmdc_atomic **a)
{
    kmdc_err e;

    *fd = -1;
    *a = NULL;
    kmdc_err_clear(&e);
    if (is_special(path)) {
        if ((*fd = open(path, O_WRONLY | O_CLOEXEC)) < 0)
            return kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot open %s: %s", path, strerror(errno));
        return KMDC_EXIT_OK;
    }
    if (kmdc_atomic_open(a, path, NULL, 0, 0, &e) != KMDC_OK)
        return kmdc_cli_fail_err(KMDC_EXIT_FAIL, &e);
    *fd = kmdc_atomic_fd(*a);
    return KMDC_EXIT_OK;
}
