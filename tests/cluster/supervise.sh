#!/usr/bin/env bash
# tests/cluster/supervise.sh: the supervisor and the liveness check of
# ops/run and ops/run cluster (ops/lib/common.sh), without any server:
#
#   * a zombie (a child killed while its parent does not reap it) still
#     answers kill -0, but mbox_alive calls it dead; so does `ops/run
#     status` for a pid file naming it (exit 3, "zombie"), and a pid file
#     naming a live process of another program;
#   * mbox_supervise_start runs a program; kill -9 of it: a new one runs
#     within 2 s (pid file rewritten, restart counted); a second kill -9:
#     back again (after a longer backoff); mbox_supervise_stop stops the
#     supervisor and the child, and removes the pid files;
#   * a supervisor killed: its child outlives it and mbox_supervise_stop
#     ends it, but not a process that merely has the pid file's pid;
#   * a supervisor that was stopped (SIGSTOP) while its child died leaves a
#     zombie: mbox_alive says dead; mbox_supervise_stop still ends both.
#
# Prints one line per check and "supervise: 100%: Checks: N, Failures: 0,
# Errors: 0"; exit status 0 when nothing failed. A few seconds.
# shellcheck disable=SC2016
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
# shellcheck source=../../ops/lib/common.sh
. "$ROOT/ops/lib/common.sh"
D=$(mktemp -d /tmp/mbox-supervise.XXXXXX)
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill -KILL "$p" 2>/dev/null || true; done
  mbox_supervise_stop t "$D" 2>/dev/null || true
  mbox_supervise_stop z "$D" 2>/dev/null || true
  mbox_supervise_stop o "$D" 2>/dev/null || true
  rm -rf "$D"
}
trap cleanup EXIT

checks=0 failures=0
check() { # description 'shell condition'
  checks=$((checks + 1))
  if eval "$2"; then printf '  ok    %s\n' "$1"; else failures=$((failures + 1)); printf '  FAIL  %s\n' "$1"; fi
}
wait_for() { # tenths 'condition'
  local _
  for _ in $(seq 1 "$1"); do eval "$2" && return 0; sleep 0.1; done
  return 1
}

# --- a zombie: a "logicd" (a copy of sleep under that name) whose parent
# (another sleep, exec'ed by the subshell) never reaps it.
cp "$(command -v sleep)" "$D/logicd"
mkdir -p "$D/var/run"
(
  "$D/logicd" 300 &
  echo $! >"$D/var/run/logicd.pid"
  exec sleep 300
) &
PARENT=$!
PIDS+=("$PARENT")
wait_for 50 '[ -s "$D/var/run/logicd.pid" ]' || true
Z=$(cat "$D/var/run/logicd.pid")
PIDS+=("$Z")
check "a live process of the expected program is alive" 'mbox_alive "$Z" logicd'
check "not when another program is expected (a pid file naming a stranger)" '! mbox_alive "$Z" lcsd'
kill -9 "$Z"
wait_for 50 '[ "$(mbox_pid_state "$Z")" = Z ]' || true
check "killed, unreaped: a zombie (state Z)" '[ "$(mbox_pid_state "$Z")" = Z ]'
check "kill -0 is fooled by it" 'kill -0 "$Z" 2>/dev/null'
check "mbox_alive is not" '! mbox_alive "$Z" logicd && ! mbox_alive "$Z"'
st=0
MBOX_VAR=$D/var "$ROOT/ops/run" status >"$D/status.out" 2>&1 || st=$?
sed 's/^/    /' "$D/status.out"
check "ops/run status: logicd dead (zombie), exit 3" \
  '[ $st -eq 3 ] && grep -q "^logicd dead (pid $Z: zombie)" "$D/status.out"'
echo "$PARENT" >"$D/var/run/lcsd.pid" # alive, but a sleep, not lcsd
MBOX_VAR=$D/var "$ROOT/ops/run" status >"$D/status.out" 2>&1 || true
check "ops/run status: a pid file naming another program is not a live lcsd" \
  '! grep -q "^lcsd running" "$D/status.out"'
kill -9 "$PARENT" 2>/dev/null || true
wait "$PARENT" 2>/dev/null || true

# --- the supervisor
mbox_supervise_start t "$D" "$D/t.log" sleep 300
P1=$(cat "$D/t.pid")
S=$(cat "$D/t.sup.pid")
check "supervised: child $P1 (sleep) alive, supervisor $S (bash) alive" \
  'mbox_alive "$P1" sleep && mbox_alive "$S" bash'
kill -9 "$P1"
T0=$(date +%s%3N)
wait_for 20 'P2=$(cat "$D/t.pid" 2>/dev/null) && [ "$P2" != "$P1" ] && mbox_alive "$P2" sleep' || true
P2=$(cat "$D/t.pid")
check "kill -9: restarted within 2 s ($(($(date +%s%3N) - T0)) ms, new pid $P2), restarts 1" \
  '[ "$P2" != "$P1" ] && mbox_alive "$P2" sleep && [ "$(cat "$D/t.restarts")" = 1 ]'
check "the old child was reaped (no zombie left)" '! [ -e "/proc/$P1" ]'
kill -9 "$P2"
wait_for 40 'P3=$(cat "$D/t.pid" 2>/dev/null) && [ "$P3" != "$P2" ] && mbox_alive "$P3" sleep' || true
P3=$(cat "$D/t.pid")
check "again: restarted after a longer backoff (new pid $P3), restarts 2" \
  '[ "$P3" != "$P2" ] && mbox_alive "$P3" sleep && [ "$(cat "$D/t.restarts")" = 2 ] &&
   grep -q "restart in 1000 ms" "$D/t.log"'
mbox_supervise_stop t "$D"
check "mbox_supervise_stop: child and supervisor gone, pid files removed" \
  '! mbox_alive "$P3" && ! mbox_alive "$S" && [ ! -e "$D/t.pid" ] && [ ! -e "$D/t.sup.pid" ]'

# --- a killed supervisor: its child outlives it; stop ends the child,
# but never a process that merely got the pid file's pid (start time differs)
mbox_supervise_start o "$D" "$D/o.log" sleep 300
C=$(cat "$D/o.pid") S=$(cat "$D/o.sup.pid")
PIDS+=("$C")
kill -9 "$S"
wait_for 50 '! mbox_alive "$S"' || true
sleep 300 &
STRANGER=$!
PIDS+=("$STRANGER")
cp "$D/o.pid" "$D/o.pid.real"
echo "$STRANGER" >"$D/o.pid" # the pid file now names another process
mbox_supervise_stop o "$D"
check "supervisor killed: stop leaves alone a process that is not the child it started" 'mbox_alive "$STRANGER" sleep'
cp "$D/o.pid.real" "$D/o.pid"
mbox_pid_start "$C" >"$D/o.start"
mbox_supervise_stop o "$D"
check "and ends the orphaned child itself" '! mbox_alive "$C"'
kill "$STRANGER" 2>/dev/null || true

# --- a stopped supervisor whose child dies
mbox_supervise_start z "$D" "$D/z.log" sleep 300
C=$(cat "$D/z.pid") S=$(cat "$D/z.sup.pid")
PIDS+=("$S")
kill -STOP "$S"
# SIGSTOP takes effect when S next runs: until S is really stopped, a wait
# it was in could still reap the child killed next.
wait_for 50 '[ "$(mbox_pid_state "$S")" = T ]' || true
kill -9 "$C"
wait_for 50 '[ "$(mbox_pid_state "$C")" = Z ]' || true
check "supervisor stopped, child killed: a zombie, and mbox_alive says dead" \
  '[ "$(mbox_pid_state "$C")" = Z ] && ! mbox_alive "$C" sleep'
mbox_supervise_stop z "$D"
check "mbox_supervise_stop ends the stopped supervisor too" '! mbox_alive "$S" && ! [ -e "/proc/$C" ]'

pct=$(((checks - failures) * 100 / checks))
printf 'supervise: %d%%: Checks: %d, Failures: %d, Errors: 0\n' "$pct" "$checks" "$failures"
[ "$failures" -eq 0 ]
