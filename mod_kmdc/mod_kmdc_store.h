/*
 * mod_kmdc_store.h - the store as the endpoints see it: the PostgreSQL
 * implementation of lib/kmdc_store.h for one request, and the answer to a
 * store failure.  Endpoint files include this, never libpq.
 */
#ifndef MOD_KMDC_STORE_H
#define MOD_KMDC_STORE_H

#include "httpd.h"

#include "kmdc_store.h"

#include "mod_kmdc_metrics.h"

/*
 * The PostgreSQL store serving r (allocated from r->pool).  Each operation
 * borrows a pooled connection of r's server for its own duration and gives
 * it back before it returns (fetch_open .. fetch_close excepted), so a
 * request holds none while it waits on its client.
 */
kmdc_store *kmdc_store_pg(request_rec *r);

/* Create this child's connection pools for the servers that use the handler
 * (child_init; see mod_kmdc_db.h). */
void kmdc_store_child_init(apr_pool_t *pchild, server_rec *s);

/*
 * Check a KmdcDatabase or KmdcListenDatabase string with libpq's parser
 * (mod_kmdc_db.c; see mod_kmdc_db.h).  NULL when fine, else the message.
 */
const char *kmdc_db_conninfo_problem(apr_pool_t *p, const char *directive,
                                     const char *conninfo);

/*
 * Whether r's database (its server's KmdcDatabase) refused a statement for
 * lack of privilege (42501) or resources (53xxx: a full disk) within the
 * last KMDC_DEGRADED_WINDOW seconds, in any child: the reason (*ago its age
 * in seconds) or KMDC_DEGRADED_NONE.  GET /health then answers 503 degraded.
 */
kmdc_degraded kmdc_store_degraded(request_rec *r, int *ago);

/*
 * Answer a store failure: UNAVAILABLE 503 "unavailable" and SCHEMA 503
 * "schema_mismatch" (both with Retry-After), anything else 500 "internal".
 * Returns OK (the handler's value).
 */
int kmdc_store_answer_failure(request_rec *r, kmdc_store_rc rc);

#endif
