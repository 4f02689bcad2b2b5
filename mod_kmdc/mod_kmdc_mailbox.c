/*
 * mod_kmdc_mailbox.c - GET /mailbox/{serial}, GET and DELETE
 * /mailbox/{serial}/{id} (DESIGN 3.6).
 *
 * Stub: answers 501 until the mailbox is written.
 */
#include "httpd.h"

#include "mod_kmdc.h"
#include "mod_kmdc_http.h"

int kmdc_handle_mailbox_list(kmdc_req *kr)
{
    return kmdc_http_error(kr->r, HTTP_NOT_IMPLEMENTED, "not_implemented",
                           "the mailbox is not implemented yet");
}

int kmdc_handle_mailbox_fetch(kmdc_req *kr)
{
    return kmdc_http_error(kr->r, HTTP_NOT_IMPLEMENTED, "not_implemented",
                           "the mailbox is not implemented yet");
}

int kmdc_handle_mailbox_delete(kmdc_req *kr)
{
    return kmdc_http_error(kr->r, HTTP_NOT_IMPLEMENTED, "not_implemented",
                           "the mailbox is not implemented yet");
}
