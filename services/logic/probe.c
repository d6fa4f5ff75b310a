/*
 * probe: the periodic dependency checks of worker 0 (probe.h).
 */
#include "probe.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>

#include "health.h"
#include "logic.h"
#include "pg.h"
#include "redis.h"

struct logic_probe {
    struct logic_worker *w;
    struct event *timer;
    struct health_dep redis;
    struct health_dep pg;
    int nshards;
    struct health_dep shard[LOGIC_MAX_SHARDS];
    struct pg_pool *shard_pool[LOGIC_MAX_SHARDS];
};

static void
on_ping(redisReply *reply, const char *err, void *arg)
{
    bool pong = err == NULL && reply != NULL && reply->type == REDIS_REPLY_STATUS &&
                strcmp(reply->str, "PONG") == 0;
    health_dep_end(arg, pong, err != NULL ? err : "unexpected reply to PING");
}

static void
on_select(const PGresult *res, const struct pg_error *err, void *arg)
{
    (void)res;
    health_dep_end(arg, err->kind == PG_OK, err->message ? err->message : "query failed");
}

/* One SELECT 1 on pool, unless the previous one is still waiting. */
static void
check_pg(struct health_dep *d, struct pg_pool *pool)
{
    if (d->inflight)
        return;
    health_dep_begin(d);
    if (!pg_query_sql(pool, "SELECT 1", NULL, on_select, d))
        health_dep_end(d, false, "no connection");
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct logic_probe *p = arg;
    if (!p->redis.inflight) {
        health_dep_begin(&p->redis);
        if (!redis_command(p->w->redis, on_ping, &p->redis, "PING"))
            health_dep_end(&p->redis, false, "not connected");
    }
    check_pg(&p->pg, p->w->pg);
    for (int i = 0; i < p->nshards; i++) {
        if (p->shard_pool[i] != NULL)
            check_pg(&p->shard[i], p->shard_pool[i]);
    }
}

struct logic_probe *
logic_probe_start(struct logic_worker *w)
{
    struct logic_probe *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->w = w;
    struct metrics *m = w->app->metrics;
    health_dep_init(&p->redis, m, "redis");
    health_dep_init(&p->pg, m, "postgres");
    /* A shard whose database is the public one is checked as "postgres". */
    p->nshards = w->app->nshards;
    for (int i = 0; i < p->nshards; i++) {
        if (w->shard_pg[i] == NULL || w->shard_pg[i] == w->pg)
            continue;
        char name[32];
        snprintf(name, sizeof(name), "postgres_shard_%d", i);
        health_dep_init(&p->shard[i], m, name);
        p->shard_pool[i] = w->shard_pg[i];
    }
    p->timer = event_new(w->base, -1, EV_PERSIST, on_tick, p);
    struct timeval tv = {PROBE_INTERVAL_MS / 1000, (PROBE_INTERVAL_MS % 1000) * 1000};
    if (p->timer == NULL || event_add(p->timer, &tv) != 0) {
        logic_probe_free(p);
        return NULL;
    }
    /* A first check as soon as the loop runs, so the series have values
     * before the first interval is over. */
    event_active(p->timer, EV_TIMEOUT, 0);
    return p;
}

void
logic_probe_free(struct logic_probe *p)
{
    if (p == NULL)
        return;
    if (p->timer != NULL)
        event_free(p->timer);
    free(p);
}
