/*
 * sql: the statement table (see sql.h).
 *
 * msg_id assignment (SPEC section 3): a send upserts the mailbox header row
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
 */
#include "sql.h"

#include <stddef.h>

#include "pg.h"

#define NOW_US "(extract(epoch FROM clock_timestamp()) * 1000000)::int8"
#define MSG_COLS                                                                                   \
    "msg_id, kind, from_uid, to_uid, contacter, create_time, expire_at, is_read, category, "       \
    "type, priority, business_type, msgkey, content, recalled_msg_id"

struct sql_stmt {
    const char *name;
    int nparams;
    const char *text;
};

static const struct sql_stmt statements[] = {
    {SQL_SEND, 13,
     "WITH r AS ("
     "  SELECT * FROM unnest($2::int8[], $3::int8[], $4::int8[]) AS r(uid, to_uid, contacter)"
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
    {SQL_SYNC, 5,
     "SELECT h.last_msg_id, m.* FROM"
     " (SELECT COALESCE((SELECT last_msg_id FROM mailbox WHERE uid = $2 AND app_id = $1), 0)"
     "  AS last_msg_id) h"
     " LEFT JOIN LATERAL (SELECT " MSG_COLS " FROM message"
     "  WHERE uid = $2 AND app_id = $1 AND msg_id > $3 AND expire_at > $5 AND NOT recalled"
     "  ORDER BY msg_id LIMIT $4::int4) m ON true"
     " ORDER BY m.msg_id"},
    {SQL_HISTORY_ASC, 6,
     "SELECT " MSG_COLS " FROM message"
     " WHERE uid = $2 AND app_id = $1 AND kind = 0 AND NOT recalled"
     " AND msg_id >= $3 AND msg_id <= $4 AND expire_at > $6"
     " ORDER BY msg_id ASC LIMIT $5::int4"},
    {SQL_HISTORY_DESC, 6,
     "SELECT " MSG_COLS " FROM message"
     " WHERE uid = $2 AND app_id = $1 AND kind = 0 AND NOT recalled"
     " AND msg_id >= $3 AND msg_id <= $4 AND expire_at > $6"
     " ORDER BY msg_id DESC LIMIT $5::int4"},
    {SQL_READ, 3,
     "UPDATE message SET is_read = true"
     " WHERE uid = $2 AND app_id = $1 AND msg_id = ANY($3::int8[]) AND kind = 0 AND NOT is_read"},
    {SQL_RECALL, 6,
     "WITH target AS ("
     "  SELECT msg_id, recalled FROM message"
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
     "  AND msg_id = (SELECT msg_id FROM target) AND EXISTS (SELECT 1 FROM hdr) RETURNING 1"
     "), ins AS ("
     "  INSERT INTO message (uid, app_id, msg_id, kind, recalled_msg_id, create_time, expire_at)"
     "  SELECT $2, $1, hdr.last_msg_id, 1, (SELECT msg_id FROM target), $5, $6 FROM hdr"
     "  RETURNING msg_id"
     ")"
     " SELECT (SELECT msg_id FROM target), (SELECT msg_id FROM ins), (SELECT msg_id FROM prev),"
     " (SELECT count(*) FROM mark)"},
    {SQL_RETENTION, 2,
     "DELETE FROM message WHERE (uid, app_id, msg_id) IN"
     " (SELECT uid, app_id, msg_id FROM message WHERE expire_at <= $1::int8 LIMIT $2::int4)"},
};

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
