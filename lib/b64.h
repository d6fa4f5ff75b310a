/*
 * b64: base64url (RFC 4648 section 5) without padding, header-only.
 *
 * Used by token and cursor, which both put fixed-size binary blobs into
 * URL-safe strings. The functions are static inline so that each module
 * stays a self-contained static library (lib/meson.build links every
 * module on its own) while the code exists once.
 *
 * Decoding is strict, because both callers need a value to have exactly
 * one spelling: padding ('='), characters outside [A-Za-z0-9_-], a length
 * of 1 mod 4 and non-zero unused bits in the last character are all
 * rejected. So decode(s) succeeds only when encode(decode(s)) == s.
 */
#ifndef MBOX_B64_H
#define MBOX_B64_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Length of the unpadded encoding of n bytes (without the NUL). */
static inline size_t
b64url_encoded_len(size_t n)
{
    return n / 3 * 4 + (n % 3 == 0 ? 0 : n % 3 + 1);
}

/*
 * Value of one base64url character, or -1 when c is not one. A table: a
 * cursor is decoded on every sync.
 */
static inline int
b64url_value(unsigned char c)
{
#define XX 0xff
    /* clang-format off */
    static const uint8_t values[256] = {
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, 62, XX, XX,
        52, 53, 54, 55, 56, 57, 58, 59, 60, 61, XX, XX, XX, XX, XX, XX,
        XX,  0,  1,  2,  3,  4,  5,  6,  7,  8,  9, 10, 11, 12, 13, 14,
        15, 16, 17, 18, 19, 20, 21, 22, 23, 24, 25, XX, XX, XX, XX, 63,
        XX, 26, 27, 28, 29, 30, 31, 32, 33, 34, 35, 36, 37, 38, 39, 40,
        41, 42, 43, 44, 45, 46, 47, 48, 49, 50, 51, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
        XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX, XX,
    };
    /* clang-format on */
#undef XX
    return values[c] == 0xff ? -1 : values[c];
}

/*
 * Encodes in[0..n) into out and NUL-terminates it. Returns the length
 * written (without the NUL), or 0 with out untouched when outlen cannot
 * hold the encoding and its NUL (n == 0 also returns 0, writing "").
 */
static inline size_t
b64url_encode(const uint8_t *in, size_t n, char *out, size_t outlen)
{
    static const char alphabet[] =
        "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    size_t need = b64url_encoded_len(n);
    if (outlen == 0 || need > outlen - 1)
        return 0;
    size_t o = 0, i = 0;
    for (; i + 3 <= n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8 | in[i + 2];
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
        out[o++] = alphabet[v & 63];
    }
    if (n - i == 1) {
        uint32_t v = (uint32_t)in[i] << 16;
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
    } else if (n - i == 2) {
        uint32_t v = (uint32_t)in[i] << 16 | (uint32_t)in[i + 1] << 8;
        out[o++] = alphabet[v >> 18 & 63];
        out[o++] = alphabet[v >> 12 & 63];
        out[o++] = alphabet[v >> 6 & 63];
    }
    out[o] = '\0';
    return o;
}

/*
 * Decodes exactly inlen characters of in (no NUL needed) into out, which
 * holds outcap bytes. On success stores the decoded length in *outlen and
 * returns true. Returns false (out possibly partly written) on any
 * character outside the alphabet, a length of 1 mod 4, non-canonical
 * trailing bits, or a result longer than outcap.
 */
static inline bool
b64url_decode(const char *in, size_t inlen, uint8_t *out, size_t outcap, size_t *outlen)
{
    if (inlen % 4 == 1)
        return false;
    size_t n = inlen / 4 * 3 + (inlen % 4 == 0 ? 0 : inlen % 4 - 1);
    if (n > outcap)
        return false;
    size_t o = 0, i = 0;
    for (; i + 4 <= inlen; i += 4) {
        int a = b64url_value((unsigned char)in[i]), b = b64url_value((unsigned char)in[i + 1]),
            c = b64url_value((unsigned char)in[i + 2]), d = b64url_value((unsigned char)in[i + 3]);
        if ((a | b | c | d) < 0)
            return false;
        uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | (uint32_t)d;
        out[o++] = (uint8_t)(v >> 16);
        out[o++] = (uint8_t)(v >> 8);
        out[o++] = (uint8_t)v;
    }
    if (i < inlen) {
        size_t k = inlen - i; /* 2 or 3 */
        uint32_t v = 0;
        for (size_t j = 0; j < 4; j++) {
            int d = 0;
            if (j < k) {
                d = b64url_value((unsigned char)in[i + j]);
                if (d < 0)
                    return false;
            }
            v = v << 6 | (uint32_t)d;
        }
        out[o++] = (uint8_t)(v >> 16);
        if (k == 3)
            out[o++] = (uint8_t)(v >> 8);
        /* The bits of a short group that fall past the last byte must be 0. */
        if ((k == 2 && (v & 0xffff) != 0) || (k == 3 && (v & 0xff) != 0))
            return false;
    }
    *outlen = o;
    return true;
}

#endif
