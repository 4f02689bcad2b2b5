/*
 * test_pq.c - unit tests of lib/kmdc_pq (the libpq helpers of the module
 * and kmdcadm) that need no server: parameter lists, the binary array
 * encoding against hand-written bytes, the SQLSTATE helpers on results
 * without one, and the column readers on results built by hand
 * (PQmakeEmptyPGresult / PQsetResultAttrs / PQsetvalue).
 *
 * Each TEST block builds its own fixture.  TAP output.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "kmdc_pq.h"
#include "tap.h"

#define TEST(name) tap_diag("%s", name);

/* An arena for the _alloc helpers: a fixed buffer handed out in order. */
typedef struct arena {
    unsigned char buf[512];
    size_t used;
    int calls;
} arena;

static void *arena_alloc(void *ctx, size_t size)
{
    arena *a = ctx;

    a->calls++;
    if (size > sizeof(a->buf) - a->used) {
        return NULL;
    }
    a->used += size;
    return a->buf + a->used - size;
}

/* An allocator that always fails. */
static void *no_alloc(void *ctx, size_t size)
{
    (void)ctx;
    (void)size;
    return NULL;
}

/* A result of ncols columns (format fmt[i], type oid[i]) and no rows. */
static PGresult *result_new(int ncols, const int *fmt, const Oid *oid)
{
    PGresAttDesc att[8];
    PGresult *res = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    static char name[] = "c";

    if (res == NULL || ncols > 8) {
        PQclear(res);
        return NULL;
    }
    memset(att, 0, sizeof(att));
    for (int i = 0; i < ncols; i++) {
        att[i].name = name;
        att[i].format = fmt[i];
        att[i].typid = oid[i];
        att[i].typlen = -1;
        att[i].atttypmod = -1;
    }
    if (!PQsetResultAttrs(res, ncols, att)) {
        PQclear(res);
        return NULL;
    }
    return res;
}

/* Set (row, col) to len bytes of v (NULL: SQL NULL). */
static int set(PGresult *res, int row, int col, const void *v, int len)
{
    return PQsetvalue(res, row, col, v != NULL ? (char *)(uintptr_t)v : NULL,
                      v != NULL ? len : -1);
}

static void test_params(void)
{
    TEST("params: text, int4, int8, bytea") {
        kmdc_db_params pp;
        static const unsigned char i8[8] = { 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe };
        static const unsigned char i4[4] = { 0x00, 0x01, 0x02, 0x03 };
        static const unsigned char blob[3] = { 0, 1, 2 };

        kmdc_db_params_init(&pp);
        tap_ok(pp.n == 0 && pp.overflow == 0, "params: init is empty");
        kmdc_db_param_text(&pp, "abc");
        kmdc_db_param_int4(&pp, 0x00010203);
        kmdc_db_param_int8(&pp, -2);
        kmdc_db_param_bytea(&pp, blob, sizeof(blob));
        kmdc_db_param_bytea(&pp, NULL, 0);
        kmdc_db_param_text(&pp, NULL);
        tap_ok(pp.n == 6 && !pp.overflow, "params: six added");
        tap_ok(strcmp(pp.values[0], "abc") == 0 && pp.formats[0] == 0
               && pp.lengths[0] == 0, "params: text is text format");
        tap_mem_eq(pp.values[1], (size_t)pp.lengths[1], i4, 4, "params: int4 in network order");
        tap_ok(pp.formats[1] == 1, "params: int4 is binary");
        tap_mem_eq(pp.values[2], (size_t)pp.lengths[2], i8, 8, "params: int8 -2 in network order");
        tap_ok(pp.formats[2] == 1, "params: int8 is binary");
        tap_ok(pp.values[3] == (const char *)blob && pp.lengths[3] == 3
               && pp.formats[3] == 1, "params: bytea points at the caller's bytes, binary");
        tap_ok(pp.values[4] != NULL && pp.lengths[4] == 0 && pp.formats[4] == 1,
               "params: empty bytea is not NULL");
        tap_ok(pp.values[5] == NULL, "params: NULL text is SQL NULL");
    }
    TEST("params: the int buffers are per parameter") {
        kmdc_db_params pp;

        kmdc_db_params_init(&pp);
        kmdc_db_param_int8(&pp, 1);
        kmdc_db_param_int8(&pp, 2);
        tap_ok(pp.values[0] != pp.values[1]
               && (unsigned char)pp.values[0][7] == 1 && (unsigned char)pp.values[1][7] == 2,
               "params: two int8 keep their own values");
    }
    TEST("params: overflow") {
        kmdc_db_params pp;

        kmdc_db_params_init(&pp);
        for (int i = 0; i < KMDC_DB_MAX_PARAMS; i++) {
            kmdc_db_param_int4(&pp, i);
        }
        tap_ok(pp.n == KMDC_DB_MAX_PARAMS && !pp.overflow, "params: the maximum fits");
        kmdc_db_param_text(&pp, "x");
        tap_ok(pp.n == KMDC_DB_MAX_PARAMS && pp.overflow, "params: one more overflows");
    }
    TEST("params: bytea longer than a parameter") {
        kmdc_db_params pp;
        static const unsigned char b[1] = { 0 };

        kmdc_db_params_init(&pp);
        kmdc_db_param_bytea(&pp, b, (size_t)0x80000000u);
        tap_ok(pp.overflow, "params: 2 GiB bytea overflows");
    }
}

static void test_arrays(void)
{
    TEST("arrays: size") {
        static const int lens[3] = { 1, 0, 4 };
        static const int bad[2] = { 1, -1 };

        tap_ok(kmdc_db_array_size(0, NULL) == 20, "arrays: empty is its header");
        tap_ok(kmdc_db_array_size(3, lens) == 20 + 12 + 5, "arrays: header, lengths, bytes");
        tap_ok(kmdc_db_array_size(-1, lens) == 0, "arrays: negative count refused");
        tap_ok(kmdc_db_array_size(2, bad) == 0, "arrays: negative length refused");
        tap_ok(kmdc_db_array_size(1, NULL) == 0, "arrays: no lengths refused");
    }
    TEST("arrays: encode bytea[] into a caller buffer") {
        static const unsigned char want[] = {
            0, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 17,  0, 0, 0, 2,  0, 0, 0, 1,
            0, 0, 0, 2,  0xab, 0xcd,
            0, 0, 0, 0,
        };
        const void *vals[2] = { "\xab\xcd", "" };
        const int lens[2] = { 2, 0 };
        unsigned char buf[64];
        size_t n;

        n = kmdc_db_array_encode(buf, sizeof(buf), KMDC_DB_BYTEAOID, 2, vals, lens);
        tap_mem_eq(buf, n, want, sizeof(want), "arrays: bytea[] bytes");
        tap_ok(kmdc_db_array_encode(buf, sizeof(want) - 1, KMDC_DB_BYTEAOID, 2, vals,
                                    lens) == 0, "arrays: a buffer one byte short refused");
        tap_ok(kmdc_db_array_encode(NULL, 64, KMDC_DB_BYTEAOID, 2, vals, lens) == 0,
               "arrays: no buffer refused");
        tap_ok(kmdc_db_array_encode(buf, sizeof(buf), KMDC_DB_BYTEAOID, 2, NULL, lens) == 0,
               "arrays: no values refused");
    }
    TEST("arrays: int8[] through an allocator") {
        static const unsigned char want[] = {
            0, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 20,  0, 0, 0, 2,  0, 0, 0, 1,
            0, 0, 0, 8,  0, 0, 0, 0, 0, 0, 1, 0,
            0, 0, 0, 8,  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff,
        };
        const int64_t v[2] = { 256, -1 };
        kmdc_db_params pp;
        arena a = { .used = 0 };

        kmdc_db_params_init(&pp);
        kmdc_db_param_int8_array_alloc(&pp, arena_alloc, &a, v, 2);
        tap_ok(pp.n == 1 && !pp.overflow && pp.formats[0] == 1, "arrays: int8[] is one binary parameter");
        tap_mem_eq(pp.values[0], (size_t)pp.lengths[0], want, sizeof(want), "arrays: int8[] bytes");
        tap_ok(a.calls == 1 && a.used == sizeof(want), "arrays: int8[] one allocation of its size");
    }
    TEST("arrays: text[] keeps 'null' a string") {
        static const unsigned char want[] = {
            0, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 25,  0, 0, 0, 3,  0, 0, 0, 1,
            0, 0, 0, 4,  'n', 'u', 'l', 'l',
            0, 0, 0, 0,
            0, 0, 0, 1,  '{',
        };
        const char *const v[3] = { "null", "", "{" };
        kmdc_db_params pp;
        arena a = { .used = 0 };

        kmdc_db_params_init(&pp);
        kmdc_db_param_text_array_alloc(&pp, arena_alloc, &a, v, 3);
        tap_ok(pp.n == 1 && !pp.overflow, "arrays: text[] added");
        tap_mem_eq(pp.values[0], (size_t)pp.lengths[0], want, sizeof(want), "arrays: text[] bytes");
    }
    TEST("arrays: generic and empty arrays through an allocator") {
        static const unsigned char empty[] = {
            0, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 25,  0, 0, 0, 0,  0, 0, 0, 1,
        };
        const void *vals[1] = { "xyz" };
        const int lens[1] = { 3 };
        unsigned char want[27];
        kmdc_db_params pp;
        arena a = { .used = 0 };

        (void)kmdc_db_array_encode(want, sizeof(want), KMDC_DB_TEXTOID, 1, vals, lens);
        kmdc_db_params_init(&pp);
        kmdc_db_param_array_alloc(&pp, arena_alloc, &a, KMDC_DB_TEXTOID, 1, vals, lens);
        kmdc_db_param_text_array_alloc(&pp, arena_alloc, &a, NULL, 0);
        kmdc_db_param_int8_array_alloc(&pp, arena_alloc, &a, NULL, 0);
        tap_ok(pp.n == 3 && !pp.overflow, "arrays: three added");
        tap_mem_eq(pp.values[0], (size_t)pp.lengths[0], want, sizeof(want),
                   "arrays: _alloc encodes as array_encode does");
        tap_mem_eq(pp.values[1], (size_t)pp.lengths[1], empty, sizeof(empty),
                   "arrays: empty text[] is its header");
        tap_ok(pp.lengths[2] == 20 && (unsigned char)pp.values[2][11] == 20,
               "arrays: empty int8[] is its header with int8's oid");
    }
    TEST("arrays: failures set overflow") {
        const int64_t v[1] = { 1 };
        const char *const t[2] = { "a", NULL };
        const int bad[1] = { -1 };
        const void *vals[1] = { "x" };
        kmdc_db_params pp;
        arena a = { .used = 0 };

        kmdc_db_params_init(&pp);
        kmdc_db_param_int8_array_alloc(&pp, no_alloc, NULL, v, 1);
        tap_ok(pp.overflow, "arrays: no memory overflows");
        kmdc_db_params_init(&pp);
        kmdc_db_param_text_array_alloc(&pp, arena_alloc, &a, t, 2);
        tap_ok(pp.overflow && a.calls == 0, "arrays: a NULL string refused before allocating");
        kmdc_db_params_init(&pp);
        kmdc_db_param_array_alloc(&pp, arena_alloc, &a, KMDC_DB_TEXTOID, 1, vals, bad);
        tap_ok(pp.overflow && a.calls == 0, "arrays: a negative length refused");
        kmdc_db_params_init(&pp);
        kmdc_db_param_int8_array_alloc(&pp, arena_alloc, &a, v, -1);
        tap_ok(pp.overflow, "arrays: a negative count refused");
    }
}

static void test_sqlstate(void)
{
    TEST("sqlstate: results without one") {
        PGresult *ok = PQmakeEmptyPGresult(NULL, PGRES_COMMAND_OK);

        tap_ok(strcmp(kmdc_db_sqlstate(NULL), "") == 0, "sqlstate: NULL result is empty");
        tap_ok(ok != NULL && strcmp(kmdc_db_sqlstate(ok), "") == 0,
               "sqlstate: a successful result has none");
        tap_ok(!kmdc_db_is_unique_violation(NULL) && !kmdc_db_is_unique_violation(ok),
               "sqlstate: no unique violation without a state");
        tap_ok(!kmdc_db_is_retryable(NULL) && !kmdc_db_is_retryable(ok),
               "sqlstate: not retryable without a state");
        tap_ok(!kmdc_db_sqlstate_is(ok, "") && !kmdc_db_sqlstate_is(ok, "23")
               && !kmdc_db_sqlstate_is(NULL, NULL), "sqlstate: no class matches");
        PQclear(ok);
    }
}

static void test_readers(void)
{
    TEST("readers: binary integers") {
        static const int fmt[4] = { 1, 1, 1, 1 };
        static const Oid oid[4] = { KMDC_DB_INT8OID, KMDC_DB_INT4OID, KMDC_DB_INT2OID,
                                    KMDC_DB_TEXTOID };
        static const unsigned char i8[8] = { 0x80, 0, 0, 0, 0, 0, 0, 1 };
        static const unsigned char i4[4] = { 0xff, 0xff, 0xff, 0xfe };
        static const unsigned char i2[2] = { 0x01, 0x00 };
        PGresult *res = result_new(4, fmt, oid);
        int64_t v = 0;

        tap_ok(res != NULL && set(res, 0, 0, i8, 8) && set(res, 0, 1, i4, 4)
               && set(res, 0, 2, i2, 2) && set(res, 0, 3, "12", 2)
               && set(res, 1, 0, i4, 4) && set(res, 1, 1, NULL, 0)
               && set(res, 1, 2, i4, 4) && set(res, 1, 3, NULL, 0), "readers: built");
        tap_ok(kmdc_db_get_int64(res, 0, 0, &v) && v == INT64_MIN + 1, "readers: int8");
        tap_ok(kmdc_db_get_int64(res, 0, 1, &v) && v == -2, "readers: int4 sign-extended");
        tap_ok(kmdc_db_get_int64(res, 0, 2, &v) && v == 256, "readers: int2");
        v = 7;
        tap_ok(!kmdc_db_get_int64(res, 0, 3, &v) && v == 7, "readers: binary text is no integer");
        tap_ok(!kmdc_db_get_int64(res, 1, 0, &v), "readers: int8 of 4 bytes refused");
        tap_ok(!kmdc_db_get_int64(res, 1, 1, &v), "readers: NULL is no integer");
        tap_ok(!kmdc_db_get_int64(res, 1, 2, &v), "readers: int2 of 4 bytes refused");
        tap_ok(!kmdc_db_get_int64(res, 2, 0, &v) && !kmdc_db_get_int64(res, 0, 4, &v)
               && !kmdc_db_get_int64(res, -1, 0, &v) && !kmdc_db_get_int64(NULL, 0, 0, &v),
               "readers: out of range refused");
        PQclear(res);
    }
    TEST("readers: text integers") {
        static const int fmt[1] = { 0 };
        static const Oid oid[1] = { KMDC_DB_INT8OID };
        PGresult *res = result_new(1, fmt, oid);
        int64_t v = 0;

        tap_ok(res != NULL && set(res, 0, 0, "-9223372036854775808", 20)
               && set(res, 1, 0, "42x", 3) && set(res, 2, 0, "", 0)
               && set(res, 3, 0, "9223372036854775808", 19), "readers: built");
        tap_ok(kmdc_db_get_int64(res, 0, 0, &v) && v == INT64_MIN, "readers: decimal text");
        tap_ok(!kmdc_db_get_int64(res, 1, 0, &v), "readers: trailing junk refused");
        tap_ok(!kmdc_db_get_int64(res, 2, 0, &v), "readers: empty text refused");
        tap_ok(!kmdc_db_get_int64(res, 3, 0, &v), "readers: out of int64 refused");
        PQclear(res);
    }
    TEST("readers: bytea and text") {
        static const int fmt[2] = { 1, 0 };
        static const Oid oid[2] = { KMDC_DB_BYTEAOID, KMDC_DB_TEXTOID };
        static const unsigned char b[3] = { 0, 0xff, 0 };
        PGresult *res = result_new(2, fmt, oid);
        const unsigned char *data = NULL;
        size_t len = 0;

        tap_ok(res != NULL && set(res, 0, 0, b, 3) && set(res, 0, 1, "hi", 2)
               && set(res, 1, 0, NULL, 0) && set(res, 1, 1, NULL, 0), "readers: built");
        tap_ok(kmdc_db_get_bytea(res, 0, 0, &data, &len)
               && tap_mem_eq(data, len, b, 3, "readers: bytea bytes"), "readers: bytea");
        tap_ok(!kmdc_db_get_bytea(res, 0, 1, &data, &len), "readers: text result is no bytea");
        tap_ok(!kmdc_db_get_bytea(res, 1, 0, &data, &len), "readers: NULL is no bytea");
        tap_ok(kmdc_db_get_text(res, 0, 1) != NULL
               && strcmp(kmdc_db_get_text(res, 0, 1), "hi") == 0, "readers: text");
        tap_ok(kmdc_db_get_text(res, 1, 1) == NULL && kmdc_db_get_text(res, 0, 2) == NULL
               && kmdc_db_get_text(NULL, 0, 0) == NULL, "readers: NULL text and out of range");
        PQclear(res);
    }
    TEST("readers: one boolean rule, binary and text") {
        static const int fmt[4] = { 1, 0, 1, 0 };
        static const Oid oid[4] = { KMDC_DB_BOOLOID, KMDC_DB_BOOLOID, KMDC_DB_INT4OID,
                                    KMDC_DB_TEXTOID };
        static const unsigned char one[1] = { 1 }, zero[1] = { 0 }, two[2] = { 1, 0 };
        PGresult *res = result_new(4, fmt, oid);
        int v = -1;

        tap_ok(res != NULL && set(res, 0, 0, one, 1) && set(res, 0, 1, "t", 1)
               && set(res, 0, 2, one, 1) && set(res, 0, 3, "t", 1)
               && set(res, 1, 0, zero, 1) && set(res, 1, 1, "f", 1)
               && set(res, 2, 0, two, 2) && set(res, 2, 1, "true", 4)
               && set(res, 3, 0, NULL, 0) && set(res, 3, 1, NULL, 0), "readers: built");
        tap_ok(kmdc_db_get_bool(res, 0, 0, &v) && v == 1, "readers: binary true");
        tap_ok(kmdc_db_get_bool(res, 0, 1, &v) && v == 1, "readers: text true");
        tap_ok(kmdc_db_get_bool(res, 1, 0, &v) && v == 0, "readers: binary false");
        tap_ok(kmdc_db_get_bool(res, 1, 1, &v) && v == 0, "readers: text false");
        v = -1;
        tap_ok(!kmdc_db_get_bool(res, 2, 0, &v) && v == -1, "readers: two bytes refused");
        tap_ok(!kmdc_db_get_bool(res, 2, 1, &v), "readers: 'true' spelled out refused");
        tap_ok(!kmdc_db_get_bool(res, 3, 0, &v) && !kmdc_db_get_bool(res, 3, 1, &v),
               "readers: NULL is no boolean");
        tap_ok(!kmdc_db_get_bool(res, 0, 2, &v) && !kmdc_db_get_bool(res, 0, 3, &v),
               "readers: an int4 or a text 't' is no boolean");
        tap_ok(!kmdc_db_get_bool(res, 4, 0, &v) && !kmdc_db_get_bool(NULL, 0, 0, &v),
               "readers: out of range refused");
        PQclear(res);
    }
}

int main(void)
{
    test_params();
    test_arrays();
    test_sqlstate();
    test_readers();
    tap_ok(KMDC_SCHEMA_VERSION >= 2, "schema: KMDC_SCHEMA_VERSION is defined (%d)",
           KMDC_SCHEMA_VERSION);
    return tap_done();
}
