/*
 * fuzz_lcs_lines: lcsd's channel line parser (services/lcs/lines.c), as
 * route.c drives it: the input is split at '\n', each line into fields,
 * and "p" lines are parsed into a pace_spec. Checks the bounds the rest of
 * lcsd relies on: the field count, NUL-terminated platform names of
 * [a-z0-9_-]{1,15}, at most PUB_MAX_PLATFORMS of them, a login_only that
 * came from 0 or 1, and copies that fit their buffers.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "../../services/lcs/lines.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void
check_spec(const struct pace_spec *ps)
{
    if (ps->target.nplatforms < 0 || ps->target.nplatforms > PUB_MAX_PLATFORMS)
        abort();
    for (int i = 0; i < ps->target.nplatforms; i++) {
        const char *p = ps->target.platforms[i];
        size_t n = strnlen(p, sizeof(ps->target.platforms[i]));
        if (n == 0 || n >= sizeof(ps->target.platforms[i]) ||
            strspn(p, "abcdefghijklmnopqrstuvwxyz0123456789_-") != n)
            abort();
    }
    if (ps->start_us < 0 || ps->expire_us < 0)
        abort();
}

static void
one_line(const char *line, size_t n)
{
    struct line_field f[LINE_MAX_FIELDS];
    int k = line_split(line, n, f);
    if (k < 1 || k > LINE_MAX_FIELDS + 1)
        abort();
    if (k > LINE_MAX_FIELDS)
        return;
    for (int i = 0; i < k; i++) {
        if (f[i].s < line || f[i].s + f[i].n > line + n)
            abort();
        uint64_t v;
        (void)line_u64(&f[i], &v);
        char small[8];
        if (line_str(&f[i], small, sizeof(small)) && strlen(small) != f[i].n)
            abort();
    }
    if (f[0].n == 1 && f[0].s[0] == 'p') {
        struct pace_spec ps;
        if (line_parse_pace(f, k, &ps))
            check_spec(&ps);
    }
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    /* A copy without a terminator, so reads past the end are caught. */
    char *buf = malloc(size ? size : 1);
    if (buf == NULL)
        return 0;
    memcpy(buf, data, size);
    size_t i = 0;
    while (i < size) {
        const char *nl = memchr(buf + i, '\n', size - i);
        size_t end = nl != NULL ? (size_t)(nl - buf) : size;
        if (end > i)
            one_line(buf + i, end - i);
        i = end + 1;
    }
    free(buf);
    return 0;
}
