/*
 * log: one key=value line per event on stderr.
 *
 *   ts=2026-11-22T03:04:05.123456Z level=info event=http_request req=4f2a status=200
 *
 * The event name is a fixed token; the caller's format adds key=value pairs.
 * Values that may hold spaces or quotes go through log_q(), which quotes and
 * escapes them into a caller buffer. Lines are written with one write(2) so
 * lines from several threads never interleave.
 *
 * The level is the one process-wide setting in the tree: it is set once from
 * the config before any thread starts and only read afterwards.
 */
#ifndef MBOX_LOG_H
#define MBOX_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

/* Sets the lowest level that is written. Call before starting threads. */
void log_set_level(enum log_level level);

/* Parses "debug", "info", "warn" or "error". */
bool log_parse_level(const char *s, enum log_level *out) __attribute__((warn_unused_result));

/* True when lines of this level are written (skip building costly values). */
bool log_enabled(enum log_level level);

/* Writes one line: ts, level, event, then the formatted key=value tail. */
void log_emit(enum log_level level, const char *event, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/*
 * Quotes s for a log value into buf (always NUL-terminated, truncated with
 * "..." when too long) and returns buf. Plain tokens are returned unquoted.
 */
const char *log_q(char *buf, size_t len, const char *s);

#define log_debug(ev, ...) log_emit(LOG_DEBUG, ev, __VA_ARGS__)
#define log_info(ev, ...)  log_emit(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...)  log_emit(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_emit(LOG_ERROR, ev, __VA_ARGS__)

#endif
