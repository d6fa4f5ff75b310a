/*
 * pace: paced notify of a notice to every logged-in connection of an app
 * on this node ("p" and "x" lines on lcs:broadcast, see route.h).
 *
 * The rate is per lcsd node: every node receives the broadcast and paces
 * its own connections at rate_per_s, so the total rate is rate_per_s times
 * the number of nodes (the publisher divides if it wants a global cap).
 * A timer every paced_tick_ms adds rate x elapsed time to a credit and
 * sends that many notifies, so pulls arrive smoothly instead of in bursts.
 * The walk uses a cursor over the registry list (in connection id order)
 * that moves on when the connection under it is freed; connections that
 * arrive after the start are not visited (they sync at login anyway).
 */
#ifndef LCS_PACE_H
#define LCS_PACE_H

#include <stdint.h>

struct lcs;

/* Starts (or restarts) the paced notify of (app, notice) with msg_id at rate_per_s. */
void pace_start(struct lcs *l, uint64_t app, uint64_t notice, uint64_t msg_id, uint64_t rate_per_s);

/* Stops it (the notice was stopped or retracted meanwhile). */
void pace_stop(struct lcs *l, uint64_t app, uint64_t notice);

/* Frees every pacer (shutdown). */
void pace_free_all(struct lcs *l);

#endif
