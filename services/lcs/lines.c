/*
 * lines: channel line parsing (see lines.h).
 */
#include "lines.h"

#include <string.h>

#include "decimal.h"

int
line_split(const char *line, size_t n, struct line_field *f)
{
    int k = 0;
    size_t i = 0;
    while (i <= n) {
        size_t j = i;
        while (j < n && line[j] != ' ')
            j++;
        if (k == LINE_MAX_FIELDS)
            return LINE_MAX_FIELDS + 1;
        f[k].s = line + i;
        f[k].n = j - i;
        k++;
        i = j + 1;
    }
    return k;
}

bool
line_u64(const struct line_field *f, uint64_t *out)
{
    return decimal_u64_parse(f->s, f->n, out);
}

bool
line_str(const struct line_field *f, char *buf, size_t len)
{
    if (f->n == 0 || f->n >= len)
        return false;
    for (size_t i = 0; i < f->n; i++) {
        unsigned char c = (unsigned char)f->s[i];
        if (c <= 0x20 || c >= 0x7f)
            return false; /* device ids are printable ASCII (session.c); a NUL would cut it */
    }
    memcpy(buf, f->s, f->n);
    buf[f->n] = '\0';
    return true;
}

static bool
line_i64(const struct line_field *f, int64_t *out)
{
    uint64_t v;
    if (!decimal_u64_parse(f->s, f->n, &v) || v > INT64_MAX)
        return false;
    *out = (int64_t)v;
    return true;
}

/* A platform name as clientver accepts it: [a-z0-9_-]{1,15}. */
static bool
platform_ok(const char *s, size_t n)
{
    if (n == 0 || n >= sizeof(((struct pub_notice *)0)->platforms[0]))
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
    }
    return true;
}

/* "-" (every platform) or "ios,android" (at most PUB_MAX_PLATFORMS names). */
static bool
line_platforms(const struct line_field *f, struct pub_notice *t)
{
    t->nplatforms = 0;
    if (f->n == 1 && f->s[0] == '-')
        return true;
    size_t i = 0;
    while (i <= f->n) {
        size_t j = i;
        while (j < f->n && f->s[j] != ',')
            j++;
        if (t->nplatforms == PUB_MAX_PLATFORMS || !platform_ok(f->s + i, j - i))
            return false;
        memcpy(t->platforms[t->nplatforms], f->s + i, j - i);
        t->platforms[t->nplatforms][j - i] = '\0';
        t->nplatforms++;
        i = j + 1;
    }
    return true;
}

/*
 * "p app notice msg_id rate [start_us expire_us login_only min_core max_core platforms]":
 * the short form (older logicd) paces every connection of the app at once.
 */
bool
line_parse_pace(const struct line_field *f, int k, struct pace_spec *ps)
{
    memset(ps, 0, sizeof(*ps));
    if ((k != 5 && k != 11) || !line_u64(&f[1], &ps->app) || !line_u64(&f[2], &ps->notice) ||
        !line_u64(&f[3], &ps->msg_id) || !line_u64(&f[4], &ps->rate_per_s))
        return false;
    if (k == 5)
        return true;
    uint64_t login_only;
    if (!line_i64(&f[5], &ps->start_us) || !line_i64(&f[6], &ps->expire_us) ||
        !line_u64(&f[7], &login_only) || login_only > 1 ||
        !line_u64(&f[8], &ps->target.min_core_level) ||
        !line_u64(&f[9], &ps->target.max_core_level) || !line_platforms(&f[10], &ps->target))
        return false;
    ps->target.login_only = login_only == 1;
    return true;
}
