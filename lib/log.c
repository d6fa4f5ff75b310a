/*
 * log: key=value event lines on stderr (see log.h).
 */
#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static enum log_level min_level = LOG_INFO;

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void
log_set_level(enum log_level level)
{
    min_level = level;
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

bool
log_enabled(enum log_level level)
{
    return level >= min_level;
}

void
log_emit(enum log_level level, const char *event, const char *fmt, ...)
{
    if (level < min_level)
        return;

    char line[4096];
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
    line[n++] = '\n';
    ssize_t unused = write(STDERR_FILENO, line, (size_t)n);
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
