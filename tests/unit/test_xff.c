/*
 * test_xff: Check suite for lib/xff (trust lists, X-Forwarded-For walking
 * from the right, malformed and oversized headers, IPv4-mapped peers).
 */
#include "xff.h"

#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>

static struct xff_addr
addr(const char *s)
{
    struct xff_addr a;
    ck_assert_msg(xff_addr_parse(s, strlen(s), &a), "parse %s", s);
    return a;
}

static struct xff_trust
trust(const char *spec)
{
    struct xff_trust t;
    char err[128];
    ck_assert_msg(xff_trust_parse(spec, &t, err, sizeof(err)), "%s: %s", spec, err);
    return t;
}

/* The client as text for peer and header (NULL: absent), and the result kind. */
static const char *
client(const struct xff_trust *t, const char *peer, const char *hdr, enum xff_result *res)
{
    static char out[XFF_ADDR_STRLEN];
    struct xff_addr p = addr(peer), c;
    enum xff_result r = xff_client(t, &p, hdr, hdr ? strlen(hdr) : 0, &c);
    if (res)
        *res = r;
    xff_addr_format(&c, out, sizeof(out));
    return out;
}

START_TEST(test_trust_parse)
{
    struct xff_trust t = trust("127.0.0.1/32 ::1/128, 10.0.0.0/8\t192.168.1.7");
    ck_assert_uint_eq(t.n, 4);
    ck_assert_int_eq(t.nets[3].prefix, 32);
    struct xff_addr a;
    ck_assert(xff_trusted(&t, (a = addr("127.0.0.1"), &a)));
    ck_assert(!xff_trusted(&t, (a = addr("127.0.0.2"), &a)));
    ck_assert(xff_trusted(&t, (a = addr("::1"), &a)));
    ck_assert(xff_trusted(&t, (a = addr("10.255.1.2"), &a)));
    ck_assert(!xff_trusted(&t, (a = addr("11.0.0.1"), &a)));
    ck_assert(xff_trusted(&t, (a = addr("192.168.1.7"), &a)));
    /* A mapped peer is IPv4. */
    ck_assert(xff_trusted(&t, (a = addr("::ffff:127.0.0.1"), &a)));
    /* Host bits in the spec are cleared; odd prefixes compare bit by bit. */
    t = trust("172.16.5.5/12 2001:db8::/33");
    ck_assert(xff_trusted(&t, (a = addr("172.31.255.255"), &a)));
    ck_assert(!xff_trusted(&t, (a = addr("172.32.0.0"), &a)));
    ck_assert(xff_trusted(&t, (a = addr("2001:db8:7fff::1"), &a)));
    ck_assert(!xff_trusted(&t, (a = addr("2001:db8:8000::1"), &a)));
    t = trust("0.0.0.0/0");
    ck_assert(xff_trusted(&t, (a = addr("8.8.8.8"), &a)));
    ck_assert(!xff_trusted(&t, (a = addr("::2"), &a)));
    t = trust("");
    ck_assert_uint_eq(t.n, 0);
    ck_assert(!xff_trusted(&t, (a = addr("127.0.0.1"), &a)));
    t = trust(NULL);
    ck_assert_uint_eq(t.n, 0);
}
END_TEST

START_TEST(test_trust_parse_errors)
{
    struct xff_trust t;
    char err[128];
    const char *bad[] = {"127.0.0.1/33", "::1/129", "10.0.0.0/",    "10.0.0.0/-1", "10.0.0.0/8x",
                         "localhost",    "1.2.3",   "1.2.3.4/0008", "[::1]"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        err[0] = '\0';
        ck_assert_msg(!xff_trust_parse(bad[i], &t, err, sizeof(err)), "accepted %s", bad[i]);
        ck_assert_msg(err[0] != '\0', "no message for %s", bad[i]);
    }
    char many[XFF_MAX_NETS * 16 + 32] = "";
    for (int i = 0; i <= XFF_MAX_NETS; i++) {
        char one[16];
        snprintf(one, sizeof(one), "10.0.%d.1 ", i);
        strcat(many, one);
    }
    ck_assert(!xff_trust_parse(many, &t, err, sizeof(err)));
    ck_assert(strstr(err, "more than") != NULL);
}
END_TEST

START_TEST(test_untrusted_peer_ignores_header)
{
    struct xff_trust t = trust("127.0.0.1/32");
    enum xff_result r;
    ck_assert_str_eq(client(&t, "198.51.100.9", "1.2.3.4", &r), "198.51.100.9");
    ck_assert_int_eq(r, XFF_PEER);
    ck_assert_str_eq(client(&t, "127.0.0.1", NULL, &r), "127.0.0.1");
    ck_assert_int_eq(r, XFF_PEER);
    /* Nobody trusted (the default): always the peer. */
    struct xff_trust none = trust("");
    ck_assert_str_eq(client(&none, "127.0.0.1", "1.2.3.4", &r), "127.0.0.1");
    ck_assert_int_eq(r, XFF_PEER);
}
END_TEST

START_TEST(test_rightmost_untrusted)
{
    struct xff_trust t = trust("127.0.0.1/32 10.0.0.0/8 ::1");
    enum xff_result r;
    ck_assert_str_eq(client(&t, "127.0.0.1", "203.0.113.7", &r), "203.0.113.7");
    ck_assert_int_eq(r, XFF_FORWARDED);
    /* A forged left part is skipped: the right-most untrusted entry wins. */
    ck_assert_str_eq(client(&t, "127.0.0.1", "6.6.6.6, 203.0.113.7, 10.1.1.1", &r), "203.0.113.7");
    ck_assert_str_eq(client(&t, "127.0.0.1", "garbage;<>, 203.0.113.7", &r), "203.0.113.7");
    ck_assert_int_eq(r, XFF_FORWARDED);
    /* Every entry trusted: the left-most. */
    ck_assert_str_eq(client(&t, "127.0.0.1", "10.0.0.2,10.0.0.3", &r), "10.0.0.2");
    ck_assert_int_eq(r, XFF_FORWARDED);
    /* Ports and brackets. */
    ck_assert_str_eq(client(&t, "::1", "[2001:db8::5]:4431", &r), "2001:db8::5");
    ck_assert_str_eq(client(&t, "::1", "[2001:db8::5]", &r), "2001:db8::5");
    ck_assert_str_eq(client(&t, "::1", "2001:db8::6", &r), "2001:db8::6");
    ck_assert_str_eq(client(&t, "::1", "192.0.2.1:80", &r), "192.0.2.1");
    ck_assert_str_eq(client(&t, "::1", "\t192.0.2.1 ", &r), "192.0.2.1");
    ck_assert_str_eq(client(&t, "::1", "::ffff:192.0.2.3", &r), "192.0.2.3");
}
END_TEST

START_TEST(test_malformed)
{
    struct xff_trust t = trust("127.0.0.1/32");
    const char *bad[] = {
        "",         " ",      "1.2.3.4,",  "unknown",         "1.2.3.4:", "1.2.3.4:123456",
        "[::1",     "[::1]x", "[1.2.3.4]", "1.2.3.4 5.6.7.8", "::1:",     "example.com",
        "1.2.3.4/8"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        enum xff_result r;
        ck_assert_str_eq(client(&t, "127.0.0.1", bad[i], &r), "127.0.0.1");
        ck_assert_msg(r == XFF_MALFORMED, "'%s' not malformed", bad[i]);
    }
    /* Too long: the cap holds whatever the content. */
    char big[XFF_HEADER_MAX + 16];
    memset(big, ' ', sizeof(big));
    memcpy(big + sizeof(big) - 8, "1.2.3.4", 8);
    enum xff_result r;
    ck_assert_str_eq(client(&t, "127.0.0.1", big, &r), "127.0.0.1");
    ck_assert_int_eq(r, XFF_MALFORMED);
    /* Too many trusted hops. */
    char hops[XFF_MAX_HOPS * 12 + 16] = "";
    for (int i = 0; i <= XFF_MAX_HOPS; i++)
        strcat(hops, i ? ",127.0.0.1" : "127.0.0.1");
    ck_assert_str_eq(client(&t, "127.0.0.1", hops, &r), "127.0.0.1");
    ck_assert_int_eq(r, XFF_MALFORMED);
    /* A NUL inside the counted length is not an address. */
    struct xff_addr p = addr("127.0.0.1"), c;
    ck_assert_int_eq(xff_client(&t, &p, "1.2.3.4\0", 8, &c), XFF_MALFORMED);
}
END_TEST

START_TEST(test_sockaddr_and_format)
{
    struct sockaddr_in in = {.sin_family = AF_INET};
    inet_pton(AF_INET, "192.0.2.44", &in.sin_addr);
    struct xff_addr a;
    char out[XFF_ADDR_STRLEN];
    xff_addr_from_sockaddr((struct sockaddr *)&in, &a);
    xff_addr_format(&a, out, sizeof(out));
    ck_assert_str_eq(out, "192.0.2.44");
    struct sockaddr_in6 in6 = {.sin6_family = AF_INET6};
    inet_pton(AF_INET6, "::ffff:192.0.2.45", &in6.sin6_addr);
    xff_addr_from_sockaddr((struct sockaddr *)&in6, &a);
    ck_assert_int_eq(a.family, AF_INET);
    xff_addr_format(&a, out, sizeof(out));
    ck_assert_str_eq(out, "192.0.2.45");
    struct sockaddr un = {.sa_family = AF_UNIX};
    xff_addr_from_sockaddr(&un, &a);
    ck_assert_int_eq(a.family, 0);
    xff_addr_format(&a, out, sizeof(out));
    ck_assert_str_eq(out, "-");
    /* An unknown peer is never trusted, even by 0.0.0.0/0. */
    struct xff_trust t = trust("0.0.0.0/0 ::/0");
    ck_assert(!xff_trusted(&t, &a));
}
END_TEST

static Suite *
xff_suite(void)
{
    Suite *s = suite_create("xff");
    TCase *tc = tcase_create("core");
    tcase_add_test(tc, test_trust_parse);
    tcase_add_test(tc, test_trust_parse_errors);
    tcase_add_test(tc, test_untrusted_peer_ignores_header);
    tcase_add_test(tc, test_rightmost_untrusted);
    tcase_add_test(tc, test_malformed);
    tcase_add_test(tc, test_sockaddr_and_format);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(xff_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
