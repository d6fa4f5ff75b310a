#!/usr/bin/env bash
# tests/install/verify_units.sh BUILD_DIR: `systemd-analyze verify` on the
# units meson install lays out. Verify checks that ExecStart's binary
# exists, so the build is first installed into a temporary DESTDIR and the
# copies that are verified point their absolute binary paths into it;
# nothing else of the units is changed. Any message about a unit, not only
# a non-zero exit, fails: systemd-analyze only warns about an unknown key
# or a bad value.
set -euo pipefail
build=$(cd "${1:?usage: verify_units.sh BUILD_DIR}" && pwd)
command -v systemd-analyze >/dev/null || { echo "systemd-analyze is missing (Debian systemd)"; exit 1; }
work=$(mktemp -d /tmp/mbox-units-XXXXXX)
trap 'rm -rf "$work"' EXIT
dest=$work/dest
meson install -C "$build" --no-rebuild --quiet --destdir "$dest" >"$work/install.log" 2>&1 ||
  { cat "$work/install.log"; exit 1; }
unitdir=$(find "$dest" -path '*/systemd/system' -type d | head -1)
[ -n "$unitdir" ] || { echo "no systemd/system directory under the install"; exit 1; }
mkdir -p "$work/units"
fail=0
checked=0
for unit in "$unitdir"/mbox-logicd.service "$unitdir"/mbox-lcsd@.service; do
  [ -f "$unit" ] || { echo "missing $unit"; fail=1; continue; }
  name=$(basename "$unit")
  # A template is verified as an instance (lcsd reads /etc/mbox/lcsd.conf).
  [ "$name" = "mbox-lcsd@.service" ] && name=mbox-lcsd@lcsd.service
  bin=$(sed -n 's|^ExecStart=\([^ ]*\).*|\1|p' "$unit")
  [ -n "$bin" ] && [ -x "$dest$bin" ] || { echo "$name: ExecStart binary $bin not installed"; fail=1; continue; }
  sed "s|^ExecStart=$bin|ExecStart=$dest$bin|" "$unit" >"$work/units/$name"
  out=$(cd "$work/units" && systemd-analyze verify "$work/units/$name" 2>&1) || {
    echo "$name: systemd-analyze verify failed:"; echo "$out"; fail=1; continue; }
  if echo "$out" | grep -q "mbox"; then
    echo "$name: systemd-analyze verify complained:"; echo "$out"; fail=1; continue
  fi
  for key in Type=notify WatchdogSec= Restart=on-failure LimitNOFILE= NoNewPrivileges=yes \
             ProtectSystem=strict PrivateTmp=yes ProtectHome=yes 'ExecReload=/bin/kill -HUP $MAINPID'; do
    grep -q "^$key" "$unit" || { echo "$name: no $key"; fail=1; }
  done
  echo "$name: verified"
  checked=$((checked + 1))
done
grep -q '^LimitNOFILE=1048576$' "$unitdir/mbox-lcsd@.service" || { echo "lcsd: LimitNOFILE not 1048576"; fail=1; }
# The check can fail: a unit with an unknown key must be reported.
sed 's/^Type=notify/Type=notify\nNoSuchKey=1/' "$work/units/mbox-logicd.service" >"$work/units/broken.service"
if (cd "$work/units" && systemd-analyze verify "$work/units/broken.service" 2>&1) | grep -q NoSuchKey; then
  echo "a broken unit is reported (as it should be)"
else
  echo "systemd-analyze did not report an unknown key: this check is blind"; fail=1
fi
[ $fail -eq 0 ] && [ $checked -eq 2 ] || { echo "FAILED"; exit 1; }
echo "2 units verified"
