/*
 * etag: the notice version as an HTTP entity tag (RFC 9110 8.8.3) and the
 * If-Match header of the notice operations (PATCH, DELETE, lifecycle
 * actions). Pure functions, fuzzed by tests/fuzz/fuzz_if_match.c.
 *
 * ETag: "<version>" (a strong tag). If-Match accepts that form, the bare
 * number (for curl), and "*" (no condition). A weak tag W/"3" is refused:
 * If-Match compares strongly (RFC 9110 13.1.1), so it could never match.
 * A list of tags is refused as well (one notice has one version).
 */
#ifndef LOGIC_ETAG_H
#define LOGIC_ETAG_H

#include <stddef.h>
#include <stdint.h>

/* Longest If-Match value looked at; longer ones are malformed. */
#define ETAG_IF_MATCH_MAX 64
/* Versions are PostgreSQL int4, from 1. */
#define ETAG_VERSION_MAX 2147483647u

enum etag_if_match {
    ETAG_NONE,      /* no header, or "*": no condition; *version = 0 */
    ETAG_VERSION,   /* *version (1..ETAG_VERSION_MAX) must be the current one */
    ETAG_WEAK,      /* W/"..." */
    ETAG_MALFORMED, /* anything else (lists, non-digits, 0, too large, too long) */
};

/* Parses an If-Match value (NULL: no header). */
enum etag_if_match etag_parse_if_match(const char *value, uint32_t *version);

/* Writes "\"<version>\"" into buf (at least 13 bytes). */
void etag_format(uint32_t version, char *buf, size_t len);

#endif
