/*
 * Unit tests of lib/http: the pure helpers (pattern matching, bearer
 * parsing, error codes), then a real server on 127.0.0.1 run by a
 * background thread and driven by a blocking socket client written here
 * (raw HTTP/1.1 text in, status/headers/body out).
 */
#include "http.h"
#include "metrics.h"
#include "xff.h"

#include <check.h>
#include <event2/event.h>
#include <event2/thread.h>
#include <jansson.h>

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

/* ================= pure helpers ================= */

/* Runs http_match_pattern with room for 8 parameters. */
static int
match(const char *pattern, const char *path, const char **names, const char **values)
{
    static char valbuf[512];
    return http_match_pattern(pattern, path, names, values, 8, valbuf, sizeof(valbuf));
}

START_TEST(test_match_literals)
{
    const char *n[8], *v[8];
    ck_assert_int_eq(match("/", "/", n, v), 0);
    ck_assert_int_eq(match("/v1/sync", "/v1/sync", n, v), 0);
    ck_assert_int_eq(match("/v1/sync", "/v1/sync/", n, v), -1);
    ck_assert_int_eq(match("/v1/sync/", "/v1/sync", n, v), -1);
    ck_assert_int_eq(match("/v1/sync/", "/v1/sync/", n, v), 0);
    ck_assert_int_eq(match("/v1/sync", "/v1/syncx", n, v), -1);
    ck_assert_int_eq(match("/v1/sync", "/v1/syn", n, v), -1);
    ck_assert_int_eq(match("/v1/sync", "/V1/sync", n, v), -1);
    ck_assert_int_eq(match("/v1/sync", "/v1", n, v), -1);
    ck_assert_int_eq(match("/v1", "/v1/sync", n, v), -1);
    ck_assert_int_eq(match("/", "/a", n, v), -1);
    ck_assert_int_eq(match("/a", "/", n, v), -1);
    ck_assert_int_eq(match("/a//b", "/a//b", n, v), 0);
    ck_assert_int_eq(match("/a/b", "/a//b", n, v), -1);
    /* Both sides must be absolute. */
    ck_assert_int_eq(match("/v1/sync", "v1/sync", n, v), -1);
    ck_assert_int_eq(match("v1/sync", "v1/sync", n, v), -1);
    ck_assert_int_eq(match("/x", "", n, v), -1);
    ck_assert_int_eq(http_match_pattern(NULL, "/", n, v, 8, NULL, 0), -1);
    ck_assert_int_eq(http_match_pattern("/", NULL, n, v, 8, NULL, 0), -1);
    /* A literal pattern needs no output space at all. */
    ck_assert_int_eq(http_match_pattern("/v1/sync", "/v1/sync", NULL, NULL, 0, NULL, 0), 0);
}
END_TEST

START_TEST(test_match_params)
{
    const char *n[8], *v[8];
    ck_assert_int_eq(match("/v1/notices/{id}/publish", "/v1/notices/17/publish", n, v), 1);
    ck_assert_str_eq(n[0], "id");
    ck_assert_str_eq(v[0], "17");

    ck_assert_int_eq(match("/v1/notices/{id}", "/v1/notices/abc-def_9", n, v), 1);
    ck_assert_str_eq(n[0], "id");
    ck_assert_str_eq(v[0], "abc-def_9");

    ck_assert_int_eq(match("/a/{x}/b/{y}", "/a/1/b/2", n, v), 2);
    ck_assert_str_eq(n[0], "x");
    ck_assert_str_eq(v[0], "1");
    ck_assert_str_eq(n[1], "y");
    ck_assert_str_eq(v[1], "2");

    ck_assert_int_eq(match("/{a}/{b}", "/first/second", n, v), 2);
    ck_assert_str_eq(v[0], "first");
    ck_assert_str_eq(v[1], "second");

    /* Values are whatever the decoded segment holds, spaces included. */
    ck_assert_int_eq(match("/items/{id}", "/items/a b", n, v), 1);
    ck_assert_str_eq(v[0], "a b");

    /* Exactly one non-empty segment. */
    ck_assert_int_eq(match("/v1/notices/{id}/publish", "/v1/notices//publish", n, v), -1);
    ck_assert_int_eq(match("/v1/notices/{id}/publish", "/v1/notices/17", n, v), -1);
    ck_assert_int_eq(match("/v1/notices/{id}/publish", "/v1/notices/1/7/publish", n, v), -1);
    ck_assert_int_eq(match("/v1/notices/{id}", "/v1/notices/", n, v), -1);
    ck_assert_int_eq(match("/v1/notices/{id}", "/v1/notices", n, v), -1);
    ck_assert_int_eq(match("/v1/notices/{id}", "/v1/notices/17/", n, v), -1);
    ck_assert_int_eq(match("/v1/notices/{id}", "/v1/notices/17/x", n, v), -1);
    ck_assert_int_eq(match("/v1/notices/{id}/publish", "/v1/notices/17/publis", n, v), -1);
    ck_assert_int_eq(match("/{id}", "/", n, v), -1);
    /* "{}" is not a parameter: it is matched literally. */
    ck_assert_int_eq(match("/a/{}", "/a/{}", n, v), 0);
    ck_assert_int_eq(match("/a/{}", "/a/x", n, v), -1);
}
END_TEST

START_TEST(test_match_limits)
{
    const char *n[2], *v[2];
    char buf[64];
    /* More parameters than maxp. */
    ck_assert_int_eq(http_match_pattern("/{a}/{b}/{c}", "/1/2/3", n, v, 2, buf, sizeof(buf)), -1);
    ck_assert_int_eq(http_match_pattern("/{a}/{b}", "/1/2", n, v, 2, buf, sizeof(buf)), 2);
    ck_assert_int_eq(http_match_pattern("/{a}", "/1", n, v, 0, buf, sizeof(buf)), -1);
    /* valbuf too small: "id\0" + "12345\0" needs 9 bytes. */
    ck_assert_int_eq(http_match_pattern("/x/{id}", "/x/12345", n, v, 2, buf, 8), -1);
    ck_assert_int_eq(http_match_pattern("/x/{id}", "/x/12345", n, v, 2, buf, 9), 1);
    ck_assert_str_eq(n[0], "id");
    ck_assert_str_eq(v[0], "12345");
    ck_assert_int_eq(http_match_pattern("/x/{id}", "/x/12345", n, v, 2, NULL, 0), -1);
    /* The documented bound is always enough. */
    const char *pat = "/{a}/{b}";
    const char *path = "/xxxxxxxxxx/yyyyyyyyyy";
    size_t need = strlen(pat) + strlen(path) + 2 * 2;
    char *exact = malloc(need);
    ck_assert_int_eq(http_match_pattern(pat, path, n, v, 2, exact, need), 2);
    ck_assert_str_eq(v[1], "yyyyyyyyyy");
    free(exact);
}
END_TEST

START_TEST(test_bearer)
{
    ck_assert_str_eq(http_parse_bearer("Bearer abc.def-123"), "abc.def-123");
    ck_assert_str_eq(http_parse_bearer("bearer tok"), "tok");
    ck_assert_str_eq(http_parse_bearer("BEARER tok"), "tok");
    ck_assert_str_eq(http_parse_bearer("BeArEr    tok=="), "tok==");
    const char *h = "Bearer xyz";
    ck_assert_ptr_eq(http_parse_bearer(h), h + 7);

    ck_assert_ptr_null(http_parse_bearer(NULL));
    ck_assert_ptr_null(http_parse_bearer(""));
    ck_assert_ptr_null(http_parse_bearer("Bearer"));
    ck_assert_ptr_null(http_parse_bearer("Bearer "));
    ck_assert_ptr_null(http_parse_bearer("Bearer    "));
    ck_assert_ptr_null(http_parse_bearer("Bearerabc"));
    ck_assert_ptr_null(http_parse_bearer("Bearer\tabc"));
    ck_assert_ptr_null(http_parse_bearer("Bearer a b"));
    ck_assert_ptr_null(http_parse_bearer("Bearer abc "));
    ck_assert_ptr_null(http_parse_bearer("Bearer ab\x01"
                                         "c"));
    ck_assert_ptr_null(http_parse_bearer("Basic dXNlcjpwYXNz"));
    ck_assert_ptr_null(http_parse_bearer(" Bearer abc"));
    ck_assert_ptr_null(http_parse_bearer("Bear abc"));
}
END_TEST

START_TEST(test_status_code_names)
{
    ck_assert_str_eq(http_status_code_name(400), "invalid_argument");
    ck_assert_str_eq(http_status_code_name(401), "unauthenticated");
    ck_assert_str_eq(http_status_code_name(403), "permission_denied");
    ck_assert_str_eq(http_status_code_name(404), "not_found");
    ck_assert_str_eq(http_status_code_name(405), "method_not_allowed");
    ck_assert_str_eq(http_status_code_name(409), "conflict");
    ck_assert_str_eq(http_status_code_name(412), "failed_precondition");
    ck_assert_str_eq(http_status_code_name(413), "too_large");
    ck_assert_str_eq(http_status_code_name(429), "rate_limited");
    ck_assert_str_eq(http_status_code_name(503), "unavailable");
    ck_assert_str_eq(http_status_code_name(500), "internal");
    ck_assert_str_eq(http_status_code_name(418), "internal");
    ck_assert_str_eq(http_status_code_name(0), "internal");
}
END_TEST

START_TEST(test_listen)
{
    char err[256];
    int fd = http_listen("127.0.0.1", 0, err, sizeof(err));
    ck_assert_msg(fd >= 0, "http_listen: %s", err);
    int port = http_bound_port(fd);
    ck_assert_int_gt(port, 0);
    ck_assert_int_le(port, 65535);
    ck_assert(fcntl(fd, F_GETFL) & O_NONBLOCK);
    /* SO_REUSEPORT: a second socket on the same port (one per worker thread). */
    int fd2 = http_listen("127.0.0.1", port, err, sizeof(err));
    ck_assert_msg(fd2 >= 0, "second listener: %s", err);
    ck_assert_int_eq(http_bound_port(fd2), port);
    close(fd2);
    close(fd);

    err[0] = '\0';
    ck_assert_int_eq(http_listen("127.0.0.1", -1, err, sizeof(err)), -1);
    ck_assert_str_ne(err, "");
    err[0] = '\0';
    ck_assert_int_eq(http_listen("127.0.0.1", 70000, err, sizeof(err)), -1);
    ck_assert_str_ne(err, "");
    err[0] = '\0';
    ck_assert_int_eq(http_listen("256.0.0.1", 0, err, sizeof(err)), -1);
    ck_assert_str_ne(err, "");
    ck_assert_int_eq(http_bound_port(-1), -1);
}
END_TEST

/* ================= a live server ================= */

static struct metrics *g_metrics;
static int g_async_replies; /* deferred replies done (atomic) */

static void
h_hello(struct http_req *r, void *ctx)
{
    (void)ctx;
    json_t *j = json_pack("{s:s}", "hello", "world");
    http_reply_json(r, 200, j);
}

static void
h_literal_stats(struct http_req *r, void *ctx)
{
    (void)ctx;
    http_reply_json(r, 200, json_pack("{s:s}", "which", "stats"));
}

static void
h_item(struct http_req *r, void *ctx)
{
    (void)ctx;
    const char *id = http_req_param(r, "id");
    const char *missing = http_req_param(r, "nope");
    http_reply_json(r, 200,
                    json_pack("{s:s,s:s,s:b,s:s}", "id", id ? id : "(null)", "method",
                              http_req_method(r) == HTTP_DELETE ? "DELETE" : "GET",
                              "missing_is_null", missing == NULL, "path", http_req_path(r)));
}

static void
h_pair(struct http_req *r, void *ctx)
{
    (void)ctx;
    http_reply_json(
        r, 200, json_pack("{s:s,s:s}", "a", http_req_param(r, "a"), "b", http_req_param(r, "b")));
}

static json_t *
str_or_null(const char *s)
{
    return s != NULL ? json_string(s) : json_null();
}

static void
h_echo(struct http_req *r, void *ctx)
{
    (void)ctx;
    json_t *j = json_object();
    json_object_set_new(j, "q", str_or_null(http_req_query(r, "q")));
    json_object_set_new(j, "x", str_or_null(http_req_query(r, "x")));
    json_object_set_new(j, "flag", str_or_null(http_req_query(r, "flag")));
    json_object_set_new(j, "Q", str_or_null(http_req_query(r, "Q")));
    json_object_set_new(j, "h", str_or_null(http_req_header(r, "x-test")));
    json_object_set_new(j, "bearer", str_or_null(http_req_bearer(r)));
    json_object_set_new(j, "id", json_string(http_req_id(r)));
    json_object_set_new(j, "client", json_string(http_req_client(r)));
    http_reply_json(r, 200, j);
}

static void
h_body(struct http_req *r, void *ctx)
{
    (void)ctx;
    size_t len;
    const unsigned char *b = http_req_body(r, &len);
    ck_assert_ptr_nonnull(b);
    ck_assert_int_eq(b[len], '\0');
    /* Asking twice gives the cached copy. */
    size_t len2;
    ck_assert_ptr_eq(http_req_body(r, &len2), b);
    ck_assert_uint_eq(len, len2);
    http_reply(r, 200, "application/octet-stream", b, len);
}

static void
h_unavailable(struct http_req *r, void *ctx)
{
    (void)ctx;
    http_reply_error(r, 503, NULL, "database %s is down", "pg");
}

static void
h_conflict(struct http_req *r, void *ctx)
{
    (void)ctx;
    http_req_add_header(r, "X-Extra", "yes");
    http_reply_error(r, 409, "version_mismatch", "have %d, want %d", 3, 4);
}

static void
h_metrics(struct http_req *r, void *ctx)
{
    (void)ctx;
    http_reply_metrics(r, g_metrics);
}

static void
h_nocontent(struct http_req *r, void *ctx)
{
    (void)ctx;
    http_reply(r, 204, NULL, "ignored", 7);
}

/* Deferred replies: the handler returns at once, a timer replies later. */
static void
deferred_reply(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_req *r = arg;
    /* Accessors stay usable on a request whose client is gone. */
    (void)http_req_path(r);
    (void)http_req_header(r, "Host");
    (void)http_req_query(r, "q");
    size_t len;
    (void)http_req_body(r, &len);
    const char *tag = http_req_data(r);
    http_reply_json(r, 200, json_pack("{s:b,s:s}", "async", 1, "tag", tag ? tag : ""));
    __atomic_fetch_add(&g_async_replies, 1, __ATOMIC_SEQ_CST);
}

static void
defer(struct http_req *r, int ms)
{
    struct timeval tv = {ms / 1000, (ms % 1000) * 1000};
    http_req_set_data(r, "deferred");
    ck_assert_int_eq(event_base_once(http_req_base(r), -1, EV_TIMEOUT, deferred_reply, r, &tv), 0);
}

static void
h_async(struct http_req *r, void *ctx)
{
    (void)ctx;
    defer(r, 200);
}

static void
h_async_slow(struct http_req *r, void *ctx)
{
    (void)ctx;
    defer(r, 1800);
}

/* 4 MiB, more than a socket buffer takes at once: the reply is queued. */
#define BIG_LEN (4u << 20)

static void
h_big(struct http_req *r, void *ctx)
{
    (void)ctx;
    char *b = malloc(BIG_LEN);
    ck_assert_ptr_nonnull(b);
    for (size_t i = 0; i < BIG_LEN; i++)
        b[i] = (char)('a' + i % 26);
    http_reply(r, 200, "application/octet-stream", b, BIG_LEN);
    free(b);
}

/* Takes a body of any size and answers its length. */
static void
h_sink(struct http_req *r, void *ctx)
{
    (void)ctx;
    size_t len;
    (void)http_req_body(r, &len);
    http_reply_json(r, 200, json_pack("{s:I}", "len", (json_int_t)len));
}

static const struct http_route routes[] = {
    {HTTP_GET | HTTP_HEAD, "/hello", h_hello},     {HTTP_POST, "/sink", h_sink},
    {HTTP_GET, "/literal/stats", h_literal_stats}, {HTTP_GET | HTTP_DELETE, "/items/{id}", h_item},
    {HTTP_GET, "/literal/{id}", h_item},           {HTTP_PUT, "/items/{id}", h_item},
    {HTTP_GET, "/pair/{a}/x/{b}", h_pair},         {HTTP_GET, "/echo", h_echo},
    {HTTP_POST | HTTP_PUT, "/body", h_body},       {HTTP_GET, "/unavailable", h_unavailable},
    {HTTP_POST, "/conflict", h_conflict},          {HTTP_GET, "/metrics", h_metrics},
    {HTTP_GET, "/nocontent", h_nocontent},         {HTTP_GET | HTTP_POST, "/async", h_async},
    {HTTP_GET, "/async-slow", h_async_slow},       {HTTP_GET, "/big", h_big},
};

struct server {
    struct event_base *base;
    struct http_server *http;
    pthread_t thread;
    int port;
    bool stopped;
};

static struct server srv;

static void *
server_thread(void *arg)
{
    struct server *s = arg;
    event_base_dispatch(s->base);
    return NULL;
}

/* The precheck of the hardened server: only the bearer "good" passes. */
static const char *
precheck_good(const struct http_route *route, const char *bearer, void *ctx)
{
    (void)route;
    (void)ctx;
    return bearer != NULL && strcmp(bearer, "good") == 0 ? NULL : "not good";
}

static struct http_gate g_gate;

static void
start_server_limits(const struct http_limits *limits, http_precheck_fn precheck)
{
    char err[256];
    memset(&srv, 0, sizeof(srv));
    g_metrics = metrics_new();
    ck_assert_ptr_nonnull(g_metrics);
    srv.base = event_base_new();
    ck_assert_ptr_nonnull(srv.base);
    int fd = http_listen("127.0.0.1", 0, err, sizeof(err));
    ck_assert_msg(fd >= 0, "%s", err);
    srv.port = http_bound_port(fd);
    srv.http = http_server_new(srv.base, fd, "test", routes, sizeof(routes) / sizeof(routes[0]),
                               limits, NULL, g_metrics, err, sizeof(err));
    ck_assert_msg(srv.http != NULL, "%s", err);
    http_server_set_precheck(srv.http, precheck);
    ck_assert_int_eq(pthread_create(&srv.thread, NULL, server_thread, &srv), 0);
}

static void
start_server_with(int timeout_s)
{
    struct http_limits limits = {.max_body = 1024, .max_headers = 4096, .timeout_s = timeout_s};
    start_server_limits(&limits, NULL);
}

static void
start_server(void)
{
    start_server_with(10);
}

/* Stops the loop (thread-safe: evthread is on) and joins the thread. */
static void
halt_server_loop(void)
{
    ck_assert_int_eq(event_base_loopexit(srv.base, NULL), 0);
    ck_assert_int_eq(pthread_join(srv.thread, NULL), 0);
    srv.stopped = true;
}

static void
stop_server(void)
{
    if (!srv.stopped)
        halt_server_loop();
    http_server_free(srv.http);
    /* Let timers still pending (deferred replies) run to completion. */
    event_base_dispatch(srv.base);
    event_base_free(srv.base);
    metrics_free(g_metrics);
    g_metrics = NULL;
}

/* ---- a blocking HTTP/1.1 client ---- */

struct conn {
    int fd;
    char buf[65536];
    size_t len; /* bytes buffered, not yet consumed */
};

struct resp {
    int status;
    char headers[8192]; /* header lines, "\r\n"-separated, NUL-terminated */
    char *body;
    size_t body_len;
    bool closed; /* the server closed the connection after it */
};

static void
conn_open(struct conn *c)
{
    c->len = 0;
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(c->fd, 0);
    struct timeval tv = {10, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)srv.port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ck_assert_int_eq(connect(c->fd, (struct sockaddr *)&sa, sizeof(sa)), 0);
}

static void
conn_send(struct conn *c, const char *data, size_t len)
{
    while (len > 0) {
        ssize_t n = send(c->fd, data, len, MSG_NOSIGNAL);
        ck_assert_msg(n > 0, "send: %s", strerror(errno));
        data += n;
        len -= (size_t)n;
    }
}

static void
conn_send_str(struct conn *c, const char *s)
{
    conn_send(c, s, strlen(s));
}

/* Reads more bytes; returns false on EOF or error. */
static bool
conn_fill(struct conn *c)
{
    /* One byte stays free for read_response's NUL terminator. */
    ck_assert_msg(c->len < sizeof(c->buf) - 1, "response too large");
    ssize_t n = recv(c->fd, c->buf + c->len, sizeof(c->buf) - 1 - c->len, 0);
    if (n <= 0)
        return false;
    c->len += (size_t)n;
    return true;
}

static void
conn_consume(struct conn *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* The value of header name in r (case-insensitive), copied to out; false if absent. */
static bool
resp_header(const struct resp *r, const char *name, char *out, size_t outlen)
{
    size_t nlen = strlen(name);
    for (const char *line = r->headers; *line;) {
        const char *end = strstr(line, "\r\n");
        size_t llen = end ? (size_t)(end - line) : strlen(line);
        if (llen > nlen && strncasecmp(line, name, nlen) == 0 && line[nlen] == ':') {
            const char *v = line + nlen + 1;
            while (*v == ' ')
                v++;
            size_t vlen = llen - (size_t)(v - line);
            if (vlen >= outlen)
                vlen = outlen - 1;
            memcpy(out, v, vlen);
            out[vlen] = '\0';
            return true;
        }
        if (end == NULL)
            break;
        line = end + 2;
    }
    return false;
}

/*
 * Reads one response. Returns false when the connection closed (or failed)
 * before a status line arrived. head: the request was HEAD (no body).
 */
static bool
read_response(struct conn *c, struct resp *r, bool head)
{
    memset(r, 0, sizeof(*r));
    char *eoh;
    for (;;) {
        c->buf[c->len] = '\0';
        if (c->len > 0 && (eoh = memmem(c->buf, c->len, "\r\n\r\n", 4)) != NULL)
            break;
        if (!conn_fill(c))
            return false;
    }
    size_t hlen = (size_t)(eoh - c->buf);
    ck_assert(sscanf(c->buf, "HTTP/1.%*d %d", &r->status) == 1);
    const char *first_eol = strstr(c->buf, "\r\n");
    size_t start = (size_t)(first_eol - c->buf) + 2;
    size_t copy = hlen > start ? hlen - start : 0;
    ck_assert_uint_lt(copy, sizeof(r->headers));
    memcpy(r->headers, c->buf + start, copy);
    r->headers[copy] = '\0';
    conn_consume(c, hlen + 4);

    char cl[32];
    bool has_cl = resp_header(r, "Content-Length", cl, sizeof(cl));
    bool no_body = head || r->status == 204 || r->status == 304 || r->status < 200;
    size_t want = 0;
    if (!no_body && has_cl) {
        want = (size_t)strtoull(cl, NULL, 10);
        while (c->len < want)
            ck_assert_msg(conn_fill(c), "connection closed inside a body");
    } else if (!no_body) {
        while (conn_fill(c))
            ;
        want = c->len;
        r->closed = true;
    }
    r->body = malloc(want + 1);
    memcpy(r->body, c->buf, want);
    r->body[want] = '\0';
    r->body_len = want;
    conn_consume(c, want);
    return true;
}

static void
resp_free(struct resp *r)
{
    free(r->body);
    r->body = NULL;
}

/* True once the server has closed c (EOF or reset, nothing more to read). */
static bool
conn_closed_by_peer(struct conn *c)
{
    char b;
    ssize_t n = recv(c->fd, &b, 1, 0);
    return n == 0 || (n < 0 && errno == ECONNRESET);
}

/* One request on a fresh connection ("Connection: close" added). */
static void
exchange(const char *method, const char *target, const char *extra_headers, const char *body,
         struct resp *r)
{
    struct conn c;
    conn_open(&c);
    char req[8192];
    size_t blen = body ? strlen(body) : 0;
    int n = snprintf(req, sizeof(req), "%s %s HTTP/1.1\r\nHost: test\r\nConnection: close\r\n%s",
                     method, target, extra_headers ? extra_headers : "");
    if (body != NULL)
        n += snprintf(req + n, sizeof(req) - (size_t)n, "Content-Length: %zu\r\n", blen);
    n += snprintf(req + n, sizeof(req) - (size_t)n, "\r\n%s", body ? body : "");
    ck_assert_int_lt(n, (int)sizeof(req));
    conn_send(&c, req, (size_t)n);
    ck_assert_msg(read_response(&c, r, strcmp(method, "HEAD") == 0), "no response to %s %s", method,
                  target);
    close(c.fd);
}

/* Parses r's body as JSON (must be valid). */
static json_t *
resp_json(const struct resp *r)
{
    json_error_t e;
    json_t *j = json_loadb(r->body, r->body_len, 0, &e);
    ck_assert_msg(j != NULL, "bad JSON (%s): %s", e.text, r->body);
    return j;
}

static void
assert_json_error(const struct resp *r, int status, const char *code)
{
    ck_assert_int_eq(r->status, status);
    char ct[128];
    ck_assert(resp_header(r, "Content-Type", ct, sizeof(ct)));
    ck_assert_str_eq(ct, "application/json");
    json_t *j = resp_json(r);
    json_t *err = json_object_get(j, "error");
    ck_assert_ptr_nonnull(err);
    ck_assert_str_eq(json_string_value(json_object_get(err, "code")), code);
    ck_assert(json_is_string(json_object_get(err, "message")));
    ck_assert_uint_eq(json_object_size(j), 1);
    ck_assert_uint_eq(json_object_size(err), 2);
    json_decref(j);
}

static bool
is_request_id(const char *s)
{
    if (strlen(s) != 8)
        return false;
    for (; *s; s++) {
        if (!isxdigit((unsigned char)*s) || isupper((unsigned char)*s))
            return false;
    }
    return true;
}

/* Waits (up to 5 s) until g_async_replies reaches n. */
static bool
wait_async_replies(int n)
{
    for (int i = 0; i < 500; i++) {
        if (__atomic_load_n(&g_async_replies, __ATOMIC_SEQ_CST) >= n)
            return true;
        usleep(10000);
    }
    return false;
}

/* GET /metrics and return its body (malloc'd). */
static char *
fetch_metrics(void)
{
    struct resp r;
    exchange("GET", "/metrics", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    char ct[128];
    ck_assert(resp_header(&r, "Content-Type", ct, sizeof(ct)));
    ck_assert_str_eq(ct, "text/plain; version=0.0.4");
    return r.body;
}

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

/* ---- server tests ---- */

START_TEST(test_sync_json)
{
    struct resp r;
    exchange("GET", "/hello", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"hello\":\"world\"}");
    char v[128];
    ck_assert(resp_header(&r, "Content-Type", v, sizeof(v)));
    ck_assert_str_eq(v, "application/json");
    ck_assert(resp_header(&r, "Content-Length", v, sizeof(v)));
    ck_assert_str_eq(v, "17");
    ck_assert(resp_header(&r, "X-Request-Id", v, sizeof(v)));
    ck_assert_msg(is_request_id(v), "bad request id %s", v);
    char first[16];
    strcpy(first, v);
    resp_free(&r);

    exchange("GET", "/hello", NULL, NULL, &r);
    ck_assert(resp_header(&r, "X-Request-Id", v, sizeof(v)));
    ck_assert(is_request_id(v));
    ck_assert_str_ne(v, first);
    resp_free(&r);
}
END_TEST

START_TEST(test_head_and_204)
{
    struct resp r;
    exchange("HEAD", "/hello", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, 0);
    char v[64];
    ck_assert(resp_header(&r, "Content-Length", v, sizeof(v)));
    ck_assert_str_eq(v, "17");
    resp_free(&r);

    exchange("GET", "/nocontent", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 204);
    ck_assert_uint_eq(r.body_len, 0);
    resp_free(&r);
}
END_TEST

START_TEST(test_not_found)
{
    struct resp r;
    exchange("GET", "/nope", NULL, NULL, &r);
    assert_json_error(&r, 404, "not_found");
    char v[64];
    ck_assert(resp_header(&r, "X-Request-Id", v, sizeof(v)));
    resp_free(&r);

    /* Trailing slash and empty parameter segments do not match. */
    exchange("GET", "/hello/", NULL, NULL, &r);
    assert_json_error(&r, 404, "not_found");
    resp_free(&r);
    exchange("GET", "/items/", NULL, NULL, &r);
    assert_json_error(&r, 404, "not_found");
    resp_free(&r);
    exchange("GET", "/items/42/", NULL, NULL, &r);
    assert_json_error(&r, 404, "not_found");
    resp_free(&r);
    /* A decoded NUL in the path is refused. */
    exchange("GET", "/items/a%00b", NULL, NULL, &r);
    assert_json_error(&r, 400, "invalid_argument");
    resp_free(&r);
}
END_TEST

START_TEST(test_method_not_allowed)
{
    struct resp r;
    exchange("POST", "/hello", NULL, "{}", &r);
    assert_json_error(&r, 405, "method_not_allowed");
    char allow[64];
    ck_assert(resp_header(&r, "Allow", allow, sizeof(allow)));
    ck_assert_str_eq(allow, "GET, HEAD");
    resp_free(&r);

    /* Methods of every route with a matching pattern are listed. */
    exchange("POST", "/items/7", NULL, "{}", &r);
    assert_json_error(&r, 405, "method_not_allowed");
    ck_assert(resp_header(&r, "Allow", allow, sizeof(allow)));
    ck_assert_str_eq(allow, "GET, PUT, DELETE");
    resp_free(&r);
}
END_TEST

START_TEST(test_params)
{
    struct resp r;
    exchange("GET", "/items/42", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    json_t *j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "42");
    ck_assert_str_eq(json_string_value(json_object_get(j, "method")), "GET");
    ck_assert(json_is_true(json_object_get(j, "missing_is_null")));
    json_decref(j);
    resp_free(&r);

    /* Matched on the raw path; the parameter's value is decoded. */
    exchange("DELETE", "/items/a%20b", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "a b");
    ck_assert_str_eq(json_string_value(json_object_get(j, "method")), "DELETE");
    ck_assert_str_eq(json_string_value(json_object_get(j, "path")), "/items/a%20b");
    json_decref(j);
    resp_free(&r);

    /* First matching route wins: the literal one is listed first. */
    exchange("GET", "/literal/stats", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"which\":\"stats\"}");
    resp_free(&r);
    exchange("GET", "/literal/other", NULL, NULL, &r);
    j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "other");
    json_decref(j);
    resp_free(&r);

    exchange("GET", "/pair/one/x/two?ignored=1", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"a\":\"one\",\"b\":\"two\"}");
    resp_free(&r);
}
END_TEST

START_TEST(test_query_and_headers)
{
    struct resp r;
    exchange("GET", "/echo?q=a+b%21&x=1&flag&x=2",
             "X-Test: hi there\r\nAuthorization: bearer tok123\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    json_t *j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "q")), "a b!");
    ck_assert_str_eq(json_string_value(json_object_get(j, "x")), "1");
    ck_assert_str_eq(json_string_value(json_object_get(j, "flag")), "");
    ck_assert(json_is_null(json_object_get(j, "Q")));
    ck_assert_str_eq(json_string_value(json_object_get(j, "h")), "hi there");
    ck_assert_str_eq(json_string_value(json_object_get(j, "bearer")), "tok123");
    char id[64];
    ck_assert(resp_header(&r, "X-Request-Id", id, sizeof(id)));
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), id);
    json_decref(j);
    resp_free(&r);

    exchange("GET", "/echo", "Authorization: Basic abc\r\n", NULL, &r);
    j = resp_json(&r);
    ck_assert(json_is_null(json_object_get(j, "q")));
    ck_assert(json_is_null(json_object_get(j, "h")));
    ck_assert(json_is_null(json_object_get(j, "bearer")));
    json_decref(j);
    resp_free(&r);
}
END_TEST

START_TEST(test_body_echo)
{
    struct resp r;
    exchange("POST", "/body", NULL, "hello world", &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "hello world");
    char ct[64];
    ck_assert(resp_header(&r, "Content-Type", ct, sizeof(ct)));
    ck_assert_str_eq(ct, "application/octet-stream");
    resp_free(&r);

    /* Exactly max_body is fine. */
    char *big = malloc(1025);
    memset(big, 'z', 1024);
    big[1024] = '\0';
    exchange("PUT", "/body", NULL, big, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, 1024);
    ck_assert_mem_eq(r.body, big, 1024);
    resp_free(&r);
    free(big);

    /* Empty body: a valid empty string. */
    exchange("POST", "/body", NULL, "", &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert_uint_eq(r.body_len, 0);
    resp_free(&r);

    /* Chunked upload. */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "POST /body HTTP/1.1\r\nHost: t\r\nConnection: close\r\n"
                      "Transfer-Encoding: chunked\r\n\r\n"
                      "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "hello world");
    resp_free(&r);
    close(c.fd);
}
END_TEST

START_TEST(test_body_too_large)
{
    /* Honest Content-Length over the cap: 413 as soon as the head is read;
     * the server drops the body still coming, then closes. */
    struct conn c;
    conn_open(&c);
    char *big = malloc(5001);
    memset(big, 'x', 5000);
    big[5000] = '\0';
    conn_send_str(&c, "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n");
    conn_send_str(&c, big);
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    assert_json_error(&r, 413, "too_large");
    char v[64];
    ck_assert(resp_header(&r, "Connection", v, sizeof(v)));
    ck_assert_str_eq(v, "close");
    resp_free(&r);
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);

    /* Chunked (no Content-Length): refused at the first chunk over the cap. */
    conn_open(&c);
    conn_send_str(&c, "POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "400\r\n");
    memset(big, 'y', 0x400);
    conn_send(&c, big, 0x400);
    conn_send_str(&c, "\r\n10\r\n");
    ck_assert(read_response(&c, &r, false));
    assert_json_error(&r, 413, "too_large");
    resp_free(&r);
    close(c.fd);
    free(big);

    /* The server is fine afterwards. */
    exchange("GET", "/hello", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

START_TEST(test_error_replies)
{
    struct resp r;
    exchange("GET", "/unavailable", NULL, NULL, &r);
    assert_json_error(&r, 503, "unavailable");
    char v[64];
    ck_assert(resp_header(&r, "Retry-After", v, sizeof(v)));
    ck_assert_str_eq(v, "1");
    json_t *j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "message")),
                     "database pg is down");
    json_decref(j);
    resp_free(&r);

    exchange("POST", "/conflict", NULL, "{}", &r);
    assert_json_error(&r, 409, "version_mismatch");
    ck_assert(resp_header(&r, "X-Extra", v, sizeof(v)));
    ck_assert_str_eq(v, "yes");
    ck_assert(!resp_header(&r, "Retry-After", v, sizeof(v)));
    resp_free(&r);
}
END_TEST

START_TEST(test_keepalive)
{
    /* Several requests on one connection, the second one deferred. */
    struct conn c;
    conn_open(&c);
    struct resp r;
    conn_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    conn_send_str(&c, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"async\":true,\"tag\":\"deferred\"}");
    resp_free(&r);
    conn_send_str(&c, "GET /items/5 HTTP/1.1\r\nHost: t\r\n\r\n");
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    close(c.fd);
}
END_TEST

START_TEST(test_async_reply)
{
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct resp r;
    exchange("GET", "/async", NULL, NULL, &r);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"async\":true,\"tag\":\"deferred\"}");
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    ck_assert_int_ge(ms, 190);
    resp_free(&r);

    /* With a body too. */
    exchange("POST", "/async", NULL, "{\"a\":1}", &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    /* The counter moves just after the reply is written: wait for it. */
    ck_assert(wait_async_replies(2));
}
END_TEST

START_TEST(test_async_client_gone)
{
    /* The client sends, then closes before the 200 ms deferred reply. */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(50000);
    close(c.fd);

    /* Same with a body (libevent had stopped reading after it). */
    conn_open(&c);
    conn_send_str(&c, "POST /async HTTP/1.1\r\nHost: t\r\nContent-Length: 2\r\n\r\n{}");
    usleep(50000);
    close(c.fd);

    /* And a client that resets the connection. */
    conn_open(&c);
    conn_send_str(&c, "GET /async?q=1 HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(50000);
    struct linger lg = {1, 0};
    setsockopt(c.fd, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg));
    close(c.fd);

    ck_assert(wait_async_replies(3));
    /* The server lives on, and counted the three as 499 (client gone). */
    char *m = fetch_metrics();
    ck_assert_msg(
        has_line(m, "mbox_http_requests_total{server=\"test\",route=\"/async\",status=\"499\"} 3"),
        "%s", m);
    free(m);
    struct resp r;
    exchange("GET", "/hello", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

START_TEST(test_async_client_gone_immediately)
{
    /* Close right after sending: the close may land before or after dispatch. */
    for (int i = 0; i < 5; i++) {
        struct conn c;
        conn_open(&c);
        conn_send_str(&c, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
        close(c.fd);
    }
    usleep(600000);
    struct resp r;
    exchange("GET", "/hello", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

START_TEST(test_pipelined_while_pending)
{
    /* Second request in the same packet as the deferred first one. */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n"
                      "GET /items/9 HTTP/1.1\r\nHost: t\r\n\r\n");
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"async\":true,\"tag\":\"deferred\"}");
    resp_free(&r);
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    json_t *j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "9");
    json_decref(j);
    resp_free(&r);
    close(c.fd);

    /* Second request arriving while the first waits (bare libevent 2.1
     * aborts the process here for a request without a body). */
    conn_open(&c);
    conn_send_str(&c, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(50000);
    conn_send_str(&c, "GET /items/10 HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(20000);
    conn_send_str(&c, "GET /items/11 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
    ck_assert(read_response(&c, &r, false));
    ck_assert_str_eq(r.body, "{\"async\":true,\"tag\":\"deferred\"}");
    resp_free(&r);
    ck_assert(read_response(&c, &r, false));
    j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "10");
    json_decref(j);
    resp_free(&r);
    ck_assert(read_response(&c, &r, false));
    j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "11");
    json_decref(j);
    resp_free(&r);
    close(c.fd);
}
END_TEST

START_TEST(test_metrics_counted)
{
    struct resp r;
    for (int i = 0; i < 3; i++) {
        exchange("GET", "/hello", NULL, NULL, &r);
        resp_free(&r);
    }
    exchange("GET", "/nope", NULL, NULL, &r);
    resp_free(&r);
    exchange("GET", "/nope/either", NULL, NULL, &r);
    resp_free(&r);
    exchange("POST", "/hello", NULL, "", &r);
    resp_free(&r);
    exchange("GET", "/items/1", NULL, NULL, &r);
    resp_free(&r);
    exchange("GET", "/items/2", NULL, NULL, &r);
    resp_free(&r);

    char *m = fetch_metrics();
    ck_assert_msg(
        has_line(m, "mbox_http_requests_total{server=\"test\",route=\"/hello\",status=\"200\"} 3"),
        "%s", m);
    ck_assert(has_line(
        m, "mbox_http_requests_total{server=\"test\",route=\"unmatched\",status=\"404\"} 2"));
    ck_assert(
        has_line(m, "mbox_http_requests_total{server=\"test\",route=\"/hello\",status=\"405\"} 1"));
    ck_assert(has_line(
        m, "mbox_http_requests_total{server=\"test\",route=\"/items/{id}\",status=\"200\"} 2"));
    ck_assert(has_line(m, "# TYPE mbox_http_requests_total counter"));
    ck_assert(has_line(m, "# TYPE mbox_http_request_duration_seconds histogram"));
    ck_assert(has_line(
        m, "mbox_http_request_duration_seconds_count{server=\"test\",route=\"/hello\"} 4"));
    ck_assert(has_line(m, "mbox_http_request_duration_seconds_bucket{server=\"test\",route=\"/"
                          "hello\",le=\"+Inf\"} 4"));
    /* The /metrics request itself is counted once it has been answered. */
    ck_assert_ptr_null(strstr(m, "route=\"/metrics\""));
    free(m);
    m = fetch_metrics();
    ck_assert(has_line(
        m, "mbox_http_requests_total{server=\"test\",route=\"/metrics\",status=\"200\"} 1"));
    free(m);
}
END_TEST

START_TEST(test_oversized_headers)
{
    struct conn c;
    conn_open(&c);
    size_t cap = 7000;
    char *req = malloc(cap);
    int n = snprintf(req, cap, "GET /hello HTTP/1.1\r\nHost: t\r\nX-Big: ");
    memset(req + n, 'a', 6000);
    memcpy(req + n + 6000, "\r\n\r\n", 4);
    conn_send(&c, req, (size_t)n + 6004);
    free(req);
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    assert_json_error(&r, 431, "too_large");
    resp_free(&r);
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);

    /* Too many fields, each small. */
    conn_open(&c);
    conn_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n");
    for (int i = 0; i < 80; i++)
        conn_send_str(&c, "X-A: b\r\n");
    conn_send_str(&c, "\r\n");
    ck_assert(read_response(&c, &r, false));
    assert_json_error(&r, 431, "too_large");
    resp_free(&r);
    close(c.fd);
    exchange("GET", "/hello", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

START_TEST(test_server_freed_with_pending_request)
{
    /* A deferred request is pending when the server goes away: the late
     * reply must only free it (stop_server runs the loop until it fires). */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(80000);
    halt_server_loop();
    ck_assert_int_eq(__atomic_load_n(&g_async_replies, __ATOMIC_SEQ_CST), 0);
    http_server_free(srv.http);
    srv.http = NULL;
    /* The connection was closed with the server. */
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);
    event_base_dispatch(srv.base); /* the timer fires and replies */
    ck_assert_int_eq(__atomic_load_n(&g_async_replies, __ATOMIC_SEQ_CST), 1);
}
END_TEST

START_TEST(test_pending_past_timeout)
{
    /* timeout_s = 1 and a handler taking 1.8 s: the connection is dropped
     * at the deadline; the late reply frees the request. */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "GET /async-slow HTTP/1.1\r\nHost: t\r\n\r\n");
    struct resp r;
    ck_assert(!read_response(&c, &r, false));
    close(c.fd);
    ck_assert(wait_async_replies(1));
    char *m = fetch_metrics();
    ck_assert_msg(
        has_line(
            m, "mbox_http_requests_total{server=\"test\",route=\"/async-slow\",status=\"499\"} 1"),
        "%s", m);
    free(m);
}
END_TEST

/* Sends raw bytes on a fresh connection and reads one response. */
static void
raw_exchange(const char *raw, struct resp *r)
{
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, raw);
    ck_assert_msg(read_response(&c, r, false), "no response to %s", raw);
    close(c.fd);
}

START_TEST(test_refusals)
{
    static const struct {
        const char *raw;
        int status;
        const char *code;
    } cases[] = {
        {"FOO /hello HTTP/1.1\r\nHost: t\r\n\r\n", 501, "not_implemented"},
        {"OPTIONS * HTTP/1.1\r\nHost: t\r\n\r\n", 400, "invalid_argument"}, /* asterisk-form */
        {"GET /hello HTTP/2.0\r\nHost: t\r\n\r\n", 505, "not_implemented"},
        {"GET /hello HTTP/1.1\r\n\r\n", 400, "invalid_argument"}, /* no Host */
        {"GET /hello HTTP/1.1\r\nHost: t\r\nBad Name: x\r\n\r\n", 400, "invalid_argument"},
        {"GET /hello HTTP/1.1\r\nHost: t\r\nX-A : x\r\n\r\n", 400, "invalid_argument"},
        {"GET /hello HTTP/1.1\r\nHost: t\r\nX-A: x\r\n folded\r\n\r\n", 400, "invalid_argument"},
        {"GET  /hello HTTP/1.1\r\nHost: t\r\n\r\n", 400, "invalid_argument"},
        {"GET hello HTTP/1.1\r\nHost: t\r\n\r\n", 400, "invalid_argument"},
        {"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: -1\r\n\r\n", 400, "invalid_argument"},
        {"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nab", 400,
         "invalid_argument"},
        {"POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: 3\r\n"
         "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
         400, "invalid_argument"},
        {"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: gzip\r\n\r\n", 501,
         "not_implemented"},
        {"POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", 400,
         "invalid_argument"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct conn c;
        conn_open(&c);
        conn_send_str(&c, cases[i].raw);
        struct resp r;
        ck_assert_msg(read_response(&c, &r, false), "case %zu: no response", i);
        ck_assert_msg(r.status == cases[i].status, "case %zu: status %d", i, r.status);
        assert_json_error(&r, cases[i].status, cases[i].code);
        char v[64];
        ck_assert(resp_header(&r, "Connection", v, sizeof(v)));
        ck_assert_str_eq(v, "close");
        ck_assert(resp_header(&r, "X-Request-Id", v, sizeof(v)));
        resp_free(&r);
        ck_assert_msg(conn_closed_by_peer(&c), "case %zu: connection left open", i);
        close(c.fd);
    }
    char *m = fetch_metrics();
    /* The malformed chunked body came with a routed head: it counts under its route. */
    ck_assert_msg(
        has_line(m,
                 "mbox_http_requests_total{server=\"test\",route=\"unmatched\",status=\"400\"} 10"),
        "%s", m);
    ck_assert_msg(
        has_line(m, "mbox_http_requests_total{server=\"test\",route=\"/body\",status=\"400\"} 1"),
        "%s", m);
    ck_assert(has_line(
        m, "mbox_http_requests_total{server=\"test\",route=\"unmatched\",status=\"501\"} 2"));
    free(m);
    /* The server is fine afterwards. */
    struct resp r;
    exchange("GET", "/hello", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
}
END_TEST

START_TEST(test_http10)
{
    /* HTTP/1.0 closes after the reply unless asked to keep the connection. */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "GET /hello HTTP/1.0\r\n\r\n");
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "{\"hello\":\"world\"}");
    resp_free(&r);
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);

    conn_open(&c);
    for (int i = 0; i < 2; i++) {
        conn_send_str(&c, "GET /hello HTTP/1.0\r\nConnection: keep-alive\r\n\r\n");
        ck_assert(read_response(&c, &r, false));
        ck_assert_int_eq(r.status, 200);
        char v[64];
        ck_assert(resp_header(&r, "Connection", v, sizeof(v)));
        ck_assert_str_eq(v, "keep-alive");
        resp_free(&r);
    }
    close(c.fd);
}
END_TEST

START_TEST(test_target_forms)
{
    struct resp r;
    raw_exchange("GET http://t/items/7?x=1 HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &r);
    ck_assert_int_eq(r.status, 200);
    json_t *j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "7");
    json_decref(j);
    resp_free(&r);

    /* Empty lines before a request line are ignored. */
    raw_exchange("\r\n\r\nGET /hello HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n", &r);
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);

    /* Bare LF line ends. */
    raw_exchange("GET /echo?q=1 HTTP/1.1\nHost: t\nX-Test: lf\nConnection: close\n\n", &r);
    ck_assert_int_eq(r.status, 200);
    j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "h")), "lf");
    json_decref(j);
    resp_free(&r);
}
END_TEST

START_TEST(test_expect_continue)
{
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "POST /body HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                      "Content-Length: 5\r\n\r\n");
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 100);
    resp_free(&r);
    conn_send_str(&c, "hello");
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "hello");
    resp_free(&r);
    close(c.fd);

    /* Over the cap: the final 413 instead of a 100, and no wait for a body. */
    conn_open(&c);
    conn_send_str(&c, "POST /body HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\n"
                      "Content-Length: 100000\r\n\r\n");
    ck_assert(read_response(&c, &r, false));
    assert_json_error(&r, 413, "too_large");
    resp_free(&r);
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);
}
END_TEST

START_TEST(test_pipelined_burst)
{
    /* 200 requests in one write, sync and deferred mixed: answers in order. */
    enum { N = 200 };
    size_t cap = N * 128, len = 0;
    char *all = malloc(cap);
    for (int i = 0; i < N; i++) {
        if (i % 3 == 0)
            len += (size_t)snprintf(all + len, cap - len,
                                    "GET /items/%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
        else if (i % 3 == 1)
            len +=
                (size_t)snprintf(all + len, cap - len,
                                 "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n%d",
                                 i < 10    ? 1
                                 : i < 100 ? 2
                                           : 3,
                                 i);
        else
            len += (size_t)snprintf(all + len, cap - len, "GET /async HTTP/1.1\r\nHost: t\r\n\r\n");
    }
    struct conn c;
    conn_open(&c);
    conn_send(&c, all, len);
    free(all);
    for (int i = 0; i < N; i++) {
        struct resp r;
        ck_assert_msg(read_response(&c, &r, false), "reply %d missing", i);
        ck_assert_int_eq(r.status, 200);
        char want[64];
        if (i % 3 == 0) {
            json_t *j = resp_json(&r);
            snprintf(want, sizeof(want), "%d", i);
            ck_assert_str_eq(json_string_value(json_object_get(j, "id")), want);
            json_decref(j);
        } else if (i % 3 == 1) {
            snprintf(want, sizeof(want), "%d", i);
            ck_assert_str_eq(r.body, want);
        } else {
            ck_assert_str_eq(r.body, "{\"async\":true,\"tag\":\"deferred\"}");
        }
        resp_free(&r);
    }
    close(c.fd);
}
END_TEST

START_TEST(test_byte_at_a_time)
{
    struct conn c;
    conn_open(&c);
    int one = 1;
    setsockopt(c.fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    const char *req = "POST /body HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
                      "3\r\nabc\r\n2;ext=1\r\nde\r\n0\r\nX-Trailer: 1\r\n\r\n";
    for (const char *p = req; *p; p++) {
        conn_send(&c, p, 1);
        usleep(1000);
    }
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    ck_assert_str_eq(r.body, "abcde");
    resp_free(&r);
    close(c.fd);
}
END_TEST

START_TEST(test_slow_reader)
{
    /* The reply does not fit the socket buffers: it is queued and written
     * as the client reads; a request pipelined behind it waits its turn. */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c,
                  "GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /items/3 HTTP/1.1\r\nHost: t\r\n\r\n");
    usleep(300000);
    char *got = malloc(BIG_LEN + 65536);
    size_t have = 0;
    char *eoh = NULL;
    while (eoh == NULL) {
        ssize_t n = recv(c.fd, got + have, 65536, 0);
        ck_assert_int_gt(n, 0);
        have += (size_t)n;
        got[have] = '\0';
        eoh = strstr(got, "\r\n\r\n");
    }
    ck_assert(strncmp(got, "HTTP/1.1 200 ", 13) == 0);
    size_t hlen = (size_t)(eoh - got) + 4;
    while (have < hlen + BIG_LEN) {
        ssize_t n = recv(c.fd, got + have, hlen + BIG_LEN - have, 0);
        ck_assert_int_gt(n, 0);
        have += (size_t)n;
    }
    for (size_t i = 0; i < BIG_LEN; i += 4093)
        ck_assert_int_eq(got[hlen + i], 'a' + (int)(i % 26));
    free(got);
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    json_t *j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "3");
    json_decref(j);
    resp_free(&r);
    close(c.fd);
}
END_TEST

START_TEST(test_half_close)
{
    /* A client that shuts its sending side after the request still gets a
     * reply that is ready at once. */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    shutdown(c.fd, SHUT_WR);
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);
}
END_TEST

START_TEST(test_idle_timeout)
{
    /* timeout_s = 1: an idle connection and a half-sent head are closed. */
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct conn idle, partial;
    conn_open(&idle);
    conn_open(&partial);
    conn_send_str(&partial, "GET /hello HTTP/1.1\r\nHo");
    ck_assert(conn_closed_by_peer(&idle));
    ck_assert(conn_closed_by_peer(&partial));
    clock_gettime(CLOCK_MONOTONIC, &t1);
    long ms = (t1.tv_sec - t0.tv_sec) * 1000 + (t1.tv_nsec - t0.tv_nsec) / 1000000;
    ck_assert_int_ge(ms, 900);
    ck_assert_int_le(ms, 3000);
    close(idle.fd);
    close(partial.fd);
}
END_TEST

START_TEST(test_pipeline_over_buffer)
{
    /* More pipelined bytes than a connection buffers (head + body cap +
     * 16 KiB): reading pauses on the full buffer and resumes as the
     * synchronous replies make room. */
    enum { N = 40, BODY = 1000 };
    size_t cap = N * (BODY + 128), len = 0;
    char *all = malloc(cap);
    for (int i = 0; i < N; i++) {
        len +=
            (size_t)snprintf(all + len, cap - len,
                             "POST /body HTTP/1.1\r\nHost: t\r\nContent-Length: %d\r\n\r\n", BODY);
        memset(all + len, 'a' + i % 26, BODY);
        len += BODY;
    }
    struct conn c;
    conn_open(&c);
    conn_send(&c, all, len);
    free(all);
    for (int i = 0; i < N; i++) {
        struct resp r;
        ck_assert_msg(read_response(&c, &r, false), "reply %d missing", i);
        ck_assert_int_eq(r.status, 200);
        ck_assert_uint_eq(r.body_len, BODY);
        ck_assert_int_eq(r.body[0], 'a' + i % 26);
        resp_free(&r);
    }
    close(c.fd);
}
END_TEST

START_TEST(test_half_close_pipelined)
{
    /* Requests buffered behind a reply still being written are answered
     * after the client shut its sending side; then the server closes. */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c,
                  "GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /items/4 HTTP/1.1\r\nHost: t\r\n\r\n");
    shutdown(c.fd, SHUT_WR);
    usleep(100000);
    struct resp r;
    static char big[BIG_LEN + 8192];
    size_t have = 0;
    char *eoh = NULL;
    while (eoh == NULL || have < (size_t)(eoh - big) + 4 + BIG_LEN) {
        ssize_t n = recv(c.fd, big + have, sizeof(big) - have, 0);
        ck_assert_int_gt(n, 0);
        have += (size_t)n;
        if (eoh == NULL)
            eoh = memmem(big, have, "\r\n\r\n", 4);
    }
    size_t used = (size_t)(eoh - big) + 4 + BIG_LEN;
    memcpy(c.buf, big + used, have - used);
    c.len = have - used;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    json_t *j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "4");
    json_decref(j);
    resp_free(&r);
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);

    /* A burst of complete requests, then the half-close: every one answered. */
    conn_open(&c);
    char burst[8192];
    size_t len = 0;
    for (int i = 0; i < 100; i++)
        len += (size_t)snprintf(burst + len, sizeof(burst) - len,
                                "GET /items/%d HTTP/1.1\r\nHost: t\r\n\r\n", i);
    conn_send(&c, burst, len);
    shutdown(c.fd, SHUT_WR);
    for (int i = 0; i < 100; i++) {
        ck_assert_msg(read_response(&c, &r, false), "reply %d missing", i);
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
    }
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);
}
END_TEST

/* Sends request on c and asserts the status of its reply. */
static void
roundtrip(struct conn *c, const char *request, int status)
{
    struct resp r;
    conn_send_str(c, request);
    ck_assert(read_response(c, &r, false));
    ck_assert_int_eq(r.status, status);
    resp_free(&r);
}

/* ---- hardening: deadlines, the connection cap, the precheck, linear consumption ---- */

static long
ms_since(const struct timespec *t0)
{
    struct timespec t1;
    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Sends one byte every step_ms until the server answers or closes; returns
 * the status of its answer (0 when it closed without one). */
static int
trickle_until_cut(struct conn *c, const char *bytes, int step_ms)
{
    for (size_t i = 0; bytes[i] != '\0'; i++) {
        if (send(c->fd, bytes + i, 1, MSG_NOSIGNAL) != 1)
            break;
        struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
        if (poll(&pfd, 1, step_ms) > 0)
            break;
    }
    struct resp r;
    if (!read_response(c, &r, false))
        return 0;
    int status = r.status;
    resp_free(&r);
    return status;
}

START_TEST(test_head_deadline)
{
    /* Regression: the idle timeout (10 s) restarted on every byte, so a head
     * trickled one byte at a time was never cut. head_timeout_s = 1 ends it
     * with 408 within about 2 s, although bytes keep coming. */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct conn c;
    conn_open(&c);
    int status = trickle_until_cut(
        &c,
        "GET /hello HTTP/1.1\r\nHost: t\r\nX-Padding: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n\r\n",
        200);
    long ms = ms_since(&t0);
    ck_assert_int_eq(status, 408);
    ck_assert_msg(ms >= 900 && ms <= 3500, "cut after %ld ms", ms);
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);

    /* A keep-alive connection: the clock of the second head starts at its
     * first byte, not at the accept. */
    conn_open(&c);
    conn_send_str(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    usleep(1500 * 1000); /* idle longer than the head deadline: allowed */
    roundtrip(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", 200);
    close(c.fd);

    /* Regression: a CRLF after a body (RFC 9112 2.2 lets a client send one)
     * started the clock of a head that never came: an idle connection got
     * an unasked-for 408 after head_timeout_s. */
    conn_open(&c);
    roundtrip(&c,
              "POST /sink HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer good\r\n"
              "Content-Length: 2\r\n\r\nab\r\n",
              200);
    struct pollfd pfd = {.fd = c.fd, .events = POLLIN};
    ck_assert_int_eq(poll(&pfd, 1, 2500), 0); /* nothing comes while idle */
    roundtrip(&c, "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", 200);
    close(c.fd);
}
END_TEST

START_TEST(test_min_body_rate)
{
    /* A body dribbled at 50 B/s against a minimum of 1000 B/s is cut with
     * 408 once the grace (head_timeout_s = 1) is over. */
    struct timespec t0;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "POST /sink HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer good\r\n"
                      "Content-Length: 100000\r\n\r\n");
    char dribble[200];
    memset(dribble, 'x', sizeof(dribble) - 1);
    dribble[sizeof(dribble) - 1] = '\0';
    int status = trickle_until_cut(&c, dribble, 20);
    long ms = ms_since(&t0);
    ck_assert_int_eq(status, 408);
    ck_assert_msg(ms >= 900 && ms <= 3500, "cut after %ld ms", ms);
    close(c.fd);

    /* A body at full speed is not affected. */
    conn_open(&c);
    static char body[100000];
    memset(body, 'y', sizeof(body));
    conn_send_str(&c, "POST /sink HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer good\r\n"
                      "Content-Length: 100000\r\n\r\n");
    conn_send(&c, body, sizeof(body));
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    close(c.fd);
}
END_TEST

/* Counts the lines of text holding needle. */
static int
count_lines_with(const char *text, const char *needle)
{
    int n = 0;
    for (const char *p = text; (p = strstr(p, needle)) != NULL; p += strlen(needle))
        n++;
    return n;
}

START_TEST(test_connection_cap)
{
    /* gate.max = 3: three connections are served, more get a canned 503
     * and are closed, and the refusals make one log line, not one each. */
    char logpath[] = "/tmp/test_http_log_XXXXXX";
    int logfd = mkstemp(logpath);
    ck_assert_int_ge(logfd, 0);
    int saved_stderr = dup(2);
    dup2(logfd, 2);

    struct conn held[3];
    for (int i = 0; i < 3; i++) {
        conn_open(&held[i]);
        conn_send_str(&held[i], "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
        struct resp r;
        ck_assert(read_response(&held[i], &r, false));
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
    }
    for (int i = 0; i < 50; i++) {
        struct conn extra;
        conn_open(&extra);
        struct resp r;
        ck_assert_msg(read_response(&extra, &r, false), "refusal %d: no reply", i);
        ck_assert_int_eq(r.status, 503);
        assert_json_error(&r, 503, "unavailable");
        resp_free(&r);
        ck_assert(conn_closed_by_peer(&extra));
        close(extra.fd);
    }
    ck_assert_int_eq(atomic_load(&g_gate.open), 3);
    /* A place freed is a place taken again. */
    close(held[0].fd);
    usleep(100 * 1000);
    ck_assert_int_eq(atomic_load(&g_gate.open), 2);
    conn_open(&held[0]);
    conn_send_str(&held[0], "GET /hello HTTP/1.1\r\nHost: t\r\n\r\n");
    struct resp r;
    ck_assert(read_response(&held[0], &r, false));
    ck_assert_int_eq(r.status, 200);
    resp_free(&r);
    for (int i = 0; i < 3; i++)
        close(held[i].fd);

    fflush(stderr);
    dup2(saved_stderr, 2);
    close(saved_stderr);
    char logtext[65536];
    ssize_t n = pread(logfd, logtext, sizeof(logtext) - 1, 0);
    close(logfd);
    unlink(logpath);
    ck_assert_int_ge(n, 0);
    logtext[n] = '\0';
    ck_assert_msg(count_lines_with(logtext, "event=http_connections_refused") == 1, "%s", logtext);
    char *m = fetch_metrics();
    ck_assert_msg(
        has_line(m, "mbox_http_connections_refused_total{server=\"test\",reason=\"cap\"} 50"), "%s",
        m);
    free(m);
}
END_TEST

START_TEST(test_precheck_before_body)
{
    /* Regression: a body was buffered whole before any credential was
     * looked at. Now a request with a body and no good credential gets 401
     * as soon as its head is in, and the body is never sent. */
    static const char *const heads[] = {
        "POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 900000\r\n\r\n",
        "POST /sink HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer bad\r\n"
        "Content-Length: 900000\r\n\r\n",
        "POST /sink HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer bad\r\n"
        "Transfer-Encoding: chunked\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        struct conn c;
        conn_open(&c);
        conn_send_str(&c, heads[i]);
        struct resp r;
        ck_assert_msg(read_response(&c, &r, false), "case %zu: no reply", i);
        ck_assert_int_eq(r.status, 401);
        assert_json_error(&r, 401, "unauthenticated");
        ck_assert_ptr_nonnull(strstr(r.body, "not good"));
        resp_free(&r);
        ck_assert(conn_closed_by_peer(&c));
        close(c.fd);
    }
    /* Same for a body sent to a path with no route (404) or method (405). */
    struct conn c;
    conn_open(&c);
    conn_send_str(&c, "POST /nowhere HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer good\r\n"
                      "Content-Length: 900000\r\n\r\n");
    struct resp r;
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    ck_assert(conn_closed_by_peer(&c));
    close(c.fd);
    conn_open(&c);
    conn_send_str(&c, "PUT /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 900000\r\n\r\n");
    ck_assert(read_response(&c, &r, false));
    ck_assert_int_eq(r.status, 405);
    char allow[64];
    ck_assert(resp_header(&r, "Allow", allow, sizeof(allow)));
    ck_assert_str_eq(allow, "POST");
    resp_free(&r);
    close(c.fd);
    /* Without a body the handler decides (it answers with or without a token). */
    conn_open(&c);
    roundtrip(&c, "POST /sink HTTP/1.1\r\nHost: t\r\nContent-Length: 0\r\n\r\n", 200);
    close(c.fd);
}
END_TEST

START_TEST(test_raw_path_routing)
{
    /* Regression: the path was decoded before routing, so "/hell%6f" was
     * "/hello" and "/items/1%2Fx" a two-segment path. */
    struct resp r;
    exchange("GET", "/hell%6f", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
    exchange("GET", "/items/1%2Fx", NULL, NULL, &r);
    assert_json_error(&r, 400, "invalid_argument");
    resp_free(&r);
    exchange("GET", "/items/1%2fx", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 400);
    resp_free(&r);
    exchange("GET", "/items/1%00", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 400);
    resp_free(&r);
    exchange("GET", "/items/%31%32", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    json_t *j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "12");
    json_decref(j);
    resp_free(&r);
}
END_TEST

struct pipe_sender {
    int fd;
    const char *data;
    size_t len;
};

static void *
pipe_send_thread(void *arg)
{
    struct pipe_sender *ps = arg;
    size_t off = 0;
    while (off < ps->len) {
        ssize_t n = send(ps->fd, ps->data + off, ps->len - off, MSG_NOSIGNAL);
        if (n <= 0)
            break;
        off += (size_t)n;
    }
    return NULL;
}

/*
 * Sends a 2 MiB body to /sink, then n copies of tiny pipelined behind it,
 * all in one go, reads every reply, and returns the bytes the server
 * moved inside its buffers against the bytes sent (*sent).
 */
static uint64_t
pipeline_after_big_body(const char *tiny, int n, size_t *sent)
{
    enum { BODY = 2 << 20 };
    size_t tl = strlen(tiny);
    char head[128];
    int hl = snprintf(head, sizeof(head),
                      "POST /sink HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer good\r\n"
                      "Content-Length: %d\r\n\r\n",
                      BODY);
    size_t total = (size_t)hl + BODY + (size_t)n * tl;
    char *all = malloc(total);
    ck_assert_ptr_nonnull(all);
    memcpy(all, head, (size_t)hl);
    memset(all + hl, 'z', BODY);
    for (int i = 0; i < n; i++)
        memcpy(all + hl + BODY + (size_t)i * tl, tiny, tl);
    struct conn c;
    conn_open(&c);
    struct pipe_sender ps = {c.fd, all, total};
    pthread_t th;
    ck_assert_int_eq(pthread_create(&th, NULL, pipe_send_thread, &ps), 0);
    struct resp r;
    for (int i = 0; i <= n; i++) {
        ck_assert_msg(read_response(&c, &r, false), "reply %d missing", i);
        ck_assert_int_eq(r.status, 200);
        resp_free(&r);
    }
    pthread_join(th, NULL);
    close(c.fd);
    free(all);
    halt_server_loop();
    *sent = total;
    return http_server_bytes_moved(srv.http);
}

START_TEST(test_pipeline_linear)
{
    /* Regression: each request taken from the buffer moved everything
     * behind it to the front, so tiny requests pipelined behind a large
     * body cost a move of the whole rest each (quadratic). Bytes moved now
     * stay within the bytes received. */
    size_t sent;
    uint64_t moved =
        pipeline_after_big_body("GET /hello HTTP/1.1\r\nHost: t\r\n\r\n", 20000, &sent);
    ck_assert_msg(moved <= sent, "moved %llu bytes for %zu received", (unsigned long long)moved,
                  sent);
}
END_TEST

START_TEST(test_pipeline_linear_chunked)
{
    /* Regression: the chunked decoder closed the gap left by the framing
     * by moving everything buffered after a complete body, so pipelined
     * chunked requests were quadratic too. */
    size_t sent;
    uint64_t moved =
        pipeline_after_big_body("POST /sink HTTP/1.1\r\nHost: t\r\nAuthorization: Bearer good\r\n"
                                "Transfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n\r\n",
                                20000, &sent);
    ck_assert_msg(moved <= 2 * sent, "moved %llu bytes for %zu received", (unsigned long long)moved,
                  sent);
}
END_TEST

START_TEST(test_cors)
{
    /* No policy on this server yet: OPTIONS is 405 (404 on an unknown path)
     * and no reply carries CORS headers. */
    struct resp r;
    exchange("OPTIONS", "/sink",
             "Origin: http://app.example\r\n"
             "Access-Control-Request-Method: POST\r\n",
             NULL, &r);
    ck_assert_int_eq(r.status, 405);
    char v[256];
    ck_assert(!resp_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    resp_free(&r);
    exchange("OPTIONS", "/nowhere", NULL, NULL, &r);
    ck_assert_int_eq(r.status, 404);
    resp_free(&r);
}
END_TEST

static const char *const cors_origins[] = {"http://app.example", "https://b.example:8443"};
static const struct http_cors cors_policy = {
    .origins = cors_origins,
    .norigins = 2,
    .allow_headers = "Authorization, Content-Type",
    .max_age_s = 600,
};

/* Sets the server's CORS policy with its loop stopped (no data race). */
static void
set_cors(const struct http_cors *cors)
{
    halt_server_loop();
    http_server_set_cors(srv.http, cors);
    srv.stopped = false;
    ck_assert_int_eq(pthread_create(&srv.thread, NULL, server_thread, &srv), 0);
}

/* The client= of /echo for extra headers; caller frees nothing. */
static const char *
echo_client(const char *headers, char *out, size_t outlen)
{
    struct resp r;
    exchange("GET", "/echo", headers, NULL, &r);
    ck_assert_int_eq(r.status, 200);
    json_t *j = resp_json(&r);
    snprintf(out, outlen, "%s", json_string_value(json_object_get(j, "client")));
    json_decref(j);
    resp_free(&r);
    return out;
}

START_TEST(test_request_id_and_client)
{
    /* A valid X-Request-Id is kept and returned; an invalid one is replaced. */
    struct resp r;
    exchange("GET", "/echo", "X-Request-Id: edge-42.A_b\r\n", NULL, &r);
    char v[128];
    ck_assert(resp_header(&r, "X-Request-Id", v, sizeof(v)));
    ck_assert_str_eq(v, "edge-42.A_b");
    json_t *j = resp_json(&r);
    ck_assert_str_eq(json_string_value(json_object_get(j, "id")), "edge-42.A_b");
    json_decref(j);
    resp_free(&r);
    char longid[HTTP_REQ_ID_MAX + 32];
    memset(longid, 'a', HTTP_REQ_ID_MAX);
    strcpy(longid + HTTP_REQ_ID_MAX, "\r\n");
    char hdr[256];
    snprintf(hdr, sizeof(hdr), "X-Request-Id: %s", longid);
    exchange("GET", "/echo", hdr, NULL, &r);
    ck_assert(resp_header(&r, "X-Request-Id", v, sizeof(v)));
    ck_assert_uint_eq(strlen(v), HTTP_REQ_ID_MAX);
    resp_free(&r);
    const char *bad[] = {"X-Request-Id: a b\r\n", "X-Request-Id: \"quoted\"\r\n",
                         "X-Request-Id: x;y\r\n"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        exchange("GET", "/echo", bad[i], NULL, &r);
        ck_assert(resp_header(&r, "X-Request-Id", v, sizeof(v)));
        ck_assert_msg(is_request_id(v), "kept a bad id: %s", v);
        resp_free(&r);
    }
    snprintf(hdr, sizeof(hdr), "X-Request-Id: a%s", longid); /* one too long */
    exchange("GET", "/echo", hdr, NULL, &r);
    ck_assert(resp_header(&r, "X-Request-Id", v, sizeof(v)));
    ck_assert(is_request_id(v));
    resp_free(&r);
    ck_assert(http_request_id_valid("abc", 3));
    ck_assert(!http_request_id_valid("", 0));
    ck_assert(!http_request_id_valid("a/b", 3));

    /* No trusted proxy: X-Forwarded-For is ignored. */
    char c[64];
    ck_assert_str_eq(echo_client(NULL, c, sizeof(c)), "127.0.0.1");
    ck_assert_str_eq(echo_client("X-Forwarded-For: 6.6.6.6\r\n", c, sizeof(c)), "127.0.0.1");

    /* The test client (127.0.0.1) as a trusted proxy: the right-most untrusted entry. */
    static struct xff_trust trust;
    char err[128];
    ck_assert(xff_trust_parse("127.0.0.0/8", &trust, err, sizeof(err)));
    halt_server_loop();
    http_server_set_trusted_proxies(srv.http, &trust);
    srv.stopped = false;
    ck_assert_int_eq(pthread_create(&srv.thread, NULL, server_thread, &srv), 0);
    ck_assert_str_eq(
        echo_client("X-Forwarded-For: 6.6.6.6, 203.0.113.5, 127.0.0.9\r\n", c, sizeof(c)),
        "203.0.113.5");
    ck_assert_str_eq(echo_client("X-Forwarded-For: [2001:db8::1]:443\r\n", c, sizeof(c)),
                     "2001:db8::1");
    /* Malformed, repeated or absent: the peer. */
    ck_assert_str_eq(echo_client("X-Forwarded-For: nonsense\r\n", c, sizeof(c)), "127.0.0.1");
    ck_assert_str_eq(
        echo_client("X-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\n", c, sizeof(c)),
        "127.0.0.1");
    ck_assert_str_eq(echo_client(NULL, c, sizeof(c)), "127.0.0.1");
}
END_TEST

START_TEST(test_cors_policy)
{
    set_cors(&cors_policy);
    /* A preflight from an allowed origin: 204 with what it may do. */
    struct resp r;
    char v[256];
    exchange("OPTIONS", "/sink",
             "Origin: http://app.example\r\n"
             "Access-Control-Request-Method: POST\r\n"
             "Access-Control-Request-Headers: authorization\r\n",
             NULL, &r);
    ck_assert_int_eq(r.status, 204);
    ck_assert(resp_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    ck_assert_str_eq(v, "http://app.example");
    ck_assert(resp_header(&r, "Access-Control-Allow-Methods", v, sizeof(v)));
    ck_assert_str_eq(v, "POST");
    ck_assert(resp_header(&r, "Access-Control-Allow-Headers", v, sizeof(v)));
    ck_assert_str_eq(v, "Authorization, Content-Type");
    ck_assert(resp_header(&r, "Access-Control-Max-Age", v, sizeof(v)));
    ck_assert_str_eq(v, "600");
    ck_assert(resp_header(&r, "Vary", v, sizeof(v)));
    resp_free(&r);
    /* Every reply to that origin, errors included, says it may read it. */
    exchange("GET", "/items/7", "Origin: https://b.example:8443\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert(resp_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    ck_assert_str_eq(v, "https://b.example:8443");
    ck_assert(resp_header(&r, "Access-Control-Expose-Headers", v, sizeof(v)));
    resp_free(&r);
    exchange("GET", "/nowhere", "Origin: http://app.example\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 404);
    ck_assert(resp_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    resp_free(&r);
    /* Other origins get nothing: no preflight, no headers. */
    exchange("OPTIONS", "/sink",
             "Origin: http://evil.example\r\n"
             "Access-Control-Request-Method: POST\r\n",
             NULL, &r);
    ck_assert_int_eq(r.status, 405);
    ck_assert(!resp_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    resp_free(&r);
    exchange("GET", "/items/7", "Origin: http://app.example.evil\r\n", NULL, &r);
    ck_assert_int_eq(r.status, 200);
    ck_assert(!resp_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    resp_free(&r);
    /* "*" allows any origin. */
    static const struct http_cors any = {.any = true, .max_age_s = 60};
    set_cors(&any);
    exchange("GET", "/items/7", "Origin: http://whoever.example\r\n", NULL, &r);
    ck_assert(resp_header(&r, "Access-Control-Allow-Origin", v, sizeof(v)));
    ck_assert_str_eq(v, "*");
    resp_free(&r);
}
END_TEST

static void
setup_hardened(void)
{
    __atomic_store_n(&g_async_replies, 0, __ATOMIC_SEQ_CST);
    atomic_store(&g_gate.open, 0);
    g_gate.max = 3;
    struct http_limits limits = {
        .max_body = 4 << 20,
        .max_headers = 4096,
        .timeout_s = 10,
        .head_timeout_s = 1,
        .min_body_rate = 1000,
        .gate = &g_gate,
    };
    start_server_limits(&limits, precheck_good);
}

static void
setup(void)
{
    __atomic_store_n(&g_async_replies, 0, __ATOMIC_SEQ_CST);
    start_server();
}

static void
setup_short_timeout(void)
{
    __atomic_store_n(&g_async_replies, 0, __ATOMIC_SEQ_CST);
    start_server_with(1);
}

static void
teardown(void)
{
    stop_server();
}

/* ---- server construction errors ---- */

static void
h_never(struct http_req *r, void *ctx)
{
    (void)ctx;
    http_reply(r, 500, NULL, NULL, 0);
}

/* True when fd is no longer open. */
static bool
fd_closed(int fd)
{
    return fcntl(fd, F_GETFD) == -1 && errno == EBADF;
}

START_TEST(test_server_new_rejects)
{
    struct event_base *base = event_base_new();
    struct http_limits ok = {.max_body = 100, .max_headers = 100, .timeout_s = 5};
    struct http_limits bad = {.max_body = 100, .max_headers = 100, .timeout_s = 0};
    static const struct http_route no_slash[] = {{HTTP_GET, "x", h_never}};
    static const struct http_route no_fn[] = {{HTTP_GET, "/x", NULL}};
    static const struct http_route no_method[] = {{0, "/x", h_never}};
    static const struct http_route half_brace[] = {{HTTP_GET, "/x{id}", h_never}};
    static const struct http_route too_many[] = {
        {HTTP_GET, "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}/{i}", h_never}};
    static const struct http_route good[] = {
        {HTTP_GET, "/{a}/{b}/{c}/{d}/{e}/{f}/{g}/{h}", h_never}};
    struct {
        const struct http_route *routes;
        const struct http_limits *limits;
    } cases[] = {{no_slash, &ok},   {no_fn, &ok},    {no_method, &ok},
                 {half_brace, &ok}, {too_many, &ok}, {good, &bad}};
    char err[256];
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int fd = http_listen("127.0.0.1", 0, err, sizeof(err));
        ck_assert_int_ge(fd, 0);
        err[0] = '\0';
        struct http_server *s = http_server_new(base, fd, "x", cases[i].routes, 1, cases[i].limits,
                                                NULL, NULL, err, sizeof(err));
        ck_assert_msg(s == NULL, "case %zu accepted", i);
        ck_assert_msg(err[0] != '\0', "case %zu: no message", i);
        ck_assert_msg(fd_closed(fd), "case %zu: fd left open", i);
    }
    int fd = http_listen("127.0.0.1", 0, err, sizeof(err));
    struct http_server *s =
        http_server_new(base, fd, NULL, good, 1, &ok, NULL, NULL, err, sizeof(err));
    ck_assert_msg(s != NULL, "%s", err);
    http_server_free(s);
    ck_assert(fd_closed(fd));
    http_server_free(NULL);
    event_base_free(base);
}
END_TEST

static Suite *
http_suite(void)
{
    Suite *s = suite_create("http");
    TCase *tc = tcase_create("pure");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_match_literals);
    tcase_add_test(tc, test_match_params);
    tcase_add_test(tc, test_match_limits);
    tcase_add_test(tc, test_bearer);
    tcase_add_test(tc, test_status_code_names);
    tcase_add_test(tc, test_listen);
    tcase_add_test(tc, test_server_new_rejects);
    suite_add_tcase(s, tc);

    tc = tcase_create("server");
    tcase_set_timeout(tc, 30);
    tcase_add_checked_fixture(tc, setup, teardown);
    tcase_add_test(tc, test_sync_json);
    tcase_add_test(tc, test_head_and_204);
    tcase_add_test(tc, test_not_found);
    tcase_add_test(tc, test_method_not_allowed);
    tcase_add_test(tc, test_params);
    tcase_add_test(tc, test_query_and_headers);
    tcase_add_test(tc, test_body_echo);
    tcase_add_test(tc, test_body_too_large);
    tcase_add_test(tc, test_error_replies);
    tcase_add_test(tc, test_keepalive);
    tcase_add_test(tc, test_async_reply);
    tcase_add_test(tc, test_async_client_gone);
    tcase_add_test(tc, test_async_client_gone_immediately);
    tcase_add_test(tc, test_pipelined_while_pending);
    tcase_add_test(tc, test_metrics_counted);
    tcase_add_test(tc, test_oversized_headers);
    tcase_add_test(tc, test_server_freed_with_pending_request);
    tcase_add_test(tc, test_refusals);
    tcase_add_test(tc, test_http10);
    tcase_add_test(tc, test_target_forms);
    tcase_add_test(tc, test_expect_continue);
    tcase_add_test(tc, test_pipelined_burst);
    tcase_add_test(tc, test_byte_at_a_time);
    tcase_add_test(tc, test_slow_reader);
    tcase_add_test(tc, test_half_close);
    tcase_add_test(tc, test_pipeline_over_buffer);
    tcase_add_test(tc, test_half_close_pipelined);
    suite_add_tcase(s, tc);

    tc = tcase_create("deadline");
    tcase_set_timeout(tc, 30);
    tcase_add_checked_fixture(tc, setup_short_timeout, teardown);
    tcase_add_test(tc, test_pending_past_timeout);
    tcase_add_test(tc, test_idle_timeout);
    suite_add_tcase(s, tc);

    tc = tcase_create("hardened");
    tcase_set_timeout(tc, 60);
    tcase_add_checked_fixture(tc, setup_hardened, teardown);
    tcase_add_test(tc, test_head_deadline);
    tcase_add_test(tc, test_min_body_rate);
    tcase_add_test(tc, test_connection_cap);
    tcase_add_test(tc, test_precheck_before_body);
    tcase_add_test(tc, test_raw_path_routing);
    tcase_add_test(tc, test_pipeline_linear);
    tcase_add_test(tc, test_pipeline_linear_chunked);
    tcase_add_test(tc, test_cors);
    tcase_add_test(tc, test_cors_policy);
    tcase_add_test(tc, test_request_id_and_client);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    /* A daemon's duty (see http.h); the client here uses MSG_NOSIGNAL. */
    signal(SIGPIPE, SIG_IGN);
    /* event_base_loopexit() from the test thread needs a thread-aware base. */
    if (evthread_use_pthreads() != 0)
        return EXIT_FAILURE;
    SRunner *sr = srunner_create(http_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
