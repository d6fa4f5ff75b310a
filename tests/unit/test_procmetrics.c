/*
 * Unit tests of lib/procmetrics: the process figures read from /proc/self
 * against what the test can know independently (a descriptor it opens,
 * getrlimit, its own start), and the text rendered on /metrics.
 */
#include "procmetrics.h"

#include <check.h>
#include <event2/buffer.h>

#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
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

/* The value of the unlabelled sample name in text, or -1 when absent. */
static double
sample(const char *text, const char *name)
{
    size_t n = strlen(name);
    for (const char *p = text; (p = strstr(p, name)) != NULL; p++) {
        if ((p == text || p[-1] == '\n') && p[n] == ' ')
            return strtod(p + n + 1, NULL);
    }
    return -1;
}

START_TEST(test_read_open_fds_follow_the_process)
{
    struct proc_stats a, b;
    ck_assert(procmetrics_read(&a));
    int fd1 = open("/dev/null", O_RDONLY);
    int fd2 = open("/dev/null", O_RDONLY);
    ck_assert_int_ge(fd1, 0);
    ck_assert_int_ge(fd2, 0);
    ck_assert(procmetrics_read(&b));
    ck_assert_int_eq(b.open_fds, a.open_fds + 2);
    close(fd1);
    close(fd2);
    ck_assert(procmetrics_read(&b));
    ck_assert_int_eq(b.open_fds, a.open_fds);
    ck_assert_int_ge(a.open_fds, 3); /* stdin, stdout, stderr at least */
}
END_TEST

START_TEST(test_read_limits_memory_cpu_start)
{
    struct rlimit rl;
    ck_assert_int_eq(getrlimit(RLIMIT_NOFILE, &rl), 0);
    struct proc_stats st;
    ck_assert(procmetrics_read(&st));
    ck_assert_int_eq(st.max_fds, (int64_t)rl.rlim_cur);

    /* Touching 32 MiB raises the resident size by about as much. */
    size_t big = 32u << 20;
    char *mem = malloc(big);
    ck_assert_ptr_nonnull(mem);
    memset(mem, 1, big);
    __asm__ volatile("" : : "r"(mem) : "memory"); /* the pages must really be written */
    struct proc_stats after;
    ck_assert(procmetrics_read(&after));
    ck_assert_int_ge(after.rss_bytes - st.rss_bytes, (int64_t)(big / 2));
    free(mem);

    /* Burn some CPU: the counter moves and never goes back. */
    volatile unsigned long x = 0;
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    do {
        for (int i = 0; i < 1000000; i++)
            x += (unsigned long)i;
        clock_gettime(CLOCK_MONOTONIC, &t1);
    } while ((t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000 < 300);
    ck_assert_uint_gt(x, 0); /* read, so no compiler calls it unused */
    ck_assert(procmetrics_read(&after));
    ck_assert_double_ge(after.cpu_seconds - st.cpu_seconds, 0.1);

    /* This process started moments ago (Check forks each test). */
    double now = (double)time(NULL);
    ck_assert_double_le(st.start_time_seconds, now + 1);
    ck_assert_double_ge(st.start_time_seconds, now - 60);
}
END_TEST

START_TEST(test_render_families_and_build_info)
{
    struct metrics *m = metrics_new();
    ck_assert_ptr_nonnull(m);
    ck_assert(procmetrics_register(m));
    char *text = render(m);
    const char *types[] = {
        "# TYPE process_cpu_seconds_total counter\n",
        "# TYPE process_resident_memory_bytes gauge\n",
        "# TYPE process_open_fds gauge\n",
        "# TYPE process_max_fds gauge\n",
        "# TYPE process_start_time_seconds gauge\n",
        "# TYPE mbox_build_info gauge\n",
    };
    for (size_t i = 0; i < sizeof(types) / sizeof(types[0]); i++)
        ck_assert_msg(strstr(text, types[i]) != NULL, "missing %s in:\n%s", types[i], text);
    ck_assert_double_ge(sample(text, "process_cpu_seconds_total"), 0);
    ck_assert_double_gt(sample(text, "process_resident_memory_bytes"), 1e5);
    ck_assert_double_ge(sample(text, "process_open_fds"), 3);
    ck_assert_double_ge(sample(text, "process_max_fds"), sample(text, "process_open_fds"));
    ck_assert_double_gt(sample(text, "process_start_time_seconds"), 1.6e9);

    char want[128];
    snprintf(want, sizeof(want), "mbox_build_info{version=\"%s\",commit=\"%s\"} 1\n", MBOX_VERSION,
             procmetrics_commit());
    ck_assert_msg(strstr(text, want) != NULL, "missing %s in:\n%s", want, text);
    /* A commit is 12 hex digits from git, or "unknown" without it. */
    const char *c = procmetrics_commit();
    ck_assert(strcmp(c, "unknown") == 0 || strspn(c, "0123456789abcdef") == 12);
    free(text);
    metrics_free(m);
}
END_TEST

static Suite *
procmetrics_suite(void)
{
    Suite *s = suite_create("procmetrics");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_read_open_fds_follow_the_process);
    tcase_add_test(tc, test_read_limits_memory_cpu_start);
    tcase_add_test(tc, test_render_families_and_build_info);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(procmetrics_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
