// @ts-check
// A TCP forwarder for the netem fault (lib/netem.mjs):
//
//   node proxy.mjs LISTEN_HOST:PORT=TARGET_HOST:PORT ...
//
// forwards each listener to its target. Prints "ready" once every
// listener is bound. SIGUSR1 turns "slow" on: every chunk, both ways, is
// held PROXY_DELAY_MS (default 150) and one in PROXY_STALL_PCT percent
// (default 3) another 200 ms, in order (what a retransmission after a loss
// costs); SIGUSR2 turns it off. This is the fallback of the netem fault when
// the kernel has no sch_netem; with netem the proxy only forwards.
import net from 'node:net';

const DELAY = Number(process.env.PROXY_DELAY_MS ?? 150);
const STALL = Number(process.env.PROXY_STALL_PCT ?? 3);
let slow = false;
process.on('SIGUSR1', () => { slow = true; });
process.on('SIGUSR2', () => { slow = false; });
process.on('SIGTERM', () => process.exit(0));

/**
 * Copies FROM to TO. While slow, chunks wait in one queue per direction,
 * written in arrival order by a single timer (separate timers with equal
 * due times may fire in any order, and reordered bytes would corrupt the
 * stream: a fault no network produces).
 */
function pipe(/** @type {net.Socket} */ from, /** @type {net.Socket} */ to) {
  /** @type {{ at: number, chunk: Buffer }[]} */
  const queue = [];
  let timer = /** @type {NodeJS.Timeout | null} */ (null);
  let ended = false;
  const pump = () => {
    timer = null;
    while (queue.length && queue[0].at <= Date.now()) {
      const q = /** @type {{ at: number, chunk: Buffer }} */ (queue.shift());
      if (!to.destroyed) to.write(q.chunk);
    }
    if (queue.length) timer = setTimeout(pump, Math.max(1, queue[0].at - Date.now()));
    else if (ended) to.end();
  };
  from.on('data', (chunk) => {
    if (!slow && !queue.length) {
      to.write(chunk);
      return;
    }
    const last = queue.length ? queue[queue.length - 1].at : 0;
    const at = Math.max(last, Date.now() + (slow ? DELAY + (Math.random() * 100 < STALL ? 200 : 0) : 0));
    queue.push({ at, chunk });
    if (!timer) timer = setTimeout(pump, Math.max(1, at - Date.now()));
  });
  from.on('end', () => {
    ended = true;
    if (!queue.length) to.end();
  });
  from.on('error', () => to.destroy());
  from.on('close', () => {
    if (!queue.length) to.destroy();
    else ended = true;
  });
}

const maps = process.argv.slice(2).map((a) => {
  const [l, t] = a.split('=');
  const [lh, lp] = [l.slice(0, l.lastIndexOf(':')), Number(l.slice(l.lastIndexOf(':') + 1))];
  const [th, tp] = [t.slice(0, t.lastIndexOf(':')), Number(t.slice(t.lastIndexOf(':') + 1))];
  return { lh, lp, th, tp };
});
let pending = maps.length;
for (const m of maps) {
  const srv = net.createServer((c) => {
    const up = net.connect(m.tp, m.th);
    up.setNoDelay(true);
    c.setNoDelay(true);
    pipe(c, up);
    pipe(up, c);
  });
  srv.on('error', (e) => {
    console.error(`proxy ${m.lh}:${m.lp}: ${e.message}`);
    process.exit(1);
  });
  srv.listen(m.lp, m.lh, () => {
    if (--pending === 0) console.log('ready');
  });
}
