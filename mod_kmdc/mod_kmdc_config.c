/*
 * mod_kmdc_config.c - directives, merge and the start-up checks of mod_kmdc.
 *
 * The directives are the rows of mod_kmdc_directives.h; from them this file
 * builds the command_rec array (cmd->info of each directive is its row), the
 * "unset" state of create_server_config, the merge (a virtual host's field
 * wins when set) and the defaults (each row's, read as if written, applied
 * once at start-up).  The generic setters parse each argument by its
 * field's kind and bounds and store it at the field's offset; what is not
 * "one field with bounds" (connection strings, the master key list, the
 * ordered pair of KmdcDbPool) has a setter of its own below.
 *
 * Values are checked where the directive is read, so a bad value stops httpd
 * with "Syntax error on line N of FILE: <directive>: ...".  What depends on
 * the whole configuration (where the handler is used, that the database and
 * keys it needs are there, the key files themselves) is checked once the
 * configuration is complete, in kmdc_conf_startup().
 */
#include <stddef.h> /* before APR: APR_OFFSETOF then uses offsetof */
#include <string.h>

#include "apr_hash.h"
#include "apr_strings.h"
#include "httpd.h"
#include "http_config.h"
#include "http_log.h"

#include "kmdc_intake.h"
#include "kmdc_units.h"
#include "kmdc_util.h"
#include "kmdc_wrap.h"

#include "mod_kmdc.h"
#include "mod_kmdc_config.h"
#include "mod_kmdc_store.h"

/* ------------------------------------------------------------------------ */
/* value parsers                                                             */

/* What an argument of a directive is (the KIND column of the table). */
typedef enum {
    KMDC_K_NONE = 0,          /* no field (KMDC_NOF) */
    KMDC_K_STR,               /* const char *, set by a setter of its own */
    KMDC_K_LIST,              /* apr_array_header_t *, likewise */
    KMDC_K_INT,               /* a decimal number in min..max */
    KMDC_K_DURATION,          /* seconds in min..max */
    KMDC_K_SIZE,              /* bytes in min..max */
    KMDC_K_POOLING            /* session or transaction: KMDC_POOLING_* */
} kmdc_dir_kind;

/* One argument by lib's parser (kmdc_units.h: KMDC_K_DURATION a duration,
 * KMDC_K_SIZE a size, else a plain decimal number), worded by directive. */
static const char *parse_number(apr_pool_t *p, const char *directive,
                                const char *arg, kmdc_dir_kind kind,
                                apr_int64_t *out)
{
    int64_t v = 0;
    kmdc_units_rc rc;

    rc = kind == KMDC_K_DURATION ? kmdc_parse_duration(arg, INT64_MAX, &v)
       : kind == KMDC_K_SIZE ? kmdc_parse_size(arg, INT64_MAX, &v)
       : kmdc_parse_decimal(arg, INT64_MAX, &v);
    switch (rc) {
    case KMDC_UNITS_OK:
        *out = v;
        return NULL;
    case KMDC_UNITS_TOO_LARGE:
        return apr_psprintf(p, "%s: '%s' is too large", directive, arg);
    case KMDC_UNITS_BAD_UNIT:
        if (kind == KMDC_K_DURATION) {
            return apr_psprintf(p, "%s: '%s' is not a duration; use seconds, or a "
                                "number with one suffix s, m, h or d (e.g. 24h)",
                                directive, arg);
        }
        if (kind == KMDC_K_SIZE) {
            return apr_psprintf(p, "%s: '%s' is not a size; use bytes, or a number "
                                "with one suffix K, M or G (powers of 1024, e.g. 1G)",
                                directive, arg);
        }
        break;
    case KMDC_UNITS_NOT_NUMBER:
        break;
    }
    return apr_psprintf(p, "%s: '%s' is not a number", directive, arg);
}

/* A plain decimal integer in lo..hi. */
static const char *parse_int(apr_pool_t *p, const char *directive,
                             const char *arg, apr_int64_t lo, apr_int64_t hi,
                             apr_int64_t *out)
{
    apr_int64_t v = 0;
    const char *err = parse_number(p, directive, arg, KMDC_K_INT, &v);

    if (err != NULL) {
        return err;
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
/* the directive table (mod_kmdc_directives.h)                               */


/* One argument of a directive and the field of kmdc_srv_conf it sets. */
typedef struct kmdc_dir_field {
    apr_size_t off;           /* APR_OFFSETOF(kmdc_srv_conf, field) */
    apr_size_t size;          /* sizeof the field: int or apr_int64_t */
    kmdc_dir_kind kind;
    apr_int64_t min, max;     /* bounds of INT, DURATION and SIZE */
} kmdc_dir_field;

/* One row of the table; cmd->info of the directive points to it. */
typedef struct kmdc_dir_row {
    const char *name;         /* KMDC_DIR_* */
    const char *def;          /* the default as written, NULL: none */
    kmdc_dir_field f[2];      /* its arguments' fields (kind NONE: none) */
} kmdc_dir_row;

#define KMDC_FIELD_KMDC_F(field, kind, lo, hi) \
    { APR_OFFSETOF(kmdc_srv_conf, field), sizeof(((kmdc_srv_conf *)0)->field), \
      KMDC_K_##kind, (lo), (hi) }
#define KMDC_FIELD_KMDC_NOF { 0, 0, KMDC_K_NONE, 0, 0 }
#define KMDC_ROW(ID, ARGS, SETTER, DEF, HELP, F1, F2) \
    [KMDC_D_##ID] = { KMDC_DIR_##ID, KMDC_DEFTEXT_##DEF, \
                      { KMDC_FIELD_##F1, KMDC_FIELD_##F2 } },

static const kmdc_dir_row kmdc_dir_rows[KMDC_D_N] = {
    KMDC_DIRECTIVES(KMDC_ROW)
};

/* field_get and field_put know two widths: a field is an int or an
 * apr_int64_t (or, for STR and LIST, a pointer). */
#define KMDC_WIDTH_KMDC_F(field, kind, lo, hi) \
    _Static_assert(sizeof(((kmdc_srv_conf *)0)->field) == sizeof(int) \
                   || sizeof(((kmdc_srv_conf *)0)->field) == sizeof(apr_int64_t), \
                   "kmdc_srv_conf." #field ": an int, an apr_int64_t or a pointer");
#define KMDC_WIDTH_KMDC_NOF
#define KMDC_WIDTH(ID, ARGS, SETTER, DEF, HELP, F1, F2) \
    KMDC_WIDTH_##F1 KMDC_WIDTH_##F2
KMDC_DIRECTIVES(KMDC_WIDTH)

static int field_is_ptr(const kmdc_dir_field *f)
{
    return f->kind == KMDC_K_STR || f->kind == KMDC_K_LIST;
}

static apr_int64_t field_get(const kmdc_srv_conf *sc, const kmdc_dir_field *f)
{
    const char *at = (const char *)sc + f->off;
    int i = 0;
    apr_int64_t v = 0;

    if (f->size == sizeof(int)) {
        memcpy(&i, at, sizeof(i));
        return i;
    }
    memcpy(&v, at, sizeof(v));
    return v;
}

static void field_put(kmdc_srv_conf *sc, const kmdc_dir_field *f, apr_int64_t v)
{
    char *at = (char *)sc + f->off;
    int i = (int)v;

    if (f->size == sizeof(int)) {
        memcpy(at, &i, sizeof(i));
    }
    else {
        memcpy(at, &v, sizeof(v));
    }
}

static int field_unset(const kmdc_srv_conf *sc, const kmdc_dir_field *f)
{
    void *ptr = NULL;

    if (field_is_ptr(f)) {
        memcpy(&ptr, (const char *)sc + f->off, sizeof(ptr));
        return ptr == NULL;
    }
    return field_get(sc, f) == KMDC_CONF_UNSET;
}

/* Copy field f from one configuration to another. */
static void field_copy(kmdc_srv_conf *to, const kmdc_srv_conf *from,
                       const kmdc_dir_field *f)
{
    memcpy((char *)to + f->off, (const char *)from + f->off,
           field_is_ptr(f) ? sizeof(void *) : f->size);
}

/* The maximum for a range message: whole days or GiB when it is some. */
static const char *max_text(apr_pool_t *p, const kmdc_dir_field *f)
{
    if (f->kind == KMDC_K_DURATION) {
        return f->max % 86400 == 0
            ? apr_psprintf(p, "%" APR_INT64_T_FMT "d", f->max / 86400)
            : apr_psprintf(p, "%" APR_INT64_T_FMT "s", f->max);
    }
    return f->max % (APR_INT64_C(1) << 30) == 0
        ? apr_psprintf(p, "%" APR_INT64_T_FMT "G", f->max >> 30)
        : apr_psprintf(p, "%" APR_INT64_T_FMT, f->max);
}

/* Parse arg, an argument of directive name, by the kind and bounds of f. */
static const char *parse_field(apr_pool_t *p, const char *name,
                               const kmdc_dir_field *f, const char *arg,
                               apr_int64_t *v)
{
    const char *err = NULL;

    switch (f->kind) {
    case KMDC_K_INT:
        return parse_int(p, name, arg, f->min, f->max, v);
    case KMDC_K_DURATION:
    case KMDC_K_SIZE:
        err = parse_number(p, name, arg, f->kind, v);
        if (err == NULL) {
            err = check_range(p, name, arg, *v, f->min, f->max,
                              apr_psprintf(p, "%s (%s)", f->kind == KMDC_K_DURATION
                                           ? "seconds" : "bytes", max_text(p, f)));
        }
        return err;
    case KMDC_K_POOLING:
        if (strcasecmp(arg, "session") == 0) {
            *v = KMDC_POOLING_SESSION;
            return NULL;
        }
        if (strcasecmp(arg, "transaction") == 0) {
            *v = KMDC_POOLING_TRANSACTION;
            return NULL;
        }
        return apr_psprintf(p, "%s takes session or transaction, not \"%s\"",
                            name, arg);
    default:
        return apr_psprintf(p, "%s: no generic setter for this directive", name);
    }
}

/* Parse every argument of row as named name (all first, so that a bad second
 * argument leaves the configuration as it was), then store them in sc. */
static const char *apply_row(apr_pool_t *p, const kmdc_dir_row *row,
                             const char *name, kmdc_srv_conf *sc,
                             const char *const args[2])
{
    apr_int64_t v[2] = { 0, 0 };
    const char *err = NULL;
    int i;

    for (i = 0; i < 2 && row->f[i].kind != KMDC_K_NONE && err == NULL; i++) {
        err = parse_field(p, name, &row->f[i], args[i], &v[i]);
    }
    for (i = 0; i < 2 && row->f[i].kind != KMDC_K_NONE && err == NULL; i++) {
        field_put(sc, &row->f[i], v[i]);
    }
    return err;
}

/* ------------------------------------------------------------------------ */
/* create / merge / defaults                                                 */

void *kmdc_conf_create_server(apr_pool_t *p, server_rec *s)
{
    kmdc_srv_conf *sc = apr_pcalloc(p, sizeof(*sc));
    int r, i;

    (void)s;
    for (r = 0; r < KMDC_D_N; r++) {
        for (i = 0; i < 2; i++) {
            const kmdc_dir_field *f = &kmdc_dir_rows[r].f[i];

            if (f->kind != KMDC_K_NONE && !field_is_ptr(f)) {
                field_put(sc, f, KMDC_CONF_UNSET);   /* pointers: NULL */
            }
        }
    }
    return sc;
}

void *kmdc_conf_merge_server(apr_pool_t *p, void *basev, void *addv)
{
    const kmdc_srv_conf *base = basev;
    const kmdc_srv_conf *add = addv;
    kmdc_srv_conf *sc = apr_pcalloc(p, sizeof(*sc));
    int r, i;

    for (r = 0; r < KMDC_D_N; r++) {
        for (i = 0; i < 2; i++) {
            const kmdc_dir_field *f = &kmdc_dir_rows[r].f[i];

            if (f->kind != KMDC_K_NONE) {
                field_copy(sc, field_unset(add, f) ? base : add, f);
            }
        }
    }
    /* start-up fields are filled per server by kmdc_conf_startup() */
    return sc;
}

kmdc_srv_conf *kmdc_conf_get(const server_rec *s)
{
    return ap_get_module_config(s->module_config, &kmdc_module);
}

/* Each row's default, read as if written, where the server left the row's
 * fields unset (a directive sets all its fields at once, so the first
 * tells).  An error here is a bad row of the table. */
static const char *fill_defaults(apr_pool_t *p, kmdc_srv_conf *sc)
{
    const char *err = NULL;
    int r;

    for (r = 0; r < KMDC_D_N && err == NULL; r++) {
        const kmdc_dir_row *row = &kmdc_dir_rows[r];
        const char *args[2] = { "", "" };
        const char *cur = row->def;

        if (row->def == NULL || !field_unset(sc, &row->f[0])) {
            continue;
        }
        args[0] = ap_getword_white(p, &cur);
        args[1] = ap_getword_white(p, &cur);
        err = apply_row(p, row, row->name, sc, args);
    }
    return err;
}

/* ------------------------------------------------------------------------ */
/* directive handlers                                                        */

/* The generic setter of one argument: its row is cmd->info. */
static const char *set_slot(cmd_parms *cmd, void *dc, const char *arg)
{
    const kmdc_dir_row *row = cmd->info;
    const char *args[2] = { arg, "" };

    (void)dc;
    return apply_row(cmd->pool, row, row->name, kmdc_conf_get(cmd->server),
                     args);
}

/* The generic setter of two arguments, each its field. */
static const char *set_slot2(cmd_parms *cmd, void *dc, const char *a1,
                             const char *a2)
{
    const kmdc_dir_row *row = cmd->info;
    const char *args[2] = { a1, a2 };

    (void)dc;
    return apply_row(cmd->pool, row, row->name, kmdc_conf_get(cmd->server),
                     args);
}

static kmdc_srv_conf *cmd_conf(cmd_parms *cmd)
{
    return kmdc_conf_get(cmd->server);
}

/* KmdcDatabase, KmdcListenDatabase: a libpq connection string or URI that
 * libpq parses (kmdc_db_conninfo_problem), stored in the row's field. */
static const char *set_conninfo(cmd_parms *cmd, void *dc, const char *arg)
{
    const kmdc_dir_row *row = cmd->info;
    const char *err = NULL;

    (void)dc;
    if (*arg == '\0') {
        return apr_psprintf(cmd->pool, "%s: the connection string is empty%s",
                            row->name, row == &kmdc_dir_rows[KMDC_D_DATABASE]
                            ? "; give a libpq conninfo such as \"host=/run/postgresql "
                              "dbname=kmdc\"" : "");
    }
    if ((err = kmdc_db_conninfo_problem(cmd->pool, row->name, arg)) != NULL) {
        return err;
    }
    memcpy((char *)cmd_conf(cmd) + row->f[0].off, &arg, sizeof(arg));
    return NULL;
}

static const char *set_master_key(cmd_parms *cmd, void *dc, const char *id_arg,
                                  const char *file_arg)
{
    kmdc_srv_conf *sc = cmd_conf(cmd);
    kmdc_master_key_file *mk = NULL;
    apr_int64_t id = 0;
    const char *path = NULL;
    const char *err = NULL;
    int i;

    (void)dc;
    err = parse_int(cmd->pool, KMDC_DIR_MASTER_KEY, id_arg, 1,
                    KMDC_KEYRING_ID_MAX, &id);
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
        const kmdc_master_key_file *o =
            &APR_ARRAY_IDX(sc->master_key_files, i, kmdc_master_key_file);
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

/* KmdcDbPool MIN MAX: the fields (and bounds) of KmdcDbPoolMin and
 * KmdcDbPoolMax, MIN not above MAX. */
static const char *set_db_pool(cmd_parms *cmd, void *dc, const char *min_arg,
                               const char *max_arg)
{
    const kmdc_dir_field *fmin = &kmdc_dir_rows[KMDC_D_DB_POOL_MIN].f[0];
    const kmdc_dir_field *fmax = &kmdc_dir_rows[KMDC_D_DB_POOL_MAX].f[0];
    apr_int64_t lo = 0;
    apr_int64_t hi = 0;
    const char *err = parse_field(cmd->pool, KMDC_DIR_DB_POOL, fmin, min_arg, &lo);

    (void)dc;
    if (err == NULL) {
        err = parse_field(cmd->pool, KMDC_DIR_DB_POOL, fmax, max_arg, &hi);
    }
    if (err == NULL && lo > hi) {
        err = apr_psprintf(cmd->pool, "%s: the minimum %s is above the maximum "
                           "%s (%s MIN MAX)", KMDC_DIR_DB_POOL, min_arg, max_arg,
                           KMDC_DIR_DB_POOL);
    }
    if (err == NULL) {
        field_put(cmd_conf(cmd), fmin, lo);
        field_put(cmd_conf(cmd), fmax, hi);
    }
    return err;
}

/* The command table httpd reads, one entry per row. */
#define KMDC_CMD(ID, ARGS, SETTER, DEF, HELP, F1, F2) \
    AP_INIT_##ARGS(KMDC_DIR_##ID, SETTER, (void *)&kmdc_dir_rows[KMDC_D_##ID], \
                   RSRC_CONF, HELP KMDC_DEFHELP_##DEF),

const command_rec kmdc_cmds[] = {
    KMDC_DIRECTIVES(KMDC_CMD)
    { .name = NULL }
};

/* ------------------------------------------------------------------------ */
/* start-up: master key files                                                */

static apr_status_t free_keys(void *data)
{
    kmdc_keyring_free(data);
    return APR_SUCCESS;
}

/* Load every key of files (kmdc_master_key_file) with lib's keyring loader
 * (kmdc_keyring.h: each a regular file without any permission bit for group
 * or others, holding 64 lowercase hex digits and an optional newline).  With
 * keep 1 the ring lives until pconf goes (its keys wiped then); with keep 0
 * the files are only checked and the keys wiped at once. */
static const char *load_keys(apr_pool_t *pconf, const apr_array_header_t *files,
                             int keep, const kmdc_master_keys **out)
{
    kmdc_keyring *ring = apr_pcalloc(pconf, sizeof(*ring));
    const char *msg = NULL;
    kmdc_err err;

    *out = NULL;
    kmdc_err_clear(&err);
    if (kmdc_keyring_load(ring, (const kmdc_master_key_file *)(void *)files->elts,
                          (size_t)files->nelts, NULL, &err) != KMDC_OK) {
        msg = apr_psprintf(pconf, "%s: %s", KMDC_DIR_MASTER_KEY, err.msg);
        goto out;
    }
    if (!keep) {
        kmdc_keyring_free(ring);
        goto out;
    }
    apr_pool_cleanup_register(pconf, ring, free_keys, apr_pool_cleanup_null);
    *out = ring;

out:
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
        limit = kmdc_locations_send_limit(ptemp, limits, b);
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

int kmdc_conf_startup(apr_pool_t *pconf, apr_pool_t *ptemp, server_rec *s,
                      int load_keys_now)
{
    apr_array_header_t *bases = NULL;
    apr_array_header_t *limits = NULL;
    apr_hash_t *loaded = apr_hash_make(ptemp);
    const char *msg = NULL;
    server_rec *failed = s;
    server_rec *vs;
    int rv = OK;
    int i;

    msg = kmdc_locations_scan(pconf, ptemp, s, &bases, &limits);
    if (msg != NULL) {
        goto out;
    }

    for (vs = s; vs != NULL; vs = vs->next) {
        kmdc_srv_conf *sc = kmdc_conf_get(vs);
        const kmdc_master_keys *keys = NULL;

        failed = vs;
        if ((msg = fill_defaults(pconf, sc)) != NULL) {
            goto out;
        }
        sc->bases = bases;
        sc->handler_used = 0;
        for (i = 0; i < bases->nelts; i++) {
            const kmdc_base *b = &APR_ARRAY_IDX(bases, i, kmdc_base);
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
        if ((msg = check_limits(pconf, ptemp, vs, sc, limits,
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
