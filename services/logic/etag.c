/*
 * etag: notice versions as entity tags (etag.h).
 */
#include "etag.h"

#include <stdio.h>
#include <string.h>

static int
is_ows(char c)
{
    return c == ' ' || c == '\t';
}

enum etag_if_match
etag_parse_if_match(const char *value, uint32_t *version)
{
    *version = 0;
    if (value == NULL)
        return ETAG_NONE;
    size_t len = strnlen(value, ETAG_IF_MATCH_MAX + 1);
    if (len > ETAG_IF_MATCH_MAX)
        return ETAG_MALFORMED;
    const char *s = value;
    while (len > 0 && is_ows(s[len - 1]))
        len--;
    while (len > 0 && is_ows(*s)) {
        s++;
        len--;
    }
    if (len == 1 && s[0] == '*')
        return ETAG_NONE;
    if (len >= 2 && s[0] == 'W' && s[1] == '/')
        return ETAG_WEAK;
    if (len >= 2 && s[0] == '"' && s[len - 1] == '"') {
        s++;
        len -= 2;
    }
    if (len == 0 || len > 10)
        return ETAG_MALFORMED;
    uint64_t v = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return ETAG_MALFORMED;
        v = v * 10 + (uint64_t)(s[i] - '0');
    }
    if (v == 0 || v > ETAG_VERSION_MAX)
        return ETAG_MALFORMED;
    *version = (uint32_t)v;
    return ETAG_VERSION;
}

void
etag_format(uint32_t version, char *buf, size_t len)
{
    snprintf(buf, len, "\"%u\"", version);
}
