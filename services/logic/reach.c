/*
 * reach: the reach sampler (reach.h). A tick is three steps, each started
 * from the previous one's callback on worker 0's loop: the due notices
 * (PostgreSQL), their counters (one PFCOUNT each, pipelined on the
 * worker's Redis client), one insert of all figures (PostgreSQL).
 */
#include "reach.h"

#include <inttypes.h>
#include <stdlib.h>

#include <event2/event.h>

#include "api_io.h"
#include "log.h"
#include "logic.h"
#include "pg.h"
#include "redis.h"
#include "sql.h"

struct reach_sampler {
    struct logic_worker *w;
    struct event *timer;
    bool running;
    int64_t at;   /* start of the interval being sampled (us) */
    int n;        /* notices due this tick */
    int pending;  /* PFCOUNT replies still to come */
    int nfigures; /* counters read so far */
    uint64_t ids[REACH_MAX_NOTICES], figures[REACH_MAX_NOTICES];
    uint64_t due[REACH_MAX_NOTICES];
};

/* One PFCOUNT in flight: which notice it is for. */
struct reach_read {
    struct reach_sampler *s;
    int idx;
};

static void
arm(struct reach_sampler *s)
{
    s->running = false;
    struct timeval tv = {(time_t)s->w->app->cfg.reach_sample_interval_s, 0};
    event_add(s->timer, &tv);
}

static void query_due(struct reach_sampler *s);

static void
on_recorded(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct reach_sampler *s = arg;
    if (err->kind != PG_OK) {
        log_warn("reach_sample_failed", "message=%s", err->message ? err->message : "");
        arm(s);
        return;
    }
    const char *written = PQcmdTuples((PGresult *)res);
    log_debug("reach_sampled", "at=%" PRId64 " notices=%d written=%s", s->at, s->nfigures, written);
    /* A full batch that this logicd wrote: the next notices of the same
     * interval now, not in an interval (the due query skips those done). */
    if (s->n == REACH_MAX_NOTICES && atoi(written) > 0)
        query_due(s);
    else
        arm(s);
}

/* Every counter has answered: write the figures read. */
static void
record(struct reach_sampler *s)
{
    if (s->nfigures == 0) {
        arm(s);
        return;
    }
    char *ids = api_int8_array(s->ids, (size_t)s->nfigures);
    char *figs = api_int8_array(s->figures, (size_t)s->nfigures);
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, s->at);
    pg_param_text(&p, ids ? ids : "{}");
    pg_param_text(&p, figs ? figs : "{}");
    bool sent =
        ids != NULL && figs != NULL && pg_query(s->w->pg, SQL_REACH_RECORD, &p, on_recorded, s);
    free(ids);
    free(figs);
    if (!sent)
        arm(s);
}

static void
on_count(redisReply *reply, const char *err, void *arg)
{
    struct reach_read *rd = arg;
    struct reach_sampler *s = rd->s;
    /* A counter that cannot be read is skipped this tick (no sample is
     * better than a wrong one). */
    if (reply != NULL && reply->type == REDIS_REPLY_INTEGER) {
        s->ids[s->nfigures] = s->due[rd->idx];
        s->figures[s->nfigures] = (uint64_t)reply->integer;
        s->nfigures++;
    }
    free(rd);
    if (--s->pending == 0)
        record(s);
}

static void
on_due(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct reach_sampler *s = arg;
    if (err->kind != PG_OK) {
        log_warn("reach_sample_failed", "message=%s", err->message ? err->message : "");
        arm(s);
        return;
    }
    s->n = PQntuples(res) < REACH_MAX_NOTICES ? PQntuples(res) : REACH_MAX_NOTICES;
    s->nfigures = 0;
    /* One extra count while the commands are sent, so a reply that comes
     * synchronously (client down) cannot finish the tick half-way. */
    s->pending = 1;
    for (int i = 0; i < s->n; i++) {
        s->due[i] = (uint64_t)pg_get_i64(res, i, 0);
        struct reach_read *rd = malloc(sizeof(*rd));
        if (rd == NULL)
            continue;
        rd->s = s;
        rd->idx = i;
        s->pending++;
        if (!redis_command(s->w->redis, on_count, rd, "PFCOUNT reach:{n:%" PRIu64 "}", s->due[i])) {
            s->pending--;
            free(rd);
        }
    }
    if (--s->pending == 0)
        record(s);
}

/* The next batch of live notices without a sample in the interval s->at. */
static void
query_due(struct reach_sampler *s)
{
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, s->at);
    pg_param_i32(&p, REACH_MAX_NOTICES);
    if (!pg_query(s->w->pg, SQL_REACH_DUE, &p, on_due, s))
        arm(s);
}

static void
on_pruned(const PGresult *res, const struct pg_error *err, void *arg)
{
    (void)res;
    (void)arg;
    if (err->kind != PG_OK)
        log_warn("reach_prune_failed", "message=%s", err->message ? err->message : "");
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct reach_sampler *s = arg;
    if (s->running)
        return;
    s->running = true;
    int64_t step = s->w->app->cfg.reach_sample_interval_s * 1000000;
    s->at = logic_now_us() / step * step;
    /* Samples a stats reply no longer shows go (a table that only grows
     * would hold a row per live notice per interval, forever). */
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, s->at - (int64_t)REACH_SERIES_MAX * step);
    if (!pg_query(s->w->pg, SQL_REACH_PRUNE, &p, on_pruned, NULL))
        log_debug("reach_prune_skipped", "reason=postgres_unavailable");
    query_due(s);
}

struct reach_sampler *
reach_sampler_start(struct logic_worker *w)
{
    struct reach_sampler *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->w = w;
    s->timer = evtimer_new(w->base, on_tick, s);
    if (s->timer == NULL) {
        free(s);
        return NULL;
    }
    arm(s);
    return s;
}

void
reach_sampler_free(struct reach_sampler *s)
{
    if (s == NULL)
        return;
    event_free(s->timer);
    free(s);
}
