/*
 * harness: starts what an integration suite needs on free loopback ports,
 * inside a fresh temporary directory, and stops it all at the end.
 *
 *   - a private PostgreSQL 15 (initdb + postgres, run as the `postgres`
 *     user when the tests run as root, since PostgreSQL refuses root), with
 *     the migrations applied;
 *   - a private Redis 7 (no persistence);
 *   - logicd and lcsd processes from the build tree with a generated config.
 *
 * It uses the same shell functions as ops/run (ops/lib/servers.sh), so the
 * test stack and the dev stack start their servers the same way.
 * Intended use: call harness_start() from a Check unchecked fixture (it runs
 * once in the parent process) and harness_stop() from its teardown.
 */
#ifndef MBOX_HARNESS_H
#define MBOX_HARNESS_H

#include <stdbool.h>
#include <sys/types.h>

#define HARNESS_PG          (1u << 0)
#define HARNESS_REDIS       (1u << 1)
#define HARNESS_LOGICD      (1u << 2) /* implies PG, REDIS and migrations */
#define HARNESS_LCSD        (1u << 3) /* implies REDIS */
#define HARNESS_MAX_DAEMONS 6

struct harness_daemon {
    pid_t pid;
    int port[2]; /* logicd: sdk, internal; lcsd: ws, admin */
    char config[512];
    char log[512];
};

struct harness {
    char dir[256]; /* temporary directory holding everything */
    int pg_port;
    char pg_conninfo[512];
    char pg_password[33];
    int redis_port;
    char server_key[65];
    char ops_token[65];
    char token_key[65];
    int nlogicd, nlcsd;
    struct harness_daemon logicd[HARNESS_MAX_DAEMONS];
    struct harness_daemon lcsd[HARNESS_MAX_DAEMONS];
};

/* n random bytes as 2n hex digits and a NUL (secrets of a test stack). */
void harness_random_hex(char *out, size_t bytes);

/* Runs ops/servers with the formatted arguments; true on exit status 0. */
bool harness_servers(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Starts what `what` names (HARNESS_* bits). On failure prints why and returns false. */
bool harness_start(struct harness *h, unsigned what);

/* Starts one more logicd / lcsd (index returned, -1 on failure), extra config lines appended. */
int harness_add_logicd(struct harness *h, const char *extra_config);
int harness_add_lcsd(struct harness *h, const char *extra_config);

/* Stops and restarts PostgreSQL on the same port, keeping its data (fault tests). */
bool harness_pg_pause(struct harness *h);
bool harness_pg_resume(struct harness *h);

/* Stops and restarts Redis on the same port (fault tests). */
bool harness_redis_stop(struct harness *h);
/* The running Redis's pid (from its pid file), for SIGSTOP/SIGCONT fault tests; -1 if none. */
pid_t harness_redis_pid(const struct harness *h);
bool harness_redis_start(struct harness *h);

/* Stops one daemon (SIGTERM, then SIGKILL after 5 s). */
void harness_daemon_stop(struct harness_daemon *d);

/* A loopback port that was free a moment ago. */
int harness_free_port(void);

/* Starts prog -c config (stdout/stderr appended to log); returns its pid. */
pid_t harness_spawn(const char *prog, const char *config, const char *log);

/* Stops everything and removes the directory (kept when MBOX_KEEP_TEST_DIR is set). */
void harness_stop(struct harness *h);

/* Path of a built program ("services/logic/logicd") under MBOX_BUILD_ROOT. */
const char *harness_build_path(const char *rel, char *buf, size_t len);

/* Path of a source file under MBOX_SOURCE_ROOT. */
const char *harness_source_path(const char *rel, char *buf, size_t len);

#endif
