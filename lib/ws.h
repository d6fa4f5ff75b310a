/*
 * ws: a pure, allocation-free RFC 6455 (WebSocket) codec.
 *
 * No sockets and no libevent: every function works on caller-owned byte
 * buffers, so lcsd wraps it around its own socket buffers (services/lcs/conn.c) and one idle
 * connection costs only the few bytes of a struct ws_parser (24 bytes on
 * LP64) on top of the connection's own buffers. It owns:
 *
 *   - the opening handshake: parsing the client's HTTP/1.1 Upgrade request,
 *     writing the 101 response and the small HTTP error responses;
 *   - frame parsing for both roles (a server parses masked client frames, a
 *     client parses unmasked server frames), with every check RFC 6455 asks
 *     of a receiver: masking, reserved bits, opcodes, control-frame rules,
 *     fragmentation order, message size, UTF-8 of text and close reasons,
 *     close codes; each failure comes with the close code to send;
 *   - frame building (unmasked server frames, masked client frames, close
 *     payloads);
 *   - an incremental UTF-8 validator.
 *
 * Parsing model. The parser never buffers bytes itself: the caller keeps the
 * bytes received so far in one contiguous buffer and calls the parser on its
 * front. Either the whole frame is there (WS_FRAME: the payload is unmasked
 * IN PLACE and pointed to, the caller drops `consumed` bytes), or it is not
 * (WS_NEED_MORE: nothing changed, `needed` says how many bytes to wait for),
 * or the bytes break the protocol (WS_ERR_*: `close_code` is the code to
 * send, then the connection is failed). Errors visible in a frame header
 * (a payload that would exceed the message cap, an unmasked client frame, a
 * reserved bit, ...) are reported as soon as the header bytes arrive, never
 * after waiting for the payload.
 *
 * Two ways to get messages, pick one per connection:
 *   - ws_parse_frame(): one frame per call. Fragmented messages come out
 *     fragment by fragment (fin, message_opcode tell where they belong);
 *     the caller concatenates them.
 *   - ws_parse_message(): reassembles fragmented messages in place inside
 *     the caller's buffer (payloads are compacted to the front of buf) and
 *     returns whole messages plus the control frames interleaved with them.
 *     The caller must not drop any byte until a call tells it to, so its
 *     buffer must be able to hold WS_MESSAGE_BUF_MAX(max_message) bytes.
 *
 * A server's read loop in message mode (in: the connection's evbuffer,
 * whose read high-watermark can be WS_MESSAGE_BUF_MAX(cap)):
 *
 *     for (;;) {
 *         size_t len = evbuffer_get_length(in);
 *         uint8_t *buf = evbuffer_pullup(in, -1);
 *         enum ws_result r = ws_parse_message(&c->ws, buf, len, cap, &f);
 *         if (r == WS_NEED_MORE)
 *             break;                  // retry once f.needed bytes are in
 *         if (r != WS_FRAME) {
 *             fail(c, f.close_code, f.error); // send that close, log why
 *             break;
 *         }
 *         handle(c, &f);              // ping: pong with f.payload;
 *                                     // close: echo it, stop reading
 *         evbuffer_drain(in, f.consumed); // only now: payload is in buf
 *     }
 *
 * Nothing here is thread-safe per object; separate objects are independent.
 */
#ifndef MBOX_WS_H
#define MBOX_WS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* ---- opening handshake ------------------------------------------------- */

#define WS_HANDSHAKE_MAX   4096 /* request line + headers + final CRLF CRLF */
#define WS_HANDSHAKE_LINES 64   /* header lines at most */
#define WS_PATH_MAX        256  /* request path before '?' */
#define WS_QUERY_MAX       1024 /* query after '?' */
#define WS_PROTOCOLS_MAX   256  /* Sec-WebSocket-Protocol values, joined by ", " */
#define WS_KEY_LEN         24   /* base64 of 16 bytes */
#define WS_ACCEPT_LEN      28   /* base64 of a SHA-1 digest */
#define WS_HS_RESPONSE_MAX 512  /* enough for ws_handshake_response() */
#define WS_HTTP_ERROR_MAX  512  /* enough for ws_handshake_error_response() */

enum ws_hs_status {
    WS_HS_OK = 0,      /* complete and valid; out is filled */
    WS_HS_INCOMPLETE,  /* no end of headers yet and fewer than WS_HANDSHAKE_MAX bytes: wait */
    WS_HS_TOO_LARGE,   /* no end of headers within WS_HANDSHAKE_MAX bytes (answer 431) */
    WS_HS_BAD_REQUEST, /* not a valid WebSocket upgrade request (answer 400) */
    WS_HS_BAD_VERSION, /* valid upgrade but Sec-WebSocket-Version is not 13 (answer 426) */
};

/* The parsed upgrade request. Strings are NUL-terminated copies. */
struct ws_handshake {
    size_t consumed;                      /* bytes of buf the request used */
    char path[WS_PATH_MAX + 1];           /* "/ws" */
    char query[WS_QUERY_MAX + 1];         /* "" when there is no '?' */
    char key[WS_KEY_LEN + 1];             /* Sec-WebSocket-Key, validated */
    char protocols[WS_PROTOCOLS_MAX + 1]; /* offered subprotocols, "" if none */
    /*
     * Set by the server after parsing (ws_handshake_parse() sets NULL): the
     * subprotocol to accept, one of those offered; echoed by
     * ws_handshake_response(). The string is the caller's.
     */
    const char *subprotocol;
};

/*
 * Parses the HTTP/1.1 Upgrade request at the front of buf (which need not
 * be NUL-terminated). Returns WS_HS_INCOMPLETE while the header block is not
 * complete and len < WS_HANDSHAKE_MAX; obviously bad bytes (a request that
 * does not start with "GET ") are rejected before the block is complete.
 * Strict where it matters: CRLF line ends, "GET <origin-form> HTTP/1.1",
 * header names are tokens followed directly by ':', no obs-fold, no control
 * bytes except HT in values, at most WS_HANDSHAKE_LINES header lines,
 * exactly one non-empty Host, Upgrade listing "websocket" and Connection
 * listing "upgrade" (case-insensitive token lists, the headers may repeat),
 * no request body (Transfer-Encoding, or a Content-Length other than 0), then
 * Sec-WebSocket-Version exactly "13" (else WS_HS_BAD_VERSION), then exactly
 * one Sec-WebSocket-Key that is the canonical base64 of 16 bytes. Origin is
 * not required. Bytes after out->consumed (frames pipelined by an eager
 * client) are left to the caller.
 */
enum ws_hs_status ws_handshake_parse(const char *buf, size_t len, struct ws_handshake *out)
    __attribute__((warn_unused_result));

/* Writes base64(SHA-1(client_key "258EAFA5-E914-47DA-95CA-C5AB0DC85B11")), NUL-terminated. */
void ws_handshake_accept_key(const char *client_key, char out[WS_ACCEPT_LEN + 1]);

/* True when name is one of the subprotocols hs offers (exact, case-sensitive). */
bool ws_handshake_offers(const struct ws_handshake *hs, const char *name);

/*
 * Writes the "101 Switching Protocols" response for hs into out,
 * NUL-terminated, and returns its length without the NUL; returns 0 when
 * outlen is too small (WS_HS_RESPONSE_MAX always suffices) or when
 * hs->subprotocol is set but was not offered.
 */
size_t ws_handshake_response(const struct ws_handshake *hs, char *out, size_t outlen)
    __attribute__((warn_unused_result));

/*
 * Writes a complete HTTP/1.1 error response with `Connection: close`, a
 * JSON body {"error":{"code":code,"message":message}} (both JSON-escaped)
 * and, for 426, `Upgrade: websocket` and `Sec-WebSocket-Version: 13`.
 * NUL-terminated; returns the length without the NUL, 0 when it does not fit.
 */
size_t ws_http_error_response(int status, const char *code, const char *message, char *out,
                              size_t outlen) __attribute__((warn_unused_result));

/*
 * The error response for a failed ws_handshake_parse(): 400, 426 or 431
 * (0 for WS_HS_OK and WS_HS_INCOMPLETE). A wrong path is the caller's 404:
 * ws_http_error_response(404, "not_found", ...).
 */
size_t ws_handshake_error_response(enum ws_hs_status st, char *out, size_t outlen)
    __attribute__((warn_unused_result));

const char *ws_hs_status_str(enum ws_hs_status st);

/* ---- frames ------------------------------------------------------------ */

enum ws_opcode {
    WS_OP_CONT = 0x0,
    WS_OP_TEXT = 0x1,
    WS_OP_BINARY = 0x2,
    WS_OP_CLOSE = 0x8,
    WS_OP_PING = 0x9,
    WS_OP_PONG = 0xA,
};

/* Close codes (RFC 6455 7.4.1 and the IANA registry). */
enum ws_close_code {
    WS_CLOSE_NORMAL = 1000,
    WS_CLOSE_GOING_AWAY = 1001,
    WS_CLOSE_PROTOCOL_ERROR = 1002,
    WS_CLOSE_UNSUPPORTED = 1003,
    WS_CLOSE_NO_STATUS = 1005, /* never sent: a close frame without a code */
    WS_CLOSE_ABNORMAL = 1006,  /* never sent: the TCP connection dropped */
    WS_CLOSE_INVALID_DATA = 1007,
    WS_CLOSE_POLICY = 1008,
    WS_CLOSE_TOO_BIG = 1009,
    WS_CLOSE_EXTENSION = 1010,
    WS_CLOSE_INTERNAL = 1011,
    WS_CLOSE_SERVICE_RESTART = 1012,
    WS_CLOSE_TRY_AGAIN_LATER = 1013,
    /* Application codes of lcsd's protocol (4000-4999, docs/api.md 7.5). */
    WS_CLOSE_TOKEN_EXPIRED = 4401,     /* the session's token expired without a refresh */
    WS_CLOSE_REFRESH_FORBIDDEN = 4403, /* a refresh token names another app or uid */
    WS_CLOSE_TOO_MANY_SESSIONS = 4429, /* kicked: the user has per_user_sessions newer ones */
};

#define WS_FRAME_HEADER_MAX   14   /* 2 + 8 (64-bit length) + 4 (mask) */
#define WS_CONTROL_MAX        125  /* control frame payload at most */
#define WS_REASM_OVERHEAD_MAX 4096 /* ws_parse_message(): headers + control frames per message */
/* The most bytes f->needed can ask for with ws_parse_frame() (for caps well below SIZE_MAX). */
#define WS_FRAME_BUF_MAX(max_message) ((max_message) + WS_FRAME_HEADER_MAX + WS_CONTROL_MAX)
/* The most bytes f->needed can ask for with ws_parse_message(). */
#define WS_MESSAGE_BUF_MAX(max_message) (WS_FRAME_BUF_MAX(max_message) + WS_REASM_OVERHEAD_MAX)

enum ws_role {
    WS_ROLE_SERVER = 0, /* parses client frames: every frame must be masked */
    WS_ROLE_CLIENT = 1, /* parses server frames: no frame may be masked */
};

enum ws_result {
    WS_FRAME = 0,        /* a frame (or message) is in f */
    WS_NEED_MORE,        /* wait until buf holds f->needed bytes */
    WS_ERR_PROTOCOL,     /* protocol violation: send close 1002 */
    WS_ERR_INVALID_DATA, /* invalid UTF-8 in a text message or close reason: close 1007 */
    WS_ERR_TOO_BIG,      /* message larger than max_message: close 1009 */
};

/*
 * Per-connection parser state: only the message in progress (fragmented
 * messages) and whether the stream is finished; the frame bytes themselves
 * stay in the caller's buffer. sizeof is 24 bytes on LP64 (checked at
 * compile time to be <= 48). Fields are private.
 */
struct ws_parser {
    size_t msg_len;     /* payload bytes of the fragmented message so far */
    size_t pending;     /* ws_parse_message(): bytes of buf parsed, not yet dropped */
    uint16_t fail_code; /* close code of the first error, 0 while healthy */
    uint8_t role;       /* enum ws_role */
    uint8_t msg_opcode; /* WS_OP_TEXT/BINARY while a fragmented message is open, else 0 */
    uint8_t utf8;       /* UTF-8 validator state of the open text message */
    uint8_t closed;     /* a close frame was received */
};

/*
 * One parsed frame. payload points into the caller's buffer and stays valid
 * until the caller drops those bytes or calls the parser again.
 */
struct ws_frame {
    uint8_t *payload;       /* unmasked in place */
    size_t payload_len;     /* <= max_message; <= 125 for control frames */
    size_t consumed;        /* WS_FRAME: bytes to drop from the front of buf */
    size_t needed;          /* WS_NEED_MORE: buf must hold this many bytes to progress */
    uint8_t opcode;         /* as on the wire (WS_OP_CONT for continuations) */
    uint8_t message_opcode; /* data frames: TEXT/BINARY of the message; control: = opcode */
    bool fin;               /* last frame of its message (always true for control frames) */
    uint16_t close_code;    /* WS_OP_CLOSE: code received (1005 if none); errors: code to send */
    const uint8_t *close_reason; /* WS_OP_CLOSE: UTF-8 reason (not NUL-terminated) */
    size_t close_reason_len;
    const char *error; /* errors: static text for the log line */
};

/* Resets p for a new connection of the given role. */
void ws_parser_init(struct ws_parser *p, enum ws_role role);

/*
 * Parses the frame at the front of buf[0..len) (see the parsing model at
 * the top). On WS_FRAME, data frames also update the message in progress:
 * text is validated as UTF-8 across fragments, the sum of fragments is
 * capped at max_message. Control frames may come between fragments. After
 * an error every later call repeats it; any byte after a close frame is
 * WS_ERR_PROTOCOL (stop reading once a close frame arrived). WS_NEED_MORE
 * changes nothing, so the call can simply be repeated once more bytes
 * arrived; f->needed never exceeds WS_FRAME_BUF_MAX(max_message).
 */
enum ws_result ws_parse_frame(struct ws_parser *p, uint8_t *buf, size_t len, size_t max_message,
                              struct ws_frame *f) __attribute__((warn_unused_result));

/*
 * Like ws_parse_frame() but returns whole messages. An unfragmented
 * message comes back exactly as from ws_parse_frame(). A fragmented one is
 * compacted in place to the front of buf and returned once, with fin set,
 * opcode TEXT or BINARY, payload == buf and f->consumed covering all its
 * fragments and the control frames between them. Those control frames are
 * returned as they come, with f->consumed == 0: the parser remembers them
 * and their bytes are dropped with the message. So the caller must leave
 * buf's bytes where they are, append new bytes behind them and drop only
 * f->consumed. Headers and control frames inside one message may take up
 * at most WS_REASM_OVERHEAD_MAX bytes (else WS_ERR_TOO_BIG), so f->needed
 * never exceeds WS_MESSAGE_BUF_MAX(max_message).
 */
enum ws_result ws_parse_message(struct ws_parser *p, uint8_t *buf, size_t len, size_t max_message,
                                struct ws_frame *f) __attribute__((warn_unused_result));

/* The close code RFC 6455 sends for a result (0 for WS_FRAME and WS_NEED_MORE). */
uint16_t ws_result_close_code(enum ws_result r);

const char *ws_result_str(enum ws_result r);

/* True for codes a peer may put in a close frame: 1000-1003, 1007-1014, 3000-4999. */
bool ws_close_code_valid(uint16_t code);

/* A short English name of a close code ("normal closure", "protocol error", ...). */
const char *ws_close_reason_str(uint16_t code);

/*
 * Writes an unmasked (server) frame header for payload_len bytes into out
 * and returns its length (2, 4 or 10): the payload follows it unchanged.
 */
size_t ws_frame_header(uint8_t out[10], int opcode, bool fin, size_t payload_len);

/*
 * Writes header and payload of an unmasked (server) frame into out; returns
 * the frame length, 0 if outlen is too small.
 */
size_t ws_frame_build(uint8_t *out, size_t outlen, int opcode, bool fin, const uint8_t *payload,
                      size_t len) __attribute__((warn_unused_result));

/*
 * Writes a masked (client) frame with the given masking key into out;
 * returns the frame length, 0 if outlen is too small. payload and out must
 * not overlap.
 */
size_t ws_frame_build_masked(uint8_t *out, size_t outlen, int opcode, bool fin,
                             const uint8_t *payload, size_t len, const uint8_t mask[4])
    __attribute__((warn_unused_result));

/*
 * Writes a close frame payload: the code in network order, then the longest
 * prefix of reason (may be NULL) that is valid UTF-8 and fits in 123 bytes
 * (so a long reason is cut at a character boundary). Returns its length;
 * code 0 gives the empty payload (close without a code).
 */
size_t ws_close_payload(uint8_t out[125], uint16_t code, const char *reason);

/* ---- UTF-8 ------------------------------------------------------------- */

#define WS_UTF8_ACCEPT 0 /* between characters */
#define WS_UTF8_REJECT 1 /* invalid; sticky */

/*
 * Runs the UTF-8 validator from state over s[0..n) and returns the new
 * state: WS_UTF8_ACCEPT, WS_UTF8_REJECT, or another value while a character
 * is split. Rejects overlong forms, surrogates (U+D800..U+DFFF) and code
 * points above U+10FFFF, as early as the first byte that proves it.
 */
uint8_t ws_utf8_step(uint8_t state, const uint8_t *s, size_t n);

/* True when s[0..n) is complete, valid UTF-8. */
bool ws_utf8_valid(const uint8_t *s, size_t n);

#endif
