/*
 * Unit tests of lib/metrics: values, series identity, the Prometheus text
 * rendering and lock-free updates from several threads.
 */
#include "metrics.h"

#include <check.h>
#include <event2/buffer.h>

#include <math.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Renders m into a NUL-terminated malloc'd string. */
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

/* Number of times needle occurs in hay. */
static int
count_occurrences(const char *hay, const char *needle)
{
    int n = 0;
    for (const char *p = hay; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

/* True when text holds line as a whole line. */
static bool
has_line(const char *text, const char *line)
{
    size_t len = strlen(line);
    for (const char *p = text; (p = strstr(p, line)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[len] == '\n')
            return true;
    }
    return false;
}

START_TEST(test_counter_values)
{
    struct metrics *m = metrics_new();
    ck_assert_ptr_nonnull(m);
    struct metric *c = metrics_counter(m, "jobs_total", "Jobs.", "kind=\"a\"");
    ck_assert_ptr_nonnull(c);
    ck_assert_int_eq(metric_value(c), 0);
    metric_inc(c);
    metric_inc(c);
    metric_add(c, 40);
    ck_assert_int_eq(metric_value(c), 42);
    /* Counters ignore gauge operations. */
    metric_set(c, 7);
    metric_gauge_add(c, -5);
    ck_assert_int_eq(metric_value(c), 42);
    metrics_free(m);
}
END_TEST

START_TEST(test_gauge_values)
{
    struct metrics *m = metrics_new();
    struct metric *g = metrics_gauge(m, "conns", "Open connections.", NULL);
    ck_assert_ptr_nonnull(g);
    metric_set(g, 10);
    ck_assert_int_eq(metric_value(g), 10);
    metric_gauge_add(g, -15);
    ck_assert_int_eq(metric_value(g), -5);
    metric_gauge_add(g, 7);
    ck_assert_int_eq(metric_value(g), 2);
    metric_set(g, -100);
    ck_assert_int_eq(metric_value(g), -100);
    /* Gauges ignore counter operations. */
    metric_inc(g);
    ck_assert_int_eq(metric_value(g), -100);
    metrics_free(m);
}
END_TEST

START_TEST(test_same_series_same_pointer)
{
    struct metrics *m = metrics_new();
    struct metric *a = metrics_counter(m, "req_total", "Requests.", "code=\"200\"");
    struct metric *b = metrics_counter(m, "req_total", "other help", "code=\"200\"");
    struct metric *c = metrics_counter(m, "req_total", "Requests.", "code=\"500\"");
    struct metric *d = metrics_counter(m, "req_total", "Requests.", NULL);
    struct metric *e = metrics_counter(m, "req_total", "Requests.", "");
    ck_assert_ptr_nonnull(a);
    ck_assert_ptr_eq(a, b);
    ck_assert_ptr_nonnull(c);
    ck_assert_ptr_ne(a, c);
    ck_assert_ptr_nonnull(d);
    ck_assert_ptr_eq(d, e);
    ck_assert_ptr_ne(d, a);
    struct metric *h1 = metrics_histogram(m, "lat_seconds", "Latency.", "op=\"x\"");
    struct metric *h2 = metrics_histogram(m, "lat_seconds", "Latency.", "op=\"x\"");
    ck_assert_ptr_nonnull(h1);
    ck_assert_ptr_eq(h1, h2);
    metrics_free(m);
}
END_TEST

START_TEST(test_bad_registrations)
{
    struct metrics *m = metrics_new();
    ck_assert_ptr_nonnull(metrics_counter(m, "thing", "A counter.", NULL));
    /* One name, one type. */
    ck_assert_ptr_null(metrics_gauge(m, "thing", "A gauge.", NULL));
    ck_assert_ptr_null(metrics_histogram(m, "thing", "A histogram.", "x=\"1\""));
    /* Invalid names. */
    ck_assert_ptr_null(metrics_counter(m, "", "x", NULL));
    ck_assert_ptr_null(metrics_counter(m, "9lives", "x", NULL));
    ck_assert_ptr_null(metrics_counter(m, "with space", "x", NULL));
    ck_assert_ptr_null(metrics_counter(m, NULL, "x", NULL));
    ck_assert_ptr_nonnull(metrics_counter(m, "ns:sub_total", "Colons are fine.", NULL));
    ck_assert_ptr_null(metrics_counter(NULL, "x_total", "x", NULL));
    metrics_free(m);
}
END_TEST

START_TEST(test_null_safe_updates)
{
    metric_inc(NULL);
    metric_add(NULL, 5);
    metric_set(NULL, 5);
    metric_gauge_add(NULL, 5);
    metric_observe(NULL, 0.5);
    ck_assert_int_eq(metric_value(NULL), 0);
    metrics_render(NULL, NULL);
    metrics_free(NULL);
    struct metrics *m = metrics_new();
    metrics_render(m, NULL);
    metrics_free(m);
}
END_TEST

START_TEST(test_render_counters_and_gauges)
{
    struct metrics *m = metrics_new();
    struct metric *b1 = metrics_counter(m, "b_total", "B things.", "x=\"1\"");
    struct metric *a = metrics_gauge(m, "a_gauge", "A level.", NULL);
    struct metric *c = metrics_counter(m, "c_total", "C things.", NULL);
    /* Registered later, rendered with its family right after b1. */
    struct metric *b2 = metrics_counter(m, "b_total", "B things.", "x=\"2\"");
    metric_add(b1, 3);
    metric_set(a, -4);
    metric_inc(b2);
    (void)c;
    char *out = render(m);
    const char *expected = "# HELP a_gauge A level.\n"
                           "# TYPE a_gauge gauge\n"
                           "a_gauge -4\n"
                           "# HELP b_total B things.\n"
                           "# TYPE b_total counter\n"
                           "b_total{x=\"1\"} 3\n"
                           "b_total{x=\"2\"} 1\n"
                           "# HELP c_total C things.\n"
                           "# TYPE c_total counter\n"
                           "c_total 0\n";
    ck_assert_str_eq(out, expected);
    free(out);
    metrics_free(m);
}
END_TEST

START_TEST(test_render_help_escaped)
{
    struct metrics *m = metrics_new();
    metrics_counter(m, "esc_total", "line one\nback\\slash", NULL);
    char *out = render(m);
    ck_assert(has_line(out, "# HELP esc_total line one\\nback\\\\slash"));
    free(out);
    metrics_free(m);
}
END_TEST

START_TEST(test_render_histogram)
{
    struct metrics *m = metrics_new();
    struct metric *h = metrics_histogram(m, "lat_seconds", "Latency.", "route=\"/x\"");
    ck_assert_ptr_nonnull(h);
    metric_observe(h, 0.25); /* on a bound: counted in le="0.25" */
    metric_observe(h, 0.5);
    metric_observe(h, 3);
    metric_observe(h, 16); /* above every bound: +Inf only */
    char *out = render(m);
    const char *expected = "# HELP lat_seconds Latency.\n"
                           "# TYPE lat_seconds histogram\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.0001\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.00025\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.0005\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.001\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.0025\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.005\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.01\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.025\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.05\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.1\"} 0\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.25\"} 1\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"0.5\"} 2\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"1\"} 2\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"2.5\"} 2\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"5\"} 3\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"10\"} 3\n"
                           "lat_seconds_bucket{route=\"/x\",le=\"+Inf\"} 4\n"
                           "lat_seconds_sum{route=\"/x\"} 19.75\n"
                           "lat_seconds_count{route=\"/x\"} 4\n";
    ck_assert_str_eq(out, expected);
    free(out);
    metrics_free(m);
}
END_TEST

START_TEST(test_render_histogram_no_labels_and_edges)
{
    struct metrics *m = metrics_new();
    struct metric *h = metrics_histogram(m, "op_seconds", "Ops.", NULL);
    metric_observe(h, 0.0001); /* the smallest bound itself */
    metric_observe(h, -1);     /* below everything: first bucket */
    metric_observe(h, 0.0002);
    metric_observe(h, 10);
    metric_observe(h, NAN); /* dropped */
    char *out = render(m);
    ck_assert(has_line(out, "op_seconds_bucket{le=\"0.0001\"} 2"));
    ck_assert(has_line(out, "op_seconds_bucket{le=\"0.00025\"} 3"));
    ck_assert(has_line(out, "op_seconds_bucket{le=\"5\"} 3"));
    ck_assert(has_line(out, "op_seconds_bucket{le=\"10\"} 4"));
    ck_assert(has_line(out, "op_seconds_bucket{le=\"+Inf\"} 4"));
    ck_assert(has_line(out, "op_seconds_count 4"));
    ck_assert_int_eq(count_occurrences(out, "_bucket{"), 17);
    ck_assert_int_eq(count_occurrences(out, "# HELP op_seconds "), 1);
    ck_assert_int_eq(count_occurrences(out, "# TYPE op_seconds histogram\n"), 1);
    free(out);
    metrics_free(m);
}
END_TEST

START_TEST(test_many_series)
{
    struct metrics *m = metrics_new();
    enum { N = 2000 };
    static struct metric *ptrs[N];
    char labels[64];
    for (int i = 0; i < N; i++) {
        snprintf(labels, sizeof(labels), "id=\"%d\"", i);
        ptrs[i] = metrics_counter(m, i % 2 ? "odd_total" : "even_total", "Series.", labels);
        ck_assert_ptr_nonnull(ptrs[i]);
        metric_add(ptrs[i], (uint64_t)i);
    }
    for (int i = 0; i < N; i++) {
        snprintf(labels, sizeof(labels), "id=\"%d\"", i);
        ck_assert_ptr_eq(metrics_counter(m, i % 2 ? "odd_total" : "even_total", "x", labels),
                         ptrs[i]);
        ck_assert_int_eq(metric_value(ptrs[i]), i);
    }
    char *out = render(m);
    ck_assert_int_eq(count_occurrences(out, "# TYPE "), 2);
    ck_assert_int_eq(count_occurrences(out, "\neven_total{"), N / 2);
    ck_assert_int_eq(count_occurrences(out, "\nodd_total{"), N / 2);
    ck_assert(has_line(out, "odd_total{id=\"1999\"} 1999"));
    /* even_total sorts before odd_total; within a family, registration order. */
    const char *e0 = strstr(out, "even_total{id=\"0\"}");
    const char *e2 = strstr(out, "even_total{id=\"2\"}");
    const char *elast = strstr(out, "even_total{id=\"1998\"}");
    const char *odd = strstr(out, "# HELP odd_total");
    ck_assert(e0 != NULL && e2 != NULL && elast != NULL && odd != NULL);
    ck_assert(e0 < e2 && e2 < elast && elast < odd);
    free(out);
    metrics_free(m);
}
END_TEST

/* ---- concurrency ---- */

enum { THREADS = 4, PER_THREAD = 100000 };

struct worker_arg {
    struct metrics *m;
    struct metric *counter, *gauge, *hist;
    int index;
};

static void *
worker(void *p)
{
    struct worker_arg *a = p;
    char labels[32];
    snprintf(labels, sizeof(labels), "t=\"%d\"", a->index);
    for (int i = 0; i < PER_THREAD; i++) {
        metric_inc(a->counter);
        metric_gauge_add(a->gauge, (i & 1) ? -1 : 2);
        metric_observe(a->hist, 0.5);
        /* Registration and lookups run alongside the updates. */
        if (i % 1000 == 0) {
            struct metric *own = metrics_counter(a->m, "per_thread_total", "Per thread.", labels);
            metric_add(own, 1000);
            struct metric *same = metrics_counter(a->m, "shared_total", "Shared.", NULL);
            if (same != a->counter)
                return (void *)1;
        }
    }
    return NULL;
}

START_TEST(test_concurrent_updates)
{
    struct metrics *m = metrics_new();
    struct metric *c = metrics_counter(m, "shared_total", "Shared.", NULL);
    struct metric *g = metrics_gauge(m, "shared_gauge", "Shared.", NULL);
    struct metric *h = metrics_histogram(m, "shared_seconds", "Shared.", NULL);
    pthread_t th[THREADS];
    struct worker_arg args[THREADS];
    for (int i = 0; i < THREADS; i++) {
        args[i] = (struct worker_arg){m, c, g, h, i};
        ck_assert_int_eq(pthread_create(&th[i], NULL, worker, &args[i]), 0);
    }
    /* Render while the workers run: must stay consistent (+Inf == _count). */
    for (int k = 0; k < 20; k++) {
        char *out = render(m);
        const char *inf = strstr(out, "shared_seconds_bucket{le=\"+Inf\"} ");
        const char *cnt = strstr(out, "shared_seconds_count ");
        ck_assert_ptr_nonnull(inf);
        ck_assert_ptr_nonnull(cnt);
        ck_assert_int_eq(strtoll(inf + strlen("shared_seconds_bucket{le=\"+Inf\"} "), NULL, 10),
                         strtoll(cnt + strlen("shared_seconds_count "), NULL, 10));
        free(out);
    }
    for (int i = 0; i < THREADS; i++) {
        void *ret;
        ck_assert_int_eq(pthread_join(th[i], &ret), 0);
        ck_assert_ptr_null(ret);
    }
    ck_assert_int_eq(metric_value(c), THREADS * PER_THREAD);
    ck_assert_int_eq(metric_value(g), THREADS * (PER_THREAD / 2) * (2 - 1));
    char *out = render(m);
    ck_assert(has_line(out, "shared_total 400000"));
    ck_assert(has_line(out, "shared_seconds_bucket{le=\"0.5\"} 400000"));
    ck_assert(has_line(out, "shared_seconds_bucket{le=\"0.25\"} 0"));
    ck_assert(has_line(out, "shared_seconds_bucket{le=\"+Inf\"} 400000"));
    ck_assert(has_line(out, "shared_seconds_sum 200000"));
    ck_assert(has_line(out, "shared_seconds_count 400000"));
    for (int i = 0; i < THREADS; i++) {
        char line[64];
        snprintf(line, sizeof(line), "per_thread_total{t=\"%d\"} %d", i, PER_THREAD);
        ck_assert_msg(has_line(out, line), "missing %s", line);
    }
    free(out);
    metrics_free(m);
}
END_TEST

static void
collect_a(struct evbuffer *out, void *arg)
{
    evbuffer_add_printf(out, "# TYPE zz_a gauge\nzz_a %d\n", *(int *)arg);
}

START_TEST(test_collectors_render_after_the_registry)
{
    struct metrics *m = metrics_new();
    ck_assert_ptr_nonnull(m);
    int v = 7;
    metric_inc(metrics_counter(m, "aa_total", "A.", NULL));
    for (int i = 0; i < METRICS_MAX_COLLECTORS; i++)
        ck_assert(metrics_add_collector(m, collect_a, &v));
    ck_assert(!metrics_add_collector(m, collect_a, &v)); /* full */
    ck_assert(!metrics_add_collector(m, NULL, &v));
    char *text = render(m);
    ck_assert_int_eq(count_occurrences(text, "zz_a 7\n"), METRICS_MAX_COLLECTORS);
    /* Read at render time, not at registration. */
    v = 9;
    free(text);
    text = render(m);
    ck_assert_int_eq(count_occurrences(text, "zz_a 9\n"), METRICS_MAX_COLLECTORS);
    const char *reg = strstr(text, "aa_total 1"), *col = strstr(text, "zz_a 9");
    ck_assert(reg != NULL && col != NULL && reg < col);
    free(text);
    metrics_free(m);
}
END_TEST

static Suite *
metrics_suite(void)
{
    Suite *s = suite_create("metrics");
    TCase *tc = tcase_create("values");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_counter_values);
    tcase_add_test(tc, test_gauge_values);
    tcase_add_test(tc, test_same_series_same_pointer);
    tcase_add_test(tc, test_bad_registrations);
    tcase_add_test(tc, test_null_safe_updates);
    suite_add_tcase(s, tc);

    tc = tcase_create("render");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_render_counters_and_gauges);
    tcase_add_test(tc, test_render_help_escaped);
    tcase_add_test(tc, test_render_histogram);
    tcase_add_test(tc, test_render_histogram_no_labels_and_edges);
    tcase_add_test(tc, test_many_series);
    tcase_add_test(tc, test_collectors_render_after_the_registry);
    suite_add_tcase(s, tc);

    tc = tcase_create("concurrency");
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_concurrent_updates);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(metrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
