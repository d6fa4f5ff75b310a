/*
 * bucket_move: moving one bucket's private rows to another shard
 * (bucket_move.h). The protocol and why it is safe with several logicd
 * that cache the map: docs/architecture.md, "Moving a bucket".
 *
 *   1. public: the bucket's map row becomes 'moving' (version + 1);
 *   2. source: fence 'copying' (writes go on and log their mailbox in
 *      bucket_change), then a wait for the transactions in flight;
 *   3. the first copy: one source snapshot (the log rows it sees are
 *      deleted in it), on the target in one transaction: leftovers of an
 *      earlier attempt deleted, every row copied (msg_ids unchanged),
 *      fence 'incoming'. Writes are not fenced: this is the long part;
 *   4. catch-up passes, still unfenced: each re-copies only the mailboxes
 *      logged since the previous snapshot, until a pass is short;
 *   5. source: fence 'moving' (writes fail), the wait again, the final
 *      pass: the mailboxes written during the last unfenced pass;
 *   6. public: the map row names the target, 'active' (version + 1);
 *   7. the target's fence lifted: writes resume there;
 *   8. every other shard with a fence for the bucket: 'moved' for good,
 *      then its rows (and log rows) of the bucket deleted.
 * Writes are fenced from 5 to 7 only.
 *
 * Error lines name a shard by its position, never by its URI.
 */
#include "bucket_move.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <libpq-fe.h>

#include "shard.h"
#include "shard_db.h"

/* One mover per bucket: a session advisory lock on the public database
 * (two int4 keys, apart from the single-key locks of migrate.c and sql.c). */
#define MOVER_LOCK_CLASS "7204313"

/* Catch-up passes end when one took less than this (the final, fenced
 * pass then has about as much to copy), or after CATCHUP_MAX_PASSES. */
#define CATCHUP_SHORT_US   (150 * 1000)
#define CATCHUP_MAX_PASSES 12
/* Longest wait for the transactions in flight after a fence change. */
#define IN_FLIGHT_WAIT_MS 10000

/* The private tables and the columns a copy carries (migrations/0001). */
static const struct {
    const char *table;
    const char *cols;
} private_tables[3] = {
    {"mailbox", "uid, app_id, last_msg_id"},
    {"message", "uid, app_id, msg_id, kind, from_uid, to_uid, contacter, create_time, expire_at,"
                " is_read, category, type, priority, business_type, msgkey, content,"
                " recalled_msg_id, recalled"},
    {"notice_user_state", "uid, app_id, notice_id, is_read, hidden"},
};

static int64_t
now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* The connections of one run. */
struct mover {
    PGconn *pub;
    PGconn *shard[LOGIC_MAX_SHARDS];
    int n;
    char bnum[16]; /* the bucket as text, the parameter of every statement */
    FILE *out;
    char *err;
    size_t errlen;
};

/* Runs sql on c with the bucket as $1 (when it uses it); the result when its status is want. */
static PGresult *
run(struct mover *mv, PGconn *c, const char *what, const char *sql, ExecStatusType want)
{
    const char *p[1] = {mv->bnum};
    PGresult *r = PQexecParams(c, sql, strstr(sql, "$1") ? 1 : 0, NULL, p, NULL, NULL, 0);
    if (PQresultStatus(r) == want)
        return r;
    snprintf(mv->err, mv->errlen, "%s: %s", what, PQresultErrorMessage(r));
    mv->err[strcspn(mv->err, "\n")] = '\0';
    PQclear(r);
    return NULL;
}

static bool
run_cmd(struct mover *mv, PGconn *c, const char *what, const char *sql)
{
    PGresult *r = run(mv, c, what, sql, PGRES_COMMAND_OK);
    PQclear(r);
    return r != NULL;
}

static bool
run_rows(struct mover *mv, PGconn *c, const char *what, const char *sql)
{
    PGresult *r = run(mv, c, what, sql, PGRES_TUPLES_OK);
    PQclear(r);
    return r != NULL;
}

/* An earlier step failed: leaves the connection usable for nothing else. */
static void
rollback(PGconn *c)
{
    PQclear(PQexec(c, "ROLLBACK"));
}

/*
 * A test hook: LOGICD_MOVE_CRASH_AFTER=N ends the process right after step
 * N, as a crash there would (tests/integration/test_bucket_move.c).
 */
static void
crash_point(int step)
{
    const char *s = getenv("LOGICD_MOVE_CRASH_AFTER");
    if (s != NULL && atoi(s) == step) {
        fflush(NULL);
        _exit(3);
    }
}

/*
 * Bumps the map version and sets the bucket's row, in one transaction on
 * the public database, so a poller reading the rows newer than its version
 * sees the change (shard_db_refresh).
 */
static bool
map_set(struct mover *mv, int shard, const char *state)
{
    char snum[16];
    snprintf(snum, sizeof(snum), "%d", shard);
    const char *p[3] = {mv->bnum, snum, state};
    if (!run_cmd(mv, mv->pub, "public database", "BEGIN"))
        return false;
    PGresult *r =
        PQexecParams(mv->pub,
                     "WITH v AS (UPDATE shard_cluster SET version = version + 1 WHERE id = 1"
                     "  RETURNING version)"
                     " UPDATE bucket_map SET shard = $2::int4, state = $3::text,"
                     "  version = (SELECT version FROM v) WHERE bucket = $1::int4",
                     3, NULL, p, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK && strcmp(PQcmdTuples(r), "1") == 0;
    if (!ok) {
        snprintf(mv->err, mv->errlen, "public database: cannot update the map: %s",
                 PQresultErrorMessage(r));
        mv->err[strcspn(mv->err, "\n")] = '\0';
    }
    PQclear(r);
    if (!ok) {
        rollback(mv->pub);
        return false;
    }
    return run_cmd(mv, mv->pub, "public database", "COMMIT");
}

/* The condition selecting the bucket's rows (a scan: no index on the bucket). */
#define BUCKET_ROWS "mbox_bucket(app_id, uid) = "

/* The condition selecting the rows of the mailboxes of a pass (its temp table). */
#define PASS_ROWS "(uid, app_id) IN (SELECT uid, app_id FROM move_pass)"

/*
 * Copies table t's rows matching `where` from src to dst with COPY (inside
 * both connections' open transactions). COPY takes no parameters, so the
 * condition is part of the text: the bucket in it is a number this file
 * formatted, the table and columns are constants above.
 */
static bool
copy_table(struct mover *mv, PGconn *src, PGconn *dst, int t, const char *where, const char *what,
           long *rows)
{
    char sql[768];
    snprintf(sql, sizeof(sql), "COPY (SELECT %s FROM %s WHERE %s) TO STDOUT",
             private_tables[t].cols, private_tables[t].table, where);
    PGresult *r = PQexec(src, sql);
    bool ok = PQresultStatus(r) == PGRES_COPY_OUT;
    if (!ok)
        snprintf(mv->err, mv->errlen, "source shard: %s", PQresultErrorMessage(r));
    PQclear(r);
    if (!ok)
        return false;
    snprintf(sql, sizeof(sql), "COPY %s (%s) FROM STDIN", private_tables[t].table,
             private_tables[t].cols);
    r = PQexec(dst, sql);
    bool in = PQresultStatus(r) == PGRES_COPY_IN;
    if (!in)
        snprintf(mv->err, mv->errlen, "%s: %s", what, PQresultErrorMessage(r));
    PQclear(r);
    /* Drains the source even when the target refused, so both stay usable. */
    char *buf = NULL;
    int len;
    while ((len = PQgetCopyData(src, &buf, 0)) > 0) {
        if (in && PQputCopyData(dst, buf, len) != 1) {
            snprintf(mv->err, mv->errlen, "%s: %s", what, PQerrorMessage(dst));
            in = ok = false;
        }
        (*rows)++;
        PQfreemem(buf);
    }
    r = PQgetResult(src);
    if (len == -2 || PQresultStatus(r) != PGRES_COMMAND_OK) {
        snprintf(mv->err, mv->errlen, "source shard: %s", PQresultErrorMessage(r));
        ok = false;
    }
    PQclear(r);
    while ((r = PQgetResult(src)) != NULL)
        PQclear(r);
    if (in) {
        if (PQputCopyEnd(dst, ok ? NULL : "source failed") != 1)
            ok = false;
        r = PQgetResult(dst);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            if (ok)
                snprintf(mv->err, mv->errlen, "%s: %s", what, PQresultErrorMessage(r));
            ok = false;
        }
        PQclear(r);
        while ((r = PQgetResult(dst)) != NULL)
            PQclear(r);
    } else {
        ok = false;
    }
    mv->err[strcspn(mv->err, "\n")] = '\0';
    return ok;
}

/*
 * After a fence change committed on c: waits until every client
 * transaction that was running in c's database then has ended. A writer
 * reads the fence in its own transaction without a lock (so that a shard
 * without fences pays nothing), so one that read the old state can still
 * commit after the change; once those have ended, every later commit has
 * seen the new state. Each transaction holds the lock on its own virtual
 * id for its whole life, which is what pg_locks shows. Fails after
 * IN_FLIGHT_WAIT_MS (a session left idle in a transaction, say).
 */
static bool
wait_in_flight(struct mover *mv, PGconn *c, const char *what, int64_t *waited_us)
{
    int64_t t0 = now_us();
    PGresult *r = run(mv, c, what,
                      "SELECT COALESCE(array_agg(l.virtualxid), '{}')::text"
                      " FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                      " WHERE l.locktype = 'virtualxid' AND l.granted"
                      "  AND l.virtualxid = l.virtualtransaction AND l.pid <> pg_backend_pid()"
                      "  AND a.datname = current_database() AND a.backend_type = 'client backend'",
                      PGRES_TUPLES_OK);
    if (r == NULL)
        return false;
    char *vxids = strdup(PQgetvalue(r, 0, 0));
    PQclear(r);
    if (vxids == NULL) {
        snprintf(mv->err, mv->errlen, "out of memory");
        return false;
    }
    const char *p[1] = {vxids};
    bool ok = false;
    for (;;) {
        r = PQexecParams(c,
                         "SELECT count(*) FROM pg_locks WHERE locktype = 'virtualxid' AND granted"
                         " AND virtualxid = ANY($1::text[])",
                         1, NULL, p, NULL, NULL, 0);
        if (PQresultStatus(r) != PGRES_TUPLES_OK) {
            snprintf(mv->err, mv->errlen, "%s: %s", what, PQresultErrorMessage(r));
            mv->err[strcspn(mv->err, "\n")] = '\0';
            PQclear(r);
            break;
        }
        bool none = atoi(PQgetvalue(r, 0, 0)) == 0;
        PQclear(r);
        if (none) {
            ok = true;
            break;
        }
        if (now_us() - t0 > (int64_t)IN_FLIGHT_WAIT_MS * 1000) {
            snprintf(mv->err, mv->errlen,
                     "%s: a transaction has been running for more than %d ms (see "
                     "pg_stat_activity); the move waits for it",
                     what, IN_FLIGHT_WAIT_MS);
            break;
        }
        usleep(1000);
    }
    free(vxids);
    *waited_us = now_us() - t0;
    return ok;
}

/* Steps 2 and 5: the source's fence becomes state, then the wait. */
static bool
fence_source(struct mover *mv, int src, const char *state, int64_t *waited_us)
{
    const char *p[2] = {mv->bnum, state};
    PGresult *r = PQexecParams(mv->shard[src],
                               "INSERT INTO bucket_fence (bucket, state) VALUES ($1::int4, $2)"
                               " ON CONFLICT (bucket) DO UPDATE SET state = $2, since = now()",
                               2, NULL, p, NULL, NULL, 0);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        snprintf(mv->err, mv->errlen, "source shard: %s", PQresultErrorMessage(r));
        mv->err[strcspn(mv->err, "\n")] = '\0';
    }
    PQclear(r);
    return ok && wait_in_flight(mv, mv->shard[src], "source shard", waited_us);
}

/*
 * The copy names its columns; a column a later migration adds to a private
 * table would be left behind without a word. Refuses the move until
 * private_tables[] lists every column of each table on shard i.
 */
static bool
columns_known(struct mover *mv, int i)
{
    for (int t = 0; t < 3; t++) {
        int want = 1;
        for (const char *c = private_tables[t].cols; *c; c++)
            want += *c == ',';
        const char *p[1] = {private_tables[t].table};
        PGresult *r = PQexecParams(mv->shard[i],
                                   "SELECT count(*) FROM information_schema.columns"
                                   " WHERE table_schema = current_schema() AND table_name = $1",
                                   1, NULL, p, NULL, NULL, 0);
        bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1 &&
                  atoi(PQgetvalue(r, 0, 0)) == want;
        if (!ok)
            snprintf(mv->err, mv->errlen,
                     "shard %d: table %s has other columns than the mover copies (%d): update "
                     "bucket_move.c with the migration",
                     i, private_tables[t].table, want);
        PQclear(r);
        if (!ok)
            return false;
    }
    return true;
}

/*
 * Step 3: the target gets the source's rows as one snapshot shows them,
 * fenced 'incoming'. The same snapshot deletes the log rows it sees: the
 * copy holds their writes, and every write it misses logged a row it
 * cannot see, left for the first catch-up pass. The target commits
 * first: a crash between the two commits only leaves log rows that the
 * next pass copies again.
 */
static bool
copy_all(struct mover *mv, int src, int to, long *rows)
{
    PGconn *s = mv->shard[src], *d = mv->shard[to];
    if (!run_cmd(mv, s, "source shard", "BEGIN ISOLATION LEVEL REPEATABLE READ") ||
        !run_cmd(mv, s, "source shard", "DELETE FROM bucket_change WHERE bucket = $1::int4")) {
        rollback(s);
        return false;
    }
    char where[64];
    snprintf(where, sizeof(where), BUCKET_ROWS "%s", mv->bnum);
    bool ok = run_cmd(mv, d, "target shard", "BEGIN");
    for (int t = 0; ok && t < 3; t++) {
        char sql[160];
        snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE " BUCKET_ROWS "$1::int4",
                 private_tables[t].table);
        ok = run_cmd(mv, d, "target shard", sql);
    }
    for (int t = 0; ok && t < 3; t++)
        ok = copy_table(mv, s, d, t, where, "target shard", &rows[t]);
    ok = ok &&
         run_cmd(mv, d, "target shard",
                 "INSERT INTO bucket_fence (bucket, state) VALUES ($1::int4, 'incoming')"
                 " ON CONFLICT (bucket) DO UPDATE SET state = 'incoming', since = now()") &&
         run_cmd(mv, d, "target shard", "COMMIT");
    if (!ok) {
        rollback(d);
        rollback(s);
        return false;
    }
    return run_cmd(mv, s, "source shard", "COMMIT");
}

/* What one catch-up pass did. */
struct pass {
    long mailboxes;
    long rows;
    int64_t us;
};

/*
 * Steps 4 and 5: one catch-up pass. In one source snapshot, the log rows
 * it sees are deleted and their mailboxes (a temp table) copied again,
 * whole: on the target their rows are deleted and replaced, in one
 * transaction. A whole mailbox, because a write may also change older
 * rows (a read mark, a recall); the mailboxes come from the log, never
 * from a scan, so a pass costs what was written since the previous one.
 */
static bool
catch_up(struct mover *mv, int src, int to, struct pass *ps)
{
    PGconn *s = mv->shard[src], *d = mv->shard[to];
    int64_t t0 = now_us();
    memset(ps, 0, sizeof(*ps));
    if (!run_cmd(mv, s, "source shard", "BEGIN ISOLATION LEVEL REPEATABLE READ") ||
        !run_cmd(mv, s, "source shard",
                 "CREATE TEMP TABLE move_pass (uid bigint, app_id bigint,"
                 " PRIMARY KEY (uid, app_id)) ON COMMIT DROP") ||
        !run_cmd(mv, s, "source shard",
                 "WITH d AS (DELETE FROM bucket_change WHERE bucket = $1::int4"
                 "  RETURNING uid, app_id)"
                 " INSERT INTO move_pass SELECT DISTINCT uid, app_id FROM d") ||
        !run_cmd(mv, s, "source shard", "ANALYZE move_pass")) {
        rollback(s);
        return false;
    }
    PGresult *r = run(mv, s, "source shard",
                      "SELECT count(*), COALESCE(array_agg(uid), '{}')::text,"
                      " COALESCE(array_agg(app_id), '{}')::text FROM move_pass",
                      PGRES_TUPLES_OK);
    if (r == NULL) {
        rollback(s);
        return false;
    }
    ps->mailboxes = atol(PQgetvalue(r, 0, 0));
    bool ok = true;
    if (ps->mailboxes > 0) {
        const char *p[2] = {PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 2)};
        ok = run_cmd(mv, d, "target shard", "BEGIN");
        for (int t = 0; ok && t < 3; t++) {
            char sql[200];
            snprintf(sql, sizeof(sql),
                     "DELETE FROM %s t USING unnest($1::int8[], $2::int8[]) AS p(uid, app_id)"
                     " WHERE t.uid = p.uid AND t.app_id = p.app_id",
                     private_tables[t].table);
            PGresult *dr = PQexecParams(d, sql, 2, NULL, p, NULL, NULL, 0);
            ok = PQresultStatus(dr) == PGRES_COMMAND_OK;
            if (!ok) {
                snprintf(mv->err, mv->errlen, "target shard: %s", PQresultErrorMessage(dr));
                mv->err[strcspn(mv->err, "\n")] = '\0';
            }
            PQclear(dr);
        }
        for (int t = 0; ok && t < 3; t++)
            ok = copy_table(mv, s, d, t, PASS_ROWS, "target shard", &ps->rows);
        ok = ok && run_cmd(mv, d, "target shard", "COMMIT");
        if (!ok)
            rollback(d);
    }
    PQclear(r);
    if (!ok) {
        rollback(s);
        return false;
    }
    ok = run_cmd(mv, s, "source shard", "COMMIT");
    ps->us = now_us() - t0;
    return ok;
}

/*
 * Step 8 on shard i, which the map no longer names: 'moved' for good,
 * then its copy of the rows deleted. Only shards with a fence for the
 * bucket (a source, or the target of an attempt abandoned for another)
 * can hold its rows.
 */
static bool
retire(struct mover *mv, int i, bool *had)
{
    char what[48];
    snprintf(what, sizeof(what), "shard %d", i);
    PGresult *r = run(mv, mv->shard[i], what,
                      "UPDATE bucket_fence SET state = 'moved', since = now()"
                      " WHERE bucket = $1::int4 RETURNING 1",
                      PGRES_TUPLES_OK);
    if (r == NULL)
        return false;
    *had = PQntuples(r) > 0;
    PQclear(r);
    if (!*had)
        return true;
    crash_point(8);
    for (int t = 0; t < 3; t++) {
        char sql[160];
        snprintf(sql, sizeof(sql), "DELETE FROM %s WHERE " BUCKET_ROWS "$1::int4",
                 private_tables[t].table);
        if (!run_cmd(mv, mv->shard[i], what, sql))
            return false;
    }
    return run_cmd(mv, mv->shard[i], what, "DELETE FROM bucket_change WHERE bucket = $1::int4");
}

static void
mover_close(struct mover *mv)
{
    if (mv->pub != NULL)
        PQfinish(mv->pub);
    for (int i = 0; i < mv->n; i++) {
        if (mv->shard[i] != NULL)
            PQfinish(mv->shard[i]);
    }
}

/* Connects to the public database and every shard (distinct connections). */
static bool
mover_open(struct mover *mv, const char *public_conninfo, char *const *shards, int n)
{
    mv->pub = PQconnectdb(public_conninfo);
    if (PQstatus(mv->pub) != CONNECTION_OK) {
        snprintf(mv->err, mv->errlen, "cannot connect to the public database: %s",
                 PQerrorMessage(mv->pub));
        mv->err[strcspn(mv->err, "\n")] = '\0';
        return false;
    }
    for (int i = 0; i < n; i++) {
        mv->shard[i] = PQconnectdb(shards[i]);
        mv->n = i + 1;
        if (PQstatus(mv->shard[i]) != CONNECTION_OK) {
            snprintf(mv->err, mv->errlen, "cannot connect to pg_shards entry %d: %s", i + 1,
                     PQerrorMessage(mv->shard[i]));
            mv->err[strcspn(mv->err, "\n")] = '\0';
            return false;
        }
    }
    return true;
}

/* The bucket's map row: its shard and whether it is 'moving'. */
static bool
map_row(struct mover *mv, int *shard, bool *moving)
{
    PGresult *r =
        run(mv, mv->pub, "public database",
            "SELECT shard, state FROM bucket_map WHERE bucket = $1::int4", PGRES_TUPLES_OK);
    if (r == NULL)
        return false;
    bool ok = PQntuples(r) == 1;
    if (ok) {
        *shard = atoi(PQgetvalue(r, 0, 0));
        *moving = strcmp(PQgetvalue(r, 0, 1), "moving") == 0;
    } else {
        snprintf(mv->err, mv->errlen, "the bucket map has no row for bucket %s", mv->bnum);
    }
    PQclear(r);
    return ok;
}

/*
 * A failure while the source is fenced and the map still names it: the
 * fence goes back to 'copying' (best effort), so writes resume there until
 * the move is run again.
 */
static void
unfence_source(struct mover *mv, int src)
{
    rollback(mv->shard[src]);
    PQclear(PQexecParams(mv->shard[src],
                         "UPDATE bucket_fence SET state = 'copying', since = now()"
                         " WHERE bucket = $1::int4 AND state = 'moving'",
                         1, NULL, (const char *const[]){mv->bnum}, NULL, NULL, 0));
}

/* Steps 1 to 7 from shard src; the report's times and counts. */
static bool
move_rows(struct mover *mv, int src, int to, bool moving, struct bucket_move_report *rep)
{
    if (!columns_known(mv, src) || !columns_known(mv, to))
        return false;
    if (!moving && !map_set(mv, src, "moving"))
        return false;
    fprintf(mv->out, "bucket %s: 1. map says 'moving' (shard %d)\n", mv->bnum, src);
    crash_point(1);
    int64_t waited = 0, t = now_us();
    if (!fence_source(mv, src, "copying", &waited))
        return false;
    fprintf(mv->out,
            "bucket %s: 2. shard %d logs the bucket's writes (waited %.1f ms for transactions "
            "in flight)\n",
            mv->bnum, src, (double)waited / 1000.0);
    crash_point(2);
    t = now_us();
    if (!copy_all(mv, src, to, rep->rows))
        return false;
    rep->copy_us = now_us() - t;
    fprintf(mv->out,
            "bucket %s: 3. copied to shard %d, writes not fenced: mailbox=%ld message=%ld "
            "notice_user_state=%ld in %.1f ms\n",
            mv->bnum, to, rep->rows[0], rep->rows[1], rep->rows[2], (double)rep->copy_us / 1000.0);
    crash_point(3);
    struct pass ps;
    do {
        if (!catch_up(mv, src, to, &ps))
            return false;
        rep->passes++;
        fprintf(mv->out,
                "bucket %s: 4. catch-up pass %d, writes not fenced: %ld mailboxes, %ld rows in "
                "%.1f ms\n",
                mv->bnum, rep->passes, ps.mailboxes, ps.rows, (double)ps.us / 1000.0);
    } while (ps.us >= CATCHUP_SHORT_US && rep->passes < CATCHUP_MAX_PASSES);
    crash_point(4);
    int64_t t_fence = now_us();
    if (!fence_source(mv, src, "moving", &rep->wait_us)) {
        unfence_source(mv, src);
        return false;
    }
    if (!catch_up(mv, src, to, &ps)) {
        unfence_source(mv, src);
        return false;
    }
    rep->final_mailboxes = ps.mailboxes;
    fprintf(mv->out,
            "bucket %s: 5. fenced on shard %d (waited %.1f ms for transactions in flight); final "
            "pass: %ld mailboxes, %ld rows in %.1f ms\n",
            mv->bnum, src, (double)rep->wait_us / 1000.0, ps.mailboxes, ps.rows,
            (double)ps.us / 1000.0);
    crash_point(5);
    if (!map_set(mv, to, "active"))
        return false;
    fprintf(mv->out, "bucket %s: 6. map says shard %d\n", mv->bnum, to);
    crash_point(6);
    if (!run_cmd(mv, mv->shard[to], "target shard",
                 "DELETE FROM bucket_fence WHERE bucket = $1::int4"))
        return false;
    rep->fenced_us = now_us() - t_fence;
    fprintf(mv->out, "bucket %s: 7. writes resume on shard %d\n", mv->bnum, to);
    crash_point(7);
    return true;
}

bool
bucket_move_run(const char *public_conninfo, char *const *shards, int n, unsigned bucket, int to,
                FILE *out, struct bucket_move_report *rep, char *err, size_t errlen)
{
    memset(rep, 0, sizeof(*rep));
    int64_t t0 = now_us();
    if (bucket >= LOGIC_BUCKETS || to < 0 || to >= n) {
        snprintf(err, errlen, "bucket %u or shard %d out of range (%d buckets, %d shards)", bucket,
                 to, LOGIC_BUCKETS, n);
        return false;
    }
    /* The same checks as a starting logicd: the list must be the map's. */
    struct shard_map *m = malloc(sizeof(*m));
    if (m == NULL || !shard_db_load(public_conninfo, shards, n, m, err, errlen)) {
        if (m == NULL)
            snprintf(err, errlen, "out of memory");
        free(m);
        return false;
    }
    free(m);
    struct mover mv = {.out = out, .err = err, .errlen = errlen};
    snprintf(mv.bnum, sizeof(mv.bnum), "%u", bucket);
    bool ok = mover_open(&mv, public_conninfo, shards, n);
    /* One mover per bucket at a time: a session lock on the public
     * database, released when this process ends, however it ends. */
    ok = ok && run_rows(&mv, mv.pub, "public database",
                        "SELECT pg_advisory_lock(" MOVER_LOCK_CLASS ", $1::int4)");
    int cur = -1;
    bool moving = false;
    ok = ok && map_row(&mv, &cur, &moving);
    if (ok) {
        rep->from = cur;
        rep->to = to;
        rep->resumed = moving;
        if (cur != to) {
            ok = move_rows(&mv, cur, to, moving, rep);
        } else {
            /* Already there: finish what a crashed run may have left. */
            ok = (!moving || map_set(&mv, to, "active")) &&
                 run_cmd(&mv, mv.shard[to], "target shard",
                         "DELETE FROM bucket_fence WHERE bucket = $1::int4");
        }
    }
    for (int i = 0; ok && i < n; i++) {
        bool had = false;
        if (i != to && !(ok = retire(&mv, i, &had)))
            break;
        if (had) {
            rep->resumed = rep->resumed || i != cur;
            fprintf(out, "bucket %u: 8. shard %d fenced 'moved', its rows deleted\n", bucket, i);
        }
    }
    mover_close(&mv);
    rep->total_us = now_us() - t0;
    if (ok)
        fprintf(out,
                "bucket %u: on shard %d (was %d)%s; copy %.1f ms and %d catch-up passes "
                "unfenced; writes fenced %.1f ms; done in %.1f ms\n",
                bucket, to, rep->from, rep->resumed ? ", finishing an earlier run" : "",
                (double)rep->copy_us / 1000.0, rep->passes, (double)rep->fenced_us / 1000.0,
                (double)rep->total_us / 1000.0);
    return ok;
}
