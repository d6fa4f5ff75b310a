# shellcheck shell=bash
# ops/bench/lib.sh: shell helpers shared by the benchmarks under ops/bench/
# (sourced after ops/lib/common.sh). Factored out of ops/bench/private's
# helpers with the same names and arguments, so a benchmark can use these
# instead of its own copies. Nothing here starts or stops a process.
#
# Variables the helpers read (set them before use):
#   BENCH_THREADS   wrk threads (run_wrk)
#   WRK_TIMEOUT     wrk --timeout (run_wrk)
#   BENCH_LOGS      logicd log files printed by logicd_errors (array)
# and they set FAILED=1 when a run saw errors.

# Ports of ops/run and the spec's defaults are never chosen.
declare -gA TAKEN=([54329]=1 [63799]=1 [8080]=1 [8081]=1 [8090]=1 [8091]=1 [5432]=1 [6379]=1)

# free_port: a random port nobody listens on, never the same one twice,
# below the kernel's ephemeral range: a port in that range can be taken
# between our check and the server's bind by the local end of any outgoing
# connection (the floods open thousands), which no listener check sees.
EPHEMERAL_LOW=$(cut -f1 /proc/sys/net/ipv4/ip_local_port_range 2>/dev/null || echo 32768)
[ "$EPHEMERAL_LOW" -gt 21024 ] 2>/dev/null || EPHEMERAL_LOW=32768
free_port() {
  local p
  for _ in $(seq 1 200); do
    p=$((20000 + RANDOM % (EPHEMERAL_LOW - 20000)))
    [ -n "${TAKEN[$p]:-}" ] && continue
    ss -Htln "sport = :$p" 2>/dev/null | grep -q . && continue
    TAKEN[$p]=1
    echo "$p"
    return 0
  done
  die "no free port found"
}

# ---- output ----
SUMMARY=()
sum() { SUMMARY+=("$*"); }
hr() { printf '%s\n' "------------------------------------------------------------------------"; }
title() { printf '\n'; hr; printf '%s\n' "$*"; hr; }

# logicd_errors: the last warn/error lines (and last lines) of every log in
# BENCH_LOGS, on stderr; marks the run as failed.
logicd_errors() {
  local log
  for log in "${BENCH_LOGS[@]}"; do
    say "---- $log: last warn/error lines ----"
    grep -E 'level=(warn|error)' "$log" | tail -25 >&2 || true
    say "---- $log: last 10 lines ----"
    tail -10 "$log" >&2 || true
  done
  say "----"
  # shellcheck disable=SC2034 # read by the benchmark that sources this file
  FAILED=1
}

# wait_healthy URL: waits up to 30 s for a 2xx from URL.
wait_healthy() {
  local url=$1
  for _ in $(seq 1 150); do
    curl -fsS -o /dev/null "$url" 2>/dev/null && return 0
    sleep 0.2
  done
  return 1
}

# ---- wrk (its Lua script must print the BENCH line of private.d/report.lua) ----

# field NAME FILE: a value from the BENCH line wrk's done() printed.
field() { sed -n "s/.*[ ]$1=\([^ ]*\).*/\1/p" "$2" | tail -1; }

# run_wrk LABEL OUTFILE CONNS SECONDS SCRIPT URL: one wrk run, its report
# kept in OUTFILE; warns (with the logicd logs) on non-2xx or socket errors.
run_wrk() {
  local label=$1 out=$2 conns=$3 secs=$4 script=$5 url=$6
  wrk -t"$BENCH_THREADS" -c"$conns" -d"${secs}s" --timeout "$WRK_TIMEOUT" --latency \
    -s "$script" "$url" >"$out" 2>&1 || { cat "$out" >&2; die "wrk failed ($label)"; }
  grep -q '^BENCH ' "$out" || { cat "$out" >&2; die "wrk printed no figures ($label)"; }
  local bad
  bad=$(($(field non2xx "$out") + $(field connect "$out") + $(field read "$out") +
    $(field write "$out") + $(field timeout "$out")))
  if [ "$bad" -gt 0 ]; then
    say "WARNING: $label: $(field non2xx "$out") non-2xx responses, socket errors" \
      "connect $(field connect "$out") read $(field read "$out") write $(field write "$out")" \
      "timeout $(field timeout "$out")"
    grep -E 'Non-2xx|Socket errors' "$out" >&2 || true
    logicd_errors
  fi
}

# show LABEL OUTFILE: wrk's report, then the figures on one line.
show() {
  local out=$2
  sed -n '/^Running/,/^Transfer/p' "$out"
  printf '%s: %s req/s  p50 %s ms  p99 %s ms  (requests %s, non-2xx %s, socket errors %s)\n' \
    "$1" "$(field rps "$out")" "$(field p50_ms "$out")" "$(field p99_ms "$out")" \
    "$(field requests "$out")" "$(field non2xx "$out")" \
    "$(($(field connect "$out") + $(field read "$out") + $(field write "$out") + $(field timeout "$out")))"
}

# ---- logicd ----

# metric BASE_URL NAME_WITH_LABELS: a value from logicd's /metrics (0 when absent).
metric() {
  local v
  v=$(curl -fsS "$1/metrics" | awk -v m="$2" '$1 == m { print $2 }' | tail -1)
  printf '%s\n' "${v:-0}"
}

# mint_tokens INTERNAL_URL SERVER_KEY APP_ID FIRST_UID LAST_UID OUTFILE: one
# user token a line, minted through one curl process reusing its connection.
mint_tokens() {
  local url=$1 key=$2 app=$3 first=$4 last=$5 out=$6 cfg u
  cfg=$(mktemp)
  for u in $(seq "$first" "$last"); do
    [ "$u" -gt "$first" ] && echo next >>"$cfg"
    printf 'url = "%s/v1/tokens"\nheader = "Authorization: Bearer %s"\nheader = "Content-Type: application/json"\ndata = "{\\"app_id\\":\\"%s\\",\\"uid\\":\\"%d\\",\\"ttl_s\\":86400}"\nwrite-out = "\\n"\nsilent\n' \
      "$url" "$key" "$app" "$u" >>"$cfg"
  done
  curl -K "$cfg" | grep -o '"token":"[^"]*"' | cut -d'"' -f4 >"$out"
  rm -f "$cfg"
  [ "$(wc -l <"$out")" -eq $((last - first + 1)) ] ||
    die "minted $(wc -l <"$out") tokens, wanted $((last - first + 1))"
}
