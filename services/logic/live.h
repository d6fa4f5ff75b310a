/*
 * live: the part of logicd's configuration a SIGHUP reload may change while
 * the workers serve (docs/deploy.md, "Reload"): the user-token keys, the
 * operator tokens and the SDK listener's CORS origins. The log level, format
 * and file are the log module's (lib/log.h); every other key needs a
 * restart.
 *
 * A snapshot is immutable once published. The main thread builds a new one,
 * publishes it and wakes every worker; each worker adopts it on its own
 * loop, between two callbacks, so no request ever sees half of one
 * configuration and half of another. A snapshot is freed once every worker
 * has adopted a newer one. The one pointer that outlives a callback, the
 * operator name a notice change writes to the audit log after its queries,
 * points into a table of names that only grows and lives until exit.
 */
#ifndef LOGIC_LIVE_H
#define LOGIC_LIVE_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "logic.h"

struct logic_live {
    uint64_t gen; /* 1, 2, ...: the order of publication */
    struct token_keys keys;
    char *key_id, *key, *prev_key_id, *prev_key; /* what keys points at */
    struct logic_ops_token ops[LOGIC_MAX_OPS_TOKENS];
    int nops;
    char *cors_origins[LOGIC_MAX_CORS_ORIGINS];
    struct http_cors cors;
    bool cors_on;
    struct logic_live *older; /* retired snapshots, newest first (main thread) */
};

/*
 * Builds a snapshot from a validated configuration: parses ops_tokens and
 * cors_allow_origins, copies the token keys. NULL and err on a bad value.
 * The caller owns the result (logic_live_free).
 */
struct logic_live *logic_live_build(const struct logic_config *c, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Frees one snapshot (not the ones it retired). */
void logic_live_free(struct logic_live *lv);

/* Before the workers start: the first snapshot (takes ownership). */
void logic_live_set_first(struct logic *app, struct logic_live *lv);

/*
 * Main thread, after a reload: publishes lv (takes ownership) and wakes
 * every worker to adopt it; the previous snapshot is retired.
 */
void logic_live_publish(struct logic *app, struct logic_worker *workers, int n,
                        struct logic_live *lv);

/* Main thread: frees the retired snapshots that no worker uses any more. */
void logic_live_collect(struct logic *app, struct logic_worker *workers, int n);

/* Main thread, after the workers stopped: frees every snapshot and name. */
void logic_live_free_all(struct logic *app);

/* Worker's loop (the worker's reload event): adopts the published snapshot. */
void logic_live_adopt(struct logic_worker *w);

#endif
