/*
 * lines: parsing of the lines on lcsd's Redis channels (formats in
 * route.h). Pure functions over bytes, so the fuzz target
 * (tests/fuzz/fuzz_lcs_lines.c) runs them without a server. Every field
 * is bounded: at most LINE_MAX_FIELDS fields, ids fit their integer types,
 * strings are copied only when they fit the caller's buffer.
 */
#ifndef LCS_LINES_H
#define LCS_LINES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pace.h"

#define LINE_MAX_FIELDS 11

/* One field of a line: a slice of it, not NUL-terminated. */
struct line_field {
    const char *s;
    size_t n;
};

/* Splits line[0..n) on single spaces; returns the field count (LINE_MAX_FIELDS + 1 = too many). */
int line_split(const char *line, size_t n, struct line_field *f);

/* A decimal uint64 (no sign, no spaces, no overflow). */
bool line_u64(const struct line_field *f, uint64_t *out);

/* Copies a non-empty field of printable ASCII into buf (NUL-terminated); false when it does not
 * fit or holds other bytes. */
bool line_str(const struct line_field *f, char *buf, size_t len);

/*
 * The fields of a "p" line (k of them, f[0] being "p"): the 5-field form
 * of older logicds (every connection, now) or the 11-field form with start,
 * expiry and targeting. false when malformed (ps is then unspecified).
 */
bool line_parse_pace(const struct line_field *f, int k, struct pace_spec *ps);

#endif
