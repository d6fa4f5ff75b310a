#!/usr/bin/env bash
# tests/cluster/run_cluster.sh: `ops/run cluster` end to end, on free ports
# and in a temporary directory (nothing collides with a running dev stack):
#
#   * start: haproxy over two logicd and two lcsd, a Redis Cluster, two
#     PostgreSQL shards; var/stack.env has the variables of ops/run plus
#     MBOX_REDIS_NODES and MBOX_PG_SHARDS;
#   * through haproxy: a token, sends to two users on different shards (the
#     rows land on their shard), syncs through haproxy and each logicd;
#   * WebSocket: `mbox watch` clients on each lcsd (directly and through
#     haproxy) get a notify when the send goes through the other logicd;
#   * `ops/run cluster status`;
#   * gray release: a prepublished notice reaches a whitelisted user through
#     each logicd (each polls the public database), not another user;
#     once published, it reaches that user through each logicd;
#   * faults (MBOX_CLUSTER_FAULT=0 skips them): kill -9 one logicd and the
#     lcsd a client is connected to, their supervisors stopped first (so
#     they stay dead, as zombies nobody reaps); requests through haproxy
#     keep succeeding, before and after haproxy marks them down, the client
#     reconnects to the other lcsd and catches up by sync, and status calls
#     the zombies dead; then the supervisors go on: both daemons run again
#     and haproxy marks them up;
#   * `ops/run cluster stop`: nothing it started still runs.
#
# Prints one line per check and a summary line in the form of the Check
# suites ("cluster: 100%: Checks: N, Failures: 0, Errors: 0"), plus one
# SKIP line per check that a missing piece prevents. Exit status 0 when
# nothing failed. MBOX_BUILD (default build) names the build directory;
# it must be built (ops/test builds it first). The whole run is bounded by
# MBOX_CLUSTER_TEST_TIMEOUT seconds (default 420).
#
# check evaluates its condition, given in single quotes on purpose; some
# variables are read only there.
# shellcheck disable=SC2016,SC2034
set -euo pipefail
CT_NAME=cluster CT_LIMIT=${MBOX_CLUSTER_TEST_TIMEOUT:-420}
# The shared start, ports, checks and cleanup (ROOT, BUILD, MBOX_CLI, DIR,
# B, ok/fail/check/skip/summary, ct_start, CT_PIDS, the cl_* helpers).
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
FAULT=${MBOX_CLUSTER_FAULT:-1}

ct_start

# --- stack.env: every variable of ops/run's, plus the cluster's
want=$(sed -n 's/^export \(MBOX_[A-Z_]*\)=.*/\1/p' "$ROOT/ops/run" | sort -u)
have=$(sed -n 's/^export \(MBOX_[A-Z_]*\)=.*/\1/p' "$DIR/stack.env" | sort -u)
absent=$(comm -23 <(printf '%s\n' "$want") <(printf '%s\n' "$have") | tr '\n' ' ')
check "stack.env has every variable of ops/run's (missing: ${absent:-none})" '[ -z "$absent" ]'
check "MBOX_REDIS_NODES names the 6 Redis nodes" \
  '[ "$(tr , "\n" <<<"$MBOX_REDIS_NODES" | grep -c "^127\.0\.0\.1:[0-9]*$")" -eq 6 ]'
read -r -a SHARD_URIS <<<"$MBOX_PG_SHARDS"
check "MBOX_PG_SHARDS: 2 postgresql:// URIs, the public database (pg_conninfo) first" \
  '[ ${#SHARD_URIS[@]} -eq 2 ] && [[ ${SHARD_URIS[0]} == postgresql://* ]] &&
   grep -qF "pg_conninfo = \"${SHARD_URIS[0]}\"" "$DIR/logicd-1.conf"'
check "MBOX_SDK_URL, MBOX_INTERNAL_URL, MBOX_WS_URL are haproxy's fronts" \
  '[ "$MBOX_SDK_URL" = "http://127.0.0.1:$B" ] && [ "$MBOX_INTERNAL_URL" = "http://127.0.0.1:$((B + 1))" ] &&
   [ "$MBOX_WS_URL" = "ws://127.0.0.1:$((B + 2))/ws" ]'

REDIS_OK=0 SHARDS_OK=0
if cl_redis_cluster_ok; then REDIS_OK=1; fi
if cl_pg_shards_ok; then SHARDS_OK=1; fi
if [ $REDIS_OK = 1 ]; then
  check "the daemons' configs name the Redis Cluster and its ACL user" \
    'grep -qx "redis_nodes = $MBOX_REDIS_NODES" "$DIR/lcsd-2.conf" && grep -qx "redis_user = mbox" "$DIR/logicd-1.conf"'
else
  skip "Redis Cluster in the daemons: $BUILD's logicd/lcsd have no redis_nodes key (lib/redis cluster support not in yet); they ran on a standalone Redis"
fi

# --- two users on different shards
U1=1001 U2=1002
if [ $SHARDS_OK = 1 ]; then
  check "logicd --migrate wrote a bucket map of 4096 buckets over 2 shards" \
    '[ "$(cl_psql 0 -F " " -c "SELECT count(*), count(DISTINCT shard) FROM bucket_map")" = "4096 2" ]'
  pick() { cl_psql 0 -c "SELECT u FROM generate_series(1001, 3000) u
    JOIN bucket_map ON bucket = mbox_bucket(1, u) WHERE shard = $1 ORDER BY u LIMIT 1"; }
  U1=$(pick 0 2>/dev/null) || true
  U2=$(pick 1 2>/dev/null) || true
  check "users $U1 (shard 0) and $U2 (shard 1) chosen from the bucket map" '[ -n "$U1" ] && [ -n "$U2" ]'
  U1=${U1:-1001} U2=${U2:-1002}
else
  skip "PostgreSQL sharding: $BUILD's logicd has no pg_shards key (logicd sharding not in yet); users $U1 and $U2 both live in pg0"
fi

H_INT=$MBOX_INTERNAL_URL H_SDK=$MBOX_SDK_URL
post() { # url bearer body -> body on stdout, fails on a non-2xx
  curl -fsS --max-time 5 -H "Authorization: Bearer $2" -d "$3" "$1"
}
token() { post "$H_INT/v1/tokens" "$MBOX_SERVER_KEY" "{\"app_id\":\"1\",\"uid\":\"$1\",\"ttl_s\":3600}" |
  sed -n 's/.*"token":"\([^"]*\)".*/\1/p'; }
send() { # internal-url content uid...
  local url=$1 content=$2 uids
  shift 2
  uids=$(printf '"%s",' "$@")
  post "$url/v1/messages" "$MBOX_SERVER_KEY" \
    "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[${uids%,}],\"content\":\"$content\"}"
}
sync_has() { # sdk-url token content
  post "$1/v1/sync" "$2" '{"cursor":"","limit":500}' | grep -qF "\"content\":\"$3\""
}
direct_sdk() { echo "http://127.0.0.1:$(cl_sdk_port "$1")"; }
direct_int() { echo "http://127.0.0.1:$(cl_internal_port "$1")"; }

T1=$(token "$U1") || true
T2=$(token "$U2") || true
check "user tokens through haproxy (internal front)" '[ -n "$T1" ] && [ -n "$T2" ]'
check "send to user $U1 through haproxy" 'send "$H_INT" to-one "$U1" >/dev/null'
check "send to user $U2 through haproxy" 'send "$H_INT" to-two "$U2" >/dev/null'
body=$(send "$H_INT" to-both "$U1" "$U2" || true)
check "one send to both users (two shards) through haproxy: two msg_ids" \
  '[ "$(grep -o "\"msg_id\"" <<<"$body" | wc -l)" -eq 2 ]'
if [ $SHARDS_OK = 1 ]; then
  rows() { cl_psql "$1" -c "SELECT count(*) FROM message WHERE app_id = 1 AND uid = $2"; }
  check "user $U1's rows are on shard 0 only" '[ "$(rows 0 "$U1")" = 2 ] && [ "$(rows 1 "$U1")" = 0 ]'
  check "user $U2's rows are on shard 1 only" '[ "$(rows 1 "$U2")" = 2 ] && [ "$(rows 0 "$U2")" = 0 ]'
fi
for u in 1 2; do
  tok=T$u uid=U$u
  check "sync of user ${!uid} through haproxy" 'sync_has "$H_SDK" "${!tok}" to-both'
  for i in 1 2; do
    check "sync of user ${!uid} through logicd-$i directly" 'sync_has "$(direct_sdk "$i")" "${!tok}" to-both'
  done
done

# --- WebSocket: a notify crosses from one node to the other
if [ ! -x "$MBOX_CLI" ]; then
  errors=$((errors + 1))
  say "no $MBOX_CLI"
  summary || exit 1
fi
lcsd_conns() {
  curl -fsS --max-time 2 "http://127.0.0.1:$(cl_admin_port "$1")/healthz" |
    sed -n 's/.*"connections":\([0-9]*\).*/\1/p'
}
U3=1003
T3=$(token "$U3") || true
watch hap "$MBOX_WS_URL" "$T3"
check "a client logs in through haproxy's WebSocket front" 'wait_grep 10 mbox_client_online "$DIR/hap.err"'
if [ "$(lcsd_conns 1)" = 1 ]; then X=1 Y=2; else X=2 Y=1; fi
check "haproxy put it on one lcsd (lcsd-$X: $(lcsd_conns "$X"), lcsd-$Y: $(lcsd_conns "$Y"))" \
  '[ "$(lcsd_conns "$X")" = 1 ] && [ "$(lcsd_conns "$Y")" = 0 ]'
watch one "ws://127.0.0.1:$(cl_ws_port 1)/ws" "$T1"
watch two "ws://127.0.0.1:$(cl_ws_port 2)/ws" "$T2"
check "clients log in on lcsd-1 and lcsd-2 directly" \
  'wait_grep 10 mbox_client_online "$DIR/one.err" && wait_grep 10 mbox_client_online "$DIR/two.err"'
send "$(direct_int 2)" n-one "$U1" >/dev/null || true
send "$(direct_int 1)" n-two "$U2" >/dev/null || true
send "$(direct_int "$Y")" n-hap "$U3" >/dev/null || true
check "client on lcsd-1, send via logicd-2: notified, pulled" 'wait_grep 5 "\"content\":\"n-one\"" "$DIR/one.out"'
check "client on lcsd-2, send via logicd-1: notified, pulled" 'wait_grep 5 "\"content\":\"n-two\"" "$DIR/two.out"'
check "client via haproxy on lcsd-$X, send via logicd-$Y: notified, pulled" \
  'wait_grep 5 "\"content\":\"n-hap\"" "$DIR/hap.out"'
check "by a notify frame (the client logged mbox_client_notify)" 'grep -q mbox_client_notify "$DIR/hap.err"'

# --- status
nprocs=$(cl_procs | wc -l)
st=0
"$ROOT/ops/run" cluster status >"$DIR/status.log" 2>&1 || st=$?
sed 's/^/    /' "$DIR/status.log"
check "ops/run cluster status: exit 0, all $nprocs processes alive" \
  '[ $st -eq 0 ] && [ "$(grep -c " alive$" "$DIR/status.log")" -eq "$nprocs" ]'
check "status lists 3 Redis masters with their slots and a replica each" \
  '[ "$(grep -c "^  master .* slots [0-9].*replicas: 127" "$DIR/status.log")" -eq 3 ]'
check "status lists 6 haproxy servers UP" '[ "$(grep -cE " UP$" "$DIR/status.log")" -eq 6 ]'
if [ $SHARDS_OK = 1 ]; then
  check "status lists the buckets of each shard" \
    '[ "$(grep -c "^    shard [01]: [0-9]* buckets" "$DIR/status.log")" -eq 2 ]'
fi

# --- gray release: each logicd polls the public database on its own
ops() { # method path [body] -> body on stdout, fails on a non-2xx
  curl -fsS --max-time 5 -X "$1" -H "Authorization: Bearer $MBOX_OPS_TOKEN" ${3:+-d "$3"} "$H_INT$2"
}
has_notice() { # sdk-url token notice_id
  post "$1/v1/sync" "$2" '{"cursor":"","limit":500}' | grep -qF "\"notice_id\":\"$3\""
}
wait_notice() { # seconds sdk-url token notice_id: seen within the time
  local _
  for _ in $(seq 1 $(($1 * 5))); do
    has_notice "$2" "$3" "$4" && return 0
    sleep 0.2
  done
  return 1
}
NID=$(ops POST /v1/notices '{"app_id":"1","title":"gray","content":"gray release"}' |
  sed -n 's/.*"notice_id":"\([0-9]*\)".*/\1/p') || true
check "a notice created (id ${NID:-none}), user $U1 put on the whitelist" \
  '[ -n "$NID" ] && ops POST /v1/whitelist "{\"app_id\":\"1\",\"uids\":[\"$U1\"]}" >/dev/null'
NID=${NID:-0}
check "prepublish" 'ops POST "/v1/notices/$NID/prepublish" | grep -q "\"state\":\"prepublished\""'
for i in 1 2; do
  check "prepublished: whitelisted user $U1 syncs it through logicd-$i within 5 s" \
    'wait_notice 5 "$(direct_sdk "$i")" "$T1" "$NID"'
done
for i in 1 2; do
  check "prepublished: user $U2 (not whitelisted) does not get it through logicd-$i" \
    '! has_notice "$(direct_sdk "$i")" "$T2" "$NID"'
done
check "publish" 'ops POST "/v1/notices/$NID/publish" | grep -q "\"state\":\"published\""'
for i in 1 2; do
  check "published: user $U2 syncs it through logicd-$i within 5 s" 'wait_notice 5 "$(direct_sdk "$i")" "$T2" "$NID"'
done

# --- faults
server_status() { cl_haproxy_servers | awk -v b="$1" -v s="$2" '$1 == b && $2 == s { print $3 }'; }
through_haproxy() { # N rounds of token + send + sync through haproxy; all must succeed
  local i t
  for i in $(seq 1 "$1"); do
    t=$(token 1004) || return 1
    [ -n "$t" ] || return 1
    send "$H_INT" "fault-$i" 1004 >/dev/null || return 1
    sync_has "$H_SDK" "$t" "fault-$i" || return 1
  done
}
if [ "$FAULT" = 0 ]; then
  skip "fault checks (MBOX_CLUSTER_FAULT=0)"
else
  say "== cluster: kill -9 logicd-1 and lcsd-$X"
  # The client through haproxy is frozen first: the message sent while its
  # lcsd is dead can then only reach it by the sync after its reconnection.
  kill -STOP "${WPID[hap]}"
  L1=$(cl_pidof "$DIR/run/logicd-1.pid") LX=$(cl_pidof "$DIR/run/lcsd-$X.pid")
  # Their supervisors are stopped first: the daemons stay dead (zombies,
  # since nobody reaps them) instead of being restarted at once.
  SUPS=("$(cl_pidof "$DIR/run/logicd-1.sup.pid")" "$(cl_pidof "$DIR/run/lcsd-$X.sup.pid")")
  kill -STOP "${SUPS[@]}"
  kill -9 "$L1" "$LX"
  check "requests through haproxy succeed at once (refused connections are redispatched)" 'through_haproxy 5'
  check "send to the frozen client's user while its lcsd is dead" 'send "$H_INT" while-away "$U3" >/dev/null'
  down=0
  for _ in $(seq 1 100); do
    if [[ $(server_status logicd_sdk logicd-1) == DOWN* && $(server_status logicd_internal logicd-1) == DOWN* &&
      $(server_status lcsd_ws "lcsd-$X") == DOWN* ]]; then
      down=1
      break
    fi
    sleep 0.1
  done
  check "haproxy marks logicd-1 (both fronts) and lcsd-$X down within 10 s" '[ $down = 1 ]'
  check "requests through haproxy succeed once they are down" 'through_haproxy 10'
  kill -CONT "${WPID[hap]}"
  check "the client reconnects through haproxy (connects=2)" 'wait_grep 15 connects=2 "$DIR/hap.err"'
  check "to lcsd-$Y" '[ "$(lcsd_conns "$Y")" -ge 2 ]'
  check "and catches up by sync: it printed the message sent while it was away" \
    'wait_grep 10 "\"content\":\"while-away\"" "$DIR/hap.out"'
  send "$H_INT" after-failover "$U3" >/dev/null || true
  check "a new notify reaches it on lcsd-$Y" 'wait_grep 5 "\"content\":\"after-failover\"" "$DIR/hap.out"'
  st=0
  "$ROOT/ops/run" cluster status >"$DIR/status2.log" 2>&1 || st=$?
  grep -E '^  (logicd|lcsd)-|DOWN' "$DIR/status2.log" | sed 's/^/    /'
  check "status says logicd-1 and lcsd-$X are dead, zombies (exit 3), nothing else" \
    '[ $st -eq 3 ] && grep -q "^  logicd-1 .* dead (zombie)" "$DIR/status2.log" &&
     grep -q "^  lcsd-$X .* dead (zombie)" "$DIR/status2.log" && [ "$(grep -c " dead " "$DIR/status2.log")" -eq 2 ]'
  check "status shows them DOWN in haproxy" '[ "$(grep -c " DOWN" "$DIR/status2.log")" -eq 3 ]'
  kill -CONT "${SUPS[@]}"
  back=0
  for _ in $(seq 1 100); do
    if cl_alive "$(cl_pidof "$DIR/run/logicd-1.pid")" logicd && cl_alive "$(cl_pidof "$DIR/run/lcsd-$X.pid")" lcsd &&
      [ "$(cl_haproxy_servers | grep -c " UP$")" -eq 6 ]; then
      back=1
      break
    fi
    sleep 0.2
  done
  check "their supervisors go on: logicd-1 and lcsd-$X run again (new pids), haproxy marks them UP within 20 s" \
    '[ $back = 1 ] && [ "$(cl_pidof "$DIR/run/logicd-1.pid")" != "$L1" ] && [ "$(cl_pidof "$DIR/run/lcsd-$X.pid")" != "$LX" ]'
fi

# --- stop
for p in "${CT_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
CT_PIDS=()
pids=()
while read -r name pidfile comm; do
  p=$(cl_pidof "$pidfile" 2>/dev/null) || continue
  pids+=("$p:$comm:$name")
done < <(cl_procs)
"$ROOT/ops/run" cluster stop >"$DIR/stop.log" 2>&1 || true
left=""
for e in "${pids[@]}"; do
  IFS=: read -r p comm name <<<"$e"
  if cl_alive "$p" "$comm"; then left+=" $name($p)"; fi
done
check "ops/run cluster stop: none of its ${#pids[@]} processes still runs${left:+ (left:$left)}" '[ -z "$left" ]'
busy=""
while read -r port _; do port_free "$port" || busy+=" $port"; done < <(cl_ports)
check "every port it used is free again${busy:+ (busy:$busy)}" '[ -z "$busy" ]'

summary
