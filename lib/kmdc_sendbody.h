/*
 * kmdc_sendbody.h - the body of POST /send around the envelope: raw
 * (Content-Type application/vnd.kmdc.envelope) or a browser-style
 * multipart/form-data upload with one file part `envelope` and an optional
 * text part `serial` (16 hex digits, equal to the envelope header's serial),
 * in either order, nothing else.  It unwraps the envelope's bytes and feeds
 * them to an intake (kmdc_intake.h), and refuses a malformed framing through
 * it (400 bad_multipart).  Httpd-free, so the same code is fuzzed.
 *
 * The endpoint chooses nothing itself: it creates a sendbody from the
 * Content-Type, feeds it the body's bytes as they arrive (chunked transfer
 * coding is already removed by httpd), and calls _finish at the end of the
 * body.  The answer is the intake's.
 */
#ifndef KMDC_SENDBODY_H
#define KMDC_SENDBODY_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"
#include "kmdc_intake.h"

/* The envelope's media type. */
#define KMDC_ENVELOPE_TYPE "application/vnd.kmdc.envelope"

typedef struct kmdc_sendbody kmdc_sendbody;

/*
 * A body of the given Content-Type (may be NULL) feeding in.  NULL with
 * err->code KMDC_ERR_ARG when the media type is neither of the two (415
 * unsupported_media_type), KMDC_ERR_FORMAT when a multipart type has no
 * usable boundary (400 bad_multipart; err->msg says why), KMDC_ERR_INTERNAL
 * when out of memory.
 */
kmdc_sendbody *kmdc_sendbody_new(const char *content_type, kmdc_intake *in,
                                 kmdc_err *err);

/* Feed the next bytes of the body.  1 while more are wanted, 0 once the
 * intake has an answer (stop reading). */
int kmdc_sendbody_feed(kmdc_sendbody *b, const uint8_t *p, size_t len);

/* The body ended: check its framing (the close delimiter, the part
 * `envelope` present), then let the intake finish. */
void kmdc_sendbody_finish(kmdc_sendbody *b);

/* Accepts NULL.  Does not free the intake. */
void kmdc_sendbody_free(kmdc_sendbody *b);

#endif
