// Unit tests of the SDK's own rules on a scripted fake transport (no
// servers): coalescing, has_more, dedupe, reset, notify filtering, backoff,
// kick, 401 retry, refresh frame, offline pause, and the mini-program
// adapter on a fake `wx`.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { MboxClient, backoffDelay, memoryStorage } from '../dist/index.js';
import { wxTransport, wxStorage } from '../dist/miniprogram.js';

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
async function until(fn, ms = 2000, what = 'condition') {
  const end = Date.now() + ms;
  while (!fn()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

/** A token that looks like the server's v1 tokens (docs/api.md 1.1) for (app, uid). */
function fakeToken(app, uid, tag = 'a') {
  const b = Buffer.alloc(25);
  b.writeBigUInt64BE(BigInt(app), 0);
  b.writeBigUInt64BE(BigInt(uid), 8);
  b.writeBigUInt64BE(BigInt(Date.now() + 3600e3) * 1000n, 16);
  return `v1.k1.${b.toString('base64url')}.${tag}`;
}

const msg = (id, extra = {}) => ({ kind: 'message', msg_id: String(id), content: `m${id}`, ...extra });
const reply = (status, body) => ({ status, text: body === undefined ? '' : JSON.stringify(body) });

/**
 * A scripted server. onSync(body, req) answers /v1/sync (default: nothing new);
 * onRequest answers the other routes. The WebSocket side acks logins.
 */
function fakeServer({ onSync, onRequest, loginAck } = {}) {
  const s = { sockets: [], requests: [], syncs: [], connects: 0 };
  s.push = (sock, frame) => sock.h.onMessage(JSON.stringify(frame));
  s.last = () => s.sockets[s.sockets.length - 1];
  s.transport = {
    connect(url, h) {
      s.connects++;
      const sock = {
        h, sent: [], closed: null,
        send(t) {
          const f = JSON.parse(t);
          this.sent.push(f);
          if (f.type === 'login')
            queueMicrotask(() => s.push(sock, loginAck ? loginAck(f) : { type: 'login_ack', ok: true, heartbeat_s: 30 }));
        },
        close(code, reason) { this.closed = { code, reason }; },
      };
      s.sockets.push(sock);
      queueMicrotask(() => h.onOpen());
      return sock;
    },
    async request(req) {
      s.requests.push(req);
      if (req.url.endsWith('/v1/sync')) {
        const body = JSON.parse(req.body);
        s.syncs.push(body);
        return onSync ? onSync(body, req) : reply(200, { items: [], cursor: body.cursor || 'c0', has_more: false, reset: false });
      }
      return onRequest ? onRequest(req) : reply(404, { error: { code: 'not_found', message: 'no route' } });
    },
  };
  return s;
}

function client(server, extra = {}) {
  return new MboxClient({
    syncUrl: 'http://sdk.test', wsUrl: 'ws://lcs.test/ws', token: fakeToken(1, 9), deviceId: 'dev-1',
    platform: 'web', coreLevel: 5, storage: memoryStorage(), transport: server.transport,
    reconnect: { baseMs: 20, capMs: 100 }, ...extra,
  });
}

test('backoff: full jitter between base/4 and min(cap, base*2^n)', () => {
  const o = { baseMs: 200, capMs: 30000 };
  assert.equal(backoffDelay(0, o, () => 0), 50);
  assert.equal(backoffDelay(0, o, () => 1), 200);
  assert.equal(backoffDelay(3, o, () => 1), 1600);
  assert.equal(backoffDelay(20, o, () => 1), 30000);
  assert.equal(backoffDelay(1000, o, () => 1), 30000);
  for (let n = 0; n < 12; n++) {
    const d = backoffDelay(n, o);
    assert.ok(d >= 50 && d <= Math.min(30000, 200 * 2 ** n), `attempt ${n}: ${d}`);
  }
});

test('start logs in with the client version and syncs with the same headers', async () => {
  const srv = fakeServer();
  const c = client(srv, { appVersion: '1.2.3' });
  await c.start();
  const login = srv.sockets[0].sent[0];
  assert.deepEqual(login, { type: 'login', token: login.token, device_id: 'dev-1', platform: 'web', app_version: '1.2.3', core_level: '5' });
  const h = srv.requests[0].headers;
  assert.equal(h.platform, 'web');
  assert.equal(h.core_level, '5');
  assert.equal(h.app_version, '1.2.3');
  assert.match(h.Authorization, /^Bearer v1\./);
  assert.equal(c.state, 'online');
  await c.stop();
  assert.equal(c.state, 'stopped');
});

test('notifies during a sync cause exactly one more sync; has_more loops', async () => {
  let release;
  let hold = false;
  let page = 0;
  const srv = fakeServer({
    async onSync(body) {
      if (hold) await new Promise((r) => { release = r; });
      page++;
      // Second round: two pages (has_more), then done.
      if (page === 2) return reply(200, { items: [msg(10)], cursor: 'c2', has_more: true, reset: false });
      if (page === 3) return reply(200, { items: [msg(11)], cursor: 'c3', has_more: false, reset: false });
      return reply(200, { items: [], cursor: body.cursor || 'c1', has_more: false, reset: false });
    },
  });
  const c = client(srv);
  const got = [];
  c.on('items', (it) => got.push(...it.map((i) => i.msg_id)));
  await c.start();
  assert.equal(srv.syncs.length, 1);
  hold = true;
  const sock = srv.sockets[0];
  srv.push(sock, { type: 'notify', app_id: '1', msg_id: '10' });
  await until(() => release, 1000, 'first sync in flight');
  hold = false;
  for (let i = 0; i < 5; i++) srv.push(sock, { type: 'notify', app_id: '1', msg_id: String(11 + i) });
  release();
  await until(() => page === 4 && !c.syncing, 2000, 'the queued sync');
  await sleep(50);
  // start: 1 request; the notify's round: 2 pages (has_more); the five
  // notifies meanwhile: exactly one more round of 1 request.
  assert.equal(srv.syncs.length, 4);
  assert.deepEqual(srv.syncs.map((s) => s.cursor), ['', 'c1', 'c2', 'c3']);
  assert.deepEqual(got, ['10', '11']);
  assert.equal(c.cursor, 'c3');
  await c.stop();
});

test('a notify for another app is ignored', async () => {
  const srv = fakeServer();
  const c = client(srv);
  await c.start();
  const sock = srv.sockets[0];
  srv.push(sock, { type: 'notify', app_id: '2', msg_id: '5' });
  await sleep(30);
  assert.equal(srv.syncs.length, 1);
  srv.push(sock, { type: 'notify', app_id: '1', msg_id: '5' });
  await until(() => srv.syncs.length === 2, 1000, 'sync for our app');
  await c.stop();
});

test('dedupe by msg_id and notice version; recall and retract are delivered', async () => {
  const pages = [
    [msg(1), { kind: 'notice', msg_id: '3', notice_id: '7', version: 1, title: 't' }],
    [msg(1), { kind: 'notice', msg_id: '3', notice_id: '7', version: 1, title: 't' }, { kind: 'recall', msg_id: '4', recalled_msg_id: '1' }],
    [{ kind: 'notice', msg_id: '3', notice_id: '7', version: 2, title: 't2' }, { kind: 'retract', msg_id: '3', notice_id: '7' }],
  ];
  let n = 0;
  const srv = fakeServer({
    onSync: () => reply(200, { items: pages[n] ?? [], cursor: `c${++n}`, has_more: n < pages.length, reset: false }),
  });
  const c = client(srv);
  const got = [];
  c.on('items', (it) => got.push(...it.map((i) => `${i.kind}:${i.msg_id}:${i.version ?? ''}`)));
  await c.start();
  assert.deepEqual(got, ['message:1:', 'notice:3:1', 'recall:4:', 'notice:3:2', 'retract:3:']);
  await c.stop();
});

test('reset drops the cursor and the dedupe set and syncs from ""', async () => {
  let n = 0;
  const srv = fakeServer({
    onSync(body) {
      n++;
      if (n === 1) return reply(200, { items: [msg(1)], cursor: 'old', has_more: false, reset: false });
      if (body.cursor === 'old') return reply(200, { items: [], cursor: 'fresh', has_more: false, reset: true });
      return reply(200, { items: [msg(1)], cursor: 'new', has_more: false, reset: false });
    },
  });
  const storage = memoryStorage();
  const c = client(srv, { storage });
  const events = [];
  c.on('items', (it) => events.push(`items:${it.map((i) => i.msg_id)}`));
  c.on('reset', () => events.push(`reset:${c.cursor}`));
  await c.start();
  await c.sync();
  assert.deepEqual(events, ['items:1', 'reset:', 'items:1']);
  assert.deepEqual(srv.syncs.map((s) => s.cursor), ['', 'old', '']);
  assert.equal(await storage.get('mbox-client:cursor:1:9'), 'new');
  await c.stop();
});

test('the cursor persists: a new client resumes from storage', async () => {
  const storage = memoryStorage();
  const srv = fakeServer({ onSync: (b) => reply(200, { items: [], cursor: b.cursor ? `${b.cursor}+` : 'k1', has_more: false, reset: false }) });
  const a = client(srv, { storage });
  await a.start();
  await a.stop();
  const b = client(srv, { storage });
  await b.start();
  assert.deepEqual(srv.syncs.map((s) => s.cursor), ['', 'k1']);
  assert.equal(b.cursor, 'k1+');
  await b.stop();
});

test('the cursor is stored per (app, uid) read from the token', async () => {
  const storage = memoryStorage();
  const srv = fakeServer({ onSync: () => reply(200, { items: [], cursor: 'kk', has_more: false, reset: false }) });
  const c = client(srv, { storage, token: fakeToken(7, 18446744073709551615n) });
  await c.start();
  assert.equal(await storage.get('mbox-client:cursor:7:18446744073709551615'), 'kk');
  // A notify names the app: app 7 is ours now, app 1 is not.
  srv.push(srv.sockets[0], { type: 'notify', app_id: '1', msg_id: '1' });
  srv.push(srv.sockets[0], { type: 'notify', app_id: '7', msg_id: '1' });
  await until(() => srv.syncs.length === 2, 1000, 'sync for app 7');
  await sleep(30);
  assert.equal(srv.syncs.length, 2);
  await c.stop();
});

test('reconnects with backoff after the socket closes, and catches up by sync', async () => {
  const srv = fakeServer();
  const c = client(srv);
  const states = [];
  c.on('state', (s) => states.push(s));
  await c.start();
  srv.sockets[0].h.onClose(1006, '');
  await until(() => srv.connects === 2 && c.state === 'online', 2000, 'reconnect');
  await until(() => srv.syncs.length === 2, 1000, 'catch-up sync');
  assert.deepEqual(states, ['connecting', 'online', 'offline', 'online']);
  await c.stop();
});

test('no reconnect after a kick', async () => {
  const srv = fakeServer();
  const c = client(srv);
  const errors = [];
  c.on('error', (e) => errors.push(e.code));
  await c.start();
  srv.push(srv.sockets[0], { type: 'kick', reason: 'replaced' });
  srv.sockets[0].h.onClose(1008, 'replaced');
  await sleep(300); // far beyond the 100 ms backoff cap
  assert.equal(srv.connects, 1);
  assert.equal(c.state, 'kicked');
  assert.deepEqual(errors, ['kicked']);
  await c.stop();
});

test('a 401 asks the token function once and retries; a second 401 is an error event', async () => {
  let calls = 0;
  const good = fakeToken(1, 9, 'good');
  const srv = fakeServer({
    onSync: (b, req) => req.headers.Authorization === `Bearer ${good}`
      ? reply(200, { items: [], cursor: 'c', has_more: false, reset: false })
      : reply(401, { error: { code: 'unauthenticated', message: 'user token rejected: expired' } }),
  });
  const c = client(srv, { token: async () => (++calls === 1 ? fakeToken(1, 9, 'stale') : good) });
  await c.start();
  assert.equal(calls, 2);
  assert.equal(srv.syncs.length, 2);
  await c.stop();

  const srv2 = fakeServer({ onSync: () => reply(401, { error: { code: 'unauthenticated', message: 'user token rejected: bad_signature' } }) });
  let calls2 = 0;
  const c2 = client(srv2, { token: async () => { calls2++; return fakeToken(1, 9, 'bad'); } });
  const errors = [];
  c2.on('error', (e) => errors.push([e.code, e.status, e.message]));
  await assert.rejects(c2.start(), (e) => e.code === 'unauthenticated' && e.status === 401);
  assert.equal(srv2.syncs.length, 2);
  assert.equal(calls2, 2);
  assert.deepEqual(errors[0], ['unauthenticated', 401, 'user token rejected: bad_signature']);
  await c2.stop();
});

test('errors carry the server JSON error code', async () => {
  const srv = fakeServer({ onRequest: () => reply(400, { error: { code: 'invalid_argument', message: 'order must be asc or desc' } }) });
  const c = client(srv);
  const errors = [];
  c.on('error', (e) => errors.push(e.code));
  await c.start();
  await assert.rejects(c.history({ order: 'sideways' }), { code: 'invalid_argument', message: 'order must be asc or desc' });
  assert.deepEqual(errors, ['invalid_argument']);
  assert.match(srv.requests.at(-1).url, /\/v1\/history\?order=sideways$/);
  await c.stop();
});

test('a refresh frame with a new token goes out before the expiry', async () => {
  let n = 0;
  const srv = fakeServer({
    loginAck: () => ({ type: 'login_ack', ok: true, heartbeat_s: 30, expires_at: String((Date.now() + 500) * 1000) }),
  });
  const c = client(srv, { token: async () => fakeToken(1, 9, `t${++n}`) });
  await c.start();
  const sock = srv.sockets[0];
  await until(() => sock.sent.some((f) => f.type === 'refresh'), 1000, 'refresh frame');
  const f = sock.sent.find((x) => x.type === 'refresh');
  assert.match(f.token, /\.t2$/);
  srv.push(sock, { type: 'refresh_ack', ok: true, expires_at: String((Date.now() + 3600e3) * 1000) });
  assert.equal(srv.connects, 1);
  await c.stop();
});

test('browser offline pauses the connection; online resumes it with a catch-up sync', async () => {
  const et = new EventTarget();
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener };
  globalThis.addEventListener = et.addEventListener.bind(et);
  globalThis.removeEventListener = et.removeEventListener.bind(et);
  try {
    const srv = fakeServer();
    const c = client(srv);
    await c.start();
    et.dispatchEvent(new Event('offline'));
    assert.equal(c.state, 'offline');
    assert.ok(srv.sockets[0].closed);
    await sleep(200);
    assert.equal(srv.connects, 1, 'no reconnect while offline');
    et.dispatchEvent(new Event('online'));
    await until(() => c.state === 'online' && srv.syncs.length === 2, 1000, 'resume');
    assert.equal(srv.connects, 2);
    await c.stop();
  } finally {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
  }
});

test('a page hidden for long pauses the connection; visible again resumes it', async () => {
  const win = new EventTarget();
  const doc = new EventTarget();
  doc.visibilityState = 'visible';
  const saved = { add: globalThis.addEventListener, remove: globalThis.removeEventListener, doc: globalThis.document };
  globalThis.addEventListener = win.addEventListener.bind(win);
  globalThis.removeEventListener = win.removeEventListener.bind(win);
  globalThis.document = doc;
  try {
    const srv = fakeServer();
    const c = client(srv, { hiddenPauseMs: 100 });
    await c.start();
    doc.visibilityState = 'hidden';
    doc.dispatchEvent(new Event('visibilitychange'));
    await sleep(50);
    assert.equal(c.state, 'online', 'a short hide keeps the connection');
    await until(() => c.state === 'offline', 1000, 'pause after hiddenPauseMs');
    assert.ok(srv.sockets[0].closed);
    await sleep(150);
    assert.equal(srv.connects, 1, 'no reconnect while hidden');
    doc.visibilityState = 'visible';
    doc.dispatchEvent(new Event('visibilitychange'));
    await until(() => c.state === 'online' && srv.syncs.length === 2, 1000, 'resume');
    await c.stop();
  } finally {
    globalThis.addEventListener = saved.add;
    globalThis.removeEventListener = saved.remove;
    if (saved.doc === undefined) delete globalThis.document;
    else globalThis.document = saved.doc;
  }
});

test('mini-program adapter: the client runs on a fake wx', async () => {
  const tasks = [];
  const requests = [];
  const store = {};
  const wx = {
    connectSocket({ url }) {
      const task = {
        url, sent: [], cb: {},
        send({ data }) {
          this.sent.push(JSON.parse(data));
          if (JSON.parse(data).type === 'login')
            setTimeout(() => this.cb.message({ data: JSON.stringify({ type: 'login_ack', ok: true, heartbeat_s: 30 }) }), 0);
        },
        close({ code, reason }) { this.closedWith = { code, reason }; setTimeout(() => this.cb.close({ code, reason }), 0); },
        onOpen(f) { this.cb.open = f; }, onMessage(f) { this.cb.message = f; },
        onClose(f) { this.cb.close = f; }, onError(f) { this.cb.error = f; },
      };
      tasks.push(task);
      setTimeout(() => task.cb.open({}), 0);
      return task;
    },
    request(o) {
      requests.push(o);
      const body = JSON.parse(o.data);
      const items = body.cursor === '' ? [] : [msg(42)];
      setTimeout(() => o.success({ statusCode: 200, data: JSON.stringify({ items, cursor: `${body.cursor}x`, has_more: false, reset: false }) }), 0);
    },
    getStorageSync: (k) => store[k] ?? '',
    setStorageSync: (k, v) => { store[k] = v; },
  };
  const c = new MboxClient({
    syncUrl: 'https://sdk.example', wsUrl: 'wss://lcs.example/ws', token: fakeToken(1, 9), deviceId: 'mp-1',
    transport: wxTransport(wx), storage: wxStorage(wx),
  });
  const got = [];
  c.on('items', (it) => got.push(...it));
  await c.start();
  assert.equal(tasks[0].url, 'wss://lcs.example/ws');
  assert.equal(tasks[0].sent[0].type, 'login');
  assert.equal(requests[0].url, 'https://sdk.example/v1/sync');
  assert.equal(requests[0].method, 'POST');
  assert.notEqual(requests[0].dataType, 'json', 'ids must stay strings: the adapter parses itself');
  assert.equal(requests[0].header['Content-Type'], 'application/json');
  tasks[0].cb.message({ data: JSON.stringify({ type: 'notify', app_id: '1', msg_id: '42' }) });
  await until(() => got.length === 1, 1000, 'item over wx.request');
  assert.equal(got[0].msg_id, '42');
  assert.equal(store['mbox-client:cursor:1:9'], 'xx');
  // A socket error (some platforms send no close) reconnects.
  tasks[0].cb.error({ errMsg: 'boom' });
  await until(() => tasks.length === 2 && c.state === 'online', 3000, 'reconnect over wx');
  await c.stop();
  assert.deepEqual(tasks[1].closedWith, { code: 1000, reason: 'client stop' });
});
