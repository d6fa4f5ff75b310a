/*
 * api_health: GET /healthz and GET /metrics on both listeners.
 *
 * /healthz reports each dependency as this worker sees it. It answers 200
 * when PostgreSQL and Redis are both reachable and 503 otherwise (a load
 * balancer should then send traffic elsewhere); the process itself stays up
 * and keeps reconnecting.
 */
#include <jansson.h>

#include "api.h"
#include "logic.h"
#include "pg.h"
#include "pubcache.h"
#include "redis.h"

void
api_healthz(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    int pg_up = pg_pool_connected(w->pg);
    bool redis_up = redis_connected(w->redis);
    bool ok = pg_up > 0 && redis_up;

    int64_t last = pubcache_last_ok_us(w->app->pubcache);
    json_t *body = json_pack("{s:s, s:s, s:I, s:{s:b, s:i, s:i}, s:{s:b}, s:{s:I, s:I, s:I}}",
                             "status", ok ? "ok" : "degraded", "service", "logicd", "uptime_s",
                             (json_int_t)((logic_now_us() - w->app->started_us) / 1000000),
                             "postgres", "up", pg_up > 0, "connections", pg_up, "pool_size",
                             pg_pool_size(w->pg), "redis", "up", redis_up, "public_cache", "age_ms",
                             (json_int_t)(last ? (logic_now_us() - last) / 1000 : -1), "max_seq",
                             (json_int_t)(w->snap ? w->snap->max_seq : 0), "notices",
                             (json_int_t)(w->snap ? w->snap->count : 0));
    http_reply_json(r, ok ? 200 : 503, body);
}

void
api_metrics(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    http_reply_metrics(r, w->app->metrics);
}
