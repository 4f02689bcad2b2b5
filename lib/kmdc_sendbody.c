/*
 * kmdc_sendbody.c - the body of POST /send around the envelope: raw, or
 * multipart/form-data with the parts `envelope` and (optionally) `serial`.
 *
 * A `serial` part must name the envelope header's serial.  When it comes
 * first, the envelope's bytes are held to the header's serial field (the
 * first 16 bytes) until it is compared, so a mismatch is refused before the
 * intake reads the header; when it comes last, it is compared at its end,
 * before the intake may publish (publication waits for the whole body).
 */
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "kmdc_multipart.h"
#include "kmdc_sendbody.h"
#include "kmdc_util.h"

/* Bytes of the envelope up to the end of its header's serial field. */
#define SERIAL_END 16

enum part { PART_NONE, PART_ENVELOPE, PART_SERIAL };

struct kmdc_sendbody {
    kmdc_intake *in;
    kmdc_mp *mp;                    /* NULL: a raw body */
    enum part part;
    int saw_envelope, saw_serial;
    char serial_text[16];
    size_t serial_len;
    uint64_t serial;                /* of the serial part */
    uint8_t head[SERIAL_END];       /* the envelope's first bytes */
    size_t head_len;
};

static int
refuse(kmdc_sendbody *b, const char *message)
{
    kmdc_intake_refuse_framing(b->in, "bad_multipart", message);
    return 0;
}

/* 1 when the serial part and the envelope header (once known) agree. */
static int
serials_agree(const kmdc_sendbody *b)
{
    if (!b->saw_serial || b->head_len < SERIAL_END)
        return 1;
    return kmdc_get_u64(b->head + 8) == b->serial;
}

/* Envelope bytes: checked against a serial part, then fed to the intake. */
static int
feed_envelope(kmdc_sendbody *b, const uint8_t *p, size_t len)
{
    if (b->head_len < SERIAL_END) {
        size_t take = SERIAL_END - b->head_len < len ? SERIAL_END - b->head_len : len;

        memcpy(b->head + b->head_len, p, take);
        b->head_len += take;
        if (!serials_agree(b))
            return refuse(b, "the serial part does not match the envelope");
    }
    return kmdc_intake_feed(b->in, p, len);
}

static kmdc_status
mp_begin(void *arg, const char *name, const char *filename, const char *ctype,
         kmdc_err *err)
{
    kmdc_sendbody *b = arg;

    (void)filename;
    (void)ctype;
    if (strcmp(name, "envelope") == 0 && !b->saw_envelope) {
        b->part = PART_ENVELOPE;
        b->saw_envelope = 1;
    } else if (strcmp(name, "serial") == 0 && !b->saw_serial) {
        b->part = PART_SERIAL;
        b->serial_len = 0;
    } else {
        refuse(b, "only one part 'envelope' and one part 'serial' are allowed");
        return kmdc_err_set(err, KMDC_ERR_ARG, "refused");
    }
    return KMDC_OK;
}

static kmdc_status
mp_data(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    kmdc_sendbody *b = arg;

    if (b->part == PART_ENVELOPE) {
        if (!feed_envelope(b, p, len))
            return kmdc_err_set(err, KMDC_ERR_ARG, "answered");
        return KMDC_OK;
    }
    if (b->serial_len + len > sizeof(b->serial_text)) {
        refuse(b, "the serial part is not 16 hex digits");
        return kmdc_err_set(err, KMDC_ERR_ARG, "refused");
    }
    memcpy(b->serial_text + b->serial_len, p, len);
    b->serial_len += len;
    return KMDC_OK;
}

static kmdc_status
mp_end(void *arg, kmdc_err *err)
{
    kmdc_sendbody *b = arg;

    if (b->part == PART_SERIAL) {
        if (kmdc_serial_parse(&b->serial, b->serial_text, b->serial_len, NULL) != KMDC_OK) {
            refuse(b, "the serial part is not 16 hex digits");
            return kmdc_err_set(err, KMDC_ERR_ARG, "refused");
        }
        b->saw_serial = 1;
        if (!serials_agree(b)) {
            refuse(b, "the serial part does not match the envelope");
            return kmdc_err_set(err, KMDC_ERR_ARG, "refused");
        }
    }
    b->part = PART_NONE;
    return KMDC_OK;
}

kmdc_sendbody *
kmdc_sendbody_new(const char *ct, kmdc_intake *in, kmdc_err *err)
{
    static const struct kmdc_mp_cbs cbs = { mp_begin, mp_data, mp_end };
    static const char multipart[] = "multipart/form-data";
    const size_t tl = sizeof(KMDC_ENVELOPE_TYPE) - 1;
    char boundary[KMDC_MP_BOUNDARY_MAX + 1];
    kmdc_mp_limits lim;
    kmdc_sendbody *b;
    int raw;

    raw = ct != NULL && strncasecmp(ct, KMDC_ENVELOPE_TYPE, tl) == 0 &&
          (ct[tl] == '\0' || ct[tl] == ';');
    if (!raw && (ct == NULL || strncasecmp(ct, multipart, sizeof(multipart) - 1) != 0)) {
        kmdc_err_set(err, KMDC_ERR_ARG, "send the envelope as " KMDC_ENVELOPE_TYPE
                     " or as multipart/form-data with a part 'envelope'");
        return NULL;
    }
    if ((b = calloc(1, sizeof(*b))) == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        return NULL;
    }
    b->in = in;
    if (!raw) {
        kmdc_mp_limits_default(&lim);
        if (kmdc_mp_boundary_from_content_type(ct, boundary, err) != KMDC_OK ||
            (b->mp = kmdc_mp_new(boundary, &lim, &cbs, b, err)) == NULL) {
            if (err != NULL && err->code != KMDC_ERR_INTERNAL)
                err->code = KMDC_ERR_FORMAT;
            free(b);
            return NULL;
        }
    }
    return b;
}

int
kmdc_sendbody_feed(kmdc_sendbody *b, const uint8_t *p, size_t len)
{
    kmdc_err err;

    if (kmdc_intake_decision(b->in) != NULL)
        return 0;
    if (b->mp == NULL)
        return kmdc_intake_feed(b->in, p, len);
    kmdc_err_clear(&err);
    if (kmdc_mp_update(b->mp, p, len, &err) != KMDC_OK &&
        kmdc_intake_decision(b->in) == NULL)
        kmdc_intake_refuse_framing(b->in, "bad_multipart", err.msg);
    return kmdc_intake_decision(b->in) == NULL;
}

void
kmdc_sendbody_finish(kmdc_sendbody *b)
{
    kmdc_err err;

    if (kmdc_intake_decision(b->in) != NULL)
        return;
    if (b->mp != NULL) {
        kmdc_err_clear(&err);
        if (kmdc_mp_final(b->mp, &err) != KMDC_OK) {
            if (kmdc_intake_decision(b->in) == NULL)
                kmdc_intake_refuse_framing(b->in, "bad_multipart", err.msg);
            return;
        }
        if (!b->saw_envelope) {
            kmdc_intake_refuse_framing(b->in, "bad_multipart", "the part 'envelope' is missing");
            return;
        }
    }
    kmdc_intake_finish(b->in);
}

void
kmdc_sendbody_free(kmdc_sendbody *b)
{
    if (b == NULL)
        return;
    kmdc_mp_free(b->mp);
    free(b);
}
