/*
 * api_send: the business-server side of private mailboxes on the internal
 * listener: POST /v1/tokens, POST /v1/messages, POST /v1/messages/recall.
 *
 * A send is one SQL statement (sql.c: SQL_SEND), so it is atomic across all
 * its recipients: all rows are written or none. After the commit the
 * recipients' sync hints are invalidated (hint.h), then they are notified
 * (notify.h), then the sender gets the msg_ids.
 *
 * A send whose outcome is unknown (query timeout, lost connection) answers
 * 503 and may still commit later, after any invalidation made then. So
 * every answer that names an earlier write (a msgkey duplicate, an already
 * recalled message) invalidates its mailboxes' hints again before it is
 * sent: once the sender holds any acknowledgement, the next sync of those
 * mailboxes reads PostgreSQL.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "api_io.h"
#include "hint.h"
#include "log.h"
#include "logic.h"
#include "mbox.pb-c.h"
#include "notify.h"
#include "pg.h"
#include "sql.h"
#include "token.h"

#define MSGKEY_MAX          128
#define TOKEN_TTL_DEFAULT_S 86400
#define TOKEN_TTL_MAX_S     (30 * 86400)
#define EXPIRE_MAX_S        (10LL * 365 * 86400)

/* ---- POST /v1/tokens ---- */

void
api_tokens(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    if (!api_auth_server(r, w))
        return;
    ProtobufCMessage *m;
    if (!api_decode(r, &mbox__token_request__descriptor, &m))
        return;
    Mbox__TokenRequest *req = (Mbox__TokenRequest *)m;
    if (!req->has_app_id || !req->has_uid) {
        http_reply_error(r, 400, "invalid_argument", "app_id and uid are required");
        goto out;
    }
    uint32_t ttl = req->has_ttl_s ? req->ttl_s : TOKEN_TTL_DEFAULT_S;
    if (ttl == 0 || ttl > TOKEN_TTL_MAX_S) {
        http_reply_error(r, 400, "invalid_argument", "ttl_s must be 1..%d", TOKEN_TTL_MAX_S);
        goto out;
    }
    struct token_claims cl = {
        .app_id = req->app_id,
        .uid = req->uid,
        .expires_at_us = logic_now_us() + (int64_t)ttl * 1000000,
        .guest = req->has_guest && req->guest,
    };
    char tok[TOKEN_MAX_LEN];
    if (!token_mint(&w->app->keys, &cl, tok, sizeof(tok))) {
        http_reply_error(r, 500, "internal", "cannot mint token (check token_key_id)");
        goto out;
    }
    Mbox__TokenResponse resp = MBOX__TOKEN_RESPONSE__INIT;
    resp.token = tok;
    resp.has_expires_at = 1;
    resp.expires_at = (uint64_t)cl.expires_at_us;
    api_reply_msg(r, 200, &resp.base);
out:
    api_msg_free(m);
}

/* ---- POST /v1/messages ---- */

struct send_row {
    uint64_t uid, to_uid, contacter;
};

struct send_op {
    struct http_req *r;
    struct logic_worker *w;
    Mbox__SendRequest *req;
    struct send_row *rows; /* one per mailbox, sorted by uid */
    int nrows;
    uint64_t *order; /* mailboxes in reply order: recipients as given, then the sender */
    int norder;
    uint64_t *uids; /* every mailbox (rows' uids): hints to invalidate */
    char *uids_txt, *to_txt, *contacter_txt;
    int64_t now_us, expire_at;
    int attempts;
    /* results, by position in rows */
    uint64_t *msg_ids;
    bool *dup;
    uint64_t *fresh;     /* mailboxes actually written (to invalidate and notify) */
    uint64_t *fresh_ids; /* their new msg_ids */
    int nfresh;
};

static void
send_op_free(struct send_op *op)
{
    api_msg_free(&op->req->base);
    free(op->rows);
    free(op->order);
    free(op->uids);
    free(op->uids_txt);
    free(op->to_txt);
    free(op->contacter_txt);
    free(op->msg_ids);
    free(op->dup);
    free(op->fresh);
    free(op->fresh_ids);
    free(op);
}

static int
cmp_row(const void *a, const void *b)
{
    uint64_t x = ((const struct send_row *)a)->uid, y = ((const struct send_row *)b)->uid;
    return x < y ? -1 : x > y;
}

/* Position of uid in the sorted rows, or -1. */
static int
row_index(const struct send_op *op, uint64_t uid)
{
    int lo = 0, hi = op->nrows - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (op->rows[mid].uid == uid)
            return mid;
        if (op->rows[mid].uid < uid)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

static void send_issue(struct send_op *op);

/* After hints and notifies: the reply, in request order. */
static void
send_reply(void *arg)
{
    struct send_op *op = arg;
    Mbox__SendResult *res = calloc((size_t)op->norder, sizeof(*res));
    Mbox__SendResult **ptrs = calloc((size_t)op->norder, sizeof(*ptrs));
    if (res == NULL || ptrs == NULL) {
        http_reply_error(op->r, 503, "unavailable", "out of memory (messages were stored)");
    } else {
        for (int i = 0; i < op->norder; i++) {
            int k = row_index(op, op->order[i]);
            mbox__send_result__init(&res[i]);
            res[i].has_uid = res[i].has_msg_id = res[i].has_duplicate = 1;
            res[i].uid = op->order[i];
            res[i].msg_id = op->msg_ids[k];
            res[i].duplicate = op->dup[k];
            ptrs[i] = &res[i];
        }
        Mbox__SendResponse resp = MBOX__SEND_RESPONSE__INIT;
        resp.n_results = (size_t)op->norder;
        resp.results = ptrs;
        api_reply_msg(op->r, 200, &resp.base);
    }
    free(res);
    free(ptrs);
    send_op_free(op);
}

static void
send_invalidated(void *arg)
{
    struct send_op *op = arg;
    notify_mailboxes(op->w, op->req->app_id, op->fresh, op->fresh_ids, op->nfresh);
    send_reply(op);
}

static void
on_sent(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct send_op *op = arg;
    if (err->kind != PG_OK) {
        /* 23505: a concurrent send with the same msgkey committed first; the
         * retry sees it as a duplicate. 40P01: retry once as well. */
        if (err->kind == PG_ERR_QUERY && op->attempts < 2 &&
            (strcmp(err->sqlstate, "23505") == 0 || strcmp(err->sqlstate, "40P01") == 0)) {
            send_issue(op);
            return;
        }
        if (err->kind == PG_ERR_TIMEOUT || err->kind == PG_ERR_UNAVAILABLE) {
            /* The statement may have committed before the connection was
             * lost: drop the recipients' hints so a sync goes to the database.
             * (It may also commit after this; a retry's duplicate answer
             * invalidates again.) */
            hint_invalidate(op->w, op->req->app_id, op->uids, op->nrows, NULL, NULL);
        }
        api_reply_pg_error(op->r, err);
        send_op_free(op);
        return;
    }
    int n = PQntuples(res);
    for (int i = 0; i < n; i++) {
        int k = row_index(op, (uint64_t)pg_get_i64(res, i, 0));
        if (k < 0)
            continue;
        op->msg_ids[k] = (uint64_t)pg_get_i64(res, i, 1);
        op->dup[k] = pg_get_bool(res, i, 2);
        if (!op->dup[k]) {
            op->fresh[op->nfresh] = op->rows[k].uid;
            op->fresh_ids[op->nfresh++] = op->msg_ids[k];
        }
    }
    /* Duplicates too: the first attempt may have committed after its own
     * invalidation (a timed-out statement is not cancelled). */
    hint_invalidate(op->w, op->req->app_id, op->uids, op->nrows, send_invalidated, op);
}

static void
send_issue(struct send_op *op)
{
    Mbox__SendRequest *q = op->req;
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)q->app_id);
    pg_param_text(&p, op->uids_txt);
    pg_param_text(&p, op->to_txt);
    pg_param_text(&p, op->contacter_txt);
    pg_param_i64(&p, (int64_t)q->from_uid);
    pg_param_i64(&p, op->now_us);
    pg_param_i64(&p, op->expire_at);
    pg_param_i32(&p, q->category);
    pg_param_i32(&p, q->type);
    pg_param_i32(&p, q->priority);
    pg_param_i32(&p, q->business_type);
    pg_param_text(&p, q->msgkey);
    pg_param_bytea(&p, q->content.data, q->content.len);
    op->attempts++;
    op->nfresh = 0;
    if (!api_query(op->r, op->w, SQL_SEND, &p, on_sent, op)) {
        send_op_free(op);
    }
}

/* Checks a send request; replies 400/413 and returns false when it is bad. */
static bool
send_validate(struct http_req *r, const struct logic_config *c, const Mbox__SendRequest *q)
{
    if (!q->has_app_id) {
        http_reply_error(r, 400, "invalid_argument", "app_id is required");
        return false;
    }
    if (q->n_to_uids == 0) {
        http_reply_error(r, 400, "invalid_argument", "to_uids must name at least one recipient");
        return false;
    }
    if ((int64_t)q->n_to_uids > c->max_recipients) {
        http_reply_error(r, 400, "invalid_argument", "to_uids has %zu recipients, at most %" PRId64,
                         q->n_to_uids, c->max_recipients);
        return false;
    }
    if (!q->has_content) {
        http_reply_error(r, 400, "invalid_argument", "content is required");
        return false;
    }
    if ((int64_t)q->content.len > c->max_content_bytes) {
        http_reply_error(r, 413, "too_large", "content is %zu bytes, at most %" PRId64,
                         q->content.len, c->max_content_bytes);
        return false;
    }
    if (q->msgkey != NULL && (q->msgkey[0] == '\0' || strlen(q->msgkey) > MSGKEY_MAX)) {
        http_reply_error(r, 400, "invalid_argument", "msgkey must be 1..%d bytes", MSGKEY_MAX);
        return false;
    }
    if (q->has_expire_s && (q->expire_s == 0 || (int64_t)q->expire_s > c->retention_s)) {
        /* Longer than retention would make cursors of old mailboxes reset forever. */
        http_reply_error(r, 400, "invalid_argument",
                         "expire_s must be 1..%" PRId64 " (retention_s)", c->retention_s);
        return false;
    }
    if (q->has_store_sender && q->store_sender && (!q->has_from_uid || q->from_uid == 0)) {
        http_reply_error(r, 400, "invalid_argument", "store_sender needs from_uid");
        return false;
    }
    return true;
}

/* Builds the mailbox rows: recipients (deduplicated) plus the sender's copy. */
static bool
send_plan(struct send_op *op)
{
    Mbox__SendRequest *q = op->req;
    bool sender = q->has_store_sender && q->store_sender;
    int cap = (int)q->n_to_uids + 1;
    op->rows = calloc((size_t)cap, sizeof(*op->rows));
    op->order = calloc((size_t)cap, sizeof(*op->order));
    op->msg_ids = calloc((size_t)cap, sizeof(*op->msg_ids));
    op->dup = calloc((size_t)cap, sizeof(*op->dup));
    op->fresh = calloc((size_t)cap, sizeof(*op->fresh));
    op->fresh_ids = calloc((size_t)cap, sizeof(*op->fresh_ids));
    if (!op->rows || !op->order || !op->msg_ids || !op->dup || !op->fresh || !op->fresh_ids)
        return false;
    for (size_t i = 0; i < q->n_to_uids; i++) {
        struct send_row *row = &op->rows[op->nrows++];
        row->uid = q->to_uids[i];
        row->to_uid = q->to_uids[i];
        /* The other party, from the mailbox owner's side. */
        row->contacter = q->has_contacter ? q->contacter : q->from_uid;
    }
    if (sender) {
        struct send_row *row = &op->rows[op->nrows++];
        row->uid = q->from_uid;
        row->to_uid = q->n_to_uids == 1 ? q->to_uids[0] : 0;
        row->contacter = q->has_contacter ? q->contacter : row->to_uid;
    }
    qsort(op->rows, (size_t)op->nrows, sizeof(op->rows[0]), cmp_row);
    /* A uid named twice (or the sender among the recipients) gets one row. */
    int kept = 0;
    for (int i = 0; i < op->nrows; i++) {
        if (kept > 0 && op->rows[kept - 1].uid == op->rows[i].uid)
            continue;
        op->rows[kept++] = op->rows[i];
    }
    op->nrows = kept;
    for (size_t i = 0; i < q->n_to_uids; i++) {
        bool seen = false;
        for (int j = 0; j < op->norder && !seen; j++)
            seen = op->order[j] == q->to_uids[i];
        if (!seen && op->norder < (int)q->n_to_uids) {
            /* Linear dedupe is fine up to max_recipients; most sends have one. */
            op->order[op->norder++] = q->to_uids[i];
        }
    }
    if (sender && row_index(op, q->from_uid) >= 0) {
        bool seen = false;
        for (int j = 0; j < op->norder && !seen; j++)
            seen = op->order[j] == q->from_uid;
        if (!seen)
            op->order[op->norder++] = q->from_uid;
    }
    uint64_t *col = calloc((size_t)op->nrows + 1, sizeof(*col));
    op->uids = calloc((size_t)op->nrows + 1, sizeof(*op->uids));
    if (col == NULL || op->uids == NULL) {
        free(col);
        return false;
    }
    for (int i = 0; i < op->nrows; i++)
        op->uids[i] = op->rows[i].uid;
    op->uids_txt = api_int8_array(op->uids, (size_t)op->nrows);
    for (int i = 0; i < op->nrows; i++)
        col[i] = op->rows[i].to_uid;
    op->to_txt = api_int8_array(col, (size_t)op->nrows);
    for (int i = 0; i < op->nrows; i++)
        col[i] = op->rows[i].contacter;
    op->contacter_txt = api_int8_array(col, (size_t)op->nrows);
    free(col);
    return op->uids_txt && op->to_txt && op->contacter_txt;
}

void
api_send(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    if (!api_auth_server(r, w))
        return;
    ProtobufCMessage *m;
    if (!api_decode(r, &mbox__send_request__descriptor, &m))
        return;
    Mbox__SendRequest *q = (Mbox__SendRequest *)m;
    if (!send_validate(r, &w->app->cfg, q)) {
        api_msg_free(m);
        return;
    }
    struct send_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        api_msg_free(m);
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    op->r = r;
    op->w = w;
    op->req = q;
    op->now_us = logic_now_us();
    int64_t expire_s = q->has_expire_s ? (int64_t)q->expire_s : w->app->cfg.default_expire_s;
    op->expire_at = op->now_us + expire_s * 1000000;
    if (!send_plan(op)) {
        http_reply_error(r, 503, "unavailable", "out of memory");
        send_op_free(op);
        return;
    }
    send_issue(op);
}

/* ---- POST /v1/messages/recall ---- */

struct recall_op {
    struct http_req *r;
    struct logic_worker *w;
    uint64_t app_id, uid;
    uint64_t new_id, target;
};

/* The reply: msg_id is the recall row (absent when retention deleted it). */
static void
recall_answer(void *arg)
{
    struct recall_op *op = arg;
    Mbox__RecallResponse resp = MBOX__RECALL_RESPONSE__INIT;
    resp.has_msg_id = op->new_id != 0;
    resp.has_recalled_msg_id = 1;
    resp.msg_id = op->new_id;
    resp.recalled_msg_id = op->target;
    api_reply_msg(op->r, 200, &resp.base);
    free(op);
}

/* A new recall row: notify the mailbox, then reply. */
static void
recall_reply(void *arg)
{
    struct recall_op *op = arg;
    uint64_t one = op->uid;
    notify_mailboxes(op->w, op->app_id, &one, &op->new_id, 1);
    recall_answer(op);
}

static void
on_recalled(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct recall_op *op = arg;
    if (err->kind != PG_OK) {
        if (err->kind == PG_ERR_TIMEOUT || err->kind == PG_ERR_UNAVAILABLE)
            hint_invalidate(op->w, op->app_id, &op->uid, 1, NULL, NULL); /* may have committed */
        api_reply_pg_error(op->r, err);
        free(op);
        return;
    }
    if (pg_is_null(res, 0, 0)) {
        http_reply_error(op->r, 404, "not_found", "no such message in mailbox %" PRIu64, op->uid);
        free(op);
        return;
    }
    op->target = (uint64_t)pg_get_i64(res, 0, 0);
    bool was_recalled = pg_get_bool(res, 0, 4);
    if (pg_is_null(res, 0, 1) && pg_is_null(res, 0, 2) && !was_recalled) {
        /* Another recall of it is committing right now. */
        http_reply_error(op->r, 409, "conflict", "message is being recalled; retry");
        free(op);
        return;
    }
    if (pg_is_null(res, 0, 1)) {
        /* Already recalled: answer with the earlier recall (idempotent
         * retry), whose row retention may have deleted (then no msg_id).
         * The earlier attempt may have committed after its invalidation
         * (a timeout): invalidate again before answering. */
        op->new_id = pg_is_null(res, 0, 2) ? 0 : (uint64_t)pg_get_i64(res, 0, 2);
        hint_invalidate(op->w, op->app_id, &op->uid, 1, recall_answer, op);
        return;
    }
    op->new_id = (uint64_t)pg_get_i64(res, 0, 1);
    hint_invalidate(op->w, op->app_id, &op->uid, 1, recall_reply, op);
}

void
api_recall(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    if (!api_auth_server(r, w))
        return;
    ProtobufCMessage *m;
    if (!api_decode(r, &mbox__recall_request__descriptor, &m))
        return;
    Mbox__RecallRequest *q = (Mbox__RecallRequest *)m;
    bool by_id = q->has_msg_id && q->msg_id != 0;
    if (!q->has_app_id || !q->has_uid || by_id == (q->msgkey != NULL)) {
        http_reply_error(r, 400, "invalid_argument",
                         "app_id, uid and exactly one of msg_id or msgkey are required");
        api_msg_free(m);
        return;
    }
    struct recall_op *op = calloc(1, sizeof(*op));
    if (op == NULL) {
        api_msg_free(m);
        http_reply_error(r, 503, "unavailable", "out of memory");
        return;
    }
    op->r = r;
    op->w = w;
    op->app_id = q->app_id;
    op->uid = q->uid;
    int64_t now = logic_now_us();
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)q->app_id);
    pg_param_i64(&p, (int64_t)q->uid);
    pg_param_i64(&p, by_id ? (int64_t)q->msg_id : 0);
    pg_param_text(&p, q->msgkey ? q->msgkey : "");
    pg_param_i64(&p, now);
    pg_param_i64(&p, now + w->app->cfg.default_expire_s * 1000000);
    bool sent = api_query(r, w, SQL_RECALL, &p, on_recalled, op);
    api_msg_free(m);
    if (!sent) {
        free(op);
    }
}
