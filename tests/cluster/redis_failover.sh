#!/usr/bin/env bash
# tests/cluster/redis_failover.sh: a Redis master of `ops/run cluster` dies
# under load (the cluster as run_cluster.sh starts it, on free ports in a
# temporary directory):
#
#   * load (tests/cluster/load.mjs): senders through haproxy's internal front
#     to 20 users over both PostgreSQL shards, every send with a unique
#     msgkey and retried with the same msgkey until acknowledged; syncers
#     following every user's cursor with limit 5 through haproxy and through
#     each logicd directly;
#   * fault: kill -9 of the Redis master owning the slot of a user's hint and
#     route keys; its replica's promotion is watched (ROLE, every 100 ms);
#     the load goes on for MBOX_FAILOVER_AFTER_S (10) seconds after it;
#   * WebSocket: two `mbox watch` clients (one on each lcsd) of a user
#     whose route and hint keys are on that master; a quiet user there too,
#     with a cursor at its hint, sent one message just before the kill;
#   * checks: the replica took over; sends and syncs through haproxy succeed
#     again within 5 s of the promotion; no daemon died; every acknowledged
#     message is in its user's mailbox exactly once, with the acknowledged
#     msg_id, both in the cursor streams followed during the load and in
#     streams read afresh from the empty cursor (through haproxy and each
#     logicd); each stream's msg_ids ascend strictly; a message acknowledged
#     before another was sent has the smaller msg_id; the WebSocket clients
#     are notified of a send after the promotion and by then hold the
#     message sent while the master was dead (its notify may have been
#     lost: notifies are at most once, the next sync recovers it); the
#     quiet user's cursor gets the message sent just before the kill.
#
# Prints the figures (unavailability, retried sends, counts), one line per
# check and the Check-style summary line ("redis_failover: 100%: Checks: N,
# Failures: 0, Errors: 0"); exit status 0 when nothing failed. MBOX_BUILD
# (default build) names the build directory, which must be built. The run is
# bounded by MBOX_FAILOVER_TEST_TIMEOUT seconds (default 360); it takes
# about a minute. MBOX_CLUSTER_KEEP=1 keeps the directory (logs, load.json).
#
# shellcheck disable=SC2016,SC2034
set -euo pipefail
CT_NAME=redis_failover CT_LIMIT=${MBOX_FAILOVER_TEST_TIMEOUT:-360} CT_QUIET_START=1
export MBOX_CLUSTER_QUIET=1 MBOX_CLUSTER_DEMO=0
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
BEFORE_S=${MBOX_FAILOVER_BEFORE_S:-4}
AFTER_S=${MBOX_FAILOVER_AFTER_S:-10}
NUSERS=20

ms() { date +%s%3N; }
ct_start

if ! cl_redis_cluster_ok; then
  skip "Redis failover: $BUILD's logicd/lcsd have no redis_nodes (they run on a standalone Redis)"
  summary
  exit
fi

# --- users over both shards
USERS=()
if cl_pg_shards_ok; then
  mapfile -t USERS < <(ct_users_on_shard 0 $((NUSERS / 2)) 2001; ct_users_on_shard 1 $((NUSERS / 2)) 2001)
else
  skip "PostgreSQL sharding: $BUILD's logicd has no pg_shards; every user is on shard 0"
  mapfile -t USERS < <(seq 2001 $((2000 + NUSERS)))
fi
check "$NUSERS users (${USERS[*]:0:3} ...), half on each shard" '[ ${#USERS[@]} -eq $NUSERS ]'

# --- the victim: the master owning the slot of the first user's hint key
rcli() { cl_redis_cli -p "$@" 2>/dev/null; }
nodes=$(rcli "$CL_REDIS_PORT" cluster nodes) || nodes=
slot=$(rcli "$CL_REDIS_PORT" cluster keyslot "hint:{1:${USERS[0]}}") || slot=0
MID='' MPORT=''
# id addr flags master ping pong epoch link slots...
read -r MID MPORT < <(awk -v s="$slot" '$3 ~ /master/ {
    for (i = 9; i <= NF; i++) { n = split($i, r, "-"); lo = r[1]; hi = (n == 2 ? r[2] : r[1])
      if (s + 0 >= lo + 0 && s + 0 <= hi + 0) { a = $2; sub(/@.*/, "", a); sub(/.*:/, "", a); print $1, a } } }' \
  <<<"$nodes") || true
RPORT=$(awk -v m="$MID" '$4 == m { a = $2; sub(/@.*/, "", a); sub(/.*:/, "", a); print a }' <<<"$nodes" | head -1)
MPID=$(cl_pidof "$DIR/rcluster/$MPORT/redis.pid" 2>/dev/null) || MPID=
check "slot $slot (hint:{1:${USERS[0]}}, route:{1:${USERS[0]}}) is on master :${MPORT:-?} (pid ${MPID:-?}), replica :${RPORT:-?}" \
  '[ -n "$MPORT" ] && [ -n "$RPORT" ] && cl_alive "$MPID" redis-server &&
   [ "$(rcli "$RPORT" role | head -1)" = slave ]'
if [ -z "$MPORT" ] || [ -z "$RPORT" ] || [ -z "$MPID" ]; then
  errors=$((errors + 1))
  printf '%s\n' "$nodes" | sed 's/^/    /'
  summary || exit 1
fi
on_victim=0
for u in "${USERS[@]}"; do
  s=$(rcli "$CL_REDIS_PORT" cluster keyslot "hint:{1:$u}") || continue
  awk -v s="$s" -v m="$MID" '$1 == m { for (i = 9; i <= NF; i++) { n = split($i, r, "-"); hi = (n == 2 ? r[2] : r[1])
      if (s + 0 >= r[1] + 0 && s + 0 <= hi + 0) f = 1 } } END { exit !f }' <<<"$nodes" && on_victim=$((on_victim + 1))
done
say "  $on_victim of the $NUSERS users have their keys on that master"

# --- WebSocket clients of a user whose route and hint keys are on that master
on_master() { # uid: its {1:uid} slot is on the victim master
  local s
  s=$(rcli "$CL_REDIS_PORT" cluster keyslot "route:{1:$1}") || return 1
  awk -v s="$s" -v m="$MID" '$1 == m { for (i = 9; i <= NF; i++) { n = split($i, r, "-"); hi = (n == 2 ? r[2] : r[1])
      if (s + 0 >= r[1] + 0 && s + 0 <= hi + 0) f = 1 } } END { exit !f }' <<<"$nodes"
}
UW=
for u in $(seq 3001 3200); do on_master "$u" && { UW=$u; break; }; done
UW=${UW:-3001}
TW=$(cl_token "$UW" "$MBOX_INTERNAL_URL") || TW=
send_to() { # uid content: through haproxy, retried until acknowledged (10 s)
  local _
  for _ in $(seq 1 100); do
    curl -fsS -o /dev/null --max-time 2 -H "Authorization: Bearer $SERVER_KEY" \
      -d "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"$1\"],\"msgkey\":\"$2\",\"content\":\"$2\"}" \
      "$MBOX_INTERNAL_URL/v1/messages" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
watch ws1 "ws://127.0.0.1:$(cl_ws_port 1)/ws" "$TW"
watch ws2 "ws://127.0.0.1:$(cl_ws_port 2)/ws" "$TW"
check "WebSocket clients of user $UW (keys on :$MPORT) log in on lcsd-1 and lcsd-2" \
  '[ -n "$TW" ] && wait_grep 10 mbox_client_online "$DIR/ws1.err" && wait_grep 10 mbox_client_online "$DIR/ws2.err"'
send_to "$UW" fo-before || true
check "they are notified of a send before the fault" \
  'wait_grep 5 "\"content\":\"fo-before\"" "$DIR/ws1.out" && wait_grep 5 "\"content\":\"fo-before\"" "$DIR/ws2.out"'

# --- a quiet mailbox whose hint is on that master, and a cursor at its end
UQ=
for u in $(seq 3201 3400); do on_master "$u" && { UQ=$u; break; }; done
UQ=${UQ:-3201}
TQ=$(cl_token "$UQ" "$MBOX_INTERNAL_URL") || TQ=
sync_at() { # sdk-url token cursor -> the reply
  curl -fsS --max-time 5 -H "Authorization: Bearer $2" -d "{\"cursor\":\"$3\",\"limit\":100}" "$1/v1/sync"
}
send_to "$UQ" fo-quiet-1 || true
CQ=$(sync_at "$MBOX_SDK_URL" "$TQ" "" | jq -r .cursor) || CQ=
MQ=
for _ in $(seq 1 20); do # the sync wrote the hint m (fire and forget)
  MQ=$(rcli "$MPORT" hget "hint:{1:$UQ}" m) || MQ=
  [ -n "$MQ" ] && break
  sleep 0.1
done
check "quiet user $UQ (keys on :$MPORT): a cursor at its last message, hint m = ${MQ:-none}" '[ -n "$CQ" ] && [ -n "$MQ" ]'

# --- load
LOAD_PID=
ct_start_load fo

# --- fault
say "== $CT_NAME: kill -9 Redis master :$MPORT under load"
# A send to the quiet user just before the kill: its hint invalidation
# (HINCRBY g, HDEL m) is acknowledged by the master and must survive in the
# replica. (Replication is asynchronous: one acknowledged in the instant
# before the kill and not yet sent to the replica would be lost, leaving the
# old m; this test cannot force that window, it reports when it happened.)
send_to "$UQ" fo-quiet-2 || true
KILL_MS=$(ms)
kill -9 "$MPID"
rm -f "$DIR/rcluster/$MPORT/redis.pid" # its pid is no longer ours to stop
send_to "$UW" fo-during || true # while the master is dead: its notify may be lost
DURING_MS=$(ms)
PROMOTED_MS=
while [ $(($(ms) - KILL_MS)) -lt 20000 ]; do
  if [ "$(rcli "$RPORT" role | head -1)" = master ]; then
    PROMOTED_MS=$(ms)
    break
  fi
  sleep 0.1
done
printf '{"kill_ms":%s,"promoted_ms":%s}\n' "$KILL_MS" "${PROMOTED_MS:-null}" >"$DIR/fault.json"
check "replica :$RPORT promoted to master $( [ -n "$PROMOTED_MS" ] && echo "$((PROMOTED_MS - KILL_MS)) ms after the kill")" \
  '[ -n "$PROMOTED_MS" ]'
state=
for _ in $(seq 1 50); do
  state=$(rcli "$RPORT" cluster info | tr -d '\r' | sed -n 's/^cluster_state://p')
  [ "$state" = ok ] && break
  sleep 0.1
done
check "cluster_state ok on the new master" '[ "$state" = ok ]'

sleep_until=$(((${PROMOTED_MS:-$(ms)}) + AFTER_S * 1000))
while [ "$(ms)" -lt "$sleep_until" ]; do sleep 0.2; done
kill -USR2 "$LOAD_PID" 2>/dev/null || true
st=0
wait "$LOAD_PID" || st=$?
for i in "${!CT_PIDS[@]}"; do [ "${CT_PIDS[$i]}" != "$LOAD_PID" ] || unset 'CT_PIDS[i]'; done
check "the load finished and wrote its summary" '[ $st = 0 ] && [ -s "$DIR/load.json" ]'
if [ ! -s "$DIR/load.json" ]; then
  sed 's/^/    /' "$DIR/load.log"
  summary || exit 1
fi

# Notifies are at most once: the one of fo-during may have been lost (the
# route lookup or the publish failed); the client's next sync, at the next
# notify, pulls it.
during=lost
for f in ws1 ws2; do grep -qF '"content":"fo-during"' "$DIR/$f.out" && during=delivered; done
send_to "$UW" fo-after || true
for i in 1 2; do
  check "client on lcsd-$i: notified of a send after the promotion, and it has the one sent during the failover" \
    'wait_grep 5 "\"content\":\"fo-after\"" "$DIR/ws$i.out" && grep -qF "\"content\":\"fo-during\"" "$DIR/ws$i.out"'
done
if [ $during = lost ]; then
  say "  the message sent while the master was dead (acknowledged $((DURING_MS - KILL_MS)) ms after the kill):" \
    "its notify was lost; the clients' sync at the next notify pulled it"
else
  say "  the message sent while the master was dead (acknowledged $((DURING_MS - KILL_MS)) ms after the kill):" \
    "notified at once (its route and channel were reachable)"
fi

# The quiet mailbox: its cursor is at the old m; the message sent just
# before the kill must reach it all the same.
MQ2=$(rcli "$RPORT" hget "hint:{1:$UQ}" m) || MQ2=
if [ -n "$MQ2" ] && [ "$MQ2" = "$MQ" ]; then
  say "  user $UQ: the invalidation of the send just before the kill died with the master (m = $MQ on the new master)"
else
  say "  user $UQ: the invalidation of the send just before the kill reached the replica (m = ${MQ2:-none} on the new master)"
fi
for via in haproxy=$MBOX_SDK_URL logicd-1=http://127.0.0.1:$(cl_sdk_port 1) logicd-2=http://127.0.0.1:$(cl_sdk_port 2); do
  check "user $UQ's cursor at the old hint gets the message sent just before the kill through ${via%%=*}" \
    'sync_at "${via#*=}" "$TQ" "$CQ" | grep -qF "\"content\":\"fo-quiet-2\""'
done

dead=""
for n in logicd-1 logicd-2 lcsd-1 lcsd-2 haproxy; do
  cl_alive "$(cl_pidof "$DIR/run/$n.pid" 2>/dev/null)" "${n%-*}" || dead+=" $n"
done
check "no daemon died${dead:+ (dead:$dead)}" '[ -z "$dead" ]'

# --- figures
J=$DIR/load.json
j() { jq -r "$1" "$J"; }
say "  load: $(j .duration_ms) ms, $(j .sends) sends ($(j .acked) acknowledged, $(j .acked_after_kill) after the kill," \
  "$(j .abandoned) abandoned), syncs: $(j '.syncs | to_entries | map("\(.key) \(.value)") | join(", ")')"
say "  retried sends: $(j .retried) ($(j .retry_attempts) extra attempts; $(j .acked_as_duplicate) acknowledged as duplicate: an earlier attempt had committed)"
for k in send sync; do
  say "  $k via haproxy: $(j ".$k.failures") of $(j ".$k.attempts") attempts failed$(
    [ "$(j ".$k.failures")" != 0 ] && echo " (first +$(j ".$k.first_failure_ms") ms, last +$(j ".$k.last_failure_ms") ms after the kill)")," \
    "unavailable $(j ".$k.unavailable_ms") ms, longest gap between successes $(j ".$k.longest_gap_ms") ms (from +$(j ".$k.longest_gap_from_ms") ms)," \
    "first success $(j ".$k.first_ok_after_promotion_ms") ms after the promotion"
done
if [ "$(j '.errors | length')" != 0 ]; then
  say "  errors seen (count):"
  j '.errors | to_entries[] | "    \(.value)x \(.key)"' | head -12
fi

# --- checks
check "sends were acknowledged after the kill ($(j .acked_after_kill)) and none was given up ($(j .abandoned))" \
  '[ "$(j .acked_after_kill)" -gt 0 ] && [ "$(j .abandoned)" = 0 ]'
for k in send sync; do
  check "${k}s through haproxy succeed again within 5 s of the promotion ($(j ".$k.first_ok_after_promotion_ms") ms)" \
    '[ "$(j ".$k.first_ok_after_promotion_ms")" != null ] && [ "$(j ".$k.first_ok_after_promotion_ms")" -le 5000 ]'
done
for kind in fresh live; do
  for via in hap logicd-1 logicd-2; do
    r=".${kind}[\"$via\"]"
    desc="every acknowledged message once, with its msg_id, in ascending order"
    [ $kind = fresh ] && what="from the empty cursor" || what="following the cursors kept during the load"
    check "$desc: $what through ${via/hap/haproxy} ($(j "$r.items") items; missing $(j "$r.missing"), duplicated $(j "$r.duplicated"), other msg_id $(j "$r.wrong_id"), out of order $(j "$r.unordered"), unread users $(j "$r.incomplete"))" \
      '[ "$(j "$r.missing + $r.duplicated + $r.wrong_id + $r.unordered + $r.foreign + $r.incomplete")" = 0 ]'
    [ "$(j "$r.examples | length")" = 0 ] || j "$r.examples[]" | sed 's/^/        /'
  done
done
check "a message acknowledged before another was sent has the smaller msg_id ($(j .ack_order.bad) exceptions)" \
  '[ "$(j .ack_order.bad)" = 0 ]'
[ "$(j .ack_order.bad)" = 0 ] || j '.ack_order.examples[]' | sed 's/^/        /'

summary
