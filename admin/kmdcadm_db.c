/*
 * kmdcadm_db.c - the PostgreSQL side of kmdcadm (see kmdcadm_db.h).
 *
 * Parameterised SQL only.  Integers travel as decimal text, bytea in binary.
 * Server messages are reported by their primary text only: the DETAIL field
 * of a constraint violation quotes the offending values (an address, say) and
 * is never shown.
 */
#include "config.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "kmdc_util.h"
#include "kmdcadm_db.h"

/* pg_advisory_lock key of the migrator: "kmdc" || u32 1. */
#define MIGRATE_LOCK_KEY "7740953710884290561"
/* The largest migration file read (a schema file is a few KiB). */
#define MIGRATION_MAX_BYTES (4u << 20)
/* The most migration files considered. */
#define MIGRATION_MAX_FILES 999

struct kmdcadm_db {
    PGconn *conn;
};

/* --- errors ------------------------------------------------------------- */

/* Copy the first line of s (without its newline) into buf. */
static void
first_line(char *buf, size_t buflen, const char *s)
{
    size_t n = 0;

    if (s == NULL)
        s = "";
    while (s[n] != '\0' && s[n] != '\n' && n + 1 < buflen)
        n++;
    memcpy(buf, s, n);
    buf[n] = '\0';
}

/*
 * Turn a failed result (or a NULL one) into a status and a message "could not
 * WHAT: reason".  Connection problems and server shutdowns are KMDC_ERR_IO
 * ("database unavailable"), constraint violations KMDC_ERR_ARG, the rest
 * KMDC_ERR_INTERNAL.
 */
static kmdc_status
db_error(kmdcadm_db *db, const PGresult *res, const char *what, kmdc_err *err)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char line[200];

    first_line(line, sizeof line, primary ? primary : PQerrorMessage(db->conn));
    if (PQstatus(db->conn) == CONNECTION_BAD || state == NULL
        || strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0
        || strncmp(state, "53", 2) == 0)
        return kmdc_err_set(err, KMDC_ERR_IO,
                            "could not %s: database unavailable: %s", what, line);
    if (strncmp(state, "23", 2) == 0)
        return kmdc_err_set(err, KMDC_ERR_ARG, "could not %s: %s (SQLSTATE %s)",
                            what, line, state);
    return kmdc_err_set(err, KMDC_ERR_INTERNAL, "could not %s: %s (SQLSTATE %s)",
                        what, line, state);
}

/* Run a parameterised statement (all parameters text) and check its status. */
static kmdc_status
db_exec(kmdcadm_db *db, PGresult **out, ExecStatusType want, const char *sql,
        int n, const char *const *values, const char *what, kmdc_err *err)
{
    PGresult *res;
    kmdc_status st;

    *out = NULL;
    res = PQexecParams(db->conn, sql, n, NULL, values, NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != want) {
        st = db_error(db, res, what, err);
        PQclear(res);
        return st;
    }
    *out = res;
    return KMDC_OK;
}

/* A statement whose result is not needed. */
static kmdc_status
db_command(kmdcadm_db *db, const char *sql, int n, const char *const *values,
           const char *what, kmdc_err *err)
{
    PGresult *res = NULL;
    kmdc_status st;

    st = db_exec(db, &res, PGRES_COMMAND_OK, sql, n, values, what, err);
    PQclear(res);
    return st;
}

/* --- connection --------------------------------------------------------- */

/* Connect with conninfo (expanded: a string or a URI; NULL: libpq's
 * defaults), to database dbname instead of its own when not NULL, and act
 * as role when not NULL (SET ROLE). */
static kmdc_status
db_connect(kmdcadm_db **out, const char *conninfo, const char *dbname, const char *role,
           kmdc_err *err)
{
    const char *keys[4];
    const char *vals[4];
    kmdcadm_db *db = NULL;
    kmdc_status st = KMDC_OK;
    char line[200];
    char *q = NULL;
    char sql[200];
    int n = 0;

    *out = NULL;
    db = calloc(1, sizeof *db);
    if (db == NULL) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        goto out;
    }
    if (conninfo != NULL) {
        keys[n] = "dbname";   /* the first dbname is expanded */
        vals[n++] = conninfo;
    }
    if (dbname != NULL) {
        keys[n] = "dbname";   /* a later one is a plain name */
        vals[n++] = dbname;
    }
    keys[n] = "application_name";
    vals[n++] = "kmdcadm";
    keys[n] = NULL;
    vals[n] = NULL;
    db->conn = PQconnectdbParams(keys, vals, 1);
    if (db->conn == NULL) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        goto out;
    }
    if (PQstatus(db->conn) != CONNECTION_OK) {
        first_line(line, sizeof line, PQerrorMessage(db->conn));
        st = kmdc_err_set(err, KMDC_ERR_IO, "database unavailable: %s", line);
        goto out;
    }
    st = db_command(db, "SET client_min_messages = warning", 0, NULL,
                    "configure the session", err);
    if (st != KMDC_OK)
        goto out;
    if (role != NULL) {
        q = PQescapeIdentifier(db->conn, role, strlen(role));
        if (q == NULL || snprintf(sql, sizeof sql, "SET ROLE %s", q) >= (int)sizeof sql) {
            st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "a role name is too long");
            goto out;
        }
        st = db_command(db, sql, 0, NULL, "act as the owner role", err);
        if (st != KMDC_OK)
            goto out;
    }
    *out = db;
    db = NULL;
out:
    PQfreemem(q);
    kmdcadm_db_close(db);
    return st;
}

kmdc_status
kmdcadm_db_open(kmdcadm_db **out, const char *conninfo, kmdc_err *err)
{
    return db_connect(out, conninfo, NULL, NULL, err);
}

kmdc_status
kmdcadm_db_open_as(kmdcadm_db **out, const char *conninfo, const char *dbname,
                   const char *role, kmdc_err *err)
{
    return db_connect(out, conninfo, dbname, role, err);
}

void
kmdcadm_db_close(kmdcadm_db *db)
{
    if (db == NULL)
        return;
    if (db->conn != NULL)
        PQfinish(db->conn);
    free(db);
}

kmdc_status
kmdcadm_db_begin(kmdcadm_db *db, kmdc_err *err)
{
    return db_command(db, "BEGIN", 0, NULL, "start a transaction", err);
}

kmdc_status
kmdcadm_db_commit(kmdcadm_db *db, kmdc_err *err)
{
    return db_command(db, "COMMIT", 0, NULL, "commit", err);
}

void
kmdcadm_db_rollback(kmdcadm_db *db)
{
    PGresult *res;

    if (db == NULL || db->conn == NULL || PQstatus(db->conn) != CONNECTION_OK)
        return;
    if (PQtransactionStatus(db->conn) == PQTRANS_IDLE)
        return;
    res = PQexec(db->conn, "ROLLBACK");
    PQclear(res);
}

/* --- schema version ------------------------------------------------------ */

kmdc_status
kmdcadm_db_schema_version(kmdcadm_db *db, int *version, kmdc_err *err)
{
    PGresult *res = NULL;
    kmdc_status st;

    *version = 0;
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT to_regclass('schema_migrations') IS NOT NULL", 0, NULL,
                 "read the schema version", err);
    if (st != KMDC_OK)
        goto out;
    if (PQntuples(res) != 1 || strcmp(PQgetvalue(res, 0, 0), "t") != 0)
        goto out;   /* an empty database: version 0 */
    PQclear(res);
    res = NULL;
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT coalesce(max(version), 0) FROM schema_migrations", 0,
                 NULL, "read the schema version", err);
    if (st != KMDC_OK)
        goto out;
    if (PQntuples(res) != 1) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL,
                          "could not read the schema version: no row");
        goto out;
    }
    *version = atoi(PQgetvalue(res, 0, 0));
out:
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_check_schema(kmdcadm_db *db, kmdc_err *err)
{
    kmdc_status st;
    int version = 0;

    st = kmdcadm_db_schema_version(db, &version, err);
    if (st != KMDC_OK)
        return st;
    if (version == 0)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "the database has no kmdc schema: run 'kmdcadm migrate' first");
    if (version < KMDCADM_SCHEMA_VERSION)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "the database schema is at version %d, this kmdcadm needs %d: "
                            "run 'kmdcadm migrate'", version, KMDCADM_SCHEMA_VERSION);
    if (version > KMDCADM_SCHEMA_VERSION)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "the database schema is at version %d, newer than this "
                            "kmdcadm (%d): use a newer kmdcadm", version,
                            KMDCADM_SCHEMA_VERSION);
    return KMDC_OK;
}

/* --- migrations ----------------------------------------------------------- */

typedef struct migration {
    int version;
    char file[256];   /* file name inside sqldir */
    char name[256];   /* the part between "NNN_" and ".sql" */
} migration;

/*
 * Parse "NNN_name.sql": digits, an underscore, a name of [a-z0-9_-], ".sql".
 * Returns 1 and fills m when the name fits, 0 for any other file.
 */
static int
migration_parse(migration *m, const char *fname)
{
    size_t len = strlen(fname), i = 0, name_start, name_len;
    long v = 0;

    if (len < 6 || len >= sizeof m->file || strcmp(fname + len - 4, ".sql") != 0)
        return 0;
    while (i < len && fname[i] >= '0' && fname[i] <= '9') {
        v = v * 10 + (fname[i] - '0');
        if (v > 1000000)
            return 0;
        i++;
    }
    if (i == 0 || fname[i] != '_' || v <= 0)
        return 0;
    name_start = i + 1;
    name_len = len - 4 - name_start;
    if (name_len == 0)
        return 0;
    for (i = name_start; i < len - 4; i++) {
        char c = fname[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return 0;
    }
    m->version = (int)v;
    memcpy(m->file, fname, len + 1);
    memcpy(m->name, fname + name_start, name_len);
    m->name[name_len] = '\0';
    return 1;
}

static int
migration_cmp(const void *a, const void *b)
{
    const migration *x = a, *y = b;

    return (x->version > y->version) - (x->version < y->version);
}

/* List the migrations of sqldir into *out (sorted), checking 1..n contiguous. */
static kmdc_status
migrations_list(const char *sqldir, migration **out, size_t *count, kmdc_err *err)
{
    DIR *d = NULL;
    struct dirent *e;
    migration *list = NULL, *grown;
    size_t n = 0, cap = 0, i;
    kmdc_status st = KMDC_OK;

    *out = NULL;
    *count = 0;
    d = opendir(sqldir);
    if (d == NULL) {
        st = kmdc_err_set(err, KMDC_ERR_IO, "cannot open the migrations folder %s: %s",
                          sqldir, strerror(errno));
        goto out;
    }
    while ((e = readdir(d)) != NULL) {
        migration m;

        if (!migration_parse(&m, e->d_name))
            continue;
        if (n == MIGRATION_MAX_FILES) {
            st = kmdc_err_set(err, KMDC_ERR_LIMIT, "too many migration files in %s", sqldir);
            goto out;
        }
        if (n == cap) {
            cap = cap ? cap * 2 : 8;
            grown = realloc(list, cap * sizeof *list);
            if (grown == NULL) {
                st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
                goto out;
            }
            list = grown;
        }
        list[n++] = m;
    }
    if (n == 0) {
        st = kmdc_err_set(err, KMDC_ERR_NOTFOUND,
                          "no migration files (NNN_name.sql) in %s: pass --sqldir", sqldir);
        goto out;
    }
    qsort(list, n, sizeof *list, migration_cmp);
    for (i = 0; i < n; i++) {
        if (list[i].version != (int)i + 1) {
            st = kmdc_err_set(err, KMDC_ERR_FORMAT,
                              "migration files in %s are not numbered 1..%zu without "
                              "gaps or duplicates (at %s)", sqldir, n, list[i].file);
            goto out;
        }
    }
    *out = list;
    *count = n;
    list = NULL;
out:
    if (d != NULL)
        closedir(d);
    free(list);
    return st;
}

/* Read a whole migration file as a NUL-terminated string. */
static kmdc_status
read_sql_file(const char *sqldir, const char *fname, char **out, kmdc_err *err)
{
    char path[4096];
    struct stat sb;
    char *buf = NULL;
    size_t got = 0;
    ssize_t r;
    int fd = -1, n;
    kmdc_status st = KMDC_OK;

    *out = NULL;
    n = snprintf(path, sizeof path, "%s/%s", sqldir, fname);
    if (n < 0 || (size_t)n >= sizeof path) {
        st = kmdc_err_set(err, KMDC_ERR_ARG, "migrations folder path too long");
        goto out;
    }
    fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0 || fstat(fd, &sb) != 0) {
        st = kmdc_err_set(err, KMDC_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    if (!S_ISREG(sb.st_mode) || sb.st_size < 0 || (uintmax_t)sb.st_size > MIGRATION_MAX_BYTES) {
        st = kmdc_err_set(err, KMDC_ERR_LIMIT, "%s is not a regular file of at most %u bytes",
                          path, MIGRATION_MAX_BYTES);
        goto out;
    }
    buf = malloc((size_t)sb.st_size + 1);
    if (buf == NULL) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        goto out;
    }
    while (got < (size_t)sb.st_size) {
        r = read(fd, buf + got, (size_t)sb.st_size - got);
        if (r < 0 && errno == EINTR)
            continue;
        if (r <= 0) {
            st = kmdc_err_set(err, KMDC_ERR_IO, "cannot read %s: %s", path,
                              r < 0 ? strerror(errno) : "file shrank while read");
            goto out;
        }
        got += (size_t)r;
    }
    buf[got] = '\0';
    if (strlen(buf) != got) {
        st = kmdc_err_set(err, KMDC_ERR_FORMAT, "%s contains a NUL byte", path);
        goto out;
    }
    *out = buf;
    buf = NULL;
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return st;
}

/* Apply one migration in its own transaction and check that it recorded itself. */
static kmdc_status
migration_apply(kmdcadm_db *db, const char *sqldir, const migration *m, kmdc_err *err)
{
    char *sql = NULL;
    char version[16], what[300];
    const char *params[2];
    PGresult *res = NULL;
    kmdc_status st;

    snprintf(version, sizeof version, "%d", m->version);
    snprintf(what, sizeof what, "apply %s", m->file);
    st = read_sql_file(sqldir, m->file, &sql, err);
    if (st != KMDC_OK)
        goto out;
    st = kmdcadm_db_begin(db, err);
    if (st != KMDC_OK)
        goto out;
    /* The file is a script of several statements: PQexec (simple protocol)
     * runs them all and returns the last result, or the first error. */
    res = PQexec(db->conn, sql);
    if (res == NULL || (PQresultStatus(res) != PGRES_COMMAND_OK
                        && PQresultStatus(res) != PGRES_TUPLES_OK)) {
        st = db_error(db, res, what, err);
        goto out;
    }
    if (PQtransactionStatus(db->conn) != PQTRANS_INTRANS) {
        st = kmdc_err_set(err, KMDC_ERR_FORMAT,
                          "%s ends the transaction itself: a migration file must not "
                          "contain BEGIN, COMMIT or ROLLBACK", m->file);
        goto out;
    }
    PQclear(res);
    res = NULL;
    params[0] = version;
    params[1] = m->name;
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT 1 FROM schema_migrations WHERE version = $1::int AND name = $2",
                 2, params, what, err);
    if (st != KMDC_OK)
        goto out;
    if (PQntuples(res) != 1) {
        st = kmdc_err_set(err, KMDC_ERR_FORMAT,
                          "%s does not record itself: it must end with INSERT INTO "
                          "schema_migrations (version, name) VALUES (%d, '%s')",
                          m->file, m->version, m->name);
        goto out;
    }
    st = kmdcadm_db_commit(db, err);
out:
    if (st != KMDC_OK)
        kmdcadm_db_rollback(db);
    PQclear(res);
    free(sql);
    return st;
}

kmdc_status
kmdcadm_db_migrate(kmdcadm_db *db, const char *sqldir, FILE *report, kmdc_err *err)
{
    const char *lockp[1] = { MIGRATE_LOCK_KEY };
    migration *list = NULL;
    size_t n = 0, i;
    int version = 0, locked = 0, applied = 0;
    kmdc_status st;

    st = migrations_list(sqldir, &list, &n, err);
    if (st != KMDC_OK)
        goto out;
    /* A session lock: a second migrator waits here until we are done, then
     * finds nothing left to do. */
    {
        PGresult *res = NULL;
        st = db_exec(db, &res, PGRES_TUPLES_OK, "SELECT pg_advisory_lock($1::bigint)",
                     1, lockp, "take the migration lock", err);
        PQclear(res);
    }
    if (st != KMDC_OK)
        goto out;
    locked = 1;
    st = kmdcadm_db_schema_version(db, &version, err);
    if (st != KMDC_OK)
        goto out;
    if ((size_t)version > n) {
        st = kmdc_err_set(err, KMDC_ERR_ARG,
                          "the database schema is at version %d, newer than the newest "
                          "migration in %s (%zu): use a newer kmdcadm", version, sqldir, n);
        goto out;
    }
    for (i = (size_t)version; i < n; i++) {
        st = migration_apply(db, sqldir, &list[i], err);
        if (st != KMDC_OK)
            goto out;
        applied++;
        if (report != NULL)
            fprintf(report, "applied %s (schema version %d)\n", list[i].file,
                    list[i].version);
    }
    if (report != NULL) {
        if (applied == 0)
            fprintf(report, "schema is up to date at version %zu\n", n);
        else
            fprintf(report, "schema is now at version %zu\n", n);
    }
out:
    if (locked) {
        PGresult *res = PQexecParams(db->conn, "SELECT pg_advisory_unlock($1::bigint)",
                                     1, NULL, lockp, NULL, NULL, 0);
        PQclear(res);   /* closing the session releases it anyway */
    }
    free(list);
    return st;
}

/* --- cards ------------------------------------------------------------------ */

kmdc_status
kmdcadm_db_card_insert(kmdcadm_db *db, const kmdcadm_new_card *c,
                       kmdcadm_conflict *conflict, kmdc_err *err)
{
    char serial[24], key_id[16], days[16];
    const char *values[8];
    int lengths[8] = { 0 };
    int formats[8] = { 0 };
    const char *state, *constraint;
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;

    *conflict = KMDCADM_CONFLICT_NONE;
    if (c->serial == 0 || c->serial > KMDC_U63_MAX || c->access_days <= 0) {
        st = kmdc_err_set(err, KMDC_ERR_ARG, "invalid card row");
        goto out;
    }
    snprintf(serial, sizeof serial, "%" PRIu64, c->serial);
    snprintf(key_id, sizeof key_id, "%" PRIu32, c->key_id);
    snprintf(days, sizeof days, "%d", c->access_days);
    values[0] = serial;
    values[1] = c->address;
    values[2] = (const char *)c->up_chain;
    lengths[2] = KMDC_WRAPPED_LEN;
    formats[2] = 1;
    values[3] = (const char *)c->down_chain;
    lengths[3] = KMDC_WRAPPED_LEN;
    formats[3] = 1;
    values[4] = (const char *)c->auth_key;
    lengths[4] = KMDC_WRAPPED_LEN;
    formats[4] = 1;
    values[5] = key_id;
    values[6] = (const char *)c->access_mac;
    lengths[6] = KMDCADM_ACCESS_MAC_LEN;
    formats[6] = 1;
    values[7] = days;
    res = PQexecParams(db->conn,
                       "INSERT INTO cards (serial, address, status, up_chain, down_chain, "
                       "auth_key, key_id, access_mac, access_expires) "
                       "VALUES ($1::bigint, $2, 'issued', $3::bytea, $4::bytea, $5::bytea, "
                       "$6::int, $7::bytea, now() + make_interval(days => $8::int))",
                       8, NULL, values, lengths, formats, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        constraint = res ? PQresultErrorField(res, PG_DIAG_CONSTRAINT_NAME) : NULL;
        if (state != NULL && strcmp(state, "23505") == 0 && constraint != NULL) {
            if (strcmp(constraint, "cards_pkey") == 0) {
                *conflict = KMDCADM_CONFLICT_SERIAL;
                st = kmdc_err_set(err, KMDC_ERR_ARG, "the drawn serial is taken");
                goto out;
            }
            if (strcmp(constraint, "cards_address_live") == 0) {
                *conflict = KMDCADM_CONFLICT_ADDRESS;
                st = kmdc_err_set(err, KMDC_ERR_ARG,
                                  "an active card for that address already exists "
                                  "(revoke it first)");
                goto out;
            }
        }
        st = db_error(db, res, "store the card", err);
        goto out;
    }
    PQclear(res);
    res = NULL;
    values[1] = key_id;
    st = db_command(db,
                    "INSERT INTO audit_log (serial, event, detail) VALUES ($1::bigint, "
                    "'card.issued', jsonb_build_object('key_id', $2::int, "
                    "'by', 'kmdcadm', 'db_user', current_user))",
                    2, values, "record the issue in the audit log", err);
out:
    PQclear(res);
    return st;
}

/* The filter's parameters: status and address, NULL for "any". */
#define LIST_WHERE \
    " WHERE ($1::text IS NULL OR status = $1) AND ($2::text IS NULL OR address = $2) "
#define TS_FMT(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"')"

kmdc_status
kmdcadm_db_card_list(kmdcadm_db *db, const kmdcadm_filter *filter, int json,
                     FILE *out, kmdc_err *err)
{
    static const char *const head[7] = {
        "SERIAL", "ADDRESS", "STATUS", "LOCKED", "UP_NEXT", "DOWN_NEXT", "CREATED"
    };
    const char *values[2];
    int width[7];
    PGresult *res = NULL;
    kmdc_status st;
    int rows, r, c;

    values[0] = filter ? filter->status : NULL;
    values[1] = filter ? filter->address : NULL;
    if (json) {
        st = db_exec(db, &res, PGRES_TUPLES_OK,
                     "SELECT coalesce(json_agg(json_build_object("
                     "'serial', lpad(to_hex(serial), 16, '0'), 'address', address, "
                     "'status', status, 'locked', locked, 'up_next', up_next, "
                     "'down_next', down_next, 'created', " TS_FMT("created_at") ") "
                     "ORDER BY created_at, serial), '[]'::json) FROM cards" LIST_WHERE,
                     2, values, "list the cards", err);
        if (st != KMDC_OK)
            goto out;
        fprintf(out, "%s\n", PQgetvalue(res, 0, 0));
        goto out;
    }
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT lpad(to_hex(serial), 16, '0'), address, status, "
                 "CASE WHEN locked THEN 'yes' ELSE 'no' END, up_next, down_next, "
                 TS_FMT("created_at") " FROM cards" LIST_WHERE
                 "ORDER BY created_at, serial",
                 2, values, "list the cards", err);
    if (st != KMDC_OK)
        goto out;
    rows = PQntuples(res);
    if (PQnfields(res) != 7) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected result shape");
        goto out;
    }
    for (c = 0; c < 7; c++) {
        width[c] = (int)strlen(head[c]);
        for (r = 0; r < rows; r++)
            if (PQgetlength(res, r, c) > width[c])
                width[c] = PQgetlength(res, r, c);
    }
    for (c = 0; c < 6; c++)
        fprintf(out, "%-*s  ", width[c], head[c]);
    fprintf(out, "%s\n", head[6]);
    for (r = 0; r < rows; r++)
        for (c = 0; c < 7; c++) {
            if (c == 6)
                fprintf(out, "%s\n", PQgetvalue(res, r, c));
            else if (c == 4 || c == 5)   /* counters right-aligned */
                fprintf(out, "%*s  ", width[c], PQgetvalue(res, r, c));
            else
                fprintf(out, "%-*s  ", width[c], PQgetvalue(res, r, c));
        }
out:
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_card_show(kmdcadm_db *db, uint64_t serial, int json, FILE *out,
                     kmdc_err *err)
{
    /* Everything but the wrapped keys and the access-code MAC. */
    static const char *const sql =
        "SELECT lpad(to_hex(c.serial), 16, '0') AS serial, c.address, c.status, "
        "c.locked, c.activation_failures, c.up_next, c.down_next, c.key_id, "
        TS_FMT("c.created_at") " AS created, "
        TS_FMT("c.updated_at") " AS updated, "
        TS_FMT("c.activated_at") " AS activated, "
        "CASE WHEN c.status = 'issued' THEN " TS_FMT("c.access_expires")
        " END AS access_code_expires, "
        "(SELECT count(*) FROM deliveries d WHERE d.recipient = c.serial "
        "   AND d.state = 'queued') AS deliveries_queued, "
        "(SELECT count(*) FROM deliveries d WHERE d.recipient = c.serial "
        "   AND d.state = 'delivered') AS deliveries_delivered, "
        "(SELECT count(*) FROM deliveries d WHERE d.recipient = c.serial "
        "   AND d.state = 'expired') AS deliveries_expired, "
        "(SELECT count(*) FROM messages m WHERE m.sender = c.serial) AS messages_sent "
        "FROM cards c WHERE c.serial = $1::bigint";
    char buf[24];
    char *query = NULL;
    const char *values[1];
    PGresult *res = NULL;
    kmdc_status st;
    int c, width = 0;
    size_t qlen;

    snprintf(buf, sizeof buf, "%" PRIu64, serial);
    values[0] = buf;
    if (json) {
        static const char *const pre = "SELECT row_to_json(s) FROM (";
        qlen = strlen(pre) + strlen(sql) + 4;
        query = malloc(qlen);
        if (query == NULL) {
            st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
            goto out;
        }
        snprintf(query, qlen, "%s%s) s", pre, sql);
    }
    st = db_exec(db, &res, PGRES_TUPLES_OK, json ? query : sql, 1, values,
                 "show the card", err);
    if (st != KMDC_OK)
        goto out;
    if (PQntuples(res) != 1) {
        char hex[17];
        kmdc_serial_format(hex, serial);
        st = kmdc_err_set(err, KMDC_ERR_NOTFOUND, "no card with serial %s", hex);
        goto out;
    }
    if (json) {
        fprintf(out, "%s\n", PQgetvalue(res, 0, 0));
        goto out;
    }
    for (c = 0; c < PQnfields(res); c++)
        if ((int)strlen(PQfname(res, c)) > width)
            width = (int)strlen(PQfname(res, c));
    for (c = 0; c < PQnfields(res); c++) {
        const char *v = PQgetisnull(res, 0, c) ? "-" : PQgetvalue(res, 0, c);
        if (strcmp(PQfname(res, c), "locked") == 0)
            v = strcmp(v, "t") == 0 ? "yes" : "no";
        fprintf(out, "%-*s  %s\n", width + 1, PQfname(res, c), v);
    }
out:
    free(query);
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_card_transition(kmdcadm_db *db, uint64_t serial, kmdcadm_action action,
                           const char *reason, char from[16], char to[16],
                           kmdc_err *err)
{
    static const char *const verbs[] = { "suspend", "resume", "revoke" };
    static const char *const events[] = { "card.suspended", "card.resumed", "card.revoked" };
    char sbuf[24], hex[17], old[16];
    const char *values[5];
    const char *next = NULL;
    PGresult *res = NULL;
    kmdc_status st;
    int activated, intrans = 0;

    if ((int)action < 0 || action > KMDCADM_REVOKE)
        return kmdc_err_set(err, KMDC_ERR_ARG, "unknown action");
    snprintf(sbuf, sizeof sbuf, "%" PRIu64, serial);
    kmdc_serial_format(hex, serial);
    values[0] = sbuf;
    st = kmdcadm_db_begin(db, err);
    if (st != KMDC_OK)
        goto out;
    intrans = 1;
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT status, activated_at IS NOT NULL FROM cards "
                 "WHERE serial = $1::bigint FOR UPDATE", 1, values, "read the card", err);
    if (st != KMDC_OK)
        goto out;
    if (PQntuples(res) != 1) {
        st = kmdc_err_set(err, KMDC_ERR_NOTFOUND, "no card with serial %s", hex);
        goto out;
    }
    first_line(old, sizeof old, PQgetvalue(res, 0, 0));
    activated = strcmp(PQgetvalue(res, 0, 1), "t") == 0;
    PQclear(res);
    res = NULL;

    if (strcmp(old, "revoked") == 0) {
        st = kmdc_err_set(err, KMDC_ERR_ARG,
                          "cannot %s card %s: it is revoked, and revocation is final",
                          verbs[action], hex);
        goto out;
    }
    switch (action) {
    case KMDCADM_SUSPEND:
        if (strcmp(old, "suspended") == 0) {
            st = kmdc_err_set(err, KMDC_ERR_ARG, "card %s is already suspended", hex);
            goto out;
        }
        next = "suspended";
        break;
    case KMDCADM_RESUME:
        if (strcmp(old, "suspended") != 0) {
            st = kmdc_err_set(err, KMDC_ERR_ARG,
                              "cannot resume card %s: it is %s, not suspended", hex, old);
            goto out;
        }
        next = activated ? "active" : "issued";
        break;
    case KMDCADM_REVOKE:
        next = "revoked";
        break;
    }
    values[1] = next;
    st = db_command(db, "UPDATE cards SET status = $2 WHERE serial = $1::bigint",
                    2, values, "change the card status", err);
    if (st != KMDC_OK)
        goto out;
    values[1] = events[action];
    values[2] = old;
    values[3] = next;
    values[4] = reason;
    st = db_command(db,
                    "INSERT INTO audit_log (serial, event, detail) VALUES ($1::bigint, $2, "
                    "jsonb_strip_nulls(jsonb_build_object('from', $3::text, 'to', $4::text, "
                    "'reason', $5::text, 'by', 'kmdcadm', 'db_user', current_user)))",
                    5, values, "record the change in the audit log", err);
    if (st != KMDC_OK)
        goto out;
    st = kmdcadm_db_commit(db, err);
    intrans = 0;
    if (st != KMDC_OK)
        goto out;
    if (from != NULL)
        first_line(from, 16, old);
    if (to != NULL)
        first_line(to, 16, next);
out:
    PQclear(res);
    if (intrans)
        kmdcadm_db_rollback(db);
    return st;
}

/* --- keys: resync and rekey -------------------------------------------------- */

/* Whether the card still holds an access code that can activate it. */
#define CODE_LIVE \
    "(access_mac IS NOT NULL AND status IN ('issued', 'suspended') AND NOT locked " \
    "AND access_expires > now())"
#define KEYS_COLUMNS \
    "SELECT serial, status, up_next, down_next, up_chain, down_chain, auth_key, " \
    "key_id, " CODE_LIVE " FROM cards "

/* Run a parameterised statement (text parameters) with binary results. */
static kmdc_status
db_exec_bin(kmdcadm_db *db, PGresult **out, const char *sql, int n,
            const char *const *values, const char *what, kmdc_err *err)
{
    PGresult *res;
    kmdc_status st;

    *out = NULL;
    res = PQexecParams(db->conn, sql, n, NULL, values, NULL, NULL, 1);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        st = db_error(db, res, what, err);
        PQclear(res);
        return st;
    }
    *out = res;
    return KMDC_OK;
}

/* A binary bigint field that must be >= 0. */
static int
get_u63(const PGresult *res, int row, int col, uint64_t *v)
{
    if (PQgetisnull(res, row, col) || PQgetlength(res, row, col) != 8)
        return 0;
    *v = kmdc_get_u64((const uint8_t *)PQgetvalue(res, row, col));
    return *v <= KMDC_U63_MAX;
}

/* Fill k from row `row` of a KEYS_COLUMNS result in binary format. */
static kmdc_status
keys_from_row(const PGresult *res, int row, kmdcadm_card_keys *k, kmdc_err *err)
{
    int len;

    memset(k, 0, sizeof *k);
    if (PQnfields(res) != 9 || !get_u63(res, row, 0, &k->serial)
        || !get_u63(res, row, 2, &k->up_next) || !get_u63(res, row, 3, &k->down_next)
        || PQgetisnull(res, row, 1) || PQgetlength(res, row, 7) != 4
        || PQgetisnull(res, row, 7) || PQgetlength(res, row, 8) != 1
        || PQgetisnull(res, row, 8))
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected card row shape");
    len = PQgetlength(res, row, 1);
    if (len <= 0 || (size_t)len >= sizeof k->status)
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected card status");
    memcpy(k->status, PQgetvalue(res, row, 1), (size_t)len);
    k->status[len] = '\0';
    if (PQgetlength(res, row, 4) != KMDC_WRAPPED_LEN
        || PQgetlength(res, row, 5) != KMDC_WRAPPED_LEN
        || PQgetlength(res, row, 6) != KMDC_WRAPPED_LEN) {
        char hex[17];
        kmdc_serial_format(hex, k->serial);
        return kmdc_err_set(err, KMDC_ERR_FORMAT,
                            "card %s: a wrapped key has the wrong length", hex);
    }
    memcpy(k->up_chain, PQgetvalue(res, row, 4), KMDC_WRAPPED_LEN);
    memcpy(k->down_chain, PQgetvalue(res, row, 5), KMDC_WRAPPED_LEN);
    memcpy(k->auth_key, PQgetvalue(res, row, 6), KMDC_WRAPPED_LEN);
    k->key_id = kmdc_get_u32((const uint8_t *)PQgetvalue(res, row, 7));
    k->code_live = PQgetvalue(res, row, 8)[0] != 0;
    return KMDC_OK;
}

kmdc_status
kmdcadm_db_card_keys_batch(kmdcadm_db *db, uint64_t after, int lock,
                           kmdcadm_card_keys *rows, size_t cap, size_t *n,
                           kmdc_err *err)
{
    char abuf[24], lbuf[24];
    const char *values[2];
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;
    int r, nt;

    *n = 0;
    if (cap == 0 || cap > 100000 || after > KMDC_U63_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "invalid batch");
    snprintf(abuf, sizeof abuf, "%" PRIu64, after);
    snprintf(lbuf, sizeof lbuf, "%zu", cap);
    values[0] = abuf;
    values[1] = lbuf;
    st = db_exec_bin(db, &res,
                     lock ? KEYS_COLUMNS "WHERE serial > $1::bigint ORDER BY serial "
                            "LIMIT $2::int FOR NO KEY UPDATE"
                          : KEYS_COLUMNS "WHERE serial > $1::bigint ORDER BY serial "
                            "LIMIT $2::int",
                     2, values, "read the cards", err);
    if (st != KMDC_OK)
        goto out;
    nt = PQntuples(res);
    if (nt < 0 || (size_t)nt > cap) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected number of rows");
        goto out;
    }
    for (r = 0; r < nt; r++) {
        st = keys_from_row(res, r, &rows[r], err);
        if (st != KMDC_OK)
            goto out;
    }
    *n = (size_t)nt;
out:
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_card_keys_lock(kmdcadm_db *db, uint64_t serial, kmdcadm_card_keys *out,
                          kmdc_err *err)
{
    char sbuf[24], hex[17];
    const char *values[1];
    PGresult *res = NULL;
    kmdc_status st;

    snprintf(sbuf, sizeof sbuf, "%" PRIu64, serial);
    values[0] = sbuf;
    st = db_exec_bin(db, &res, KEYS_COLUMNS "WHERE serial = $1::bigint FOR NO KEY UPDATE",
                     1, values, "read the card", err);
    if (st != KMDC_OK)
        goto out;
    if (PQntuples(res) != 1) {
        kmdc_serial_format(hex, serial);
        st = kmdc_err_set(err, KMDC_ERR_NOTFOUND, "no card with serial %s", hex);
        goto out;
    }
    st = keys_from_row(res, 0, out, err);
out:
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_card_keys_store(kmdcadm_db *db, const kmdcadm_card_keys *c, kmdc_err *err)
{
    char serial[24], up[24], down[24], key_id[16];
    const char *values[7];
    int lengths[7] = { 0 };
    int formats[7] = { 0 };
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;

    if (c->serial == 0 || c->serial > KMDC_U63_MAX || c->up_next > KMDC_U63_MAX
        || c->down_next > KMDC_U63_MAX || c->key_id > INT32_MAX)
        return kmdc_err_set(err, KMDC_ERR_ARG, "invalid card keys");
    snprintf(serial, sizeof serial, "%" PRIu64, c->serial);
    snprintf(up, sizeof up, "%" PRIu64, c->up_next);
    snprintf(down, sizeof down, "%" PRIu64, c->down_next);
    snprintf(key_id, sizeof key_id, "%" PRIu32, c->key_id);
    values[0] = serial;
    values[1] = up;
    values[2] = down;
    values[3] = (const char *)c->up_chain;
    values[4] = (const char *)c->down_chain;
    values[5] = (const char *)c->auth_key;
    values[6] = key_id;
    lengths[3] = lengths[4] = lengths[5] = KMDC_WRAPPED_LEN;
    formats[3] = formats[4] = formats[5] = 1;
    res = PQexecParams(db->conn,
                       "UPDATE cards SET up_next = $2::bigint, down_next = $3::bigint, "
                       "up_chain = $4::bytea, down_chain = $5::bytea, auth_key = $6::bytea, "
                       "key_id = $7::int WHERE serial = $1::bigint",
                       7, NULL, values, lengths, formats, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
        st = db_error(db, res, "store the card's keys", err);
        goto out;
    }
    if (strcmp(PQcmdTuples(res), "1") != 0)
        st = kmdc_err_set(err, KMDC_ERR_NOTFOUND, "the card row is gone");
out:
    PQclear(res);
    return st;
}

kmdc_status
kmdcadm_db_audit_resync(kmdcadm_db *db, uint64_t serial, const char *chain,
                        uint64_t from, uint64_t to, kmdc_err *err)
{
    char sbuf[24], fbuf[24], tbuf[24];
    const char *values[4];

    snprintf(sbuf, sizeof sbuf, "%" PRIu64, serial);
    snprintf(fbuf, sizeof fbuf, "%" PRIu64, from);
    snprintf(tbuf, sizeof tbuf, "%" PRIu64, to);
    values[0] = sbuf;
    values[1] = chain;
    values[2] = fbuf;
    values[3] = tbuf;
    return db_command(db,
                      "INSERT INTO audit_log (serial, event, detail) VALUES ($1::bigint, "
                      "'card.resynced', jsonb_build_object('chain', $2::text, "
                      "'from', $3::bigint, 'to', $4::bigint, 'by', 'kmdcadm', "
                      "'db_user', current_user))",
                      4, values, "record the resync in the audit log", err);
}

kmdc_status
kmdcadm_db_audit_rekey(kmdcadm_db *db, uint32_t key_id, uint64_t cards,
                       uint64_t nvalues, kmdc_err *err)
{
    char kbuf[16], cbuf[24], vbuf[24];
    const char *values[3];

    snprintf(kbuf, sizeof kbuf, "%" PRIu32, key_id);
    snprintf(cbuf, sizeof cbuf, "%" PRIu64, cards);
    snprintf(vbuf, sizeof vbuf, "%" PRIu64, nvalues);
    values[0] = kbuf;
    values[1] = cbuf;
    values[2] = vbuf;
    return db_command(db,
                      "INSERT INTO audit_log (event, detail) VALUES ('master.rekeyed', "
                      "jsonb_build_object('key_id', $1::bigint, 'cards', $2::bigint, "
                      "'values', $3::bigint, 'by', 'kmdcadm', 'db_user', current_user))",
                      3, values, "record the rekey in the audit log", err);
}

kmdc_status
kmdcadm_db_live_codes(kmdcadm_db *db, uint32_t newest, kmdcadm_code_use *out,
                      size_t cap, size_t *n, kmdc_err *err)
{
    char kbuf[16];
    const char *values[1];
    PGresult *res = NULL;
    kmdc_status st;
    int r, nt;

    *n = 0;
    snprintf(kbuf, sizeof kbuf, "%" PRIu32, newest);
    values[0] = kbuf;
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT key_id, count(*), " TS_FMT("max(access_expires)")
                 " FROM cards WHERE " CODE_LIVE " AND key_id <> $1::bigint "
                 "GROUP BY key_id ORDER BY key_id",
                 1, values, "look for access codes under older keys", err);
    if (st != KMDC_OK)
        goto out;
    nt = PQntuples(res);
    for (r = 0; r < nt && (size_t)r < cap; r++) {
        out[r].key_id = (uint32_t)strtoul(PQgetvalue(res, r, 0), NULL, 10);
        out[r].cards = strtoull(PQgetvalue(res, r, 1), NULL, 10);
        first_line(out[r].latest_expiry, sizeof out[r].latest_expiry,
                   PQgetvalue(res, r, 2));
    }
    *n = (size_t)r;
out:
    PQclear(res);
    return st;
}

/* --- purge ---------------------------------------------------------------------- */

/*
 * Parameters of every purge statement: $1 receipt age, $2 tombstone age,
 * $3 upload age, $4 nonce age (seconds).  Each DELETE/UPDATE works on one
 * batch of rows locked with SKIP LOCKED and is repeated until it finds
 * nothing.
 */
#define AGO(p) "(now() - " p "::bigint * interval '1 second')"
/* Every purge statement declares the four parameters, used or not. */
static const Oid purge_types[4] = { 20, 20, 20, 20 };   /* int8 */
#define PURGE_BATCH "500"

typedef struct purge_kind {
    const char *name;         /* for messages and the audit detail */
    const char *run;          /* one batch; its row count is added */
    const char *count;        /* dry run: what a run now would remove */
    int repeatable_read;      /* run under REPEATABLE READ (see orphans) */
} purge_kind;

static const purge_kind purge_kinds[] = {
    /* (a) queued deliveries past their expiry become tombstones */
    { "expired",
      "UPDATE deliveries SET state = 'expired', head = NULL WHERE state = 'queued' "
      "AND id IN (SELECT id FROM deliveries WHERE state = 'queued' "
      "AND expires_at <= now() ORDER BY id LIMIT " PURGE_BATCH " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM deliveries WHERE state = 'queued' AND expires_at <= now()",
      0 },
    /* (b) the payload of a message none of whose deliveries is queued; the
     * message row is locked first, as the module's acknowledgement does */
    { "uploads",
      "WITH m AS (SELECT id, upload_id FROM messages mm WHERE upload_id IS NOT NULL "
      "AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = mm.id "
      "AND d.state = 'queued') ORDER BY id LIMIT 100 FOR NO KEY UPDATE SKIP LOCKED) "
      "DELETE FROM uploads u USING m WHERE u.id = m.upload_id",
      "SELECT count(*) FROM messages m JOIN uploads u ON u.id = m.upload_id "
      "WHERE NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id "
      "AND d.state = 'queued' AND d.expires_at > now())",
      0 },
    /* (b') uploads no message references whose last batch is older than the
     * longest intake (touched_at moves with every batch, so an upload still
     * streaming is never taken for an orphan).
     * REPEATABLE READ: should an intake publish a message referencing one of
     * them after our snapshot, the ON DELETE SET NULL would otherwise strip
     * that new message of its payload; under REPEATABLE READ it fails with a
     * serialization error instead, and the batch is retried. */
    { "orphans",
      "DELETE FROM uploads WHERE id IN (SELECT u.id FROM uploads u "
      "WHERE u.touched_at < " AGO("$3") " AND NOT EXISTS (SELECT 1 FROM messages m "
      "WHERE m.upload_id = u.id) ORDER BY u.id LIMIT 100 FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM uploads u WHERE u.touched_at < " AGO("$3")
      " AND NOT EXISTS (SELECT 1 FROM messages m WHERE m.upload_id = u.id)",
      1 },
    /* (c) receipts past the retry horizon */
    { "receipts",
      "DELETE FROM receipts WHERE (serial, seq) IN (SELECT serial, seq FROM receipts "
      "WHERE created_at < " AGO("$1") " ORDER BY created_at LIMIT " PURGE_BATCH
      " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM receipts WHERE created_at < " AGO("$1"),
      0 },
    /* (d) request nonces past the replay horizon */
    { "nonces",
      "DELETE FROM request_nonces WHERE (serial, nonce) IN (SELECT serial, nonce "
      "FROM request_nonces WHERE seen_at < " AGO("$4") " ORDER BY seen_at LIMIT "
      PURGE_BATCH " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM request_nonces WHERE seen_at < " AGO("$4"),
      0 },
    /* (e) old tombstones: delivered (counted from the acknowledgement) or
     * expired (from the expiry) */
    { "tombstones",
      "DELETE FROM deliveries WHERE state <> 'queued' AND id IN (SELECT id "
      "FROM deliveries WHERE state <> 'queued' AND coalesce(acked_at, expires_at) < "
      AGO("$2") " ORDER BY id LIMIT " PURGE_BATCH " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM deliveries WHERE (state <> 'queued' OR expires_at <= now()) "
      "AND coalesce(acked_at, expires_at) < " AGO("$2"),
      0 },
    /* (e') messages no delivery and no receipt references any more */
    { "messages",
      "DELETE FROM messages WHERE id IN (SELECT m.id FROM messages m "
      "WHERE m.created_at < " AGO("$2") " AND NOT EXISTS (SELECT 1 FROM deliveries d "
      "WHERE d.message_id = m.id) AND NOT EXISTS (SELECT 1 FROM receipts r "
      "WHERE r.message_id = m.id) ORDER BY m.id LIMIT " PURGE_BATCH
      " FOR UPDATE SKIP LOCKED)",
      "SELECT count(*) FROM messages m WHERE m.created_at < " AGO("$2")
      " AND NOT EXISTS (SELECT 1 FROM deliveries d WHERE d.message_id = m.id "
      "AND NOT ((d.state <> 'queued' OR d.expires_at <= now()) "
      "AND coalesce(d.acked_at, d.expires_at) < " AGO("$2") ")) "
      "AND NOT EXISTS (SELECT 1 FROM receipts r WHERE r.message_id = m.id "
      "AND r.created_at >= " AGO("$1") ")",
      0 },
};

/* How many times a batch is retried after a serialization failure or a
 * deadlock before purge gives up. */
#define PURGE_RETRIES 5

/* Is res a serialization failure or a deadlock (worth a retry)? */
static int
retryable(const PGresult *res)
{
    const char *state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;

    return state != NULL && (strcmp(state, "40001") == 0 || strcmp(state, "40P01") == 0);
}

/* Run one kind's batches until a batch finds nothing; add the rows to *total. */
static kmdc_status
purge_run_kind(kmdcadm_db *db, const purge_kind *k, const char *const *params,
               uint64_t *total, kmdc_err *err)
{
    char what[64];
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;
    unsigned long long rows;
    int retries = 0, intrans = 0;

    snprintf(what, sizeof what, "purge %s", k->name);
    for (;;) {
        if (k->repeatable_read) {
            st = db_command(db, "BEGIN ISOLATION LEVEL REPEATABLE READ", 0, NULL, what, err);
            if (st != KMDC_OK)
                goto out;
            intrans = 1;
        }
        res = PQexecParams(db->conn, k->run, 4, purge_types, params, NULL, NULL, 0);
        if (res == NULL || PQresultStatus(res) != PGRES_COMMAND_OK) {
            if (retryable(res) && retries < PURGE_RETRIES) {
                retries++;
                PQclear(res);
                res = NULL;
                kmdcadm_db_rollback(db);
                intrans = 0;
                continue;
            }
            st = db_error(db, res, what, err);
            goto out;
        }
        rows = strtoull(PQcmdTuples(res), NULL, 10);
        PQclear(res);
        res = NULL;
        if (intrans) {
            st = kmdcadm_db_commit(db, err);
            intrans = 0;
            if (st != KMDC_OK)
                goto out;
        }
        *total += rows;
        if (rows == 0)
            break;
        retries = 0;
    }
out:
    PQclear(res);
    if (intrans)
        kmdcadm_db_rollback(db);
    return st;
}

kmdc_status
kmdcadm_db_purge(kmdcadm_db *db, const kmdcadm_purge_opts *opts,
                 kmdcadm_purge_counts *counts, kmdc_err *err)
{
    char ages[4][24];
    const char *params[4];
    uint64_t *slot[7];
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;
    uint64_t sum = 0;
    size_t i;

    memset(counts, 0, sizeof *counts);
    if (opts->receipt_age < 0 || opts->tombstone_age < 0 || opts->upload_age < 0
        || opts->nonce_age < 0)
        return kmdc_err_set(err, KMDC_ERR_ARG, "purge ages must not be negative");
    snprintf(ages[0], sizeof ages[0], "%" PRId64, opts->receipt_age);
    snprintf(ages[1], sizeof ages[1], "%" PRId64, opts->tombstone_age);
    snprintf(ages[2], sizeof ages[2], "%" PRId64, opts->upload_age);
    snprintf(ages[3], sizeof ages[3], "%" PRId64, opts->nonce_age);
    for (i = 0; i < 4; i++)
        params[i] = ages[i];
    slot[0] = &counts->expired;
    slot[1] = &counts->uploads;
    slot[2] = &counts->orphans;
    slot[3] = &counts->receipts;
    slot[4] = &counts->nonces;
    slot[5] = &counts->tombstones;
    slot[6] = &counts->messages;
    for (i = 0; i < sizeof purge_kinds / sizeof purge_kinds[0]; i++) {
        if (opts->dry_run) {
            char what[64];
            snprintf(what, sizeof what, "count %s", purge_kinds[i].name);
            res = PQexecParams(db->conn, purge_kinds[i].count, 4, purge_types, params,
                               NULL, NULL, 0);
            if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
                st = db_error(db, res, what, err);
                goto out;
            }
            if (PQntuples(res) != 1) {
                st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected count result");
                goto out;
            }
            *slot[i] = strtoull(PQgetvalue(res, 0, 0), NULL, 10);
            PQclear(res);
            res = NULL;
        } else {
            st = purge_run_kind(db, &purge_kinds[i], params, slot[i], err);
            if (st != KMDC_OK)
                goto out;
        }
        sum += *slot[i];
    }
    if (!opts->dry_run && sum > 0) {
        char c[7][24];
        const char *values[7];
        for (i = 0; i < 7; i++) {
            snprintf(c[i], sizeof c[i], "%" PRIu64, *slot[i]);
            values[i] = c[i];
        }
        st = db_command(db,
                        "INSERT INTO audit_log (event, detail) VALUES ('db.purged', "
                        "jsonb_build_object('expired', $1::bigint, 'uploads', $2::bigint, "
                        "'orphans', $3::bigint, 'receipts', $4::bigint, "
                        "'nonces', $5::bigint, 'tombstones', $6::bigint, "
                        "'messages', $7::bigint, 'by', 'kmdcadm', "
                        "'db_user', current_user))",
                        7, values, "record the purge in the audit log", err);
    }
out:
    PQclear(res);
    return st;
}

/* --- audit ------------------------------------------------------------------------ */

#define AUDIT_ROWS \
    "SELECT id, at, " TS_FMT("at") " AS at_text, " \
    "CASE WHEN serial IS NULL THEN NULL ELSE lpad(to_hex(serial), 16, '0') END " \
    "AS serial_hex, event, detail FROM audit_log " \
    "WHERE ($1::bigint IS NULL OR serial = $1::bigint) " \
    "AND ($2::timestamptz IS NULL OR at >= $2::timestamptz) " \
    "AND ($3::bigint IS NULL OR at >= " AGO("$3") ") " \
    "ORDER BY at DESC, id DESC LIMIT $4::bigint"

kmdc_status
kmdcadm_db_audit_print(kmdcadm_db *db, const kmdcadm_audit_query *q, FILE *out,
                       kmdc_err *err)
{
    static const char *const head[3] = { "AT", "SERIAL", "EVENT" };
    char sbuf[24], secs[24], lim[24];
    const char *values[4];
    const char *state;
    PGresult *res = NULL;
    kmdc_status st = KMDC_OK;
    int width[3], rows, r, c;

    values[0] = NULL;
    values[1] = q->since;
    values[2] = NULL;
    values[3] = NULL;
    if (q->serial != 0) {
        snprintf(sbuf, sizeof sbuf, "%" PRIu64, q->serial);
        values[0] = sbuf;
    }
    if (q->since_secs >= 0) {
        snprintf(secs, sizeof secs, "%" PRId64, q->since_secs);
        values[2] = secs;
    }
    if (q->limit > 0) {
        snprintf(lim, sizeof lim, "%" PRId64, q->limit);
        values[3] = lim;
    }
    res = PQexecParams(db->conn,
                       q->json
                       ? "SELECT coalesce(json_agg(json_build_object('id', id, "
                         "'at', at_text, 'serial', serial_hex, 'event', event, "
                         "'detail', detail) ORDER BY at DESC, id DESC), '[]'::json) "
                         "FROM (" AUDIT_ROWS ") s"
                       : "SELECT at_text, coalesce(serial_hex, '-'), event, "
                         "coalesce(detail::text, '{}') FROM (" AUDIT_ROWS ") s "
                         "ORDER BY at DESC, id DESC",
                       4, NULL, values, NULL, NULL, 0);
    if (res == NULL || PQresultStatus(res) != PGRES_TUPLES_OK) {
        state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
        if (state != NULL && strncmp(state, "22", 2) == 0 && q->since != NULL)
            st = kmdc_err_set(err, KMDC_ERR_FORMAT,
                              "--since: not a time (use e.g. 2024-05-01, "
                              "'2024-05-01 12:00:00+00' or a duration such as 2h)");
        else
            st = db_error(db, res, "read the audit log", err);
        goto out;
    }
    if (q->json) {
        fprintf(out, "%s\n", PQgetvalue(res, 0, 0));
        goto out;
    }
    rows = PQntuples(res);
    if (PQnfields(res) != 4) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "unexpected result shape");
        goto out;
    }
    for (c = 0; c < 3; c++) {
        width[c] = (int)strlen(head[c]);
        for (r = 0; r < rows; r++)
            if (PQgetlength(res, r, c) > width[c])
                width[c] = PQgetlength(res, r, c);
    }
    fprintf(out, "%-*s  %-*s  %-*s  DETAIL\n", width[0], head[0], width[1], head[1],
            width[2], head[2]);
    for (r = 0; r < rows; r++)
        fprintf(out, "%-*s  %-*s  %-*s  %s\n", width[0], PQgetvalue(res, r, 0),
                width[1], PQgetvalue(res, r, 1), width[2], PQgetvalue(res, r, 2),
                PQgetvalue(res, r, 3));
out:
    PQclear(res);
    return st;
}

/* --- key ids in use ---------------------------------------------------------------- */

#define WRAP_ID(col) \
    "((get_byte(" col ", 0)::bigint << 24) | (get_byte(" col ", 1) << 16) " \
    "| (get_byte(" col ", 2) << 8) | get_byte(" col ", 3))"

kmdc_status
kmdcadm_db_key_ids(kmdcadm_db *db, kmdcadm_key_use *out, size_t cap, size_t *n,
                   int *more, kmdc_err *err)
{
    PGresult *res = NULL;
    kmdc_status st;
    int r, nt;

    *n = 0;
    *more = 0;
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT id, count(*) FROM ("
                 "SELECT " WRAP_ID("up_chain") " AS id FROM cards UNION ALL "
                 "SELECT " WRAP_ID("down_chain") " FROM cards UNION ALL "
                 "SELECT " WRAP_ID("auth_key") " FROM cards) s GROUP BY id ORDER BY id",
                 0, NULL, "count the master key ids in use", err);
    if (st != KMDC_OK)
        goto out;
    nt = PQntuples(res);
    for (r = 0; r < nt && (size_t)r < cap; r++) {
        out[r].key_id = (uint32_t)strtoul(PQgetvalue(res, r, 0), NULL, 10);
        out[r].values = strtoull(PQgetvalue(res, r, 1), NULL, 10);
    }
    *n = (size_t)r;
    *more = nt > r;
out:
    PQclear(res);
    return st;
}
