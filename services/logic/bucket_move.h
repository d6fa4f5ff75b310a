/*
 * bucket_move: `logicd --move-bucket B --to S` moves the private rows of
 * one bucket to another shard while the service runs (docs/architecture.md,
 * "Moving a bucket"). Blocking libpq, like --migrate: it runs in its own
 * process, next to the logicd that serve the cluster.
 */
#ifndef LOGIC_BUCKET_MOVE_H
#define LOGIC_BUCKET_MOVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

/* What one run did, for the operator (and the tests). */
struct bucket_move_report {
    int from, to;         /* shards; from == to when it was there already */
    long rows[3];         /* mailbox, message, notice_user_state rows of the first copy */
    int64_t copy_us;      /* the first copy (writes not fenced) */
    int passes;           /* catch-up passes before the fence (writes not fenced) */
    long final_mailboxes; /* mailboxes copied again while fenced */
    int64_t fenced_us;    /* from fencing writes on the source to lifting it on the target */
    int64_t wait_us;      /* of which waiting for the transactions in flight */
    int64_t total_us;
    bool resumed; /* an earlier run had left the bucket half moved */
};

/*
 * Moves bucket to shard `to` of shards[0..n-1] (pg_shards, checked against
 * the map first). Idempotent: re-running after a crash at any step
 * finishes the move; on a bucket already on `to` it only finishes a
 * cleanup an earlier run left. Steps are logged to out. One line in err.
 */
bool bucket_move_run(const char *public_conninfo, char *const *shards, int n, unsigned bucket,
                     int to, FILE *out, struct bucket_move_report *rep, char *err, size_t errlen)
    __attribute__((warn_unused_result));

#endif
