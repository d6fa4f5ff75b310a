/*
 * worker: one logicd worker thread (see logic.h).
 */
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "api.h"
#include "api_io.h"
#include "hint.h"
#include "live.h"
#include "log.h"
#include "logic.h"
#include "metrics.h"
#include "pg.h"
#include "probe.h"
#include "procmetrics.h"
#include "pubcache.h"
#include "redis.h"
#include "reach.h"
#include "retention.h"
#include "send_batch.h"
#include "sql.h"

int64_t
logic_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Runs on the worker's thread: stop accepting, let replies drain, leave. */
static void
on_stop(evutil_socket_t fd, short what, void *arg)
{
    struct logic_worker *w = arg;
    http_server_free(w->sdk);
    w->sdk = NULL;
    http_server_free(w->internal);
    w->internal = NULL;
    struct timeval grace = {0, 200 * 1000};
    event_base_loopexit(w->base, &grace);
}

/* Runs on the worker's thread after a SIGHUP reload (live.h). */
static void
on_reload(evutil_socket_t fd, short what, void *arg)
{
    logic_live_adopt(arg);
}

/* Counts the workers whose pool can serve (struct logic.pg_workers_up). */
static void
on_pg_up(bool up, void *arg)
{
    struct logic *app = arg;
    atomic_fetch_add(&app->pg_workers_up, up ? 1 : -1);
}

/* Counts a shard pool's first connection (struct logic.shard_pools_ready). */
static void
on_shard_up(bool up, void *arg)
{
    struct logic_shard_up *s = arg;
    if (up && !s->seen) {
        s->seen = true;
        atomic_fetch_add(&s->app->shard_pools_ready, 1);
    }
}

/*
 * Opens the worker's pool of each shard. A shard whose conninfo is the
 * public one's shares the public pool (single database: always shard 0).
 */
static bool
open_shard_pools(struct logic_worker *w, const struct pg_pool_config *public_cfg, char *err,
                 size_t errlen)
{
    struct logic *app = w->app;
    for (int i = 0; i < app->nshards; i++) {
        const char *ci = app->shard_conninfo[i];
        if (ci == NULL || strcmp(ci, app->cfg.pg_conninfo) == 0) {
            w->shard_pg[i] = w->pg;
            continue;
        }
        struct pg_pool_config sc = *public_cfg;
        sc.conninfo = ci;
        w->shard_up[i].app = app;
        sc.on_up = on_shard_up;
        sc.on_up_arg = &w->shard_up[i];
        w->shard_pg[i] = pg_pool_new(w->base, &sc, app->metrics);
        if (w->shard_pg[i] == NULL) {
            snprintf(err, errlen, "bad PostgreSQL pool settings (pg_shards entry %d)", i + 1);
            return false;
        }
        if (!sql_prepare_all(w->shard_pg[i])) {
            snprintf(err, errlen, "cannot register SQL statements");
            return false;
        }
    }
    for (int i = 0; i < app->nshards; i++) {
        w->batchers[i] = send_batcher_new(w, i);
        if (w->batchers[i] == NULL) {
            snprintf(err, errlen, "out of memory");
            return false;
        }
    }
    return true;
}

int
logic_shard(const struct logic *app, uint64_t app_id, uint64_t uid)
{
    return app->nshards > 1 ? shard_of(&app->map, app_id, uid) : 0;
}

struct pg_pool *
logic_shard_pool(struct logic_worker *w, uint64_t app_id, uint64_t uid)
{
    return w->shard_pg[logic_shard(w->app, app_id, uid)];
}

/* Opens one listener of this worker (its own SO_REUSEPORT socket). */
static struct http_server *
open_listener(struct logic_worker *w, const char *name, const char *host, int port,
              const struct http_route *routes, size_t nroutes, size_t max_body,
              struct http_gate *gate, http_precheck_fn precheck, char *err, size_t errlen)
{
    const struct logic_config *c = &w->app->cfg;
    int fd = http_listen(host, port, err, errlen);
    if (fd < 0)
        return NULL;
    struct http_limits limits = {
        .max_body = max_body,
        .max_headers = (size_t)c->max_header_bytes,
        .timeout_s = (int)c->http_timeout_s,
        .head_timeout_s = (int)c->http_head_timeout_s,
        .min_body_rate = (size_t)c->http_min_body_rate,
        .gate = gate,
    };
    struct http_server *s = http_server_new(w->base, fd, name, routes, nroutes, &limits, w,
                                            w->app->metrics, err, errlen);
    if (s != NULL)
        http_server_set_precheck(s, precheck);
    return s;
}

struct redis_config
logic_redis_config(const struct logic_config *c)
{
    return (struct redis_config){
        .host = c->redis_host,
        .port = (int)c->redis_port,
        .nodes = c->redis_nodes,
        .user = c->redis_user,
        .password = c->redis_password,
        .connect_timeout_ms = 1000,
        .command_timeout_ms = (int)c->redis_timeout_ms,
        .backoff_min_ms = 100,
        .backoff_max_ms = 5000,
    };
}

bool
logic_worker_init(struct logic_worker *w, struct logic *app, int id, char *err, size_t errlen)
{
    const struct logic_config *c = &app->cfg;
    memset(w, 0, sizeof(*w));
    w->app = app;
    w->id = id;
    w->base = event_base_new();
    if (w->base == NULL) {
        snprintf(err, errlen, "event_base_new failed");
        return false;
    }
    w->stop_ev = event_new(w->base, -1, 0, on_stop, w);
    w->reload_ev = event_new(w->base, -1, 0, on_reload, w);
    w->live = app->live;
    atomic_store(&w->live_gen, app->live->gen);
    if (w->stop_ev == NULL || w->reload_ev == NULL) {
        snprintf(err, errlen, "out of memory (worker events)");
        return false;
    }

    char plan_mode[80];
    snprintf(plan_mode, sizeof(plan_mode), "SET plan_cache_mode = %s", c->pg_plan_cache_mode);
    struct pg_pool_config pgc = {
        .conninfo = c->pg_conninfo,
        .size = (int)c->pg_pool_size,
        .backoff_min_ms = 100,
        .backoff_max_ms = 5000,
        .query_timeout_ms = (int)c->pg_query_timeout_ms,
        .max_inflight = 64,
        .on_up = on_pg_up,
        .on_up_arg = app,
        .session_sql = plan_mode,
    };
    w->pg = pg_pool_new(w->base, &pgc, app->metrics);
    if (w->pg == NULL) {
        snprintf(err, errlen, "bad PostgreSQL pool settings");
        return false;
    }
    if (!sql_prepare_all(w->pg)) {
        snprintf(err, errlen, "cannot register SQL statements");
        return false;
    }
    if (!open_shard_pools(w, &pgc, err, errlen))
        return false;
    struct redis_config rc = logic_redis_config(c);
    w->redis = redis_new(w->base, &rc, app->metrics);
    w->dirty = hint_dirty_new();
    w->tokens = api_token_cache_new();
    w->m_sync_hint = metrics_counter(app->metrics, "mbox_sync_total",
                                     "syncs by how the private side was answered", "path=\"hint\"");
    w->m_sync_db = metrics_counter(app->metrics, "mbox_sync_total",
                                   "syncs by how the private side was answered", "path=\"db\"");
    const char *rh = "notices handed to users in sync replies, by whether the reach counter "
                     "got the delivery (Redis)";
    w->m_reach_counted =
        metrics_counter(app->metrics, "mbox_notice_deliveries_total", rh, "result=\"counted\"");
    w->m_reach_dropped =
        metrics_counter(app->metrics, "mbox_notice_deliveries_total", rh, "result=\"dropped\"");
    /* Present at 0 from the start (notify.c counts them). */
    metrics_counter(app->metrics, "mbox_notify_batches_total",
                    "notify batches published to lcsd nodes", NULL);
    if (w->redis == NULL || w->dirty == NULL || w->tokens == NULL) {
        snprintf(err, errlen, "bad Redis settings or out of memory");
        return false;
    }
    redis_set_on_connect(w->redis, hint_on_redis_connect, w);
    if (id == 0) {
        w->retention = retention_start(w);
        w->reach = reach_sampler_start(w);
        w->probe = logic_probe_start(w);
        if (w->probe == NULL || !procmetrics_register(app->metrics)) {
            snprintf(err, errlen, "out of memory (dependency probe)");
            return false;
        }
    }
    if (!health_beat_start(&app->beats[id], w->base)) {
        snprintf(err, errlen, "cannot start the heartbeat timer");
        return false;
    }
    /* /healthz, /livez, /readyz and /metrics are the last routes of the SDK
     * table (api_routes.c): without sdk_health the listener serves the rest. */
    size_t sdk_nroutes =
        c->sdk_health ? logic_sdk_nroutes : logic_sdk_nroutes - LOGIC_SDK_HEALTH_ROUTES;
    w->sdk = open_listener(w, "sdk", app->sdk_host, app->sdk_port, logic_sdk_routes, sdk_nroutes,
                           (size_t)c->sdk_max_body, &app->sdk_gate, api_precheck_user, err, errlen);
    if (w->sdk == NULL)
        return false;
    if (w->live->cors_on)
        http_server_set_cors(w->sdk, &w->live->cors);
    http_server_set_trusted_proxies(w->sdk, &app->trusted_proxies);
    w->internal =
        open_listener(w, "internal", app->internal_host, app->internal_port, logic_internal_routes,
                      logic_internal_nroutes, (size_t)c->internal_max_body, &app->internal_gate,
                      api_precheck_internal, err, errlen);
    if (w->internal != NULL)
        http_server_set_trusted_proxies(w->internal, &app->trusted_proxies);
    return w->internal != NULL;
}

static void *
worker_main(void *arg)
{
    struct logic_worker *w = arg;
    /* Signals are handled by the main thread only. */
    sigset_t all;
    sigfillset(&all);
    pthread_sigmask(SIG_BLOCK, &all, NULL);
    log_debug("worker_started", "worker=%d", w->id);
    event_base_dispatch(w->base);
    log_debug("worker_stopped", "worker=%d", w->id);
    return NULL;
}

bool
logic_worker_start(struct logic_worker *w)
{
    if (pthread_create(&w->thread, NULL, worker_main, w) != 0)
        return false;
    w->started = true;
    return true;
}

void
logic_worker_stop(struct logic_worker *w)
{
    if (w->stop_ev != NULL)
        event_active(w->stop_ev, EV_TIMEOUT, 0);
}

void
logic_worker_free(struct logic_worker *w)
{
    if (w->started)
        pthread_join(w->thread, NULL);
    w->started = false;
    http_server_free(w->sdk);
    http_server_free(w->internal);
    /* Clients first: freeing them completes their pending callbacks, which
     * may still use the retention job and the snapshot. */
    if (w->redis != NULL)
        redis_free(w->redis);
    for (int i = 0; i < LOGIC_MAX_SHARDS; i++)
        send_batcher_close(w->batchers[i]);
    for (int i = 0; i < LOGIC_MAX_SHARDS; i++) {
        if (w->shard_pg[i] != NULL && w->shard_pg[i] != w->pg)
            pg_pool_free(w->shard_pg[i]);
    }
    if (w->pg != NULL)
        pg_pool_free(w->pg);
    for (int i = 0; i < LOGIC_MAX_SHARDS; i++)
        send_batcher_free(w->batchers[i]);
    api_pull_spares_free(w);
    retention_free(w->retention);
    reach_sampler_free(w->reach);
    logic_probe_free(w->probe);
    if (w->app != NULL)
        health_beat_stop(&w->app->beats[w->id]);
    pubsnap_unref(w->snap);
    hint_dirty_free(w->dirty);
    api_token_cache_free(w->tokens);
    if (w->stop_ev != NULL)
        event_free(w->stop_ev);
    if (w->reload_ev != NULL)
        event_free(w->reload_ev);
    if (w->base != NULL)
        event_base_free(w->base);
    memset(w, 0, sizeof(*w));
}
