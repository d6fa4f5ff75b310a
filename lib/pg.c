/*
 * pg: a pool of non-blocking, pipelined libpq connections on one event_base
 * (see pg.h for the contract).
 *
 * Each connection is a small state machine (DISCONNECTED, CONNECTING,
 * PREPARING, READY, BACKOFF) moved only by conn_set_state(). Once connected
 * it stays in libpq pipeline mode for its whole life: every command (a
 * statement prepare or a user query) is sent followed by its own sync point,
 * and an entry describing it is pushed on the connection's FIFO. Results
 * come back in the same order, so the FIFO head always owns the next result:
 * a command yields its result(s), a NULL, then PGRES_PIPELINE_SYNC, at which
 * point the head is complete and its callback runs.
 *
 * Why a sync per query: after an error libpq aborts every command up to the
 * next sync point, so one sync per query keeps one failing query from
 * failing its neighbours.
 *
 * Re-entrancy: user callbacks only run from libevent callbacks of the pool
 * (socket, deferred, tick), never from inside pg_query() or pg_pool_prepare().
 * A failure noticed inside pg_query() marks the connection "doomed" and a
 * deferred event resets it on the next loop iteration. Callbacks may issue
 * queries; they may even free the pool: the teardown then waits until the
 * pool's own event handler is about to return (pool_reap()).
 */
#include "pg.h"

#include <arpa/inet.h>
#include <assert.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "log.h"
#include "metrics.h"

#define PG_DEFAULT_BACKOFF_MIN_MS     100
#define PG_DEFAULT_BACKOFF_MAX_MS     10000
#define PG_DEFAULT_MAX_INFLIGHT       128
#define PG_DEFAULT_CONNECT_TIMEOUT_MS 10000
#define PG_TICK_MIN_MS                10
#define PG_TICK_MAX_MS                100

/* Oids of the built-in types the pg_param_* functions send in binary. */
#define PG_OID_BOOL  16
#define PG_OID_BYTEA 17
#define PG_OID_INT8  20
#define PG_OID_INT4  23
#define PG_OID_TEXT  25

enum pg_conn_state {
    PG_CONN_DISCONNECTED,
    PG_CONN_CONNECTING,
    PG_CONN_PREPARING,
    PG_CONN_READY,
    PG_CONN_BACKOFF,
};

static const char *const state_names[] = {"disconnected", "connecting", "preparing", "ready",
                                          "backoff"};

/* What woke a connection up: the one entry point of the state machine. */
enum pg_conn_event {
    PG_CONN_EV_READABLE,
    PG_CONN_EV_WRITABLE,
    PG_CONN_EV_TIMER,    /* backoff over, or connect took too long */
    PG_CONN_EV_DEFERRED, /* work postponed out of pg_query(): doom or drain */
};

/* Where the FIFO head is in its result sequence. */
enum pending_stage {
    STAGE_RESULTS, /* results, then a NULL */
    STAGE_SYNC,    /* waiting for PGRES_PIPELINE_SYNC */
};

/* One command sent on a connection and not yet answered. */
struct pending {
    struct pending *next;
    pg_cb cb; /* NULL: internal statement prepare */
    void *arg;
    const struct pg_stmt *stmt; /* prepares: which statement */
    bool counts_for_ready;      /* a prepare sent while PREPARING */
    enum pending_stage stage;
    PGresult *res; /* the result to deliver so far (owned) */
    uint64_t start_us;
    uint64_t deadline_us; /* 0: none */
};

/* A registered statement; lives as long as the pool. */
struct pg_stmt {
    struct pg_stmt *next;
    char *name;
    char *sql;
    int nparams;
    Oid *types; /* NULL or nparams entries */
};

struct pg_conn {
    struct pg_pool *pool;
    int idx;
    enum pg_conn_state state;
    PGconn *pq;
    int backend_pid;
    evutil_socket_t fd;       /* socket the events below watch */
    struct event *ev_connect; /* one-shot, while CONNECTING */
    struct event *ev_read;    /* persistent, once connected */
    struct event *ev_write;   /* persistent, added only while output is queued */
    struct event *ev_timer;   /* backoff and connect timeout */
    struct event *ev_defer;   /* activated by pg_query() & co */
    bool doomed;              /* reset at the next deferred run */
    char doom_reason[128];
    struct pending *head, *tail;
    int inflight;      /* user queries in the FIFO */
    int npending;      /* all entries in the FIFO */
    int prepares_left; /* while PREPARING */
    int backoff_ms;    /* next delay before jitter */
    int first_host;    /* multi-host conninfo: the host the next attempt starts at */
};

/*
 * A multi-host conninfo (host=a,b port=p,q, or postgresql://a:p,b:q/...):
 * libpq tries the hosts in order within one connect attempt, but with
 * PQconnectPoll nothing bounds the time spent on one host (connect_timeout
 * is enforced only by PQconnectdb's own loop). A host that accepts and then
 * never answers (a stopped server) would hold every attempt until the
 * pool's connect timer ends it, and the hosts after it would never be
 * tried. So the pool keeps the parsed options and starts the attempt after
 * a timed-out one at the host after the stuck one (rotating the host,
 * hostaddr and port lists).
 */
enum { HL_HOST, HL_HOSTADDR, HL_PORT, HL_COUNT };

struct host_lists {
    int nopts;
    const char **kw; /* nopts + 1, NULL-terminated; point into opts */
    const char **val;
    PQconninfoOption *opts;
    int nhosts;            /* > 1: rotation in use */
    int at[HL_COUNT];      /* index of host/hostaddr/port in kw, or -1 */
    char **item[HL_COUNT]; /* the list split at commas (nhosts entries), or NULL */
    char *buf[HL_COUNT];   /* the rotated list of the current attempt */
};

struct pg_pool {
    struct event_base *base;
    char *conninfo;
    int size;
    int backoff_min_ms, backoff_max_ms;
    int query_timeout_ms;
    int max_inflight;
    int connect_timeout_ms;
    struct pg_conn *conns;
    struct host_lists *hosts; /* NULL: one host, PQconnectStart(conninfo) */
    struct pg_stmt *stmts, *stmts_tail;
    struct pg_stmt session; /* session_sql (name and sql only), sql NULL when none */
    struct event *ev_tick; /* query timeouts, while anything is in flight */
    int nready;
    void (*on_up)(bool up, void *arg);
    void *on_up_arg;
    int npending; /* FIFO entries over all connections */
    unsigned rr;  /* rotates ties between equally loaded connections */
    uint64_t rng;
    int cb_depth;    /* user callbacks running now */
    bool dying;      /* pg_pool_free() was called */
    bool destroying; /* pool_destroy() running */

    struct metrics *metrics;
    struct metric *m_ok, *m_error, *m_unavailable, *m_timeout;
    struct metric *m_up;
    struct metric *m_duration;
};

static void conn_event(struct pg_conn *c, enum pg_conn_event ev);
static void conn_reset(struct pg_conn *c, const char *why, const char *reason,
                       enum pg_err_kind head_kind);
static void pool_destroy(struct pg_pool *p);

/* ---- small helpers ---- */

static uint64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

/* splitmix64: the pool's own PRNG, only used for backoff jitter. */
static uint64_t
pool_rand(struct pg_pool *p)
{
    uint64_t z = (p->rng += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static struct timeval
ms_to_tv(int ms)
{
    struct timeval tv = {.tv_sec = ms / 1000, .tv_usec = (ms % 1000) * 1000};
    return tv;
}

/* Copies a libpq message into buf as one line: libpq ends its messages with
 * a newline and splits hints onto more lines. */
static const char *
trim_msg(char *buf, size_t len, const char *msg)
{
    if (msg == NULL || msg[0] == '\0')
        msg = "unknown error";
    snprintf(buf, len, "%s", msg);
    size_t n = strlen(buf);
    while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
        buf[--n] = '\0';
    for (char *c = buf; *c != '\0'; c++) {
        if (*c == '\n' || *c == '\r' || *c == '\t')
            *c = ' ';
    }
    return buf;
}

/* libpq prints notices on stderr by default; route them to the log instead. */
static void
notice_processor(void *arg, const char *message)
{
    struct pg_conn *c = arg;
    if (!log_enabled(LOG_DEBUG))
        return;
    char msg[512], q[600];
    trim_msg(msg, sizeof(msg), message);
    log_debug("pg_notice", "conn=%d pid=%d msg=%s", c->idx, c->backend_pid,
              log_q(q, sizeof(q), msg));
}

/* ---- state machine ---- */

static bool
state_move_ok(enum pg_conn_state from, enum pg_conn_state to)
{
    if (to == PG_CONN_DISCONNECTED)
        return true; /* pool teardown */
    switch (from) {
    case PG_CONN_DISCONNECTED:
        return to == PG_CONN_CONNECTING;
    case PG_CONN_CONNECTING:
        return to == PG_CONN_PREPARING || to == PG_CONN_READY || to == PG_CONN_BACKOFF;
    case PG_CONN_PREPARING:
        return to == PG_CONN_READY || to == PG_CONN_BACKOFF;
    case PG_CONN_READY:
        return to == PG_CONN_BACKOFF;
    case PG_CONN_BACKOFF:
        return to == PG_CONN_CONNECTING;
    }
    return false;
}

/* The only place a connection changes state; keeps the up count and gauge. */
static void
conn_set_state(struct pg_conn *c, enum pg_conn_state to)
{
    struct pg_pool *p = c->pool;
    enum pg_conn_state from = c->state;

    if (!state_move_ok(from, to)) {
        log_error("pg_bad_transition", "conn=%d from=%s to=%s", c->idx, state_names[from],
                  state_names[to]);
        assert(!"bad pg connection state transition");
    }
    if (from == to)
        return;
    c->state = to;
    log_debug("pg_conn_state", "conn=%d pid=%d from=%s to=%s", c->idx, c->backend_pid,
              state_names[from], state_names[to]);
    if (to == PG_CONN_READY) {
        p->nready++;
        metric_gauge_add(p->m_up, 1);
        if (p->nready == 1 && p->on_up != NULL)
            p->on_up(true, p->on_up_arg);
    } else if (from == PG_CONN_READY) {
        p->nready--;
        metric_gauge_add(p->m_up, -1);
        if (p->nready == 0 && p->on_up != NULL)
            p->on_up(false, p->on_up_arg);
    }
}

/* ---- pending entries and callbacks ---- */

static void
fifo_push(struct pg_conn *c, struct pending *q)
{
    q->next = NULL;
    if (c->tail != NULL)
        c->tail->next = q;
    else
        c->head = q;
    c->tail = q;
    c->npending++;
    c->pool->npending++;
    if (q->cb != NULL)
        c->inflight++;
}

static struct pending *
fifo_pop(struct pg_conn *c)
{
    struct pending *q = c->head;
    if (q == NULL)
        return NULL;
    c->head = q->next;
    if (c->head == NULL)
        c->tail = NULL;
    q->next = NULL;
    c->npending--;
    c->pool->npending--;
    if (q->cb != NULL)
        c->inflight--;
    return q;
}

/* Detaches the whole FIFO; the caller owns the returned list. */
static struct pending *
fifo_take_all(struct pg_conn *c)
{
    struct pending *list = c->head;
    c->pool->npending -= c->npending;
    c->head = c->tail = NULL;
    c->npending = 0;
    c->inflight = 0;
    return list;
}

static void
pending_free(struct pending *q)
{
    if (q->res != NULL)
        PQclear(q->res);
    free(q);
}

/* Runs a user callback and accounts for it; q stays owned by the caller. */
static void
deliver(struct pg_pool *p, struct pending *q, const PGresult *res, enum pg_err_kind kind,
        const char *sqlstate, const char *message)
{
    struct pg_error err = {.kind = kind, .message = message != NULL ? message : ""};
    if (sqlstate != NULL)
        snprintf(err.sqlstate, sizeof(err.sqlstate), "%s", sqlstate);

    switch (kind) {
    case PG_OK:
        metric_inc(p->m_ok);
        break;
    case PG_ERR_QUERY:
        metric_inc(p->m_error);
        break;
    case PG_ERR_UNAVAILABLE:
        metric_inc(p->m_unavailable);
        break;
    case PG_ERR_TIMEOUT:
        metric_inc(p->m_timeout);
        break;
    }
    metric_observe(p->m_duration, (double)(now_us() - q->start_us) / 1e6);

    p->cb_depth++;
    q->cb(kind == PG_OK ? res : NULL, &err, q->arg);
    p->cb_depth--;
}

/*
 * Completes a detached list: the first entry with head_kind, the others with
 * PG_ERR_UNAVAILABLE. Frees every entry. Internal entries have no callback.
 */
static void
complete_list(struct pg_pool *p, struct pending *list, enum pg_err_kind head_kind,
              const char *message)
{
    bool first = true;
    while (list != NULL) {
        struct pending *q = list;
        list = q->next;
        if (q->cb != NULL) {
            enum pg_err_kind kind = first ? head_kind : PG_ERR_UNAVAILABLE;
            deliver(p, q, NULL, kind, NULL, kind == PG_ERR_TIMEOUT ? "query timeout" : message);
        }
        first = false;
        pending_free(q);
    }
}

/* Delivers a completed FIFO entry from its collected result. */
static void
complete_result(struct pg_pool *p, struct pending *q)
{
    PGresult *r = q->res;
    ExecStatusType st = r != NULL ? PQresultStatus(r) : PGRES_FATAL_ERROR;

    if (st == PGRES_TUPLES_OK || st == PGRES_COMMAND_OK || st == PGRES_EMPTY_QUERY) {
        deliver(p, q, r, PG_OK, NULL, "");
        return;
    }
    if (st == PGRES_PIPELINE_ABORTED) {
        deliver(p, q, NULL, PG_ERR_QUERY, NULL, "aborted");
        return;
    }
    const char *sqlstate = r != NULL ? PQresultErrorField(r, PG_DIAG_SQLSTATE) : NULL;
    const char *raw = r != NULL ? PQresultErrorMessage(r) : "no result";
    if (raw == NULL || raw[0] == '\0')
        raw = PQresStatus(st);
    char *msg = strdup(raw);
    if (msg != NULL) {
        size_t n = strlen(msg);
        while (n > 0 && (msg[n - 1] == '\n' || msg[n - 1] == '\r'))
            msg[--n] = '\0';
    }
    deliver(p, q, NULL, PG_ERR_QUERY, sqlstate, msg != NULL ? msg : raw);
    free(msg);
}

/* ---- timers ---- */

/* Arms the timeout tick while anything with a deadline is in flight. */
static void
pool_tick_arm(struct pg_pool *p)
{
    if (p->ev_tick == NULL || event_pending(p->ev_tick, EV_TIMEOUT, NULL))
        return;
    int ms = p->query_timeout_ms / 4;
    if (ms < PG_TICK_MIN_MS)
        ms = PG_TICK_MIN_MS;
    if (ms > PG_TICK_MAX_MS)
        ms = PG_TICK_MAX_MS;
    struct timeval tv = ms_to_tv(ms);
    event_add(p->ev_tick, &tv);
}

/* Frees the pool if pg_pool_free() was called from a callback; true if it did. */
static bool
pool_reap(struct pg_pool *p)
{
    if (p->dying && p->cb_depth == 0 && !p->destroying) {
        pool_destroy(p);
        return true;
    }
    return false;
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pg_pool *p = arg;
    uint64_t now = now_us();

    for (int i = 0; i < p->size && !p->dying; i++) {
        struct pg_conn *c = &p->conns[i];
        if (c->state != PG_CONN_READY && c->state != PG_CONN_PREPARING)
            continue;
        /* FIFO order is send order and every deadline is start + the same
         * timeout, so the head is always the first to expire. */
        struct pending *q = c->head;
        if (q != NULL && q->deadline_us != 0 && now >= q->deadline_us)
            conn_reset(c, "query_timeout", "connection reset after a query timeout",
                       PG_ERR_TIMEOUT);
    }
    if (pool_reap(p))
        return;
    if (p->npending > 0)
        pool_tick_arm(p);
}

/* ---- socket and events ---- */

static void
conn_io_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    struct pg_pool *p = c->pool;
    if (what & EV_WRITE)
        conn_event(c, PG_CONN_EV_WRITABLE);
    /* A write step may already have reset the connection (new events). */
    if ((what & EV_READ) && !p->dying && c->fd == fd &&
        (c->state == PG_CONN_CONNECTING || c->state == PG_CONN_PREPARING ||
         c->state == PG_CONN_READY))
        conn_event(c, PG_CONN_EV_READABLE);
    pool_reap(p);
}

static void
conn_timer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    conn_event(c, PG_CONN_EV_TIMER);
    pool_reap(c->pool);
}

static void
conn_defer_cb(evutil_socket_t fd, short what, void *arg)
{
    struct pg_conn *c = arg;
    conn_event(c, PG_CONN_EV_DEFERRED);
    pool_reap(c->pool);
}

static void
conn_free_events(struct pg_conn *c)
{
    if (c->ev_connect != NULL) {
        event_free(c->ev_connect);
        c->ev_connect = NULL;
    }
    if (c->ev_read != NULL) {
        event_free(c->ev_read);
        c->ev_read = NULL;
    }
    if (c->ev_write != NULL) {
        event_free(c->ev_write);
        c->ev_write = NULL;
    }
    c->fd = -1;
}

/* Drops the libpq connection and its socket events; the FIFO must be empty. */
static void
conn_close(struct pg_conn *c)
{
    assert(c->head == NULL);
    conn_free_events(c);
    if (c->ev_timer != NULL)
        event_del(c->ev_timer);
    if (c->ev_defer != NULL)
        event_del(c->ev_defer);
    c->doomed = false;
    c->doom_reason[0] = '\0';
    if (c->pq != NULL) {
        PQfinish(c->pq);
        c->pq = NULL;
    }
    c->backend_pid = 0;
    c->prepares_left = 0;
}

/*
 * Postpones a reset to the next loop iteration: used where callbacks must
 * not run (inside pg_query() and friends). The connection takes no new work.
 */
static void
conn_doom(struct pg_conn *c, const char *reason)
{
    if (!c->doomed) {
        c->doomed = true;
        trim_msg(c->doom_reason, sizeof(c->doom_reason), reason);
    }
    event_active(c->ev_defer, EV_TIMEOUT, 1);
}

/* Writes what libpq has queued; EV_WRITE stays armed only while some is left. */
static bool
conn_flush(struct pg_conn *c)
{
    int r = PQflush(c->pq);
    if (r < 0)
        return false;
    if (r == 1)
        event_add(c->ev_write, NULL);
    else
        event_del(c->ev_write);
    return true;
}

/* Waits for the socket direction PQconnectPoll asked for, on its current socket. */
static bool
conn_wait_connect(struct pg_conn *c, PostgresPollingStatusType st)
{
    evutil_socket_t fd = PQsocket(c->pq);
    if (fd < 0)
        return false;
    /* libpq may switch sockets between steps (next host, SSL/GSS retry), and
     * a new socket may even reuse the old number: always start afresh. */
    conn_free_events(c);
    short what = st == PGRES_POLLING_READING ? EV_READ : EV_WRITE;
    c->ev_connect = event_new(c->pool->base, fd, what, conn_io_cb, c);
    if (c->ev_connect == NULL || event_add(c->ev_connect, NULL) != 0)
        return false;
    c->fd = fd;
    return true;
}

/* Schedules the next connect attempt with jittered exponential backoff;
 * returns the delay in ms. */
static int
conn_schedule_backoff(struct pg_conn *c)
{
    struct pg_pool *p = c->pool;
    if (c->backoff_ms <= 0)
        c->backoff_ms = p->backoff_min_ms;
    /* +-25% so that the connections of many processes do not move in step */
    double f = 0.75 + 0.5 * ((double)(pool_rand(p) >> 11) / (double)(1ull << 53));
    int ms = (int)(c->backoff_ms * f);
    if (ms < 1)
        ms = 1;
    c->backoff_ms = c->backoff_ms > p->backoff_max_ms / 2 ? p->backoff_max_ms : c->backoff_ms * 2;
    struct timeval tv = ms_to_tv(ms);
    event_add(c->ev_timer, &tv);
    return ms;
}

static void
count_disconnect(struct pg_pool *p, const char *why)
{
    if (p->metrics == NULL)
        return;
    char labels[64];
    snprintf(labels, sizeof(labels), "reason=\"%s\"", why);
    metric_inc(metrics_counter(p->metrics, "mbox_pg_disconnects_total",
                               "PostgreSQL connections lost or failed, by reason", labels));
}

/*
 * The one disconnect path: drops the connection, moves it to BACKOFF and
 * completes everything it had in flight (the head with head_kind, the rest
 * with PG_ERR_UNAVAILABLE). why is a fixed token for logs and metrics,
 * reason the human text. May run user callbacks: call only from a pool event
 * handler, and do not touch the pool afterwards if p->dying.
 */
static void
conn_reset(struct pg_conn *c, const char *why, const char *reason, enum pg_err_kind head_kind)
{
    struct pg_pool *p = c->pool;
    char msg[256], q[300];
    trim_msg(msg, sizeof(msg), reason);

    int inflight = c->inflight, pid = c->backend_pid;
    bool connecting = c->state == PG_CONN_CONNECTING;
    struct pending *list = fifo_take_all(c);
    conn_set_state(c, PG_CONN_BACKOFF);
    conn_close(c);
    int delay = conn_schedule_backoff(c);
    if (connecting)
        log_warn("pg_connect_failed", "conn=%d reason=%s detail=%s retry_ms=%d", c->idx, why,
                 log_q(q, sizeof(q), msg), delay);
    else
        log_warn("pg_disconnected", "conn=%d pid=%d reason=%s detail=%s inflight=%d retry_ms=%d",
                 c->idx, pid, why, log_q(q, sizeof(q), msg), inflight, delay);
    count_disconnect(p, why);
    complete_list(p, list, head_kind, msg);
}

/* ---- sending ---- */

static struct pending *
pending_new(struct pg_pool *p, pg_cb cb, void *arg)
{
    struct pending *q = calloc(1, sizeof(*q));
    if (q == NULL)
        return NULL;
    q->cb = cb;
    q->arg = arg;
    q->stage = STAGE_RESULTS;
    q->start_us = now_us();
    if (p->query_timeout_ms > 0)
        q->deadline_us = q->start_us + (uint64_t)p->query_timeout_ms * 1000u;
    return q;
}

/* Queues a PREPARE and its sync. False: the connection is unusable. */
static bool
conn_send_prepare(struct pg_conn *c, const struct pg_stmt *s, bool counts_for_ready)
{
    struct pending *q = pending_new(c->pool, NULL, NULL);
    if (q == NULL)
        return false;
    q->stmt = s;
    q->counts_for_ready = counts_for_ready;
    if (!PQsendPrepare(c->pq, s->name, s->sql, s->nparams, s->types) || !PQpipelineSync(c->pq)) {
        free(q);
        return false;
    }
    fifo_push(c, q);
    if (counts_for_ready)
        c->prepares_left++;
    pool_tick_arm(c->pool);
    return true;
}

/* Queues the pool's session SQL (pg_pool_config.session_sql) and its sync,
 * answered like a prepare. False: the connection is unusable. */
static bool
conn_send_session(struct pg_conn *c)
{
    struct pending *q = pending_new(c->pool, NULL, NULL);
    if (q == NULL)
        return false;
    q->stmt = &c->pool->session;
    q->counts_for_ready = true;
    if (!PQsendQueryParams(c->pq, c->pool->session.sql, 0, NULL, NULL, NULL, NULL, 1) ||
        !PQpipelineSync(c->pq)) {
        free(q);
        return false;
    }
    fifo_push(c, q);
    c->prepares_left++;
    pool_tick_arm(c->pool);
    return true;
}

/* Connected: pipeline mode, socket events, then the session SQL and the statements. */
static void
conn_established(struct pg_conn *c)
{
    struct pg_pool *p = c->pool;
    char q[128];

    if (PQsetnonblocking(c->pq, 1) != 0 || PQenterPipelineMode(c->pq) != 1) {
        conn_reset(c, "setup_failed", PQerrorMessage(c->pq), PG_ERR_UNAVAILABLE);
        return;
    }
    evutil_socket_t fd = PQsocket(c->pq);
    conn_free_events(c);
    c->ev_read = event_new(p->base, fd, EV_READ | EV_PERSIST, conn_io_cb, c);
    c->ev_write = event_new(p->base, fd, EV_WRITE | EV_PERSIST, conn_io_cb, c);
    if (c->ev_read == NULL || c->ev_write == NULL || event_add(c->ev_read, NULL) != 0) {
        conn_reset(c, "setup_failed", "cannot create socket events", PG_ERR_UNAVAILABLE);
        return;
    }
    c->fd = fd;
    event_del(c->ev_timer); /* connect timeout */
    c->backend_pid = PQbackendPID(c->pq);
    const char *host = PQhost(c->pq);
    log_info("pg_connected", "conn=%d pid=%d host=%s port=%s server_version=%d", c->idx,
             c->backend_pid, log_q(q, sizeof(q), host != NULL ? host : ""),
             PQport(c->pq) != NULL ? PQport(c->pq) : "", PQserverVersion(c->pq));

    if (p->stmts == NULL && p->session.sql == NULL) {
        conn_set_state(c, PG_CONN_READY);
        c->backoff_ms = p->backoff_min_ms;
        return;
    }
    conn_set_state(c, PG_CONN_PREPARING);
    if (p->session.sql != NULL && !conn_send_session(c)) {
        conn_reset(c, "setup_failed", PQerrorMessage(c->pq), PG_ERR_UNAVAILABLE);
        return;
    }
    for (struct pg_stmt *s = p->stmts; s != NULL; s = s->next) {
        if (!conn_send_prepare(c, s, true)) {
            conn_reset(c, "setup_failed", PQerrorMessage(c->pq), PG_ERR_UNAVAILABLE);
            return;
        }
    }
    if (!conn_flush(c))
        conn_reset(c, "connection_lost", PQerrorMessage(c->pq), PG_ERR_UNAVAILABLE);
}

/* ---- multi-host conninfo ---- */

static void
hosts_free(struct host_lists *h)
{
    if (h == NULL)
        return;
    for (int l = 0; l < HL_COUNT; l++) {
        if (h->item[l] != NULL) {
            for (int i = 0; i < h->nhosts; i++)
                free(h->item[l][i]);
            free(h->item[l]);
        }
        free(h->buf[l]);
    }
    free(h->kw);
    free(h->val);
    if (h->opts != NULL)
        PQconninfoFree(h->opts);
    free(h);
}

/* Splits s at commas into n strings (n = the number of entries). */
static char **
split_commas(const char *s, int *n)
{
    int count = 1;
    for (const char *c = s; *c != '\0'; c++)
        count += *c == ',';
    char **v = calloc((size_t)count, sizeof(*v));
    if (v == NULL)
        return NULL;
    const char *start = s;
    for (int i = 0; i < count; i++) {
        size_t len = strcspn(start, ",");
        v[i] = strndup(start, len);
        if (v[i] == NULL) {
            for (int j = 0; j < i; j++)
                free(v[j]);
            free(v);
            return NULL;
        }
        start += len + (start[len] == ',');
    }
    *n = count;
    return v;
}

/*
 * The host lists of parsed options: NULL when there is one host (or on
 * failure: the pool then connects with the conninfo string, as libpq
 * would). Takes ownership of opts either way.
 */
static struct host_lists *
hosts_new(PQconninfoOption *opts)
{
    static const char *const names[HL_COUNT] = {"host", "hostaddr", "port"};
    struct host_lists *h = calloc(1, sizeof(*h));
    if (h == NULL) {
        PQconninfoFree(opts);
        return NULL;
    }
    h->opts = opts;
    int total = 0;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++)
        total++;
    h->kw = calloc((size_t)total + 1, sizeof(*h->kw));
    h->val = calloc((size_t)total + 1, sizeof(*h->val));
    if (h->kw == NULL || h->val == NULL)
        goto single;
    for (int l = 0; l < HL_COUNT; l++)
        h->at[l] = -1;
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (o->val == NULL)
            continue;
        for (int l = 0; l < HL_COUNT; l++) {
            if (strcmp(o->keyword, names[l]) == 0)
                h->at[l] = h->nopts;
        }
        h->kw[h->nopts] = o->keyword;
        h->val[h->nopts] = o->val;
        h->nopts++;
    }
    int n[HL_COUNT] = {0};
    for (int l = 0; l < HL_COUNT; l++) {
        if (h->at[l] < 0)
            continue;
        h->item[l] = split_commas(h->val[h->at[l]], &n[l]);
        if (h->item[l] == NULL)
            goto single;
        if (n[l] > h->nhosts)
            h->nhosts = n[l];
    }
    if (h->nhosts < 2)
        goto single;
    for (int l = 0; l < HL_COUNT; l++) {
        if (h->item[l] == NULL)
            continue;
        if (n[l] != h->nhosts) {
            /* Only a single port may stand for every host; libpq rejects
             * other mismatches, and so will its own parse of the string. */
            if (n[l] != 1)
                goto single;
            free(h->item[l][0]);
            free(h->item[l]);
            h->item[l] = NULL;
            continue;
        }
        h->buf[l] = malloc(strlen(h->val[h->at[l]]) + 1);
        if (h->buf[l] == NULL)
            goto single;
    }
    return h;

single:
    /* item[] arrays may be partly made: free what has nhosts entries. */
    for (int l = 0; l < HL_COUNT; l++) {
        if (h->item[l] != NULL) {
            for (int i = 0; i < n[l]; i++)
                free(h->item[l][i]);
            free(h->item[l]);
            h->item[l] = NULL;
        }
    }
    h->nhosts = 0;
    hosts_free(h);
    return NULL;
}

/* Points the host, hostaddr and port values at the lists rotated to begin
 * with entry first. */
static void
hosts_rotate(struct host_lists *h, int first)
{
    for (int l = 0; l < HL_COUNT; l++) {
        if (h->item[l] == NULL)
            continue;
        char *out = h->buf[l];
        for (int k = 0; k < h->nhosts; k++) {
            const char *e = h->item[l][(first + k) % h->nhosts];
            size_t len = strlen(e);
            if (k > 0)
                *out++ = ',';
            memcpy(out, e, len);
            out += len;
        }
        *out = '\0';
        h->val[h->at[l]] = h->buf[l];
    }
}

/* A connect attempt timed out: the next one starts after the host it was
 * stuck on (found by PQhost/PQport, else simply the next one). */
static void
conn_skip_stuck_host(struct pg_conn *c)
{
    struct host_lists *h = c->pool->hosts;
    if (h == NULL || c->pq == NULL)
        return;
    const char *host = PQhost(c->pq), *port = PQport(c->pq);
    int next = (c->first_host + 1) % h->nhosts;
    for (int i = 0; host != NULL && i < h->nhosts; i++) {
        const char *hi = h->item[HL_HOST] != NULL       ? h->item[HL_HOST][i]
                         : h->item[HL_HOSTADDR] != NULL ? h->item[HL_HOSTADDR][i]
                                                        : NULL;
        const char *pi = h->item[HL_PORT] != NULL ? h->item[HL_PORT][i] : NULL;
        if (hi != NULL && strcmp(hi, host) == 0 &&
            (pi == NULL || (port != NULL && strcmp(pi, port) == 0))) {
            next = (i + 1) % h->nhosts;
            break;
        }
    }
    char q[128];
    log_info("pg_connect_skip_host", "conn=%d stuck=%s:%s next=%d", c->idx,
             log_q(q, sizeof(q), host != NULL ? host : "?"), port != NULL ? port : "?", next);
    c->first_host = next;
}

/* Starts a connect attempt (from DISCONNECTED or BACKOFF). */
static void
conn_connect(struct pg_conn *c)
{
    struct pg_pool *p = c->pool;

    conn_set_state(c, PG_CONN_CONNECTING);
    if (p->hosts != NULL) {
        hosts_rotate(p->hosts, c->first_host);
        c->pq = PQconnectStartParams(p->hosts->kw, p->hosts->val, 0);
    } else {
        c->pq = PQconnectStart(p->conninfo);
    }
    if (c->pq == NULL) {
        conn_reset(c, "connect_failed", "out of memory", PG_ERR_UNAVAILABLE);
        return;
    }
    if (PQstatus(c->pq) == CONNECTION_BAD) {
        conn_reset(c, "connect_failed", PQerrorMessage(c->pq), PG_ERR_UNAVAILABLE);
        return;
    }
    PQsetNoticeProcessor(c->pq, notice_processor, c);
    /* libpq's first step is always "wait until writable". */
    if (!conn_wait_connect(c, PGRES_POLLING_WRITING)) {
        conn_reset(c, "connect_failed", "cannot watch socket", PG_ERR_UNAVAILABLE);
        return;
    }
    struct timeval tv = ms_to_tv(p->connect_timeout_ms);
    event_add(c->ev_timer, &tv);
}

/* One PQconnectPoll step after the socket became ready. */
static void
conn_connect_step(struct pg_conn *c)
{
    PostgresPollingStatusType st = PQconnectPoll(c->pq);
    switch (st) {
    case PGRES_POLLING_OK:
        conn_established(c);
        return;
    case PGRES_POLLING_READING:
    case PGRES_POLLING_WRITING:
        if (!conn_wait_connect(c, st))
            conn_reset(c, "connect_failed", "cannot watch socket", PG_ERR_UNAVAILABLE);
        return;
    case PGRES_POLLING_FAILED:
    default:
        conn_reset(c, "connect_failed", PQerrorMessage(c->pq), PG_ERR_UNAVAILABLE);
        return;
    }
}

/* A statement prepare came back: count it, or reset on failure. */
static void
conn_prepare_done(struct pg_conn *c, struct pending *q)
{
    ExecStatusType st = q->res != NULL ? PQresultStatus(q->res) : PGRES_FATAL_ERROR;
    if (st != PGRES_COMMAND_OK) {
        char msg[256], qn[128], qm[300];
        const char *state = q->res != NULL ? PQresultErrorField(q->res, PG_DIAG_SQLSTATE) : NULL;
        trim_msg(msg, sizeof(msg), q->res != NULL ? PQresultErrorMessage(q->res) : NULL);
        log_error("pg_prepare_failed", "conn=%d pid=%d stmt=%s sqlstate=%s msg=%s", c->idx,
                  c->backend_pid, log_q(qn, sizeof(qn), q->stmt->name), state != NULL ? state : "-",
                  log_q(qm, sizeof(qm), msg));
        pending_free(q);
        conn_reset(c, "prepare_failed", msg, PG_ERR_UNAVAILABLE);
        return;
    }
    bool counts = q->counts_for_ready;
    pending_free(q);
    if (counts && c->state == PG_CONN_PREPARING && --c->prepares_left == 0) {
        conn_set_state(c, PG_CONN_READY);
        c->backoff_ms = c->pool->backoff_min_ms;
    }
}

/*
 * Reads every result libpq can hand out without blocking and completes FIFO
 * entries as their sync points arrive. Returns false if the connection was
 * reset or the pool is going away (then c must not be used).
 */
static bool
conn_drain(struct pg_conn *c)
{
    struct pg_pool *p = c->pool;
    int nulls = 0;

    while (c->head != NULL && !PQisBusy(c->pq)) {
        struct pending *q = c->head;
        PGresult *r = PQgetResult(c->pq);
        if (r == NULL) {
            if (q->stage == STAGE_RESULTS) {
                q->stage = STAGE_SYNC;
                nulls = 0;
                continue;
            }
            /* Nothing more for now (libpq versions differ on extra NULLs). */
            if (++nulls >= 2)
                break;
            continue;
        }
        nulls = 0;
        ExecStatusType st = PQresultStatus(r);
        if (st == PGRES_PIPELINE_SYNC) {
            PQclear(r);
            fifo_pop(c);
            if (q->cb == NULL) {
                conn_prepare_done(c, q);
                if (c->state != PG_CONN_READY && c->state != PG_CONN_PREPARING)
                    return false;
                if (p->dying)
                    return false;
                continue;
            }
            complete_result(p, q);
            pending_free(q);
            if (p->dying)
                return false;
            continue;
        }
        if (st == PGRES_COPY_IN || st == PGRES_COPY_OUT || st == PGRES_COPY_BOTH ||
            q->stage == STAGE_SYNC) {
            /* COPY cannot run in a pipeline, and a result after the NULL
             * means the connection broke or we lost track: either way it
             * cannot be trusted any more. */
            char msg[256];
            bool lost = PQstatus(c->pq) == CONNECTION_BAD;
            trim_msg(msg, sizeof(msg),
                     lost ? PQresultErrorMessage(r) : "unexpected result in pipeline");
            PQclear(r);
            conn_reset(c, lost ? "connection_lost" : "protocol", msg, PG_ERR_UNAVAILABLE);
            return false;
        }
        /* Keep the last result, but never let a later one hide an error. */
        bool r_err = st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK && st != PGRES_EMPTY_QUERY &&
                     st != PGRES_SINGLE_TUPLE;
        ExecStatusType have = q->res != NULL ? PQresultStatus(q->res) : PGRES_EMPTY_QUERY;
        bool have_err = q->res != NULL && have != PGRES_TUPLES_OK && have != PGRES_COMMAND_OK &&
                        have != PGRES_EMPTY_QUERY && have != PGRES_SINGLE_TUPLE;
        if (have_err && !(have == PGRES_PIPELINE_ABORTED && r_err)) {
            PQclear(r);
        } else {
            if (q->res != NULL)
                PQclear(q->res);
            q->res = r;
        }
    }
    if (PQstatus(c->pq) == CONNECTION_BAD) {
        conn_reset(c, "connection_lost", PQerrorMessage(c->pq), PG_ERR_UNAVAILABLE);
        return false;
    }
    return true;
}

/* Socket readable while connected: read, then hand out what is complete. */
static void
conn_readable(struct pg_conn *c)
{
    if (!PQconsumeInput(c->pq)) {
        conn_reset(c, "connection_lost", PQerrorMessage(c->pq), PG_ERR_UNAVAILABLE);
        return;
    }
    conn_drain(c);
}

/* The connection state machine: every libevent wake-up lands here. */
static void
conn_event(struct pg_conn *c, enum pg_conn_event ev)
{
    struct pg_pool *p = c->pool;

    if (p->dying)
        return;
    switch (c->state) {
    case PG_CONN_DISCONNECTED:
        return;
    case PG_CONN_BACKOFF:
        if (ev == PG_CONN_EV_TIMER)
            conn_connect(c);
        return;
    case PG_CONN_CONNECTING:
        if (ev == PG_CONN_EV_TIMER) {
            conn_skip_stuck_host(c);
            conn_reset(c, "connect_timeout", "connect timed out", PG_ERR_UNAVAILABLE);
        } else if (ev == PG_CONN_EV_READABLE || ev == PG_CONN_EV_WRITABLE)
            conn_connect_step(c);
        return;
    case PG_CONN_PREPARING:
    case PG_CONN_READY:
        break;
    }

    switch (ev) {
    case PG_CONN_EV_TIMER:
        return;
    case PG_CONN_EV_DEFERRED:
        if (c->doomed) {
            char reason[sizeof(c->doom_reason)];
            memcpy(reason, c->doom_reason, sizeof(reason));
            conn_reset(c, "connection_lost", reason, PG_ERR_UNAVAILABLE);
            return;
        }
        /* pg_query() may have made libpq read input while flushing; that
         * data will not wake the socket event, so look at it now. */
        conn_readable(c);
        return;
    case PG_CONN_EV_WRITABLE:
        if (!conn_flush(c)) {
            conn_reset(c, "connection_lost", PQerrorMessage(c->pq), PG_ERR_UNAVAILABLE);
            return;
        }
        /* PQflush reads input when it cannot write everything. */
        conn_drain(c);
        return;
    case PG_CONN_EV_READABLE:
        conn_readable(c);
        return;
    }
}

/* ---- public: parameters ---- */

void
pg_params_init(struct pg_params *p)
{
    memset(p, 0, sizeof(*p));
}

/* Reserves the next slot, or marks the set invalid (n > PG_MAX_PARAMS). */
static int
param_slot(struct pg_params *p)
{
    if (p->n >= PG_MAX_PARAMS) {
        p->n = PG_MAX_PARAMS + 1;
        return -1;
    }
    int i = p->n++;
    p->values[i] = NULL;
    p->lengths[i] = 0;
    p->formats[i] = 0;
    p->types[i] = 0;
    return i;
}

void
pg_param_i64(struct pg_params *p, int64_t v)
{
    int i = param_slot(p);
    if (i < 0)
        return;
    uint64_t u = (uint64_t)v;
    for (int b = 0; b < 8; b++)
        p->scratch[i][b] = (char)(unsigned char)(u >> (56 - 8 * b));
    p->values[i] = p->scratch[i];
    p->lengths[i] = 8;
    p->formats[i] = 1;
    p->types[i] = PG_OID_INT8;
}

void
pg_param_i32(struct pg_params *p, int32_t v)
{
    int i = param_slot(p);
    if (i < 0)
        return;
    uint32_t u = htonl((uint32_t)v);
    memcpy(p->scratch[i], &u, 4);
    p->values[i] = p->scratch[i];
    p->lengths[i] = 4;
    p->formats[i] = 1;
    p->types[i] = PG_OID_INT4;
}

void
pg_param_bool(struct pg_params *p, bool v)
{
    int i = param_slot(p);
    if (i < 0)
        return;
    p->scratch[i][0] = v ? 1 : 0;
    p->values[i] = p->scratch[i];
    p->lengths[i] = 1;
    p->formats[i] = 1;
    p->types[i] = PG_OID_BOOL;
}

void
pg_param_text(struct pg_params *p, const char *s)
{
    int i = param_slot(p);
    if (i < 0)
        return;
    p->values[i] = s; /* NULL is SQL NULL */
}

/* A binary value of type oid. */
static void
param_binary(struct pg_params *p, Oid oid, const void *data, size_t len)
{
    if (len > (size_t)INT_MAX || (data == NULL && len > 0)) {
        p->n = PG_MAX_PARAMS + 1; /* invalid: pg_query() refuses the set */
        return;
    }
    int i = param_slot(p);
    if (i < 0)
        return;
    /* libpq reads a NULL value as SQL NULL; an empty value needs a pointer. */
    p->values[i] = data != NULL ? data : p->scratch[i];
    p->lengths[i] = (int)len;
    p->formats[i] = 1;
    p->types[i] = oid;
}

void
pg_param_bytea(struct pg_params *p, const void *data, size_t len)
{
    param_binary(p, PG_OID_BYTEA, data, len);
}

/* ---- public: arrays ---- */

/* The array header (array_recv): ndim, flags, element oid, length, lower bound. */
#define ARRAY_HEADER 20

static void
put_u32(unsigned char *b, uint32_t v)
{
    b[0] = (unsigned char)(v >> 24);
    b[1] = (unsigned char)(v >> 16);
    b[2] = (unsigned char)(v >> 8);
    b[3] = (unsigned char)v;
}

/* Room for need more bytes; false (and a->ok false) when it cannot grow. */
static bool
array_room(struct pg_array *a, size_t need)
{
    if (!a->ok)
        return false;
    if (a->cap - a->len >= need)
        return true;
    size_t cap = a->cap ? a->cap : 256;
    while (cap - a->len < need) {
        if (cap > (size_t)INT_MAX) {
            a->ok = false;
            return false;
        }
        cap *= 2;
    }
    unsigned char *b = realloc(a->buf, cap);
    if (b == NULL) {
        a->ok = false;
        return false;
    }
    a->buf = b;
    a->cap = cap;
    return true;
}

void
pg_array_init(struct pg_array *a, enum pg_array_type type)
{
    static const Oid elem[] = {[PG_ARRAY_INT8] = PG_OID_INT8,
                               [PG_ARRAY_INT4] = PG_OID_INT4,
                               [PG_ARRAY_TEXT] = PG_OID_TEXT,
                               [PG_ARRAY_BYTEA] = PG_OID_BYTEA};
    memset(a, 0, sizeof(*a));
    a->ok = true;
    a->type = type;
    a->elem_oid = elem[type];
    if (array_room(a, ARRAY_HEADER))
        a->len = ARRAY_HEADER;
}

/* One element: its length (-1: NULL), then its bytes. */
static void
array_elem(struct pg_array *a, const void *data, int32_t len)
{
    size_t n = len > 0 ? (size_t)len : 0;
    if (!array_room(a, 4 + n))
        return;
    put_u32(a->buf + a->len, (uint32_t)len);
    if (n > 0)
        memcpy(a->buf + a->len + 4, data, n);
    a->len += 4 + n;
    a->n++;
}

void
pg_array_i64(struct pg_array *a, int64_t v)
{
    unsigned char b[8];
    put_u32(b, (uint32_t)((uint64_t)v >> 32));
    put_u32(b + 4, (uint32_t)v);
    array_elem(a, b, 8);
}

void
pg_array_i32(struct pg_array *a, int32_t v)
{
    unsigned char b[4];
    put_u32(b, (uint32_t)v);
    array_elem(a, b, 4);
}

void
pg_array_bytes(struct pg_array *a, const void *data, size_t len)
{
    if (len > (size_t)INT32_MAX) {
        a->ok = false;
        return;
    }
    array_elem(a, data, (int32_t)len);
}

void
pg_array_null(struct pg_array *a)
{
    a->has_null = true;
    array_elem(a, NULL, -1);
}

void
pg_param_array(struct pg_params *p, struct pg_array *a)
{
    static const Oid array_oid[] = {[PG_ARRAY_INT8] = 1016,
                                    [PG_ARRAY_INT4] = 1007,
                                    [PG_ARRAY_TEXT] = 1009,
                                    [PG_ARRAY_BYTEA] = 1001};
    if (!a->ok) {
        p->n = PG_MAX_PARAMS + 1;
        return;
    }
    put_u32(a->buf, 1);
    put_u32(a->buf + 4, a->has_null ? 1 : 0);
    put_u32(a->buf + 8, a->elem_oid);
    put_u32(a->buf + 12, (uint32_t)a->n);
    put_u32(a->buf + 16, 1);
    param_binary(p, array_oid[a->type], a->buf, a->len);
}

void
pg_array_free(struct pg_array *a)
{
    free(a->buf);
    memset(a, 0, sizeof(*a));
}

void
pg_param_null(struct pg_params *p)
{
    (void)param_slot(p);
}

/* ---- public: pool ---- */

/* connect_timeout from the conninfo (seconds), else our default. */
static int
conninfo_connect_timeout_ms(PQconninfoOption *opts)
{
    for (PQconninfoOption *o = opts; o->keyword != NULL; o++) {
        if (strcmp(o->keyword, "connect_timeout") == 0 && o->val != NULL && o->val[0] != '\0') {
            int s = atoi(o->val);
            if (s > 0)
                return s < 3600 ? s * 1000 : 3600 * 1000;
        }
    }
    return PG_DEFAULT_CONNECT_TIMEOUT_MS;
}

static void
pool_init_metrics(struct pg_pool *p)
{
    struct metrics *m = p->metrics;
    if (m == NULL)
        return;
    const char *h = "PostgreSQL queries by outcome";
    p->m_ok = metrics_counter(m, "mbox_pg_queries_total", h, "result=\"ok\"");
    p->m_error = metrics_counter(m, "mbox_pg_queries_total", h, "result=\"error\"");
    p->m_unavailable = metrics_counter(m, "mbox_pg_queries_total", h, "result=\"unavailable\"");
    p->m_timeout = metrics_counter(m, "mbox_pg_queries_total", h, "result=\"timeout\"");
    p->m_up = metrics_gauge(m, "mbox_pg_connections_ready", "PostgreSQL connections ready", NULL);
    p->m_duration = metrics_histogram(m, "mbox_pg_query_duration_seconds",
                                      "Time from pg_query() to its callback", NULL);
    /* Present at 0 from the start (dashboards, rate()); reasons come as they happen. */
    metrics_counter(m, "mbox_pg_disconnects_total",
                    "PostgreSQL connections lost or failed, by reason",
                    "reason=\"connect_failed\"");
}

struct pg_pool *
pg_pool_new(struct event_base *base, const struct pg_pool_config *cfg, struct metrics *metrics)
{
    if (base == NULL || cfg == NULL || cfg->conninfo == NULL || cfg->size < 1 || cfg->size > 1024 ||
        cfg->backoff_min_ms < 0 || cfg->backoff_max_ms < 0 || cfg->query_timeout_ms < 0 ||
        cfg->max_inflight < 0)
        return NULL;

    char *err = NULL;
    PQconninfoOption *opts = PQconninfoParse(cfg->conninfo, &err);
    if (opts == NULL) {
        char q[300], m[256];
        log_error("pg_bad_conninfo", "msg=%s",
                  log_q(q, sizeof(q), trim_msg(m, sizeof(m), err != NULL ? err : "?")));
        PQfreemem(err);
        return NULL;
    }
    int connect_timeout_ms = conninfo_connect_timeout_ms(opts);

    struct pg_pool *p = calloc(1, sizeof(*p));
    if (p == NULL) {
        PQconninfoFree(opts);
        return NULL;
    }
    p->hosts = hosts_new(opts); /* owns opts now */
    p->base = base;
    p->size = cfg->size;
    p->backoff_min_ms = cfg->backoff_min_ms > 0 ? cfg->backoff_min_ms : PG_DEFAULT_BACKOFF_MIN_MS;
    p->backoff_max_ms = cfg->backoff_max_ms > 0 ? cfg->backoff_max_ms : PG_DEFAULT_BACKOFF_MAX_MS;
    if (p->backoff_max_ms < p->backoff_min_ms)
        p->backoff_max_ms = p->backoff_min_ms;
    p->query_timeout_ms = cfg->query_timeout_ms;
    p->max_inflight = cfg->max_inflight > 0 ? cfg->max_inflight : PG_DEFAULT_MAX_INFLIGHT;
    p->on_up = cfg->on_up;
    p->on_up_arg = cfg->on_up_arg;
    p->connect_timeout_ms = connect_timeout_ms;
    p->metrics = metrics;
    p->rng = (uint64_t)time(NULL) ^ ((uint64_t)getpid() << 32) ^ (uint64_t)(uintptr_t)p ^ now_us();
    p->conninfo = strdup(cfg->conninfo);
    p->conns = calloc((size_t)p->size, sizeof(*p->conns));
    static char session_name[] = "session_sql";
    p->session.name = session_name;
    if (cfg->session_sql != NULL && (p->session.sql = strdup(cfg->session_sql)) == NULL)
        goto fail;
    if (p->conninfo == NULL || p->conns == NULL)
        goto fail;
    if (p->query_timeout_ms > 0) {
        p->ev_tick = event_new(base, -1, 0, tick_cb, p);
        if (p->ev_tick == NULL)
            goto fail;
    }
    for (int i = 0; i < p->size; i++) {
        struct pg_conn *c = &p->conns[i];
        c->pool = p;
        c->idx = i;
        c->fd = -1;
        c->state = PG_CONN_DISCONNECTED;
        c->backoff_ms = p->backoff_min_ms;
        c->ev_timer = event_new(base, -1, 0, conn_timer_cb, c);
        c->ev_defer = event_new(base, -1, 0, conn_defer_cb, c);
        if (c->ev_timer == NULL || c->ev_defer == NULL)
            goto fail;
    }
    pool_init_metrics(p);
    for (int i = 0; i < p->size; i++)
        conn_connect(&p->conns[i]);
    return p;

fail:
    /* Nothing has connected yet: pool_destroy copes with half-made pools. */
    pool_destroy(p);
    return NULL;
}

/* Closes every connection, completes what was in flight, frees the pool. */
static void
pool_destroy(struct pg_pool *p)
{
    p->dying = true;
    p->destroying = true;
    if (p->ev_tick != NULL)
        event_del(p->ev_tick);

    struct pending *all = NULL, **tailp = &all;
    for (int i = 0; p->conns != NULL && i < p->size; i++) {
        struct pg_conn *c = &p->conns[i];
        if (c->pool == NULL)
            continue; /* never initialised */
        struct pending *list = fifo_take_all(c);
        while (list != NULL) {
            struct pending *q = list;
            list = q->next;
            q->next = NULL;
            *tailp = q;
            tailp = &q->next;
        }
        if (c->state != PG_CONN_DISCONNECTED) {
            conn_set_state(c, PG_CONN_DISCONNECTED);
            log_info("pg_closed", "conn=%d pid=%d", c->idx, c->backend_pid);
        }
        conn_close(c);
    }
    /* Every entry gets PG_ERR_UNAVAILABLE: pass that as the head kind. */
    complete_list(p, all, PG_ERR_UNAVAILABLE, "pool closed");

    for (int i = 0; p->conns != NULL && i < p->size; i++) {
        struct pg_conn *c = &p->conns[i];
        if (c->ev_timer != NULL)
            event_free(c->ev_timer);
        if (c->ev_defer != NULL)
            event_free(c->ev_defer);
    }
    if (p->ev_tick != NULL)
        event_free(p->ev_tick);
    struct pg_stmt *s = p->stmts;
    while (s != NULL) {
        struct pg_stmt *next = s->next;
        free(s->name);
        free(s->sql);
        free(s->types);
        free(s);
        s = next;
    }
    free(p->conns);
    hosts_free(p->hosts);
    free(p->conninfo);
    free(p->session.sql);
    free(p);
}

void
pg_pool_free(struct pg_pool *p)
{
    if (p == NULL || p->dying)
        return;
    p->dying = true;
    /* From inside a callback, the handler that ran it frees the pool when it
     * unwinds (pool_reap): the code around the callback still uses it. */
    if (p->cb_depth > 0)
        return;
    pool_destroy(p);
}

bool
pg_pool_prepare(struct pg_pool *p, const char *name, const char *sql, int nparams, const Oid *types)
{
    if (p == NULL || p->dying || name == NULL || name[0] == '\0' || sql == NULL || nparams < 0 ||
        nparams > PG_MAX_PARAMS)
        return false;
    for (struct pg_stmt *s = p->stmts; s != NULL; s = s->next) {
        if (strcmp(s->name, name) != 0)
            continue;
        bool same = strcmp(s->sql, sql) == 0 && s->nparams == nparams &&
                    (types == NULL) == (s->types == NULL) &&
                    (types == NULL || memcmp(types, s->types, sizeof(Oid) * (size_t)nparams) == 0);
        if (!same) {
            char q[128];
            log_error("pg_prepare_conflict", "stmt=%s", log_q(q, sizeof(q), name));
        }
        return same;
    }

    struct pg_stmt *s = calloc(1, sizeof(*s));
    if (s == NULL)
        return false;
    s->name = strdup(name);
    s->sql = strdup(sql);
    s->nparams = nparams;
    if (types != NULL && nparams > 0) {
        s->types = malloc(sizeof(Oid) * (size_t)nparams);
        if (s->types != NULL)
            memcpy(s->types, types, sizeof(Oid) * (size_t)nparams);
    }
    if (s->name == NULL || s->sql == NULL || (types != NULL && nparams > 0 && s->types == NULL)) {
        free(s->name);
        free(s->sql);
        free(s->types);
        free(s);
        return false;
    }
    if (p->stmts_tail != NULL)
        p->stmts_tail->next = s;
    else
        p->stmts = s;
    p->stmts_tail = s;

    /* Connections already past their own prepares take this one now; being
     * pipelined, it runs before any query sent after it. */
    for (int i = 0; i < p->size; i++) {
        struct pg_conn *c = &p->conns[i];
        if ((c->state != PG_CONN_PREPARING && c->state != PG_CONN_READY) || c->doomed)
            continue;
        if (!conn_send_prepare(c, s, c->state == PG_CONN_PREPARING) || !conn_flush(c)) {
            conn_doom(c, PQerrorMessage(c->pq));
            continue;
        }
        event_active(c->ev_defer, EV_TIMEOUT, 1);
    }
    return true;
}

/* The ready connection with the fewest queries in flight, or NULL. */
static struct pg_conn *
pool_pick(struct pg_pool *p)
{
    struct pg_conn *best = NULL;
    unsigned start = p->rr++;
    for (int k = 0; k < p->size; k++) {
        struct pg_conn *c = &p->conns[(start + (unsigned)k) % (unsigned)p->size];
        if (c->state != PG_CONN_READY || c->doomed || c->inflight >= p->max_inflight)
            continue;
        if (best == NULL || c->inflight < best->inflight)
            best = c;
    }
    return best;
}

/* Sends one query (prepared when name != NULL) and queues its entry. */
static bool
pool_send(struct pg_pool *p, const char *name, const char *sql, const struct pg_params *params,
          pg_cb cb, void *arg)
{
    if (p == NULL || p->dying || cb == NULL)
        return false;
    if (params != NULL && (params->n < 0 || params->n > PG_MAX_PARAMS)) {
        log_error("pg_bad_params", "n=%d", params->n);
        return false;
    }
    struct pg_conn *c = pool_pick(p);
    if (c == NULL)
        return false;
    struct pending *q = pending_new(p, cb, arg);
    if (q == NULL)
        return false;

    int n = params != NULL ? params->n : 0;
    const char *const *values = params != NULL ? params->values : NULL;
    const int *lengths = params != NULL ? params->lengths : NULL;
    const int *formats = params != NULL ? params->formats : NULL;
    int ok;
    if (name != NULL)
        ok = PQsendQueryPrepared(c->pq, name, n, values, lengths, formats, 1);
    else
        ok = PQsendQueryParams(c->pq, sql, n, params != NULL ? params->types : NULL, values,
                               lengths, formats, 1);
    if (!ok) {
        /* Nothing was queued: the caller gets false, others on c get
         * PG_ERR_UNAVAILABLE on the next loop iteration if c is broken. */
        if (PQstatus(c->pq) == CONNECTION_BAD)
            conn_doom(c, PQerrorMessage(c->pq));
        else {
            char qm[300], m[256];
            log_error("pg_send_failed", "conn=%d msg=%s", c->idx,
                      log_q(qm, sizeof(qm), trim_msg(m, sizeof(m), PQerrorMessage(c->pq))));
        }
        free(q);
        return false;
    }
    if (!PQpipelineSync(c->pq)) {
        /* The query is queued without its sync point: this connection's
         * pipeline can no longer be matched, drop it. */
        conn_doom(c, PQerrorMessage(c->pq));
        free(q);
        return false;
    }
    fifo_push(c, q);
    if (!conn_flush(c))
        conn_doom(c, PQerrorMessage(c->pq)); /* q completes as unavailable */
    else
        event_active(c->ev_defer, EV_TIMEOUT, 1);
    pool_tick_arm(p);
    return true;
}

bool
pg_query(struct pg_pool *p, const char *name, const struct pg_params *params, pg_cb cb, void *arg)
{
    if (name == NULL)
        return false;
    return pool_send(p, name, NULL, params, cb, arg);
}

bool
pg_query_sql(struct pg_pool *p, const char *sql, const struct pg_params *params, pg_cb cb,
             void *arg)
{
    if (sql == NULL)
        return false;
    return pool_send(p, NULL, sql, params, cb, arg);
}

int
pg_pool_connected(const struct pg_pool *p)
{
    return p != NULL ? p->nready : 0;
}

int
pg_pool_size(const struct pg_pool *p)
{
    return p != NULL ? p->size : 0;
}

/* ---- public: result readers ---- */

bool
pg_is_null(const PGresult *r, int row, int col)
{
    return r == NULL || PQgetisnull(r, row, col);
}

int64_t
pg_get_i64(const PGresult *r, int row, int col)
{
    if (pg_is_null(r, row, col))
        return 0;
    const unsigned char *v = (const unsigned char *)PQgetvalue(r, row, col);
    int len = PQgetlength(r, row, col);
    if (v == NULL || (len != 8 && len != 4 && len != 2))
        return 0;
    uint64_t u = 0;
    for (int i = 0; i < len; i++)
        u = (u << 8) | v[i];
    /* sign-extend the shorter integers */
    if (len < 8 && (v[0] & 0x80))
        u |= ~(uint64_t)0 << (8 * len);
    return (int64_t)u;
}

bool
pg_get_bool(const PGresult *r, int row, int col)
{
    if (pg_is_null(r, row, col) || PQgetlength(r, row, col) != 1)
        return false;
    const char *v = PQgetvalue(r, row, col);
    return v != NULL && v[0] != 0;
}

const char *
pg_get_bytes(const PGresult *r, int row, int col, size_t *len)
{
    if (pg_is_null(r, row, col)) {
        if (len != NULL)
            *len = 0;
        return NULL;
    }
    int n = PQgetlength(r, row, col);
    if (len != NULL)
        *len = n > 0 ? (size_t)n : 0;
    return PQgetvalue(r, row, col);
}

int
pg_col(const PGresult *r, const char *name)
{
    if (r == NULL || name == NULL)
        return -1;
    return PQfnumber(r, name);
}
