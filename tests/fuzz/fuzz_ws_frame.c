/*
 * fuzz_ws_frame: the WebSocket frame parser, both roles, both modes.
 *
 * Input layout: byte 0 picks role, mode (ws_parse_frame or
 * ws_parse_message) and the message cap; bytes 1..3 seed the chunk sizes;
 * the rest is the byte stream. The stream is parsed twice: all at once and
 * delivered in random-sized chunks the way a socket would, with the caller
 * appending behind undropped bytes and dropping only f->consumed. Both runs
 * must yield the same frames and the same final result. Then both modes
 * run on the whole stream: ws_parse_frame() plus concatenating fragments
 * must give the same control frames and messages as ws_parse_message()
 * (which may stop earlier, at its reassembly overhead cap). Every result
 * must satisfy the API's promises (payload inside the buffer, consumed <= len,
 * needed > len and bounded, NEED_MORE changes nothing, caps respected, text
 * messages valid UTF-8, close codes valid).
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "ws.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const size_t caps[8] = {0, 1, 7, 125, 126, 1000, 65536, SIZE_MAX};

struct run {
    uint64_t hash; /* of every frame returned, in order */
    size_t frames;
    enum ws_result last;
    uint16_t last_code;
};

static void
mix(uint64_t *h, const void *p, size_t n)
{
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        *h ^= b[i];
        *h *= UINT64_C(0x100000001b3);
    }
}

static void
mix_u64(uint64_t *h, uint64_t v)
{
    mix(h, &v, sizeof(v));
}

/* Checks one WS_FRAME result against the API's promises and folds it into r. */
static void
check_frame(const struct ws_frame *f, const uint8_t *buf, size_t len, size_t max, bool message,
            struct run *r)
{
    if (f->consumed > len)
        abort();
    if (!message && f->consumed == 0)
        abort();
    if (f->payload_len > 0 || f->payload != NULL) {
        if (f->payload < buf || f->payload > buf + len ||
            f->payload_len > (size_t)(buf + len - f->payload))
            abort();
    }
    bool control = f->opcode >= WS_OP_CLOSE;
    if (control) {
        if (f->payload_len > WS_CONTROL_MAX || !f->fin || f->message_opcode != f->opcode)
            abort();
    } else {
        if (f->payload_len > max)
            abort();
        if (f->message_opcode != WS_OP_TEXT && f->message_opcode != WS_OP_BINARY)
            abort();
        if (message) {
            if (!f->fin || f->opcode != f->message_opcode)
                abort();
            if (f->opcode == WS_OP_TEXT && !ws_utf8_valid(f->payload, f->payload_len))
                abort();
        }
    }
    if (f->opcode == WS_OP_CLOSE) {
        if (f->close_code != WS_CLOSE_NO_STATUS && !ws_close_code_valid(f->close_code))
            abort();
        if (f->close_reason_len > 0 && !ws_utf8_valid(f->close_reason, f->close_reason_len))
            abort();
    }
    r->frames++;
    mix_u64(&r->hash, f->opcode);
    mix_u64(&r->hash, f->message_opcode);
    mix_u64(&r->hash, f->fin);
    mix_u64(&r->hash, f->consumed);
    mix_u64(&r->hash, f->close_code);
    mix_u64(&r->hash, f->close_reason_len);
    mix_u64(&r->hash, f->payload_len);
    if (f->payload_len > 0)
        mix(&r->hash, f->payload, f->payload_len);
}

/*
 * Parses what buf[*start..have) holds until the parser wants more or fails;
 * returns false once the stream is finished (error).
 */
static bool
drain(struct ws_parser *p, uint8_t *buf, size_t *start, size_t have, size_t max, bool message,
      struct run *r)
{
    for (size_t guard = 0; guard <= have + 2; guard++) {
        uint8_t *b = buf + *start;
        size_t len = have - *start;
        struct ws_parser before = *p;
        struct ws_frame f;
        enum ws_result res =
            message ? ws_parse_message(p, b, len, max, &f) : ws_parse_frame(p, b, len, max, &f);
        r->last = res;
        r->last_code = 0;
        switch (res) {
        case WS_NEED_MORE:
            if (f.needed <= len)
                abort();
            if (max < SIZE_MAX / 2 &&
                f.needed > (message ? WS_MESSAGE_BUF_MAX(max) : WS_FRAME_BUF_MAX(max)))
                abort();
            if (!message && memcmp(&before, p, sizeof(*p)) != 0)
                abort();
            return true;
        case WS_FRAME:
            check_frame(&f, b, len, max, message, r);
            *start += f.consumed;
            break;
        default:
            r->last_code = f.close_code;
            if (f.close_code != ws_result_close_code(res) || f.error == NULL)
                abort();
            return false;
        }
    }
    abort(); /* no progress */
}

/*
 * Parses buf[0..n) to the end in one mode and writes one hash per event
 * (a control frame, or a whole message: fragments are concatenated here in
 * frame mode) into ev; returns the event count, *last the final result and
 * *overhead whether it was the reassembly overhead cap.
 */
static size_t
events(enum ws_role role, bool message, size_t max, uint8_t *buf, size_t n, uint64_t *ev,
       enum ws_result *last, uint16_t *code, bool *overhead)
{
    struct ws_parser p;
    ws_parser_init(&p, role);
    size_t count = 0, start = 0;
    uint64_t msg = 0;
    bool in_msg = false;
    *overhead = false;
    for (size_t guard = 0; guard <= n + 2; guard++) {
        struct ws_frame f;
        enum ws_result r = message ? ws_parse_message(&p, buf + start, n - start, max, &f)
                                   : ws_parse_frame(&p, buf + start, n - start, max, &f);
        *last = r;
        *code = r == WS_FRAME || r == WS_NEED_MORE ? 0 : f.close_code;
        if (r != WS_FRAME) {
            *overhead = r == WS_ERR_TOO_BIG && strstr(f.error, "inside one message") != NULL;
            return count;
        }
        start += f.consumed;
        if (f.opcode >= WS_OP_CLOSE) {
            uint64_t h = UINT64_C(0xcbf29ce484222325);
            mix_u64(&h, f.opcode);
            mix(&h, f.payload, f.payload_len);
            mix_u64(&h, f.payload_len);
            ev[count++] = h;
            continue;
        }
        if (!in_msg) {
            msg = UINT64_C(0xcbf29ce484222325);
            mix_u64(&msg, f.message_opcode);
            in_msg = true;
        }
        mix(&msg, f.payload, f.payload_len);
        if (f.fin) {
            ev[count++] = msg;
            in_msg = false;
        }
    }
    abort();
}

/* Frame mode plus the caller's concatenation must equal message mode. */
static void
cross_check(enum ws_role role, size_t max, const uint8_t *in, size_t n)
{
    uint8_t *a = malloc(n ? n : 1), *b = malloc(n ? n : 1);
    uint64_t *ea = malloc((n + 1) * sizeof(uint64_t)), *eb = malloc((n + 1) * sizeof(uint64_t));
    if (a == NULL || b == NULL || ea == NULL || eb == NULL)
        abort();
    memcpy(a, in, n);
    memcpy(b, in, n);
    enum ws_result ra, rb;
    uint16_t ca, cb;
    bool oa, ob;
    size_t na = events(role, false, max, a, n, ea, &ra, &ca, &oa);
    size_t nb = events(role, true, max, b, n, eb, &rb, &cb, &ob);
    if (oa || nb > na || memcmp(ea, eb, nb * sizeof(uint64_t)) != 0)
        abort();
    if (!ob && (na != nb || ra != rb || ca != cb))
        abort();
    free(a);
    free(b);
    free(ea);
    free(eb);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 4)
        return 0;
    const enum ws_role role = (data[0] & 1) ? WS_ROLE_CLIENT : WS_ROLE_SERVER;
    const bool message = (data[0] & 2) != 0;
    const size_t max = caps[(data[0] >> 2) & 7];
    uint32_t seed = (uint32_t)data[1] | (uint32_t)data[2] << 8 | (uint32_t)data[3] << 16;
    const uint8_t *in = data + 4;
    const size_t n = size - 4;

    uint8_t *whole = malloc(n ? n : 1);
    uint8_t *chunked = malloc(n ? n : 1);
    if (whole == NULL || chunked == NULL)
        abort();

    /* All at once. */
    struct run a = {UINT64_C(0xcbf29ce484222325), 0, WS_NEED_MORE, 0};
    struct ws_parser p;
    ws_parser_init(&p, role);
    memcpy(whole, in, n);
    size_t start = 0;
    drain(&p, whole, &start, n, max, message, &a);

    /* In chunks: 1..16 bytes mostly, sometimes up to 512. */
    struct run b = {UINT64_C(0xcbf29ce484222325), 0, WS_NEED_MORE, 0};
    ws_parser_init(&p, role);
    start = 0;
    size_t have = 0;
    bool alive = true;
    while (have < n && alive) {
        seed = seed * 1103515245u + 12345u;
        uint32_t x = seed >> 16;
        size_t chunk = (x & 0x100) ? 1 + (x & 0x1ff) : 1 + (x & 0xf);
        if (chunk > n - have)
            chunk = n - have;
        memcpy(chunked + have, in + have, chunk);
        have += chunk;
        alive = drain(&p, chunked, &start, have, max, message, &b);
    }
    if (n == 0)
        drain(&p, chunked, &start, 0, max, message, &b);

    if (a.hash != b.hash || a.frames != b.frames || a.last != b.last || a.last_code != b.last_code)
        abort();
    free(whole);
    free(chunked);
    cross_check(role, max, in, n);
    return 0;
}
