/*
 * test_http_parse: Check suite for lib/http_parse (request heads, chunked
 * bodies, percent-decoding) against RFC 9112 / RFC 9110 and the contract
 * in http_parse.h.
 *
 * Every input is copied into an allocation of exactly its length, so the
 * sanitizer build catches a read past the end of the bytes received.
 */
#include "http_parse.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* The exact-size copy of the last input given to parse_n(); pointers of the
 * parsed head point into it until the next call. */
static char *g_buf;

static void
teardown(void)
{
    free(g_buf);
    g_buf = NULL;
}

/* Parses s[0, n) from an exact-size copy. */
static ssize_t
parse_n(const char *s, size_t n, size_t max_head, struct http_head *h)
{
    free(g_buf);
    g_buf = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(g_buf);
    memcpy(g_buf, s, n);
    return http_parse_head(g_buf, n, max_head, h);
}

static ssize_t
parse(const char *s, struct http_head *h)
{
    return parse_n(s, strlen(s), 8192, h);
}

/* The return code of parsing s (for error cases). */
static ssize_t
parse_rc(const char *s)
{
    struct http_head h;
    return parse(s, &h);
}

#define ck_span(ptr, len, lit)                                                                     \
    do {                                                                                           \
        ck_assert_ptr_nonnull(ptr);                                                                \
        ck_assert_uint_eq((len), strlen(lit));                                                     \
        ck_assert(memcmp((ptr), (lit), strlen(lit)) == 0);                                         \
    } while (0)

/* Asserts that every pointer of h lies in the head g_buf[0, hlen). */
static void
check_inside(const struct http_head *h, size_t hlen)
{
    const char *b = g_buf, *e = g_buf + hlen;
    ck_assert(h->method_str >= b && h->method_str + h->method_len <= e);
    ck_assert(h->target >= b && h->target + h->target_len <= e);
    ck_assert(h->path >= b && h->path + h->path_len <= e);
    ck_assert(h->path_len >= 1 && h->path[0] == '/');
    if (h->query != NULL)
        ck_assert(h->query >= b && h->query + h->query_len <= e);
    else
        ck_assert_uint_eq(h->query_len, 0);
    ck_assert_uint_le(h->nfields, HTTP_MAX_FIELDS);
    for (size_t i = 0; i < h->nfields; i++) {
        const struct http_field *f = &h->fields[i];
        ck_assert(f->name >= b && f->name + f->name_len <= e);
        ck_assert(f->value >= b && f->value + f->value_len <= e);
    }
}

/* ---- valid heads ---- */

START_TEST(test_get_origin_form)
{
    const char *s = "GET /v1/sync?cursor=abc&limit=10 HTTP/1.1\r\n"
                    "Host: mbox.example\r\n"
                    "User-Agent: sdk/1.0\r\n"
                    "\r\n";
    struct http_head h;
    ck_assert_int_eq(parse(s, &h), (ssize_t)strlen(s));
    ck_assert_uint_eq(h.method, HTTP_PARSE_GET);
    ck_span(h.method_str, h.method_len, "GET");
    ck_span(h.target, h.target_len, "/v1/sync?cursor=abc&limit=10");
    ck_span(h.path, h.path_len, "/v1/sync");
    ck_span(h.query, h.query_len, "cursor=abc&limit=10");
    ck_assert_int_eq(h.minor, 1);
    ck_assert_uint_eq(h.nfields, 2);
    ck_span(h.fields[0].name, h.fields[0].name_len, "Host");
    ck_span(h.fields[0].value, h.fields[0].value_len, "mbox.example");
    ck_span(h.fields[1].name, h.fields[1].name_len, "User-Agent");
    ck_span(h.fields[1].value, h.fields[1].value_len, "sdk/1.0");
    ck_assert_int_eq(h.content_length, -1);
    ck_assert(!h.chunked);
    ck_assert(h.keep_alive);
    ck_assert(!h.expect_continue);
    check_inside(&h, strlen(s));
}
END_TEST

START_TEST(test_methods)
{
    static const struct {
        const char *m;
        unsigned bit;
    } v[] = {
        {"GET", HTTP_PARSE_GET},
        {"POST", HTTP_PARSE_POST},
        {"PUT", HTTP_PARSE_PUT},
        {"PATCH", HTTP_PARSE_PATCH},
        {"DELETE", HTTP_PARSE_DELETE},
        {"HEAD", HTTP_PARSE_HEAD},
        /* unknown tokens: not an error, method 0 (the server answers 501) */
        {"OPTIONS", HTTP_PARSE_OPTIONS},
        {"BREW", 0},
        {"get", 0}, /* methods are case-sensitive */
        {"GETS", 0},
        {"M-SEARCH", 0},
        {"X!#$%&'*+-.^_`|~9", 0},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char req[256];
        snprintf(req, sizeof(req), "%s /x HTTP/1.1\r\nHost: a\r\n\r\n", v[i].m);
        struct http_head h;
        ck_assert_msg(parse(req, &h) == (ssize_t)strlen(req), "%s", v[i].m);
        ck_assert_uint_eq(h.method, v[i].bit);
        ck_span(h.method_str, h.method_len, v[i].m);
        ck_span(h.path, h.path_len, "/x");
    }
}
END_TEST

START_TEST(test_query_forms)
{
    static const struct {
        const char *target, *path, *query; /* query NULL: absent */
    } v[] = {
        {"/p", "/p", NULL},
        {"/p?", "/p", ""},
        {"/p?a=1", "/p", "a=1"},
        {"/?x", "/", "x"},
        {"/", "/", NULL},
        {"/a/b?c?d=e", "/a/b", "c?d=e"},
        {"/a%20b?q=%41+b", "/a%20b", "q=%41+b"},
        {"//double", "//double", NULL},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char req[256];
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", v[i].target);
        struct http_head h;
        ck_assert_msg(parse(req, &h) == (ssize_t)strlen(req), "%s", v[i].target);
        ck_span(h.target, h.target_len, v[i].target);
        ck_span(h.path, h.path_len, v[i].path);
        if (v[i].query == NULL) {
            ck_assert_ptr_null(h.query);
            ck_assert_uint_eq(h.query_len, 0);
        } else {
            ck_span(h.query, h.query_len, v[i].query);
        }
        check_inside(&h, strlen(req));
    }
}
END_TEST

START_TEST(test_absolute_form)
{
    static const struct {
        const char *target, *path, *query;
    } v[] = {
        {"http://example.com/v1/x?y=1", "/v1/x", "y=1"},
        {"http://host", "/", NULL},
        {"http://host/", "/", NULL},
        {"http://host?q", "/", "q"},
        {"https://host:8443?q=1", "/", "q=1"},
        {"https://host:8443/a/b", "/a/b", NULL},
        {"HTTP://Host/a", "/a", NULL},
        {"HtTpS://h/", "/", NULL},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char req[256];
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", v[i].target);
        struct http_head h;
        ck_assert_msg(parse(req, &h) == (ssize_t)strlen(req), "%s", v[i].target);
        ck_span(h.target, h.target_len, v[i].target);
        ck_span(h.path, h.path_len, v[i].path);
        if (v[i].query == NULL)
            ck_assert_ptr_null(h.query);
        else
            ck_span(h.query, h.query_len, v[i].query);
        /* also "http://host" -> "/": the pointer is into the buffer */
        check_inside(&h, strlen(req));
    }
}
END_TEST

START_TEST(test_keep_alive)
{
    static const struct {
        const char *req;
        bool keep_alive;
    } v[] = {
        {"GET / HTTP/1.1\r\nHost: a\r\n\r\n", true},
        {"GET / HTTP/1.0\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: Keep-Alive\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: CLOSE\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: upgrade, close\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: foo ,bar,\tClose ,\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: closed, xclose, close-ish\r\n\r\n", true},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection:\r\n\r\n", true},
        {"GET / HTTP/1.0\r\nConnection: upgrade,keep-alive\r\n\r\n", true},
        /* "close" wins wherever it appears (RFC 9112 section 9.3) */
        {"GET / HTTP/1.0\r\nConnection: keep-alive, close\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: close, keep-alive\r\n\r\n", false},
        {"GET / HTTP/1.0\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: close\r\nConnection: keep-alive\r\n\r\n", false},
        {"GET / HTTP/1.1\r\nHost: a\r\nConnection: keep-alive\r\nconnection: close\r\n\r\n", false},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct http_head h;
        ck_assert_msg(parse(v[i].req, &h) == (ssize_t)strlen(v[i].req), "%zu", i);
        ck_assert_msg(h.keep_alive == v[i].keep_alive, "case %zu: %s", i, v[i].req);
    }
}
END_TEST

START_TEST(test_expect_continue)
{
    static const struct {
        const char *req;
        bool expect;
    } v[] = {
        {"POST / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", true},
        {"POST / HTTP/1.1\r\nHost: a\r\nexpect:  100-Continue \r\nContent-Length: 3\r\n\r\n", true},
        {"POST / HTTP/1.1\r\nHost: a\r\nExpect: something\r\nContent-Length: 3\r\n\r\n", false},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\n\r\n", false},
        /* an HTTP/1.0 client does not wait for 100 (RFC 9110 section 10.1.1) */
        {"POST / HTTP/1.0\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\n", false},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct http_head h;
        ck_assert_msg(parse(v[i].req, &h) == (ssize_t)strlen(v[i].req), "%zu", i);
        ck_assert_msg(h.expect_continue == v[i].expect, "case %zu", i);
    }
}
END_TEST

START_TEST(test_content_length)
{
    static const struct {
        const char *fields;
        int64_t cl;
    } v[] = {
        {"Content-Length: 42\r\n", 42},
        {"content-length:0\r\n", 0},
        {"Content-Length:\t 000123 \t\r\n", 123},
        {"Content-Length: 999999999999999999\r\n", 999999999999999999LL}, /* 18 digits */
        {"Content-Length: 5\r\nContent-Length: 5\r\n", 5},                /* equal duplicates */
        {"X-Length: 9\r\n", -1},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char req[256];
        snprintf(req, sizeof(req), "POST /m HTTP/1.1\r\nHost: a\r\n%s\r\n", v[i].fields);
        struct http_head h;
        ck_assert_msg(parse(req, &h) == (ssize_t)strlen(req), "%zu", i);
        ck_assert_int_eq(h.content_length, v[i].cl);
        ck_assert(!h.chunked);
    }
}
END_TEST

START_TEST(test_chunked_head)
{
    const char *te[] = {"chunked", "Chunked", "CHUNKED", "  chunked\t "};
    for (size_t i = 0; i < sizeof(te) / sizeof(te[0]); i++) {
        char req[256];
        snprintf(req, sizeof(req), "POST /m HTTP/1.1\r\nHost: a\r\nTransfer-Encoding:%s\r\n\r\n",
                 te[i]);
        struct http_head h;
        ck_assert_msg(parse(req, &h) == (ssize_t)strlen(req), "%s", te[i]);
        ck_assert(h.chunked);
        ck_assert_int_eq(h.content_length, -1);
        ck_assert(h.keep_alive);
    }
}
END_TEST

START_TEST(test_ows_trimming)
{
    const char *s = "GET / HTTP/1.1\r\n"
                    "Host:x\r\n"
                    "X-A: \t value with  inner  spaces \t \r\n"
                    "X-Empty:\r\n"
                    "X-Blank:  \t \r\n"
                    "X-Obs: caf\xc3\xa9 \x80\xff\r\n"
                    "\r\n";
    struct http_head h;
    ck_assert_int_eq(parse(s, &h), (ssize_t)strlen(s));
    ck_assert_uint_eq(h.nfields, 5);
    ck_span(h.fields[0].value, h.fields[0].value_len, "x");
    ck_span(h.fields[1].value, h.fields[1].value_len, "value with  inner  spaces");
    ck_assert_uint_eq(h.fields[2].value_len, 0);
    ck_assert_uint_eq(h.fields[3].value_len, 0);
    ck_span(h.fields[4].value, h.fields[4].value_len, "caf\xc3\xa9 \x80\xff"); /* obs-text */
    check_inside(&h, strlen(s));
}
END_TEST

START_TEST(test_bare_lf)
{
    const char *s = "POST /a?b HTTP/1.1\nHost: a\nContent-Length: 2\n\nhi";
    struct http_head h;
    ck_assert_int_eq(parse(s, &h), (ssize_t)strlen(s) - 2);
    ck_span(h.path, h.path_len, "/a");
    ck_span(h.fields[0].value, h.fields[0].value_len, "a");
    ck_assert_int_eq(h.content_length, 2);

    /* mixed CRLF and LF */
    const char *m = "GET / HTTP/1.1\r\nHost: a\nX: y\r\n\n";
    ck_assert_int_eq(parse(m, &h), (ssize_t)strlen(m));
    ck_assert_uint_eq(h.nfields, 2);
    ck_span(h.fields[1].value, h.fields[1].value_len, "y");
}
END_TEST

START_TEST(test_leading_empty_lines)
{
    char req[256];
    for (int n = 0; n <= 9; n++) {
        size_t o = 0;
        for (int i = 0; i < n; i++)
            o += (size_t)snprintf(req + o, sizeof(req) - o, "%s", i % 2 ? "\n" : "\r\n");
        size_t lead = o;
        snprintf(req + o, sizeof(req) - o, "GET /x HTTP/1.1\r\nHost: a\r\n\r\n");
        struct http_head h;
        ssize_t rc = parse(req, &h);
        if (n <= 8) {
            ck_assert_msg(rc == (ssize_t)strlen(req), "%d empty lines: %zd", n, rc);
            ck_assert_ptr_eq(h.method_str, g_buf + lead);
            ck_span(h.path, h.path_len, "/x");
        } else {
            ck_assert_msg(rc == -400, "%d empty lines: %zd", n, rc);
        }
    }
    /* only empty lines so far: more are needed */
    ck_assert_int_eq(parse_rc("\r\n\r\n\n"), 0);
}
END_TEST

START_TEST(test_field_lookup)
{
    const char *s = "GET / HTTP/1.1\r\n"
                    "Host: a\r\n"
                    "app_version: 3.2.1\r\n"
                    "core_level: 5\r\n"
                    "X-Dup: first\r\n"
                    "x-dup: second\r\n"
                    "\r\n";
    struct http_head h;
    ck_assert_int_eq(parse(s, &h), (ssize_t)strlen(s));
    const struct http_field *f = http_head_field(&h, "app_version");
    ck_assert_ptr_nonnull(f);
    ck_span(f->value, f->value_len, "3.2.1");
    f = http_head_field(&h, "APP_VERSION");
    ck_assert_ptr_nonnull(f);
    ck_span(f->name, f->name_len, "app_version");
    f = http_head_field(&h, "Core_Level");
    ck_assert_ptr_nonnull(f);
    ck_span(f->value, f->value_len, "5");
    f = http_head_field(&h, "x-DUP");
    ck_assert_ptr_nonnull(f);
    ck_span(f->value, f->value_len, "first"); /* the first wins */
    ck_assert_ptr_eq(http_head_field(&h, "host"), &h.fields[0]);
    ck_assert_ptr_null(http_head_field(&h, "app-version"));
    ck_assert_ptr_null(http_head_field(&h, "Hos"));
    ck_assert_ptr_null(http_head_field(&h, "Hostx"));
    ck_assert_ptr_null(http_head_field(&h, ""));
}
END_TEST

START_TEST(test_head_then_body)
{
    /* The return value is the head alone; the body and what follows stay. */
    const char *head = "POST /v1/messages HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\n";
    char req[256];
    snprintf(req, sizeof(req), "%shelloGET / HTTP/1.1\r\n", head);
    struct http_head h;
    ck_assert_int_eq(parse(req, &h), (ssize_t)strlen(head));
    ck_assert_uint_eq(h.method, HTTP_PARSE_POST);
    ck_assert_int_eq(h.content_length, 5);
    /* the bytes after the head do not count against max_head */
    ck_assert_int_eq(parse_n(req, strlen(req), strlen(head), &h), (ssize_t)strlen(head));
}
END_TEST

/* Heads that are valid, for the prefix test. */
static const char *const valid_heads[] = {
    "GET / HTTP/1.1\r\nHost: a\r\n\r\n",
    "GET /v1/sync?cursor=x HTTP/1.1\nHost: a\nX: y\n\n",
    "\r\n\n\r\nPOST /m HTTP/1.0\r\nContent-Length: 10\r\n\r\n",
    "POST http://h:1/p?q HTTP/1.1\r\nHost: h:1\r\nTransfer-Encoding: chunked\r\n"
    "Connection: keep-alive, Upgrade\r\nExpect: 100-continue\r\n\r\n",
    "DELETE /n/1 HTTP/1.1\r\nHost: a\r\napp_version: 1.2\r\ncore_level: 3\r\nX-E:\r\n"
    "X-Sp:   a b   \r\n\r\n",
    "BREW /pot HTTP/1.0\r\n\r\n",
};

START_TEST(test_every_prefix_incomplete)
{
    for (size_t i = 0; i < sizeof(valid_heads) / sizeof(valid_heads[0]); i++) {
        const char *s = valid_heads[i];
        size_t n = strlen(s);
        struct http_head h;
        for (size_t k = 0; k < n; k++)
            ck_assert_msg(parse_n(s, k, 8192, &h) == 0, "head %zu prefix %zu", i, k);
        ck_assert_int_eq(parse_n(s, n, 8192, &h), (ssize_t)n);
        check_inside(&h, n);
        /* max_head exactly the head: still fine, and so are the prefixes */
        for (size_t k = 0; k < n; k++)
            ck_assert_msg(parse_n(s, k, n, &h) == 0, "head %zu prefix %zu", i, k);
        ck_assert_int_eq(parse_n(s, n, n, &h), (ssize_t)n);
    }
}
END_TEST

/* ---- errors ---- */

START_TEST(test_field_syntax_errors)
{
    static const char *const v[] = {
        "GET / HTTP/1.1\r\nHost : a\r\n\r\n",               /* space before colon */
        "GET / HTTP/1.1\r\nHost\t: a\r\n\r\n",              /* tab before colon */
        "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n\r\n",  /* obs-fold (SP) */
        "GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n\tc\r\n\r\n", /* obs-fold (HTAB) */
        "GET / HTTP/1.1\r\n Host: a\r\n\r\n",               /* whitespace after the request line */
        "GET / HTTP/1.1\r\nHost a\r\n\r\n",                 /* no colon */
        "GET / HTTP/1.1\r\n: a\r\nHost: a\r\n\r\n",         /* empty name */
        "GET / HTTP/1.1\r\nHost: a\r\nX(y): b\r\n\r\n",     /* non-token name */
        "GET / HTTP/1.1\r\nHost: a\r\nX/Y: b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\rb\r\n\r\n", /* bare CR in a value */
        "GET / HTTP/1.1\r\nHost: a\r\n\rX: a\r\n\r\n",  /* bare CR starting a line */
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\r\r\n\r\n",  /* CR CR LF */
        "GET / HTTP/1.1\r\nHost: a\r\n\r\r\n",          /* CR CR LF as the empty line */
        ("GET / HTTP/1.1\r\nHost: a\r\nX: a\x01"
         "b\r\n\r\n"), /* CTL in a value */
        "GET / HTTP/1.1\r\nHost: a\r\nX: a\x7f\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX: \x1b[0m\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\x0b\r\n\r\n",
        "GET / HTTP/1.1\r\nHost: a\r\nX\x01: b\r\n\r\n",      /* CTL in a name */
        "GET / HTTP/1.1\r\nHost: a\r\nX-\xc3\xa9: b\r\n\r\n", /* non-ASCII name */
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        ck_assert_msg(parse_rc(v[i]) == -400, "case %zu: %zd", i, parse_rc(v[i]));

    /* a NUL byte in a value (strlen cannot carry it) */
    const char nul[] = "GET / HTTP/1.1\r\nHost: a\r\nX: a\0b\r\n\r\n";
    struct http_head h;
    ck_assert_int_eq(parse_n(nul, sizeof(nul) - 1, 8192, &h), -400);

    /* an error is reported as soon as its line is complete */
    ck_assert_int_eq(parse_rc("GET / HTTP/1.1\r\nBad Header: x\r\n"), -400);
    ck_assert_int_eq(parse_rc("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c\r\n"), -400);
    /* ... but not before: this obs-fold line is not complete yet */
    ck_assert_int_eq(parse_rc("GET / HTTP/1.1\r\nHost: a\r\nX: b\r\n c"), 0);
}
END_TEST

START_TEST(test_request_line_errors)
{
    static const char *const v[] = {
        "GET  / HTTP/1.1\r\nHost: a\r\n\r\n", /* double space */
        "GET /  HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.1 \r\nHost: a\r\n\r\n", /* trailing space */
        " GET / HTTP/1.1\r\nHost: a\r\n\r\n", /* leading space */
        "GET /\r\nHost: a\r\n\r\n",           /* missing version (HTTP/0.9 style) */
        "GET / \r\nHost: a\r\n\r\n",
        "GET HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET\r\nHost: a\r\n\r\n",
        "GET / http/1.1\r\nHost: a\r\n\r\n", /* the version is case-sensitive */
        "GET / Http/1.1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1\r\nHost: a\r\n\r\n",
        "GET / HTTP/1.10\r\nHost: a\r\n\r\n",
        "GET / HTTP/1,1\r\nHost: a\r\n\r\n",
        "GET / HTTP/a.1\r\nHost: a\r\n\r\n",
        "GET\t/\tHTTP/1.1\r\nHost: a\r\n\r\n",
        "G(T / HTTP/1.1\r\nHost: a\r\n\r\n", /* non-token method */
        ("GET /a\x01"
         "b HTTP/1.1\r\nHost: a\r\n\r\n"), /* CTL in the target */
        "GET /a\x7f HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /caf\xc3\xa9 HTTP/1.1\r\nHost: a\r\n\r\n", /* raw non-ASCII target */
        "GET / HTTP/1.1\r\r\nHost: a\r\n\r\n",          /* bare CR in the request line */
        "GET /\r HTTP/1.1\r\nHost: a\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        ck_assert_msg(parse_rc(v[i]) == -400, "case %zu: %zd", i, parse_rc(v[i]));
}
END_TEST

START_TEST(test_target_errors)
{
    static const char *const v[] = {
        "*",        "example.com:443", "ftp://x/",  "http:/x", "http:x", "http://",
        "https://", "http:///x",       "http://?q", "x/y",     "?q",     "httpx://h/",
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char req[256];
        snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: a\r\n\r\n", v[i]);
        ck_assert_msg(parse_rc(req) == -400, "%s: %zd", v[i], parse_rc(req));
    }
}
END_TEST

START_TEST(test_version_errors)
{
    const char *v[] = {"HTTP/2.0", "HTTP/1.2", "HTTP/1.9", "HTTP/0.9", "HTTP/3.0", "HTTP/9.9"};
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char req[256];
        snprintf(req, sizeof(req), "GET / %s\r\nHost: a\r\n\r\n", v[i]);
        ck_assert_msg(parse_rc(req) == -505, "%s: %zd", v[i], parse_rc(req));
    }
    /* known as soon as the request line is complete */
    ck_assert_int_eq(parse_rc("GET / HTTP/2.0\r\n"), -505);
}
END_TEST

START_TEST(test_content_length_errors)
{
    static const char *const v[] = {
        "Content-Length: abc\r\n",
        "Content-Length: +5\r\n",
        "Content-Length: -1\r\n",
        "Content-Length: 5 5\r\n",
        "Content-Length: 1e3\r\n",
        "Content-Length: 0x10\r\n",
        "Content-Length:\r\n",
        "Content-Length: 5;\r\n",
        "Content-Length: 1234567890123456789\r\n",     /* 19 digits */
        "Content-Length: 99999999999999999999999\r\n", /* would overflow */
        "Content-Length: 5\r\nContent-Length: 6\r\n",  /* conflicting */
        "Content-Length: 5\r\ncontent-length: 05x\r\n",
        "Content-Length: 5, 5\r\n", /* a list: strict */
        "Content-Length: 5,5\r\n",
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char req[256];
        snprintf(req, sizeof(req), "POST / HTTP/1.1\r\nHost: a\r\n%s\r\n", v[i]);
        ck_assert_msg(parse_rc(req) == -400, "case %zu: %zd", i, parse_rc(req));
    }
}
END_TEST

START_TEST(test_transfer_encoding_errors)
{
    static const struct {
        const char *req;
        ssize_t rc;
    } v[] = {
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\nContent-Length: 5\r\n\r\n",
         -400},
        {"POST / HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
         -400},
        {"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n", -400},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n"
         "Transfer-Encoding: chunked\r\n\r\n",
         -400},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip\r\n\r\n", -501},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", -501},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, gzip\r\n\r\n", -501},
        {"POST / HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: identity\r\n\r\n", -501},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++)
        ck_assert_msg(parse_rc(v[i].req) == v[i].rc, "case %zu: %zd", i, parse_rc(v[i].req));
}
END_TEST

START_TEST(test_host_errors)
{
    ck_assert_int_eq(parse_rc("GET / HTTP/1.1\r\n\r\n"), -400);
    ck_assert_int_eq(parse_rc("GET / HTTP/1.1\r\nX-Host: a\r\n\r\n"), -400);
    ck_assert_int_eq(parse_rc("GET http://a/ HTTP/1.1\r\n\r\n"), -400);
    ck_assert_int_eq(parse_rc("GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n"), -400);
    ck_assert_int_eq(parse_rc("GET / HTTP/1.1\r\nHost: a\r\nHOST: b\r\n\r\n"), -400);
    ck_assert_int_eq(parse_rc("GET / HTTP/1.0\r\nHost: a\r\nhost: a\r\n\r\n"), -400);
    /* HTTP/1.0 needs no Host; an empty Host is allowed (RFC 9110 section 7.2) */
    const char *ok10 = "GET / HTTP/1.0\r\n\r\n";
    ck_assert_int_eq(parse_rc(ok10), (ssize_t)strlen(ok10));
    const char *empty = "GET / HTTP/1.1\r\nHost:\r\n\r\n";
    ck_assert_int_eq(parse_rc(empty), (ssize_t)strlen(empty));
}
END_TEST

START_TEST(test_too_large)
{
    const char *s = "GET /v1/sync HTTP/1.1\r\nHost: a\r\nX-Pad: 0123456789\r\n\r\n";
    size_t n = strlen(s);
    struct http_head h;
    /* fits exactly */
    ck_assert_int_eq(parse_n(s, n, n, &h), (ssize_t)n);
    /* the terminator is present but one byte out of range */
    ck_assert_int_eq(parse_n(s, n, n - 1, &h), -431);
    /* the terminator out of range, and more bytes after it */
    char big[256];
    snprintf(big, sizeof(big), "%sGET / HTTP/1.1\r\n", s);
    ck_assert_int_eq(parse_n(big, strlen(big), n - 2, &h), -431);
    ck_assert_int_eq(parse_n(big, strlen(big), n, &h), (ssize_t)n);
    /* no terminator yet: 0 below max_head, -431 from max_head on */
    for (size_t k = 0; k < n - 4; k++) {
        ssize_t rc = parse_n(s, k, n - 4, &h);
        ck_assert_msg(rc == 0, "prefix %zu: %zd", k, rc);
    }
    ck_assert_int_eq(parse_n(s, n - 4, n - 4, &h), -431);
    ck_assert_int_eq(parse_n(s, n - 1, n - 4, &h), -431);
    /* max_head shorter than the request line */
    ck_assert_int_eq(parse_n(s, n, 10, &h), -431);
    ck_assert_int_eq(parse_n(s, 10, 10, &h), -431);
    ck_assert_int_eq(parse_n(s, 9, 10, &h), 0);
    /* leading empty lines count */
    char lead[256];
    snprintf(lead, sizeof(lead), "\r\n%s", s);
    ck_assert_int_eq(parse_n(lead, n + 2, n + 2, &h), (ssize_t)n + 2);
    ck_assert_int_eq(parse_n(lead, n + 2, n + 1, &h), -431);
}
END_TEST

START_TEST(test_too_many_fields)
{
    char req[4096];
    for (size_t nf = HTTP_MAX_FIELDS - 1; nf <= HTTP_MAX_FIELDS + 2; nf++) {
        size_t o = (size_t)snprintf(req, sizeof(req), "GET / HTTP/1.1\r\nHost: a\r\n");
        for (size_t i = 1; i < nf; i++)
            o += (size_t)snprintf(req + o, sizeof(req) - o, "X-F%zu: %zu\r\n", i, i);
        o += (size_t)snprintf(req + o, sizeof(req) - o, "\r\n");
        struct http_head h;
        ssize_t rc = parse(req, &h);
        if (nf <= HTTP_MAX_FIELDS) {
            ck_assert_int_eq(rc, (ssize_t)o);
            ck_assert_uint_eq(h.nfields, nf);
            const struct http_field *f = http_head_field(&h, "x-f1");
            ck_assert_ptr_nonnull(f);
            ck_span(f->value, f->value_len, "1");
        } else {
            ck_assert_msg(rc == -431, "%zu fields: %zd", nf, rc);
        }
    }
}
END_TEST

/* ---- chunked bodies ---- */

struct decoded {
    int rc;
    size_t decoded; /* body length */
    size_t len;     /* body + bytes after it */
    unsigned char *buf;
};

/*
 * Decodes in[0, n) fed in pieces ending at cuts[0..ncuts) and then n, each
 * appended to the buffer after the previous call, as a server would. Stops
 * at the first nonzero return; after 1, appends the rest of the input (the
 * next request arriving). The caller frees r->buf.
 */
static void
decode_cuts(const char *in, size_t n, const size_t *cuts, size_t ncuts, size_t max_body,
            struct decoded *r)
{
    struct http_chunked st;
    memset(&st, 0, sizeof(st));
    r->buf = malloc(n ? n : 1);
    ck_assert_ptr_nonnull(r->buf);
    size_t have = 0, len = 0;
    int rc = 0;
    for (size_t i = 0; i <= ncuts && rc == 0; i++) {
        size_t end = i < ncuts ? cuts[i] : n;
        if (end < have)
            continue;
        memcpy(r->buf + len, in + have, end - have);
        len += end - have;
        have = end;
        size_t before = len;
        rc = http_chunked_decode(&st, r->buf, &len, max_body);
        ck_assert_uint_le(len, before);
        ck_assert_uint_le(st.decoded, len);
    }
    if (rc == 1) {
        /* The decoder leaves what follows the message in place, at
         * st.end: bring it next to the body, where the checks look. */
        ck_assert_uint_le(st.decoded, st.end);
        ck_assert_uint_le(st.end, len);
        memmove(r->buf + st.decoded, r->buf + st.end, len - st.end);
        len -= st.end - st.decoded;
        memcpy(r->buf + len, in + have, n - have);
        len += n - have;
    }
    r->rc = rc;
    r->decoded = st.decoded;
    r->len = len;
}

static void
decode_all(const char *in, size_t n, size_t max_body, struct decoded *r)
{
    decode_cuts(in, n, NULL, 0, max_body, r);
}

/* Asserts that split decoding gave what decoding in one call gave. */
static void
ck_same(const struct decoded *one, const struct decoded *split, const char *what)
{
    ck_assert_msg(one->rc == split->rc, "%s: rc %d vs %d", what, one->rc, split->rc);
    ck_assert_msg(one->decoded == split->decoded, "%s: decoded %zu vs %zu", what, one->decoded,
                  split->decoded);
    ck_assert(memcmp(one->buf, split->buf, one->decoded) == 0);
    if (one->rc >= 0) {
        ck_assert_msg(one->len == split->len, "%s: len %zu vs %zu", what, one->len, split->len);
        ck_assert(memcmp(one->buf, split->buf, one->len) == 0);
    } else {
        /* stopped at the error: what was received is a prefix of the rest */
        ck_assert_uint_le(split->len, one->len);
        ck_assert(memcmp(one->buf, split->buf, split->len) == 0);
    }
}

/* Decodes in one call, byte by byte, and split at every point; all agree. */
static void
check_all_splits(const char *in, size_t n, size_t max_body, struct decoded *one)
{
    decode_all(in, n, max_body, one);
    size_t *cuts = malloc((n ? n : 1) * sizeof(*cuts));
    ck_assert_ptr_nonnull(cuts);
    for (size_t i = 0; i < n; i++)
        cuts[i] = i + 1;
    struct decoded bytes;
    decode_cuts(in, n, cuts, n, max_body, &bytes);
    ck_same(one, &bytes, "byte by byte");
    free(bytes.buf);
    for (size_t k = 0; k <= n; k++) {
        struct decoded two;
        decode_cuts(in, n, &k, 1, max_body, &two);
        char what[64];
        snprintf(what, sizeof(what), "split at %zu", k);
        ck_same(one, &two, what);
        free(two.buf);
    }
    free(cuts);
}

#define ck_body(r, lit)                                                                            \
    do {                                                                                           \
        ck_assert_uint_eq((r)->decoded, strlen(lit));                                              \
        ck_assert(memcmp((r)->buf, (lit), strlen(lit)) == 0);                                      \
    } while (0)

/* Decodes a string completely in one call and checks the body and the rest. */
static void
ck_chunked(const char *in, size_t max_body, int rc, const char *body, const char *rest)
{
    struct decoded r;
    check_all_splits(in, strlen(in), max_body, &r);
    ck_assert_msg(r.rc == rc, "%s: rc %d, expected %d", in, r.rc, rc);
    if (body != NULL)
        ck_body(&r, body);
    if (rest != NULL) {
        ck_assert_uint_eq(r.len - r.decoded, strlen(rest));
        ck_assert(memcmp(r.buf + r.decoded, rest, strlen(rest)) == 0);
    }
    free(r.buf);
}

START_TEST(test_chunked_single_call)
{
    const char *in = "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n";
    unsigned char buf[64];
    size_t len = strlen(in);
    memcpy(buf, in, len);
    struct http_chunked st;
    memset(&st, 0, sizeof(st));
    ck_assert_int_eq(http_chunked_decode(&st, buf, &len, 1024), 1);
    ck_assert_uint_eq(st.decoded, 11);
    ck_assert_uint_eq(st.end, strlen(in)); /* the whole message */
    ck_assert_uint_eq(len, strlen(in));    /* nothing after it moved */
    ck_assert(memcmp(buf, "hello world", 11) == 0);
    /* once done, a further call changes nothing */
    ck_assert_int_eq(http_chunked_decode(&st, buf, &len, 1024), 1);
    ck_assert_uint_eq(len, strlen(in));
    ck_assert_uint_eq(st.end, strlen(in));

    ck_chunked(in, 1024, 1, "hello world", "");
    ck_chunked("0\r\n\r\n", 1024, 1, "", "");
    ck_chunked("5\nhello\n0\n\n", 1024, 1, "hello", ""); /* bare LF */
    ck_chunked("1\r\n\n\r\n1\r\n\r\r\n0\r\n\r\n", 1024, 1, "\n\r", "");
    /* incomplete: 0, with the data so far decoded */
    ck_chunked("5\r\nhel", 1024, 0, "hel", "");
    ck_chunked("5\r\nhello\r\n0\r\n", 1024, 0, "hello", "");
    ck_chunked("5\r\nhello\r", 1024, 0, "hello", "\r");
    ck_chunked("5\r\nhello\r\n1", 1024, 0, "hello", "1");
}
END_TEST

START_TEST(test_chunked_extensions)
{
    ck_chunked("5;name=value\r\nhello\r\n0;last\r\n\r\n", 1024, 1, "hello", "");
    ck_chunked("5 ;a=\"q; x\"\r\nhello\r\n0\t;b\r\n\r\n", 1024, 1, "hello", "");
    ck_chunked("5;\r\nhello\r\n0\r\n\r\n", 1024, 1, "hello", "");
    ck_chunked("5;a=\x01\r\nhello\r\n0\r\n\r\n", 1024, -400, "", NULL); /* CTL */
}
END_TEST

START_TEST(test_chunked_hex)
{
    ck_chunked("A\r\n0123456789\r\n0\r\n\r\n", 1024, 1, "0123456789", "");
    ck_chunked("a\r\n0123456789\r\n0\r\n\r\n", 1024, 1, "0123456789", "");
    ck_chunked("000A\r\n0123456789\r\n00\r\n\r\n", 1024, 1, "0123456789", "");
    char in[128], body[40];
    memset(body, 'x', 0x1a);
    body[0x1a] = '\0';
    snprintf(in, sizeof(in), "1A\r\n%s\r\n0\r\n\r\n", body);
    ck_chunked(in, 1024, 1, body, "");
    snprintf(in, sizeof(in), "1a\r\n%s\r\n0\r\n\r\n", body);
    ck_chunked(in, 1024, 1, body, "");
}
END_TEST

START_TEST(test_chunked_trailers)
{
    ck_chunked("5\r\nhello\r\n0\r\nX-Sum: abc\r\nY:z\r\n\r\n", 1024, 1, "hello", "");
    ck_chunked("5\nhello\n0\nX-Sum: abc\n\nGET", 1024, 1, "hello", "GET");
    ck_chunked("0\r\nX-Empty:\r\n\r\n", 1024, 1, "", "");
    ck_chunked("0\r\nX: a\r\n", 1024, 0, "", ""); /* the trailer section goes on */

    ck_chunked("5\r\nhello\r\n0\r\nbad trailer\r\n\r\n", 1024, -400, "hello", NULL);
    ck_chunked("0\r\nX : a\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("0\r\nX: a\r\n folded\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("0\r\n: a\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("0\r\nX: a\x01\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("0\r\nX: a\rb\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("0\r\n\r\r\n", 1024, -400, "", NULL);

    /* the trailer section (with its empty line) is at most 4096 bytes */
    size_t n = 3 + 4096 + 16;
    char *in = malloc(n);
    ck_assert_ptr_nonnull(in);
    for (size_t tsize = 4094; tsize <= 4097; tsize++) {
        /* "X: " value CRLF CRLF: tsize bytes after the last chunk */
        size_t vlen = tsize - 7, o = 0;
        memcpy(in + o, "0\r\nX: ", 6);
        o += 6;
        memset(in + o, 'v', vlen);
        o += vlen;
        memcpy(in + o, "\r\n\r\n", 4);
        o += 4;
        ck_assert_uint_eq(o, 3 + tsize);
        struct decoded r;
        check_all_splits(in, o, 1 << 20, &r);
        ck_assert_msg(r.rc == (tsize <= 4096 ? 1 : -400), "trailer %zu: %d", tsize, r.rc);
        free(r.buf);
    }
    /* and an unterminated one longer than that fails without its LF */
    memcpy(in, "0\r\nX: ", 6);
    memset(in + 6, 'v', n - 6);
    struct decoded r;
    decode_all(in, n, 1 << 20, &r);
    ck_assert_int_eq(r.rc, -400);
    free(r.buf);
    free(in);
}
END_TEST

START_TEST(test_chunked_bad_framing)
{
    /* missing CRLF after the data: an error at the first wrong byte */
    ck_chunked("5\r\nhelloX\r\n0\r\n\r\n", 1024, -400, "hello", NULL);
    ck_chunked("5\r\nhelloX", 1024, -400, "hello", NULL);
    ck_chunked("5\r\nhello\rX", 1024, -400, "hello", NULL);
    ck_chunked("5\r\nhello0\r\n\r\n", 1024, -400, "hello", NULL);
    ck_chunked("3\r\nhello\r\n0\r\n\r\n", 1024, -400, "hel", NULL);
    /* bad chunk sizes */
    ck_chunked("g\r\nhello\r\n0\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("\r\nhello\r\n0\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked(" 5\r\nhello\r\n0\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("0x5\r\nhello\r\n0\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("-5\r\nhello\r\n0\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("+5\r\nhello\r\n0\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("5x\r\nhello\r\n0\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("5\r\r\nhello\r\n0\r\n\r\n", 1024, -400, "", NULL); /* bare CR */
    ck_chunked("5\rhello\r\n0\r\n\r\n", 1024, -400, "", NULL);
    ck_chunked("5\r\nhello\r\n\r\n", 1024, -400, "hello", NULL); /* no last chunk */

    /* a chunk-size line is at most 4096 bytes with its line end */
    size_t n = 4200;
    char *in = malloc(n);
    ck_assert_ptr_nonnull(in);
    for (size_t llen = 4095; llen <= 4098; llen++) {
        /* "1;" + padding + "\r\n" = llen bytes, then "x\r\n0\r\n\r\n" */
        memcpy(in, "1;", 2);
        memset(in + 2, 'e', llen - 4);
        memcpy(in + llen - 2, "\r\nx\r\n0\r\n\r\n", 11);
        size_t len = llen + 8;
        struct decoded r;
        check_all_splits(in, len, 1024, &r);
        ck_assert_msg(r.rc == (llen <= 4096 ? 1 : -400), "line %zu: %d", llen, r.rc);
        free(r.buf);
    }
    /* without its LF: an error once more than 4096 bytes are pending */
    memset(in, '0', n);
    struct decoded r;
    decode_all(in, 4096, 1024, &r);
    ck_assert_int_eq(r.rc, 0);
    free(r.buf);
    decode_all(in, 4097, 1024, &r);
    ck_assert_int_eq(r.rc, -400);
    free(r.buf);
    memcpy(in, "1;", 2);
    memset(in + 2, 'e', n - 2);
    decode_all(in, n, 1024, &r);
    ck_assert_int_eq(r.rc, -400);
    free(r.buf);
    free(in);
}
END_TEST

START_TEST(test_chunked_max_body)
{
    ck_chunked("5\r\nhello\r\n0\r\n\r\n", 5, 1, "hello", "");
    ck_chunked("6\r\nhello!\r\n0\r\n\r\n", 5, -413, "", NULL);
    /* the sum of the chunks counts */
    ck_chunked("3\r\nabc\r\n3\r\ndef\r\n0\r\n\r\n", 6, 1, "abcdef", "");
    ck_chunked("3\r\nabc\r\n3\r\ndef\r\n1\r\ng\r\n0\r\n\r\n", 6, -413, "abcdef", NULL);
    ck_chunked("6\r\nabcdef\r\n6\r\nghijkl\r\n0\r\n\r\n", 10, -413, "abcdef", NULL);
    ck_chunked("0\r\n\r\n", 0, 1, "", "");
    ck_chunked("1\r\na\r\n0\r\n\r\n", 0, -413, "", NULL);
    /* known from the size line, before the data arrives */
    ck_chunked("100000\r\n", 1024, -413, "", NULL);
}
END_TEST

START_TEST(test_chunked_huge_sizes)
{
    static const char *const v[] = {
        "ffffffffffffffff\r\n",
        "FFFFFFFFFFFFFFFF\r\nx",
        "10000000000000000\r\n", /* 2^64 */
        "fffffffffffffffffffffffffffffffff\r\n",
        "8000000000000000\r\n",
        "7fffffffffffffff\r\n",
        "00000000000000000000000000000001\r\nx\r\nffffffffffffffff\r\n",
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        struct decoded r;
        check_all_splits(v[i], strlen(v[i]), 1 << 20, &r);
        ck_assert_msg(r.rc < 0, "case %zu: %d", i, r.rc);
        free(r.buf);
        /* even when the body limit is unlimited, a size past what fits in
         * memory after what was decoded is an error, not a wrap-around */
        check_all_splits(v[i], strlen(v[i]), SIZE_MAX, &r);
        if (i == sizeof(v) / sizeof(v[0]) - 1)
            ck_assert_msg(r.rc < 0, "case %zu unlimited: %d", i, r.rc);
        free(r.buf);
    }
    ck_chunked("5\r\nhello\r\nffffffffffffffff\r\n", SIZE_MAX, -413, "hello", NULL);
}
END_TEST

START_TEST(test_chunked_pipelining)
{
    const char *next = "GET /next HTTP/1.1\r\nHost: a\r\n\r\n";
    char in[256];
    snprintf(in, sizeof(in), "4\r\nWiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n%s", next);
    ck_chunked(in, 1024, 1, "Wikipedia", next);
    snprintf(in, sizeof(in), "0\r\n\r\n%s", next);
    ck_chunked(in, 1024, 1, "", next);
    /* a second chunked body right after the first */
    ck_chunked("1\r\na\r\n0\r\n\r\n1\r\nb\r\n0\r\n\r\n", 1024, 1, "a", "1\r\nb\r\n0\r\n\r\n");
}
END_TEST

START_TEST(test_chunked_resume_offset)
{
    /* The buffer may already hold decoded bytes when framing arrives later. */
    unsigned char buf[64];
    struct http_chunked st;
    memset(&st, 0, sizeof(st));
    size_t len = 0;
    const char *parts[] = {"3\r\nab", "c\r\n2", "\r\nde\r\n0\r", "\n\r", "\nNEXT"};
    int rc = 0;
    for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
        memcpy(buf + len, parts[i], strlen(parts[i]));
        len += strlen(parts[i]);
        rc = http_chunked_decode(&st, buf, &len, 100);
        ck_assert_int_eq(rc, i + 1 < sizeof(parts) / sizeof(parts[0]) ? 0 : 1);
    }
    ck_assert_uint_eq(st.decoded, 5);
    ck_assert(memcmp(buf, "abcde", 5) == 0);
    /* the next request stays where it arrived, right after the message */
    ck_assert_uint_eq(len - st.end, 4);
    ck_assert(memcmp(buf + st.end, "NEXT", 4) == 0);
}
END_TEST

/* ---- percent-decoding ---- */

/* Decodes s into a fresh buffer of len + 1 bytes; returns the result or -1. */
static ssize_t
pdecode(const char *s, bool plus, char *out)
{
    size_t n = strlen(s);
    char *in = malloc(n ? n : 1);
    char *o = malloc(n + 1);
    ck_assert(in != NULL && o != NULL);
    memcpy(in, s, n);
    ssize_t r = http_percent_decode(in, n, o, plus);
    if (r >= 0) {
        ck_assert_uint_le((size_t)r, n);
        ck_assert_int_eq(o[r], '\0');
        memcpy(out, o, (size_t)r + 1);
    }
    free(in);
    free(o);
    return r;
}

#define ck_pdecode(in, plus, want)                                                                 \
    do {                                                                                           \
        char o_[256];                                                                              \
        ssize_t r_ = pdecode((in), (plus), o_);                                                    \
        ck_assert_int_eq(r_, (ssize_t)strlen(want));                                               \
        ck_assert_str_eq(o_, (want));                                                              \
    } while (0)

START_TEST(test_percent_basic)
{
    ck_pdecode("%41", false, "A");
    ck_pdecode("a%2Fb", false, "a/b");
    ck_pdecode("a%2fb", false, "a/b");
    ck_pdecode("%e4%B8%AD", false, "\xe4\xb8\xad");
    ck_pdecode("%25", false, "%");
    ck_pdecode("%2541", false, "%41"); /* decoded once only */
    ck_pdecode("", false, "");
    ck_pdecode("plain", true, "plain");
}
END_TEST

START_TEST(test_percent_malformed)
{
    ck_pdecode("%zz", false, "%zz");
    ck_pdecode("%", false, "%");
    ck_pdecode("a%", false, "a%");
    ck_pdecode("a%4", false, "a%4");
    ck_pdecode("%4g", false, "%4g");
    ck_pdecode("%g4", false, "%g4");
    ck_pdecode("%%41", false, "%A");
    ck_pdecode("100%", true, "100%");
}
END_TEST

START_TEST(test_percent_plus)
{
    ck_pdecode("a+b", false, "a+b");
    ck_pdecode("a+b", true, "a b");
    ck_pdecode("++", true, "  ");
    ck_pdecode("%2B", true, "+"); /* an escaped plus stays a plus */
    ck_pdecode("%20", false, " ");
}
END_TEST

START_TEST(test_percent_nul)
{
    char o[64];
    ck_assert_int_eq(pdecode("%00", false, o), -1);
    ck_assert_int_eq(pdecode("a%00b", true, o), -1);
    ck_assert_int_eq(pdecode("abc%00", false, o), -1);
    /* a literal NUL byte in the input is refused too */
    const char in[] = {'a', '\0', 'b'};
    char out[4];
    ck_assert_int_eq(http_percent_decode(in, sizeof(in), out, false), -1);
}
END_TEST

START_TEST(test_percent_in_place)
{
    char s[] = "x%41y+z%2b%zz%";
    size_t n = strlen(s);
    ssize_t r = http_percent_decode(s, n, s, true);
    ck_assert_int_eq(r, 10);
    ck_assert_str_eq(s, "xAy z+%zz%");
    char t[] = "%41%42%43";
    ck_assert_int_eq(http_percent_decode(t, strlen(t), t, false), 3);
    ck_assert_str_eq(t, "ABC");
}
END_TEST

static Suite *
http_parse_suite(void)
{
    Suite *s = suite_create("http_parse");
    TCase *tc = tcase_create("head");
    tcase_add_checked_fixture(tc, NULL, teardown);
    tcase_add_test(tc, test_get_origin_form);
    tcase_add_test(tc, test_methods);
    tcase_add_test(tc, test_query_forms);
    tcase_add_test(tc, test_absolute_form);
    tcase_add_test(tc, test_keep_alive);
    tcase_add_test(tc, test_expect_continue);
    tcase_add_test(tc, test_content_length);
    tcase_add_test(tc, test_chunked_head);
    tcase_add_test(tc, test_ows_trimming);
    tcase_add_test(tc, test_bare_lf);
    tcase_add_test(tc, test_leading_empty_lines);
    tcase_add_test(tc, test_field_lookup);
    tcase_add_test(tc, test_head_then_body);
    tcase_add_test(tc, test_every_prefix_incomplete);
    tcase_add_test(tc, test_field_syntax_errors);
    tcase_add_test(tc, test_request_line_errors);
    tcase_add_test(tc, test_target_errors);
    tcase_add_test(tc, test_version_errors);
    tcase_add_test(tc, test_content_length_errors);
    tcase_add_test(tc, test_transfer_encoding_errors);
    tcase_add_test(tc, test_host_errors);
    tcase_add_test(tc, test_too_large);
    tcase_add_test(tc, test_too_many_fields);
    suite_add_tcase(s, tc);

    tc = tcase_create("chunked");
    tcase_add_test(tc, test_chunked_single_call);
    tcase_add_test(tc, test_chunked_extensions);
    tcase_add_test(tc, test_chunked_hex);
    tcase_add_test(tc, test_chunked_trailers);
    tcase_add_test(tc, test_chunked_bad_framing);
    tcase_add_test(tc, test_chunked_max_body);
    tcase_add_test(tc, test_chunked_huge_sizes);
    tcase_add_test(tc, test_chunked_pipelining);
    tcase_add_test(tc, test_chunked_resume_offset);
    suite_add_tcase(s, tc);

    tc = tcase_create("percent");
    tcase_add_test(tc, test_percent_basic);
    tcase_add_test(tc, test_percent_malformed);
    tcase_add_test(tc, test_percent_plus);
    tcase_add_test(tc, test_percent_nul);
    tcase_add_test(tc, test_percent_in_place);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(http_parse_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
