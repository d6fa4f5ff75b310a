# shellcheck shell=bash
# tests/cluster/lib.sh: what the cluster tests share (run_cluster.sh,
# redis_failover.sh). Sourced at the top of a test, after it set
#
#   CT_NAME   the suite name of the summary line ("cluster", ...)
#   CT_LIMIT  the time limit in seconds (the watchdog's)
#
# Sourcing it picks a free port range, makes a temporary directory, exports
# the environment of `ops/run cluster` (MBOX_CLUSTER_DIR, MBOX_*_PORT,
# MBOX_CLUSTER_*_PORT) and sources ops/lib/cluster.sh with it (cl_* helpers).
# Then:
#
#   ct_start        trap (cleanup at exit, summary on the watchdog's TERM),
#                   watchdog, `ops/run cluster`; loads stack.env and the
#                   secrets (PG_PASSWORD, REDIS_PASSWORD, SERVER_KEY...)
#   ok, fail, check, skip, summary
#                   one line per check; summary prints the Check-style line
#                   ("NAME: 100%: Checks: N, Failures: 0, Errors: 0") and
#                   returns non-zero when anything failed
#   CT_PIDS         processes of the test (clients, load): stopped (SIGCONT
#                   then SIGTERM, by pid) at exit
#
# Ports: B..B+4 haproxy fronts, stats, demo; logicd-1/lcsd-1 B+10..B+21,
# logicd-2/lcsd-2 B+110..B+121; Redis B+30..B+36 (cluster bus: +10000);
# PostgreSQL pg0a, pg0b, pg1a, pg1b B+40..B+43, their Patroni REST APIs
# B+50..B+53, etcd B+60 (client) and B+61 (peer). All stay below the
# kernel's ephemeral range (32768..), where the other suites' free ports
# come from.
#
# check evaluates its condition, given in single quotes on purpose.
# shellcheck disable=SC2034
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
# shellcheck source=../../ops/lib/common.sh
. "$ROOT/ops/lib/common.sh"

BUILD=${MBOX_BUILD:-build}
MBOX_CLI=$ROOT/$BUILD/services/client/mbox
CT_NAME=${CT_NAME:-cluster}
CT_LIMIT=${CT_LIMIT:-300}
CT_PIDS=()

# watch NAME WS-URL TOKEN: `mbox watch` in the background, syncing through
# $MBOX_SDK_URL (haproxy), its output in $DIR/NAME.out and NAME.err; its
# pid in WPID[NAME] (stopped at exit with the others).
declare -A WPID
watch() {
  "$MBOX_CLI" watch --ws "$2" --sdk "$MBOX_SDK_URL" --token "$3" --device "$1" --log-level debug \
    >"$DIR/$1.out" 2>"$DIR/$1.err" &
  WPID[$1]=$!
  CT_PIDS+=($!)
}

wait_grep() { # seconds fixed-string file: true once the file holds the string
  local _
  for _ in $(seq 1 $(($1 * 10))); do
    grep -qF -- "$2" "$3" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}

checks=0 failures=0 errors=0
skipped=()
ok() { checks=$((checks + 1)); printf '  ok    %s\n' "$*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); printf '  FAIL  %s\n' "$*"; }
check() { # description 'shell condition' (evaluated here)
  if eval "$2"; then ok "$1"; else fail "$1"; fi
}
skip() { skipped+=("$1"); printf '  SKIP  %s\n' "$1"; }

summary() {
  local pct=100 st=0
  [ "$checks" -gt 0 ] && pct=$(((checks - failures) * 100 / checks))
  [ "$errors" -gt 0 ] && pct=0
  printf '%s: %d%%: Checks: %d, Failures: %d, Errors: %d' "$CT_NAME" "$pct" "$checks" "$failures" "$errors"
  [ ${#skipped[@]} -eq 0 ] || printf ', Skipped: %d' ${#skipped[@]}
  printf '\n'
  [ "$failures" -eq 0 ] && [ "$errors" -eq 0 ] || st=1
  return $st
}

port_free() {
  local l
  l=$(ss -Htln "( sport = :$1 )" 2>/dev/null) || return 1
  [ -z "$l" ]
}
pick_base() {
  local b o all
  for _ in $(seq 1 50); do
    b=$((20000 + (RANDOM % 20) * 100))
    all=1
    for o in 0 1 2 3 4 10 11 20 21 110 111 120 121 30 31 32 33 34 35 36 40 41 42 43 \
      50 51 52 53 60 61 10030 10031 10032 10033 10034 10035; do
      port_free $((b + o)) || { all=0; break; }
    done
    [ $all -eq 1 ] && { echo "$b"; return 0; }
  done
  return 1
}

mbox_install_deps haproxy redis-server postgresql-15 curl iproute2 jq patroni etcd-server \
  python3-etcd python3-psycopg2
B=$(pick_base) || { errors=1; say "no free port range"; summary; exit 1; }
DIR=$(mktemp -d "/tmp/mbox-$CT_NAME.XXXXXX")
export MBOX_CLUSTER_DIR=$DIR MBOX_BUILD=$BUILD MBOX_CLUSTER_BUILD=0
export MBOX_SDK_PORT=$B MBOX_INTERNAL_PORT=$((B + 1)) MBOX_WS_PORT=$((B + 2))
export MBOX_HAPROXY_STATS_PORT=$((B + 3)) MBOX_DEMO_PORT=$((B + 4))
export MBOX_CLUSTER_NODE_PORT=$((B - 170)) MBOX_CLUSTER_REDIS_PORT=$((B + 30))
export MBOX_CLUSTER_PG_PORT=$((B + 40)) MBOX_CLUSTER_PATRONI_PORT=$((B + 50))
export MBOX_CLUSTER_ETCD_PORT=$((B + 60))
# fsync off: the tests kill processes, not the machine. full_page_writes
# stays on (pg_rewind needs it when a killed primary rejoins).
export MBOX_CLUSTER_PG_OPTS="fsync=off"
unset MBOX_STACK_ENV
# The helpers of ops/run cluster (ports, pid checks, psql) with this environment.
# shellcheck source=../../ops/lib/cluster.sh
. "$ROOT/ops/lib/cluster.sh"

ct_cleanup() {
  local p
  for p in "${CT_PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  if [ -n "${WATCHDOG:-}" ]; then kill "$WATCHDOG" 2>/dev/null || true; fi
  "$ROOT/ops/run" cluster stop >/dev/null 2>&1 || true
  local d
  for d in "$DIR"/pg??; do "$ROOT/ops/servers" pg-stop "$d" 2>/dev/null || true; done
  if [ "${MBOX_CLUSTER_KEEP:-0}" = 1 ]; then say "kept $DIR"; else rm -rf "$DIR"; fi
}

# Starts the cluster; on failure prints its logs, the summary, and exits 1.
ct_start() {
  trap ct_cleanup EXIT
  trap 'say "$CT_NAME test: time limit (${CT_LIMIT}s) reached"; errors=$((errors + 1)); summary; exit 1' TERM
  # The watchdog: TERM to this script after CT_LIMIT seconds (its sleep goes with it).
  local main=$$
  # shellcheck disable=SC2030,SC2031
  (
    trap 'kill "$s" 2>/dev/null; exit 0' TERM
    sleep "$CT_LIMIT" &
    s=$!
    wait "$s" && kill -TERM "$main"
  ) 2>/dev/null &
  WATCHDOG=$!

  say "== $CT_NAME: ops/run cluster in $DIR, ports $B.."
  if ! "$ROOT/ops/run" cluster >"$DIR/start.log" 2>&1; then
    sed 's/^/    /' "$DIR/start.log"
    tail -20 "$DIR"/log/*.log "$DIR"/rcluster/*/redis.log 2>/dev/null | sed 's/^/    /' || true
    errors=1
    summary || exit 1
  fi
  [ "${CT_QUIET_START:-0}" = 1 ] || sed 's/^/    /' "$DIR/start.log"
  ok "ops/run cluster started haproxy, 2 logicd, 2 lcsd, 6 Redis nodes, etcd, 2 PostgreSQL pairs (Patroni)"
  # shellcheck source=/dev/null
  . "$DIR/stack.env"
  cl_load_secrets # PG_PASSWORD, REDIS_PASSWORD for psql and redis-cli
}

# Users UID_FROM.. of app 1 on SHARD (0 or 1) from the bucket map, N of them.
ct_users_on_shard() { # shard n [uid_from]
  cl_psql 0 -c "SELECT u FROM generate_series(${3:-1001}, ${3:-1001} + 100000) u
    JOIN bucket_map ON bucket = mbox_bucket(1, u) WHERE shard = $1 ORDER BY u LIMIT $2"
}

# ct_start_load TAG: tests/cluster/load.mjs (senders with msgkey retries,
# syncers through haproxy and each logicd) for USERS, its files in $DIR;
# waits until it is ready (a "load running" check) and then BEFORE_S
# seconds. LOAD_PID is the load's pid; on failure the summary ends the test.
ct_start_load() {
  LOAD_INTERNAL=$MBOX_INTERNAL_URL LOAD_KEY=$SERVER_KEY LOAD_USERS=$(IFS=,; echo "${USERS[*]}") \
    LOAD_SDK="hap=$MBOX_SDK_URL,logicd-1=http://127.0.0.1:$(cl_sdk_port 1),logicd-2=http://127.0.0.1:$(cl_sdk_port 2)" \
    LOAD_SENDERS=${MBOX_FAILOVER_SENDERS:-4} LOAD_LIMIT=5 LOAD_OUT=$DIR/load.json LOAD_READY=$DIR/load.ready \
    LOAD_FAULT=$DIR/fault.json LOAD_RUN="$1$$" \
    node "$ROOT/tests/cluster/load.mjs" >"$DIR/load.log" 2>&1 &
  LOAD_PID=$!
  CT_PIDS+=("$LOAD_PID")
  local ready=0
  for _ in $(seq 1 150); do
    [ -f "$DIR/load.ready" ] && { ready=1; break; }
    kill -0 "$LOAD_PID" 2>/dev/null || break
    sleep 0.1
  done
  check "load running (${MBOX_FAILOVER_SENDERS:-4} senders, syncers through haproxy, logicd-1, logicd-2)" "[ $ready = 1 ]"
  if [ $ready != 1 ]; then
    sed 's/^/    /' "$DIR/load.log"
    summary || exit 1
  fi
  sleep "$BEFORE_S"
}
