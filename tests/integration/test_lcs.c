/*
 * Integration: lcsd, the long-connection notifier, against real Redis,
 * PostgreSQL and logicd (issue "Long-connection notifier").
 *
 * lcsd instances (all on the harness's Redis):
 *   0  default config: most cases, paced notify
 *   1  login_timeout_ms = 300, heartbeat_s = 1 (timeouts; second node for kicks)
 *   2  max_output_bytes = 4096, so_sndbuf = 4096 (slow reader)
 *   3  fd_reserve = 1 (EMFILE back-off case), stopped by the SIGTERM case
 *   4  max_connections = 6, fd_reserve = 40 (connection limit case)
 */
#include <arpa/inet.h>
#include <check.h>
#include <dirent.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "harness.h"
#include "httpc.h"
#include "mbox.pb-c.h"
#include "mboxtest.h"
#include "token.h"
#include "wsc.h"

static struct harness h;
#define APP 1

static void
setup(void)
{
    if (!harness_start(&h, HARNESS_LOGICD | HARNESS_LCSD) ||
        harness_add_lcsd(&h, "login_timeout_ms = 300\nheartbeat_s = 1") != 1 ||
        harness_add_lcsd(&h, "max_output_bytes = 4096\nso_sndbuf = 4096") != 2 ||
        harness_add_lcsd(&h, "fd_reserve = 1") != 3 ||
        harness_add_lcsd(&h, "max_connections = 6\nfd_reserve = 40") != 4) {
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

static int
ws_port(int i)
{
    return h.lcsd[i].port[0];
}

static int
admin_port(int i)
{
    return h.lcsd[i].port[1];
}

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Mints a user token expiring in ttl_ms with the harness's key; returns its expiry (unix µs). */
static int64_t
token_ttl(uint64_t app, uint64_t uid, int64_t ttl_ms, bool guest, char *out, size_t outlen)
{
    struct token_keys keys = {.current_id = "k1", .current_key = h.token_key};
    struct token_claims cl = {.app_id = app, .uid = uid, .guest = guest};
    cl.expires_at_us = now_us() + ttl_ms * 1000;
    ck_assert(token_mint(&keys, &cl, out, outlen));
    return cl.expires_at_us;
}

/* Mints a user token with the harness's key (same as logicd's /v1/tokens). */
static void
local_token(uint64_t app, uint64_t uid, char *out, size_t outlen)
{
    (void)token_ttl(app, uid, 3600 * 1000, false, out, outlen);
}

/* Runs redis-cli against the harness's Redis; returns its stdout (caller frees). */
static char *redis_cli(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char *
redis_cli(const char *fmt, ...)
{
    char args[1024], cmd[1200];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "redis-cli -p %d %s 2>/dev/null", h.redis_port, args);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    size_t cap = 4096, len = 0;
    char *out = malloc(cap);
    size_t n;
    while ((n = fread(out + len, 1, cap - len - 1, p)) > 0) {
        len += n;
        if (cap - len < 2) {
            cap *= 2;
            out = realloc(out, cap);
        }
    }
    out[len] = '\0';
    pclose(p);
    return out;
}

/* Opens a connection to lcsd i and logs in over JSON; asserts the ack. */
static struct wsc *
login(int i, uint64_t app, uint64_t uid, const char *device)
{
    char tok[TOKEN_MAX_LEN];
    local_token(app, uid, tok, sizeof(tok));
    struct wsc *c = wsc_open(ws_port(i));
    json_t *ack = wsc_login_json(c, tok, device);
    ck_assert_ptr_nonnull(ack);
    ck_assert_str_eq(json_string_value(json_object_get(ack, "type")), "login_ack");
    ck_assert(json_is_true(json_object_get(ack, "ok")));
    json_decref(ack);
    return c;
}

/* Reads until a notify frame; returns its msg_id (0 when none within timeout). */
static uint64_t
read_notify(struct wsc *c, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    while (mono_ms() < end) {
        json_t *j = wsc_read_json(c, (int)(end - mono_ms()), NULL);
        if (j == NULL)
            return 0;
        const char *type = json_string_value(json_object_get(j, "type"));
        uint64_t id = 0;
        if (type != NULL && strcmp(type, "notify") == 0) {
            ck_assert_uint_eq(mt_u64(j, "app_id"), APP);
            id = mt_u64(j, "msg_id");
        }
        json_decref(j);
        if (id != 0)
            return id;
    }
    return 0;
}

/* The server still serves: a fresh client logs in and gets a pong. */
static void
assert_serving(int i)
{
    struct wsc *c = login(i, APP, 999999, "probe");
    ck_assert(wsc_send_text(c, "{\"type\":\"ping\"}"));
    json_t *j = wsc_read_json(c, 3000, NULL);
    ck_assert_ptr_nonnull(j);
    ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "pong");
    json_decref(j);
    wsc_free(c);
}

/* Waits until HGET route:{app:uid} device matches (want NULL = absent). */
static bool
wait_route(uint64_t uid, const char *device, const char *want_prefix, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    do {
        char *v = redis_cli("HGET 'route:{%d:%" PRIu64 "}' '%s'", APP, uid, device);
        v[strcspn(v, "\n")] = '\0';
        bool ok =
            want_prefix == NULL ? v[0] == '\0' : strncmp(v, want_prefix, strlen(want_prefix)) == 0;
        free(v);
        if (ok)
            return true;
        usleep(50 * 1000);
    } while (mono_ms() < end);
    return false;
}

START_TEST(send_notify_pull_end_to_end)
{
    char tok[TOKEN_MAX_LEN], cur[64] = "";
    mt_token(&h, 0, APP, 5001, 3600, false, tok, sizeof(tok));
    struct wsc *c = wsc_open(ws_port(0));
    json_t *ack = wsc_login_json(c, tok, "phone-1");
    ck_assert_ptr_nonnull(ack);
    ck_assert_str_eq(json_string_value(json_object_get(ack, "type")), "login_ack");
    ck_assert(json_is_true(json_object_get(ack, "ok")));
    ck_assert_int_eq(json_integer_value(json_object_get(ack, "heartbeat_s")), 30);
    json_decref(ack);
    ck_assert(wait_route(5001, "phone-1", "lcs0 ", 1000));

    uint64_t id = mt_send1(&h, 0, APP, 7, 5001, "hello over notify");
    ck_assert_uint_gt(id, 0);
    ck_assert_uint_eq(read_notify(c, 5000), id);

    int st;
    json_t *j = mt_sync(&h, 0, tok, cur, 100, &st);
    ck_assert_int_eq(st, 200);
    json_t *items = json_object_get(j, "items");
    ck_assert_int_eq(json_array_size(items), 1);
    ck_assert_uint_eq(mt_u64(json_array_get(items, 0), "msg_id"), id);
    json_decref(j);

    /* Application-level heartbeat. */
    ck_assert(wsc_send_text(c, "{\"type\":\"ping\"}"));
    j = wsc_read_json(c, 3000, NULL);
    ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "pong");
    json_decref(j);
    /* WebSocket-level ping. */
    ck_assert(wsc_send(c, WS_OP_PING, "hb", 2));
    struct wsc_frame f;
    ck_assert_int_eq(wsc_read(c, 3000, &f), 1);
    ck_assert_int_eq(f.opcode, WS_OP_PONG);
    ck_assert_int_eq(f.len, 2);
    ck_assert(memcmp(f.data, "hb", 2) == 0);
    wsc_frame_free(&f);
    ck_assert_double_ge(mt_metric(admin_port(0), "mbox_lcs_notify_delivered_total", ""), 1);
    wsc_free(c);
}
END_TEST

/* Reads one binary frame and unpacks it. */
static Mbox__Frame *
read_pb(struct wsc *c)
{
    struct wsc_frame f;
    for (;;) {
        ck_assert_int_eq(wsc_read(c, 5000, &f), 1);
        if (f.opcode == WS_OP_BINARY)
            break;
        ck_assert_int_ne(f.opcode, WS_OP_CLOSE);
        wsc_frame_free(&f);
    }
    Mbox__Frame *m = mbox__frame__unpack(NULL, f.len, f.data);
    wsc_frame_free(&f);
    ck_assert_ptr_nonnull(m);
    return m;
}

static void
send_pb(struct wsc *c, const Mbox__Frame *m)
{
    uint8_t buf[1024];
    size_t n = mbox__frame__pack(m, buf);
    ck_assert(wsc_send(c, WS_OP_BINARY, buf, n));
}

START_TEST(login_binary_protobuf)
{
    char tok[TOKEN_MAX_LEN];
    mt_token(&h, 0, APP, 5002, 3600, false, tok, sizeof(tok));
    struct wsc *c = wsc_open(ws_port(0));
    Mbox__Frame login = MBOX__FRAME__INIT;
    login.type = "login";
    login.token = tok;
    login.device_id = "tablet-9";
    login.platform = "android";
    login.app_version = "8.0.25";
    login.has_core_level = true;
    login.core_level = 220819;
    send_pb(c, &login);
    Mbox__Frame *ack = read_pb(c);
    ck_assert_str_eq(ack->type, "login_ack");
    ck_assert(ack->has_ok && ack->ok);
    ck_assert_uint_eq(ack->heartbeat_s, 30);
    mbox__frame__free_unpacked(ack, NULL);

    Mbox__Frame ping = MBOX__FRAME__INIT;
    ping.type = "ping";
    send_pb(c, &ping);
    Mbox__Frame *pong = read_pb(c);
    ck_assert_str_eq(pong->type, "pong");
    mbox__frame__free_unpacked(pong, NULL);

    uint64_t id = mt_send1(&h, 0, APP, 7, 5002, "binary notify");
    Mbox__Frame *n = read_pb(c);
    ck_assert_str_eq(n->type, "notify");
    ck_assert_uint_eq(n->app_id, APP);
    ck_assert_uint_eq(n->msg_id, id);
    mbox__frame__free_unpacked(n, NULL);
    wsc_free(c);
}
END_TEST

/* Kick frame, then close. */
static void
expect_kick(struct wsc *c)
{
    int code = 0;
    json_t *j = wsc_read_json(c, 5000, &code);
    ck_assert_msg(j != NULL, "no kick frame (close code %d)", code);
    ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "kick");
    ck_assert_str_eq(json_string_value(json_object_get(j, "reason")), "replaced");
    json_decref(j);
    ck_assert_int_eq(wsc_wait_close(c, 5000), 1008);
}

START_TEST(devices_kick_and_routes)
{
    const uint64_t uid = 5003;
    struct wsc *a = login(0, APP, uid, "dev-a");
    struct wsc *b = login(0, APP, uid, "dev-b");
    struct wsc *cc = login(1, APP, uid, "dev-c"); /* on the other node */
    uint64_t id = mt_send1(&h, 0, APP, 7, uid, "to every device");
    ck_assert_uint_eq(read_notify(a, 5000), id);
    ck_assert_uint_eq(read_notify(b, 5000), id);
    ck_assert_uint_eq(read_notify(cc, 5000), id);

    /* Same device again on the same node: the first is kicked. */
    struct wsc *a2 = login(0, APP, uid, "dev-a");
    expect_kick(a);
    wsc_free(a);
    /* Same device again on another node: kicked through lcs:{lcs1}. */
    struct wsc *c2 = login(0, APP, uid, "dev-c");
    expect_kick(cc);
    wsc_free(cc);
    ck_assert_double_ge(mt_metric(admin_port(1), "mbox_lcs_kicks_total", "remote"), 1);

    char *all = redis_cli("HGETALL 'route:{%d:%" PRIu64 "}'", APP, uid);
    ck_assert_msg(strstr(all, "dev-a\nlcs0 ") && strstr(all, "dev-b\nlcs0 ") &&
                      strstr(all, "dev-c\nlcs0 "),
                  "routes: %s", all);
    free(all);
    char *ttl = redis_cli("TTL 'route:{%d:%" PRIu64 "}'", APP, uid);
    ck_assert_int_gt(atoi(ttl), 500);
    free(ttl);

    /* The kicked connections' closes did not remove the new routes; b's close removes b's. */
    id = mt_send1(&h, 0, APP, 7, uid, "after the kicks");
    ck_assert_uint_eq(read_notify(a2, 5000), id);
    ck_assert_uint_eq(read_notify(c2, 5000), id);
    ck_assert_uint_eq(read_notify(b, 5000), id);
    uint8_t payload[WS_CONTROL_MAX];
    size_t n = ws_close_payload(payload, 1000, "bye");
    ck_assert(wsc_send(b, WS_OP_CLOSE, payload, n));
    ck_assert_int_eq(wsc_wait_close(b, 3000), 1000);
    ck_assert(wsc_wait_eof(b, 3000));
    wsc_free(b);
    ck_assert(wait_route(uid, "dev-b", NULL, 3000));
    ck_assert(wait_route(uid, "dev-a", "lcs0 ", 100));
    wsc_free(a2);
    wsc_free(c2);
    ck_assert(wait_route(uid, "dev-a", NULL, 3000));
}
END_TEST

START_TEST(redis_restart_notifies_resume)
{
    const uint64_t uid = 5004;
    char tok[TOKEN_MAX_LEN], cur[64] = "";
    local_token(APP, uid, tok, sizeof(tok));
    struct wsc *c = login(0, APP, uid, "phone");
    uint64_t id = mt_send1(&h, 0, APP, 7, uid, "before");
    ck_assert_uint_eq(read_notify(c, 5000), id);
    int st;
    json_t *j = mt_sync(&h, 0, tok, cur, 100, &st);
    ck_assert_int_eq(st, 200);
    json_decref(j);

    ck_assert(harness_redis_stop(&h));
    ck_assert(harness_redis_start(&h));
    /* Same connection, no reconnect: lcsd re-subscribes and re-registers the route. */
    ck_assert(wait_route(uid, "phone", "lcs0 ", 10000));
    uint64_t got = 0;
    for (int i = 0; i < 20 && got == 0; i++) {
        id = mt_send1(&h, 0, APP, 7, uid, "after restart");
        if (id != 0)
            got = read_notify(c, 1000);
    }
    ck_assert_uint_ne(got, 0);
    ck_assert(wsc_send_text(c, "{\"type\":\"ping\"}"));
    j = wsc_read_json(c, 3000, NULL);
    ck_assert_ptr_nonnull(j);
    json_decref(j);
    wsc_free(c);

    /* Offline for a while: the next session gets everything by sync. */
    uint64_t offline[3];
    for (int i = 0; i < 3; i++)
        offline[i] = mt_send1(&h, 0, APP, 7, uid, "while offline");
    c = login(0, APP, uid, "phone");
    j = mt_sync(&h, 0, tok, cur, 100, &st);
    ck_assert_int_eq(st, 200);
    json_t *items = json_object_get(j, "items");
    size_t n = json_array_size(items);
    ck_assert_uint_ge(n, 3);
    for (int i = 0; i < 3; i++)
        ck_assert_uint_eq(mt_u64(json_array_get(items, n - 3 + (size_t)i), "msg_id"), offline[i]);
    json_decref(j);
    wsc_free(c);
}
END_TEST

START_TEST(bad_frames_close_with_the_right_code)
{
    /* Unmasked client frame: 1002. */
    struct wsc *c = wsc_open(ws_port(0));
    ck_assert(wsc_send_raw(c, "\x81\x05hello", 7));
    ck_assert_int_eq(wsc_wait_close(c, 3000), 1002);
    ck_assert(wsc_wait_eof(c, 3000));
    wsc_free(c);
    assert_serving(0);

    /* Over max_message_bytes (4096): 1009, refused from the header alone. */
    c = wsc_open(ws_port(0));
    char *big = malloc(5000);
    memset(big, 'x', 5000);
    ck_assert(wsc_send(c, WS_OP_TEXT, big, 5000));
    free(big);
    ck_assert_int_eq(wsc_wait_close(c, 3000), 1009);
    wsc_free(c);

    /* Invalid UTF-8 in a text frame: 1007. */
    c = wsc_open(ws_port(0));
    ck_assert(wsc_send(c, WS_OP_TEXT, "{\"a\":\"\xff\xfe\"}", 10));
    ck_assert_int_eq(wsc_wait_close(c, 3000), 1007);
    wsc_free(c);

    /* A text frame that is not JSON before the login: 1007. */
    c = wsc_open(ws_port(0));
    ck_assert(wsc_send_text(c, "hello there"));
    ck_assert_int_eq(wsc_wait_close(c, 3000), 1007);
    wsc_free(c);
    /* Garbage bytes that are not even frames: 1002. */
    c = wsc_open(ws_port(0));
    ck_assert(wsc_send_raw(c, "\xff\xff\xff\xff\xff\xff", 6));
    ck_assert_int_eq(wsc_wait_close(c, 3000), 1002);
    wsc_free(c);
    /* Something else than a login first: 1008. */
    c = wsc_open(ws_port(0));
    ck_assert(wsc_send_text(c, "{\"type\":\"ping\"}"));
    ck_assert_int_eq(wsc_wait_close(c, 3000), 1008);
    wsc_free(c);
    assert_serving(0);

    /* Forged token: login_ack ok=false, then 1008. */
    c = wsc_open(ws_port(0));
    json_t *ack = wsc_login_json(
        c, "v1.k1.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA.AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        "dev");
    ck_assert_ptr_nonnull(ack);
    ck_assert_str_eq(json_string_value(json_object_get(ack, "type")), "login_ack");
    ck_assert(json_is_false(json_object_get(ack, "ok")));
    ck_assert_ptr_nonnull(json_string_value(json_object_get(ack, "reason")));
    json_decref(ack);
    ck_assert_int_eq(wsc_wait_close(c, 3000), 1008);
    wsc_free(c);

    /* A bad device_id (spaces would break the route lines). */
    char tok[TOKEN_MAX_LEN];
    local_token(APP, 5005, tok, sizeof(tok));
    c = wsc_open(ws_port(0));
    ack = wsc_login_json(c, tok, "has space");
    ck_assert(json_is_false(json_object_get(ack, "ok")));
    json_decref(ack);
    ck_assert_int_eq(wsc_wait_close(c, 3000), 1008);
    wsc_free(c);

    /* Bad handshakes: 400, wrong path 404, wrong version 426. */
    const char *bad = "GET /ws HTTP/1.1\r\nHost: x\r\n\r\n";
    c = wsc_connect_raw(ws_port(0), bad, strlen(bad));
    ck_assert_int_eq(c->http_status, 400);
    ck_assert_ptr_nonnull(strstr(c->http_body, "invalid_argument"));
    wsc_free(c);
    c = wsc_connect_opts(ws_port(0), "/elsewhere", 0);
    ck_assert_int_eq(c->http_status, 404);
    wsc_free(c);
    const char *v12 = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 12\r\n\r\n";
    c = wsc_connect_raw(ws_port(0), v12, strlen(v12));
    ck_assert_int_eq(c->http_status, 426);
    wsc_free(c);
    /* Not HTTP at all. */
    c = wsc_connect_raw(ws_port(0), "\x16\x03\x01\x00", 4);
    ck_assert_int_eq(c->http_status, 400);
    wsc_free(c);
    assert_serving(0);
    ck_assert_double_ge(mt_metric(admin_port(0), "mbox_lcs_closes_total", "protocol_error"), 2);
    ck_assert_double_ge(mt_metric(admin_port(0), "mbox_lcs_closes_total", "bad_handshake"), 3);
}
END_TEST

START_TEST(fragmented_login_with_ping_between)
{
    char tok[TOKEN_MAX_LEN], login[512];
    local_token(APP, 5006, tok, sizeof(tok));
    int n = snprintf(login, sizeof(login),
                     "{\"type\":\"login\",\"token\":\"%s\",\"device_id\":\"frag\"}", tok);
    struct wsc *c = wsc_open(ws_port(0));
    uint8_t buf[1024], mask[4] = {1, 2, 3, 4};
    size_t half = (size_t)n / 2;
    size_t k =
        ws_frame_build_masked(buf, sizeof(buf), WS_OP_TEXT, false, (uint8_t *)login, half, mask);
    ck_assert(wsc_send_raw(c, buf, k));
    k = ws_frame_build_masked(buf, sizeof(buf), WS_OP_PING, true, (const uint8_t *)"mid", 3, mask);
    ck_assert(wsc_send_raw(c, buf, k));
    /* The rest one byte at a time: partial frames are kept across reads. */
    k = ws_frame_build_masked(buf, sizeof(buf), WS_OP_CONT, true, (uint8_t *)login + half,
                              (size_t)n - half, mask);
    for (size_t i = 0; i < k; i++) {
        ck_assert(wsc_send_raw(c, buf + i, 1));
        if (i % 16 == 0)
            usleep(1000);
    }
    struct wsc_frame f;
    ck_assert_int_eq(wsc_read(c, 3000, &f), 1);
    ck_assert_int_eq(f.opcode, WS_OP_PONG);
    wsc_frame_free(&f);
    json_t *ack = wsc_read_json(c, 3000, NULL);
    ck_assert_ptr_nonnull(ack);
    ck_assert(json_is_true(json_object_get(ack, "ok")));
    json_decref(ack);
    wsc_free(c);
}
END_TEST

START_TEST(login_timeout)
{
    struct wsc *c = wsc_open(ws_port(1));
    int64_t t0 = mono_ms();
    ck_assert_int_eq(wsc_wait_close(c, 3000), 1008);
    int64_t el = mono_ms() - t0;
    ck_assert_msg(el >= 200 && el < 1500, "closed after %lld ms", (long long)el);
    wsc_free(c);
    ck_assert_double_ge(mt_metric(admin_port(1), "mbox_lcs_closes_total", "login_timeout"), 1);
    assert_serving(1);
}
END_TEST

START_TEST(heartbeat_timeout)
{
    struct wsc *silent = login(1, APP, 5007, "silent");
    struct wsc *alive = login(1, APP, 5008, "alive");
    int64_t t0 = mono_ms();
    int code = 0;
    while (code == 0 && mono_ms() - t0 < 6000) {
        ck_assert(wsc_send_text(alive, "{\"type\":\"ping\"}"));
        json_t *j = wsc_read_json(alive, 1000, NULL);
        ck_assert_ptr_nonnull(j);
        ck_assert_str_eq(json_string_value(json_object_get(j, "type")), "pong");
        json_decref(j);
        code = wsc_wait_close(silent, 400);
    }
    int64_t el = mono_ms() - t0;
    ck_assert_int_eq(code, 1008);
    ck_assert_msg(el >= 2500 && el < 4500, "silent client closed after %lld ms", (long long)el);
    ck_assert(wsc_send_text(alive, "{\"type\":\"ping\"}"));
    json_t *j = wsc_read_json(alive, 1000, NULL);
    ck_assert_ptr_nonnull(j);
    json_decref(j);
    ck_assert_double_ge(mt_metric(admin_port(1), "mbox_lcs_closes_total", "heartbeat_timeout"), 1);
    wsc_free(silent);
    wsc_free(alive);
}
END_TEST

START_TEST(slow_reader_is_closed)
{
    const uint64_t uid = 5009;
    struct wsc *slow = wsc_connect_opts(ws_port(2), "/ws", 4096);
    ck_assert_int_eq(slow->http_status, 101);
    char tok[TOKEN_MAX_LEN];
    local_token(APP, uid, tok, sizeof(tok));
    json_t *ack = wsc_login_json(slow, tok, "slow");
    ck_assert(json_is_true(json_object_get(ack, "ok")));
    json_decref(ack);
    struct wsc *fine = login(2, APP, uid + 1, "fine");

    char *v = redis_cli("HGET 'route:{%d:%" PRIu64 "}' slow", APP, uid);
    char *sp = strchr(v, ' ');
    ck_assert_ptr_nonnull(sp);
    uint64_t conn_id = strtoull(sp + 1, NULL, 10);
    free(v);
    /* 20000 notify lines in one message, never read by the client. */
    char path[512];
    snprintf(path, sizeof(path), "%s/slow-lines.txt", h.dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    for (int i = 0; i < 20000; i++)
        fprintf(f, "n %d %" PRIu64 " %d slow %" PRIu64 "\n", APP, uid, 1000000 + i, conn_id);
    fclose(f);
    char args[700];
    snprintf(args, sizeof(args), "-x PUBLISH 'lcs:{lcs2}' < '%s'", path);
    free(redis_cli("%s", args));

    int64_t end = mono_ms() + 5000;
    while (mt_metric(admin_port(2), "mbox_lcs_closes_total", "slow_reader") < 1 && mono_ms() < end)
        usleep(50 * 1000);
    ck_assert_double_ge(mt_metric(admin_port(2), "mbox_lcs_closes_total", "slow_reader"), 1);
    /* The other client is served, and the queued output is gone once the slow one is freed. */
    uint64_t id = mt_send1(&h, 0, APP, 7, uid + 1, "still fine");
    ck_assert_uint_eq(read_notify(fine, 5000), id);
    wsc_free(slow);
    end = mono_ms() + 5000;
    while (mt_metric(admin_port(2), "mbox_lcs_conn_buffer_bytes", "") > 4096 && mono_ms() < end)
        usleep(50 * 1000);
    ck_assert_double_le(mt_metric(admin_port(2), "mbox_lcs_conn_buffer_bytes", ""), 4096);
    wsc_free(fine);
}
END_TEST

/* Open descriptors of a process. */
static int
count_fds(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%d/fd", (int)pid);
    DIR *d = opendir(path);
    ck_assert_ptr_nonnull(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        n += e->d_name[0] != '.';
    closedir(d);
    return n;
}

START_TEST(accept_backs_off_on_emfile)
{
    pid_t pid = h.lcsd[3].pid;
    struct rlimit old, tight;
    ck_assert_int_eq(prlimit(pid, RLIMIT_NOFILE, NULL, &old), 0);
    tight = old;
    tight.rlim_cur = (rlim_t)count_fds(pid) + 2;
    ck_assert_int_eq(prlimit(pid, RLIMIT_NOFILE, &tight, NULL), 0);
    enum { N = 8 };
    int fds[N];
    const char *req = "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                      "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                      "Sec-WebSocket-Version: 13\r\n\r\n";
    for (int i = 0; i < N; i++) {
        fds[i] = socket(AF_INET, SOCK_STREAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_port = htons((uint16_t)ws_port(3)),
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        /* The kernel completes the connection from the backlog even when lcsd cannot accept. */
        ck_assert_int_eq(connect(fds[i], (struct sockaddr *)&a, sizeof(a)), 0);
        ck_assert_int_eq(send(fds[i], req, strlen(req), 0), (ssize_t)strlen(req));
    }
    usleep(300 * 1000);
    ck_assert_int_eq(prlimit(pid, RLIMIT_NOFILE, &old, NULL), 0);
    /* Accepting resumes after the back-off: every client gets its 101. */
    for (int i = 0; i < N; i++) {
        struct pollfd p = {.fd = fds[i], .events = POLLIN};
        ck_assert_int_eq(poll(&p, 1, 3000), 1);
        char buf[256];
        ssize_t n = recv(fds[i], buf, sizeof(buf) - 1, 0);
        ck_assert_int_gt(n, 12);
        ck_assert(memcmp(buf, "HTTP/1.1 101", 12) == 0);
        close(fds[i]);
    }
    ck_assert_double_ge(mt_metric(admin_port(3), "mbox_lcs_accept_backoff_total", ""), 1);
    assert_serving(3);
}
END_TEST

START_TEST(sigterm_closes_with_1001)
{
    struct wsc *a = login(3, APP, 5011, "a");
    struct wsc *b = wsc_open(ws_port(3)); /* not logged in yet */
    ck_assert_int_eq(kill(h.lcsd[3].pid, SIGTERM), 0);
    ck_assert_int_eq(wsc_wait_close(a, 5000), 1001);
    ck_assert_int_eq(wsc_wait_close(b, 5000), 1001);
    ck_assert(wsc_wait_eof(a, 5000));
    wsc_free(a);
    wsc_free(b);
    /* The route of the closed session is gone. */
    ck_assert(wait_route(5011, "a", NULL, 3000));
}
END_TEST

#define PACE_CONNS 2000
#define PACE_RATE  500
#define PACE_APP   77

/* Publishes one line on lcs:broadcast. */
static void
broadcast(const char *line)
{
    free(redis_cli("PUBLISH lcs:broadcast '%s\n'", line));
}

START_TEST(paced_notify_rate)
{
    struct wsc **cs = calloc(PACE_CONNS, sizeof(*cs));
    struct pollfd *pfd = calloc(PACE_CONNS, sizeof(*pfd));
    for (int i = 0; i < PACE_CONNS; i++) {
        char tok[TOKEN_MAX_LEN], dev[32];
        local_token(PACE_APP, (uint64_t)(100000 + i), tok, sizeof(tok));
        snprintf(dev, sizeof(dev), "d%d", i);
        cs[i] = wsc_open(ws_port(0));
        json_t *ack = wsc_login_json(cs[i], tok, dev);
        ck_assert(json_is_true(json_object_get(ack, "ok")));
        json_decref(ack);
        pfd[i].fd = cs[i]->fd;
        pfd[i].events = POLLIN;
    }
    double before = mt_metric(admin_port(0), "mbox_lcs_paced_sent_total", "");
    broadcast("p 77 9001 1700000000000001 500");
    int64_t *at = calloc(PACE_CONNS * 2, sizeof(int64_t));
    int got = 0;
    int64_t end = mono_ms() + 8000;
    while (mono_ms() < end && got < PACE_CONNS) {
        if (poll(pfd, PACE_CONNS, 100) <= 0)
            continue;
        for (int i = 0; i < PACE_CONNS; i++) {
            if (!(pfd[i].revents & POLLIN))
                continue;
            json_t *j;
            while ((j = wsc_read_json(cs[i], 20, NULL)) != NULL) {
                const char *type = json_string_value(json_object_get(j, "type"));
                if (type != NULL && strcmp(type, "notify") == 0) {
                    ck_assert_uint_eq(mt_u64(j, "app_id"), PACE_APP);
                    ck_assert_uint_eq(mt_u64(j, "msg_id"), 1700000000000001ULL);
                    at[got++] = mono_ms();
                }
                json_decref(j);
                if (cs[i]->len == 0)
                    break;
            }
        }
    }
    ck_assert_int_eq(got, PACE_CONNS); /* each connection exactly once */
    int64_t span = at[got - 1] - at[0];
    ck_assert_msg(span > 3500 && span < 4600, "paced over %lld ms", (long long)span);
    int buckets[16] = {0};
    for (int i = 0; i < got; i++)
        buckets[(at[i] - at[0]) / 1000]++;
    int last = (int)((at[got - 1] - at[0]) / 1000);
    ck_assert_int_ge(last, 3);
    for (int b = 1; b < last; b++)
        ck_assert_msg(buckets[b] >= PACE_RATE * 95 / 100 && buckets[b] <= PACE_RATE * 105 / 100,
                      "second %d: %d notifies (rate %d)", b, buckets[b], PACE_RATE);
    ck_assert_double_ge(mt_metric(admin_port(0), "mbox_lcs_paced_sent_total", "") - before,
                        PACE_CONNS);

    /* A stopped notice stops pacing. */
    broadcast("p 77 9002 1700000000000002 500");
    usleep(1000 * 1000);
    broadcast("x 77 9002");
    usleep(200 * 1000);
    double mid = mt_metric(admin_port(0), "mbox_lcs_paced_sent_total", "");
    usleep(600 * 1000);
    double after = mt_metric(admin_port(0), "mbox_lcs_paced_sent_total", "");
    ck_assert_double_eq(mid, after);
    ck_assert_double_lt(after - before, 2 * PACE_CONNS);
    ck_assert_double_gt(after - before, PACE_CONNS + 300);

    for (int i = 0; i < PACE_CONNS; i++)
        wsc_free(cs[i]);
    free(cs);
    free(pfd);
    free(at);
}
END_TEST

START_TEST(healthz_and_memory_gauges)
{
    /* The suite's earlier floods (thousands of logins under ASan) can time
     * out Redis commands, and three in a row re-open the connection: 503
     * while it reconnects is the right answer, so allow it a few seconds. */
    struct httpc_resp r;
    int st = 0;
    for (int i = 0; i < 50; i++) {
        st = httpc_request("GET", admin_port(0), "/healthz", NULL, NULL, 0, &r);
        if (st == 200)
            break;
        httpc_resp_free(&r);
        usleep(100 * 1000);
    }
    ck_assert_int_eq(st, 200);
    json_t *j = json_loads(r.body, 0, NULL);
    httpc_resp_free(&r);
    ck_assert(json_is_true(json_object_get(json_object_get(j, "redis"), "up")));
    ck_assert_ptr_nonnull(json_object_get(j, "connections"));
    json_decref(j);
    double per_conn = mt_metric(admin_port(0), "mbox_lcs_conn_struct_bytes", "");
    ck_assert_double_gt(per_conn, 0);
    ck_assert_double_le(per_conn, 512);
}
END_TEST

/* ---- per-user session cap, connection limit ------------------------------------ */

/* Reads until a frame of `type` (JSON); asserts it arrives and returns it (caller decrefs). */
static json_t *
expect_type(struct wsc *c, const char *type, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    while (mono_ms() < end) {
        int code = 0;
        json_t *j = wsc_read_json(c, (int)(end - mono_ms()), &code);
        ck_assert_msg(j != NULL, "no %s frame (close code %d)", type, code);
        const char *t = json_string_value(json_object_get(j, "type"));
        if (t != NULL && strcmp(t, type) == 0)
            return j;
        json_decref(j);
    }
    ck_abort_msg("no %s frame in %d ms", type, timeout_ms);
    return NULL;
}

/* The connection answers a ping frame with a pong. */
static void
assert_alive(struct wsc *c)
{
    ck_assert(wsc_send_text(c, "{\"type\":\"ping\"}"));
    json_decref(expect_type(c, "pong", 3000));
}

START_TEST(per_user_session_cap_kicks_oldest)
{
    enum { CAP = 32, UID = 6001 };
    struct wsc *cs[CAP + 2];
    char dev[16];
    for (int i = 0; i < CAP; i++) {
        snprintf(dev, sizeof(dev), "d%d", i);
        cs[i] = login(0, APP, UID, dev);
    }
    double kicks = mt_metric(admin_port(0), "mbox_lcs_kicks_total", "session_cap");
    /* The 33rd device gets in; the oldest session is kicked with 4429. */
    cs[CAP] = login(0, APP, UID, "d32");
    json_t *k = expect_type(cs[0], "kick", 3000);
    ck_assert_str_eq(json_string_value(json_object_get(k, "reason")), "too many sessions");
    json_decref(k);
    ck_assert_int_eq(wsc_wait_close(cs[0], 3000), 4429);
    ck_assert(wait_route(UID, "d0", NULL, 3000));
    ck_assert(wait_route(UID, "d32", "lcs0 ", 3000));
    assert_alive(cs[1]);
    assert_alive(cs[CAP]);
    /* And again: the next oldest goes. */
    cs[CAP + 1] = login(0, APP, UID, "d33");
    ck_assert_int_eq(wsc_wait_close(cs[1], 3000), 4429);
    assert_alive(cs[2]);
    ck_assert_double_eq(mt_metric(admin_port(0), "mbox_lcs_kicks_total", "session_cap") - kicks, 2);
    /* Other users are not affected by this user's cap. */
    assert_serving(0);
    for (int i = 0; i < CAP + 2; i++)
        wsc_free(cs[i]);
}
END_TEST

/* GET /healthz on lcsd i's admin listener; asserts 200 within 1 s, returns "connections". */
static int64_t
healthz_fast(int i)
{
    struct httpc_resp r;
    int64_t t0 = mono_ms();
    int st = httpc_request("GET", admin_port(i), "/healthz", NULL, NULL, 0, &r);
    int64_t took = mono_ms() - t0;
    ck_assert_int_eq(st, 200);
    ck_assert_msg(took < 1000, "/healthz took %lld ms", (long long)took);
    json_t *j = json_loads(r.body, 0, NULL);
    httpc_resp_free(&r);
    ck_assert_ptr_nonnull(j);
    int64_t n = json_integer_value(json_object_get(j, "connections"));
    json_decref(j);
    return n;
}

/* True when a new WebSocket client of lcsd i is refused (closed without a 101). */
static bool
ws_refused(int i)
{
    struct wsc *c = wsc_connect_opts(ws_port(i), "/ws", 0);
    bool refused = c == NULL || c->http_status != 101;
    wsc_free(c);
    return refused;
}

/* Lines of a daemon's log that contain needle. */
static int
log_count(const char *path, const char *needle)
{
    FILE *f = fopen(path, "r");
    ck_assert_ptr_nonnull(f);
    char line[4096];
    int n = 0;
    while (fgets(line, sizeof(line), f) != NULL)
        n += strstr(line, needle) != NULL;
    fclose(f);
    return n;
}

static int count_fds(pid_t pid);

START_TEST(connection_limit_refuses_ws_keeps_admin)
{
    /* lcsd 4: max_connections = 6. */
    struct wsc *cs[6];
    for (int i = 0; i < 6; i++)
        cs[i] = wsc_open(ws_port(4));
    int logged = log_count(h.lcsd[4].log, "connection_limit_reached");
    for (int i = 0; i < 50; i++)
        ck_assert_msg(ws_refused(4), "client %d over max_connections got in", i);
    ck_assert_int_eq(healthz_fast(4), 6);
    /* Logged once for the whole flood, not per refused client. */
    ck_assert_int_eq(log_count(h.lcsd[4].log, "connection_limit_reached") - logged, 1);
    ck_assert_double_ge(mt_metric(admin_port(4), "mbox_lcs_closes_total", "max_connections"), 50);
    for (int i = 0; i < 6; i++)
        wsc_free(cs[i]);
    int64_t end = mono_ms() + 5000;
    while (healthz_fast(4) != 0 && mono_ms() < end)
        usleep(50 * 1000);
    ck_assert_int_eq(healthz_fast(4), 0);

    /* Derived from RLIMIT_NOFILE: limit 43 - fd_reserve 40 = 3 connections. */
    pid_t pid = h.lcsd[4].pid;
    ck_assert_int_lt(count_fds(pid), 43 - 3 - 8); /* room for 3 clients and the admin */
    struct rlimit old, tight;
    ck_assert_int_eq(prlimit(pid, RLIMIT_NOFILE, NULL, &old), 0);
    tight = old;
    tight.rlim_cur = 43;
    ck_assert_int_eq(prlimit(pid, RLIMIT_NOFILE, &tight, NULL), 0);
    struct wsc *ds[3];
    for (int i = 0; i < 3; i++)
        ds[i] = wsc_open(ws_port(4));
    for (int i = 0; i < 20; i++)
        ck_assert_msg(ws_refused(4), "client %d over the descriptor limit got in", i);
    /* The reserve keeps the admin listener answering, several times in a row. */
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(healthz_fast(4), 3);
    ck_assert_int_eq(prlimit(pid, RLIMIT_NOFILE, &old, NULL), 0);
    for (int i = 0; i < 3; i++)
        wsc_free(ds[i]);
}
END_TEST

/* ---- token expiry and refresh ------------------------------------------------ */

/* Sends {"type":"refresh","token":tok}. */
static void
send_refresh(struct wsc *c, const char *tok)
{
    char buf[512];
    snprintf(buf, sizeof(buf), "{\"type\":\"refresh\",\"token\":\"%s\"}", tok);
    ck_assert(wsc_send_text(c, buf));
}

START_TEST(refresh_right_after_login_waits_for_the_route)
{
    /* Regression: a refresh arriving while the login's route write was
     * still in flight sent the login_ack at once, before the route existed
     * (a notify right after the ack could not be routed). With Redis
     * stopped the route write can only end by its timeout: the login_ack,
     * then the refresh_ack, come after it. */
    pid_t redis_pid = harness_redis_pid(&h);
    ck_assert_int_gt(redis_pid, 0);
    char tok[TOKEN_MAX_LEN], fresh[TOKEN_MAX_LEN], text[1024];
    (void)token_ttl(APP, 6105, 60000, false, tok, sizeof(tok));
    (void)token_ttl(APP, 6105, 120000, false, fresh, sizeof(fresh));
    struct wsc *c = wsc_open(ws_port(0));
    ck_assert_int_eq(kill(redis_pid, SIGSTOP), 0);
    int64_t t0 = mono_ms();
    snprintf(text, sizeof(text), "{\"type\":\"login\",\"token\":\"%s\",\"device_id\":\"rr-1\"}",
             tok);
    ck_assert(wsc_send_text(c, text));
    send_refresh(c, fresh);
    json_t *first = wsc_read_json(c, 5000, NULL);
    int64_t waited = mono_ms() - t0;
    kill(redis_pid, SIGCONT);
    ck_assert_ptr_nonnull(first);
    ck_assert_str_eq(json_string_value(json_object_get(first, "type")), "login_ack");
    ck_assert_msg(waited >= 100, "login_ack after %lld ms: before the route write ended",
                  (long long)waited);
    json_decref(first);
    json_t *r = expect_type(c, "refresh_ack", 3000);
    ck_assert(json_is_true(json_object_get(r, "ok")));
    json_decref(r);
    wsc_free(c);
}
END_TEST

START_TEST(token_expiry_closes_session)
{
    char tok[TOKEN_MAX_LEN];
    int64_t exp = token_ttl(APP, 6101, 2000, false, tok, sizeof(tok));
    int64_t t0 = mono_ms();
    struct wsc *c = wsc_open(ws_port(0));
    json_t *ack = wsc_login_json(c, tok, "exp-1");
    ck_assert_ptr_nonnull(ack);
    ck_assert(json_is_true(json_object_get(ack, "ok")));
    /* The ack tells the client when the session ends. */
    ck_assert_int_eq((int64_t)mt_u64(ack, "expires_at"), exp);
    json_decref(ack);
    ck_assert(wait_route(6101, "exp-1", "lcs0 ", 1000));
    uint64_t id = mt_send1(&h, 0, APP, 7, 6101, "before expiry");
    ck_assert_uint_eq(read_notify(c, 3000), id);

    /* No refresh: closed at the expiry with 4401, not before. */
    ck_assert_int_eq(wsc_wait_close(c, 4000), 4401);
    int64_t took = mono_ms() - t0;
    ck_assert_msg(took >= 1800 && took < 3000, "closed after %lld ms", (long long)took);
    ck_assert(wait_route(6101, "exp-1", NULL, 3000));
    /* Nothing reaches the expired session any more. */
    (void)mt_send1(&h, 0, APP, 7, 6101, "after expiry");
    ck_assert_uint_eq(read_notify(c, 1000), 0);
    ck_assert_double_ge(mt_metric(admin_port(0), "mbox_lcs_closes_total", "token_expired"), 1);
    wsc_free(c);
}
END_TEST

START_TEST(refresh_keeps_session_past_expiry)
{
    char tok[TOKEN_MAX_LEN], fresh[TOKEN_MAX_LEN], other[TOKEN_MAX_LEN];
    (void)token_ttl(APP, 6102, 2000, false, tok, sizeof(tok));
    int64_t t0 = mono_ms();
    struct wsc *c = wsc_open(ws_port(0));
    json_t *ack = wsc_login_json(c, tok, "ref-1");
    ck_assert(json_is_true(json_object_get(ack, "ok")));
    json_decref(ack);

    /* A bad token is answered ok=false and changes nothing. */
    send_refresh(c, "v1.k1.bad.bad");
    json_t *r = expect_type(c, "refresh_ack", 3000);
    ck_assert(json_is_false(json_object_get(r, "ok")));
    ck_assert_str_eq(json_string_value(json_object_get(r, "reason")), "malformed");
    json_decref(r);

    int64_t exp = token_ttl(APP, 6102, 60000, false, fresh, sizeof(fresh));
    send_refresh(c, fresh);
    r = expect_type(c, "refresh_ack", 3000);
    ck_assert(json_is_true(json_object_get(r, "ok")));
    ck_assert_int_eq((int64_t)mt_u64(r, "expires_at"), exp);
    json_decref(r);

    /* Past the first token's expiry the session is open and notified. */
    int64_t wait = 3000 - (mono_ms() - t0);
    if (wait > 0)
        usleep((useconds_t)wait * 1000);
    assert_alive(c);
    uint64_t id = mt_send1(&h, 0, APP, 7, 6102, "after the first expiry");
    ck_assert_uint_eq(read_notify(c, 3000), id);

    /* A valid token of another user: refused with 4403. */
    local_token(APP, 6103, other, sizeof(other));
    send_refresh(c, other);
    ck_assert_int_eq(wsc_wait_close(c, 3000), 4403);
    wsc_free(c);

    /* The same over protobuf. */
    (void)token_ttl(APP, 6104, 2000, false, tok, sizeof(tok));
    t0 = mono_ms();
    c = wsc_open(ws_port(0));
    Mbox__Frame f = MBOX__FRAME__INIT;
    f.type = "login";
    f.token = tok;
    f.device_id = "ref-pb";
    send_pb(c, &f);
    Mbox__Frame *a = read_pb(c);
    ck_assert_str_eq(a->type, "login_ack");
    ck_assert(a->ok && a->has_expires_at);
    mbox__frame__free_unpacked(a, NULL);
    exp = token_ttl(APP, 6104, 60000, false, fresh, sizeof(fresh));
    Mbox__Frame rf = MBOX__FRAME__INIT;
    rf.type = "refresh";
    rf.token = fresh;
    send_pb(c, &rf);
    a = read_pb(c);
    ck_assert_str_eq(a->type, "refresh_ack");
    ck_assert(a->has_ok && a->ok);
    ck_assert_int_eq((int64_t)a->expires_at, exp);
    mbox__frame__free_unpacked(a, NULL);
    wait = 2800 - (mono_ms() - t0);
    if (wait > 0)
        usleep((useconds_t)wait * 1000);
    Mbox__Frame ping = MBOX__FRAME__INIT;
    ping.type = "ping";
    send_pb(c, &ping);
    a = read_pb(c);
    ck_assert_str_eq(a->type, "pong");
    mbox__frame__free_unpacked(a, NULL);
    wsc_free(c);
}
END_TEST

/* ---- paced notify: targeting, start time ------------------------------------ */

/* Logs in over JSON with a platform and core_level (NULL = not sent); asserts the ack. */
static struct wsc *
login_client(uint64_t app, uint64_t uid, bool guest, const char *platform, const char *core)
{
    char tok[TOKEN_MAX_LEN], dev[32];
    (void)token_ttl(app, uid, 3600 * 1000, guest, tok, sizeof(tok));
    snprintf(dev, sizeof(dev), "t%" PRIu64, uid);
    struct wsc *c = wsc_open(ws_port(0));
    json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "type", "login", "token", tok, "device_id", dev,
                          "platform", platform);
    if (core != NULL)
        json_object_set_new(j, "core_level", json_string(core));
    char *s = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    ck_assert(wsc_send_text(c, s));
    free(s);
    json_t *ack = expect_type(c, "login_ack", 5000);
    ck_assert(json_is_true(json_object_get(ack, "ok")));
    json_decref(ack);
    return c;
}

/* The msg_id of the next notify of app within timeout_ms, 0 when none came. */
static uint64_t
notify_of(struct wsc *c, uint64_t app, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    while (mono_ms() < end) {
        json_t *j = wsc_read_json(c, (int)(end - mono_ms()), NULL);
        if (j == NULL)
            return 0;
        const char *t = json_string_value(json_object_get(j, "type"));
        uint64_t id = 0;
        if (t != NULL && strcmp(t, "notify") == 0) {
            ck_assert_uint_eq(mt_u64(j, "app_id"), app);
            id = mt_u64(j, "msg_id");
        }
        json_decref(j);
        if (id != 0)
            return id;
    }
    return 0;
}

static void broadcast(const char *line);

START_TEST(paced_notify_follows_targeting)
{
    enum { A = 78 };
    struct {
        uint64_t uid;
        bool guest;
        const char *platform, *core;
        bool targeted;
    } who[] = {
        {7001, false, "ios", "220819", true},      /* in every bound */
        {7002, false, "android", "220819", false}, /* other platform */
        {7003, false, "ios", "100", false},        /* below min_core_level */
        {7004, false, "ios", NULL, false},         /* no core level: outside any bound */
        {7005, true, "ios", "220819", false},      /* guest, login_only notice */
        {7006, false, "IOS", "300000", true},      /* platform compared as sync does */
        {7007, false, "ios", "900000", false},     /* above max_core_level */
    };
    enum { N = sizeof(who) / sizeof(who[0]) };
    struct wsc *cs[N];
    for (int i = 0; i < N; i++)
        cs[i] = login_client(A, who[i].uid, who[i].guest, who[i].platform, who[i].core);
    broadcast("p 78 9101 1700000000000101 1000 0 0 1 200000 800000 ios,ipados");
    for (int i = 0; i < N; i++) {
        uint64_t got = notify_of(cs[i], A, who[i].targeted ? 3000 : 700);
        ck_assert_msg(got == (who[i].targeted ? 1700000000000101ULL : 0),
                      "uid %" PRIu64 ": %" PRIu64, who[i].uid, got);
    }
    /* Without targeting ("-", no bounds, not login-only) every connection of the app. */
    broadcast("p 78 9102 1700000000000102 1000 0 0 0 0 0 -");
    for (int i = 0; i < N; i++)
        ck_assert_uint_eq(notify_of(cs[i], A, 3000), 1700000000000102ULL);
    for (int i = 0; i < N; i++)
        wsc_free(cs[i]);
}
END_TEST

START_TEST(paced_notify_waits_for_start_at)
{
    enum { A = 79 };
    struct wsc *c = login_client(A, 7101, false, "android", "1");
    char line[160];

    /* Scheduled 1.5 s ahead: nothing before, the notify at the start. */
    int64_t t0 = mono_ms();
    snprintf(line, sizeof(line), "p 79 9201 1700000000000201 1000 %" PRId64 " 0 0 0 0 -",
             now_us() + 1500 * 1000);
    broadcast(line);
    ck_assert_uint_eq(notify_of(c, A, 1200), 0);
    ck_assert_uint_eq(notify_of(c, A, 2500), 1700000000000201ULL);
    int64_t took = mono_ms() - t0;
    ck_assert_msg(took >= 1400 && took < 3000, "paced after %lld ms", (long long)took);

    /* Stopped before its start: never paced. */
    snprintf(line, sizeof(line), "p 79 9202 1700000000000202 1000 %" PRId64 " 0 0 0 0 -",
             now_us() + 800 * 1000);
    broadcast(line);
    broadcast("x 79 9202");
    ck_assert_uint_eq(notify_of(c, A, 1800), 0);

    /* Already expired: not paced. */
    snprintf(line, sizeof(line), "p 79 9203 1700000000000203 1000 0 %" PRId64 " 0 0 0 -",
             now_us() - 1000 * 1000);
    broadcast(line);
    ck_assert_uint_eq(notify_of(c, A, 700), 0);
    /* A malformed targeted line is dropped as bad, not half-applied. */
    double bad = mt_metric(admin_port(0), "mbox_lcs_notify_dropped_total", "bad_line");
    broadcast("p 79 9204 1700000000000204 1000 0 0 2 0 0 -");
    broadcast("p 79 9205 1700000000000205 1000 0 0 0 0 0 IOS");
    broadcast("p 79 9206 1700000000000206 1000 0 0 0 0 0 a,b,c,d,e,f,g,h,i");
    ck_assert_uint_eq(notify_of(c, A, 700), 0);
    ck_assert_double_eq(mt_metric(admin_port(0), "mbox_lcs_notify_dropped_total", "bad_line") - bad,
                        3);
    wsc_free(c);
}
END_TEST

/* ---- paced notify end to end: publish -> notify_pacing() -> lcsd ------------- */

/* Creates and publishes a paced notice on logicd 0; returns its msg_id. */
static uint64_t
publish_paced(const char *body)
{
    int st;
    json_t *j = httpc_json("POST", h.logicd[0].port[1], "/v1/notices", h.ops_token, body, &st);
    ck_assert_msg(st == 201, "create: %d", st);
    char path[128];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/publish", mt_u64(j, "notice_id"));
    json_decref(j);
    j = httpc_json("POST", h.logicd[0].port[1], path, h.ops_token, NULL, &st);
    ck_assert_int_eq(st, 200);
    uint64_t msg_id = mt_u64(j, "msg_id");
    json_decref(j);
    ck_assert_uint_gt(msg_id, 0);
    return msg_id;
}

START_TEST(paced_notice_end_to_end_targeting_and_start_at)
{
    enum { A = 81 };
    struct wsc *in = login_client(A, 7201, false, "android", "220819");
    struct wsc *out = login_client(A, 7202, false, "ios", "220819");
    uint64_t id =
        publish_paced("{\"app_id\":\"81\",\"title\":\"now\",\"content\":\"x\","
                      "\"targeting\":{\"platforms\":[\"android\"],\"min_core_level\":\"100\"},"
                      "\"notify\":{\"mode\":\"paced\",\"rate_per_s\":1000}}");
    ck_assert_uint_eq(notify_of(in, A, 3000), id);
    ck_assert_uint_eq(notify_of(out, A, 700), 0);

    /* start_at 1 s ahead: paced from start_at + 2 poll intervals (harness: 200 ms), not before. */
    char body[512];
    snprintf(body, sizeof(body),
             "{\"app_id\":\"81\",\"title\":\"later\",\"content\":\"x\",\"start_at\":\"%" PRId64
             "\",\"notify\":{\"mode\":\"paced\",\"rate_per_s\":1000}}",
             now_us() + 1000 * 1000);
    int64_t t0 = mono_ms();
    id = publish_paced(body);
    ck_assert_uint_eq(notify_of(in, A, 1100), 0);
    ck_assert_uint_eq(notify_of(in, A, 3000), id);
    ck_assert_int_ge(mono_ms() - t0, 1350);
    ck_assert_uint_eq(notify_of(out, A, 2000), id); /* no targeting: every platform */

    /* Regression: a notice published for now was paced at once, so a
     * notified client could sync before logicd's poller had read it, get
     * nothing and never be told again (seen in the browser test). Pacing
     * now waits two poll intervals: the sync a notify causes has it. */
    char tok[1024], cur[256] = "";
    int st;
    mt_token(&h, 0, A, 7202, 600, false, tok, sizeof(tok));
    json_decref(mt_sync(&h, 0, tok, cur, 100, &st)); /* the cursor to the end */
    ck_assert_int_eq(st, 200);
    t0 = mono_ms();
    id = publish_paced("{\"app_id\":\"81\",\"title\":\"seen\",\"content\":\"x\","
                       "\"notify\":{\"mode\":\"paced\",\"rate_per_s\":1000}}");
    ck_assert_uint_eq(notify_of(out, A, 3000), id);
    ck_assert_int_ge(mono_ms() - t0, 350);
    json_t *j = mt_sync(&h, 0, tok, cur, 100, &st);
    ck_assert_int_eq(st, 200);
    bool seen = false;
    json_t *items = json_object_get(j, "items");
    for (size_t i = 0; i < json_array_size(items); i++)
        seen = seen || mt_u64(json_array_get(items, i), "msg_id") == id;
    json_decref(j);
    ck_assert_msg(seen, "the notify came before the notice was in logicd's cache");
    wsc_free(in);
    wsc_free(out);
}
END_TEST

static Suite *
lcs_suite(void)
{
    Suite *s = suite_create("lcs");
    TCase *tc = tcase_create("lcsd");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, send_notify_pull_end_to_end);
    tcase_add_test(tc, login_binary_protobuf);
    tcase_add_test(tc, devices_kick_and_routes);
    tcase_add_test(tc, bad_frames_close_with_the_right_code);
    tcase_add_test(tc, fragmented_login_with_ping_between);
    tcase_add_test(tc, login_timeout);
    tcase_add_test(tc, heartbeat_timeout);
    tcase_add_test(tc, slow_reader_is_closed);
    tcase_add_test(tc, paced_notify_rate);
    tcase_add_test(tc, healthz_and_memory_gauges);
    tcase_add_test(tc, redis_restart_notifies_resume);
    tcase_add_test(tc, accept_backs_off_on_emfile);
    tcase_add_test(tc, per_user_session_cap_kicks_oldest);
    tcase_add_test(tc, connection_limit_refuses_ws_keeps_admin);
    tcase_add_test(tc, token_expiry_closes_session);
    tcase_add_test(tc, refresh_keeps_session_past_expiry);
    tcase_add_test(tc, refresh_right_after_login_waits_for_the_route);
    tcase_add_test(tc, paced_notify_follows_targeting);
    tcase_add_test(tc, paced_notify_waits_for_start_at);
    tcase_add_test(tc, paced_notice_end_to_end_targeting_and_start_at);
    tcase_add_test(tc, sigterm_closes_with_1001);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(lcs_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
