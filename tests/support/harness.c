/*
 * harness: private servers and daemons for integration suites (harness.h).
 */
#include "harness.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "httpc.h"

static void hfail(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static void
hfail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "harness: ");
    vfprintf(stderr, fmt, ap);
    fprintf(stderr, "\n");
    va_end(ap);
}

const char *
harness_build_path(const char *rel, char *buf, size_t len)
{
    const char *root = getenv("MBOX_BUILD_ROOT");
    snprintf(buf, len, "%s/%s", root ? root : "build", rel);
    return buf;
}

const char *
harness_source_path(const char *rel, char *buf, size_t len)
{
    const char *root = getenv("MBOX_SOURCE_ROOT");
    snprintf(buf, len, "%s/%s", root ? root : ".", rel);
    return buf;
}

/* A port the kernel just handed out for 127.0.0.1 (free right now). */
int
harness_free_port(void)
{
    /* A random port below the kernel's ephemeral range: a port the kernel
     * hands out (bind to 0) can be taken again, before the server binds
     * it, by the local end of any outgoing connection; ports below the
     * range are only taken by explicit binds. */
    static unsigned seed;
    int low = 32768;
    FILE *f = fopen("/proc/sys/net/ipv4/ip_local_port_range", "r");
    if (f != NULL) {
        if (fscanf(f, "%d", &low) != 1 || low <= 21024)
            low = 32768;
        fclose(f);
    }
    if (seed == 0)
        seed = (unsigned)getpid() ^ (unsigned)time(NULL);
    for (int k = 0; k < 200; k++) {
        int port = 20000 + (int)(rand_r(&seed) % (unsigned)(low - 20000));
        int fd = socket(AF_INET, SOCK_STREAM, 0);
        if (fd < 0)
            return -1;
        struct sockaddr_in a = {.sin_family = AF_INET,
                                .sin_addr.s_addr = htonl(INADDR_LOOPBACK),
                                .sin_port = htons((uint16_t)port)};
        bool ok = bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0;
        close(fd);
        if (ok)
            return port;
    }
    return -1;
}

void
harness_random_hex(char *out, size_t bytes)
{
    unsigned char b[64];
    if (bytes > sizeof(b))
        bytes = sizeof(b);
    int fd = open("/dev/urandom", O_RDONLY);
    ssize_t n = fd >= 0 ? read(fd, b, bytes) : -1;
    if (fd >= 0)
        close(fd);
    if (n != (ssize_t)bytes) {
        srand((unsigned)time(NULL) ^ (unsigned)getpid());
        for (size_t i = 0; i < bytes; i++)
            b[i] = (unsigned char)rand();
    }
    for (size_t i = 0; i < bytes; i++)
        sprintf(out + 2 * i, "%02x", b[i]);
    out[2 * bytes] = '\0';
}

bool
harness_servers(const char *fmt, ...)
{
    char script[1024], args[2048], cmd[4096];
    harness_source_path("ops/servers", script, sizeof(script));
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(args, sizeof(args), fmt, ap);
    va_end(ap);
    snprintf(cmd, sizeof(cmd), "'%s' %s", script, args);
    int rc = system(cmd);
    return rc != -1 && WIFEXITED(rc) && WEXITSTATUS(rc) == 0;
}

static bool
start_pg(struct harness *h)
{
    char pass[33];
    harness_random_hex(pass, 16);
    for (int attempt = 0; attempt < 4; attempt++) {
        h->pg_port = harness_free_port();
        /* Durability off: these clusters are thrown away after the run. */
        if (harness_servers("pg-start '%s' %d %s fsync=off full_page_writes=off", h->dir,
                            h->pg_port, pass)) {
            snprintf(h->pg_conninfo, sizeof(h->pg_conninfo),
                     "host=127.0.0.1 port=%d dbname=mbox user=mbox password=%s", h->pg_port, pass);
            memcpy(h->pg_password, pass, sizeof(h->pg_password));
            return true;
        }
    }
    hfail("PostgreSQL did not start");
    return false;
}

bool
harness_pg_pause(struct harness *h)
{
    return harness_servers("pg-pause '%s'", h->dir);
}

bool
harness_pg_resume(struct harness *h)
{
    return harness_servers("pg-resume '%s' %d %s fsync=off full_page_writes=off", h->dir,
                           h->pg_port, h->pg_password);
}

bool
harness_redis_start(struct harness *h)
{
    if (h->redis_port == 0)
        h->redis_port = harness_free_port();
    for (int attempt = 0; attempt < 4; attempt++) {
        if (harness_servers("redis-start '%s' %d", h->dir, h->redis_port))
            return true;
        usleep(200 * 1000);
    }
    hfail("Redis did not start on port %d", h->redis_port);
    return false;
}

pid_t
harness_redis_pid(const struct harness *h)
{
    char path[512];
    snprintf(path, sizeof(path), "%s/redis/redis.pid", h->dir);
    FILE *f = fopen(path, "r");
    int pid = -1;
    if (f != NULL) {
        if (fscanf(f, "%d", &pid) != 1)
            pid = -1;
        fclose(f);
    }
    return (pid_t)pid;
}

bool
harness_redis_stop(struct harness *h)
{
    return harness_servers("redis-stop '%s'", h->dir);
}

/* Writes a file; false on error. */
static bool
write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    if (f == NULL)
        return false;
    bool ok = fputs(text, f) >= 0;
    return fclose(f) == 0 && ok;
}

/* Starts prog -c config with stderr to log; returns the pid or -1. */
static pid_t
spawn(const char *prog, const char *config, const char *log, const char *extra_arg)
{
    pid_t pid = fork();
    if (pid != 0)
        return pid;
    int fd = open(log, O_WRONLY | O_CREAT | O_APPEND, 0644);
    if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
    }
    int nul = open("/dev/null", O_RDONLY);
    if (nul >= 0)
        dup2(nul, 0);
    if (extra_arg)
        execl(prog, prog, "-c", config, extra_arg, (char *)NULL);
    else
        execl(prog, prog, "-c", config, (char *)NULL);
    _exit(127);
}

/* Polls GET /healthz on port until 200 or timeout. */
static bool
wait_healthy(int port, pid_t pid, int timeout_ms)
{
    for (int waited = 0; waited < timeout_ms; waited += 50) {
        struct httpc_resp r;
        if (httpc_request("GET", port, "/healthz", NULL, NULL, 0, &r) == 200) {
            httpc_resp_free(&r);
            return true;
        }
        httpc_resp_free(&r);
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return false;
        usleep(50 * 1000);
    }
    return false;
}

void
harness_daemon_stop(struct harness_daemon *d)
{
    if (d->pid <= 0)
        return;
    kill(d->pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        int st;
        if (waitpid(d->pid, &st, WNOHANG) == d->pid) {
            d->pid = 0;
            return;
        }
        usleep(50 * 1000);
    }
    kill(d->pid, SIGKILL);
    waitpid(d->pid, NULL, 0);
    d->pid = 0;
}

int
harness_add_logicd(struct harness *h, const char *extra_config)
{
    if (h->nlogicd == HARNESS_MAX_DAEMONS)
        return -1;
    int i = h->nlogicd;
    struct harness_daemon *d = &h->logicd[i];
    char prog[1024], migrations[1024], text[4096];
    harness_build_path("services/logic/logicd", prog, sizeof(prog));
    harness_source_path("migrations", migrations, sizeof(migrations));
    d->port[0] = harness_free_port();
    d->port[1] = harness_free_port();
    char dir[sizeof(h->dir)];
    memcpy(dir, h->dir, sizeof(dir)); /* d lives inside h: no overlapping snprintf */
    snprintf(d->config, sizeof(d->config), "%s/logicd%d.conf", dir, i);
    snprintf(d->log, sizeof(d->log), "%s/logicd%d.log", dir, i);
    snprintf(text, sizeof(text),
             "sdk_listen = 127.0.0.1:%d\ninternal_listen = 127.0.0.1:%d\n"
             "pg_conninfo = \"%s\"\nredis_port = %d\nserver_key = %s\n"
             "ops_tokens = tester:%s\ntoken_key = %s\nmigrations_dir = %s\n"
             "poll_interval_ms = 200\nlog_level = debug\n%s\n",
             d->port[0], d->port[1], h->pg_conninfo, h->redis_port, h->server_key, h->ops_token,
             h->token_key, migrations, extra_config ? extra_config : "");
    if (!write_file(d->config, text)) {
        hfail("cannot write %s", d->config);
        return -1;
    }
    d->pid = spawn(prog, d->config, d->log, NULL);
    if (d->pid < 0 || !wait_healthy(d->port[1], d->pid, 20000)) {
        hfail("logicd %d did not become healthy (log: %s)", i, d->log);
        harness_daemon_stop(d);
        return -1;
    }
    h->nlogicd++;
    return i;
}

int
harness_add_lcsd(struct harness *h, const char *extra_config)
{
    if (h->nlcsd == HARNESS_MAX_DAEMONS)
        return -1;
    int i = h->nlcsd;
    struct harness_daemon *d = &h->lcsd[i];
    char prog[1024], text[4096];
    harness_build_path("services/lcs/lcsd", prog, sizeof(prog));
    d->port[0] = harness_free_port();
    d->port[1] = harness_free_port();
    char dir[sizeof(h->dir)];
    memcpy(dir, h->dir, sizeof(dir)); /* d lives inside h: no overlapping snprintf */
    snprintf(d->config, sizeof(d->config), "%s/lcsd%d.conf", dir, i);
    snprintf(d->log, sizeof(d->log), "%s/lcsd%d.log", dir, i);
    snprintf(text, sizeof(text),
             "ws_listen = 127.0.0.1:%d\nadmin_listen = 127.0.0.1:%d\nredis_port = %d\n"
             "token_key = %s\nnode_id = lcs%d\nlog_level = debug\n%s\n",
             d->port[0], d->port[1], h->redis_port, h->token_key, i,
             extra_config ? extra_config : "");
    if (!write_file(d->config, text)) {
        hfail("cannot write %s", d->config);
        return -1;
    }
    d->pid = spawn(prog, d->config, d->log, NULL);
    if (d->pid < 0 || !wait_healthy(d->port[1], d->pid, 20000)) {
        hfail("lcsd %d did not become healthy (log: %s)", i, d->log);
        harness_daemon_stop(d);
        return -1;
    }
    h->nlcsd++;
    return i;
}

bool
harness_start(struct harness *h, unsigned what)
{
    memset(h, 0, sizeof(*h));
    if (what & HARNESS_LOGICD)
        what |= HARNESS_PG | HARNESS_REDIS;
    if (what & HARNESS_LCSD)
        what |= HARNESS_REDIS;
    snprintf(h->dir, sizeof(h->dir), "/tmp/mbox-test-XXXXXX");
    if (mkdtemp(h->dir) == NULL) {
        hfail("mkdtemp: %s", strerror(errno));
        return false;
    }
    chmod(h->dir, 0755); /* the postgres user must reach its data directory */
    harness_random_hex(h->server_key, 16);
    harness_random_hex(h->ops_token, 16);
    harness_random_hex(h->token_key, 16);

    if ((what & HARNESS_PG) && !start_pg(h))
        goto fail;
    if ((what & HARNESS_REDIS) && !harness_redis_start(h))
        goto fail;
    if (what & HARNESS_LOGICD) {
        char prog[1024], cmd[4096], migrations[1024];
        harness_build_path("services/logic/logicd", prog, sizeof(prog));
        harness_source_path("migrations", migrations, sizeof(migrations));
        snprintf(cmd, sizeof(cmd),
                 "LOGICD_PG_CONNINFO='%s' LOGICD_SERVER_KEY=x LOGICD_TOKEN_KEY=x "
                 "LOGICD_MIGRATIONS_DIR='%s' '%s' --migrate-only >>'%s/migrate.log' 2>&1",
                 h->pg_conninfo, migrations, prog, h->dir);
        int rc = system(cmd);
        if (rc == -1 || !WIFEXITED(rc) || WEXITSTATUS(rc) != 0) {
            hfail("migrations failed (status %d); log follows", rc);
            snprintf(cmd, sizeof(cmd), "cat '%s/migrate.log' >&2", h->dir);
            if (system(cmd) != 0)
                hfail("no migrate.log");
            goto fail;
        }
        if (harness_add_logicd(h, NULL) < 0)
            goto fail;
    }
    if ((what & HARNESS_LCSD) && harness_add_lcsd(h, NULL) < 0)
        goto fail;
    return true;
fail:
    harness_stop(h);
    return false;
}

pid_t
harness_spawn(const char *prog, const char *config, const char *log)
{
    return spawn(prog, config, log, NULL);
}

void
harness_stop(struct harness *h)
{
    if (h->dir[0] == '\0')
        return;
    for (int i = 0; i < h->nlcsd; i++)
        harness_daemon_stop(&h->lcsd[i]);
    for (int i = 0; i < h->nlogicd; i++)
        harness_daemon_stop(&h->logicd[i]);
    (void)harness_redis_stop(h);
    (void)harness_servers("pg-stop '%s'", h->dir);
    if (getenv("MBOX_KEEP_TEST_DIR") == NULL) {
        char cmd[512];
        snprintf(cmd, sizeof(cmd), "rm -rf '%s'", h->dir);
        if (system(cmd) != 0)
            hfail("could not remove %s", h->dir);
    } else {
        fprintf(stderr, "harness: kept %s\n", h->dir);
    }
    h->dir[0] = '\0';
}
