/*
 * health: the pieces of /livez and /readyz both daemons share.
 *
 * A heartbeat is a timer on an event loop that stores the time every
 * HEALTH_BEAT_INTERVAL_MS; any thread can read how old the last beat is.
 * A loop that is stuck (a callback that never returns, a deadlock) stops
 * beating, and /livez answers 503 once a beat is older than
 * HEALTH_BEAT_STALE_MS.
 *
 * A dependency probe is the state of one periodic check of a dependency
 * (a Redis PING, a PostgreSQL SELECT 1) and its two metric series:
 * mbox_dependency_up{dep} (1 when the last check succeeded, else 0) and
 * mbox_dependency_latency_seconds{dep} (round trip of the successful
 * checks; failures are not observed, their time is the timeout).
 */
#ifndef MBOX_HEALTH_H
#define MBOX_HEALTH_H

#include <stdbool.h>
#include <stdint.h>

struct event_base;
struct event;
struct metrics;
struct metric;

#define HEALTH_BEAT_INTERVAL_MS 1000
#define HEALTH_BEAT_STALE_MS    5000

struct health_beat {
    int64_t last_us; /* CLOCK_MONOTONIC µs of the last beat; atomic */
    struct event *ev;
};

/* Beats now and then every HEALTH_BEAT_INTERVAL_MS on base's loop. */
bool health_beat_start(struct health_beat *b, struct event_base *base)
    __attribute__((warn_unused_result));
void health_beat_stop(struct health_beat *b);

/* Milliseconds since the last beat (any thread); INT64_MAX before the first. */
int64_t health_beat_age_ms(const struct health_beat *b);

/* CLOCK_MONOTONIC in microseconds. */
int64_t health_mono_us(void);

struct health_dep {
    char name[48];
    struct metric *up, *latency;
    bool inflight;    /* a check is waiting for its answer */
    int64_t start_us; /* when it was sent (health_mono_us) */
    bool ok;          /* result of the last finished check */
    char error[96];   /* why the last check failed ("" when ok) */
};

/* Names the probe and registers its series (up starts at 0). */
void health_dep_init(struct health_dep *d, struct metrics *m, const char *name);

/* A check is sent now. */
void health_dep_begin(struct health_dep *d);

/* The check finished: sets up, observes the latency when ok. error may be NULL. */
void health_dep_end(struct health_dep *d, bool ok, const char *error);

/* A state seen without a round trip (a subscriber's connection): sets up
 * and the error, observes no latency. */
void health_dep_state(struct health_dep *d, bool ok, const char *error);

#endif
