/*
 * lcs_config: lcsd's configuration keys (--help and docs/config.md come
 * from this table).
 */
#include <stddef.h>

#include "lcs.h"

#define K(name, type, def, min, max, help)                                                         \
    {                                                                                              \
#name, type, offsetof(struct lcs_config, name), def, help, min, max, false                 \
    }
/* A key a SIGHUP applies without a restart (lcsd.c, reload). */
#define KR(name, type, def, min, max, help)                                                        \
    {                                                                                              \
#name, type, offsetof(struct lcs_config, name), def, help, min, max, true                  \
    }

static const struct cfg_key lcs_keys[] = {
    K(ws_listen, CFG_STR, "127.0.0.1:8090", 0, 0, "WebSocket listener (path /ws)"),
    K(admin_listen, CFG_STR, "127.0.0.1:8091", 0, 0,
      "admin listener: /healthz, /livez, /readyz, /metrics"),
    KR(log_level, CFG_STR, "info", 0, 0, "debug, info, warn or error"),
    KR(log_format, CFG_STR, "kv", 0, 0,
       "kv (key=value text) or json (one JSON object per line, every value a string)"),
    KR(log_file, CFG_STR, NULL, 0, 0,
       "append log lines to this file, reopened on SIGHUP (logrotate); empty: stderr"),
    K(node_id, CFG_STR, NULL, 0, 0,
      "this process's name in routes and its Redis channel; default: host-pid"),
    K(redis_host, CFG_STR, "127.0.0.1", 0, 0, "Redis host (routes, notify channels)"),
    K(redis_port, CFG_INT, "6379", 1, 65535, "Redis port"),
    K(redis_timeout_ms, CFG_INT, "200", 1, 60000, "Redis command timeout"),
    K(redis_nodes, CFG_STR, NULL, 0, 0,
      "Redis Cluster seed nodes host:port[,...]; set: cluster mode (redis_host/port unused)"),
    K(redis_user, CFG_STR, NULL, 0, 0, "Redis ACL user (AUTH user password); empty: AUTH password"),
    K(redis_password, CFG_SECRET, NULL, 0, 0, "Redis password, sent first on every connection"),
    KR(token_key_id, CFG_STR, "k1", 0, 0, "id of the current user-token key (as logicd)"),
    KR(token_key, CFG_SECRET, NULL, 0, 0, "current user-token key (as logicd; required)"),
    KR(token_prev_key_id, CFG_STR, NULL, 0, 0, "previous key id, still accepted"),
    KR(token_prev_key, CFG_SECRET, NULL, 0, 0, "previous key, still accepted"),
    K(heartbeat_s, CFG_INT, "30", 1, 3600,
      "heartbeat period told to clients; silent for 3 periods = closed"),
    K(login_timeout_ms, CFG_INT, "10000", 100, 600000, "time to send the login frame"),
    K(max_message_bytes, CFG_INT, "4096", 128, 1048576, "largest client message (1009 beyond)"),
    K(max_output_bytes, CFG_INT, "65536", 1024, 16777216,
      "output queued for a slow reader before it is closed"),
    K(route_ttl_s, CFG_INT, "600", 30, 86400, "lifetime of a route in Redis, refreshed at half"),
    K(handshake_timeout_ms, CFG_INT, "5000", 100, 600000,
      "time to complete the HTTP upgrade request"),
    K(close_timeout_ms, CFG_INT, "2000", 100, 60000,
      "after a close frame: time to flush and wait for the peer's EOF"),
    K(max_connections, CFG_INT, "0", 0, 10000000,
      "connections of this process, more are accepted and closed at once; "
      "0 = RLIMIT_NOFILE - fd_reserve (a smaller value caps that further)"),
    K(fd_reserve, CFG_INT, "64", 1, 1000000,
      "descriptors kept free beyond the connection limit: admin listener, Redis, logs"),
    K(per_user_sessions, CFG_INT, "32", 1, 100000,
      "sessions (devices) of one user on this node; a login beyond kicks the oldest (4429)"),
    K(accept_backoff_ms, CFG_INT, "500", 10, 10000,
      "pause of accept() after EMFILE/ENFILE (out of descriptors)"),
    K(paced_tick_ms, CFG_INT, "10", 1, 1000, "timer period of paced notifies"),
    K(so_sndbuf, CFG_INT, "0", 0, 16777216,
      "SO_SNDBUF of client sockets in bytes; 0 = kernel default (autotuned)"),
};

const struct cfg_schema lcs_config_schema = {
    "lcsd",
    "LCSD_",
    lcs_keys,
    sizeof(lcs_keys) / sizeof(lcs_keys[0]),
    "\n"
    "signals:\n"
    "  SIGHUP             reopen log_file (logrotate) and reload the keys marked\n"
    "                     \"SIGHUP reloads it\"; other changed keys are logged as\n"
    "                     needing a restart; a bad file keeps the running config\n"
    "  SIGTERM, SIGINT    close every connection with 1001 and exit; a second one\n"
    "                     exits at once\n"
    "Under systemd (Type=notify) it sends READY=1, RELOADING=1, STOPPING=1 and,\n"
    "with WatchdogSec=, WATCHDOG=1 from its event loop.\n",
};
