/*
 * redis_cluster: the cluster mode behind lib/redis.h (internal to the redis
 * module: callers use redis.h and do not see which mode is active).
 *
 * A cluster is a set of node clients (struct redis in single-node mode,
 * one per master) plus a slot map; a subscriber cluster also keeps one
 * sharded pub/sub connection per master that owns one of its channels.
 */
#ifndef MBOX_REDIS_CLUSTER_H
#define MBOX_REDIS_CLUSTER_H

#include "redis.h"

struct rcluster;

/* on_msg NULL: a command cluster; otherwise a sharded subscriber. NULL on bad config. */
struct rcluster *rcluster_new(struct event_base *base, const struct redis_config *cfg,
                              struct metrics *metrics, redis_msg_cb on_msg, void *arg);

/* Pending callbacks get an error first; the struct goes once no callback of it runs. */
void rcluster_free(struct rcluster *c);

void rcluster_set_on_connect(struct rcluster *c, void (*fn)(void *arg), void *arg);
bool rcluster_connected(const struct rcluster *c);
uint64_t rcluster_generation(const struct rcluster *c);

/* Routes a formatted RESP request (copied) by its key's slot. */
bool rcluster_command_formatted(struct rcluster *c, redis_cb cb, void *arg, const char *buf,
                                size_t len) __attribute__((warn_unused_result));

void rcluster_subscribe(struct rcluster *c, const char *channel);

/* From redis.c, for the cluster's node clients: sends a formatted request. */
bool redis_node_formatted(struct redis *r, redis_cb cb, void *arg, const char *buf, size_t len)
    __attribute__((warn_unused_result));

/* From redis.c: the TCP keepalive of every Redis connection. */
void redis_socket_keepalive(int fd);

#endif
