// The real stack for the node tests: a private PostgreSQL and Redis started
// through ops/servers (as tests/support/harness.c does), migrations, then
// logicd and lcsd from the build directory (MBOX_BUILD_ROOT, default
// <repo>/build) on free loopback ports, with configs written the way the C
// harness writes them. stop() (also run at process exit, and on SIGINT/
// SIGTERM) stops everything it started, by pid.
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, writeFileSync, chmodSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';

export { REPO, sleep, freePort, waitFor } from '../../../tests/js/util.mjs';
import { REPO, BUILD, sleep, hex, freePort, waitFor, servers, live } from '../../../tests/js/util.mjs';

class Daemon {
  constructor(name, prog, config, log, healthPort) {
    Object.assign(this, { name, prog, config, log, healthPort, child: null });
  }

  async start() {
    const fd = openSync(this.log, 'a');
    this.child = spawn(this.prog, ['-c', this.config], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    const child = this.child;
    let exited = false;
    child.once('exit', () => { exited = true; });
    await waitFor(async () => {
      if (exited) throw new Error(`${this.name} exited at start; log ${this.log}:\n${readFileSync(this.log, 'utf8').slice(-2000)}`);
      try {
        const r = await fetch(`http://127.0.0.1:${this.healthPort}/healthz`);
        return r.status === 200;
      } catch {
        return false;
      }
    }, 20000, `${this.name} healthy`);
  }

  /** SIGTERM (or SIGKILL) and wait for the exit. */
  async stop(signal = 'SIGTERM') {
    const child = this.child;
    if (!child || child.exitCode !== null || child.signalCode !== null) { this.child = null; return; }
    const gone = new Promise((r) => child.once('exit', r));
    child.kill(signal);
    const t = setTimeout(() => child.kill('SIGKILL'), 5000);
    await gone;
    clearTimeout(t);
    this.child = null;
  }

  stopSync() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      try { process.kill(this.child.pid, 'SIGKILL'); } catch { /* gone */ }
    }
    this.child = null;
  }
}

/**
 * Starts PostgreSQL, Redis, logicd and lcsd. opts.logicdConfig / opts.lcsdConfig
 * are extra config lines (e.g. "cors_allow_origins = http://127.0.0.1:1234").
 */
export async function startStack(opts = {}) {
  const dir = mkdtempSync('/tmp/mbox-js-');
  chmodSync(dir, 0o755); // the postgres user must reach its data directory
  const s = {
    dir,
    serverKey: hex(16),
    opsToken: hex(16),
    tokenKey: hex(16),
    pgPassword: hex(16),
    redisPort: await freePort(),
    sdkPort: await freePort(),
    internalPort: await freePort(),
    wsPort: await freePort(),
    adminPort: await freePort(),
    pgStarted: false,
    redisStarted: false,
  };
  const stack = new Stack(s, opts);
  live.add(stack);
  try {
    await stack.boot();
  } catch (e) {
    await stack.stop();
    throw e;
  }
  return stack;
}

class Stack {
  constructor(s, opts) {
    Object.assign(this, s);
    this.opts = opts;
    this.sdkUrl = `http://127.0.0.1:${this.sdkPort}`;
    this.internalUrl = `http://127.0.0.1:${this.internalPort}`;
    this.wsUrl = `ws://127.0.0.1:${this.wsPort}/ws`;
  }

  async boot() {
    for (let i = 0; i < 4 && !this.pgStarted; i++) {
      if (i) this.pgPort = await freePort();
      this.pgPort ??= await freePort();
      this.pgStarted = servers('pg-start', this.dir, this.pgPort, this.pgPassword, 'fsync=off', 'full_page_writes=off');
    }
    if (!this.pgStarted) throw new Error('PostgreSQL did not start');
    this.redisStarted = servers('redis-start', this.dir, this.redisPort);
    if (!this.redisStarted) throw new Error('Redis did not start');
    this.conninfo = `host=127.0.0.1 port=${this.pgPort} dbname=mbox user=mbox password=${this.pgPassword}`;
    const logicd = path.join(BUILD, 'services/logic/logicd');
    const mig = spawnSync(logicd, ['--migrate-only'], {
      env: { ...process.env, LOGICD_PG_CONNINFO: this.conninfo, LOGICD_SERVER_KEY: 'x', LOGICD_TOKEN_KEY: 'x',
        LOGICD_MIGRATIONS_DIR: path.join(REPO, 'migrations') },
      encoding: 'utf8',
    });
    if (mig.status !== 0) throw new Error(`migrations failed: ${mig.stderr}`);
    this.logicd = new Daemon('logicd', logicd, path.join(this.dir, 'logicd.conf'), path.join(this.dir, 'logicd.log'),
      this.internalPort);
    this.lcsd = new Daemon('lcsd', path.join(BUILD, 'services/lcs/lcsd'), path.join(this.dir, 'lcsd.conf'),
      path.join(this.dir, 'lcsd.log'), this.adminPort);
    this.writeLogicdConfig('');
    writeFileSync(this.lcsd.config, [
      `ws_listen = 127.0.0.1:${this.wsPort}`, `admin_listen = 127.0.0.1:${this.adminPort}`,
      `redis_port = ${this.redisPort}`, `token_key = ${this.tokenKey}`, 'node_id = lcs0', 'log_level = debug',
      this.opts.lcsdConfig ?? '', '',
    ].join('\n'));
    await this.logicd.start();
    await this.lcsd.start();
  }

  writeLogicdConfig(extra) {
    writeFileSync(this.logicd.config, [
      `sdk_listen = 127.0.0.1:${this.sdkPort}`, `internal_listen = 127.0.0.1:${this.internalPort}`,
      `pg_conninfo = "${this.conninfo}"`, `redis_port = ${this.redisPort}`, `server_key = ${this.serverKey}`,
      `ops_tokens = tester:${this.opsToken}`, `token_key = ${this.tokenKey}`,
      `migrations_dir = ${path.join(REPO, 'migrations')}`, 'poll_interval_ms = 200', 'log_level = debug',
      this.opts.logicdConfig ?? '', extra, '',
    ].join('\n'));
  }

  /** Restarts logicd with extra config lines (e.g. "epoch = 2" to reset every client). */
  async restartLogicd(extra = '') {
    await this.logicd.stop();
    this.writeLogicdConfig(extra);
    await this.logicd.start();
  }

  async stopLcsd(signal = 'SIGTERM') { await this.lcsd.stop(signal); }
  async startLcsd() { await this.lcsd.start(); }

  /**
   * One internal API call, as a business server makes it: a 503 (a worker
   * whose pools are still connecting after a restart) is retried after its
   * Retry-After, for a few seconds.
   */
  async internal(method, p, body, key = this.serverKey) {
    for (let attempt = 0; ; attempt++) {
      const r = await fetch(this.internalUrl + p, {
        method, headers: { Authorization: `Bearer ${key}` }, body: body === undefined ? undefined : JSON.stringify(body),
      });
      const text = await r.text();
      if (r.status === 503 && attempt < 30) {
        await new Promise((res) => setTimeout(res, 200));
        continue;
      }
      if (r.status >= 300) throw new Error(`${method} ${p}: ${r.status} ${text}`);
      return text ? JSON.parse(text) : undefined;
    }
  }

  async mintToken(uid, { app = '1', ttl_s = 3600 } = {}) {
    return (await this.internal('POST', '/v1/tokens', { app_id: String(app), uid: String(uid), ttl_s })).token;
  }

  /** Sends one message; returns its msg_id in the first recipient's mailbox. */
  async send(toUids, content, extra = {}) {
    const r = await this.internal('POST', '/v1/messages', {
      app_id: '1', from_uid: '7', to_uids: toUids.map(String), content, ...extra,
    });
    return r.results[0].msg_id;
  }

  async recall(uid, msgId) {
    return this.internal('POST', '/v1/messages/recall', { app_id: '1', uid: String(uid), msg_id: String(msgId) });
  }

  /** Creates and publishes a notice (paced notify, so connected clients are told); returns it. */
  async publishNotice(title, content, extra = {}) {
    const n = await this.internal('POST', '/v1/notices', {
      app_id: '1', title, content, notify: { mode: 'paced', rate_per_s: 1000 }, ...extra,
    }, this.opsToken);
    return this.internal('POST', `/v1/notices/${n.notice_id}/publish`, undefined, this.opsToken);
  }

  async noticeAction(id, action) {
    return this.internal('POST', `/v1/notices/${id}/${action}`, undefined, this.opsToken);
  }

  stopSync() {
    this.lcsd?.stopSync();
    this.logicd?.stopSync();
    if (this.redisStarted) servers('redis-stop', this.dir);
    if (this.pgStarted) servers('pg-stop', this.dir);
    this.redisStarted = this.pgStarted = false;
    if (!process.env.MBOX_KEEP_TEST_DIR) rmSync(this.dir, { recursive: true, force: true });
    live.delete(this);
  }

  async stop() {
    await this.lcsd?.stop();
    await this.logicd?.stop();
    this.stopSync();
  }
}
