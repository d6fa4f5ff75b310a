/*
 * log: one event per line, as key=value text or as a JSON object.
 *
 *   ts=2026-11-22T03:04:05.123456Z level=info event=http_request req=4f2a status=200
 *   {"ts":"2026-11-22T03:04:05.123456Z","level":"info","event":"http_request","req":"4f2a","status":"200"}
 *
 * The event name is a fixed token; the caller's format adds key=value pairs.
 * Values that may hold spaces or quotes go through log_q(), which quotes and
 * escapes them into a caller buffer. In JSON format the same pairs become
 * string members (every value a string, so a 20-digit uid keeps its digits);
 * text that is not key=value goes into "msg". Lines are written with one
 * write(2), so lines from several threads never interleave.
 *
 * Level, format and destination may change while threads log (SIGHUP reload):
 * the level and format are atomics, and the destination is one descriptor
 * that a reopen replaces with dup2(), so a writer never sees it closed.
 */
#ifndef MBOX_LOG_H
#define MBOX_LOG_H

#include <stdbool.h>
#include <stddef.h>

enum log_level { LOG_DEBUG, LOG_INFO, LOG_WARN, LOG_ERROR };

enum log_format { LOG_FORMAT_KV, LOG_FORMAT_JSON };

/* Longest key=value line, newline included; longer ones are cut. */
#define LOG_LINE_MAX 4096
/* Longest JSON line, newline included; longer ones end in "truncated":true. */
#define LOG_JSON_MAX 8192

/* Sets the lowest level that is written (any thread, any time). */
void log_set_level(enum log_level level);

/* Parses "debug", "info", "warn" or "error". */
bool log_parse_level(const char *s, enum log_level *out) __attribute__((warn_unused_result));

/* Sets the line format (any thread, any time). */
void log_set_format(enum log_format format);

/* Parses "kv" or "json". */
bool log_parse_format(const char *s, enum log_format *out) __attribute__((warn_unused_result));

/*
 * Sends lines to the file path (opened O_APPEND|O_CREAT, mode 0640), or back
 * to stderr when path is NULL or empty. Called again with the same path it
 * reopens the file: after logrotate renamed it, new lines go to a new file.
 * On failure the destination is unchanged and err gets one line.
 */
bool log_open_file(const char *path, char *err, size_t errlen) __attribute__((warn_unused_result));

/*
 * Applies a daemon's log_level, log_format and log_file settings (at start
 * and on SIGHUP): the file is (re)opened first, and nothing changes when
 * a value is bad or the file cannot be opened (err says why).
 */
bool log_apply(const char *level, const char *format, const char *file, char *err, size_t errlen)
    __attribute__((warn_unused_result));

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

/*
 * Turns a key=value line (len bytes, no newline needed) into one JSON object
 * in out (cap bytes, at least 64), NUL-terminated, no newline; returns its
 * length. Keys are [A-Za-z0-9_.:-]+; a value is a bare token or a "quoted"
 * string with \" and \\ escapes. From the first token that is not key=value
 * on, the rest of the line becomes "msg". Values are escaped for JSON
 * (quotes, backslashes, control bytes) and invalid UTF-8 and NUL bytes
 * become U+FFFD.
 * When the object would not fit, the value being written is cut (at a
 * character boundary), the remaining pairs are dropped and the object ends
 * with "truncated":true: the result is always one valid JSON object.
 */
size_t log_kv_to_json(const char *kv, size_t len, char *out, size_t cap);

#define log_debug(ev, ...) log_emit(LOG_DEBUG, ev, __VA_ARGS__)
#define log_info(ev, ...)  log_emit(LOG_INFO, ev, __VA_ARGS__)
#define log_warn(ev, ...)  log_emit(LOG_WARN, ev, __VA_ARGS__)
#define log_error(ev, ...) log_emit(LOG_ERROR, ev, __VA_ARGS__)

#endif
