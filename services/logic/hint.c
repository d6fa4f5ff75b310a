/*
 * hint: the Redis "nothing new" hint of a mailbox (see hint.h for the
 * protocol and why it cannot make a pull miss a message).
 */
#include "hint.h"
#include "decimal.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>

#include "log.h"
#include "logic.h"
#include "metrics.h"
#include "redis.h"

#define HINT_DIRTY_CAP 65536
/* "hint:{" + 20 digits + ":" + 20 digits + "}" + NUL */
#define HINT_KEY_MAX 64

/* SET: store m only if the generation is still the one the reader saw. */
static const char set_script[] = "local g = redis.call('HGET', KEYS[1], 'g') or ''\n"
                                 "if g == ARGV[1] then\n"
                                 "  redis.call('HSET', KEYS[1], 'm', ARGV[2])\n"
                                 "  redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
                                 "  return 1\n"
                                 "end\n"
                                 "return 0\n";

/* INVALIDATE: a new generation without m. */
const char hint_invalidate_lua[] = "redis.call('HINCRBY', KEYS[1], 'g', 1)\n"
                                   "redis.call('HDEL', KEYS[1], 'm')\n"
                                   "redis.call('EXPIRE', KEYS[1], ARGV[1])\n"
                                   "return 1\n";

struct hint_mbox {
    uint64_t app_id, uid;
};

struct hint_recent {
    uint64_t app_id, uid;
    int64_t at_us;
};

struct hint_dirty {
    struct hint_mbox *items;
    int n;
    struct event *retry; /* replays while the list is not empty (created on first use) */
    /* Redis Cluster only: invalidations acknowledged in the last
     * HINT_RECENT_S, a ring (see hint.h, point 4) */
    struct hint_recent *recent;
    int recent_head, recent_n, recent_cap;
};

/* Acknowledged invalidations remembered for a replay after a failover
 * (Redis Cluster): at most this many per worker, at most this old. The
 * ring starts at HINT_RECENT_MIN and doubles only when it is full of
 * entries younger than HINT_RECENT_S, so its memory follows the rate of
 * the last minute, not the cap. */
#define HINT_RECENT_CAP 65536
#define HINT_RECENT_MIN 1024
#define HINT_RECENT_S   60

/* How often a non-empty dirty list is replayed while Redis stays connected. */
#define HINT_REPLAY_INTERVAL_MS 1000

static void replay_tick(evutil_socket_t fd, short what, void *arg);

/* hint:{app:uid} into buf (without printf: this runs on every sync); returns its length. */
static size_t
hint_key_len(char *buf, size_t len, uint64_t app_id, uint64_t uid)
{
    char tmp[HINT_KEY_MAX];
    char *end = tmp + sizeof(tmp);
    *--end = '}';
    char *p = decimal_u64_back(uid, end);
    *--p = ':';
    p = decimal_u64_back(app_id, p);
    memcpy(p - 6, "hint:{", 6);
    p -= 6;
    size_t n = (size_t)(tmp + sizeof(tmp) - p);
    if (len == 0)
        return 0;
    if (n > len - 1)
        n = len - 1;
    memcpy(buf, p, n);
    buf[n] = '\0';
    return n;
}

void
hint_key(char *buf, size_t len, uint64_t app_id, uint64_t uid)
{
    (void)hint_key_len(buf, len, app_id, uid);
}

struct hint_dirty *
hint_dirty_new(void)
{
    struct hint_dirty *d = calloc(1, sizeof(*d));
    if (d != NULL)
        d->items = calloc(HINT_DIRTY_CAP, sizeof(d->items[0]));
    if (d != NULL && d->items == NULL) {
        free(d);
        d = NULL;
    }
    return d;
}

void
hint_dirty_free(struct hint_dirty *d)
{
    if (d != NULL) {
        if (d->retry != NULL)
            event_free(d->retry);
        free(d->items);
        free(d->recent);
    }
    free(d);
}

/* Doubles the ring (at most HINT_RECENT_CAP), its entries from index 0
 * in age order; false when it cannot grow. */
static bool
recent_grow(struct hint_dirty *d)
{
    int cap = d->recent_cap ? d->recent_cap * 2 : HINT_RECENT_MIN;
    if (cap > HINT_RECENT_CAP)
        return false;
    struct hint_recent *r = malloc((size_t)cap * sizeof(*r));
    if (r == NULL)
        return false;
    for (int k = 0; k < d->recent_n; k++)
        r[k] = d->recent[(d->recent_head + k) % d->recent_cap];
    free(d->recent);
    d->recent = r;
    d->recent_cap = cap;
    d->recent_head = 0;
    return true;
}

/*
 * Remembers an acknowledged invalidation (Redis Cluster only) for
 * HINT_RECENT_S. Older entries leave the ring as new ones come; a full
 * ring grows up to HINT_RECENT_CAP, then its oldest entry is overwritten,
 * which is counted, since a failover right then could leave its mailbox's
 * hint stale for up to hint_ttl_s.
 */
static void
recent_add(struct logic_worker *w, uint64_t app_id, uint64_t uid)
{
    struct hint_dirty *d = w->dirty;
    if (w->app->cfg.redis_nodes == NULL || w->app->cfg.redis_nodes[0] == '\0')
        return;
    int64_t now = logic_now_us(), since = now - (int64_t)HINT_RECENT_S * 1000000;
    while (d->recent_n > 0 && d->recent[d->recent_head].at_us < since) {
        d->recent_head = (d->recent_head + 1) % d->recent_cap;
        d->recent_n--;
    }
    if (d->recent_n == d->recent_cap && !recent_grow(d)) {
        if (d->recent_cap == 0)
            return;
        metric_inc(metrics_counter(w->app->metrics, "mbox_hint_recent_overwritten_total",
                                   "acknowledged invalidations dropped from the failover "
                                   "replay ring while younger than its window",
                                   NULL));
        d->recent_head = (d->recent_head + 1) % d->recent_cap;
        d->recent_n--;
    }
    d->recent[(d->recent_head + d->recent_n) % d->recent_cap] =
        (struct hint_recent){app_id, uid, now};
    d->recent_n++;
}

void
hint_remember_acked(struct logic_worker *w, uint64_t app_id, const int64_t *uids, size_t n)
{
    for (size_t i = 0; i < n; i++)
        recent_add(w, app_id, (uint64_t)uids[i]);
}

/* Replays the list within HINT_REPLAY_INTERVAL_MS (a command timeout does
 * not always end in a reconnect, so the on-connect replay is not enough). */
static void
arm_replay(struct logic_worker *w)
{
    struct hint_dirty *d = w->dirty;
    if (d->retry == NULL)
        d->retry = evtimer_new(w->base, replay_tick, w);
    if (d->retry == NULL || evtimer_pending(d->retry, NULL))
        return;
    struct timeval tv = {HINT_REPLAY_INTERVAL_MS / 1000, (HINT_REPLAY_INTERVAL_MS % 1000) * 1000};
    evtimer_add(d->retry, &tv);
}

/*
 * Remembers a mailbox whose invalidation did not reach Redis. Every writer
 * ends here on failure (sends, recalls, fanout batches handed over by the
 * fanout thread, and failed replays), so there is one replay mechanism.
 */
static void
dirty_add(struct logic_worker *w, uint64_t app_id, uint64_t uid)
{
    struct hint_dirty *d = w->dirty;
    arm_replay(w);
    if (d->n == HINT_DIRTY_CAP) {
        metric_inc(metrics_counter(w->app->metrics, "mbox_hint_dirty_dropped_total",
                                   "mailboxes whose hint could not be invalidated or remembered",
                                   NULL));
        return;
    }
    d->items[d->n].app_id = app_id;
    d->items[d->n].uid = uid;
    d->n++;
}

/* ---- READ ---- */

static void
on_read(redisReply *reply, const char *err, void *arg)
{
    struct hint_read_op *op = arg;
    struct hint_read h;
    memset(&h, 0, sizeof(h));
    h.conn_gen = op->conn_gen;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2) {
        redisReply *g = reply->element[0], *m = reply->element[1];
        h.usable = true;
        if (g->type == REDIS_REPLY_STRING && g->len < sizeof(h.g)) {
            memcpy(h.g, g->str, g->len);
            h.g[g->len] = '\0';
        }
        if (m->type == REDIS_REPLY_STRING)
            /* m as hint_set writes it; anything else is no hint (the
             * sync then reads PostgreSQL: the safe side). */
            h.has_m = decimal_u64_parse(m->str, m->len, &h.m);
    }
    /* cb may free op (it lives in the caller's state). */
    op->cb(&h, op->arg);
}

void
hint_read(struct logic_worker *w, uint64_t app_id, uint64_t uid, struct hint_read_op *op,
          hint_read_cb cb, void *arg)
{
    char key[HINT_KEY_MAX];
    size_t keylen = hint_key_len(key, sizeof(key), app_id, uid);
    op->cb = cb;
    op->arg = arg;
    op->conn_gen = redis_conn_generation(w->redis);
    const char *argv[4] = {"HMGET", key, "g", "m"};
    const size_t lens[4] = {5, keylen, 1, 1};
    if (redis_command_argv(w->redis, on_read, op, 4, argv, lens))
        return;
    struct hint_read h;
    memset(&h, 0, sizeof(h));
    cb(&h, arg);
}

/* ---- SET ---- */

void
hint_set(struct logic_worker *w, uint64_t app_id, uint64_t uid, const struct hint_read *seen,
         uint64_t last)
{
    /* A reconnect between READ and SET may be a Redis restart: skip. */
    if (!seen->usable || seen->conn_gen != redis_conn_generation(w->redis))
        return;
    char key[64], lastbuf[24], ttl[24];
    hint_key(key, sizeof(key), app_id, uid);
    snprintf(lastbuf, sizeof(lastbuf), "%" PRIu64, last);
    snprintf(ttl, sizeof(ttl), "%" PRId64, w->app->cfg.hint_ttl_s);
    if (!redis_command(w->redis, NULL, NULL, "EVAL %s 1 %s %s %s %s", set_script, key, seen->g,
                       lastbuf, ttl))
        log_debug("hint_set_skipped", "reason=redis_down");
}

/* ---- INVALIDATE ---- */

struct inval_ctx {
    struct logic_worker *w;
    int pending;
    hint_done_cb done;
    void *arg;
};

struct inval_one {
    struct inval_ctx *all;
    uint64_t app_id, uid;
};

/* One invalidation finished; the last one calls done. */
static void
inval_finish(struct inval_ctx *c)
{
    if (--c->pending > 0)
        return;
    if (c->done != NULL)
        c->done(c->arg);
    free(c);
}

static void
on_invalidated(redisReply *reply, const char *err, void *arg)
{
    struct inval_one *one = arg;
    if (reply == NULL || reply->type == REDIS_REPLY_ERROR)
        dirty_add(one->all->w, one->app_id, one->uid);
    else
        recent_add(one->all->w, one->app_id, one->uid);
    inval_finish(one->all);
    free(one);
}

/* Sends one invalidation; false when it could not be sent. */
static bool
send_invalidate(struct logic_worker *w, uint64_t app_id, uint64_t uid, redis_cb cb, void *arg)
{
    char key[64], ttl[24];
    hint_key(key, sizeof(key), app_id, uid);
    snprintf(ttl, sizeof(ttl), "%" PRId64, w->app->cfg.hint_ttl_s);
    return redis_command(w->redis, cb, arg, "EVAL %s 1 %s %s", hint_invalidate_lua, key, ttl);
}

void
hint_invalidate(struct logic_worker *w, uint64_t app_id, const uint64_t *uids, int n,
                hint_done_cb done, void *arg)
{
    struct inval_ctx *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        for (int i = 0; i < n; i++)
            dirty_add(w, app_id, uids[i]);
        if (done)
            done(arg);
        return;
    }
    c->w = w;
    c->done = done;
    c->arg = arg;
    c->pending = 1; /* held until the loop below is done */
    for (int i = 0; i < n; i++) {
        struct inval_one *one = malloc(sizeof(*one));
        if (one != NULL) {
            one->all = c;
            one->app_id = app_id;
            one->uid = uids[i];
            c->pending++;
            if (send_invalidate(w, app_id, uids[i], on_invalidated, one))
                continue;
            c->pending--;
            free(one);
        }
        dirty_add(w, app_id, uids[i]);
    }
    inval_finish(c);
}

/*
 * Sends every remembered invalidation again through hint_invalidate, so one
 * that fails (not sent, error reply, timeout) is remembered again and
 * replayed later. Items re-added while the loop runs land at indexes it has
 * already read (at most one per item read).
 */
static void
replay(struct logic_worker *w)
{
    struct hint_dirty *d = w->dirty;
    if (d->n == 0 || !redis_connected(w->redis))
        return;
    int n = d->n;
    d->n = 0;
    for (int i = 0; i < n; i++) {
        struct hint_mbox m = d->items[i];
        hint_invalidate(w, m.app_id, &m.uid, 1, NULL, NULL);
    }
    log_info("hint_dirty_replayed", "worker=%d sent=%d requeued=%d", w->id, n, d->n);
}

static void
replay_tick(evutil_socket_t fd, short what, void *arg)
{
    struct logic_worker *w = arg;
    replay(w);
    if (w->dirty->n > 0)
        arm_replay(w);
}

void
hint_on_redis_connect(void *worker)
{
    struct logic_worker *w = worker;
    struct hint_dirty *d = w->dirty;
    /* Redis Cluster: the slot map changed or a master reconnected, maybe
     * after a failover that lost writes the old master had acknowledged
     * but not yet replicated. Invalidate again what was invalidated
     * lately (hint.h, point 4). */
    int64_t since = logic_now_us() - (int64_t)HINT_RECENT_S * 1000000;
    int n = d->recent_n;
    d->recent_n = 0;
    for (int k = 0; k < n; k++) {
        const struct hint_recent *r = &d->recent[(d->recent_head + k) % d->recent_cap];
        if (r->at_us >= since)
            dirty_add(w, r->app_id, r->uid);
    }
    d->recent_head = 0;
    replay(w);
}
