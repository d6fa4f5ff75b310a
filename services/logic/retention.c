/*
 * retention: the expired-row deletion job (retention.h). Each tick walks
 * the shards one after the other (docs/design.md 3.6), each in bounded
 * batches; with one database that is the one pass it always was.
 */
#include "retention.h"

#include <stdlib.h>

#include <event2/event.h>

#include "log.h"
#include "logic.h"
#include "metrics.h"
#include "pg.h"
#include "sql.h"

#define RETENTION_MAX_BATCHES 20

struct retention {
    struct logic_worker *w;
    struct event *timer;
    int batches; /* in the current tick, on the current shard */
    int shard;   /* the shard being cleaned */
    bool running;
};

static void retention_batch(struct retention *rt);
static void arm(struct retention *rt);

/* Moves to the next shard with a pool of its own, or ends the tick. */
static void
next_shard(struct retention *rt)
{
    struct logic_worker *w = rt->w;
    for (rt->shard++; rt->shard < w->app->nshards; rt->shard++) {
        bool seen = false;
        for (int j = 0; j < rt->shard && !seen; j++)
            seen = w->shard_pg[j] == w->shard_pg[rt->shard];
        if (!seen) {
            rt->batches = 0;
            retention_batch(rt);
            return;
        }
    }
    rt->running = false;
    arm(rt);
}

static void
arm(struct retention *rt)
{
    struct timeval tv = {(time_t)rt->w->app->cfg.retention_interval_s, 0};
    event_add(rt->timer, &tv);
}

static void
on_deleted(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct retention *rt = arg;
    if (err->kind != PG_OK) {
        log_warn("retention_failed", "shard=%d message=%s", rt->shard,
                 err->message ? err->message : "");
        next_shard(rt); /* one shard down does not stop the others' cleaning */
        return;
    }
    long n = strtol(PQcmdTuples((PGresult *)res), NULL, 10);
    metric_add(metrics_counter(rt->w->app->metrics, "mbox_retention_deleted_total",
                               "expired private rows deleted", NULL),
               (uint64_t)n);
    if (n > 0)
        log_info("retention_deleted", "shard=%d rows=%ld", rt->shard, n);
    if (n == rt->w->app->cfg.retention_batch && ++rt->batches < RETENTION_MAX_BATCHES) {
        retention_batch(rt);
        return;
    }
    next_shard(rt);
}

static void
retention_batch(struct retention *rt)
{
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, logic_now_us());
    pg_param_i32(&p, (int32_t)rt->w->app->cfg.retention_batch);
    if (!pg_query(rt->w->shard_pg[rt->shard], SQL_RETENTION, &p, on_deleted, rt))
        next_shard(rt);
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct retention *rt = arg;
    if (rt->running)
        return;
    rt->running = true;
    rt->batches = 0;
    rt->shard = 0;
    retention_batch(rt);
}

struct retention *
retention_start(struct logic_worker *w)
{
    struct retention *rt = calloc(1, sizeof(*rt));
    if (rt == NULL)
        return NULL;
    rt->w = w;
    rt->timer = evtimer_new(w->base, on_tick, rt);
    arm(rt);
    return rt;
}

void
retention_free(struct retention *rt)
{
    if (rt == NULL)
        return;
    event_free(rt->timer);
    free(rt);
}
