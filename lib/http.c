/*
 * http: routing, request objects and replies on top of evhttp (see http.h).
 *
 * evhttp calls dispatch() for every complete request. dispatch() wraps the
 * evhttp_request in a struct http_req, finds the route and calls the
 * handler. A handler that returns without replying leaves the request
 * pending; watch_pending() then arranges to hear about the connection
 * closing (conn_closed()), so that a late reply never touches an
 * evhttp_request that libevent has already freed.
 *
 * What libevent 2.1.12 does with a pending request, and why the code below
 * looks the way it does (each point checked against the installed library;
 * tests/unit/test_http.c covers them):
 *
 * - Once a request is read, evhttp stops reading its connection until the
 *   reply is written, so on its own it never notices a client that went
 *   away; the reply would just be written into a dead socket.
 * - Turning reading back on is not enough: evhttp's read callback aborts
 *   the process (event_errx "illegal connection state") when bytes of a
 *   pipelined request arrive while the first one is pending.
 * - So watch_pending() removes the read callback and turns EV_READ on with
 *   a read high-water mark one byte above what is already buffered: an
 *   EOF, a reset or the read timeout (limits.timeout_s) reaches evhttp's
 *   event callback, pipelined bytes are neither parsed nor buffered beyond
 *   one byte. evhttp_send_reply() installs evhttp's callbacks again, and
 *   reply_sent() lifts the water mark once the reply is out.
 * - On EOF, reset or timeout of a pending request libevent detaches the
 *   evhttp_request from the connection (evhttp_request_get_connection()
 *   becomes NULL), frees the connection, calls its close callback
 *   (conn_closed()) and never frees that request: it is ours, and the
 *   reply frees it.
 * - evhttp_free() frees connections with their requests still attached, so
 *   those evhttp_requests die with them; http_server_free() forgets them
 *   first.
 */
#include "http.h"

#include "log.h"
#include "metrics.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/http.h>
#include <event2/keyvalq_struct.h>

#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <time.h>
#include <unistd.h>

#define ALLOWED_METHODS (HTTP_GET | HTTP_POST | HTTP_PUT | HTTP_PATCH | HTTP_DELETE | HTTP_HEAD)

/* Most {name} parameters in one pattern (http.h says 8). */
#define HTTP_MAX_PARAMS 8

/* Status recorded for a request whose client went away before the reply. */
#define STATUS_CLIENT_GONE 499

/* Distinct statuses whose counter a route caches; others are looked up. */
#define ROUTE_STATUS_CACHE 8

/* Metric series of one route (index nroutes: requests no route took). */
struct route_metrics {
    struct metric *duration;
    int status[ROUTE_STATUS_CACHE];
    struct metric *requests[ROUTE_STATUS_CACHE];
};

struct http_server {
    struct event_base *base;
    struct evhttp *evh;
    char *name;
    const struct http_route *routes;
    size_t nroutes;
    size_t max_pattern_len;
    struct http_limits limits;
    void *ctx;
    struct metrics *metrics;
    struct route_metrics *rmetrics; /* nroutes + 1 */
    uint64_t id_seed, id_counter;
    struct http_req *live;       /* every request not yet replied to */
    struct http_req *in_handler; /* set while a handler runs and has not replied */
};

struct query_param {
    char *name, *value;
};

struct http_req {
    struct evhttp_request *evreq;    /* NULL once libevent freed it */
    struct evhttp_connection *evcon; /* while a pending request's close is watched */
    bool conn_gone;                  /* the connection closed before the reply */
    bool evreq_owned;                /* evreq was detached by libevent: we free it */
    struct http_server *server;      /* NULL once the server was freed */
    struct event_base *base;
    struct http_req *prev, *next; /* server->live */

    enum http_method method;
    size_t route_index; /* for metrics; nroutes = "unmatched" */
    char id[9];
    struct timespec start;

    char *path;      /* decoded */
    char *raw_query; /* as received, NULL when none */
    int nparams;
    const char *pnames[HTTP_MAX_PARAMS];
    const char *pvalues[HTTP_MAX_PARAMS];
    char *valbuf;

    bool query_parsed;
    struct query_param *query;
    size_t nquery;

    unsigned char *body;
    size_t body_len;

    void *data;
};

/* ---- pure helpers ---- */

/* A pattern segment is a parameter when it is all of "{name}", name non-empty. */
static bool
is_param_segment(const char *seg, size_t len)
{
    return len >= 3 && seg[0] == '{' && seg[len - 1] == '}';
}

int
http_match_pattern(const char *pattern, const char *path, const char **names, const char **values,
                   int maxp, char *valbuf, size_t valbuflen)
{
    if (pattern == NULL || path == NULL || pattern[0] != '/' || path[0] != '/')
        return -1;
    const char *p = pattern + 1, *q = path + 1;
    int n = 0;
    size_t used = 0;
    for (;;) {
        size_t plen = strcspn(p, "/"), qlen = strcspn(q, "/");
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
        if (*p == '\0' || *q == '\0')
            return *p == *q ? n : -1;
        p++; /* both at '/' */
        q++;
    }
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
    case 409:
        return "conflict";
    case 412:
        return "failed_precondition";
    case 413:
        return "too_large";
    case 429:
        return "rate_limited";
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
    }
    return "-";
}

static enum http_method
method_from_evhttp(enum evhttp_cmd_type cmd)
{
    switch (cmd) {
    case EVHTTP_REQ_GET:
        return HTTP_GET;
    case EVHTTP_REQ_POST:
        return HTTP_POST;
    case EVHTTP_REQ_PUT:
        return HTTP_PUT;
    case EVHTTP_REQ_PATCH:
        return HTTP_PATCH;
    case EVHTTP_REQ_DELETE:
        return HTTP_DELETE;
    case EVHTTP_REQ_HEAD:
        return HTTP_HEAD;
    default:
        return 0;
    }
}

/* 8 hex digits: a per-server counter through a 64-bit mixer, seeded at random. */
static void
make_request_id(struct http_server *s, char out[9])
{
    uint64_t x = s->id_seed + ++s->id_counter * 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    x ^= x >> 31;
    snprintf(out, 9, "%08x", (unsigned)(x >> 32));
}

/* Allocates the request for evreq and links it into the server's live list. */
static struct http_req *
req_new(struct http_server *s, struct evhttp_request *evreq)
{
    struct http_req *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    clock_gettime(CLOCK_MONOTONIC, &r->start);
    r->evreq = evreq;
    r->server = s;
    r->base = s->base;
    r->route_index = s->nroutes;
    make_request_id(s, r->id);
    r->next = s->live;
    if (s->live != NULL)
        s->live->prev = r;
    s->live = r;
    return r;
}

static void
req_free(struct http_req *r)
{
    if (r->server != NULL) {
        if (r->prev != NULL)
            r->prev->next = r->next;
        else
            r->server->live = r->next;
        if (r->next != NULL)
            r->next->prev = r->prev;
    }
    for (size_t i = 0; i < r->nquery; i++) {
        free(r->query[i].name);
        free(r->query[i].value);
    }
    free(r->query);
    free(r->path);
    free(r->raw_query);
    free(r->valbuf);
    free(r->body);
    free(r);
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
    if (r->evreq == NULL || r->conn_gone)
        return;
    struct evhttp_connection *c = evhttp_request_get_connection(r->evreq);
    if (c != NULL)
        evhttp_connection_set_timeout(c, seconds);
}

const char *
http_req_id(const struct http_req *r)
{
    return r->id;
}

struct event_base *
http_req_base(const struct http_req *r)
{
    return r->base;
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
    char *tmp = strndup(s, len);
    if (tmp == NULL)
        return NULL;
    size_t outlen;
    char *out = evhttp_uridecode(tmp, 1, &outlen);
    free(tmp);
    if (out != NULL && strlen(out) != outlen) {
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
    if (r->evreq == NULL)
        return NULL;
    return evhttp_find_header(evhttp_request_get_input_headers(r->evreq), name);
}

const char *
http_req_bearer(const struct http_req *r)
{
    return http_parse_bearer(http_req_header(r, "Authorization"));
}

const unsigned char *
http_req_body(struct http_req *r, size_t *len)
{
    if (r->body == NULL) {
        struct evbuffer *in = r->evreq != NULL ? evhttp_request_get_input_buffer(r->evreq) : NULL;
        size_t n = in != NULL ? evbuffer_get_length(in) : 0;
        r->body = malloc(n + 1);
        if (r->body == NULL) {
            if (len != NULL)
                *len = 0;
            return NULL;
        }
        if (n > 0 && evbuffer_copyout(in, r->body, n) != (ev_ssize_t)n) {
            free(r->body);
            r->body = NULL;
            if (len != NULL)
                *len = 0;
            return NULL;
        }
        r->body[n] = '\0';
        r->body_len = n;
    }
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

void
http_req_add_header(struct http_req *r, const char *name, const char *value)
{
    if (r == NULL || r->conn_gone || r->evreq == NULL)
        return;
    evhttp_add_header(evhttp_request_get_output_headers(r->evreq), name, value);
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
                metrics_histogram(s->metrics, "http_request_duration_seconds",
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
            c = metrics_counter(s->metrics, "http_requests_total",
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

/* Records, logs and frees r: the end of every request. */
static void
req_finish(struct http_req *r, int status)
{
    int64_t us = elapsed_us(&r->start);
    if (us < 0)
        us = 0;
    record_request(r->server, r, status, (double)us / 1e6);
    if (log_enabled(LOG_DEBUG)) {
        char qpath[256];
        log_debug("http_request", "req=%s method=%s path=%s status=%d us=%lld", r->id,
                  method_name(r->method), log_q(qpath, sizeof(qpath), http_req_path(r)), status,
                  (long long)us);
    }
    req_free(r);
}

/* ---- replies ---- */

/*
 * The single place a reply leaves: body is either (data, len) or the
 * contents of buf (moved out of it). Frees r.
 */
static void
send_reply(struct http_req *r, int status, const char *content_type, const void *data, size_t len,
           struct evbuffer *buf)
{
    if (r == NULL)
        return;
    if (status < 100 || status > 599)
        status = 500;
    if (r->server != NULL && r->server->in_handler == r)
        r->server->in_handler = NULL;

    if (r->conn_gone) {
        /* Nothing to send to: free what libevent left to us. */
        if (r->evreq_owned && r->evreq != NULL)
            evhttp_request_free(r->evreq);
        r->evreq = NULL;
        req_finish(r, STATUS_CLIENT_GONE);
        return;
    }

    struct evhttp_request *evreq = r->evreq;
    if (r->evcon != NULL) {
        /* The close callback points at r, which is about to go. */
        evhttp_connection_set_closecb(r->evcon, NULL, NULL);
        r->evcon = NULL;
    }
    struct evkeyvalq *h = evhttp_request_get_output_headers(evreq);
    if (content_type != NULL)
        evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "X-Request-Id", r->id);
    if (buf != NULL)
        len = evbuffer_get_length(buf);
    bool no_body = r->method == HTTP_HEAD || status < 200 || status == 204 || status == 304;
    if (no_body) {
        if (r->method == HTTP_HEAD) {
            char cl[32];
            snprintf(cl, sizeof(cl), "%zu", len);
            evhttp_add_header(h, "Content-Length", cl);
        }
    } else if (buf != NULL) {
        evbuffer_add_buffer(evhttp_request_get_output_buffer(evreq), buf);
    } else if (len > 0) {
        evbuffer_add(evhttp_request_get_output_buffer(evreq), data, len);
    }
    evhttp_send_reply(evreq, status, NULL, NULL);
    r->evreq = NULL;
    req_finish(r, status);
}

void
http_reply(struct http_req *r, int status, const char *content_type, const void *body, size_t len)
{
    send_reply(r, status, content_type, body, len, NULL);
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
    if (status == 503 && !r->conn_gone && r->evreq != NULL &&
        evhttp_find_header(evhttp_request_get_output_headers(r->evreq), "Retry-After") == NULL)
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
    send_reply(r, 200, "text/plain; version=0.0.4", NULL, 0, buf);
    evbuffer_free(buf);
}

/* ---- pending requests and closed connections ---- */

/*
 * Close callback of a connection whose request is pending. libevent either
 * detached the request (EOF, reset, timeout: it is now ours to free) or is
 * about to free it with the connection (it must not be touched again).
 */
static void
conn_closed(struct evhttp_connection *evcon, void *arg)
{
    struct http_req *r = arg;
    evhttp_connection_set_closecb(evcon, NULL, NULL);
    r->evcon = NULL;
    r->conn_gone = true;
    if (r->evreq != NULL && evhttp_request_get_connection(r->evreq) == NULL)
        r->evreq_owned = true;
    else
        r->evreq = NULL;
    log_debug("http_client_gone", "req=%s", r->id);
}

/* Reply fully written: let the connection read the next request freely. */
static void
reply_sent(struct evhttp_request *evreq, void *arg)
{
    (void)arg;
    struct evhttp_connection *evcon = evhttp_request_get_connection(evreq);
    if (evcon != NULL)
        bufferevent_setwatermark(evhttp_connection_get_bufferevent(evcon), EV_READ, 0, 0);
}

/* The handler returned without replying: watch the connection (see the top). */
static void
watch_pending(struct http_req *r)
{
    struct evhttp_connection *evcon = evhttp_request_get_connection(r->evreq);
    if (evcon == NULL)
        return;
    r->evcon = evcon;
    evhttp_connection_set_closecb(evcon, conn_closed, r);

    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    bufferevent_data_cb readcb, writecb;
    bufferevent_event_cb eventcb;
    void *cbarg;
    bufferevent_getcb(bev, &readcb, &writecb, &eventcb, &cbarg);
    bufferevent_setcb(bev, NULL, writecb, eventcb, cbarg);
    size_t buffered = evbuffer_get_length(bufferevent_get_input(bev));
    bufferevent_setwatermark(bev, EV_READ, 0, buffered + 1);
    bufferevent_enable(bev, EV_READ);
    evhttp_request_set_on_complete_cb(r->evreq, reply_sent, NULL);
}

/* Last resort when even the request object cannot be allocated. */
static void
reply_oom(struct evhttp_request *evreq)
{
    static const char body[] =
        "{\"error\":{\"code\":\"unavailable\",\"message\":\"out of memory\"}}";
    struct evkeyvalq *h = evhttp_request_get_output_headers(evreq);
    evhttp_add_header(h, "Content-Type", "application/json");
    evhttp_add_header(h, "Retry-After", "1");
    evbuffer_add(evhttp_request_get_output_buffer(evreq), body, sizeof(body) - 1);
    evhttp_send_reply(evreq, 503, NULL, NULL);
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

/* evhttp's generic callback: every request that got through evhttp's checks. */
static void
dispatch(struct evhttp_request *evreq, void *arg)
{
    struct http_server *s = arg;
    struct http_req *r = req_new(s, evreq);
    if (r == NULL) {
        reply_oom(evreq);
        return;
    }
    r->method = method_from_evhttp(evhttp_request_get_command(evreq));

    const struct evhttp_uri *uri = evhttp_request_get_evhttp_uri(evreq);
    const char *rawpath = uri != NULL ? evhttp_uri_get_path(uri) : NULL;
    if (rawpath == NULL || rawpath[0] == '\0')
        rawpath = "/";
    size_t pathlen = 0;
    r->path = evhttp_uridecode(rawpath, 0, &pathlen);
    const char *query = uri != NULL ? evhttp_uri_get_query(uri) : NULL;
    if (query != NULL)
        r->raw_query = strdup(query);
    size_t valbuflen = r->path != NULL ? s->max_pattern_len + pathlen + 2 * HTTP_MAX_PARAMS : 0;
    if (r->path != NULL)
        r->valbuf = malloc(valbuflen);
    if (r->path == NULL || r->valbuf == NULL || (query != NULL && r->raw_query == NULL)) {
        http_reply_error(r, 503, NULL, "out of memory");
        return;
    }
    if (strlen(r->path) != pathlen) {
        http_reply_error(r, 400, NULL, "path holds a NUL byte");
        return;
    }
    /* evhttp enforces the cap while reading; this only guards against that changing. */
    if (evbuffer_get_length(evhttp_request_get_input_buffer(evreq)) > s->limits.max_body) {
        http_reply_error(r, 413, NULL, "body larger than %zu bytes", s->limits.max_body);
        return;
    }

    const struct http_route *route = NULL;
    unsigned allowed = 0;
    size_t first_path_match = s->nroutes;
    for (size_t i = 0; i < s->nroutes; i++) {
        const struct http_route *rt = &s->routes[i];
        int n = http_match_pattern(rt->pattern, r->path, r->pnames, r->pvalues, HTTP_MAX_PARAMS,
                                   r->valbuf, valbuflen);
        if (n < 0)
            continue;
        if (rt->methods & r->method) {
            route = rt;
            r->route_index = i;
            r->nparams = n;
            break;
        }
        allowed |= rt->methods;
        if (first_path_match == s->nroutes)
            first_path_match = i;
    }
    if (route == NULL) {
        if (allowed == 0) {
            http_reply_error(r, 404, NULL, "no route for %s", r->path);
            return;
        }
        char allow[64];
        allow_header(allowed, allow, sizeof(allow));
        r->route_index = first_path_match;
        http_req_add_header(r, "Allow", allow);
        http_reply_error(r, 405, NULL, "%s not allowed here", method_name(r->method));
        return;
    }

    s->in_handler = r;
    route->fn(r, s->ctx);
    /* Replying clears in_handler; still set means the handler went async. */
    if (s->in_handler != NULL) {
        struct http_req *pending = s->in_handler;
        s->in_handler = NULL;
        watch_pending(pending);
    }
}

/* ---- servers ---- */

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
    if (limits->max_headers == 0 || limits->timeout_s <= 0 ||
        limits->max_body > (size_t)EV_SSIZE_MAX || limits->max_headers > (size_t)EV_SSIZE_MAX) {
        set_err(err, errlen, "http_server_new: limits need max_headers > 0 and timeout_s > 0");
        goto fail;
    }
    ssize_t maxlen = check_routes(routes, nroutes, err, errlen);
    if (maxlen < 0)
        goto fail;

    s = calloc(1, sizeof(*s));
    if (s == NULL)
        goto oom;
    s->base = base;
    s->routes = routes;
    s->nroutes = nroutes;
    s->max_pattern_len = (size_t)maxlen;
    s->limits = *limits;
    s->ctx = ctx;
    s->metrics = metrics;
    s->name = strdup(name != NULL ? name : "http");
    s->rmetrics = calloc(nroutes + 1, sizeof(*s->rmetrics));
    if (s->name == NULL || s->rmetrics == NULL)
        goto oom;
    if (getrandom(&s->id_seed, sizeof(s->id_seed), GRND_NONBLOCK) != sizeof(s->id_seed)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        s->id_seed = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)(uintptr_t)s ^
                     ((uint64_t)getpid() << 40);
    }

    s->evh = evhttp_new(base);
    if (s->evh == NULL)
        goto oom;
    evhttp_set_max_body_size(s->evh, (ev_ssize_t)limits->max_body);
    evhttp_set_max_headers_size(s->evh, (ev_ssize_t)limits->max_headers);
    evhttp_set_timeout(s->evh, limits->timeout_s);
    evhttp_set_allowed_methods(s->evh, EVHTTP_REQ_GET | EVHTTP_REQ_POST | EVHTTP_REQ_PUT |
                                           EVHTTP_REQ_PATCH | EVHTTP_REQ_DELETE | EVHTTP_REQ_HEAD);
    evhttp_set_flags(s->evh, EVHTTP_SERVER_LINGERING_CLOSE);
    /* Every reply here sets its type; no text/html guess for the rest. */
    evhttp_set_default_content_type(s->evh, NULL);
    evhttp_set_gencb(s->evh, dispatch, s);
    if (evhttp_accept_socket_with_handle(s->evh, fd) == NULL) {
        set_err(err, errlen, "http_server_new: cannot accept on fd %d", fd);
        goto fail;
    }
    return s;

oom:
    set_err(err, errlen, "http_server_new: out of memory");
fail:
    if (fd >= 0)
        close(fd);
    if (s != NULL) {
        if (s->evh != NULL)
            evhttp_free(s->evh);
        free(s->rmetrics);
        free(s->name);
        free(s);
    }
    return NULL;
}

void
http_server_free(struct http_server *s)
{
    if (s == NULL)
        return;
    /* Pending requests outlive the server: cut every link back to it first. */
    for (struct http_req *r = s->live; r != NULL; r = r->next) {
        if (!r->conn_gone) {
            if (r->evcon != NULL)
                evhttp_connection_set_closecb(r->evcon, NULL, NULL);
            r->evcon = NULL;
            r->conn_gone = true;
            r->evreq = NULL; /* freed by evhttp_free() with its connection */
        }
        r->server = NULL;
    }
    s->live = NULL;
    evhttp_free(s->evh);
    free(s->rmetrics);
    free(s->name);
    free(s);
}
