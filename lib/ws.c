/*
 * ws: RFC 6455 codec (see ws.h for the model). Everything works on the
 * caller's buffers; nothing here allocates, blocks or keeps global state.
 */
#include "ws.h"
#include "http_parse.h"

#include <stdio.h>
#include <string.h>

#include <openssl/evp.h>

_Static_assert(sizeof(struct ws_parser) <= 48, "struct ws_parser is embedded in every connection");

#define WS_GUID "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"

/* ---- small helpers ------------------------------------------------------ */

static int
ascii_lower(int c)
{
    return (c >= 'A' && c <= 'Z') ? c + ('a' - 'A') : c;
}

/* Case-insensitive (ASCII) equality of s[0..n) and the NUL-terminated lit. */
static bool
ieq(const char *s, size_t n, const char *lit)
{
    size_t m = strlen(lit);
    if (n != m)
        return false;
    for (size_t i = 0; i < n; i++) {
        if (ascii_lower((unsigned char)s[i]) != ascii_lower((unsigned char)lit[i]))
            return false;
    }
    return true;
}

/* RFC 7230 tchar: the characters of a token. */
static bool
is_tchar(unsigned char c)
{
    if ((c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z'))
        return true;
    return c != 0 && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

static bool
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

/* Trims optional whitespace from both ends of s[0..*n). */
static const char *
trim_ows(const char *s, size_t *n)
{
    size_t len = *n;
    while (len > 0 && is_ows(s[0])) {
        s++;
        len--;
    }
    while (len > 0 && is_ows(s[len - 1]))
        len--;
    *n = len;
    return s;
}

/*
 * True when the comma-separated list s[0..n) has an element equal to want
 * (case-insensitively when icase). Empty elements are skipped.
 */
static bool
list_has(const char *s, size_t n, const char *want, bool icase)
{
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && s[j] != ',')
            j++;
        size_t elen = j - i;
        const char *e = trim_ows(s + i, &elen);
        if (elen > 0) {
            if (icase ? ieq(e, elen, want) : (elen == strlen(want) && memcmp(e, want, elen) == 0))
                return true;
        }
        i = j + 1;
    }
    return false;
}

static uint16_t
get_be16(const uint8_t *p)
{
    return (uint16_t)((p[0] << 8) | p[1]);
}

static uint64_t
get_be64(const uint8_t *p)
{
    uint64_t v = 0;
    for (int i = 0; i < 8; i++)
        v = (v << 8) | p[i];
    return v;
}

/* ---- UTF-8 -------------------------------------------------------------- */

/*
 * A byte-class DFA. Classes group bytes that behave alike; the states
 * beyond ACCEPT/REJECT remember how many continuation bytes are missing and,
 * right after E0, ED, F0 and F4, the narrower range the next byte must fall
 * in (that is what excludes overlongs, surrogates and > U+10FFFF).
 */
enum {
    U8_NEED1 = 2, /* one more 80..BF */
    U8_NEED2,     /* two more 80..BF */
    U8_NEED3,     /* three more 80..BF */
    U8_E0,        /* after E0: A0..BF (no overlong 3-byte forms) */
    U8_ED,        /* after ED: 80..9F (no surrogates) */
    U8_F0,        /* after F0: 90..BF (no overlong 4-byte forms) */
    U8_F4,        /* after F4: 80..8F (nothing above U+10FFFF) */
    U8_STATES
};

enum {
    C_ASCII, /* 00..7F */
    C_80_8F, /* continuation */
    C_90_9F, /* continuation */
    C_A0_BF, /* continuation */
    C_BAD,   /* C0, C1, F5..FF: never valid */
    C_LEAD2, /* C2..DF */
    C_E0,    /* E0 */
    C_LEAD3, /* E1..EC, EE, EF */
    C_ED,    /* ED */
    C_F0,    /* F0 */
    C_LEAD4, /* F1..F3 */
    C_F4,    /* F4 */
    C_CLASSES
};

static const uint8_t utf8_class[256] = {
    [0x00 ... 0x7f] = C_ASCII,
    [0x80 ... 0x8f] = C_80_8F,
    [0x90 ... 0x9f] = C_90_9F,
    [0xa0 ... 0xbf] = C_A0_BF,
    [0xc0 ... 0xc1] = C_BAD,
    [0xc2 ... 0xdf] = C_LEAD2,
    [0xe0] = C_E0,
    [0xe1 ... 0xec] = C_LEAD3,
    [0xed] = C_ED,
    [0xee ... 0xef] = C_LEAD3,
    [0xf0] = C_F0,
    [0xf1 ... 0xf3] = C_LEAD4,
    [0xf4] = C_F4,
    [0xf5 ... 0xff] = C_BAD,
};

#define R WS_UTF8_REJECT
static const uint8_t utf8_next[U8_STATES][C_CLASSES] = {
    /*                ASCII 80-8F     90-9F     A0-BF     BAD LEAD2     E0     LEAD3     ED     F0
       LEAD4     F4 */
    [WS_UTF8_ACCEPT] = {0, R, R, R, R, U8_NEED1, U8_E0, U8_NEED2, U8_ED, U8_F0, U8_NEED3, U8_F4},
    [WS_UTF8_REJECT] = {R, R, R, R, R, R, R, R, R, R, R, R},
    [U8_NEED1] = {R, 0, 0, 0, R, R, R, R, R, R, R, R},
    [U8_NEED2] = {R, U8_NEED1, U8_NEED1, U8_NEED1, R, R, R, R, R, R, R, R},
    [U8_NEED3] = {R, U8_NEED2, U8_NEED2, U8_NEED2, R, R, R, R, R, R, R, R},
    [U8_E0] = {R, R, R, U8_NEED1, R, R, R, R, R, R, R, R},
    [U8_ED] = {R, U8_NEED1, U8_NEED1, R, R, R, R, R, R, R, R, R},
    [U8_F0] = {R, R, U8_NEED2, U8_NEED2, R, R, R, R, R, R, R, R},
    [U8_F4] = {R, U8_NEED2, R, R, R, R, R, R, R, R, R, R},
};
#undef R

uint8_t
ws_utf8_step(uint8_t state, const uint8_t *s, size_t n)
{
    if (state >= U8_STATES)
        return WS_UTF8_REJECT;
    size_t i = 0;
    while (i < n) {
        if (state == WS_UTF8_ACCEPT) {
            /* Skip ASCII eight bytes at a time: most payloads are JSON. */
            while (i + 8 <= n) {
                uint64_t w;
                memcpy(&w, s + i, 8);
                if (w & UINT64_C(0x8080808080808080))
                    break;
                i += 8;
            }
            if (i == n)
                break;
        }
        state = utf8_next[state][utf8_class[s[i]]];
        if (state == WS_UTF8_REJECT)
            return state;
        i++;
    }
    return state;
}

bool
ws_utf8_valid(const uint8_t *s, size_t n)
{
    return ws_utf8_step(WS_UTF8_ACCEPT, s, n) == WS_UTF8_ACCEPT;
}

/* ---- opening handshake -------------------------------------------------- */

/* What the header loop collects before the final checks. */
struct hs_scan {
    int host; /* Host headers seen */
    bool host_empty;
    bool upgrade;    /* an Upgrade list names "websocket" */
    bool connection; /* a Connection list names "upgrade" */
    int version;     /* Sec-WebSocket-Version headers seen */
    bool version_13;
    int key; /* Sec-WebSocket-Key headers seen */
    const char *key_val;
    size_t key_len;
    size_t protocols_len;
};

static bool
b64_char(char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '+' ||
           c == '/';
}

/*
 * A Sec-WebSocket-Key must be the base64 of 16 bytes: 22 alphabet chars
 * and "==". The 22nd char carries 2 data bits and 4 zero bits, so in the
 * canonical encoding it is one of A, Q, g, w.
 */
static bool
key_valid(const char *k, size_t n)
{
    if (n != WS_KEY_LEN || k[22] != '=' || k[23] != '=')
        return false;
    for (size_t i = 0; i < 22; i++) {
        if (!b64_char(k[i]))
            return false;
    }
    return strchr("AQgw", k[21]) != NULL;
}

/* Parses "GET <target> HTTP/1.1" (without CRLF) into out->path and out->query. */
static bool
parse_request_line(const char *line, size_t n, struct ws_handshake *out)
{
    static const char ver[] = " HTTP/1.1";
    const size_t vlen = sizeof(ver) - 1;
    if (n < 4 + 1 + vlen || memcmp(line, "GET ", 4) != 0 || memcmp(line + n - vlen, ver, vlen) != 0)
        return false;
    const char *t = line + 4;
    size_t tlen = n - 4 - vlen;
    if (t[0] != '/')
        return false; /* origin-form only */
    size_t qpos = tlen;
    for (size_t i = 0; i < tlen; i++) {
        unsigned char c = (unsigned char)t[i];
        if (c <= 0x20 || c >= 0x7f || c == '#')
            return false;
        if (c == '?' && qpos == tlen)
            qpos = i;
    }
    if (qpos > WS_PATH_MAX)
        return false;
    memcpy(out->path, t, qpos);
    out->path[qpos] = '\0';
    if (qpos < tlen) {
        size_t qlen = tlen - qpos - 1;
        if (qlen > WS_QUERY_MAX)
            return false;
        memcpy(out->query, t + qpos + 1, qlen);
        out->query[qlen] = '\0';
    }
    return true;
}

/* Handles one "name: value" line; false on a malformed or unacceptable line. */
static bool
parse_header_line(const char *line, size_t n, struct ws_handshake *out, struct hs_scan *sc)
{
    if (n == 0 || is_ows(line[0]))
        return false; /* obs-fold (or a stray empty line) */
    const char *colon = memchr(line, ':', n);
    if (colon == NULL || colon == line)
        return false;
    size_t nlen = (size_t)(colon - line);
    for (size_t i = 0; i < nlen; i++) {
        if (!is_tchar((unsigned char)line[i]))
            return false; /* includes whitespace before the colon */
    }
    const char *v = colon + 1;
    size_t vlen = n - nlen - 1;
    for (size_t i = 0; i < vlen; i++) {
        unsigned char c = (unsigned char)v[i];
        if ((c < 0x20 && c != '\t') || c == 0x7f)
            return false;
    }
    v = trim_ows(v, &vlen);

    if (ieq(line, nlen, "Host")) {
        sc->host++;
        if (vlen == 0)
            sc->host_empty = true;
    } else if (ieq(line, nlen, "Upgrade")) {
        if (list_has(v, vlen, "websocket", true))
            sc->upgrade = true;
    } else if (ieq(line, nlen, "Connection")) {
        if (list_has(v, vlen, "upgrade", true))
            sc->connection = true;
    } else if (ieq(line, nlen, "Sec-WebSocket-Version")) {
        sc->version++;
        sc->version_13 = vlen == 2 && memcmp(v, "13", 2) == 0;
    } else if (ieq(line, nlen, "Sec-WebSocket-Key")) {
        sc->key++;
        sc->key_val = v;
        sc->key_len = vlen;
    } else if (ieq(line, nlen, "Sec-WebSocket-Protocol")) {
        if (vlen == 0)
            return true;
        size_t need = vlen + (sc->protocols_len > 0 ? 2 : 0);
        if (sc->protocols_len + need > WS_PROTOCOLS_MAX)
            return false;
        if (sc->protocols_len > 0) {
            memcpy(out->protocols + sc->protocols_len, ", ", 2);
            sc->protocols_len += 2;
        }
        memcpy(out->protocols + sc->protocols_len, v, vlen);
        sc->protocols_len += vlen;
        out->protocols[sc->protocols_len] = '\0';
    } else if (ieq(line, nlen, "Transfer-Encoding")) {
        return false; /* an upgrade request has no body */
    } else if (ieq(line, nlen, "Content-Length")) {
        return vlen == 1 && v[0] == '0';
    }
    return true;
}

enum ws_hs_status
ws_handshake_parse(const char *buf, size_t len, struct ws_handshake *out)
{
    memset(out, 0, sizeof(*out));
    out->subprotocol = NULL;

    if (len == 0)
        return WS_HS_INCOMPLETE;
    /* Refuse anything that cannot become "GET " without waiting for more. */
    size_t pre = len < 4 ? len : 4;
    if (memcmp(buf, "GET ", pre) != 0)
        return WS_HS_BAD_REQUEST;

    size_t scan = len < WS_HANDSHAKE_MAX ? len : WS_HANDSHAKE_MAX;
    const char *end = memmem(buf, scan, "\r\n\r\n", 4);
    if (end == NULL)
        return len >= WS_HANDSHAKE_MAX ? WS_HS_TOO_LARGE : WS_HS_INCOMPLETE;
    size_t block = (size_t)(end - buf) + 2; /* through the CRLF of the last header line */

    struct hs_scan sc;
    memset(&sc, 0, sizeof(sc));
    size_t pos = 0;
    int lines = 0;
    while (pos < block) {
        const char *nl = memchr(buf + pos, '\n', block - pos);
        /* Every line in the block ends in CRLF; a bare LF is malformed. */
        if (nl == NULL || nl == buf + pos || nl[-1] != '\r')
            return WS_HS_BAD_REQUEST;
        size_t n = (size_t)(nl - 1 - (buf + pos));
        if (pos == 0) {
            if (!parse_request_line(buf, n, out))
                return WS_HS_BAD_REQUEST;
        } else {
            if (++lines > WS_HANDSHAKE_LINES)
                return WS_HS_BAD_REQUEST;
            if (!parse_header_line(buf + pos, n, out, &sc))
                return WS_HS_BAD_REQUEST;
        }
        pos = (size_t)(nl - buf) + 1;
    }

    if (sc.host != 1 || sc.host_empty || !sc.upgrade || !sc.connection)
        return WS_HS_BAD_REQUEST;
    if (sc.version != 1 || !sc.version_13)
        return WS_HS_BAD_VERSION;
    if (sc.key != 1 || !key_valid(sc.key_val, sc.key_len))
        return WS_HS_BAD_REQUEST;
    memcpy(out->key, sc.key_val, WS_KEY_LEN);
    out->key[WS_KEY_LEN] = '\0';
    out->consumed = block + 2;
    return WS_HS_OK;
}

void
ws_handshake_accept_key(const char *client_key, char out[WS_ACCEPT_LEN + 1])
{
    char in[64 + sizeof(WS_GUID)];
    size_t klen = strnlen(client_key, 64);
    memcpy(in, client_key, klen);
    memcpy(in + klen, WS_GUID, sizeof(WS_GUID) - 1);
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    if (EVP_Digest(in, klen + sizeof(WS_GUID) - 1, md, &mdlen, EVP_sha1(), NULL) != 1 ||
        mdlen != 20) {
        /* Only when libcrypto itself is broken; an empty key never verifies. */
        out[0] = '\0';
        return;
    }
    EVP_EncodeBlock((unsigned char *)out, md, 20); /* 28 chars + NUL */
}

bool
ws_handshake_offers(const struct ws_handshake *hs, const char *name)
{
    return name[0] != '\0' && list_has(hs->protocols, strlen(hs->protocols), name, false);
}

size_t
ws_handshake_response(const struct ws_handshake *hs, char *out, size_t outlen)
{
    char accept[WS_ACCEPT_LEN + 1];
    const char *proto = hs->subprotocol;
    if (proto != NULL) {
        for (const char *c = proto; *c; c++) {
            if (!is_tchar((unsigned char)*c))
                return 0;
        }
        if (!ws_handshake_offers(hs, proto))
            return 0;
    }
    ws_handshake_accept_key(hs->key, accept);
    int n = snprintf(out, outlen,
                     "HTTP/1.1 101 Switching Protocols\r\n"
                     "Upgrade: websocket\r\n"
                     "Connection: Upgrade\r\n"
                     "Sec-WebSocket-Accept: %s\r\n"
                     "%s%s%s"
                     "\r\n",
                     accept, proto ? "Sec-WebSocket-Protocol: " : "", proto ? proto : "",
                     proto ? "\r\n" : "");
    if (n < 0 || (size_t)n >= outlen)
        return 0;
    return (size_t)n;
}

/*
 * Appends s as the inside of a JSON string to dst[*pos..cap); false if it
 * does not fit. Bytes of a string that is not valid UTF-8 become '?' when
 * >= 0x80, so the body is always valid JSON.
 */
static bool
json_escape(char *dst, size_t cap, size_t *pos, const char *s)
{
    static const char hex[] = "0123456789abcdef";
    const bool utf8 = ws_utf8_valid((const uint8_t *)s, strlen(s));
    size_t p = *pos;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[6];
        size_t n;
        if (c == '"' || c == '\\') {
            esc[0] = '\\';
            esc[1] = (char)c;
            n = 2;
        } else if (c < 0x20) {
            memcpy(esc, "\\u00", 4);
            esc[4] = hex[c >> 4];
            esc[5] = hex[c & 15];
            n = 6;
        } else {
            esc[0] = (c >= 0x80 && !utf8) ? '?' : (char)c;
            n = 1;
        }
        if (cap - p < n)
            return false;
        memcpy(dst + p, esc, n);
        p += n;
    }
    *pos = p;
    return true;
}

static bool
append(char *dst, size_t cap, size_t *pos, const char *s)
{
    size_t n = strlen(s);
    if (cap - *pos < n)
        return false;
    memcpy(dst + *pos, s, n);
    *pos += n;
    return true;
}

size_t
ws_http_error_response(int status, const char *code, const char *message, char *out, size_t outlen)
{
    char body[WS_HTTP_ERROR_MAX];
    size_t bl = 0;
    if (status < 100 || status > 999)
        return 0;
    if (!append(body, sizeof(body), &bl, "{\"error\":{\"code\":\"") ||
        !json_escape(body, sizeof(body), &bl, code ? code : "") ||
        !append(body, sizeof(body), &bl, "\",\"message\":\"") ||
        !json_escape(body, sizeof(body), &bl, message ? message : "") ||
        !append(body, sizeof(body), &bl, "\"}}"))
        return 0;
    int n = snprintf(out, outlen,
                     "HTTP/1.1 %d %s\r\n"
                     "Content-Type: application/json\r\n"
                     "Content-Length: %zu\r\n"
                     "%s"
                     "\r\n"
                     "%.*s",
                     status, http_reason_phrase(status), bl,
                     status == 426 ? "Connection: close, Upgrade\r\n"
                                     "Upgrade: websocket\r\n"
                                     "Sec-WebSocket-Version: 13\r\n"
                                   : "Connection: close\r\n",
                     (int)bl, body);
    if (n < 0 || (size_t)n >= outlen)
        return 0;
    return (size_t)n;
}

size_t
ws_handshake_error_response(enum ws_hs_status st, char *out, size_t outlen)
{
    switch (st) {
    case WS_HS_BAD_REQUEST:
        return ws_http_error_response(400, "invalid_argument",
                                      "not a valid WebSocket upgrade request", out, outlen);
    case WS_HS_BAD_VERSION:
        return ws_http_error_response(426, "upgrade_required",
                                      "only Sec-WebSocket-Version 13 is supported", out, outlen);
    case WS_HS_TOO_LARGE:
        return ws_http_error_response(431, "too_large", "request headers too large", out, outlen);
    case WS_HS_OK:
    case WS_HS_INCOMPLETE:
        break;
    }
    return 0;
}

const char *
ws_hs_status_str(enum ws_hs_status st)
{
    switch (st) {
    case WS_HS_OK:
        return "ok";
    case WS_HS_INCOMPLETE:
        return "incomplete";
    case WS_HS_TOO_LARGE:
        return "too_large";
    case WS_HS_BAD_REQUEST:
        return "bad_request";
    case WS_HS_BAD_VERSION:
        return "bad_version";
    }
    return "unknown";
}

/* ---- frame parsing ------------------------------------------------------ */

void
ws_parser_init(struct ws_parser *p, enum ws_role role)
{
    memset(p, 0, sizeof(*p));
    p->role = (uint8_t)role;
}

static enum ws_result
result_for_code(uint16_t code)
{
    switch (code) {
    case WS_CLOSE_INVALID_DATA:
        return WS_ERR_INVALID_DATA;
    case WS_CLOSE_TOO_BIG:
        return WS_ERR_TOO_BIG;
    default:
        return WS_ERR_PROTOCOL;
    }
}

/* Records the first failure: the connection is done, later calls repeat it. */
static enum ws_result
fail(struct ws_parser *p, struct ws_frame *f, uint16_t code, const char *why)
{
    p->fail_code = code;
    f->close_code = code;
    f->error = why;
    return result_for_code(code);
}

static bool
is_control(unsigned op)
{
    return op >= WS_OP_CLOSE;
}

/* XORs p[0..n) with the 4-byte key, 8 bytes at a time where possible. */
static void
unmask(uint8_t *p, size_t n, const uint8_t key[4])
{
    uint8_t k[8];
    memcpy(k, key, 4);
    memcpy(k + 4, key, 4);
    uint64_t k8;
    memcpy(&k8, k, 8);
    size_t i = 0;
    for (; i + 8 <= n; i += 8) {
        uint64_t w;
        memcpy(&w, p + i, 8);
        w ^= k8;
        memcpy(p + i, &w, 8);
    }
    for (; i < n; i++)
        p[i] ^= k[i & 3];
}

enum ws_result
ws_parse_frame(struct ws_parser *p, uint8_t *buf, size_t len, size_t max_message,
               struct ws_frame *f)
{
    const size_t mask_len = p->role == WS_ROLE_SERVER ? 4 : 0;
    memset(f, 0, sizeof(*f));

    if (p->fail_code != 0) {
        f->close_code = p->fail_code;
        f->error = "connection already failed";
        return result_for_code(p->fail_code);
    }
    if (len == 0) {
        f->needed = 2 + mask_len;
        return WS_NEED_MORE;
    }
    /* From here on, each check runs as soon as the bytes it needs are there. */
    if (p->closed)
        return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "data after a close frame");

    const uint8_t b0 = buf[0];
    const bool fin = (b0 & 0x80) != 0;
    const unsigned op = b0 & 0x0f;
    if (b0 & 0x70)
        return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "reserved bits set");
    switch (op) {
    case WS_OP_CONT:
        if (p->msg_opcode == 0)
            return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "continuation frame without a message");
        break;
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        if (p->msg_opcode != 0)
            return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "new message inside a fragmented message");
        break;
    case WS_OP_CLOSE:
    case WS_OP_PING:
    case WS_OP_PONG:
        if (!fin)
            return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "fragmented control frame");
        break;
    default:
        return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "unknown opcode");
    }
    if (len < 2) {
        f->needed = 2 + mask_len;
        return WS_NEED_MORE;
    }

    const uint8_t b1 = buf[1];
    const bool masked = (b1 & 0x80) != 0;
    if (p->role == WS_ROLE_SERVER && !masked)
        return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "unmasked client frame");
    if (p->role == WS_ROLE_CLIENT && masked)
        return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "masked server frame");
    const unsigned len7 = b1 & 0x7f;
    if (is_control(op) && len7 > WS_CONTROL_MAX)
        return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "control frame payload over 125 bytes");
    size_t hdr = 2 + (len7 == 126 ? 2 : len7 == 127 ? 8 : 0);
    if (len < hdr) {
        f->needed = hdr + mask_len;
        return WS_NEED_MORE;
    }
    uint64_t plen = len7;
    if (len7 == 126) {
        plen = get_be16(buf + 2);
    } else if (len7 == 127) {
        plen = get_be64(buf + 2);
        if (plen >> 63)
            return fail(p, f, WS_CLOSE_PROTOCOL_ERROR,
                        "64-bit payload length with the top bit set");
    }
    hdr += mask_len;
    if (!is_control(op)) {
        /* Reject from the header alone: never wait for a payload we refuse. */
        size_t so_far = op == WS_OP_CONT ? p->msg_len : 0;
        if (so_far > max_message || plen > max_message - so_far || plen > SIZE_MAX - hdr)
            return fail(p, f, WS_CLOSE_TOO_BIG, "message too big");
    }
    const size_t total = hdr + (size_t)plen;
    if (len < total) {
        f->needed = total;
        return WS_NEED_MORE;
    }

    uint8_t *payload = buf + hdr;
    if (masked)
        unmask(payload, (size_t)plen, buf + hdr - 4);

    f->payload = payload;
    f->payload_len = (size_t)plen;
    f->consumed = total;
    f->opcode = (uint8_t)op;
    f->fin = fin;
    f->message_opcode = (uint8_t)(op == WS_OP_CONT ? p->msg_opcode : op);

    if (is_control(op)) {
        if (op == WS_OP_CLOSE) {
            if (plen == 1)
                return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "close frame with a 1-byte payload");
            if (plen >= 2) {
                uint16_t code = get_be16(payload);
                if (!ws_close_code_valid(code))
                    return fail(p, f, WS_CLOSE_PROTOCOL_ERROR, "invalid close code");
                if (!ws_utf8_valid(payload + 2, (size_t)plen - 2))
                    return fail(p, f, WS_CLOSE_INVALID_DATA, "close reason is not UTF-8");
                f->close_code = code;
                f->close_reason = payload + 2;
                f->close_reason_len = (size_t)plen - 2;
            } else {
                f->close_code = WS_CLOSE_NO_STATUS;
                f->close_reason = payload;
            }
            p->closed = 1;
        }
        return WS_FRAME;
    }

    uint8_t utf8 = WS_UTF8_ACCEPT;
    if (f->message_opcode == WS_OP_TEXT) {
        utf8 = ws_utf8_step(op == WS_OP_CONT ? p->utf8 : WS_UTF8_ACCEPT, payload, (size_t)plen);
        if (utf8 == WS_UTF8_REJECT)
            return fail(p, f, WS_CLOSE_INVALID_DATA, "invalid UTF-8 in a text message");
        if (fin && utf8 != WS_UTF8_ACCEPT)
            return fail(p, f, WS_CLOSE_INVALID_DATA, "text message ends inside a UTF-8 character");
    }
    if (fin) {
        p->msg_opcode = 0;
        p->msg_len = 0;
        p->utf8 = WS_UTF8_ACCEPT;
    } else {
        p->msg_opcode = f->message_opcode;
        p->msg_len = (op == WS_OP_CONT ? p->msg_len : 0) + (size_t)plen;
        p->utf8 = utf8;
    }
    return WS_FRAME;
}

enum ws_result
ws_parse_message(struct ws_parser *p, uint8_t *buf, size_t len, size_t max_message,
                 struct ws_frame *f)
{
    for (;;) {
        const size_t off = p->pending;
        if (len < off) {
            /* The caller dropped bytes it was told to keep: do not touch them. */
            memset(f, 0, sizeof(*f));
            return fail(p, f, WS_CLOSE_INTERNAL, "reassembly buffer lost bytes");
        }
        const bool open = p->msg_opcode != 0;
        const size_t before = p->msg_len; /* compacted payload at buf[0..before) */
        struct ws_frame fr;
        /* (buf may be NULL when len is 0: no arithmetic on it then.) */
        enum ws_result r = ws_parse_frame(p, off ? buf + off : buf, len - off, max_message, &fr);
        *f = fr;
        if (r == WS_NEED_MORE) {
            f->needed = off + fr.needed;
            return r;
        }
        if (r != WS_FRAME)
            return r;
        if (is_control(fr.opcode)) {
            if (open) {
                /* Keep it in the buffer: the fragments before it are not dropped yet. */
                f->consumed = 0;
                p->pending = off + fr.consumed;
                if (p->pending - p->msg_len > WS_REASM_OVERHEAD_MAX)
                    return fail(p, f, WS_CLOSE_TOO_BIG, "too many frames inside one message");
            }
            return WS_FRAME;
        }
        if (!open && fr.fin)
            return WS_FRAME; /* a whole message in one frame: nothing to move */

        memmove(buf + before, fr.payload, fr.payload_len);
        const size_t end = off + fr.consumed;
        if (fr.fin) {
            f->payload = buf;
            f->payload_len = before + fr.payload_len;
            f->consumed = end;
            f->opcode = fr.message_opcode;
            p->pending = 0;
            return WS_FRAME;
        }
        p->pending = end;
        if (p->pending - p->msg_len > WS_REASM_OVERHEAD_MAX)
            return fail(p, f, WS_CLOSE_TOO_BIG, "too many frames inside one message");
    }
}

uint16_t
ws_result_close_code(enum ws_result r)
{
    switch (r) {
    case WS_ERR_PROTOCOL:
        return WS_CLOSE_PROTOCOL_ERROR;
    case WS_ERR_INVALID_DATA:
        return WS_CLOSE_INVALID_DATA;
    case WS_ERR_TOO_BIG:
        return WS_CLOSE_TOO_BIG;
    case WS_FRAME:
    case WS_NEED_MORE:
        break;
    }
    return 0;
}

const char *
ws_result_str(enum ws_result r)
{
    switch (r) {
    case WS_FRAME:
        return "frame";
    case WS_NEED_MORE:
        return "need_more";
    case WS_ERR_PROTOCOL:
        return "protocol_error";
    case WS_ERR_INVALID_DATA:
        return "invalid_data";
    case WS_ERR_TOO_BIG:
        return "too_big";
    }
    return "unknown";
}

bool
ws_close_code_valid(uint16_t code)
{
    return (code >= 1000 && code <= 1003) || (code >= 1007 && code <= 1014) ||
           (code >= 3000 && code <= 4999);
}

const char *
ws_close_reason_str(uint16_t code)
{
    switch (code) {
    case 1000:
        return "normal closure";
    case 1001:
        return "going away";
    case 1002:
        return "protocol error";
    case 1003:
        return "unsupported data";
    case 1005:
        return "no status received";
    case 1006:
        return "abnormal closure";
    case 1007:
        return "invalid payload data";
    case 1008:
        return "policy violation";
    case 1009:
        return "message too big";
    case 1010:
        return "mandatory extension";
    case 1011:
        return "internal error";
    case 1012:
        return "service restart";
    case 1013:
        return "try again later";
    case 1014:
        return "bad gateway";
    case 1015:
        return "TLS handshake failure";
    default:
        break;
    }
    if (code >= 3000 && code <= 3999)
        return "registered";
    if (code >= 4000 && code <= 4999)
        return "private use";
    return "unknown";
}

/* ---- frame building ----------------------------------------------------- */

size_t
ws_frame_header(uint8_t out[10], int opcode, bool fin, size_t payload_len)
{
    out[0] = (uint8_t)((fin ? 0x80 : 0) | (opcode & 0x0f));
    if (payload_len < 126) {
        out[1] = (uint8_t)payload_len;
        return 2;
    }
    if (payload_len <= 0xffff) {
        out[1] = 126;
        out[2] = (uint8_t)(payload_len >> 8);
        out[3] = (uint8_t)payload_len;
        return 4;
    }
    out[1] = 127;
    uint64_t v = payload_len;
    for (int i = 9; i >= 2; i--) {
        out[i] = (uint8_t)v;
        v >>= 8;
    }
    return 10;
}

size_t
ws_frame_build(uint8_t *out, size_t outlen, int opcode, bool fin, const uint8_t *payload,
               size_t len)
{
    uint8_t hdr[10];
    size_t h = ws_frame_header(hdr, opcode, fin, len);
    if (outlen < h || outlen - h < len)
        return 0;
    memcpy(out, hdr, h);
    if (len > 0)
        memmove(out + h, payload, len);
    return h + len;
}

size_t
ws_frame_build_masked(uint8_t *out, size_t outlen, int opcode, bool fin, const uint8_t *payload,
                      size_t len, const uint8_t mask[4])
{
    uint8_t hdr[10];
    size_t h = ws_frame_header(hdr, opcode, fin, len);
    if (outlen < h + 4 || outlen - h - 4 < len)
        return 0;
    hdr[1] |= 0x80;
    memcpy(out, hdr, h);
    memcpy(out + h, mask, 4);
    for (size_t i = 0; i < len; i++)
        out[h + 4 + i] = payload[i] ^ mask[i & 3];
    return h + 4 + len;
}

size_t
ws_close_payload(uint8_t out[125], uint16_t code, const char *reason)
{
    if (code == 0)
        return 0;
    out[0] = (uint8_t)(code >> 8);
    out[1] = (uint8_t)code;
    size_t keep = 0;
    if (reason != NULL) {
        const uint8_t *r = (const uint8_t *)reason;
        uint8_t st = WS_UTF8_ACCEPT;
        for (size_t i = 0; i < WS_CONTROL_MAX - 2 && r[i] != '\0'; i++) {
            st = ws_utf8_step(st, r + i, 1);
            if (st == WS_UTF8_REJECT)
                break;
            if (st == WS_UTF8_ACCEPT)
                keep = i + 1;
        }
        memcpy(out + 2, r, keep);
    }
    return 2 + keep;
}
