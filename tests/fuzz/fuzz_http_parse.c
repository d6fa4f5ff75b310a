/*
 * fuzz_http_parse: the HTTP/1.1 request head parser, the chunked body
 * decoder and the percent-decoder of lib/http_parse.
 *
 * Checks, for the head: the result is 0, a length or one of the documented
 * statuses; 0 only below max_head; a length is <= len and <= max_head and
 * ends with LF; every pointer lies in the head; the fields obey the
 * contract (trimmed values, framing flags consistent, Host in HTTP/1.1);
 * parsing exactly the head gives the same head, every proper prefix of it
 * is incomplete, and one byte less of max_head is -431; any prefix of the
 * input gives 0 or the same answer as the whole input.
 *
 * For the chunked decoder (run on what follows a head, or on the whole
 * input when there is none): decoding in one call and feeding the bytes in
 * pieces (split points taken from the input bytes, and byte by byte for
 * small bodies) give the same status, the same decoded bytes and the same
 * bytes left over; what is left over is always the tail of the input.
 *
 * For the percent-decoder: it agrees with a reference decoder written from
 * the contract, in place and not, and never grows its input.
 */
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_parse.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

/* One input is at most this many bytes (the rest is ignored). */
#define INPUT_MAX 65536
/* The head limit of the first parse: the server's default. */
#define MAX_HEAD 8192
/* Bodies up to this size are also fed one byte at a time. */
#define BYTEWISE_MAX 2048

#define check(cond)                                                                                \
    do {                                                                                           \
        if (!(cond))                                                                               \
            __builtin_trap();                                                                      \
    } while (0)

static bool
inside(const char *p, size_t n, const char *lo, const char *hi)
{
    return p != NULL && p >= lo && p <= hi && n <= (size_t)(hi - p);
}

static bool
valid_status(ssize_t rc)
{
    return rc >= 0 || rc == -400 || rc == -431 || rc == -501 || rc == -505;
}

/* Whether two parses of the same buffer gave the same head. */
static bool
same_head(const struct http_head *a, const struct http_head *b)
{
    if (a->method != b->method || a->method_str != b->method_str ||
        a->method_len != b->method_len || a->target != b->target ||
        a->target_len != b->target_len || a->path != b->path || a->path_len != b->path_len ||
        a->query != b->query || a->query_len != b->query_len || a->minor != b->minor ||
        a->nfields != b->nfields || a->content_length != b->content_length ||
        a->chunked != b->chunked || a->keep_alive != b->keep_alive ||
        a->expect_continue != b->expect_continue)
        return false;
    for (size_t i = 0; i < a->nfields; i++) {
        if (a->fields[i].name != b->fields[i].name ||
            a->fields[i].name_len != b->fields[i].name_len ||
            a->fields[i].value != b->fields[i].value ||
            a->fields[i].value_len != b->fields[i].value_len)
            return false;
    }
    return true;
}

/* The checks of a complete head h of length n at buf. */
static void
check_head(const char *buf, size_t n, const struct http_head *h)
{
    const char *end = buf + n;
    check(n >= 4 && buf[n - 1] == '\n');
    check(inside(h->method_str, h->method_len, buf, end) && h->method_len > 0);
    check(inside(h->target, h->target_len, buf, end) && h->target_len > 0);
    check(inside(h->path, h->path_len, buf, end) && h->path_len > 0 && h->path[0] == '/');
    if (h->query != NULL) {
        check(inside(h->query, h->query_len, buf, end));
        check(h->query > h->target && h->query[-1] == '?');
        check(h->query + h->query_len == h->target + h->target_len);
    } else {
        check(h->query_len == 0);
    }
    check(h->minor == 0 || h->minor == 1);
    check(h->nfields <= HTTP_MAX_FIELDS);
    check(h->content_length >= -1);
    check(!(h->chunked && h->content_length >= 0));
    check(!h->chunked || h->minor == 1);
    check(!h->expect_continue || h->minor == 1);
    if (h->minor == 1)
        check(http_head_field(h, "host") != NULL);
    if (http_head_field(h, "connection") == NULL)
        check(h->keep_alive == (h->minor == 1));
    if (http_head_field(h, "transfer-encoding") == NULL)
        check(!h->chunked);
    if (http_head_field(h, "content-length") == NULL)
        check(h->content_length == -1);
    for (size_t i = 0; i < h->nfields; i++) {
        const struct http_field *f = &h->fields[i];
        check(inside(f->name, f->name_len, buf, end) && f->name_len > 0);
        check(inside(f->value, f->value_len, buf, end));
        check(f->name[f->name_len] == ':');
        for (size_t k = 0; k < f->name_len; k++) {
            unsigned char c = (unsigned char)f->name[k];
            check(c > ' ' && c < 0x7f && c != ':');
        }
        if (f->value_len > 0) {
            check(f->value[0] != ' ' && f->value[0] != '\t');
            check(f->value[f->value_len - 1] != ' ' && f->value[f->value_len - 1] != '\t');
        }
        for (size_t k = 0; k < f->value_len; k++) {
            unsigned char c = (unsigned char)f->value[k];
            check(c == '\t' || (c >= ' ' && c != 0x7f));
        }
        /* the lookup finds this field or an earlier one of the same name */
        char name[128];
        if (f->name_len < sizeof(name)) {
            memcpy(name, f->name, f->name_len);
            name[f->name_len] = '\0';
            const struct http_field *g = http_head_field(h, name);
            check(g != NULL && g <= f && g->name_len == f->name_len &&
                  strncasecmp(g->name, f->name, f->name_len) == 0);
        }
    }
}

/* ---- chunked bodies ---- */

struct run {
    int rc;
    size_t decoded;
    size_t len;
    unsigned char *buf; /* owned; the decoded body then the bytes left over */
};

/* One call of the decoder, with the invariants every call must keep. */
static int
decode_step(struct http_chunked *st, unsigned char *buf, size_t *len, size_t max_body)
{
    size_t before = *len, decoded_before = st->decoded;
    int rc = http_chunked_decode(st, buf, len, max_body);
    check(rc == 1 || rc == 0 || rc == -400 || rc == -413);
    check(*len <= before && st->decoded <= *len && st->decoded >= decoded_before);
    check(st->decoded <= max_body);
    return rc;
}

/*
 * Decodes body[0, n), fed in pieces: a cut after every byte for which
 * cut(i) holds. After the body is complete the rest arrives unparsed, as
 * the next request would.
 */
static void
decode_run(const uint8_t *body, size_t n, size_t max_body, int mode, struct run *r)
{
    struct http_chunked st;
    memset(&st, 0, sizeof(st));
    r->buf = malloc(n ? n : 1);
    check(r->buf != NULL);
    size_t have = 0, len = 0;
    int rc = 0;
    while (rc == 0) {
        size_t end;
        if (mode == 0) {
            end = n; /* one call */
        } else if (mode == 1) {
            end = have < n ? have + 1 : n; /* byte by byte */
        } else {
            /* cut after each byte with its low three bits clear */
            end = have;
            while (end < n && (body[end++] & 7) != 0)
                ;
        }
        memcpy(r->buf + len, body + have, end - have);
        len += end - have;
        have = end;
        rc = decode_step(&st, r->buf, &len, max_body);
        if (have == n)
            break;
    }
    if (rc == 1) {
        /* What follows the message was left in place at st.end (never
         * moved): bring it next to the body, where the checks look. */
        check(st.decoded <= st.end && st.end <= len);
        memmove(r->buf + st.decoded, r->buf + st.end, len - st.end);
        len -= st.end - st.decoded;
        memcpy(r->buf + len, body + have, n - have);
        len += n - have;
    }
    r->rc = rc;
    r->decoded = st.decoded;
    r->len = len;
}

/* The piecewise run b must agree with the one-call run a. */
static void
check_same_run(const struct run *a, const struct run *b)
{
    check(a->rc == b->rc);
    check(a->decoded == b->decoded);
    check(memcmp(a->buf, b->buf, a->decoded) == 0);
    if (a->rc >= 0) {
        check(a->len == b->len);
        check(memcmp(a->buf, b->buf, a->len) == 0);
    } else {
        /* stopped at the error with part of the input: a prefix */
        check(b->len <= a->len);
        check(memcmp(a->buf, b->buf, b->len) == 0);
    }
}

static void
fuzz_chunked(const uint8_t *body, size_t n, size_t max_body)
{
    struct run one, split;
    decode_run(body, n, max_body, 0, &one);
    check(one.decoded <= n);
    if (one.rc >= 0) {
        /* what is left over is the tail of the input, untouched */
        size_t left = one.len - one.decoded;
        check(left <= n && memcmp(one.buf + one.decoded, body + n - left, left) == 0);
        /* the framing costs at least 3 bytes (the last chunk "0" LF LF) */
        if (one.rc == 1)
            check(one.decoded + 3 <= n - left);
    }
    decode_run(body, n, max_body, 2, &split);
    check_same_run(&one, &split);
    free(split.buf);
    if (n <= BYTEWISE_MAX) {
        decode_run(body, n, max_body, 1, &split);
        check_same_run(&one, &split);
        free(split.buf);
    }
    free(one.buf);
}

/* ---- percent-decoding ---- */

static int
ref_hex(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* The contract of http_percent_decode, written out plainly. */
static ssize_t
ref_percent_decode(const char *s, size_t len, char *out, bool plus_space)
{
    size_t o = 0, i = 0;
    while (i < len) {
        unsigned char c = (unsigned char)s[i];
        if (c == '%' && len - i >= 3 && ref_hex((unsigned char)s[i + 1]) >= 0 &&
            ref_hex((unsigned char)s[i + 2]) >= 0) {
            c = (unsigned char)(ref_hex((unsigned char)s[i + 1]) * 16 +
                                ref_hex((unsigned char)s[i + 2]));
            i += 3;
        } else {
            if (c == '+' && plus_space)
                c = ' ';
            i++;
        }
        if (c == 0)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = '\0';
    return (ssize_t)o;
}

static void
fuzz_percent(const char *s, size_t n)
{
    char *out = malloc(n + 1), *ref = malloc(n + 1), *inplace = malloc(n + 1);
    check(out != NULL && ref != NULL && inplace != NULL);
    for (int plus = 0; plus <= 1; plus++) {
        ssize_t r = http_percent_decode(s, n, out, plus);
        ssize_t e = ref_percent_decode(s, n, ref, plus);
        check(r == e);
        check(r >= -1 && (r < 0 || (size_t)r <= n));
        if (r >= 0) {
            check(out[r] == '\0' && memcmp(out, ref, (size_t)r) == 0);
            check(memchr(out, '\0', (size_t)r) == NULL);
        }
        memcpy(inplace, s, n);
        inplace[n] = '\0';
        check(http_percent_decode(inplace, n, inplace, plus) == r);
        if (r >= 0)
            check(memcmp(inplace, ref, (size_t)r + 1) == 0);
    }
    free(out);
    free(ref);
    free(inplace);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > INPUT_MAX)
        size = INPUT_MAX;
    const char *buf = (const char *)data;
    struct http_head h, again;

    ssize_t rc = http_parse_head(buf, size, MAX_HEAD, &h);
    check(valid_status(rc));
    check(rc <= (ssize_t)size && rc <= MAX_HEAD);
    if (rc == 0)
        check(size < MAX_HEAD);

    /* Any prefix: more bytes needed, or already the same answer. */
    const size_t cuts[] = {size / 2, size - (size > 0), size > 0 ? data[0] % size : 0};
    for (size_t i = 0; i < sizeof(cuts) / sizeof(cuts[0]); i++) {
        ssize_t p = http_parse_head(buf, cuts[i], MAX_HEAD, &again);
        check(p == 0 || p == rc);
    }

    /* A smaller limit taken from the input: the same rules. */
    size_t small = size > 0 ? 1 + (size_t)data[size - 1] * 2 : 1;
    ssize_t rs = http_parse_head(buf, size, small, &again);
    check(valid_status(rs) && rs <= (ssize_t)size && rs <= (ssize_t)small);
    if (rs == 0)
        check(size < small);
    if (rs > 0)
        check(rs == rc && same_head(&h, &again));
    if (rc > 0)
        check(rs == ((size_t)rc <= small ? rc : -431));

    if (rc > 0) {
        size_t n = (size_t)rc;
        check_head(buf, n, &h);
        /* Exactly the head: the same head, also at the tightest limit. */
        check(http_parse_head(buf, n, MAX_HEAD, &again) == rc && same_head(&h, &again));
        check(http_parse_head(buf, n, n, &again) == rc && same_head(&h, &again));
        check(http_parse_head(buf, size, n - 1, &again) == -431);
        /* Proper prefixes of the head: incomplete. */
        const size_t hc[] = {0, 1, n / 2, n - 2, n - 1, (size_t)data[0] % n};
        for (size_t i = 0; i < sizeof(hc) / sizeof(hc[0]); i++)
            check(http_parse_head(buf, hc[i], MAX_HEAD, &again) == 0);
        fuzz_percent(h.path, h.path_len);
        if (h.query != NULL)
            fuzz_percent(h.query, h.query_len);
    }

    /* What follows the head (or the whole input) as a chunked body, with
     * no limit, a limit the body may exceed, and a tiny one. */
    size_t off = rc > 0 ? (size_t)rc : 0;
    const uint8_t *body = data + off;
    size_t blen = size - off;
    fuzz_chunked(body, blen, SIZE_MAX);
    fuzz_chunked(body, blen, blen / 2);
    fuzz_chunked(body, blen, 16);

    fuzz_percent(buf, size < 4096 ? size : 4096);
    return 0;
}
