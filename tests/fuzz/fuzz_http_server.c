/*
 * fuzz_http_server: lib/http's connection loop fed arbitrary bytes over a
 * real loopback connection: buffering, framing (Content-Length and chunked,
 * decoded in place), pipelining, refusals, replies written while more
 * requests arrive, handlers that reply later, and the client leaving.
 *
 * One server lives for the whole run on an event_base driven by hand. Each
 * input is written on a new connection (in pieces whose sizes come from the
 * input's first byte), the client then shuts its sending side, and the loop
 * runs until the server closes the connection. Checks: the server closes
 * it within a bounded number of loop turns; everything it sent is a
 * sequence of well-formed responses ("HTTP/1.1 <3 digits> ", a head ending
 * in an empty line, exactly Content-Length body bytes); handlers see a
 * NUL-terminated body; the bytes the server moved inside its buffers never
 * exceed the bytes it was sent (consumption is linear); no connection is
 * left behind (ASan's leak check runs at exit). A precheck refuses bodies
 * sent with "Authorization: Bearer deny", and a connection cap is set, so
 * those paths run too. The fuzzer's own address is a trusted proxy, so
 * X-Forwarded-For and X-Request-Id are read from every request: the echo
 * handler checks that the client is an address (or the peer) and the id a
 * valid one.
 */
#include <errno.h>
#include <netinet/in.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/event.h>

#include "http.h"
#include "xff.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define INPUT_MAX 65536
#define TURNS_MAX 20000

static struct event_base *g_base;
static struct http_server *g_server;
static int g_port;
static struct http_gate g_gate = {.max = 4};
static uint64_t g_bytes_sent; /* over the whole run */

static const char *
precheck(const struct http_route *route, const char *bearer, void *ctx)
{
    (void)route;
    (void)ctx;
    return bearer != NULL && strcmp(bearer, "deny") == 0 ? "denied" : NULL;
}

static void
h_echo(struct http_req *r, void *ctx)
{
    (void)ctx;
    size_t len;
    const unsigned char *b = http_req_body(r, &len);
    if (b == NULL || b[len] != '\0')
        abort();
    (void)http_req_query(r, "q");
    (void)http_req_header(r, "x-a");
    const char *client = http_req_client(r);
    struct xff_addr a;
    if (!xff_addr_parse(client, strlen(client), &a))
        abort();
    const char *id = http_req_id(r);
    if (!http_request_id_valid(id, strlen(id)))
        abort();
    http_req_add_header(r, "X-Echo", "1");
    http_reply(r, 200, "application/octet-stream", b, len);
}

static void
h_param(struct http_req *r, void *ctx)
{
    (void)ctx;
    const char *id = http_req_param(r, "id");
    if (id == NULL || id[0] == '\0')
        abort();
    http_reply_error(r, 409, NULL, "id %s", id);
}

static void
later(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_req *r = arg;
    size_t len;
    (void)http_req_body(r, &len);
    (void)http_req_path(r);
    http_reply(r, 202, "text/plain", "later", 5);
}

static void
h_async(struct http_req *r, void *ctx)
{
    (void)ctx;
    struct timeval tv = {0, 0};
    if (event_base_once(http_req_base(r), -1, EV_TIMEOUT, later, r, &tv) != 0)
        http_reply(r, 500, NULL, NULL, 0);
}

static const struct http_route routes[] = {
    {HTTP_GET | HTTP_POST | HTTP_PUT | HTTP_PATCH | HTTP_HEAD, "/e", h_echo},
    {HTTP_GET | HTTP_DELETE, "/p/{id}", h_param},
    {HTTP_GET | HTTP_POST, "/a", h_async},
};

static void
setup(void)
{
    char err[256];
    g_base = event_base_new();
    int fd = http_listen("127.0.0.1", 0, err, sizeof(err));
    if (g_base == NULL || fd < 0)
        abort();
    g_port = http_bound_port(fd);
    struct http_limits limits = {.max_body = 2048,
                                 .max_headers = 1024,
                                 .timeout_s = 5,
                                 .head_timeout_s = 2,
                                 .min_body_rate = 64,
                                 .gate = &g_gate};
    g_server = http_server_new(g_base, fd, "fuzz", routes, sizeof(routes) / sizeof(routes[0]),
                               &limits, NULL, NULL, err, sizeof(err));
    if (g_server == NULL)
        abort();
    http_server_set_precheck(g_server, precheck);
    static struct xff_trust trust;
    if (!xff_trust_parse("127.0.0.0/8", &trust, err, sizeof(err)))
        abort();
    http_server_set_trusted_proxies(g_server, &trust);
}

/* Checks that out[0, len) is a sequence of complete, well-formed responses
 * (a HEAD request's reply has no body but a Content-Length: skip those
 * checks when the input holds "HEAD"). */
static void
check_responses(const char *out, size_t len, bool had_head)
{
    size_t pos = 0;
    while (pos < len) {
        const char *p = out + pos;
        size_t rest = len - pos;
        if (rest < 13 || memcmp(p, "HTTP/1.1 ", 9) != 0 || p[9] < '1' || p[9] > '5' ||
            p[10] < '0' || p[10] > '9' || p[11] < '0' || p[11] > '9' || p[12] != ' ')
            abort();
        const char *eoh = memmem(p, rest, "\r\n\r\n", 4);
        if (eoh == NULL)
            abort();
        size_t hlen = (size_t)(eoh - p) + 4;
        int status = (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
        const char *cl = memmem(p, hlen, "\r\nContent-Length: ", 18);
        size_t body = 0;
        if (cl != NULL)
            body = strtoul(cl + 18, NULL, 10);
        else if (status >= 200 && status != 204 && status != 304)
            abort();
        if (had_head)
            return; /* body lengths are not knowable from here */
        if (hlen + body > rest)
            abort();
        pos += hlen + body;
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (g_base == NULL)
        setup();
    if (size > INPUT_MAX)
        size = INPUT_MAX;
    size_t piece = size > 0 ? (size_t)data[0] % 64 + 1 : 1;

    int c = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)g_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (c < 0 || connect(c, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        abort();
    int bufsz = 1 << 20;
    setsockopt(c, SOL_SOCKET, SO_RCVBUF, &bufsz, sizeof(bufsz));

    char *out = malloc(1 << 20);
    size_t out_len = 0, sent = 0;
    bool shut = false, closed = false;
    for (int turn = 0; turn < TURNS_MAX && !closed; turn++) {
        if (sent < size) {
            size_t n = size - sent < piece ? size - sent : piece;
            ssize_t w = send(c, data + sent, n, MSG_NOSIGNAL | MSG_DONTWAIT);
            if (w > 0) {
                sent += (size_t)w;
                g_bytes_sent += (uint64_t)w;
            } else if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
                sent = size; /* the server closed: stop sending */
        } else if (!shut) {
            shutdown(c, SHUT_WR);
            shut = true;
        }
        event_base_loop(g_base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
        for (;;) {
            ssize_t n = recv(c, out + out_len, (1 << 20) - out_len, MSG_DONTWAIT);
            if (n > 0) {
                out_len += (size_t)n;
                if (out_len == 1 << 20)
                    abort(); /* more output than 64 KiB of input can ask for */
                continue;
            }
            if (n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK))
                closed = true;
            break;
        }
    }
    if (!closed)
        abort(); /* the server kept a half-closed connection alive */
    close(c);
    /* A refusal closes the connection, so responses never go beyond it. */
    check_responses(out, out_len, memmem(data, size, "HEAD", 4) != NULL);
    free(out);
    /* Let the server see the close and free the connection. */
    for (int i = 0; i < 4; i++)
        event_base_loop(g_base, EVLOOP_ONCE | EVLOOP_NONBLOCK);
    /* Linear consumption (http.h): at most twice what was received, plus
     * the one move of a shrinking buffer per connection. */
    static uint64_t inputs;
    inputs++;
    if (http_server_bytes_moved(g_server) > 2 * g_bytes_sent + 4096 * inputs)
        abort();
    return 0;
}
