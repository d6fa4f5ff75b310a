/*
 * logic: the process context of logicd and its per-thread workers.
 *
 * struct logic is built once in main() and is read-only after the workers
 * start (counters inside are atomic metrics). Each struct logic_worker owns
 * one event_base with its two HTTP servers (SDK and internal listeners, each
 * its own SO_REUSEPORT socket), its PostgreSQL pool and its Redis client:
 * nothing of a worker is touched by another thread.
 */
#ifndef LOGIC_H
#define LOGIC_H

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>

#include "config.h"
#include "health.h"
#include "http.h"
#include "redis.h"
#include "shard.h"
#include "token.h"
#include "xff.h"

struct event_base;
struct event;
struct http_server;
struct metrics;
struct pg_pool;
struct redis;
struct hint_dirty;
struct send_batcher;
struct fanout;
struct pubcache;
struct pub_snapshot;
struct token_cache;
struct metric;
struct retention;
struct reach_sampler;
struct logic_probe;

struct logic_config {
    char *sdk_listen;
    char *internal_listen;
    int64_t threads;
    char *log_level;
    char *log_format;
    char *log_file;
    char *pg_conninfo;
    char *pg_shards;
    int64_t pg_pool_size;
    int64_t pg_query_timeout_ms;
    char *redis_host;
    int64_t redis_port;
    int64_t redis_timeout_ms;
    char *redis_nodes;
    char *redis_user;
    char *redis_password;
    char *server_key;
    char *ops_tokens;
    char *token_key_id;
    char *token_key;
    char *token_prev_key_id;
    char *token_prev_key;
    int64_t sdk_max_body;
    int64_t internal_max_body;
    int64_t max_header_bytes;
    int64_t http_timeout_s;
    int64_t http_head_timeout_s;
    int64_t http_min_body_rate;
    int64_t sdk_max_connections;
    int64_t internal_max_connections;
    bool sdk_health;
    char *cors_allow_origins;
    char *trusted_proxies;
    int64_t max_recipients;
    int64_t max_content_bytes;
    char *pg_plan_cache_mode;
    int64_t send_batch_max;
    int64_t send_batch_wait_us;
    int64_t send_batch_inflight;
    int64_t default_expire_s;
    int64_t retention_s;
    int64_t epoch;
    int64_t sync_default_limit;
    int64_t sync_max_limit;
    int64_t hint_ttl_s;
    int64_t poll_interval_ms;
    char *whitelist_file;
    char *migrations_dir;
    int64_t retention_interval_s;
    int64_t retention_batch;
    int64_t fanout_max_uids;
    char *console_dir;
    int64_t reach_sample_interval_s;
};

extern const struct cfg_schema logic_config_schema;

/* Checks what the table cannot (required keys, formats); one line in err. */
bool logic_config_validate(const struct logic_config *c, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Most worker threads (the threads key's upper bound). */
#define LOGIC_MAX_WORKERS 64

#define LOGIC_MAX_OPS_TOKENS 16

/* What an ops token may do (ops_tokens "name:token[:role]"): an editor
 * writes notices and the whitelist; a publisher also changes what users
 * see (publish, stop, retract, delete). */
enum logic_role {
    LOGIC_ROLE_EDITOR = 1,
    LOGIC_ROLE_PUBLISHER = 2,
};

/* Longest operator name + 1. */
#define LOGIC_MAX_OPS_NAME 64

struct logic_ops_token {
    const char *name; /* interned: valid until exit, across reloads (live.h) */
    char token[128];
    enum logic_role role;
};

/* Most origins in cors_allow_origins. */
#define LOGIC_MAX_CORS_ORIGINS 32

struct logic_live;

struct logic {
    struct logic_config cfg;
    struct metrics *metrics;
    /* token keys, ops tokens and CORS origins: what a SIGHUP may change
     * (live.h). live is the main thread's (newest, with the retired ones
     * behind it); live_pub is what workers adopt, each into its own
     * logic_worker.live */
    struct logic_live *live;
    _Atomic(struct logic_live *) live_pub;
    char sdk_host[256], internal_host[256];
    int sdk_port, internal_port;
    /* connection caps of the two listeners, shared by every worker's server */
    struct http_gate sdk_gate, internal_gate;
    struct xff_trust trusted_proxies; /* both listeners (lib/xff.h) */
    int64_t started_us;
    struct fanout *fanout;     /* the write-diffusion thread (fanout.h) */
    struct pubcache *pubcache; /* the public-mailbox poller (pubcache.h) */
    char console_dir[1024];    /* console_dir as resolved at start (console.c) */
    int nworkers;
    /* workers whose PostgreSQL pool has a ready connection: /healthz is
     * 200 only when every worker can serve, so a load balancer never sends
     * a request to a worker that would answer 503 (api_health.c) */
    atomic_int pg_workers_up;
    /* pg_shards (docs/design.md 3.6): nshards databases hold the private
     * mailboxes, map says which; with pg_shards empty nshards is 1 and
     * shard 0 is pg_conninfo (map unused). shard_conninfo[0] may equal
     * pg_conninfo: the workers then use their public pool for it. */
    int nshards;
    char *shard_conninfo[LOGIC_MAX_SHARDS];
    struct shard_map map;
    /* shard pools of their own (not a worker's public pool) that have
     * connected at least once, against how many there are: /healthz waits
     * for all of them at start, but a shard down later does not make every
     * logicd unhealthy (its users get 503, the others are served) */
    atomic_int shard_pools_ready;
    int shard_pools;
    /* each worker loop's heartbeat, by worker id: /livez (probe.h) */
    struct health_beat beats[LOGIC_MAX_WORKERS];
};

struct logic_worker {
    struct logic *app;
    int id;
    pthread_t thread;
    struct event_base *base;
    struct http_server *sdk;
    struct http_server *internal;
    struct pg_pool *pg; /* the public database (pg_conninfo) */
    /* private mailboxes, per shard (app->nshards); an entry may be pg itself */
    struct pg_pool *shard_pg[LOGIC_MAX_SHARDS];
    /* the group commit queue of each shard (send_batch.h) */
    struct send_batcher *batchers[LOGIC_MAX_SHARDS];
    struct logic_shard_up {
        struct logic *app;
        bool seen;
    } shard_up[LOGIC_MAX_SHARDS];
    struct redis *redis;
    struct hint_dirty *dirty;    /* hint invalidations to replay (hint.h) */
    struct retention *retention; /* worker 0 only */
    struct reach_sampler *reach; /* worker 0 only (reach.h) */
    struct logic_probe *probe;   /* worker 0 only: dependency checks (probe.h) */
    struct pub_snapshot *snap;   /* public cache as this worker sees it (pubcache.h) */
    struct token_cache *tokens;  /* verified user tokens (api_io.c) */
    struct pull_op *pull_spares; /* freed pull states kept for reuse (api_sync.c) */
    int npull_spares;
    /* hot-path counters, looked up once (a lookup takes the registry mutex) */
    struct metric *m_sync_hint, *m_sync_db;
    struct metric *m_reach_counted, *m_reach_dropped; /* mbox_notice_deliveries_total */
    struct event *stop_ev;
    /* the configuration snapshot this worker serves with (live.h), and its
     * generation for the main thread; reload_ev adopts a newer one */
    const struct logic_live *live;
    atomic_uint_fast64_t live_gen;
    struct event *reload_ev;
    bool started;
};

/* The Redis client settings of a configuration (workers and fanout lanes alike). */
struct redis_config logic_redis_config(const struct logic_config *c);

/* Creates the worker's loop, listeners and clients. err gets one line. */
bool logic_worker_init(struct logic_worker *w, struct logic *app, int id, char *err, size_t errlen)
    __attribute__((warn_unused_result));

/* Runs the worker's loop on a new thread. */
bool logic_worker_start(struct logic_worker *w) __attribute__((warn_unused_result));

/* Asks the worker to stop accepting and leave its loop (thread-safe). */
void logic_worker_stop(struct logic_worker *w);

/* Joins the thread (if started) and frees everything the worker owns. */
void logic_worker_free(struct logic_worker *w);

/* Current time in unix microseconds. */
int64_t logic_now_us(void);

/* The shard holding mailbox (app_id, uid): 0 .. app->nshards-1. */
int logic_shard(const struct logic *app, uint64_t app_id, uint64_t uid);

/* The worker's pool of the database holding mailbox (app_id, uid). */
struct pg_pool *logic_shard_pool(struct logic_worker *w, uint64_t app_id, uint64_t uid);

#endif
