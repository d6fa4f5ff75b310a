/*
 * rcluster: a private Redis Cluster for the suites (see rcluster.h).
 */
#include "rcluster.h"
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static bool
port_free(int port)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0)
        return false;
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                            .sin_port = htons((uint16_t)port)};
    bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(fd);
    return ok;
}

/* A base port with base..base+5 and their bus ports (+10000) free, below 55000. */
static int
free_base(void)
{
    for (int k = 0; k < 100; k++) {
        int p = harness_free_port();
        if (p < 0 || p + RCL_NODES + 10000 > 55000)
            continue;
        bool ok = true;
        for (int i = 0; i < RCL_NODES && ok; i++)
            ok = port_free(p + i) && port_free(p + i + 10000);
        if (ok)
            return p;
    }
    return -1;
}

bool
rcl_start(struct rcl *c, const char *dir, const char *user, const char *pass)
{
    memset(c, 0, sizeof(*c));
    snprintf(c->dir, sizeof(c->dir), "%s", dir);
    snprintf(c->user, sizeof(c->user), "%s", user != NULL ? user : "");
    snprintf(c->pass, sizeof(c->pass), "%s", pass != NULL ? pass : "");
    char script[1024], cmd[2048];
    harness_source_path("ops/servers", script, sizeof(script));
    for (int attempt = 0; attempt < 3; attempt++) {
        c->base = free_base();
        if (c->base < 0)
            return false;
        snprintf(cmd, sizeof(cmd), "'%s' redis-cluster-start '%s' %d %s %s", script, c->dir,
                 c->base, c->user, c->pass);
        int rc = system(cmd);
        if (rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0)
            return true;
        rcl_stop(c); /* a port taken meanwhile: try elsewhere */
    }
    return false;
}

void
rcl_stop(struct rcl *c)
{
    char script[1024], cmd[2048];
    harness_source_path("ops/servers", script, sizeof(script));
    snprintf(cmd, sizeof(cmd), "'%s' redis-cluster-stop '%s'", script, c->dir);
    if (system(cmd) != 0)
        fprintf(stderr, "rcluster: stop failed in %s\n", c->dir);
}

const char *
rcl_seed(const struct rcl *c, char *buf, size_t len)
{
    snprintf(buf, len, "127.0.0.1:%d", c->base);
    return buf;
}

redisContext *
rcl_connect(const struct rcl *c, int port)
{
    struct timeval tv = {2, 0};
    redisContext *ctx = redisConnectWithTimeout("127.0.0.1", port, tv);
    if (ctx == NULL || ctx->err) {
        if (ctx != NULL)
            redisFree(ctx);
        return NULL;
    }
    redisSetTimeout(ctx, tv);
    if (c->pass[0] != '\0') {
        redisReply *r = redisCommand(ctx, "AUTH %s %s", c->user, c->pass);
        bool ok = r != NULL && r->type != REDIS_REPLY_ERROR;
        if (r != NULL)
            freeReplyObject(r);
        if (!ok) {
            redisFree(ctx);
            return NULL;
        }
    }
    return ctx;
}

static redisReply *
vcmd(const struct rcl *c, int port, const char *fmt, va_list ap)
{
    redisContext *ctx = rcl_connect(c, port);
    if (ctx == NULL)
        return NULL;
    redisReply *r = redisvCommand(ctx, fmt, ap);
    redisFree(ctx);
    return r;
}

redisReply *
rcl_cmd(const struct rcl *c, int port, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(c, port, fmt, ap);
    va_end(ap);
    return r;
}

/* A reply that must be +OK (or any non-error); frees it. */
static bool
ok_cmd(const struct rcl *c, int port, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    redisReply *r = vcmd(c, port, fmt, ap);
    va_end(ap);
    bool ok = r != NULL && r->type != REDIS_REPLY_ERROR;
    if (r != NULL && !ok)
        fprintf(stderr, "rcluster: port %d: %s\n", port, r->str);
    if (r != NULL)
        freeReplyObject(r);
    return ok;
}

/* The owner of slot according to node port: CLUSTER SLOTS there. */
static int
owner_at(const struct rcl *c, int port, unsigned slot)
{
    redisReply *r = rcl_cmd(c, port, "CLUSTER SLOTS");
    int owner = -1;
    if (r != NULL && r->type == REDIS_REPLY_ARRAY) {
        for (size_t i = 0; i < r->elements; i++) {
            redisReply *e = r->element[i];
            if (e->elements >= 3 && (long long)slot >= e->element[0]->integer &&
                (long long)slot <= e->element[1]->integer)
                owner = (int)e->element[2]->element[1]->integer;
        }
    }
    if (r != NULL)
        freeReplyObject(r);
    return owner;
}

int
rcl_owner(const struct rcl *c, unsigned slot)
{
    for (int i = 0; i < RCL_NODES; i++) {
        if (c->dead[i])
            continue;
        int o = owner_at(c, c->base + i, slot);
        if (o > 0)
            return o;
    }
    return -1;
}

int
rcl_masters(const struct rcl *c, int *ports)
{
    int n = 0;
    for (int i = 0; i < RCL_NODES; i++) {
        if (c->dead[i])
            continue;
        redisReply *r = rcl_cmd(c, c->base + i, "ROLE");
        if (r != NULL && r->type == REDIS_REPLY_ARRAY && r->elements > 0 &&
            strcmp(r->element[0]->str, "master") == 0)
            ports[n++] = c->base + i;
        if (r != NULL)
            freeReplyObject(r);
    }
    return n;
}

static bool
node_id(const struct rcl *c, int port, char *out, size_t len)
{
    redisReply *r = rcl_cmd(c, port, "CLUSTER MYID");
    bool ok = r != NULL && r->type == REDIS_REPLY_STRING;
    if (ok)
        snprintf(out, len, "%s", r->str);
    if (r != NULL)
        freeReplyObject(r);
    return ok;
}

bool
rcl_migrate_key(const struct rcl *c, int from, int to, const char *key)
{
    if (c->pass[0] != '\0')
        return ok_cmd(c, from, "MIGRATE 127.0.0.1 %d %s 0 5000 AUTH2 %s %s", to, key, c->user,
                      c->pass);
    return ok_cmd(c, from, "MIGRATE 127.0.0.1 %d %s 0 5000", to, key);
}

bool
rcl_slot_migrating(const struct rcl *c, unsigned slot, int from, int to)
{
    char from_id[64], to_id[64];
    if (!node_id(c, from, from_id, sizeof(from_id)) || !node_id(c, to, to_id, sizeof(to_id)))
        return false;
    /* Importing first: the target must accept ASKING before the source sends clients there. */
    return ok_cmd(c, to, "CLUSTER SETSLOT %u IMPORTING %s", slot, from_id) &&
           ok_cmd(c, from, "CLUSTER SETSLOT %u MIGRATING %s", slot, to_id);
}

bool
rcl_move_slot(const struct rcl *c, unsigned slot, int from, int to)
{
    char to_id[64];
    if (!node_id(c, to, to_id, sizeof(to_id)))
        return false;
    /* Half-moved already (the ASK test) or not: IMPORTING/MIGRATING again is harmless. */
    if (!rcl_slot_migrating(c, slot, from, to))
        return false;
    for (;;) {
        redisReply *keys = rcl_cmd(c, from, "CLUSTER GETKEYSINSLOT %u 100", slot);
        if (keys == NULL || keys->type != REDIS_REPLY_ARRAY) {
            if (keys != NULL)
                freeReplyObject(keys);
            return false;
        }
        size_t n = keys->elements;
        bool ok = true;
        for (size_t i = 0; i < n && ok; i++)
            ok = rcl_migrate_key(c, from, to, keys->element[i]->str);
        freeReplyObject(keys);
        if (!ok)
            return false;
        if (n == 0)
            break;
    }
    /* The target first (it owns the slot at once), then the source, then everyone. */
    if (!ok_cmd(c, to, "CLUSTER SETSLOT %u NODE %s", slot, to_id) ||
        !ok_cmd(c, from, "CLUSTER SETSLOT %u NODE %s", slot, to_id))
        return false;
    int masters[RCL_NODES];
    int n = rcl_masters(c, masters);
    for (int i = 0; i < n; i++) {
        if (masters[i] != to && masters[i] != from)
            (void)ok_cmd(c, masters[i], "CLUSTER SETSLOT %u NODE %s", slot, to_id);
    }
    return true;
}

bool
rcl_kill(struct rcl *c, int port)
{
    int i = port - c->base;
    if (i < 0 || i >= RCL_NODES)
        return false;
    char path[512];
    snprintf(path, sizeof(path), "%s/rcluster/%d/redis.pid", c->dir, port);
    FILE *f = fopen(path, "r");
    int pid = 0;
    if (f == NULL)
        return false;
    if (fscanf(f, "%d", &pid) != 1)
        pid = 0;
    fclose(f);
    if (pid <= 0 || kill(pid, SIGKILL) != 0)
        return false;
    c->dead[i] = true;
    for (int k = 0; k < 200; k++) {
        if (kill(pid, 0) != 0 && errno == ESRCH)
            return true;
        usleep(10 * 1000);
    }
    return false;
}

static double
mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int
rcl_wait_new_owner(const struct rcl *c, unsigned slot, int not_port, int timeout_ms)
{
    double end = mono_ms() + timeout_ms;
    do {
        int o = rcl_owner(c, slot);
        if (o > 0 && o != not_port)
            return o;
        usleep(20 * 1000);
    } while (mono_ms() < end);
    return -1;
}
