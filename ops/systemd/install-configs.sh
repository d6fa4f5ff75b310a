#!/bin/sh
# Run by meson install (meson.add_install_script): copies the sample
# configs into SYSCONFDIR/mbox (under $DESTDIR), mode 0640, but never over
# a file that exists: an installed config holds the operator's secrets.
#   install-configs.sh SRC_DIR SYSCONFDIR_MBOX
set -eu
src=$1
dest=${DESTDIR:-}$2
if [ -n "${MESON_INSTALL_DRY_RUN:-}" ]; then
  echo "would install the sample configs of $src into $dest"
  exit 0
fi
mkdir -p "$dest"
for f in "$src"/*.conf; do
  name=$(basename "$f")
  if [ -e "$dest/$name" ]; then
    echo "Keeping $dest/$name (exists; the new sample is $src/$name)"
    continue
  fi
  install -m 0640 "$f" "$dest/$name"
  echo "Installing $f to $dest/$name"
  # The units run as user mbox: let its group read the file when it exists.
  if [ -z "${DESTDIR:-}" ] && [ "$(id -u)" -eq 0 ] && getent group mbox >/dev/null 2>&1; then
    chgrp mbox "$dest/$name"
  fi
done
