// The operations console in Debian's Chromium (playwright-core, no
// downloaded browser) against the real stack (harness.mjs): sign-in, a
// notice created in the form, prepublish (a whitelisted user sees it
// through /v1/sync, another does not), publish (the other user sees it),
// a concurrent edit producing the conflict message, an editor who cannot
// publish (button absent, API 403), the whitelist page, the audit page and
// the reach chart. Every page is checked for console errors and reached
// and driven by keyboard; a screenshot of each is kept in
// test-artifacts/ (MBOX_ARTIFACTS_DIR overrides the folder).
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync, mkdtempSync, rmSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';
import { startStack, waitFor } from './harness.mjs';

const PKG = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const ARTIFACTS = process.env.MBOX_ARTIFACTS_DIR ?? path.join(PKG, 'test-artifacts');
const CHROMIUM = process.env.MBOX_CHROMIUM ?? '/usr/bin/chromium';

let st, browser, profile;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  st = await startStack();
  profile = mkdtempSync('/tmp/mbox-chromium-');
  browser = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1200, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
      '--disable-background-networking', '--disable-component-update', '--disable-sync'],
  });
});

after(async () => {
  await browser?.close();
  await st?.stop();
  if (profile) rmSync(profile, { recursive: true, force: true });
});

/**
 * A page whose console errors and page errors are collected. Chromium logs
 * every HTTP error answer of a fetch as a console error; a step that
 * provokes one on purpose declares it with expectHttp(status).
 */
async function openPage() {
  const page = await browser.newPage();
  const errors = [];
  page.on('console', (m) => { if (m.type() === 'error') errors.push(m.text()); });
  page.on('pageerror', (e) => errors.push(`pageerror: ${e.message}`));
  page.expectHttp = (status) => {
    const i = errors.findIndex((e) => e.includes(`status of ${status}`));
    assert.ok(i >= 0, `expected a ${status} in the console: ${JSON.stringify(errors)}`);
    errors.splice(i, 1);
  };
  page.assertNoErrors = () => assert.deepEqual(errors, [], 'console errors');
  return page;
}

/** Presses Tab until the focused element has role and name (keyboard-only navigation); fails after 80 presses. */
async function tabTo(page, role, name) {
  for (let i = 0; i < 80; i++) {
    await page.keyboard.press('Tab');
    const hit = await page.evaluate(([r, n]) => {
      const e = document.activeElement;
      if (!e) return false;
      const tag = e.tagName.toLowerCase();
      const roleOf = e.getAttribute('role') ?? ({ a: 'link', button: 'button', textarea: 'textbox', select: 'combobox' }[tag]
        ?? (tag === 'input' ? ({ checkbox: 'checkbox', password: 'textbox' }[e.getAttribute('type') ?? ''] ?? 'textbox') : tag));
      const label = e.id ? document.querySelector(`label[for="${e.id}"]`)?.textContent : null;
      const accName = (e.getAttribute('aria-label') ?? label ?? e.textContent ?? '').trim();
      return roleOf === r && accName === n;
    }, [role, name]);
    if (hit) return;
  }
  throw new Error(`keyboard: Tab never reached ${role} "${name}"`);
}

const shot = (page, name) => page.screenshot({ path: path.join(ARTIFACTS, `${name}.png`), fullPage: true });

async function signIn(page, tok) {
  await page.goto(st.consoleUrl);
  await page.getByLabel('Ops token').waitFor();
  // keyboard only: the field has focus, Enter submits
  await page.keyboard.type(tok);
  await page.keyboard.press('Enter');
  await page.getByRole('button', { name: 'Sign out' }).waitFor();
}

async function confirm(page, buttonName, expectText) {
  await tabTo(page, 'button', buttonName);
  await page.keyboard.press('Enter');
  const dialog = page.getByRole('dialog');
  await dialog.waitFor();
  assert.match(await dialog.textContent(), expectText);
  // the dialog opens with "Confirm" focused: Enter confirms
  assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Confirm');
  await page.keyboard.press('Enter');
  await page.getByRole('status').filter({ hasText: `${buttonName}: done.` }).waitFor();
}

test('publisher: notice lifecycle, gray release, conflict, reach, whitelist and audit', async () => {
  const page = await openPage();
  await signIn(page, st.publisherToken);
  assert.equal(await page.locator('#who-text').textContent(), 'alice (publisher)');
  await page.getByRole('heading', { name: 'Notices' }).waitFor();
  await shot(page, 'notices-empty');

  // whitelist: bad lines reported, then add and remove
  await tabTo(page, 'link', 'Whitelist');
  await page.keyboard.press('Enter');
  await page.getByLabel('App').fill('1');
  await page.getByLabel('App').press('Enter');
  await page.getByLabel('UIDs').waitFor();
  await page.getByLabel('UIDs').fill('7\nabc, 8');
  await tabTo(page, 'button', 'Add');
  await page.keyboard.press('Enter');
  await page.getByText("line 2: 'abc' is not a uid").waitFor();
  assert.equal((await st.api('GET', '/v1/whitelist?app_id=1')).body.uids.length, 0, 'nothing added while a line is bad');
  await page.getByLabel('UIDs').fill('7, 8\n12');
  await page.getByRole('button', { name: 'Add' }).click();
  await page.getByText('3 uids on the whitelist of app 1').waitFor();
  await page.getByRole('row').filter({ hasText: '12' }).getByRole('button', { name: 'Remove' }).click();
  await page.getByText('2 uids on the whitelist of app 1').waitFor();
  assert.deepEqual((await st.api('GET', '/v1/whitelist?app_id=1')).body.uids, ['7', '8']);
  await shot(page, 'whitelist');

  // new notice through the form, keyboard only up to the first field
  await page.goto(`${st.consoleUrl}#/notices`);
  await tabTo(page, 'button', 'New notice');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'New notice' }).waitFor();
  await page.getByLabel('App').fill('1');
  await page.getByLabel('Title').fill('Maintenance tonight');
  await page.getByLabel('Content').fill('The service pauses at 02:00 for ten minutes.');
  const platforms = page.getByRole('group', { name: 'Platforms' });
  await platforms.getByLabel('ios').check();
  await platforms.getByLabel('android').check();
  await page.getByLabel('Min core level').fill('220819');
  await page.getByLabel('Logged-in users only').check();
  await page.getByLabel('Starts at').fill('2030-01-02T10:00');
  await page.getByLabel('Expires at').fill('2030-01-01T10:00');
  await page.getByRole('button', { name: 'Save' }).click();
  // the API's validation error lands next to its field
  await page.locator('#err-expire').filter({ hasText: 'expire_at must be after start_at' }).waitFor();
  page.expectHttp(400);
  await shot(page, 'notice-form-error');
  await page.getByLabel('Starts at').fill('');
  await page.getByLabel('Expires at').fill('');
  await tabTo(page, 'button', 'Save');
  await page.keyboard.press('Enter');
  const heading = page.getByRole('heading', { name: /^Notice \d+: Maintenance tonight$/ });
  await heading.waitFor();
  const id = (await heading.textContent()).match(/^Notice (\d+)/)[1];
  assert.equal(await page.locator('#targeting-words').textContent(),
    'Targets: iOS and Android, core level ≥ 220819, logged-in users only, whitelist only while prepublished.');
  assert.match(await page.locator('#sync-item').textContent(), /"title": "Maintenance tonight"/);
  await shot(page, 'notice-draft');

  // prepublish: the whitelisted user 7 sees it, user 9 does not
  await confirm(page, 'Prepublish', /whitelist of app 1/);
  await page.getByText('prepublished', { exact: true }).waitFor();
  await waitFor(async () => (await st.syncNotices(7)).includes(id), 5000, 'user 7 sees the prepublished notice');
  assert.ok(!(await st.syncNotices(9)).includes(id), 'user 9 must not see a prepublished notice');

  // publish: now user 9 sees it
  await confirm(page, 'Publish', /Every user of app 1 will see this notice/);
  await page.getByText('published', { exact: true }).waitFor();
  await waitFor(async () => (await st.syncNotices(9)).includes(id), 5000, 'user 9 sees the published notice');

  // reach: the sampler (1 s) writes a point, the chart draws it
  await waitFor(async () => {
    await page.getByRole('button', { name: 'Refresh reach' }).click();
    return (await page.locator('#reach-chart circle.point').count()) > 0
      && (await page.getByRole('img', { name: /Reach over time: \d+ samples, latest 2 / }).count()) === 1;
  }, 10000, 'a reach sample of 2');
  assert.match(await page.locator('#reach-now').textContent(), /Reach now: 2 users/);
  await shot(page, 'notice-published-reach');

  // a concurrent edit between opening and saving the form
  await tabTo(page, 'button', 'Edit');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: /^Edit notice/ }).waitFor();
  const cur = await st.api('GET', `/v1/notices/${id}`);
  // (by another publisher: an editor may not edit a published notice)
  const other = await st.api('PATCH', `/v1/notices/${id}`, { title: 'Maintenance tonight (moved)' }, st.otherPublisherToken, { 'If-Match': cur.etag });
  assert.equal(other.status, 200);
  await page.getByLabel('Content').fill('My own change');
  await page.getByRole('button', { name: 'Save' }).click();
  const conflict = page.getByRole('alert').filter({ hasText: 'Someone else changed this notice' });
  await conflict.waitFor();
  page.expectHttp(412);
  assert.match(await conflict.textContent(), /changed by carol/);
  assert.match(await conflict.textContent(), /title: − Maintenance tonight \+ Maintenance tonight \(moved\)/);
  await shot(page, 'notice-conflict');
  const after = await st.api('GET', `/v1/notices/${id}`);
  assert.equal(after.body.content, 'The service pauses at 02:00 for ten minutes.', 'nothing overwritten');
  await conflict.getByRole('button', { name: 'Reload' }).click();
  await page.getByRole('heading', { name: `Edit notice ${id} (version ${after.body.version})` }).waitFor();
  assert.equal(await page.getByLabel('Title').inputValue(), 'Maintenance tonight (moved)');

  // audit: every action, with the edit's diff
  await tabTo(page, 'link', 'Audit');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: 'Audit' }).waitFor();
  const rows = page.getByRole('row');
  await rows.filter({ hasText: 'whitelist_add' }).first().waitFor();
  for (const [who, action] of [['alice', 'create'], ['alice', 'prepublish'], ['alice', 'publish'], ['carol', 'edit'], ['alice', 'whitelist_remove']]) {
    assert.ok(await rows.filter({ hasText: who }).filter({ hasText: action }).count() >= 1, `audit: ${who} ${action}`);
  }
  assert.match(await rows.filter({ hasText: 'carol' }).textContent(), /title: − Maintenance tonight \+ Maintenance tonight \(moved\)/);
  await shot(page, 'audit');

  // stop by keyboard, then the list shows it
  await page.goto(`${st.consoleUrl}#/notice/${id}`);
  await confirm(page, 'Stop', /Nobody will receive this notice any more/);
  await page.goto(`${st.consoleUrl}#/notices`);
  await page.getByRole('row').filter({ hasText: 'stopped' }).waitFor();
  await shot(page, 'notices');
  page.assertNoErrors();
  await page.close();
});

test('editor: no publish button, and the API answers 403', async () => {
  const n = await st.api('POST', '/v1/notices', { app_id: '2', title: 'Editor draft' }, st.editorToken);
  assert.equal(n.status, 201);
  const id = n.body.notice_id;
  const page = await openPage();
  await signIn(page, st.editorToken);
  assert.equal(await page.locator('#who-text').textContent(), 'bob (editor)');
  // filter the list by keyboard
  await tabTo(page, 'textbox', 'App');
  await page.keyboard.type('2');
  await page.keyboard.press('Enter');
  await page.getByText('1 notice, newest first').waitFor();
  assert.equal(await page.getByRole('row').count(), 2);
  assert.equal(await page.getByRole('cell', { name: 'Editor draft' }).count(), 1);
  await tabTo(page, 'link', 'Editor draft');
  await page.keyboard.press('Enter');
  await page.getByRole('heading', { name: `Notice ${id}: Editor draft` }).waitFor();
  assert.equal(await page.getByRole('button', { name: 'Prepublish' }).isEnabled(), true);
  for (const name of ['Publish', 'Stop', 'Retract', 'Delete'])
    assert.equal(await page.getByRole('button', { name, exact: true }).count(), 0, `${name} hidden from an editor`);
  await shot(page, 'notice-editor');
  const r = await st.api('POST', `/v1/notices/${id}/publish`, undefined, st.editorToken);
  assert.equal(r.status, 403);
  assert.equal(r.body.error.code, 'permission_denied');
  await confirm(page, 'Prepublish', /whitelist of app 2/);
  // sign out by keyboard
  await tabTo(page, 'button', 'Sign out');
  await page.keyboard.press('Enter');
  await page.getByLabel('Ops token').waitFor();
  assert.equal(await page.evaluate(() => sessionStorage.length), 0);
  await shot(page, 'sign-in');
  page.assertNoErrors();
  await page.close();
});

test('a wrong token is refused on the sign-in page', async () => {
  const page = await openPage();
  await page.goto(st.consoleUrl);
  await page.getByLabel('Ops token').fill('wrong');
  await page.getByRole('button', { name: 'Sign in' }).click();
  await page.getByText('That ops token was not accepted.').waitFor();
  page.expectHttp(401);
  page.assertNoErrors();
  await page.close();
});
