// @ts-check
// The operator: through haproxy's internal front, one action about every
// second: create a notice, change the whitelist, prepublish, edit
// (If-Match), publish, edit again, retract or stop, delete. At most three
// notices are live at a time. A request that fails is not retried blindly:
// the notice is read again and the next action follows its real state.
// What was done, and when, is kept for the checker: every whitelist change
// (re-deliveries after one are documented, docs/api.md 6.5), the uids ever
// on the whitelist, and each notice's publish and retract times.
import { recorded, ok2xx, sleep, now } from './http.mjs';

/**
 * @typedef {{ id: string, state: string, version: number, created: number,
 *   publishT0?: number, retractT1?: number, everPublished: boolean }} NoticeRec
 */

export class Operator {
  /**
   * @param {string} url  internal front
   * @param {string} token  ops token
   * @param {string[]} wlPool  uids that take turns on the whitelist
   * @param {number} pauseMs
   */
  constructor(url, token, wlPool, pauseMs) {
    this.url = url;
    this.token = token;
    this.wlPool = wlPool;
    this.pauseMs = pauseMs;
    /** @type {Map<string, NoticeRec>} */
    this.notices = new Map();
    /** @type {{ t0: number, t1: number, ok: boolean }[]} */
    this.wlChanges = [];
    /** @type {Set<string>} */
    this.everWhitelisted = new Set();
    this.stopping = false;
    this.actions = 0;
    this.failures = 0;
    this.step = 0;
    /** @type {Promise<void> | null} */
    this.loop = null;
  }

  /**
   * @param {string} method
   * @param {string} p
   * @param {unknown} [body]
   * @param {Record<string, string>} [headers]
   */
  async call(method, p, body, headers) {
    this.actions++;
    const r = await recorded('operator', 'hap', method, `${this.url}${p}`, this.token, body, headers);
    if (!ok2xx(r)) this.failures++;
    return r;
  }

  /** Reads notice ID again into its record (after a failed or unknown outcome). */
  async refresh(/** @type {NoticeRec} */ n) {
    const r = await this.call('GET', `/v1/notices/${n.id}`);
    if (r.status === 404) n.state = 'gone';
    else if (ok2xx(r) && r.body) {
      n.state = r.body.state;
      n.version = Number(r.body.version);
      if (n.state === 'published' || n.state === 'stopped' || n.state === 'retracted') n.everPublished = true;
    }
  }

  /** A whitelist change: PUT a rotating pair of the pool, or add/remove one. */
  async whitelist() {
    const k = this.step++;
    const pool = this.wlPool;
    const pick = [pool[k % pool.length], pool[(k + 1) % pool.length]];
    const t0 = now();
    // Counted as "ever on the whitelist" before the call: it may commit
    // although the answer is lost.
    let r;
    if (k % 3 === 0) {
      pick.forEach((u) => this.everWhitelisted.add(u));
      r = await this.call('PUT', '/v1/whitelist', { app_id: '1', uids: pick });
    } else if (k % 3 === 1) {
      this.everWhitelisted.add(pick[0]);
      r = await this.call('POST', '/v1/whitelist', { app_id: '1', uids: [pick[0]] });
    } else {
      r = await this.call('DELETE', '/v1/whitelist', { app_id: '1', uids: [pick[1]] });
    }
    this.wlChanges.push({ t0, t1: now(), ok: ok2xx(r) });
  }

  /** One action on notice N according to its state. */
  async advance(/** @type {NoticeRec} */ n) {
    const ifm = { 'if-match': `"${n.version}"` };
    /** @type {import('./http.mjs').Reply | null} */
    let r = null;
    switch (n.state) {
      case 'draft':
        r = await this.call('POST', `/v1/notices/${n.id}/prepublish`, undefined, ifm);
        break;
      case 'prepublished':
        if (n.version < 2) {
          r = await this.call('PATCH', `/v1/notices/${n.id}`, { content: `gray edit of ${n.id}` }, ifm);
        } else {
          n.publishT0 ??= now();
          r = await this.call('POST', `/v1/notices/${n.id}/publish`, undefined, ifm);
        }
        break;
      case 'published':
        if (n.version < 3) {
          r = await this.call('PATCH', `/v1/notices/${n.id}`, { content: `live edit of ${n.id}` }, ifm);
        } else if (Number(n.id) % 3 === 0) {
          r = await this.call('POST', `/v1/notices/${n.id}/stop`, undefined, ifm);
        } else {
          r = await this.call('POST', `/v1/notices/${n.id}/retract`, undefined, ifm);
          if (ok2xx(r)) n.retractT1 = now();
        }
        break;
      case 'stopped':
      case 'retracted':
        r = await this.call('DELETE', `/v1/notices/${n.id}`, undefined, ifm);
        if (r.status === 204) n.state = 'gone';
        break;
      default:
        return;
    }
    if (r && ok2xx(r) && r.body?.state) {
      n.state = r.body.state;
      n.version = Number(r.body.version);
      if (n.state === 'published') n.everPublished = true;
    } else if (r && r.status !== 204) {
      await this.refresh(n);
      if (n.state === 'retracted' && !n.retractT1) n.retractT1 = now();
    }
  }

  async run() {
    let i = 0;
    while (!this.stopping) {
      const live = [...this.notices.values()].filter((n) => n.state !== 'gone');
      if (i % 5 === 0 && live.length < 3) {
        const r = await this.call('POST', '/v1/notices', {
          app_id: '1', title: `chaos ${i}`, content: `notice made at ${now()}`,
        });
        if (ok2xx(r) && r.body?.notice_id) {
          const id = String(r.body.notice_id);
          this.notices.set(id, { id, state: 'draft', version: Number(r.body.version), created: now(), everPublished: false });
        }
      } else if (i % 5 === 2) {
        await this.whitelist();
      } else if (live.length) {
        await this.advance(live[i % live.length]);
      }
      i++;
      await sleep(this.pauseMs);
    }
  }

  start() {
    this.loop = this.run();
  }

  async stop() {
    this.stopping = true;
    await this.loop;
  }
}
