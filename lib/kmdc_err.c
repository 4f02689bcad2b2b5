/* kmdc_err.c - status codes and error messages. */
#include "kmdc_err.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

kmdc_status
kmdc_err_set(kmdc_err *err, kmdc_status code, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL)
        return code;
    err->code = code;
    va_start(ap, fmt);
    vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
    va_end(ap);
    return code;
}

kmdc_status
kmdc_err_sys(kmdc_err *err, const char *what, const char *path)
{
    int e = errno;

    return kmdc_err_set(err, KMDC_ERR_IO, "%s %s: %s", what, path, strerror(e));
}

void
kmdc_err_clear(kmdc_err *err)
{
    if (err == NULL)
        return;
    err->code = KMDC_OK;
    err->msg[0] = '\0';
}

const char *
kmdc_status_name(kmdc_status code)
{
    static const char *const names[KMDC_ERR__MAX] = {
        [KMDC_OK] = "ok",
        [KMDC_ERR_INTERNAL] = "internal",
        [KMDC_ERR_ARG] = "argument",
        [KMDC_ERR_FORMAT] = "format",
        [KMDC_ERR_AUTH] = "auth",
        [KMDC_ERR_TRUNCATED] = "truncated",
        [KMDC_ERR_TRAILING] = "trailing",
        [KMDC_ERR_LIMIT] = "limit",
        [KMDC_ERR_IO] = "io",
        [KMDC_ERR_PERM] = "permissions",
        [KMDC_ERR_LOCKED] = "locked",
        [KMDC_ERR_PASSPHRASE] = "passphrase",
        [KMDC_ERR_CORRUPT] = "corrupt",
        [KMDC_ERR_EXHAUSTED] = "exhausted",
        [KMDC_ERR_NAME] = "name",
        [KMDC_ERR_STALE] = "stale",
        [KMDC_ERR_NOTFOUND] = "not-found",
    };

    if ((unsigned)code >= KMDC_ERR__MAX || names[code] == NULL)
        return "unknown";
    return names[code];
}
