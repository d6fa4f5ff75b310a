# shellcheck shell=bash
# `ops/run cluster`: the whole service as it is deployed on many machines,
# on 127.0.0.1 under var/cluster/ (sourced by ops/run after ops/lib/common.sh):
#
#   * a Redis Cluster of 3 masters and 3 replicas (cluster-node-timeout
#     2000 ms) with an ACL user the daemons log in as (ops/servers
#     redis-cluster-start);
#   * two PostgreSQL databases: pg0 holds the public database and is shard
#     0, pg1 is shard 1 (logicd pg_conninfo = pg0, pg_shards = pg0 pg1).
#     Each is a pair managed by Patroni (members pg0a/pg0b, pg1a/pg1b): a
#     primary and a synchronous streaming standby, with one etcd member as
#     Patroni's store; logicd reaches each pair through a libpq multi-host
#     URI with target_session_attrs=read-write (whichever member leads);
#   * logicd --migrate-only (every shard), then two logicd and two lcsd
#     (node_id lcs-1, lcs-2), each with its own config file;
#   * haproxy in front on the usual ports: SDK and internal over both
#     logicd, WebSocket over both lcsd, plus a stats page;
#   * the demo inbox page, as ops/run.
#
# etcd, every Patroni, logicd, lcsd and haproxy run under a supervisor
# (mbox_supervise, ops/lib/common.sh) that restarts them when they die;
# Patroni restarts its PostgreSQL. The Redis nodes are not supervised.
#
#   ops/run cluster          start (or show the running cluster)
#   ops/run cluster stop     stop everything it started (by pid)
#   ops/run cluster status   each process (pid, alive/dead, restarts), Redis
#                            slots, which member leads each PostgreSQL pair,
#                            shards and buckets, haproxy backends; exit
#                            status 0 when everything runs, 3 otherwise
#
# Environment (defaults in parentheses):
#   MBOX_CLUSTER_DIR         where it all lives (var/cluster)
#   MBOX_STACK_ENV           the listeners file (var/stack.env; with
#                            MBOX_CLUSTER_DIR set: MBOX_CLUSTER_DIR/stack.env)
#   MBOX_BUILD               build directory whose binaries run (build)
#   MBOX_SDK_PORT, MBOX_INTERNAL_PORT, MBOX_WS_PORT
#                            haproxy's fronts (8080, 8081, 8090)
#   MBOX_HAPROXY_STATS_PORT  haproxy stats page and /healthz (8404)
#   MBOX_DEMO_PORT           demo inbox page (8088)
#   MBOX_CLUSTER_NODE_PORT   N (18000): logicd-i listens on N+100i+80 (SDK)
#                            and N+100i+81 (internal), lcsd-i on N+100i+90
#                            (WebSocket) and N+100i+91 (admin)
#   MBOX_CLUSTER_REDIS_PORT  first of the six Redis Cluster ports (7000; at
#                            most 55530: each node's cluster bus listens on
#                            its port + 10000)
#   MBOX_CLUSTER_PG_PORT     P (54330): PostgreSQL pg0a on P, pg0b P+1,
#                            pg1a P+2, pg1b P+3
#   MBOX_CLUSTER_PATRONI_PORT
#                            Patroni REST API of pg0a, pg0b, pg1a, pg1b on
#                            this port and the next three (P+10)
#   MBOX_CLUSTER_ETCD_PORT   etcd client port; peer port the next one (P+20)
#   MBOX_CLUSTER_PG_OPTS     extra postgresql.conf settings name=value,
#                            space-separated (not full_page_writes=off:
#                            pg_rewind needs it on)
#   MBOX_CLUSTER_DEMO        0: no demo page (and no MBOX_DEMO_URL) (1)
#   MBOX_CLUSTER_QUIET       1: start without the walk-through (0)
#   MBOX_CLUSTER_BUILD       0: neither install nor build, run MBOX_BUILD's
#                            binaries as they are (1)

CL_DIR=${MBOX_CLUSTER_DIR:-$MBOX_ROOT/var/cluster}
if [ -n "${MBOX_CLUSTER_DIR:-}" ]; then
  CL_STACK_ENV=${MBOX_STACK_ENV:-$CL_DIR/stack.env}
else
  CL_STACK_ENV=${MBOX_STACK_ENV:-$MBOX_ROOT/var/stack.env}
fi
CL_BUILD=${MBOX_BUILD:-build}
CL_SDK_PORT=${MBOX_SDK_PORT:-8080}
CL_INTERNAL_PORT=${MBOX_INTERNAL_PORT:-8081}
CL_WS_PORT=${MBOX_WS_PORT:-8090}
CL_STATS_PORT=${MBOX_HAPROXY_STATS_PORT:-8404}
CL_DEMO_PORT=${MBOX_DEMO_PORT:-8088}
CL_NODE_PORT=${MBOX_CLUSTER_NODE_PORT:-18000}
CL_REDIS_PORT=${MBOX_CLUSTER_REDIS_PORT:-7000}
CL_PG_PORT=${MBOX_CLUSTER_PG_PORT:-54330}
CL_PATRONI_PORT=${MBOX_CLUSTER_PATRONI_PORT:-$((CL_PG_PORT + 10))}
CL_ETCD_PORT=${MBOX_CLUSTER_ETCD_PORT:-$((CL_PG_PORT + 20))}
CL_DEMO=${MBOX_CLUSTER_DEMO:-1}
CL_NODES=(1 2)  # logicd-i and lcsd-i
CL_SHARDS=(0 1) # pg0 (public database and shard 0), pg1
CL_MEMBERS=(a b) # the two members of each pair: pg0a, pg0b, ...
CL_REDIS_USER=mbox
CL_LOGICD=$MBOX_ROOT/$CL_BUILD/services/logic/logicd
CL_LCSD=$MBOX_ROOT/$CL_BUILD/services/lcs/lcsd
CL_MBOX=$MBOX_ROOT/$CL_BUILD/services/client/mbox

cl_sdk_port() { echo $((CL_NODE_PORT + 100 * $1 + 80)); }
cl_internal_port() { echo $((CL_NODE_PORT + 100 * $1 + 81)); }
cl_ws_port() { echo $((CL_NODE_PORT + 100 * $1 + 90)); }
cl_admin_port() { echo $((CL_NODE_PORT + 100 * $1 + 91)); }
cl_redis_ports() { local i; for i in 0 1 2 3 4 5; do echo $((CL_REDIS_PORT + i)); done; }
# A standalone Redis for daemons that cannot speak to a Redis Cluster yet.
cl_solo_redis_port() { echo $((CL_REDIS_PORT + 6)); }
# Member M (a or b) of shard S: its index, ports, directory.
cl_member_idx() { [ "$1" = a ] && echo 0 || echo 1; }
cl_pg_port() { echo $((CL_PG_PORT + 2 * $1 + $(cl_member_idx "$2"))); }
cl_patroni_port() { echo $((CL_PATRONI_PORT + 2 * $1 + $(cl_member_idx "$2"))); }
cl_member_dir() { echo "$CL_DIR/pg$1$2"; } # its data lives in DIR/pg (pg_datadir)
# The libpq multi-host URI of shard S: both members, the primary chosen by
# target_session_attrs=read-write; connect_timeout bounds each member's try.
cl_pg_hosts() {
  local m h=""
  for m in "${CL_MEMBERS[@]}"; do h+="${h:+,}127.0.0.1:$(cl_pg_port "$1" "$m")"; done
  echo "$h"
}
cl_pg_uri() {
  echo "postgresql://mbox:$PG_PASSWORD@$(cl_pg_hosts "$1")/mbox?target_session_attrs=read-write&connect_timeout=2"
}
# The same without the password (psql takes PGPASSWORD), for database DB (mbox).
cl_pg_uri_nopw() {
  echo "postgresql://mbox@$(cl_pg_hosts "$1")/${2:-mbox}?target_session_attrs=read-write&connect_timeout=2"
}

# Liveness (ops/lib/common.sh): pid runs, is no zombie, is COMM.
cl_pid_state() { mbox_pid_state "$@"; }
cl_alive() { mbox_alive "$@"; }

cl_pidof() { [ -f "$1" ] && head -1 "$1"; }

# The processes started here, one "name pidfile comm" per line.
cl_procs() {
  local i m port
  echo "etcd $CL_DIR/run/etcd.pid etcd"
  for i in "${CL_SHARDS[@]}"; do
    for m in "${CL_MEMBERS[@]}"; do
      echo "patroni-pg$i$m $CL_DIR/run/patroni-pg$i$m.pid patroni"
      echo "postgres-pg$i$m $(cl_member_dir "$i" "$m")/pg/data/postmaster.pid postgres"
    done
  done
  while read -r port; do
    echo "redis-$port $CL_DIR/rcluster/$port/redis.pid redis-server"
  done < <(cl_redis_ports)
  [ -f "$CL_DIR/redis/redis.pid" ] && echo "redis-solo $CL_DIR/redis/redis.pid redis-server"
  for i in "${CL_NODES[@]}"; do
    echo "logicd-$i $CL_DIR/run/logicd-$i.pid logicd"
  done
  for i in "${CL_NODES[@]}"; do
    echo "lcsd-$i $CL_DIR/run/lcsd-$i.pid lcsd"
  done
  echo "haproxy $CL_DIR/run/haproxy.pid haproxy"
  [ "$CL_DEMO" = 0 ] || echo "demo $CL_DIR/run/demo.pid node"
}

# Does the built daemon know config key KEY? (Older builds refuse unknown keys.)
# (The help goes into a variable first: `grep -q` on a pipe may close it
# early, the daemon dies of SIGPIPE and pipefail turns a match into a miss.)
cl_has_key() {
  local help
  help=$("$1" --help 2>/dev/null) || return 1
  grep -qE "^  $2 " <<<"$help"
}

cl_redis_cluster_ok() {
  cl_has_key "$CL_LOGICD" redis_nodes && cl_has_key "$CL_LCSD" redis_nodes
}
cl_pg_shards_ok() { cl_has_key "$CL_LOGICD" pg_shards; }

cl_redis_cli() {
  REDISCLI_AUTH=$REDIS_PASSWORD redis-cli --user "$CL_REDIS_USER" "$@"
}

# cl_psql SHARD psql-args...: on the shard's primary (whichever member leads).
cl_psql() {
  local shard=$1; shift
  PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" "$(cl_pg_uri_nopw "$shard")" -qtAX -v ON_ERROR_STOP=1 "$@"
}

# ---- Patroni and etcd ----

cl_etcd_url() { echo "http://127.0.0.1:$CL_ETCD_PORT"; }

cl_start_etcd() {
  local peer="http://127.0.0.1:$((CL_ETCD_PORT + 1))"
  mkdir -p "$CL_DIR/etcd"
  chmod 700 "$CL_DIR/etcd"
  mbox_supervise_start etcd "$CL_DIR/run" "$CL_DIR/log/etcd.log" etcd --name mbox \
    --data-dir "$CL_DIR/etcd/data" --listen-client-urls "$(cl_etcd_url)" \
    --advertise-client-urls "$(cl_etcd_url)" --listen-peer-urls "$peer" \
    --initial-advertise-peer-urls "$peer" --initial-cluster "mbox=$peer" \
    --initial-cluster-state new --initial-cluster-token "mbox-$CL_ETCD_PORT" \
    --enable-v2=true --logger zap --log-level warn || return 1
  local _ h
  for _ in $(seq 1 100); do
    h=$(curl -fsS --max-time 1 "$(cl_etcd_url)/health" 2>/dev/null) || h=
    [[ $h == *'"health":"true"'* ]] && return 0
    sleep 0.1
  done
  return 1
}

# Writes member M of shard S's Patroni configuration (its directory is the
# postgres user's when we are root). Timing: a crashed primary is failed
# over at once (primary_start_timeout 0: the synchronous standby has every
# acknowledged commit); a primary whose Patroni stops answering loses the
# leader key after ttl 10 s; loop_wait 2 s between HA cycles; retry_timeout
# 3 s for etcd and PostgreSQL operations (Patroni wants ttl >= loop_wait +
# 2 * retry_timeout). failsafe_mode: while etcd cannot be reached, a
# primary that still reaches every other member's REST API stays primary
# (one etcd member here: its restart must not demote the primaries).
# synchronous_mode: a commit is acknowledged once the
# standby has it; not strict: with a single standby, strict mode would
# block every write while that standby is down (a restart, a re-clone),
# so Patroni drops it from synchronous_standby_names instead and will not
# promote it until it has caught up again.
# The store is etcd's v2 API (section etcd:, etcd runs with --enable-v2),
# not etcd3: Patroni 3.0.2's etcd3 update of the leader key is a plain put
# with a fresh lease once its old lease has expired (Etcd3._update_leader
# in patroni/dcs/etcd3.py), so a primary whose HA loop stalled past ttl
# (its PostgreSQL stopped, not dead) overwrote the key the standby had
# taken meanwhile and demoted the new primary, losing the commits made
# there. The v2 update is a compare-and-swap on the key's value (prevValue
# = its own name): a primary that lost the key demotes itself.
cl_write_patroni() {
  local s=$1 m=$2 root opt k v params=""
  root=$(pg_datadir "$(cl_member_dir "$s" "$m")")
  mkdir -p "$root"
  local opts=()
  read -r -a opts <<<"${MBOX_CLUSTER_PG_OPTS:-}"
  for opt in "${opts[@]}"; do
    k=${opt%%=*} v=${opt#*=}
    if [ "$k" = full_page_writes ]; then
      say "MBOX_CLUSTER_PG_OPTS: ignoring $opt (pg_rewind needs full_page_writes on)"
      continue
    fi
    params+="    $k: '$v'"$'\n'
  done
  (
    umask 077
    cat >"$root/patroni.yml" <<YML
# written by ops/run cluster: member pg$s$m of shard $s
scope: mbox-pg$s
namespace: /mbox/
name: pg$s$m
log:
  level: INFO
  format: '%(asctime)s %(levelname)s: %(message)s'
restapi:
  listen: 127.0.0.1:$(cl_patroni_port "$s" "$m")
  connect_address: 127.0.0.1:$(cl_patroni_port "$s" "$m")
etcd:
  hosts: 127.0.0.1:$CL_ETCD_PORT
bootstrap:
  dcs:
    ttl: 10
    loop_wait: 2
    retry_timeout: 3
    primary_start_timeout: 0
    failsafe_mode: true
    synchronous_mode: true
    synchronous_mode_strict: false
    maximum_lag_on_failover: 16777216
    postgresql:
      use_pg_rewind: true
      use_slots: true
      parameters:
        max_connections: 200
        wal_log_hints: 'on'
        wal_keep_size: 256MB
        max_wal_senders: 10
        max_replication_slots: 10
  initdb:
    - encoding: UTF8
    - no-locale
    - auth-host: scram-sha-256
    - auth-local: scram-sha-256
postgresql:
  listen: 127.0.0.1:$(cl_pg_port "$s" "$m")
  connect_address: 127.0.0.1:$(cl_pg_port "$s" "$m")
  data_dir: $root/data
  bin_dir: $PG_BIN
  pgpass: $root/pgpass
  remove_data_directory_on_rewind_failure: true
  remove_data_directory_on_diverged_timelines: true
  basebackup:
    - checkpoint: fast
  authentication:
    superuser:
      username: mbox
      password: '$PG_PASSWORD'
    replication:
      username: replicator
      password: '$PG_REPL_PASSWORD'
  parameters:
    unix_socket_directories: '$root'
    shared_buffers: 128MB
$params  pg_hba:
    - local all all scram-sha-256
    - host all all 127.0.0.1/32 scram-sha-256
    - host replication replicator 127.0.0.1/32 scram-sha-256
watchdog:
  mode: 'off'
YML
  )
  [ "$(id -u)" -ne 0 ] || chown postgres: "$root" "$root/patroni.yml"
  echo "$root/patroni.yml"
}

cl_start_patroni() {
  local s=$1 m=$2 cfg
  cfg=$(cl_write_patroni "$s" "$m") || return 1
  mbox_supervise_start "patroni-pg$s$m" "$CL_DIR/run" "$CL_DIR/log/patroni-pg$s$m.log" \
    as_pg_exec patroni "$cfg"
}

# The members of shard S as Patroni sees them (GET /cluster of the first
# member that answers): one "name role state host:port timeline lag" line
# each; fails when no member answers.
cl_pg_members() {
  local m out
  for m in "${CL_MEMBERS[@]}"; do
    out=$(curl -fsS --max-time 2 "http://127.0.0.1:$(cl_patroni_port "$1" "$m")/cluster" 2>/dev/null) || continue
    jq -r '.members[] | "\(.name) \(.role) \(.state) \(.host):\(.port) \(.timeline // "-") \(.lag // 0)"' \
      <<<"$out" && return 0
  done
  return 1
}

# The leading member of shard S ("pg0a" ...), or fails.
cl_pg_leader() {
  local l
  l=$(cl_pg_members "$1" | awk '$2 == "leader" && $3 == "running" { print $1 }') || return 1
  [ -n "$l" ] && echo "$l"
}

# Waits (up to $2 s, default 120) until shard S has a running leader that
# takes writes and a running synchronous standby.
cl_wait_pg_pair() {
  local s=$1 t=${2:-120} _ mem
  for _ in $(seq 1 $((t * 5))); do
    mem=$(cl_pg_members "$s" 2>/dev/null) || mem=
    if awk '$2 == "leader" && $3 == "running" { l = 1 } $2 == "sync_standby" && $3 ~ /^(running|streaming)$/ { r = 1 }
        END { exit !(l && r) }' <<<"$mem" &&
      PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" "$(cl_pg_uri_nopw "$s" postgres)" -qtAXc "SELECT 1" >/dev/null 2>&1; then
      return 0
    fi
    sleep 0.2
  done
  printf '%s\n' "$mem" >&2
  return 1
}

cl_load_secrets() {
  [ -f "$CL_DIR/secrets.env" ] || return 1
  # shellcheck source=/dev/null
  . "$CL_DIR/secrets.env"
}

# Stops the process of PIDFILE when it is COMM: SIGTERM, SIGKILL after 10 s.
cl_stop_pid() {
  local pidfile=$1 comm=$2 pid
  pid=$(cl_pidof "$pidfile") || return 0
  if cl_alive "$pid" "$comm"; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 100); do
      cl_alive "$pid" "$comm" || break
      sleep 0.1
    done
    cl_alive "$pid" "$comm" && kill -KILL "$pid" 2>/dev/null
  fi
  rm -f "$pidfile"
}

cl_stop() {
  local i m leader leaders=()
  mbox_supervise_stop haproxy "$CL_DIR/run" &
  mbox_supervise_stop demo "$CL_DIR/run" &
  for i in "${CL_NODES[@]}"; do
    mbox_supervise_stop "lcsd-$i" "$CL_DIR/run" &
    mbox_supervise_stop "logicd-$i" "$CL_DIR/run" &
  done
  wait
  # Standbys first (in parallel), then the leaders: a leader stopped first
  # would hand over to its standby.
  for i in "${CL_SHARDS[@]}"; do
    leader=$(cl_pg_leader "$i" 2>/dev/null) || leader=
    [ -z "$leader" ] || leaders+=("$leader")
    for m in "${CL_MEMBERS[@]}"; do
      [ "pg$i$m" = "$leader" ] || mbox_supervise_stop "patroni-pg$i$m" "$CL_DIR/run" &
    done
  done
  wait
  for leader in "${leaders[@]}"; do mbox_supervise_stop "patroni-$leader" "$CL_DIR/run" & done
  wait
  # A PostgreSQL whose Patroni was killed outlives it.
  for i in "${CL_SHARDS[@]}"; do
    for m in "${CL_MEMBERS[@]}"; do pg_stop "$(cl_member_dir "$i" "$m")"; done
  done
  mbox_supervise_stop etcd "$CL_DIR/run"
  "$MBOX_ROOT/ops/servers" redis-cluster-stop "$CL_DIR"
  redis_stop "$CL_DIR"
  say "cluster stopped"
}

# One "backend server status" line per haproxy server (stats page, CSV).
cl_haproxy_servers() {
  curl -fsS --max-time 2 "http://127.0.0.1:$CL_STATS_PORT/stats;csv" 2>/dev/null |
    awk -F, '!/^#/ && $2 != "FRONTEND" && $2 != "BACKEND" && $1 != "stats" { print $1, $2, $18 }'
}

cl_status() {
  local name pidfile comm pid bad=0 st
  echo "processes ($CL_DIR):"
  while read -r name pidfile comm; do
    pid=$(cl_pidof "$pidfile" 2>/dev/null) || pid=
    if [ -z "$pid" ]; then
      printf '  %-18s %-12s stopped\n' "$name" "-"
      bad=1
    elif cl_alive "$pid" "$comm"; then
      local r=""
      [ ! -f "$CL_DIR/run/$name.restarts" ] || r="supervised, $(cat "$CL_DIR/run/$name.restarts") restarts,"
      printf '  %-18s pid %-8s %s alive\n' "$name" "$pid" "$r"
    else
      st=$(cl_pid_state "$pid" 2>/dev/null) || st=gone
      printf '  %-18s pid %-8s dead (%s)\n' "$name" "$pid" "$([ "$st" = Z ] && echo zombie || echo "$st")"
      bad=1
    fi
  done < <(cl_procs)
  cl_load_secrets || { echo "no secrets in $CL_DIR: never started"; return 3; }

  echo "redis cluster (cluster-node-timeout 2000 ms, user $CL_REDIS_USER):"
  local port nodes=""
  while read -r port; do
    nodes=$(cl_redis_cli -p "$port" cluster nodes 2>/dev/null) && [ -n "$nodes" ] && break
  done < <(cl_redis_ports)
  if [ -z "$nodes" ]; then
    echo "  no node answers"
    bad=1
  else
    # id addr flags master ping pong epoch link slots...
    printf '%s\n' "$nodes" | awk '
      { addr[$1] = $2; sub(/@.*/, "", addr[$1]); flags[$1] = $3; master[$1] = $4; link[$1] = $8
        slots[$1] = ""; for (i = 9; i <= NF; i++) slots[$1] = slots[$1] (i > 9 ? " " : "") $i
        order[n++] = $1 }
      END {
        for (k = 0; k < n; k++) { id = order[k]; if (flags[id] !~ /master/) continue
          line = sprintf("  master  %-16s slots %-12s", addr[id], slots[id] == "" ? "none" : slots[id])
          if (flags[id] ~ /fail/) line = line " FAILED"
          r = ""; for (j = 0; j < n; j++) { s = order[j]; if (master[s] == id) r = r " " addr[s] (flags[s] ~ /fail/ ? "(failed)" : "") }
          print line "  replicas:" (r == "" ? " none" : r) }
        for (k = 0; k < n; k++) { id = order[k]
          if (flags[id] ~ /slave/ && !(master[id] in addr)) print "  replica " addr[id] " of an unknown master" }
      }' | sort -k2,2
    if cl_redis_cluster_ok; then
      echo "  the daemons use it (redis_nodes)"
    else
      echo "  the daemons do NOT use it: this build has no redis_nodes; they use the standalone Redis 127.0.0.1:$(cl_solo_redis_port)"
    fi
  fi

  echo "postgresql (Patroni pairs, etcd $(cl_etcd_url); public database = shard 0):"
  local s map mem
  for s in "${CL_SHARDS[@]}"; do
    mem=$(cl_pg_members "$s" 2>/dev/null) || mem=
    if [ -z "$mem" ]; then
      printf '  shard %s  no Patroni member answers\n' "$s"
      bad=1
      continue
    fi
    local leader
    leader=$(awk '$2 == "leader" && $3 == "running" { print $1 }' <<<"$mem")
    if [ -z "$leader" ]; then
      printf '  shard %s  NO LEADER (a failover may be under way)\n' "$s"
      bad=1
    else
      printf '  shard %s  leader %s%s, mailboxes %s\n' "$s" "$leader" "$([ "$s" = 0 ] && echo " (public database)")" \
        "$(cl_psql "$s" -c "SELECT count(*) FROM mailbox" 2>/dev/null || echo '?')"
    fi
    # name role state host:port timeline lag
    while read -r n role state addr tl lag; do
      printf '    %-6s %-13s %-10s %-16s timeline %-3s lag %s\n' "$n" "$role" "$state" "$addr" "$tl" "$lag"
    done <<<"$mem"
    awk '$2 == "sync_standby" && $3 ~ /^(running|streaming)$/ { ok = 1 } END { exit !ok }' <<<"$mem" ||
      { printf '    no synchronous standby: commits are on the primary only until one catches up\n'; bad=1; }
  done
  local has_map
  has_map=$(cl_psql 0 -c "SELECT to_regclass('bucket_map') IS NOT NULL" 2>/dev/null) || has_map=down
  if [ "$has_map" = down ]; then
    echo "  bucket map unknown: the public database does not answer"
  elif [ "$has_map" = t ]; then
    map=$(cl_psql 0 -F ' ' -c "SELECT shard, count(*), min(bucket), max(bucket),
        count(*) FILTER (WHERE state <> 'active') FROM bucket_map GROUP BY shard ORDER BY shard" 2>/dev/null) ||
      map=
    if [ -n "$map" ]; then
      printf '  bucket map version %s:\n' "$(cl_psql 0 -c "SELECT version FROM shard_cluster" 2>/dev/null)"
      printf '%s\n' "$map" | while read -r s n lo hi moving; do
        printf '    shard %s: %s buckets (%s..%s)%s\n' "$s" "$n" "$lo" "$hi" \
          "$([ "$moving" -gt 0 ] && echo ", $moving moving")"
      done
    else
      echo "  bucket map empty (logicd --migrate has not written it)"
    fi
  else
    echo "  no bucket map (this build has no PostgreSQL sharding): every mailbox is on shard 0"
  fi

  echo "haproxy (stats http://127.0.0.1:$CL_STATS_PORT/stats):"
  local servers
  servers=$(cl_haproxy_servers) || servers=
  if [ -z "$servers" ]; then
    echo "  stats page does not answer"
    bad=1
  else
    printf '%s\n' "$servers" | while read -r b srv st; do printf '  %-16s %-9s %s\n' "$b" "$srv" "$st"; done
    printf '%s\n' "$servers" | awk '$3 !~ /^UP/ { bad = 1 } END { exit bad }' || bad=1
  fi
  return $((bad ? 3 : 0))
}

cl_port_free() {
  local l
  l=$(ss -Htln "( sport = :$1 )" 2>/dev/null) || return 1
  [ -z "$l" ]
}

# Every port the cluster listens on, with the variable that moves it.
cl_ports() {
  local i port
  echo "$CL_SDK_PORT MBOX_SDK_PORT"
  echo "$CL_INTERNAL_PORT MBOX_INTERNAL_PORT"
  echo "$CL_WS_PORT MBOX_WS_PORT"
  echo "$CL_STATS_PORT MBOX_HAPROXY_STATS_PORT"
  [ "$CL_DEMO" = 0 ] || echo "$CL_DEMO_PORT MBOX_DEMO_PORT"
  for i in "${CL_NODES[@]}"; do
    echo "$(cl_sdk_port "$i") MBOX_CLUSTER_NODE_PORT"
    echo "$(cl_internal_port "$i") MBOX_CLUSTER_NODE_PORT"
    echo "$(cl_ws_port "$i") MBOX_CLUSTER_NODE_PORT"
    echo "$(cl_admin_port "$i") MBOX_CLUSTER_NODE_PORT"
  done
  while read -r port; do
    echo "$port MBOX_CLUSTER_REDIS_PORT"
    echo "$((port + 10000)) MBOX_CLUSTER_REDIS_PORT" # its cluster bus
  done < <(cl_redis_ports)
  echo "$(cl_solo_redis_port) MBOX_CLUSTER_REDIS_PORT"
  local m
  for i in "${CL_SHARDS[@]}"; do
    for m in "${CL_MEMBERS[@]}"; do
      echo "$(cl_pg_port "$i" "$m") MBOX_CLUSTER_PG_PORT"
      echo "$(cl_patroni_port "$i" "$m") MBOX_CLUSTER_PATRONI_PORT"
    done
  done
  echo "$CL_ETCD_PORT MBOX_CLUSTER_ETCD_PORT"
  echo "$((CL_ETCD_PORT + 1)) MBOX_CLUSTER_ETCD_PORT"
}

cl_wait_healthy() {
  local url=$1
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null --max-time 2 "$url" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# cl_start_daemon NAME COMM CMD...: CMD under a supervisor (restarted when
# it dies); CMD's pid in run/NAME.pid, the supervisor's in run/NAME.sup.pid.
cl_start_daemon() {
  local name=$1 comm=$2; shift 2
  cl_alive "$(cl_pidof "$CL_DIR/run/$name.pid" 2>/dev/null)" "$comm" && return 0
  mbox_supervise_start "$name" "$CL_DIR/run" "$CL_DIR/log/$name.log" "$@"
}

cl_write_configs() {
  local i nodes="" port redis_logicd redis_lcsd shards=""
  while read -r port; do nodes+="${nodes:+,}127.0.0.1:$port"; done < <(cl_redis_ports)
  if cl_redis_cluster_ok; then
    redis_logicd="redis_nodes = $nodes
redis_user = $CL_REDIS_USER
redis_password = $REDIS_PASSWORD"
    redis_lcsd=$redis_logicd
  else
    redis_logicd="# no redis_nodes in this build: the standalone Redis
redis_port = $(cl_solo_redis_port)"
    redis_lcsd=$redis_logicd
  fi
  for i in "${CL_SHARDS[@]}"; do shards+="${shards:+ }$(cl_pg_uri "$i")"; done
  local pg_shards="# no pg_shards in this build: every mailbox is in pg_conninfo"
  cl_pg_shards_ok && pg_shards="pg_shards = \"$shards\""
  for i in "${CL_NODES[@]}"; do
    cat >"$CL_DIR/logicd-$i.conf" <<CONF
# written by ops/run cluster
sdk_listen = 127.0.0.1:$(cl_sdk_port "$i")
internal_listen = 127.0.0.1:$(cl_internal_port "$i")
pg_conninfo = "$(cl_pg_uri 0)"
$pg_shards
$redis_logicd
server_key = $SERVER_KEY
ops_tokens = dev:$OPS_TOKEN
token_key = $TOKEN_KEY
migrations_dir = $MBOX_ROOT/migrations
console_dir = $MBOX_ROOT/console/www
cors_allow_origins = http://127.0.0.1:$CL_DEMO_PORT
CONF
    cat >"$CL_DIR/lcsd-$i.conf" <<CONF
# written by ops/run cluster
ws_listen = 127.0.0.1:$(cl_ws_port "$i")
admin_listen = 127.0.0.1:$(cl_admin_port "$i")
$redis_lcsd
token_key = $TOKEN_KEY
node_id = lcs-$i
CONF
    chmod 600 "$CL_DIR/logicd-$i.conf" "$CL_DIR/lcsd-$i.conf"
  done
  printf '%s\n' "$nodes" >"$CL_DIR/redis_nodes"
  printf '%s\n' "$shards" >"$CL_DIR/pg_shards"
}

# haproxy in HTTP mode on all three fronts. The WebSocket front is HTTP mode
# too: haproxy parses the upgrade request (only GET /ws reaches lcsd, with
# haproxy's own request timeout), logs its 101, and after the 101 the
# connection is a plain tunnel (timeout tunnel), so frames cost what they
# would in TCP mode. The tunnel timeout is above lcsd's heartbeat: a live
# client pings every heartbeat_s (30 s) and lcsd itself closes a client
# silent for three periods. A dead server is skipped two failed checks
# (1 s apart) later; until then a refused connection is retried on the
# other server (retries, option redispatch), nothing having been sent.
cl_write_haproxy() {
  local i
  {
    cat <<CFG
# written by ops/run cluster
global
    log stdout format raw local0 info
    stats socket $CL_DIR/run/haproxy.sock mode 600 level admin

defaults
    log global
    mode http
    option httplog
    option dontlognull
    option forwardfor
    timeout connect 2s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 30s
    timeout tunnel 120s
    timeout client-fin 5s
    retries 3
    option redispatch 1
    default-server inter 1s fastinter 500ms downinter 1s fall 2 rise 2

frontend sdk
    bind 127.0.0.1:$CL_SDK_PORT
    default_backend logicd_sdk

frontend internal
    bind 127.0.0.1:$CL_INTERNAL_PORT
    default_backend logicd_internal

frontend ws
    bind 127.0.0.1:$CL_WS_PORT
    http-request deny deny_status 404 unless { path /ws }
    default_backend lcsd_ws

# logicd is checked on its internal listener's /healthz (200 when its
# PostgreSQL pools and Redis answer), for both of its listeners.
backend logicd_sdk
    balance roundrobin
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
CFG
    for i in "${CL_NODES[@]}"; do
      echo "    server logicd-$i 127.0.0.1:$(cl_sdk_port "$i") check port $(cl_internal_port "$i")"
    done
    cat <<CFG

backend logicd_internal
    balance roundrobin
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
CFG
    for i in "${CL_NODES[@]}"; do
      echo "    server logicd-$i 127.0.0.1:$(cl_internal_port "$i") check"
    done
    cat <<CFG

# lcsd is checked on its admin listener's /healthz; leastconn spreads the
# long-lived connections.
backend lcsd_ws
    balance leastconn
    option httpchk
    http-check send meth GET uri /healthz ver HTTP/1.1 hdr Host localhost
    http-check expect status 200
CFG
    for i in "${CL_NODES[@]}"; do
      echo "    server lcsd-$i 127.0.0.1:$(cl_ws_port "$i") check port $(cl_admin_port "$i")"
    done
    cat <<CFG

# Stats page (add ;csv for machines) and haproxy's own health.
listen stats
    bind 127.0.0.1:$CL_STATS_PORT
    stats enable
    stats uri /stats
    stats refresh 5s
    monitor-uri /healthz
CFG
  } >"$CL_DIR/haproxy.cfg"
}

# Waits until every haproxy server is UP.
cl_wait_backends_up() {
  local servers
  for _ in $(seq 1 100); do
    servers=$(cl_haproxy_servers) || servers=
    [ -n "$servers" ] && printf '%s\n' "$servers" | awk '$3 != "UP" { bad = 1 } END { exit bad }' &&
      return 0
    sleep 0.2
  done
  printf '%s\n' "$servers" >&2
  return 1
}

cl_write_stack_env() {
  local tmp=$CL_STACK_ENV.tmp
  mkdir -p "$(dirname "$CL_STACK_ENV")"
  cat >"$tmp" <<ENV
# written by ops/run cluster: listeners (haproxy) and dev credentials of the local cluster
export MBOX_SDK_URL=http://127.0.0.1:$CL_SDK_PORT
export MBOX_INTERNAL_URL=http://127.0.0.1:$CL_INTERNAL_PORT
export MBOX_WS_URL=ws://127.0.0.1:$CL_WS_PORT/ws
export MBOX_SERVER_KEY=$SERVER_KEY
export MBOX_OPS_TOKEN=$OPS_TOKEN
export MBOX_CONSOLE_URL=http://127.0.0.1:$CL_INTERNAL_PORT/console/
export MBOX_REDIS_NODES=$(cat "$CL_DIR/redis_nodes")
export MBOX_PG_SHARDS='$(cat "$CL_DIR/pg_shards")'
ENV
  if [ "$CL_DEMO" != 0 ]; then
    local tok
    tok=$(curl -fsS -H "Authorization: Bearer $SERVER_KEY" -d '{"app_id":"1","uid":"9","ttl_s":86400}' \
      "http://127.0.0.1:$CL_INTERNAL_PORT/v1/tokens" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
    [ -n "$tok" ] || { say "demo: could not mint a token for the demo inbox"; return 1; }
    echo "export MBOX_DEMO_URL='http://127.0.0.1:$CL_DEMO_PORT/demo/#sync=http://127.0.0.1:$CL_SDK_PORT&ws=ws://127.0.0.1:$CL_WS_PORT/ws&uid=9&token=$tok'" >>"$tmp"
  fi
  chmod 600 "$tmp"
  mv "$tmp" "$CL_STACK_ENV"
  [ "$CL_STACK_ENV" = "$CL_DIR/stack.env" ] || cp -p "$CL_STACK_ENV" "$CL_DIR/stack.env"
}

cl_token() { # uid [internal url]
  curl -fsS -H "Authorization: Bearer $SERVER_KEY" -d "{\"app_id\":\"1\",\"uid\":\"$1\",\"ttl_s\":3600}" \
    "${2:-http://127.0.0.1:$CL_INTERNAL_PORT}/v1/tokens" | sed -n 's/.*"token":"\([^"]*\)".*/\1/p'
}

# Shows the cluster working: a token and a send through haproxy, syncs
# through haproxy and each logicd, a notify crossing from logicd-1 to a
# client on lcsd-2.
cl_demo() {
  local tok body i n
  tok=$(cl_token 9) || true
  [ -n "$tok" ] || { say "demo: could not mint a token"; return 1; }
  cat <<TXT

The cluster is up: haproxy on :$CL_SDK_PORT (SDK), :$CL_INTERNAL_PORT (internal), :$CL_WS_PORT (WebSocket)
over logicd-1/2 and lcsd-1/2; Redis Cluster $(cat "$CL_DIR/redis_nodes");
PostgreSQL shards pg0 (public database, shard 0) on :$(cl_pg_hosts 0 | sed 's/127.0.0.1://g')
and pg1 on :$(cl_pg_hosts 1 | sed 's/127.0.0.1://g'), each a Patroni pair (leaders: $(cl_pg_leader 0), $(cl_pg_leader 1)).
Listeners and dev credentials are in $CL_STACK_ENV (same variables as ops/run,
plus MBOX_REDIS_NODES and MBOX_PG_SHARDS): every client of ops/run works unchanged.

TXT
  body=$(curl -fsS -H "Authorization: Bearer $SERVER_KEY" \
    -d '{"app_id":"1","from_uid":"7","to_uids":["9"],"content":"hello from ops/run cluster"}' \
    "http://127.0.0.1:$CL_INTERNAL_PORT/v1/messages")
  printf '  send via haproxy        -> %s\n' "$body"
  body=$(curl -fsS -H "Authorization: Bearer $tok" -d '{"cursor":""}' "http://127.0.0.1:$CL_SDK_PORT/v1/sync")
  printf '  sync via haproxy        -> %s\n' "$(printf '%s' "$body" | cut -c1-160)..."
  for i in "${CL_NODES[@]}"; do
    body=$(curl -fsS -H "Authorization: Bearer $tok" -d '{"cursor":""}' "http://127.0.0.1:$(cl_sdk_port "$i")/v1/sync")
    n=$(printf '%s' "$body" | grep -o '"msg_id"' | wc -l)
    printf '  sync via logicd-%s       -> %s items\n' "$i" "$n"
  done
  local out err pid got=""
  out=$(mktemp) err=$(mktemp)
  "$CL_MBOX" watch --ws "ws://127.0.0.1:$(cl_ws_port 2)/ws" --sdk "http://127.0.0.1:$CL_SDK_PORT" \
    --token "$tok" --device ops-run-cluster >"$out" 2>"$err" &
  pid=$!
  for _ in $(seq 1 50); do grep -q mbox_client_online "$err" && break; sleep 0.1; done
  curl -fsS -o /dev/null -H "Authorization: Bearer $SERVER_KEY" \
    -d '{"app_id":"1","from_uid":"7","to_uids":["9"],"content":"notify across nodes"}' \
    "http://127.0.0.1:$(cl_internal_port 1)/v1/messages"
  for _ in $(seq 1 50); do grep -q 'notify across nodes' "$out" && { got=1; break; }; sleep 0.1; done
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  if [ -n "$got" ]; then
    printf '  watch on lcsd-2, send via logicd-1 -> delivered: %s\n' "$(grep 'notify across nodes' "$out" | cut -c1-120)"
  else
    printf '  watch on lcsd-2, send via logicd-1 -> NOT delivered (see %s)\n' "$CL_DIR/log"
  fi
  rm -f "$out" "$err"
  printf '  haproxy health: %s\n' "$(curl -s -o /dev/null -w '%{http_code}' "http://127.0.0.1:$CL_STATS_PORT/healthz")"
  printf '\nStats: http://127.0.0.1:%s/stats   Status: ops/run cluster status   Stop: ops/run cluster stop\n' "$CL_STATS_PORT"
  [ "$CL_DEMO" = 0 ] || printf 'Demo inbox of user 9: see MBOX_DEMO_URL in %s\n' "$CL_STACK_ENV"
  [ -n "$got" ]
}

cl_all_alive() {
  local name pidfile comm
  while read -r name pidfile comm; do
    cl_alive "$(cl_pidof "$pidfile" 2>/dev/null)" "$comm" || return 1
  done < <(cl_procs)
}

cl_any_alive() {
  local name pidfile comm
  while read -r name pidfile comm; do
    cl_alive "$(cl_pidof "$pidfile" 2>/dev/null)" "$comm" && return 0
  done < <(cl_procs)
  return 1
}

cl_start() {
  if cl_load_secrets 2>/dev/null && cl_all_alive; then
    say "cluster already running (ops/run cluster stop to stop it)"
    [ "${MBOX_CLUSTER_QUIET:-0}" = 1 ] || cl_demo
    return
  fi
  if cl_any_alive; then
    say "part of the cluster runs: stopping it first"
    cl_stop
  fi
  if [ "${MBOX_CLUSTER_BUILD:-1}" != 0 ]; then
    mbox_install_deps "${MBOX_PACKAGES[@]}" haproxy
    mbox_build "$CL_BUILD"
    [ "$CL_DEMO" = 0 ] || "$MBOX_ROOT/sdk/js/build.sh"
  fi
  if [ ! -x "$CL_LOGICD" ] || [ ! -x "$CL_LCSD" ]; then die "no daemons in $CL_BUILD"; fi
  [ "$CL_REDIS_PORT" -le 55530 ] || die "MBOX_CLUSTER_REDIS_PORT must be at most 55530 (cluster bus: port + 10000)"
  local port var
  while read -r port var; do
    cl_port_free "$port" || die "port $port is in use (move it with $var; ops/run stop stops the single-node stack)"
  done < <(cl_ports)
  mkdir -p "$CL_DIR/run" "$CL_DIR/log"
  if [ ! -f "$CL_DIR/secrets.env" ]; then
    (
      umask 077
      {
        echo "PG_PASSWORD=$(mbox_secret)"
        echo "SERVER_KEY=$(mbox_secret)"
        echo "OPS_TOKEN=$(mbox_secret)"
        echo "TOKEN_KEY=$(mbox_secret)"
        echo "REDIS_PASSWORD=$(mbox_secret)"
        echo "PG_REPL_PASSWORD=$(mbox_secret)"
      } >"$CL_DIR/secrets.env"
    )
  fi
  grep -q '^PG_REPL_PASSWORD=' "$CL_DIR/secrets.env" || echo "PG_REPL_PASSWORD=$(mbox_secret)" >>"$CL_DIR/secrets.env"
  cl_load_secrets

  cl_start_etcd || { tail -20 "$CL_DIR/log/etcd.log" >&2; die "etcd did not start (see $CL_DIR/log/etcd.log)"; }
  local i m
  for i in "${CL_SHARDS[@]}"; do
    for m in "${CL_MEMBERS[@]}"; do
      cl_start_patroni "$i" "$m" || die "Patroni pg$i$m did not start (see $CL_DIR/log/patroni-pg$i$m.log)"
    done
  done
  # The Redis Cluster starts while Patroni bootstraps the pairs.
  type redis_cluster_start >/dev/null 2>&1 || die "ops/lib/common.sh has no redis_cluster_start"
  "$MBOX_ROOT/ops/servers" redis-cluster-start "$CL_DIR" "$CL_REDIS_PORT" "$CL_REDIS_USER" "$REDIS_PASSWORD" ||
    die "the Redis Cluster did not start (see $CL_DIR/rcluster/*/redis.log)"
  for i in "${CL_SHARDS[@]}"; do
    cl_wait_pg_pair "$i" 180 || {
      tail -30 "$CL_DIR"/log/patroni-pg"$i"?.log >&2
      die "PostgreSQL pair pg$i has no leader with a synchronous standby (see $CL_DIR/log/patroni-pg$i*.log)"
    }
    PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" "$(cl_pg_uri_nopw "$i" postgres)" -qtAXc \
      "SELECT 1 FROM pg_database WHERE datname='mbox'" | grep -q 1 ||
      PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" "$(cl_pg_uri_nopw "$i" postgres)" -qXc \
        "CREATE DATABASE mbox" >/dev/null || die "create database on pg$i failed"
  done

  if ! cl_redis_cluster_ok; then
    say "WARNING: $CL_BUILD's logicd/lcsd have no redis_nodes (Redis Cluster client): they use a" \
      "standalone Redis on 127.0.0.1:$(cl_solo_redis_port) instead of the cluster"
    redis_start "$CL_DIR" "$(cl_solo_redis_port)" || die "the standalone Redis did not start"
  fi
  cl_pg_shards_ok || say "WARNING: $CL_BUILD's logicd has no pg_shards: every mailbox goes to pg0, pg1 stays empty"

  cl_write_configs
  "$CL_LOGICD" -c "$CL_DIR/logicd-1.conf" --migrate-only 2>>"$CL_DIR/log/migrate.log" ||
    { tail -20 "$CL_DIR/log/migrate.log" >&2; die "migrations failed (see $CL_DIR/log/migrate.log)"; }

  for i in "${CL_NODES[@]}"; do
    cl_start_daemon "logicd-$i" logicd "$CL_LOGICD" -c "$CL_DIR/logicd-$i.conf"
    cl_start_daemon "lcsd-$i" lcsd "$CL_LCSD" -c "$CL_DIR/lcsd-$i.conf"
  done
  for i in "${CL_NODES[@]}"; do
    cl_wait_healthy "http://127.0.0.1:$(cl_internal_port "$i")/healthz" ||
      { tail -20 "$CL_DIR/log/logicd-$i.log" >&2; die "logicd-$i is not healthy"; }
    cl_wait_healthy "http://127.0.0.1:$(cl_admin_port "$i")/healthz" ||
      { tail -20 "$CL_DIR/log/lcsd-$i.log" >&2; die "lcsd-$i is not healthy"; }
  done

  cl_write_haproxy
  haproxy -c -q -f "$CL_DIR/haproxy.cfg" || die "haproxy rejects $CL_DIR/haproxy.cfg"
  cl_start_daemon haproxy haproxy haproxy -db -f "$CL_DIR/haproxy.cfg"
  cl_wait_healthy "http://127.0.0.1:$CL_STATS_PORT/healthz" ||
    { tail -20 "$CL_DIR/log/haproxy.log" >&2; die "haproxy did not start"; }
  cl_wait_backends_up || die "haproxy does not see every backend up"
  if [ "$CL_DEMO" != 0 ]; then
    cl_start_daemon demo node node "$MBOX_ROOT/sdk/js/demo/serve.mjs" --port "$CL_DEMO_PORT"
    cl_wait_healthy "http://127.0.0.1:$CL_DEMO_PORT/demo/" ||
      { tail -20 "$CL_DIR/log/demo.log" >&2; die "the demo server did not start"; }
  fi
  cl_write_stack_env
  [ "${MBOX_CLUSTER_QUIET:-0}" = 1 ] || cl_demo
}

cluster_main() {
  case "${1:-start}" in
    start) cl_start ;;
    stop) cl_stop ;;
    status) cl_status ;;
    *) say "usage: ops/run cluster [start|stop|status]"; exit 2 ;;
  esac
}
