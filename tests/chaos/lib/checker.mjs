// @ts-check
// The judge: run over everything recorded once the load has stopped and
// every stream was followed to its end.
//
//   * every acknowledged message is in each of its user's cursor streams
//     (syncers and WebSocket clients) exactly once, with the acknowledged
//     msg_id (lost / duplicated);
//   * private items ascend strictly by msg_id in every stream, and a
//     message acknowledged before another was sent to the same mailbox has
//     the smaller msg_id (out of order);
//   * no msgkey made two messages: each key once in a fresh sync from "";
//   * the fresh syncs from "" (through each logicd) hold the same messages,
//     in the same order, as every live stream of that user;
//   * no reset (the epoch never changes here);
//   * a (notice_id, version) reaches a stream at most once, unless a
//     whitelist change happened in between (documented re-delivery,
//     docs/api.md 6.5); a user never whitelisted gets no notice before its
//     publish; every stream that held a notice later retracted receives the
//     retract item;
//   * a WebSocket client connected through the 5 s after a message's
//     acknowledgement holds the message, or a notify naming it or a later
//     msg_id, by then. Late ones inside a fault window (from the fault
//     until 5 s after the cluster was whole again) are counted apart:
//     notifies are at most once and the client's next sync covers them.
//
// Message problems are attributed to the window (before the first fault, or
// the fault whose window holds the send's start) in which the send started.

/**
 * @typedef {import('./load.mjs').Stream} Stream
 * @typedef {import('./load.mjs').Send} Send
 * @typedef {import('./faults.mjs').Injection} Injection
 * @typedef {{ acked: number, lost: number, duplicated: number, outOfOrder: number, examples: string[] }} Counts
 */

/** @returns {Counts} */
const counts = () => ({ acked: 0, lost: 0, duplicated: 0, outOfOrder: 0, examples: [] });
const ex = (/** @type {Counts | { examples: string[] }} */ c, /** @type {string} */ m) => {
  if (c.examples.length < 6) c.examples.push(m);
};
const PRIVATE = new Set(['message', 'recall']);

/**
 * @param {{ sends: Send[], streams: Stream[], fresh: Stream[], wsClients: import('./load.mjs').WsClient[],
 *   injections: Injection[], operator: import('./operator.mjs').Operator | null, users: string[], run: string,
 *   faultEnd: (i: Injection) => number }} h
 */
export function judge(h) {
  /** Window index of time T: -1 before the first fault. */
  const windowOf = (/** @type {number} */ t) => {
    let w = -1;
    h.injections.forEach((inj, i) => { if (inj.t <= t) w = i; });
    return w;
  };
  /** @type {Map<number, Counts>} */
  const byWindow = new Map();
  const win = (/** @type {number} */ t) => {
    const w = windowOf(t);
    if (!byWindow.has(w)) byWindow.set(w, counts());
    return /** @type {Counts} */ (byWindow.get(w));
  };
  const global = {
    resets: 0, freshDisagree: 0, keyTwice: 0, noticeRepeats: 0, noticeRepeatsExcused: 0, grayLeaks: 0,
    retractMissing: 0, retractHolders: 0, wsChecked: 0, wsLate: 0, wsLateInFault: 0, abandoned: 0,
    incomplete: 0, examples: /** @type {string[]} */ ([]),
  };

  // --- acknowledged messages, per user
  /** @type {Map<string, { key: string, id: string, send: Send }[]>} */
  const acked = new Map();
  for (const s of h.sends) {
    if (s.abandoned) global.abandoned++;
    if (!s.ack) continue;
    for (const uid of s.uids) {
      if (!acked.has(uid)) acked.set(uid, []);
      acked.get(uid)?.push({ key: s.key, id: s.ids[uid], send: s });
      win(s.start).acked++;
    }
  }
  const mine = (/** @type {string} */ k) => k.startsWith(`${h.run}-`);

  // --- every stream: loss, duplicates, wrong ids, order, resets
  /** @type {Map<string, Stream[]>} */
  const streamsOf = new Map();
  for (const s of [...h.streams, ...h.fresh]) {
    if (!streamsOf.has(s.uid)) streamsOf.set(s.uid, []);
    streamsOf.get(s.uid)?.push(s);
  }
  /** @type {Map<string, { lost: boolean, dup: boolean }>} */
  const judged = new Map();
  for (const s of [...h.streams, ...h.fresh]) {
    if (!s.complete) {
      global.incomplete++;
      ex(global, `${s.name}: not followed to its end (sync kept failing)`);
    }
    global.resets += s.resets.length;
    for (const r of s.resets) ex(global, `${s.name}: reset at cursor ${r.cursor}`);
    let last = -1n;
    /** @type {Map<string, string[]>} */
    const seen = new Map();
    for (const it of s.items) {
      if (!PRIVATE.has(it.kind)) continue;
      const id = BigInt(it.msg_id);
      if (id <= last) {
        const c = win(it.t);
        c.outOfOrder++;
        ex(c, `${s.name}: msg_id ${it.msg_id} after ${last}`);
      }
      last = id;
      if (it.kind === 'message' && mine(it.msgkey)) seen.set(it.msgkey, [...(seen.get(it.msgkey) ?? []), it.msg_id]);
    }
    for (const a of acked.get(s.uid) ?? []) {
      const ids = seen.get(a.key);
      const k = `${s.uid}/${a.key}`;
      const j = judged.get(k) ?? { lost: false, dup: false };
      const c = win(a.send.start);
      if (!ids) {
        if (!j.lost) {
          c.lost++;
          ex(c, `${s.name}: ${a.key} (msg_id ${a.id}) missing`);
        }
        j.lost = true;
      } else if ((ids.length > 1 || ids[0] !== a.id) && !j.dup) {
        c.duplicated++;
        ex(c, `${s.name}: ${a.key} as ${ids.join(', ')} (acknowledged ${a.id})`);
        j.dup = true;
      }
      judged.set(k, j);
    }
  }

  // --- acknowledged before another was sent => smaller msg_id
  for (const [uid, list] of acked) {
    const byAck = [...list].sort((x, y) => (x.send.ack ?? 0) - (y.send.ack ?? 0));
    const byStart = [...list].sort((x, y) => x.send.start - y.send.start);
    let j = 0;
    let max = -1n;
    let maxKey = '';
    for (const b of byStart) {
      while (j < byAck.length && (byAck[j].send.ack ?? 0) < b.send.start) {
        if (BigInt(byAck[j].id) > max) {
          max = BigInt(byAck[j].id);
          maxKey = byAck[j].key;
        }
        j++;
      }
      if (BigInt(b.id) <= max) {
        const c = win(b.send.start);
        c.outOfOrder++;
        ex(c, `user ${uid}: ${b.key} (${b.id}) acknowledged id not above ${maxKey} (${max}), acknowledged before it was sent`);
      }
    }
  }

  // --- fresh syncs from "": one message per msgkey, same messages as every live stream
  for (const f of h.fresh) {
    /** @type {Map<string, number>} */
    const n = new Map();
    for (const it of f.items) if (it.kind === 'message' && mine(it.msgkey)) n.set(it.msgkey, (n.get(it.msgkey) ?? 0) + 1);
    for (const [k, v] of n) {
      if (v > 1) {
        global.keyTwice++;
        ex(global, `${f.name}: msgkey ${k} made ${v} messages`);
      }
    }
    const want = f.items.filter((i) => PRIVATE.has(i.kind)).map((i) => i.msg_id).join(',');
    for (const s of streamsOf.get(f.uid) ?? []) {
      if (s === f || !s.complete) continue;
      const got = s.items.filter((i) => PRIVATE.has(i.kind)).map((i) => i.msg_id).join(',');
      if (got !== want) {
        global.freshDisagree++;
        ex(global, `${s.name} differs from the fresh sync ${f.name} (${got.split(',').length} vs ${want.split(',').length} private items)`);
      }
    }
  }

  // --- notices
  const op = h.operator;
  if (op) {
    for (const s of h.streams) {
      /** @type {Map<string, number>} */
      const firstAt = new Map();
      /** @type {Map<string, number>} */
      const held = new Map();
      /** @type {Set<string>} */
      const retracted = new Set();
      for (const it of s.items) {
        if (it.kind === 'notice') {
          const k = `${it.notice_id}/${it.version}`;
          const t0 = firstAt.get(k);
          if (t0 !== undefined) {
            // A whitelist change gives new seqs: a documented re-delivery.
            // Each logicd sees them at its next poll, within about a second
            // normally, but only after a fault that keeps its poller from
            // the database (a PostgreSQL failover, a stalled link) has
            // ended: a change also explains a repeat when a fault window
            // lay between the change's end and the first delivery.
            const lagged = (/** @type {{ t1: number }} */ w) =>
              h.injections.some((i) => i.t <= t0 && h.faultEnd(i) + 5000 >= w.t1);
            const excused = op.wlChanges.some((w) => w.t0 <= it.t && (w.t1 >= t0 - 2000 || lagged(w)));
            if (excused) global.noticeRepeatsExcused++;
            else {
              global.noticeRepeats++;
              ex(global, `${s.name}: notice ${k} again ${it.t - t0} ms later, no whitelist change between`);
            }
          } else firstAt.set(k, it.t);
          held.set(it.notice_id, it.t);
          const n = op.notices.get(it.notice_id);
          if (n && !op.everWhitelisted.has(s.uid) && (n.publishT0 === undefined || it.t < n.publishT0)) {
            global.grayLeaks++;
            ex(global, `${s.name}: notice ${it.notice_id} reached a user never whitelisted before its publish`);
          }
        } else if (it.kind === 'retract') {
          retracted.add(it.notice_id);
        }
      }
      for (const [id] of held) {
        const n = op.notices.get(id);
        if (!n?.retractT1) continue;
        global.retractHolders++;
        if (!retracted.has(id)) {
          global.retractMissing++;
          ex(global, `${s.name}: held notice ${id}, retracted, no retract item`);
        }
      }
    }
  }

  // --- WebSocket clients: the message or a notify within 5 s while connected
  const inFault = (/** @type {number} */ t) => h.injections.some((i) => t >= i.t && t <= h.faultEnd(i) + 5000);
  for (const c of h.wsClients) {
    for (const a of acked.get(c.uid) ?? []) {
      const t = a.send.ack ?? 0;
      const sess = c.sessions.find((x) => x.on <= t && (x.off === 0 || x.off >= t + 5000));
      if (!sess) continue;
      global.wsChecked++;
      const got = c.stream.items.find((i) => i.kind === 'message' && i.msgkey === a.key);
      const id = BigInt(a.id);
      const notified = c.notifies.some((n) => n.t <= t + 5000 && BigInt(n.msg_id) >= id);
      if ((got && got.t <= t + 5000) || notified) continue;
      if (inFault(t)) global.wsLateInFault++;
      else {
        global.wsLate++;
        ex(global, `${c.name}: ${a.key} not notified nor synced within 5 s (${got ? `synced after ${got.t - t} ms` : 'never synced'})`);
      }
    }
  }
  return { byWindow, global };
}
