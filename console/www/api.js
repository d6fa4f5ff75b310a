// @ts-check
// The ops API as the console uses it: same origin, the ops token from
// sessionStorage as the bearer token, JSON both ways. Errors become
// ApiError with the API's status, code and message.

const TOKEN_KEY = 'mbox.console.token';

export class ApiError extends Error {
  constructor(/** @type {number} */ status, /** @type {string} */ code, /** @type {string} */ message, /** @type {any} */ body) {
    super(message);
    this.status = status;
    this.code = code;
    this.body = body;
  }
}

export const token = {
  get: () => sessionStorage.getItem(TOKEN_KEY),
  set: (/** @type {string} */ t) => sessionStorage.setItem(TOKEN_KEY, t),
  clear: () => sessionStorage.removeItem(TOKEN_KEY),
};

/**
 * One API call. opts.ifMatch sends If-Match; the reply's ETag is returned
 * beside the parsed body.
 * @param {string} method
 * @param {string} path
 * @param {{body?: any, ifMatch?: string, token?: string}} [opts]
 * @returns {Promise<{body: any, etag: string | null, status: number}>}
 */
export async function call(method, path, opts = {}) {
  /** @type {Record<string, string>} */
  const headers = { Accept: 'application/json' };
  const t = opts.token ?? token.get();
  if (t) headers.Authorization = `Bearer ${t}`;
  if (opts.body !== undefined) headers['Content-Type'] = 'application/json';
  if (opts.ifMatch) headers['If-Match'] = opts.ifMatch;
  const r = await fetch(path, {
    method, headers, body: opts.body === undefined ? undefined : JSON.stringify(opts.body), cache: 'no-store',
  });
  const text = await r.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = { raw: text }; }
  if (!r.ok) {
    const e = body?.error ?? {};
    throw new ApiError(r.status, e.code ?? 'error', e.message ?? `HTTP ${r.status}`, body);
  }
  return { body, etag: r.headers.get('ETag'), status: r.status };
}

/** Query string of the defined, non-empty values. */
export function qs(/** @type {Record<string, string | number | undefined>} */ q) {
  const p = new URLSearchParams();
  for (const [k, v] of Object.entries(q)) if (v !== undefined && v !== '') p.set(k, String(v));
  const s = p.toString();
  return s ? `?${s}` : '';
}
