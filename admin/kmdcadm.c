/*
 * kmdcadm.c - the datacenter administrator's tool: schema migrations, master
 * keys, issuing cards and changing their status (docs/ADMIN.md, kmdcadm(8)).
 *
 *   kmdcadm [GLOBAL OPTIONS] COMMAND [OPTIONS]     (kmdcadm --help)
 *
 * Commands: setup, migrate, keygen, issue, list, show, suspend, resume, revoke,
 * resync, rekey, purge, audit (kmdcadm(8) documents them all).
 *
 * Exit status: 0 done, 1 the operation failed (message on stderr prefixed
 * "kmdcadm: "), 2 usage error.  The database side is in kmdcadm_db.c.
 */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <libgen.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <grp.h>
#include <pwd.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kmdc_card.h"
#include "kmdc_crypto.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"
#include "kmdcadm_db.h"

#ifndef KMDC_SQLDIR
#define KMDC_SQLDIR "/usr/local/share/mod_kmdc/sql"
#endif

#define EXIT_OK 0
#define EXIT_FAIL 1
#define EXIT_USAGE 2

#define MAX_MASTER_KEYS 16
#define ACCESS_DAYS 7            /* the access code is valid 7 days (PROTOCOL.md 7) */
#define SERIAL_ATTEMPTS 8        /* draws before giving up on a free serial */
#define PASSPHRASE_MAX 1024

typedef struct master_key {
    uint32_t id;
    const char *path;
    uint8_t key[KMDC_MASTER_KEY_LEN];
    int loaded;
} master_key;

typedef struct globals {
    const char *db;                       /* --db, else libpq's environment */
    const char *sqldir;                   /* --sqldir */
    master_key keys[MAX_MASTER_KEYS];     /* --master-key, in the given order */
    size_t nkeys;
} globals;

typedef struct command {
    const char *name;
    int (*run)(globals *g, int argc, char **argv);
    const char *synopsis;
    const char *help;
} command;

/* Long-only option codes. */
enum {
    OPT_DB = 256, OPT_MASTER_KEY, OPT_SQLDIR, OPT_HELP, OPT_ADDRESS, OPT_URL,
    OPT_OUT, OPT_PASSFILE, OPT_FORCE, OPT_STATUS, OPT_JSON, OPT_REASON, OPT_UP,
    OPT_DOWN, OPT_CHECK, OPT_DRY_RUN, OPT_RECEIPT_AGE, OPT_TOMBSTONE_AGE, OPT_UPLOAD_AGE,
    OPT_NONCE_AGE, OPT_SERIAL, OPT_SINCE, OPT_LIMIT, OPT_VERSION, OPT_DATABASE, OPT_OWNER,
    OPT_HTTPD_ROLE, OPT_HTTPD_USER, OPT_ADMIN_USER, OPT_KEY_DIR, OPT_NO_KEY, OPT_PEER_MAP,
    OPT_AS, OPT_PRINT_GRANTS
};

#define GLOBAL_OPTIONS \
    { "db", required_argument, NULL, OPT_DB }, \
    { "master-key", required_argument, NULL, OPT_MASTER_KEY }, \
    { "sqldir", required_argument, NULL, OPT_SQLDIR }, \
    { "help", no_argument, NULL, OPT_HELP }, \
    { "version", no_argument, NULL, OPT_VERSION }

static const command *find_command(const char *name);

/* --- messages -------------------------------------------------------------- */

__attribute__((format(printf, 1, 2))) static int
fail(const char *fmt, ...)
{
    va_list ap;

    fputs("kmdcadm: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    return EXIT_FAIL;
}

/* A usage error for cmd (NULL: the global level). */
__attribute__((format(printf, 2, 3))) static int
usage_error(const char *cmd, const char *fmt, ...)
{
    va_list ap;

    fputs("kmdcadm: ", stderr);
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fprintf(stderr, "\nTry 'kmdcadm %s%s--help'.\n", cmd ? cmd : "", cmd ? " " : "");
    return EXIT_USAGE;
}

static int
fail_err(const kmdc_err *e)
{
    return fail("%s", e->msg[0] ? e->msg : kmdc_status_name(e->code));
}

static const char global_help[] =
    "Global options (accepted before or after the command):\n"
    "  --db CONNINFO        libpq connection string or URI; without it libpq's\n"
    "                       environment (PGHOST, PGPORT, PGDATABASE, PGUSER, ...)\n"
    "  --master-key ID:FILE master key number ID (0 .. 2147483647) in FILE (64 hex\n"
    "                       digits, mode 0600); repeatable, the highest ID wraps\n"
    "                       (issue, resync, rekey)\n"
    "  --sqldir DIR         migrations folder (migrate only)\n"
    "  -h, --help           this text; 'kmdcadm COMMAND --help' for a command\n"
    "  --version            the version\n";

static void
print_command_help(const command *c)
{
    printf("Usage: kmdcadm [GLOBAL OPTIONS] %s\n\n%s\n%s", c->synopsis, c->help,
           global_help);
}

/*
 * Handle an option every command accepts.  Returns 1 when handled, 0 when opt
 * is not global, -1 after a usage error (already printed).
 */
static int
global_option(globals *g, const char *cmd, int opt, const char *arg)
{
    const char *colon;
    char *end;
    unsigned long id;
    size_t i;

    switch (opt) {
    case OPT_DB:
        g->db = arg;
        return 1;
    case OPT_SQLDIR:
        g->sqldir = arg;
        return 1;
    case OPT_MASTER_KEY:
        colon = strchr(arg, ':');
        if (colon == NULL || colon == arg || colon[1] == '\0') {
            usage_error(cmd, "--master-key takes ID:FILE, e.g. --master-key 1:/etc/kmdc/master-1.key");
            return -1;
        }
        errno = 0;
        id = strtoul(arg, &end, 10);
        if (end != colon || errno != 0 || id > INT32_MAX || !isdigit((unsigned char)arg[0])) {
            usage_error(cmd, "--master-key: the ID is a number in 0 .. 2147483647");
            return -1;
        }
        for (i = 0; i < g->nkeys; i++)
            if (g->keys[i].id == (uint32_t)id) {
                usage_error(cmd, "--master-key: ID %lu is given twice", id);
                return -1;
            }
        if (g->nkeys == MAX_MASTER_KEYS) {
            usage_error(cmd, "--master-key: at most %d keys", MAX_MASTER_KEYS);
            return -1;
        }
        g->keys[g->nkeys].id = (uint32_t)id;
        g->keys[g->nkeys].path = colon + 1;
        g->nkeys++;
        return 1;
    default:
        return 0;
    }
}

/*
 * Parse a command's options: the command's own table plus the global
 * options.  Returns -1 on success with *first_arg the index of the first
 * operand, EXIT_OK when --help was printed, EXIT_USAGE after a usage error.
 * handle is called for the command's own options (returns 0 ok, else usage).
 */
typedef int (*opt_handler)(void *ctx, int opt, const char *arg);

static int
parse_options(globals *g, const command *c, int argc, char **argv,
              const struct option *own, size_t nown, opt_handler handle,
              void *ctx, int *first_arg)
{
    static const struct option glob[] = { GLOBAL_OPTIONS };
    struct option table[24];
    size_t n = 0, i;
    int opt, r;

    for (i = 0; i < nown && n + 1 < sizeof table / sizeof table[0]; i++)
        table[n++] = own[i];
    for (i = 0; i < sizeof glob / sizeof glob[0] && n + 1 < sizeof table / sizeof table[0]; i++)
        table[n++] = glob[i];
    memset(&table[n], 0, sizeof table[n]);

    optind = 0;   /* glibc: full re-initialisation */
    opterr = 0;
    while ((opt = getopt_long(argc, argv, ":h", table, NULL)) != -1) {
        if (opt == 'h' || opt == OPT_HELP) {
            print_command_help(c);
            return EXIT_OK;
        }
        if (opt == OPT_VERSION) {
            printf("kmdcadm %s\n", PACKAGE_VERSION);
            return EXIT_OK;
        }
        if (opt == '?')
            return usage_error(c->name, "unknown option '%s'", argv[optind - 1]);
        if (opt == ':')
            return usage_error(c->name, "option '%s' needs a value", argv[optind - 1]);
        r = global_option(g, c->name, opt, optarg);
        if (r < 0)
            return EXIT_USAGE;
        if (r > 0)
            continue;
        if (handle == NULL || handle(ctx, opt, optarg) != 0)
            return EXIT_USAGE;
    }
    *first_arg = optind;
    return -1;
}

/* --- shared helpers ---------------------------------------------------------- */

/* Parse a serial as typed: 1..16 hex digits, either case. */
static int
parse_serial(const char *cmd, const char *s, uint64_t *serial)
{
    char buf[17];
    size_t len = strlen(s), i;

    if (len == 0 || len > 16)
        return usage_error(cmd, "a serial is up to 16 hex digits");
    memset(buf, '0', 16);
    for (i = 0; i < len; i++) {
        if (!isxdigit((unsigned char)s[i]))
            return usage_error(cmd, "a serial is up to 16 hex digits");
        buf[16 - len + i] = (char)tolower((unsigned char)s[i]);
    }
    buf[16] = '\0';
    if (kmdc_serial_parse(serial, buf, 16, NULL) != KMDC_OK)
        return usage_error(cmd, "a serial lies in 1 .. 7fffffffffffffff");
    return 0;
}

/* Load every --master-key file (so a bad one is reported even if unused) and
 * return the one with the highest id.  NULL with a message when none. */
static master_key *
load_master_keys(globals *g, const char *cmd, int *rc)
{
    master_key *best = NULL;
    kmdc_err e;
    size_t i;

    kmdc_err_clear(&e);
    if (g->nkeys == 0) {
        *rc = usage_error(cmd, "%s needs --master-key ID:FILE", cmd);
        return NULL;
    }
    for (i = 0; i < g->nkeys; i++) {
        if (kmdc_master_key_load(g->keys[i].path, g->keys[i].key, &e) != KMDC_OK) {
            *rc = fail("master key %" PRIu32 ": %s", g->keys[i].id, e.msg);
            return NULL;
        }
        g->keys[i].loaded = 1;
        if (best == NULL || g->keys[i].id > best->id)
            best = &g->keys[i];
    }
    return best;
}

static void
wipe_master_keys(globals *g)
{
    size_t i;

    for (i = 0; i < g->nkeys; i++) {
        kmdc_wipe(g->keys[i].key, sizeof g->keys[i].key);
        g->keys[i].loaded = 0;
    }
}

/* Open the database and check its schema version. */
static int
open_db(globals *g, kmdcadm_db **db, int check_schema)
{
    kmdc_err e;

    kmdc_err_clear(&e);
    if (kmdcadm_db_open(db, g->db, &e) != KMDC_OK)
        return fail_err(&e);
    if (check_schema && kmdcadm_db_check_schema(*db, &e) != KMDC_OK) {
        kmdcadm_db_close(*db);
        *db = NULL;
        return fail_err(&e);
    }
    return EXIT_OK;
}

/* Flush stdout and report a write error (a full disk, a closed pipe). */
static int
finish_output(int rc)
{
    if (fflush(stdout) != 0 || ferror(stdout))
        return rc == EXIT_OK ? fail("cannot write the output: %s", strerror(errno)) : rc;
    return rc;
}

/* --- migrate ------------------------------------------------------------------ */

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

static int
cmd_migrate(globals *g, int argc, char **argv)
{
    const command *c = find_command("migrate");
    char buildsql[PATH_MAX + 8];
    const char *sqldir;
    kmdcadm_db *db = NULL;
    kmdc_err e;
    int rc, first;

    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, NULL, 0, NULL, NULL, &first);
    if (rc >= 0)
        return rc;
    if (first < argc)
        return usage_error(c->name, "unexpected argument '%s'", argv[first]);
    if (g->sqldir != NULL)
        sqldir = g->sqldir;
    else if (getenv("KMDC_SQLDIR") != NULL && getenv("KMDC_SQLDIR")[0] != '\0')
        sqldir = getenv("KMDC_SQLDIR");
    else if (build_tree_sqldir(buildsql, sizeof buildsql))
        sqldir = buildsql;
    else
        sqldir = KMDC_SQLDIR;
    rc = open_db(g, &db, 0);
    if (rc != EXIT_OK)
        goto out;
    if (kmdcadm_db_migrate(db, sqldir, stdout, &e) != KMDC_OK)
        rc = fail_err(&e);
out:
    kmdcadm_db_close(db);
    return finish_output(rc);
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
setup_opt(void *ctx, int opt, const char *arg)
{
    setup_cli *o = ctx;

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

static int
cmd_setup(globals *g, int argc, char **argv)
{
    static const struct option own[] = {
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
    const command *c = find_command("setup");
    char buildsql[PATH_MAX + 8], keypath[PATH_MAX];
    struct passwd *me;
    setup_cli o;
    uint32_t key_id = 0;
    int rc, first;

    memset(&o, 0, sizeof o);
    o.db.database = "kmdc";
    o.db.owner = "kmdc_owner";
    o.db.httpd_role = "kmdc_httpd";
    o.db.httpd_user = "www-data";
    o.key_dir = "/etc/kmdc";
    rc = parse_options(g, c, argc, argv, own, sizeof own / sizeof own[0], setup_opt, &o,
                       &first);
    if (rc >= 0)
        return rc;
    if (first < argc)
        return usage_error(c->name, "unexpected argument '%s'", argv[first]);
    if (!kmdcadm_setup_name_valid(o.db.database) || !kmdcadm_setup_name_valid(o.db.owner)
        || !kmdcadm_setup_name_valid(o.db.httpd_role))
        return usage_error(c->name, "database and role names are 1 to 63 of a-z, 0-9 and "
                           "'_', not starting with a digit");
    if (strcmp(o.db.owner, o.db.httpd_role) == 0)
        return usage_error(c->name, "the owner and the httpd role must differ");
    if (o.print_grants) {
        kmdcadm_setup_print_grants(stdout, o.db.httpd_role);
        return finish_output(EXIT_OK);
    }
    if (o.db.admin_user == NULL) {
        me = getpwuid(geteuid());
        o.db.admin_user = me != NULL ? strdup(me->pw_name) : "root";
        if (o.db.admin_user == NULL)
            return fail("out of memory");
    }
    if (o.db.httpd_user[0] == '\0' || strpbrk(o.db.httpd_user, " \t\n#") != NULL
        || o.db.admin_user[0] == '\0' || strpbrk(o.db.admin_user, " \t\n#") != NULL)
        return usage_error(c->name, "a system user name holds no blank and no '#'");
    o.db.conninfo = g->db;
    if (g->sqldir != NULL)
        o.db.sqldir = g->sqldir;
    else if (getenv("KMDC_SQLDIR") != NULL && getenv("KMDC_SQLDIR")[0] != '\0')
        o.db.sqldir = getenv("KMDC_SQLDIR");
    else if (build_tree_sqldir(buildsql, sizeof buildsql))
        o.db.sqldir = buildsql;
    else
        o.db.sqldir = KMDC_SQLDIR;
    /* root without connection settings: the postgres superuser, by peer */
    if (!o.as_given && geteuid() == 0 && g->db == NULL && getenv("PGUSER") == NULL
        && getpwnam("postgres") != NULL)
        o.as = "postgres";

    if (!o.no_key) {
        rc = setup_master_key(o.key_dir, &key_id, keypath, sizeof keypath);
        if (rc != EXIT_OK)
            return finish_output(rc);
    }
    if (o.as != NULL && o.as[0] != '\0')
        printf("connecting to PostgreSQL as the system user %s (peer authentication)\n",
               o.as);
    rc = setup_database(&o);
    if (rc != EXIT_OK)
        return finish_output(rc);
    if (!o.no_key)
        printf("    KmdcMasterKey %" PRIu32 " %s\n", key_id, keypath);
    if (!o.db.peer_map)
        printf("httpd's children connect as %s: add --peer-map (system user %s), or give "
               "the role a password in a passfile (docs/ADMIN.md section 2)\n",
               o.db.httpd_role, o.db.httpd_user);
    return finish_output(EXIT_OK);
}

/* --- keygen ------------------------------------------------------------------- */

typedef struct keygen_opts {
    const char *out;
} keygen_opts;

static int
keygen_opt(void *ctx, int opt, const char *arg)
{
    keygen_opts *o = ctx;

    if (opt == OPT_OUT) {
        o->out = arg;
        return 0;
    }
    return 1;
}

static int
cmd_keygen(globals *g, int argc, char **argv)
{
    static const struct option own[] = { { "out", required_argument, NULL, OPT_OUT } };
    const command *c = find_command("keygen");
    keygen_opts o = { NULL };
    kmdc_err e;
    int rc, first;

    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, own, 1, keygen_opt, &o, &first);
    if (rc >= 0)
        return rc;
    if (first < argc)
        return usage_error(c->name, "unexpected argument '%s'", argv[first]);
    if (o.out == NULL)
        return usage_error(c->name, "keygen needs --out FILE");
    if (kmdc_master_key_generate(o.out, &e) != KMDC_OK)
        return fail_err(&e);
    printf("wrote a new master key to %s (mode 0600); keep it out of database backups\n",
           o.out);
    return finish_output(EXIT_OK);
}

/* --- issue -------------------------------------------------------------------- */

typedef struct issue_opts {
    char address[65];
    int have_address;
    const char *url;
    const char *out;
    const char *passfile;
    int force;
} issue_opts;

static int
issue_opt(void *ctx, int opt, const char *arg)
{
    issue_opts *o = ctx;
    size_t len, i;

    switch (opt) {
    case OPT_ADDRESS:
        len = strlen(arg);
        if (len == 0 || len > 64)
            return usage_error("issue", "an address is 1 to 64 characters");
        for (i = 0; i < len; i++)
            o->address[i] = (char)tolower((unsigned char)arg[i]);
        o->address[len] = '\0';
        if (!kmdc_address_valid(o->address, len))
            return usage_error("issue", "an address starts with a letter or digit and "
                               "holds only a-z, 0-9, '.', '_' and '-'");
        o->have_address = 1;
        return 0;
    case OPT_URL:
        o->url = arg;
        return 0;
    case OPT_OUT:
        o->out = arg;
        return 0;
    case OPT_PASSFILE:
        o->passfile = arg;
        return 0;
    case OPT_FORCE:
        o->force = 1;
        return 0;
    default:
        return 1;
    }
}

/* Read the passphrase: the first line of path, without its line end (a
 * file that group or others may read is refused, as a card would be). */
static int
read_passphrase(const char *path, char *buf, size_t buflen)
{
    kmdc_err e;

    kmdc_err_clear(&e);
    if (kmdc_passphrase_file_read(path, buf, buflen, &e) != KMDC_OK)
        return fail("%s", e.msg);
    return EXIT_OK;
}

/* Write the card image to a new temp file beside out (0600, fsynced). */
static int
write_temp_card(const char *out, const uint8_t *img, size_t len, char **tmp_out)
{
    char *tmp = NULL, *copy = NULL, *dircopy = NULL, *dir, *base;
    size_t off = 0;
    ssize_t w;
    int fd = -1, rc = EXIT_OK, n;
    size_t cap;

    *tmp_out = NULL;
    copy = strdup(out);
    cap = strlen(out) + 32;
    tmp = malloc(cap);
    if (copy == NULL || tmp == NULL) {
        rc = fail("out of memory");
        goto out;
    }
    /* dirname/basename may modify their argument: use two copies. */
    base = basename(copy);
    n = snprintf(tmp, cap, "%s", out);
    if (n < 0 || (size_t)n >= cap) {
        rc = fail("card file path too long");
        goto out;
    }
    /* dirname() returns a pointer into tmp, which the next snprintf
     * overwrites (it may clear tmp[0] first): copy the folder out */
    if ((dircopy = strdup(dirname(tmp))) == NULL) {
        rc = fail("out of memory");
        goto out;
    }
    dir = dircopy;
    n = snprintf(tmp, cap, "%s/.%s.issue-XXXXXX", dir, base);
    if (n < 0 || (size_t)n >= cap) {
        rc = fail("card file path too long");
        goto out;
    }
    fd = mkstemp(tmp);   /* O_EXCL, mode 0600 */
    if (fd < 0) {
        rc = fail("cannot create a file beside %s: %s", out, strerror(errno));
        goto out;
    }
    if (fchmod(fd, 0600) != 0) {
        rc = fail("cannot set the mode of the card file: %s", strerror(errno));
        goto out;
    }
    while (off < len) {
        w = write(fd, img + off, len - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0) {
            rc = fail("cannot write the card file: %s", w < 0 ? strerror(errno) : "short write");
            goto out;
        }
        off += (size_t)w;
    }
    if (fsync(fd) != 0) {
        rc = fail("cannot write the card file: %s", strerror(errno));
        goto out;
    }
    if (close(fd) != 0) {
        fd = -1;
        rc = fail("cannot write the card file: %s", strerror(errno));
        goto out;
    }
    fd = -1;
    *tmp_out = tmp;
    tmp = NULL;
out:
    if (fd >= 0) {
        close(fd);
        unlink(tmp);
    }
    free(tmp);
    free(copy);
    free(dircopy);
    return rc;
}

/* fsync the folder holding path so a rename or link survives a crash. */
static void
sync_parent(const char *path)
{
    char *copy = strdup(path);
    int fd;

    if (copy == NULL)
        return;
    fd = open(dirname(copy), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd >= 0) {
        (void)fsync(fd);
        close(fd);
    }
    free(copy);
}

/* Move the committed temp card file to its place.  Without force an existing
 * file is never replaced (link fails with EEXIST). */
static int
place_card(const char *tmp, const char *out, int force)
{
    if (force) {
        if (rename(tmp, out) != 0)
            return -1;
    } else {
        if (link(tmp, out) != 0)
            return -1;
        (void)unlink(tmp);
    }
    sync_parent(out);
    return 0;
}

static void
print_access_code(const char *code)
{
    /* the ten symbols, then the check symbol that lets kmdc refuse a typo */
    printf("access code: %.5s-%.5s-%c\n", code, code + 5, kmdc_access_code_check(code));
    printf("The access code is shown only this once: give it to the card holder by "
           "another channel than the card file. It expires in %d days.\n", ACCESS_DAYS);
}

/*
 * The serial of a new card: random, or in a build with test hooks (configure
 * --enable-test-hooks) the one in KMDC_TEST_SERIAL (16 lowercase hex digits),
 * so that a test can issue cards whose serials it chooses (t/048_slots.t:
 * two serials that fold to the same 32 bits).  *fixed is set when the serial
 * was chosen: a taken serial is then an error, not a reason to draw again.
 */
static kmdc_status
draw_serial(uint64_t *serial, int *fixed, kmdc_err *e)
{
#ifdef KMDC_TEST_HOOKS
    const char *s = getenv("KMDC_TEST_SERIAL");

    if (s != NULL && s[0] != '\0') {
        *fixed = 1;
        if (kmdc_serial_parse(serial, s, strlen(s), NULL) != KMDC_OK)
            return kmdc_err_set(e, KMDC_ERR_FORMAT, "KMDC_TEST_SERIAL: '%s' is not a serial "
                                "(16 lowercase hex digits, 1 .. 7fffffffffffffff)", s);
        return KMDC_OK;
    }
#endif
    *fixed = 0;
    return kmdc_random_u63(serial, e);
}

static int
cmd_issue(globals *g, int argc, char **argv)
{
    static const struct option own[] = {
        { "address", required_argument, NULL, OPT_ADDRESS },
        { "url", required_argument, NULL, OPT_URL },
        { "out", required_argument, NULL, OPT_OUT },
        { "passphrase-file", required_argument, NULL, OPT_PASSFILE },
        { "force", no_argument, NULL, OPT_FORCE },
    };
    const command *c = find_command("issue");
    issue_opts o;
    kmdcadm_new_card row;
    kmdcadm_conflict conflict = KMDCADM_CONFLICT_NONE;
    kmdcadm_db *db = NULL;
    master_key *mk = NULL;
    kmdc_card *card = NULL;
    uint8_t uck[KMDC_KEY_LEN], dck[KMDC_KEY_LEN], ak[KMDC_KEY_LEN];
    char code[KMDC_ACCESS_CODE_LEN + 1];
    char pass[PASSPHRASE_MAX];
    char serialhex[17];
    uint8_t *img = NULL;
    size_t imglen = 0, wlen, ulen;
    char *tmp = NULL;
    uint64_t serial = 0;
    struct stat sb;
    kmdc_err e;
    int rc, first, attempt, intrans = 0, committed = 0, fixed = 0;

    memset(&o, 0, sizeof o);
    memset(&row, 0, sizeof row);
    memset(pass, 0, sizeof pass);
    memset(code, 0, sizeof code);
    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, own, sizeof own / sizeof own[0], issue_opt, &o,
                       &first);
    if (rc >= 0)
        return rc;
    rc = EXIT_OK;
    if (first < argc)
        return usage_error(c->name, "unexpected argument '%s'", argv[first]);
    if (!o.have_address || o.url == NULL || o.out == NULL)
        return usage_error(c->name, "issue needs --address A, --url U and --out FILE");
    if (strncmp(o.url, "https://", 8) != 0 && strncmp(o.url, "http://", 7) != 0)
        return usage_error(c->name, "--url is the datacenter's http:// or https:// URL");
    if (!o.force && lstat(o.out, &sb) == 0)
        return fail("%s exists: pass --force to replace it", o.out);

    mk = load_master_keys(g, c->name, &rc);
    if (mk == NULL)
        goto out;
    if (o.passfile != NULL && (rc = read_passphrase(o.passfile, pass, sizeof pass)) != EXIT_OK)
        goto out;
    rc = open_db(g, &db, 1);
    if (rc != EXIT_OK)
        goto out;

    /* The keys do not depend on the serial: draw them once. */
    if (kmdc_random(uck, sizeof uck, &e) != KMDC_OK
        || kmdc_random(dck, sizeof dck, &e) != KMDC_OK
        || kmdc_random(ak, sizeof ak, &e) != KMDC_OK
        || kmdc_access_code_new(code, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    row.address = o.address;
    row.key_id = mk->id;
    row.access_days = ACCESS_DAYS;
    /* 1. store the row (retrying on a serial collision), uncommitted */
    for (attempt = 0;; attempt++) {
        if (attempt == SERIAL_ATTEMPTS || (fixed && attempt > 0)) {
            if (fixed)
                rc = fail("KMDC_TEST_SERIAL: serial %016" PRIx64 " is taken", serial);
            else
                rc = fail("could not find a free serial in %d draws", SERIAL_ATTEMPTS);
            goto out;
        }
        if (draw_serial(&serial, &fixed, &e) != KMDC_OK
            || kmdc_wrap(row.up_chain, sizeof row.up_chain, &wlen, mk->id, mk->key, serial,
                         KMDC_FIELD_UP_CHAIN, 0, uck, sizeof uck, &e) != KMDC_OK
            || wlen != KMDCADM_WRAPPED_LEN
            || kmdc_wrap(row.down_chain, sizeof row.down_chain, &wlen, mk->id, mk->key, serial,
                         KMDC_FIELD_DOWN_CHAIN, 0, dck, sizeof dck, &e) != KMDC_OK
            || wlen != KMDCADM_WRAPPED_LEN
            || kmdc_wrap(row.auth_key, sizeof row.auth_key, &ulen, mk->id, mk->key, serial,
                         KMDC_FIELD_AUTH_KEY, 0, ak, sizeof ak, &e) != KMDC_OK
            || ulen != KMDCADM_WRAPPED_LEN
            || kmdc_access_code_mac(row.access_mac, mk->key, serial, code, &e) != KMDC_OK) {
            rc = e.msg[0] ? fail_err(&e) : fail("wrapped value of unexpected length");
            goto out;
        }
        row.serial = serial;
        if (kmdcadm_db_begin(db, &e) != KMDC_OK) {
            rc = fail_err(&e);
            goto out;
        }
        intrans = 1;
        if (kmdcadm_db_card_insert(db, &row, &conflict, &e) == KMDC_OK)
            break;
        kmdcadm_db_rollback(db);
        intrans = 0;
        if (conflict != KMDCADM_CONFLICT_SERIAL) {
            rc = fail_err(&e);
            goto out;
        }
    }
    kmdc_serial_format(serialhex, serial);

    /* 2. the card file, in a temp file beside its place */
    if (kmdc_card_new(&card, serial, o.address, o.url, uck, dck, ak, &e) != KMDC_OK
        || kmdc_card_serialize(card, pass[0] ? pass : NULL, &img, &imglen, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    rc = write_temp_card(o.out, img, imglen, &tmp);
    if (rc != EXIT_OK)
        goto out;

    /* 3. commit: from here the database has the card */
    if (kmdcadm_db_commit(db, &e) != KMDC_OK) {
        intrans = 0;
        if (e.code == KMDC_ERR_IO) {
            /* The answer to COMMIT was lost: the outcome is unknown. */
            rc = fail("%s; card %s may or may not be stored: its file is kept at %s. "
                      "If 'kmdcadm show %s' finds it, move that file to %s and give "
                      "the holder the access code below; otherwise delete the file",
                      e.msg, serialhex, tmp, serialhex, o.out);
            print_access_code(code);
            free(tmp);
            tmp = NULL;
        } else {
            rc = fail_err(&e);
        }
        goto out;
    }
    intrans = 0;
    committed = 1;

    /* 4. put the card file in place */
    if (place_card(tmp, o.out, o.force) != 0) {
        rc = fail("card %s is stored, but its file could not be moved to %s (%s): "
                  "it is at %s; move it there yourself",
                  serialhex, o.out, strerror(errno), tmp);
        print_access_code(code);
        free(tmp);
        tmp = NULL;
        goto out;
    }
    free(tmp);
    tmp = NULL;
    printf("serial: %s\n", serialhex);
    printf("card file: %s\n", o.out);
    print_access_code(code);
out:
    if (intrans)
        kmdcadm_db_rollback(db);
    if (tmp != NULL && !committed)
        (void)unlink(tmp);
    free(tmp);
    kmdcadm_db_close(db);
    kmdc_card_free(card);
    kmdc_freezero(img, imglen);
    kmdc_wipe(uck, sizeof uck);
    kmdc_wipe(dck, sizeof dck);
    kmdc_wipe(ak, sizeof ak);
    kmdc_wipe(code, sizeof code);
    kmdc_wipe(pass, sizeof pass);
    kmdc_wipe(&row, sizeof row);
    wipe_master_keys(g);
    return finish_output(rc);
}

/* --- list / show ---------------------------------------------------------------- */

typedef struct list_opts {
    kmdcadm_filter filter;
    char address[65];
    int json;
} list_opts;

static int
list_opt(void *ctx, int opt, const char *arg)
{
    list_opts *o = ctx;
    size_t len, i;

    switch (opt) {
    case OPT_STATUS:
        if (strcmp(arg, "issued") != 0 && strcmp(arg, "active") != 0
            && strcmp(arg, "suspended") != 0 && strcmp(arg, "revoked") != 0)
            return usage_error("list", "--status is issued, active, suspended or revoked");
        o->filter.status = arg;
        return 0;
    case OPT_ADDRESS:
        len = strlen(arg);
        if (len == 0 || len > 64)
            return usage_error("list", "an address is 1 to 64 characters");
        for (i = 0; i < len; i++)
            o->address[i] = (char)tolower((unsigned char)arg[i]);
        o->address[len] = '\0';
        o->filter.address = o->address;
        return 0;
    case OPT_JSON:
        o->json = 1;
        return 0;
    default:
        return 1;
    }
}

static int
cmd_list(globals *g, int argc, char **argv)
{
    static const struct option own[] = {
        { "status", required_argument, NULL, OPT_STATUS },
        { "address", required_argument, NULL, OPT_ADDRESS },
        { "json", no_argument, NULL, OPT_JSON },
    };
    const command *c = find_command("list");
    list_opts o;
    kmdcadm_db *db = NULL;
    kmdc_err e;
    int rc, first;

    memset(&o, 0, sizeof o);
    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, own, sizeof own / sizeof own[0], list_opt, &o,
                       &first);
    if (rc >= 0)
        return rc;
    if (first < argc)
        return usage_error(c->name, "unexpected argument '%s'", argv[first]);
    rc = open_db(g, &db, 1);
    if (rc != EXIT_OK)
        goto out;
    if (kmdcadm_db_card_list(db, &o.filter, o.json, stdout, &e) != KMDC_OK)
        rc = fail_err(&e);
out:
    kmdcadm_db_close(db);
    return finish_output(rc);
}

static int
show_opt(void *ctx, int opt, const char *arg)
{
    (void)arg;
    if (opt == OPT_JSON) {
        *(int *)ctx = 1;
        return 0;
    }
    return 1;
}

static int
cmd_show(globals *g, int argc, char **argv)
{
    static const struct option own[] = { { "json", no_argument, NULL, OPT_JSON } };
    const command *c = find_command("show");
    kmdcadm_db *db = NULL;
    uint64_t serial = 0;
    kmdc_err e;
    int rc, first, json = 0;

    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, own, 1, show_opt, &json, &first);
    if (rc >= 0)
        return rc;
    if (first + 1 != argc)
        return usage_error(c->name, "show takes one SERIAL");
    if (parse_serial(c->name, argv[first], &serial) != 0)
        return EXIT_USAGE;
    rc = open_db(g, &db, 1);
    if (rc != EXIT_OK)
        goto out;
    if (kmdcadm_db_card_show(db, serial, json, stdout, &e) != KMDC_OK)
        rc = fail_err(&e);
out:
    kmdcadm_db_close(db);
    return finish_output(rc);
}

/* --- suspend / resume / revoke ------------------------------------------------------ */

typedef struct reason_ctx {
    const char *cmd;
    const char *reason;
} reason_ctx;

static int
reason_opt(void *ctx, int opt, const char *arg)
{
    reason_ctx *rc = ctx;
    size_t i;

    if (opt != OPT_REASON)
        return 1;
    if (strlen(arg) > 500)
        return usage_error(rc->cmd, "--reason is at most 500 bytes");
    for (i = 0; arg[i] != '\0'; i++)
        if ((unsigned char)arg[i] < 0x20 || arg[i] == 0x7f)
            return usage_error(rc->cmd, "--reason is one line of text");
    rc->reason = arg;
    return 0;
}

static int
run_transition(globals *g, const char *name, kmdcadm_action action, int argc, char **argv)
{
    static const struct option own[] = { { "reason", required_argument, NULL, OPT_REASON } };
    const command *c = find_command(name);
    reason_ctx rctx = { name, NULL };
    kmdcadm_db *db = NULL;
    uint64_t serial = 0;
    char from[16], to[16], hex[17];
    kmdc_err e;
    int rc, first;

    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, own, 1, reason_opt, &rctx, &first);
    if (rc >= 0)
        return rc;
    if (first + 1 != argc)
        return usage_error(c->name, "%s takes one SERIAL", name);
    if (parse_serial(c->name, argv[first], &serial) != 0)
        return EXIT_USAGE;
    rc = open_db(g, &db, 1);
    if (rc != EXIT_OK)
        goto out;
    if (kmdcadm_db_card_transition(db, serial, action, rctx.reason, from, to, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    kmdc_serial_format(hex, serial);
    printf("card %s: %s -> %s\n", hex, from, to);
out:
    kmdcadm_db_close(db);
    return finish_output(rc);
}

static int
cmd_suspend(globals *g, int argc, char **argv)
{
    return run_transition(g, "suspend", KMDCADM_SUSPEND, argc, argv);
}

static int
cmd_resume(globals *g, int argc, char **argv)
{
    return run_transition(g, "resume", KMDCADM_RESUME, argc, argv);
}

static int
cmd_revoke(globals *g, int argc, char **argv)
{
    return run_transition(g, "revoke", KMDCADM_REVOKE, argc, argv);
}

/* --- shared by resync, rekey, purge, audit ----------------------------------------- */

/* The --master-key with this id, loaded; NULL when it was not given. */
static const master_key *
find_key(const globals *g, uint32_t id)
{
    size_t i;

    for (i = 0; i < g->nkeys; i++)
        if (g->keys[i].id == id && g->keys[i].loaded)
            return &g->keys[i];
    return NULL;
}

/*
 * Unwrap a stored value of card serial with the --master-key its id names,
 * into key.  *id_out (may be NULL) gets that id.  KMDC_ERR_NOTFOUND when the
 * key was not given, KMDC_ERR_AUTH when the value does not unwrap; both with
 * a message naming the card, the field, the counter and the id.
 */
static kmdc_status
unwrap_value(const globals *g, uint64_t serial, const char *field, uint64_t counter,
             const uint8_t wrapped[KMDCADM_WRAPPED_LEN], uint8_t key[KMDC_KEY_LEN],
             uint32_t *id_out, kmdc_err *e)
{
    const master_key *mk;
    uint8_t buf[KMDC_KEY_LEN + 16];
    size_t n = 0;
    uint32_t id = 0;
    char hex[17];
    kmdc_status st;

    kmdc_serial_format(hex, serial);
    st = kmdc_wrap_key_id(wrapped, KMDCADM_WRAPPED_LEN, &id, e);
    if (st != KMDC_OK)
        goto out;
    if (id_out != NULL)
        *id_out = id;
    mk = find_key(g, id);
    if (mk == NULL) {
        st = kmdc_err_set(e, KMDC_ERR_NOTFOUND,
                          "card %s: its %s is wrapped under master key id %" PRIu32
                          ", which was not given: add --master-key %" PRIu32 ":FILE",
                          hex, field, id, id);
        goto out;
    }
    st = kmdc_unwrap(buf, sizeof buf, &n, mk->key, serial, field, counter, wrapped,
                     KMDCADM_WRAPPED_LEN, e);
    if (st == KMDC_ERR_AUTH) {
        st = kmdc_err_set(e, KMDC_ERR_AUTH,
                          "card %s: its %s (counter %" PRIu64 ") does not unwrap under "
                          "master key id %" PRIu32 ": that key file is not the one it was "
                          "wrapped with, or the row was changed outside kmdc", hex, field,
                          counter, id);
        goto out;
    }
    if (st != KMDC_OK)
        goto out;
    if (n != KMDC_KEY_LEN) {
        st = kmdc_err_set(e, KMDC_ERR_FORMAT, "card %s: its %s has the wrong length",
                          hex, field);
        goto out;
    }
    memcpy(key, buf, KMDC_KEY_LEN);
out:
    kmdc_wipe(buf, sizeof buf);
    return st;
}

/* Wrap key for card serial, field and counter under mk into out (76 bytes). */
static kmdc_status
wrap_value(const master_key *mk, uint64_t serial, const char *field, uint64_t counter,
           const uint8_t key[KMDC_KEY_LEN], uint8_t out[KMDCADM_WRAPPED_LEN], kmdc_err *e)
{
    size_t n = 0;
    kmdc_status st;

    st = kmdc_wrap(out, KMDCADM_WRAPPED_LEN, &n, mk->id, mk->key, serial, field, counter,
                   key, KMDC_KEY_LEN, e);
    if (st == KMDC_OK && n != KMDCADM_WRAPPED_LEN)
        st = kmdc_err_set(e, KMDC_ERR_INTERNAL, "wrapped value of unexpected length");
    return st;
}

/* Parse a counter: decimal digits only, 0 .. 2^63-1. */
static int
parse_counter(const char *cmd, const char *opt, const char *s, uint64_t *v)
{
    unsigned long long x;
    char *end;
    size_t i;

    for (i = 0; s[i] != '\0'; i++)
        if (s[i] < '0' || s[i] > '9')
            break;
    if (i == 0 || s[i] != '\0' || i > 19)
        return usage_error(cmd, "%s takes a counter in 0 .. 9223372036854775807", opt);
    errno = 0;
    x = strtoull(s, &end, 10);
    if (errno != 0 || *end != '\0' || x > KMDC_U63_MAX)
        return usage_error(cmd, "%s takes a counter in 0 .. 9223372036854775807", opt);
    *v = (uint64_t)x;
    return 0;
}

/*
 * Parse a duration: decimal seconds, or a number followed by s, m, h or d
 * (docs/ADMIN.md, kmdcadm(8)), at most 100 years.  Returns 1 and sets *secs when s is one.
 */
static int
duration_value(const char *s, int64_t *secs)
{
    int64_t v = 0, mul = 1;
    size_t i;

    for (i = 0; s[i] >= '0' && s[i] <= '9'; i++) {
        if (i >= 12)
            return 0;
        v = v * 10 + (s[i] - '0');
    }
    if (i == 0)
        return 0;
    switch (s[i]) {
    case '\0': mul = 1; break;
    case 's': mul = 1; break;
    case 'm': mul = 60; break;
    case 'h': mul = 3600; break;
    case 'd': mul = 86400; break;
    default: return 0;
    }
    if (s[i] != '\0' && s[i + 1] != '\0')
        return 0;
    if (v > INT64_C(3153600000) / mul)   /* 100 years */
        return 0;
    *secs = v * mul;
    return 1;
}

/* --- resync -------------------------------------------------------------------------- */

/* The most steps resync takes in one go (a bounded walk of the chain: kmdcadm(8), resync). */
#define RESYNC_MAX_STEPS (UINT64_C(1) << 20)

typedef struct resync_opts {
    uint64_t up, down;
    int have_up, have_down;
} resync_opts;

static int
resync_opt(void *ctx, int opt, const char *arg)
{
    resync_opts *o = ctx;

    switch (opt) {
    case OPT_UP:
        o->have_up = 1;
        return parse_counter("resync", "--up", arg, &o->up);
    case OPT_DOWN:
        o->have_down = 1;
        return parse_counter("resync", "--down", arg, &o->down);
    default:
        return 1;
    }
}

/*
 * Move one chain of k from *next to target: unwrap CK_next (field, counter
 * *next), step it to CK_target, wrap it at target under newest.  Refuses to
 * go back or more than RESYNC_MAX_STEPS ahead (KMDC_ERR_ARG).
 */
static kmdc_status
resync_chain(const globals *g, const master_key *newest, uint64_t serial,
             const char *field, const char *name, uint64_t *next,
             uint8_t wrapped[KMDCADM_WRAPPED_LEN], uint64_t target, kmdc_err *e)
{
    uint8_t ck[KMDC_KEY_LEN];
    char hex[17];
    kmdc_status st;

    kmdc_serial_format(hex, serial);
    if (target < *next) {
        st = kmdc_err_set(e, KMDC_ERR_ARG,
                          "card %s: %s is %" PRIu64 ": resync never moves a counter back "
                          "(to %" PRIu64 "), that would reuse a key", hex, name, *next,
                          target);
        goto out;
    }
    if (target - *next > RESYNC_MAX_STEPS) {
        st = kmdc_err_set(e, KMDC_ERR_ARG,
                          "card %s: %s is %" PRIu64 ": %" PRIu64 " is more than %" PRIu64
                          " steps ahead; move it in several resyncs if you are sure",
                          hex, name, *next, target, RESYNC_MAX_STEPS);
        goto out;
    }
    st = unwrap_value(g, serial, field, *next, wrapped, ck, NULL, e);
    if (st != KMDC_OK)
        goto out;
    st = kmdc_chain_seek(ck, *next, target, NULL, e);
    if (st != KMDC_OK)
        goto out;
    st = wrap_value(newest, serial, field, target, ck, wrapped, e);
    if (st != KMDC_OK)
        goto out;
    *next = target;
out:
    kmdc_wipe(ck, sizeof ck);
    return st;
}

static int
cmd_resync(globals *g, int argc, char **argv)
{
    static const struct option own[] = {
        { "up", required_argument, NULL, OPT_UP },
        { "down", required_argument, NULL, OPT_DOWN },
    };
    const command *c = find_command("resync");
    resync_opts o;
    kmdcadm_card_keys k;
    kmdcadm_db *db = NULL;
    master_key *mk = NULL;
    uint64_t serial = 0, old_up = 0, old_down = 0;
    char hex[17];
    kmdc_err e;
    int rc, first, intrans = 0;

    memset(&o, 0, sizeof o);
    memset(&k, 0, sizeof k);
    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, own, sizeof own / sizeof own[0], resync_opt, &o,
                       &first);
    if (rc >= 0)
        return rc;
    rc = EXIT_OK;
    if (first + 1 != argc)
        return usage_error(c->name, "resync takes one SERIAL");
    if (parse_serial(c->name, argv[first], &serial) != 0)
        return EXIT_USAGE;
    if (!o.have_up && !o.have_down)
        return usage_error(c->name, "resync needs --up N, --down N or both");
    kmdc_serial_format(hex, serial);
    mk = load_master_keys(g, c->name, &rc);
    if (mk == NULL)
        goto out;
    rc = open_db(g, &db, 1);
    if (rc != EXIT_OK)
        goto out;
    if (kmdcadm_db_begin(db, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    intrans = 1;
    if (kmdcadm_db_card_keys_lock(db, serial, &k, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    if (strcmp(k.status, "revoked") == 0) {
        rc = fail("card %s is revoked: there is nothing to resync", hex);
        goto out;
    }
    /* Never wrap under an older key than the card already uses: a resync
     * with an outdated --master-key set would undo a rekey. */
    {
        const char *fields[3] = { KMDC_FIELD_UP_CHAIN, KMDC_FIELD_DOWN_CHAIN,
                                  KMDC_FIELD_AUTH_KEY };
        const uint8_t *vals[3] = { k.up_chain, k.down_chain, k.auth_key };
        uint32_t id = 0;
        size_t f;
        for (f = 0; f < 3; f++) {
            if (kmdc_wrap_key_id(vals[f], KMDCADM_WRAPPED_LEN, &id, &e) != KMDC_OK) {
                rc = fail_err(&e);
                goto out;
            }
            if (id > mk->id) {
                rc = fail("card %s: its %s is wrapped under master key id %" PRIu32
                          ", newer than the newest key given (%" PRIu32 "): add "
                          "--master-key %" PRIu32 ":FILE", hex, fields[f], id, mk->id, id);
                goto out;
            }
        }
    }
    old_up = k.up_next;
    old_down = k.down_next;
    if ((o.have_up && o.up != k.up_next
         && resync_chain(g, mk, serial, KMDC_FIELD_UP_CHAIN, "up_next", &k.up_next,
                         k.up_chain, o.up, &e) != KMDC_OK)
        || (o.have_down && o.down != k.down_next
            && resync_chain(g, mk, serial, KMDC_FIELD_DOWN_CHAIN, "down_next",
                            &k.down_next, k.down_chain, o.down, &e) != KMDC_OK)) {
        rc = fail_err(&e);
        goto out;
    }
    if (k.up_next == old_up && k.down_next == old_down) {
        kmdcadm_db_rollback(db);   /* nothing to change: end the transaction */
        intrans = 0;
    } else {
        if (kmdcadm_db_card_keys_store(db, &k, &e) != KMDC_OK
            || (k.up_next != old_up
                && kmdcadm_db_audit_resync(db, serial, "up", old_up, k.up_next, &e) != KMDC_OK)
            || (k.down_next != old_down
                && kmdcadm_db_audit_resync(db, serial, "down", old_down, k.down_next,
                                           &e) != KMDC_OK)) {
            rc = fail_err(&e);
            goto out;
        }
        if (kmdcadm_db_commit(db, &e) != KMDC_OK) {
            rc = fail_err(&e);   /* the rollback below ends a failed transaction */
            goto out;
        }
        intrans = 0;
    }
    if (o.have_up)
        printf("card %s: up_next %" PRIu64 " -> %" PRIu64 "%s\n", hex, old_up, k.up_next,
               old_up == k.up_next ? " (unchanged)" : "");
    if (o.have_down)
        printf("card %s: down_next %" PRIu64 " -> %" PRIu64 "%s\n", hex, old_down,
               k.down_next, old_down == k.down_next ? " (unchanged)" : "");
out:
    if (intrans)
        kmdcadm_db_rollback(db);
    kmdcadm_db_close(db);
    kmdc_wipe(&k, sizeof k);
    wipe_master_keys(g);
    return finish_output(rc);
}

/* --- rekey ---------------------------------------------------------------------------- */

/* Cards per transaction: short row locks while the service runs. */
#define REKEY_BATCH 100
/* Distinct master key ids reported. */
#define REKEY_MAX_IDS 64

typedef struct rekey_opts {
    int check;
} rekey_opts;

static int
rekey_opt(void *ctx, int opt, const char *arg)
{
    (void)arg;
    if (opt == OPT_CHECK) {
        ((rekey_opts *)ctx)->check = 1;
        return 0;
    }
    return 1;
}

/*
 * Rewrap one stored value under newest unless it is already under it.
 * *changed is set when the value was rewritten.
 */
static kmdc_status
rewrap_value(const globals *g, const master_key *newest, uint64_t serial,
             const char *field, uint64_t counter, uint8_t wrapped[KMDCADM_WRAPPED_LEN],
             int *changed, kmdc_err *e)
{
    uint8_t key[KMDC_KEY_LEN];
    uint32_t id = 0;
    kmdc_status st;

    *changed = 0;
    st = kmdc_wrap_key_id(wrapped, KMDCADM_WRAPPED_LEN, &id, e);
    if (st != KMDC_OK || id == newest->id)
        return st;
    st = unwrap_value(g, serial, field, counter, wrapped, key, NULL, e);
    if (st == KMDC_OK)
        st = wrap_value(newest, serial, field, counter, key, wrapped, e);
    if (st == KMDC_OK)
        *changed = 1;
    kmdc_wipe(key, sizeof key);
    return st;
}

/*
 * Report which master key ids the database still needs: the ids wrapped
 * values name, and the key ids of live access codes.  Sets *old when any id
 * other than newest is needed.  Prints to stdout.
 */
static int
report_key_use(kmdcadm_db *db, uint32_t newest, int *old)
{
    kmdcadm_key_use ids[REKEY_MAX_IDS];
    kmdcadm_code_use codes[REKEY_MAX_IDS];
    size_t nids = 0, ncodes = 0, i;
    kmdc_err e;
    int more = 0;

    kmdc_err_clear(&e);
    *old = 0;
    if (kmdcadm_db_key_ids(db, ids, REKEY_MAX_IDS, &nids, &more, &e) != KMDC_OK
        || kmdcadm_db_live_codes(db, newest, codes, REKEY_MAX_IDS, &ncodes, &e) != KMDC_OK)
        return fail_err(&e);
    for (i = 0; i < nids; i++) {
        printf("master key id %" PRIu32 ": %" PRIu64 " wrapped value%s\n", ids[i].key_id,
               ids[i].values, ids[i].values == 1 ? "" : "s");
        if (ids[i].key_id != newest)
            *old = 1;
    }
    if (more) {
        printf("(more master key ids are in use)\n");
        *old = 1;
    }
    for (i = 0; i < ncodes; i++) {
        printf("master key id %" PRIu32 ": %" PRIu64 " access code%s not yet used "
               "(valid until %s at the latest)\n", codes[i].key_id, codes[i].cards,
               codes[i].cards == 1 ? "" : "s", codes[i].latest_expiry);
        *old = 1;
    }
    if (ncodes > 0)
        printf("An access code is checked with the master key it was made with: keep "
               "those key files until the cards are activated or their codes expire, "
               "or revoke the cards.\n");
    return EXIT_OK;
}

/* rekey --check: verify every value unwraps under the given keys, then report. */
static int
rekey_check(const globals *g, kmdcadm_db *db, const master_key *newest)
{
    kmdcadm_card_keys *rows = NULL;
    uint64_t after = 0, verified = 0, failures = 0;
    uint8_t key[KMDC_KEY_LEN];
    size_t n = 0, i, f;
    kmdc_err e;
    int rc = EXIT_OK, old = 0;

    kmdc_err_clear(&e);
    rows = calloc(REKEY_BATCH, sizeof *rows);
    if (rows == NULL)
        return fail("out of memory");
    do {
        if (kmdcadm_db_card_keys_batch(db, after, 0, rows, REKEY_BATCH, &n, &e) != KMDC_OK) {
            rc = fail_err(&e);
            goto out;
        }
        for (i = 0; i < n; i++) {
            const char *fields[3] = { KMDC_FIELD_UP_CHAIN, KMDC_FIELD_DOWN_CHAIN,
                                      KMDC_FIELD_AUTH_KEY };
            const uint8_t *vals[3] = { rows[i].up_chain, rows[i].down_chain,
                                       rows[i].auth_key };
            const uint64_t counters[3] = { rows[i].up_next, rows[i].down_next, 0 };
            for (f = 0; f < 3; f++) {
                kmdc_status st = unwrap_value(g, rows[i].serial, fields[f], counters[f],
                                              vals[f], key, NULL, &e);
                kmdc_wipe(key, sizeof key);
                if (st == KMDC_OK) {
                    verified++;
                } else if (st != KMDC_ERR_NOTFOUND) {
                    /* a key that was not given is reported by id below */
                    failures++;
                    fprintf(stderr, "kmdcadm: %s\n", e.msg);
                }
            }
        }
        if (n > 0)
            after = rows[n - 1].serial;
    } while (n == REKEY_BATCH);
    printf("%" PRIu64 " wrapped value%s under the given master keys\n", verified,
           verified == 1 ? " unwraps" : "s unwrap");
    rc = report_key_use(db, newest->id, &old);
    if (rc != EXIT_OK)
        goto out;
    if (failures > 0) {
        rc = fail("%" PRIu64 " wrapped value%s not unwrap: do not destroy any master key "
                  "file", failures, failures == 1 ? " does" : "s do");
    } else if (old) {
        printf("master key ids other than %" PRIu32 " are still needed: run 'kmdcadm rekey' "
               "and keep the older key files\n", newest->id);
        rc = EXIT_FAIL;
    } else {
        printf("only master key id %" PRIu32 " is needed: older master key files may be "
               "destroyed\n", newest->id);
    }
out:
    free(rows);
    return rc;
}

static int
cmd_rekey(globals *g, int argc, char **argv)
{
    static const struct option own[] = { { "check", no_argument, NULL, OPT_CHECK } };
    const command *c = find_command("rekey");
    rekey_opts o = { 0 };
    kmdcadm_card_keys *rows = NULL;
    kmdcadm_db *db = NULL;
    master_key *mk = NULL;
    uint64_t after = 0, cards = 0, values = 0, current = 0;
    size_t n = 0, i;
    kmdc_err e;
    int rc, first, intrans = 0, old = 0;

    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, own, 1, rekey_opt, &o, &first);
    if (rc >= 0)
        return rc;
    rc = EXIT_OK;
    if (first < argc)
        return usage_error(c->name, "unexpected argument '%s'", argv[first]);
    mk = load_master_keys(g, c->name, &rc);
    if (mk == NULL)
        goto out;
    rc = open_db(g, &db, 1);
    if (rc != EXIT_OK)
        goto out;
    if (o.check) {
        rc = rekey_check(g, db, mk);
        goto out;
    }
    rows = calloc(REKEY_BATCH, sizeof *rows);
    if (rows == NULL) {
        rc = fail("out of memory");
        goto out;
    }
    do {
        if (kmdcadm_db_begin(db, &e) != KMDC_OK) {
            rc = fail_err(&e);
            goto out;
        }
        intrans = 1;
        if (kmdcadm_db_card_keys_batch(db, after, 1, rows, REKEY_BATCH, &n, &e) != KMDC_OK) {
            rc = fail_err(&e);
            goto out;
        }
        for (i = 0; i < n; i++) {
            kmdcadm_card_keys *k = &rows[i];
            int cu = 0, cd = 0, ca = 0;
            uint32_t kid;
            if (rewrap_value(g, mk, k->serial, KMDC_FIELD_UP_CHAIN, k->up_next, k->up_chain,
                             &cu, &e) != KMDC_OK
                || rewrap_value(g, mk, k->serial, KMDC_FIELD_DOWN_CHAIN, k->down_next,
                                k->down_chain, &cd, &e) != KMDC_OK
                || rewrap_value(g, mk, k->serial, KMDC_FIELD_AUTH_KEY, 0, k->auth_key, &ca,
                                &e) != KMDC_OK) {
                rc = fail_err(&e);
                goto out;
            }
            /* key_id keys a live access code: it stays until the card is
             * activated (the module then sets it); otherwise it follows. */
            kid = k->code_live ? k->key_id : mk->id;
            if (cu + cd + ca == 0 && kid == k->key_id) {
                current++;
                continue;
            }
            k->key_id = kid;
            if (kmdcadm_db_card_keys_store(db, k, &e) != KMDC_OK) {
                rc = fail_err(&e);
                goto out;
            }
            values += (uint64_t)(cu + cd + ca);
            if (cu + cd + ca > 0)
                cards++;
            else
                current++;
        }
        if (kmdcadm_db_commit(db, &e) != KMDC_OK) {
            intrans = 0;
            rc = fail_err(&e);
            goto out;
        }
        intrans = 0;
        if (n > 0)
            after = rows[n - 1].serial;
    } while (n == REKEY_BATCH);
    if (kmdcadm_db_audit_rekey(db, mk->id, cards, values, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    printf("rewrapped %" PRIu64 " value%s of %" PRIu64 " card%s under master key id %"
           PRIu32 "; %" PRIu64 " card%s already current\n", values, values == 1 ? "" : "s",
           cards, cards == 1 ? "" : "s", mk->id, current, current == 1 ? "" : "s");
    rc = report_key_use(db, mk->id, &old);
    if (rc != EXIT_OK)
        goto out;
    if (old)
        printf("some values still need an older master key: keep its file; "
               "'kmdcadm rekey --check' tells when it may go\n");
    else
        printf("no value needs a master key other than id %" PRIu32 "; confirm with "
               "'kmdcadm rekey --check' given only that key, then destroy the older "
               "key files\n", mk->id);
out:
    if (intrans)
        kmdcadm_db_rollback(db);
    if (rows != NULL)
        kmdc_freezero(rows, REKEY_BATCH * sizeof *rows);
    kmdcadm_db_close(db);
    wipe_master_keys(g);
    return finish_output(rc);
}

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

    if (!duration_value(arg, &v))
        return usage_error("purge", "%s takes a duration: seconds, or a number with s, m, "
                           "h or d (e.g. 2d)", opt);
    if (v < floor)
        return usage_error("purge", "%s is at least %" PRId64 " seconds (see kmdcadm(8))",
                           opt, floor);
    *out = v;
    return 0;
}

static int
purge_opt(void *ctx, int opt, const char *arg)
{
    kmdcadm_purge_opts *o = ctx;

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

static int
cmd_purge(globals *g, int argc, char **argv)
{
    static const struct option own[] = {
        { "dry-run", no_argument, NULL, OPT_DRY_RUN },
        { "receipt-age", required_argument, NULL, OPT_RECEIPT_AGE },
        { "tombstone-age", required_argument, NULL, OPT_TOMBSTONE_AGE },
        { "upload-age", required_argument, NULL, OPT_UPLOAD_AGE },
        { "nonce-age", required_argument, NULL, OPT_NONCE_AGE },
    };
    const command *c = find_command("purge");
    kmdcadm_purge_opts o;
    kmdcadm_purge_counts n;
    kmdcadm_db *db = NULL;
    kmdc_err e;
    int rc, first;

    memset(&o, 0, sizeof o);
    memset(&n, 0, sizeof n);
    o.receipt_age = PURGE_RECEIPT_AGE;
    o.tombstone_age = PURGE_TOMBSTONE_AGE;
    o.upload_age = PURGE_UPLOAD_AGE;
    o.nonce_age = PURGE_NONCE_AGE;
    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, own, sizeof own / sizeof own[0], purge_opt, &o,
                       &first);
    if (rc >= 0)
        return rc;
    if (first < argc)
        return usage_error(c->name, "unexpected argument '%s'", argv[first]);
    rc = open_db(g, &db, 1);
    if (rc != EXIT_OK)
        goto out;
    if (kmdcadm_db_purge(db, &o, &n, &e) != KMDC_OK) {
        rc = fail_err(&e);
        goto out;
    }
    if (o.dry_run)
        printf("dry run: what a purge would remove now; nothing was changed\n");
    printf("expired     %" PRIu64 "\n", n.expired);
    printf("uploads     %" PRIu64 "\n", n.uploads);
    printf("orphans     %" PRIu64 "\n", n.orphans);
    printf("receipts    %" PRIu64 "\n", n.receipts);
    printf("nonces      %" PRIu64 "\n", n.nonces);
    printf("tombstones  %" PRIu64 "\n", n.tombstones);
    printf("messages    %" PRIu64 "\n", n.messages);
out:
    kmdcadm_db_close(db);
    return finish_output(rc);
}

/* --- audit ---------------------------------------------------------------------------- */

typedef struct audit_opts {
    kmdcadm_audit_query q;
} audit_opts;

static int
audit_opt(void *ctx, int opt, const char *arg)
{
    audit_opts *o = ctx;
    size_t i;
    int64_t v;

    switch (opt) {
    case OPT_SERIAL:
        return parse_serial("audit", arg, &o->q.serial);
    case OPT_SINCE:
        if (duration_value(arg, &v)) {
            o->q.since_secs = v;
            o->q.since = NULL;
            return 0;
        }
        if (arg[0] == '\0' || strlen(arg) > 64)
            return usage_error("audit", "--since takes a time or a duration");
        for (i = 0; arg[i] != '\0'; i++)
            if ((unsigned char)arg[i] < 0x20 || (unsigned char)arg[i] > 0x7e)
                return usage_error("audit", "--since takes a time or a duration");
        o->q.since = arg;
        o->q.since_secs = -1;
        return 0;
    case OPT_LIMIT:
        if (!duration_value(arg, &v) || arg[strspn(arg, "0123456789")] != '\0')
            return usage_error("audit", "--limit takes a number of rows (0: all)");
        o->q.limit = v;
        return 0;
    case OPT_JSON:
        o->q.json = 1;
        return 0;
    default:
        return 1;
    }
}

static int
cmd_audit(globals *g, int argc, char **argv)
{
    static const struct option own[] = {
        { "serial", required_argument, NULL, OPT_SERIAL },
        { "since", required_argument, NULL, OPT_SINCE },
        { "limit", required_argument, NULL, OPT_LIMIT },
        { "json", no_argument, NULL, OPT_JSON },
    };
    const command *c = find_command("audit");
    audit_opts o;
    kmdcadm_db *db = NULL;
    kmdc_err e;
    int rc, first;

    memset(&o, 0, sizeof o);
    o.q.since_secs = -1;
    o.q.limit = 100;
    kmdc_err_clear(&e);
    rc = parse_options(g, c, argc, argv, own, sizeof own / sizeof own[0], audit_opt, &o,
                       &first);
    if (rc >= 0)
        return rc;
    if (first < argc)
        return usage_error(c->name, "unexpected argument '%s'", argv[first]);
    rc = open_db(g, &db, 1);
    if (rc != EXIT_OK)
        goto out;
    if (kmdcadm_db_audit_print(db, &o.q, stdout, &e) != KMDC_OK)
        rc = e.code == KMDC_ERR_FORMAT ? usage_error(c->name, "%s", e.msg) : fail_err(&e);
out:
    kmdcadm_db_close(db);
    return finish_output(rc);
}

/* --- dispatch ------------------------------------------------------------------------- */

static const command commands[] = {
    { "setup", cmd_setup,
      "setup [--database D] [--owner R] [--httpd-role R] [--httpd-user U] "
      "[--admin-user U] [--key-dir DIR] [--no-key] [--peer-map] [--as USER] "
      "[--print-grants]",
      "Prepare everything the module needs, in one step, on a connection as a\n"
      "PostgreSQL superuser: the roles R (default kmdc_owner: owns the schema, what\n"
      "kmdcadm connects as) and --httpd-role (default kmdc_httpd: httpd's children,\n"
      "only the grants of docs/ADMIN.md section 2), the database D (default kmdc)\n"
      "owned by the owner, with PUBLIC's rights revoked, the schema (migrated as the\n"
      "owner) and the grants; then a master key: the folder DIR (default /etc/kmdc) is\n"
      "created with mode 0700 and a new DIR/master-1.key with mode 0600, both owned by\n"
      "the user running kmdcadm (root: httpd reads master keys before it drops\n"
      "privileges), unless a master-N.key is there.  Every step looks first: running it\n"
      "again changes nothing.  Prints each step and the KmdcDatabase and KmdcMasterKey\n"
      "lines to use.\n"
      "  --peer-map      also add to the server's pg_ident.conf the map kmdc (system\n"
      "                  user --httpd-user, default www-data, as the httpd role;\n"
      "                  --admin-user, default the user running kmdcadm, as the owner)\n"
      "                  and to pg_hba.conf, above its rules, 'local D R1,R2 peer\n"
      "                  map=kmdc'; then reload PostgreSQL (the files must be writable\n"
      "                  by the user that connects: see --as)\n"
      "  --as USER       do the database part as system user USER (peer authentication\n"
      "                  over the Unix socket); default postgres when kmdcadm runs as\n"
      "                  root without --db and without PGUSER; --as '' for none\n"
      "  --no-key        no master key\n"
      "  --print-grants  print the GRANT statements for the httpd role and stop\n" },
    { "migrate", cmd_migrate, "migrate [--sqldir DIR]",
      "Apply the schema migrations the database lacks, in order, each in one\n"
      "transaction, under an advisory lock (two migrators never race).  Running it\n"
      "again does nothing.  The migrations folder is --sqldir DIR, else $KMDC_SQLDIR,\n"
      "else the source tree's sql/ when kmdcadm runs from a build tree, else the\n"
      "installed folder " KMDC_SQLDIR ".\n" },
    { "keygen", cmd_keygen, "keygen --out FILE",
      "Write a new master key (32 random bytes as 64 hex digits) to FILE, created\n"
      "with mode 0600; an existing FILE is never replaced.  Keep master keys out of\n"
      "database backups.\n" },
    { "issue", cmd_issue,
      "issue --address A --url U --out FILE [--passphrase-file F] [--force]",
      "Issue a card for mailbox address A (lower-cased; [a-z0-9][a-z0-9._-]{0,63})\n"
      "served at datacenter URL U, and write its card file to FILE (mode 0600;\n"
      "an existing FILE is replaced only with --force).  Needs --master-key: the\n"
      "card's keys are stored wrapped under the highest master key.  Prints the\n"
      "serial and the access code, once; the code activates the card within 7 days.\n"
      "  --passphrase-file F  protect the card file with the first line of F\n"
      "Fails when a card for A that is not revoked exists.\n" },
    { "list", cmd_list, "list [--status S] [--address A] [--json]",
      "List the cards: serial, address, status, locked, up_next, down_next, created\n"
      "(UTC).  Never shows a key.\n"
      "  --status S   only cards in status S (issued, active, suspended, revoked)\n"
      "  --address A  only cards for address A\n"
      "  --json       one JSON array instead of columns\n" },
    { "show", cmd_show, "show SERIAL [--json]",
      "Show one card (SERIAL: its 16 hex digits) with its delivery and message\n"
      "counts.  Never shows a key.\n" },
    { "suspend", cmd_suspend, "suspend SERIAL [--reason TEXT]",
      "Suspend an issued or active card: the datacenter refuses it until resumed.\n"
      "Writes an audit log row (with TEXT: never put an address or a secret in it).\n" },
    { "resume", cmd_resume, "resume SERIAL [--reason TEXT]",
      "Resume a suspended card (to active, or to issued if it was never\n"
      "activated).  Writes an audit log row.\n" },
    { "revoke", cmd_revoke, "revoke SERIAL [--reason TEXT]",
      "Revoke a card for good: it cannot be resumed, and its address may be issued\n"
      "a new card.  Writes an audit log row.\n" },
    { "resync", cmd_resync, "resync SERIAL [--up N] [--down N]",
      "Move a card's datacenter counters forward to N (up_next with --up, down_next\n"
      "with --down), stepping its stored chain key to match, in one transaction with\n"
      "the row locked.  Never moves a counter back, nor more than 1048576 steps at\n"
      "once; a counter already at N is left as it is.  Needs --master-key (the chain\n"
      "is unwrapped with the key it names and rewrapped under the highest).  Use it\n"
      "when the database is behind a card (restored from a backup, or the card\n"
      "skipped more counters than the window allows); 'kmdc card' shows the card's\n"
      "counters.  Writes an audit row per chain moved.\n"
      "  --up N    set up_next to N (0 .. 9223372036854775807)\n"
      "  --down N  set down_next to N\n" },
    { "rekey", cmd_rekey, "rekey [--check]",
      "Rewrap every card's up_chain, down_chain and auth_key under the highest\n"
      "--master-key, 100 cards per transaction (safe while the service runs; give\n"
      "httpd the new key with KmdcMasterKey first).  Every key a value names must be\n"
      "given.  Access codes are not rewrapped: a card not yet activated keeps the key\n"
      "its code was made with until it is activated or the code expires.  Prints what\n"
      "was rewrapped and which ids are still needed.\n"
      "  --check  change nothing: check that every value unwraps under the given keys\n"
      "           and exit 0 only when no master key but the highest is needed, else 1\n"
      "           (listing the ids in use).  Destroy an old master key file only after\n"
      "           'kmdcadm rekey --check' given only the new key exits 0.\n" },
    { "purge", cmd_purge,
      "purge [--dry-run] [--receipt-age D] [--tombstone-age D] [--upload-age D] "
      "[--nonce-age D]",
      "Remove what the datacenter no longer needs, in short transactions that skip\n"
      "rows the service holds: tombstone queued deliveries past their expiry; delete\n"
      "the payload of messages with no queued delivery, uploads no message references\n"
      "older than --upload-age (a crashed intake), receipts older than --receipt-age,\n"
      "request nonces older than --nonce-age, delivered or expired deliveries older\n"
      "than --tombstone-age, then messages left with no delivery and no receipt.\n"
      "Prints the count per kind; writes an audit row.  D is seconds or a number with\n"
      "s, m, h or d.\n"
      "  --dry-run           print the counts only, change nothing\n"
      "  --receipt-age D     default 2d (KmdcEnvelopeMaxAge 24h + 1 day), at least 1d\n"
      "  --tombstone-age D   default 30d, at least 1d\n"
      "  --upload-age D      default 1h, at least 10m: longer than the longest upload\n"
      "  --nonce-age D       default 600s, at least 600s: twice KmdcAuthSkew\n" },
    { "audit", cmd_audit, "audit [--serial S] [--since TIME] [--limit N] [--json]",
      "Print the audit log, newest first: time (UTC), serial, event, detail.\n"
      "  --serial S    only rows of card S\n"
      "  --since TIME  only rows since TIME: a date/time PostgreSQL reads (2024-05-01,\n"
      "                '2024-05-01 12:00+00') or a duration back from now (90m, 2d)\n"
      "  --limit N     at most N rows (default 100; 0 for all)\n"
      "  --json        one JSON array instead of columns\n" },
};

static const command *
find_command(const char *name)
{
    size_t i;

    for (i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, name) == 0)
            return &commands[i];
    return NULL;
}

static void
print_main_help(void)
{
    size_t i;

    printf("Usage: kmdcadm [GLOBAL OPTIONS] COMMAND [OPTIONS]\n\n"
           "The mod_kmdc datacenter's administration tool.\n\nCommands:\n");
    for (i = 0; i < sizeof commands / sizeof commands[0]; i++)
        printf("  %s\n", commands[i].synopsis);
    printf("  help [COMMAND]\n");
    printf("\n%s\nExit status: 0 done, 1 the operation failed, 2 usage error.\n",
           global_help);
}

int
main(int argc, char **argv)
{
    static const struct option glob[] = {
        GLOBAL_OPTIONS,
        { NULL, 0, NULL, 0 }
    };
    globals g;
    const command *c;
    int opt, r;

    memset(&g, 0, sizeof g);
    opterr = 0;
    /* "+": stop at the command name; the command parses the rest. */
    while ((opt = getopt_long(argc, argv, "+:h", glob, NULL)) != -1) {
        if (opt == 'h' || opt == OPT_HELP) {
            print_main_help();
            return finish_output(EXIT_OK);
        }
        if (opt == OPT_VERSION) {
            printf("kmdcadm %s\n", PACKAGE_VERSION);
            return finish_output(EXIT_OK);
        }
        if (opt == '?')
            return usage_error(NULL, "unknown option '%s'", argv[optind - 1]);
        if (opt == ':')
            return usage_error(NULL, "option '%s' needs a value", argv[optind - 1]);
        r = global_option(&g, NULL, opt, optarg);
        if (r < 0)
            return EXIT_USAGE;
    }
    if (optind >= argc)
        return usage_error(NULL, "no command given");
    if (strcmp(argv[optind], "help") == 0) {
        if (optind + 1 < argc && (c = find_command(argv[optind + 1])) != NULL)
            print_command_help(c);
        else
            print_main_help();
        return finish_output(EXIT_OK);
    }
    c = find_command(argv[optind]);
    if (c == NULL)
        return usage_error(NULL, "unknown command '%s'", argv[optind]);
    return c->run(&g, argc - optind, argv + optind);
}
