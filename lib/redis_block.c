/*
 * redis_block: see redis_block.h. Blocking hiredis contexts, one per node,
 * with the connect and command timeouts of the configuration, so a dead
 * node costs a bounded wait and never hangs the calling thread.
 */
#include "redis_block.h"

#include "redis_slot.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <hiredis/hiredis.h>

/* Masters a client keeps connections to (a cluster has 3..a few dozen). */
#define BLOCK_MAX_NODES 64

struct block_node {
    char host[64];
    int port;
    redisContext *c;
    size_t pending; /* replies to read in the current batch */
};

struct redis_block {
    char *host, *nodes, *user, *password;
    int port;
    struct timeval connect_tv, command_tv;
    bool cluster;
    bool map_ok;
    struct block_node node[BLOCK_MAX_NODES];
    size_t nnodes;
    int16_t slot_node[REDIS_SLOTS]; /* index into node, -1 = no master known */
};

static char *
dup_or_null(const char *s)
{
    return s != NULL && s[0] != '\0' ? strdup(s) : NULL;
}

static struct timeval
ms_tv(int ms, int dflt)
{
    if (ms <= 0)
        ms = dflt;
    return (struct timeval){ms / 1000, (ms % 1000) * 1000};
}

struct redis_block *
redis_block_new(const struct redis_config *cfg)
{
    struct redis_block *b = calloc(1, sizeof(*b));
    if (b == NULL)
        return NULL;
    b->cluster = cfg->nodes != NULL && cfg->nodes[0] != '\0';
    b->host = dup_or_null(cfg->host);
    b->nodes = dup_or_null(cfg->nodes);
    b->user = dup_or_null(cfg->user);
    b->password = dup_or_null(cfg->password);
    b->port = cfg->port;
    /* A thread without a loop must not wait forever on a dead node. */
    b->connect_tv = ms_tv(cfg->connect_timeout_ms, 1000);
    b->command_tv = ms_tv(cfg->command_timeout_ms, 1000);
    return b;
}

static void
node_drop(struct block_node *n)
{
    if (n->c != NULL)
        redisFree(n->c);
    n->c = NULL;
    n->pending = 0;
}

void
redis_block_reset(struct redis_block *b)
{
    for (size_t i = 0; i < b->nnodes; i++)
        node_drop(&b->node[i]);
    b->nnodes = 0;
    b->map_ok = false;
}

void
redis_block_free(struct redis_block *b)
{
    if (b == NULL)
        return;
    redis_block_reset(b);
    free(b->host);
    free(b->nodes);
    free(b->user);
    free(b->password);
    free(b);
}

/* A connected, authenticated context, or NULL. */
static redisContext *
connect_auth(const struct redis_block *b, const char *host, int port)
{
    redisContext *c = redisConnectWithTimeout(host, port, b->connect_tv);
    if (c == NULL || c->err) {
        if (c != NULL)
            redisFree(c);
        return NULL;
    }
    redisSetTimeout(c, b->command_tv);
    if (b->password == NULL)
        return c;
    redisReply *a = b->user != NULL ? redisCommand(c, "AUTH %s %s", b->user, b->password)
                                    : redisCommand(c, "AUTH %s", b->password);
    bool ok = a != NULL && a->type != REDIS_REPLY_ERROR;
    if (a != NULL)
        freeReplyObject(a);
    if (!ok) {
        redisFree(c);
        return NULL;
    }
    return c;
}

/* Index of the node host:port, added when new; -1 when the table is full. */
static int
node_index(struct redis_block *b, const char *host, int port)
{
    for (size_t i = 0; i < b->nnodes; i++) {
        if (b->node[i].port == port && strcmp(b->node[i].host, host) == 0)
            return (int)i;
    }
    if (b->nnodes == BLOCK_MAX_NODES)
        return -1;
    struct block_node *n = &b->node[b->nnodes];
    memset(n, 0, sizeof(*n));
    snprintf(n->host, sizeof(n->host), "%s", host);
    n->port = port;
    return (int)b->nnodes++;
}

/* Fills the slot map from one seed's CLUSTER SHARDS (or SLOTS on Redis < 7). */
static bool
map_from(struct redis_block *b, redisContext *c)
{
    struct redis_ranges rg = {0};
    redisReply *r = redisCommand(c, "CLUSTER SHARDS");
    bool ok = r != NULL && r->type == REDIS_REPLY_ARRAY && redis_parse_shards(r, &rg);
    if (r != NULL)
        freeReplyObject(r);
    if (!ok && c->err == 0) {
        free(rg.v);
        rg = (struct redis_ranges){0};
        r = redisCommand(c, "CLUSTER SLOTS");
        ok = r != NULL && r->type == REDIS_REPLY_ARRAY && redis_parse_slots(r, &rg);
        if (r != NULL)
            freeReplyObject(r);
    }
    for (unsigned s = 0; s < REDIS_SLOTS; s++)
        b->slot_node[s] = -1;
    for (size_t i = 0; ok && i < rg.n; i++) {
        int idx = node_index(b, rg.v[i].host, rg.v[i].port);
        for (unsigned s = rg.v[i].lo; idx >= 0 && s <= rg.v[i].hi && s < REDIS_SLOTS; s++)
            b->slot_node[s] = (int16_t)idx;
    }
    free(rg.v);
    return ok;
}

/* Reads the slot map from the first seed that answers. */
static bool
map_load(struct redis_block *b)
{
    redis_block_reset(b);
    if (!b->cluster) {
        node_index(b, b->host != NULL ? b->host : "127.0.0.1", b->port);
        memset(b->slot_node, 0, sizeof(b->slot_node));
        b->map_ok = true;
        return true;
    }
    const char *p = b->nodes;
    while (*p != '\0' && !b->map_ok) {
        size_t len = strcspn(p, ", ");
        char host[64];
        int port;
        if (len > 0 && redis_split_hostport(p, len, host, sizeof(host), &port)) {
            redisContext *c = connect_auth(b, host, port);
            if (c != NULL) {
                b->map_ok = map_from(b, c);
                redisFree(c);
            }
        }
        p += len;
        p += strspn(p, ", ");
    }
    return b->map_ok;
}

/* The node of a key's slot, connected; NULL when its slot has no reachable master. */
static struct block_node *
route(struct redis_block *b, const char *key)
{
    unsigned slot = b->cluster ? redis_key_slot(key, strlen(key)) : 0;
    int idx = b->slot_node[slot];
    if (idx < 0)
        return NULL;
    struct block_node *n = &b->node[idx];
    if (n->c == NULL || n->c->err) {
        node_drop(n);
        n->c = connect_auth(b, n->host, n->port);
    }
    return n->c != NULL ? n : NULL;
}

/* Reads the replies a node owes; false if any is missing or an error. */
static bool
drain(struct block_node *n)
{
    bool ok = true;
    while (n->pending > 0 && n->c != NULL) {
        redisReply *reply = NULL; /* left alone by a failed redisGetReply */
        if (redisGetReply(n->c, (void **)&reply) != REDIS_OK || reply == NULL) {
            node_drop(n); /* unread replies would answer the next batch */
            return false;
        }
        ok = ok && reply->type != REDIS_REPLY_ERROR;
        freeReplyObject(reply);
        n->pending--;
    }
    return ok && n->pending == 0;
}

bool
redis_block_pipeline(struct redis_block *b, size_t n, char *const *cmds, const size_t *lens,
                     const char *const *keys)
{
    if (!b->map_ok && !map_load(b))
        return false;
    bool ok = true;
    for (size_t i = 0; i < n && ok; i++) {
        struct block_node *nd = route(b, b->cluster ? keys[i] : "");
        ok = nd != NULL && redisAppendFormattedCommand(nd->c, cmds[i], lens[i]) == REDIS_OK;
        if (ok)
            nd->pending++;
    }
    for (size_t i = 0; i < b->nnodes; i++)
        ok = drain(&b->node[i]) && ok;
    if (!ok && b->cluster)
        b->map_ok = false; /* MOVED, a failover, a dead master: read the map again */
    return ok;
}
