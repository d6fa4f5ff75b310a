/*
 * api_health: GET /healthz and GET /metrics (internal listener; SDK too with sdk_health).
 *
 * /healthz reports each dependency as this worker sees it. It answers 200
 * when every worker's PostgreSQL pool has a connection and Redis answers a
 * PING in time, and 503 otherwise (a load balancer should then send
 * traffic elsewhere); the process itself stays up and keeps reconnecting.
 */
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>
#include <jansson.h>

#include "api.h"
#include "logic.h"
#include "pg.h"
#include "pubcache.h"
#include "redis.h"

/* A /healthz request waiting for its Redis PING. */
struct health_op {
    struct http_req *r;
    struct logic_worker *w;
    int64_t start_us;
};

static void
health_reply(struct health_op *op, bool redis_up, const char *redis_err)
{
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
    *op = (struct health_op){r, w, logic_now_us()};
    if (!redis_command(w->redis, on_ping, op, "PING"))
        health_reply(op, false, "not connected");
}

void
api_metrics(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    http_reply_metrics(r, w->app->metrics);
}
