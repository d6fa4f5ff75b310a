// README.md against a real stack (PostgreSQL, Redis, logicd, lcsd;
// sdk/js/test/harness.mjs):
//   * ops/run's demo data (mbox_demo_seed of ops/lib/common.sh) is written
//     once: run twice it leaves one demo message in user 9's mailbox and one
//     published demo notice; with the notice deleted, the next run writes a
//     new one;
//   * the curl walk-through, taken from README.md and run by bash as written
//     (after ops/run: var/stack.env points at the test stack, build/ is the
//     build under test), ends with an `mbox watch` that prints both the
//     message and the notice the walk-through published.
import test from 'node:test';
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, mkdirSync, rmSync, existsSync, readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { REPO, BUILD } from './util.mjs';
import { startStack } from '../../sdk/js/test/harness.mjs';

let stack;
let state;
test.before(async () => {
  stack = await startStack();
  state = mkdtempSync('/tmp/mbox-readme-');
});
test.after(async () => {
  await stack?.stop();
  if (state) rmSync(state, { recursive: true, force: true });
});

function stackEnv() {
  return {
    ...process.env,
    MBOX_SDK_URL: stack.sdkUrl,
    MBOX_INTERNAL_URL: stack.internalUrl,
    MBOX_WS_URL: stack.wsUrl,
    MBOX_SERVER_KEY: stack.serverKey,
    MBOX_OPS_TOKEN: stack.opsToken,
  };
}

test('ops/run seeds its demo data once', { timeout: 120000 }, async () => {
  const seed = () => {
    // As ops/run calls it: under set -euo pipefail, from its demo().
    const script = 'set -euo pipefail; . "$1/ops/lib/common.sh"; demo() { mbox_demo_seed "$1" || return 1; }; demo "$2"';
    const r = spawnSync('bash', ['-c', script, 'seed', REPO, state], {
      env: stackEnv(), encoding: 'utf8', timeout: 30000,
    });
    assert.equal(r.status, 0, `mbox_demo_seed failed: ${r.stdout}${r.stderr}`);
    return r.stdout;
  };
  const counts = async () => {
    const tok = await stack.mintToken(9);
    const r = await fetch(`${stack.sdkUrl}/v1/history?limit=500`, { headers: { Authorization: `Bearer ${tok}` } });
    assert.equal(r.status, 200);
    const items = (await r.json()).items;
    const list = await stack.internal('GET', '/v1/notices?app_id=1', undefined, stack.opsToken);
    return {
      messages: items.filter((i) => i.kind === 'message' && i.content === 'hello from ops/run').length,
      notices: list.notices.filter((n) => n.title === 'Welcome' && n.state === 'published').length,
    };
  };

  const out1 = seed();
  assert.match(out1, /publish\s+-> notice \d+, state published/);
  assert.deepEqual(await counts(), { messages: 1, notices: 1 });
  const out2 = seed();
  assert.match(out2, /"duplicate":true/);
  assert.match(out2, /not added again/);
  assert.deepEqual(await counts(), { messages: 1, notices: 1 }, 'a second run added demo data');

  // A database without that notice (wiped, or the notice deleted) gets a new one.
  const id = out1.match(/notice (\d+)/)[1];
  await stack.internal('POST', `/v1/notices/${id}/stop`, undefined, stack.opsToken);
  await stack.internal('DELETE', `/v1/notices/${id}`, undefined, stack.opsToken);
  seed();
  assert.deepEqual(await counts(), { messages: 1, notices: 1 });
  assert.ok(existsSync(path.join(state, 'demo-notice.id')));
});

/** The sh block of README.md's "A curl walk-through" section. */
function walkthrough() {
  const readme = readFileSync(path.join(REPO, 'README.md'), 'utf8');
  const section = readme.split(/^## A curl walk-through$/m)[1];
  assert.ok(section, 'README.md has no "A curl walk-through" section');
  const m = section.match(/```sh\n([\s\S]*?)```/);
  assert.ok(m, 'no sh block in the walk-through');
  return m[1];
}

test('the README walk-through works as written; its watch shows the message and the notice', { timeout: 60000 }, async () => {
  const tok9 = await stack.mintToken(9);
  let script = walkthrough();
  assert.match(script, /^ops\/run$/m);
  assert.match(script, /^\. var\/stack\.env$/m);
  // ops/run has run: its var/stack.env names the test stack, and build/ is
  // the build under test. The watch runs for 4 s (the README's Ctrl-C).
  const cwd = path.join(state, 'checkout');
  mkdirSync(path.join(cwd, 'var'), { recursive: true });
  const env = stackEnv();
  writeFileSync(path.join(cwd, 'var/stack.env'), ['MBOX_SDK_URL', 'MBOX_INTERNAL_URL', 'MBOX_WS_URL', 'MBOX_SERVER_KEY', 'MBOX_OPS_TOKEN']
    .map((k) => `export ${k}=${env[k]}\n`).join(''));
  script = script.replace(/^ops\/run$/m, ': ops/run is up');
  assert.match(script, /^build\/services\/client\/mbox watch /m, 'the walk-through ends with build/services/client/mbox watch');
  script = script.replace(/^build\/services\/client\/mbox watch /m, `sleep 1; echo; timeout -s INT 4 ${BUILD}/services/client/mbox watch `);
  const clean = { ...process.env };
  for (const k of Object.keys(clean)) if (k.startsWith('MBOX_')) delete clean[k];
  clean.MBOX_BUILD_ROOT = BUILD;
  const r = spawnSync('bash', ['-c', script], { cwd, env: clean, encoding: 'utf8', timeout: 40000 });
  const out = r.stdout;
  assert.doesNotMatch(out, /"error"/, `an error in the walk-through:\n${out}\n${r.stderr}`);
  assert.match(out, /"duplicate":false/, out);
  assert.match(out, /"state":"published"/, out);
  assert.match(out, /"added":1/, out);
  assert.match(out, /"version":2/, 'the PATCH with If-Match: 1 applied');
  // The watch's lines: the message and the notice (after its edit).
  const watched = out.split('\n').filter((l) => l.startsWith('{"kind"'));
  assert.ok(watched.some((l) => /"kind":"message"/.test(l) && /"content":"hello"/.test(l)), `watch did not print the message:\n${out}\n${r.stderr}`);
  assert.ok(watched.some((l) => /"kind":"notice"/.test(l) && /"title":"Maintenance"/.test(l)),
    `watch did not print the notice:\n${watched.join('\n')}\n${r.stderr}`);

  // The flags are what make the notice appear: without them it stays away.
  const bare = spawnSync('bash', ['-c', `timeout -s INT 3 ${BUILD}/services/client/mbox watch --token "$1" --device laptop2`, 'w', tok9], {
    cwd, env: { ...clean, MBOX_SDK_URL: env.MBOX_SDK_URL, MBOX_WS_URL: env.MBOX_WS_URL }, encoding: 'utf8', timeout: 20000,
  });
  assert.match(bare.stdout, /"kind":"message"/, bare.stderr);
  assert.doesNotMatch(bare.stdout, /"title":"Maintenance"/);
});
