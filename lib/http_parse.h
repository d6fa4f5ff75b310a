/*
 * http_parse: the HTTP/1.1 request parser of lib/http's server (RFC 9112),
 * pure functions over a byte buffer, fuzzed by tests/fuzz/fuzz_http_parse.c.
 *
 * Two pieces:
 *   - http_parse_head() reads a request line and its header fields, up to
 *     and including the empty line, and extracts what framing and
 *     connection management need (Content-Length, Transfer-Encoding,
 *     Connection, Expect, Host).
 *   - http_chunked_decode() decodes a chunked body in place, incrementally,
 *     as bytes arrive.
 *
 * Both are strict where leniency lets two parsers disagree about where a
 * request ends (request smuggling): obsolete line folding, a space before
 * the colon, a bare CR, a malformed or conflicting Content-Length, any
 * transfer coding but "chunked", or Transfer-Encoding together with
 * Content-Length are all errors. A bare LF ends a line, as RFC 9112 allows.
 * Errors are returned as negative HTTP statuses so that the caller can
 * answer with them directly.
 */
#ifndef MBOX_HTTP_PARSE_H
#define MBOX_HTTP_PARSE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

/* Most header fields in one request; more gets -431. */
#define HTTP_MAX_FIELDS 64

/* Request methods the server knows (the same bits as enum http_method). */
enum http_parse_method {
    HTTP_PARSE_GET = 1 << 0,
    HTTP_PARSE_POST = 1 << 1,
    HTTP_PARSE_PUT = 1 << 2,
    HTTP_PARSE_PATCH = 1 << 3,
    HTTP_PARSE_DELETE = 1 << 4,
    HTTP_PARSE_HEAD = 1 << 5,
    HTTP_PARSE_OPTIONS = 1 << 6,
};

/* Pointers into the parsed buffer; values are without surrounding spaces. */
struct http_field {
    const char *name;
    size_t name_len;
    const char *value;
    size_t value_len;
};

struct http_head {
    unsigned method; /* one enum http_parse_method bit, 0 for any other token */
    const char *method_str;
    size_t method_len;
    /* The request target as sent (origin-form "/p?q" or absolute-form). */
    const char *target;
    size_t target_len;
    /* The path and query of the target: for absolute-form the part after the
     * authority ("/" when there is none, pointing at the last '/' of "://":
     * every pointer of the head lies in the parsed buffer). query is NULL
     * without a '?'. */
    const char *path;
    size_t path_len;
    const char *query;
    size_t query_len;
    int minor; /* HTTP/1.<minor>, 0 or 1 */

    size_t nfields;
    struct http_field fields[HTTP_MAX_FIELDS];

    int64_t content_length; /* -1 when absent */
    bool chunked;           /* Transfer-Encoding: chunked */
    bool keep_alive;        /* the connection persists ("close" always wins) */
    bool expect_continue;   /* Expect: 100-continue, in HTTP/1.1 (1.0 ignores it) */
};

/*
 * Parses the request head at the start of buf[0, len). Up to 8 empty lines
 * before the request line are skipped. The head (through its empty line)
 * may be at most max_head bytes.
 *
 * Returns the length of the head when it is complete and valid, 0 when more
 * bytes are needed, or a negated status:
 *   -400  malformed (request line, field syntax, framing fields, missing
 *         Host in HTTP/1.1);
 *   -431  the head is longer than max_head, or has more than
 *         HTTP_MAX_FIELDS fields;
 *   -501  a transfer coding other than "chunked";
 *   -505  an HTTP version other than 1.0 and 1.1.
 * An unknown method token is not an error here: method is 0 and the caller
 * decides (the server answers 501).
 */
ssize_t http_parse_head(const char *buf, size_t len, size_t max_head, struct http_head *h);

/* The first field named name (case-insensitive), or NULL. */
const struct http_field *http_head_field(const struct http_head *h, const char *name);

/*
 * Incremental in-place decoder of a chunked body. The buffer passed to each
 * call holds, in order, the body decoded so far (st->decoded bytes) and the
 * raw bytes received after it. A call decodes as much as it can, moving
 * chunk data down over the framing, so that afterwards buf still holds the
 * decoded body followed by the raw bytes not yet consumed, and *len is
 * their new total.
 *
 * *st is zeroed before the first call of each body.
 *
 * Returns 1 when the body is complete (the last chunk and the trailer
 * section are consumed): the body is buf[0, st->decoded), buf[st->decoded,
 * st->end) is framing to skip, and the bytes after the message,
 * buf[st->end, *len), are left where they were (*len unchanged), so that
 * requests pipelined behind a chunked one are never moved. Returns 0 when
 * more bytes are needed, -400 on malformed framing (also a
 * chunk-size line or trailer section longer than 4096 bytes), -413 when the
 * body would exceed max_body. Trailer fields are checked and dropped.
 */
struct http_chunked {
    int state;
    uint64_t left; /* bytes of the current chunk still to come */
    size_t decoded;
    size_t trailer_bytes;
    size_t end;   /* once complete: where the message's raw bytes end in buf */
    size_t moved; /* bytes moved so far (chunk data over framing, line tails) */
};

int http_chunked_decode(struct http_chunked *st, unsigned char *buf, size_t *len, size_t max_body);

/*
 * Percent-decodes s[0, len) into out (which may be s itself: the result is
 * never longer). plus_space turns '+' into a space (query strings).
 * Malformed escapes are kept as they are. Returns the decoded length, or
 * -1 when the result would contain a NUL byte. out is NUL-terminated, so
 * it needs len + 1 bytes.
 */
ssize_t http_percent_decode(const char *s, size_t len, char *out, bool plus_space);

/* The reason phrase of a status ("Not Found"); a generic one for statuses
 * not listed. Shared by lib/http and lib/ws's handshake errors. */
const char *http_reason_phrase(int status);

#endif
