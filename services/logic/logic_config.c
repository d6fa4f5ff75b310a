/*
 * logic_config: logicd's configuration keys. --help, --help-markdown and
 * docs/config.md are generated from this table.
 */
#include "logic.h"

#include <stddef.h>
#include <stdio.h>
#include <string.h>

#include "log.h"
#include "xff.h"

#define K(name, type, def, min, max, help)                                                         \
    {                                                                                              \
#name, type, offsetof(struct logic_config, name), def, help, min, max, false               \
    }
/* A key a SIGHUP applies without a restart (live.h, lib/log.h). */
#define KR(name, type, def, min, max, help)                                                        \
    {                                                                                              \
#name, type, offsetof(struct logic_config, name), def, help, min, max, true                \
    }

static const struct cfg_key logic_keys[] = {
    K(sdk_listen, CFG_STR, "127.0.0.1:8080", 0, 0, "SDK listener (public, user tokens)"),
    K(internal_listen, CFG_STR, "127.0.0.1:8081", 0, 0,
      "internal listener (business servers and operators; never expose to users)"),
    K(threads, CFG_INT, "2", 1, 64, "worker threads, each with its own loop, listeners and pools"),
    KR(log_level, CFG_STR, "info", 0, 0, "debug, info, warn or error"),
    KR(log_format, CFG_STR, "kv", 0, 0,
       "kv (key=value text) or json (one JSON object per line, every value a string)"),
    KR(log_file, CFG_STR, NULL, 0, 0,
       "append log lines to this file, reopened on SIGHUP (logrotate); empty: stderr"),
    K(pg_conninfo, CFG_SECRET, "host=127.0.0.1 port=5432 dbname=mbox user=mbox", 0, 0,
      "libpq connection string of the system of record (with pg_shards: the public database)"),
    K(pg_shards, CFG_SECRET, NULL, 0, 0,
      "databases of the private mailboxes as whitespace-separated postgresql:// URIs, in the order "
      "the bucket map was made for (--migrate); empty: pg_conninfo holds everything"),
    K(pg_pool_size, CFG_INT, "4", 1, 64,
      "PostgreSQL connections per worker thread (and per shard of pg_shards)"),
    K(pg_plan_cache_mode, CFG_STR, "force_generic_plan", 0, 0,
      "PostgreSQL's plan_cache_mode on logicd's connections: force_generic_plan plans each "
      "prepared statement once per connection (with the default, auto, PostgreSQL re-plans the "
      "private statements on every call across the hash partitions; docs/design.md 3.8), auto, "
      "or force_custom_plan"),
    K(pg_query_timeout_ms, CFG_INT, "5000", 10, 600000,
      "a query not answered by then fails the request with 503"),
    K(redis_host, CFG_STR, "127.0.0.1", 0, 0, "Redis host (routes, pub/sub, hints, counters)"),
    K(redis_port, CFG_INT, "6379", 1, 65535, "Redis port"),
    K(redis_timeout_ms, CFG_INT, "200", 1, 60000, "Redis command timeout"),
    K(redis_nodes, CFG_STR, NULL, 0, 0,
      "Redis Cluster seed nodes host:port[,...]; set: cluster mode (redis_host/port unused)"),
    K(redis_user, CFG_STR, NULL, 0, 0, "Redis ACL user (AUTH user password); empty: AUTH password"),
    K(redis_password, CFG_SECRET, NULL, 0, 0, "Redis password, sent first on every connection"),
    K(server_key, CFG_SECRET, NULL, 0, 0,
      "shared secret of business servers on the internal listener (required)"),
    KR(ops_tokens, CFG_SECRET, NULL, 0, 0,
       "operator tokens as name:token[:role][,...]; role editor or publisher (default); the name "
       "is written to the audit log"),
    KR(token_key_id, CFG_STR, "k1", 0, 0, "id of the key that signs new user tokens"),
    KR(token_key, CFG_SECRET, NULL, 0, 0, "HMAC-SHA256 key of new user tokens (required)"),
    KR(token_prev_key_id, CFG_STR, NULL, 0, 0, "id of the previous key, still accepted (rotation)"),
    KR(token_prev_key, CFG_SECRET, NULL, 0, 0, "previous key, still accepted (rotation)"),
    K(sdk_max_body, CFG_INT, "262144", 1024, 16777216, "largest SDK request body in bytes (413)"),
    K(internal_max_body, CFG_INT, "67108864", 1024, 1073741824,
      "largest internal request body in bytes (fanout uid lists are large)"),
    K(max_header_bytes, CFG_INT, "16384", 1024, 1048576,
      "largest request head, request line and header fields (larger: 431)"),
    K(http_timeout_s, CFG_INT, "30", 1, 3600,
      "HTTP idle timeout between requests, and per read/write progress of a reply"),
    K(http_head_timeout_s, CFG_INT, "10", 1, 3600,
      "a request head must be complete this long after its first byte (408), however it trickles"),
    K(http_min_body_rate, CFG_INT, "1024", 0, 1073741824,
      "bytes/s a request body must keep up after http_head_timeout_s of grace (408); 0: off"),
    K(sdk_max_connections, CFG_INT, "0", 0, 10000000,
      "most open connections of the SDK listener (503 beyond); 0: derived from RLIMIT_NOFILE "
      "(api.md 1.6)"),
    K(internal_max_connections, CFG_INT, "0", 0, 10000000,
      "most open connections of the internal listener; 0: derived from RLIMIT_NOFILE (api.md 1.6)"),
    K(sdk_health, CFG_BOOL, "false", 0, 0,
      "also serve /healthz, /livez, /readyz and /metrics on the SDK listener (default: internal "
      "listener only)"),
    KR(cors_allow_origins, CFG_STR, NULL, 0, 0,
       "browser origins allowed on the SDK listener (CORS): scheme://host[:port],... or *; "
       "empty: none"),
    K(trusted_proxies, CFG_STR, NULL, 0, 0,
      "reverse proxies whose X-Forwarded-For is believed, as addresses or CIDR networks "
      "(127.0.0.1/32 ::1/128); the client= of a request is then the right-most untrusted "
      "address of that header; empty: the TCP peer always"),
    K(max_recipients, CFG_INT, "1000", 1, 100000, "most recipients of one POST /v1/messages"),
    K(max_content_bytes, CFG_INT, "65536", 1, 16777216, "largest message or notice content"),
    K(send_batch_max, CFG_INT, "128", 1, 1024,
      "group commit: most sends written by one statement and one commit (per worker and shard)"),
    K(send_batch_wait_us, CFG_INT, "3000", 0, 100000,
      "group commit: longest a send waits in its queue (behind a statement in flight, or for "
      "the senders of the last batch to come back) before its statement goes out anyway; about "
      "one durable commit; 0: no bound, it waits until a statement completes"),
    K(send_batch_inflight, CFG_INT, "1", 1, 64,
      "group commit: send statements in flight per worker and shard before sends queue up to "
      "share the next one (1: the most sends per commit)"),
    K(default_expire_s, CFG_INT, "1209600", 60, 315360000,
      "message lifetime when the send gives no expire_s (14 days)"),
    K(retention_s, CFG_INT, "1209600", 60, 315360000,
      "cursors older than this get reset:true (rows may be gone)"),
    K(epoch, CFG_INT, "1", 1, 4294967295LL,
      "data epoch in cursors; bump it after restoring or wiping data to reset every client"),
    K(sync_default_limit, CFG_INT, "100", 1, 10000, "items per sync when the request gives none"),
    K(sync_max_limit, CFG_INT, "500", 1, 10000, "cap of a sync or history limit"),
    K(hint_ttl_s, CFG_INT, "3600", 1, 86400, "lifetime of a mailbox's last-msg_id hint in Redis"),
    K(poll_interval_ms, CFG_INT, "1000", 50, 600000, "public mailbox poller period"),
    K(whitelist_file, CFG_STR, NULL, 0, 0,
      "gray-release whitelist loaded at start: lines of 'app_id uid'"),
    K(migrations_dir, CFG_STR, NULL, 0, 0,
      "directory of numbered SQL files (--migrate); empty: the copy meson install put beside "
      "the binary (../share/mbox/migrations), else migrations/ of the working directory"),
    K(retention_interval_s, CFG_INT, "60", 1, 86400, "period of the expired-row deletion job"),
    K(fanout_max_uids, CFG_INT, "5000000", 1, 100000000, "most uids in one POST /v1/fanout"),
    K(retention_batch, CFG_INT, "5000", 1, 1000000, "rows deleted per statement by that job"),
    K(console_dir, CFG_STR, NULL, 0, 0,
      "static files of the operations console (/console/ on the internal listener); empty: "
      "console/www of the working directory if present, else the installed copy"),
    K(reach_sample_interval_s, CFG_INT, "60", 1, 86400,
      "period of the reach sampler (one logicd at a time) that records each live notice's reach"),
};

const struct cfg_schema logic_config_schema = {
    "logicd",
    "LOGICD_",
    logic_keys,
    sizeof(logic_keys) / sizeof(logic_keys[0]),
    "  --migrate          apply the migrations (migrations_dir) to every database, then serve\n"
    "  --migrate-only     apply the migrations and exit\n"
    "  --move-bucket B --to S\n"
    "                     move bucket B (0..4095) to shard S of pg_shards while\n"
    "                     the service runs, then exit; re-run to finish a failed move\n"
    "  --print-sql NAME   print the text of logicd's statement NAME (services/logic/sql.h:\n"
    "                     send, send_batch, sync, ...) and exit (ops/bench/private runs\n"
    "                     them under pgbench)\n"
    "\n"
    "signals:\n"
    "  SIGHUP             reopen log_file (logrotate) and reload the keys marked\n"
    "                     \"SIGHUP reloads it\"; other changed keys are logged as\n"
    "                     needing a restart; a bad file keeps the running config\n"
    "  SIGTERM, SIGINT    stop accepting, drain replies in flight, exit\n"
    "Under systemd (Type=notify) it sends READY=1, RELOADING=1, STOPPING=1 and,\n"
    "with WatchdogSec=, WATCHDOG=1 while every worker loop turns.\n",
};

bool
logic_config_validate(const struct logic_config *c, char *err, size_t errlen)
{
    enum log_level lvl;
    char host[256];
    int port;

    if (!log_parse_level(c->log_level, &lvl)) {
        snprintf(err, errlen, "key 'log_level': '%s' is not debug, info, warn or error",
                 c->log_level);
        return false;
    }
    enum log_format fmt;
    if (!log_parse_format(c->log_format, &fmt)) {
        snprintf(err, errlen, "key 'log_format': '%s' is not kv or json", c->log_format);
        return false;
    }
    if (!cfg_parse_hostport(c->sdk_listen, host, sizeof(host), &port)) {
        snprintf(err, errlen, "key 'sdk_listen': '%s' is not host:port", c->sdk_listen);
        return false;
    }
    if (!cfg_parse_hostport(c->internal_listen, host, sizeof(host), &port)) {
        snprintf(err, errlen, "key 'internal_listen': '%s' is not host:port", c->internal_listen);
        return false;
    }
    if (c->server_key[0] == '\0') {
        snprintf(err, errlen, "key 'server_key' must be set");
        return false;
    }
    if (c->token_key[0] == '\0') {
        snprintf(err, errlen, "key 'token_key' must be set");
        return false;
    }
    if ((c->token_prev_key[0] == '\0') != (c->token_prev_key_id[0] == '\0')) {
        snprintf(err, errlen, "keys 'token_prev_key' and 'token_prev_key_id' go together");
        return false;
    }
    if (c->default_expire_s > c->retention_s) {
        snprintf(err, errlen, "key 'default_expire_s': longer than retention_s");
        return false;
    }
    if (strcmp(c->pg_plan_cache_mode, "auto") != 0 &&
        strcmp(c->pg_plan_cache_mode, "force_generic_plan") != 0 &&
        strcmp(c->pg_plan_cache_mode, "force_custom_plan") != 0) {
        snprintf(err, errlen,
                 "key 'pg_plan_cache_mode': auto, force_generic_plan or force_custom_plan");
        return false;
    }
    if (c->sync_default_limit > c->sync_max_limit) {
        snprintf(err, errlen, "key 'sync_default_limit': larger than sync_max_limit");
        return false;
    }
    struct xff_trust trust;
    char why[160];
    if (!xff_trust_parse(c->trusted_proxies, &trust, why, sizeof(why))) {
        snprintf(err, errlen, "key 'trusted_proxies': %s", why);
        return false;
    }
    return true;
}
