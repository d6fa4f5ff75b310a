/*
 * redis_cluster: Redis Cluster mode of lib/redis (see redis.h for what the
 * callers see, redis_cluster.h for the shape).
 *
 * Commands: the slot map comes from CLUSTER SHARDS (CLUSTER SLOTS on a
 * server without it), asked of any connected node, or of the configured
 * seeds when none is. Each master gets a node client (a struct redis in
 * single-node mode: its reconnect, AUTH, timeouts and metrics are reused).
 * A command is formatted once, its key found in the request, and sent to
 * the master of the key's slot. Redirects are followed here:
 *
 *   - MOVED: the slot's owner is updated at once, the whole map re-read in
 *     the background, and the command re-sent to the new owner;
 *   - ASK: ASKING then the command on the importing node, once;
 *   - TRYAGAIN, CLUSTERDOWN: re-sent after a short doubling delay.
 *
 * At most RCLUSTER_MAX_REDIRECTS redirects and never past the command's
 * timeout; then the caller sees the last error. While a slot has no
 * connected master (a master died and its replica is not promoted yet) its
 * commands fail at once, like a single-node client that is disconnected,
 * and the map is re-read every RCLUSTER_TICK_MS until every slot is
 * covered again.
 *
 * Pub/sub: hiredis 0.14 aborts on sharded pub/sub replies (it matches an
 * smessage push to a command callback and asserts), so a subscriber drives
 * its sharded connections itself: a bufferevent per master that owns one
 * of its channels, hiredis's reply reader to parse, SSUBSCRIBE per channel.
 * A channel is moved when the map says its slot moved, when the server
 * pushes sunsubscribe (it does when the slot leaves that node), when
 * SSUBSCRIBE is answered MOVED, or when the connection is lost (failover).
 *
 * Lifetimes: user callbacks may free the cluster (redis_free), so every
 * entry from the event loop holds it (depth) and it is destroyed when the
 * outermost entry returns. A command record is finished (its callback run)
 * exactly once: by its node client's callback, by its retry timer, or by
 * rcluster_free().
 */
#include "redis_cluster.h"
#include "redis_slot.h"

#include "log.h"
#include "metrics.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>

/* Period of the map check; an unhealthy map is re-read at this pace. */
#define RCLUSTER_TICK_MS 200
/* A healthy map is re-read every this many ticks (5 s): slots moved by an operator. */
#define RCLUSTER_REFRESH_TICKS 25
#define RCLUSTER_MAX_REDIRECTS 5
/* How often a redirected command looks again for its target's connection. */
#define RCLUSTER_WAIT_MS 10
/* First delay after TRYAGAIN/CLUSTERDOWN, doubled per retry. */
#define RCLUSTER_RETRY_MS 25
/* Retry bound of a command when the client has no command timeout. */
#define RCLUSTER_DEFAULT_DEADLINE_MS 2000
/* A channel whose connection was lost waits this long before subscribing again. */
#define RCLUSTER_SSUB_RETRY_MS 300
#define RCLUSTER_HOST_MAX      64
#define RCLUSTER_MAX_ARGS      64

struct cnode {
    struct cnode *next;
    struct rcluster *cl;
    char host[RCLUSTER_HOST_MAX];
    int port;
    struct redis *cli;
    bool master; /* owns slots in the current map */
    bool keep;   /* scratch of map_apply */
};

enum ssub_state { SSUB_CONNECTING, SSUB_AUTH, SSUB_READY, SSUB_DEAD };

/* A sharded pub/sub connection to one master. */
struct ssub {
    struct ssub *next;
    struct rcluster *cl;
    char host[RCLUSTER_HOST_MAX];
    int port;
    struct bufferevent *bev;
    redisReader *reader;
    enum ssub_state state;
};

struct chan {
    char *name;
    unsigned slot;
    struct ssub *sub;    /* where SSUBSCRIBE was sent; NULL: nowhere yet */
    bool confirmed;      /* the server answered ssubscribe */
    int64_t retry_at_us; /* not before (after a lost connection) */
};

/* One command of a caller, until its callback has run. */
struct cpending {
    struct cpending *prev, *next;
    struct rcluster *cl;
    redis_cb cb;
    void *arg;
    char *buf; /* the formatted request */
    size_t len;
    bool keyed;
    unsigned slot;
    bool asking; /* send ASKING first, to ask_host:ask_port */
    char ask_host[RCLUSTER_HOST_MAX];
    int ask_port;
    char sent_host[RCLUSTER_HOST_MAX]; /* where the last attempt went */
    int sent_port;
    int redirects;
    int delay_ms;
    int64_t deadline_us;
    struct event *timer; /* armed while waiting to be re-sent */
};

struct seed {
    char host[RCLUSTER_HOST_MAX];
    int port;
};

struct rcluster {
    struct event_base *base;
    struct redis_config cfg; /* user, password point to our copies; host unused */
    char *user, *password;
    struct metrics *metrics;
    struct seed *seeds;
    size_t nseeds;

    struct cnode *nodes;
    struct cnode *slots[REDIS_SLOTS]; /* master of each slot; NULL: none known */
    bool full;                        /* every slot has a master in the map */
    bool refreshing, refresh_again, use_slots_cmd;
    unsigned ticks;
    struct event *tick_ev, *work_ev;
    uint64_t gen_retired, map_changes;

    bool hook_due;
    void (*on_connect)(void *arg);
    void *on_connect_arg;

    struct cpending *pend_head;

    redis_msg_cb on_msg; /* non-NULL: a subscriber */
    void *msg_arg;
    struct chan *chans;
    size_t nchans, capchans;
    struct ssub *subs;

    int depth;
    bool dead;

    struct metric *m_moved, *m_ask, *m_retry, *m_refresh, *m_disconnected, *m_timeout;
};

static const char asking_cmd[] = "*1\r\n$6\r\nASKING\r\n";

static void refresh_start(struct rcluster *cl);

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
ms_to_tv(int ms, struct timeval *tv)
{
    tv->tv_sec = ms / 1000;
    tv->tv_usec = (ms % 1000) * 1000;
}

static void
cl_hold(struct rcluster *cl)
{
    cl->depth++;
}

static void
cl_destroy(struct rcluster *cl)
{
    assert(cl->pend_head == NULL && cl->nodes == NULL && cl->subs == NULL);
    if (cl->tick_ev != NULL)
        event_free(cl->tick_ev);
    if (cl->work_ev != NULL)
        event_free(cl->work_ev);
    for (size_t i = 0; i < cl->nchans; i++)
        free(cl->chans[i].name);
    free(cl->chans);
    free(cl->seeds);
    free(cl->user);
    free(cl->password);
    free(cl);
}

static void
cl_release(struct rcluster *cl)
{
    assert(cl->depth > 0);
    if (--cl->depth == 0 && cl->dead)
        cl_destroy(cl);
}

/* Runs the map check, subscriptions and hook soon, outside any callback of ours. */
static void
work_soon(struct rcluster *cl)
{
    if (!cl->dead)
        event_active(cl->work_ev, EV_TIMEOUT, 0);
}

/* ---- node clients ---- */

/* The node client connected (runs from its hook event, not inside hiredis). */
static void
node_on_connect(void *arg)
{
    struct cnode *n = arg;
    n->cl->hook_due = true; /* a restarted master has lost what we wrote there */
    work_soon(n->cl);
}

static struct cnode *
node_find(struct rcluster *cl, const char *host, int port)
{
    for (struct cnode *n = cl->nodes; n != NULL; n = n->next) {
        if (n->port == port && strcmp(n->host, host) == 0)
            return n;
    }
    return NULL;
}

/* The node client of host:port, created (and connecting) if new; NULL when out of memory. */
static struct cnode *
node_get(struct rcluster *cl, const char *host, int port)
{
    struct cnode *n = node_find(cl, host, port);
    if (n != NULL || cl->dead)
        return n;
    if (strlen(host) >= sizeof(n->host))
        return NULL;
    n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    struct redis_config nc = cl->cfg;
    nc.host = host;
    nc.port = port;
    nc.nodes = NULL;
    n->cli = redis_new(cl->base, &nc, cl->metrics);
    if (n->cli == NULL) {
        free(n);
        return NULL;
    }
    n->cl = cl;
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    redis_set_on_connect(n->cli, node_on_connect, n);
    n->next = cl->nodes;
    cl->nodes = n;
    return n;
}

/* Unlinks and frees a node; its commands in flight fail with "disconnected". */
static void
node_free(struct rcluster *cl, struct cnode *n)
{
    for (struct cnode **pp = &cl->nodes; *pp != NULL; pp = &(*pp)->next) {
        if (*pp == n) {
            *pp = n->next;
            break;
        }
    }
    /* Its reconnects still count: hint.c must see a change across its removal. */
    cl->gen_retired += redis_conn_generation(n->cli) + 1;
    redis_free(n->cli);
    free(n);
}

/* Whether every master of the map has a connected client. */
static bool
masters_connected(const struct rcluster *cl)
{
    if (!cl->full)
        return false;
    for (const struct cnode *n = cl->nodes; n != NULL; n = n->next) {
        if (n->master && !redis_connected(n->cli))
            return false;
    }
    return true;
}

/* ---- the slot map ---- */

static bool
str_is(const redisReply *r, const char *s)
{
    return r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS
               ? strlen(s) == r->len && memcmp(r->str, s, r->len) == 0
               : false;
}

/* Installs a parsed map: creates clients for new masters, frees the others. */
static void
map_apply(struct rcluster *cl, const struct redis_ranges *rg)
{
    struct cnode **next = calloc(REDIS_SLOTS, sizeof(*next));
    if (next == NULL)
        return;
    for (struct cnode *n = cl->nodes; n != NULL; n = n->next)
        n->keep = false;
    for (size_t i = 0; i < rg->n; i++) {
        struct cnode *n = node_get(cl, rg->v[i].host, rg->v[i].port);
        if (n == NULL) {
            free(next);
            return; /* out of memory: keep the old map, try again next tick */
        }
        n->keep = true;
        for (unsigned s = rg->v[i].lo; s <= rg->v[i].hi; s++)
            next[s] = n;
    }
    bool changed = memcmp(next, cl->slots, sizeof(cl->slots)) != 0;
    memcpy(cl->slots, next, sizeof(cl->slots));
    free(next);
    bool full = true;
    for (unsigned s = 0; s < REDIS_SLOTS && full; s++)
        full = cl->slots[s] != NULL;
    cl->full = full;
    int masters = 0;
    struct cnode *n = cl->nodes;
    while (n != NULL) {
        struct cnode *nx = n->next;
        n->master = n->keep;
        if (n->master) {
            masters++;
        } else {
            node_free(cl, n); /* a seed, a demoted or dead master */
            if (cl->dead)
                return; /* a failed command's callback freed the client */
        }
        n = nx;
    }
    if (changed) {
        cl->map_changes++;
        cl->hook_due = true;
        log_info("redis_cluster_map", "masters=%d covered=%s", masters, full ? "all" : "partial");
    }
}

/* Reply of CLUSTER SHARDS / CLUSTER SLOTS. */
static void
refresh_cb(redisReply *reply, const char *err, void *arg)
{
    struct rcluster *cl = arg;
    cl->refreshing = false;
    if (cl->dead)
        return;
    cl_hold(cl);
    if (reply == NULL) {
        log_debug("redis_cluster_refresh_failed", "error=%s", err);
    } else if (reply->type == REDIS_REPLY_ERROR) {
        if (!cl->use_slots_cmd) {
            /* A server before 7.0: CLUSTER SLOTS says the same, less precisely. */
            cl->use_slots_cmd = true;
            cl->refresh_again = true;
        } else {
            char q[256];
            log_warn("redis_cluster_refresh_failed", "error=%s",
                     log_q(q, sizeof(q), reply->str != NULL ? reply->str : "?"));
        }
    } else {
        struct redis_ranges rg = {0};
        bool ok =
            cl->use_slots_cmd ? redis_parse_slots(reply, &rg) : redis_parse_shards(reply, &rg);
        if (ok)
            map_apply(cl, &rg);
        else
            log_warn("redis_cluster_refresh_failed", "error=\"unexpected reply\"");
        free(rg.v);
        work_soon(cl); /* subscriptions follow the new map */
    }
    if (cl->refresh_again) {
        cl->refresh_again = false;
        refresh_start(cl);
    }
    cl_release(cl);
}

/* Makes sure the seeds have clients: the way in when no known node answers. */
static void
seeds_ensure(struct rcluster *cl)
{
    for (size_t i = 0; i < cl->nseeds; i++)
        (void)node_get(cl, cl->seeds[i].host, cl->seeds[i].port);
}

/* Asks a connected node for the map (one request at a time). */
static void
refresh_start(struct rcluster *cl)
{
    if (cl->dead)
        return;
    if (cl->refreshing) {
        cl->refresh_again = true;
        return;
    }
    struct cnode *pick = NULL;
    for (struct cnode *n = cl->nodes; n != NULL; n = n->next) {
        if (redis_connected(n->cli)) {
            pick = n;
            if (n->master)
                break;
        }
    }
    if (pick == NULL) {
        seeds_ensure(cl); /* their connects call work_soon() */
        return;
    }
    if (redis_command(pick->cli, refresh_cb, cl,
                      cl->use_slots_cmd ? "CLUSTER SLOTS" : "CLUSTER SHARDS")) {
        cl->refreshing = true;
        metric_inc(cl->m_refresh);
    }
}

/* ---- commands ---- */

static void cp_reply(redisReply *reply, const char *err, void *arg);

static void
cp_unlink(struct rcluster *cl, struct cpending *cp)
{
    if (cp->prev != NULL)
        cp->prev->next = cp->next;
    else
        cl->pend_head = cp->next;
    if (cp->next != NULL)
        cp->next->prev = cp->prev;
    cp->prev = cp->next = NULL;
}

/* Runs the caller's callback and frees the record. */
static void
cp_finish(struct cpending *cp, redisReply *reply, const char *err)
{
    struct rcluster *cl = cp->cl;
    cp_unlink(cl, cp);
    if (cp->timer != NULL)
        event_free(cp->timer);
    cl_hold(cl);
    if (cp->cb != NULL)
        cp->cb(reply, err, cp->arg);
    free(cp->buf);
    free(cp);
    cl_release(cl);
}

/* A connected master of any slot, for commands without a key. */
static struct cnode *
any_master(struct rcluster *cl)
{
    for (struct cnode *n = cl->nodes; n != NULL; n = n->next) {
        if (n->master && redis_connected(n->cli))
            return n;
    }
    return NULL;
}

/* Sends the command where it belongs now; false when that node is not connected. */
static bool
cp_try_send(struct cpending *cp)
{
    struct rcluster *cl = cp->cl;
    struct cnode *n;
    if (cp->asking)
        n = node_get(cl, cp->ask_host, cp->ask_port);
    else if (cp->keyed)
        n = cl->slots[cp->slot];
    else
        n = any_master(cl);
    if (n == NULL || !redis_connected(n->cli))
        return false;
    /* ASKING holds for the next command of this connection only: send both now. */
    if (cp->asking && !redis_node_formatted(n->cli, NULL, NULL, asking_cmd, sizeof(asking_cmd) - 1))
        return false;
    if (!redis_node_formatted(n->cli, cp_reply, cp, cp->buf, cp->len))
        return false;
    cp->asking = false;
    snprintf(cp->sent_host, sizeof(cp->sent_host), "%s", n->host);
    cp->sent_port = n->port;
    return true;
}

static void
cp_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct cpending *cp = arg;
    struct rcluster *cl = cp->cl;
    if (cp_try_send(cp))
        return;
    if (now_us() >= cp->deadline_us) {
        metric_inc(cl->m_timeout);
        cp_finish(cp, NULL, "timeout");
        return;
    }
    struct timeval tv;
    ms_to_tv(RCLUSTER_WAIT_MS, &tv);
    evtimer_add(cp->timer, &tv);
}

/* Re-sends after a redirect, now or after delay_ms; false when out of attempts or time. */
static bool
cp_redirect(struct cpending *cp, int delay_ms)
{
    if (++cp->redirects > RCLUSTER_MAX_REDIRECTS ||
        now_us() + (int64_t)delay_ms * 1000 >= cp->deadline_us)
        return false;
    if (delay_ms == 0 && cp_try_send(cp))
        return true;
    if (cp->timer == NULL) {
        cp->timer = evtimer_new(cp->cl->base, cp_timer_cb, cp);
        if (cp->timer == NULL)
            return false;
    }
    struct timeval tv;
    ms_to_tv(delay_ms > RCLUSTER_WAIT_MS ? delay_ms : RCLUSTER_WAIT_MS, &tv);
    evtimer_add(cp->timer, &tv);
    return true;
}

/* A MOVED answer: the slot's owner is known now; the rest of the map is re-read. */
static void
moved_apply(struct rcluster *cl, const struct redis_redirect *rd)
{
    struct cnode *n = node_get(cl, rd->host, rd->port);
    if (n != NULL && cl->slots[rd->slot] != n) {
        cl->slots[rd->slot] = n;
        n->master = true;
        cl->map_changes++;
        cl->hook_due = true; /* as for any map change (the re-read will find none) */
    }
    refresh_start(cl);
}

/* Node client callback of a routed command: follows redirects, else answers the caller. */
static void
cp_reply(redisReply *reply, const char *err, void *arg)
{
    struct cpending *cp = arg;
    struct rcluster *cl = cp->cl;
    if (cl->dead) {
        cp_finish(cp, reply, reply != NULL ? NULL : err);
        return;
    }
    if (reply == NULL) {
        /* A lost master: the map may have changed (failover). */
        if (strcmp(err, "disconnected") == 0)
            work_soon(cl);
        cp_finish(cp, NULL, err);
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR && reply->str != NULL) {
        struct redis_redirect rd;
        if (redis_parse_redirect(reply->str, reply->len, &rd)) {
            if (rd.host[0] == '\0')
                snprintf(rd.host, sizeof(rd.host), "%s", cp->sent_host);
            if (rd.ask) {
                metric_inc(cl->m_ask);
                cp->asking = true;
                snprintf(cp->ask_host, sizeof(cp->ask_host), "%s", rd.host);
                cp->ask_port = rd.port;
            } else {
                metric_inc(cl->m_moved);
                moved_apply(cl, &rd);
            }
            if (cp_redirect(cp, 0))
                return;
            cp->asking = false;
        } else if (redis_error_retryable(reply->str, reply->len)) {
            metric_inc(cl->m_retry);
            refresh_start(cl);
            if (cp_redirect(cp, cp->delay_ms)) {
                cp->delay_ms *= 2;
                return;
            }
        }
    }
    cp_finish(cp, reply, NULL);
}

static bool
arg_is(const char *arg, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(arg, name, len) == 0;
}

bool
rcluster_command_formatted(struct rcluster *cl, redis_cb cb, void *arg, const char *buf, size_t len)
{
    if (cl == NULL || cl->dead || cl->on_msg != NULL)
        return false;
    const char *argv[RCLUSTER_MAX_ARGS];
    size_t lens[RCLUSTER_MAX_ARGS];
    int argc = redis_request_args(buf, len, argv, lens, RCLUSTER_MAX_ARGS);
    if (argc < 1) {
        log_error("redis_cluster_command_refused", "reason=\"not parsed or over %d arguments\"",
                  RCLUSTER_MAX_ARGS);
        return false;
    }
    struct cpending *cp = calloc(1, sizeof(*cp));
    if (cp == NULL)
        return false;
    int key = redis_command_key(argc, argv, lens);
    if (key >= 0 && key < argc) {
        cp->keyed = true;
        cp->slot = redis_key_slot(argv[key], lens[key]);
    }
    if (arg_is(argv[0], lens[0], "PUBLISH")) {
        /* Sharded pub/sub: the message goes to the shard of the channel only. */
        argv[0] = "SPUBLISH";
        lens[0] = 8;
        size_t n = redis_format_argv(NULL, 0, argc, argv, lens);
        cp->buf = malloc(n);
        if (cp->buf != NULL)
            cp->len = redis_format_argv(cp->buf, n, argc, argv, lens);
    } else {
        cp->buf = malloc(len);
        if (cp->buf != NULL) {
            memcpy(cp->buf, buf, len);
            cp->len = len;
        }
    }
    if (cp->buf == NULL) {
        free(cp);
        return false;
    }
    cp->cl = cl;
    cp->cb = cb;
    cp->arg = arg;
    cp->delay_ms = RCLUSTER_RETRY_MS;
    int budget =
        cl->cfg.command_timeout_ms > 0 ? cl->cfg.command_timeout_ms : RCLUSTER_DEFAULT_DEADLINE_MS;
    cp->deadline_us = now_us() + (int64_t)budget * 1000;
    if (!cp_try_send(cp)) {
        /* No connected master for this slot: fail fast, the caller degrades. */
        metric_inc(cl->m_disconnected);
        work_soon(cl);
        free(cp->buf);
        free(cp);
        return false;
    }
    cp->next = cl->pend_head;
    if (cl->pend_head != NULL)
        cl->pend_head->prev = cp;
    cl->pend_head = cp;
    return true;
}

/* ---- sharded subscriber connections ---- */

static struct chan *
chan_find(struct rcluster *cl, const char *name, size_t len)
{
    for (size_t i = 0; i < cl->nchans; i++) {
        if (strlen(cl->chans[i].name) == len && memcmp(cl->chans[i].name, name, len) == 0)
            return &cl->chans[i];
    }
    return NULL;
}

/* Queues a request on a sharded connection. */
static void
ssub_send(struct ssub *s, int argc, const char **argv)
{
    size_t n = redis_format_argv(NULL, 0, argc, argv, NULL);
    char *buf = malloc(n);
    if (buf == NULL)
        return;
    (void)redis_format_argv(buf, n, argc, argv, NULL);
    (void)bufferevent_write(s->bev, buf, n);
    free(buf);
}

static void
ssub_subscribe(struct ssub *s, struct chan *ch)
{
    const char *argv[2] = {"SSUBSCRIBE", ch->name};
    ssub_send(s, 2, argv);
}

/* The connection is gone or refused us: its channels will subscribe elsewhere. */
static void
ssub_lost(struct ssub *s, const char *reason)
{
    struct rcluster *cl = s->cl;
    if (s->state == SSUB_DEAD)
        return;
    char q[256];
    log_warn("redis_disconnected", "role=sharded-subscriber host=%s port=%d reason=%s", s->host,
             s->port, log_q(q, sizeof(q), reason));
    s->state = SSUB_DEAD;
    bufferevent_disable(s->bev, EV_READ | EV_WRITE);
    int64_t retry = now_us() + RCLUSTER_SSUB_RETRY_MS * 1000;
    for (size_t i = 0; i < cl->nchans; i++) {
        if (cl->chans[i].sub == s) {
            cl->chans[i].sub = NULL;
            cl->chans[i].confirmed = false;
            cl->chans[i].retry_at_us = retry;
        }
    }
    refresh_start(cl);
    work_soon(cl); /* frees s outside its callbacks */
}

static void
ssub_ready(struct ssub *s)
{
    struct rcluster *cl = s->cl;
    s->state = SSUB_READY;
    bufferevent_set_timeouts(s->bev, NULL, NULL); /* a subscriber is quiet by nature */
    log_info("redis_connected", "role=sharded-subscriber host=%s port=%d", s->host, s->port);
    for (size_t i = 0; i < cl->nchans; i++) {
        if (cl->chans[i].sub == s)
            ssub_subscribe(s, &cl->chans[i]);
    }
}

/* One reply or push on a sharded connection. */
static void
ssub_handle(struct ssub *s, const redisReply *reply)
{
    struct rcluster *cl = s->cl;
    char q[256];
    if (s->state == SSUB_AUTH) {
        if (reply->type == REDIS_REPLY_ERROR) {
            log_error("redis_auth_failed", "role=sharded-subscriber host=%s port=%d error=%s",
                      s->host, s->port, log_q(q, sizeof(q), reply->str));
            ssub_lost(s, "auth refused");
        } else {
            ssub_ready(s);
        }
        return;
    }
    if (reply->type == REDIS_REPLY_ERROR) {
        struct redis_redirect rd;
        if (redis_parse_redirect(reply->str, reply->len, &rd)) {
            /* SSUBSCRIBE of a slot this node no longer has: subscribe again elsewhere. */
            metric_inc(cl->m_moved);
            for (size_t i = 0; i < cl->nchans; i++) {
                if (cl->chans[i].sub == s && cl->chans[i].slot == rd.slot) {
                    cl->chans[i].sub = NULL;
                    cl->chans[i].confirmed = false;
                }
            }
            refresh_start(cl);
            work_soon(cl);
        } else {
            log_warn("redis_subscribe_failed", "host=%s port=%d error=%s", s->host, s->port,
                     log_q(q, sizeof(q), reply->str));
        }
        return;
    }
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING)
        return;
    const redisReply *kind = reply->element[0], *name = reply->element[1];
    if (str_is(kind, "smessage") && reply->element[2]->type == REDIS_REPLY_STRING) {
        cl->on_msg(name->str, reply->element[2]->str, reply->element[2]->len, cl->msg_arg);
        return;
    }
    struct chan *ch = chan_find(cl, name->str, name->len);
    if (ch == NULL || ch->sub != s)
        return; /* the answer to a SUNSUBSCRIBE of ours, or a channel moved meanwhile */
    if (str_is(kind, "ssubscribe")) {
        ch->confirmed = true;
        log_debug("redis_subscribed", "host=%s port=%d channel=%s", s->host, s->port,
                  log_q(q, sizeof(q), ch->name));
    } else if (str_is(kind, "sunsubscribe")) {
        /* Pushed by the server when the slot left this node: find its new owner. */
        log_info("redis_channel_moved", "host=%s port=%d channel=%s", s->host, s->port,
                 log_q(q, sizeof(q), ch->name));
        ch->sub = NULL;
        ch->confirmed = false;
        refresh_start(cl);
        work_soon(cl);
    }
}

static void
ssub_read_cb(struct bufferevent *bev, void *arg)
{
    struct ssub *s = arg;
    struct rcluster *cl = s->cl;
    struct evbuffer *in = bufferevent_get_input(bev);
    cl_hold(cl);
    char buf[16384];
    int n;
    while ((n = evbuffer_remove(in, buf, sizeof(buf))) > 0) {
        if (redisReaderFeed(s->reader, buf, (size_t)n) != REDIS_OK) {
            ssub_lost(s, "reader out of memory");
            break;
        }
    }
    while (!cl->dead && s->state != SSUB_DEAD) {
        void *reply = NULL;
        if (redisReaderGetReply(s->reader, &reply) != REDIS_OK) {
            ssub_lost(s, "protocol error");
            break;
        }
        if (reply == NULL)
            break;
        ssub_handle(s, reply);
        freeReplyObject(reply);
    }
    /* cl->dead: s is freed already (a callback freed the client); cl goes now. */
    cl_release(cl);
}

static void
ssub_event_cb(struct bufferevent *bev, short what, void *arg)
{
    struct ssub *s = arg;
    if (what & BEV_EVENT_CONNECTED) {
        redis_socket_keepalive((int)bufferevent_getfd(bev));
        struct rcluster *cl = s->cl;
        if (cl->password == NULL) {
            ssub_ready(s);
            return;
        }
        s->state = SSUB_AUTH;
        const char *argv[3] = {"AUTH", cl->user, cl->password};
        if (cl->user != NULL) {
            ssub_send(s, 3, argv);
        } else {
            argv[1] = cl->password;
            ssub_send(s, 2, argv);
        }
        return;
    }
    if (what & BEV_EVENT_TIMEOUT)
        ssub_lost(s, "connect timeout");
    else if (what & BEV_EVENT_EOF)
        ssub_lost(s, "closed");
    else if (what & BEV_EVENT_ERROR)
        ssub_lost(s, evutil_socket_error_to_string(EVUTIL_SOCKET_ERROR()));
}

static void
ssub_free(struct ssub *s)
{
    bufferevent_free(s->bev);
    redisReaderFree(s->reader);
    free(s);
}

/* A new sharded connection to host:port (connecting); NULL on failure. */
static struct ssub *
ssub_new(struct rcluster *cl, const char *host, int port)
{
    struct ssub *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return NULL;
    s->cl = cl;
    snprintf(s->host, sizeof(s->host), "%s", host);
    s->port = port;
    s->reader = redisReaderCreate();
    s->bev = bufferevent_socket_new(cl->base, -1, BEV_OPT_CLOSE_ON_FREE);
    if (s->reader == NULL || s->bev == NULL) {
        if (s->reader != NULL)
            redisReaderFree(s->reader);
        if (s->bev != NULL)
            bufferevent_free(s->bev);
        free(s);
        return NULL;
    }
    s->state = SSUB_CONNECTING;
    bufferevent_setcb(s->bev, ssub_read_cb, NULL, ssub_event_cb, s);
    bufferevent_enable(s->bev, EV_READ | EV_WRITE);
    if (cl->cfg.connect_timeout_ms > 0) {
        struct timeval tv;
        ms_to_tv(cl->cfg.connect_timeout_ms, &tv);
        bufferevent_set_timeouts(s->bev, &tv, &tv);
    }
    s->next = cl->subs;
    cl->subs = s;
    /* Map addresses are numeric: resolving them does not block. */
    if (bufferevent_socket_connect_hostname(s->bev, NULL, AF_UNSPEC, host, port) != 0)
        ssub_lost(s, "connect failed");
    return s;
}

static struct ssub *
ssub_get(struct rcluster *cl, const char *host, int port)
{
    for (struct ssub *s = cl->subs; s != NULL; s = s->next) {
        if (s->state != SSUB_DEAD && s->port == port && strcmp(s->host, host) == 0)
            return s;
    }
    return ssub_new(cl, host, port);
}

/*
 * Puts every channel on the connection to its slot's master, leaving the
 * old master when the slot moved; closes connections left without channels.
 */
static void
ssub_reconcile(struct rcluster *cl)
{
    int64_t now = now_us();
    for (size_t i = 0; i < cl->nchans; i++) {
        struct chan *ch = &cl->chans[i];
        const struct cnode *owner = cl->slots[ch->slot];
        if (ch->sub != NULL) {
            if (owner == NULL ||
                (owner->port == ch->sub->port && strcmp(owner->host, ch->sub->host) == 0))
                continue;
            if (ch->sub->state == SSUB_READY) {
                const char *argv[2] = {"SUNSUBSCRIBE", ch->name};
                ssub_send(ch->sub, 2, argv);
            }
            ch->sub = NULL;
            ch->confirmed = false;
        }
        if (owner == NULL || now < ch->retry_at_us)
            continue;
        struct ssub *s = ssub_get(cl, owner->host, owner->port);
        if (s == NULL || s->state == SSUB_DEAD)
            continue;
        ch->sub = s;
        ch->confirmed = false;
        if (s->state == SSUB_READY)
            ssub_subscribe(s, ch);
    }
    struct ssub **pp = &cl->subs;
    while (*pp != NULL) {
        struct ssub *s = *pp;
        bool used = false;
        for (size_t i = 0; i < cl->nchans && !used; i++)
            used = cl->chans[i].sub == s;
        if (s->state == SSUB_DEAD || !used) {
            *pp = s->next;
            ssub_free(s);
        } else {
            pp = &s->next;
        }
    }
}

/* ---- the periodic check ---- */

static bool
subs_confirmed(const struct rcluster *cl)
{
    for (size_t i = 0; i < cl->nchans; i++) {
        if (!cl->chans[i].confirmed)
            return false;
    }
    return true;
}

static void
cl_work(struct rcluster *cl, bool tick)
{
    if (cl->dead)
        return;
    cl_hold(cl);
    if (!masters_connected(cl))
        refresh_start(cl);
    else if (tick && ++cl->ticks % RCLUSTER_REFRESH_TICKS == 0)
        refresh_start(cl);
    if (cl->on_msg != NULL)
        ssub_reconcile(cl);
    if (cl->hook_due && cl->on_connect != NULL && masters_connected(cl)) {
        cl->hook_due = false;
        cl->on_connect(cl->on_connect_arg);
    }
    cl_release(cl);
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cl_work(arg, true);
}

static void
work_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    cl_work(arg, false);
}

/* ---- the public side (through redis.c) ---- */

/* Parses "host:port,host:port" into cl->seeds; false when empty or malformed. */
static bool
seeds_parse(struct rcluster *cl, const char *list)
{
    size_t cap = 1;
    for (const char *p = list; *p != '\0'; p++)
        cap += *p == ',';
    cl->seeds = calloc(cap, sizeof(*cl->seeds));
    if (cl->seeds == NULL)
        return false;
    const char *p = list;
    while (*p != '\0') {
        while (*p == ' ' || *p == ',')
            p++;
        const char *end = p;
        while (*end != '\0' && *end != ',' && *end != ' ')
            end++;
        if (end == p)
            break;
        struct seed *sd = &cl->seeds[cl->nseeds];
        if (!redis_split_hostport(p, (size_t)(end - p), sd->host, sizeof(sd->host), &sd->port)) {
            char q[256], tmp[200];
            snprintf(tmp, sizeof(tmp), "%.*s", (int)(end - p), p);
            log_error("redis_nodes_invalid", "node=%s", log_q(q, sizeof(q), tmp));
            return false;
        }
        cl->nseeds++;
        p = end;
    }
    return cl->nseeds > 0;
}

static void
register_metrics(struct rcluster *cl, struct metrics *m)
{
    if (m == NULL)
        return;
    static const char rd[] = "mbox_redis_cluster_redirects_total";
    static const char rdh[] = "Redis Cluster redirects followed (moved, ask, retry after "
                              "TRYAGAIN/CLUSTERDOWN)";
    cl->m_moved = metrics_counter(m, rd, rdh, "kind=\"moved\"");
    cl->m_ask = metrics_counter(m, rd, rdh, "kind=\"ask\"");
    cl->m_retry = metrics_counter(m, rd, rdh, "kind=\"retry\"");
    cl->m_refresh = metrics_counter(m, "mbox_redis_cluster_map_refreshes_total",
                                    "Redis Cluster slot map reads", NULL);
    static const char cmd[] = "mbox_redis_commands_total";
    static const char cmdh[] = "Redis commands by outcome";
    cl->m_disconnected = metrics_counter(m, cmd, cmdh, "result=\"disconnected\"");
    cl->m_timeout = metrics_counter(m, cmd, cmdh, "result=\"timeout\"");
}

struct rcluster *
rcluster_new(struct event_base *base, const struct redis_config *cfg, struct metrics *metrics,
             redis_msg_cb on_msg, void *arg)
{
    if (base == NULL || cfg == NULL || cfg->nodes == NULL || cfg->connect_timeout_ms < 0 ||
        cfg->command_timeout_ms < 0 || cfg->backoff_min_ms <= 0 ||
        cfg->backoff_max_ms < cfg->backoff_min_ms)
        return NULL;
    struct rcluster *cl = calloc(1, sizeof(*cl));
    if (cl == NULL)
        return NULL;
    cl->base = base;
    cl->cfg = *cfg;
    cl->cfg.host = NULL;
    cl->cfg.nodes = NULL;
    cl->metrics = metrics;
    cl->on_msg = on_msg;
    cl->msg_arg = arg;
    bool ok = seeds_parse(cl, cfg->nodes);
    if (ok && cfg->password != NULL && cfg->password[0] != '\0') {
        cl->password = strdup(cfg->password);
        ok = cl->password != NULL;
        if (ok && cfg->user != NULL && cfg->user[0] != '\0') {
            cl->user = strdup(cfg->user);
            ok = cl->user != NULL;
        }
    }
    cl->cfg.user = cl->user;
    cl->cfg.password = cl->password;
    cl->tick_ev = event_new(base, -1, EV_PERSIST, tick_cb, cl);
    cl->work_ev = event_new(base, -1, 0, work_cb, cl);
    if (!ok || cl->tick_ev == NULL || cl->work_ev == NULL) {
        cl->dead = true;
        cl_hold(cl);
        cl_release(cl);
        return NULL;
    }
    register_metrics(cl, metrics);
    struct timeval tv;
    ms_to_tv(RCLUSTER_TICK_MS, &tv);
    event_add(cl->tick_ev, &tv);
    seeds_ensure(cl);
    return cl;
}

void
rcluster_free(struct rcluster *cl)
{
    if (cl == NULL || cl->dead)
        return;
    cl_hold(cl);
    cl->dead = true;
    event_del(cl->tick_ev);
    event_del(cl->work_ev);
    /* Commands waiting for a retry are ours to fail; those in flight fail with their node. */
    struct cpending *cp = cl->pend_head;
    while (cp != NULL) {
        struct cpending *nx = cp->next;
        if (cp->timer != NULL && evtimer_pending(cp->timer, NULL)) {
            cp_finish(cp, NULL, "disconnected");
            nx = cl->pend_head; /* the callback may have finished others */
        }
        cp = nx;
    }
    while (cl->nodes != NULL)
        node_free(cl, cl->nodes);
    while (cl->subs != NULL) {
        struct ssub *s = cl->subs;
        cl->subs = s->next;
        ssub_free(s);
    }
    cl_release(cl);
}

void
rcluster_set_on_connect(struct rcluster *cl, void (*fn)(void *arg), void *arg)
{
    cl->on_connect = fn;
    cl->on_connect_arg = arg;
    if (fn != NULL && masters_connected(cl)) {
        cl->hook_due = true;
        work_soon(cl);
    }
}

bool
rcluster_connected(const struct rcluster *cl)
{
    if (cl == NULL || cl->dead || !masters_connected(cl))
        return false;
    return cl->on_msg == NULL || subs_confirmed(cl);
}

uint64_t
rcluster_generation(const struct rcluster *cl)
{
    uint64_t g = cl->gen_retired + cl->map_changes;
    for (const struct cnode *n = cl->nodes; n != NULL; n = n->next)
        g += redis_conn_generation(n->cli);
    return g;
}

void
rcluster_subscribe(struct rcluster *cl, const char *channel)
{
    if (cl == NULL || cl->dead || channel == NULL)
        return;
    if (cl->on_msg == NULL) {
        log_error("redis_subscribe_misuse", "reason=not_a_subscriber");
        return;
    }
    if (chan_find(cl, channel, strlen(channel)) != NULL)
        return;
    if (cl->nchans == cl->capchans) {
        size_t cap = cl->capchans != 0 ? cl->capchans * 2 : 8;
        struct chan *c = realloc(cl->chans, cap * sizeof(*c));
        if (c == NULL)
            goto oom;
        cl->chans = c;
        cl->capchans = cap;
    }
    char *copy = strdup(channel);
    if (copy == NULL)
        goto oom;
    struct chan *ch = &cl->chans[cl->nchans++];
    memset(ch, 0, sizeof(*ch));
    ch->name = copy;
    ch->slot = redis_key_slot(copy, strlen(copy));
    work_soon(cl);
    return;
oom:
    log_error("redis_subscribe_failed", "reason=out_of_memory");
}
