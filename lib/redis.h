/*
 * redis: Redis client driven by a libevent loop (hiredis async + its
 * libevent adapter), with what hiredis 0.14 lacks:
 *
 *   - command timeouts: each command has a libevent timer; on expiry its
 *     callback gets an error and the late reply, if any, is ignored;
 *   - reconnect with exponential backoff and jitter after any disconnect;
 *   - pub/sub: a subscriber client remembers its channels and subscribes
 *     again after every reconnect;
 *   - an on-connect hook (lcsd re-registers its routes there).
 *
 * A client is either a command client or a subscriber (Redis forbids
 * ordinary commands on a subscribed connection). Both belong to the thread
 * of their event_base. Commands issued while disconnected fail at once
 * (redis_command returns false): Redis holds only rebuildable state here,
 * so callers degrade (skip a hint, skip a notify) instead of waiting.
 *
 * Cluster mode (cfg.nodes set; lib/redis_cluster.c, docs/architecture.md):
 * the same API over a Redis Cluster. Each command goes to the master of its
 * key's slot (the first argument; EVAL/EVALSHA: the first key; PUBLISH is
 * sent as SPUBLISH, routed by the channel); MOVED, ASK, TRYAGAIN and
 * CLUSTERDOWN are followed within the command timeout. A subscriber uses
 * SSUBSCRIBE on the master of each channel's slot and follows slot moves
 * and failovers. Every command must touch one slot: every key and channel
 * carries a hash tag ({app:uid}, {n:id}, {node}), scripts get one key, and
 * nothing publishes from inside a script (the table in
 * docs/architecture.md lists each command and its slot).
 *
 * AUTH (cfg.password, with cfg.user for an ACL user) is the first command
 * of every connection in both modes; a refusal is logged (redis_auth_failed)
 * and retried with backoff.
 */
#ifndef MBOX_REDIS_H
#define MBOX_REDIS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

struct event_base;
struct metrics;
struct redis;

struct redis_config {
    const char *host;       /* copied; prefer an address (a name is resolved blocking) */
    int port;               /* 1..65535 */
    const char *nodes;      /* copied; "host:port,..." seeds: non-empty = cluster mode */
    const char *user;       /* copied; ACL user ("AUTH user password"); NULL/"" = AUTH password */
    const char *password;   /* copied; NULL/"" = no AUTH */
    int connect_timeout_ms; /* 0 = none */
    int command_timeout_ms; /* 0 = none */
    int backoff_min_ms;     /* first reconnect delay, > 0 */
    int backoff_max_ms;     /* cap of the doubling delay, >= backoff_min_ms */
};

/*
 * Command reply callback. reply is NULL on timeout, disconnect or when the
 * client is freed, with err set; otherwise err is NULL and reply (which may
 * be a REDIS_REPLY_ERROR) is owned by hiredis and valid during the call.
 */
typedef void (*redis_cb)(redisReply *reply, const char *err, void *arg);

/* Message callback of a subscriber: one per pub/sub message. */
typedef void (*redis_msg_cb)(const char *channel, const char *payload, size_t len, void *arg);

/* Creates a command client and starts connecting. NULL on bad config. */
struct redis *redis_new(struct event_base *base, const struct redis_config *cfg,
                        struct metrics *metrics);

/* Creates a subscriber client; on_msg gets every message of its channels. */
struct redis *redis_subscriber_new(struct event_base *base, const struct redis_config *cfg,
                                   redis_msg_cb on_msg, void *arg, struct metrics *metrics);

/* Frees the client; pending callbacks are called with an error first. */
void redis_free(struct redis *r);

/* Called (on the client's thread) after each successful (re)connect. */
void redis_set_on_connect(struct redis *r, void (*fn)(void *arg), void *arg);

/*
 * Single node: connected (and authenticated). Cluster: every slot has a
 * master this client is connected to; for a subscriber also every channel
 * confirmed by its master.
 */
bool redis_connected(const struct redis *r);

/*
 * Counts successful connects. Two reads with the same value bracket a span
 * with no reconnect, hence no Redis restart seen by this client (hint.c
 * relies on it). Cluster: grows on any master's (re)connect and on any
 * change of the slot map.
 */
uint64_t redis_conn_generation(const struct redis *r);

/*
 * Sends a command (hiredis format string). Returns false without calling cb
 * when disconnected (cluster: no connected master for the key's slot) or on
 * a subscriber; cb may be NULL (fire and forget).
 */
bool redis_command(struct redis *r, redis_cb cb, void *arg, const char *fmt, ...)
    __attribute__((warn_unused_result));

/* Same with an argument vector (binary safe; argvlen NULL: strlen of each). */
bool redis_command_argv(struct redis *r, redis_cb cb, void *arg, int argc, const char **argv,
                        const size_t *argvlen) __attribute__((warn_unused_result));

/*
 * Writes the RESP request for argv into buf (at most cap bytes, no NUL)
 * and returns its full length, which exceeds cap when it did not fit
 * (then buf holds a prefix). The bytes hiredis's redisFormatCommandArgv
 * produces. Pure; exposed for the unit suite.
 */
size_t redis_format_argv(char *buf, size_t cap, int argc, const char **argv, const size_t *argvlen);

/* Subscriber: adds a channel (subscribed now if connected, and after every reconnect). */
void redis_subscribe(struct redis *r, const char *channel);

/*
 * Metrics (when a registry is given): mbox_redis_commands_total{result="ok",
 * "error" (an error reply), "timeout", "disconnected" (lost in flight, or
 * refused because the client was down)}, the gauge mbox_redis_clients_connected (number
 * of connected clients of the registry) and mbox_redis_reconnects_total (connect
 * attempts after a failure or a loss). After 3 consecutive command timeouts
 * the connection is presumed dead and re-opened.
 */

/*
 * Reconnect delay in ms before retry number `attempt` (0 = first retry):
 * min_ms doubled per attempt up to max_ms, times a jitter factor in
 * [0.75, 1.25] drawn from *rng (xorshift state, advanced; 0 is allowed).
 * Pure; exposed for the unit suite.
 */
int redis_backoff_ms(int min_ms, int max_ms, unsigned attempt, uint64_t *rng);

#endif
