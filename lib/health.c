/*
 * health: heartbeats and dependency probe state (see health.h).
 */
#include "health.h"

#include <event2/event.h>

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

int64_t
health_mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
on_beat(evutil_socket_t fd, short what, void *arg)
{
    struct health_beat *b = arg;
    __atomic_store_n(&b->last_us, health_mono_us(), __ATOMIC_RELAXED);
}

bool
health_beat_start(struct health_beat *b, struct event_base *base)
{
    __atomic_store_n(&b->last_us, health_mono_us(), __ATOMIC_RELAXED);
    b->ev = event_new(base, -1, EV_PERSIST, on_beat, b);
    if (b->ev == NULL)
        return false;
    struct timeval tv = {HEALTH_BEAT_INTERVAL_MS / 1000, (HEALTH_BEAT_INTERVAL_MS % 1000) * 1000};
    return event_add(b->ev, &tv) == 0;
}

void
health_beat_stop(struct health_beat *b)
{
    if (b->ev != NULL)
        event_free(b->ev);
    b->ev = NULL;
}

int64_t
health_beat_age_ms(const struct health_beat *b)
{
    int64_t last = __atomic_load_n(&b->last_us, __ATOMIC_RELAXED);
    if (last == 0)
        return INT64_MAX;
    return (health_mono_us() - last) / 1000;
}

void
health_dep_init(struct health_dep *d, struct metrics *m, const char *name)
{
    memset(d, 0, sizeof(*d));
    snprintf(d->name, sizeof(d->name), "%s", name);
    snprintf(d->error, sizeof(d->error), "not checked yet");
    char label[80];
    snprintf(label, sizeof(label), "dep=\"%s\"", d->name);
    d->up = metrics_gauge(m, "mbox_dependency_up",
                          "1 when the last periodic check of the dependency succeeded", label);
    d->latency =
        metrics_histogram(m, "mbox_dependency_latency_seconds",
                          "round trip of the successful periodic dependency checks", label);
}

void
health_dep_begin(struct health_dep *d)
{
    d->inflight = true;
    d->start_us = health_mono_us();
}

void
health_dep_end(struct health_dep *d, bool ok, const char *error)
{
    d->inflight = false;
    d->ok = ok;
    metric_set(d->up, ok ? 1 : 0);
    if (ok) {
        metric_observe(d->latency, (double)(health_mono_us() - d->start_us) / 1e6);
        d->error[0] = '\0';
    } else {
        snprintf(d->error, sizeof(d->error), "%s", error != NULL ? error : "failed");
    }
}

void
health_dep_state(struct health_dep *d, bool ok, const char *error)
{
    d->ok = ok;
    metric_set(d->up, ok ? 1 : 0);
    if (ok)
        d->error[0] = '\0';
    else
        snprintf(d->error, sizeof(d->error), "%s", error != NULL ? error : "down");
}
