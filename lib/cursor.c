/*
 * cursor: encode and decode the opaque sync cursor (see cursor.h).
 *
 * Decoding is strict (exact length, strict base64url, version, CRC-32C),
 * so a cursor has a single spelling and any corruption a client makes is
 * answered with 400 instead of a silent resync from a wrong position.
 */
#include "cursor.h"

#include "b64.h"

#include <string.h>

#define CURSOR_VERSION  1
#define CURSOR_BIN_LEN  25          /* version(1) epoch(4) p(8) g(8) check(4) */
#define CURSOR_B64_LEN  34          /* b64url_encoded_len(CURSOR_BIN_LEN) */
#define CURSOR_CHECKED  21          /* bytes covered by the check value */
#define CRC32C_POLY_REV 0x82f63b78u /* Castagnoli, bit-reversed */

/*
 * CRC-32C (init and final xor 0xffffffff, reflected) of p[0..n). Bit by
 * bit: a cursor has 21 bytes, so a table would buy nothing measurable.
 */
static uint32_t
crc32c(const uint8_t *p, size_t n)
{
    uint32_t crc = 0xffffffffu;
    for (size_t i = 0; i < n; i++) {
        crc ^= p[i];
        for (int b = 0; b < 8; b++)
            crc = (crc >> 1) ^ (CRC32C_POLY_REV & (0u - (crc & 1u)));
    }
    return crc ^ 0xffffffffu;
}

static void
put_be(uint8_t *p, uint64_t v, int n)
{
    for (int i = n - 1; i >= 0; i--) {
        p[i] = (uint8_t)v;
        v >>= 8;
    }
}

static uint64_t
get_be(const uint8_t *p, int n)
{
    uint64_t v = 0;
    for (int i = 0; i < n; i++)
        v = v << 8 | p[i];
    return v;
}

void
cursor_encode(const struct cursor *c, char out[CURSOR_STR_LEN])
{
    uint8_t bin[CURSOR_BIN_LEN];
    bin[0] = CURSOR_VERSION;
    put_be(bin + 1, c->epoch, 4);
    put_be(bin + 5, c->p, 8);
    put_be(bin + 13, c->g, 8);
    put_be(bin + 21, crc32c(bin, CURSOR_CHECKED), 4);
    size_t n = b64url_encode(bin, sizeof(bin), out, CURSOR_STR_LEN);
    (void)n; /* 34 characters always fit in CURSOR_STR_LEN */
}

enum cursor_status
cursor_decode(const char *s, uint32_t current_epoch, struct cursor *out)
{
    if (s == NULL || s[0] == '\0') {
        out->epoch = current_epoch;
        out->p = 0;
        out->g = 0;
        return CURSOR_OK;
    }
    size_t len = strnlen(s, CURSOR_MAX_LEN + 1);
    if (len != CURSOR_B64_LEN)
        return CURSOR_INVALID;

    uint8_t bin[CURSOR_BIN_LEN];
    size_t n = 0;
    if (!b64url_decode(s, len, bin, sizeof(bin), &n) || n != sizeof(bin))
        return CURSOR_INVALID;
    if (bin[0] != CURSOR_VERSION)
        return CURSOR_INVALID;
    if ((uint32_t)get_be(bin + 21, 4) != crc32c(bin, CURSOR_CHECKED))
        return CURSOR_INVALID;

    /* The stored epoch is returned as is: the sync handler decides on reset. */
    out->epoch = (uint32_t)get_be(bin + 1, 4);
    out->p = get_be(bin + 5, 8);
    out->g = get_be(bin + 13, 8);
    return CURSOR_OK;
}
