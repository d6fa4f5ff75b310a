/*
 * Integration: the pg pool against a real PostgreSQL 15.
 *
 * The server comes from the harness (a private cluster started once per
 * test case group in the parent process), or, when MBOX_TEST_PG_CONNINFO is
 * set, from that conninfo (an external server: the suite creates and drops
 * tables named pgpool_* and terminates the other backends of its database,
 * so do not point it at anything that matters).
 *
 * MBOX_TEST_LOG=debug|info|warn|error sets the log level (default info).
 *
 * Each test runs its own event_base and drives it until the callbacks it
 * expects have arrived (run_until).
 */
#include <arpa/inet.h>
#include <check.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include <event2/event.h>

#include "harness.h"
#include "log.h"
#include "metrics.h"
#include "pg.h"

static struct harness h;
static bool have_harness;
static char conninfo[600];

static void
server_setup(void)
{
    const char *ext = getenv("MBOX_TEST_PG_CONNINFO");
    if (ext != NULL && ext[0] != '\0') {
        snprintf(conninfo, sizeof(conninfo), "%s", ext);
        return;
    }
    if (!harness_start(&h, HARNESS_PG)) {
        fprintf(stderr, "test_pg_pool: harness failed to start PostgreSQL\n");
        exit(1);
    }
    have_harness = true;
    snprintf(conninfo, sizeof(conninfo), "%s", h.pg_conninfo);
}

static void
server_teardown(void)
{
    if (have_harness)
        harness_stop(&h);
    have_harness = false;
}

/* ---- helpers ---- */

static uint64_t
now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

struct waiter {
    struct event_base *base;
    bool (*cond)(void *);
    void *arg;
    uint64_t deadline;
    bool ok;
};

static void
wait_tick(evutil_socket_t fd, short what, void *arg)
{
    struct waiter *w = arg;
    if (w->cond != NULL && w->cond(w->arg)) {
        w->ok = true;
        event_base_loopbreak(w->base);
    } else if (now_ms() >= w->deadline) {
        event_base_loopbreak(w->base);
    }
}

/* Runs the loop until cond(arg) holds (true) or timeout_ms passes (false).
 * cond NULL: just run the loop for timeout_ms. */
static bool
run_until(struct event_base *base, bool (*cond)(void *), void *arg, int timeout_ms)
{
    if (cond != NULL && cond(arg))
        return true;
    struct waiter w = {.base = base, .cond = cond, .arg = arg, .deadline = now_ms() + timeout_ms};
    struct event *ev = event_new(base, -1, EV_PERSIST, wait_tick, &w);
    struct timeval tv = {.tv_sec = 0, .tv_usec = 2000};
    ck_assert_ptr_nonnull(ev);
    event_add(ev, &tv);
    event_base_dispatch(base);
    event_free(ev);
    return w.ok;
}

/* A plain blocking connection for setup and for killing backends. */
static void
exec_blocking(const char *sql)
{
    PGconn *c = PQconnectdb(conninfo);
    ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect: %s", PQerrorMessage(c));
    PGresult *r = PQexec(c, sql);
    ExecStatusType st = PQresultStatus(r);
    ck_assert_msg(st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK, "%s: %s", sql,
                  PQresultErrorMessage(r));
    PQclear(r);
    PQfinish(c);
}

struct env {
    struct event_base *base;
    struct metrics *metrics;
    struct pg_pool *pool;
};

static void
env_open(struct env *e, const struct pg_pool_config *cfg_in)
{
    struct pg_pool_config cfg = *cfg_in;
    if (cfg.conninfo == NULL)
        cfg.conninfo = conninfo;
    e->base = event_base_new();
    ck_assert_ptr_nonnull(e->base);
    e->metrics = metrics_new();
    ck_assert_ptr_nonnull(e->metrics);
    e->pool = pg_pool_new(e->base, &cfg, e->metrics);
    ck_assert_ptr_nonnull(e->pool);
}

static void
env_close(struct env *e)
{
    pg_pool_free(e->pool);
    event_base_free(e->base);
    metrics_free(e->metrics);
}

static bool
all_connected(void *arg)
{
    struct pg_pool *p = arg;
    return pg_pool_connected(p) == pg_pool_size(p);
}

static int64_t
counter(struct env *e, const char *name, const char *labels)
{
    return metric_value(metrics_counter(e->metrics, name, "", labels));
}

/* One completed query, copied out of the callback. */
struct outcome {
    bool done;
    enum pg_err_kind kind;
    char sqlstate[6];
    char message[256];
    int64_t i[4];
    int order; /* completion rank */
};

struct batch {
    int n, done;
    struct outcome *out;
};

static bool
batch_done(void *arg)
{
    struct batch *b = arg;
    return b->done >= b->n;
}

struct slot {
    struct batch *b;
    int idx;
};

/* Records the outcome and the first row's int columns (up to 4). */
static void
record_cb(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct slot *s = arg;
    struct outcome *o = &s->b->out[s->idx];
    ck_assert_msg(!o->done, "callback called twice for %d", s->idx);
    o->done = true;
    o->order = s->b->done++;
    o->kind = err->kind;
    memcpy(o->sqlstate, err->sqlstate, sizeof(o->sqlstate));
    snprintf(o->message, sizeof(o->message), "%s", err->message ? err->message : "");
    if (err->kind == PG_OK) {
        ck_assert_ptr_nonnull(res);
        for (int c = 0; c < 4 && c < PQnfields(res); c++)
            o->i[c] = PQntuples(res) > 0 ? pg_get_i64(res, 0, c) : -1;
    } else {
        ck_assert_ptr_null(res);
    }
}

/* ---- tests ---- */

struct types_out {
    bool done;
    enum pg_err_kind kind;
    int64_t a, e;
    int64_t f, s;
    char b[64];
    unsigned char c[16];
    size_t clen;
    bool d, g, n_null, b_null;
    int cols;
};

static void
types_cb(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct types_out *o = arg;
    o->done = true;
    o->kind = err->kind;
    if (err->kind != PG_OK) {
        fprintf(stderr, "types_cb: %s\n", err->message);
        return;
    }
    ck_assert_int_eq(PQntuples(res), 1);
    o->cols = PQnfields(res);
    o->a = pg_get_i64(res, 0, pg_col(res, "a"));
    size_t len;
    const char *b = pg_get_bytes(res, 0, pg_col(res, "b"), &len);
    ck_assert_uint_lt(len, sizeof(o->b));
    memcpy(o->b, b, len);
    o->b[len] = '\0';
    const char *c = pg_get_bytes(res, 0, pg_col(res, "c"), &o->clen);
    ck_assert_uint_le(o->clen, sizeof(o->c));
    memcpy(o->c, c, o->clen);
    o->d = pg_get_bool(res, 0, pg_col(res, "d"));
    o->e = pg_get_i64(res, 0, pg_col(res, "e"));
    o->f = pg_get_i64(res, 0, pg_col(res, "f"));
    o->g = pg_get_bool(res, 0, pg_col(res, "g"));
    o->n_null = pg_is_null(res, 0, pg_col(res, "n"));
    o->b_null = pg_is_null(res, 0, pg_col(res, "bn"));
    o->s = pg_get_i64(res, 0, pg_col(res, "s"));
}

static bool
types_done(void *arg)
{
    return ((struct types_out *)arg)->done;
}

/* Binary parameters in, binary results out, NULLs both ways. */
START_TEST(test_types_roundtrip)
{
    struct env e;
    struct pg_pool_config cfg = {.size = 1, .backoff_min_ms = 50, .backoff_max_ms = 500};
    env_open(&e, &cfg);
    /* registered before the connection is up: prepared on connect */
    ck_assert(pg_pool_prepare(e.pool, "types",
                              "SELECT $1::int8 AS a, $2::text AS b, $3::bytea AS c, $4::bool AS d,"
                              " $5::int8 AS e, $6::int4 AS f, $7::bool AS g, $8::int8 AS n,"
                              " $9::text AS bn, (-3)::int2 AS s",
                              9, NULL));
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));

    static const unsigned char blob[6] = {0, 1, 0xfe, 0, 0xff, 'x'};
    struct pg_params pp;
    pg_params_init(&pp);
    pg_param_i64(&pp, -1234567890123LL);
    pg_param_text(&pp, "héllo wörld");
    pg_param_bytea(&pp, blob, sizeof(blob));
    pg_param_bool(&pp, true);
    pg_param_i64(&pp, INT64_MIN);
    pg_param_i32(&pp, -70000);
    pg_param_bool(&pp, false);
    pg_param_null(&pp);
    pg_param_text(&pp, NULL);
    struct types_out o = {0};
    ck_assert(pg_query(e.pool, "types", &pp, types_cb, &o));
    ck_assert(run_until(e.base, types_done, &o, 5000));
    ck_assert_int_eq(o.kind, PG_OK);
    ck_assert_int_eq(o.cols, 10);
    ck_assert_int_eq(o.a, -1234567890123LL);
    ck_assert_str_eq(o.b, "héllo wörld");
    ck_assert_uint_eq(o.clen, sizeof(blob));
    ck_assert_mem_eq(o.c, blob, sizeof(blob));
    ck_assert(o.d);
    ck_assert_int_eq(o.e, INT64_MIN);
    ck_assert_int_eq(o.f, -70000);
    ck_assert(!o.g);
    ck_assert(o.n_null);
    ck_assert(o.b_null);
    ck_assert_int_eq(o.s, -3);

    /* SQL text: the binary parameters carry their types (no casts needed) */
    memset(&o, 0, sizeof(o));
    pg_params_init(&pp);
    pg_param_i64(&pp, 9007199254740993LL);
    pg_param_text(&pp, "");
    pg_param_bytea(&pp, NULL, 0);
    pg_param_bool(&pp, true);
    pg_param_i64(&pp, -1);
    pg_param_i32(&pp, 5);
    pg_param_bool(&pp, true);
    pg_param_i64(&pp, 7);
    pg_param_text(&pp, "not null");
    ck_assert(pg_query_sql(e.pool,
                           "SELECT $1 AS a, $2::text AS b, $3 AS c, $4 AS d, $5 AS e, $6 AS f,"
                           " $7 AS g, $8 AS n, $9::text AS bn, 1::int2 AS s",
                           &pp, types_cb, &o));
    ck_assert(run_until(e.base, types_done, &o, 5000));
    ck_assert_int_eq(o.kind, PG_OK);
    ck_assert_int_eq(o.a, 9007199254740993LL);
    ck_assert_str_eq(o.b, "");
    ck_assert_uint_eq(o.clen, 0); /* empty bytea, not NULL */
    ck_assert_int_eq(o.e, -1);
    ck_assert_int_eq(o.f, 5);
    ck_assert(o.g);
    ck_assert(!o.n_null);
    ck_assert(!o.b_null);
    ck_assert_int_eq(o.s, 1);
    ck_assert_int_eq(counter(&e, "mbox_pg_queries_total", "result=\"ok\""), 2);
    env_close(&e);
}
END_TEST

/* A table round trip with declared parameter types. */
START_TEST(test_table_roundtrip)
{
    exec_blocking("DROP TABLE IF EXISTS pgpool_rt;"
                  "CREATE TABLE pgpool_rt (id int8 PRIMARY KEY, name text, body bytea, flag bool)");
    struct env e;
    struct pg_pool_config cfg = {.size = 2};
    env_open(&e, &cfg);
    static const Oid types[4] = {20, 25, 17, 16};
    ck_assert(pg_pool_prepare(e.pool, "ins",
                              "INSERT INTO pgpool_rt (id, name, body, flag) VALUES ($1, $2, $3, $4)"
                              " RETURNING id, (body IS NULL)::int4, length(body)::int8",
                              4, types));
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));

    struct outcome out[3] = {0};
    struct batch b = {.n = 3, .out = out};
    struct slot slots[3];
    for (int i = 0; i < 3; i++) {
        struct pg_params pp;
        pg_params_init(&pp);
        pg_param_i64(&pp, -(int64_t)i - 1);
        pg_param_text(&pp, i == 1 ? NULL : "n");
        if (i == 2)
            pg_param_null(&pp);
        else
            pg_param_bytea(&pp, "\0\0\0", (size_t)i + 1);
        pg_param_bool(&pp, i % 2 == 0);
        slots[i] = (struct slot){&b, i};
        ck_assert(pg_query(e.pool, "ins", &pp, record_cb, &slots[i]));
    }
    ck_assert(run_until(e.base, batch_done, &b, 5000));
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(out[i].kind, PG_OK);
        ck_assert_int_eq(out[i].i[0], -(int64_t)i - 1);
        ck_assert_int_eq(out[i].i[1], i == 2);
        ck_assert_int_eq(out[i].i[2], i == 2 ? 0 : i + 1);
    }
    env_close(&e);
    exec_blocking("DROP TABLE pgpool_rt");
}
END_TEST

struct pipe_rec {
    int idx;
    int64_t v;
    int pid;
    bool ok;
};

struct pipe_state {
    int done;
    struct pipe_rec rec[200];
};

struct pipe_slot {
    struct pipe_state *st;
    int idx;
};

static void
pipe_cb(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct pipe_slot *s = arg;
    struct pipe_rec *r = &s->st->rec[s->st->done++];
    r->idx = s->idx;
    r->ok = err->kind == PG_OK;
    if (r->ok) {
        r->v = pg_get_i64(res, 0, 0);
        r->pid = (int)pg_get_i64(res, 0, 1);
    }
}

static bool
pipe_done(void *arg)
{
    return ((struct pipe_state *)arg)->done >= 200;
}

/* 200 queries in flight at once on 2 connections, completed in order per connection. */
START_TEST(test_pipeline_200)
{
    struct env e;
    struct pg_pool_config cfg = {.size = 2, .max_inflight = 150};
    env_open(&e, &cfg);
    ck_assert(
        pg_pool_prepare(e.pool, "dbl", "SELECT $1::int8 * 2, pg_backend_pid()::int4", 1, NULL));
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));

    static struct pipe_state st;
    static struct pipe_slot slots[200];
    memset(&st, 0, sizeof(st));
    /* all sent before the loop runs once more: truly in flight together */
    for (int i = 0; i < 200; i++) {
        struct pg_params pp;
        pg_params_init(&pp);
        pg_param_i64(&pp, i);
        slots[i] = (struct pipe_slot){&st, i};
        ck_assert_msg(pg_query(e.pool, "dbl", &pp, pipe_cb, &slots[i]), "query %d refused", i);
    }
    ck_assert_int_eq(st.done, 0); /* never called from inside pg_query */
    ck_assert(run_until(e.base, pipe_done, &st, 10000));

    int pids[2] = {0, 0}, last[2] = {-1, -1}, count[2] = {0, 0};
    for (int k = 0; k < 200; k++) {
        struct pipe_rec *r = &st.rec[k];
        ck_assert(r->ok);
        ck_assert_int_eq(r->v, 2 * r->idx);
        int j = pids[0] == 0 || pids[0] == r->pid ? 0 : 1;
        if (pids[j] == 0)
            pids[j] = r->pid;
        ck_assert_int_eq(pids[j], r->pid); /* at most two backends */
        ck_assert_int_gt(r->idx, last[j]); /* FIFO per connection */
        last[j] = r->idx;
        count[j]++;
    }
    ck_assert_int_ne(pids[1], 0); /* both connections were used */
    ck_assert_int_eq(count[0] + count[1], 200);
    ck_assert_int_ge(count[0], 50);
    ck_assert_int_ge(count[1], 50);
    ck_assert_int_eq(counter(&e, "mbox_pg_queries_total", "result=\"ok\""), 200);
    env_close(&e);
}
END_TEST

/* Errors carry their SQLSTATE and do not disturb the queries around them. */
START_TEST(test_query_errors)
{
    exec_blocking(
        "DROP TABLE IF EXISTS pgpool_uniq; CREATE TABLE pgpool_uniq (id int8 PRIMARY KEY)");
    struct env e;
    struct pg_pool_config cfg = {.size = 1};
    env_open(&e, &cfg);
    ck_assert(pg_pool_prepare(e.pool, "ins", "INSERT INTO pgpool_uniq VALUES ($1)", 1, NULL));
    ck_assert(pg_pool_prepare(e.pool, "div", "SELECT 10 / $1::int4", 1, NULL));
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));

    struct outcome out[7] = {0};
    struct batch b = {.n = 7, .out = out};
    struct slot s[7];
    for (int i = 0; i < 7; i++)
        s[i] = (struct slot){&b, i};
    struct pg_params one, zero, two;
    pg_params_init(&one);
    pg_param_i64(&one, 1);
    pg_params_init(&zero);
    pg_param_i32(&zero, 0);
    pg_params_init(&two);
    pg_param_i32(&two, 2);

    /* all in one pipeline on the one connection */
    ck_assert(pg_query(e.pool, "ins", &one, record_cb, &s[0]));
    ck_assert(pg_query(e.pool, "ins", &one, record_cb, &s[1])); /* 23505 */
    ck_assert(pg_query(e.pool, "div", &two, record_cb, &s[2]));
    ck_assert(pg_query(e.pool, "div", &zero, record_cb, &s[3])); /* 22012 */
    ck_assert(pg_query(e.pool, "div", &two, record_cb, &s[4]));
    ck_assert(pg_query(e.pool, "no_such_stmt", NULL, record_cb, &s[5])); /* 26000 */
    ck_assert(pg_query_sql(e.pool, "SELECT count(*) FROM pgpool_uniq", NULL, record_cb, &s[6]));
    ck_assert(run_until(e.base, batch_done, &b, 5000));

    for (int i = 0; i < 7; i++)
        ck_assert_int_eq(out[i].order, i);
    ck_assert_int_eq(out[0].kind, PG_OK);
    ck_assert_int_eq(out[1].kind, PG_ERR_QUERY);
    ck_assert_str_eq(out[1].sqlstate, "23505");
    ck_assert_ptr_nonnull(strstr(out[1].message, "duplicate key"));
    size_t ml = strlen(out[1].message);
    ck_assert(ml > 0 && out[1].message[ml - 1] != '\n');
    ck_assert_int_eq(out[2].kind, PG_OK);
    ck_assert_int_eq(out[2].i[0], 5);
    ck_assert_int_eq(out[3].kind, PG_ERR_QUERY);
    ck_assert_str_eq(out[3].sqlstate, "22012");
    ck_assert_int_eq(out[4].kind, PG_OK);
    ck_assert_int_eq(out[4].i[0], 5);
    ck_assert_int_eq(out[5].kind, PG_ERR_QUERY);
    ck_assert_str_eq(out[5].sqlstate, "26000");
    ck_assert_int_eq(out[6].kind, PG_OK);
    ck_assert_int_eq(out[6].i[0], 1);
    ck_assert_str_eq(out[6].sqlstate, "");
    ck_assert_int_eq(pg_pool_connected(e.pool), 1);
    ck_assert_int_eq(counter(&e, "mbox_pg_queries_total", "result=\"error\""), 3);
    ck_assert_int_eq(counter(&e, "mbox_pg_queries_total", "result=\"ok\""), 4);
    env_close(&e);
    exec_blocking("DROP TABLE pgpool_uniq");
}
END_TEST

/* A slow query times out, the ones behind it fail fast, the pool recovers. */
START_TEST(test_timeout)
{
    struct env e;
    struct pg_pool_config cfg = {
        .size = 1, .backoff_min_ms = 50, .backoff_max_ms = 500, .query_timeout_ms = 300};
    env_open(&e, &cfg);
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));

    struct outcome out[3] = {0};
    struct batch b = {.n = 2, .out = out};
    struct slot s[3] = {{&b, 0}, {&b, 1}, {&b, 2}};
    uint64_t t0 = now_ms();
    ck_assert(pg_query_sql(e.pool, "SELECT pg_sleep(2)", NULL, record_cb, &s[0]));
    ck_assert(pg_query_sql(e.pool, "SELECT 1::int8", NULL, record_cb, &s[1]));
    ck_assert(run_until(e.base, batch_done, &b, 3000));
    uint64_t took = now_ms() - t0;
    ck_assert_int_eq(out[0].kind, PG_ERR_TIMEOUT);
    ck_assert_int_eq(out[1].kind, PG_ERR_UNAVAILABLE);
    ck_assert_int_eq(out[0].order, 0);
    ck_assert_msg(took >= 280 && took < 1500, "timeout after %llu ms", (unsigned long long)took);

    /* reconnects after the backoff and works again */
    ck_assert(run_until(e.base, all_connected, e.pool, 3000));
    b.n = 3;
    ck_assert(pg_query_sql(e.pool, "SELECT 41::int8 + 1", NULL, record_cb, &s[2]));
    ck_assert(run_until(e.base, batch_done, &b, 3000));
    ck_assert_int_eq(out[2].kind, PG_OK);
    ck_assert_int_eq(out[2].i[0], 42);
    ck_assert_int_eq(counter(&e, "mbox_pg_queries_total", "result=\"timeout\""), 1);
    ck_assert_int_eq(counter(&e, "mbox_pg_queries_total", "result=\"unavailable\""), 1);
    ck_assert_int_eq(counter(&e, "mbox_pg_disconnects_total", "reason=\"query_timeout\""), 1);
    env_close(&e);
}
END_TEST

/* Backends killed under the pool: in-flight queries fail, the pool comes back. */
START_TEST(test_backend_killed)
{
    struct env e;
    struct pg_pool_config cfg = {.size = 2, .backoff_min_ms = 100, .backoff_max_ms = 1000};
    env_open(&e, &cfg);
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));
    ck_assert_int_eq(metric_value(metrics_gauge(e.metrics, "mbox_pg_connections_ready", "", NULL)),
                     2);

    struct outcome out[14] = {0};
    struct batch b = {.n = 4, .out = out};
    struct slot s[14];
    for (int i = 0; i < 14; i++)
        s[i] = (struct slot){&b, i};
    for (int i = 0; i < 4; i++)
        ck_assert(pg_query_sql(e.pool, "SELECT pg_sleep(30)", NULL, record_cb, &s[i]));
    run_until(e.base, NULL, NULL, 200); /* let them start on the server */
    ck_assert_int_eq(b.done, 0);

    uint64_t t0 = now_ms();
    exec_blocking("SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                  " WHERE pid <> pg_backend_pid() AND datname = current_database()");
    ck_assert(run_until(e.base, batch_done, &b, 5000));
    for (int i = 0; i < 4; i++)
        ck_assert_int_eq(out[i].kind, PG_ERR_UNAVAILABLE);
    ck_assert_int_lt(pg_pool_connected(e.pool), 2);

    /* back after the backoff (min 100 ms, so not at once) */
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));
    ck_assert_uint_ge(now_ms() - t0, 70);
    ck_assert_int_eq(metric_value(metrics_gauge(e.metrics, "mbox_pg_connections_ready", "", NULL)),
                     2);
    b.n = 14;
    for (int i = 4; i < 14; i++)
        ck_assert(pg_query_sql(e.pool, "SELECT 7::int8", NULL, record_cb, &s[i]));
    ck_assert(run_until(e.base, batch_done, &b, 5000));
    for (int i = 4; i < 14; i++) {
        ck_assert_int_eq(out[i].kind, PG_OK);
        ck_assert_int_eq(out[i].i[0], 7);
    }
    ck_assert_int_eq(counter(&e, "mbox_pg_queries_total", "result=\"unavailable\""), 4);
    env_close(&e);
}
END_TEST

struct big {
    int done, bad;
    int64_t want;
};

static void
big_cb(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct big *b = arg;
    b->done++;
    if (err->kind != PG_OK || pg_get_i64(res, 0, 0) != b->want) {
        fprintf(stderr, "big_cb: kind=%d msg=%s\n", err->kind, err->message);
        b->bad++;
    }
}

static bool
big_done(void *arg)
{
    return ((struct big *)arg)->done >= 40;
}

/* Megabytes queued at once: output waits for EV_WRITE, big results arrive
 * in pieces, and everything still matches up. */
START_TEST(test_large_payloads)
{
    struct env e;
    struct pg_pool_config cfg = {.size = 1};
    env_open(&e, &cfg);
    ck_assert(pg_pool_prepare(e.pool, "len", "SELECT length($1::bytea)::int8", 1, NULL));
    ck_assert(
        pg_pool_prepare(e.pool, "gen", "SELECT length(repeat('x', $1::int4))::int8", 1, NULL));
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));
    size_t n = 1 << 20;
    unsigned char *blob = malloc(n);
    ck_assert_ptr_nonnull(blob);
    for (size_t i = 0; i < n; i++)
        blob[i] = (unsigned char)(i * 7);
    struct big b = {.want = (int64_t)n};
    for (int i = 0; i < 40; i++) {
        struct pg_params pp;
        pg_params_init(&pp);
        if (i % 2 == 0) {
            pg_param_bytea(&pp, blob, n);
            ck_assert(pg_query(e.pool, "len", &pp, big_cb, &b));
        } else {
            pg_param_i32(&pp, (int32_t)n);
            ck_assert(pg_query(e.pool, "gen", &pp, big_cb, &b));
        }
    }
    free(blob); /* libpq copied it */
    ck_assert(run_until(e.base, big_done, &b, 20000));
    ck_assert_int_eq(b.bad, 0);

    /* results of 4 MB each, read in many pieces */
    struct outcome out[3] = {0};
    struct batch bt = {.n = 3, .out = out};
    struct slot s[3] = {{&bt, 0}, {&bt, 1}, {&bt, 2}};
    for (int i = 0; i < 3; i++)
        ck_assert(pg_query_sql(e.pool,
                               "SELECT length(r)::int8, 5::int8 FROM (SELECT repeat('y', 4000000)"
                               " AS r) t",
                               NULL, record_cb, &s[i]));
    ck_assert(run_until(e.base, batch_done, &bt, 20000));
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(out[i].kind, PG_OK);
        ck_assert_int_eq(out[i].i[0], 4000000);
        ck_assert_int_eq(out[i].i[1], 5);
    }
    env_close(&e);
}
END_TEST

static bool
two_prepare_failures(void *arg)
{
    return counter(arg, "mbox_pg_disconnects_total", "reason=\"prepare_failed\"") >= 2;
}

/* A statement the server rejects keeps the connection from ever being ready. */
START_TEST(test_bad_prepare)
{
    struct env e;
    struct pg_pool_config cfg = {.size = 1, .backoff_min_ms = 20, .backoff_max_ms = 50};
    env_open(&e, &cfg);
    ck_assert(pg_pool_prepare(e.pool, "good", "SELECT 1", 0, NULL));
    ck_assert(pg_pool_prepare(e.pool, "bad", "SELEKT nonsense", 0, NULL));
    /* Two failed rounds (each a whole connect: slow on a loaded machine). */
    run_until(e.base, two_prepare_failures, &e, 5000);
    ck_assert_int_eq(pg_pool_connected(e.pool), 0);
    ck_assert_int_ge(counter(&e, "mbox_pg_disconnects_total", "reason=\"prepare_failed\""), 2);
    env_close(&e);
}
END_TEST

/* The first row's text columns of one query. */
struct text_out {
    bool done;
    enum pg_err_kind kind;
    char col[3][128];
};

static void
text_cb(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct text_out *o = arg;
    o->done = true;
    o->kind = err->kind;
    if (err->kind != PG_OK)
        return;
    for (int c = 0; c < PQnfields(res) && c < 3; c++) {
        size_t len;
        const char *v = pg_get_bytes(res, 0, c, &len);
        snprintf(o->col[c], sizeof(o->col[c]), "%.*s", (int)len, v != NULL ? v : "");
    }
}

static bool
text_done(void *arg)
{
    return ((struct text_out *)arg)->done;
}

/* session_sql runs on every connection before its statements; binary
 * arrays (pg_param_array) arrive as the arrays they encode. */
START_TEST(test_session_sql_and_arrays)
{
    struct env e;
    struct pg_pool_config cfg = {.size = 2,
                                 .session_sql = "SET plan_cache_mode = force_generic_plan"};
    env_open(&e, &cfg);
    ck_assert(pg_pool_prepare(e.pool, "q",
                              "SELECT current_setting('plan_cache_mode'),"
                              " array_to_string($1::int8[], ',') || '|' ||"
                              " array_to_string($2::text[], ',', '*'),"
                              " encode(($3::bytea[])[2], 'hex') || '|' ||"
                              " array_to_string($4::int4[], ',')",
                              4, NULL));
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));
    for (int round = 0; round < 2; round++) { /* both connections */
        struct pg_array a[4];
        pg_array_init(&a[0], PG_ARRAY_INT8);
        pg_array_i64(&a[0], INT64_MIN);
        pg_array_i64(&a[0], 42);
        pg_array_init(&a[1], PG_ARRAY_TEXT);
        pg_array_bytes(&a[1], "x", 1);
        pg_array_null(&a[1]);
        pg_array_bytes(&a[1], "", 0);
        pg_array_init(&a[2], PG_ARRAY_BYTEA);
        pg_array_bytes(&a[2], "", 0);
        pg_array_bytes(&a[2], "\x00\xff", 2);
        pg_array_init(&a[3], PG_ARRAY_INT4);
        pg_array_i32(&a[3], -7);
        struct pg_params pp;
        pg_params_init(&pp);
        for (int k = 0; k < 4; k++)
            pg_param_array(&pp, &a[k]);
        struct text_out o = {0};
        ck_assert(pg_query(e.pool, "q", &pp, text_cb, &o));
        for (int k = 0; k < 4; k++)
            pg_array_free(&a[k]);
        ck_assert(run_until(e.base, text_done, &o, 5000));
        ck_assert_int_eq(o.kind, PG_OK);
        ck_assert_str_eq(o.col[0], "force_generic_plan");
        ck_assert_str_eq(o.col[1], "-9223372036854775808,42|x,*,");
        ck_assert_str_eq(o.col[2], "00ff|-7");
    }
    env_close(&e);

    /* A session_sql the server rejects keeps the connection from being ready. */
    struct pg_pool_config bad = {.size = 1,
                                 .backoff_min_ms = 20,
                                 .backoff_max_ms = 50,
                                 .session_sql = "SET no_such_setting_at_all = 1"};
    env_open(&e, &bad);
    run_until(e.base, two_prepare_failures, &e, 5000);
    ck_assert_int_eq(pg_pool_connected(e.pool), 0);
    ck_assert_int_ge(counter(&e, "mbox_pg_disconnects_total", "reason=\"prepare_failed\""), 2);
    env_close(&e);
}
END_TEST

static void
never_cb(const PGresult *res, const struct pg_error *err, void *arg)
{
    int *called = arg;
    (*called)++;
}

/* Nothing listening: pg_query refuses at once and never calls back. */
START_TEST(test_unreachable)
{
    int port = harness_free_port();
    ck_assert_int_gt(port, 0);
    char ci[256];
    snprintf(ci, sizeof(ci), "host=127.0.0.1 port=%d user=nobody dbname=nothing connect_timeout=2",
             port);
    struct env e;
    struct pg_pool_config cfg = {
        .conninfo = ci, .size = 2, .backoff_min_ms = 20, .backoff_max_ms = 80};
    env_open(&e, &cfg);
    ck_assert(pg_pool_prepare(e.pool, "s", "SELECT 1", 0, NULL));
    int called = 0;
    for (int round = 0; round < 5; round++) {
        run_until(e.base, NULL, NULL, 60);
        ck_assert_int_eq(pg_pool_connected(e.pool), 0);
        ck_assert(!pg_query(e.pool, "s", NULL, never_cb, &called));
        ck_assert(!pg_query_sql(e.pool, "SELECT 1", NULL, never_cb, &called));
    }
    run_until(e.base, NULL, NULL, 50);
    ck_assert_int_eq(called, 0);
    /* it kept retrying */
    ck_assert_int_ge(counter(&e, "mbox_pg_disconnects_total", "reason=\"connect_failed\""), 4);
    env_close(&e);
}
END_TEST

struct chain {
    struct pg_pool *pool;
    int left, done;
    int64_t sum;
    bool failed;
};

static void
chain_cb(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct chain *ch = arg;
    ch->done++;
    if (err->kind != PG_OK) {
        ch->failed = true;
        return;
    }
    ch->sum += pg_get_i64(res, 0, 0);
    if (--ch->left > 0) {
        struct pg_params pp;
        pg_params_init(&pp);
        pg_param_i64(&pp, ch->left);
        if (!pg_query(ch->pool, "late", &pp, chain_cb, ch))
            ch->failed = true;
    }
}

static bool
chain_done(void *arg)
{
    struct chain *ch = arg;
    return ch->left == 0 || ch->failed;
}

/* A statement registered after start is usable at once; callbacks can query. */
START_TEST(test_late_prepare_and_chain)
{
    struct env e;
    struct pg_pool_config cfg = {.size = 2};
    env_open(&e, &cfg);
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));
    ck_assert(pg_pool_prepare(e.pool, "late", "SELECT $1::int8 + 1", 1, NULL));
    struct chain ch = {.pool = e.pool, .left = 50};
    struct pg_params pp;
    pg_params_init(&pp);
    pg_param_i64(&pp, 50);
    ck_assert(pg_query(e.pool, "late", &pp, chain_cb, &ch)); /* right behind the prepare */
    ck_assert(run_until(e.base, chain_done, &ch, 5000));
    ck_assert(!ch.failed);
    ck_assert_int_eq(ch.done, 50);
    ck_assert_int_eq(ch.sum, 50 * 51 / 2 + 50); /* sum of (k + 1), k = 1..50 */
    ck_assert_int_eq(pg_pool_connected(e.pool), 2);
    env_close(&e);
}
END_TEST

/* Freeing the pool completes what is in flight with PG_ERR_UNAVAILABLE. */
START_TEST(test_free_inflight)
{
    struct env e;
    struct pg_pool_config cfg = {.size = 2};
    env_open(&e, &cfg);
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));
    struct outcome out[5] = {0};
    struct batch b = {.n = 5, .out = out};
    struct slot s[5];
    for (int i = 0; i < 5; i++) {
        s[i] = (struct slot){&b, i};
        ck_assert(pg_query_sql(e.pool, "SELECT pg_sleep(10)", NULL, record_cb, &s[i]));
    }
    run_until(e.base, NULL, NULL, 50);
    pg_pool_free(e.pool);
    ck_assert_int_eq(b.done, 5);
    for (int i = 0; i < 5; i++)
        ck_assert_int_eq(out[i].kind, PG_ERR_UNAVAILABLE);
    event_base_free(e.base);
    metrics_free(e.metrics);
}
END_TEST

struct freer {
    struct pg_pool *pool;
    int calls, unavailable;
    bool freed;
};

static void
freer_cb(const PGresult *res, const struct pg_error *err, void *arg)
{
    struct freer *f = arg;
    f->calls++;
    if (err->kind == PG_ERR_UNAVAILABLE)
        f->unavailable++;
    if (!f->freed && err->kind == PG_OK) {
        f->freed = true;
        pg_pool_free(f->pool);
        /* the pool is going away: it takes nothing new */
        ck_assert(!pg_query_sql(f->pool, "SELECT 1", NULL, freer_cb, f));
    }
}

static bool
freer_done(void *arg)
{
    return ((struct freer *)arg)->calls >= 3;
}

/* pg_pool_free from inside a callback: the rest complete, nothing leaks. */
START_TEST(test_free_from_callback)
{
    struct env e;
    struct pg_pool_config cfg = {.size = 1};
    env_open(&e, &cfg);
    ck_assert(run_until(e.base, all_connected, e.pool, 5000));
    struct freer f = {.pool = e.pool};
    ck_assert(pg_query_sql(e.pool, "SELECT 1", NULL, freer_cb, &f));
    ck_assert(pg_query_sql(e.pool, "SELECT pg_sleep(10)", NULL, freer_cb, &f));
    ck_assert(pg_query_sql(e.pool, "SELECT 2", NULL, freer_cb, &f));
    ck_assert(run_until(e.base, freer_done, &f, 5000));
    ck_assert(f.freed);
    ck_assert_int_eq(f.calls, 3);
    ck_assert_int_eq(f.unavailable, 2);
    run_until(e.base, NULL, NULL, 20); /* no stale events of the pool fire */
    event_base_free(e.base);
    metrics_free(e.metrics);
}
END_TEST

/*
 * A multi-host conninfo whose first host accepts TCP connections and never
 * answers (a stopped server: the kernel completes the handshake, nothing
 * reads): the pool must reach the second host. libpq's non-blocking
 * connect does not enforce connect_timeout per host, so without the pool
 * moving on after its connect timer, every attempt hangs on the first host.
 */
START_TEST(test_multihost_stuck_first)
{
    if (!have_harness)
        return; /* needs the harness's port for the second host */
    int stuck = socket(AF_INET, SOCK_STREAM, 0);
    ck_assert_int_ge(stuck, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    ck_assert_int_eq(bind(stuck, (struct sockaddr *)&a, sizeof(a)), 0);
    ck_assert_int_eq(listen(stuck, 16), 0); /* never accepted */
    ck_assert_int_eq(getsockname(stuck, (struct sockaddr *)&a, &alen), 0);

    /* Later keywords override earlier ones in a conninfo string. */
    char ci[900];
    snprintf(ci, sizeof(ci),
             "%s host=127.0.0.1,127.0.0.1 port=%d,%d connect_timeout=1 "
             "target_session_attrs=read-write",
             conninfo, ntohs(a.sin_port), h.pg_port);
    struct env e;
    struct pg_pool_config cfg = {
        .conninfo = ci, .size = 2, .backoff_min_ms = 20, .backoff_max_ms = 100};
    env_open(&e, &cfg);
    uint64_t t0 = now_ms();
    ck_assert_msg(run_until(e.base, all_connected, e.pool, 6000),
                  "the pool never got past the stuck first host");
    ck_assert_uint_ge(now_ms() - t0, 900); /* it did wait for the first host */
    ck_assert_int_ge(counter(&e, "mbox_pg_disconnects_total", "reason=\"connect_timeout\""), 1);

    struct outcome out[1] = {0};
    struct batch b = {.n = 1, .out = out};
    struct slot sl = {&b, 0};
    ck_assert(pg_query_sql(e.pool, "SELECT 7::int8", NULL, record_cb, &sl));
    ck_assert(run_until(e.base, batch_done, &b, 5000));
    ck_assert_int_eq(out[0].kind, PG_OK);
    ck_assert_int_eq(out[0].i[0], 7);
    env_close(&e);
    close(stuck);
}
END_TEST

static Suite *
pg_pool_suite(void)
{
    Suite *s = suite_create("pg_pool");
    TCase *tc = tcase_create("server");
    tcase_add_unchecked_fixture(tc, server_setup, server_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, test_types_roundtrip);
    tcase_add_test(tc, test_table_roundtrip);
    tcase_add_test(tc, test_pipeline_200);
    tcase_add_test(tc, test_query_errors);
    tcase_add_test(tc, test_timeout);
    tcase_add_test(tc, test_backend_killed);
    tcase_add_test(tc, test_late_prepare_and_chain);
    tcase_add_test(tc, test_free_inflight);
    tcase_add_test(tc, test_free_from_callback);
    tcase_add_test(tc, test_large_payloads);
    tcase_add_test(tc, test_bad_prepare);
    tcase_add_test(tc, test_session_sql_and_arrays);
    tcase_add_test(tc, test_multihost_stuck_first);
    suite_add_tcase(s, tc);

    tc = tcase_create("no_server");
    tcase_set_timeout(tc, 30);
    tcase_add_test(tc, test_unreachable);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    /* MBOX_TEST_LOG=debug shows the pool's state transitions */
    enum log_level level;
    const char *lv = getenv("MBOX_TEST_LOG");
    if (lv != NULL && log_parse_level(lv, &level))
        log_set_level(level);
    SRunner *sr = srunner_create(pg_pool_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
