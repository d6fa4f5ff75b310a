/*
 * conn: one WebSocket client connection of lcsd and the registry of all of
 * them (see the block comment at the top of conn.c for the state machine
 * and the per-connection memory budget).
 */
#ifndef LCS_CONN_H
#define LCS_CONN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <event2/event_struct.h>

#include "ws.h"

struct lcs;

enum conn_state {
    CONN_HANDSHAKE,   /* TCP accepted, waiting for the HTTP upgrade request */
    CONN_AWAIT_LOGIN, /* WebSocket open, the first frame must be a login */
    CONN_ACTIVE,      /* logged in: routed, notified, heartbeats watched */
    CONN_CLOSING,     /* close frame (or HTTP error) sent: flush, drain, wait for EOF */
    CONN_DEAD,        /* socket closed, freed after the current loop iteration */
};

/* What happened to a connection: the one callback's argument. */
enum conn_event {
    CONN_EV_READ,    /* the socket is readable */
    CONN_EV_WRITE,   /* the socket is writable and output is queued */
    CONN_EV_TIMEOUT, /* the connection's deadline passed (timer wheel) */
};

/* The format a connection logged in with; it is answered in it. */
enum conn_format {
    CONN_FMT_JSON = 0,   /* text frames, JSON (pbjson) */
    CONN_FMT_BINARY = 1, /* binary frames, packed Mbox__Frame */
};

struct outq; /* queued output, allocated only while there is some */

struct conn {
    struct event ev;                      /* EV_READ always, EV_WRITE only while out != NULL */
    struct lcs *l;                        /* the process context */
    uint64_t id;                          /* conn_id in routes and notify lines */
    uint64_t app_id, uid;                 /* set at login */
    char *device;                         /* device_id, heap, set at login */
    struct conn *all_prev, *all_next;     /* registry list, in id order */
    struct conn *wheel_prev, *wheel_next; /* timer wheel slot, or the reap list when DEAD */
    struct conn *id_next, *sess_next;     /* hash chains: by id, by (app, uid) */
    uint8_t *in;                          /* partial input only; NULL when none */
    struct outq *out;                     /* pending output only; NULL when none */
    uint32_t inlen, incap, need;          /* bytes in `in`, its size, bytes the parser wants */
    uint32_t deadline;                    /* wheel tick at which CONN_EV_TIMEOUT fires */
    uint32_t wheel_at;                    /* tick of the slot the conn is linked in */
    uint32_t route_at;                    /* tick of the last route write, 0 = never */
    uint32_t expire_tick;                 /* wheel tick at which the session's token expires */
    int64_t expires_at_us;                /* that expiry in unix µs (told in login/refresh acks) */
    uint64_t core_level;                  /* login's core_level, 0 = unknown (paced targeting) */
    char platform[16];                    /* login's platform (clientver rules), "" = unknown */
    uint8_t state;                        /* enum conn_state */
    uint8_t format;                       /* enum conn_format */
    uint8_t flags;                        /* CONN_F_* */
    bool guest;                           /* the login's token is a guest token */
    struct ws_parser ws;
};

#define CONN_F_IN_WHEEL      0x01 /* linked in a wheel slot */
#define CONN_F_IN_SESS       0x02 /* in the session table */
#define CONN_F_LOGIN_PENDING 0x04 /* login accepted, ack waits for the route write */
#define CONN_F_WR_SHUT       0x08 /* shutdown(SHUT_WR) done */
#define CONN_F_HTTP          0x10 /* the handshake failed: no WebSocket framing */
#define CONN_F_WRITING       0x20 /* EV_WRITE is armed */
#define CONN_F_REFRESH_ACK   0x40 /* a refresh_ack waits for the pending login_ack */

/* Creates the registry and its timer; false on allocation failure. */
bool conn_registry_init(struct lcs *l) __attribute__((warn_unused_result));

/* Frees every connection (no close frames) and the registry. */
void conn_registry_free(struct lcs *l);

/* Takes ownership of an accepted non-blocking socket. False when refused (fd closed). */
bool conn_accept(struct lcs *l, int fd);

/* Number of connections not yet freed (every state but DEAD). */
size_t conn_count(const struct lcs *l);

/* The connection with this id, or NULL (DEAD ones are not found). */
struct conn *conn_find(struct lcs *l, uint64_t id);

/* The ACTIVE or AWAIT_LOGIN connection logged in as (app, uid, device), or NULL. */
struct conn *conn_find_session(struct lcs *l, uint64_t app, uint64_t uid, const char *device);

/*
 * The ACTIVE sessions of (app, uid) on this node other than `except`: their
 * count, and in *oldest the one that logged in first (smallest id). A
 * user's sessions share one hash chain, so this walks at most the user's
 * sessions plus collisions.
 */
size_t conn_user_sessions(struct lcs *l, uint64_t app, uint64_t uid, const struct conn *except,
                          struct conn **oldest);

/* Connections this process may hold now: RLIMIT_NOFILE - fd_reserve, capped by max_connections. */
size_t conn_limit(const struct lcs *l);

/* Sets c's deadline to 3 heartbeat periods from now, or the token expiry if sooner. */
void conn_touch(struct conn *c, uint32_t now_tick);

/* Sets the tick at which c's token expires (login, refresh) from unix µs. */
void conn_set_expiry(struct conn *c, int64_t expires_at_us);

/* Records c in the session table (after a successful login sets its identity). */
void conn_session_add(struct conn *c);

/* First connection of the registry list (id order), for iteration with all_next. */
struct conn *conn_first(struct lcs *l);

/* The id the next accepted connection will get. */
uint64_t conn_next_id(const struct lcs *l);

/* The current wheel tick (coarse time of the connection timers). */
uint32_t conn_now_tick(const struct lcs *l);

/* Milliseconds per wheel tick. */
#define CONN_TICK_MS 50

/* Moves c to state `to`; asserts that the move is allowed and logs it (debug). */
void conn_set_state(struct conn *c, enum conn_state to);

/*
 * Sends one WebSocket data frame (text or binary) with payload. Only in
 * AWAIT_LOGIN and ACTIVE; false (nothing sent) otherwise. Output beyond
 * max_output_bytes closes the connection as a slow reader (then false).
 */
bool conn_send(struct conn *c, int opcode, const void *payload, size_t len);

/*
 * The one disconnect path. Counts mbox_lcs_closes_total{reason}, logs, and:
 * with an open WebSocket sends a close frame (code, reason) and moves to
 * CLOSING; before the handshake sends http_status's error response (0 =
 * nothing) and moves to CLOSING; when the peer is already gone (code 0 and
 * no http_status) goes straight to DEAD. Never frees c: freeing happens
 * after the current loop iteration.
 */
void conn_disconnect(struct conn *c, uint16_t code, int http_status, const char *reason);

/* SIGTERM: closes every connection with 1001 and stops accepting timers for new ones. */
void conn_shutdown_all(struct lcs *l);

/*
 * Hooks other modules implement (called by conn.c):
 *   session_on_message: a complete text or binary message arrived;
 *   session_on_close:   c leaves AWAIT_LOGIN/ACTIVE (route removal);
 *   pace_conn_unlinked: c leaves the registry list (pacer cursors move on).
 */
void session_on_message(struct conn *c, bool binary, const uint8_t *payload, size_t len);
void session_on_close(struct conn *c);
void session_on_activity(struct conn *c);
void pace_conn_unlinked(struct lcs *l, struct conn *c);

const char *conn_state_str(enum conn_state s);

#endif
