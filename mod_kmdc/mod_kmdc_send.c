/*
 * mod_kmdc_send.c - POST /send (the envelope intake of DESIGN 3.7) and
 * GET /messages/{id}.
 *
 * Stub: answers 501 until the intake is written.
 */
#include "httpd.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"

int kmdc_handle_send(kmdc_req *kr)
{
    return kmdc_http_error(kr->r, HTTP_NOT_IMPLEMENTED, "not_implemented",
                           "sending is not implemented yet");
}

int kmdc_handle_message(kmdc_req *kr)
{
    return kmdc_http_error(kr->r, HTTP_NOT_IMPLEMENTED, "not_implemented",
                           "message status is not implemented yet");
}
