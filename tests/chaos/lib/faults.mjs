// @ts-check
// The faults, one at a time. Each inject() does the harm, waits for the
// replacement (a restarted daemon, a promoted replica or standby) to serve,
// puts back what the fault took (when no supervisor did it first), and
// returns an Injection: when it struck, when the replacement served, when
// the cluster was whole again, and notes. A fault kind that cannot run here
// says why (skip).
import { ctl, pidOf, alive, signal, children, until, healthy200, redisNodes, redisRole, pgMembers, pgWritable, health }
  from './cluster.mjs';
import { sleep, now } from './http.mjs';
import { redisSlot } from './slot.mjs';

/**
 * @typedef {{ kind: string, target: string, t: number, serving: number, restored: number,
 *   notes: string[], failed?: string, stalePrimaryWrites: number, probe?: { shard: number, note: string, port: number } }} Injection
 * @typedef {import('./cluster.mjs').Info} Info
 * @typedef {{ info: Info, round: number, graceMs: number, netem: import('./netem.mjs').Netem | null,
 *   log: (m: string) => void, logicdConf: Record<string, string> }} Ctx
 */

/** Milliseconds a supervisor gets to restart what was killed before the suite does it. */
export const GRACE_MS = Number(process.env.CHAOS_SUPERVISOR_GRACE_MS ?? 3000);

/** @returns {Injection} */
function injection(/** @type {string} */ kind, /** @type {string} */ target) {
  return { kind, target, t: now(), serving: 0, restored: 0, notes: [], stalePrimaryWrites: 0 };
}

/**
 * After a kill: a supervisor's restart (the pid file names a new live pid)
 * within the grace time, or START.
 * @param {Ctx} c
 * @param {string} name
 * @param {number} oldPid
 * @param {() => Promise<unknown>} start
 * @param {Injection} inj
 */
async function restart(c, name, oldPid, start, inj) {
  const by = await until(async () => {
    const p = await pidOf(name);
    return p && p !== oldPid ? p : 0;
  }, c.graceMs, 200);
  if (by) {
    inj.notes.push(`${name} restarted by the supervisor`);
    return;
  }
  await start();
  inj.notes.push(`${name} restarted by ops/chaos`);
}

/**
 * Waits (bounded) until PART of the cluster is whole again (cluster.mjs
 * health); records when, or that it was not.
 * @param {Ctx} c
 * @param {Injection} inj
 * @param {string} part
 * @param {number} timeoutMs
 */
async function whole(c, inj, part, timeoutMs) {
  let why = '';
  const ok = await until(async () => {
    const [h, w] = await health(c.info, part);
    why = w;
    return h;
  }, timeoutMs, 250);
  inj.restored = now();
  if (!ok) {
    inj.failed = `${part} not whole ${timeoutMs / 1000} s after the fault: ${why}`;
    c.log(`  ${inj.failed}`);
  }
}

/**
 * Before a fault: PART must be whole (a fault strikes a healthy cluster);
 * waits up to 180 s (a PostgreSQL member being cloned again after the
 * last fault). Resolves a reason when it is not.
 */
export async function ready(/** @type {Ctx} */ c, /** @type {string} */ part) {
  let why = '';
  const ok = await until(async () => {
    const [h, w] = await health(c.info, part);
    why = w;
    return h;
  }, 180000, 500);
  return ok ? '' : `${part} not whole before the fault: ${why}`;
}

/** kill -9 of logicd-N; restarted (same config); serving when its /healthz is 200. */
async function logicdKill(/** @type {Ctx} */ c) {
  const n = c.info.nodes[c.round % c.info.nodes.length];
  const name = `logicd-${n}`;
  const inj = injection('logicd kill -9', name);
  const not = await ready(c, name);
  const pid = await pidOf(name);
  if (not || !pid) return { ...inj, failed: not || `${name} not running before the fault` };
  signal(pid, 'SIGKILL');
  inj.t = now();
  await restart(c, name, pid, () => ctl(c.logicdConf[name] ? ['replace-logicd', String(n), c.logicdConf[name]] : ['start-logicd', String(n)]), inj);
  await until(() => healthy200(`${c.info.internal[name]}/healthz`), 30000, 100);
  inj.serving = now();
  await whole(c, inj, name, 30000);
  return inj;
}

/** kill -9 of lcsd-N; restarted; serving when its admin /healthz is 200. */
async function lcsdKill(/** @type {Ctx} */ c) {
  const n = c.info.nodes[(c.round + 1) % c.info.nodes.length];
  const name = `lcsd-${n}`;
  const inj = injection('lcsd kill -9', name);
  const not = await ready(c, name);
  const pid = await pidOf(name);
  if (not || !pid) return { ...inj, failed: not || `${name} not running before the fault` };
  signal(pid, 'SIGKILL');
  inj.t = now();
  await restart(c, name, pid, () => ctl(['start-lcsd', String(n)]), inj);
  await until(() => healthy200(`${c.info.admin[name]}/healthz`), 30000, 100);
  inj.serving = now();
  await whole(c, inj, name, 30000);
  return inj;
}

/** The master holding slots to hit this round, and its replica. */
async function pickMaster(/** @type {Ctx} */ c) {
  const nodes = await redisNodes();
  const masters = nodes.filter((x) => x.master && !x.failed && x.slots.length).sort((a, b) => a.port - b.port);
  if (!masters.length) return null;
  const m = masters[c.round % masters.length];
  const r = nodes.find((x) => !x.master && x.of === m.id && !x.failed);
  return r ? { m, r } : null;
}

/** A key whose slot is in the ranges SLOTS ("0-5460" ...). */
function keyIn(/** @type {string[]} */ slots) {
  const ranges = slots.filter((s) => !s.startsWith('[')).map((s) => s.split('-').map(Number));
  for (let i = 0; i < 1000000; i++) {
    const k = `chaos:probe:{${i}}`;
    const s = redisSlot(k);
    if (ranges.some(([lo, hi]) => s >= lo && s <= (hi ?? lo))) return k;
  }
  return 'chaos:probe';
}

/** kill -9 of a Redis master; serving when its replica says master; the old node rejoins. */
async function redisKill(/** @type {Ctx} */ c) {
  const inj = injection('redis master kill -9', '');
  if (!c.info.redis_cluster) return { ...inj, skip: 'the daemons do not use the Redis Cluster (no redis_nodes)' };
  const not = await ready(c, 'redis');
  if (not) return { ...inj, failed: not };
  const pr = await pickMaster(c);
  if (!pr) return { ...inj, failed: 'no master with a replica before the fault' };
  const name = `redis-${pr.m.port}`;
  inj.target = `${name} (replica :${pr.r.port})`;
  const pid = await pidOf(name);
  if (!pid) return { ...inj, failed: `${name} not running` };
  signal(pid, 'SIGKILL');
  inj.t = now();
  const promoted = await until(async () => (await redisRole(pr.r.port)) === 'master', 30000, 100);
  inj.serving = now();
  if (!promoted) inj.failed = `replica :${pr.r.port} not promoted within 30 s`;
  else inj.notes.push(`promoted after ${((inj.serving - inj.t) / 1000).toFixed(1)} s`);
  await restart(c, name, pid, () => ctl(['start-redis', String(pr.m.port)]), inj);
  await whole(c, inj, 'redis', 60000);
  return inj;
}

/**
 * SIGSTOP of a Redis master until its replica is promoted (plus a second),
 * then SIGCONT; the woken node must not take a write for its old slots.
 */
async function redisStop(/** @type {Ctx} */ c) {
  const inj = injection('redis master SIGSTOP', '');
  if (!c.info.redis_cluster) return { ...inj, skip: 'the daemons do not use the Redis Cluster (no redis_nodes)' };
  const not = await ready(c, 'redis');
  if (not) return { ...inj, failed: not };
  const pr = await pickMaster(c);
  if (!pr) return { ...inj, failed: 'no master with a replica before the fault' };
  const name = `redis-${pr.m.port}`;
  inj.target = `${name} (replica :${pr.r.port})`;
  const pid = await pidOf(name);
  if (!pid) return { ...inj, failed: `${name} not running` };
  const probe = keyIn(pr.m.slots);
  signal(pid, 'SIGSTOP');
  inj.t = now();
  const promoted = await until(async () => (await redisRole(pr.r.port)) === 'master', 30000, 100);
  inj.serving = now();
  if (!promoted) inj.failed = `replica :${pr.r.port} not promoted within 30 s`;
  await sleep(1000);
  signal(pid, 'SIGCONT');
  inj.notes.push(`stopped ${((now() - inj.t) / 1000).toFixed(1)} s`);
  // Once it has heard of the failover the woken node redirects (MOVED);
  // it gets the time of a cluster bus round trip, then a write is tried.
  await until(async () => (await redisRole(pr.m.port)) === 'slave', 10000, 100);
  const w = await ctl(['redis', String(pr.m.port), 'set', probe, 'written-to-the-old-master'], 5000);
  if (/^OK/m.test(w.out)) {
    inj.stalePrimaryWrites++;
    inj.notes.push(`the woken old master took a write for ${probe}`);
  } else inj.notes.push(`old master refuses writes (${w.out.trim().split(' ')[0] || w.err.trim()})`);
  await whole(c, inj, 'redis', 60000);
  return inj;
}

/** Shard SHARD's current primary. */
async function pgPrimary(/** @type {Ctx} */ c, /** @type {number} */ shard) {
  const ms = await pgMembers(c.info, shard);
  const p = ms.find((m) => m.role === 'primary');
  return p ? { shard, p } : null;
}

/**
 * A member other than OLD that is primary and commits a write (of NOTE,
 * checked again at the end of the run: an acknowledged commit of the
 * promoted primary must survive): its port, or 0.
 */
async function newPrimary(/** @type {Ctx} */ c, /** @type {number} */ shard, /** @type {number} */ oldPort, /** @type {string} */ note) {
  const ms = await pgMembers(c.info, shard);
  const p = ms.find((m) => m.port !== oldPort && m.role === 'primary');
  return p && (await pgWritable(p.port, note)) ? p.port : 0;
}

/** kill -9 of a PostgreSQL primary's postmaster; Patroni promotes the standby. */
async function pgKill(/** @type {Ctx} */ c) {
  const inj = injection('postgres primary kill -9', '');
  if (!c.info.patroni) return { ...inj, skip: 'no Patroni' };
  // Shards in turn; the SIGSTOP fault starts on the other one.
  const shard = c.info.shards[c.round % c.info.shards.length];
  const not = await ready(c, `pg:${shard}`);
  const pp = await pgPrimary(c, shard);
  if (not || !pp?.p.pid) return { ...inj, failed: not || `no primary of shard ${shard} before the fault` };
  inj.target = `shard ${pp.shard} :${pp.p.port}`;
  signal(pp.p.pid, 'SIGKILL');
  inj.t = now();
  const note = `kill-${process.pid}-${inj.t}`;
  const np = await until(() => newPrimary(c, pp.shard, pp.p.port, note), 60000, 250);
  inj.serving = now();
  if (np) inj.probe = { shard: pp.shard, note, port: np };
  if (!np) inj.failed = `no new primary for shard ${pp.shard} within 60 s`;
  else inj.notes.push(`:${np} promoted after ${((inj.serving - inj.t) / 1000).toFixed(1)} s`);
  // The old primary comes back as a standby (Patroni: pg_rewind or a new
  // clone); the next fault on this shard waits for it (ready()).
  await whole(c, inj, 'etcd', 30000);
  return inj;
}

/** SIGSTOP of a PostgreSQL primary (postmaster and backends) past Patroni's TTL, then SIGCONT. */
async function pgStop(/** @type {Ctx} */ c) {
  const inj = injection('postgres primary SIGSTOP', '');
  if (!c.info.patroni) return { ...inj, skip: 'no Patroni' };
  const shard = c.info.shards[(c.round + 1) % c.info.shards.length];
  const not = await ready(c, `pg:${shard}`);
  const pp = await pgPrimary(c, shard);
  if (not || !pp?.p.pid) return { ...inj, failed: not || `no primary of shard ${shard} before the fault` };
  inj.target = `shard ${pp.shard} :${pp.p.port}`;
  const pids = [pp.p.pid, ...children(pp.p.pid)];
  pids.forEach((p) => signal(p, 'SIGSTOP'));
  inj.t = now();
  const note = `stop-${process.pid}-${inj.t}`;
  const np = await until(() => newPrimary(c, pp.shard, pp.p.port, note), 60000, 250);
  inj.serving = now();
  if (np) inj.probe = { shard: pp.shard, note, port: np };
  if (!np) inj.failed = `no new primary for shard ${pp.shard} within 60 s`;
  await sleep(1000);
  pids.forEach((p) => signal(p, 'SIGCONT'));
  inj.notes.push(`stopped ${((now() - inj.t) / 1000).toFixed(1)} s`);
  if (await pgWritable(pp.p.port)) {
    inj.stalePrimaryWrites++;
    inj.notes.push(`the woken old primary :${pp.p.port} committed a direct INSERT`);
  } else inj.notes.push(`old primary :${pp.p.port} refuses writes`);
  await whole(c, inj, 'etcd', 30000);
  return inj;
}

/** kill -9 of the etcd member; restarted (when nothing else does it). */
async function etcdKill(/** @type {Ctx} */ c) {
  const inj = injection('etcd kill -9', 'etcd');
  if (!c.info.patroni) return { ...inj, skip: 'no Patroni' };
  const not = await ready(c, 'etcd');
  if (not) return { ...inj, failed: not };
  const r = await ctl(['etcd-pid']);
  const pid = Number(r.out.trim());
  if (!pid || !alive(pid)) return { ...inj, failed: 'no etcd pid' };
  signal(pid, 'SIGKILL');
  inj.t = now();
  await restart(c, 'etcd', pid, () => ctl(['start-etcd']), inj);
  await until(async () => (await health(c.info, 'etcd'))[0], 30000, 200);
  inj.serving = now();
  await whole(c, inj, 'etcd', 60000);
  return inj;
}

/** Latency and loss on logicd-2's PostgreSQL traffic (netem.mjs) for a while. */
async function pgNetem(/** @type {Ctx} */ c) {
  const inj = injection('postgres netem delay+loss', 'logicd-2 <-> postgres');
  if (!c.netem) return { ...inj, skip: 'no network namespace (see the setup line)' };
  const not = await ready(c, 'logicd-2');
  if (not) return { ...inj, failed: not };
  const how = await c.netem.slow();
  inj.t = now();
  inj.notes.push(how);
  await sleep(Number(process.env.CHAOS_NETEM_MS ?? 8000));
  await c.netem.fast();
  inj.serving = now();
  await whole(c, inj, 'logicd-2', 30000);
  return inj;
}

/**
 * The kinds, in the order a round injects them: the PostgreSQL faults
 * apart (a member of the shard hit last may still be re-cloning).
 * @type {{ kind: string, run: (c: Ctx) => Promise<Injection & { skip?: string }> }[]}
 */
export const FAULTS = [
  { kind: 'logicd kill -9', run: logicdKill },
  { kind: 'postgres primary kill -9', run: pgKill },
  { kind: 'redis master kill -9', run: redisKill },
  { kind: 'lcsd kill -9', run: lcsdKill },
  { kind: 'postgres primary SIGSTOP', run: pgStop },
  { kind: 'redis master SIGSTOP', run: redisStop },
  { kind: 'postgres netem delay+loss', run: pgNetem },
  { kind: 'etcd kill -9', run: etcdKill },
];
