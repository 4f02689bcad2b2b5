/*
 * fuzz_card.c - drive kmdc_card_parse with hostile card files.
 *
 * Each input is parsed as given, without and with a passphrase.  Because a
 * mutated file almost never keeps a valid checksum, the input is parsed a
 * second time with its checksum recomputed, so the header and body parsers
 * behind the checksum are reached too.  The corpus's protected card uses the
 * passphrase "fuzz" and scrypt N = 2, so the decrypting path stays fast; a
 * fixed-up input asking for costly scrypt parameters is parsed without a
 * passphrase only (the parser itself caps them, see PROTOCOL.md).  A parsed
 * card is serialised again and must parse back.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_card.h"
#include "kmdc_crypto.h"
#include "kmdc_util.h"

static void
parse_once(const uint8_t *buf, size_t len, const char *pass)
{
    kmdc_card *c = NULL, *again = NULL;
    uint8_t *img = NULL;
    size_t imglen = 0;
    kmdc_err err;
    const char *fn = NULL;

    if (kmdc_card_parse(buf, len, pass, &c, &err) != KMDC_OK)
        return;
    /* Exercise the accessors and a round trip of what was accepted. */
    (void)kmdc_card_serial(c);
    (void)kmdc_card_delivery_lookup(c, 1, &fn, NULL);
    kmdc_card_set_unprotected(c);
    if (kmdc_card_serialize(c, NULL, &img, &imglen, NULL) == KMDC_OK) {
        if (kmdc_card_parse(img, imglen, NULL, &again, NULL) != KMDC_OK)
            abort();
        kmdc_card_free(again);
        kmdc_freezero(img, imglen);
    }
    kmdc_card_free(c);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint8_t *copy;

    parse_once(data, size, NULL);
    parse_once(data, size, "fuzz");
    if (size < KMDC_CARD_HEADER_LEN + KMDC_CARD_SUM_LEN ||
        size > KMDC_CARD_HEADER_LEN + KMDC_CARD_SUM_LEN + KMDC_CARD_MAX_BODY)
        return 0;
    if ((copy = malloc(size)) == NULL)
        return 0;
    memcpy(copy, data, size);
    if (kmdc_sha256(copy + size - KMDC_CARD_SUM_LEN, copy, size - KMDC_CARD_SUM_LEN,
                    NULL) == KMDC_OK) {
        parse_once(copy, size, NULL);
        /* scrypt with the file's parameters: only cheap ones while fuzzing. */
        if (copy[9] != KMDC_CARD_PROT_SCRYPT ||
            (copy[16] <= 6 && copy[17] <= 4 && copy[18] <= 2))
            parse_once(copy, size, "fuzz");
    }
    free(copy);
    return 0;
}
