/*
 * Integration: the public mailbox against real PostgreSQL, Redis and two
 * logicd processes sharing them (issue: notice lifecycle, poller cache,
 * merged sync, gray release, targeting).
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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
    /* A stale If-Match is a 409 naming the current version. */
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
                     409);
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
        j = httpc_json("GET", h.logicd[1].port[0], "/healthz", NULL, NULL, &st);
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
    ck_assert_double_ge(mt_metric(h.logicd[1].port[0], "mbox_notice_state_degraded_total", NULL), 1);
    /* The poller's age grows while the database is away. */
    sleep(2);
    j = httpc_json("GET", h.logicd[1].port[0], "/healthz", NULL, NULL, &st);
    ck_assert_int_ge(json_integer_value(json_object_get(json_object_get(j, "public_cache"), "age_ms")), 1500);
    json_decref(j);

    ck_assert(harness_pg_resume(&h));
    /* Back: both processes reconnect (on their own backoff) and answer again. */
    for (int k = 0; k < 2; k++) {
        for (int i = 0; i < 150; i++) {
            j = httpc_json("GET", h.logicd[k].port[0], "/healthz", NULL, NULL, &st);
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
