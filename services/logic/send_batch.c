/*
 * send_batch: group commit of private sends (see send_batch.h).
 */
#include "send_batch.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>

#include "hint.h"
#include "log.h"
#include "logic.h"
#include "metrics.h"
#include "notify.h"
#include "sql.h"

/* Bounds of one statement besides send_batch_max: its mailbox rows and its
 * content bytes (a send above either still goes, alone). */
#define BATCH_MAX_ROWS  4096
#define BATCH_MAX_BYTES (1 << 20)
/* The upper bound of send_batch_max (logic_config.c). */
#define BATCH_MAX_SENDS 1024
/* Size classes of mbox_send_batches_total: 1, 2-3, 4-7, ..., 128+. */
#define NCLASSES 8

struct send_batcher {
    struct logic_worker *w;
    int shard;
    struct send_entry *head, *tail; /* queued, in arrival order */
    int queued;
    int inflight; /* statements of this queue not yet answered */
    struct event *timer; /* the oldest queued send's wait bound */
    bool closing;
    /* the last batch answered: when (mono_us) and how many sends */
    int64_t last_answered_us;
    int last_size;
    struct metric *m_batches[NCLASSES], *m_sends, *m_splits;
};

/* One statement in flight, then its post-commit work. */
struct send_batch {
    struct send_batcher *b;     /* NULL once answered (inflight is released) */
    struct send_batcher *owner; /* freed after every batch (send_batcher_free) */
    struct logic_worker *w;
    struct send_entry **e;
    int n;
    struct pg_error err;
    char err_message[200];
    bool uncertain;
    /* the batch's mailboxes for the post-commit work, sorted by (app, uid) */
    struct batch_mbox {
        uint64_t app_id, uid, msg_id;
        bool fresh;
    } * mb;
    int nmb;
    uint64_t *uids, *ids; /* scratch: one app's run */
    int pending;          /* hint invalidations (per app) not yet done */
};

static void batch_issue(struct send_batcher *b, struct send_entry **e, int n);

static const char *const class_labels[NCLASSES] = {
    "size=\"1\"",     "size=\"2-3\"",   "size=\"4-7\"",    "size=\"8-15\"",
    "size=\"16-31\"", "size=\"32-63\"", "size=\"64-127\"", "size=\"128+\"",
};

static int
size_class(int n)
{
    int c = 0;
    while (n > 1 && c < NCLASSES - 1) {
        n >>= 1;
        c++;
    }
    return c;
}

/* ---- completion ---- */

static void
batch_free(struct send_batch *bt)
{
    free(bt->e);
    free(bt->mb);
    free(bt->uids);
    free(bt->ids);
    free(bt);
}

/* Answers every entry with the batch's outcome, and frees the batch. */
static int64_t mono_us(void);

static void
batch_answer(struct send_batch *bt)
{
    bt->owner->last_answered_us = mono_us();
    bt->owner->last_size = bt->n;
    for (int i = 0; i < bt->n; i++) {
        struct send_entry *e = bt->e[i];
        e->uncertain = bt->uncertain;
        e->done(e, &bt->err);
    }
    batch_free(bt);
}

static int
cmp_mbox(const void *a, const void *b)
{
    const struct batch_mbox *x = a, *y = b;
    if (x->app_id != y->app_id)
        return x->app_id < y->app_id ? -1 : 1;
    if (x->uid != y->uid)
        return x->uid < y->uid ? -1 : 1;
    return x->msg_id < y->msg_id ? -1 : x->msg_id > y->msg_id;
}

/* The run of mailboxes of one app starting at *at, distinct uids into
 * bt->uids (all) and notifies (fresh ones, newest id) into uids/ids past
 * them; returns the run's app and moves *at past it. */
static uint64_t
app_run(struct send_batch *bt, int *at, int *nall, int *nfresh)
{
    uint64_t app = bt->mb[*at].app_id;
    int na = 0, nf = 0, i = *at;
    for (; i < bt->nmb && bt->mb[i].app_id == app; i++) {
        const struct batch_mbox *m = &bt->mb[i];
        bool last_of_uid =
            i + 1 == bt->nmb || bt->mb[i + 1].app_id != app || bt->mb[i + 1].uid != m->uid;
        if (na == 0 || bt->uids[na - 1] != m->uid)
            bt->uids[na++] = m->uid;
        /* sorted by msg_id within a uid: a fresh last row is its newest */
        if (last_of_uid && m->fresh) {
            bt->uids[bt->nmb + nf] = m->uid;
            bt->ids[nf++] = m->msg_id;
        }
    }
    *at = i;
    *nall = na;
    *nfresh = nf;
    return app;
}

static void
on_invalidated(void *arg)
{
    struct send_batch *bt = arg;
    if (--bt->pending > 0)
        return;
    if (bt->err.kind == PG_OK) {
        /* Notifies after every hint of the batch is gone: a notified
         * client's pull reads PostgreSQL. */
        for (int at = 0; at < bt->nmb;) {
            int na, nf;
            uint64_t app = app_run(bt, &at, &na, &nf);
            notify_mailboxes(bt->w, app, bt->uids + bt->nmb, bt->ids, nf);
        }
    }
    batch_answer(bt);
}

/* Drops the hints of every mailbox of the batch (one call per app), then
 * notifies and answers (on_invalidated). */
static void
batch_invalidate(struct send_batch *bt)
{
    qsort(bt->mb, (size_t)bt->nmb, sizeof(bt->mb[0]), cmp_mbox);
    bt->uids = calloc((size_t)bt->nmb * 2 + 1, sizeof(*bt->uids));
    bt->ids = calloc((size_t)bt->nmb + 1, sizeof(*bt->ids));
    if (bt->uids == NULL || bt->ids == NULL) {
        /* Every hint stays until its TTL: answer 503, the outcome is known
         * to the database only. */
        bt->err = (struct pg_error){.kind = PG_ERR_UNAVAILABLE, .message = "out of memory"};
        bt->uncertain = true;
        batch_answer(bt);
        return;
    }
    bt->pending = 1;
    for (int at = 0; at < bt->nmb;) {
        int na, nf;
        uint64_t app = app_run(bt, &at, &na, &nf);
        bt->pending++;
        hint_invalidate(bt->w, app, bt->uids, na, on_invalidated, bt);
    }
    on_invalidated(bt);
}

/* Position of uid in e's rows, or -1. */
static int
entry_row(const struct send_entry *e, uint64_t uid)
{
    int lo = 0, hi = e->nrows - 1;
    while (lo <= hi) {
        int mid = (lo + hi) / 2;
        if (e->rows[mid].uid == uid)
            return mid;
        if (e->rows[mid].uid < uid)
            lo = mid + 1;
        else
            hi = mid - 1;
    }
    return -1;
}

/* Collects the batch's mailboxes (every row; results from res when it
 * committed). False on OOM. */
static bool
batch_collect(struct send_batch *bt, const PGresult *res)
{
    int total = 0;
    for (int i = 0; i < bt->n; i++)
        total += bt->e[i]->nrows;
    bt->mb = calloc((size_t)total + 1, sizeof(*bt->mb));
    if (bt->mb == NULL)
        return false;
    for (int i = 0; i < bt->n; i++) {
        const struct send_entry *e = bt->e[i];
        for (int k = 0; k < e->nrows; k++)
            bt->mb[bt->nmb++] = (struct batch_mbox){.app_id = e->app_id, .uid = e->rows[k].uid};
    }
    if (res == NULL)
        return true;
    /* SQL_SEND answers (uid, msg_id, duplicate), SQL_SEND_BATCH the
     * send's position first. */
    bool single = PQnfields(res) == 3;
    int off = single ? 0 : 1;
    int *base = calloc((size_t)bt->n + 1, sizeof(*base)); /* each entry's first mailbox */
    if (base == NULL)
        return false;
    for (int i = 0; i < bt->n; i++)
        base[i + 1] = base[i] + bt->e[i]->nrows;
    for (int row = 0; row < PQntuples(res); row++) {
        int part = single ? 1 : (int)pg_get_i64(res, row, 0);
        if (part < 1 || part > bt->n)
            continue;
        struct send_entry *e = bt->e[part - 1];
        int k = entry_row(e, (uint64_t)pg_get_i64(res, row, off));
        if (k < 0)
            continue;
        e->msg_ids[k] = (uint64_t)pg_get_i64(res, row, off + 1);
        e->dup[k] = pg_get_bool(res, row, off + 2);
        struct batch_mbox *m = &bt->mb[base[part - 1] + k];
        m->msg_id = e->msg_ids[k];
        m->fresh = !e->dup[k];
    }
    free(base);
    return true;
}

/* The statement of a batch of one may be retried on these (sql.h). */
static bool
retryable(const struct pg_error *err)
{
    /* 23505: a concurrent send with the same msgkey committed first; the
     * retry sees it as a duplicate. 40P01: retry once as well. */
    return err->kind == PG_ERR_QUERY &&
           (strcmp(err->sqlstate, "23505") == 0 || strcmp(err->sqlstate, "40P01") == 0);
}

static void batch_flush(struct send_batcher *b);

static void
on_batch(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct send_batch *bt = arg;
    struct send_batcher *b = bt->b;
    bt->b = NULL;
    b->inflight--;
    if (err->kind == PG_OK) {
        metric_inc(b->m_batches[size_class(bt->n)]);
        metric_add(b->m_sends, (uint64_t)bt->n);
    }
    /* The next statement goes out before this one's post-commit work. */
    if (!b->closing)
        batch_flush(b);

    if (err->kind == PG_ERR_QUERY && (bt->n > 1 || (retryable(err) && bt->e[0]->attempts < 2))) {
        /* Rejected: nothing of it was written. A batch is split into one
         * statement per send, so each gets its own answer; a lone send
         * may be retried. */
        if (bt->n > 1) {
            metric_inc(b->m_splits);
            log_debug("send_batch_split", "shard=%d sends=%d sqlstate=%s", b->shard, bt->n,
                      err->sqlstate);
        }
        for (int i = 0; i < bt->n; i++) {
            if (bt->n > 1)
                bt->e[i]->attempts = 0; /* the batch's failure may be another send's */
            batch_issue(b, &bt->e[i], 1);
        }
        batch_free(bt);
        return;
    }
    bt->err = *err;
    snprintf(bt->err_message, sizeof(bt->err_message), "%s", err->message ? err->message : "");
    bt->err.message = bt->err_message;
    if (err->kind == PG_ERR_QUERY) {
        batch_answer(bt); /* nothing written, nothing to invalidate */
        return;
    }
    bt->uncertain = err->kind != PG_OK;
    if (!batch_collect(bt, err->kind == PG_OK ? res : NULL)) {
        bt->err = (struct pg_error){.kind = PG_ERR_UNAVAILABLE, .message = "out of memory"};
        bt->uncertain = true;
        batch_answer(bt);
        return;
    }
    batch_invalidate(bt);
}

/* ---- the statement ---- */

/* Binds and runs the statement of e[0..n-1]; false when it was not sent. */
static bool
batch_query(struct send_batch *bt, struct pg_pool *pool)
{
    struct send_entry **e = bt->e;
    int n = bt->n;
    struct pg_params p;
    pg_params_init(&p);
    if (n == 1) {
        /* SQL_SEND: the single-send statement, its recipients as arrays. */
        const struct send_entry *s = e[0];
        struct pg_array a[3];
        for (int k = 0; k < 3; k++)
            pg_array_init(&a[k], PG_ARRAY_INT8);
        for (int r = 0; r < s->nrows; r++) {
            pg_array_i64(&a[0], (int64_t)s->rows[r].uid);
            pg_array_i64(&a[1], (int64_t)s->rows[r].to_uid);
            pg_array_i64(&a[2], (int64_t)s->rows[r].contacter);
        }
        pg_param_i64(&p, (int64_t)s->app_id);
        for (int k = 0; k < 3; k++)
            pg_param_array(&p, &a[k]);
        pg_param_i64(&p, (int64_t)s->from_uid);
        pg_param_i64(&p, s->create_time);
        pg_param_i64(&p, s->expire_at);
        pg_param_i32(&p, s->category);
        pg_param_i32(&p, s->type);
        pg_param_i32(&p, s->priority);
        pg_param_i32(&p, s->business_type);
        pg_param_text(&p, s->msgkey);
        pg_param_bytea(&p, s->content, s->content_len);
        bool sent = pg_query(pool, SQL_SEND, &p, on_batch, bt);
        for (int k = 0; k < 3; k++)
            pg_array_free(&a[k]);
        return sent;
    }
    enum {
        APP,
        FROM,
        CTIME,
        EXPIRE,
        CAT,
        TYPE,
        PRIO,
        BTYPE,
        KEY,
        CONTENT,
        PART,
        UID,
        TO,
        CONTACTER,
        NARR
    };
    static const enum pg_array_type types[NARR] = {
        PG_ARRAY_INT8, PG_ARRAY_INT8, PG_ARRAY_INT8, PG_ARRAY_INT8, PG_ARRAY_INT4,
        PG_ARRAY_INT4, PG_ARRAY_INT4, PG_ARRAY_INT4, PG_ARRAY_TEXT, PG_ARRAY_BYTEA,
        PG_ARRAY_INT4, PG_ARRAY_INT8, PG_ARRAY_INT8, PG_ARRAY_INT8};
    struct pg_array a[NARR];
    for (int k = 0; k < NARR; k++)
        pg_array_init(&a[k], types[k]);
    for (int i = 0; i < n; i++) {
        const struct send_entry *s = e[i];
        pg_array_i64(&a[APP], (int64_t)s->app_id);
        pg_array_i64(&a[FROM], (int64_t)s->from_uid);
        pg_array_i64(&a[CTIME], s->create_time);
        pg_array_i64(&a[EXPIRE], s->expire_at);
        pg_array_i32(&a[CAT], s->category);
        pg_array_i32(&a[TYPE], s->type);
        pg_array_i32(&a[PRIO], s->priority);
        pg_array_i32(&a[BTYPE], s->business_type);
        if (s->msgkey != NULL)
            pg_array_bytes(&a[KEY], s->msgkey, strlen(s->msgkey));
        else
            pg_array_null(&a[KEY]);
        pg_array_bytes(&a[CONTENT], s->content, s->content_len);
        for (int r = 0; r < s->nrows; r++) {
            pg_array_i32(&a[PART], i + 1);
            pg_array_i64(&a[UID], (int64_t)s->rows[r].uid);
            pg_array_i64(&a[TO], (int64_t)s->rows[r].to_uid);
            pg_array_i64(&a[CONTACTER], (int64_t)s->rows[r].contacter);
        }
    }
    for (int k = 0; k < NARR; k++)
        pg_param_array(&p, &a[k]);
    bool sent = pg_query(pool, SQL_SEND_BATCH, &p, on_batch, bt);
    for (int k = 0; k < NARR; k++)
        pg_array_free(&a[k]);
    return sent;
}

/* Sends e[0..n-1] as one statement (the array is copied). */
static void
batch_issue(struct send_batcher *b, struct send_entry **e, int n)
{
    struct send_batch *bt = calloc(1, sizeof(*bt));
    struct send_entry **copy = calloc((size_t)n, sizeof(*copy));
    if (bt != NULL && copy != NULL) {
        memcpy(copy, e, (size_t)n * sizeof(*copy));
        *bt = (struct send_batch){.b = b, .owner = b, .w = b->w, .e = copy, .n = n};
        for (int i = 0; i < n; i++)
            e[i]->attempts++;
        b->inflight++;
        if (!b->closing && batch_query(bt, b->w->shard_pg[b->shard]))
            return;
        b->inflight--;
    } else {
        free(copy);
        free(bt);
        bt = NULL;
    }
    /* Not sent: nothing of it can commit. */
    struct pg_error down = {.kind = PG_ERR_UNAVAILABLE,
                            .message = bt != NULL ? "no connection" : "out of memory"};
    for (int i = 0; i < n; i++) {
        e[i]->uncertain = false;
        e[i]->done(e[i], &down);
    }
    if (bt != NULL)
        batch_free(bt);
}

/* ---- the queue ---- */

/* Whether e may join the batch so far (no second send of its app and msgkey). */
static bool
joins(struct send_entry *const *batch, int n, const struct send_entry *e)
{
    if (e->msgkey == NULL)
        return true;
    for (int i = 0; i < n; i++) {
        if (batch[i]->msgkey != NULL && batch[i]->app_id == e->app_id &&
            strcmp(batch[i]->msgkey, e->msgkey) == 0)
            return false;
    }
    return true;
}

/* Takes the next batch off the queue into out (capacity max): the oldest
 * send, then those after it that fit. Returns how many. */
static int
take_batch(struct send_batcher *b, struct send_entry **out, int max)
{
    int n = 0, rows = 0;
    size_t bytes = 0;
    struct send_entry **link = &b->head, *prev = NULL;
    while (*link != NULL && n < max) {
        struct send_entry *e = *link;
        bool fits = n == 0 || (rows + e->nrows <= BATCH_MAX_ROWS &&
                               bytes + e->content_len <= BATCH_MAX_BYTES && joins(out, n, e));
        if (!fits) {
            if (rows >= BATCH_MAX_ROWS || bytes >= BATCH_MAX_BYTES)
                break;
            prev = e;
            link = &e->next;
            continue;
        }
        *link = e->next;
        e->next = NULL;
        out[n++] = e;
        rows += e->nrows;
        bytes += e->content_len;
        b->queued--;
    }
    if (*link == NULL)
        b->tail = prev; /* the queue now ends with the last send passed over */
    return n;
}

static int64_t
mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/*
 * Issues what the queue allows (send_batch.h): the oldest send goes out
 * when it has waited send_batch_wait_us; before that, only while fewer
 * than send_batch_inflight statements are in flight, and, right after a
 * batch was answered (its senders are coming back), only once as many
 * sends are queued as it had. Arms the timer for the oldest send's bound.
 */
static void
batch_flush(struct send_batcher *b)
{
    const struct logic_config *c = &b->w->app->cfg;
    int max = (int)c->send_batch_max;
    struct send_entry *buf[BATCH_MAX_SENDS];
    if (max > BATCH_MAX_SENDS)
        max = BATCH_MAX_SENDS;
    int64_t now = mono_us(), wait = c->send_batch_wait_us;
    while (b->queued > 0) {
        bool due = wait > 0 && now - b->head->queued_us >= wait;
        if (!due && (b->inflight >= c->send_batch_inflight ||
                     (b->queued < max && b->queued < b->last_size &&
                      now - b->last_answered_us < wait)))
            break;
        int n = take_batch(b, buf, max);
        batch_issue(b, buf, n);
    }
    if (b->queued > 0 && wait > 0) {
        int64_t left = b->head->queued_us + wait - now;
        struct timeval tv = {0, (suseconds_t)(left > 0 ? left : 0)};
        evtimer_add(b->timer, &tv);
    } else {
        evtimer_del(b->timer);
    }
}

static void
on_wait_bound(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    struct send_batcher *b = arg;
    if (!b->closing)
        batch_flush(b);
}

void
send_batch_submit(struct logic_worker *w, int shard, struct send_entry *e)
{
    struct send_batcher *b = w->batchers[shard];
    e->next = NULL;
    e->attempts = 0;
    e->uncertain = false;
    if (b == NULL || b->closing) {
        struct pg_error down = {.kind = PG_ERR_UNAVAILABLE, .message = "shutting down"};
        e->done(e, &down);
        return;
    }
    if (b->tail != NULL)
        b->tail->next = e;
    else
        b->head = e;
    b->tail = e;
    b->queued++;
    e->queued_us = mono_us();
    batch_flush(b);
}

struct send_batcher *
send_batcher_new(struct logic_worker *w, int shard)
{
    struct send_batcher *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->w = w;
    b->shard = shard;
    b->timer = evtimer_new(w->base, on_wait_bound, b);
    if (b->timer == NULL) {
        free(b);
        return NULL;
    }
    for (int i = 0; i < NCLASSES; i++)
        b->m_batches[i] = metrics_counter(w->app->metrics, "mbox_send_batches_total",
                                          "send statements committed, by sends per statement "
                                          "(group commit)",
                                          class_labels[i]);
    b->m_sends =
        metrics_counter(w->app->metrics, "mbox_send_batched_total",
                        "sends committed by send statements (mbox_send_batches_total)", NULL);
    b->m_splits = metrics_counter(w->app->metrics, "mbox_send_batch_splits_total",
                                  "send statements of several sends the database rejected, "
                                  "run again one statement per send",
                                  NULL);
    return b;
}

void
send_batcher_close(struct send_batcher *b)
{
    if (b == NULL)
        return;
    b->closing = true;
    struct pg_error down = {.kind = PG_ERR_UNAVAILABLE, .message = "shutting down"};
    while (b->head != NULL) {
        struct send_entry *e = b->head;
        b->head = e->next;
        e->done(e, &down);
    }
    b->tail = NULL;
    b->queued = 0;
}

void
send_batcher_free(struct send_batcher *b)
{
    if (b == NULL)
        return;
    send_batcher_close(b);
    event_free(b->timer);
    free(b);
}
