/*
 * lcsd: the long-connection notifier (docs/design.md section 5.5).
 *
 * One event loop: the WebSocket listener and its connections, the admin
 * listener (/healthz, /metrics), the Redis command client (routes) and
 * subscriber (notify channels) all live on it. SIGTERM and SIGINT arrive as
 * libevent signal events: every connection gets a close frame 1001, the
 * loop ends once they are all gone (or after close_timeout_ms + 1 s); a
 * second signal ends it at once.
 *
 * Memory (see conn.c for the per-connection budget): measured with 10,000
 * idle logged-in JSON connections on one lcsd (debugoptimized build, glibc,
 * x86_64), RSS grew by 6.2 MB, about 640 bytes per connection all included
 * (struct conn then 288 B, now 328 B, device_id, hash buckets, libevent's per-fd epoll
 * bookkeeping, malloc overhead). Socket buffers are kernel memory and are
 * not in that figure.
 */
#include <signal.h>
#include <stdio.h>
#include <sys/resource.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>
#include <jansson.h>

#include "conn.h"
#include "http.h"
#include "lcs.h"
#include "listen.h"
#include "log.h"
#include "lcs_health.h"
#include "metrics.h"
#include "procmetrics.h"
#include "pace.h"
#include "redis.h"
#include "route.h"
#include "sdnotify.h"

int64_t
lcs_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int64_t
lcs_mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void
lcs_all_closed(struct lcs *l)
{
    log_info("lcsd_connections_closed", "node=%s", l->cfg.node_id);
    /* A moment for the route deletions just queued to reach Redis. */
    struct timeval tv = {0, 100 * 1000};
    event_base_loopexit(l->base, &tv);
}

/* Registers the series the hot paths update. */
static void
register_metrics(struct lcs *l)
{
    struct metrics *m = l->metrics;
    static const char *const states[] = {"handshake", "await_login", "active", "closing"};
    for (int i = 0; i < 4; i++) {
        char label[48];
        snprintf(label, sizeof(label), "state=\"%s\"", states[i]);
        l->m.conns_state[i] =
            metrics_gauge(m, "mbox_lcs_connections", "open WebSocket connections, by state", label);
    }
    l->m.conn_struct_bytes =
        metrics_gauge(m, "mbox_lcs_conn_struct_bytes",
                      "sizeof(struct conn): fixed user-space bytes per connection", NULL);
    l->m.conn_buffer_bytes = metrics_gauge(
        m, "mbox_lcs_conn_buffer_bytes",
        "heap held by connections beyond their struct: partial input, queued output, device ids",
        NULL);
    l->m.frames_in =
        metrics_counter(m, "mbox_lcs_frames_in_total", "WebSocket frames received", NULL);
    l->m.frames_out =
        metrics_counter(m, "mbox_lcs_frames_out_total", "WebSocket frames sent", NULL);
    l->m.notify_delivered = metrics_counter(m, "mbox_lcs_notify_delivered_total",
                                            "notify frames sent for notify lines", NULL);
    const char *dh = "notify lines not delivered, by reason";
    l->m.notify_dropped_unknown =
        metrics_counter(m, "mbox_lcs_notify_dropped_total", dh, "reason=\"unknown_conn\"");
    l->m.notify_dropped_stale =
        metrics_counter(m, "mbox_lcs_notify_dropped_total", dh, "reason=\"stale\"");
    l->m.notify_dropped_bad =
        metrics_counter(m, "mbox_lcs_notify_dropped_total", dh, "reason=\"bad_line\"");
    l->m.paced_sent = metrics_counter(m, "mbox_lcs_paced_sent_total",
                                      "notify frames sent by paced notices", NULL);
    const char *kh = "sessions kicked by a newer login (same device, or the per-user cap)";
    l->m.kicks_local = metrics_counter(m, "mbox_lcs_kicks_total", kh, "where=\"local\"");
    l->m.kicks_remote = metrics_counter(m, "mbox_lcs_kicks_total", kh, "where=\"remote\"");
    l->m.accept_backoff = metrics_counter(m, "mbox_lcs_accept_backoff_total",
                                          "accept pauses for lack of descriptors", NULL);
    l->m.accepted = metrics_counter(m, "mbox_lcs_accepted_total", "TCP connections accepted", NULL);
    l->m.refused_full = metrics_counter(m, "mbox_lcs_closes_total",
                                        "connections closed, by reason (first reason only)",
                                        "reason=\"max_connections\"");
    l->m.kicks_cap = metrics_counter(m, "mbox_lcs_kicks_total", kh, "where=\"session_cap\"");
    const char *rh = "refresh frames, by result";
    l->m.refreshes_ok = metrics_counter(m, "mbox_lcs_refreshes_total", rh, "result=\"ok\"");
    l->m.refreshes_bad = metrics_counter(m, "mbox_lcs_refreshes_total", rh, "result=\"refused\"");
    l->m.route_writes = metrics_counter(m, "mbox_lcs_route_commands_total",
                                        "route scripts sent to Redis", "result=\"sent\"");
    l->m.route_errors = metrics_counter(m, "mbox_lcs_route_commands_total",
                                        "route scripts sent to Redis", "result=\"error\"");
    /* Present from the start at 0, so dashboards and rate() see them. */
    metrics_counter(m, "mbox_lcs_logins_total", "login frames, by result", "result=\"ok\"");
    if (!procmetrics_register(m))
        log_warn("procmetrics_failed", "error=out of memory");
}

static void
admin_healthz(struct http_req *r, void *ctx)
{
    struct lcs *l = ctx;
    bool cmd_up = redis_connected(l->redis);
    bool sub_up = l->sub != NULL && redis_connected(l->sub);
    bool redis_up = cmd_up && sub_up;
    json_t *body =
        json_pack("{s:s, s:s, s:s, s:I, s:{s:b, s:b, s:b}, s:I, s:b}", "status",
                  redis_up ? "ok" : "degraded", "service", "lcsd", "node", l->cfg.node_id,
                  "uptime_s", (json_int_t)((lcs_now_us() - l->started_us) / 1000000), "redis", "up",
                  redis_up, "commands", cmd_up, "subscriber", sub_up, "connections",
                  (json_int_t)conn_count(l), "stopping", l->stopping);
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
    {HTTP_GET | HTTP_HEAD, "/livez", lcs_livez},
    {HTTP_GET | HTTP_HEAD, "/readyz", lcs_readyz},
    {HTTP_GET, "/metrics", admin_metrics},
};

static void
stop_deadline_cb(evutil_socket_t fd, short what, void *arg)
{
    struct lcs *l = arg;
    log_warn("lcsd_stop_deadline", "node=%s connections=%zu", l->cfg.node_id, conn_count(l));
    event_base_loopexit(l->base, NULL);
}

/*
 * First signal: stop accepting, close every connection with 1001 and wait
 * for them (bounded); a second signal exits at once.
 */
static void
on_signal(evutil_socket_t sig, short what, void *arg)
{
    struct lcs *l = arg;
    if (l->stopping) {
        log_info("lcsd_stopping_now", "signal=%d", (int)sig);
        event_base_loopexit(l->base, NULL);
        return;
    }
    l->stopping = true;
    sdn_stopping("stopping: closing connections");
    log_info("lcsd_stopping", "signal=%d connections=%zu", (int)sig, conn_count(l));
    listener_stop(l->listener);
    pace_free_all(l);
    conn_shutdown_all(l);
    if (conn_count(l) == 0) {
        event_base_loopexit(l->base, NULL);
        return;
    }
    l->stop_ev = evtimer_new(l->base, stop_deadline_cb, l);
    struct timeval tv = {(time_t)(l->cfg.close_timeout_ms / 1000) + 1,
                         (suseconds_t)(l->cfg.close_timeout_ms % 1000) * 1000};
    if (l->stop_ev != NULL)
        evtimer_add(l->stop_ev, &tv);
}

/*
 * Raises the soft descriptor limit to the hard one: connections are what
 * lcsd holds, and conn_limit() derives the connection limit from it.
 */
static void
raise_nofile(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rlim_t was = rl.rlim_cur;
        rl.rlim_cur = rl.rlim_max;
        if (setrlimit(RLIMIT_NOFILE, &rl) != 0)
            log_warn("nofile_raise_failed", "soft=%llu hard=%llu", (unsigned long long)was,
                     (unsigned long long)rl.rlim_max);
    }
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
    enum log_format fmt;
    if (!log_parse_format(c->log_format, &fmt)) {
        snprintf(err, errlen, "key 'log_format': '%s' is not kv or json", c->log_format);
        return false;
    }
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
    /* The node id goes into route values and channel names: one token. */
    for (const char *p = c->node_id; *p; p++) {
        if ((unsigned char)*p <= 0x20 || *p == '{' || *p == '}' || (unsigned char)*p >= 0x7f) {
            snprintf(err, errlen, "key 'node_id': '%s' must be printable without spaces or braces",
                     c->node_id);
            return false;
        }
    }
    if ((c->token_prev_key[0] == '\0') != (c->token_prev_key_id[0] == '\0')) {
        snprintf(err, errlen, "keys 'token_prev_key' and 'token_prev_key_id' go together");
        return false;
    }
    return true;
}

/* Points l->keys at the token keys of l->cfg (at start and after a reload). */
static void
set_keys(struct lcs *l)
{
    const struct lcs_config *c = &l->cfg;
    l->keys.current_id = c->token_key_id;
    l->keys.current_key = c->token_key;
    l->keys.previous_id = c->token_prev_key_id[0] ? c->token_prev_key_id : NULL;
    l->keys.previous_key = c->token_prev_key[0] ? c->token_prev_key : NULL;
}

/*
 * SIGHUP: reopens the log file (logrotate renamed it), then reads the
 * config file again. A file that does not load or validate changes nothing
 * else; otherwise the reloadable keys (log settings, token keys) take
 * effect at once, since everything runs on this one loop, and every other
 * changed key is named in one "needs restart" line and left as it was.
 */
static void
on_sighup(evutil_socket_t sig, short what, void *arg)
{
    struct lcs *l = arg;
    char err[512], q[600];
    sdn_reloading();
    log_info("lcsd_reloading", "signal=%d", (int)sig);
    if (!log_open_file(l->cfg.log_file, err, sizeof(err)))
        log_error("log_reopen_failed", "error=%s", log_q(q, sizeof(q), err));
    const char *path = l->config_path != NULL ? l->config_path : "(none)";
    struct lcs_config nc;
    memset(&nc, 0, sizeof(nc));
    struct lcs probe;
    memset(&probe, 0, sizeof(probe));
    bool ok = cfg_load(&lcs_config_schema, &nc, l->config_path, err, sizeof(err));
    /* An empty node_id means host-pid, which is what runs. */
    if (ok && nc.node_id[0] == '\0')
        ok = cfg_set(&lcs_config_schema, &nc, "node_id", l->cfg.node_id, err, sizeof(err));
    if (ok) {
        probe.cfg = nc;
        ok = prepare(&probe, err, sizeof(err));
        nc = probe.cfg;
    }
    if (ok && strcmp(nc.log_file, l->cfg.log_file) != 0)
        ok = log_open_file(nc.log_file, err, sizeof(err));
    if (!ok) {
        log_error("config_reload_failed", "file=%s error=%s kept=running_config", path,
                  log_q(q, sizeof(q), err));
        cfg_free(&lcs_config_schema, &nc);
        sdn_ready(NULL);
        return;
    }
    char applied[1024] = "", restart[1024] = "";
    for (size_t i = 0; i < lcs_config_schema.nkeys; i++) {
        const struct cfg_key *k = &lcs_config_schema.keys[i];
        if (cfg_key_equal(k, &l->cfg, &nc))
            continue;
        char *list = k->reloadable ? applied : restart;
        size_t used = strlen(list);
        snprintf(list + used, sizeof(applied) - used, "%s%s", used ? "," : "", k->name);
        if (k->reloadable)
            cfg_key_swap(k, &l->cfg, &nc);
    }
    set_keys(l); /* before nc, holding the old strings now, is freed */
    cfg_free(&lcs_config_schema, &nc);
    if (!log_apply(l->cfg.log_level, l->cfg.log_format, l->cfg.log_file, err, sizeof(err)))
        log_error("log_settings_failed", "error=%s", log_q(q, sizeof(q), err));
    log_info("config_reloaded", "file=%s applied=%s", path, applied[0] ? applied : "none");
    if (restart[0] != '\0')
        log_warn("config_needs_restart",
                 "keys=%s hint=\"changed in the file, not applied until a restart\"", restart);
    sdn_ready(NULL);
}

/* WATCHDOG=1 from the loop itself: a wedged loop stops the pings. */
static void
on_watchdog(evutil_socket_t fd, short what, void *arg)
{
    sdn_watchdog();
}

int
main(int argc, char **argv)
{
    struct lcs l;
    memset(&l, 0, sizeof(l));
    int status = 1;
    struct event *sigterm = NULL, *sigint = NULL, *sighup = NULL;

    enum cfg_action act = cfg_main(&lcs_config_schema, &l.cfg, argc, argv, NULL, NULL);
    if (act != CFG_RUN) {
        cfg_free(&lcs_config_schema, &l.cfg);
        return act == CFG_EXIT_OK ? 0 : 1;
    }
    char err[512];
    char host[256];
    int port;
    if (!prepare(&l, err, sizeof(err)) ||
        !log_apply(l.cfg.log_level, l.cfg.log_format, l.cfg.log_file, err, sizeof(err))) {
        fprintf(stderr, "lcsd: config error: %s\n", err);
        goto out;
    }
    set_keys(&l);
    l.config_path = cfg_argv_path(argc, argv);
    if (!cfg_parse_hostport(l.cfg.admin_listen, host, sizeof(host), &port)) {
        fprintf(stderr, "lcsd: config error: key 'admin_listen': '%s' is not host:port\n",
                l.cfg.admin_listen);
        goto out;
    }
    char ws_host[256];
    int ws_port;
    if (!cfg_parse_hostport(l.cfg.ws_listen, ws_host, sizeof(ws_host), &ws_port)) {
        fprintf(stderr, "lcsd: config error: key 'ws_listen': '%s' is not host:port\n",
                l.cfg.ws_listen);
        goto out;
    }
    signal(SIGPIPE, SIG_IGN);
    raise_nofile();
    l.started_us = lcs_now_us();
    l.base = event_base_new();
    l.metrics = metrics_new();
    if (l.base == NULL || l.metrics == NULL)
        goto out;
    register_metrics(&l);
    if (!conn_registry_init(&l)) {
        fprintf(stderr, "lcsd: cannot start: out of memory\n");
        goto out;
    }

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
        .nodes = l.cfg.redis_nodes,
        .user = l.cfg.redis_user,
        .password = l.cfg.redis_password,
        .connect_timeout_ms = 1000,
        .command_timeout_ms = (int)l.cfg.redis_timeout_ms,
        .backoff_min_ms = 100,
        .backoff_max_ms = 5000,
    };
    l.redis = redis_new(l.base, &rc, l.metrics);
    if (l.redis == NULL || !route_init(&l)) {
        fprintf(stderr, "lcsd: config error: bad Redis settings\n");
        goto out;
    }
    l.health = lcs_health_start(&l);
    if (l.health == NULL) {
        fprintf(stderr, "lcsd: cannot start: out of memory\n");
        goto out;
    }
    l.listener = listener_new(&l, ws_host, ws_port, err, sizeof(err));
    if (l.listener == NULL) {
        fprintf(stderr, "lcsd: cannot start: %s\n", err);
        goto out;
    }
    sigterm = evsignal_new(l.base, SIGTERM, on_signal, &l);
    sigint = evsignal_new(l.base, SIGINT, on_signal, &l);
    sighup = evsignal_new(l.base, SIGHUP, on_sighup, &l);
    event_add(sigterm, NULL);
    event_add(sigint, NULL);
    event_add(sighup, NULL);
    /* Listening: systemd (Type=notify) may send traffic now. */
    char ready[256];
    snprintf(ready, sizeof(ready), "serving: ws %s, admin %s, node %s", l.cfg.ws_listen,
             l.cfg.admin_listen, l.cfg.node_id);
    sdn_ready(ready);
    uint64_t wd_usec = sdn_watchdog_usec();
    if (wd_usec > 0) {
        l.watchdog_ev = event_new(l.base, -1, EV_PERSIST, on_watchdog, &l);
        struct timeval half = {(time_t)(wd_usec / 2 / 1000000),
                               (suseconds_t)(wd_usec / 2 % 1000000)};
        if (l.watchdog_ev != NULL)
            event_add(l.watchdog_ev, &half);
        sdn_watchdog();
        log_info("watchdog_on", "usec=%llu", (unsigned long long)wd_usec);
    }

    log_info("lcsd_started",
             "node=%s ws=%s admin=%s conn_bytes=%zu max_connections=%zu fd_reserve=%lld version=%s",
             l.cfg.node_id, l.cfg.ws_listen, l.cfg.admin_listen, sizeof(struct conn),
             conn_limit(&l), (long long)l.cfg.fd_reserve, MBOX_VERSION);
    event_base_dispatch(l.base);
    log_info("lcsd_stopped", "node=%s", l.cfg.node_id);
    status = 0;
out:
    if (sigterm)
        event_free(sigterm);
    if (sigint)
        event_free(sigint);
    if (sighup)
        event_free(sighup);
    if (l.watchdog_ev)
        event_free(l.watchdog_ev);
    if (l.stop_ev)
        event_free(l.stop_ev);
    listener_free(l.listener);
    pace_free_all(&l);
    conn_registry_free(&l);
    if (l.admin)
        http_server_free(l.admin);
    if (l.sub)
        redis_free(l.sub);
    if (l.redis)
        redis_free(l.redis);
    lcs_health_free(l.health);
    if (l.base)
        event_base_free(l.base);
    metrics_free(l.metrics);
    cfg_free(&lcs_config_schema, &l.cfg);
    return status;
}
