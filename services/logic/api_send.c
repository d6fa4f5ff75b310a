/*
 * api_send: the business-server side of private mailboxes on the internal
 * listener: POST /v1/tokens, POST /v1/messages, POST /v1/messages/recall.
 *
 * A send is one part per shard holding some of its mailboxes
 * (docs/design.md 3.6), each part atomic across its recipients: all their
 * rows are written or none. With one database (or all recipients on one
 * shard) that is the whole send. Parts go through the shard's group commit
 * queue (send_batch.h), which writes them in one statement and one commit
 * with the other sends queued beside them, invalidates the recipients'
 * sync hints (hint.h) and notifies them (notify.h). The parts of a send
 * spanning shards run in parallel; when one fails the sender gets 503 like
 * any send of unknown outcome, and its retry with the same msgkey completes
 * it (the parts that committed answer duplicates). When every part is
 * done, the sender gets the msg_ids in the order it named the recipients.
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
#include "live.h"
#include "logic.h"
#include "mbox.pb-c.h"
#include "notify.h"
#include "pg.h"
#include "send_batch.h"
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
    if (!token_mint(&w->live->keys, &cl, tok, sizeof(tok))) {
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

struct send_op;

/* The mailboxes of one send on one shard: one entry of its group commit queue. */
struct send_part {
    struct send_op *op;
    int shard;
    struct send_entry e; /* rows, msg_ids, dup: its own arrays, in uid order */
};

struct send_op {
    struct http_req *r;
    struct logic_worker *w;
    Mbox__SendRequest *req;
    struct send_row *rows; /* one per mailbox, sorted by uid */
    int nrows;
    uint64_t *order; /* mailboxes in reply order: recipients as given, then the sender */
    int norder;
    struct send_part *parts;
    int nparts;
    int pending; /* parts whose statement has not completed */
    int64_t now_us, expire_at;
    /* the first failure of a part (kind PG_OK: none), and whether a part
     * may have committed without an answer (timeout, lost connection) */
    enum pg_err_kind fail_kind;
    char fail_sqlstate[6];
    char fail_message[200];
    bool uncertain;
    /* results, by position in rows */
    uint64_t *msg_ids;
    bool *dup;
    int nfresh; /* mailboxes actually written */
};

static void
send_op_free(struct send_op *op)
{
    api_msg_free(&op->req->base);
    free(op->rows);
    free(op->order);
    for (int i = 0; i < op->nparts; i++) {
        free((void *)op->parts[i].e.rows);
        free(op->parts[i].e.msg_ids);
        free(op->parts[i].e.dup);
    }
    free(op->parts);
    free(op->msg_ids);
    free(op->dup);
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

/* A failed send: whatever failed, a part that committed needs the retry:
 * 503 for every unknown or partial outcome, as for one statement timing
 * out. (The hints of what may have committed are gone: send_batch.h.) */
static void
send_failed(struct send_op *op)
{
    struct pg_error e = {.kind = op->fail_kind, .message = op->fail_message};
    if (op->nfresh > 0 || op->nparts > 1 || op->uncertain)
        e.kind = PG_ERR_UNAVAILABLE;
    memcpy(e.sqlstate, op->fail_sqlstate, sizeof(e.sqlstate));
    api_reply_shard_error(op->w, op->r, &e);
    send_op_free(op);
}

/* Records a part's failure; the first one is what the sender is told. */
static void
send_part_failed(struct send_part *part, const struct pg_error *err)
{
    struct send_op *op = part->op;
    if (part->e.uncertain)
        op->uncertain = true;
    if (op->fail_kind == PG_OK || (err->kind != PG_ERR_QUERY && op->fail_kind == PG_ERR_QUERY)) {
        op->fail_kind = err->kind;
        memcpy(op->fail_sqlstate, err->sqlstate, sizeof(op->fail_sqlstate));
        snprintf(op->fail_message, sizeof(op->fail_message), "%s",
                 err->message ? err->message : "");
    }
    if (op->nparts > 1)
        log_warn("send_part_failed", "req=%s shard=%d kind=%d sqlstate=%s", http_req_id(op->r),
                 part->shard, (int)err->kind, err->sqlstate);
}

/* A part is done (its hints and notifies too); the last one answers. */
static void
on_part_done(struct send_entry *e, const struct pg_error *err)
{
    struct send_part *part = e->arg;
    struct send_op *op = part->op;
    if (err->kind != PG_OK) {
        send_part_failed(part, err);
    } else {
        for (int i = 0; i < e->nrows; i++) {
            int k = row_index(op, e->rows[i].uid);
            op->msg_ids[k] = e->msg_ids[i];
            op->dup[k] = e->dup[i];
            op->nfresh += !e->dup[i];
        }
    }
    if (--op->pending > 0)
        return;
    if (op->fail_kind == PG_OK)
        send_reply(op);
    else
        send_failed(op);
}

/* Queues every part; the last one to complete answers. */
static void
send_start(struct send_op *op)
{
    int n = op->nparts; /* op may be gone after the last submit */
    op->pending = n;
    for (int i = 0; i < n; i++)
        send_batch_submit(op->w, op->parts[i].shard, &op->parts[i].e);
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

/*
 * Splits the rows by shard into op->parts, each an entry of its shard's
 * group commit queue with its own rows (in uid order, so its header locks
 * are taken in order). False on OOM.
 */
static bool
send_plan_parts(struct send_op *op)
{
    struct logic *app = op->w->app;
    Mbox__SendRequest *q = op->req;
    int *shard = calloc((size_t)op->nrows + 1, sizeof(*shard));
    bool used[LOGIC_MAX_SHARDS] = {false};
    bool ok = shard != NULL;
    for (int i = 0; ok && i < op->nrows; i++) {
        shard[i] = logic_shard(app, q->app_id, op->rows[i].uid);
        if (!used[shard[i]])
            op->nparts++;
        used[shard[i]] = true;
    }
    op->parts = ok ? calloc((size_t)op->nparts, sizeof(*op->parts)) : NULL;
    ok = op->parts != NULL;
    int np = 0;
    for (int s = 0; ok && s < app->nshards; s++) {
        if (!used[s])
            continue;
        struct send_part *part = &op->parts[np++];
        part->op = op;
        part->shard = s;
        int n = 0;
        for (int i = 0; i < op->nrows; i++)
            n += shard[i] == s;
        struct send_row *rows = calloc((size_t)n, sizeof(*rows));
        part->e = (struct send_entry){
            .app_id = q->app_id,
            .from_uid = q->from_uid,
            .create_time = op->now_us,
            .expire_at = op->expire_at,
            .category = q->category,
            .type = q->type,
            .priority = q->priority,
            .business_type = q->business_type,
            .msgkey = q->msgkey,
            .content = q->content.data,
            .content_len = q->content.len,
            .rows = rows,
            .msg_ids = calloc((size_t)n, sizeof(uint64_t)),
            .dup = calloc((size_t)n, sizeof(bool)),
            .done = on_part_done,
            .arg = part,
        };
        ok = rows != NULL && part->e.msg_ids != NULL && part->e.dup != NULL;
        for (int i = 0; ok && i < op->nrows; i++) {
            if (shard[i] == s)
                rows[part->e.nrows++] = op->rows[i];
        }
    }
    if (!ok)
        op->nparts = np; /* what send_op_free must free */
    free(shard);
    return ok;
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
    if (!op->rows || !op->order || !op->msg_ids || !op->dup)
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
    return send_plan_parts(op);
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
    send_start(op);
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
        api_reply_shard_error(op->w, op->r, err);
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
    bool sent = api_query_shard(r, w, q->app_id, q->uid, SQL_RECALL, &p, on_recalled, op);
    api_msg_free(m);
    if (!sent) {
        free(op);
    }
}
