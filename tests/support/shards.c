/*
 * shards: extra PostgreSQL servers for sharded suites (shards.h).
 */
#include "shards.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

bool
harness_shard_start(const struct harness *h, const char *name, struct harness_shard *s)
{
    memset(s, 0, sizeof(*s));
    snprintf(s->dir, sizeof(s->dir), "%s/%s", h->dir, name);
    if (mkdir(s->dir, 0755) != 0) {
        fprintf(stderr, "shards: cannot create %s\n", s->dir);
        return false;
    }
    chmod(s->dir, 0755);                 /* the postgres user must reach its data directory */
    harness_random_hex(s->password, 16); /* hex: no URI escaping needed */
    for (int attempt = 0; attempt < 4; attempt++) {
        s->port = harness_free_port();
        if (harness_servers("pg-start '%s' %d %s fsync=off full_page_writes=off", s->dir, s->port,
                            s->password)) {
            snprintf(s->uri, sizeof(s->uri), "postgresql://mbox:%s@127.0.0.1:%d/mbox", s->password,
                     s->port);
            return true;
        }
    }
    fprintf(stderr, "shards: PostgreSQL %s did not start\n", name);
    s->dir[0] = '\0';
    return false;
}

bool
harness_shard_pause(struct harness_shard *s)
{
    return harness_servers("pg-pause '%s'", s->dir);
}

bool
harness_shard_resume(struct harness_shard *s)
{
    return harness_servers("pg-resume '%s' %d %s fsync=off full_page_writes=off", s->dir, s->port,
                           s->password);
}

void
harness_shard_stop(struct harness_shard *s)
{
    if (s->dir[0] != '\0')
        (void)harness_servers("pg-stop '%s'", s->dir);
    s->dir[0] = '\0';
}

void
harness_pg_uri(const struct harness *h, char *out, size_t len)
{
    snprintf(out, len, "postgresql://mbox:%s@127.0.0.1:%d/mbox", h->pg_password, h->pg_port);
}
