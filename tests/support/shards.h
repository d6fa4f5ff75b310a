/*
 * shards: extra PostgreSQL servers for suites that run logicd with
 * pg_shards (docs/design.md 3.6). Each one is a private cluster started
 * with ops/servers in its own subdirectory of the harness directory, so
 * harness_stop() removes its files; harness_shard_stop() stops it first.
 */
#ifndef MBOX_SHARDS_H
#define MBOX_SHARDS_H

#include <stdbool.h>
#include <stddef.h>

#include "harness.h"

struct harness_shard {
    char dir[320];
    int port;
    char password[33];
    char uri[256]; /* postgresql://mbox:...@127.0.0.1:port/mbox */
};

/* Starts a PostgreSQL named name under h->dir. False (and why on stderr) on failure. */
bool harness_shard_start(const struct harness *h, const char *name, struct harness_shard *s);

/* Stops it keeping its data, and starts it again on the same port (fault tests). */
bool harness_shard_pause(struct harness_shard *s);
bool harness_shard_resume(struct harness_shard *s);

/* Stops it and deletes its cluster. */
void harness_shard_stop(struct harness_shard *s);

/* The harness's own PostgreSQL as a postgresql:// URI (what pg_shards takes). */
void harness_pg_uri(const struct harness *h, char *out, size_t len);

#endif
