/*
 * pbjson: protobuf-c messages to and from JSON, driven by descriptors
 * (see pbjson.h for the mapping rules).
 *
 * Nothing here knows a message type: every field is reached through its
 * ProtobufCFieldDescriptor (offset of the value, offset of the has_ flag or
 * n_ count, type, nested descriptor). A decoded message is laid out exactly
 * as protobuf-c's unpack would lay it out, with every string, bytes buffer,
 * array and sub-message allocated from the caller's allocator, so
 * protobuf_c_message_free_unpacked() frees it, including a half-decoded
 * message after an error.
 */
#include "pbjson.h"
#include "decimal.h"

#include <float.h>
#include <inttypes.h>
#include <limits.h>
#include <locale.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* No message in proto/ is recursive; this only bounds a future mistake. */
#define PBJSON_MAX_DEPTH 8
/* Elements of one repeated field accepted from JSON. */
#define PBJSON_MAX_REPEATED 100000

/* ---- allocation ------------------------------------------------------- */

/* malloc/free, the same pair protobuf-c uses when given a NULL allocator. */
static void *
std_alloc(void *data, size_t size)
{
    (void)data;
    return malloc(size);
}

static void
std_free(void *data, void *ptr)
{
    (void)data;
    free(ptr);
}

static const ProtobufCAllocator std_allocator = {
    .alloc = std_alloc,
    .free = std_free,
    .allocator_data = NULL,
};

/* ---- field access ----------------------------------------------------- */

/* Address of the member at off inside a message. */
static void *
member(ProtobufCMessage *m, unsigned off)
{
    return (char *)m + off;
}

static const void *
cmember(const ProtobufCMessage *m, unsigned off)
{
    return (const char *)m + off;
}

/* Size of one element of a repeated field of type t. */
static size_t
elem_size(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_ENUM:
        return sizeof(int32_t);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return sizeof(uint64_t);
    case PROTOBUF_C_TYPE_FLOAT:
        return sizeof(float);
    case PROTOBUF_C_TYPE_DOUBLE:
        return sizeof(double);
    case PROTOBUF_C_TYPE_BOOL:
        return sizeof(protobuf_c_boolean);
    case PROTOBUF_C_TYPE_STRING:
        return sizeof(char *);
    case PROTOBUF_C_TYPE_BYTES:
        return sizeof(ProtobufCBinaryData);
    case PROTOBUF_C_TYPE_MESSAGE:
        return sizeof(ProtobufCMessage *);
    }
    return 0;
}

/* The proto name of a type, for error messages. */
static const char *
type_name(ProtobufCType t)
{
    switch (t) {
    case PROTOBUF_C_TYPE_INT32:
        return "int32";
    case PROTOBUF_C_TYPE_SINT32:
        return "sint32";
    case PROTOBUF_C_TYPE_SFIXED32:
        return "sfixed32";
    case PROTOBUF_C_TYPE_UINT32:
        return "uint32";
    case PROTOBUF_C_TYPE_FIXED32:
        return "fixed32";
    case PROTOBUF_C_TYPE_INT64:
        return "int64";
    case PROTOBUF_C_TYPE_SINT64:
        return "sint64";
    case PROTOBUF_C_TYPE_SFIXED64:
        return "sfixed64";
    case PROTOBUF_C_TYPE_UINT64:
        return "uint64";
    case PROTOBUF_C_TYPE_FIXED64:
        return "fixed64";
    case PROTOBUF_C_TYPE_FLOAT:
        return "float";
    case PROTOBUF_C_TYPE_DOUBLE:
        return "double";
    case PROTOBUF_C_TYPE_BOOL:
        return "bool";
    case PROTOBUF_C_TYPE_ENUM:
        return "enum";
    case PROTOBUF_C_TYPE_STRING:
        return "string";
    case PROTOBUF_C_TYPE_BYTES:
        return "bytes";
    case PROTOBUF_C_TYPE_MESSAGE:
        return "message";
    }
    return "?";
}

/* True when every byte of the n at p is zero. */
static bool
all_zero(const void *p, size_t n)
{
    const unsigned char *b = p;
    for (size_t i = 0; i < n; i++)
        if (b[i] != 0)
            return false;
    return true;
}

/*
 * Whether field f of msg is set, following protobuf-c's own packing rules:
 * repeated when non-empty, oneof members when selected, strings and
 * messages when non-NULL (and, if optional, not the default pointer),
 * optional scalars and bytes by their has_ flag, required always, proto3
 * implicit-presence fields when not zero.
 */
static bool
field_is_set(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    if (f->label == PROTOBUF_C_LABEL_REPEATED)
        return *(const size_t *)cmember(msg, f->quantifier_offset) > 0;
    if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
        return *(const uint32_t *)cmember(msg, f->quantifier_offset) == f->id;
    const void *v = cmember(msg, f->offset);
    if (f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE) {
        const void *p = *(const void *const *)v;
        if (p == NULL)
            return false;
        switch (f->label) {
        case PROTOBUF_C_LABEL_OPTIONAL:
            return p != f->default_value;
        case PROTOBUF_C_LABEL_NONE:
            return f->type == PROTOBUF_C_TYPE_MESSAGE || *(const char *)p != '\0';
        default:
            return true;
        }
    }
    switch (f->label) {
    case PROTOBUF_C_LABEL_OPTIONAL:
        return *(const protobuf_c_boolean *)cmember(msg, f->quantifier_offset) != 0;
    case PROTOBUF_C_LABEL_NONE:
        if (f->type == PROTOBUF_C_TYPE_BYTES)
            return ((const ProtobufCBinaryData *)v)->len > 0;
        return !all_zero(v, elem_size(f->type));
    default:
        return true;
    }
}

/* ---- UTF-8 ------------------------------------------------------------ */

/*
 * Length of the well-formed UTF-8 sequence at s (n bytes available), or 0
 * when it is not one: overlong forms, surrogates and code points above
 * U+10FFFF are rejected, as jansson rejects them.
 */
static size_t
utf8_seq_len(const unsigned char *s, size_t n)
{
    unsigned char c = s[0];
    size_t len;
    uint32_t cp;
    if (c < 0x80)
        return 1;
    if (c >= 0xC2 && c <= 0xDF) {
        len = 2;
        cp = c & 0x1F;
    } else if (c >= 0xE0 && c <= 0xEF) {
        len = 3;
        cp = c & 0x0F;
    } else if (c >= 0xF0 && c <= 0xF4) {
        len = 4;
        cp = c & 0x07;
    } else {
        return 0;
    }
    if (n < len)
        return 0;
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xC0) != 0x80)
            return 0;
        cp = (cp << 6) | (s[i] & 0x3F);
    }
    if (len == 3 && (cp < 0x800 || (cp >= 0xD800 && cp <= 0xDFFF)))
        return 0;
    if (len == 4 && (cp < 0x10000 || cp > 0x10FFFF))
        return 0;
    return len;
}

/* ---- encoding --------------------------------------------------------- */

/*
 * The encoder writes compact JSON text straight into a pbjson_buf: no
 * json_t tree, no second pass. Its output is byte for byte what jansson's
 * json_dumps(..., JSON_COMPACT) writes for the same values (string escapes,
 * integer and real formats), so pbjson_encode can be derived from it and
 * the two never disagree (tests/unit/test_pbjson.c checks both).
 */

void
pbjson_buf_init(struct pbjson_buf *b, char *storage, size_t size)
{
    b->data = size > 0 ? storage : NULL;
    b->cap = size > 0 ? size : 0;
    b->len = 0;
    b->owned = false;
    b->oom = false;
    if (b->cap > 0)
        b->data[0] = '\0';
}

void
pbjson_buf_free(struct pbjson_buf *b)
{
    if (b->owned)
        free(b->data);
    b->data = NULL;
    b->len = b->cap = 0;
    b->owned = false;
}

/*
 * Makes room for n more bytes and the NUL after them. After a failure the
 * buffer is marked oom and every later append is a no-op, so writers check
 * once at the end.
 */
static bool
buf_reserve(struct pbjson_buf *b, size_t n)
{
    if (b->oom)
        return false;
    if (b->cap > b->len && n < b->cap - b->len)
        return true;
    if (n > SIZE_MAX / 2 - b->len - 1) {
        b->oom = true;
        return false;
    }
    size_t need = b->len + n + 1;
    size_t cap = b->cap > 128 ? b->cap : 128;
    while (cap < need)
        cap *= 2;
    char *p;
    if (b->owned) {
        p = realloc(b->data, cap);
    } else {
        p = malloc(cap);
        if (p != NULL && b->len > 0)
            memcpy(p, b->data, b->len);
    }
    if (p == NULL) {
        b->oom = true;
        return false;
    }
    b->data = p;
    b->cap = cap;
    b->owned = true;
    return true;
}

static void
buf_put(struct pbjson_buf *b, const void *p, size_t n)
{
    if (!buf_reserve(b, n))
        return;
    memcpy(b->data + b->len, p, n);
    b->len += n;
    b->data[b->len] = '\0';
}

static void
buf_putc(struct pbjson_buf *b, char c)
{
    if (!buf_reserve(b, 1))
        return;
    b->data[b->len++] = c;
    b->data[b->len] = '\0';
}

/* v as a JSON number, or as a JSON string of digits when quoted. */
static void
write_int(struct pbjson_buf *b, uint64_t mag, bool neg, bool quoted)
{
    char tmp[24]; /* '"', '-', 20 digits, '"' */
    char *end = tmp + sizeof(tmp);
    if (quoted)
        *--end = '"';
    char *p = decimal_u64_back(mag, end);
    if (neg)
        *--p = '-';
    if (quoted)
        *--p = '"';
    buf_put(b, p, (size_t)(tmp + sizeof(tmp) - p));
}

static void
write_i64(struct pbjson_buf *b, int64_t v, bool quoted)
{
    uint64_t mag = v < 0 ? (uint64_t)0 - (uint64_t)v : (uint64_t)v;
    write_int(b, mag, v < 0, quoted);
}

/*
 * A finite double as jansson writes a real: "%.17g", the locale's decimal
 * point as '.', ".0" added when it would read back as an integer, and the
 * exponent without '+' or leading zeros.
 */
static void
write_real(struct pbjson_buf *b, double d)
{
    char s[64];
    int r = snprintf(s, sizeof(s), "%.17g", d);
    if (r < 0 || (size_t)r >= sizeof(s) - 3) {
        b->oom = true; /* cannot happen for a double */
        return;
    }
    size_t n = (size_t)r;
    const char *point = localeconv()->decimal_point;
    if (point[0] != '.' && point[0] != '\0') {
        char *pos = strchr(s, point[0]);
        if (pos != NULL)
            *pos = '.';
    }
    if (strchr(s, '.') == NULL && strchr(s, 'e') == NULL) {
        memcpy(s + n, ".0", 3);
        n += 2;
    }
    char *start = strchr(s, 'e');
    if (start != NULL) {
        start++;
        char *end = start + 1;
        if (*start == '-')
            start++;
        while (*end == '0')
            end++;
        if (end != start) {
            memmove(start, end, n - (size_t)(end - s));
            n -= (size_t)(end - start);
        }
    }
    buf_put(b, s, n);
}

/* A double as JSON: a number, or "NaN"/"Infinity"/"-Infinity". */
static void
write_double(struct pbjson_buf *b, double d)
{
    if (isnan(d))
        buf_put(b, "\"NaN\"", 5);
    else if (isinf(d) && d > 0)
        buf_put(b, "\"Infinity\"", 10);
    else if (isinf(d))
        buf_put(b, "\"-Infinity\"", 11);
    else
        write_real(b, d);
}

/*
 * Bytes that stand for themselves inside a JSON string, as jansson writes
 * and reads them: printable ASCII and DEL, except '"' and '\\'.
 */
static const unsigned char json_plain[256] = {
    [0x20 ... 0x21] = 1,
    [0x23 ... 0x5B] = 1,
    [0x5D ... 0x7F] = 1,
};

/*
 * The n bytes at s as a JSON string: each byte that does not start a
 * well-formed UTF-8 sequence becomes U+FFFD; '"', '\\' and control bytes
 * (NUL included) are escaped as jansson escapes them; everything else,
 * '/' and non-ASCII included, is copied.
 */
static void
write_text(struct pbjson_buf *b, const void *data, size_t n)
{
    static const char hex[] = "0123456789ABCDEF";
    const unsigned char *s = data != NULL ? data : (const unsigned char *)"";
    size_t i = 0;
    while (i < n && json_plain[s[i]])
        i++;
    /* Worst case 6 bytes out per byte in (none when all were plain), reserved
     * once: the loop needs no checks. */
    size_t room = i == n ? n + 2 : n * 6 + 2;
    if (n > (SIZE_MAX - 2) / 6 || !buf_reserve(b, room)) {
        b->oom = true;
        return;
    }
    char *o = b->data + b->len;
    *o++ = '"';
    memcpy(o, s, i);
    o += i;
    while (i < n) {
        unsigned char c = s[i];
        if (json_plain[c]) {
            *o++ = (char)c;
            i++;
        } else if (c == '"' || c == '\\') {
            *o++ = '\\';
            *o++ = (char)c;
            i++;
        } else if (c < 0x20) {
            *o++ = '\\';
            switch (c) {
            case '\b':
                *o++ = 'b';
                break;
            case '\f':
                *o++ = 'f';
                break;
            case '\n':
                *o++ = 'n';
                break;
            case '\r':
                *o++ = 'r';
                break;
            case '\t':
                *o++ = 't';
                break;
            default:
                memcpy(o, "u00", 3);
                o[3] = hex[c >> 4];
                o[4] = hex[c & 15];
                o += 5;
            }
            i++;
        } else {
            size_t l = utf8_seq_len(s + i, n - i);
            if (l == 0) {
                memcpy(o, "\xEF\xBF\xBD", 3);
                o += 3;
                i++;
            } else {
                memcpy(o, s + i, l);
                o += l;
                i += l;
            }
        }
    }
    *o++ = '"';
    b->len = (size_t)(o - b->data);
    b->data[b->len] = '\0';
}

static void write_message(struct pbjson_buf *b, const ProtobufCMessage *msg);

/* One value of field f stored at p. */
static void
write_value(struct pbjson_buf *b, const ProtobufCFieldDescriptor *f, const void *p)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        write_i64(b, *(const int32_t *)p, false);
        return;
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        write_int(b, *(const uint32_t *)p, false, false);
        return;
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        write_i64(b, *(const int64_t *)p, true);
        return;
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        write_int(b, *(const uint64_t *)p, false, true);
        return;
    case PROTOBUF_C_TYPE_FLOAT:
        write_double(b, *(const float *)p);
        return;
    case PROTOBUF_C_TYPE_DOUBLE:
        write_double(b, *(const double *)p);
        return;
    case PROTOBUF_C_TYPE_BOOL:
        if (*(const protobuf_c_boolean *)p)
            buf_put(b, "true", 4);
        else
            buf_put(b, "false", 5);
        return;
    case PROTOBUF_C_TYPE_ENUM: {
        int32_t v = *(const int32_t *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        if (ev != NULL)
            write_text(b, ev->name, strlen(ev->name));
        else
            write_i64(b, v, false);
        return;
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        write_text(b, s, s != NULL ? strlen(s) : 0);
        return;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *bd = p;
        write_text(b, bd->data, bd->len);
        return;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
        if (sub != NULL)
            write_message(b, sub);
        else
            buf_put(b, "{}", 2);
        return;
    }
    }
    b->oom = true; /* a type protobuf-c does not have */
}

/* Field f of msg (known to be set): a value, or an array of them. */
static void
write_field(struct pbjson_buf *b, const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED) {
        write_value(b, f, cmember(msg, f->offset));
        return;
    }
    size_t n = *(const size_t *)cmember(msg, f->quantifier_offset);
    const char *arr = *(const void *const *)cmember(msg, f->offset);
    size_t es = elem_size(f->type);
    buf_putc(b, '[');
    for (size_t i = 0; i < n; i++) {
        if (i > 0)
            buf_putc(b, ',');
        write_value(b, f, arr + i * es);
    }
    buf_putc(b, ']');
}

/* msg as a JSON object of its set fields, in field order. */
static void
write_message(struct pbjson_buf *b, const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    bool first = true;
    buf_putc(b, '{');
    for (unsigned i = 0; i < desc->n_fields && !b->oom; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        /* A repeated field is always written, [] when empty: clients index
         * a reply's lists without checking for the key. Every other field
         * is written only when set. */
        if (f->label != PROTOBUF_C_LABEL_REPEATED && !field_is_set(msg, f))
            continue;
        if (!first)
            buf_putc(b, ',');
        first = false;
        write_text(b, f->name, strlen(f->name));
        buf_putc(b, ':');
        write_field(b, msg, f);
    }
    buf_putc(b, '}');
}

bool
pbjson_write(struct pbjson_buf *b, const ProtobufCMessage *msg)
{
    if (msg == NULL || b->oom)
        return false;
    write_message(b, msg);
    return !b->oom;
}

char *
pbjson_encode_text(const ProtobufCMessage *msg, size_t *len)
{
    struct pbjson_buf b;
    pbjson_buf_init(&b, NULL, 0);
    if (!pbjson_write(&b, msg)) {
        pbjson_buf_free(&b);
        return NULL;
    }
    if (len != NULL)
        *len = b.len;
    return b.data;
}

json_t *
pbjson_encode(const ProtobufCMessage *msg)
{
    char stack[1024];
    struct pbjson_buf b;
    pbjson_buf_init(&b, stack, sizeof(stack));
    if (!pbjson_write(&b, msg)) {
        pbjson_buf_free(&b);
        return NULL;
    }
    /* NUL is allowed: bytes fields may hold it (written as \u0000). */
    json_t *j = json_loadb(b.data, b.len, JSON_ALLOW_NUL, NULL);
    pbjson_buf_free(&b);
    return j;
}

/* ---- number and time parsing ------------------------------------------ */

enum num_result { NUM_OK, NUM_SYNTAX, NUM_RANGE };

/*
 * Parses n bytes at s as [-]digits into a sign and magnitude. No '+', no
 * spaces, at least one digit; NUM_RANGE when the magnitude exceeds
 * UINT64_MAX.
 */
static enum num_result
parse_decimal(const char *s, size_t n, bool allow_minus, bool *neg, uint64_t *mag)
{
    size_t i = 0;
    *neg = false;
    if (allow_minus && n > 0 && s[0] == '-') {
        *neg = true;
        i = 1;
    }
    if (i == n)
        return NUM_SYNTAX;
    for (size_t k = i; k < n; k++)
        if (s[k] < '0' || s[k] > '9')
            return NUM_SYNTAX;
    uint64_t v = 0;
    for (; i < n; i++) {
        unsigned d = (unsigned)(s[i] - '0');
        if (v > (UINT64_MAX - d) / 10)
            return NUM_RANGE;
        v = v * 10 + d;
    }
    *mag = v;
    return NUM_OK;
}

bool
pbjson_parse_u64(const char *s, uint64_t *out)
{
    bool neg;
    uint64_t v;
    if (s == NULL || parse_decimal(s, strlen(s), false, &neg, &v) != NUM_OK)
        return false;
    *out = v;
    return true;
}

/* Reads exactly n digits at s into *out. */
static bool
fixed_digits(const char *s, int n, int *out)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        v = v * 10 + (s[i] - '0');
    }
    *out = v;
    return true;
}

/* Days from 1970-01-01 to y-m-d in the proleptic Gregorian calendar. */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
    y -= m <= 2;
    int64_t era = (y >= 0 ? y : y - 399) / 400;
    int64_t yoe = y - era * 400;
    int64_t doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    int64_t doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

static int
days_in_month(int y, int m)
{
    static const int days[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    if (m == 2 && (y % 4 == 0 && (y % 100 != 0 || y % 400 == 0)))
        return 29;
    return days[m - 1];
}

/*
 * Parses the n bytes at s as an RFC 3339 date-time
 * (YYYY-MM-DDTHH:MM:SS[.fraction](Z|+HH:MM|-HH:MM), T and Z in either
 * case) to unix microseconds. Fractions of up to 9 digits are truncated to
 * microseconds; a leap second (:60) counts as the next second.
 */
static bool
parse_rfc3339(const char *s, size_t n, int64_t *out_us)
{
    int y, mo, d, h, mi, sec;
    if (n < 20 || !fixed_digits(s, 4, &y) || s[4] != '-' || !fixed_digits(s + 5, 2, &mo) ||
        s[7] != '-' || !fixed_digits(s + 8, 2, &d) || (s[10] != 'T' && s[10] != 't') ||
        !fixed_digits(s + 11, 2, &h) || s[13] != ':' || !fixed_digits(s + 14, 2, &mi) ||
        s[16] != ':' || !fixed_digits(s + 17, 2, &sec))
        return false;
    if (mo < 1 || mo > 12 || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || sec > 60)
        return false;

    size_t i = 19;
    int64_t frac_us = 0;
    if (s[i] == '.') {
        i++;
        size_t start = i;
        int64_t scale = 100000;
        while (i < n && s[i] >= '0' && s[i] <= '9') {
            frac_us += (s[i] - '0') * scale;
            scale /= 10;
            i++;
        }
        if (i == start || i - start > 9)
            return false;
    }
    if (i >= n)
        return false;

    int64_t offset_s = 0;
    if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == n) {
        offset_s = 0;
    } else if ((s[i] == '+' || s[i] == '-') && i + 6 == n) {
        int oh, om;
        if (!fixed_digits(s + i + 1, 2, &oh) || s[i + 3] != ':' ||
            !fixed_digits(s + i + 4, 2, &om) || oh > 23 || om > 59)
            return false;
        offset_s = (int64_t)oh * 3600 + om * 60;
        if (s[i] == '-')
            offset_s = -offset_s;
    } else {
        return false;
    }

    int64_t secs = days_from_civil(y, mo, d) * 86400 + (int64_t)h * 3600 + mi * 60 + sec - offset_s;
    *out_us = secs * 1000000 + frac_us;
    return true;
}

bool
pbjson_parse_rfc3339(const char *s, int64_t *out_us)
{
    if (s == NULL)
        return false;
    return parse_rfc3339(s, strlen(s), out_us);
}

/* ---- decoding --------------------------------------------------------- */

struct dctx {
    ProtobufCAllocator *user; /* as given: NULL means malloc/free */
    const ProtobufCAllocator *a;
    char *err;
    size_t errlen;
    char path[256]; /* "targeting.platforms[1]" */
    size_t pathlen;
    int depth;
};

/* Replaces every byte outside printable ASCII so err is safe in any JSON. */
static void
make_printable(char *s)
{
    for (; *s != '\0'; s++)
        if ((unsigned char)*s < 0x20 || (unsigned char)*s > 0x7E)
            *s = '?';
}

/* Writes "path: message" into the error buffer; returns false. */
__attribute__((format(printf, 2, 3))) static bool
fail(struct dctx *c, const char *fmt, ...)
{
    if (c->err == NULL || c->errlen == 0)
        return false;
    int n = 0;
    if (c->pathlen > 0)
        n = snprintf(c->err, c->errlen, "%s: ", c->path);
    if (n >= 0 && (size_t)n < c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->err + n, c->errlen - (size_t)n, fmt, ap);
        va_end(ap);
    }
    make_printable(c->err);
    return false;
}

/* Appends to the path; returns the length to restore with path_pop. */
__attribute__((format(printf, 2, 3))) static size_t
path_push(struct dctx *c, const char *fmt, ...)
{
    size_t old = c->pathlen;
    if (c->err == NULL || c->errlen == 0)
        return old; /* the path only serves error messages */
    size_t room = sizeof(c->path) - old;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(c->path + old, room, fmt, ap);
    va_end(ap);
    if (n < 0)
        n = 0;
    c->pathlen = (size_t)n < room ? old + (size_t)n : sizeof(c->path) - 1;
    return old;
}

static void
path_pop(struct dctx *c, size_t old)
{
    c->pathlen = old;
    c->path[old] = '\0';
}

/* Allocates size bytes from the decode allocator. */
static void *
dalloc(struct dctx *c, size_t size)
{
    return c->a->alloc(c->a->allocator_data, size);
}

static bool
is_unsigned(ProtobufCType t)
{
    return t == PROTOBUF_C_TYPE_UINT32 || t == PROTOBUF_C_TYPE_FIXED32 ||
           t == PROTOBUF_C_TYPE_UINT64 || t == PROTOBUF_C_TYPE_FIXED64;
}

static bool
is_64bit(ProtobufCType t)
{
    return t == PROTOBUF_C_TYPE_INT64 || t == PROTOBUF_C_TYPE_SINT64 ||
           t == PROTOBUF_C_TYPE_SFIXED64 || t == PROTOBUF_C_TYPE_UINT64 ||
           t == PROTOBUF_C_TYPE_FIXED64;
}

/* A uint64 field named *_at or *_time: also takes RFC 3339. */
static bool
is_time_field(const ProtobufCFieldDescriptor *f)
{
    if (f->type != PROTOBUF_C_TYPE_UINT64 && f->type != PROTOBUF_C_TYPE_FIXED64)
        return false;
    size_t n = strlen(f->name);
    return (n >= 3 && strcmp(f->name + n - 3, "_at") == 0) ||
           (n >= 5 && strcmp(f->name + n - 5, "_time") == 0);
}

/* Starts like an RFC 3339 date ("2026-"), so is parsed as a time, not digits. */
static bool
looks_like_date(const char *s, size_t n)
{
    int y;
    return n >= 5 && fixed_digits(s, 4, &y) && s[4] == '-';
}

/* What an integer field expects, for error messages. */
static const char *
int_expectation(const ProtobufCFieldDescriptor *f)
{
    if (is_time_field(f))
        return "an unsigned 64-bit integer (string or number) or an RFC 3339 time";
    if (is_64bit(f->type))
        return is_unsigned(f->type) ? "an unsigned 64-bit integer (string or number)"
                                    : "a 64-bit integer (string or number)";
    return is_unsigned(f->type) ? "an unsigned 32-bit integer" : "a 32-bit integer";
}

/*
 * One JSON value as the field decoders below see it, whichever reader
 * produced it: the jansson tree (any JSON) or the fast reader (the plain
 * subset clients send; see fast_decode). Objects and arrays are only a kind
 * here: the readers walk them themselves and call the same field functions.
 */
enum jkind { JK_NULL, JK_TRUE, JK_FALSE, JK_INTEGER, JK_REAL, JK_STRING, JK_OBJECT, JK_ARRAY };

struct jvalue {
    enum jkind kind;
    json_int_t i;  /* JK_INTEGER */
    double d;      /* JK_REAL */
    const char *s; /* JK_STRING: n bytes, may hold NUL */
    size_t n;
    bool terminated; /* s[n] is a NUL (jansson strings are; the fast reader's are not) */
};

/* A jansson value as a jvalue (pointing into v). */
static void
jvalue_of(const json_t *v, struct jvalue *out)
{
    memset(out, 0, sizeof(*out));
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        out->kind = JK_OBJECT;
        break;
    case JSON_ARRAY:
        out->kind = JK_ARRAY;
        break;
    case JSON_STRING:
        out->kind = JK_STRING;
        out->s = json_string_value(v);
        out->n = json_string_length(v);
        out->terminated = true;
        break;
    case JSON_INTEGER:
        out->kind = JK_INTEGER;
        out->i = json_integer_value(v);
        break;
    case JSON_REAL:
        out->kind = JK_REAL;
        out->d = json_real_value(v);
        break;
    case JSON_TRUE:
        out->kind = JK_TRUE;
        break;
    case JSON_FALSE:
        out->kind = JK_FALSE;
        break;
    case JSON_NULL:
    default:
        out->kind = JK_NULL;
        break;
    }
}

/* Whether the string value reads as lit as a C string would (up to its first NUL). */
static bool
jstr_is(const struct jvalue *v, const char *lit)
{
    size_t n = strlen(lit);
    return v->kind == JK_STRING && strnlen(v->s, v->n) == n && memcmp(v->s, lit, n) == 0;
}

/*
 * Decodes an integer field value (JSON integer, decimal string, or for
 * time fields an RFC 3339 string), range-checked for f's type, into the
 * int32/uint32/int64/uint64 at slot.
 */
static bool
decode_integer(struct dctx *c, const ProtobufCFieldDescriptor *f, const struct jvalue *v,
               void *slot)
{
    bool neg;
    uint64_t mag;
    char shown[48]; /* the value as written, for range errors */

    if (v->kind == JK_INTEGER) {
        json_int_t x = v->i;
        neg = x < 0;
        mag = neg ? (uint64_t)(-(x + 1)) + 1 : (uint64_t)x;
        if (c->err != NULL)
            snprintf(shown, sizeof(shown), "%" JSON_INTEGER_FORMAT, x);
    } else if (v->kind == JK_STRING) {
        const char *s = v->s;
        size_t n = v->n;
        if (is_time_field(f) && looks_like_date(s, n)) {
            int64_t us;
            if (!parse_rfc3339(s, n, &us))
                return fail(c, "invalid RFC 3339 time");
            if (us < 0)
                return fail(c, "time before 1970");
            *(uint64_t *)slot = (uint64_t)us;
            return true;
        }
        enum num_result r = parse_decimal(s, n, true, &neg, &mag);
        if (r == NUM_SYNTAX)
            return fail(c, "expected %s", int_expectation(f));
        /* Only digits and '-' reach here; very long values are cut short. */
        if (c->err != NULL)
            snprintf(shown, sizeof(shown), "%.*s%s", 40, s, n > 40 ? "..." : "");
        if (r == NUM_RANGE)
            return fail(c, "value %s out of range for %s", shown, type_name(f->type));
    } else {
        return fail(c, "expected %s", int_expectation(f));
    }

    uint64_t max;
    if (is_64bit(f->type))
        max = is_unsigned(f->type) ? UINT64_MAX : (uint64_t)INT64_MAX;
    else
        max = is_unsigned(f->type) ? UINT32_MAX : (uint64_t)INT32_MAX;
    bool ok;
    if (neg)
        ok = !is_unsigned(f->type) && mag <= max + 1;
    else
        ok = mag <= max;
    if (!ok)
        return fail(c, "value %s out of range for %s", shown, type_name(f->type));

    if (is_64bit(f->type)) {
        if (is_unsigned(f->type))
            *(uint64_t *)slot = mag;
        else
            *(int64_t *)slot =
                neg ? (mag == (uint64_t)INT64_MAX + 1 ? INT64_MIN : -(int64_t)mag) : (int64_t)mag;
    } else {
        if (is_unsigned(f->type))
            *(uint32_t *)slot = (uint32_t)mag;
        else
            *(int32_t *)slot = neg ? (int32_t)(-(int64_t)mag) : (int32_t)mag;
    }
    return true;
}

/* A float or double: a JSON number or "NaN", "Infinity", "-Infinity". */
static bool
decode_real(struct dctx *c, const ProtobufCFieldDescriptor *f, const struct jvalue *v, void *slot)
{
    double d;
    if (v->kind == JK_INTEGER) {
        d = (double)v->i;
    } else if (v->kind == JK_REAL) {
        d = v->d;
    } else if (jstr_is(v, "NaN")) {
        d = NAN;
    } else if (jstr_is(v, "Infinity")) {
        d = INFINITY;
    } else if (jstr_is(v, "-Infinity")) {
        d = -INFINITY;
    } else {
        return fail(c, "expected a number");
    }
    if (f->type == PROTOBUF_C_TYPE_FLOAT) {
        if (isfinite(d) && fabs(d) > FLT_MAX)
            return fail(c, "value out of range for float");
        *(float *)slot = (float)d;
    } else {
        *(double *)slot = d;
    }
    return true;
}

/* An enum: its value name, or a JSON integer that is a known value. */
static bool
decode_enum(struct dctx *c, const ProtobufCFieldDescriptor *f, const struct jvalue *v, void *slot)
{
    const ProtobufCEnumDescriptor *ed = f->descriptor;
    const ProtobufCEnumValue *ev = NULL;
    if (v->kind == JK_STRING) {
        /* The name as a C string would read (up to a NUL), as protobuf-c looks it up. */
        char name[128];
        size_t n = strnlen(v->s, v->n);
        if (v->terminated) {
            ev = protobuf_c_enum_descriptor_get_value_by_name(ed, v->s);
        } else if (n < sizeof(name)) {
            memcpy(name, v->s, n);
            name[n] = '\0';
            ev = protobuf_c_enum_descriptor_get_value_by_name(ed, name);
        }
    } else if (v->kind == JK_INTEGER && v->i >= INT32_MIN && v->i <= INT32_MAX) {
        ev = protobuf_c_enum_descriptor_get_value(ed, (int)v->i);
    } else {
        return fail(c, "expected an enum name or number");
    }
    if (ev == NULL)
        return fail(c, "not a value of %s", ed->name);
    *(int32_t *)slot = ev->value;
    return true;
}

/* Decodes one non-message value of field f into slot (a member or an array element). */
static bool
decode_scalar(struct dctx *c, const ProtobufCFieldDescriptor *f, const struct jvalue *v, void *slot)
{
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        return decode_integer(c, f, v, slot);
    case PROTOBUF_C_TYPE_FLOAT:
    case PROTOBUF_C_TYPE_DOUBLE:
        return decode_real(c, f, v, slot);
    case PROTOBUF_C_TYPE_ENUM:
        return decode_enum(c, f, v, slot);
    case PROTOBUF_C_TYPE_BOOL:
        if (v->kind != JK_TRUE && v->kind != JK_FALSE)
            return fail(c, "expected true or false");
        *(protobuf_c_boolean *)slot = v->kind == JK_TRUE;
        return true;
    case PROTOBUF_C_TYPE_STRING: {
        if (v->kind != JK_STRING)
            return fail(c, "expected a string");
        size_t n = v->n;
        if (memchr(v->s, '\0', n) != NULL)
            return fail(c, "string contains a NUL character");
        char *copy = dalloc(c, n + 1);
        if (copy == NULL)
            return fail(c, "out of memory");
        memcpy(copy, v->s, n);
        copy[n] = '\0';
        *(char **)slot = copy;
        return true;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        if (v->kind != JK_STRING)
            return fail(c, "expected a string");
        ProtobufCBinaryData *bd = slot;
        size_t n = v->n;
        bd->len = 0;
        bd->data = NULL;
        if (n > 0) {
            bd->data = dalloc(c, n);
            if (bd->data == NULL)
                return fail(c, "out of memory");
            memcpy(bd->data, v->s, n);
            bd->len = n;
        }
        return true;
    }
    case PROTOBUF_C_TYPE_MESSAGE:
        break; /* the readers decode messages themselves */
    }
    return fail(c, "unsupported field type");
}

/* Writes key into buf as printable ASCII, cut at 64 characters. */
static void
printable_key(char *buf, size_t size, const char *key, size_t keylen)
{
    size_t o = 0;
    for (size_t i = 0; i < keylen && o + 4 < size; i++) {
        if (i == 64) {
            memcpy(buf + o, "...", 3);
            o += 3;
            break;
        }
        unsigned char ch = (unsigned char)key[i];
        buf[o++] = ch >= 0x20 && ch <= 0x7E ? (char)ch : '?';
    }
    buf[o] = '\0';
}

/*
 * The field of desc named by key (keylen bytes, key[keylen] a NUL), or
 * NULL with the "unknown field" error.
 */
static const ProtobufCFieldDescriptor *
field_by_key(struct dctx *c, const ProtobufCMessageDescriptor *desc, const char *key, size_t keylen)
{
    const ProtobufCFieldDescriptor *f = NULL;
    /* A key with an embedded NUL must not match the field it starts with. */
    if (strlen(key) == keylen)
        f = protobuf_c_message_descriptor_get_field_by_name(desc, key);
    if (f == NULL && c->err != NULL && c->errlen > 0) {
        char shown[80];
        printable_key(shown, sizeof(shown), key, keylen);
        /* The whole path goes inside the quotes: "unknown field 'targeting.x'". */
        snprintf(c->err, c->errlen, "unknown field '%s%s%s'", c->path, c->pathlen > 0 ? "." : "",
                 shown);
        make_printable(c->err);
    }
    return f;
}

/*
 * Before a non-null value of field f is decoded into m: refuses a second
 * member of a oneof and a field set twice; marks a oneof member as the one
 * selected (before its value is decoded, so freeing a half-decoded message
 * frees the right member).
 */
static bool
field_begin(struct dctx *c, ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        *(const uint32_t *)member(m, f->quantifier_offset) != 0) {
        /* Another member of the oneof was set: its value shares the memory. */
        return fail(c, "another member of its oneof is already set");
    }
    if (field_is_set(m, f)) {
        /* Cannot happen with unique keys; guards against leaking. */
        return fail(c, "set more than once");
    }
    if (f->label != PROTOBUF_C_LABEL_REPEATED && (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF))
        *(uint32_t *)member(m, f->quantifier_offset) = f->id;
    return true;
}

/* After a singular value of field f was decoded into m: its has_ flag. */
static void
field_end(ProtobufCMessage *m, const ProtobufCFieldDescriptor *f)
{
    if (f->label == PROTOBUF_C_LABEL_OPTIONAL && !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
        f->type != PROTOBUF_C_TYPE_STRING && f->type != PROTOBUF_C_TYPE_MESSAGE)
        *(protobuf_c_boolean *)member(m, f->quantifier_offset) = 1;
}

/* After the last member of an object: every required field is there. */
static bool
check_required(struct dctx *c, const ProtobufCMessageDescriptor *desc, ProtobufCMessage *m)
{
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (f->label != PROTOBUF_C_LABEL_REQUIRED)
            continue;
        if ((f->type == PROTOBUF_C_TYPE_STRING || f->type == PROTOBUF_C_TYPE_MESSAGE) &&
            *(void **)member(m, f->offset) == NULL)
            return fail(c, "missing required field '%s'", f->name);
    }
    return true;
}

/*
 * A new, initialised message of type desc for an object value of kind k,
 * allocated from the decode allocator; NULL with the error when the value
 * is not an object, is nested too deep, or on OOM.
 */
static ProtobufCMessage *
message_new(struct dctx *c, const ProtobufCMessageDescriptor *desc, enum jkind k)
{
    if (k != JK_OBJECT) {
        fail(c, c->depth == 0 ? "expected a JSON object" : "expected an object");
        return NULL;
    }
    if (c->depth >= PBJSON_MAX_DEPTH) {
        fail(c, "nested deeper than %d objects", PBJSON_MAX_DEPTH);
        return NULL;
    }
    ProtobufCMessage *m = dalloc(c, desc->sizeof_message);
    if (m == NULL) {
        fail(c, "out of memory");
        return NULL;
    }
    protobuf_c_message_init(desc, m);
    return m;
}

/* ---- decoding a jansson tree (any JSON) -------------------------------- */

static ProtobufCMessage *decode_message(struct dctx *c, const ProtobufCMessageDescriptor *desc,
                                        const json_t *obj);

/* Decodes one value of field f into slot (a member or an array element). */
static bool
decode_value(struct dctx *c, const ProtobufCFieldDescriptor *f, const json_t *v, void *slot)
{
    if (f->type == PROTOBUF_C_TYPE_MESSAGE) {
        ProtobufCMessage *sub = decode_message(c, f->descriptor, v);
        if (sub == NULL)
            return false;
        *(ProtobufCMessage **)slot = sub;
        return true;
    }
    struct jvalue jv;
    jvalue_of(v, &jv);
    return decode_scalar(c, f, &jv, slot);
}

/* Decodes a repeated field from a JSON array into m. */
static bool
decode_repeated(struct dctx *c, const ProtobufCFieldDescriptor *f, const json_t *v,
                ProtobufCMessage *m)
{
    if (!json_is_array(v))
        return fail(c, "expected an array");
    size_t n = json_array_size(v);
    if (n > PBJSON_MAX_REPEATED)
        return fail(c, "too many elements (%zu, at most %d)", n, PBJSON_MAX_REPEATED);
    if (n == 0)
        return true;
    size_t es = elem_size(f->type);
    char *arr = dalloc(c, n * es);
    if (arr == NULL)
        return fail(c, "out of memory");
    /* Zeroed and attached first, so freeing a half-filled array is safe. */
    memset(arr, 0, n * es);
    *(void **)member(m, f->offset) = arr;
    *(size_t *)member(m, f->quantifier_offset) = n;
    for (size_t i = 0; i < n; i++) {
        size_t old = path_push(c, "[%zu]", i);
        bool ok = decode_value(c, f, json_array_get(v, i), arr + i * es);
        path_pop(c, old);
        if (!ok)
            return false;
    }
    return true;
}

/* Decodes the members of obj into the fields of m. */
static bool
decode_fields(struct dctx *c, const ProtobufCMessageDescriptor *desc, const json_t *obj,
              ProtobufCMessage *m)
{
    /* jansson's iterator API wants a non-const object; nothing is modified. */
    json_t *o = (json_t *)obj;
    for (void *it = json_object_iter(o); it != NULL; it = json_object_iter_next(o, it)) {
        json_t *v = json_object_iter_value(it);
        const ProtobufCFieldDescriptor *f =
            field_by_key(c, desc, json_object_iter_key(it), json_object_iter_key_len(it));
        if (f == NULL)
            return false;
        if (json_is_null(v))
            continue;

        size_t old = path_push(c, "%s%s", c->pathlen > 0 ? "." : "", f->name);
        bool ok = field_begin(c, m, f);
        if (ok && f->label == PROTOBUF_C_LABEL_REPEATED) {
            ok = decode_repeated(c, f, v, m);
        } else if (ok) {
            ok = decode_value(c, f, v, member(m, f->offset));
            if (ok)
                field_end(m, f);
        }
        path_pop(c, old);
        if (!ok)
            return false;
    }
    return check_required(c, desc, m);
}

/*
 * Decodes obj into a new message of type desc, allocated from the decode
 * allocator. On error the partial message is freed and NULL returned.
 */
static ProtobufCMessage *
decode_message(struct dctx *c, const ProtobufCMessageDescriptor *desc, const json_t *obj)
{
    ProtobufCMessage *m = message_new(c, desc, json_is_object(obj) ? JK_OBJECT : JK_NULL);
    if (m == NULL)
        return NULL;
    c->depth++;
    bool ok = decode_fields(c, desc, obj, m);
    c->depth--;
    if (!ok) {
        protobuf_c_message_free_unpacked(m, c->user);
        return NULL;
    }
    return m;
}

ProtobufCMessage *
pbjson_decode(const ProtobufCMessageDescriptor *desc, const json_t *obj, ProtobufCAllocator *alloc,
              char *err, size_t errlen)
{
    struct dctx c = {
        .user = alloc,
        .a = alloc != NULL ? alloc : &std_allocator,
        .err = err,
        .errlen = errlen,
    };
    if (err != NULL && errlen > 0)
        err[0] = '\0';
    return decode_message(&c, desc, obj);
}

/* ---- decoding plain JSON text directly (the fast path) ------------------ */

/*
 * Requests are small objects of plain values ({"cursor":"...","limit":10}),
 * and building a jansson tree for them cost more than the rest of their
 * decoding. fast_decode reads such a body in one pass, straight into the
 * message, through the same field functions as the tree decoder
 * (field_by_key, field_begin, decode_scalar, field_end, check_required,
 * message_new), so the mapping exists once.
 *
 * It reads a subset of JSON: objects, arrays of scalars, strings of
 * printable ASCII (and DEL) without escapes, integers of at most 18 digits, true,
 * false and null. Anything else (arrays of objects, reals, escapes,
 * non-ASCII, a duplicate or overlong key), a
 * syntax error or a mapping error makes it give up, and the caller decodes
 * the body again through jansson, which accepts or rejects it with its
 * exact messages. So what it accepts is what the jansson path accepts, with
 * the same result: the subset is valid JSON that jansson parses to the same
 * members in the same order, and the members go through the same functions.
 * No error text is ever produced here (the context has no error buffer).
 */
#define FAST_KEY_MAX 64

struct fast {
    const char *p, *end;
};

static void
fast_ws(struct fast *r)
{
    while (r->p < r->end && (*r->p == ' ' || *r->p == '\t' || *r->p == '\n' || *r->p == '\r'))
        r->p++;
}

/* A string of plain bytes (json_plain: no escapes, ASCII); false to give up. */
static bool
fast_string(struct fast *r, const char **s, size_t *n)
{
    if (r->p >= r->end || *r->p != '"')
        return false;
    const char *start = ++r->p;
    const char *q = memchr(start, '"', (size_t)(r->end - start));
    if (q == NULL)
        return false;
    for (const char *c = start; c < q; c++)
        if (!json_plain[(unsigned char)*c])
            return false;
    *s = start;
    *n = (size_t)(q - start);
    r->p = q + 1;
    return true;
}

/* Whether the literal lit is next and ends there (no letter or digit after it). */
static bool
fast_literal(struct fast *r, const char *lit, size_t n)
{
    if ((size_t)(r->end - r->p) < n || memcmp(r->p, lit, n) != 0)
        return false;
    r->p += n;
    return r->p == r->end || !((*r->p >= 'a' && *r->p <= 'z') || (*r->p >= 'A' && *r->p <= 'Z') ||
                               (*r->p >= '0' && *r->p <= '9'));
}

/* An integer as JSON writes one (no leading zeros) of at most 18 digits. */
static bool
fast_integer(struct fast *r, json_int_t *out)
{
    bool neg = false;
    if (r->p < r->end && *r->p == '-') {
        neg = true;
        r->p++;
    }
    const char *start = r->p;
    while (r->p < r->end && *r->p >= '0' && *r->p <= '9')
        r->p++;
    size_t digits = (size_t)(r->p - start);
    if (digits == 0 || digits > 18 || (digits > 1 && *start == '0'))
        return false;
    json_int_t v = 0; /* 18 digits cannot overflow */
    for (const char *d = start; d < r->p; d++)
        v = v * 10 + (*d - '0');
    /* A fraction or exponent makes it a real: not read here. */
    if (r->p < r->end && (*r->p == '.' || *r->p == 'e' || *r->p == 'E'))
        return false;
    *out = neg ? -v : v;
    return true;
}

/* A non-object, non-array value into v; false to give up. */
static bool
fast_scalar(struct fast *r, struct jvalue *v)
{
    memset(v, 0, sizeof(*v));
    if (r->p >= r->end)
        return false;
    switch (*r->p) {
    case '"':
        v->kind = JK_STRING;
        return fast_string(r, &v->s, &v->n);
    case 't':
        v->kind = JK_TRUE;
        return fast_literal(r, "true", 4);
    case 'f':
        v->kind = JK_FALSE;
        return fast_literal(r, "false", 5);
    case 'n':
        v->kind = JK_NULL;
        return fast_literal(r, "null", 4);
    default:
        v->kind = JK_INTEGER;
        return fast_integer(r, &v->i);
    }
}

/*
 * A repeated non-message field from the array at r (at its '['): counted
 * first, so the array is allocated once, as the tree decoder does. Elements
 * must be plain scalars (null is an error of the mapping); false to give up.
 */
static bool
fast_repeated(struct dctx *c, const ProtobufCFieldDescriptor *f, struct fast *r,
              ProtobufCMessage *m)
{
    struct fast scan = *r;
    struct jvalue v;
    size_t n = 0;
    scan.p++;
    fast_ws(&scan);
    if (scan.p < scan.end && *scan.p == ']') {
        r->p = scan.p + 1;
        return true;
    }
    for (;;) {
        fast_ws(&scan);
        if (!fast_scalar(&scan, &v) || v.kind == JK_NULL || ++n > PBJSON_MAX_REPEATED)
            return false;
        fast_ws(&scan);
        if (scan.p >= scan.end)
            return false;
        if (*scan.p == ']')
            break;
        if (*scan.p != ',')
            return false;
        scan.p++;
    }
    size_t es = elem_size(f->type);
    char *arr = dalloc(c, n * es);
    if (arr == NULL)
        return false;
    /* Zeroed and attached first, so freeing a half-filled array is safe. */
    memset(arr, 0, n * es);
    *(void **)member(m, f->offset) = arr;
    *(size_t *)member(m, f->quantifier_offset) = n;
    r->p++;
    for (size_t i = 0; i < n; i++) {
        fast_ws(r);
        if (!fast_scalar(r, &v) || !decode_scalar(c, f, &v, arr + i * es))
            return false;
        fast_ws(r);
        r->p++; /* the ',' or ']' the scan saw */
    }
    return true;
}

static ProtobufCMessage *fast_message(struct dctx *c, const ProtobufCMessageDescriptor *desc,
                                      struct fast *r);

/* The members of the object at r (after its '{') into m; false to give up. */
static bool
fast_fields(struct dctx *c, const ProtobufCMessageDescriptor *desc, struct fast *r,
            ProtobufCMessage *m)
{
    uint64_t seen = 0; /* fields met so far: a duplicate key is jansson's error */
    if (desc->n_fields > 64)
        return false;
    fast_ws(r);
    if (r->p < r->end && *r->p == '}') {
        r->p++;
        return check_required(c, desc, m);
    }
    for (;;) {
        const char *key;
        size_t keylen;
        char kbuf[FAST_KEY_MAX];
        fast_ws(r);
        if (!fast_string(r, &key, &keylen) || keylen >= sizeof(kbuf))
            return false;
        memcpy(kbuf, key, keylen);
        kbuf[keylen] = '\0';
        const ProtobufCFieldDescriptor *f = field_by_key(c, desc, kbuf, keylen);
        if (f == NULL)
            return false;
        uint64_t bit = (uint64_t)1 << (f - desc->fields);
        if (seen & bit)
            return false;
        seen |= bit;
        fast_ws(r);
        if (r->p >= r->end || *r->p != ':')
            return false;
        r->p++;
        fast_ws(r);
        if (r->p >= r->end)
            return false;
        if (*r->p == '[') {
            if (f->label != PROTOBUF_C_LABEL_REPEATED || f->type == PROTOBUF_C_TYPE_MESSAGE ||
                !field_begin(c, m, f) || !fast_repeated(c, f, r, m))
                return false;
        } else if (*r->p == '{') {
            if (f->type != PROTOBUF_C_TYPE_MESSAGE || f->label == PROTOBUF_C_LABEL_REPEATED ||
                !field_begin(c, m, f))
                return false;
            ProtobufCMessage *sub = fast_message(c, f->descriptor, r);
            if (sub == NULL)
                return false;
            *(ProtobufCMessage **)member(m, f->offset) = sub;
            field_end(m, f);
        } else {
            struct jvalue v;
            if (!fast_scalar(r, &v))
                return false;
            if (v.kind != JK_NULL) {
                if (f->label == PROTOBUF_C_LABEL_REPEATED || f->type == PROTOBUF_C_TYPE_MESSAGE ||
                    !field_begin(c, m, f) || !decode_scalar(c, f, &v, member(m, f->offset)))
                    return false;
                field_end(m, f);
            }
        }
        fast_ws(r);
        if (r->p >= r->end)
            return false;
        if (*r->p == '}') {
            r->p++;
            return check_required(c, desc, m);
        }
        if (*r->p != ',')
            return false;
        r->p++;
    }
}

/* The object at r as a new message of type desc; NULL to give up (nothing leaks). */
static ProtobufCMessage *
fast_message(struct dctx *c, const ProtobufCMessageDescriptor *desc, struct fast *r)
{
    if (r->p >= r->end || *r->p != '{')
        return NULL;
    r->p++;
    ProtobufCMessage *m = message_new(c, desc, JK_OBJECT);
    if (m == NULL)
        return NULL;
    c->depth++;
    bool ok = fast_fields(c, desc, r, m);
    c->depth--;
    if (!ok) {
        protobuf_c_message_free_unpacked(m, c->user);
        return NULL;
    }
    return m;
}

/* The whole body as one object of type desc, or NULL: decode it through jansson instead. */
static ProtobufCMessage *
fast_decode(const ProtobufCMessageDescriptor *desc, const char *body, size_t len,
            ProtobufCAllocator *alloc)
{
    struct dctx c = {
        .user = alloc,
        .a = alloc != NULL ? alloc : &std_allocator,
    };
    struct fast r = {.p = body, .end = body + len};
    fast_ws(&r);
    ProtobufCMessage *m = fast_message(&c, desc, &r);
    if (m == NULL)
        return NULL;
    fast_ws(&r);
    if (r.p != r.end) {
        protobuf_c_message_free_unpacked(m, alloc);
        return NULL;
    }
    return m;
}

ProtobufCMessage *
pbjson_decode_bytes(const ProtobufCMessageDescriptor *desc, const void *body, size_t len,
                    size_t max_len, ProtobufCAllocator *alloc, char *err, size_t errlen)
{
    if (len > max_len) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "body too large (%zu bytes, at most %zu)", len, max_len);
        return NULL;
    }
    ProtobufCMessage *fast = body != NULL ? fast_decode(desc, body, len, alloc) : NULL;
    if (fast != NULL) {
        if (err != NULL && errlen > 0)
            err[0] = '\0';
        return fast;
    }
    json_error_t jerr;
    /*
     * NUL is allowed in JSON strings (bytes fields hold it; string fields
     * reject it). Any top-level value is parsed so that a non-object gets
     * the same "expected a JSON object" as from pbjson_decode. Trailing
     * data after the value is an error (no JSON_DISABLE_EOF_CHECK).
     */
    json_t *root = json_loadb(body != NULL ? body : "", len,
                              JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL | JSON_DECODE_ANY, &jerr);
    if (root == NULL) {
        if (err != NULL && errlen > 0) {
            snprintf(err, errlen, "invalid JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                     jerr.column);
            make_printable(err);
        }
        return NULL;
    }
    ProtobufCMessage *m = pbjson_decode(desc, root, alloc, err, errlen);
    json_decref(root);
    return m;
}
