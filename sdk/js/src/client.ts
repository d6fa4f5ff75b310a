/*
 * MboxClient: the long connection to lcsd (login, heartbeats, notify, kick,
 * token refresh) and the pull side on logicd (/v1/sync and friends), with
 * the same rules as the C client (docs/client.md): sync at every login and
 * on every notify, one sync in flight with at most one more queued,
 * has_more loops, capped full-jitter reconnect backoff, no reconnect after
 * a kick, the cursor persisted after the items of its page were delivered.
 */
import { backoffDelay, type BackoffOptions } from './backoff.js';
import { defaultStorage, type StorageLike } from './storage.js';
import {
  webTransport,
  type FetchLike,
  type HttpResponse,
  type Transport,
  type TransportSocket,
  type WebSocketCtor,
} from './transport.js';

/** An item as the server sends it (docs/api.md 2.1); 64-bit values are strings. */
export interface MboxItem {
  kind: 'message' | 'recall' | 'notice' | 'retract' | string;
  msg_id: string;
  [field: string]: unknown;
}

export type MboxState = 'connecting' | 'online' | 'offline' | 'kicked' | 'stopped';

export interface MboxClientOptions {
  /** logicd SDK listener base URL, e.g. "http://127.0.0.1:8080". */
  syncUrl: string;
  /** lcsd WebSocket URL, e.g. "ws://127.0.0.1:8090/ws". */
  wsUrl: string;
  /** A token, or a function returning a fresh one (called again on 401 and before expiry). */
  token: string | (() => string | Promise<string>);
  deviceId: string;
  platform?: string;
  appVersion?: string;
  coreLevel?: string | number;
  /** Cursor store; default localStorage in browsers, memory elsewhere. */
  storage?: StorageLike;
  /** WebSocket implementation (Node 20 has none: the ws package is loaded when this is absent). */
  WebSocket?: WebSocketCtor;
  fetch?: FetchLike;
  /** Replaces WebSocket + fetch (mini programs: wxTransport(wx) from 'mbox-client/miniprogram'). */
  transport?: Transport;
  /** Reconnect backoff (default 200 ms base, 30 s cap). */
  reconnect?: Partial<BackoffOptions>;
  /** Items per sync request (server default when absent). */
  syncLimit?: number;
  /** How long a hidden page keeps its connection (default 5 minutes). */
  hiddenPauseMs?: number;
}

/** A failure, with the server's JSON error code when the server gave one. */
export class MboxError extends Error {
  /** The server's `error.code` (`unauthenticated`, `invalid_argument`, ...), or `network`, `protocol`, `login_refused`, `closed`. */
  readonly code: string;
  /** HTTP status, or the WebSocket close code for `closed`. */
  readonly status?: number;
  constructor(code: string, message: string, status?: number) {
    super(message);
    this.name = 'MboxError';
    this.code = code;
    this.status = status;
  }
}

interface Events {
  items: (items: MboxItem[]) => void;
  reset: () => void;
  state: (s: MboxState) => void;
  error: (e: MboxError) => void;
}

/** A server frame (docs/api.md 7.2), JSON form. */
interface Frame {
  type?: string;
  ok?: boolean;
  heartbeat_s?: number;
  expires_at?: string;
  app_id?: string;
  msg_id?: string;
  reason?: string;
}

const DEDUPE_KEEP = 10000;
const STABLE_MS = 10000; // backoff resets only after this long online (a flapping server is not hammered)
const SYNC_BACKOFF: BackoffOptions = { baseMs: 500, capMs: 30000 };
const REFRESH_LEAD_MAX_MS = 60000;

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** Bytes of unpadded base64url text, or null (no atob: mini programs lack it). */
function base64urlBytes(text: string): number[] | null {
  const out: number[] = [];
  let acc = 0;
  let bits = 0;
  for (const ch of text) {
    const v = B64URL.indexOf(ch);
    if (v < 0) return null;
    acc = ((acc << 6) | v) & 0xffffff;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out.push((acc >> bits) & 0xff);
    }
  }
  return out;
}

/** app_id and uid from a v1 user token (docs/api.md 1.1), or null when it does not look like one. */
function tokenOwner(token: string): { app: string; uid: string } | null {
  const parts = token.length <= 256 ? token.split('.') : [];
  if (parts.length !== 4 || parts[0] !== 'v1') return null;
  const bytes = base64urlBytes(parts[2]);
  if (!bytes || bytes.length !== 25) return null;
  const u64 = (at: number) => {
    let v = 0n;
    for (let i = 0; i < 8; i++) v = (v << 8n) | BigInt(bytes[at + i]);
    return v.toString();
  };
  return { app: u64(0), uid: u64(8) };
}

/** Unsigned decimal strings compared as numbers. */
function cmpId(a: string, b: string): number {
  return a.length !== b.length ? a.length - b.length : a < b ? -1 : a > b ? 1 : 0;
}

function dedupeKey(it: MboxItem): string {
  if (it.kind === 'notice') return `n:${String(it.notice_id)}:${String(it.version)}`;
  if (it.kind === 'retract') return `x:${String(it.notice_id)}:${it.msg_id}`;
  return `${it.kind}:${it.msg_id}`;
}

function isRetryable(e: unknown): boolean {
  return e instanceof MboxError ? e.code === 'network' || e.code === 'unavailable' || e.code === 'internal' ||
    e.code === 'timeout' || e.code === 'protocol' : true;
}

export class MboxClient {
  private readonly opts: MboxClientOptions;
  private readonly storage: StorageLike;
  private readonly backoff: BackoffOptions;
  private transport: Transport | null;
  private listeners: { [K in keyof Events]: Set<Events[K]> } = {
    items: new Set(), reset: new Set(), state: new Set(), error: new Set(),
  };

  private token = '';
  private tokenFetch: Promise<string> | null = null;
  private owner: { app: string; uid: string } | null = null;
  private cursorKey = '';
  private _cursor = '';
  private _state: MboxState = 'stopped';
  private seen = new Set<string>();

  private started: Promise<void> | null = null;
  private stopped = true;
  private kicked = false;
  private fatal = false; // a refusal that retrying cannot fix (static bad token, foreign refresh)
  private pausedBy = new Set<'offline' | 'hidden'>();
  private everOnline = false;

  private sock: TransportSocket | null = null;
  private gen = 0; // socket generation: callbacks of a replaced socket are ignored
  private loggedIn = false;
  private onlineSince = 0;
  private lastRx = 0;
  private attempt = 0;
  private needFreshToken = false;
  private expiresAtMs = 0;
  private firstOutcome: (() => void) | null = null;

  private syncing: Promise<void> | null = null;
  private syncAgain = false;
  private syncAttempt = 0;

  private timers = new Map<string, ReturnType<typeof setTimeout>>();
  private unlisten: (() => void) | null = null;

  constructor(opts: MboxClientOptions) {
    if (!opts || !opts.syncUrl || !opts.wsUrl || !opts.token || !opts.deviceId)
      throw new TypeError('MboxClient: syncUrl, wsUrl, token and deviceId are required');
    this.opts = opts;
    this.storage = opts.storage ?? defaultStorage();
    this.backoff = { baseMs: opts.reconnect?.baseMs ?? 200, capMs: opts.reconnect?.capMs ?? 30000 };
    this.transport = opts.transport ?? null;
  }

  /** The current cursor ("" before the first sync; also kept in storage). */
  get cursor(): string {
    return this._cursor;
  }

  /** The connection state last reported by a `state` event. */
  get state(): MboxState {
    return this._state;
  }

  on<K extends keyof Events>(event: K, fn: Events[K]): this {
    this.listeners[event].add(fn);
    return this;
  }

  off<K extends keyof Events>(event: K, fn: Events[K]): this {
    this.listeners[event].delete(fn);
    return this;
  }

  /** Connects, logs in and catches up by sync. Resolves once the first sync is done. */
  start(): Promise<void> {
    if (!this.started) this.started = this.doStart();
    return this.started;
  }

  private async doStart(): Promise<void> {
    this.stopped = false;
    this.kicked = false;
    this.fatal = false;
    if (!this.transport) this.transport = await this.defaultTransport();
    await this.getToken(false);
    this.owner = tokenOwner(this.token);
    const who = this.owner ? `${this.owner.app}:${this.owner.uid}` : this.opts.deviceId;
    this.cursorKey = `mbox-client:cursor:${who}`;
    const saved = await this.storage.get(this.cursorKey);
    this._cursor = typeof saved === 'string' ? saved : '';
    this.watchLifecycle();
    const outcome = new Promise<void>((resolve) => { this.firstOutcome = resolve; });
    this.setState('connecting');
    this.connect();
    if (!this.sock) this.firstOutcome?.(); // paused (browser offline) or refused at once
    await outcome;
    await (this.syncing ?? this.sync());
  }

  /** Pulls now: all pages. Coalesced with a sync in flight (which then runs once more). */
  sync(): Promise<void> {
    if (this.syncing) {
      this.syncAgain = true;
      return this.syncing;
    }
    this.clearTimer('syncRetry');
    this.syncing = this.syncLoop().finally(() => { this.syncing = null; });
    return this.syncing;
  }

  /** GET /v1/history; answers what the server answers ({ items, has_more }). */
  history(q: { order?: 'asc' | 'desc'; from?: string | number; to?: string | number; limit?: number } = {}):
    Promise<{ items: MboxItem[]; has_more: boolean }> {
    // Built by hand: mini-program runtimes have no URLSearchParams.
    const qs = (['order', 'from', 'to', 'limit'] as const)
      .filter((k) => q[k] !== undefined && q[k] !== null)
      .map((k) => `${k}=${encodeURIComponent(String(q[k]))}`)
      .join('&');
    return this.call('GET', `/v1/history${qs ? '?' + qs : ''}`) as Promise<{ items: MboxItem[]; has_more: boolean }>;
  }

  /** POST /v1/read: marks private messages (and notices) read; answers { updated }. */
  markRead(msgIds: Array<string | number>, noticeIds: Array<string | number> = []): Promise<{ updated: number }> {
    return this.call('POST', '/v1/read', { msg_ids: msgIds.map(String), notice_ids: noticeIds.map(String) }) as
      Promise<{ updated: number }>;
  }

  /** POST /v1/notices/{id}/hide. */
  async hide(noticeId: string | number): Promise<void> {
    await this.call('POST', `/v1/notices/${encodeURIComponent(String(noticeId))}/hide`);
  }

  /** Closes the connection and stops every timer; a started client can be started again. */
  async stop(): Promise<void> {
    this.stopped = true;
    for (const t of this.timers.values()) clearTimeout(t);
    this.timers.clear();
    this.unlisten?.();
    this.unlisten = null;
    this.dropSocket(1000, 'client stop');
    this.firstOutcome?.();
    const pending = this.syncing;
    if (pending) await pending.catch(() => undefined);
    if (this.started) await this.started.catch(() => undefined);
    this.started = null;
    this.setState('stopped');
  }

  // ---- events ----

  private emit<K extends keyof Events>(event: K, ...args: Parameters<Events[K]>): void {
    for (const fn of [...this.listeners[event]]) {
      try {
        (fn as (...a: Parameters<Events[K]>) => void)(...args);
      } catch (e) {
        // A throwing listener must not break the client; report it outside our stack.
        setTimeout(() => { throw e; }, 0);
      }
    }
  }

  private setState(s: MboxState): void {
    if (this._state === s) return;
    this._state = s;
    this.emit('state', s);
  }

  private fail(e: MboxError): MboxError {
    this.emit('error', e);
    return e;
  }

  private timer(name: string, ms: number, fn: () => void): void {
    this.clearTimer(name);
    this.timers.set(name, setTimeout(() => { this.timers.delete(name); fn(); }, ms));
  }

  private clearTimer(name: string): void {
    const t = this.timers.get(name);
    if (t !== undefined) clearTimeout(t);
    this.timers.delete(name);
  }

  // ---- token ----

  /** The token; `fresh` asks the token function again (concurrent askers share one call). */
  private async getToken(fresh: boolean): Promise<string> {
    const src = this.opts.token;
    if (typeof src === 'string') return (this.token = src);
    if (this.token && !fresh) return this.token;
    if (!this.tokenFetch) {
      this.tokenFetch = (async () => {
        try {
          const t = await src();
          if (typeof t === 'string' && t) this.token = t;
          return this.token;
        } finally {
          this.tokenFetch = null;
        }
      })();
    }
    return this.tokenFetch;
  }

  // ---- HTTP ----

  private async defaultTransport(): Promise<Transport> {
    const g = globalThis as { WebSocket?: WebSocketCtor; fetch?: FetchLike };
    let WS = this.opts.WebSocket ?? g.WebSocket;
    if (!WS) {
      const name = 'ws'; // not a static import: browsers never load it
      try {
        WS = ((await import(name)) as { default: WebSocketCtor }).default;
      } catch {
        throw new TypeError('MboxClient: no WebSocket implementation (pass options.WebSocket or install ws)');
      }
    }
    const f = this.opts.fetch ?? (g.fetch ? g.fetch.bind(globalThis) : undefined);
    if (!f) throw new TypeError('MboxClient: no fetch implementation (pass options.fetch)');
    return webTransport(WS, f);
  }

  private headers(token: string, json: boolean): Record<string, string> {
    const h: Record<string, string> = { Authorization: `Bearer ${token}`, Accept: 'application/json' };
    if (json) h['Content-Type'] = 'application/json';
    // The same client attributes on every request: the cursor remembers them (docs/api.md 6.2).
    if (this.opts.platform) h.platform = this.opts.platform;
    if (this.opts.appVersion) h.app_version = this.opts.appVersion;
    if (this.opts.coreLevel !== undefined && this.opts.coreLevel !== '') h.core_level = String(this.opts.coreLevel);
    return h;
  }

  private async send(method: 'GET' | 'POST', path: string, token: string, body?: unknown): Promise<HttpResponse> {
    if (!this.transport) this.transport = await this.defaultTransport();
    const text = body === undefined ? undefined : JSON.stringify(body);
    try {
      return await this.transport.request({
        method, url: this.opts.syncUrl.replace(/\/+$/, '') + path, headers: this.headers(token, text !== undefined), body: text,
      });
    } catch (e) {
      throw new MboxError('network', `${method} ${path}: ${e instanceof Error ? e.message : String(e)}`);
    }
  }

  /** One request; a 401 asks the token function once and retries. Errors are emitted and thrown. */
  private async call(method: 'GET' | 'POST', path: string, body?: unknown): Promise<unknown> {
    try {
      let r = await this.send(method, path, await this.getToken(false), body);
      if (r.status === 401 && typeof this.opts.token === 'function')
        r = await this.send(method, path, await this.getToken(true), body);
      let parsed: unknown = undefined;
      if (r.text) {
        try {
          parsed = JSON.parse(r.text);
        } catch {
          throw new MboxError('protocol', `${method} ${path}: status ${r.status}, body is not JSON`, r.status);
        }
      }
      if (r.status >= 200 && r.status < 300) return parsed;
      const err = (parsed as { error?: { code?: string; message?: string } } | undefined)?.error;
      throw new MboxError(err?.code ?? `http_${r.status}`, err?.message ?? `${method} ${path}: status ${r.status}`, r.status);
    } catch (e) {
      throw this.fail(e instanceof MboxError ? e : new MboxError('protocol', String(e)));
    }
  }

  // ---- sync ----

  private async syncLoop(): Promise<void> {
    try {
      do {
        this.syncAgain = false;
        await this.syncPages();
      } while (this.syncAgain && !this.stopped);
      this.syncAttempt = 0;
    } catch (e) {
      // Retry on our own backoff; a notify burst meanwhile joins the retry, never multiplies it.
      if (!this.stopped && !this.pausedBy.size && isRetryable(e))
        this.timer('syncRetry', backoffDelay(this.syncAttempt++, SYNC_BACKOFF), () => { this.sync().catch(() => undefined); });
      throw e;
    }
  }

  private async syncPages(): Promise<void> {
    for (;;) {
      if (this.stopped) return;
      const req: { cursor: string; limit?: number } = { cursor: this._cursor };
      if (this.opts.syncLimit) req.limit = this.opts.syncLimit;
      let r: { items?: MboxItem[]; cursor?: string; has_more?: boolean; reset?: boolean };
      try {
        r = (await this.call('POST', '/v1/sync', req)) as typeof r;
      } catch (e) {
        // A cursor this server never issued (another deployment, a torn store): start over.
        if (e instanceof MboxError && e.code === 'invalid_argument' && this._cursor !== '' && /cursor/.test(e.message)) {
          await this.reset();
          continue;
        }
        throw e;
      }
      if (!r || typeof r.cursor !== 'string' || !Array.isArray(r.items))
        throw this.fail(new MboxError('protocol', 'sync reply without items or cursor'));
      if (r.reset) {
        await this.reset();
        continue;
      }
      const fresh = r.items.filter((it) => this.firstSight(it)).sort((a, b) => cmpId(a.msg_id, b.msg_id));
      if (fresh.length) this.emit('items', fresh);
      // Saved after the items were handed over: a crash re-delivers a page, never skips one.
      await this.saveCursor(r.cursor);
      if (!r.has_more) return;
    }
  }

  private async reset(): Promise<void> {
    this.seen.clear();
    await this.saveCursor('');
    this.emit('reset');
  }

  private async saveCursor(c: string): Promise<void> {
    this._cursor = c;
    try {
      await this.storage.set(this.cursorKey, c);
    } catch (e) {
      this.fail(new MboxError('storage', `cursor not saved: ${e instanceof Error ? e.message : String(e)}`));
    }
  }

  private firstSight(it: MboxItem): boolean {
    if (!it || typeof it.msg_id !== 'string') return false;
    const k = dedupeKey(it);
    if (this.seen.has(k)) return false;
    this.seen.add(k);
    if (this.seen.size > DEDUPE_KEEP) this.seen.delete(this.seen.values().next().value as string);
    return true;
  }

  // ---- connection ----

  private connect(): void {
    if (this.stopped || this.kicked || this.fatal || this.pausedBy.size || this.sock || !this.transport) return;
    const gen = ++this.gen;
    this.loggedIn = false;
    this.lastRx = Date.now();
    const mine = (fn: (...a: never[]) => void) => (...a: never[]) => { if (gen === this.gen) fn(...a); };
    try {
      this.sock = this.transport.connect(this.opts.wsUrl, {
        onOpen: mine(() => this.login()),
        onMessage: mine((text: string) => this.onFrame(text)),
        onClose: mine((code: number, reason: string) => this.socketGone(code, reason)),
        onError: () => undefined, // onClose follows with the code
      });
    } catch (e) {
      this.fail(new MboxError('network', `connect: ${e instanceof Error ? e.message : String(e)}`));
      this.socketGone(1006, 'connect failed');
    }
  }

  private login(): void {
    const f: Record<string, string> = { type: 'login', token: this.token, device_id: this.opts.deviceId };
    if (this.opts.platform) f.platform = this.opts.platform;
    if (this.opts.appVersion) f.app_version = this.opts.appVersion;
    if (this.opts.coreLevel !== undefined && this.opts.coreLevel !== '') f.core_level = String(this.opts.coreLevel);
    this.sendFrame(f);
  }

  private sendFrame(f: Record<string, string>): void {
    try {
      this.sock?.send(JSON.stringify(f));
    } catch {
      // The close callback follows.
    }
  }

  private onFrame(text: string): void {
    this.lastRx = Date.now();
    let f: Frame;
    try {
      f = JSON.parse(text) as Frame;
    } catch {
      this.fail(new MboxError('protocol', 'undecodable frame from lcsd'));
      this.dropSocket(1000, 'bad frame');
      this.socketGone(1006, 'bad frame');
      return;
    }
    switch (f.type) {
      case 'login_ack': return this.onLoginAck(f);
      case 'notify':
        // The uid is the connection's; the app is named: another app's notify is not ours.
        if (this.owner && f.app_id !== undefined && String(f.app_id) !== this.owner.app) return;
        this.sync().catch(() => undefined);
        return;
      case 'kick':
        this.onKick(f.reason ?? 'kicked');
        return;
      case 'refresh_ack':
        if (f.ok) {
          this.expiresAtMs = Number(f.expires_at) / 1000;
          this.armRefresh();
        } else {
          this.fail(new MboxError('unauthenticated', `token refresh refused: ${f.reason ?? ''}`));
          this.armRefresh(true);
        }
        return;
      default:
        return; // pong, and types a newer server may add
    }
  }

  private onLoginAck(f: Frame): void {
    if (!f.ok) {
      const reason = f.reason ?? 'refused';
      this.fail(new MboxError('unauthenticated', `login refused: ${reason}`));
      if (typeof this.opts.token === 'function' && reason !== 'bad device_id') this.needFreshToken = true;
      else this.fatal = true; // the same token or device id would be refused again
      return; // the server closes; socketGone decides
    }
    this.loggedIn = true;
    this.everOnline = true;
    this.onlineSince = Date.now();
    const hbMs = Math.max(1, Number(f.heartbeat_s) || 30) * 1000;
    this.expiresAtMs = f.expires_at ? Number(f.expires_at) / 1000 : 0;
    this.setState('online');
    this.heartbeat(hbMs);
    this.armRefresh();
    this.firstOutcome?.();
    this.firstOutcome = null;
    this.sync().catch(() => undefined); // catch up after every (re)login
  }

  private heartbeat(hbMs: number): void {
    this.timer('heartbeat', hbMs, () => {
      if (!this.sock) return;
      if (Date.now() - this.lastRx > 3 * hbMs) {
        // Silent for three periods: the connection is dead even if no close came.
        this.dropSocket(1000, 'heartbeat timeout');
        this.socketGone(1006, 'heartbeat timeout');
        return;
      }
      this.sendFrame({ type: 'ping' });
      this.heartbeat(hbMs);
    });
  }

  /** Before the token's expiry, ask the token function and send a refresh frame (docs/api.md 7.8). */
  private armRefresh(retry = false): void {
    this.clearTimer('refresh');
    if (typeof this.opts.token !== 'function' || !this.expiresAtMs) return;
    const left = this.expiresAtMs - Date.now();
    let delay = left - Math.min(left / 5, REFRESH_LEAD_MAX_MS);
    if (retry) {
      if (left < 400) return;
      delay = left / 2;
    }
    this.timer('refresh', Math.max(0, delay), () => { void this.refreshToken(); });
  }

  private async refreshToken(): Promise<void> {
    const old = this.token;
    let t: string;
    try {
      t = await this.getToken(true);
    } catch (e) {
      this.fail(new MboxError('unauthenticated', `token function failed: ${e instanceof Error ? e.message : String(e)}`));
      this.armRefresh(true);
      return;
    }
    if (!this.loggedIn) return;
    if (t === old) {
      this.armRefresh(true); // nothing newer yet: ask again halfway to the expiry
      return;
    }
    this.sendFrame({ type: 'refresh', token: t });
  }

  private onKick(reason: string): void {
    this.kicked = true;
    this.fail(new MboxError('kicked', `kicked: ${reason}`));
    this.dropSocket(1000, 'kicked');
    this.socketGone(1008, reason);
  }

  /** Closes the socket, if any, and ignores everything it still reports. */
  private dropSocket(code: number, reason: string): void {
    const s = this.sock;
    this.sock = null;
    this.gen++;
    try {
      s?.close(code, reason);
    } catch {
      // Already closed.
    }
  }

  private socketGone(code: number, reason: string): void {
    const wasOnline = this.loggedIn;
    this.sock = null;
    this.gen++;
    this.loggedIn = false;
    this.clearTimer('heartbeat');
    this.clearTimer('refresh');
    this.firstOutcome?.();
    this.firstOutcome = null;
    if (this.stopped) return;
    if (code === 4429 || (code === 1008 && reason === 'replaced')) this.kicked = true; // kick frame lost
    if (this.kicked) return this.setState('kicked');
    if (code === 4401) this.needFreshToken = true;
    if (code === 4403) {
      this.fatal = true;
      this.fail(new MboxError('closed', `lcsd closed the session: ${reason}`, code));
    }
    if (wasOnline && Date.now() - this.onlineSince >= STABLE_MS) this.attempt = 0;
    this.setState(this.everOnline || this.pausedBy.size || this.fatal ? 'offline' : 'connecting');
    if (this.fatal || this.pausedBy.size) return;
    this.timer('reconnect', backoffDelay(this.attempt++, this.backoff), () => { void this.reconnect(); });
  }

  private async reconnect(): Promise<void> {
    if (this.needFreshToken) {
      try {
        await this.getToken(true);
        this.needFreshToken = false;
      } catch (e) {
        this.fail(new MboxError('unauthenticated', `token function failed: ${e instanceof Error ? e.message : String(e)}`));
      }
    }
    this.connect();
  }

  // ---- browser lifecycle: offline and hidden pages ----

  private watchLifecycle(): void {
    const g = globalThis as { addEventListener?: Window['addEventListener']; removeEventListener?: Window['removeEventListener']; document?: Document; navigator?: Navigator };
    if (typeof g.addEventListener !== 'function' || !g.removeEventListener) return;
    const doc = g.document;
    const onOffline = () => this.pause('offline');
    const onOnline = () => this.resume('offline');
    const onVisibility = () => {
      if (doc?.visibilityState === 'hidden')
        this.timer('hidden', this.opts.hiddenPauseMs ?? 300000, () => this.pause('hidden'));
      else {
        this.clearTimer('hidden');
        this.resume('hidden');
      }
    };
    g.addEventListener('offline', onOffline);
    g.addEventListener('online', onOnline);
    doc?.addEventListener('visibilitychange', onVisibility);
    this.unlisten = () => {
      g.removeEventListener?.('offline', onOffline);
      g.removeEventListener?.('online', onOnline);
      doc?.removeEventListener('visibilitychange', onVisibility);
    };
    if (g.navigator && g.navigator.onLine === false) this.pausedBy.add('offline');
  }

  private pause(why: 'offline' | 'hidden'): void {
    if (this.stopped || this.pausedBy.has(why)) return;
    this.pausedBy.add(why);
    this.clearTimer('reconnect');
    this.clearTimer('syncRetry');
    this.dropSocket(1000, why);
    this.socketGone(1000, why);
  }

  private resume(why: 'offline' | 'hidden'): void {
    if (!this.pausedBy.delete(why) || this.pausedBy.size || this.stopped) return;
    this.attempt = 0;
    this.syncAttempt = 0;
    this.setState(this.everOnline ? 'offline' : 'connecting');
    this.connect(); // the login's sync catches up what came meanwhile
  }
}
