/*
 * fuzz_answer.c - the kmdc client's readers of the datacenter's JSON answers
 * (kmdc/kmdc_parse.h).  The first byte picks the reader, the rest is the
 * body as it came from the network:
 *   0  an error body (the next two bytes: status; the third: Content-Type)
 *   1  the 201 body of POST /send
 *   2  the mailbox listing
 *   3  GET /card
 *   4  GET /messages
 *   5  an unknown_recipient message ("recipient I of N")
 * Each answer is checked against the reader's promises: bounded, NUL-
 * terminated, no control characters in text handed back, a listing sorted
 * by seq with ids in range, a refused input leaving nothing allocated.  Any
 * broken promise aborts.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_check.h"
#include "kmdc_parse.h"

static const char *const ctypes[] = { "application/json", "text/html", "", "application/jsonx" };

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *body;
    size_t len, i, a, b;
    char error[64], message[256], *text;

    if (size < 1)
        return 0;
    body = (const char *)data + 1;
    len = size - 1;
    switch (data[0] % 6) {
    case 0: {
        long status;
        const char *ct;
        int r;
        if (len < 3)
            return 0;
        status = (long)((data[1] << 8 | data[2]) % 700);
        ct = ctypes[data[3] % 4];
        r = kmdc_parse_error_body(status, ct, body + 3, len - 3, error, sizeof error, message,
                                  sizeof message);
        check(r == 0 || r == 1);
        if (r == 1) {
            check(status >= 400 && status <= 599 && strcmp(ct, "application/json") == 0);
            check(error[0] != '\0' && strspn(error, "abcdefghijklmnopqrstuvwxyz_") ==
                                          strlen(error));
            check_text(message, sizeof message);
        } else {
            check(error[0] == '\0' && message[0] == '\0');
        }
        break;
    }
    case 1: {
        uint64_t id = 0;
        int64_t d = 0;
        if (kmdc_parse_send_answer("application/json", body, len, &id, &d) == 0)
            check(d >= 1 && d <= 1024);
        break;
    }
    case 2: {
        kmdc_delivery *v = (kmdc_delivery *)1;
        size_t n = 99;
        uint64_t dn = 0;
        if (kmdc_parse_listing(body, len, &v, &n, &dn) == 0) {
            check(n <= KMDC_PARSE_MAX_DELIVERIES && (n == 0) == (v == NULL));
            for (i = 0; i < n; i++) {
                check(v[i].id >= 1 && v[i].id < (UINT64_C(1) << 63));
                check(v[i].seq < (UINT64_C(1) << 63));
                if (i > 0)
                    check(v[i - 1].seq <= v[i].seq);
            }
            free(v);
        } else {
            check(v == NULL && n == 0);
        }
        break;
    }
    case 3: {
        kmdc_card_answer ca;
        if (kmdc_parse_card(body, len, &ca) == 0) {
            check_text(ca.status, sizeof ca.status);
            check(ca.serial >= 1 && ca.up_next < (UINT64_C(1) << 63));
        }
        break;
    }
    case 4: {
        kmdc_message_answer m;
        if (kmdc_parse_message(body, len, &m) == 0) {
            check(m.n_rcpts <= KMDC_PARSE_MAX_RCPTS && (m.n_rcpts == 0) == (m.rcpts == NULL));
            for (i = 0; i < m.n_rcpts; i++) {
                check_text(m.rcpts[i].address, sizeof m.rcpts[i].address);
                check_text(m.rcpts[i].state, sizeof m.rcpts[i].state);
            }
            kmdc_parse_message_free(&m);
        } else {
            check(m.rcpts == NULL && m.n_rcpts == 0);
        }
        break;
    }
    default:
        if ((text = malloc(len + 1)) == NULL)
            return 0;
        memcpy(text, body, len);
        text[len] = '\0';
        if (kmdc_parse_rcpt_index(text, &a, &b) == 0)
            check(a >= 1 && a <= b && b <= 9999);
        free(text);
        break;
    }
    return 0;
}
