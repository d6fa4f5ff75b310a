/*
 * test_config: Check suite for lib/config (defaults, file, environment,
 * every error class, the printers and cfg_main), using a small schema of
 * its own so it does not depend on any daemon's keys.
 */
#include "config.h"

#include <check.h>
#include <fcntl.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct tcfg {
    char *listen;
    char *dsn;
    int64_t threads;
    int64_t offset;
    bool debug;
    char *note;
};

static const struct cfg_key tkeys[] = {
    {"listen", CFG_STR, offsetof(struct tcfg, listen), "127.0.0.1:8080", "listener address", 0, 0,
     false},
    {"dsn", CFG_STR, offsetof(struct tcfg, dsn), NULL, "PostgreSQL DSN", 0, 0, false},
    {"threads", CFG_INT, offsetof(struct tcfg, threads), "4", "worker threads", 1, 64, false},
    {"offset", CFG_INT, offsetof(struct tcfg, offset), "-5", "any integer", 0, 0, true},
    {"debug", CFG_BOOL, offsetof(struct tcfg, debug), "false", "debug mode", 0, 0, true},
    {"note", CFG_STR, offsetof(struct tcfg, note), "a|b", "pipe | in help", 0, 0, false},
};

static const struct cfg_schema tschema = {"tcfg", "TCFG_", tkeys, sizeof(tkeys) / sizeof(tkeys[0]),
                                          NULL};

static const char *const tenv[] = {"TCFG_LISTEN", "TCFG_DSN",   "TCFG_THREADS",
                                   "TCFG_OFFSET", "TCFG_DEBUG", "TCFG_NOTE"};

/* Each test starts with none of the schema's variables set. */
static void
clear_env(void)
{
    for (size_t i = 0; i < sizeof(tenv) / sizeof(tenv[0]); i++)
        unsetenv(tenv[i]);
}

/* Defaults, then text; returns what cfg_load_string returned. */
static bool
load(struct tcfg *c, const char *text, char *err, size_t errlen)
{
    memset(c, 0, sizeof(*c));
    ck_assert(cfg_defaults(&tschema, c, err, errlen));
    return cfg_load_string(&tschema, c, text, "t.conf", err, errlen);
}

/* Loads text that must fail and checks the exact error line. */
static void
expect_error(const char *text, const char *want)
{
    struct tcfg c;
    char err[512] = "";
    ck_assert_msg(!load(&c, text, err, sizeof(err)), "accepted: %s", text);
    ck_assert_str_eq(err, want);
    cfg_free(&tschema, &c);
}

/* Writes len bytes to a new temp file; path receives its name. */
static void
write_temp(char *path, size_t pathlen, const char *data, size_t len)
{
    snprintf(path, pathlen, "/tmp/test_config_XXXXXX");
    int fd = mkstemp(path);
    ck_assert_int_ge(fd, 0);
    size_t off = 0;
    while (off < len) {
        ssize_t n = write(fd, data + off, len - off);
        ck_assert_int_gt(n, 0);
        off += (size_t)n;
    }
    close(fd);
}

/* Redirects fd 1 or 2 into a temp file until capture_end. */
struct capture {
    int which;
    int saved;
    int fd;
};

static void
capture_start(struct capture *cap, int which)
{
    char path[] = "/tmp/test_config_out_XXXXXX";
    fflush(stdout);
    fflush(stderr);
    cap->which = which;
    cap->fd = mkstemp(path);
    ck_assert_int_ge(cap->fd, 0);
    unlink(path);
    cap->saved = dup(which);
    ck_assert_int_ge(cap->saved, 0);
    ck_assert_int_ge(dup2(cap->fd, which), 0);
}

/* Restores the descriptor and returns what was written (caller frees). */
static char *
capture_end(struct capture *cap)
{
    fflush(stdout);
    fflush(stderr);
    ck_assert_int_ge(dup2(cap->saved, cap->which), 0);
    close(cap->saved);
    off_t size = lseek(cap->fd, 0, SEEK_END);
    ck_assert_int_ge(size, 0);
    char *buf = malloc((size_t)size + 1);
    ck_assert_ptr_nonnull(buf);
    ck_assert_int_eq(pread(cap->fd, buf, (size_t)size, 0), size);
    buf[size] = '\0';
    close(cap->fd);
    return buf;
}

START_TEST(test_defaults)
{
    struct tcfg c;
    memset(&c, 0xff, sizeof(c)); /* string slots must not be read, only set */
    char err[256] = "";
    ck_assert_msg(cfg_defaults(&tschema, &c, err, sizeof(err)), "%s", err);
    ck_assert_str_eq(c.listen, "127.0.0.1:8080");
    ck_assert_ptr_nonnull(c.dsn);
    ck_assert_str_eq(c.dsn, "");
    ck_assert_int_eq(c.threads, 4);
    ck_assert_int_eq(c.offset, -5);
    ck_assert(!c.debug);
    ck_assert_str_eq(c.note, "a|b");
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_load_string)
{
    struct tcfg c;
    char err[256] = "";
    const char *text = "\xEF\xBB\xBF# a comment\n"
                       "\n"
                       "   # indented comment\n"
                       "listen=10.0.0.1:9000\r\n"
                       "\tthreads   =   12   \n"
                       "debug = YES\n"
                       "note = x # not a comment\n"
                       "dsn =\n"
                       "offset = -9223372036854775808";
    ck_assert_msg(load(&c, text, err, sizeof(err)), "%s", err);
    ck_assert_str_eq(c.listen, "10.0.0.1:9000");
    ck_assert_int_eq(c.threads, 12);
    ck_assert(c.debug);
    ck_assert_str_eq(c.note, "x # not a comment");
    ck_assert_str_eq(c.dsn, "");
    ck_assert(c.offset == INT64_MIN);
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_quoted_values)
{
    struct tcfg c;
    char err[256] = "";
    const char *text = "listen = \"  spaced # kept  \"  \n"
                       "dsn = \"say \\\"hi\\\" \\\\ ok\"\n"
                       "note = \"\"\n";
    ck_assert_msg(load(&c, text, err, sizeof(err)), "%s", err);
    ck_assert_str_eq(c.listen, "  spaced # kept  ");
    ck_assert_str_eq(c.dsn, "say \"hi\" \\ ok");
    ck_assert_str_eq(c.note, "");
    cfg_free(&tschema, &c);

    /* Quotes in the middle of an unquoted value are plain characters. */
    ck_assert_msg(load(&c, "dsn = a\"b\\c\"", err, sizeof(err)), "%s", err);
    ck_assert_str_eq(c.dsn, "a\"b\\c\"");
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_load_file)
{
    char path[64];
    const char *text = "threads = 7\nlisten = \"[::1]:443\"\n";
    write_temp(path, sizeof(path), text, strlen(text));
    struct tcfg c = {0};
    char err[256] = "";
    ck_assert(cfg_defaults(&tschema, &c, err, sizeof(err)));
    ck_assert_msg(cfg_load_file(&tschema, &c, path, err, sizeof(err)), "%s", err);
    ck_assert_int_eq(c.threads, 7);
    ck_assert_str_eq(c.listen, "[::1]:443");
    cfg_free(&tschema, &c);

    /* Errors in a file name the file. */
    const char *bad = "threads = 7\nthreads = 8\n";
    char path2[64];
    write_temp(path2, sizeof(path2), bad, strlen(bad));
    ck_assert(cfg_defaults(&tschema, &c, err, sizeof(err)));
    ck_assert(!cfg_load_file(&tschema, &c, path2, err, sizeof(err)));
    char want[256];
    snprintf(want, sizeof(want), "%s:2: duplicate key 'threads' (first set on line 1)", path2);
    ck_assert_str_eq(err, want);
    cfg_free(&tschema, &c);
    unlink(path);
    unlink(path2);
}
END_TEST

START_TEST(test_file_missing)
{
    struct tcfg c = {0};
    char err[256] = "";
    ck_assert(cfg_defaults(&tschema, &c, err, sizeof(err)));
    ck_assert(!cfg_load_file(&tschema, &c, "/nonexistent/t.conf", err, sizeof(err)));
    ck_assert_str_eq(err, "/nonexistent/t.conf: cannot open: No such file or directory");
    ck_assert(!cfg_load_file(&tschema, &c, "/tmp", err, sizeof(err)));
    ck_assert_str_eq(err, "/tmp: is a directory");
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_file_too_big)
{
    /* 1 MiB of comment lines loads; one byte more is refused. */
    size_t cap = 1024 * 1024;
    char *big = malloc(cap + 1);
    ck_assert_ptr_nonnull(big);
    memset(big, '#', cap + 1);
    for (size_t i = 1000; i < cap + 1; i += 1000)
        big[i] = '\n';
    char path[64], path2[64];
    write_temp(path, sizeof(path), big, cap);
    write_temp(path2, sizeof(path2), big, cap + 1);
    free(big);

    struct tcfg c = {0};
    char err[256] = "";
    ck_assert(cfg_defaults(&tschema, &c, err, sizeof(err)));
    ck_assert_msg(cfg_load_file(&tschema, &c, path, err, sizeof(err)), "%s", err);
    ck_assert(!cfg_load_file(&tschema, &c, path2, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "file larger than 1048576 bytes"));
    ck_assert(strncmp(err, path2, strlen(path2)) == 0);
    cfg_free(&tschema, &c);
    unlink(path);
    unlink(path2);
}
END_TEST

START_TEST(test_file_nul)
{
    char path[64];
    const char text[] = "threads = 7\nlisten = a\0b\n";
    write_temp(path, sizeof(path), text, sizeof(text) - 1);
    struct tcfg c = {0};
    char err[256] = "";
    ck_assert(cfg_defaults(&tschema, &c, err, sizeof(err)));
    ck_assert(!cfg_load_file(&tschema, &c, path, err, sizeof(err)));
    char want[256];
    snprintf(want, sizeof(want), "%s:2: NUL byte (not a text file?)", path);
    ck_assert_str_eq(err, want);
    cfg_free(&tschema, &c);
    unlink(path);
}
END_TEST

START_TEST(test_env_overrides_file)
{
    struct tcfg c;
    char err[256] = "";
    ck_assert(load(&c, "threads = 3\nlisten = file:1\ndebug = on\n", err, sizeof(err)));
    setenv("TCFG_THREADS", "9", 1);
    setenv("TCFG_DEBUG", "Off", 1);
    ck_assert_msg(cfg_apply_env(&tschema, &c, err, sizeof(err)), "%s", err);
    ck_assert_int_eq(c.threads, 9);
    ck_assert(!c.debug);
    ck_assert_str_eq(c.listen, "file:1"); /* not in the environment: file value stays */

    /* Env values are verbatim: quotes and blanks are part of the value. */
    setenv("TCFG_DSN", " \"x\" ", 1);
    setenv("TCFG_NOTE", "", 1);
    ck_assert_msg(cfg_apply_env(&tschema, &c, err, sizeof(err)), "%s", err);
    ck_assert_str_eq(c.dsn, " \"x\" ");
    ck_assert_str_eq(c.note, "");
    cfg_free(&tschema, &c);
    clear_env();
}
END_TEST

START_TEST(test_env_errors)
{
    struct tcfg c;
    char err[256] = "";
    ck_assert(load(&c, "", err, sizeof(err)));
    setenv("TCFG_THREADS", "99", 1);
    ck_assert(!cfg_apply_env(&tschema, &c, err, sizeof(err)));
    ck_assert_str_eq(err, "environment TCFG_THREADS: key 'threads': value 99 out of range [1, 64]");
    ck_assert_int_eq(c.threads, 4);
    unsetenv("TCFG_THREADS");

    setenv("TCFG_DEBUG", "", 1);
    ck_assert(!cfg_apply_env(&tschema, &c, err, sizeof(err)));
    ck_assert_str_eq(err, "environment TCFG_DEBUG: key 'debug': '' is not a boolean "
                          "(true/false, yes/no, on/off, 1/0)");
    unsetenv("TCFG_DEBUG");

    char *huge = malloc(4098);
    ck_assert_ptr_nonnull(huge);
    memset(huge, 'v', 4097);
    huge[4097] = '\0';
    setenv("TCFG_DSN", huge, 1);
    ck_assert(!cfg_apply_env(&tschema, &c, err, sizeof(err)));
    ck_assert_str_eq(err, "environment TCFG_DSN: key 'dsn': value longer than 4096 bytes");
    huge[4096] = '\0';
    setenv("TCFG_DSN", huge, 1);
    ck_assert_msg(cfg_apply_env(&tschema, &c, err, sizeof(err)), "%s", err);
    ck_assert_uint_eq(strlen(c.dsn), 4096);
    free(huge);
    cfg_free(&tschema, &c);
    clear_env();
}
END_TEST

START_TEST(test_unknown_key)
{
    expect_error("threads = 4\nthread = 5\n", "t.conf:2: unknown key 'thread' (did you mean "
                                              "'threads'?)");
    expect_error("\n\nbogus_key = 1\n", "t.conf:3: unknown key 'bogus_key'");
    /* Keys are case-sensitive. */
    expect_error("THREADS = 4\n", "t.conf:1: unknown key 'THREADS'");
    /* Control bytes in the echoed key are escaped, the message stays one line. */
    expect_error("a\x01\x1b = 1\n", "t.conf:1: unknown key 'a\\x01\\x1b'");
}
END_TEST

START_TEST(test_malformed_line)
{
    expect_error("threads 4\n", "t.conf:1: expected 'key = value', got 'threads 4'");
    expect_error("# ok\n  listen\n", "t.conf:2: expected 'key = value', got 'listen'");
}
END_TEST

START_TEST(test_empty_key)
{
    expect_error("= 4\n", "t.conf:1: missing key before '='");
    expect_error("listen = a\n   \t= 4\n", "t.conf:2: missing key before '='");
}
END_TEST

START_TEST(test_out_of_range)
{
    expect_error("threads = 99\n", "t.conf:1: key 'threads': value 99 out of range [1, 64]");
    expect_error("threads = 0\n", "t.conf:1: key 'threads': value 0 out of range [1, 64]");
    expect_error("threads = -1\n", "t.conf:1: key 'threads': value -1 out of range [1, 64]");
    expect_error("threads = 65\n", "t.conf:1: key 'threads': value 65 out of range [1, 64]");

    struct tcfg c;
    char err[256] = "";
    ck_assert_msg(load(&c, "threads = 1\n", err, sizeof(err)), "%s", err);
    ck_assert_int_eq(c.threads, 1);
    cfg_free(&tschema, &c);
    ck_assert_msg(load(&c, "threads = 64\n", err, sizeof(err)), "%s", err);
    ck_assert_int_eq(c.threads, 64);
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_int_without_range)
{
    struct tcfg c;
    char err[256] = "";
    ck_assert_msg(load(&c, "offset = 9223372036854775807\n", err, sizeof(err)), "%s", err);
    ck_assert(c.offset == INT64_MAX);
    cfg_free(&tschema, &c);
    ck_assert_msg(load(&c, "offset = 007\n", err, sizeof(err)), "%s", err);
    ck_assert_int_eq(c.offset, 7);
    cfg_free(&tschema, &c);
    expect_error("offset = 9223372036854775808\n",
                 "t.conf:1: key 'offset': '9223372036854775808' does not fit in 64 bits");
    expect_error("offset = -9223372036854775809\n",
                 "t.conf:1: key 'offset': '-9223372036854775809' does not fit in 64 bits");
}
END_TEST

START_TEST(test_bad_int)
{
    static const char *const bad[] = {"4x", "+4", "-", "0x10", "4 4", "1.5", "", " -3"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        struct tcfg c = {0};
        char err[256] = "", want[256];
        ck_assert(cfg_defaults(&tschema, &c, err, sizeof(err)));
        ck_assert_msg(!cfg_set(&tschema, &c, "threads", bad[i], err, sizeof(err)), "accepted '%s'",
                      bad[i]);
        snprintf(want, sizeof(want), "key 'threads': '%s' is not an integer", bad[i]);
        ck_assert_str_eq(err, want);
        ck_assert_int_eq(c.threads, 4);
        cfg_free(&tschema, &c);
    }
    expect_error("threads = 4 # four\n", "t.conf:1: key 'threads': '4 # four' is not an integer");
    /* Long junk is cut in the message. */
    expect_error("offset = 1111111111111111111111111111111111111111111111111111111111111111x\n",
                 "t.conf:1: key 'offset': "
                 "'1111111111111111111111111111111111111111111111111111111111111111...' is not an "
                 "integer");
}
END_TEST

START_TEST(test_bool_values)
{
    static const char *const yes[] = {"true", "TRUE", "Yes", "on", "1"};
    static const char *const no[] = {"false", "False", "NO", "oFF", "0"};
    struct tcfg c;
    char err[256] = "";
    ck_assert(load(&c, "", err, sizeof(err)));
    for (size_t i = 0; i < 5; i++) {
        ck_assert(cfg_set(&tschema, &c, "debug", yes[i], err, sizeof(err)));
        ck_assert_msg(c.debug, "%s", yes[i]);
        ck_assert(cfg_set(&tschema, &c, "debug", no[i], err, sizeof(err)));
        ck_assert_msg(!c.debug, "%s", no[i]);
    }
    cfg_free(&tschema, &c);
    expect_error("debug = maybe\n", "t.conf:1: key 'debug': 'maybe' is not a boolean "
                                    "(true/false, yes/no, on/off, 1/0)");
    expect_error("debug = 2\n", "t.conf:1: key 'debug': '2' is not a boolean "
                                "(true/false, yes/no, on/off, 1/0)");
}
END_TEST

START_TEST(test_duplicate)
{
    expect_error("threads = 4\nlisten = a\nthreads = 4\n",
                 "t.conf:3: duplicate key 'threads' (first set on line 1)");
    /* A duplicate is refused even when the first value was the same. */
    expect_error("dsn = x\ndsn = x\n", "t.conf:2: duplicate key 'dsn' (first set on line 1)");
}
END_TEST

START_TEST(test_long_line)
{
    /* "dsn = " + value: exactly 4096 bytes loads, 4097 is refused. */
    char *text = malloc(4200);
    ck_assert_ptr_nonnull(text);
    memcpy(text, "dsn = ", 6);
    memset(text + 6, 'd', 4090);
    text[4096] = '\0';
    struct tcfg c;
    char err[256] = "";
    ck_assert_msg(load(&c, text, err, sizeof(err)), "%s", err);
    ck_assert_uint_eq(strlen(c.dsn), 4090);
    cfg_free(&tschema, &c);

    memcpy(text + 4096, "d\n", 3);
    char *two = malloc(4200 + 16);
    ck_assert_ptr_nonnull(two);
    snprintf(two, 4200 + 16, "debug = 1\n%s", text);
    expect_error(two, "t.conf:2: line longer than 4096 bytes");
    free(two);
    free(text);
}
END_TEST

START_TEST(test_unterminated_quote)
{
    expect_error("listen = \"abc\n", "t.conf:1: key 'listen': unterminated quoted value");
    expect_error("listen = \"abc\\\"\n", "t.conf:1: key 'listen': unterminated quoted value");
    expect_error("listen = \"abc\\", "t.conf:1: key 'listen': unterminated quoted value");
}
END_TEST

START_TEST(test_after_quote)
{
    expect_error("listen = \"abc\" x\n",
                 "t.conf:1: key 'listen': unexpected text after the closing quote");
    expect_error("listen = \"a\"\"b\"\n",
                 "t.conf:1: key 'listen': unexpected text after the closing quote");
    expect_error("listen = \"C:\\dir\"\n", "t.conf:1: key 'listen': unknown escape in quoted "
                                           "value (only \\\" and \\\\ are allowed)");
}
END_TEST

START_TEST(test_set)
{
    struct tcfg c;
    char err[256] = "";
    ck_assert(load(&c, "", err, sizeof(err)));
    /* Replacing a string frees the old one (ASan's leak check sees it). */
    ck_assert(cfg_set(&tschema, &c, "listen", "first", err, sizeof(err)));
    ck_assert(cfg_set(&tschema, &c, "listen", "second", err, sizeof(err)));
    ck_assert_str_eq(c.listen, "second");

    ck_assert(!cfg_set(&tschema, &c, "listn", "x", err, sizeof(err)));
    ck_assert_str_eq(err, "unknown key 'listn' (did you mean 'listen'?)");

    char *huge = malloc(4098);
    ck_assert_ptr_nonnull(huge);
    memset(huge, 'v', 4097);
    huge[4097] = '\0';
    ck_assert(!cfg_set(&tschema, &c, "listen", huge, err, sizeof(err)));
    ck_assert_str_eq(err, "key 'listen': value longer than 4096 bytes");
    ck_assert_str_eq(c.listen, "second"); /* a failed set keeps the old value */
    free(huge);

    /* A tiny error buffer is truncated, still terminated. */
    char small[8];
    memset(small, 'z', sizeof(small));
    ck_assert(!cfg_set(&tschema, &c, "threads", "x", small, sizeof(small)));
    ck_assert_str_eq(small, "key 'th");
    ck_assert(!cfg_set(&tschema, &c, "threads", "x", NULL, 0));
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_free)
{
    struct tcfg c;
    char err[256] = "";
    ck_assert(load(&c, "dsn = x\n", err, sizeof(err)));
    ck_assert_ptr_nonnull(c.dsn);
    cfg_free(&tschema, &c);
    ck_assert_ptr_null(c.listen);
    ck_assert_ptr_null(c.dsn);
    ck_assert_ptr_null(c.note);
    cfg_free(&tschema, &c); /* twice is harmless */
    ck_assert_ptr_null(c.listen);
}
END_TEST

START_TEST(test_bad_schema)
{
    struct tcfg c;
    char err[256] = "";

    const struct cfg_key bad_def[] = {
        {"listen", CFG_STR, offsetof(struct tcfg, listen), "x", "h", 0, 0, false},
        {"threads", CFG_INT, offsetof(struct tcfg, threads), NULL, "h", 1, 64, false},
    };
    const struct cfg_schema s1 = {"t", "T_", bad_def, 2, NULL};
    memset(&c, 0, sizeof(c));
    ck_assert(!cfg_defaults(&s1, &c, err, sizeof(err)));
    ck_assert_str_eq(err, "built-in default: key 'threads': '' is not an integer");
    ck_assert_ptr_null(c.listen); /* nothing left allocated after a failed default */

    const struct cfg_key dup[] = {
        {"listen", CFG_STR, offsetof(struct tcfg, listen), "x", "h", 0, 0, false},
        {"listen", CFG_STR, offsetof(struct tcfg, dsn), "y", "h", 0, 0, false},
    };
    const struct cfg_schema s2 = {"t", "T_", dup, 2, NULL};
    ck_assert(!cfg_defaults(&s2, &c, err, sizeof(err)));
    ck_assert_str_eq(err, "schema: key 'listen' declared twice");

    const struct cfg_key badname[] = {
        {"Listen", CFG_STR, offsetof(struct tcfg, listen), "x", "h", 0, 0, false},
    };
    const struct cfg_schema s3 = {"t", "T_", badname, 1, NULL};
    ck_assert(!cfg_defaults(&s3, &c, err, sizeof(err)));
    ck_assert_str_eq(err, "schema: key 'Listen': name must be 1-64 of [a-z0-9_]");

    const struct cfg_key range[] = {
        {"threads", CFG_INT, offsetof(struct tcfg, threads), "100", "h", 1, 64, false},
    };
    const struct cfg_schema s4 = {"t", "T_", range, 1, NULL};
    ck_assert(!cfg_defaults(&s4, &c, err, sizeof(err)));
    ck_assert_str_eq(err, "built-in default: key 'threads': value 100 out of range [1, 64]");
}
END_TEST

START_TEST(test_main_check_config)
{
    char path[64];
    const char *text = "threads = 7\nnote = \" padded \"\n";
    write_temp(path, sizeof(path), text, strlen(text));
    char *argv[] = {"tcfg", "--check-config", "-c", path, NULL};
    struct tcfg c;
    struct capture cap;
    capture_start(&cap, STDOUT_FILENO);
    enum cfg_action a = cfg_main(&tschema, &c, 4, argv, NULL, NULL);
    char *out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_OK);
    ck_assert_str_eq(out, "listen = 127.0.0.1:8080\n"
                          "dsn = \"\"\n"
                          "threads = 7\n"
                          "offset = -5\n"
                          "debug = false\n"
                          "note = \" padded \"\n"
                          "config ok\n");
    free(out);
    ck_assert_ptr_null(c.listen); /* cfg_main freed what it loaded */
    cfg_free(&tschema, &c);

    /* A bad file: one line on stderr, failure. */
    const char *bad = "threads = 99\n";
    char path2[64];
    write_temp(path2, sizeof(path2), bad, strlen(bad));
    char *argv2[] = {"tcfg", "--check-config", "--config", path2, NULL};
    capture_start(&cap, STDERR_FILENO);
    a = cfg_main(&tschema, &c, 4, argv2, NULL, NULL);
    char *errout = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_FAIL);
    char want[256];
    snprintf(want, sizeof(want),
             "tcfg: config error: %s:1: key 'threads': value 99 out of range [1, 64]\n", path2);
    ck_assert_str_eq(errout, want);
    free(errout);
    cfg_free(&tschema, &c);
    unlink(path);
    unlink(path2);
}
END_TEST

START_TEST(test_main_version)
{
    char *argv[] = {"tcfg", "--version", NULL};
    struct tcfg c;
    struct capture cap;
    capture_start(&cap, STDOUT_FILENO);
    enum cfg_action a = cfg_main(&tschema, &c, 2, argv, NULL, NULL);
    char *out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_OK);
    ck_assert_str_eq(out, "tcfg " MBOX_VERSION "\n");
    free(out);
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_main_unknown_flag)
{
    char *argv[] = {"tcfg", "--verbose", NULL};
    struct tcfg c;
    struct capture cap;
    capture_start(&cap, STDERR_FILENO);
    enum cfg_action a = cfg_main(&tschema, &c, 2, argv, NULL, NULL);
    char *out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_FAIL);
    ck_assert_str_eq(out, "tcfg: unknown option '--verbose' (see --help)\n");
    free(out);

    /* Reported even next to --help, and positional arguments too. */
    char *argv2[] = {"tcfg", "--help", "stray", NULL};
    capture_start(&cap, STDERR_FILENO);
    a = cfg_main(&tschema, &c, 3, argv2, NULL, NULL);
    out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_FAIL);
    ck_assert_str_eq(out, "tcfg: unexpected argument 'stray' (see --help)\n");
    free(out);
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_main_extra_flags)
{
    static const char *const extra[] = {"--migrate", "--once", NULL};
    char *argv[] = {"tcfg", "--once", NULL};
    struct tcfg c;
    unsigned set = 99;
    ck_assert_int_eq(cfg_main(&tschema, &c, 2, argv, extra, &set), CFG_RUN);
    ck_assert_uint_eq(set, 2u);
    ck_assert_str_eq(c.listen, "127.0.0.1:8080");
    cfg_free(&tschema, &c);

    char *argv2[] = {"tcfg", "--migrate", "--once", NULL};
    ck_assert_int_eq(cfg_main(&tschema, &c, 3, argv2, extra, &set), CFG_RUN);
    ck_assert_uint_eq(set, 3u);
    cfg_free(&tschema, &c);

    /* A flag of another daemon is unknown here. */
    char *argv3[] = {"tcfg", "--migrate", NULL};
    struct capture cap;
    capture_start(&cap, STDERR_FILENO);
    enum cfg_action a = cfg_main(&tschema, &c, 2, argv3, NULL, &set);
    char *out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_FAIL);
    ck_assert_str_eq(out, "tcfg: unknown option '--migrate' (see --help)\n");
    free(out);
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_main_bad_args)
{
    struct tcfg c;
    struct capture cap;
    char *argv[] = {"tcfg", "-c", NULL};
    capture_start(&cap, STDERR_FILENO);
    enum cfg_action a = cfg_main(&tschema, &c, 2, argv, NULL, NULL);
    char *out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_FAIL);
    ck_assert_str_eq(out, "tcfg: option '-c' needs a FILE argument\n");
    free(out);

    char *argv2[] = {"tcfg", "--config=a", "-c", "b", NULL};
    capture_start(&cap, STDERR_FILENO);
    a = cfg_main(&tschema, &c, 4, argv2, NULL, NULL);
    out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_FAIL);
    ck_assert_str_eq(out, "tcfg: config file given twice ('a' and 'b')\n");
    free(out);

    char *argv3[] = {"tcfg", "--config=/nonexistent/x.conf", NULL};
    capture_start(&cap, STDERR_FILENO);
    a = cfg_main(&tschema, &c, 2, argv3, NULL, NULL);
    out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_FAIL);
    ck_assert_str_eq(out, "tcfg: config error: /nonexistent/x.conf: cannot open: No such file "
                          "or directory\n");
    free(out);
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_main_run)
{
    char path[64];
    const char *text = "threads = 7\nlisten = from-file\n";
    write_temp(path, sizeof(path), text, strlen(text));
    char arg[80];
    snprintf(arg, sizeof(arg), "--config=%s", path);
    char *argv[] = {"tcfg", arg, NULL};
    setenv("TCFG_LISTEN", "from-env", 1);
    struct tcfg c;
    ck_assert_int_eq(cfg_main(&tschema, &c, 2, argv, NULL, NULL), CFG_RUN);
    ck_assert_int_eq(c.threads, 7);
    ck_assert_str_eq(c.listen, "from-env");
    cfg_free(&tschema, &c);

    /* A bad environment value fails the run. */
    setenv("TCFG_THREADS", "lots", 1);
    struct capture cap;
    capture_start(&cap, STDERR_FILENO);
    enum cfg_action a = cfg_main(&tschema, &c, 2, argv, NULL, NULL);
    char *out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_FAIL);
    ck_assert_str_eq(out, "tcfg: config error: environment TCFG_THREADS: key 'threads': 'lots' "
                          "is not an integer\n");
    free(out);
    cfg_free(&tschema, &c);
    clear_env();
    unlink(path);
}
END_TEST

START_TEST(test_main_help)
{
    char *argv[] = {"tcfg", "--help", NULL};
    struct tcfg c;
    struct capture cap;
    capture_start(&cap, STDOUT_FILENO);
    enum cfg_action a = cfg_main(&tschema, &c, 2, argv, NULL, NULL);
    char *out = capture_end(&cap);
    ck_assert_int_eq(a, CFG_EXIT_OK);
    ck_assert(strncmp(out, "usage: tcfg ", 12) == 0);
    ck_assert_ptr_nonnull(strstr(out, "--check-config"));
    ck_assert_ptr_nonnull(
        strstr(out, "\n  threads  int 1..64  default 4  env TCFG_THREADS\n      worker threads\n"));
    ck_assert_ptr_nonnull(strstr(out, "\n  dsn  string  default \"\"  env TCFG_DSN\n"));
    /* Reloadable keys say so. */
    ck_assert_ptr_nonnull(
        strstr(out, "\n  offset  int  default -5  env TCFG_OFFSET  (SIGHUP reloads it)\n"));
    ck_assert_ptr_nonnull(
        strstr(out, "\n  debug  bool  default false  env TCFG_DEBUG  (SIGHUP reloads it)\n"));
    free(out);
    cfg_free(&tschema, &c);
}
END_TEST

START_TEST(test_markdown)
{
    char *a = NULL, *b = NULL;
    size_t alen = 0, blen = 0;
    FILE *f = open_memstream(&a, &alen);
    ck_assert_ptr_nonnull(f);
    cfg_print_markdown(&tschema, f);
    fclose(f);
    f = open_memstream(&b, &blen);
    ck_assert_ptr_nonnull(f);
    cfg_print_markdown(&tschema, f);
    fclose(f);
    ck_assert_str_eq(a, b); /* deterministic: docs/config.md regenerates identically */
    ck_assert_str_eq(
        a, "## tcfg\n"
           "\n"
           "| key | type | default | env | description |\n"
           "| --- | --- | --- | --- | --- |\n"
           "| `listen` | string | `127.0.0.1:8080` | `TCFG_LISTEN` | listener "
           "address |\n"
           "| `dsn` | string | (empty) | `TCFG_DSN` | PostgreSQL DSN |\n"
           "| `threads` | int, 1..64 | `4` | `TCFG_THREADS` | worker threads |\n"
           "| `offset` | int | `-5` | `TCFG_OFFSET` | any integer (SIGHUP reloads it) |\n"
           "| `debug` | bool | `false` | `TCFG_DEBUG` | debug mode (SIGHUP reloads it) |\n"
           "| `note` | string | `a\\|b` | `TCFG_NOTE` | pipe \\| in help |\n"
           "\n");
    for (size_t i = 0; i < tschema.nkeys; i++) {
        char cell[64];
        snprintf(cell, sizeof(cell), "| `%s` |", tkeys[i].name);
        ck_assert_msg(strstr(a, cell) != NULL, "missing %s", tkeys[i].name);
    }
    free(a);
    free(b);
}
END_TEST

START_TEST(test_print_values_round_trip)
{
    struct tcfg c, d;
    char err[256] = "";
    ck_assert(load(&c, "", err, sizeof(err)));
    ck_assert(cfg_set(&tschema, &c, "dsn", " \"q\" \\ x ", err, sizeof(err)));
    ck_assert(cfg_set(&tschema, &c, "listen", "\"lead", err, sizeof(err)));
    ck_assert(cfg_set(&tschema, &c, "note", "plain \" and \\", err, sizeof(err)));
    ck_assert(cfg_set(&tschema, &c, "debug", "on", err, sizeof(err)));
    char *text = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&text, &len);
    ck_assert_ptr_nonnull(f);
    cfg_print_values(&tschema, &c, f);
    fclose(f);
    ck_assert_msg(load(&d, text, err, sizeof(err)), "%s in:\n%s", err, text);
    ck_assert_str_eq(d.dsn, c.dsn);
    ck_assert_str_eq(d.listen, c.listen);
    ck_assert_str_eq(d.note, c.note);
    ck_assert(d.debug);
    ck_assert_int_eq(d.threads, c.threads);
    ck_assert_int_eq(d.offset, c.offset);
    free(text);
    cfg_free(&tschema, &c);
    cfg_free(&tschema, &d);
}
END_TEST

START_TEST(test_hostport_ok)
{
    char host[64];
    int port = 0;
    ck_assert(cfg_parse_hostport("127.0.0.1:8080", host, sizeof(host), &port));
    ck_assert_str_eq(host, "127.0.0.1");
    ck_assert_int_eq(port, 8080);
    ck_assert(cfg_parse_hostport("[::1]:80", host, sizeof(host), &port));
    ck_assert_str_eq(host, "::1");
    ck_assert_int_eq(port, 80);
    ck_assert(cfg_parse_hostport("redis.internal:65535", host, sizeof(host), &port));
    ck_assert_str_eq(host, "redis.internal");
    ck_assert_int_eq(port, 65535);
    ck_assert(cfg_parse_hostport("h:1", host, 2, &port)); /* exactly fits */
    ck_assert_str_eq(host, "h");
    ck_assert_int_eq(port, 1);
}
END_TEST

START_TEST(test_hostport_bad)
{
    static const char *const bad[] = {
        "127.0.0.1",       "127.0.0.1:",   "127.0.0.1:0",
        "127.0.0.1:65536", "127.0.0.1:-1", "127.0.0.1:+80",
        "host:80x",        ":8080",        "::1:80",
        "[::1]80",         "[::1]",        "[]:80",
        "[::1:80",         "a b:80",       "host:123456",
        "host:99999",      "[a]]:80",      "",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        char host[64] = "untouched";
        int port = -7;
        ck_assert_msg(!cfg_parse_hostport(bad[i], host, sizeof(host), &port), "accepted '%s'",
                      bad[i]);
        ck_assert_str_eq(host, "untouched");
        ck_assert_int_eq(port, -7);
    }
    char host[4];
    int port;
    ck_assert(!cfg_parse_hostport("abcd:80", host, sizeof(host), &port)); /* host too long */
    ck_assert(cfg_parse_hostport("abc:80", host, sizeof(host), &port));
}
END_TEST

/* What a SIGHUP reload uses: cfg_load, cfg_key_equal, cfg_key_swap, cfg_argv_path. */
START_TEST(test_reload_pieces)
{
    char path[64], err[256];
    const char *text = "threads = 8\nnote = \"new note\"\n";
    write_temp(path, sizeof(path), text, strlen(text));
    struct tcfg a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    ck_assert(cfg_load(&tschema, &a, NULL, err, sizeof(err))); /* defaults only */
    ck_assert(cfg_load(&tschema, &b, path, err, sizeof(err)));
    ck_assert(cfg_key_equal(&tkeys[0], &a, &b));  /* listen */
    ck_assert(!cfg_key_equal(&tkeys[2], &a, &b)); /* threads */
    ck_assert(!cfg_key_equal(&tkeys[5], &a, &b)); /* note */
    ck_assert(cfg_key_equal(&tkeys[1], &a, &b));  /* dsn: "" both */
    cfg_key_swap(&tkeys[5], &a, &b);
    cfg_key_swap(&tkeys[2], &a, &b);
    ck_assert_str_eq(a.note, "new note");
    ck_assert_str_eq(b.note, "a|b");
    ck_assert_int_eq(a.threads, 8);
    ck_assert_int_eq(b.threads, 4);
    cfg_free(&tschema, &a);
    cfg_free(&tschema, &b);
    /* A bad file: false, a message, nothing left allocated. */
    const char *bad = "threads = 999\n";
    unlink(path);
    write_temp(path, sizeof(path), bad, strlen(bad));
    ck_assert(!cfg_load(&tschema, &b, path, err, sizeof(err)));
    ck_assert_ptr_nonnull(strstr(err, "threads"));
    ck_assert_ptr_null(b.listen);
    unlink(path);

    char *v1[] = {"d", "--migrate", "-c", "/x.conf", NULL};
    char *v2[] = {"d", "--config=/y.conf", NULL};
    char *v3[] = {"d", "--config", "/z.conf", NULL};
    char *v4[] = {"d", "-c", NULL};
    ck_assert_str_eq(cfg_argv_path(4, v1), "/x.conf");
    ck_assert_str_eq(cfg_argv_path(2, v2), "/y.conf");
    ck_assert_str_eq(cfg_argv_path(3, v3), "/z.conf");
    ck_assert_ptr_null(cfg_argv_path(2, v4));
}
END_TEST

/* --sample-config output loads back to the defaults, comments and all. */
START_TEST(test_sample_loads_back)
{
    struct capture cap;
    capture_start(&cap, STDOUT_FILENO);
    cfg_print_sample(&tschema, stdout);
    fflush(stdout);
    char *out = capture_end(&cap);
    ck_assert_ptr_nonnull(strstr(out, "\n# listener address\n#listen = 127.0.0.1:8080\n"));
    ck_assert_ptr_nonnull(strstr(out, "\n# any integer (SIGHUP reloads it)\n#offset = -5\n"));
    ck_assert_ptr_nonnull(strstr(out, "\n#dsn =\n"));
    char err[256];
    struct tcfg a, b;
    memset(&a, 0, sizeof(a));
    memset(&b, 0, sizeof(b));
    ck_assert(cfg_defaults(&tschema, &a, err, sizeof(err)));
    ck_assert(cfg_defaults(&tschema, &b, err, sizeof(err)));
    ck_assert_msg(cfg_load_string(&tschema, &b, out, "sample", err, sizeof(err)), "%s", err);
    for (size_t i = 0; i < tschema.nkeys; i++)
        ck_assert(cfg_key_equal(&tkeys[i], &a, &b));
    cfg_free(&tschema, &a);
    cfg_free(&tschema, &b);
    free(out);
}
END_TEST

static Suite *
config_suite(void)
{
    Suite *s = suite_create("config");
    TCase *tc = tcase_create("core");
    tcase_add_checked_fixture(tc, clear_env, NULL);
    tcase_add_test(tc, test_defaults);
    tcase_add_test(tc, test_load_string);
    tcase_add_test(tc, test_quoted_values);
    tcase_add_test(tc, test_load_file);
    tcase_add_test(tc, test_file_missing);
    tcase_add_test(tc, test_file_too_big);
    tcase_add_test(tc, test_file_nul);
    tcase_add_test(tc, test_env_overrides_file);
    tcase_add_test(tc, test_env_errors);
    tcase_add_test(tc, test_unknown_key);
    tcase_add_test(tc, test_malformed_line);
    tcase_add_test(tc, test_empty_key);
    tcase_add_test(tc, test_out_of_range);
    tcase_add_test(tc, test_int_without_range);
    tcase_add_test(tc, test_bad_int);
    tcase_add_test(tc, test_bool_values);
    tcase_add_test(tc, test_duplicate);
    tcase_add_test(tc, test_long_line);
    tcase_add_test(tc, test_unterminated_quote);
    tcase_add_test(tc, test_after_quote);
    tcase_add_test(tc, test_set);
    tcase_add_test(tc, test_free);
    tcase_add_test(tc, test_bad_schema);
    tcase_add_test(tc, test_main_check_config);
    tcase_add_test(tc, test_main_version);
    tcase_add_test(tc, test_main_unknown_flag);
    tcase_add_test(tc, test_main_extra_flags);
    tcase_add_test(tc, test_main_bad_args);
    tcase_add_test(tc, test_main_run);
    tcase_add_test(tc, test_main_help);
    tcase_add_test(tc, test_markdown);
    tcase_add_test(tc, test_print_values_round_trip);
    tcase_add_test(tc, test_hostport_ok);
    tcase_add_test(tc, test_hostport_bad);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    Suite *rs = suite_create("config_reload");
    TCase *rt = tcase_create("reload");
    tcase_add_checked_fixture(rt, clear_env, NULL);
    tcase_add_test(rt, test_reload_pieces);
    tcase_add_test(rt, test_sample_loads_back);
    suite_add_tcase(rs, rt);
    SRunner *sr = srunner_create(config_suite());
    srunner_add_suite(sr, rs);
    srunner_run_all(sr, CK_NORMAL);
    int failures = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failures != 0;
}
