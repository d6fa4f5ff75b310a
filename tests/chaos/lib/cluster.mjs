// @ts-check
// The running `ops/run cluster` as the drivers see it: its listeners and
// secrets (tests/chaos/ctl.sh info), pids, restarts, the Redis Cluster's
// map, health, and the PostgreSQL members. Everything goes through ctl.sh,
// which sources ops/lib/cluster.sh, so ports and restart commands are the
// cluster's own.
import { execFile } from 'node:child_process';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { sleep, now } from './http.mjs';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const CTL = path.join(REPO, 'tests/chaos/ctl.sh');

/**
 * @typedef {{
 *   dir: string, sdk: Record<string, string>, internal: Record<string, string>,
 *   ws: Record<string, string>, admin: Record<string, string>, nodes: number[], shards: number[],
 *   redis_ports: number[], redis_cluster: boolean, patroni: boolean,
 *   server_key: string, ops_token: string, stats: string,
 *   patroni_urls?: Record<string, string[]>, etcd_url?: string,
 *   procs: { name: string, pidfile: string, comm: string }[], logs: string
 * }} Info
 */

/**
 * Runs ctl.sh ARGS; resolves {code, out, err}. Bounded by timeoutMs.
 * @param {string[]} args
 * @param {number} [timeoutMs]
 * @returns {Promise<{ code: number, out: string, err: string }>}
 */
export function ctl(args, timeoutMs = 30000) {
  return new Promise((resolve) => {
    execFile(CTL, args, { timeout: timeoutMs, maxBuffer: 4 << 20 }, (e, out, err) => {
      const code = e ? (typeof (/** @type {any} */ (e).code) === 'number' ? /** @type {any} */ (e).code : 1) : 0;
      resolve({ code, out: String(out), err: String(err) });
    });
  });
}

/** @returns {Promise<Info>} */
export async function info() {
  const r = await ctl(['info']);
  if (r.code !== 0) throw new Error(`ctl.sh info failed: ${r.err}`);
  return JSON.parse(r.out);
}

/** The live pid of NAME (logicd-1, redis-7000, ...), or 0. */
export async function pidOf(/** @type {string} */ name) {
  const r = await ctl(['pid', name]);
  return r.code === 0 ? Number(r.out.trim()) : 0;
}

/** Is PID a live process (not a zombie)? */
export function alive(/** @type {number} */ pid) {
  if (!pid) return false;
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    const st = stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
    return st !== 'Z' && st !== 'X';
  } catch {
    return false;
  }
}

/** Sends SIG to PID; false when there is no such process. */
export function signal(/** @type {number} */ pid, /** @type {NodeJS.Signals} */ sig) {
  try {
    process.kill(pid, sig);
    return true;
  } catch {
    return false;
  }
}

/** Child pids of PID (from /proc). */
export function children(/** @type {number} */ pid) {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
}

/** Polls fn every stepMs until it is truthy or timeoutMs passes; the value or null. */
export async function until(/** @type {() => any} */ fn, /** @type {number} */ timeoutMs, stepMs = 100) {
  const end = now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (now() > end) return null;
    await sleep(stepMs);
  }
}

/** GET url answers 200 within 2 s. */
export async function healthy200(/** @type {string} */ url) {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
    await r.arrayBuffer();
    return r.status === 200;
  } catch {
    return false;
  }
}

/**
 * The Redis Cluster's nodes: id, port, master flag, its master's id,
 * whether failed, whether it holds slots.
 * @returns {Promise<{ id: string, port: number, master: boolean, of: string, failed: boolean, slots: string[] }[]>}
 */
export async function redisNodes() {
  const r = await ctl(['redis-nodes'], 10000);
  if (r.code !== 0) return [];
  return r.out
    .trim()
    .split('\n')
    .filter(Boolean)
    .map((l) => {
      const f = l.split(' ');
      return {
        id: f[0],
        port: Number(f[1].replace(/@.*/, '').replace(/.*:/, '')),
        master: /master/.test(f[2]),
        of: f[3],
        failed: /fail/.test(f[2]),
        slots: f.slice(8),
      };
    });
}

/** ROLE of the node on PORT ("master", "slave", or "" when it does not answer). */
export async function redisRole(/** @type {number} */ port) {
  const r = await ctl(['redis', String(port), 'role'], 5000);
  return r.code === 0 ? r.out.split('\n')[0].trim() : '';
}

/** GET url as JSON (2 s), or null. */
async function getJson(/** @type {string} */ url) {
  try {
    const r = await fetch(url, { signal: AbortSignal.timeout(2000) });
    const t = await r.text();
    return r.ok ? JSON.parse(t) : null;
  } catch {
    return null;
  }
}

/**
 * Patroni's view of shard S (GET /cluster from the first member that
 * answers): name, role (leader, sync_standby, replica), state, port.
 * @returns {Promise<{ name: string, role: string, state: string, port: number }[]>}
 */
async function patroniMembers(/** @type {Info} */ info, /** @type {number} */ shard) {
  for (const url of info.patroni_urls?.[String(shard)] ?? []) {
    const j = await getJson(`${url}/cluster`);
    if (j?.members) return j.members.map((/** @type {any} */ m) => ({ name: m.name, role: m.role, state: m.state, port: Number(m.port) }));
  }
  return [];
}

/**
 * The PostgreSQL members of SHARD: port, role (primary/standby), postmaster pid.
 * @returns {Promise<{ port: number, role: string, pid: number }[]>}
 */
export async function pgMembers(/** @type {Info} */ info, /** @type {number} */ shard) {
  if (!info.patroni) {
    const r = await ctl(['pg-members', String(shard)], 10000);
    return r.out.trim().split('\n').filter(Boolean).map((l) => {
      const [port, role, pid] = l.trim().split(/\s+/);
      return { port: Number(port), role, pid: Number(pid) };
    });
  }
  return (await patroniMembers(info, shard)).map((m) => {
    let pid = 0;
    try {
      pid = Number(readFileSync(path.join(info.dir, m.name, 'pg/data/postmaster.pid'), 'utf8').split('\n')[0]);
    } catch {
      /* not running */
    }
    const running = m.state === 'running' || m.state === 'streaming';
    return { port: m.port, role: m.role === 'leader' && running ? 'primary' : 'standby', pid };
  });
}

/** Does a direct INSERT (of NOTE) on the member at PORT commit (within 5 s)? */
export async function pgWritable(/** @type {number} */ port, note = 'probe') {
  return (await ctl(['pg-write', String(port), note], 15000)).code === 0;
}

/** How many probe rows with NOTE the primary of SHARD holds (-1: no answer). */
export async function pgHas(/** @type {number} */ shard, /** @type {string} */ note) {
  const r = await ctl(['pg-has', String(shard), note], 15000);
  return r.code === 0 ? Number(r.out.trim()) : -1;
}

/** Is the process of pid file PIDFILE alive and COMM? */
function procAlive(/** @type {string} */ pidfile, /** @type {string} */ comm) {
  let pid = 0;
  try {
    pid = Number(readFileSync(pidfile, 'utf8').split('\n')[0]);
  } catch {
    return false;
  }
  if (!alive(pid)) return false;
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim() === comm;
  } catch {
    return false;
  }
}

/**
 * Is PART of the cluster whole? "all", "logicd-N", "lcsd-N" (process
 * alive, haproxy has it UP), "redis" (every master has a replica with its
 * link up), "pg:S" (a running leader and a synchronous standby), "etcd"
 * (healthy, every shard has a leader). Resolves [ok, what is not].
 * @param {Info} info
 * @param {string} part
 * @returns {Promise<[boolean, string]>}
 */
export async function health(info, part = 'all') {
  /** @type {string[]} */
  const bad = [];
  const all = part === 'all';
  for (const p of info.procs) {
    if (p.name === 'demo' || (!all && p.name !== part)) continue;
    if (!procAlive(p.pidfile, p.comm)) bad.push(`${p.name} not running`);
  }
  if (all || /^(logicd|lcsd)-/.test(part)) {
    let csv = '';
    try {
      const r = await fetch(`${info.stats}/stats;csv`, { signal: AbortSignal.timeout(2000) });
      csv = await r.text();
    } catch {
      bad.push('haproxy stats do not answer');
    }
    for (const l of csv.split('\n')) {
      const f = l.split(',');
      if (!f[1] || l.startsWith('#') || f[1] === 'FRONTEND' || f[1] === 'BACKEND' || f[0] === 'stats') continue;
      if ((all || f[1] === part) && !/^UP/.test(f[17] ?? '')) bad.push(`haproxy ${f[0]}/${f[1]} ${f[17]}`);
    }
  }
  if ((all || part === 'redis') && info.redis_cluster) {
    const r = await ctl(['redis-health'], 20000);
    if (r.code !== 0) bad.push(r.out.trim().replace(/\n/g, '; ') || 'redis not whole');
  }
  if (info.patroni && (all || part.startsWith('pg:') || part === 'etcd')) {
    for (const s of info.shards) {
      if (part.startsWith('pg:') && part !== `pg:${s}`) continue;
      const ms = await patroniMembers(info, s);
      const leader = ms.some((m) => m.role === 'leader' && m.state === 'running');
      const sync = ms.some((m) => m.role === 'sync_standby' && (m.state === 'running' || m.state === 'streaming'));
      if (!leader || (part !== 'etcd' && !sync)) bad.push(`pg${s}: ${ms.map((m) => `${m.name} ${m.role} ${m.state}`).join(', ') || 'no answer'}`);
    }
  }
  if (info.patroni && (all || part === 'etcd')) {
    const j = await getJson(`${info.etcd_url}/health`);
    if (!j || String(j.health) !== 'true') bad.push('etcd not healthy');
  }
  return [bad.length === 0, bad.join('; ')];
}

/** Can PORT be bound on loopback right now? */
function canBind(/** @type {number} */ port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/**
 * A loopback port nobody listens on, below the kernel's ephemeral range
 * (as tests/js/util.mjs freePort: a port handed out for port 0 can be taken
 * again by an outgoing connection's local end).
 */
export async function freePort() {
  let low = 32768;
  try {
    const l = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').split(/\s+/)[0]);
    if (l > 21024) low = l;
  } catch {
    /* the default */
  }
  for (let k = 0; k < 200; k++) {
    const port = 20000 + Math.floor(Math.random() * (low - 20000));
    if (await canBind(port)) return port;
  }
  throw new Error('no free port below the ephemeral range');
}
