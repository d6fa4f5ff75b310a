/*
 * shard_db: the bucket map and the shard identities in PostgreSQL
 * (migrations/0005, docs/design.md 3.6). Blocking libpq on purpose: both
 * run before the daemon serves anything.
 */
#ifndef LOGIC_SHARD_DB_H
#define LOGIC_SHARD_DB_H

#include <stdbool.h>
#include <stddef.h>

struct shard_map;

/*
 * `logicd --migrate` with pg_shards, after the migrations: creates the
 * cluster id once, writes each shard's identity (its position in shards[])
 * and the map spread in ranges over the n shards, unless they exist. Safe
 * to re-run; a re-run with another shard count or order fails (one line in
 * err) and changes nothing.
 */
bool shard_db_init(const char *public_conninfo, char *const *shards, int n, char *err,
                   size_t errlen) __attribute__((warn_unused_result));

/*
 * At start: reads the map from the public database into m and checks that
 * shards[] are the databases it was made for, in that order (count,
 * cluster id, each one's position). With n == 0 (one database) it only
 * checks that the public database has no map over several shards. One
 * line in err.
 */
bool shard_db_load(const char *public_conninfo, char *const *shards, int n, struct shard_map *m,
                   char *err, size_t errlen) __attribute__((warn_unused_result));

#include <libpq-fe.h>

/*
 * The public-cache poller, each poll with pg_shards set: reads the map
 * version on pub (an open connection to the public database) and, when it
 * moved on, the rows changed since m->version, and stores their shards
 * into m (relaxed atomics, see shard.h). *changed counts the buckets
 * whose shard changed. False (one line in err) when a query failed; the
 * map is then unchanged or partly updated, and the next call repeats it.
 */
bool shard_db_refresh(PGconn *pub, struct shard_map *m, int *changed, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
