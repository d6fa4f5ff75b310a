# shellcheck shell=bash
# Shared by ops/run, ops/test and tests/support/harness.c (through
# ops/servers): installing what is missing, building, and running a private
# PostgreSQL 15 and Redis 7 under a directory of our own. No system service
# is touched: the servers are started from the packages' binaries.

MBOX_ROOT=${MBOX_ROOT:-$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)}
PG_BIN=${PG_BIN:-/usr/lib/postgresql/15/bin}

# Debian packages the build, the stack and the tests need.
MBOX_PACKAGES=(build-essential meson ninja-build pkg-config clang protobuf-c-compiler
  libevent-dev libhiredis-dev libpq-dev libprotobuf-c-dev check libjansson-dev libssl-dev
  postgresql-15 redis-server curl util-linux iproute2 procps)

say() { printf '%s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

# Installs the missing packages (apt-get update first, once).
mbox_install_deps() {
  local missing=() p
  for p in "$@"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  say "installing: ${missing[*]}"
  local sudo=()
  [ "$(id -u)" -eq 0 ] || sudo=(sudo)
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
  # policy-rc.d keeps the packages' own services from starting: we run our own.
  if [ "$(id -u)" -eq 0 ] && [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    local created_policy=1
  fi
  "${sudo[@]}" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
    "${missing[@]}" >&2 || die "apt-get install failed"
  [ -n "${created_policy:-}" ] && rm -f /usr/sbin/policy-rc.d
  return 0
}

# Configures (once) and builds a build directory. Extra args go to meson setup.
mbox_build() {
  local dir=$1; shift
  if [ ! -f "$MBOX_ROOT/$dir/build.ninja" ]; then
    meson setup "$MBOX_ROOT/$dir" "$MBOX_ROOT" "$@" >&2 || die "meson setup $dir failed"
  fi
  meson compile -C "$MBOX_ROOT/$dir" >&2 || die "build of $dir failed"
}

# Runs a command as the postgres user when we are root (PostgreSQL refuses
# to run as root), as ourselves otherwise.
as_pg() {
  if [ "$(id -u)" -eq 0 ]; then
    runuser -u postgres -- "$@"
  else
    "$@"
  fi
}

# Chooses where the cluster lives. When root, the postgres user must be able
# to reach the data directory; a checkout under a private home (/root) is not
# reachable, so the cluster then lives under /var/tmp and DIR/pg links to it.
pg_datadir() {
  local dir=$1
  if [ "$(id -u)" -ne 0 ]; then
    echo "$dir/pg"
    return
  fi
  if [ -L "$dir/pg" ]; then
    readlink -f "$dir/pg"
    return
  fi
  mkdir -p "$dir"
  if runuser -u postgres -- test -x "$dir" 2>/dev/null && runuser -u postgres -- test -w "$dir" 2>/dev/null; then
    echo "$dir/pg"
    return
  fi
  if runuser -u postgres -- test -x "$dir" 2>/dev/null; then
    mkdir -p "$dir/pg" && chown postgres: "$dir/pg"
    echo "$dir/pg"
    return
  fi
  local alt
  alt=$(mktemp -d /var/tmp/mbox-pg.XXXXXX)
  chown postgres: "$alt"
  chmod 700 "$alt"
  ln -s "$alt" "$dir/pg"
  echo "$alt"
}

# pg_start DIR PORT PASSWORD [extra postgres -c options...]
# Initialises (first time) and starts a private cluster on 127.0.0.1:PORT
# with a superuser `mbox` (scram password) and a database `mbox`.
pg_start() {
  local dir=$1 port=$2 pass=$3; shift 3
  local data
  data=$(pg_datadir "$dir")
  mkdir -p "$data"
  [ "$(id -u)" -eq 0 ] && chown postgres: "$data"
  if [ ! -f "$data/data/PG_VERSION" ]; then
    local pwfile="$data/.pw"
    printf '%s\n' "$pass" >"$pwfile"
    [ "$(id -u)" -eq 0 ] && chown postgres: "$pwfile"
    chmod 600 "$pwfile"
    as_pg "$PG_BIN/initdb" -D "$data/data" -U mbox --pwfile="$pwfile" -A scram-sha-256 \
      -E UTF8 --no-locale >"$data/initdb.log" 2>&1 || { cat "$data/initdb.log" >&2; die "initdb failed"; }
    rm -f "$pwfile"
  fi
  local opts="-p $port -c listen_addresses=127.0.0.1 -c unix_socket_directories='$data'"
  opts+=" -c max_connections=200 -c shared_buffers=256MB"
  local o
  for o in "$@"; do opts+=" -c $o"; done
  as_pg "$PG_BIN/pg_ctl" -D "$data/data" -l "$data/postgres.log" -w -t 60 -o "$opts" start \
    >/dev/null || { tail -20 "$data/postgres.log" >&2; return 1; }
  PGPASSWORD=$pass "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U mbox -d postgres -qtAc \
    "SELECT 1 FROM pg_database WHERE datname='mbox'" | grep -q 1 ||
    PGPASSWORD=$pass "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U mbox -d postgres -qc \
      "CREATE DATABASE mbox" >/dev/null || die "create database failed"
}

pg_stop() {
  local dir=$1 data
  [ -e "$dir/pg" ] || return 0
  data=$(readlink -f "$dir/pg")
  [ -f "$data/data/postmaster.pid" ] || return 0
  as_pg "$PG_BIN/pg_ctl" -D "$data/data" -m fast -w stop >/dev/null 2>&1 || true
}

# Removes the cluster (and its /var/tmp home when it had to live there).
pg_destroy() {
  local dir=$1
  pg_stop "$dir"
  if [ -L "$dir/pg" ]; then
    rm -rf "$(readlink -f "$dir/pg")"
    rm -f "$dir/pg"
  else
    rm -rf "$dir/pg"
  fi
}

# redis_start DIR PORT: a private Redis without persistence (it holds only
# rebuildable state: routes, pub/sub, hints, counters).
redis_start() {
  local dir=$1 port=$2
  mkdir -p "$dir/redis"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --pidfile "$dir/redis/redis.pid" --logfile "$dir/redis/redis.log" --dir "$dir/redis" \
    --protected-mode yes >/dev/null || return 1
  local i
  for _ in $(seq 1 100); do
    redis-cli -p "$port" ping 2>/dev/null | grep -q PONG && return 0
    sleep 0.05
  done
  return 1
}

redis_stop() {
  local dir=$1 pid
  [ -f "$dir/redis/redis.pid" ] || return 0
  pid=$(cat "$dir/redis/redis.pid")
  kill "$pid" 2>/dev/null || true
  local i
  for _ in $(seq 1 100); do
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.05
  done
  rm -f "$dir/redis/redis.pid"
}

# redis_cluster_start DIR BASEPORT [USER PASS]: a private Redis Cluster of
# six redis-server processes on 127.0.0.1:BASEPORT..BASEPORT+5 (three
# masters, one replica each), without persistence, node timeout 2 s. With
# USER and PASS, an ACL user USER (password PASS, all keys, channels and
# commands) is created on every node and the default user is disabled; the
# replicas authenticate to their masters as that user. Returns when every
# node reports cluster_state:ok; prints nothing on success. Each node's pid
# is in DIR/rcluster/PORT/redis.pid.
redis_cluster_start() {
  local dir=$1 base=$2 user=${3:-} pass=${4:-}
  local port i nodes=() auth=()
  for i in 0 1 2 3 4 5; do
    port=$((base + i))
    mkdir -p "$dir/rcluster/$port"
    # The password goes into a file of our own, not the command line (ps).
    local conf="$dir/rcluster/$port/redis.conf"
    : >"$conf"
    chmod 600 "$conf"
    if [ -n "$user" ]; then
      printf 'user %s on >%s ~* &* +@all\nuser default off\nmasteruser %s\nmasterauth %s\n' \
        "$user" "$pass" "$user" "$pass" >>"$conf"
    fi
    # --dir first: nodes.conf (the cluster's own state file) lives there.
    redis-server "$conf" --dir "$dir/rcluster/$port" --port "$port" --bind 127.0.0.1 --save '' \
      --appendonly no --daemonize yes --pidfile "$dir/rcluster/$port/redis.pid" \
      --logfile "$dir/rcluster/$port/redis.log" --cluster-enabled yes \
      --cluster-config-file "nodes.conf" --cluster-node-timeout 2000 \
      --protected-mode yes >/dev/null || return 1
    nodes+=("127.0.0.1:$port")
  done
  if [ -n "$user" ]; then
    # redis-cli reads the password from the environment (not ps); local to this function.
    local -x REDISCLI_AUTH=$pass
    auth=(--user "$user")
  fi
  for i in 0 1 2 3 4 5; do
    port=$((base + i))
    local ok=0
    for _ in $(seq 1 100); do
      if [ "$(redis-cli "${auth[@]}" -p "$port" ping 2>/dev/null || true)" = PONG ]; then
        ok=1
        break
      fi
      sleep 0.05
    done
    [ $ok -eq 1 ] || { say "redis node $port did not start"; return 1; }
  done
  redis-cli "${auth[@]}" --cluster create "${nodes[@]}" --cluster-replicas 1 --cluster-yes \
    >"$dir/rcluster/create.log" 2>&1 || { cat "$dir/rcluster/create.log" >&2; return 1; }
  # Every node must agree on the slots and see all three replicas attached
  # (a failover test needs them) before clients rely on the slot map.
  for i in 0 1 2 3 4 5; do
    port=$((base + i))
    local ok=0
    for _ in $(seq 1 600); do
      # Whole outputs in variables: `grep -q` on a pipe can fail it (SIGPIPE, pipefail).
      local info nodes_out repl
      info=$(redis-cli "${auth[@]}" -p "$port" cluster info 2>/dev/null || true)
      nodes_out=$(redis-cli "${auth[@]}" -p "$port" cluster nodes 2>/dev/null || true)
      repl=$(redis-cli "${auth[@]}" -p "$port" info replication 2>/dev/null || true)
      if [[ $info == *cluster_state:ok* ]] &&
        [ "$(grep -cE '[ ,]slave ' <<<"$nodes_out")" -eq 3 ] &&
        [[ $repl == *connected_slaves:1* || $repl == *master_link_status:up* ]]; then
        ok=1
        break
      fi
      sleep 0.05
    done
    [ $ok -eq 1 ] || { say "redis cluster node $port not ready"; return 1; }
  done
  return 0
}

# redis_cluster_stop DIR: stops every node redis_cluster_start started there
# (SIGTERM by pid, SIGKILL after 5 s) and removes their state.
redis_cluster_stop() {
  local dir=$1 f pid
  [ -d "$dir/rcluster" ] || return 0
  local pids=()
  for f in "$dir"/rcluster/*/redis.pid; do
    # Read once: redis-server removes its pid file as it exits.
    pid=$(cat "$f" 2>/dev/null) || continue
    pids+=("$pid")
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    for _ in $(seq 1 100); do
      kill -0 "$pid" 2>/dev/null || break
      sleep 0.05
    done
    kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$dir/rcluster"
}

# A random hex secret.
mbox_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
