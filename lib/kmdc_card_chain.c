/* kmdc_card_chain.c - activation and the card's two chains: reserving an up
 * counter, down message keys (skipped ones kept, bounded), deliveries written,
 * resync (docs/PROTOCOL.md section 4). */
#include "kmdc_card_int.h"
#include "kmdc_util.h"

#include <stdlib.h>
#include <string.h>

/* ---- activation ---------------------------------------------------------------- */

kmdc_status
kmdc_card_activation_begin(kmdc_card *card, uint8_t r_out[KMDC_KEY_LEN],
                           kmdc_err *err)
{
    kmdc_status rc;

    if (card->state != KMDC_CARD_ISSUED)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card %016llx is already activated",
                            (unsigned long long)card->serial);
    if (!card->has_r) {
        if ((rc = kmdc_random(card->r, KMDC_KEY_LEN, err)) != KMDC_OK) {
            kmdc_wipe(card->r, KMDC_KEY_LEN);
            return rc;
        }
        card->has_r = 1;
    }
    memcpy(r_out, card->r, KMDC_KEY_LEN);
    return KMDC_OK;
}

static kmdc_status
rotate_all(const kmdc_card *card, uint8_t uck[KMDC_KEY_LEN],
           uint8_t dck[KMDC_KEY_LEN], uint8_t ak[KMDC_KEY_LEN], kmdc_err *err)
{
    kmdc_status rc;

    if (!card->has_r)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card %016llx has no activation pending",
                            (unsigned long long)card->serial);
    if ((rc = kmdc_activate_key(uck, card->r, card->up_ck, "up_chain", err)) != KMDC_OK ||
        (rc = kmdc_activate_key(dck, card->r, card->down_ck, "down_chain", err)) != KMDC_OK ||
        (rc = kmdc_activate_key(ak, card->r, card->ak, "auth_key", err)) != KMDC_OK) {
        kmdc_wipe(uck, KMDC_KEY_LEN);
        kmdc_wipe(dck, KMDC_KEY_LEN);
        kmdc_wipe(ak, KMDC_KEY_LEN);
    }
    return rc;
}

kmdc_status
kmdc_card_activation_preview(const kmdc_card *card, uint8_t uck[KMDC_KEY_LEN],
                             uint8_t dck[KMDC_KEY_LEN], uint8_t ak[KMDC_KEY_LEN],
                             kmdc_err *err)
{
    uint8_t u[KMDC_KEY_LEN], d[KMDC_KEY_LEN], a[KMDC_KEY_LEN];
    kmdc_status rc;

    if ((rc = rotate_all(card, u, d, a, err)) == KMDC_OK) {
        if (uck != NULL)
            memcpy(uck, u, KMDC_KEY_LEN);
        if (dck != NULL)
            memcpy(dck, d, KMDC_KEY_LEN);
        if (ak != NULL)
            memcpy(ak, a, KMDC_KEY_LEN);
    }
    kmdc_wipe(u, sizeof(u));
    kmdc_wipe(d, sizeof(d));
    kmdc_wipe(a, sizeof(a));
    return rc;
}

kmdc_status
kmdc_card_activation_confirm(kmdc_card *card, kmdc_err *err)
{
    uint8_t u[KMDC_KEY_LEN], d[KMDC_KEY_LEN], a[KMDC_KEY_LEN];
    kmdc_status rc;

    if ((rc = rotate_all(card, u, d, a, err)) == KMDC_OK) {
        memcpy(card->up_ck, u, KMDC_KEY_LEN);
        memcpy(card->down_ck, d, KMDC_KEY_LEN);
        memcpy(card->ak, a, KMDC_KEY_LEN);
        kmdc_wipe(card->r, KMDC_KEY_LEN);
        card->has_r = 0;
        card->state = KMDC_CARD_ACTIVE;
    }
    kmdc_wipe(u, sizeof(u));
    kmdc_wipe(d, sizeof(d));
    kmdc_wipe(a, sizeof(a));
    return rc;
}

/* ---- up chain -------------------------------------------------------------------- */

static kmdc_status
need_active(const kmdc_card *card, kmdc_err *err)
{
    if (card->state != KMDC_CARD_ACTIVE)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "card %016llx is not activated yet (run kmdc activate)",
                            (unsigned long long)card->serial);
    return KMDC_OK;
}

kmdc_status
kmdc_card_up_reserve(kmdc_card *card, uint64_t *seq, uint8_t mk_out[KMDC_KEY_LEN],
                     kmdc_err *err)
{
    uint8_t mk[KMDC_KEY_LEN], ck[KMDC_KEY_LEN];
    kmdc_status rc;

    if ((rc = need_active(card, err)) != KMDC_OK)
        return rc;
    /* up_next = n + 1 must stay within 0 .. 2^63-1. */
    if (card->up_next >= KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_EXHAUSTED,
                            "card %016llx has used all its up counters; it needs a new card",
                            (unsigned long long)card->serial);
    if ((rc = kmdc_chain_step(mk, ck, card->up_ck, err)) == KMDC_OK) {
        *seq = card->up_next;
        memcpy(mk_out, mk, KMDC_KEY_LEN);
        memcpy(card->up_ck, ck, KMDC_KEY_LEN);
        card->up_next++;
    }
    kmdc_wipe(mk, sizeof(mk));
    kmdc_wipe(ck, sizeof(ck));
    return rc;
}

/* ---- down chain ------------------------------------------------------------------ */

static skip_ent *
skip_find(const kmdc_card *card, uint64_t seq)
{
    size_t lo = 0, hi = card->nskip;

    while (lo < hi) {
        size_t mid = lo + (hi - lo) / 2;
        if (card->skip[mid].seq == seq)
            return (skip_ent *)&card->skip[mid];
        if (card->skip[mid].seq < seq)
            lo = mid + 1;
        else
            hi = mid;
    }
    return NULL;
}

/* Drop stored keys more than KMDC_CARD_MAX_SKIPPED behind down_next. */
static void
skip_prune(kmdc_card *card)
{
    uint64_t low = card->down_next > KMDC_CARD_MAX_SKIPPED
                       ? card->down_next - KMDC_CARD_MAX_SKIPPED : 0;
    size_t k = 0;

    while (k < card->nskip && card->skip[k].seq < low)
        k++;
    if (k == 0)
        return;
    kmdc_wipe(card->skip, k * sizeof(skip_ent));
    memmove(card->skip, card->skip + k, (card->nskip - k) * sizeof(skip_ent));
    card->nskip -= k;
    kmdc_wipe(card->skip + card->nskip, k * sizeof(skip_ent));
}

kmdc_status
kmdc_card_down_key(const kmdc_card *card, uint64_t m, uint8_t mk_out[KMDC_KEY_LEN],
                   kmdc_err *err)
{
    uint8_t ck[KMDC_KEY_LEN], mk[KMDC_KEY_LEN];
    const skip_ent *e;
    kmdc_status rc;

    if ((rc = need_active(card, err)) != KMDC_OK)
        return rc;
    if (m < card->down_next) {
        if ((e = skip_find(card, m)) == NULL)
            return kmdc_err_set(err, KMDC_ERR_NOTFOUND,
                                "card has no key for down seq %llu (already used or too old)",
                                (unsigned long long)m);
        memcpy(mk_out, e->mk, KMDC_KEY_LEN);
        return KMDC_OK;
    }
    if (m - card->down_next > KMDC_CARD_MAX_AHEAD)
        return kmdc_err_set(err, KMDC_ERR_LIMIT,
                            "down seq %llu is more than %d ahead of the card's counter %llu; "
                            "resynchronise the card",
                            (unsigned long long)m, KMDC_CARD_MAX_AHEAD,
                            (unsigned long long)card->down_next);
    memcpy(ck, card->down_ck, KMDC_KEY_LEN);
    if ((rc = kmdc_chain_seek(ck, card->down_next, m, mk, err)) == KMDC_OK)
        memcpy(mk_out, mk, KMDC_KEY_LEN);
    kmdc_wipe(ck, sizeof(ck));
    kmdc_wipe(mk, sizeof(mk));
    return rc;
}

kmdc_status
kmdc_card_down_advance(kmdc_card *card, uint64_t m, kmdc_err *err)
{
    uint8_t ck[KMDC_KEY_LEN];
    skip_ent *tmp = NULL;
    uint64_t s, low, next;
    size_t k = 0, i;
    kmdc_status rc;

    if ((rc = need_active(card, err)) != KMDC_OK)
        return rc;
    if (m < card->down_next) {
        if (skip_find(card, m) == NULL)
            return kmdc_err_set(err, KMDC_ERR_NOTFOUND,
                                "card has no key for down seq %llu (already used or too old)",
                                (unsigned long long)m);
        return KMDC_OK;
    }
    if (m - card->down_next > KMDC_CARD_MAX_AHEAD)
        return kmdc_err_set(err, KMDC_ERR_LIMIT,
                            "down seq %llu is more than %d ahead of the card's counter %llu",
                            (unsigned long long)m, KMDC_CARD_MAX_AHEAD,
                            (unsigned long long)card->down_next);
    if (m >= KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_EXHAUSTED,
                            "card %016llx has used all its down counters",
                            (unsigned long long)card->serial);
    next = m + 1;
    low = next > KMDC_CARD_MAX_SKIPPED ? next - KMDC_CARD_MAX_SKIPPED : 0;
    if ((tmp = calloc(KMDC_CARD_MAX_SKIPPED, sizeof(*tmp))) == NULL)
        return kmdc_card_oom(err);
    for (i = 0; i < card->nskip; i++)
        if (card->skip[i].seq >= low)
            tmp[k++] = card->skip[i];
    memcpy(ck, card->down_ck, KMDC_KEY_LEN);
    for (s = card->down_next; s <= m; s++) {
        uint8_t mk[KMDC_KEY_LEN];
        rc = kmdc_chain_step(mk, ck, ck, err);
        if (rc == KMDC_OK && s >= low && k < KMDC_CARD_MAX_SKIPPED) {
            tmp[k].seq = s;
            memcpy(tmp[k].mk, mk, KMDC_KEY_LEN);
            k++;
        }
        kmdc_wipe(mk, sizeof(mk));
        if (rc != KMDC_OK)
            goto out;
    }
    kmdc_wipe(card->skip, sizeof(card->skip));
    memcpy(card->skip, tmp, k * sizeof(*tmp));
    card->nskip = k;
    memcpy(card->down_ck, ck, KMDC_KEY_LEN);
    card->down_next = next;
out:
    kmdc_wipe(ck, sizeof(ck));
    kmdc_freezero(tmp, KMDC_CARD_MAX_SKIPPED * sizeof(*tmp));
    return rc;
}

static void
dlv_remove(kmdc_card *card, size_t i)
{
    kmdc_freezero(card->dlv[i].name, card->dlv[i].len + 1);
    memmove(card->dlv + i, card->dlv + i + 1, (card->ndlv - i - 1) * sizeof(dlv_ent));
    card->ndlv--;
    memset(&card->dlv[card->ndlv], 0, sizeof(dlv_ent));
}

kmdc_status
kmdc_card_delivery_record(kmdc_card *card, uint64_t delivery_id,
                          const char *filename, kmdc_err *err)
{
    char *copy;
    size_t len, i;

    if (filename == NULL)
        return kmdc_err_set(err, KMDC_ERR_ARG, "card: missing file name");
    len = strlen(filename);
    if (len < 1 || len > KMDC_CARD_MAX_FILENAME)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "a recorded file name is 1-%d bytes", KMDC_CARD_MAX_FILENAME);
    if ((copy = malloc(len + 1)) == NULL)
        return kmdc_card_oom(err);
    memcpy(copy, filename, len + 1);
    for (i = 0; i < card->ndlv; i++)
        if (card->dlv[i].id == delivery_id) {
            dlv_remove(card, i);
            break;
        }
    if (card->ndlv == KMDC_CARD_MAX_DELIVERIES)
        dlv_remove(card, 0);
    card->dlv[card->ndlv].id = delivery_id;
    card->dlv[card->ndlv].name = copy;
    card->dlv[card->ndlv].len = len;
    card->ndlv++;
    return KMDC_OK;
}

kmdc_status
kmdc_card_down_forget(kmdc_card *card, uint64_t m, kmdc_err *err)
{
    skip_ent *e;
    size_t at;

    if (m >= card->down_next)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "down seq %llu was not advanced over yet", (unsigned long long)m);
    if ((e = skip_find(card, m)) == NULL)
        return KMDC_OK;
    at = (size_t)(e - card->skip);
    kmdc_wipe(e, sizeof(*e));
    memmove(card->skip + at, card->skip + at + 1,
            (card->nskip - at - 1) * sizeof(skip_ent));
    card->nskip--;
    kmdc_wipe(card->skip + card->nskip, sizeof(skip_ent));
    return KMDC_OK;
}

kmdc_status
kmdc_card_down_done(kmdc_card *card, uint64_t m, uint64_t delivery_id,
                    const char *filename, kmdc_err *err)
{
    kmdc_status rc;

    if (m >= card->down_next)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "down seq %llu was not advanced over yet", (unsigned long long)m);
    if ((rc = kmdc_card_delivery_record(card, delivery_id, filename, err)) != KMDC_OK)
        return rc;
    return kmdc_card_down_forget(card, m, err);
}

kmdc_status
kmdc_card_delivery_lookup(const kmdc_card *card, uint64_t id,
                          const char **filename, kmdc_err *err)
{
    size_t i;

    for (i = card->ndlv; i-- > 0;)
        if (card->dlv[i].id == id) {
            if (filename != NULL)
                *filename = card->dlv[i].name;
            return KMDC_OK;
        }
    return kmdc_err_set(err, KMDC_ERR_NOTFOUND, "delivery %llu was not written yet",
                        (unsigned long long)id);
}

kmdc_status
kmdc_card_resync(kmdc_card *card, uint64_t up_next, uint64_t down_next,
                 kmdc_err *err)
{
    uint8_t uck[KMDC_KEY_LEN], dck[KMDC_KEY_LEN];
    kmdc_status rc;

    if (up_next > KMDC_U63_MAX || down_next > KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "a counter lies in 0 .. 2^63-1");
    if (up_next < card->up_next || down_next < card->down_next)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "a card's counters only move forward (up %llu, down %llu)",
                            (unsigned long long)card->up_next,
                            (unsigned long long)card->down_next);
    if (up_next - card->up_next > KMDC_CARD_RESYNC_MAX ||
        down_next - card->down_next > KMDC_CARD_RESYNC_MAX)
        return kmdc_err_set(err, KMDC_ERR_LIMIT,
                            "a resync moves a counter at most %llu steps",
                            (unsigned long long)KMDC_CARD_RESYNC_MAX);
    memcpy(uck, card->up_ck, KMDC_KEY_LEN);
    memcpy(dck, card->down_ck, KMDC_KEY_LEN);
    if ((rc = kmdc_chain_seek(uck, card->up_next, up_next, NULL, err)) == KMDC_OK &&
        (rc = kmdc_chain_seek(dck, card->down_next, down_next, NULL, err)) == KMDC_OK) {
        memcpy(card->up_ck, uck, KMDC_KEY_LEN);
        memcpy(card->down_ck, dck, KMDC_KEY_LEN);
        card->up_next = up_next;
        card->down_next = down_next;
        skip_prune(card);
    }
    kmdc_wipe(uck, sizeof(uck));
    kmdc_wipe(dck, sizeof(dck));
    return rc;
}
