/*
 * notify: route lookup and publish after a commit (notify.h).
 *
 * One HGETALL per mailbox (pipelined on the worker's Redis connection);
 * when all have answered, lines are grouped by node and each node's batch
 * is one PUBLISH. A mailbox with no route (user offline) costs one lookup.
 */
#include "notify.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "logic.h"
#include "metrics.h"
#include "pg.h"
#include "redis.h"

#define NOTIFY_NODE_MAX    64
#define NOTIFY_BATCH_BYTES 65536

struct notify_op {
    struct logic_worker *w;
    uint64_t app_id;
    int pending;
    /* per node: name and the lines gathered for it */
    int nnodes;
    char nodes[NOTIFY_NODE_MAX][64];
    char *lines[NOTIFY_NODE_MAX];
    size_t len[NOTIFY_NODE_MAX];
};

struct notify_one {
    struct notify_op *op;
    uint64_t uid, msg_id;
};

/* Appends a line to the batch of node, starting a batch when needed. */
static void
add_line(struct notify_op *op, const char *node, size_t nodelen, const char *line, size_t n)
{
    int i;
    for (i = 0; i < op->nnodes; i++) {
        if (strlen(op->nodes[i]) == nodelen && memcmp(op->nodes[i], node, nodelen) == 0)
            break;
    }
    if (i == op->nnodes) {
        if (op->nnodes == NOTIFY_NODE_MAX || nodelen >= sizeof(op->nodes[0]))
            return;
        memcpy(op->nodes[i], node, nodelen);
        op->nodes[i][nodelen] = '\0';
        op->lines[i] = malloc(NOTIFY_BATCH_BYTES);
        op->len[i] = 0;
        op->nnodes++;
    }
    if (op->lines[i] == NULL || op->len[i] + n > NOTIFY_BATCH_BYTES)
        return;
    memcpy(op->lines[i] + op->len[i], line, n);
    op->len[i] += n;
}

/* All lookups answered: one PUBLISH per node. */
static void
notify_flush(struct notify_op *op)
{
    struct logic_worker *w = op->w;
    for (int i = 0; i < op->nnodes; i++) {
        if (op->lines[i] == NULL)
            continue;
        char channel[96];
        snprintf(channel, sizeof(channel), "lcs:{%s}", op->nodes[i]);
        const char *argv[3] = {"PUBLISH", channel, op->lines[i]};
        size_t lens[3] = {7, strlen(channel), op->len[i]};
        if (!redis_command_argv(w->redis, NULL, NULL, 3, argv, lens))
            log_debug("notify_dropped", "node=%s reason=redis_down", op->nodes[i]);
        else
            metric_inc(metrics_counter(w->app->metrics, "mbox_notify_batches_total",
                                       "notify batches published to lcsd nodes", NULL));
        free(op->lines[i]);
    }
    free(op);
}

static void
notify_done_one(struct notify_op *op)
{
    if (--op->pending == 0)
        notify_flush(op);
}

static void
on_routes(redisReply *reply, const char *err, void *arg)
{
    struct notify_one *one = arg;
    struct notify_op *op = one->op;
    if (reply != NULL && reply->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i + 1 < reply->elements; i += 2) {
            redisReply *dev = reply->element[i], *val = reply->element[i + 1];
            if (dev->type != REDIS_REPLY_STRING || val->type != REDIS_REPLY_STRING)
                continue;
            const char *sp = memchr(val->str, ' ', val->len);
            if (sp == NULL || dev->len > 128)
                continue;
            size_t nodelen = (size_t)(sp - val->str);
            char line[512];
            int n =
                snprintf(line, sizeof(line), "n %" PRIu64 " %" PRIu64 " %" PRIu64 " %.*s %.*s\n",
                         op->app_id, one->uid, one->msg_id, (int)dev->len, dev->str,
                         (int)(val->len - nodelen - 1), sp + 1);
            if (n > 0 && (size_t)n < sizeof(line))
                add_line(op, val->str, nodelen, line, (size_t)n);
        }
    }
    free(one);
    notify_done_one(op);
}

void
notify_mailboxes(struct logic_worker *w, uint64_t app_id, const uint64_t *uids,
                 const uint64_t *msg_ids, int n)
{
    if (n == 0 || !redis_connected(w->redis))
        return;
    struct notify_op *op = calloc(1, sizeof(*op));
    if (op == NULL)
        return;
    op->w = w;
    op->app_id = app_id;
    op->pending = 1;
    for (int i = 0; i < n; i++) {
        struct notify_one *one = malloc(sizeof(*one));
        if (one == NULL)
            break;
        one->op = op;
        one->uid = uids[i];
        one->msg_id = msg_ids[i];
        char key[64];
        snprintf(key, sizeof(key), "route:{%" PRIu64 ":%" PRIu64 "}", app_id, uids[i]);
        op->pending++;
        if (!redis_command(w->redis, on_routes, one, "HGETALL %s", key)) {
            op->pending--;
            free(one);
        }
    }
    notify_done_one(op);
}

bool
notify_pace_line(char *out, size_t outlen, uint64_t app, uint64_t notice, uint64_t msg_id,
                 int64_t rate, int64_t start_us, int64_t expire_at, bool login_only,
                 uint64_t min_core, uint64_t max_core, const char *platforms)
{
    int n = snprintf(out, outlen,
                     "p %" PRIu64 " %" PRIu64 " %" PRIu64 " %" PRId64 " %" PRId64 " %" PRId64
                     " %d %" PRIu64 " %" PRIu64 " %s\n",
                     app, notice, msg_id, rate, start_us, expire_at, login_only ? 1 : 0, min_core,
                     max_core, platforms[0] != '\0' ? platforms : "-");
    return n > 0 && (size_t)n < outlen;
}

void
notify_pacing(struct logic_worker *w, const PGresult *res, int row, const char *action)
{
    char line[512];
    size_t len;
    uint64_t app = (uint64_t)pg_get_i64(res, row, pg_col(res, "app_id"));
    uint64_t id = (uint64_t)pg_get_i64(res, row, pg_col(res, "notice_id"));
    if (strcmp(action, "publish") == 0) {
        const char *mode = pg_get_bytes(res, row, pg_col(res, "notify_mode"), &len);
        if (strcmp(mode, "paced") != 0)
            return;
        int64_t now = logic_now_us();
        int64_t start_at = pg_get_i64(res, row, pg_col(res, "start_at"));
        /* Pacing starts two poll intervals after the notice becomes live
         * (now, or its start_at), so every logicd's poller has read it
         * before a notified client syncs: a client told earlier would pull
         * from a cache without the notice and not be told again. */
        int64_t start_us =
            (start_at > now ? start_at : now) + 2 * w->app->cfg.poll_interval_ms * 1000;
        if (!notify_pace_line(line, sizeof(line), app, id,
                              (uint64_t)pg_get_i64(res, row, pg_col(res, "msg_id")),
                              pg_get_i64(res, row, pg_col(res, "notify_rate")), start_us,
                              pg_get_i64(res, row, pg_col(res, "expire_at")),
                              pg_get_bool(res, row, pg_col(res, "login_only")),
                              (uint64_t)pg_get_i64(res, row, pg_col(res, "min_core_level")),
                              (uint64_t)pg_get_i64(res, row, pg_col(res, "max_core_level")),
                              pg_get_bytes(res, row, pg_col(res, "platforms"), &len)))
            return;
    } else if (strcmp(action, "stop") == 0 || strcmp(action, "retract") == 0 ||
               strcmp(action, "delete") == 0) {
        snprintf(line, sizeof(line), "x %" PRIu64 " %" PRIu64 "\n", app, id);
    } else {
        return;
    }
    const char *argv[3] = {"PUBLISH", "lcs:broadcast", line};
    size_t lens[3] = {7, 13, strlen(line)};
    if (!redis_command_argv(w->redis, NULL, NULL, 3, argv, lens))
        log_warn("pacing_broadcast_dropped", "notice=%" PRIu64 " reason=redis_down", id);
}
