/*
 * mod_kmdc_activate.c - POST /activate/{serial} (DESIGN 3.2, 3.6) and
 * GET /card/{serial}.
 *
 * Stub: answers 501 until activation is written.
 */
#include "httpd.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"

int kmdc_handle_activate(kmdc_req *kr)
{
    return kmdc_http_error(kr->r, HTTP_NOT_IMPLEMENTED, "not_implemented",
                           "activation is not implemented yet");
}

int kmdc_handle_card(kmdc_req *kr)
{
    return kmdc_http_error(kr->r, HTTP_NOT_IMPLEMENTED, "not_implemented",
                           "card status is not implemented yet");
}
