/*
 * evloop: see evloop.h.
 */
#include "evloop.h"

#include <time.h>

#include <event2/event.h>

double
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

struct waiter {
    struct event_base *base;
    cond_fn cond;
    void *arg;
};

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct waiter *w = arg;
    if (w->cond != NULL && w->cond(w->arg))
        event_base_loopbreak(w->base);
}

static void
deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    event_base_loopbreak(arg);
}

bool
run_until(struct event_base *base, cond_fn cond, void *arg, int timeout_ms)
{
    if (cond != NULL && cond(arg))
        return true;
    struct waiter w = {base, cond, arg};
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, &w);
    struct event *deadline = evtimer_new(base, deadline_cb, base);
    struct timeval t2 = {0, 2000};
    struct timeval to = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    event_add(tick, &t2);
    evtimer_add(deadline, &to);
    event_base_dispatch(base);
    event_free(tick);
    event_free(deadline);
    return cond != NULL && cond(arg);
}

void
run_for(struct event_base *base, int ms)
{
    (void)run_until(base, NULL, NULL, ms);
}
