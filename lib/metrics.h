/*
 * metrics: counters, gauges and histograms shared by every thread of a
 * process, rendered in the Prometheus text exposition format.
 *
 * Series are registered by (name, labels) and live as long as the registry;
 * registering the same pair again returns the same series, so a hot path can
 * cache the pointer and a rare path can look it up each time. Updates are
 * lock-free atomics; registration and rendering take the registry mutex.
 *
 * Labels are passed pre-rendered: "route=\"/v1/sync\",status=\"200\"".
 */
#ifndef MBOX_METRICS_H
#define MBOX_METRICS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct metrics;
struct metric;
struct evbuffer;

enum metric_type { METRIC_COUNTER, METRIC_GAUGE, METRIC_HISTOGRAM };

/* Creates an empty registry. Returns NULL on allocation failure. */
struct metrics *metrics_new(void);
void metrics_free(struct metrics *m);

/*
 * Returns the series (name, labels), creating it with the given help text.
 * labels may be NULL or "". Histograms use the default latency buckets in
 * seconds (0.0001 … 10). Returns NULL on allocation failure; the update
 * functions accept NULL and do nothing, so callers need not check.
 */
struct metric *metrics_counter(struct metrics *m, const char *name, const char *help,
                               const char *labels);
struct metric *metrics_gauge(struct metrics *m, const char *name, const char *help,
                             const char *labels);
struct metric *metrics_histogram(struct metrics *m, const char *name, const char *help,
                                 const char *labels);

void metric_inc(struct metric *c);
void metric_add(struct metric *c, uint64_t n);
void metric_set(struct metric *g, int64_t v);     /* gauges */
void metric_gauge_add(struct metric *g, int64_t d);
void metric_observe(struct metric *h, double value); /* histograms, value in seconds */

/* Current value of a counter or gauge (tests, health reports). */
int64_t metric_value(const struct metric *c);

/*
 * A collector appends families of its own (complete "# HELP"/"# TYPE"
 * blocks) when the registry is rendered: for values read at scrape time,
 * such as the process figures of procmetrics.h. It runs on the scraping
 * thread, without the registry mutex, after the registered families.
 */
typedef void (*metrics_collector_fn)(struct evbuffer *out, void *arg);

#define METRICS_MAX_COLLECTORS 4

/* Adds a collector (at most METRICS_MAX_COLLECTORS; false beyond). */
bool metrics_add_collector(struct metrics *m, metrics_collector_fn fn, void *arg)
    __attribute__((warn_unused_result));

/* Appends the whole registry, then each collector's output, in Prometheus
 * text format (version 0.0.4). */
void metrics_render(struct metrics *m, struct evbuffer *out);

#endif
