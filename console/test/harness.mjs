// The real stack for the console's tests: a private PostgreSQL and Redis
// started through ops/servers (as tests/support/harness.c does), the
// migrations, then logicd from the build directory (MBOX_BUILD_ROOT,
// default <repo>/build) on free loopback ports, with a config written the
// way the C harness writes it, plus two operators (a publisher and an
// editor), the checkout's console/www and a 1 s reach sampler. stop()
// (also run at process exit and on SIGINT/SIGTERM) stops everything it
// started, by pid.
import { spawn } from 'node:child_process';
import { mkdtempSync, writeFileSync, chmodSync, openSync, closeSync, readFileSync, rmSync } from 'node:fs';
import path from 'node:path';

export { REPO, sleep, freePort, waitFor } from '../../tests/js/util.mjs';
import { REPO, BUILD, sleep, hex, freePort, waitFor, servers, live } from '../../tests/js/util.mjs';

/** Starts PostgreSQL, Redis and logicd; returns the stack. */
export async function startStack() {
  const dir = mkdtempSync('/tmp/mbox-console-');
  chmodSync(dir, 0o755); // the postgres user must reach its data directory
  const st = new Stack(dir);
  live.add(st);
  try {
    await st.boot();
  } catch (e) {
    await st.stop();
    throw e;
  }
  return st;
}

class Stack {
  constructor(dir) {
    this.dir = dir;
    this.serverKey = hex(16);
    this.publisherToken = hex(16);
    this.editorToken = hex(16);
    this.otherPublisherToken = hex(16); // a second publisher, for concurrent edits
    this.tokenKey = hex(16);
    this.pgPassword = hex(16);
    this.child = null;
  }

  async boot() {
    this.redisPort = await freePort();
    this.sdkPort = await freePort();
    this.internalPort = await freePort();
    for (let i = 0; i < 4 && !this.pgStarted; i++) {
      this.pgPort = await freePort();
      this.pgStarted = servers('pg-start', this.dir, this.pgPort, this.pgPassword, 'fsync=off', 'full_page_writes=off');
    }
    if (!this.pgStarted) throw new Error('PostgreSQL did not start');
    this.redisStarted = servers('redis-start', this.dir, this.redisPort);
    if (!this.redisStarted) throw new Error('Redis did not start');
    const conninfo = `host=127.0.0.1 port=${this.pgPort} dbname=mbox user=mbox password=${this.pgPassword}`;
    const logicd = path.join(BUILD, 'services/logic/logicd');
    const config = path.join(this.dir, 'logicd.conf');
    this.log = path.join(this.dir, 'logicd.log');
    writeFileSync(config, [
      `sdk_listen = 127.0.0.1:${this.sdkPort}`, `internal_listen = 127.0.0.1:${this.internalPort}`,
      `pg_conninfo = "${conninfo}"`, `redis_port = ${this.redisPort}`, `server_key = ${this.serverKey}`,
      `ops_tokens = alice:${this.publisherToken},bob:${this.editorToken}:editor,carol:${this.otherPublisherToken}`, `token_key = ${this.tokenKey}`,
      `migrations_dir = ${path.join(REPO, 'migrations')}`, `console_dir = ${path.join(REPO, 'console/www')}`,
      'reach_sample_interval_s = 1', 'poll_interval_ms = 200', 'log_level = debug', '',
    ].join('\n'));
    const fd = openSync(this.log, 'a');
    this.child = spawn(logicd, ['--migrate', '-c', config], { stdio: ['ignore', fd, fd] });
    closeSync(fd);
    let exited = false;
    this.child.once('exit', () => { exited = true; });
    this.url = `http://127.0.0.1:${this.internalPort}`;
    this.sdkUrl = `http://127.0.0.1:${this.sdkPort}`;
    this.consoleUrl = `${this.url}/console/`;
    await waitFor(async () => {
      if (exited) throw new Error(`logicd exited at start:\n${readFileSync(this.log, 'utf8').slice(-2000)}`);
      try { return (await fetch(`${this.url}/healthz`)).status === 200; } catch { return false; }
    }, 20000, 'logicd healthy');
  }

  /** An internal API call; returns {status, body}. */
  async api(method, p, body, key = this.publisherToken, headers = {}) {
    const r = await fetch(this.url + p, {
      method, headers: { Authorization: `Bearer ${key}`, ...headers }, body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    return { status: r.status, body: text ? JSON.parse(text) : undefined, etag: r.headers.get('ETag') };
  }

  async mintToken(uid, app = '1') {
    const r = await this.api('POST', '/v1/tokens', { app_id: String(app), uid: String(uid), ttl_s: 3600 }, this.serverKey);
    if (r.status !== 200) throw new Error(`token: ${r.status}`);
    return r.body.token;
  }

  /** The notice ids a user receives in a sync from scratch (as an iOS client of core level 220819). */
  async syncNotices(uid) {
    const tok = await this.mintToken(uid);
    const r = await fetch(`${this.sdkUrl}/v1/sync`, {
      method: 'POST', body: '{}',
      headers: { Authorization: `Bearer ${tok}`, 'Content-Type': 'application/json', platform: 'ios', core_level: '220819' },
    });
    if (r.status !== 200) throw new Error(`sync: ${r.status} ${await r.text()}`);
    const b = await r.json();
    return b.items.filter((i) => i.kind === 'notice').map((i) => i.notice_id);
  }

  stopSync() {
    if (this.child && this.child.exitCode === null && this.child.signalCode === null) {
      try { process.kill(this.child.pid, 'SIGKILL'); } catch { /* gone */ }
    }
    this.child = null;
    if (this.redisStarted) servers('redis-stop', this.dir);
    if (this.pgStarted) servers('pg-stop', this.dir);
    this.redisStarted = this.pgStarted = false;
    if (!process.env.MBOX_KEEP_TEST_DIR) rmSync(this.dir, { recursive: true, force: true });
    live.delete(this);
  }

  async stop() {
    const child = this.child;
    if (child && child.exitCode === null && child.signalCode === null) {
      const gone = new Promise((r) => child.once('exit', r));
      child.kill('SIGTERM');
      const t = setTimeout(() => child.kill('SIGKILL'), 5000);
      await gone;
      clearTimeout(t);
    }
    this.child = null;
    this.stopSync();
  }
}
