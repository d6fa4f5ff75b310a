/*
 * Integration: private mailboxes sharded over two PostgreSQL databases
 * (docs/design.md 3.6). The harness's PostgreSQL is the public database and
 * shard 0 (same conninfo: logicd shares the pool); a second one is shard 1.
 * Rows are checked where they physically land, with libpq on each database.
 */
#include <check.h>
#include <inttypes.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "harness.h"
#include "httpc.h"
#include "mboxtest.h"
#include "shard.h"
#include "shards.h"

static struct harness h;
static struct harness_shard s1;
static char uri0[256];
#define APP     1
#define NSHARDS 2

/* Runs logicd with a public database and pg_shards; its exit status, stderr in out. */
static int
run_logicd_on(const char *public, const char *pg_shards, const char *arg, char *out, size_t outlen)
{
    char prog[1024], migrations[1024], cmd[4096], log[512];
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    harness_source_path("migrations", migrations, sizeof(migrations));
    snprintf(log, sizeof(log), "%s/run-logicd.log", h.dir);
    int sdk = harness_free_port(), internal = harness_free_port();
    /* timeout: a logicd that wrongly starts is stopped, and says 124. */
    snprintf(cmd, sizeof(cmd),
             "LOGICD_PG_CONNINFO='%s' LOGICD_PG_SHARDS='%s' LOGICD_SERVER_KEY=x "
             "LOGICD_TOKEN_KEY=x LOGICD_MIGRATIONS_DIR='%s' LOGICD_REDIS_PORT=%d "
             "LOGICD_SDK_LISTEN=127.0.0.1:%d LOGICD_INTERNAL_LISTEN=127.0.0.1:%d "
             "timeout 20 '%s' %s >'%s' 2>&1",
             public, pg_shards, migrations, h.redis_port, sdk, internal, prog, arg ? arg : "", log);
    int rc = system(cmd);
    FILE *f = fopen(log, "r");
    size_t n = f ? fread(out, 1, outlen - 1, f) : 0;
    out[n] = '\0';
    if (f)
        fclose(f);
    return rc != -1 && WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

/* run_logicd_on the harness's public database (when it exits within 20 s). */
static int
run_logicd(const char *pg_shards, const char *arg, char *out, size_t outlen)
{
    return run_logicd_on(h.pg_conninfo, pg_shards, arg, out, outlen);
}

static void teardown(void);

/* Stops what setup started (the second cluster too) and gives up. */
static void
setup_failed(const char *what, const char *detail)
{
    fprintf(stderr, "%s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    teardown();
    exit(1);
}

static void
setup(void)
{
    if (!harness_start(&h, HARNESS_PG | HARNESS_REDIS) || !harness_shard_start(&h, "shard1", &s1))
        setup_failed("harness failed", NULL);
    /* The public database is also shard 0, named the same way in both keys. */
    harness_pg_uri(&h, uri0, sizeof(uri0));
    snprintf(h.pg_conninfo, sizeof(h.pg_conninfo), "%s", uri0);
    char shards[600], out[8192], extra[1000];
    snprintf(shards, sizeof(shards), "%s %s", uri0, s1.uri);
    int rc = run_logicd(shards, "--migrate-only", out, sizeof(out));
    if (rc != 0)
        setup_failed("migrate failed", out);
    /* Again: nothing to do, the map stays. */
    rc = run_logicd(shards, "--migrate-only", out, sizeof(out));
    if (rc != 0 || strstr(out, "applied=0") == NULL)
        setup_failed("second migrate", out);
    snprintf(extra, sizeof(extra),
             "pg_shards = \"%s\"\nretention_interval_s = 1\npg_query_timeout_ms = 3000\n", shards);
    if (harness_add_logicd(&h, extra) != 0)
        setup_failed("logicd failed", NULL);
}

static void
teardown(void)
{
    harness_shard_stop(&s1);
    harness_stop(&h);
}

/* The shard of a uid of APP (the map --migrate makes: ranges). */
static int
shard_of_uid(uint64_t app, uint64_t uid)
{
    return shard_initial(shard_bucket(app, uid), NSHARDS);
}

/* The n-th uid from base whose mailbox lies on shard s. */
static uint64_t
uid_on(int s, uint64_t base, int nth)
{
    for (uint64_t uid = base;; uid++) {
        if (shard_of_uid(APP, uid) == s && nth-- == 0)
            return uid;
    }
}

/* The first column of the first row of sql on a database, as int64. */
static int64_t
sql_on(const char *conninfo, const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "%s", PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s: %s", sql, PQresultErrorMessage(r));
    int64_t v = PQntuples(r) > 0 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : 0;
    PQclear(r);
    PQfinish(c);
    return v;
}

/* Rows of uid's mailbox (table: message or notice_user_state) on shard s. */
static int64_t
rows_on(int s, const char *table, uint64_t uid)
{
    char sql[256];
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM %s WHERE app_id = %d AND uid = %" PRIu64,
             table, APP, uid);
    return sql_on(s == 0 ? uri0 : s1.uri, sql);
}

/* The items of one full sync of a fresh cursor. */
static json_t *
sync_all(uint64_t uid, char *tok, size_t toklen)
{
    char cur[64] = "";
    mt_token(&h, 0, APP, uid, 3600, false, tok, toklen);
    int st;
    json_t *j = mt_sync(&h, 0, tok, cur, 100, &st);
    ck_assert_int_eq(st, 200);
    return j;
}

/* Messages (kind "message") in uid's mailbox as a sync sees them. */
static int
messages_of(uint64_t uid)
{
    char tok[256];
    json_t *j = sync_all(uid, tok, sizeof(tok));
    json_t *items = json_object_get(j, "items");
    int n = 0;
    for (size_t i = 0; i < json_array_size(items); i++)
        n += strcmp(json_string_value(json_object_get(json_array_get(items, i), "kind")),
                    "message") == 0;
    json_decref(j);
    return n;
}

START_TEST(bucket_same_in_sql)
{
    /* mbox_bucket() (migrations/0005) is the C function, bit for bit. */
    static const uint64_t uids[] = {
        0, 1, 42, 1000000, 18446744073709551615ULL, 9223372036854775808ULL};
    for (size_t i = 0; i < sizeof(uids) / sizeof(uids[0]); i++) {
        char sql[160];
        snprintf(sql, sizeof(sql), "SELECT mbox_bucket(7, %" PRId64 ")", (int64_t)uids[i]);
        ck_assert_int_eq(sql_on(s1.uri, sql), (int64_t)shard_bucket(7, uids[i]));
    }
    ck_assert_int_eq(sql_on(uri0, "SELECT count(*) FROM bucket_map"), LOGIC_BUCKETS);
    ck_assert_int_eq(sql_on(uri0, "SELECT count(DISTINCT shard) FROM bucket_map"), NSHARDS);
    ck_assert_int_eq(sql_on(s1.uri, "SELECT shard FROM shard_identity"), 1);
    ck_assert_int_eq(sql_on(uri0, "SELECT shard FROM shard_identity"), 0);
    /* The identity each shard holds is the one the public list names. */
    ck_assert_int_eq(sql_on(uri0, "SELECT count(*) FROM shard_cluster c JOIN shard_identity i"
                                  " ON i.cluster_id = c.cluster_id WHERE c.nshards = 2"),
                     1);
}
END_TEST

START_TEST(each_shard_serves_its_users)
{
    for (int s = 0; s < NSHARDS; s++) {
        uint64_t uid = uid_on(s, 10000, 0);
        uint64_t id = mt_send1(&h, 0, APP, 7, uid, "hello");
        ck_assert_uint_gt(id, 0);
        ck_assert_int_eq(rows_on(s, "message", uid), 1);
        ck_assert_int_eq(rows_on(1 - s, "message", uid), 0);
        ck_assert_int_eq(rows_on(s, "mailbox", uid), 1);
        ck_assert_int_eq(rows_on(1 - s, "mailbox", uid), 0);

        char tok[256];
        json_t *j = sync_all(uid, tok, sizeof(tok));
        json_t *items = json_object_get(j, "items");
        ck_assert_int_eq(json_array_size(items), 1);
        ck_assert_uint_eq(mt_u64(json_array_get(items, 0), "msg_id"), id);
        json_decref(j);

        int st;
        j = httpc_json("GET", h.logicd[0].port[0], "/v1/history?order=desc", tok, NULL, &st);
        ck_assert_int_eq(st, 200);
        ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 1);
        json_decref(j);

        char body[256];
        snprintf(body, sizeof(body), "{\"msg_ids\":[\"%" PRIu64 "\"]}", id);
        j = httpc_json("POST", h.logicd[0].port[0], "/v1/read", tok, body, &st);
        ck_assert_int_eq(st, 200);
        ck_assert_int_eq(json_integer_value(json_object_get(j, "updated")), 1);
        json_decref(j);
        char sql[200];
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM message WHERE uid = %" PRIu64 " AND is_read", uid);
        ck_assert_int_eq(sql_on(s == 0 ? uri0 : s1.uri, sql), 1);

        snprintf(body, sizeof(body),
                 "{\"app_id\":\"%d\",\"uid\":\"%" PRIu64 "\",\"msg_id\":\"%" PRIu64 "\"}", APP, uid,
                 id);
        j = httpc_json("POST", h.logicd[0].port[1], "/v1/messages/recall", h.server_key, body, &st);
        ck_assert_msg(st == 200, "recall on shard %d: %d", s, st);
        ck_assert_uint_eq(mt_u64(j, "recalled_msg_id"), id);
        json_decref(j);
        ck_assert_int_eq(rows_on(s, "message", uid), 2); /* the message and its recall */
        ck_assert_int_eq(messages_of(uid), 0);
    }
}
END_TEST

/* POST /v1/messages to uids (JSON array text) with msgkey; returns the reply. */
static json_t *
send_to(const char *uids, const char *msgkey, int *st)
{
    char body[1024];
    snprintf(body, sizeof(body),
             "{\"app_id\":\"%d\",\"from_uid\":\"7\",\"to_uids\":%s,\"content\":\"multi\""
             "%s%s%s}",
             APP, uids, msgkey ? ",\"msgkey\":\"" : "", msgkey ? msgkey : "", msgkey ? "\"" : "");
    return mt_send(&h, 0, body, st);
}

START_TEST(send_spanning_shards)
{
    uint64_t a = uid_on(0, 20000, 0), b = uid_on(1, 20000, 0), c = uid_on(0, 20000, 1),
             d = uid_on(1, 20000, 1);
    char uids[256];
    snprintf(uids, sizeof(uids),
             "[\"%" PRIu64 "\",\"%" PRIu64 "\",\"%" PRIu64 "\",\"%" PRIu64 "\",\"%" PRIu64 "\"]", b,
             a, d, c, b);
    int st;
    json_t *j = send_to(uids, NULL, &st);
    ck_assert_int_eq(st, 200);
    json_t *res = json_object_get(j, "results");
    /* The order the sender gave (the repeated uid once), every one with an id. */
    ck_assert_int_eq(json_array_size(res), 4);
    uint64_t want[4] = {b, a, d, c};
    for (size_t i = 0; i < 4; i++) {
        ck_assert_uint_eq(mt_u64(json_array_get(res, i), "uid"), want[i]);
        ck_assert_uint_gt(mt_u64(json_array_get(res, i), "msg_id"), 0);
    }
    json_decref(j);
    for (size_t i = 0; i < 4; i++) {
        ck_assert_int_eq(messages_of(want[i]), 1);
        ck_assert_int_eq(rows_on(shard_of_uid(APP, want[i]), "message", want[i]), 1);
        ck_assert_int_eq(rows_on(1 - shard_of_uid(APP, want[i]), "message", want[i]), 0);
    }
}
END_TEST

START_TEST(send_with_a_shard_down_then_retry)
{
    uint64_t a = uid_on(0, 30000, 0), b = uid_on(1, 30000, 0);
    char uids[128];
    snprintf(uids, sizeof(uids), "[\"%" PRIu64 "\",\"%" PRIu64 "\"]", a, b);
    ck_assert(harness_shard_pause(&s1));
    int st;
    json_t *j = send_to(uids, "retry-me", &st);
    ck_assert_msg(st == 503, "send with shard 1 down: %d", st);
    json_decref(j);
    /* Users of shard 0 are still served: this logicd stays in the pool. */
    j = httpc_json("GET", h.logicd[0].port[1], "/healthz", NULL, NULL, &st);
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(json_integer_value(json_object_get(json_object_get(j, "postgres"), "shards")),
                     2);
    json_decref(j);
    ck_assert_int_eq(messages_of(uid_on(0, 30000, 5)), 0);
    ck_assert(harness_shard_resume(&s1));
    /* The retry, until a shard 1 pool is back: a worker's reconnect
     * backoff is at most 5 s, plus a loaded machine's delays. */
    char last[512] = "";
    for (int tries = 0; tries < 300; tries++) {
        j = send_to(uids, "retry-me", &st);
        if (st == 200)
            break;
        char *text = j ? json_dumps(j, 0) : NULL;
        snprintf(last, sizeof(last), "%s", text ? text : "no body");
        free(text);
        json_decref(j);
        j = NULL;
        usleep(100 * 1000);
    }
    ck_assert_msg(st == 200, "retry: %d %s", st, last);
    json_t *res = json_object_get(j, "results");
    ck_assert_int_eq(json_array_size(res), 2);
    ck_assert_uint_eq(mt_u64(json_array_get(res, 0), "uid"), a);
    /* a's part committed before the failure: the retry names it a duplicate. */
    ck_assert(json_is_true(json_object_get(json_array_get(res, 0), "duplicate")));
    ck_assert(json_is_false(json_object_get(json_array_get(res, 1), "duplicate")));
    json_decref(j);
    /* And again: both duplicates, still one message each. (Each worker
     * has its own shard 1 pool: the other one may still be reconnecting.) */
    for (int tries = 0; tries < 300; tries++) {
        j = send_to(uids, "retry-me", &st);
        if (st == 200)
            break;
        json_decref(j);
        j = NULL;
        usleep(100 * 1000);
    }
    ck_assert_int_eq(st, 200);
    ck_assert(json_is_true(
        json_object_get(json_array_get(json_object_get(j, "results"), 1), "duplicate")));
    json_decref(j);
    ck_assert_int_eq(messages_of(a), 1);
    ck_assert_int_eq(messages_of(b), 1);
    ck_assert_int_eq(rows_on(0, "message", a), 1);
    ck_assert_int_eq(rows_on(1, "message", b), 1);
}
END_TEST

START_TEST(send_part_times_out_then_retry)
{
    /* Shard 1's part waits on a lock past pg_query_timeout_ms (setup:
     * 3000 ms): its outcome is unknown, the sender gets 503, and whatever
     * that statement does later, the retry leaves one message each. */
    uint64_t a = uid_on(0, 35000, 0), b = uid_on(1, 35000, 0);
    /* The other worker's shard 1 pool may still be reconnecting after the
     * previous test: retry (with a msgkey, so one message) until served. */
    char one[64];
    snprintf(one, sizeof(one), "[\"%" PRIu64 "\"]", b);
    int st = 0;
    for (int tries = 0; tries < 300 && st != 200; tries++) {
        json_decref(send_to(one, "first", &st));
        if (st != 200)
            usleep(100 * 1000);
    }
    ck_assert_int_eq(st, 200);
    PGconn *lock = PQconnectdb(s1.uri);
    ck_assert_int_eq(PQstatus(lock), CONNECTION_OK);
    char sql[160];
    snprintf(sql, sizeof(sql), "SELECT 1 FROM mailbox WHERE uid = %" PRIu64 " FOR UPDATE", b);
    PQclear(PQexec(lock, "BEGIN"));
    PGresult *r = PQexec(lock, sql);
    ck_assert_int_eq(PQntuples(r), 1);
    PQclear(r);
    char uids[128];
    snprintf(uids, sizeof(uids), "[\"%" PRIu64 "\",\"%" PRIu64 "\"]", a, b);
    json_t *j = send_to(uids, "slow-part", &st);
    ck_assert_msg(st == 503, "send with a part stuck: %d", st);
    json_decref(j);
    PQclear(PQexec(lock, "COMMIT"));
    PQfinish(lock);
    for (int tries = 0; tries < 300; tries++) {
        j = send_to(uids, "slow-part", &st);
        if (st == 200)
            break;
        json_decref(j);
        j = NULL;
        usleep(100 * 1000);
    }
    ck_assert_int_eq(st, 200);
    json_t *res = json_object_get(j, "results");
    ck_assert(json_is_true(json_object_get(json_array_get(res, 0), "duplicate")));
    json_decref(j);
    ck_assert_int_eq(messages_of(a), 1);
    ck_assert_int_eq(messages_of(b), 2); /* "first" and this one */
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM message WHERE msgkey = 'slow-part'");
    ck_assert_int_eq(sql_on(uri0, sql) + sql_on(s1.uri, sql), 2);
}
END_TEST

START_TEST(fanout_across_shards)
{
    size_t n = 300;
    char *body = malloc(64 + n * 24);
    size_t o = (size_t)sprintf(body, "{\"app_id\":\"%d\",\"content\":\"to all\"}\n", APP);
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(body + o, "%zu\n", 500000 + i);
    struct httpc_resp r;
    char headers[256];
    snprintf(headers, sizeof(headers), "Content-Type: text/plain\r\nAuthorization: Bearer %s\r\n",
             h.server_key);
    ck_assert_int_eq(httpc_request("POST", h.logicd[0].port[1], "/v1/fanout", headers, body, o, &r),
                     200);
    json_t *j = json_loads(r.body, 0, NULL);
    ck_assert_uint_eq(mt_u64(j, "written"), n);
    ck_assert_uint_gt(mt_u64(j, "first_msg_id"), 0);
    ck_assert_uint_ge(mt_u64(j, "last_msg_id"), mt_u64(j, "first_msg_id"));
    json_decref(j);
    httpc_resp_free(&r);
    free(body);
    const char *q = "SELECT count(*) FROM message WHERE uid >= 500000 AND uid < 500300";
    int64_t on0 = sql_on(uri0, q), on1 = sql_on(s1.uri, q);
    ck_assert_int_eq(on0 + on1, (int64_t)n);
    ck_assert_int_gt(on0, 0);
    ck_assert_int_gt(on1, 0);
    /* Each on the shard of its bucket. */
    int want0 = 0;
    for (size_t i = 0; i < n; i++)
        want0 += shard_of_uid(APP, 500000 + i) == 0;
    ck_assert_int_eq(on0, want0);
    ck_assert_int_eq(messages_of(uid_on(1, 500000, 0)), 1);
}
END_TEST

START_TEST(notice_state_follows_the_user)
{
    int st;
    json_t *j = httpc_json("POST", h.logicd[0].port[1], "/v1/notices", h.ops_token,
                           "{\"app_id\":\"1\",\"title\":\"n\",\"content\":\"x\"}", &st);
    ck_assert_int_eq(st, 201);
    uint64_t id = mt_u64(j, "notice_id");
    json_decref(j);
    char path[128];
    snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/publish", id);
    json_decref(httpc_json("POST", h.logicd[0].port[1], path, h.ops_token, NULL, &st));
    ck_assert_int_eq(st, 200);
    for (int s = 0; s < NSHARDS; s++) {
        uint64_t uid = uid_on(s, 40000, 0);
        char tok[256];
        /* Until the poller has the notice. */
        bool seen = false;
        for (int tries = 0; tries < 60 && !seen; tries++) {
            j = sync_all(uid, tok, sizeof(tok));
            json_t *items = json_object_get(j, "items");
            for (size_t i = 0; i < json_array_size(items); i++)
                seen = seen || mt_u64(json_array_get(items, i), "notice_id") == id;
            json_decref(j);
            if (!seen)
                usleep(100 * 1000);
        }
        ck_assert(seen);
        char body[128];
        snprintf(body, sizeof(body), "{\"notice_ids\":[\"%" PRIu64 "\"]}", id);
        j = httpc_json("POST", h.logicd[0].port[0], "/v1/read", tok, body, &st);
        ck_assert_int_eq(st, 200);
        ck_assert_int_eq(json_integer_value(json_object_get(j, "updated")), 1);
        json_decref(j);
        ck_assert_int_eq(rows_on(s, "notice_user_state", uid), 1);
        ck_assert_int_eq(rows_on(1 - s, "notice_user_state", uid), 0);
        /* The sync reads the mark back from the user's shard. */
        j = sync_all(uid, tok, sizeof(tok));
        json_t *it = json_array_get(json_object_get(j, "items"), 0);
        ck_assert_uint_eq(mt_u64(it, "notice_id"), id);
        ck_assert(json_is_true(json_object_get(it, "is_read")));
        json_decref(j);
        snprintf(path, sizeof(path), "/v1/notices/%" PRIu64 "/hide", id);
        json_decref(httpc_json("POST", h.logicd[0].port[0], path, tok, NULL, &st));
        ck_assert_int_eq(st, 204);
        char sql[200];
        snprintf(sql, sizeof(sql),
                 "SELECT count(*) FROM notice_user_state WHERE uid = %" PRIu64 " AND hidden", uid);
        ck_assert_int_eq(sql_on(s == 0 ? uri0 : s1.uri, sql), 1);
        j = sync_all(uid, tok, sizeof(tok));
        ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 0);
        json_decref(j);
    }
}
END_TEST

START_TEST(retention_on_every_shard)
{
    /* retention_interval_s = 1 (setup): worker 0 cleans both shards. */
    uint64_t a = uid_on(0, 70000, 0), b = uid_on(1, 70000, 0);
    char body[256];
    snprintf(body, sizeof(body),
             "{\"app_id\":\"%d\",\"from_uid\":\"7\",\"to_uids\":[\"%" PRIu64 "\",\"%" PRIu64
             "\"],\"content\":\"brief\",\"expire_s\":1}",
             APP, a, b);
    int st;
    json_decref(mt_send(&h, 0, body, &st));
    ck_assert_int_eq(st, 200);
    ck_assert_int_eq(rows_on(0, "message", a), 1);
    ck_assert_int_eq(rows_on(1, "message", b), 1);
    int64_t left = 2;
    for (int tries = 0; tries < 100 && left > 0; tries++) {
        usleep(100 * 1000);
        left = rows_on(0, "message", a) + rows_on(1, "message", b);
    }
    ck_assert_int_eq(left, 0);
}
END_TEST

/* Creates database name on the server of conninfo; returns its URI in out. */
static void
create_db(const char *conninfo, const char *password, int port, const char *name, char *out,
          size_t len)
{
    PGconn *c = PQconnectdb(conninfo);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    char sql[128];
    snprintf(sql, sizeof(sql), "CREATE DATABASE %s", name);
    PGresult *r = PQexec(c, sql);
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
    snprintf(out, len, "postgresql://mbox:%s@127.0.0.1:%d/%s", password, port, name);
}

START_TEST(public_database_apart)
{
    /* A public database that is no shard: a pool of its own for each shard. */
    char pub[300], sa[300], sb[300], shards[700], out[8192], extra[800];
    create_db(s1.uri, s1.password, s1.port, "pubx", pub, sizeof(pub));
    create_db(s1.uri, s1.password, s1.port, "sa", sa, sizeof(sa));
    create_db(uri0, h.pg_password, h.pg_port, "sb", sb, sizeof(sb));
    snprintf(shards, sizeof(shards), "%s %s", sa, sb);
    int rc = run_logicd_on(pub, shards, "--migrate-only", out, sizeof(out));
    ck_assert_msg(rc == 0, "migrate: %d %s", rc, out);
    char saved[sizeof(h.pg_conninfo)];
    memcpy(saved, h.pg_conninfo, sizeof(saved));
    snprintf(h.pg_conninfo, sizeof(h.pg_conninfo), "%s", pub);
    snprintf(extra, sizeof(extra), "pg_shards = \"%s\"\n", shards);
    int idx = harness_add_logicd(&h, extra);
    memcpy(h.pg_conninfo, saved, sizeof(saved));
    ck_assert_int_gt(idx, 0);
    for (int s = 0; s < NSHARDS; s++) {
        uint64_t uid = uid_on(s, 60000, 0);
        uint64_t id = mt_send1(&h, idx, APP, 7, uid, "apart");
        ck_assert_uint_gt(id, 0);
        char sql[160];
        snprintf(sql, sizeof(sql), "SELECT count(*) FROM message WHERE uid = %" PRIu64, uid);
        ck_assert_int_eq(sql_on(s == 0 ? sa : sb, sql), 1);
        ck_assert_int_eq(sql_on(s == 0 ? sb : sa, sql), 0);
        char tok[256], cur[64] = "", body[128];
        mt_token(&h, idx, APP, uid, 3600, false, tok, sizeof(tok));
        int st;
        json_t *j = mt_sync(&h, idx, tok, cur, 100, &st);
        ck_assert_int_eq(st, 200);
        ck_assert_int_eq(json_array_size(json_object_get(j, "items")), 1);
        json_decref(j);
        snprintf(body, sizeof(body), "{\"msg_ids\":[\"%" PRIu64 "\"]}", id);
        j = httpc_json("POST", h.logicd[idx].port[0], "/v1/read", tok, body, &st);
        ck_assert_int_eq(st, 200);
        ck_assert_int_eq(json_integer_value(json_object_get(j, "updated")), 1);
        json_decref(j);
    }
    ck_assert_int_eq(sql_on(pub, "SELECT count(*) FROM message"), 0);
    ck_assert_int_eq(sql_on(pub, "SELECT count(*) FROM shard_identity"), 0);
    harness_daemon_stop(&h.logicd[idx]);
}
END_TEST

START_TEST(refuses_a_wrong_shard_list)
{
    char shards[900], out[8192];
    /* Wrong order. */
    snprintf(shards, sizeof(shards), "%s %s", s1.uri, uri0);
    int rc = run_logicd(shards, NULL, out, sizeof(out));
    ck_assert_msg(rc != 0 && rc != 124, "reversed list: status %d: %s", rc, out);
    ck_assert_msg(strstr(out, "logicd: cannot start: pg_shards entry 1 is shard 1") != NULL, "%s",
                  out);
    /* One line, and nothing else: the refusal is the whole story. */
    ck_assert_msg(strchr(out, '\n') == out + strlen(out) - 1, "more than one line: %s", out);
    /* One shard fewer. */
    rc = run_logicd(uri0, NULL, out, sizeof(out));
    ck_assert_msg(rc != 0 && rc != 124, "one shard: status %d: %s", rc, out);
    ck_assert_msg(strstr(out, "made for 2 shards but pg_shards lists 1") != NULL, "%s", out);
    /* One more (the same database twice). */
    snprintf(shards, sizeof(shards), "%s %s %s", uri0, s1.uri, s1.uri);
    rc = run_logicd(shards, NULL, out, sizeof(out));
    ck_assert_msg(rc != 0 && rc != 124, "three shards: status %d: %s", rc, out);
    ck_assert_msg(strstr(out, "made for 2 shards but pg_shards lists 3") != NULL, "%s", out);
    /* None: the map says most mailboxes are elsewhere. */
    rc = run_logicd("", NULL, out, sizeof(out));
    ck_assert_msg(rc != 0 && rc != 124, "no shards: status %d: %s", rc, out);
    ck_assert_msg(strstr(out, "bucket map over 2 shards but pg_shards is empty") != NULL, "%s",
                  out);
    /* A database of another cluster (its own map, made by another
     * --migrate) in the place of shard 1. */
    PGconn *c = PQconnectdb(s1.uri);
    ck_assert_int_eq(PQstatus(c), CONNECTION_OK);
    PGresult *r = PQexec(c, "CREATE DATABASE other");
    ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s", PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
    char other[300];
    snprintf(other, sizeof(other), "postgresql://mbox:%s@127.0.0.1:%d/other", s1.password, s1.port);
    rc = run_logicd_on(other, other, "--migrate-only", out, sizeof(out));
    ck_assert_msg(rc == 0, "migrate other: %d %s", rc, out);
    snprintf(shards, sizeof(shards), "%s %s", uri0, other);
    rc = run_logicd(shards, NULL, out, sizeof(out));
    ck_assert_msg(rc != 0 && rc != 124, "other cluster: status %d: %s", rc, out);
    ck_assert_msg(strstr(out, "logicd: cannot start: pg_shards entry 2 belongs to another "
                              "cluster") != NULL,
                  "%s", out);
    /* A fresh database in shard 1's place: --migrate gives it no identity. */
    char fresh[300];
    create_db(s1.uri, s1.password, s1.port, "fresh", fresh, sizeof(fresh));
    snprintf(shards, sizeof(shards), "%s %s", uri0, fresh);
    rc = run_logicd(shards, "--migrate-only", out, sizeof(out));
    ck_assert_msg(rc != 0, "migrate fresh: status %d: %s", rc, out);
    ck_assert_msg(strstr(out, "pg_shards entry 2 is no shard of this cluster") != NULL, "%s", out);
    ck_assert_int_eq(sql_on(fresh, "SELECT count(*) FROM shard_identity"), 0);
    /* --migrate with another order changes nothing and says why. */
    snprintf(shards, sizeof(shards), "%s %s", s1.uri, uri0);
    rc = run_logicd(shards, "--migrate-only", out, sizeof(out));
    ck_assert_msg(rc != 0, "migrate reversed: status %d: %s", rc, out);
    ck_assert_int_eq(sql_on(s1.uri, "SELECT shard FROM shard_identity"), 1);
}
END_TEST

int
main(void)
{
    Suite *s = suite_create("shards");
    TCase *tc = tcase_create("shards");
    tcase_add_unchecked_fixture(tc, setup, teardown);
    tcase_set_timeout(tc, 120);
    tcase_add_test(tc, bucket_same_in_sql);
    tcase_add_test(tc, each_shard_serves_its_users);
    tcase_add_test(tc, send_spanning_shards);
    tcase_add_test(tc, send_with_a_shard_down_then_retry);
    tcase_add_test(tc, send_part_times_out_then_retry);
    tcase_add_test(tc, fanout_across_shards);
    tcase_add_test(tc, notice_state_follows_the_user);
    tcase_add_test(tc, retention_on_every_shard);
    tcase_add_test(tc, public_database_apart);
    tcase_add_test(tc, refuses_a_wrong_shard_list);
    suite_add_tcase(s, tc);
    SRunner *sr = srunner_create(s);
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? 0 : 1;
}
