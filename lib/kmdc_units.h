/*
 * kmdc_units.h - durations and sizes as an administrator writes them, the one
 * parser behind the module's directives and kmdcadm's options (docs/ADMIN.md,
 * docs/DIRECTIVES.md):
 *   duration: decimal seconds, or a decimal number with one suffix
 *             s, m, h or d (lowercase): "90", "90s", "15m", "2h", "7d";
 *   size:     decimal bytes, or a decimal number with one suffix K, M or G
 *             (powers of 1024, either case): "65536", "64k", "16M", "1G".
 * No sign, space, fraction or second suffix.  Leading zeros are allowed.
 *
 * The result is the plain number (seconds, bytes).  The checks come in this
 * order, so a caller can word its messages as it did before:
 *   KMDC_UNITS_NOT_NUMBER  s does not start with a decimal digit;
 *   KMDC_UNITS_TOO_LARGE   the digits alone overflow int64_t;
 *   KMDC_UNITS_BAD_UNIT    something other than one known suffix follows;
 *   KMDC_UNITS_TOO_LARGE   the number times its unit overflows, or exceeds max.
 * *out is written only on KMDC_UNITS_OK.  Pure functions: thread-safe, no
 * allocation.
 */
#ifndef KMDC_UNITS_H
#define KMDC_UNITS_H

#include <stdint.h>

typedef enum kmdc_units_rc {
    KMDC_UNITS_OK = 0,
    KMDC_UNITS_NOT_NUMBER,
    KMDC_UNITS_BAD_UNIT,
    KMDC_UNITS_TOO_LARGE
} kmdc_units_rc;

/* A duration in seconds, at most max (INT64_MAX for no bound of its own). */
kmdc_units_rc kmdc_parse_duration(const char *s, int64_t max, int64_t *out);

/* A size in bytes, at most max (INT64_MAX for no bound of its own). */
kmdc_units_rc kmdc_parse_size(const char *s, int64_t max, int64_t *out);

/* A plain decimal number (no suffix), at most max; same codes. */
kmdc_units_rc kmdc_parse_decimal(const char *s, int64_t max, int64_t *out);

#endif
