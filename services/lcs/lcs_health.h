/*
 * lcs_health: lcsd's /livez and /readyz (admin listener) and its
 * dependency metrics.
 *
 * /livez: the loop's heartbeat (lib/health.h) is fresh. lcsd has one
 * loop, which also answers /livez, so a stuck loop shows as no answer
 * (the prober's timeout) rather than as a 503.
 * /readyz: both Redis clients are connected, the subscriber being the one
 * that carries every notify (lcs:{node} and lcs:broadcast), and lcsd is
 * not draining after SIGTERM.
 * Every PROBE_INTERVAL_MS the command client is checked with a PING
 * (mbox_dependency_up / _latency_seconds{dep="redis"}); the subscriber's
 * state is its connection (dep="redis_subscriber", no latency: a
 * subscribed RESP2 connection takes no ordinary command).
 */
#ifndef LCS_HEALTH_H
#define LCS_HEALTH_H

#define LCS_PROBE_INTERVAL_MS 5000

struct lcs;
struct lcs_health;
struct http_req;

/* Starts the heartbeat and the probe on l's loop (after l->redis and l->sub exist). */
struct lcs_health *lcs_health_start(struct lcs *l);

/* Call after the Redis clients are freed (their pending callbacks use it). */
void lcs_health_free(struct lcs_health *h);

/* Admin routes; ctx is the struct lcs. */
void lcs_livez(struct http_req *r, void *ctx);
void lcs_readyz(struct http_req *r, void *ctx);

#endif
