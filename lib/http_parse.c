/*
 * http_parse: request heads and chunked bodies (see http_parse.h).
 */
#include "http_parse.h"

#include <string.h>
#include <strings.h>

/* Longest chunk-size line (with extensions) and trailer section. */
#define CHUNK_LINE_MAX 4096
#define TRAILER_MAX    4096

/* Empty lines tolerated before a request line (RFC 9112 section 2.2). */
#define LEADING_EMPTY_MAX 8

/* tchar of RFC 9110 section 5.6.2: the bytes of a token. */
static const unsigned char tchar[256] = {
    ['!'] = 1, ['#'] = 1, ['$'] = 1, ['%'] = 1, ['&'] = 1, ['\''] = 1, ['*'] = 1, ['+'] = 1,
    ['-'] = 1, ['.'] = 1, ['^'] = 1, ['_'] = 1, ['`'] = 1, ['|'] = 1,  ['~'] = 1, ['0'] = 1,
    ['1'] = 1, ['2'] = 1, ['3'] = 1, ['4'] = 1, ['5'] = 1, ['6'] = 1,  ['7'] = 1, ['8'] = 1,
    ['9'] = 1, ['A'] = 1, ['B'] = 1, ['C'] = 1, ['D'] = 1, ['E'] = 1,  ['F'] = 1, ['G'] = 1,
    ['H'] = 1, ['I'] = 1, ['J'] = 1, ['K'] = 1, ['L'] = 1, ['M'] = 1,  ['N'] = 1, ['O'] = 1,
    ['P'] = 1, ['Q'] = 1, ['R'] = 1, ['S'] = 1, ['T'] = 1, ['U'] = 1,  ['V'] = 1, ['W'] = 1,
    ['X'] = 1, ['Y'] = 1, ['Z'] = 1, ['a'] = 1, ['b'] = 1, ['c'] = 1,  ['d'] = 1, ['e'] = 1,
    ['f'] = 1, ['g'] = 1, ['h'] = 1, ['i'] = 1, ['j'] = 1, ['k'] = 1,  ['l'] = 1, ['m'] = 1,
    ['n'] = 1, ['o'] = 1, ['p'] = 1, ['q'] = 1, ['r'] = 1, ['s'] = 1,  ['t'] = 1, ['u'] = 1,
    ['v'] = 1, ['w'] = 1, ['x'] = 1, ['y'] = 1, ['z'] = 1,
};

/* A field-value byte: VCHAR, obs-text, SP or HTAB. */
static bool
value_byte(unsigned char c)
{
    return c == '\t' || (c >= ' ' && c != 0x7f);
}

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

static bool
span_ieq(const char *s, size_t len, const char *lit)
{
    return strlen(lit) == len && strncasecmp(s, lit, len) == 0;
}

/*
 * The end of the line starting at p (the byte after its LF), or NULL when
 * no LF before end. *content_end is where the line's content stops (at the
 * CR of a CRLF or at a bare LF). A CR anywhere else makes the line invalid:
 * *bad is set.
 */
static const char *
line_end(const char *p, const char *end, const char **content_end, bool *bad)
{
    const char *lf = memchr(p, '\n', (size_t)(end - p));
    if (lf == NULL)
        return NULL;
    const char *ce = lf > p && lf[-1] == '\r' ? lf - 1 : lf;
    *bad = memchr(p, '\r', (size_t)(ce - p)) != NULL;
    *content_end = ce;
    return lf + 1;
}

static unsigned
method_bit(const char *s, size_t len)
{
    static const struct {
        const char *name;
        unsigned bit;
    } known[] = {
        {"GET", HTTP_PARSE_GET},         {"POST", HTTP_PARSE_POST},     {"PUT", HTTP_PARSE_PUT},
        {"PATCH", HTTP_PARSE_PATCH},     {"DELETE", HTTP_PARSE_DELETE}, {"HEAD", HTTP_PARSE_HEAD},
        {"OPTIONS", HTTP_PARSE_OPTIONS},
    };
    for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++) {
        if (strlen(known[i].name) == len && memcmp(known[i].name, s, len) == 0)
            return known[i].bit; /* methods are case-sensitive */
    }
    return 0;
}

/* Splits the target into path and query; false when it is not a target we serve. */
static bool
split_target(struct http_head *h)
{
    const char *t = h->target, *end = t + h->target_len;
    const char *path = t;
    size_t skip = 0;
    if (t[0] != '/') {
        /* absolute-form: scheme "://" authority [path] */
        if (h->target_len >= 7 && strncasecmp(t, "http://", 7) == 0)
            skip = 7;
        else if (h->target_len >= 8 && strncasecmp(t, "https://", 8) == 0)
            skip = 8;
        else
            return false;
        const char *a = t + skip;
        path = a;
        while (path < end && *path != '/' && *path != '?')
            path++;
        if (path == a)
            return false;
    }
    const char *q = memchr(path, '?', (size_t)(end - path));
    const char *pend = q != NULL ? q : end;
    if (pend == path || path[0] != '/') {
        /* "http://host" or "http://host?q" (never origin-form, whose path
         * starts with '/'): the path is "/", pointed at in the "://" so that
         * every pointer of the head lies in the buffer (a caller may move
         * the buffer and rebase them) */
        h->path = t + skip - 1;
        h->path_len = 1;
    } else {
        h->path = path;
        h->path_len = (size_t)(pend - path);
    }
    h->query = q != NULL ? q + 1 : NULL;
    h->query_len = q != NULL ? (size_t)(end - q - 1) : 0;
    return true;
}

/* Parses "METHOD SP target SP HTTP/1.x" in [p, e). Returns 0 or a negated status. */
static int
parse_request_line(const char *p, const char *e, struct http_head *h)
{
    const char *m = p;
    while (p < e && tchar[(unsigned char)*p])
        p++;
    if (p == m || p == e || *p != ' ')
        return -400;
    h->method_str = m;
    h->method_len = (size_t)(p - m);
    h->method = method_bit(m, h->method_len);
    p++;
    const char *t = p;
    while (p < e && (unsigned char)*p > ' ' && (unsigned char)*p < 0x7f)
        p++;
    if (p == t || p == e || *p != ' ')
        return -400;
    h->target = t;
    h->target_len = (size_t)(p - t);
    p++;
    /* HTTP-version = "HTTP" "/" DIGIT "." DIGIT */
    if (e - p != 8 || memcmp(p, "HTTP/", 5) != 0 || p[5] < '0' || p[5] > '9' || p[6] != '.' ||
        p[7] < '0' || p[7] > '9')
        return -400;
    if (p[5] != '1' || (p[7] != '0' && p[7] != '1'))
        return -505;
    h->minor = p[7] - '0';
    if (!split_target(h))
        return -400;
    return 0;
}

/* Content-Length: 1*DIGIT, at most 18 digits (no overflow of int64_t). */
static bool
parse_content_length(const char *v, size_t len, int64_t *out)
{
    if (len == 0 || len > 18)
        return false;
    int64_t n = 0;
    for (size_t i = 0; i < len; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        n = n * 10 + (v[i] - '0');
    }
    *out = n;
    return true;
}

/*
 * Notes the "close" and "keep-alive" options of a comma-separated
 * Connection list. The caller decides keep_alive once all fields are read:
 * "close" wins wherever it appears (RFC 9112 section 9.3).
 */
static void
parse_connection(const char *v, size_t len, bool *saw_close, bool *saw_keep_alive)
{
    const char *end = v + len;
    while (v < end) {
        while (v < end && (is_ows(*v) || *v == ','))
            v++;
        const char *t = v;
        while (v < end && *v != ',' && !is_ows(*v))
            v++;
        if (span_ieq(t, (size_t)(v - t), "close"))
            *saw_close = true;
        else if (span_ieq(t, (size_t)(v - t), "keep-alive"))
            *saw_keep_alive = true;
    }
}

ssize_t
http_parse_head(const char *buf, size_t len, size_t max_head, struct http_head *h)
{
    memset(h, 0, sizeof(*h));
    h->content_length = -1;
    size_t avail = len < max_head ? len : max_head;
    const char *p = buf, *end = buf + avail;
    const char *ce;
    bool bad;

    /* Leading empty lines, then the request line. */
    const char *next;
    for (int skipped = 0;; skipped++) {
        next = line_end(p, end, &ce, &bad);
        if (next == NULL)
            return len >= max_head ? -431 : 0;
        if (ce != p || bad)
            break;
        if (skipped == LEADING_EMPTY_MAX)
            return -400;
        p = next;
    }
    if (bad)
        return -400;
    int rc = parse_request_line(p, ce, h);
    if (rc != 0)
        return rc;
    p = next;

    bool have_host = false, have_te = false;
    bool conn_close = false, conn_keep_alive = false;
    for (;;) {
        next = line_end(p, end, &ce, &bad);
        if (next == NULL)
            return len >= max_head ? -431 : 0;
        if (bad)
            return -400;
        if (ce == p)
            break; /* the empty line: end of the head */
        /* name ":" OWS value OWS; no obs-fold, no space before the colon */
        const char *n = p;
        while (p < ce && tchar[(unsigned char)*p])
            p++;
        if (p == n || p == ce || *p != ':')
            return -400;
        size_t nlen = (size_t)(p - n);
        p++;
        while (p < ce && is_ows(*p))
            p++;
        const char *v = p, *ve = ce;
        while (ve > v && is_ows(ve[-1]))
            ve--;
        for (const char *c = v; c < ve; c++) {
            if (!value_byte((unsigned char)*c))
                return -400;
        }
        if (h->nfields == HTTP_MAX_FIELDS)
            return -431;
        struct http_field *f = &h->fields[h->nfields++];
        f->name = n;
        f->name_len = nlen;
        f->value = v;
        f->value_len = (size_t)(ve - v);

        if (span_ieq(n, nlen, "content-length")) {
            int64_t cl;
            if (!parse_content_length(v, f->value_len, &cl) ||
                (h->content_length >= 0 && h->content_length != cl))
                return -400;
            h->content_length = cl;
        } else if (span_ieq(n, nlen, "transfer-encoding")) {
            if (have_te || !span_ieq(v, f->value_len, "chunked"))
                return have_te ? -400 : -501;
            have_te = true;
            h->chunked = true;
        } else if (span_ieq(n, nlen, "connection")) {
            parse_connection(v, f->value_len, &conn_close, &conn_keep_alive);
        } else if (span_ieq(n, nlen, "expect")) {
            /* an HTTP/1.0 client does not wait for 100 (RFC 9110 section 10.1.1) */
            if (h->minor == 1 && span_ieq(v, f->value_len, "100-continue"))
                h->expect_continue = true;
        } else if (span_ieq(n, nlen, "host")) {
            if (have_host)
                return -400;
            have_host = true;
        }
        p = next;
    }
    if (h->chunked && (h->content_length >= 0 || h->minor == 0))
        return -400;
    if (h->minor == 1 && !have_host)
        return -400;
    h->keep_alive = !conn_close && (h->minor == 1 || conn_keep_alive);
    return next - buf;
}

const struct http_field *
http_head_field(const struct http_head *h, const char *name)
{
    size_t nlen = strlen(name);
    for (size_t i = 0; i < h->nfields; i++) {
        if (h->fields[i].name_len == nlen && strncasecmp(h->fields[i].name, name, nlen) == 0)
            return &h->fields[i];
    }
    return NULL;
}

/* ---- chunked bodies ---- */

enum {
    CH_SIZE = 0, /* at a chunk-size line */
    CH_DATA,     /* inside chunk data (left bytes to go) */
    CH_DATA_END, /* at the CRLF after chunk data */
    CH_TRAILER,  /* in the trailer section */
    CH_DONE,
};

static int
hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c |= 0x20;
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* chunk-size [ chunk-ext ]: hex digits, then nothing or OWS ";" ... */
static bool
parse_chunk_size(const char *p, const char *e, uint64_t *out)
{
    uint64_t n = 0;
    const char *d = p;
    for (; p < e && hexval((unsigned char)*p) >= 0; p++) {
        if (n >> 60)
            return false;
        n = n << 4 | (uint64_t)hexval((unsigned char)*p);
    }
    if (p == d)
        return false;
    while (p < e && is_ows(*p))
        p++;
    if (p < e && *p != ';')
        return false;
    for (; p < e; p++) {
        if (!value_byte((unsigned char)*p))
            return false;
    }
    *out = n;
    return true;
}

int
http_chunked_decode(struct http_chunked *st, unsigned char *buf, size_t *len, size_t max_body)
{
    size_t w = st->decoded; /* write position */
    size_t r = st->decoded; /* read position */
    size_t n = *len;
    int rc = 0;
    bool was_done = st->state == CH_DONE;
    while (rc == 0 && st->state != CH_DONE) {
        const char *p = (const char *)buf + r, *e = (const char *)buf + n;
        if (st->state == CH_DATA) {
            size_t take = n - r;
            if (take == 0)
                break;
            if (take > st->left)
                take = (size_t)st->left;
            if (r != w) {
                memmove(buf + w, buf + r, take);
                st->moved += take;
            }
            w += take;
            r += take;
            st->left -= take;
            if (st->left == 0)
                st->state = CH_DATA_END;
            continue;
        }
        if (st->state == CH_DATA_END) {
            /* exactly CRLF (or a bare LF) after chunk data: anything else is
             * an error now, not after the next LF */
            if (r == n || (buf[r] == '\r' && r + 1 == n))
                break;
            size_t crlf = buf[r] == '\n' ? 1 : buf[r] == '\r' && buf[r + 1] == '\n' ? 2 : 0;
            if (crlf == 0) {
                rc = -400;
                break;
            }
            r += crlf;
            st->state = CH_SIZE;
            continue;
        }
        const char *ce;
        bool bad;
        const char *next = line_end(p, e, &ce, &bad);
        if (next == NULL) {
            size_t pending = n - r;
            size_t cap = st->state == CH_TRAILER ? TRAILER_MAX - st->trailer_bytes : CHUNK_LINE_MAX;
            if (pending > cap || st->trailer_bytes > TRAILER_MAX)
                rc = -400;
            break;
        }
        size_t llen = (size_t)(next - p);
        if (bad) {
            rc = -400;
            break;
        }
        switch (st->state) {
        case CH_SIZE: {
            uint64_t size;
            if (llen > CHUNK_LINE_MAX || !parse_chunk_size(p, ce, &size)) {
                rc = -400;
                break;
            }
            if (size > max_body || w > max_body - size) {
                rc = -413;
                break;
            }
            st->left = size;
            st->state = size == 0 ? CH_TRAILER : CH_DATA;
            break;
        }
        case CH_TRAILER:
            st->trailer_bytes += llen;
            if (st->trailer_bytes > TRAILER_MAX) {
                rc = -400;
                break;
            }
            if (ce == p) {
                st->state = CH_DONE;
                break;
            }
            /* a field line: name ":" value, checked like a header field */
            {
                const char *q = p;
                while (q < ce && tchar[(unsigned char)*q])
                    q++;
                if (q == p || q == ce || *q != ':') {
                    rc = -400;
                    break;
                }
                for (q++; q < ce; q++) {
                    if (!value_byte((unsigned char)*q)) {
                        rc = -400;
                        break;
                    }
                }
            }
            break;
        }
        if (rc == 0)
            r += llen;
    }
    if (st->state == CH_DONE) {
        /* What follows the message stays put (a pipelined request). */
        if (!was_done)
            st->end = r;
    } else if (r > w) {
        /* Compact: decoded body, then the raw bytes not consumed (a part
         * of a chunk-size or trailer line at most). */
        memmove(buf + w, buf + r, n - r);
        st->moved += n - r;
        n -= r - w;
    }
    st->decoded = w;
    *len = n;
    if (rc != 0)
        return rc;
    return st->state == CH_DONE ? 1 : 0;
}

/* ---- percent-decoding ---- */

ssize_t
http_percent_decode(const char *s, size_t len, char *out, bool plus_space)
{
    size_t o = 0;
    for (size_t i = 0; i < len; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < len && hexval((unsigned char)s[i + 1]) >= 0 &&
            hexval((unsigned char)s[i + 2]) >= 0) {
            c = (char)(hexval((unsigned char)s[i + 1]) << 4 | hexval((unsigned char)s[i + 2]));
            i += 2;
        } else if (c == '+' && plus_space) {
            c = ' ';
        }
        if (c == '\0')
            return -1;
        out[o++] = c;
    }
    out[o] = '\0';
    return (ssize_t)o;
}

/* ---- replies ---- */

const char *
http_reason_phrase(int status)
{
    switch (status) {
    case 100:
        return "Continue";
    case 200:
        return "OK";
    case 201:
        return "Created";
    case 202:
        return "Accepted";
    case 204:
        return "No Content";
    case 304:
        return "Not Modified";
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 408:
        return "Request Timeout";
    case 409:
        return "Conflict";
    case 412:
        return "Precondition Failed";
    case 413:
        return "Content Too Large";
    case 415:
        return "Unsupported Media Type";
    case 422:
        return "Unprocessable Content";
    case 426:
        return "Upgrade Required";
    case 429:
        return "Too Many Requests";
    case 431:
        return "Request Header Fields Too Large";
    case 500:
        return "Internal Server Error";
    case 501:
        return "Not Implemented";
    case 503:
        return "Service Unavailable";
    case 505:
        return "HTTP Version Not Supported";
    default:
        return status < 300 ? "OK" : status < 500 ? "Client Error" : "Server Error";
    }
}
