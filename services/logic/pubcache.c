/*
 * pubcache: the public-mailbox cache and its poller thread (pubcache.h).
 */
#include "pubcache.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <event2/event.h>
#include <libpq-fe.h>

#include <jansson.h>

#include "api_io.h"
#include "log.h"
#include "logic.h"
#include "shard_db.h"
#include "sql.h"

struct pubcache {
    struct logic *app;
    struct logic_worker *workers;
    int nworkers;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    bool stopping, kicked;
    PGconn *pg;
    struct pub_snapshot *cur; /* the poller's reference */
    int64_t last_ok_us;       /* atomic */
};

#define NOTICE_COLS                                                                                \
    "notice_id, app_id, state, version, seq, msg_id, title, content, category, type, "             \
    "priority, business_type, start_at, expire_at, platforms, min_core_level, "                    \
    "max_core_level, login_only, activated, deleted, gray_seq"

/*
 * Changes since $1, with the head seq (column 0) and the whitelist version
 * (column 1) read in the same statement, hence the same snapshot: the
 * whitelist the poller then reads is at least as new as the seqs it hands
 * out. (A version read separately could fail and leave new seqs paired with
 * an old whitelist: a user just added would sync past a renumbered notice.)
 */
static const char changes_sql[] =
    "SELECT h.seq AS head, w.version AS white_version, n.* FROM public_head h"
    " JOIN whitelist_version w ON w.id = 1 LEFT JOIN LATERAL"
    " (SELECT " NOTICE_COLS " FROM notice WHERE seq > $1::int8 ORDER BY seq) n ON true"
    " WHERE h.id = 1 ORDER BY n.seq";
/* Column of notice_id in a changes_sql row (the notice columns follow). */
#define CH_NOTICE 2

/*
 * Activation of scheduled notices: each due notice gets the next seq under
 * the head row lock. Run by any logicd; a second run finds nothing due
 * (the UPDATE re-checks NOT activated on the latest row version).
 */
static const char activate_sql[] =
    "WITH head AS (SELECT seq FROM public_head WHERE id = 1 FOR UPDATE),"
    " due AS (SELECT notice_id FROM notice WHERE state IN ('prepublished', 'published')"
    "   AND NOT activated AND NOT deleted AND start_at <= $1::int8 ORDER BY notice_id LIMIT 100),"
    " num AS (SELECT notice_id, (SELECT seq FROM head) + row_number() OVER (ORDER BY notice_id)"
    "   AS seq FROM due),"
    " upd AS (UPDATE notice n SET seq = num.seq, activated = true,"
    "   gray_seq = CASE WHEN n.state = 'prepublished' THEN num.seq ELSE 0 END FROM num"
    "   WHERE n.notice_id = num.notice_id AND NOT n.activated AND n.start_at <= $1::int8"
    "   AND n.state IN ('prepublished', 'published') AND NOT n.deleted RETURNING n.notice_id),"
    " bump AS (UPDATE public_head SET seq = seq + (SELECT count(*) FROM num)"
    "   WHERE id = 1 AND EXISTS (SELECT 1 FROM num) RETURNING seq)"
    " SELECT (SELECT count(*) FROM upd), (SELECT seq FROM bump)";

static void
snap_free(struct pub_snapshot *s)
{
    for (size_t i = 0; i < s->count; i++) {
        free(s->notices[i]->title);
        free(s->notices[i]->content);
        free(s->notices[i]);
    }
    free(s->notices);
    free(s->white);
    free(s);
}

void
pubsnap_unref(struct pub_snapshot *s)
{
    if (s != NULL && __atomic_sub_fetch(&s->refs, 1, __ATOMIC_ACQ_REL) == 0)
        snap_free(s);
}

static int
cmp_white(const void *a, const void *b)
{
    const uint64_t *x = a, *y = b;
    if (x[0] != y[0])
        return x[0] < y[0] ? -1 : 1;
    return x[1] < y[1] ? -1 : x[1] > y[1];
}

bool
pubsnap_whitelisted(const struct pub_snapshot *s, uint64_t app_id, uint64_t uid)
{
    uint64_t key[2] = {app_id, uid};
    return s != NULL && s->nwhite > 0 &&
           bsearch(key, s->white, s->nwhite, sizeof(s->white[0]), cmp_white) != NULL;
}

const struct pub_notice *
pubsnap_find(const struct pub_snapshot *s, uint64_t notice_id)
{
    for (size_t i = 0; s != NULL && i < s->count; i++) {
        if (s->notices[i]->notice_id == notice_id)
            return s->notices[i];
    }
    return NULL;
}

int64_t
pubcache_last_ok_us(const struct pubcache *c)
{
    return c == NULL ? 0 : __atomic_load_n(&c->last_ok_us, __ATOMIC_RELAXED);
}

/* Parses a text[] literal {a,b} of platform names (simple tokens only). */
static void
parse_platforms(struct pub_notice *n, const char *s)
{
    n->nplatforms = 0;
    if (*s == '{')
        s++;
    while (*s && *s != '}' && n->nplatforms < PUB_MAX_PLATFORMS) {
        size_t len = strcspn(s, ",}");
        if (*s == '"') { /* quoted elements are not valid platform names anyway */
            s += len;
        } else if (len > 0 && len < sizeof(n->platforms[0])) {
            memcpy(n->platforms[n->nplatforms], s, len);
            n->platforms[n->nplatforms][len] = '\0';
            n->nplatforms++;
        }
        s += len;
        if (*s == ',')
            s++;
    }
}

static int64_t
col_i64(const PGresult *r, int row, int col)
{
    return strtoll(PQgetvalue(r, row, col), NULL, 10);
}

/* A notice from a text-format changes_sql row. */
static struct pub_notice *
notice_from_row(const PGresult *r, int row, bool *live)
{
    struct pub_notice *n = calloc(1, sizeof(*n));
    if (n == NULL)
        return NULL;
    int c = CH_NOTICE;
    n->notice_id = (uint64_t)col_i64(r, row, c++);
    n->app_id = (uint64_t)col_i64(r, row, c++);
    if (!pub_state_parse(PQgetvalue(r, row, c++), &n->state))
        n->state = PUB_DRAFT;
    n->version = (uint32_t)col_i64(r, row, c++);
    n->seq = (uint64_t)col_i64(r, row, c++);
    n->msg_id = (uint64_t)col_i64(r, row, c++);
    n->title = strdup(PQgetvalue(r, row, c++));
    size_t blen = 0;
    unsigned char *bytes = PQunescapeBytea((const unsigned char *)PQgetvalue(r, row, c++), &blen);
    n->content = malloc(blen + 1);
    if (n->content != NULL && bytes != NULL)
        memcpy(n->content, bytes, blen);
    n->content_len = bytes ? blen : 0;
    PQfreemem(bytes);
    n->category = (int32_t)col_i64(r, row, c++);
    n->type = (int32_t)col_i64(r, row, c++);
    n->priority = (int32_t)col_i64(r, row, c++);
    n->business_type = (int32_t)col_i64(r, row, c++);
    n->start_at = col_i64(r, row, c++);
    n->expire_at = col_i64(r, row, c++);
    parse_platforms(n, PQgetvalue(r, row, c++));
    n->min_core_level = (uint64_t)col_i64(r, row, c++);
    n->max_core_level = (uint64_t)col_i64(r, row, c++);
    n->login_only = PQgetvalue(r, row, c++)[0] == 't';
    n->activated = PQgetvalue(r, row, c++)[0] == 't';
    bool deleted = PQgetvalue(r, row, c++)[0] == 't';
    n->gray_seq = (uint64_t)col_i64(r, row, c++);
    /* A deleted notice stays as a tombstone when it was retracted (or
     * deleted while prepublished), so holders still get the retract item. */
    *live = n->state == PUB_RETRACTED ||
            (!deleted && (n->state == PUB_PREPUBLISHED || n->state == PUB_PUBLISHED));
    if (n->title == NULL || n->content == NULL) {
        free(n->title);
        free(n->content);
        free(n);
        return NULL;
    }
    return n;
}

static struct pub_notice *
notice_copy(const struct pub_notice *o)
{
    struct pub_notice *n = malloc(sizeof(*n));
    if (n == NULL)
        return NULL;
    *n = *o;
    n->title = strdup(o->title);
    n->content = malloc(o->content_len + 1);
    if (n->title == NULL || n->content == NULL) {
        free(n->title);
        free(n->content);
        free(n);
        return NULL;
    }
    memcpy(n->content, o->content, o->content_len);
    return n;
}

static int
cmp_seq(const void *a, const void *b)
{
    const struct pub_notice *x = *(struct pub_notice *const *)a;
    const struct pub_notice *y = *(struct pub_notice *const *)b;
    return x->seq < y->seq ? -1 : x->seq > y->seq;
}

/*
 * Builds the next snapshot from the current one plus the changed rows (and
 * a new whitelist, when white != NULL; ownership passes to the snapshot).
 */
static struct pub_snapshot *
snap_build(const struct pub_snapshot *old, const PGresult *changes, uint64_t head,
           uint64_t (*white)[2], size_t nwhite, uint64_t white_version)
{
    int rows = changes ? PQntuples(changes) : 0;
    struct pub_snapshot *s = calloc(1, sizeof(*s));
    size_t cap = (old ? old->count : 0) + (size_t)rows + 1;
    if (s == NULL || (s->notices = calloc(cap, sizeof(*s->notices))) == NULL) {
        free(s);
        free(white);
        return NULL;
    }
    s->refs = 1;
    uint64_t old_seq = old != NULL ? old->max_seq : 0;
    s->max_seq = head > old_seq ? head : old_seq;
    s->built_us = logic_now_us();
    /* Keep the old notices that did not change. */
    for (size_t i = 0; old != NULL && i < old->count; i++) {
        bool changed = false;
        for (int k = 0; k < rows && !changed; k++) {
            if (!PQgetisnull(changes, k, CH_NOTICE))
                changed = (uint64_t)col_i64(changes, k, CH_NOTICE) == old->notices[i]->notice_id;
        }
        if (changed)
            continue;
        if ((s->notices[s->count] = notice_copy(old->notices[i])) == NULL) {
            free(white);
            snap_free(s);
            return NULL;
        }
        s->count++;
    }
    for (int k = 0; k < rows; k++) {
        if (PQgetisnull(changes, k, CH_NOTICE))
            continue;
        bool live;
        struct pub_notice *n = notice_from_row(changes, k, &live);
        if (n == NULL) {
            /* Out of memory: a snapshot without this change would let max_seq
             * pass it. Build nothing; the next poll tries again. */
            free(white);
            s->white = NULL;
            snap_free(s);
            return NULL;
        }
        if (live) {
            s->notices[s->count++] = n;
        } else {
            free(n->title);
            free(n->content);
            free(n);
        }
    }
    qsort(s->notices, s->count, sizeof(s->notices[0]), cmp_seq);
    if (white != NULL) {
        s->white = white;
        s->nwhite = nwhite;
    } else if (old != NULL && old->nwhite > 0) {
        s->white = malloc(old->nwhite * sizeof(old->white[0]));
        if (s->white == NULL) {
            /* A snapshot without its whitelist would let max_seq pass the
             * whitelisted users' notices: build nothing. */
            snap_free(s);
            return NULL;
        }
        memcpy(s->white, old->white, old->nwhite * sizeof(old->white[0]));
        s->nwhite = old->nwhite;
    }
    s->white_version = white_version;
    return s;
}

struct handoff {
    struct logic_worker *w;
    struct pub_snapshot *s;
};

/* Runs on a worker's thread: take the new snapshot, drop the old one. */
static void
adopt_handoff(evutil_socket_t fd, short what, void *arg)
{
    struct handoff *h = arg;
    struct pub_snapshot *old = h->w->snap;
    h->w->snap = h->s;
    pubsnap_unref(old);
    free(h);
}

/* Gives every worker a reference to s. */
static void
distribute(struct pubcache *c, struct pub_snapshot *s)
{
    for (int i = 0; i < c->nworkers; i++) {
        struct handoff *h = malloc(sizeof(*h));
        if (h == NULL)
            continue;
        h->w = &c->workers[i];
        h->s = s;
        __atomic_add_fetch(&s->refs, 1, __ATOMIC_ACQ_REL);
        struct timeval now = {0, 0};
        if (event_base_once(h->w->base, -1, EV_TIMEOUT, adopt_handoff, h, &now) != 0) {
            pubsnap_unref(s);
            free(h);
        }
    }
}

static bool
pg_ok(struct pubcache *c)
{
    if (c->pg != NULL && PQstatus(c->pg) == CONNECTION_OK)
        return true;
    if (c->pg != NULL)
        PQfinish(c->pg);
    c->pg = PQconnectdb(c->app->cfg.pg_conninfo);
    if (PQstatus(c->pg) != CONNECTION_OK) {
        log_warn("pubcache_pg_down", "error=%s", "connect failed");
        return false;
    }
    return true;
}

/* Activates due scheduled notices when the snapshot says some are due. */
static void
activate_due(struct pubcache *c, int64_t now)
{
    bool due = false;
    for (size_t i = 0; c->cur != NULL && i < c->cur->count && !due; i++) {
        const struct pub_notice *n = c->cur->notices[i];
        due = !n->activated && n->start_at <= now &&
              (n->state == PUB_PUBLISHED || n->state == PUB_PREPUBLISHED);
    }
    if (!due)
        return;
    char nowbuf[24];
    snprintf(nowbuf, sizeof(nowbuf), "%" PRId64, now);
    const char *params[1] = {nowbuf};
    PGresult *r = PQexecParams(c->pg, activate_sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == PGRES_TUPLES_OK && PQntuples(r) == 1)
        log_info("notices_activated", "count=%s", PQgetvalue(r, 0, 0));
    else
        log_warn("notice_activation_failed", "error=%s", PQresultErrorField(r, PG_DIAG_SQLSTATE));
    PQclear(r);
}

/*
 * The whole whitelist, sorted, into *out (NULL and false on any error).
 */
static bool
read_whitelist(struct pubcache *c, uint64_t (**out)[2], size_t *n)
{
    *out = NULL;
    *n = 0;
    PGresult *wl = PQexec(c->pg, "SELECT app_id, uid FROM whitelist ORDER BY app_id, uid");
    if (PQresultStatus(wl) != PGRES_TUPLES_OK) {
        log_warn("pubcache_poll_failed", "error=%s", PQresultErrorField(wl, PG_DIAG_SQLSTATE));
        PQclear(wl);
        return false;
    }
    size_t count = (size_t)PQntuples(wl);
    uint64_t(*white)[2] = calloc(count + 1, sizeof(*white));
    if (white == NULL) {
        PQclear(wl);
        return false; /* out of memory: keep the old snapshot, retry next poll */
    }
    for (size_t i = 0; i < count; i++) {
        white[i][0] = (uint64_t)col_i64(wl, (int)i, 0);
        white[i][1] = (uint64_t)col_i64(wl, (int)i, 1);
    }
    qsort(white, count, sizeof(*white), cmp_white);
    PQclear(wl);
    *out = white;
    *n = count;
    return true;
}

/*
 * One poll: returns false when the database could not be read. Any error
 * publishes nothing from this poll (the workers keep the previous snapshot
 * and the next poll starts again from its max_seq): a snapshot must never
 * pair new seqs with an older whitelist than the one they were given for.
 */
static bool
poll_once(struct pubcache *c)
{
    if (!pg_ok(c))
        return false;
    int64_t now = logic_now_us();
    activate_due(c, now);
    if (c->app->shard_conninfo[0] != NULL) {
        /* A bucket move (docs/architecture.md): every logicd follows the
         * map within a poll; until then the shards' fences answer for it. */
        char err[200];
        int moved = 0;
        if (!shard_db_refresh(c->pg, &c->app->map, &moved, err, sizeof(err)))
            log_warn("bucket_map_refresh_failed", "error=\"%s\"", err);
        else if (moved > 0)
            log_info("bucket_map_refreshed", "version=%lld buckets_moved=%d",
                     (long long)__atomic_load_n(&c->app->map.version, __ATOMIC_RELAXED), moved);
    }

    char last[24];
    snprintf(last, sizeof(last), "%" PRIu64, c->cur ? c->cur->max_seq : 0);
    const char *params[1] = {last};
    PGresult *ch = PQexecParams(c->pg, changes_sql, 1, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(ch) != PGRES_TUPLES_OK || PQntuples(ch) < 1) {
        log_warn("pubcache_poll_failed", "error=%s", PQresultErrorField(ch, PG_DIAG_SQLSTATE));
        PQclear(ch);
        PQfinish(c->pg);
        c->pg = NULL;
        return false;
    }
    uint64_t head = (uint64_t)col_i64(ch, 0, 0);
    uint64_t wver = (uint64_t)col_i64(ch, 0, 1);
    bool notices_changed = !PQgetisnull(ch, 0, CH_NOTICE);
    uint64_t(*white)[2] = NULL;
    size_t nwhite = 0;
    bool white_changed = c->cur == NULL || wver != c->cur->white_version;
    if (white_changed && !read_whitelist(c, &white, &nwhite)) {
        PQclear(ch);
        return false;
    }
    if (notices_changed || white_changed || c->cur == NULL || head != c->cur->max_seq) {
        struct pub_snapshot *s =
            snap_build(c->cur, notices_changed ? ch : NULL, head, white, nwhite, wver);
        if (s == NULL) {
            /* Nothing published; the next poll reads the same changes again. */
            PQclear(ch);
            return false;
        }
        log_debug("pubcache_snapshot", "max_seq=%" PRIu64 " notices=%zu whitelist=%zu", s->max_seq,
                  s->count, s->nwhite);
        distribute(c, s);
        pubsnap_unref(c->cur);
        c->cur = s;
    }
    PQclear(ch);
    __atomic_store_n(&c->last_ok_us, logic_now_us(), __ATOMIC_RELAXED);
    return true;
}

static void *
poller_main(void *arg)
{
    struct pubcache *c = arg;
    pthread_mutex_lock(&c->mu);
    while (!c->stopping) {
        pthread_mutex_unlock(&c->mu);
        (void)poll_once(c);
        pthread_mutex_lock(&c->mu);
        if (c->stopping)
            break;
        if (!c->kicked) {
            struct timespec until;
            clock_gettime(CLOCK_REALTIME, &until);
            int64_t ns = until.tv_nsec + c->app->cfg.poll_interval_ms * 1000000LL;
            until.tv_sec += (time_t)(ns / 1000000000LL);
            until.tv_nsec = (long)(ns % 1000000000LL);
            while (!c->stopping && !c->kicked &&
                   pthread_cond_timedwait(&c->cv, &c->mu, &until) != ETIMEDOUT)
                ;
        }
        c->kicked = false;
    }
    pthread_mutex_unlock(&c->mu);
    return NULL;
}

void
pubcache_kick(struct pubcache *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    c->kicked = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
}

struct pubcache *
pubcache_start(struct logic *app, struct logic_worker *workers, int nworkers)
{
    struct pubcache *c = calloc(1, sizeof(*c));
    if (c == NULL)
        return NULL;
    c->app = app;
    c->workers = workers;
    c->nworkers = nworkers;
    pthread_mutex_init(&c->mu, NULL);
    pthread_cond_init(&c->cv, NULL);
    if (pthread_create(&c->thread, NULL, poller_main, c) != 0) {
        free(c);
        return NULL;
    }
    return c;
}

void
pubcache_stop(struct pubcache *c)
{
    if (c == NULL)
        return;
    pthread_mutex_lock(&c->mu);
    c->stopping = true;
    pthread_cond_signal(&c->cv);
    pthread_mutex_unlock(&c->mu);
    pthread_join(c->thread, NULL);
    pubsnap_unref(c->cur);
    if (c->pg != NULL)
        PQfinish(c->pg);
    pthread_mutex_destroy(&c->mu);
    pthread_cond_destroy(&c->cv);
    free(c);
}

/* Most entries whitelist_file may hold (a bad file must not eat the memory). */
#define WHITELIST_FILE_MAX 10000000
/* uids per mbox_whitelist_change call, as for POST /v1/whitelist. */
#define WHITELIST_FILE_CHUNK 100000

/* Reads "app_id uid" lines into *out (sorted by app, then uid); false with err set. */
static bool
read_whitelist_file(const char *path, uint64_t (**out)[2], size_t *n, char *err, size_t errlen)
{
    FILE *f = fopen(path, "r");
    if (f == NULL) {
        snprintf(err, errlen, "whitelist_file %s: %s", path, strerror(errno));
        return false;
    }
    size_t cap = 1024, count = 0, lineno = 0;
    uint64_t(*pairs)[2] = malloc(cap * sizeof(*pairs));
    char line[256];
    bool ok = pairs != NULL;
    if (!ok)
        snprintf(err, errlen, "out of memory");
    while (ok && fgets(line, sizeof(line), f) != NULL) {
        lineno++;
        char *h = line + strspn(line, " \t");
        if (*h == '#' || *h == '\n' || *h == '\0')
            continue;
        unsigned long long a, u;
        char extra;
        if (strchr(line, '\n') == NULL && !feof(f)) {
            snprintf(err, errlen, "whitelist_file %s:%zu: expected 'app_id uid' (line too long)",
                     path, lineno);
            ok = false;
        } else if (sscanf(h, "%llu %llu %c", &a, &u, &extra) != 2 || a > INT64_MAX ||
                   u > INT64_MAX || strchr(h, '-') != NULL) {
            snprintf(err, errlen, "whitelist_file %s:%zu: expected 'app_id uid'", path, lineno);
            ok = false;
        } else if (count == WHITELIST_FILE_MAX) {
            snprintf(err, errlen, "whitelist_file %s: expected at most %d entries", path,
                     WHITELIST_FILE_MAX);
            ok = false;
        } else {
            if (count == cap) {
                uint64_t(*grown)[2] = realloc(pairs, 2 * cap * sizeof(*pairs));
                if (grown == NULL) {
                    snprintf(err, errlen, "out of memory");
                    ok = false;
                    break;
                }
                pairs = grown;
                cap *= 2;
            }
            pairs[count][0] = a;
            pairs[count][1] = u;
            count++;
        }
    }
    fclose(f);
    if (!ok) {
        free(pairs);
        return false;
    }
    qsort(pairs, count, sizeof(*pairs), cmp_white);
    *out = pairs;
    *n = count;
    return true;
}

/* Runs one bound statement; the result (caller clears) or NULL with err set. */
static PGresult *
exec_stmt(PGconn *c, const char *name, int n, const char *const *params, ExecStatusType want,
          char *err, size_t errlen)
{
    PGresult *r = PQexecParams(c, sql_text(name), n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == want)
        return r;
    snprintf(err, errlen, "whitelist_file: %s", PQresultErrorMessage(r));
    err[strcspn(err, "\n")] = '\0';
    PQclear(r);
    return NULL;
}

/*
 * Adds one app's uids through mbox_whitelist_change, the head-locked path
 * of POST /v1/whitelist: the app's prepublished (and gray) notices get new
 * seqs, so a uid whose cursor passed them still receives them. Skipped when
 * every uid is already listed (a restart must not re-deliver notices).
 */
static bool
whitelist_add_app(PGconn *c, const char *path, uint64_t app, const uint64_t *uids, size_t n,
                  char *err, size_t errlen)
{
    char appbuf[24], nowbuf[24];
    char *arr = api_int8_array(uids, n);
    json_t *body = json_pack("{s:s, s:I}", "whitelist_file", path, "uids", (json_int_t)n);
    char *audit = body != NULL ? json_dumps(body, JSON_COMPACT | JSON_SORT_KEYS) : NULL;
    json_decref(body);
    bool ok = arr != NULL && audit != NULL;
    if (!ok)
        snprintf(err, errlen, "whitelist_file: %s",
                 arr == NULL ? "out of memory" : "cannot build the audit entry (path not UTF-8?)");
    snprintf(appbuf, sizeof(appbuf), "%" PRIu64, app);
    snprintf(nowbuf, sizeof(nowbuf), "%" PRId64, logic_now_us());
    const char *missing_params[2] = {appbuf, arr};
    PGresult *r =
        ok ? exec_stmt(c, SQL_WHITELIST_MISSING, 2, missing_params, PGRES_TUPLES_OK, err, errlen)
           : NULL;
    ok = r != NULL;
    bool needed = ok && strcmp(PQgetvalue(r, 0, 0), "0") != 0;
    PQclear(r);
    if (needed) {
        const char *params[6] = {appbuf, arr, "add", "whitelist_file", nowbuf, audit};
        r = exec_stmt(c, SQL_WHITELIST_CHANGE, 6, params, PGRES_TUPLES_OK, err, errlen);
        ok = r != NULL;
        if (ok)
            log_info("whitelist_loaded", "file=%s app=%" PRIu64 " added=%s renumbered=%s", path,
                     app, PQgetvalue(r, 0, 0), PQgetvalue(r, 0, 2));
        PQclear(r);
    }
    free(arr);
    free(audit);
    return ok;
}

bool
pubcache_load_whitelist_file(const char *conninfo, const char *path, char *err, size_t errlen)
{
    uint64_t(*pairs)[2] = NULL;
    size_t n = 0;
    if (!read_whitelist_file(path, &pairs, &n, err, errlen))
        return false;
    uint64_t *uids = malloc((n + 1) * sizeof(*uids));
    PGconn *c = n > 0 && uids != NULL ? PQconnectdb(conninfo) : NULL;
    bool ok = n == 0 || (uids != NULL && PQstatus(c) == CONNECTION_OK);
    if (!ok)
        snprintf(err, errlen, "whitelist_file: %s",
                 uids == NULL ? "out of memory" : "database unavailable");
    /* One call per app (and per WHITELIST_FILE_CHUNK uids of it). */
    for (size_t i = 0; ok && i < n;) {
        size_t k = 0;
        uint64_t app = pairs[i][0];
        while (i < n && pairs[i][0] == app && k < WHITELIST_FILE_CHUNK)
            uids[k++] = pairs[i++][1];
        ok = whitelist_add_app(c, path, app, uids, k, err, errlen);
    }
    PQfinish(c);
    free(uids);
    free(pairs);
    return ok;
}
