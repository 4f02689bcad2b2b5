/*
 * mod_kmdc_config.h - the per-server configuration of mod_kmdc: its fields,
 * the merge, and the start-up checks (where the handler is used, the
 * database and master keys it needs).  The directives themselves, their
 * bounds, defaults and help texts are the table of mod_kmdc_directives.h.
 *
 * Every field starts "unset" (NULL or KMDC_CONF_UNSET); merging takes the
 * virtual host's value when set, else the main server's.  At start-up
 * kmdc_conf_startup() replaces what is still unset by the default, so after
 * that the handler reads the fields directly.
 */
#ifndef MOD_KMDC_CONFIG_H
#define MOD_KMDC_CONFIG_H

#include <stdint.h>

#include "httpd.h"
#include "http_config.h"
#include "apr_tables.h"

#include "kmdc_keyring.h"
#include "kmdc_wrap.h"

#include "mod_kmdc_directives.h"

/* The "unset" sentinel of the numeric fields. */
#define KMDC_CONF_UNSET (-1)

/* KmdcDatabasePooling: what sits between the pool and PostgreSQL. */
#define KMDC_POOLING_SESSION        0   /* PostgreSQL itself, or a session pooler */
#define KMDC_POOLING_TRANSACTION    1   /* a transaction pooler (pgbouncer) */

/* The master keys of a server, loaded at post_config by the root parent
 * with kmdc_keyring_load (kmdc_keyring.h); a pconf cleanup wipes and frees
 * them. */
typedef kmdc_keyring kmdc_master_keys;

/* A URL prefix served by `SetHandler kmdc` (found at start-up). */
typedef struct kmdc_base {
    server_rec *s;            /* the virtual host, NULL: every server */
    const char *path;         /* the <Location> path, no trailing "/" */
    apr_size_t len;           /* strlen(path) */
} kmdc_base;

struct kmdc_db_pool;

typedef struct kmdc_srv_conf {
    /* --- directives -------------------------------------------------- */
    const char *conninfo;             /* KmdcDatabase: libpq conninfo; NULL unset */
    const char *listen_conninfo;      /* KmdcListenDatabase: the LISTEN connection's;
                                       * NULL: KmdcDatabase */
    int db_pooling;                   /* KmdcDatabasePooling: KMDC_POOLING_* */
    apr_array_header_t *master_key_files; /* KmdcMasterKey entries
                                       * (kmdc_master_key_file); NULL unset */
    int seq_window;                   /* KmdcSequenceWindow: accepted seq ahead of up_next */
    apr_int64_t envelope_max_age;     /* KmdcEnvelopeMaxAge: seconds SENT may differ from now */
    apr_int64_t max_document_size;    /* KmdcMaxDocumentSize: bytes of one document */
    int max_recipients;               /* KmdcMaxRecipients: RCPT entries per envelope */
    int max_uploads_per_card;         /* KmdcMaxUploadsPerCard: uploads in flight per card */
    int db_pool_min;                  /* KmdcDbPoolMin / KmdcDbPool: idle connections kept */
    int db_pool_max;                  /* KmdcDbPoolMax / KmdcDbPool: connections per child */
    apr_int64_t db_pool_idle;         /* KmdcDbPoolIdle: seconds before an idle
                                       * connection above the minimum closes */
    apr_int64_t mailbox_ttl;          /* KmdcMailboxTTL: seconds a delivery is kept */
    apr_int64_t mailbox_quota_count;  /* KmdcMailboxQuota: pending deliveries per mailbox */
    apr_int64_t mailbox_quota_bytes;  /* KmdcMailboxQuota: pending bytes per mailbox */
    apr_int64_t auth_skew;            /* KmdcAuthSkew: seconds |now - ts| may reach */
    /* --- filled at start-up (not directives, not merged) -------------- */
    int handler_used;                 /* some <Location> of this server has the handler */
    const apr_array_header_t *bases;  /* every kmdc_base (shared by all servers) */
    const kmdc_master_keys *keys;     /* loaded at post_config; NULL when none */
    struct kmdc_db_pool *db_pool;     /* this child's pool (child_init); NULL before */
} kmdc_srv_conf;

/* The directive table (module record). */
extern const command_rec kmdc_cmds[];

/* create_server_config: everything unset. */
void *kmdc_conf_create_server(apr_pool_t *p, server_rec *s);

/* merge_server_config: the virtual host's value where set, else the base's. */
void *kmdc_conf_merge_server(apr_pool_t *p, void *basev, void *addv);

/* The configuration of a server. */
kmdc_srv_conf *kmdc_conf_get(const server_rec *s);

/*
 * The start-up pass, run from check_config (load_keys 0: checks only, so that
 * `apachectl -t` catches every mistake) and from post_config (load_keys 1: the
 * root parent keeps the master keys in memory).  Finds every <Location> that
 * holds `SetHandler kmdc` in the configuration tree (refusing the handler
 * anywhere else), fills in the defaults, checks per server that KmdcDatabase
 * and at least one KmdcMasterKey are set where the handler is used and that
 * KmdcDbPoolMin <= KmdcDbPoolMax, and reads every master key file (refused
 * when group or others may read or write it).  Logs one clear line and
 * returns !OK on the first problem.
 */
int kmdc_conf_startup(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s,
                      int load_keys);

/*
 * The location prefix of the `SetHandler kmdc` section that serves r: the
 * longest <Location> path found at start-up for r->server (or for every
 * server) that r->uri starts with, at a "/" boundary.  NULL when none does
 * (the handler was set some other way: .htaccess, RewriteRule [H=]).
 */
const kmdc_base *kmdc_conf_find_base(const request_rec *r);

/*
 * The <Location> scan (mod_kmdc_locations.c): every <Location> of the
 * configuration tree that holds `SetHandler kmdc` becomes a kmdc_base in
 * *bases (from pconf; refusing the handler in any other section), and every
 * LimitRequestBody and where it stands goes into *limits (from ptemp), for
 * kmdc_locations_send_limit().  Returns NULL, or the message of the first
 * problem.
 */
const char *kmdc_locations_scan(apr_pool_t *pconf, apr_pool_t *ptemp,
                                server_rec *s, apr_array_header_t **bases,
                                apr_array_header_t **limits);

/* The LimitRequestBody that applies to {base}/send (0: none), from the
 * limits kmdc_locations_scan() found. */
apr_off_t kmdc_locations_send_limit(apr_pool_t *p,
                                    const apr_array_header_t *limits,
                                    const kmdc_base *b);

#endif
