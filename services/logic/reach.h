/*
 * reach: the reach sampler. Every reach_sample_interval_s, worker 0 of each
 * logicd reads the reach counter (Redis HyperLogLog, api_notices.c) of
 * every prepublished or published notice that has no sample for the
 * current interval yet and writes the figures to notice_reach
 * (migrations/0004), which GET /v1/notices/{id}/stats returns as "series".
 *
 * One logicd at a time writes: the insert takes a transaction-scoped
 * advisory lock with pg_try_advisory_xact_lock and writes nothing when
 * another logicd holds it; the (notice_id, at) key keeps one sample per
 * notice and interval whoever comes later. (A session lock would pin one
 * pooled connection across the Redis round trips; the pool gives no such
 * guarantee.) At most REACH_MAX_NOTICES notices are sampled per tick.
 */
#ifndef LOGIC_REACH_H
#define LOGIC_REACH_H

#define REACH_MAX_NOTICES 1000

/* Samples kept per notice (older ones are deleted): a stats reply's series,
 * a day at the default one a minute. */
#define REACH_SERIES_MAX 1440

struct logic_worker;
struct reach_sampler;

struct reach_sampler *reach_sampler_start(struct logic_worker *w);
void reach_sampler_free(struct reach_sampler *s);

#endif
