/*
 * sql: every statement logicd runs, in one table, prepared on each
 * PostgreSQL connection when it connects. Handlers refer to them by the
 * SQL_* names below. Parameters are always bound (lib/pg.h); the comment of
 * each name lists its parameters and result columns.
 *
 * Every private-mailbox statement names uid in its WHERE clause, so it
 * reaches one hash partition (and one node, once distributed).
 */
#ifndef LOGIC_SQL_H
#define LOGIC_SQL_H

#include <stdbool.h>

struct pg_pool;

/*
 * The bucket fence of a move (migrations/0006, docs/architecture.md) as a
 * condition on one mailbox: true, or the statement fails with SQLSTATE
 * MBF01/MBF02. The EXISTS does not refer to the row, so PostgreSQL runs it
 * once per statement (an init plan) and calls the PL/pgSQL function only
 * when the shard has fence rows: a shard that never took part in a move
 * pays one look at an empty table per statement. The snapshot of that look
 * is the statement's, taken after the transaction began; the mover waits
 * for every transaction older than a fence change (bucket_move.c).
 */
#define SQL_FENCE_WRITE(app, uid)                                                                  \
    "(NOT EXISTS (SELECT FROM bucket_fence) OR mbox_fence_write(" app ", " uid "))"
#define SQL_FENCE_READ(app, uid)                                                                   \
    "(NOT EXISTS (SELECT FROM bucket_fence WHERE state = 'moved') OR mbox_fence_read(" app         \
    ", " uid "))"

/* $1 app, $2 uids[] (sorted), $3 to_uids[], $4 contacters[], $5 from_uid,
 * $6 create_time, $7 expire_at, $8 category, $9 type, $10 priority,
 * $11 business_type, $12 msgkey (NULL), $13 content
 * -> (uid, msg_id, duplicate) per mailbox */
#define SQL_SEND "send"
/* Several sends in one statement (group commit, send_batch.h). Per send
 * (arrays of one element per send, in batch order): $1 app, $2 from_uid,
 * $3 create_time, $4 expire_at, $5 category, $6 type, $7 priority,
 * $8 business_type, $9 msgkey (NULL elements), $10 content; per mailbox
 * row: $11 its send's position (1-based), $12 uid, $13 to_uid,
 * $14 contacter, each send's rows in uid order, no uid twice in one send,
 * no (app, msgkey) in two sends -> (send position, uid, msg_id, duplicate)
 * per mailbox row */
#define SQL_SEND_BATCH "send_batch"
/* $1 app, $2 uid, $3 after msg_id, $4 limit, $5 now
 * -> (last_msg_id, message columns...) at least one row; msg_id NULL when none */
#define SQL_SYNC "sync"
/* $1 app, $2 uid, $3 from, $4 to, $5 limit, $6 now -> message columns */
#define SQL_HISTORY_ASC  "history_asc"
#define SQL_HISTORY_DESC "history_desc"
/* $1 app, $2 uid, $3 msg_ids[], $4 notice_ids[] -> (messages marked, notices marked) */
#define SQL_READ "read"
/* SQL_READ on a shard (docs/design.md 3.6): the notice table is not there,
 * so $4 must hold only live notices of the app (the caller checks them). */
#define SQL_READ_SHARD "read_shard"
/* $1 app, $2 uid, $3 msg_id (0: by msgkey), $4 msgkey, $5 now, $6 expire_at
 * -> (target, new_msg_id, previous_recall_msg_id, marked, target_was_recalled) */
#define SQL_RECALL "recall"
/* $1 now, $2 batch -> command tag count */
#define SQL_RETENTION "retention"

/* ---- public mailbox (notice columns: NOTICE_COLS in sql.c) ---- */
/* $1 app, $2 title, $3 content, $4 category, $5 type, $6 priority, $7 business_type,
 * $8 start_at, $9 expire_at, $10 platforms text[], $11 min_core, $12 max_core,
 * $13 login_only, $14 notify_mode, $15 notify_rate, $16 template, $17 actor, $18 now,
 * $19 audit body -> the notice */
#define SQL_NOTICE_CREATE "notice_create"
/* $1 notice_id -> the notice (not deleted) */
#define SQL_NOTICE_GET "notice_get"
/* $1 app (0 = any), $2 state ('' = any), $3 limit -> notices, newest first */
#define SQL_NOTICE_LIST "notice_list"
/* $1 notice_id, $2 new state, $3 allowed from-states text[], $4 actor, $5 now,
 * $6 action, $7 audit body, $8 delete, $9 If-Match version (0: none)
 * -> (prev_state, prev_version, notice columns or NULLs) */
#define SQL_NOTICE_TRANSITION "notice_transition"
/* $1 notice_id, $2 expected version, $3..$16 as create $2..$15 shifted (title .. notify_rate),
 * $17 template, $18 actor, $19 now, $20 audit body -> (prev_state, prev_version, notice...) */
#define SQL_NOTICE_PATCH "notice_patch"
/* $1 app, $2 uid, $3 notice_ids[] -> (notice_id, is_read, hidden) */
#define SQL_NOTICE_USER_STATE "notice_user_state"
/* $1 app, $2 uid, $3 notice_ids[], $4 read, $5 hidden -> count */
#define SQL_NOTICE_USER_MARK "notice_user_mark"
/* $1 app, $2 uids[], $3 mode ('add', 'replace', 'remove'), $4 actor, $5 now, $6 body -> count */
#define SQL_WHITELIST_CHANGE "whitelist_change"
/* $1 app -> uid */
#define SQL_WHITELIST_LIST "whitelist_list"
/* $1 app, $2 uids[] -> how many of them are not on the app's whitelist */
#define SQL_WHITELIST_MISSING "whitelist_missing"
/* $1 notice_id (0 = any), $2 limit -> audit rows */
#define SQL_AUDIT_LIST "audit_list"
/* $1 interval start (us), $2 limit -> notice_id of live notices without a sample there */
#define SQL_REACH_DUE "reach_due"
/* $1 interval start (us), $2 notice_ids[], $3 reach[] -> command tag count (0 when
 * another logicd holds the sampler lock or already wrote the interval) */
#define SQL_REACH_RECORD "reach_record"
/* $1 notice_id, $2 limit -> (at, reach), newest first */
#define SQL_REACH_SERIES "reach_series"
/* $1 oldest interval start (us) kept -> samples deleted */
#define SQL_REACH_PRUNE "reach_prune"

/* Registers all statements with the pool. */
bool sql_prepare_all(struct pg_pool *pg) __attribute__((warn_unused_result));

/* The text of statement name (for blocking libpq users: the whitelist_file
 * loader), or NULL. */
const char *sql_text(const char *name);

#endif
