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

/* The schema version this kmdcadm's queries are written for. */
#define KMDCADM_SCHEMA_VERSION 1

/* Length of a wrapped value (DESIGN 3.8) and of an access-code MAC. */
#define KMDCADM_WRAPPED_LEN 76
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
 * KMDCADM_SCHEMA_VERSION, telling the user to run `kmdcadm migrate` (older)
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

/* Transaction control for multi-step commands (issue). */
kmdc_status kmdcadm_db_begin(kmdcadm_db *db, kmdc_err *err);
kmdc_status kmdcadm_db_commit(kmdcadm_db *db, kmdc_err *err);
/* Roll back an open transaction; errors are ignored (used on error paths). */
void kmdcadm_db_rollback(kmdcadm_db *db);

/* A new card row as kmdcadm issue stores it.  Secrets arrive wrapped. */
typedef struct kmdcadm_new_card {
    uint64_t serial;                          /* 1 .. 2^63-1 */
    const char *address;                      /* validated, lower case */
    uint32_t key_id;                          /* master key id that wrapped */
    uint8_t up_chain[KMDCADM_WRAPPED_LEN];    /* wrapped UCK0, counter 0 */
    uint8_t down_chain[KMDCADM_WRAPPED_LEN];  /* wrapped DCK0, counter 0 */
    uint8_t auth_key[KMDCADM_WRAPPED_LEN];    /* wrapped AK */
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

#endif
