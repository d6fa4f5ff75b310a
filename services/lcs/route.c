/*
 * route: routes in Redis and the lines on lcsd's channels (see route.h for
 * the formats). The three route updates are small Lua scripts so each is
 * one atomic step in Redis: a takeover reads the previous owner and writes
 * itself in one step, so two logins of the same device on two nodes cannot
 * both miss each other, and a close never deletes a route a newer
 * connection already wrote.
 *
 * The kick of the previous owner is published by lcsd after the script
 * returns, not from inside it: in Redis Cluster the other node's channel
 * lives in another slot, and a script may only touch its own key's slot
 * (sharded pub/sub included). Publishing late is safe: a kick line names
 * the replaced connection's id, so it can never close a newer connection.
 */
#include "route.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "conn.h"
#include "lines.h"
#include "lcs.h"
#include "log.h"
#include "metrics.h"
#include "pace.h"
#include "redis.h"
#include "session.h"

/*
 * Login: take the device over. KEYS[1] route key; ARGV: device, value,
 * ttl, this node, app_id, uid. A previous value naming another node is
 * answered {node, kick line} for register_cb to publish; otherwise 1.
 */
static const char script_register[] =
    "local old = redis.call('HGET', KEYS[1], ARGV[1])\n"
    "redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
    "redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
    "if old and old ~= ARGV[2] then\n"
    "  local sp = string.find(old, ' ', 1, true)\n"
    "  if sp then\n"
    "    local node = string.sub(old, 1, sp - 1)\n"
    "    if node ~= ARGV[4] then\n"
    "      return {node, 'k ' .. ARGV[5] .. ' ' .. ARGV[6] .. ' ' .. ARGV[1] .. ' ' ..\n"
    "        string.sub(old, sp + 1) .. '\\n'}\n"
    "    end\n"
    "  end\n"
    "end\n"
    "return 1\n";

/*
 * Refresh and re-register after a reconnect: write only if the field is
 * missing or still ours, so a newer login elsewhere is never overwritten.
 */
static const char script_refresh[] = "local cur = redis.call('HGET', KEYS[1], ARGV[1])\n"
                                     "if cur == false or cur == ARGV[2] then\n"
                                     "  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])\n"
                                     "  redis.call('EXPIRE', KEYS[1], ARGV[3])\n"
                                     "  return 1\n"
                                     "end\n"
                                     "return 0\n";

/* Close: compare and delete. */
static const char script_unregister[] = "if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then\n"
                                        "  return redis.call('HDEL', KEYS[1], ARGV[1])\n"
                                        "end\n"
                                        "return 0\n";

/* Who a pending register reply belongs to: looked up again, the conn may be gone. */
struct route_wait {
    struct lcs *l;
    uint64_t conn_id;
};

static uint32_t
ttl_ticks(const struct lcs *l)
{
    return (uint32_t)(l->cfg.route_ttl_s * 1000 / CONN_TICK_MS);
}

/* Runs one route script for c (extra ARGVs after device, value, ttl). */
static bool
route_eval(struct conn *c, const char *script, bool extra, redis_cb cb, void *arg)
{
    struct lcs *l = c->l;
    char key[64], value[160], ttl[24], app[24], uid[24];
    snprintf(key, sizeof(key), "route:{%" PRIu64 ":%" PRIu64 "}", c->app_id, c->uid);
    snprintf(value, sizeof(value), "%s %" PRIu64, l->cfg.node_id, c->id);
    snprintf(ttl, sizeof(ttl), "%" PRId64, l->cfg.route_ttl_s);
    snprintf(app, sizeof(app), "%" PRIu64, c->app_id);
    snprintf(uid, sizeof(uid), "%" PRIu64, c->uid);
    const char *argv[10] = {"EVAL", script,         "1", key, c->device, value,
                            ttl,    l->cfg.node_id, app, uid};
    size_t lens[10];
    for (int i = 0; i < 10; i++)
        lens[i] = strlen(argv[i]);
    int argc = extra ? 10 : 7;
    bool ok = redis_command_argv(l->redis, cb, arg, argc, argv, lens);
    metric_inc(ok ? l->m.route_writes : l->m.route_errors);
    return ok;
}

/* Publishes the kick line script_register answered, on the previous owner's channel. */
static void
publish_kick(struct lcs *l, const redisReply *reply)
{
    const redisReply *node = reply->element[0], *line = reply->element[1];
    if (node->type != REDIS_REPLY_STRING || line->type != REDIS_REPLY_STRING)
        return;
    char channel[160];
    int n = snprintf(channel, sizeof(channel), "lcs:{%.*s}", (int)node->len, node->str);
    if (n <= 0 || (size_t)n >= sizeof(channel))
        return;
    const char *argv[3] = {"PUBLISH", channel, line->str};
    size_t lens[3] = {7, (size_t)n, line->len};
    char q[200];
    if (!redis_command_argv(l->redis, NULL, NULL, 3, argv, lens))
        log_warn("route_kick_dropped", "channel=%s reason=redis_down",
                 log_q(q, sizeof(q), channel));
}

static void
register_cb(redisReply *reply, const char *err, void *arg)
{
    struct route_wait *w = arg;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY && reply->elements == 2)
        publish_kick(w->l, reply);
    struct conn *c = conn_find(w->l, w->conn_id);
    if (err != NULL || (reply != NULL && reply->type == REDIS_REPLY_ERROR)) {
        metric_inc(w->l->m.route_errors);
        log_warn("route_write_failed", "conn=%" PRIu64 " error=\"%s\"", w->conn_id,
                 err != NULL ? err : reply->str);
    }
    if (c != NULL)
        session_route_done(c);
    free(w);
}

void
route_register(struct conn *c)
{
    c->route_at = conn_now_tick(c->l);
    struct route_wait *w = malloc(sizeof(*w));
    if (w != NULL) {
        w->l = c->l;
        w->conn_id = c->id;
        if (route_eval(c, script_register, true, register_cb, w))
            return;
        free(w);
    }
    /* Redis is down: the login still succeeds; the reconnect hook writes the route. */
    session_route_done(c);
}

void
route_maybe_refresh(struct conn *c, uint32_t now_tick)
{
    if (now_tick - c->route_at <= ttl_ticks(c->l) / 2)
        return;
    c->route_at = now_tick;
    (void)route_eval(c, script_refresh, false, NULL, NULL);
}

void
route_unregister(struct conn *c)
{
    (void)route_eval(c, script_unregister, false, NULL, NULL);
}

/* Command client (re)connected: Redis may have lost everything, write every route again. */
static void
on_redis_connect(void *arg)
{
    struct lcs *l = arg;
    uint32_t now = conn_now_tick(l);
    size_t n = 0;
    for (struct conn *c = conn_first(l); c != NULL; c = c->all_next) {
        if (c->state != CONN_ACTIVE)
            continue;
        c->route_at = now;
        if (route_eval(c, script_refresh, false, NULL, NULL))
            n++;
    }
    log_info("routes_registered", "node=%s routes=%zu", l->cfg.node_id, n);
}

static void
route_line(struct lcs *l, const char *line, size_t n)
{
    struct line_field f[LINE_MAX_FIELDS];
    int k = line_split(line, n, f);
    uint64_t app, uid, msg, conn_id, notice;
    char device[SESSION_DEVICE_MAX + 1];
    struct pace_spec ps;
    if (f[0].n != 1) {
        metric_inc(l->m.notify_dropped_bad);
        return;
    }
    switch (f[0].s[0]) {
    case 'n':
        if (k == 6 && line_u64(&f[1], &app) && line_u64(&f[2], &uid) && line_u64(&f[3], &msg) &&
            line_str(&f[4], device, sizeof(device)) && line_u64(&f[5], &conn_id)) {
            session_notify_line(l, app, uid, msg, device, conn_id);
            return;
        }
        break;
    case 'k':
        if (k == 5 && line_u64(&f[1], &app) && line_u64(&f[2], &uid) &&
            line_str(&f[3], device, sizeof(device)) && line_u64(&f[4], &conn_id)) {
            session_kick_line(l, app, uid, device, conn_id);
            return;
        }
        break;
    case 'p':
        if (line_parse_pace(f, k, &ps)) {
            pace_start(l, &ps);
            return;
        }
        break;
    case 'x':
        if (k == 3 && line_u64(&f[1], &app) && line_u64(&f[2], &notice)) {
            pace_stop(l, app, notice);
            return;
        }
        break;
    default:
        return; /* a line type this lcsd does not know: not an error */
    }
    metric_inc(l->m.notify_dropped_bad);
    char q[160];
    char tmp[128];
    size_t m = n < sizeof(tmp) - 1 ? n : sizeof(tmp) - 1;
    memcpy(tmp, line, m);
    tmp[m] = '\0';
    log_warn("route_bad_line", "line=%s", log_q(q, sizeof(q), tmp));
}

void
route_on_message(struct lcs *l, const char *payload, size_t len)
{
    size_t i = 0;
    while (i < len) {
        const char *nl = memchr(payload + i, '\n', len - i);
        size_t end = nl != NULL ? (size_t)(nl - payload) : len;
        if (end > i)
            route_line(l, payload + i, end - i);
        i = end + 1;
    }
}

static void
on_channel_message(const char *channel, const char *payload, size_t len, void *arg)
{
    route_on_message(arg, payload, len);
}

bool
route_init(struct lcs *l)
{
    snprintf(l->channel, sizeof(l->channel), "lcs:{%s}", l->cfg.node_id);
    struct redis_config rc = {
        .host = l->cfg.redis_host,
        .port = (int)l->cfg.redis_port,
        .nodes = l->cfg.redis_nodes,
        .user = l->cfg.redis_user,
        .password = l->cfg.redis_password,
        .connect_timeout_ms = 1000,
        .command_timeout_ms = (int)l->cfg.redis_timeout_ms,
        .backoff_min_ms = 100,
        .backoff_max_ms = 2000,
    };
    l->sub = redis_subscriber_new(l->base, &rc, on_channel_message, l, l->metrics);
    if (l->sub == NULL)
        return false;
    redis_subscribe(l->sub, l->channel);
    redis_subscribe(l->sub, LCS_BROADCAST_CHANNEL);
    redis_set_on_connect(l->redis, on_redis_connect, l);
    return true;
}
