/*
 * Integration: the operations console's side of logicd (issue 13) against
 * real PostgreSQL, Redis and logicd: ops token roles (editor/publisher,
 * 403), GET /v1/whoami, the static files under /console/ (types, cache
 * validators, traversal attempts, unknown files) and the reach series of
 * GET /v1/notices/{id}/stats written by the sampler under its advisory
 * lock.
 *
 * logicd 1 is the one under test: it gets its extra settings through the
 * environment (LOGICD_*), which wins over the harness's config file.
 */
#include <check.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "harness.h"
#include "httpc.h"
#include "mboxtest.h"

#define EDITOR_TOKEN "console-editor-token-0123456789"
#define INDEX_HTML   "<!doctype html><title>console test</title>\n"
#define APP_JS       "export const x = 1;\n"

static struct harness h;
static char console_dir[512];
static int port; /* logicd 1's internal listener */

static void
write_text(const char *dir, const char *name, const char *text)
{
    char path[1024];
    snprintf(path, sizeof(path), "%s/%s", dir, name);
    FILE *f = fopen(path, "w");
    if (f == NULL || fputs(text, f) < 0 || fclose(f) != 0) {
        fprintf(stderr, "cannot write %s\n", path);
        exit(1);
    }
}

static void
setup(void)
{
    if (!harness_start(&h, HARNESS_LOGICD)) {
        fprintf(stderr, "harness failed\n");
        exit(1);
    }
    /* A console directory of known files, a secret beside it and a
     * symlink out of it. */
    snprintf(console_dir, sizeof(console_dir), "%s/console", h.dir);
    char secret_dir[600], link[700], target[700];
    snprintf(secret_dir, sizeof(secret_dir), "%s/secret", h.dir);
    if (mkdir(console_dir, 0755) != 0 || mkdir(secret_dir, 0755) != 0) {
        fprintf(stderr, "mkdir failed\n");
        exit(1);
    }
    write_text(console_dir, "index.html", INDEX_HTML);
    write_text(console_dir, "app.js", APP_JS);
    write_text(console_dir, "notes.txt", "not a console type\n");
    /* A FIFO named like an asset: opening it must not block a worker. */
    char fifo[600];
    snprintf(fifo, sizeof(fifo), "%s/fifo.js", console_dir);
    if (mkfifo(fifo, 0644) != 0) {
        fprintf(stderr, "mkfifo failed\n");
        exit(1);
    }
    write_text(secret_dir, "key.html", "SECRET\n");
    snprintf(target, sizeof(target), "%s/key.html", secret_dir);
    snprintf(link, sizeof(link), "%s/link.html", console_dir);
    if (symlink(target, link) != 0) {
        fprintf(stderr, "symlink failed\n");
        exit(1);
    }
    char tokens[512];
    snprintf(tokens, sizeof(tokens), "tester:%s,ed:" EDITOR_TOKEN ":editor", h.ops_token);
    setenv("LOGICD_OPS_TOKENS", tokens, 1);
    setenv("LOGICD_CONSOLE_DIR", console_dir, 1);
    setenv("LOGICD_REACH_SAMPLE_INTERVAL_S", "1", 1);
    if (harness_add_logicd(&h, NULL) != 1) {
        fprintf(stderr, "logicd 1 failed\n");
        exit(1);
    }
    unsetenv("LOGICD_OPS_TOKENS");
    unsetenv("LOGICD_CONSOLE_DIR");
    unsetenv("LOGICD_REACH_SAMPLE_INTERVAL_S");
    port = h.logicd[1].port[1];
}

static void
teardown(void)
{
    harness_stop(&h);
}

static json_t *
call(const char *token, const char *method, const char *path, const char *body, int *st)
{
    return httpc_json(method, port, path, token, body, st);
}

static const char *
error_code(const json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "code"));
}

static uint64_t
create_notice(const char *token, uint64_t app)
{
    char body[256];
    snprintf(body, sizeof(body), "{\"app_id\":%" PRIu64 ",\"title\":\"console test\"}", app);
    int st;
    json_t *j = call(token, "POST", "/v1/notices", body, &st);
    ck_assert_msg(st == 201, "create: %d", st);
    uint64_t id = mt_u64(j, "notice_id");
    json_decref(j);
    return id;
}

/* POST /v1/notices/{id}/{verb} (DELETE for "delete"); returns the status, code in *code. */
static int
act(const char *token, uint64_t id, const char *verb, char *code, size_t codelen)
{
    char path[128];
    bool del = strcmp(verb, "delete") == 0;
    if (del)
        snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id);
    else
        snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/%s", id, verb);
    int st;
    json_t *j = call(token, del ? "DELETE" : "POST", path, NULL, &st);
    const char *c = j ? error_code(j) : NULL;
    snprintf(code, codelen, "%s", c ? c : "");
    json_decref(j);
    return st;
}

/* ---- roles ---- */

START_TEST(test_whoami)
{
    int st;
    json_t *j = call(EDITOR_TOKEN, "GET", "/v1/whoami", NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "name")), "ed");
    ck_assert_str_eq(json_string_value(json_object_get(j, "role")), "editor");
    json_decref(j);
    /* an entry without a role stays a publisher */
    j = call(h.ops_token, "GET", "/v1/whoami", NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "name")), "tester");
    ck_assert_str_eq(json_string_value(json_object_get(j, "role")), "publisher");
    json_decref(j);
    j = call("not-a-token", "GET", "/v1/whoami", NULL, &st);
    ck_assert_int_eq(st, 401);
    json_decref(j);
    /* the server key is not an operator */
    j = call(h.server_key, "GET", "/v1/whoami", NULL, &st);
    ck_assert_int_eq(st, 401);
    json_decref(j);
}
END_TEST

START_TEST(test_editor_cannot_publish)
{
    char code[64];
    uint64_t id = create_notice(EDITOR_TOKEN, 31);
    /* an editor writes and gray-releases ... */
    int st;
    char path[96], patch[] = "{\"title\":\"edited by an editor\"}";
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id);
    json_t *j = call(EDITOR_TOKEN, "PATCH", path, patch, &st);
    ck_assert_int_eq(st, 200);
    json_decref(j);
    j = call(EDITOR_TOKEN, "POST", "/v1/whitelist", "{\"app_id\":31,\"uids\":[7]}", &st);
    ck_assert_int_eq(st, 200);
    json_decref(j);
    ck_assert_int_eq(act(EDITOR_TOKEN, id, "prepublish", code, sizeof(code)), 200);
    /* ... but cannot change what every user sees */
    ck_assert_int_eq(act(EDITOR_TOKEN, id, "publish", code, sizeof(code)), 403);
    ck_assert_str_eq(code, "permission_denied");
    ck_assert_int_eq(act(EDITOR_TOKEN, id, "delete", code, sizeof(code)), 403);
    ck_assert_str_eq(code, "permission_denied");
    /* the 403 changed nothing */
    j = call(EDITOR_TOKEN, "GET", path, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_str_eq(json_string_value(json_object_get(j, "state")), "prepublished");
    json_decref(j);
    /* a publisher can */
    ck_assert_int_eq(act(h.ops_token, id, "publish", code, sizeof(code)), 200);
    /* Regression: an editor could PATCH a published notice (content, or a
     * start_at in the future that hid it: a stop in all but name). */
    j = call(EDITOR_TOKEN, "PATCH", path, "{\"title\":\"rewritten by an editor\"}", &st);
    ck_assert_int_eq(st, 403);
    ck_assert_str_eq(error_code(j), "permission_denied");
    json_decref(j);
    j = call(EDITOR_TOKEN, "PATCH", path, "{\"start_at\":\"4000000000000000\"}", &st);
    ck_assert_int_eq(st, 403);
    json_decref(j);
    j = call(EDITOR_TOKEN, "GET", path, NULL, &st);
    ck_assert_str_eq(json_string_value(json_object_get(j, "title")), "edited by an editor");
    ck_assert_int_eq(json_integer_value(json_object_get(j, "version")), 2);
    json_decref(j);
    ck_assert_int_eq(act(EDITOR_TOKEN, id, "stop", code, sizeof(code)), 403);
    ck_assert_int_eq(act(EDITOR_TOKEN, id, "retract", code, sizeof(code)), 403);
    ck_assert_int_eq(act(h.ops_token, id, "stop", code, sizeof(code)), 200);
    ck_assert_int_eq(act(h.ops_token, id, "delete", code, sizeof(code)), 204);
    /* the audit names who did what */
    char q[96];
    snprintf(q, sizeof(q), "/v1/audit?notice_id=%" PRIu64, id);
    j = call(EDITOR_TOKEN, "GET", q, NULL, &st);
    ck_assert_int_eq(st, 200);
    json_t *e = json_object_get(j, "entries");
    ck_assert_int_eq(json_array_size(e), 6); /* create, patch, prepublish, publish, stop, delete */
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(e, 3), "actor")), "ed");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(e, 2), "actor")), "tester");
    json_decref(j);
}
END_TEST

/* ---- static files ---- */

static int
get(const char *method, const char *path, const char *headers, struct httpc_resp *r)
{
    httpc_request(method, port, path, headers, NULL, 0, r);
    return r->status;
}

START_TEST(test_static_files)
{
    struct httpc_resp r;
    char buf[256];
    ck_assert_int_eq(get("GET", "/console/", NULL, &r), 200);
    ck_assert_str_eq(r.body, INDEX_HTML);
    ck_assert_str_eq(httpc_header(&r, "Content-Type", buf, sizeof(buf)),
                     "text/html; charset=utf-8");
    ck_assert_str_eq(httpc_header(&r, "Cache-Control", buf, sizeof(buf)), "no-cache");
    ck_assert_ptr_nonnull(httpc_header(&r, "Content-Security-Policy", buf, sizeof(buf)));
    char etag[128];
    ck_assert_ptr_nonnull(httpc_header(&r, "ETag", etag, sizeof(etag)));
    httpc_resp_free(&r);

    ck_assert_int_eq(get("GET", "/console/app.js", NULL, &r), 200);
    ck_assert_str_eq(r.body, APP_JS);
    ck_assert_str_eq(httpc_header(&r, "Content-Type", buf, sizeof(buf)),
                     "text/javascript; charset=utf-8");
    httpc_resp_free(&r);

    /* revalidation */
    char inm[200];
    snprintf(inm, sizeof(inm), "If-None-Match: %s\r\n", etag);
    ck_assert_int_eq(get("GET", "/console/index.html", inm, &r), 304);
    ck_assert_uint_eq(r.body_len, 0);
    httpc_resp_free(&r);

    /* HEAD: the headers, no body */
    ck_assert_int_eq(get("HEAD", "/console/index.html", NULL, &r), 200);
    ck_assert_uint_eq(r.body_len, 0);
    httpc_resp_free(&r);

    ck_assert_int_eq(get("GET", "/console", NULL, &r), 301);
    ck_assert_str_eq(httpc_header(&r, "Location", buf, sizeof(buf)), "/console/");
    httpc_resp_free(&r);

    /* the console needs no credential, but writes nothing either */
    ck_assert_int_eq(get("POST", "/console/index.html", NULL, &r), 405);
    httpc_resp_free(&r);
}
END_TEST

START_TEST(test_static_refusals)
{
    /* Every one of these must end in an error, never in the secret. */
    static const struct {
        const char *path;
        int status;
    } cases[] = {
        {"/console/nope.html", 404},              /* unknown file */
        {"/console/notes.txt", 404},              /* not a console type */
        {"/console/link.html", 404},              /* symlink out of the directory */
        {"/console/fifo.js", 404},                /* not a regular file (and must not block) */
        {"/console/..", 404},                     /* parent, literally */
        {"/console/%2e%2e", 404},                 /* parent, encoded */
        {"/console/.hidden.html", 404},           /* hidden files */
        {"/console/../secret/key.html", 404},     /* no route: more segments */
        {"/console/..%2fsecret%2fkey.html", 400}, /* encoded '/' refused by the router */
        {"/console/%2e%2e%5csecret", 404},        /* backslash */
        {"/console/index.html%00.js", 400},       /* NUL refused by the router */
        {"/console/a/b.js", 404},
        {"/console/aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa.js", 404},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        struct httpc_resp r;
        int st = get("GET", cases[i].path, NULL, &r);
        ck_assert_msg(st == cases[i].status, "%s: %d", cases[i].path, st);
        ck_assert_msg(r.body == NULL || strstr(r.body, "SECRET") == NULL, "%s leaked",
                      cases[i].path);
        ck_assert_msg(r.body != NULL && strstr(r.body, "\"error\"") != NULL, "%s: no JSON error",
                      cases[i].path);
        httpc_resp_free(&r);
    }
}
END_TEST

/* ---- reach series ---- */

static json_t *
stats(uint64_t id)
{
    char path[96];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/stats", id);
    int st;
    json_t *j = call(EDITOR_TOKEN, "GET", path, NULL, &st);
    ck_assert_int_eq(st, 200);
    return j;
}

/* Waits up to ms for the series to hold a sample with reach >= want; returns its length. */
static size_t
wait_series(uint64_t id, int64_t want, int ms)
{
    for (int waited = 0;; waited += 100) {
        json_t *j = stats(id);
        json_t *s = json_object_get(j, "series");
        ck_assert_ptr_nonnull(s);
        size_t n = json_array_size(s);
        json_t *last = n ? json_array_get(s, n - 1) : NULL;
        int64_t reach = last ? json_integer_value(json_object_get(last, "reach")) : -1;
        json_decref(j);
        if (reach >= want || waited >= ms)
            return reach >= want ? n : 0;
        usleep(100 * 1000);
    }
}

START_TEST(test_reach_series)
{
    char code[64];
    uint64_t id = create_notice(h.ops_token, 32);
    json_t *j = stats(id);
    ck_assert_int_eq(json_array_size(json_object_get(j, "series")), 0);
    json_decref(j);
    ck_assert_int_eq(act(h.ops_token, id, "publish", code, sizeof(code)), 200);
    /* two users receive it through sync (once the poller's cache has it) */
    for (uint64_t uid = 1; uid <= 2; uid++) {
        char tok[512];
        mt_token(&h, 1, 32, uid, 600, false, tok, sizeof(tok));
        bool seen = false;
        for (int tries = 0; !seen && tries < 50; tries++) {
            char cursor[64] = "";
            int st;
            json_t *s = mt_sync(&h, 1, tok, cursor, 50, &st);
            ck_assert_int_eq(st, 200);
            json_t *item;
            size_t i;
            json_array_foreach(json_object_get(s, "items"), i, item)
            {
                seen = seen || mt_u64(item, "notice_id") == id;
            }
            json_decref(s);
            if (!seen)
                usleep(100 * 1000);
        }
        ck_assert_msg(seen, "user %" PRIu64 " never received notice %" PRIu64, uid, id);
    }
    ck_assert_msg(wait_series(id, 2, 8000) > 0, "no sample with reach 2");
    j = stats(id);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "reach")), 2);
    /* oldest first, one sample per interval */
    json_t *s = json_object_get(j, "series");
    for (size_t i = 1; i < json_array_size(s); i++) {
        uint64_t a = mt_u64(json_array_get(s, i - 1), "at"), b = mt_u64(json_array_get(s, i), "at");
        ck_assert_msg(a < b, "series not ascending at %zu", i);
    }
    json_decref(j);
    /* a stopped notice is no longer sampled */
    ck_assert_int_eq(act(h.ops_token, id, "stop", code, sizeof(code)), 200);
    char q[160];
    snprintf(q, sizeof(q), "SELECT count(*) FROM notice_reach WHERE notice_id = %" PRIu64, id);
    sleep(1);
    int64_t before = mt_sql_i64(&h, q);
    sleep(3);
    ck_assert_int_eq(mt_sql_i64(&h, q), before);
    /* unknown notice */
    int st;
    j = call(EDITOR_TOKEN, "GET", "/v1/notices/999999999/stats", NULL, &st);
    ck_assert_int_eq(st, 404);
    json_decref(j);
}
END_TEST

/* While another session holds the sampler's advisory lock, nothing is
 * written; once it lets go, sampling resumes. */
/* Polls a count query until it satisfies want (>0 or ==0) or timeout_ms passes. */
static bool
wait_count(const char *sql, bool want_some, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 100) {
        if ((mt_sql_i64(&h, sql) > 0) == want_some)
            return true;
        usleep(100 * 1000);
    }
    return false;
}

START_TEST(test_reach_samples_every_live_notice)
{
    /* Regression: a tick sampled the 1000 lowest live notice ids only, so a
     * later notice never got a sample while 1000 older ones were live. */
    mt_sql_i64(&h, "WITH ins AS (INSERT INTO notice (app_id, state, created_by, created_at,"
                   " updated_by, updated_at) SELECT 34, 'published', 't', 0, 't', 0"
                   " FROM generate_series(1, 1005) RETURNING 1) SELECT count(*) FROM ins");
    int64_t top = mt_sql_i64(&h, "SELECT max(notice_id) FROM notice WHERE app_id = 34");
    char q[200];
    snprintf(q, sizeof(q), "SELECT count(*) FROM notice_reach WHERE notice_id = %lld",
             (long long)top);
    bool sampled = wait_count(q, true, 10000);
    /* Regression: samples were never deleted. One older than the series a
     * stats reply shows goes at the next tick. */
    char old[200];
    snprintf(old, sizeof(old),
             "WITH ins AS (INSERT INTO notice_reach (notice_id, at, reach) VALUES (%lld, 1, 5)"
             " RETURNING 1) SELECT count(*) FROM ins",
             (long long)top);
    mt_sql_i64(&h, old);
    bool pruned = wait_count("SELECT count(*) FROM notice_reach WHERE at = 1", false, 5000);
    mt_sql_i64(&h, "WITH u AS (UPDATE notice SET state = 'stopped' WHERE app_id = 34"
                   " RETURNING 1) SELECT count(*) FROM u");
    ck_assert_msg(sampled, "notice %lld (the 1005th live one) was never sampled", (long long)top);
    ck_assert_msg(pruned, "an ancient sample was not deleted");
}
END_TEST

START_TEST(test_reach_lock)
{
    char code[64];
    uint64_t id = create_notice(h.ops_token, 33);
    PGconn *c = PQconnectdb(h.pg_conninfo);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    PGresult *res = PQexec(c, "SELECT pg_advisory_lock(7204312002)");
    ck_assert_int_eq(PQresultStatus(res), PGRES_TUPLES_OK);
    PQclear(res);
    ck_assert_int_eq(act(h.ops_token, id, "publish", code, sizeof(code)), 200);
    char q[160];
    snprintf(q, sizeof(q), "SELECT count(*) FROM notice_reach WHERE notice_id = %" PRIu64, id);
    sleep(3);
    ck_assert_int_eq(mt_sql_i64(&h, q), 0);
    res = PQexec(c, "SELECT pg_advisory_unlock(7204312002)");
    PQclear(res);
    PQfinish(c);
    ck_assert_msg(wait_series(id, 0, 5000) > 0, "sampling did not resume");
}
END_TEST

/* Runs logicd with env settings that fail its start-up checks (it must
 * never get to listening); returns the first line it printed. */
static void
check_config(const char *env, char *out, size_t len)
{
    char prog[1024], cmd[2048];
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    snprintf(cmd, sizeof(cmd),
             "env LOGICD_SERVER_KEY=x LOGICD_TOKEN_KEY=x LOGICD_SDK_LISTEN=127.0.0.1:1 "
             "LOGICD_INTERNAL_LISTEN=127.0.0.1:1 %s timeout 10 %s 2>&1",
             env, prog);
    FILE *p = popen(cmd, "r");
    ck_assert_ptr_nonnull(p);
    out[0] = '\0';
    if (fgets(out, (int)len, p) == NULL)
        out[0] = '\0';
    pclose(p);
}

START_TEST(test_config_errors)
{
    char line[512];
    check_config("LOGICD_CONSOLE_DIR=/nonexistent/console", line, sizeof(line));
    ck_assert_msg(strstr(line, "key 'console_dir': '/nonexistent/console' is not a directory"),
                  "%s", line);
    check_config("LOGICD_OPS_TOKENS=a:b,c::editor", line, sizeof(line));
    ck_assert_msg(strstr(line, "key 'ops_tokens': entry 2 has an empty token"), "%s", line);
    check_config("LOGICD_OPS_TOKENS=a:S:editor,b:S", line, sizeof(line));
    ck_assert_msg(strstr(line, "key 'ops_tokens': entries 1 and 2 have the same token"), "%s",
                  line);
    /* valid tokens (a role suffix, a ':' inside a token): the next check fails */
    check_config("LOGICD_OPS_TOKENS=a:b:c:publisher,d:e:viewer LOGICD_CONSOLE_DIR=/nonexistent",
                 line, sizeof(line));
    ck_assert_msg(strstr(line, "key 'console_dir'"), "%s", line);
}
END_TEST

static Suite *
console_suite(void)
{
    Suite *s = suite_create("console");
    TCase *tc = tcase_create("console");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, test_whoami);
    tcase_add_test(tc, test_editor_cannot_publish);
    tcase_add_test(tc, test_static_files);
    tcase_add_test(tc, test_static_refusals);
    tcase_add_test(tc, test_reach_series);
    tcase_add_test(tc, test_reach_lock);
    tcase_add_test(tc, test_config_errors);
    tcase_add_test(tc, test_reach_samples_every_live_notice);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(console_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
