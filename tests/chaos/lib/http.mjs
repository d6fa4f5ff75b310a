// @ts-check
// HTTP calls of the chaos and soak drivers, each one recorded: every
// attempt becomes an event (kind, via, start, end, status) so that the
// table can say when requests failed and when they succeeded again.

export const sleep = (/** @type {number} */ ms) => new Promise((r) => setTimeout(r, ms));
export const now = () => Date.now();

/**
 * @typedef {{ status: number, body: any, text?: string, err?: string }} Reply
 *   status 0: no answer (refused, reset, timeout)
 * @typedef {{ kind: string, via: string, t0: number, t1: number, status: number }} Event
 */

/** Request timeout, ms (above logicd's pg_query_timeout_ms of 5000). */
export const REQ_MS = Number(process.env.CHAOS_REQUEST_MS ?? 6000);

/** Every attempt of every request, in completion order. */
/** @type {Event[]} */
export const events = [];
/** Failed attempts by "kind via status message" (a sample of the errors). */
/** @type {Record<string, number>} */
export const errorSamples = {};

/** true for a 2xx status. */
export const ok2xx = (/** @type {Reply} */ r) => r.status >= 200 && r.status < 300;

/**
 * One request. method GET/POST/PATCH/DELETE/PUT; body is JSON-encoded when
 * given. Never throws.
 * @param {string} method
 * @param {string} url
 * @param {string} bearer
 * @param {unknown} [body]
 * @param {Record<string, string>} [headers]
 * @returns {Promise<Reply>}
 */
export async function request(method, url, bearer, body, headers = {}) {
  try {
    const r = await fetch(url, {
      method,
      headers: { authorization: `Bearer ${bearer}`, 'content-type': 'application/json', ...headers },
      body: body === undefined ? undefined : JSON.stringify(body),
      signal: AbortSignal.timeout(REQ_MS),
    });
    const text = await r.text();
    let json = null;
    try {
      json = text ? JSON.parse(text) : null;
    } catch {
      /* not JSON */
    }
    return { status: r.status, body: json, text };
  } catch (e) {
    const err = /** @type {any} */ (e);
    return { status: 0, body: null, err: String(err?.cause?.code ?? err?.cause ?? err?.name ?? err) };
  }
}

/**
 * request() and record it as an event of KIND through VIA.
 * @param {string} kind
 * @param {string} via
 * @param {string} method
 * @param {string} url
 * @param {string} bearer
 * @param {unknown} [body]
 * @param {Record<string, string>} [headers]
 */
export async function recorded(kind, via, method, url, bearer, body, headers) {
  const t0 = now();
  const r = await request(method, url, bearer, body, headers);
  events.push({ kind, via, t0, t1: now(), status: r.status });
  if (!ok2xx(r)) {
    const k = `${kind} ${via} ${r.status} ${r.err ?? (r.text ?? '').slice(0, 100)}`;
    errorSamples[k] = (errorSamples[k] ?? 0) + 1;
  }
  return r;
}
