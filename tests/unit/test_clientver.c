/*
 * test_clientver: Check suite for lib/clientver (headers, User-Agent
 * fallback, validation, limits).
 */
#include "clientver.h"

#include <check.h>
#include <stdlib.h>
#include <string.h>

#define UA_SPEC "Mozilla/5.0 (iPhone) platform/ios app_version/8.0.25 core_level/220819"

static void
expect(const struct clientver *cv, const char *platform, const char *version, bool has_level,
       uint64_t level)
{
    ck_assert_str_eq(cv->platform, platform);
    ck_assert_str_eq(cv->app_version, version);
    ck_assert_int_eq(cv->has_core_level, has_level);
    ck_assert_uint_eq(cv->core_level, level);
}

START_TEST(test_spec_user_agent)
{
    struct clientver cv;
    clientver_parse(&cv, NULL, NULL, NULL, UA_SPEC);
    expect(&cv, "ios", "8.0.25", true, 220819);
    /* the bare form from docs/design.md 5.1 */
    clientver_parse(&cv, NULL, NULL, NULL, "platform/ios app_version/8.0.25 core_level/220819");
    expect(&cv, "ios", "8.0.25", true, 220819);
    /* order does not matter, other products are skipped */
    clientver_parse(&cv, NULL, NULL, NULL,
                    "core_level/1 Foo/2 (Linux; Android 14) app_version/1.2.3-beta+7 "
                    "platform/android okhttp/4.12");
    expect(&cv, "android", "1.2.3-beta+7", true, 1);
}
END_TEST

START_TEST(test_nothing)
{
    struct clientver cv;
    memset(&cv, 0x5a, sizeof(cv));
    clientver_parse(&cv, NULL, NULL, NULL, NULL);
    expect(&cv, "", "", false, 0);
    clientver_parse(&cv, "", "", "", "");
    expect(&cv, "", "", false, 0);
    clientver_parse(&cv, NULL, NULL, NULL, "Mozilla/5.0 (X11; Linux x86_64)");
    expect(&cv, "", "", false, 0);
}
END_TEST

START_TEST(test_headers)
{
    struct clientver cv;
    clientver_parse(&cv, "android", "9.1.0", "300000", NULL);
    expect(&cv, "android", "9.1.0", true, 300000);
    /* headers override the User-Agent field by field */
    clientver_parse(&cv, "android", NULL, NULL, UA_SPEC);
    expect(&cv, "android", "8.0.25", true, 220819);
    clientver_parse(&cv, NULL, "9.9.9", NULL, UA_SPEC);
    expect(&cv, "ios", "9.9.9", true, 220819);
    clientver_parse(&cv, NULL, NULL, "0", UA_SPEC);
    expect(&cv, "ios", "8.0.25", true, 0);
    clientver_parse(&cv, "web", "1.0", "5", UA_SPEC);
    expect(&cv, "web", "1.0", true, 5);
    /* an empty, invalid or overlong header counts as absent */
    clientver_parse(&cv, "", "bad version", "12x", UA_SPEC);
    expect(&cv, "ios", "8.0.25", true, 220819);
    clientver_parse(&cv, "bad platform!", "", "", NULL);
    expect(&cv, "", "", false, 0);
    /* surrounding spaces and tabs are not part of the value */
    clientver_parse(&cv, " iOS\t", "\t1.2 ", "  42 ", NULL);
    expect(&cv, "ios", "1.2", true, 42);
    clientver_parse(&cv, " ", "\t", "   ", NULL);
    expect(&cv, "", "", false, 0);
}
END_TEST

START_TEST(test_token_boundaries)
{
    struct clientver cv;
    clientver_parse(&cv, NULL, NULL, NULL,
                    "xplatform/ios my_app_version/1.0 xcore_level/5 Platform/web");
    expect(&cv, "", "", false, 0);
    /* a product must start after a space, not after other punctuation */
    clientver_parse(&cv, NULL, NULL, NULL, "(platform/ios) ;app_version/1.0 ,core_level/5");
    expect(&cv, "", "", false, 0);
    /* the value ends at a space: "ios)" is not a platform */
    clientver_parse(&cv, NULL, NULL, NULL, "Foo platform/ios) app_version/2.0;");
    expect(&cv, "", "", false, 0);
    /* multiple spaces and tabs separate too */
    clientver_parse(&cv, NULL, NULL, NULL, "  platform/ios\t\tapp_version/3  core_level/7  ");
    expect(&cv, "ios", "3", true, 7);
    /* empty values */
    clientver_parse(&cv, NULL, NULL, NULL, "platform/ app_version/ core_level/ platform");
    expect(&cv, "", "", false, 0);
    /* the first valid occurrence wins */
    clientver_parse(&cv, NULL, NULL, NULL,
                    "platform/i*s platform/ios platform/android core_level/x core_level/9 "
                    "core_level/10");
    expect(&cv, "ios", "", true, 9);
    /* "platform//ios": the value "/ios" is invalid */
    clientver_parse(&cv, NULL, NULL, NULL, "platform//ios");
    expect(&cv, "", "", false, 0);
}
END_TEST

START_TEST(test_platform_rules)
{
    struct clientver cv;
    clientver_parse(&cv, NULL, NULL, NULL, "platform/iOS");
    expect(&cv, "ios", "", false, 0);
    clientver_parse(&cv, "HarmonyOS_2-x", NULL, NULL, NULL);
    expect(&cv, "harmonyos_2-x", "", false, 0);
    /* 15 characters fit, 16 do not */
    clientver_parse(&cv, "abcdefghijklmno", NULL, NULL, NULL);
    expect(&cv, "abcdefghijklmno", "", false, 0);
    clientver_parse(&cv, "abcdefghijklmnop", NULL, NULL, "platform/abcdefghijklmnop");
    expect(&cv, "", "", false, 0);
    const char *bad[] = {"i.os", "i os", "ios/", "\xc3\xa9", "ios\x01", "a+b"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        clientver_parse(&cv, bad[i], NULL, NULL, NULL);
        expect(&cv, "", "", false, 0);
    }
}
END_TEST

START_TEST(test_app_version_rules)
{
    struct clientver cv;
    clientver_parse(&cv, NULL, "1.0.0-rc.1+build_5", NULL, NULL);
    expect(&cv, "", "1.0.0-rc.1+build_5", false, 0);
    /* case is kept */
    clientver_parse(&cv, NULL, NULL, NULL, "app_version/8.0.25-BETA");
    expect(&cv, "", "8.0.25-BETA", false, 0);
    /* 31 characters fit, 32 do not */
    const char *v31 = "1234567890123456789012345678901";
    const char *v32 = "12345678901234567890123456789012";
    clientver_parse(&cv, NULL, v31, NULL, NULL);
    expect(&cv, "", v31, false, 0);
    clientver_parse(&cv, NULL, v32, NULL, "app_version/12345678901234567890123456789012");
    expect(&cv, "", "", false, 0);
    const char *bad[] = {"1,0", "1/0", "v1.0;", "1.0\"", "\xe2\x80\x8b", "1 0"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        clientver_parse(&cv, NULL, bad[i], NULL, NULL);
        expect(&cv, "", "", false, 0);
    }
}
END_TEST

START_TEST(test_core_level_rules)
{
    struct clientver cv;
    clientver_parse(&cv, NULL, NULL, "18446744073709551615", NULL);
    expect(&cv, "", "", true, UINT64_MAX);
    clientver_parse(&cv, NULL, NULL, "00000000000000000000000042", NULL);
    expect(&cv, "", "", true, 42);
    /* overflow is ignored, not wrapped or clamped */
    clientver_parse(&cv, NULL, NULL, "18446744073709551616", NULL);
    expect(&cv, "", "", false, 0);
    clientver_parse(&cv, NULL, NULL, "99999999999999999999999", NULL);
    expect(&cv, "", "", false, 0);
    clientver_parse(&cv, NULL, NULL, NULL, "core_level/18446744073709551616");
    expect(&cv, "", "", false, 0);
    /* overflowing header, valid User-Agent: the User-Agent supplies it */
    clientver_parse(&cv, NULL, NULL, "18446744073709551616", "core_level/3");
    expect(&cv, "", "", true, 3);
    const char *bad[] = {"-1", "+1", "1.0", "0x10", "1e3", "12a", " - "};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        clientver_parse(&cv, NULL, NULL, bad[i], NULL);
        expect(&cv, "", "", false, 0);
    }
}
END_TEST

START_TEST(test_overlong)
{
    struct clientver cv;
    char ua[CLIENTVER_MAX_UA + 2];
    /* exactly CLIENTVER_MAX_UA is still parsed */
    memset(ua, 'x', sizeof(ua));
    const char *tail = " platform/ios";
    memcpy(ua + CLIENTVER_MAX_UA - strlen(tail), tail, strlen(tail));
    ua[CLIENTVER_MAX_UA] = '\0';
    clientver_parse(&cv, NULL, NULL, NULL, ua);
    expect(&cv, "ios", "", false, 0);
    /* one more byte and the whole User-Agent is ignored, even its first products */
    memcpy(ua, "platform/web ", 13);
    ua[CLIENTVER_MAX_UA] = 'x';
    ua[CLIENTVER_MAX_UA + 1] = '\0';
    clientver_parse(&cv, NULL, NULL, NULL, ua);
    expect(&cv, "", "", false, 0);

    /* header values: 256 bytes (with padding spaces) are read, 257 ignored */
    char h[300];
    memset(h, ' ', sizeof(h));
    memcpy(h, "ios", 3);
    h[256] = '\0';
    clientver_parse(&cv, h, h, NULL, NULL);
    expect(&cv, "ios", "ios", false, 0);
    h[256] = ' ';
    h[257] = '\0';
    clientver_parse(&cv, h, h, NULL, "platform/web");
    expect(&cv, "web", "", false, 0);
}
END_TEST

static Suite *
clientver_suite(void)
{
    Suite *s = suite_create("clientver");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_spec_user_agent);
    tcase_add_test(tc, test_nothing);
    tcase_add_test(tc, test_headers);
    tcase_add_test(tc, test_token_boundaries);
    tcase_add_test(tc, test_platform_rules);
    tcase_add_test(tc, test_app_version_rules);
    tcase_add_test(tc, test_core_level_rules);
    tcase_add_test(tc, test_overlong);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(clientver_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
