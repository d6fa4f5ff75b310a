/*
 * Unit: the pure parts of mbox_client (URL parsing, backoff with full
 * jitter, the bounded dedupe set, item keys, the cursor file).
 */
#include <check.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "mbox_client.h"

/* ---- URLs ---------------------------------------------------------------- */

START_TEST(url_ws_with_port_and_path)
{
    struct mbox_url u;
    char err[128];
    ck_assert(mbox_url_parse("ws://127.0.0.1:8090/ws", "ws", &u, err, sizeof(err)));
    ck_assert_str_eq(u.host, "127.0.0.1");
    ck_assert_int_eq(u.port, 8090);
    ck_assert_str_eq(u.path, "/ws");
}
END_TEST

START_TEST(url_http_defaults)
{
    struct mbox_url u;
    char err[128];
    ck_assert(mbox_url_parse("http://localhost", "http", &u, err, sizeof(err)));
    ck_assert_str_eq(u.host, "localhost");
    ck_assert_int_eq(u.port, 80);
    ck_assert_str_eq(u.path, "/");
    ck_assert(mbox_url_parse("HTTP://sdk.example.com:8080/", "http", &u, err, sizeof(err)));
    ck_assert_str_eq(u.host, "sdk.example.com");
    ck_assert_int_eq(u.port, 8080);
    ck_assert_str_eq(u.path, "/");
    ck_assert(mbox_url_parse("http://10.0.0.1:1/api/v2", "http", &u, err, sizeof(err)));
    ck_assert_str_eq(u.path, "/api/v2");
}
END_TEST

START_TEST(url_tls)
{
    struct mbox_url u;
    char err[128];
    ck_assert(mbox_url_parse("ws://127.0.0.1:8090/ws", "ws", &u, err, sizeof(err)));
    ck_assert(!u.tls);
    ck_assert(mbox_url_parse("wss://lcs.example.com/ws", "ws", &u, err, sizeof(err)));
    ck_assert(u.tls);
    ck_assert_str_eq(u.host, "lcs.example.com");
    ck_assert_int_eq(u.port, 443);
    ck_assert_str_eq(u.path, "/ws");
    ck_assert(mbox_url_parse("WSS://[::1]:8443/ws", "ws", &u, err, sizeof(err)));
    ck_assert(u.tls);
    ck_assert_int_eq(u.port, 8443);
    ck_assert(mbox_url_parse("https://sdk.example.com", "http", &u, err, sizeof(err)));
    ck_assert(u.tls);
    ck_assert_int_eq(u.port, 443);
    ck_assert(mbox_url_parse("http://sdk.example.com", "http", &u, err, sizeof(err)));
    ck_assert(!u.tls);
    ck_assert_int_eq(u.port, 80);
    ck_assert(!mbox_url_parse("https://sdk.example.com", "ws", &u, err, sizeof(err)));
    ck_assert(strstr(err, "ws://") != NULL && strstr(err, "wss://") != NULL);
}
END_TEST

START_TEST(url_ipv6)
{
    struct mbox_url u;
    char err[128];
    ck_assert(mbox_url_parse("ws://[::1]:8090/ws", "ws", &u, err, sizeof(err)));
    ck_assert_str_eq(u.host, "::1");
    ck_assert_int_eq(u.port, 8090);
    ck_assert(!mbox_url_parse("ws://[::1:8090/ws", "ws", &u, err, sizeof(err)));
}
END_TEST

START_TEST(url_errors)
{
    static const char *const bad[] = {
        "",
        "127.0.0.1:8090",
        "http://127.0.0.1:8090/ws",
        "https://127.0.0.1:8090/ws",
        "wsss://127.0.0.1:8090/ws",
        "ws s://127.0.0.1:8090/ws",
        "ws://",
        "ws://:8090/ws",
        "ws://host:/ws",
        "ws://host:0/ws",
        "ws://host:65536/ws",
        "ws://host:80x/ws",
        "ws://host:1234567/ws",
        "ws://user@host/ws",
        "ws://host/ws?x=1",
        "ws://host/ws#f",
        "ws://ho st/ws",
        "ws://host/w s",
        "ws://h\xc3\xa9st/ws",
        "ws:/host/ws",
    };
    struct mbox_url u;
    char err[128];
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(!mbox_url_parse(bad[i], "ws", &u, err, sizeof(err)), "accepted '%s'", bad[i]);
        ck_assert_msg(err[0] != '\0', "no message for '%s'", bad[i]);
    }
    ck_assert(!mbox_url_parse(NULL, "ws", &u, err, sizeof(err)));
    char longhost[400] = "ws://";
    memset(longhost + 5, 'a', 300);
    ck_assert(!mbox_url_parse(longhost, "ws", &u, err, sizeof(err)));
}
END_TEST

/* ---- backoff ------------------------------------------------------------- */

START_TEST(backoff_ceiling_doubles_to_cap)
{
    struct mbox_backoff b;
    mbox_backoff_init(&b, 200, 30000);
    uint32_t expect[] = {200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000};
    for (size_t i = 0; i < sizeof(expect) / sizeof(expect[0]); i++) {
        ck_assert_uint_eq(mbox_backoff_ceiling(&b), expect[i]);
        (void)mbox_backoff_next(&b, 0);
    }
    /* Many attempts never overflow past the cap. */
    for (int i = 0; i < 100; i++)
        (void)mbox_backoff_next(&b, UINT32_MAX);
    ck_assert_uint_eq(mbox_backoff_ceiling(&b), 30000);
    mbox_backoff_reset(&b);
    ck_assert_uint_eq(mbox_backoff_ceiling(&b), 200);
}
END_TEST

START_TEST(backoff_full_jitter_bounds)
{
    struct mbox_backoff b;
    mbox_backoff_init(&b, 200, 30000);
    /* Extremes of the random value hit the floor and the ceiling. */
    ck_assert_uint_eq(mbox_backoff_next(&b, 0), 50);
    mbox_backoff_reset(&b);
    ck_assert_uint_eq(mbox_backoff_next(&b, UINT32_MAX), 200);
    ck_assert_uint_eq(mbox_backoff_next(&b, UINT32_MAX), 400);

    /* Random draws: always within [base/4, ceiling], spread over it, growing on average. */
    srand(42);
    double prev_mean = 0;
    for (uint32_t attempt = 0; attempt < 10; attempt++) {
        double sum = 0;
        uint32_t lo = UINT32_MAX, hi = 0, ceil = 0;
        for (int k = 0; k < 2000; k++) {
            mbox_backoff_init(&b, 200, 30000);
            for (uint32_t a = 0; a < attempt; a++)
                (void)mbox_backoff_next(&b, 0);
            ceil = mbox_backoff_ceiling(&b);
            uint32_t r = ((uint32_t)rand() << 16) ^ (uint32_t)rand();
            uint32_t d = mbox_backoff_next(&b, r);
            ck_assert_uint_ge(d, 50);
            ck_assert_uint_le(d, ceil);
            lo = d < lo ? d : lo;
            hi = d > hi ? d : hi;
            sum += d;
        }
        double mean = sum / 2000;
        /* Full jitter: draws cover most of the range, not a band near the top. */
        ck_assert_uint_lt(lo, 50 + (ceil - 50) / 10 + 1);
        ck_assert_uint_gt(hi, ceil - (ceil - 50) / 10 - 1);
        if (ceil < 30000)
            ck_assert(mean > prev_mean);
        prev_mean = mean;
    }
}
END_TEST

START_TEST(backoff_degenerate_config)
{
    struct mbox_backoff b;
    mbox_backoff_init(&b, 0, 0);
    ck_assert_uint_ge(mbox_backoff_ceiling(&b), 1);
    mbox_backoff_init(&b, 500, 100); /* cap below base: cap = base */
    ck_assert_uint_eq(mbox_backoff_ceiling(&b), 500);
    (void)mbox_backoff_next(&b, 0);
    ck_assert_uint_eq(mbox_backoff_ceiling(&b), 500);
}
END_TEST

/* ---- dedupe -------------------------------------------------------------- */

START_TEST(dedupe_add_contains_clear)
{
    struct mbox_dedupe *d = mbox_dedupe_new(8);
    ck_assert_ptr_nonnull(d);
    ck_assert_int_eq(mbox_dedupe_add(d, "message/1/0"), 1);
    ck_assert_int_eq(mbox_dedupe_add(d, "message/1/0"), 0);
    ck_assert_int_eq(mbox_dedupe_add(d, "notice/1/0"), 1);
    ck_assert_int_eq(mbox_dedupe_add(d, "notice/1/1"), 1);
    ck_assert(mbox_dedupe_contains(d, "notice/1/1"));
    ck_assert(!mbox_dedupe_contains(d, "notice/1/2"));
    ck_assert_uint_eq(mbox_dedupe_count(d), 3);
    char big[200];
    memset(big, 'k', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    ck_assert_int_eq(mbox_dedupe_add(d, big), -1);
    mbox_dedupe_clear(d);
    ck_assert_uint_eq(mbox_dedupe_count(d), 0);
    ck_assert(!mbox_dedupe_contains(d, "message/1/0"));
    ck_assert_int_eq(mbox_dedupe_add(d, "message/1/0"), 1);
    mbox_dedupe_free(d);
    ck_assert_ptr_null(mbox_dedupe_new(0));
}
END_TEST

START_TEST(dedupe_is_bounded_fifo)
{
    enum { CAP = 100 };
    struct mbox_dedupe *d = mbox_dedupe_new(CAP);
    char key[32];
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "message/%d/0", i);
        ck_assert_int_eq(mbox_dedupe_add(d, key), 1);
        ck_assert_uint_eq(mbox_dedupe_count(d), i + 1 < CAP ? (size_t)i + 1 : CAP);
    }
    /* Exactly the last CAP keys are remembered. */
    for (int i = 0; i < 1000; i++) {
        snprintf(key, sizeof(key), "message/%d/0", i);
        ck_assert_msg(mbox_dedupe_contains(d, key) == (i >= 1000 - CAP), "key %d", i);
    }
    /* Re-adding a remembered key does not evict anything. */
    ck_assert_int_eq(mbox_dedupe_add(d, "message/999/0"), 0);
    ck_assert(mbox_dedupe_contains(d, "message/900/0"));
    mbox_dedupe_free(d);
}
END_TEST

START_TEST(item_keys)
{
    char k[MBOX_DEDUPE_KEY_MAX + 1];
    json_t *j = json_loads("{\"kind\":\"message\",\"msg_id\":\"1679757323320865\"}", 0, NULL);
    ck_assert(mbox_item_key(j, k, sizeof(k)));
    ck_assert_str_eq(k, "message/1679757323320865/0");
    json_decref(j);
    j = json_loads("{\"kind\":\"notice\",\"notice_id\":\"17\",\"version\":3,\"msg_id\":\"5\"}", 0,
                   NULL);
    ck_assert(mbox_item_key(j, k, sizeof(k)));
    ck_assert_str_eq(k, "notice/17/3");
    json_decref(j);
    j = json_loads("{\"kind\":\"retract\",\"notice_id\":17,\"msg_id\":\"5\"}", 0, NULL);
    ck_assert(mbox_item_key(j, k, sizeof(k)));
    ck_assert_str_eq(k, "retract/17/0");
    json_decref(j);
    j = json_loads("{\"kind\":\"recall\",\"msg_id\":\"9\",\"recalled_msg_id\":\"5\"}", 0, NULL);
    ck_assert(mbox_item_key(j, k, sizeof(k)));
    ck_assert_str_eq(k, "recall/9/0");
    json_decref(j);
    static const char *const bad[] = {
        "{\"msg_id\":\"1\"}",
        "{\"kind\":\"message\"}",
        "{\"kind\":\"message\",\"msg_id\":\"x1\"}",
        "{\"kind\":\"message\",\"msg_id\":-1}",
        "{\"kind\":\"notice\",\"msg_id\":\"1\"}",
        "{\"kind\":\"notice\",\"notice_id\":\"1\",\"version\":\"v\"}",
        "{\"kind\":\"averyveryverylongkind\",\"msg_id\":\"1\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        j = json_loads(bad[i], 0, NULL);
        ck_assert_ptr_nonnull(j);
        ck_assert_msg(!mbox_item_key(j, k, sizeof(k)), "accepted %s", bad[i]);
        json_decref(j);
    }
}
END_TEST

/* ---- cursor file --------------------------------------------------------- */

static char tmpdir[256];

static void
mk_tmpdir(void)
{
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/mbox_client_test.XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
}

static void
rm_tmpdir(void)
{
    char cmd[300];
    snprintf(cmd, sizeof(cmd), "rm -rf '%s'", tmpdir);
    ck_assert_int_eq(system(cmd), 0);
}

static void
write_raw(const char *path, const char *bytes, size_t n)
{
    FILE *f = fopen(path, "wb");
    ck_assert_ptr_nonnull(f);
    ck_assert_uint_eq(fwrite(bytes, 1, n, f), n);
    fclose(f);
}

START_TEST(cursor_round_trip)
{
    mk_tmpdir();
    char path[300], out[MBOX_CURSOR_MAX + 1], err[256];
    snprintf(path, sizeof(path), "%s/cursor", tmpdir);
    ck_assert_int_eq(mbox_cursor_load(path, out, sizeof(out)), MBOX_CURSOR_FILE_MISSING);
    ck_assert_str_eq(out, "");
    const char *c1 = "AQAAAAEABfeJ0y6JIQAAAAAAAAAAmF4Qzg";
    ck_assert(mbox_cursor_save(path, c1, err, sizeof(err)));
    ck_assert_int_eq(mbox_cursor_load(path, out, sizeof(out)), MBOX_CURSOR_FILE_OK);
    ck_assert_str_eq(out, c1);
    /* Overwrite; no temp file is left behind. */
    ck_assert(mbox_cursor_save(path, "abc_-XYZ", err, sizeof(err)));
    ck_assert_int_eq(mbox_cursor_load(path, out, sizeof(out)), MBOX_CURSOR_FILE_OK);
    ck_assert_str_eq(out, "abc_-XYZ");
    char tmp[320];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    ck_assert_int_ne(access(tmp, F_OK), 0);
    /* The empty cursor (after a reset) round-trips too. */
    ck_assert(mbox_cursor_save(path, "", err, sizeof(err)));
    ck_assert_int_eq(mbox_cursor_load(path, out, sizeof(out)), MBOX_CURSOR_FILE_OK);
    ck_assert_str_eq(out, "");
    /* Not a cursor: refused, the file keeps the old value. */
    ck_assert(!mbox_cursor_save(path, "bad cursor\n", err, sizeof(err)));
    ck_assert(mbox_cursor_save(path, "keep", err, sizeof(err)));
    ck_assert(!mbox_cursor_save(path, "a/b", err, sizeof(err)));
    ck_assert_int_eq(mbox_cursor_load(path, out, sizeof(out)), MBOX_CURSOR_FILE_OK);
    ck_assert_str_eq(out, "keep");
    /* A directory that does not exist: an error with a message. */
    snprintf(path, sizeof(path), "%s/missing/cursor", tmpdir);
    err[0] = '\0';
    ck_assert(!mbox_cursor_save(path, "x", err, sizeof(err)));
    ck_assert(err[0] != '\0');
    rm_tmpdir();
}
END_TEST

START_TEST(cursor_torn_or_foreign_file)
{
    mk_tmpdir();
    char path[300], out[MBOX_CURSOR_MAX + 1];
    snprintf(path, sizeof(path), "%s/cursor", tmpdir);
    static const struct {
        const char *bytes;
        size_t n;
    } cases[] = {
        {"", 0},                  /* empty: torn before the first byte */
        {"AQAAAAEABfe", 11},      /* no newline: torn */
        {"abc\n\n", 5},           /* two lines */
        {"ab c\n", 5},            /* not base64url */
        {"ab\0c\n", 5},           /* NUL inside */
        {"{\"cursor\":1}\n", 13}, /* someone else's file */
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        write_raw(path, cases[i].bytes, cases[i].n);
        strcpy(out, "junk");
        ck_assert_msg(mbox_cursor_load(path, out, sizeof(out)) == MBOX_CURSOR_FILE_INVALID,
                      "case %zu", i);
        ck_assert_str_eq(out, "");
    }
    /* Too long. */
    char big[MBOX_CURSOR_MAX + 10];
    memset(big, 'a', sizeof(big));
    big[sizeof(big) - 1] = '\n';
    write_raw(path, big, sizeof(big));
    ck_assert_int_eq(mbox_cursor_load(path, out, sizeof(out)), MBOX_CURSOR_FILE_INVALID);
    /* Exactly the longest accepted cursor. */
    memset(big, 'a', MBOX_CURSOR_MAX);
    big[MBOX_CURSOR_MAX] = '\n';
    write_raw(path, big, MBOX_CURSOR_MAX + 1);
    ck_assert_int_eq(mbox_cursor_load(path, out, sizeof(out)), MBOX_CURSOR_FILE_OK);
    ck_assert_uint_eq(strlen(out), MBOX_CURSOR_MAX);
    /* A directory in place of the file. */
    ck_assert_int_eq(unlink(path), 0);
    ck_assert_int_eq(mkdir(path, 0700), 0);
    ck_assert_int_eq(mbox_cursor_load(path, out, sizeof(out)), MBOX_CURSOR_FILE_INVALID);
    rm_tmpdir();
}
END_TEST

START_TEST(cursor_valid_chars)
{
    ck_assert(mbox_cursor_valid(""));
    ck_assert(mbox_cursor_valid("AZaz09-_"));
    ck_assert(!mbox_cursor_valid("a+b"));
    ck_assert(!mbox_cursor_valid("a=b"));
    ck_assert(!mbox_cursor_valid("a\"b"));
    char big[MBOX_CURSOR_MAX + 2];
    memset(big, 'a', MBOX_CURSOR_MAX + 1);
    big[MBOX_CURSOR_MAX + 1] = '\0';
    ck_assert(!mbox_cursor_valid(big));
    big[MBOX_CURSOR_MAX] = '\0';
    ck_assert(mbox_cursor_valid(big));
}
END_TEST

/* ---- token refresh ---------------------------------------------------------- */

START_TEST(refresh_delay_before_expiry)
{
    int64_t now = INT64_C(1800000000000000);
    /* A fifth of the time left before the expiry... */
    ck_assert_uint_eq(mbox_refresh_delay_ms(now, now + 2000 * 1000), 1600);
    ck_assert_uint_eq(mbox_refresh_delay_ms(now, now + 100 * 1000), 80);
    /* ... but at most 60 s before it. */
    ck_assert_uint_eq(mbox_refresh_delay_ms(now, now + INT64_C(86400) * 1000000),
                      86400 * 1000 - 60000);
    ck_assert_uint_eq(mbox_refresh_delay_ms(now, now + 300 * 1000000), 240 * 1000);
    /* Due or past: at once. */
    ck_assert_uint_eq(mbox_refresh_delay_ms(now, now), 0);
    ck_assert_uint_eq(mbox_refresh_delay_ms(now, now - 5), 0);
    ck_assert_uint_eq(mbox_refresh_delay_ms(now, now + 999), 0);
    /* Far away: clamped to a timer libevent takes. */
    ck_assert_uint_le(mbox_refresh_delay_ms(0, INT64_MAX), INT32_MAX);
}
END_TEST

START_TEST(token_file_load)
{
    mk_tmpdir();
    char path[512], tok[MBOX_TOKEN_MAX + 1];
    snprintf(path, sizeof(path), "%s/token", tmpdir);
    ck_assert(!mbox_token_load(path, tok, sizeof(tok))); /* missing */
    ck_assert_str_eq(tok, "");
    write_raw(path, "v1.k1.AAAA.BBBB\n", 16);
    ck_assert(mbox_token_load(path, tok, sizeof(tok)));
    ck_assert_str_eq(tok, "v1.k1.AAAA.BBBB");
    write_raw(path, "v1.k1.CCCC.DDDD  \r\n\n", 20);
    ck_assert(mbox_token_load(path, tok, sizeof(tok)));
    ck_assert_str_eq(tok, "v1.k1.CCCC.DDDD");
    /* Empty, two lines, inner spaces, a NUL: not one token. */
    const char *bad[] = {"", "\n", "a\nb\n", "a b\n", "\ta\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        write_raw(path, bad[i], strlen(bad[i]));
        ck_assert_msg(!mbox_token_load(path, tok, sizeof(tok)), "accepted %zu", i);
        ck_assert_str_eq(tok, "");
    }
    write_raw(path, "ab\0cd\n", 6);
    ck_assert(!mbox_token_load(path, tok, sizeof(tok)));
    /* Longer than MBOX_TOKEN_MAX: refused, never truncated. */
    size_t n = MBOX_TOKEN_MAX + 1;
    char *big = malloc(n + 1);
    memset(big, 'a', n);
    big[n] = '\n';
    write_raw(path, big, n + 1);
    ck_assert(!mbox_token_load(path, tok, sizeof(tok)));
    write_raw(path, big, MBOX_TOKEN_MAX);
    ck_assert(mbox_token_load(path, tok, sizeof(tok)));
    ck_assert_uint_eq(strlen(tok), MBOX_TOKEN_MAX);
    /* A buffer too small for the token. */
    char small[8];
    write_raw(path, "v1.k1.AAAA.BBBB\n", 16);
    ck_assert(!mbox_token_load(path, small, sizeof(small)));
    free(big);
    rm_tmpdir();
}
END_TEST

static Suite *
mbox_client_suite(void)
{
    Suite *s = suite_create("mbox_client");
    TCase *tc = tcase_create("url");
    tcase_add_test(tc, url_ws_with_port_and_path);
    tcase_add_test(tc, url_http_defaults);
    tcase_add_test(tc, url_tls);
    tcase_add_test(tc, url_ipv6);
    tcase_add_test(tc, url_errors);
    suite_add_tcase(s, tc);
    tc = tcase_create("backoff");
    tcase_add_test(tc, backoff_ceiling_doubles_to_cap);
    tcase_add_test(tc, backoff_full_jitter_bounds);
    tcase_add_test(tc, backoff_degenerate_config);
    suite_add_tcase(s, tc);
    tc = tcase_create("dedupe");
    tcase_add_test(tc, dedupe_add_contains_clear);
    tcase_add_test(tc, dedupe_is_bounded_fifo);
    tcase_add_test(tc, item_keys);
    suite_add_tcase(s, tc);
    tc = tcase_create("cursor_file");
    tcase_add_test(tc, cursor_round_trip);
    tcase_add_test(tc, cursor_torn_or_foreign_file);
    tcase_add_test(tc, cursor_valid_chars);
    suite_add_tcase(s, tc);
    tc = tcase_create("token_refresh");
    tcase_add_test(tc, refresh_delay_before_expiry);
    tcase_add_test(tc, token_file_load);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(mbox_client_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
