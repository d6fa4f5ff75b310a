/*
 * shards: extra PostgreSQL servers for sharded suites (shards.h).
 */
#include "shards.h"

#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

/* Runs ops/servers with arguments; true on exit status 0. */
static bool servers(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static bool
servers(const char *fmt, ...)
{
    char script[1024], args[1024], cmd[2200];
    harness_source_path("ops/servers", script, sizeof(script));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "'%s' %s", script, args);
    int rc = system(cmd);
    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

/* A password of hex digits (no URI escaping needed). */
static void
make_password(char *out, size_t bytes)
{
    unsigned char b[16];
    int fd = open("/dev/urandom", O_RDONLY);
    bool ok = fd >= 0 && read(fd, b, bytes) == (ssize_t)bytes;
    if (fd >= 0)
        close(fd);
    for (size_t i = 0; i < bytes; i++)
        sprintf(out + 2 * i, "%02x", ok ? b[i] : (unsigned)(rand() & 0xff));
    out[2 * bytes] = '\0';
}

bool
harness_shard_start(const struct harness *h, const char *name, struct harness_shard *s)
{
    memset(s, 0, sizeof(*s));
    snprintf(s->dir, sizeof(s->dir), "%s/%s", h->dir, name);
    if (mkdir(s->dir, 0755) != 0) {
        fprintf(stderr, "shards: cannot create %s\n", s->dir);
        return false;
    }
    chmod(s->dir, 0755); /* the postgres user must reach its data directory */
    make_password(s->password, 16);
    for (int attempt = 0; attempt < 4; attempt++) {
        s->port = harness_free_port();
        if (servers("pg-start '%s' %d %s fsync=off full_page_writes=off", s->dir, s->port,
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
    return servers("pg-pause '%s'", s->dir);
}

bool
harness_shard_resume(struct harness_shard *s)
{
    return servers("pg-resume '%s' %d %s fsync=off full_page_writes=off", s->dir, s->port,
                   s->password);
}

void
harness_shard_stop(struct harness_shard *s)
{
    if (s->dir[0] != '\0')
        (void)servers("pg-stop '%s'", s->dir);
    s->dir[0] = '\0';
}

void
harness_pg_uri(const struct harness *h, char *out, size_t len)
{
    snprintf(out, len, "postgresql://mbox:%s@127.0.0.1:%d/mbox", h->pg_password, h->pg_port);
}
