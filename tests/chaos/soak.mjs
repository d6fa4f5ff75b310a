#!/usr/bin/env node
// @ts-check
// tests/chaos/soak.mjs: the soak behind ops/bench/soak, against a running
// `ops/run cluster` (environment as for chaos.mjs). A steady mixed load
// (lib/load.mjs, lib/operator.mjs: sends, syncs through both logicd and
// haproxy, WebSocket clients, an operator) for SOAK_SECONDS (3600), with a
// WebSocket client dropped every SOAK_BOUNCE_S (20) seconds (it reconnects
// and syncs). Every SOAK_SAMPLE_S (60) seconds it samples, per daemon
// (logicd-1/2, lcsd-1/2, haproxy): RSS (VmRSS), open files (/proc/PID/fd),
// and p99 latency over the interval: for logicd, of the sends and syncs
// sent to it directly; for haproxy, of those sent through it; for lcsd,
// from a send's start to the notify on a client connected to it directly. At the end: the samples, the drift of
// each figure from the end of the warm-up (SOAK_WARMUP_S, default a fifth
// of the run, at most 600 s) to the last sample, error lines in the
// daemons' logs, and the history checker's counts. Goal: RSS and open files
// within 5% of the warm-up figure (open files: or within 2 descriptors),
// no error lines, nothing lost.
// Exit status 0 when the goal is met, 1 otherwise (figures are printed
// either way). Writes soak.json to SOAK_OUT when set.
import { readFileSync, readdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { info as clusterInfo, health, until } from './lib/cluster.mjs';
import { Load, newStream } from './lib/load.mjs';
import { Operator } from './lib/operator.mjs';
import { judge } from './lib/checker.mjs';
import { events, sleep, now } from './lib/http.mjs';

const log = (/** @type {string} */ m) => console.error(`soak: ${m}`);
const SECONDS = Number(process.env.SOAK_SECONDS ?? 3600);
const SAMPLE_S = Number(process.env.SOAK_SAMPLE_S ?? 60);
const BOUNCE_S = Number(process.env.SOAK_BOUNCE_S ?? 20);
const WARMUP_S = Number(process.env.SOAK_WARMUP_S ?? Math.min(600, SECONDS / 5));
const OUT = process.env.SOAK_OUT ?? '';
const DAEMONS = ['logicd-1', 'logicd-2', 'lcsd-1', 'lcsd-2', 'haproxy'];

const info = await clusterInfo();
if (!(await until(async () => (await health(info))[0], 60000, 500))) {
  log(`the cluster is not whole: ${(await health(info))[1]}`);
  process.exit(2);
}
const pidfile = Object.fromEntries(info.procs.map((p) => [p.name, p.pidfile]));
const pidOf = (/** @type {string} */ name) => {
  try {
    return Number(readFileSync(pidfile[name], 'utf8').split('\n')[0]);
  } catch {
    return 0;
  }
};
const rssKb = (/** @type {number} */ pid) => {
  try {
    const m = /VmRSS:\s+(\d+)/.exec(readFileSync(`/proc/${pid}/status`, 'utf8'));
    return m ? Number(m[1]) : 0;
  } catch {
    return 0;
  }
};
const fds = (/** @type {number} */ pid) => {
  try {
    return readdirSync(`/proc/${pid}/fd`).length;
  } catch {
    return 0;
  }
};
const p99 = (/** @type {number[]} */ xs) => {
  if (!xs.length) return 0;
  const s = [...xs].sort((a, b) => a - b);
  return s[Math.min(s.length - 1, Math.floor(s.length * 0.99))];
};

const users = Array.from({ length: Number(process.env.SOAK_USERS ?? 16) }, (_, i) => String(60001 + i));
const run = `sk${process.pid}`;
const load = new Load({
  sdk: { 'logicd-1': info.sdk['logicd-1'], 'logicd-2': info.sdk['logicd-2'], hap: info.sdk.hap },
  internal: { hap: info.internal.hap, 'logicd-1': info.internal['logicd-1'], 'logicd-2': info.internal['logicd-2'] },
  ws: info.ws, serverKey: info.server_key, users, wsUsers: users.slice(0, 8), run, limit: 5,
  hapSenders: 1, directSenders: 2, sendPauseMs: Number(process.env.SOAK_SEND_PAUSE_MS ?? 50), syncPauseMs: 250,
  tokenTtl: SECONDS + 3600,
});
const operator = new Operator(info.internal.hap, info.ops_token, users.slice(0, 4), 3000);
const t0 = now();
const firstPid = Object.fromEntries(DAEMONS.map((d) => [d, pidOf(d)]));
await load.start();
operator.start();
log(`${SECONDS} s: ${users.length} users, 3 senders, 3 syncing clients per user, ${load.wsClients.length} WebSocket clients ` +
  `(one dropped every ${BOUNCE_S} s), an operator; a sample every ${SAMPLE_S} s`);

/** @type {{ t: number, d: Record<string, { rss: number, fds: number, p99: number, n: number }> }[]} */
const samples = [];
let last = t0;
let nextBounce = t0 + BOUNCE_S * 1000;
let bounces = 0;
const end = t0 + SECONDS * 1000;
while (now() < end) {
  await sleep(Math.min(1000, end - now()));
  if (now() >= nextBounce) {
    load.wsClients[bounces++ % load.wsClients.length].bounce();
    nextBounce += BOUNCE_S * 1000;
  }
  if (now() - last < SAMPLE_S * 1000 && now() < end) continue;
  const from = last;
  last = now();
  /** @type {Record<string, { rss: number, fds: number, p99: number, n: number }>} */
  const d = {};
  for (const name of DAEMONS) {
    const pid = pidOf(name);
    let lat = /** @type {number[]} */ ([]);
    if (name.startsWith('logicd')) {
      lat = events.filter((e) => e.via === name && e.t1 >= from && e.t1 < last && e.status >= 200 && e.status < 300)
        .map((e) => e.t1 - e.t0);
    } else if (name === 'haproxy') {
      lat = events.filter((e) => e.via === 'hap' && e.t1 >= from && e.t1 < last && e.status >= 200 && e.status < 300)
        .map((e) => e.t1 - e.t0);
    } else if (name.startsWith('lcsd')) {
      const byId = new Map();
      for (const s of load.sends) for (const id of Object.values(s.ids)) byId.set(id, s.start);
      for (const c of load.wsClients) {
        if (c.via !== name) continue;
        for (const n of c.notifies) if (n.t >= from && n.t < last && byId.has(n.msg_id)) lat.push(n.t - byId.get(n.msg_id));
      }
    }
    d[name] = { rss: rssKb(pid), fds: fds(pid), p99: p99(lat), n: lat.length };
  }
  samples.push({ t: last, d });
  log(`+${Math.round((last - t0) / 1000)} s ${DAEMONS.map((n) => `${n} ${(d[n].rss / 1024).toFixed(1)} MB ${d[n].fds} fds p99 ${d[n].p99} ms`).join(', ')}`);
}

log('stopping the load');
await load.stop();
await operator.stop();
for (const c of load.wsClients) c.stop();
await until(() => load.wsClients.every((c) => !c.syncing), 15000, 50);
await sleep(3000);
const deadline = now() + 60000;
await Promise.all(load.streams.map(async (s) => { s.complete = await load.drain(s, deadline); }));
/** @type {import('./lib/load.mjs').Stream[]} */
const fresh = [];
for (const uid of users) {
  const s = newStream(`fresh-logicd-1-${uid}`, uid, 'logicd-1');
  s.complete = await load.drain(s, deadline, 500);
  fresh.push(s);
}

// --- drift: the sample at the end of the warm-up against the last one
const warm = samples.find((s) => s.t - t0 >= WARMUP_S * 1000) ?? samples[0];
const lastS = samples[samples.length - 1];
/** @type {string[]} */
const problems = [];
const pct = (/** @type {number} */ a, /** @type {number} */ b) => (a ? ((b - a) / a) * 100 : 0);
const lines = [
  `| daemon | RSS after warm-up (MB) | RSS last (MB) | RSS drift | open files after warm-up | last | drift | p99 after warm-up (ms) | p99 last (ms) | p99 max (ms) |`,
  '| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |',
];
for (const name of DAEMONS) {
  if (!warm || !lastS) break;
  const a = warm.d[name];
  const b = lastS.d[name];
  const rd = pct(a.rss, b.rss);
  const fd = pct(a.fds, b.fds);
  const pmax = Math.max(...samples.filter((s) => s.t >= warm.t).map((s) => s.d[name].p99));
  lines.push(`| ${name} | ${(a.rss / 1024).toFixed(1)} | ${(b.rss / 1024).toFixed(1)} | ${rd.toFixed(1)}% | ${a.fds} | ${b.fds} | ` +
    `${fd.toFixed(1)}% | ${a.p99} | ${b.p99} | ${pmax} |`);
  if (Math.abs(rd) > 5) problems.push(`${name}: RSS drifted ${rd.toFixed(1)}% after the warm-up`);
  // Open files move with the connections of the moment (a WebSocket client
  // reconnecting, a pooled connection): a drift counts past 2 descriptors.
  if (Math.abs(fd) > 5 && Math.abs(b.fds - a.fds) > 2) problems.push(`${name}: open files drifted ${fd.toFixed(1)}% after the warm-up`);
  if (pidOf(name) !== firstPid[name]) problems.push(`${name}: restarted during the soak (pid ${firstPid[name]} -> ${pidOf(name)})`);
}

// --- error lines in the daemons' logs
/** @type {Record<string, number>} */
const errorLines = {};
/** @type {string[]} */
const errorExamples = [];
for (const name of ['logicd-1', 'logicd-2', 'lcsd-1', 'lcsd-2']) {
  let text = '';
  try {
    text = readFileSync(path.join(info.logs, `${name}.log`), 'utf8');
  } catch {
    continue;
  }
  const bad = text.split('\n').filter((l) => /level=(error|fatal)|"level":"(error|fatal)"/.test(l));
  errorLines[name] = bad.length;
  errorExamples.push(...bad.slice(0, 3).map((l) => `${name}: ${l.slice(0, 200)}`));
  if (bad.length) problems.push(`${name}: ${bad.length} error lines in its log`);
}
const failed = events.filter((e) => e.status < 200 || e.status >= 300).length;
console.log(`soak of ${((now() - t0) / 1000 / 60).toFixed(1)} min (warm-up ${WARMUP_S} s, ${samples.length} samples): ` +
  `${load.sends.length} sends, ${events.filter((e) => e.kind === 'sync' || e.kind === 'ws-sync').length} syncs, ` +
  `${operator.actions} operator calls, ${load.wsClients.reduce((n, w) => n + w.connects, 0)} WebSocket logins (${bounces} drops), ` +
  `${failed} failed requests`);
console.log(lines.join('\n'));
console.log(`samples (RSS MB / open files / p99 ms): ${samples.map((s) => `+${Math.round((s.t - t0) / 1000)}s ` +
  DAEMONS.map((n) => `${(s.d[n].rss / 1024).toFixed(1)}/${s.d[n].fds}/${s.d[n].p99}`).join(' ')).join('; ')}`);
console.log(`error lines in logs: ${JSON.stringify(errorLines)}`);
for (const e of errorExamples.slice(0, 10)) console.log(`  ${e}`);
if (OUT) writeFileSync(path.join(OUT, 'soak.json'), JSON.stringify({ samples, errorLines, problems }, null, 1));

// --- the history checker, last: over an hour of history it takes minutes,
// and the figures above are printed (and saved) whatever it takes
log('checking the history');
const v = judge({ sends: load.sends, streams: load.streams, fresh, wsClients: load.wsClients, injections: [], operator, users, run,
  faultEnd: () => 0 });
const c = v.byWindow.get(-1) ?? { acked: 0, lost: 0, duplicated: 0, outOfOrder: 0, examples: [] };
if (c.lost || c.duplicated || c.outOfOrder) problems.push(`messages: ${c.lost} lost, ${c.duplicated} duplicated, ${c.outOfOrder} out of order`);
console.log(`checker: ${c.acked} acknowledged, ${c.lost} lost, ${c.duplicated} duplicated, ${c.outOfOrder} out of order; ` +
  `resets ${v.global.resets}, streams differing from a fresh sync ${v.global.freshDisagree}, WebSocket deliveries later than 5 s ${v.global.wsLate} of ${v.global.wsChecked}`);
console.log(problems.length ? `soak: goal missed:\n${problems.map((p) => `  ${p}`).join('\n')}` : 'soak: flat after the warm-up, no error lines, nothing lost');
if (OUT) writeFileSync(path.join(OUT, 'soak.json'), JSON.stringify({ samples, errorLines, problems, counts: c }, null, 1));
process.exit(problems.length ? 1 : 0);
