#!/usr/bin/env bash
# console/test.sh [BUILD_DIR]: the operations console's suites.
#   model.test.mjs    the page's pure helpers (node)
#   console.test.mjs  the console in Debian's Chromium (playwright-core)
#                     against the real stack: PostgreSQL, Redis and the
#                     logicd of BUILD_DIR serving console/www
# BUILD_DIR (default build) is relative to the repository root. Installs
# what is missing (chromium, node, npm packages), type-checks www/ (tsc),
# runs node --test (TAP: "# tests N", "# pass N", "# fail N") and exits
# non-zero on a failure. Screenshots go to console/test-artifacts/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../ops/lib/common.sh
. "$here/../ops/lib/common.sh"
build=${1:-build}

mbox_install_deps chromium
command -v node >/dev/null 2>&1 || mbox_install_deps nodejs
command -v npm >/dev/null 2>&1 || mbox_install_deps npm
cd "$here"
# node_modules/.package-lock.json is what npm last installed: stale when the lock is newer.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "console: npm ci"
  npm ci --prefer-offline --no-audit --no-fund --loglevel=error >&2 || die "npm ci failed in console"
fi
node_modules/.bin/tsc -p tsconfig.json >&2 || die "tsc found errors in console/www"
if [ ! -x "$MBOX_ROOT/$build/services/logic/logicd" ]; then
  mbox_build "$build"
fi

export MBOX_BUILD_ROOT=$MBOX_ROOT/$build
status=0
node --test --test-reporter=tap --test-concurrency=1 test/model.test.mjs test/console.test.mjs || status=$?
say "console: screenshots in $here/test-artifacts/"
exit $status
