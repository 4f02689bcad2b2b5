/*
 * kmdc_tlv.h - the metadata TLV carried in a keyblock after the DEK
 * (docs/PROTOCOL.md section 3): entries u8 type || u16 len || value, sorted by type.
 *
 * kmdc_meta holds every field this implementation knows, each with a has_
 * flag (RCPT has a count).  The decoder applies every rule of the design and
 * fills a kmdc_meta; the encoder validates a kmdc_meta and writes the
 * canonical encoding for one direction.  Unknown optional types (>= 0x80) are
 * skipped on decoding and never kept, so they can never be copied on.
 */
#ifndef KMDC_TLV_H
#define KMDC_TLV_H

#include <stddef.h>
#include <stdint.h>

#include "kmdc_err.h"

/* Directions, as in the envelope header. */
#define KMDC_DIR_UP 1
#define KMDC_DIR_DOWN 2

/* Entry types. */
#define KMDC_TLV_RCPT 0x01
#define KMDC_TLV_NAME 0x02
#define KMDC_TLV_TYPE 0x03
#define KMDC_TLV_SIZE 0x04
#define KMDC_TLV_SENT 0x05
#define KMDC_TLV_FROM 0x10
#define KMDC_TLV_FROMSERIAL 0x11
#define KMDC_TLV_MSGID 0x12
#define KMDC_TLV_RCVD 0x13
#define KMDC_TLV_OPTIONAL_MIN 0x80   /* types from here on are skipped */

#define KMDC_RCPT_MAX 32             /* RCPT entries in one up envelope */
#define KMDC_ADDR_MAX 64             /* bytes of an address */
#define KMDC_NAME_MAX 255            /* bytes of a NAME */
#define KMDC_TYPE_MAX 127            /* bytes of a TYPE */
#define KMDC_MAX_DOC (UINT64_C(1) << 40)   /* largest SIZE */
/* Largest TLV that fits a keyblock: 16 KiB + 48 - 32 (DEK) - 16 (tag). */
#define KMDC_TLV_MAX 16384

typedef struct kmdc_meta {
    size_t n_rcpt;                                 /* 0 .. 32 */
    char rcpt[KMDC_RCPT_MAX][KMDC_ADDR_MAX + 1];   /* NUL-terminated */
    int has_name;
    uint8_t name[KMDC_NAME_MAX + 1];               /* NUL-terminated too */
    size_t name_len;
    int has_type;
    char type[KMDC_TYPE_MAX + 1];                  /* NUL-terminated */
    size_t type_len;
    int has_size;
    uint64_t size;                                 /* document bytes */
    int has_sent;
    uint64_t sent;                                 /* sender clock, Unix ms */
    int has_from;
    char from[KMDC_ADDR_MAX + 1];                  /* NUL-terminated */
    int has_fromserial;
    uint64_t fromserial;
    int has_msgid;
    uint64_t msgid;
    int has_rcvd;
    uint64_t rcvd;                                 /* datacenter clock, Unix ms */
} kmdc_meta;

/* Zero m: no field set, no recipient. */
void kmdc_meta_init(kmdc_meta *m);

/* Append one recipient address to m after checking it is a valid address,
 * not already listed and that fewer than 32 are listed (KMDC_ERR_ARG). */
kmdc_status kmdc_meta_add_rcpt(kmdc_meta *m, const char *addr, size_t len,
                               kmdc_err *err);

/* Set NAME after checking it with kmdc_name_valid (KMDC_ERR_NAME). */
kmdc_status kmdc_meta_set_name(kmdc_meta *m, const uint8_t *name, size_t len,
                               kmdc_err *err);

/* Set TYPE after checking it with kmdc_type_valid (KMDC_ERR_ARG). */
kmdc_status kmdc_meta_set_type(kmdc_meta *m, const char *type, size_t len,
                               kmdc_err *err);

/* Set FROM after checking it is a valid address (KMDC_ERR_ARG). */
kmdc_status kmdc_meta_set_from(kmdc_meta *m, const char *addr, size_t len,
                               kmdc_err *err);

/*
 * Start a down meta from an up one, as the datacenter does for each
 * recipient (docs/PROTOCOL.md section 3): dst receives NAME, TYPE, SIZE and SENT of src and
 * nothing else (no recipient, no unknown field); the caller then sets FROM,
 * FROMSERIAL, MSGID and RCVD.  dst may not alias src.
 */
void kmdc_meta_copy_shared(kmdc_meta *dst, const kmdc_meta *src);

/*
 * Decode the TLV p[0..len) for `direction` (KMDC_DIR_UP or KMDC_DIR_DOWN)
 * into m, applying every rule of docs/PROTOCOL.md section 3: well-formed entries, sorted by
 * type, every type but RCPT at most once (unknown ones too), no unknown type
 * below 0x80, no known type of the other direction, the value rules of each
 * field and the required fields of the direction.  Types >= 0x80 are
 * skipped.  Returns KMDC_ERR_NAME for a NAME that breaks its rules,
 * KMDC_ERR_FORMAT for anything else; on failure m is zeroed.
 */
kmdc_status kmdc_tlv_decode(kmdc_meta *m, const uint8_t *p, size_t len,
                            int direction, kmdc_err *err);

/*
 * Encode the fields of m that belong to `direction` in canonical form: types
 * in increasing order, RCPT entries in the order m lists them.  Fields of
 * the other direction are left out (a down encoding of a meta decoded from
 * an up envelope carries no RCPT).  m is validated with the decoder's rules
 * first (KMDC_ERR_NAME for a bad NAME, KMDC_ERR_ARG otherwise).  out may be
 * NULL to learn the length; otherwise the encoding must fit in cap bytes
 * (KMDC_ERR_LIMIT).  *outlen receives the length either way.
 */
kmdc_status kmdc_tlv_encode(uint8_t *out, size_t cap, size_t *outlen,
                            const kmdc_meta *m, int direction, kmdc_err *err);

/*
 * The one NAME rule of KMDC/1, applied when sealing, at intake and on
 * receipt: 1 when p[0..len) is an acceptable NAME: strict UTF-8 (no overlong
 * form, no surrogate, nothing above U+10FFFF) of 1..255 bytes, not "." or
 * "..", without '/', '\', C0 controls (NUL included), DEL, C1 controls or
 * the bidirectional and invisible format characters U+061C, U+200B-200F,
 * U+202A-202E, U+2060-2064, U+2066-2069 and U+FEFF; else 0.  Receivers call
 * it again before using a name.
 */
int kmdc_name_valid(const uint8_t *p, size_t len);

/*
 * The file name a receiver creates for NAME p[0..len): the NAME itself, with
 * a '_' put in front when it starts with '.' or '-' (so a NAME never makes a
 * hidden file or one a command takes for an option).  Writes it
 * NUL-terminated to out (cap bytes: len + 2 always suffice) and returns its
 * length, or -1 when the NAME is not valid (kmdc_name_valid) or cap is too
 * small.  The result may be 256 bytes long: callers that cannot create such
 * a name fall back to another.
 */
int kmdc_name_local(const uint8_t *p, size_t len, char *out, size_t cap);

/*
 * 1 when p[0..len) is an RFC 6838 "type/subtype" made of two
 * restricted-names (first character ALPHA or DIGIT, then ALPHA, DIGIT or
 * one of ! # $ & - ^ _ . +; each part 1..127 characters) and at most 127
 * bytes in all; else 0.
 */
int kmdc_type_valid(const uint8_t *p, size_t len);

#endif
