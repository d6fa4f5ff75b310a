/*
 * route: lcsd's Redis side.
 *
 * Routes: hash route:{<app_id>:<uid>}, field <device_id>, value
 * "<node_id> <conn_id>", EXPIRE route_ttl_s on the key (logicd's notify.c
 * reads them with HGETALL). Written at login, refreshed on activity once
 * more than half the TTL has passed, written again (pipelined) for every
 * live connection after the command client reconnects, removed at close
 * only while the value still names the closing connection.
 *
 * Channels (the subscriber client re-subscribes after every reconnect):
 *   lcs:{<node_id>}   lines for this node's connections
 *   lcs:broadcast     lines for every node
 * A message is one or more '\n'-terminated lines, fields separated by one
 * space, ids in decimal:
 *   n <app_id> <uid> <msg_id> <device_id> <conn_id>   notify one connection
 *   k <app_id> <uid> <device_id> <conn_id>            kick it (replaced elsewhere)
 *   p <app_id> <notice_id> <msg_id> <rate_per_s> <start_us> <expire_us> <login_only>
 *     <min_core_level> <max_core_level> <platforms>   start a paced notify of an app's
 *                                                     connections the notice targets
 *                                                     (pace.h); start_us/expire_us unix µs,
 *                                                     0 = now/never; platforms "-" = all, else
 *                                                     "ios,android"; the 5-field form of older
 *                                                     logicds paces every connection now
 *   x <app_id> <notice_id>                            stop that paced notify
 * Unknown line types are ignored (newer publishers, older lcsd).
 */
#ifndef LCS_ROUTE_H
#define LCS_ROUTE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct lcs;
struct conn;

/* Creates the subscriber, subscribes and installs the reconnect hook; false on failure. */
bool route_init(struct lcs *l) __attribute__((warn_unused_result));

/*
 * Writes c's route (taking the device over from any other connection; if
 * that one lives on another node, a kick line is published to it from the
 * same script). Calls session_route_done(c) once Redis answered, failed or
 * is down, so the login ack follows the route write.
 */
void route_register(struct conn *c);

/* Rewrites the route when more than half of route_ttl_s passed since the last write. */
void route_maybe_refresh(struct conn *c, uint32_t now_tick);

/* Removes c's route if it still names c. */
void route_unregister(struct conn *c);

/* Parses one channel message (exposed for tests and the subscriber callback). */
void route_on_message(struct lcs *l, const char *payload, size_t len);

#endif
