// @ts-check
// The network fault on PostgreSQL's traffic, shaped for one logicd only:
//
//   logicd-2 --> 127.0.0.1:PX (forwarder, root namespace)
//            --> veth --> 10.R.S.2:PX (forwarder inside namespace mboxchaos<pid>)
//            --> veth --> 10.R.S.1:PY (forwarder, root namespace) --> 127.0.0.1:<postgres port>
//
// Every PostgreSQL port in logicd-2's pg_conninfo and pg_shards gets such a
// path; logicd-2 is restarted once, before the load, with a copy of its
// config that names the PX ports. The fault puts `tc netem` delay and loss
// on both ends of the veth pair; when the kernel has no netem (sch_netem),
// the first forwarder delays and stalls the traffic itself instead (said in
// the table). Needs root (ip netns); teardown removes the namespace, the
// veth pair and the forwarders.
import { spawn, execFileSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { ctl, signal, until, healthy200 } from './cluster.mjs';
import { sleep } from './http.mjs';

const PROXY = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'proxy.mjs');

/** Runs a command; throws with its stderr on failure. */
function run(/** @type {string} */ cmd, /** @type {string[]} */ args) {
  return execFileSync(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] }).toString();
}

/** Starts the forwarder with MAPS (in namespace NS when given); resolves once it is listening. */
function startProxy(/** @type {string[]} */ maps, /** @type {string | null} */ ns) {
  const argv = ns ? ['netns', 'exec', ns, process.execPath, PROXY, ...maps] : [PROXY, ...maps];
  const p = spawn(ns ? 'ip' : process.execPath, argv, { stdio: ['ignore', 'pipe', 'inherit'] });
  return new Promise((resolve, reject) => {
    const t = setTimeout(() => reject(new Error('forwarder did not start')), 10000);
    p.stdout.on('data', (d) => {
      if (String(d).includes('ready')) {
        clearTimeout(t);
        resolve(p);
      }
    });
    p.on('exit', (code) => reject(new Error(`forwarder exited (${code})`)));
  });
}

export class Netem {
  /**
   * @param {import('./cluster.mjs').Info} info
   * @param {() => Promise<number>} freePort
   * @param {(m: string) => void} log
   */
  constructor(info, freePort, log) {
    this.info = info;
    this.freePort = freePort;
    this.log = log;
    const id = process.pid % 100000;
    this.ns = `mboxchaos${id}`;
    this.vh = `mcx${id}a`;
    this.vn = `mcx${id}b`;
    const r = (process.pid >> 8) % 250;
    const s = (process.pid % 64) * 4;
    this.hostIp = `10.${200 + (r % 50)}.${s >> 0}.1`;
    this.nsIp = `10.${200 + (r % 50)}.${s >> 0}.2`;
    /** @type {import('node:child_process').ChildProcess[]} */
    this.procs = [];
    this.mode = '';
    this.conf = '';
    this.made = false;
  }

  /** Builds the path and restarts logicd-2 on it. Throws with the reason it cannot. */
  async setup() {
    if (process.getuid?.() !== 0) throw new Error('not root (ip netns needs it)');
    const own = path.join(this.info.dir, 'logicd-2.conf');
    const text = readFileSync(own, 'utf8');
    /** @type {Map<number, number>} */
    const ports = new Map();
    const rewritten = text.replace(/^(pg_conninfo|pg_shards)\b.*$/gm, (line) => line);
    for (const line of rewritten.split('\n')) {
      if (!/^(pg_conninfo|pg_shards)\b/.test(line)) continue;
      for (const m of line.matchAll(/127\.0\.0\.1:(\d+)/g)) ports.set(Number(m[1]), 0);
    }
    if (!ports.size) throw new Error('no 127.0.0.1:PORT in logicd-2.conf pg_conninfo/pg_shards');
    run('ip', ['netns', 'add', this.ns]);
    this.made = true;
    run('ip', ['link', 'add', this.vh, 'type', 'veth', 'peer', 'name', this.vn]);
    run('ip', ['link', 'set', this.vn, 'netns', this.ns]);
    run('ip', ['addr', 'add', `${this.hostIp}/30`, 'dev', this.vh]);
    run('ip', ['link', 'set', this.vh, 'up']);
    run('ip', ['netns', 'exec', this.ns, 'ip', 'addr', 'add', `${this.nsIp}/30`, 'dev', this.vn]);
    run('ip', ['netns', 'exec', this.ns, 'ip', 'link', 'set', this.vn, 'up']);
    run('ip', ['netns', 'exec', this.ns, 'ip', 'link', 'set', 'lo', 'up']);
    const outer = [];
    const inner = [];
    for (const p of ports.keys()) {
      const px = await this.freePort();
      const py = await this.freePort();
      ports.set(p, px);
      outer.push(`127.0.0.1:${px}=${this.nsIp}:${px}`, `${this.hostIp}:${py}=127.0.0.1:${p}`);
      inner.push(`${this.nsIp}:${px}=${this.hostIp}:${py}`);
    }
    this.outer = await startProxy(outer, null);
    this.procs.push(this.outer);
    this.procs.push(await startProxy(inner, this.ns));
    try {
      run('tc', ['qdisc', 'add', 'dev', this.vh, 'root', 'netem', 'delay', '1ms']);
      run('tc', ['qdisc', 'del', 'dev', this.vh, 'root']);
      this.mode = 'netem';
    } catch (e) {
      this.mode = 'proxy';
      this.why = String(/** @type {any} */ (e).stderr ?? e).trim().split('\n')[0];
    }
    // logicd-2 on the shaped path.
    this.conf = path.join(this.info.dir, 'logicd-2.chaos-netem.conf');
    const conf = text.replace(/^(pg_conninfo|pg_shards)\b.*$/gm, (line) =>
      line.replace(/127\.0\.0\.1:(\d+)/g, (_, p) => `127.0.0.1:${ports.get(Number(p))}`));
    writeFileSync(this.conf, conf, { mode: 0o600 });
    await this.restartLogicd(this.conf);
    return this.mode === 'netem'
      ? `namespace ${this.ns}, veth ${this.vh}/${this.vn}, tc netem on both ends`
      : `namespace ${this.ns}, veth ${this.vh}/${this.vn}; tc netem unavailable (${this.why}): the forwarder delays and stalls instead`;
  }

  /** Restarts logicd-2 (and its supervisor) with CONF and waits for its /healthz. */
  async restartLogicd(/** @type {string} */ conf) {
    const r = await ctl(['replace-logicd', '2', conf], 60000);
    if (r.code !== 0) throw new Error(`logicd-2 not restarted: ${r.err.trim()}`);
    if (!(await until(() => healthy200(`${this.info.internal['logicd-2']}/healthz`), 30000, 100))) {
      throw new Error('logicd-2 not healthy on the shaped path');
    }
  }

  /** The fault on; says what it did. */
  async slow() {
    if (this.mode === 'netem') {
      const a = ['delay', '40ms', '10ms', 'loss', '3%'];
      run('tc', ['qdisc', 'add', 'dev', this.vh, 'root', 'netem', ...a]);
      run('ip', ['netns', 'exec', this.ns, 'tc', 'qdisc', 'add', 'dev', this.vn, 'root', 'netem', ...a]);
      return 'netem delay 40ms±10ms loss 3% each way on both veth ends';
    }
    if (this.outer?.pid) signal(this.outer.pid, 'SIGUSR1');
    return 'forwarder: +150 ms per chunk each way, 3% of chunks +200 ms (no sch_netem in this kernel)';
  }

  /** The fault off. */
  async fast() {
    if (this.mode === 'netem') {
      try { run('tc', ['qdisc', 'del', 'dev', this.vh, 'root']); } catch { /* gone */ }
      try { run('ip', ['netns', 'exec', this.ns, 'tc', 'qdisc', 'del', 'dev', this.vn, 'root']); } catch { /* gone */ }
    } else if (this.outer?.pid) signal(this.outer.pid, 'SIGUSR2');
    await sleep(0);
  }

  /** Removes everything; with RESTORE, logicd-2 goes back to its own config first. */
  async teardown(restore = false) {
    if (restore && this.conf) {
      try {
        await this.restartLogicd(path.join(this.info.dir, 'logicd-2.conf'));
      } catch (e) {
        this.log(`netem teardown: ${/** @type {Error} */ (e).message}`);
      }
    }
    for (const p of this.procs) if (p.pid) signal(p.pid, 'SIGTERM');
    if (this.made) {
      try { run('ip', ['link', 'del', this.vh]); } catch { /* gone with the namespace */ }
      try { run('ip', ['netns', 'del', this.ns]); } catch { /* already gone */ }
    }
  }
}
