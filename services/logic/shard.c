/*
 * shard: the bucket hash and the pure parts of the bucket map (shard.h).
 */
#include "shard.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * FNV-1a (32 bits) over the 16 bytes of app_id then uid, little-endian,
 * folded to 12 bits. Chosen because SQL can compute it too with bigint
 * arithmetic that never overflows (a 32-bit value times the 24-bit prime):
 * mbox_bucket() in migrations/0005 is the same function, so a tool can
 * select the rows of one bucket inside the database. Never change it.
 */
unsigned
shard_bucket(uint64_t app_id, uint64_t uid)
{
    uint32_t h = 2166136261u;
    for (int i = 0; i < 16; i++) {
        uint64_t v = i < 8 ? app_id : uid;
        h ^= (uint32_t)((v >> (8 * (i % 8))) & 0xff);
        h *= 16777619u;
    }
    return (h ^ (h >> 16)) % LOGIC_BUCKETS;
}

int
shard_initial(unsigned b, int n)
{
    return (int)((uint64_t)b * (uint64_t)n / LOGIC_BUCKETS);
}

void
shard_list_free(char **list, int n)
{
    for (int i = 0; i < n; i++) {
        free(list[i]);
        list[i] = NULL;
    }
}

int
shard_list_parse(const char *s, char **out, int max, char *err, size_t errlen)
{
    int n = 0;
    while (s != NULL && *s) {
        size_t skip = strspn(s, " \t\r\n");
        s += skip;
        size_t len = strcspn(s, " \t\r\n");
        if (len == 0)
            break;
        if (strncmp(s, "postgres://", 11) != 0 && strncmp(s, "postgresql://", 13) != 0) {
            snprintf(err, errlen,
                     "key 'pg_shards': entry %d is not a postgresql:// URI (entries are "
                     "separated by whitespace)",
                     n + 1);
            shard_list_free(out, n);
            return -1;
        }
        if (n == max) {
            snprintf(err, errlen, "key 'pg_shards': more than %d shards", max);
            shard_list_free(out, n);
            return -1;
        }
        out[n] = strndup(s, len);
        if (out[n] == NULL) {
            snprintf(err, errlen, "out of memory");
            shard_list_free(out, n);
            return -1;
        }
        n++;
        s += len;
    }
    return n;
}

bool
shard_map_check(const struct shard_map *m, const uint16_t *seen, int configured, char *err,
                size_t errlen)
{
    if (m->nshards != configured) {
        snprintf(err, errlen,
                 "the bucket map was made for %d shards but pg_shards lists %d (the list must "
                 "name the same databases in the same order)",
                 m->nshards, configured);
        return false;
    }
    for (unsigned b = 0; b < LOGIC_BUCKETS; b++) {
        if (seen[b] != 1) {
            snprintf(err, errlen, "the bucket map has bucket %u %u times (want once)", b,
                     (unsigned)seen[b]);
            return false;
        }
        if (m->shard_of[b] >= m->nshards) {
            snprintf(err, errlen, "the bucket map sends bucket %u to shard %d of %d", b,
                     m->shard_of[b], m->nshards);
            return false;
        }
    }
    return true;
}

/* A number 0..max, the whole string. */
static bool
parse_int(const char *s, long max, long *out)
{
    char *end = NULL;
    long v = strtol(s, &end, 10);
    if (*s == '\0' || *end != '\0' || v < 0 || v > max)
        return false;
    *out = v;
    return true;
}

int
shard_move_args(int *argc, char **argv, unsigned *bucket, int *to, char *err, size_t errlen)
{
    long b = -1, t = -1;
    int w = 1;
    for (int i = 1; i < *argc; i++) {
        bool isb = strcmp(argv[i], "--move-bucket") == 0, ist = strcmp(argv[i], "--to") == 0;
        if (!isb && !ist) {
            argv[w++] = argv[i];
            continue;
        }
        long v;
        if (i + 1 == *argc ||
            !parse_int(argv[i + 1], isb ? LOGIC_BUCKETS - 1 : LOGIC_MAX_SHARDS - 1, &v)) {
            snprintf(err, errlen, "%s takes a number (bucket 0..%d, shard 0..%d)", argv[i],
                     LOGIC_BUCKETS - 1, LOGIC_MAX_SHARDS - 1);
            return -1;
        }
        if (isb)
            b = v;
        else
            t = v;
        i++;
    }
    argv[w] = NULL;
    *argc = w;
    if (b < 0 && t < 0)
        return 0;
    if (b < 0 || t < 0) {
        snprintf(err, errlen, "--move-bucket and --to go together");
        return -1;
    }
    *bucket = (unsigned)b;
    *to = (int)t;
    return 1;
}
