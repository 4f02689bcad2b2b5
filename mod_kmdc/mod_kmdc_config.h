/*
 * mod_kmdc_config.h - the per-server configuration of mod_kmdc: the
 * directives, their defaults and bounds, the merge, and the start-up checks
 * (where the handler is used, the database and master keys it needs).
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

/* Directive names, defined once (used in the command table and messages). */
#define KMDC_DIR_DATABASE           "KmdcDatabase"
#define KMDC_DIR_LISTEN_DATABASE    "KmdcListenDatabase"
#define KMDC_DIR_DATABASE_POOLING   "KmdcDatabasePooling"
#define KMDC_DIR_MASTER_KEY         "KmdcMasterKey"
#define KMDC_DIR_SEQUENCE_WINDOW    "KmdcSequenceWindow"
#define KMDC_DIR_ENVELOPE_MAX_AGE   "KmdcEnvelopeMaxAge"
#define KMDC_DIR_MAX_DOCUMENT_SIZE  "KmdcMaxDocumentSize"
#define KMDC_DIR_MAX_RECIPIENTS     "KmdcMaxRecipients"
#define KMDC_DIR_MAX_UPLOADS        "KmdcMaxUploadsPerCard"
#define KMDC_DIR_DB_POOL            "KmdcDbPool"
#define KMDC_DIR_DB_POOL_MIN        "KmdcDbPoolMin"
#define KMDC_DIR_DB_POOL_MAX        "KmdcDbPoolMax"
#define KMDC_DIR_DB_POOL_IDLE       "KmdcDbPoolIdle"
#define KMDC_DIR_MAILBOX_TTL        "KmdcMailboxTTL"
#define KMDC_DIR_MAILBOX_QUOTA      "KmdcMailboxQuota"
#define KMDC_DIR_AUTH_SKEW          "KmdcAuthSkew"

/* The "unset" sentinel of the numeric fields. */
#define KMDC_CONF_UNSET (-1)

/* KmdcDatabasePooling: what sits between the pool and PostgreSQL. */
#define KMDC_POOLING_SESSION        0   /* PostgreSQL itself, or a session pooler */
#define KMDC_POOLING_TRANSACTION    1   /* a transaction pooler (pgbouncer) */

/* Defaults and bounds (docs/PROTOCOL.md sections 4 and 5; documented in docs/DIRECTIVES.md). */
#define KMDC_DEF_SEQUENCE_WINDOW    64
#define KMDC_MAX_SEQUENCE_WINDOW    1024
#define KMDC_DEF_ENVELOPE_MAX_AGE   APR_INT64_C(86400)          /* 24 h */
#define KMDC_MAX_ENVELOPE_MAX_AGE   APR_INT64_C(31536000)       /* 365 d */
#define KMDC_DEF_MAX_DOCUMENT_SIZE  (APR_INT64_C(1) << 30)      /* 1 GiB */
#define KMDC_MAX_MAX_DOCUMENT_SIZE  (APR_INT64_C(1) << 40)  /* SIZE, PROTOCOL.md 3.3 */
#define KMDC_DEF_MAX_RECIPIENTS     32
#define KMDC_MAX_MAX_RECIPIENTS     32
#define KMDC_DEF_MAX_UPLOADS        4
#define KMDC_MAX_MAX_UPLOADS        1024
#define KMDC_DEF_DB_POOL_MIN        1
#define KMDC_DEF_DB_POOL_MAX        8
#define KMDC_DEF_DB_POOL_IDLE       60
#define KMDC_MAX_DB_POOL_IDLE       86400
#define KMDC_MAX_DB_POOL            1024
#define KMDC_DEF_MAILBOX_TTL        APR_INT64_C(604800)         /* 7 d */
#define KMDC_MAX_MAILBOX_TTL        APR_INT64_C(315360000)      /* 3650 d */
#define KMDC_DEF_QUOTA_COUNT        APR_INT64_C(1000)
#define KMDC_MAX_QUOTA_COUNT        APR_INT64_C(2147483647)
#define KMDC_DEF_QUOTA_BYTES        (APR_INT64_C(2) << 30)      /* 2 GiB: holds one envelope of the largest default document */
#define KMDC_MAX_QUOTA_BYTES        (APR_INT64_C(1) << 50)      /* 1 PiB */
#define KMDC_DEF_AUTH_SKEW          APR_INT64_C(300)
#define KMDC_MAX_AUTH_SKEW          APR_INT64_C(300)   /* nonces are kept 600 s = 2 x skew */

/* Master key ids are 1 .. 2^31-1; a key is KMDC_MASTER_KEY_LEN (32) bytes,
 * read by kmdc_master_key_load (lib/kmdc_wrap.h). */
#define KMDC_MASTER_KEY_ID_MAX      APR_INT64_C(2147483647)

/* One KmdcMasterKey directive. */
typedef struct kmdc_master_key_conf {
    uint32_t id;              /* 1 .. 2^31-1, unique within the server */
    const char *path;         /* absolute (ServerRoot-relative resolved) */
} kmdc_master_key_conf;

/* The master keys of a server, loaded at post_config by the root parent
 * (kmdc_keyring.h; the key bytes live in pconf memory, wiped by a cleanup). */
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
    apr_array_header_t *master_key_files; /* KmdcMasterKey entries; NULL unset */
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
 * Parse a duration: decimal seconds, or with one suffix s, m, h or d.
 * Returns NULL and sets *out, or an error message (from p) naming directive.
 */
const char *kmdc_conf_parse_duration(apr_pool_t *p, const char *directive,
                                     const char *arg, apr_int64_t *out);

/*
 * Parse a size: decimal bytes, or with one suffix K, M or G (powers of 1024,
 * either case).  Returns NULL and sets *out, or an error message (from p).
 */
const char *kmdc_conf_parse_size(apr_pool_t *p, const char *directive,
                                 const char *arg, apr_int64_t *out);

#endif
