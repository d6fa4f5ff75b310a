/*
 * redis_slot: the pure parts of Redis Cluster support, kept apart from the
 * connections so the unit suite can test them: hash slots (CRC16-XMODEM of
 * the key's hash tag, mod 16384), which argument of a command is its key,
 * parsing a RESP request back into arguments, and -MOVED / -ASK errors.
 */
#ifndef MBOX_REDIS_SLOT_H
#define MBOX_REDIS_SLOT_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <hiredis/hiredis.h>

#define REDIS_SLOTS 16384

/* CRC16-XMODEM (poly 0x1021, init 0), the checksum Redis Cluster uses. */
uint16_t redis_crc16(const void *buf, size_t len);

/*
 * Hash slot of a key: the CRC16 of the text between the first '{' and the
 * first '}' after it when that text is non-empty, else of the whole key.
 */
unsigned redis_key_slot(const char *key, size_t len);

/*
 * Index of the argument that decides where a command goes (its key, or the
 * channel of PUBLISH/SPUBLISH/SSUBSCRIBE), or -1 for a command without one
 * (PING, INFO, EVAL with 0 keys...). EVAL/EVALSHA/FCALL: argv[3] when
 * numkeys >= 1; other commands: argv[1].
 */
int redis_command_key(int argc, const char *const *argv, const size_t *lens);

/*
 * Splits a RESP request ("*N\r\n$len\r\narg\r\n...") into at most max
 * arguments pointing into buf. Returns the argument count, -1 when buf is
 * not one complete request or has more than max arguments.
 */
int redis_request_args(const char *buf, size_t len, const char **argv, size_t *lens, int max);

/* A -MOVED or -ASK error: where the slot is (MOVED) or is being moved (ASK). */
struct redis_redirect {
    bool ask;
    unsigned slot;
    char host[64];
    int port;
};

/* Parses "MOVED 3999 127.0.0.1:6381" or "ASK ..." (reply->str); false otherwise. */
bool redis_parse_redirect(const char *err, size_t len, struct redis_redirect *out);

/* Whether an error reply asks to retry later: TRYAGAIN, CLUSTERDOWN. */
bool redis_error_retryable(const char *err, size_t len);

/*
 * Splits "host:port" (the last ':' separates, so "[::1]:6379" and
 * "::1:6379" both work) into host (NUL-terminated, brackets removed) and
 * port; false when it does not fit or the port is not 1..65535.
 */
bool redis_split_hostport(const char *s, size_t len, char *host, size_t hostcap, int *port);

/* The slot map as ranges owned by masters (free v with free()). */
struct redis_range {
    unsigned lo, hi; /* slots, inclusive */
    char host[64];
    int port;
};

struct redis_ranges {
    struct redis_range *v;
    size_t n, cap;
};

/*
 * Parses a CLUSTER SHARDS reply (RESP2: each shard a flat key/value array
 * with "slots" and "nodes"). A shard's owner is its node with role
 * "master" whose health is not "failed"; a shard without one adds no
 * range, so its slots stay without a master. False on a malformed reply.
 */
bool redis_parse_shards(const redisReply *reply, struct redis_ranges *out);

/* Parses a CLUSTER SLOTS reply ([start, end, [ip, port, id...], replicas...] per range). */
bool redis_parse_slots(const redisReply *reply, struct redis_ranges *out);

#endif
