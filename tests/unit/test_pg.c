/*
 * Unit tests of the pure parts of pg: parameter encoding (binary, network
 * order), the binary result readers on hand-built PGresults, and config
 * validation. No server is needed; see tests/integration/test_pg_pool.c.
 */
#include <check.h>
#include <limits.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "pg.h"

static const unsigned char *
raw(const struct pg_params *p, int i)
{
    return (const unsigned char *)p->values[i];
}

START_TEST(test_init_empty)
{
    struct pg_params p;
    memset(&p, 0x5a, sizeof(p));
    pg_params_init(&p);
    ck_assert_int_eq(p.n, 0);
}
END_TEST

START_TEST(test_i64_network_order)
{
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, 0x0102030405060708LL);
    pg_param_i64(&p, -2);
    pg_param_i64(&p, INT64_MIN);
    ck_assert_int_eq(p.n, 3);

    static const unsigned char a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    static const unsigned char b[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe};
    static const unsigned char c[8] = {0x80, 0, 0, 0, 0, 0, 0, 0};
    ck_assert_mem_eq(raw(&p, 0), a, 8);
    ck_assert_mem_eq(raw(&p, 1), b, 8);
    ck_assert_mem_eq(raw(&p, 2), c, 8);
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(p.lengths[i], 8);
        ck_assert_int_eq(p.formats[i], 1);
        ck_assert_uint_eq(p.types[i], 20); /* int8 */
    }
    /* each value has its own storage */
    ck_assert_ptr_ne(p.values[0], p.values[1]);
}
END_TEST

START_TEST(test_i32_and_bool)
{
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i32(&p, 0x11223344);
    pg_param_i32(&p, -1);
    pg_param_bool(&p, true);
    pg_param_bool(&p, false);
    ck_assert_int_eq(p.n, 4);

    static const unsigned char a[4] = {0x11, 0x22, 0x33, 0x44};
    static const unsigned char b[4] = {0xff, 0xff, 0xff, 0xff};
    ck_assert_mem_eq(raw(&p, 0), a, 4);
    ck_assert_mem_eq(raw(&p, 1), b, 4);
    ck_assert_int_eq(p.lengths[0], 4);
    ck_assert_int_eq(p.formats[1], 1);
    ck_assert_uint_eq(p.types[1], 23); /* int4 */

    ck_assert_int_eq(p.lengths[2], 1);
    ck_assert_int_eq(p.formats[2], 1);
    ck_assert_uint_eq(p.types[2], 16); /* bool */
    ck_assert_int_eq(raw(&p, 2)[0], 1);
    ck_assert_int_eq(raw(&p, 3)[0], 0);
}
END_TEST

START_TEST(test_text_and_null)
{
    struct pg_params p;
    const char *s = "héllo";
    pg_params_init(&p);
    pg_param_text(&p, s);
    pg_param_text(&p, NULL);
    pg_param_null(&p);
    ck_assert_int_eq(p.n, 3);

    /* text is passed through, in text format, type left to the server */
    ck_assert_ptr_eq(p.values[0], s);
    ck_assert_int_eq(p.formats[0], 0);
    ck_assert_uint_eq(p.types[0], 0);
    /* NULL text and pg_param_null are SQL NULL: a NULL value pointer */
    ck_assert_ptr_null(p.values[1]);
    ck_assert_ptr_null(p.values[2]);
    ck_assert_uint_eq(p.types[2], 0);
}
END_TEST

START_TEST(test_bytea)
{
    struct pg_params p;
    static const unsigned char blob[5] = {0, 1, 0, 0xff, 0};
    pg_params_init(&p);
    pg_param_bytea(&p, blob, sizeof(blob));
    pg_param_bytea(&p, NULL, 0); /* empty, not NULL */
    pg_param_bytea(&p, blob, 0);
    ck_assert_int_eq(p.n, 3);

    ck_assert_ptr_eq(p.values[0], (const char *)blob);
    ck_assert_int_eq(p.lengths[0], 5);
    ck_assert_int_eq(p.formats[0], 1);
    ck_assert_uint_eq(p.types[0], 17); /* bytea */

    ck_assert_ptr_nonnull(p.values[1]);
    ck_assert_int_eq(p.lengths[1], 0);
    ck_assert_int_eq(p.formats[1], 1);
    ck_assert_int_eq(p.lengths[2], 0);
}
END_TEST

START_TEST(test_bytea_invalid)
{
    struct pg_params p;
    pg_params_init(&p);
    pg_param_bytea(&p, NULL, 3);
    ck_assert_int_gt(p.n, PG_MAX_PARAMS);

    pg_params_init(&p);
    pg_param_bytea(&p, "x", (size_t)INT_MAX + 1);
    ck_assert_int_gt(p.n, PG_MAX_PARAMS);
}
END_TEST

/* The binary array format PostgreSQL's array_recv reads. */
START_TEST(test_array_binary_format)
{
    struct pg_array a;
    pg_array_init(&a, PG_ARRAY_INT8);
    pg_array_i64(&a, 1);
    pg_array_i64(&a, -2);
    struct pg_params p;
    pg_params_init(&p);
    pg_param_array(&p, &a);
    ck_assert_int_eq(p.n, 1);
    ck_assert_int_eq(p.formats[0], 1);
    ck_assert_uint_eq(p.types[0], 1016); /* int8[] */
    /* clang-format off */
    static const unsigned char want[] = {
        0, 0, 0, 1,  0, 0, 0, 0,  0, 0, 0, 20, /* ndim 1, no NULL, int8 */
        0, 0, 0, 2,  0, 0, 0, 1,               /* 2 elements from index 1 */
        0, 0, 0, 8,  0, 0, 0, 0, 0, 0, 0, 1,   /* 1 */
        0, 0, 0, 8,  0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfe, /* -2 */
    };
    /* clang-format on */
    ck_assert_int_eq(p.lengths[0], (int)sizeof(want));
    ck_assert_mem_eq(p.values[0], want, sizeof(want));
    pg_array_free(&a);

    pg_array_init(&a, PG_ARRAY_TEXT);
    pg_array_bytes(&a, "ab", 2);
    pg_array_null(&a);
    pg_params_init(&p);
    pg_param_array(&p, &a);
    ck_assert_uint_eq(p.types[0], 1009); /* text[] */
    /* clang-format off */
    static const unsigned char want_text[] = {
        0, 0, 0, 1,  0, 0, 0, 1,  0, 0, 0, 25, /* has a NULL, text */
        0, 0, 0, 2,  0, 0, 0, 1,
        0, 0, 0, 2,  'a', 'b',
        0xff, 0xff, 0xff, 0xff,                /* NULL: length -1 */
    };
    /* clang-format on */
    ck_assert_int_eq(p.lengths[0], (int)sizeof(want_text));
    ck_assert_mem_eq(p.values[0], want_text, sizeof(want_text));
    pg_array_free(&a);

    /* int4 and bytea element oids; many elements make the buffer grow. */
    pg_array_init(&a, PG_ARRAY_INT4);
    for (int i = 0; i < 1000; i++)
        pg_array_i32(&a, i);
    pg_params_init(&p);
    pg_param_array(&p, &a);
    ck_assert_uint_eq(p.types[0], 1007);
    ck_assert_int_eq(p.lengths[0], 20 + 1000 * 8);
    const unsigned char *v = (const unsigned char *)p.values[0];
    ck_assert_int_eq(v[20 + 999 * 8 + 6], 999 >> 8);
    ck_assert_int_eq(v[20 + 999 * 8 + 7], 999 & 0xff);
    pg_array_free(&a);

    /* An element too long fails the array, and binding it fails the set. */
    pg_array_init(&a, PG_ARRAY_BYTEA);
    pg_array_bytes(&a, "x", (size_t)INT32_MAX + 1);
    ck_assert(!a.ok);
    pg_params_init(&p);
    pg_param_array(&p, &a);
    ck_assert_int_gt(p.n, PG_MAX_PARAMS);
    pg_array_free(&a);
}
END_TEST

START_TEST(test_too_many)
{
    struct pg_params p;
    pg_params_init(&p);
    for (int i = 0; i < PG_MAX_PARAMS; i++)
        pg_param_i64(&p, i);
    ck_assert_int_eq(p.n, PG_MAX_PARAMS);
    pg_param_i64(&p, 99);
    ck_assert_int_gt(p.n, PG_MAX_PARAMS);
    /* stays invalid, never writes past the arrays */
    pg_param_text(&p, "x");
    pg_param_null(&p);
    ck_assert_int_eq(p.n, PG_MAX_PARAMS + 1);
    /* the earlier values were not touched */
    static const unsigned char last[8] = {0, 0, 0, 0, 0, 0, 0, PG_MAX_PARAMS - 1};
    ck_assert_mem_eq(raw(&p, PG_MAX_PARAMS - 1), last, 8);
}
END_TEST

/* ---- readers, on results built by hand ---- */

static PGresult *
make_result(int ncols, const char *const *names)
{
    PGresult *r = PQmakeEmptyPGresult(NULL, PGRES_TUPLES_OK);
    ck_assert_ptr_nonnull(r);
    PGresAttDesc attrs[8];
    memset(attrs, 0, sizeof(attrs));
    for (int i = 0; i < ncols; i++) {
        attrs[i].name = (char *)names[i];
        attrs[i].format = 1;
        attrs[i].typlen = -1;
    }
    ck_assert(PQsetResultAttrs(r, ncols, attrs));
    return r;
}

static void
set_val(PGresult *r, int row, int col, const void *v, int len)
{
    ck_assert(PQsetvalue(r, row, col, (char *)v, len));
}

START_TEST(test_get_i64_widths)
{
    static const char *const names[] = {"i8", "i4", "i2", "neg8", "neg4", "neg2", "null", "odd"};
    PGresult *r = make_result(8, names);
    static const unsigned char i8[8] = {0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff};
    static const unsigned char i4[4] = {0x00, 0x01, 0x02, 0x03};
    static const unsigned char i2[2] = {0x01, 0x00};
    static const unsigned char n8[8] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xfb};
    static const unsigned char n4[4] = {0x80, 0x00, 0x00, 0x00};
    static const unsigned char n2[2] = {0xff, 0xfe};
    static const unsigned char odd[3] = {1, 2, 3};
    set_val(r, 0, 0, i8, 8);
    set_val(r, 0, 1, i4, 4);
    set_val(r, 0, 2, i2, 2);
    set_val(r, 0, 3, n8, 8);
    set_val(r, 0, 4, n4, 4);
    set_val(r, 0, 5, n2, 2);
    set_val(r, 0, 6, NULL, -1);
    set_val(r, 0, 7, odd, 3);

    ck_assert_int_eq(pg_get_i64(r, 0, 0), INT64_MAX);
    ck_assert_int_eq(pg_get_i64(r, 0, 1), 0x010203);
    ck_assert_int_eq(pg_get_i64(r, 0, 2), 256);
    ck_assert_int_eq(pg_get_i64(r, 0, 3), -5);
    ck_assert_int_eq(pg_get_i64(r, 0, 4), INT32_MIN);
    ck_assert_int_eq(pg_get_i64(r, 0, 5), -2);
    ck_assert(pg_is_null(r, 0, 6));
    ck_assert_int_eq(pg_get_i64(r, 0, 6), 0);
    ck_assert_int_eq(pg_get_i64(r, 0, 7), 0); /* not an integer width */
    ck_assert(!pg_is_null(r, 0, 0));
    PQclear(r);
}
END_TEST

START_TEST(test_get_bool_bytes)
{
    static const char *const names[] = {"t", "f", "b", "empty", "nul"};
    PGresult *r = make_result(5, names);
    static const unsigned char t = 1, f = 0;
    static const unsigned char blob[4] = {0, 'a', 0, 'b'};
    set_val(r, 0, 0, &t, 1);
    set_val(r, 0, 1, &f, 1);
    set_val(r, 0, 2, blob, 4);
    set_val(r, 0, 3, "", 0);
    set_val(r, 0, 4, NULL, -1);

    ck_assert(pg_get_bool(r, 0, 0));
    ck_assert(!pg_get_bool(r, 0, 1));
    ck_assert(!pg_get_bool(r, 0, 4));

    size_t len = 99;
    const char *v = pg_get_bytes(r, 0, 2, &len);
    ck_assert_uint_eq(len, 4);
    ck_assert_mem_eq(v, blob, 4);
    v = pg_get_bytes(r, 0, 3, &len);
    ck_assert_ptr_nonnull(v);
    ck_assert_uint_eq(len, 0);
    len = 99;
    v = pg_get_bytes(r, 0, 4, &len);
    ck_assert_ptr_null(v);
    ck_assert_uint_eq(len, 0);
    PQclear(r);
}
END_TEST

START_TEST(test_col_and_bounds)
{
    static const char *const names[] = {"id", "body"};
    PGresult *r = make_result(2, names);
    set_val(r, 0, 0, "\0\0\0\0\0\0\0\1", 8);
    ck_assert_int_eq(pg_col(r, "id"), 0);
    ck_assert_int_eq(pg_col(r, "body"), 1);
    ck_assert_int_eq(pg_col(r, "nope"), -1);
    ck_assert_int_eq(pg_col(NULL, "id"), -1);
    /* out of range reads as NULL, never crashes */
    ck_assert(pg_is_null(r, 5, 0));
    ck_assert(pg_is_null(r, 0, 9));
    ck_assert_int_eq(pg_get_i64(r, 3, 0), 0);
    ck_assert_ptr_null(pg_get_bytes(r, 0, -1, NULL));
    ck_assert(pg_is_null(NULL, 0, 0));
    ck_assert_int_eq(pg_get_i64(r, 0, 0), 1);
    PQclear(r);
}
END_TEST

/* ---- config validation (nothing connects) ---- */

START_TEST(test_bad_config)
{
    struct event_base *base = event_base_new();
    ck_assert_ptr_nonnull(base);
    struct pg_pool_config cfg = {.conninfo = "host=127.0.0.1 port=1", .size = 0};
    ck_assert_ptr_null(pg_pool_new(base, &cfg, NULL));
    cfg.size = 1;
    cfg.backoff_min_ms = -1;
    ck_assert_ptr_null(pg_pool_new(base, &cfg, NULL));
    cfg.backoff_min_ms = 0;
    cfg.conninfo = "this is = not a conninfo '";
    ck_assert_ptr_null(pg_pool_new(base, &cfg, NULL));
    cfg.conninfo = NULL;
    ck_assert_ptr_null(pg_pool_new(base, &cfg, NULL));
    ck_assert_ptr_null(pg_pool_new(NULL, &cfg, NULL));
    ck_assert_int_eq(pg_pool_connected(NULL), 0);
    pg_pool_free(NULL);
    event_base_free(base);
}
END_TEST

static void
never_cb(const PGresult *res, const struct pg_error *err, void *arg)
{
    ck_abort_msg("callback must not run");
}

/* A pool that cannot have connected yet refuses queries without calling back. */
START_TEST(test_query_before_connect)
{
    struct event_base *base = event_base_new();
    struct pg_pool_config cfg = {.conninfo = "host=127.0.0.1 port=1", .size = 2};
    struct pg_pool *p = pg_pool_new(base, &cfg, NULL);
    ck_assert_ptr_nonnull(p);
    ck_assert_int_eq(pg_pool_size(p), 2);
    ck_assert_int_eq(pg_pool_connected(p), 0);
    ck_assert(pg_pool_prepare(p, "s", "SELECT $1::int8", 1, NULL));
    ck_assert(pg_pool_prepare(p, "s", "SELECT $1::int8", 1, NULL)); /* same again: fine */
    ck_assert(!pg_pool_prepare(p, "s", "SELECT 2", 0, NULL));       /* conflicting */
    struct pg_params params;
    pg_params_init(&params);
    pg_param_i64(&params, 1);
    ck_assert(!pg_query(p, "s", &params, never_cb, NULL));
    ck_assert(!pg_query_sql(p, "SELECT 1", NULL, never_cb, NULL));
    pg_pool_free(p);
    event_base_free(base);
}
END_TEST

static Suite *
pg_suite(void)
{
    Suite *s = suite_create("pg");
    TCase *tc = tcase_create("params");
    tcase_add_test(tc, test_init_empty);
    tcase_add_test(tc, test_i64_network_order);
    tcase_add_test(tc, test_i32_and_bool);
    tcase_add_test(tc, test_text_and_null);
    tcase_add_test(tc, test_bytea);
    tcase_add_test(tc, test_bytea_invalid);
    tcase_add_test(tc, test_array_binary_format);
    tcase_add_test(tc, test_too_many);
    suite_add_tcase(s, tc);

    tc = tcase_create("readers");
    tcase_add_test(tc, test_get_i64_widths);
    tcase_add_test(tc, test_get_bool_bytes);
    tcase_add_test(tc, test_col_and_bounds);
    suite_add_tcase(s, tc);

    tc = tcase_create("pool");
    tcase_add_test(tc, test_bad_config);
    tcase_add_test(tc, test_query_before_connect);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(pg_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
