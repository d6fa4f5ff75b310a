/*
 * log: key=value or JSON event lines on stderr or a log file (see log.h).
 */
#include "log.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static atomic_int min_level = LOG_INFO;
static atomic_int line_format = LOG_FORMAT_KV;
/* Where lines go: stderr, or once a file was opened the descriptor that
 * every reopen dup2()s the new file onto (never closed, so a thread that
 * loaded it just before a reopen still writes to an open file). */
static atomic_int out_fd = STDERR_FILENO;
static int file_fd = -1;
/* log_open_file() runs on one thread at a time (start, SIGHUP), but
 * nothing in a daemon says so: the lock makes it true. */
static atomic_flag open_busy = ATOMIC_FLAG_INIT;

static const char *const level_names[] = {"debug", "info", "warn", "error"};
static const char *const format_names[] = {"kv", "json"};

void
log_set_level(enum log_level level)
{
    atomic_store_explicit(&min_level, (int)level, memory_order_relaxed);
}

bool
log_parse_level(const char *s, enum log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(s, level_names[i]) == 0) {
            *out = (enum log_level)i;
            return true;
        }
    }
    return false;
}

void
log_set_format(enum log_format format)
{
    atomic_store_explicit(&line_format, (int)format, memory_order_relaxed);
}

bool
log_parse_format(const char *s, enum log_format *out)
{
    for (size_t i = 0; i < sizeof(format_names) / sizeof(format_names[0]); i++) {
        if (strcmp(s, format_names[i]) == 0) {
            *out = (enum log_format)i;
            return true;
        }
    }
    return false;
}

bool
log_open_file(const char *path, char *err, size_t errlen)
{
    while (atomic_flag_test_and_set(&open_busy))
        ;
    bool ok = true;
    if (path == NULL || path[0] == '\0') {
        /* Back to stderr: the stable descriptor becomes a copy of it. */
        if (file_fd >= 0 && dup2(STDERR_FILENO, file_fd) < 0) {
            snprintf(err, errlen, "cannot return the log to stderr: %s", strerror(errno));
            ok = false;
        }
    } else {
        int fd = open(path, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
        if (fd < 0) {
            snprintf(err, errlen, "cannot open log file %s: %s", path, strerror(errno));
            ok = false;
        } else if (file_fd < 0) {
            file_fd = fd;
            atomic_store(&out_fd, file_fd);
        } else {
            if (dup3(fd, file_fd, O_CLOEXEC) < 0) {
                snprintf(err, errlen, "cannot reopen log file %s: %s", path, strerror(errno));
                ok = false;
            }
            close(fd);
        }
    }
    atomic_flag_clear(&open_busy);
    return ok;
}

bool
log_enabled(enum log_level level)
{
    return (int)level >= atomic_load_explicit(&min_level, memory_order_relaxed);
}

void
log_emit(enum log_level level, const char *event, const char *fmt, ...)
{
    if (!log_enabled(level))
        return;

    char line[LOG_LINE_MAX];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n =
        snprintf(line, sizeof(line), "ts=%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ level=%s event=%s",
                 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec,
                 ts.tv_nsec / 1000, level_names[level], event);
    if (fmt != NULL && fmt[0] != '\0' && n > 0 && (size_t)n < sizeof(line) - 2) {
        line[n++] = ' ';
        va_list ap;
        va_start(ap, fmt);
        int m = vsnprintf(line + n, sizeof(line) - (size_t)n, fmt, ap);
        va_end(ap);
        if (m > 0)
            n += m;
    }
    /* Truncated lines keep their newline. */
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line) - 1)
        n = (int)sizeof(line) - 2;
    int fd = atomic_load(&out_fd);
    ssize_t unused;
    if (atomic_load_explicit(&line_format, memory_order_relaxed) == LOG_FORMAT_JSON) {
        char json[LOG_JSON_MAX];
        size_t j = log_kv_to_json(line, (size_t)n, json, sizeof(json) - 1);
        json[j++] = '\n';
        unused = write(fd, json, j);
    } else {
        line[n++] = '\n';
        unused = write(fd, line, (size_t)n);
    }
    (void)unused;
}

/* A value needs quotes when it is empty or holds a space, quote, = or control byte. */
static bool
needs_quotes(const char *s)
{
    if (*s == '\0')
        return true;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (c <= ' ' || c == '"' || c == '=' || c == '\\' || c == 0x7f)
            return true;
    }
    return false;
}

const char *
log_q(char *buf, size_t len, const char *s)
{
    if (len == 0)
        return "";
    if (s == NULL)
        s = "";
    if (!needs_quotes(s)) {
        snprintf(buf, len, "%s", s);
        return buf;
    }
    size_t o = 0;
    const size_t room = len > 5 ? len - 5 : 0; /* quote, "...", quote, NUL */
    buf[o++] = '"';
    for (; *s && o < room; s++) {
        unsigned char c = (unsigned char)*s;
        if (c == '"' || c == '\\') {
            if (o + 2 > room)
                break;
            buf[o++] = '\\';
            buf[o++] = (char)c;
        } else if (c < ' ' || c == 0x7f) {
            buf[o++] = '?';
        } else {
            buf[o++] = (char)c;
        }
    }
    if (*s && len >= 6) {
        memcpy(buf + o, "...", 3);
        o += 3;
    }
    if (o < len - 1)
        buf[o++] = '"';
    buf[o < len ? o : len - 1] = '\0';
    return buf;
}

/* ---- key=value to JSON ------------------------------------------------ */

/* Kept free at the end of the object: a closing quote, ,"truncated":true}, NUL. */
#define JSON_RESERVE (1 + sizeof(",\"truncated\":true}"))

struct jout {
    char *p;
    size_t n, cap;
    bool full;
};

/* Appends len bytes unless that would eat into the reserve (then: full). */
static bool
jput(struct jout *o, const char *s, size_t len)
{
    if (o->full || o->n + len + JSON_RESERVE > o->cap) {
        o->full = true;
        return false;
    }
    memcpy(o->p + o->n, s, len);
    o->n += len;
    return true;
}

/* A value's bytes, with \" and \\ undone inside a quoted value. */
struct vsrc {
    const char *s;
    size_t i, end;
    bool quoted;
};

static int
vnext(struct vsrc *v)
{
    if (v->i >= v->end)
        return -1;
    unsigned char c = (unsigned char)v->s[v->i++];
    if (v->quoted && c == '\\' && v->i < v->end && (v->s[v->i] == '"' || v->s[v->i] == '\\'))
        c = (unsigned char)v->s[v->i++];
    return c;
}

/* Length of the UTF-8 sequence led by c (0: not a lead byte) and the range
 * of its second byte (overlongs, surrogates and > U+10FFFF are refused). */
static int
utf8_lead(int c, int *lo, int *hi)
{
    *lo = 0x80;
    *hi = 0xbf;
    if (c >= 0xc2 && c <= 0xdf)
        return 2;
    if (c >= 0xe0 && c <= 0xef) {
        if (c == 0xe0)
            *lo = 0xa0;
        if (c == 0xed)
            *hi = 0x9f;
        return 3;
    }
    if (c >= 0xf0 && c <= 0xf4) {
        if (c == 0xf0)
            *lo = 0x90;
        if (c == 0xf4)
            *hi = 0x8f;
        return 4;
    }
    return 0;
}

/* Writes the value as JSON string content; stops quietly when full. */
static void
json_value(struct jout *o, struct vsrc *v)
{
    int c;
    while (!o->full && (c = vnext(v)) >= 0) {
        char piece[8];
        size_t len = 0;
        if (c == '"' || c == '\\') {
            piece[len++] = '\\';
            piece[len++] = (char)c;
        } else if (c == 0) {
            /* \u0000 is JSON, but cuts strings short in C readers. */
            memcpy(piece, "\\ufffd", 6);
            len = 6;
        } else if (c == '\n') {
            memcpy(piece, "\\n", 2);
            len = 2;
        } else if (c == '\t') {
            memcpy(piece, "\\t", 2);
            len = 2;
        } else if (c == '\r') {
            memcpy(piece, "\\r", 2);
            len = 2;
        } else if (c < 0x20 || c == 0x7f) {
            len = (size_t)snprintf(piece, sizeof(piece), "\\u%04x", (unsigned)c);
        } else if (c < 0x80) {
            piece[len++] = (char)c;
        } else {
            int lo, hi;
            int need = utf8_lead(c, &lo, &hi);
            struct vsrc save = *v;
            piece[len++] = (char)c;
            for (int k = 1; k < need; k++) {
                int d = vnext(v);
                if (d < (k == 1 ? lo : 0x80) || d > (k == 1 ? hi : 0xbf)) {
                    need = 0;
                    break;
                }
                piece[len++] = (char)d;
            }
            if (need == 0) {
                /* Not UTF-8: U+FFFD for this byte, go on with the next. */
                *v = save;
                memcpy(piece, "\\ufffd", 6);
                len = 6;
            }
        }
        jput(o, piece, len);
    }
}

static bool
is_key_char(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '.' || c == ':' || c == '-';
}

size_t
log_kv_to_json(const char *kv, size_t len, char *out, size_t cap)
{
    struct jout o = {out, 0, cap, false};
    if (cap < 64) {
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    size_t i = 0;
    jput(&o, "{", 1);
    /* The object up to its last complete member: where a cut goes back to. */
    size_t good = o.n;
    while (i < len && !o.full) {
        while (i < len && kv[i] == ' ')
            i++;
        if (i >= len)
            break;
        size_t ks = i;
        while (i < len && is_key_char(kv[i]))
            i++;
        size_t ke = i;
        struct vsrc v = {kv, 0, 0, false};
        if (ke > ks && i < len && kv[i] == '=') {
            i++;
            if (i < len && kv[i] == '"') {
                /* Quoted: up to the next unescaped quote (or the end, when cut). */
                v.quoted = true;
                v.i = ++i;
                while (i < len && kv[i] != '"')
                    i += kv[i] == '\\' && i + 1 < len ? 2 : 1;
                v.end = i < len ? i : len;
                if (i < len)
                    i++;
            } else {
                v.i = i;
                while (i < len && kv[i] != ' ')
                    i++;
                v.end = i;
            }
        } else {
            /* Not key=value: the rest of the line is the message. */
            v.i = ks;
            v.end = len;
            ks = ke = 0;
            i = len;
        }
        if ((good > 1 && !jput(&o, ",", 1)) || !jput(&o, "\"", 1) ||
            (ke > ks ? !jput(&o, kv + ks, ke - ks) : !jput(&o, "msg", 3)) || !jput(&o, "\":\"", 3))
            break;
        json_value(&o, &v);
        /* The reserve always has room for the closing quote. */
        o.p[o.n++] = '"';
        good = o.n;
    }
    o.n = good;
    if (o.full) {
        const char *t = good > 1 ? ",\"truncated\":true}" : "\"truncated\":true}";
        memcpy(o.p + o.n, t, strlen(t));
        o.n += strlen(t);
    } else {
        o.p[o.n++] = '}';
    }
    o.p[o.n] = '\0';
    return o.n;
}

bool
log_apply(const char *level, const char *format, const char *file, char *err, size_t errlen)
{
    enum log_level lvl;
    enum log_format fmt;
    if (!log_parse_level(level, &lvl) || !log_parse_format(format, &fmt)) {
        snprintf(err, errlen, "bad log_level or log_format");
        return false;
    }
    if (!log_open_file(file, err, errlen))
        return false;
    log_set_level(lvl);
    log_set_format(fmt);
    return true;
}
