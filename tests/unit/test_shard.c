/*
 * Unit: the bucket hash, pg_shards parsing and the bucket map checks
 * (services/logic/shard.c).
 */
#include <check.h>
#include <stdlib.h>
#include <string.h>

#include "shard.h"

/*
 * Pinned: every logicd, the SQL function mbox_bucket() and any tool that
 * moves buckets must agree, for ever. A change here is a data migration,
 * not a code change.
 */
START_TEST(bucket_values_pinned)
{
    static const struct {
        uint64_t app, uid;
        unsigned bucket;
    } want[] = {
        {0ULL, 0ULL, 108},
        {1ULL, 1ULL, 1931},
        {1ULL, 2ULL, 2774},
        {1ULL, 42ULL, 1321},
        {7ULL, 1000000ULL, 3501},
        {1ULL, 18446744073709551615ULL, 758},
        {18446744073709551615ULL, 1ULL, 2303},
        {123456789ULL, 987654321ULL, 1999},
    };
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        ck_assert_uint_eq(shard_bucket(want[i].app, want[i].uid), want[i].bucket);
}
END_TEST

START_TEST(bucket_spread)
{
    /* Consecutive uids of one app fill every bucket, none far off the mean. */
    static unsigned count[LOGIC_BUCKETS];
    memset(count, 0, sizeof(count));
    for (uint64_t uid = 0; uid < 100 * LOGIC_BUCKETS; uid++) {
        unsigned b = shard_bucket(1, uid);
        ck_assert_uint_lt(b, LOGIC_BUCKETS);
        count[b]++;
    }
    for (unsigned b = 0; b < LOGIC_BUCKETS; b++) {
        ck_assert_uint_gt(count[b], 40);
        ck_assert_uint_lt(count[b], 160);
    }
    /* The app takes part: the same uid in two apps is not the same mailbox. */
    int differ = 0;
    for (uint64_t uid = 0; uid < 100; uid++)
        differ += shard_bucket(1, uid) != shard_bucket(2, uid);
    ck_assert_int_gt(differ, 90);
}
END_TEST

START_TEST(initial_ranges)
{
    ck_assert_int_eq(shard_initial(0, 1), 0);
    ck_assert_int_eq(shard_initial(4095, 1), 0);
    ck_assert_int_eq(shard_initial(2047, 2), 0);
    ck_assert_int_eq(shard_initial(2048, 2), 1);
    ck_assert_int_eq(shard_initial(4095, 3), 2);
    /* Every shard gets buckets, in order. */
    int last = 0;
    for (unsigned b = 0; b < LOGIC_BUCKETS; b++) {
        int s = shard_initial(b, 7);
        ck_assert(s == last || s == last + 1);
        last = s;
    }
    ck_assert_int_eq(last, 6);
}
END_TEST

START_TEST(list_parse)
{
    char *l[LOGIC_MAX_SHARDS] = {NULL};
    char err[256];
    ck_assert_int_eq(shard_list_parse("", l, LOGIC_MAX_SHARDS, err, sizeof(err)), 0);
    ck_assert_int_eq(shard_list_parse(NULL, l, LOGIC_MAX_SHARDS, err, sizeof(err)), 0);
    ck_assert_int_eq(shard_list_parse("  \n\t ", l, LOGIC_MAX_SHARDS, err, sizeof(err)), 0);
    int n = shard_list_parse(" postgresql://a:1/mbox\n\tpostgres://u:p@b/mbox?sslmode=disable  ", l,
                             LOGIC_MAX_SHARDS, err, sizeof(err));
    ck_assert_int_eq(n, 2);
    ck_assert_str_eq(l[0], "postgresql://a:1/mbox");
    ck_assert_str_eq(l[1], "postgres://u:p@b/mbox?sslmode=disable");
    shard_list_free(l, n);
    ck_assert_ptr_null(l[0]);
    /* key=value strings have spaces of their own: refused, naming the entry. */
    ck_assert_int_eq(shard_list_parse("postgresql://a/x host=b port=5432", l, LOGIC_MAX_SHARDS, err,
                                      sizeof(err)),
                     -1);
    ck_assert_ptr_nonnull(strstr(err, "entry 2"));
    ck_assert_ptr_null(l[0]);
    ck_assert_int_eq(
        shard_list_parse("postgresql://a postgresql://b postgresql://c", l, 2, err, sizeof(err)),
        -1);
    ck_assert_ptr_nonnull(strstr(err, "more than 2"));
    ck_assert_ptr_null(l[0]);
}
END_TEST

static void
full_map(struct shard_map *m, uint16_t *seen, int n)
{
    memset(m, 0, sizeof(*m));
    m->nshards = n;
    m->version = 1;
    for (unsigned b = 0; b < LOGIC_BUCKETS; b++) {
        m->shard_of[b] = (uint8_t)shard_initial(b, n);
        seen[b] = 1;
    }
}

START_TEST(map_check)
{
    static struct shard_map m;
    static uint16_t seen[LOGIC_BUCKETS];
    char err[256];
    full_map(&m, seen, 2);
    ck_assert(shard_map_check(&m, seen, 2, err, sizeof(err)));
    ck_assert_int_eq(shard_of(&m, 1, 42), shard_initial(shard_bucket(1, 42), 2));
    /* Another count than configured. */
    ck_assert(!shard_map_check(&m, seen, 3, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "made for 2 shards but pg_shards lists 3"));
    /* A bucket missing or twice. */
    seen[17] = 0;
    ck_assert(!shard_map_check(&m, seen, 2, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "bucket 17 0 times"));
    seen[17] = 2;
    ck_assert(!shard_map_check(&m, seen, 2, err, sizeof(err)));
    seen[17] = 1;
    /* A shard index out of range. */
    m.shard_of[4095] = 2;
    ck_assert(!shard_map_check(&m, seen, 2, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "bucket 4095 to shard 2 of 2"));
}
END_TEST

START_TEST(move_args)
{
    char a0[] = "logicd", a1[] = "-c", a2[] = "x.conf", a3[] = "--move-bucket", a4[] = "4095",
         a5[] = "--to", a6[] = "1";
    char *argv[] = {a0, a3, a4, a1, a2, a5, a6, NULL};
    int argc = 7, to = -1;
    unsigned b = 0;
    char err[200];
    ck_assert_int_eq(shard_move_args(&argc, argv, &b, &to, err, sizeof(err)), 1);
    ck_assert_uint_eq(b, 4095);
    ck_assert_int_eq(to, 1);
    /* What is left is for the config parser, in order. */
    ck_assert_int_eq(argc, 3);
    ck_assert_str_eq(argv[1], "-c");
    ck_assert_str_eq(argv[2], "x.conf");
    ck_assert_ptr_null(argv[3]);
    /* Neither: nothing removed. */
    ck_assert_int_eq(shard_move_args(&argc, argv, &b, &to, err, sizeof(err)), 0);
    ck_assert_int_eq(argc, 3);
    /* Out of range, not a number, missing value, one without the other. */
    static const char *const bad[][3] = {
        {"--move-bucket", "4096", "--to"},
        {"--move-bucket", "-1", "--to"},
        {"--move-bucket", "7x", "--to"},
        {"--move-bucket", "", "--to"},
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char *v[] = {a0, (char *)bad[i][0], (char *)bad[i][1], (char *)bad[i][2], a6, NULL};
        int n = 5;
        ck_assert_int_eq(shard_move_args(&n, v, &b, &to, err, sizeof(err)), -1);
        ck_assert_ptr_nonnull(strstr(err, "--move-bucket takes a number"));
    }
    char *v1[] = {a0, a5, (char *)"64", NULL};
    int n = 3;
    ck_assert_int_eq(shard_move_args(&n, v1, &b, &to, err, sizeof(err)), -1);
    char *v2[] = {a0, a3, (char *)"5", NULL};
    n = 3;
    ck_assert_int_eq(shard_move_args(&n, v2, &b, &to, err, sizeof(err)), -1);
    ck_assert_ptr_nonnull(strstr(err, "go together"));
    char *v3[] = {a0, a3, NULL};
    n = 2;
    ck_assert_int_eq(shard_move_args(&n, v3, &b, &to, err, sizeof(err)), -1);
}
END_TEST

int
main(void)
{
    Suite *s = suite_create("shard");
    TCase *tc = tcase_create("shard");
    tcase_add_test(tc, bucket_values_pinned);
    tcase_add_test(tc, bucket_spread);
    tcase_add_test(tc, initial_ranges);
    tcase_add_test(tc, list_parse);
    tcase_add_test(tc, map_check);
    tcase_add_test(tc, move_args);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
