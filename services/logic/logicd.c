/*
 * logicd: the stateless HTTP service of the mailbox (docs/design.md 2): SDK
 * sync and history pulls, the server send API, the ops API for notices and
 * the whitelist, and the public-mailbox cache.
 *
 * main() loads the config, optionally applies migrations (--migrate), starts
 * the worker threads, tells systemd it is ready (sdnotify.h) and waits for
 * signals: SIGHUP reloads what can change without a restart (reload()),
 * SIGTERM/SIGINT stop the workers: they stop accepting, let replies in
 * flight drain briefly and leave.
 */
#include <errno.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <event2/thread.h>

#include "bucket_move.h"
#include "config.h"
#include "console.h"
#include "fanout.h"
#include "health.h"
#include "live.h"
#include "log.h"
#include "logic.h"
#include "metrics.h"
#include "migrate.h"
#include "pubcache.h"
#include "sdnotify.h"
#include "shard_db.h"
#include "sql.h"

/* Frees what prepare_app() allocates: the config snapshots and the shard list. */
static void
free_prepared(struct logic *app)
{
    logic_live_free_all(app);
    shard_list_free(app->shard_conninfo, LOGIC_MAX_SHARDS);
}

/* The first configuration snapshot (live.h), from the validated config. */
static bool
build_first_live(struct logic *app, char *err, size_t errlen)
{
    struct logic_live *lv = logic_live_build(&app->cfg, err, errlen);
    if (lv == NULL)
        return false;
    logic_live_set_first(app, lv);
    return true;
}

/*
 * Values derived from others (at start, and on the config a reload read, so
 * that comparing the two does not see a change nobody made).
 */
static void
derive_limits(struct logic_config *c)
{
    /* The internal listener's body cap (lib/http has one per listener)
     * must hold a POST /v1/fanout of fanout_max_uids + 1 uids of 20 digits
     * and CRLF after a first line with the largest content (JSON escapes
     * take up to 6 bytes a byte), so that a list that is too long gets
     * "more than N uids" rather than the body cap. */
    int64_t fanout_body = (c->fanout_max_uids + 1) * 22 + c->max_content_bytes * 6 + 4096;
    if (c->internal_max_body < fanout_body)
        c->internal_max_body = fanout_body;
}

/* Everything about the config that the table cannot check. */
static bool
prepare_app(struct logic *app, char *err, size_t errlen)
{
    struct logic_config *c = &app->cfg;
    if (!logic_config_validate(c, err, errlen) || !build_first_live(app, err, errlen) ||
        !xff_trust_parse(c->trusted_proxies, &app->trusted_proxies, err, errlen) ||
        !console_resolve_dir(app, err, errlen))
        return false;
    if (!cfg_parse_hostport(c->sdk_listen, app->sdk_host, sizeof(app->sdk_host), &app->sdk_port) ||
        !cfg_parse_hostport(c->internal_listen, app->internal_host, sizeof(app->internal_host),
                            &app->internal_port)) {
        snprintf(err, errlen, "bad listener address");
        return false;
    }
    derive_limits(c);
    int n = shard_list_parse(c->pg_shards, app->shard_conninfo, LOGIC_MAX_SHARDS, err, errlen);
    if (n < 0)
        return false;
    /* No pg_shards: one shard, the public database (shard_conninfo[0]
     * stays NULL, so the workers use their public pool). */
    app->nshards = n > 0 ? n : 1;
    return true;
}

/*
 * --migrate: every database gets every migration (a database listed twice,
 * or the public one listed as a shard, once), then the bucket map is
 * created if pg_shards is set and it does not exist yet.
 */
static bool
migrate_all(struct logic *app, char *err, size_t errlen)
{
    const struct logic_config *c = &app->cfg;
    if (!migrate_run(c->pg_conninfo, c->migrations_dir, err, errlen))
        return false;
    for (int i = 0; i < app->nshards && app->shard_conninfo[i] != NULL; i++) {
        bool seen = strcmp(app->shard_conninfo[i], c->pg_conninfo) == 0;
        for (int j = 0; j < i && !seen; j++)
            seen = strcmp(app->shard_conninfo[i], app->shard_conninfo[j]) == 0;
        if (seen)
            continue;
        char serr[400];
        if (!migrate_run(app->shard_conninfo[i], c->migrations_dir, serr, sizeof(serr))) {
            snprintf(err, errlen, "pg_shards entry %d: %s", i + 1, serr);
            return false;
        }
    }
    if (app->shard_conninfo[0] == NULL)
        return true;
    return shard_db_init(c->pg_conninfo, app->shard_conninfo, app->nshards, err, errlen);
}

/*
 * Caps the connections of both listeners so that descriptors never run out
 * (the soft RLIMIT_NOFILE is raised to the hard one first). Descriptors
 * the process needs for itself (database and Redis connections of every
 * worker, the poller, fanout, logs) are set aside; of the rest, an eighth
 * (16..4096) goes to the internal listener and the remainder to the SDK
 * listener, so operators and /healthz still get in while the SDK listener
 * is full. Configured caps win; a configuration that cannot fit is
 * reported, not silently shrunk.
 */
static void
plan_connections(struct logic *app)
{
    struct logic_config *c = &app->cfg;
    struct rlimit rl;
    long nofile = 1024;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        if (rl.rlim_cur < rl.rlim_max) {
            rl.rlim_cur = rl.rlim_max;
            (void)setrlimit(RLIMIT_NOFILE, &rl);
            (void)getrlimit(RLIMIT_NOFILE, &rl);
        }
        nofile = rl.rlim_cur > (rlim_t)100000000 ? 100000000 : (long)rl.rlim_cur;
    }
    long own = 64 + c->threads * (c->pg_pool_size + 8) + app->shard_pools * c->pg_pool_size;
    long avail = nofile - own > 32 ? nofile - own : 32;
    long internal = avail / 8 < 16 ? 16 : avail / 8 > 4096 ? 4096 : avail / 8;
    app->internal_gate.max =
        c->internal_max_connections > 0 ? c->internal_max_connections : internal;
    app->sdk_gate.max =
        c->sdk_max_connections > 0
            ? c->sdk_max_connections
            : (avail - app->internal_gate.max > 16 ? avail - app->internal_gate.max : 16);
    if (app->sdk_gate.max + app->internal_gate.max > avail)
        log_warn("connections_overcommitted",
                 "nofile=%ld own=%ld sdk_max_connections=%ld internal_max_connections=%ld "
                 "hint=\"raise LimitNOFILE or lower the caps: descriptors can run out\"",
                 nofile, own, app->sdk_gate.max, app->internal_gate.max);
    log_info("connections_planned",
             "nofile=%ld sdk_max_connections=%ld internal_max_connections=%ld", nofile,
             app->sdk_gate.max, app->internal_gate.max);
}

/* True when path names a directory. */
static bool
is_dir(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/*
 * An empty migrations_dir: the copy meson install put beside this binary
 * (MBOX_MIGRATIONS_REL from the executable's directory, which also holds
 * under a DESTDIR or a moved prefix), else the configured install path,
 * else migrations/ of the working directory (a checkout).
 */
static bool
resolve_migrations_dir(struct logic *app, char *err, size_t errlen)
{
    if (app->cfg.migrations_dir[0] != '\0')
        return true;
    char exe[PATH_MAX], dir[PATH_MAX + 64];
    const char *found = "migrations";
    ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
    char *slash = n > 0 ? memrchr(exe, '/', (size_t)n) : NULL;
    if (slash != NULL) {
        *slash = '\0';
        snprintf(dir, sizeof(dir), "%s/%s", exe, MBOX_MIGRATIONS_REL);
    } else {
        dir[0] = '\0';
    }
    if (dir[0] != '\0' && is_dir(dir))
        found = dir;
    else if (is_dir(MBOX_MIGRATIONS_INSTALL_DIR))
        found = MBOX_MIGRATIONS_INSTALL_DIR;
    log_info("migrations_dir_resolved", "dir=%s", found);
    return cfg_set(&logic_config_schema, &app->cfg, "migrations_dir", found, err, errlen);
}

/* What systemd shows as the service's status while it serves. */
static void
ready_status(const struct logic *app, char *buf, size_t len)
{
    snprintf(buf, len, "serving: sdk %s, internal %s, %d workers", app->cfg.sdk_listen,
             app->cfg.internal_listen, app->nworkers);
}

/*
 * SIGHUP: reopens the log file (logrotate renamed it), then reads the
 * config file again. A file that does not load or validate changes nothing
 * but the log file's descriptor; otherwise the reloadable keys take effect
 * (log settings here, the rest through a new snapshot the workers adopt)
 * and every other changed key is named in one "needs restart" line and
 * left as it was.
 */
static void
reload(struct logic *app, const char *path, struct logic_worker *workers, int n)
{
    char err[512], q[600], status[256];
    sdn_reloading();
    ready_status(app, status, sizeof(status));
    if (!log_open_file(app->cfg.log_file, err, sizeof(err)))
        log_error("log_reopen_failed", "error=%s", log_q(q, sizeof(q), err));
    struct logic_config nc;
    memset(&nc, 0, sizeof(nc));
    if (!cfg_load(&logic_config_schema, &nc, path, err, sizeof(err))) {
        log_error("config_reload_failed", "file=%s error=%s kept=running_config",
                  path != NULL ? path : "(none)", log_q(q, sizeof(q), err));
        sdn_ready(status);
        return;
    }
    struct logic_live *lv = NULL;
    if (!logic_config_validate(&nc, err, sizeof(err)) ||
        (lv = logic_live_build(&nc, err, sizeof(err))) == NULL ||
        (strcmp(nc.log_file, app->cfg.log_file) != 0 &&
         !log_open_file(nc.log_file, err, sizeof(err)))) {
        log_error("config_reload_failed", "file=%s error=%s kept=running_config",
                  path != NULL ? path : "(none)", log_q(q, sizeof(q), err));
        logic_live_free(lv);
        cfg_free(&logic_config_schema, &nc);
        sdn_ready(status);
        return;
    }
    derive_limits(&nc);
    /* An empty migrations_dir was resolved (--migrate) to what runs. */
    if (nc.migrations_dir[0] == '\0' && !cfg_set(&logic_config_schema, &nc, "migrations_dir",
                                                 app->cfg.migrations_dir, err, sizeof(err)))
        log_warn("config_reload_migrations_dir", "error=%s", log_q(q, sizeof(q), err));
    /* Committed from here on: nothing below can fail. */
    char applied[1024] = "", restart[1024] = "";
    for (size_t i = 0; i < logic_config_schema.nkeys; i++) {
        const struct cfg_key *k = &logic_config_schema.keys[i];
        if (cfg_key_equal(k, &app->cfg, &nc))
            continue;
        char *list = k->reloadable ? applied : restart;
        size_t used = strlen(list);
        snprintf(list + used, sizeof(applied) - used, "%s%s", used ? "," : "", k->name);
        /* Workers never read the reloadable keys of app->cfg (they use
         * their snapshot), so the main thread may change them. */
        if (k->reloadable)
            cfg_key_swap(k, &app->cfg, &nc);
    }
    cfg_free(&logic_config_schema, &nc);
    if (!log_apply(app->cfg.log_level, app->cfg.log_format, app->cfg.log_file, err, sizeof(err)))
        log_error("log_settings_failed", "error=%s", log_q(q, sizeof(q), err));
    logic_live_publish(app, workers, n, lv);
    log_info("config_reloaded", "file=%s applied=%s", path != NULL ? path : "(none)",
             applied[0] ? applied : "none");
    if (restart[0] != '\0')
        log_warn("config_needs_restart",
                 "keys=%s hint=\"changed in the file, not applied until "
                 "a restart\"",
                 restart);
    sdn_ready(status);
}

/*
 * WATCHDOG=1 only while every worker's loop turns: each beats every
 * HEALTH_BEAT_INTERVAL_MS (health.h), and a beat older than half the
 * watchdog period (at least two beats) withholds the ping, so systemd kills
 * a logicd with a wedged loop instead of leaving it half-serving.
 */
static void
watchdog_tick(const struct logic *app, int n, uint64_t wd_usec)
{
    int64_t limit_ms = (int64_t)(wd_usec / 2000);
    if (limit_ms < 2 * HEALTH_BEAT_INTERVAL_MS)
        limit_ms = 2 * HEALTH_BEAT_INTERVAL_MS;
    for (int i = 0; i < n; i++) {
        int64_t age = health_beat_age_ms(&app->beats[i]);
        if (age > limit_ms) {
            log_warn("watchdog_withheld", "worker=%d beat_age_ms=%lld limit_ms=%lld", i,
                     (long long)age, (long long)limit_ms);
            return;
        }
    }
    sdn_watchdog();
}

/* Monotonic clock in microseconds. */
static int64_t
mono_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

int
main(int argc, char **argv)
{
    static const char *const extra[] = {"--migrate", "--migrate-only", NULL};
    struct logic app;
    memset(&app, 0, sizeof(app));
    unsigned flags = 0;
    int status = 1;

    if (argc == 3 && strcmp(argv[1], "--print-sql") == 0) {
        const char *sql = sql_text(argv[2]);
        if (sql == NULL) {
            fprintf(stderr, "logicd: no statement named %s\n", argv[2]);
            return 1;
        }
        return printf("%s\n", sql) < 0 || fflush(stdout) != 0 ? 1 : 0;
    }
    char err[512];
    unsigned move_bucket = 0;
    int move_to = 0;
    int move = shard_move_args(&argc, argv, &move_bucket, &move_to, err, sizeof(err));
    if (move < 0) {
        fprintf(stderr, "logicd: %s\n", err);
        return 1;
    }
    enum cfg_action act = cfg_main(&logic_config_schema, &app.cfg, argc, argv, extra, &flags);
    if (act != CFG_RUN) {
        free_prepared(&app);
        cfg_free(&logic_config_schema, &app.cfg);
        return act == CFG_EXIT_OK ? 0 : 1;
    }
    /* SIGTERM/SIGINT (stop) and SIGHUP (reload) are taken by sigtimedwait
     * once serving; blocked from here on (before any thread starts), one
     * that comes while logicd starts waits for it instead of killing it
     * half-started. --migrate-only and --move-bucket keep the default:
     * Ctrl-C stops them (a move is resumable). */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    sigaddset(&sigs, SIGHUP);
    if (!(flags & 2u) && move == 0)
        pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    if (!prepare_app(&app, err, sizeof(err))) {
        fprintf(stderr, "logicd: config error: %s\n", err);
        free_prepared(&app);
        cfg_free(&logic_config_schema, &app.cfg);
        return 1;
    }
    if (!log_apply(app.cfg.log_level, app.cfg.log_format, app.cfg.log_file, err, sizeof(err))) {
        fprintf(stderr, "logicd: config error: %s\n", err);
        free_prepared(&app);
        cfg_free(&logic_config_schema, &app.cfg);
        return 1;
    }

    if (flags & 3u) {
        if (!resolve_migrations_dir(&app, err, sizeof(err)) ||
            !migrate_all(&app, err, sizeof(err))) {
            fprintf(stderr, "logicd: migration failed: %s\n", err);
            free_prepared(&app);
            cfg_free(&logic_config_schema, &app.cfg);
            return 1;
        }
        if (flags & 2u) {
            free_prepared(&app);
            cfg_free(&logic_config_schema, &app.cfg);
            return 0;
        }
    }

    if (move > 0) {
        /* --move-bucket: one bucket to another shard, then exit. */
        struct bucket_move_report rep;
        bool ok = app.shard_conninfo[0] != NULL;
        if (!ok)
            snprintf(err, sizeof(err), "--move-bucket needs pg_shards");
        else
            ok = bucket_move_run(app.cfg.pg_conninfo, app.shard_conninfo, app.nshards, move_bucket,
                                 move_to, stdout, &rep, err, sizeof(err));
        if (!ok)
            fprintf(stderr, "logicd: bucket move failed (re-run to finish it): %s\n", err);
        free_prepared(&app);
        cfg_free(&logic_config_schema, &app.cfg);
        return ok ? 0 : 1;
    }

    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();

    /* Before any thread: a logicd whose pg_shards does not match the map
     * would write mailboxes where no other logicd reads them. */
    int given = app.shard_conninfo[0] != NULL ? app.nshards : 0;
    if (!shard_db_load(app.cfg.pg_conninfo, app.shard_conninfo, given, &app.map, err,
                       sizeof(err))) {
        fprintf(stderr, "logicd: cannot start: %s\n", err);
        free_prepared(&app);
        cfg_free(&logic_config_schema, &app.cfg);
        return 1;
    }
    for (int i = 0; i < app.nshards; i++) {
        if (app.shard_conninfo[i] != NULL && strcmp(app.shard_conninfo[i], app.cfg.pg_conninfo))
            app.shard_pools += (int)app.cfg.threads; /* a pool per worker (worker.c) */
    }
    plan_connections(&app);
    app.metrics = metrics_new();
    app.started_us = logic_now_us();
    int n = (int)app.cfg.threads;
    app.nworkers = n;
    struct logic_worker *workers = calloc((size_t)n, sizeof(*workers));
    if (app.metrics == NULL || workers == NULL) {
        fprintf(stderr, "logicd: out of memory\n");
        goto out;
    }
    app.fanout = fanout_start(&app);
    if (app.fanout == NULL) {
        fprintf(stderr, "logicd: cannot start the fanout thread\n");
        goto out;
    }
    for (int i = 0; i < n; i++) {
        if (!logic_worker_init(&workers[i], &app, i, err, sizeof(err))) {
            fprintf(stderr, "logicd: cannot start: %s\n", err);
            for (int j = 0; j <= i; j++)
                logic_worker_free(&workers[j]);
            goto out;
        }
    }
    if (app.cfg.whitelist_file[0] != '\0' &&
        !pubcache_load_whitelist_file(app.cfg.pg_conninfo, app.cfg.whitelist_file, err,
                                      sizeof(err))) {
        /* The file is the operator's; a bad one is a config error. A database
         * that is down is not: the whitelist in PostgreSQL still applies. */
        log_error("whitelist_file_failed", "error=%s", err);
        if (strstr(err, "expected") != NULL) {
            fprintf(stderr, "logicd: config error: %s\n", err);
            for (int j = 0; j < n; j++)
                logic_worker_free(&workers[j]);
            goto out;
        }
    }
    app.pubcache = pubcache_start(&app, workers, n);
    if (app.pubcache == NULL) {
        fprintf(stderr, "logicd: cannot start the public cache poller\n");
        for (int j = 0; j < n; j++)
            logic_worker_free(&workers[j]);
        goto out;
    }
    for (int i = 0; i < n; i++) {
        if (!logic_worker_start(&workers[i])) {
            fprintf(stderr, "logicd: cannot start thread %d\n", i);
            pubcache_stop(app.pubcache);
            for (int j = 0; j < n; j++)
                logic_worker_stop(&workers[j]);
            for (int j = 0; j < n; j++)
                logic_worker_free(&workers[j]);
            goto out;
        }
    }
    log_info("logicd_started", "sdk=%s internal=%s threads=%d version=%s", app.cfg.sdk_listen,
             app.cfg.internal_listen, n, MBOX_VERSION);

    /* Serving: systemd (Type=notify) hears READY=1; the main thread now
     * waits for signals, collects retired config snapshots and, under a
     * WatchdogSec=, pings every half period while the loops turn. */
    char ready[256];
    ready_status(&app, ready, sizeof(ready));
    sdn_ready(ready);
    const char *config_path = cfg_argv_path(argc, argv);
    uint64_t wd_usec = sdn_watchdog_usec();
    int64_t period_us = wd_usec > 0 ? (int64_t)(wd_usec / 2) : 1000000;
    if (wd_usec > 0)
        log_info("watchdog_on", "usec=%llu ping_every_ms=%lld", (unsigned long long)wd_usec,
                 (long long)(period_us / 1000));
    int64_t next_tick = mono_us() + period_us;
    int sig = 0;
    for (;;) {
        int64_t wait_us = next_tick - mono_us();
        if (wait_us < 0)
            wait_us = 0;
        struct timespec tmo = {(time_t)(wait_us / 1000000), (long)(wait_us % 1000000) * 1000};
        sig = sigtimedwait(&sigs, NULL, &tmo);
        if (sig == SIGTERM || sig == SIGINT)
            break;
        if (sig == SIGHUP) {
            log_info("logicd_reloading", "signal=%d", sig);
            reload(&app, config_path, workers, n);
            continue;
        }
        if (sig < 0 && errno != EAGAIN && errno != EINTR) {
            log_error("sigtimedwait_failed", "errno=%d", errno);
            break;
        }
        if (mono_us() >= next_tick) {
            next_tick += period_us;
            logic_live_collect(&app, workers, n);
            if (wd_usec > 0)
                watchdog_tick(&app, n, wd_usec);
        }
    }
    sdn_stopping("stopping: draining requests");
    log_info("logicd_stopping", "signal=%d", sig);
    /* The poller and the fanout thread hand work to the workers' loops:
     * stop them first (fanout finishes the job in progress). */
    pubcache_stop(app.pubcache);
    fanout_stop(app.fanout);
    app.fanout = NULL;
    for (int i = 0; i < n; i++)
        logic_worker_stop(&workers[i]);
    for (int i = 0; i < n; i++)
        logic_worker_free(&workers[i]);
    log_info("logicd_stopped", "threads=%d", n);
    status = 0;
out:
    fanout_stop(app.fanout);
    free(workers);
    metrics_free(app.metrics);
    free_prepared(&app);
    cfg_free(&logic_config_schema, &app.cfg);
    return status;
}
