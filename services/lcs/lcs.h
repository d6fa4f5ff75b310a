/*
 * lcs: the long-connection notifier's process context.
 *
 * lcsd is one event loop per process: it holds connections, not work, and
 * one process per core (SO_REUSEPORT on the WebSocket port) scales it out,
 * which also keeps each process under the per-process open-file limit.
 */
#ifndef LCS_H
#define LCS_H

#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "token.h"

struct event_base;
struct http_server;
struct metrics;
struct redis;

struct lcs_config {
    char *ws_listen;
    char *admin_listen;
    char *log_level;
    char *node_id;
    char *redis_host;
    int64_t redis_port;
    int64_t redis_timeout_ms;
    char *token_key_id;
    char *token_key;
    char *token_prev_key_id;
    char *token_prev_key;
    int64_t heartbeat_s;
    int64_t login_timeout_ms;
    int64_t max_message_bytes;
    int64_t max_output_bytes;
    int64_t route_ttl_s;
};

extern const struct cfg_schema lcs_config_schema;

struct lcs {
    struct lcs_config cfg;
    struct event_base *base;
    struct metrics *metrics;
    struct http_server *admin;
    struct redis *redis;
    struct token_keys keys;
    int64_t started_us;
};

#endif
