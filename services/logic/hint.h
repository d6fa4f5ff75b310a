/*
 * hint: a per-mailbox "nothing after msg_id m" hint in Redis, so that a
 * sync with nothing new does not touch PostgreSQL.
 *
 * Key hint:{app:uid} is a hash with fields
 *   g  a generation, bumped by every writer after its commit;
 *   m  the mailbox's last msg_id as read from PostgreSQL, valid only for
 *      the generation in which it was written.
 *
 * Protocol:
 *   writer  commit in PostgreSQL, then INVALIDATE: HINCRBY g 1, HDEL m,
 *           before replying to the sender.
 *   reader  READ g and m. If m is present and m <= cursor.p, reply "nothing
 *           new" without PostgreSQL. Otherwise query PostgreSQL (rows after
 *           p and the header's last_msg_id L, one snapshot), then SET: store
 *           m = L only if g still equals what READ saw (Lua, atomic).
 *
 * Why a pull can never miss a committed message because of the hint:
 *   1. The hint never moves a cursor: a short-circuit returns no items and
 *      the same cursor, so the worst a wrong hint can do is delay, never
 *      skip (docs/design.md 4.6's guarantee holds whatever Redis says).
 *   2. A stale m (below a committed row) can only be written by a reader
 *      whose PostgreSQL snapshot predates that commit. The commit's writer
 *      bumps g after committing; the reader's SET then sees a changed g and
 *      does nothing, or it ran before the bump and the bump's HDEL removes
 *      it. Either way, once the writer replies to the sender, no stale m
 *      survives: every sync that starts after the send returned sees it.
 *   3. If the invalidation cannot reach Redis (Redis down), the send still
 *      succeeds; the mailbox is remembered in this worker's dirty list and
 *      invalidated again as soon as Redis is back (on reconnect, and every
 *      second while the list is not empty; a replay that fails is
 *      remembered again), before hints written meanwhile could matter for
 *      long. Every writer uses this list: the fanout thread hands the
 *      mailboxes it could not invalidate to the job's worker. A Redis that restarted has lost
 *      every hint anyway (it runs without persistence), and a reader whose
 *      READ and SET straddle a reconnect skips the SET (the connection
 *      generation changed). The one residual case, this worker cut off from
 *      a Redis that others still use with more dirty mailboxes than the
 *      list holds, delays those mailboxes by at most hint_ttl_s; it is
 *      counted in mbox_hint_dirty_dropped_total.
 *   4. Redis Cluster: replication is asynchronous, so a master that dies
 *      can take with it an invalidation it had acknowledged; its promoted
 *      replica would then still hold the old m. Each worker therefore
 *      remembers the invalidations acknowledged in the last 60 s (a ring
 *      of 65536) and replays them whenever the slot map changes or a
 *      master reconnects (the client's on-connect hook), which a failover
 *      always causes. Until that replay a sync may still be answered "nothing
 *      new" (a delay of seconds, never a skip, by point 1); dropped
 *      entries are counted in mbox_hint_recent_overwritten_total.
 *
 * Keys carry the hash tag {app:uid}, so Redis Cluster keeps each in one slot.
 */
#ifndef LOGIC_HINT_H
#define LOGIC_HINT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

struct logic_worker;
struct hint_dirty;

struct hint_read {
    bool usable; /* Redis answered */
    bool has_m;  /* m present: the mailbox has nothing after m */
    uint64_t m;
    char g[24]; /* generation as read ("" when absent) */
    uint64_t conn_gen;
};

typedef void (*hint_read_cb)(const struct hint_read *h, void *arg);
typedef void (*hint_done_cb)(void *arg);

/* A READ in flight; the caller's storage (kept in its request state: no allocation per sync). */
struct hint_read_op {
    hint_read_cb cb;
    void *arg;
    uint64_t conn_gen;
};

/*
 * READ; cb always called (usable=false when Redis is down or slow), at
 * once or from the Redis reply. op must stay valid until then; cb may free
 * it.
 */
void hint_read(struct logic_worker *w, uint64_t app_id, uint64_t uid, struct hint_read_op *op,
               hint_read_cb cb, void *arg);

/* SET m = last if the generation is unchanged; fire and forget. */
void hint_set(struct logic_worker *w, uint64_t app_id, uint64_t uid, const struct hint_read *seen,
              uint64_t last);

/*
 * INVALIDATE each mailbox (after a commit); done(arg) is called once all
 * answered or failed (failed ones go to the dirty list).
 */
void hint_invalidate(struct logic_worker *w, uint64_t app_id, const uint64_t *uids, int n,
                     hint_done_cb done, void *arg);

/*
 * Remembers invalidations another thread's connection had acknowledged
 * (the fanout lanes'), so a Redis Cluster failover replays them like the
 * worker's own (point 4 above). Nothing in single-node mode.
 */
void hint_remember_acked(struct logic_worker *w, uint64_t app_id, const int64_t *uids, size_t n);

/* hint:{app:uid} into buf. */
void hint_key(char *buf, size_t len, uint64_t app_id, uint64_t uid);

/* The INVALIDATE script (KEYS[1] = hint key, ARGV[1] = ttl), for bulk writers. */
extern const char hint_invalidate_lua[];

/* The worker's dirty list; replayed when its Redis client reconnects. */
struct hint_dirty *hint_dirty_new(void);
void hint_dirty_free(struct hint_dirty *d);
void hint_on_redis_connect(void *worker);

#endif
