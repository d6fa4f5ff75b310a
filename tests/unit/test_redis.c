/*
 * Unit tests of the redis module's pure logic: the reconnect backoff,
 * config validation, and the cluster helpers (hash slots, key positions,
 * MOVED/ASK parsing). No server; see tests/integration/test_redis_client.c
 * and test_redis_cluster.c.
 */
#include "redis.h"
#include "redis_slot.h"

#include <check.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <stdint.h>
#include <stdio.h>
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

START_TEST(crc16_vector)
{
    /* The check value of CRC16-XMODEM, also the one in the Redis Cluster spec. */
    ck_assert_uint_eq(redis_crc16("123456789", 9), 0x31C3);
    ck_assert_uint_eq(redis_crc16("", 0), 0);
    ck_assert_uint_eq(redis_key_slot("123456789", 9), 0x31C3 % 16384);
}
END_TEST

static unsigned
slot_of(const char *key)
{
    return redis_key_slot(key, strlen(key));
}

START_TEST(slot_hash_tags)
{
    /* A tag hashes only its content. */
    ck_assert_uint_eq(slot_of("{user1000}.following"), slot_of("user1000"));
    ck_assert_uint_eq(slot_of("{user1000}.followers"), slot_of("{user1000}.following"));
    ck_assert_uint_eq(slot_of("route:{7:42}"), slot_of("7:42"));
    ck_assert_uint_eq(slot_of("hint:{7:42}"), slot_of("route:{7:42}"));
    /* An empty first tag: the whole key. */
    ck_assert_uint_eq(slot_of("foo{}{bar}"), redis_crc16("foo{}{bar}", 10) % 16384);
    ck_assert_uint_ne(slot_of("foo{}{bar}"), slot_of("bar"));
    /* The first '{' to the first '}' after it. */
    ck_assert_uint_eq(slot_of("foo{{bar}}zap"), slot_of("{bar"));
    ck_assert_uint_eq(slot_of("foo{{bar}}zap"), redis_crc16("{bar", 4) % 16384);
    ck_assert_uint_eq(slot_of("foo{bar}{zap}"), slot_of("bar"));
    /* No closing brace: the whole key. */
    ck_assert_uint_eq(slot_of("foo{bar"), redis_crc16("foo{bar", 7) % 16384);
    /* Known slots (redis-cli CLUSTER KEYSLOT). */
    ck_assert_uint_eq(slot_of("foo"), 12182);
    ck_assert_uint_eq(slot_of("bar"), 5061);
    ck_assert_uint_eq(slot_of("lcs:broadcast"), redis_crc16("lcs:broadcast", 13) % 16384);
    for (int i = 0; i < 1000; i++) {
        char k[32];
        snprintf(k, sizeof(k), "k%d", i);
        ck_assert_uint_lt(slot_of(k), 16384);
    }
}
END_TEST

static int
key_of(int argc, const char **argv)
{
    size_t lens[16];
    for (int i = 0; i < argc; i++)
        lens[i] = strlen(argv[i]);
    return redis_command_key(argc, argv, lens);
}

START_TEST(command_key_positions)
{
    const char *get[] = {"GET", "k"};
    ck_assert_int_eq(key_of(2, get), 1);
    const char *hset[] = {"hset", "route:{1:2}", "dev", "v"};
    ck_assert_int_eq(key_of(4, hset), 1);
    const char *pub[] = {"PUBLISH", "lcs:{n1}", "x"};
    ck_assert_int_eq(key_of(3, pub), 1);
    const char *eval1[] = {"EVAL", "return 1", "1", "hint:{1:2}", "a"};
    ck_assert_int_eq(key_of(5, eval1), 3);
    const char *eval0[] = {"EVAL", "return 1", "0"};
    ck_assert_int_eq(key_of(3, eval0), -1);
    const char *evalsha[] = {"evalsha", "abc", "2", "{a}1", "{a}2"};
    ck_assert_int_eq(key_of(5, evalsha), 3);
    const char *ping[] = {"PING"};
    ck_assert_int_eq(key_of(1, ping), -1);
    const char *ping2[] = {"ping", "hello"};
    ck_assert_int_eq(key_of(2, ping2), -1);
    const char *shards[] = {"CLUSTER", "SHARDS"};
    ck_assert_int_eq(key_of(2, shards), -1);
}
END_TEST

START_TEST(request_args_roundtrip)
{
    const char *argv[] = {"EVAL", "return 1", "1", "k\r\n{x}"};
    size_t lens[4] = {4, 8, 1, 6};
    char buf[256];
    size_t n = redis_format_argv(buf, sizeof(buf), 4, argv, lens);
    const char *out[8];
    size_t outl[8];
    ck_assert_int_eq(redis_request_args(buf, n, out, outl, 8), 4);
    for (int i = 0; i < 4; i++) {
        ck_assert_uint_eq(outl[i], lens[i]);
        ck_assert_int_eq(memcmp(out[i], argv[i], lens[i]), 0);
    }
    /* Too many arguments, truncated, trailing garbage: refused. */
    ck_assert_int_eq(redis_request_args(buf, n, out, outl, 3), -1);
    ck_assert_int_eq(redis_request_args(buf, n - 1, out, outl, 8), -1);
    buf[n] = 'x';
    ck_assert_int_eq(redis_request_args(buf, n + 1, out, outl, 8), -1);
    ck_assert_int_eq(redis_request_args("*1\r\n$3\r\nab\r\n", 13, out, outl, 8), -1);
    ck_assert_int_eq(redis_request_args("", 0, out, outl, 8), -1);
}
END_TEST

static bool
redirect(const char *s, struct redis_redirect *rd)
{
    return redis_parse_redirect(s, strlen(s), rd);
}

START_TEST(redirect_parsing)
{
    struct redis_redirect rd;
    ck_assert(redirect("MOVED 3999 127.0.0.1:6381", &rd));
    ck_assert(!rd.ask);
    ck_assert_uint_eq(rd.slot, 3999);
    ck_assert_str_eq(rd.host, "127.0.0.1");
    ck_assert_int_eq(rd.port, 6381);
    ck_assert(redirect("ASK 16383 10.0.0.7:7002", &rd));
    ck_assert(rd.ask);
    ck_assert_uint_eq(rd.slot, 16383);
    ck_assert_str_eq(rd.host, "10.0.0.7");
    ck_assert_int_eq(rd.port, 7002);
    ck_assert(redirect("MOVED 1 ::1:7000", &rd));
    ck_assert_str_eq(rd.host, "::1");
    ck_assert_int_eq(rd.port, 7000);
    ck_assert(redirect("MOVED 1 [::1]:7000", &rd));
    ck_assert_str_eq(rd.host, "::1");
    /* No announced address: the port only, the caller knows the host. */
    ck_assert(redirect("MOVED 12 :7001", &rd));
    ck_assert_str_eq(rd.host, "");
    ck_assert_int_eq(rd.port, 7001);

    ck_assert(!redirect("MOVED 16384 127.0.0.1:6381", &rd));
    ck_assert(!redirect("MOVED x 127.0.0.1:6381", &rd));
    ck_assert(!redirect("MOVED 5 127.0.0.1", &rd));
    ck_assert(!redirect("MOVED 5 127.0.0.1:0", &rd));
    ck_assert(!redirect("MOVED 5 127.0.0.1:65536", &rd));
    ck_assert(!redirect("MOVED 5", &rd));
    ck_assert(!redirect("ERR wrong kind of value", &rd));
    ck_assert(!redirect("TRYAGAIN Multiple keys request during rehashing of slot", &rd));

    ck_assert(redis_error_retryable("TRYAGAIN x", 10));
    ck_assert(redis_error_retryable("CLUSTERDOWN The cluster is down", 31));
    ck_assert(!redis_error_retryable("ERR x", 5));
}
END_TEST

/* A RESP reply built piece by piece, then parsed by hiredis's reader. */
struct resp {
    char buf[4096];
    size_t n;
};

static void
r_arr(struct resp *r, int n)
{
    r->n += (size_t)snprintf(r->buf + r->n, sizeof(r->buf) - r->n, "*%d\r\n", n);
}

static void
r_str(struct resp *r, const char *s)
{
    r->n += (size_t)snprintf(r->buf + r->n, sizeof(r->buf) - r->n, "$%zu\r\n%s\r\n", strlen(s), s);
}

static void
r_int(struct resp *r, long long v)
{
    r->n += (size_t)snprintf(r->buf + r->n, sizeof(r->buf) - r->n, ":%lld\r\n", v);
}

static redisReply *
r_parse(struct resp *r)
{
    redisReader *rd = redisReaderCreate();
    ck_assert_int_eq(redisReaderFeed(rd, r->buf, r->n), REDIS_OK);
    void *reply = NULL;
    ck_assert_int_eq(redisReaderGetReply(rd, &reply), REDIS_OK);
    ck_assert_ptr_nonnull(reply);
    redisReaderFree(rd);
    return reply;
}

/* One CLUSTER SHARDS node entry. */
static void
r_node(struct resp *r, int port, const char *role, const char *health)
{
    r_arr(r, 8);
    r_str(r, "port");
    r_int(r, port);
    r_str(r, "ip");
    r_str(r, "127.0.0.1");
    r_str(r, "role");
    r_str(r, role);
    r_str(r, "health");
    r_str(r, health);
}

START_TEST(shards_and_slots_parsing)
{
    struct resp r = {.n = 0};
    r_arr(&r, 3);
    /* A healthy shard: the master's address, the replica ignored. */
    r_arr(&r, 4);
    r_str(&r, "slots");
    r_arr(&r, 4);
    r_int(&r, 0);
    r_int(&r, 100);
    r_int(&r, 200);
    r_int(&r, 300);
    r_str(&r, "nodes");
    r_arr(&r, 2);
    r_node(&r, 7003, "replica", "online");
    r_node(&r, 7000, "master", "online");
    /* A shard whose master failed and whose replica is not promoted yet: no owner. */
    r_arr(&r, 4);
    r_str(&r, "slots");
    r_arr(&r, 2);
    r_int(&r, 101);
    r_int(&r, 199);
    r_str(&r, "nodes");
    r_arr(&r, 2);
    r_node(&r, 7001, "master", "failed");
    r_node(&r, 7004, "replica", "online");
    /* A shard without slots (an empty master): nothing. */
    r_arr(&r, 4);
    r_str(&r, "slots");
    r_arr(&r, 0);
    r_str(&r, "nodes");
    r_arr(&r, 1);
    r_node(&r, 7002, "master", "online");
    redisReply *reply = r_parse(&r);
    struct redis_ranges rg = {0};
    ck_assert(redis_parse_shards(reply, &rg));
    ck_assert_uint_eq(rg.n, 2);
    ck_assert_uint_eq(rg.v[0].lo, 0);
    ck_assert_uint_eq(rg.v[0].hi, 100);
    ck_assert_uint_eq(rg.v[1].lo, 200);
    ck_assert_uint_eq(rg.v[1].hi, 300);
    ck_assert_str_eq(rg.v[1].host, "127.0.0.1");
    ck_assert_int_eq(rg.v[0].port, 7000);
    ck_assert_int_eq(rg.v[1].port, 7000);
    free(rg.v);
    /* The same reply is no CLUSTER SLOTS reply. */
    struct redis_ranges bad = {0};
    ck_assert(!redis_parse_slots(reply, &bad));
    free(bad.v);
    freeReplyObject(reply);

    struct resp q = {.n = 0};
    r_arr(&q, 2);
    r_arr(&q, 4);
    r_int(&q, 0);
    r_int(&q, 8191);
    r_arr(&q, 3);
    r_str(&q, "127.0.0.1");
    r_int(&q, 7000);
    r_str(&q, "id0");
    r_arr(&q, 3);
    r_str(&q, "127.0.0.1");
    r_int(&q, 7003);
    r_str(&q, "id3");
    r_arr(&q, 3);
    r_int(&q, 8192);
    r_int(&q, 16383);
    r_arr(&q, 3);
    r_str(&q, "10.0.0.2");
    r_int(&q, 7001);
    r_str(&q, "id1");
    reply = r_parse(&q);
    struct redis_ranges sl = {0};
    ck_assert(redis_parse_slots(reply, &sl));
    ck_assert_uint_eq(sl.n, 2);
    ck_assert_int_eq(sl.v[0].port, 7000);
    ck_assert_uint_eq(sl.v[1].lo, 8192);
    ck_assert_uint_eq(sl.v[1].hi, 16383);
    ck_assert_str_eq(sl.v[1].host, "10.0.0.2");
    free(sl.v);
    freeReplyObject(reply);

    /* Out-of-range slots are refused. */
    struct resp o = {.n = 0};
    r_arr(&o, 1);
    r_arr(&o, 3);
    r_int(&o, 0);
    r_int(&o, 16384);
    r_arr(&o, 2);
    r_str(&o, "127.0.0.1");
    r_int(&o, 7000);
    reply = r_parse(&o);
    struct redis_ranges oo = {0};
    ck_assert(!redis_parse_slots(reply, &oo));
    free(oo.v);
    freeReplyObject(reply);
}
END_TEST

START_TEST(cluster_config)
{
    struct event_base *base = event_base_new();
    struct redis_config c = good;
    /* Malformed seed lists are refused at once. */
    c.nodes = "127.0.0.1";
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    c.nodes = "127.0.0.1:0";
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    c.nodes = " , ";
    ck_assert_ptr_null(redis_new(base, &c, NULL));
    /* A valid list: a cluster client, not connected before the map is read. */
    c.nodes = "127.0.0.1:1, 127.0.0.1:2";
    c.user = "u";
    c.password = "p";
    struct redis *r = redis_new(base, &c, NULL);
    ck_assert_ptr_nonnull(r);
    ck_assert(!redis_connected(r));
    ck_assert(!redis_command(r, NULL, NULL, "GET k"));
    redis_free(r);
    r = redis_subscriber_new(base, &c, NULL, NULL, NULL);
    ck_assert_ptr_null(r);
    event_base_free(base);
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
    tc = tcase_create("cluster");
    tcase_add_test(tc, crc16_vector);
    tcase_add_test(tc, slot_hash_tags);
    tcase_add_test(tc, command_key_positions);
    tcase_add_test(tc, request_args_roundtrip);
    tcase_add_test(tc, redirect_parsing);
    tcase_add_test(tc, shards_and_slots_parsing);
    tcase_add_test(tc, cluster_config);
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
