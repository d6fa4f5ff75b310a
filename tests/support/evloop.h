/*
 * evloop: drive a libevent loop from a test until a condition holds, for
 * suites that test asynchronous clients (lib/redis) on their own loop.
 */
#ifndef MBOX_TEST_EVLOOP_H
#define MBOX_TEST_EVLOOP_H

#include <stdbool.h>

struct event_base;

/* Monotonic time in milliseconds. */
double now_ms(void);

typedef bool (*cond_fn)(void *arg);

/* Runs the loop until cond(arg) holds (checked every 2 ms) or timeout_ms
 * passes; returns cond(arg) then (false for a NULL cond). */
bool run_until(struct event_base *base, cond_fn cond, void *arg, int timeout_ms);

/* Runs the loop for ms milliseconds. */
void run_for(struct event_base *base, int ms);

#endif
