/*
 * logicd: the stateless HTTP service of the mailbox (SPEC section 2): SDK
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

#include <event2/thread.h>

#include "config.h"
#include "fanout.h"
#include "log.h"
#include "logic.h"
#include "metrics.h"
#include "migrate.h"
#include "pubcache.h"

/* Parses "name:token,name:token" into app->ops. */
static bool
parse_ops_tokens(struct logic *app, const char *s, char *err, size_t errlen)
{
    app->nops = 0;
    while (*s) {
        const char *end = strchr(s, ',');
        size_t len = end ? (size_t)(end - s) : strlen(s);
        const char *colon = memchr(s, ':', len);
        if (colon == NULL || colon == s || colon + 1 == s + len) {
            snprintf(err, errlen, "key 'ops_tokens': entry %d is not name:token", app->nops + 1);
            return false;
        }
        size_t nlen = (size_t)(colon - s), tlen = len - nlen - 1;
        if (app->nops == LOGIC_MAX_OPS_TOKENS || nlen >= sizeof(app->ops[0].name) ||
            tlen >= sizeof(app->ops[0].token)) {
            snprintf(err, errlen, "key 'ops_tokens': too many entries or too long");
            return false;
        }
        memcpy(app->ops[app->nops].name, s, nlen);
        app->ops[app->nops].name[nlen] = '\0';
        memcpy(app->ops[app->nops].token, colon + 1, tlen);
        app->ops[app->nops].token[tlen] = '\0';
        app->nops++;
        s += len;
        if (*s == ',')
            s++;
    }
    return true;
}

/* Everything about the config that the table cannot check. */
static bool
prepare_app(struct logic *app, char *err, size_t errlen)
{
    struct logic_config *c = &app->cfg;
    if (!logic_config_validate(c, err, errlen) ||
        !parse_ops_tokens(app, c->ops_tokens, err, errlen))
        return false;
    if (!cfg_parse_hostport(c->sdk_listen, app->sdk_host, sizeof(app->sdk_host), &app->sdk_port) ||
        !cfg_parse_hostport(c->internal_listen, app->internal_host, sizeof(app->internal_host),
                            &app->internal_port)) {
        snprintf(err, errlen, "bad listener address");
        return false;
    }
    app->keys.current_id = c->token_key_id;
    app->keys.current_key = c->token_key;
    app->keys.previous_id = c->token_prev_key_id[0] ? c->token_prev_key_id : NULL;
    app->keys.previous_key = c->token_prev_key[0] ? c->token_prev_key : NULL;
    return true;
}

int
main(int argc, char **argv)
{
    static const char *const extra[] = {"--migrate", "--migrate-only", NULL};
    struct logic app;
    memset(&app, 0, sizeof(app));
    unsigned flags = 0;
    int status = 1;

    enum cfg_action act = cfg_main(&logic_config_schema, &app.cfg, argc, argv, extra, &flags);
    if (act != CFG_RUN) {
        cfg_free(&logic_config_schema, &app.cfg);
        return act == CFG_EXIT_OK ? 0 : 1;
    }
    char err[512];
    if (!prepare_app(&app, err, sizeof(err))) {
        fprintf(stderr, "logicd: config error: %s\n", err);
        cfg_free(&logic_config_schema, &app.cfg);
        return 1;
    }
    enum log_level lvl = LOG_INFO;
    if (log_parse_level(app.cfg.log_level, &lvl)) /* validated above */
        log_set_level(lvl);

    if (flags & 3u) {
        if (!migrate_run(app.cfg.pg_conninfo, app.cfg.migrations_dir, err, sizeof(err))) {
            fprintf(stderr, "logicd: migration failed: %s\n", err);
            cfg_free(&logic_config_schema, &app.cfg);
            return 1;
        }
        if (flags & 2u) {
            cfg_free(&logic_config_schema, &app.cfg);
            return 0;
        }
    }

    /* SIGTERM/SIGINT are taken by sigwait below; block them before threads start. */
    sigset_t sigs;
    sigemptyset(&sigs);
    sigaddset(&sigs, SIGTERM);
    sigaddset(&sigs, SIGINT);
    pthread_sigmask(SIG_BLOCK, &sigs, NULL);
    signal(SIGPIPE, SIG_IGN);
    evthread_use_pthreads();

    app.metrics = metrics_new();
    app.started_us = logic_now_us();
    int n = (int)app.cfg.threads;
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
    cfg_free(&logic_config_schema, &app.cfg);
    return status;
}
