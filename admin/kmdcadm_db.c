/*
 * kmdcadm_db.c - the PostgreSQL side of kmdcadm (see kmdcadm_db.h): the
 * error mapping and statement helpers every kmdcadm_db*.c uses
 * (kmdcadm_db_int.h), connecting, transactions, the schema version and the
 * migrations.  The card queries are in kmdcadm_db_cards.c, purge and the
 * audit log in kmdcadm_db_maint.c.
 *
 * Parameterised SQL only, through lib/kmdc_pq's parameter lists (integers
 * and bytea in binary) and its column readers, SQLSTATE helpers and schema
 * version query; pq_run is the one statement runner (setup's too).
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
#include "kmdcadm_db_int.h"

/* pg_advisory_lock key of the migrator: "kmdc" || u32 1. */
#define MIGRATE_LOCK_KEY INT64_C(7740953710884290561)
/* The largest migration file read (a schema file is a few KiB). */
#define MIGRATION_MAX_BYTES (4u << 20)
/* The most migration files considered. */
#define MIGRATION_MAX_FILES 999

/* --- errors ------------------------------------------------------------- */

/* Copy the first line of s (without its newline) into buf. */
void
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
conn_error(PGconn *conn, const PGresult *res, const char *what, kmdc_err *err)
{
    const char *state = kmdc_db_sqlstate(res);
    const char *primary = res ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY) : NULL;
    char line[200];

    first_line(line, sizeof line, primary ? primary : PQerrorMessage(conn));
    if (PQstatus(conn) == CONNECTION_BAD || state[0] == '\0'
        || kmdc_db_sqlstate_is(res, "08") || kmdc_db_sqlstate_is(res, "57P")
        || kmdc_db_sqlstate_is(res, "53"))
        return kmdc_err_set(err, KMDC_ERR_IO,
                            "could not %s: database unavailable: %s", what, line);
    if (kmdc_db_sqlstate_is(res, "23"))
        return kmdc_err_set(err, KMDC_ERR_ARG, "could not %s: %s (SQLSTATE %s)",
                            what, line, state);
    return kmdc_err_set(err, KMDC_ERR_INTERNAL, "could not %s: %s (SQLSTATE %s)",
                        what, line, state);
}

kmdc_status
db_error(kmdcadm_db *db, const PGresult *res, const char *what, kmdc_err *err)
{
    return conn_error(db->conn, res, what, err);
}

/* The one statement runner of kmdcadm (the store and setup both use it). */
kmdc_status
pq_run(PGconn *conn, PGresult **out, ExecStatusType want, const char *sql,
       const kmdc_db_params *pp, int format, pq_fail_fn fail, const char *what,
       kmdc_err *err)
{
    PGresult *res;
    kmdc_status st = KMDC_OK;

    if (pp != NULL && pp->overflow) {
        res = NULL;
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "could not %s: bad parameters", what);
        goto out;
    }
    res = PQexecParams(conn, sql, pp ? pp->n : 0, NULL, pp ? pp->values : NULL,
                       pp ? pp->lengths : NULL, pp ? pp->formats : NULL, format);
    if (res == NULL || PQresultStatus(res) != want) {
        st = fail(conn, res, what, err);
        PQclear(res);
        res = NULL;
    }
out:
    if (out != NULL)
        *out = res;
    else
        PQclear(res);
    return st;
}

kmdc_status
db_exec(kmdcadm_db *db, PGresult **out, ExecStatusType want, const char *sql,
        const kmdc_db_params *pp, const char *what, kmdc_err *err)
{
    return pq_run(db->conn, out, want, sql, pp, 0, conn_error, what, err);
}

kmdc_status
db_exec_bin(kmdcadm_db *db, PGresult **out, const char *sql,
            const kmdc_db_params *pp, const char *what, kmdc_err *err)
{
    return pq_run(db->conn, out, PGRES_TUPLES_OK, sql, pp, 1, conn_error, what, err);
}

/* A statement whose result is not needed. */
kmdc_status
db_command(kmdcadm_db *db, const char *sql, const kmdc_db_params *pp,
           const char *what, kmdc_err *err)
{
    return pq_run(db->conn, NULL, PGRES_COMMAND_OK, sql, pp, 0, conn_error, what, err);
}

/* --- connection --------------------------------------------------------- */

kmdc_status
pq_connect(PGconn **out, const char *conninfo, const char *dbname, kmdc_err *err)
{
    const char *keys[4];
    const char *vals[4];
    char line[200];
    int n = 0;

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
    *out = PQconnectdbParams(keys, vals, 1);
    if (*out == NULL)
        return kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
    if (PQstatus(*out) != CONNECTION_OK) {
        first_line(line, sizeof line, PQerrorMessage(*out));
        return kmdc_err_set(err, KMDC_ERR_IO, "database unavailable: %s", line);
    }
    return KMDC_OK;
}

/* Connect (pq_connect) and act as role when not NULL (SET ROLE). */
static kmdc_status
db_connect(kmdcadm_db **out, const char *conninfo, const char *dbname, const char *role,
           kmdc_err *err)
{
    kmdcadm_db *db = NULL;
    kmdc_status st = KMDC_OK;
    char *q = NULL;
    char sql[200];

    *out = NULL;
    db = calloc(1, sizeof *db);
    if (db == NULL) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        goto out;
    }
    st = pq_connect(&db->conn, conninfo, dbname, err);
    if (st != KMDC_OK)
        goto out;
    st = db_command(db, "SET client_min_messages = warning", NULL,
                    "configure the session", err);
    if (st != KMDC_OK)
        goto out;
    if (role != NULL) {
        q = PQescapeIdentifier(db->conn, role, strlen(role));
        if (q == NULL || snprintf(sql, sizeof sql, "SET ROLE %s", q) >= (int)sizeof sql) {
            st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "a role name is too long");
            goto out;
        }
        st = db_command(db, sql, NULL, "act as the owner role", err);
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
    return db_command(db, "BEGIN", NULL, "start a transaction", err);
}

kmdc_status
kmdcadm_db_commit(kmdcadm_db *db, kmdc_err *err)
{
    return db_command(db, "COMMIT", NULL, "commit", err);
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
    kmdc_status st = KMDC_OK;

    /* lib's one query; outside a transaction, as every caller runs it */
    if (kmdc_db_schema_version(db->conn, version, &res) == KMDC_PQ_OK)
        goto out;
    if (res == NULL && PQstatus(db->conn) == CONNECTION_OK)
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL,
                          "could not read the schema version: not a version");
    else
        st = db_error(db, res, "read the schema version", err);
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
    if (version < KMDC_SCHEMA_VERSION)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "the database schema is at version %d, this kmdcadm needs %d: "
                            "run 'kmdcadm migrate'", version, KMDC_SCHEMA_VERSION);
    if (version > KMDC_SCHEMA_VERSION)
        return kmdc_err_set(err, KMDC_ERR_ARG,
                            "the database schema is at version %d, newer than this "
                            "kmdcadm (%d): use a newer kmdcadm", version,
                            KMDC_SCHEMA_VERSION);
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
    char what[300];
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_status st;

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
    kmdc_db_params_init(&pp);
    kmdc_db_param_int4(&pp, m->version);
    kmdc_db_param_text(&pp, m->name);
    st = db_exec(db, &res, PGRES_TUPLES_OK,
                 "SELECT 1 FROM schema_migrations WHERE version = $1::int AND name = $2",
                 &pp, what, err);
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
    kmdc_db_params lockp;
    migration *list = NULL;
    size_t n = 0, i;
    int version = 0, locked = 0, applied = 0;
    kmdc_status st;

    kmdc_db_params_init(&lockp);
    kmdc_db_param_int8(&lockp, MIGRATE_LOCK_KEY);
    st = migrations_list(sqldir, &list, &n, err);
    if (st != KMDC_OK)
        goto out;
    /* A session lock: a second migrator waits here until we are done, then
     * finds nothing left to do. */
    {
        PGresult *res = NULL;
        st = db_exec(db, &res, PGRES_TUPLES_OK, "SELECT pg_advisory_lock($1::bigint)",
                     &lockp, "take the migration lock", err);
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
                                     lockp.n, NULL, lockp.values, lockp.lengths,
                                     lockp.formats, 0);
        PQclear(res);   /* closing the session releases it anyway */
    }
    free(list);
    return st;
}
