/*
 * Unit: key=value log lines (lib/log.c).
 */
#include <check.h>
#include <jansson.h>
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
    static char buf[16384];
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

/* Parses one JSON line with jansson (duplicates refused); fails the test when invalid. */
static json_t *
parse_json(const char *text)
{
    json_error_t e;
    json_t *j = json_loads(text, JSON_REJECT_DUPLICATES, &e);
    if (j == NULL)
        ck_abort_msg("not JSON (%s): %s", e.text, text);
    return j;
}

static const char *
member(json_t *j, const char *key)
{
    return json_string_value(json_object_get(j, key));
}

static void
emit_json(void)
{
    char q[128];
    log_set_level(LOG_INFO);
    log_set_format(LOG_FORMAT_JSON);
    log_info("json_event", "req=ab12 status=200 who=%s", log_q(q, sizeof(q), "say \"hi\"\\ok"));
    log_set_format(LOG_FORMAT_KV);
}

START_TEST(json_lines_have_the_same_fields)
{
    char *out = capture(emit_json);
    size_t n = strlen(out);
    ck_assert_uint_gt(n, 2);
    ck_assert_int_eq(out[n - 1], '\n');
    ck_assert_ptr_null(memchr(out, '\n', n - 1)); /* one line */
    json_t *j = parse_json(out);
    ck_assert_str_eq(member(j, "level"), "info");
    ck_assert_str_eq(member(j, "event"), "json_event");
    ck_assert_str_eq(member(j, "req"), "ab12");
    ck_assert_str_eq(member(j, "status"), "200");
    ck_assert_str_eq(member(j, "who"), "say \"hi\"\\ok");
    ck_assert(strncmp(member(j, "ts"), "20", 2) == 0);
    ck_assert_uint_eq(json_object_size(j), 6);
    json_decref(j);
}
END_TEST

START_TEST(json_escapes_control_bytes_and_bad_utf8)
{
    char out[512];
    /* Raw control bytes, a quote and a backslash in a bare value, valid
     * UTF-8 (é, €, 😀), then invalid UTF-8: a lone continuation byte, a
     * truncated sequence, an overlong '/', a surrogate and 0xff. */
    const char kv[] =
        "a=x\x01y\x1f\x7fz b=q\"u\\o c=\"t\tab\\\" end\" "
        "d=\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80 e=\x80\xe2\x82 f=\xc0\xaf\xed\xa0\x80\xff";
    size_t n = log_kv_to_json(kv, strlen(kv), out, sizeof(out));
    ck_assert_uint_eq(n, strlen(out));
    ck_assert_ptr_nonnull(strstr(out, "\"a\":\"x\\u0001y\\u001f\\u007fz\""));
    ck_assert_ptr_nonnull(strstr(out, "\"c\":\"t\\tab\\\" end\""));
    json_t *j = parse_json(out);
    ck_assert_str_eq(member(j, "a"), "x\x01y\x1f\x7fz");
    ck_assert_str_eq(member(j, "b"), "q\"u\\o");
    ck_assert_str_eq(member(j, "c"), "t\tab\" end");
    ck_assert_str_eq(member(j, "d"), "\xc3\xa9\xe2\x82\xac\xf0\x9f\x98\x80");
    /* Every invalid byte is one U+FFFD (EF BF BD). */
    ck_assert_str_eq(member(j, "e"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd");
    ck_assert_str_eq(member(j, "f"), "\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf"
                                     "\xbd\xef\xbf\xbd");
    json_decref(j);
}
END_TEST

START_TEST(json_text_that_is_not_key_value_goes_to_msg)
{
    char out[256];
    const char kv[] = "level=warn event=x n=1 free text, with = signs";
    log_kv_to_json(kv, strlen(kv), out, sizeof(out));
    json_t *j = parse_json(out);
    ck_assert_str_eq(member(j, "n"), "1");
    ck_assert_str_eq(member(j, "msg"), "free text, with = signs");
    json_decref(j);
    /* A NUL byte (not in real lines, but bytes are bytes) becomes U+FFFD. */
    const char nul[] = "event=z v=a\0b";
    log_kv_to_json(nul, sizeof(nul) - 1, out, sizeof(out));
    j = parse_json(out);
    ck_assert_str_eq(member(j, "v"), "a\xef\xbf\xbd"
                                     "b");
    json_decref(j);
    /* An unterminated quoted value (a cut kv line) still makes an object. */
    const char cut[] = "event=y v=\"abc";
    log_kv_to_json(cut, strlen(cut), out, sizeof(out));
    j = parse_json(out);
    ck_assert_str_eq(member(j, "v"), "abc");
    json_decref(j);
}
END_TEST

START_TEST(json_lines_are_capped_and_stay_valid)
{
    /* Every cap from tiny to roomy, over a line with long escaped values:
     * the object is valid JSON within cap, cut ones say truncated:true. */
    char kv[3000];
    size_t o = 0;
    for (int p = 0; p < 20; p++)
        o += (size_t)snprintf(kv + o, sizeof(kv) - o, "k%d=\"%s\\\"\x01\xc3\xa9\" ", p,
                              "0123456789abcdefghijklmnopqrstuvwxyz0123456789ABCDEFGHIJ");
    static char out[LOG_JSON_MAX];
    size_t full = log_kv_to_json(kv, o, out, sizeof(out));
    ck_assert_uint_gt(full, 1000);
    for (size_t cap = 64; cap <= full; cap += 7) {
        size_t n = log_kv_to_json(kv, o, out, cap);
        ck_assert_uint_lt(n, cap);
        ck_assert_uint_eq(strlen(out), n);
        json_t *j = parse_json(out);
        ck_assert(json_is_object(j));
        ck_assert(json_is_true(json_object_get(j, "truncated")));
        json_decref(j);
    }
    size_t n = log_kv_to_json(kv, o, out, sizeof(out));
    json_t *j = parse_json(out);
    ck_assert_ptr_null(json_object_get(j, "truncated"));
    ck_assert_uint_eq(json_object_size(j), 20);
    ck_assert_uint_lt(n, sizeof(out));
    json_decref(j);
}
END_TEST

static void
emit_long_json(void)
{
    static char big[10000];
    memset(big, '"', sizeof(big) - 1); /* each becomes \" twice over */
    big[sizeof(big) - 1] = '\0';
    static char q[LOG_LINE_MAX];
    log_set_level(LOG_INFO);
    log_set_format(LOG_FORMAT_JSON);
    log_info("long_json", "v=%s", log_q(q, sizeof(q), big));
    log_set_format(LOG_FORMAT_KV);
}

START_TEST(long_json_line_is_one_capped_line)
{
    char *out = capture(emit_long_json);
    size_t n = strlen(out);
    ck_assert_uint_le(n, LOG_JSON_MAX);
    ck_assert_int_eq(out[n - 1], '\n');
    json_t *j = parse_json(out);
    ck_assert_str_eq(member(j, "event"), "long_json");
    ck_assert_uint_gt(strlen(member(j, "v")), 1000);
    json_decref(j);
}
END_TEST

START_TEST(parse_formats)
{
    enum log_format f;
    ck_assert(log_parse_format("json", &f) && f == LOG_FORMAT_JSON);
    ck_assert(log_parse_format("kv", &f) && f == LOG_FORMAT_KV);
    ck_assert(!log_parse_format("JSON", &f));
    ck_assert(!log_parse_format("", &f));
}
END_TEST

static char *
slurp(const char *path)
{
    static char buf[4096];
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        buf[0] = '\0';
        return buf;
    }
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    buf[n] = '\0';
    fclose(f);
    return buf;
}

START_TEST(log_file_reopens_after_rename)
{
    char dir[] = "/tmp/test_log_dir_XXXXXX";
    ck_assert_ptr_nonnull(mkdtemp(dir));
    char path[256], rotated[256], err[256];
    snprintf(path, sizeof(path), "%s/d.log", dir);
    snprintf(rotated, sizeof(rotated), "%s/d.log.1", dir);
    log_set_level(LOG_INFO);
    ck_assert(log_open_file(path, err, sizeof(err)));
    log_info("before_rotate", "n=1");
    ck_assert_int_eq(rename(path, rotated), 0);
    log_info("after_rename", "n=2"); /* still the open (renamed) file */
    ck_assert(log_open_file(path, err, sizeof(err)));
    log_info("after_reopen", "n=3");
    char *old = slurp(rotated);
    ck_assert_ptr_nonnull(strstr(old, "event=before_rotate"));
    ck_assert_ptr_nonnull(strstr(old, "event=after_rename"));
    ck_assert_ptr_null(strstr(old, "event=after_reopen"));
    char *cur = slurp(path);
    ck_assert_ptr_nonnull(strstr(cur, "event=after_reopen"));
    ck_assert_ptr_null(strstr(cur, "event=before_rotate"));
    /* A file that cannot be opened leaves the destination alone. */
    ck_assert(!log_open_file("/nonexistent-dir/x.log", err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "/nonexistent-dir/x.log"));
    log_info("after_failed_open", "n=4");
    ck_assert_ptr_nonnull(strstr(slurp(path), "event=after_failed_open"));
    /* Back to stderr. */
    ck_assert(log_open_file(NULL, err, sizeof(err)));
    log_info("on_stderr_again", "n=5");
    ck_assert_ptr_null(strstr(slurp(path), "on_stderr_again"));
    unlink(path);
    unlink(rotated);
    rmdir(dir);
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
    tcase_add_test(tc, json_lines_have_the_same_fields);
    tcase_add_test(tc, json_escapes_control_bytes_and_bad_utf8);
    tcase_add_test(tc, json_text_that_is_not_key_value_goes_to_msg);
    tcase_add_test(tc, json_lines_are_capped_and_stay_valid);
    tcase_add_test(tc, long_json_line_is_one_capped_line);
    tcase_add_test(tc, parse_formats);
    tcase_add_test(tc, log_file_reopens_after_rename);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
