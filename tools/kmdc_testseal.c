/*
 * kmdc-testseal - seal up envelopes that a correct client would refuse to
 * make, for the datacenter's tests (never installed).
 *
 *   kmdc-testseal --card FILE --to A[,B...] [--sent MS] [--name-hex HEX]
 *                 [--size N] -o OUT INPUT
 *
 * It reserves a counter on the card like `kmdc seal` (and saves the card),
 * but writes the TLV by hand so that NAME may break the rules and SENT may be
 * any time.  --size lets SIZE claim another length than INPUT has (the
 * payload is then sealed for SIZE bytes of INPUT, padded with zeros).
 */
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "kmdc_card.h"
#include "kmdc_crypto.h"
#include "kmdc_envelope.h"
#include "kmdc_util.h"

__attribute__((noreturn)) static void
die(const char *what, const kmdc_err *err)
{
    fprintf(stderr, "kmdc-testseal: %s%s%s\n", what, err ? ": " : "", err ? err->msg : "");
    exit(1);
}

static kmdc_status
emit_file(void *arg, const uint8_t *p, size_t len, kmdc_err *err)
{
    if (fwrite(p, 1, len, arg) != len)
        return kmdc_err_set(err, KMDC_ERR_IO, "write: %s", strerror(errno));
    return KMDC_OK;
}

int
main(int argc, char **argv)
{
    static const struct option opts[] = {
        { "card", required_argument, NULL, 'c' }, { "to", required_argument, NULL, 't' },
        { "sent", required_argument, NULL, 's' }, { "name-hex", required_argument, NULL, 'n' },
        { "size", required_argument, NULL, 'z' }, { "out", required_argument, NULL, 'o' },
        { NULL, 0, NULL, 0 }
    };
    const char *card_path = NULL, *to = NULL, *name_hex = NULL, *out_path = NULL;
    uint64_t sent = (uint64_t)time(NULL) * 1000, size = UINT64_MAX, seq;
    uint8_t mk[32], kbk[32], dek[32], name[512], hb[KMDC_HEADER_LEN];
    uint8_t tlv[KMDC_TLV_MAX + 600], pt[32 + sizeof(tlv)], kb[sizeof(pt) + 16], lenb[4];
    size_t tlvlen = 0, namelen = 0, i, split;
    static const uint8_t zero_iv[12];
    kmdc_card *card = NULL;
    kmdc_header h;
    kmdc_meta m;
    kmdc_payload_enc *enc;
    kmdc_err err;
    FILE *in, *out;
    struct stat st;
    int c;

    while ((c = getopt_long(argc, argv, "o:", opts, NULL)) != -1) {
        switch (c) {
        case 'c': card_path = optarg; break;
        case 't': to = optarg; break;
        case 's': sent = strtoull(optarg, NULL, 10); break;
        case 'n': name_hex = optarg; break;
        case 'z': size = strtoull(optarg, NULL, 10); break;
        case 'o': out_path = optarg; break;
        default: fprintf(stderr, "usage: see the comment at the top of kmdc_testseal.c\n"); return 2;
        }
    }
    if (card_path == NULL || to == NULL || out_path == NULL || optind != argc - 1) {
        fprintf(stderr, "usage: kmdc-testseal --card FILE --to A[,B] [--sent MS] "
                        "[--name-hex HEX] [--size N] -o OUT INPUT\n");
        return 2;
    }
    if ((in = fopen(argv[optind], "rb")) == NULL || fstat(fileno(in), &st) != 0)
        die("cannot read the input", NULL);
    if (size == UINT64_MAX)
        size = (uint64_t)st.st_size;

    kmdc_meta_init(&m);
    {
        char *list = strdup(to), *save = NULL, *a;
        for (a = strtok_r(list, ",", &save); a; a = strtok_r(NULL, ",", &save))
            if (kmdc_meta_add_rcpt(&m, a, strlen(a), &err) != KMDC_OK)
                die("recipient", &err);
        free(list);
    }
    m.has_size = 1;
    m.size = size;
    m.has_sent = 1;
    m.sent = sent;
    if (kmdc_tlv_encode(tlv, sizeof(tlv), &tlvlen, &m, KMDC_DIR_UP, &err) != KMDC_OK)
        die("tlv", &err);
    if (name_hex != NULL) {
        /* insert NAME (0x02) after the RCPT entries, unchecked */
        namelen = strlen(name_hex) / 2;
        if (namelen > sizeof(name) ||
            kmdc_hex_decode(name, namelen, name_hex, 2 * namelen, &err) != KMDC_OK)
            die("--name-hex", &err);
        for (split = 0; split < tlvlen && tlv[split] == 0x01;)
            split += 3 + kmdc_get_u16(tlv + split + 1);
        memmove(tlv + split + 3 + namelen, tlv + split, tlvlen - split);
        tlv[split] = 0x02;
        kmdc_put_u16(tlv + split + 1, (uint16_t)namelen);
        memcpy(tlv + split + 3, name, namelen);
        tlvlen += 3 + namelen;
    }

    if (kmdc_card_load(card_path, NULL, &card, &err) != KMDC_OK ||
        kmdc_card_up_reserve(card, &seq, mk, &err) != KMDC_OK ||
        kmdc_card_save(card, card_path, NULL, &err) != KMDC_OK)
        die("card", &err);
    if (kmdc_header_new(&h, KMDC_DIR_UP, kmdc_card_serial(card), seq, &err) != KMDC_OK ||
        kmdc_header_encode(hb, &h, &err) != KMDC_OK ||
        kmdc_random(dek, sizeof(dek), &err) != KMDC_OK ||
        kmdc_kbk_derive(kbk, h.salt, mk, &err) != KMDC_OK)
        die("header", &err);
    memcpy(pt, dek, 32);
    memcpy(pt + 32, tlv, tlvlen);
    if (kmdc_gcm_seal(kb, kbk, zero_iv, hb, sizeof(hb), pt, 32 + tlvlen, &err) != KMDC_OK)
        die("keyblock", &err);
    kmdc_put_u32(lenb, (uint32_t)(32 + tlvlen + 16));

    if ((out = fopen(out_path, "wb")) == NULL)
        die("cannot write the output", NULL);
    if (fwrite(hb, 1, sizeof(hb), out) != sizeof(hb) || fwrite(lenb, 1, 4, out) != 4 ||
        fwrite(kb, 1, 32 + tlvlen + 16, out) != 32 + tlvlen + 16)
        die("write", NULL);
    if ((enc = kmdc_payload_enc_new(dek, size, &err)) == NULL)
        die("payload", &err);
    for (i = 0; i < size;) {
        uint8_t buf[65536];
        size_t want = size - i < sizeof(buf) ? (size_t)(size - i) : sizeof(buf);
        size_t got = fread(buf, 1, want, in);
        if (got < want)
            memset(buf + got, 0, want - got);
        if (kmdc_payload_enc_update(enc, buf, want, emit_file, out, &err) != KMDC_OK)
            die("payload", &err);
        i += want;
    }
    if (kmdc_payload_enc_final(enc, emit_file, out, &err) != KMDC_OK || fclose(out) != 0)
        die("payload", &err);
    kmdc_payload_enc_free(enc);
    kmdc_card_free(card);
    fclose(in);
    kmdc_wipe(mk, sizeof(mk));
    kmdc_wipe(dek, sizeof(dek));
    kmdc_wipe(kbk, sizeof(kbk));
    kmdc_wipe(pt, sizeof(pt));
    printf("%llu\n", (unsigned long long)seq);
    return 0;
}
