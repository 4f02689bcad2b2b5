/* kmdc_tlv.c - the keyblock metadata TLV (docs/PROTOCOL.md section 3): decode, encode, and
 * the NAME and TYPE rules. */
#include "kmdc_tlv.h"
#include "kmdc_util.h"

#include <string.h>

#define ENTRY_HDR 3   /* u8 type || u16 len */

/* ------------------------------------------------------------------ */
/* NAME and TYPE                                                      */

/*
 * Decode one UTF-8 sequence at p[*i] strictly: shortest form only, no
 * surrogates, nothing above U+10FFFF.  Advances *i; returns 1 on success.
 */
static int
utf8_next(const uint8_t *p, size_t len, size_t *i, uint32_t *cp)
{
    uint8_t b0 = p[*i];
    size_t n, k;
    uint32_t c, min;

    if (b0 < 0x80) {
        *cp = b0;
        (*i)++;
        return 1;
    }
    if (b0 >= 0xc2 && b0 <= 0xdf) {
        n = 2;
        min = 0x80;
        c = b0 & 0x1f;
    } else if (b0 >= 0xe0 && b0 <= 0xef) {
        n = 3;
        min = 0x800;
        c = b0 & 0x0f;
    } else if (b0 >= 0xf0 && b0 <= 0xf4) {
        n = 4;
        min = 0x10000;
        c = b0 & 0x07;
    } else {
        return 0;   /* continuation byte, 0xc0/0xc1 overlong lead, > 0xf4 */
    }
    if (len - *i < n)
        return 0;
    for (k = 1; k < n; k++) {
        uint8_t b = p[*i + k];
        if ((b & 0xc0) != 0x80)
            return 0;
        c = (c << 6) | (b & 0x3f);
    }
    if (c < min || c > 0x10ffff || (c >= 0xd800 && c <= 0xdfff))
        return 0;
    *cp = c;
    *i += n;
    return 1;
}

/*
 * 1 for the characters a NAME may not hold besides '/' and '\': C0 controls,
 * DEL, C1 controls, and the bidirectional and invisible format characters
 * U+061C, U+200B-200F, U+202A-202E, U+2060-2064, U+2066-2069 and U+FEFF.
 */
static int
name_forbidden(uint32_t c)
{
    return c < 0x20 || c == 0x7f || (c >= 0x80 && c <= 0x9f) || c == '/' || c == '\\' ||
           c == 0x061c || (c >= 0x200b && c <= 0x200f) || (c >= 0x202a && c <= 0x202e) ||
           (c >= 0x2060 && c <= 0x2064) || (c >= 0x2066 && c <= 0x2069) || c == 0xfeff;
}

int
kmdc_name_valid(const uint8_t *p, size_t len)
{
    size_t i = 0;
    uint32_t c;

    if (p == NULL || len < 1 || len > KMDC_NAME_MAX)
        return 0;
    if ((len == 1 && p[0] == '.') || (len == 2 && p[0] == '.' && p[1] == '.'))
        return 0;
    while (i < len) {
        if (!utf8_next(p, len, &i, &c))
            return 0;
        if (name_forbidden(c))
            return 0;
    }
    return 1;
}

int
kmdc_name_local(const uint8_t *p, size_t len, char *out, size_t cap)
{
    size_t pre;

    if (!kmdc_name_valid(p, len))
        return -1;
    pre = p[0] == '.' || p[0] == '-' ? 1 : 0;
    if (out == NULL || cap < pre + len + 1)
        return -1;
    if (pre)
        out[0] = '_';
    memcpy(out + pre, p, len);
    out[pre + len] = '\0';
    return (int)(pre + len);
}

static int
is_alnum(uint8_t c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') ||
           (c >= '0' && c <= '9');
}

/* RFC 6838 restricted-name: 1..127 characters, ALPHA/DIGIT first. */
static int
restricted_name(const uint8_t *p, size_t len)
{
    size_t i;

    if (len < 1 || len > 127 || !is_alnum(p[0]))
        return 0;
    for (i = 1; i < len; i++) {
        uint8_t c = p[i];
        if (!is_alnum(c) && c != '!' && c != '#' && c != '$' && c != '&' &&
            c != '-' && c != '^' && c != '_' && c != '.' && c != '+')
            return 0;
    }
    return 1;
}

int
kmdc_type_valid(const uint8_t *p, size_t len)
{
    const uint8_t *slash;

    if (p == NULL || len < 3 || len > KMDC_TYPE_MAX)
        return 0;
    if ((slash = memchr(p, '/', len)) == NULL)
        return 0;
    return restricted_name(p, (size_t)(slash - p)) &&
           restricted_name(slash + 1, len - (size_t)(slash - p) - 1);
}

/* ------------------------------------------------------------------ */
/* kmdc_meta helpers                                                  */

void
kmdc_meta_init(kmdc_meta *m)
{
    memset(m, 0, sizeof(*m));
}

/* 1 when addr[0..len) is already one of the first n recipients of m. */
static int
rcpt_listed(const kmdc_meta *m, size_t n, const char *addr, size_t len)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (strlen(m->rcpt[i]) == len && memcmp(m->rcpt[i], addr, len) == 0)
            return 1;
    return 0;
}

kmdc_status
kmdc_meta_add_rcpt(kmdc_meta *m, const char *addr, size_t len, kmdc_err *err)
{
    if (m->n_rcpt >= KMDC_RCPT_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "at most %d recipients per message", KMDC_RCPT_MAX);
    if (addr == NULL || !kmdc_address_valid(addr, len))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "a recipient address must match "
                            "[a-z0-9][a-z0-9._-]{0,63}");
    if (rcpt_listed(m, m->n_rcpt, addr, len))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "recipient %zu is listed twice", m->n_rcpt + 1);
    memcpy(m->rcpt[m->n_rcpt], addr, len);
    m->rcpt[m->n_rcpt][len] = '\0';
    m->n_rcpt++;
    return KMDC_OK;
}

kmdc_status
kmdc_meta_set_name(kmdc_meta *m, const uint8_t *name, size_t len, kmdc_err *err)
{
    if (!kmdc_name_valid(name, len))
        return kmdc_err_set(err, KMDC_ERR_NAME,
                            "the file name is not acceptable (1..255 bytes of "
                            "UTF-8, not . or .., no slash, backslash, "
                            "control or invisible format character)");
    memcpy(m->name, name, len);
    m->name[len] = '\0';
    m->name_len = len;
    m->has_name = 1;
    return KMDC_OK;
}

kmdc_status
kmdc_meta_set_type(kmdc_meta *m, const char *type, size_t len, kmdc_err *err)
{
    if (!kmdc_type_valid((const uint8_t *)type, len))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "the media type must be an RFC 6838 type/subtype "
                            "of at most %d bytes", KMDC_TYPE_MAX);
    memcpy(m->type, type, len);
    m->type[len] = '\0';
    m->type_len = len;
    m->has_type = 1;
    return KMDC_OK;
}

kmdc_status
kmdc_meta_set_from(kmdc_meta *m, const char *addr, size_t len, kmdc_err *err)
{
    if (addr == NULL || !kmdc_address_valid(addr, len))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "a sender address must match "
                            "[a-z0-9][a-z0-9._-]{0,63}");
    memcpy(m->from, addr, len);
    m->from[len] = '\0';
    m->has_from = 1;
    return KMDC_OK;
}

void
kmdc_meta_copy_shared(kmdc_meta *dst, const kmdc_meta *src)
{
    kmdc_meta_init(dst);
    if (src->has_name) {
        memcpy(dst->name, src->name, sizeof(dst->name));
        dst->name_len = src->name_len;
        dst->has_name = 1;
    }
    if (src->has_type) {
        memcpy(dst->type, src->type, sizeof(dst->type));
        dst->type_len = src->type_len;
        dst->has_type = 1;
    }
    dst->has_size = src->has_size;
    dst->size = src->size;
    dst->has_sent = src->has_sent;
    dst->sent = src->sent;
}

/* ------------------------------------------------------------------ */
/* decoding                                                           */

static const char *
dir_name(int direction)
{
    return direction == KMDC_DIR_UP ? "up" : "down";
}

static kmdc_status
bad(kmdc_err *err, const char *what, unsigned type)
{
    return kmdc_err_set(err, KMDC_ERR_FORMAT, "metadata entry 0x%02x: %s", type,
                        what);
}

/* Is `type` a known type, and is it allowed in `direction`? */
static int
type_known(unsigned type)
{
    switch (type) {
    case KMDC_TLV_RCPT: case KMDC_TLV_NAME: case KMDC_TLV_TYPE:
    case KMDC_TLV_SIZE: case KMDC_TLV_SENT: case KMDC_TLV_FROM:
    case KMDC_TLV_FROMSERIAL: case KMDC_TLV_MSGID: case KMDC_TLV_RCVD:
        return 1;
    default:
        return 0;
    }
}

static int
type_allowed(unsigned type, int direction)
{
    switch (type) {
    case KMDC_TLV_RCPT:
        return direction == KMDC_DIR_UP;
    case KMDC_TLV_FROM: case KMDC_TLV_FROMSERIAL: case KMDC_TLV_MSGID:
    case KMDC_TLV_RCVD:
        return direction == KMDC_DIR_DOWN;
    default:
        return 1;
    }
}

static kmdc_status
decode_entry(kmdc_meta *m, unsigned t, const uint8_t *v, size_t l,
             kmdc_err *err)
{
    uint64_t u = 0;

    switch (t) {
    case KMDC_TLV_SIZE: case KMDC_TLV_SENT: case KMDC_TLV_FROMSERIAL:
    case KMDC_TLV_MSGID: case KMDC_TLV_RCVD:
        if (l != 8)
            return bad(err, "a u64 value must be 8 bytes long", t);
        u = kmdc_get_u64(v);
        break;
    default:
        break;
    }
    switch (t) {
    case KMDC_TLV_RCPT:
        if (m->n_rcpt >= KMDC_RCPT_MAX)
            return bad(err, "more than 32 recipients", t);
        if (!kmdc_address_valid((const char *)v, l))
            return bad(err, "a recipient is not a valid address", t);
        if (rcpt_listed(m, m->n_rcpt, (const char *)v, l))
            return bad(err, "a recipient is listed twice", t);
        memcpy(m->rcpt[m->n_rcpt], v, l);
        m->rcpt[m->n_rcpt][l] = '\0';
        m->n_rcpt++;
        break;
    case KMDC_TLV_NAME:
        if (!kmdc_name_valid(v, l))
            return kmdc_err_set(err, KMDC_ERR_NAME,
                                "metadata entry 0x02: the file name breaks "
                                "the NAME rules");
        memcpy(m->name, v, l);
        m->name[l] = '\0';
        m->name_len = l;
        m->has_name = 1;
        break;
    case KMDC_TLV_TYPE:
        if (!kmdc_type_valid(v, l))
            return bad(err, "not an RFC 6838 type/subtype of <= 127 bytes", t);
        memcpy(m->type, v, l);
        m->type[l] = '\0';
        m->type_len = l;
        m->has_type = 1;
        break;
    case KMDC_TLV_SIZE:
        if (u > KMDC_MAX_DOC)
            return bad(err, "SIZE exceeds 2^40", t);
        m->size = u;
        m->has_size = 1;
        break;
    case KMDC_TLV_SENT:
        m->sent = u;
        m->has_sent = 1;
        break;
    case KMDC_TLV_FROM:
        if (!kmdc_address_valid((const char *)v, l))
            return bad(err, "the sender is not a valid address", t);
        memcpy(m->from, v, l);
        m->from[l] = '\0';
        m->has_from = 1;
        break;
    case KMDC_TLV_FROMSERIAL:
        if (u == 0 || u > KMDC_U63_MAX)
            return bad(err, "FROMSERIAL must lie in 1 .. 2^63-1", t);
        m->fromserial = u;
        m->has_fromserial = 1;
        break;
    case KMDC_TLV_MSGID:
        if (u == 0 || u > KMDC_U63_MAX)
            return bad(err, "MSGID must lie in 1 .. 2^63-1", t);
        m->msgid = u;
        m->has_msgid = 1;
        break;
    case KMDC_TLV_RCVD:
        m->rcvd = u;
        m->has_rcvd = 1;
        break;
    default:
        break;   /* optional unknown type: skipped, never kept */
    }
    return KMDC_OK;
}

/* The required fields of a direction; err names the first one missing. */
static kmdc_status
check_required(const kmdc_meta *m, int direction, kmdc_status code,
               kmdc_err *err)
{
    const char *missing = NULL;

    if (direction == KMDC_DIR_UP && m->n_rcpt == 0)
        missing = "RCPT";
    else if (!m->has_size)
        missing = "SIZE";
    else if (!m->has_sent)
        missing = "SENT";
    else if (direction == KMDC_DIR_DOWN) {
        if (!m->has_from)
            missing = "FROM";
        else if (!m->has_fromserial)
            missing = "FROMSERIAL";
        else if (!m->has_msgid)
            missing = "MSGID";
        else if (!m->has_rcvd)
            missing = "RCVD";
    }
    if (missing != NULL)
        return kmdc_err_set(err, code, "the %s metadata lacks the required "
                            "field %s", dir_name(direction), missing);
    return KMDC_OK;
}

kmdc_status
kmdc_tlv_decode(kmdc_meta *m, const uint8_t *p, size_t len, int direction,
                kmdc_err *err)
{
    size_t off = 0;
    int last = -1;
    kmdc_status rc = KMDC_OK;

    kmdc_meta_init(m);
    if (direction != KMDC_DIR_UP && direction != KMDC_DIR_DOWN) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "unknown direction %d", direction);
        goto out;
    }
    if (p == NULL && len > 0) {
        rc = kmdc_err_set(err, KMDC_ERR_ARG, "no metadata buffer");
        goto out;
    }
    while (off < len) {
        unsigned t;
        size_t l;

        if (len - off < ENTRY_HDR) {
            rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                              "metadata ends inside an entry header");
            goto out;
        }
        t = p[off];
        l = kmdc_get_u16(p + off + 1);
        off += ENTRY_HDR;
        if (l > len - off) {
            rc = bad(err, "the value runs past the end of the metadata", t);
            goto out;
        }
        if ((int)t < last) {
            rc = bad(err, "entries are not sorted by type", t);
            goto out;
        }
        if ((int)t == last && t != KMDC_TLV_RCPT) {
            rc = bad(err, "the type appears more than once", t);
            goto out;
        }
        last = (int)t;
        if (t < KMDC_TLV_OPTIONAL_MIN && !type_known(t)) {
            rc = bad(err, "unknown critical type", t);
            goto out;
        }
        if (!type_allowed(t, direction)) {
            rc = kmdc_err_set(err, KMDC_ERR_FORMAT,
                              "metadata entry 0x%02x: not allowed in a %s "
                              "envelope", t, dir_name(direction));
            goto out;
        }
        if ((rc = decode_entry(m, t, p + off, l, err)) != KMDC_OK)
            goto out;
        off += l;
    }
    rc = check_required(m, direction, KMDC_ERR_FORMAT, err);
out:
    if (rc != KMDC_OK)
        kmdc_wipe(m, sizeof(*m));
    return rc;
}

/* ------------------------------------------------------------------ */
/* encoding                                                           */

static kmdc_status
check_meta(const kmdc_meta *m, int direction, kmdc_err *err)
{
    size_t i;

    if (direction != KMDC_DIR_UP && direction != KMDC_DIR_DOWN)
        return kmdc_err_set(err, KMDC_ERR_ARG, "unknown direction %d", direction);
    if (direction == KMDC_DIR_UP) {
        if (m->n_rcpt > KMDC_RCPT_MAX)
            return kmdc_err_set(err, KMDC_ERR_ARG,
                                "at most %d recipients per message",
                                KMDC_RCPT_MAX);
        for (i = 0; i < m->n_rcpt; i++) {
            size_t l = strnlen(m->rcpt[i], sizeof(m->rcpt[i]));
            if (!kmdc_address_valid(m->rcpt[i], l))
                return kmdc_err_set(err, KMDC_ERR_ARG,
                                    "recipient %zu is not a valid address",
                                    i + 1);
            if (rcpt_listed(m, i, m->rcpt[i], l))
                return kmdc_err_set(err, KMDC_ERR_ARG,
                                    "recipient %zu is listed twice", i + 1);
        }
    }
    if (m->has_name &&
        (m->name_len > KMDC_NAME_MAX || !kmdc_name_valid(m->name, m->name_len)))
        return kmdc_err_set(err, KMDC_ERR_NAME,
                            "the file name breaks the NAME rules");
    if (m->has_type &&
        (m->type_len > KMDC_TYPE_MAX ||
         !kmdc_type_valid((const uint8_t *)m->type, m->type_len)))
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "the media type is not an RFC 6838 type/subtype");
    if (m->has_size && m->size > KMDC_MAX_DOC)
        return kmdc_err_set(err, KMDC_ERR_ARG, "the document exceeds 2^40 bytes");
    if (direction == KMDC_DIR_DOWN) {
        if (m->has_from &&
            !kmdc_address_valid(m->from, strnlen(m->from, sizeof(m->from))))
            return kmdc_err_set(err, KMDC_ERR_ARG,
                                "the sender is not a valid address");
        if (m->has_fromserial &&
            (m->fromserial == 0 || m->fromserial > KMDC_U63_MAX))
            return kmdc_err_set(err, KMDC_ERR_ARG,
                                "FROMSERIAL must lie in 1 .. 2^63-1");
        if (m->has_msgid && (m->msgid == 0 || m->msgid > KMDC_U63_MAX))
            return kmdc_err_set(err, KMDC_ERR_ARG,
                                "MSGID must lie in 1 .. 2^63-1");
    }
    return check_required(m, direction, KMDC_ERR_ARG, err);
}

/* Append one entry at out[*off] (or only count it when out is NULL). */
static kmdc_status
put_entry(uint8_t *out, size_t cap, size_t *off, unsigned type,
          const void *v, size_t l, kmdc_err *err)
{
    if (l > UINT16_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "metadata value too long");
    if (out != NULL) {
        if (cap < *off || cap - *off < ENTRY_HDR + l)
            return kmdc_err_set(err, KMDC_ERR_LIMIT,
                                "the metadata does not fit its buffer");
        out[*off] = (uint8_t)type;
        kmdc_put_u16(out + *off + 1, (uint16_t)l);
        if (l > 0)
            memcpy(out + *off + ENTRY_HDR, v, l);
    }
    *off += ENTRY_HDR + l;
    return KMDC_OK;
}

static kmdc_status
put_u64_entry(uint8_t *out, size_t cap, size_t *off, unsigned type, uint64_t v,
              kmdc_err *err)
{
    uint8_t b[8];

    kmdc_put_u64(b, v);
    return put_entry(out, cap, off, type, b, sizeof(b), err);
}

kmdc_status
kmdc_tlv_encode(uint8_t *out, size_t cap, size_t *outlen, const kmdc_meta *m,
                int direction, kmdc_err *err)
{
    size_t off = 0, i;
    kmdc_status rc;
    int down = direction == KMDC_DIR_DOWN;

    *outlen = 0;
    if ((rc = check_meta(m, direction, err)) != KMDC_OK)
        return rc;
    if (!down)
        for (i = 0; i < m->n_rcpt; i++)
            if ((rc = put_entry(out, cap, &off, KMDC_TLV_RCPT, m->rcpt[i],
                                strlen(m->rcpt[i]), err)) != KMDC_OK)
                return rc;
    if (m->has_name &&
        (rc = put_entry(out, cap, &off, KMDC_TLV_NAME, m->name, m->name_len,
                        err)) != KMDC_OK)
        return rc;
    if (m->has_type &&
        (rc = put_entry(out, cap, &off, KMDC_TLV_TYPE, m->type, m->type_len,
                        err)) != KMDC_OK)
        return rc;
    if ((rc = put_u64_entry(out, cap, &off, KMDC_TLV_SIZE, m->size, err)) != KMDC_OK ||
        (rc = put_u64_entry(out, cap, &off, KMDC_TLV_SENT, m->sent, err)) != KMDC_OK)
        return rc;
    if (down) {
        if ((rc = put_entry(out, cap, &off, KMDC_TLV_FROM, m->from,
                            strlen(m->from), err)) != KMDC_OK ||
            (rc = put_u64_entry(out, cap, &off, KMDC_TLV_FROMSERIAL,
                                m->fromserial, err)) != KMDC_OK ||
            (rc = put_u64_entry(out, cap, &off, KMDC_TLV_MSGID, m->msgid,
                                err)) != KMDC_OK ||
            (rc = put_u64_entry(out, cap, &off, KMDC_TLV_RCVD, m->rcvd,
                                err)) != KMDC_OK)
            return rc;
    }
    *outlen = off;
    return KMDC_OK;
}
