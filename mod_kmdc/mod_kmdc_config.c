/*
 * mod_kmdc_config.c - directives, merge and the start-up checks of mod_kmdc.
 *
 * Values are checked where the directive is read, so a bad value stops httpd
 * with "Syntax error on line N of FILE: <directive>: ...".  What depends on
 * the whole configuration (where the handler is used, that the database and
 * keys it needs are there, the key files themselves) is checked once the
 * configuration is complete, in kmdc_conf_startup().
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <string.h>
#include <sys/stat.h>

#include "apr_fnmatch.h"
#include "apr_hash.h"
#include "apr_strings.h"
#include "httpd.h"
#include "http_config.h"
#include "http_log.h"
#include "util_cfgtree.h"

#include "kmdc_intake.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"

#include "mod_kmdc.h"
#include "mod_kmdc_config.h"
#include "mod_kmdc_store.h"

/* ------------------------------------------------------------------------ */
/* create / merge                                                            */

void *kmdc_conf_create_server(apr_pool_t *p, server_rec *s)
{
    kmdc_srv_conf *sc = apr_pcalloc(p, sizeof(*sc));

    (void)s;
    sc->conninfo = NULL;
    sc->listen_conninfo = NULL;
    sc->db_pooling = KMDC_CONF_UNSET;
    sc->master_key_files = NULL;
    sc->seq_window = KMDC_CONF_UNSET;
    sc->envelope_max_age = KMDC_CONF_UNSET;
    sc->max_document_size = KMDC_CONF_UNSET;
    sc->max_recipients = KMDC_CONF_UNSET;
    sc->max_uploads_per_card = KMDC_CONF_UNSET;
    sc->db_pool_min = KMDC_CONF_UNSET;
    sc->db_pool_max = KMDC_CONF_UNSET;
    sc->db_pool_idle = KMDC_CONF_UNSET;
    sc->mailbox_ttl = KMDC_CONF_UNSET;
    sc->mailbox_quota_count = KMDC_CONF_UNSET;
    sc->mailbox_quota_bytes = KMDC_CONF_UNSET;
    sc->auth_skew = KMDC_CONF_UNSET;
    return sc;
}

#define MERGE_PTR(f) (add->f != NULL ? add->f : base->f)
#define MERGE_VAL(f) (add->f != KMDC_CONF_UNSET ? add->f : base->f)

void *kmdc_conf_merge_server(apr_pool_t *p, void *basev, void *addv)
{
    const kmdc_srv_conf *base = basev;
    const kmdc_srv_conf *add = addv;
    kmdc_srv_conf *sc = apr_pcalloc(p, sizeof(*sc));

    sc->conninfo = MERGE_PTR(conninfo);
    sc->listen_conninfo = MERGE_PTR(listen_conninfo);
    sc->db_pooling = MERGE_VAL(db_pooling);
    sc->master_key_files = MERGE_PTR(master_key_files);
    sc->seq_window = MERGE_VAL(seq_window);
    sc->envelope_max_age = MERGE_VAL(envelope_max_age);
    sc->max_document_size = MERGE_VAL(max_document_size);
    sc->max_recipients = MERGE_VAL(max_recipients);
    sc->max_uploads_per_card = MERGE_VAL(max_uploads_per_card);
    sc->db_pool_min = MERGE_VAL(db_pool_min);
    sc->db_pool_max = MERGE_VAL(db_pool_max);
    sc->db_pool_idle = MERGE_VAL(db_pool_idle);
    sc->mailbox_ttl = MERGE_VAL(mailbox_ttl);
    sc->mailbox_quota_count = MERGE_VAL(mailbox_quota_count);
    sc->mailbox_quota_bytes = MERGE_VAL(mailbox_quota_bytes);
    sc->auth_skew = MERGE_VAL(auth_skew);
    /* start-up fields are filled per server by kmdc_conf_startup() */
    return sc;
}

kmdc_srv_conf *kmdc_conf_get(const server_rec *s)
{
    return ap_get_module_config(s->module_config, &kmdc_module);
}

/* ------------------------------------------------------------------------ */
/* value parsers                                                             */

/* Parse the leading decimal digits of arg into *v (no sign, no spaces),
 * leaving *end at the first non-digit.  NULL on success. */
static const char *parse_digits(apr_pool_t *p, const char *directive,
                                const char *arg, apr_int64_t *v,
                                const char **end)
{
    const char *c = arg;
    apr_int64_t n = 0;

    if (*c < '0' || *c > '9') {
        return apr_psprintf(p, "%s: '%s' is not a number", directive, arg);
    }
    for (; *c >= '0' && *c <= '9'; c++) {
        if (n > (APR_INT64_MAX - (*c - '0')) / 10) {
            return apr_psprintf(p, "%s: '%s' is too large", directive, arg);
        }
        n = n * 10 + (*c - '0');
    }
    *v = n;
    *end = c;
    return NULL;
}

/* Multiply v by m, refusing overflow. */
static const char *scale(apr_pool_t *p, const char *directive, const char *arg,
                         apr_int64_t *v, apr_int64_t m)
{
    if (*v > APR_INT64_MAX / m) {
        return apr_psprintf(p, "%s: '%s' is too large", directive, arg);
    }
    *v *= m;
    return NULL;
}

const char *kmdc_conf_parse_duration(apr_pool_t *p, const char *directive,
                                     const char *arg, apr_int64_t *out)
{
    apr_int64_t v = 0;
    const char *end = NULL;
    const char *err = parse_digits(p, directive, arg, &v, &end);
    apr_int64_t mult = 1;

    if (err != NULL) {
        return err;
    }
    switch (*end) {
    case '\0': mult = 1; break;
    case 's': mult = 1; end++; break;
    case 'm': mult = 60; end++; break;
    case 'h': mult = 3600; end++; break;
    case 'd': mult = 86400; end++; break;
    default: end = NULL; break;
    }
    if (end == NULL || *end != '\0') {
        return apr_psprintf(p, "%s: '%s' is not a duration; use seconds, or a "
                            "number with one suffix s, m, h or d (e.g. 24h)",
                            directive, arg);
    }
    if ((err = scale(p, directive, arg, &v, mult)) != NULL) {
        return err;
    }
    *out = v;
    return NULL;
}

const char *kmdc_conf_parse_size(apr_pool_t *p, const char *directive,
                                 const char *arg, apr_int64_t *out)
{
    apr_int64_t v = 0;
    const char *end = NULL;
    const char *err = parse_digits(p, directive, arg, &v, &end);
    apr_int64_t mult = 1;

    if (err != NULL) {
        return err;
    }
    switch (*end) {
    case '\0': mult = 1; break;
    case 'k': case 'K': mult = APR_INT64_C(1) << 10; end++; break;
    case 'm': case 'M': mult = APR_INT64_C(1) << 20; end++; break;
    case 'g': case 'G': mult = APR_INT64_C(1) << 30; end++; break;
    default: end = NULL; break;
    }
    if (end == NULL || *end != '\0') {
        return apr_psprintf(p, "%s: '%s' is not a size; use bytes, or a number "
                            "with one suffix K, M or G (powers of 1024, e.g. 1G)",
                            directive, arg);
    }
    if ((err = scale(p, directive, arg, &v, mult)) != NULL) {
        return err;
    }
    *out = v;
    return NULL;
}

/* A plain decimal integer in lo..hi. */
static const char *parse_int(apr_pool_t *p, const char *directive,
                             const char *arg, apr_int64_t lo, apr_int64_t hi,
                             apr_int64_t *out)
{
    apr_int64_t v = 0;
    const char *end = NULL;
    const char *err = parse_digits(p, directive, arg, &v, &end);

    if (err != NULL) {
        return err;
    }
    if (*end != '\0') {
        return apr_psprintf(p, "%s: '%s' is not a number", directive, arg);
    }
    if (v < lo || v > hi) {
        return apr_psprintf(p, "%s: %s is out of range; use a number from %"
                            APR_INT64_T_FMT " to %" APR_INT64_T_FMT,
                            directive, arg, lo, hi);
    }
    *out = v;
    return NULL;
}

static const char *check_range(apr_pool_t *p, const char *directive,
                               const char *arg, apr_int64_t v, apr_int64_t lo,
                               apr_int64_t hi, const char *unit)
{
    if (v < lo || v > hi) {
        return apr_psprintf(p, "%s: %s is out of range; use %" APR_INT64_T_FMT
                            " to %" APR_INT64_T_FMT " %s", directive, arg, lo,
                            hi, unit);
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* directive handlers                                                        */

static kmdc_srv_conf *cmd_conf(cmd_parms *cmd)
{
    return kmdc_conf_get(cmd->server);
}

static const char *set_database(cmd_parms *cmd, void *dc, const char *arg)
{
    kmdc_srv_conf *sc = cmd_conf(cmd);
    const char *err = NULL;

    (void)dc;
    if (*arg == '\0') {
        return apr_psprintf(cmd->pool, "%s: the connection string is empty; "
                            "give a libpq conninfo such as \"host=/run/postgresql "
                            "dbname=kmdc\"", KMDC_DIR_DATABASE);
    }
    if ((err = kmdc_db_conninfo_problem(cmd->pool, KMDC_DIR_DATABASE, arg)) != NULL) {
        return err;
    }
    sc->conninfo = arg;
    return NULL;
}

static const char *set_listen_database(cmd_parms *cmd, void *dc, const char *arg)
{
    const char *err = NULL;

    (void)dc;
    if (*arg == '\0') {
        return apr_psprintf(cmd->pool, "%s: the connection string is empty",
                            KMDC_DIR_LISTEN_DATABASE);
    }
    if ((err = kmdc_db_conninfo_problem(cmd->pool, KMDC_DIR_LISTEN_DATABASE, arg))
        != NULL) {
        return err;
    }
    cmd_conf(cmd)->listen_conninfo = arg;
    return NULL;
}

static const char *set_database_pooling(cmd_parms *cmd, void *dc, const char *arg)
{
    (void)dc;
    if (strcasecmp(arg, "session") == 0) {
        cmd_conf(cmd)->db_pooling = KMDC_POOLING_SESSION;
    }
    else if (strcasecmp(arg, "transaction") == 0) {
        cmd_conf(cmd)->db_pooling = KMDC_POOLING_TRANSACTION;
    }
    else {
        return apr_psprintf(cmd->pool, "%s takes session or transaction, not \"%s\"",
                            KMDC_DIR_DATABASE_POOLING, arg);
    }
    return NULL;
}

static const char *set_master_key(cmd_parms *cmd, void *dc, const char *id_arg,
                                  const char *file_arg)
{
    kmdc_srv_conf *sc = cmd_conf(cmd);
    kmdc_master_key_conf *mk = NULL;
    apr_int64_t id = 0;
    const char *path = NULL;
    const char *err = NULL;
    int i;

    (void)dc;
    err = parse_int(cmd->pool, KMDC_DIR_MASTER_KEY, id_arg, 1,
                    KMDC_MASTER_KEY_ID_MAX, &id);
    if (err != NULL) {
        return apr_pstrcat(cmd->pool, err, " (the key id comes first: ",
                           KMDC_DIR_MASTER_KEY, " ID FILE)", NULL);
    }
    path = ap_server_root_relative(cmd->pool, file_arg);
    if (path == NULL || *file_arg == '\0') {
        return apr_psprintf(cmd->pool, "%s: invalid file name '%s'",
                            KMDC_DIR_MASTER_KEY, file_arg);
    }
    if (sc->master_key_files == NULL) {
        sc->master_key_files = apr_array_make(cmd->pool, 2, sizeof(*mk));
    }
    for (i = 0; i < sc->master_key_files->nelts; i++) {
        const kmdc_master_key_conf *o =
            &APR_ARRAY_IDX(sc->master_key_files, i, kmdc_master_key_conf);
        if (o->id == (uint32_t)id) {
            return apr_psprintf(cmd->pool, "%s: key id %s is given twice; each "
                                "master key needs its own id", KMDC_DIR_MASTER_KEY,
                                id_arg);
        }
    }
    mk = apr_array_push(sc->master_key_files);
    mk->id = (uint32_t)id;
    mk->path = path;
    return NULL;
}

static const char *set_seq_window(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = parse_int(cmd->pool, KMDC_DIR_SEQUENCE_WINDOW, arg, 1,
                                KMDC_MAX_SEQUENCE_WINDOW, &v);

    (void)dc;
    if (err == NULL) {
        cmd_conf(cmd)->seq_window = (int)v;
    }
    return err;
}

static const char *set_envelope_max_age(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = kmdc_conf_parse_duration(cmd->pool,
                                               KMDC_DIR_ENVELOPE_MAX_AGE, arg, &v);

    (void)dc;
    if (err == NULL) {
        err = check_range(cmd->pool, KMDC_DIR_ENVELOPE_MAX_AGE, arg, v, 1,
                          KMDC_MAX_ENVELOPE_MAX_AGE, "seconds (365d)");
    }
    if (err == NULL) {
        cmd_conf(cmd)->envelope_max_age = v;
    }
    return err;
}

static const char *set_max_document_size(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = kmdc_conf_parse_size(cmd->pool, KMDC_DIR_MAX_DOCUMENT_SIZE,
                                           arg, &v);

    (void)dc;
    if (err == NULL) {
        err = check_range(cmd->pool, KMDC_DIR_MAX_DOCUMENT_SIZE, arg, v, 1,
                          KMDC_MAX_MAX_DOCUMENT_SIZE, "bytes (1024G)");
    }
    if (err == NULL) {
        cmd_conf(cmd)->max_document_size = v;
    }
    return err;
}

static const char *set_max_recipients(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = parse_int(cmd->pool, KMDC_DIR_MAX_RECIPIENTS, arg, 1,
                                KMDC_MAX_MAX_RECIPIENTS, &v);

    (void)dc;
    if (err == NULL) {
        cmd_conf(cmd)->max_recipients = (int)v;
    }
    return err;
}

static const char *set_max_uploads(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = parse_int(cmd->pool, KMDC_DIR_MAX_UPLOADS, arg, 1,
                                KMDC_MAX_MAX_UPLOADS, &v);

    (void)dc;
    if (err == NULL) {
        cmd_conf(cmd)->max_uploads_per_card = (int)v;
    }
    return err;
}

static const char *set_db_pool_min(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = parse_int(cmd->pool, KMDC_DIR_DB_POOL_MIN, arg, 0,
                                KMDC_MAX_DB_POOL, &v);

    (void)dc;
    if (err == NULL) {
        cmd_conf(cmd)->db_pool_min = (int)v;
    }
    return err;
}

static const char *set_db_pool_max(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = parse_int(cmd->pool, KMDC_DIR_DB_POOL_MAX, arg, 1,
                                KMDC_MAX_DB_POOL, &v);

    (void)dc;
    if (err == NULL) {
        cmd_conf(cmd)->db_pool_max = (int)v;
    }
    return err;
}

static const char *set_db_pool(cmd_parms *cmd, void *dc, const char *min_arg,
                               const char *max_arg)
{
    apr_int64_t lo = 0;
    apr_int64_t hi = 0;
    const char *err = parse_int(cmd->pool, KMDC_DIR_DB_POOL, min_arg, 0,
                                KMDC_MAX_DB_POOL, &lo);

    (void)dc;
    if (err == NULL) {
        err = parse_int(cmd->pool, KMDC_DIR_DB_POOL, max_arg, 1,
                        KMDC_MAX_DB_POOL, &hi);
    }
    if (err == NULL && lo > hi) {
        err = apr_psprintf(cmd->pool, "%s: the minimum %s is above the maximum "
                           "%s (%s MIN MAX)", KMDC_DIR_DB_POOL, min_arg, max_arg,
                           KMDC_DIR_DB_POOL);
    }
    if (err == NULL) {
        cmd_conf(cmd)->db_pool_min = (int)lo;
        cmd_conf(cmd)->db_pool_max = (int)hi;
    }
    return err;
}

static const char *set_db_pool_idle(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = kmdc_conf_parse_duration(cmd->pool, KMDC_DIR_DB_POOL_IDLE,
                                               arg, &v);

    (void)dc;
    if (err == NULL) {
        err = check_range(cmd->pool, KMDC_DIR_DB_POOL_IDLE, arg, v, 1,
                          KMDC_MAX_DB_POOL_IDLE, "seconds (1d)");
    }
    if (err == NULL) {
        cmd_conf(cmd)->db_pool_idle = v;
    }
    return err;
}

static const char *set_mailbox_ttl(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = kmdc_conf_parse_duration(cmd->pool, KMDC_DIR_MAILBOX_TTL,
                                               arg, &v);

    (void)dc;
    if (err == NULL) {
        err = check_range(cmd->pool, KMDC_DIR_MAILBOX_TTL, arg, v, 1,
                          KMDC_MAX_MAILBOX_TTL, "seconds (3650d)");
    }
    if (err == NULL) {
        cmd_conf(cmd)->mailbox_ttl = v;
    }
    return err;
}

static const char *set_mailbox_quota(cmd_parms *cmd, void *dc,
                                     const char *count_arg, const char *bytes_arg)
{
    apr_int64_t count = 0;
    apr_int64_t bytes = 0;
    const char *err = parse_int(cmd->pool, KMDC_DIR_MAILBOX_QUOTA, count_arg, 1,
                                KMDC_MAX_QUOTA_COUNT, &count);

    (void)dc;
    if (err == NULL) {
        err = kmdc_conf_parse_size(cmd->pool, KMDC_DIR_MAILBOX_QUOTA, bytes_arg,
                                   &bytes);
    }
    if (err == NULL) {
        err = check_range(cmd->pool, KMDC_DIR_MAILBOX_QUOTA, bytes_arg, bytes, 1,
                          KMDC_MAX_QUOTA_BYTES, "bytes (1048576G)");
    }
    if (err == NULL) {
        cmd_conf(cmd)->mailbox_quota_count = count;
        cmd_conf(cmd)->mailbox_quota_bytes = bytes;
    }
    return err;
}

static const char *set_auth_skew(cmd_parms *cmd, void *dc, const char *arg)
{
    apr_int64_t v = 0;
    const char *err = kmdc_conf_parse_duration(cmd->pool, KMDC_DIR_AUTH_SKEW,
                                               arg, &v);

    (void)dc;
    if (err == NULL) {
        err = check_range(cmd->pool, KMDC_DIR_AUTH_SKEW, arg, v, 1,
                          KMDC_MAX_AUTH_SKEW, "seconds (300s)");
    }
    if (err == NULL) {
        cmd_conf(cmd)->auth_skew = v;
    }
    return err;
}

const command_rec kmdc_cmds[] = {
    AP_INIT_TAKE1(KMDC_DIR_DATABASE, set_database, NULL, RSRC_CONF,
                  "libpq connection string or URI of the kmdc database (several "
                  "hosts with target_session_attrs=read-write)"),
    AP_INIT_TAKE1(KMDC_DIR_LISTEN_DATABASE, set_listen_database, NULL, RSRC_CONF,
                  "libpq connection string of the long-poll LISTEN connection "
                  "(default: KmdcDatabase; required with KmdcDatabasePooling "
                  "transaction)"),
    AP_INIT_TAKE1(KMDC_DIR_DATABASE_POOLING, set_database_pooling, NULL, RSRC_CONF,
                  "session (default: PostgreSQL itself or a session pooler) or "
                  "transaction (a transaction pooler such as pgbouncer)"),
    AP_INIT_TAKE2(KMDC_DIR_MASTER_KEY, set_master_key, NULL, RSRC_CONF,
                  "ID FILE: a master key (64 hex digits, mode 0600); repeatable, "
                  "the highest id wraps new values"),
    AP_INIT_TAKE1(KMDC_DIR_SEQUENCE_WINDOW, set_seq_window, NULL, RSRC_CONF,
                  "how far ahead of up_next an envelope's seq may be (1..1024, "
                  "default 64)"),
    AP_INIT_TAKE1(KMDC_DIR_ENVELOPE_MAX_AGE, set_envelope_max_age, NULL, RSRC_CONF,
                  "how far SENT may be from the server clock (default 24h)"),
    AP_INIT_TAKE1(KMDC_DIR_MAX_DOCUMENT_SIZE, set_max_document_size, NULL,
                  RSRC_CONF, "largest document accepted (default 1G, at most 1024G)"),
    AP_INIT_TAKE1(KMDC_DIR_MAX_RECIPIENTS, set_max_recipients, NULL, RSRC_CONF,
                  "recipients per envelope (1..32, default 32)"),
    AP_INIT_TAKE1(KMDC_DIR_MAX_UPLOADS, set_max_uploads, NULL, RSRC_CONF,
                  "uploads in flight per card (default 4)"),
    AP_INIT_TAKE2(KMDC_DIR_DB_POOL, set_db_pool, NULL, RSRC_CONF,
                  "MIN MAX database connections per child (default 1 8)"),
    AP_INIT_TAKE1(KMDC_DIR_DB_POOL_MIN, set_db_pool_min, NULL, RSRC_CONF,
                  "database connections kept open per child (default 1)"),
    AP_INIT_TAKE1(KMDC_DIR_DB_POOL_MAX, set_db_pool_max, NULL, RSRC_CONF,
                  "most database connections per child (default 8)"),
    AP_INIT_TAKE1(KMDC_DIR_DB_POOL_IDLE, set_db_pool_idle, NULL, RSRC_CONF,
                  "idle time after which a pooled database connection above "
                  "the minimum is closed (default 60s)"),
    AP_INIT_TAKE1(KMDC_DIR_MAILBOX_TTL, set_mailbox_ttl, NULL, RSRC_CONF,
                  "how long an unfetched delivery is kept (default 7d)"),
    AP_INIT_TAKE2(KMDC_DIR_MAILBOX_QUOTA, set_mailbox_quota, NULL, RSRC_CONF,
                  "COUNT BYTES pending per mailbox (default 1000 2G)"),
    AP_INIT_TAKE1(KMDC_DIR_AUTH_SKEW, set_auth_skew, NULL, RSRC_CONF,
                  "allowed clock difference of signed requests (default 300s)"),
    { .name = NULL }
};

/* ------------------------------------------------------------------------ */
/* start-up: where the handler is used                                       */

typedef struct scan_ctx {
    apr_pool_t *p;
    server_rec *main_s;
    apr_array_header_t *bases;
    apr_array_header_t *body_limits;   /* every LimitRequestBody (body_limit) */
    const char *error;
} scan_ctx;

/* A LimitRequestBody directive of the tree and where it stands. */
typedef struct body_limit {
    server_rec *vhost;        /* NULL: the main server (or every server) */
    const char *loc;          /* its <Location> path, NULL: server level */
    apr_off_t bytes;          /* 0: no limit */
} body_limit;

/* httpd's own LimitRequestBody when none is set (2.4.54 and later). */
#define KMDC_HTTPD_DEFAULT_BODY_LIMIT ((apr_off_t)1 << 30)

/* Where a node sits: inside a literal <Location> (loc != NULL), inside some
 * other section that SetHandler kmdc may not use (bad != NULL), or neither. */
typedef struct scan_where {
    server_rec *vhost;
    const char *loc;
    const char *bad;
} scan_where;

/* The first word of a section's arguments ("/kmdc>" -> "/kmdc"). */
static const char *section_arg(apr_pool_t *p, const char *args)
{
    char *a = apr_pstrdup(p, args != NULL ? args : "");
    char *gt = strrchr(a, '>');
    const char *cur = a;

    if (gt != NULL) {
        *gt = '\0';
    }
    return ap_getword_conf(p, &cur);
}

static server_rec *find_vhost(server_rec *main_s, const ap_directive_t *d)
{
    server_rec *s;

    for (s = main_s->next; s != NULL; s = s->next) {
        if (s->defn_name != NULL && d->filename != NULL
            && strcmp(s->defn_name, d->filename) == 0
            && s->defn_line_number == (unsigned)d->line_num) {
            return s;
        }
    }
    return NULL;
}

static void scan_tree(scan_ctx *c, const ap_directive_t *d, scan_where w)
{
    for (; d != NULL && c->error == NULL; d = d->next) {
        const char *name = d->directive;
        scan_where inner = w;

        if (name == NULL) {
            continue;
        }
        if (strcasecmp(name, "SetHandler") == 0) {
            const char *cur = d->args != NULL ? d->args : "";
            const char *h = ap_getword_conf(c->p, &cur);

            if (strcasecmp(h, KMDC_HANDLER) != 0) {
                continue;
            }
            if (w.loc == NULL) {
                c->error = apr_psprintf(c->p, "SetHandler %s on line %d of %s "
                    "must be inside a <Location /path> section with a literal "
                    "path (%s); the module serves the paths below that location",
                    KMDC_HANDLER, d->line_num, d->filename,
                    w.bad != NULL ? w.bad : "it is outside any <Location>");
                continue;
            }
            {
                kmdc_base *b = apr_array_push(c->bases);
                b->s = w.vhost;
                b->path = w.loc;
                b->len = strlen(w.loc);
            }
            continue;
        }
        if (strcasecmp(name, "LimitRequestBody") == 0 && w.bad == NULL) {
            body_limit *l = apr_array_push(c->body_limits);
            char *end = NULL;

            l->vhost = w.vhost;
            l->loc = w.loc;
            if (apr_strtoff(&l->bytes, d->args != NULL ? d->args : "", &end, 10)
                != APR_SUCCESS || l->bytes < 0) {
                apr_array_pop(c->body_limits);   /* httpd itself refuses it */
            }
            continue;
        }
        if (name[0] != '<' || d->first_child == NULL) {
            continue;
        }
        if (strcasecmp(name, "<VirtualHost") == 0) {
            inner.vhost = find_vhost(c->main_s, d);
            inner.loc = NULL;
            inner.bad = NULL;
        }
        else if (strcasecmp(name, "<Location") == 0) {
            const char *path = section_arg(c->p, d->args);

            if (path[0] != '/' || apr_fnmatch_test(path)) {
                inner.loc = NULL;
                inner.bad = "not a regular expression or a wildcard";
            }
            else {
                char *pp = apr_pstrdup(c->p, path);
                apr_size_t n = strlen(pp);

                while (n > 0 && pp[n - 1] == '/') {
                    pp[--n] = '\0';
                }
                inner.loc = pp;
                inner.bad = NULL;
            }
        }
        else if (strcasecmp(name, "<LocationMatch") == 0) {
            inner.loc = NULL;
            inner.bad = "not <LocationMatch>";
        }
        else if (strncasecmp(name, "<Directory", 10) == 0
                 || strncasecmp(name, "<Files", 6) == 0
                 || strncasecmp(name, "<Proxy", 6) == 0) {
            inner.loc = NULL;
            inner.bad = apr_pstrcat(c->p, "not ", name, ">", NULL);
        }
        /* <If>, <IfModule>, <IfDefine>, ... keep the enclosing context */
        scan_tree(c, d->first_child, inner);
    }
}

/* ------------------------------------------------------------------------ */
/* start-up: master key files                                                */

/* Read a master key file with kmdc_master_key_load (lib/kmdc_wrap.h: a
 * regular file without any permission bit for group or others, holding 64
 * lowercase hex digits and an optional newline).  The permissions are looked
 * at first only to give the administrator the exact fix.  Returns NULL and
 * fills key, or an error message from p. */
static const char *read_key_file(apr_pool_t *p, const char *path,
                                 unsigned char key[KMDC_MASTER_KEY_LEN])
{
    struct stat st;
    kmdc_err err;

    kmdc_err_clear(&err);
    if (stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
        if ((st.st_mode & (S_IRGRP | S_IROTH)) != 0) {
            return apr_psprintf(p, "%s: %s is readable by group or others; "
                                "chmod 600 %s", KMDC_DIR_MASTER_KEY, path, path);
        }
        if ((st.st_mode & (S_IWGRP | S_IWOTH | S_IXGRP | S_IXOTH)) != 0) {
            return apr_psprintf(p, "%s: %s is accessible to group or others; "
                                "chmod 600 %s", KMDC_DIR_MASTER_KEY, path, path);
        }
    }
    if (kmdc_master_key_load(path, key, &err) != KMDC_OK) {
        kmdc_wipe(key, KMDC_MASTER_KEY_LEN);
        return apr_psprintf(p, "%s: %s", KMDC_DIR_MASTER_KEY, err.msg);
    }
    return NULL;
}

static apr_status_t wipe_keys(void *data)
{
    kmdc_keyring_wipe(data);
    return APR_SUCCESS;
}

/* Load every key of files; with keep 0 only check them (wiped at once). */
static const char *load_keys(apr_pool_t *pconf, const apr_array_header_t *files,
                             int keep, const kmdc_master_keys **out)
{
    kmdc_master_keys *mk = NULL;
    unsigned char tmp[KMDC_MASTER_KEY_LEN];
    const char *msg = NULL;
    int i;

    *out = NULL;
    if (keep) {
        mk = apr_pcalloc(pconf, sizeof(*mk));
        mk->keys = apr_pcalloc(pconf, (apr_size_t)files->nelts * sizeof(*mk->keys));
        apr_pool_cleanup_register(pconf, mk, wipe_keys, apr_pool_cleanup_null);
    }
    for (i = 0; i < files->nelts; i++) {
        const kmdc_master_key_conf *f =
            &APR_ARRAY_IDX(files, i, kmdc_master_key_conf);

        msg = read_key_file(pconf, f->path, tmp);
        if (msg != NULL) {
            goto out;
        }
        if (mk != NULL) {
            mk->keys[mk->n].id = f->id;
            memcpy(mk->keys[mk->n].key, tmp, sizeof(tmp));
            if (f->id > mk->newest) {
                mk->newest = f->id;
            }
            mk->n++;
        }
        kmdc_wipe(tmp, sizeof(tmp));
    }
    *out = mk;

out:
    kmdc_wipe(tmp, sizeof(tmp));
    return msg;
}

/* ------------------------------------------------------------------------ */
/* start-up: limits that agree                                               */

static const char *server_name(apr_pool_t *p, const server_rec *s)
{
    if (s->defn_name == NULL) {
        return "the main server";
    }
    return apr_psprintf(p, "the virtual host on line %u of %s",
                        s->defn_line_number, s->defn_name);
}

/* 1 when location path loc covers uri (at a "/" boundary). */
static int covers(const char *loc, const char *uri)
{
    apr_size_t n = strlen(loc);

    return strncmp(loc, uri, n) == 0 && (uri[n] == '\0' || uri[n] == '/' || n == 0);
}

/*
 * The LimitRequestBody that applies to {base}/send: the longest <Location>
 * of the base's server that covers it, else the server's own, else the main
 * server's, else httpd's default.  (Sections other than <Location> are not
 * followed: they do not apply to the handler's URLs.)
 */
static apr_off_t send_body_limit(apr_pool_t *p, const apr_array_header_t *limits,
                                 const kmdc_base *b)
{
    const char *uri = apr_pstrcat(p, b->path, "/send", NULL);
    const body_limit *best = NULL, *server = NULL, *main_level = NULL;
    int i;

    for (i = 0; i < limits->nelts; i++) {
        const body_limit *l = &APR_ARRAY_IDX(limits, i, body_limit);

        if (l->vhost != NULL && l->vhost != b->s) {
            continue;
        }
        if (l->loc == NULL) {
            if (l->vhost != NULL) {
                server = l;
            }
            else {
                main_level = l;
            }
        }
        else if (covers(l->loc, uri)
                 && (best == NULL || strlen(l->loc) >= strlen(best->loc))) {
            best = l;
        }
    }
    best = best != NULL ? best : server != NULL ? server : main_level;
    return best != NULL ? best->bytes : KMDC_HTTPD_DEFAULT_BODY_LIMIT;
}

/*
 * KmdcMailboxQuota must hold one envelope of KmdcMaxDocumentSize (else no
 * document of that size can ever be delivered): an error.  httpd's
 * LimitRequestBody below that envelope refuses such uploads before the
 * module sees them: a warning (logged by the check pass only, so once).
 */
static const char *check_limits(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *vs,
                                const kmdc_srv_conf *sc, const apr_array_header_t *limits,
                                int warn)
{
    uint64_t envelope = kmdc_intake_envelope_max((uint64_t)sc->max_document_size);
    int i;

    if (!sc->handler_used) {
        return NULL;
    }
    if ((uint64_t)sc->mailbox_quota_bytes < envelope) {
        return apr_psprintf(pconf, "%s of %" APR_INT64_T_FMT " bytes for %s cannot hold "
                            "one document of %s %" APR_INT64_T_FMT " bytes, whose envelope "
                            "takes up to %" APR_UINT64_T_FMT " bytes: raise the byte "
                            "limit of %s to at least %" APR_UINT64_T_FMT " or lower %s",
                            KMDC_DIR_MAILBOX_QUOTA, sc->mailbox_quota_bytes,
                            server_name(ptemp, vs), KMDC_DIR_MAX_DOCUMENT_SIZE,
                            sc->max_document_size, (apr_uint64_t)envelope,
                            KMDC_DIR_MAILBOX_QUOTA, (apr_uint64_t)envelope,
                            KMDC_DIR_MAX_DOCUMENT_SIZE);
    }
    for (i = 0; warn && i < sc->bases->nelts; i++) {
        const kmdc_base *b = &APR_ARRAY_IDX(sc->bases, i, kmdc_base);
        apr_off_t limit;

        if (b->s != NULL && b->s != vs) {
            continue;
        }
        limit = send_body_limit(ptemp, limits, b);
        if (limit != 0 && (uint64_t)limit < envelope) {
            ap_log_error(APLOG_MARK, APLOG_WARNING, 0, vs,
                         "kmdc: LimitRequestBody %" APR_OFF_T_FMT " for %s/send is below "
                         "the envelope of a document of %s (up to %" APR_UINT64_T_FMT
                         " bytes): httpd refuses such uploads with 413 before the module "
                         "reads them; set LimitRequestBody %" APR_UINT64_T_FMT
                         " (or 0) in <Location %s>", limit, b->path,
                         KMDC_DIR_MAX_DOCUMENT_SIZE, (apr_uint64_t)envelope,
                         (apr_uint64_t)envelope, b->path[0] != '\0' ? b->path : "/");
        }
    }
    return NULL;
}

/* ------------------------------------------------------------------------ */
/* start-up: the whole pass                                                  */

static void fill_defaults(kmdc_srv_conf *sc)
{
#define DEF(f, v) do { if (sc->f == KMDC_CONF_UNSET) sc->f = (v); } while (0)
    DEF(seq_window, KMDC_DEF_SEQUENCE_WINDOW);
    DEF(envelope_max_age, KMDC_DEF_ENVELOPE_MAX_AGE);
    DEF(max_document_size, KMDC_DEF_MAX_DOCUMENT_SIZE);
    DEF(max_recipients, KMDC_DEF_MAX_RECIPIENTS);
    DEF(max_uploads_per_card, KMDC_DEF_MAX_UPLOADS);
    DEF(db_pooling, KMDC_POOLING_SESSION);
    DEF(db_pool_min, KMDC_DEF_DB_POOL_MIN);
    DEF(db_pool_max, KMDC_DEF_DB_POOL_MAX);
    DEF(db_pool_idle, KMDC_DEF_DB_POOL_IDLE);
    DEF(mailbox_ttl, KMDC_DEF_MAILBOX_TTL);
    DEF(mailbox_quota_count, KMDC_DEF_QUOTA_COUNT);
    DEF(mailbox_quota_bytes, KMDC_DEF_QUOTA_BYTES);
    DEF(auth_skew, KMDC_DEF_AUTH_SKEW);
#undef DEF
}

int kmdc_conf_startup(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s,
                      int load_keys_now)
{
    scan_ctx c;
    scan_where top;
    apr_hash_t *loaded = apr_hash_make(ptemp);
    const char *msg = NULL;
    server_rec *failed = s;
    server_rec *vs;
    int rv = OK;
    int i;

    memset(&c, 0, sizeof(c));
    c.p = pconf;
    c.main_s = s;
    c.bases = apr_array_make(pconf, 4, sizeof(kmdc_base));
    c.body_limits = apr_array_make(ptemp, 4, sizeof(body_limit));
    memset(&top, 0, sizeof(top));
    scan_tree(&c, ap_conftree, top);
    if (c.error != NULL) {
        msg = c.error;
        goto out;
    }

    for (vs = s; vs != NULL; vs = vs->next) {
        kmdc_srv_conf *sc = kmdc_conf_get(vs);
        const kmdc_master_keys *keys = NULL;

        failed = vs;
        fill_defaults(sc);
        sc->bases = c.bases;
        sc->handler_used = 0;
        for (i = 0; i < c.bases->nelts; i++) {
            const kmdc_base *b = &APR_ARRAY_IDX(c.bases, i, kmdc_base);
            if (b->s == NULL || b->s == vs) {
                sc->handler_used = 1;
            }
        }
        if (sc->db_pool_min > sc->db_pool_max) {
            msg = apr_psprintf(pconf, "%s %d is above %s %d for %s",
                               KMDC_DIR_DB_POOL_MIN, sc->db_pool_min,
                               KMDC_DIR_DB_POOL_MAX, sc->db_pool_max,
                               server_name(ptemp, vs));
            goto out;
        }
        if ((msg = check_limits(pconf, ptemp, vs, sc, c.body_limits,
                                !load_keys_now)) != NULL) {
            goto out;
        }
        if (sc->handler_used && sc->conninfo == NULL) {
            msg = apr_psprintf(pconf, "%s is not set for %s, which uses "
                               "SetHandler %s; add %s \"host=... dbname=...\"",
                               KMDC_DIR_DATABASE, server_name(ptemp, vs),
                               KMDC_HANDLER, KMDC_DIR_DATABASE);
            goto out;
        }
        if (sc->handler_used && sc->db_pooling == KMDC_POOLING_TRANSACTION
            && (sc->listen_conninfo == NULL
                || strcmp(sc->listen_conninfo, sc->conninfo) == 0)) {
            msg = apr_psprintf(pconf, "%s transaction is set for %s, but LISTEN "
                               "(long-poll wake-ups) cannot work through a "
                               "transaction pooler: set %s to a connection "
                               "string that reaches PostgreSQL itself",
                               KMDC_DIR_DATABASE_POOLING, server_name(ptemp, vs),
                               KMDC_DIR_LISTEN_DATABASE);
            goto out;
        }
        if (sc->handler_used
            && (sc->master_key_files == NULL || sc->master_key_files->nelts == 0)) {
            msg = apr_psprintf(pconf, "no %s is set for %s, which uses "
                               "SetHandler %s; add %s 1 /etc/kmdc/master-1.key",
                               KMDC_DIR_MASTER_KEY, server_name(ptemp, vs),
                               KMDC_HANDLER, KMDC_DIR_MASTER_KEY);
            goto out;
        }
        sc->keys = NULL;
        if (sc->master_key_files != NULL && sc->master_key_files->nelts > 0) {
            /* virtual hosts that inherit the list share one loaded copy */
            keys = apr_hash_get(loaded, &sc->master_key_files,
                                sizeof(sc->master_key_files));
            if (keys == NULL) {
                msg = load_keys(pconf, sc->master_key_files, load_keys_now, &keys);
                if (msg != NULL) {
                    goto out;
                }
                if (keys != NULL) {
                    apr_hash_set(loaded, apr_pmemdup(ptemp, &sc->master_key_files,
                                                     sizeof(sc->master_key_files)),
                                 sizeof(sc->master_key_files), keys);
                }
            }
            sc->keys = keys;
        }
    }

out:
    if (msg != NULL) {
        ap_log_error(APLOG_MARK, APLOG_CRIT, 0, failed, "%s", msg);
        rv = HTTP_INTERNAL_SERVER_ERROR;
    }
    return rv;
}

const kmdc_base *kmdc_conf_find_base(const request_rec *r)
{
    const kmdc_srv_conf *sc = kmdc_conf_get(r->server);
    const kmdc_base *best = NULL;
    int i;

    if (sc == NULL || sc->bases == NULL || r->uri == NULL) {
        return NULL;
    }
    for (i = 0; i < sc->bases->nelts; i++) {
        const kmdc_base *b = &APR_ARRAY_IDX(sc->bases, i, kmdc_base);

        if (b->s != NULL && b->s != r->server) {
            continue;
        }
        if (strncmp(r->uri, b->path, b->len) != 0) {
            continue;
        }
        if (r->uri[b->len] != '\0' && r->uri[b->len] != '/') {
            continue;
        }
        if (best == NULL || b->len > best->len) {
            best = b;
        }
    }
    return best;
}
