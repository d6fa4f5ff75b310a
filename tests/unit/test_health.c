/*
 * Unit tests of lib/health: a heartbeat follows its loop, and a dependency
 * probe sets mbox_dependency_up and observes only successful round trips.
 */
#include "health.h"

#include <check.h>
#include <event2/buffer.h>
#include <event2/event.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "metrics.h"

static char *
render(struct metrics *m)
{
    struct evbuffer *buf = evbuffer_new();
    ck_assert_ptr_nonnull(buf);
    metrics_render(m, buf);
    size_t len = evbuffer_get_length(buf);
    char *s = malloc(len + 1);
    ck_assert_ptr_nonnull(s);
    evbuffer_remove(buf, s, len);
    s[len] = '\0';
    evbuffer_free(buf);
    return s;
}

START_TEST(test_beat_follows_the_loop)
{
    struct event_base *base = event_base_new();
    ck_assert_ptr_nonnull(base);
    struct health_beat b = {0};
    ck_assert_int_eq(health_beat_age_ms(&b), INT64_MAX); /* never beaten */
    ck_assert(health_beat_start(&b, base));
    ck_assert_int_le(health_beat_age_ms(&b), 50);

    /* Without the loop running, the beat only gets older. */
    usleep(300 * 1000);
    ck_assert_int_ge(health_beat_age_ms(&b), 290);

    /* Run the loop past the first interval (due 1 s after the start, the
     * loop stops 1.6 s after it): a beat then, about 600 ms old, where
     * no beat would be 1600 ms old. */
    struct timeval tv = {1, 300 * 1000};
    event_base_loopexit(base, &tv);
    event_base_dispatch(base);
    ck_assert_int_le(health_beat_age_ms(&b), HEALTH_BEAT_INTERVAL_MS);

    /* A beat as old as a stuck loop's is past the /livez bound. */
    b.last_us = health_mono_us() - (HEALTH_BEAT_STALE_MS + 1000) * 1000LL;
    ck_assert_int_gt(health_beat_age_ms(&b), HEALTH_BEAT_STALE_MS);
    health_beat_stop(&b);
    event_base_free(base);
}
END_TEST

START_TEST(test_dep_up_and_latency)
{
    struct metrics *m = metrics_new();
    ck_assert_ptr_nonnull(m);
    struct health_dep d;
    health_dep_init(&d, m, "redis");
    ck_assert(!d.ok);
    ck_assert_int_eq(metric_value(metrics_gauge(m, "mbox_dependency_up", "", "dep=\"redis\"")), 0);

    health_dep_begin(&d);
    ck_assert(d.inflight);
    usleep(20 * 1000);
    health_dep_end(&d, true, NULL);
    ck_assert(!d.inflight);
    ck_assert(d.ok);
    ck_assert_str_eq(d.error, "");
    ck_assert_int_eq(metric_value(metrics_gauge(m, "mbox_dependency_up", "", "dep=\"redis\"")), 1);

    health_dep_begin(&d);
    health_dep_end(&d, false, "timeout");
    ck_assert(!d.ok);
    ck_assert_str_eq(d.error, "timeout");
    ck_assert_int_eq(metric_value(metrics_gauge(m, "mbox_dependency_up", "", "dep=\"redis\"")), 0);

    char *text = render(m);
    /* One observation (the success, about 20 ms), none for the failure. */
    ck_assert_msg(strstr(text, "mbox_dependency_latency_seconds_count{dep=\"redis\"} 1\n"), "%s",
                  text);
    ck_assert_msg(
        strstr(text, "mbox_dependency_latency_seconds_bucket{dep=\"redis\",le=\"0.01\"} 0"), "%s",
        text);
    ck_assert_msg(
        strstr(text, "mbox_dependency_latency_seconds_bucket{dep=\"redis\",le=\"0.05\"} 1"), "%s",
        text);
    free(text);

    /* A state without a round trip: the gauge, no observation. */
    struct health_dep s;
    health_dep_init(&s, m, "redis_subscriber");
    health_dep_state(&s, true, NULL);
    ck_assert_int_eq(
        metric_value(metrics_gauge(m, "mbox_dependency_up", "", "dep=\"redis_subscriber\"")), 1);
    text = render(m);
    ck_assert(strstr(text, "mbox_dependency_latency_seconds_count{dep=\"redis_subscriber\"} 0\n"));
    free(text);
    metrics_free(m);
}
END_TEST

static Suite *
health_suite(void)
{
    Suite *s = suite_create("health");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_beat_follows_the_loop);
    tcase_add_test(tc, test_dep_up_and_latency);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(health_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
