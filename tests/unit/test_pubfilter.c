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

/* A viewer known only by its platform hash (a cursor's attributes) targets like the name. */
START_TEST(platform_by_hash)
{
    ck_assert_uint_eq(pub_platform_hash(""), 0);
    ck_assert_uint_ne(pub_platform_hash("ios"), 0);
    ck_assert_uint_ne(pub_platform_hash("ios"), pub_platform_hash("android"));
    ck_assert_uint_eq(pub_platform_hash("ios"), 0x80eb9be6u); /* FNV-1a, computed independently */
    struct pub_notice n = mk(1, PUB_PUBLISHED, 1);
    strcpy(n.platforms[0], "android");
    strcpy(n.platforms[1], "ios");
    n.nplatforms = 2;
    struct pub_viewer v = viewer();
    v.platform = NULL;
    v.platform_hash = pub_platform_hash("ios");
    ck_assert(pub_visible(&n, &v, NOW));
    v.platform_hash = pub_platform_hash("web");
    ck_assert(!pub_visible(&n, &v, NOW));
    v.platform_hash = 0; /* unknown platform: outside any list */
    ck_assert(!pub_visible(&n, &v, NOW));
    n.nplatforms = 0;
    ck_assert(pub_visible(&n, &v, NOW));
}
END_TEST

/*
 * An upgraded client gains, below g, exactly the live notices it sees now
 * and did not see with the cursor's attributes, in seq order, capped.
 */
START_TEST(gained_after_attribute_change)
{
    struct pub_notice n[7];
    n[0] = mk(1, PUB_PUBLISHED, 1); /* everyone: already delivered */
    n[1] = mk(2, PUB_PUBLISHED, 2); /* core level >= 300000: gained */
    n[1].min_core_level = 300000;
    n[2] = mk(3, PUB_PUBLISHED, 3); /* core level <= 100000: lost, not gained */
    n[2].max_core_level = 100000;
    n[3] = mk(4, PUB_PUBLISHED, 4); /* gained but expired: nothing */
    n[3].min_core_level = 300000;
    n[3].expire_at = NOW;
    n[4] = mk(5, PUB_PREPUBLISHED, 5); /* gained only for the whitelist */
    n[4].min_core_level = 300000;
    n[5] = mk(6, PUB_PUBLISHED, 6); /* android only: not gained by an ios client */
    strcpy(n[5].platforms[0], "android");
    n[5].nplatforms = 1;
    n[6] = mk(7, PUB_PUBLISHED, 9); /* after g: the normal select's business */
    n[6].min_core_level = 300000;
    const struct pub_notice *ns[7];
    for (int i = 0; i < 7; i++)
        ns[i] = &n[i];
    struct pub_viewer now = viewer(), old = viewer();
    now.core_level = 300001;
    old.platform = NULL;
    old.platform_hash = pub_platform_hash("ios");
    old.core_level = 90000;
    struct pub_item out[8];
    bool more;
    size_t got = pub_select_gained(ns, 7, &now, &old, 8, NOW, out, 8, &more);
    ck_assert_uint_eq(got, 1);
    ck_assert(!more);
    ck_assert_uint_eq(out[0].n->notice_id, 2);
    ck_assert_int_eq(out[0].kind, PUB_ITEM_NOTICE);
    now.whitelisted = old.whitelisted = true;
    got = pub_select_gained(ns, 7, &now, &old, 8, NOW, out, 8, &more);
    ck_assert_uint_eq(got, 2);
    ck_assert_uint_eq(out[1].n->notice_id, 5);
    /* Capped: the first in seq order, and more remain. */
    got = pub_select_gained(ns, 7, &now, &old, 8, NOW, out, 1, &more);
    ck_assert_uint_eq(got, 1);
    ck_assert(more);
    ck_assert_uint_eq(out[0].n->notice_id, 2);
    /* The same attributes gain nothing; g = 0 passed nothing. */
    old = now;
    ck_assert_uint_eq(pub_select_gained(ns, 7, &now, &old, 8, NOW, out, 8, &more), 0);
    old.core_level = 90000;
    ck_assert_uint_eq(pub_select_gained(ns, 7, &now, &old, 0, NOW, out, 8, &more), 0);
    /* Switching platform: android gains notice 6 (and keeps no ios-only one). */
    now = viewer();
    now.platform = "android";
    old = viewer();
    old.platform = NULL;
    old.platform_hash = pub_platform_hash("ios");
    got = pub_select_gained(ns, 7, &now, &old, 8, NOW, out, 8, &more);
    ck_assert_uint_eq(got, 1);
    ck_assert_uint_eq(out[0].n->notice_id, 6);
    /* A guest who logs in gains the login-only notices. */
    n[0].login_only = true;
    now = viewer();
    old.platform_hash = pub_platform_hash("ios");
    old.guest = true;
    got = pub_select_gained(ns, 7, &now, &old, 8, NOW, out, 8, &more);
    ck_assert_uint_eq(got, 1);
    ck_assert_uint_eq(out[0].n->notice_id, 1);
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
    tcase_add_test(tc, platform_by_hash);
    tcase_add_test(tc, gained_after_attribute_change);
    tcase_add_test(tc, state_names);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
