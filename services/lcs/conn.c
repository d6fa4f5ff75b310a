/*
 * conn: lcsd's client connections, on raw sockets and one struct event
 * each (no bufferevent: two evbuffers per connection would cost more than
 * the whole budget below). WebSocket framing is lib/ws.c's; this file owns
 * the socket, the buffers, the timers and the state machine.
 *
 * State machine (conn_set_state() is the only place the state changes; it
 * asserts the move, logs it at debug level and keeps the per-state gauges):
 *
 *   HANDSHAKE ──valid upgrade on /ws──▶ AWAIT_LOGIN ──login ok──▶ ACTIVE
 *       │ bad request: HTTP 400/404/426/431  │ login timeout, bad token, │ heartbeat timeout,
 *       │                                    │ bad frame: close frame    │ kick, slow reader,
 *       ▼                                    ▼                           ▼ peer close, SIGTERM
 *     CLOSING ◀──────────────────────────────┴───────────────────────────┘
 *       │ output flushed, shutdown(SHUT_WR), input read and dropped until EOF
 *       │ or close_timeout_ms (so a client that still sends gets our close frame
 *       ▼ instead of a reset)
 *     DEAD: fd closed, unlinked from every table, freed by reap_cb after the
 *           current loop iteration (never inside a callback that may still use it)
 *   Any state goes straight to DEAD when the peer is gone (EOF, I/O error)
 *   or on a handshake timeout.
 *
 * Every change of state also sets the connection's deadline: handshake
 * timeout, login timeout, 3 heartbeat periods after the last frame
 * received, close timeout. Deadlines live in a timer wheel of WHEEL_SLOTS
 * slots of CONN_TICK_MS each, driven by one timer for the whole process;
 * activity only moves c->deadline later and the wheel re-files the
 * connection lazily when its old slot comes up, so a busy connection costs
 * nothing per frame.
 *
 * Memory per connection (LP64, glibc): sizeof(struct conn) is 328 bytes
 * (128 of them the struct event; 40 hold the login's platform, core level,
 * guest flag and token expiry, for paced targeting and the expiry close),
 * reported as the gauge
 * mbox_lcs_conn_struct_bytes. An idle logged-in connection also holds its
 * device_id string (malloc'd, typically 32-48 bytes with malloc's header)
 * and two hash-bucket pointers (16 bytes amortized): about 350 bytes of
 * user space, well under the 4 KiB target at 100k connections (~35 MB;
 * measured: see the note in services/lcs/lcsd.c).
 * Input is read into one shared 64 KiB scratch buffer; only a partial frame
 * left at the end of a read is copied into a per-connection buffer sized to
 * what the parser says it needs (at most WS_MESSAGE_BUF_MAX(max_message),
 * or WS_HANDSHAKE_MAX during the handshake), freed as soon as it is
 * consumed. Output is written directly; only what the socket did not take
 * is queued, in a buffer freed once flushed and capped at max_output_bytes
 * (then the connection is closed as a slow reader). Those transient buffers
 * are the gauge mbox_lcs_conn_buffer_bytes. The kernel's socket buffers are not
 * counted here (see so_sndbuf).
 */
#include "conn.h"

#include <assert.h>
#include <errno.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <unistd.h>

#include <event2/event.h>

#include "lcs.h"
#include "log.h"
#include "metrics.h"
#include "route.h"

#define WHEEL_SLOTS  2048 /* x CONN_TICK_MS = 102 s per turn; longer deadlines take turns */
#define SCRATCH_SIZE 65536
#define HASH_MIN     1024

_Static_assert((WHEEL_SLOTS & (WHEEL_SLOTS - 1)) == 0, "WHEEL_SLOTS must be a power of two");

/* Output not yet taken by the socket. */
struct outq {
    uint32_t off, len, cap;
    uint8_t data[];
};

struct conn_registry {
    struct conn *head, *tail; /* every connection but DEAD ones, in id order */
    size_t count;
    struct conn **by_id;
    size_t id_mask, id_n;
    struct conn **by_sess;
    size_t sess_mask, sess_n;
    struct conn *wheel[WHEEL_SLOTS];
    uint32_t tick_done; /* last tick whose slot was processed */
    int64_t start_ms;
    struct event *tick_ev;
    struct conn *reap; /* DEAD connections, linked through wheel_next */
    struct event *reap_ev;
    uint64_t next_id;
    bool all_closed;       /* lcs_all_closed() was called */
    int64_t full_log_ms;   /* when "connection limit reached" was last logged */
    uint64_t full_refused; /* connections refused at the limit since that log */
};

#define FULL_LOG_INTERVAL_MS 10000 /* the limit is logged at most this often, not per accept */

static void conn_cb(struct conn *c, enum conn_event ev);
static void conn_ev_cb(evutil_socket_t fd, short what, void *arg);

const char *
conn_state_str(enum conn_state s)
{
    switch (s) {
    case CONN_HANDSHAKE:
        return "handshake";
    case CONN_AWAIT_LOGIN:
        return "await_login";
    case CONN_ACTIVE:
        return "active";
    case CONN_CLOSING:
        return "closing";
    case CONN_DEAD:
        return "dead";
    }
    return "unknown";
}

static int
conn_fd(const struct conn *c)
{
    return event_get_fd(&c->ev);
}

static void
buffer_bytes_add(struct conn *c, int64_t d)
{
    metric_gauge_add(c->l->m.conn_buffer_bytes, d);
}

/* ---- hash tables ------------------------------------------------------------ */

static uint64_t
mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= UINT64_C(0xff51afd7ed558ccd);
    x ^= x >> 33;
    x *= UINT64_C(0xc4ceb9fe1a85ec53);
    x ^= x >> 33;
    return x;
}

/*
 * The session table is keyed by (app, uid) only: every device of a user is
 * in one chain, so the per-user session count and the oldest session are
 * one walk (the per_user_sessions cap bounds its length).
 */
static uint64_t
sess_hash(uint64_t app, uint64_t uid)
{
    return mix64(app * 31 + mix64(uid));
}

/* Doubles a table when it holds more entries than buckets; keeps it on failure. */
static void
table_grow(struct conn ***tab, size_t *mask, size_t n, bool by_id)
{
    if (n <= *mask + 1)
        return;
    size_t nb = (*mask + 1) * 2;
    struct conn **t = calloc(nb, sizeof(*t));
    if (t == NULL)
        return; /* longer chains, still correct */
    for (size_t i = 0; i <= *mask; i++) {
        struct conn *c = (*tab)[i];
        while (c != NULL) {
            struct conn *next = by_id ? c->id_next : c->sess_next;
            uint64_t h = by_id ? mix64(c->id) : sess_hash(c->app_id, c->uid);
            struct conn **slot = &t[h & (nb - 1)];
            if (by_id) {
                c->id_next = *slot;
            } else {
                c->sess_next = *slot;
            }
            *slot = c;
            c = next;
        }
    }
    free(*tab);
    *tab = t;
    *mask = nb - 1;
}

static void
id_insert(struct conn_registry *r, struct conn *c)
{
    struct conn **slot = &r->by_id[mix64(c->id) & r->id_mask];
    c->id_next = *slot;
    *slot = c;
    r->id_n++;
    table_grow(&r->by_id, &r->id_mask, r->id_n, true);
}

static void
id_remove(struct conn_registry *r, struct conn *c)
{
    struct conn **pp = &r->by_id[mix64(c->id) & r->id_mask];
    while (*pp != NULL && *pp != c)
        pp = &(*pp)->id_next;
    if (*pp == c) {
        *pp = c->id_next;
        r->id_n--;
    }
}

void
conn_session_add(struct conn *c)
{
    struct conn_registry *r = c->l->reg;
    struct conn **slot = &r->by_sess[sess_hash(c->app_id, c->uid) & r->sess_mask];
    c->sess_next = *slot;
    *slot = c;
    c->flags |= CONN_F_IN_SESS;
    r->sess_n++;
    table_grow(&r->by_sess, &r->sess_mask, r->sess_n, false);
}

static void
sess_remove(struct conn_registry *r, struct conn *c)
{
    if (!(c->flags & CONN_F_IN_SESS))
        return;
    struct conn **pp = &r->by_sess[sess_hash(c->app_id, c->uid) & r->sess_mask];
    while (*pp != NULL && *pp != c)
        pp = &(*pp)->sess_next;
    if (*pp == c) {
        *pp = c->sess_next;
        r->sess_n--;
    }
    c->flags &= (uint8_t)~CONN_F_IN_SESS;
}

struct conn *
conn_find(struct lcs *l, uint64_t id)
{
    struct conn_registry *r = l->reg;
    for (struct conn *c = r->by_id[mix64(id) & r->id_mask]; c != NULL; c = c->id_next) {
        if (c->id == id)
            return c;
    }
    return NULL;
}

struct conn *
conn_find_session(struct lcs *l, uint64_t app, uint64_t uid, const char *device)
{
    struct conn_registry *r = l->reg;
    for (struct conn *c = r->by_sess[sess_hash(app, uid) & r->sess_mask]; c != NULL;
         c = c->sess_next) {
        if (c->app_id == app && c->uid == uid && strcmp(c->device, device) == 0)
            return c;
    }
    return NULL;
}

size_t
conn_user_sessions(struct lcs *l, uint64_t app, uint64_t uid, const struct conn *except,
                   struct conn **oldest)
{
    struct conn_registry *r = l->reg;
    size_t n = 0;
    *oldest = NULL;
    for (struct conn *c = r->by_sess[sess_hash(app, uid) & r->sess_mask]; c != NULL;
         c = c->sess_next) {
        if (c == except || c->state != CONN_ACTIVE || c->app_id != app || c->uid != uid)
            continue;
        n++;
        if (*oldest == NULL || c->id < (*oldest)->id)
            *oldest = c;
    }
    return n;
}

struct conn *
conn_first(struct lcs *l)
{
    return l->reg->head;
}

uint64_t
conn_next_id(const struct lcs *l)
{
    return l->reg->next_id;
}

size_t
conn_count(const struct lcs *l)
{
    return l->reg != NULL ? l->reg->count : 0;
}

/* ---- timer wheel -------------------------------------------------------------- */

uint32_t
conn_now_tick(const struct lcs *l)
{
    /* +1: tick 0 means "never" in route_at. */
    return (uint32_t)((lcs_mono_ms() - l->reg->start_ms) / CONN_TICK_MS) + 1;
}

static uint32_t
ms_to_ticks(int64_t ms)
{
    return (uint32_t)((ms + CONN_TICK_MS - 1) / CONN_TICK_MS);
}

static void
wheel_unlink(struct conn_registry *r, struct conn *c)
{
    if (!(c->flags & CONN_F_IN_WHEEL))
        return;
    if (c->wheel_prev != NULL)
        c->wheel_prev->wheel_next = c->wheel_next;
    else
        r->wheel[c->wheel_at & (WHEEL_SLOTS - 1)] = c->wheel_next;
    if (c->wheel_next != NULL)
        c->wheel_next->wheel_prev = c->wheel_prev;
    c->wheel_prev = c->wheel_next = NULL;
    c->flags &= (uint8_t)~CONN_F_IN_WHEEL;
}

/* Files c in the slot of its deadline (the next tick if that has passed). */
static void
wheel_insert(struct conn_registry *r, struct conn *c)
{
    assert(!(c->flags & CONN_F_IN_WHEEL));
    if (c->deadline <= r->tick_done)
        c->deadline = r->tick_done + 1;
    c->wheel_at = c->deadline;
    struct conn **slot = &r->wheel[c->wheel_at & (WHEEL_SLOTS - 1)];
    c->wheel_prev = NULL;
    c->wheel_next = *slot;
    if (*slot != NULL)
        (*slot)->wheel_prev = c;
    *slot = c;
    c->flags |= CONN_F_IN_WHEEL;
}

/* Processes one slot: expired connections get CONN_EV_TIMEOUT, others are re-filed. */
static void
wheel_run_slot(struct conn_registry *r, uint32_t t)
{
    struct conn **slot = &r->wheel[t & (WHEEL_SLOTS - 1)];
    struct conn *keep = NULL; /* due in a later turn of this same slot */
    struct conn *c;
    while ((c = *slot) != NULL) {
        wheel_unlink(r, c);
        if (c->deadline > t) {
            if ((c->deadline & (WHEEL_SLOTS - 1)) == (t & (WHEEL_SLOTS - 1))) {
                c->wheel_next = keep;
                keep = c;
            } else {
                wheel_insert(r, c);
            }
            continue;
        }
        conn_cb(c, CONN_EV_TIMEOUT);
        if (c->state != CONN_DEAD && !(c->flags & CONN_F_IN_WHEEL))
            wheel_insert(r, c);
    }
    /* Timeouts only touch their own connection, so `keep` is intact. */
    while (keep != NULL) {
        c = keep;
        keep = c->wheel_next;
        c->wheel_next = NULL;
        if (c->state != CONN_DEAD && !(c->flags & CONN_F_IN_WHEEL))
            wheel_insert(r, c);
    }
}

static void
tick_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lcs *l = arg;
    struct conn_registry *r = l->reg;
    uint32_t now = conn_now_tick(l);
    while (r->tick_done < now) {
        r->tick_done++;
        wheel_run_slot(r, r->tick_done);
    }
}

/* ---- registry ------------------------------------------------------------- */

static void
reap_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lcs *l = arg;
    struct conn_registry *r = l->reg;
    while (r->reap != NULL) {
        struct conn *c = r->reap;
        r->reap = c->wheel_next;
        close(conn_fd(c));
        r->count--;
        if (c->in != NULL)
            buffer_bytes_add(c, -(int64_t)c->incap);
        if (c->out != NULL)
            buffer_bytes_add(c, -(int64_t)c->out->cap);
        if (c->device != NULL)
            buffer_bytes_add(c, -(int64_t)(strlen(c->device) + 1));
        free(c->in);
        free(c->out);
        free(c->device);
        free(c);
    }
    if (l->stopping && r->count == 0 && !r->all_closed) {
        r->all_closed = true;
        lcs_all_closed(l);
    }
}

bool
conn_registry_init(struct lcs *l)
{
    struct conn_registry *r = calloc(1, sizeof(*r));
    if (r == NULL)
        return false;
    l->reg = r;
    r->by_id = calloc(HASH_MIN, sizeof(*r->by_id));
    r->by_sess = calloc(HASH_MIN, sizeof(*r->by_sess));
    r->id_mask = r->sess_mask = HASH_MIN - 1;
    r->start_ms = lcs_mono_ms();
    /* Ids differ across restarts of a node, so a stale route never names a new connection. */
    r->next_id = (uint64_t)lcs_now_us();
    l->scratch = malloc(SCRATCH_SIZE);
    r->tick_ev = event_new(l->base, -1, EV_PERSIST, tick_cb, l);
    r->reap_ev = event_new(l->base, -1, 0, reap_cb, l);
    if (r->by_id == NULL || r->by_sess == NULL || l->scratch == NULL || r->tick_ev == NULL ||
        r->reap_ev == NULL)
        return false;
    struct timeval tv = {0, CONN_TICK_MS * 1000};
    event_add(r->tick_ev, &tv);
    metric_set(l->m.conn_struct_bytes, (int64_t)sizeof(struct conn));
    return true;
}

void
conn_registry_free(struct lcs *l)
{
    struct conn_registry *r = l->reg;
    if (r == NULL)
        return;
    r->all_closed = true; /* freeing is not a shutdown event */
    while (r->head != NULL) {
        struct conn *c = r->head;
        conn_set_state(c, CONN_DEAD);
    }
    if (r->reap_ev != NULL)
        reap_cb(-1, 0, l);
    if (r->tick_ev != NULL)
        event_free(r->tick_ev);
    if (r->reap_ev != NULL)
        event_free(r->reap_ev);
    free(r->by_id);
    free(r->by_sess);
    free(r);
    free(l->scratch);
    l->reg = NULL;
    l->scratch = NULL;
}

/* ---- state machine ---------------------------------------------------------- */

static bool
move_allowed(enum conn_state from, enum conn_state to)
{
    switch (from) {
    case CONN_HANDSHAKE:
        return to == CONN_AWAIT_LOGIN || to == CONN_CLOSING || to == CONN_DEAD;
    case CONN_AWAIT_LOGIN:
        return to == CONN_ACTIVE || to == CONN_CLOSING || to == CONN_DEAD;
    case CONN_ACTIVE:
    case CONN_CLOSING:
        return to == CONN_CLOSING ? from == CONN_ACTIVE : to == CONN_DEAD;
    case CONN_DEAD:
        break;
    }
    return false;
}

/* An ACTIVE connection's deadline: 3 heartbeat periods from now, or its token's expiry if sooner.
 */
static uint32_t
active_deadline(const struct conn *c, uint32_t now)
{
    uint32_t hb = now + ms_to_ticks(3 * 1000 * c->l->cfg.heartbeat_s);
    return c->expire_tick < hb ? c->expire_tick : hb;
}

void
conn_touch(struct conn *c, uint32_t now_tick)
{
    c->deadline = active_deadline(c, now_tick);
    /* Later deadlines are picked up lazily; an earlier one (a refresh to a
     * shorter token) must be re-filed or its slot would come up too late. */
    if ((c->flags & CONN_F_IN_WHEEL) && c->deadline < c->wheel_at) {
        wheel_unlink(c->l->reg, c);
        wheel_insert(c->l->reg, c);
    }
}

void
conn_set_expiry(struct conn *c, int64_t expires_at_us)
{
    uint32_t now = conn_now_tick(c->l);
    int64_t left_ms = (expires_at_us - lcs_now_us()) / 1000;
    if (left_ms < 0)
        left_ms = 0;
    /* Tokens live at most 30 days (logicd); the clamp keeps the tick arithmetic in range. */
    if (left_ms > INT64_C(1) << 40)
        left_ms = INT64_C(1) << 40;
    c->expires_at_us = expires_at_us;
    uint64_t t = (uint64_t)now + ms_to_ticks(left_ms);
    c->expire_tick = t > UINT32_MAX / 2 ? UINT32_MAX / 2 : (uint32_t)t;
}

/* Unlinks a dying connection from everything and queues it for reap_cb. */
static void
conn_bury(struct conn *c)
{
    struct lcs *l = c->l;
    struct conn_registry *r = l->reg;
    event_del(&c->ev);
    wheel_unlink(r, c);
    sess_remove(r, c);
    id_remove(r, c);
    pace_conn_unlinked(l, c);
    if (c->all_prev != NULL)
        c->all_prev->all_next = c->all_next;
    else
        r->head = c->all_next;
    if (c->all_next != NULL)
        c->all_next->all_prev = c->all_prev;
    else
        r->tail = c->all_prev;
    c->all_prev = c->all_next = NULL;
    /* r->count drops in reap_cb, with the close: it counts descriptors,
     * and the limit check must not hand out one still open. */
    c->wheel_next = r->reap;
    r->reap = c;
    event_active(r->reap_ev, EV_TIMEOUT, 0);
}

void
conn_set_state(struct conn *c, enum conn_state to)
{
    enum conn_state from = c->state;
    assert(move_allowed(from, to));
    struct lcs *l = c->l;
    struct conn_registry *r = l->reg;
    if (log_enabled(LOG_DEBUG))
        log_debug("conn_state", "conn=%" PRIu64 " from=%s to=%s", c->id, conn_state_str(from),
                  conn_state_str(to));
    metric_gauge_add(l->m.conns_state[from], -1);
    c->state = (uint8_t)to;
    if (from == CONN_ACTIVE)
        sess_remove(r, c);
    if (to == CONN_DEAD) {
        conn_bury(c);
        return;
    }
    metric_gauge_add(l->m.conns_state[to], 1);
    uint32_t now = conn_now_tick(l);
    switch (to) {
    case CONN_AWAIT_LOGIN:
        c->deadline = now + ms_to_ticks(l->cfg.login_timeout_ms);
        break;
    case CONN_ACTIVE:
        c->deadline = active_deadline(c, now);
        break;
    case CONN_CLOSING:
        c->deadline = now + ms_to_ticks(l->cfg.close_timeout_ms);
        break;
    case CONN_HANDSHAKE:
    case CONN_DEAD:
        break;
    }
    wheel_unlink(r, c);
    wheel_insert(r, c);
}

/* ---- output ----------------------------------------------------------------- */

/* Arms or disarms EV_WRITE (EV_READ stays on). */
static void
conn_arm_write(struct conn *c, bool on)
{
    if (((c->flags & CONN_F_WRITING) != 0) == on || c->state == CONN_DEAD)
        return;
    int fd = conn_fd(c);
    event_del(&c->ev);
    event_assign(&c->ev, c->l->base, fd, (short)(EV_READ | EV_PERSIST | (on ? EV_WRITE : 0)),
                 conn_ev_cb, c);
    event_add(&c->ev, NULL);
    if (on)
        c->flags |= CONN_F_WRITING;
    else
        c->flags &= (uint8_t)~CONN_F_WRITING;
}

/* In CLOSING with nothing left to send: half-close, keep reading until EOF. */
static void
conn_closing_flushed(struct conn *c)
{
    if (c->state == CONN_CLOSING && c->out == NULL && !(c->flags & CONN_F_WR_SHUT)) {
        shutdown(conn_fd(c), SHUT_WR);
        c->flags |= CONN_F_WR_SHUT;
    }
}

/* Appends bytes to the output queue; false on allocation failure. */
static bool
outq_append(struct conn *c, const uint8_t *a, size_t an, const uint8_t *b, size_t bn)
{
    struct outq *q = c->out;
    size_t used = q != NULL ? q->len - q->off : 0;
    size_t want = used + an + bn;
    if (q != NULL && q->off > 0) {
        memmove(q->data, q->data + q->off, used);
        q->off = 0;
        q->len = (uint32_t)used;
    }
    if (q == NULL || want > q->cap) {
        size_t oldcap = q != NULL ? q->cap : 0;
        size_t cap = oldcap != 0 ? oldcap * 2 : 256;
        while (cap < want)
            cap *= 2;
        struct outq *nq = realloc(q, sizeof(*nq) + cap);
        if (nq == NULL)
            return false;
        if (oldcap == 0)
            nq->off = nq->len = 0;
        buffer_bytes_add(c, (int64_t)cap - (int64_t)oldcap);
        nq->cap = (uint32_t)cap;
        c->out = q = nq;
    }
    memcpy(q->data + q->len, a, an);
    if (bn > 0)
        memcpy(q->data + q->len + an, b, bn);
    q->len += (uint32_t)(an + bn);
    return true;
}

/*
 * Writes a then b: directly when nothing is queued, the rest queued. Unless
 * force (close frames, HTTP errors), queued output over max_output_bytes
 * closes the connection as a slow reader. False when not sent or the
 * connection died.
 */
static bool
conn_write(struct conn *c, const uint8_t *a, size_t an, const uint8_t *b, size_t bn, bool force)
{
    if (c->state == CONN_DEAD || (c->flags & CONN_F_WR_SHUT))
        return false;
    if (c->out == NULL) {
        struct iovec iov[2] = {{(void *)a, an}, {(void *)b, bn}};
        ssize_t w = writev(conn_fd(c), iov, bn > 0 ? 2 : 1);
        if (w < 0) {
            if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR) {
                conn_disconnect(c, 0, 0, "io error");
                return false;
            }
            w = 0;
        }
        size_t done = (size_t)w;
        if (done >= an) {
            done -= an;
            an = 0;
            b += done;
            bn -= done;
        } else {
            a += done;
            an -= done;
        }
        if (an == 0 && bn == 0)
            return true;
    }
    size_t queued = c->out != NULL ? c->out->len - c->out->off : 0;
    if (!force && queued + an + bn > (size_t)c->l->cfg.max_output_bytes) {
        /*
         * 1013 "try again later": the client did nothing wrong by protocol;
         * it reconnects with back-off and catches up by sync.
         */
        conn_disconnect(c, WS_CLOSE_TRY_AGAIN_LATER, 0, "slow reader");
        return false;
    }
    if (!outq_append(c, a, an, b, bn)) {
        conn_disconnect(c, 0, 0, "out of memory");
        return false;
    }
    conn_arm_write(c, true);
    return true;
}

/* Writes one unmasked frame. */
static bool
conn_write_frame(struct conn *c, int opcode, const void *payload, size_t len, bool force)
{
    uint8_t hdr[10];
    size_t h = ws_frame_header(hdr, opcode, true, len);
    if (!conn_write(c, hdr, h, payload, len, force))
        return false;
    metric_inc(c->l->m.frames_out);
    return true;
}

bool
conn_send(struct conn *c, int opcode, const void *payload, size_t len)
{
    if (c->state != CONN_AWAIT_LOGIN && c->state != CONN_ACTIVE)
        return false;
    return conn_write_frame(c, opcode, payload, len, false);
}

/* EV_WRITE: sends what is queued; disarms EV_WRITE once empty. */
static void
conn_flush(struct conn *c)
{
    struct outq *q = c->out;
    if (q == NULL) {
        conn_arm_write(c, false);
        return;
    }
    ssize_t w = send(conn_fd(c), q->data + q->off, q->len - q->off, MSG_NOSIGNAL);
    if (w < 0) {
        if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
            return;
        conn_disconnect(c, 0, 0, "io error");
        return;
    }
    q->off += (uint32_t)w;
    if (q->off < q->len)
        return;
    buffer_bytes_add(c, -(int64_t)q->cap);
    free(q);
    c->out = NULL;
    conn_arm_write(c, false);
    conn_closing_flushed(c);
}

/* ---- disconnect ------------------------------------------------------------ */

/* Counts a close reason: mbox_lcs_closes_total{reason="login_timeout"}. */
static void
count_close(struct lcs *l, const char *reason)
{
    char label[96], tok[64];
    size_t i;
    for (i = 0; reason[i] != '\0' && i < sizeof(tok) - 1; i++)
        tok[i] = reason[i] == ' ' ? '_' : reason[i];
    tok[i] = '\0';
    snprintf(label, sizeof(label), "reason=\"%s\"", tok);
    metric_inc(metrics_counter(l->metrics, "mbox_lcs_closes_total",
                               "connections closed, by reason (first reason only)", label));
}

/* The HTTP error response for a failed handshake. */
static size_t
http_error(int status, char *out, size_t outlen)
{
    switch (status) {
    case 400:
        return ws_handshake_error_response(WS_HS_BAD_REQUEST, out, outlen);
    case 426:
        return ws_handshake_error_response(WS_HS_BAD_VERSION, out, outlen);
    case 431:
        return ws_handshake_error_response(WS_HS_TOO_LARGE, out, outlen);
    case 404:
        return ws_http_error_response(404, "not_found", "no WebSocket endpoint here (use /ws)", out,
                                      outlen);
    default:
        return ws_http_error_response(status, "unavailable", "try again later", out, outlen);
    }
}

void
conn_disconnect(struct conn *c, uint16_t code, int http_status, const char *reason)
{
    if (c->state == CONN_DEAD)
        return;
    if (c->state == CONN_CLOSING) {
        /* Already counted; only the peer vanishing matters now. */
        if (code == 0 && http_status == 0)
            conn_set_state(c, CONN_DEAD);
        return;
    }
    struct lcs *l = c->l;
    count_close(l, reason);
    char q[128];
    log_info("conn_closed",
             "conn=%" PRIu64 " state=%s app=%" PRIu64 " uid=%" PRIu64 " code=%u http=%d reason=%s",
             c->id, conn_state_str(c->state), c->app_id, c->uid, (unsigned)code, http_status,
             log_q(q, sizeof(q), reason));
    if (c->state == CONN_AWAIT_LOGIN || c->state == CONN_ACTIVE)
        session_on_close(c);
    bool ws_open = c->state != CONN_HANDSHAKE;
    if ((code == 0 && http_status == 0) || (!ws_open && http_status == 0)) {
        conn_set_state(c, CONN_DEAD);
        return;
    }
    /* CLOSING first: a write error below then just ends the connection. */
    conn_set_state(c, CONN_CLOSING);
    if (ws_open) {
        uint8_t payload[WS_CONTROL_MAX];
        size_t n = code == WS_CLOSE_NO_STATUS ? 0 : ws_close_payload(payload, code, reason);
        (void)conn_write_frame(c, WS_OP_CLOSE, payload, n, true);
    } else {
        char resp[WS_HTTP_ERROR_MAX];
        size_t n = http_error(http_status, resp, sizeof(resp));
        c->flags |= CONN_F_HTTP;
        if (n > 0)
            (void)conn_write(c, (const uint8_t *)resp, n, NULL, 0, true);
    }
    if (c->state == CONN_CLOSING)
        conn_closing_flushed(c);
}

void
conn_shutdown_all(struct lcs *l)
{
    struct conn *c = l->reg->head;
    while (c != NULL) {
        struct conn *next = c->all_next;
        if (c->state == CONN_HANDSHAKE)
            conn_disconnect(c, 0, 503, "server shutdown");
        else if (c->state != CONN_CLOSING)
            conn_disconnect(c, WS_CLOSE_GOING_AWAY, 0, "server shutdown");
        c = next;
    }
}

/* ---- input ------------------------------------------------------------------ */

/* Parses the upgrade request; returns the bytes it used. */
static size_t
conn_handshake(struct conn *c, uint8_t *buf, size_t len)
{
    struct ws_handshake hs;
    enum ws_hs_status st = ws_handshake_parse((const char *)buf, len, &hs);
    switch (st) {
    case WS_HS_INCOMPLETE:
        c->need = WS_HANDSHAKE_MAX;
        return 0;
    case WS_HS_BAD_REQUEST:
        conn_disconnect(c, 0, 400, "bad handshake");
        return len;
    case WS_HS_BAD_VERSION:
        conn_disconnect(c, 0, 426, "bad handshake");
        return len;
    case WS_HS_TOO_LARGE:
        conn_disconnect(c, 0, 431, "bad handshake");
        return len;
    case WS_HS_OK:
        break;
    }
    if (strcmp(hs.path, "/ws") != 0) {
        conn_disconnect(c, 0, 404, "not found");
        return len;
    }
    char resp[WS_HS_RESPONSE_MAX];
    size_t n = ws_handshake_response(&hs, resp, sizeof(resp));
    if (n == 0) {
        conn_disconnect(c, 0, 400, "bad handshake");
        return len;
    }
    /* The response is the first output: the socket takes it whole. */
    if (!conn_write(c, (const uint8_t *)resp, n, NULL, 0, true))
        return len;
    ws_parser_init(&c->ws, WS_ROLE_SERVER);
    conn_set_state(c, CONN_AWAIT_LOGIN);
    return hs.consumed;
}

/* Handles one frame or message from the parser. */
static void
conn_frame(struct conn *c, struct ws_frame *f)
{
    struct lcs *l = c->l;
    metric_inc(l->m.frames_in);
    if (c->state == CONN_ACTIVE) {
        /* Any frame is a sign of life; the wheel picks the new deadline up lazily. */
        uint32_t now = conn_now_tick(l);
        conn_touch(c, now);
        route_maybe_refresh(c, now);
    }
    switch (f->opcode) {
    case WS_OP_PING:
        (void)conn_write_frame(c, WS_OP_PONG, f->payload, f->payload_len, false);
        break;
    case WS_OP_PONG:
        break;
    case WS_OP_CLOSE:
        /* Echo the peer's code (RFC 6455 5.5.1); a close without code gets an empty one. */
        conn_disconnect(c, f->close_code, 0, "peer closed");
        break;
    case WS_OP_TEXT:
    case WS_OP_BINARY:
        session_on_message(c, f->opcode == WS_OP_BINARY, f->payload, f->payload_len);
        break;
    default:
        break;
    }
}

/* Parses frames from buf; returns the bytes used (the rest is a partial frame). */
static size_t
conn_frames(struct conn *c, uint8_t *buf, size_t len)
{
    size_t used = 0;
    size_t cap = (size_t)c->l->cfg.max_message_bytes;
    while (c->state == CONN_AWAIT_LOGIN || c->state == CONN_ACTIVE) {
        struct ws_frame f;
        enum ws_result r = ws_parse_message(&c->ws, buf + used, len - used, cap, &f);
        if (r == WS_NEED_MORE) {
            c->need = (uint32_t)f.needed;
            break;
        }
        if (r != WS_FRAME) {
            const char *why = r == WS_ERR_TOO_BIG        ? "message too big"
                              : r == WS_ERR_INVALID_DATA ? "invalid data"
                                                         : "protocol error";
            log_debug("conn_bad_frame", "conn=%" PRIu64 " error=\"%s\"", c->id,
                      f.error ? f.error : "");
            conn_disconnect(c, f.close_code, 0, why);
            return len;
        }
        conn_frame(c, &f);
        used += f.consumed;
    }
    return used;
}

/* Everything a read delivered: handshake first, then frames. */
static size_t
conn_process(struct conn *c, uint8_t *buf, size_t len)
{
    size_t used = 0;
    if (c->state == CONN_HANDSHAKE) {
        used = conn_handshake(c, buf, len);
        if (c->state != CONN_AWAIT_LOGIN)
            return used;
    }
    return used + conn_frames(c, buf + used, len - used);
}

/* Makes room for c->need bytes in c->in; false on allocation failure. */
static bool
conn_in_reserve(struct conn *c, size_t want)
{
    if (want <= c->incap)
        return true;
    uint8_t *n = realloc(c->in, want);
    if (n == NULL)
        return false;
    buffer_bytes_add(c, (int64_t)want - (int64_t)c->incap);
    c->in = n;
    c->incap = (uint32_t)want;
    return true;
}

static void
conn_in_free(struct conn *c)
{
    if (c->in == NULL)
        return;
    buffer_bytes_add(c, -(int64_t)c->incap);
    free(c->in);
    c->in = NULL;
    c->inlen = c->incap = 0;
}

static void
conn_on_readable(struct conn *c)
{
    struct lcs *l = c->l;
    int fd = conn_fd(c);
    ssize_t n;
    if (c->state == CONN_CLOSING) {
        /* Draining: drop input until the peer closes (or the close timeout). */
        n = recv(fd, l->scratch, SCRATCH_SIZE, 0);
        if (n > 0 || (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)))
            return;
        log_debug("conn_drained", "conn=%" PRIu64 " eof=%d error=\"%s\"", c->id, n == 0,
                  n < 0 ? strerror(errno) : "");
        conn_set_state(c, CONN_DEAD);
        return;
    }
    uint8_t *buf;
    if (c->inlen > 0) {
        size_t want = c->need > c->inlen ? c->need : (size_t)c->inlen + 1;
        if (!conn_in_reserve(c, want)) {
            conn_disconnect(c, WS_CLOSE_INTERNAL, 503, "out of memory");
            return;
        }
        n = recv(fd, c->in + c->inlen, c->incap - c->inlen, 0);
        buf = c->in;
    } else {
        n = recv(fd, l->scratch, SCRATCH_SIZE, 0);
        buf = l->scratch;
    }
    if (n == 0) {
        conn_disconnect(c, 0, 0, c->state == CONN_ACTIVE ? "peer gone" : "eof");
        return;
    }
    if (n < 0) {
        if (errno == ECONNRESET)
            conn_disconnect(c, 0, 0, "peer gone");
        else if (errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR)
            conn_disconnect(c, 0, 0, "io error");
        return;
    }
    size_t len = (buf == l->scratch ? 0 : c->inlen) + (size_t)n;
    size_t used = conn_process(c, buf, len);
    if (c->state != CONN_HANDSHAKE && c->state != CONN_AWAIT_LOGIN && c->state != CONN_ACTIVE) {
        conn_in_free(c); /* DEAD buffers are freed by reap_cb; this is CLOSING */
        return;
    }
    size_t left = len - used;
    if (left == 0) {
        conn_in_free(c);
    } else if (buf == l->scratch) {
        size_t want = c->need > left ? c->need : left;
        if (!conn_in_reserve(c, want)) {
            conn_disconnect(c, WS_CLOSE_INTERNAL, 503, "out of memory");
            return;
        }
        memcpy(c->in, buf + used, left);
        c->inlen = (uint32_t)left;
    } else {
        if (used > 0)
            memmove(c->in, c->in + used, left);
        c->inlen = (uint32_t)left;
    }
}

static void
conn_on_timeout(struct conn *c)
{
    switch ((enum conn_state)c->state) {
    case CONN_HANDSHAKE:
        conn_disconnect(c, 0, 0, "handshake timeout");
        break;
    case CONN_AWAIT_LOGIN:
        conn_disconnect(c, WS_CLOSE_POLICY, 0, "login timeout");
        break;
    case CONN_ACTIVE:
        /* The deadline is the sooner of heartbeat and token expiry: which one came? */
        if (conn_now_tick(c->l) >= c->expire_tick)
            conn_disconnect(c, WS_CLOSE_TOKEN_EXPIRED, 0, "token expired");
        else
            conn_disconnect(c, WS_CLOSE_POLICY, 0, "heartbeat timeout");
        break;
    case CONN_CLOSING:
        conn_set_state(c, CONN_DEAD);
        break;
    case CONN_DEAD:
        break;
    }
}

/* The one callback of a client connection. */
static void
conn_cb(struct conn *c, enum conn_event ev)
{
    if (c->state == CONN_DEAD)
        return;
    switch (ev) {
    case CONN_EV_READ:
        conn_on_readable(c);
        break;
    case CONN_EV_WRITE:
        conn_flush(c);
        break;
    case CONN_EV_TIMEOUT:
        conn_on_timeout(c);
        break;
    }
}

/* libevent's callback: translates readiness into conn events. */
static void
conn_ev_cb(evutil_socket_t fd, short what, void *arg)
{
    struct conn *c = arg;
    if (what & EV_WRITE)
        conn_cb(c, CONN_EV_WRITE);
    if (what & EV_READ)
        conn_cb(c, CONN_EV_READ);
}

size_t
conn_limit(const struct lcs *l)
{
    /* Read at every accept (one cheap syscall), so a prlimit on the running
     * process takes effect at once. */
    size_t lim = SIZE_MAX;
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
        rlim_t reserve = (rlim_t)l->cfg.fd_reserve;
        lim = rl.rlim_cur > reserve ? (size_t)(rl.rlim_cur - reserve) : 0;
    }
    if (l->cfg.max_connections > 0 && (size_t)l->cfg.max_connections < lim)
        lim = (size_t)l->cfg.max_connections;
    return lim;
}

/* At the limit: close at once (the client retries with back-off); logged once per interval. */
static void
refuse_full(struct lcs *l, int fd)
{
    struct conn_registry *r = l->reg;
    close(fd);
    metric_inc(l->m.refused_full); /* cached: this path must stay cheap under a flood */
    r->full_refused++;
    int64_t now = lcs_mono_ms();
    if (r->full_log_ms == 0 || now - r->full_log_ms >= FULL_LOG_INTERVAL_MS) {
        log_warn("connection_limit_reached",
                 "connections=%zu limit=%zu refused=%" PRIu64 " interval_ms=%d", r->count,
                 conn_limit(l), r->full_refused, FULL_LOG_INTERVAL_MS);
        r->full_log_ms = now;
        r->full_refused = 0;
    }
}

bool
conn_accept(struct lcs *l, int fd)
{
    struct conn_registry *r = l->reg;
    if (l->stopping) {
        count_close(l, "server shutdown");
        close(fd);
        return false;
    }
    if (r->count >= conn_limit(l)) {
        refuse_full(l, fd);
        return false;
    }
    int one = 1;
    /* Notifies are small and latency-sensitive: no Nagle delay. */
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
    if (l->cfg.so_sndbuf > 0) {
        int sz = (int)l->cfg.so_sndbuf;
        setsockopt(fd, SOL_SOCKET, SO_SNDBUF, &sz, sizeof(sz));
    }
    struct conn *c = calloc(1, sizeof(*c));
    if (c == NULL) {
        count_close(l, "out of memory");
        close(fd);
        return false;
    }
    c->l = l;
    c->id = r->next_id++;
    c->state = CONN_HANDSHAKE;
    if (event_assign(&c->ev, l->base, fd, EV_READ | EV_PERSIST, conn_ev_cb, c) != 0 ||
        event_add(&c->ev, NULL) != 0) {
        count_close(l, "out of memory");
        free(c);
        close(fd);
        return false;
    }
    c->all_prev = r->tail;
    if (r->tail != NULL)
        r->tail->all_next = c;
    else
        r->head = c;
    r->tail = c;
    r->count++;
    id_insert(r, c);
    metric_gauge_add(l->m.conns_state[CONN_HANDSHAKE], 1);
    c->deadline = conn_now_tick(l) + ms_to_ticks(l->cfg.handshake_timeout_ms);
    wheel_insert(r, c);
    log_debug("conn_accepted", "conn=%" PRIu64 " fd=%d", c->id, fd);
    return true;
}
