/*
 * clientver: the client's platform, app version and core level, from the
 * `platform`, `app_version` and `core_level` headers, falling back to a
 * User-Agent of the form "... platform/ios app_version/8.0.25 core_level/220819".
 * Headers win over the User-Agent field by field. Inputs longer than
 * CLIENTVER_MAX_UA (each header value: CLIENTVER_MAX_HEADER) are ignored, not
 * truncated into a wrong value. A header that is empty or invalid counts as
 * absent, so the User-Agent supplies that field (spaces and tabs around a
 * header value are dropped). Valid values: platform [a-z0-9_-]{1,15} after
 * lower-casing, app_version [0-9A-Za-z.+_-]{1,31}, core_level decimal
 * digits that fit in uint64; anything else is ignored.
 */
#ifndef MBOX_CLIENTVER_H
#define MBOX_CLIENTVER_H

#include <stdbool.h>
#include <stdint.h>

#define CLIENTVER_MAX_UA     1024
#define CLIENTVER_MAX_HEADER 256 /* each of the three header values */

struct clientver {
    char platform[16];    /* lower-case, [a-z0-9_-]; "" when unknown */
    char app_version[32]; /* [0-9A-Za-z.+_-]; "" when unknown */
    uint64_t core_level;  /* 0 when unknown */
    bool has_core_level;
};

/* Fills cv from the three headers and the User-Agent; any may be NULL. */
void clientver_parse(struct clientver *cv, const char *platform, const char *app_version,
                     const char *core_level, const char *user_agent);

#endif
