// Unit tests of the console's pure helpers (www/model.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  actionEffect, auditChanges, describeTargeting, localInputToRfc3339, parseUids, usToLocalInput, syncItem,
} from '../www/model.js';

const base = { notice_id: '5', app_id: '1', state: 'prepublished', version: 2, title: 'T' };

test('targeting in words', () => {
  assert.equal(describeTargeting({ ...base, targeting: { platforms: ['ios', 'android'], min_core_level: '220819', login_only: true } }),
    'iOS and Android, core level ≥ 220819, logged-in users only, whitelist only while prepublished');
  assert.equal(describeTargeting({ ...base, state: 'published', targeting: { platforms: [], min_core_level: '0', max_core_level: '9' } }),
    'every platform, core level ≤ 9');
  assert.match(actionEffect('publish', { ...base, targeting: {} }), /^Every user of app 1 will see this notice/);
});

test('uids: lines and commas, bad entries reported per line', () => {
  assert.deepEqual(parseUids('7\n8, 9\n\n 10 '), { uids: ['7', '8', '9', '10'], errors: [] });
  const r = parseUids('7\nabc, 8\n-1\n18446744073709551616');
  assert.deepEqual(r.uids, ['7', '8']);
  assert.deepEqual(r.errors, ["line 2: 'abc' is not a uid", "line 3: '-1' is not a uid", "line 4: '18446744073709551616' is not a uid"]);
  assert.deepEqual(parseUids('1,2,3', 2).errors, ['at most 2 uids at a time']);
});

test('local times round-trip as RFC 3339', () => {
  const v = usToLocalInput('1795319030000000');
  assert.match(v, /^\d{4}-\d\d-\d\dT\d\d:\d\d$/);
  assert.equal(Date.parse(localInputToRfc3339(v)), Math.floor(1795319030000 / 60000) * 60000);
  assert.equal(localInputToRfc3339(''), '0');
  assert.equal(usToLocalInput('0'), '');
});

test('audit diffs replay create and edit bodies', () => {
  const entries = [
    { id: '3', action: 'edit', notice_id: '5', body: '{"title":"B","targeting":{"platforms":["ios"]}}' },
    { id: '2', action: 'prepublish', notice_id: '5', body: '' },
    { id: '1', action: 'create', notice_id: '5', body: '{"app_id":"1","title":"A"}' },
  ];
  const c = auditChanges(entries);
  assert.deepEqual(c.get('1'), [{ field: 'app_id', before: '', after: '1' }, { field: 'title', before: '', after: 'A' }]);
  assert.deepEqual(c.get('3'), [{ field: 'targeting.platforms', before: '', after: 'ios' }, { field: 'title', before: 'A', after: 'B' }]);
  assert.equal(c.get('2'), undefined);
  const w = auditChanges([{ id: '9', action: 'whitelist_remove', notice_id: '0', body: '{"app_id":"1","uids":["8","9"]}' }]);
  assert.deepEqual(w.get('9'), [{ field: 'app_id', before: '', after: '1' }, { field: 'uids', before: '8, 9', after: '' }]);
});

test('preview is the sync item', () => {
  assert.deepEqual(syncItem({ ...base, msg_id: '9', content: 'c' }), {
    kind: 'notice', msg_id: '9', expire_at: '0', is_read: false, category: 0, type: 0, priority: 0, business_type: 0,
    content: 'c', notice_id: '5', version: 2, title: 'T',
  });
});
