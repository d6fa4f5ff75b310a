/*
 * flood: the load tool of ops/bench/flood. Floods that need no credential
 * (or only the server key, to reach past authentication), against logicd on
 * loopback, and the probe and sampler that judge them.
 *
 *   flood probe     GET /healthz on a fresh connection every --interval-ms
 *                   until SIGTERM/SIGINT (or --seconds); each probe slower
 *                   than --limit-ms or without a 200 is printed ("bad"), the
 *                   final line has the count, failures and max latency.
 *   flood slow      --count connections sending a request one byte every
 *                   --trickle-ms for --seconds: --kind head sends a head that
 *                   never ends; --kind body sends a complete head (with
 *                   --key) at once, then a body that never ends. Records
 *                   when the server cuts each one. With --after-probe, one
 *                   GET /healthz on the same port at the end, while the
 *                   connections the server left open are still held (any
 *                   whole answer counts: the listener accepts and answers).
 *   flood body      --count connections declaring a body of --body-bytes on
 *                   --path with the credential --auth (a wrong one), each
 *                   sending all of it but the last byte; holds --hold-s,
 *                   then sends the last byte and reads the answers.
 *   flood pipeline  one connection: when --big-bytes > 0 one request with a
 *                   body that large (of 'x', not JSON) to --path (default an
 *                   unknown path) with the credential --key, then
 *                   --tiny-bytes of pipelined GET /flood (404), the answers read
 *                   concurrently, at most --window of them unanswered
 *                   (0, the default: all sent as fast as the socket takes
 *                   them); prints logicd's CPU time over the run
 *                   (--pid, utime + stime of /proc/PID/stat) per answer,
 *                   per request sent whole and per request offered (all
 *                   of them, sent or not).
 *   flood sample    samples --pid's VmRSS and open descriptors every
 *                   --interval-ms until SIGTERM; each sample is judged
 *                   against --base-kib + --per-conn-kib x connections, where
 *                   connections = descriptors - descriptors of the first
 *                   sample.
 *
 * Output: a "status ..." line a second (slow, body, sample) and one
 * "final mode=... key=value ..." line on stdout, which ops/bench/lib.sh's
 * field() reads. Only 127.0.0.0/8 addresses are accepted. Exit 0 when it
 * measured (whatever the figures), 1 when it could not, 2 on bad usage.
 */
#include <arpa/inet.h>
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <getopt.h>
#include <inttypes.h>
#include <limits.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

/* Caps of the arguments: the tool is for bounded runs on one machine. */
#define MAX_CONNS       50000
#define MAX_BODY        (1ull << 30)
#define MAX_SECONDS     3600
#define CONNECT_TIMEOUT 5000000 /* us */
#define MAX_CONNECTING  256     /* connects in flight */
#define RESP_HEAD_MAX   8192
#define MAX_STATUSES    16

/* ---- common ---------------------------------------------------------------- */

static volatile sig_atomic_t stop_flag;

static void
on_signal(int sig)
{
    (void)sig;
    stop_flag = 1;
}

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void
fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "flood: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
    exit(1);
}

static void
usage(void)
{
    fprintf(stderr,
            "usage: flood probe    --addr 127.0.0.1:PORT [--interval-ms 200] [--timeout-ms 3000]\n"
            "                      [--limit-ms 1000] [--seconds S]\n"
            "       flood slow     --addr A --count N --trickle-ms MS --seconds S [--rate R]\n"
            "                      [--kind head|body] [--key K] [--after-probe]\n"
            "       flood body     --addr A --count N --body-bytes B --path P --auth T\n"
            "                      [--hold-s 5] [--rate R] [--seconds S (send timeout)]\n"
            "       flood pipeline --addr A --pid PID --tiny-bytes B [--big-bytes B] [--key K]\n"
            "                      [--path P (of the big request)] [--window N]\n"
            "                      [--seconds S (timeout)]\n"
            "       flood sample   --pid PID [--interval-ms 100] [--base-kib 65536]\n"
            "                      [--per-conn-kib 4]\n"
            "(see the comment at the top of ops/bench/flood.c)\n");
    exit(2);
}

struct opts {
    struct sockaddr_in addr;
    bool have_addr;
    long count, interval_ms, timeout_ms, limit_ms, seconds, trickle_ms, rate, hold_s;
    long pid, base_kib, per_conn_kib, window;
    unsigned long long body_bytes, big_bytes, tiny_bytes;
    const char *kind, *key, *path, *auth;
    bool after_probe;
};

static long
num_arg(const char *name, const char *s, long lo, long hi)
{
    char *end;
    errno = 0;
    long v = strtol(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || v < lo || v > hi) {
        fprintf(stderr, "flood: --%s: '%s' is not a number in %ld..%ld\n", name, s, lo, hi);
        exit(2);
    }
    return v;
}

static unsigned long long
bytes_arg(const char *name, const char *s)
{
    char *end;
    errno = 0;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno != 0 || end == s || *end != '\0' || s[0] == '-' || v > MAX_BODY) {
        fprintf(stderr, "flood: --%s: '%s' is not a byte count up to %llu\n", name, s, MAX_BODY);
        exit(2);
    }
    return v;
}

/* 127.x.y.z:PORT only: the tool never leaves the machine. */
static void
addr_arg(struct opts *o, const char *s)
{
    char host[64];
    const char *colon = strrchr(s, ':');
    if (colon == NULL || (size_t)(colon - s) >= sizeof(host))
        fatal("--addr '%s' is not 127.x.y.z:PORT", s);
    memcpy(host, s, (size_t)(colon - s));
    host[colon - s] = '\0';
    memset(&o->addr, 0, sizeof(o->addr));
    o->addr.sin_family = AF_INET;
    o->addr.sin_port = htons((uint16_t)num_arg("addr", colon + 1, 1, 65535));
    if (inet_pton(AF_INET, host, &o->addr.sin_addr) != 1 ||
        (ntohl(o->addr.sin_addr.s_addr) >> 24) != 127)
        fatal("--addr '%s' is not a loopback address 127.x.y.z:PORT", s);
    o->have_addr = true;
}

static void
parse_opts(struct opts *o, int argc, char **argv)
{
    static const struct option longopts[] = {
        {"addr", required_argument, NULL, 'a'},
        {"count", required_argument, NULL, 'n'},
        {"interval-ms", required_argument, NULL, 'i'},
        {"timeout-ms", required_argument, NULL, 'T'},
        {"limit-ms", required_argument, NULL, 'l'},
        {"seconds", required_argument, NULL, 's'},
        {"trickle-ms", required_argument, NULL, 't'},
        {"rate", required_argument, NULL, 'r'},
        {"hold-s", required_argument, NULL, 'h'},
        {"pid", required_argument, NULL, 'p'},
        {"base-kib", required_argument, NULL, 'B'},
        {"per-conn-kib", required_argument, NULL, 'C'},
        {"body-bytes", required_argument, NULL, 'b'},
        {"big-bytes", required_argument, NULL, 'g'},
        {"tiny-bytes", required_argument, NULL, 'y'},
        {"kind", required_argument, NULL, 'k'},
        {"key", required_argument, NULL, 'K'},
        {"path", required_argument, NULL, 'P'},
        {"auth", required_argument, NULL, 'A'},
        {"after-probe", no_argument, NULL, 'x'},
        {"window", required_argument, NULL, 'w'},
        {NULL, 0, NULL, 0},
    };
    *o = (struct opts){.interval_ms = 200,
                       .timeout_ms = 3000,
                       .limit_ms = 1000,
                       .rate = 2000,
                       .hold_s = 5,
                       .base_kib = 65536,
                       .per_conn_kib = 4,
                       .kind = "head",
                       .key = "",
                       .path = NULL,
                       .auth = "wrong"};
    int ch;
    while ((ch = getopt_long(argc, argv, "", longopts, NULL)) != -1) {
        switch (ch) {
        case 'a':
            addr_arg(o, optarg);
            break;
        case 'n':
            o->count = num_arg("count", optarg, 1, MAX_CONNS);
            break;
        case 'i':
            o->interval_ms = num_arg("interval-ms", optarg, 1, 600000);
            break;
        case 'T':
            o->timeout_ms = num_arg("timeout-ms", optarg, 1, 600000);
            break;
        case 'l':
            o->limit_ms = num_arg("limit-ms", optarg, 1, 600000);
            break;
        case 's':
            o->seconds = num_arg("seconds", optarg, 1, MAX_SECONDS);
            break;
        case 't':
            o->trickle_ms = num_arg("trickle-ms", optarg, 1, 600000);
            break;
        case 'r':
            o->rate = num_arg("rate", optarg, 1, 1000000);
            break;
        case 'h':
            o->hold_s = num_arg("hold-s", optarg, 0, MAX_SECONDS);
            break;
        case 'p':
            o->pid = num_arg("pid", optarg, 1, 1 << 30);
            break;
        case 'B':
            o->base_kib = num_arg("base-kib", optarg, 0, 1L << 40);
            break;
        case 'C':
            o->per_conn_kib = num_arg("per-conn-kib", optarg, 0, 1 << 20);
            break;
        case 'b':
            o->body_bytes = bytes_arg("body-bytes", optarg);
            break;
        case 'g':
            o->big_bytes = bytes_arg("big-bytes", optarg);
            break;
        case 'y':
            o->tiny_bytes = bytes_arg("tiny-bytes", optarg);
            break;
        case 'k':
            o->kind = optarg;
            break;
        case 'K':
            o->key = optarg;
            break;
        case 'P':
            o->path = optarg;
            break;
        case 'A':
            o->auth = optarg;
            break;
        case 'x':
            o->after_probe = true;
            break;
        case 'w':
            o->window = num_arg("window", optarg, 0, 1 << 30);
            break;
        default:
            usage();
        }
    }
    if (optind != argc)
        usage();
    /* Values pasted into request heads: no CR, LF or spaces. */
    const char *pasted[] = {o->key, o->path != NULL ? o->path : "", o->auth};
    for (size_t i = 0; i < sizeof(pasted) / sizeof(pasted[0]); i++)
        for (const char *p = pasted[i]; *p != '\0'; p++)
            if (!isgraph((unsigned char)*p) || p - pasted[i] > 1024)
                fatal("'%s' cannot go into a request head", pasted[i]);
}

/* A non-blocking socket with a connect in progress; -1 when it failed at once. */
static int
start_connect(const struct sockaddr_in *a)
{
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -1;
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (connect(fd, (const struct sockaddr *)a, sizeof(*a)) != 0 && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    return fd;
}

static int
cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of v[0..n) (sorted in place); 0 when empty. */
static int64_t
pct(int64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_i64);
    size_t rank = (size_t)(p * (double)n + 0.999999);
    if (rank == 0)
        rank = 1;
    return v[rank > n ? n - 1 : rank - 1];
}

/* Counts per HTTP status, printed as statuses=200:5,404:1 (or "none"). */
struct statuses {
    int code[MAX_STATUSES];
    long n[MAX_STATUSES];
    int used;
};

static void
status_add(struct statuses *s, int code)
{
    for (int i = 0; i < s->used; i++)
        if (s->code[i] == code) {
            s->n[i]++;
            return;
        }
    if (s->used < MAX_STATUSES) {
        s->code[s->used] = code;
        s->n[s->used++] = 1;
    } else {
        s->n[MAX_STATUSES - 1]++; /* too many kinds: the last one takes the rest */
    }
}

static long
status_count(const struct statuses *s, int code)
{
    for (int i = 0; i < s->used; i++)
        if (s->code[i] == code)
            return s->n[i];
    return 0;
}

static void
status_print(const char *key, const struct statuses *s)
{
    printf(" %s=", key);
    if (s->used == 0)
        printf("none");
    for (int i = 0; i < s->used; i++)
        printf("%s%d:%ld", i ? "," : "", s->code[i], s->n[i]);
}

/* The status code of a response starting in buf ("HTTP/1.x NNN"), 0 if not one. */
static int
status_of(const char *buf, size_t len)
{
    if (len < 12 || memcmp(buf, "HTTP/1.", 7) != 0 || buf[8] != ' ')
        return 0;
    int code = 0;
    for (int i = 9; i < 12; i++) {
        if (!isdigit((unsigned char)buf[i]))
            return 0;
        code = code * 10 + (buf[i] - '0');
    }
    return code;
}

/*
 * Streaming reader of HTTP/1.1 responses (Content-Length framed, as
 * logicd's are): resp_feed() returns how many responses ended in the bytes
 * given (their statuses added to st), or -1 on a malformed stream.
 */
struct resp {
    char head[RESP_HEAD_MAX];
    size_t head_len;
    unsigned long long body_left;
    int status;
};

static long
resp_feed(struct resp *p, const char *d, size_t n, struct statuses *st)
{
    long done = 0;
    while (n > 0) {
        if (p->body_left > 0) {
            size_t k = n < p->body_left ? n : (size_t)p->body_left;
            p->body_left -= k;
            d += k;
            n -= k;
            if (p->body_left == 0) {
                status_add(st, p->status);
                done++;
            }
            continue;
        }
        if (p->head_len == sizeof(p->head) - 1)
            return -1;
        p->head[p->head_len++] = *d++;
        n--;
        if (p->head_len < 4 || memcmp(p->head + p->head_len - 4, "\r\n\r\n", 4) != 0)
            continue;
        p->head[p->head_len] = '\0';
        p->status = status_of(p->head, p->head_len);
        p->head_len = 0;
        if (p->status == 0)
            return -1;
        if (p->status < 200)
            continue; /* 100 Continue: the real answer follows */
        const char *cl = strcasestr(p->head, "\r\ncontent-length:");
        p->body_left = cl != NULL ? strtoull(cl + 17, NULL, 10) : 0;
        if (p->body_left == 0) {
            status_add(st, p->status);
            done++;
        }
    }
    return done;
}

/* ---- probe ------------------------------------------------------------------- */

#define PROBE_REQ "GET /healthz HTTP/1.1\r\nHost: flood\r\nConnection: close\r\n\r\n"

struct probe_result {
    int status; /* HTTP status, 0 when none came */
    int64_t us; /* time to the complete answer, or to the failure */
    const char
        *reason; /* "ok", "connect", "timeout", "closed", "reset", "bad_response", "stopped" */
};

/* Waits for events on fd until deadline; false on timeout (or stop when stoppable). */
static bool
wait_fd(int fd, short events, int64_t deadline, bool stoppable)
{
    for (;;) {
        if (stoppable && stop_flag)
            return false;
        int64_t left = deadline - now_us();
        if (left <= 0)
            return false;
        struct pollfd pfd = {.fd = fd, .events = events};
        int r = poll(&pfd, 1, (int)((left + 999) / 1000));
        if (r > 0)
            return true;
        if (r < 0 && errno != EINTR)
            return false;
    }
}

/* One GET /healthz on a fresh connection, bounded by timeout_ms. */
static struct probe_result
probe_once(const struct sockaddr_in *a, long timeout_ms, bool stoppable)
{
    int64_t t0 = now_us(), deadline = t0 + timeout_ms * 1000;
    struct probe_result res = {0, 0, "ok"};
    int fd = start_connect(a);
    if (fd < 0) {
        res.reason = "connect";
        goto out;
    }
    if (!wait_fd(fd, POLLOUT, deadline, stoppable)) {
        res.reason = stop_flag && stoppable ? "stopped" : "timeout";
        goto out;
    }
    int err = 0;
    socklen_t elen = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0 || send(fd, PROBE_REQ, sizeof(PROBE_REQ) - 1, MSG_NOSIGNAL) !=
                        (ssize_t)(sizeof(PROBE_REQ) - 1)) {
        res.reason = "connect";
        goto out;
    }
    struct resp rp = {0};
    struct statuses st = {0};
    char buf[4096];
    for (;;) {
        if (!wait_fd(fd, POLLIN, deadline, stoppable)) {
            res.reason = stop_flag && stoppable ? "stopped" : "timeout";
            goto out;
        }
        ssize_t n = recv(fd, buf, sizeof(buf), 0);
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            continue;
        if (n <= 0) {
            res.reason = n == 0 ? "closed" : "reset";
            goto out;
        }
        long done = resp_feed(&rp, buf, (size_t)n, &st);
        if (done < 0) {
            res.reason = "bad_response";
            goto out;
        }
        if (done > 0) {
            res.status = st.code[0];
            break;
        }
    }
out:
    res.us = now_us() - t0;
    if (fd >= 0)
        close(fd);
    return res;
}

static int
mode_probe(const struct opts *o)
{
    if (!o->have_addr)
        usage();
    size_t cap = 1024, n = 0;
    int64_t *lat = malloc(cap * sizeof(*lat));
    if (lat == NULL)
        fatal("out of memory");
    long ok = 0, late = 0, failed = 0; /* failed: no 200 at all (none, or another status) */
    int64_t max_us = 0, start = now_us();
    int64_t end = o->seconds > 0 ? start + o->seconds * 1000000LL : INT64_MAX;
    int64_t next = start;
    while (!stop_flag && now_us() < end) {
        int64_t t = now_us();
        struct probe_result r = probe_once(&o->addr, o->timeout_ms, true);
        if (strcmp(r.reason, "stopped") == 0)
            break;
        if (n == cap) {
            int64_t *p = realloc(lat, 2 * cap * sizeof(*lat));
            if (p == NULL)
                break;
            lat = p;
            cap *= 2;
        }
        lat[n++] = r.us;
        if (r.us > max_us)
            max_us = r.us;
        bool answered = r.status == 200;
        if (answered && r.us <= o->limit_ms * 1000) {
            ok++;
        } else {
            if (answered)
                late++;
            else
                failed++;
            const char *why = answered ? "late" : r.status != 0 ? "status" : r.reason;
            printf("bad t_s=%.1f ms=%.0f status=%d reason=%s\n", (double)(t - start) / 1e6,
                   (double)r.us / 1000, r.status, why);
            fflush(stdout);
        }
        next += o->interval_ms * 1000;
        int64_t now = now_us();
        if (next < now)
            next = now; /* a slow probe delays the next, it does not bunch them */
        while (!stop_flag && now_us() < next)
            usleep((useconds_t)(next - now_us() > 20000 ? 20000 : next - now_us()));
    }
    printf("final mode=probe n=%zu ok=%ld late=%ld failed=%ld bad=%ld max_ms=%.0f p50_ms=%.1f "
           "p99_ms=%.1f limit_ms=%ld\n",
           n, ok, late, failed, late + failed, (double)max_us / 1000,
           (double)pct(lat, n, 0.50) / 1000, (double)pct(lat, n, 0.99) / 1000, o->limit_ms);
    free(lat);
    return 0;
}

/* ---- slow: connections that never finish their request ------------------------ */

enum { C_IDLE, C_CONNECTING, C_OPEN, C_CLOSED, C_FAILED };

struct sconn {
    int fd;
    uint8_t state;
    bool answered; /* the server sent bytes (a 408, 400...) */
    int status;
    int64_t t_start, t_open, t_end, next_send;
    size_t sent;
};

struct slow {
    const struct opts *o;
    struct sconn *c;
    int ep;
    const char *prefix; /* the request's bytes, then filler for ever */
    size_t prefix_len;
    size_t initial; /* bytes sent at once when connected */
    char filler;    /* then one of these every trickle */
    long started, connecting, open, closed, failed, open_peak;
    struct statuses st;
};

static void
slow_end(struct slow *s, struct sconn *c, uint8_t state)
{
    epoll_ctl(s->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    if (c->state == C_OPEN)
        s->open--;
    else if (c->state == C_CONNECTING)
        s->connecting--;
    c->state = state;
    c->t_end = now_us();
    if (state == C_CLOSED)
        s->closed++;
    else
        s->failed++;
}

/* Sends the next byte(s) of c's request; a send error means the server cut it. */
static void
slow_send(struct slow *s, struct sconn *c, size_t n)
{
    char buf[8192];
    size_t k = 0;
    for (; k < n && k < sizeof(buf); k++) {
        size_t i = c->sent + k;
        buf[k] = i < s->prefix_len ? s->prefix[i] : s->filler;
    }
    ssize_t w = send(c->fd, buf, k, MSG_NOSIGNAL);
    if (w > 0)
        c->sent += (size_t)w;
    else if (w < 0 && errno != EAGAIN && errno != EINTR)
        slow_end(s, c, C_CLOSED);
}

static void
slow_event(struct slow *s, struct sconn *c, uint32_t ev)
{
    if (c->state == C_CONNECTING) {
        int err = 0;
        socklen_t elen = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err != 0 || (ev & (EPOLLERR | EPOLLHUP))) {
            slow_end(s, c, C_FAILED);
            return;
        }
        s->connecting--;
        s->open++;
        if (s->open > s->open_peak)
            s->open_peak = s->open;
        c->state = C_OPEN;
        c->t_open = now_us();
        c->next_send = c->t_open + s->o->trickle_ms * 1000;
        struct epoll_event e = {.events = EPOLLIN | EPOLLRDHUP, .data.u32 = (uint32_t)(c - s->c)};
        epoll_ctl(s->ep, EPOLL_CTL_MOD, c->fd, &e);
        slow_send(s, c, s->initial);
        return;
    }
    if (c->state != C_OPEN)
        return;
    char buf[4096];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            if (!c->answered) {
                c->answered = true;
                c->status = status_of(buf, (size_t)n);
                status_add(&s->st, c->status);
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        slow_end(s, c, C_CLOSED); /* EOF or reset: the server cut it */
        return;
    }
}

static void
slow_start_one(struct slow *s)
{
    struct sconn *c = &s->c[s->started++];
    c->t_start = now_us();
    c->fd = start_connect(&s->o->addr);
    if (c->fd < 0) {
        c->state = C_FAILED;
        c->t_end = c->t_start;
        s->failed++;
        return;
    }
    c->state = C_CONNECTING;
    s->connecting++;
    struct epoll_event e = {.events = EPOLLOUT, .data.u32 = (uint32_t)(c - s->c)};
    epoll_ctl(s->ep, EPOLL_CTL_ADD, c->fd, &e);
}

/* Trickles a byte into every open connection whose turn it is; drops stuck connects. */
static void
slow_tick(struct slow *s)
{
    int64_t now = now_us();
    for (long i = 0; i < s->started; i++) {
        struct sconn *c = &s->c[i];
        if (c->state == C_CONNECTING && now - c->t_start > CONNECT_TIMEOUT) {
            slow_end(s, c, C_FAILED);
        } else if (c->state == C_OPEN && now >= c->next_send) {
            c->next_send += s->o->trickle_ms * 1000;
            slow_send(s, c, 1);
        }
    }
}

static int
mode_slow(const struct opts *o)
{
    if (!o->have_addr || o->count <= 0 || o->trickle_ms <= 0 || o->seconds <= 0)
        usage();
    static char head[2048];
    struct slow s = {.o = o};
    if (strcmp(o->kind, "head") == 0) {
        snprintf(head, sizeof(head), "GET /healthz HTTP/1.1\r\nHost: flood\r\nX-Flood: ");
        s.filler = 'a';
        s.initial = 1; /* the first byte only */
    } else if (strcmp(o->kind, "body") == 0) {
        snprintf(head, sizeof(head),
                 "POST /v1/messages HTTP/1.1\r\nHost: flood\r\nAuthorization: Bearer %s\r\n"
                 "Content-Type: application/json\r\nContent-Length: 1000000\r\n\r\n",
                 o->key);
        s.filler = ' ';               /* JSON whitespace: a body that is never finished */
        s.initial = strlen(head) + 1; /* the whole head and one byte of body */
    } else {
        usage();
    }
    s.prefix = head;
    s.prefix_len = strlen(head);
    s.c = calloc((size_t)o->count, sizeof(*s.c));
    s.ep = epoll_create1(EPOLL_CLOEXEC);
    if (s.c == NULL || s.ep < 0)
        fatal("out of memory or no epoll");

    int64_t start = now_us(), end = start + o->seconds * 1000000LL, next_status = start + 1000000;
    struct epoll_event evs[256];
    while (!stop_flag && now_us() < end) {
        int64_t now = now_us();
        long due = (long)((double)(now - start) / 1e6 * (double)o->rate) + 1;
        while (s.started < o->count && s.started < due && s.connecting < MAX_CONNECTING)
            slow_start_one(&s);
        int n = epoll_wait(s.ep, evs, 256, 20);
        for (int i = 0; i < n; i++)
            slow_event(&s, &s.c[evs[i].data.u32], evs[i].events);
        slow_tick(&s);
        if (now_us() >= next_status) {
            next_status += 1000000;
            printf("status t_s=%.0f started=%ld connecting=%ld open=%ld closed_by_server=%ld "
                   "connect_failed=%ld\n",
                   (double)(now_us() - start) / 1e6, s.started, s.connecting, s.open, s.closed,
                   s.failed);
            fflush(stdout);
        }
    }

    struct probe_result ap = {0, 0, "not_run"};
    if (o->after_probe)
        ap = probe_once(&o->addr, o->timeout_ms, false);

    int64_t *life = malloc((size_t)o->count * sizeof(*life));
    if (life == NULL)
        fatal("out of memory");
    size_t nl = 0;
    long connected = 0;
    for (long i = 0; i < s.started; i++) {
        struct sconn *c = &s.c[i];
        if (c->t_open > 0)
            connected++;
        if (c->state == C_CLOSED && c->t_open > 0)
            life[nl++] = c->t_end - c->t_open;
    }
    printf("final mode=slow kind=%s attempted=%ld connected=%ld connect_failed=%ld "
           "closed_by_server=%ld still_open=%ld open_peak=%ld",
           o->kind, s.started, connected, s.failed, s.closed, s.open, s.open_peak);
    status_print("answers", &s.st);
    /* lifetimes (open to cut) of the connections the server cut; "-" when none */
    const char *names[] = {"min", "p50", "p90", "max"};
    const double ps[] = {0.0, 0.5, 0.9, 1.0};
    for (int i = 0; i < 4; i++) {
        if (nl == 0)
            printf(" life_%s_s=-", names[i]);
        else
            printf(" life_%s_s=%.1f", names[i], (double)pct(life, nl, ps[i]) / 1e6);
    }
    /* after_probe=ok: a whole answer came, whatever its status (the SDK
     * listener may not serve /healthz: a 404 shows it accepts again too) */
    printf(" after_probe=%s after_probe_status=%d after_probe_ms=%.0f\n", ap.reason, ap.status,
           (double)ap.us / 1000);
    for (long i = 0; i < s.started; i++)
        if (s.c[i].fd >= 0 && (s.c[i].state == C_OPEN || s.c[i].state == C_CONNECTING))
            close(s.c[i].fd);
    free(life);
    free(s.c);
    close(s.ep);
    return 0;
}

/* ---- body: bodies sent with a wrong credential ----------------------------------- */

enum { B_IDLE, B_CONNECTING, B_SENDING, B_HELD, B_FINAL, B_DONE, B_FAILED };

struct bconn {
    int fd;
    uint8_t state;
    bool answered, early; /* answered (before the body was complete) */
    unsigned long long sent;
    int64_t t_start;
};

struct body {
    const struct opts *o;
    struct bconn *c;
    int ep;
    char head[2048];
    size_t head_len;
    unsigned long long total;    /* head + body */
    unsigned long long sent_all; /* over every connection */
    long started, connecting, sending, held, final, failed;
    long early_answers, early_closed, final_answers, final_closed;
    struct statuses st;
};

static char filler_buf[256 * 1024];

static void
body_set_events(struct body *b, struct bconn *c, uint32_t events)
{
    struct epoll_event e = {.events = events, .data.u32 = (uint32_t)(c - b->c)};
    epoll_ctl(b->ep, EPOLL_CTL_MOD, c->fd, &e);
}

static void
body_leave(struct body *b, struct bconn *c)
{
    if (c->state == B_SENDING)
        b->sending--;
    else if (c->state == B_HELD)
        b->held--;
    else if (c->state == B_FINAL)
        b->final--;
    else if (c->state == B_CONNECTING)
        b->connecting--;
}

static void
body_end(struct body *b, struct bconn *c, uint8_t state)
{
    if (c->state == B_FINAL && !c->answered)
        b->final_closed++; /* closed after the last byte without an answer */
    else if (c->state != B_CONNECTING && !c->answered && state == B_DONE)
        b->early_closed++; /* cut before the body was complete, no answer read */
    body_leave(b, c);
    epoll_ctl(b->ep, EPOLL_CTL_DEL, c->fd, NULL);
    close(c->fd);
    c->fd = -1;
    c->state = state;
    if (state == B_FAILED)
        b->failed++;
}

/* Reads what the server sent; true when the connection is still usable. */
static bool
body_read(struct body *b, struct bconn *c)
{
    char buf[4096];
    for (;;) {
        ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
        if (n > 0) {
            if (!c->answered) {
                c->answered = true;
                status_add(&b->st, status_of(buf, (size_t)n));
                if (c->state == B_FINAL) {
                    b->final_answers++;
                } else {
                    c->early = true;
                    b->early_answers++;
                }
            }
            continue;
        }
        if (n < 0 && (errno == EAGAIN || errno == EINTR))
            return true;
        body_end(b, c, B_DONE);
        return false;
    }
}

/* Sends head and body, up to (limit) bytes in all. */
static void
body_write(struct body *b, struct bconn *c, unsigned long long limit)
{
    while (c->sent < limit) {
        ssize_t w;
        if (c->sent < b->head_len) {
            w = send(c->fd, b->head + c->sent, b->head_len - c->sent, MSG_NOSIGNAL);
        } else {
            unsigned long long left = limit - c->sent;
            w = send(c->fd, filler_buf, left < sizeof(filler_buf) ? left : sizeof(filler_buf),
                     MSG_NOSIGNAL);
        }
        if (w > 0) {
            c->sent += (unsigned long long)w;
            b->sent_all += (unsigned long long)w;
            continue;
        }
        if (w < 0 && (errno == EAGAIN || errno == EINTR))
            return;
        /* Cut by the server: take its answer if it left one. */
        if (body_read(b, c))
            body_end(b, c, B_DONE);
        return;
    }
}

static void
body_event(struct body *b, struct bconn *c, uint32_t ev)
{
    if (c->state == B_CONNECTING) {
        int err = 0;
        socklen_t elen = sizeof(err);
        getsockopt(c->fd, SOL_SOCKET, SO_ERROR, &err, &elen);
        if (err != 0 || (ev & (EPOLLERR | EPOLLHUP))) {
            body_end(b, c, B_FAILED);
            return;
        }
        b->connecting--;
        b->sending++;
        c->state = B_SENDING;
        body_set_events(b, c, EPOLLIN | EPOLLOUT | EPOLLRDHUP);
    }
    if ((ev & (EPOLLIN | EPOLLRDHUP | EPOLLHUP | EPOLLERR)) && !body_read(b, c))
        return;
    if (c->state == B_FINAL && (ev & EPOLLOUT)) {
        body_write(b, c, b->total);
        if (c->fd >= 0 && c->sent == b->total)
            body_set_events(b, c, EPOLLIN | EPOLLRDHUP);
        return;
    }
    if (c->state == B_SENDING && (ev & EPOLLOUT)) {
        body_write(b, c, b->total - 1);
        if (c->fd >= 0 && c->sent == b->total - 1) {
            b->sending--;
            b->held++;
            c->state = B_HELD;
            body_set_events(b, c, EPOLLIN | EPOLLRDHUP);
        }
    }
}

static void
body_start_one(struct body *b)
{
    struct bconn *c = &b->c[b->started++];
    c->t_start = now_us();
    c->fd = start_connect(&b->o->addr);
    if (c->fd < 0) {
        c->state = B_FAILED;
        b->failed++;
        return;
    }
    c->state = B_CONNECTING;
    b->connecting++;
    struct epoll_event e = {.events = EPOLLOUT, .data.u32 = (uint32_t)(c - b->c)};
    epoll_ctl(b->ep, EPOLL_CTL_ADD, c->fd, &e);
}

/* Runs the loop until done() holds or the deadline; returns false on stop/deadline. */
static bool
body_loop(struct body *b, int64_t deadline, bool (*done)(const struct body *), bool connect)
{
    struct epoll_event evs[256];
    int64_t start = now_us(), next_status = start + 1000000;
    while (!stop_flag && now_us() < deadline) {
        if (connect) {
            int64_t now = now_us();
            long due = (long)((double)(now - start) / 1e6 * (double)b->o->rate) + 1;
            while (b->started < b->o->count && b->started < due && b->connecting < MAX_CONNECTING)
                body_start_one(b);
            for (long i = 0; i < b->started; i++)
                if (b->c[i].state == B_CONNECTING && now - b->c[i].t_start > CONNECT_TIMEOUT)
                    body_end(b, &b->c[i], B_FAILED);
        }
        if (done(b))
            return true;
        int n = epoll_wait(b->ep, evs, 256, 20);
        for (int i = 0; i < n; i++)
            body_event(b, &b->c[evs[i].data.u32], evs[i].events);
        if (now_us() >= next_status) {
            next_status += 1000000;
            printf("status sent_mib=%.0f connecting=%ld sending=%ld held=%ld final=%ld "
                   "early_answers=%ld early_closed=%ld failed=%ld\n",
                   (double)b->sent_all / 1048576, b->connecting, b->sending, b->held, b->final,
                   b->early_answers, b->early_closed, b->failed);
            fflush(stdout);
        }
    }
    return false;
}

static bool
body_all_sent(const struct body *b)
{
    return b->started == b->o->count && b->connecting == 0 && b->sending == 0;
}

static bool
body_never(const struct body *b)
{
    (void)b;
    return false;
}

static bool
body_all_final(const struct body *b)
{
    for (long i = 0; i < b->started; i++)
        if (b->c[i].state == B_FINAL && !b->c[i].answered)
            return false;
    return true;
}

static int
mode_body(const struct opts *o)
{
    if (!o->have_addr || o->count <= 0 || o->body_bytes < 1 || o->path == NULL)
        usage();
    struct body b = {.o = o};
    memset(filler_buf, ' ', sizeof(filler_buf));
    b.head_len = (size_t)snprintf(b.head, sizeof(b.head),
                                  "POST %s HTTP/1.1\r\nHost: flood\r\nAuthorization: Bearer %s\r\n"
                                  "Content-Type: application/json\r\nContent-Length: %llu\r\n\r\n",
                                  o->path, o->auth, o->body_bytes);
    b.total = b.head_len + o->body_bytes;
    b.c = calloc((size_t)o->count, sizeof(*b.c));
    b.ep = epoll_create1(EPOLL_CLOEXEC);
    if (b.c == NULL || b.ep < 0)
        fatal("out of memory or no epoll");
    for (long i = 0; i < o->count; i++)
        b.c[i].fd = -1;

    /* 1: connect and send all but the last byte of every request */
    int64_t t0 = now_us();
    long send_s = o->seconds > 0 ? o->seconds : 60;
    bool all_sent = body_loop(&b, t0 + send_s * 1000000LL, body_all_sent, true);
    double send_secs = (double)(now_us() - t0) / 1e6;
    long held_after_send = b.held;
    printf("status phase=sent all_sent=%d seconds=%.1f held=%ld\n", all_sent, send_secs, b.held);
    fflush(stdout);
    /* 2: hold them */
    body_loop(&b, now_us() + o->hold_s * 1000000LL, body_never, false);
    long held_after_hold = b.held;
    /* 3: the last byte, and the answers */
    for (long i = 0; i < b.started; i++) {
        struct bconn *c = &b.c[i];
        if (c->state != B_HELD)
            continue;
        b.held--;
        b.final++;
        c->state = B_FINAL;
        body_write(&b, c, b.total);
        if (c->fd >= 0 && c->sent < b.total)
            body_set_events(&b, c, EPOLLIN | EPOLLOUT | EPOLLRDHUP); /* the socket is full */
    }
    body_loop(&b, now_us() + 5000000, body_all_final, false);

    long connected = 0, no_answer = b.final_closed;
    for (long i = 0; i < b.started; i++) {
        if (b.c[i].state != B_FAILED)
            connected++;
        if (b.c[i].state == B_FINAL && !b.c[i].answered)
            no_answer++;
    }
    printf("final mode=body path=%s body_bytes=%llu attempted=%ld connected=%ld connect_failed=%ld "
           "sent_mib=%.1f all_sent=%d send_s=%.1f held=%ld held_after_hold=%ld early_answers=%ld "
           "early_closed=%ld final_answers=%ld no_answer=%ld",
           o->path, o->body_bytes, b.started, connected, b.failed, (double)b.sent_all / 1048576,
           all_sent, send_secs, held_after_send, held_after_hold, b.early_answers, b.early_closed,
           b.final_answers, no_answer);
    status_print("statuses", &b.st);
    printf(" status_401=%ld\n", status_count(&b.st, 401));
    for (long i = 0; i < b.started; i++)
        if (b.c[i].fd >= 0)
            close(b.c[i].fd);
    free(b.c);
    close(b.ep);
    return 0;
}

/* ---- pipeline ------------------------------------------------------------------------ */

/* A request every logicd answers at once and cheaply, on a kept
 * connection, with no credential: 404 (an unknown path, no body). /healthz
 * is no good here: it waits for a Redis PING. */
#define TINY_REQ "GET /flood HTTP/1.1\r\nHost: f\r\n\r\n"

/* utime + stime of pid in milliseconds (every thread, dead ones included); -1 if gone. */
static double
proc_cpu_ms(long pid)
{
    char path[64], buf[2048];
    snprintf(path, sizeof(path), "/proc/%ld/stat", pid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return -1;
    ssize_t n = read(fd, buf, sizeof(buf) - 1);
    close(fd);
    if (n <= 0)
        return -1;
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    /* after ") ": field 3 (state) ... field 14 utime, 15 stime */
    unsigned long long ut = 0, st = 0;
    if (sscanf(p + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu", &ut, &st) != 2)
        return -1;
    return (double)(ut + st) * 1000.0 / (double)sysconf(_SC_CLK_TCK);
}

static int
mode_pipeline(const struct opts *o)
{
    if (!o->have_addr || o->pid <= 0 || o->tiny_bytes < sizeof(TINY_REQ) - 1)
        usage();
    const size_t tiny_len = sizeof(TINY_REQ) - 1;
    unsigned long long tiny_n = o->tiny_bytes / tiny_len;
    /* A chunk of whole tiny requests, sent over and over. */
    static char chunk[64 * 1024];
    size_t per_chunk = sizeof(chunk) / tiny_len;
    for (size_t i = 0; i < per_chunk; i++)
        memcpy(chunk + i * tiny_len, TINY_REQ, tiny_len);
    const char *big_path = o->path != NULL ? o->path : "/flood/no-such-path";
    char big_head[2048];
    size_t big_head_len = 0;
    if (o->big_bytes > 0)
        big_head_len =
            (size_t)snprintf(big_head, sizeof(big_head),
                             "POST %s HTTP/1.1\r\nHost: f\r\nAuthorization: Bearer %s\r\n"
                             "Content-Type: application/json\r\nContent-Length: %llu\r\n\r\n",
                             big_path, o->key, o->big_bytes);
    unsigned long long big_total = big_head_len + o->big_bytes;
    unsigned long long total = big_total + tiny_n * tiny_len;
    unsigned long long expected = tiny_n + (o->big_bytes > 0);
    memset(filler_buf, 'x', sizeof(filler_buf));

    int fd = start_connect(&o->addr);
    if (fd < 0 || !wait_fd(fd, POLLOUT, now_us() + CONNECT_TIMEOUT, false))
        fatal("cannot connect to the listener");
    int err = 0;
    socklen_t elen = sizeof(err);
    getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &elen);
    if (err != 0)
        fatal("connect: %s", strerror(err));

    double cpu0 = proc_cpu_ms(o->pid);
    if (cpu0 < 0)
        fatal("cannot read /proc/%ld/stat", o->pid);
    int64_t t0 = now_us(), deadline = t0 + (o->seconds > 0 ? o->seconds : 60) * 1000000LL;
    unsigned long long sent = 0;
    long answered = 0;
    bool closed = false, timed_out = false, send_failed = false, malformed = false;
    struct resp rp = {0};
    struct statuses st = {0};
    static char rbuf[256 * 1024];
    while ((long)expected > answered) {
        if (now_us() >= deadline || stop_flag) {
            timed_out = true;
            break;
        }
        /* With a window, no more than --window tiny requests go unanswered. */
        unsigned long long allowed = total;
        if (o->window > 0) {
            long tiny_answered = answered - (o->big_bytes > 0 && answered > 0);
            unsigned long long w =
                big_total +
                ((unsigned long long)tiny_answered + (unsigned long long)o->window) * tiny_len;
            if (w < allowed)
                allowed = w;
        }
        struct pollfd pfd = {.fd = fd,
                             .events = POLLIN | (sent < allowed && !send_failed ? POLLOUT : 0)};
        if (poll(&pfd, 1, 50) <= 0)
            continue;
        if (pfd.revents & POLLOUT) {
            const char *p;
            size_t len;
            if (sent < big_head_len) {
                p = big_head + sent;
                len = big_head_len - sent;
            } else if (sent < big_total) {
                unsigned long long left = big_total - sent;
                p = filler_buf;
                len = left < sizeof(filler_buf) ? (size_t)left : sizeof(filler_buf);
            } else {
                /* whole tiny requests from the chunk, starting mid-request if need be */
                size_t off = (size_t)((sent - big_total) % tiny_len);
                unsigned long long left = total - sent;
                p = chunk + off;
                len = per_chunk * tiny_len - off;
                if (left > allowed - sent)
                    left = allowed - sent;
                if (len > left)
                    len = (size_t)left;
            }
            ssize_t w = send(fd, p, len, MSG_NOSIGNAL);
            if (w > 0)
                sent += (unsigned long long)w;
            else if (w < 0 && errno != EAGAIN && errno != EINTR)
                send_failed = true;
        }
        if (pfd.revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = recv(fd, rbuf, sizeof(rbuf), MSG_DONTWAIT);
            if (n > 0) {
                long d = resp_feed(&rp, rbuf, (size_t)n, &st);
                if (d < 0) {
                    malformed = true;
                    break;
                }
                answered += d;
            } else if (n == 0 || (errno != EAGAIN && errno != EINTR)) {
                closed = true;
                break;
            }
        }
    }
    double cpu1 = proc_cpu_ms(o->pid);
    double secs = (double)(now_us() - t0) / 1e6;
    close(fd);
    /* requests whose last byte went out */
    unsigned long long sent_req = 0;
    if (sent >= big_total && o->big_bytes > 0)
        sent_req = 1;
    if (sent > big_total)
        sent_req += (sent - big_total) / tiny_len;
    double cpu = cpu1 >= 0 ? cpu1 - cpu0 : -1;
    printf("final mode=pipeline window=%ld big_path=%s big_bytes=%llu tiny_bytes=%llu "
           "requests=%llu sent_requests=%llu "
           "answered=%ld closed_by_server=%d timed_out=%d send_failed=%d malformed=%d "
           "seconds=%.2f cpu_ms=%.0f cpu_us_per_answer=%.2f cpu_us_per_sent=%.2f "
           "cpu_us_per_offered=%.2f",
           o->window, o->big_bytes > 0 ? big_path : "-", o->big_bytes, tiny_n * tiny_len, expected,
           sent_req, answered, closed, timed_out, send_failed, malformed, secs, cpu,
           answered > 0 ? cpu * 1000 / (double)answered : -1,
           sent_req > 0 ? cpu * 1000 / (double)sent_req : -1, cpu * 1000 / (double)expected);
    status_print("statuses", &st);
    printf("\n");
    return 0;
}

/* ---- sample ---------------------------------------------------------------------- */

static long
proc_rss_kib(long pid)
{
    char path[64], line[256];
    snprintf(path, sizeof(path), "/proc/%ld/status", pid);
    FILE *f = fopen(path, "re");
    if (f == NULL)
        return -1;
    long v = -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (sscanf(line, "VmRSS: %ld", &v) == 1)
            break;
    fclose(f);
    return v;
}

static long
proc_fds(long pid)
{
    char path[64];
    snprintf(path, sizeof(path), "/proc/%ld/fd", pid);
    DIR *d = opendir(path);
    if (d == NULL)
        return -1;
    long n = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL)
        if (e->d_name[0] != '.')
            n++;
    closedir(d);
    return n;
}

static int
mode_sample(const struct opts *o)
{
    if (o->pid <= 0)
        usage();
    long rss0 = proc_rss_kib(o->pid), fds0 = proc_fds(o->pid);
    if (rss0 < 0 || fds0 < 0)
        fatal("cannot read /proc/%ld/status and fd", o->pid);
    long n = 0, over = 0, peak_rss = 0, fds_at_peak = 0, peak_fds = 0, limit_at_peak = 0;
    long worst_over = LONG_MIN, worst_rss = 0, worst_limit = 0;
    bool gone = false;
    int64_t start = now_us(), next_status = start + 1000000;
    while (!stop_flag) {
        long rss = proc_rss_kib(o->pid), fds = proc_fds(o->pid);
        if (rss < 0 || fds < 0) {
            gone = true;
            break;
        }
        long conns = fds > fds0 ? fds - fds0 : 0;
        long limit = o->base_kib + o->per_conn_kib * conns;
        n++;
        if (rss > limit)
            over++;
        if (rss - limit > worst_over) {
            worst_over = rss - limit;
            worst_rss = rss;
            worst_limit = limit;
        }
        if (rss > peak_rss) {
            peak_rss = rss;
            fds_at_peak = fds;
            limit_at_peak = limit;
        }
        if (fds > peak_fds)
            peak_fds = fds;
        if (now_us() >= next_status) {
            next_status += 1000000;
            printf("status t_s=%.0f rss_kib=%ld fds=%ld conns=%ld limit_kib=%ld\n",
                   (double)(now_us() - start) / 1e6, rss, fds, conns, limit);
            fflush(stdout);
        }
        usleep((useconds_t)o->interval_ms * 1000);
    }
    printf("final mode=sample n=%ld gone=%d rss0_kib=%ld fds0=%ld peak_rss_kib=%ld "
           "fds_at_peak=%ld limit_at_peak_kib=%ld peak_fds=%ld peak_conns=%ld over_samples=%ld "
           "worst_over_kib=%ld worst_rss_kib=%ld worst_limit_kib=%ld\n",
           n, gone, rss0, fds0, peak_rss, fds_at_peak, limit_at_peak, peak_fds,
           peak_fds > fds0 ? peak_fds - fds0 : 0, over, n > 0 ? worst_over : 0, worst_rss,
           worst_limit);
    return 0;
}

int
main(int argc, char **argv)
{
    if (argc < 2)
        usage();
    struct sigaction sa = {.sa_handler = on_signal}; /* no SA_RESTART: waits end early */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);

    const char *mode = argv[1];
    struct opts o;
    parse_opts(&o, argc - 1, argv + 1);
    if (strcmp(mode, "probe") == 0)
        return mode_probe(&o);
    if (strcmp(mode, "slow") == 0)
        return mode_slow(&o);
    if (strcmp(mode, "body") == 0)
        return mode_body(&o);
    if (strcmp(mode, "pipeline") == 0)
        return mode_pipeline(&o);
    if (strcmp(mode, "sample") == 0)
        return mode_sample(&o);
    usage();
}
