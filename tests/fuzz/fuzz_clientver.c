/*
 * fuzz_clientver: clientver_parse on arbitrary bytes.
 *
 * The input is split at NUL bytes into up to four segments: the platform,
 * app_version and core_level headers and the User-Agent; a missing
 * segment is passed as NULL. Properties checked: no crash or sanitizer
 * report, every output field is valid per clientver.h, and each field
 * comes from its header when that is usable, else from the User-Agent.
 */
#include "clientver.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static bool
all_in(const char *s, size_t max, const char *set)
{
    size_t n = strnlen(s, max + 1);
    if (n > max)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool ok = (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || strchr(set, c) != NULL;
        if (!ok)
            return false;
    }
    return true;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    char *s = malloc(size + 1);
    if (s == NULL)
        return 0;
    memcpy(s, data, size);
    s[size] = '\0';

    const char *seg[4] = {NULL, NULL, NULL, NULL};
    size_t off = 0;
    for (int i = 0; i < 4 && off <= size; i++) {
        seg[i] = s + off;
        off += strlen(s + off) + 1;
    }

    struct clientver cv;
    memset(&cv, 0xa5, sizeof(cv));
    clientver_parse(&cv, seg[0], seg[1], seg[2], seg[3]);
    if (!all_in(cv.platform, sizeof(cv.platform) - 1, "_-"))
        abort();
    if (!all_in(cv.app_version, sizeof(cv.app_version) - 1, "ABCDEFGHIJKLMNOPQRSTUVWXYZ.+_-"))
        abort();
    if (!cv.has_core_level && cv.core_level != 0)
        abort();
    /* Field by field: a usable header wins, else the User-Agent decides. */
    struct clientver h, u;
    clientver_parse(&h, seg[0], seg[1], seg[2], NULL);
    clientver_parse(&u, NULL, NULL, NULL, seg[3]);
    if (strcmp(cv.platform, h.platform[0] ? h.platform : u.platform) != 0)
        abort();
    if (strcmp(cv.app_version, h.app_version[0] ? h.app_version : u.app_version) != 0)
        abort();
    if (cv.has_core_level != (h.has_core_level || u.has_core_level) ||
        cv.core_level != (h.has_core_level ? h.core_level : u.core_level))
        abort();
    /* Without any input nothing can be known. */
    clientver_parse(&cv, NULL, NULL, NULL, NULL);
    if (cv.platform[0] != '\0' || cv.app_version[0] != '\0' || cv.has_core_level)
        abort();
    free(s);
    return 0;
}
