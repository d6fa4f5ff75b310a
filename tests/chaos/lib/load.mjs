// @ts-check
// The load the faults happen under, and its record:
//
//   * senders: each send has a unique msgkey and is retried with that
//     msgkey until acknowledged. "hap" senders go through haproxy's internal
//     front; "direct" senders alternate between logicd-1 and logicd-2 from
//     one attempt to the next (a retry lands on the other node: the msgkey
//     must still make one message). Every eighth send has two recipients.
//   * syncers: one client per user and SDK route (logicd-1, logicd-2 and
//     haproxy), following its own cursor with a small limit.
//   * WebSocket clients (the `ws` package): log in on haproxy's WebSocket
//     front or on one lcsd directly, sync at every login and on every
//     notify (one sync in flight, one more queued), reconnect with back-off
//     and jitter, ping every 20 s.
//
// Every item a client receives is kept with its arrival time; the checker
// (checker.mjs) judges them.
import WebSocket from 'ws';
import { recorded, ok2xx, sleep, now } from './http.mjs';

/**
 * @typedef {{ kind: string, msg_id: string, msgkey: string, notice_id: string, version: number, t: number }} Got
 * @typedef {{ name: string, uid: string, via: string, cursor: string, items: Got[], resets: { t: number, cursor: string }[],
 *   syncs: number, complete: boolean, ws: boolean }} Stream
 * @typedef {{ key: string, uids: string[], start: number, attempts: number, ack?: number,
 *   ids: Record<string, string>, duplicate: Record<string, boolean>, abandoned?: boolean }} Send
 */

/** @returns {Stream} */
export function newStream(/** @type {string} */ name, /** @type {string} */ uid, /** @type {string} */ via, ws = false) {
  return { name, uid, via, cursor: '', items: [], resets: [], syncs: 0, complete: false, ws };
}

export class Load {
  /**
   * @param {{ sdk: Record<string, string>, internal: Record<string, string>, ws: Record<string, string>,
   *   serverKey: string, users: string[], wsUsers: string[], run: string, limit: number,
   *   hapSenders: number, directSenders: number, sendPauseMs: number, syncPauseMs: number,
   *   wsReconnectEveryMs?: number, tokenTtl?: number }} o
   */
  constructor(o) {
    this.o = o;
    /** @type {Record<string, string>} */
    this.tokens = {};
    /** @type {Send[]} */
    this.sends = [];
    /** @type {Stream[]} */
    this.streams = [];
    /** @type {WsClient[]} */
    this.wsClients = [];
    this.stopping = false;
    this.stopAt = 0;
    /** @type {Promise<void>[]} */
    this.loops = [];
    this.sendSeq = 0;
  }

  /** Mints every user's token (retried). */
  async tokensFor(/** @type {string[]} */ uids) {
    for (const uid of uids) {
      for (let i = 0; ; i++) {
        const r = await recorded('token', 'hap', 'POST', `${this.o.internal.hap}/v1/tokens`, this.o.serverKey, {
          app_id: '1', uid, ttl_s: this.o.tokenTtl ?? 7200,
        });
        if (ok2xx(r) && r.body?.token) {
          this.tokens[uid] = r.body.token;
          break;
        }
        if (i > 100) throw new Error(`no token for ${uid}: ${r.status} ${r.err ?? r.text}`);
        await sleep(100);
      }
    }
  }

  /** Starts every loop. */
  async start() {
    await this.tokensFor(this.o.users);
    for (let i = 0; i < this.o.hapSenders; i++) this.loops.push(this.sender(`hs${i}`, ['hap']));
    for (let i = 0; i < this.o.directSenders; i++) {
      const vias = Object.keys(this.o.internal).filter((v) => v !== 'hap');
      if (i % 2) vias.reverse();
      this.loops.push(this.sender(`ds${i}`, vias));
    }
    for (const via of Object.keys(this.o.sdk)) this.loops.push(this.syncer(via));
    let k = 0;
    const wsVias = Object.keys(this.o.ws);
    for (const uid of this.o.wsUsers) {
      // Two clients per user: one through haproxy, one on an lcsd directly.
      for (const via of ['hap', wsVias.filter((v) => v !== 'hap')[k++ % (wsVias.length - 1)]]) {
        const c = new WsClient(this, uid, via, `ws-${uid}-${via}`);
        this.wsClients.push(c);
        this.streams.push(c.stream);
        c.start();
      }
    }
  }

  /** Stops senders and syncers (a send in hand is finished, bounded by drainMs). */
  async stop(drainMs = 30000) {
    this.stopping = true;
    this.stopAt = now();
    this.drainMs = drainMs;
    await Promise.all(this.loops);
  }

  /** One sender: sends until stopped, each send retried until acknowledged. */
  async sender(/** @type {string} */ name, /** @type {string[]} */ vias) {
    const users = this.o.users;
    for (let n = 0; !this.stopping; n++) {
      const i = this.sendSeq++;
      const uids = [users[i % users.length]];
      if (i % 8 === 7) uids.push(users[(i * 7 + 3) % users.length]);
      if (uids.length === 2 && uids[0] === uids[1]) uids.pop();
      /** @type {Send} */
      const rec = { key: `${this.o.run}-${name}-${n}`, uids, start: now(), attempts: 0, ids: {}, duplicate: {} };
      this.sends.push(rec);
      const body = { app_id: '1', from_uid: '7', to_uids: uids, msgkey: rec.key, content: rec.key };
      for (;;) {
        const via = vias[rec.attempts % vias.length];
        rec.attempts++;
        const r = await recorded('send', via, 'POST', `${this.o.internal[via]}/v1/messages`, this.o.serverKey, body);
        const results = ok2xx(r) ? r.body?.results : null;
        if (Array.isArray(results) && results.length === uids.length && results.every((x) => x.msg_id)) {
          rec.ack = now();
          for (const x of results) {
            rec.ids[String(x.uid)] = String(x.msg_id);
            rec.duplicate[String(x.uid)] = !!x.duplicate;
          }
          break;
        }
        if (this.stopping && now() - this.stopAt > (this.drainMs ?? 30000)) {
          rec.abandoned = true;
          break;
        }
        await sleep(50);
      }
      await sleep(this.o.sendPauseMs);
    }
  }

  /**
   * One page of S through the SDK route VIA; the reply body or null.
   * @param {Stream} s
   * @param {string} kind
   * @param {number} limit
   */
  async page(s, kind, limit) {
    const r = await recorded(kind, s.via, 'POST', `${this.o.sdk[s.via]}/v1/sync`, this.tokens[s.uid], {
      cursor: s.cursor, limit,
    });
    if (!ok2xx(r) || !r.body || typeof r.body.cursor !== 'string') return null;
    const t = now();
    s.syncs++;
    if (r.body.reset) s.resets.push({ t, cursor: s.cursor });
    for (const it of r.body.items ?? []) {
      s.items.push({
        kind: it.kind, msg_id: String(it.msg_id ?? ''), msgkey: it.msgkey ?? '', notice_id: String(it.notice_id ?? ''),
        version: Number(it.version ?? 0), t,
      });
    }
    s.cursor = r.body.cursor;
    return r.body;
  }

  /** One client per user through VIA, round after round over the users. */
  async syncer(/** @type {string} */ via) {
    /** @type {Stream[]} */
    const mine = this.o.users.map((uid) => newStream(`${via}-${uid}`, uid, via));
    this.streams.push(...mine);
    while (!this.stopping) {
      for (const s of mine) {
        if (this.stopping) break;
        for (let p = 0; p < 4; p++) {
          const b = await this.page(s, 'sync', this.o.limit);
          if (!b) {
            await sleep(50);
            break;
          }
          if (!b.has_more) break;
        }
      }
      await sleep(this.o.syncPauseMs);
    }
  }

  /** Follows S to its end (has_more false), retrying until DEADLINE; true when it got there. */
  async drain(/** @type {Stream} */ s, /** @type {number} */ deadline, limit = 100) {
    for (;;) {
      const b = await this.page(s, 'final', limit);
      if (b && !b.has_more) return true;
      if (!b) {
        if (now() > deadline) return false;
        await sleep(100);
      }
    }
  }
}

/** A WebSocket client of one user: sync at login and on every notify. */
export class WsClient {
  /**
   * @param {Load} load
   * @param {string} uid
   * @param {string} via  a key of load.o.ws
   * @param {string} name
   */
  constructor(load, uid, via, name) {
    this.load = load;
    this.uid = uid;
    this.via = via;
    this.name = name;
    // Pulls go through haproxy's SDK front, as an app's would.
    this.stream = newStream(name, uid, 'hap', true);
    /** login_ack ok .. close, one entry per session @type {{ on: number, off: number }[]} */
    this.sessions = [];
    /** @type {{ t: number, msg_id: string }[]} */
    this.notifies = [];
    this.connects = 0;
    this.closed = false;
    /** @type {WebSocket | null} */
    this.sock = null;
    this.syncing = false;
    this.again = false;
    this.backoff = 100;
    this.device = `chaos-${name}`;
  }

  start() {
    this.connect();
  }

  connect() {
    if (this.closed) return;
    const ws = new WebSocket(this.load.o.ws[this.via], { handshakeTimeout: 5000 });
    this.sock = ws;
    /** @type {NodeJS.Timeout | undefined} */
    let ping;
    let on = 0;
    ws.on('open', () => {
      ws.send(JSON.stringify({ type: 'login', token: this.load.tokens[this.uid], device_id: this.device }));
    });
    ws.on('message', (data) => {
      let f;
      try {
        f = JSON.parse(String(data));
      } catch {
        return;
      }
      if (f.type === 'login_ack' && f.ok) {
        on = now();
        this.connects++;
        this.backoff = 100;
        this.sessions.push({ on, off: 0 });
        ping = setInterval(() => ws.readyState === WebSocket.OPEN && ws.send('{"type":"ping"}'), 20000);
        this.sync();
      } else if (f.type === 'notify') {
        this.notifies.push({ t: now(), msg_id: String(f.msg_id) });
        this.sync();
      }
    });
    const down = () => {
      if (ping) clearInterval(ping);
      ping = undefined;
      if (on) {
        this.sessions[this.sessions.length - 1].off = now();
        on = 0;
      }
      if (this.sock === ws) this.sock = null;
      if (this.closed) return;
      const wait = this.backoff + Math.random() * this.backoff;
      this.backoff = Math.min(this.backoff * 2, 2000);
      setTimeout(() => this.connect(), wait);
    };
    ws.on('close', down);
    ws.on('error', () => {
      /* close follows */
    });
  }

  /** Drops the connection (the client reconnects by itself). */
  bounce() {
    this.sock?.terminate();
  }

  /** Pulls all pages; coalesced with a pull in flight, which then runs once more. */
  async sync() {
    if (this.syncing) {
      this.again = true;
      return;
    }
    this.syncing = true;
    try {
      do {
        this.again = false;
        for (;;) {
          const b = await this.load.page(this.stream, 'ws-sync', 10);
          if (!b) {
            // A failed pull is retried: the notify that asked for it is gone.
            await sleep(200);
            if (this.closed) return;
            continue;
          }
          if (!b.has_more) break;
        }
      } while (this.again && !this.closed);
    } finally {
      this.syncing = false;
    }
  }

  /** Closes for good. */
  stop() {
    this.closed = true;
    this.sock?.close();
    const last = this.sessions[this.sessions.length - 1];
    if (last && !last.off) last.off = now();
  }
}
