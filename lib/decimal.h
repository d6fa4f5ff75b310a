/*
 * decimal: unsigned decimal numbers without printf/strtoull, header-only
 * (static inline, like b64.h, so every module stays a self-contained
 * static library while the code exists once). Used on hot paths: HTTP
 * reply heads, JSON text, Redis commands and hint values.
 */
#ifndef MBOX_DECIMAL_H
#define MBOX_DECIMAL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Most digits of a uint64_t. */
#define DECIMAL_U64_MAX_DIGITS 20

/* Writes the digits of v backwards so that they end just before end;
 * returns the first digit. end needs DECIMAL_U64_MAX_DIGITS bytes before it. */
static inline char *
decimal_u64_back(uint64_t v, char *end)
{
    do {
        *--end = (char)('0' + v % 10);
        v /= 10;
    } while (v != 0);
    return end;
}

/* Strict decimal uint64 of s[0, n): 1 to 20 digits, no sign, no overflow. */
static inline bool
decimal_u64_parse(const char *s, size_t n, uint64_t *out)
{
    if (n == 0 || n > DECIMAL_U64_MAX_DIGITS)
        return false;
    uint64_t v = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned d = (unsigned)(unsigned char)s[i] - '0';
        if (d > 9 || v > (UINT64_MAX - d) / 10)
            return false;
        v = v * 10 + d;
    }
    *out = v;
    return true;
}

#endif
