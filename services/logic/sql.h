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

/* $1 app, $2 uids[] (sorted), $3 to_uids[], $4 contacters[], $5 from_uid,
 * $6 create_time, $7 expire_at, $8 category, $9 type, $10 priority,
 * $11 business_type, $12 msgkey (NULL), $13 content
 * -> (uid, msg_id, duplicate) per mailbox */
#define SQL_SEND "send"
/* $1 app, $2 uid, $3 after msg_id, $4 limit, $5 now
 * -> (last_msg_id, message columns...) at least one row; msg_id NULL when none */
#define SQL_SYNC "sync"
/* $1 app, $2 uid, $3 from, $4 to, $5 limit, $6 now -> message columns */
#define SQL_HISTORY_ASC  "history_asc"
#define SQL_HISTORY_DESC "history_desc"
/* $1 app, $2 uid, $3 msg_ids[] -> command tag count */
#define SQL_READ "read"
/* $1 app, $2 uid, $3 msg_id (0: by msgkey), $4 msgkey, $5 now, $6 expire_at
 * -> (target, new_msg_id, previous_recall_msg_id, marked) */
#define SQL_RECALL "recall"
/* $1 now, $2 batch -> command tag count */
#define SQL_RETENTION "retention"

/* Registers all statements with the pool. */
bool sql_prepare_all(struct pg_pool *pg) __attribute__((warn_unused_result));

#endif
