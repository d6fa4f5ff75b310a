/*
 * api_sync: the SDK's pulls on the SDK listener: POST /v1/sync,
 * GET /v1/history, POST /v1/read (SPEC sections 4 and 5).
 *
 * Sync, private side: rows with msg_id > cursor.p, ascending, at most
 * limit; the cursor moves only over what is returned (has_more says there
 * is more). A sync with nothing new is answered from the Redis hint
 * without PostgreSQL (hint.h explains why that cannot lose a message).
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "api_io.h"
#include "cursor.h"
#include "hint.h"
#include "items.h"
#include "log.h"
#include "logic.h"
#include "mbox.pb-c.h"
#include "metrics.h"
#include "pg.h"
#include "sql.h"

struct sync_op {
    struct http_req *r;
    struct logic_worker *w;
    struct token_claims who;
    struct cursor cur;
    uint32_t limit;
    struct hint_read hint;
};

/* Replies with items and the cursor moved over them. */
static void
sync_reply(struct sync_op *op, Mbox__Item **items, size_t n, bool has_more, bool reset)
{
    struct cursor next = op->cur;
    if (n > 0)
        next.p = items[n - 1]->msg_id;
    char cbuf[CURSOR_STR_LEN];
    cursor_encode(&next, cbuf);
    Mbox__SyncResponse resp = MBOX__SYNC_RESPONSE__INIT;
    resp.items = items;
    resp.n_items = n;
    resp.cursor = cbuf;
    resp.has_has_more = resp.has_reset = 1;
    resp.has_more = has_more;
    resp.reset = reset;
    api_reply_msg(op->r, 200, &resp.base);
}

static void
on_sync_rows(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct sync_op *op = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(op->r, err);
        free(op);
        return;
    }
    int rows = PQntuples(res);
    uint64_t last = rows > 0 ? (uint64_t)pg_get_i64(res, 0, 0) : 0;
    /* One row with a NULL msg_id means the mailbox has nothing after p. */
    int n = (rows == 1 && pg_is_null(res, 0, 1)) ? 0 : rows;
    bool has_more = n > (int)op->limit;
    if (has_more)
        n = (int)op->limit;
    Mbox__Item *items = calloc((size_t)n + 1, sizeof(*items));
    Mbox__Item **ptrs = calloc((size_t)n + 1, sizeof(*ptrs));
    if (items == NULL || ptrs == NULL) {
        http_reply_error(op->r, 503, "unavailable", "out of memory");
    } else {
        items_from_rows(res, 0, n, items, ptrs);
        /* The header's last_msg_id is from the same snapshot as the rows. */
        hint_set(op->w, op->who.app_id, op->who.uid, &op->hint, last);
        sync_reply(op, ptrs, (size_t)n, has_more, false);
    }
    free(items);
    free(ptrs);
    free(op);
}

static void
sync_query(struct sync_op *op)
{
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)op->who.app_id);
    pg_param_i64(&p, (int64_t)op->who.uid);
    pg_param_i64(&p, (int64_t)op->cur.p);
    pg_param_i32(&p, (int32_t)op->limit + 1);
    pg_param_i64(&p, logic_now_us());
    if (!pg_query(op->w->pg, SQL_SYNC, &p, on_sync_rows, op)) {
        http_reply_error(op->r, 503, "unavailable", "database unavailable, retry later");
        free(op);
    }
}

static void
on_sync_hint(const struct hint_read *h, void *arg)
{
    struct sync_op *op = arg;
    op->hint = *h;
    if (h->usable && h->has_m && h->m <= op->cur.p) {
        metric_inc(metrics_counter(op->w->app->metrics, "mbox_sync_total",
                                   "syncs by how they were answered", "path=\"hint\""));
        sync_reply(op, NULL, 0, false, false);
        free(op);
        return;
    }
    metric_inc(metrics_counter(op->w->app->metrics, "mbox_sync_total",
                               "syncs by how they were answered", "path=\"db\""));
    sync_query(op);
}

void
api_sync(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const struct logic_config *c = &w->app->cfg;
    struct sync_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    op->r = r;
    op->w = w;
    if (!api_auth_user(r, w, &op->who)) {
        free(op);
        return;
    }
    ProtobufCMessage *m;
    if (!api_decode(r, &mbox__sync_request__descriptor, &m)) {
        free(op);
        return;
    }
    Mbox__SyncRequest *q = (Mbox__SyncRequest *)m;
    uint32_t limit = q->has_limit ? q->limit : (uint32_t)c->sync_default_limit;
    if (limit == 0 || (int64_t)limit > c->sync_max_limit)
        limit = limit == 0 ? 1 : (uint32_t)c->sync_max_limit;
    op->limit = limit;
    const char *cs = q->cursor ? q->cursor : "";
    bool bad =
        strlen(cs) > CURSOR_MAX_LEN || cursor_decode(cs, (uint32_t)c->epoch, &op->cur) != CURSOR_OK;
    api_msg_free(m);
    if (bad) {
        http_reply_error(r, 400, "invalid_argument",
                         "cursor: not a cursor this service issued (send \"\" to start over)");
        free(op);
        return;
    }
    /* Another epoch (data restored or wiped), or older than retention: the
     * rows it points after may be gone; the client reloads from scratch. */
    int64_t horizon = logic_now_us() - c->retention_s * 1000000;
    if (op->cur.epoch != (uint32_t)c->epoch || (op->cur.p != 0 && (int64_t)op->cur.p < horizon)) {
        op->cur.epoch = (uint32_t)c->epoch;
        op->cur.p = op->cur.g = 0;
        sync_reply(op, NULL, 0, false, true);
        free(op);
        return;
    }
    hint_read(w, op->who.app_id, op->who.uid, on_sync_hint, op);
}

/* ---- GET /v1/history?from=&to=&order=asc|desc&limit= ---- */

struct history_op {
    struct http_req *r;
    struct logic_worker *w;
    uint32_t limit;
};

static void
on_history_rows(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct history_op *op = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(op->r, err);
        free(op);
        return;
    }
    int rows = PQntuples(res);
    bool has_more = rows > (int)op->limit;
    int n = has_more ? (int)op->limit : rows;
    Mbox__Item *items = calloc((size_t)n + 1, sizeof(*items));
    Mbox__Item **ptrs = calloc((size_t)n + 1, sizeof(*ptrs));
    if (items == NULL || ptrs == NULL) {
        http_reply_error(op->r, 503, "unavailable", "out of memory");
    } else {
        items_from_rows(res, 0, n, items, ptrs);
        Mbox__HistoryResponse resp = MBOX__HISTORY_RESPONSE__INIT;
        resp.items = ptrs;
        resp.n_items = (size_t)n;
        resp.has_has_more = 1;
        resp.has_more = has_more;
        api_reply_msg(op->r, 200, &resp.base);
    }
    free(items);
    free(ptrs);
    free(op);
}

void
api_history(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const struct logic_config *c = &w->app->cfg;
    struct token_claims who;
    if (!api_auth_user(r, w, &who))
        return;
    uint64_t from, to, limit;
    if (!api_query_u64(r, "from", 0, &from) || !api_query_u64(r, "to", INT64_MAX, &to) ||
        !api_query_u64(r, "limit", (uint64_t)c->sync_default_limit, &limit))
        return;
    const char *order = http_req_query(r, "order");
    if (order == NULL || order[0] == '\0')
        order = "desc";
    if (strcmp(order, "asc") != 0 && strcmp(order, "desc") != 0) {
        http_reply_error(r, 400, "invalid_argument", "order must be asc or desc");
        return;
    }
    if (to > INT64_MAX)
        to = INT64_MAX;
    if (from > to) {
        http_reply_error(r, 400, "invalid_argument", "from must not be after to");
        return;
    }
    if (limit == 0 || limit > (uint64_t)c->sync_max_limit)
        limit = limit == 0 ? 1 : (uint64_t)c->sync_max_limit;
    struct history_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    op->r = r;
    op->w = w;
    op->limit = (uint32_t)limit;
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)who.app_id);
    pg_param_i64(&p, (int64_t)who.uid);
    pg_param_i64(&p, (int64_t)from);
    pg_param_i64(&p, (int64_t)to);
    pg_param_i32(&p, (int32_t)limit + 1);
    pg_param_i64(&p, logic_now_us());
    const char *stmt = order[0] == 'a' ? SQL_HISTORY_ASC : SQL_HISTORY_DESC;
    if (!pg_query(w->pg, stmt, &p, on_history_rows, op)) {
        http_reply_error(r, 503, "unavailable", "database unavailable, retry later");
        free(op);
    }
}

/* ---- POST /v1/read ---- */

static void
on_read_done(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct http_req *r = arg;
    if (err->kind != PG_OK) {
        api_reply_pg_error(r, err);
        return;
    }
    Mbox__ReadResponse resp = MBOX__READ_RESPONSE__INIT;
    resp.has_updated = 1;
    resp.updated = (uint32_t)strtoul(PQcmdTuples((PGresult *)res), NULL, 10);
    api_reply_msg(r, 200, &resp.base);
}

#define READ_MAX_IDS 1000

void
api_read(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    struct token_claims who;
    if (!api_auth_user(r, w, &who))
        return;
    ProtobufCMessage *m;
    if (!api_decode(r, &mbox__read_request__descriptor, &m))
        return;
    Mbox__ReadRequest *q = (Mbox__ReadRequest *)m;
    if (q->n_msg_ids + q->n_notice_ids == 0 || q->n_msg_ids > READ_MAX_IDS) {
        http_reply_error(r, 400, "invalid_argument", "msg_ids must list 1..%d ids", READ_MAX_IDS);
        api_msg_free(m);
        return;
    }
    char *arr = malloc(q->n_msg_ids * 21 + 3);
    if (arr == NULL) {
        api_msg_free(m);
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    size_t o = 0;
    arr[o++] = '{';
    for (size_t i = 0; i < q->n_msg_ids; i++)
        o += (size_t)sprintf(arr + o, "%s%" PRId64, i ? "," : "", (int64_t)q->msg_ids[i]);
    arr[o++] = '}';
    arr[o] = '\0';
    api_msg_free(m);
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)who.app_id);
    pg_param_i64(&p, (int64_t)who.uid);
    pg_param_text(&p, arr);
    bool sent = pg_query(w->pg, SQL_READ, &p, on_read_done, r);
    free(arr);
    if (!sent)
        http_reply_error(r, 503, "unavailable", "database unavailable, retry later");
}
