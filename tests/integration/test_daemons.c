/*
 * Integration: the daemons come up against a real PostgreSQL and Redis,
 * answer /healthz and /metrics, refuse bad configs with one clear line,
 * stop on SIGTERM, survive a missing dependency, and migrations re-run.
 */
#include <check.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <fcntl.h>
#include <unistd.h>

#include "harness.h"
#include "httpc.h"

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

/* Runs prog with args, stderr captured into out; returns the exit status (or -1). */
static int
run_prog(const char *const *argv, const char *env_kv, char *out, size_t outlen)
{
    int pfd[2];
    if (pipe(pfd) != 0)
        return -1;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(pfd[1], 2);
        dup2(pfd[1], 1);
        close(pfd[0]);
        if (env_kv)
            putenv((char *)env_kv);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(pfd[1]);
    size_t got = 0;
    ssize_t n;
    char sink[4096];
    while ((n = read(pfd[0], got + 1 < outlen ? out + got : sink,
                     got + 1 < outlen ? outlen - got - 1 : sizeof(sink))) > 0) {
        if (got + 1 < outlen)
            got += (size_t)n; /* the rest is drained so the child never gets SIGPIPE */
    }
    out[got] = '\0';
    close(pfd[0]);
    int st;
    waitpid(pid, &st, 0);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void
write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
}

START_TEST(healthz_reports_dependencies)
{
    int st;
    json_t *j = httpc_json("GET", h.logicd[0].port[0], "/healthz", NULL, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok");
    ck_assert(json_is_true(json_object_get(json_object_get(j, "postgres"), "up")));
    ck_assert(json_is_true(json_object_get(json_object_get(j, "redis"), "up")));
    json_decref(j);

    j = httpc_json("GET", h.logicd[0].port[1], "/healthz", NULL, NULL, &st);
    ck_assert_int_eq(st, 200);
    json_decref(j);

    j = httpc_json("GET", h.lcsd[0].port[1], "/healthz", NULL, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "service")), "lcsd");
    json_decref(j);
}
END_TEST

START_TEST(metrics_prometheus_text)
{
    struct httpc_resp r;
    /* Make one request we can find in the counters. */
    int st;
    json_decref(httpc_json("GET", h.logicd[0].port[0], "/healthz", NULL, NULL, &st));
    ck_assert_int_eq(httpc_request("GET", h.logicd[0].port[0], "/metrics", NULL, NULL, 0, &r), 200);
    char ct[128];
    ck_assert_ptr_nonnull(httpc_header(&r, "Content-Type", ct, sizeof(ct)));
    ck_assert_ptr_nonnull(strstr(ct, "text/plain"));
    ck_assert_ptr_nonnull(strstr(r.body, "# TYPE http_requests_total counter"));
    ck_assert_ptr_nonnull(strstr(r.body, "route=\"/healthz\""));
    ck_assert_ptr_nonnull(strstr(r.body, "pg_connections_up"));
    httpc_resp_free(&r);

    ck_assert_int_eq(httpc_request("GET", h.lcsd[0].port[1], "/metrics", NULL, NULL, 0, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "redis_connected"));
    httpc_resp_free(&r);
}
END_TEST

START_TEST(unknown_path_and_oversize)
{
    int st;
    json_t *j = httpc_json("GET", h.logicd[0].port[0], "/v1/nope", NULL, NULL, &st);
    ck_assert_int_eq(st, 404);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                     "not_found");
    json_decref(j);

    /* SDK body cap defaults to 256 KiB. */
    size_t big = 300 * 1024;
    char *body = malloc(big);
    memset(body, 'a', big);
    struct httpc_resp r;
    st = httpc_request("POST", h.logicd[0].port[0], "/healthz", NULL, body, big, &r);
    ck_assert_int_eq(st, 413);
    httpc_resp_free(&r);
    free(body);
}
END_TEST

START_TEST(sigterm_stops_cleanly)
{
    char prog[1024];
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    pid_t pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", 1);
        dup2(nul, 2);
        execl(prog, prog, "-c", h.logicd[0].config, (char *)NULL);
        _exit(127);
    }
    /* Same ports as logicd 0: SO_REUSEPORT lets a second process join. */
    struct httpc_resp r;
    int ok = 0;
    for (int i = 0; i < 100 && !ok; i++) {
        usleep(50000);
        int st;
        ok = waitpid(pid, &st, WNOHANG) == 0;
    }
    ck_assert(ok);
    usleep(300000);
    ck_assert_int_eq(kill(pid, SIGTERM), 0);
    int st = 0, waited = 0;
    while (waitpid(pid, &st, WNOHANG) == 0 && waited < 5000) {
        usleep(20000);
        waited += 20;
    }
    ck_assert_msg(waited < 5000, "logicd did not stop within 5 s of SIGTERM");
    ck_assert(WIFEXITED(st));
    ck_assert_int_eq(WEXITSTATUS(st), 0);
    /* The shared daemon still serves. */
    ck_assert_int_eq(httpc_request("GET", h.logicd[0].port[0], "/healthz", NULL, NULL, 0, &r), 200);
    httpc_resp_free(&r);

    /* lcsd too. */
    harness_build_path("services/lcs/lcsd", prog, sizeof(prog));
    pid = fork();
    if (pid == 0) {
        int nul = open("/dev/null", 1);
        dup2(nul, 1);
        dup2(nul, 2);
        execl(prog, prog, "-c", h.lcsd[0].config, "--check-config", (char *)NULL);
        _exit(127);
    }
    waitpid(pid, &st, 0);
    ck_assert(WIFEXITED(st) && WEXITSTATUS(st) == 0);
}
END_TEST

START_TEST(bad_config_one_clear_line)
{
    char prog[1024], path[600], out[4096];
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    snprintf(path, sizeof(path), "%s/bad.conf", h.dir);
    const char *argv[] = {prog, "-c", path, NULL};

    write_text(path, "server_key = a\ntoken_key = b\n# comment\npg_dns = x\n");
    ck_assert_int_ne(run_prog(argv, NULL, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "bad.conf:4") && strstr(out, "pg_dns"), "got: %s", out);
    ck_assert_msg(strchr(out, '\n') == out + strlen(out) - 1, "more than one line: %s", out);

    write_text(path, "server_key = a\ntoken_key = b\nthreads = 99\n");
    ck_assert_int_ne(run_prog(argv, NULL, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "bad.conf:3") && strstr(out, "threads"), "got: %s", out);

    write_text(path, "server_key = a\ntoken_key = b\nthis line has no equals\n");
    ck_assert_int_ne(run_prog(argv, NULL, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "bad.conf:3"), "got: %s", out);

    write_text(path, "token_key = b\n");
    ck_assert_int_ne(run_prog(argv, NULL, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "server_key"), "got: %s", out);

    /* The environment overrides the file, and is checked too. */
    write_text(path, "server_key = a\ntoken_key = b\n");
    ck_assert_int_ne(run_prog(argv, "LOGICD_THREADS=0", out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "LOGICD_THREADS"), "got: %s", out);

    const char *check[] = {prog, "-c", path, "--check-config", NULL};
    write_text(path, "server_key = s3cr3t-server\ntoken_key = s3cr3t-token\n");
    ck_assert_int_eq(run_prog(check, NULL, out, sizeof(out)), 0);
    /* Secrets are never echoed. */
    ck_assert_msg(strstr(out, "s3cr3t") == NULL, "secret printed: %s", out);
    ck_assert_ptr_nonnull(strstr(out, "server_key = (secret, set)"));

    const char *help[] = {prog, "--help", NULL};
    ck_assert_int_eq(run_prog(help, NULL, out, sizeof(out)), 0);
    ck_assert_ptr_nonnull(strstr(out, "LOGICD_PG_CONNINFO"));
}
END_TEST

START_TEST(migrations_rerun_cleanly)
{
    char prog[1024], out[4096];
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    const char *argv[] = {prog, "-c", h.logicd[0].config, "--migrate-only", NULL};
    ck_assert_int_eq(run_prog(argv, NULL, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "applied=0"), "expected nothing applied, got: %s", out);
    ck_assert_int_eq(run_prog(argv, NULL, out, sizeof(out)), 0);
}
END_TEST

START_TEST(missing_dependency_is_reported_not_fatal)
{
    /* A logicd pointed at a closed PostgreSQL port keeps running, keeps
     * retrying, and says so on /healthz (503, postgres.up false). */
    char prog[1024], path[600], log[600], text[2048];
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    snprintf(path, sizeof(path), "%s/nopg.conf", h.dir);
    snprintf(log, sizeof(log), "%s/nopg.log", h.dir);
    int sdk = harness_free_port(), internal = harness_free_port(), dead = harness_free_port();
    snprintf(text, sizeof(text),
             "sdk_listen = 127.0.0.1:%d\ninternal_listen = 127.0.0.1:%d\nserver_key = a\n"
             "token_key = b\nredis_port = %d\n"
             "pg_conninfo = \"host=127.0.0.1 port=%d dbname=x user=x connect_timeout=2\"\n",
             sdk, internal, h.redis_port, dead);
    write_text(path, text);
    pid_t pid = harness_spawn(prog, path, log);
    int st = -1;
    json_t *j = NULL;
    for (int i = 0; i < 100 && st != 503; i++) {
        usleep(50000);
        json_decref(j);
        j = httpc_json("GET", sdk, "/healthz", NULL, NULL, &st);
    }
    ck_assert_int_eq(st, 503);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "degraded");
    ck_assert(json_is_false(json_object_get(json_object_get(j, "postgres"), "up")));
    ck_assert(json_is_true(json_object_get(json_object_get(j, "redis"), "up")));
    json_decref(j);
    /* Still alive a second later (retrying with backoff, not crashed). */
    sleep(1);
    int wst;
    ck_assert_int_eq(waitpid(pid, &wst, WNOHANG), 0);
    kill(pid, SIGTERM);
    waitpid(pid, &wst, 0);
    ck_assert(WIFEXITED(wst) && WEXITSTATUS(wst) == 0);
}
END_TEST

static Suite *
daemons_suite(void)
{
    Suite *s = suite_create("daemons");
    TCase *tc = tcase_create("stack");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, healthz_reports_dependencies);
    tcase_add_test(tc, metrics_prometheus_text);
    tcase_add_test(tc, unknown_path_and_oversize);
    tcase_add_test(tc, sigterm_stops_cleanly);
    tcase_add_test(tc, bad_config_one_clear_line);
    tcase_add_test(tc, migrations_rerun_cleanly);
    tcase_add_test(tc, missing_dependency_is_reported_not_fatal);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(daemons_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
