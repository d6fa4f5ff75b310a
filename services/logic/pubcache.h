/*
 * pubcache: the public mailbox in memory (docs/design.md section 2).
 *
 * A poller thread per logicd process reads, every poll_interval_ms, only
 * what changed since its last seq (notice rows with seq > last; seq
 * commits in order, see migrations/0002) and the whitelist when its
 * version changed, then builds a new immutable snapshot. The snapshot is
 * handed to every worker through its event loop (event_base_once), and a
 * worker swaps its own pointer on its own thread: request handlers read
 * w->snap with no lock and no atomic on the hot path. Snapshots are
 * reference counted (one reference per worker holding it plus the
 * poller's); the last release frees it.
 *
 * The poller also activates scheduled notices whose start_at has come
 * (an idempotent UPDATE any logicd may run) so they get a new seq.
 *
 * If PostgreSQL is down the last snapshot keeps serving; /healthz reports
 * the age of the last successful poll.
 */
#ifndef LOGIC_PUBCACHE_H
#define LOGIC_PUBCACHE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pubfilter.h"

struct logic;
struct logic_worker;

struct pub_snapshot {
    int refs; /* atomic */
    uint64_t max_seq;
    size_t count;
    struct pub_notice **notices; /* sorted by seq; live ones only */
    /* whitelist: sorted (app_id, uid) pairs */
    size_t nwhite;
    uint64_t (*white)[2];
    uint64_t white_version;
    int64_t built_us;
};

struct pubcache;

/* Starts the poller for app (which owns the workers). NULL on failure. */
struct pubcache *pubcache_start(struct logic *app, struct logic_worker *workers, int nworkers);
void pubcache_stop(struct pubcache *c);

/* Unix microseconds of the last successful poll (0 = never). */
int64_t pubcache_last_ok_us(const struct pubcache *c);

/* Asks the poller to poll now (after an ops change on this process). */
void pubcache_kick(struct pubcache *c);

/* Releases a worker's reference. */
void pubsnap_unref(struct pub_snapshot *s);

/* Is (app_id, uid) whitelisted in s? */
bool pubsnap_whitelisted(const struct pub_snapshot *s, uint64_t app_id, uint64_t uid);

/* The notice with this id, or NULL. */
const struct pub_notice *pubsnap_find(const struct pub_snapshot *s, uint64_t notice_id);

/*
 * Loads whitelist_file ("app_id uid" lines, # comments) into the database
 * at start through mbox_whitelist_change (migrations/0003), the head-locked
 * path of POST /v1/whitelist, so listed uids receive the app's prepublished
 * notices their cursors passed. An err containing "expected" is a bad file
 * (a config error); anything else is the database's.
 */
bool pubcache_load_whitelist_file(const char *conninfo, const char *path, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
