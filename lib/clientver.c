/*
 * clientver: the client's platform, app version and core level (see
 * clientver.h).
 *
 * Every input is untrusted and optional. A value is either taken whole
 * (after validation) or ignored; it is never truncated or repaired into
 * something the client did not send. A header that is absent, empty,
 * longer than CLIENTVER_MAX_HEADER or invalid counts as absent, so the
 * User-Agent supplies that field instead.
 */
#include "clientver.h"

#include <string.h>

/* Copies v[0..n) lower-cased into out when it is [a-z0-9_-]{1,15} after lower-casing. */
static bool
take_platform(const char *v, size_t n, char *out, size_t outsz)
{
    if (n == 0 || n >= outsz)
        return false;
    char tmp[sizeof(((struct clientver *)0)->platform)];
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (c >= 'A' && c <= 'Z')
            c = (unsigned char)(c - 'A' + 'a');
        if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-'))
            return false;
        tmp[i] = (char)c;
    }
    memcpy(out, tmp, n);
    out[n] = '\0';
    return true;
}

/* Copies v[0..n) into out when it is [0-9A-Za-z.+_-]{1,31}. */
static bool
take_app_version(const char *v, size_t n, char *out, size_t outsz)
{
    if (n == 0 || n >= outsz)
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)v[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '+' || c == '_' || c == '-'))
            return false;
    }
    memcpy(out, v, n);
    out[n] = '\0';
    return true;
}

/* Parses v[0..n) as a decimal uint64 (digits only, no sign, no overflow). */
static bool
take_core_level(const char *v, size_t n, uint64_t *out)
{
    if (n == 0)
        return false;
    uint64_t x = 0;
    for (size_t i = 0; i < n; i++) {
        if (v[i] < '0' || v[i] > '9')
            return false;
        unsigned d = (unsigned)(v[i] - '0');
        if (x > (UINT64_MAX - d) / 10)
            return false;
        x = x * 10 + d;
    }
    *out = x;
    return true;
}

static bool
is_space(char c)
{
    return c == ' ' || c == '\t';
}

/*
 * Finds a header value: NULL when h is absent or too long, else its start
 * with optional surrounding spaces and tabs left out and its length in *n.
 */
static const char *
header_value(const char *h, size_t *n)
{
    if (h == NULL)
        return NULL;
    size_t len = strnlen(h, CLIENTVER_MAX_HEADER + 1);
    if (len > CLIENTVER_MAX_HEADER)
        return NULL;
    while (len > 0 && is_space(h[0])) {
        h++;
        len--;
    }
    while (len > 0 && is_space(h[len - 1]))
        len--;
    *n = len;
    return h;
}

/* Returns the value of token t[0..n) when it is key "/" value, else NULL. */
static const char *
ua_value(const char *t, size_t n, const char *key, size_t *vlen)
{
    size_t k = strlen(key);
    if (n <= k || memcmp(t, key, k) != 0 || t[k] != '/')
        return NULL;
    *vlen = n - k - 1;
    return t + k + 1;
}

/*
 * Fills the fields the headers left unknown from the User-Agent products
 * "platform/<v>", "app_version/<v>" and "core_level/<v>". A product starts
 * at the beginning or after a space and runs to the next space; the first
 * valid occurrence of each key wins and every other product is skipped.
 */
static void
parse_user_agent(struct clientver *cv, const char *ua, bool want_platform, bool want_version,
                 bool want_level)
{
    size_t len = strnlen(ua, CLIENTVER_MAX_UA + 1);
    if (len > CLIENTVER_MAX_UA)
        return;
    size_t i = 0;
    while (i < len) {
        while (i < len && is_space(ua[i]))
            i++;
        size_t start = i;
        while (i < len && !is_space(ua[i]))
            i++;
        const char *t = ua + start, *v;
        size_t n = i - start, vlen = 0;
        if (n == 0)
            break;
        if (want_platform && (v = ua_value(t, n, "platform", &vlen)) != NULL) {
            if (take_platform(v, vlen, cv->platform, sizeof(cv->platform)))
                want_platform = false;
        } else if (want_version && (v = ua_value(t, n, "app_version", &vlen)) != NULL) {
            if (take_app_version(v, vlen, cv->app_version, sizeof(cv->app_version)))
                want_version = false;
        } else if (want_level && (v = ua_value(t, n, "core_level", &vlen)) != NULL) {
            if (take_core_level(v, vlen, &cv->core_level)) {
                cv->has_core_level = true;
                want_level = false;
            }
        }
    }
}

void
clientver_parse(struct clientver *cv, const char *platform, const char *app_version,
                const char *core_level, const char *user_agent)
{
    memset(cv, 0, sizeof(*cv));

    const char *v;
    size_t n = 0;
    bool have_platform = false, have_version = false;
    if ((v = header_value(platform, &n)) != NULL)
        have_platform = take_platform(v, n, cv->platform, sizeof(cv->platform));
    if ((v = header_value(app_version, &n)) != NULL)
        have_version = take_app_version(v, n, cv->app_version, sizeof(cv->app_version));
    if ((v = header_value(core_level, &n)) != NULL)
        cv->has_core_level = take_core_level(v, n, &cv->core_level);

    if (user_agent != NULL && !(have_platform && have_version && cv->has_core_level))
        parse_user_agent(cv, user_agent, !have_platform, !have_version, !cv->has_core_level);
}
