// @ts-check
// The judge on made-up histories: a clean one passes, and each kind of
// violation it exists for is counted (a checker that cannot fail would let
// the chaos suite pass anything). Run by ops/chaos before the cluster
// starts: node --test tests/chaos/checker.test.mjs
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { judge } from './lib/checker.mjs';
import { newStream } from './lib/load.mjs';

const RUN = 'cxT';
/** @typedef {import('./lib/load.mjs').Send} Send */

/** A send of KEY to UID acknowledged as ID at time T. @returns {Send} */
const send = (/** @type {string} */ uid, /** @type {string} */ key, /** @type {string} */ id, /** @type {number} */ t) => ({
  key: `${RUN}-${key}`, uids: [uid], start: t, attempts: 1, ack: t + 5, ids: { [uid]: id }, duplicate: { [uid]: false },
});
/** A stream of UID holding messages [key, id, t]... */
function stream(/** @type {string} */ name, /** @type {string} */ uid, /** @type {[string, string, number][]} */ msgs) {
  const s = newStream(name, uid, 'logicd-1');
  s.complete = true;
  for (const [key, id, t] of msgs) s.items.push({ kind: 'message', msg_id: id, msgkey: `${RUN}-${key}`, notice_id: '', version: 0, t });
  return s;
}
const history = () => {
  const sends = [send('1', 'a', '100', 1000), send('1', 'b', '200', 2000), send('1', 'c', '300', 3000)];
  const ok = /** @type {[string, string, number][]} */ ([['a', '100', 1010], ['b', '200', 2010], ['c', '300', 3010]]);
  return { sends, ok };
};
/** @param {Partial<Parameters<typeof judge>[0]>} o */
const run = (o) => judge({
  sends: [], streams: [], fresh: [], wsClients: [], injections: [], operator: null, users: ['1'], run: RUN,
  faultEnd: (i) => i.restored, ...o,
});

test('a clean history passes', () => {
  const { sends, ok } = history();
  const v = run({ sends, streams: [stream('live', '1', ok)], fresh: [stream('fresh', '1', ok)] });
  const w = v.byWindow.get(-1);
  assert.deepEqual([w?.acked, w?.lost, w?.duplicated, w?.outOfOrder], [3, 0, 0, 0]);
  assert.equal(v.global.freshDisagree + v.global.keyTwice + v.global.resets, 0);
});

test('a lost, a duplicated and a reordered message are counted', () => {
  const { sends } = history();
  const live = stream('live', '1', [['a', '100', 1010], ['c', '300', 3010], ['b', '200', 3020], ['c', '300', 3030]]);
  const fresh = stream('fresh', '1', [['a', '100', 1010]]);
  const v = run({ sends, streams: [live], fresh: [fresh] });
  const w = v.byWindow.get(-1);
  assert.equal(w?.lost, 2); // b and c are not in the fresh stream
  assert.equal(w?.duplicated, 1); // c twice in the live stream
  assert.ok((w?.outOfOrder ?? 0) >= 1); // 200 after 300
  assert.equal(v.global.freshDisagree, 1);
});

test('a message stored under another msg_id than acknowledged, and a msgkey making two messages', () => {
  const { sends, ok } = history();
  const fresh = stream('fresh', '1', [...ok, ['c', '400', 3050]]);
  const v = run({ sends, streams: [stream('live', '1', ok)], fresh: [fresh] });
  assert.equal(v.global.keyTwice, 1);
  assert.equal(v.byWindow.get(-1)?.duplicated, 1);
});

test('an acknowledgement order the msg_ids contradict', () => {
  // b was sent after a was acknowledged, yet got the smaller msg_id.
  const sends = [send('1', 'a', '200', 1000), send('1', 'b', '100', 2000)];
  const s = stream('live', '1', [['b', '100', 2010], ['a', '200', 2020]]);
  const v = run({ sends, streams: [s], fresh: [stream('fresh', '1', [['b', '100', 2010], ['a', '200', 2020]])] });
  assert.equal(v.byWindow.get(-1)?.outOfOrder, 1);
});

test('a reset, and problems attributed to the fault window of the send', () => {
  const { sends, ok } = history();
  const live = stream('live', '1', ok.slice(0, 2));
  live.resets.push({ t: 2500, cursor: 'x' });
  const inj = { kind: 'k', target: '', t: 2500, serving: 2600, restored: 2700, notes: [], stalePrimaryWrites: 0 };
  const v = run({ sends, streams: [live], fresh: [stream('fresh', '1', ok)], injections: [inj] });
  assert.equal(v.global.resets, 1);
  assert.equal(v.byWindow.get(0)?.lost, 1); // c started at 3000, after the fault at 2500
  assert.equal(v.byWindow.get(-1)?.lost, 0);
});

test('notice versions twice, gray leaks and missing retracts', () => {
  const s = newStream('live', '9', 'logicd-1');
  s.complete = true;
  const n = (/** @type {string} */ kind, /** @type {string} */ id, /** @type {number} */ version, /** @type {number} */ t) =>
    s.items.push({ kind, msg_id: '5', msgkey: '', notice_id: id, version, t });
  n('notice', '7', 1, 1000);
  n('notice', '7', 1, 5000); // again, no whitelist change between
  n('notice', '8', 1, 6000); // 8 was retracted, no retract item follows
  const operator = /** @type {any} */ ({
    wlChanges: [{ t0: 9000, t1: 9100, ok: true }],
    everWhitelisted: new Set(),
    notices: new Map([
      ['7', { id: '7', state: 'published', version: 1, created: 0, publishT0: 500, everPublished: true }],
      ['8', { id: '8', state: 'retracted', version: 1, created: 0, publishT0: 7000, retractT1: 8000, everPublished: true }],
    ]),
  });
  const v = run({ streams: [s], operator });
  assert.equal(v.global.noticeRepeats, 1);
  assert.equal(v.global.grayLeaks, 1); // 8 reached a user never whitelisted before its publish
  assert.equal(v.global.retractMissing, 1);
});

test('a repeat after a whitelist change that a fault kept from the pollers is excused', () => {
  const s = newStream('live', '9', 'logicd-1');
  s.complete = true;
  const n = (/** @type {number} */ t) => s.items.push({ kind: 'notice', msg_id: '5', msgkey: '', notice_id: '7', version: 1, t });
  n(20000); // from a snapshot still without the change's new seq
  n(20005); // the new seq, seen once the poller read the database again
  const operator = /** @type {any} */ ({
    wlChanges: [{ t0: 1000, t1: 1100, ok: false }],
    everWhitelisted: new Set(['9']),
    notices: new Map([['7', { id: '7', state: 'published', version: 1, created: 0, publishT0: 500, everPublished: true }]]),
  });
  const inj = { kind: 'k', target: '', t: 900, serving: 18000, restored: 19000, notes: [], stalePrimaryWrites: 0 };
  const withFault = run({ streams: [s], operator, injections: [inj] });
  assert.equal(withFault.global.noticeRepeats, 0);
  assert.equal(withFault.global.noticeRepeatsExcused, 1);
  // Without a fault between, a change 19 s before the first delivery explains nothing.
  const noFault = run({ streams: [s], operator });
  assert.equal(noFault.global.noticeRepeats, 1);
});

test('a WebSocket client connected but neither notified nor synced within 5 s', () => {
  const { sends } = history();
  const c = /** @type {any} */ ({
    name: 'ws', uid: '1', sessions: [{ on: 0, off: 0 }], notifies: [{ t: 1010, msg_id: '100' }],
    stream: stream('ws', '1', [['a', '100', 1010], ['b', '200', 2010], ['c', '300', 9000]]),
  });
  const v = run({ sends, wsClients: [c] });
  assert.equal(v.global.wsChecked, 3);
  assert.equal(v.global.wsLate, 1); // c: synced 6 s after its acknowledgement, no notify
});
