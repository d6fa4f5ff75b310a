/*
 * Integration: what monitoring sees of logicd and lcsd. /livez and /readyz
 * on a healthy stack; /readyz (not /livez) turning 503, with the reason,
 * while Redis is stopped and back to 200 after it restarts; every /metrics
 * name follows the Prometheus conventions under the mbox_ prefix (plus the
 * standard process_* names), with mbox_build_info, the process metrics and
 * mbox_dependency_up/_latency_seconds present and true to the dependencies.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "httpc.h"
#include "mboxtest.h"

static struct harness h;

static void
setup(void)
{
    if (!harness_start(&h, HARNESS_LOGICD | HARNESS_LCSD)) {
        fprintf(stderr, "harness failed\n");
        exit(1);
    }
}

static void
teardown(void)
{
    harness_stop(&h);
}

static int64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

#define LOGICD_INTERNAL (h.logicd[0].port[1])
#define LCSD_ADMIN      (h.lcsd[0].port[1])

/* GET port path as JSON until its status is want (at most ms); the last reply. */
static json_t *
wait_status(int port, const char *path, int want, int ms, int *st)
{
    int64_t end = mono_ms() + ms;
    for (;;) {
        json_t *j = httpc_json("GET", port, path, NULL, NULL, st);
        if (*st == want || mono_ms() > end)
            return j;
        json_decref(j);
        usleep(100 * 1000);
    }
}

/* Polls mt_metric until it equals want (at most ms); the last value. */
static double
wait_metric(int port, const char *name, const char *labels, double want, int ms)
{
    int64_t end = mono_ms() + ms;
    double v;
    while ((v = mt_metric(port, name, labels)) != want && mono_ms() < end)
        usleep(100 * 1000);
    return v;
}

/* True when the JSON array arr holds the string s. */
static bool
has_string(const json_t *arr, const char *s)
{
    size_t i;
    const json_t *v;
    json_array_foreach(arr, i, v)
    {
        if (json_is_string(v) && strcmp(json_string_value(v), s) == 0)
            return true;
    }
    return false;
}

static const char *
check_of(const json_t *j, const char *name)
{
    const char *s = json_string_value(json_object_get(json_object_get(j, "checks"), name));
    return s != NULL ? s : "(absent)";
}

START_TEST(livez_and_readyz_on_a_healthy_stack)
{
    int st;
    json_t *j = wait_status(LOGICD_INTERNAL, "/livez", 200, 3000, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "loops")), 2); /* threads = 2 */
    ck_assert_int_le(json_integer_value(json_object_get(j, "oldest_beat_ms")), 5000);
    json_decref(j);

    j = wait_status(LOGICD_INTERNAL, "/readyz", 200, 5000, &st);
    ck_assert_msg(st == 200, "readyz %d: %s", st, json_dumps(j, 0));
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ready");
    ck_assert_str_eq(check_of(j, "postgres"), "ok");
    ck_assert_str_eq(check_of(j, "redis"), "ok");
    ck_assert_str_eq(check_of(j, "public_cache"), "ok");
    ck_assert_int_eq(json_array_size(json_object_get(j, "not_ready")), 0);
    json_decref(j);

    struct httpc_resp r;
    ck_assert_int_eq(httpc_request("HEAD", LOGICD_INTERNAL, "/livez", NULL, NULL, 0, &r), 200);
    httpc_resp_free(&r);
    ck_assert_int_eq(httpc_request("HEAD", LOGICD_INTERNAL, "/readyz", NULL, NULL, 0, &r), 200);
    httpc_resp_free(&r);
    /* The SDK listener serves them only with sdk_health (off here). */
    ck_assert_int_eq(httpc_request("GET", h.logicd[0].port[0], "/livez", NULL, NULL, 0, &r), 404);
    httpc_resp_free(&r);
    ck_assert_int_eq(httpc_request("GET", h.logicd[0].port[0], "/readyz", NULL, NULL, 0, &r), 404);
    httpc_resp_free(&r);

    j = wait_status(LCSD_ADMIN, "/livez", 200, 3000, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "service")), "lcsd");
    json_decref(j);
    j = wait_status(LCSD_ADMIN, "/readyz", 200, 5000, &st);
    ck_assert_msg(st == 200, "lcsd readyz %d: %s", st, json_dumps(j, 0));
    ck_assert_str_eq(check_of(j, "redis"), "ok");
    ck_assert_str_eq(check_of(j, "redis_subscriber"), "ok");
    ck_assert_str_eq(check_of(j, "accepting"), "ok");
    json_decref(j);
}
END_TEST

START_TEST(sdk_listener_serves_them_with_sdk_health)
{
    int i = harness_add_logicd(&h, "sdk_health = true\n");
    ck_assert_int_ge(i, 0);
    int st;
    json_decref(wait_status(h.logicd[i].port[0], "/readyz", 200, 10000, &st));
    ck_assert_int_eq(st, 200);
    json_decref(wait_status(h.logicd[i].port[0], "/livez", 200, 1000, &st));
    ck_assert_int_eq(st, 200);
    harness_daemon_stop(&h.logicd[i]);
    h.nlogicd--;
}
END_TEST

/*
 * Every sample's metric name in a /metrics body: mbox_* or process_*,
 * counters end in _total, no millisecond units, and each family has its
 * # TYPE line. Returns the body (caller frees).
 */
static char *
check_names(int port)
{
    struct httpc_resp r;
    ck_assert_int_eq(httpc_request("GET", port, "/metrics", NULL, NULL, 0, &r), 200);
    char *body = strdup(r.body);
    httpc_resp_free(&r);
    ck_assert_ptr_nonnull(body);
    int samples = 0;
    char *copy = strdup(body), *save = NULL;
    for (char *line = strtok_r(copy, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        char name[160];
        if (strncmp(line, "# TYPE ", 7) == 0) {
            char type[32];
            ck_assert_int_eq(sscanf(line + 7, "%159s %31s", name, type), 2);
            size_t n = strlen(name);
            if (strcmp(type, "counter") == 0)
                ck_assert_msg(n > 6 && strcmp(name + n - 6, "_total") == 0,
                              "counter without _total: %s", name);
            else
                ck_assert_msg(n < 6 || strcmp(name + n - 6, "_total") != 0, "%s %s ends in _total",
                              type, name);
            continue;
        }
        if (line[0] == '#')
            continue;
        size_t n = strcspn(line, "{ ");
        ck_assert_uint_lt(n, sizeof(name));
        memcpy(name, line, n);
        name[n] = '\0';
        ck_assert_msg(strncmp(name, "mbox_", 5) == 0 || strncmp(name, "process_", 8) == 0,
                      "metric without the mbox_ prefix: %s", name);
        ck_assert_msg(strstr(name, "_ms") == NULL && strstr(name, "millis") == NULL,
                      "metric in milliseconds: %s", name);
        samples++;
    }
    free(copy);
    ck_assert_int_gt(samples, 10);
    return body;
}

START_TEST(metrics_names_build_info_and_process)
{
    const int ports[2] = {LOGICD_INTERNAL, LCSD_ADMIN};
    for (int k = 0; k < 2; k++) {
        char *body = check_names(ports[k]);
        ck_assert_msg(strstr(body, "\nmbox_build_info{version=\"" MBOX_VERSION "\",commit=\""),
                      "%s", body);
        const char *proc[] = {"process_cpu_seconds_total ", "process_resident_memory_bytes ",
                              "process_open_fds ", "process_max_fds ",
                              "process_start_time_seconds "};
        for (size_t i = 0; i < 5; i++) {
            char want[64];
            snprintf(want, sizeof(want), "\n%s", proc[i]);
            ck_assert_msg(strstr(body, want) != NULL, "no %s on port %d", proc[i], ports[k]);
        }
        /* A daemon holds listeners, clients and pools: more than a few descriptors. */
        ck_assert_double_ge(mt_metric(ports[k], "process_open_fds", NULL), 5);
        ck_assert_double_gt(mt_metric(ports[k], "process_resident_memory_bytes", NULL), 1e6);
        free(body);
    }
    /* The dependency checks ran and found everything up. */
    ck_assert_double_eq(
        wait_metric(LOGICD_INTERNAL, "mbox_dependency_up", "dep=\"postgres\"", 1, 20000), 1);
    ck_assert_double_eq(
        wait_metric(LOGICD_INTERNAL, "mbox_dependency_up", "dep=\"redis\"", 1, 20000), 1);
    ck_assert_double_ge(
        mt_metric(LOGICD_INTERNAL, "mbox_dependency_latency_seconds_count", "dep=\"redis\""), 1);
    ck_assert_double_eq(wait_metric(LCSD_ADMIN, "mbox_dependency_up", "dep=\"redis\"", 1, 20000), 1);
    ck_assert_double_eq(
        wait_metric(LCSD_ADMIN, "mbox_dependency_up", "dep=\"redis_subscriber\"", 1, 20000), 1);
}
END_TEST

START_TEST(readyz_follows_redis_and_livez_does_not)
{
    int st;
    json_decref(wait_status(LOGICD_INTERNAL, "/readyz", 200, 5000, &st));
    ck_assert_int_eq(st, 200);
    ck_assert(harness_redis_stop(&h));

    json_t *j = wait_status(LOGICD_INTERNAL, "/readyz", 503, 5000, &st);
    ck_assert_msg(st == 503, "logicd readyz %d with Redis stopped", st);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "not_ready");
    ck_assert(has_string(json_object_get(j, "not_ready"), "redis"));
    ck_assert_str_ne(check_of(j, "redis"), "ok");
    ck_assert_str_eq(check_of(j, "postgres"), "ok");
    json_decref(j);
    j = wait_status(LCSD_ADMIN, "/readyz", 503, 5000, &st);
    ck_assert_msg(st == 503, "lcsd readyz %d with Redis stopped", st);
    ck_assert(has_string(json_object_get(j, "not_ready"), "redis_subscriber"));
    json_decref(j);
    /* The processes are alive: restarting them would not bring Redis back. */
    json_decref(httpc_json("GET", LOGICD_INTERNAL, "/livez", NULL, NULL, &st));
    ck_assert_int_eq(st, 200);
    json_decref(httpc_json("GET", LCSD_ADMIN, "/livez", NULL, NULL, &st));
    ck_assert_int_eq(st, 200);
    /* The periodic check sees it too (within one interval and a timeout). */
    ck_assert_double_eq(
        wait_metric(LOGICD_INTERNAL, "mbox_dependency_up", "dep=\"redis\"", 0, 8000), 0);
    ck_assert_double_eq(wait_metric(LCSD_ADMIN, "mbox_dependency_up", "dep=\"redis\"", 0, 8000), 0);

    ck_assert(harness_redis_start(&h));
    j = wait_status(LOGICD_INTERNAL, "/readyz", 200, 15000, &st);
    ck_assert_msg(st == 200, "logicd readyz %d after Redis restarted: %s", st, json_dumps(j, 0));
    json_decref(j);
    j = wait_status(LCSD_ADMIN, "/readyz", 200, 15000, &st);
    ck_assert_msg(st == 200, "lcsd readyz %d after Redis restarted: %s", st, json_dumps(j, 0));
    json_decref(j);
    json_decref(httpc_json("GET", LOGICD_INTERNAL, "/livez", NULL, NULL, &st));
    ck_assert_int_eq(st, 200);
    json_decref(httpc_json("GET", LCSD_ADMIN, "/livez", NULL, NULL, &st));
    ck_assert_int_eq(st, 200);
    ck_assert_double_eq(
        wait_metric(LOGICD_INTERNAL, "mbox_dependency_up", "dep=\"redis\"", 1, 20000), 1);
}
END_TEST

static Suite *
observe_suite(void)
{
    Suite *s = suite_create("observe");
    TCase *tc = tcase_create("core");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 90);
    tcase_add_test(tc, livez_and_readyz_on_a_healthy_stack);
    tcase_add_test(tc, sdk_listener_serves_them_with_sdk_health);
    tcase_add_test(tc, metrics_names_build_info_and_process);
    tcase_add_test(tc, readyz_follows_redis_and_livez_does_not);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(observe_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
