#!/usr/bin/env node
// @ts-check
// tests/chaos/chaos.mjs: the fault-injection suite behind ops/chaos, run
// against a running `ops/run cluster` (MBOX_CLUSTER_DIR and the port
// variables it was started with are in the environment; ops/chaos sets
// them). See ops/chaos for what it does; in short:
//
//   load (lib/load.mjs, lib/operator.mjs) for CHAOS_SECONDS, faults one at
//   a time on a schedule (lib/faults.mjs), then every stream followed to
//   its end, fresh syncs from "", the judge (lib/checker.mjs), one table.
//
// Environment: CHAOS_SECONDS (600), CHAOS_SHORT=1 (each fault kind once),
// CHAOS_SLOT_S (seconds between two faults in a long run, 20),
// CHAOS_FAULTS (comma-separated subset of the kinds, by prefix: "logicd,redis"),
// CHAOS_USERS (16), CHAOS_OUT (directory for chaos.json), CHAOS_SUPERVISOR_GRACE_MS (3000).
// Exit status: 0 all good, 1 a violation or slow recovery, 2 could not run.
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { info as clusterInfo, health, until, freePort, pgHas } from './lib/cluster.mjs';
import { Load, newStream } from './lib/load.mjs';
import { Operator } from './lib/operator.mjs';
import { FAULTS, GRACE_MS } from './lib/faults.mjs';
import { Netem } from './lib/netem.mjs';
import { judge } from './lib/checker.mjs';
import { events, errorSamples, sleep, now } from './lib/http.mjs';

const log = (/** @type {string} */ m) => console.error(`chaos: ${m}`);
const SHORT = process.env.CHAOS_SHORT === '1';
const SECONDS = Number(process.env.CHAOS_SECONDS ?? (SHORT ? 120 : 600));
const SLOT_S = Number(process.env.CHAOS_SLOT_S ?? 20);
const NUSERS = Number(process.env.CHAOS_USERS ?? 16);
const OUT = process.env.CHAOS_OUT ?? '';
const ONLY = (process.env.CHAOS_FAULTS ?? '').split(',').map((s) => s.trim()).filter(Boolean);
const RECOVERY_LIMIT_MS = 10000;

const info = await clusterInfo();
const run = `cx${process.pid}`;
const users = Array.from({ length: NUSERS }, (_, i) => String(50001 + i));
const kinds = FAULTS.filter((f) => !ONLY.length || ONLY.some((o) => f.kind.startsWith(o)));

/** @type {Netem | null} */
let netem = null;
let netemLine = '';
let cleaned = false;
async function cleanup() {
  if (cleaned) return;
  cleaned = true;
  await netem?.teardown(process.env.CHAOS_RESTORE === '1');
}
for (const sig of /** @type {NodeJS.Signals[]} */ (['SIGINT', 'SIGTERM'])) {
  process.on(sig, () => { cleanup().finally(() => process.exit(130)); });
}

// --- the network path for the netem fault
if (kinds.some((k) => k.kind.includes('netem'))) {
  const n = new Netem(info, freePort, log);
  try {
    netemLine = await n.setup();
    netem = n;
  } catch (e) {
    netemLine = `skipped: ${/** @type {Error} */ (e).message}`;
    await n.teardown(process.env.CHAOS_RESTORE === '1');
  }
  log(`netem: ${netemLine}`);
}
{
  const ok = await until(async () => (await health(info))[0], 60000, 250);
  if (!ok) {
    log(`the cluster is not whole before the run: ${(await health(info))[1]}`);
    await cleanup();
    process.exit(2);
  }
}

/** Why KIND cannot run here, or "". */
function skipReason(/** @type {string} */ kind) {
  if (/^postgres primary|^etcd/.test(kind) && !info.patroni) return 'no Patroni';
  if (/^redis/.test(kind) && !info.redis_cluster) return 'the daemons do not use the Redis Cluster';
  if (/netem/.test(kind) && !netem) return netemLine.replace(/^skipped: /, '');
  return '';
}

// --- load
const load = new Load({
  sdk: { 'logicd-1': info.sdk['logicd-1'], 'logicd-2': info.sdk['logicd-2'], hap: info.sdk.hap },
  internal: { hap: info.internal.hap, 'logicd-1': info.internal['logicd-1'], 'logicd-2': info.internal['logicd-2'] },
  ws: info.ws,
  serverKey: info.server_key,
  users,
  wsUsers: users.slice(0, Math.max(2, NUSERS >> 1)),
  run,
  limit: 3,
  hapSenders: 2,
  directSenders: 2,
  sendPauseMs: Number(process.env.CHAOS_SEND_PAUSE_MS ?? 20),
  syncPauseMs: 100,
});
const operator = new Operator(info.internal.hap, info.ops_token, users.slice(0, 4), 700);
const t0 = now();
await load.start();
operator.start();
log(`load: ${NUSERS} users, 4 senders (2 through haproxy, 2 alternating logicd-1/logicd-2), ` +
  `${Object.keys(load.o.sdk).length} syncing clients per user (limit 3), ${load.wsClients.length} WebSocket clients, an operator`);

// --- faults
/** @type {import('./lib/faults.mjs').Injection[]} */
const injections = [];
/** @type {Record<string, string>} */
const skipped = {};
/** @type {Record<string, number>} */
const rounds = {};
const warm = Math.min(10, SECONDS * 0.1) * 1000;
const end = t0 + SECONDS * 1000;
const runnable = kinds.filter((k) => !skipReason(k.kind));
for (const k of kinds) if (skipReason(k.kind)) skipped[k.kind] = skipReason(k.kind);
const slot = SHORT ? Math.max(8000, (SECONDS * 1000 - warm - 8000) / Math.max(1, runnable.length)) : SLOT_S * 1000;
let next = t0 + warm;
const ctx = {
  info, round: 0, graceMs: GRACE_MS, netem, log,
  logicdConf: /** @type {Record<string, string>} */ (netem ? { 'logicd-2': netem.conf } : {}),
};
for (let i = 0; runnable.length; i++) {
  const f = runnable[i % runnable.length];
  if (SHORT && i >= runnable.length) break;
  // A long run stops injecting when the fault would end after the load.
  if (!SHORT && Math.max(next, now()) + slot > end) break;
  while (now() < next) await sleep(Math.min(500, next - now()));
  ctx.round = rounds[f.kind] ?? 0;
  rounds[f.kind] = ctx.round + 1;
  log(`fault ${injections.length + 1}: ${f.kind} (round ${ctx.round + 1}) at +${((now() - t0) / 1000).toFixed(1)} s`);
  const inj = await f.run(ctx);
  if (inj.skip) {
    skipped[f.kind] = inj.skip;
    continue;
  }
  injections.push(inj);
  log(`  ${inj.target}: serving +${((inj.serving - inj.t) / 1000).toFixed(1)} s, whole +${((inj.restored - inj.t) / 1000).toFixed(1)} s` +
    `${inj.notes.length ? `; ${inj.notes.join('; ')}` : ''}${inj.failed ? `; FAILED: ${inj.failed}` : ''}`);
  next = Math.max(next + slot, now() + 3000);
}
while (now() < end) await sleep(Math.min(500, end - now()));

// --- stop, follow every stream to its end, fresh syncs
log('stopping the load');
const loadEnd = now();
await load.stop();
await operator.stop();
for (const c of load.wsClients) c.stop();
await until(() => load.wsClients.every((c) => !c.syncing), 15000, 50);
await sleep(3000); // two poll intervals: every logicd's cache has the last notice change
const deadline = now() + 60000;
await Promise.all(load.streams.map(async (s) => { s.complete = await load.drain(s, deadline); }));
/** @type {import('./lib/load.mjs').Stream[]} */
const fresh = [];
for (const via of ['logicd-1', 'logicd-2']) {
  for (const uid of users) {
    const s = newStream(`fresh-${via}-${uid}`, uid, via);
    s.complete = await load.drain(s, deadline, 500);
    fresh.push(s);
  }
}
// The cluster must be whole again by itself (plus what ops/chaos restarted).
let notWhole = '';
{
  const t = now();
  const ok = await until(async () => (await health(info))[0], Number(process.env.CHAOS_WHOLE_S ?? 240) * 1000, 500);
  notWhole = ok ? '' : (await health(info))[1];
  // A row the promoted primary acknowledged must still be there (a promotion
  // undone by the old primary would have rewound it away).
  for (const inj of injections) {
    if (!inj.probe) continue;
    const n = await pgHas(inj.probe.shard, inj.probe.note);
    if (n !== 1) {
      inj.failed = `an INSERT acknowledged by the promoted primary :${inj.probe.port} is gone (${n < 0 ? 'no answer' : `${n} rows`}): ` +
        'its writes were undone';
    } else inj.notes.push(`a write acknowledged by the promoted primary :${inj.probe.port} survived`);
  }
  log(ok ? `cluster whole again (${((now() - t) / 1000).toFixed(1)} s after the load)` : `cluster NOT whole: ${notWhole}`);
}
await cleanup();

// --- the judge and the table
/** When the window of injection I ends: the next fault, or the end of the load. */
const windowEnd = (/** @type {number} */ i) => (i + 1 < injections.length ? injections[i + 1].t : loadEnd);
const verdict = judge({
  sends: load.sends, streams: load.streams, fresh, wsClients: load.wsClients, injections, operator, users, run,
  faultEnd: (inj) => inj.restored || inj.serving,
});

/** Recovery of injection I: per kind, the time until requests of that kind succeeded again on every route. */
function recovery(/** @type {number} */ i) {
  const inj = injections[i];
  const stop = windowEnd(i);
  const serving = Math.max(inj.serving || inj.t, inj.t);
  /** @type {Record<string, { again: number, afterServing: number, failed: number }>} */
  const out = {};
  for (const [name, set] of /** @type {[string, Set<string>][]} */ ([['send', new Set(['send'])], ['sync', new Set(['sync', 'ws-sync'])]])) {
    const ev = events.filter((e) => set.has(e.kind) && e.t1 >= inj.t && e.t1 < stop);
    /** @type {Map<string, { lastFail: number, okAfter: number }>} */
    const vias = new Map();
    let failed = 0;
    for (const e of ev.sort((a, b) => a.t1 - b.t1)) {
      const v = vias.get(e.via) ?? { lastFail: 0, okAfter: 0 };
      const good = e.status >= 200 && e.status < 300;
      if (!good) {
        failed++;
        v.lastFail = e.t1;
        v.okAfter = 0;
      } else if (v.lastFail && !v.okAfter) v.okAfter = e.t1;
      vias.set(e.via, v);
    }
    let again = 0;
    let afterServing = 0;
    for (const v of vias.values()) {
      if (!v.lastFail) continue;
      const back = v.okAfter || stop;
      again = Math.max(again, back - inj.t);
      afterServing = Math.max(afterServing, back - serving);
    }
    out[name] = { again, afterServing, failed };
  }
  return out;
}

// WebSocket clients cut off by the fault: the longest time until they were logged in again.
function wsBack(/** @type {number} */ i) {
  const inj = injections[i];
  let worst = -1;
  for (const c of load.wsClients) {
    const cut = c.sessions.find((s) => s.off >= inj.t && s.off <= inj.t + 3000 && s.off < windowEnd(i));
    if (!cut) continue;
    const back = c.sessions.find((s) => s.on >= cut.off);
    worst = Math.max(worst, (back ? back.on : windowEnd(i)) - inj.t);
  }
  return worst;
}

const secs = (/** @type {number} */ ms) => (ms / 1000).toFixed(1);
/** @type {{ fault: string, n: number | string, sends: string, syncs: string, after: string, failed: number | string,
 *   acked: number | string, lost: number | string, dup: number | string, ooo: number | string, notes: string }[]} */
const rows = [];
let bad = false;
/** @type {string[]} */
const problems = [];
const base = verdict.byWindow.get(-1) ?? { acked: 0, lost: 0, duplicated: 0, outOfOrder: 0, examples: [] };
rows.push({ fault: 'none (before the first fault)', n: '-', sends: '-', syncs: '-', after: '-', failed: '-',
  acked: base.acked, lost: base.lost, dup: base.duplicated, ooo: base.outOfOrder, notes: '' });
for (const k of kinds) {
  const idx = injections.map((inj, i) => (inj.kind === k.kind ? i : -1)).filter((i) => i >= 0);
  if (!idx.length) {
    rows.push({ fault: k.kind, n: 0, sends: '-', syncs: '-', after: '-', failed: '-', acked: '-', lost: '-', dup: '-', ooo: '-',
      notes: `skipped: ${skipped[k.kind] ?? 'not reached'}` });
    if (SHORT && !skipped[k.kind]) {
      bad = true;
      problems.push(`${k.kind}: not injected`);
    }
    continue;
  }
  let sendAgain = 0;
  let syncAgain = 0;
  let after = 0;
  let failed = 0;
  let ws = -1;
  const c = { acked: 0, lost: 0, duplicated: 0, outOfOrder: 0 };
  /** @type {string[]} */
  const notes = [];
  for (const i of idx) {
    const r = recovery(i);
    sendAgain = Math.max(sendAgain, r.send.again);
    syncAgain = Math.max(syncAgain, r.sync.again);
    after = Math.max(after, r.send.afterServing, r.sync.afterServing);
    failed += r.send.failed + r.sync.failed;
    ws = Math.max(ws, wsBack(i));
    const w = verdict.byWindow.get(i);
    if (w) {
      c.acked += w.acked;
      c.lost += w.lost;
      c.duplicated += w.duplicated;
      c.outOfOrder += w.outOfOrder;
    }
    const inj = injections[i];
    if (inj.failed) {
      bad = true;
      problems.push(`${k.kind} (${inj.target}): ${inj.failed}`);
      notes.push(`FAILED: ${inj.failed}`);
    }
    if (inj.stalePrimaryWrites) {
      bad = true;
      problems.push(`${k.kind} (${inj.target}): the old primary took a write after waking`);
    }
    for (const n of inj.notes) if (!notes.includes(n) && notes.length < 4) notes.push(n);
  }
  if (after > RECOVERY_LIMIT_MS) {
    bad = true;
    problems.push(`${k.kind}: requests succeeded again only ${secs(after)} s after the replacement served`);
  }
  if (ws >= 0) notes.unshift(`WebSocket clients back within ${secs(ws)} s`);
  if (k.kind.includes('netem')) {
    // What the shaping did: p99 of the requests sent to logicd-2 directly.
    const p99 = (/** @type {number} */ a, /** @type {number} */ b) => {
      const xs = events.filter((e) => e.via === 'logicd-2' && e.t0 >= a && e.t1 <= b).map((e) => e.t1 - e.t0).sort((x, y) => x - y);
      return xs.length ? xs[Math.min(xs.length - 1, Math.floor(xs.length * 0.99))] : 0;
    };
    const during = Math.max(...idx.map((i) => p99(injections[i].t, injections[i].serving)));
    const before = Math.max(...idx.map((i) => p99(injections[i].t - 8000, injections[i].t)));
    notes.unshift(`p99 of requests to logicd-2 ${during} ms during, ${before} ms before`);
    notes.unshift(netemLine.replace(/^namespace \S+, veth \S+; /, ''));
  }
  rows.push({ fault: k.kind, n: idx.length, sends: secs(sendAgain), syncs: secs(syncAgain), after: secs(after), failed,
    acked: c.acked, lost: c.lost, dup: c.duplicated, ooo: c.outOfOrder, notes: notes.join('; ') });
}
let total = { acked: 0, lost: 0, duplicated: 0, outOfOrder: 0 };
for (const w of verdict.byWindow.values()) {
  total = { acked: total.acked + w.acked, lost: total.lost + w.lost, duplicated: total.duplicated + w.duplicated,
    outOfOrder: total.outOfOrder + w.outOfOrder };
}
const allFailed = events.filter((e) => (e.kind === 'send' || e.kind === 'sync' || e.kind === 'ws-sync') && !(e.status >= 200 && e.status < 300)).length;
rows.push({ fault: '**all**', n: injections.length, sends: '', syncs: '', after: '', failed: allFailed,
  acked: total.acked, lost: total.lost, dup: total.duplicated, ooo: total.outOfOrder, notes: '' });

const g = verdict.global;
if (notWhole) {
  bad = true;
  problems.push(`the cluster was not whole ${process.env.CHAOS_WHOLE_S ?? 240} s after the load: ${notWhole}`);
}
if (total.lost || total.duplicated || total.outOfOrder) {
  bad = true;
  problems.push(`messages: ${total.lost} lost, ${total.duplicated} duplicated, ${total.outOfOrder} out of order`);
}
for (const [k, what] of /** @type {[keyof typeof g, string][]} */ ([
  ['resets', 'resets without an epoch change'], ['freshDisagree', 'live streams that differ from the fresh sync'],
  ['keyTwice', 'msgkeys that made two messages'],
  ['grayLeaks', 'notices that reached a user outside the gray release'], ['retractMissing', 'retracts that did not reach a holder'],
  ['wsLate', 'WebSocket deliveries later than 5 s outside fault windows'], ['abandoned', 'sends given up'],
  ['incomplete', 'streams that could not be followed to their end'],
])) {
  if (g[k]) {
    bad = true;
    problems.push(`${g[k]} ${what}`);
  }
}

// Reported on every run but not failing it: a notice version delivered
// twice with no whitelist change that explains it. Such repeats were seen
// under PostgreSQL faults (about one run in five, nothing lost); the ones
// examined fit a whitelist change whose new seqs reached a logicd only after
// its poller was back (excused above since), but that is not confirmed for
// every case. The exit status keeps to the issue's rule: loss, duplicates,
// order, recovery time, and the other checks above.
if (g.noticeRepeats) {
  console.log(`UNEXPLAINED (reported, does not fail the run): ${g.noticeRepeats} notice versions delivered twice without a whitelist change`);
}

const head = ['fault', 'injected', 'sends ok again (max s)', 'syncs ok again (max s)', 'after replacement serving (max s)',
  'failed requests', 'acknowledged', 'lost', 'duplicated', 'out of order', 'notes'];
const lines = [`| ${head.join(' | ')} |`, `|${head.map(() => ' --- ').join('|')}|`];
for (const r of rows) {
  lines.push(`| ${[r.fault, r.n, r.sends, r.syncs, r.after, r.failed, r.acked, r.lost, r.dup, r.ooo, r.notes].join(' | ')} |`);
}
const sendsN = load.sends.length;
const syncsN = events.filter((e) => e.kind === 'sync' || e.kind === 'ws-sync').length;
const summary = [
  `${SHORT ? 'short run' : 'run'} of ${secs(loadEnd - t0)} s: ${sendsN} sends (${load.sends.filter((s) => s.attempts > 1).length} retried), ` +
    `${syncsN} syncs, ${operator.actions} operator calls (${operator.notices.size} notices, ${operator.wlChanges.length} whitelist changes), ` +
    `${load.wsClients.length} WebSocket clients (${load.wsClients.reduce((n, c) => n + c.connects, 0)} logins, ` +
    `${load.wsClients.reduce((n, c) => n + c.notifies.length, 0)} notifies)`,
  `checks: resets ${g.resets}; live streams differing from a fresh sync from "" ${g.freshDisagree} (of ${load.streams.length}); ` +
    `msgkeys making two messages ${g.keyTwice}; notice versions twice ${g.noticeRepeats} (documented re-deliveries after a whitelist change: ${g.noticeRepeatsExcused}); ` +
    `gray leaks ${g.grayLeaks}; retracts missing ${g.retractMissing} of ${g.retractHolders} holders; ` +
    `WebSocket deliveries checked ${g.wsChecked}, later than 5 s ${g.wsLate} (inside fault windows, covered by a later sync: ${g.wsLateInFault})`,
];
console.log(lines.join('\n'));
console.log('');
for (const s of summary) console.log(s);
const examples = [...g.examples, ...[...verdict.byWindow.values()].flatMap((w) => w.examples)];
if (examples.length) {
  console.log('examples:');
  for (const e of examples.slice(0, 20)) console.log(`  ${e}`);
}
if (problems.length) {
  console.log('FAILED:');
  for (const p of problems) console.log(`  ${p}`);
  const errs = Object.entries(errorSamples).sort((a, b) => b[1] - a[1]).slice(0, 10);
  if (errs.length) console.log('errors seen (count):');
  for (const [k, v] of errs) console.log(`  ${v}x ${k}`);
} else {
  console.log('chaos: no loss, no duplicate, no order violation, every recovery within 10 s of the replacement serving');
}
if (OUT) {
  writeFileSync(path.join(OUT, 'chaos.json'), JSON.stringify({
    rows, summary, problems, injections, skipped, errors: errorSamples, global: { ...g, examples: g.examples },
  }, null, 1));
}
process.exit(bad ? 1 : 0);
