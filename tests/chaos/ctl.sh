#!/usr/bin/env bash
# tests/chaos/ctl.sh: what the chaos and soak drivers (tests/chaos/*.mjs) ask
# of a running `ops/run cluster`, answered with the helpers of
# ops/lib/cluster.sh so that ports, pid files and restart commands have one
# source. MBOX_CLUSTER_DIR (and the MBOX_*_PORT variables the cluster was
# started with) must be set as for `ops/run cluster`.
#
#   ctl.sh info                 JSON: URLs, ports, secrets, pid files, and
#                               whether the cluster runs Patroni/etcd
#   ctl.sh pid NAME             the pid in NAME's pid file (logicd-1, lcsd-2,
#                               redis-7000, haproxy, ...), if it is alive
#   ctl.sh start-logicd N       start logicd-N unless it runs
#   ctl.sh replace-logicd N CONF  stop logicd-N (and its supervisor) and start
#                               it again with config file CONF
#   ctl.sh start-lcsd N         start lcsd-N unless it runs
#   ctl.sh start-redis PORT     start the Redis Cluster node of PORT again
#                               (same config and nodes.conf: it rejoins)
#   ctl.sh redis-nodes          CLUSTER NODES as the first answering node sees it
#   ctl.sh redis PORT ARGS...   redis-cli against one node (the ACL user)
#   ctl.sh healthy              exit 0 when every process is alive, every
#                               Redis master has a linked replica and every
#                               haproxy server is UP; else prints what is not
#                               (the drivers check most of it themselves,
#                               this is for people)
#   ctl.sh redis-health         exit 0 when every Redis master has a replica
#                               whose replication link is up
#   ctl.sh pg-members SHARD     "port role pid" per PostgreSQL member of SHARD
#                               (role primary or standby)
#   ctl.sh pg-write PORT [NOTE] an INSERT (of NOTE) into a scratch table on that
#                               member (5 s); exit 0 when it committed
#   ctl.sh pg-has SHARD NOTE    how many scratch rows with NOTE the shard's
#                               primary holds
#   ctl.sh etcd-pid             the etcd member's pid (Patroni clusters only)
#   ctl.sh start-etcd           start etcd again (when nothing else does)
#
# The Patroni commands use the cluster's own helpers (cl_pg_members,
# cl_start_etcd, cl_member_dir); without Patroni, pg-members lists the
# single server of each shard as primary.
set -euo pipefail
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../../ops/lib/common.sh
. "$ROOT/ops/lib/common.sh"
[ -n "${MBOX_CLUSTER_DIR:-}" ] || die "ctl.sh: MBOX_CLUSTER_DIR is not set"
# shellcheck source=../../ops/lib/cluster.sh
. "$ROOT/ops/lib/cluster.sh"
cl_load_secrets || die "ctl.sh: no secrets in $CL_DIR"

json_str() { printf '"%s"' "$(printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g')"; }

# Does this cluster run PostgreSQL under Patroni (with an etcd member)?
has_patroni() {
  local procs
  procs=$(cl_procs)
  declare -F cl_pg_members >/dev/null && grep -q '^etcd ' <<<"$procs"
}

cmd_info() {
  local i first=1
  printf '{"dir":%s,"sdk":{"hap":"http://127.0.0.1:%s"' "$(json_str "$CL_DIR")" "$CL_SDK_PORT"
  for i in "${CL_NODES[@]}"; do printf ',"logicd-%s":"http://127.0.0.1:%s"' "$i" "$(cl_sdk_port "$i")"; done
  printf '},"internal":{"hap":"http://127.0.0.1:%s"' "$CL_INTERNAL_PORT"
  for i in "${CL_NODES[@]}"; do printf ',"logicd-%s":"http://127.0.0.1:%s"' "$i" "$(cl_internal_port "$i")"; done
  printf '},"ws":{"hap":"ws://127.0.0.1:%s/ws"' "$CL_WS_PORT"
  for i in "${CL_NODES[@]}"; do printf ',"lcsd-%s":"ws://127.0.0.1:%s/ws"' "$i" "$(cl_ws_port "$i")"; done
  printf '},"admin":{'
  for i in "${CL_NODES[@]}"; do
    [ $first = 1 ] || printf ','
    first=0
    printf '"lcsd-%s":"http://127.0.0.1:%s"' "$i" "$(cl_admin_port "$i")"
  done
  printf '},"nodes":[%s]' "$(IFS=,; echo "${CL_NODES[*]}")"
  printf ',"shards":[%s]' "$(IFS=,; echo "${CL_SHARDS[*]}")"
  printf ',"redis_ports":[%s]' "$(cl_redis_ports | paste -sd,)"
  printf ',"redis_cluster":%s,"patroni":%s' \
    "$(cl_redis_cluster_ok && echo true || echo false)" "$(has_patroni && echo true || echo false)"
  printf ',"server_key":%s,"ops_token":%s' "$(json_str "$SERVER_KEY")" "$(json_str "$OPS_TOKEN")"
  printf ',"stats":"http://127.0.0.1:%s"' "$CL_STATS_PORT"
  if has_patroni; then
    local sh m sep
    printf ',"patroni_urls":{'
    sep=''
    for sh in "${CL_SHARDS[@]}"; do
      printf '%s"%s":[' "$sep" "$sh"
      sep=','
      first=1
      for m in "${CL_MEMBERS[@]}"; do
        [ $first = 1 ] || printf ','
        first=0
        printf '"http://127.0.0.1:%s"' "$(cl_patroni_port "$sh" "$m")"
      done
      printf ']'
    done
    printf '},"etcd_url":"%s"' "$(cl_etcd_url)"
  fi
  printf ',"procs":['
  first=1
  local name pidfile comm
  while read -r name pidfile comm; do
    [ $first = 1 ] || printf ','
    first=0
    printf '{"name":%s,"pidfile":%s,"comm":%s}' "$(json_str "$name")" "$(json_str "$pidfile")" "$(json_str "$comm")"
  done < <(cl_procs)
  printf '],"logs":%s}\n' "$(json_str "$CL_DIR/log")"
}

cmd_pid() {
  local name pidfile comm pid
  while read -r name pidfile comm; do
    [ "$name" = "$1" ] || continue
    pid=$(cl_pidof "$pidfile" 2>/dev/null) || exit 1
    cl_alive "$pid" "$comm" || exit 1
    echo "$pid"
    exit 0
  done < <(cl_procs)
  exit 1
}

cmd_start_redis() {
  local port=$1 d=$CL_DIR/rcluster/$1
  [ -f "$d/redis.conf" ] || die "no Redis node $port in $CL_DIR"
  if cl_alive "$(cl_pidof "$d/redis.pid" 2>/dev/null)" redis-server; then return 0; fi
  rm -f "$d/redis.pid"
  # The arguments of redis_cluster_start (ops/lib/common.sh); nodes.conf in
  # its directory makes it rejoin the cluster (as a replica once failed over).
  redis-server "$d/redis.conf" --dir "$d" --port "$port" --bind 127.0.0.1 --save '' \
    --appendonly no --daemonize yes --pidfile "$d/redis.pid" \
    --logfile "$d/redis.log" --cluster-enabled yes \
    --cluster-config-file "nodes.conf" --cluster-node-timeout 2000 \
    --protected-mode yes >/dev/null
  for _ in $(seq 1 100); do
    [ "$(cl_redis_cli -p "$port" ping 2>/dev/null || true)" = PONG ] && return 0
    sleep 0.05
  done
  die "Redis node $port did not come back"
}

cmd_redis_nodes() {
  local port out
  while read -r port; do
    out=$(cl_redis_cli -p "$port" cluster nodes 2>/dev/null) || continue
    [ -n "$out" ] && { printf '%s\n' "$out"; return 0; }
  done < <(cl_redis_ports)
  return 1
}

cmd_healthy() {
  local name pidfile comm bad=0 servers
  while read -r name pidfile comm; do
    [ "$name" = demo ] && continue
    cl_alive "$(cl_pidof "$pidfile" 2>/dev/null)" "$comm" || { echo "$name not running"; bad=1; }
  done < <(cl_procs)
  if cl_redis_cluster_ok; then
    cmd_redis_health || bad=1
  fi
  servers=$(cl_haproxy_servers) || servers=
  if [ -z "$servers" ] || ! awk '$3 != "UP" { bad = 1 } END { exit bad }' <<<"$servers"; then
    echo "haproxy servers not all UP"
    bad=1
  fi
  if has_patroni; then
    local s mem
    for s in "${CL_SHARDS[@]}"; do
      mem=$(cl_pg_members "$s" 2>/dev/null) || mem=
      awk '$2 == "leader" && $3 == "running" { l = 1 } $2 == "sync_standby" && $3 ~ /^(running|streaming)$/ { r = 1 }
        END { exit !(l && r) }' <<<"$mem" || { echo "postgresql pg$s: no leader with a synchronous standby"; bad=1; }
    done
  fi
  return $bad
}

cmd_redis_health() {
  local nodes bad=0 port repl
  nodes=$(cmd_redis_nodes) || nodes=
  # Every master holding slots has a replica, nothing is failed ...
  if ! awk '
      $3 ~ /fail/ { bad = 1 }
      $3 ~ /master/ && NF >= 9 { m[$1] = 1 }
      $3 ~ /slave/ && $8 == "connected" { r[$4] = 1 }
      END { for (k in m) if (!(k in r)) bad = 1; exit bad }' <<<"$nodes"; then
    echo "redis cluster not whole"
    bad=1
  fi
  # ... and every replica's replication link is up.
  while read -r port; do
    repl=$(cl_redis_cli -p "$port" info replication 2>/dev/null || true)
    if [[ $repl == *role:slave* && $repl != *master_link_status:up* ]]; then
      echo "redis $port: replica link down"
      bad=1
    fi
  done < <(cl_redis_ports)
  return $bad
}

cmd_pg_members() {
  local shard=$1
  if has_patroni; then
    local name role state addr pid
    # "name role state host:port timeline lag" -> "port primary|standby pid"
    cl_pg_members "$shard" | while read -r name role state addr _; do
      pid=$(cl_pidof "$(cl_member_dir "$shard" "${name#pg"$shard"}")/pg/data/postmaster.pid" 2>/dev/null) || pid=0
      case $role in leader | master | primary) role=primary ;; *) role=standby ;; esac
      [ "$state" = running ] || [ "$state" = streaming ] || role=$role-$state
      echo "${addr##*:} $role $pid"
    done
    return
  fi
  local pid
  pid=$(cl_pidof "$CL_DIR/pg$shard/pg/data/postmaster.pid" 2>/dev/null) || pid=0
  echo "$((CL_PG_PORT + shard)) primary $pid"
}

# An INSERT on one member, bypassing logicd: 0 when it committed.
cmd_pg_write() {
  # No statement_timeout: a commit cancelled while it waits for the
  # synchronous standby stays committed locally and psql would report it.
  PGPASSWORD=$PG_PASSWORD PGCONNECT_TIMEOUT=3 timeout 5 "$PG_BIN/psql" -h 127.0.0.1 -p "$1" -U mbox -d mbox -qtAX -v ON_ERROR_STOP=1 \
    -c "CREATE TABLE IF NOT EXISTS chaos_scratch (at timestamptz DEFAULT now(), note text)" \
    -c "INSERT INTO chaos_scratch (note) VALUES ('${2:-probe}')" >/dev/null 2>&1
}

case "${1:-}" in
  info) cmd_info ;;
  pid) cmd_pid "$2" ;;
  start-logicd) cl_start_daemon "logicd-$2" logicd "$CL_LOGICD" -c "$CL_DIR/logicd-$2.conf" ;;
  replace-logicd)
    if declare -F mbox_supervise_stop >/dev/null; then
      mbox_supervise_stop "logicd-$2" "$CL_DIR/run"
    else
      cl_stop_pid "$CL_DIR/run/logicd-$2.pid" logicd
    fi
    cl_start_daemon "logicd-$2" logicd "$CL_LOGICD" -c "$3"
    ;;
  start-lcsd) cl_start_daemon "lcsd-$2" lcsd "$CL_LCSD" -c "$CL_DIR/lcsd-$2.conf" ;;
  start-redis) cmd_start_redis "$2" ;;
  redis-nodes) cmd_redis_nodes ;;
  redis) shift; p=$1; shift; cl_redis_cli -p "$p" "$@" ;;
  healthy) cmd_healthy ;;
  redis-health) cmd_redis_health ;;
  pg-members) cmd_pg_members "$2" ;;
  pg-write)
    [[ ${3:-probe} =~ ^[A-Za-z0-9_-]+$ ]] || die "pg-write: NOTE must be [A-Za-z0-9_-]"
    cmd_pg_write "$2" "${3:-probe}"
    ;;
  pg-has)
    [[ $3 =~ ^[A-Za-z0-9_-]+$ ]] || die "pg-has: NOTE must be [A-Za-z0-9_-]"
    cl_psql "$2" -c "SELECT count(*) FROM chaos_scratch WHERE note = '$3'"
    ;;
  etcd-pid) has_patroni && cl_pidof "$CL_DIR/run/etcd.pid" ;;
  start-etcd) declare -F cl_start_etcd >/dev/null && cl_start_etcd ;;
  *) say "usage: tests/chaos/ctl.sh info|pid|start-logicd|replace-logicd|start-lcsd|start-redis|redis-nodes|redis|healthy|redis-health|pg-members|pg-write|pg-has|etcd-pid|start-etcd"; exit 2 ;;
esac
