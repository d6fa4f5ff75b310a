/*
 * sql: the statement table (see sql.h).
 *
 * msg_id assignment (docs/design.md 3.1): a send upserts the mailbox header row
 * and takes last_msg_id = max(now_us, last_msg_id + 1) in the ON CONFLICT
 * branch, which runs while holding that row's lock, and the lock is held
 * until commit. The next writer of that mailbox waits for the lock and
 * computes a larger id, so ids commit in order and a cursor can never pass
 * a row that commits later. The clock is read inside the statement, under
 * the lock (clock_timestamp(), not a value computed earlier).
 * Parameter types: every int4 parameter is cast ($n::int4) because the
 * statements are prepared without declared types and the server would
 * otherwise infer bigint (LIMIT) while the value is bound as binary int4.
 * Multi-recipient sends take the header locks in uid order (ORDER BY), so
 * two sends cannot deadlock on each other's mailboxes.
 * The bucket fence of a move (migrations/0006, docs/architecture.md):
 * every statement on private rows calls mbox_fence_write() (writers) or
 * mbox_fence_read() (readers) for each of its mailboxes where the call
 * cannot be skipped (the row a sync always returns, every recipient row of
 * a send, a LIMIT, which is computed before the first row, the single row
 * of a final SELECT), and fails with SQLSTATE MBF01/MBF02 when this shard
 * must not serve the mailbox now. A call that raises rolls the whole
 * statement back, wherever it sits in it. The calls go through
 * SQL_FENCE_WRITE/SQL_FENCE_READ (sql.h), which skip them on a shard
 * without fence rows.
 */
#include "sql.h"

#include <stddef.h>
#include <string.h>

#include "pg.h"

#define NOW_US "(extract(epoch FROM clock_timestamp()) * 1000000)::int8"
#define MSG_COLS                                                                                   \
    "msg_id, kind, from_uid, to_uid, contacter, create_time, expire_at, is_read, category, "       \
    "type, priority, business_type, msgkey, content, recalled_msg_id"

/* The bucket fence (sql.h) of the mailbox ($1, $2), or of each row r of a send. */
#define FENCE_WRITE   SQL_FENCE_WRITE("$1::int8", "$2::int8")
#define FENCE_READ    SQL_FENCE_READ("$1::int8", "$2::int8")
#define FENCE_WRITE_R SQL_FENCE_WRITE("$1::int8", "r.uid")

#define NOTICE_COLS                                                                                \
    "notice_id, app_id, state, version, seq, msg_id, title, content, category, type, "             \
    "priority, business_type, start_at, expire_at, array_to_string(platforms, ',') AS platforms, " \
    "min_core_level, max_core_level, "                                                             \
    "login_only, notify_mode, notify_rate, template, created_by, created_at, updated_by, "         \
    "updated_at"
/* The reach sampler's advisory lock (migrate.c uses 7204312001). */
#define REACH_LOCK_KEY "7204312002"
/* Every visible notice change takes the next seq under the head row lock (migrations/0002). */
#define NEXT_SEQ "UPDATE public_head SET seq = seq + 1 WHERE id = 1"

struct sql_stmt {
    const char *name;
    int nparams;
    const char *text;
};

static const struct sql_stmt statements[] = {
    {SQL_SEND, 13,
     "WITH r AS ("
     "  SELECT * FROM unnest($2::int8[], $3::int8[], $4::int8[]) AS r(uid, to_uid, contacter)"
     "  WHERE " FENCE_WRITE_R /* hdr reads every row of r */
     "), dup AS ("
     "  SELECT m.uid, m.msg_id FROM message m JOIN r ON m.uid = r.uid"
     "  WHERE m.app_id = $1 AND $12::text IS NOT NULL AND m.msgkey = $12::text"
     "), hdr AS ("
     "  INSERT INTO mailbox AS h (uid, app_id, last_msg_id)"
     "  SELECT r.uid, $1, " NOW_US " FROM r"
     "  WHERE r.uid NOT IN (SELECT uid FROM dup) ORDER BY r.uid"
     "  ON CONFLICT (uid, app_id) DO UPDATE"
     "  SET last_msg_id = GREATEST(" NOW_US ", h.last_msg_id + 1)"
     "  RETURNING h.uid, h.last_msg_id"
     "), ins AS ("
     "  INSERT INTO message (uid, app_id, msg_id, kind, from_uid, to_uid, contacter,"
     "    create_time, expire_at, category, type, priority, business_type, msgkey, content)"
     "  SELECT hdr.uid, $1, hdr.last_msg_id, 0, $5, r.to_uid, r.contacter, $6, $7, $8, $9,"
     "    $10, $11, $12::text, $13"
     "  FROM hdr JOIN r ON r.uid = hdr.uid"
     "  RETURNING uid, msg_id"
     ")"
     " SELECT uid, msg_id, false AS duplicate FROM ins"
     " UNION ALL SELECT uid, msg_id, true FROM dup"},
    {SQL_SEND_BATCH, 14,
     /* p: the sends (part = position), r: their mailboxes. A mailbox with
      * k new messages in the batch takes k ids under one header lock:
      * last_msg_id advances by k, the messages get the k ids ending there
      * in batch order. The header subquery is per conflicting header and
      * scans fresh (at most the batch's rows). */
     "WITH p AS ("
     "  SELECT * FROM unnest($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::int4[],"
     "    $6::int4[], $7::int4[], $8::int4[], $9::text[], $10::bytea[]) WITH ORDINALITY"
     "  AS p(app_id, from_uid, create_time, expire_at, category, type, priority,"
     "    business_type, msgkey, content, part)"
     "), r AS ("
     "  SELECT r.n, r.part, r.uid, r.to_uid, r.contacter, p.app_id, p.msgkey"
     "  FROM unnest($11::int4[], $12::int8[], $13::int8[], $14::int8[]) WITH ORDINALITY"
     "  AS r(part, uid, to_uid, contacter, n) JOIN p ON p.part = r.part"
     "  WHERE " SQL_FENCE_WRITE("p.app_id", "r.uid") /* hdr reads every row of r */
     "), dup AS ("
     "  SELECT r.n, r.part, r.uid, m.msg_id FROM r JOIN message m"
     "  ON m.uid = r.uid AND m.app_id = r.app_id AND m.msgkey = r.msgkey"
     "  WHERE r.msgkey IS NOT NULL"
     "), fresh AS ("
     "  SELECT r.*, row_number() OVER (PARTITION BY r.uid, r.app_id ORDER BY r.n) AS k,"
     "    count(*) OVER (PARTITION BY r.uid, r.app_id) AS cnt"
     "  FROM r WHERE r.n NOT IN (SELECT n FROM dup)"
     "), hdr AS ("
     "  INSERT INTO mailbox AS h (uid, app_id, last_msg_id)"
     "  SELECT uid, app_id, " NOW_US " + cnt - 1 FROM fresh WHERE k = 1 ORDER BY uid, app_id"
     "  ON CONFLICT (uid, app_id) DO UPDATE"
     "  SET last_msg_id = GREATEST(" NOW_US ", h.last_msg_id + 1) + (SELECT f.cnt - 1 FROM fresh f"
     "    WHERE f.uid = EXCLUDED.uid AND f.app_id = EXCLUDED.app_id AND f.k = 1)"
     "  RETURNING h.uid, h.app_id, h.last_msg_id"
     "), ids AS ("
     "  SELECT f.part, f.uid, f.app_id, f.to_uid, f.contacter, hdr.last_msg_id - f.cnt + f.k"
     "  AS msg_id FROM fresh f JOIN hdr ON hdr.uid = f.uid AND hdr.app_id = f.app_id"
     "), ins AS ("
     "  INSERT INTO message (uid, app_id, msg_id, kind, from_uid, to_uid, contacter,"
     "    create_time, expire_at, category, type, priority, business_type, msgkey, content)"
     "  SELECT i.uid, i.app_id, i.msg_id, 0, p.from_uid, i.to_uid, i.contacter, p.create_time,"
     "    p.expire_at, p.category, p.type, p.priority, p.business_type, p.msgkey, p.content"
     "  FROM ids i JOIN p ON p.part = i.part"
     ")"
     " SELECT part::int4, uid, msg_id, false AS duplicate FROM ids"
     " UNION ALL SELECT part::int4, uid, msg_id, true FROM dup"},
    {SQL_SYNC, 5,
     "SELECT h.last_msg_id, m.* FROM"
     " (SELECT COALESCE((SELECT last_msg_id FROM mailbox WHERE uid = $2 AND app_id = $1), 0)"
     "  AS last_msg_id WHERE " FENCE_READ ") h"
     " LEFT JOIN LATERAL (SELECT " MSG_COLS " FROM message"
     "  WHERE uid = $2 AND app_id = $1 AND msg_id > $3 AND expire_at > $5 AND NOT recalled"
     "  ORDER BY msg_id LIMIT $4::int4) m ON true"
     " ORDER BY m.msg_id"},
    {SQL_HISTORY_ASC, 6,
     "SELECT " MSG_COLS " FROM message"
     " WHERE uid = $2 AND app_id = $1 AND kind = 0 AND NOT recalled"
     " AND msg_id >= $3 AND msg_id <= $4 AND expire_at > $6"
     " ORDER BY msg_id ASC"
     " LIMIT CASE WHEN " FENCE_READ " THEN $5::int4 END"},
    {SQL_HISTORY_DESC, 6,
     "SELECT " MSG_COLS " FROM message"
     " WHERE uid = $2 AND app_id = $1 AND kind = 0 AND NOT recalled"
     " AND msg_id >= $3 AND msg_id <= $4 AND expire_at > $6"
     " ORDER BY msg_id DESC"
     " LIMIT CASE WHEN " FENCE_READ " THEN $5::int4 END"},
    {SQL_READ, 4,
     /* One statement: both kinds of marks, or neither. Notice ids are
      * de-duplicated and limited to live notices of the user's app. */
     "WITH m AS (UPDATE message SET is_read = true"
     "  WHERE uid = $2::int8 AND app_id = $1::int8 AND msg_id = ANY($3::int8[]) AND kind = 0"
     "  AND NOT is_read RETURNING 1),"
     " n AS (INSERT INTO notice_user_state (uid, app_id, notice_id, is_read, hidden)"
     "  SELECT $2::int8, $1::int8, x.notice_id, true, false FROM notice x"
     "  WHERE x.notice_id IN (SELECT DISTINCT unnest($4::int8[])) AND x.app_id = $1::int8"
     "  AND NOT x.deleted"
     "  ON CONFLICT (uid, app_id, notice_id) DO UPDATE SET is_read = true"
     "  WHERE NOT notice_user_state.is_read RETURNING 1)"
     " SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM n)"
     " WHERE " FENCE_WRITE},
    {SQL_READ_SHARD, 4,
     "WITH m AS (UPDATE message SET is_read = true"
     "  WHERE uid = $2::int8 AND app_id = $1::int8 AND msg_id = ANY($3::int8[]) AND kind = 0"
     "  AND NOT is_read RETURNING 1),"
     " n AS (INSERT INTO notice_user_state (uid, app_id, notice_id, is_read, hidden)"
     "  SELECT DISTINCT $2::int8, $1::int8, x, true, false FROM unnest($4::int8[]) AS x"
     "  ON CONFLICT (uid, app_id, notice_id) DO UPDATE SET is_read = true"
     "  WHERE NOT notice_user_state.is_read RETURNING 1)"
     " SELECT (SELECT count(*) FROM m), (SELECT count(*) FROM n)"
     " WHERE " FENCE_WRITE},
    {SQL_RECALL, 6,
     "WITH target AS ("
     "  SELECT msg_id, recalled, expire_at FROM message"
     "  WHERE uid = $2 AND app_id = $1 AND kind = 0"
     "  AND (($3::int8 <> 0 AND msg_id = $3::int8) OR ($3::int8 = 0 AND msgkey = $4::text))"
     "), prev AS ("
     "  SELECT msg_id FROM message WHERE uid = $2 AND app_id = $1 AND kind = 1"
     "  AND recalled_msg_id = (SELECT msg_id FROM target) LIMIT 1"
     "), hdr AS ("
     "  UPDATE mailbox h SET last_msg_id = GREATEST(" NOW_US ", h.last_msg_id + 1)"
     "  WHERE h.uid = $2 AND h.app_id = $1 AND EXISTS (SELECT 1 FROM target WHERE NOT recalled)"
     "  RETURNING h.last_msg_id"
     "), mark AS ("
     "  UPDATE message SET recalled = true WHERE uid = $2 AND app_id = $1"
     "  AND msg_id = (SELECT msg_id FROM target) AND NOT recalled AND EXISTS (SELECT 1 FROM hdr)"
     "  RETURNING 1"
     "), ins AS ("
     "  INSERT INTO message (uid, app_id, msg_id, kind, recalled_msg_id, create_time, expire_at)"
     /* The recall lives at least as long as the message it recalls. */
     "  SELECT $2, $1, hdr.last_msg_id, 1, (SELECT msg_id FROM target), $5,"
     "  GREATEST($6::int8, (SELECT expire_at FROM target)) FROM hdr"
     "  WHERE EXISTS (SELECT 1 FROM mark)"
     "  RETURNING msg_id"
     ")"
     /* target_was_recalled without a previous recall row: retention deleted
      * that row (a concurrent recall shows the target not yet recalled). */
     " SELECT (SELECT msg_id FROM target), (SELECT msg_id FROM ins), (SELECT msg_id FROM prev),"
     " (SELECT count(*) FROM mark), (SELECT recalled FROM target)"
     " WHERE " FENCE_WRITE},
    {SQL_NOTICE_CREATE, 19,
     "WITH ins AS (INSERT INTO notice (app_id, title, content, category, type, priority,"
     "  business_type, start_at, expire_at, platforms, min_core_level, max_core_level,"
     "  login_only, notify_mode, notify_rate, template, created_by, created_at, updated_by,"
     "  updated_at)"
     "  VALUES ($1::int8, $2::text, $3::bytea, $4::int4, $5::int4, $6::int4, $7::int4,"
     "  $8::int8, $9::int8, $10::text[], $11::int8, $12::int8, $13::bool, $14::text,"
     "  $15::int4, $16::bool, $17::text, $18::int8, $17::text, $18::int8)"
     "  RETURNING *),"
     " aud AS (INSERT INTO audit_log (at, actor, action, notice_id, app_id, body)"
     "  SELECT $18::int8, $17::text, 'create', notice_id, app_id, $19::text FROM ins)"
     " SELECT " NOTICE_COLS " FROM ins"},
    {SQL_NOTICE_GET, 1,
     "SELECT " NOTICE_COLS " FROM notice WHERE notice_id = $1::int8 AND NOT deleted"},
    {SQL_NOTICE_LIST, 3,
     "SELECT " NOTICE_COLS " FROM notice WHERE NOT deleted"
     " AND ($1::int8 = 0 OR app_id = $1::int8) AND ($2::text = '' OR state = $2::text)"
     " ORDER BY notice_id DESC LIMIT $3::int4"},
    {SQL_NOTICE_TRANSITION, 9,
     "WITH cur AS (SELECT notice_id, state, version FROM notice"
     "  WHERE notice_id = $1::int8 AND NOT deleted),"
     " head AS (" NEXT_SEQ " AND EXISTS (SELECT 1 FROM cur WHERE state = ANY($3::text[])"
     "  AND ($9::int4 = 0 OR version = $9::int4))"
     "  RETURNING seq),"
     " upd AS (UPDATE notice n SET"
     "  state = CASE WHEN NOT $8::bool THEN $2::text"
     "   WHEN n.state = 'prepublished' THEN 'retracted' ELSE n.state END,"
     "  deleted = $8::bool, seq = head.seq,"
     /* gray_seq: the seq at which this version reached the whitelist, only
      * when it was visible then (activated); a publish keeps it. */
     "  gray_seq = CASE WHEN $2::text = 'prepublished' AND (n.activated OR n.start_at <= $5::int8)"
     "   THEN head.seq ELSE n.gray_seq END,"
     "  msg_id = CASE WHEN n.msg_id = 0 AND $2::text IN ('prepublished', 'published')"
     "   THEN GREATEST($5::int8, n.start_at) ELSE n.msg_id END,"
     "  activated = CASE WHEN $2::text IN ('prepublished', 'published')"
     "   THEN n.activated OR n.start_at <= $5::int8 ELSE n.activated END,"
     "  updated_by = $4::text, updated_at = $5::int8"
     "  FROM head WHERE n.notice_id = $1::int8 AND n.state = ANY($3::text[]) AND NOT n.deleted"
     "  AND ($9::int4 = 0 OR n.version = $9::int4)"
     "  RETURNING n.*),"
     " aud AS (INSERT INTO audit_log (at, actor, action, notice_id, app_id, body)"
     "  SELECT $5::int8, $4::text, $6::text, notice_id, app_id, $7::text FROM upd)"
     " SELECT (SELECT state FROM cur) AS prev_state, (SELECT version FROM cur) AS "
     "prev_version, " NOTICE_COLS " FROM (SELECT 1) one LEFT JOIN upd ON true"},
    {SQL_NOTICE_PATCH, 21,
     "WITH cur AS (SELECT notice_id, state, version FROM notice"
     "  WHERE notice_id = $1::int8 AND NOT deleted),"
     /* $21: the operator is an editor, who may not change what every user
      * already sees (a published notice). */
     " ok AS (SELECT 1 FROM cur WHERE state IN ('draft', 'prepublished', 'published')"
     "  AND version = $2::int4 AND NOT ($21::bool AND state = 'published')),"
     " head AS (" NEXT_SEQ " AND EXISTS (SELECT 1 FROM ok)"
     "  AND EXISTS (SELECT 1 FROM cur WHERE state IN ('prepublished', 'published'))"
     "  RETURNING seq),"
     " upd AS (UPDATE notice n SET version = n.version + 1,"
     "  seq = COALESCE((SELECT seq FROM head), n.seq),"
     "  gray_seq = CASE WHEN n.state = 'prepublished' AND $9::int8 <= $19::int8"
     "   THEN (SELECT seq FROM head) WHEN n.state IN ('prepublished', 'published') THEN 0"
     "   ELSE n.gray_seq END,"
     "  title = $3::text, content = $4::bytea, category = $5::int4, type = $6::int4,"
     "  priority = $7::int4, business_type = $8::int4, start_at = $9::int8,"
     "  expire_at = $10::int8, platforms = $11::text[], min_core_level = $12::int8,"
     "  max_core_level = $13::int8, login_only = $14::bool, notify_mode = $15::text,"
     "  notify_rate = $16::int4, template = $17::bool,"
     "  activated = CASE WHEN n.state IN ('prepublished', 'published')"
     "   THEN $9::int8 <= $19::int8 ELSE n.activated END,"
     "  updated_by = $18::text, updated_at = $19::int8"
     "  WHERE n.notice_id = $1::int8 AND EXISTS (SELECT 1 FROM ok)"
     /* The state read with the version must still hold (a transition
      * racing the edit makes this a 409, not an edit without a seq). */
     "  AND n.version = $2::int4 AND n.state = (SELECT state FROM cur)"
     "  AND n.state IN ('draft', 'prepublished', 'published')"
     "  RETURNING n.*),"
     " aud AS (INSERT INTO audit_log (at, actor, action, notice_id, app_id, body)"
     "  SELECT $19::int8, $18::text, 'edit', notice_id, app_id, $20::text FROM upd)"
     " SELECT (SELECT state FROM cur) AS prev_state, (SELECT version FROM cur) AS "
     "prev_version, " NOTICE_COLS " FROM (SELECT 1) one LEFT JOIN upd ON true"},
    {SQL_NOTICE_USER_STATE, 3,
     "SELECT notice_id, is_read, hidden FROM notice_user_state"
     " WHERE uid = $2::int8 AND app_id = $1::int8 AND notice_id = ANY($3::int8[])"
     " LIMIT CASE WHEN " FENCE_READ " THEN NULL::int8 END"},
    {SQL_NOTICE_USER_MARK, 5,
     "INSERT INTO notice_user_state (uid, app_id, notice_id, is_read, hidden)"
     " SELECT $2::int8, $1::int8, id, $4::bool, $5::bool FROM unnest($3::int8[]) AS id"
     " WHERE " FENCE_WRITE " ON CONFLICT (uid, app_id, notice_id) DO UPDATE SET"
     " is_read = notice_user_state.is_read OR EXCLUDED.is_read,"
     " hidden = notice_user_state.hidden OR EXCLUDED.hidden"},
    {SQL_WHITELIST_CHANGE, 6,
     /* migrations/0003: takes the head lock first, then reads. */
     "SELECT added, removed, renumbered FROM mbox_whitelist_change($1::int8, $2::int8[],"
     " $3::text, $4::text, $5::int8, $6::text)"},
    {SQL_WHITELIST_LIST, 1, "SELECT uid FROM whitelist WHERE app_id = $1::int8 ORDER BY uid"},
    {SQL_WHITELIST_MISSING, 2,
     "SELECT count(*) FROM unnest($2::int8[]) AS u WHERE NOT EXISTS"
     " (SELECT 1 FROM whitelist w WHERE w.app_id = $1::int8 AND w.uid = u)"},
    {SQL_AUDIT_LIST, 2,
     "SELECT id, at, actor, action, notice_id, app_id, body FROM audit_log"
     " WHERE $1::int8 = 0 OR notice_id = $1::int8 ORDER BY id DESC LIMIT $2::int4"},
    {SQL_REACH_DUE, 2,
     "SELECT notice_id FROM notice n WHERE NOT deleted AND state IN ('prepublished', 'published')"
     " AND NOT EXISTS (SELECT 1 FROM notice_reach r WHERE r.notice_id = n.notice_id"
     "  AND r.at = $1::int8) ORDER BY notice_id LIMIT $2::int4"},
    /* One writer at a time (the transaction-scoped advisory lock: the
     * others write nothing), and one sample per interval (the key). */
    {SQL_REACH_RECORD, 3,
     "INSERT INTO notice_reach (notice_id, at, reach)"
     " SELECT s.id, $1::int8, s.reach FROM unnest($2::int8[], $3::int8[]) AS s(id, reach)"
     " JOIN notice n ON n.notice_id = s.id"
     " WHERE (SELECT pg_try_advisory_xact_lock(" REACH_LOCK_KEY "))"
     " ON CONFLICT DO NOTHING"},
    {SQL_REACH_SERIES, 2,
     "SELECT at, reach FROM notice_reach WHERE notice_id = $1::int8 ORDER BY at DESC"
     " LIMIT $2::int4"},
    {SQL_REACH_PRUNE, 1, "DELETE FROM notice_reach WHERE at < $1::int8"},
    {SQL_RETENTION, 2,
     "DELETE FROM message WHERE (uid, app_id, msg_id) IN"
     " (SELECT uid, app_id, msg_id FROM message WHERE expire_at <= $1::int8 LIMIT $2::int4)"},
};

const char *
sql_text(const char *name)
{
    for (size_t i = 0; i < sizeof(statements) / sizeof(statements[0]); i++) {
        if (strcmp(statements[i].name, name) == 0)
            return statements[i].text;
    }
    return NULL;
}

bool
sql_prepare_all(struct pg_pool *pg)
{
    for (size_t i = 0; i < sizeof(statements) / sizeof(statements[0]); i++) {
        if (!pg_pool_prepare(pg, statements[i].name, statements[i].text, statements[i].nparams,
                             NULL))
            return false;
    }
    return true;
}
