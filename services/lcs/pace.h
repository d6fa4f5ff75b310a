/*
 * pace: paced notify of a notice to the logged-in connections of an app
 * that the notice targets, on this node ("p" and "x" lines on
 * lcs:broadcast, see route.h).
 *
 * The rate is per lcsd node: every node receives the broadcast and paces
 * its own connections at rate_per_s, so the total rate is rate_per_s times
 * the number of nodes (the publisher divides if it wants a global cap).
 * A timer every paced_tick_ms adds rate x elapsed time to a credit and
 * sends that many notifies, so pulls arrive smoothly instead of in bursts.
 * The walk uses a cursor over the registry list (in connection id order)
 * that moves on when the connection under it is freed; connections that
 * arrive after the start are not visited (they sync at login anyway).
 *
 * Who is notified: connections of the app whose login platform, core_level
 * and token (guest or not) pass the notice's targeting, by the same rules
 * as sync (pub_targets() of services/logic/pubfilter.c, one copy of them).
 * Only published notices are paced (logicd sends no "p" at prepublish), so
 * the whitelist plays no part. A "p" whose start time is ahead waits for it
 * (one timer; the walk starts then); an expiry stops the walk.
 */
#ifndef LCS_PACE_H
#define LCS_PACE_H

#include <stdint.h>

#include "../logic/pubfilter.h"

struct lcs;

/* What a "p" line asks for. */
struct pace_spec {
    uint64_t app, notice, msg_id, rate_per_s;
    int64_t start_us;  /* unix µs to start at; 0 or past = now */
    int64_t expire_us; /* unix µs the notice expires at; 0 = never */
    /* targeting only: platforms, nplatforms, min/max_core_level, login_only */
    struct pub_notice target;
};

/* Starts (or restarts) the paced notify of (spec->app, spec->notice). */
void pace_start(struct lcs *l, const struct pace_spec *spec);

/* Stops it (the notice was stopped or retracted meanwhile), also while it waits for its start. */
void pace_stop(struct lcs *l, uint64_t app, uint64_t notice);

/* Frees every pacer (shutdown). */
void pace_free_all(struct lcs *l);

#endif
