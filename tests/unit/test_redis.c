/*
 * Unit tests of the redis module's pure logic: the reconnect backoff and
 * config validation (no server; see tests/integration/test_redis_client.c).
 */
#include "redis.h"

#include <check.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

START_TEST(backoff_first_retry_near_min)
{
    uint64_t rng = 42;
    for (int i = 0; i < 1000; i++) {
        int d = redis_backoff_ms(100, 5000, 0, &rng);
        ck_assert_int_ge(d, 75);
        ck_assert_int_le(d, 125);
    }
}
END_TEST

START_TEST(backoff_doubles_then_caps)
{
    uint64_t rng = 7;
    for (unsigned attempt = 0; attempt < 12; attempt++) {
        int base = 100 << attempt;
        if (base > 5000)
            base = 5000;
        for (int i = 0; i < 200; i++) {
            int d = redis_backoff_ms(100, 5000, attempt, &rng);
            ck_assert_int_ge(d, base - base / 4);
            ck_assert_int_le(d, base + base / 4);
        }
    }
}
END_TEST

START_TEST(backoff_huge_attempt_no_overflow)
{
    uint64_t rng = 1;
    int d = redis_backoff_ms(1000, 60000, 4000000000u, &rng);
    ck_assert_int_ge(d, 45000);
    ck_assert_int_le(d, 75000);
    d = redis_backoff_ms(1, 2000000000, 1000, &rng);
    ck_assert_int_gt(d, 0); /* 1.25 * max clamps to INT_MAX instead of wrapping */
}
END_TEST

START_TEST(backoff_jitter_spreads)
{
    /* Clients that lost Redis together must not come back in lockstep. */
    uint64_t rng = 12345;
    int lo = 1 << 30, hi = 0;
    for (int i = 0; i < 1000; i++) {
        int d = redis_backoff_ms(1000, 1000, 5, &rng);
        lo = d < lo ? d : lo;
        hi = d > hi ? d : hi;
    }
    ck_assert_int_lt(lo, 800);
    ck_assert_int_gt(hi, 1200);
}
END_TEST

START_TEST(backoff_deterministic_per_seed)
{
    uint64_t a = 99, b = 99;
    for (unsigned i = 0; i < 20; i++)
        ck_assert_int_eq(redis_backoff_ms(50, 800, i, &a), redis_backoff_ms(50, 800, i, &b));
}
END_TEST

START_TEST(backoff_degenerate_inputs)
{
    uint64_t rng = 0; /* a zero state must not stick at zero */
    int d1 = redis_backoff_ms(0, 0, 0, &rng);
    ck_assert_int_ge(d1, 1);
    ck_assert_uint_ne(rng, 0);
    ck_assert_int_eq(redis_backoff_ms(10, 5, 0, &rng) >= 7, 1); /* max < min: min wins */
}
END_TEST

static const struct redis_config good = {
    .host = "127.0.0.1",
    .port = 6379,
    .connect_timeout_ms = 100,
    .command_timeout_ms = 100,
    .backoff_min_ms = 10,
    .backoff_max_ms = 100,
};

START_TEST(bad_config_rejected)
{
    struct event_base *base = event_base_new();
    struct redis_config c;

    ck_assert_ptr_null(redis_new(base, NULL, NULL));
    ck_assert_ptr_null(redis_new(NULL, &good, NULL));
    c = good;
    c.host = NULL;
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    c = good;
    c.host = "";
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    c = good;
    c.port = 0;
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    c = good;
    c.port = 70000;
    ck_assert_ptr_null(redis_subscriber_new(base, &c, NULL, NULL, NULL));
    c = good;
    c.backoff_min_ms = 0;
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    c = good;
    c.backoff_max_ms = 5;
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    c = good;
    c.command_timeout_ms = -1;
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    c = good;
    c.connect_timeout_ms = -1;
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    event_base_free(base);
}
END_TEST

/* Asserts redis_format_argv gives hiredis's bytes, and handles a short buffer. */
static void
assert_formats_like_hiredis(int argc, const char **argv, const size_t *lens)
{
    char *want = NULL;
    int wn = redisFormatCommandArgv(&want, argc, argv, lens);
    ck_assert_int_gt(wn, 0);
    char buf[4096];
    size_t n = redis_format_argv(buf, sizeof(buf), argc, argv, lens);
    ck_assert_uint_eq(n, (size_t)wn);
    ck_assert_mem_eq(buf, want, n);
    /* too small: the full length is still returned, nothing written past cap */
    char small[16];
    memset(small, '#', sizeof(small));
    char guard = '#';
    ck_assert_uint_eq(redis_format_argv(small, 8, argc, argv, lens), (size_t)wn);
    ck_assert_int_eq(small[8], guard);
    ck_assert_uint_eq(redis_format_argv(NULL, 0, argc, argv, lens), (size_t)wn);
    free(want);
}

START_TEST(format_argv_like_hiredis)
{
    const char *hmget[] = {"HMGET", "hint:{1:18446744073709551615}", "g", "m"};
    assert_formats_like_hiredis(4, hmget, NULL);
    const size_t lens[] = {5, 29, 1, 1};
    assert_formats_like_hiredis(4, hmget, lens);
    /* binary-safe: NUL and CRLF inside an argument, an empty argument */
    const char *bin[] = {"SET", "k\r\n", "a\0b", ""};
    const size_t binlens[] = {3, 3, 3, 0};
    assert_formats_like_hiredis(4, bin, binlens);
    /* lengths with several digits (10, 100, 1000 bytes) */
    static char big[1000];
    memset(big, 'v', sizeof(big));
    const char *many[] = {"RPUSH", "list", big, big, big};
    const size_t manylens[] = {5, 4, 10, 100, 1000};
    assert_formats_like_hiredis(5, many, manylens);
    const char *one[] = {"PING"};
    assert_formats_like_hiredis(1, one, NULL);
}
END_TEST

static Suite *
redis_suite(void)
{
    Suite *s = suite_create("redis");
    TCase *tc = tcase_create("backoff");
    tcase_add_test(tc, backoff_first_retry_near_min);
    tcase_add_test(tc, backoff_doubles_then_caps);
    tcase_add_test(tc, backoff_huge_attempt_no_overflow);
    tcase_add_test(tc, backoff_jitter_spreads);
    tcase_add_test(tc, backoff_deterministic_per_seed);
    tcase_add_test(tc, backoff_degenerate_inputs);
    suite_add_tcase(s, tc);
    tc = tcase_create("config");
    tcase_add_test(tc, bad_config_rejected);
    suite_add_tcase(s, tc);
    tc = tcase_create("format");
    tcase_add_test(tc, format_argv_like_hiredis);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(redis_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
