/*
 * fuzz_check.h - the checks the kmdc client's fuzz targets share
 * (fuzz_answer.c, fuzz_headers.c): a broken promise aborts, so the fuzzer
 * reports it as a crash.  Header-only: each target is one program.
 */
#ifndef FUZZ_CHECK_H
#define FUZZ_CHECK_H

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* Abort unless cond holds. */
static inline void
check(int cond)
{
    if (!cond)
        abort();
}

/* Text handed back in s[0..cap): NUL-terminated within cap, no control
 * characters. */
static inline void
check_text(const char *s, size_t cap)
{
    size_t i, n = strnlen(s, cap);

    check(n < cap);
    for (i = 0; i < n; i++)
        check((unsigned char)s[i] >= 0x20 && s[i] != 0x7f);
}

#endif
