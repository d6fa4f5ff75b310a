#!/usr/bin/env node
// tests/cluster/load.mjs: send and sync load for tests/cluster/redis_failover.sh
// (node 20, no packages).
//
//   * senders: LOAD_SENDERS loops sending to LOAD_USERS (round robin) through
//     LOAD_INTERNAL (haproxy's internal front). Every send has a unique
//     msgkey and is retried with the same msgkey until it is acknowledged
//     (2xx), 50 ms apart.
//   * syncers: one loop per SDK URL of LOAD_SDK ("name=url,..."), each
//     following its own cursor of every user with limit LOAD_LIMIT; the
//     msg_ids of each cursor stream must ascend strictly.
//   * on SIGUSR2: the senders finish the send in hand (until
//     acknowledged, at most LOAD_DRAIN_MS), then every user's live cursor
//     streams are followed to the end and a fresh stream is read from the
//     empty cursor through each SDK URL; LOAD_FAULT (a JSON file
//     {"kill_ms","promoted_ms"} written by the test) gives the fault times.
//     It may also hold "faults": [{"name", "kill_ms", "promoted_ms",
//     "uids"}] (tests/cluster/pg_failover.sh): for each, the availability
//     of the sends and syncs (through haproxy) of the users it names (those
//     on the database that failed over) is reported under "faults".
//
// Writes LOAD_OUT (JSON summary, see the end) and exits 0; the test judges.
// SIGTERM ends it at once, without a summary.
// LOAD_READY is created once every user has a token and a send went through.
import { writeFileSync, readFileSync, existsSync } from 'node:fs';

const env = (k, d) => process.env[k] ?? d;
const INTERNAL = env('LOAD_INTERNAL');
const KEY = env('LOAD_KEY');
const USERS = env('LOAD_USERS').split(',').filter(Boolean);
const SDK = Object.fromEntries(env('LOAD_SDK').split(',').map((e) => e.split('=')));
const SENDERS = +env('LOAD_SENDERS', '4');
const LIMIT = +env('LOAD_LIMIT', '5');
const OUT = env('LOAD_OUT');
const READY = env('LOAD_READY');
const FAULT = env('LOAD_FAULT');
const DRAIN_MS = +env('LOAD_DRAIN_MS', '20000');
const REQ_MS = +env('LOAD_REQUEST_MS', '3000');
const RUN = env('LOAD_RUN', `ld${process.pid}`);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const now = () => Date.now();
let stopping = false;
let wake = null;
const onStop = () => { stopping = true; if (wake) wake(); };
process.on('SIGUSR2', onStop);
process.on('SIGTERM', () => process.exit(143)); // the test's cleanup: at once

// One request: {status, body, err}; status 0 = no answer (refused, timeout).
async function post(url, bearer, body) {
  try {
    const r = await fetch(url, {
      method: 'POST',
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json' },
      body: JSON.stringify(body),
      signal: AbortSignal.timeout(REQ_MS),
    });
    const text = await r.text();
    let json = null;
    try { json = JSON.parse(text); } catch { /* not JSON */ }
    return { status: r.status, body: json, text };
  } catch (e) {
    return { status: 0, err: String(e && e.cause ? e.cause.code || e.cause : e) };
  }
}
const ok2xx = (r) => r.status >= 200 && r.status < 300;

// Every attempt: [kind, via, t0, t1, status, uid]
const events = [];
const errorSamples = {};
function record(kind, via, t0, r, uid) {
  events.push([kind, via, t0, now(), r.status, uid]);
  if (!ok2xx(r)) {
    const k = `${kind} ${via} ${r.status} ${r.err ?? (r.text ?? '').slice(0, 120)}`;
    errorSamples[k] = (errorSamples[k] ?? 0) + 1;
  }
}

// --- tokens
const tokens = {};
for (const uid of USERS) {
  for (let i = 0; ; i++) {
    const t0 = now();
    const r = await post(`${INTERNAL}/v1/tokens`, KEY, { app_id: '1', uid, ttl_s: 3600 });
    record('token', 'hap', t0, r);
    if (ok2xx(r) && r.body?.token) { tokens[uid] = r.body.token; break; }
    if (i > 50) { console.error(`load: no token for ${uid}: ${r.status} ${r.err ?? r.text}`); process.exit(2); }
    await sleep(100);
  }
}

// --- senders
const sends = []; // {uid, key, start, attempts, ack, msg_id, duplicate}
async function sender(i) {
  for (let n = 0; !stopping; n++) {
    const uid = USERS[(i + n * SENDERS) % USERS.length];
    const rec = { uid, key: `${RUN}-s${i}-${n}`, start: now(), attempts: 0 };
    sends.push(rec);
    const body = { app_id: '1', from_uid: '7', to_uids: [uid], msgkey: rec.key, content: rec.key };
    for (;;) {
      rec.attempts++;
      const t0 = now();
      const r = await post(`${INTERNAL}/v1/messages`, KEY, body);
      record('send', 'hap', t0, r, uid);
      const res = ok2xx(r) ? r.body?.results?.[0] : null;
      if (res && res.msg_id) {
        rec.ack = now();
        rec.msg_id = res.msg_id;
        rec.duplicate = !!res.duplicate;
        break;
      }
      if (stopping && now() - stopAt > DRAIN_MS) { rec.abandoned = true; break; }
      await sleep(50);
    }
    if (READY && !existsSync(READY)) writeFileSync(READY, `${now()}\n`);
  }
}

// --- syncers: a stream is {cursor, items: [{msg_id, msgkey}], bad: []}
function newStream() { return { cursor: '', items: [], bad: [], syncs: 0 }; }
const live = {}; // via -> uid -> stream
// One page of STREAM; false when the call failed.
async function page(via, uid, s, kind) {
  const t0 = now();
  const r = await post(`${SDK[via]}/v1/sync`, tokens[uid], { cursor: s.cursor, limit: LIMIT });
  record(kind, via, t0, r, uid);
  if (!ok2xx(r) || !r.body || typeof r.body.cursor !== 'string') return null;
  s.syncs++;
  if (r.body.reset) s.bad.push(`reset at cursor ${s.cursor}`);
  for (const it of r.body.items ?? []) {
    if (it.kind !== 'message') continue;
    const last = s.items.length ? BigInt(s.items[s.items.length - 1].msg_id) : -1n;
    if (BigInt(it.msg_id) <= last) s.bad.push(`msg_id ${it.msg_id} after ${last}`);
    s.items.push({ msg_id: it.msg_id, msgkey: it.msgkey ?? '' });
  }
  s.cursor = r.body.cursor;
  return r.body;
}
async function syncer(via) {
  live[via] = {};
  for (const uid of USERS) live[via][uid] = newStream();
  while (!stopping) {
    for (const uid of USERS) {
      if (stopping) break;
      const s = live[via][uid];
      for (let p = 0; p < 3; p++) {
        const b = await page(via, uid, s, 'sync');
        if (!b) { await sleep(50); break; }
        if (!b.has_more) break;
      }
    }
  }
}

// Follows STREAM to its end (has_more false), retrying failures until DEADLINE.
async function drain(via, uid, s, deadline) {
  for (;;) {
    const b = await page(via, uid, s, 'final');
    if (b && !b.has_more) return true;
    if (!b) {
      if (now() > deadline) return false;
      await sleep(100);
    }
  }
}

let stopAt = 0;
const startAt = now();
const loops = [];
for (let i = 0; i < SENDERS; i++) loops.push(sender(i));
for (const via of Object.keys(SDK)) loops.push(syncer(via));
if (!stopping) await new Promise((r) => { wake = r; });
stopAt = now();
await Promise.all(loops);
const loadEnd = now();

// --- after the load: live streams to their end, fresh streams from ""
const deadline = now() + 20000;
const fresh = {};
for (const via of Object.keys(SDK)) {
  fresh[via] = {};
  for (const uid of USERS) {
    live[via][uid].complete = await drain(via, uid, live[via][uid], deadline);
    fresh[via][uid] = newStream();
    fresh[via][uid].complete = await drain(via, uid, fresh[via][uid], deadline);
  }
}

// --- judge the streams
const acked = sends.filter((s) => s.ack);
const byUid = {};
for (const s of acked) (byUid[s.uid] ??= []).push(s);
const allKeys = new Set(sends.map((s) => s.key));
function judge(streams) {
  const r = { missing: 0, duplicated: 0, wrong_id: 0, unordered: 0, foreign: 0, incomplete: 0, items: 0, examples: [] };
  const ex = (m) => { if (r.examples.length < 8) r.examples.push(m); };
  for (const uid of USERS) {
    const s = streams[uid];
    r.items += s.items.length;
    if (!s.complete) { r.incomplete++; ex(`user ${uid}: not read to its end (sync kept failing)`); }
    r.unordered += s.bad.length;
    for (const b of s.bad) ex(`user ${uid}: ${b}`);
    const seen = new Map();
    for (const it of s.items) {
      if (!it.msgkey.startsWith(`${RUN}-`)) continue;
      if (!allKeys.has(it.msgkey)) { r.foreign++; ex(`user ${uid}: unknown msgkey ${it.msgkey}`); }
      seen.set(it.msgkey, (seen.get(it.msgkey) ?? []).concat(it.msg_id));
    }
    for (const a of byUid[uid] ?? []) {
      const ids = seen.get(a.key);
      if (!ids) { r.missing++; ex(`user ${uid}: ${a.key} (msg_id ${a.msg_id}, acked at +${a.ack - startAt} ms) missing`); continue; }
      if (ids.length > 1) { r.duplicated++; ex(`user ${uid}: ${a.key} ${ids.length} times`); }
      if (ids[0] !== a.msg_id) { r.wrong_id++; ex(`user ${uid}: ${a.key} has msg_id ${ids[0]}, acknowledged as ${a.msg_id}`); }
    }
  }
  return r;
}
// Acknowledged before another was sent => smaller msg_id (per mailbox).
function ackOrder() {
  let bad = 0;
  const examples = [];
  for (const uid of USERS) {
    const a = byUid[uid] ?? [];
    const byAck = [...a].sort((x, y) => x.ack - y.ack);
    const byStart = [...a].sort((x, y) => x.start - y.start);
    let j = 0;
    let maxId = -1n;
    let maxKey = '';
    for (const b of byStart) {
      while (j < byAck.length && byAck[j].ack < b.start) {
        if (BigInt(byAck[j].msg_id) > maxId) { maxId = BigInt(byAck[j].msg_id); maxKey = byAck[j].key; }
        j++;
      }
      if (BigInt(b.msg_id) <= maxId) {
        bad++;
        if (examples.length < 5) examples.push(`user ${uid}: ${b.key} (${b.msg_id}) after ${maxKey} (${maxId})`);
      }
    }
  }
  return { bad, examples };
}

// Availability through haproxy around the fault.
const fault = FAULT && existsSync(FAULT) ? JSON.parse(readFileSync(FAULT, 'utf8')) : {};
function avail(kind) {
  const ev = events.filter((e) => e[0] === kind && e[1] === 'hap').sort((x, y) => x[3] - y[3]);
  const okEv = ev.filter((e) => e[4] >= 200 && e[4] < 300);
  const failEv = ev.filter((e) => !(e[4] >= 200 && e[4] < 300));
  const out = { attempts: ev.length, failures: failEv.length };
  const rel = (t) => (fault.kill_ms ? t - fault.kill_ms : t - startAt);
  if (failEv.length) {
    const first = failEv[0][3];
    const last = failEv[failEv.length - 1][3];
    const next = okEv.find((e) => e[3] > last);
    out.first_failure_ms = rel(first);
    out.last_failure_ms = rel(last);
    out.unavailable_ms = (next ? next[3] : loadEnd) - first;
  } else {
    out.unavailable_ms = 0;
  }
  // The longest time without a successful answer, from the kill on.
  let prev = fault.kill_ms ?? startAt;
  let gap = 0;
  let gapAt = 0;
  for (const e of okEv) {
    if (e[3] < prev) continue;
    if (e[3] - prev > gap) { gap = e[3] - prev; gapAt = prev; }
    prev = e[3];
  }
  out.longest_gap_ms = gap;
  out.longest_gap_from_ms = rel(gapAt);
  if (fault.promoted_ms) {
    const f = okEv.find((e) => e[3] >= fault.promoted_ms);
    out.first_ok_after_promotion_ms = f ? f[3] - fault.promoted_ms : null;
    out.first_started_ok_after_promotion_ms = (() => {
      const g = okEv.find((e) => e[2] >= fault.promoted_ms);
      return g ? g[3] - fault.promoted_ms : null;
    })();
  }
  return out;
}

// Per fault of fault.faults: the requests through haproxy for its users,
// up to the next fault's kill (its failures are the next fault's).
function availFault(kind, f, untilMs) {
  const users = new Set(f.uids ?? []);
  const ev = events.filter((e) => e[0] === kind && e[1] === 'hap' && users.has(e[5]) && e[3] < untilMs)
    .sort((x, y) => x[3] - y[3]);
  const okEv = ev.filter((e) => e[4] >= 200 && e[4] < 300);
  const after = ev.filter((e) => e[3] >= f.kill_ms);
  const failAfter = after.filter((e) => !(e[4] >= 200 && e[4] < 300));
  const out = { attempts: after.length, failures: failAfter.length, statuses: {} };
  for (const e of failAfter) out.statuses[e[4]] = (out.statuses[e[4]] ?? 0) + 1;
  if (failAfter.length) {
    const first = failAfter[0][3];
    const last = failAfter[failAfter.length - 1][3];
    const next = okEv.find((e) => e[3] > last);
    out.first_failure_ms = first - f.kill_ms;
    out.last_failure_ms = last - f.kill_ms;
    out.unavailable_ms = (next ? next[3] : loadEnd) - first;
  } else {
    out.unavailable_ms = 0;
  }
  if (f.promoted_ms) {
    const g = okEv.find((e) => e[3] >= f.promoted_ms);
    out.first_ok_after_promotion_ms = g ? g[3] - f.promoted_ms : null;
    // The first success of a request that failed no earlier than the
    // promotion: when the service was really back for these users.
    const lastFail = failAfter.length ? failAfter[failAfter.length - 1][3] : 0;
    const h = okEv.find((e) => e[3] >= Math.max(f.promoted_ms, lastFail));
    out.back_after_promotion_ms = h ? h[3] - f.promoted_ms : null;
  }
  return out;
}

const summary = {
  run: RUN,
  users: USERS.length,
  duration_ms: loadEnd - startAt,
  sends: sends.length,
  acked: acked.length,
  abandoned: sends.filter((s) => s.abandoned).length,
  retried: sends.filter((s) => s.attempts > 1).length,
  retry_attempts: sends.reduce((n, s) => n + s.attempts - 1, 0),
  acked_as_duplicate: acked.filter((s) => s.duplicate).length,
  acked_after_kill: fault.kill_ms ? acked.filter((s) => s.ack >= fault.kill_ms).length : null,
  syncs: Object.fromEntries(Object.keys(SDK).map((v) => [v, USERS.reduce((n, u) => n + live[v][u].syncs, 0)])),
  live: Object.fromEntries(Object.keys(SDK).map((v) => [v, judge(live[v])])),
  fresh: Object.fromEntries(Object.keys(SDK).map((v) => [v, judge(fresh[v])])),
  ack_order: ackOrder(),
  send: avail('send'),
  sync: avail('sync'),
  errors: errorSamples,
  faults: (fault.faults ?? []).map((f, i, all) => {
    const until = i + 1 < all.length ? all[i + 1].kill_ms : Infinity;
    return { name: f.name, send: availFault('send', f, until), sync: availFault('sync', f, until) };
  }),
};
writeFileSync(OUT, JSON.stringify(summary, null, 1));
process.exit(0);
