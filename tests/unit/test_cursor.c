/*
 * test_cursor: Check suite for lib/cursor (wire format, round trips,
 * corruption detection, strict decoding). Known-answer vectors were
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

/* Reference base64url decoder for 34 chars → 25 bytes (no validation). */
static void
ref_decode(const char *s, uint8_t out[25])
{
    uint8_t tmp[27] = {0};
    uint32_t acc = 0;
    int bits = 0;
    size_t o = 0;
    for (size_t i = 0; i < 34; i++) {
        acc = acc << 6 | (uint32_t)(strchr(alphabet, s[i]) - alphabet);
        bits += 6;
        if (bits >= 8) {
            tmp[o++] = (uint8_t)(acc >> (bits - 8));
            bits -= 8;
        }
    }
    memcpy(out, tmp, 25);
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
    struct {
        struct cursor c;
        const char *s;
    } v[] = {
        {{3, 1679757323320865ULL, 42}, "AQAAAAMABfe6-pC-IQAAAAAAAAAqMl5OdA"},
        {{0, 0, 0}, "AQAAAAAAAAAAAAAAAAAAAAAAAAAAw1AdfA"},
        {{UINT32_MAX, UINT64_MAX, UINT64_MAX}, "Af__________________________LTViRw"},
    };
    for (size_t i = 0; i < sizeof(v) / sizeof(v[0]); i++) {
        char out[CURSOR_STR_LEN];
        cursor_encode(&v[i].c, out);
        ck_assert_str_eq(out, v[i].s);
        struct cursor d;
        ck_assert_int_eq(cursor_decode(v[i].s, 7, &d), CURSOR_OK);
        ck_assert_uint_eq(d.epoch, v[i].c.epoch);
        ck_assert_uint_eq(d.p, v[i].c.p);
        ck_assert_uint_eq(d.g, v[i].c.g);
    }
}
END_TEST

START_TEST(test_round_trip_random)
{
    uint64_t seed = 20240601;
    for (int i = 0; i < 10000; i++) {
        struct cursor c = {
            .epoch = (uint32_t)next_rand(&seed),
            .p = next_rand(&seed),
            .g = next_rand(&seed),
        };
        /* small values too, where most bytes are zero */
        if (i % 4 == 1) {
            c.p >>= 40;
            c.g >>= 50;
        }
        char out[CURSOR_STR_LEN];
        memset(out, 'x', sizeof(out));
        cursor_encode(&c, out);
        ck_assert_uint_eq(strlen(out), 34);
        ck_assert_uint_eq(strspn(out, alphabet), 34);

        /* the check value is CRC-32C of the first 21 bytes */
        uint8_t bin[25];
        ref_decode(out, bin);
        ck_assert_uint_eq(bin[0], 1);
        uint32_t crc =
            (uint32_t)bin[21] << 24 | (uint32_t)bin[22] << 16 | (uint32_t)bin[23] << 8 | bin[24];
        ck_assert_uint_eq(crc, ref_crc32c(bin, 21));

        struct cursor d;
        ck_assert_int_eq(cursor_decode(out, c.epoch + 1, &d), CURSOR_OK);
        ck_assert_uint_eq(d.epoch, c.epoch);
        ck_assert_uint_eq(d.p, c.p);
        ck_assert_uint_eq(d.g, c.g);
    }
}
END_TEST

START_TEST(test_empty)
{
    struct cursor d = {1, 2, 3};
    ck_assert_int_eq(cursor_decode("", 9, &d), CURSOR_OK);
    ck_assert_uint_eq(d.epoch, 9);
    ck_assert_uint_eq(d.p, 0);
    ck_assert_uint_eq(d.g, 0);
    d = (struct cursor){1, 2, 3};
    ck_assert_int_eq(cursor_decode(NULL, 11, &d), CURSOR_OK);
    ck_assert_uint_eq(d.epoch, 11);
    ck_assert_uint_eq(d.p, 0);
    ck_assert_uint_eq(d.g, 0);
}
END_TEST

START_TEST(test_epoch_not_compared)
{
    struct cursor c = {5, 100, 200}, d;
    char out[CURSOR_STR_LEN];
    cursor_encode(&c, out);
    ck_assert_int_eq(cursor_decode(out, 6, &d), CURSOR_OK);
    ck_assert_uint_eq(d.epoch, 5);
    ck_assert_int_eq(cursor_decode(out, 0, &d), CURSOR_OK);
    ck_assert_uint_eq(d.epoch, 5);
}
END_TEST

START_TEST(test_every_single_char_corruption)
{
    uint64_t seed = 7;
    int tried = 0;
    for (int round = 0; round < 20; round++) {
        struct cursor c = {(uint32_t)next_rand(&seed), next_rand(&seed), next_rand(&seed)};
        if (round == 0)
            c = (struct cursor){0, 0, 0};
        char out[CURSOR_STR_LEN], m[CURSOR_STR_LEN];
        cursor_encode(&c, out);
        for (size_t i = 0; i < 34; i++) {
            for (size_t k = 0; k < 64; k++) {
                if (alphabet[k] == out[i])
                    continue;
                memcpy(m, out, sizeof(m));
                m[i] = alphabet[k];
                struct cursor d = {0xdead, 0xbeef, 0xf00d};
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
                tried++;
            }
        }
    }
    ck_assert_int_eq(tried, 20 * 34 * 63);
}
END_TEST

START_TEST(test_strict)
{
    struct cursor c = {1, 2, 3}, d;
    char out[CURSOR_STR_LEN], m[256];
    cursor_encode(&c, out);

    /* padding: 25 bytes would be padded with two '=' */
    strcpy(m, out);
    strcat(m, "==");
    ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
    strcpy(m, out);
    strcat(m, "=");
    ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
    /* one char short or long */
    strcpy(m, out);
    m[33] = '\0';
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
    memcpy(m, out, 34);
    ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
    m[200] = '\0';
    ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
    /* whitespace is not trimmed */
    m[0] = ' ';
    strcpy(m + 1, out);
    ck_assert_int_eq(cursor_decode(m, 0, &d), CURSOR_INVALID);
    ck_assert_int_eq(cursor_decode("A", 0, &d), CURSOR_INVALID);
    ck_assert_int_eq(cursor_decode("AA", 0, &d), CURSOR_INVALID);
}
END_TEST

/* Sets the CRC of bin (from its first 21 bytes) and encodes it by reference rules. */
static void
ref_encode(uint8_t bin[25], char s[CURSOR_STR_LEN])
{
    uint32_t crc = ref_crc32c(bin, 21);
    bin[21] = (uint8_t)(crc >> 24);
    bin[22] = (uint8_t)(crc >> 16);
    bin[23] = (uint8_t)(crc >> 8);
    bin[24] = (uint8_t)crc;
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < 25; i++) {
        acc = acc << 8 | bin[i];
        bits += 8;
        while (bits >= 6) {
            s[o++] = alphabet[(acc >> (bits - 6)) & 63];
            bits -= 6;
        }
    }
    s[o++] = alphabet[(acc << (6 - bits)) & 63];
    s[o] = '\0';
}

START_TEST(test_version_byte)
{
    /* Correct CRC, every version byte: only 1 decodes. */
    for (int ver = 0; ver < 256; ver++) {
        uint8_t bin[25] = {(uint8_t)ver, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 2};
        char s[CURSOR_STR_LEN];
        ref_encode(bin, s);
        ck_assert_uint_eq(strlen(s), 34);
        struct cursor d;
        ck_assert_int_eq(cursor_decode(s, 0, &d), ver == 1 ? CURSOR_OK : CURSOR_INVALID);
        if (ver == 1) {
            ck_assert_uint_eq(d.epoch, 1);
            ck_assert_uint_eq(d.p, 2);
            ck_assert_uint_eq(d.g, 0);
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
    tcase_add_test(tc, test_every_single_char_corruption);
    tcase_add_test(tc, test_strict);
    tcase_add_test(tc, test_version_byte);
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
