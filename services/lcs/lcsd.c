/*
 * lcsd: the long-connection notifier (SPEC section 6).
 *
 * One event loop: the admin listener (/healthz, /metrics) and the Redis
 * client live on it. SIGTERM and SIGINT arrive as libevent signal events
 * and end the loop cleanly.
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "http.h"
#include "lcs.h"
#include "log.h"
#include "metrics.h"
#include "redis.h"

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void
admin_healthz(struct http_req *r, void *ctx)
{
    struct lcs *l = ctx;
    bool redis_up = redis_connected(l->redis);
    json_t *body =
        json_pack("{s:s, s:s, s:s, s:I, s:{s:b}}", "status", redis_up ? "ok" : "degraded",
                  "service", "lcsd", "node", l->cfg.node_id, "uptime_s",
                  (json_int_t)((now_us() - l->started_us) / 1000000), "redis", "up", redis_up);
    http_reply_json(r, redis_up ? 200 : 503, body);
}

static void
admin_metrics(struct http_req *r, void *ctx)
{
    struct lcs *l = ctx;
    http_reply_metrics(r, l->metrics);
}

static const struct http_route admin_routes[] = {
    {HTTP_GET | HTTP_HEAD, "/healthz", admin_healthz},
    {HTTP_GET, "/metrics", admin_metrics},
};

static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct lcs *l = arg;
    log_info("lcsd_stopping", "signal=%d", (int)sig);
    event_base_loopexit(l->base, NULL);
}

/* Validates what the table cannot and fills derived fields. */
static bool
prepare(struct lcs *l, char *err, size_t errlen)
{
    struct lcs_config *c = &l->cfg;
    enum log_level lvl;
    if (!log_parse_level(c->log_level, &lvl)) {
        snprintf(err, errlen, "key 'log_level': '%s' is not debug, info, warn or error",
                 c->log_level);
        return false;
    }
    log_set_level(lvl);
    if (c->token_key[0] == '\0') {
        snprintf(err, errlen, "key 'token_key' must be set");
        return false;
    }
    if (c->node_id[0] == '\0') {
        char host[128] = "lcs";
        gethostname(host, sizeof(host) - 1);
        char id[192];
        snprintf(id, sizeof(id), "%s-%d", host, (int)getpid());
        char e[128];
        if (!cfg_set(&lcs_config_schema, c, "node_id", id, e, sizeof(e))) {
            snprintf(err, errlen, "%s", e);
            return false;
        }
    }
    l->keys.current_id = c->token_key_id;
    l->keys.current_key = c->token_key;
    l->keys.previous_id = c->token_prev_key_id[0] ? c->token_prev_key_id : NULL;
    l->keys.previous_key = c->token_prev_key[0] ? c->token_prev_key : NULL;
    return true;
}

int
main(int argc, char **argv)
{
    struct lcs l;
    memset(&l, 0, sizeof(l));
    int status = 1;
    struct event *sigterm = NULL, *sigint = NULL;

    enum cfg_action act = cfg_main(&lcs_config_schema, &l.cfg, argc, argv, NULL, NULL);
    if (act != CFG_RUN) {
        cfg_free(&lcs_config_schema, &l.cfg);
        return act == CFG_EXIT_OK ? 0 : 1;
    }
    char err[512];
    char host[256];
    int port;
    if (!prepare(&l, err, sizeof(err))) {
        fprintf(stderr, "lcsd: config error: %s\n", err);
        goto out;
    }
    if (!cfg_parse_hostport(l.cfg.admin_listen, host, sizeof(host), &port)) {
        fprintf(stderr, "lcsd: config error: key 'admin_listen': '%s' is not host:port\n",
                l.cfg.admin_listen);
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    l.started_us = now_us();
    l.base = event_base_new();
    l.metrics = metrics_new();
    if (l.base == NULL || l.metrics == NULL)
        goto out;

    int fd = http_listen(host, port, err, sizeof(err));
    if (fd < 0) {
        fprintf(stderr, "lcsd: cannot start: %s\n", err);
        goto out;
    }
    struct http_limits limits = {.max_body = 4096, .max_headers = 8192, .timeout_s = 10};
    l.admin = http_server_new(l.base, fd, "admin", admin_routes,
                              sizeof(admin_routes) / sizeof(admin_routes[0]), &limits, &l,
                              l.metrics, err, sizeof(err));
    if (l.admin == NULL) {
        fprintf(stderr, "lcsd: cannot start: %s\n", err);
        goto out;
    }
    struct redis_config rc = {
        .host = l.cfg.redis_host,
        .port = (int)l.cfg.redis_port,
        .connect_timeout_ms = 1000,
        .command_timeout_ms = (int)l.cfg.redis_timeout_ms,
        .backoff_min_ms = 100,
        .backoff_max_ms = 5000,
    };
    l.redis = redis_new(l.base, &rc, l.metrics);
    if (l.redis == NULL) {
        fprintf(stderr, "lcsd: config error: bad Redis settings\n");
        goto out;
    }
    sigterm = evsignal_new(l.base, SIGTERM, on_signal, &l);
    sigint = evsignal_new(l.base, SIGINT, on_signal, &l);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);

    log_info("lcsd_started", "node=%s admin=%s version=%s", l.cfg.node_id, l.cfg.admin_listen,
             MBOX_VERSION);
    event_base_dispatch(l.base);
    log_info("lcsd_stopped", "node=%s", l.cfg.node_id);
    status = 0;
out:
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    if (l.admin)
        http_server_free(l.admin);
    if (l.redis)
        redis_free(l.redis);
    if (l.base)
        event_base_free(l.base);
    metrics_free(l.metrics);
    cfg_free(&lcs_config_schema, &l.cfg);
    return status;
}
