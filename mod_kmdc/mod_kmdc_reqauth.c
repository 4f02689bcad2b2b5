/*
 * mod_kmdc_reqauth.c - request authentication (DESIGN 3.5), run by the
 * dispatcher before every route flagged KMDC_ROUTE_AUTH.
 *
 * Stub: answers 501 (and returns DONE) until it is written.
 */
#include "httpd.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"

int kmdc_reqauth_check(kmdc_req *kr)
{
    kmdc_http_error(kr->r, HTTP_NOT_IMPLEMENTED, "not_implemented",
                    "request authentication is not implemented yet");
    return DONE;
}
