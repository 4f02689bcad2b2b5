/*
 * kmdcadm_maint.c - kmdcadm's commands on the database as a whole: setup
 * (roles, database, schema, grants and a first master key), migrate, purge
 * and audit (kmdcadm(8), docs/ADMIN.md).  The dispatcher in kmdcadm.c has
 * parsed the options and opened the database (migrate, purge, audit) before a
 * cmd_* here runs; setup connects itself, as a superuser, in
 * kmdcadm_setup.c.
 */
#include "config.h"

#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <grp.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <pwd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kmdc_units.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"
#include "kmdcadm.h"

/* The source tree's sql/ when this binary runs from a build tree: the build
 * tree's Makefile (one level above admin/) names abs_top_srcdir. */
static int
build_tree_sqldir(char *out, size_t outlen)
{
    char exe[PATH_MAX], mk[PATH_MAX + 32], line[PATH_MAX + 64];
    static const char key[] = "abs_top_srcdir = ";
    char *dir, *nl;
    ssize_t n;
    FILE *f;
    int found = 0, w;
    struct stat sb;

    n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n <= 0)
        return 0;
    exe[n] = '\0';
    dir = dirname(exe);                 /* .../admin or .../admin/.libs */
    if (strcmp(basename(dir), ".libs") == 0)
        dir = dirname(dir);
    w = snprintf(mk, sizeof mk, "%s/../Makefile", dir);
    if (w < 0 || (size_t)w >= sizeof mk)
        return 0;
    f = fopen(mk, "re");
    if (f == NULL)
        return 0;
    while (fgets(line, sizeof line, f) != NULL) {
        if (strncmp(line, key, sizeof key - 1) != 0)
            continue;
        nl = strchr(line, '\n');
        if (nl != NULL)
            *nl = '\0';
        w = snprintf(out, outlen, "%s/sql", line + sizeof key - 1);
        found = w > 0 && (size_t)w < outlen && stat(out, &sb) == 0 && S_ISDIR(sb.st_mode);
        break;
    }
    fclose(f);
    return found;
}

/* The migrations folder: --sqldir, $KMDC_SQLDIR, the build tree's, the installed one
 * (buf: room for the build tree's). */
static const char *
migrations_dir(const kmdcadm_ctx *ctx, char *buf, size_t cap)
{
    const char *env = getenv("KMDC_SQLDIR");

    if (ctx->sqldir != NULL)
        return ctx->sqldir;
    if (env != NULL && env[0] != '\0')
        return env;
    if (build_tree_sqldir(buf, cap))
        return buf;
    return KMDC_SQLDIR;
}

/* --- migrate ------------------------------------------------------------------ */

int
cmd_migrate(kmdcadm_ctx *ctx, void *opts)
{
    char buildsql[PATH_MAX + 8];
    kmdc_err e;

    (void)opts;
    kmdc_err_clear(&e);
    if (kmdcadm_db_migrate(ctx->db, migrations_dir(ctx, buildsql, sizeof buildsql), stdout,
                           &e) != KMDC_OK)
        return fail_err(&e);
    return EXIT_OK;
}

/* --- setup -------------------------------------------------------------------- */

typedef struct setup_cli {
    kmdcadm_setup_opts db;
    const char *key_dir;
    int no_key;
    const char *as;           /* run the database part as this system user */
    int as_given;
    int print_grants;
} setup_cli;

static int
setup_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    setup_cli *o = opts;

    (void)ctx;
    switch (opt) {
    case OPT_DATABASE: o->db.database = arg; return 0;
    case OPT_OWNER: o->db.owner = arg; return 0;
    case OPT_HTTPD_ROLE: o->db.httpd_role = arg; return 0;
    case OPT_HTTPD_USER: o->db.httpd_user = arg; return 0;
    case OPT_ADMIN_USER: o->db.admin_user = arg; return 0;
    case OPT_KEY_DIR: o->key_dir = arg; return 0;
    case OPT_NO_KEY: o->no_key = 1; return 0;
    case OPT_PEER_MAP: o->db.peer_map = 1; return 0;
    case OPT_AS: o->as = arg; o->as_given = 1; return 0;
    case OPT_PRINT_GRANTS: o->print_grants = 1; return 0;
    default: return 1;
    }
}

/* The master key folder (0700, ours) and a key in it: the highest
 * master-N.key there, else a new master-1.key.  Prints what it did and sets
 * *id and path (cap bytes). */
static int
setup_master_key(const char *dir, uint32_t *id, char *path, size_t cap)
{
    struct stat sb;
    DIR *d;
    struct dirent *de;
    unsigned long best = 0;
    int found = 0;
    kmdc_err e;

    kmdc_err_clear(&e);
    if (lstat(dir, &sb) != 0) {
        if (errno != ENOENT)
            return fail("%s: %s", dir, strerror(errno));
        if (mkdir(dir, 0700) != 0)
            return fail("cannot create the master key folder %s: %s", dir, strerror(errno));
        if (lstat(dir, &sb) != 0)
            return fail("%s: %s", dir, strerror(errno));
        printf("master key folder %s: created (mode 0700, owner uid %u)\n", dir,
               (unsigned)sb.st_uid);
    }
    else {
        if (!S_ISDIR(sb.st_mode))
            return fail("%s is not a folder", dir);
        if (sb.st_uid != geteuid())
            return fail("the master key folder %s belongs to uid %u, not to the user "
                        "running kmdcadm (uid %u); httpd reads master keys as root",
                        dir, (unsigned)sb.st_uid, (unsigned)geteuid());
        if ((sb.st_mode & 077) != 0) {
            if (chmod(dir, 0700) != 0)
                return fail("cannot chmod %s: %s", dir, strerror(errno));
            printf("master key folder %s: existed, mode set to 0700\n", dir);
        }
        else {
            printf("master key folder %s: exists (mode %04o)\n", dir,
                   (unsigned)(sb.st_mode & 07777));
        }
    }
    d = opendir(dir);
    if (d == NULL)
        return fail("cannot read %s: %s", dir, strerror(errno));
    while ((de = readdir(d)) != NULL) {
        unsigned long n;
        char *end;

        if (strncmp(de->d_name, "master-", 7) != 0 || !isdigit((unsigned char)de->d_name[7]))
            continue;
        errno = 0;
        n = strtoul(de->d_name + 7, &end, 10);
        if (errno != 0 || strcmp(end, ".key") != 0 || n > INT32_MAX)
            continue;
        if (!found || n > best)
            best = n;
        found = 1;
    }
    closedir(d);
    if (!found)
        best = 1;
    if (snprintf(path, cap, "%s/master-%lu.key", dir, best) >= (int)cap)
        return fail("the master key folder's name is too long");
    *id = (uint32_t)best;
    if (found) {
        if (lstat(path, &sb) != 0 || !S_ISREG(sb.st_mode))
            return fail("%s is not a regular file", path);
        if ((sb.st_mode & 077) != 0 || sb.st_uid != geteuid())
            return fail("%s must be mode 0600 and owned by uid %u (httpd refuses it "
                        "otherwise)", path, (unsigned)geteuid());
        printf("master key %s: exists (id %lu)\n", path, best);
        return EXIT_OK;
    }
    if (kmdc_master_key_generate(path, &e) != KMDC_OK)
        return fail_err(&e);
    printf("master key %s: created (id 1, mode 0600); keep it out of database backups\n",
           path);
    return EXIT_OK;
}

/* The database part, in this process or, with o->as, in a child that runs as
 * that system user (peer authentication over the Unix socket). */
static int
setup_database(setup_cli *o)
{
    struct passwd *pw = NULL;
    kmdc_err e;
    pid_t pid;
    int status = 0;

    kmdc_err_clear(&e);
    if (o->as == NULL || o->as[0] == '\0') {
        if (kmdcadm_setup_database(&o->db, stdout, &e) != KMDC_OK)
            return fail_err(&e);
        return EXIT_OK;
    }
    errno = 0;
    pw = getpwnam(o->as);
    if (pw == NULL)
        return fail("--as %s: no such system user", o->as);
    if (geteuid() != 0 && pw->pw_uid != geteuid())
        return fail("--as %s needs root", o->as);
    if (fflush(stdout) != 0)
        return fail("cannot write the output: %s", strerror(errno));
    pid = fork();
    if (pid < 0)
        return fail("fork: %s", strerror(errno));
    if (pid == 0) {
        if (geteuid() == 0
            && (initgroups(pw->pw_name, pw->pw_gid) != 0 || setgid(pw->pw_gid) != 0
                || setuid(pw->pw_uid) != 0)) {
            fail("cannot become %s: %s", o->as, strerror(errno));
            _exit(EXIT_FAIL);
        }
        if (setenv("HOME", pw->pw_dir, 1) != 0 || chdir("/") != 0) {
            fail("cannot set up the environment of %s: %s", o->as, strerror(errno));
            _exit(EXIT_FAIL);
        }
        if (kmdcadm_setup_database(&o->db, stdout, &e) != KMDC_OK) {
            fflush(stdout);
            fail_err(&e);
            _exit(EXIT_FAIL);
        }
        _exit(fflush(stdout) == 0 ? EXIT_OK : EXIT_FAIL);
    }
    while (waitpid(pid, &status, 0) < 0) {
        if (errno != EINTR)
            return fail("waitpid: %s", strerror(errno));
    }
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
        return EXIT_FAIL;
    return EXIT_OK;
}

static void
setup_init(void *opts)
{
    setup_cli *o = opts;

    o->db.database = "kmdc";
    o->db.owner = "kmdc_owner";
    o->db.httpd_role = "kmdc_httpd";
    o->db.httpd_user = "www-data";
    o->key_dir = "/etc/kmdc";
}

static int
setup_check(const kmdcadm_ctx *ctx, void *opts, int argc, char **argv)
{
    setup_cli *o = opts;
    const char *name = ctx->cmd->name;

    if (no_operands(ctx, argc, argv) != EXIT_OK)
        return EXIT_USAGE;
    if (!kmdcadm_setup_name_valid(o->db.database) || !kmdcadm_setup_name_valid(o->db.owner)
        || !kmdcadm_setup_name_valid(o->db.httpd_role))
        return usage_error(name, "database and role names are 1 to 63 of a-z, 0-9 and "
                           "'_', not starting with a digit");
    if (strcmp(o->db.owner, o->db.httpd_role) == 0)
        return usage_error(name, "the owner and the httpd role must differ");
    return EXIT_OK;
}

static const struct option setup_table[] = {
    { "database", required_argument, NULL, OPT_DATABASE },
    { "owner", required_argument, NULL, OPT_OWNER },
    { "httpd-role", required_argument, NULL, OPT_HTTPD_ROLE },
    { "httpd-user", required_argument, NULL, OPT_HTTPD_USER },
    { "admin-user", required_argument, NULL, OPT_ADMIN_USER },
    { "key-dir", required_argument, NULL, OPT_KEY_DIR },
    { "no-key", no_argument, NULL, OPT_NO_KEY },
    { "peer-map", no_argument, NULL, OPT_PEER_MAP },
    { "as", required_argument, NULL, OPT_AS },
    { "print-grants", no_argument, NULL, OPT_PRINT_GRANTS },
};
const kmdcadm_options setup_options = {
    setup_table, sizeof setup_table / sizeof setup_table[0], sizeof(setup_cli), setup_init,
    setup_opt, setup_check
};

int
cmd_setup(kmdcadm_ctx *ctx, void *opts)
{
    setup_cli *o = opts;
    const char *name = ctx->cmd->name;
    char buildsql[PATH_MAX + 8], keypath[PATH_MAX];
    struct passwd *me;
    char *admin_user = NULL;
    uint32_t key_id = 0;
    int rc = EXIT_OK;

    if (o->print_grants) {
        kmdcadm_setup_print_grants(stdout, o->db.httpd_role);
        goto out;
    }
    if (o->db.admin_user == NULL) {
        me = getpwuid(geteuid());
        if (me != NULL && (admin_user = strdup(me->pw_name)) == NULL) {
            rc = fail("out of memory");
            goto out;
        }
        o->db.admin_user = admin_user != NULL ? admin_user : "root";
    }
    if (o->db.httpd_user[0] == '\0' || strpbrk(o->db.httpd_user, " \t\n#") != NULL
        || o->db.admin_user[0] == '\0' || strpbrk(o->db.admin_user, " \t\n#") != NULL) {
        rc = usage_error(name, "a system user name holds no blank and no '#'");
        goto out;
    }
    o->db.conninfo = ctx->conninfo;
    o->db.sqldir = migrations_dir(ctx, buildsql, sizeof buildsql);
    /* root without connection settings: the postgres superuser, by peer */
    if (!o->as_given && geteuid() == 0 && ctx->conninfo == NULL && getenv("PGUSER") == NULL
        && getpwnam("postgres") != NULL)
        o->as = "postgres";

    if (!o->no_key) {
        rc = setup_master_key(o->key_dir, &key_id, keypath, sizeof keypath);
        if (rc != EXIT_OK)
            goto out;
    }
    if (o->as != NULL && o->as[0] != '\0')
        printf("connecting to PostgreSQL as the system user %s (peer authentication)\n",
               o->as);
    rc = setup_database(o);
    if (rc != EXIT_OK)
        goto out;
    if (!o->no_key)
        printf("    KmdcMasterKey %" PRIu32 " %s\n", key_id, keypath);
    if (!o->db.peer_map)
        printf("httpd's children connect as %s: add --peer-map (system user %s), or give "
               "the role a password in a passfile (docs/ADMIN.md section 2)\n",
               o->db.httpd_role, o->db.httpd_user);
out:
    free(admin_user);
    return rc;
}

/* The longest duration an option takes (lib's kmdc_parse_duration does the
 * syntax: seconds, or a number with s, m, h or d; docs/ADMIN.md, kmdcadm(8)). */
#define DURATION_MAX INT64_C(3153600000)   /* 100 years */

/* --- purge ---------------------------------------------------------------------------- */

/* Defaults and floors of purge's ages, in seconds (see kmdcadm(8)). */
#define PURGE_RECEIPT_AGE (2 * 86400)      /* KmdcEnvelopeMaxAge 24 h + 1 day */
#define PURGE_TOMBSTONE_AGE (30 * 86400)
#define PURGE_UPLOAD_AGE 3600
#define PURGE_NONCE_AGE 600                 /* 2 x KmdcAuthSkew (300 s) */
#define PURGE_MIN_RECEIPT_AGE 86400
#define PURGE_MIN_TOMBSTONE_AGE 86400
#define PURGE_MIN_UPLOAD_AGE 600
#define PURGE_MIN_NONCE_AGE 600

static int
purge_age(const char *opt, const char *arg, int64_t floor, int64_t *out)
{
    int64_t v;

    if (kmdc_parse_duration(arg, DURATION_MAX, &v) != KMDC_UNITS_OK)
        return usage_error("purge", "%s takes a duration: seconds, or a number with s, m, "
                           "h or d (e.g. 2d)", opt);
    if (v < floor)
        return usage_error("purge", "%s is at least %" PRId64 " seconds (see kmdcadm(8))",
                           opt, floor);
    *out = v;
    return 0;
}

static int
purge_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    kmdcadm_purge_opts *o = opts;

    (void)ctx;
    switch (opt) {
    case OPT_DRY_RUN:
        o->dry_run = 1;
        return 0;
    case OPT_RECEIPT_AGE:
        return purge_age("--receipt-age", arg, PURGE_MIN_RECEIPT_AGE, &o->receipt_age);
    case OPT_TOMBSTONE_AGE:
        return purge_age("--tombstone-age", arg, PURGE_MIN_TOMBSTONE_AGE, &o->tombstone_age);
    case OPT_UPLOAD_AGE:
        return purge_age("--upload-age", arg, PURGE_MIN_UPLOAD_AGE, &o->upload_age);
    case OPT_NONCE_AGE:
        return purge_age("--nonce-age", arg, PURGE_MIN_NONCE_AGE, &o->nonce_age);
    default:
        return 1;
    }
}

static void
purge_init(void *opts)
{
    kmdcadm_purge_opts *o = opts;

    o->receipt_age = PURGE_RECEIPT_AGE;
    o->tombstone_age = PURGE_TOMBSTONE_AGE;
    o->upload_age = PURGE_UPLOAD_AGE;
    o->nonce_age = PURGE_NONCE_AGE;
}

static const struct option purge_table[] = {
    { "dry-run", no_argument, NULL, OPT_DRY_RUN },
    { "receipt-age", required_argument, NULL, OPT_RECEIPT_AGE },
    { "tombstone-age", required_argument, NULL, OPT_TOMBSTONE_AGE },
    { "upload-age", required_argument, NULL, OPT_UPLOAD_AGE },
    { "nonce-age", required_argument, NULL, OPT_NONCE_AGE },
};
const kmdcadm_options purge_options = {
    purge_table, sizeof purge_table / sizeof purge_table[0], sizeof(kmdcadm_purge_opts),
    purge_init, purge_opt, NULL
};

int
cmd_purge(kmdcadm_ctx *ctx, void *opts)
{
    kmdcadm_purge_opts *o = opts;
    kmdcadm_purge_counts n;
    kmdc_err e;

    memset(&n, 0, sizeof n);
    kmdc_err_clear(&e);
    if (kmdcadm_db_purge(ctx->db, o, &n, &e) != KMDC_OK)
        return fail_err(&e);
    if (o->dry_run)
        printf("dry run: what a purge would remove now; nothing was changed\n");
    printf("expired     %" PRIu64 "\n", n.expired);
    printf("uploads     %" PRIu64 "\n", n.uploads);
    printf("orphans     %" PRIu64 "\n", n.orphans);
    printf("receipts    %" PRIu64 "\n", n.receipts);
    printf("nonces      %" PRIu64 "\n", n.nonces);
    printf("tombstones  %" PRIu64 "\n", n.tombstones);
    printf("messages    %" PRIu64 "\n", n.messages);
    return EXIT_OK;
}

/* --- audit ---------------------------------------------------------------------------- */

typedef struct audit_opts {
    kmdcadm_audit_query q;
} audit_opts;

static int
audit_opt(const kmdcadm_ctx *ctx, void *opts, int opt, const char *arg)
{
    audit_opts *o = opts;
    size_t i;
    int64_t v;

    switch (opt) {
    case OPT_SERIAL:
        return parse_serial(ctx->cmd->name, arg, &o->q.serial);
    case OPT_SINCE:
        if (kmdc_parse_duration(arg, DURATION_MAX, &v) == KMDC_UNITS_OK) {
            o->q.since_secs = v;
            o->q.since = NULL;
            return 0;
        }
        if (arg[0] == '\0' || strlen(arg) > 64)
            return usage_error(ctx->cmd->name, "--since takes a time or a duration");
        for (i = 0; arg[i] != '\0'; i++)
            if ((unsigned char)arg[i] < 0x20 || (unsigned char)arg[i] > 0x7e)
                return usage_error(ctx->cmd->name, "--since takes a time or a duration");
        o->q.since = arg;
        o->q.since_secs = -1;
        return 0;
    case OPT_LIMIT:
        if (kmdc_parse_decimal(arg, DURATION_MAX, &v) != KMDC_UNITS_OK)
            return usage_error(ctx->cmd->name, "--limit takes a number of rows (0: all)");
        o->q.limit = v;
        return 0;
    case OPT_JSON:
        o->q.json = 1;
        return 0;
    default:
        return 1;
    }
}

static void
audit_init(void *opts)
{
    audit_opts *o = opts;

    o->q.since_secs = -1;
    o->q.limit = 100;
}

static const struct option audit_table[] = {
    { "serial", required_argument, NULL, OPT_SERIAL },
    { "since", required_argument, NULL, OPT_SINCE },
    { "limit", required_argument, NULL, OPT_LIMIT },
    { "json", no_argument, NULL, OPT_JSON },
};
const kmdcadm_options audit_options = {
    audit_table, sizeof audit_table / sizeof audit_table[0], sizeof(audit_opts), audit_init,
    audit_opt, NULL
};

int
cmd_audit(kmdcadm_ctx *ctx, void *opts)
{
    audit_opts *o = opts;
    kmdc_err e;

    kmdc_err_clear(&e);
    if (kmdcadm_db_audit_print(ctx->db, &o->q, stdout, &e) != KMDC_OK)
        return e.code == KMDC_ERR_FORMAT ? usage_error(ctx->cmd->name, "%s", e.msg)
                                         : fail_err(&e);
    return EXIT_OK;
}
