#!/usr/bin/env bash
# sdk/js/build.sh: installs the package's npm dependencies when missing or
# stale (npm ci from package-lock.json; offline-safe once they are cached)
# and compiles src/ to dist/ (tsc). Used by sdk/js/test.sh and ops/run.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=../../ops/lib/common.sh
. "$here/../../ops/lib/common.sh"

command -v node >/dev/null 2>&1 || mbox_install_deps nodejs
command -v npm >/dev/null 2>&1 || mbox_install_deps npm

cd "$here"
# node_modules/.package-lock.json is what npm last installed: stale when the lock is newer.
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  say "sdk/js: npm ci"
  npm ci --prefer-offline --no-audit --no-fund --loglevel=error >&2 || die "npm ci failed in sdk/js"
fi
node_modules/.bin/tsc -p tsconfig.json >&2 || die "tsc failed in sdk/js"
node -e 'import("./dist/index.js").then((m) => { if (typeof m.MboxClient !== "function") process.exit(1); })' ||
  die "sdk/js/dist/index.js does not import in Node"
