/*
 * kmdc_pass.c - the card's passphrase: read from the terminal device (never
 * echoed), and `kmdc card passphrase [--remove]` to set, change or remove it.
 *
 * The prompt reads /dev/tty, not standard input, so it works while standard
 * input carries a document (`kmdc send - < doc`), and it is never taken from
 * a pipe by mistake.  Without a terminal (cron, a service) the passphrase
 * comes from --passphrase-file or $KMDC_PASSPHRASE_FILE, as before.
 */
#define _GNU_SOURCE
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <termios.h>
#include <unistd.h>

#include "kmdc_cli.h"
#include "kmdc_http.h"
#include "kmdc_util.h"

#define PROMPT_TRIES 3           /* wrong passphrases typed before giving up */

int
kmdc_cli_tty_read(const char *prompt, char *buf, size_t cap)
{
    struct termios old, quiet;
    size_t len = 0;
    int fd, rc = 0, restore = 0, toolong = 0;
    ssize_t n;
    char ch;

    buf[0] = '\0';
    if ((fd = open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY)) < 0)
        return -1;
    if (tcgetattr(fd, &old) != 0) {
        close(fd);
        return -1;
    }
    quiet = old;
    quiet.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK);
    quiet.c_lflag |= ICANON;
    /* Echo off (dropping what was typed ahead) before the prompt shows, so
     * nothing typed after the prompt is lost or echoed. */
    if (tcsetattr(fd, TCSAFLUSH, &quiet) != 0) {
        rc = -2;
        goto out;
    }
    restore = 1;
    if (kmdc_write_all(fd, prompt, strlen(prompt), "/dev/tty", NULL) != KMDC_OK) {
        rc = -2;
        goto out;
    }
    for (;;) {
        n = read(fd, &ch, 1);
        if (n < 0 && errno == EINTR && !kmdc_http_interrupted)
            continue;
        if (n < 0) {
            rc = -2;             /* interrupted (^C) or unreadable */
            goto out;
        }
        if (n == 0 || ch == '\n' || ch == '\r')
            break;
        if (len + 1 >= cap)
            toolong = 1;         /* read on to the line end, keep nothing */
        else
            buf[len++] = ch;
    }
    buf[len] = '\0';
    if (toolong)
        rc = -3;
out:
    ch = 0;
    if (restore)
        (void)tcsetattr(fd, TCSAFLUSH, &old);
    (void)kmdc_write_all(fd, "\n", 1, "/dev/tty", NULL);   /* the Enter not echoed */
    close(fd);
    if (rc != 0)
        kmdc_wipe(buf, cap);
    return rc;
}

/* Report a failed terminal read; returns KMDC_EXIT_CARD (or FAIL when ^C). */
static int
tty_fail(int r)
{
    if (r == -3)
        return kmdc_cli_fail(KMDC_EXIT_CARD, "the passphrase is longer than %d bytes",
                             KMDC_PASS_MAX - 2);
    if (kmdc_http_interrupted)
        return kmdc_cli_fail(KMDC_EXIT_FAIL, "interrupted");
    return kmdc_cli_fail(KMDC_EXIT_CARD, "cannot read the passphrase from the terminal");
}

int
kmdc_cli_load_prompting(kmdc_cli *c, kmdc_card **card)
{
    char prompt[600];
    kmdc_err e;
    kmdc_status st = KMDC_ERR_PASSPHRASE;
    int tries, r;

    *card = NULL;
    snprintf(prompt, sizeof prompt, "Passphrase for the card %.500s: ", c->card_path);
    for (tries = 0; tries < PROMPT_TRIES; tries++) {
        kmdc_err_clear(&e);
        if ((r = kmdc_cli_tty_read(prompt, c->pass, sizeof c->pass)) == -1)
            return kmdc_cli_fail(KMDC_EXIT_CARD, "%s: the card is protected by a passphrase; "
                                 "there is no terminal to ask for it, so give it with "
                                 "--passphrase-file FILE", c->card_path);
        if (r != 0)
            return tty_fail(r);
        if (c->pass[0] == '\0')
            continue;
        st = kmdc_card_load(c->card_path, c->pass, card, &e);
        if (st == KMDC_OK) {
            c->pass_read = 1;
            return KMDC_EXIT_OK;
        }
        kmdc_wipe(c->pass, sizeof c->pass);
        if (st != KMDC_ERR_PASSPHRASE)
            return kmdc_cli_fail(kmdc_cli_exit_for(st), "card %s: %s", c->card_path, e.msg);
        fputs("kmdc: wrong passphrase\n", stderr);
    }
    return kmdc_cli_fail(KMDC_EXIT_CARD, "%s: wrong passphrase (%d tries)", c->card_path,
                         PROMPT_TRIES);
}

/* The new passphrase: from newfile, or typed twice on the terminal. */
static int
new_passphrase(const char *newfile, char *buf, size_t cap)
{
    char again[KMDC_PASS_MAX];
    kmdc_err e;
    int r, rc = KMDC_EXIT_OK;

    kmdc_err_clear(&e);
    if (newfile != NULL) {
        if (kmdc_passphrase_file_read(newfile, buf, cap, &e) != KMDC_OK)
            return kmdc_cli_fail_err(KMDC_EXIT_CARD, &e);
        return KMDC_EXIT_OK;
    }
    if ((r = kmdc_cli_tty_read("New passphrase for the card: ", buf, cap)) == -1)
        return kmdc_cli_fail(KMDC_EXIT_USAGE, "card passphrase: there is no terminal to type "
                             "the new passphrase on; give it with --new-passphrase-file FILE");
    if (r != 0)
        return tty_fail(r);
    if (buf[0] == '\0') {
        rc = kmdc_cli_fail(KMDC_EXIT_CARD, "card passphrase: an empty passphrase is not a "
                           "passphrase (use --remove to store the card unprotected)");
        goto out;
    }
    if ((r = kmdc_cli_tty_read("The same passphrase again: ", again, sizeof again)) != 0) {
        rc = tty_fail(r == -1 ? -2 : r);
        goto out;
    }
    if (strcmp(buf, again) != 0)
        rc = kmdc_cli_fail(KMDC_EXIT_CARD, "card passphrase: the two passphrases differ; "
                           "nothing was changed");
out:
    kmdc_wipe(again, sizeof again);
    if (rc != KMDC_EXIT_OK)
        kmdc_wipe(buf, cap);
    return rc;
}

int
kmdc_cmd_card_passphrase(kmdc_cli *c, int remove, const char *newfile)
{
    kmdc_card_lockh *slk = NULL, *rlk = NULL, *clk = NULL;
    kmdc_card *card = NULL;
    char newpass[KMDC_PASS_MAX];
    kmdc_err e;
    int rc;

    kmdc_err_clear(&e);
    newpass[0] = '\0';
    if (remove && newfile != NULL)
        return kmdc_cli_usage(c, "give --remove or --new-passphrase-file, not both");
    /* No send or fetch may hold the card (with the old passphrase) meanwhile. */
    if ((rc = kmdc_cli_lock(c, KMDC_LOCK_SEND, &slk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_lock(c, KMDC_LOCK_RECV, &rlk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_lock(c, KMDC_LOCK_CARD, &clk)) != KMDC_EXIT_OK ||
        (rc = kmdc_cli_load(c, &card)) != KMDC_EXIT_OK)
        goto out;
    if (remove) {
        if (!kmdc_card_is_protected(card)) {
            printf("the card %s has no passphrase\n", c->card_path);
            goto out;
        }
        kmdc_card_set_unprotected(card);
    } else if ((rc = new_passphrase(newfile, newpass, sizeof newpass)) != KMDC_EXIT_OK) {
        goto out;
    }
    if (kmdc_card_save(card, c->card_path, remove ? NULL : newpass, &e) != KMDC_OK) {
        rc = kmdc_cli_fail(kmdc_cli_exit_for(e.code), "cannot save the card: %s", e.msg);
        goto out;
    }
    printf(remove ? "the card %s is no longer protected by a passphrase\n"
                  : "the card %s is protected by the new passphrase\n", c->card_path);
    if (fflush(stdout) != 0)
        rc = kmdc_cli_fail(KMDC_EXIT_FAIL, "cannot write the output");
out:
    kmdc_wipe(newpass, sizeof newpass);
    kmdc_card_free(card);
    kmdc_card_unlock(clk);
    kmdc_card_unlock(rlk);
    kmdc_card_unlock(slk);
    return rc;
}
