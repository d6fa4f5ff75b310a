/*
 * api_health: GET /healthz, /livez, /readyz and /metrics (internal
 * listener; SDK too with sdk_health).
 *
 * /healthz reports each dependency as this worker sees it. It answers 200
 * when every worker's PostgreSQL pool has a connection and Redis answers a
 * PING in time, and 503 otherwise (a load balancer should then send
 * traffic elsewhere); the process itself stays up and keeps reconnecting.
 *
 * /livez says whether the process should be restarted: 503 when a
 * worker's loop has not beaten for HEALTH_BEAT_STALE_MS (probe.h), what
 * the dependencies do does not matter. /readyz says whether it should get
 * traffic: the /healthz conditions plus a public notice cache that the
 * poller refreshed lately, with a body naming each check that fails.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "api.h"
#include "health.h"
#include "logic.h"
#include "pg.h"
#include "pubcache.h"
#include "redis.h"

/* A /healthz or /readyz request waiting for its Redis PING. */
struct health_op {
    struct http_req *r;
    struct logic_worker *w;
    int64_t start_us;
    bool readyz;
};

/* The public cache is stale for /readyz when the poller has not read
 * PostgreSQL for this long: three polls, plus slack for a slow one. */
static int64_t
cache_stale_ms(const struct logic *app)
{
    return 3 * app->cfg.poll_interval_ms + 2000;
}

static void ready_reply(struct health_op *op, bool redis_up, const char *redis_err);

static void
health_reply(struct health_op *op, bool redis_up, const char *redis_err)
{
    if (op->readyz) {
        ready_reply(op, redis_up, redis_err);
        return;
    }
    struct logic_worker *w = op->w;
    int pg_up = pg_pool_connected(w->pg);
    int workers_up = atomic_load(&w->app->pg_workers_up);
    int shards_ready = atomic_load(&w->app->shard_pools_ready);
    bool ok = pg_up > 0 && workers_up == w->app->nworkers && redis_up &&
              shards_ready >= w->app->shard_pools;
    int64_t now = logic_now_us();
    int64_t last = pubcache_last_ok_us(w->app->pubcache);
    json_t *redis =
        json_pack("{s:b, s:b, s:I}", "up", redis_up, "connected", redis_connected(w->redis),
                  "ping_ms", (json_int_t)((now - op->start_us) / 1000));
    if (redis != NULL && redis_err != NULL)
        json_object_set_new(redis, "error", json_string(redis_err));
    json_t *body =
        json_pack("{s:s, s:s, s:I, s:{s:b, s:i, s:i, s:i, s:i, s:i, s:i, s:i}, s:o, s:{s:I, s:I, "
                  "s:I}}",
                  "status", ok ? "ok" : "degraded", "service", "logicd", "uptime_s",
                  (json_int_t)((now - w->app->started_us) / 1000000), "postgres", "up", pg_up > 0,
                  "connections", pg_up, "pool_size", pg_pool_size(w->pg), "workers_up", workers_up,
                  "workers", w->app->nworkers, "shards", w->app->nshards, "shard_pools",
                  w->app->shard_pools, "shard_pools_ready", shards_ready, "redis", redis,
                  "public_cache", "age_ms", (json_int_t)(last ? (now - last) / 1000 : -1),
                  "max_seq", (json_int_t)(w->snap ? w->snap->max_seq : 0), "notices",
                  (json_int_t)(w->snap ? w->snap->count : 0));
    http_reply_json(op->r, ok ? 200 : 503, body);
    free(op);
}

static void
on_ping(redisReply *reply, const char *err, void *arg)
{
    bool pong = err == NULL && reply != NULL && reply->type == REDIS_REPLY_STATUS &&
                strcmp(reply->str, "PONG") == 0;
    health_reply(arg, pong, err != NULL ? err : pong ? NULL : "unexpected reply to PING");
}

/*
 * Redis is up when it answers a PING within redis_timeout_ms, not merely
 * when its socket is open: a Redis that is stopped (SIGSTOP, a stuck
 * fork) keeps its connections and answers nothing.
 */
void
api_healthz(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    struct health_op *op = malloc(sizeof(*op));
    if (op == NULL) {
        http_reply_error(r, 503, NULL, "out of memory");
        return;
    }
    *op = (struct health_op){r, w, logic_now_us(), false};
    if (!redis_command(w->redis, on_ping, op, "PING"))
        health_reply(op, false, "not connected");
}

/* Adds check name to the body: "ok", or why it fails (then also to not_ready). */
static void
ready_check(json_t *checks, json_t *failing, const char *name, const char *why)
{
    json_object_set_new(checks, name, json_string(why == NULL ? "ok" : why));
    if (why != NULL)
        json_array_append_new(failing, json_string(name));
}

static void
ready_reply(struct health_op *op, bool redis_up, const char *redis_err)
{
    struct logic_worker *w = op->w;
    struct logic *app = w->app;
    json_t *checks = json_object(), *failing = json_array();
    char why[160];

    const char *pg = NULL;
    int workers_up = atomic_load(&app->pg_workers_up);
    int shards_ready = atomic_load(&app->shard_pools_ready);
    if (pg_pool_connected(w->pg) == 0)
        pg = "no connection";
    else if (workers_up < app->nworkers) {
        snprintf(why, sizeof(why), "%d of %d workers have a connection", workers_up, app->nworkers);
        pg = why;
    } else if (shards_ready < app->shard_pools)
        pg = "shard pools still connecting";
    ready_check(checks, failing, "postgres", pg);

    char rwhy[160];
    if (!redis_up)
        snprintf(rwhy, sizeof(rwhy), "%s", redis_err != NULL ? redis_err : "no answer to PING");
    ready_check(checks, failing, "redis", redis_up ? NULL : rwhy);

    char cwhy[160];
    int64_t last = pubcache_last_ok_us(app->pubcache);
    int64_t age_ms = last ? (logic_now_us() - last) / 1000 : -1;
    const char *cache = NULL;
    if (last == 0)
        cache = "never loaded";
    else if (age_ms > cache_stale_ms(app)) {
        snprintf(cwhy, sizeof(cwhy), "stale: last refreshed %" PRId64 " ms ago (limit %" PRId64 ")",
                 age_ms, cache_stale_ms(app));
        cache = cwhy;
    }
    ready_check(checks, failing, "public_cache", cache);

    bool ok = json_array_size(failing) == 0;
    json_t *body = json_pack("{s:s, s:s, s:o, s:o}", "status", ok ? "ready" : "not_ready",
                             "service", "logicd", "checks", checks, "not_ready", failing);
    http_reply_json(op->r, ok ? 200 : 503, body);
    free(op);
}

/* A worker with work queued keeps answering, so a fresh beat of every loop
 * is the evidence that each one runs (a stuck loop cannot beat). */
void
api_livez(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    struct logic *app = w->app;
    json_t *stale = json_array();
    int64_t oldest = 0;
    for (int i = 0; i < app->nworkers; i++) {
        int64_t age = health_beat_age_ms(&app->beats[i]);
        if (age > oldest)
            oldest = age;
        if (age > HEALTH_BEAT_STALE_MS)
            json_array_append_new(stale, json_pack("{s:i, s:I}", "worker", i, "beat_age_ms",
                                                   (json_int_t)(age == INT64_MAX ? -1 : age)));
    }
    bool ok = json_array_size(stale) == 0;
    json_t *body = json_pack("{s:s, s:s, s:i, s:I, s:o}", "status", ok ? "ok" : "stuck", "service",
                             "logicd", "loops", app->nworkers, "oldest_beat_ms",
                             (json_int_t)(oldest == INT64_MAX ? -1 : oldest), "stale", stale);
    http_reply_json(r, ok ? 200 : 503, body);
}

void
api_readyz(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    struct health_op *op = malloc(sizeof(*op));
    if (op == NULL) {
        http_reply_error(r, 503, NULL, "out of memory");
        return;
    }
    *op = (struct health_op){r, w, logic_now_us(), true};
    if (!redis_command(w->redis, on_ping, op, "PING"))
        health_reply(op, false, "not connected");
}

void
api_metrics(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    http_reply_metrics(r, w->app->metrics);
}
