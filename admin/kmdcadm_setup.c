/*
 * kmdcadm_setup.c - the database side of `kmdcadm setup` (see kmdcadm_db.h):
 * on a connection as a PostgreSQL superuser, the two roles, the database,
 * its privileges, the schema (migrated as the owner role, so that the owner
 * owns every table) and the least-privilege grants of docs/ADMIN.md section
 * 2 for the httpd role; optionally the peer-authentication lines of pg_hba.conf
 * and pg_ident.conf.  Every step looks first and changes only what is
 * missing, so running it again changes nothing.
 *
 * Names (roles, database) are validated to [a-z_][a-z0-9_]{0,62} and still
 * quoted with PQescapeIdentifier; values travel as parameters.
 */
#include "config.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "kmdc_file.h"
#include "kmdc_util.h"
#include "kmdcadm_db.h"
#include "kmdcadm_db_int.h"

/* The grants of docs/ADMIN.md section 2 ("Grants for the module"), each
 * followed by " TO <the httpd role>".  t/kmdcadm_ops.sh checks them by connecting as that
 * role; t/docs.sh checks that ADMIN.md shows the same list. */
static const char *const httpd_grants[] = {
    "GRANT SELECT ON schema_migrations",
    "GRANT SELECT, UPDATE (status, locked, activation_failures, access_mac, "
    "access_expires, activated_at, key_id, up_next, up_chain, down_next, down_chain, "
    "auth_key, queued_count, queued_bytes) ON cards",
    "GRANT SELECT, INSERT, UPDATE (touched_at), DELETE ON uploads",
    "GRANT SELECT, INSERT, UPDATE, DELETE ON upload_leases",
    "GRANT SELECT, INSERT ON upload_chunks",
    "GRANT SELECT, INSERT, UPDATE (payload) ON messages",
    "GRANT SELECT, INSERT, UPDATE (state, head, acked_at) ON deliveries",
    "GRANT SELECT, INSERT ON receipts",
    "GRANT INSERT ON request_nonces",
    "GRANT INSERT ON audit_log",
    "GRANT SELECT, INSERT, UPDATE ON mailbox_watchers",
    "GRANT USAGE ON SEQUENCE uploads_id_seq, deliveries_id_seq, audit_log_id_seq",
};

int
kmdcadm_setup_name_valid(const char *name)
{
    size_t i, n = name != NULL ? strlen(name) : 0;

    if (n == 0 || n > 63 || !((name[0] >= 'a' && name[0] <= 'z') || name[0] == '_'))
        return 0;
    for (i = 1; i < n; i++)
        if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9')
              || name[i] == '_'))
            return 0;
    return 1;
}

void
kmdcadm_setup_print_grants(FILE *out, const char *httpd_role)
{
    size_t i;

    for (i = 0; i < sizeof httpd_grants / sizeof httpd_grants[0]; i++)
        fprintf(out, "%s TO %s;\n", httpd_grants[i], httpd_role);
}

static kmdc_status
failed(PGconn *c, const PGresult *res, const char *what, kmdc_err *err)
{
    const char *state = kmdc_db_sqlstate(res);   /* "" when there is none */
    const char *primary = res != NULL ? PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY)
                                      : NULL;
    char line[240];

    first_line(line, sizeof line, primary != NULL ? primary : PQerrorMessage(c));
    return kmdc_err_set(err, PQstatus(c) == CONNECTION_BAD ? KMDC_ERR_IO : KMDC_ERR_INTERNAL,
                        "could not %s: %s%s%s%s", what, line, state[0] ? " (SQLSTATE " : "",
                        state, state[0] ? ")" : "");
}

/* Run sql (parameters pp, may be NULL) expecting want; *out the result (or
 * NULL); out NULL: cleared.  kmdcadm's one statement runner, setup's messages. */
static kmdc_status
run(PGconn *c, PGresult **out, ExecStatusType want, const char *sql,
    const kmdc_db_params *pp, const char *what, kmdc_err *err)
{
    return pq_run(c, out, want, sql, pp, 0, failed, what, err);
}

/* Copy tmpl into buf (cap bytes) with its first "%s" replaced by a and its
 * second by b; 0 when it does not fit. */
static int
fill(char *buf, size_t cap, const char *tmpl, const char *a, const char *b)
{
    const char *sub[2] = { a, b };
    size_t n = 0, k;
    int used = 0;

    while (*tmpl != '\0') {
        if (tmpl[0] == '%' && tmpl[1] == 's' && used < 2) {
            const char *v = sub[used++];

            for (k = 0; v[k] != '\0'; k++) {
                if (n + 1 >= cap)
                    return 0;
                buf[n++] = v[k];
            }
            tmpl += 2;
            continue;
        }
        if (n + 1 >= cap)
            return 0;
        buf[n++] = *tmpl++;
    }
    buf[n] = '\0';
    return 1;
}

/* A statement built from fmt with the quoted identifiers a, b (may be
 * unused), run for its success. */
static kmdc_status
command(PGconn *c, const char *fmt, const char *a, const char *b, const char *what,
        kmdc_err *err)
{
    char *qa = a != NULL ? PQescapeIdentifier(c, a, strlen(a)) : NULL;
    char *qb = b != NULL ? PQescapeIdentifier(c, b, strlen(b)) : NULL;
    char sql[1024];
    kmdc_status st;

    if ((a != NULL && qa == NULL) || (b != NULL && qb == NULL)) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "could not %s: out of memory", what);
        goto out;
    }
    if (!fill(sql, sizeof sql, fmt, qa != NULL ? qa : "", qb != NULL ? qb : "")) {
        st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "could not %s: statement too long", what);
        goto out;
    }
    st = run(c, NULL, PGRES_COMMAND_OK, sql, NULL, what, err);
out:
    PQfreemem(qa);
    PQfreemem(qb);
    return st;
}

/* Connect (kmdcadm_db.c's pq_connect) and quieten the session. */
static kmdc_status
connect_to(PGconn **out, const char *conninfo, const char *dbname, kmdc_err *err)
{
    kmdc_status st = pq_connect(out, conninfo, dbname, err);

    if (st != KMDC_OK)
        return st;
    return run(*out, NULL, PGRES_COMMAND_OK, "SET client_min_messages = warning", NULL,
               "configure the session", err);
}

/* The role: created when missing; never a superuser. */
static kmdc_status
ensure_role(PGconn *c, const char *role, FILE *report, kmdc_err *err)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_status st;

    kmdc_db_params_init(&pp);
    kmdc_db_param_text(&pp, role);
    st = run(c, &res, PGRES_TUPLES_OK,
             "SELECT rolsuper, rolcanlogin FROM pg_roles WHERE rolname = $1", &pp,
             "look up a role", err);
    if (st != KMDC_OK)
        return st;
    if (PQntuples(res) == 1) {
        int super = 0, login = 0;
        int ok = kmdc_db_get_bool(res, 0, 0, &super) && kmdc_db_get_bool(res, 0, 1, &login);

        PQclear(res);
        if (!ok)
            return kmdc_err_set(err, KMDC_ERR_INTERNAL,
                                "could not look up a role: unexpected row");
        if (super)
            return kmdc_err_set(err, KMDC_ERR_ARG, "role %s exists and is a superuser; "
                                "least privilege needs a plain role (choose another "
                                "name)", role);
        if (!login) {
            st = command(c, "ALTER ROLE %s LOGIN", role, NULL, "let a role log in", err);
            if (st == KMDC_OK)
                fprintf(report, "role %s: existed, may now log in\n", role);
            return st;
        }
        fprintf(report, "role %s: exists\n", role);
        return KMDC_OK;
    }
    PQclear(res);
    st = command(c, "CREATE ROLE %s LOGIN", role, NULL, "create a role", err);
    if (st == KMDC_OK)
        fprintf(report, "role %s: created (LOGIN, no superuser, no password)\n", role);
    return st;
}

/* The database: created owned by owner when missing; an existing one must
 * belong to owner. */
static kmdc_status
ensure_database(PGconn *c, const char *dbname, const char *owner, FILE *report,
                kmdc_err *err)
{
    kmdc_db_params pp;
    PGresult *res = NULL;
    kmdc_status st;

    kmdc_db_params_init(&pp);
    kmdc_db_param_text(&pp, dbname);
    st = run(c, &res, PGRES_TUPLES_OK,
             "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", &pp,
             "look up the database", err);
    if (st != KMDC_OK)
        return st;
    if (PQntuples(res) == 1) {
        int mine = strcmp(PQgetvalue(res, 0, 0), owner) == 0;

        PQclear(res);
        if (!mine) {
            st = command(c, "ALTER DATABASE %s OWNER TO %s", dbname, owner,
                         "give the database to its owner role", err);
            if (st == KMDC_OK)
                fprintf(report, "database %s: existed, now owned by %s\n", dbname, owner);
            return st;
        }
        fprintf(report, "database %s: exists, owned by %s\n", dbname, owner);
        return KMDC_OK;
    }
    PQclear(res);
    st = command(c, "CREATE DATABASE %s OWNER %s ENCODING 'UTF8' TEMPLATE template0",
                 dbname, owner, "create the database", err);
    if (st == KMDC_OK)
        fprintf(report, "database %s: created, owned by %s\n", dbname, owner);
    return st;
}

/* Append line to the file at path unless a line equal to it (ignoring runs
 * of blanks) is there; before_rules: insert it above the first rule instead
 * (pg_hba.conf is read top down).  Returns 1 changed, 0 already there, -1
 * error (err set). */
static int
add_line(const char *path, const char *line, int before_rules, kmdc_err *err)
{
    FILE *f = fopen(path, "re");
    kmdc_atomic *a = NULL;
    char *text = NULL;
    size_t len = 0, cap = 0, at;
    char buf[1024];
    struct stat sb;
    kmdc_status st;
    int fd, rc = -1;

    if (f == NULL || fstat(fileno(f), &sb) != 0) {
        kmdc_err_set(err, KMDC_ERR_IO, "cannot read %s: %s", path, strerror(errno));
        goto out;
    }
    while (fgets(buf, sizeof buf, f) != NULL) {
        size_t n = strlen(buf);
        char norm[1024], want[1024];
        size_t i, k = 0, j = 0;

        /* compare with blanks collapsed */
        for (i = 0; buf[i] != '\0' && buf[i] != '\n'; i++)
            if (!((buf[i] == ' ' || buf[i] == '\t') && (k == 0 || norm[k - 1] == ' ')))
                norm[k++] = (buf[i] == '\t') ? ' ' : buf[i];
        while (k > 0 && norm[k - 1] == ' ')
            k--;
        norm[k] = '\0';
        for (i = 0; line[i] != '\0'; i++)
            if (!(line[i] == ' ' && (j == 0 || want[j - 1] == ' ')))
                want[j++] = line[i];
        want[j] = '\0';
        if (strcmp(norm, want) == 0) {
            rc = 0;
            goto out;
        }
        if (len + n + 1 > cap) {
            char *t = realloc(text, (cap = 2 * (len + n + 1) + 4096));
            if (t == NULL) {
                kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
                goto out;
            }
            text = t;
        }
        memcpy(text + len, buf, n);
        len += n;
    }
    if (text == NULL && (text = malloc(1)) == NULL) {
        kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
        goto out;
    }
    text[len] = '\0';
    at = len;
    if (before_rules) {
        /* the start of the first line that is neither blank nor a comment */
        size_t p = 0;
        while (p < len) {
            size_t e = p, q = p;
            while (e < len && text[e] != '\n')
                e++;
            while (q < e && (text[q] == ' ' || text[q] == '\t'))
                q++;
            if (q < e && text[q] != '#') {
                at = p;
                break;
            }
            p = e + 1;
        }
    }
    /* the new content replaces the file atomically (lib's kmdc_file), with
     * its mode and, where we may, its owner */
    if (kmdc_atomic_open(&a, path, NULL, sb.st_mode & 07777, 0, err) != KMDC_OK)
        goto out;
    fd = kmdc_atomic_fd(a);
    if (fchown(fd, sb.st_uid, sb.st_gid) != 0 && errno != EPERM) {
        kmdc_err_set(err, KMDC_ERR_IO, "cannot write beside %s: %s", path, strerror(errno));
        goto out;
    }
    if (kmdc_write_all(fd, text, at, path, err) != KMDC_OK
        || (at > 0 && text[at - 1] != '\n' && kmdc_write_all(fd, "\n", 1, path, err) != KMDC_OK)
        || kmdc_write_all(fd, line, strlen(line), path, err) != KMDC_OK
        || kmdc_write_all(fd, "\n", 1, path, err) != KMDC_OK
        || kmdc_write_all(fd, text + at, len - at, path, err) != KMDC_OK)
        goto out;
    st = kmdc_atomic_commit(a, err);
    a = NULL;
    if (st != KMDC_OK)
        goto out;
    rc = 1;
out:
    kmdc_atomic_abort(a);
    if (f != NULL)
        fclose(f);
    free(text);
    return rc;
}

/* SHOW name into buf. */
static kmdc_status
show(PGconn *c, const char *sql, char *buf, size_t cap, kmdc_err *err)
{
    PGresult *res = NULL;
    kmdc_status st = run(c, &res, PGRES_TUPLES_OK, sql, NULL, "read a setting", err);

    if (st != KMDC_OK)
        return st;
    snprintf(buf, cap, "%s", PQntuples(res) == 1 ? PQgetvalue(res, 0, 0) : "");
    PQclear(res);
    return KMDC_OK;
}

/* The peer map: httpd_user may connect as the httpd role and admin_user as
 * the owner, over the Unix socket, without passwords. */
static kmdc_status
peer_map(PGconn *c, const kmdcadm_setup_opts *o, FILE *report, kmdc_err *err)
{
    char hba[1024], ident[1024], line[512];
    int changed = 0, r;
    kmdc_status st;

    if ((st = show(c, "SHOW ident_file", ident, sizeof ident, err)) != KMDC_OK
        || (st = show(c, "SHOW hba_file", hba, sizeof hba, err)) != KMDC_OK)
        return st;
    snprintf(line, sizeof line, "kmdc %s %s", o->httpd_user, o->httpd_role);
    if ((r = add_line(ident, line, 0, err)) < 0)
        return err->code;
    changed |= r;
    snprintf(line, sizeof line, "kmdc %s %s", o->admin_user, o->owner);
    if ((r = add_line(ident, line, 0, err)) < 0)
        return err->code;
    changed |= r;
    snprintf(line, sizeof line, "local %s %s,%s peer map=kmdc", o->database, o->httpd_role,
             o->owner);
    if ((r = add_line(hba, line, 1, err)) < 0)
        return err->code;
    changed |= r;
    if (changed) {
        st = run(c, NULL, PGRES_TUPLES_OK, "SELECT pg_reload_conf()", NULL,
                 "reload the server's configuration", err);
        if (st != KMDC_OK)
            return st;
        fprintf(report, "peer authentication: %s and %s now map system users %s and %s "
                "(map kmdc); configuration reloaded\n", hba, ident, o->httpd_user,
                o->admin_user);
    }
    else {
        fprintf(report, "peer authentication: map kmdc already in %s and %s\n", hba, ident);
    }
    return KMDC_OK;
}

kmdc_status
kmdcadm_setup_database(const kmdcadm_setup_opts *o, FILE *report, kmdc_err *err)
{
    PGconn *c = NULL, *d = NULL;
    PGresult *res = NULL;
    kmdcadm_db *mig = NULL;
    kmdc_status st;
    const char *host, *port;
    size_t i;
    int super = 0;

    if ((st = connect_to(&c, o->conninfo, NULL, err)) != KMDC_OK)
        goto out;
    st = run(c, &res, PGRES_TUPLES_OK,
             "SELECT rolsuper FROM pg_roles WHERE rolname = current_user", NULL,
             "check the connection's role", err);
    if (st != KMDC_OK)
        goto out;
    if (!kmdc_db_get_bool(res, 0, 0, &super) || !super) {
        st = kmdc_err_set(err, KMDC_ERR_ARG, "setup needs a PostgreSQL superuser (it "
                          "creates roles and a database); connected as %s",
                          PQuser(c));
        goto out;
    }
    PQclear(res);
    res = NULL;
    if ((st = ensure_role(c, o->owner, report, err)) != KMDC_OK
        || (st = ensure_role(c, o->httpd_role, report, err)) != KMDC_OK
        || (st = ensure_database(c, o->database, o->owner, report, err)) != KMDC_OK)
        goto out;

    /* in the database: who may connect, the schema public */
    if ((st = connect_to(&d, o->conninfo, o->database, err)) != KMDC_OK)
        goto out;
    if ((st = command(d, "REVOKE ALL ON DATABASE %s FROM PUBLIC", o->database, NULL,
                      "revoke PUBLIC's rights on the database", err)) != KMDC_OK
        || (st = command(d, "GRANT CONNECT, TEMPORARY ON DATABASE %s TO %s", o->database,
                         o->owner, "grant the owner", err)) != KMDC_OK
        || (st = command(d, "GRANT CONNECT ON DATABASE %s TO %s", o->database,
                         o->httpd_role, "let the httpd role connect", err)) != KMDC_OK
        || (st = command(d, "REVOKE ALL ON SCHEMA public FROM PUBLIC", NULL, NULL,
                         "revoke PUBLIC's rights on schema public", err)) != KMDC_OK
        || (st = command(d, "GRANT USAGE, CREATE ON SCHEMA public TO %s", o->owner, NULL,
                         "let the owner create the schema", err)) != KMDC_OK
        || (st = command(d, "GRANT USAGE ON SCHEMA public TO %s", o->httpd_role, NULL,
                         "let the httpd role use the schema", err)) != KMDC_OK)
        goto out;
    fprintf(report, "database %s: PUBLIC may not connect; %s and %s may\n", o->database,
            o->owner, o->httpd_role);

    /* the schema, created by the owner role so that it owns every table */
    if ((st = kmdcadm_db_open_as(&mig, o->conninfo, o->database, o->owner, err)) != KMDC_OK)
        goto out;
    fprintf(report, "schema (as %s): ", o->owner);
    fflush(report);
    if ((st = kmdcadm_db_migrate(mig, o->sqldir, report, err)) != KMDC_OK)
        goto out;

    /* the least privileges of the httpd role */
    for (i = 0; i < sizeof httpd_grants / sizeof httpd_grants[0]; i++) {
        char *q = PQescapeIdentifier(d, o->httpd_role, strlen(o->httpd_role));
        char sql[512];

        if (q == NULL) {
            st = kmdc_err_set(err, KMDC_ERR_INTERNAL, "out of memory");
            goto out;
        }
        snprintf(sql, sizeof sql, "%s TO %s", httpd_grants[i], q);
        PQfreemem(q);
        if ((st = run(d, NULL, PGRES_COMMAND_OK, sql, NULL, "grant the httpd role",
                      err)) != KMDC_OK)
            goto out;
    }
    fprintf(report, "grants: %s has the %zu grants of ADMIN.md section 2 and nothing "
            "more on the tables\n", o->httpd_role,
            sizeof httpd_grants / sizeof httpd_grants[0]);

    if (o->peer_map && (st = peer_map(c, o, report, err)) != KMDC_OK)
        goto out;

    host = PQhost(c);
    port = PQport(c);
    if (host != NULL && host[0] != '/' && strcmp(host, "localhost") != 0
        && strcmp(host, "127.0.0.1") != 0 && strcmp(host, "::1") != 0)
        fprintf(report, "(a remote server: use hostssl with sslmode=verify-full and a "
                "passfile, docs/ADMIN.md section 2)\n");
    {
        const char *h = host != NULL && host[0] != '\0' ? host : "/var/run/postgresql";
        int other_port = port != NULL && port[0] != '\0' && strcmp(port, "5432") != 0;

        fprintf(report, "\nFor kmdcadm (as %s):\n    export PGHOST=%s%s%s PGDATABASE=%s "
                "PGUSER=%s\n", o->admin_user, h, other_port ? " PGPORT=" : "",
                other_port ? port : "", o->database, o->owner);
        fprintf(report, "In httpd's configuration:\n    KmdcDatabase \"host=%s%s%s "
                "dbname=%s user=%s\"\n", h, other_port ? " port=" : "",
                other_port ? port : "", o->database, o->httpd_role);
    }
    st = KMDC_OK;
out:
    PQclear(res);
    kmdcadm_db_close(mig);
    if (d != NULL)
        PQfinish(d);
    if (c != NULL)
        PQfinish(c);
    return st;
}
