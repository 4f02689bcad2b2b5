/*
 * kmdcadm_db.h - the PostgreSQL side of kmdcadm: connecting, applying the
 * numbered migrations of sql/, and the card queries of the admin commands.
 *
 * Every query is parameterised (PQexecParams, bytea in binary both ways) and
 * every result status is checked.  Errors come back as a kmdc_status with a
 * message in kmdc_err; a connection or server failure is KMDC_ERR_IO.  Nothing
 * here prints a secret: the wrapped keys go in, nothing but counters and
 * states comes out.
 */
#ifndef KMDCADM_DB_H
#define KMDCADM_DB_H

#include <stdint.h>
#include <stdio.h>

#include "kmdc_err.h"
#include "kmdc_wrap.h"

/* The schema version this kmdcadm's queries are written for is lib's
 * KMDC_SCHEMA_VERSION. */
#include "kmdc_pq.h"

/* The length of a wrapped value is lib's KMDC_WRAPPED_LEN (kmdc_wrap.h,
 * docs/PROTOCOL.md section 8); that of an access-code MAC: */
#define KMDCADM_ACCESS_MAC_LEN 32

typedef struct kmdcadm_db kmdcadm_db;

/*
 * Connect to PostgreSQL.  conninfo is a libpq connection string or URI, or
 * NULL to use libpq's environment variables (PGHOST, PGPORT, PGDATABASE, ...)
 * alone.  The session gets application_name "kmdcadm" and
 * client_min_messages = warning.  On success *out must be released with
 * kmdcadm_db_close.  A server that cannot be reached is KMDC_ERR_IO.
 */
kmdc_status kmdcadm_db_open(kmdcadm_db **out, const char *conninfo,
                            kmdc_err *err);

/*
 * Connect like kmdcadm_db_open, to database dbname instead of conninfo's (or
 * the environment's), and act as role (SET ROLE role: the session's user must
 * be a member of it, a superuser is) so that what it creates belongs to role.
 */
kmdc_status kmdcadm_db_open_as(kmdcadm_db **out, const char *conninfo,
                               const char *dbname, const char *role,
                               kmdc_err *err);

/* What `kmdcadm setup` prepares (kmdcadm_setup.c). */
typedef struct kmdcadm_setup_opts {
    const char *conninfo;     /* a superuser's connection; NULL: the environment */
    const char *sqldir;       /* the migrations */
    const char *database;     /* kmdc */
    const char *owner;        /* kmdc_owner: owns the schema, kmdcadm's role */
    const char *httpd_role;   /* kmdc_httpd: httpd's children, least privilege */
    const char *httpd_user;   /* www-data: the system user of httpd's children */
    const char *admin_user;   /* root: the system user who runs kmdcadm */
    int peer_map;             /* add the pg_hba.conf and pg_ident.conf lines */
} kmdcadm_setup_opts;

/*
 * As a PostgreSQL superuser: create the roles owner and httpd_role (LOGIN,
 * nothing else) and the database owned by owner when missing; revoke PUBLIC's
 * rights on it and on schema public; migrate the schema as owner; grant
 * httpd_role the least privileges of docs/ADMIN.md section 2; with peer_map,
 * add the peer-authentication lines to the server's pg_ident.conf and
 * pg_hba.conf (the files must be writable: run as their owner) and reload.
 * Prints each step (done, or found done) and the KmdcDatabase line to report.
 * Idempotent.
 */
kmdc_status kmdcadm_setup_database(const kmdcadm_setup_opts *o, FILE *report,
                                   kmdc_err *err);

/* 1 when name is a role or database name setup accepts: [a-z_][a-z0-9_]{0,62}. */
int kmdcadm_setup_name_valid(const char *name);

/* Print the GRANT statements setup gives httpd_role, one per line. */
void kmdcadm_setup_print_grants(FILE *out, const char *httpd_role);

/* Close the connection and free the handle.  Accepts NULL. */
void kmdcadm_db_close(kmdcadm_db *db);

/*
 * Read the schema version the database is at into *version: max(version) of
 * schema_migrations, or 0 when that table does not exist yet.
 */
kmdc_status kmdcadm_db_schema_version(kmdcadm_db *db, int *version,
                                      kmdc_err *err);

/*
 * Refuse to work on a database whose schema version is not
 * KMDC_SCHEMA_VERSION, telling the user to run `kmdcadm migrate` (older)
 * or to upgrade kmdcadm (newer).  KMDC_ERR_ARG on a mismatch.
 */
kmdc_status kmdcadm_db_check_schema(kmdcadm_db *db, kmdc_err *err);

/*
 * Apply the migrations of sqldir that the database lacks, in order, each in
 * its own transaction, under a session advisory lock so that two migrators
 * never race.  Files are named NNN_name.sql (NNN = version, contiguous from
 * 1); each must record its own version in schema_migrations, which is checked
 * before its COMMIT.  Prints one line per applied file, or that the schema is
 * up to date, to report (may be NULL).  Idempotent.  A database newer than the
 * newest file is an error.
 */
kmdc_status kmdcadm_db_migrate(kmdcadm_db *db, const char *sqldir,
                               FILE *report, kmdc_err *err);

/* Transaction control for multi-step commands (issue, resync, rekey). */
kmdc_status kmdcadm_db_begin(kmdcadm_db *db, kmdc_err *err);
kmdc_status kmdcadm_db_commit(kmdcadm_db *db, kmdc_err *err);
/* Roll back an open transaction; errors are ignored (used on error paths). */
void kmdcadm_db_rollback(kmdcadm_db *db);

/* A new card row as kmdcadm issue stores it.  Secrets arrive wrapped. */
typedef struct kmdcadm_new_card {
    uint64_t serial;                          /* 1 .. 2^63-1 */
    const char *address;                      /* validated, lower case */
    uint32_t key_id;                          /* master key id that wrapped */
    uint8_t up_chain[KMDC_WRAPPED_LEN];    /* wrapped UCK0, counter 0 */
    uint8_t down_chain[KMDC_WRAPPED_LEN];  /* wrapped DCK0, counter 0 */
    uint8_t auth_key[KMDC_WRAPPED_LEN];    /* wrapped AK */
    uint8_t access_mac[KMDCADM_ACCESS_MAC_LEN];
    int access_days;                          /* access code validity */
} kmdcadm_new_card;

typedef enum kmdcadm_conflict {
    KMDCADM_CONFLICT_NONE = 0,
    KMDCADM_CONFLICT_SERIAL,   /* the serial is taken: draw another */
    KMDCADM_CONFLICT_ADDRESS   /* a live card for the address exists */
} kmdcadm_conflict;

/*
 * Insert a card in status 'issued' (access_expires = now() + access_days) and
 * its "card.issued" audit row, inside the caller's open transaction.  On a
 * unique violation *conflict says which and the status is KMDC_ERR_ARG; the
 * transaction is then aborted and must be rolled back.
 */
kmdc_status kmdcadm_db_card_insert(kmdcadm_db *db, const kmdcadm_new_card *c,
                                   kmdcadm_conflict *conflict, kmdc_err *err);

/* Which cards kmdcadm list shows; NULL fields match everything. */
typedef struct kmdcadm_filter {
    const char *status;
    const char *address;
} kmdcadm_filter;

/*
 * Print the cards matching filter to out: aligned columns (serial, address,
 * status, locked, up_next, down_next, created) or, when json is set, one JSON
 * array built by the server.  Never a secret.
 */
kmdc_status kmdcadm_db_card_list(kmdcadm_db *db, const kmdcadm_filter *filter,
                                 int json, FILE *out, kmdc_err *err);

/*
 * Print one card to out, "key: value" lines (or one JSON object), with its
 * queued/delivered/expired delivery counts and message count.  Never a
 * secret.  KMDC_ERR_NOTFOUND when no card has that serial.
 */
kmdc_status kmdcadm_db_card_show(kmdcadm_db *db, uint64_t serial, int json,
                                 FILE *out, kmdc_err *err);

typedef enum kmdcadm_action {
    KMDCADM_SUSPEND,   /* issued|active -> suspended */
    KMDCADM_RESUME,    /* suspended -> active (or issued if never activated) */
    KMDCADM_REVOKE     /* issued|active|suspended -> revoked, final */
} kmdcadm_action;

/*
 * Change a card's status in one transaction (row locked FOR UPDATE) and add
 * an audit row "card.suspended" / "card.resumed" / "card.revoked" whose detail
 * holds the previous status and reason (may be NULL).  A transition that makes
 * no sense is refused with KMDC_ERR_ARG and a message saying why; an unknown
 * serial is KMDC_ERR_NOTFOUND.  The old and new statuses are copied to
 * from/to (16 bytes each, may be NULL).
 */
kmdc_status kmdcadm_db_card_transition(kmdcadm_db *db, uint64_t serial,
                                       kmdcadm_action action,
                                       const char *reason, char from[16],
                                       char to[16], kmdc_err *err);

/* --- keys: resync and rekey ------------------------------------------------ */

/*
 * One card's stored keys and counters, as resync and rekey read and write
 * them.  The three values are wrapped (docs/PROTOCOL.md section 8); nothing here is a raw
 * secret.  code_live is set when the card still holds an access code that
 * can activate it (status issued or suspended, not locked, not expired): its
 * access_mac is keyed by the master key key_id names, so that key is still
 * needed.
 */
typedef struct kmdcadm_card_keys {
    uint64_t serial;
    char status[16];
    uint64_t up_next;
    uint64_t down_next;
    uint8_t up_chain[KMDC_WRAPPED_LEN];
    uint8_t down_chain[KMDC_WRAPPED_LEN];
    uint8_t auth_key[KMDC_WRAPPED_LEN];
    uint32_t key_id;
    int code_live;
} kmdcadm_card_keys;

/*
 * Read up to cap cards whose serial is above after, in serial order, into
 * rows (*n is set; fewer than cap means there are no more).  With lock set
 * the rows are locked FOR NO KEY UPDATE (in serial order, as the module locks
 * them) until the caller's open transaction ends; without it each call is
 * one consistent snapshot and takes no lock.
 */
kmdc_status kmdcadm_db_card_keys_batch(kmdcadm_db *db, uint64_t after, int lock,
                                       kmdcadm_card_keys *rows, size_t cap,
                                       size_t *n, kmdc_err *err);

/*
 * Read one card and lock its row FOR NO KEY UPDATE inside the caller's open
 * transaction.  KMDC_ERR_NOTFOUND when no card has that serial.
 */
kmdc_status kmdcadm_db_card_keys_lock(kmdcadm_db *db, uint64_t serial,
                                      kmdcadm_card_keys *out, kmdc_err *err);

/*
 * Store c's counters, wrapped values and key_id in its row, inside the
 * caller's open transaction (the row locked by one of the two readers
 * above).  A counter that would go back is refused by the schema
 * (cards_counters_forward) and comes back as KMDC_ERR_ARG.
 */
kmdc_status kmdcadm_db_card_keys_store(kmdcadm_db *db, const kmdcadm_card_keys *c,
                                       kmdc_err *err);

/*
 * Add the audit row "card.resynced" for one chain ("up" or "down") moved
 * from..to: detail {chain, from, to, by, db_user}.  Caller's transaction.
 */
kmdc_status kmdcadm_db_audit_resync(kmdcadm_db *db, uint64_t serial,
                                    const char *chain, uint64_t from, uint64_t to,
                                    kmdc_err *err);

/*
 * Add the audit row "master.rekeyed" (no serial): detail {key_id, cards,
 * values, by, db_user}, cards and values being what this run rewrapped.
 */
kmdc_status kmdcadm_db_audit_rekey(kmdcadm_db *db, uint32_t key_id, uint64_t cards,
                                   uint64_t values, kmdc_err *err);

/* Live access codes keyed by one master key other than the newest. */
typedef struct kmdcadm_code_use {
    uint32_t key_id;
    uint64_t cards;
    char latest_expiry[32];   /* UTC, YYYY-MM-DDTHH:MM:SSZ */
} kmdcadm_code_use;

/*
 * Group the cards with a live access code (see code_live) whose key_id is not
 * newest by key_id, at most cap groups into out (*n set).  These cards still
 * need their key_id's master key to be activated.
 */
kmdc_status kmdcadm_db_live_codes(kmdcadm_db *db, uint32_t newest,
                                  kmdcadm_code_use *out, size_t cap, size_t *n,
                                  kmdc_err *err);

/* How many wrapped values name one master key id. */
typedef struct kmdcadm_key_use {
    uint32_t key_id;
    uint64_t values;
} kmdcadm_key_use;

/*
 * Count the wrapped values (up_chain, down_chain, auth_key of every card) by
 * the master key id each one names in its first four bytes, at most cap ids
 * into out in id order (*n set; *more set when there were more ids).
 */
kmdc_status kmdcadm_db_key_ids(kmdcadm_db *db, kmdcadm_key_use *out, size_t cap,
                               size_t *n, int *more, kmdc_err *err);

/* --- purge -------------------------------------------------------------------- */

/* Ages, in seconds, past which kmdcadm purge removes rows. */
typedef struct kmdcadm_purge_opts {
    int64_t receipt_age;     /* receipts (created_at) */
    int64_t tombstone_age;   /* delivered/expired deliveries, then messages */
    int64_t upload_age;      /* uploads no message references (created_at) */
    int64_t nonce_age;       /* request nonces (seen_at) */
    int dry_run;             /* count only, change nothing */
} kmdcadm_purge_opts;

/* What purge did (or, with dry_run, would do), per kind. */
typedef struct kmdcadm_purge_counts {
    uint64_t expired;        /* queued deliveries past expires_at, tombstoned */
    uint64_t uploads;        /* payloads of messages with no queued delivery: an
                              * upload, or the message's own payload column */
    uint64_t orphans;        /* uploads no message references (crashed intakes) */
    uint64_t receipts;
    uint64_t nonces;
    uint64_t tombstones;     /* old delivered/expired deliveries deleted */
    uint64_t messages;       /* messages left without deliveries and receipts */
} kmdcadm_purge_counts;

/*
 * Purge the database in the order expired deliveries, uploads, orphaned
 * uploads, receipts, nonces, tombstones, messages: each kind in short
 * transactions of at most a few hundred rows, locking with SKIP LOCKED so
 * that the running service is never blocked for long and rows it is working
 * on are left for the next run.  Never deletes a queued delivery, the
 * payload of a message with a queued delivery, or a message a delivery or a
 * receipt references.  With dry_run set nothing changes and counts says
 * what a purge run now would remove.  Adds an audit row "db.purged" with the
 * counts when something was removed.
 */
kmdc_status kmdcadm_db_purge(kmdcadm_db *db, const kmdcadm_purge_opts *opts,
                             kmdcadm_purge_counts *counts, kmdc_err *err);

/* --- audit ---------------------------------------------------------------------- */

/* Which audit rows kmdcadm audit prints. */
typedef struct kmdcadm_audit_query {
    uint64_t serial;          /* 0: every serial (and rows without one) */
    const char *since;        /* a PostgreSQL timestamptz text, or NULL */
    int64_t since_secs;       /* rows of the last since_secs seconds; < 0 none */
    int64_t limit;            /* at most this many rows; 0 no limit */
    int json;                 /* one JSON array instead of columns */
} kmdcadm_audit_query;

/*
 * Print the audit log rows matching q to out, newest first: aligned columns
 * AT (UTC), SERIAL ("-" when none), EVENT, DETAIL (JSON), or one JSON array
 * of {id, at, serial, event, detail}.  KMDC_ERR_FORMAT when q->since is not a
 * time PostgreSQL understands.
 */
kmdc_status kmdcadm_db_audit_print(kmdcadm_db *db, const kmdcadm_audit_query *q,
                                   FILE *out, kmdc_err *err);

#endif
