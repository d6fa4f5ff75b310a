/*
 * probe: what /livez and the mbox_dependency_* metrics of logicd rest on.
 *
 * Every worker's loop beats (health.h) into app->beats[id]; /livez reads
 * them all. Worker 0 also checks each dependency every PROBE_INTERVAL_MS
 * on its own clients: a Redis PING, and a SELECT 1 on its public-database
 * pool ("postgres") and on each shard pool of its own
 * ("postgres_shard_N"). The result of the last check is
 * mbox_dependency_up{dep}, the round trip of the successful ones
 * mbox_dependency_latency_seconds{dep}. These are worker 0's connections:
 * another worker's pool that is down shows in /readyz and /healthz
 * (postgres.workers_up), not here.
 */
#ifndef LOGIC_PROBE_H
#define LOGIC_PROBE_H

#define PROBE_INTERVAL_MS 5000

struct logic_worker;
struct logic_probe;

/* Starts the dependency checks on w's loop (worker 0); NULL on failure. */
struct logic_probe *logic_probe_start(struct logic_worker *w);

/* Stops them. Call after the worker's clients are freed (their pending
 * callbacks use the probe). */
void logic_probe_free(struct logic_probe *p);

#endif
