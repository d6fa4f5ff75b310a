/*
 * http: an HTTP/1.1 server on libevent events (see http.h).
 *
 * Why not evhttp: libevent's evhttp re-arms a connection's socket in epoll
 * around every request (about four epoll_ctl calls each), allocates a
 * dozen objects per request, answers its own errors with HTML, and aborts
 * the process when bytes of a pipelined request arrive while a handler is
 * still working. An empty sync, the commonest request of the service,
 * spent more CPU in that machinery than in its own work. This server keeps
 * one persistent EV_READ event per connection, reads with one recv() and
 * answers with one send() in the common case, and allocates nothing per
 * request once a connection is warm.
 *
 * A connection (struct conn) owns one input buffer. Bytes are read into
 * it; lib/http_parse.c finds the request head and frames the body
 * (Content-Length or chunked, decoded in place); dispatch() then
 * NUL-terminates the pieces inside the buffer (path, query, header names
 * and values, body) and hands the embedded struct http_req to the route's
 * handler. Nothing moves in the buffer until the reply: bytes arriving
 * meanwhile (a pipelined request, or the EOF that tells us the client is
 * gone) are appended behind the request, never by reallocation.
 *
 * The request being read or handled starts at c->in, a window into the
 * allocation c->buf: a finished request advances the window instead of
 * moving what follows it (a request behind an 8 MB one would otherwise
 * cost a move of everything buffered after it, per request). The window
 * goes back to the front when the buffer empties, when what it holds is no
 * more than what was consumed since the last move (so moves never exceed
 * the bytes received), or when a request needs more room than the tail has.
 * The body's terminating NUL is written over the first byte of whatever
 * follows the body, which is saved and put back at the reply.
 *
 * States of a connection:
 *   CS_READ     reading a request, or idle between two;
 *   CS_HANDLER  a request is with its handler (replied to synchronously or
 *               later from another callback on the same thread);
 *   CS_LINGER   the last reply is out and our write side shut down: the
 *               input is read and dropped until EOF, so that a client still
 *               sending (a refused oversized body) reads the reply instead
 *               of a reset.
 * A connection that fails (EOF, reset, timeout, server freed) in
 * CS_HANDLER becomes a zombie: its socket is closed, the struct and its
 * buffer stay so that the handler's request stays valid, and the reply
 * frees it (counted as status 499).
 *
 * Replies are written straight to the socket; what the kernel does not
 * take is queued in the connection's output buffer and an EV_WRITE event
 * drains it. Pipelined requests are answered in order: the next request is
 * dispatched only once the previous reply is fully written.
 *
 * Timeouts: each server has one timer that sweeps its connections a few
 * times per timeout period and drops those whose deadline passed. The
 * deadline moves forward on read and write progress and on dispatch
 * (limits.timeout_s, or http_req_set_timeout()'s value for that connection).
 * Progress alone does not keep a request alive: the sweep also ends a
 * request whose head is not complete head_timeout_s after it began, and a
 * body arriving slower than min_body_rate (http.h), with 408.
 */
#include "http.h"

#include "decimal.h"
#include "http_parse.h"
#include "log.h"
#include "metrics.h"
#include "xff.h"

#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/event_struct.h>

#include <errno.h>
#include <inttypes.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#define ALLOWED_METHODS (HTTP_GET | HTTP_POST | HTTP_PUT | HTTP_PATCH | HTTP_DELETE | HTTP_HEAD)

_Static_assert((int)HTTP_GET == (int)HTTP_PARSE_GET && (int)HTTP_POST == (int)HTTP_PARSE_POST &&
                   (int)HTTP_PUT == (int)HTTP_PARSE_PUT &&
                   (int)HTTP_PATCH == (int)HTTP_PARSE_PATCH &&
                   (int)HTTP_DELETE == (int)HTTP_PARSE_DELETE &&
                   (int)HTTP_HEAD == (int)HTTP_PARSE_HEAD &&
                   (int)HTTP_OPTIONS == (int)HTTP_PARSE_OPTIONS,
               "http_parse uses the same method bits");

/* Most {name} parameters in one pattern (http.h says 8). */
#define HTTP_MAX_PARAMS 8

/* Status recorded for a request whose client went away before the reply. */
#define STATUS_CLIENT_GONE 499

/* Distinct statuses whose counter a route caches; others are looked up. */
#define ROUTE_STATUS_CACHE 8

/* Input buffer of a new connection, and what a grown one shrinks back to. */
#define IN_INITIAL       4096
#define BUF_SHRINK_ABOVE 65536

/* Connections taken per wakeup of a listener. */
#define ACCEPT_BATCH 64

/* Pipelined requests answered per wakeup of a connection. */
#define PIPELINE_BATCH 32

/* A refused connection or accept failure is logged at most this often. */
#define REFUSE_LOG_MS 10000

/* The longest Authorization value a precheck looks at. */
#define PRECHECK_MAX_AUTH 4096

/* How long a closing connection reads and drops input, and how much. */
#define LINGER_MS        2000
#define LINGER_MAX_BYTES (1 << 20)

/* Metric series of one route (index nroutes: requests no route took). */
struct route_metrics {
    struct metric *duration;
    int status[ROUTE_STATUS_CACHE];
    struct metric *requests[ROUTE_STATUS_CACHE];
};

struct conn;

struct http_server {
    struct event_base *base;
    int listen_fd;
    struct event *accept_ev;
    struct event *accept_pause_ev; /* re-enables accepting after EMFILE */
    struct event *sweep_ev;
    char *name;
    const struct http_route *routes;
    size_t nroutes;
    size_t max_pattern_len;
    struct http_limits limits;
    size_t in_limit; /* most bytes a connection buffers */
    void *ctx;
    http_precheck_fn precheck;
    const struct http_cors *cors;
    const struct xff_trust *trust; /* proxies whose X-Forwarded-For is believed */
    struct metrics *metrics;
    struct route_metrics *rmetrics; /* nroutes + 1 */
    struct metric *m_refused_cap, *m_refused_accept;
    uint64_t id_seed, id_counter;
    uint64_t bytes_moved;
    int64_t refuse_logged_ms; /* when refusals were last logged */
    uint64_t refused_unlogged;
    struct conn *conns; /* every connection, zombies included */
};

struct query_param {
    char *name, *value;
};

struct http_req {
    struct conn *c;
    bool active; /* dispatched, not yet replied to */
    enum http_method method;
    size_t route_index;           /* for metrics; nroutes = "unmatched" */
    char id[HTTP_REQ_ID_MAX + 1]; /* ours, or a valid X-Request-Id of the client */
    char client[XFF_ADDR_STRLEN]; /* the peer, or the client behind a trusted proxy */
    struct timespec start;

    const char *path; /* raw, NUL-terminated (in the input buffer) */
    const char *raw_query;
    int nparams;
    const char *pnames[HTTP_MAX_PARAMS];
    const char *pvalues[HTTP_MAX_PARAMS];

    bool query_parsed;
    struct query_param *query;
    size_t nquery;

    unsigned char *body; /* in the input buffer, NUL-terminated */
    size_t body_len;

    bool retry_after; /* a Retry-After header was added */
    void *data;
};

enum conn_state { CS_READ, CS_HANDLER, CS_LINGER };

struct conn {
    struct http_server *s; /* NULL once the server is freed */
    struct event_base *base;
    struct conn *prev, *next;
    int fd; /* -1 once closed (zombie) */
    struct xff_addr peer;
    enum conn_state state;
    struct event rev, wev;
    struct event resume_ev; /* continues a long pipeline (conn_process) */
    bool wev_on, read_paused;
    bool in_dispatch;    /* a handler runs on the stack: closing waits */
    bool close_deferred; /* a close was asked for while in_dispatch */
    bool keep_alive;     /* of the current request */
    bool close_pending;  /* close once the output is written */
    bool must_linger;    /* the client may still be sending */
    bool broken;         /* a write failed */
    bool sent_continue;
    bool eof;   /* the client shut its sending side */
    bool gated; /* counted in s->limits.gate */
    struct http_gate *gate;
    int timeout_ms;
    int64_t deadline_ms;
    int64_t head_start_ms; /* when the request being read began; 0: none yet */
    int64_t body_start_ms; /* when its head was complete */
    uint64_t body_read;    /* bytes read since then */
    int64_t linger_left;   /* declared body bytes still to drop, -1 unknown */
    size_t lingered;

    /* input: the window [in, in + in_len) of in_cap bytes, inside the
     * allocation buf of buf_cap bytes; the request is the first bytes */
    unsigned char *buf, *in;
    size_t buf_cap, in_len, in_cap;
    size_t scan; /* where the search for the head's end resumes */
    bool head_done;
    size_t head_len;
    size_t consumed; /* bytes of the dispatched request (with its NUL slot) */
    int saved_byte;  /* the byte under the body's NUL (at consumed), or -1 */
    struct http_chunked chunked;

    /* the route chosen when the head completed */
    size_t route_index;     /* nroutes: none */
    unsigned route_allowed; /* methods of the path's routes, when none matched */
    int nparams;
    const char *pnames[HTTP_MAX_PARAMS];
    const char *pvalues[HTTP_MAX_PARAMS];

    /* output not yet taken by the kernel: out[out_off, out_len) */
    unsigned char *out;
    size_t out_off, out_len, out_cap;

    char *xhdr; /* extra response headers, "Name: value\r\n" each */
    size_t xhdr_len, xhdr_cap;
    char *valbuf; /* path parameter values */
    size_t valbuf_cap;

    struct http_head head;
    struct http_req req;
};

/* ---- pure helpers ---- */

/* A pattern segment is a parameter when it is all of "{name}", name non-empty. */
static bool
is_param_segment(const char *seg, size_t len)
{
    return len >= 3 && seg[0] == '{' && seg[len - 1] == '}';
}

/* http_match_pattern on a path of path_len bytes (not NUL-terminated). */
static int
match_pattern(const char *pattern, const char *path, size_t path_len, const char **names,
              const char **values, int maxp, char *valbuf, size_t valbuflen)
{
    if (pattern == NULL || path == NULL || pattern[0] != '/' || path_len == 0 || path[0] != '/')
        return -1;
    const char *p = pattern + 1, *q = path + 1, *qend = path + path_len;
    int n = 0;
    size_t used = 0;
    for (;;) {
        size_t plen = strcspn(p, "/");
        const char *slash = memchr(q, '/', (size_t)(qend - q));
        size_t qlen = (size_t)((slash != NULL ? slash : qend) - q);
        if (is_param_segment(p, plen)) {
            if (qlen == 0 || n >= maxp || names == NULL || values == NULL || valbuf == NULL)
                return -1;
            size_t namelen = plen - 2;
            if (valbuflen - used < namelen + 1 + qlen + 1)
                return -1;
            char *name = valbuf + used;
            memcpy(name, p + 1, namelen);
            name[namelen] = '\0';
            used += namelen + 1;
            char *value = valbuf + used;
            memcpy(value, q, qlen);
            value[qlen] = '\0';
            used += qlen + 1;
            names[n] = name;
            values[n] = value;
            n++;
        } else if (plen != qlen || memcmp(p, q, plen) != 0) {
            return -1;
        }
        p += plen;
        q += qlen;
        if (*p == '\0' || q == qend)
            return *p == '\0' && q == qend ? n : -1;
        p++; /* both at '/' */
        q++;
    }
}

int
http_match_pattern(const char *pattern, const char *path, const char **names, const char **values,
                   int maxp, char *valbuf, size_t valbuflen)
{
    return path != NULL
               ? match_pattern(pattern, path, strlen(path), names, values, maxp, valbuf, valbuflen)
               : -1;
}

const char *
http_parse_bearer(const char *authorization)
{
    static const char scheme[] = "Bearer";
    if (authorization == NULL || strncasecmp(authorization, scheme, sizeof(scheme) - 1) != 0)
        return NULL;
    const char *p = authorization + sizeof(scheme) - 1;
    if (*p != ' ')
        return NULL;
    while (*p == ' ')
        p++;
    if (*p == '\0')
        return NULL;
    for (const unsigned char *t = (const unsigned char *)p; *t; t++) {
        if (*t <= ' ' || *t == 0x7f)
            return NULL;
    }
    return p;
}

const char *
http_status_code_name(int status)
{
    switch (status) {
    case 400:
        return "invalid_argument";
    case 401:
        return "unauthenticated";
    case 403:
        return "permission_denied";
    case 404:
        return "not_found";
    case 405:
        return "method_not_allowed";
    case 408:
        return "timeout";
    case 409:
        return "conflict";
    case 412:
        return "failed_precondition";
    case 413:
    case 431:
        return "too_large";
    case 429:
        return "rate_limited";
    case 501:
    case 505:
        return "not_implemented";
    case 503:
        return "unavailable";
    default:
        return "internal";
    }
}

/* ---- listening socket ---- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void
set_err(char *err, size_t errlen, const char *fmt, ...)
{
    if (err == NULL || errlen == 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
}

int
http_listen(const char *host, int port, char *err, size_t errlen)
{
    if (port < 0 || port > 65535) {
        set_err(err, errlen, "port %d out of range", port);
        return -1;
    }
    char portstr[8];
    snprintf(portstr, sizeof(portstr), "%d", port);
    struct addrinfo hints = {
        .ai_family = AF_UNSPEC,
        .ai_socktype = SOCK_STREAM,
        .ai_flags = AI_PASSIVE | AI_NUMERICSERV,
    };
    struct addrinfo *res = NULL;
    const char *node = host != NULL && host[0] != '\0' ? host : NULL;
    int rc = getaddrinfo(node, portstr, &hints, &res);
    if (rc != 0) {
        set_err(err, errlen, "resolve %s: %s", node ? node : "*", gai_strerror(rc));
        return -1;
    }
    int fd = -1;
    set_err(err, errlen, "no address for %s", node ? node : "*");
    for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
        fd = socket(ai->ai_family, ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC, ai->ai_protocol);
        if (fd < 0) {
            set_err(err, errlen, "socket: %s", strerror(errno));
            continue;
        }
        int one = 1;
        const char *what = NULL;
        if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0)
            what = "SO_REUSEADDR";
        else if (setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0)
            what = "SO_REUSEPORT";
        else if (bind(fd, ai->ai_addr, ai->ai_addrlen) != 0)
            what = "bind";
        else if (listen(fd, 1024) != 0)
            what = "listen";
        if (what == NULL)
            break;
        set_err(err, errlen, "%s %s:%d: %s", what, node ? node : "*", port, strerror(errno));
        close(fd);
        fd = -1;
    }
    freeaddrinfo(res);
    return fd;
}

int
http_bound_port(int fd)
{
    struct sockaddr_storage ss;
    socklen_t len = sizeof(ss);
    if (getsockname(fd, (struct sockaddr *)&ss, &len) != 0)
        return -1;
    if (ss.ss_family == AF_INET)
        return ntohs(((struct sockaddr_in *)&ss)->sin_port);
    if (ss.ss_family == AF_INET6)
        return ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    return -1;
}

/* ---- request objects ---- */

static const char *
method_name(enum http_method m)
{
    switch (m) {
    case HTTP_GET:
        return "GET";
    case HTTP_POST:
        return "POST";
    case HTTP_PUT:
        return "PUT";
    case HTTP_PATCH:
        return "PATCH";
    case HTTP_DELETE:
        return "DELETE";
    case HTTP_HEAD:
        return "HEAD";
    case HTTP_OPTIONS:
        return "OPTIONS";
    }
    return "-";
}

static int64_t
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC_COARSE, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 8 hex digits: a per-server counter through a 64-bit mixer, seeded at random. */
static void
make_request_id(struct http_server *s, char out[9])
{
    static const char hex[] = "0123456789abcdef";
    uint64_t x = s->id_seed + ++s->id_counter * 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    uint32_t v = (uint32_t)(x >> 32);
    for (int i = 7; i >= 0; i--, v >>= 4)
        out[i] = hex[v & 15];
    out[8] = '\0';
}

enum http_method
http_req_method(const struct http_req *r)
{
    return r->method;
}

const char *
http_req_path(const struct http_req *r)
{
    return r->path != NULL ? r->path : "";
}

void
http_req_set_timeout(struct http_req *r, int seconds)
{
    struct conn *c = r->c;
    if (c->fd < 0 || seconds <= 0)
        return;
    if (seconds > 86400)
        seconds = 86400;
    c->timeout_ms = seconds * 1000;
    c->deadline_ms = now_ms() + c->timeout_ms;
}

const char *
http_req_id(const struct http_req *r)
{
    return r->id;
}

const char *
http_req_client(const struct http_req *r)
{
    return r->client;
}

bool
http_request_id_valid(const char *s, size_t len)
{
    if (len == 0 || len > HTTP_REQ_ID_MAX)
        return false;
    for (size_t i = 0; i < len; i++) {
        char ch = s[i];
        if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
              ch == '-' || ch == '_' || ch == '.'))
            return false;
    }
    return true;
}

void
http_server_set_trusted_proxies(struct http_server *s, const struct xff_trust *trust)
{
    s->trust = trust;
}

struct event_base *
http_req_base(const struct http_req *r)
{
    return r->c->base;
}

const char *
http_req_param(const struct http_req *r, const char *name)
{
    for (int i = 0; i < r->nparams; i++) {
        if (strcmp(r->pnames[i], name) == 0)
            return r->pvalues[i];
    }
    return NULL;
}

/* Decodes a query component ('+' is a space); NULL when it holds a NUL byte. */
static char *
query_decode(const char *s, size_t len)
{
    char *out = malloc(len + 1);
    if (out != NULL && http_percent_decode(s, len, out, true) < 0) {
        free(out);
        return NULL;
    }
    return out;
}

/* Splits the raw query into decoded name/value pairs (once). */
static void
parse_query(struct http_req *r)
{
    r->query_parsed = true;
    if (r->raw_query == NULL || r->raw_query[0] == '\0')
        return;
    size_t cap = 1;
    for (const char *p = r->raw_query; *p; p++)
        cap += *p == '&';
    r->query = calloc(cap, sizeof(*r->query));
    if (r->query == NULL)
        return;
    const char *p = r->raw_query;
    while (*p) {
        size_t len = strcspn(p, "&");
        const char *eq = memchr(p, '=', len);
        size_t nlen = eq != NULL ? (size_t)(eq - p) : len;
        if (nlen > 0) {
            char *name = query_decode(p, nlen);
            char *value = eq != NULL ? query_decode(eq + 1, len - nlen - 1) : strdup("");
            if (name != NULL && value != NULL && r->nquery < cap) {
                r->query[r->nquery].name = name;
                r->query[r->nquery].value = value;
                r->nquery++;
            } else {
                free(name);
                free(value);
            }
        }
        p += len;
        if (*p == '&')
            p++;
    }
}

const char *
http_req_query(const struct http_req *r, const char *name)
{
    /* Parsing is a cache fill; the request is logically unchanged. */
    struct http_req *mr = (struct http_req *)r;
    if (!mr->query_parsed)
        parse_query(mr);
    for (size_t i = 0; i < r->nquery; i++) {
        if (strcmp(r->query[i].name, name) == 0)
            return r->query[i].value;
    }
    return NULL;
}

const char *
http_req_header(const struct http_req *r, const char *name)
{
    const struct http_field *f = http_head_field(&r->c->head, name);
    return f != NULL ? f->value : NULL;
}

const char *
http_req_bearer(const struct http_req *r)
{
    return http_parse_bearer(http_req_header(r, "Authorization"));
}

const unsigned char *
http_req_body(struct http_req *r, size_t *len)
{
    if (len != NULL)
        *len = r->body_len;
    return r->body;
}

void
http_req_set_data(struct http_req *r, void *data)
{
    r->data = data;
}

void *
http_req_data(const struct http_req *r)
{
    return r->data;
}

/*
 * Grows *buf (capacity *cap) to hold at least need bytes, doubling but
 * never past max (0: no cap); false when out of memory.
 */
static bool
grow_max(void *buf, size_t *cap, size_t need, size_t max)
{
    if (need <= *cap)
        return true;
    size_t n = *cap > 0 ? *cap : 256;
    while (n < need)
        n *= 2;
    if (max > 0 && n > max)
        n = max > need ? max : need;
    void *p = realloc(*(void **)buf, n);
    if (p == NULL)
        return false;
    *(void **)buf = p;
    *cap = n;
    return true;
}

static bool
grow(void *buf, size_t *cap, size_t need)
{
    return grow_max(buf, cap, need, 0);
}

/* No CR, LF or NUL: a header name or value cannot split the response. */
static bool
header_safe(const char *s)
{
    return strpbrk(s, "\r\n") == NULL;
}

void
http_req_add_header(struct http_req *r, const char *name, const char *value)
{
    if (r == NULL || !r->active || name == NULL || value == NULL || !header_safe(name) ||
        !header_safe(value))
        return;
    struct conn *c = r->c;
    size_t nl = strlen(name), vl = strlen(value);
    if (!grow(&c->xhdr, &c->xhdr_cap, c->xhdr_len + nl + vl + 4))
        return;
    char *p = c->xhdr + c->xhdr_len;
    memcpy(p, name, nl);
    p += nl;
    *p++ = ':';
    *p++ = ' ';
    memcpy(p, value, vl);
    p += vl;
    *p++ = '\r';
    *p++ = '\n';
    c->xhdr_len = (size_t)(p - c->xhdr);
    if (strcasecmp(name, "Retry-After") == 0)
        r->retry_after = true;
}

/* ---- metrics and the access log ---- */

/* Appends s to out as a Prometheus label value (\\, \" and \n escaped). */
static char *
label_escape(char *out, const char *s)
{
    for (; *s; s++) {
        if (*s == '\\' || *s == '"') {
            *out++ = '\\';
            *out++ = *s;
        } else if (*s == '\n') {
            *out++ = '\\';
            *out++ = 'n';
        } else {
            *out++ = *s;
        }
    }
    return out;
}

/* server="<name>",route="<route>"[,status="<status>"], malloc'd (NULL when out of memory). */
static char *
make_labels(const char *server, const char *route, int status)
{
    char *out = malloc(2 * (strlen(server) + strlen(route)) + 64);
    if (out == NULL)
        return NULL;
    char *p = out;
    p += sprintf(p, "server=\"");
    p = label_escape(p, server);
    p += sprintf(p, "\",route=\"");
    p = label_escape(p, route);
    if (status > 0)
        sprintf(p, "\",status=\"%d\"", status);
    else
        sprintf(p, "\"");
    return out;
}

static const char *
route_label(const struct http_server *s, size_t route_index)
{
    return route_index < s->nroutes ? s->routes[route_index].pattern : "unmatched";
}

/* Counts the request and its duration under its route. */
static void
record_request(struct http_server *s, const struct http_req *r, int status, double secs)
{
    if (s == NULL || s->metrics == NULL)
        return;
    struct route_metrics *rm = &s->rmetrics[r->route_index];
    const char *route = route_label(s, r->route_index);
    if (rm->duration == NULL) {
        char *labels = make_labels(s->name, route, 0);
        if (labels != NULL)
            rm->duration =
                metrics_histogram(s->metrics, "mbox_http_request_duration_seconds",
                                  "Time from dispatch to reply of HTTP requests.", labels);
        free(labels);
    }
    metric_observe(rm->duration, secs);

    struct metric *c = NULL;
    int slot = -1;
    for (int i = 0; i < ROUTE_STATUS_CACHE; i++) {
        if (rm->status[i] == status) {
            c = rm->requests[i];
            break;
        }
        if (rm->status[i] == 0 && slot < 0)
            slot = i;
    }
    if (c == NULL) {
        char *labels = make_labels(s->name, route, status);
        if (labels != NULL)
            c = metrics_counter(s->metrics, "mbox_http_requests_total",
                                "HTTP requests by server, route and status.", labels);
        free(labels);
        if (c != NULL && slot >= 0) {
            rm->status[slot] = status;
            rm->requests[slot] = c;
        }
    }
    metric_inc(c);
}

static int64_t
elapsed_us(const struct timespec *start)
{
    struct timespec now;
    clock_gettime(CLOCK_MONOTONIC, &now);
    return (int64_t)(now.tv_sec - start->tv_sec) * 1000000 + (now.tv_nsec - start->tv_nsec) / 1000;
}

/* Writes the methods of mask into out as an Allow header value. */
static void
allow_header(unsigned mask, char *out, size_t outlen)
{
    static const enum http_method order[] = {HTTP_GET, HTTP_HEAD,  HTTP_POST,
                                             HTTP_PUT, HTTP_PATCH, HTTP_DELETE};
    size_t pos = 0;
    out[0] = '\0';
    for (size_t i = 0; i < sizeof(order) / sizeof(order[0]); i++) {
        if ((mask & order[i]) == 0)
            continue;
        int n = snprintf(out + pos, outlen - pos, "%s%s", pos ? ", " : "", method_name(order[i]));
        if (n < 0 || (size_t)n >= outlen - pos)
            break;
        pos += (size_t)n;
    }
}

/* Records and logs the end of a request; releases its per-request state. */
static void
req_finish(struct http_req *r, int status)
{
    int64_t us = elapsed_us(&r->start);
    if (us < 0)
        us = 0;
    record_request(r->c->s, r, status, (double)us / 1e6);
    if (log_enabled(LOG_DEBUG)) {
        char qpath[256];
        log_debug("http_request", "req=%s method=%s path=%s status=%d us=%lld client=%s", r->id,
                  method_name(r->method), log_q(qpath, sizeof(qpath), http_req_path(r)), status,
                  (long long)us, r->client);
    }
    for (size_t i = 0; i < r->nquery; i++) {
        free(r->query[i].name);
        free(r->query[i].value);
    }
    free(r->query);
    memset(r, 0, sizeof(*r));
}

/* ---- connections ---- */

static void conn_read_cb(evutil_socket_t fd, short what, void *arg);
static void conn_write_cb(evutil_socket_t fd, short what, void *arg);
static void conn_resume_cb(evutil_socket_t fd, short what, void *arg);
static bool conn_process(struct conn *c);

static void
conn_unlink(struct conn *c)
{
    if (c->s == NULL)
        return;
    if (c->prev != NULL)
        c->prev->next = c->next;
    else
        c->s->conns = c->next;
    if (c->next != NULL)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
}

/* Closes the socket and stops its events; the struct stays. */
static void
conn_close_socket(struct conn *c)
{
    if (c->fd < 0)
        return;
    event_del(&c->rev);
    event_del(&c->wev);
    event_del(&c->resume_ev);
    c->wev_on = false;
    close(c->fd);
    c->fd = -1;
    if (c->gated)
        atomic_fetch_sub(&c->gate->open, 1);
    c->gated = false;
    free(c->out);
    c->out = NULL;
    c->out_off = c->out_len = c->out_cap = 0;
}

static void
conn_free(struct conn *c)
{
    conn_close_socket(c);
    conn_unlink(c);
    free(c->buf);
    free(c->xhdr);
    free(c->valbuf);
    free(c);
}

/*
 * Ends a connection. A pending request keeps the struct alive (a zombie,
 * freed by the reply); otherwise everything goes. While a handler runs on
 * the stack the close waits for it to return.
 */
static void
conn_close(struct conn *c)
{
    if (c->in_dispatch) {
        c->close_deferred = true;
        return;
    }
    if (c->state == CS_HANDLER) {
        if (c->fd >= 0)
            log_debug("http_client_gone", "req=%s", c->req.id);
        conn_close_socket(c);
        return;
    }
    conn_free(c);
}

static void
conn_set_write(struct conn *c, bool on)
{
    if (on == c->wev_on || c->fd < 0)
        return;
    if (on)
        event_add(&c->wev, NULL);
    else
        event_del(&c->wev);
    c->wev_on = on;
}

static void
conn_set_read(struct conn *c, bool on)
{
    if (on == !c->read_paused || c->fd < 0 || (on && c->eof))
        return;
    if (on)
        event_add(&c->rev, NULL);
    else
        event_del(&c->rev);
    c->read_paused = !on;
}

/* Shuts our side and drops input until EOF (see CS_LINGER at the top). */
static void
conn_linger(struct conn *c)
{
    shutdown(c->fd, SHUT_WR);
    c->state = CS_LINGER;
    c->in_len = 0;
    c->deadline_ms = now_ms() + LINGER_MS;
    if (c->linger_left == 0 || c->eof) {
        conn_free(c);
        return;
    }
    conn_set_read(c, true);
}

/* The reply is out and the connection is not kept: close, lingering if needed. */
static void
conn_end(struct conn *c)
{
    if (c->broken || (!c->must_linger && c->in_len == 0)) {
        conn_free(c);
        return;
    }
    if (!c->must_linger)
        c->linger_left = -1; /* unread pipelined bytes: more may be on the way */
    conn_linger(c);
}

/*
 * Writes iov to the socket, queueing in the output buffer what the kernel
 * does not take now (and everything when output is already queued).
 */
static void
conn_send(struct conn *c, struct iovec *iov, int niov)
{
    if (c->fd < 0 || c->broken)
        return;
    size_t total = 0;
    for (int i = 0; i < niov; i++)
        total += iov[i].iov_len;
    size_t sent = 0;
    if (c->out_len == c->out_off) {
        struct msghdr mh = {.msg_iov = iov, .msg_iovlen = (size_t)niov};
        ssize_t n;
        do
            n = sendmsg(c->fd, &mh, MSG_NOSIGNAL | MSG_DONTWAIT);
        while (n < 0 && errno == EINTR);
        if (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK) {
            c->broken = true;
            return;
        }
        sent = n > 0 ? (size_t)n : 0;
        if (sent == total)
            return;
        c->deadline_ms = now_ms() + c->timeout_ms;
    }
    if (c->out_off > 0 && c->out_off == c->out_len)
        c->out_off = c->out_len = 0;
    if (!grow(&c->out, &c->out_cap, c->out_len + total - sent)) {
        c->broken = true;
        return;
    }
    for (int i = 0; i < niov; i++) {
        size_t l = iov[i].iov_len;
        if (sent >= l) {
            sent -= l;
            continue;
        }
        memcpy(c->out + c->out_len, (const char *)iov[i].iov_base + sent, l - sent);
        c->out_len += l - sent;
        sent = 0;
    }
    conn_set_write(c, true);
}

static void
conn_write_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct conn *c = arg;
    while (c->out_off < c->out_len) {
        ssize_t n = send(fd, c->out + c->out_off, c->out_len - c->out_off, MSG_NOSIGNAL);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            return;
        if (n <= 0) {
            c->broken = true;
            conn_close(c);
            return;
        }
        c->out_off += (size_t)n;
        c->deadline_ms = now_ms() + c->timeout_ms;
    }
    conn_set_write(c, false);
    c->out_off = c->out_len = 0;
    if (c->out_cap > BUF_SHRINK_ABOVE) {
        free(c->out);
        c->out = NULL;
        c->out_cap = 0;
    }
    if (c->close_pending) {
        conn_end(c);
        return;
    }
    if (c->state == CS_READ) {
        /* The next request waited on our output, not on the client. */
        if (!c->head_done && c->in_len > 0)
            c->head_start_ms = now_ms();
        conn_set_read(c, true);
        conn_process(c);
    }
}

/* ---- replies ---- */

static char *
put(char *p, const char *s, size_t n)
{
    memcpy(p, s, n);
    return p + n;
}

#define PUT_LIT(p, lit) put((p), (lit), sizeof(lit) - 1)

static char *
put_uint(char *p, uint64_t v)
{
    char tmp[DECIMAL_U64_MAX_DIGITS];
    char *end = tmp + sizeof(tmp), *d = decimal_u64_back(v, end);
    return put(p, d, (size_t)(end - d));
}

/* "Date: <IMF-fixdate>\r\n", formatted once per second per thread. */
static const char *
date_line(size_t *len)
{
    static __thread time_t cached_sec = -1;
    static __thread char line[64];
    static __thread size_t line_len;
    time_t now = time(NULL);
    if (now != cached_sec) {
        struct tm tm;
        gmtime_r(&now, &tm);
        line_len = strftime(line, sizeof(line), "Date: %a, %d %b %Y %H:%M:%S GMT\r\n", &tm);
        cached_sec = now;
    }
    *len = line_len;
    return line;
}

/* Moves the window of input to the front of the buffer. */
static void
conn_compact(struct conn *c)
{
    if (c->in == c->buf)
        return;
    if (c->in_len > 0)
        memmove(c->buf, c->in, c->in_len);
    if (c->s != NULL)
        c->s->bytes_moved += c->in_len;
    c->in = c->buf;
    c->in_cap = c->buf_cap;
}

/*
 * Drops the finished request from the input (advancing the window; see
 * the top of the file for when the rest moves) and readies c for the next.
 */
static void
conn_consume_request(struct conn *c)
{
    if (c->saved_byte >= 0)
        c->in[c->consumed] = (unsigned char)c->saved_byte;
    c->saved_byte = -1;
    size_t rest = c->in_len - c->consumed;
    c->in += c->consumed;
    c->in_cap -= c->consumed;
    c->in_len = rest;
    c->consumed = 0;
    c->scan = 0;
    c->head_done = false;
    c->head_len = 0;
    c->head_start_ms = rest > 0 ? now_ms() : 0;
    if (c->s != NULL) {
        c->route_index = c->s->nroutes; /* a refusal of the next one is "unmatched" */
        c->route_allowed = 0;
    }
    c->sent_continue = false;
    memset(&c->chunked, 0, sizeof(c->chunked));
    c->xhdr_len = 0;
    if (c->buf_cap > BUF_SHRINK_ABOVE && rest < IN_INITIAL) {
        unsigned char *p = malloc(IN_INITIAL);
        if (p != NULL) {
            memcpy(p, c->in, rest);
            if (c->s != NULL)
                c->s->bytes_moved += rest;
            free(c->buf);
            c->buf = c->in = p;
            c->buf_cap = c->in_cap = IN_INITIAL;
        }
    } else if (rest <= (size_t)(c->in - c->buf)) {
        conn_compact(c);
    }
}

/*
 * After a reply (or a zombie's end) outside of a handler's stack frame:
 * go on with the connection.
 */
static void
conn_after_reply(struct conn *c)
{
    if (c->broken) {
        conn_free(c);
        return;
    }
    if (!c->keep_alive) {
        if (c->out_off < c->out_len)
            c->close_pending = true;
        else
            conn_end(c);
        return;
    }
    conn_set_read(c, true);
    /* A pipelined request already buffered: take it from the loop, not from
     * the stack of whoever replied. */
    if (c->in_len > 0)
        event_active(&c->rev, EV_READ, 0);
}

/*
 * The configured origin matching the Origin of c's request when the
 * server's CORS policy allows it ("*" for a policy allowing any), or NULL.
 */
static const char *
cors_origin(const struct conn *c)
{
    const struct http_cors *p = c->s != NULL ? c->s->cors : NULL;
    if (p == NULL || !c->head_done)
        return NULL;
    const struct http_field *f = http_head_field(&c->head, "Origin");
    if (f == NULL || f->value_len == 0)
        return NULL;
    if (p->any)
        return "*";
    for (size_t i = 0; i < p->norigins; i++) {
        if (strlen(p->origins[i]) == f->value_len &&
            memcmp(p->origins[i], f->value, f->value_len) == 0)
            return p->origins[i];
    }
    return NULL;
}

/* Adds the CORS headers of every reply to an allowed origin (http.h). */
static void
add_cors_headers(struct http_req *r)
{
    const char *origin = cors_origin(r->c);
    if (origin == NULL)
        return;
    http_req_add_header(r, "Access-Control-Allow-Origin", origin);
    http_req_add_header(r, "Vary", "Origin");
    http_req_add_header(r, "Access-Control-Expose-Headers", "X-Request-Id, Retry-After, ETag");
}

/*
 * The single place a reply leaves. body is (data, len). Ends the request;
 * r must not be used afterwards.
 */
static void
send_reply(struct http_req *r, int status, const char *content_type, const void *data, size_t len)
{
    if (r == NULL || !r->active)
        return;
    struct conn *c = r->c;
    if (status < 200 || status > 599)
        status = 500; /* 1xx are the server's own (100 Continue), never final */
    if (content_type != NULL && !header_safe(content_type))
        content_type = NULL;

    if (c->fd < 0) {
        /* Zombie: nothing to send to. */
        req_finish(r, STATUS_CLIENT_GONE);
        conn_free(c);
        return;
    }

    add_cors_headers(r);
    bool no_body = r->method == HTTP_HEAD || status < 200 || status == 204 || status == 304;
    size_t ctlen = content_type != NULL ? strlen(content_type) : 0;
    char stackbuf[512];
    size_t need = 256 + HTTP_REQ_ID_MAX + ctlen;
    char *head = need <= sizeof(stackbuf) ? stackbuf : malloc(need);
    if (head == NULL) {
        c->broken = true;
    } else {
        char *p = PUT_LIT(head, "HTTP/1.1 ");
        p = put_uint(p, (uint64_t)status);
        *p++ = ' ';
        const char *reason = http_reason_phrase(status);
        p = put(p, reason, strlen(reason));
        p = PUT_LIT(p, "\r\n");
        size_t dl;
        const char *date = date_line(&dl);
        p = put(p, date, dl);
        if (content_type != NULL) {
            p = PUT_LIT(p, "Content-Type: ");
            p = put(p, content_type, ctlen);
            p = PUT_LIT(p, "\r\n");
        }
        if (status >= 200 && status != 204 && status != 304) {
            p = PUT_LIT(p, "Content-Length: ");
            p = put_uint(p, len);
            p = PUT_LIT(p, "\r\n");
        }
        p = PUT_LIT(p, "X-Request-Id: ");
        p = put(p, r->id, strlen(r->id));
        p = PUT_LIT(p, "\r\n");
        if (!c->keep_alive)
            p = PUT_LIT(p, "Connection: close\r\n");
        else if (c->head.minor == 0)
            p = PUT_LIT(p, "Connection: keep-alive\r\n");
        struct iovec iov[4] = {
            {head, (size_t)(p - head)},
            {c->xhdr, c->xhdr_len},
            {(void *)"\r\n", 2},
            {(void *)data, no_body ? 0 : len},
        };
        conn_send(c, iov, no_body || len == 0 ? 3 : 4);
        if (head != stackbuf)
            free(head);
    }

    req_finish(r, status);
    conn_consume_request(c);
    c->state = CS_READ;
    if (c->s != NULL)
        c->timeout_ms = c->s->limits.timeout_s * 1000; /* undo http_req_set_timeout() */
    c->deadline_ms = now_ms() + c->timeout_ms;
    if (!c->in_dispatch)
        conn_after_reply(c);
}

void
http_reply(struct http_req *r, int status, const char *content_type, const void *body, size_t len)
{
    send_reply(r, status, content_type, body, len);
}

void
http_reply_json(struct http_req *r, int status, json_t *body)
{
    char *text = body != NULL ? json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY) : NULL;
    json_decref(body);
    if (text == NULL) {
        static const char fallback[] =
            "{\"error\":{\"code\":\"internal\",\"message\":\"cannot serialize reply\"}}";
        http_reply(r, 500, "application/json", fallback, sizeof(fallback) - 1);
        return;
    }
    http_reply(r, status, "application/json", text, strlen(text));
    free(text);
}

void
http_reply_error(struct http_req *r, int status, const char *code, const char *fmt, ...)
{
    if (r == NULL)
        return;
    char msg[1024];
    msg[0] = '\0';
    if (fmt != NULL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(msg, sizeof(msg), fmt, ap);
        va_end(ap);
    }
    if (code == NULL)
        code = http_status_code_name(status);
    /* A message quoting client bytes may not be UTF-8: drop it rather than the reply. */
    json_t *jmsg = json_string(msg);
    if (jmsg == NULL)
        jmsg = json_string("");
    json_t *jcode = json_string(code);
    if (jcode == NULL)
        jcode = json_string("internal");
    json_t *body = json_pack("{s:{s:o,s:o}}", "error", "code", jcode, "message", jmsg);
    if (status == 503 && !r->retry_after)
        http_req_add_header(r, "Retry-After", "1");
    http_reply_json(r, status, body);
}

void
http_reply_metrics(struct http_req *r, struct metrics *m)
{
    struct evbuffer *buf = evbuffer_new();
    if (buf == NULL) {
        http_reply_error(r, 503, NULL, "out of memory");
        return;
    }
    metrics_render(m, buf);
    size_t len = evbuffer_get_length(buf);
    const unsigned char *text = evbuffer_pullup(buf, -1);
    if (text == NULL && len > 0)
        http_reply_error(r, 503, NULL, "out of memory");
    else
        send_reply(r, 200, "text/plain; version=0.0.4", text, len);
    evbuffer_free(buf);
}

/* ---- dispatch ---- */

/* Starts the request object of c (for a dispatched request or a refusal). */
static void
req_start(struct conn *c)
{
    struct http_req *r = &c->req;
    memset(r, 0, sizeof(*r));
    r->c = c;
    r->active = true;
    r->route_index = c->s->nroutes;
    clock_gettime(CLOCK_MONOTONIC, &r->start);
    make_request_id(c->s, r->id);
    xff_addr_format(&c->peer, r->client, sizeof(r->client));
    c->state = CS_HANDLER;
    c->deadline_ms = now_ms() + c->timeout_ms;
}

/*
 * Refuses what was read with status and closes the connection after the
 * reply (a JSON error, like every other). The client may still be sending:
 * unless it is being cut off for its slowness (linger false), the
 * connection lingers. The request counts under c->route_index.
 */
static void conn_refuse(struct conn *c, bool linger, int status, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void
conn_refuse(struct conn *c, bool linger, int status, const char *fmt, ...)
{
    req_start(c);
    struct http_req *r = &c->req;
    r->method = c->head_done ? (enum http_method)c->head.method : 0;
    r->route_index = c->route_index;
    c->keep_alive = false;
    c->must_linger = linger;
    c->linger_left = linger ? -1 : 0;
    if (c->head_done && !c->head.chunked && c->head.content_length >= 0) {
        /* The declared body still to come; none when the client waits for
         * a 100 Continue it will not get. */
        int64_t have = (int64_t)(c->in_len - c->head_len);
        int64_t rest = c->head.content_length - have;
        if (linger)
            c->linger_left = rest < 0 || (c->head.expect_continue && !c->sent_continue) ? 0 : rest;
    }
    if (c->route_allowed != 0 && status == 405) {
        char allow[64];
        allow_header(c->route_allowed, allow, sizeof(allow));
        http_req_add_header(r, "Allow", allow);
    }
    c->saved_byte = -1;
    c->consumed = c->in_len;
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    http_reply_error(r, status, NULL, "%s", msg);
}

/* Makes room for at least need bytes of input (plus the NUL slot). */
static bool
conn_reserve(struct conn *c, size_t need)
{
    if (need + 1 <= c->in_cap)
        return true;
    if (need + 1 > c->s->in_limit)
        return false;
    const unsigned char *old = c->in;
    conn_compact(c);
    bool ok = need + 1 <= c->in_cap || grow_max(&c->buf, &c->buf_cap, need + 1, c->s->in_limit);
    c->in = c->buf;
    c->in_cap = c->buf_cap;
    if (c->head_done && c->in != old) {
        /* The head's pointers moved with the buffer: parse it again in place. */
        struct http_head h;
        if (http_parse_head((const char *)c->in, c->in_len, c->s->limits.max_headers, &h) !=
            (ssize_t)c->head_len)
            return false;
        c->head = h;
    }
    return ok;
}

/* Sends "100 Continue" once when the client waits for it before its body. */
static void
conn_maybe_continue(struct conn *c)
{
    if (!c->head.expect_continue || c->sent_continue || c->head.minor == 0)
        return;
    c->sent_continue = true;
    static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
    struct iovec iov = {(void *)cont, sizeof(cont) - 1};
    conn_send(c, &iov, 1);
}

/* NUL-terminates the head's pieces in the buffer (their ends lie inside
 * the head, on the ':', CR or LF that follows each). */
static void
terminate_head(struct conn *c, struct http_req *r)
{
    struct http_head *h = &c->head;
    for (size_t i = 0; i < h->nfields; i++) {
        ((char *)h->fields[i].name)[h->fields[i].name_len] = '\0';
        ((char *)h->fields[i].value)[h->fields[i].value_len] = '\0';
    }
    if (h->query != NULL) {
        ((char *)h->query)[h->query_len] = '\0';
        r->raw_query = h->query;
    }
    ((char *)h->path)[h->path_len] = '\0';
    r->path = h->path;
}

/* True when the raw path holds "%2F" or "%00" (any case): an encoded '/'
 * would let one route's parameter stand for several segments, and a NUL
 * cuts strings short. */
static bool
path_has_forbidden_escape(const char *path, size_t len)
{
    for (const char *p = path; (p = memchr(p, '%', len - (size_t)(p - path))) != NULL; p++) {
        if (len - (size_t)(p - path) < 3)
            return false;
        if ((p[1] == '2' && (p[2] == 'f' || p[2] == 'F')) || (p[1] == '0' && p[2] == '0'))
            return true;
    }
    return false;
}

/*
 * Chooses the route of the request whose head is complete, from its raw
 * path: fills c->route_index (nroutes when none), c->route_allowed and the
 * parameters (decoded, in c->valbuf). Returns 0, or the status that
 * refuses the request (400 for a forbidden escape, 503 out of memory).
 */
static int
route_head(struct conn *c)
{
    struct http_server *s = c->s;
    const char *path = c->head.path;
    size_t pathlen = c->head.path_len;
    c->route_index = s->nroutes;
    c->route_allowed = 0;
    c->nparams = 0;
    if (path_has_forbidden_escape(path, pathlen))
        return 400;
    size_t valbuflen = s->max_pattern_len + pathlen + 2 * HTTP_MAX_PARAMS;
    if (!grow(&c->valbuf, &c->valbuf_cap, valbuflen))
        return 503;
    size_t first_path_match = s->nroutes;
    unsigned request_method = c->head.method;
    for (size_t i = 0; i < s->nroutes; i++) {
        const struct http_route *rt = &s->routes[i];
        int n = match_pattern(rt->pattern, path, pathlen, c->pnames, c->pvalues, HTTP_MAX_PARAMS,
                              c->valbuf, valbuflen);
        if (n < 0)
            continue;
        if (rt->methods & request_method) {
            c->route_index = i;
            c->nparams = n;
            c->route_allowed = 0;
            break;
        }
        c->route_allowed |= rt->methods;
        if (first_path_match == s->nroutes)
            first_path_match = i;
    }
    if (c->route_index == s->nroutes && c->route_allowed != 0)
        c->route_index = first_path_match; /* a 405 counts under the path's route */
    for (int i = 0; i < c->nparams; i++) {
        char *v = (char *)c->pvalues[i];
        ssize_t n = http_percent_decode(v, strlen(v), v, false);
        if (n < 0 || memchr(v, '\0', (size_t)n) != NULL)
            return 400;
    }
    return 0;
}

/* True when the request of c has found a route that takes its method. */
static bool
route_found(const struct conn *c)
{
    return c->route_index < c->s->nroutes && c->route_allowed == 0;
}

/*
 * Runs the server's precheck on a request whose body is about to be read.
 * Returns NULL, or the message of the 401 that refuses the request.
 */
static const char *
precheck_head(struct conn *c)
{
    struct http_server *s = c->s;
    if (s->precheck == NULL)
        return NULL;
    char auth[PRECHECK_MAX_AUTH + 1];
    const char *bearer = NULL;
    const struct http_field *f = http_head_field(&c->head, "Authorization");
    if (f != NULL && f->value_len <= PRECHECK_MAX_AUTH) {
        memcpy(auth, f->value, f->value_len);
        auth[f->value_len] = '\0';
        bearer = http_parse_bearer(auth);
    }
    return s->precheck(&s->routes[c->route_index], bearer, s->ctx);
}

/*
 * Answers OPTIONS: a CORS preflight from an allowed origin for a path with
 * routes gets 204 with what it may do; anything else 404 or 405.
 */
static void
reply_options(struct conn *c, struct http_req *r)
{
    if (c->route_allowed == 0) {
        http_reply_error(r, 404, NULL, "no route for %s", r->path);
        return;
    }
    char allow[64];
    allow_header(c->route_allowed, allow, sizeof(allow));
    if (cors_origin(c) == NULL ||
        http_head_field(&c->head, "Access-Control-Request-Method") == NULL) {
        http_req_add_header(r, "Allow", allow);
        http_reply_error(r, 405, NULL, "OPTIONS not allowed here");
        return;
    }
    const struct http_cors *p = c->s->cors;
    char age[16];
    snprintf(age, sizeof(age), "%d", p->max_age_s);
    http_req_add_header(r, "Access-Control-Allow-Methods", allow);
    if (p->allow_headers != NULL)
        http_req_add_header(r, "Access-Control-Allow-Headers", p->allow_headers);
    http_req_add_header(r, "Access-Control-Max-Age", age);
    http_reply(r, 204, NULL, NULL, 0);
}

/*
 * Takes the client's X-Request-Id when it is a valid one (so a proxy's id
 * reaches our log lines and comes back unchanged), and the client address
 * from X-Forwarded-For when the peer is a trusted proxy (lib/xff.h). A
 * request with several X-Forwarded-For fields counts as malformed.
 */
static void
req_identify(struct conn *c, struct http_req *r)
{
    const struct http_field *rid = http_head_field(&c->head, "X-Request-Id");
    if (rid != NULL && http_request_id_valid(rid->value, rid->value_len))
        memcpy(r->id, rid->value, rid->value_len + 1);
    if (c->s->trust == NULL || c->s->trust->n == 0)
        return;
    const struct http_field *xff = NULL;
    for (size_t i = 0; i < c->head.nfields; i++) {
        const struct http_field *f = &c->head.fields[i];
        if (f->name_len == 15 && strncasecmp(f->name, "X-Forwarded-For", 15) == 0) {
            if (xff != NULL) {
                log_debug("http_xff_malformed", "req=%s reason=repeated", r->id);
                return;
            }
            xff = f;
        }
    }
    struct xff_addr client;
    enum xff_result res = xff_client(c->s->trust, &c->peer, xff ? xff->value : NULL,
                                     xff ? xff->value_len : 0, &client);
    if (res == XFF_MALFORMED)
        log_debug("http_xff_malformed", "req=%s peer=%s", r->id, r->client);
    xff_addr_format(&client, r->client, sizeof(r->client));
}

/*
 * Hands the complete request in c's buffer to its route: its body is
 * in[head_len, head_len + body_len), and its bytes end at msg_end (beyond
 * the body for a chunked one, whose framing was squeezed out).
 */
static void
dispatch(struct conn *c, size_t body_len, size_t msg_end)
{
    struct http_server *s = c->s;
    /* The body's NUL goes in the framing gap of a chunked body, or over
     * the first byte after the body, saved until the reply; with nothing
     * after the body it takes the free byte that the reader always leaves. */
    size_t end = c->head_len + body_len;
    if (msg_end > end) {
        c->saved_byte = -1;
        c->consumed = msg_end;
    } else if (c->in_len > end) {
        c->saved_byte = c->in[end];
        c->consumed = end;
    } else {
        c->saved_byte = -1;
        c->in_len++;
        c->consumed = end + 1;
    }
    c->in[end] = '\0';

    req_start(c);
    struct http_req *r = &c->req;
    r->method = (enum http_method)c->head.method;
    r->body = c->in + c->head_len;
    r->body_len = body_len;
    r->route_index = c->route_index;
    c->keep_alive = c->head.keep_alive;
    c->must_linger = false;
    terminate_head(c, r);
    req_identify(c, r);

    if (r->method == HTTP_OPTIONS) {
        reply_options(c, r);
        return;
    }
    if (!route_found(c)) {
        if (c->route_allowed == 0) {
            http_reply_error(r, 404, NULL, "no route for %s", r->path);
            return;
        }
        char allow[64];
        allow_header(c->route_allowed, allow, sizeof(allow));
        http_req_add_header(r, "Allow", allow);
        http_reply_error(r, 405, NULL, "%s not allowed here", method_name(r->method));
        return;
    }
    r->nparams = c->nparams;
    memcpy(r->pnames, c->pnames, sizeof(r->pnames));
    memcpy(r->pvalues, c->pvalues, sizeof(r->pvalues));
    s->routes[c->route_index].fn(r, s->ctx);
}

/* Finds the end of a request head (an empty line) in the buffer. */
static bool
head_complete(struct conn *c)
{
    size_t i = c->scan;
    for (; i < c->in_len; i++) {
        if (c->in[i] != '\n')
            continue;
        if (i + 1 < c->in_len && c->in[i + 1] == '\n')
            return true;
        if (i + 2 < c->in_len && c->in[i + 1] == '\r' && c->in[i + 2] == '\n')
            return true;
        if (i + 2 >= c->in_len)
            break; /* the line after this LF is not all here yet */
    }
    c->scan = i;
    return false;
}

/*
 * Drops CR and LF bytes in front of a request: RFC 9112 section 2.2 asks a
 * server to ignore empty lines there (some clients send CRLF after a body).
 */
static void
skip_leading_newlines(struct conn *c)
{
    size_t n = 0;
    while (n < c->in_len && (c->in[n] == '\r' || c->in[n] == '\n'))
        n++;
    c->in += n;
    c->in_cap -= n;
    c->in_len -= n;
    if (c->in_len == 0)
        c->head_start_ms = 0; /* idle, not a request begun: its clock starts at its first byte */
}

/*
 * Takes one request from c's buffer: refuses it, dispatches it, or waits
 * for more bytes. Returns false in the last case.
 */
static bool
conn_step(struct conn *c)
{
    struct http_server *s = c->s;
    if (!c->head_done) {
        if (c->scan == 0)
            skip_leading_newlines(c);
        if (!head_complete(c)) {
            if (c->in_len < s->limits.max_headers)
                return false;
            conn_refuse(c, true, 431, "request head larger than %zu bytes", s->limits.max_headers);
            return true;
        }
        ssize_t hl =
            http_parse_head((const char *)c->in, c->in_len, s->limits.max_headers, &c->head);
        if (hl == -431)
            conn_refuse(c, true, 431,
                        "request head larger than %zu bytes or with more than %d fields",
                        s->limits.max_headers, HTTP_MAX_FIELDS);
        else if (hl == -501)
            conn_refuse(c, true, 501, "transfer coding not implemented (only chunked is)");
        else if (hl == -505)
            conn_refuse(c, true, 505, "HTTP version not supported (1.0 and 1.1 are)");
        else if (hl <= 0)
            conn_refuse(c, true, 400, "malformed request head");
        if (hl <= 0)
            return true;
        c->head_done = true;
        c->head_len = (size_t)hl;
        c->body_start_ms = now_ms();
        c->body_read = c->in_len - c->head_len;
        if (c->head.method == 0) {
            conn_refuse(c, true, 501, "method %.*s not implemented",
                        (int)(c->head.method_len < 32 ? c->head.method_len : 32),
                        c->head.method_str);
            return true;
        }
        if (c->head.content_length > (int64_t)s->limits.max_body) {
            conn_refuse(c, true, 413, "body larger than %zu bytes", s->limits.max_body);
            return true;
        }
        int rc = route_head(c);
        if (rc == 400) {
            conn_refuse(c, true, 400, "encoded '/' or NUL in the path");
            return true;
        }
        if (rc != 0) {
            conn_refuse(c, true, rc, "out of memory");
            return true;
        }
        /* A body is read only for a request that has a route and passes
         * the precheck: nobody gets the server to buffer bytes for free. */
        if (c->head.chunked || c->head.content_length > 0) {
            if (!route_found(c)) {
                if (c->route_allowed != 0)
                    conn_refuse(c, true, 405, "%s not allowed here",
                                method_name((enum http_method)c->head.method));
                else
                    conn_refuse(c, true, 404, "no route for %.*s",
                                (int)(c->head.path_len < 256 ? c->head.path_len : 256),
                                c->head.path);
                return true;
            }
            const char *refusal = precheck_head(c);
            if (refusal != NULL) {
                conn_refuse(c, true, 401, "%s", refusal);
                return true;
            }
        }
    }
    size_t body_len, msg_end;
    if (c->head.chunked) {
        size_t raw = c->in_len - c->head_len, moved = c->chunked.moved;
        int rc = http_chunked_decode(&c->chunked, c->in + c->head_len, &raw, s->limits.max_body);
        c->in_len = c->head_len + raw;
        s->bytes_moved += c->chunked.moved - moved;
        if (rc == -413)
            conn_refuse(c, true, 413, "body larger than %zu bytes", s->limits.max_body);
        else if (rc < 0)
            conn_refuse(c, true, 400, "malformed chunked body");
        if (rc < 0)
            return true;
        if (rc == 0) {
            conn_maybe_continue(c);
            return false;
        }
        body_len = c->chunked.decoded;
        msg_end = c->head_len + c->chunked.end;
    } else {
        body_len = c->head.content_length > 0 ? (size_t)c->head.content_length : 0;
        if (c->in_len - c->head_len < body_len) {
            if (!conn_reserve(c, c->head_len + body_len)) {
                conn_refuse(c, true, 503, "out of memory");
                return true;
            }
            conn_maybe_continue(c);
            return false;
        }
        msg_end = c->head_len + body_len;
    }
    dispatch(c, body_len, msg_end);
    return true;
}

/*
 * Takes the requests buffered in c, one at a time, while none is pending
 * and no output is queued. Returns false when c was closed.
 */
static bool
conn_process(struct conn *c)
{
    int taken = 0;
    while (c->state == CS_READ && c->out_off == c->out_len && c->in_len > 0) {
        if (taken++ == PIPELINE_BATCH) {
            /* Fairness: the rest of a long pipeline waits for the next turn
             * of the loop. A zero timer fires after the next poll, so the
             * other connections of this thread go first (an event activated
             * from a callback would run in this same pass). */
            static const struct timeval now = {0, 0};
            evtimer_add(&c->resume_ev, &now);
            return true;
        }
        c->in_dispatch = true;
        bool took = conn_step(c);
        c->in_dispatch = false;
        if (c->close_deferred) {
            c->close_deferred = false;
            conn_close(c);
            return false;
        }
        if (c->state == CS_HANDLER)
            return true; /* the handler replies later */
        if (!took)
            break; /* more bytes needed */
        if (c->broken) {
            conn_free(c);
            return false;
        }
        if (!c->keep_alive) {
            if (c->out_off < c->out_len)
                c->close_pending = true;
            else
                conn_end(c);
            return false;
        }
        /* Requests answered made room: reading may have paused on a full buffer. */
        conn_set_read(c, true);
    }
    if (c->eof && c->state == CS_READ && c->out_off == c->out_len) {
        /* The client sent all it will send and everything it asked is answered. */
        conn_free(c);
        return false;
    }
    return true;
}

/* Goes on with a pipeline that conn_process left for the next turn. */
static void
conn_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct conn *c = arg;
    if (c->fd >= 0 && c->state == CS_READ)
        conn_read_cb(c->fd, EV_READ, c);
}

static void
conn_read_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)what;
    struct conn *c = arg;
    if (c->state == CS_LINGER) {
        char drop[4096];
        ssize_t n = recv(fd, drop, sizeof(drop), 0);
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
            return;
        if (n > 0) {
            c->lingered += (size_t)n;
            if (c->linger_left > 0)
                c->linger_left -= n < c->linger_left ? n : c->linger_left;
        }
        if (n <= 0 || c->linger_left == 0 || c->lingered > LINGER_MAX_BYTES)
            conn_free(c);
        return;
    }
    bool processed = false;
    for (;;) {
        size_t room = c->in_cap - c->in_len;
        if (room < 2 && !processed && c->state == CS_READ && c->out_off == c->out_len) {
            /* A full window may hold complete requests: answering them
             * makes room, and growing for them would only churn memory. */
            processed = true;
            const unsigned char *in = c->in;
            size_t len = c->in_len;
            if (!conn_process(c))
                return; /* closed */
            if (c->state != CS_READ)
                return; /* a handler has it; reading resumes after the reply */
            room = c->in_cap - c->in_len;
            if (room < 2 && (c->in != in || c->in_len != len))
                break; /* took some: the rest on the next turn */
        }
        if (room < 2) {
            /* Grow only while reading a request: a pending one's pointers
             * must not move, and a client that pipelines without reading
             * its replies waits until they are written. */
            size_t want = c->in_cap * 2;
            if (want > c->s->in_limit)
                want = c->s->in_limit;
            if (c->state != CS_READ || c->out_off < c->out_len || want <= c->in_len + 1 ||
                !conn_reserve(c, want - 1)) {
                conn_set_read(c, false);
                break;
            }
            room = c->in_cap - c->in_len;
        }
        /* One byte stays free: dispatch() needs it for the body's NUL. */
        ssize_t n = recv(fd, c->in + c->in_len, room - 1, 0);
        if (n > 0) {
            c->in_len += (size_t)n;
            if (c->state == CS_READ) {
                c->deadline_ms = now_ms() + c->timeout_ms;
                if (c->head_done)
                    c->body_read += (uint64_t)n;
                else if (c->head_start_ms == 0)
                    c->head_start_ms = now_ms();
            }
            if ((size_t)n < room - 1)
                break;
            continue;
        }
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
            break;
        /* EOF or error. A client that only shut its sending side still
         * gets the answers to every complete request it sent (conn_process
         * closes once they are written); a pending request's client is
         * gone. */
        if (n == 0 && c->state == CS_READ) {
            conn_set_read(c, false);
            c->eof = true;
            break;
        }
        conn_close(c);
        return;
    }
    if (c->state == CS_READ)
        conn_process(c);
}

/* ---- accepting and the timeout sweep ---- */

static void
accept_resume_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_server *s = arg;
    event_add(s->accept_ev, NULL);
}

/*
 * Counts a refused connection (reason "cap") or a failed accept (reason
 * "accept") and logs at most once per REFUSE_LOG_MS per server: a flood of
 * refusals must not become a flood of log lines.
 */
static void
note_refusal(struct http_server *s, bool cap, int err)
{
    metric_inc(cap ? s->m_refused_cap : s->m_refused_accept);
    s->refused_unlogged++;
    int64_t now = now_ms();
    if (s->refuse_logged_ms != 0 && now - s->refuse_logged_ms < REFUSE_LOG_MS)
        return;
    if (cap)
        log_warn("http_connections_refused",
                 "server=%s reason=cap max_connections=%ld refused=%" PRIu64, s->name,
                 s->limits.gate->max, s->refused_unlogged);
    else
        log_warn("http_connections_refused",
                 "server=%s reason=accept error=\"%s\" refused=%" PRIu64, s->name, strerror(err),
                 s->refused_unlogged);
    s->refuse_logged_ms = now;
    s->refused_unlogged = 0;
}

/* Takes a place under the server's connection cap; false when full. */
static bool
gate_enter(struct http_server *s)
{
    struct http_gate *g = s->limits.gate;
    if (g == NULL || g->max <= 0)
        return true;
    if (atomic_fetch_add(&g->open, 1) < g->max)
        return true;
    atomic_fetch_sub(&g->open, 1);
    return false;
}

/* Answers a connection over the cap with a canned 503 and closes it. */
static void
refuse_connection(int fd)
{
#define REFUSAL_BODY "{\"error\":{\"code\":\"unavailable\",\"message\":\"too many connections\"}}"
    _Static_assert(sizeof(REFUSAL_BODY) - 1 == 65, "Content-Length below");
    static const char reply[] = "HTTP/1.1 503 Service Unavailable\r\n"
                                "Content-Type: application/json\r\n"
                                "Content-Length: 65\r\n"
                                "Retry-After: 1\r\n"
                                "Connection: close\r\n\r\n" REFUSAL_BODY;
#undef REFUSAL_BODY
    ssize_t n = send(fd, reply, sizeof(reply) - 1, MSG_NOSIGNAL | MSG_DONTWAIT);
    (void)n;
    close(fd);
}

static void
accept_cb(evutil_socket_t lfd, short what, void *arg)
{
    (void)what;
    struct http_server *s = arg;
    for (int i = 0; i < ACCEPT_BATCH; i++) {
        struct sockaddr_storage peer;
        socklen_t peer_len = sizeof(peer);
        int fd = accept4(lfd, (struct sockaddr *)&peer, &peer_len, SOCK_NONBLOCK | SOCK_CLOEXEC);
        if (fd < 0) {
            if (errno == EINTR || errno == ECONNABORTED)
                continue;
            if (errno == EAGAIN || errno == EWOULDBLOCK)
                return;
            /* Out of descriptors or memory: stop accepting for a moment
             * instead of spinning on a listener that stays readable. */
            note_refusal(s, false, errno);
            event_del(s->accept_ev);
            struct timeval tv = {0, 100000};
            evtimer_add(s->accept_pause_ev, &tv);
            return;
        }
        if (!gate_enter(s)) {
            refuse_connection(fd);
            note_refusal(s, true, 0);
            continue;
        }
        int one = 1;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
        struct conn *c = calloc(1, sizeof(*c));
        unsigned char *in = malloc(IN_INITIAL);
        if (c == NULL || in == NULL) {
            free(c);
            free(in);
            close(fd);
            if (s->limits.gate != NULL && s->limits.gate->max > 0)
                atomic_fetch_sub(&s->limits.gate->open, 1);
            continue;
        }
        c->s = s;
        c->base = s->base;
        c->fd = fd;
        xff_addr_from_sockaddr((struct sockaddr *)&peer, &c->peer);
        c->gate = s->limits.gate;
        c->gated = c->gate != NULL && c->gate->max > 0;
        c->buf = c->in = in;
        c->buf_cap = c->in_cap = IN_INITIAL;
        c->saved_byte = -1;
        c->route_index = s->nroutes;
        c->timeout_ms = s->limits.timeout_s * 1000;
        c->deadline_ms = now_ms() + c->timeout_ms;
        c->head_start_ms = now_ms(); /* the first head is due from the accept on */
        event_assign(&c->rev, s->base, fd, EV_READ | EV_PERSIST, conn_read_cb, c);
        event_assign(&c->wev, s->base, fd, EV_WRITE | EV_PERSIST, conn_write_cb, c);
        evtimer_assign(&c->resume_ev, s->base, conn_resume_cb, c);
        if (event_add(&c->rev, NULL) != 0) {
            c->fd = -1;
            close(fd);
            if (c->gated)
                atomic_fetch_sub(&c->gate->open, 1);
            free(in);
            free(c);
            continue;
        }
        c->next = s->conns;
        if (s->conns != NULL)
            s->conns->prev = c;
        s->conns = c;
    }
}

/*
 * True when the request c is reading has overrun its head deadline or is
 * sending its body slower than the minimum rate (http.h). Only while c
 * waits on the client: not with a handler, nor behind unwritten output.
 */
static bool
conn_too_slow(const struct conn *c, int64_t now)
{
    if (c->state != CS_READ || c->out_off < c->out_len || c->head_start_ms == 0)
        return false;
    const struct http_limits *l = &c->s->limits;
    int64_t grace_ms = (int64_t)l->head_timeout_s * 1000;
    if (!c->head_done)
        return now - c->head_start_ms > grace_ms;
    int64_t late_ms = now - c->body_start_ms - grace_ms;
    return l->min_body_rate > 0 && late_ms > 0 &&
           c->body_read * 1000 < (uint64_t)late_ms * l->min_body_rate;
}

static void
sweep_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct http_server *s = arg;
    int64_t now = now_ms();
    struct conn *next;
    for (struct conn *c = s->conns; c != NULL; c = next) {
        next = c->next;
        if (c->fd < 0 || c->in_dispatch)
            continue;
        if (now >= c->deadline_ms)
            conn_close(c);
        else if (conn_too_slow(c, now))
            conn_refuse(c, false, 408,
                        c->head_done ? "request body too slow"
                                     : "request head not complete in time");
    }
}

/* ---- servers ---- */

/* The mbox_http_connections_refused_total series of s for one reason. */
static struct metric *
refused_counter(struct http_server *s, const char *reason)
{
    char *labels = malloc(2 * strlen(s->name) + 64);
    if (labels == NULL)
        return NULL;
    char *p = labels + sprintf(labels, "server=\"");
    p = label_escape(p, s->name);
    sprintf(p, "\",reason=\"%s\"", reason);
    struct metric *m =
        metrics_counter(s->metrics, "mbox_http_connections_refused_total",
                        "Connections refused: over the cap, or accept() failed.", labels);
    free(labels);
    return m;
}

/* Checks a route table; returns the longest pattern length or -1 with err. */
static ssize_t
check_routes(const struct http_route *routes, size_t nroutes, char *err, size_t errlen)
{
    size_t maxlen = 0;
    for (size_t i = 0; i < nroutes; i++) {
        const struct http_route *rt = &routes[i];
        if (rt->pattern == NULL || rt->pattern[0] != '/' || rt->fn == NULL || rt->methods == 0 ||
            (rt->methods & ~(unsigned)ALLOWED_METHODS) != 0) {
            set_err(err, errlen, "route %zu: bad pattern, methods or handler", i);
            return -1;
        }
        int nparams = 0;
        for (const char *p = rt->pattern + 1;;) {
            size_t len = strcspn(p, "/");
            if (is_param_segment(p, len))
                nparams++;
            else if (memchr(p, '{', len) != NULL || memchr(p, '}', len) != NULL) {
                set_err(err, errlen, "route %s: braces outside a whole {name} segment",
                        rt->pattern);
                return -1;
            }
            p += len;
            if (*p == '\0')
                break;
            p++;
        }
        if (nparams > HTTP_MAX_PARAMS) {
            set_err(err, errlen, "route %s: more than %d parameters", rt->pattern, HTTP_MAX_PARAMS);
            return -1;
        }
        size_t len = strlen(rt->pattern);
        if (len > maxlen)
            maxlen = len;
    }
    return (ssize_t)maxlen;
}

struct http_server *
http_server_new(struct event_base *base, int fd, const char *name, const struct http_route *routes,
                size_t nroutes, const struct http_limits *limits, void *ctx,
                struct metrics *metrics, char *err, size_t errlen)
{
    struct http_server *s = NULL;
    if (base == NULL || fd < 0 || limits == NULL || (routes == NULL && nroutes > 0)) {
        set_err(err, errlen, "http_server_new: missing base, socket, limits or routes");
        goto fail;
    }
    if (limits->max_headers == 0 || limits->timeout_s <= 0 || limits->timeout_s > 86400 ||
        limits->head_timeout_s < 0 || limits->head_timeout_s > 86400 ||
        limits->max_body > ((size_t)1 << 40) || limits->max_headers > ((size_t)1 << 24)) {
        set_err(err, errlen,
                "http_server_new: limits need max_headers > 0, 0 < timeout_s <= 86400 and "
                "0 <= head_timeout_s <= 86400");
        goto fail;
    }
    ssize_t maxlen = check_routes(routes, nroutes, err, errlen);
    if (maxlen < 0)
        goto fail;

    s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto oom;
    s->base = base;
    s->listen_fd = -1;
    s->routes = routes;
    s->nroutes = nroutes;
    s->max_pattern_len = (size_t)maxlen;
    s->limits = *limits;
    if (s->limits.head_timeout_s == 0)
        s->limits.head_timeout_s = limits->timeout_s;
    /* A head, a whole body, the framing of a chunked one and a pipelined
     * request behind it. */
    s->in_limit = limits->max_headers + limits->max_body + 16384;
    s->ctx = ctx;
    s->metrics = metrics;
    s->name = strdup(name != NULL ? name : "http");
    s->rmetrics = calloc(nroutes + 1, sizeof(*s->rmetrics));
    if (s->name == NULL || s->rmetrics == NULL)
        goto oom;
    if (metrics != NULL) {
        s->m_refused_cap = refused_counter(s, "cap");
        s->m_refused_accept = refused_counter(s, "accept");
    }
    if (getrandom(&s->id_seed, sizeof(s->id_seed), GRND_NONBLOCK) != sizeof(s->id_seed)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s->id_seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)(uintptr_t)s ^
                     ((uint64_t)getpid() << 40);
    }
    s->accept_ev = event_new(base, fd, EV_READ | EV_PERSIST, accept_cb, s);
    s->accept_pause_ev = evtimer_new(base, accept_resume_cb, s);
    s->sweep_ev = event_new(base, -1, EV_PERSIST, sweep_cb, s);
    if (s->accept_ev == NULL || s->accept_pause_ev == NULL || s->sweep_ev == NULL)
        goto oom;
    /* A few sweeps per timeout period: a connection overstays by at most a quarter. */
    int sweep_ms = limits->timeout_s >= 4 ? 1000 : 250;
    struct timeval tv = {sweep_ms / 1000, (sweep_ms % 1000) * 1000};
    if (event_add(s->accept_ev, NULL) != 0 || event_add(s->sweep_ev, &tv) != 0) {
        set_err(err, errlen, "http_server_new: cannot watch fd %d", fd);
        goto fail;
    }
    s->listen_fd = fd;
    return s;

oom:
    set_err(err, errlen, "http_server_new: out of memory");
fail:
    if (fd >= 0)
        close(fd);
    if (s != NULL) {
        if (s->accept_ev != NULL)
            event_free(s->accept_ev);
        if (s->accept_pause_ev != NULL)
            event_free(s->accept_pause_ev);
        if (s->sweep_ev != NULL)
            event_free(s->sweep_ev);
        free(s->rmetrics);
        free(s->name);
        free(s);
    }
    return NULL;
}

void
http_server_set_precheck(struct http_server *s, http_precheck_fn fn)
{
    s->precheck = fn;
}

void
http_server_set_cors(struct http_server *s, const struct http_cors *cors)
{
    s->cors = cors;
}

uint64_t
http_server_bytes_moved(const struct http_server *s)
{
    return s->bytes_moved;
}

void
http_server_free(struct http_server *s)
{
    if (s == NULL)
        return;
    /* Pending requests outlive the server (their reply frees them): close
     * their sockets and cut their link back to it; free the rest. */
    struct conn *next;
    for (struct conn *c = s->conns; c != NULL; c = next) {
        next = c->next;
        c->prev = c->next = NULL;
        c->s = NULL;
        if (c->state == CS_HANDLER)
            conn_close_socket(c);
        else
            conn_free(c);
    }
    s->conns = NULL;
    event_free(s->accept_ev);
    event_free(s->accept_pause_ev);
    event_free(s->sweep_ev);
    close(s->listen_fd);
    free(s->rmetrics);
    free(s->name);
    free(s);
}
