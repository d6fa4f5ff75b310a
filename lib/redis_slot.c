/*
 * redis_slot: hash slots, key positions, redirect errors and slot map
 * replies (redis_slot.h).
 */
#include "redis_slot.h"

#include <stdlib.h>
#include <string.h>
#include <strings.h>

uint16_t
redis_crc16(const void *buf, size_t len)
{
    const unsigned char *p = buf;
    uint16_t crc = 0;
    for (size_t i = 0; i < len; i++) {
        crc ^= (uint16_t)(p[i] << 8);
        for (int b = 0; b < 8; b++)
            crc = (crc & 0x8000) != 0 ? (uint16_t)((crc << 1) ^ 0x1021) : (uint16_t)(crc << 1);
    }
    return crc;
}

unsigned
redis_key_slot(const char *key, size_t len)
{
    const char *open = memchr(key, '{', len);
    if (open != NULL) {
        size_t start = (size_t)(open - key) + 1;
        const char *close = memchr(key + start, '}', len - start);
        /* "{}" does not count as a tag: the whole key is hashed then. */
        if (close != NULL && close > key + start)
            return redis_crc16(key + start, (size_t)(close - (key + start))) % REDIS_SLOTS;
    }
    return redis_crc16(key, len) % REDIS_SLOTS;
}

static bool
arg_is(const char *arg, size_t len, const char *name)
{
    return strlen(name) == len && strncasecmp(arg, name, len) == 0;
}

int
redis_command_key(int argc, const char *const *argv, const size_t *lens)
{
    if (argc < 2)
        return -1;
    const char *cmd = argv[0];
    size_t n = lens[0];
    if (arg_is(cmd, n, "EVAL") || arg_is(cmd, n, "EVALSHA") || arg_is(cmd, n, "EVAL_RO") ||
        arg_is(cmd, n, "EVALSHA_RO") || arg_is(cmd, n, "FCALL") || arg_is(cmd, n, "FCALL_RO")) {
        if (argc < 4 || lens[2] == 0 || lens[2] > 9)
            return -1;
        char num[10];
        memcpy(num, argv[2], lens[2]);
        num[lens[2]] = '\0';
        return atoi(num) >= 1 ? 3 : -1;
    }
    /* Commands whose first argument is not a key (ours send only PING and CLUSTER). */
    static const char *const keyless[] = {"PING",  "ECHO",   "INFO",    "CLUSTER", "SCRIPT",
                                          "TIME",  "CONFIG", "CLIENT",  "DBSIZE",  "FLUSHALL",
                                          "AUTH",  "HELLO",  "ACL",     "COMMAND", "FUNCTION",
                                          "DEBUG", "MEMORY", "READONLY"};
    for (size_t i = 0; i < sizeof(keyless) / sizeof(keyless[0]); i++) {
        if (arg_is(cmd, n, keyless[i]))
            return -1;
    }
    return 1;
}

/* Reads "<c><digits>\r\n" at buf[*o]; false when malformed or incomplete. */
static bool
read_header(const char *buf, size_t len, size_t *o, char c, size_t *value)
{
    if (*o >= len || buf[*o] != c)
        return false;
    size_t v = 0, i = *o + 1;
    size_t digits = 0;
    while (i < len && buf[i] >= '0' && buf[i] <= '9' && digits < 12) {
        v = v * 10 + (size_t)(buf[i] - '0');
        i++;
        digits++;
    }
    if (digits == 0 || i + 1 >= len || buf[i] != '\r' || buf[i + 1] != '\n')
        return false;
    *value = v;
    *o = i + 2;
    return true;
}

int
redis_request_args(const char *buf, size_t len, const char **argv, size_t *lens, int max)
{
    size_t o = 0, n;
    if (!read_header(buf, len, &o, '*', &n) || n > (size_t)max)
        return -1;
    for (size_t i = 0; i < n; i++) {
        size_t alen;
        if (!read_header(buf, len, &o, '$', &alen) || alen > len - o || len - o - alen < 2 ||
            buf[o + alen] != '\r' || buf[o + alen + 1] != '\n')
            return -1;
        argv[i] = buf + o;
        lens[i] = alen;
        o += alen + 2;
    }
    return o == len ? (int)n : -1;
}

/* A decimal port 1..65535 of exactly len characters. */
static bool
parse_port(const char *s, size_t len, int *port)
{
    if (len == 0 || len > 5)
        return false;
    int p = 0;
    for (size_t i = 0; i < len; i++) {
        if (s[i] < '0' || s[i] > '9')
            return false;
        p = p * 10 + (s[i] - '0');
    }
    if (p < 1 || p > 65535)
        return false;
    *port = p;
    return true;
}

bool
redis_split_hostport(const char *s, size_t len, char *host, size_t hostcap, int *port)
{
    const char *colon = NULL;
    for (size_t i = len; i > 0; i--) {
        if (s[i - 1] == ':') {
            colon = s + i - 1;
            break;
        }
    }
    if (colon == NULL || colon == s)
        return false;
    size_t hlen = (size_t)(colon - s);
    const char *h = s;
    if (hlen >= 2 && h[0] == '[' && h[hlen - 1] == ']') {
        h++;
        hlen -= 2;
    }
    size_t plen = len - (size_t)(colon + 1 - s);
    if (hlen == 0 || hlen >= hostcap || !parse_port(colon + 1, plen, port))
        return false;
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    return true;
}

bool
redis_parse_redirect(const char *err, size_t len, struct redis_redirect *out)
{
    size_t skip;
    if (len > 6 && strncmp(err, "MOVED ", 6) == 0) {
        out->ask = false;
        skip = 6;
    } else if (len > 4 && strncmp(err, "ASK ", 4) == 0) {
        out->ask = true;
        skip = 4;
    } else {
        return false;
    }
    size_t i = skip;
    unsigned slot = 0;
    size_t digits = 0;
    while (i < len && err[i] >= '0' && err[i] <= '9' && digits < 6) {
        slot = slot * 10 + (unsigned)(err[i] - '0');
        i++;
        digits++;
    }
    if (digits == 0 || slot >= REDIS_SLOTS || i >= len || err[i] != ' ')
        return false;
    i++;
    size_t end = i;
    while (end < len && err[end] != ' ' && err[end] != '\r' && err[end] != '\n')
        end++;
    out->slot = slot;
    if (end > i && err[i] == ':' && parse_port(err + i + 1, end - i - 1, &out->port)) {
        /* ":port": the node did not announce an address; the caller uses the one it asked. */
        out->host[0] = '\0';
        return true;
    }
    return redis_split_hostport(err + i, end - i, out->host, sizeof(out->host), &out->port);
}

bool
redis_error_retryable(const char *err, size_t len)
{
    return (len >= 8 && strncmp(err, "TRYAGAIN", 8) == 0) ||
           (len >= 11 && strncmp(err, "CLUSTERDOWN", 11) == 0);
}

static bool
ranges_add(struct redis_ranges *r, long long lo, long long hi, const char *host, size_t hostlen,
           long long port)
{
    if (lo < 0 || hi < lo || hi >= REDIS_SLOTS || port < 1 || port > 65535 || hostlen == 0 ||
        hostlen >= sizeof(r->v[0].host))
        return false;
    if (r->n == r->cap) {
        size_t cap = r->cap != 0 ? r->cap * 2 : 16;
        struct redis_range *v = realloc(r->v, cap * sizeof(*v));
        if (v == NULL)
            return false;
        r->v = v;
        r->cap = cap;
    }
    struct redis_range *g = &r->v[r->n++];
    g->lo = (unsigned)lo;
    g->hi = (unsigned)hi;
    memcpy(g->host, host, hostlen);
    g->host[hostlen] = '\0';
    g->port = (int)port;
    return true;
}

static bool
reply_is(const redisReply *r, const char *s)
{
    return (r->type == REDIS_REPLY_STRING || r->type == REDIS_REPLY_STATUS) &&
           strlen(s) == r->len && memcmp(r->str, s, r->len) == 0;
}

/* The value of key in a RESP2 map (a flat key, value, ... array); NULL if absent. */
static const redisReply *
map_get(const redisReply *m, const char *key)
{
    if (m->type != REDIS_REPLY_ARRAY)
        return NULL;
    for (size_t i = 0; i + 1 < m->elements; i += 2) {
        if (reply_is(m->element[i], key))
            return m->element[i + 1];
    }
    return NULL;
}

bool
redis_parse_shards(const redisReply *reply, struct redis_ranges *out)
{
    if (reply->type != REDIS_REPLY_ARRAY)
        return false;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *shard = reply->element[i];
        const redisReply *slots = map_get(shard, "slots");
        const redisReply *nodes = map_get(shard, "nodes");
        if (slots == NULL || nodes == NULL || slots->type != REDIS_REPLY_ARRAY ||
            nodes->type != REDIS_REPLY_ARRAY)
            return false;
        const redisReply *ip = NULL, *port = NULL;
        for (size_t k = 0; k < nodes->elements; k++) {
            const redisReply *role = map_get(nodes->element[k], "role");
            const redisReply *health = map_get(nodes->element[k], "health");
            if (role == NULL || !reply_is(role, "master") ||
                (health != NULL && reply_is(health, "failed")))
                continue;
            ip = map_get(nodes->element[k], "ip");
            port = map_get(nodes->element[k], "port");
            break;
        }
        if (ip == NULL || port == NULL || ip->type != REDIS_REPLY_STRING ||
            port->type != REDIS_REPLY_INTEGER)
            continue; /* no live master: the shard's slots stay uncovered */
        for (size_t k = 0; k + 1 < slots->elements; k += 2) {
            const redisReply *lo = slots->element[k], *hi = slots->element[k + 1];
            if (lo->type != REDIS_REPLY_INTEGER || hi->type != REDIS_REPLY_INTEGER ||
                !ranges_add(out, lo->integer, hi->integer, ip->str, ip->len, port->integer))
                return false;
        }
    }
    return true;
}

bool
redis_parse_slots(const redisReply *reply, struct redis_ranges *out)
{
    if (reply->type != REDIS_REPLY_ARRAY)
        return false;
    for (size_t i = 0; i < reply->elements; i++) {
        const redisReply *e = reply->element[i];
        if (e->type != REDIS_REPLY_ARRAY || e->elements < 3 ||
            e->element[0]->type != REDIS_REPLY_INTEGER ||
            e->element[1]->type != REDIS_REPLY_INTEGER ||
            e->element[2]->type != REDIS_REPLY_ARRAY || e->element[2]->elements < 2)
            return false;
        const redisReply *ip = e->element[2]->element[0], *port = e->element[2]->element[1];
        if (ip->type != REDIS_REPLY_STRING || port->type != REDIS_REPLY_INTEGER ||
            !ranges_add(out, e->element[0]->integer, e->element[1]->integer, ip->str, ip->len,
                        port->integer))
            return false;
    }
    return true;
}
