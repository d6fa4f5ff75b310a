/*
 * Integration: the daemons as systemd runs them (ops/systemd/).
 *
 * Each test binds a unix datagram socket, starts logicd or lcsd with
 * NOTIFY_SOCKET (and WATCHDOG_USEC) pointing at it, the way systemd starts
 * a Type=notify unit, and reads what the daemon says: READY=1 once it
 * listens, WATCHDOG=1 pings, RELOADING=1 / READY=1 around a SIGHUP, and
 * STOPPING=1 on SIGTERM. The reload tests change the config file and send
 * SIGHUP: new token keys and operator tokens are accepted, the renamed log
 * file is left alone (logrotate) and a new one written, a changed key that
 * needs a restart is reported and not applied, and an invalid file keeps
 * the daemon serving with its old settings.
 */
#include <check.h>
#include <stdbool.h>
#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "httpc.h"
#include "mboxtest.h"
#include "sdnotify.h"
#include "token.h"
#include "wsc.h"

static struct harness h;

static void
setup(void)
{
    /* PostgreSQL, Redis and the migrations; the daemons are the tests' own. */
    ck_assert_msg(harness_start(&h, HARNESS_LOGICD), "harness failed to start");
}

static void
teardown(void)
{
    harness_stop(&h);
}

static int64_t
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* A bound unix datagram socket at DIR/name (what systemd listens on). */
static int
notify_socket(const char *name, char *path, size_t len)
{
    ck_assert_int_lt(snprintf(path, len, "%.200s/%.40s", h.dir, name), (int)len);
    unlink(path);
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    ck_assert_int_ge(fd, 0);
    struct sockaddr_un sa = {.sun_family = AF_UNIX};
    ck_assert_uint_lt(strlen(path), sizeof(sa.sun_path));
    memcpy(sa.sun_path, path, strlen(path) + 1);
    ck_assert_int_eq(bind(fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    return fd;
}

/*
 * Reads notify messages until one contains want (a line such as
 * "READY=1"), or timeout_ms passes. True when seen.
 */
static bool
wait_msg(int fd, const char *want, int timeout_ms)
{
    int64_t end = now_ms() + timeout_ms;
    for (;;) {
        int left = (int)(end - now_ms());
        if (left <= 0)
            return false;
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (poll(&p, 1, left) <= 0)
            continue;
        char buf[1024];
        ssize_t n = recv(fd, buf, sizeof(buf) - 1, 0);
        if (n <= 0)
            continue;
        buf[n] = '\0';
        /* Messages are newline-separated assignments; match a whole line. */
        for (char *line = strtok(buf, "\n"); line != NULL; line = strtok(NULL, "\n")) {
            if (strcmp(line, want) == 0)
                return true;
        }
    }
}

/* Counts messages holding the line want within ms milliseconds. */
static int
count_msgs(int fd, const char *want, int ms)
{
    int n = 0;
    int64_t end = now_ms() + ms;
    while (now_ms() < end) {
        if (wait_msg(fd, want, (int)(end - now_ms())))
            n++;
    }
    return n;
}

static void
write_text(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(fputs(text, f), 0);
    ck_assert_int_eq(fclose(f), 0);
}

/* The whole file as a NUL-terminated heap string ("" when missing). */
static char *
read_text(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return strdup("");
    size_t cap = 1 << 16, len = 0, n;
    char *s = malloc(cap);
    while ((n = fread(s + len, 1, cap - len - 1, f)) > 0) {
        len += n;
        if (cap - len < 2)
            s = realloc(s, cap *= 2);
    }
    s[len] = '\0';
    fclose(f);
    return s;
}

/* Polls path until it contains needle (true) or timeout_ms passes. */
static bool
wait_file_has(const char *path, const char *needle, int timeout_ms)
{
    for (int64_t end = now_ms() + timeout_ms; now_ms() < end; usleep(50 * 1000)) {
        char *s = read_text(path);
        bool found = strstr(s, needle) != NULL;
        free(s);
        if (found)
            return true;
    }
    return false;
}

/* Starts prog with NOTIFY_SOCKET (and WATCHDOG_USEC when wd_usec > 0). */
static pid_t
spawn_notified(const char *prog, const char *config, const char *log, const char *sock,
               const char *wd_usec)
{
    setenv("NOTIFY_SOCKET", sock, 1);
    if (wd_usec != NULL)
        setenv("WATCHDOG_USEC", wd_usec, 1);
    else
        unsetenv("WATCHDOG_USEC");
    pid_t pid = harness_spawn(prog, config, log);
    unsetenv("NOTIFY_SOCKET");
    unsetenv("WATCHDOG_USEC");
    ck_assert_int_gt(pid, 0);
    return pid;
}

/* SIGTERM unless already sent, then the exit status (SIGKILL after 10 s: a failure). */
static int
stop_and_wait(pid_t pid, bool sent)
{
    if (!sent)
        kill(pid, SIGTERM);
    for (int i = 0; i < 200; i++) {
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        usleep(50 * 1000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

/* A logicd config for this harness; extra lines appended. */
static void
logicd_config(char *text, size_t len, int sdk, int internal, const char *log_file,
              const char *extra)
{
    char migrations[1024];
    harness_source_path("migrations", migrations, sizeof(migrations));
    snprintf(text, len,
             "sdk_listen = 127.0.0.1:%d\ninternal_listen = 127.0.0.1:%d\n"
             "pg_conninfo = \"%s\"\nredis_port = %d\nserver_key = %s\n"
             "migrations_dir = %s\npoll_interval_ms = 200\nlog_file = %s\n%s",
             sdk, internal, h.pg_conninfo, h.redis_port, h.server_key, migrations, log_file, extra);
}

START_TEST(built_with_libsystemd)
{
    /* The notify tests below mean nothing without it (meson option systemd). */
    ck_assert(sdn_built_in());
}
END_TEST

START_TEST(logicd_ready_watchdog_stopping)
{
    char sock[256], prog[1024], conf[512], log[512], logfile[512], text[4096], extra[256];
    int fd = notify_socket("logicd.notify", sock, sizeof(sock));
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    int sdk = harness_free_port(), internal = harness_free_port();
    snprintf(conf, sizeof(conf), "%s/n-logicd.conf", h.dir);
    snprintf(log, sizeof(log), "%s/n-logicd.out", h.dir);
    snprintf(logfile, sizeof(logfile), "%s/n-logicd.log", h.dir);
    snprintf(extra, sizeof(extra), "token_key = %s\nops_tokens = t:%s\n", h.token_key, h.ops_token);
    logicd_config(text, sizeof(text), sdk, internal, logfile, extra);
    write_text(conf, text);
    pid_t pid = spawn_notified(prog, conf, log, sock, "1000000");

    ck_assert_msg(wait_msg(fd, "READY=1", 20000), "no READY=1 (log %s)", logfile);
    /* READY means serving: both listeners answer at once. */
    struct httpc_resp r;
    ck_assert_int_gt(httpc_request("GET", internal, "/healthz", NULL, NULL, 0, &r), 0);
    httpc_resp_free(&r);
    ck_assert_int_gt(httpc_request("GET", sdk, "/v1/nothing", NULL, NULL, 0, &r), 0);
    httpc_resp_free(&r);
    /* WATCHDOG_USEC=1 s: a ping every half second while the loops turn. */
    int pings = count_msgs(fd, "WATCHDOG=1", 2600);
    ck_assert_msg(pings >= 3 && pings <= 8, "WATCHDOG=1 pings in 2.6 s: %d", pings);

    kill(pid, SIGHUP);
    ck_assert(wait_msg(fd, "RELOADING=1", 5000));
    ck_assert(wait_msg(fd, "READY=1", 5000));

    kill(pid, SIGTERM);
    ck_assert(wait_msg(fd, "STOPPING=1", 5000));
    ck_assert_int_eq(stop_and_wait(pid, true), 0);
    close(fd);
}
END_TEST

START_TEST(lcsd_ready_watchdog_stopping)
{
    char sock[256], prog[1024], conf[512], log[512], text[2048];
    int fd = notify_socket("lcsd.notify", sock, sizeof(sock));
    harness_build_path("services/lcs/lcsd", prog, sizeof(prog));
    int ws = harness_free_port(), admin = harness_free_port();
    snprintf(conf, sizeof(conf), "%s/n-lcsd.conf", h.dir);
    snprintf(log, sizeof(log), "%s/n-lcsd.out", h.dir);
    snprintf(text, sizeof(text),
             "ws_listen = 127.0.0.1:%d\nadmin_listen = 127.0.0.1:%d\nredis_port = %d\n"
             "token_key = %s\nnode_id = lcs-notify\n",
             ws, admin, h.redis_port, h.token_key);
    write_text(conf, text);
    pid_t pid = spawn_notified(prog, conf, log, sock, "1000000");

    ck_assert_msg(wait_msg(fd, "READY=1", 20000), "no READY=1 (log %s)", log);
    struct httpc_resp r;
    ck_assert_int_gt(httpc_request("GET", admin, "/healthz", NULL, NULL, 0, &r), 0);
    httpc_resp_free(&r);
    ck_assert_int_gt(httpc_request("GET", ws, "/ws", NULL, NULL, 0, &r), 0);
    httpc_resp_free(&r);
    int pings = count_msgs(fd, "WATCHDOG=1", 2600);
    ck_assert_msg(pings >= 3 && pings <= 8, "WATCHDOG=1 pings in 2.6 s: %d", pings);

    kill(pid, SIGTERM);
    ck_assert(wait_msg(fd, "STOPPING=1", 5000));
    ck_assert_int_eq(stop_and_wait(pid, true), 0);
    close(fd);
}
END_TEST

START_TEST(no_watchdog_without_watchdog_usec)
{
    char sock[256], prog[1024], conf[512], log[512], text[2048];
    int fd = notify_socket("lcsd2.notify", sock, sizeof(sock));
    harness_build_path("services/lcs/lcsd", prog, sizeof(prog));
    snprintf(conf, sizeof(conf), "%s/n2-lcsd.conf", h.dir);
    snprintf(log, sizeof(log), "%s/n2-lcsd.out", h.dir);
    snprintf(text, sizeof(text),
             "ws_listen = 127.0.0.1:%d\nadmin_listen = 127.0.0.1:%d\nredis_port = %d\n"
             "token_key = %s\nnode_id = lcs-notify2\n",
             harness_free_port(), harness_free_port(), h.redis_port, h.token_key);
    write_text(conf, text);
    pid_t pid = spawn_notified(prog, conf, log, sock, NULL);
    ck_assert(wait_msg(fd, "READY=1", 20000));
    ck_assert_int_eq(count_msgs(fd, "WATCHDOG=1", 1200), 0);
    ck_assert_int_eq(stop_and_wait(pid, false), 0);
    close(fd);
}
END_TEST

/* POST /v1/sync with token on the SDK port: the status. */
static int
sync_status(int sdk, const char *token)
{
    int st = 0;
    json_t *j = httpc_json("POST", sdk, "/v1/sync", token, "{\"cursor\":\"\",\"limit\":1}", &st);
    json_decref(j);
    return st;
}

/* A user token signed with (kid, key). */
static void
mint(const char *kid, const char *key, char *out, size_t len)
{
    struct token_keys keys = {.current_id = kid, .current_key = key};
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    struct token_claims cl = {.app_id = 1, .uid = 42};
    cl.expires_at_us = ((int64_t)ts.tv_sec + 3600) * 1000000;
    ck_assert(token_mint(&keys, &cl, out, len));
}

/* Sends SIGHUP and waits for the reload to end (READY=1 after RELOADING=1). */
static void
reload(pid_t pid, int fd)
{
    kill(pid, SIGHUP);
    ck_assert(wait_msg(fd, "RELOADING=1", 5000));
    ck_assert(wait_msg(fd, "READY=1", 5000));
}

START_TEST(logicd_sighup_reloads_keys_tokens_cors_and_log_file)
{
    char sock[256], prog[1024], conf[512], out[512], logfile[512], rotated[600];
    char text[4096], extra[1024], cors_hdr[256];
    int fd = notify_socket("reload.notify", sock, sizeof(sock));
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    int sdk = harness_free_port(), internal = harness_free_port();
    snprintf(conf, sizeof(conf), "%s/r-logicd.conf", h.dir);
    snprintf(out, sizeof(out), "%s/r-logicd.out", h.dir);
    snprintf(logfile, sizeof(logfile), "%s/r-logicd.log", h.dir);
    snprintf(rotated, sizeof(rotated), "%s.1", logfile);
    const char *k1 = "key-one-0123456789", *k2 = "key-two-0123456789", *k3 = "key-three-0123456";
    snprintf(extra, sizeof(extra), "token_key_id = k1\ntoken_key = %s\nops_tokens = a:opsA\n", k1);
    logicd_config(text, sizeof(text), sdk, internal, logfile, extra);
    write_text(conf, text);
    pid_t pid = spawn_notified(prog, conf, out, sock, NULL);
    ck_assert_msg(wait_msg(fd, "READY=1", 20000), "no READY=1 (log %s)", logfile);
    int st = 0;
    for (int i = 0; i < 100 && st != 200; i++, usleep(100 * 1000)) {
        json_t *j = httpc_json("GET", internal, "/healthz", NULL, NULL, &st);
        json_decref(j);
    }
    ck_assert_int_eq(st, 200);

    char t1[512], t2[512], t3[512];
    mint("k1", k1, t1, sizeof(t1));
    mint("k2", k2, t2, sizeof(t2));
    mint("k3", k3, t3, sizeof(t3));
    ck_assert_int_eq(sync_status(sdk, t1), 200);
    ck_assert_int_eq(sync_status(sdk, t2), 401);
    json_t *j = httpc_json("GET", internal, "/v1/whitelist?app_id=1", "opsB", NULL, &st);
    json_decref(j);
    ck_assert_int_eq(st, 401);
    const char *pre = "Origin: https://app.example\r\nAccess-Control-Request-Method: POST\r\n";
    struct httpc_resp r;
    httpc_request("OPTIONS", sdk, "/v1/sync", pre, NULL, 0, &r);
    ck_assert_ptr_null(httpc_header(&r, "Access-Control-Allow-Origin", cors_hdr, sizeof(cors_hdr)));
    httpc_resp_free(&r);

    /* Rotation: k2 signs, k1 still accepted; a second operator; CORS on;
     * threads changed (needs a restart); logrotate renamed the log. */
    snprintf(extra, sizeof(extra),
             "token_key_id = k2\ntoken_key = %s\ntoken_prev_key_id = k1\ntoken_prev_key = %s\n"
             "ops_tokens = a:opsA,b:opsB:editor\ncors_allow_origins = https://app.example\n"
             "threads = 3\nlog_format = json\n",
             k2, k1);
    logicd_config(text, sizeof(text), sdk, internal, logfile, extra);
    write_text(conf, text);
    ck_assert_int_eq(rename(logfile, rotated), 0);
    reload(pid, fd);

    ck_assert_int_eq(sync_status(sdk, t1), 200);
    ck_assert_int_eq(sync_status(sdk, t2), 200);
    ck_assert_int_eq(sync_status(sdk, t3), 401);
    j = httpc_json("GET", internal, "/v1/whitelist?app_id=1", "opsB", NULL, &st);
    json_decref(j);
    ck_assert_int_eq(st, 200);
    httpc_request("OPTIONS", sdk, "/v1/sync", pre, NULL, 0, &r);
    ck_assert_ptr_nonnull(
        httpc_header(&r, "Access-Control-Allow-Origin", cors_hdr, sizeof(cors_hdr)));
    ck_assert_str_eq(cors_hdr, "https://app.example");
    httpc_resp_free(&r);
    /* The new file has the reload's lines, in JSON now; the renamed one not. */
    ck_assert(wait_file_has(logfile, "\"event\":\"config_reloaded\"", 5000));
    char *now = read_text(logfile), *old = read_text(rotated);
    ck_assert_ptr_nonnull(strstr(now, "\"event\":\"config_needs_restart\",\"keys\":\"threads\""));
    ck_assert_ptr_nonnull(strstr(now, "token_key")); /* in applied= */
    ck_assert_ptr_null(strstr(now, k2));             /* secrets are never logged */
    ck_assert_ptr_null(strstr(old, "config_reloaded"));
    ck_assert_ptr_nonnull(strstr(old, "event=logicd_started"));
    free(now);
    free(old);

    /* k1 dropped: its tokens fail at once (no verified-token cache left over). */
    snprintf(extra, sizeof(extra), "token_key_id = k3\ntoken_key = %s\nops_tokens = b:opsB\n", k3);
    logicd_config(text, sizeof(text), sdk, internal, logfile, extra);
    write_text(conf, text);
    reload(pid, fd);
    ck_assert_int_eq(sync_status(sdk, t1), 401);
    ck_assert_int_eq(sync_status(sdk, t3), 200);
    j = httpc_json("GET", internal, "/v1/whitelist?app_id=1", "opsA", NULL, &st);
    json_decref(j);
    ck_assert_int_eq(st, 401);

    /* An invalid file: logged, nothing changes, still serving. */
    write_text(conf, "threads = many\n");
    reload(pid, fd);
    ck_assert(wait_file_has(logfile, "config_reload_failed", 5000));
    ck_assert_int_eq(sync_status(sdk, t3), 200);
    ck_assert_int_eq(sync_status(sdk, t1), 401);
    /* A file that loads but does not validate (no token_key) likewise. */
    logicd_config(text, sizeof(text), sdk, internal, logfile, "ops_tokens = b:opsB\n");
    write_text(conf, text);
    reload(pid, fd);
    ck_assert_int_eq(sync_status(sdk, t3), 200);
    now = read_text(logfile);
    ck_assert_ptr_nonnull(strstr(now, "token_key' must be set"));
    free(now);

    ck_assert_int_eq(stop_and_wait(pid, false), 0);
    close(fd);
}
END_TEST

START_TEST(lcsd_sighup_reloads_token_keys_and_log_file)
{
    char sock[256], prog[1024], conf[512], out[512], logfile[512], rotated[600], text[2048];
    int fd = notify_socket("lreload.notify", sock, sizeof(sock));
    harness_build_path("services/lcs/lcsd", prog, sizeof(prog));
    int ws = harness_free_port(), admin = harness_free_port();
    snprintf(conf, sizeof(conf), "%s/r-lcsd.conf", h.dir);
    snprintf(out, sizeof(out), "%s/r-lcsd.out", h.dir);
    snprintf(logfile, sizeof(logfile), "%s/r-lcsd.log", h.dir);
    snprintf(rotated, sizeof(rotated), "%s.1", logfile);
#define LCSD_BASE                                                                                  \
    "ws_listen = 127.0.0.1:%d\nadmin_listen = 127.0.0.1:%d\nredis_port = %d\n"                     \
    "log_file = %s\n"
    int n = snprintf(text, sizeof(text), LCSD_BASE, ws, admin, h.redis_port, logfile);
    snprintf(text + n, sizeof(text) - (size_t)n,
             "token_key_id = k1\ntoken_key = lkey-one\nnode_id = lcs-r\n");
    write_text(conf, text);
    pid_t pid = spawn_notified(prog, conf, out, sock, NULL);
    ck_assert_msg(wait_msg(fd, "READY=1", 20000), "no READY=1 (log %s)", logfile);

    char t1[512], t2[512];
    mint("k1", "lkey-one", t1, sizeof(t1));
    mint("k2", "lkey-two", t2, sizeof(t2));
    struct wsc *c = wsc_open(ws);
    json_t *ack = wsc_login_json(c, t2, "d1");
    ck_assert(json_is_false(json_object_get(ack, "ok")));
    json_decref(ack);
    wsc_free(c);

    n = snprintf(text, sizeof(text), LCSD_BASE, ws, admin, h.redis_port, logfile);
    snprintf(text + n, sizeof(text) - (size_t)n,
             "token_key_id = k2\ntoken_key = lkey-two\nnode_id = other\n");
    write_text(conf, text);
    ck_assert_int_eq(rename(logfile, rotated), 0);
    reload(pid, fd);
    c = wsc_open(ws);
    ack = wsc_login_json(c, t2, "d1");
    ck_assert(json_is_true(json_object_get(ack, "ok")));
    json_decref(ack);
    wsc_free(c);
    c = wsc_open(ws);
    ack = wsc_login_json(c, t1, "d2"); /* k1 is gone */
    ck_assert(json_is_false(json_object_get(ack, "ok")));
    json_decref(ack);
    wsc_free(c);
    ck_assert(wait_file_has(logfile, "event=config_reloaded", 5000));
    ck_assert(wait_file_has(logfile, "event=config_needs_restart keys=node_id", 5000));
    char *old = read_text(rotated);
    ck_assert_ptr_null(strstr(old, "config_reloaded"));
    free(old);

    write_text(conf, "heartbeat_s = 0\n"); /* out of range */
    reload(pid, fd);
    ck_assert(wait_file_has(logfile, "config_reload_failed", 5000));
    c = wsc_open(ws);
    ack = wsc_login_json(c, t2, "d3");
    ck_assert(json_is_true(json_object_get(ack, "ok")));
    json_decref(ack);
    wsc_free(c);

    ck_assert_int_eq(stop_and_wait(pid, false), 0);
    close(fd);
}
END_TEST

int
main(void)
{
    Suite *s = suite_create("systemd");
    TCase *tc = tcase_create("notify_and_reload");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, built_with_libsystemd);
    tcase_add_test(tc, logicd_ready_watchdog_stopping);
    tcase_add_test(tc, lcsd_ready_watchdog_stopping);
    tcase_add_test(tc, no_watchdog_without_watchdog_usec);
    tcase_add_test(tc, logicd_sighup_reloads_keys_tokens_cors_and_log_file);
    tcase_add_test(tc, lcsd_sighup_reloads_token_keys_and_log_file);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
