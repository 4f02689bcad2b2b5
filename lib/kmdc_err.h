/*
 * kmdc_err.h - status codes and error messages shared by every part of libkmdc.
 *
 * Every function that can fail returns a kmdc_status and, when given a non-NULL
 * kmdc_err, fills it with a message a user can act on.  Messages never contain
 * secrets, document names or addresses (serials and counters only).
 */
#ifndef KMDC_ERR_H
#define KMDC_ERR_H

#include <stddef.h>

typedef enum kmdc_status {
    KMDC_OK = 0,
    KMDC_ERR_INTERNAL,    /* a library call failed (OpenSSL, allocation) */
    KMDC_ERR_ARG,         /* a caller passed an invalid argument */
    KMDC_ERR_FORMAT,      /* input does not follow the protocol framing */
    KMDC_ERR_AUTH,        /* a tag, MAC or signature did not verify */
    KMDC_ERR_TRUNCATED,   /* input ended before it was complete */
    KMDC_ERR_TRAILING,    /* bytes after the end of a well-formed object */
    KMDC_ERR_LIMIT,       /* a protocol or configured bound was exceeded */
    KMDC_ERR_IO,          /* a system call failed (see errno text in msg) */
    KMDC_ERR_PERM,        /* file permissions are unsafe */
    KMDC_ERR_LOCKED,      /* another process holds a lock */
    KMDC_ERR_PASSPHRASE,  /* wrong passphrase, or one is needed */
    KMDC_ERR_CORRUPT,     /* a stored file failed its checksum */
    KMDC_ERR_EXHAUSTED,   /* a counter would pass 2^63-1 */
    KMDC_ERR_NAME,        /* a NAME value breaks a rule of docs/PROTOCOL.md section 3 */
    KMDC_ERR_STALE,       /* a timestamp is outside the allowed window */
    KMDC_ERR_NOTFOUND,    /* a looked-up item does not exist */
    KMDC_ERR__MAX
} kmdc_status;

typedef struct kmdc_err {
    kmdc_status code;
    char msg[256];
} kmdc_err;

/* Set err (if non-NULL) and return code.  printf-style message. */
kmdc_status kmdc_err_set(kmdc_err *err, kmdc_status code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* A failed system call: KMDC_ERR_IO, "<what> <path>: <strerror(errno)>".
 * Reads errno first, so call it right after the failing call. */
kmdc_status kmdc_err_sys(kmdc_err *err, const char *what, const char *path);

/* Clear err to KMDC_OK with an empty message. */
void kmdc_err_clear(kmdc_err *err);

/* A short stable token for a status ("auth", "truncated", ...). */
const char *kmdc_status_name(kmdc_status code);

#endif
