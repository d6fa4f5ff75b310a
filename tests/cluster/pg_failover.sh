#!/usr/bin/env bash
# tests/cluster/pg_failover.sh: the PostgreSQL primary of each database of
# `ops/run cluster` dies under load (the cluster as run_cluster.sh starts
# it, on free ports in a temporary directory: every database a Patroni
# pair, a primary and a synchronous standby, with one etcd member):
#
#   * load (tests/cluster/load.mjs): senders through haproxy's internal front
#     to 20 users, half on each shard, every send with a unique msgkey and
#     retried with the same msgkey until acknowledged; syncers following
#     every user's cursor with limit 5 through haproxy and each logicd;
#   * faults, one after the other: kill -9 of the primary PostgreSQL
#     (postmaster) of shard 0 (the public database), then of shard 1;
#     Patroni fails over at once (primary_start_timeout 0) and promotes the
#     synchronous standby, then restarts the old primary as a standby
#     (pg_rewind). Right after each kill, a send to a user of that shard
#     straight to logicd-1 must answer 503 with Retry-After (or succeed),
#     never anything else; its retry with the same msgkey after the
#     promotion makes exactly one message. Then a notice is published: it
#     reaches a user through each logicd (their pollers reconnected to the
#     new public primary). Last, kill -9 of logicd-2: its supervisor starts
#     it again;
#   * checks: each standby promoted; the sends and syncs of the users of the
#     failed database (through haproxy) succeed again within 10 s of the
#     promotion; the old primary rejoins as a standby on the new timeline;
#     every acknowledged message is in its user's mailbox exactly once, with
#     the acknowledged msg_id, in ascending order, in the cursor streams
#     followed during the load and in fresh ones (through haproxy and each
#     logicd); both members of each pair hold the same rows; logicd-2 runs
#     again within 3 s and is healthy within 10 s; `ops/run cluster status`
#     names the leaders.
#
# Prints the measured times, one line per check and the Check-style summary
# ("pg_failover: 100%: Checks: N, Failures: 0, Errors: 0"); exit status 0
# when nothing failed. MBOX_BUILD (default build) names the build directory,
# which must be built. Bounded by MBOX_FAILOVER_TEST_TIMEOUT seconds (default
# 300); it takes two to three minutes. MBOX_CLUSTER_KEEP=1 keeps the
# directory (logs, load.json).
#
# shellcheck disable=SC2016,SC2034
set -euo pipefail
CT_NAME=pg_failover CT_LIMIT=${MBOX_FAILOVER_TEST_TIMEOUT:-300} CT_QUIET_START=1
export MBOX_CLUSTER_QUIET=1 MBOX_CLUSTER_DEMO=0
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"
BEFORE_S=${MBOX_FAILOVER_BEFORE_S:-3}
AFTER_S=${MBOX_FAILOVER_AFTER_S:-4}
NUSERS=20

ms() { date +%s%3N; }
ct_start

if ! cl_pg_shards_ok; then
  skip "PostgreSQL failover: $BUILD's logicd has no pg_shards"
  summary
  exit
fi

for s in 0 1; do
  mem=$(cl_pg_members "$s" 2>/dev/null) || mem=
  sed 's/^/    /' <<<"$mem"
  check "shard $s: a Patroni pair, a leader and a synchronous standby" \
    'awk '\''$2 == "leader" { l = 1 } $2 == "sync_standby" { r = 1 } END { exit !(l && r) }'\'' <<<"$mem"'
done

# --- users, half on each shard
mapfile -t U0 < <(ct_users_on_shard 0 $((NUSERS / 2)) 5001)
mapfile -t U1 < <(ct_users_on_shard 1 $((NUSERS / 2)) 5001)
USERS=("${U0[@]}" "${U1[@]}")
check "$NUSERS users, half on each shard" '[ ${#USERS[@]} -eq $NUSERS ]'

# --- load
ct_start_load pf

# A send straight to logicd-1: "STATUS RETRY-AFTER" (status 0: no answer).
probe_send() { # uid msgkey
  local h
  h=$(curl -sS -o /dev/null -D - --max-time 5 -H "Authorization: Bearer $SERVER_KEY" \
    -d "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"$1\"],\"msgkey\":\"$2\",\"content\":\"$2\"}" \
    "http://127.0.0.1:$(cl_internal_port 1)/v1/messages" 2>/dev/null | tr -d '\r') || h=
  printf '%s %s\n' "$(sed -n '1s/^HTTP\/[0-9.]* \([0-9]*\).*/\1/p' <<<"$h")" \
    "$(sed -n 's/^[Rr]etry-[Aa]fter: *//p' <<<"$h")"
}

FAULTS=() # JSON objects for load.mjs
write_faults() { (IFS=,; printf '{"faults":[%s]}\n' "${FAULTS[*]}") >"$DIR/fault.json"; }
declare -A PROMO REJOIN PROBE

# --- kill -9 the primary of shard S and follow the failover
fail_over() {
  local s=$1 old new pid kill_ms promoted_ms="" rejoined_ms="" mem users port
  old=$(cl_pg_leader "$s") || old=
  pid=$(head -1 "$(cl_member_dir "$s" "${old: -1}")/pg/data/postmaster.pid" 2>/dev/null) || pid=
  check "shard $s: primary $old runs (postmaster pid ${pid:-?})" '[ -n "$old" ] && cl_alive "$pid" postgres'
  [ -n "$old" ] && [ -n "$pid" ] || return 0
  say "== $CT_NAME: kill -9 the primary PostgreSQL of shard $s ($old, pid $pid) under load"
  local probe_uid
  if [ "$s" = 0 ]; then probe_uid=${U0[0]}; else probe_uid=${U1[0]}; fi
  kill_ms=$(ms)
  kill -9 "$pid"
  # Right after the kill, before any promotion: 503 with Retry-After.
  PROBE[$s]=$(probe_send "$probe_uid" "probe-$s-$$")
  while [ $(($(ms) - kill_ms)) -lt 30000 ]; do
    new=$(cl_pg_leader "$s" 2>/dev/null) || new=
    if [ -n "$new" ] && [ "$new" != "$old" ]; then
      promoted_ms=$(ms)
      break
    fi
    sleep 0.1
  done
  PROMO[$s]=$((${promoted_ms:-0} - kill_ms))
  check "shard $s: standby ${new:-?} promoted $([ -n "$promoted_ms" ] && echo "${PROMO[$s]} ms after the kill")" \
    '[ -n "$promoted_ms" ]'
  users=$(if [ "$s" = 0 ]; then printf '"%s",' "${U0[@]}"; else printf '"%s",' "${U1[@]}"; fi)
  FAULTS+=("{\"name\":\"pg$s\",\"kill_ms\":$kill_ms,\"promoted_ms\":${promoted_ms:-null},\"uids\":[${users%,}]}")
  write_faults
  # The probe's outcome was unknown to its client unless it succeeded: the
  # retry with the same msgkey must make exactly one message.
  local st ra retry=""
  read -r st ra <<<"${PROBE[$s]}"
  check "shard $s: a send straight to logicd-1 right after the kill: 503 with Retry-After, or success (got ${st:-none}${ra:+, Retry-After $ra})" \
    '[ "$st" = 200 ] || { [ "$st" = 503 ] && [ -n "$ra" ]; }'
  for _ in $(seq 1 100); do
    retry=$(probe_send "$probe_uid" "probe-$s-$$")
    [ "${retry%% *}" = 200 ] && break
    sleep 0.1
  done
  check "shard $s: its retry with the same msgkey after the promotion succeeds" '[ "${retry%% *}" = 200 ]'

  # The old primary comes back as a standby of the new one.
  local tl_new
  while [ $(($(ms) - kill_ms)) -lt 60000 ]; do
    mem=$(cl_pg_members "$s" 2>/dev/null) || mem=
    tl_new=$(awk -v n="$new" '$1 == n { print $5 }' <<<"$mem")
    if awk -v o="$old" -v t="$tl_new" '$1 == o && ($2 == "sync_standby" || $2 == "replica") && $3 ~ /^(running|streaming)$/ && $5 == t { f = 1 }
        END { exit !f }' <<<"$mem"; then
      rejoined_ms=$(ms)
      break
    fi
    sleep 0.2
  done
  REJOIN[$s]=$((${rejoined_ms:-0} - kill_ms))
  sed 's/^/    /' <<<"$mem"
  # Patroni rewinds only a member whose WAL went past the new timeline's
  # start, and re-clones one it cannot rewind.
  local how="restarted as a standby, nothing to rewind"
  grep -qi "rewind" "$DIR/log/patroni-$old.log" && how="pg_rewind"
  grep -qiE "bootstrap from leader|basebackup" <(sed -n '/Primary crashed/,$p' "$DIR/log/patroni-$old.log") &&
    how="re-cloned"
  check "shard $s: the old primary $old rejoined as a standby on timeline ${tl_new:-?} ($([ -n "$rejoined_ms" ] && echo "${REJOIN[$s]} ms after the kill, $how"))" \
    '[ -n "$rejoined_ms" ]'
  local until_ms=$((${promoted_ms:-$(ms)} + AFTER_S * 1000))
  while [ "$(ms)" -lt "$until_ms" ]; do sleep 0.2; done
}

fail_over 0
fail_over 1

# --- each logicd's notice poller reconnected to the new public primary: a
# notice published now reaches a user through each logicd
NID=$(curl -fsS --max-time 5 -H "Authorization: Bearer $MBOX_OPS_TOKEN" \
  -d '{"app_id":"1","title":"after failover","content":"published on the new primary"}' \
  "$MBOX_INTERNAL_URL/v1/notices" | sed -n 's/.*"notice_id":"\([0-9]*\)".*/\1/p') || NID=
[ -z "$NID" ] || curl -fsS -o /dev/null --max-time 5 -X POST -H "Authorization: Bearer $MBOX_OPS_TOKEN" \
  "$MBOX_INTERNAL_URL/v1/notices/$NID/publish" || NID=
TN=$(cl_token "${U1[1]}" "$MBOX_INTERNAL_URL") || TN=
has_notice() { # logicd index
  curl -fsS --max-time 5 -H "Authorization: Bearer $TN" -d '{"cursor":"","limit":500}' \
    "http://127.0.0.1:$(cl_sdk_port "$1")/v1/sync" 2>/dev/null | grep -qF "\"notice_id\":\"$NID\""
}
for i in 1 2; do
  seen=0
  for _ in $(seq 1 50); do has_notice "$i" && { seen=1; break; }; sleep 0.2; done
  check "a notice published after the failovers (id ${NID:-none}) reaches user ${U1[1]} through logicd-$i within 10 s (its poller reconnected)" \
    '[ -n "$NID" ] && [ $seen = 1 ]'
done

# --- kill -9 logicd-2: its supervisor starts it again
L2=$(cl_pidof "$DIR/run/logicd-2.pid") || L2=
say "== $CT_NAME: kill -9 logicd-2 (pid ${L2:-?}) under load"
K_MS=$(ms)
kill -9 "$L2"
# A fault of its own for load.mjs: it ends the windows of the ones before.
FAULTS+=("{\"name\":\"logicd-2\",\"kill_ms\":$K_MS,\"promoted_ms\":null,\"uids\":[]}")
write_faults
RUN_MS='' BACK_MS=''
while [ $(($(ms) - K_MS)) -lt 20000 ]; do
  n=$(cl_pidof "$DIR/run/logicd-2.pid" 2>/dev/null) || n=
  if [ -z "$RUN_MS" ] && [ -n "$n" ] && [ "$n" != "$L2" ] && cl_alive "$n" logicd; then RUN_MS=$(ms); fi
  if [ -n "$RUN_MS" ] && curl -fsS -o /dev/null --max-time 1 "http://127.0.0.1:$(cl_internal_port 2)/healthz" 2>/dev/null; then
    BACK_MS=$(ms)
    break
  fi
  sleep 0.1
done
check "logicd-2 restarted by its supervisor $([ -n "$RUN_MS" ] && echo "$((RUN_MS - K_MS)) ms after the kill") (within 3 s)" \
  '[ -n "$RUN_MS" ] && [ $((RUN_MS - K_MS)) -le 3000 ]'
check "and healthy again $([ -n "$BACK_MS" ] && echo "$((BACK_MS - K_MS)) ms after the kill") (within 10 s)" \
  '[ -n "$BACK_MS" ] && [ $((BACK_MS - K_MS)) -le 10000 ]'
sleep 2

# --- stop the load, judge
kill -USR2 "$LOAD_PID" 2>/dev/null || true
st=0
wait "$LOAD_PID" || st=$?
for i in "${!CT_PIDS[@]}"; do [ "${CT_PIDS[$i]}" != "$LOAD_PID" ] || unset 'CT_PIDS[i]'; done
check "the load finished and wrote its summary" '[ $st = 0 ] && [ -s "$DIR/load.json" ]'
if [ ! -s "$DIR/load.json" ]; then
  sed 's/^/    /' "$DIR/load.log"
  summary || exit 1
fi
J=$DIR/load.json
j() { jq -r "$1" "$J"; }

say "  load: $(j .duration_ms) ms, $(j .sends) sends ($(j .acked) acknowledged, $(j .abandoned) abandoned)," \
  "syncs: $(j '.syncs | to_entries | map("\(.key) \(.value)") | join(", ")')"
say "  retried sends: $(j .retried) ($(j .retry_attempts) extra attempts; $(j .acked_as_duplicate) acknowledged as duplicate: an earlier attempt had committed)"
for f in 0 1; do
  n=pg$f
  for k in send sync; do
    r=".faults[$f].$k"
    say "  $n $k (users of shard $f, via haproxy): $(j "$r.failures") of $(j "$r.attempts") attempts after the kill failed" \
      "(statuses $(j "$r.statuses | to_entries | map(\"\(.key) x\(.value)\") | join(\", \")")), unavailable $(j "$r.unavailable_ms") ms," \
      "back $(j "$r.back_after_promotion_ms") ms after the promotion (promotion ${PROMO[$f]} ms after the kill)"
  done
done
if [ "$(j '.errors | length')" != 0 ]; then
  say "  errors seen (count):"
  j '.errors | to_entries[] | "    \(.value)x \(.key)"' | head -12
fi

for f in 0 1; do
  for k in send sync; do
    r=".faults[$f].$k.back_after_promotion_ms"
    check "shard $f: ${k}s of its users through haproxy succeed again within 10 s of the promotion ($(j "$r") ms)" \
      '[ "$(j "$r")" != null ] && [ "$(j "$r")" -le 10000 ]'
  done
done
check "every send was acknowledged in the end, none given up ($(j .abandoned))" \
  '[ "$(j .acked)" -gt 0 ] && [ "$(j .abandoned)" = 0 ]'
for kind in fresh live; do
  for via in hap logicd-1 logicd-2; do
    r=".${kind}[\"$via\"]"
    [ $kind = fresh ] && what="from the empty cursor" || what="following the cursors kept during the load"
    check "every acknowledged message once, with its msg_id, in ascending order: $what through ${via/hap/haproxy} ($(j "$r.items") items; missing $(j "$r.missing"), duplicated $(j "$r.duplicated"), other msg_id $(j "$r.wrong_id"), out of order $(j "$r.unordered"), unread users $(j "$r.incomplete"))" \
      '[ "$(j "$r.missing + $r.duplicated + $r.wrong_id + $r.unordered + $r.foreign + $r.incomplete")" = 0 ]'
    [ "$(j "$r.examples | length")" = 0 ] || j "$r.examples[]" | sed 's/^/        /'
  done
done
check "a message acknowledged before another was sent has the smaller msg_id ($(j .ack_order.bad) exceptions)" \
  '[ "$(j .ack_order.bad)" = 0 ]'

# The probes: exactly one message per msgkey.
for s in 0 1; do
  if [ "$s" = 0 ]; then u=${U0[0]}; else u=${U1[0]}; fi
  n=$(cl_psql "$s" -c "SELECT count(*) FROM message WHERE app_id = 1 AND uid = $u AND msgkey = 'probe-$s-$$'" 2>/dev/null) || n='?'
  check "shard $s: the probe sent while the primary was dead is stored once ($n)" '[ "$n" = 1 ]'
done

# Both members of each pair hold the same rows (synchronous replication;
# the standby may replay a moment later).
member_rows() { # shard member
  PGPASSWORD=$PG_PASSWORD "$PG_BIN/psql" -h 127.0.0.1 -p "$(cl_pg_port "$1" "$2")" -U mbox -d mbox -qtAXc \
    "SELECT count(*) || ' ' || coalesce(max(msg_id), 0) FROM message" 2>/dev/null
}
for s in 0 1; do
  a='' b=''
  for _ in $(seq 1 50); do
    a=$(member_rows "$s" a) b=$(member_rows "$s" b)
    [ -n "$a" ] && [ "$a" = "$b" ] && break
    sleep 0.2
  done
  check "shard $s: both members hold the same messages (count, max msg_id: ${a:-?} / ${b:-?})" '[ -n "$a" ] && [ "$a" = "$b" ]'
done

st=0
"$ROOT/ops/run" cluster status >"$DIR/status.log" 2>&1 || st=$?
sed -n '/^postgresql/,/^  bucket map/p' "$DIR/status.log" | sed 's/^/    /'
check "ops/run cluster status: exit 0, names the leader of each shard" \
  '[ $st -eq 0 ] && [ "$(grep -c "^  shard [01]  leader pg[01][ab]" "$DIR/status.log")" -eq 2 ]'

say "  figures: promotion after the kill: shard 0 ${PROMO[0]} ms, shard 1 ${PROMO[1]} ms;" \
  "old primary back as a standby: shard 0 ${REJOIN[0]} ms, shard 1 ${REJOIN[1]} ms after the kill;" \
  "logicd-2 back ${BACK_MS:+$((BACK_MS - K_MS)) ms after its kill}"
summary
