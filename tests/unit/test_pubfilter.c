/*
 * Unit: notice visibility and the public side of sync (services/logic/pubfilter.c).
 */
#include <check.h>
#include <string.h>

#include "pubfilter.h"

#define NOW 1000000000LL

static struct pub_notice
mk(uint64_t id, enum pub_state st, uint64_t seq)
{
    struct pub_notice n;
    memset(&n, 0, sizeof(n));
    n.notice_id = id;
    n.app_id = 1;
    n.state = st;
    n.version = 1;
    n.seq = seq;
    n.msg_id = 100 + id;
    n.activated = true;
    return n;
}

static struct pub_viewer
viewer(void)
{
    struct pub_viewer v = {.app_id = 1, .uid = 9, .platform = "ios", .core_level = 220819};
    return v;
}

START_TEST(states_and_whitelist)
{
    struct pub_viewer v = viewer();
    struct pub_notice n = mk(1, PUB_DRAFT, 1);
    ck_assert(!pub_visible(&n, &v, NOW));
    n.state = PUB_PREPUBLISHED;
    ck_assert(!pub_visible(&n, &v, NOW));
    v.whitelisted = true;
    ck_assert(pub_visible(&n, &v, NOW));
    n.state = PUB_PUBLISHED;
    v.whitelisted = false;
    ck_assert(pub_visible(&n, &v, NOW));
    n.state = PUB_STOPPED;
    ck_assert(!pub_visible(&n, &v, NOW));
    n.state = PUB_RETRACTED;
    ck_assert(!pub_visible(&n, &v, NOW));
    n.state = PUB_PUBLISHED;
    v.app_id = 2;
    ck_assert(!pub_visible(&n, &v, NOW));
}
END_TEST

START_TEST(window_and_targeting)
{
    struct pub_viewer v = viewer();
    struct pub_notice n = mk(1, PUB_PUBLISHED, 1);
    /* Scheduled: invisible until the database activates it (not this host's clock). */
    n.start_at = NOW + 1;
    n.activated = false;
    ck_assert(!pub_visible(&n, &v, NOW + 5));
    n.activated = true;
    ck_assert(pub_visible(&n, &v, NOW));
    n.start_at = NOW - 10;
    n.expire_at = NOW;
    ck_assert(!pub_visible(&n, &v, NOW));
    n.expire_at = NOW + 1;
    ck_assert(pub_visible(&n, &v, NOW));

    strcpy(n.platforms[0], "android");
    n.nplatforms = 1;
    ck_assert(!pub_visible(&n, &v, NOW));
    strcpy(n.platforms[1], "ios");
    n.nplatforms = 2;
    ck_assert(pub_visible(&n, &v, NOW));

    n.min_core_level = 220820;
    ck_assert(!pub_visible(&n, &v, NOW));
    n.min_core_level = 220819;
    ck_assert(pub_visible(&n, &v, NOW));
    n.max_core_level = 220818;
    ck_assert(!pub_visible(&n, &v, NOW));
    n.max_core_level = 0;
    v.core_level = 0; /* unknown level is outside any bound */
    ck_assert(!pub_visible(&n, &v, NOW));
    n.min_core_level = 0;
    ck_assert(pub_visible(&n, &v, NOW));

    n.login_only = true;
    v.guest = true;
    ck_assert(!pub_visible(&n, &v, NOW));
    v.guest = false;
    ck_assert(pub_visible(&n, &v, NOW));
}
END_TEST

START_TEST(select_moves_g_over_what_it_covers)
{
    struct pub_notice a = mk(1, PUB_PUBLISHED, 3), b = mk(2, PUB_DRAFT, 5),
                      c = mk(3, PUB_PUBLISHED, 7), d = mk(4, PUB_RETRACTED, 9);
    const struct pub_notice *all[] = {&a, &b, &c, &d};
    struct pub_viewer v = viewer();
    struct pub_item out[8];
    uint64_t g;
    bool trunc;

    /* First sync: both visible notices, no tombstone, g to the snapshot's seq. */
    size_t n = pub_select(all, 4, 12, &v, 0, NOW, out, 8, &g, &trunc);
    ck_assert_int_eq(n, 2);
    ck_assert_uint_eq(out[0].n->notice_id, 1);
    ck_assert_uint_eq(out[1].n->notice_id, 3);
    ck_assert_uint_eq(g, 12);
    ck_assert(!trunc);

    /* From g = 3: notice 3 and the tombstone of 4. */
    n = pub_select(all, 4, 12, &v, 3, NOW, out, 8, &g, &trunc);
    ck_assert_int_eq(n, 2);
    ck_assert_uint_eq(out[0].n->notice_id, 3);
    ck_assert_int_eq(out[1].kind, PUB_ITEM_RETRACT);
    ck_assert_uint_eq(g, 12);

    /* Truncated: g stops at the last item taken so the rest come next time. */
    n = pub_select(all, 4, 12, &v, 2, NOW, out, 1, &g, &trunc);
    ck_assert_int_eq(n, 1);
    ck_assert(trunc);
    ck_assert_uint_eq(g, 3);
    n = pub_select(all, 4, 12, &v, g, NOW, out, 1, &g, &trunc);
    ck_assert_uint_eq(out[0].n->notice_id, 3);
    ck_assert_uint_eq(g, 7);

    /* A cache behind the cursor returns nothing and never moves g back. */
    n = pub_select(all, 4, 12, &v, 20, NOW, out, 8, &g, &trunc);
    ck_assert_int_eq(n, 0);
    ck_assert_uint_eq(g, 20);
    /* Nothing visible but the cache is ahead: g moves forward. */
    struct pub_viewer other = viewer();
    other.app_id = 5;
    n = pub_select(all, 4, 12, &other, 0, NOW, out, 8, &g, &trunc);
    ck_assert_int_eq(n, 0);
    ck_assert_uint_eq(g, 12);
    /* cap 0 with candidates: truncated, g kept. */
    n = pub_select(all, 4, 12, &v, 0, NOW, out, 0, &g, &trunc);
    ck_assert_int_eq(n, 0);
    ck_assert(trunc);
    ck_assert_uint_eq(g, 0);
}
END_TEST

START_TEST(gray_release_not_redelivered_on_publish)
{
    struct pub_notice a = mk(1, PUB_PUBLISHED, 8);
    a.gray_seq = 5; /* prepublished at seq 5, published (same version) at seq 8 */
    const struct pub_notice *all[] = {&a};
    struct pub_viewer v = viewer();
    struct pub_item out[2];
    uint64_t g;
    bool trunc;
    v.whitelisted = true;
    ck_assert_int_eq(pub_select(all, 1, 8, &v, 5, NOW, out, 2, &g, &trunc), 0);
    ck_assert_uint_eq(g, 8);
    /* A whitelisted user who had not synced since before the prepublish gets it. */
    ck_assert_int_eq(pub_select(all, 1, 8, &v, 4, NOW, out, 2, &g, &trunc), 1);
    /* Everyone else gets it at publish. */
    v.whitelisted = false;
    ck_assert_int_eq(pub_select(all, 1, 8, &v, 5, NOW, out, 2, &g, &trunc), 1);
}
END_TEST

START_TEST(state_names)
{
    enum pub_state s;
    ck_assert(pub_state_parse("prepublished", &s));
    ck_assert_int_eq(s, PUB_PREPUBLISHED);
    ck_assert_str_eq(pub_state_str(PUB_RETRACTED), "retracted");
    ck_assert(!pub_state_parse("Published", &s));
}
END_TEST

int
main(void)
{
    Suite *s = suite_create("pubfilter");
    TCase *tc = tcase_create("filter");
    tcase_add_test(tc, states_and_whitelist);
    tcase_add_test(tc, window_and_targeting);
    tcase_add_test(tc, select_moves_g_over_what_it_covers);
    tcase_add_test(tc, gray_release_not_redelivered_on_publish);
    tcase_add_test(tc, state_names);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
