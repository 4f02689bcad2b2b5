/*
 * kmdc_multipart.h - a strict streaming multipart/form-data parser
 * (RFC 7578 over RFC 2046) for POST /send.
 *
 * The body is fed in slices of any size (as buckets arrive); memory is fixed
 * at creation (a few buffers bounded by the limits).  Part data is handed to
 * part_data as soon as it cannot be the start of a delimiter, and never
 * includes delimiter bytes; a look-behind of at most boundary length + 4
 * bytes is held back (and, since a delimiter starts with the only CR it
 * contains, it is always a prefix of the delimiter itself).
 *
 * Accepted grammar (stricter than RFC 2046):
 *   body     = "--" B pad CRLF part *( CRLF "--" B pad CRLF part )
 *              CRLF "--" B "--" pad [ epilogue ]
 *   part     = 1*( header CRLF ) CRLF *OCTET
 *   pad      = up to max_padding SP / HTAB
 *   epilogue = CRLF pairs only, at most max_epilogue bytes in all
 * No preamble (browsers and curl send none), CRLF line endings only (a bare
 * CR or LF in the framing is an error), at least one part.  A line of part
 * data that starts with "--" B but is not a delimiter is refused (RFC 2046
 * forbids the boundary as the prefix of any line of the content); so is
 * content that starts with "--" B right after the blank line (RFC 2046
 * would read that as a part with no body; an empty body is written as the
 * blank line followed by CRLF "--" B, as curl and browsers do).
 * Part headers: only Content-Disposition (required: form-data; name="..."
 * and optionally filename="...", nothing else) and Content-Type, each at
 * most once, names case-insensitive, no obs-fold, no control characters,
 * the whole header block (every line with its CRLF and the blank line) at
 * most max_header_bytes.  Parameter values are quoted-strings (a backslash
 * escapes the next character) or tokens; names are 1..max_name bytes,
 * filenames 0..max_name bytes, neither may contain NUL, CR or LF.
 *
 * Status codes: KMDC_ERR_FORMAT for a framing error, KMDC_ERR_LIMIT when a
 * bound of kmdc_mp_limits is broken, KMDC_ERR_TRAILING for bytes after the
 * close delimiter that are not the allowed epilogue, KMDC_ERR_TRUNCATED from
 * kmdc_mp_final when the close delimiter was not seen.  A callback's error
 * is returned as is.  After any error the parser refuses further input.
 */
#ifndef KMDC_MULTIPART_H
#define KMDC_MULTIPART_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"

#define KMDC_MP_BOUNDARY_MAX 70

/* Bounds of one parse; kmdc_mp_limits_default() fills the defaults noted. */
typedef struct kmdc_mp_limits {
    size_t max_parts;         /* parts in the body (4); 1 .. 1024 */
    size_t max_header_bytes;  /* one part's header block (1024); 64 .. 65536 */
    size_t max_name;          /* name and filename bytes (255); 1 .. 4096 */
    size_t max_padding;       /* transport padding after a boundary (32); <= 4096 */
    size_t max_epilogue;      /* bytes after the close delimiter (2); <= 4096 */
} kmdc_mp_limits;

/* The callbacks; any may be NULL (then the event is ignored).  Strings are
 * NUL-terminated and valid only during the call. */
struct kmdc_mp_cbs {
    /* A part's headers are complete.  filename and content_type are NULL
     * when the part has none; content_type is the raw header value with
     * surrounding whitespace removed. */
    kmdc_status (*part_begin)(void *arg, const char *name, const char *filename,
                              const char *content_type, kmdc_err *err);
    /* The next len (> 0) bytes of the part's content. */
    kmdc_status (*part_data)(void *arg, const uint8_t *p, size_t len,
                             kmdc_err *err);
    /* The part's content ended (its delimiter was seen).  The body may still
     * turn out to be invalid: only a successful kmdc_mp_final settles it. */
    kmdc_status (*part_end)(void *arg, kmdc_err *err);
};

typedef struct kmdc_mp kmdc_mp;

/* Fill lim with the defaults listed in kmdc_mp_limits. */
void kmdc_mp_limits_default(kmdc_mp_limits *lim);

/*
 * Extract the boundary from a Content-Type header value ct (NUL-terminated,
 * at most 1024 bytes): the media type multipart/form-data (case-insensitive)
 * followed by parameters "; name=value" (optional whitespace around ";" and
 * "="), values as tokens or quoted-strings; exactly one boundary parameter
 * (name case-insensitive), other parameters allowed.  The boundary is 1..70
 * characters of the RFC 2046 bchars, not ending in a space.  It is written,
 * unquoted and NUL-terminated, to out.  KMDC_ERR_FORMAT otherwise.
 */
kmdc_status kmdc_mp_boundary_from_content_type(const char *ct,
                                               char out[KMDC_MP_BOUNDARY_MAX + 1],
                                               kmdc_err *err);

/*
 * Create a parser for boundary (as returned above; checked again), with the
 * limits lim (NULL: the defaults; KMDC_ERR_ARG when out of range), the
 * callbacks cbs (copied; may be NULL) and their argument arg.  Returns NULL
 * and fills err on failure.  Free with kmdc_mp_free.
 */
kmdc_mp *kmdc_mp_new(const char *boundary, const kmdc_mp_limits *lim,
                     const struct kmdc_mp_cbs *cbs, void *arg, kmdc_err *err);

/* Feed the next len bytes of the body (in may be NULL when len is 0). */
kmdc_status kmdc_mp_update(kmdc_mp *mp, const void *in, size_t len, kmdc_err *err);

/*
 * The body ended: KMDC_OK when the close delimiter was seen and what
 * followed was a valid epilogue; KMDC_ERR_TRUNCATED when the body ended
 * before the close delimiter; the earlier error when the parser had failed.
 */
kmdc_status kmdc_mp_final(kmdc_mp *mp, kmdc_err *err);

/* Number of parts begun so far. */
size_t kmdc_mp_parts(const kmdc_mp *mp);

/* Free the parser (wiping its buffers).  Accepts NULL. */
void kmdc_mp_free(kmdc_mp *mp);

#endif
