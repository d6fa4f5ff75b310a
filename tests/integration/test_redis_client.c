/*
 * Integration suite of lib/redis against a real redis-server: replies
 * through callbacks, pipelining, command timeouts, losing the server and
 * getting it back, pub/sub across a restart, backoff against a closed port,
 * and freeing the client from every kind of callback (run it under the
 * sanitizer build).
 *
 * Server: the harness starts a private Redis once for the suite (unchecked
 * fixture) and restarts it on the same port for the fault tests. With
 * MBOX_TEST_REDIS_PORT set, an external Redis on 127.0.0.1 is used instead;
 * it cannot be restarted, so the fault tests cut the clients' connections
 * with CLIENT KILL (the subscriber test kills every pub/sub client of that
 * server).
 *
 * Every test drives its own event_base with a deadline, so a broken client
 * fails a test instead of hanging it.
 */
#include "evloop.h"
#include "harness.h"
#include "metrics.h"
#include "redis.h"

#include <arpa/inet.h>
#include <check.h>
#include <event2/event.h>
#include <hiredis/hiredis.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

static struct harness h;
static bool external;
static int redis_port;

static void
suite_setup(void)
{
    const char *env = getenv("MBOX_TEST_REDIS_PORT");
    if (env != NULL && env[0] != '\0') {
        external = true;
        redis_port = atoi(env);
        ck_assert_msg(redis_port > 0 && redis_port < 65536, "bad MBOX_TEST_REDIS_PORT");
        return;
    }
    memset(&h, 0, sizeof(h));
    ck_assert_msg(harness_start(&h, HARNESS_REDIS), "harness could not start Redis");
    redis_port = h.redis_port;
}

static void
suite_teardown(void)
{
    if (!external)
        harness_stop(&h);
}

/* ---- event loop helpers ---- */

static double
cpu_ms(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1e3 +
           (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e3;
}

static bool
is_connected(void *arg)
{
    return redis_connected(arg);
}

static bool
is_disconnected(void *arg)
{
    return !redis_connected(arg);
}

struct at_least {
    const int *v;
    int n;
};

static bool
reached(void *arg)
{
    struct at_least *a = arg;
    return *a->v >= a->n;
}

static bool
wait_count(struct event_base *base, const int *v, int n, int timeout_ms)
{
    struct at_least a = {v, n};
    return run_until(base, reached, &a, timeout_ms);
}

/* ---- reply recording ---- */

struct result {
    int calls;
    int type;
    long long integer;
    char str[256];
    size_t len;
    char err[64];
    double at_ms;
    size_t elements;       /* arrays: element count... */
    long long elem_int[4]; /* ...and their integer values */
};

static void
record_cb(redisReply *reply, const char *err, void *arg)
{
    struct result *res = arg;
    res->calls++;
    res->at_ms = now_ms();
    if (reply == NULL) {
        ck_assert_ptr_nonnull(err);
        snprintf(res->err, sizeof(res->err), "%s", err);
        res->type = 0;
        return;
    }
    ck_assert_ptr_null(err);
    res->err[0] = '\0';
    res->type = reply->type;
    res->integer = reply->integer;
    res->len = 0;
    if (reply->str != NULL) {
        res->len = reply->len < sizeof(res->str) ? reply->len : sizeof(res->str) - 1;
        memcpy(res->str, reply->str, res->len);
        res->str[res->len] = '\0';
    }
    res->elements = reply->type == REDIS_REPLY_ARRAY ? reply->elements : 0;
    for (size_t i = 0; i < res->elements && i < 4; i++)
        res->elem_int[i] = reply->element[i]->integer;
}

static int
count_cb_calls(const struct result *r, int n)
{
    int total = 0;
    for (int i = 0; i < n; i++)
        total += r[i].calls;
    return total;
}

/* ---- fixtures of one test ---- */

struct t {
    struct event_base *base;
    struct metrics *metrics;
    struct redis_config cfg;
    int hooks; /* on_connect calls */
};

static void
on_connect_count(void *arg)
{
    ((struct t *)arg)->hooks++;
}

static void
t_init(struct t *t)
{
    memset(t, 0, sizeof(*t));
    t->base = event_base_new();
    ck_assert_ptr_nonnull(t->base);
    t->metrics = metrics_new();
    ck_assert_ptr_nonnull(t->metrics);
    t->cfg = (struct redis_config){
        .host = "127.0.0.1",
        .port = redis_port,
        .connect_timeout_ms = 1000,
        .command_timeout_ms = 3000,
        .backoff_min_ms = 50,
        .backoff_max_ms = 400,
    };
}

static void
t_done(struct t *t)
{
    metrics_free(t->metrics);
    event_base_free(t->base);
}

static int64_t
mval(struct t *t, const char *name, const char *labels)
{
    struct metric *m;
    if (strcmp(name, "mbox_redis_clients_connected") == 0)
        m = metrics_gauge(t->metrics, name, "", labels);
    else
        m = metrics_counter(t->metrics, name, "", labels);
    return metric_value(m);
}

/* A connected command client with the on_connect counter installed. */
static struct redis *
t_client(struct t *t)
{
    struct redis *r = redis_new(t->base, &t->cfg, t->metrics);
    ck_assert_ptr_nonnull(r);
    redis_set_on_connect(r, on_connect_count, t);
    ck_assert_msg(run_until(t->base, is_connected, r, 3000), "no connection to Redis");
    return r;
}

/* Sends a command and runs the loop until its reply; the reply lands in *res. */
static void
sync_cmd(struct t *t, struct redis *r, struct result *res, const char *fmt, const char *a1,
         const char *a2)
{
    memset(res, 0, sizeof(*res));
    ck_assert(redis_command(r, record_cb, res, fmt, a1, a2));
    ck_assert_msg(wait_count(t->base, &res->calls, 1, 5000), "no reply to %s", fmt);
}

/* Server id of the client's connection (for CLIENT KILL on an external server). */
static long long
client_id(struct t *t, struct redis *r)
{
    struct result res;
    sync_cmd(t, r, &res, "CLIENT ID", NULL, NULL);
    ck_assert_int_eq(res.type, REDIS_REPLY_INTEGER);
    return res.integer;
}

/* Runs one command on a fresh blocking connection (external-server fault injection). */
static void
side_command(const char *cmd)
{
    redisContext *c = redisConnect("127.0.0.1", redis_port);
    ck_assert_msg(c != NULL && c->err == 0, "side connection failed");
    redisReply *reply = redisCommand(c, cmd);
    ck_assert_ptr_nonnull(reply);
    freeReplyObject(reply);
    redisFree(c);
}

/*
 * Takes the server away: stops it (harness) or cuts connections (external:
 * kill1 and kill2, e.g. "CLIENT KILL ID 7"; kill2 may be NULL).
 */
static void
server_down(const char *kill1, const char *kill2)
{
    if (!external) {
        ck_assert(harness_redis_stop(&h));
        return;
    }
    side_command(kill1);
    if (kill2 != NULL)
        side_command(kill2);
}

static void
server_up(void)
{
    if (!external)
        ck_assert(harness_redis_start(&h));
}

/* ---- tests ---- */

START_TEST(set_get_roundtrip)
{
    struct t t;
    t_init(&t);
    struct redis *r = t_client(&t);
    run_for(t.base, 10);
    ck_assert_int_eq(t.hooks, 1); /* installed after the connect started: still runs */
    ck_assert_int_eq(mval(&t, "mbox_redis_clients_connected", NULL), 1);

    struct result res;
    sync_cmd(&t, r, &res, "SET %s %s", "{t:rt}:k", "hello world");
    ck_assert_int_eq(res.type, REDIS_REPLY_STATUS);
    ck_assert_str_eq(res.str, "OK");
    sync_cmd(&t, r, &res, "GET %s", "{t:rt}:k", NULL);
    ck_assert_int_eq(res.type, REDIS_REPLY_STRING);
    ck_assert_str_eq(res.str, "hello world");

    /* Binary safe: a value with a NUL inside, through the argv form. */
    const char *argv[] = {"SET", "{t:rt}:bin", "a\0b\0c"};
    const size_t lens[] = {3, 10, 5};
    memset(&res, 0, sizeof(res));
    ck_assert(redis_command_argv(r, record_cb, &res, 3, argv, lens));
    ck_assert(wait_count(t.base, &res.calls, 1, 3000));
    ck_assert_str_eq(res.str, "OK");
    const char *gargv[] = {"GET", "{t:rt}:bin"};
    memset(&res, 0, sizeof(res));
    ck_assert(redis_command_argv(r, record_cb, &res, 2, gargv, NULL));
    ck_assert(wait_count(t.base, &res.calls, 1, 3000));
    ck_assert_uint_eq(res.len, 5);
    ck_assert_int_eq(memcmp(res.str, "a\0b\0c", 5), 0);

    /* An error reply is a reply: err stays NULL, the type says error. */
    sync_cmd(&t, r, &res, "INCR %s", "{t:rt}:k", NULL);
    ck_assert_int_eq(res.type, REDIS_REPLY_ERROR);
    ck_assert_int_eq(mval(&t, "mbox_redis_commands_total", "result=\"error\""), 1);
    ck_assert_int_eq(mval(&t, "mbox_redis_commands_total", "result=\"ok\""), 4);

    /* Fire and forget: no callback, still delivered. */
    ck_assert(redis_command(r, NULL, NULL, "SET %s %s", "{t:rt}:ff", "1"));
    sync_cmd(&t, r, &res, "GET %s", "{t:rt}:ff", NULL);
    ck_assert_str_eq(res.str, "1");

    redis_free(r);
    ck_assert_int_eq(mval(&t, "mbox_redis_clients_connected", NULL), 0);
    t_done(&t);
}
END_TEST

#define NINCR 1000

struct incr_state {
    int calls;
    int in_order;
    long long last;
};

static void
incr_cb(redisReply *reply, const char *err, void *arg)
{
    struct incr_state *s = arg;
    s->calls++;
    if (reply != NULL && reply->type == REDIS_REPLY_INTEGER && reply->integer == s->last + 1)
        s->in_order++;
    if (reply != NULL)
        s->last = reply->integer;
}

START_TEST(pipelined_incr)
{
    struct t t;
    t_init(&t);
    struct redis *r = t_client(&t);
    struct result del;
    memset(&del, 0, sizeof(del));
    struct incr_state s = {0, 0, 0};

    /* All queued before the loop runs once: one write, replies in order. */
    ck_assert(redis_command(r, record_cb, &del, "DEL %s", "{t:pipe}:n"));
    for (int i = 0; i < NINCR; i++)
        ck_assert(redis_command(r, incr_cb, &s, "INCR %s", "{t:pipe}:n"));
    ck_assert(wait_count(t.base, &s.calls, NINCR, 10000));
    ck_assert_int_eq(del.calls, 1);
    ck_assert_int_eq(s.in_order, NINCR);
    ck_assert_int_eq(s.last, NINCR);

    struct result res;
    sync_cmd(&t, r, &res, "GET %s", "{t:pipe}:n", NULL);
    ck_assert_str_eq(res.str, "1000");
    ck_assert_int_eq(mval(&t, "mbox_redis_commands_total", "result=\"ok\""), NINCR + 2);
    ck_assert_int_eq(mval(&t, "mbox_redis_commands_total", "result=\"timeout\""), 0);
    redis_free(r);
    t_done(&t);
}
END_TEST

START_TEST(command_timeout)
{
    struct t t;
    t_init(&t);
    t.cfg.command_timeout_ms = 200;
    struct redis *r = t_client(&t);

    /* BLPOP on a missing key blocks this connection for 1 s (no DEBUG needed). */
    struct result res;
    memset(&res, 0, sizeof(res));
    double start = now_ms();
    ck_assert(redis_command(r, record_cb, &res, "BLPOP %s 1", "{t:to}:none"));
    ck_assert(wait_count(t.base, &res.calls, 1, 3000));
    double took = res.at_ms - start;
    ck_assert_str_eq(res.err, "timeout");
    ck_assert_msg(took >= 150 && took < 1000, "timeout after %.0f ms", took);
    ck_assert_int_eq(mval(&t, "mbox_redis_commands_total", "result=\"timeout\""), 1);

    /* The late reply (nil after 1 s) is swallowed: no second call. */
    run_for(t.base, 1100);
    ck_assert_int_eq(res.calls, 1);
    ck_assert(redis_connected(r));

    sync_cmd(&t, r, &res, "SET %s %s", "{t:to}:k", "v");
    ck_assert_str_eq(res.str, "OK");
    sync_cmd(&t, r, &res, "GET %s", "{t:to}:k", NULL);
    ck_assert_str_eq(res.str, "v");
    ck_assert_int_eq(t.hooks, 1); /* one timeout is not a reason to reconnect */
    redis_free(r);
    t_done(&t);
}
END_TEST

START_TEST(timeouts_force_reconnect)
{
    struct t t;
    t_init(&t);
    t.cfg.command_timeout_ms = 100;
    struct redis *r = t_client(&t);
    run_for(t.base, 10);
    ck_assert_int_eq(t.hooks, 1);

    /* Three commands stuck behind a 5 s block: three timeouts in a row. */
    struct result res[3];
    memset(res, 0, sizeof(res));
    for (int i = 0; i < 3; i++)
        ck_assert(redis_command(r, record_cb, &res[i], "BLPOP %s 5", "{t:tr}:none"));
    ck_assert(wait_count(t.base, &res[2].calls, 1, 2000));
    for (int i = 0; i < 3; i++) {
        ck_assert_int_eq(res[i].calls, 1);
        ck_assert_str_eq(res[i].err, "timeout");
    }
    /* The connection is presumed dead and re-opened, long before the block ends. */
    ck_assert(wait_count(t.base, &t.hooks, 2, 2000));
    ck_assert_int_ge(mval(&t, "mbox_redis_reconnects_total", NULL), 1);
    struct result ping;
    sync_cmd(&t, r, &ping, "PING", NULL, NULL);
    ck_assert_str_eq(ping.str, "PONG");
    for (int i = 0; i < 3; i++)
        ck_assert_int_eq(res[i].calls, 1);
    redis_free(r);
    t_done(&t);
}
END_TEST

static void
free_client_cb(redisReply *reply, const char *err, void *arg)
{
    struct redis **rp = arg;
    redis_free(*rp);
    *rp = NULL;
}

START_TEST(server_restart)
{
    struct t t;
    t_init(&t);
    t.cfg.backoff_min_ms = 100;
    struct redis *r = t_client(&t);
    struct redis *r2 = t_client(&t); /* frees itself from its "disconnected" callback */
    run_for(t.base, 10);
    ck_assert_int_eq(t.hooks, 2);
    char kill[128];
    snprintf(kill, sizeof(kill), "CLIENT KILL ID %lld", client_id(&t, r));
    char kill2[128];
    snprintf(kill2, sizeof(kill2), "CLIENT KILL ID %lld", client_id(&t, r2));

    struct result pend;
    memset(&pend, 0, sizeof(pend));
    ck_assert(redis_command(r, record_cb, &pend, "BLPOP %s 5", "{t:rs}:none"));
    ck_assert(redis_command(r2, free_client_cb, &r2, "BLPOP %s 5", "{t:rs}:none"));
    run_for(t.base, 20); /* the commands reach the server */

    server_down(kill, kill2);
    ck_assert(wait_count(t.base, &pend.calls, 1, 3000));
    ck_assert_str_eq(pend.err, "disconnected");
    ck_assert(run_until(t.base, is_disconnected, r, 1000));
    run_for(t.base, 20);
    ck_assert_ptr_null(r2); /* freed from inside its own "disconnected" callback */
    ck_assert_int_eq(mval(&t, "mbox_redis_clients_connected", NULL), 0);
    ck_assert_int_ge(mval(&t, "mbox_redis_commands_total", "result=\"disconnected\""), 1);

    /* While down: refused at once, the callback never runs. */
    struct result refused;
    memset(&refused, 0, sizeof(refused));
    ck_assert(!redis_command(r, record_cb, &refused, "PING"));
    if (!external) {
        run_for(t.base, 400); /* it keeps trying, and keeps refusing */
        ck_assert(!redis_connected(r));
        ck_assert(!redis_command(r, record_cb, &refused, "PING"));
        ck_assert_int_ge(mval(&t, "mbox_redis_reconnects_total", NULL), 1);
    }
    ck_assert_int_eq(refused.calls, 0);

    server_up();
    ck_assert_msg(run_until(t.base, is_connected, r, 5000), "no reconnect");
    ck_assert(wait_count(t.base, &t.hooks, 3, 1000)); /* the hook fired again */
    struct result res;
    sync_cmd(&t, r, &res, "SET %s %s", "{t:rs}:k", "back");
    ck_assert_str_eq(res.str, "OK");
    sync_cmd(&t, r, &res, "GET %s", "{t:rs}:k", NULL);
    ck_assert_str_eq(res.str, "back");
    ck_assert_int_eq(mval(&t, "mbox_redis_clients_connected", NULL), 1);
    ck_assert_int_eq(pend.calls, 1);
    redis_free(r);
    t_done(&t);
}
END_TEST

/* ---- pub/sub ---- */

struct inbox {
    int n;
    char channel[8][64];
    char payload[8][64];
    size_t len[8];
};

static void
inbox_msg(const char *channel, const char *payload, size_t len, void *arg)
{
    struct inbox *in = arg;
    if (in->n < 8) {
        snprintf(in->channel[in->n], sizeof(in->channel[0]), "%s", channel);
        size_t l = len < sizeof(in->payload[0]) ? len : sizeof(in->payload[0]);
        memcpy(in->payload[in->n], payload, l);
        in->len[in->n] = len;
    }
    in->n++;
}

static bool
wait_numsub(struct t *t, struct redis *cmd, const char *channel, long long want)
{
    double end = now_ms() + 5000;
    while (now_ms() < end) {
        struct result res;
        memset(&res, 0, sizeof(res));
        if (redis_command(cmd, record_cb, &res, "PUBSUB NUMSUB %s", channel) &&
            wait_count(t->base, &res.calls, 1, 1000) && res.elements == 2 &&
            res.elem_int[1] == want)
            return true;
        run_for(t->base, 10);
    }
    return false;
}

/* PUBLISH through the command client; returns the number of receivers. */
static long long
publish(struct t *t, struct redis *cmd, const char *channel, const char *payload, size_t len)
{
    const char *argv[] = {"PUBLISH", channel, payload};
    const size_t lens[] = {7, strlen(channel), len};
    struct result res;
    memset(&res, 0, sizeof(res));
    ck_assert(redis_command_argv(cmd, record_cb, &res, 3, argv, lens));
    ck_assert(wait_count(t->base, &res.calls, 1, 3000));
    ck_assert_int_eq(res.type, REDIS_REPLY_INTEGER);
    return res.integer;
}

static void
count_int(void *arg)
{
    (*(int *)arg)++;
}

/* A subscriber on {t:ps}:a and {t:ps}:b plus a command client, both connected. */
static void
pubsub_setup(struct t *t, struct inbox *in, int *sub_hooks, struct redis **sub, struct redis **cmd)
{
    memset(in, 0, sizeof(*in));
    *sub = redis_subscriber_new(t->base, &t->cfg, inbox_msg, in, t->metrics);
    ck_assert_ptr_nonnull(*sub);
    redis_set_on_connect(*sub, count_int, sub_hooks);
    redis_subscribe(*sub, "{t:ps}:a"); /* remembered before the connection exists */
    redis_subscribe(*sub, "{t:ps}:a"); /* duplicate: ignored */
    *cmd = t_client(t);
    ck_assert(run_until(t->base, is_connected, *sub, 3000));
    ck_assert(wait_numsub(t, *cmd, "{t:ps}:a", 1));
    redis_subscribe(*sub, "{t:ps}:b"); /* sent at once on a live connection */
    ck_assert(wait_numsub(t, *cmd, "{t:ps}:b", 1));
}

START_TEST(subscriber_receives)
{
    struct t t;
    t_init(&t);
    struct inbox in;
    int sub_hooks = 0;
    struct redis *sub, *cmd;
    pubsub_setup(&t, &in, &sub_hooks, &sub, &cmd);
    ck_assert_int_eq(sub_hooks, 1);

    ck_assert_int_eq(publish(&t, cmd, "{t:ps}:a", "one", 3), 1);
    ck_assert(wait_count(t.base, &in.n, 1, 3000));
    ck_assert_str_eq(in.channel[0], "{t:ps}:a");
    ck_assert_uint_eq(in.len[0], 3);
    ck_assert_int_eq(memcmp(in.payload[0], "one", 3), 0);

    ck_assert_int_eq(publish(&t, cmd, "{t:ps}:b", "x\0y", 3), 1); /* binary payload */
    ck_assert(wait_count(t.base, &in.n, 2, 3000));
    ck_assert_str_eq(in.channel[1], "{t:ps}:b");
    ck_assert_uint_eq(in.len[1], 3);
    ck_assert_int_eq(memcmp(in.payload[1], "x\0y", 3), 0);

    ck_assert_int_eq(publish(&t, cmd, "{t:ps}:other", "z", 1), 0);
    run_for(t.base, 50);
    ck_assert_int_eq(in.n, 2);

    /* A subscriber takes no commands. */
    struct result res;
    memset(&res, 0, sizeof(res));
    ck_assert(!redis_command(sub, record_cb, &res, "PING"));
    run_for(t.base, 20);
    ck_assert_int_eq(res.calls, 0);

    redis_free(sub);
    ck_assert(wait_numsub(&t, cmd, "{t:ps}:a", 0));
    redis_free(cmd);
    t_done(&t);
}
END_TEST

START_TEST(subscriber_resubscribes_after_restart)
{
    struct t t;
    t_init(&t);
    t.cfg.backoff_min_ms = 100;
    struct inbox in;
    int sub_hooks = 0;
    struct redis *sub, *cmd;
    pubsub_setup(&t, &in, &sub_hooks, &sub, &cmd);
    ck_assert_int_eq(publish(&t, cmd, "{t:ps}:a", "before", 6), 1);
    ck_assert(wait_count(t.base, &in.n, 1, 3000));

    char kill[128];
    snprintf(kill, sizeof(kill), "CLIENT KILL ID %lld", client_id(&t, cmd));
    server_down(kill, "CLIENT KILL TYPE pubsub");
    ck_assert(run_until(t.base, is_disconnected, sub, 3000));
    server_up();

    /* Nothing is done to the subscriber: it reconnects and subscribes again. */
    ck_assert(run_until(t.base, is_connected, cmd, 5000));
    ck_assert(wait_count(t.base, &sub_hooks, 2, 5000));
    ck_assert(wait_numsub(&t, cmd, "{t:ps}:a", 1));
    ck_assert(wait_numsub(&t, cmd, "{t:ps}:b", 1));
    ck_assert_int_eq(publish(&t, cmd, "{t:ps}:a", "after-a", 7), 1);
    ck_assert_int_eq(publish(&t, cmd, "{t:ps}:b", "after-b", 7), 1);
    ck_assert(wait_count(t.base, &in.n, 3, 3000));
    ck_assert_str_eq(in.channel[1], "{t:ps}:a");
    ck_assert_int_eq(memcmp(in.payload[1], "after-a", 7), 0);
    ck_assert_str_eq(in.channel[2], "{t:ps}:b");
    ck_assert_int_eq(memcmp(in.payload[2], "after-b", 7), 0);
    ck_assert_int_eq(mval(&t, "mbox_redis_clients_connected", NULL), 2);

    redis_free(sub);
    redis_free(cmd);
    ck_assert_int_eq(mval(&t, "mbox_redis_clients_connected", NULL), 0);
    t_done(&t);
}
END_TEST

/* ---- no server ---- */

/* A loopback port nothing listens on (right now). */
static int
closed_port(void)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    ck_assert(bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0);
    ck_assert(getsockname(fd, (struct sockaddr *)&a, &al) == 0);
    close(fd);
    return ntohs(a.sin_port);
}

START_TEST(closed_port_backs_off)
{
    struct t t;
    t_init(&t);
    t.cfg.port = closed_port();
    t.cfg.backoff_min_ms = 50;
    t.cfg.backoff_max_ms = 400;
    struct redis *r = redis_new(t.base, &t.cfg, t.metrics);
    ck_assert_ptr_nonnull(r);
    struct result res;
    memset(&res, 0, sizeof(res));
    ck_assert(!redis_command(r, record_cb, &res, "PING"));

    double cpu0 = cpu_ms();
    run_for(t.base, 1000);
    double cpu = cpu_ms() - cpu0;
    /* ~50, 100, 200, 400 ms apart (+-25%): a handful of attempts, no spinning. */
    int64_t attempts = mval(&t, "mbox_redis_reconnects_total", NULL);
    ck_assert_msg(attempts >= 2 && attempts <= 10, "%lld attempts in 1 s", (long long)attempts);
    ck_assert_msg(cpu < 200, "%.0f ms of CPU in 1 s of backoff", cpu);
    ck_assert(!redis_connected(r));
    ck_assert(!redis_command(r, record_cb, &res, "PING"));
    ck_assert_int_eq(res.calls, 0);
    ck_assert_int_eq(mval(&t, "mbox_redis_clients_connected", NULL), 0);
    redis_free(r); /* in backoff */
    run_for(t.base, 100);
    t_done(&t);
}
END_TEST

START_TEST(connect_timeout)
{
    /*
     * A listener that never accepts, its accept queue filled: the kernel
     * drops further SYNs, so a connect hangs until our timer gives up.
     */
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    ck_assert(bind(lfd, (struct sockaddr *)&a, sizeof(a)) == 0);
    ck_assert(listen(lfd, 0) == 0);
    ck_assert(getsockname(lfd, (struct sockaddr *)&a, &al) == 0);
    int fill[4];
    for (int i = 0; i < 4; i++) {
        fill[i] = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0);
        (void)connect(fill[i], (struct sockaddr *)&a, sizeof(a));
    }
    usleep(50 * 1000);

    struct t t;
    t_init(&t);
    t.cfg.port = ntohs(a.sin_port);
    t.cfg.connect_timeout_ms = 100;
    t.cfg.backoff_min_ms = 50;
    t.cfg.backoff_max_ms = 50;
    struct redis *r = redis_new(t.base, &t.cfg, t.metrics);
    ck_assert_ptr_nonnull(r);
    redis_set_on_connect(r, on_connect_count, &t);
    run_for(t.base, 1000);
    /* ~150 ms per round (100 timeout + ~50 backoff); without the timer: none in 1 s. */
    int64_t attempts = mval(&t, "mbox_redis_reconnects_total", NULL);
    ck_assert_msg(attempts >= 2 && attempts <= 10, "%lld attempts in 1 s", (long long)attempts);
    ck_assert_int_eq(t.hooks, 0);
    ck_assert(!redis_connected(r));
    redis_free(r); /* while connecting or in backoff */
    run_for(t.base, 50);
    t_done(&t);
    for (int i = 0; i < 4; i++)
        close(fill[i]);
    close(lfd);
}
END_TEST

/* ---- freeing from everywhere (the hiredis lifetime traps) ---- */

static bool
ptr_is_null(void *arg)
{
    return *(struct redis **)arg == NULL;
}

START_TEST(free_with_pending)
{
    struct t t;
    t_init(&t);
    struct redis *r = t_client(&t);
    struct result res[5];
    memset(res, 0, sizeof(res));
    for (int i = 0; i < 5; i++)
        ck_assert(redis_command(r, record_cb, &res[i], "BLPOP %s 2", "{t:fp}:none"));
    run_for(t.base, 20);
    redis_free(r);
    /* Every callback ran, with an error, before redis_free returned. */
    for (int i = 0; i < 5; i++) {
        ck_assert_int_eq(res[i].calls, 1);
        ck_assert_str_eq(res[i].err, "disconnected");
    }
    run_for(t.base, 100);
    ck_assert_int_eq(count_cb_calls(res, 5), 5);
    ck_assert_int_eq(mval(&t, "mbox_redis_commands_total", "result=\"disconnected\""), 5);
    redis_free(NULL);
    t_done(&t);
}
END_TEST

START_TEST(free_in_reply_callback)
{
    struct t t;
    t_init(&t);
    struct redis *r = t_client(&t);
    struct result res[2];
    memset(res, 0, sizeof(res));
    ck_assert(redis_command(r, free_client_cb, &r, "PING"));
    ck_assert(redis_command(r, record_cb, &res[0], "PING"));
    ck_assert(redis_command(r, record_cb, &res[1], "PING"));
    ck_assert(run_until(t.base, ptr_is_null, &r, 3000));
    /* The replies may already be in the buffer: they are not delivered after the free. */
    ck_assert_int_eq(res[0].calls, 1);
    ck_assert_str_eq(res[0].err, "disconnected");
    ck_assert_int_eq(res[1].calls, 1);
    run_for(t.base, 100);
    ck_assert_int_eq(count_cb_calls(res, 2), 2);
    t_done(&t);
}
END_TEST

static void
free_in_hook(void *arg)
{
    struct redis **rp = arg;
    redis_free(*rp);
    *rp = NULL;
}

START_TEST(free_in_connect_hook)
{
    struct t t;
    t_init(&t);
    struct redis *r = redis_new(t.base, &t.cfg, t.metrics);
    ck_assert_ptr_nonnull(r);
    redis_set_on_connect(r, free_in_hook, &r);
    ck_assert(run_until(t.base, ptr_is_null, &r, 3000));
    run_for(t.base, 100);
    ck_assert_int_eq(mval(&t, "mbox_redis_clients_connected", NULL), 0);
    t_done(&t);
}
END_TEST

START_TEST(free_in_timeout_callback)
{
    struct t t;
    t_init(&t);
    t.cfg.command_timeout_ms = 100;
    struct redis *r = t_client(&t);
    struct result res;
    memset(&res, 0, sizeof(res));
    ck_assert(redis_command(r, free_client_cb, &r, "BLPOP %s 1", "{t:ft}:none"));
    ck_assert(redis_command(r, record_cb, &res, "BLPOP %s 1", "{t:ft}:none"));
    ck_assert(run_until(t.base, ptr_is_null, &r, 3000));
    run_for(t.base, 1200); /* past the late replies */
    ck_assert_int_eq(res.calls, 1);
    t_done(&t);
}
END_TEST

static struct redis *msg_sub;
static int msg_seen;

static void
free_in_msg(const char *channel, const char *payload, size_t len, void *arg)
{
    msg_seen++;
    redis_free(msg_sub);
    msg_sub = NULL;
}

START_TEST(free_in_message_callback)
{
    struct t t;
    t_init(&t);
    msg_seen = 0;
    msg_sub = redis_subscriber_new(t.base, &t.cfg, free_in_msg, NULL, t.metrics);
    ck_assert_ptr_nonnull(msg_sub);
    redis_subscribe(msg_sub, "{t:fm}:c");
    struct redis *cmd = t_client(&t);
    ck_assert(wait_numsub(&t, cmd, "{t:fm}:c", 1));
    /* Two messages in one read: the second must not reach a freed client. */
    ck_assert(redis_command(cmd, NULL, NULL, "PUBLISH %s %s", "{t:fm}:c", "1"));
    ck_assert(redis_command(cmd, NULL, NULL, "PUBLISH %s %s", "{t:fm}:c", "2"));
    ck_assert(run_until(t.base, ptr_is_null, &msg_sub, 3000));
    ck_assert(wait_numsub(&t, cmd, "{t:fm}:c", 0));
    ck_assert_int_eq(msg_seen, 1);
    redis_free(cmd);
    t_done(&t);
}
END_TEST

START_TEST(free_while_connecting)
{
    struct t t;
    t_init(&t);
    struct redis *r = redis_new(t.base, &t.cfg, t.metrics);
    ck_assert_ptr_nonnull(r);
    struct redis *s = redis_subscriber_new(t.base, &t.cfg, inbox_msg, NULL, t.metrics);
    ck_assert_ptr_nonnull(s);
    redis_subscribe(s, "{t:fc}:c");
    ck_assert(!redis_connected(r));
    redis_free(r);
    redis_free(s);
    run_for(t.base, 100);
    ck_assert_int_eq(mval(&t, "mbox_redis_clients_connected", NULL), 0);
    t_done(&t);
}
END_TEST

/* ACL AUTH first on every connection; a refused AUTH keeps the client down and retrying. */
START_TEST(acl_auth)
{
    side_command("ACL SETUSER mbox_t on >pw-right ~* &* +@all");
    struct t t;
    t_init(&t);
    t.cfg.user = "mbox_t";
    t.cfg.password = "pw-right";
    struct redis *r = t_client(&t);
    struct result res;
    sync_cmd(&t, r, &res, "ACL WHOAMI", NULL, NULL);
    ck_assert_str_eq(res.str, "mbox_t");
    /* Again after the server dropped us: AUTH is sent on the new connection too. */
    side_command("CLIENT KILL USER mbox_t");
    ck_assert(run_until(t.base, is_disconnected, r, 3000));
    ck_assert(run_until(t.base, is_connected, r, 3000));
    sync_cmd(&t, r, &res, "ACL WHOAMI", NULL, NULL);
    ck_assert_str_eq(res.str, "mbox_t");
    redis_free(r);

    t.cfg.password = "pw-wrong";
    r = redis_new(t.base, &t.cfg, t.metrics);
    ck_assert_ptr_nonnull(r);
    int64_t before = mval(&t, "mbox_redis_reconnects_total", NULL);
    ck_assert(!run_until(t.base, is_connected, r, 1000));
    ck_assert(!redis_command(r, NULL, NULL, "PING"));
    ck_assert_int_ge(mval(&t, "mbox_redis_reconnects_total", NULL) - before, 2);
    redis_free(r);
    t_done(&t);
    side_command("ACL DELUSER mbox_t");
}
END_TEST

static Suite *
redis_client_suite(void)
{
    Suite *s = suite_create("redis_client");
    TCase *tc = tcase_create("redis");
    tcase_add_unchecked_fixture(tc, suite_setup, suite_teardown);
    tcase_set_timeout(tc, 60);
    tcase_add_test(tc, set_get_roundtrip);
    tcase_add_test(tc, acl_auth);
    tcase_add_test(tc, pipelined_incr);
    tcase_add_test(tc, command_timeout);
    tcase_add_test(tc, timeouts_force_reconnect);
    tcase_add_test(tc, server_restart);
    tcase_add_test(tc, subscriber_receives);
    tcase_add_test(tc, subscriber_resubscribes_after_restart);
    tcase_add_test(tc, closed_port_backs_off);
    tcase_add_test(tc, connect_timeout);
    tcase_add_test(tc, free_with_pending);
    tcase_add_test(tc, free_in_reply_callback);
    tcase_add_test(tc, free_in_connect_hook);
    tcase_add_test(tc, free_in_timeout_callback);
    tcase_add_test(tc, free_in_message_callback);
    tcase_add_test(tc, free_while_connecting);
    suite_add_tcase(s, tc);
    return s;
}

int
main(void)
{
    SRunner *sr = srunner_create(redis_client_suite());
    srunner_run_all(sr, CK_NORMAL);
    int failed = srunner_ntests_failed(sr);
    srunner_free(sr);
    return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;
}
