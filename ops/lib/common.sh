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
  libsystemd-dev systemd
  postgresql-15 redis-server curl util-linux iproute2 procps jq nginx openssl
  patroni etcd-server python3-etcd python3-psycopg2)

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

# ---- process liveness and supervision ----

# The state letter of process PID (R, S, D, T, Z, ...) from /proc/PID/stat;
# fails when there is no such process.
mbox_pid_state() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  printf '%s\n' "${stat%% *}"
}

# The start time of process PID (clock ticks after boot, /proc/PID/stat
# field 22): with the pid, it names one process (pids are reused).
mbox_pid_start() {
  local stat
  stat=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
  stat=${stat##*) }
  # after the comm: state is field 3, start time field 22
  # shellcheck disable=SC2086 # split into fields on purpose
  set -- $stat
  printf '%s\n' "${20}"
}

# mbox_alive PID [COMM]: PID runs, is no zombie (a process that died while
# its parent does not reap it still answers kill -0) and, when given, is
# COMM (a pid file left behind must not name a stranger that got the same
# pid).
mbox_alive() {
  local pid=${1:-} comm=${2:-} st
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  st=$(mbox_pid_state "$pid") || return 1
  case $st in Z | X | x) return 1 ;; esac
  [ -z "$comm" ] || [ "$(cat "/proc/$pid/comm" 2>/dev/null)" = "$comm" ]
}

# mbox_supervise NAME RUNDIR CMD...: runs CMD, and again whenever it exits,
# until the supervisor gets SIGTERM (or SIGINT). The child's pid is in
# RUNDIR/NAME.pid, the supervisor's own in RUNDIR/NAME.sup.pid, the number
# of restarts in RUNDIR/NAME.restarts. A restart waits 0.5 s, doubled
# (up to 8 s) each time the child lived less than 10 s. On SIGTERM the
# child gets SIGTERM, SIGKILL after MBOX_SUPERVISE_STOP_S (20) seconds,
# and the supervisor exits once it is gone. Runs in the foreground: start
# it with mbox_supervise_start. Log lines go to stderr.
mbox_supervise() {
  local name=$1 run=$2; shift 2
  local child="" stop=0 delay_ms=500 t0 st restarts=0 stop_s=${MBOX_SUPERVISE_STOP_S:-20}
  trap 'stop=1; [ -z "$child" ] || kill -TERM "$child" 2>/dev/null' TERM INT
  echo "$$" >"$run/$name.sup.pid"
  mbox_pid_start "$$" >"$run/$name.sup.start"
  echo 0 >"$run/$name.restarts"
  while [ $stop = 0 ]; do
    t0=$(date +%s%3N)
    "$@" </dev/null &
    child=$!
    echo "$child" >"$run/$name.pid"
    mbox_pid_start "$child" >"$run/$name.start" 2>/dev/null || true
    say "$(date -u +%FT%T.%3NZ) supervise: $name started (pid $child)"
    # wait returns early (status > 128) when a trapped signal arrives.
    st=0
    while :; do
      wait "$child" && st=0 || st=$?
      [ -d "/proc/$child" ] || break
      [ $stop = 0 ] || break
    done
    if [ $stop = 1 ]; then
      local i
      for ((i = 0; i < stop_s * 10; i++)); do
        mbox_alive "$child" || break
        sleep 0.1
      done
      kill -KILL "$child" 2>/dev/null || true
      wait "$child" 2>/dev/null || true
      break
    fi
    if [ $(($(date +%s%3N) - t0)) -ge 10000 ]; then delay_ms=500; fi
    say "$(date -u +%FT%T.%3NZ) supervise: $name (pid $child) exited with status $st; restart in ${delay_ms} ms"
    child=""
    sleep "$((delay_ms / 1000)).$(printf '%03d' $((delay_ms % 1000)))" &
    wait $! 2>/dev/null || true
    [ $stop = 0 ] || break
    restarts=$((restarts + 1))
    echo "$restarts" >"$run/$name.restarts"
    delay_ms=$((delay_ms * 2 > 8000 ? 8000 : delay_ms * 2))
  done
  rm -f "$run/$name.pid" "$run/$name.sup.pid" "$run/$name.start" "$run/$name.sup.start"
  say "$(date -u +%FT%T.%3NZ) supervise: $name stopped"
}

# mbox_supervise_start NAME RUNDIR LOGFILE CMD...: mbox_supervise detached
# (its own session, output appended to LOGFILE); returns once the child's
# pid file is written. Nothing is started when the supervisor of NAME runs.
mbox_supervise_start() {
  local name=$1 run=$2 log=$3; shift 3
  mbox_alive "$(cat "$run/$name.sup.pid" 2>/dev/null)" bash &&
    [ "$(mbox_pid_start "$(cat "$run/$name.sup.pid")")" = "$(cat "$run/$name.sup.start" 2>/dev/null)" ] && return 0
  rm -f "$run/$name.pid" "$run/$name.sup.pid" "$run/$name.start" "$run/$name.sup.start"
  # shellcheck disable=SC2016 # expanded by the inner bash
  setsid bash -c '. "$0" && mbox_supervise "$@"' "$MBOX_ROOT/ops/lib/common.sh" "$name" "$run" "$@" \
    </dev/null >>"$log" 2>&1 &
  local _
  for _ in $(seq 1 100); do
    [ -s "$run/$name.pid" ] && return 0
    sleep 0.02
  done
  say "supervisor of $name did not start (see $log)"
  return 1
}

# mbox_supervise_stop NAME RUNDIR: stops the supervisor (which stops the
# child) and waits for both; a child left without a supervisor (the
# supervisor was killed) gets SIGTERM, then SIGKILL, itself, if it is
# still the process the supervisor started (same start time).
mbox_supervise_stop() {
  local name=$1 run=$2 sup child start _
  sup=$(cat "$run/$name.sup.pid" 2>/dev/null) || sup=
  child=$(cat "$run/$name.pid" 2>/dev/null) || child=
  start=$(cat "$run/$name.start" 2>/dev/null) || start=
  [ -n "$start" ] && [ "$(mbox_pid_start "$child" 2>/dev/null)" = "$start" ] || child=
  start=$(cat "$run/$name.sup.start" 2>/dev/null) || start=
  [ -n "$start" ] && [ "$(mbox_pid_start "$sup" 2>/dev/null)" = "$start" ] || sup=
  if mbox_alive "$sup" bash; then
    kill -CONT "$sup" 2>/dev/null || true
    kill -TERM "$sup" 2>/dev/null || true
    for _ in $(seq 1 $((${MBOX_SUPERVISE_STOP_S:-20} * 10 + 50))); do
      mbox_alive "$sup" || break
      sleep 0.1
    done
    mbox_alive "$sup" && kill -KILL "$sup" 2>/dev/null
  fi
  if mbox_alive "$child"; then
    kill -TERM "$child" 2>/dev/null || true
    for _ in $(seq 1 100); do
      mbox_alive "$child" || break
      sleep 0.1
    done
    mbox_alive "$child" && kill -KILL "$child" 2>/dev/null
  fi
  rm -f "$run/$name.pid" "$run/$name.sup.pid" "$run/$name.start" "$run/$name.sup.start"
  return 0
}

# Runs CMD as the postgres user when we are root, replacing this process
# (setpriv execs: the pid stays the one a supervisor waits for).
as_pg_exec() {
  if [ "$(id -u)" -eq 0 ]; then
    exec setpriv --reuid=postgres --regid=postgres --init-groups --reset-env -- "$@"
  else
    exec "$@"
  fi
}

# A random hex secret.
mbox_secret() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }

# ---- the demo data of ops/run ----

# mbox_demo_seed STATE_DIR: the demo data ops/run shows (a message to user 9
# of app 1, and a published notice for every user of app 1), written once.
# Needs MBOX_INTERNAL_URL, MBOX_SERVER_KEY and MBOX_OPS_TOKEN (var/stack.env).
# Running it again adds nothing: the message carries a fixed msgkey (a
# re-send answers duplicate:true), and the notice's id is kept in
# STATE_DIR/demo-notice.id; while that notice exists it is not created
# again (a wiped database gets a new one). Prints one line per step.
mbox_demo_seed() {
  local dir=$1 body id=
  body=$(curl -fsS -H "Authorization: Bearer $MBOX_SERVER_KEY" \
    -d '{"app_id":"1","from_uid":"7","to_uids":["9"],"content":"hello from ops/run","msgkey":"ops-run-demo-hello"}' \
    "$MBOX_INTERNAL_URL/v1/messages") || { say "demo: the send failed"; return 1; }
  printf '  send      -> %s\n' "$body"
  [ -f "$dir/demo-notice.id" ] && id=$(cat "$dir/demo-notice.id")
  if [[ $id =~ ^[0-9]+$ ]] && curl -fsS -o /dev/null -H "Authorization: Bearer $MBOX_OPS_TOKEN" \
    "$MBOX_INTERNAL_URL/v1/notices/$id" 2>/dev/null; then
    printf '  notice    -> %s (created by an earlier ops/run; not added again)\n' "$id"
    return 0
  fi
  id=$(curl -fsS -H "Authorization: Bearer $MBOX_OPS_TOKEN" \
    -d '{"app_id":"1","title":"Welcome","content":"a notice stored once for every user"}' \
    "$MBOX_INTERNAL_URL/v1/notices" | sed -n 's/.*"notice_id":"\([0-9]*\)".*/\1/p')
  [ -n "$id" ] || { say "demo: could not create the notice"; return 1; }
  body=$(curl -fsS -X POST -H "Authorization: Bearer $MBOX_OPS_TOKEN" \
    "$MBOX_INTERNAL_URL/v1/notices/$id/publish") || { say "demo: could not publish notice $id"; return 1; }
  printf '%s\n' "$id" >"$dir/demo-notice.id"
  printf '  publish   -> notice %s, %s\n' "$id" "$(printf '%s' "$body" | sed -n 's/.*"state":"\([a-z]*\)".*/state \1/p')"
}
