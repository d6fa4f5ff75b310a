/*
 * send_batch: group commit of private sends (docs/design.md 3.7).
 *
 * Each worker keeps one queue per shard. A send (the part of a
 * POST /v1/messages on one shard) is queued and goes out with the sends
 * queued beside it as one statement, so one transaction and one durable
 * commit serve them all:
 *
 *   - while fewer than send_batch_inflight statements of this queue are in
 *     flight, everything queued goes out at once (an idle server adds no
 *     wait: a lone send is a batch of one);
 *   - otherwise sends wait for a statement to complete, and go out with
 *     the sends queued behind them, up to send_batch_max sends (and
 *     BATCH_MAX_ROWS mailboxes, BATCH_MAX_BYTES of content) per statement;
 *   - right after a batch was answered (its senders are about to send
 *     again), the queue waits until it holds as many sends as that batch
 *     had, so a busy queue does not break into a lone send and the rest;
 *   - none waits longer than send_batch_wait_us: then the queue goes out
 *     whatever is in flight.
 *
 * Two sends with the same (app, msgkey) never share a statement (the second
 * waits for the next one), so a retry racing its first attempt is answered
 * as a duplicate, as without batching. The statement (sql.h SQL_SEND_BATCH,
 * or SQL_SEND for a batch of one) takes the mailbox header locks of the
 * whole batch in (uid, app) order, so batches cannot deadlock each other.
 *
 * A statement the server rejects (a fence of a bucket move, a msgkey race,
 * any error) fails the whole batch; its sends are then run again one per
 * statement, so each is answered for itself and one bad send fails no other.
 * A statement whose outcome is unknown (timeout, lost connection) fails
 * every send of the batch with that error; its mailboxes' hints are dropped
 * first, and the senders' retries with their msgkeys find what committed.
 *
 * After a commit the batch's post-commit work is one round of Redis
 * commands: the hint invalidation of every mailbox of the batch (duplicates
 * too), then one route lookup per mailbox written, with the notifies of the
 * whole batch grouped per lcsd node, then each send's done callback.
 */
#ifndef LOGIC_SEND_BATCH_H
#define LOGIC_SEND_BATCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "pg.h"

struct logic_worker;
struct send_batcher;

/* One mailbox of a send. */
struct send_row {
    uint64_t uid, to_uid, contacter;
};

struct send_entry;
/* Called once per entry: err->kind PG_OK (results set) or its failure. */
typedef void (*send_done_cb)(struct send_entry *e, const struct pg_error *err);

struct send_entry {
    /* the send, set by the caller and valid until done */
    uint64_t app_id, from_uid;
    int64_t create_time, expire_at;
    int32_t category, type, priority, business_type;
    const char *msgkey; /* NULL: none */
    const void *content;
    size_t content_len;
    const struct send_row *rows; /* in uid order, no uid twice */
    int nrows;
    /* results, by position in rows, set before done(PG_OK) */
    uint64_t *msg_ids;
    bool *dup;
    /* set before done: the statement may have committed (unknown outcome) */
    bool uncertain;
    send_done_cb done;
    void *arg;
    /* private */
    struct send_entry *next;
    int attempts;
    int64_t queued_us;
};

/* Per worker, per shard. NULL on allocation failure. */
struct send_batcher *send_batcher_new(struct logic_worker *w, int shard);

/* Worker teardown: close fails what is queued (PG_ERR_UNAVAILABLE, nothing
 * sent) and stops issuing; then the shard's pool is freed (its statements
 * in flight complete with PG_ERR_UNAVAILABLE and are answered); then free. */
void send_batcher_close(struct send_batcher *b);
void send_batcher_free(struct send_batcher *b);

/* Queues e on the worker's batcher of shard; done is called later, or
 * from inside this call when it cannot be sent at all. */
void send_batch_submit(struct logic_worker *w, int shard, struct send_entry *e);

#endif
