// The demo inbox in Debian's Chromium (playwright-core, no downloaded
// browser) against the real stack with CORS allowing the demo's origin:
// live message within 1 s, a notice, mark-read and hide, recall, lcsd
// stopped (state offline) and restarted (missed messages arrive), the
// browser going offline and back, and a reload keeping the cursor. Any
// console error or page error fails the test; the only exception is
// Chromium's own "WebSocket connection ... failed" line while lcsd is
// deliberately down (the browser prints it for every refused connection and
// no page code can silence it). A screenshot is kept in
// test-artifacts/demo-inbox.png (MBOX_ARTIFACTS_DIR overrides the folder).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startStack, freePort, waitFor, sleep } from './harness.mjs';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ARTIFACTS = process.env.MBOX_ARTIFACTS_DIR ?? path.join(PKG, 'test-artifacts');
const CHROMIUM = process.env.MBOX_CHROMIUM ?? '/usr/bin/chromium';

let st, server, browser, profile;

before(async () => {
  const port = await freePort();
  const origin = `http://127.0.0.1:${port}`;
  st = await startStack({ logicdConfig: `cors_allow_origins = ${origin}` });
  server = spawn(process.execPath, [path.join(PKG, 'demo/serve.mjs'), '--port', String(port)], { stdio: ['ignore', 'pipe', 'inherit'] });
  await new Promise((resolve, reject) => {
    server.stdout.on('data', (d) => { if (String(d).includes('listening on')) resolve(); });
    server.once('exit', (code) => reject(new Error(`demo server exited (${code})`)));
  });
  st.demoOrigin = origin;
  profile = mkdtempSync('/tmp/mbox-chromium-');
  // A persistent context on a fresh profile directory: the --user-data-dir of our own.
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 900, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  if (server && server.exitCode === null) {
    const gone = new Promise((r) => server.once('exit', r));
    server.kill('SIGTERM');
    await gone;
  }
  await st?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

test('demo inbox: live updates, notices, offline state and catch-up, in Chromium', async (t) => {
  const token = await st.mintToken(9);
  const url = `${st.demoOrigin}/demo/#sync=${encodeURIComponent(st.sdkUrl)}&ws=${encodeURIComponent(st.wsUrl)}` +
    `&uid=9&token=${encodeURIComponent(token)}`;
  const context = browser;
  const page = await context.newPage();
  const problems = [];
  let lcsdDown = false;
  let tolerated = 0;
  page.on('console', (m) => {
    if (m.type() !== 'error') return;
    const text = m.text();
    const expected = /^WebSocket connection to 'ws:\/\/127\.0\.0\.1:\d+\/ws' failed/.test(text);
    if (expected && lcsdDown) tolerated++;
    else problems.push(`console error: ${text}`);
  });
  page.on('pageerror', (e) => problems.push(`page error: ${e.message}`));
  page.on('requestfailed', (r) => { if (!lcsdDown) problems.push(`request failed: ${r.url()} ${r.failure()?.errorText}`); });

  const state = () => page.locator('#state').getAttribute('data-state');
  const li = (text) => page.locator('#items li', { hasText: text });
  try {
    await page.goto(url);
    await page.waitForFunction(() => document.querySelector('#state')?.dataset.state === 'online' &&
      document.body.dataset.started === '1', null, { timeout: 10000 });

    // A first message warms the path up (connections, CORS preflight cache); the next one
    // through the internal API is on the page within 1 s.
    await st.send([9], 'warm-up');
    await li('warm-up').waitFor({ timeout: 3000 });
    const t0 = Date.now();
    const first = await st.send([9], 'hello browser');
    await li('hello browser').waitFor({ timeout: 1000 });
    const latency = Date.now() - t0;
    assert.ok(latency < 1000, `latency ${latency} ms`);

    // A published notice, with its title.
    const n = await st.publishNotice('Scheduled maintenance', 'the service pauses at 02:00');
    await li('Scheduled maintenance').waitFor({ timeout: 3000 });
    assert.equal(await li('Scheduled maintenance').getAttribute('data-notice-id'), n.notice_id);

    // Mark-read (a message) and hide (the notice) go through CORS to the SDK listener.
    await li('hello browser').locator('.read-btn').click();
    await page.waitForFunction(() => document.querySelector('#items li.read') !== null, null, { timeout: 3000 });
    await li('Scheduled maintenance').locator('.hide-btn').click();
    await li('Scheduled maintenance').waitFor({ state: 'detached', timeout: 3000 });

    // A recall removes the message it names.
    const doomed = await st.send([9], 'to be recalled');
    await li('to be recalled').waitFor({ timeout: 2000 });
    await st.recall(9, doomed);
    await li('to be recalled').waitFor({ state: 'detached', timeout: 2000 });

    // lcsd stops: the page says offline. Messages sent meanwhile arrive after the restart.
    lcsdDown = true;
    await st.stopLcsd();
    await page.waitForFunction(() => document.querySelector('#state')?.dataset.state === 'offline', null, { timeout: 5000 });
    await st.send([9], 'missed one');
    await st.send([9], 'missed two');
    await sleep(500);
    assert.equal(await li('missed one').count(), 0);
    await st.startLcsd();
    await page.waitForFunction(() => document.querySelector('#state')?.dataset.state === 'online', null, { timeout: 10000 });
    lcsdDown = false;
    await li('missed one').waitFor({ timeout: 3000 });
    await li('missed two').waitFor({ timeout: 3000 });

    // The browser goes offline: the client pauses (no retries); back online it catches up.
    await context.setOffline(true);
    await page.waitForFunction(() => document.querySelector('#state')?.dataset.state === 'offline', null, { timeout: 3000 });
    await st.send([9], 'while the browser was offline');
    await context.setOffline(false);
    await li('while the browser was offline').waitFor({ timeout: 5000 });
    assert.equal(await state(), 'online');

    // A reload keeps the cursor (localStorage) and shows each message once.
    const cursorBefore = await page.evaluate(() => window.mboxDemo.client.cursor);
    assert.ok(cursorBefore.length > 0);
    await page.reload();
    await page.waitForFunction(() => document.querySelector('#state')?.dataset.state === 'online', null, { timeout: 10000 });
    const stored = await page.evaluate(() => Object.entries(localStorage).find(([k]) => k.startsWith('mbox-client:cursor:'))?.[1]);
    assert.ok(stored && stored.length > 0, 'cursor in localStorage');
    await li('hello browser').waitFor({ timeout: 3000 });
    assert.equal(await li('hello browser').count(), 1);
    assert.equal(await li('to be recalled').count(), 0);
    assert.equal(await li('Scheduled maintenance').count(), 0, 'hidden notice stays hidden');
    await st.send([9], 'after reload');
    await li('after reload').waitFor({ timeout: 1000 });
    assert.ok(first);
    const welcome = await st.publishNotice('Welcome to the demo', 'notices are stored once for every user');
    await li('Welcome to the demo').waitFor({ timeout: 3000 });
    assert.equal(await li('Welcome to the demo').getAttribute('data-notice-id'), welcome.notice_id);

    t.diagnostic(`message latency ${latency} ms; ${tolerated} refused-WebSocket lines while lcsd was down`);
    assert.deepEqual(problems, []);
  } finally {
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: path.join(ARTIFACTS, 'demo-inbox.png'), fullPage: true }).catch(() => undefined);
    await page.close();
  }
});
