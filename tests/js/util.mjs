// Shared by the JavaScript test harnesses (sdk/js/test, console/test): the
// repository and build locations, free loopback ports, polling, the
// ops/servers commands that start and stop PostgreSQL and Redis (as
// tests/support/harness.c does), and the process-exit cleanup of every
// stack a harness registers. Node's standard library only.
import { spawnSync } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../..');
export const BUILD = process.env.MBOX_BUILD_ROOT
  ? path.resolve(process.env.MBOX_BUILD_ROOT)
  : path.join(REPO, 'build');
const SERVERS = path.join(REPO, 'ops/servers');

export const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** n random bytes as hex (secrets of a test stack). */
export const hex = (n) => randomBytes(n).toString('hex');

/** Lowest port of the kernel's ephemeral range. */
function ephemeralLow() {
  try {
    const low = Number(readFileSync('/proc/sys/net/ipv4/ip_local_port_range', 'utf8').split(/\s+/)[0]);
    return low > 21024 ? low : 32768;
  } catch {
    return 32768;
  }
}

/** Resolves true when port can be bound on loopback right now. */
function canBind(port) {
  return new Promise((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(false));
    s.listen(port, '127.0.0.1', () => s.close(() => resolve(true)));
  });
}

/**
 * A loopback port nobody listens on right now, drawn below the ephemeral
 * range: a port the kernel hands out for port 0 can be taken again, before
 * the server binds it, by the local end of any outgoing connection.
 */
export async function freePort() {
  const low = ephemeralLow();
  for (let k = 0; k < 200; k++) {
    const port = 20000 + Math.floor(Math.random() * (low - 20000));
    if (await canBind(port)) return port;
  }
  throw new Error('no free port below the ephemeral range');
}

/** Polls fn until it returns a truthy value or timeoutMs passes (then throws what). */
export async function waitFor(fn, timeoutMs, what) {
  const end = Date.now() + timeoutMs;
  for (;;) {
    const v = await fn();
    if (v) return v;
    if (Date.now() > end) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`);
    await sleep(25);
  }
}

/** Runs `ops/servers ARGS...` (pg-start, redis-stop, ...); true when it succeeded. */
export function servers(...args) {
  return spawnSync(SERVERS, args.map(String), { stdio: ['ignore', 'inherit', 'inherit'] }).status === 0;
}

/** Stacks still running; each has stopSync(). Stopped at exit and on SIGINT/SIGTERM. */
export const live = new Set();
function cleanupAll() {
  for (const s of live) s.stopSync();
}
process.on('exit', cleanupAll);
for (const sig of ['SIGINT', 'SIGTERM']) {
  process.on(sig, () => {
    cleanupAll();
    process.exit(130);
  });
}
