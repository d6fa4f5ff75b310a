/*
 * fuzz_log_json: log_kv_to_json (lib/log.c) on arbitrary bytes, as a log
 * line carrying whatever a client sent would reach it.
 *
 * Properties checked: no crash or sanitizer report; the result fits the
 * buffer, is NUL-terminated at the returned length, and is one valid JSON
 * object (jansson parses it) at every cap, so a json log line can never
 * break a log shipper, however it was cut.
 */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check(const uint8_t *data, size_t size, size_t cap)
{
    char *out = malloc(cap);
    if (out == NULL)
        return;
    size_t n = log_kv_to_json((const char *)data, size, out, cap);
    if (n >= cap || out[n] != '\0' || strlen(out) != n)
        abort();
    json_error_t e;
    json_t *j = json_loadb(out, n, 0, &e);
    if (j == NULL || !json_is_object(j))
        abort();
    json_decref(j);
    free(out);
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 65536)
        return 0;
    check(data, size, LOG_JSON_MAX);
    check(data, size, 64);
    check(data, size, 64 + size % 512);
    return 0;
}
