/*
 * shard: which PostgreSQL database holds a private mailbox (docs/design.md
 * 3.4). Pure code, no I/O: shard_db.h reads and writes the map.
 *
 * A mailbox (app_id, uid) falls in one of LOGIC_BUCKETS buckets by a fixed
 * hash; the bucket map in the public database names the shard of each
 * bucket. The hash can never change: every logicd, the move tool and the
 * SQL function mbox_bucket() (migrations/0005) must agree on it, and the
 * unit test pins its values.
 */
#ifndef LOGIC_SHARD_H
#define LOGIC_SHARD_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#define LOGIC_BUCKETS 4096
/* Most entries of pg_shards. */
#define LOGIC_MAX_SHARDS 64

/* The bucket of mailbox (app_id, uid): 0 .. LOGIC_BUCKETS-1. */
unsigned shard_bucket(uint64_t app_id, uint64_t uid);

/*
 * The bucket map as logicd uses it: read at start (shard_db_load), shared
 * by every worker, and updated in place by the public-cache poller when a
 * bucket moves (shard_db_refresh). Entries are single bytes read and
 * written with relaxed atomics: a worker may route with the old entry a
 * moment longer, which the shards' fences make safe (migrations/0006).
 */
struct shard_map {
    int64_t version;
    int nshards;
    uint8_t shard_of[LOGIC_BUCKETS]; /* bucket -> shard index */
};

/* The shard index of mailbox (app_id, uid). */
static inline int
shard_of(const struct shard_map *m, uint64_t app_id, uint64_t uid)
{
    return __atomic_load_n(&m->shard_of[shard_bucket(app_id, uid)], __ATOMIC_RELAXED);
}

/*
 * Splits pg_shards (whitespace-separated libpq URIs) into at most max
 * entries, each a new string in out[] (caller frees with shard_list_free).
 * Returns the count, 0 for an empty list, -1 with one line in err when an
 * entry is not a postgres:// or postgresql:// URI (a key=value string has
 * spaces of its own and cannot be told apart) or there are too many.
 */
int shard_list_parse(const char *s, char **out, int max, char *err, size_t errlen);
void shard_list_free(char **list, int n);

/* The shard of bucket b in a fresh map over n shards: contiguous ranges. */
int shard_initial(unsigned b, int n);

/*
 * Checks a map read from the database before it is used: every bucket
 * present exactly once (seen[] counts), every shard index below nshards,
 * nshards the configured count. One line in err.
 */
bool shard_map_check(const struct shard_map *m, const uint16_t *seen, int configured, char *err,
                     size_t errlen) __attribute__((warn_unused_result));

/*
 * `logicd --move-bucket B --to S` (bucket_move.h): removes both options and
 * their values from argv (argc updated) into *bucket and *to. Returns 1
 * when they were given, 0 when neither was, -1 with one line in err when
 * one is malformed, out of range (bucket < LOGIC_BUCKETS, shard <
 * LOGIC_MAX_SHARDS) or given without the other.
 */
int shard_move_args(int *argc, char **argv, unsigned *bucket, int *to, char *err, size_t errlen);

#endif
