/*
 * test_ws: the RFC 6455 codec: handshake parsing and responses, frame
 * parsing in both roles (incremental, fragmented, every error class with
 * its close code), frame building and the UTF-8 validator.
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

static const uint8_t MASK[4] = {0x37, 0xfa, 0x21, 0x3d};

#define REQ_HEAD                                                                                   \
    "GET /ws?v=1 HTTP/1.1\r\n"                                                                     \
    "Host: example.com:8090\r\n"                                                                   \
    "Upgrade: websocket\r\n"                                                                       \
    "Connection: Upgrade\r\n"                                                                      \
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"                                              \
    "Origin: http://example.com\r\n"                                                               \
    "Sec-WebSocket-Protocol: chat, superchat\r\n"                                                  \
    "Sec-WebSocket-Version: 13\r\n"

static const char VALID_REQ[] = REQ_HEAD "\r\n";

/* Parses a NUL-terminated request. */
static enum ws_hs_status
hs_parse(const char *req, struct ws_handshake *hs)
{
    return ws_handshake_parse(req, strlen(req), hs);
}

/*
 * A valid request with one header line replaced: every line of VALID_REQ
 * whose name starts with `drop` is left out and `add` (a full line with
 * CRLF, or "") is appended to the headers.
 */
static enum ws_hs_status
hs_variant(const char *drop, const char *add)
{
    static const char *lines[] = {
        "Host: example.com:8090\r\n",    "Upgrade: websocket\r\n",
        "Connection: Upgrade\r\n",       "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n",
        "Sec-WebSocket-Version: 13\r\n",
    };
    char req[2048] = "GET /ws HTTP/1.1\r\n";
    for (size_t i = 0; i < sizeof(lines) / sizeof(lines[0]); i++) {
        if (drop == NULL || strncmp(lines[i], drop, strlen(drop)) != 0)
            strcat(req, lines[i]);
    }
    strcat(req, add);
    strcat(req, "\r\n");
    struct ws_handshake hs;
    return hs_parse(req, &hs);
}

START_TEST(test_accept_key_rfc)
{
    char out[29];
    ws_handshake_accept_key("dGhlIHNhbXBsZSBub25jZQ==", out);
    ck_assert_str_eq(out, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
}
END_TEST

START_TEST(test_handshake_valid)
{
    struct ws_handshake hs;
    ck_assert_int_eq(hs_parse(VALID_REQ, &hs), WS_HS_OK);
    ck_assert_uint_eq(hs.consumed, strlen(VALID_REQ));
    ck_assert_str_eq(hs.path, "/ws");
    ck_assert_str_eq(hs.query, "v=1");
    ck_assert_str_eq(hs.key, "dGhlIHNhbXBsZSBub25jZQ==");
    ck_assert_str_eq(hs.protocols, "chat, superchat");
    ck_assert_ptr_null(hs.subprotocol);
    ck_assert(ws_handshake_offers(&hs, "chat"));
    ck_assert(ws_handshake_offers(&hs, "superchat"));
    ck_assert(!ws_handshake_offers(&hs, "Chat"));
    ck_assert(!ws_handshake_offers(&hs, "super"));
    ck_assert(!ws_handshake_offers(&hs, ""));

    /* Bytes pipelined after the request are not consumed. */
    char buf[1024];
    snprintf(buf, sizeof(buf), "%s\x81\x85", VALID_REQ);
    ck_assert_int_eq(ws_handshake_parse(buf, strlen(buf), &hs), WS_HS_OK);
    ck_assert_uint_eq(hs.consumed, strlen(VALID_REQ));
}
END_TEST

START_TEST(test_handshake_minimal_and_case)
{
    struct ws_handshake hs;
    const char *req = "GET /ws HTTP/1.1\r\n"
                      "host: a\r\n"
                      "UPGRADE: WebSocket\r\n"
                      "connection: keep-alive,  Upgrade \r\n"
                      "sec-websocket-key:   dGhlIHNhbXBsZSBub25jZQ==\t\r\n"
                      "SEC-WEBSOCKET-VERSION: 13\r\n"
                      "X-Tab: a\tb\r\n"
                      "X-Empty:\r\n"
                      "\r\n";
    ck_assert_int_eq(hs_parse(req, &hs), WS_HS_OK);
    ck_assert_str_eq(hs.path, "/ws");
    ck_assert_str_eq(hs.query, "");
    ck_assert_str_eq(hs.protocols, "");
    ck_assert_str_eq(hs.key, "dGhlIHNhbXBsZSBub25jZQ==");
    /* Token lists spread over repeated headers. */
    ck_assert_int_eq(hs_variant("Upgrade", "Upgrade: h2c\r\nUpgrade: foo, websocket\r\n"),
                     WS_HS_OK);
    ck_assert_int_eq(hs_variant("Connection", "Connection: keep-alive\r\nConnection: upgrade\r\n"),
                     WS_HS_OK);
    ck_assert_int_eq(hs_variant(NULL, "Content-Length: 0\r\n"), WS_HS_OK);
}
END_TEST

START_TEST(test_handshake_incomplete_prefixes)
{
    size_t n = strlen(VALID_REQ);
    for (size_t i = 0; i < n; i++) {
        struct ws_handshake hs;
        ck_assert_msg(ws_handshake_parse(VALID_REQ, i, &hs) == WS_HS_INCOMPLETE,
                      "prefix of %zu bytes", i);
    }
    struct ws_handshake hs;
    ck_assert_int_eq(ws_handshake_parse(VALID_REQ, n, &hs), WS_HS_OK);
}
END_TEST

START_TEST(test_handshake_bad_request_line)
{
    struct ws_handshake hs;
    const char *bad[] = {
        "POST /ws HTTP/1.1\r\nHost: a\r\n\r\n",        "get /ws HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /ws HTTP/1.0\r\nHost: a\r\n\r\n",         "GET /ws HTTP/2.0\r\nHost: a\r\n\r\n",
        "GET /ws  HTTP/1.1\r\nHost: a\r\n\r\n",        "GET ws HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET http://a/ws HTTP/1.1\r\nHost: a\r\n\r\n", "GET /w s HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /ws#frag HTTP/1.1\r\nHost: a\r\n\r\n",    "GET  HTTP/1.1\r\nHost: a\r\n\r\n",
        "GET /ws HTTP/1.1\nHost: a\r\n\r\n",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++)
        ck_assert_msg(hs_parse(bad[i], &hs) == WS_HS_BAD_REQUEST, "case %zu", i);
    /* Not "GET " is refused before the header block is complete. */
    ck_assert_int_eq(ws_handshake_parse("POS", 3, &hs), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(ws_handshake_parse("\x16\x03\x01", 3, &hs), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(ws_handshake_parse("GE", 2, &hs), WS_HS_INCOMPLETE);

    /* Path length limit. */
    char req[1024];
    const char *headers = strstr(VALID_REQ, "\r\n") + 2;
    char path[WS_PATH_MAX + 2];
    path[0] = '/';
    memset(path + 1, 'a', WS_PATH_MAX);
    path[WS_PATH_MAX + 1] = '\0';
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\n%s", path, headers);
    ck_assert_int_eq(hs_parse(req, &hs), WS_HS_BAD_REQUEST);
    path[WS_PATH_MAX] = '\0'; /* exactly WS_PATH_MAX */
    snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\n%s", path, headers);
    ck_assert_int_eq(hs_parse(req, &hs), WS_HS_OK);
    ck_assert_uint_eq(strlen(hs.path), WS_PATH_MAX);
}
END_TEST

START_TEST(test_handshake_bad_headers)
{
    /* Required headers missing or wrong. */
    ck_assert_int_eq(hs_variant("Host", ""), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant("Host", "Host:\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "Host: b\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant("Upgrade", ""), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant("Upgrade", "Upgrade: h2c\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant("Upgrade", "Upgrade: websockets\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant("Connection", ""), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant("Connection", "Connection: keep-alive\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant("Connection", "Connection: upgraded\r\n"), WS_HS_BAD_REQUEST);
    /* Keys. */
    ck_assert_int_eq(hs_variant("Sec-WebSocket-Key", ""), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(
        hs_variant("Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ=\r\n"),
        WS_HS_BAD_REQUEST);
    ck_assert_int_eq(
        hs_variant("Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ\r\n"),
        WS_HS_BAD_REQUEST);
    ck_assert_int_eq(
        hs_variant("Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZ*==\r\n"),
        WS_HS_BAD_REQUEST);
    ck_assert_int_eq(/* 4 stray bits set: not the canonical base64 of 16 bytes */
                     hs_variant("Sec-WebSocket-Key",
                                "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZR==\r\n"),
                     WS_HS_BAD_REQUEST);
    ck_assert_int_eq(
        hs_variant("Sec-WebSocket-Key", "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==AAAA\r\n"),
        WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"),
                     WS_HS_BAD_REQUEST);
    ck_assert_int_eq(
        hs_variant("Sec-WebSocket-Key", "Sec-WebSocket-Key: AAAAAAAAAAAAAAAAAAAAAA==\r\n"),
        WS_HS_OK);
    /* Header syntax. */
    ck_assert_int_eq(hs_variant(NULL, "NoColonHere\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, ": value\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "X-Foo : bar\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "X-Foo: bar\r\n continued\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "X-Foo: a\x01z\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "X-Foo: a\x7fz\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "X-Foo: a\rz\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "X-Foo: a\nz\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "X-Foo: a\t\xc3\xa9z\r\n"), WS_HS_OK);
    /* No request body on an upgrade. */
    ck_assert_int_eq(hs_variant(NULL, "Transfer-Encoding: chunked\r\n"), WS_HS_BAD_REQUEST);
    ck_assert_int_eq(hs_variant(NULL, "Content-Length: 5\r\n"), WS_HS_BAD_REQUEST);

    /* NUL inside a header block. */
    struct ws_handshake hs;
    char req[256];
    size_t n = (size_t)snprintf(req, sizeof(req), "%s", VALID_REQ);
    memcpy(req + 40, "\0", 1);
    ck_assert_int_eq(ws_handshake_parse(req, n, &hs), WS_HS_BAD_REQUEST);
}
END_TEST

START_TEST(test_handshake_version)
{
    ck_assert_int_eq(hs_variant("Sec-WebSocket-Version", ""), WS_HS_BAD_VERSION);
    ck_assert_int_eq(hs_variant("Sec-WebSocket-Version", "Sec-WebSocket-Version: 8\r\n"),
                     WS_HS_BAD_VERSION);
    ck_assert_int_eq(hs_variant("Sec-WebSocket-Version", "Sec-WebSocket-Version: 13, 8\r\n"),
                     WS_HS_BAD_VERSION);
    ck_assert_int_eq(hs_variant(NULL, "Sec-WebSocket-Version: 13\r\n"), WS_HS_BAD_VERSION);
    /* A bad version with an otherwise broken request is a bad request. */
    ck_assert_int_eq(hs_variant("Upgrade", "Sec-WebSocket-Version: 8\r\n"), WS_HS_BAD_REQUEST);
}
END_TEST

START_TEST(test_handshake_limits)
{
    struct ws_handshake hs;
    char *buf = malloc(WS_HANDSHAKE_MAX + 512);
    ck_assert_ptr_nonnull(buf);

    /* No end of headers within WS_HANDSHAKE_MAX bytes. */
    size_t n = (size_t)sprintf(buf, "GET /ws HTTP/1.1\r\n");
    while (n < WS_HANDSHAKE_MAX + 100)
        n += (size_t)sprintf(buf + n, "X-Pad: aaaaaaaaaaaaaaaaaaaaaaaa\r\n");
    ck_assert_int_eq(ws_handshake_parse(buf, WS_HANDSHAKE_MAX - 1, &hs), WS_HS_INCOMPLETE);
    ck_assert_int_eq(ws_handshake_parse(buf, WS_HANDSHAKE_MAX, &hs), WS_HS_TOO_LARGE);
    ck_assert_int_eq(ws_handshake_parse(buf, n, &hs), WS_HS_TOO_LARGE);

    /* A block of exactly WS_HANDSHAKE_MAX bytes is fine, one more is not. */
    size_t head = strlen(VALID_REQ) - 2;
    memcpy(buf, VALID_REQ, head);
    size_t pad = WS_HANDSHAKE_MAX - head - 2 - strlen("X-Pad: \r\n");
    n = head + (size_t)sprintf(buf + head, "X-Pad: %*s\r\n\r\n", (int)pad, "a");
    ck_assert_uint_eq(n, WS_HANDSHAKE_MAX);
    ck_assert_int_eq(ws_handshake_parse(buf, n, &hs), WS_HS_OK);
    ck_assert_uint_eq(hs.consumed, WS_HANDSHAKE_MAX);
    n = head + (size_t)sprintf(buf + head, "X-Pad: %*s\r\n\r\n", (int)pad + 1, "a");
    ck_assert_int_eq(ws_handshake_parse(buf, n, &hs), WS_HS_TOO_LARGE);

    /* 64 header lines pass, 65 do not. */
    for (int lines = 64; lines <= 65; lines++) {
        n = (size_t)sprintf(buf, "%s", REQ_HEAD);
        for (int i = 7; i < lines; i++)
            n += (size_t)sprintf(buf + n, "X-%d: 1\r\n", i);
        n += (size_t)sprintf(buf + n, "\r\n");
        ck_assert_int_eq(ws_handshake_parse(buf, n, &hs),
                         (lines == 64 ? WS_HS_OK : WS_HS_BAD_REQUEST));
    }
    free(buf);
}
END_TEST

START_TEST(test_handshake_response)
{
    struct ws_handshake hs;
    char out[WS_HS_RESPONSE_MAX];
    ck_assert_int_eq(hs_parse(VALID_REQ, &hs), WS_HS_OK);
    size_t n = ws_handshake_response(&hs, out, sizeof(out));
    ck_assert_str_eq(out, "HTTP/1.1 101 Switching Protocols\r\n"
                          "Upgrade: websocket\r\n"
                          "Connection: Upgrade\r\n"
                          "Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"
                          "\r\n");
    ck_assert_uint_eq(n, strlen(out));
    ck_assert_uint_eq(ws_handshake_response(&hs, out, n), 0); /* no room for the NUL */

    hs.subprotocol = "superchat";
    n = ws_handshake_response(&hs, out, sizeof(out));
    ck_assert_uint_gt(n, 0);
    ck_assert_ptr_nonnull(strstr(out, "\r\nSec-WebSocket-Protocol: superchat\r\n\r\n"));
    hs.subprotocol = "mqtt"; /* not offered */
    ck_assert_uint_eq(ws_handshake_response(&hs, out, sizeof(out)), 0);
    hs.subprotocol = "chat\r\nX: y";
    ck_assert_uint_eq(ws_handshake_response(&hs, out, sizeof(out)), 0);
}
END_TEST

/* Checks an error response: status line, Connection: close, body length and JSON. */
static void
check_error_response(const char *out, size_t n, const char *status_line, const char *body)
{
    ck_assert_uint_eq(n, strlen(out));
    ck_assert_msg(strncmp(out, status_line, strlen(status_line)) == 0, "%s", out);
    ck_assert_ptr_nonnull(strstr(out, "\r\nConnection: close"));
    ck_assert_ptr_nonnull(strstr(out, "\r\nContent-Type: application/json\r\n"));
    const char *b = strstr(out, "\r\n\r\n");
    ck_assert_ptr_nonnull(b);
    b += 4;
    ck_assert_str_eq(b, body);
    char cl[64];
    snprintf(cl, sizeof(cl), "\r\nContent-Length: %zu\r\n", strlen(body));
    ck_assert_ptr_nonnull(strstr(out, cl));
}

START_TEST(test_error_responses)
{
    char out[WS_HTTP_ERROR_MAX];
    size_t n = ws_handshake_error_response(WS_HS_BAD_REQUEST, out, sizeof(out));
    check_error_response(out, n, "HTTP/1.1 400 Bad Request\r\n",
                         "{\"error\":{\"code\":\"invalid_argument\",\"message\":\"not a valid "
                         "WebSocket upgrade request\"}}");
    n = ws_handshake_error_response(WS_HS_BAD_VERSION, out, sizeof(out));
    check_error_response(out, n, "HTTP/1.1 426 Upgrade Required\r\n",
                         "{\"error\":{\"code\":\"upgrade_required\",\"message\":\"only "
                         "Sec-WebSocket-Version 13 is supported\"}}");
    ck_assert_ptr_nonnull(strstr(out, "\r\nSec-WebSocket-Version: 13\r\n"));
    ck_assert_ptr_nonnull(strstr(out, "\r\nUpgrade: websocket\r\n"));
    n = ws_handshake_error_response(WS_HS_TOO_LARGE, out, sizeof(out));
    check_error_response(out, n, "HTTP/1.1 431 Request Header Fields Too Large\r\n",
                         "{\"error\":{\"code\":\"too_large\",\"message\":\"request headers too "
                         "large\"}}");
    ck_assert_uint_eq(ws_handshake_error_response(WS_HS_OK, out, sizeof(out)), 0);
    ck_assert_uint_eq(ws_handshake_error_response(WS_HS_INCOMPLETE, out, sizeof(out)), 0);

    n = ws_http_error_response(404, "not_found", "no \"/x\"\n\\here", out, sizeof(out));
    check_error_response(out, n, "HTTP/1.1 404 Not Found\r\n",
                         "{\"error\":{\"code\":\"not_found\",\"message\":\"no "
                         "\\\"/x\\\"\\u000a\\\\here\"}}");
    ck_assert_ptr_null(strstr(out, "Sec-WebSocket-Version"));
    /* The body stays valid JSON: UTF-8 passes, other high bytes become '?'. */
    n = ws_http_error_response(400, "x", "caf\xc3\xa9", out, sizeof(out));
    check_error_response(out, n, "HTTP/1.1 400 Bad Request\r\n",
                         "{\"error\":{\"code\":\"x\",\"message\":\"caf\xc3\xa9\"}}");
    n = ws_http_error_response(400, "x", "caf\xe9", out, sizeof(out));
    check_error_response(out, n, "HTTP/1.1 400 Bad Request\r\n",
                         "{\"error\":{\"code\":\"x\",\"message\":\"caf?\"}}");
    /* Too small a buffer writes nothing usable and says so. */
    ck_assert_uint_eq(ws_http_error_response(404, "not_found", "x", out, 40), 0);
    ck_assert_str_eq(ws_hs_status_str(WS_HS_BAD_VERSION), "bad_version");
}
END_TEST

/* ---- frames ---------------------------------------------------------------------------- */

static const uint8_t RFC_HELLO_MASKED[] = {0x81, 0x85, 0x37, 0xfa, 0x21, 0x3d,
                                           0x7f, 0x9f, 0x4d, 0x51, 0x58};
static const uint8_t RFC_HELLO_UNMASKED[] = {0x81, 0x05, 0x48, 0x65, 0x6c, 0x6c, 0x6f};

/* Appends a masked frame to buf at *n. */
static void
put_masked(uint8_t *buf, size_t *n, int op, bool fin, const void *payload, size_t len)
{
    size_t w = ws_frame_build_masked(buf + *n, 1 << 20, op, fin, payload, len, MASK);
    ck_assert_uint_gt(w, 0);
    *n += w;
}

/* Appends an unmasked frame to buf at *n. */
static void
put_plain(uint8_t *buf, size_t *n, int op, bool fin, const void *payload, size_t len)
{
    size_t w = ws_frame_build(buf + *n, 1 << 20, op, fin, payload, len);
    ck_assert_uint_gt(w, 0);
    *n += w;
}

/* Parses one whole buffer as a server and expects an error with this close code. */
static void
expect_server_error(const uint8_t *bytes, size_t n, size_t max, enum ws_result want, uint16_t code)
{
    uint8_t buf[512];
    ck_assert_uint_le(n, sizeof(buf));
    memcpy(buf, bytes, n);
    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, WS_ROLE_SERVER);
    enum ws_result r = ws_parse_frame(&p, buf, n, max, &f);
    ck_assert_msg(r == want, "got %s want %s", ws_result_str(r), ws_result_str(want));
    ck_assert_uint_eq(f.close_code, code);
    ck_assert_uint_eq(ws_result_close_code(r), code);
    ck_assert_ptr_nonnull(f.error);
}

START_TEST(test_parser_size)
{
    ck_assert_uint_le(sizeof(struct ws_parser), 64);
    ck_assert_uint_le(sizeof(struct ws_parser), 48);
    fprintf(stderr, "sizeof(struct ws_parser) = %zu\n", sizeof(struct ws_parser));
}
END_TEST

START_TEST(test_rfc_hello_masked)
{
    uint8_t buf[sizeof(RFC_HELLO_MASKED)];
    memcpy(buf, RFC_HELLO_MASKED, sizeof(buf));
    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, sizeof(buf), 1024, &f), WS_FRAME);
    ck_assert_uint_eq(f.opcode, WS_OP_TEXT);
    ck_assert_uint_eq(f.message_opcode, WS_OP_TEXT);
    ck_assert(f.fin);
    ck_assert_uint_eq(f.payload_len, 5);
    ck_assert_ptr_eq(f.payload, buf + 6);
    ck_assert_int_eq(memcmp(f.payload, "Hello", 5), 0);
    ck_assert_uint_eq(f.consumed, sizeof(buf));

    /* The builder produces the RFC's bytes. */
    uint8_t out[32];
    ck_assert_uint_eq(ws_frame_build_masked(out, sizeof(out), WS_OP_TEXT, true,
                                            (const uint8_t *)"Hello", 5, MASK),
                      sizeof(RFC_HELLO_MASKED));
    ck_assert_int_eq(memcmp(out, RFC_HELLO_MASKED, sizeof(RFC_HELLO_MASKED)), 0);
    ck_assert_uint_eq(
        ws_frame_build(out, sizeof(out), WS_OP_TEXT, true, (const uint8_t *)"Hello", 5),
        sizeof(RFC_HELLO_UNMASKED));
    ck_assert_int_eq(memcmp(out, RFC_HELLO_UNMASKED, sizeof(RFC_HELLO_UNMASKED)), 0);
}
END_TEST

START_TEST(test_masking_roles)
{
    /* Unmasked client frame: 1002 from the second byte on. */
    expect_server_error(RFC_HELLO_UNMASKED, sizeof(RFC_HELLO_UNMASKED), 1024, WS_ERR_PROTOCOL,
                        1002);
    expect_server_error(RFC_HELLO_UNMASKED, 2, 1024, WS_ERR_PROTOCOL, 1002);

    /* A client accepts the unmasked frame and refuses the masked one. */
    uint8_t buf[16];
    struct ws_parser p;
    struct ws_frame f;
    memcpy(buf, RFC_HELLO_UNMASKED, sizeof(RFC_HELLO_UNMASKED));
    ws_parser_init(&p, WS_ROLE_CLIENT);
    ck_assert_int_eq(ws_parse_frame(&p, buf, sizeof(RFC_HELLO_UNMASKED), 1024, &f), WS_FRAME);
    ck_assert_int_eq(memcmp(f.payload, "Hello", 5), 0);
    ck_assert_uint_eq(f.consumed, 7);

    memcpy(buf, RFC_HELLO_MASKED, sizeof(RFC_HELLO_MASKED));
    ws_parser_init(&p, WS_ROLE_CLIENT);
    ck_assert_int_eq(ws_parse_frame(&p, buf, sizeof(RFC_HELLO_MASKED), 1024, &f), WS_ERR_PROTOCOL);
    ck_assert_uint_eq(f.close_code, 1002);
}
END_TEST

START_TEST(test_extended_lengths)
{
    static uint8_t payload[70000], buf[70100];
    for (size_t i = 0; i < sizeof(payload); i++)
        payload[i] = (uint8_t)(i * 7 + 3);
    const size_t sizes[] = {0, 125, 126, 200, 65535, 65536, 70000};
    const size_t hdrs[] = {6, 6, 8, 8, 8, 14, 14};
    for (size_t k = 0; k < sizeof(sizes) / sizeof(sizes[0]); k++) {
        size_t n = 0;
        put_masked(buf, &n, WS_OP_BINARY, true, payload, sizes[k]);
        ck_assert_uint_eq(n, hdrs[k] + sizes[k]);
        struct ws_parser p;
        struct ws_frame f;
        ws_parser_init(&p, WS_ROLE_SERVER);
        ck_assert_int_eq(ws_parse_frame(&p, buf, n, 70000, &f), WS_FRAME);
        ck_assert_uint_eq(f.payload_len, sizes[k]);
        ck_assert_uint_eq(f.consumed, n);
        ck_assert_int_eq(memcmp(f.payload, payload, sizes[k]), 0);
    }

    /* Non-minimal length encodings are accepted. */
    uint8_t nm16[] = {0x82, 0xfe, 0x00, 0x03, 0, 0, 0, 0, 'a', 'b', 'c'};
    uint8_t nm64[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0, 0, 0x02, 0, 0, 0, 0, 'x', 'y'};
    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, nm16, sizeof(nm16), 100, &f), WS_FRAME);
    ck_assert_uint_eq(f.payload_len, 3);
    ck_assert_int_eq(ws_parse_frame(&p, nm64, sizeof(nm64), 100, &f), WS_FRAME);
    ck_assert_uint_eq(f.payload_len, 2);
    ck_assert_int_eq(memcmp(f.payload, "xy", 2), 0);

    /* 64-bit length with the top bit set. */
    uint8_t top[] = {0x82, 0xff, 0x80, 0, 0, 0, 0, 0, 0, 1};
    expect_server_error(top, sizeof(top), SIZE_MAX, WS_ERR_PROTOCOL, 1002);
}
END_TEST

/* For every proper prefix: NEED_MORE, nothing touched, needed > prefix length. */
static void
check_prefixes(enum ws_role role, const uint8_t *frame, size_t n, size_t max)
{
    uint8_t buf[512];
    ck_assert_uint_le(n, sizeof(buf));
    for (size_t i = 0; i < n; i++) {
        memcpy(buf, frame, n);
        struct ws_parser p, before;
        struct ws_frame f;
        ws_parser_init(&p, role);
        before = p;
        ck_assert_msg(ws_parse_frame(&p, buf, i, max, &f) == WS_NEED_MORE, "prefix %zu", i);
        ck_assert_uint_gt(f.needed, i);
        ck_assert_uint_le(f.needed, n);
        ck_assert_int_eq(memcmp(&p, &before, sizeof(p)), 0);
        ck_assert_int_eq(memcmp(buf, frame, n), 0);
    }
    memcpy(buf, frame, n);
    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, role);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, max, &f), WS_FRAME);
    ck_assert_uint_eq(f.consumed, n);
}

START_TEST(test_need_more_prefixes)
{
    uint8_t payload[300];
    memset(payload, 'z', sizeof(payload));
    uint8_t buf[512];
    const size_t sizes[] = {0, 5, 125, 126, 300};
    for (size_t k = 0; k < 5; k++) {
        size_t n = 0;
        put_masked(buf, &n, WS_OP_TEXT, true, payload, sizes[k]);
        check_prefixes(WS_ROLE_SERVER, buf, n, 1000);
        n = 0;
        put_plain(buf, &n, WS_OP_BINARY, true, payload, sizes[k]);
        check_prefixes(WS_ROLE_CLIENT, buf, n, 1000);
    }
    check_prefixes(WS_ROLE_SERVER, RFC_HELLO_MASKED, sizeof(RFC_HELLO_MASKED), 1000);
    uint8_t big64[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0, 0, 3, 1, 2, 3, 4, 'a', 'b', 'c'};
    check_prefixes(WS_ROLE_SERVER, big64, sizeof(big64), 1000);

    /* The needed count is exact once the header is in. */
    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, NULL, 0, 1000, &f), WS_NEED_MORE);
    ck_assert_uint_eq(f.needed, 6);
    ck_assert_int_eq(ws_parse_message(&p, NULL, 0, 1000, &f), WS_NEED_MORE);
    ws_parser_init(&p, WS_ROLE_CLIENT);
    ck_assert_int_eq(ws_parse_frame(&p, NULL, 0, 1000, &f), WS_NEED_MORE);
    ck_assert_uint_eq(f.needed, 2);
    size_t n = 0;
    put_masked(buf, &n, WS_OP_BINARY, true, payload, 300);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, 1, 1000, &f), WS_NEED_MORE);
    ck_assert_uint_eq(f.needed, 6);
    ck_assert_int_eq(ws_parse_frame(&p, buf, 2, 1000, &f), WS_NEED_MORE);
    ck_assert_uint_eq(f.needed, 8);
    ck_assert_int_eq(ws_parse_frame(&p, buf, 4, 1000, &f), WS_NEED_MORE);
    ck_assert_uint_eq(f.needed, 308);
}
END_TEST

START_TEST(test_fragmented_with_ping)
{
    uint8_t buf[256];
    size_t n = 0;
    put_masked(buf, &n, WS_OP_TEXT, false, "Hel", 3);
    put_masked(buf, &n, WS_OP_PING, true, "pi", 2);
    put_masked(buf, &n, WS_OP_CONT, true, "lo", 2);

    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, WS_ROLE_SERVER);
    size_t off = 0;
    ck_assert_int_eq(ws_parse_frame(&p, buf + off, n - off, 100, &f), WS_FRAME);
    ck_assert_uint_eq(f.opcode, WS_OP_TEXT);
    ck_assert(!f.fin);
    ck_assert_int_eq(memcmp(f.payload, "Hel", 3), 0);
    off += f.consumed;
    ck_assert_int_eq(ws_parse_frame(&p, buf + off, n - off, 100, &f), WS_FRAME);
    ck_assert_uint_eq(f.opcode, WS_OP_PING);
    ck_assert(f.fin);
    ck_assert_uint_eq(f.payload_len, 2);
    ck_assert_int_eq(memcmp(f.payload, "pi", 2), 0);
    off += f.consumed;
    ck_assert_int_eq(ws_parse_frame(&p, buf + off, n - off, 100, &f), WS_FRAME);
    ck_assert_uint_eq(f.opcode, WS_OP_CONT);
    ck_assert_uint_eq(f.message_opcode, WS_OP_TEXT);
    ck_assert(f.fin);
    ck_assert_int_eq(memcmp(f.payload, "lo", 2), 0);
    off += f.consumed;
    ck_assert_uint_eq(off, n);
    ck_assert_int_eq(ws_parse_frame(&p, buf + off, 0, 100, &f), WS_NEED_MORE);

    /* Message mode: the ping first (nothing to drop yet), then "Hello" in place. */
    n = 0;
    put_masked(buf, &n, WS_OP_TEXT, false, "Hel", 3);
    put_masked(buf, &n, WS_OP_PING, true, "pi", 2);
    put_masked(buf, &n, WS_OP_CONT, true, "lo", 2);
    put_masked(buf, &n, WS_OP_BINARY, true, "\x01\x02", 2);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_message(&p, buf, n, 100, &f), WS_FRAME);
    ck_assert_uint_eq(f.opcode, WS_OP_PING);
    ck_assert_uint_eq(f.consumed, 0);
    ck_assert_int_eq(memcmp(f.payload, "pi", 2), 0);
    ck_assert_int_eq(ws_parse_message(&p, buf, n, 100, &f), WS_FRAME);
    ck_assert_uint_eq(f.opcode, WS_OP_TEXT);
    ck_assert(f.fin);
    ck_assert_ptr_eq(f.payload, buf);
    ck_assert_uint_eq(f.payload_len, 5);
    ck_assert_int_eq(memcmp(f.payload, "Hello", 5), 0);
    ck_assert_uint_eq(f.consumed, 9 + 8 + 8);
    off = f.consumed;
    ck_assert_int_eq(ws_parse_message(&p, buf + off, n - off, 100, &f), WS_FRAME);
    ck_assert_uint_eq(f.opcode, WS_OP_BINARY);
    ck_assert_uint_eq(f.consumed, 8);
    ck_assert_int_eq(memcmp(f.payload, "\x01\x02", 2), 0);
}
END_TEST

START_TEST(test_message_mode_incremental)
{
    /* Bytes arrive one at a time; the caller appends and drops only what it is told. */
    uint8_t wire[256], buf[256];
    size_t n = 0;
    put_masked(wire, &n, WS_OP_TEXT, false, "ab", 2);
    put_masked(wire, &n, WS_OP_CONT, false, "", 0);
    put_masked(wire, &n, WS_OP_PONG, true, "", 0);
    put_masked(wire, &n, WS_OP_CONT, false, "\xe2\x82", 2);
    put_masked(wire, &n, WS_OP_CONT, true, "\xac!", 2);
    put_masked(wire, &n, WS_OP_CLOSE, true,
               "\x03\xe8"
               "bye",
               5);

    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, WS_ROLE_SERVER);
    size_t have = 0;
    int got = 0;
    for (size_t i = 0; i < n; i++) {
        buf[have++] = wire[i];
        for (;;) {
            enum ws_result r = ws_parse_message(&p, buf, have, 100, &f);
            if (r == WS_NEED_MORE) {
                ck_assert_uint_gt(f.needed, have);
                break;
            }
            ck_assert_int_eq(r, WS_FRAME);
            if (got == 0) {
                ck_assert_uint_eq(f.opcode, WS_OP_PONG);
                ck_assert_uint_eq(f.consumed, 0);
            } else if (got == 1) {
                ck_assert_uint_eq(f.opcode, WS_OP_TEXT);
                ck_assert_uint_eq(f.payload_len, 6);
                ck_assert_int_eq(memcmp(f.payload, "ab\xe2\x82\xac!", 6), 0);
            } else {
                ck_assert_uint_eq(f.opcode, WS_OP_CLOSE);
                ck_assert_uint_eq(f.close_code, 1000);
                ck_assert_uint_eq(f.close_reason_len, 3);
                ck_assert_int_eq(memcmp(f.close_reason, "bye", 3), 0);
            }
            got++;
            memmove(buf, buf + f.consumed, have - f.consumed);
            have -= f.consumed;
        }
    }
    ck_assert_int_eq(got, 3);
    ck_assert_uint_eq(have, 0);
}
END_TEST

START_TEST(test_message_mode_overhead_cap)
{
    /* Endless empty fragments must not pin an unbounded buffer. */
    static uint8_t buf[WS_REASM_OVERHEAD_MAX * 2];
    size_t n = 0;
    put_masked(buf, &n, WS_OP_BINARY, false, "x", 1);
    while (n + 6 <= sizeof(buf))
        put_masked(buf, &n, WS_OP_CONT, false, "", 0);
    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_message(&p, buf, n, 100, &f), WS_ERR_TOO_BIG);
    ck_assert_uint_eq(f.close_code, 1009);
    /* Sticky. */
    ck_assert_int_eq(ws_parse_message(&p, buf, n, 100, &f), WS_ERR_TOO_BIG);
}
END_TEST

START_TEST(test_utf8_across_fragments)
{
    uint8_t buf[256];
    struct ws_parser p;
    struct ws_frame f;
    size_t n, off;

    /* Valid: the euro sign split after its first byte. */
    n = 0;
    put_masked(buf, &n, WS_OP_TEXT, false, "\xe2", 1);
    put_masked(buf, &n, WS_OP_CONT, true, "\x82\xac", 2);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 100, &f), WS_FRAME);
    off = f.consumed;
    ck_assert_int_eq(ws_parse_frame(&p, buf + off, n - off, 100, &f), WS_FRAME);
    ck_assert_int_eq(memcmp(f.payload, "\x82\xac", 2), 0);

    /* Invalid: a split character continued with ASCII. */
    n = 0;
    put_masked(buf, &n, WS_OP_TEXT, false, "a\xe2\x82", 3);
    put_masked(buf, &n, WS_OP_CONT, true, "A", 1);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 100, &f), WS_FRAME);
    off = f.consumed;
    ck_assert_int_eq(ws_parse_frame(&p, buf + off, n - off, 100, &f), WS_ERR_INVALID_DATA);
    ck_assert_uint_eq(f.close_code, 1007);

    /* Invalid: the message ends inside a character. */
    n = 0;
    put_masked(buf, &n, WS_OP_TEXT, false, "a", 1);
    put_masked(buf, &n, WS_OP_CONT, true, "\xf0\x9f\x98", 3);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 100, &f), WS_FRAME);
    off = f.consumed;
    ck_assert_int_eq(ws_parse_frame(&p, buf + off, n - off, 100, &f), WS_ERR_INVALID_DATA);

    /* Binary messages are not validated. */
    n = 0;
    put_masked(buf, &n, WS_OP_BINARY, false, "\xff", 1);
    put_masked(buf, &n, WS_OP_CONT, true, "\xc0", 1);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 100, &f), WS_FRAME);
    off = f.consumed;
    ck_assert_int_eq(ws_parse_frame(&p, buf + off, n - off, 100, &f), WS_FRAME);
    ck_assert_uint_eq(f.message_opcode, WS_OP_BINARY);
}
END_TEST

START_TEST(test_invalid_utf8_text)
{
    const char *bad[] = {"\xc0\xaf", "\xe0\x80\xaf", "\xed\xa0\x80", "\xf4\x90\x80\x80",
                         "ok\xff",   "\x80",         "\xe2\x82"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t buf[32];
        size_t n = 0;
        put_masked(buf, &n, WS_OP_TEXT, true, bad[i], strlen(bad[i]));
        expect_server_error(buf, n, 100, WS_ERR_INVALID_DATA, 1007);
    }
}
END_TEST

START_TEST(test_too_big)
{
    struct ws_parser p;
    struct ws_frame f;
    /* Announced 1 MiB with a 64 KiB cap: refused from the 10 header bytes alone. */
    uint8_t hdr[] = {0x82, 0xff, 0, 0, 0, 0, 0, 0x10, 0, 0};
    expect_server_error(hdr, sizeof(hdr), 65536, WS_ERR_TOO_BIG, 1009);
    uint8_t hdr16[] = {0x81, 0xfe, 0x01, 0x00};
    expect_server_error(hdr16, sizeof(hdr16), 255, WS_ERR_TOO_BIG, 1009);
    uint8_t hdr7[] = {0x81, 0x80 | 101};
    expect_server_error(hdr7, sizeof(hdr7), 100, WS_ERR_TOO_BIG, 1009);

    /* Exactly the cap is fine. */
    uint8_t payload[100], buf[512];
    memset(payload, 'a', sizeof(payload));
    size_t n = 0;
    put_masked(buf, &n, WS_OP_TEXT, true, payload, 100);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 100, &f), WS_FRAME);

    /* The sum of fragments counts, and the fragment's header is enough to tell. */
    n = 0;
    put_masked(buf, &n, WS_OP_TEXT, false, payload, 60);
    put_masked(buf, &n, WS_OP_CONT, true, payload, 41);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 100, &f), WS_FRAME);
    ck_assert_int_eq(ws_parse_frame(&p, buf + f.consumed, 2, 100, &f), WS_ERR_TOO_BIG);
    ck_assert_uint_eq(f.close_code, 1009);

    /* Control frames are not subject to a small message cap. */
    n = 0;
    put_masked(buf, &n, WS_OP_PING, true, payload, 100);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 10, &f), WS_FRAME);
}
END_TEST

START_TEST(test_control_frame_rules)
{
    uint8_t buf[512], payload[200];
    memset(payload, 'p', sizeof(payload));
    size_t n = 0;
    put_masked(buf, &n, WS_OP_PING, true, payload, 126);
    expect_server_error(buf, 2, 1000, WS_ERR_PROTOCOL, 1002); /* known from 2 bytes */
    n = 0;
    put_masked(buf, &n, WS_OP_PING, true, payload, 125);
    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 1000, &f), WS_FRAME);
    ck_assert_uint_eq(f.payload_len, 125);

    /* Fragmented control frames. */
    const int ops[] = {WS_OP_PING, WS_OP_PONG, WS_OP_CLOSE};
    for (int i = 0; i < 3; i++) {
        n = 0;
        put_masked(buf, &n, ops[i], false, "", 0);
        expect_server_error(buf, 1, 1000, WS_ERR_PROTOCOL, 1002);
    }
    /* Reserved bits and opcodes. */
    const uint8_t rsv[] = {0xc1, 0xa1, 0x91, 0x83, 0x87, 0x8b, 0x8f, 0x03};
    for (size_t i = 0; i < sizeof(rsv); i++) {
        uint8_t b[6] = {rsv[i], 0x80, 0, 0, 0, 0};
        expect_server_error(b, sizeof(b), 1000, WS_ERR_PROTOCOL, 1002);
    }
    /* Continuation without a message; a new message inside one. */
    n = 0;
    put_masked(buf, &n, WS_OP_CONT, true, "x", 1);
    expect_server_error(buf, n, 1000, WS_ERR_PROTOCOL, 1002);
    n = 0;
    put_masked(buf, &n, WS_OP_TEXT, false, "x", 1);
    size_t first = n;
    put_masked(buf, &n, WS_OP_BINARY, true, "y", 1);
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 1000, &f), WS_FRAME);
    ck_assert_int_eq(ws_parse_frame(&p, buf + first, n - first, 1000, &f), WS_ERR_PROTOCOL);
    ck_assert_uint_eq(f.close_code, 1002);
    /* Errors are sticky. */
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 1000, &f), WS_ERR_PROTOCOL);
    ck_assert_uint_eq(f.close_code, 1002);
}
END_TEST

/* Parses a masked close frame with this payload. */
static enum ws_result
parse_close(const void *payload, size_t len, struct ws_frame *f, uint8_t *buf)
{
    size_t n = 0;
    put_masked(buf, &n, WS_OP_CLOSE, true, payload, len);
    struct ws_parser p;
    ws_parser_init(&p, WS_ROLE_SERVER);
    return ws_parse_frame(&p, buf, n, 1000, f);
}

START_TEST(test_close_frames)
{
    uint8_t buf[256];
    struct ws_frame f;
    ck_assert_int_eq(parse_close("", 0, &f, buf), WS_FRAME);
    ck_assert_uint_eq(f.close_code, 1005);
    ck_assert_uint_eq(f.close_reason_len, 0);
    ck_assert_int_eq(parse_close("\x03", 1, &f, buf), WS_ERR_PROTOCOL);
    ck_assert_uint_eq(f.close_code, 1002);

    const uint16_t good[] = {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010,
                             1011, 1012, 1013, 1014, 3000, 3999, 4000, 4999};
    for (size_t i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
        uint8_t pl[2] = {(uint8_t)(good[i] >> 8), (uint8_t)good[i]};
        ck_assert_msg(parse_close(pl, 2, &f, buf) == WS_FRAME, "code %u", good[i]);
        ck_assert_uint_eq(f.close_code, good[i]);
        ck_assert(ws_close_code_valid(good[i]));
    }
    const uint16_t bad[] = {0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        uint8_t pl[2] = {(uint8_t)(bad[i] >> 8), (uint8_t)bad[i]};
        ck_assert_msg(parse_close(pl, 2, &f, buf) == WS_ERR_PROTOCOL, "code %u", bad[i]);
        ck_assert_uint_eq(f.close_code, 1002);
        ck_assert(!ws_close_code_valid(bad[i]));
    }
    ck_assert_int_eq(parse_close("\x03\xe8going \xc3\xa9", 10, &f, buf), WS_FRAME);
    ck_assert_uint_eq(f.close_code, 1000);
    ck_assert_uint_eq(f.close_reason_len, 8);
    ck_assert_int_eq(memcmp(f.close_reason, "going \xc3\xa9", 8), 0);
    ck_assert_int_eq(parse_close("\x03\xe8"
                                 "bad\xc3",
                                 6, &f, buf),
                     WS_ERR_INVALID_DATA);
    ck_assert_uint_eq(f.close_code, 1007);

    /* Nothing may follow a close frame. */
    size_t n = 0;
    put_masked(buf, &n, WS_OP_CLOSE, true, "\x03\xe8", 2);
    size_t first = n;
    put_masked(buf, &n, WS_OP_PING, true, "", 0);
    struct ws_parser p;
    ws_parser_init(&p, WS_ROLE_SERVER);
    ck_assert_int_eq(ws_parse_frame(&p, buf, n, 100, &f), WS_FRAME);
    ck_assert_int_eq(ws_parse_frame(&p, buf + first, 0, 100, &f), WS_NEED_MORE);
    ck_assert_int_eq(ws_parse_frame(&p, buf + first, n - first, 100, &f), WS_ERR_PROTOCOL);
}
END_TEST

START_TEST(test_close_helpers)
{
    ck_assert_str_eq(ws_close_reason_str(1000), "normal closure");
    ck_assert_str_eq(ws_close_reason_str(1002), "protocol error");
    ck_assert_str_eq(ws_close_reason_str(1007), "invalid payload data");
    ck_assert_str_eq(ws_close_reason_str(1009), "message too big");
    ck_assert_str_eq(ws_close_reason_str(4000), "private use");
    ck_assert_str_eq(ws_close_reason_str(3001), "registered");
    ck_assert_str_eq(ws_close_reason_str(17), "unknown");
    ck_assert_str_eq(ws_result_str(WS_ERR_TOO_BIG), "too_big");

    uint8_t out[125];
    ck_assert_uint_eq(ws_close_payload(out, 0, "ignored"), 0);
    ck_assert_uint_eq(ws_close_payload(out, 1000, NULL), 2);
    ck_assert_int_eq(memcmp(out, "\x03\xe8", 2), 0);
    ck_assert_uint_eq(ws_close_payload(out, 1001, "bye"), 5);
    ck_assert_int_eq(memcmp(out,
                            "\x03\xe9"
                            "bye",
                            5),
                     0);

    /* 122 ASCII bytes then a 3-byte character: cut before the character. */
    char reason[200];
    memset(reason, 'r', 122);
    strcpy(reason + 122, "\xe2\x82\xac");
    ck_assert_uint_eq(ws_close_payload(out, 1000, reason), 124);
    ck_assert_uint_eq(out[123], 'r');
    /* 121 ASCII then the same character: it fits exactly (123 bytes of reason). */
    strcpy(reason + 120, "\xe2\x82\xac"
                         "zz");
    ck_assert_uint_eq(ws_close_payload(out, 1000, reason), 125);
    ck_assert(ws_utf8_valid(out + 2, 123));
    memset(reason, 'r', 200);
    reason[199] = '\0';
    ck_assert_uint_eq(ws_close_payload(out, 1000, reason), 125);
    /* Invalid UTF-8 is cut where it starts. */
    ck_assert_uint_eq(ws_close_payload(out, 1000,
                                       "ab\xff"
                                       "cd"),
                      4);

    /* What the builder writes, the parser reads back. */
    uint8_t frame[200];
    size_t pl = ws_close_payload(out, 4001, "\xe4\xbd\xa0\xe5\xa5\xbd");
    size_t n = ws_frame_build(frame, sizeof(frame), WS_OP_CLOSE, true, out, pl);
    struct ws_parser p;
    struct ws_frame f;
    ws_parser_init(&p, WS_ROLE_CLIENT);
    ck_assert_int_eq(ws_parse_frame(&p, frame, n, 10, &f), WS_FRAME);
    ck_assert_uint_eq(f.close_code, 4001);
    ck_assert_uint_eq(f.close_reason_len, 6);
}
END_TEST

START_TEST(test_frame_header_sizes)
{
    uint8_t h[10];
    ck_assert_uint_eq(ws_frame_header(h, WS_OP_TEXT, true, 0), 2);
    ck_assert_uint_eq(h[0], 0x81);
    ck_assert_uint_eq(h[1], 0);
    ck_assert_uint_eq(ws_frame_header(h, WS_OP_BINARY, false, 125), 2);
    ck_assert_uint_eq(h[0], 0x02);
    ck_assert_uint_eq(h[1], 125);
    ck_assert_uint_eq(ws_frame_header(h, WS_OP_BINARY, true, 126), 4);
    ck_assert_int_eq(memcmp(h, "\x82\x7e\x00\x7e", 4), 0);
    ck_assert_uint_eq(ws_frame_header(h, WS_OP_BINARY, true, 65535), 4);
    ck_assert_int_eq(memcmp(h, "\x82\x7e\xff\xff", 4), 0);
    ck_assert_uint_eq(ws_frame_header(h, WS_OP_BINARY, true, 65536), 10);
    ck_assert_int_eq(memcmp(h, "\x82\x7f\x00\x00\x00\x00\x00\x01\x00\x00", 10), 0);
    ck_assert_uint_eq(ws_frame_header(h, WS_OP_PONG, true, 0), 2);
    ck_assert_uint_eq(h[0], 0x8a);

    uint8_t out[8];
    ck_assert_uint_eq(
        ws_frame_build(out, sizeof(out), WS_OP_TEXT, true, (const uint8_t *)"abcdefg", 7), 0);
    ck_assert_uint_eq(
        ws_frame_build(out, sizeof(out), WS_OP_TEXT, true, (const uint8_t *)"abcdef", 6), 8);
    ck_assert_uint_eq(
        ws_frame_build_masked(out, sizeof(out), WS_OP_TEXT, true, (const uint8_t *)"abc", 3, MASK),
        0);
    ck_assert_uint_eq(
        ws_frame_build_masked(out, sizeof(out), WS_OP_TEXT, true, (const uint8_t *)"ab", 2, MASK),
        8);
}
END_TEST

/* xorshift64*: a fixed-seed generator so failures reproduce. */
static uint64_t rng_state;

static uint64_t
rng(void)
{
    rng_state ^= rng_state >> 12;
    rng_state ^= rng_state << 25;
    rng_state ^= rng_state >> 27;
    return rng_state * UINT64_C(2685821657736338717);
}

/* Random valid UTF-8 of at most n bytes (1- to 4-byte characters). */
static size_t
random_utf8(uint8_t *out, size_t n)
{
    size_t i = 0;
    for (;;) {
        uint32_t cp;
        switch (rng() % 4) {
        case 0:
            cp = (uint32_t)(rng() % 0x80);
            break;
        case 1:
            cp = 0x80 + (uint32_t)(rng() % (0x800 - 0x80));
            break;
        case 2:
            do
                cp = 0x800 + (uint32_t)(rng() % (0x10000 - 0x800));
            while (cp >= 0xd800 && cp <= 0xdfff);
            break;
        default:
            cp = 0x10000 + (uint32_t)(rng() % (0x110000 - 0x10000));
            break;
        }
        uint8_t c[4];
        size_t k;
        if (cp < 0x80) {
            c[0] = (uint8_t)cp;
            k = 1;
        } else if (cp < 0x800) {
            c[0] = (uint8_t)(0xc0 | (cp >> 6));
            c[1] = (uint8_t)(0x80 | (cp & 0x3f));
            k = 2;
        } else if (cp < 0x10000) {
            c[0] = (uint8_t)(0xe0 | (cp >> 12));
            c[1] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
            c[2] = (uint8_t)(0x80 | (cp & 0x3f));
            k = 3;
        } else {
            c[0] = (uint8_t)(0xf0 | (cp >> 18));
            c[1] = (uint8_t)(0x80 | ((cp >> 12) & 0x3f));
            c[2] = (uint8_t)(0x80 | ((cp >> 6) & 0x3f));
            c[3] = (uint8_t)(0x80 | (cp & 0x3f));
            k = 4;
        }
        if (i + k > n)
            return i;
        memcpy(out + i, c, k);
        i += k;
    }
}

START_TEST(test_round_trip_random)
{
    static uint8_t msg[70000], wire[80000], copy[70000];
    rng_state = UINT64_C(0x9e3779b97f4a7c15);
    for (int iter = 0; iter < 400; iter++) {
        enum ws_role role = (iter & 1) ? WS_ROLE_CLIENT : WS_ROLE_SERVER;
        bool text = (iter & 2) != 0;
        size_t len;
        switch (rng() % 4) {
        case 0:
            len = (size_t)(rng() % 126);
            break;
        case 1:
            len = 126 + (size_t)(rng() % (65536 - 126));
            break;
        case 2:
            len = 65536 + (size_t)(rng() % 4000);
            break;
        default:
            len = (size_t)(rng() % 8);
            break;
        }
        if (text) {
            len = random_utf8(msg, len);
        } else {
            for (size_t i = 0; i < len; i++)
                msg[i] = (uint8_t)rng();
        }
        memcpy(copy, msg, len);
        /* Split into 1..4 fragments at random points. */
        int frags = 1 + (int)(rng() % 4);
        size_t n = 0, pos = 0;
        for (int k = 0; k < frags; k++) {
            size_t take = k == frags - 1 ? len - pos : (size_t)(rng() % (len - pos + 1));
            int op = k == 0 ? (text ? WS_OP_TEXT : WS_OP_BINARY) : WS_OP_CONT;
            bool fin = k == frags - 1;
            size_t w;
            if (role == WS_ROLE_SERVER) {
                uint8_t mask[4];
                uint64_t r = rng();
                memcpy(mask, &r, 4);
                w = ws_frame_build_masked(wire + n, sizeof(wire) - n, op, fin, msg + pos, take,
                                          mask);
            } else {
                w = ws_frame_build(wire + n, sizeof(wire) - n, op, fin, msg + pos, take);
            }
            ck_assert_uint_gt(w, 0);
            n += w;
            pos += take;
        }
        /* Frame mode: fragments concatenate to the message. */
        static uint8_t orig[80000], wire2[80000];
        memcpy(orig, wire, n);
        memcpy(wire2, wire, n);
        struct ws_parser p;
        struct ws_frame f;
        ws_parser_init(&p, role);
        size_t off = 0, got = 0;
        for (int k = 0; k < frags; k++) {
            ck_assert_int_eq(ws_parse_frame(&p, wire + off, n - off, 70000, &f), WS_FRAME);
            ck_assert_uint_eq(f.message_opcode, text ? WS_OP_TEXT : WS_OP_BINARY);
            ck_assert(f.fin == (k == frags - 1));
            ck_assert_int_eq(memcmp(f.payload, copy + got, f.payload_len), 0);
            got += f.payload_len;
            off += f.consumed;
        }
        ck_assert_uint_eq(off, n);
        ck_assert_uint_eq(got, len);
        /* Message mode: one message, in place at the front. */
        ws_parser_init(&p, role);
        ck_assert_int_eq(ws_parse_message(&p, wire2, n, 70000, &f), WS_FRAME);
        ck_assert_uint_eq(f.consumed, n);
        ck_assert_uint_eq(f.payload_len, len);
        if (frags > 1)
            ck_assert_ptr_eq(f.payload, wire2);
        ck_assert_int_eq(memcmp(f.payload, copy, len), 0);
        /* One byte short of the cap fails from the header. */
        if (len > 0) {
            memcpy(wire, orig, n);
            ws_parser_init(&p, role);
            enum ws_result r = WS_FRAME;
            off = 0;
            while (r == WS_FRAME && off < n) {
                r = ws_parse_frame(&p, wire + off, n - off, len - 1, &f);
                off += f.consumed;
            }
            ck_assert_int_eq(r, WS_ERR_TOO_BIG);
        }
    }
}
END_TEST

/* ---- UTF-8 ------------------------------------------------------------------------------ */

/* A straightforward reference decoder: true when s[0..n) is valid UTF-8. */
static bool
ref_utf8(const uint8_t *s, size_t n)
{
    size_t i = 0;
    while (i < n) {
        uint8_t c = s[i];
        size_t k;
        uint32_t cp, min;
        if (c < 0x80) {
            i++;
            continue;
        } else if ((c & 0xe0) == 0xc0) {
            k = 1;
            cp = c & 0x1f;
            min = 0x80;
        } else if ((c & 0xf0) == 0xe0) {
            k = 2;
            cp = c & 0x0f;
            min = 0x800;
        } else if ((c & 0xf8) == 0xf0) {
            k = 3;
            cp = c & 0x07;
            min = 0x10000;
        } else {
            return false;
        }
        if (i + 1 + k > n)
            return false;
        for (size_t j = 1; j <= k; j++) {
            if ((s[i + j] & 0xc0) != 0x80)
                return false;
            cp = (cp << 6) | (s[i + j] & 0x3f);
        }
        if (cp < min || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += 1 + k;
    }
    return true;
}

START_TEST(test_utf8_known)
{
    ck_assert(ws_utf8_valid((const uint8_t *)"", 0));
    ck_assert(ws_utf8_valid((const uint8_t *)"plain ascii text, long enough for words", 40));
    ck_assert(ws_utf8_valid((const uint8_t *)"\xc2\x80\xdf\xbf", 4));
    ck_assert(ws_utf8_valid((const uint8_t *)"\xe0\xa0\x80\xed\x9f\xbf\xee\x80\x80", 9));
    ck_assert(ws_utf8_valid((const uint8_t *)"\xf0\x90\x80\x80\xf4\x8f\xbf\xbf", 8));
    ck_assert(!ws_utf8_valid((const uint8_t *)"\xc0\x80", 2));         /* overlong NUL */
    ck_assert(!ws_utf8_valid((const uint8_t *)"\xc1\xbf", 2));         /* overlong */
    ck_assert(!ws_utf8_valid((const uint8_t *)"\xe0\x9f\xbf", 3));     /* overlong */
    ck_assert(!ws_utf8_valid((const uint8_t *)"\xf0\x8f\xbf\xbf", 4)); /* overlong */
    ck_assert(!ws_utf8_valid((const uint8_t *)"\xed\xa0\x80", 3));     /* U+D800 */
    ck_assert(!ws_utf8_valid((const uint8_t *)"\xed\xbf\xbf", 3));     /* U+DFFF */
    ck_assert(!ws_utf8_valid((const uint8_t *)"\xf4\x90\x80\x80", 4)); /* U+110000 */
    ck_assert(!ws_utf8_valid((const uint8_t *)"\xf5\x80\x80\x80", 4));
    ck_assert(!ws_utf8_valid((const uint8_t *)"\xff", 1));
    ck_assert(!ws_utf8_valid((const uint8_t *)"abcdefgh\x80", 9));
    ck_assert(!ws_utf8_valid((const uint8_t *)"abcdefgh\xe2\x82", 10)); /* truncated */
    ck_assert_uint_eq(ws_utf8_step(WS_UTF8_ACCEPT, (const uint8_t *)"\xe2\x82", 2) > 1, 1);
    ck_assert_uint_eq(ws_utf8_step(WS_UTF8_REJECT, (const uint8_t *)"a", 1), WS_UTF8_REJECT);
    ck_assert_uint_eq(ws_utf8_step(200, (const uint8_t *)"a", 1), WS_UTF8_REJECT);
}
END_TEST

START_TEST(test_utf8_exhaustive_short)
{
    /* Every 1-, 2- and 3-byte sequence against the reference decoder. */
    uint8_t s[3];
    for (unsigned a = 0; a < 256; a++) {
        s[0] = (uint8_t)a;
        ck_assert(ws_utf8_valid(s, 1) == ref_utf8(s, 1));
        for (unsigned b = 0; b < 256; b++) {
            s[1] = (uint8_t)b;
            ck_assert(ws_utf8_valid(s, 2) == ref_utf8(s, 2));
            for (unsigned c = 0; c < 256; c++) {
                s[2] = (uint8_t)c;
                if (ws_utf8_valid(s, 3) != ref_utf8(s, 3))
                    ck_abort_msg("mismatch at %02x %02x %02x", a, b, c);
            }
        }
    }
    /* 4-byte leads with every second byte, then a random tail. */
    rng_state = 42;
    for (unsigned a = 0xf0; a < 0x100; a++) {
        for (unsigned b = 0; b < 256; b++) {
            uint8_t t[4] = {(uint8_t)a, (uint8_t)b, (uint8_t)(0x80 | (rng() & 0x3f)),
                            (uint8_t)(0x80 | (rng() & 0x3f))};
            ck_assert(ws_utf8_valid(t, 4) == ref_utf8(t, 4));
        }
    }
}
END_TEST

START_TEST(test_utf8_incremental_splits)
{
    rng_state = 7;
    uint8_t buf[64];
    for (int iter = 0; iter < 2000; iter++) {
        size_t n = (size_t)(rng() % sizeof(buf));
        if (iter & 1) {
            n = random_utf8(buf, n);
        } else {
            for (size_t i = 0; i < n; i++)
                buf[i] = (rng() & 3) ? (uint8_t)(0x80 | (rng() & 0x7f)) : (uint8_t)rng();
        }
        bool whole = ws_utf8_valid(buf, n);
        ck_assert(whole == ref_utf8(buf, n));
        for (size_t cut = 0; cut <= n; cut++) {
            uint8_t st = ws_utf8_step(WS_UTF8_ACCEPT, buf, cut);
            st = ws_utf8_step(st, buf + cut, n - cut);
            ck_assert((st == WS_UTF8_ACCEPT) == whole);
        }
    }
}
END_TEST

static Suite *
ws_suite(void)
{
    Suite *s = suite_create("ws");
    TCase *hs = tcase_create("handshake");
    tcase_add_test(hs, test_accept_key_rfc);
    tcase_add_test(hs, test_handshake_valid);
    tcase_add_test(hs, test_handshake_minimal_and_case);
    tcase_add_test(hs, test_handshake_incomplete_prefixes);
    tcase_add_test(hs, test_handshake_bad_request_line);
    tcase_add_test(hs, test_handshake_bad_headers);
    tcase_add_test(hs, test_handshake_version);
    tcase_add_test(hs, test_handshake_limits);
    tcase_add_test(hs, test_handshake_response);
    tcase_add_test(hs, test_error_responses);
    suite_add_tcase(s, hs);

    TCase *fr = tcase_create("frames");
    tcase_add_test(fr, test_parser_size);
    tcase_add_test(fr, test_rfc_hello_masked);
    tcase_add_test(fr, test_masking_roles);
    tcase_add_test(fr, test_extended_lengths);
    tcase_add_test(fr, test_need_more_prefixes);
    tcase_add_test(fr, test_fragmented_with_ping);
    tcase_add_test(fr, test_message_mode_incremental);
    tcase_add_test(fr, test_message_mode_overhead_cap);
    tcase_add_test(fr, test_utf8_across_fragments);
    tcase_add_test(fr, test_invalid_utf8_text);
    tcase_add_test(fr, test_too_big);
    tcase_add_test(fr, test_control_frame_rules);
    tcase_add_test(fr, test_close_frames);
    tcase_add_test(fr, test_close_helpers);
    tcase_add_test(fr, test_frame_header_sizes);
    tcase_add_test(fr, test_round_trip_random);
    suite_add_tcase(s, fr);

    TCase *u8 = tcase_create("utf8");
    tcase_set_timeout(u8, 60);
    tcase_add_test(u8, test_utf8_known);
    tcase_add_test(u8, test_utf8_exhaustive_short);
    tcase_add_test(u8, test_utf8_incremental_splits);
    suite_add_tcase(s, u8);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(ws_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
