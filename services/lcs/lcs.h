/*
 * lcs: the long-connection notifier's process context.
 *
 * lcsd is one event loop per process: it holds connections, not work, and
 * one process per core (SO_REUSEPORT on the WebSocket port) scales it out,
 * which also keeps each process under the per-process open-file limit.
 *
 * Modules (one concern each):
 *   listen.c   the WebSocket listening socket; accept with EMFILE back-off
 *   conn.c     one client connection: state machine, socket I/O, WebSocket
 *              framing, timers (a timer wheel), the connection registry and
 *              its limit (RLIMIT_NOFILE - fd_reserve, so the admin listener
 *              and Redis keep descriptors when clients flood in)
 *   session.c  the application frames (login, ping, refresh, notify, kick),
 *              JSON or protobuf, and the login / kick / expiry rules
 *   route.c    Redis: routes route:{app:uid}, the node's channels and the
 *              lines published on them
 *   pace.c     paced notify of a notice to the connections of an app it targets
 */
#ifndef LCS_H
#define LCS_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "token.h"

struct event;
struct event_base;
struct http_server;
struct metric;
struct metrics;
struct lcs_health;
struct redis;
struct conn;
struct conn_registry;
struct lcs_listener;
struct pacer;

struct lcs_config {
    char *ws_listen;
    char *admin_listen;
    char *log_level;
    char *log_format;
    char *log_file;
    char *node_id;
    char *redis_host;
    int64_t redis_port;
    int64_t redis_timeout_ms;
    char *redis_nodes;
    char *redis_user;
    char *redis_password;
    char *token_key_id;
    char *token_key;
    char *token_prev_key_id;
    char *token_prev_key;
    int64_t heartbeat_s;
    int64_t login_timeout_ms;
    int64_t max_message_bytes;
    int64_t max_output_bytes;
    int64_t route_ttl_s;
    int64_t handshake_timeout_ms;
    int64_t close_timeout_ms;
    int64_t max_connections;
    int64_t fd_reserve;
    int64_t per_user_sessions;
    int64_t accept_backoff_ms;
    int64_t paced_tick_ms;
    int64_t so_sndbuf;
};

extern const struct cfg_schema lcs_config_schema;

/* Metric series used on hot paths, registered once at start. */
struct lcs_metrics {
    struct metric *conns_state[5]; /* gauge per enum conn_state below CONN_DEAD */
    struct metric *conn_struct_bytes;
    struct metric *conn_buffer_bytes;
    struct metric *frames_in, *frames_out;
    struct metric *notify_delivered;
    struct metric *notify_dropped_unknown, *notify_dropped_stale, *notify_dropped_bad;
    struct metric *paced_sent;
    struct metric *kicks_local, *kicks_remote;
    struct metric *accept_backoff, *accepted;
    struct metric *refused_full; /* mbox_lcs_closes_total{reason="max_connections"} */
    struct metric *kicks_cap;    /* mbox_lcs_kicks_total{where="session_cap"} */
    struct metric *refreshes_ok, *refreshes_bad;
    struct metric *route_writes, *route_errors;
};

struct lcs {
    struct lcs_config cfg;
    struct event_base *base;
    struct metrics *metrics;
    struct lcs_metrics m;
    struct http_server *admin;
    struct redis *redis; /* commands: routes */
    struct redis *sub;   /* subscriber: lcs:{node} and lcs:broadcast */
    struct token_keys keys;
    int64_t started_us;
    struct lcs_listener *listener;
    struct lcs_health *health; /* /livez, /readyz, dependency probe (lcs_health.h) */
    struct conn_registry *reg;
    struct pacer *pacers; /* list of running paced notifies */
    struct event *pace_ev;
    bool stopping;             /* SIGTERM seen: closing every connection */
    struct event *stop_ev;     /* hard deadline of the shutdown */
    char channel[96];          /* "lcs:{<node_id>}" */
    const char *config_path;   /* -c FILE, read again on SIGHUP (NULL: none) */
    struct event *watchdog_ev; /* WATCHDOG=1 every half WatchdogSec (sdnotify.h) */
    uint8_t *scratch;          /* shared read buffer (see conn.c) */
};

#define LCS_BROADCAST_CHANNEL "lcs:broadcast"

/* Wall clock in unix microseconds. */
int64_t lcs_now_us(void);

/* Monotonic clock in milliseconds. */
int64_t lcs_mono_ms(void);

/* Called by conn.c when the last connection is gone during shutdown. */
void lcs_all_closed(struct lcs *l);

#endif
