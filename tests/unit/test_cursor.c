/*
 * test_cursor: Check suite for lib/cursor (wire format of versions 1 and 2,
 * round trips, corruption detection, strict decoding). Known-answer vectors were
 * computed independently (Python struct + base64 + a bitwise CRC-32C).
 */
#include "cursor.h"

#include <check.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* splitmix64: a fixed-seed generator so failures reproduce. */
static uint64_t
next_rand(uint64_t *state)
{
    uint64_t z = (*state += 0x9e3779b97f4a7c15ULL);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
    return z ^ (z >> 31);
}

/* Reference CRC-32C, written from the definition; checked below against "123456789". */
static uint32_t
ref_crc32c(const uint8_t *p, size_t n)
{
    uint32_t crc = ~0u;
    for (size_t i = 0; i < n; i++) {
        for (int b = 0; b < 8; b++) {
            uint32_t bit = ((p[i] >> b) ^ crc) & 1u;
            crc >>= 1;
            if (bit)
                crc ^= 0x82f63b78u;
        }
    }
    return ~crc;
}

/* Reference base64url decoder of the n characters of s (no validation). */
static size_t
ref_decode(const char *s, size_t n, uint8_t *out)
{
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 6 | (uint32_t)(strchr(alphabet, s[i]) - alphabet);
        bits += 6;
        if (bits >= 8) {
            out[o++] = (uint8_t)(acc >> (bits - 8));
            bits -= 8;
        }
    }
    return o;
}

/* Sets the CRC of bin[0..n) (over its first n - 4 bytes) and encodes it by reference rules. */
static void
ref_encode(uint8_t *bin, size_t n, char s[CURSOR_STR_LEN])
{
    uint32_t crc = ref_crc32c(bin, n - 4);
    bin[n - 4] = (uint8_t)(crc >> 24);
    bin[n - 3] = (uint8_t)(crc >> 16);
    bin[n - 2] = (uint8_t)(crc >> 8);
    bin[n - 1] = (uint8_t)crc;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < n; i++) {
        acc = acc << 8 | bin[i];
        bits += 8;
        while (bits >= 6) {
            s[o++] = alphabet[(acc >> (bits - 6)) & 63];
            bits -= 6;
        }
    }
    if (bits > 0)
        s[o++] = alphabet[(acc << (6 - bits)) & 63];
    s[o] = '\0';
}

/* A random cursor; with attributes (version 2) when attrs. */
static struct cursor
rand_cursor(uint64_t *seed, bool attrs)
{
    struct cursor c = {
        .epoch = (uint32_t)next_rand(seed),
        .p = next_rand(seed),
        .g = next_rand(seed),
    };
    if (attrs) {
        c.has_attrs = true;
        c.a.core_level = next_rand(seed);
        c.a.platform_hash = (uint32_t)next_rand(seed);
        c.a.guest = next_rand(seed) & 1;
    }
    return c;
}

static void
assert_same(const struct cursor *d, const struct cursor *c)
{
    ck_assert_uint_eq(d->epoch, c->epoch);
    ck_assert_uint_eq(d->p, c->p);
    ck_assert_uint_eq(d->g, c->g);
    ck_assert_int_eq(d->has_attrs, c->has_attrs);
    ck_assert_uint_eq(d->a.core_level, c->has_attrs ? c->a.core_level : 0);
    ck_assert_uint_eq(d->a.platform_hash, c->has_attrs ? c->a.platform_hash : 0);
    ck_assert_int_eq(d->a.guest, c->has_attrs ? c->a.guest : 0);
}

START_TEST(test_crc_reference)
{
    ck_assert_uint_eq(ref_crc32c((const uint8_t *)"123456789", 9), 0xe3069283u);
}
END_TEST

/* The table-driven CRC against known vectors (RFC 3720 B.4) and the bitwise reference. */
START_TEST(test_crc_table)
{
    uint8_t buf[64];
    ck_assert_uint_eq(cursor_crc32c("123456789", 9), 0xe3069283u);
    ck_assert_uint_eq(cursor_crc32c("", 0), 0);
    memset(buf, 0, 32);
    ck_assert_uint_eq(cursor_crc32c(buf, 32), 0x8a9136aau);
    memset(buf, 0xff, 32);
    ck_assert_uint_eq(cursor_crc32c(buf, 32), 0x62a8ab43u);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)i;
    ck_assert_uint_eq(cursor_crc32c(buf, 32), 0x46dd794eu);
    for (int i = 0; i < 32; i++)
        buf[i] = (uint8_t)(31 - i);
    ck_assert_uint_eq(cursor_crc32c(buf, 32), 0x113fdb5cu);
    /* every single byte value (each table entry), then random inputs of every length */
    for (int b = 0; b < 256; b++) {
        buf[0] = (uint8_t)b;
        ck_assert_uint_eq(cursor_crc32c(buf, 1), ref_crc32c(buf, 1));
    }
    uint64_t st = 7;
    for (int round = 0; round < 200; round++) {
        for (size_t i = 0; i < sizeof(buf); i++)
            buf[i] = (uint8_t)next_rand(&st);
        size_t n = (size_t)round % (sizeof(buf) + 1);
        ck_assert_uint_eq(cursor_crc32c(buf, n), ref_crc32c(buf, n));
    }
}
END_TEST

START_TEST(test_known_answer)
{
    /* Computed independently (Python struct + base64 + bitwise CRC-32C). */
    struct {
        struct cursor c;
        const char *s;
    } v[] = {
        /* version 1: written for a cursor without attributes, and what old clients hold */
        {{.epoch = 3, .p = 1679757323320865ULL, .g = 42}, "AQAAAAMABfe6-pC-IQAAAAAAAAAqMl5OdA"},
        {{.epoch = 0}, "AQAAAAAAAAAAAAAAAAAAAAAAAAAAw1AdfA"},
        {{.epoch = UINT32_MAX, .p = UINT64_MAX, .g = UINT64_MAX},
         "Af__________________________LTViRw"},
        /* version 2: with the client attributes */
        {{.epoch = 3,
          .p = 1679757323320865ULL,
          .g = 42,
          .has_attrs = true,
          .a = {.core_level = 220819, .platform_hash = 0x1234abcdu}},
         "AgAAAAMABfe6-pC-IQAAAAAAAAAqAAAAAAAAA16TEjSrzZkMhfQ"},
        {{.has_attrs = true}, "AgAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAACTTrhU"},
        {{.epoch = UINT32_MAX,
          .p = UINT64_MAX,
          .g = UINT64_MAX,
          .has_attrs = true,
          .a = {.core_level = UINT64_MAX, .platform_hash = UINT32_MAX, .guest = true}},
         "Av__________________________Af_______________yKIK1k"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char out[CURSOR_STR_LEN];
        cursor_encode(&v[i].c, out);
        ck_assert_str_eq(out, v[i].s);
        struct cursor d;
        ck_assert_int_eq(cursor_decode(v[i].s, 7, &d), CURSOR_OK);
        assert_same(&d, &v[i].c);
    }
}
END_TEST

START_TEST(test_round_trip_random)
{
    uint64_t seed = 20240601;
    for (int i = 0; i < 10000; i++) {
        bool v2 = i % 2 == 0;
        struct cursor c = rand_cursor(&seed, v2);
        /* small values too, where most bytes are zero */
        if (i % 4 < 2) {
            c.p >>= 40;
            c.g >>= 50;
            c.a.core_level >>= 44;
        }
        size_t chars = v2 ? 51 : 34, bytes = v2 ? 38 : 25;
        char out[CURSOR_STR_LEN];
        memset(out, 'x', sizeof(out));
        cursor_encode(&c, out);
        ck_assert_uint_eq(strlen(out), chars);
        ck_assert_uint_eq(strspn(out, alphabet), chars);

        /* the version byte, and the check value: CRC-32C of the bytes before it */
        uint8_t bin[40];
        ck_assert_uint_eq(ref_decode(out, chars, bin), bytes);
        ck_assert_uint_eq(bin[0], v2 ? 2 : 1);
        uint32_t crc = (uint32_t)bin[bytes - 4] << 24 | (uint32_t)bin[bytes - 3] << 16 |
                       (uint32_t)bin[bytes - 2] << 8 | bin[bytes - 1];
        ck_assert_uint_eq(crc, ref_crc32c(bin, bytes - 4));

        struct cursor d;
        ck_assert_int_eq(cursor_decode(out, c.epoch + 1, &d), CURSOR_OK);
        assert_same(&d, &c);
    }
}
END_TEST

START_TEST(test_empty)
{
    struct cursor d = {.epoch = 1, .p = 2, .g = 3, .has_attrs = true, .a = {.core_level = 4}};
    ck_assert_int_eq(cursor_decode("", 9, &d), CURSOR_OK);
    struct cursor want = {.epoch = 9};
    assert_same(&d, &want);
    d = (struct cursor){.epoch = 1, .p = 2, .g = 3, .has_attrs = true};
    ck_assert_int_eq(cursor_decode(NULL, 11, &d), CURSOR_OK);
    want.epoch = 11;
    assert_same(&d, &want);
}
END_TEST

START_TEST(test_epoch_not_compared)
{
    struct cursor c = {.epoch = 5, .p = 100, .g = 200, .has_attrs = true}, d;
    char out[CURSOR_STR_LEN];
    cursor_encode(&c, out);
    ck_assert_int_eq(cursor_decode(out, 6, &d), CURSOR_OK);
    ck_assert_uint_eq(d.epoch, 5);
    ck_assert_int_eq(cursor_decode(out, 0, &d), CURSOR_OK);
    ck_assert_uint_eq(d.epoch, 5);
}
END_TEST

START_TEST(test_attrs_equal)
{
    struct cursor_attrs x = {.core_level = 220819, .platform_hash = 7, .guest = false};
    struct cursor_attrs y = x;
    ck_assert(cursor_attrs_equal(&x, &y));
    y.core_level++;
    ck_assert(!cursor_attrs_equal(&x, &y));
    y = x;
    y.platform_hash = 8;
    ck_assert(!cursor_attrs_equal(&x, &y));
    y = x;
    y.guest = true;
    ck_assert(!cursor_attrs_equal(&x, &y));
}
END_TEST

START_TEST(test_every_single_char_corruption)
{
    uint64_t seed = 7;
    int tried = 0;
    for (int round = 0; round < 20; round++) {
        bool v2 = round % 2 == 1;
        struct cursor c = rand_cursor(&seed, v2);
        if (round < 2)
            c = (struct cursor){.has_attrs = v2};
        size_t chars = v2 ? 51 : 34;
        char out[CURSOR_STR_LEN], m[CURSOR_STR_LEN];
        cursor_encode(&c, out);
        for (size_t i = 0; i < chars; i++) {
            for (size_t k = 0; k < 64; k++) {
                if (alphabet[k] == out[i])
                    continue;
                memcpy(m, out, sizeof(m));
                m[i] = alphabet[k];
                struct cursor d = {.epoch = 0xdead, .p = 0xbeef, .g = 0xf00d};
                /*
                 * Strict decoding gives each value one spelling, so a
                 * changed string can never decode to the same value; and
                 * a single changed char is a burst of at most 12 bits,
                 * which CRC-32C always detects.
                 */
                ck_assert_int_eq(cursor_decode(m, c.epoch, &d), CURSOR_INVALID);
                /* out is untouched on failure */
                ck_assert_uint_eq(d.epoch, 0xdead);
                ck_assert_uint_eq(d.p, 0xbeef);
                ck_assert_uint_eq(d.g, 0xf00d);
                ck_assert(!d.has_attrs);
                tried++;
            }
        }
    }
    ck_assert_int_eq(tried, 10 * 34 * 63 + 10 * 51 * 63);
}
END_TEST

START_TEST(test_strict)
{
    for (int v2 = 0; v2 < 2; v2++) {
        struct cursor c = {.epoch = 1, .p = 2, .g = 3, .has_attrs = v2}, d;
        size_t chars = v2 ? 51 : 34;
        char out[CURSOR_STR_LEN], m[256];
        cursor_encode(&c, out);

        /* padding */
        strcpy(m, out);
        strcat(m, "=");
        ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
        strcat(m, "=");
        ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
        /* one char short or long */
        strcpy(m, out);
        m[chars - 1] = '\0';
        ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
        strcpy(m, out);
        strcat(m, "A");
        ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
        /* standard alphabet and other bytes */
        const char bad[] = {'+', '/', '=', ' ', '.', '\n', '\x80', '\xff'};
        for (size_t i = 0; i < sizeof(bad); i++) {
            strcpy(m, out);
            m[10] = bad[i];
            ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
        }
        /* too long, including a valid cursor followed by junk */
        memset(m, 'A', sizeof(m));
        m[CURSOR_MAX_LEN + 1] = '\0';
        ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
        memcpy(m, out, chars);
        ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
        m[200] = '\0';
        ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
        /* whitespace is not trimmed */
        m[0] = ' ';
        strcpy(m + 1, out);
        ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
    }
    struct cursor d;
    ck_assert_int_eq(cursor_decode("A", 0, &d), CURSOR_INVALID);
    ck_assert_int_eq(cursor_decode("AA", 0, &d), CURSOR_INVALID);
}
END_TEST

START_TEST(test_version_byte)
{
    /* Correct CRC, every version byte, at both lengths: only 1 decodes from
     * 25 bytes, only 2 from 38 (the length names the version). */
    for (int ver = 0; ver < 256; ver++) {
        for (int v2 = 0; v2 < 2; v2++) {
            uint8_t bin[38] = {(uint8_t)ver, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2};
            size_t n = v2 ? 38 : 25;
            char s[CURSOR_STR_LEN];
            ref_encode(bin, n, s);
            ck_assert_uint_eq(strlen(s), v2 ? 51 : 34);
            struct cursor d;
            bool ok = ver == (v2 ? 2 : 1);
            ck_assert_int_eq(cursor_decode(s, 0, &d), ok ? CURSOR_OK : CURSOR_INVALID);
            if (ok) {
                ck_assert_uint_eq(d.epoch, 1);
                ck_assert_uint_eq(d.p, 2);
                ck_assert_uint_eq(d.g, 0);
                ck_assert_int_eq(d.has_attrs, v2);
            }
        }
    }
}
END_TEST

START_TEST(test_flags_byte)
{
    /* Version 2, correct CRC, every flags byte: bit 0 is guest, any other bit is invalid. */
    for (int flags = 0; flags < 256; flags++) {
        uint8_t bin[38] = {2, 0, 0, 0, 1};
        bin[21] = (uint8_t)flags;
        bin[29] = 9;    /* core_level 9 */
        bin[33] = 0x42; /* platform_hash 0x42 */
        char s[CURSOR_STR_LEN];
        ref_encode(bin, sizeof(bin), s);
        struct cursor d;
        enum cursor_status st = cursor_decode(s, 0, &d);
        ck_assert_int_eq(st, flags <= 1 ? CURSOR_OK : CURSOR_INVALID);
        if (st == CURSOR_OK) {
            ck_assert(d.has_attrs);
            ck_assert_int_eq(d.a.guest, flags == 1);
            ck_assert_uint_eq(d.a.core_level, 9);
            ck_assert_uint_eq(d.a.platform_hash, 0x42);
            char again[CURSOR_STR_LEN];
            cursor_encode(&d, again);
            ck_assert_str_eq(again, s);
        }
    }
}
END_TEST

static Suite *
cursor_suite(void)
{
    Suite *s = suite_create("cursor");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_crc_reference);
    tcase_add_test(tc, test_crc_table);
    tcase_add_test(tc, test_known_answer);
    tcase_add_test(tc, test_round_trip_random);
    tcase_add_test(tc, test_empty);
    tcase_add_test(tc, test_epoch_not_compared);
    tcase_add_test(tc, test_attrs_equal);
    tcase_add_test(tc, test_every_single_char_corruption);
    tcase_add_test(tc, test_strict);
    tcase_add_test(tc, test_version_byte);
    tcase_add_test(tc, test_flags_byte);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(cursor_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
