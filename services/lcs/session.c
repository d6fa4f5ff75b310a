/*
 * session: login, heartbeats at the application level, notify and kick
 * frames (see session.h for the protocol).
 */
#include "session.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "budget.h"
#include "clientver.h"
#include "conn.h"
#include "lcs.h"
#include "log.h"
#include "mbox.pb-c.h"
#include "metrics.h"
#include "pbjson.h"
#include "route.h"
#include "token.h"

#define FRAME_OUT_MAX 512 /* every frame lcsd sends is far smaller */

/* Sends f in c's format. */
static bool
session_send(struct conn *c, const Mbox__Frame *f)
{
    if (c->format == CONN_FMT_BINARY) {
        uint8_t buf[FRAME_OUT_MAX];
        size_t n = mbox__frame__get_packed_size(f);
        if (n > sizeof(buf))
            return false;
        mbox__frame__pack(f, buf);
        return conn_send(c, WS_OP_BINARY, buf, n);
    }
    char stack[FRAME_OUT_MAX];
    struct pbjson_buf b;
    pbjson_buf_init(&b, stack, sizeof(stack));
    bool ok = pbjson_write(&b, &f->base) && conn_send(c, WS_OP_TEXT, b.data, b.len);
    pbjson_buf_free(&b);
    return ok;
}

/* A login_ack or refresh_ack: ok with the session's expiry (and heartbeat_s for a login), or a
 * reason. */
static void
send_ack(struct conn *c, const char *type, bool ok, const char *reason)
{
    Mbox__Frame f = MBOX__FRAME__INIT;
    f.type = (char *)type;
    f.has_ok = true;
    f.ok = ok;
    if (ok) {
        if (strcmp(type, "login_ack") == 0) {
            f.has_heartbeat_s = true;
            f.heartbeat_s = (uint32_t)c->l->cfg.heartbeat_s;
        }
        f.has_expires_at = true;
        f.expires_at = (uint64_t)c->expires_at_us;
    } else {
        f.reason = (char *)reason;
    }
    (void)session_send(c, &f);
}

/*
 * Sends a kick frame and closes c with code: "replaced" (1008, the same
 * device logged in again) or "too many sessions" (4429, the per-user cap).
 */
static void
session_kick(struct conn *c, uint16_t code, const char *reason)
{
    Mbox__Frame f = MBOX__FRAME__INIT;
    f.type = "kick";
    f.reason = (char *)reason;
    (void)session_send(c, &f);
    conn_disconnect(c, code, 0, reason);
}

/*
 * The per-user session cap: a login that would make more than
 * per_user_sessions sessions of (app, uid) on this node kicks the oldest
 * ones, so one token cannot hold the node's descriptors while a user's
 * newest device always gets in.
 */
static void
enforce_user_cap(struct conn *c)
{
    struct lcs *l = c->l;
    struct conn *oldest;
    size_t cap = (size_t)l->cfg.per_user_sessions;
    size_t n = conn_user_sessions(l, c->app_id, c->uid, c, &oldest);
    while (n >= cap && oldest != NULL) {
        metric_inc(l->m.kicks_cap);
        log_info("conn_kicked_cap", "conn=%" PRIu64 " by=%" PRIu64 " sessions=%zu cap=%zu",
                 oldest->id, c->id, n + 1, cap);
        session_kick(oldest, WS_CLOSE_TOO_MANY_SESSIONS, "too many sessions");
        n = conn_user_sessions(l, c->app_id, c->uid, c, &oldest);
    }
}

/* device_id goes into Redis fields and space-separated lines: printable, no spaces. */
static bool
device_valid(const char *d)
{
    size_t n = 0;
    for (; d[n] != '\0'; n++) {
        unsigned char ch = (unsigned char)d[n];
        if (ch <= 0x20 || ch >= 0x7f)
            return false;
    }
    return n > 0 && n <= SESSION_DEVICE_MAX;
}

/* Refuses a login: login_ack ok=false, then close 1008. */
static void
login_refuse(struct conn *c, const char *why, const char *close_reason)
{
    struct lcs *l = c->l;
    char label[64];
    snprintf(label, sizeof(label), "result=\"%s\"", close_reason);
    metric_inc(
        metrics_counter(l->metrics, "mbox_lcs_logins_total", "login frames, by result", label));
    send_ack(c, "login_ack", false, why);
    conn_disconnect(c, WS_CLOSE_POLICY, 0, close_reason);
}

static void
session_login(struct conn *c, const Mbox__Frame *f)
{
    struct lcs *l = c->l;
    struct token_claims claims;
    if (f->token == NULL || f->token[0] == '\0') {
        login_refuse(c, "missing token", "bad token");
        return;
    }
    enum token_status ts = token_verify(&l->keys, f->token, lcs_now_us(), &claims);
    if (ts != TOKEN_OK) {
        login_refuse(c, token_status_str(ts), "bad token");
        return;
    }
    if (f->device_id == NULL || !device_valid(f->device_id)) {
        login_refuse(c, "bad device_id", "bad device_id");
        return;
    }
    size_t dlen = strlen(f->device_id) + 1;
    c->device = malloc(dlen);
    if (c->device == NULL) {
        conn_disconnect(c, WS_CLOSE_INTERNAL, 0, "out of memory");
        return;
    }
    memcpy(c->device, f->device_id, dlen);
    metric_gauge_add(l->m.conn_buffer_bytes, (int64_t)dlen);
    c->app_id = claims.app_id;
    c->uid = claims.uid;
    c->guest = claims.guest;
    conn_set_expiry(c, claims.expires_at_us);
    /* Paced notifies target by these (pace.c): the same rules as sync's headers. */
    struct clientver cv;
    clientver_parse(&cv, f->platform, NULL, NULL, NULL);
    memcpy(c->platform, cv.platform, sizeof(c->platform));
    c->core_level = f->has_core_level ? f->core_level : 0;

    struct conn *old = conn_find_session(l, c->app_id, c->uid, c->device);
    if (old != NULL && old != c) {
        metric_inc(l->m.kicks_local);
        log_info("conn_replaced", "conn=%" PRIu64 " by=%" PRIu64 " where=local", old->id, c->id);
        session_kick(old, WS_CLOSE_POLICY, "replaced");
    }
    enforce_user_cap(c);
    conn_session_add(c);
    conn_set_state(c, CONN_ACTIVE);
    metric_inc(metrics_counter(l->metrics, "mbox_lcs_logins_total", "login frames, by result",
                               "result=\"ok\""));
    char qd[160], qp[48], qv[48];
    log_info("conn_login",
             "conn=%" PRIu64 " app=%" PRIu64 " uid=%" PRIu64
             " device=%s platform=%s app_version=%s core_level=%" PRIu64 " format=%s",
             c->id, c->app_id, c->uid, log_q(qd, sizeof(qd), c->device),
             log_q(qp, sizeof(qp), f->platform ? f->platform : ""),
             log_q(qv, sizeof(qv), f->app_version ? f->app_version : ""), f->core_level,
             c->format == CONN_FMT_BINARY ? "binary" : "json");
    /* The ack waits for the route write, so a notify sent after the ack is routable. */
    c->flags |= CONN_F_LOGIN_PENDING;
    route_register(c);
}

void
session_route_done(struct conn *c)
{
    if (!(c->flags & CONN_F_LOGIN_PENDING))
        return;
    c->flags &= (uint8_t)~CONN_F_LOGIN_PENDING;
    if (c->state != CONN_ACTIVE)
        return;
    send_ack(c, "login_ack", true, NULL);
    if (c->flags & CONN_F_REFRESH_ACK) {
        c->flags &= (uint8_t)~CONN_F_REFRESH_ACK;
        send_ack(c, "refresh_ack", true, NULL);
    }
}

/*
 * A refresh frame: a new token for the same (app, uid) moves the session's
 * expiry. An invalid token is answered refresh_ack ok=false (the session
 * keeps its old expiry, the client may try again); a valid token of
 * another app or uid closes the session with 4403.
 */
static void
session_refresh(struct conn *c, const Mbox__Frame *f)
{
    struct lcs *l = c->l;
    struct token_claims claims;
    enum token_status ts = f->token == NULL || f->token[0] == '\0'
                               ? TOKEN_MALFORMED
                               : token_verify(&l->keys, f->token, lcs_now_us(), &claims);
    if (ts != TOKEN_OK) {
        metric_inc(l->m.refreshes_bad);
        send_ack(c, "refresh_ack", false,
                 f->token == NULL || f->token[0] == '\0' ? "missing token" : token_status_str(ts));
        return;
    }
    if (claims.app_id != c->app_id || claims.uid != c->uid) {
        metric_inc(l->m.refreshes_bad);
        conn_disconnect(c, WS_CLOSE_REFRESH_FORBIDDEN, 0, "refresh for another user");
        return;
    }
    metric_inc(l->m.refreshes_ok);
    c->guest = claims.guest;
    conn_set_expiry(c, claims.expires_at_us);
    conn_touch(c, conn_now_tick(l));
    if (c->flags & CONN_F_LOGIN_PENDING) {
        /* The login_ack goes first, and only once the route is written:
         * this ack waits for it (session_route_done). */
        c->flags |= CONN_F_REFRESH_ACK;
        return;
    }
    send_ack(c, "refresh_ack", true, NULL);
}

void
session_on_message(struct conn *c, bool binary, const uint8_t *payload, size_t len)
{
    struct lcs *l = c->l;
    size_t cap = (size_t)l->cfg.max_message_bytes;
    struct budget b;
    /* protobuf-c may allocate several times the input; the budget bounds it. */
    budget_init(&b, 4 * cap + 4096);
    if (c->state == CONN_AWAIT_LOGIN)
        c->format = binary ? CONN_FMT_BINARY : CONN_FMT_JSON;
    Mbox__Frame *f;
    char err[160] = "";
    if (binary) {
        f = mbox__frame__unpack(&b.alloc, len, payload);
        if (f == NULL)
            snprintf(err, sizeof(err), "not a protobuf Frame");
    } else {
        f = (Mbox__Frame *)pbjson_decode_bytes(&mbox__frame__descriptor, payload, len, cap,
                                               &b.alloc, err, sizeof(err));
    }
    if (f == NULL) {
        char q[192];
        log_debug("conn_bad_message", "conn=%" PRIu64 " error=%s", c->id, log_q(q, sizeof(q), err));
        /* 1007: the message does not hold what its type promises. */
        conn_disconnect(c, WS_CLOSE_INVALID_DATA, 0, "bad frame");
        return;
    }
    const char *type = f->type != NULL ? f->type : "";
    if (c->state == CONN_AWAIT_LOGIN) {
        if (strcmp(type, "login") == 0)
            session_login(c, f);
        else
            conn_disconnect(c, WS_CLOSE_POLICY, 0, "login required");
    } else if (strcmp(type, "ping") == 0) {
        Mbox__Frame pong = MBOX__FRAME__INIT;
        pong.type = "pong";
        (void)session_send(c, &pong);
    } else if (strcmp(type, "refresh") == 0) {
        session_refresh(c, f);
    } else if (strcmp(type, "login") == 0) {
        conn_disconnect(c, WS_CLOSE_POLICY, 0, "already logged in");
    }
    protobuf_c_message_free_unpacked(&f->base, &b.alloc);
}

void
session_on_close(struct conn *c)
{
    if (c->state == CONN_ACTIVE)
        route_unregister(c);
}

bool
session_notify(struct conn *c, uint64_t app_id, uint64_t msg_id)
{
    if (c->state != CONN_ACTIVE)
        return false;
    /* A notify must never overtake the login_ack. */
    session_route_done(c);
    if (c->format == CONN_FMT_JSON) {
        /* Hot path: the exact text pbjson would write for these three fields. */
        char buf[128];
        int n =
            snprintf(buf, sizeof(buf),
                     "{\"type\":\"notify\",\"app_id\":\"%" PRIu64 "\",\"msg_id\":\"%" PRIu64 "\"}",
                     app_id, msg_id);
        return conn_send(c, WS_OP_TEXT, buf, (size_t)n);
    }
    Mbox__Frame f = MBOX__FRAME__INIT;
    f.type = "notify";
    f.has_app_id = f.has_msg_id = true;
    f.app_id = app_id;
    f.msg_id = msg_id;
    return session_send(c, &f);
}

void
session_notify_line(struct lcs *l, uint64_t app, uint64_t uid, uint64_t msg_id, const char *device,
                    uint64_t conn_id)
{
    struct conn *c = conn_find(l, conn_id);
    if (c == NULL) {
        metric_inc(l->m.notify_dropped_unknown);
        return;
    }
    if (c->state != CONN_ACTIVE || c->app_id != app || c->uid != uid ||
        strcmp(c->device, device) != 0) {
        metric_inc(l->m.notify_dropped_stale);
        return;
    }
    if (session_notify(c, app, msg_id))
        metric_inc(l->m.notify_delivered);
}

void
session_kick_line(struct lcs *l, uint64_t app, uint64_t uid, const char *device, uint64_t conn_id)
{
    struct conn *c = conn_find(l, conn_id);
    if (c == NULL || c->state != CONN_ACTIVE || c->app_id != app || c->uid != uid ||
        strcmp(c->device, device) != 0)
        return;
    metric_inc(l->m.kicks_remote);
    log_info("conn_replaced", "conn=%" PRIu64 " where=remote", c->id);
    session_kick(c, WS_CLOSE_POLICY, "replaced");
}
