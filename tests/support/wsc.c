/*
 * wsc: blocking WebSocket test client (wsc.h).
 */
#include "wsc.h"

#include <arpa/inet.h>
#include <check.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <openssl/evp.h>
#include <openssl/rand.h>

#define WSC_MAX_MESSAGE (1u << 20)

static int64_t
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
connect_local(int port, int rcvbuf)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    if (rcvbuf > 0)
        setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf));
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    return fd;
}

bool
wsc_send_raw(struct wsc *c, const void *data, size_t len)
{
    const uint8_t *p = data;
    while (len > 0) {
        ssize_t w = send(c->fd, p, len, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return false;
        p += w;
        len -= (size_t)w;
    }
    return true;
}

/* Waits up to timeout_ms for bytes and appends them; 1 = got some, 0 = timeout, -1 = EOF/error. */
static int
fill(struct wsc *c, int timeout_ms)
{
    struct pollfd pfd = {.fd = c->fd, .events = POLLIN};
    int r = poll(&pfd, 1, timeout_ms < 0 ? 0 : timeout_ms);
    if (r == 0)
        return 0;
    if (r < 0)
        return errno == EINTR ? 0 : -1;
    if (c->cap - c->len < 4096) {
        size_t cap = c->cap ? c->cap * 2 : 16384;
        uint8_t *b = realloc(c->buf, cap);
        if (b == NULL)
            return -1;
        c->buf = b;
        c->cap = cap;
    }
    ssize_t n = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
    if (n < 0 && (errno == EAGAIN || errno == EINTR))
        return 0;
    if (n <= 0)
        return -1;
    c->len += (size_t)n;
    return 1;
}

/* Reads the HTTP response head (and a non-101 body); bytes after it stay in c->buf. */
static void
read_response(struct wsc *c, const char *key)
{
    int64_t end = mono_ms() + 5000;
    uint8_t *eoh = NULL;
    while ((eoh = c->len >= 4 ? memmem(c->buf, c->len, "\r\n\r\n", 4) : NULL) == NULL) {
        int64_t left = end - mono_ms();
        if (left <= 0 || fill(c, (int)left) < 0)
            return;
    }
    size_t head_len = (size_t)(eoh - c->buf) + 4;
    char *head = strndup((const char *)c->buf, head_len);
    int status = -1;
    if (sscanf(head, "HTTP/1.1 %d", &status) != 1)
        status = -1;
    c->http_status = status;
    if (status == 101 && key != NULL) {
        char want[WS_ACCEPT_LEN + 1];
        ws_handshake_accept_key(key, want);
        if (strstr(head, want) == NULL)
            c->http_status = -2; /* wrong Sec-WebSocket-Accept */
    }
    size_t body_len = 0;
    const char *cl = strcasestr(head, "\r\nContent-Length:");
    if (cl != NULL)
        body_len = strtoul(cl + 17, NULL, 10);
    free(head);
    memmove(c->buf, c->buf + head_len, c->len - head_len);
    c->len -= head_len;
    if (status != 101) {
        while (c->len < body_len && mono_ms() < end) {
            if (fill(c, (int)(end - mono_ms())) < 0)
                break;
        }
        size_t n = c->len < body_len ? c->len : body_len;
        c->http_body = strndup((const char *)c->buf, n);
        c->len = 0;
    }
}

static struct wsc *
wsc_new(int fd)
{
    struct wsc *c = calloc(1, sizeof(*c));
    c->fd = fd;
    c->http_status = -1;
    ws_parser_init(&c->p, WS_ROLE_CLIENT);
    return c;
}

struct wsc *
wsc_connect_opts(int port, const char *path, int rcvbuf)
{
    int fd = connect_local(port, rcvbuf);
    if (fd < 0)
        return NULL;
    struct wsc *c = wsc_new(fd);
    unsigned char raw[16];
    char key[WS_KEY_LEN + 1];
    if (RAND_bytes(raw, sizeof(raw)) != 1)
        memset(raw, 7, sizeof(raw));
    EVP_EncodeBlock((unsigned char *)key, raw, sizeof(raw));
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nUpgrade: websocket\r\n"
                     "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                     "Sec-WebSocket-Version: 13\r\n\r\n",
                     path, port, key);
    if (!wsc_send_raw(c, req, (size_t)n))
        return c;
    read_response(c, key);
    return c;
}

struct wsc *
wsc_open(int port)
{
    struct wsc *c = wsc_connect_opts(port, "/ws", 0);
    ck_assert_msg(c != NULL, "cannot connect to lcsd on %d", port);
    ck_assert_int_eq(c->http_status, 101);
    return c;
}

struct wsc *
wsc_connect_raw(int port, const char *request, size_t len)
{
    int fd = connect_local(port, 0);
    if (fd < 0)
        return NULL;
    struct wsc *c = wsc_new(fd);
    if (wsc_send_raw(c, request, len))
        read_response(c, NULL);
    return c;
}

bool
wsc_send(struct wsc *c, int opcode, const void *data, size_t len)
{
    size_t cap = len + WS_FRAME_HEADER_MAX;
    uint8_t *buf = malloc(cap);
    uint8_t mask[4];
    if (RAND_bytes(mask, 4) != 1)
        memcpy(mask, "abcd", 4);
    size_t n = ws_frame_build_masked(buf, cap, opcode, true, data, len, mask);
    bool ok = n > 0 && wsc_send_raw(c, buf, n);
    free(buf);
    return ok;
}

bool
wsc_send_text(struct wsc *c, const char *text)
{
    return wsc_send(c, WS_OP_TEXT, text, strlen(text));
}

int
wsc_read(struct wsc *c, int timeout_ms, struct wsc_frame *f)
{
    memset(f, 0, sizeof(*f));
    int64_t end = mono_ms() + timeout_ms;
    for (;;) {
        struct ws_frame fr;
        enum ws_result r = ws_parse_frame(&c->p, c->buf, c->len, WSC_MAX_MESSAGE, &fr);
        if (r == WS_FRAME) {
            f->opcode = fr.opcode;
            f->len = fr.payload_len;
            f->data = malloc(fr.payload_len + 1);
            if (fr.payload_len > 0)
                memcpy(f->data, fr.payload, fr.payload_len);
            f->data[fr.payload_len] = '\0';
            f->close_code = fr.opcode == WS_OP_CLOSE ? fr.close_code : 0;
            if (fr.opcode == WS_OP_CLOSE)
                c->closed = true;
            memmove(c->buf, c->buf + fr.consumed, c->len - fr.consumed);
            c->len -= fr.consumed;
            return 1;
        }
        if (r != WS_NEED_MORE)
            return -1;
        int64_t left = end - mono_ms();
        if (left <= 0)
            return 0;
        int g = fill(c, (int)left);
        if (g < 0) {
            c->closed = true;
            return -1;
        }
    }
}

void
wsc_frame_free(struct wsc_frame *f)
{
    free(f->data);
    f->data = NULL;
}

json_t *
wsc_read_json(struct wsc *c, int timeout_ms, int *close_code)
{
    int64_t end = mono_ms() + timeout_ms;
    if (close_code != NULL)
        *close_code = 0;
    for (;;) {
        int64_t left = end - mono_ms();
        if (left <= 0)
            return NULL;
        struct wsc_frame f;
        int r = wsc_read(c, (int)left, &f);
        if (r <= 0) {
            if (r < 0 && close_code != NULL)
                *close_code = 1006;
            return NULL;
        }
        if (f.opcode == WS_OP_PING) {
            (void)wsc_send(c, WS_OP_PONG, f.data, f.len);
        } else if (f.opcode == WS_OP_CLOSE) {
            if (close_code != NULL)
                *close_code = f.close_code;
            wsc_frame_free(&f);
            return NULL;
        } else if (f.opcode == WS_OP_TEXT) {
            json_t *j = json_loadb((const char *)f.data, f.len, 0, NULL);
            wsc_frame_free(&f);
            return j;
        }
        wsc_frame_free(&f);
    }
}

int
wsc_wait_close(struct wsc *c, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = end - mono_ms();
        if (left <= 0)
            return 0;
        struct wsc_frame f;
        int r = wsc_read(c, (int)left, &f);
        if (r == 0)
            return 0;
        if (r < 0)
            return 1006;
        int code = f.opcode == WS_OP_CLOSE ? f.close_code : 0;
        wsc_frame_free(&f);
        if (code != 0)
            return code;
    }
}

json_t *
wsc_login_json(struct wsc *c, const char *token, const char *device)
{
    json_t *login =
        json_pack("{s:s, s:s, s:s, s:s, s:s, s:s}", "type", "login", "token", token, "device_id",
                  device, "platform", "ios", "app_version", "8.0.25", "core_level", "220819");
    char *s = json_dumps(login, JSON_COMPACT);
    json_decref(login);
    bool ok = wsc_send_text(c, s);
    free(s);
    return ok ? wsc_read_json(c, 5000, NULL) : NULL;
}

bool
wsc_wait_eof(struct wsc *c, int timeout_ms)
{
    int64_t end = mono_ms() + timeout_ms;
    for (;;) {
        int64_t left = end - mono_ms();
        if (left <= 0)
            return false;
        c->len = 0; /* drop whatever still arrives */
        if (fill(c, (int)left) < 0)
            return true;
    }
}

void
wsc_free(struct wsc *c)
{
    if (c == NULL)
        return;
    if (c->fd >= 0)
        close(c->fd);
    free(c->buf);
    free(c->http_body);
    free(c);
}
