/*
 * http: the HTTP server scaffolding of the daemons, on libevent's evhttp.
 *
 * Threading: a daemon opens one listening socket per worker thread with
 * http_listen() (SO_REUSEPORT, so the kernel spreads connections over the
 * threads; one shared socket would starve some of them) and creates one
 * http_server per thread on that thread's event_base. Nothing in an
 * http_server is shared with another thread except the metrics registry.
 *
 * Limits: every server has a body cap, a header cap and a timeout (evhttp
 * has none by default). A request over a cap gets 413 with a JSON error.
 *
 * Routing: a table of (method, pattern, handler). Patterns are literal
 * segments and {name} parameters: "/v1/notices/{id}/publish". An unknown
 * path gets 404, a known path with another method 405, both as JSON errors.
 *
 * A request's life: the handler gets a struct http_req and must finish it
 * exactly once with one of the http_reply*() functions, either before it
 * returns or later from a callback on the same thread (async database and
 * Redis work). Replying frees the http_req; it must not be used afterwards.
 * Every request has a short id (`req=` in log lines, X-Request-Id header).
 */
#ifndef MBOX_HTTP_H
#define MBOX_HTTP_H

#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

struct event_base;
struct evhttp_request;
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
};

typedef void (*http_handler_fn)(struct http_req *req, void *ctx);

struct http_route {
    unsigned methods; /* enum http_method bits */
    const char *pattern;
    http_handler_fn fn;
};

struct http_limits {
    size_t max_body;    /* bytes; larger bodies get 413 */
    size_t max_headers; /* bytes of all header lines; larger get 413 (or 400 from evhttp) */
    int timeout_s;      /* read/write timeout of a connection */
};

/*
 * Opens a non-blocking listening socket on host:port with SO_REUSEADDR and
 * SO_REUSEPORT. Returns the fd, or -1 with a message in err.
 */
int http_listen(const char *host, int port, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/*
 * Creates a server on base accepting on fd (which it takes ownership of).
 * name labels its metrics ("sdk", "internal", "admin"). routes must stay
 * valid for the server's life; ctx is passed to every handler.
 * Returns NULL with a message in err.
 */
struct http_server *http_server_new(struct event_base *base, int fd, const char *name,
                                    const struct http_route *routes, size_t nroutes,
                                    const struct http_limits *limits, void *ctx,
                                    struct metrics *metrics, char *err, size_t errlen);

/* Stops accepting and frees the server. Requests still pending are dropped. */
void http_server_free(struct http_server *s);

/* ---- request accessors (valid until the reply) ---- */

enum http_method http_req_method(const struct http_req *r);
const char *http_req_path(const struct http_req *r); /* decoded path, no query */
const char *http_req_id(const struct http_req *r);
struct event_base *http_req_base(const struct http_req *r);

/* A {name} path parameter, or NULL. */
const char *http_req_param(const struct http_req *r, const char *name);

/* A query-string parameter (decoded), or NULL. */
const char *http_req_query(const struct http_req *r, const char *name);

/* A request header (case-insensitive name), or NULL. */
const char *http_req_header(const struct http_req *r, const char *name);

/* The token of "Authorization: Bearer <token>", or NULL when absent/malformed. */
const char *http_req_bearer(const struct http_req *r);

/* The body, contiguous, NUL-terminated (the NUL is not counted in *len). */
const unsigned char *http_req_body(struct http_req *r, size_t *len);

/* Caller data attached to the request (handlers' per-request state). */
void http_req_set_data(struct http_req *r, void *data);
void *http_req_data(const struct http_req *r);

/* ---- replies: exactly one per request; each frees r ---- */

/* Adds a response header (before the reply). */
void http_req_add_header(struct http_req *r, const char *name, const char *value);

void http_reply(struct http_req *r, int status, const char *content_type, const void *body,
                size_t len);

/* Serializes body as compact JSON and steals the reference. */
void http_reply_json(struct http_req *r, int status, json_t *body);

/*
 * Replies {"error":{"code":code,"message":<formatted>}} with status.
 * For 503 a Retry-After header is added (1 second).
 */
void http_reply_error(struct http_req *r, int status, const char *code, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* The standard error code for a status: 400 "invalid_argument", 401
 * "unauthenticated", 403 "permission_denied", 404 "not_found", 405
 * "method_not_allowed", 409 "conflict", 412 "failed_precondition", 413
 * "too_large", 429 "rate_limited", 503 "unavailable", else "internal". */
const char *http_status_code_name(int status);

/* ---- pure helpers (unit tested without a server) ---- */

/*
 * Matches path against pattern; on success fills up to maxp (name, value)
 * pairs into names/values (values point into valbuf) and returns the count,
 * else -1. Exposed for tests.
 */
int http_match_pattern(const char *pattern, const char *path, const char **names,
                       const char **values, int maxp, char *valbuf, size_t valbuflen);

/* Extracts the token from an Authorization header value, or NULL. */
const char *http_parse_bearer(const char *authorization);

#endif
