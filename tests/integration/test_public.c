/*
 * Integration: the public mailbox against real PostgreSQL, Redis and two
 * logicd processes sharing them (issue: notice lifecycle, poller cache,
 * merged sync, gray release, targeting).
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "cursor.h"
#include "harness.h"
#include "httpc.h"
#include "mboxtest.h"

static struct harness h;

static void
setup(void)
{
    if (!harness_start(&h, HARNESS_LOGICD) || harness_add_logicd(&h, NULL) != 1) {
        fprintf(stderr, "harness failed\n");
        exit(1);
    }
}

static void
teardown(void)
{
    harness_stop(&h);
}

/* An ops call on logicd idx's internal listener. */
static json_t *
ops(int idx, const char *method, const char *path, const char *body, int *st)
{
    return httpc_json(method, h.logicd[idx].port[1], path, h.ops_token, body, st);
}

/* Creates a notice from JSON and returns its id. */
static uint64_t
create(int idx, const char *body)
{
    int st;
    json_t *j = ops(idx, "POST", "/v1/notices", body, &st);
    ck_assert_msg(st == 201, "create: %d", st);
    uint64_t id = mt_u64(j, "notice_id");
    ck_assert_str_eq(json_string_value(json_object_get(j, "state")), "draft");
    json_decref(j);
    return id;
}

static void
act(int idx, uint64_t id, const char *verb, int want)
{
    char path[128];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/%s", id, verb);
    int st;
    json_t *j = ops(idx, "POST", path, NULL, &st);
    ck_assert_msg(st == want, "%s %" PRIu64 ": %d (%s)", verb, id, st,
                  j ? json_dumps(j, 0) : "no body");
    json_decref(j);
}

/* A user's client: token, cursor and client headers. */
struct client {
    char tok[256];
    char cursor[64];
    const char *ua;
};

static void
client_init(struct client *c, uint64_t app, uint64_t uid, bool guest, const char *ua)
{
    mt_token(&h, 0, app, uid, 3600, guest, c->tok, sizeof(c->tok));
    c->cursor[0] = '\0';
    c->ua = ua;
}

/* One sync; returns the items array (caller decrefs the reply via *reply). */
static json_t *
csync(struct client *c, int idx, json_t **reply)
{
    char body[256], headers[1024];
    snprintf(body, sizeof(body), "{\"cursor\":\"%s\",\"limit\":100}", c->cursor);
    snprintf(headers, sizeof(headers),
             "Content-Type: application/json\r\nAuthorization: Bearer %s\r\n%s%s%s", c->tok,
             c->ua ? "User-Agent: " : "", c->ua ? c->ua : "", c->ua ? "\r\n" : "");
    struct httpc_resp r;
    int st = httpc_request("POST", h.logicd[idx].port[0], "/v1/sync", headers, body,
                           strlen(body), &r);
    ck_assert_msg(st == 200, "sync: %d %s", st, r.body ? r.body : "");
    *reply = json_loads(r.body, 0, NULL);
    httpc_resp_free(&r);
    snprintf(c->cursor, sizeof(c->cursor), "%s",
             json_string_value(json_object_get(*reply, "cursor")));
    return json_object_get(*reply, "items");
}

/* Number of items of kind for notice id in the next sync. */
static int
count_kind(struct client *c, int idx, const char *kind, uint64_t id, uint32_t *version)
{
    json_t *reply;
    json_t *items = csync(c, idx, &reply);
    int n = 0;
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *it = json_array_get(items, i);
        if (strcmp(json_string_value(json_object_get(it, "kind")), kind) == 0 &&
            mt_u64(it, "notice_id") == id) {
            n++;
            if (version)
                *version = (uint32_t)json_integer_value(json_object_get(it, "version"));
        }
    }
    json_decref(reply);
    return n;
}

/* Waits until a sync on idx returns notice id (or times out): returns the count seen. */
static int
wait_for(struct client *c, int idx, const char *kind, uint64_t id, int timeout_ms)
{
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        int n = count_kind(c, idx, kind, id, NULL);
        if (n > 0)
            return n;
        usleep(50 * 1000);
    }
    return 0;
}

START_TEST(lifecycle)
{
    struct client w, u, fresh;
    client_init(&w, 1, 101, false, NULL);
    client_init(&u, 1, 102, false, NULL);
    int st;
    json_decref(ops(0, "POST", "/v1/whitelist", "{\"app_id\":\"1\",\"uids\":[\"101\"]}", &st));
    ck_assert_int_eq(st, 200);
    uint64_t id = create(0, "{\"app_id\":\"1\",\"title\":\"Maintenance\",\"content\":\"tonight\","
                            "\"category\":2}");
    /* Draft: invisible. */
    usleep(500 * 1000);
    ck_assert_int_eq(count_kind(&w, 1, "notice", id, NULL), 0);
    /* Prepublished: the whitelist only, on the other logicd within a poll interval. */
    act(0, id, "prepublish", 200);
    ck_assert_int_eq(wait_for(&w, 1, "notice", id, 2000), 1);
    ck_assert_int_eq(count_kind(&u, 1, "notice", id, NULL), 0);
    /* Published: everyone once, including a user who never synced; not again for w. */
    act(1, id, "publish", 200);
    ck_assert_int_eq(wait_for(&u, 0, "notice", id, 2000), 1);
    ck_assert_int_eq(count_kind(&u, 1, "notice", id, NULL), 0);
    ck_assert_int_eq(count_kind(&w, 0, "notice", id, NULL), 0);
    ck_assert_int_eq(count_kind(&w, 1, "notice", id, NULL), 0);
    client_init(&fresh, 1, 103, false, NULL);
    ck_assert_int_eq(count_kind(&fresh, 1, "notice", id, NULL), 1);

    /* Edit of a visible notice: an update with a higher version, once. */
    char path[128];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id);
    json_t *j = httpc_json("PATCH", h.logicd[0].port[1], path, h.ops_token,
                           "{\"title\":\"Maintenance (moved)\"}", &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "version")), 2);
    json_decref(j);
    uint32_t ver = 0;
    for (int i = 0; i < 40 && ver != 2; i++) {
        count_kind(&u, 1, "notice", id, &ver);
        usleep(50 * 1000);
    }
    ck_assert_int_eq(ver, 2);
    ck_assert_int_eq(count_kind(&u, 1, "notice", id, NULL), 0);

    /* Stop: not served to users who never pulled; no tombstone for holders. */
    act(0, id, "stop", 200);
    usleep(600 * 1000);
    struct client late;
    client_init(&late, 1, 104, false, NULL);
    ck_assert_int_eq(count_kind(&late, 1, "notice", id, NULL), 0);
    ck_assert_int_eq(count_kind(&u, 1, "retract", id, NULL), 0);
    /* Delete rules: published cannot be deleted, stopped can. */
    uint64_t id2 = create(0, "{\"app_id\":\"1\",\"title\":\"t2\",\"content\":\"c\"}");
    act(0, id2, "publish", 200);
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id2);
    j = ops(0, "DELETE", path, NULL, &st);
    ck_assert_int_eq(st, 409);
    ck_assert_ptr_nonnull(strstr(json_string_value(json_object_get(json_object_get(j, "error"),
                                                                   "message")),
                                 "allowed from"));
    json_decref(j);
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id);
    j = ops(0, "DELETE", path, NULL, &st);
    ck_assert_int_eq(st, 204);
    json_decref(j);
    j = ops(1, "GET", path, NULL, &st);
    ck_assert_int_eq(st, 404);
    json_decref(j);

    /* Retract: holders get a tombstone, a first sync does not. */
    ck_assert_int_eq(wait_for(&u, 0, "notice", id2, 2000), 1);
    act(1, id2, "retract", 200);
    ck_assert_int_eq(wait_for(&u, 0, "retract", id2, 2000), 1);
    struct client first;
    client_init(&first, 1, 105, false, NULL);
    ck_assert_int_eq(count_kind(&first, 0, "retract", id2, NULL), 0);
    ck_assert_int_eq(count_kind(&first, 0, "notice", id2, NULL), 0);

    /* Invalid transitions name what is allowed. */
    j = ops(0, "POST", "/v1/notices/999999/publish", NULL, &st);
    ck_assert_int_eq(st, 404);
    json_decref(j);
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/prepublish", id2);
    j = ops(0, "POST", path, NULL, &st);
    ck_assert_int_eq(st, 409);
    json_decref(j);

    /* The audit log has who did what. */
    snprintf(path, sizeof(path), "/v1/audit?notice_id=%" PRIu64, id2);
    j = ops(0, "GET", path, NULL, &st);
    ck_assert_int_eq(st, 200);
    json_t *entries = json_object_get(j, "entries");
    ck_assert_int_ge(json_array_size(entries), 3);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(entries, 0), "action")),
                     "retract");
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(entries, 0), "actor")),
                     "tester");
    json_decref(j);
    /* Reach counted the deliveries. */
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/stats", id2);
    j = ops(1, "GET", path, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_ge(json_integer_value(json_object_get(j, "reach")), 1);
    json_decref(j);
}
END_TEST

START_TEST(whitelist_across_logicd)
{
    uint64_t id = create(0, "{\"app_id\":\"2\",\"title\":\"gray\",\"content\":\"g\"}");
    act(0, id, "prepublish", 200);
    struct client x, y;
    client_init(&x, 2, 201, false, NULL);
    client_init(&y, 2, 202, false, NULL);
    usleep(500 * 1000);
    int st;
    /* Added with curl on logicd 0: effective on logicd 1 within a poll interval. */
    json_decref(ops(0, "PUT", "/v1/whitelist", "{\"app_id\":\"2\",\"uids\":[\"201\"]}", &st));
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(wait_for(&x, 1, "notice", id, 1500), 1);
    json_t *j = ops(1, "GET", "/v1/whitelist?app_id=2", NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "uids")), 1);
    json_decref(j);
    json_decref(ops(1, "DELETE", "/v1/whitelist", "{\"app_id\":\"2\",\"uids\":[\"201\"]}", &st));
    ck_assert_int_eq(st, 200);
    usleep(600 * 1000);
    ck_assert_int_eq(count_kind(&y, 0, "notice", id, NULL), 0);
    j = ops(0, "GET", "/v1/whitelist?app_id=2", NULL, &st);
    ck_assert_int_eq(json_array_size(json_object_get(j, "uids")), 0);
    json_decref(j);
}
END_TEST

START_TEST(targeting_and_user_agent)
{
    uint64_t id = create(0, "{\"app_id\":\"3\",\"title\":\"ios only\",\"content\":\"x\","
                            "\"targeting\":{\"platforms\":[\"ios\"],\"min_core_level\":\"220000\","
                            "\"login_only\":true}}");
    act(0, id, "publish", 200);
    struct client ios, android, old, guest, hdr;
    client_init(&ios, 3, 301, false, "Mozilla/5.0 platform/ios app_version/8.0.25 core_level/220819");
    client_init(&android, 3, 302, false, "x platform/android app_version/8.0.25 core_level/220819");
    client_init(&old, 3, 303, false, "x platform/ios app_version/7.0 core_level/100");
    client_init(&guest, 3, 304, true, "x platform/ios app_version/8.0.25 core_level/220819");
    client_init(&hdr, 3, 305, false, NULL);
    ck_assert_int_eq(wait_for(&ios, 1, "notice", id, 2000), 1);
    ck_assert_int_eq(count_kind(&android, 1, "notice", id, NULL), 0);
    ck_assert_int_eq(count_kind(&old, 1, "notice", id, NULL), 0);
    ck_assert_int_eq(count_kind(&guest, 1, "notice", id, NULL), 0);
    /* Headers instead of the User-Agent. */
    char headers[1024], body[128];
    snprintf(headers, sizeof(headers),
             "Authorization: Bearer %s\r\nplatform: ios\r\napp_version: 8.1\r\ncore_level: 230000\r\n",
             hdr.tok);
    snprintf(body, sizeof(body), "{\"cursor\":\"\"}");
    struct httpc_resp r;
    ck_assert_int_eq(httpc_request("POST", h.logicd[0].port[0], "/v1/sync", headers, body,
                                   strlen(body), &r),
                     200);
    ck_assert_ptr_nonnull(strstr(r.body, "ios only"));
    httpc_resp_free(&r);
}
END_TEST

START_TEST(scheduled_activation_after_cursor_passed)
{
    /* Published with start_at 1.5 s ahead: a user syncing now moves past the
     * publish and still receives it once start_at arrives. */
    char body[256];
    int64_t start = (int64_t)time(NULL) * 1000000 + 1500000;
    snprintf(body, sizeof(body),
             "{\"app_id\":\"4\",\"title\":\"later\",\"content\":\"x\",\"start_at\":\"%" PRId64 "\"}",
             start);
    uint64_t id = create(0, body);
    act(0, id, "publish", 200);
    struct client u;
    client_init(&u, 4, 401, false, NULL);
    usleep(400 * 1000);
    ck_assert_int_eq(count_kind(&u, 1, "notice", id, NULL), 0);
    ck_assert_int_eq(wait_for(&u, 1, "notice", id, 4000), 1);
    ck_assert_int_eq(count_kind(&u, 0, "notice", id, NULL), 0);
    /* RFC 3339 inputs and an expiry already passed are refused or honoured. */
    int st;
    json_t *j = ops(0, "POST", "/v1/notices",
                    "{\"app_id\":\"4\",\"title\":\"w\",\"content\":\"x\","
                    "\"start_at\":\"2030-01-01T00:00:00Z\",\"expire_at\":\"2029-01-01T00:00:00Z\"}",
                    &st);
    ck_assert_int_eq(st, 400);
    json_decref(j);
}
END_TEST

START_TEST(hide_read_and_history)
{
    uint64_t id = create(0, "{\"app_id\":\"5\",\"title\":\"hideme\",\"content\":\"x\"}");
    act(0, id, "publish", 200);
    struct client u;
    client_init(&u, 5, 501, false, NULL);
    ck_assert_int_eq(wait_for(&u, 0, "notice", id, 2000), 1);
    ck_assert_uint_gt(mt_send1(&h, 0, 5, 7, 501, "private"), 0);
    /* History merges private messages and visible notices. */
    int st;
    json_t *j = httpc_json("GET", h.logicd[0].port[0], "/v1/history?order=asc", u.tok, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 2);
    json_decref(j);
    /* Read marks a notice for this user only. */
    char body[128];
    snprintf(body, sizeof(body), "{\"notice_ids\":[\"%" PRIu64 "\"]}", id);
    j = httpc_json("POST", h.logicd[0].port[0], "/v1/read", u.tok, body, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "updated")), 1);
    json_decref(j);
    /* logicd 1 may be one poll interval behind: give it a bounded while. */
    bool seen = false;
    for (int tries = 0; tries < 30 && !seen; tries++) {
        if (tries > 0) {
            json_decref(j);
            usleep(50 * 1000);
        }
        j = httpc_json("GET", h.logicd[1].port[0], "/v1/history?order=asc", u.tok, NULL, &st);
        json_t *items = json_object_get(j, "items");
        for (size_t i = 0; i < json_array_size(items); i++) {
            json_t *it = json_array_get(items, i);
            if (mt_u64(it, "notice_id") == id) {
                ck_assert(json_is_true(json_object_get(it, "is_read")));
                seen = true;
            }
        }
    }
    ck_assert_msg(seen, "history on logicd 1: %s", json_dumps(j, 0));
    json_decref(j);
    /* Hidden: an edit is not delivered to this user, but to others. */
    char path[128];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/hide", id);
    j = httpc_json("POST", h.logicd[1].port[0], path, u.tok, NULL, &st);
    ck_assert_int_eq(st, 204);
    json_decref(j);
    struct client other;
    client_init(&other, 5, 502, false, NULL);
    ck_assert_int_eq(count_kind(&other, 0, "notice", id, NULL), 1);
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id);
    json_decref(httpc_json("PATCH", h.logicd[0].port[1], path, h.ops_token,
                           "{\"content\":\"edited\"}", &st));
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(wait_for(&other, 1, "notice", id, 2000), 1);
    ck_assert_int_eq(count_kind(&u, 1, "notice", id, NULL), 0);
    j = httpc_json("GET", h.logicd[0].port[0], "/v1/history?order=asc", u.tok, NULL, &st);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 1);
    json_decref(j);
}
END_TEST

START_TEST(bad_input_on_ops_endpoints)
{
    int st;
    json_t *j = httpc_json("POST", h.logicd[0].port[1], "/v1/notices", NULL, "{}", &st);
    ck_assert_int_eq(st, 401);
    json_decref(j);
    j = httpc_json("POST", h.logicd[0].port[1], "/v1/notices", h.server_key, "{}", &st);
    ck_assert_int_eq(st, 401); /* the server key is not an ops token */
    json_decref(j);
    const char *bad[] = {
        "{\"app_id\":\"1\",\"title\":\"t\"",
        "{\"app_id\":\"1\"}",
        "{\"title\":\"t\"}",
        "{\"app_id\":\"1\",\"title\":\"t\",\"state\":\"published\"}",
        "{\"app_id\":\"1\",\"title\":\"t\",\"colour\":\"red\"}",
        "{\"app_id\":\"1\",\"title\":\"t\",\"targeting\":{\"platforms\":[\"iOS phone\"]}}",
        "{\"app_id\":\"1\",\"title\":\"t\",\"targeting\":{\"min_core_level\":5,\"max_core_level\":4}}",
        "{\"app_id\":\"1\",\"title\":\"t\",\"notify\":{\"mode\":\"loud\"}}",
        "{\"app_id\":\"1\",\"title\":\"t\",\"notify\":{\"mode\":\"paced\"}}",
        "{\"app_id\":\"1\",\"title\":\"t\",\"start_at\":\"yesterday\"}",
    };
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        j = ops(0, "POST", "/v1/notices", bad[i], &st);
        ck_assert_msg(st == 400, "case %zu: %d", i, st);
        ck_assert_ptr_nonnull(json_object_get(json_object_get(j, "error"), "message"));
        json_decref(j);
    }
    j = ops(0, "GET", "/v1/notices/abc", NULL, &st);
    ck_assert_int_eq(st, 400);
    json_decref(j);
    j = ops(0, "GET", "/v1/notices?state=weird", NULL, &st);
    ck_assert_int_eq(st, 400);
    json_decref(j);
    j = ops(0, "POST", "/v1/whitelist", "{\"uids\":[\"1\"]}", &st);
    ck_assert_int_eq(st, 400);
    json_decref(j);
    j = ops(0, "GET", "/v1/whitelist", NULL, &st);
    ck_assert_int_eq(st, 400);
    json_decref(j);
    /* A stale If-Match is a 412 naming the current version. */
    uint64_t id = create(0, "{\"app_id\":\"6\",\"title\":\"v\",\"content\":\"x\"}");
    char path[128], headers[512];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id);
    snprintf(headers, sizeof(headers),
             "Content-Type: application/json\r\nAuthorization: Bearer %s\r\nIf-Match: 1\r\n",
             h.ops_token);
    struct httpc_resp r;
    ck_assert_int_eq(httpc_request("PATCH", h.logicd[0].port[1], path, headers,
                                   "{\"title\":\"a\"}", 13, &r),
                     200);
    httpc_resp_free(&r);
    ck_assert_int_eq(httpc_request("PATCH", h.logicd[1].port[1], path, headers,
                                   "{\"title\":\"b\"}", 13, &r),
                     412);
    ck_assert_ptr_nonnull(strstr(r.body, "version 2"));
    httpc_resp_free(&r);
    /* Editing a stopped notice is a conflict. */
    act(0, id, "publish", 200);
    act(0, id, "stop", 200);
    j = ops(0, "PATCH", path, "{\"title\":\"c\"}", &st);
    ck_assert_int_eq(st, 409);
    json_decref(j);
}
END_TEST

START_TEST(review_regressions)
{
    int st;
    /* A whitelisted user added after prepublish and publish still gets the notice. */
    uint64_t id = create(0, "{\"app_id\":\"7\",\"title\":\"gray\",\"content\":\"x\"}");
    act(0, id, "prepublish", 200);
    struct client late;
    client_init(&late, 7, 701, false, NULL);
    usleep(400 * 1000);
    ck_assert_int_eq(count_kind(&late, 0, "notice", id, NULL), 0); /* cursor passes the prepublish */
    act(0, id, "publish", 200);
    json_decref(ops(0, "POST", "/v1/whitelist", "{\"app_id\":\"7\",\"uids\":[\"701\"]}", &st));
    ck_assert_int_eq(st, 200);
    ck_assert_int_ge(wait_for(&late, 1, "notice", id, 2000), 1);

    /* Reading the same notice twice in one request is fine, and counts once. */
    char body[128];
    snprintf(body, sizeof(body), "{\"notice_ids\":[\"%" PRIu64 "\",\"%" PRIu64 "\",\"999999\"]}", id,
             id);
    json_t *j = httpc_json("POST", h.logicd[0].port[0], "/v1/read", late.tok, body, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "updated")), 1);
    json_decref(j);

    /* Deleting a retracted notice keeps its tombstone for holders. */
    act(0, id, "retract", 200);
    char path[128];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id);
    j = ops(0, "DELETE", path, NULL, &st);
    ck_assert_int_eq(st, 204);
    json_decref(j);
    ck_assert_int_eq(wait_for(&late, 1, "retract", id, 2000), 1);

    /* A protobuf body on an operator route (its bytes are not UTF-8) is audited, not a 500. */
    uint8_t pb[] = {0x10, 0xc8, 0x01, 0x3a, 0x02, 'p', 'b'}; /* app_id = 200, title = "pb" */
    char headers[512];
    snprintf(headers, sizeof(headers),
             "Content-Type: application/x-protobuf\r\nAccept: application/json\r\n"
             "Authorization: Bearer %s\r\n",
             h.ops_token);
    struct httpc_resp r;
    ck_assert_int_eq(httpc_request("POST", h.logicd[0].port[1], "/v1/notices", headers, pb,
                                   sizeof(pb), &r),
                     201);
    ck_assert_ptr_nonnull(strstr(r.body, "\"title\":\"pb\""));
    httpc_resp_free(&r);

    /* PATCH: a paced policy without a rate is refused after the merge. */
    uint64_t id2 = create(0, "{\"app_id\":\"7\",\"title\":\"p\",\"content\":\"x\","
                             "\"notify\":{\"mode\":\"paced\",\"rate_per_s\":10}}");
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id2);
    j = ops(0, "PATCH", path, "{\"notify\":{\"mode\":\"paced\"}}", &st);
    ck_assert_int_eq(st, 400);
    json_decref(j);
}
END_TEST

START_TEST(cache_serves_while_postgres_is_down)
{
    /* fresh syncs before the notice exists: its private hint is set and its
     * cursor is before the notice. */
    struct client u, fresh;
    client_init(&u, 8, 801, false, NULL);
    client_init(&fresh, 8, 802, false, NULL);
    ck_assert_int_eq(count_kind(&fresh, 1, "notice", 0, NULL), 0);
    ck_assert_int_eq(count_kind(&fresh, 1, "notice", 0, NULL), 0); /* now from the hint */
    uint64_t id = create(0, "{\"app_id\":\"8\",\"title\":\"still here\",\"content\":\"x\"}");
    act(0, id, "publish", 200);
    ck_assert_int_eq(wait_for(&u, 1, "notice", id, 2000), 1);

    ck_assert(harness_pg_pause(&h));
    int st;
    json_t *j = NULL;
    for (int i = 0; i < 40; i++) {
        json_decref(j);
        j = httpc_json("GET", h.logicd[1].port[1], "/healthz", NULL, NULL, &st);
        if (st == 503)
            break;
        usleep(100 * 1000);
    }
    ck_assert_int_eq(st, 503);
    ck_assert(json_is_false(json_object_get(json_object_get(j, "postgres"), "up")));
    ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(j, "public_cache"), "notices")), 1);
    json_decref(j);
    /* The last snapshot keeps serving: the notice reaches fresh with PostgreSQL down
     * (private side from the Redis hint, the notice from the cache). */
    ck_assert_int_eq(count_kind(&fresh, 1, "notice", id, NULL), 1);
    ck_assert_int_eq(count_kind(&u, 1, "notice", id, NULL), 0);
    ck_assert_double_ge(mt_metric(h.logicd[1].port[1], "mbox_notice_state_degraded_total", NULL), 1);
    /* The poller's age grows while the database is away. */
    sleep(2);
    j = httpc_json("GET", h.logicd[1].port[1], "/healthz", NULL, NULL, &st);
    ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(j, "public_cache"), "age_ms")), 1500);
    json_decref(j);

    ck_assert(harness_pg_resume(&h));
    /* Back: both processes reconnect (on their own backoff) and answer again. */
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 150; i++) {
            j = httpc_json("GET", h.logicd[k].port[1], "/healthz", NULL, NULL, &st);
            json_decref(j);
            if (st == 200)
                break;
            usleep(100 * 1000);
        }
        ck_assert_int_eq(st, 200);
    }
    ck_assert_int_eq(count_kind(&fresh, 0, "notice", id, NULL), 0);
}
END_TEST

/* ---- the invariant under concurrency ---- */

#define INV_APP 9
#define INV_UID 900
#define INV_SENDS 60
#define INV_NOTICES 8

struct pubarg {
    uint64_t ids[INV_NOTICES];
    uint32_t final_version[INV_NOTICES];
};

static void *
publisher(void *p)
{
    struct pubarg *a = p;
    for (int i = 0; i < INV_NOTICES; i++) {
        char body[128];
        snprintf(body, sizeof(body), "{\"app_id\":\"%d\",\"title\":\"n%d\",\"content\":\"c\"}",
                 INV_APP, i);
        int st;
        json_t *j = ops(i % 2, "POST", "/v1/notices", body, &st);
        a->ids[i] = mt_u64(j, "notice_id");
        json_decref(j);
        char path[128];
        snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/publish", a->ids[i]);
        json_decref(ops((i + 1) % 2, "POST", path, NULL, &st));
        a->final_version[i] = 1;
        if (i % 3 == 0) {
            snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, a->ids[i]);
            json_decref(ops(i % 2, "PATCH", path, "{\"content\":\"edited\"}", &st));
            if (st == 200)
                a->final_version[i] = 2;
        }
        usleep(30 * 1000);
    }
    return NULL;
}

struct sendarg {
    uint64_t acked[INV_SENDS];
    int n;
};

static void *
sender(void *p)
{
    struct sendarg *a = p;
    for (int i = 0; i < INV_SENDS; i++) {
        uint64_t id = mt_send1(&h, i % 2, INV_APP, 1, INV_UID, "m");
        if (id)
            a->acked[a->n++] = id;
    }
    return NULL;
}

START_TEST(invariant_sends_and_publishes)
{
    struct client c;
    client_init(&c, INV_APP, INV_UID, false, NULL);
    struct pubarg pa;
    struct sendarg sa[2];
    memset(&pa, 0, sizeof(pa));
    memset(sa, 0, sizeof(sa));
    pthread_t tp, ts[2];
    pthread_create(&tp, NULL, publisher, &pa);
    for (int i = 0; i < 2; i++)
        pthread_create(&ts[i], NULL, sender, &sa[i]);
    uint64_t *msgs = calloc(4 * INV_SENDS, sizeof(uint64_t));
    int nmsgs = 0;
    /* (notice_id, version) pairs received */
    uint64_t got_id[64];
    uint32_t got_ver[64];
    int ngot = 0;
    bool done = false, joined = false;
    int quiet = 0, syncs = 0;
    while (!done) {
        json_t *reply;
        /* Alternate logicd processes: their caches are at different ages. */
        json_t *items = csync(&c, syncs++ % 2, &reply);
        for (size_t i = 0; i < json_array_size(items); i++) {
            json_t *it = json_array_get(items, i);
            const char *kind = json_string_value(json_object_get(it, "kind"));
            if (strcmp(kind, "message") == 0) {
                ck_assert(nmsgs < 4 * INV_SENDS);
                msgs[nmsgs++] = mt_u64(it, "msg_id");
            } else if (strcmp(kind, "notice") == 0) {
                ck_assert(ngot < 64);
                got_id[ngot] = mt_u64(it, "notice_id");
                got_ver[ngot] = (uint32_t)json_integer_value(json_object_get(it, "version"));
                for (int k = 0; k < ngot; k++)
                    ck_assert_msg(got_id[k] != got_id[ngot] || got_ver[k] != got_ver[ngot],
                                  "notice %" PRIu64 " v%u delivered twice", got_id[ngot],
                                  got_ver[ngot]);
                ngot++;
            }
        }
        bool empty = json_array_size(items) == 0 && !json_is_true(json_object_get(reply, "has_more"));
        json_decref(reply);
        if (!joined) {
            if (pthread_tryjoin_np(tp, NULL) == 0) {
                pthread_join(ts[0], NULL);
                pthread_join(ts[1], NULL);
                joined = true;
            }
        } else {
            /* After the writers: quiet for a few poll intervals on both logicd. */
            quiet = empty ? quiet + 1 : 0;
            done = quiet >= 10;
        }
        usleep(60 * 1000);
    }
    /* Every acknowledged message exactly once. */
    int nacked = sa[0].n + sa[1].n;
    ck_assert_int_eq(nacked, 2 * INV_SENDS);
    ck_assert_int_eq(nmsgs, nacked);
    for (int s = 0; s < 2; s++) {
        for (int i = 0; i < sa[s].n; i++) {
            int found = 0;
            for (int k = 0; k < nmsgs; k++)
                found += msgs[k] == sa[s].acked[i];
            ck_assert_int_eq(found, 1);
        }
    }
    /* Every notice's final version received (once: checked above). */
    for (int i = 0; i < INV_NOTICES; i++) {
        bool have = false;
        for (int k = 0; k < ngot; k++)
            have = have || (got_id[k] == pa.ids[i] && got_ver[k] == pa.final_version[i]);
        ck_assert_msg(have, "notice %" PRIu64 " v%u never arrived", pa.ids[i],
                      pa.final_version[i]);
    }
    free(msgs);
}
END_TEST

/* ---- read path review (h2): visibility of read/hide, reach, attribute changes, lists ---- */

/* An SDK request from client c (its User-Agent); returns the parsed body, status in *st. */
static json_t *
sdk_call(struct client *c, int idx, const char *method, const char *path, const char *body,
         int *st, char **raw)
{
    char headers[1024];
    snprintf(headers, sizeof(headers),
             "Content-Type: application/json\r\nAuthorization: Bearer %s\r\n%s%s%s", c->tok,
             c->ua ? "User-Agent: " : "", c->ua ? c->ua : "", c->ua ? "\r\n" : "");
    struct httpc_resp r;
    *st = httpc_request(method, h.logicd[idx].port[0], path, headers, body,
                        body ? strlen(body) : 0, &r);
    json_t *j = r.body && r.body[0] ? json_loads(r.body, 0, NULL) : NULL;
    if (raw != NULL)
        *raw = strdup(r.body ? r.body : "");
    httpc_resp_free(&r);
    return j;
}

/* POST /v1/read of one notice id by client c: the "updated" count (status must be 200). */
static int
read_notice(struct client *c, uint64_t id)
{
    char body[64];
    snprintf(body, sizeof(body), "{\"notice_ids\":[\"%" PRIu64 "\"]}", id);
    int st;
    json_t *j = sdk_call(c, 0, "POST", "/v1/read", body, &st, NULL);
    ck_assert_int_eq(st, 200);
    int n = (int)json_integer_value(json_object_get(j, "updated"));
    json_decref(j);
    return n;
}

/* POST /v1/notices/{id}/hide by client c: the status; a 404 must look like an unknown id's. */
static int
hide_notice(struct client *c, uint64_t id)
{
    char path[96], want[96];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/hide", id);
    int st;
    json_t *j = sdk_call(c, 0, "POST", path, NULL, &st, NULL);
    if (st == 404) {
        json_t *e = json_object_get(j, "error");
        snprintf(want, sizeof(want), "no notice %" PRIu64 " for this app", id);
        ck_assert_str_eq(json_string_value(json_object_get(e, "code")), "not_found");
        ck_assert_str_eq(json_string_value(json_object_get(e, "message")), want);
    }
    json_decref(j);
    return st;
}

/*
 * Read marks and hide must not tell a user that a notice they cannot see
 * exists: a draft, a prepublished notice they are not whitelisted for, one
 * targeted at other clients, a stopped or expired one all answer like an
 * unknown id (updated 0, 404). The same ids work once visible.
 */
START_TEST(read_and_hide_see_only_visible_notices)
{
    const char *ios = "x platform/ios app_version/1.0 core_level/100";
    const char *android = "x platform/android app_version/1.0 core_level/100";
    uint64_t draft = create(0, "{\"app_id\":\"8101\",\"title\":\"d\",\"content\":\"x\"}");
    uint64_t gray = create(0, "{\"app_id\":\"8101\",\"title\":\"g\",\"content\":\"x\"}");
    act(0, gray, "prepublish", 200);
    uint64_t droid = create(0, "{\"app_id\":\"8101\",\"title\":\"a\",\"content\":\"x\","
                               "\"targeting\":{\"platforms\":[\"android\"]}}");
    act(0, droid, "publish", 200);
    uint64_t stopped = create(0, "{\"app_id\":\"8101\",\"title\":\"s\",\"content\":\"x\"}");
    act(0, stopped, "publish", 200);
    act(0, stopped, "stop", 200);
    uint64_t open = create(0, "{\"app_id\":\"8101\",\"title\":\"o\",\"content\":\"x\"}");
    act(0, open, "publish", 200);
    struct client u;
    client_init(&u, 8101, 1, false, ios);
    ck_assert_int_eq(wait_for(&u, 0, "notice", open, 2000), 1);

    const uint64_t unknown = 987654321;
    ck_assert_int_eq(read_notice(&u, unknown), 0);
    ck_assert_int_eq(hide_notice(&u, unknown), 404);
    uint64_t hidden_ids[] = {draft, gray, droid, stopped};
    for (size_t i = 0; i < sizeof(hidden_ids) / sizeof(hidden_ids[0]); i++) {
        ck_assert_msg(read_notice(&u, hidden_ids[i]) == 0, "read of invisible %" PRIu64,
                      hidden_ids[i]);
        ck_assert_msg(hide_notice(&u, hidden_ids[i]) == 404, "hide of invisible %" PRIu64,
                      hidden_ids[i]);
    }
    /* Ids mixed in one request: only the visible one counts. */
    char body[256];
    snprintf(body, sizeof(body),
             "{\"notice_ids\":[\"%" PRIu64 "\",\"%" PRIu64 "\",\"%" PRIu64 "\",\"%" PRIu64 "\"]}",
             draft, gray, droid, open);
    int st;
    json_t *j = sdk_call(&u, 0, "POST", "/v1/read", body, &st, NULL);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "updated")), 1);
    json_decref(j);
    ck_assert_int_eq(hide_notice(&u, open), 204);
    /* The android-only notice exists for the same user on an android client. */
    u.ua = android;
    ck_assert_int_eq(read_notice(&u, droid), 1);
    ck_assert_int_eq(hide_notice(&u, droid), 204);
    /* And the gray release once the user is on the whitelist. */
    json_decref(ops(0, "POST", "/v1/whitelist", "{\"app_id\":\"8101\",\"uids\":[\"1\"]}", &st));
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(wait_for(&u, 0, "notice", gray, 2000), 1);
    ck_assert_int_eq(read_notice(&u, gray), 1);
    ck_assert_int_eq(hide_notice(&u, gray), 204);
    /* Expired after delivery: gone for read and hide too. */
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    char exp[160];
    snprintf(exp, sizeof(exp),
             "{\"app_id\":\"8101\",\"title\":\"e\",\"content\":\"x\",\"expire_at\":\"%" PRId64
             "\"}",
             (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000 + 2000000);
    uint64_t expiring = create(0, exp);
    act(0, expiring, "publish", 200);
    ck_assert_int_eq(wait_for(&u, 0, "notice", expiring, 1500), 1);
    ck_assert_int_eq(hide_notice(&u, expiring), 204); /* still valid: it exists */
    usleep(2500 * 1000);
    ck_assert_int_eq(read_notice(&u, expiring), 0);
    ck_assert_int_eq(hide_notice(&u, expiring), 404);
}
END_TEST

/* The reach of a notice, waiting up to timeout_ms for it to reach at least want. */
static json_int_t
reach_of(uint64_t id, json_int_t want, int timeout_ms)
{
    char path[96];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/stats", id);
    json_int_t reach = -1;
    for (int waited = 0; waited <= timeout_ms; waited += 50) {
        int st;
        json_t *j = ops(0, "GET", path, NULL, &st);
        ck_assert_int_eq(st, 200);
        reach = json_integer_value(json_object_get(j, "reach"));
        json_decref(j);
        if (reach >= want)
            break;
        usleep(50 * 1000);
    }
    return reach;
}

/* Reach counts the notices a reply held, not those a page cut left out. */
START_TEST(reach_counts_only_returned_notices)
{
    uint64_t ids[3];
    for (int i = 0; i < 3; i++) {
        ids[i] = create(0, "{\"app_id\":\"8102\",\"title\":\"r\",\"content\":\"x\"}");
        act(0, ids[i], "publish", 200);
    }
    struct client u;
    client_init(&u, 8102, 1, false, NULL);
    int st;
    json_t *j = NULL;
    for (int tries = 0; tries < 40; tries++) {
        /* wait until this logicd's cache has all three (history of 3 in range) */
        json_decref(j);
        j = sdk_call(&u, 0, "GET", "/v1/history?limit=3", NULL, &st, NULL);
        if (json_array_size(json_object_get(j, "items")) == 3)
            break;
        usleep(50 * 1000);
    }
    json_decref(j);
    /* That wait counted user 1 for all three; user 2 asks for one. */
    struct client v;
    client_init(&v, 8102, 2, false, NULL);
    j = sdk_call(&v, 0, "GET", "/v1/history?limit=1", NULL, &st, NULL);
    ck_assert_int_eq(st, 200);
    json_t *items = json_object_get(j, "items");
    ck_assert_int_eq(json_array_size(items), 1);
    ck_assert(json_is_true(json_object_get(j, "has_more")));
    uint64_t shown = mt_u64(json_array_get(items, 0), "notice_id");
    ck_assert_uint_eq(shown, ids[2]); /* newest first */
    json_decref(j);
    ck_assert_int_eq(reach_of(shown, 2, 3000), 2);
    usleep(300 * 1000); /* the other counts, if any, were sent with it */
    ck_assert_int_eq(reach_of(ids[0], 0, 0), 1);
    ck_assert_int_eq(reach_of(ids[1], 0, 0), 1);
    /* A sync page of one counts one, too. */
    struct client s;
    client_init(&s, 8102, 3, false, NULL);
    char body[64];
    snprintf(body, sizeof(body), "{\"cursor\":\"\",\"limit\":1}");
    j = sdk_call(&s, 0, "POST", "/v1/sync", body, &st, NULL);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 1);
    uint64_t first = mt_u64(json_array_get(json_object_get(j, "items"), 0), "notice_id");
    ck_assert_uint_eq(first, ids[0]);
    json_decref(j);
    ck_assert_int_eq(reach_of(ids[0], 2, 3000), 2);
    usleep(300 * 1000);
    ck_assert_int_eq(reach_of(ids[1], 0, 0), 1);
    ck_assert_int_eq(reach_of(ids[2], 0, 0), 2);
}
END_TEST

/* One sync by c: how many notice items for each of ids[0..n) (counts[i]). */
static void
sync_notice_counts(struct client *c, int idx, const uint64_t *ids, int *counts, size_t n)
{
    json_t *reply;
    json_t *items = csync(c, idx, &reply);
    memset(counts, 0, n * sizeof(*counts));
    for (size_t i = 0; i < json_array_size(items); i++) {
        json_t *it = json_array_get(items, i);
        if (strcmp(json_string_value(json_object_get(it, "kind")), "notice") != 0)
            continue;
        for (size_t k = 0; k < n; k++)
            counts[k] += mt_u64(it, "notice_id") == ids[k];
    }
    json_decref(reply);
}

/*
 * Targeting follows the client: one that upgrades its core level (or
 * changes platform) after its cursor passed a targeted notice receives it
 * at its next sync, once, without what it already had; version-1 cursors
 * still work.
 */
START_TEST(client_upgrade_receives_targeted_notice_once)
{
    uint64_t ids[3];
    ids[0] = create(0, "{\"app_id\":\"8103\",\"title\":\"all\",\"content\":\"x\"}");
    ids[1] = create(0, "{\"app_id\":\"8103\",\"title\":\"new core\",\"content\":\"x\","
                       "\"targeting\":{\"min_core_level\":\"300000\"}}");
    ids[2] = create(0, "{\"app_id\":\"8103\",\"title\":\"android\",\"content\":\"x\","
                       "\"targeting\":{\"platforms\":[\"android\"]}}");
    for (int i = 2; i >= 0; i--) /* ids[0] last: once it is seen, the cache has all three */
        act(0, ids[i], "publish", 200);
    int counts[3];
    struct client c;
    client_init(&c, 8103, 1, false, "x platform/ios app_version/7.0 core_level/100");
    ck_assert_int_eq(wait_for(&c, 0, "notice", ids[0], 2000), 1); /* published last */
    sync_notice_counts(&c, 0, ids, counts, 3);
    ck_assert_int_eq(counts[0] + counts[1] + counts[2], 0);
    ck_assert_uint_eq(strlen(c.cursor), 51); /* version 2: with the attributes */

    /* Upgraded: the targeted notice, once; the one it had is not repeated. */
    c.ua = "x platform/ios app_version/8.0 core_level/300001";
    sync_notice_counts(&c, 0, ids, counts, 3);
    ck_assert_int_eq(counts[0], 0);
    ck_assert_int_eq(counts[1], 1);
    ck_assert_int_eq(counts[2], 0);
    for (int idx = 0; idx < 2; idx++) {
        sync_notice_counts(&c, idx, ids, counts, 3);
        ck_assert_int_eq(counts[0] + counts[1] + counts[2], 0);
    }
    /* Another platform, on the other logicd (whose cache may still be behind
     * the cursor: it then keeps the cursor's attributes and gives nothing):
     * the android notice once; nothing else comes again. */
    c.ua = "x platform/android app_version/8.0 core_level/300001";
    int total[3] = {0, 0, 0};
    for (int waited = 0; waited <= 2000 && total[2] == 0; waited += 50) {
        sync_notice_counts(&c, 1, ids, counts, 3);
        for (int k = 0; k < 3; k++)
            total[k] += counts[k];
        usleep(50 * 1000);
    }
    ck_assert_int_eq(total[0] + total[1], 0);
    ck_assert_int_eq(total[2], 1);
    for (int idx = 0; idx < 2; idx++) {
        sync_notice_counts(&c, idx, ids, counts, 3);
        ck_assert_int_eq(counts[0] + counts[1] + counts[2], 0);
    }

    /* A version-1 cursor (issued before the attributes) is still valid: its
     * sync resets nothing and takes the client's attributes from then on. */
    struct cursor cur;
    ck_assert_int_eq(cursor_decode(c.cursor, 0, &cur), CURSOR_OK);
    cur.has_attrs = false;
    char enc[CURSOR_STR_LEN];
    cursor_encode(&cur, enc);
    ck_assert_uint_eq(strlen(enc), 34);
    snprintf(c.cursor, sizeof(c.cursor), "%s", enc);
    json_t *reply;
    json_t *items = csync(&c, 0, &reply);
    ck_assert_int_eq(json_array_size(items), 0);
    ck_assert(json_is_false(json_object_get(reply, "reset")));
    json_decref(reply);
    ck_assert_uint_eq(strlen(c.cursor), 51);

    /* A client that starts at the new level gets each notice it targets once. */
    struct client fresh;
    client_init(&fresh, 8103, 2, false, "x platform/ios app_version/8.0 core_level/300001");
    sync_notice_counts(&fresh, 0, ids, counts, 3);
    ck_assert_int_eq(counts[0], 1);
    ck_assert_int_eq(counts[1], 1);
    ck_assert_int_eq(counts[2], 0);
}
END_TEST

/*
 * History drops the user's hidden notices before it cuts the page, so
 * paging by msg_id reaches every visible notice (docs/api.md 6.6).
 */
START_TEST(history_pages_past_hidden_notices)
{
    struct client u;
    client_init(&u, 8104, 1, false, NULL);
    uint64_t priv = mt_send1(&h, 0, 8104, 7, 1, "older than the notices");
    ck_assert_uint_gt(priv, 0);
    uint64_t n[4];
    for (int i = 0; i < 4; i++) {
        n[i] = create(0, "{\"app_id\":\"8104\",\"title\":\"h\",\"content\":\"x\"}");
        act(0, n[i], "publish", 200);
    }
    ck_assert_int_eq(wait_for(&u, 0, "notice", n[3], 2000), 1);
    ck_assert_int_eq(hide_notice(&u, n[3]), 204);
    ck_assert_int_eq(hide_notice(&u, n[2]), 204);
    /* Pages of 2, newest first: n[1], n[0], then the private message. */
    uint64_t seen[8];
    int nseen = 0;
    char path[128];
    uint64_t to = INT64_MAX;
    for (int page = 0; page < 5; page++) {
        snprintf(path, sizeof(path), "/v1/history?order=desc&limit=2&to=%" PRIu64, to);
        int st;
        json_t *j = sdk_call(&u, 0, "GET", path, NULL, &st, NULL);
        ck_assert_int_eq(st, 200);
        json_t *items = json_object_get(j, "items");
        for (size_t i = 0; i < json_array_size(items); i++) {
            json_t *it = json_array_get(items, i);
            ck_assert_int_lt(nseen, 8);
            seen[nseen++] =
                json_object_get(it, "notice_id") ? mt_u64(it, "notice_id") : mt_u64(it, "msg_id");
            to = mt_u64(it, "msg_id") - 1;
        }
        bool more = json_is_true(json_object_get(j, "has_more"));
        json_decref(j);
        if (!more)
            break;
    }
    ck_assert_int_eq(nseen, 3);
    ck_assert_uint_eq(seen[0], n[1]);
    ck_assert_uint_eq(seen[1], n[0]);
    ck_assert_uint_eq(seen[2], priv);
}
END_TEST

/* A reply's lists are always present: [] when empty, in every response. */
START_TEST(empty_lists_are_arrays)
{
    struct client u;
    client_init(&u, 8105, 1, false, NULL);
    int st;
    char *raw;
    json_decref(sdk_call(&u, 0, "POST", "/v1/sync", "{\"cursor\":\"\"}", &st, &raw));
    ck_assert_int_eq(st, 200);
    ck_assert_msg(strncmp(raw, "{\"items\":[],", 12) == 0, "empty sync: %s", raw);
    free(raw);
    json_decref(sdk_call(&u, 0, "GET", "/v1/history", NULL, &st, &raw));
    ck_assert_int_eq(st, 200);
    ck_assert_msg(strcmp(raw, "{\"items\":[],\"has_more\":false}") == 0, "history: %s", raw);
    free(raw);
    /* Operator lists: no whitelist, no notices, a notice without platforms. */
    struct {
        const char *method, *path, *body, *want;
    } cases[] = {
        {"GET", "/v1/whitelist?app_id=8105", NULL, "\"uids\":[]"},
        {"GET", "/v1/notices?app_id=8105", NULL, "{\"notices\":[]}"},
        {"POST", "/v1/notices", "{\"app_id\":\"8105\",\"title\":\"t\",\"content\":\"x\"}",
         "\"platforms\":[]"},
        {"GET", "/v1/audit?notice_id=987654321", NULL, "{\"entries\":[]}"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        char headers[512];
        snprintf(headers, sizeof(headers),
                 "Content-Type: application/json\r\nAuthorization: Bearer %s\r\n", h.ops_token);
        struct httpc_resp r;
        st = httpc_request(cases[i].method, h.logicd[0].port[1], cases[i].path, headers,
                           cases[i].body, cases[i].body ? strlen(cases[i].body) : 0, &r);
        ck_assert_msg(st / 100 == 2, "%s: %d", cases[i].path, st);
        ck_assert_msg(r.body != NULL && strstr(r.body, cases[i].want) != NULL, "%s: %s",
                      cases[i].path, r.body ? r.body : "");
        httpc_resp_free(&r);
    }
}
END_TEST

/* ---- write side and poller: snapshots, whitelist_file, If-Match, stats ---- */

/* Runs a command on the harness database; the test fails unless it succeeds. */
static void
h3_sql(const char *sql)
{
    PGconn *c = PQconnectdb(h.pg_conninfo);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    char err[256];
    snprintf(err, sizeof(err), "%s", PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
    ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql, err);
}

/*
 * A snapshot must never pair new seqs with an older whitelist. logicd 0
 * sleeps (SIGSTOP) through a whitelist change that renumbers a prepublished
 * notice, then polls while whitelist_version cannot be read: it must
 * publish nothing rather than the new seqs with its old whitelist, or the
 * user just added syncs past the notice and never receives it.
 */
START_TEST(poller_never_pairs_new_seqs_with_an_old_whitelist)
{
    uint64_t id = create(0, "{\"app_id\":\"11\",\"title\":\"gray\",\"content\":\"x\"}");
    act(0, id, "prepublish", 200);
    struct client x;
    client_init(&x, 11, 1101, false, NULL);
    usleep(500 * 1000);
    ck_assert_int_eq(count_kind(&x, 0, "notice", id, NULL), 0); /* the cursor passes it */

    ck_assert_int_eq(kill(h.logicd[0].pid, SIGSTOP), 0);
    int st;
    json_decref(ops(1, "POST", "/v1/whitelist", "{\"app_id\":\"11\",\"uids\":[\"1101\"]}", &st));
    h3_sql("ALTER TABLE whitelist_version RENAME TO whitelist_version_h3");
    ck_assert_int_eq(kill(h.logicd[0].pid, SIGCONT), 0);
    usleep(800 * 1000); /* logicd 0 polls (every 200 ms) with the table missing */
    int early = count_kind(&x, 0, "notice", id, NULL);
    h3_sql("ALTER TABLE whitelist_version_h3 RENAME TO whitelist_version");
    ck_assert_int_eq(st, 200);
    int later = wait_for(&x, 0, "notice", id, 3000);
    ck_assert_msg(early + later >= 1, "the whitelisted user never received the notice");
}
END_TEST

/* A logicd of our own (the harness slots are shared), stopped by the caller. */
static void
h3_spawn_logicd(struct harness_daemon *d, const char *name, const char *extra)
{
    char prog[1024], migrations[1024], text[4096];
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    harness_source_path("migrations", migrations, sizeof(migrations));
    memset(d, 0, sizeof(*d));
    d->port[0] = harness_free_port();
    d->port[1] = harness_free_port();
    snprintf(d->config, sizeof(d->config), "%s/%s.conf", h.dir, name);
    snprintf(d->log, sizeof(d->log), "%s/%s.log", h.dir, name);
    snprintf(text, sizeof(text),
             "sdk_listen = 127.0.0.1:%d\ninternal_listen = 127.0.0.1:%d\n"
             "pg_conninfo = \"%s\"\nredis_port = %d\nserver_key = %s\n"
             "ops_tokens = tester:%s\ntoken_key = %s\nmigrations_dir = %s\n"
             "poll_interval_ms = 200\nlog_level = debug\n%s\n",
             d->port[0], d->port[1], h.pg_conninfo, h.redis_port, h.server_key, h.ops_token,
             h.token_key, migrations, extra);
    FILE *f = fopen(d->config, "w");
    ck_assert_ptr_nonnull(f);
    fputs(text, f);
    fclose(f);
    d->pid = harness_spawn(prog, d->config, d->log);
    ck_assert_int_gt(d->pid, 0);
    for (int i = 0; i < 200; i++) {
        struct httpc_resp r;
        int code = httpc_request("GET", d->port[1], "/healthz", NULL, NULL, 0, &r);
        httpc_resp_free(&r);
        if (code == 200)
            return;
        usleep(50 * 1000);
    }
    harness_daemon_stop(d);
    ck_abort_msg("logicd %s did not become healthy (log %s)", name, d->log);
}

/*
 * whitelist_file adds its uids through the head-locked path of POST
 * /v1/whitelist, so a uid whose cursor passed a prepublished notice still
 * receives it after a logicd loads the file at start.
 */
START_TEST(whitelist_file_renumbers_like_the_api)
{
    uint64_t id = create(0, "{\"app_id\":\"12\",\"title\":\"gray\",\"content\":\"x\"}");
    act(0, id, "prepublish", 200);
    struct client x;
    client_init(&x, 12, 1201, false, NULL);
    usleep(500 * 1000);
    ck_assert_int_eq(count_kind(&x, 0, "notice", id, NULL), 0); /* the cursor passes it */
    char path[512], extra[600];
    snprintf(path, sizeof(path), "%s/h3_whitelist.txt", h.dir);
    FILE *f = fopen(path, "w");
    ck_assert_ptr_nonnull(f);
    fputs("# app uid\n12 1201\n", f);
    fclose(f);
    snprintf(extra, sizeof(extra), "whitelist_file = %s", path);
    struct harness_daemon d;
    h3_spawn_logicd(&d, "h3_wl", extra);
    int got = wait_for(&x, 0, "notice", id, 3000);
    harness_daemon_stop(&d);
    ck_assert_msg(got >= 1, "a uid loaded from whitelist_file missed the prepublished notice");
    /* The load is audited like an API change. */
    ck_assert_int_ge(mt_sql_i64(&h, "SELECT count(*) FROM audit_log WHERE actor = 'whitelist_file'"
                                    " AND action = 'whitelist_add' AND app_id = 12"),
                     1);
}
END_TEST

/*
 * The internal body cap is derived from fanout_max_uids, so a list of
 * 20-digit uids one too long gets "more than N uids", not the body cap.
 */
START_TEST(fanout_uid_cap_comes_before_the_body_cap)
{
    struct harness_daemon d;
    h3_spawn_logicd(&d, "h3_fanout", "fanout_max_uids = 1000\ninternal_max_body = 1024");
    size_t n = 1001;
    char *body = malloc(n * 22 + 256);
    ck_assert_ptr_nonnull(body);
    size_t o = (size_t)sprintf(body, "{\"app_id\":\"13\",\"content\":\"x\"}\n");
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(body + o, "%" PRIu64 "\r\n", (uint64_t)18446744073709000000ULL + i);
    char headers[256];
    snprintf(headers, sizeof(headers), "Content-Type: text/plain\r\nAuthorization: Bearer %s\r\n",
             h.server_key);
    struct httpc_resp r;
    int st = httpc_request("POST", d.port[1], "/v1/fanout", headers, body, o, &r);
    char msg[256];
    snprintf(msg, sizeof(msg), "%s", r.body ? r.body : "");
    httpc_resp_free(&r);
    free(body);
    harness_daemon_stop(&d);
    ck_assert_int_eq(st, 413);
    ck_assert_msg(strstr(msg, "more than 1000 uids") != NULL, "fanout: %s", msg);
}
END_TEST

START_TEST(stats_of_an_unknown_notice_is_404)
{
    int st;
    json_t *j = ops(0, "GET", "/v1/notices/987654321/stats", NULL, &st);
    ck_assert_int_eq(st, 404);
    ck_assert_str_eq(json_string_value(json_object_get(json_object_get(j, "error"), "code")),
                     "not_found");
    json_decref(j);
    uint64_t id = create(0, "{\"app_id\":\"13\",\"title\":\"s\",\"content\":\"x\"}");
    char path[128];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/stats", id);
    j = ops(1, "GET", path, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "reach")), 0);
    json_decref(j);
}
END_TEST

/* An ops request on logicd 0 with an optional If-Match; returns the status (resp to free). */
static int
h3_ops_if(const char *method, const char *path, const char *if_match, const char *body,
          struct httpc_resp *r)
{
    char headers[512];
    snprintf(headers, sizeof(headers), "Content-Type: application/json\r\nAuthorization: Bearer %s\r\n%s%s%s",
             h.ops_token, if_match ? "If-Match: " : "", if_match ? if_match : "",
             if_match ? "\r\n" : "");
    return httpc_request(method, h.logicd[0].port[1], path, headers, body, body ? strlen(body) : 0,
                         r);
}

/* A 412 reply names the current version in its error object. */
static void
h3_assert_412(struct httpc_resp *r, int64_t current)
{
    ck_assert_int_eq(r->status, 412);
    ck_assert_ptr_nonnull(strstr(r->head, "412 Precondition Failed"));
    json_t *j = json_loads(r->body, 0, NULL);
    json_t *e = json_object_get(j, "error");
    ck_assert_str_eq(json_string_value(json_object_get(e, "code")), "failed_precondition");
    ck_assert_int_eq(json_integer_value(json_object_get(e, "current_version")), current);
    json_decref(j);
}

START_TEST(etag_and_if_match_answer_412)
{
    uint64_t id = create(0, "{\"app_id\":\"13\",\"title\":\"e\",\"content\":\"x\"}");
    char path[128], act_path[160], etag[32];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64, id);
    struct httpc_resp r;
    ck_assert_int_eq(h3_ops_if("GET", path, NULL, NULL, &r), 200);
    ck_assert_ptr_nonnull(httpc_header(&r, "ETag", etag, sizeof(etag)));
    ck_assert_str_eq(etag, "\"1\"");
    httpc_resp_free(&r);
    /* The ETag as sent back by a client; the reply carries the next one. */
    ck_assert_int_eq(h3_ops_if("PATCH", path, etag, "{\"title\":\"e2\"}", &r), 200);
    ck_assert_str_eq(httpc_header(&r, "ETag", etag, sizeof(etag)), "\"2\"");
    httpc_resp_free(&r);
    h3_ops_if("PATCH", path, "\"1\"", "{\"title\":\"e3\"}", &r);
    h3_assert_412(&r, 2);
    httpc_resp_free(&r);
    ck_assert_int_eq(h3_ops_if("PATCH", path, "2", "{\"title\":\"e3\"}", &r), 200); /* bare */
    httpc_resp_free(&r);
    ck_assert_int_eq(h3_ops_if("PATCH", path, "W/\"3\"", "{\"title\":\"e4\"}", &r), 400);
    httpc_resp_free(&r);
    ck_assert_int_eq(h3_ops_if("PATCH", path, "\"3\", \"4\"", "{\"title\":\"e4\"}", &r), 400);
    httpc_resp_free(&r);
    /* Lifecycle actions and DELETE take If-Match the same way. */
    snprintf(act_path, sizeof(act_path), "%s/publish", path);
    h3_ops_if("POST", act_path, "\"2\"", NULL, &r);
    h3_assert_412(&r, 3);
    httpc_resp_free(&r);
    ck_assert_int_eq(h3_ops_if("POST", act_path, "\"3\"", NULL, &r), 200);
    ck_assert_str_eq(httpc_header(&r, "ETag", etag, sizeof(etag)), "\"3\"");
    httpc_resp_free(&r);
    snprintf(act_path, sizeof(act_path), "%s/stop", path);
    ck_assert_int_eq(h3_ops_if("POST", act_path, "*", NULL, &r), 200);
    httpc_resp_free(&r);
    h3_ops_if("DELETE", path, "\"9\"", NULL, &r);
    h3_assert_412(&r, 3);
    httpc_resp_free(&r);
    ck_assert_int_eq(h3_ops_if("DELETE", path, "\"3\"", NULL, &r), 204);
    httpc_resp_free(&r);
}
END_TEST

struct h3_patch {
    char path[128];
    const char *if_match;
    int status;
    char body[512];
};

static void *
h3_patch_thread(void *arg)
{
    struct h3_patch *p = arg;
    struct httpc_resp r;
    p->status = h3_ops_if("PATCH", p->path, p->if_match, "{\"title\":\"raced\"}", &r);
    snprintf(p->body, sizeof(p->body), "%s", r.body ? r.body : "");
    httpc_resp_free(&r);
    return NULL;
}

/* A PATCH whose write waits for a concurrent edit (row lock held by the test) that then commits. */
static void
h3_patch_racing_an_edit(uint64_t id, const char *if_match, struct h3_patch *p)
{
    char sql[160];
    PGconn *c = PQconnectdb(h.pg_conninfo);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    snprintf(sql, sizeof(sql), "UPDATE notice SET version = version + 1 WHERE notice_id = %" PRIu64,
             id);
    PQclear(PQexec(c, "BEGIN"));
    PGresult *res = PQexec(c, sql);
    ck_assert_int_eq(PQresultStatus(res), PGRES_COMMAND_OK);
    PQclear(res);
    snprintf(p->path, sizeof(p->path), "/v1/notices/%" PRIu64, id);
    p->if_match = if_match;
    pthread_t t;
    ck_assert_int_eq(pthread_create(&t, NULL, h3_patch_thread, p), 0);
    usleep(600 * 1000); /* the PATCH read the old version and waits for the row */
    res = PQexec(c, "COMMIT");
    PQclear(res);
    PQfinish(c);
    pthread_join(t, NULL);
}

/*
 * The write of a PATCH can lose to an edit that was still committing as its
 * statement started; the answer must name the version it was based on and
 * the version the notice has now (not the same number twice).
 */
START_TEST(patch_conflict_names_the_current_version)
{
    uint64_t id = create(0, "{\"app_id\":\"14\",\"title\":\"r\",\"content\":\"x\"}");
    struct h3_patch p;
    h3_patch_racing_an_edit(id, NULL, &p);
    ck_assert_int_eq(p.status, 409);
    ck_assert_msg(strstr(p.body, "based on version 1, now version 2") != NULL, "%s", p.body);
    h3_patch_racing_an_edit(id, "\"2\"", &p);
    ck_assert_int_eq(p.status, 412);
    json_t *j = json_loads(p.body, 0, NULL);
    ck_assert_int_eq(
        json_integer_value(json_object_get(json_object_get(j, "error"), "current_version")), 3);
    json_decref(j);
}
END_TEST

static Suite *
public_suite(void)
{
    Suite *s = suite_create("public");
    TCase *tc = tcase_create("notices");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, lifecycle);
    tcase_add_test(tc, whitelist_across_logicd);
    tcase_add_test(tc, targeting_and_user_agent);
    tcase_add_test(tc, scheduled_activation_after_cursor_passed);
    tcase_add_test(tc, hide_read_and_history);
    tcase_add_test(tc, bad_input_on_ops_endpoints);
    tcase_add_test(tc, review_regressions);
    tcase_add_test(tc, invariant_sends_and_publishes);
    tcase_add_test(tc, read_and_hide_see_only_visible_notices);
    tcase_add_test(tc, reach_counts_only_returned_notices);
    tcase_add_test(tc, client_upgrade_receives_targeted_notice_once);
    tcase_add_test(tc, history_pages_past_hidden_notices);
    tcase_add_test(tc, empty_lists_are_arrays);
    tcase_add_test(tc, poller_never_pairs_new_seqs_with_an_old_whitelist);
    tcase_add_test(tc, whitelist_file_renumbers_like_the_api);
    tcase_add_test(tc, fanout_uid_cap_comes_before_the_body_cap);
    tcase_add_test(tc, stats_of_an_unknown_notice_is_404);
    tcase_add_test(tc, etag_and_if_match_answer_412);
    tcase_add_test(tc, patch_conflict_names_the_current_version);
    tcase_add_test(tc, cache_serves_while_postgres_is_down); /* last: it stops PostgreSQL */
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(public_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
