/*
 * procmetrics: what a daemon says about itself on /metrics beside its own
 * series: mbox_build_info{version,commit} and the standard Prometheus
 * process metrics, read from /proc/self when /metrics is scraped (Linux):
 *
 *   process_cpu_seconds_total      counter  user + system CPU time
 *   process_resident_memory_bytes  gauge    resident set size
 *   process_open_fds               gauge    open file descriptors
 *   process_max_fds                gauge    RLIMIT_NOFILE (soft limit)
 *   process_start_time_seconds     gauge    start time, unix seconds
 *
 * The names, types and meanings are those of the Prometheus client
 * libraries' process collector, so the usual dashboards and alerts apply.
 */
#ifndef MBOX_PROCMETRICS_H
#define MBOX_PROCMETRICS_H

#include <stdbool.h>
#include <stdint.h>

struct metrics;
struct evbuffer;

/* The process figures as read at one moment; a field is -1 when its
 * source could not be read. */
struct proc_stats {
    double cpu_seconds;
    int64_t rss_bytes;
    int64_t open_fds;
    int64_t max_fds;
    double start_time_seconds;
};

/*
 * Registers mbox_build_info (version = the meson project version, commit =
 * the git commit the build was configured from, "unknown" outside a git
 * checkout) and the process collector on m. False on allocation failure.
 */
bool procmetrics_register(struct metrics *m) __attribute__((warn_unused_result));

/* Reads the figures of this process now. False when /proc/self/stat cannot
 * be read (the other fields may still be set). */
bool procmetrics_read(struct proc_stats *st);

/* Appends the process_* families as read now (a metrics collector). */
void procmetrics_render(struct evbuffer *out, void *arg);

/* The git commit compiled in ("unknown" without git). */
const char *procmetrics_commit(void);

#endif
