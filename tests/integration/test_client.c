/*
 * Integration: the `mbox` command-line client against real PostgreSQL,
 * Redis, logicd and lcsd (send -> notify -> pull, end to end), plus a few
 * fake lcsd servers on a loopback socket for what the real one will not do
 * on demand (go silent, send garbage).
 *
 * The client runs as a child process: stdout (one JSON line per item) is a
 * pipe read here, stderr (key=value log lines) goes to a file in the
 * harness directory.
 */
#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "cursor.h"
#include "harness.h"
#include "mboxtest.h"
#include "ws.h"

static struct harness h;
#define APP 1

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

/* ---- the child process ----------------------------------------------------- */

struct child {
    pid_t pid;
    int out;         /* read end of its stdout */
    char log[512];   /* its stderr */
    char buf[65536]; /* stdout bytes not yet returned as lines */
    size_t len;
};

/*
 * Starts `mbox <cmd> <args...>` (NULL-terminated) with stdout piped to c->out
 * and stderr appended to a file named after tag.
 */
static void
child_start(struct child *c, const char *tag, const char *cmd, ...)
{
    const char *argv[32];
    char prog[1024];
    int n = 0;
    argv[n++] = harness_build_path("services/client/mbox", prog, sizeof(prog));
    argv[n++] = cmd;
    va_list ap;
    va_start(ap, cmd);
    const char *a;
    while ((a = va_arg(ap, const char *)) != NULL && n < 31)
        argv[n++] = a;
    va_end(ap);
    argv[n] = NULL;
    memset(c, 0, sizeof(*c));
    snprintf(c->log, sizeof(c->log), "%s/%s.log", h.dir, tag);
    int p[2];
    ck_assert_int_eq(pipe(p), 0);
    c->pid = fork();
    ck_assert_int_ge(c->pid, 0);
    if (c->pid == 0) {
        int fd = open(c->log, O_WRONLY | O_CREAT | O_APPEND, 0644);
        dup2(p[1], 1);
        if (fd >= 0)
            dup2(fd, 2);
        close(p[0]);
        unsetenv("MBOX_TOKEN");
        unsetenv("MBOX_TOKEN_FILE");
        unsetenv("MBOX_WS_URL");
        unsetenv("MBOX_SDK_URL");
        setenv("MBOX_LOG_LEVEL", "debug", 1);
        execv(argv[0], (char *const *)argv);
        _exit(127);
    }
    close(p[1]);
    c->out = p[0];
    fcntl(c->out, F_SETFL, O_NONBLOCK);
}

/* Reads the next stdout line into line (without '\n') within timeout_ms. */
static bool
child_line(struct child *c, char *line, size_t linelen, int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    for (;;) {
        char *nl = memchr(c->buf, '\n', c->len);
        if (nl != NULL) {
            size_t n = (size_t)(nl - c->buf);
            ck_assert_uint_lt(n, linelen);
            memcpy(line, c->buf, n);
            line[n] = '\0';
            memmove(c->buf, nl + 1, c->len - n - 1);
            c->len -= n + 1;
            return true;
        }
        int64_t left = deadline - mono_ms();
        if (left <= 0)
            return false;
        struct pollfd pfd = {.fd = c->out, .events = POLLIN};
        if (poll(&pfd, 1, (int)left) <= 0)
            continue;
        ssize_t r = read(c->out, c->buf + c->len, sizeof(c->buf) - c->len);
        if (r == 0)
            return false; /* the child closed stdout (exited) */
        if (r < 0 && errno != EAGAIN && errno != EINTR)
            return false;
        if (r > 0)
            c->len += (size_t)r;
        ck_assert_uint_lt(c->len, sizeof(c->buf));
    }
}

/* Reads the next line as a JSON item and returns its msg_id. */
static uint64_t
child_item(struct child *c, int timeout_ms)
{
    char line[8192];
    ck_assert_msg(child_line(c, line, sizeof(line), timeout_ms),
                  "no item line within %d ms (log: %s)", timeout_ms, c->log);
    json_t *j = json_loads(line, JSON_REJECT_DUPLICATES, NULL);
    ck_assert_msg(j != NULL, "not JSON: %s", line);
    uint64_t id = mt_u64(j, "msg_id");
    ck_assert_str_eq(json_string_value(json_object_get(j, "kind")), "message");
    json_decref(j);
    return id;
}

/* True when the child's log holds needle (within timeout_ms). */
static bool
child_log_has(struct child *c, const char *needle, int timeout_ms)
{
    int64_t deadline = mono_ms() + timeout_ms;
    do {
        FILE *f = fopen(c->log, "r");
        if (f) {
            char line[2048];
            while (fgets(line, sizeof(line), f))
                if (strstr(line, needle)) {
                    fclose(f);
                    return true;
                }
            fclose(f);
        }
        usleep(50 * 1000);
    } while (mono_ms() < deadline);
    return false;
}

static int
child_count_log(struct child *c, const char *needle)
{
    int n = 0;
    FILE *f = fopen(c->log, "r");
    if (f) {
        char line[2048];
        while (fgets(line, sizeof(line), f))
            n += strstr(line, needle) != NULL;
        fclose(f);
    }
    return n;
}

/* Sends sig and waits for the exit status (-1 if it had to be killed). */
static int
child_stop(struct child *c, int sig)
{
    if (sig)
        kill(c->pid, sig);
    int st = 0;
    int64_t deadline = mono_ms() + 5000;
    while (waitpid(c->pid, &st, WNOHANG) == 0) {
        if (mono_ms() > deadline) {
            kill(c->pid, SIGKILL);
            waitpid(c->pid, &st, 0);
            close(c->out);
            return -1;
        }
        usleep(20 * 1000);
    }
    close(c->out);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static bool
child_running(struct child *c)
{
    int st;
    return waitpid(c->pid, &st, WNOHANG) == 0;
}

static void
urls(char *ws, size_t wslen, int ws_port, char *sdk, size_t sdklen)
{
    snprintf(ws, wslen, "ws://127.0.0.1:%d/ws", ws_port);
    snprintf(sdk, sdklen, "http://127.0.0.1:%d", h.logicd[0].port[0]);
}

static void
watch_start(struct child *c, const char *tag, const char *token, const char *device,
            const char *cursor_file, int ws_port)
{
    char ws[128], sdk[128];
    urls(ws, sizeof(ws), ws_port, sdk, sizeof(sdk));
    if (cursor_file)
        child_start(c, tag, "watch", "--ws", ws, "--sdk", sdk, "--token", token, "--device", device,
                    "--cursor-file", cursor_file, "--platform", "ios", "--app-version", "8.0.25",
                    "--core-level", "220819", NULL);
    else
        child_start(c, tag, "watch", "--ws", ws, "--sdk", sdk, "--token", token, "--device", device,
                    NULL);
}

/* ---- against the real stack ---------------------------------------------- */

START_TEST(send_notify_pull_end_to_end)
{
    char tok[256], cf[512];
    uint64_t uid = 5001;
    mt_token(&h, 0, APP, uid, 3600, false, tok, sizeof(tok));
    snprintf(cf, sizeof(cf), "%s/e2e.cursor", h.dir);
    struct child c;
    watch_start(&c, "e2e", tok, "dev-e2e", cf, h.lcsd[0].port[0]);
    ck_assert_msg(child_log_has(&c, "state=online", 10000), "not online (log: %s)", c.log);

    uint64_t id = mt_send1(&h, 0, APP, 7, uid, "first");
    ck_assert_uint_ne(id, 0);
    ck_assert_uint_eq(child_item(&c, 5000), id);

    uint64_t ids[3];
    for (int i = 0; i < 3; i++) {
        ids[i] = mt_send1(&h, 0, APP, 7, uid, "more");
        ck_assert_uint_ne(ids[i], 0);
    }
    for (int i = 0; i < 3; i++)
        ck_assert_uint_eq(child_item(&c, 5000), ids[i]);
    char line[8192];
    ck_assert_msg(!child_line(&c, line, sizeof(line), 1500), "unexpected extra line: %s", line);
    ck_assert(child_running(&c));
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);
}
END_TEST

/* Writes token into path atomically (temp file + rename), as a token renewer would. */
static void
write_token_file(const char *path, const char *token)
{
    char tmp[600];
    snprintf(tmp, sizeof(tmp), "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    ck_assert_ptr_nonnull(f);
    ck_assert_int_ge(fprintf(f, "%s\n", token), 0);
    ck_assert_int_eq(fclose(f), 0);
    ck_assert_int_eq(rename(tmp, path), 0);
}

START_TEST(token_file_refresh_keeps_session_across_expiry)
{
    char tok[256], fresh[256], tf[512], ws[128], sdk[128];
    uint64_t uid = 5020;
    snprintf(tf, sizeof(tf), "%s/refresh.token", h.dir);
    mt_token(&h, 0, APP, uid, 2, false, tok, sizeof(tok));
    write_token_file(tf, tok);
    urls(ws, sizeof(ws), h.lcsd[0].port[0], sdk, sizeof(sdk));
    struct child c;
    int64_t t0 = mono_ms();
    child_start(&c, "refresh", "watch", "--ws", ws, "--sdk", sdk, "--token-file", tf, "--device",
                "dev-refresh", NULL);
    ck_assert_msg(child_log_has(&c, "state=online", 5000), "not online (log: %s)", c.log);
    /* The renewer rewrites the file before the refresh is due (4/5 of the 2 s). */
    mt_token(&h, 0, APP, uid, 3600, false, fresh, sizeof(fresh));
    write_token_file(tf, fresh);
    ck_assert_msg(child_log_has(&c, "mbox_client_token_renewed", 3000), "no refresh (log: %s)",
                  c.log);
    /* Past the first token's expiry: the same session is notified (and syncs with the new token).
     */
    int64_t wait = 3000 - (mono_ms() - t0);
    if (wait > 0)
        usleep((useconds_t)wait * 1000);
    uint64_t id = mt_send1(&h, 0, APP, 7, uid, "after expiry");
    ck_assert_uint_eq(child_item(&c, 5000), id);
    ck_assert_int_eq(child_count_log(&c, "state=online"), 1); /* never reconnected */
    ck_assert_int_eq(child_count_log(&c, "code=4401"), 0);
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);
}
END_TEST

START_TEST(token_file_after_expiry_close_reconnects)
{
    char tok[256], fresh[256], tf[512], ws[128], sdk[128];
    uint64_t uid = 5021;
    snprintf(tf, sizeof(tf), "%s/expired.token", h.dir);
    mt_token(&h, 0, APP, uid, 2, false, tok, sizeof(tok));
    write_token_file(tf, tok);
    urls(ws, sizeof(ws), h.lcsd[0].port[0], sdk, sizeof(sdk));
    struct child c;
    child_start(&c, "expired", "watch", "--ws", ws, "--sdk", sdk, "--token-file", tf, "--device",
                "dev-expired", NULL);
    ck_assert_msg(child_log_has(&c, "state=online", 5000), "not online (log: %s)", c.log);
    /* Nobody renews: lcsd closes at the expiry with 4401 and the client keeps retrying. */
    ck_assert_msg(child_log_has(&c, "code=4401", 4000), "no 4401 close (log: %s)", c.log);
    ck_assert(child_running(&c));
    /* A renewed file: the next attempt logs in with it. */
    mt_token(&h, 0, APP, uid, 3600, false, fresh, sizeof(fresh));
    write_token_file(tf, fresh);
    int64_t end = mono_ms() + 15000;
    while (child_count_log(&c, "state=online") < 2 && mono_ms() < end)
        usleep(50 * 1000);
    ck_assert_msg(child_count_log(&c, "state=online") >= 2, "not online again (log: %s)", c.log);
    uint64_t id = mt_send1(&h, 0, APP, 7, uid, "after renewal");
    ck_assert_uint_eq(child_item(&c, 5000), id);
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);
}
END_TEST

START_TEST(cursor_file_survives_restart)
{
    char tok[256], cf[512], line[8192];
    uint64_t uid = 5002;
    mt_token(&h, 0, APP, uid, 3600, false, tok, sizeof(tok));
    snprintf(cf, sizeof(cf), "%s/restart.cursor", h.dir);
    uint64_t old = mt_send1(&h, 0, APP, 7, uid, "before the first start");

    struct child c;
    watch_start(&c, "restart1", tok, "dev-r", cf, h.lcsd[0].port[0]);
    ck_assert_uint_eq(child_item(&c, 10000), old); /* the login sync */
    uint64_t a = mt_send1(&h, 0, APP, 7, uid, "while up");
    ck_assert_uint_eq(child_item(&c, 5000), a);
    ck_assert_int_eq(child_stop(&c, SIGINT), 0);

    /* Two messages while the client is down. */
    uint64_t d1 = mt_send1(&h, 0, APP, 7, uid, "down 1");
    uint64_t d2 = mt_send1(&h, 0, APP, 7, uid, "down 2");
    ck_assert_uint_gt(d2, d1);

    watch_start(&c, "restart2", tok, "dev-r", cf, h.lcsd[0].port[0]);
    ck_assert_uint_eq(child_item(&c, 10000), d1);
    ck_assert_uint_eq(child_item(&c, 5000), d2);
    ck_assert_msg(!child_line(&c, line, sizeof(line), 1500), "re-delivered: %s", line);
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);

    /* One-shot sync from the same cursor file: nothing new. */
    char sdk[128], ws[128];
    urls(ws, sizeof(ws), 1, sdk, sizeof(sdk));
    child_start(&c, "oneshot", "sync", "--sdk", sdk, "--token", tok, "--cursor-file", cf, NULL);
    ck_assert(!child_line(&c, line, sizeof(line), 5000));
    ck_assert_int_eq(child_stop(&c, 0), 0);
    /* Without the cursor file: all five, in order. */
    child_start(&c, "oneshot_all", "sync", "--sdk", sdk, "--token", tok, "--limit", "2", NULL);
    uint64_t all[] = {old, a, d1, d2};
    for (size_t i = 0; i < 4; i++)
        ck_assert_uint_eq(child_item(&c, 5000), all[i]);
    ck_assert(!child_line(&c, line, sizeof(line), 5000));
    ck_assert_int_eq(child_stop(&c, 0), 0);
}
END_TEST

START_TEST(retries_with_growing_backoff_while_lcsd_is_down)
{
    char tok[256];
    mt_token(&h, 0, APP, 5003, 3600, false, tok, sizeof(tok));
    int port = harness_free_port(); /* nothing listens there */
    struct child c;
    watch_start(&c, "backoff", tok, "dev-b", NULL, port);
    usleep(3000 * 1000);
    ck_assert_msg(child_running(&c), "the client exited (log: %s)", c.log);
    FILE *f = fopen(c.log, "r");
    ck_assert_ptr_nonnull(f);
    char line[2048];
    unsigned prev_ceiling = 0, n = 0;
    while (fgets(line, sizeof(line), f)) {
        if (!strstr(line, "event=mbox_client_retry"))
            continue;
        unsigned delay = 0, ceiling = 0;
        char *d = strstr(line, "delay_ms="), *cl = strstr(line, "ceiling_ms=");
        ck_assert(d && cl);
        ck_assert_int_eq(sscanf(d, "delay_ms=%u", &delay), 1);
        ck_assert_int_eq(sscanf(cl, "ceiling_ms=%u", &ceiling), 1);
        ck_assert_uint_le(delay, ceiling);
        ck_assert_uint_ge(delay, 50);
        if (n == 0)
            ck_assert_uint_eq(ceiling, 200);
        else
            ck_assert_uint_eq(ceiling, prev_ceiling * 2);
        prev_ceiling = ceiling;
        n++;
    }
    fclose(f);
    /* 3 s of 200, 400, 800, 1600 ms ceilings: a few attempts, never a tight loop. */
    ck_assert_msg(n >= 3 && n <= 12, "%u retries (log: %s)", n, c.log);
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);
}
END_TEST

START_TEST(second_login_kicks_the_first)
{
    char tok[256];
    uint64_t uid = 5004;
    mt_token(&h, 0, APP, uid, 3600, false, tok, sizeof(tok));
    struct child a, b;
    watch_start(&a, "kick_a", tok, "same-device", NULL, h.lcsd[0].port[0]);
    ck_assert(child_log_has(&a, "state=online", 10000));
    watch_start(&b, "kick_b", tok, "same-device", NULL, h.lcsd[0].port[0]);
    ck_assert(child_log_has(&b, "state=online", 10000));
    ck_assert_msg(child_log_has(&a, "event=mbox_client_kicked", 5000), "no kick (log: %s)", a.log);
    ck_assert_int_eq(child_stop(&a, 0), 3); /* stopped by itself, did not reconnect */
    ck_assert_int_eq(child_count_log(&a, "state=connecting"), 1);
    uint64_t id = mt_send1(&h, 0, APP, 7, uid, "to b");
    ck_assert_uint_eq(child_item(&b, 5000), id);
    ck_assert_int_eq(child_stop(&b, SIGTERM), 0);
}
END_TEST

/* ---- against a fake lcsd ----------------------------------------------- */

enum fake_mode {
    FAKE_SILENT,  /* login_ack with heartbeat_s = 1, then never a byte */
    FAKE_GARBAGE, /* login_ack, then a masked (client-style) frame */
    FAKE_BAD_KEY, /* 101 with a wrong Sec-WebSocket-Accept */
    FAKE_NOTIFY,  /* login_ack, answers pings, then a burst of notifies */
};

struct fake {
    int lfd, port;
    enum fake_mode mode;
    int accepted; /* connections taken (read after the thread ended) */
    int pings;
    int want; /* stop after this many connections */
    pthread_t thread;
};

static bool
read_until(int fd, char *buf, size_t cap, size_t *len, const char *needle)
{
    while (!memmem(buf, *len, needle, strlen(needle))) {
        struct pollfd p = {.fd = fd, .events = POLLIN};
        if (*len == cap || poll(&p, 1, 5000) <= 0)
            return false;
        ssize_t r = read(fd, buf + *len, cap - *len);
        if (r <= 0)
            return false;
        *len += (size_t)r;
    }
    return true;
}

static void
send_text(int fd, const char *s)
{
    uint8_t fr[1024];
    size_t n = ws_frame_build(fr, sizeof(fr), WS_OP_TEXT, true, (const uint8_t *)s, strlen(s));
    if (n > 0 && write(fd, fr, n) < 0)
        return;
}

/* Serves one client connection in the fake's mode. */
static void
fake_serve(struct fake *fk, int fd)
{
    char buf[8192];
    size_t len = 0;
    if (!read_until(fd, buf, sizeof(buf), &len, "\r\n\r\n"))
        return;
    struct ws_handshake hs;
    if (ws_handshake_parse(buf, len, &hs) != WS_HS_OK)
        return;
    if (fk->mode == FAKE_BAD_KEY)
        hs.key[0] = hs.key[0] == 'A' ? 'B' : 'A';
    char resp[WS_HS_RESPONSE_MAX];
    size_t rn = ws_handshake_response(&hs, resp, sizeof(resp));
    if (rn == 0 || write(fd, resp, rn) != (ssize_t)rn)
        return;
    if (fk->mode == FAKE_BAD_KEY) {
        usleep(2000 * 1000);
        return;
    }
    /* The login frame: read one whole frame, check it is a login. */
    struct ws_parser p;
    ws_parser_init(&p, WS_ROLE_SERVER);
    uint8_t in[65536];
    size_t ilen = 0;
    struct ws_frame f;
    for (;;) {
        enum ws_result r = ws_parse_frame(&p, in, ilen, 60000, &f);
        if (r == WS_FRAME)
            break;
        if (r != WS_NEED_MORE)
            return;
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 5000) <= 0)
            return;
        ssize_t n = read(fd, in + ilen, sizeof(in) - ilen);
        if (n <= 0)
            return;
        ilen += (size_t)n;
    }
    if (f.opcode != WS_OP_TEXT || !memmem(f.payload, f.payload_len, "\"login\"", 7))
        return;
    memmove(in, in + f.consumed, ilen - f.consumed);
    ilen -= f.consumed;
    send_text(fd, "{\"type\":\"login_ack\",\"ok\":true,\"heartbeat_s\":1}");
    if (fk->mode == FAKE_GARBAGE) {
        uint8_t fr[64];
        const uint8_t mask[4] = {1, 2, 3, 4};
        size_t n =
            ws_frame_build_masked(fr, sizeof(fr), WS_OP_TEXT, true, (const uint8_t *)"{}", 2, mask);
        if (write(fd, fr, n) < 0)
            return;
    }
    if (fk->mode == FAKE_NOTIFY) {
        for (int i = 0; i < 20; i++)
            send_text(fd, "{\"type\":\"notify\",\"app_id\":\"1\",\"msg_id\":\"1\"}");
    }
    /* Then read (and, in NOTIFY mode, answer pings) until the client goes. */
    int64_t end = mono_ms() + 8000;
    while (mono_ms() < end) {
        struct pollfd pf = {.fd = fd, .events = POLLIN};
        if (poll(&pf, 1, 200) < 0)
            return;
        if (pf.revents) {
            ssize_t n = read(fd, in + ilen, sizeof(in) - ilen);
            if (n <= 0)
                return;
            ilen += (size_t)n;
        }
        for (;;) {
            enum ws_result r = ws_parse_frame(&p, in, ilen, 60000, &f);
            if (r != WS_FRAME)
                break;
            if (f.opcode == WS_OP_TEXT && memmem(f.payload, f.payload_len, "\"ping\"", 6)) {
                fk->pings++;
                if (fk->mode == FAKE_NOTIFY)
                    send_text(fd, "{\"type\":\"pong\"}");
            }
            if (f.opcode == WS_OP_CLOSE)
                return;
            memmove(in, in + f.consumed, ilen - f.consumed);
            ilen -= f.consumed;
        }
    }
}

static void *
fake_main(void *arg)
{
    struct fake *fk = arg;
    while (fk->accepted < fk->want) {
        struct pollfd p = {.fd = fk->lfd, .events = POLLIN};
        if (poll(&p, 1, 15000) <= 0)
            break;
        int fd = accept(fk->lfd, NULL, NULL);
        if (fd < 0)
            break;
        fk->accepted++;
        fake_serve(fk, fd);
        close(fd);
    }
    return NULL;
}

static void
fake_start(struct fake *fk, enum fake_mode mode, int want)
{
    memset(fk, 0, sizeof(*fk));
    fk->mode = mode;
    fk->want = want;
    fk->lfd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(fk->lfd, 0);
    int one = 1;
    setsockopt(fk->lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    ck_assert_int_eq(bind(fk->lfd, (struct sockaddr *)&sa, sizeof(sa)), 0);
    socklen_t sl = sizeof(sa);
    ck_assert_int_eq(getsockname(fk->lfd, (struct sockaddr *)&sa, &sl), 0);
    fk->port = ntohs(sa.sin_port);
    ck_assert_int_eq(listen(fk->lfd, 8), 0);
    ck_assert_int_eq(pthread_create(&fk->thread, NULL, fake_main, fk), 0);
}

static void
fake_join(struct fake *fk)
{
    pthread_join(fk->thread, NULL);
    close(fk->lfd);
}

START_TEST(silent_server_is_detected_and_left)
{
    char tok[256];
    mt_token(&h, 0, APP, 5005, 3600, false, tok, sizeof(tok));
    struct fake fk;
    fake_start(&fk, FAKE_SILENT, 2);
    struct child c;
    watch_start(&c, "silent", tok, "dev-s", NULL, fk.port);
    ck_assert(child_log_has(&c, "state=online", 5000));
    /* heartbeat_s = 1: pings every second, dead after 3 silent seconds. */
    ck_assert_msg(child_log_has(&c, "reason=heartbeat_timeout", 6000), "log: %s", c.log);
    fake_join(&fk);
    ck_assert_int_eq(fk.accepted, 2); /* it reconnected */
    ck_assert_int_ge(fk.pings, 2);
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);
}
END_TEST

START_TEST(malformed_frames_and_bad_handshakes_reconnect)
{
    char tok[256];
    mt_token(&h, 0, APP, 5006, 3600, false, tok, sizeof(tok));
    struct fake fk;
    fake_start(&fk, FAKE_GARBAGE, 2);
    struct child c;
    watch_start(&c, "garbage", tok, "dev-g", NULL, fk.port);
    ck_assert_msg(child_log_has(&c, "reason=malformed_frame", 5000), "log: %s", c.log);
    fake_join(&fk);
    ck_assert_int_eq(fk.accepted, 2);
    ck_assert(child_running(&c));
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);

    fake_start(&fk, FAKE_BAD_KEY, 1);
    watch_start(&c, "badkey", tok, "dev-g", NULL, fk.port);
    ck_assert_msg(child_log_has(&c, "reason=bad_accept_key", 5000), "log: %s", c.log);
    ck_assert_int_eq(child_count_log(&c, "state=login"), 0);
    fake_join(&fk);
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);
}
END_TEST

START_TEST(notify_burst_is_coalesced)
{
    char tok[256], line[8192];
    uint64_t uid = 5007;
    mt_token(&h, 0, APP, uid, 3600, false, tok, sizeof(tok));
    uint64_t id = mt_send1(&h, 0, APP, 7, uid, "already there");
    struct fake fk;
    fake_start(&fk, FAKE_NOTIFY, 1);
    struct child c;
    watch_start(&c, "burst", tok, "dev-n", NULL, fk.port);
    ck_assert_uint_eq(child_item(&c, 5000), id);
    ck_assert(!child_line(&c, line, sizeof(line), 1500));
    /* Login sync + 20 notifies: far fewer than 21 sync requests. */
    int pages = child_count_log(&c, "event=mbox_client_sync_page");
    ck_assert_msg(pages >= 1 && pages <= 4, "%d sync pages (log: %s)", pages, c.log);
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);
    fake_join(&fk);
    ck_assert_int_ge(fk.pings, 1);
}
END_TEST

/* Writes bytes to path (replacing it). */
static void
write_file(const char *path, const char *bytes)
{
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs(bytes, f);
    fclose(f);
}

START_TEST(reset_and_torn_cursor_resync_from_the_start)
{
    char tok[256], cf[512], sdk[128], ws[128], line[8192];
    uint64_t uid = 5008;
    mt_token(&h, 0, APP, uid, 3600, false, tok, sizeof(tok));
    uint64_t a = mt_send1(&h, 0, APP, 7, uid, "one");
    uint64_t b = mt_send1(&h, 0, APP, 7, uid, "two");
    urls(ws, sizeof(ws), 1, sdk, sizeof(sdk));
    snprintf(cf, sizeof(cf), "%s/reset.cursor", h.dir);

    /* A cursor of another epoch: the server answers reset, the client starts over. */
    struct cursor cur = {.epoch = 77, .p = b, .g = 0};
    char enc[CURSOR_STR_LEN], text[CURSOR_STR_LEN + 2];
    cursor_encode(&cur, enc);
    snprintf(text, sizeof(text), "%s\n", enc);
    write_file(cf, text);
    struct child c;
    child_start(&c, "reset", "sync", "--sdk", sdk, "--token", tok, "--cursor-file", cf, NULL);
    ck_assert_uint_eq(child_item(&c, 5000), a);
    ck_assert_uint_eq(child_item(&c, 5000), b);
    ck_assert(!child_line(&c, line, sizeof(line), 5000));
    ck_assert_int_eq(child_stop(&c, 0), 0);
    ck_assert_int_eq(child_count_log(&c, "event=mbox_client_sync_reset"), 1);

    /* The saved cursor is now current: nothing more. */
    child_start(&c, "reset2", "sync", "--sdk", sdk, "--token", tok, "--cursor-file", cf, NULL);
    ck_assert(!child_line(&c, line, sizeof(line), 5000));
    ck_assert_int_eq(child_stop(&c, 0), 0);

    /* A torn file (no newline): full resync rather than a guess. */
    write_file(cf, "AQAAAA");
    child_start(&c, "torn", "sync", "--sdk", sdk, "--token", tok, "--cursor-file", cf, NULL);
    ck_assert_uint_eq(child_item(&c, 5000), a);
    ck_assert_uint_eq(child_item(&c, 5000), b);
    ck_assert(!child_line(&c, line, sizeof(line), 5000));
    ck_assert_int_eq(child_stop(&c, 0), 0);
    ck_assert_int_eq(child_count_log(&c, "event=mbox_client_cursor_invalid"), 1);

    /* A bad token: sync fails with status 2 and says why. */
    child_start(&c, "badtoken", "sync", "--sdk", sdk, "--token", "nope", NULL);
    ck_assert(!child_line(&c, line, sizeof(line), 5000));
    ck_assert_int_eq(child_stop(&c, 0), 2);
    ck_assert_int_eq(child_count_log(&c, "status 401"), 1);
}
END_TEST

START_TEST(sync_failures_are_retried_with_backoff)
{
    char tok[256];
    mt_token(&h, 0, APP, 5009, 3600, false, tok, sizeof(tok));
    struct fake fk;
    fake_start(&fk, FAKE_NOTIFY, 1);
    char ws[128], sdk[128];
    snprintf(ws, sizeof(ws), "ws://127.0.0.1:%d/ws", fk.port);
    snprintf(sdk, sizeof(sdk), "http://127.0.0.1:%d", harness_free_port()); /* logicd "down" */
    struct child c;
    child_start(&c, "sdkdown", "watch", "--ws", ws, "--sdk", sdk, "--token", tok, NULL);
    usleep(2500 * 1000);
    ck_assert(child_running(&c));
    int n = child_count_log(&c, "event=mbox_client_sync_failed");
    /* 20 notifies arrived, yet retries follow the backoff: 200, 400, 800 ms... */
    ck_assert_msg(n >= 2 && n <= 10, "%d sync failures (log: %s)", n, c.log);
    ck_assert_int_eq(child_stop(&c, SIGTERM), 0);
    fake_join(&fk);
}
END_TEST

static Suite *
client_suite(void)
{
    Suite *s = suite_create("client");
    TCase *tc = tcase_create("watch");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, send_notify_pull_end_to_end);
    tcase_add_test(tc, cursor_file_survives_restart);
    tcase_add_test(tc, retries_with_growing_backoff_while_lcsd_is_down);
    tcase_add_test(tc, second_login_kicks_the_first);
    tcase_add_test(tc, silent_server_is_detected_and_left);
    tcase_add_test(tc, malformed_frames_and_bad_handshakes_reconnect);
    tcase_add_test(tc, notify_burst_is_coalesced);
    tcase_add_test(tc, reset_and_torn_cursor_resync_from_the_start);
    tcase_add_test(tc, sync_failures_are_retried_with_backoff);
    tcase_add_test(tc, token_file_refresh_keeps_session_across_expiry);
    tcase_add_test(tc, token_file_after_expiry_close_reconnects);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(client_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
