/*
 * fuzz_if_match: etag_parse_if_match (services/logic/etag.c) on arbitrary
 * bytes, cut at the first NUL as a header value would be.
 *
 * Properties checked: no crash or sanitizer report; ETAG_VERSION only with
 * a version in 1..ETAG_VERSION_MAX, and every other result leaves 0; a
 * version's own ETag parses back to it; the value never looks past
 * ETAG_IF_MATCH_MAX bytes (a longer one is malformed).
 */
#include "etag.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';
    uint32_t v = 12345;
    enum etag_if_match e = etag_parse_if_match(s, &v);
    if (e == ETAG_VERSION) {
        if (v == 0 || v > ETAG_VERSION_MAX)
            abort();
        char tag[16];
        uint32_t back = 0;
        etag_format(v, tag, sizeof(tag));
        if (etag_parse_if_match(tag, &back) != ETAG_VERSION || back != v)
            abort();
    } else if (v != 0) {
        abort();
    }
    if (strlen(s) > ETAG_IF_MATCH_MAX && e != ETAG_MALFORMED)
        abort();
    free(s);
    return 0;
}
