/* kmdc_units.c - durations and sizes (contract in kmdc_units.h). */
#include "kmdc_units.h"

#include <stddef.h>

typedef struct unit {
    char c;
    int64_t mult;
} unit;

static const unit duration_units[] = {
    { 's', 1 }, { 'm', 60 }, { 'h', 3600 }, { 'd', 86400 }, { 0, 0 }
};

static const unit size_units[] = {
    { 'k', INT64_C(1) << 10 }, { 'K', INT64_C(1) << 10 },
    { 'm', INT64_C(1) << 20 }, { 'M', INT64_C(1) << 20 },
    { 'g', INT64_C(1) << 30 }, { 'G', INT64_C(1) << 30 },
    { 0, 0 }
};

static const unit no_units[] = { { 0, 0 } };

/* Digits, then at most one suffix of units, then max. */
static kmdc_units_rc
parse(const char *s, const unit *units, int64_t max, int64_t *out)
{
    int64_t v = 0, mult = 1;
    size_t i;

    if (s == NULL || out == NULL || *s < '0' || *s > '9')
        return KMDC_UNITS_NOT_NUMBER;
    for (; *s >= '0' && *s <= '9'; s++) {
        if (v > (INT64_MAX - (*s - '0')) / 10)
            return KMDC_UNITS_TOO_LARGE;
        v = v * 10 + (*s - '0');
    }
    if (*s != '\0') {
        for (i = 0; units[i].c != 0 && units[i].c != *s; i++)
            ;
        if (units[i].c == 0 || s[1] != '\0')
            return KMDC_UNITS_BAD_UNIT;
        mult = units[i].mult;
    }
    if (v > INT64_MAX / mult || v * mult > max)
        return KMDC_UNITS_TOO_LARGE;
    *out = v * mult;
    return KMDC_UNITS_OK;
}

kmdc_units_rc
kmdc_parse_duration(const char *s, int64_t max, int64_t *out)
{
    return parse(s, duration_units, max, out);
}

kmdc_units_rc
kmdc_parse_size(const char *s, int64_t max, int64_t *out)
{
    return parse(s, size_units, max, out);
}

kmdc_units_rc
kmdc_parse_decimal(const char *s, int64_t max, int64_t *out)
{
    return parse(s, no_units, max, out);
}
