/*
 * redis_block: a blocking, pipelined Redis client for threads that run no
 * event loop (logicd's fanout lanes). It speaks to one node, or to a Redis
 * Cluster: it reads the slot map from a seed node, keeps one connection
 * per master it needs, and sends each command to the master of its key's
 * slot, pipelined per master.
 *
 * It does not follow MOVED or ASK itself: a batch that met one (or any
 * error) returns false and the map is read again on the next call, so the
 * caller retries the batch once and hands what still fails to the event-
 * loop client (lib/redis), which follows redirects. The commands it is
 * meant for can be repeated safely (hint invalidations).
 */
#ifndef MBOX_REDIS_BLOCK_H
#define MBOX_REDIS_BLOCK_H

#include <stdbool.h>
#include <stddef.h>

#include "redis.h"

struct redis_block;

/* A client for cfg (cfg->nodes non-empty: cluster mode); connects on first use. */
struct redis_block *redis_block_new(const struct redis_config *cfg);
void redis_block_free(struct redis_block *b);

/*
 * Sends n commands, each already in RESP (cmds[i], lens[i], as made by
 * redisFormatCommand) with the key that routes it (keys[i], NUL-terminated;
 * ignored in single-node mode), pipelined per node, and reads every reply.
 * True when every command was answered without an error reply.
 */
bool redis_block_pipeline(struct redis_block *b, size_t n, char *const *cmds, const size_t *lens,
                          const char *const *keys);

/* Drops every connection and the slot map (the next call starts afresh). */
void redis_block_reset(struct redis_block *b);

#endif
