#!/usr/bin/env bash
# sdk/js/test.sh [BUILD_DIR]: the JavaScript SDK's suites.
#   unit.test.mjs     the client's rules on a fake transport, the mini-program adapter on a fake wx
#   stack.test.mjs    the SDK against the real stack (PostgreSQL, Redis, logicd, lcsd of BUILD_DIR)
#   browser.test.mjs  the demo inbox in Debian's Chromium (playwright-core)
# BUILD_DIR (default build) is relative to the repository root. Installs what
# is missing (chromium, node, npm packages), builds the package, runs node
# --test (TAP: "# tests N", "# pass N", "# fail N") and exits non-zero on a
# failure. The demo's screenshot is kept in sdk/js/test-artifacts/.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../ops/lib/common.sh
. "$here/../../ops/lib/common.sh"
build=${1:-build}

mbox_install_deps chromium
"$here/build.sh"
if [ ! -x "$MBOX_ROOT/$build/services/logic/logicd" ] || [ ! -x "$MBOX_ROOT/$build/services/lcs/lcsd" ]; then
  mbox_build "$build"
fi

cd "$here"
export MBOX_BUILD_ROOT=$MBOX_ROOT/$build
# One file at a time: each starts its own stack (and Chromium) on a 2-core machine.
status=0
node --test --test-reporter=tap --test-concurrency=1 \
  test/unit.test.mjs test/stack.test.mjs test/browser.test.mjs || status=$?
say "sdk/js: screenshot of the demo: $here/test-artifacts/demo-inbox.png"
exit $status
