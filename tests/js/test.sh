#!/usr/bin/env bash
# tests/js/test.sh [BUILD_DIR]: the JavaScript suites of tests/js.
#   openapi.test.mjs    docs/openapi.yaml: a valid OpenAPI 3.1 document, the
#                       same routes as the code's route tables, and every
#                       reply of a live stack (PostgreSQL, Redis, logicd and
#                       lcsd of BUILD_DIR) valid against it
#   readme.test.mjs     README.md: ops/run's demo data is written once (run
#                       twice), and the curl walk-through runs as written
#   grafana.test.mjs    ops/grafana/mbox.json: every metric its queries name
#                       exists on a live logicd's and lcsd's /metrics
# BUILD_DIR (default build) is relative to the repository root. Installs
# what is missing (node, npm packages: npm ci from package-lock.json), runs
# node --test (TAP: "# tests N", "# pass N", "# fail N") and exits non-zero
# on a failure.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../ops/lib/common.sh
. "$here/../../ops/lib/common.sh"
build=${1:-build}

command -v node >/dev/null 2>&1 || mbox_install_deps nodejs
command -v npm >/dev/null 2>&1 || mbox_install_deps npm
cd "$here"
# node_modules/.package-lock.json is what npm last installed: stale when the lock is newer.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "tests/js: npm ci"
  npm ci --prefer-offline --no-audit --no-fund --loglevel=error >&2 || die "npm ci failed in tests/js"
fi
if [ ! -x "$MBOX_ROOT/$build/services/logic/logicd" ] || [ ! -x "$MBOX_ROOT/$build/services/lcs/lcsd" ] ||
  [ ! -x "$MBOX_ROOT/$build/services/client/mbox" ]; then
  mbox_build "$build"
fi

export MBOX_BUILD_ROOT=$MBOX_ROOT/$build
# One file at a time: each starts its own stack on a 2-core machine.
node --test --test-reporter=tap --test-concurrency=1 openapi.test.mjs readme.test.mjs grafana.test.mjs
