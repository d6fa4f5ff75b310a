// @ts-check
// The operations console: sign-in, notices (list, form, lifecycle,
// preview, reach, audit), whitelist and audit pages. Hash routes:
// #/notices, #/new, #/notice/ID, #/edit/ID, #/whitelist, #/audit. Every
// change goes through the ops API (api.js); the page hides what the
// operator's role cannot do, and the API refuses it anyway (403).
import { call, qs, token, ApiError } from './api.js';
import { reachChart } from './chart.js';
import {
  ACTIONS, EDITABLE, PLATFORMS, actionEffect, auditChanges, describeTargeting, diff, fieldOfError,
  formatUs, localInputToRfc3339, parseUids, syncItem, usToLocalInput, validity,
} from './model.js';

/** @typedef {import('./model.js').Notice} Notice */

const PAGE = 20;
const STATES = ['draft', 'prepublished', 'published', 'stopped', 'retracted'];

/** @type {{name: string, role: string} | null} */
let me = null;
const main = /** @type {HTMLElement} */ (document.getElementById('main'));

/**
 * Creates an element: h('button', {type: 'button', onclick: f}, 'Save').
 * @param {string} tag
 * @param {Record<string, any>} [attrs]
 * @param {...(Node | string | null | undefined | false)} kids
 * @returns {HTMLElement}
 */
function h(tag, attrs = {}, ...kids) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (k === 'text') e.textContent = v;
    else if (v === true) e.setAttribute(k, '');
    else e.setAttribute(k, String(v));
  }
  for (const c of kids) if (c) e.append(c);
  return e;
}

/** Replaces the page and moves focus to its heading (keyboard and screen-reader users land there). */
function show(/** @type {string} */ title, /** @type {(Node | null)[]} */ ...kids) {
  document.title = `${title} · mbox console`;
  const h2 = h('h2', { tabindex: '-1', text: title });
  main.replaceChildren(h2, h('p', { role: 'status', id: 'status', class: 'ok' }), .../** @type {Node[]} */ (kids.filter((k) => k)));
  h2.focus();
}

function setStatus(/** @type {string} */ text, isError = false) {
  const s = document.getElementById('status');
  if (s) {
    s.textContent = text;
    s.className = isError ? 'error' : 'ok';
  }
}

function isPublisher() { return me?.role === 'publisher'; }

/** Runs an API action; a failure is shown in the status line (and sign-in again on 401). */
async function guarded(/** @type {() => Promise<void>} */ fn) {
  try {
    await fn();
  } catch (e) {
    if (e instanceof ApiError && e.status === 401) {
      token.clear();
      me = null;
      renderSignIn('Your ops token was rejected; sign in again.');
      return;
    }
    setStatus(e instanceof Error ? e.message : String(e), true);
  }
}

/* ---- sign-in ---- */

function renderSignIn(message = '') {
  document.getElementById('nav')?.setAttribute('hidden', '');
  document.getElementById('who')?.setAttribute('hidden', '');
  const input = h('input', { id: 'ops-token', type: 'password', autocomplete: 'off', required: true });
  const err = h('p', { class: 'error', role: 'alert', text: message });
  const form = h('form', {
    onsubmit: async (/** @type {Event} */ ev) => {
      ev.preventDefault();
      const t = /** @type {HTMLInputElement} */ (input).value.trim();
      try {
        const r = await call('GET', '/v1/whoami', { token: t });
        token.set(t);
        signedIn(r.body);
      } catch (e) {
        err.textContent = e instanceof ApiError && e.status === 401 ? 'That ops token was not accepted.' : String(e);
      }
    },
  }, h('label', { for: 'ops-token', text: 'Ops token' }), input, h('div', { class: 'buttons' },
    h('button', { type: 'submit', class: 'primary', text: 'Sign in' })), err);
  show('Sign in', form);
  input.focus();
}

function signedIn(/** @type {{name: string, role: string}} */ who) {
  me = who;
  document.getElementById('nav')?.removeAttribute('hidden');
  document.getElementById('who')?.removeAttribute('hidden');
  const t = document.getElementById('who-text');
  if (t) t.textContent = `${who.name} (${who.role})`;
  if (!location.hash || location.hash === '#/' || location.hash === '#') location.hash = '#/notices';
  else route();
}

document.getElementById('sign-out')?.addEventListener('click', () => {
  token.clear();
  me = null;
  location.hash = '';
  renderSignIn('Signed out.');
});

/* ---- confirmation ---- */

const dialog = /** @type {HTMLDialogElement} */ (document.getElementById('confirm'));

/** Asks with the confirmation dialog; resolves true on "Confirm". */
function confirmAction(/** @type {string} */ title, /** @type {string} */ text) {
  const t = document.getElementById('confirm-title');
  const p = document.getElementById('confirm-text');
  if (t) t.textContent = title;
  if (p) p.textContent = text;
  dialog.returnValue = '';
  dialog.showModal();
  document.getElementById('confirm-ok')?.focus();
  return new Promise((resolve) => dialog.addEventListener('close', () => resolve(dialog.returnValue === 'ok'), { once: true }));
}

/* ---- notices list ---- */

async function renderList(/** @type {URLSearchParams} */ q) {
  const app = q.get('app') ?? '';
  const state = q.get('state') ?? '';
  const page = Math.max(0, Number(q.get('page') ?? 0) | 0);
  const { body } = await call('GET', `/v1/notices${qs({ app_id: app, state, limit: 500 })}`);
  /** @type {Notice[]} */
  const all = body.notices;
  const rows = all.slice(page * PAGE, (page + 1) * PAGE);
  const appIn = h('input', { id: 'f-app', inputmode: 'numeric', value: app, size: 8 });
  const stateSel = h('select', { id: 'f-state' }, h('option', { value: '', text: 'any' }),
    ...STATES.map((s) => h('option', { value: s, text: s, selected: s === state })));
  const go = (/** @type {number} */ p) => {
    location.hash = `#/notices${qs({ app: /** @type {HTMLInputElement} */ (appIn).value.trim(), state: /** @type {HTMLSelectElement} */ (stateSel).value, page: p || undefined })}`;
  };
  const filters = h('form', { class: 'row', onsubmit: (/** @type {Event} */ e) => { e.preventDefault(); go(0); } },
    h('div', {}, h('label', { for: 'f-app', text: 'App' }), appIn),
    h('div', {}, h('label', { for: 'f-state', text: 'State' }), stateSel),
    h('div', {}, h('button', { type: 'submit', text: 'Filter' })),
    h('div', {}, h('button', { type: 'button', class: 'primary', text: 'New notice', onclick: () => { location.hash = '#/new'; } })));
  const reachCells = rows.map(() => h('td', { text: '…' }));
  const table = h('table', {}, h('caption', { class: 'muted', text: `${all.length} ${all.length === 1 ? 'notice' : 'notices'}, newest first` }),
    h('thead', {}, h('tr', {}, ...['ID', 'App', 'Title', 'State', 'Version', 'Validity', 'Reach'].map((c) => h('th', { scope: 'col', text: c })))),
    h('tbody', {}, ...rows.map((n, i) => h('tr', {},
      h('td', { text: n.notice_id }), h('td', { text: n.app_id }),
      h('td', {}, h('a', { href: `#/notice/${n.notice_id}`, text: n.title })),
      h('td', { text: n.state }), h('td', { text: String(n.version) }), h('td', { text: validity(n) }), reachCells[i]))));
  const pager = h('div', { class: 'buttons' },
    h('button', { type: 'button', text: 'Previous', disabled: page === 0, onclick: () => go(page - 1) }),
    h('span', { class: 'muted', text: `page ${page + 1} of ${Math.max(1, Math.ceil(all.length / PAGE))}` }),
    h('button', { type: 'button', text: 'Next', disabled: (page + 1) * PAGE >= all.length, onclick: () => go(page + 1) }));
  show('Notices', filters, table, pager);
  rows.forEach(async (n, i) => {
    try {
      const s = await call('GET', `/v1/notices/${n.notice_id}/stats`);
      reachCells[i].textContent = String(s.body.reach);
    } catch {
      reachCells[i].textContent = '?';
    }
  });
}

/* ---- notice form ---- */

/** A labelled field with its error slot. */
function field(/** @type {string} */ id, /** @type {string} */ label, /** @type {HTMLElement} */ input) {
  input.id = id;
  input.setAttribute('aria-describedby', `err-${id}`);
  return h('div', {}, h('label', { for: id, text: label }), input, h('p', { class: 'field-error', id: `err-${id}` }));
}

/**
 * The new/edit form. base: the notice being edited and its ETag (null for new).
 * @param {{notice: Notice, etag: string} | null} base
 */
function renderForm(base) {
  const n = base?.notice;
  const input = (/** @type {Record<string, any>} */ a) => /** @type {HTMLInputElement} */ (h('input', a));
  const f = {
    app: input({ inputmode: 'numeric', required: true, value: n?.app_id ?? '', disabled: !!n }),
    title: input({ required: true, value: n?.title ?? '', maxlength: 512 }),
    content: /** @type {HTMLTextAreaElement} */ (h('textarea', {})),
    category: input({ type: 'number', value: n?.category ?? 0 }),
    type: input({ type: 'number', value: n?.type ?? 0 }),
    priority: input({ type: 'number', value: n?.priority ?? 0 }),
    start: input({ type: 'datetime-local', value: usToLocalInput(n?.start_at) }),
    expire: input({ type: 'datetime-local', value: usToLocalInput(n?.expire_at) }),
    minCore: input({ inputmode: 'numeric', value: n?.targeting?.min_core_level ?? '0' }),
    maxCore: input({ inputmode: 'numeric', value: n?.targeting?.max_core_level ?? '0' }),
    login: input({ type: 'checkbox', checked: !!n?.targeting?.login_only }),
    notify: /** @type {HTMLSelectElement} */ (h('select', {}, h('option', { value: 'none', text: 'none' }),
      h('option', { value: 'paced', text: 'paced', selected: n?.notify?.mode === 'paced' }))),
    rate: input({ type: 'number', min: 0, value: n?.notify?.rate_per_s ?? 0 }),
  };
  f.content.value = n?.content ?? '';
  const plats = PLATFORMS.map((p) => input({ type: 'checkbox', id: `plat-${p}`, value: p, checked: (n?.targeting?.platforms ?? []).includes(p) }));
  const platforms = h('fieldset', { id: 'platforms', 'aria-describedby': 'err-platforms' }, h('legend', { text: 'Platforms' }),
    ...plats.map((c, i) => h('label', { for: c.id }, c, PLATFORMS[i])), h('p', { class: 'field-error', id: 'err-platforms' }));
  const conflict = h('div', { id: 'conflict', role: 'alert' });

  const collect = () => {
    /** @type {Record<string, any>} */
    const b = {
      title: f.title.value, content: f.content.value, category: Number(f.category.value), type: Number(f.type.value),
      priority: Number(f.priority.value), start_at: localInputToRfc3339(f.start.value), expire_at: localInputToRfc3339(f.expire.value),
      targeting: { platforms: plats.filter((c) => c.checked).map((c) => c.value), min_core_level: f.minCore.value.trim() || '0',
        max_core_level: f.maxCore.value.trim() || '0', login_only: f.login.checked },
      notify: f.notify.value === 'paced' ? { mode: 'paced', rate_per_s: Number(f.rate.value) } : { mode: 'none' },
    };
    if (!n) b.app_id = f.app.value.trim();
    return b;
  };

  const clearErrors = () => { for (const e of main.querySelectorAll('.field-error')) e.textContent = ''; };
  const save = async (/** @type {Event} */ ev) => {
    ev.preventDefault();
    clearErrors();
    conflict.replaceChildren();
    let body;
    try { body = collect(); } catch (e) { setStatus(String(e), true); return; }
    try {
      const r = n
        ? await call('PATCH', `/v1/notices/${n.notice_id}`, { body, ifMatch: base?.etag })
        : await call('POST', '/v1/notices', { body });
      location.hash = `#/notice/${r.body.notice_id}`;
    } catch (e) {
      if (e instanceof ApiError && n && (e.status === 412 || e.status === 409)) {
        await showConflict(n, e);
        return;
      }
      if (e instanceof ApiError && e.status === 400) {
        const id = fieldOfError(e.message);
        const slot = id ? document.getElementById(`err-${id}`) : null;
        if (slot) {
          slot.textContent = e.message;
          setStatus('The notice was not saved: see the field marked.', true);
          return;
        }
      }
      await guarded(async () => { throw e; });
    }
  };

  /** Someone changed the notice since the form opened: say so, show what, offer a reload. */
  const showConflict = async (/** @type {Notice} */ mine, /** @type {ApiError} */ e) => {
    let cur = null;
    try { cur = (await call('GET', `/v1/notices/${mine.notice_id}`)).body; } catch { /* deleted meanwhile */ }
    const changes = cur ? diff(mine, cur, EDITABLE.concat(['state', 'version', 'updated_by'])) : [];
    conflict.replaceChildren(h('div', { class: 'notice-msg' },
      h('p', { text: `Someone else changed this notice after you opened it (${e.message}). Your edit was not saved.` }),
      cur ? h('p', { text: `It is now at version ${cur.version}, changed by ${cur.updated_by}.` }) : h('p', { text: 'It no longer exists.' }),
      changes.length ? h('ul', {}, ...changes.map((c) => h('li', {}, `${c.field}: `,
        h('span', { class: 'diff-del', text: `− ${c.before}` }), ' ', h('span', { class: 'diff-add', text: `+ ${c.after}` })))) : null,
      h('button', { type: 'button', class: 'primary', text: 'Reload', onclick: () => route() })));
    setStatus('Not saved: the notice changed meanwhile.', true);
  };

  const form = h('form', { onsubmit: save, novalidate: true },
    h('div', { class: 'row' }, field('app', 'App', f.app), field('category', 'Category', f.category),
      field('type', 'Type', f.type), field('priority', 'Priority', f.priority)),
    field('title', 'Title', f.title), field('content', 'Content', f.content),
    h('div', { class: 'row' }, field('start', 'Starts at', f.start), field('expire', 'Expires at', f.expire)),
    h('p', { class: 'muted', text: `Times are local (${Intl.DateTimeFormat().resolvedOptions().timeZone}); empty start: at once, empty end: none.` }),
    platforms,
    h('div', { class: 'row' }, field('min-core', 'Min core level', f.minCore), field('max-core', 'Max core level', f.maxCore)),
    h('div', {}, h('label', { for: 'login' }, f.login, 'Logged-in users only')),
    h('div', { class: 'row' }, field('notify', 'Notify', f.notify), field('rate', 'Rate per second', f.rate)),
    conflict,
    h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary', text: 'Save' }),
      h('a', { href: n ? `#/notice/${n.notice_id}` : '#/notices', text: 'Cancel' })));
  f.login.id = 'login';
  show(n ? `Edit notice ${n.notice_id} (version ${n.version})` : 'New notice', form);
}

/* ---- notice page ---- */

async function renderNotice(/** @type {string} */ id) {
  const r = await call('GET', `/v1/notices/${id}`);
  /** @type {Notice} */
  const n = r.body;
  const actions = ACTIONS.filter((a) => !a.publisher || isPublisher()).map((a) => h('button', {
    type: 'button', class: a.action === 'delete' || a.action === 'retract' ? 'danger' : '', text: a.label,
    disabled: !(/** @type {readonly string[]} */ (a.from)).includes(n.state),
    onclick: () => guarded(async () => {
      if (!(await confirmAction(`${a.label} notice ${n.notice_id}?`, actionEffect(a.action, n)))) return;
      await call(a.action === 'delete' ? 'DELETE' : 'POST', a.action === 'delete' ? `/v1/notices/${id}` : `/v1/notices/${id}/${a.action}`,
        { ifMatch: r.etag ?? undefined });
      if (a.action === 'delete') location.hash = '#/notices';
      else await renderNotice(id);
      setStatus(`${a.label}: done.`);
    }),
  }));
  const editable = ['draft', 'prepublished', 'published'].includes(n.state);
  const details = h('dl', {}, ...[['App', n.app_id], ['State', n.state], ['Version', String(n.version)], ['Validity', validity(n)],
    ['Created', `${formatUs(n.created_at)} by ${n.created_by}`], ['Updated', `${formatUs(n.updated_at)} by ${n.updated_by}`]]
    .flatMap(([k, v]) => [h('dt', { text: k }), h('dd', { text: v })]));
  const chartBox = h('div', { id: 'reach-chart' }, h('p', { class: 'muted', text: 'Loading…' }));
  const auditBox = h('div', { id: 'notice-audit' });
  show(`Notice ${n.notice_id}: ${n.title}`,
    h('div', { class: 'buttons', role: 'group', 'aria-label': 'Lifecycle' },
      editable ? h('button', { type: 'button', text: 'Edit', onclick: () => { location.hash = `#/edit/${id}`; } }) : null, ...actions),
    h('div', { class: 'grid' },
      h('section', { class: 'card', 'aria-labelledby': 'h-details' }, h('h3', { id: 'h-details', text: 'Details' }), details),
      h('section', { class: 'card', 'aria-labelledby': 'h-preview' }, h('h3', { id: 'h-preview', text: 'Preview' }),
        h('p', { id: 'targeting-words', text: `Targets: ${describeTargeting(n)}.` }),
        h('p', { class: 'muted', text: 'The sync item a client receives:' }),
        h('pre', { id: 'sync-item', text: JSON.stringify(syncItem(n), null, 2) }))),
    h('section', { 'aria-labelledby': 'h-reach' }, h('h3', { id: 'h-reach', text: 'Reach' }), chartBox,
      h('button', { type: 'button', text: 'Refresh reach', onclick: () => guarded(() => loadReach(id, chartBox)) })),
    h('section', { 'aria-labelledby': 'h-audit' }, h('h3', { id: 'h-audit', text: 'Audit' }), auditBox));
  await Promise.all([loadReach(id, chartBox), loadAudit(auditBox, id)]);
}

async function loadReach(/** @type {string} */ id, /** @type {HTMLElement} */ box) {
  const { body } = await call('GET', `/v1/notices/${id}/stats`);
  box.replaceChildren(h('p', { id: 'reach-now', text: `Reach now: ${body.reach} users (estimate, ${body.estimate}); ${body.series.length} samples.` }),
    reachChart(body.series));
}

/* ---- audit ---- */

async function loadAudit(/** @type {HTMLElement} */ box, noticeId = '') {
  const { body } = await call('GET', `/v1/audit${qs({ notice_id: noticeId, limit: 200 })}`);
  const changes = auditChanges(body.entries);
  box.replaceChildren(h('table', {},
    h('thead', {}, h('tr', {}, ...['When', 'Who', 'Action', 'Notice', 'App', 'Changes'].map((c) => h('th', { scope: 'col', text: c })))),
    h('tbody', {}, ...body.entries.map((/** @type {any} */ e) => h('tr', {},
      h('td', { text: formatUs(e.at) }), h('td', { text: e.actor }), h('td', { text: e.action }),
      h('td', {}, e.notice_id !== '0' ? h('a', { href: `#/notice/${e.notice_id}`, text: e.notice_id }) : '—'),
      h('td', { text: e.app_id }),
      h('td', {}, h('ul', { class: 'diff' }, ...(changes.get(e.id) ?? []).map((c) => h('li', {}, `${c.field}: `,
        c.before ? h('span', { class: 'diff-del', text: `− ${c.before} ` }) : null,
        c.after ? h('span', { class: 'diff-add', text: `+ ${c.after}` }) : null)))))))));
}

async function renderAudit(/** @type {URLSearchParams} */ q) {
  const nid = q.get('notice') ?? '';
  const input = h('input', { id: 'a-notice', inputmode: 'numeric', value: nid, size: 10 });
  const box = h('div', {});
  show('Audit', h('form', { class: 'row', onsubmit: (/** @type {Event} */ e) => {
    e.preventDefault();
    location.hash = `#/audit${qs({ notice: /** @type {HTMLInputElement} */ (input).value.trim() })}`;
  } }, h('div', {}, h('label', { for: 'a-notice', text: 'Notice' }), input), h('div', {}, h('button', { type: 'submit', text: 'Filter' }))), box);
  await loadAudit(box, nid);
}

/* ---- whitelist ---- */

async function renderWhitelist(/** @type {URLSearchParams} */ q) {
  const app = q.get('app') ?? '';
  const appIn = h('input', { id: 'w-app', inputmode: 'numeric', value: app, size: 8 });
  const pick = h('form', { class: 'row', onsubmit: (/** @type {Event} */ e) => {
    e.preventDefault();
    location.hash = `#/whitelist${qs({ app: /** @type {HTMLInputElement} */ (appIn).value.trim() })}`;
  } }, h('div', {}, h('label', { for: 'w-app', text: 'App' }), appIn), h('div', {}, h('button', { type: 'submit', text: 'Show' })));
  if (!app) {
    show('Whitelist', pick);
    return;
  }
  const { body } = await call('GET', `/v1/whitelist${qs({ app_id: app })}`);
  /** @type {string[]} */
  const uids = body.uids;
  const area = /** @type {HTMLTextAreaElement} */ (h('textarea', { id: 'w-uids', 'aria-describedby': 'w-errors' }));
  const errs = h('ul', { id: 'w-errors', class: 'error', role: 'alert' });
  const change = async (/** @type {string} */ method, /** @type {string[]} */ list, /** @type {string} */ done) => guarded(async () => {
    const r = await call(method, '/v1/whitelist', { body: { app_id: app, uids: list } });
    await renderWhitelist(q);
    setStatus(`${done}: ${r.body.added} added, ${r.body.removed} removed.`);
  });
  const add = h('form', { onsubmit: (/** @type {Event} */ e) => {
    e.preventDefault();
    const { uids: list, errors } = parseUids(area.value);
    errs.replaceChildren(...errors.map((m) => h('li', { text: m })));
    if (errors.length) { setStatus('Nothing added: fix the lines listed.', true); return; }
    if (!list.length) { setStatus('Enter at least one uid.', true); return; }
    change('POST', list, 'Added');
  } }, h('label', { for: 'w-uids', text: 'UIDs' }), area, h('p', { class: 'muted', text: 'One per line or separated by commas.' }), errs,
  h('div', { class: 'buttons' }, h('button', { type: 'submit', class: 'primary', text: 'Add' })));
  const list = h('table', { id: 'w-list' }, h('caption', { id: 'w-count', text: `${uids.length} uids on the whitelist of app ${app}` }),
    h('thead', {}, h('tr', {}, h('th', { scope: 'col', text: 'UID' }), h('th', { scope: 'col', text: '' }))),
    h('tbody', {}, ...uids.map((u) => h('tr', {}, h('td', { text: u }),
      h('td', {}, h('button', { type: 'button', class: 'danger', text: 'Remove', 'aria-describedby': `uid-${u}`,
        onclick: () => change('DELETE', [u], 'Removed') }), h('span', { id: `uid-${u}`, hidden: true, text: `uid ${u}` }))))));
  show(`Whitelist of app ${app}`, pick, add, list);
}

/* ---- routing ---- */

async function route() {
  if (!me) return;
  const [path, query = ''] = location.hash.replace(/^#/, '').split('?');
  const q = new URLSearchParams(query);
  const parts = path.split('/').filter(Boolean);
  await guarded(async () => {
    if (parts[0] === 'new') renderForm(null);
    else if (parts[0] === 'edit' && parts[1]) {
      const r = await call('GET', `/v1/notices/${parts[1]}`);
      renderForm({ notice: r.body, etag: r.etag ?? '' });
    } else if (parts[0] === 'notice' && parts[1]) await renderNotice(parts[1]);
    else if (parts[0] === 'whitelist') await renderWhitelist(q);
    else if (parts[0] === 'audit') await renderAudit(q);
    else await renderList(q);
  });
}

window.addEventListener('hashchange', route);

async function start() {
  const t = token.get();
  if (!t) { renderSignIn(); return; }
  try {
    signedIn((await call('GET', '/v1/whoami')).body);
  } catch {
    token.clear();
    renderSignIn();
  }
}

start();
