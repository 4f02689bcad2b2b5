/* kmdc_store.c - the names of the store's enumerations. */
#include <string.h>

#include "kmdc_store.h"

static const char *const status_names[] = {
    NULL, "issued", "active", "suspended", "revoked"
};

const char *
kmdc_card_status_name(kmdc_card_status st)
{
    if (st >= KMDC_CARD_ST_ISSUED && st <= KMDC_CARD_ST_REVOKED)
        return status_names[st];
    return "unknown";
}

kmdc_card_status
kmdc_card_status_parse(const char *name)
{
    int i;

    for (i = KMDC_CARD_ST_ISSUED; i <= KMDC_CARD_ST_REVOKED; i++)
        if (name != NULL && strcmp(name, status_names[i]) == 0)
            return (kmdc_card_status)i;
    return (kmdc_card_status)0;
}
