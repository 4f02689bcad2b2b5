/*
 * mod_kmdc_directives.h - the one table of mod_kmdc's directives: names,
 * the fields they set, kinds, bounds, defaults and help texts.
 *
 * Everything else is generated from KMDC_DIRECTIVES (an X-macro list, one row
 * per directive): the command_rec array httpd reads, the "unset" sentinels
 * of create_server_config, the merge, the defaults filled in at start-up
 * (mod_kmdc_config.c), and the directive list and defaults that t/docs.sh
 * checks the documents against (tools/kmdc_directives.c prints them).  A
 * directive added here and not documented fails t/docs.sh.
 *
 * This header needs no httpd or APR header: the columns that name fields
 * and setters are only expanded inside mod_kmdc_config.c.
 *
 * X(ID, ARGS, SETTER, DEFAULT, HELP, FIELD1, FIELD2)
 *   ID       the directive is KMDC_DIR_<ID> (below)
 *   ARGS     TAKE1 or TAKE2 (httpd's AP_INIT_TAKE1 / AP_INIT_TAKE2)
 *   SETTER   set_slot (TAKE1) or set_slot2 (TAKE2): the generic setter,
 *            each argument parsed by its field's kind and bounds and stored
 *            at its field's offset; else a setter of its own
 *            (mod_kmdc_config.c) for what is not "one field with bounds"
 *   DEFAULT  KMDC_DEF("text"): written as in the configuration, applied at
 *            start-up to a server that sets none of the fields, appended to
 *            the help text; KMDC_NODEF: none (or the directive's own rule)
 *   HELP     what httpd -L and a wrong argument count show ("(default X)"
 *            is appended; the bounds are in the error messages and docs/)
 *   FIELD1/2 KMDC_F(field of kmdc_srv_conf, KIND, min, max) for the first
 *            and second argument, or KMDC_NOF.  KIND: INT (a decimal number;
 *            the field is an int or an apr_int64_t), DURATION (seconds,
 *            suffix s m h d), SIZE (bytes, suffix K M G), POOLING (session
 *            or transaction), STR and LIST (pointers set by a setter of its
 *            own; min and max unused).
 * KMDC_DEF, KMDC_NODEF, KMDC_F and KMDC_NOF are never defined as macros:
 * the expansions paste a prefix onto them to pick their parts.
 */
#ifndef MOD_KMDC_DIRECTIVES_H
#define MOD_KMDC_DIRECTIVES_H

#include <stdint.h>

/* Directive names, defined once (the table, messages, the documents' check). */
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

/* Bounds that other files read (the pool's maintenance timer). */
#define KMDC_MAX_DB_POOL_IDLE       86400           /* 1 d */

/* Bounds from docs/PROTOCOL.md sections 3.3, 4 and 5. */
#define KMDC_DIRECTIVES(X) \
    X(DATABASE, TAKE1, set_conninfo, KMDC_NODEF, \
      "libpq connection string or URI of the kmdc database (several hosts " \
      "with target_session_attrs=read-write)", \
      KMDC_F(conninfo, STR, 0, 0), KMDC_NOF) \
    X(LISTEN_DATABASE, TAKE1, set_conninfo, KMDC_NODEF, \
      "libpq connection string of the long-poll LISTEN connection (default: " \
      "KmdcDatabase; required with KmdcDatabasePooling transaction)", \
      KMDC_F(listen_conninfo, STR, 0, 0), KMDC_NOF) \
    X(DATABASE_POOLING, TAKE1, set_slot, KMDC_DEF("session"), \
      "session (PostgreSQL itself or a session pooler) or transaction (a " \
      "transaction pooler such as pgbouncer)", \
      KMDC_F(db_pooling, POOLING, 0, 1), KMDC_NOF) \
    X(MASTER_KEY, TAKE2, set_master_key, KMDC_NODEF, \
      "ID FILE: a master key (64 hex digits, mode 0600); repeatable, the " \
      "highest id wraps new values", \
      KMDC_F(master_key_files, LIST, 0, 0), KMDC_NOF) \
    X(SEQUENCE_WINDOW, TAKE1, set_slot, KMDC_DEF("64"), \
      "how far ahead of up_next an envelope's seq may be", \
      KMDC_F(seq_window, INT, 1, 1024), KMDC_NOF) \
    X(ENVELOPE_MAX_AGE, TAKE1, set_slot, KMDC_DEF("24h"), \
      "how far SENT may be from the server clock", \
      KMDC_F(envelope_max_age, DURATION, 1, INT64_C(31536000)), KMDC_NOF) \
    X(MAX_DOCUMENT_SIZE, TAKE1, set_slot, KMDC_DEF("1G"), \
      "largest document accepted", \
      /* at most SIZE's limit, PROTOCOL.md 3.3 */ \
      KMDC_F(max_document_size, SIZE, 1, INT64_C(1) << 40), KMDC_NOF) \
    X(MAX_RECIPIENTS, TAKE1, set_slot, KMDC_DEF("32"), \
      "recipients per envelope", \
      KMDC_F(max_recipients, INT, 1, 32), KMDC_NOF) \
    X(MAX_UPLOADS, TAKE1, set_slot, KMDC_DEF("4"), \
      "uploads in flight per card", \
      KMDC_F(max_uploads_per_card, INT, 1, 1024), KMDC_NOF) \
    X(DB_POOL, TAKE2, set_db_pool, KMDC_NODEF, \
      "MIN MAX database connections per child: sets KmdcDbPoolMin and " \
      "KmdcDbPoolMax", \
      KMDC_NOF, KMDC_NOF) \
    X(DB_POOL_MIN, TAKE1, set_slot, KMDC_DEF("1"), \
      "database connections kept open per child", \
      KMDC_F(db_pool_min, INT, 0, 1024), KMDC_NOF) \
    X(DB_POOL_MAX, TAKE1, set_slot, KMDC_DEF("8"), \
      "most database connections per child", \
      KMDC_F(db_pool_max, INT, 1, 1024), KMDC_NOF) \
    X(DB_POOL_IDLE, TAKE1, set_slot, KMDC_DEF("60s"), \
      "idle time after which a pooled database connection above the " \
      "minimum is closed", \
      KMDC_F(db_pool_idle, DURATION, 1, KMDC_MAX_DB_POOL_IDLE), KMDC_NOF) \
    X(MAILBOX_TTL, TAKE1, set_slot, KMDC_DEF("7d"), \
      "how long an unfetched delivery is kept", \
      KMDC_F(mailbox_ttl, DURATION, 1, INT64_C(315360000)), KMDC_NOF) \
    /* 2G holds one envelope of a document of the default largest size */ \
    X(MAILBOX_QUOTA, TAKE2, set_slot2, KMDC_DEF("1000 2G"), \
      "COUNT BYTES pending per mailbox", \
      KMDC_F(mailbox_quota_count, INT, 1, INT64_C(2147483647)), \
      KMDC_F(mailbox_quota_bytes, SIZE, 1, INT64_C(1) << 50)) \
    X(AUTH_SKEW, TAKE1, set_slot, KMDC_DEF("300"), \
      "allowed clock difference of signed requests", \
      /* at most 300 s: nonces are kept 600 s, twice the skew */ \
      KMDC_F(auth_skew, DURATION, 1, 300), KMDC_NOF)

/* The parts of a DEFAULT column: its text (NULL: none) and its help suffix. */
#define KMDC_DEFTEXT_KMDC_DEF(text)     text
#define KMDC_DEFTEXT_KMDC_NODEF         NULL
#define KMDC_DEFHELP_KMDC_DEF(text)     " (default " text ")"
#define KMDC_DEFHELP_KMDC_NODEF         ""

/* One index per row: KMDC_D_<ID>, and KMDC_D_N rows. */
#define KMDC_DIRECTIVE_INDEX(ID, ARGS, SETTER, DEF, HELP, F1, F2) KMDC_D_##ID,
enum { KMDC_DIRECTIVES(KMDC_DIRECTIVE_INDEX) KMDC_D_N };

#endif
