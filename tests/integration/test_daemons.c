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

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <time.h>

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
    json_t *j = httpc_json("GET", h.logicd[0].port[1], "/healthz", NULL, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "ok");
    ck_assert(json_is_true(json_object_get(json_object_get(j, "postgres"), "up")));
    ck_assert(json_is_true(json_object_get(json_object_get(j, "redis"), "up")));
    json_decref(j);

    j = httpc_json("GET", h.lcsd[0].port[1], "/healthz", NULL, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "service")), "lcsd");
    json_decref(j);
}
END_TEST

START_TEST(healthy_means_every_worker_serves)
{
    /* Regression: /healthz was 200 as soon as the worker that answered it
     * had a PostgreSQL connection, while another worker's pool was still
     * connecting and answered syncs with 503 (seen in CI). Now 200 means
     * every worker has one, so the first requests after it all succeed. */
    int i = harness_add_logicd(&h, "threads = 4\npg_pool_size = 16\n");
    ck_assert_int_ge(i, 0);
    int st;
    json_t *j = httpc_json("GET", h.logicd[i].port[1], "/healthz", NULL, NULL, &st);
    ck_assert_int_eq(st, 200);
    json_t *pg = json_object_get(j, "postgres");
    ck_assert_int_eq(json_integer_value(json_object_get(pg, "workers")), 4);
    ck_assert_int_eq(json_integer_value(json_object_get(pg, "workers_up")), 4);
    json_decref(j);
    char token[1024], hdrs[1200];
    mt_token(&h, i, 1, 6, 60, false, token, sizeof(token));
    snprintf(hdrs, sizeof(hdrs), "Authorization: Bearer %s\r\nContent-Type: application/json\r\n",
             token);
    for (int k = 0; k < 40; k++) { /* each on a new connection: every worker */
        struct httpc_resp r;
        ck_assert_int_eq(httpc_request("POST", h.logicd[i].port[0], "/v1/sync", hdrs, "{}", 2, &r),
                         200);
        httpc_resp_free(&r);
    }
    harness_daemon_stop(&h.logicd[i]);
    h.nlogicd--;
}
END_TEST

START_TEST(metrics_prometheus_text)
{
    struct httpc_resp r;
    /* Make one request we can find in the counters. */
    int st;
    json_decref(httpc_json("GET", h.logicd[0].port[1], "/healthz", NULL, NULL, &st));
    ck_assert_int_eq(httpc_request("GET", h.logicd[0].port[1], "/metrics", NULL, NULL, 0, &r), 200);
    char ct[128];
    ck_assert_ptr_nonnull(httpc_header(&r, "Content-Type", ct, sizeof(ct)));
    ck_assert_ptr_nonnull(strstr(ct, "text/plain"));
    ck_assert_ptr_nonnull(strstr(r.body, "# TYPE mbox_http_requests_total counter"));
    ck_assert_ptr_nonnull(strstr(r.body, "route=\"/healthz\""));
    ck_assert_ptr_nonnull(strstr(r.body, "mbox_pg_connections_ready"));
    httpc_resp_free(&r);

    ck_assert_int_eq(httpc_request("GET", h.lcsd[0].port[1], "/metrics", NULL, NULL, 0, &r), 200);
    ck_assert_ptr_nonnull(strstr(r.body, "mbox_redis_clients_connected"));
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
    char auth[1200], token[1024];
    mt_token(&h, 0, 1, 5, 60, false, token, sizeof(token));
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s\r\n", token);
    st = httpc_request("POST", h.logicd[0].port[0], "/v1/sync", auth, body, big, &r);
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
    ck_assert_int_eq(httpc_request("GET", h.logicd[0].port[1], "/healthz", NULL, NULL, 0, &r), 200);
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

    write_text(path, "server_key = a\ntoken_key = b\ncors_allow_origins = app.example/x\n");
    ck_assert_int_ne(run_prog(argv, NULL, out, sizeof(out)), 0);
    ck_assert_msg(strstr(out, "cors_allow_origins") && strstr(out, "scheme://host"), "got: %s",
                  out);
    ck_assert_msg(strchr(out, '\n') == out + strlen(out) - 1, "more than one line: %s", out);

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
        j = httpc_json("GET", internal, "/healthz", NULL, NULL, &st);
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

/* ---- hardening on the wire ---- */

static long
ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

static int
raw_connect(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/*
 * Reads a response's status line from fd within timeout_ms; returns the
 * status, 0 when the connection closed without one, -1 on timeout. The
 * head (up to the first bytes of the body) goes to out when out is set.
 */
static int
raw_status(int fd, int timeout_ms, char *out, size_t outlen)
{
    char buf[4096];
    size_t have = 0;
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    while (have < sizeof(buf) - 1) {
        long left = timeout_ms - ms_since(&t0);
        struct pollfd pfd = {.fd = fd, .events = POLLIN};
        if (left <= 0 || poll(&pfd, 1, (int)left) <= 0)
            return -1;
        ssize_t n = recv(fd, buf + have, sizeof(buf) - 1 - have, 0);
        if (n <= 0)
            break;
        have += (size_t)n;
        buf[have] = '\0';
        if (strstr(buf, "\r\n\r\n") != NULL && strchr(buf, '}') != NULL)
            break;
    }
    buf[have] = '\0';
    if (out != NULL)
        snprintf(out, outlen, "%s", buf);
    int status = 0;
    if (sscanf(buf, "HTTP/1.1 %d", &status) != 1)
        return 0;
    return status;
}

/* Sends text on a new connection to port and returns the status of the
 * reply within timeout_ms (see raw_status); the connection is closed. */
static int
raw_exchange(int port, const char *text, int timeout_ms, char *out, size_t outlen)
{
    int fd = raw_connect(port);
    ck_assert_int_eq(send(fd, text, strlen(text), MSG_NOSIGNAL), (ssize_t)strlen(text));
    int st = raw_status(fd, timeout_ms, out, outlen);
    close(fd);
    return st;
}

START_TEST(health_on_internal_listener_only)
{
    /* Regression: /healthz and /metrics were served to anyone on the SDK
     * listener. By default they are only on the internal one. */
    int st;
    json_decref(httpc_json("GET", h.logicd[0].port[0], "/healthz", NULL, NULL, &st));
    ck_assert_int_eq(st, 404);
    json_decref(httpc_json("GET", h.logicd[0].port[0], "/metrics", NULL, NULL, &st));
    ck_assert_int_eq(st, 404);
    json_decref(httpc_json("GET", h.logicd[0].port[1], "/metrics", NULL, NULL, &st));
    ck_assert_int_eq(st, 200);
    /* sdk_health = true serves them on the SDK listener as well. */
    int i = harness_add_logicd(&h, "sdk_health = true\n");
    ck_assert_int_ge(i, 0);
    st = 0;
    for (int k = 0; k < 100 && st != 200; k++) { /* every worker's pools up */
        json_decref(httpc_json("GET", h.logicd[i].port[0], "/healthz", NULL, NULL, &st));
        if (st != 200)
            usleep(50 * 1000);
    }
    ck_assert_int_eq(st, 200);
    json_decref(httpc_json("GET", h.logicd[i].port[0], "/metrics", NULL, NULL, &st));
    ck_assert_int_eq(st, 200);
    harness_daemon_stop(&h.logicd[i]);
    h.nlogicd--;
}
END_TEST

START_TEST(healthz_sees_paused_redis)
{
    /* Regression: /healthz said Redis was up while Redis was stopped and
     * every command timed out (the socket stayed open). */
    pid_t pid = harness_redis_pid(&h);
    ck_assert_int_gt(pid, 0);
    ck_assert_int_eq(kill(pid, SIGSTOP), 0);
    int st;
    json_t *j = httpc_json("GET", h.logicd[0].port[1], "/healthz", NULL, NULL, &st);
    kill(pid, SIGCONT);
    ck_assert_int_eq(st, 503);
    ck_assert(json_is_false(json_object_get(json_object_get(j, "redis"), "up")));
    ck_assert_str_eq(json_string_value(json_object_get(j, "status")), "degraded");
    json_decref(j);
    for (int k = 0; k < 50 && st != 200; k++) {
        usleep(100 * 1000);
        json_decref(httpc_json("GET", h.logicd[0].port[1], "/healthz", NULL, NULL, &st));
    }
    ck_assert_int_eq(st, 200);
}
END_TEST

START_TEST(unauthenticated_body_refused_before_read)
{
    /* Regression: bodies were buffered whole before the credential was
     * checked (1000 x 256 KiB without a token took 264 MiB). Now a head
     * with a body and no valid credential gets 401 at once; the body is
     * never sent here, so a reply can only come from the head. */
    char out[4096];
    int st = raw_exchange(h.logicd[0].port[0],
                          "POST /v1/sync HTTP/1.1\r\nHost: x\r\nContent-Length: 200000\r\n\r\n",
                          2000, out, sizeof(out));
    ck_assert_msg(st == 401, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "\"unauthenticated\""));
    st = raw_exchange(h.logicd[0].port[0],
                      "POST /v1/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer forged.token\r\n"
                      "Content-Length: 200000\r\n\r\n",
                      2000, out, sizeof(out));
    ck_assert_msg(st == 401, "%s", out);
    st = raw_exchange(h.logicd[0].port[1],
                      "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer wrong\r\n"
                      "Content-Length: 60000000\r\n\r\n",
                      2000, out, sizeof(out));
    ck_assert_msg(st == 401, "%s", out);
    st = raw_exchange(h.logicd[0].port[1],
                      "POST /v1/fanout HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                      2000, out, sizeof(out));
    ck_assert_msg(st == 401, "%s", out);
    /* With a valid credential the server waits for the body instead. */
    char head[1400], token[1024];
    mt_token(&h, 0, 1, 5, 60, false, token, sizeof(token));
    snprintf(head, sizeof(head),
             "POST /v1/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Length: 200000\r\n\r\n",
             token);
    ck_assert_int_eq(raw_exchange(h.logicd[0].port[0], head, 500, NULL, 0), -1);
    snprintf(head, sizeof(head),
             "POST /v1/messages HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Length: 200000\r\n\r\n",
             h.server_key);
    ck_assert_int_eq(raw_exchange(h.logicd[0].port[1], head, 500, NULL, 0), -1);
}
END_TEST

START_TEST(routing_on_the_raw_path)
{
    /* Regression: "/v1%2Fnotices%2F1%2Fhide" and "/v1/notices/1/hid%65"
     * acted as "/v1/notices/1/hide". */
    char token[1024], auth[1200];
    mt_token(&h, 0, 1, 5, 60, false, token, sizeof(token));
    snprintf(auth, sizeof(auth), "Authorization: Bearer %s\r\n", token);
    struct httpc_resp r;
    int st =
        httpc_request("POST", h.logicd[0].port[0], "/v1%2Fnotices%2F1%2Fhide", auth, NULL, 0, &r);
    ck_assert_int_eq(st, 400);
    ck_assert_ptr_nonnull(strstr(r.body, "invalid_argument"));
    httpc_resp_free(&r);
    st = httpc_request("POST", h.logicd[0].port[0], "/v1/notices/1/hid%65", auth, NULL, 0, &r);
    ck_assert_int_eq(st, 404);
    httpc_resp_free(&r);
    st = httpc_request("POST", h.logicd[0].port[0], "/v1/notices/1%2F2/hide", auth, NULL, 0, &r);
    ck_assert_int_eq(st, 400);
    httpc_resp_free(&r);
}
END_TEST

START_TEST(slow_head_and_body_are_cut)
{
    /* Regression: the 30 s timeout restarted on every byte, so a head or a
     * body trickled a byte at a time held its connection forever. */
    int i = harness_add_logicd(&h, "http_head_timeout_s = 1\nhttp_min_body_rate = 1000\n");
    ck_assert_int_ge(i, 0);
    const char *head =
        "GET /v1/history HTTP/1.1\r\nHost: x\r\nX-Slow: aaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n";
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    int fd = raw_connect(h.logicd[i].port[0]);
    int st = -1;
    for (size_t k = 0; head[k] != '\0' && st == -1; k++) {
        if (send(fd, head + k, 1, MSG_NOSIGNAL) != 1)
            break;
        st = raw_status(fd, 200, NULL, 0);
    }
    close(fd);
    long ms = ms_since(&t0);
    ck_assert_int_eq(st, 408);
    ck_assert_msg(ms >= 900 && ms <= 3500, "cut after %ld ms", ms);

    char token[1024], text[1400];
    mt_token(&h, i, 1, 5, 60, false, token, sizeof(token));
    snprintf(text, sizeof(text),
             "POST /v1/sync HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer %s\r\n"
             "Content-Length: 100000\r\n\r\n",
             token);
    clock_gettime(CLOCK_MONOTONIC, &t0);
    fd = raw_connect(h.logicd[i].port[0]);
    ck_assert_int_eq(send(fd, text, strlen(text), MSG_NOSIGNAL), (ssize_t)strlen(text));
    st = -1;
    for (int k = 0; k < 200 && st == -1; k++) {
        if (send(fd, "x", 1, MSG_NOSIGNAL) != 1)
            break;
        st = raw_status(fd, 20, NULL, 0);
    }
    close(fd);
    ms = ms_since(&t0);
    ck_assert_int_eq(st, 408);
    ck_assert_msg(ms >= 900 && ms <= 3500, "cut after %ld ms", ms);
    harness_daemon_stop(&h.logicd[i]);
    h.nlogicd--;
}
END_TEST

START_TEST(connection_cap_keeps_internal_listener_answering)
{
    /* Regression: no cap: slow clients held logicd at its descriptor limit
     * and /healthz stopped answering. With sdk_max_connections = 20 the
     * 21st SDK connection gets a 503 at once, and the internal listener
     * answers /healthz meanwhile. */
    int i = harness_add_logicd(&h, "sdk_max_connections = 20\n");
    ck_assert_int_ge(i, 0);
    int held[20];
    for (int k = 0; k < 20; k++)
        held[k] = raw_connect(h.logicd[i].port[0]);
    usleep(200 * 1000); /* let the server accept them all */
    char out[4096];
    int st = raw_exchange(h.logicd[i].port[0], "GET /v1/history HTTP/1.1\r\nHost: x\r\n\r\n", 2000,
                          out, sizeof(out));
    ck_assert_msg(st == 503, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "too many connections"));
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    json_decref(httpc_json("GET", h.logicd[i].port[1], "/healthz", NULL, NULL, &st));
    ck_assert_int_eq(st, 200);
    ck_assert_int_le(ms_since(&t0), 1000);
    ck_assert_double_ge(
        mt_metric(h.logicd[i].port[1], "mbox_http_connections_refused_total", "reason=\"cap\""), 1);
    for (int k = 0; k < 20; k++)
        close(held[k]);
    usleep(200 * 1000);
    json_decref(httpc_json("GET", h.logicd[i].port[0], "/v1/history", NULL, NULL, &st));
    ck_assert_int_eq(st, 401); /* served again, and answered by the handler */
    harness_daemon_stop(&h.logicd[i]);
    h.nlogicd--;
}
END_TEST

START_TEST(cors_on_the_sdk_listener)
{
    /* Browsers on a listed origin may call the SDK listener: preflight 204,
     * Access-Control-Allow-Origin on replies; other origins get nothing. */
    int i = harness_add_logicd(&h, "cors_allow_origins = http://demo.example:9000, "
                                   "https://app.example\n");
    ck_assert_int_ge(i, 0);
    struct httpc_resp r;
    char v[512];
    int st = httpc_request("OPTIONS", h.logicd[i].port[0], "/v1/sync",
                           "Origin: http://demo.example:9000\r\n"
                           "Access-Control-Request-Method: POST\r\n"
                           "Access-Control-Request-Headers: authorization, content-type\r\n",
                           NULL, 0, &r);
    ck_assert_int_eq(st, 204);
    ck_assert_str_eq(httpc_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)),
                     "http://demo.example:9000");
    ck_assert_str_eq(httpc_header(&r, "Access-Control-Allow-Methods", v, sizeof(v)), "POST");
    ck_assert_ptr_nonnull(
        strstr(httpc_header(&r, "Access-Control-Allow-Headers", v, sizeof(v)), "Authorization"));
    ck_assert_ptr_nonnull(strstr(v, "core_level"));
    ck_assert_ptr_nonnull(httpc_header(&r, "Access-Control-Max-Age", v, sizeof(v)));
    httpc_resp_free(&r);

    char token[1024], hdrs[1400];
    mt_token(&h, i, 1, 5, 60, false, token, sizeof(token));
    snprintf(hdrs, sizeof(hdrs),
             "Origin: https://app.example\r\nAuthorization: Bearer %s\r\n"
             "Content-Type: application/json\r\n",
             token);
    st = httpc_request("POST", h.logicd[i].port[0], "/v1/sync", hdrs, "{}", 2, &r);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(httpc_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)),
                     "https://app.example");
    httpc_resp_free(&r);
    /* A 401 must be readable by the page too (it triggers a token refresh). */
    st = httpc_request("POST", h.logicd[i].port[0], "/v1/sync",
                       "Origin: https://app.example\r\nContent-Type: application/json\r\n", "{}", 2,
                       &r);
    ck_assert_int_eq(st, 401);
    ck_assert_ptr_nonnull(httpc_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    httpc_resp_free(&r);

    st = httpc_request("OPTIONS", h.logicd[i].port[0], "/v1/sync",
                       "Origin: http://evil.example\r\nAccess-Control-Request-Method: POST\r\n",
                       NULL, 0, &r);
    ck_assert_int_eq(st, 405);
    ck_assert_ptr_null(httpc_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    httpc_resp_free(&r);
    /* The internal listener is not for browsers: no policy there. */
    st = httpc_request("OPTIONS", h.logicd[i].port[1], "/v1/messages",
                       "Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n",
                       NULL, 0, &r);
    ck_assert_int_eq(st, 405);
    httpc_resp_free(&r);
    harness_daemon_stop(&h.logicd[i]);
    h.nlogicd--;
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
    tcase_add_test(tc, healthy_means_every_worker_serves);
    tcase_add_test(tc, metrics_prometheus_text);
    tcase_add_test(tc, unknown_path_and_oversize);
    tcase_add_test(tc, sigterm_stops_cleanly);
    tcase_add_test(tc, bad_config_one_clear_line);
    tcase_add_test(tc, migrations_rerun_cleanly);
    tcase_add_test(tc, missing_dependency_is_reported_not_fatal);
    tcase_add_test(tc, health_on_internal_listener_only);
    tcase_add_test(tc, healthz_sees_paused_redis);
    tcase_add_test(tc, unauthenticated_body_refused_before_read);
    tcase_add_test(tc, routing_on_the_raw_path);
    tcase_add_test(tc, slow_head_and_body_are_cut);
    tcase_add_test(tc, connection_cap_keeps_internal_listener_answering);
    tcase_add_test(tc, cors_on_the_sdk_listener);
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
