/*
 * Integration: private mailboxes against real PostgreSQL, Redis and logicd
 * (issue: tokens, send API, sync and history pulls).
 */
#include <check.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "cursor.h"
#include "harness.h"
#include "httpc.h"
#include "mbox.pb-c.h"
#include "mboxtest.h"

static struct harness h;
#define APP 1

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

static const char *
err_code(json_t *j)
{
    return json_string_value(json_object_get(json_object_get(j, "error"), "code"));
}

static const char *
err_msg(json_t *j)
{
    const char *m = json_string_value(json_object_get(json_object_get(j, "error"), "message"));
    return m ? m : "";
}

START_TEST(send_then_sync_returns_every_field)
{
    char tok[256], cur[64] = "";
    mt_token(&h, 0, APP, 1001, 3600, false, tok, sizeof(tok));
    int st;
    json_t *j = mt_send(&h, 0,
                        "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"1001\"],"
                        "\"content\":\"hello \\u4f60\\u597d\",\"msgkey\":\"order-42\","
                        "\"category\":1,\"type\":2,\"priority\":3,\"business_type\":4}",
                        &st);
    ck_assert_int_eq(st, 200);
    json_t *res = json_array_get(json_object_get(j, "results"), 0);
    uint64_t id = mt_u64(res, "msg_id");
    ck_assert_uint_eq(mt_u64(res, "uid"), 1001);
    ck_assert(json_is_false(json_object_get(res, "duplicate")));
    ck_assert_uint_gt(id, 1600000000000000ULL);
    json_decref(j);

    j = mt_sync(&h, 0, tok, cur, 100, &st);
    ck_assert_int_eq(st, 200);
    json_t *items = json_object_get(j, "items");
    ck_assert_int_eq(json_array_size(items), 1);
    json_t *it = json_array_get(items, 0);
    ck_assert_str_eq(json_string_value(json_object_get(it, "kind")), "message");
    ck_assert_uint_eq(mt_u64(it, "msg_id"), id);
    ck_assert_uint_eq(mt_u64(it, "from_uid"), 7);
    ck_assert_uint_eq(mt_u64(it, "to_uid"), 1001);
    ck_assert_uint_eq(mt_u64(it, "contacter"), 7);
    ck_assert_str_eq(json_string_value(json_object_get(it, "content")),
                     "hello \xe4\xbd\xa0\xe5\xa5\xbd");
    ck_assert_str_eq(json_string_value(json_object_get(it, "msgkey")), "order-42");
    ck_assert_int_eq(json_integer_value(json_object_get(it, "category")), 1);
    ck_assert_int_eq(json_integer_value(json_object_get(it, "type")), 2);
    ck_assert_int_eq(json_integer_value(json_object_get(it, "priority")), 3);
    ck_assert_int_eq(json_integer_value(json_object_get(it, "business_type")), 4);
    ck_assert(json_is_false(json_object_get(it, "is_read")));
    ck_assert_uint_gt(mt_u64(it, "expire_at"), mt_u64(it, "create_time"));
    ck_assert(json_is_false(json_object_get(j, "has_more")));
    ck_assert(json_is_false(json_object_get(j, "reset")));
    json_decref(j);

    /* Nothing new: same cursor, no items. */
    char before[64];
    strcpy(before, cur);
    j = mt_sync(&h, 1, tok, cur, 100, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 0);
    ck_assert_str_eq(cur, before);
    json_decref(j);
}
END_TEST

START_TEST(msgkey_retry_is_idempotent)
{
    const char *body = "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"1002\",\"1003\"],"
                       "\"content\":\"once\",\"msgkey\":\"k-1\"}";
    int st;
    json_t *a = mt_send(&h, 0, body, &st);
    ck_assert_int_eq(st, 200);
    json_t *b = mt_send(&h, 1, body, &st);
    ck_assert_int_eq(st, 200);
    for (int i = 0; i < 2; i++) {
        json_t *ra = json_array_get(json_object_get(a, "results"), (size_t)i);
        json_t *rb = json_array_get(json_object_get(b, "results"), (size_t)i);
        ck_assert_uint_eq(mt_u64(ra, "msg_id"), mt_u64(rb, "msg_id"));
        ck_assert(json_is_false(json_object_get(ra, "duplicate")));
        ck_assert(json_is_true(json_object_get(rb, "duplicate")));
    }
    json_decref(a);
    json_decref(b);
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM message WHERE msgkey = 'k-1'"), 2);
}
END_TEST

START_TEST(sender_copy_and_recall)
{
    char tok7[256], tok9[256], c7[64] = "", c9[64] = "";
    mt_token(&h, 0, APP, 2007, 3600, false, tok7, sizeof(tok7));
    mt_token(&h, 0, APP, 2009, 3600, false, tok9, sizeof(tok9));
    int st;
    json_t *j = mt_send(&h, 0,
                        "{\"app_id\":\"1\",\"from_uid\":\"2007\",\"to_uids\":[\"2009\"],"
                        "\"content\":\"hi\",\"store_sender\":true,\"msgkey\":\"r-1\"}",
                        &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "results")), 2);
    json_decref(j);

    j = mt_sync(&h, 0, tok7, c7, 100, &st);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 1);
    json_t *it = json_array_get(json_object_get(j, "items"), 0);
    ck_assert_uint_eq(mt_u64(it, "contacter"), 2009);
    json_decref(j);
    j = mt_sync(&h, 0, tok9, c9, 100, &st);
    it = json_array_get(json_object_get(j, "items"), 0);
    uint64_t target = mt_u64(it, "msg_id");
    json_decref(j);

    /* Recall by msgkey from the recipient's mailbox. */
    j = httpc_json("POST", h.logicd[0].port[1], "/v1/messages/recall", h.server_key,
                   "{\"app_id\":\"1\",\"uid\":\"2009\",\"msgkey\":\"r-1\"}", &st);
    ck_assert_int_eq(st, 200);
    ck_assert_uint_eq(mt_u64(j, "recalled_msg_id"), target);
    uint64_t recall_id = mt_u64(j, "msg_id");
    ck_assert_uint_gt(recall_id, target);
    json_decref(j);
    /* A retry answers with the same recall. */
    j = httpc_json("POST", h.logicd[1].port[1], "/v1/messages/recall", h.server_key,
                   "{\"app_id\":\"1\",\"uid\":\"2009\",\"msgkey\":\"r-1\"}", &st);
    ck_assert_int_eq(st, 200);
    ck_assert_uint_eq(mt_u64(j, "msg_id"), recall_id);
    json_decref(j);

    j = mt_sync(&h, 1, tok9, c9, 100, &st);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 1);
    it = json_array_get(json_object_get(j, "items"), 0);
    ck_assert_str_eq(json_string_value(json_object_get(it, "kind")), "recall");
    ck_assert_uint_eq(mt_u64(it, "recalled_msg_id"), target);
    json_decref(j);

    /* History no longer shows the recalled message. */
    j = httpc_json("GET", h.logicd[0].port[0], "/v1/history?order=asc", tok9, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 0);
    json_decref(j);

    /* Recall of an unknown message: 404. By msg_id from the sender's copy works. */
    j = httpc_json("POST", h.logicd[0].port[1], "/v1/messages/recall", h.server_key,
                   "{\"app_id\":\"1\",\"uid\":\"2009\",\"msg_id\":\"12345\"}", &st);
    ck_assert_int_eq(st, 404);
    json_decref(j);
}
END_TEST

START_TEST(history_orders_limits_and_read_marks)
{
    char tok[256];
    mt_token(&h, 0, APP, 3001, 3600, false, tok, sizeof(tok));
    uint64_t ids[5];
    for (int i = 0; i < 5; i++) {
        char c[16];
        snprintf(c, sizeof(c), "m%d", i);
        ids[i] = mt_send1(&h, i % 2, APP, 5, 3001, c);
        ck_assert_uint_gt(ids[i], 0);
        if (i > 0)
            ck_assert_uint_gt(ids[i], ids[i - 1]);
    }
    int st;
    json_t *j =
        httpc_json("GET", h.logicd[0].port[0], "/v1/history?order=asc&limit=3", tok, NULL, &st);
    ck_assert_int_eq(st, 200);
    json_t *items = json_object_get(j, "items");
    ck_assert_int_eq(json_array_size(items), 3);
    ck_assert_uint_eq(mt_u64(json_array_get(items, 0), "msg_id"), ids[0]);
    ck_assert_uint_eq(mt_u64(json_array_get(items, 2), "msg_id"), ids[2]);
    ck_assert(json_is_true(json_object_get(j, "has_more")));
    json_decref(j);

    char path[256];
    snprintf(path, sizeof(path), "/v1/history?order=desc&from=%" PRIu64 "&to=%" PRIu64, ids[1],
             ids[3]);
    j = httpc_json("GET", h.logicd[1].port[0], path, tok, NULL, &st);
    items = json_object_get(j, "items");
    ck_assert_int_eq(json_array_size(items), 3);
    ck_assert_uint_eq(mt_u64(json_array_get(items, 0), "msg_id"), ids[3]);
    ck_assert_uint_eq(mt_u64(json_array_get(items, 2), "msg_id"), ids[1]);
    json_decref(j);

    char body[256];
    snprintf(body, sizeof(body), "{\"msg_ids\":[\"%" PRIu64 "\",\"%" PRIu64 "\"]}", ids[0], ids[4]);
    j = httpc_json("POST", h.logicd[0].port[0], "/v1/read", tok, body, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "updated")), 2);
    json_decref(j);
    j = httpc_json("GET", h.logicd[0].port[0], "/v1/history?order=asc", tok, NULL, &st);
    items = json_object_get(j, "items");
    ck_assert(json_is_true(json_object_get(json_array_get(items, 0), "is_read")));
    ck_assert(json_is_false(json_object_get(json_array_get(items, 1), "is_read")));
    ck_assert(json_is_true(json_object_get(json_array_get(items, 4), "is_read")));
    json_decref(j);

    j = httpc_json("GET", h.logicd[0].port[0], "/v1/history?order=sideways", tok, NULL, &st);
    ck_assert_int_eq(st, 400);
    json_decref(j);
}
END_TEST

START_TEST(expired_rows_are_not_returned_and_are_deleted)
{
    char tok[256], cur[64] = "";
    mt_token(&h, 0, APP, 4001, 3600, false, tok, sizeof(tok));
    int st;
    json_t *j = mt_send(&h, 0,
                        "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"4001\"],"
                        "\"content\":\"short-lived\",\"expire_s\":1}",
                        &st);
    ck_assert_int_eq(st, 200);
    json_decref(j);
    ck_assert_uint_gt(mt_send1(&h, 0, APP, 7, 4001, "kept"), 0);
    usleep(1300 * 1000);
    j = mt_sync(&h, 0, tok, cur, 100, &st);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(
                         json_array_get(json_object_get(j, "items"), 0), "content")),
                     "kept");
    json_decref(j);

    /* A logicd with a 1 s retention tick deletes the expired row. */
    int idx = harness_add_logicd(&h, "retention_interval_s = 1");
    ck_assert_int_ge(idx, 0);
    int64_t left = 1;
    for (int i = 0; i < 50 && left > 0; i++) {
        usleep(200 * 1000);
        left = mt_sql_i64(&h, "SELECT count(*) FROM message WHERE uid = 4001 AND expire_at <= "
                              "(extract(epoch FROM now()) * 1000000)::int8");
    }
    ck_assert_int_eq(left, 0);
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM message WHERE uid = 4001"), 1);
    harness_daemon_stop(&h.logicd[idx]);
}
END_TEST

START_TEST(auth_is_enforced)
{
    char tok[256];
    mt_token(&h, 0, APP, 5001, 3600, false, tok, sizeof(tok));
    int st;
    json_t *j = httpc_json("POST", h.logicd[0].port[0], "/v1/sync", NULL, "{}", &st);
    ck_assert_int_eq(st, 401);
    ck_assert_str_eq(err_code(j), "unauthenticated");
    json_decref(j);

    /* Forged: flip one character of the signature. */
    char forged[256];
    strcpy(forged, tok);
    size_t n = strlen(forged);
    forged[n - 3] = forged[n - 3] == 'A' ? 'B' : 'A';
    j = httpc_json("POST", h.logicd[0].port[0], "/v1/sync", forged, "{}", &st);
    ck_assert_int_eq(st, 401);
    json_decref(j);

    /* Expired. */
    char old[256];
    mt_token(&h, 0, APP, 5001, 1, false, old, sizeof(old));
    /* Used once while valid (so a worker caches its verification), then expired. */
    for (int i = 0; i < 4; i++) {
        j = httpc_json("POST", h.logicd[0].port[0], "/v1/sync", old, "{}", &st);
        ck_assert_int_eq(st, 200);
        json_decref(j);
    }
    usleep(1100 * 1000);
    j = httpc_json("POST", h.logicd[0].port[0], "/v1/sync", old, "{}", &st);
    ck_assert_int_eq(st, 401);
    ck_assert_ptr_nonnull(strstr(err_msg(j), "expired"));
    json_decref(j);

    /* A user token on the server API, the server key on the SDK API. */
    j = httpc_json("POST", h.logicd[0].port[1], "/v1/messages", tok,
                   "{\"app_id\":\"1\",\"to_uids\":[\"1\"],\"content\":\"x\"}", &st);
    ck_assert_int_eq(st, 401);
    json_decref(j);
    j = httpc_json("POST", h.logicd[0].port[1], "/v1/tokens", tok,
                   "{\"app_id\":\"1\",\"uid\":\"5002\"}", &st);
    ck_assert_int_eq(st, 401);
    json_decref(j);
    j = httpc_json("POST", h.logicd[0].port[0], "/v1/sync", h.server_key, "{}", &st);
    ck_assert_int_eq(st, 401);
    json_decref(j);

    /* The token fixes the mailbox: another user's messages are not visible. */
    ck_assert_uint_gt(mt_send1(&h, 0, APP, 7, 5999, "not yours"), 0);
    char cur[64] = "";
    j = mt_sync(&h, 0, tok, cur, 100, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 0);
    json_decref(j);
}
END_TEST

START_TEST(bad_input_gets_4xx_and_writes_nothing)
{
    int64_t before = mt_sql_i64(&h, "SELECT count(*) FROM message");
    struct {
        const char *body;
        int status;
        const char *mentions;
    } cases[] = {
        {"{\"app_id\":\"1\",\"to_uids\":[\"1\"],", 400, "JSON"},
        {"{\"app_id\":\"1\",\"to_uids\":\"1\",\"content\":\"x\"}", 400, "to_uids"},
        {"{\"app_id\":\"1\",\"to_uids\":[\"x1\"],\"content\":\"x\"}", 400, "to_uids"},
        {"{\"app_id\":\"1\",\"to_uids\":[-5],\"content\":\"x\"}", 400, "to_uids"},
        {"{\"app_id\":\"1\",\"to_uids\":[],\"content\":\"x\"}", 400, "to_uids"},
        {"{\"app_id\":\"1\",\"to_uids\":[\"1\"]}", 400, "content"},
        {"{\"to_uids\":[\"1\"],\"content\":\"x\"}", 400, "app_id"},
        {"{\"app_id\":\"1\",\"to_uids\":[\"1\"],\"content\":\"x\",\"colour\":1}", 400, "colour"},
        {"{\"app_id\":\"1\",\"to_uids\":[\"1\"],\"content\":\"x\",\"type\":\"big\"}", 400, "type"},
        {"{\"app_id\":\"1\",\"app_id\":\"2\",\"to_uids\":[\"1\"],\"content\":\"x\"}", 400,
         "app_id"},
        {"[1,2]", 400, ""},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        int st;
        json_t *j = mt_send(&h, 0, cases[i].body, &st);
        ck_assert_msg(st == cases[i].status, "case %zu: status %d", i, st);
        ck_assert_msg(j != NULL && err_code(j) != NULL, "case %zu: no JSON error", i);
        ck_assert_msg(strstr(err_msg(j), cases[i].mentions) != NULL, "case %zu: message '%s'", i,
                      err_msg(j));
        json_decref(j);
    }
    /* Too many recipients (max_recipients 1000). */
    char *big = malloc(1001 * 8 + 128);
    size_t o = (size_t)sprintf(big, "{\"app_id\":\"1\",\"content\":\"x\",\"to_uids\":[");
    for (int i = 0; i < 1001; i++)
        o += (size_t)sprintf(big + o, "%s%d", i ? "," : "", i + 1);
    strcpy(big + o, "]}");
    int st;
    json_t *j = mt_send(&h, 0, big, &st);
    ck_assert_int_eq(st, 400);
    ck_assert_ptr_nonnull(strstr(err_msg(j), "1000"));
    json_decref(j);
    free(big);
    /* Content over 64 KiB. */
    size_t clen = 65 * 1024;
    char *body = malloc(clen + 128);
    o = (size_t)sprintf(body, "{\"app_id\":\"1\",\"to_uids\":[\"1\"],\"content\":\"");
    memset(body + o, 'a', clen);
    strcpy(body + o + clen, "\"}");
    j = mt_send(&h, 0, body, &st);
    ck_assert_int_eq(st, 413);
    ck_assert_str_eq(err_code(j), "too_large");
    json_decref(j);
    free(body);

    /* Invalid cursors. */
    char tok[256];
    mt_token(&h, 0, APP, 6001, 3600, false, tok, sizeof(tok));
    const char *bad_cursors[] = {"{\"cursor\":\"nope\"}",
                                 "{\"cursor\":\"AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\"}",
                                 "{\"cursor\":5}", "{\"limit\":\"many\"}"};
    for (size_t i = 0; i < 4; i++) {
        j = httpc_json("POST", h.logicd[0].port[0], "/v1/sync", tok, bad_cursors[i], &st);
        ck_assert_msg(st == 400, "cursor case %zu: %d", i, st);
        json_decref(j);
    }
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM message"), before);
}
END_TEST

START_TEST(stale_epoch_resets)
{
    char tok[256];
    mt_token(&h, 0, APP, 6101, 3600, false, tok, sizeof(tok));
    struct cursor c = {.epoch = 77, .p = 1, .g = 0};
    char enc[CURSOR_STR_LEN], cur[64];
    cursor_encode(&c, enc);
    snprintf(cur, sizeof(cur), "%s", enc);
    int st;
    json_t *j = mt_sync(&h, 0, tok, cur, 10, &st);
    ck_assert_int_eq(st, 200);
    ck_assert(json_is_true(json_object_get(j, "reset")));
    json_decref(j);
}
END_TEST

START_TEST(protobuf_sync)
{
    char tok[256];
    mt_token(&h, 0, APP, 6201, 3600, false, tok, sizeof(tok));
    uint64_t id = mt_send1(&h, 0, APP, 3, 6201, "pb");
    ck_assert_uint_gt(id, 0);
    Mbox__SyncRequest req = MBOX__SYNC_REQUEST__INIT;
    req.cursor = "";
    req.has_limit = 1;
    req.limit = 10;
    uint8_t buf[64];
    size_t n = mbox__sync_request__pack(&req, buf);
    char headers[512];
    snprintf(headers, sizeof(headers),
             "Content-Type: application/x-protobuf\r\nAuthorization: Bearer %s\r\n", tok);
    struct httpc_resp r;
    ck_assert_int_eq(httpc_request("POST", h.logicd[0].port[0], "/v1/sync", headers, buf, n, &r),
                     200);
    Mbox__SyncResponse *resp =
        mbox__sync_response__unpack(NULL, r.body_len, (const uint8_t *)r.body);
    ck_assert_ptr_nonnull(resp);
    ck_assert_int_eq(resp->n_items, 1);
    ck_assert_uint_eq(resp->items[0]->msg_id, id);
    ck_assert_int_eq(resp->items[0]->content.len, 2);
    ck_assert_int_eq(memcmp(resp->items[0]->content.data, "pb", 2), 0);
    mbox__sync_response__free_unpacked(resp, NULL);
    httpc_resp_free(&r);
    /* Garbage protobuf: 400. */
    ck_assert_int_eq(
        httpc_request("POST", h.logicd[0].port[0], "/v1/sync", headers, "\xff\xff\xff", 3, &r),
        400);
    httpc_resp_free(&r);
}
END_TEST

START_TEST(empty_sync_is_served_by_the_hint)
{
    char tok[256], cur[64] = "";
    mt_token(&h, 0, APP, 7001, 3600, false, tok, sizeof(tok));
    ck_assert_uint_gt(mt_send1(&h, 0, APP, 3, 7001, "x"), 0);
    int st;
    json_decref(mt_sync(&h, 0, tok, cur, 10, &st)); /* reads PostgreSQL, sets the hint */
    double hint0 = mt_metric(h.logicd[0].port[1], "mbox_sync_total", "path=\"hint\"");
    double db0 = mt_metric(h.logicd[0].port[1], "mbox_sync_total", "path=\"db\"");
    for (int i = 0; i < 10; i++) {
        json_t *j = mt_sync(&h, 0, tok, cur, 10, &st);
        ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 0);
        json_decref(j);
    }
    ck_assert_double_eq(mt_metric(h.logicd[0].port[1], "mbox_sync_total", "path=\"db\""), db0);
    ck_assert_double_ge(mt_metric(h.logicd[0].port[1], "mbox_sync_total", "path=\"hint\""),
                        hint0 + 10);
    /* A new message invalidates the hint before the send returns. */
    uint64_t id = mt_send1(&h, 1, APP, 3, 7001, "y");
    json_t *j = mt_sync(&h, 0, tok, cur, 10, &st);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 1);
    ck_assert_uint_eq(mt_u64(json_array_get(json_object_get(j, "items"), 0), "msg_id"), id);
    json_decref(j);
}
END_TEST

START_TEST(redis_down_loses_nothing)
{
    char tok[256], cur[64] = "";
    mt_token(&h, 0, APP, 8001, 3600, false, tok, sizeof(tok));
    ck_assert_uint_gt(mt_send1(&h, 0, APP, 3, 8001, "before"), 0);
    int st;
    json_decref(mt_sync(&h, 0, tok, cur, 10, &st));
    json_decref(mt_sync(&h, 0, tok, cur, 10, &st)); /* hint set */
    ck_assert(harness_redis_stop(&h));
    uint64_t ids[3];
    for (int i = 0; i < 3; i++) {
        ids[i] = mt_send1(&h, i % 2, APP, 3, 8001, "while-down");
        ck_assert_uint_gt(ids[i], 0);
    }
    json_t *j = mt_sync(&h, 1, tok, cur, 10, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 3);
    ck_assert_uint_eq(mt_u64(json_array_get(json_object_get(j, "items"), 2), "msg_id"), ids[2]);
    json_decref(j);
    ck_assert(harness_redis_start(&h));
    /* Each worker thread reconnects on its own backoff; within a few seconds
     * empty syncs are answered from the hint again (and still return nothing). */
    double hint0 = mt_metric(h.logicd[0].port[1], "mbox_sync_total", "path=\"hint\"");
    bool hinted = false;
    for (int i = 0; i < 100 && !hinted; i++) {
        j = mt_sync(&h, 0, tok, cur, 10, &st);
        ck_assert_int_eq(st, 200);
        ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 0);
        json_decref(j);
        hinted = mt_metric(h.logicd[0].port[1], "mbox_sync_total", "path=\"hint\"") > hint0;
        usleep(100 * 1000);
    }
    ck_assert_msg(hinted, "the hint was not used again after Redis came back");
}
END_TEST

START_TEST(fanout_writes_every_mailbox)
{
    /* 120000 uids: three COPY batches, on a logicd whose HTTP timeout (1 s)
     * is shorter than the job: the reply must still arrive. */
    int idx = harness_add_logicd(&h, "http_timeout_s = 1");
    ck_assert_int_ge(idx, 0);
    size_t n = 120000;
    char *body = malloc(n * 12 + 256);
    size_t o = (size_t)sprintf(body, "{\"app_id\":\"2\",\"from_uid\":\"1\",\"content\":\"to all\","
                                     "\"category\":5}\n");
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(body + o, "%zu\n", 500000 + i);
    struct httpc_resp r;
    char headers[256];
    snprintf(headers, sizeof(headers), "Content-Type: text/plain\r\nAuthorization: Bearer %s\r\n",
             h.server_key);
    ck_assert_int_eq(
        httpc_request("POST", h.logicd[idx].port[1], "/v1/fanout", headers, body, o, &r), 200);
    json_t *j = json_loads(r.body, 0, NULL);
    ck_assert_uint_eq(mt_u64(j, "written"), n);
    ck_assert_int_eq(json_integer_value(json_object_get(j, "batches")), 3);
    json_decref(j);
    httpc_resp_free(&r);
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM message WHERE app_id = 2"), (int64_t)n);

    char tok[256], cur[64] = "";
    mt_token(&h, 0, 2, 500000 + 777, 3600, false, tok, sizeof(tok));
    int st;
    j = mt_sync(&h, 0, tok, cur, 10, &st);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 1);
    ck_assert_str_eq(json_string_value(json_object_get(json_array_get(json_object_get(j, "items"), 0),
                                                       "content")),
                     "to all");
    json_decref(j);

    /* A bad line is refused before anything is written. */
    o = (size_t)sprintf(body, "{\"app_id\":\"3\",\"content\":\"x\"}\n1\n2\nthree\n4\n");
    ck_assert_int_eq(httpc_request("POST", h.logicd[0].port[1], "/v1/fanout", headers, body, o, &r),
                     400);
    ck_assert_ptr_nonnull(strstr(r.body, "line 4"));
    httpc_resp_free(&r);
    ck_assert_int_eq(mt_sql_i64(&h, "SELECT count(*) FROM message WHERE app_id = 3"), 0);
    free(body);
    harness_daemon_stop(&h.logicd[idx]);
}
END_TEST

/* ---- the invariant under concurrency ---- */

#define SENDERS    8
#define PER_SENDER 40
#define INV_UID    9001

struct sender_arg {
    int id;
    int logicd_count;
    uint64_t acked[PER_SENDER];
    int n;
};

static void *
sender_main(void *p)
{
    struct sender_arg *a = p;
    for (int i = 0; i < PER_SENDER; i++) {
        char content[32];
        snprintf(content, sizeof(content), "s%d-%d", a->id, i);
        uint64_t id = mt_send1(&h, (a->id + i) % a->logicd_count, APP, 100 + (uint64_t)a->id,
                               INV_UID + (uint64_t)a->logicd_count, content);
        if (id != 0)
            a->acked[a->n++] = id;
    }
    return NULL;
}

static int
cmp_u64(const void *x, const void *y)
{
    uint64_t a = *(const uint64_t *)x, b = *(const uint64_t *)y;
    return a < b ? -1 : a > b;
}

static void
check_invariant(int logicd_count)
{
    uint64_t uid = INV_UID + (uint64_t)logicd_count;
    char tok[256], cur[64] = "";
    mt_token(&h, 0, APP, uid, 3600, false, tok, sizeof(tok));
    struct sender_arg args[SENDERS];
    pthread_t th[SENDERS];
    for (int i = 0; i < SENDERS; i++) {
        memset(&args[i], 0, sizeof(args[i]));
        args[i].id = i;
        args[i].logicd_count = logicd_count;
        pthread_create(&th[i], NULL, sender_main, &args[i]);
    }
    uint64_t *got = calloc(SENDERS * PER_SENDER * 2, sizeof(uint64_t));
    int ngot = 0, syncs = 0;
    bool senders_done = false, joined[SENDERS] = {false};
    for (;;) {
        int st;
        json_t *j = mt_sync(&h, syncs++ % logicd_count, tok, cur, 7, &st);
        ck_assert_int_eq(st, 200);
        json_t *items = json_object_get(j, "items");
        uint64_t prev = ngot ? got[ngot - 1] : 0;
        for (size_t i = 0; i < json_array_size(items); i++) {
            uint64_t id = mt_u64(json_array_get(items, i), "msg_id");
            ck_assert_msg(id > prev, "msg_id order: %" PRIu64 " after %" PRIu64, id, prev);
            ck_assert(ngot < SENDERS * PER_SENDER * 2);
            got[ngot++] = prev = id;
        }
        bool more = json_is_true(json_object_get(j, "has_more"));
        size_t nitems = json_array_size(items);
        json_decref(j);
        if (senders_done && nitems == 0 && !more)
            break;
        if (!senders_done) {
            bool all = true;
            for (int i = 0; i < SENDERS; i++) {
                if (!joined[i])
                    joined[i] = pthread_tryjoin_np(th[i], NULL) == 0;
                all = all && joined[i];
            }
            senders_done = all;
        }
    }
    int nacked = 0;
    uint64_t *acked = calloc(SENDERS * PER_SENDER, sizeof(uint64_t));
    for (int i = 0; i < SENDERS; i++)
        for (int k = 0; k < args[i].n; k++)
            acked[nacked++] = args[i].acked[k];
    ck_assert_int_eq(nacked, SENDERS * PER_SENDER);
    qsort(acked, (size_t)nacked, sizeof(uint64_t), cmp_u64);
    ck_assert_int_eq(ngot, nacked);
    for (int i = 0; i < nacked; i++)
        ck_assert_uint_eq(got[i], acked[i]);
    free(got);
    free(acked);
}

START_TEST(invariant_one_logicd)
{
    check_invariant(1);
}
END_TEST

START_TEST(invariant_two_logicd)
{
    check_invariant(2);
}
END_TEST

/* ---- write side: hints after timeouts, Redis faults, expired recall rows ---- */

/* Runs a command on conn; the test fails unless it succeeds. */
static void
h3_exec(PGconn *conn, const char *sql)
{
    PGresult *r = PQexec(conn, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK || PQresultStatus(r) == PGRES_TUPLES_OK,
                  "%s: %s", sql, PQresultErrorMessage(r));
    PQclear(r);
}

static int64_t
h3_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/*
 * A send that times out (the test holds its mailbox header row lock, so the
 * statement outlives pg_query_timeout_ms) commits after the release, after
 * the invalidation logicd made at the timeout; a sync in between wrote the
 * hint again. The msgkey retry answers duplicate:true, and from then on the
 * next sync must show the message.
 */
START_TEST(timed_out_send_is_seen_after_its_duplicate_answer)
{
    const uint64_t uid = 9301;
    char tok[256], cur[64] = "";
    mt_token(&h, 0, APP, uid, 3600, false, tok, sizeof(tok));
    ck_assert_uint_gt(mt_send1(&h, 0, APP, 3, uid, "first"), 0);
    int st;
    json_decref(mt_sync(&h, 0, tok, cur, 10, &st));
    json_decref(mt_sync(&h, 0, tok, cur, 10, &st)); /* the hint is set */

    PGconn *lock = PQconnectdb(h.pg_conninfo);
    ck_assert_int_eq(PQstatus(lock), CONNECTION_OK);
    h3_exec(lock, "BEGIN");
    h3_exec(lock, "SELECT 1 FROM mailbox WHERE uid = 9301 AND app_id = 1 FOR UPDATE");
    const char *body = "{\"app_id\":\"1\",\"from_uid\":\"3\",\"to_uids\":[\"9301\"],"
                       "\"content\":\"late\",\"msgkey\":\"late-9301\"}";
    json_t *j = mt_send(&h, 0, body, &st); /* pg_query_timeout_ms (5 s) */
    ck_assert_int_eq(st, 503);
    json_decref(j);
    /* Uncommitted: this sync reads PostgreSQL and writes the hint again. */
    j = mt_sync(&h, 1, tok, cur, 10, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 0);
    json_decref(j);
    h3_exec(lock, "COMMIT");
    PQfinish(lock);
    int64_t committed = 0;
    for (int i = 0; i < 100 && committed == 0; i++) {
        committed = mt_sql_i64(&h, "SELECT count(*) FROM message WHERE msgkey = 'late-9301'");
        if (committed == 0)
            usleep(50 * 1000);
    }
    ck_assert_msg(committed == 1, "the timed-out send did not commit after the lock went");

    j = mt_send(&h, 1, body, &st);
    ck_assert_int_eq(st, 200);
    ck_assert(json_is_true(json_object_get(json_array_get(json_object_get(j, "results"), 0),
                                           "duplicate")));
    json_decref(j);
    j = mt_sync(&h, 0, tok, cur, 10, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_msg(json_array_size(json_object_get(j, "items")) == 1,
                  "the acknowledged message is hidden by a stale hint");
    ck_assert_str_eq(
        json_string_value(json_object_get(json_array_get(json_object_get(j, "items"), 0), "content")),
        "late");
    json_decref(j);
}
END_TEST

/* POST /v1/fanout of one uid on logicd 0; the test fails unless 200. */
static void
h3_fanout_one(uint64_t app, uint64_t uid, const char *content)
{
    ck_assert_msg(mt_fanout1(&h, 0, app, uid, content) > 0, "fanout of %s failed", content);
}

/* Syncs on logicd 0 until an item shows up (or timeout_ms); returns the items seen. */
static size_t
h3_sync_until_item(const char *tok, char *cur, int timeout_ms)
{
    int64_t end = h3_mono_ms() + timeout_ms;
    for (;;) {
        int st;
        json_t *j = mt_sync(&h, 0, tok, cur, 10, &st);
        ck_assert_int_eq(st, 200);
        size_t n = json_array_size(json_object_get(j, "items"));
        json_decref(j);
        if (n > 0 || h3_mono_ms() > end)
            return n;
        usleep(100 * 1000);
    }
}

/* Syncs on logicd 0 until the private side is answered from the hint again. */
static void
h3_wait_hint_used(const char *tok, char *cur)
{
    bool hinted = false;
    for (int i = 0; i < 100 && !hinted; i++) {
        double before = mt_metric(h.logicd[0].port[1], "mbox_sync_total", "path=\"hint\"");
        int st;
        json_decref(mt_sync(&h, 0, tok, cur, 10, &st));
        hinted = mt_metric(h.logicd[0].port[1], "mbox_sync_total", "path=\"hint\"") > before;
        if (!hinted)
            usleep(100 * 1000);
    }
    ck_assert_msg(hinted, "syncs are not answered from the hint");
}

/*
 * Fanout rows must reach a cursor sync although Redis went away during or
 * before the job: (1) after a Redis restart the fanout thread's connection
 * is stale and fails on first use; (2) while Redis is paused every
 * invalidation times out, and the hints it holds survive the pause. Both
 * are far below hint_ttl_s (3600 s).
 */
START_TEST(fanout_hints_survive_redis_restart_and_pause)
{
    const uint64_t uid = 9401;
    char tok[256], cur[64] = "";
    mt_token(&h, 0, APP, uid, 3600, false, tok, sizeof(tok));
    h3_fanout_one(APP, uid, "f1"); /* opens the fanout thread's Redis connection */
    ck_assert_uint_eq(h3_sync_until_item(tok, cur, 0), 1);

    ck_assert(harness_redis_stop(&h));
    ck_assert(harness_redis_start(&h));
    h3_wait_hint_used(tok, cur);
    h3_fanout_one(APP, uid, "f2");
    ck_assert_msg(h3_sync_until_item(tok, cur, 0) == 1, "restart: the fanout row is hidden");

    h3_wait_hint_used(tok, cur);
    char cmd[128];
    snprintf(cmd, sizeof(cmd), "redis-cli -p %d CLIENT PAUSE 4000 ALL >/dev/null", h.redis_port);
    int64_t paused = h3_mono_ms();
    ck_assert_int_eq(system(cmd), 0);
    h3_fanout_one(APP, uid, "f3");
    int64_t left = paused + 4300 - h3_mono_ms();
    if (left > 0)
        usleep((useconds_t)left * 1000);
    ck_assert_msg(h3_sync_until_item(tok, cur, 5000) == 1, "pause: the fanout row is hidden");
}
END_TEST

/*
 * Retention can delete a recall row before the message it recalls (both
 * expired, one batch took the row). Recalling that message again answers
 * 200 with recalled_msg_id and no msg_id, not 409 "being recalled" forever.
 */
START_TEST(recall_after_its_recall_row_expired)
{
    uint64_t target = mt_send1(&h, 0, APP, 3, 9501, "to recall");
    ck_assert_uint_gt(target, 0);
    char body[160];
    snprintf(body, sizeof(body), "{\"app_id\":\"1\",\"uid\":\"9501\",\"msg_id\":\"%" PRIu64 "\"}",
             target);
    int st;
    json_t *j = httpc_json("POST", h.logicd[0].port[1], "/v1/messages/recall", h.server_key, body,
                           &st);
    ck_assert_int_eq(st, 200);
    ck_assert_uint_gt(mt_u64(j, "msg_id"), target);
    json_decref(j);
    ck_assert_int_eq(mt_sql_i64(&h, "WITH d AS (DELETE FROM message WHERE uid = 9501 AND app_id = 1"
                                    " AND kind = 1 RETURNING 1) SELECT count(*) FROM d"),
                     1);
    for (int i = 0; i < 2; i++) {
        j = httpc_json("POST", h.logicd[i].port[1], "/v1/messages/recall", h.server_key, body, &st);
        ck_assert_msg(st == 200, "recall %d: %d", i, st);
        ck_assert_uint_eq(mt_u64(j, "recalled_msg_id"), target);
        ck_assert_ptr_null(json_object_get(j, "msg_id"));
        json_decref(j);
    }
}
END_TEST

/* An empty sync (from PostgreSQL, then from the hint) and an empty history say "items":[]. */
START_TEST(empty_sync_has_items_array)
{
    char tok[256], body[128];
    mt_token(&h, 0, APP, 7301, 3600, false, tok, sizeof(tok));
    snprintf(body, sizeof(body), "{\"cursor\":\"\",\"limit\":10}");
    char headers[512];
    snprintf(headers, sizeof(headers),
             "Content-Type: application/json\r\nAuthorization: Bearer %s\r\n", tok);
    for (int i = 0; i < 3; i++) {
        struct httpc_resp r;
        ck_assert_int_eq(
            httpc_request("POST", h.logicd[0].port[0], "/v1/sync", headers, body, strlen(body), &r),
            200);
        static const char start[] = "{\"items\":[],\"cursor\":";
        ck_assert_msg(strncmp(r.body, start, strlen(start)) == 0, "sync %d: %s", i, r.body);
        httpc_resp_free(&r);
    }
    struct httpc_resp r;
    ck_assert_int_eq(httpc_request("GET", h.logicd[0].port[0], "/v1/history", headers, NULL, 0, &r),
                     200);
    ck_assert_str_eq(r.body, "{\"items\":[],\"has_more\":false}");
    httpc_resp_free(&r);
}
END_TEST

static Suite *
private_suite(void)
{
    Suite *s = suite_create("private");
    TCase *tc = tcase_create("mailbox");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 180);
    tcase_add_test(tc, send_then_sync_returns_every_field);
    tcase_add_test(tc, msgkey_retry_is_idempotent);
    tcase_add_test(tc, sender_copy_and_recall);
    tcase_add_test(tc, history_orders_limits_and_read_marks);
    tcase_add_test(tc, auth_is_enforced);
    tcase_add_test(tc, bad_input_gets_4xx_and_writes_nothing);
    tcase_add_test(tc, stale_epoch_resets);
    tcase_add_test(tc, protobuf_sync);
    tcase_add_test(tc, empty_sync_is_served_by_the_hint);
    tcase_add_test(tc, empty_sync_has_items_array);
    tcase_add_test(tc, fanout_writes_every_mailbox);
    tcase_add_test(tc, invariant_one_logicd);
    tcase_add_test(tc, invariant_two_logicd);
    tcase_add_test(tc, redis_down_loses_nothing);
    tcase_add_test(tc, expired_rows_are_not_returned_and_are_deleted);
    tcase_add_test(tc, timed_out_send_is_seen_after_its_duplicate_answer);
    tcase_add_test(tc, fanout_hints_survive_redis_restart_and_pause);
    tcase_add_test(tc, recall_after_its_recall_row_expired);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(private_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
