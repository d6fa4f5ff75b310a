/*
 * lcs_health: /livez, /readyz and the dependency probe of lcsd (lcs_health.h).
 */
#include "lcs_health.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <jansson.h>

#include "health.h"
#include "http.h"
#include "lcs.h"
#include "redis.h"

struct lcs_health {
    struct lcs *l;
    struct health_beat beat;
    struct event *timer;
    struct health_dep redis, sub;
};

static void
on_ping(redisReply *reply, const char *err, void *arg)
{
    bool pong = err == NULL && reply != NULL && reply->type == REDIS_REPLY_STATUS &&
                strcmp(reply->str, "PONG") == 0;
    health_dep_end(arg, pong, err != NULL ? err : "unexpected reply to PING");
}

static void
on_tick(evutil_socket_t fd, short what, void *arg)
{
    struct lcs_health *h = arg;
    if (!h->redis.inflight) {
        health_dep_begin(&h->redis);
        if (!redis_command(h->l->redis, on_ping, &h->redis, "PING"))
            health_dep_end(&h->redis, false, "not connected");
    }
    bool sub_up = h->l->sub != NULL && redis_connected(h->l->sub);
    health_dep_state(&h->sub, sub_up, "not connected");
}

struct lcs_health *
lcs_health_start(struct lcs *l)
{
    struct lcs_health *h = calloc(1, sizeof(*h));
    if (h == NULL)
        return NULL;
    h->l = l;
    health_dep_init(&h->redis, l->metrics, "redis");
    health_dep_init(&h->sub, l->metrics, "redis_subscriber");
    h->timer = event_new(l->base, -1, EV_PERSIST, on_tick, h);
    struct timeval tv = {LCS_PROBE_INTERVAL_MS / 1000, (LCS_PROBE_INTERVAL_MS % 1000) * 1000};
    if (h->timer == NULL || event_add(h->timer, &tv) != 0 ||
        !health_beat_start(&h->beat, l->base)) {
        lcs_health_free(h);
        return NULL;
    }
    event_active(h->timer, EV_TIMEOUT, 0);
    return h;
}

void
lcs_health_free(struct lcs_health *h)
{
    if (h == NULL)
        return;
    if (h->timer != NULL)
        event_free(h->timer);
    health_beat_stop(&h->beat);
    free(h);
}

void
lcs_livez(struct http_req *r, void *ctx)
{
    struct lcs *l = ctx;
    int64_t age = l->health != NULL ? health_beat_age_ms(&l->health->beat) : INT64_MAX;
    bool ok = age <= HEALTH_BEAT_STALE_MS;
    json_t *body = json_pack("{s:s, s:s, s:s, s:i, s:I}", "status", ok ? "ok" : "stuck", "service",
                             "lcsd", "node", l->cfg.node_id, "loops", 1, "oldest_beat_ms",
                             (json_int_t)(age == INT64_MAX ? -1 : age));
    http_reply_json(r, ok ? 200 : 503, body);
}

/* Adds check name to the body: "ok", or why it fails (then also to not_ready). */
static void
ready_check(json_t *checks, json_t *failing, const char *name, const char *why)
{
    json_object_set_new(checks, name, json_string(why == NULL ? "ok" : why));
    if (why != NULL)
        json_array_append_new(failing, json_string(name));
}

void
lcs_readyz(struct http_req *r, void *ctx)
{
    struct lcs *l = ctx;
    json_t *checks = json_object(), *failing = json_array();
    ready_check(checks, failing, "redis", redis_connected(l->redis) ? NULL : "not connected");
    bool sub_up = l->sub != NULL && redis_connected(l->sub);
    ready_check(checks, failing, "redis_subscriber", sub_up ? NULL : "not subscribed");
    ready_check(checks, failing, "accepting", l->stopping ? "stopping (SIGTERM)" : NULL);
    bool ok = json_array_size(failing) == 0;
    json_t *body =
        json_pack("{s:s, s:s, s:s, s:o, s:o}", "status", ok ? "ready" : "not_ready", "service",
                  "lcsd", "node", l->cfg.node_id, "checks", checks, "not_ready", failing);
    http_reply_json(r, ok ? 200 : 503, body);
}
