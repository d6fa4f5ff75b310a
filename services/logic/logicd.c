/*
 * logicd: the stateless HTTP service of the mailbox (docs/design.md 2): SDK
 * sync and history pulls, the server send API, the ops API for notices and
 * the whitelist, and the public-mailbox cache.
 *
 * main() loads the config, optionally applies migrations (--migrate), starts
 * the worker threads and waits for SIGTERM/SIGINT, then stops the workers:
 * they stop accepting, let replies in flight drain briefly and leave.
 */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>

#include <event2/thread.h>

#include "bucket_move.h"
#include "config.h"
#include "console.h"
#include "fanout.h"
#include "log.h"
#include "logic.h"
#include "metrics.h"
#include "migrate.h"
#include "pubcache.h"
#include "shard_db.h"

/*
 * Parses "name:token[:role],..." into app->ops. The role is the text after
 * the last ':' when it is "editor" or "publisher"; an entry without one is
 * a publisher (what every ops token could do before roles existed). A
 * token that itself contains ':' must then be followed by its role.
 */
static bool
parse_ops_tokens(struct logic *app, const char *s, char *err, size_t errlen)
{
    app->nops = 0;
    while (*s) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        const char *colon = memchr(s, ':', len);
        if (colon == NULL || colon == s || colon + 1 == s + len) {
            snprintf(err, errlen, "key 'ops_tokens': entry %d is not name:token[:role]",
                     app->nops + 1);
            return false;
        }
        size_t nlen = (size_t)(colon - s), tlen = len - nlen - 1;
        enum logic_role role = LOGIC_ROLE_PUBLISHER;
        const char *last = memrchr(colon + 1, ':', tlen);
        if (last != NULL) {
            size_t rlen = (size_t)(s + len - last - 1);
            if (rlen == 6 && memcmp(last + 1, "editor", 6) == 0)
                role = LOGIC_ROLE_EDITOR;
            else if (rlen == 9 && memcmp(last + 1, "publisher", 9) == 0)
                role = LOGIC_ROLE_PUBLISHER;
            else
                last = NULL; /* part of the token */
            if (last != NULL)
                tlen = (size_t)(last - colon - 1);
        }
        if (tlen == 0) {
            snprintf(err, errlen, "key 'ops_tokens': entry %d has an empty token", app->nops + 1);
            return false;
        }
        if (app->nops == LOGIC_MAX_OPS_TOKENS || nlen >= sizeof(app->ops[0].name) ||
            tlen >= sizeof(app->ops[0].token)) {
            snprintf(err, errlen, "key 'ops_tokens': too many entries or too long");
            return false;
        }
        memcpy(app->ops[app->nops].name, s, nlen);
        app->ops[app->nops].name[nlen] = '\0';
        memcpy(app->ops[app->nops].token, colon + 1, tlen);
        app->ops[app->nops].token[tlen] = '\0';
        app->ops[app->nops].role = role;
        /* One token, one operator: with two entries the role would depend
         * on which one the lookup happens to meet. */
        for (int i = 0; i < app->nops; i++) {
            if (strcmp(app->ops[i].token, app->ops[app->nops].token) == 0) {
                snprintf(err, errlen, "key 'ops_tokens': entries %d and %d have the same token",
                         i + 1, app->nops + 1);
                return false;
            }
        }
        app->nops++;
        s += len;
        if (*s == ',')
            s++;
    }
    return true;
}

/*
 * Parses cors_allow_origins ("*", or origins "scheme://host[:port]"
 * separated by commas and spaces) into app->cors.
 */
static bool
parse_cors(struct logic *app, const char *s, char *err, size_t errlen)
{
    size_t n = 0;
    while (*s) {
        size_t len = strcspn(s, ", ");
        if (len == 0) {
            s++;
            continue;
        }
        if (len == 1 && *s == '*') {
            app->cors.any = true;
        } else {
            const char *sep = memmem(s, len, "://", 3);
            if (n == LOGIC_MAX_CORS_ORIGINS || sep == NULL || sep == s || sep + 3 == s + len ||
                memchr(sep + 3, '/', len - (size_t)(sep + 3 - s)) != NULL) {
                snprintf(err, errlen,
                         "key 'cors_allow_origins': '%.*s' is not scheme://host[:port] "
                         "(at most %d origins)",
                         (int)(len < 200 ? len : 200), s, LOGIC_MAX_CORS_ORIGINS);
                return false;
            }
            app->cors_origins[n] = strndup(s, len);
            if (app->cors_origins[n] == NULL) {
                snprintf(err, errlen, "out of memory");
                return false;
            }
            n++;
        }
        s += len;
    }
    app->cors.origins = (const char *const *)app->cors_origins;
    app->cors.norigins = n;
    app->cors.allow_headers =
        "Authorization, Content-Type, Accept, platform, app_version, core_level";
    app->cors.max_age_s = 600;
    app->cors_on = n > 0 || app->cors.any;
    return true;
}

static void
free_cors(struct logic *app)
{
    for (size_t i = 0; i < LOGIC_MAX_CORS_ORIGINS; i++) {
        free(app->cors_origins[i]);
        app->cors_origins[i] = NULL;
    }
    /* With the CORS origins: both are what prepare_app() allocates. */
    shard_list_free(app->shard_conninfo, LOGIC_MAX_SHARDS);
}

/* Everything about the config that the table cannot check. */
static bool
prepare_app(struct logic *app, char *err, size_t errlen)
{
    struct logic_config *c = &app->cfg;
    if (!logic_config_validate(c, err, errlen) ||
        !parse_ops_tokens(app, c->ops_tokens, err, errlen) ||
        !parse_cors(app, c->cors_allow_origins, err, errlen) ||
        !console_resolve_dir(app, err, errlen))
        return false;
    if (!cfg_parse_hostport(c->sdk_listen, app->sdk_host, sizeof(app->sdk_host), &app->sdk_port) ||
        !cfg_parse_hostport(c->internal_listen, app->internal_host, sizeof(app->internal_host),
                            &app->internal_port)) {
        snprintf(err, errlen, "bad listener address");
        return false;
    }
    /* The internal listener's body cap (lib/http has one per listener)
     * must hold a POST /v1/fanout of fanout_max_uids + 1 uids of 20 digits
     * and CRLF after a first line with the largest content (JSON escapes
     * take up to 6 bytes a byte), so that a list that is too long gets
     * "more than N uids" rather than the body cap. */
    int64_t fanout_body = (c->fanout_max_uids + 1) * 22 + c->max_content_bytes * 6 + 4096;
    if (c->internal_max_body < fanout_body)
        c->internal_max_body = fanout_body;
    app->keys.current_id = c->token_key_id;
    app->keys.current_key = c->token_key;
    app->keys.previous_id = c->token_prev_key_id[0] ? c->token_prev_key_id : NULL;
    app->keys.previous_key = c->token_prev_key[0] ? c->token_prev_key : NULL;
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

int
main(int argc, char **argv)
{
    static const char *const extra[] = {"--migrate", "--migrate-only", NULL};
    struct logic app;
    memset(&app, 0, sizeof(app));
    unsigned flags = 0;
    int status = 1;

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
        free_cors(&app);
        cfg_free(&logic_config_schema, &app.cfg);
        return act == CFG_EXIT_OK ? 0 : 1;
    }
    if (!prepare_app(&app, err, sizeof(err))) {
        fprintf(stderr, "logicd: config error: %s\n", err);
        free_cors(&app);
        cfg_free(&logic_config_schema, &app.cfg);
        return 1;
    }
    enum log_level lvl = LOG_INFO;
    if (log_parse_level(app.cfg.log_level, &lvl)) /* validated above */
        log_set_level(lvl);

    if (flags & 3u) {
        if (!migrate_all(&app, err, sizeof(err))) {
            fprintf(stderr, "logicd: migration failed: %s\n", err);
            free_cors(&app);
            cfg_free(&logic_config_schema, &app.cfg);
            return 1;
        }
        if (flags & 2u) {
            free_cors(&app);
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
        free_cors(&app);
        cfg_free(&logic_config_schema, &app.cfg);
        return ok ? 0 : 1;
    }

    /* SIGTERM/SIGINT are taken by sigwait below; block them before threads start. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();

    /* Before any thread: a logicd whose pg_shards does not match the map
     * would write mailboxes where no other logicd reads them. */
    int given = app.shard_conninfo[0] != NULL ? app.nshards : 0;
    if (!shard_db_load(app.cfg.pg_conninfo, app.shard_conninfo, given, &app.map, err,
                       sizeof(err))) {
        fprintf(stderr, "logicd: cannot start: %s\n", err);
        free_cors(&app);
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

    int sig = 0;
    while (sigwait(&sigs, &sig) != 0 && errno == EINTR)
        ;
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
    free_cors(&app);
    cfg_free(&logic_config_schema, &app.cfg);
    return status;
}
