/*
 * test_token: Check suite for lib/token (mint, verify, key rotation,
 * malformed input). Known-answer vectors were computed independently
 * (Python hmac + base64), so the wire format is pinned, not just
 * self-consistent.
 */
#include "token.h"

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <openssl/evp.h>
#include <openssl/hmac.h>

#define NOW 1700000000000000LL

static const struct token_keys keys = {
    .current_id = "k2024",
    .current_key = "secret-current",
    .previous_id = "old",
    .previous_key = "secret-previous",
};

static const struct token_keys keys_current_only = {
    .current_id = "k2024",
    .current_key = "secret-current",
};

static const struct token_keys keys_old = {
    .current_id = "old",
    .current_key = "secret-previous",
};

/* Python: app 1, uid 7, expires 1700000000000000, not guest, key k2024. */
static const char golden_current[] =
    "v1.k2024.AAAAAAAAAAEAAAAAAAAABwAGCiQYHkAAAA.AQeSPK6nGhlAZJ20oq-80PhRBkdnzOesTlv1b6HRpFE";
/* Python: app and uid UINT64_MAX, expires INT64_MAX, guest, key old. */
static const char golden_old[] =
    "v1.old._____________________3__________AQ.n6J859pMGwDJhqJMQG1RNsOjktKojNGQ730wGNRfILU";

static void
mint_ok(const struct token_keys *k, uint64_t app, uint64_t uid, int64_t exp, bool guest,
        char out[TOKEN_MAX_LEN])
{
    struct token_claims c = {.app_id = app, .uid = uid, .expires_at_us = exp, .guest = guest};
    ck_assert(token_mint(k, &c, out, TOKEN_MAX_LEN));
}

START_TEST(test_round_trip)
{
    char t[TOKEN_MAX_LEN];
    mint_ok(&keys, 42, 1001, NOW + 3600000000LL, false, t);
    ck_assert_uint_eq(strncmp(t, "v1.k2024.", 9), 0);
    struct token_claims c;
    memset(&c, 0xaa, sizeof(c));
    ck_assert_int_eq(token_verify(&keys, t, NOW, &c), TOKEN_OK);
    ck_assert_uint_eq(c.app_id, 42);
    ck_assert_uint_eq(c.uid, 1001);
    ck_assert_int_eq(c.expires_at_us, NOW + 3600000000LL);
    ck_assert(!c.guest);
    /* claims may be NULL */
    ck_assert_int_eq(token_verify(&keys, t, NOW, NULL), TOKEN_OK);
}
END_TEST

START_TEST(test_known_answer)
{
    char t[TOKEN_MAX_LEN];
    mint_ok(&keys, 1, 7, 1700000000000000LL, false, t);
    ck_assert_str_eq(t, golden_current);
    mint_ok(&keys_old, UINT64_MAX, UINT64_MAX, INT64_MAX, true, t);
    ck_assert_str_eq(t, golden_old);

    struct token_claims c;
    ck_assert_int_eq(token_verify(&keys, golden_current, 1700000000000000LL - 1, &c), TOKEN_OK);
    ck_assert_uint_eq(c.app_id, 1);
    ck_assert_uint_eq(c.uid, 7);
    ck_assert_int_eq(token_verify(&keys, golden_old, NOW, &c), TOKEN_OK);
    ck_assert_uint_eq(c.app_id, UINT64_MAX);
    ck_assert_uint_eq(c.uid, UINT64_MAX);
    ck_assert_int_eq(c.expires_at_us, INT64_MAX);
    ck_assert(c.guest);
}
END_TEST

START_TEST(test_previous_key)
{
    char t[TOKEN_MAX_LEN];
    mint_ok(&keys_old, 5, 6, NOW + 1, false, t);
    ck_assert_int_eq(token_verify(&keys, t, NOW, NULL), TOKEN_OK);
    /* after the rotation finishes the old key is gone */
    ck_assert_int_eq(token_verify(&keys_current_only, t, NOW, NULL), TOKEN_BAD_SIGNATURE);
    /* a previous id without a key accepts nothing */
    struct token_keys half = keys;
    half.previous_key = NULL;
    ck_assert_int_eq(token_verify(&half, t, NOW, NULL), TOKEN_BAD_SIGNATURE);
    half.previous_key = "";
    ck_assert_int_eq(token_verify(&half, t, NOW, NULL), TOKEN_BAD_SIGNATURE);
    /* tokens of the current key still verify with the rotated set */
    mint_ok(&keys, 5, 6, NOW + 1, false, t);
    ck_assert_int_eq(token_verify(&keys_current_only, t, NOW, NULL), TOKEN_OK);
}
END_TEST

START_TEST(test_unknown_kid)
{
    struct token_keys other = {.current_id = "other", .current_key = "secret-current"};
    char t[TOKEN_MAX_LEN];
    mint_ok(&other, 1, 2, NOW + 1000, false, t);
    ck_assert_int_eq(token_verify(&keys, t, NOW, NULL), TOKEN_BAD_SIGNATURE);
    /* same id, different key */
    struct token_keys wrong = {.current_id = "k2024", .current_key = "secret-wrong"};
    mint_ok(&wrong, 1, 2, NOW + 1000, false, t);
    ck_assert_int_eq(token_verify(&keys, t, NOW, NULL), TOKEN_BAD_SIGNATURE);
    /* keys swapped between ids */
    struct token_keys swapped = {.current_id = "old", .current_key = "secret-current"};
    mint_ok(&swapped, 1, 2, NOW + 1000, false, t);
    ck_assert_int_eq(token_verify(&keys, t, NOW, NULL), TOKEN_BAD_SIGNATURE);
}
END_TEST

START_TEST(test_flip_every_char)
{
    char t[TOKEN_MAX_LEN], m[TOKEN_MAX_LEN];
    mint_ok(&keys, 77, 88, NOW + 1000, true, t);
    size_t len = strlen(t);
    int tried = 0;
    for (size_t i = 0; i < len; i++) {
        for (int c = 1; c < 256; c++) {
            if (c == (unsigned char)t[i])
                continue;
            memcpy(m, t, len + 1);
            m[i] = (char)c;
            ck_assert_int_ne(token_verify(&keys, m, NOW, NULL), TOKEN_OK);
            tried++;
        }
    }
    ck_assert_int_eq(tried, (int)len * 254);
}
END_TEST

START_TEST(test_expiry)
{
    char t[TOKEN_MAX_LEN];
    mint_ok(&keys, 1, 2, NOW, false, t);
    ck_assert_int_eq(token_verify(&keys, t, NOW - 1, NULL), TOKEN_OK);
    ck_assert_int_eq(token_verify(&keys, t, NOW, NULL), TOKEN_EXPIRED);
    ck_assert_int_eq(token_verify(&keys, t, INT64_MAX, NULL), TOKEN_EXPIRED);
    /* claims are left alone when not OK */
    struct token_claims c = {.app_id = 99};
    ck_assert_int_eq(token_verify(&keys, t, NOW + 1, &c), TOKEN_EXPIRED);
    ck_assert_uint_eq(c.app_id, 99);

    /* signed values are signed: negative expiry */
    mint_ok(&keys, 1, 2, -5, false, t);
    ck_assert_int_eq(token_verify(&keys, t, -10, NULL), TOKEN_OK);
    ck_assert_int_eq(token_verify(&keys, t, 0, NULL), TOKEN_EXPIRED);
    mint_ok(&keys, 1, 2, INT64_MIN, false, t);
    ck_assert_int_eq(token_verify(&keys, t, INT64_MIN, NULL), TOKEN_EXPIRED);

    /* an expired forgery is reported as a forgery */
    struct token_keys wrong = {.current_id = "k2024", .current_key = "nope"};
    mint_ok(&wrong, 1, 2, NOW - 1000, false, t);
    ck_assert_int_eq(token_verify(&keys, t, NOW, NULL), TOKEN_BAD_SIGNATURE);
}
END_TEST

START_TEST(test_guest_and_limits)
{
    char t[TOKEN_MAX_LEN];
    struct token_claims c;
    mint_ok(&keys, UINT64_MAX, UINT64_MAX, INT64_MAX, true, t);
    ck_assert_int_eq(token_verify(&keys, t, NOW, &c), TOKEN_OK);
    ck_assert_uint_eq(c.app_id, UINT64_MAX);
    ck_assert_uint_eq(c.uid, UINT64_MAX);
    ck_assert_int_eq(c.expires_at_us, INT64_MAX);
    ck_assert(c.guest);
    mint_ok(&keys, 0, 0, NOW + 1, false, t);
    ck_assert_int_eq(token_verify(&keys, t, NOW, &c), TOKEN_OK);
    ck_assert_uint_eq(c.app_id, 0);
    ck_assert_uint_eq(c.uid, 0);
    ck_assert(!c.guest);
}
END_TEST

/* Builds "v1.kid.payload.mac" with a hand-made payload and a real MAC. */
static void
sign_raw(const char *kid, const char *key, const uint8_t *payload, size_t plen, char *out)
{
    static const char abc[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    char b[128];
    size_t o = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < plen; i++) {
        acc = acc << 8 | payload[i];
        bits += 8;
        while (bits >= 6) {
            b[o++] = abc[(acc >> (bits - 6)) & 63];
            bits -= 6;
        }
    }
    if (bits > 0)
        b[o++] = abc[(acc << (6 - bits)) & 63];
    b[o] = '\0';
    char msg[256];
    snprintf(msg, sizeof(msg), "v1.%s.%s", kid, b);
    uint8_t mac[32];
    unsigned int maclen = 0;
    ck_assert_ptr_nonnull(
        HMAC(EVP_sha256(), key, (int)strlen(key), (const uint8_t *)msg, strlen(msg), mac, &maclen));
    ck_assert_uint_eq(maclen, 32);
    o = 0;
    acc = 0;
    bits = 0;
    for (size_t i = 0; i < 32; i++) {
        acc = acc << 8 | mac[i];
        bits += 8;
        while (bits >= 6) {
            b[o++] = abc[(acc >> (bits - 6)) & 63];
            bits -= 6;
        }
    }
    if (bits > 0)
        b[o++] = abc[(acc << (6 - bits)) & 63];
    b[o] = '\0';
    snprintf(out, TOKEN_MAX_LEN, "%s.%s", msg, b);
}

START_TEST(test_raw_payloads)
{
    uint8_t p[26] = {0};
    p[23] = 0x10; /* expires far in the future relative to 0 */
    char t[TOKEN_MAX_LEN];

    /* the hand-made signer agrees with token_mint */
    p[24] = 1;
    sign_raw("k2024", "secret-current", p, 25, t);
    struct token_claims c;
    ck_assert_int_eq(token_verify(&keys, t, 0, &c), TOKEN_OK);
    ck_assert(c.guest);
    ck_assert_int_eq(c.expires_at_us, 0x10);
    char m[TOKEN_MAX_LEN];
    ck_assert(token_mint(&keys, &c, m, sizeof(m)));
    ck_assert_str_eq(m, t);

    /* unknown flag bits, properly signed */
    p[24] = 0x02;
    sign_raw("k2024", "secret-current", p, 25, t);
    ck_assert_int_eq(token_verify(&keys, t, 0, NULL), TOKEN_MALFORMED);
    p[24] = 0x81;
    sign_raw("k2024", "secret-current", p, 25, t);
    ck_assert_int_eq(token_verify(&keys, t, 0, NULL), TOKEN_MALFORMED);
    p[24] = 0;

    /* wrong payload lengths, properly signed */
    sign_raw("k2024", "secret-current", p, 24, t);
    ck_assert_int_eq(token_verify(&keys, t, 0, NULL), TOKEN_MALFORMED);
    sign_raw("k2024", "secret-current", p, 26, t);
    ck_assert_int_eq(token_verify(&keys, t, 0, NULL), TOKEN_MALFORMED);
    sign_raw("k2024", "secret-current", p, 0, t);
    ck_assert_int_eq(token_verify(&keys, t, 0, NULL), TOKEN_MALFORMED);
}
END_TEST

START_TEST(test_malformed)
{
    char t[TOKEN_MAX_LEN], m[2 * TOKEN_MAX_LEN];
    mint_ok(&keys, 1, 2, NOW + 1000, false, t);
    size_t len = strlen(t);
    const char *dot1 = strchr(t, '.'), *dot2 = strchr(dot1 + 1, '.');
    const char *dot3 = strchr(dot2 + 1, '.');
    size_t pay = (size_t)(dot2 + 1 - t), mac = (size_t)(dot3 + 1 - t);

    ck_assert_int_eq(token_verify(&keys, NULL, NOW, NULL), TOKEN_MALFORMED);
    ck_assert_int_eq(token_verify(&keys, "", NOW, NULL), TOKEN_MALFORMED);
    ck_assert_int_eq(token_verify(&keys, "...", NOW, NULL), TOKEN_MALFORMED);

    /* too long: a valid token followed by junk past the cap */
    memset(m, 'A', sizeof(m));
    m[TOKEN_MAX_LEN + 1] = '\0';
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    memcpy(m, t, len);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);

    /* 3 parts: drop the MAC */
    memcpy(m, t, (size_t)(dot3 - t));
    m[dot3 - t] = '\0';
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    /* 5 parts */
    snprintf(m, sizeof(m), "%s.x", t);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    snprintf(m, sizeof(m), "%s.", t);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);

    /* version */
    snprintf(m, sizeof(m), "%s", t);
    m[1] = '2';
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    snprintf(m, sizeof(m), "V%s", t + 1);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    snprintf(m, sizeof(m), "v10%s", t + 2);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);

    /* bad base64url: padding, standard alphabet, other bytes */
    const char bad[] = {'=', '+', '/', ' ', '.', '\x80', '\xff'};
    for (size_t i = 0; i < sizeof(bad); i++) {
        snprintf(m, sizeof(m), "%s", t);
        m[pay + 3] = bad[i];
        ck_assert_int_ne(token_verify(&keys, m, NOW, NULL), TOKEN_OK);
        if (bad[i] != '.')
            ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
        snprintf(m, sizeof(m), "%s", t);
        m[mac + 5] = bad[i];
        ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    }
    /* padded payload or MAC */
    snprintf(m, sizeof(m), "%.*s==%s", (int)(dot3 - t), t, dot3);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    snprintf(m, sizeof(m), "%s=", t);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);

    /* non-canonical trailing bits: 34 chars hold 204 bits for 200 */
    snprintf(m, sizeof(m), "%s", t);
    ck_assert_int_eq(m[dot3 - t - 1], 'A'); /* flags 0 end in 'A' */
    m[dot3 - t - 1] = 'B';
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    /* 43 chars hold 258 bits for 256: the last char must be a multiple of 4 */
    snprintf(m, sizeof(m), "%s", t);
    int last = m[len - 1];
    const char *abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    int v = (int)(strchr(abc, last) - abc);
    m[len - 1] = abc[v ^ 1];
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);

    /* payload and MAC lengths off by one */
    snprintf(m, sizeof(m), "%.*sA%s", (int)(dot3 - t), t, dot3);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    snprintf(m, sizeof(m), "%sA", t);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    snprintf(m, sizeof(m), "%.*s", (int)len - 1, t);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);

    /* key ids: empty, too long, bad characters */
    snprintf(m, sizeof(m), "v1.%s", dot2);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    snprintf(m, sizeof(m), "v1.abcdefghijklmnopq%s", dot2);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    snprintf(m, sizeof(m), "v1.k 2024%s", dot2);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_MALFORMED);
    /* a well-formed unknown id is a signature problem */
    snprintf(m, sizeof(m), "v1.abcdefghijklmnop%s", dot2);
    ck_assert_int_eq(token_verify(&keys, m, NOW, NULL), TOKEN_BAD_SIGNATURE);
}
END_TEST

START_TEST(test_mint_errors)
{
    struct token_claims c = {.app_id = 1, .uid = 2, .expires_at_us = NOW};
    char t[TOKEN_MAX_LEN];
    struct token_keys k = keys;
    const char *bad_ids[] = {"", "a.b", "abcdefghijklmnopq", "k=1", "k/1", "\xc3\xa9"};
    for (size_t i = 0; i < sizeof(bad_ids) / sizeof(bad_ids[0]); i++) {
        k.current_id = bad_ids[i];
        ck_assert(!token_mint(&k, &c, t, sizeof(t)));
    }
    k.current_id = NULL;
    ck_assert(!token_mint(&k, &c, t, sizeof(t)));
    k = keys;
    k.current_key = "";
    ck_assert(!token_mint(&k, &c, t, sizeof(t)));
    k.current_key = NULL;
    ck_assert(!token_mint(&k, &c, t, sizeof(t)));
    ck_assert(!token_mint(NULL, &c, t, sizeof(t)));
    ck_assert(!token_mint(&keys, NULL, t, sizeof(t)));

    /* the longest id is fine, and the buffer may be exactly big enough */
    k = keys;
    k.current_id = "abcdefghijklmnop";
    ck_assert(token_mint(&k, &c, t, sizeof(t)));
    size_t need = strlen(t) + 1;
    ck_assert_uint_eq(need, 99);
    char exact[99];
    ck_assert(token_mint(&k, &c, exact, sizeof(exact)));
    ck_assert_str_eq(exact, t);
    ck_assert(!token_mint(&k, &c, exact, sizeof(exact) - 1));
    ck_assert(!token_mint(&k, &c, exact, 0));
}
END_TEST

START_TEST(test_status_str)
{
    ck_assert_str_eq(token_status_str(TOKEN_OK), "ok");
    ck_assert_str_eq(token_status_str(TOKEN_MALFORMED), "malformed");
    ck_assert_str_eq(token_status_str(TOKEN_BAD_SIGNATURE), "bad_signature");
    ck_assert_str_eq(token_status_str(TOKEN_EXPIRED), "expired");
    ck_assert_str_eq(token_status_str((enum token_status)42), "unknown");
}
END_TEST

static Suite *
token_suite(void)
{
    Suite *s = suite_create("token");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_round_trip);
    tcase_add_test(tc, test_known_answer);
    tcase_add_test(tc, test_previous_key);
    tcase_add_test(tc, test_unknown_kid);
    tcase_add_test(tc, test_flip_every_char);
    tcase_add_test(tc, test_expiry);
    tcase_add_test(tc, test_guest_and_limits);
    tcase_add_test(tc, test_raw_payloads);
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_mint_errors);
    tcase_add_test(tc, test_status_str);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(token_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
