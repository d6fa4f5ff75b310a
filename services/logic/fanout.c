/*
 * fanout: write diffusion over COPY on a dedicated thread (fanout.h).
 *
 * With pg_shards the uids are split by shard (docs/design.md 3.6) and each
 * shard's part runs on a thread of its own for the job, over that shard's
 * lane (its own PostgreSQL and Redis connections, kept between jobs), so
 * the shards are written in parallel; the counts are summed.
 */
#include "fanout.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <libpq-fe.h>

#include "api_io.h"
#include "hint.h"
#include "http.h"
#include "log.h"
#include "logic.h"
#include "mbox.pb-c.h"
#include "pbjson.h"
#include "redis_block.h"
#include "sql.h"

#define FANOUT_TIMEOUT_S 3600
#define NOW_US           "(extract(epoch FROM clock_timestamp()) * 1000000)::int8"
/* The bucket fence (sql.h) of each mailbox of a batch. */
#define FENCE_WRITE_S SQL_FENCE_WRITE("$1::int8", "s.uid")

static const char fanout_insert_sql[] =
    "WITH hdr AS ("
    "  INSERT INTO mailbox AS h (uid, app_id, last_msg_id)"
    "  SELECT s.uid, $1::int8, " NOW_US " FROM (SELECT DISTINCT uid FROM fanout_stage) s"
    /* The bucket fence of a move (migrations/0006): a batch with a mailbox
     * of a bucket that is moving fails as a whole. */
    "  WHERE " FENCE_WRITE_S "  ORDER BY s.uid"
    "  ON CONFLICT (uid, app_id) DO UPDATE SET last_msg_id = GREATEST(" NOW_US
    ", h.last_msg_id + 1)"
    "  RETURNING h.uid, h.last_msg_id"
    "), ins AS ("
    "  INSERT INTO message (uid, app_id, msg_id, kind, from_uid, to_uid, contacter, create_time,"
    "    expire_at, category, type, priority, business_type, content)"
    "  SELECT uid, $1::int8, last_msg_id, 0, $2::int8, uid, $2::int8, $3::int8, $4::int8,"
    "    $5::int4, $6::int4, $7::int4, $8::int4, $9::bytea FROM hdr"
    "  RETURNING msg_id"
    ") SELECT count(*), COALESCE(min(msg_id), 0), COALESCE(max(msg_id), 0) FROM ins";

struct fanout_job {
    struct fanout_job *next;
    struct logic_worker *w; /* the worker whose loop gets the reply */
    struct http_req *r;
    int64_t *uids;
    size_t nuids;
    uint64_t app_id, from_uid;
    int32_t category, type, priority, business_type;
    uint8_t *content;
    size_t content_len;
    int64_t create_time, expire_at;
    /* uids of committed batches whose hints the fanout thread could not
     * invalidate: handed to the worker's hint path (hint.h) before the reply */
    uint64_t *hint_failed;
    size_t nhint_failed;
    /* results */
    uint64_t written, first_id, last_id;
    uint32_t batches;
    int64_t elapsed_us;
    char error[256];
};

/* One shard's connections, used by one thread at a time. */
struct fanout_lane {
    PGconn *pg;
    struct redis_block *redis;
};

struct fanout {
    struct logic *app;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    struct fanout_job *head, *tail;
    bool stopping;
    struct fanout_lane lanes[LOGIC_MAX_SHARDS];
};

/* The uids of one job on one shard, and what writing them did. */
struct fanout_part {
    struct fanout *f;
    struct fanout_job *j;
    int shard;
    int64_t *uids;
    size_t nuids;
    pthread_t thread;
    bool threaded;
    uint64_t written, first_id, last_id;
    uint32_t batches;
    char error[256];
    uint64_t *hint_failed;
    size_t nhint_failed;
};

static void
job_free(struct fanout_job *j)
{
    free(j->uids);
    free(j->content);
    free(j->hint_failed);
    free(j);
}

/* The reply (on the worker's loop, after every hint was invalidated or remembered). */
static void
job_send_reply(void *arg)
{
    struct fanout_job *j = arg;
    if (j->error[0] != '\0' && j->written == 0) {
        http_reply_error(j->r, 503, "unavailable", "%s", j->error);
    } else {
        if (j->error[0] != '\0')
            log_warn("fanout_partial", "req=%s written=%" PRIu64 " error=%s", http_req_id(j->r),
                     j->written, j->error);
        Mbox__FanoutResponse resp = MBOX__FANOUT_RESPONSE__INIT;
        resp.has_written = resp.has_batches = resp.has_elapsed_us = 1;
        resp.written = j->written;
        resp.batches = j->batches;
        resp.elapsed_us = (uint64_t)j->elapsed_us;
        resp.has_first_msg_id = resp.has_last_msg_id = j->written > 0;
        resp.first_msg_id = j->first_id;
        resp.last_msg_id = j->last_id;
        /* 200 when complete; 503 with the count when it stopped part-way. */
        api_reply_msg(j->r, j->error[0] ? 503 : 200, &resp.base);
    }
    job_free(j);
}

/*
 * Runs on the worker's loop when the job is done. The invalidations the
 * fanout thread made join the worker's failover replay ring; those it
 * could not make go through the worker's hint_invalidate: sent again
 * now, or kept in the worker's dirty list and replayed until Redis takes
 * them (the one replay mechanism of every writer). The reply follows.
 */
static void
job_reply(evutil_socket_t fd, short what, void *arg)
{
    struct fanout_job *j = arg;
    hint_remember_acked(j->w, j->app_id, j->uids, j->nuids);
    if (j->nhint_failed == 0) {
        job_send_reply(j);
        return;
    }
    log_warn("fanout_hint_handed_over", "req=%s mailboxes=%zu", http_req_id(j->r), j->nhint_failed);
    hint_invalidate(j->w, j->app_id, j->hint_failed, (int)j->nhint_failed, job_send_reply, j);
}

/* (Re)connects a lane's PostgreSQL connection and its staging table. */
static bool
pg_ready(struct fanout *f, int shard, char *err, size_t errlen)
{
    struct fanout_lane *l = &f->lanes[shard];
    if (l->pg != NULL && PQstatus(l->pg) == CONNECTION_OK)
        return true;
    if (l->pg != NULL)
        PQfinish(l->pg);
    const char *ci = f->app->shard_conninfo[shard];
    l->pg = PQconnectdb(ci != NULL ? ci : f->app->cfg.pg_conninfo);
    if (PQstatus(l->pg) != CONNECTION_OK) {
        snprintf(err, errlen, "database unavailable: %s", PQerrorMessage(l->pg));
        err[strcspn(err, "\n")] = '\0';
        return false;
    }
    PGresult *r = PQexec(l->pg, "CREATE TEMP TABLE IF NOT EXISTS fanout_stage (uid int8)"
                                " ON COMMIT DELETE ROWS");
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        snprintf(err, errlen, "staging table: %s", PQresultErrorMessage(r));
    PQclear(r);
    return ok;
}

static bool
exec_cmd(PGconn *c, const char *sql, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, sql);
    bool ok = PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok) {
        snprintf(err, errlen, "%s", PQresultErrorMessage(r));
        err[strcspn(err, "\n")] = '\0';
    }
    PQclear(r);
    return ok;
}

/* COPYs uids into the staging table (inside the open transaction). */
static bool
copy_batch(PGconn *c, const int64_t *uids, size_t n, char *err, size_t errlen)
{
    PGresult *r = PQexec(c, "COPY fanout_stage (uid) FROM STDIN");
    bool ok = PQresultStatus(r) == PGRES_COPY_IN;
    PQclear(r);
    if (!ok) {
        snprintf(err, errlen, "COPY refused: %s", PQerrorMessage(c));
        return false;
    }
    char buf[65536];
    size_t o = 0;
    for (size_t i = 0; i < n && ok; i++) {
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "%" PRId64 "\n", uids[i]);
        if (o > sizeof(buf) - 32 || i + 1 == n) {
            ok = PQputCopyData(c, buf, (int)o) == 1;
            o = 0;
        }
    }
    ok = PQputCopyEnd(c, ok ? NULL : "aborted") == 1 && ok;
    r = PQgetResult(c);
    ok = ok && PQresultStatus(r) == PGRES_COMMAND_OK;
    if (!ok)
        snprintf(err, errlen, "COPY failed: %s", PQresultErrorMessage(r));
    PQclear(r);
    while ((r = PQgetResult(c)) != NULL)
        PQclear(r);
    return ok;
}

/*
 * Sends one batch's invalidations, pipelined per Redis node (blocking, with
 * timeouts; in cluster mode each to the master of its key's slot); false
 * if any failed.
 */
static bool
invalidate_once(struct fanout *f, struct fanout_lane *l, uint64_t app_id, const int64_t *uids,
                size_t n)
{
    if (l->redis == NULL) {
        struct redis_config rc = logic_redis_config(&f->app->cfg);
        l->redis = redis_block_new(&rc);
        if (l->redis == NULL)
            return false;
    }
    char ttl[24];
    snprintf(ttl, sizeof(ttl), "%" PRId64, f->app->cfg.hint_ttl_s);
    char **cmds = calloc(n, sizeof(*cmds));
    size_t *lens = calloc(n, sizeof(*lens));
    char(*keys)[64] = calloc(n, sizeof(*keys));
    const char **keyp = calloc(n, sizeof(*keyp));
    bool ok = cmds != NULL && lens != NULL && keys != NULL && keyp != NULL;
    for (size_t i = 0; i < n && ok; i++) {
        hint_key(keys[i], sizeof(keys[i]), app_id, (uint64_t)uids[i]);
        keyp[i] = keys[i];
        int len =
            redisFormatCommand(&cmds[i], "EVAL %s 1 %s %s", hint_invalidate_lua, keys[i], ttl);
        ok = len > 0;
        lens[i] = ok ? (size_t)len : 0;
    }
    ok = ok && redis_block_pipeline(l->redis, n, cmds, lens, keyp);
    for (size_t i = 0; cmds != NULL && i < n; i++)
        redisFreeCommand(cmds[i]);
    free(cmds);
    free(lens);
    free(keys);
    free(keyp);
    return ok;
}

/* Keeps mailboxes whose invalidation failed for the worker (job_reply). */
static void
hand_over(struct fanout_part *part, const int64_t *uids, size_t n)
{
    log_warn("fanout_hint_failed", "mailboxes=%zu (handed to the worker)", n);
    uint64_t *grown = realloc(part->hint_failed, (part->nhint_failed + n) * sizeof(*grown));
    if (grown == NULL) {
        log_error("fanout_hint_lost", "mailboxes=%zu reason=out_of_memory", n);
        return;
    }
    for (size_t i = 0; i < n; i++)
        grown[part->nhint_failed + i] = (uint64_t)uids[i];
    part->hint_failed = grown;
    part->nhint_failed += n;
}

/*
 * Invalidates the sync hints of the committed batch part->uids[off, off+n).
 * A connection that broke since the last job (a Redis restart) or a slot
 * map that changed (a failover, a slot moved: MOVED) fails on first use,
 * so a failure is retried on fresh connections with a fresh map (an
 * invalidation can be repeated safely). In Redis Cluster mode a failure
 * may also mean a master died, and with asynchronous replication it may
 * have taken invalidations of this part's earlier batches with it, so the
 * retry sends those again too (hint.h, point 4). What still fails is kept
 * for the worker.
 */
static void
invalidate_batch(struct fanout_part *part, size_t off, size_t n)
{
    struct fanout *f = part->f;
    struct fanout_lane *l = &f->lanes[part->shard];
    uint64_t app_id = part->j->app_id;
    if (invalidate_once(f, l, app_id, part->uids + off, n))
        return;
    bool cluster = f->app->cfg.redis_nodes != NULL && f->app->cfg.redis_nodes[0] != '\0';
    for (size_t o = cluster ? 0 : off; o < off + n; o += FANOUT_BATCH) {
        size_t m = off + n - o < FANOUT_BATCH ? off + n - o : FANOUT_BATCH;
        if (!invalidate_once(f, l, app_id, part->uids + o, m))
            hand_over(part, part->uids + o, m);
    }
}

/* Writes one part of a job in batches; fills the part's results. */
static void
run_part(struct fanout_part *part)
{
    struct fanout_job *j = part->j;
    PGconn **pg = &part->f->lanes[part->shard].pg;
    char num[9][24];
    snprintf(num[0], 24, "%" PRId64, (int64_t)j->app_id);
    snprintf(num[1], 24, "%" PRId64, (int64_t)j->from_uid);
    snprintf(num[2], 24, "%" PRId64, j->create_time);
    snprintf(num[3], 24, "%" PRId64, j->expire_at);
    snprintf(num[4], 24, "%d", j->category);
    snprintf(num[5], 24, "%d", j->type);
    snprintf(num[6], 24, "%d", j->priority);
    snprintf(num[7], 24, "%d", j->business_type);
    const char *values[9] = {
        num[0], num[1], num[2], num[3], num[4], num[5], num[6], num[7], (const char *)j->content};
    int lengths[9] = {0, 0, 0, 0, 0, 0, 0, 0, (int)j->content_len};
    int formats[9] = {0, 0, 0, 0, 0, 0, 0, 0, 1};

    for (size_t off = 0; off < part->nuids; off += FANOUT_BATCH) {
        size_t n = part->nuids - off < FANOUT_BATCH ? part->nuids - off : FANOUT_BATCH;
        char err[200] = "";
        if (!pg_ready(part->f, part->shard, err, sizeof(err)) ||
            !exec_cmd(*pg, "BEGIN", err, sizeof(err)) ||
            !copy_batch(*pg, part->uids + off, n, err, sizeof(err))) {
            snprintf(part->error, sizeof(part->error), "batch %u: %s", part->batches + 1, err);
            (void)exec_cmd(*pg, "ROLLBACK", err, sizeof(err));
            break;
        }
        PGresult *r = PQexecParams(*pg, fanout_insert_sql, 9, NULL, values, lengths, formats, 0);
        bool ok = PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1;
        if (!ok)
            snprintf(err, sizeof(err), "%s", PQresultErrorMessage(r));
        uint64_t written = ok ? strtoull(PQgetvalue(r, 0, 0), NULL, 10) : 0;
        uint64_t first = ok ? (uint64_t)strtoll(PQgetvalue(r, 0, 1), NULL, 10) : 0;
        uint64_t last = ok ? (uint64_t)strtoll(PQgetvalue(r, 0, 2), NULL, 10) : 0;
        PQclear(r);
        if (!ok || !exec_cmd(*pg, "COMMIT", err, sizeof(err))) {
            err[strcspn(err, "\n")] = '\0';
            snprintf(part->error, sizeof(part->error), "batch %u: %s", part->batches + 1, err);
            (void)exec_cmd(*pg, "ROLLBACK", err, sizeof(err));
            break;
        }
        if (part->written == 0 || first < part->first_id)
            part->first_id = first;
        if (last > part->last_id)
            part->last_id = last;
        part->written += written;
        part->batches++;
        invalidate_batch(part, off, n);
    }
}

static void *
part_main(void *arg)
{
    run_part(arg);
    return NULL;
}

/*
 * Splits the job's uids by shard. One database (or every uid on one
 * shard): one part over the job's own array, run on this thread.
 */
static struct fanout_part *
split_job(struct fanout *f, struct fanout_job *j, int *nparts)
{
    int nshards = f->app->nshards;
    struct fanout_part *parts = calloc((size_t)nshards, sizeof(*parts));
    size_t *count = calloc((size_t)nshards, sizeof(*count));
    bool ok = parts != NULL && count != NULL;
    for (size_t i = 0; ok && nshards > 1 && i < j->nuids; i++)
        count[logic_shard(f->app, j->app_id, (uint64_t)j->uids[i])]++;
    *nparts = 0;
    for (int s = 0; ok && s < nshards; s++) {
        if (nshards > 1 && count[s] == 0)
            continue;
        struct fanout_part *p = &parts[(*nparts)++];
        p->f = f;
        p->j = j;
        p->shard = s;
        if (nshards == 1) {
            p->uids = j->uids;
            p->nuids = j->nuids;
            break;
        }
        p->uids = malloc(count[s] * sizeof(*p->uids));
        ok = p->uids != NULL;
    }
    for (size_t i = 0; ok && nshards > 1 && i < j->nuids; i++) {
        int s = logic_shard(f->app, j->app_id, (uint64_t)j->uids[i]);
        for (int k = 0; k < *nparts; k++) {
            if (parts[k].shard == s)
                parts[k].uids[parts[k].nuids++] = j->uids[i];
        }
    }
    free(count);
    if (!ok && parts != NULL) {
        for (int k = 0; k < *nparts; k++)
            free(parts[k].uids);
        free(parts);
        parts = NULL;
    }
    return parts;
}

/* Writes one job, its shards in parallel; fills its results. */
static void
run_job(struct fanout *f, struct fanout_job *j)
{
    int64_t t0 = logic_now_us();
    int nparts = 0;
    struct fanout_part *parts = split_job(f, j, &nparts);
    if (parts == NULL) {
        snprintf(j->error, sizeof(j->error), "out of memory");
        return;
    }
    for (int k = 1; k < nparts; k++)
        parts[k].threaded = pthread_create(&parts[k].thread, NULL, part_main, &parts[k]) == 0;
    if (nparts > 0)
        run_part(&parts[0]);
    for (int k = 1; k < nparts; k++) {
        if (parts[k].threaded)
            pthread_join(parts[k].thread, NULL);
        else
            run_part(&parts[k]);
    }
    for (int k = 0; k < nparts; k++) {
        struct fanout_part *p = &parts[k];
        if (p->written > 0 && (j->written == 0 || p->first_id < j->first_id))
            j->first_id = p->first_id;
        if (p->last_id > j->last_id)
            j->last_id = p->last_id;
        j->written += p->written;
        j->batches += p->batches;
        if (p->error[0] != '\0' && j->error[0] == '\0') {
            if (nparts > 1)
                snprintf(j->error, sizeof(j->error), "shard %d %s", p->shard, p->error);
            else
                snprintf(j->error, sizeof(j->error), "%s", p->error);
        }
        if (p->nhint_failed > 0) {
            uint64_t *grown =
                realloc(j->hint_failed, (j->nhint_failed + p->nhint_failed) * sizeof(*grown));
            if (grown != NULL) {
                memcpy(grown + j->nhint_failed, p->hint_failed, p->nhint_failed * sizeof(*grown));
                j->hint_failed = grown;
                j->nhint_failed += p->nhint_failed;
            } else {
                log_error("fanout_hint_lost", "mailboxes=%zu reason=out_of_memory",
                          p->nhint_failed);
            }
        }
        free(p->hint_failed);
        if (p->uids != j->uids)
            free(p->uids);
    }
    free(parts);
    j->elapsed_us = logic_now_us() - t0;
    log_info("fanout_done",
             "app=%" PRIu64 " uids=%zu written=%" PRIu64 " batches=%u shards=%d ms=%" PRId64,
             j->app_id, j->nuids, j->written, j->batches, nparts, j->elapsed_us / 1000);
}

static void *
fanout_main(void *arg)
{
    struct fanout *f = arg;
    pthread_mutex_lock(&f->mu);
    for (;;) {
        while (f->head == NULL && !f->stopping)
            pthread_cond_wait(&f->cv, &f->mu);
        struct fanout_job *j = f->head;
        if (j == NULL)
            break;
        f->head = j->next;
        if (f->head == NULL)
            f->tail = NULL;
        pthread_mutex_unlock(&f->mu);
        if (f->stopping)
            snprintf(j->error, sizeof(j->error), "shutting down");
        else
            run_job(f, j);
        /* The reply happens on the worker's own thread. */
        struct timeval now = {0, 0};
        if (event_base_once(j->w->base, -1, EV_TIMEOUT, job_reply, j, &now) != 0)
            job_free(j); /* the worker is gone; its request went with it */
        pthread_mutex_lock(&f->mu);
    }
    pthread_mutex_unlock(&f->mu);
    return NULL;
}

struct fanout *
fanout_start(struct logic *app)
{
    struct fanout *f = calloc(1, sizeof(*f));
    if (f == NULL)
        return NULL;
    f->app = app;
    pthread_mutex_init(&f->mu, NULL);
    pthread_cond_init(&f->cv, NULL);
    if (pthread_create(&f->thread, NULL, fanout_main, f) != 0) {
        free(f);
        return NULL;
    }
    return f;
}

void
fanout_stop(struct fanout *f)
{
    if (f == NULL)
        return;
    pthread_mutex_lock(&f->mu);
    f->stopping = true;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
    pthread_join(f->thread, NULL);
    for (int i = 0; i < LOGIC_MAX_SHARDS; i++) {
        if (f->lanes[i].pg)
            PQfinish(f->lanes[i].pg);
        redis_block_free(f->lanes[i].redis);
    }
    pthread_mutex_destroy(&f->mu);
    pthread_cond_destroy(&f->cv);
    free(f);
}

/* Parses the uid lines after the first; replies 400 naming the line on error. */
static bool
parse_uids(struct http_req *r, const char *p, const char *end, struct fanout_job *j,
           int64_t max_uids)
{
    size_t cap = 1024;
    j->uids = malloc(cap * sizeof(int64_t));
    size_t line = 1;
    while (p < end && j->uids != NULL) {
        line++;
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        const char *ve = le > p && le[-1] == '\r' ? le - 1 : le;
        if (ve > p) {
            char num[24];
            uint64_t uid;
            size_t len = (size_t)(ve - p);
            if (len >= sizeof(num)) {
                http_reply_error(r, 400, "invalid_argument", "line %zu: not a uid", line);
                return false;
            }
            memcpy(num, p, len);
            num[len] = '\0';
            if (!pbjson_parse_u64(num, &uid)) {
                http_reply_error(r, 400, "invalid_argument", "line %zu: not a uid", line);
                return false;
            }
            if ((int64_t)j->nuids == max_uids) {
                http_reply_error(r, 413, "too_large", "more than %" PRId64 " uids", max_uids);
                return false;
            }
            if (j->nuids == cap) {
                cap *= 2;
                int64_t *grown = realloc(j->uids, cap * sizeof(int64_t));
                if (grown == NULL) {
                    http_reply_error(r, 503, "unavailable", "out of memory reading uids");
                    return false;
                }
                j->uids = grown;
            }
            j->uids[j->nuids++] = (int64_t)uid;
        }
        p = le + 1;
    }
    if (j->uids == NULL) {
        http_reply_error(r, 503, "unavailable", "out of memory");
        return false;
    }
    if (j->nuids == 0) {
        http_reply_error(r, 400, "invalid_argument", "no uids after the first line");
        return false;
    }
    return true;
}

void
api_fanout(struct http_req *r, void *ctx)
{
    struct logic_worker *w = ctx;
    const struct logic_config *c = &w->app->cfg;
    if (!api_auth_server(r, w))
        return;
    size_t len;
    const char *body = (const char *)http_req_body(r, &len);
    const char *end = body + len;
    const char *nl = memchr(body, '\n', len);
    char err[256];
    Mbox__SendRequest *q = (Mbox__SendRequest *)pbjson_decode_bytes(
        &mbox__send_request__descriptor, body, nl ? (size_t)(nl - body) : len, 65536 * 8, NULL, err,
        sizeof(err));
    if (q == NULL) {
        http_reply_error(r, 400, "invalid_argument", "line 1: %s", err);
        return;
    }
    struct fanout_job *j = calloc(1, sizeof(*j));
    bool ok = j != NULL;
    if (!ok) {
        http_reply_error(r, 503, "unavailable", "out of memory");
    } else if (!q->has_app_id || !q->has_content) {
        http_reply_error(r, 400, "invalid_argument", "line 1: app_id and content are required");
        ok = false;
    } else if (q->n_to_uids > 0 || q->msgkey != NULL || q->has_store_sender || q->has_contacter) {
        http_reply_error(r, 400, "invalid_argument",
                         "line 1: to_uids, msgkey, store_sender and contacter are not fanout "
                         "fields");
        ok = false;
    } else if (q->has_expire_s && (q->expire_s == 0 || (int64_t)q->expire_s > c->retention_s)) {
        http_reply_error(r, 400, "invalid_argument",
                         "line 1: expire_s must be 1..%" PRId64 " (retention_s)", c->retention_s);
        ok = false;
    } else if ((int64_t)q->content.len > c->max_content_bytes) {
        http_reply_error(r, 413, "too_large", "content is %zu bytes, at most %" PRId64,
                         q->content.len, c->max_content_bytes);
        ok = false;
    } else {
        ok = parse_uids(r, nl ? nl + 1 : end, end, j, c->fanout_max_uids);
    }
    if (!ok) {
        if (j != NULL)
            job_free(j);
        api_msg_free(&q->base);
        return;
    }
    j->w = w;
    j->r = r;
    j->app_id = q->app_id;
    j->from_uid = q->from_uid;
    j->category = q->category;
    j->type = q->type;
    j->priority = q->priority;
    j->business_type = q->business_type;
    j->content_len = q->content.len;
    j->content = malloc(q->content.len + 1);
    if (j->content != NULL)
        memcpy(j->content, q->content.data, q->content.len);
    j->create_time = logic_now_us();
    j->expire_at =
        j->create_time + (q->has_expire_s ? (int64_t)q->expire_s : c->default_expire_s) * 1000000;
    api_msg_free(&q->base);
    if (j->content == NULL) {
        http_reply_error(r, 503, "unavailable", "out of memory");
        job_free(j);
        return;
    }
    /* A million uids take tens of seconds: the connection must outlive
     * http_timeout_s while the job runs, or the reply is lost. */
    http_req_set_timeout(r, FANOUT_TIMEOUT_S);
    struct fanout *f = w->app->fanout;
    pthread_mutex_lock(&f->mu);
    if (f->tail)
        f->tail->next = j;
    else
        f->head = j;
    f->tail = j;
    pthread_cond_signal(&f->cv);
    pthread_mutex_unlock(&f->mu);
}
