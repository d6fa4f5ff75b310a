/*
 * shard_db: reading and initialising the bucket map (shard_db.h).
 *
 * Error lines name a shard by its position in pg_shards, never by its
 * URI: that may hold a password.
 */
#include "shard_db.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "log.h"
#include "shard.h"

/* Serialises concurrent --migrate runs over the map (migrate.c uses ...001). */
#define SHARD_LOCK_KEY "7204312003"
#define UUID_LEN       36

/* Connects; false with the reason in err (first line only). */
static PGconn *
connect_db(const char *conninfo, const char *what, char *err, size_t errlen)
{
    PGconn *c = PQconnectdb(conninfo);
    if (PQstatus(c) != CONNECTION_OK) {
        snprintf(err, errlen, "cannot connect to %s: %s", what, PQerrorMessage(c));
        err[strcspn(err, "\n")] = '\0';
        PQfinish(c);
        return NULL;
    }
    return c;
}

/* Runs sql with text parameters; the result when its status is want, else NULL and err. */
static PGresult *
run(PGconn *c, const char *sql, int n, const char *const *params, ExecStatusType want,
    const char *what, char *err, size_t errlen)
{
    PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
    if (PQresultStatus(r) == want)
        return r;
    snprintf(err, errlen, "%s: %s", what, PQresultErrorMessage(r));
    err[strcspn(err, "\n")] = '\0';
    PQclear(r);
    return NULL;
}

static bool
run_cmd(PGconn *c, const char *sql, int n, const char *const *params, const char *what, char *err,
        size_t errlen)
{
    PGresult *r = run(c, sql, n, params, PGRES_COMMAND_OK, what, err, errlen);
    PQclear(r);
    return r != NULL;
}

/*
 * Takes (or creates) the cluster row: its id into cluster, whether the map
 * is complete into *complete. A row made for another count is an error.
 */
static bool
cluster_row(PGconn *pub, int n, char *cluster, bool *complete, char *err, size_t errlen)
{
    char num[16];
    snprintf(num, sizeof(num), "%d", n);
    const char *p[1] = {num};
    /* The lock first, in its own statement: the next one's snapshot then
     * sees a row another migrator committed while this one waited. */
    PGresult *lock = NULL;
    if (!run_cmd(pub, "BEGIN", 0, NULL, "public database", err, errlen) ||
        (lock = run(pub, "SELECT pg_advisory_xact_lock(" SHARD_LOCK_KEY ")", 0, NULL,
                    PGRES_TUPLES_OK, "public database", err, errlen)) == NULL)
        return false;
    PQclear(lock);
    PGresult *r = run(pub,
                      "WITH ins AS (INSERT INTO shard_cluster (id, cluster_id, nshards)"
                      "  VALUES (1, gen_random_uuid(), $1::int4)"
                      "  ON CONFLICT (id) DO NOTHING RETURNING cluster_id, nshards, version)"
                      " SELECT cluster_id, nshards, version FROM ins"
                      " UNION ALL SELECT cluster_id, nshards, version FROM shard_cluster",
                      1, p, PGRES_TUPLES_OK, "public database", err, errlen);
    bool ok = r != NULL && PQntuples(r) >= 1;
    if (ok) {
        int have = atoi(PQgetvalue(r, 0, 1));
        snprintf(cluster, UUID_LEN + 1, "%s", PQgetvalue(r, 0, 0));
        *complete = strcmp(PQgetvalue(r, 0, 2), "0") != 0;
        if (have != n) {
            snprintf(err, errlen,
                     "the bucket map was made for %d shards but pg_shards lists %d (moving to "
                     "another shard count is not supported)",
                     have, n);
            ok = false;
        }
    } else if (r != NULL) {
        snprintf(err, errlen, "public database: no shard_cluster row");
    }
    PQclear(r);
    return ok && run_cmd(pub, "COMMIT", 0, NULL, "public database", err, errlen);
}

/* Writes shard i's identity unless it has one, and checks the one it has. */
static bool
shard_identity(const char *conninfo, int i, const char *cluster, char *uuid, char *err,
               size_t errlen)
{
    char what[64], num[16];
    snprintf(what, sizeof(what), "pg_shards entry %d", i + 1);
    snprintf(num, sizeof(num), "%d", i);
    PGconn *c = connect_db(conninfo, what, err, errlen);
    if (c == NULL)
        return false;
    const char *p[2] = {cluster, num};
    PGresult *r = run(c,
                      "WITH ins AS (INSERT INTO shard_identity (id, cluster_id, shard, shard_uuid)"
                      "  VALUES (1, $1::uuid, $2::int4, gen_random_uuid())"
                      "  ON CONFLICT (id) DO NOTHING RETURNING cluster_id, shard, shard_uuid)"
                      " SELECT cluster_id, shard, shard_uuid FROM ins"
                      " UNION ALL SELECT cluster_id, shard, shard_uuid FROM shard_identity",
                      2, p, PGRES_TUPLES_OK, what, err, errlen);
    bool ok = r != NULL && PQntuples(r) >= 1;
    if (ok && (strcmp(PQgetvalue(r, 0, 0), cluster) != 0 || atoi(PQgetvalue(r, 0, 1)) != i)) {
        snprintf(err, errlen,
                 "pg_shards entry %d is shard %s of cluster %s, not shard %d of cluster %s (same "
                 "databases, same order as when the map was made)",
                 i + 1, PQgetvalue(r, 0, 1), PQgetvalue(r, 0, 0), i, cluster);
        ok = false;
    }
    if (ok)
        snprintf(uuid, UUID_LEN + 1, "%s", PQgetvalue(r, 0, 2));
    PQclear(r);
    PQfinish(c);
    return ok;
}

bool
shard_db_init(const char *public_conninfo, char *const *shards, int n, char *err, size_t errlen)
{
    PGconn *pub = connect_db(public_conninfo, "the public database", err, errlen);
    if (pub == NULL)
        return false;
    char cluster[UUID_LEN + 1], uuid[UUID_LEN + 1];
    bool complete = false;
    bool ok = cluster_row(pub, n, cluster, &complete, err, errlen);
    if (ok && complete) {
        /* Made before: check the list against it, write nothing (a fresh
         * database in a shard's place must not be given its identity). */
        PQfinish(pub);
        struct shard_map *m = malloc(sizeof(*m));
        ok = m != NULL && shard_db_load(public_conninfo, shards, n, m, err, errlen);
        free(m);
        return ok;
    }
    for (int i = 0; ok && i < n; i++) {
        ok = shard_identity(shards[i], i, cluster, uuid, err, errlen);
        if (ok && !complete) {
            char num[16];
            snprintf(num, sizeof(num), "%d", i);
            const char *p[2] = {num, uuid};
            ok = run_cmd(pub,
                         "INSERT INTO shard_list (shard, shard_uuid) VALUES ($1::int4, $2::uuid)"
                         " ON CONFLICT (shard) DO NOTHING",
                         2, p, "public database", err, errlen);
        }
    }
    if (ok && !complete) {
        /* The map appears whole or not at all (version 0 -> 1 in the same
         * transaction); shard_initial() in shard.c spreads it the same way. */
        char num[16];
        snprintf(num, sizeof(num), "%d", n);
        const char *p[1] = {num};
        ok = run_cmd(pub, "BEGIN", 0, NULL, "public database", err, errlen) &&
             run_cmd(pub,
                     "INSERT INTO bucket_map (bucket, shard, version)"
                     " SELECT b, (b::int8 * $1::int8 / 4096)::int4, 1"
                     " FROM generate_series(0, 4095) AS b ON CONFLICT (bucket) DO NOTHING",
                     1, p, "public database", err, errlen) &&
             run_cmd(pub, "UPDATE shard_cluster SET version = 1 WHERE id = 1 AND version = 0", 0,
                     NULL, "public database", err, errlen) &&
             run_cmd(pub, "COMMIT", 0, NULL, "public database", err, errlen);
        if (ok)
            log_info("bucket_map_created", "shards=%d buckets=%d", n, LOGIC_BUCKETS);
    }
    PQfinish(pub);
    return ok;
}

/* Reads the map's rows into m (and how often each bucket came in seen). */
static bool
load_map(PGconn *pub, struct shard_map *m, uint16_t *seen, char *err, size_t errlen)
{
    PGresult *r = run(pub, "SELECT bucket, shard FROM bucket_map", 0, NULL, PGRES_TUPLES_OK,
                      "public database", err, errlen);
    if (r == NULL)
        return false;
    bool ok = true;
    for (int i = 0; i < PQntuples(r); i++) {
        int b = atoi(PQgetvalue(r, i, 0)), s = atoi(PQgetvalue(r, i, 1));
        if (b < 0 || b >= LOGIC_BUCKETS || s < 0 || s >= LOGIC_MAX_SHARDS) {
            snprintf(err, errlen, "the bucket map has a bad row (bucket %d, shard %d)", b, s);
            ok = false;
            break;
        }
        seen[b]++;
        m->shard_of[b] = (uint8_t)s;
    }
    PQclear(r);
    return ok;
}

bool
shard_db_load(const char *public_conninfo, char *const *shards, int n, struct shard_map *m,
              char *err, size_t errlen)
{
    memset(m, 0, sizeof(*m));
    PGconn *pub = connect_db(public_conninfo, "the public database", err, errlen);
    if (pub == NULL && n == 0) {
        /* One database that is down: start anyway and keep reconnecting,
         * as logicd always did; only a map would be reason to refuse. */
        log_warn("bucket_map_unchecked", "error=\"%s\"", err);
        return true;
    }
    if (pub == NULL)
        return false;
    PGresult *r = PQexec(pub, "SELECT cluster_id, nshards, version FROM shard_cluster");
    bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
    if (n == 0) {
        /* One database: fine unless a map over several shards exists (then
         * most mailboxes are elsewhere). No table yet is fine too. */
        if (ok && PQntuples(r) == 1 && atoi(PQgetvalue(r, 0, 1)) > 1) {
            snprintf(err, errlen,
                     "the public database has a bucket map over %s shards but pg_shards is empty",
                     PQgetvalue(r, 0, 1));
            ok = false;
        } else {
            ok = true;
        }
        PQclear(r);
        PQfinish(pub);
        return ok;
    }
    char cluster[UUID_LEN + 1] = "";
    if (!ok || PQntuples(r) != 1 || strcmp(PQgetvalue(r, 0, 2), "0") == 0) {
        snprintf(err, errlen,
                 "no bucket map in the public database: run logicd --migrate with this "
                 "pg_shards first");
        ok = false;
    } else {
        snprintf(cluster, sizeof(cluster), "%s", PQgetvalue(r, 0, 0));
        m->nshards = atoi(PQgetvalue(r, 0, 1));
        m->version = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    }
    PQclear(r);
    uint16_t *seen = calloc(LOGIC_BUCKETS, sizeof(*seen));
    ok = ok && seen != NULL && load_map(pub, m, seen, err, errlen) &&
         shard_map_check(m, seen, n, err, errlen);
    free(seen);
    PGresult *list = ok ? run(pub, "SELECT shard, shard_uuid FROM shard_list ORDER BY shard", 0,
                              NULL, PGRES_TUPLES_OK, "public database", err, errlen)
                        : NULL;
    ok = list != NULL;
    if (ok && PQntuples(list) != n) {
        snprintf(err, errlen, "the public database lists %d shards, the map %d", PQntuples(list),
                 n);
        ok = false;
    }
    for (int i = 0; ok && i < n; i++) {
        char what[64];
        snprintf(what, sizeof(what), "pg_shards entry %d", i + 1);
        PGconn *c = connect_db(shards[i], what, err, errlen);
        PGresult *id = c ? run(c, "SELECT cluster_id, shard, shard_uuid FROM shard_identity", 0,
                               NULL, PGRES_TUPLES_OK, what, err, errlen)
                         : NULL;
        ok = id != NULL;
        if (ok && PQntuples(id) != 1) {
            snprintf(err, errlen, "pg_shards entry %d is no shard of this cluster (no identity)",
                     i + 1);
            ok = false;
        } else if (ok &&
                   (strcmp(PQgetvalue(id, 0, 0), cluster) != 0 || atoi(PQgetvalue(id, 0, 1)) != i ||
                    strcmp(PQgetvalue(id, 0, 2), PQgetvalue(list, i, 1)) != 0)) {
            if (strcmp(PQgetvalue(id, 0, 0), cluster) != 0)
                snprintf(err, errlen, "pg_shards entry %d belongs to another cluster (%s, not %s)",
                         i + 1, PQgetvalue(id, 0, 0), cluster);
            else if (atoi(PQgetvalue(id, 0, 1)) == i)
                snprintf(err, errlen,
                         "pg_shards entry %d is not the database the map calls shard %d (its "
                         "identity differs)",
                         i + 1, i);
            else
                snprintf(err, errlen,
                         "pg_shards entry %d is shard %s of the bucket map, not shard %d: list "
                         "the shards in the order they had when the map was made",
                         i + 1, PQgetvalue(id, 0, 1), i);
            ok = false;
        }
        PQclear(id);
        PQfinish(c);
    }
    PQclear(list);
    PQfinish(pub);
    if (ok)
        log_info("bucket_map_loaded", "shards=%d version=%lld", n, (long long)m->version);
    return ok;
}

bool
shard_db_refresh(PGconn *pub, struct shard_map *m, int *changed, char *err, size_t errlen)
{
    *changed = 0;
    PGresult *r = run(pub, "SELECT version FROM shard_cluster", 0, NULL, PGRES_TUPLES_OK,
                      "public database", err, errlen);
    if (r == NULL)
        return false;
    int64_t have = __atomic_load_n(&m->version, __ATOMIC_RELAXED);
    int64_t now = PQntuples(r) == 1 ? strtoll(PQgetvalue(r, 0, 0), NULL, 10) : have;
    PQclear(r);
    if (now == have)
        return true;
    /* A move writes the cluster version and its rows' version in one
     * transaction, so the rows newer than ours are every change missed. */
    char num[24];
    snprintf(num, sizeof(num), "%lld", (long long)have);
    const char *p[1] = {num};
    r = run(pub,
            "SELECT bucket, shard, (SELECT version FROM shard_cluster) FROM bucket_map"
            " WHERE version > $1::int8",
            1, p, PGRES_TUPLES_OK, "public database", err, errlen);
    if (r == NULL)
        return false;
    for (int i = 0; i < PQntuples(r); i++) {
        int b = atoi(PQgetvalue(r, i, 0)), s = atoi(PQgetvalue(r, i, 1));
        if (b < 0 || b >= LOGIC_BUCKETS || s < 0 || s >= m->nshards) {
            snprintf(err, errlen, "the bucket map has a bad row (bucket %d, shard %d)", b, s);
            PQclear(r);
            return false;
        }
        if (__atomic_load_n(&m->shard_of[b], __ATOMIC_RELAXED) != (uint8_t)s) {
            __atomic_store_n(&m->shard_of[b], (uint8_t)s, __ATOMIC_RELAXED);
            (*changed)++;
        }
    }
    if (PQntuples(r) > 0)
        now = strtoll(PQgetvalue(r, 0, 2), NULL, 10);
    __atomic_store_n(&m->version, now, __ATOMIC_RELAXED);
    PQclear(r);
    return true;
}
