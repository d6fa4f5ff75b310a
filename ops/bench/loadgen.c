/*
 * loadgen: the long-connection load generator of ops/bench/lcs.
 *
 *   loadgen ws-idle   WebSocket clients for lcsd: connect, log in with a
 *                     token minted here (token_mint, the key given to
 *                     lcsd), then stay idle (app-level pings every
 *                     heartbeat), counting notify frames and, optionally,
 *                     sending messages through logicd's POST /v1/messages
 *                     to measure send-to-notify latency.
 *   loadgen mqtt-idle MQTT 3.1.1 clients for mosquitto: CONNECT (clean
 *                     session), wait for CONNACK, then idle.
 *   loadgen publish   reads the routes lcsd wrote (route:{app:uid}) and
 *                     publishes notify lines to the nodes' Redis channels
 *                     at a given rate, msg_id = send time in microseconds.
 *   loadgen report    merges the HIST lines of several loadgen outputs and
 *                     prints percentiles.
 *
 * One process holds up to ~18,000 connections (the hard open-file limit is
 * 20,000 here); several processes give 100,000. Connections are spread
 * round-robin over the destination ports and source addresses
 * 127.0.0.<src-first> ... (bound with IP_BIND_ADDRESS_NO_PORT, so the
 * ephemeral port is picked per 4-tuple at connect time). Connects are
 * paced and failed ones retried a bounded number of times.
 *
 * Every second a status line goes to stdout; the process ends after
 * --duration seconds or on SIGTERM/SIGINT with a final line and the
 * latency histograms as HIST lines. Only loopback addresses are accepted.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "token.h"
#include "ws.h"

#ifndef IP_BIND_ADDRESS_NO_PORT
#define IP_BIND_ADDRESS_NO_PORT 24
#endif

#define MAX_PORTS      64
#define MAX_MESSAGE    65536
#define HS_TIMEOUT_S   15
#define RETRY_DELAY_US 1000000

/* ---- time and random ---------------------------------------------------- */

/* Wall clock in microseconds: msg_ids are wall-clock microseconds too. */
static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static uint64_t rng_state = 88172645463325252ULL;

/* xorshift64: masking keys and target picks need no real randomness. */
static uint64_t
rng_next(void)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return rng_state;
}

/* ---- latency histogram: log-linear, 64 sub-buckets per power of two ---- */

#define HIST_SUB     64
#define HIST_BUCKETS (HIST_SUB + 40 * HIST_SUB)

struct hist {
    uint64_t n;
    uint64_t max;
    uint64_t b[HIST_BUCKETS];
};

static int
hist_index(uint64_t v)
{
    if (v < HIST_SUB)
        return (int)v;
    int e = 63 - __builtin_clzll(v); /* >= 6 */
    int idx = HIST_SUB + (e - 6) * HIST_SUB + (int)((v >> (e - 6)) & (HIST_SUB - 1));
    return idx < HIST_BUCKETS ? idx : HIST_BUCKETS - 1;
}

/* The smallest value of bucket idx. */
static uint64_t
hist_value(int idx)
{
    if (idx < HIST_SUB)
        return (uint64_t)idx;
    int e = (idx - HIST_SUB) / HIST_SUB + 6;
    uint64_t sub = (uint64_t)((idx - HIST_SUB) % HIST_SUB);
    return ((uint64_t)1 << e) | (sub << (e - 6));
}

static void
hist_add(struct hist *h, uint64_t v)
{
    h->b[hist_index(v)]++;
    h->n++;
    if (v > h->max)
        h->max = v;
}

static uint64_t
hist_pct(const struct hist *h, double p)
{
    if (h->n == 0)
        return 0;
    uint64_t want = (uint64_t)(p * (double)h->n + 0.999999);
    if (want == 0)
        want = 1;
    uint64_t acc = 0;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        acc += h->b[i];
        if (acc >= want)
            return hist_value(i);
    }
    return h->max;
}

/* One line "HIST name n=N max=M b=idx:count,..." that `loadgen report` merges. */
static void
hist_print(const char *name, const struct hist *h)
{
    printf("HIST %s n=%" PRIu64 " max=%" PRIu64 " b=", name, h->n, h->max);
    bool first = true;
    for (int i = 0; i < HIST_BUCKETS; i++) {
        if (h->b[i] == 0)
            continue;
        printf("%s%d:%" PRIu64, first ? "" : ",", i, h->b[i]);
        first = false;
    }
    printf("\n");
}

/* ---- options ------------------------------------------------------------ */

enum mode { MODE_WS, MODE_MQTT, MODE_PUBLISH, MODE_REPORT };

struct opts {
    enum mode mode;
    const char *label;
    const char *host;
    int ports[MAX_PORTS];
    int nports;
    int src_first, src_count;
    int conns;
    long first;    /* global index of this process's first connection */
    long uid_base; /* uid = uid_base + first + i */
    double rate;   /* connects per second */
    int inflight;  /* connects not yet answered at most */
    int retries;
    int duration_s;
    const char *token_key, *key_id;
    long app;
    const char *device_prefix;
    int heartbeat_s;
    int keepalive_s;
    /* sender (ws-idle) */
    double send_rate;
    long send_count;
    int logic_port;
    const char *server_key;
    int send_after_s;
    /* publish */
    int redis_port;
    long uid_first, uid_count;
    int batch_ms;
};

/* ---- connections -------------------------------------------------------- */

enum conn_state {
    CS_NEW = 0, /* not started yet */
    CS_CONNECTING,
    CS_HANDSHAKE, /* ws: upgrade sent, waiting for 101 */
    CS_LOGIN,     /* ws: login sent; mqtt: CONNECT sent */
    CS_READY,
    CS_RETRY, /* failed, waiting in the retry queue */
    CS_DEAD,  /* failed for good */
};

struct lg;

struct conn {
    struct lg *lg;
    struct bufferevent *bev;
    int64_t send_us; /* a message to this user is on its way (send-to-notify) */
    uint32_t idx;
    uint8_t state;
    uint8_t attempts;
    char accept[WS_ACCEPT_LEN + 1];
    struct ws_parser ws;
};

struct httpc {
    struct lg *lg;
    struct bufferevent *bev;
    uint32_t target;
    int64_t start_us;
};

struct lg {
    struct opts o;
    struct event_base *base;
    struct conn *conns;
    uint32_t *retryq; /* ring of indices */
    int64_t *retry_due;
    uint32_t rq_head, rq_len;
    uint32_t next_new;
    struct event *pace_ev, *tick_ev, *send_ev, *sigterm, *sigint, *sigusr1;
    struct token_keys keys;
    struct sockaddr_in *dst;
    struct sockaddr_in *src;
    int64_t start_us;
    int tick;
    double pace_credit;
    bool stopping;
    /* counters */
    long connecting, ready;
    uint64_t failed_attempts, gave_up, dropped, login_fail, kicked, notifies, pongs, pings_sent,
        unexpected;
    uint64_t last_notifies;
    int64_t all_ready_us;
    /* sender */
    double send_credit;
    int64_t send_start_us;
    uint64_t sends, send_ok, send_err, send_matched;
    bool send_err_printed;
    int sends_done_tick;
    struct hist pub_lat;  /* now - msg_id of notifies (publish mode stamps msg_id) */
    struct hist send_lat; /* request start to notify frame */
    struct hist http_lat; /* request start to HTTP response */
};

static void conn_start(struct conn *c);

/* Puts c in the retry queue, or gives up on it after --retries attempts. */
static void
conn_fail(struct conn *c, const char *why)
{
    struct lg *lg = c->lg;
    if (c->bev != NULL) {
        bufferevent_free(c->bev);
        c->bev = NULL;
    }
    if (c->state == CS_CONNECTING || c->state == CS_HANDSHAKE || c->state == CS_LOGIN)
        lg->connecting--;
    if (c->state == CS_READY) {
        lg->ready--;
        lg->dropped++;
        c->attempts = 0; /* a drop after a good login starts a fresh retry budget */
    } else {
        lg->failed_attempts++;
    }
    c->send_us = 0;
    if (lg->stopping || c->attempts >= lg->o.retries) {
        c->state = CS_DEAD;
        lg->gave_up++;
        if (lg->gave_up <= 5)
            fprintf(stderr, "loadgen[%s]: conn %u gave up: %s\n", lg->o.label, c->idx, why);
        return;
    }
    c->state = CS_RETRY;
    uint32_t n = (uint32_t)lg->o.conns;
    uint32_t pos = (lg->rq_head + lg->rq_len) % n;
    lg->retryq[pos] = c->idx;
    lg->retry_due[pos] = now_us() + RETRY_DELAY_US + (int64_t)(rng_next() % 500000);
    lg->rq_len++;
}

/* Sends a masked WebSocket frame (client role). */
static void
ws_send(struct conn *c, int opcode, const void *payload, size_t len)
{
    uint8_t buf[WS_FRAME_HEADER_MAX + 512];
    uint64_t r = rng_next();
    uint8_t mask[4];
    memcpy(mask, &r, 4);
    size_t n = ws_frame_build_masked(buf, sizeof(buf), opcode, true, payload, len, mask);
    if (n > 0)
        bufferevent_write(c->bev, buf, n);
}

/* Standard base64 (with padding) of 16 bytes, for Sec-WebSocket-Key. */
static void
b64_16(const uint8_t in[16], char out[WS_KEY_LEN + 1])
{
    static const char al[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (int i = 0; i < 16; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16;
        if (i + 1 < 16)
            v |= (uint32_t)in[i + 1] << 8;
        if (i + 2 < 16)
            v |= in[i + 2];
        out[o++] = al[(v >> 18) & 63];
        out[o++] = al[(v >> 12) & 63];
        out[o++] = i + 1 < 16 ? al[(v >> 6) & 63] : '=';
        out[o++] = i + 2 < 16 ? al[v & 63] : '=';
    }
    out[o] = '\0';
}

/*
 * Finds "key": "value" in a flat JSON object and copies the string value
 * (or the bare literal: true, 30) into out. Enough for lcsd's frames.
 */
static bool
json_field(const char *s, size_t len, const char *key, char *out, size_t outlen)
{
    size_t kl = strlen(key);
    const char *end = s + len;
    for (const char *p = s; p + kl + 2 <= end; p++) {
        if (*p != '"' || memcmp(p + 1, key, kl) != 0 || p[kl + 1] != '"')
            continue;
        const char *q = p + kl + 2;
        while (q < end && (*q == ' ' || *q == '\t'))
            q++;
        if (q >= end || *q != ':')
            continue;
        q++;
        while (q < end && (*q == ' ' || *q == '\t'))
            q++;
        bool quoted = q < end && *q == '"';
        if (quoted)
            q++;
        size_t o = 0;
        while (q < end && o + 1 < outlen) {
            if (quoted ? *q == '"' : (*q == ',' || *q == '}' || *q == ' '))
                break;
            out[o++] = *q++;
        }
        out[o] = '\0';
        return true;
    }
    return false;
}

static void
ws_on_text(struct conn *c, const char *s, size_t len)
{
    struct lg *lg = c->lg;
    char type[32], v[64];
    if (!json_field(s, len, "type", type, sizeof(type))) {
        lg->unexpected++;
        return;
    }
    if (c->state == CS_LOGIN) {
        if (strcmp(type, "login_ack") != 0) {
            lg->unexpected++;
            return;
        }
        if (!json_field(s, len, "ok", v, sizeof(v)) || strcmp(v, "true") != 0) {
            lg->login_fail++;
            if (lg->login_fail <= 3)
                fprintf(stderr, "loadgen[%s]: login refused: %.*s\n", lg->o.label, (int)len, s);
            c->attempts = (uint8_t)lg->o.retries; /* a refused token will not get better */
            conn_fail(c, "login refused");
            return;
        }
        if (json_field(s, len, "heartbeat_s", v, sizeof(v))) {
            int hb = atoi(v);
            if (hb > 0 && hb < lg->o.heartbeat_s)
                lg->o.heartbeat_s = hb;
        }
        c->state = CS_READY;
        lg->connecting--;
        lg->ready++;
        bufferevent_set_timeouts(c->bev, NULL, NULL);
        return;
    }
    if (strcmp(type, "notify") == 0) {
        lg->notifies++;
        int64_t now = now_us();
        if (c->send_us != 0) {
            hist_add(&lg->send_lat, (uint64_t)(now - c->send_us));
            lg->send_matched++;
            c->send_us = 0;
        } else if (json_field(s, len, "msg_id", v, sizeof(v))) {
            int64_t id = strtoll(v, NULL, 10);
            if (id > now - 600000000LL && id <= now + 1000000)
                hist_add(&lg->pub_lat, (uint64_t)(now > id ? now - id : 0));
        }
    } else if (strcmp(type, "pong") == 0) {
        lg->pongs++;
    } else if (strcmp(type, "kick") == 0) {
        lg->kicked++;
    } else {
        lg->unexpected++;
    }
}

/* Checks the 101 response; returns false when the connection failed. */
static bool
ws_handshake_done(struct conn *c, struct evbuffer *in)
{
    struct evbuffer_ptr e = evbuffer_search(in, "\r\n\r\n", 4, NULL);
    if (e.pos < 0) {
        if (evbuffer_get_length(in) > 8192) {
            conn_fail(c, "handshake response too long");
            return false;
        }
        return true; /* wait for more */
    }
    size_t hlen = (size_t)e.pos + 4;
    char *h = (char *)evbuffer_pullup(in, (ev_ssize_t)hlen);
    bool ok = hlen > 12 && memcmp(h, "HTTP/1.1 101", 12) == 0;
    if (ok) {
        ok = false;
        for (char *p = h; p < h + hlen - 22; p++) {
            if ((p == h || p[-1] == '\n') && strncasecmp(p, "Sec-WebSocket-Accept:", 21) == 0) {
                char *q = p + 21;
                while (*q == ' ')
                    q++;
                ok = strncmp(q, c->accept, WS_ACCEPT_LEN) == 0;
                break;
            }
        }
    }
    if (!ok) {
        if (c->lg->failed_attempts < 3)
            fprintf(stderr, "loadgen[%s]: bad handshake response: %.*s\n", c->lg->o.label,
                    (int)(hlen > 200 ? 200 : hlen), h);
        conn_fail(c, "bad handshake response");
        return false;
    }
    evbuffer_drain(in, hlen);
    struct lg *lg = c->lg;
    uint64_t uid = (uint64_t)(lg->o.uid_base + lg->o.first + c->idx);
    struct token_claims cl = {
        .app_id = (uint64_t)lg->o.app,
        .uid = uid,
        .expires_at_us = now_us() + 86400LL * 1000000,
        .guest = false,
    };
    char tok[TOKEN_MAX_LEN];
    if (!token_mint(&lg->keys, &cl, tok, sizeof(tok))) {
        conn_fail(c, "token_mint failed");
        return false;
    }
    char login[400];
    int n = snprintf(login, sizeof(login),
                     "{\"type\":\"login\",\"token\":\"%s\",\"device_id\":\"%s%" PRIu64
                     "\",\"platform\":\"linux\",\"app_version\":\"1.0.0\","
                     "\"core_level\":\"1\"}",
                     tok, lg->o.device_prefix, uid);
    ws_send(c, WS_OP_TEXT, login, (size_t)n);
    c->state = CS_LOGIN;
    ws_parser_init(&c->ws, WS_ROLE_CLIENT);
    return true;
}

static void
ws_read(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    if (c->state == CS_HANDSHAKE) {
        if (!ws_handshake_done(c, in) || c->state == CS_HANDSHAKE)
            return;
    }
    for (;;) {
        size_t len = evbuffer_get_length(in);
        if (len == 0)
            return;
        uint8_t *buf = evbuffer_pullup(in, -1);
        struct ws_frame f;
        enum ws_result r = ws_parse_frame(&c->ws, buf, len, MAX_MESSAGE, &f);
        if (r == WS_NEED_MORE)
            return;
        if (r != WS_FRAME) {
            conn_fail(c, f.error ? f.error : "bad frame");
            return;
        }
        switch (f.opcode) {
        case WS_OP_TEXT:
        case WS_OP_BINARY:
            ws_on_text(c, (const char *)f.payload, f.payload_len);
            break;
        case WS_OP_PING:
            ws_send(c, WS_OP_PONG, f.payload, f.payload_len);
            break;
        case WS_OP_CLOSE: {
            if (c->lg->dropped + c->lg->failed_attempts < 5)
                fprintf(stderr, "loadgen[%s]: conn %u closed by server: %u %.*s\n", c->lg->o.label,
                        c->idx, (unsigned)f.close_code, (int)f.close_reason_len,
                        (const char *)f.close_reason);
            conn_fail(c, "closed by server");
            return;
        }
        default:
            break;
        }
        if (c->bev == NULL || c->state == CS_RETRY || c->state == CS_DEAD)
            return;
        evbuffer_drain(in, f.consumed);
    }
}

static void
mqtt_read(struct conn *c)
{
    struct evbuffer *in = bufferevent_get_input(c->bev);
    for (;;) {
        size_t len = evbuffer_get_length(in);
        if (len < 2)
            return;
        uint8_t *b = evbuffer_pullup(in, len < 5 ? (ev_ssize_t)len : 5);
        /* remaining length: 1..4 bytes of 7 bits */
        size_t rl = 0, hl = 1;
        int shift = 0;
        for (;;) {
            if (hl >= len)
                return;
            if (hl > 4) {
                conn_fail(c, "bad remaining length");
                return;
            }
            rl |= (size_t)(b[hl] & 127) << shift;
            shift += 7;
            if ((b[hl++] & 128) == 0)
                break;
        }
        if (len < hl + rl)
            return;
        uint8_t type = b[0] >> 4;
        if (c->state == CS_LOGIN) {
            b = evbuffer_pullup(in, (ev_ssize_t)(hl + rl));
            if (type != 2 || rl != 2 || b[hl + 1] != 0) {
                c->lg->login_fail++;
                if (c->lg->login_fail <= 3)
                    fprintf(stderr, "loadgen[%s]: CONNACK refused: type %u rc %u\n", c->lg->o.label,
                            type, rl >= 2 ? b[hl + 1] : 255);
                conn_fail(c, "connack refused");
                return;
            }
            c->state = CS_READY;
            c->lg->connecting--;
            c->lg->ready++;
            bufferevent_set_timeouts(c->bev, NULL, NULL);
        } else if (type == 13) {
            c->lg->pongs++;
        } else {
            c->lg->unexpected++;
        }
        evbuffer_drain(in, hl + rl);
    }
}

static void
conn_readcb(struct bufferevent *bev, void *arg)
{
    struct conn *c = arg;
    if (c->lg->o.mode == MODE_WS)
        ws_read(c);
    else
        mqtt_read(c);
}

/* Writes the WebSocket upgrade request or the MQTT CONNECT packet. */
static void
conn_opening(struct conn *c)
{
    struct lg *lg = c->lg;
    if (lg->o.mode == MODE_WS) {
        uint8_t key[16];
        uint64_t a = rng_next(), b = rng_next();
        memcpy(key, &a, 8);
        memcpy(key + 8, &b, 8);
        char k64[WS_KEY_LEN + 1];
        b64_16(key, k64);
        ws_handshake_accept_key(k64, c->accept);
        char req[512];
        int port = ntohs(lg->dst[c->idx % (uint32_t)lg->o.nports].sin_port);
        int n = snprintf(req, sizeof(req),
                         "GET /ws HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                         "Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                         "Sec-WebSocket-Version: 13\r\n\r\n",
                         lg->o.host, port, k64);
        bufferevent_write(c->bev, req, (size_t)n);
        c->state = CS_HANDSHAKE;
    } else {
        char cid[48];
        int cl = snprintf(cid, sizeof(cid), "%s%ld", lg->o.device_prefix, lg->o.first + c->idx);
        uint8_t pkt[80];
        size_t rl = 10 + 2 + (size_t)cl;
        size_t i = 0;
        pkt[i++] = 0x10;
        pkt[i++] = (uint8_t)rl; /* < 128 */
        const uint8_t vh[] = {0, 4, 'M', 'Q', 'T', 'T', 4, 0x02};
        memcpy(pkt + i, vh, sizeof(vh));
        i += sizeof(vh);
        pkt[i++] = (uint8_t)(lg->o.keepalive_s >> 8);
        pkt[i++] = (uint8_t)(lg->o.keepalive_s & 255);
        pkt[i++] = 0;
        pkt[i++] = (uint8_t)cl;
        memcpy(pkt + i, cid, (size_t)cl);
        i += (size_t)cl;
        bufferevent_write(c->bev, pkt, i);
        c->state = CS_LOGIN;
    }
}

static void
conn_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct conn *c = arg;
    if (what & BEV_EVENT_CONNECTED) {
        conn_opening(c);
        return;
    }
    const char *why = (what & BEV_EVENT_TIMEOUT) ? "timeout"
                      : (what & BEV_EVENT_EOF)   ? "eof"
                                                 : "socket error";
    if ((what & BEV_EVENT_ERROR) && c->lg->failed_attempts + c->lg->dropped < 5)
        fprintf(stderr, "loadgen[%s]: conn %u: %s (state %d)\n", c->lg->o.label, c->idx,
                strerror(EVUTIL_SOCKET_ERROR()), c->state);
    conn_fail(c, why);
}

/* Opens (or reopens) connection c: bind to its source address, connect. */
static void
conn_start(struct conn *c)
{
    struct lg *lg = c->lg;
    uint32_t np = (uint32_t)lg->o.nports;
    uint64_t g = (uint64_t)lg->o.first + c->idx;
    const struct sockaddr_in *dst = &lg->dst[c->idx % np];
    const struct sockaddr_in *src = &lg->src[(g / np) % (uint64_t)lg->o.src_count];
    c->attempts++;
    c->state = CS_CONNECTING;
    lg->connecting++;
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        conn_fail(c, "socket");
        return;
    }
    int one = 1;
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof(one));
    if (bind(fd, (const struct sockaddr *)src, sizeof(*src)) != 0) {
        close(fd);
        conn_fail(c, "bind");
        return;
    }
    c->bev = bufferevent_socket_new(lg->base, fd, BEV_OPT_CLOSE_ON_FREE);
    if (c->bev == NULL) {
        close(fd);
        conn_fail(c, "bufferevent");
        return;
    }
    bufferevent_setcb(c->bev, conn_readcb, NULL, conn_eventcb, c);
    struct timeval tv = {HS_TIMEOUT_S, 0};
    bufferevent_set_timeouts(c->bev, &tv, &tv);
    bufferevent_enable(c->bev, EV_READ);
    if (bufferevent_socket_connect(c->bev, (const struct sockaddr *)dst, sizeof(*dst)) != 0)
        conn_fail(c, "connect");
}

/* Every 10 ms: start new connections and due retries within the pace. */
static void
pace_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lg *lg = arg;
    if (lg->stopping)
        return;
    lg->pace_credit += lg->o.rate / 100.0;
    if (lg->pace_credit > lg->o.rate / 10.0 + 1)
        lg->pace_credit = lg->o.rate / 10.0 + 1;
    int64_t now = now_us();
    uint32_t n = (uint32_t)lg->o.conns;
    while (lg->pace_credit >= 1 && lg->connecting < lg->o.inflight) {
        if (lg->rq_len > 0 && lg->retry_due[lg->rq_head] <= now) {
            uint32_t idx = lg->retryq[lg->rq_head];
            lg->rq_head = (lg->rq_head + 1) % n;
            lg->rq_len--;
            conn_start(&lg->conns[idx]);
        } else if (lg->next_new < n) {
            conn_start(&lg->conns[lg->next_new++]);
        } else {
            break;
        }
        lg->pace_credit -= 1;
    }
}

/* ---- HTTP sender (send-to-notify latency) ------------------------------- */

static void
httpc_done(struct httpc *h, bool ok, const char *why)
{
    struct lg *lg = h->lg;
    if (ok) {
        lg->send_ok++;
        hist_add(&lg->http_lat, (uint64_t)(now_us() - h->start_us));
    } else {
        lg->send_err++;
        struct conn *c = &lg->conns[h->target];
        if (c->send_us == h->start_us)
            c->send_us = 0; /* no notify will come */
        if (!lg->send_err_printed) {
            lg->send_err_printed = true;
            fprintf(stderr, "loadgen[%s]: send failed: %s\n", lg->o.label, why);
        }
    }
    bufferevent_free(h->bev);
    free(h);
}

static void
httpc_eventcb(struct bufferevent *bev, short what, void *arg)
{
    struct httpc *h = arg;
    if (what & BEV_EVENT_CONNECTED)
        return;
    if (!(what & BEV_EVENT_EOF)) {
        httpc_done(h, false, (what & BEV_EVENT_TIMEOUT) ? "timeout" : "socket error");
        return;
    }
    /* Connection: close, so EOF ends the response. */
    struct evbuffer *in = bufferevent_get_input(bev);
    size_t len = evbuffer_get_length(in);
    char *s = (char *)evbuffer_pullup(in, -1);
    char line[300];
    size_t l = len < sizeof(line) - 1 ? len : sizeof(line) - 1;
    if (l > 0)
        memcpy(line, s, l);
    line[l] = '\0';
    bool ok = len > 12 && memcmp(s, "HTTP/1.1 200", 12) == 0;
    httpc_done(h, ok, line);
}

/* Sends one message to a random logged-in user that has none in flight. */
static void
send_one(struct lg *lg)
{
    uint32_t n = (uint32_t)lg->o.conns;
    struct conn *c = NULL;
    for (int tries = 0; tries < 64; tries++) {
        struct conn *x = &lg->conns[rng_next() % n];
        if (x->state == CS_READY && x->send_us == 0) {
            c = x;
            break;
        }
    }
    if (c == NULL)
        return;
    struct httpc *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return;
    h->lg = lg;
    h->target = c->idx;
    h->bev = bufferevent_socket_new(lg->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (h->bev == NULL) {
        free(h);
        return;
    }
    uint64_t uid = (uint64_t)(lg->o.uid_base + lg->o.first + c->idx);
    char body[256];
    int bl = snprintf(body, sizeof(body),
                      "{\"app_id\":\"%ld\",\"from_uid\":\"1\",\"to_uids\":[\"%" PRIu64
                      "\"],\"content\":\"bench %" PRIu64 "\"}",
                      lg->o.app, uid, lg->sends);
    struct evbuffer *out = bufferevent_get_output(h->bev);
    evbuffer_add_printf(out,
                        "POST /v1/messages HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n"
                        "Authorization: Bearer %s\r\nContent-Type: application/json\r\n"
                        "Content-Length: %d\r\nConnection: close\r\n\r\n",
                        lg->o.logic_port, lg->o.server_key, bl);
    evbuffer_add(out, body, (size_t)bl);
    bufferevent_setcb(h->bev, NULL, NULL, httpc_eventcb, h);
    struct timeval tv = {10, 0};
    bufferevent_set_timeouts(h->bev, &tv, &tv);
    bufferevent_enable(h->bev, EV_READ | EV_WRITE);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)lg->o.logic_port)};
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    h->start_us = now_us();
    c->send_us = h->start_us;
    lg->sends++;
    if (bufferevent_socket_connect(h->bev, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        httpc_done(h, false, "connect");
}

/* Every 5 ms once everybody is in (or --send-after passed): paced sends. */
static void
send_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lg *lg = arg;
    if (lg->stopping || lg->sends >= (uint64_t)lg->o.send_count)
        return;
    int64_t now = now_us();
    if (lg->send_start_us == 0) {
        bool all_in = lg->ready + (long)lg->gave_up >= lg->o.conns && lg->ready > 0;
        bool waited =
            lg->o.send_after_s > 0 && now - lg->start_us >= lg->o.send_after_s * 1000000LL;
        if (!all_in && !waited)
            return;
        lg->send_start_us = now;
    }
    double due = lg->o.send_rate * (double)(now - lg->send_start_us) / 1e6;
    while ((double)lg->sends < due && lg->sends < (uint64_t)lg->o.send_count)
        send_one(lg);
}

/* ---- status, heartbeats, stop ------------------------------------------- */

static void
print_status(struct lg *lg, const char *kind)
{
    int64_t now = now_us();
    printf("%s %s t=%.1f target=%d connected=%ld connecting=%ld gave_up=%" PRIu64
           " failed_attempts=%" PRIu64 " dropped=%" PRIu64 " login_fail=%" PRIu64 " kicked=%" PRIu64
           " notifies=%" PRIu64 " notify_rate=%" PRIu64 " pongs=%" PRIu64 " unexpected=%" PRIu64,
           kind, lg->o.label, (double)(now - lg->start_us) / 1e6, lg->o.conns, lg->ready,
           lg->connecting, lg->gave_up, lg->failed_attempts, lg->dropped, lg->login_fail,
           lg->kicked, lg->notifies, lg->notifies - lg->last_notifies, lg->pongs, lg->unexpected);
    if (lg->all_ready_us)
        printf(" all_ready_s=%.2f", (double)(lg->all_ready_us - lg->start_us) / 1e6);
    if (lg->pub_lat.n)
        printf(" notify_lat_p50_us=%" PRIu64 " notify_lat_p99_us=%" PRIu64,
               hist_pct(&lg->pub_lat, 0.5), hist_pct(&lg->pub_lat, 0.99));
    if (lg->o.send_rate > 0)
        printf(" sends=%" PRIu64 " send_ok=%" PRIu64 " send_err=%" PRIu64 " send_matched=%" PRIu64
               " send_lat_p50_us=%" PRIu64 " send_lat_p99_us=%" PRIu64,
               lg->sends, lg->send_ok, lg->send_err, lg->send_matched, hist_pct(&lg->send_lat, 0.5),
               hist_pct(&lg->send_lat, 0.99));
    printf("\n");
    lg->last_notifies = lg->notifies;
    fflush(stdout);
}

static void
stop(struct lg *lg)
{
    if (lg->stopping)
        return;
    lg->stopping = true;
    print_status(lg, "final");
    hist_print("notify_lat", &lg->pub_lat);
    hist_print("send_lat", &lg->send_lat);
    hist_print("http_lat", &lg->http_lat);
    fflush(stdout);
    event_base_loopexit(lg->base, NULL);
}

/* Every second: status line, heartbeats for 1/heartbeat of the connections. */
static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lg *lg = arg;
    lg->tick++;
    if (lg->all_ready_us == 0 && lg->ready == lg->o.conns)
        lg->all_ready_us = now_us();
    int period = lg->o.mode == MODE_WS ? lg->o.heartbeat_s : lg->o.keepalive_s / 2;
    if (period < 1)
        period = 1;
    for (uint32_t i = (uint32_t)(lg->tick % period); i < (uint32_t)lg->o.conns; i += period) {
        struct conn *c = &lg->conns[i];
        if (c->state != CS_READY)
            continue;
        if (lg->o.mode == MODE_WS) {
            static const char ping[] = "{\"type\":\"ping\"}";
            ws_send(c, WS_OP_TEXT, ping, sizeof(ping) - 1);
        } else {
            static const uint8_t pingreq[2] = {0xC0, 0};
            bufferevent_write(c->bev, pingreq, 2);
        }
        lg->pings_sent++;
    }
    print_status(lg, "status");
    if (lg->tick >= lg->o.duration_s)
        stop(lg);
    /* A send run ends once every send is answered and notified (or 3 s after the last reply). */
    if (lg->o.send_count > 0 && lg->sends >= (uint64_t)lg->o.send_count &&
        lg->send_ok + lg->send_err >= lg->sends) {
        if (lg->sends_done_tick == 0)
            lg->sends_done_tick = lg->tick;
        if (lg->send_matched + lg->send_err >= lg->sends || lg->tick - lg->sends_done_tick >= 3)
            stop(lg);
    }
}

static void
signal_cb(evutil_socket_t sig, short what, void *arg)
{
    stop(arg);
}

/* SIGUSR1: prints the notify latency histogram so far and starts a new one (one per step). */
static void
usr1_cb(evutil_socket_t sig, short what, void *arg)
{
    struct lg *lg = arg;
    hist_print("notify_lat", &lg->pub_lat);
    memset(&lg->pub_lat, 0, sizeof(lg->pub_lat));
    fflush(stdout);
}

/* Raises the soft open-file limit to the hard one. */
static void
raise_nofile(int want)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) != 0)
        return;
    rl.rlim_cur = rl.rlim_max;
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
        perror("setrlimit");
    if ((rlim_t)want + 64 > rl.rlim_cur)
        fprintf(stderr,
                "loadgen: warning: %d connections but only %lu open files allowed per process; "
                "run more processes\n",
                want, (unsigned long)rl.rlim_cur);
}

static bool
loopback_addr(const char *s, struct in_addr *a)
{
    return inet_pton(AF_INET, s, a) == 1 && (ntohl(a->s_addr) >> 24) == 127;
}

static int
run_clients(struct opts *o)
{
    struct lg *lg = calloc(1, sizeof(*lg));
    if (lg == NULL)
        return 1;
    lg->o = *o;
    if (o->conns <= 0 || o->nports == 0 || o->src_count <= 0) {
        fprintf(stderr, "loadgen: need --conns > 0, --ports and a source range\n");
        return 2;
    }
    if (o->mode == MODE_WS && o->token_key == NULL) {
        fprintf(stderr, "loadgen: ws-idle needs --token-key\n");
        return 2;
    }
    if (o->send_rate > 0 && (o->server_key == NULL || o->logic_port == 0)) {
        fprintf(stderr, "loadgen: sending needs --logic-port and --server-key\n");
        return 2;
    }
    raise_nofile(o->conns);
    lg->keys.current_id = o->key_id;
    lg->keys.current_key = o->token_key;
    struct in_addr host;
    if (!loopback_addr(o->host, &host)) {
        fprintf(stderr, "loadgen: --host must be a loopback address\n");
        return 2;
    }
    lg->dst = calloc((size_t)o->nports, sizeof(*lg->dst));
    lg->src = calloc((size_t)o->src_count, sizeof(*lg->src));
    lg->conns = calloc((size_t)o->conns, sizeof(*lg->conns));
    lg->retryq = calloc((size_t)o->conns, sizeof(*lg->retryq));
    lg->retry_due = calloc((size_t)o->conns, sizeof(*lg->retry_due));
    if (!lg->dst || !lg->src || !lg->conns || !lg->retryq || !lg->retry_due)
        return 1;
    for (int i = 0; i < o->nports; i++) {
        lg->dst[i].sin_family = AF_INET;
        lg->dst[i].sin_addr = host;
        lg->dst[i].sin_port = htons((uint16_t)o->ports[i]);
    }
    for (int i = 0; i < o->src_count; i++) {
        lg->src[i].sin_family = AF_INET;
        lg->src[i].sin_addr.s_addr = htonl((127u << 24) | (uint32_t)(o->src_first + i));
    }
    for (int i = 0; i < o->conns; i++) {
        lg->conns[i].lg = lg;
        lg->conns[i].idx = (uint32_t)i;
    }
    rng_state ^= (uint64_t)now_us() * 2654435761u ^ (uint64_t)getpid();
    signal(SIGPIPE, SIG_IGN);
    lg->base = event_base_new();
    if (lg->base == NULL)
        return 1;
    lg->start_us = now_us();
    struct timeval t10 = {0, 10000}, t1 = {1, 0}, t5 = {0, 5000};
    lg->pace_ev = event_new(lg->base, -1, EV_PERSIST, pace_cb, lg);
    lg->tick_ev = event_new(lg->base, -1, EV_PERSIST, tick_cb, lg);
    event_add(lg->pace_ev, &t10);
    event_add(lg->tick_ev, &t1);
    if (o->send_rate > 0) {
        lg->send_ev = event_new(lg->base, -1, EV_PERSIST, send_cb, lg);
        event_add(lg->send_ev, &t5);
    }
    lg->sigterm = evsignal_new(lg->base, SIGTERM, signal_cb, lg);
    lg->sigint = evsignal_new(lg->base, SIGINT, signal_cb, lg);
    event_add(lg->sigterm, NULL);
    event_add(lg->sigint, NULL);
    lg->sigusr1 = evsignal_new(lg->base, SIGUSR1, usr1_cb, lg);
    event_add(lg->sigusr1, NULL);
    event_base_dispatch(lg->base);
    for (int i = 0; i < o->conns; i++)
        if (lg->conns[i].bev)
            bufferevent_free(lg->conns[i].bev);
    event_free(lg->pace_ev);
    event_free(lg->tick_ev);
    if (lg->send_ev)
        event_free(lg->send_ev);
    event_free(lg->sigterm);
    event_free(lg->sigint);
    event_free(lg->sigusr1);
    event_base_free(lg->base);
    free(lg->dst);
    free(lg->src);
    free(lg->conns);
    free(lg->retryq);
    free(lg->retry_due);
    free(lg);
    return 0;
}

/* ---- publish: notify lines straight to the lcsd nodes' channels --------- */

struct route {
    uint64_t uid;
    int node;
    char device[48];
    char conn[32];
};

static volatile sig_atomic_t pub_stop;

static void
pub_signal(int sig)
{
    pub_stop = 1;
}

/* Reads route:{app:uid} for every uid; returns the number of routes found. */
static long
load_routes(redisContext *rc, const struct opts *o, struct route **out, char ***nodes, int *nnodes)
{
    long cap = o->uid_count + 16, n = 0;
    struct route *r = calloc((size_t)cap, sizeof(*r));
    char **nd = calloc(256, sizeof(char *));
    int nn = 0;
    if (r == NULL || nd == NULL)
        return -1;
    const long chunk = 1000;
    for (long base = 0; base < o->uid_count; base += chunk) {
        long m = o->uid_count - base < chunk ? o->uid_count - base : chunk;
        for (long i = 0; i < m; i++)
            redisAppendCommand(rc, "HGETALL route:{%ld:%ld}", o->app, o->uid_first + base + i);
        for (long i = 0; i < m; i++) {
            redisReply *rep = NULL;
            if (redisGetReply(rc, (void **)&rep) != REDIS_OK || rep == NULL) {
                fprintf(stderr, "loadgen publish: redis: %s\n", rc->errstr);
                return -1;
            }
            for (size_t k = 0; rep->type == REDIS_REPLY_ARRAY && k + 1 < rep->elements; k += 2) {
                if (n >= cap) {
                    cap *= 2;
                    struct route *nr = realloc(r, (size_t)cap * sizeof(*r));
                    if (nr == NULL)
                        return -1;
                    r = nr;
                }
                char node[128], conn[32];
                if (sscanf(rep->element[k + 1]->str, "%127s %31s", node, conn) != 2)
                    continue;
                int ni = -1;
                for (int j = 0; j < nn; j++)
                    if (strcmp(nd[j], node) == 0)
                        ni = j;
                if (ni < 0) {
                    if (nn == 256)
                        continue;
                    nd[nn] = strdup(node);
                    ni = nn++;
                }
                struct route *x = &r[n++];
                x->uid = (uint64_t)(o->uid_first + base + i);
                x->node = ni;
                snprintf(x->device, sizeof(x->device), "%s", rep->element[k]->str);
                snprintf(x->conn, sizeof(x->conn), "%s", conn);
            }
            freeReplyObject(rep);
        }
    }
    *out = r;
    *nodes = nd;
    *nnodes = nn;
    return n;
}

static int
run_publish(const struct opts *o)
{
    redisContext *rc = redisConnect("127.0.0.1", o->redis_port);
    if (rc == NULL || rc->err) {
        fprintf(stderr, "loadgen publish: cannot connect to Redis on %d\n", o->redis_port);
        return 1;
    }
    struct route *routes;
    char **nodes;
    int nnodes;
    int64_t t0 = now_us();
    long nr = load_routes(rc, o, &routes, &nodes, &nnodes);
    if (nr <= 0) {
        fprintf(stderr, "loadgen publish: no routes found for uids %ld..%ld\n", o->uid_first,
                o->uid_first + o->uid_count - 1);
        return 1;
    }
    /*
     * Shuffled (fixed seed), so every instant's notifies spread over all
     * loadgen processes: in uid order they would hit one loadgen (which
     * holds a contiguous uid range) at a time and measure its backlog.
     */
    for (long i = nr - 1; i > 0; i--) {
        long j = (long)(rng_next() % (uint64_t)(i + 1));
        struct route tmp = routes[i];
        routes[i] = routes[j];
        routes[j] = tmp;
    }
    printf("routes %ld nodes %d load_s=%.2f\n", nr, nnodes, (double)(now_us() - t0) / 1e6);
    fflush(stdout);
    signal(SIGTERM, pub_signal);
    signal(SIGINT, pub_signal);
    size_t bufcap = 1 << 20;
    char **buf = calloc((size_t)nnodes, sizeof(char *));
    size_t *blen = calloc((size_t)nnodes, sizeof(size_t));
    for (int i = 0; i < nnodes; i++)
        buf[i] = malloc(bufcap);
    uint64_t sent = 0, publishes = 0, no_subscriber = 0, last_sent = 0;
    long cursor = 0;
    int64_t start = now_us(), next_status = start + 1000000;
    struct timespec nap = {0, (long)o->batch_ms * 1000000L};
    while (!pub_stop) {
        int64_t now = now_us();
        if (now - start >= (int64_t)o->duration_s * 1000000)
            break;
        uint64_t due = (uint64_t)(o->rate * (double)(now - start) / 1e6);
        int pending = 0;
        while (sent < due) {
            struct route *x = &routes[cursor];
            cursor = (cursor + 1) % nr;
            if (blen[x->node] + 200 > bufcap)
                break;
            blen[x->node] += (size_t)snprintf(buf[x->node] + blen[x->node], 200,
                                              "n %ld %" PRIu64 " %" PRId64 " %s %s\n", o->app,
                                              x->uid, now, x->device, x->conn);
            sent++;
        }
        for (int i = 0; i < nnodes; i++) {
            if (blen[i] == 0)
                continue;
            redisAppendCommand(rc, "PUBLISH lcs:{%s} %b", nodes[i], buf[i], blen[i]);
            blen[i] = 0;
            pending++;
        }
        for (int i = 0; i < pending; i++) {
            redisReply *rep = NULL;
            if (redisGetReply(rc, (void **)&rep) != REDIS_OK || rep == NULL) {
                fprintf(stderr, "loadgen publish: redis: %s\n", rc->errstr);
                return 1;
            }
            if (rep->type == REDIS_REPLY_INTEGER && rep->integer == 0)
                no_subscriber++;
            publishes++;
            freeReplyObject(rep);
        }
        if (now >= next_status) {
            printf("status publish t=%.1f sent=%" PRIu64 " rate=%" PRIu64 " publishes=%" PRIu64
                   " no_subscriber=%" PRIu64 "\n",
                   (double)(now - start) / 1e6, sent, sent - last_sent, publishes, no_subscriber);
            fflush(stdout);
            last_sent = sent;
            next_status += 1000000;
        }
        nanosleep(&nap, NULL);
    }
    double el = (double)(now_us() - start) / 1e6;
    printf("final publish sent=%" PRIu64 " elapsed_s=%.2f offered_rate=%.0f publishes=%" PRIu64
           " no_subscriber=%" PRIu64 "\n",
           sent, el, (double)sent / el, publishes, no_subscriber);
    fflush(stdout);
    for (int i = 0; i < nnodes; i++) {
        free(buf[i]);
        free(nodes[i]);
    }
    free(buf);
    free(blen);
    free(nodes);
    free(routes);
    redisFree(rc);
    return 0;
}

/* ---- report: merge HIST lines ------------------------------------------- */

static int
run_report(int argc, char **argv)
{
    const char *names[] = {"notify_lat", "send_lat", "http_lat"};
    for (size_t k = 0; k < sizeof(names) / sizeof(names[0]); k++) {
        struct hist *h = calloc(1, sizeof(*h));
        if (h == NULL)
            return 1;
        for (int a = 0; a < argc; a++) {
            FILE *f = fopen(argv[a], "r");
            if (f == NULL)
                continue;
            char *line = NULL;
            size_t cap = 0;
            while (getline(&line, &cap, f) > 0) {
                char name[32];
                uint64_t n, mx;
                int off = 0;
                if (sscanf(line, "HIST %31s n=%" SCNu64 " max=%" SCNu64 " b=%n", name, &n, &mx,
                           &off) < 3 ||
                    off == 0 || strcmp(name, names[k]) != 0)
                    continue;
                h->n += n;
                if (mx > h->max)
                    h->max = mx;
                char *p = line + off;
                while (*p && *p != '\n') {
                    char *e;
                    long idx = strtol(p, &e, 10);
                    if (*e != ':')
                        break;
                    uint64_t cnt = strtoull(e + 1, &e, 10);
                    if (idx >= 0 && idx < HIST_BUCKETS)
                        h->b[idx] += cnt;
                    p = *e == ',' ? e + 1 : e;
                }
            }
            free(line);
            fclose(f);
        }
        printf("%s n=%" PRIu64 " p50_us=%" PRIu64 " p90_us=%" PRIu64 " p99_us=%" PRIu64
               " max_us=%" PRIu64 "\n",
               names[k], h->n, hist_pct(h, 0.5), hist_pct(h, 0.9), hist_pct(h, 0.99), h->max);
        free(h);
    }
    return 0;
}

/* ---- main ---------------------------------------------------------------- */

static void
usage(FILE *f)
{
    fprintf(f, "usage: loadgen ws-idle|mqtt-idle [options]\n"
               "       loadgen publish --redis-port P --uid-first U --uid-count N --rate R "
               "--duration S\n"
               "       loadgen report FILE...\n"
               "client options:\n"
               "  --host A            destination (loopback) address, default 127.0.0.1\n"
               "  --ports P,P,...     destination ports, round-robin\n"
               "  --src-first N       first source address 127.0.0.N (default 2)\n"
               "  --src-count K       source addresses (default 8)\n"
               "  --conns N           connections of this process\n"
               "  --first I           global index of the first one (spreads ports/sources)\n"
               "  --uid-base B        uid = B + I (default 1)\n"
               "  --rate R            connects per second (default 2000)\n"
               "  --inflight N        unanswered connects at most (default 1000)\n"
               "  --retries N         attempts per connection (default 5)\n"
               "  --duration S        stop after S seconds (default 60)\n"
               "  --label L           name in the status lines\n"
               "  --token-key K --key-id ID --app A   token minting (ws-idle)\n"
               "  --device-prefix P   device ids / MQTT client ids (default d)\n"
               "  --heartbeat S       app ping period (ws-idle, default 30)\n"
               "  --keepalive S       MQTT keepalive (default 300)\n"
               "  --send-rate R --send-count N --logic-port P --server-key K [--send-after S]\n"
               "                      send messages via POST /v1/messages to logged-in users\n"
               "publish options: --batch-ms MS (default 5), --app A\n");
}

static int
parse_ports(const char *s, struct opts *o)
{
    char *dup = strdup(s), *save = NULL;
    for (char *t = strtok_r(dup, ",", &save); t && o->nports < MAX_PORTS;
         t = strtok_r(NULL, ",", &save))
        o->ports[o->nports++] = atoi(t);
    free(dup);
    return o->nports;
}

int
main(int argc, char **argv)
{
    if (argc < 2) {
        usage(stderr);
        return 2;
    }
    struct opts o = {
        .label = "lg",
        .host = "127.0.0.1",
        .src_first = 2,
        .src_count = 8,
        .uid_base = 1,
        .rate = 2000,
        .inflight = 1000,
        .retries = 5,
        .duration_s = 60,
        .key_id = "k1",
        .app = 1,
        .device_prefix = "d",
        .heartbeat_s = 30,
        .keepalive_s = 300,
        .batch_ms = 5,
        .uid_first = 1,
    };
    const char *m = argv[1];
    if (strcmp(m, "ws-idle") == 0)
        o.mode = MODE_WS;
    else if (strcmp(m, "mqtt-idle") == 0)
        o.mode = MODE_MQTT;
    else if (strcmp(m, "publish") == 0)
        o.mode = MODE_PUBLISH;
    else if (strcmp(m, "report") == 0)
        return run_report(argc - 2, argv + 2);
    else if (strcmp(m, "-h") == 0 || strcmp(m, "--help") == 0) {
        usage(stdout);
        return 0;
    } else {
        usage(stderr);
        return 2;
    }
    static const struct option lo[] = {
        {"host", 1, 0, 'H'},
        {"ports", 1, 0, 'p'},
        {"src-first", 1, 0, 's'},
        {"src-count", 1, 0, 'k'},
        {"conns", 1, 0, 'n'},
        {"first", 1, 0, 'f'},
        {"uid-base", 1, 0, 'u'},
        {"rate", 1, 0, 'r'},
        {"inflight", 1, 0, 'i'},
        {"retries", 1, 0, 'R'},
        {"duration", 1, 0, 'd'},
        {"label", 1, 0, 'l'},
        {"token-key", 1, 0, 'K'},
        {"key-id", 1, 0, 'I'},
        {"app", 1, 0, 'a'},
        {"device-prefix", 1, 0, 'D'},
        {"heartbeat", 1, 0, 'b'},
        {"keepalive", 1, 0, 'A'},
        {"send-rate", 1, 0, 'S'},
        {"send-count", 1, 0, 'C'},
        {"logic-port", 1, 0, 'L'},
        {"server-key", 1, 0, 'X'},
        {"send-after", 1, 0, 'W'},
        {"redis-port", 1, 0, 'P'},
        {"uid-first", 1, 0, 'U'},
        {"uid-count", 1, 0, 'N'},
        {"batch-ms", 1, 0, 'B'},
        {"help", 0, 0, 'h'},
        {0, 0, 0, 0},
    };
    int ch;
    optind = 2;
    while ((ch = getopt_long(argc, argv, "h", lo, NULL)) != -1) {
        switch (ch) {
        case 'H':
            o.host = optarg;
            break;
        case 'p':
            parse_ports(optarg, &o);
            break;
        case 's':
            o.src_first = atoi(optarg);
            break;
        case 'k':
            o.src_count = atoi(optarg);
            break;
        case 'n':
            o.conns = atoi(optarg);
            break;
        case 'f':
            o.first = atol(optarg);
            break;
        case 'u':
            o.uid_base = atol(optarg);
            break;
        case 'r':
            o.rate = atof(optarg);
            break;
        case 'i':
            o.inflight = atoi(optarg);
            break;
        case 'R':
            o.retries = atoi(optarg);
            break;
        case 'd':
            o.duration_s = atoi(optarg);
            break;
        case 'l':
            o.label = optarg;
            break;
        case 'K':
            o.token_key = optarg;
            break;
        case 'I':
            o.key_id = optarg;
            break;
        case 'a':
            o.app = atol(optarg);
            break;
        case 'D':
            o.device_prefix = optarg;
            break;
        case 'b':
            o.heartbeat_s = atoi(optarg);
            break;
        case 'A':
            o.keepalive_s = atoi(optarg);
            break;
        case 'S':
            o.send_rate = atof(optarg);
            break;
        case 'C':
            o.send_count = atol(optarg);
            break;
        case 'L':
            o.logic_port = atoi(optarg);
            break;
        case 'X':
            o.server_key = optarg;
            break;
        case 'W':
            o.send_after_s = atoi(optarg);
            break;
        case 'P':
            o.redis_port = atoi(optarg);
            break;
        case 'U':
            o.uid_first = atol(optarg);
            break;
        case 'N':
            o.uid_count = atol(optarg);
            break;
        case 'B':
            o.batch_ms = atoi(optarg);
            break;
        case 'h':
            usage(stdout);
            return 0;
        default:
            usage(stderr);
            return 2;
        }
    }
    if (o.src_first < 1 || o.src_first + o.src_count > 255 || o.retries < 1 || o.rate <= 0 ||
        o.duration_s < 1 || o.batch_ms < 1) {
        fprintf(stderr, "loadgen: bad option values\n");
        return 2;
    }
    if (o.mode == MODE_PUBLISH) {
        if (o.redis_port == 0 || o.uid_count <= 0) {
            fprintf(stderr, "loadgen publish: need --redis-port and --uid-count\n");
            return 2;
        }
        return run_publish(&o);
    }
    if (o.retries > 250)
        o.retries = 250;
    return run_clients(&o);
}
