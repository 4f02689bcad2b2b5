/*
 * fuzz_tlv.c - libFuzzer target for the keyblock metadata TLV decoder and the
 * NAME/TYPE validators.  Input: one byte choosing the direction (low bit:
 * 0 up, 1 down), then the TLV.  A TLV that decodes must re-encode, decode
 * again, and - when it holds no optional type (>= 0x80) - re-encode to the
 * very same bytes (the encoding is canonical).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_tlv.h"

static int
has_optional(const uint8_t *p, size_t len)
{
    size_t off = 0;

    while (len - off >= 3) {
        size_t l = ((size_t)p[off + 1] << 8) | p[off + 2];
        if (p[off] >= KMDC_TLV_OPTIONAL_MIN)
            return 1;
        off += 3 + l;
        if (off > len)
            break;
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static uint8_t out[KMDC_TLV_MAX], out2[KMDC_TLV_MAX];
    kmdc_meta m, m2;
    kmdc_err err;
    size_t n = 0, n2 = 0;
    int dir;
    kmdc_status rc;

    if (size < 1)
        return 0;
    dir = (data[0] & 1) ? KMDC_DIR_DOWN : KMDC_DIR_UP;
    data++;
    size--;
    (void)kmdc_name_valid(data, size);
    (void)kmdc_type_valid(data, size);
    rc = kmdc_tlv_decode(&m, data, size, dir, &err);
    if (rc != KMDC_OK) {
        if (rc != KMDC_ERR_FORMAT && rc != KMDC_ERR_NAME)
            abort();
        return 0;
    }
    if (m.has_name && !kmdc_name_valid(m.name, m.name_len))
        abort();
    if (m.has_type && !kmdc_type_valid((const uint8_t *)m.type, m.type_len))
        abort();
    if (kmdc_tlv_encode(out, sizeof(out), &n, &m, dir, &err) != KMDC_OK)
        abort();
    if (kmdc_tlv_decode(&m2, out, n, dir, &err) != KMDC_OK)
        abort();
    if (kmdc_tlv_encode(out2, sizeof(out2), &n2, &m2, dir, &err) != KMDC_OK ||
        n2 != n || memcmp(out, out2, n) != 0)
        abort();
    if (!has_optional(data, size) && (n != size || memcmp(out, data, n) != 0))
        abort();
    return 0;
}
