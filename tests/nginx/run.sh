#!/usr/bin/env bash
# tests/nginx/run.sh [BUILD_DIR]: ops/nginx/mbox.conf in front of the real
# stack, with TLS.
#
# Starts a private PostgreSQL and Redis (ops/servers), logicd (with
# trusted_proxies = 127.0.0.1/32, log_level = debug) and lcsd on free
# loopback ports, makes a throwaway CA and a server certificate for
# 127.0.0.1 and localhost with openssl, fills the placeholders of
# ops/nginx/mbox.conf and starts nginx as an unprivileged-style instance
# (its own prefix, pid, error log and temp paths under a temporary
# directory; `nginx -p DIR -c conf -g 'daemon off;'`, stopped by pid). Then:
#
#   - a sync over HTTPS answers 200 with a JSON cursor, over HTTP/2 (h2);
#   - a send through the internal HTTPS listener answers 200;
#   - `mbox watch` logs in over wss:// and gets the message of a send as a
#     notify + a sync over https://, verifying nginx's certificate against
#     the throwaway CA; `mbox sync` over https:// reads it too;
#   - the client refuses: no CA (system store), another CA, a certificate
#     of the right CA for another name (openssl s_server), each with a
#     clear "certificate verify failed" reason;
#   - X-Request-Id: a client's id comes back and is logicd's req=; without
#     one, nginx's $request_id does the same;
#   - logicd logs client=127.0.0.2 for a client connecting to nginx from
#     127.0.0.2 (a forged X-Forwarded-For left of it is ignored), and a
#     forged X-Forwarded-For sent straight to logicd by an untrusted peer
#     (127.0.0.3) is ignored: client=127.0.0.3.
#
# Prints one line per check and "nginx: N checks, F failures"; exits 1 on a
# failure. Bounded by MBOX_NGINX_TEST_LIMIT seconds (default 240).
# MBOX_NGINX_KEEP=1 keeps the temporary directory (configs, logs).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../ops/lib/common.sh
. "$here/../../ops/lib/common.sh"
# shellcheck source=../../ops/bench/lib.sh
. "$MBOX_ROOT/ops/bench/lib.sh" # free_port

BUILD=${MBOX_BUILD_ROOT:-$MBOX_ROOT/${1:-build}}
LOGICD=$BUILD/services/logic/logicd
LCSD=$BUILD/services/lcs/lcsd
MBOX=$BUILD/services/client/mbox
NGINX=$(command -v nginx || echo /usr/sbin/nginx)
LIMIT=${MBOX_NGINX_TEST_LIMIT:-240}
for b in "$LOGICD" "$LCSD" "$MBOX"; do [ -x "$b" ] || die "no $b: build first"; done
[ -x "$NGINX" ] || die "no nginx (apt-get install nginx; ops/lib/common.sh installs it)"
command -v openssl >/dev/null || die "no openssl"

DIR=$(mktemp -d /tmp/mbox-nginx.XXXXXX)
chmod 755 "$DIR" # the postgres user reaches its data directory
PIDS=()
WATCHDOG=

cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  if [ -n "$WATCHDOG" ]; then kill "$WATCHDOG" 2>/dev/null || true; fi
  "$MBOX_ROOT/ops/servers" redis-stop "$DIR" >/dev/null 2>&1 || true
  "$MBOX_ROOT/ops/servers" pg-stop "$DIR" >/dev/null 2>&1 || true
  if [ "${MBOX_NGINX_KEEP:-0}" = 1 ]; then say "kept $DIR"; else rm -rf "$DIR"; fi
}
trap cleanup EXIT
main=$$
(
  trap 'kill "$s" 2>/dev/null; exit 0' TERM
  sleep "$LIMIT" &
  s=$!
  wait "$s" && kill -TERM "$main"
) 2>/dev/null &
WATCHDOG=$!
trap 'say "nginx test: time limit (${LIMIT}s) reached"; exit 1' TERM

checks=0 failures=0
ok() { checks=$((checks + 1)); printf '  ok    %s\n' "$*"; }
fail() { checks=$((checks + 1)); failures=$((failures + 1)); printf '  FAIL  %s\n' "$*"; }
check() { if eval "$2"; then ok "$1"; else fail "$1"; fi; }
# wait_grep SECONDS STRING FILE: true once FILE holds STRING.
wait_grep() {
  local i
  for ((i = 0; i < $1 * 10; i++)); do
    grep -qF -- "$2" "$3" 2>/dev/null && return 0
    sleep 0.1
  done
  return 1
}
# The value of KEY= in logicd's http_request line of request id ID.
req_field() { grep -F "req=$1 " "$DIR/logicd.log" | grep -F 'http_request' | tail -1 |
  sed -n "s/.* $2=\([^ ]*\).*/\1/p"; }
show_logs() {
  local f
  for f in logicd.log lcsd.log nginx-error.log watch.err; do
    [ -f "$DIR/$f" ] || continue
    say "---- $f (last 20 lines)"
    tail -20 "$DIR/$f" >&2
  done
}

# ---- servers ----------------------------------------------------------------
# Other test runs pick free ports too: a port taken between free_port and
# the bind ("Address already in use") is retried with new ports.
PG_PASS=$(mbox_secret) SERVER_KEY=$(mbox_secret) TOKEN_KEY=$(mbox_secret)
started=
for _ in 1 2 3; do
  PG_PORT=$(free_port)
  if "$MBOX_ROOT/ops/servers" pg-start "$DIR" "$PG_PORT" "$PG_PASS" fsync=off \
    full_page_writes=off 2>"$DIR/pg-start.err"; then started=1; break; fi
done
[ -n "$started" ] || { cat "$DIR/pg-start.err" >&2; die "PostgreSQL did not start"; }
started=
for _ in 1 2 3; do
  REDIS_PORT=$(free_port)
  if "$MBOX_ROOT/ops/servers" redis-start "$DIR" "$REDIS_PORT"; then started=1; break; fi
done
[ -n "$started" ] || die "Redis did not start"
CONNINFO="host=127.0.0.1 port=$PG_PORT dbname=mbox user=mbox password=$PG_PASS"

# wait_up PID URL: true once URL answers 2xx (20 s at most), false when PID died.
wait_up() {
  local i
  for ((i = 0; i < 200; i++)); do
    curl -fsS -o /dev/null "$2" 2>/dev/null && return 0
    kill -0 "$1" 2>/dev/null || return 1
    sleep 0.1
  done
  return 1
}
# start_daemon NAME: starts logicd or lcsd (write_NAME_conf picks its ports)
# and waits for its health check; retries when a port was taken meanwhile.
start_daemon() {
  local name=$1 pid
  for _ in 1 2 3; do
    "write_${name}_conf"
    if [ "$name" = logicd ]; then
      "$LOGICD" -c "$DIR/logicd.conf" >"$DIR/logicd.log" 2>&1 &
      pid=$!
      wait_up "$pid" "http://127.0.0.1:$INTERNAL_PORT/healthz" && { PIDS+=("$pid"); return 0; }
    else
      "$LCSD" -c "$DIR/lcsd.conf" >"$DIR/lcsd.log" 2>&1 &
      pid=$!
      wait_up "$pid" "http://127.0.0.1:$ADMIN_PORT/healthz" && { PIDS+=("$pid"); return 0; }
    fi
    kill "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
    grep -q "Address already in use" "$DIR/$name.log" || break
    say "$name: a port was taken, retrying with others"
  done
  show_logs
  die "$name did not start"
}
write_logicd_conf() {
  SDK_PORT=$(free_port) INTERNAL_PORT=$(free_port)
  cat >"$DIR/logicd.conf" <<EOF
sdk_listen = 127.0.0.1:$SDK_PORT
internal_listen = 127.0.0.1:$INTERNAL_PORT
pg_conninfo = "$CONNINFO"
redis_port = $REDIS_PORT
server_key = $SERVER_KEY
token_key = $TOKEN_KEY
migrations_dir = $MBOX_ROOT/migrations
poll_interval_ms = 200
log_level = debug
trusted_proxies = 127.0.0.1/32 ::1/128
EOF
}
write_lcsd_conf() {
  WS_PORT=$(free_port) ADMIN_PORT=$(free_port)
  cat >"$DIR/lcsd.conf" <<EOF
ws_listen = 127.0.0.1:$WS_PORT
admin_listen = 127.0.0.1:$ADMIN_PORT
redis_port = $REDIS_PORT
token_key = $TOKEN_KEY
node_id = lcs-nginx
log_level = debug
EOF
}
write_logicd_conf
"$LOGICD" -c "$DIR/logicd.conf" --migrate-only >"$DIR/migrate.log" 2>&1 ||
  { cat "$DIR/migrate.log" >&2; die "migrations failed"; }
start_daemon logicd
start_daemon lcsd

# ---- certificates: a throwaway CA, a server certificate, a stranger CA -------
mkdir -p "$DIR/tls"
(
  cd "$DIR/tls"
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=mbox test CA" \
    -keyout ca.key -out ca.pem -addext basicConstraints=critical,CA:TRUE \
    -addext keyUsage=critical,keyCertSign,cRLSign
  openssl req -newkey rsa:2048 -nodes -subj "/CN=127.0.0.1" -keyout server.key -out server.csr
  printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n' >server.ext
  openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile server.ext -out server.pem
  # Signed by the right CA, but for another name: hostname verification must refuse it.
  openssl req -newkey rsa:2048 -nodes -subj "/CN=other.example" -keyout wrong.key -out wrong.csr
  printf 'subjectAltName=DNS:other.example\nextendedKeyUsage=serverAuth\n' >wrong.ext
  openssl x509 -req -in wrong.csr -CA ca.pem -CAkey ca.key -CAcreateserial -days 2 \
    -extfile wrong.ext -out wrong.pem
  # A CA nobody trusts.
  openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=stranger CA" \
    -keyout stranger.key -out stranger.pem
) >"$DIR/openssl.log" 2>&1 || { cat "$DIR/openssl.log" >&2; die "openssl failed"; }
CA=$DIR/tls/ca.pem

# ---- nginx --------------------------------------------------------------------
mkdir -p "$DIR/nginx/logs" "$DIR/nginx/tmp"
# write_nginx_conf: ops/nginx/mbox.conf with fresh ports, in the main context
# Debian's /etc/nginx/nginx.conf would give, made private.
write_nginx_conf() {
  NGX_SDK=$(free_port) NGX_INTERNAL=$(free_port) NGX_WS=$(free_port)
  sed -e "s|@SDK_LISTEN@|127.0.0.1:$NGX_SDK|" -e "s|@INTERNAL_LISTEN@|127.0.0.1:$NGX_INTERNAL|" \
    -e "s|@WS_LISTEN@|127.0.0.1:$NGX_WS|" -e "s|@SERVER_NAME@|localhost|" \
    -e "s|@CERT@|$DIR/tls/server.pem|" -e "s|@KEY@|$DIR/tls/server.key|" \
    -e "s|@LOGICD_SDK@|127.0.0.1:$SDK_PORT|" -e "s|@LOGICD_INTERNAL@|127.0.0.1:$INTERNAL_PORT|" \
    -e "s|@LCSD_WS@|127.0.0.1:$WS_PORT|" -e "s|@LOG_DIR@|$DIR/nginx/logs|" \
    "$MBOX_ROOT/ops/nginx/mbox.conf" >"$DIR/nginx/mbox.conf"
  local left
  left=$(grep -v '^ *#' "$DIR/nginx/mbox.conf" | grep -o '@[A-Z_]*@' | sort -u | tr '\n' ' ' || true)
  [ -z "$left" ] || die "placeholders left in mbox.conf: $left"
  {
    [ "$(id -u)" -eq 0 ] && echo "user root;" # workers must reach the temp directory
    cat <<EOF
worker_processes 1;
pid $DIR/nginx/nginx.pid;
error_log $DIR/nginx-error.log info;
events { worker_connections 256; }
http {
    client_body_temp_path $DIR/nginx/tmp/body;
    proxy_temp_path $DIR/nginx/tmp/proxy;
    fastcgi_temp_path $DIR/nginx/tmp/fastcgi;
    uwsgi_temp_path $DIR/nginx/tmp/uwsgi;
    scgi_temp_path $DIR/nginx/tmp/scgi;
    access_log off;
    include $DIR/nginx/mbox.conf;
}
EOF
  } >"$DIR/nginx/nginx.conf"
}
started=
for _ in 1 2 3; do
  write_nginx_conf
  "$NGINX" -t -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -e "$DIR/nginx-error.log" \
    >"$DIR/nginx-t.log" 2>&1 || { cat "$DIR/nginx-t.log" >&2; die "nginx -t failed"; }
  "$NGINX" -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -e "$DIR/nginx-error.log" \
    -g 'daemon off;' >"$DIR/nginx.out" 2>&1 &
  pid=$!
  for ((i = 0; i < 100; i++)); do
    curl -fs -o /dev/null --cacert "$CA" "https://127.0.0.1:$NGX_INTERNAL/healthz" &&
      { started=1; break; }
    kill -0 "$pid" 2>/dev/null || break
    sleep 0.1
  done
  if [ -n "$started" ]; then PIDS+=("$pid"); break; fi
  kill "$pid" 2>/dev/null || true
  wait "$pid" 2>/dev/null || true
  grep -q "Address already in use" "$DIR/nginx-error.log" || break
  say "nginx: a port was taken, retrying with others"
done
[ -n "$started" ] || { show_logs; die "nginx did not start"; }
ok "nginx -t accepts ops/nginx/mbox.conf, and nginx serves logicd's /healthz over HTTPS"

SDK=https://127.0.0.1:$NGX_SDK
INTERNAL=https://127.0.0.1:$NGX_INTERNAL
WSS=wss://localhost:$NGX_WS/ws
UID_=$((100000 + RANDOM))
TOKEN=$(curl -sS --cacert "$CA" -H "Authorization: Bearer $SERVER_KEY" \
  -d "{\"app_id\":\"1\",\"uid\":\"$UID_\",\"ttl_s\":3600}" "$INTERNAL/v1/tokens" |
  sed -n 's/.*"token":"\([^"]*\)".*/\1/p')
check "a token minted through the internal HTTPS listener" '[ -n "$TOKEN" ]'

# ---- a sync over HTTPS, HTTP/2 -------------------------------------------------
out=$(curl -sS --http2 --cacert "$CA" -o "$DIR/sync.json" \
  -w '%{http_code} %{http_version}' -H "Authorization: Bearer $TOKEN" \
  -H 'Content-Type: application/json' -d '{"cursor":"","limit":10}' "$SDK/v1/sync" || true)
check "sync over HTTPS answers 200 over HTTP/2 (got: $out)" '[ "$out" = "200 2" ]'
check "the sync body is JSON with a cursor and items" \
  'grep -q "\"cursor\":\"" "$DIR/sync.json" && grep -q "\"items\":\[" "$DIR/sync.json"'

# ---- mbox watch over wss:// + https://, then a send through the internal listener ----
"$MBOX" watch --ws "$WSS" --sdk "https://localhost:$NGX_SDK" --cacert "$CA" --token "$TOKEN" \
  --device nginx-test >"$DIR/watch.out" 2>"$DIR/watch.err" &
WATCH_PID=$!
PIDS+=("$WATCH_PID")
check "mbox watch logs in over wss:// (state online)" \
  'wait_grep 15 "state=online" "$DIR/watch.err"'
sleep 1 # the login's first sync
out=$(curl -sS --http2 --cacert "$CA" -o "$DIR/send.json" -w '%{http_code} %{http_version}' \
  -H "Authorization: Bearer $SERVER_KEY" \
  -d "{\"app_id\":\"1\",\"from_uid\":\"7\",\"to_uids\":[\"$UID_\"],\"content\":\"over-tls\"}" \
  "$INTERNAL/v1/messages" || true)
check "a send through the internal HTTPS listener answers 200 over HTTP/2 (got: $out)" \
  '[ "$out" = "200 2" ] && grep -q "\"results\":\[" "$DIR/send.json"'
check "the notify reached mbox watch over wss:// and its sync over https:// fetched the message" \
  'wait_grep 15 "\"content\":\"over-tls\"" "$DIR/watch.out"'
kill "$WATCH_PID" 2>/dev/null || true
wait "$WATCH_PID" 2>/dev/null || true
# nginx logs a WebSocket request when it ends.
check "the long connection went through nginx's wss server (101 in its log, lcsd's conn_login)" \
  'wait_grep 5 "\"GET /ws HTTP/1.1\" 101" "$DIR/nginx/logs/mbox-ws-access.log" &&
   grep -q "conn_login.*uid=$UID_ device=nginx-test" "$DIR/lcsd.log"'

out=$("$MBOX" sync --sdk "$SDK" --cacert "$CA" --token "$TOKEN" 2>"$DIR/sync1.err" || echo "status=$?")
check "mbox sync over https:// with the CA reads the message" '[[ $out == *\"over-tls\"* ]]'

# ---- the client refuses certificates that do not verify ----------------------------
rc=0
"$MBOX" sync --sdk "$SDK" --token "$TOKEN" >/dev/null 2>"$DIR/sync2.err" || rc=$?
check "mbox sync without the CA (system store) fails (status $rc, 2 expected)" '[ "$rc" = 2 ]'
check "... with a clear reason" 'grep -q "certificate verify failed" "$DIR/sync2.err"'
rc=0
"$MBOX" sync --sdk "$SDK" --cacert "$DIR/tls/stranger.pem" --token "$TOKEN" >/dev/null \
  2>"$DIR/sync3.err" || rc=$?
check "mbox sync with another CA fails with a clear reason (status $rc)" \
  '[ "$rc" = 2 ] && grep -q "certificate verify failed" "$DIR/sync3.err"'
rc=0
timeout 20 "$MBOX" watch --ws "$WSS" --sdk "$SDK" --cacert "$DIR/tls/stranger.pem" \
  --token "$TOKEN" >/dev/null 2>"$DIR/watch2.err" || rc=$?
check "mbox watch with another CA stops with status 4 and a clear reason (status $rc)" \
  '[ "$rc" = 4 ] && grep -q "^mbox: tls: localhost: certificate verify failed" "$DIR/watch2.err"'
rc=0
"$MBOX" sync --sdk "$SDK" --cacert "$DIR/tls/nonexistent.pem" --token "$TOKEN" >/dev/null \
  2>"$DIR/sync4.err" || rc=$?
check "a missing --cacert file is a usage error (status $rc)" \
  '[ "$rc" = 1 ] && grep -q "cannot load the CA certificates" "$DIR/sync4.err"'
# A server whose certificate is signed by our CA but names another host.
WRONG_PORT=$(free_port)
openssl s_server -accept "127.0.0.1:$WRONG_PORT" -cert "$DIR/tls/wrong.pem" \
  -key "$DIR/tls/wrong.key" -www -quiet >/dev/null 2>&1 &
PIDS+=($!)
for ((i = 0; i < 50; i++)); do
  ss -Htln "sport = :$WRONG_PORT" | grep -q . && break
  sleep 0.1
done
rc=0
"$MBOX" sync --sdk "https://127.0.0.1:$WRONG_PORT" --cacert "$CA" --token "$TOKEN" >/dev/null \
  2>"$DIR/sync5.err" || rc=$?
check "mbox sync refuses a certificate for another address (status $rc)" \
  '[ "$rc" = 2 ] && grep -q "IP address mismatch" "$DIR/sync5.err"'
rc=0
"$MBOX" sync --sdk "https://localhost:$WRONG_PORT" --cacert "$CA" --token "$TOKEN" >/dev/null \
  2>"$DIR/sync6.err" || rc=$?
check "mbox sync refuses a certificate for another name (status $rc)" \
  '[ "$rc" = 2 ] && grep -q "hostname mismatch" "$DIR/sync6.err"'

# ---- X-Request-Id ----------------------------------------------------------------
hdr=$(curl -sS --cacert "$CA" -o /dev/null -D - -H "X-Request-Id: nginx-test-rid-1" \
  -H "Authorization: Bearer $TOKEN" -d '{"cursor":""}' "$SDK/v1/sync" | tr -d '\r' |
  sed -n 's/^[Xx]-[Rr]equest-[Ii]d: //p')
check "a client's X-Request-Id comes back through nginx (got: $hdr)" '[ "$hdr" = nginx-test-rid-1 ]'
check "... and is the req= of logicd's request line" 'wait_grep 5 "req=nginx-test-rid-1 " "$DIR/logicd.log"'
hdr=$(curl -sS --cacert "$CA" -o /dev/null -D - -H "Authorization: Bearer $TOKEN" \
  -d '{"cursor":""}' "$SDK/v1/sync" | tr -d '\r' | sed -n 's/^[Xx]-[Rr]equest-[Ii]d: //p')
check "without one, nginx's \$request_id (32 hex digits) comes back (got: $hdr)" \
  '[[ $hdr =~ ^[0-9a-f]{32}$ ]]'
check "... and is the req= of logicd's request line" 'wait_grep 5 "req=$hdr " "$DIR/logicd.log"'

# ---- the client address -----------------------------------------------------------
curl -sS --cacert "$CA" --interface 127.0.0.2 -o /dev/null -H "X-Request-Id: nginx-test-ip-1" \
  -H "Authorization: Bearer $TOKEN" -d '{"cursor":""}' "$SDK/v1/sync" || true
wait_grep 5 "req=nginx-test-ip-1 " "$DIR/logicd.log" || true
got=$(req_field nginx-test-ip-1 client)
check "through nginx, logicd logs the real client (client=127.0.0.2, got: $got)" \
  '[ "$got" = 127.0.0.2 ]'
curl -sS --cacert "$CA" --interface 127.0.0.2 -o /dev/null -H "X-Request-Id: nginx-test-ip-2" \
  -H "X-Forwarded-For: 6.6.6.6" -H "Authorization: Bearer $TOKEN" -d '{"cursor":""}' \
  "$SDK/v1/sync" || true
wait_grep 5 "req=nginx-test-ip-2 " "$DIR/logicd.log" || true
got=$(req_field nginx-test-ip-2 client)
check "a forged X-Forwarded-For through nginx is ignored (client=127.0.0.2, got: $got)" \
  '[ "$got" = 127.0.0.2 ]'
curl -sS --interface 127.0.0.3 -o /dev/null -H "X-Request-Id: nginx-test-ip-3" \
  -H "X-Forwarded-For: 6.6.6.6" -H "Authorization: Bearer $TOKEN" -d '{"cursor":""}' \
  "http://127.0.0.1:$SDK_PORT/v1/sync" || true
wait_grep 5 "req=nginx-test-ip-3 " "$DIR/logicd.log" || true
got=$(req_field nginx-test-ip-3 client)
check "a forged X-Forwarded-For sent straight to logicd by an untrusted peer is ignored (client=127.0.0.3, got: $got)" \
  '[ "$got" = 127.0.0.3 ]'
curl -sS --interface 127.0.0.1 -o /dev/null -H "X-Request-Id: nginx-test-ip-4" \
  -H "X-Forwarded-For: 203.0.113.9" -H "Authorization: Bearer $TOKEN" -d '{"cursor":""}' \
  "http://127.0.0.1:$SDK_PORT/v1/sync" || true
wait_grep 5 "req=nginx-test-ip-4 " "$DIR/logicd.log" || true
got=$(req_field nginx-test-ip-4 client)
check "from a trusted peer the header is believed (client=203.0.113.9, got: $got)" \
  '[ "$got" = 203.0.113.9 ]'

# ---- plain http:// still works -----------------------------------------------------
out=$("$MBOX" sync --sdk "http://127.0.0.1:$SDK_PORT" --token "$TOKEN" 2>/dev/null || true)
check "mbox sync over plain http:// still works" '[[ $out == *\"over-tls\"* ]]'

[ "$failures" -eq 0 ] || show_logs
printf 'nginx: %d checks, %d failures\n' "$checks" "$failures"
[ "$failures" -eq 0 ]
