/*
 * tap.h - a minimal Test Anything Protocol emitter for the unit tests.
 *
 * Each test program prints "ok N - name" / "not ok N - name" lines and ends
 * with tap_done(), which prints the plan "1..N" and returns the exit status
 * (non-zero when any test failed).  scripts/check compares N with
 * tests/MANIFEST so a program that silently runs fewer tests fails the run.
 *
 * Cases: a test program is a list of cases, each a function that builds its
 * own fixture (nothing mutable shared with the next case), run with
 *
 *     TEST_RUN(case_function);          or    TEST_START("name"); ... TEST_DONE();
 *
 * TEST_START prints "# name" and TEST_DONE checks that the case ran at least
 * one check: a case that returned early without checking anything is one
 * "not ok" line, so it cannot pass silently.
 */
#ifndef KMDC_TAP_H
#define KMDC_TAP_H

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static int tap_n, tap_failed;

__attribute__((format(printf, 2, 3), unused)) static int
tap_ok(int cond, const char *fmt, ...)
{
    va_list ap;

    tap_n++;
    printf("%sok %d - ", cond ? "" : "not ", tap_n);
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
    if (!cond)
        tap_failed++;
    fflush(stdout);
    return cond;
}

__attribute__((format(printf, 1, 2), unused)) static void
tap_diag(const char *fmt, ...)
{
    va_list ap;

    printf("# ");
    va_start(ap, fmt);
    vprintf(fmt, ap);
    va_end(ap);
    printf("\n");
}

/* Compare two byte strings; on mismatch print both in hex as diagnostics. */
__attribute__((unused)) static int
tap_mem_eq(const void *got, size_t gotlen, const void *want, size_t wantlen,
           const char *name)
{
    int eq = gotlen == wantlen && (gotlen == 0 || memcmp(got, want, gotlen) == 0);

    if (!tap_ok(eq, "%s", name)) {
        size_t i;
        printf("#   got  (%zu):", gotlen);
        for (i = 0; i < gotlen && i < 64; i++)
            printf("%02x", ((const unsigned char *)got)[i]);
        printf("\n#   want (%zu):", wantlen);
        for (i = 0; i < wantlen && i < 64; i++)
            printf("%02x", ((const unsigned char *)want)[i]);
        printf("\n");
    }
    return eq;
}

static const char *tap_case;
static int tap_case_first;

__attribute__((unused)) static void
tap_case_start(const char *name)
{
    tap_case = name;
    tap_case_first = tap_n;
    printf("# %s\n", name);
}

__attribute__((unused)) static void
tap_case_done(void)
{
    if (tap_case != NULL && tap_n == tap_case_first)
        tap_ok(0, "%s: the case ran no check", tap_case);
    tap_case = NULL;
}

#define TEST_START(name) tap_case_start(name)
#define TEST_DONE() tap_case_done()
#define TEST_RUN(fn) (tap_case_start(#fn), fn(), tap_case_done())

__attribute__((unused)) static int
tap_done(void)
{
    printf("1..%d\n", tap_n);
    if (tap_failed)
        printf("# %d of %d failed\n", tap_failed, tap_n);
    return tap_failed ? 1 : 0;
}

#endif
