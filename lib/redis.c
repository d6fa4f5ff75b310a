/*
 * redis: hiredis 0.14 async client on a libevent loop, plus what hiredis
 * lacks (see redis.h): command timeouts, reconnect with backoff, pub/sub
 * that survives reconnects, an on-connect hook.
 *
 * Lifetimes (the part that is easy to get wrong with hiredis 0.14):
 *
 *   - hiredis owns the redisAsyncContext. After it reports a failed connect
 *     (connect callback with REDIS_ERR) or a disconnect (disconnect
 *     callback), it frees the context itself: we drop our pointer there and
 *     never touch it again. We free it ourselves (redisAsyncFree) only to
 *     abandon a connect that timed out, to drop a suspect connection, or in
 *     redis_free(); ac->data is cleared first so the callbacks hiredis runs
 *     while freeing know the struct redis is no longer theirs.
 *   - redisAsyncFree() called from inside a reply callback of the same
 *     context is deferred by hiredis until the callback returns. That is the
 *     one case where a context outlives its struct redis; every callback
 *     therefore reaches the struct redis only through ac->data or a pending
 *     record, both of which redis_free() detaches.
 *   - Each command has a heap "pending" record, the privdata of its hiredis
 *     callback. hiredis calls that callback exactly once: with the reply, or
 *     with NULL when the context goes away. The record is freed there and
 *     nowhere else (except when hiredis refuses the command outright). A
 *     record whose user callback already ran (timeout, redis_free) is marked
 *     done and only waits for hiredis to let go of it.
 *   - User code (reply callbacks, on_msg, the on-connect hook) may call
 *     redis_free(). Every entry from the event loop holds the struct (depth
 *     counter); redis_free() tears the connection down at once but the
 *     struct itself is freed when the outermost entry returns.
 *   - No user code runs inside hiredis's connect or disconnect callbacks
 *     (hiredis 0.14 does not protect those against a free): the on-connect
 *     hook runs from an event of our own, activated by the connect callback.
 */
#include "redis.h"
#include "decimal.h"
#include "redis_cluster.h"

#include "log.h"
#include "metrics.h"

#include <assert.h>
#include <limits.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <unistd.h>

#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include <event2/event.h>
#include <hiredis/adapters/libevent.h>
#include <hiredis/async.h>

/* Consecutive command timeouts after which the connection is presumed dead. */
#define REDIS_TIMEOUTS_BEFORE_RECONNECT 3

/* TCP keepalive, so a subscriber notices a peer that vanished silently. */
#define REDIS_KEEPALIVE_IDLE_S  15
#define REDIS_KEEPALIVE_INTVL_S 5
#define REDIS_KEEPALIVE_CNT     3

enum redis_state {
    REDIS_STATE_DISCONNECTED, /* not started, or freed */
    REDIS_STATE_CONNECTING,   /* TCP connect in progress, connect timer armed */
    REDIS_STATE_CONNECTED,    /* commands accepted */
    REDIS_STATE_BACKOFF,      /* waiting for the backoff timer to reconnect */
};

static const char *const state_names[] = {"disconnected", "connecting", "connected", "backoff"};

/* One command in flight (see the lifetimes at the top of the file). */
struct pending {
    struct pending *prev, *next; /* in r->pending while r is alive */
    struct redis *r;             /* NULL once detached by redis_free() */
    redis_cb cb;
    void *arg;
    struct event *timer; /* command timeout; NULL once fired or not armed */
    bool done;           /* the user callback has run (or never will) */
};

struct redis {
    struct rcluster *cluster; /* cluster mode: everything below is unused */
    struct event_base *base;
    struct redis_config cfg; /* cfg.host points to host; cfg.nodes is NULL */
    char *host;
    char *user, *password; /* AUTH on every connect when password is set */
    bool authing;          /* CONNECTING: TCP is up, the AUTH reply is awaited */
    redisAsyncContext *ac; /* NULL unless CONNECTING or CONNECTED */
    enum redis_state state;
    bool closing; /* ac is being torn down: refuse new commands */

    struct event *backoff_ev;
    struct event *connect_ev;
    struct event *hook_ev; /* runs on_connect outside hiredis callbacks */
    struct timeval connect_tv;
    struct timeval cmd_tv_storage;
    const struct timeval *cmd_tv; /* libevent common timeout, or &cmd_tv_storage */
    unsigned attempt;             /* reconnects scheduled since the last success */
    unsigned failures;            /* failed connects since the last success (logs) */
    uint64_t rng;                 /* backoff jitter */
    int consecutive_timeouts;
    uint64_t conn_gen; /* successful connects so far (redis_conn_generation) */

    struct pending *pending_head, *pending_tail;

    bool subscriber;
    char **channels;
    size_t nchannels, capchannels;
    redis_msg_cb on_msg;
    void *msg_arg;

    void (*on_connect)(void *arg);
    void *on_connect_arg;

    int depth; /* entries from the event loop in progress */
    bool dead; /* redis_free() was called; freed when depth drops to 0 */

    bool gauge_up; /* this client counts in mbox_redis_clients_connected */
    struct metric *m_ok, *m_error, *m_timeout, *m_disconnected;
    struct metric *m_connected, *m_reconnects;
};

static void redis_connect_start(struct redis *r);

/* Advances a xorshift64* state and returns the next value. */
static uint64_t
rng_next(uint64_t *s)
{
    uint64_t x = *s != 0 ? *s : 0x9e3779b97f4a7c15ull;
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    *s = x;
    return x * 0x2545f4914f6cdd1dull;
}

int
redis_backoff_ms(int min_ms, int max_ms, unsigned attempt, uint64_t *rng)
{
    if (min_ms < 1)
        min_ms = 1;
    if (max_ms < min_ms)
        max_ms = min_ms;
    int64_t base = min_ms;
    for (unsigned i = 0; i < attempt && base < max_ms; i++)
        base *= 2;
    if (base > max_ms)
        base = max_ms;
    /* base * [0.75, 1.25]: clients that lost Redis together do not return together. */
    int64_t d = base - base / 4 + (int64_t)(rng_next(rng) % (uint64_t)(base / 2 + 1));
    if (d < 1)
        d = 1;
    if (d > INT_MAX)
        d = INT_MAX;
    return (int)d;
}

static void
ms_to_tv(int ms, struct timeval *tv)
{
    tv->tv_sec = ms / 1000;
    tv->tv_usec = (ms % 1000) * 1000;
}

static const char *
role(const struct redis *r)
{
    return r->subscriber ? "subscriber" : "command";
}

/* The one place the state changes; asserts the move is one we expect. */
static void
redis_set_state(struct redis *r, enum redis_state to)
{
    enum redis_state from = r->state;
    bool ok;
    switch (to) {
    case REDIS_STATE_CONNECTING:
        ok = from == REDIS_STATE_DISCONNECTED || from == REDIS_STATE_BACKOFF;
        break;
    case REDIS_STATE_CONNECTED:
        ok = from == REDIS_STATE_CONNECTING;
        break;
    case REDIS_STATE_BACKOFF:
        ok = from == REDIS_STATE_CONNECTING || from == REDIS_STATE_CONNECTED;
        break;
    case REDIS_STATE_DISCONNECTED:
    default:
        ok = true; /* redis_free() from anywhere */
        break;
    }
    assert(ok);
    (void)ok;
    if (log_enabled(LOG_DEBUG))
        log_debug("redis_state", "role=%s host=%s port=%d from=%s to=%s", role(r), r->host,
                  r->cfg.port, state_names[from], state_names[to]);
    r->state = to;
}

/* Marks an entry from the event loop (or a user call that runs callbacks). */
static void
redis_hold(struct redis *r)
{
    r->depth++;
}

static void
redis_destroy(struct redis *r)
{
    assert(r->ac == NULL && r->pending_head == NULL);
    event_free(r->backoff_ev);
    event_free(r->connect_ev);
    event_free(r->hook_ev);
    for (size_t i = 0; i < r->nchannels; i++)
        free(r->channels[i]);
    free(r->channels);
    free(r->host);
    free(r->user);
    free(r->password);
    free(r);
}

/* Ends an entry; frees r if redis_free() was called meanwhile. */
static void
redis_release(struct redis *r)
{
    assert(r->depth > 0);
    if (--r->depth == 0 && r->dead)
        redis_destroy(r);
}

static void
pending_link(struct redis *r, struct pending *p)
{
    p->prev = r->pending_tail;
    p->next = NULL;
    if (r->pending_tail != NULL)
        r->pending_tail->next = p;
    else
        r->pending_head = p;
    r->pending_tail = p;
}

static void
pending_unlink(struct redis *r, struct pending *p)
{
    if (p->prev != NULL)
        p->prev->next = p->next;
    else
        r->pending_head = p->next;
    if (p->next != NULL)
        p->next->prev = p->prev;
    else
        r->pending_tail = p->prev;
    p->prev = p->next = NULL;
}

static void
gauge_set_up(struct redis *r, bool up)
{
    if (r->gauge_up != up) {
        metric_gauge_add(r->m_connected, up ? 1 : -1);
        r->gauge_up = up;
    }
}

/* Waits out the backoff delay, then connects again. */
static void
redis_schedule_reconnect(struct redis *r)
{
    int ms = redis_backoff_ms(r->cfg.backoff_min_ms, r->cfg.backoff_max_ms, r->attempt, &r->rng);
    if (r->attempt < 64)
        r->attempt++;
    struct timeval tv;
    ms_to_tv(ms, &tv);
    evtimer_add(r->backoff_ev, &tv);
    if (log_enabled(LOG_DEBUG))
        log_debug("redis_reconnect_scheduled", "role=%s host=%s port=%d delay_ms=%d", role(r),
                  r->host, r->cfg.port, ms);
}

/* A connect attempt failed (the context, if any, is already gone or ours no more). */
static void
redis_connect_failed(struct redis *r, const char *reason)
{
    char q[256];
    evtimer_del(r->connect_ev);
    redis_set_state(r, REDIS_STATE_BACKOFF);
    r->failures++;
    log_warn("redis_connect_failed", "role=%s host=%s port=%d failures=%u reason=%s", role(r),
             r->host, r->cfg.port, r->failures, log_q(q, sizeof(q), reason));
    redis_schedule_reconnect(r);
}

/*
 * The connection r->ac was lost or dropped: forget it and schedule a
 * reconnect. The caller has either been told by hiredis (which frees the
 * context itself) or frees it right after.
 */
static void
redis_lost(struct redis *r, const char *reason)
{
    char q[256];
    r->ac = NULL;
    r->authing = false;
    evtimer_del(r->connect_ev); /* lost while the AUTH reply was awaited */
    event_del(r->hook_ev);
    gauge_set_up(r, false);
    redis_set_state(r, REDIS_STATE_BACKOFF);
    log_warn("redis_disconnected", "role=%s host=%s port=%d reason=%s", role(r), r->host,
             r->cfg.port, log_q(q, sizeof(q), reason));
    redis_schedule_reconnect(r);
}

/*
 * Drops a connection we no longer trust (commands time out). Runs from our
 * own timer, never inside a hiredis callback of this context, so the free
 * is immediate: pending commands get "disconnected" from inside it.
 */
static void
redis_drop(struct redis *r, const char *reason)
{
    redisAsyncContext *ac = r->ac;
    ac->data = NULL;
    r->closing = true;
    redis_lost(r, reason);
    redisAsyncFree(ac);
}

/* hiredis reply callback of every command; privdata is its pending record. */
static void
command_cb(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)ac;
    struct pending *p = privdata;
    redisReply *reply = reply_;
    struct redis *r = p->r;

    if (p->done) {
        /* Late reply after a timeout, or the context going away after it. */
        if (r != NULL) {
            pending_unlink(r, p);
            if (reply != NULL)
                r->consecutive_timeouts = 0; /* slow, but alive */
        }
        free(p);
        return;
    }

    assert(r != NULL);
    pending_unlink(r, p);
    if (p->timer != NULL)
        event_free(p->timer);
    const char *err = NULL;
    if (reply == NULL) {
        /* hiredis is tearing the context down: refuse commands until it is gone. */
        r->closing = true;
        err = "disconnected";
        metric_inc(r->m_disconnected);
    } else {
        r->consecutive_timeouts = 0;
        metric_inc(reply->type == REDIS_REPLY_ERROR ? r->m_error : r->m_ok);
    }
    redis_hold(r);
    if (p->cb != NULL)
        p->cb(reply, err, p->arg);
    free(p);
    redis_release(r);
}

/* Command timeout: the caller hears "timeout" now; the record waits for hiredis. */
static void
command_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct pending *p = arg;
    struct redis *r = p->r;
    redis_cb cb = p->cb;
    void *cbarg = p->arg;

    event_free(p->timer);
    p->timer = NULL;
    p->done = true;
    metric_inc(r->m_timeout);
    r->consecutive_timeouts++;
    redis_hold(r);
    /* p may be freed from here on (redis_free() inside cb frees the context). */
    if (cb != NULL)
        cb(NULL, "timeout", cbarg);
    if (!r->dead && r->state == REDIS_STATE_CONNECTED &&
        r->consecutive_timeouts >= REDIS_TIMEOUTS_BEFORE_RECONNECT)
        redis_drop(r, "command timeouts");
    redis_release(r);
}

/* hiredis callback of SUBSCRIBE: confirmations and messages of every channel. */
static void
subscribe_cb(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct redis *r = ac->data;
    redisReply *reply = reply_;
    if (r == NULL || reply == NULL)
        return; /* freed, or the context is going away (disconnect follows) */
    if (reply->type != REDIS_REPLY_ARRAY || reply->elements < 3 ||
        reply->element[0]->type != REDIS_REPLY_STRING ||
        reply->element[1]->type != REDIS_REPLY_STRING)
        return;
    const char *kind = reply->element[0]->str;
    const char *channel = reply->element[1]->str;
    if (strcmp(kind, "message") == 0 && reply->element[2]->type == REDIS_REPLY_STRING) {
        redis_hold(r);
        if (r->on_msg != NULL)
            r->on_msg(channel, reply->element[2]->str, reply->element[2]->len, r->msg_arg);
        redis_release(r);
    } else if (strcmp(kind, "subscribe") == 0 && log_enabled(LOG_DEBUG)) {
        char q[256];
        log_debug("redis_subscribed", "host=%s port=%d channel=%s", r->host, r->cfg.port,
                  log_q(q, sizeof(q), channel));
    }
}

static void
send_subscribe(struct redis *r, const char *channel)
{
    const char *argv[2] = {"SUBSCRIBE", channel};
    if (redisAsyncCommandArgv(r->ac, subscribe_cb, NULL, 2, argv, NULL) != REDIS_OK) {
        char q[256];
        log_warn("redis_subscribe_failed", "host=%s port=%d channel=%s", r->host, r->cfg.port,
                 log_q(q, sizeof(q), channel));
    }
}

/* Sets TCP keepalive (errors ignored: the connection works without it). */
static void
set_keepalive(int fd)
{
    int on = 1, idle = REDIS_KEEPALIVE_IDLE_S, intvl = REDIS_KEEPALIVE_INTVL_S,
        cnt = REDIS_KEEPALIVE_CNT;
    (void)setsockopt(fd, SOL_SOCKET, SO_KEEPALIVE, &on, sizeof(on));
#ifdef TCP_KEEPIDLE
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPINTVL, &intvl, sizeof(intvl));
    (void)setsockopt(fd, IPPROTO_TCP, TCP_KEEPCNT, &cnt, sizeof(cnt));
#else
    (void)idle;
    (void)intvl;
    (void)cnt;
#endif
}

/* The connection is usable (connected, and authenticated when configured). */
static void
redis_ready(struct redis *r)
{
    evtimer_del(r->connect_ev);
    r->authing = false;
    redis_set_state(r, REDIS_STATE_CONNECTED);
    r->conn_gen++;
    r->attempt = 0;
    r->failures = 0;
    r->consecutive_timeouts = 0;
    gauge_set_up(r, true);
    log_info("redis_connected", "role=%s host=%s port=%d", role(r), r->host, r->cfg.port);
    for (size_t i = 0; i < r->nchannels; i++)
        send_subscribe(r, r->channels[i]);
    if (r->on_connect != NULL)
        event_active(r->hook_ev, EV_TIMEOUT, 0);
}

/*
 * hiredis callback of the AUTH sent first on a new connection. A refusal
 * (wrong password, unknown or disabled user) is a configuration error the
 * operator must see: logged as an error, then retried with backoff like a
 * failed connect, since the password may be fixed on the server side.
 */
static void
auth_cb(redisAsyncContext *ac, void *reply_, void *privdata)
{
    (void)privdata;
    struct redis *r = ac->data;
    redisReply *reply = reply_;
    if (r == NULL || reply == NULL)
        return; /* freed, or the context is going away (disconnect follows) */
    assert(r->ac == ac && r->state == REDIS_STATE_CONNECTING && r->authing);
    if (reply->type != REDIS_REPLY_ERROR) {
        redis_ready(r);
        return;
    }
    char q[256], reason[300];
    log_error("redis_auth_failed", "role=%s host=%s port=%d user=%s error=%s", role(r), r->host,
              r->cfg.port, r->user != NULL ? r->user : "default",
              log_q(q, sizeof(q), reply->str != NULL ? reply->str : "?"));
    snprintf(reason, sizeof(reason), "auth refused: %s", reply->str != NULL ? reply->str : "?");
    /* Inside this context's reply callback: hiredis frees it once we return. */
    r->ac = NULL;
    r->authing = false;
    ac->data = NULL;
    redisAsyncFree(ac);
    redis_connect_failed(r, reason);
}

/*
 * hiredis connect callback. On REDIS_ERR hiredis frees the context right
 * after we return. No user code runs here (see the top of the file).
 */
static void
on_connect_cb(const redisAsyncContext *cac, int status)
{
    struct redis *r = cac->data;
    if (r == NULL)
        return;
    assert(r->ac == cac && r->state == REDIS_STATE_CONNECTING);
    if (status != REDIS_OK) {
        r->ac = NULL;
        redis_connect_failed(r, cac->errstr != NULL ? cac->errstr : "connect failed");
        return;
    }
    set_keepalive(r->ac->c.fd);
    if (r->password == NULL) {
        redis_ready(r);
        return;
    }
    /*
     * AUTH first; the connect timer keeps running, so a server that never
     * answers it counts as a connect timeout.
     */
    const char *argv[3] = {"AUTH", r->user != NULL ? r->user : "", r->password};
    const char *const pass_only[2] = {"AUTH", r->password};
    int rc = r->user != NULL
                 ? redisAsyncCommandArgv(r->ac, auth_cb, NULL, 3, argv, NULL)
                 : redisAsyncCommandArgv(r->ac, auth_cb, NULL, 2, (const char **)pass_only, NULL);
    if (rc != REDIS_OK) {
        log_warn("redis_auth_not_sent", "role=%s host=%s port=%d", role(r), r->host, r->cfg.port);
        return; /* the connect timer drops the connection */
    }
    r->authing = true;
}

/*
 * hiredis disconnect callback (only for contexts that had connected).
 * Pending commands have already had their NULL replies; hiredis frees the
 * context after we return.
 */
static void
on_disconnect_cb(const redisAsyncContext *cac, int status)
{
    struct redis *r = cac->data;
    if (r == NULL)
        return; /* we freed it ourselves and already accounted for it */
    assert(r->ac == cac);
    const char *reason = "closed";
    if (status != REDIS_OK && cac->errstr != NULL && cac->errstr[0] != '\0')
        reason = cac->errstr;
    redis_lost(r, reason);
}

static void
hook_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis *r = arg;
    if (r->state != REDIS_STATE_CONNECTED || r->on_connect == NULL)
        return;
    redis_hold(r);
    r->on_connect(r->on_connect_arg);
    redis_release(r);
}

static void
connect_timeout_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis *r = arg;
    if (r->state != REDIS_STATE_CONNECTING || r->ac == NULL)
        return;
    /* Not connected yet: no callbacks to run, hiredis frees it synchronously. */
    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    ac->data = NULL;
    redisAsyncFree(ac);
    redis_connect_failed(r, "connect timeout");
}

static void
backoff_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct redis *r = arg;
    if (r->state != REDIS_STATE_BACKOFF)
        return;
    metric_inc(r->m_reconnects);
    redis_connect_start(r);
}

/*
 * Starts a non-blocking connect. hiredis resolves the host name with a
 * blocking getaddrinfo: configure an address, not a name, on hot paths.
 */
static void
redis_connect_start(struct redis *r)
{
    redis_set_state(r, REDIS_STATE_CONNECTING);
    r->closing = false;
    redisAsyncContext *ac = redisAsyncConnect(r->host, r->cfg.port);
    if (ac == NULL) {
        redis_connect_failed(r, "out of memory");
        return;
    }
    if (ac->err) {
        char reason[128];
        snprintf(reason, sizeof(reason), "%s", ac->errstr);
        redisAsyncFree(ac);
        redis_connect_failed(r, reason);
        return;
    }
    if (redisLibeventAttach(ac, r->base) != REDIS_OK) {
        redisAsyncFree(ac);
        redis_connect_failed(r, "libevent attach failed");
        return;
    }
    ac->data = r;
    r->ac = ac;
    redisAsyncSetConnectCallback(ac, on_connect_cb);
    redisAsyncSetDisconnectCallback(ac, on_disconnect_cb);
    if (r->cfg.connect_timeout_ms > 0)
        evtimer_add(r->connect_ev, &r->connect_tv);
}

static bool
config_valid(const struct redis_config *cfg)
{
    return cfg != NULL && cfg->host != NULL && cfg->host[0] != '\0' && cfg->port > 0 &&
           cfg->port <= 65535 && cfg->connect_timeout_ms >= 0 && cfg->command_timeout_ms >= 0 &&
           cfg->backoff_min_ms > 0 && cfg->backoff_max_ms >= cfg->backoff_min_ms;
}

static void
register_metrics(struct redis *r, struct metrics *m)
{
    if (m == NULL)
        return;
    static const char name[] = "mbox_redis_commands_total";
    static const char help[] = "Redis commands by outcome";
    r->m_ok = metrics_counter(m, name, help, "result=\"ok\"");
    r->m_error = metrics_counter(m, name, help, "result=\"error\"");
    r->m_timeout = metrics_counter(m, name, help, "result=\"timeout\"");
    r->m_disconnected = metrics_counter(m, name, help, "result=\"disconnected\"");
    r->m_connected =
        metrics_gauge(m, "mbox_redis_clients_connected", "Redis clients currently connected", NULL);
    r->m_reconnects = metrics_counter(m, "mbox_redis_reconnects_total",
                                      "Redis connection attempts after a failure or loss", NULL);
}

/* Seeds the jitter generator from things that differ between clients and processes. */
static uint64_t
seed_rng(const struct redis *r)
{
    struct timeval tv;
    gettimeofday(&tv, NULL);
    uint64_t x = (uint64_t)(uintptr_t)r ^ ((uint64_t)tv.tv_sec << 20) ^ (uint64_t)tv.tv_usec ^
                 ((uint64_t)getpid() << 40);
    /* splitmix64 finaliser spreads the few changing bits over the word */
    x += 0x9e3779b97f4a7c15ull;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ull;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebull;
    x ^= x >> 31;
    return x != 0 ? x : 1;
}

static struct redis *
redis_create(struct event_base *base, const struct redis_config *cfg, struct metrics *metrics)
{
    if (base == NULL || !config_valid(cfg))
        return NULL;
    struct redis *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return NULL;
    r->base = base;
    r->cfg = *cfg;
    r->cfg.nodes = NULL;
    r->host = strdup(cfg->host);
    if (cfg->password != NULL && cfg->password[0] != '\0') {
        r->password = strdup(cfg->password);
        if (cfg->user != NULL && cfg->user[0] != '\0')
            r->user = strdup(cfg->user);
    }
    r->cfg.user = r->user;
    r->cfg.password = r->password;
    r->backoff_ev = evtimer_new(base, backoff_cb, r);
    r->connect_ev = evtimer_new(base, connect_timeout_cb, r);
    r->hook_ev = event_new(base, -1, 0, hook_cb, r);
    bool auth_lost =
        (cfg->password != NULL && cfg->password[0] != '\0' && r->password == NULL) ||
        (r->password != NULL && cfg->user != NULL && cfg->user[0] != '\0' && r->user == NULL);
    if (r->host == NULL || auth_lost || r->backoff_ev == NULL || r->connect_ev == NULL ||
        r->hook_ev == NULL) {
        if (r->backoff_ev != NULL)
            event_free(r->backoff_ev);
        if (r->connect_ev != NULL)
            event_free(r->connect_ev);
        if (r->hook_ev != NULL)
            event_free(r->hook_ev);
        free(r->host);
        free(r->user);
        free(r->password);
        free(r);
        return NULL;
    }
    r->cfg.host = r->host;
    r->state = REDIS_STATE_DISCONNECTED;
    ms_to_tv(cfg->connect_timeout_ms, &r->connect_tv);
    ms_to_tv(cfg->command_timeout_ms, &r->cmd_tv_storage);
    /* Every command has the same timeout: a common-timeout queue makes each O(1). */
    r->cmd_tv = NULL;
    if (cfg->command_timeout_ms > 0) {
        r->cmd_tv = event_base_init_common_timeout(base, &r->cmd_tv_storage);
        if (r->cmd_tv == NULL)
            r->cmd_tv = &r->cmd_tv_storage;
    }
    r->rng = seed_rng(r);
    register_metrics(r, metrics);
    return r;
}

static bool
cluster_mode(const struct redis_config *cfg)
{
    return cfg != NULL && cfg->nodes != NULL && cfg->nodes[0] != '\0';
}

/* A cluster-mode handle: only r->cluster is used. */
static struct redis *
redis_cluster_wrap(struct rcluster *c)
{
    if (c == NULL)
        return NULL;
    struct redis *r = calloc(1, sizeof(*r));
    if (r == NULL) {
        rcluster_free(c);
        return NULL;
    }
    r->cluster = c;
    return r;
}

struct redis *
redis_new(struct event_base *base, const struct redis_config *cfg, struct metrics *metrics)
{
    if (cluster_mode(cfg))
        return redis_cluster_wrap(rcluster_new(base, cfg, metrics, NULL, NULL));
    struct redis *r = redis_create(base, cfg, metrics);
    if (r != NULL)
        redis_connect_start(r);
    return r;
}

struct redis *
redis_subscriber_new(struct event_base *base, const struct redis_config *cfg, redis_msg_cb on_msg,
                     void *arg, struct metrics *metrics)
{
    if (cluster_mode(cfg)) {
        if (on_msg == NULL)
            return NULL;
        return redis_cluster_wrap(rcluster_new(base, cfg, metrics, on_msg, arg));
    }
    struct redis *r = redis_create(base, cfg, metrics);
    if (r == NULL)
        return NULL;
    r->subscriber = true;
    r->on_msg = on_msg;
    r->msg_arg = arg;
    redis_connect_start(r);
    return r;
}

void
redis_free(struct redis *r)
{
    if (r == NULL || r->dead)
        return;
    if (r->cluster != NULL) {
        /* The cluster keeps itself alive while its own callbacks run. */
        rcluster_free(r->cluster);
        free(r);
        return;
    }
    redis_hold(r);
    r->dead = true;
    evtimer_del(r->backoff_ev);
    evtimer_del(r->connect_ev);
    event_del(r->hook_ev);
    gauge_set_up(r, false);
    redis_set_state(r, REDIS_STATE_DISCONNECTED);

    redisAsyncContext *ac = r->ac;
    r->ac = NULL;
    if (ac != NULL)
        ac->data = NULL;

    /*
     * Fail the pending commands ourselves: if we are inside a reply callback
     * of this context, hiredis defers the free below past our return.
     */
    struct pending *p;
    while ((p = r->pending_head) != NULL) {
        pending_unlink(r, p);
        p->r = NULL;
        if (p->timer != NULL) {
            event_free(p->timer);
            p->timer = NULL;
        }
        if (!p->done) {
            p->done = true;
            metric_inc(r->m_disconnected);
            if (p->cb != NULL)
                p->cb(NULL, "disconnected", p->arg);
        }
    }

    /* Runs command_cb (records are done: just freed) and the disconnect callback (ignored). */
    if (ac != NULL)
        redisAsyncFree(ac);
    redis_release(r);
}

void
redis_set_on_connect(struct redis *r, void (*fn)(void *arg), void *arg)
{
    if (r->cluster != NULL) {
        rcluster_set_on_connect(r->cluster, fn, arg);
        return;
    }
    r->on_connect = fn;
    r->on_connect_arg = arg;
}

uint64_t
redis_conn_generation(const struct redis *r)
{
    if (r->cluster != NULL)
        return rcluster_generation(r->cluster);
    return r->conn_gen;
}

bool
redis_connected(const struct redis *r)
{
    if (r != NULL && r->cluster != NULL)
        return rcluster_connected(r->cluster);
    return r != NULL && !r->dead && r->state == REDIS_STATE_CONNECTED && r->ac != NULL &&
           !r->closing && (r->ac->c.flags & (REDIS_DISCONNECTING | REDIS_FREEING)) == 0;
}

/* Allocates a record for a command about to be sent; NULL when out of memory. */
static struct pending *
pending_new(struct redis *r, redis_cb cb, void *arg)
{
    struct pending *p = calloc(1, sizeof(*p));
    if (p == NULL)
        return NULL;
    p->r = r;
    p->cb = cb;
    p->arg = arg;
    if (r->cmd_tv != NULL) {
        p->timer = evtimer_new(r->base, command_timeout_cb, p);
        if (p->timer == NULL) {
            free(p);
            return NULL;
        }
    }
    return p;
}

/* Finishes sending: rc is what hiredis said; on refusal the record is ours to free. */
static bool
pending_start(struct redis *r, struct pending *p, int rc)
{
    if (rc != REDIS_OK) {
        if (p->timer != NULL)
            event_free(p->timer);
        free(p);
        return false;
    }
    pending_link(r, p);
    if (p->timer != NULL)
        evtimer_add(p->timer, r->cmd_tv);
    return true;
}

/* Whether a command may be sent now; counts the refusals caused by a lost connection. */
static bool
command_allowed(struct redis *r)
{
    if (r == NULL || r->subscriber || r->dead)
        return false;
    if (!redis_connected(r)) {
        metric_inc(r->m_disconnected);
        return false;
    }
    return true;
}

bool
redis_command(struct redis *r, redis_cb cb, void *arg, const char *fmt, ...)
{
    if (r != NULL && r->cluster != NULL) {
        /* Formatted once here; the cluster finds the key in the request itself. */
        char *buf = NULL;
        va_list ap;
        va_start(ap, fmt);
        int n = redisvFormatCommand(&buf, fmt, ap);
        va_end(ap);
        if (n <= 0 || buf == NULL)
            return false;
        bool ok = rcluster_command_formatted(r->cluster, cb, arg, buf, (size_t)n);
        redisFreeCommand(buf);
        return ok;
    }
    if (!command_allowed(r))
        return false;
    struct pending *p = pending_new(r, cb, arg);
    if (p == NULL)
        return false;
    va_list ap;
    va_start(ap, fmt);
    int rc = redisvAsyncCommand(r->ac, command_cb, p, fmt, ap);
    va_end(ap);
    return pending_start(r, p, rc);
}

/* Appends n bytes to buf[*o..cap) if they fit; *o always advances. */
static void
fmt_put(char *buf, size_t cap, size_t *o, const void *p, size_t n)
{
    if (n > 0 && *o <= cap && n <= cap - *o)
        memcpy(buf + *o, p, n);
    *o += n;
}

/* Appends the RESP header "<kind><n>\r\n" ('*' array, '$' bulk). */
static void
fmt_header(char *buf, size_t cap, size_t *o, char kind, size_t n)
{
    char tmp[24];
    char *end = tmp + sizeof(tmp);
    *--end = '\n';
    *--end = '\r';
    char *p = decimal_u64_back(n, end);
    *--p = kind;
    fmt_put(buf, cap, o, p, (size_t)(tmp + sizeof(tmp) - p));
}

size_t
redis_format_argv(char *buf, size_t cap, int argc, const char **argv, const size_t *argvlen)
{
    size_t o = 0;
    fmt_header(buf, cap, &o, '*', (size_t)argc);
    for (int i = 0; i < argc; i++) {
        size_t n = argvlen != NULL ? argvlen[i] : strlen(argv[i]);
        fmt_header(buf, cap, &o, '$', n);
        fmt_put(buf, cap, &o, argv[i], n);
        fmt_put(buf, cap, &o, "\r\n", 2);
    }
    return o;
}

/* Commands up to this size are formatted on the stack (hiredis copies them). */
#define REDIS_FORMAT_STACK 512

bool
redis_command_argv(struct redis *r, redis_cb cb, void *arg, int argc, const char **argv,
                   const size_t *argvlen)
{
    if (argc < 1 || argv == NULL)
        return false;
    if (r != NULL && r->cluster != NULL) {
        char stack[REDIS_FORMAT_STACK];
        size_t n = redis_format_argv(stack, sizeof(stack), argc, argv, argvlen);
        char *buf = stack;
        if (n > sizeof(stack)) {
            buf = malloc(n);
            if (buf == NULL)
                return false;
            (void)redis_format_argv(buf, n, argc, argv, argvlen);
        }
        bool ok = rcluster_command_formatted(r->cluster, cb, arg, buf, n);
        if (buf != stack)
            free(buf);
        return ok;
    }
    if (!command_allowed(r))
        return false;
    struct pending *p = pending_new(r, cb, arg);
    if (p == NULL)
        return false;
    /* Formatting it ourselves spares hiredis's allocations for the usual short command. */
    char buf[REDIS_FORMAT_STACK];
    size_t n = redis_format_argv(buf, sizeof(buf), argc, argv, argvlen);
    int rc;
    if (n <= sizeof(buf))
        rc = redisAsyncFormattedCommand(r->ac, command_cb, p, buf, n);
    else
        rc = redisAsyncCommandArgv(r->ac, command_cb, p, argc, argv, argvlen);
    return pending_start(r, p, rc);
}

void
redis_subscribe(struct redis *r, const char *channel)
{
    if (r == NULL || r->dead || channel == NULL)
        return;
    if (r->cluster != NULL) {
        rcluster_subscribe(r->cluster, channel);
        return;
    }
    if (!r->subscriber) {
        log_error("redis_subscribe_misuse", "host=%s port=%d reason=not_a_subscriber", r->host,
                  r->cfg.port);
        return;
    }
    for (size_t i = 0; i < r->nchannels; i++) {
        if (strcmp(r->channels[i], channel) == 0)
            return;
    }
    if (r->nchannels == r->capchannels) {
        size_t cap = r->capchannels != 0 ? r->capchannels * 2 : 8;
        char **c = realloc(r->channels, cap * sizeof(*c));
        if (c == NULL)
            goto oom;
        r->channels = c;
        r->capchannels = cap;
    }
    char *copy = strdup(channel);
    if (copy == NULL)
        goto oom;
    r->channels[r->nchannels++] = copy;
    if (redis_connected(r))
        send_subscribe(r, copy);
    return;
oom:
    log_error("redis_subscribe_failed", "host=%s port=%d reason=out_of_memory", r->host,
              r->cfg.port);
}

bool
redis_node_formatted(struct redis *r, redis_cb cb, void *arg, const char *buf, size_t len)
{
    if (!command_allowed(r))
        return false;
    struct pending *p = pending_new(r, cb, arg);
    if (p == NULL)
        return false;
    return pending_start(r, p, redisAsyncFormattedCommand(r->ac, command_cb, p, buf, len));
}

void
redis_socket_keepalive(int fd)
{
    set_keepalive(fd);
}
