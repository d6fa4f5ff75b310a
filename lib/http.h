/*
 * http: the HTTP/1.1 server of the daemons: our own connection loop on
 * libevent events, with lib/http_parse for the bytes (http.c says why not
 * evhttp).
 *
 * Threading: a daemon opens one listening socket per worker thread with
 * http_listen() (SO_REUSEPORT, so the kernel spreads connections over the
 * threads; one shared socket would starve some of them) and creates one
 * http_server per thread on that thread's event_base. Nothing in an
 * http_server is shared with another thread except the metrics registry.
 *
 * Protocol: HTTP/1.1 and 1.0, persistent connections, pipelining (answered
 * in order), Content-Length and chunked request bodies, Expect:
 * 100-continue. Every error the server produces itself is a JSON error
 * like the handlers' (http_reply_error), counted under route "unmatched":
 * a malformed request 400, a request head over max_headers or with more
 * than HTTP_MAX_FIELDS fields 431, a body over max_body 413 (sent as soon
 * as the declared length is known, before the body is read), an unknown
 * method or transfer coding 501, another HTTP version 505. After such an
 * error the connection is closed; the server first reads and drops what
 * the client is still sending (for a few seconds at most) so that the
 * client reads the error instead of a reset.
 *
 * Routing: a table of (method, pattern, handler); the first route whose
 * pattern and method match wins, so list literal routes before parameter
 * routes that overlap them. Patterns are literal segments and {name}
 * parameters (at most 8 per pattern):
 * "/v1/notices/{id}/publish". Routing looks at the raw path, as it came
 * on the wire: literal segments match only their exact bytes (so
 * "/v1/notices/1/hid%65" is not ".../hide"), and a path holding an encoded
 * '/' ("%2F") or NUL ("%00") is refused with 400. A {name} matches exactly
 * one non-empty segment; its value is percent-decoded. A trailing slash
 * must match too. An unknown path gets 404, a known path with another
 * method 405 (with an Allow header), both as JSON errors.
 *
 * The route is chosen as soon as the request head is complete, before any
 * body is read. A request that carries a body (Content-Length > 0 or
 * chunked) is refused at that point, without reading the body, when its
 * path has no route (404/405) or when the server's precheck (see
 * http_server_set_precheck) rejects its credential (401); the connection
 * is then closed after the error. A request without a body goes to its
 * handler as usual, which authenticates it itself.
 *
 * Deadlines, whatever trickles in: a request head must be complete within
 * head_timeout_s of its first byte (of the accept, for a connection's
 * first request); once the head is in, a body must arrive at
 * min_body_rate bytes per second or more, after a grace of head_timeout_s.
 * A connection that misses either gets 408 and is closed. Between requests
 * a connection may stay idle for timeout_s; a reply that the client does
 * not read has timeout_s per write progress.
 *
 * Connection cap: servers that share a struct http_gate (one per listening
 * port, shared by the worker threads' servers) hold at most gate->max
 * connections together. Beyond it a new connection gets a canned 503 JSON
 * error and is closed at once, without any allocation; refusals (and
 * accept failures such as EMFILE) are counted in
 * mbox_http_connections_refused_total{server,reason} and logged at most once
 * per 10 seconds per server, with the count since the last line.
 *
 * The input buffer is consumed in O(bytes): finished requests advance a
 * window over the buffer; what remains is moved to the front only when it
 * is no more than what was consumed since the last move, or when a request
 * needs more room than the tail has left (then that request is read whole
 * before anything moves again). Bytes moved stay under twice the bytes
 * received.
 *
 * A request's life: the handler gets a struct http_req and must finish it
 * exactly once with one of the http_reply*() functions, either before it
 * returns or later from a callback on the same thread (async database and
 * Redis work). Replying frees the http_req; it must not be used afterwards.
 * Every request has an id (`req=` in log lines, X-Request-Id header; see
 * http_request_id_valid).
 *
 * Client gone: while a handler works asynchronously the server watches the
 * connection. If the client closes it, or the handler has not replied
 * within timeout_s, the server closes the connection; the http_req and all
 * its accessors stay valid and the handler still replies, but the reply
 * only frees the request (nothing is sent) and is counted with status
 * "499". Bytes of pipelined requests arriving meanwhile are buffered (up
 * to the connection's buffer, then reading pauses) and answered after the
 * reply. A client that shuts only its sending side (half-close) still
 * gets the answers to the complete requests it sent, unless one of them
 * was pending with its handler at that moment: that one counts as client
 * gone. Writes use MSG_NOSIGNAL: a closed socket never raises SIGPIPE.
 *
 * Metrics (when a registry is given): mbox_http_requests_total{server,route,
 * status} and mbox_http_request_duration_seconds{server,route}, route being the
 * pattern or "unmatched". Each reply logs one debug line event=http_request.
 */
#ifndef MBOX_HTTP_H
#define MBOX_HTTP_H

#include <stdarg.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct event_base;
struct metrics;
struct http_server;
struct http_req;

/* Methods, as a bit set so a route can match several. */
enum http_method {
    HTTP_GET = 1 << 0,
    HTTP_POST = 1 << 1,
    HTTP_PUT = 1 << 2,
    HTTP_PATCH = 1 << 3,
    HTTP_DELETE = 1 << 4,
    HTTP_HEAD = 1 << 5,
    HTTP_OPTIONS = 1 << 6, /* answered by the server itself (CORS preflight, or 405);
                            * no route takes it */
};

typedef void (*http_handler_fn)(struct http_req *req, void *ctx);

struct http_route {
    unsigned methods; /* enum http_method bits */
    const char *pattern;
    http_handler_fn fn;
};

/*
 * A connection cap shared by the servers of one listening port (one per
 * worker thread). max <= 0 means no cap. open is maintained by the
 * servers; initialise it to 0.
 */
struct http_gate {
    atomic_long open;
    long max;
};

struct http_limits {
    size_t max_body;        /* bytes; larger bodies get 413 */
    size_t max_headers;     /* bytes of the request head (request line and
                             * header fields); larger get 431 */
    int timeout_s;          /* idle/read/write timeout of a connection (1..86400);
                             * also how long a pending handler is waited for
                             * (see "Client gone") */
    int head_timeout_s;     /* a request head must be complete this long after
                             * its first byte (0: timeout_s) */
    size_t min_body_rate;   /* bytes/s a body must keep up after a grace of
                             * head_timeout_s (0: no minimum) */
    struct http_gate *gate; /* shared connection cap, or NULL */
};

/*
 * Opens a non-blocking listening socket on host:port with SO_REUSEADDR and
 * SO_REUSEPORT (backlog 1024). host NULL or "" means every address; port 0
 * picks a free port (see http_bound_port). Returns the fd, or -1 with a
 * message in err.
 */
int http_listen(const char *host, int port, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* The local port a socket is bound to, or -1. */
int http_bound_port(int fd);

/*
 * Creates a server on base accepting on fd (which it takes ownership of,
 * also on failure). name labels its metrics ("sdk", "internal", "admin").
 * routes must stay valid for the server's life; ctx is passed to every
 * handler; metrics may be NULL. Returns NULL with a message in err (bad
 * limits or routes, allocation failure).
 */
struct http_server *http_server_new(struct event_base *base, int fd, const char *name,
                                    const struct http_route *routes, size_t nroutes,
                                    const struct http_limits *limits, void *ctx,
                                    struct metrics *metrics, char *err, size_t errlen);

/*
 * The precheck of a server: called when the head of a request that carries
 * a body is complete and its route is known, before the body is read.
 * bearer is the token of "Authorization: Bearer <token>" (NULL when absent,
 * malformed or longer than 4 KiB). Returns NULL to read the body, or the
 * message of a 401 that refuses the request (a static string); the
 * connection is then closed and the body never buffered.
 */
typedef const char *(*http_precheck_fn)(const struct http_route *route, const char *bearer,
                                        void *ctx);

void http_server_set_precheck(struct http_server *s, http_precheck_fn fn);

/*
 * Cross-origin requests (CORS) from browsers. When a server has a policy,
 * a request whose Origin is allowed gets Access-Control-Allow-Origin (the
 * origin itself, or "*" when any is allowed), Vary: Origin and
 * Access-Control-Expose-Headers on every reply, errors included. A
 * preflight (OPTIONS with Access-Control-Request-Method, from an allowed
 * origin, for a path that has routes) is answered 204 by the server with
 * Access-Control-Allow-Methods (the path's methods), -Allow-Headers and
 * -Max-Age. Other origins get none of these headers, and OPTIONS otherwise
 * gets 405 (404 for an unknown path). The policy must outlive the server.
 */
struct http_cors {
    const char *const *origins; /* exact "scheme://host[:port]" strings */
    size_t norigins;
    bool any;                  /* every origin ("*") */
    const char *allow_headers; /* e.g. "Authorization, Content-Type" */
    int max_age_s;
};

void http_server_set_cors(struct http_server *s, const struct http_cors *cors);

/*
 * Request ids: a request carrying a valid X-Request-Id (1..HTTP_REQ_ID_MAX
 * characters of [A-Za-z0-9._-], e.g. nginx's $request_id) keeps it: it is
 * the req= of its log lines and comes back in the reply's X-Request-Id.
 * Any other request gets a fresh 8-hex-digit id.
 */
#define HTTP_REQ_ID_MAX 64

bool http_request_id_valid(const char *s, size_t len);

/*
 * The proxies whose X-Forwarded-For the server believes (see
 * http_req_client). NULL or an empty list: none. trust must outlive the
 * server.
 */
struct xff_trust;
void http_server_set_trusted_proxies(struct http_server *s, const struct xff_trust *trust);

/* Bytes the server has moved inside connection input buffers since it
 * started (consuming pipelined requests, making room). For tests: it stays
 * within about twice the bytes received, whatever the pattern of requests
 * (see "The input buffer is consumed in O(bytes)" above). */
uint64_t http_server_bytes_moved(const struct http_server *s);

/*
 * Stops accepting, closes every connection (and the listening socket) and
 * frees the server. Requests still pending are dropped: their http_req
 * stays valid until the handler replies, and that reply only frees it.
 */
void http_server_free(struct http_server *s);

/* ---- request accessors (valid until the reply) ---- */

enum http_method http_req_method(const struct http_req *r);
const char *http_req_path(const struct http_req *r); /* raw path as sent, no query */
const char *http_req_id(const struct http_req *r);

/*
 * The client's address as text: the TCP peer, or, when the peer is one of
 * the server's trusted proxies (http_server_set_trusted_proxies), the
 * client named by X-Forwarded-For (lib/xff.h). Logged as client= in the
 * http_request line.
 */
const char *http_req_client(const struct http_req *r);
struct event_base *http_req_base(const struct http_req *r);

/* A {name} path parameter, or NULL. */
const char *http_req_param(const struct http_req *r, const char *name);

/* A query-string parameter (name matched exactly, value decoded, '+' as
 * space; the first of repeated names), or NULL. A name without '=' has the
 * value "". */
const char *http_req_query(const struct http_req *r, const char *name);

/* A request header (case-insensitive name; the first of repeated ones),
 * or NULL. */
const char *http_req_header(const struct http_req *r, const char *name);

/* The token of "Authorization: Bearer <token>", or NULL when absent/malformed. */
const char *http_req_bearer(const struct http_req *r);

/* The body, contiguous, NUL-terminated (the NUL is not counted in *len),
 * owned by the request; chunked bodies arrive decoded. Never NULL. */
const unsigned char *http_req_body(struct http_req *r, size_t *len);

/*
 * Gives this request's connection a longer read/write timeout (seconds),
 * for a handler that legitimately takes longer than the server's
 * timeout_s (POST /v1/fanout). No effect once the client is gone.
 */
void http_req_set_timeout(struct http_req *r, int seconds);

/* Caller data attached to the request (handlers' per-request state). */
void http_req_set_data(struct http_req *r, void *data);
void *http_req_data(const struct http_req *r);

/* ---- replies: exactly one per request; each frees r ---- */

/* Adds a response header (before the reply). */
void http_req_add_header(struct http_req *r, const char *name, const char *value);

/* Sends status with body (copied; none for HEAD, 1xx, 204 and 304) and
 * Content-Type content_type (none when NULL). */
void http_reply(struct http_req *r, int status, const char *content_type, const void *body,
                size_t len);

/* Serializes body as compact JSON and steals the reference. */
void http_reply_json(struct http_req *r, int status, json_t *body);

/* Replies 200 with the registry in Prometheus text format (GET /metrics). */
void http_reply_metrics(struct http_req *r, struct metrics *m);

/*
 * Replies {"error":{"code":code,"message":<formatted>}} with status; code
 * NULL means http_status_code_name(status). For 503 a Retry-After header
 * is added (1 second).
 */
void http_reply_error(struct http_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The standard error code for a status: 400 "invalid_argument", 401
 * "unauthenticated", 403 "permission_denied", 404 "not_found", 405
 * "method_not_allowed", 409 "conflict", 412 "failed_precondition", 413
 * "too_large", 408 "timeout", 429 "rate_limited", 431 "too_large", 501 and 505
 * "not_implemented", 503 "unavailable", else "internal". */
const char *http_status_code_name(int status);

/* ---- pure helpers (unit tested without a server) ---- */

/*
 * Matches path against pattern; on success fills the (name, value) pairs of
 * its {name} parameters into names/values (both NUL-terminated copies in
 * valbuf) and returns their count, else -1: no match, more parameters than
 * maxp, or valbuf too small (strlen(pattern) + strlen(path) + 2 * maxp is
 * always enough). Exposed for tests.
 */
int http_match_pattern(const char *pattern, const char *path, const char **names,
                       const char **values, int maxp, char *valbuf, size_t valbuflen);

/* Extracts the token from an Authorization header value: "Bearer" in any
 * case, one or more spaces, then a non-empty token without spaces or
 * control bytes. Returns a pointer into authorization, or NULL. */
const char *http_parse_bearer(const char *authorization);

#endif
