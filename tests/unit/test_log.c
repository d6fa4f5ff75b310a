/*
 * Unit: key=value log lines (lib/log.c).
 */
#include <check.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"

/* Runs fn with stderr redirected to a temporary file; returns what it wrote. */
static char *
capture(void (*fn)(void))
{
    char path[] = "/tmp/test_log_XXXXXX";
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    int saved = dup(2);
    dup2(fd, 2);
    fn();
    dup2(saved, 2);
    close(saved);
    static char buf[8192];
    ssize_t n = pread(fd, buf, sizeof(buf) - 1, 0);
    close(fd);
    unlink(path);
    buf[n > 0 ? n : 0] = '\0';
    return buf;
}

static void
emit_three(void)
{
    log_set_level(LOG_INFO);
    log_debug("hidden_event", "x=%d", 1);
    log_info("shown_event", "req=%s status=%d", "ab12", 200);
    log_error("bad_event", "reason=%s", "boom");
}

START_TEST(lines_and_levels)
{
    char *out = capture(emit_three);
    ck_assert_ptr_null(strstr(out, "hidden_event"));
    char *line = strstr(out, "level=info event=shown_event req=ab12 status=200\n");
    ck_assert_ptr_nonnull(line);
    ck_assert_ptr_nonnull(strstr(out, "level=error event=bad_event reason=boom\n"));
    /* Every line starts with an RFC 3339 UTC timestamp. */
    ck_assert(strncmp(out, "ts=20", 5) == 0);
    ck_assert_ptr_nonnull(strstr(out, "Z level=info"));
    /* Exactly two lines. */
    int lines = 0;
    for (char *p = out; *p; p++)
        lines += *p == '\n';
    ck_assert_int_eq(lines, 2);
}
END_TEST

static void
emit_long(void)
{
    char big[10000];
    memset(big, 'x', sizeof(big) - 1);
    big[sizeof(big) - 1] = '\0';
    log_set_level(LOG_DEBUG);
    log_info("long_event", "v=%s", big);
}

START_TEST(long_lines_are_cut_but_end_in_newline)
{
    char *out = capture(emit_long);
    size_t n = strlen(out);
    ck_assert_uint_gt(n, 100);
    ck_assert_uint_lt(n, 4097);
    ck_assert_int_eq(out[n - 1], '\n');
}
END_TEST

START_TEST(parse_levels)
{
    enum log_level l;
    ck_assert(log_parse_level("debug", &l) && l == LOG_DEBUG);
    ck_assert(log_parse_level("warn", &l) && l == LOG_WARN);
    ck_assert(!log_parse_level("WARN", &l));
    ck_assert(!log_parse_level("verbose", &l));
    log_set_level(LOG_WARN);
    ck_assert(!log_enabled(LOG_INFO));
    ck_assert(log_enabled(LOG_ERROR));
}
END_TEST

START_TEST(quoting_values)
{
    char buf[32];
    ck_assert_str_eq(log_q(buf, sizeof(buf), "plain-token_1"), "plain-token_1");
    ck_assert_str_eq(log_q(buf, sizeof(buf), "two words"), "\"two words\"");
    ck_assert_str_eq(log_q(buf, sizeof(buf), "a\"b"), "\"a\\\"b\"");
    ck_assert_str_eq(log_q(buf, sizeof(buf), ""), "\"\"");
    ck_assert_str_eq(log_q(buf, sizeof(buf), "k=v"), "\"k=v\"");
    ck_assert_str_eq(log_q(buf, sizeof(buf), "line\nbreak"), "\"line?break\"");
    ck_assert_str_eq(log_q(buf, sizeof(buf), NULL), "\"\"");
    /* Too long for the buffer: cut with "..." and still quoted and terminated. */
    const char *q = log_q(buf, sizeof(buf), "a b c d e f g h i j k l m n o p q r s t u v w x y z");
    ck_assert_uint_lt(strlen(q), sizeof(buf));
    ck_assert_ptr_nonnull(strstr(q, "..."));
    ck_assert_int_eq(q[0], '"');
    ck_assert_int_eq(q[strlen(q) - 1], '"');
}
END_TEST

int
main(void)
{
    Suite *s = suite_create("log");
    TCase *tc = tcase_create("log");
    tcase_add_test(tc, lines_and_levels);
    tcase_add_test(tc, long_lines_are_cut_but_end_in_newline);
    tcase_add_test(tc, parse_levels);
    tcase_add_test(tc, quoting_values);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
