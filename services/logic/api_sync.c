/*
 * api_sync: the SDK's pulls on the SDK listener: POST /v1/sync,
 * GET /v1/history, POST /v1/read (docs/design.md sections 4 and 5.2).
 *
 * Sync, private side: rows with msg_id > cursor.p, ascending, at most
 * limit; the cursor moves only over what is returned (has_more says there
 * is more). A sync with nothing new is answered from the Redis hint
 * without PostgreSQL (hint.h explains why that cannot lose a message).
 *
 * Public side: notices with seq > cursor.g that the user sees, evaluated
 * with the client's attributes (platform, core level, guest). The cursor
 * keeps those attributes; a sync whose attributes differ also returns the
 * notices with seq <= g it gained (pub_select_gained), once.
 *
 * What a user cannot see in a sync does not exist for them anywhere on
 * this listener: read marks and hide accept only notices visible to the
 * asking client now (viewer_sees), the rest is treated like an unknown id.
 */
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "api.h"
#include "api_io.h"
#include "clientver.h"
#include "cursor.h"
#include "hint.h"
#include "items.h"
#include "log.h"
#include "logic.h"
#include "mbox.pb-c.h"
#include "metrics.h"
#include "pg.h"
#include "pubcache.h"
#include "pubfilter.h"
#include "sql.h"

/*
 * The public side comes from this worker's cache snapshot (pubcache.h).
 * A request holds a reference to the snapshot it started with, so the
 * notices it points at live until it replies even if the poller publishes
 * a newer snapshot meanwhile.
 */
struct pull_op {
    struct pull_op *next_spare; /* in w->pull_spares while unused */
    struct http_req *r;
    struct logic_worker *w;
    struct token_claims who;
    struct pub_snapshot *snap; /* referenced */
    bool history;
    /* sync */
    struct cursor cur;
    struct cursor_attrs attrs; /* this request's client attributes */
    bool attrs_done;           /* the public side was evaluated with attrs */
    struct hint_read_op hint_op;
    struct hint_read hint;
    uint64_t new_g;
    bool pub_truncated;
    /* history */
    uint64_t from, to;
    bool asc;
    uint32_t limit;
    /* public items selected, and the user's state of them */
    struct pub_item *pub;
    size_t npub;
    bool *hidden, *read;
};

/* Items of a reply that fit on the stack of pull_reply. */
#define PULL_STACK_ITEMS 8

/*
 * Pull states are kept per worker for reuse: a sync would otherwise
 * allocate and free one each time. Only the worker's own thread touches
 * its list. Under AddressSanitizer each one is freed instead, so a use
 * after the reply is still caught.
 */
#if defined(__SANITIZE_ADDRESS__)
#define PULL_SPARES_MAX 0
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define PULL_SPARES_MAX 0
#endif
#endif
#ifndef PULL_SPARES_MAX
#define PULL_SPARES_MAX 64
#endif

static void
pull_free(struct pull_op *op)
{
    struct logic_worker *w = op->w;
    pubsnap_unref(op->snap);
    free(op->pub);
    free(op->hidden);
    free(op->read);
    if (w->npull_spares < PULL_SPARES_MAX) {
        op->next_spare = w->pull_spares;
        w->pull_spares = op;
        w->npull_spares++;
        return;
    }
    free(op);
}

void
api_pull_spares_free(struct logic_worker *w)
{
    struct pull_op *op;
    while ((op = w->pull_spares) != NULL) {
        w->pull_spares = op->next_spare;
        free(op);
    }
    w->npull_spares = 0;
}

/* Starts a pull: auth, a reference to the snapshot. */
static struct pull_op *
pull_new(struct http_req *r, struct logic_worker *w)
{
    struct pull_op *op = w->pull_spares;
    if (op != NULL) {
        w->pull_spares = op->next_spare;
        w->npull_spares--;
        memset(op, 0, sizeof(*op));
    } else {
        op = calloc(1, sizeof(*op));
        if (op == NULL) {
            http_reply_error(r, 503, "unavailable", "out of memory");
            return NULL;
        }
    }
    op->r = r;
    op->w = w;
    if (!api_auth_user(r, w, &op->who)) {
        pull_free(op);
        return NULL;
    }
    op->snap = w->snap;
    if (op->snap != NULL)
        __atomic_add_fetch(&op->snap->refs, 1, __ATOMIC_ACQ_REL);
    return op;
}

/* What the client says about itself (headers, User-Agent): lib/clientver.h. */
static void
client_version(struct http_req *r, struct clientver *cv)
{
    clientver_parse(cv, http_req_header(r, "platform"), http_req_header(r, "app_version"),
                    http_req_header(r, "core_level"), http_req_header(r, "User-Agent"));
}

/* The attributes targeting depends on, in the form a cursor keeps them. */
static void
client_attrs(const struct clientver *cv, const struct token_claims *who, struct cursor_attrs *a)
{
    a->core_level = cv->has_core_level ? cv->core_level : 0;
    a->platform_hash = pub_platform_hash(cv->platform);
    a->guest = who->guest;
}

/*
 * The viewer of the public side: the user and what the client says about
 * itself. v points into *cv: both live in the handler's frame, and the
 * public side is selected before the handler returns.
 */
static void
viewer_init(struct pub_viewer *v, const struct pub_snapshot *snap, const struct token_claims *who,
            const struct clientver *cv)
{
    memset(v, 0, sizeof(*v));
    v->app_id = who->app_id;
    v->uid = who->uid;
    v->guest = who->guest;
    v->platform = cv->platform;
    v->core_level = cv->has_core_level ? cv->core_level : 0;
    v->whitelisted = pubsnap_whitelisted(snap, who->app_id, who->uid);
}

/* The viewer of a history, read or hide request: this user, this request's client. */
static void
request_viewer(struct http_req *r, const struct pub_snapshot *snap, const struct token_claims *who,
               struct pub_viewer *v, struct clientver *cv)
{
    client_version(r, cv);
    viewer_init(v, snap, who, cv);
}

/* The same user with the attributes a cursor kept (platform known only by its hash). */
static void
viewer_from_attrs(struct pub_viewer *old, const struct pub_viewer *v, const struct cursor_attrs *a)
{
    *old = *v;
    old->platform = NULL;
    old->platform_hash = a->platform_hash;
    old->core_level = a->core_level;
    old->guest = a->guest;
}

/* Fills an Item for a public notice or tombstone. */
static void
item_from_pub(Mbox__Item *it, const struct pub_item *p, bool is_read)
{
    const struct pub_notice *n = p->n;
    mbox__item__init(it);
    it->has_notice_id = it->has_msg_id = 1;
    it->notice_id = n->notice_id;
    it->msg_id = n->msg_id;
    if (p->kind == PUB_ITEM_RETRACT) {
        it->kind = "retract";
        return;
    }
    it->kind = "notice";
    it->has_version = 1;
    it->version = n->version;
    it->title = n->title;
    it->has_content = 1;
    it->content.data = n->content;
    it->content.len = n->content_len;
    it->has_category = it->has_type = it->has_priority = it->has_business_type = 1;
    it->category = n->category;
    it->type = n->type;
    it->priority = n->priority;
    it->business_type = n->business_type;
    it->has_expire_at = 1;
    it->expire_at = (uint64_t)n->expire_at;
    it->has_is_read = 1;
    it->is_read = is_read;
}

static int
cmp_item_asc(const void *a, const void *b)
{
    uint64_t x = (*(Mbox__Item *const *)a)->msg_id, y = (*(Mbox__Item *const *)b)->msg_id;
    return x < y ? -1 : x > y;
}

static int
cmp_item_desc(const void *a, const void *b)
{
    return -cmp_item_asc(a, b);
}

/*
 * Builds and sends the reply from the private rows (res may be NULL) and
 * the selected public items, merged in msg_id order.
 */
static void
pull_reply(struct pull_op *op, const PGresult *res, int nrows, bool priv_more)
{
    /* A short page (every empty sync) is built on the stack. */
    Mbox__Item items_local[PULL_STACK_ITEMS];
    Mbox__Item *ptrs_local[PULL_STACK_ITEMS];
    size_t total = (size_t)nrows + op->npub;
    Mbox__Item *items = items_local;
    Mbox__Item **ptrs = ptrs_local;
    if (total > PULL_STACK_ITEMS) {
        items = calloc(total, sizeof(*items));
        ptrs = calloc(total, sizeof(*ptrs));
        if (items == NULL || ptrs == NULL) {
            http_reply_error(op->r, 503, "unavailable", "out of memory");
            goto out;
        }
    }
    if (res != NULL && nrows > 0)
        items_from_rows(res, 0, nrows, items, ptrs);
    uint64_t last_private = nrows > 0 ? ptrs[nrows - 1]->msg_id : 0;
    size_t n = (size_t)nrows;
    for (size_t i = 0; i < op->npub; i++) {
        if (op->hidden != NULL && op->hidden[i])
            continue;
        item_from_pub(&items[n], &op->pub[i], op->read != NULL && op->read[i]);
        ptrs[n] = &items[n];
        n++;
    }
    qsort(ptrs, n, sizeof(ptrs[0]), op->history && !op->asc ? cmp_item_desc : cmp_item_asc);
    if (op->history && n > op->limit) {
        priv_more = true; /* what is cut off is more */
        n = op->limit;
    }
    if (op->history) {
        Mbox__HistoryResponse resp = MBOX__HISTORY_RESPONSE__INIT;
        resp.items = ptrs;
        resp.n_items = n;
        resp.has_has_more = 1;
        resp.has_more = priv_more || op->pub_truncated;
        api_reply_msg(op->r, 200, &resp.base);
    } else {
        struct cursor next = op->cur;
        if (nrows > 0)
            next.p = last_private;
        next.g = op->new_g;
        if (op->attrs_done) {
            next.has_attrs = true;
            next.a = op->attrs;
        }
        char cbuf[CURSOR_STR_LEN];
        cursor_encode(&next, cbuf);
        Mbox__SyncResponse resp = MBOX__SYNC_RESPONSE__INIT;
        resp.items = ptrs;
        resp.n_items = n;
        resp.cursor = cbuf;
        resp.has_has_more = resp.has_reset = 1;
        resp.has_more = priv_more || op->pub_truncated;
        resp.reset = false;
        api_reply_msg(op->r, 200, &resp.base);
    }
    /* Reach: the notice items the reply held (a page cut leaves some
     * out), counted after the reply, off the response path. */
    for (size_t i = 0; i < n; i++) {
        if (strcmp(ptrs[i]->kind, "notice") == 0)
            api_notice_count_reach(op->w, ptrs[i]->notice_id, op->who.app_id, op->who.uid);
    }
out:
    if (items != items_local)
        free(items);
    if (ptrs != ptrs_local)
        free(ptrs);
    pull_free(op);
}

/* ---- private side ---- */

static void
on_private_rows(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct pull_op *op = arg;
    if (err->kind != PG_OK) {
        api_reply_shard_error(op->w, op->r, err);
        pull_free(op);
        return;
    }
    int rows = PQntuples(res);
    if (op->history) {
        uint32_t cap = op->limit;
        bool more = rows > (int)cap;
        pull_reply(op, res, more ? (int)cap : rows, more);
        return;
    }
    uint64_t last = rows > 0 ? (uint64_t)pg_get_i64(res, 0, 0) : 0;
    /* One row with a NULL msg_id means the mailbox has nothing after p. */
    int n = (rows == 1 && pg_is_null(res, 0, 1)) ? 0 : rows;
    uint32_t cap = op->limit - (uint32_t)op->npub;
    bool more = n > (int)cap;
    if (more)
        n = (int)cap;
    /* The header's last_msg_id is from the same snapshot as the rows. */
    hint_set(op->w, op->who.app_id, op->who.uid, &op->hint, last);
    pull_reply(op, res, n, more);
}

static void
query_private(struct pull_op *op)
{
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)op->who.app_id);
    pg_param_i64(&p, (int64_t)op->who.uid);
    const char *stmt;
    if (op->history) {
        pg_param_i64(&p, (int64_t)op->from);
        pg_param_i64(&p, (int64_t)op->to);
        pg_param_i32(&p, (int32_t)op->limit + 1);
        pg_param_i64(&p, logic_now_us());
        stmt = op->asc ? SQL_HISTORY_ASC : SQL_HISTORY_DESC;
    } else {
        pg_param_i64(&p, (int64_t)op->cur.p);
        pg_param_i32(&p, (int32_t)(op->limit - op->npub) + 1);
        pg_param_i64(&p, logic_now_us());
        stmt = SQL_SYNC;
    }
    if (!api_query_shard(op->r, op->w, op->who.app_id, op->who.uid, stmt, &p, on_private_rows,
                         op)) {
        pull_free(op);
    }
}

/* Whether the private side must be read (sync: not when the hint says empty). */
static void
after_public(struct pull_op *op)
{
    bool private_empty =
        !op->history && op->hint.usable && op->hint.has_m && op->hint.m <= op->cur.p;
    if (!op->history && (private_empty || op->npub >= op->limit)) {
        /* npub == limit: the private side waits for the next call (has_more). */
        bool more = !private_empty && op->npub >= op->limit;
        pull_reply(op, NULL, 0, more);
        return;
    }
    query_private(op);
}

static void
on_user_state(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct pull_op *op = arg;
    if (err->kind == PG_ERR_UNAVAILABLE || err->kind == PG_ERR_TIMEOUT) {
        /* The cache keeps serving while PostgreSQL is away: deliver the
         * notices without the user's read/hidden marks (a hidden notice can
         * reappear; nothing is lost). The private side then decides, from
         * the hint or with a 503 of its own. */
        metric_inc(metrics_counter(op->w->app->metrics, "mbox_notice_state_degraded_total",
                                   "syncs that served notices without the user's read/hidden "
                                   "marks because PostgreSQL was unavailable",
                                   NULL));
        after_public(op);
        return;
    }
    if (err->kind != PG_OK) {
        api_reply_shard_error(op->w, op->r, err);
        pull_free(op);
        return;
    }
    for (int i = 0; i < PQntuples(res); i++) {
        uint64_t id = (uint64_t)pg_get_i64(res, i, 0);
        for (size_t k = 0; k < op->npub; k++) {
            if (op->pub[k].n->notice_id == id) {
                op->read[k] = pg_get_bool(res, i, 1);
                op->hidden[k] = pg_get_bool(res, i, 2);
            }
        }
    }
    after_public(op);
}

/* Reads the user's read/hidden state of the selected notices, if any. */
static void
public_state(struct pull_op *op)
{
    if (op->npub == 0) {
        after_public(op);
        return;
    }
    op->hidden = calloc(op->npub, sizeof(bool));
    op->read = calloc(op->npub, sizeof(bool));
    uint64_t *ids = calloc(op->npub, sizeof(uint64_t));
    for (size_t i = 0; ids != NULL && i < op->npub; i++)
        ids[i] = op->pub[i].n->notice_id;
    char *arr = ids ? api_int8_array(ids, op->npub) : NULL;
    free(ids);
    if (op->hidden == NULL || op->read == NULL || arr == NULL) {
        free(arr);
        http_reply_error(op->r, 503, "unavailable", "out of memory");
        pull_free(op);
        return;
    }
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)op->who.app_id);
    pg_param_i64(&p, (int64_t)op->who.uid);
    pg_param_text(&p, arr);
    /* The user's notice marks are private rows: on the user's shard. */
    bool sent = pg_query(logic_shard_pool(op->w, op->who.app_id, op->who.uid),
                         SQL_NOTICE_USER_STATE, &p, on_user_state, op);
    free(arr);
    if (!sent) {
        /* No connection: the same degraded path as a failed query. */
        struct pg_error down = {.kind = PG_ERR_UNAVAILABLE, .message = "no connection"};
        on_user_state(NULL, &down, op);
    }
}

/* ---- POST /v1/sync ---- */

/*
 * Selects the public side of a sync into op->pub: the notices a changed
 * client gained below g (when its attributes differ from the cursor's),
 * then the notices after g. Sets new_g, pub_truncated and whether the
 * reply's cursor carries this request's attributes. False on OOM.
 *
 * The empty-sync hot path (same attributes, nothing after g) allocates
 * nothing: it parses the client headers and compares 13 bytes.
 */
static bool
sync_public(struct pull_op *op, int64_t now)
{
    const struct pub_snapshot *snap = op->snap;
    const struct cursor *cur = &op->cur;
    struct clientver cv;
    client_version(op->r, &cv);
    client_attrs(&cv, &op->who, &op->attrs);
    op->new_g = cur->g;
    /*
     * Gained notices are looked for only with a snapshot that has
     * everything up to g (seqs commit in order, 6.1): a cache behind the
     * cursor keeps the cursor's attributes, so a later sync on a fresher
     * cache still does it. A cursor without attributes ("" or version 1)
     * takes this request's: nothing is known about the earlier ones.
     */
    bool changed = cur->has_attrs && !cursor_attrs_equal(&cur->a, &op->attrs);
    bool rescan = changed && cur->g > 0 && snap != NULL && snap->max_seq >= cur->g;
    op->attrs_done = !changed || rescan || cur->g == 0;
    if (!rescan && (snap == NULL || snap->max_seq <= cur->g))
        return true; /* nothing public after g (the common case): nothing to select */
    struct pub_viewer v;
    viewer_init(&v, snap, &op->who, &cv);
    size_t cap = op->limit;
    op->pub = calloc(cap, sizeof(*op->pub));
    if (op->pub == NULL)
        return false;
    if (rescan) {
        struct pub_viewer old;
        viewer_from_attrs(&old, &v, &cur->a);
        bool more;
        op->npub = pub_select_gained((const struct pub_notice *const *)snap->notices, snap->count,
                                     &v, &old, cur->g, now, op->pub, cap, &more);
        if (more) {
            /* More gained than fit: g moves back to the last one returned and
             * the public log after it is walked again with the new
             * attributes (what the client had there may come again). */
            op->new_g = op->pub[op->npub - 1].n->seq;
            op->pub_truncated = true;
            return true;
        }
    }
    uint64_t g;
    bool truncated;
    op->npub +=
        pub_select((const struct pub_notice *const *)snap->notices, snap->count, snap->max_seq, &v,
                   cur->g, now, op->pub + op->npub, cap - op->npub, &g, &truncated);
    op->new_g = g;
    op->pub_truncated = truncated;
    return true;
}

static void
on_sync_hint(const struct hint_read *h, void *arg)
{
    struct pull_op *op = arg;
    op->hint = *h;
    bool private_empty = h->usable && h->has_m && h->m <= op->cur.p;
    metric_inc(private_empty ? op->w->m_sync_hint : op->w->m_sync_db);
    public_state(op);
}

void
api_sync(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const struct logic_config *c = &w->app->cfg;
    struct pull_op *op = pull_new(r, w);
    if (op == NULL)
        return;
    ProtobufCMessage *m;
    if (!api_decode(r, &mbox__sync_request__descriptor, &m)) {
        pull_free(op);
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
        pull_free(op);
        return;
    }
    /* Another epoch (data restored or wiped), or older than retention: the
     * rows it points after may be gone; the client reloads from scratch. */
    int64_t now = logic_now_us();
    int64_t horizon = now - c->retention_s * 1000000;
    if (op->cur.epoch != (uint32_t)c->epoch || (op->cur.p != 0 && (int64_t)op->cur.p < horizon)) {
        struct cursor fresh = {.epoch = (uint32_t)c->epoch};
        char cbuf[CURSOR_STR_LEN];
        cursor_encode(&fresh, cbuf);
        Mbox__SyncResponse resp = MBOX__SYNC_RESPONSE__INIT;
        resp.cursor = cbuf;
        resp.has_has_more = resp.has_reset = 1;
        resp.reset = true;
        api_reply_msg(r, 200, &resp.base);
        pull_free(op);
        return;
    }
    /* Public side first: it decides how much room the private side gets. */
    if (!sync_public(op, now)) {
        http_reply_error(r, 503, "unavailable", "out of memory");
        pull_free(op);
        return;
    }
    hint_read(w, op->who.app_id, op->who.uid, &op->hint_op, on_sync_hint, op);
}

/* ---- GET /v1/history?from=&to=&order=asc|desc&limit= ---- */

static int
cmp_pub_asc(const void *a, const void *b)
{
    uint64_t x = ((const struct pub_item *)a)->n->msg_id,
             y = ((const struct pub_item *)b)->n->msg_id;
    return x < y ? -1 : x > y;
}

static int
cmp_pub_desc(const void *a, const void *b)
{
    return -cmp_pub_asc(a, b);
}

void
api_history(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const struct logic_config *c = &w->app->cfg;
    struct pull_op *op = pull_new(r, w);
    if (op == NULL)
        return;
    uint64_t from, to, limit;
    if (!api_query_u64(r, "from", 0, &from) || !api_query_u64(r, "to", INT64_MAX, &to) ||
        !api_query_u64(r, "limit", (uint64_t)c->sync_default_limit, &limit)) {
        pull_free(op);
        return;
    }
    const char *order = http_req_query(r, "order");
    if (order == NULL || order[0] == '\0')
        order = "desc";
    if (strcmp(order, "asc") != 0 && strcmp(order, "desc") != 0) {
        http_reply_error(r, 400, "invalid_argument", "order must be asc or desc");
        pull_free(op);
        return;
    }
    if (to > INT64_MAX)
        to = INT64_MAX;
    if (from > to) {
        http_reply_error(r, 400, "invalid_argument", "from must not be after to");
        pull_free(op);
        return;
    }
    if (limit == 0 || limit > (uint64_t)c->sync_max_limit)
        limit = limit == 0 ? 1 : (uint64_t)c->sync_max_limit;
    op->history = true;
    op->from = from;
    op->to = to;
    op->asc = order[0] == 'a';
    op->limit = (uint32_t)limit;
    /* Currently visible notices with msg_id in range. The snapshot is in seq
     * order, so take them all and order them by msg_id as asked. */
    int64_t now = logic_now_us();
    struct pub_viewer v;
    struct clientver cv;
    request_viewer(r, op->snap, &op->who, &v, &cv);
    size_t count = op->snap != NULL ? op->snap->count : 0;
    op->pub = calloc(count + 1, sizeof(*op->pub));
    if (op->pub == NULL) {
        http_reply_error(r, 503, "unavailable", "out of memory");
        pull_free(op);
        return;
    }
    for (size_t i = 0; i < count; i++) {
        const struct pub_notice *n = op->snap->notices[i];
        if (n->msg_id < from || n->msg_id > to || !pub_visible(n, &v, now))
            continue;
        op->pub[op->npub].n = n;
        op->pub[op->npub].kind = PUB_ITEM_NOTICE;
        op->npub++;
    }
    /* No cut here: the user's hidden notices are dropped first and the
     * merged page is cut to limit in pull_reply, so paging by msg_id never
     * skips a notice. */
    qsort(op->pub, op->npub, sizeof(op->pub[0]), op->asc ? cmp_pub_asc : cmp_pub_desc);
    public_state(op);
}

/* ---- what a user may mark: read and hide ---- */

/*
 * Whether notice id is visible to this request's client now, by the rule
 * a sync applies (pub_visible: app, state and whitelist, activation,
 * validity window, targeting; this logicd's snapshot). Read marks and hide
 * treat any other id exactly like one that does not exist, so neither can
 * tell a user that a draft, a deleted or stopped notice, a gray release
 * they are not on, or a notice for other clients exists. The user's own
 * hidden flag does not count: they know that notice.
 */
static bool
viewer_sees(const struct pub_snapshot *snap, const struct pub_viewer *v, uint64_t id, int64_t now)
{
    const struct pub_notice *n = pubsnap_find(snap, id);
    return n != NULL && pub_visible(n, v, now);
}

/* ---- POST /v1/notices/{id}/hide ---- */

static void
on_marked(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct http_req *r = arg;
    if (err->kind != PG_OK) {
        api_reply_shard_error(http_req_data(r), r, err);
        return;
    }
    http_reply(r, 204, "application/json", "", 0);
}

void
api_notice_hide(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    struct token_claims who;
    uint64_t id;
    if (!api_auth_user(r, w, &who) || !api_param_u64(r, "id", &id))
        return;
    struct pub_viewer v;
    struct clientver cv;
    request_viewer(r, w->snap, &who, &v, &cv);
    if (!viewer_sees(w->snap, &v, id, logic_now_us())) {
        http_reply_error(r, 404, "not_found", "no notice %" PRIu64 " for this app", id);
        return;
    }
    char arr[32];
    snprintf(arr, sizeof(arr), "{%" PRId64 "}", (int64_t)id);
    struct pg_params p;
    pg_params_init(&p);
    pg_param_i64(&p, (int64_t)who.app_id);
    pg_param_i64(&p, (int64_t)who.uid);
    pg_param_text(&p, arr);
    pg_param_bool(&p, false);
    pg_param_bool(&p, true);
    http_req_set_data(r, w); /* for on_marked */
    api_query_shard(r, w, who.app_id, who.uid, SQL_NOTICE_USER_MARK, &p, on_marked, r);
}

/* ---- POST /v1/read: private msg_ids and notice_ids ---- */

static void
on_read_done(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct http_req *r = arg;
    if (err->kind != PG_OK) {
        api_reply_shard_error(http_req_data(r), r, err);
        return;
    }
    Mbox__ReadResponse resp = MBOX__READ_RESPONSE__INIT;
    resp.has_updated = 1;
    resp.updated = (uint32_t)(pg_get_i64(res, 0, 0) + pg_get_i64(res, 0, 1));
    api_reply_msg(r, 200, &resp.base);
}

#define READ_MAX_IDS 1000

void
api_read(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    struct token_claims who;
    ProtobufCMessage *m = NULL;
    if (!api_auth_user(r, w, &who) || !api_decode(r, &mbox__read_request__descriptor, &m))
        return;
    Mbox__ReadRequest *q = (Mbox__ReadRequest *)m;
    if (q->n_msg_ids + q->n_notice_ids == 0 || q->n_msg_ids > READ_MAX_IDS ||
        q->n_notice_ids > READ_MAX_IDS) {
        http_reply_error(r, 400, "invalid_argument",
                         "msg_ids and notice_ids: at least one id, at most %d of each",
                         READ_MAX_IDS);
        api_msg_free(m);
        return;
    }
    /* Only notices this client sees count; the others are unknown ids. */
    if (q->n_notice_ids > 0) {
        struct pub_viewer v;
        struct clientver cv;
        request_viewer(r, w->snap, &who, &v, &cv);
        int64_t now = logic_now_us();
        size_t kept = 0;
        for (size_t i = 0; i < q->n_notice_ids; i++) {
            if (viewer_sees(w->snap, &v, q->notice_ids[i], now))
                q->notice_ids[kept++] = q->notice_ids[i];
        }
        q->n_notice_ids = kept;
    }
    char *msgs = api_int8_array(q->msg_ids, q->n_msg_ids);
    char *notices = api_int8_array(q->notice_ids, q->n_notice_ids);
    api_msg_free(m);
    if (msgs != NULL && notices != NULL) {
        struct pg_params p;
        pg_params_init(&p);
        pg_param_i64(&p, (int64_t)who.app_id);
        pg_param_i64(&p, (int64_t)who.uid);
        pg_param_text(&p, msgs);
        pg_param_text(&p, notices);
        /* On a shard of its own the notices are in another database than
         * the marks: the ids were checked against the public cache above. */
        bool apart = logic_shard_pool(w, who.app_id, who.uid) != w->pg;
        http_req_set_data(r, w); /* for on_read_done */
        api_query_shard(r, w, who.app_id, who.uid, apart ? SQL_READ_SHARD : SQL_READ, &p,
                        on_read_done, r);
    } else {
        http_reply_error(r, 503, "unavailable", "out of memory");
    }
    free(msgs);
    free(notices);
}
