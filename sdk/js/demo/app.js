// The demo inbox: one page on the SDK. The URL fragment carries the SDK and
// WebSocket URLs and a user token (ops/run prints it as MBOX_DEMO_URL):
//   /demo/#sync=http://127.0.0.1:8080&ws=ws://127.0.0.1:8090/ws&uid=9&token=v1.…
// The list is the newest page of history, then every item the client
// delivers: recalls and retractions remove what they name, a reset clears it.
import { MboxClient } from '../dist/index.js';

const $ = (id) => document.getElementById(id);
const params = new URLSearchParams(location.hash.slice(1));
const cfg = { sync: params.get('sync'), ws: params.get('ws'), token: params.get('token'), uid: params.get('uid') };

/** Shown items by key: m:<msg_id> for messages, n:<notice_id> for notices. */
const shown = new Map();

function showError(text) {
  $('error').textContent = text;
}

function deviceId() {
  const key = 'mbox-demo:device';
  let id = localStorage.getItem(key);
  if (!id) {
    id = `web-${crypto.getRandomValues(new Uint32Array(2)).join('-')}`;
    localStorage.setItem(key, id);
  }
  return id;
}

function apply(item) {
  switch (item.kind) {
    case 'message':
      shown.set(`m:${item.msg_id}`, item);
      break;
    case 'notice': {
      const had = shown.get(`n:${item.notice_id}`);
      if (!had || had.version <= item.version) shown.set(`n:${item.notice_id}`, item);
      break;
    }
    case 'recall':
      shown.delete(`m:${item.recalled_msg_id}`);
      break;
    case 'retract':
      shown.delete(`n:${item.notice_id}`);
      break;
    default:
      break; // a kind this page does not know yet
  }
}

const byIdDesc = (a, b) => (a.msg_id.length !== b.msg_id.length ? b.msg_id.length - a.msg_id.length : b.msg_id < a.msg_id ? -1 : b.msg_id > a.msg_id ? 1 : 0);

function when(msgId) {
  const ms = Number(BigInt(msgId) / 1000n);
  return new Date(ms).toLocaleString();
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

function render() {
  const list = $('items');
  list.replaceChildren();
  const items = [...shown.values()].sort(byIdDesc);
  $('empty').hidden = items.length > 0;
  for (const it of items) {
    const li = el('li', `${it.kind}${it.is_read ? ' read' : ''}`);
    li.dataset.kind = it.kind;
    li.dataset.msgId = it.msg_id;
    if (it.notice_id) li.dataset.noticeId = it.notice_id;
    const body = el('div', 'body');
    const top = el('div');
    top.append(el('span', 'kind', it.kind), ' ');
    if (it.kind === 'notice') top.append(el('span', 'title', it.title ?? ''), ' ', el('span', 'when', `v${it.version}`));
    else top.append(el('span', 'title', `from ${it.from_uid}`));
    top.append(' ', el('span', 'when', when(it.msg_id)));
    body.append(top, el('div', 'content', String(it.content ?? '')));
    li.append(body);
    if (!it.is_read) {
      const b = el('button', 'read-btn', 'Mark read');
      b.onclick = () => markRead(it);
      li.append(b);
    }
    if (it.kind === 'notice') {
      const b = el('button', 'hide-btn', 'Hide');
      b.onclick = () => hide(it);
      li.append(b);
    }
    list.append(li);
  }
}

let client;

async function markRead(it) {
  try {
    if (it.kind === 'notice') await client.markRead([], [it.notice_id]);
    else await client.markRead([it.msg_id]);
    it.is_read = true;
    render();
  } catch {
    // Shown by the error listener.
  }
}

async function hide(it) {
  try {
    await client.hide(it.notice_id);
    shown.delete(`n:${it.notice_id}`);
    render();
  } catch {
    // Shown by the error listener.
  }
}

function setState(s) {
  $('state').textContent = s;
  $('state').dataset.state = s;
}

async function main() {
  if (!cfg.sync || !cfg.ws || !cfg.token) {
    showError('Open this page with #sync=<SDK URL>&ws=<WebSocket URL>&token=<user token> (ops/run prints MBOX_DEMO_URL).');
    return;
  }
  $('who').textContent = cfg.uid ? `of user ${cfg.uid}` : '';
  $('meta').textContent = `sync ${cfg.sync} · ws ${cfg.ws}`;
  client = new MboxClient({
    syncUrl: cfg.sync, wsUrl: cfg.ws, token: cfg.token, deviceId: deviceId(),
    platform: 'web', appVersion: '1.0.0',
  });
  window.mboxDemo = { client, shown };
  client.on('state', (s) => {
    setState(s);
    if (s === 'online') showError('');
  });
  client.on('error', (e) => showError(`${e.code}: ${e.message}`));
  client.on('reset', () => { shown.clear(); render(); });
  client.on('items', (items) => { items.forEach(apply); render(); });
  try {
    // What is already there (the cursor in localStorage only brings what is new).
    const page = await client.history({ order: 'desc', limit: 50 });
    page.items.forEach(apply);
    render();
  } catch {
    // Shown by the error listener; live updates may still work.
  }
  try {
    await client.start();
  } catch {
    // Shown by the error listener; the client keeps retrying.
  }
  document.body.dataset.started = '1'; // the first catch-up is done (tests wait for it)
}

render();
main();
