/*
 * rcluster: a private Redis Cluster for integration suites (six nodes,
 * three masters, started by `ops/servers redis-cluster-start`, as ops/run
 * does) and the operator moves the suites play on it: which master owns a
 * slot, moving a slot (MOVED) or half-moving it (ASK), killing a master.
 * Commands go through blocking hiredis connections authenticated as the
 * cluster's ACL user.
 */
#ifndef MBOX_RCLUSTER_H
#define MBOX_RCLUSTER_H

#include <stdbool.h>
#include <sys/types.h>

#include <hiredis/hiredis.h>

#define RCL_NODES 6

struct rcl {
    char dir[256];
    int base; /* nodes on base .. base+5, cluster bus on +10000 */
    char user[32], pass[40];
    bool dead[RCL_NODES]; /* killed by rcl_kill */
};

/* Starts a cluster under dir on free ports, with ACL user/pass (both or neither). */
bool rcl_start(struct rcl *c, const char *dir, const char *user, const char *pass);
void rcl_stop(struct rcl *c);

/* "127.0.0.1:base" */
const char *rcl_seed(const struct rcl *c, char *buf, size_t len);

/* A blocking connection to a node, authenticated; NULL on failure. */
redisContext *rcl_connect(const struct rcl *c, int port);

/* Runs a command on a node and returns its reply (caller frees), NULL on failure. */
redisReply *rcl_cmd(const struct rcl *c, int port, const char *fmt, ...);

/* Port of the master that owns slot (asked of a live node), -1 if none. */
int rcl_owner(const struct rcl *c, unsigned slot);

/* Ports of the current masters (live ones), at most RCL_NODES; returns their count. */
int rcl_masters(const struct rcl *c, int *ports);

/* Half-moves slot from -> to: IMPORTING/MIGRATING, then migrates every key. */
bool rcl_slot_migrating(const struct rcl *c, unsigned slot, int from, int to);
/* Migrates one key of a half-moved slot. */
bool rcl_migrate_key(const struct rcl *c, int from, int to, const char *key);
/* Moves slot from -> to completely (keys migrated, every master told). */
bool rcl_move_slot(const struct rcl *c, unsigned slot, int from, int to);

/* SIGKILL of a node by the pid it was started with; waits until it is gone. */
bool rcl_kill(struct rcl *c, int port);

/* Waits until a live node reports a master other than `not_port` for slot; its port or -1. */
int rcl_wait_new_owner(const struct rcl *c, unsigned slot, int not_port, int timeout_ms);

#endif
