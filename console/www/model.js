// @ts-check
// Pure helpers of the console (no DOM): times, targeting in words, uid
// lists, diffs of notices and audit bodies. Unit-tested in node.

/**
 * @typedef {{platforms?: string[], min_core_level?: string, max_core_level?: string, login_only?: boolean}} Targeting
 * @typedef {{mode?: string, rate_per_s?: number}} Notify
 * @typedef {{notice_id: string, app_id: string, state: string, version: number, seq?: string,
 *   msg_id?: string, title: string, content?: string, category?: number, type?: number,
 *   priority?: number, business_type?: number, start_at?: string, expire_at?: string,
 *   targeting?: Targeting, notify?: Notify, created_by?: string, created_at?: string,
 *   updated_by?: string, updated_at?: string}} Notice
 */

/** Platforms the form offers (the API accepts any [a-z0-9_-]{1,15}). */
export const PLATFORMS = ['ios', 'android', 'web', 'windows', 'mac', 'linux'];

const PLATFORM_NAMES = /** @type {Record<string, string>} */ ({
  ios: 'iOS', android: 'Android', web: 'Web', windows: 'Windows', mac: 'macOS', linux: 'Linux',
});

/** Unix microseconds (decimal string) to a Date, or null for "0"/absent. */
export function usToDate(/** @type {string | undefined} */ us) {
  if (!us || us === '0') return null;
  return new Date(Number(BigInt(us) / 1000n));
}

/** A datetime-local input value for unix µs ("" for none), in local time. */
export function usToLocalInput(/** @type {string | undefined} */ us) {
  const d = usToDate(us);
  if (!d) return '';
  const p = (/** @type {number} */ n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

/** A datetime-local value (local time) as RFC 3339 in UTC, or "0" when empty. */
export function localInputToRfc3339(/** @type {string} */ v) {
  if (!v) return '0';
  const d = new Date(v);
  if (Number.isNaN(d.getTime())) throw new Error(`not a date: ${v}`);
  return d.toISOString().replace(/\.\d{3}Z$/, 'Z');
}

/** Local date and time of unix µs for display ("—" when none). */
export function formatUs(/** @type {string | undefined} */ us) {
  const d = usToDate(us);
  return d ? d.toLocaleString() : '—';
}

/** "from … until …" of a notice. */
export function validity(/** @type {Notice} */ n) {
  const from = n.start_at && n.start_at !== '0' ? formatUs(n.start_at) : 'at once';
  const to = n.expire_at && n.expire_at !== '0' ? formatUs(n.expire_at) : 'no end';
  return `${from} → ${to}`;
}

/** Joins ["a","b","c"] as "a, b and c". */
function andList(/** @type {string[]} */ xs) {
  if (xs.length <= 1) return xs.join('');
  return `${xs.slice(0, -1).join(', ')} and ${xs[xs.length - 1]}`;
}

/**
 * Who a notice targets, in words: "iOS and Android, core level ≥ 220819,
 * logged-in users only, whitelist only while prepublished".
 */
export function describeTargeting(/** @type {Notice} */ n) {
  const t = n.targeting ?? {};
  const parts = [];
  const plats = t.platforms ?? [];
  parts.push(plats.length ? andList(plats.map((p) => PLATFORM_NAMES[p] ?? p)) : 'every platform');
  const min = t.min_core_level && t.min_core_level !== '0' ? t.min_core_level : '';
  const max = t.max_core_level && t.max_core_level !== '0' ? t.max_core_level : '';
  if (min && max) parts.push(`core level ${min}–${max}`);
  else if (min) parts.push(`core level ≥ ${min}`);
  else if (max) parts.push(`core level ≤ ${max}`);
  if (t.login_only) parts.push('logged-in users only');
  if (n.state === 'draft' || n.state === 'prepublished') parts.push('whitelist only while prepublished');
  return parts.join(', ');
}

/** What a lifecycle action will do, for its confirmation dialog. */
export function actionEffect(/** @type {string} */ action, /** @type {Notice} */ n) {
  const who = describeTargeting({ ...n, state: 'published' });
  switch (action) {
    case 'prepublish':
      return `The users on the whitelist of app ${n.app_id} will see this notice (${who}); nobody else will.`;
    case 'publish':
      return `Every user of app ${n.app_id} will see this notice (${who}).`;
    case 'stop':
      return `Nobody will receive this notice any more, and history will no longer show it. Clients that already hold it are not told.`;
    case 'retract':
      return `Every client that received this notice will be told to remove it.`;
    case 'delete':
      return n.state === 'prepublished'
        ? `The notice will be deleted; the whitelisted users who received it will be told to remove it. The audit log keeps it.`
        : `The notice will be deleted. The audit log keeps it.`;
    default:
      return action;
  }
}

/** Which actions a state allows (api.md 4.4), and which of those need a publisher. */
export const ACTIONS = /** @type {const} */ ([
  { action: 'prepublish', label: 'Prepublish', from: ['draft'], publisher: false },
  { action: 'publish', label: 'Publish', from: ['draft', 'prepublished'], publisher: true },
  { action: 'stop', label: 'Stop', from: ['published'], publisher: true },
  { action: 'retract', label: 'Retract', from: ['published'], publisher: true },
  { action: 'delete', label: 'Delete', from: ['draft', 'prepublished', 'stopped', 'retracted'], publisher: true },
]);

/** The sync item a client receives for a notice (api.md 2.1). */
export function syncItem(/** @type {Notice} */ n) {
  return {
    kind: 'notice', msg_id: n.msg_id && n.msg_id !== '0' ? n.msg_id : '(set at first prepublish or publish)',
    expire_at: n.expire_at ?? '0', is_read: false, category: n.category ?? 0, type: n.type ?? 0,
    priority: n.priority ?? 0, business_type: n.business_type ?? 0, content: n.content ?? '',
    notice_id: n.notice_id, version: n.version, title: n.title,
  };
}

/**
 * Parses a whitelist text area: uids one per line or separated by commas
 * (spaces ignored). Returns the uids and, per bad entry, "line N: 'x' is
 * not a uid".
 */
export function parseUids(/** @type {string} */ text, max = 100000) {
  /** @type {string[]} */
  const uids = [];
  /** @type {string[]} */
  const errors = [];
  text.split('\n').forEach((line, i) => {
    for (const raw of line.split(',')) {
      const v = raw.trim();
      if (!v) continue;
      if (!/^[0-9]{1,20}$/.test(v) || BigInt(v) > 18446744073709551615n) errors.push(`line ${i + 1}: '${v.slice(0, 40)}' is not a uid`);
      else uids.push(BigInt(v).toString());
    }
  });
  if (uids.length > max) errors.push(`at most ${max} uids at a time`);
  return { uids, errors };
}

/** Flattens a notice-like object into "field" → displayed value. */
export function flatten(/** @type {any} */ o, prefix = '', /** @type {Record<string, string>} */ out = {}) {
  for (const [k, v] of Object.entries(o ?? {})) {
    const key = prefix ? `${prefix}.${k}` : k;
    if (v && typeof v === 'object' && !Array.isArray(v)) flatten(v, key, out);
    else out[key] = Array.isArray(v) ? v.join(', ') : String(v);
  }
  return out;
}

/** Operator fields of a notice (what an edit can change). */
export const EDITABLE = ['title', 'content', 'category', 'type', 'priority', 'start_at', 'expire_at',
  'targeting.platforms', 'targeting.min_core_level', 'targeting.max_core_level', 'targeting.login_only',
  'notify.mode', 'notify.rate_per_s'];

/** Field-by-field differences of two objects: [{field, before, after}]. */
export function diff(/** @type {any} */ a, /** @type {any} */ b, /** @type {string[] | null} */ only = null) {
  const fa = flatten(a), fb = flatten(b);
  const keys = only ?? [...new Set([...Object.keys(fa), ...Object.keys(fb)])].sort();
  return keys.filter((k) => (fa[k] ?? '') !== (fb[k] ?? '')).map((k) => ({ field: k, before: fa[k] ?? '', after: fb[k] ?? '' }));
}

/**
 * The changes each audit entry made, replaying a notice's create/edit
 * bodies oldest first (an edit body holds only what it set; a targeting
 * or notify object replaces the whole object, as the API does).
 * entries: newest first, as GET /v1/audit returns them.
 * Returns a Map from entry id to [{field, before, after}].
 */
export function auditChanges(/** @type {{id: string, action: string, notice_id: string, body: string}[]} */ entries) {
  /** @type {Map<string, {field: string, before: string, after: string}[]>} */
  const out = new Map();
  /** @type {Map<string, any>} */
  const state = new Map();
  for (const e of [...entries].reverse()) {
    if (!e.body) continue;
    let body;
    try { body = JSON.parse(e.body); } catch { continue; }
    if (e.action === 'create' || e.action === 'edit') {
      const prev = state.get(e.notice_id) ?? {};
      const next = { ...prev, ...body };
      out.set(e.id, diff(prev, next));
      state.set(e.notice_id, next);
    } else if (e.action === 'whitelist_remove') {
      const { uids, ...rest } = body;
      out.set(e.id, [...diff({}, rest), ...diff({ uids }, {})]);
    } else {
      out.set(e.id, diff({}, body));
    }
  }
  return out;
}

/** Maps an API validation message to the form field it names (or null). */
export function fieldOfError(/** @type {string} */ message) {
  const rules = /** @type {[RegExp, string][]} */ ([
    [/^title/, 'title'], [/^content/, 'content'], [/^app_id/, 'app'], [/^start_at/, 'start'],
    [/^expire_at/, 'expire'], [/targeting\.platforms/, 'platforms'], [/min_core_level|core levels/, 'min-core'],
    [/max_core_level/, 'max-core'], [/notify\.rate_per_s/, 'rate'], [/notify\.mode/, 'notify'],
  ]);
  for (const [re, f] of rules) if (re.test(message)) return f;
  return null;
}
