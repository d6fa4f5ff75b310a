#!/usr/bin/env bash
# tests/install/install_layout.sh BUILD_DIR: `meson install --destdir` into
# a temporary directory lays out what a system service needs (binaries,
# migrations, sample configs, units, docs), a second install keeps an
# edited config, and the installed logicd, given the installed sample
# config with only the database and the two required secrets filled in,
# finds the installed migrations by itself: `logicd --migrate-only` run from
# / (no migrations/ around) applies every file to a private PostgreSQL.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
build=$(cd "${1:?usage: install_layout.sh BUILD_DIR}" && pwd)
# shellcheck source=../../ops/lib/common.sh
. "$root/ops/lib/common.sh"
# shellcheck source=../../ops/bench/lib.sh
. "$root/ops/bench/lib.sh"
work=$(mktemp -d /tmp/mbox-install-XXXXXX)
chmod 755 "$work" # the postgres user reaches its data directory
cleanup() { "$root/ops/servers" pg-stop "$work" >/dev/null 2>&1 || true; rm -rf "$work"; }
trap cleanup EXIT
dest=$work/dest
fail=0
bad() { echo "FAIL: $*"; fail=1; }

meson install -C "$build" --no-rebuild --quiet --destdir "$dest" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; exit 1; }
prefix=$(meson introspect "$build" --buildoptions | python3 -c \
  'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="prefix"))')
sysconf=$(meson introspect "$build" --buildoptions | python3 -c \
  'import json,sys; print(next(o["value"] for o in json.load(sys.stdin) if o["name"]=="sysconfdir"))')
case $sysconf in /*) ;; *) sysconf=$prefix/$sysconf ;; esac
p=$dest$prefix
echo "installed under $dest (prefix $prefix, sysconfdir $sysconf)"

for f in bin/logicd bin/lcsd bin/mbox; do [ -x "$p/$f" ] || bad "$f missing or not executable"; done
n_src=$(ls "$root"/migrations/*.sql | wc -l)
n_inst=$(ls "$p"/share/mbox/migrations/*.sql 2>/dev/null | wc -l)
[ "$n_src" -gt 0 ] && [ "$n_src" -eq "$n_inst" ] || bad "migrations: $n_inst installed of $n_src"
for f in logicd.conf lcsd.conf; do
  c=$dest$sysconf/mbox/$f
  [ -f "$c" ] || { bad "$sysconf/mbox/$f missing"; continue; }
  [ "$(stat -c %a "$c")" = 640 ] || bad "$f mode $(stat -c %a "$c"), not 640"
  cmp -s "$c" "$root/etc/mbox/$f" || bad "$f differs from etc/mbox/$f"
done
for u in mbox-logicd.service mbox-lcsd@.service; do
  [ -f "$p/lib/systemd/system/$u" ] || bad "unit $u missing"
done
grep -q "^ExecStart=$prefix/bin/logicd -c $sysconf/mbox/logicd.conf\$" \
  "$p/lib/systemd/system/mbox-logicd.service" || bad "logicd unit ExecStart does not name the install"
grep -q "^ExecStart=$prefix/bin/lcsd -c $sysconf/mbox/%i.conf\$" \
  "$p/lib/systemd/system/mbox-lcsd@.service" || bad "lcsd unit ExecStart does not name the install"
[ -f "$p/lib/sysusers.d/mbox.conf" ] || bad "sysusers.d/mbox.conf missing"
[ -f "$p/share/doc/mbox/deploy.md" ] || bad "docs missing"
[ -f "$p/share/mbox/console/index.html" ] || bad "console missing"
# --help is complete: the daemon flags and the signals.
# (Output captured first: grep -q ending a pipe early is a SIGPIPE under pipefail.)
help=$("$p/bin/logicd" --help)
grep -q -- "--migrate-only" <<<"$help" || bad "logicd --help lacks --migrate-only"
for d in logicd lcsd; do
  help=$("$p/bin/$d" --help)
  grep -q "SIGHUP" <<<"$help" || bad "$d --help lacks the signals"
  "$p/bin/$d" -c "$dest$sysconf/mbox/$d.conf" --check-config >/dev/null || bad "$d sample does not load"
done
# The sample alone does not start: the required secrets are empty.
if "$p/bin/logicd" -c "$dest$sysconf/mbox/logicd.conf" 2>"$work/err"; then
  bad "logicd started with the sample's empty server_key"
fi
grep -q "server_key' must be set" "$work/err" || bad "no clear error for the empty server_key: $(cat "$work/err")"

# A second install keeps an edited config.
echo "# edited" >>"$dest$sysconf/mbox/logicd.conf"
meson install -C "$build" --no-rebuild --quiet --destdir "$dest" >"$work/install2.log" 2>&1 ||
  { cat "$work/install2.log"; exit 1; }
tail -1 "$dest$sysconf/mbox/logicd.conf" | grep -q "^# edited$" || bad "a reinstall overwrote the edited config"

# The installed logicd finds the installed migrations (migrations_dir empty).
port=$(free_port)
pass=$(head -c 12 /dev/urandom | od -An -tx1 | tr -d ' \n')
"$root/ops/servers" pg-start "$work" "$port" "$pass" fsync=off >/dev/null || { echo "PostgreSQL did not start"; exit 1; }
conf=$work/logicd.conf
sed -e "s|^#pg_conninfo = .*|pg_conninfo = \"host=127.0.0.1 port=$port dbname=mbox user=mbox password=$pass\"|" \
    -e "s|^server_key =\$|server_key = $pass-server|" -e "s|^token_key =\$|token_key = $pass-token|" \
    "$dest$sysconf/mbox/logicd.conf" >"$conf"
grep -q '^migrations_dir' "$conf" && bad "the sample sets migrations_dir"
(cd / && "$p/bin/logicd" -c "$conf" --migrate-only) >"$work/migrate.log" 2>&1 ||
  { cat "$work/migrate.log"; bad "installed logicd --migrate-only failed"; }
grep -q "event=migrations_dir_resolved dir=$p/bin/../share/mbox/migrations" "$work/migrate.log" ||
  bad "logicd did not pick the installed migrations: $(grep migrations_dir "$work/migrate.log")"
applied=$(PGPASSWORD=$pass "$PG_BIN/psql" -h 127.0.0.1 -p "$port" -U mbox -d mbox -qtAc \
  "SELECT count(*) FROM schema_migrations" 2>&1 || true)
[ "$applied" = "$n_src" ] || bad "schema_migrations has '$applied' rows, expected $n_src"
echo "installed logicd applied $applied migrations from $p/share/mbox/migrations"

[ $fail -eq 0 ] || { echo "FAILED"; exit 1; }
echo "install layout ok"
