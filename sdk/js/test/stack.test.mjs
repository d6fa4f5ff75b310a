// The SDK against the real stack (PostgreSQL, Redis, logicd, lcsd started by
// harness.mjs): sends, notices, heartbeats, reconnect after lcsd is killed
// and restarted, kick, reset, token refresh and the 401 retry. Node has no
// global WebSocket in version 20: the client loads the ws package.
import { test, before, after } from 'node:test';
import assert from 'node:assert/strict';
import { MboxClient, memoryStorage } from '../dist/index.js';
import { startStack, waitFor, sleep } from './harness.mjs';

let st;
const clients = [];

before(async () => {
  // heartbeat_s = 1: a client that does not ping is closed after 3 s, so
  // every test that stays online for seconds also checks the heartbeats.
  st = await startStack({ lcsdConfig: 'heartbeat_s = 1' });
});

after(async () => {
  for (const c of clients) await c.stop();
  await st?.stop();
});

/** A started client for uid with recorders for its events. */
async function open(uid, extra = {}) {
  const c = new MboxClient({
    syncUrl: st.sdkUrl, wsUrl: st.wsUrl, token: extra.token ?? (await st.mintToken(uid)), deviceId: `node-${uid}`,
    platform: 'web', appVersion: '1.0.0', coreLevel: 100, storage: memoryStorage(),
    reconnect: { baseMs: 100, capMs: 1000 }, ...extra,
  });
  const rec = { items: [], states: [], errors: [], resets: 0 };
  c.on('items', (it) => rec.items.push(...it));
  c.on('state', (s) => rec.states.push(s));
  c.on('error', (e) => rec.errors.push(e));
  c.on('reset', () => rec.resets++);
  clients.push(c);
  await c.start();
  return { c, rec };
}

const contents = (rec) => rec.items.filter((i) => i.kind === 'message').map((i) => i.content);

test('sends arrive live, in msg_id order, once; recall is delivered; the cursor resumes', async () => {
  const storage = memoryStorage();
  const { c, rec } = await open(101, { storage });
  assert.equal(c.state, 'online');
  const t0 = Date.now();
  const first = await st.send([101], 'one');
  await waitFor(() => contents(rec).includes('one'), 1000, 'message one');
  assert.ok(Date.now() - t0 < 1000);
  await st.send([101], 'two');
  await st.send([101], 'three');
  await waitFor(() => contents(rec).length === 3, 2000, 'three messages');
  assert.deepEqual(contents(rec), ['one', 'two', 'three']);
  const ids = rec.items.map((i) => BigInt(i.msg_id));
  assert.deepEqual(ids, [...ids].sort((a, b) => (a < b ? -1 : 1)));
  await c.sync(); // nothing new: nothing delivered twice
  assert.equal(rec.items.length, 3);

  await st.recall(101, first);
  await waitFor(() => rec.items.some((i) => i.kind === 'recall'), 2000, 'recall item');
  assert.equal(rec.items.at(-1).recalled_msg_id, first);

  // Another client on the same storage (a page reload) starts from the saved cursor.
  const cursor = c.cursor;
  await c.stop();
  await st.send([101], 'four');
  const again = await open(101, { storage });
  assert.equal(typeof cursor, 'string');
  assert.deepEqual(contents(again.rec), ['four']);
  const page = await again.c.history({ order: 'asc', limit: 10 });
  assert.deepEqual(page.items.map((i) => i.content), ['two', 'three', 'four']);
  assert.equal(page.has_more, false);
  const read = await again.c.markRead([page.items[0].msg_id]);
  assert.equal(read.updated, 1);
  assert.equal(again.rec.errors.length, 0);
});

test('notices: delivered with their title, again on a new version, then retracted; hide', async () => {
  const { c, rec } = await open(102);
  const n = await st.publishNotice('Maintenance', 'tonight at 2');
  await waitFor(() => rec.items.some((i) => i.kind === 'notice'), 3000, 'notice');
  const got = rec.items.find((i) => i.kind === 'notice');
  assert.equal(got.title, 'Maintenance');
  assert.equal(got.notice_id, n.notice_id);
  await c.sync();
  assert.equal(rec.items.filter((i) => i.kind === 'notice').length, 1, 'same version once');

  const edited = await st.internal('PATCH', `/v1/notices/${n.notice_id}`, { title: 'Maintenance (moved)' }, st.opsToken);
  assert.equal(edited.version, 2);
  // A notify, and the sync it causes brings the new version, once the
  // poller has read the edit (every 200 ms); until then pull again.
  await st.send([102], 'nudge');
  const pulled = (pred) => async () => rec.items.some(pred) || (await c.sync(), rec.items.some(pred));
  await waitFor(pulled((i) => i.kind === 'notice' && i.version === 2), 3000, 'version 2');
  assert.equal(rec.items.find((i) => i.version === 2).title, 'Maintenance (moved)');

  await c.hide(n.notice_id);
  const page = await c.history({});
  assert.ok(!page.items.some((i) => i.kind === 'notice' && i.notice_id === n.notice_id), 'hidden');
  await assert.rejects(c.hide('999999'), { code: 'not_found', status: 404 });

  const m = await st.publishNotice('Promo', 'x');
  await waitFor(() => rec.items.some((i) => i.notice_id === m.notice_id), 3000, 'second notice');
  await st.noticeAction(m.notice_id, 'retract');
  await st.send([102], 'nudge 2');
  await waitFor(pulled((i) => i.kind === 'retract' && i.notice_id === m.notice_id), 3000, 'retract item');
});

test('heartbeats keep an idle session online for several periods', async () => {
  const { c, rec } = await open(103);
  await sleep(4500); // heartbeat_s = 1: without pings lcsd closes after 3 s
  assert.equal(c.state, 'online');
  assert.deepEqual(rec.states, ['connecting', 'online']);
});

test('reconnect after lcsd is killed and restarted: offline, then the missed messages by catch-up sync', async () => {
  const { c, rec } = await open(104);
  await st.stopLcsd('SIGKILL');
  await waitFor(() => c.state === 'offline', 3000, 'offline');
  await st.send([104], 'while down 1');
  await st.send([104], 'while down 2');
  await sleep(300);
  assert.deepEqual(contents(rec), [], 'nothing without a connection');
  await st.startLcsd();
  await waitFor(() => c.state === 'online', 5000, 'online again');
  await waitFor(() => contents(rec).length === 2, 2000, 'catch-up');
  assert.deepEqual(contents(rec), ['while down 1', 'while down 2']);
  await st.send([104], 'after');
  await waitFor(() => contents(rec).length === 3, 2000, 'live again');
});

test('kick: the same device logging in elsewhere stops the first client for good', async () => {
  const tok = await st.mintToken(105);
  const a = await open(105, { token: tok });
  const b = await open(105, { token: tok });
  await waitFor(() => a.c.state === 'kicked', 2000, 'kicked');
  assert.ok(a.rec.errors.some((e) => e.code === 'kicked'));
  await sleep(1500); // beyond the 1 s backoff cap: a reconnect would kick b
  assert.equal(b.c.state, 'online');
  assert.deepEqual(b.rec.states, ['connecting', 'online']);
  await st.send([105], 'to b');
  await waitFor(() => contents(b.rec).includes('to b'), 2000, 'b receives');
  assert.ok(!contents(a.rec).includes('to b'));
});

test('token refresh: a function token keeps the session past its first expiry', async () => {
  let calls = 0;
  const token = async () => { calls++; return st.mintToken(106, { ttl_s: 3 }); };
  const { c, rec } = await open(106, { token });
  await sleep(4500); // the first token expired 1.5 s ago: lcsd would have closed with 4401
  assert.equal(c.state, 'online');
  assert.deepEqual(rec.states, ['connecting', 'online'], 'same session, no reconnect');
  assert.ok(calls >= 2, `token function called ${calls} times`);
  await st.send([106], 'fresh');
  await waitFor(() => contents(rec).includes('fresh'), 2000, 'delivery after refresh');
  assert.deepEqual(rec.errors, []);

  // Control: a fixed token of the same life is closed at its expiry (4401).
  const fixed = await open(107, { token: await st.mintToken(107, { ttl_s: 2 }) });
  await waitFor(() => fixed.c.state === 'offline', 4000, 'fixed token session closed');
  await fixed.c.stop();
});

test('a 401 asks the token function once and retries; a bad fixed token is an error event', async () => {
  let calls = 0;
  const token = async () => (++calls === 1 ? 'v1.k1.AAAA.AAAA' : st.mintToken(108));
  const { c, rec } = await open(108, { token });
  assert.ok(calls >= 2);
  await st.send([108], 'after 401');
  await waitFor(() => contents(rec).includes('after 401'), 3000, 'delivery');
  assert.equal(c.state, 'online');

  const bad = new MboxClient({ syncUrl: st.sdkUrl, wsUrl: st.wsUrl, token: 'v1.k1.AAAA.AAAA', deviceId: 'x', storage: memoryStorage() });
  const errors = [];
  bad.on('error', (e) => errors.push(e));
  clients.push(bad);
  await assert.rejects(bad.start(), { code: 'unauthenticated', status: 401 });
  assert.ok(errors.some((e) => e.code === 'unauthenticated' && /user token rejected: malformed/.test(e.message)));
  await bad.stop();
});

test('reset: after the epoch changes the client drops its data and syncs from ""', async () => {
  const { c, rec } = await open(109);
  await st.send([109], 'old');
  await waitFor(() => contents(rec).length === 1, 2000, 'first message');
  await st.restartLogicd('epoch = 2');
  await st.send([109], 'new');
  await waitFor(() => rec.resets === 1 && contents(rec).length === 3, 4000, 'reset and reload');
  assert.deepEqual(contents(rec), ['old', 'old', 'new'], 'reloaded from scratch after the reset');
  assert.notEqual(c.cursor, '');
});
