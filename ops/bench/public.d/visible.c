/*
 * visible.c: publish-to-visible latency of a notice across two logicd
 * processes (ops/bench/public, benchmark a).
 *
 * Each iteration:
 *   1. sleeps a random 0..interval_ms, so the publish falls at a random
 *      phase of logicd B's poller (the distribution is then honest: not
 *      locked to the poll period);
 *   2. creates a draft on logicd A (POST /v1/notices, internal listener);
 *   3. t0 = now; publishes it on A (POST /v1/notices/{id}/publish);
 *   4. every poll_ms, syncs (POST /v1/sync) on B's SDK listener, and on A's
 *      as a control, with a cursor kept current from every reply, until the
 *      notice is in the items; latency = reception of that reply - t0;
 *   5. stops the notice (outside the timed part), so the caches hold no
 *      live notice when the run ends.
 * The detection is late by at most poll_ms plus one sync round trip.
 *
 * Plain sockets, HTTP/1.1 keep-alive, one connection per listener: no
 * library beyond libc, so the script compiles it with a bare `cc`.
 *
 * usage: visible OPS_PORT SDK_A_PORT SDK_B_PORT OPS_TOKEN USER_TOKEN APP_ID
 *                COUNT INTERVAL_MS POLL_MS TIMEOUT_MS SEED
 * Prints one line per iteration, then a "BENCH key=value ..." line.
 * Exit status: 0 when every iteration completed (whatever the figures),
 * 1 when a request failed (the reason is printed).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

struct conn {
    int port;
    int fd;
    const char *name;
};

static char *body; /* last response body */
static size_t body_cap;

static void
fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stdout, "visible: error: ");
    vfprintf(stdout, fmt, ap);
    fprintf(stdout, "\n");
    va_end(ap);
    fflush(stdout);
    exit(1);
}

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
sleep_us(int64_t us)
{
    if (us <= 0)
        return;
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
        ;
}

static bool
conn_open(struct conn *c)
{
    c->fd = socket(AF_INET, SOCK_STREAM, 0);
    if (c->fd < 0)
        return false;
    int one = 1;
    setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    struct timeval tv = {10, 0};
    setsockopt(c->fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    setsockopt(c->fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof(tv));
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)c->port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c->fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(c->fd);
        c->fd = -1;
        return false;
    }
    return true;
}

static bool
write_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t k = write(fd, p, n);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return false;
        p += k;
        n -= (size_t)k;
    }
    return true;
}

/* One exchange on an open connection: the status, or -1 on a socket error. */
static int
exchange(struct conn *c, const char *req, size_t reqlen)
{
    if (!write_all(c->fd, req, reqlen))
        return -1;
    static char buf[1 << 16];
    size_t have = 0;
    char *hend = NULL;
    while (hend == NULL) {
        if (have == sizeof(buf) - 1)
            return -1;
        ssize_t k = read(c->fd, buf + have, sizeof(buf) - 1 - have);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        have += (size_t)k;
        buf[have] = '\0';
        hend = strstr(buf, "\r\n\r\n");
    }
    int status = 0;
    if (sscanf(buf, "HTTP/1.%*d %d", &status) != 1)
        return -1;
    size_t hlen = (size_t)(hend + 4 - buf);
    size_t clen = 0;
    bool closing = false;
    for (char *line = strstr(buf, "\r\n") + 2; line < hend; line = strstr(line, "\r\n") + 2) {
        if (strncasecmp(line, "Content-Length:", 15) == 0)
            clen = strtoul(line + 15, NULL, 10);
        else if (strncasecmp(line, "Connection:", 11) == 0 && strcasestr(line, "close") != NULL &&
                 strcasestr(line, "close") < strstr(line, "\r\n"))
            closing = true;
        else if (strncasecmp(line, "Transfer-Encoding:", 18) == 0)
            fail("%s: chunked replies are not handled", c->name);
    }
    if (clen + 1 > body_cap) {
        body_cap = clen + 1;
        body = realloc(body, body_cap);
        if (body == NULL)
            fail("out of memory");
    }
    size_t got = have - hlen < clen ? have - hlen : clen;
    memcpy(body, buf + hlen, got);
    while (got < clen) {
        ssize_t k = read(c->fd, body + got, clen - got);
        if (k < 0 && errno == EINTR)
            continue;
        if (k <= 0)
            return -1;
        got += (size_t)k;
    }
    body[clen] = '\0';
    if (closing) {
        close(c->fd);
        c->fd = -1;
    }
    return status;
}

/* A request, reconnecting once when the kept-alive connection was closed. */
static int
request(struct conn *c, const char *method, const char *path, const char *token, const char *json)
{
    char req[4096];
    int n = snprintf(req, sizeof(req),
                     "%s %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\nAuthorization: Bearer %s\r\n"
                     "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                     method, path, c->port, token, json ? strlen(json) : 0, json ? json : "");
    if (n <= 0 || (size_t)n >= sizeof(req))
        fail("request too long");
    for (int attempt = 0; attempt < 2; attempt++) {
        if (c->fd < 0 && !conn_open(c))
            fail("%s: cannot connect to 127.0.0.1:%d: %s", c->name, c->port, strerror(errno));
        int st = exchange(c, req, (size_t)n);
        if (st > 0)
            return st;
        close(c->fd);
        c->fd = -1;
    }
    fail("%s: %s %s: no reply (connection failed twice)", c->name, method, path);
    return -1;
}

/* The string value of "key":"..." in body (first occurrence), or false. */
static bool
json_str(const char *key, char *out, size_t outlen)
{
    char pat[64];
    snprintf(pat, sizeof(pat), "\"%s\":\"", key);
    const char *p = strstr(body, pat);
    if (p == NULL)
        return false;
    p += strlen(pat);
    const char *e = strchr(p, '"');
    if (e == NULL || (size_t)(e - p) >= outlen)
        return false;
    memcpy(out, p, (size_t)(e - p));
    out[e - p] = '\0';
    return true;
}

struct viewer {
    struct conn c;
    const char *token;
    char cursor[256];
    int64_t seen_us; /* 0 until the notice is seen */
    uint64_t syncs;
};

/* One sync; true when the reply holds notice id. Keeps the cursor current. */
static bool
sync_sees(struct viewer *v, const char *id)
{
    char json[512];
    snprintf(json, sizeof(json), "{\"cursor\":\"%s\",\"limit\":100}", v->cursor);
    int st = request(&v->c, "POST", "/v1/sync", v->token, json);
    v->syncs++;
    if (st != 200)
        fail("%s: POST /v1/sync: HTTP %d %s", v->c.name, st, body);
    char cur[256];
    if (!json_str("cursor", cur, sizeof(cur)))
        fail("%s: no cursor in the sync reply: %s", v->c.name, body);
    snprintf(v->cursor, sizeof(v->cursor), "%s", cur);
    char pat[64];
    snprintf(pat, sizeof(pat), "\"notice_id\":\"%s\"", id);
    return strstr(body, pat) != NULL;
}

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of a sorted array. */
static int64_t
pct(const int64_t *v, int n, double p)
{
    int rank = (int)((p / 100.0) * n + 0.999999);
    if (rank < 1)
        rank = 1;
    if (rank > n)
        rank = n;
    return v[rank - 1];
}

int
main(int argc, char **argv)
{
    if (argc != 12) {
        fprintf(stderr,
                "usage: %s OPS_PORT SDK_A_PORT SDK_B_PORT OPS_TOKEN USER_TOKEN APP_ID COUNT "
                "INTERVAL_MS POLL_MS TIMEOUT_MS SEED\n",
                argv[0]);
        return 2;
    }
    struct conn ops = {atoi(argv[1]), -1, "logicd A internal"};
    struct viewer va = {.c = {atoi(argv[2]), -1, "logicd A sdk"}, .token = argv[5]};
    struct viewer vb = {.c = {atoi(argv[3]), -1, "logicd B sdk"}, .token = argv[5]};
    const char *ops_token = argv[4];
    const char *app = argv[6];
    int count = atoi(argv[7]);
    int interval_ms = atoi(argv[8]);
    int poll_ms = atoi(argv[9]);
    int timeout_ms = atoi(argv[10]);
    srandom((unsigned)strtoul(argv[11], NULL, 10));
    if (count < 1 || interval_ms < 1 || poll_ms < 1 || timeout_ms < 1)
        fail("COUNT, INTERVAL_MS, POLL_MS and TIMEOUT_MS must be positive");

    int64_t *lat_b = calloc((size_t)count, sizeof(int64_t));
    int64_t *lat_a = calloc((size_t)count, sizeof(int64_t));
    int64_t *lat_pub = calloc((size_t)count, sizeof(int64_t));
    if (lat_b == NULL || lat_a == NULL || lat_pub == NULL)
        fail("out of memory");

    /* Bring both cursors to the present. */
    (void)sync_sees(&va, "-");
    (void)sync_sees(&vb, "-");

    printf("%4s %12s %10s %12s %12s %10s %8s\n", "iter", "notice_id", "phase_ms", "publish_ms",
           "visible_B_ms", "visible_A_ms", "syncs_B");
    int timeouts = 0;
    for (int i = 0; i < count; i++) {
        int64_t phase_us = random() % ((int64_t)interval_ms * 1000);
        sleep_us(phase_us);

        char json[256], id[32], path[96];
        snprintf(json, sizeof(json),
                 "{\"app_id\":\"%s\",\"title\":\"visible %d\",\"content\":\"publish-to-visible "
                 "probe %d\"}",
                 app, i, i);
        int st = request(&ops, "POST", "/v1/notices", ops_token, json);
        if (st != 201 || !json_str("notice_id", id, sizeof(id)))
            fail("POST /v1/notices: HTTP %d %s", st, body);
        snprintf(path, sizeof(path), "/v1/notices/%s/publish", id);

        va.seen_us = vb.seen_us = 0;
        uint64_t syncs_b0 = vb.syncs;
        int64_t t0 = now_us();
        st = request(&ops, "POST", path, ops_token, NULL);
        int64_t t_pub = now_us();
        if (st != 200)
            fail("POST %s: HTTP %d %s", path, st, body);
        int64_t next = t_pub;
        while (va.seen_us == 0 || vb.seen_us == 0) {
            if (vb.seen_us == 0 && sync_sees(&vb, id))
                vb.seen_us = now_us();
            if (va.seen_us == 0 && sync_sees(&va, id))
                va.seen_us = now_us();
            int64_t t = now_us();
            if (t - t0 > (int64_t)timeout_ms * 1000)
                break;
            next += (int64_t)poll_ms * 1000;
            if (next > t)
                sleep_us(next - t);
            else
                next = t;
        }
        lat_pub[i] = t_pub - t0;
        lat_b[i] = vb.seen_us ? vb.seen_us - t0 : (int64_t)timeout_ms * 1000;
        lat_a[i] = va.seen_us ? va.seen_us - t0 : (int64_t)timeout_ms * 1000;
        if (vb.seen_us == 0 || va.seen_us == 0)
            timeouts++;
        printf("%4d %12s %10.1f %12.2f %12.2f%s %10.2f%s %8" PRIu64 "\n", i + 1, id,
               phase_us / 1000.0, lat_pub[i] / 1000.0, lat_b[i] / 1000.0, vb.seen_us ? "" : "!",
               lat_a[i] / 1000.0, va.seen_us ? "" : "!", vb.syncs - syncs_b0);
        fflush(stdout);

        /* Out of the timed part: leave no live notice behind. */
        snprintf(path, sizeof(path), "/v1/notices/%s/stop", id);
        st = request(&ops, "POST", path, ops_token, NULL);
        if (st != 200)
            fail("POST %s: HTTP %d %s", path, st, body);
    }

    qsort(lat_b, (size_t)count, sizeof(int64_t), cmp_i64);
    qsort(lat_a, (size_t)count, sizeof(int64_t), cmp_i64);
    qsort(lat_pub, (size_t)count, sizeof(int64_t), cmp_i64);
    double sum = 0;
    for (int i = 0; i < count; i++)
        sum += (double)lat_b[i];
    printf("BENCH n=%d timeouts=%d b_p50_ms=%.2f b_p90_ms=%.2f b_p99_ms=%.2f b_max_ms=%.2f "
           "b_min_ms=%.2f b_mean_ms=%.2f a_p50_ms=%.2f a_p99_ms=%.2f a_max_ms=%.2f "
           "pub_p50_ms=%.2f pub_p99_ms=%.2f pub_max_ms=%.2f\n",
           count, timeouts, pct(lat_b, count, 50) / 1000.0, pct(lat_b, count, 90) / 1000.0,
           pct(lat_b, count, 99) / 1000.0, lat_b[count - 1] / 1000.0, lat_b[0] / 1000.0,
           sum / count / 1000.0, pct(lat_a, count, 50) / 1000.0, pct(lat_a, count, 99) / 1000.0,
           lat_a[count - 1] / 1000.0, pct(lat_pub, count, 50) / 1000.0,
           pct(lat_pub, count, 99) / 1000.0, lat_pub[count - 1] / 1000.0);
    return 0;
}
