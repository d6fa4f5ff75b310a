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

#include <float.h>
#include <inttypes.h>
#include <limits.h>
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

/*
 * A JSON string holding the n bytes at s, each byte that does not start a
 * well-formed UTF-8 sequence replaced by U+FFFD. NUL bytes are kept (they
 * become \u0000). NULL on OOM.
 */
static json_t *
text_to_json(const void *data, size_t n)
{
    const unsigned char *s = data != NULL ? data : (const unsigned char *)"";
    size_t i = 0;
    while (i < n) {
        size_t l = utf8_seq_len(s + i, n - i);
        if (l == 0)
            break;
        i += l;
    }
    if (i == n)
        return json_stringn((const char *)s, n);

    if (n > (SIZE_MAX - 1) / 3)
        return NULL;
    unsigned char *out = malloc(n * 3 + 1);
    if (out == NULL)
        return NULL;
    memcpy(out, s, i);
    size_t o = i;
    while (i < n) {
        size_t l = utf8_seq_len(s + i, n - i);
        if (l == 0) {
            out[o++] = 0xEF;
            out[o++] = 0xBF;
            out[o++] = 0xBD;
            i++;
        } else {
            memcpy(out + o, s + i, l);
            o += l;
            i += l;
        }
    }
    json_t *j = json_stringn((const char *)out, o);
    free(out);
    return j;
}

/* ---- encoding --------------------------------------------------------- */

static json_t *encode_message(const ProtobufCMessage *msg);

/* A double as JSON: a number, or "NaN"/"Infinity"/"-Infinity". */
static json_t *
encode_double(double d)
{
    if (isnan(d))
        return json_string("NaN");
    if (isinf(d))
        return json_string(d > 0 ? "Infinity" : "-Infinity");
    return json_real(d);
}

/* One value of field f stored at p, as a new JSON value (NULL on OOM). */
static json_t *
encode_value(const ProtobufCFieldDescriptor *f, const void *p)
{
    char buf[24];
    switch (f->type) {
    case PROTOBUF_C_TYPE_INT32:
    case PROTOBUF_C_TYPE_SINT32:
    case PROTOBUF_C_TYPE_SFIXED32:
        return json_integer(*(const int32_t *)p);
    case PROTOBUF_C_TYPE_UINT32:
    case PROTOBUF_C_TYPE_FIXED32:
        return json_integer(*(const uint32_t *)p);
    case PROTOBUF_C_TYPE_INT64:
    case PROTOBUF_C_TYPE_SINT64:
    case PROTOBUF_C_TYPE_SFIXED64:
        snprintf(buf, sizeof(buf), "%" PRId64, *(const int64_t *)p);
        return json_string(buf);
    case PROTOBUF_C_TYPE_UINT64:
    case PROTOBUF_C_TYPE_FIXED64:
        snprintf(buf, sizeof(buf), "%" PRIu64, *(const uint64_t *)p);
        return json_string(buf);
    case PROTOBUF_C_TYPE_FLOAT:
        return encode_double(*(const float *)p);
    case PROTOBUF_C_TYPE_DOUBLE:
        return encode_double(*(const double *)p);
    case PROTOBUF_C_TYPE_BOOL:
        return json_boolean(*(const protobuf_c_boolean *)p);
    case PROTOBUF_C_TYPE_ENUM: {
        int32_t v = *(const int32_t *)p;
        const ProtobufCEnumValue *ev = protobuf_c_enum_descriptor_get_value(f->descriptor, v);
        return ev != NULL ? json_string(ev->name) : json_integer(v);
    }
    case PROTOBUF_C_TYPE_STRING: {
        const char *s = *(const char *const *)p;
        return text_to_json(s, s != NULL ? strlen(s) : 0);
    }
    case PROTOBUF_C_TYPE_BYTES: {
        const ProtobufCBinaryData *bd = p;
        return text_to_json(bd->data, bd->len);
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        const ProtobufCMessage *sub = *(const ProtobufCMessage *const *)p;
        return sub != NULL ? encode_message(sub) : json_object();
    }
    }
    return NULL;
}

/* Field f of msg (known to be set) as a new JSON value. */
static json_t *
encode_field(const ProtobufCMessage *msg, const ProtobufCFieldDescriptor *f)
{
    if (f->label != PROTOBUF_C_LABEL_REPEATED)
        return encode_value(f, cmember(msg, f->offset));

    size_t n = *(const size_t *)cmember(msg, f->quantifier_offset);
    const char *arr = *(const void *const *)cmember(msg, f->offset);
    size_t es = elem_size(f->type);
    json_t *a = json_array();
    if (a == NULL)
        return NULL;
    for (size_t i = 0; i < n; i++) {
        if (json_array_append_new(a, encode_value(f, arr + i * es)) != 0) {
            json_decref(a);
            return NULL;
        }
    }
    return a;
}

/* msg as a new JSON object holding its set fields (NULL on OOM). */
static json_t *
encode_message(const ProtobufCMessage *msg)
{
    const ProtobufCMessageDescriptor *desc = msg->descriptor;
    json_t *obj = json_object();
    if (obj == NULL)
        return NULL;
    for (unsigned i = 0; i < desc->n_fields; i++) {
        const ProtobufCFieldDescriptor *f = &desc->fields[i];
        if (!field_is_set(msg, f))
            continue;
        if (json_object_set_new(obj, f->name, encode_field(msg, f)) != 0) {
            json_decref(obj);
            return NULL;
        }
    }
    return obj;
}

json_t *
pbjson_encode(const ProtobufCMessage *msg)
{
    if (msg == NULL)
        return NULL;
    return encode_message(msg);
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
 * Decodes an integer field value (JSON integer, decimal string, or for
 * time fields an RFC 3339 string), range-checked for f's type, into the
 * int32/uint32/int64/uint64 at slot.
 */
static bool
decode_integer(struct dctx *c, const ProtobufCFieldDescriptor *f, const json_t *v, void *slot)
{
    bool neg;
    uint64_t mag;
    char shown[48]; /* the value as written, for range errors */

    if (json_is_integer(v)) {
        json_int_t x = json_integer_value(v);
        neg = x < 0;
        mag = neg ? (uint64_t)(-(x + 1)) + 1 : (uint64_t)x;
        snprintf(shown, sizeof(shown), "%" JSON_INTEGER_FORMAT, x);
    } else if (json_is_string(v)) {
        const char *s = json_string_value(v);
        size_t n = json_string_length(v);
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
decode_real(struct dctx *c, const ProtobufCFieldDescriptor *f, const json_t *v, void *slot)
{
    double d;
    if (json_is_number(v)) {
        d = json_number_value(v);
    } else if (json_is_string(v) && strcmp(json_string_value(v), "NaN") == 0) {
        d = NAN;
    } else if (json_is_string(v) && strcmp(json_string_value(v), "Infinity") == 0) {
        d = INFINITY;
    } else if (json_is_string(v) && strcmp(json_string_value(v), "-Infinity") == 0) {
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
decode_enum(struct dctx *c, const ProtobufCFieldDescriptor *f, const json_t *v, void *slot)
{
    const ProtobufCEnumDescriptor *ed = f->descriptor;
    const ProtobufCEnumValue *ev = NULL;
    if (json_is_string(v))
        ev = protobuf_c_enum_descriptor_get_value_by_name(ed, json_string_value(v));
    else if (json_is_integer(v) && json_integer_value(v) >= INT32_MIN &&
             json_integer_value(v) <= INT32_MAX)
        ev = protobuf_c_enum_descriptor_get_value(ed, (int)json_integer_value(v));
    else
        return fail(c, "expected an enum name or number");
    if (ev == NULL)
        return fail(c, "not a value of %s", ed->name);
    *(int32_t *)slot = ev->value;
    return true;
}

static ProtobufCMessage *decode_message(struct dctx *c, const ProtobufCMessageDescriptor *desc,
                                        const json_t *obj);

/* Decodes one value of field f into slot (a member or an array element). */
static bool
decode_value(struct dctx *c, const ProtobufCFieldDescriptor *f, const json_t *v, void *slot)
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
        if (!json_is_boolean(v))
            return fail(c, "expected true or false");
        *(protobuf_c_boolean *)slot = json_is_true(v);
        return true;
    case PROTOBUF_C_TYPE_STRING: {
        if (!json_is_string(v))
            return fail(c, "expected a string");
        size_t n = json_string_length(v);
        const char *s = json_string_value(v);
        if (memchr(s, '\0', n) != NULL)
            return fail(c, "string contains a NUL character");
        char *copy = dalloc(c, n + 1);
        if (copy == NULL)
            return fail(c, "out of memory");
        memcpy(copy, s, n + 1);
        *(char **)slot = copy;
        return true;
    }
    case PROTOBUF_C_TYPE_BYTES: {
        if (!json_is_string(v))
            return fail(c, "expected a string");
        ProtobufCBinaryData *bd = slot;
        size_t n = json_string_length(v);
        bd->len = 0;
        bd->data = NULL;
        if (n > 0) {
            bd->data = dalloc(c, n);
            if (bd->data == NULL)
                return fail(c, "out of memory");
            memcpy(bd->data, json_string_value(v), n);
            bd->len = n;
        }
        return true;
    }
    case PROTOBUF_C_TYPE_MESSAGE: {
        ProtobufCMessage *sub = decode_message(c, f->descriptor, v);
        if (sub == NULL)
            return false;
        *(ProtobufCMessage **)slot = sub;
        return true;
    }
    }
    return fail(c, "unsupported field type");
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

/* Decodes the members of obj into the fields of m. */
static bool
decode_fields(struct dctx *c, const ProtobufCMessageDescriptor *desc, const json_t *obj,
              ProtobufCMessage *m)
{
    /* jansson's iterator API wants a non-const object; nothing is modified. */
    json_t *o = (json_t *)obj;
    for (void *it = json_object_iter(o); it != NULL; it = json_object_iter_next(o, it)) {
        const char *key = json_object_iter_key(it);
        size_t keylen = json_object_iter_key_len(it);
        json_t *v = json_object_iter_value(it);
        const ProtobufCFieldDescriptor *f = NULL;
        /* A key with an embedded NUL must not match the field it starts with. */
        if (strlen(key) == keylen)
            f = protobuf_c_message_descriptor_get_field_by_name(desc, key);
        if (f == NULL) {
            char shown[80];
            printable_key(shown, sizeof(shown), key, keylen);
            /* The whole path goes inside the quotes: "unknown field 'targeting.x'". */
            if (c->err != NULL && c->errlen > 0) {
                snprintf(c->err, c->errlen, "unknown field '%s%s%s'", c->path,
                         c->pathlen > 0 ? "." : "", shown);
                make_printable(c->err);
            }
            return false;
        }
        if (json_is_null(v))
            continue;

        size_t old = path_push(c, "%s%s", c->pathlen > 0 ? "." : "", f->name);
        bool ok;
        if ((f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) &&
            *(const uint32_t *)member(m, f->quantifier_offset) != 0) {
            /* Another member of the oneof was set: its value shares the memory. */
            ok = fail(c, "another member of its oneof is already set");
        } else if (field_is_set(m, f)) {
            /* Cannot happen with jansson's unique keys; guards against leaking. */
            ok = fail(c, "set more than once");
        } else if (f->label == PROTOBUF_C_LABEL_REPEATED) {
            ok = decode_repeated(c, f, v, m);
        } else {
            if (f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF)
                *(uint32_t *)member(m, f->quantifier_offset) = f->id;
            ok = decode_value(c, f, v, member(m, f->offset));
            if (ok && f->label == PROTOBUF_C_LABEL_OPTIONAL &&
                !(f->flags & PROTOBUF_C_FIELD_FLAG_ONEOF) && f->type != PROTOBUF_C_TYPE_STRING &&
                f->type != PROTOBUF_C_TYPE_MESSAGE)
                *(protobuf_c_boolean *)member(m, f->quantifier_offset) = 1;
        }
        path_pop(c, old);
        if (!ok)
            return false;
    }

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
 * Decodes obj into a new message of type desc, allocated from the decode
 * allocator. On error the partial message is freed and NULL returned.
 */
static ProtobufCMessage *
decode_message(struct dctx *c, const ProtobufCMessageDescriptor *desc, const json_t *obj)
{
    if (!json_is_object(obj)) {
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

ProtobufCMessage *
pbjson_decode_bytes(const ProtobufCMessageDescriptor *desc, const void *body, size_t len,
                    size_t max_len, ProtobufCAllocator *alloc, char *err, size_t errlen)
{
    if (len > max_len) {
        if (err != NULL && errlen > 0)
            snprintf(err, errlen, "body too large (%zu bytes, at most %zu)", len, max_len);
        return NULL;
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
