// The OpenAPI contract (docs/openapi.yaml) against the code:
//   1. the document is valid OpenAPI 3.1 (@seriousme/openapi-schema-validator,
//      the official 3.1 JSON schema) and every schema in it compiles under
//      ajv's draft 2020-12;
//   2. the route tables (services/logic/api_routes.c, lcsd's admin routes in
//      services/lcs/lcsd.c, lcsd's /ws) and the document's paths, methods and
//      listeners are the same sets, both ways;
//   3. on a real stack (PostgreSQL, Redis, logicd, lcsd; sdk/js/test/harness.mjs)
//      every operation of the document is driven, with the main error
//      statuses, and every reply is checked: its status is documented for
//      that operation, its Content-Type is one the document lists, its body
//      matches the schema (ajv, draft 2020-12), its required headers are
//      there and match; every JSON request body that succeeded matches the
//      operation's request schema; every method a documented path does not
//      document answers 405 with the documented methods in Allow, and every
//      documented path answers 404 on a listener it is not documented on.
// The test fails when an operation was not exercised.
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { randomBytes } from 'node:crypto';

import YAML from 'yaml';
import Ajv2020 from 'ajv/dist/2020.js';
import addFormats from 'ajv-formats';
import { Validator } from '@seriousme/openapi-schema-validator';

import { REPO, servers, hex, waitFor } from './util.mjs';
import { startStack } from '../../sdk/js/test/harness.mjs';

const DOC_PATH = path.join(REPO, 'docs/openapi.yaml');
const doc = YAML.parse(readFileSync(DOC_PATH, 'utf8'));
const METHODS = ['get', 'post', 'put', 'patch', 'delete', 'head'];
const PORT_LISTENER = { 8080: 'sdk', 8081: 'internal', 8090: 'ws', 8091: 'admin' };

/** The listeners a path item names in its servers (by the ops/run default ports). */
function listenersOf(item) {
  return (item.servers ?? doc.servers).map((s) => {
    const l = PORT_LISTENER[new URL(s.url).port];
    if (!l) throw new Error(`unknown server ${s.url}`);
    return l;
  });
}

/** Every (listener, METHOD, path) the document has. */
function documentedRoutes() {
  const out = new Set();
  for (const [p, item] of Object.entries(doc.paths)) {
    for (const l of listenersOf(item)) {
      for (const m of METHODS) if (item[m]) out.add(`${l} ${m.toUpperCase()} ${p}`);
    }
  }
  return out;
}

/** Every (listener, METHOD, path) of the C route tables. */
function codeRoutes() {
  const out = new Set();
  const table = (file, array, listener) => {
    const src = readFileSync(path.join(REPO, file), 'utf8');
    const m = src.match(new RegExp(`${array}\\[\\]\\s*=\\s*\\{([\\s\\S]*?)\\n\\};`));
    assert.ok(m, `route table ${array} not found in ${file}`);
    const body = m[1].replace(/\/\*[\s\S]*?\*\//g, '');
    let n = 0;
    for (const r of body.matchAll(/\{\s*([A-Z_|\s]+?)\s*,\s*"([^"]+)"\s*,\s*\w+\s*\}/g)) {
      for (const meth of r[1].split('|')) out.add(`${listener} ${meth.trim().replace(/^HTTP_/, '')} ${r[2]}`);
      n++;
    }
    assert.ok(n > 0, `no routes parsed from ${array}`);
  };
  table('services/logic/api_routes.c', 'logic_sdk_routes', 'sdk');
  table('services/logic/api_routes.c', 'logic_internal_routes', 'internal');
  table('services/lcs/lcsd.c', 'admin_routes', 'admin');
  // lcsd's WebSocket listener has one path, compared in conn.c.
  const conn = readFileSync(path.join(REPO, 'services/lcs/conn.c'), 'utf8');
  for (const m of conn.matchAll(/strcmp\(hs\.path, "([^"]+)"\)/g)) out.add(`ws GET ${m[1]}`);
  return out;
}

// ---- ajv over the document's schemas --------------------------------------

const DEFS_ID = 'https://mbox.invalid/openapi.json';
/** A deep copy with #/components/schemas/X refs pointing into the $defs schema. */
function rewrite(x) {
  if (Array.isArray(x)) return x.map(rewrite);
  if (x && typeof x === 'object') {
    const o = {};
    for (const [k, v] of Object.entries(x)) {
      o[k] = k === '$ref' && typeof v === 'string' && v.startsWith('#/components/schemas/')
        ? `${DEFS_ID}#/$defs/${v.slice('#/components/schemas/'.length)}`
        : rewrite(v);
    }
    return o;
  }
  return x;
}

const ajv = new Ajv2020({ strict: true, strictTypes: false, allErrors: true });
addFormats(ajv);
ajv.addSchema({ $id: DEFS_ID, $defs: rewrite(doc.components.schemas) });
const compiled = new Map(); // the schema as JSON -> its validator
function validatorFor(schema) {
  const key = JSON.stringify(schema);
  let v = compiled.get(key);
  if (!v) {
    v = ajv.compile(rewrite(schema));
    compiled.set(key, v);
  }
  return v;
}
function checkSchema(schema, value, what) {
  const v = validatorFor(schema);
  if (!v(value)) {
    throw new Error(`${what}: does not match the document:\n${ajv.errorsText(v.errors, { separator: '\n' })}\n` +
      `value: ${JSON.stringify(value).slice(0, 1500)}`);
  }
}

/** Follows a local $ref of a non-schema object (response, header, parameter). */
function deref(o) {
  while (o && o.$ref) {
    o = o.$ref.slice(2).split('/').reduce((a, k) => a[k.replace(/~1/g, '/').replace(/~0/g, '~')], doc);
  }
  return o;
}

// ---- matching requests to operations ---------------------------------------

const templates = Object.keys(doc.paths).map((p) => ({
  p,
  re: new RegExp(`^${p.replace(/[.*+?^$()|[\]\\]/g, '\\$&').replace(/\{[^}]+\}/g, '[^/]+')}$`),
}));
/** The documented path template of a concrete path on a listener, or null. */
function templateFor(listener, p) {
  const bare = p.split('?')[0];
  for (const t of templates) {
    if (t.re.test(bare) && listenersOf(doc.paths[t.p]).includes(listener)) return t.p;
  }
  return null;
}

const seen = new Map(); // "METHOD /template" -> Set of statuses
const statusesSeen = new Set();
let checked = 0;

/**
 * Checks one reply against the document: res is {status, headers (lower-case
 * names → value), body (Buffer)}, req {listener, method, path, body?, json?}.
 */
function checkReply(req, res) {
  const what = `${req.method} ${req.path} on ${req.listener} -> ${res.status}`;
  const tpl = templateFor(req.listener, req.path);
  const m = req.method.toLowerCase();
  statusesSeen.add(res.status);
  checked++;
  let resp;
  if (tpl === null) {
    assert.equal(res.status, 404, `${what}: a path the document does not have on ${req.listener} must be 404`);
    resp = deref(doc.components.responses[req.listener === 'ws' ? 'WsError' : 'NotFound']);
  } else if (!doc.paths[tpl][m]) {
    // A method the path does not document: 405 from the HTTP layer, and the
    // Allow header names exactly the documented ones.
    assert.equal(res.status, 405, `${what}: ${req.method} is not documented for ${tpl}`);
    resp = deref(doc.components.responses.MethodNotAllowed);
    const allow = new Set((res.headers.allow ?? '').split(',').map((s) => s.trim().toLowerCase()).filter(Boolean));
    const documented = new Set(METHODS.filter((x) => doc.paths[tpl][x]));
    assert.deepEqual([...allow].sort(), [...documented].sort(), `${what}: Allow differs from the documented methods`);
  } else {
    const op = doc.paths[tpl][m];
    resp = deref(op.responses[String(res.status)]);
    assert.ok(resp, `${what}: status ${res.status} is not documented for ${req.method} ${tpl} ` +
      `(documented: ${Object.keys(op.responses).join(' ')}); body ${res.body.toString().slice(0, 300)}`);
    const key = `${req.method} ${tpl}`;
    if (!seen.has(key)) seen.set(key, new Set());
    seen.get(key).add(res.status);
    // A JSON request that succeeded must be one the request schema allows.
    const rb = op.requestBody && deref(op.requestBody);
    if (res.status < 300 && req.json !== undefined && rb?.content?.['application/json']?.schema) {
      checkSchema(rb.content['application/json'].schema, req.json, `${what}: request body`);
    }
  }
  for (const [name, h0] of Object.entries(resp.headers ?? {})) {
    const h = deref(h0);
    const v = res.headers[name.toLowerCase()];
    if (v === undefined) {
      assert.ok(!h.required, `${what}: required header ${name} missing`);
      continue;
    }
    if (h.schema) checkSchema(h.schema, v, `${what}: header ${name}`);
  }
  const noBody = req.method === 'HEAD' || [101, 204, 304].includes(res.status);
  if (noBody) {
    assert.equal(res.body.length, 0, `${what}: a body where none is allowed`);
    return;
  }
  if (!resp.content) {
    assert.equal(res.body.length, 0, `${what}: a body the document does not describe`);
    return;
  }
  const ctype = (res.headers['content-type'] ?? '').split(';')[0].trim().toLowerCase();
  const media = resp.content[ctype];
  assert.ok(media, `${what}: Content-Type ${ctype} not documented (${Object.keys(resp.content).join(', ')})`);
  if (ctype === 'application/json' && media.schema) {
    let body;
    try {
      body = JSON.parse(res.body.toString('utf8'));
    } catch (e) {
      throw new Error(`${what}: body is not JSON: ${res.body.toString().slice(0, 200)}`);
    }
    checkSchema(media.schema, body, `${what}: body`);
  } else if (ctype.startsWith('text/') && media.schema) {
    checkSchema(media.schema, res.body.toString('utf8'), `${what}: body`);
  }
}

// ---- clients ---------------------------------------------------------------

let stack;
const url = {};
const ports = {};

/**
 * One request through fetch; the reply is checked against the document.
 * opts: {token, headers, body (object → JSON, string/Buffer → as is), expect}.
 * Returns {status, headers, body, json}.
 */
async function call(listener, method, p, opts = {}) {
  const headers = { ...(opts.headers ?? {}) };
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  let body;
  let json;
  if (opts.body !== undefined) {
    if (Buffer.isBuffer(opts.body) || typeof opts.body === 'string') {
      body = opts.body;
    } else {
      json = opts.body;
      body = JSON.stringify(opts.body);
      headers['Content-Type'] ??= 'application/json';
    }
  }
  const r = await fetch(url[listener] + p, { method, headers, body, redirect: 'manual' });
  const buf = Buffer.from(await r.arrayBuffer());
  const res = { status: r.status, headers: Object.fromEntries([...r.headers].map(([k, v]) => [k.toLowerCase(), v])), body: buf };
  checkReply({ listener, method, path: p, json }, res);
  if (opts.expect !== undefined) {
    assert.equal(res.status, opts.expect, `${method} ${p} on ${listener}: ${buf.toString().slice(0, 300)}`);
  }
  const ct = res.headers['content-type'] ?? '';
  if (ct.startsWith('application/json') && buf.length) res.json = JSON.parse(buf.toString('utf8'));
  return res;
}

/**
 * Raw bytes to a listener; parses one HTTP reply (until Content-Length, the
 * end of the head for a 101, or the close). Checked against the document
 * as a request of method and path.
 */
async function raw(listener, method, p, bytes, { waitMs = 8000, expect } = {}) {
  const res = await new Promise((resolve, reject) => {
    const s = net.connect(ports[listener], '127.0.0.1');
    let buf = Buffer.alloc(0);
    const timer = setTimeout(() => { s.destroy(); reject(new Error(`no reply to raw ${method} ${p} in ${waitMs} ms`)); }, waitMs);
    const finish = () => {
      const end = buf.indexOf('\r\n\r\n');
      if (end < 0) return false;
      const head = buf.subarray(0, end).toString('latin1').split('\r\n');
      const status = Number(head[0].split(' ')[1]);
      const headers = {};
      for (const line of head.slice(1)) {
        const i = line.indexOf(':');
        headers[line.slice(0, i).trim().toLowerCase()] = line.slice(i + 1).trim();
      }
      const len = status === 101 ? 0 : Number(headers['content-length'] ?? -1);
      if (len >= 0 && buf.length < end + 4 + len) return false;
      clearTimeout(timer);
      s.destroy();
      resolve({ status, headers, body: len >= 0 ? buf.subarray(end + 4, end + 4 + len) : buf.subarray(end + 4) });
      return true;
    };
    s.on('data', (d) => { buf = Buffer.concat([buf, d]); finish(); });
    s.on('end', () => { if (!finish()) { clearTimeout(timer); reject(new Error(`closed without a reply: ${buf}`)); } });
    s.on('error', (e) => { clearTimeout(timer); if (!finish()) reject(e); });
    s.write(bytes);
  });
  checkReply({ listener, method, path: p }, res);
  if (expect !== undefined) assert.equal(res.status, expect, `raw ${method} ${p}: ${res.body.toString().slice(0, 200)}`);
  return res;
}

// Protobuf: a varint field and a length-delimited field, enough for small requests.
const varint = (n) => {
  const out = [];
  let v = BigInt(n);
  do {
    let b = Number(v & 0x7fn);
    v >>= 7n;
    if (v) b |= 0x80;
    out.push(b);
  } while (v);
  return out;
};
const pbVarint = (field, n) => [...varint(field << 3), ...varint(n)];
const PB = 'application/x-protobuf';

// ---- the tests --------------------------------------------------------------

test('docs/openapi.yaml is a valid OpenAPI 3.1 document and its schemas compile', async () => {
  const v = new Validator();
  const r = await v.validate(structuredClone(doc));
  assert.equal(v.version, '3.1');
  assert.ok(r.valid, `not valid OpenAPI 3.1: ${JSON.stringify(r.errors, null, 1)?.slice(0, 3000)}`);
  // The validator can fail: a document without info, or with a response
  // that is not an object, is refused.
  const broken = structuredClone(doc);
  delete broken.info;
  assert.equal((await new Validator().validate(broken)).valid, false);
  const broken2 = structuredClone(doc);
  broken2.paths['/v1/sync'].post.responses['200'] = 'ok';
  assert.equal((await new Validator().validate(broken2)).valid, false);
  // Every schema, parameter and header schema compiles; every $ref resolves.
  for (const s of Object.values(doc.components.schemas)) validatorFor(s);
  const walk = (o, where) => {
    if (Array.isArray(o)) return o.forEach((x, i) => walk(x, `${where}/${i}`));
    if (!o || typeof o !== 'object') return;
    if (typeof o.$ref === 'string') {
      assert.ok(deref({ $ref: o.$ref }), `${where}: $ref ${o.$ref} does not resolve`);
    }
    if (o.schema && typeof o.schema === 'object') validatorFor(o.schema);
    for (const [k, v] of Object.entries(o)) walk(v, `${where}/${k}`);
  };
  walk(doc.paths, '#/paths');
  walk(doc.components.responses, '#/components/responses');
  // The error body schema refuses what is not an error.
  assert.throws(() => checkSchema(doc.components.schemas.Error, { error: { code: 'nope' } }, 'Error'));
});

test('the route tables and the document name the same routes, both ways', () => {
  const code = codeRoutes();
  const documented = documentedRoutes();
  const missing = [...code].filter((r) => !documented.has(r));
  const extra = [...documented].filter((r) => !code.has(r));
  assert.deepEqual(missing, [], `routes in the code but not in docs/openapi.yaml: ${missing.join('; ')}`);
  assert.deepEqual(extra, [], `routes in docs/openapi.yaml but not in the code: ${extra.join('; ')}`);
});

test('live replies of every operation match the document', { timeout: 240000 }, async (t) => {
  const opsToken = hex(16);
  const editorToken = hex(16);
  // The environment wins over the config file (docs/config.md).
  process.env.LOGICD_OPS_TOKENS = `tester:${opsToken},ed:${editorToken}:editor`;
  stack = await startStack({
    logicdConfig: [
      'sdk_health = true',
      `console_dir = ${path.join(REPO, 'console/www')}`,
      'http_head_timeout_s = 1',
    ].join('\n'),
  });
  delete process.env.LOGICD_OPS_TOKENS;
  stack.opsToken = opsToken;
  t.after(() => stack.stop());
  Object.assign(ports, { sdk: stack.sdkPort, internal: stack.internalPort, ws: stack.wsPort, admin: stack.adminPort });
  for (const [l, p] of Object.entries(ports)) url[l] = `http://127.0.0.1:${p}`;
  const key = stack.serverKey;
  const ops = opsToken;

  // ---- business servers
  const tok = (await call('internal', 'POST', '/v1/tokens', { token: key, body: { app_id: '1', uid: '9', ttl_s: 3600 }, expect: 200 })).json.token;
  await call('internal', 'POST', '/v1/tokens', { token: key, body: { app_id: '1' }, expect: 400 });
  await call('internal', 'POST', '/v1/tokens', { token: ops, body: { app_id: '1', uid: '9' }, expect: 401 });
  await call('internal', 'POST', '/v1/tokens', { body: { app_id: '1', uid: '9' }, expect: 401 });
  const pbTok = await call('internal', 'POST', '/v1/tokens', {
    token: key, headers: { 'Content-Type': PB, Accept: PB }, body: Buffer.from([...pbVarint(1, 1), ...pbVarint(2, 9)]), expect: 200,
  });
  assert.match(pbTok.headers['content-type'], /^application\/x-protobuf/);
  await call('internal', 'POST', '/v1/tokens', { token: key, headers: { 'Content-Type': 'image/png' }, body: 'x', expect: 415 });
  await call('internal', 'POST', '/v1/tokens', { token: key, body: { app_id: '1', uid: '9', color: 'red' }, expect: 400 });

  const msgkey = `k-${hex(4)}`;
  const sent = await call('internal', 'POST', '/v1/messages', {
    token: key, body: { app_id: '1', from_uid: '7', to_uids: ['9', '8'], store_sender: true, msgkey, content: 'hello' }, expect: 200,
  });
  const msgId = sent.json.results[0].msg_id;
  const dup = await call('internal', 'POST', '/v1/messages', {
    token: key, body: { app_id: '1', from_uid: '7', to_uids: ['9'], msgkey, content: 'hello' }, expect: 200,
  });
  assert.equal(dup.json.results[0].duplicate, true);
  await call('internal', 'POST', '/v1/messages', { token: key, headers: { Accept: PB }, body: { app_id: '1', to_uids: [9], content: 'pb' }, expect: 200 });
  await call('internal', 'POST', '/v1/messages', { token: key, body: { app_id: '1', to_uids: [], content: 'x' }, expect: 400 });
  await call('internal', 'POST', '/v1/messages', { token: key, body: { app_id: '1', to_uids: ['9'], content: 'x'.repeat(65537) }, expect: 413 });
  const second = await call('internal', 'POST', '/v1/messages', { token: key, body: { app_id: '1', to_uids: ['9'], content: 'to recall' }, expect: 200 });

  await call('internal', 'POST', '/v1/messages/recall', { token: key, body: { app_id: '1', uid: '9', msg_id: second.json.results[0].msg_id }, expect: 200 });
  await call('internal', 'POST', '/v1/messages/recall', { token: key, body: { app_id: '1', uid: '9', msg_id: second.json.results[0].msg_id }, expect: 200 });
  await call('internal', 'POST', '/v1/messages/recall', { token: key, body: { app_id: '1', uid: '9', msgkey: 'no-such-key' }, expect: 404 });
  await call('internal', 'POST', '/v1/messages/recall', { token: key, body: { app_id: '1', uid: '9' }, expect: 400 });

  await call('internal', 'POST', '/v1/fanout', { token: key, body: '{"app_id":"1","from_uid":"7","content":"bulk"}\n21\n22\n', expect: 200 });
  await call('internal', 'POST', '/v1/fanout', { token: key, body: '{"app_id":"1","content":"bulk"}\n', expect: 400 });
  await call('internal', 'POST', '/v1/fanout', { token: key, body: '{"app_id":"1","content":"bulk"}\nnine\n', expect: 400 });

  // ---- operators
  const created = await call('internal', 'POST', '/v1/notices', {
    token: ops,
    body: { app_id: '1', title: 'Maintenance', content: 'tonight', targeting: { platforms: ['ios'] }, notify: { mode: 'paced', rate_per_s: 100 } },
    expect: 201,
  });
  const nid = created.json.notice_id;
  assert.equal(created.headers.etag, '"1"');
  await call('internal', 'POST', '/v1/notices', { token: ops, body: { app_id: '1' }, expect: 400 });
  await call('internal', 'POST', '/v1/notices', { token: ops, body: { app_id: '1', title: 't', state: 'published' }, expect: 400 });
  await call('internal', 'POST', '/v1/notices', { token: key, body: { app_id: '1', title: 't' }, expect: 401 });
  await call('internal', 'GET', `/v1/notices?app_id=1&state=draft&limit=10`, { token: ops, expect: 200 });
  await call('internal', 'GET', `/v1/notices`, { token: ops, headers: { Accept: PB }, expect: 200 });
  await call('internal', 'GET', `/v1/notices?state=gone`, { token: ops, expect: 400 });
  await call('internal', 'GET', `/v1/notices/${nid}`, { token: editorToken, expect: 200 });
  await call('internal', 'GET', `/v1/notices/987654321`, { token: ops, expect: 404 });
  await call('internal', 'GET', `/v1/notices/abc`, { token: ops, expect: 400 });
  await call('internal', 'PATCH', `/v1/notices/${nid}`, { token: ops, headers: { 'If-Match': '"1"' }, body: { content: 'moved', start_at: '2026-01-01T00:00:00Z' }, expect: 200 });
  const pre = await call('internal', 'PATCH', `/v1/notices/${nid}`, { token: ops, headers: { 'If-Match': '"1"' }, body: { content: 'again' }, expect: 412 });
  assert.equal(pre.json.error.current_version, 2);
  await call('internal', 'PATCH', `/v1/notices/${nid}`, { token: ops, headers: { 'If-Match': 'W/"2"' }, body: { content: 'x' }, expect: 400 });
  await call('internal', 'PATCH', `/v1/notices/${nid}`, { token: ops, body: { app_id: '1' }, expect: 400 });
  await call('internal', 'PATCH', `/v1/notices/${nid}`, { token: ops, body: { content: 'x'.repeat(65537) }, expect: 413 });
  await call('internal', 'POST', `/v1/notices/${nid}/stop`, { token: ops, expect: 409 });
  await call('internal', 'POST', `/v1/notices/${nid}/publish`, { token: editorToken, expect: 403 });
  await call('internal', 'POST', `/v1/notices/${nid}/prepublish`, { token: editorToken, headers: { 'If-Match': '2' }, expect: 200 });
  await call('internal', 'POST', `/v1/notices/${nid}/publish`, { token: ops, headers: { 'If-Match': '"9"' }, expect: 412 });
  await call('internal', 'POST', `/v1/notices/${nid}/publish`, { token: ops, headers: { Accept: PB }, expect: 200 });
  await call('internal', 'PATCH', `/v1/notices/${nid}`, { token: editorToken, body: { title: 'Edited' }, expect: 403 });
  await call('internal', 'PATCH', `/v1/notices/${nid}`, { token: ops, body: { title: 'Edited' }, expect: 200 });
  await call('internal', 'DELETE', `/v1/notices/${nid}`, { token: ops, expect: 409 });
  await call('internal', 'DELETE', `/v1/notices/${nid}`, { token: editorToken, expect: 403 });
  await call('internal', 'POST', `/v1/notices/987654321/publish`, { token: ops, expect: 404 });

  // A second notice to retract, one to stop and delete.
  const n2 = (await call('internal', 'POST', '/v1/notices', { token: ops, body: { app_id: '1', title: 'Retracted', content: 'r' }, expect: 201 })).json.notice_id;
  const n3 = (await call('internal', 'POST', '/v1/notices', { token: ops, body: { app_id: '1', title: 'Stopped', content: 's' }, expect: 201 })).json.notice_id;
  await call('internal', 'POST', `/v1/notices/${n2}/publish`, { token: ops, expect: 200 });
  await call('internal', 'POST', `/v1/notices/${n3}/publish`, { token: ops, expect: 200 });

  await call('internal', 'POST', '/v1/whitelist', { token: ops, body: { app_id: '1', uids: ['9', '10'] }, expect: 200 });
  await call('internal', 'PUT', '/v1/whitelist', { token: ops, body: { app_id: '1', uids: ['9', '10', '11'] }, expect: 200 });
  await call('internal', 'DELETE', '/v1/whitelist', { token: ops, body: { app_id: '1', uids: ['11'] }, expect: 200 });
  await call('internal', 'POST', '/v1/whitelist', { token: ops, body: { app_id: '1', uids: [] }, expect: 400 });
  await call('internal', 'GET', '/v1/whitelist?app_id=1', { token: editorToken, expect: 200 });
  await call('internal', 'GET', '/v1/whitelist?app_id=1', { token: ops, headers: { Accept: PB }, expect: 200 });
  await call('internal', 'GET', '/v1/whitelist', { token: ops, expect: 400 });
  await call('internal', 'GET', `/v1/audit?notice_id=${nid}&limit=50`, { token: ops, expect: 200 });
  await call('internal', 'GET', '/v1/audit', { token: ops, expect: 200 });
  await call('internal', 'GET', '/v1/audit?limit=x', { token: ops, expect: 400 });
  await call('internal', 'GET', '/v1/whoami', { token: ops, expect: 200 });
  await call('internal', 'GET', '/v1/whoami', { token: editorToken, expect: 200 });
  await call('internal', 'GET', '/v1/whoami', { token: key, expect: 401 });

  // ---- the SDK: the notices reach the cache within a poll interval (200 ms)
  const ios = { platform: 'ios', app_version: '8.0.25', core_level: '220819' };
  let cursor = '';
  const items = [];
  await waitFor(async () => {
    const r = await call('sdk', 'POST', '/v1/sync', { token: tok, headers: ios, body: { cursor, limit: 100 }, expect: 200 });
    items.push(...r.json.items);
    cursor = r.json.cursor;
    return [nid, n2, n3].every((n) => items.some((i) => i.kind === 'notice' && i.notice_id === n));
  }, 10000, 'the notices in a sync');
  assert.ok(items.some((i) => i.kind === 'message'));
  await call('sdk', 'POST', '/v1/sync', { token: tok, headers: { 'Content-Type': PB, Accept: PB }, body: Buffer.alloc(0), expect: 200 });
  await call('sdk', 'POST', '/v1/sync', { token: tok, body: { cursor: 'not-a-cursor' }, expect: 400 });
  await call('sdk', 'POST', '/v1/sync', { token: tok, body: { cursor: '', limit: 10, extra: 1 }, expect: 400 });
  await call('sdk', 'POST', '/v1/sync', { body: { cursor: '' }, expect: 401 });
  await call('sdk', 'POST', '/v1/sync', { token: 'v1.k1.AAAA.BBBB', body: { cursor: '' }, expect: 401 });
  await call('sdk', 'POST', '/v1/sync', { token: key, body: {}, expect: 401 });
  await call('sdk', 'POST', '/v1/sync', { token: tok, headers: { 'Content-Type': 'application/xml' }, body: '<x/>', expect: 415 });
  await call('sdk', 'POST', '/v1/sync', { token: tok, body: `{"cursor":"${'x'.repeat(300000)}"}`, expect: 413 });
  await call('sdk', 'GET', '/v1/history?order=desc&limit=20', { token: tok, headers: ios, expect: 200 });
  await call('sdk', 'GET', '/v1/history?order=asc&from=0', { token: tok, headers: { Accept: PB }, expect: 200 });
  await call('sdk', 'GET', '/v1/history?order=sideways', { token: tok, expect: 400 });
  await call('sdk', 'GET', '/v1/history', { expect: 401 });
  await call('sdk', 'POST', '/v1/read', { token: tok, headers: ios, body: { msg_ids: [msgId], notice_ids: [nid] }, expect: 200 });
  await call('sdk', 'POST', '/v1/read', { token: tok, body: {}, expect: 400 });
  await call('sdk', 'POST', `/v1/notices/${n3}/hide`, { token: tok, expect: 204 });
  await call('sdk', 'POST', `/v1/notices/987654321/hide`, { token: tok, expect: 404 });
  await call('sdk', 'POST', `/v1/notices/x/hide`, { token: tok, expect: 400 });

  // Recall and retract items: retract n2, then the next sync has a retract item.
  await call('internal', 'POST', `/v1/notices/${n2}/retract`, { token: ops, expect: 200 });
  await call('internal', 'POST', `/v1/notices/${n3}/stop`, { token: ops, expect: 200 });
  await call('internal', 'DELETE', `/v1/notices/${n3}`, { token: ops, headers: { 'If-Match': '"1"' }, expect: 204 });
  await call('internal', 'DELETE', `/v1/notices/${n3}`, { token: ops, expect: 404 });
  await waitFor(async () => {
    const r = await call('sdk', 'POST', '/v1/sync', { token: tok, headers: ios, body: { cursor }, expect: 200 });
    items.push(...r.json.items);
    cursor = r.json.cursor;
    return items.some((i) => i.kind === 'retract');
  }, 10000, 'a retract item');
  const first = await call('sdk', 'POST', '/v1/sync', { token: tok, body: { cursor: '' }, expect: 200 });
  assert.ok(first.json.items.length > 0);
  // The recall row: a fresh user, a message and its recall, synced from the start.
  const tok5 = (await call('internal', 'POST', '/v1/tokens', { token: key, body: { app_id: '1', uid: '5' }, expect: 200 })).json.token;
  const m5 = (await call('internal', 'POST', '/v1/messages', { token: key, body: { app_id: '1', to_uids: ['5'], content: 'r' }, expect: 200 })).json.results[0].msg_id;
  const s5 = await call('sdk', 'POST', '/v1/sync', { token: tok5, body: { cursor: '' }, expect: 200 });
  await call('internal', 'POST', '/v1/messages/recall', { token: key, body: { app_id: '1', uid: '5', msg_id: m5 }, expect: 200 });
  const r5 = await call('sdk', 'POST', '/v1/sync', { token: tok5, body: { cursor: s5.json.cursor }, expect: 200 });
  items.push(...r5.json.items);
  for (const kind of ['message', 'recall', 'notice', 'retract']) {
    assert.ok(items.some((i) => i.kind === kind), `no ${kind} item was validated`);
  }
  await call('internal', 'GET', `/v1/notices/${nid}/stats`, { token: ops, expect: 200 });
  await call('internal', 'GET', `/v1/notices/987654321/stats`, { token: ops, expect: 404 });

  // ---- console, health, metrics
  await call('internal', 'GET', '/console', { expect: 301 });
  await call('internal', 'HEAD', '/console', { expect: 301 });
  const index = await call('internal', 'GET', '/console/', { expect: 200 });
  await call('internal', 'HEAD', '/console/', { expect: 200 });
  await call('internal', 'GET', '/console/', { headers: { 'If-None-Match': index.headers.etag }, expect: 304 });
  await call('internal', 'GET', '/console/app.js', { expect: 200 });
  await call('internal', 'HEAD', '/console/style.css', { expect: 200 });
  await call('internal', 'GET', '/console/nothing.html', { expect: 404 });
  await call('internal', 'GET', '/console/..hidden', { expect: 404 });
  for (const l of ['internal', 'sdk', 'admin']) {
    await call(l, 'GET', '/healthz', { expect: 200 });
    await call(l, 'HEAD', '/healthz', { expect: 200 });
    await call(l, 'GET', '/livez', { expect: 200 });
    await call(l, 'HEAD', '/livez', { expect: 200 });
    await call(l, 'GET', '/readyz', { expect: 200 });
    await call(l, 'HEAD', '/readyz', { expect: 200 });
    const m = await call(l, 'GET', '/metrics', { expect: 200 });
    assert.match(m.headers['content-type'], /^text\/plain/);
  }

  // ---- lcsd's handshake
  const wsKey = randomBytes(16).toString('base64');
  const up = (p, version = 13) => `GET ${p} HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n` +
    `Sec-WebSocket-Key: ${wsKey}\r\nSec-WebSocket-Version: ${version}\r\n\r\n`;
  await raw('ws', 'GET', '/ws', up('/ws'), { expect: 101 });
  await raw('ws', 'GET', '/ws', up('/ws', 8), { expect: 426 });
  await raw('ws', 'GET', '/ws', 'GET /ws HTTP/1.1\r\nHost: x\r\n\r\n', { expect: 400 });
  await raw('ws', 'GET', '/elsewhere', up('/elsewhere'), { expect: 404 });
  await raw('ws', 'GET', '/ws', `GET /ws HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(5000)}\r\n\r\n`, { expect: 431 });

  // ---- errors of the HTTP layer, on documented operations
  await raw('internal', 'GET', '/v1/whoami', 'GET /v1/whoami HTTP/1.1\r\nHost: x\r\n', { expect: 408 }); // head never finished (1 s)
  await raw('sdk', 'GET', '/v1/history', `GET /v1/history HTTP/1.1\r\nHost: x\r\nX-Big: ${'a'.repeat(17000)}\r\n\r\n`, { expect: 431 });
  await raw('sdk', 'GET', '/v1/history', 'GET /v1/history HTTP/2.0\r\nHost: x\r\n\r\n', { expect: 505 });
  await raw('sdk', 'GET', '/v1/history', 'GET /v1/history HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n', { expect: 501 });
  await raw('sdk', 'GET', '/v1/history', 'GET /v1/history HTTP/1.1\r\n\r\n', { expect: 400 }); // no Host
  // A body without a credential is refused from the head, also on routes
  // that need none without a body; lcsd's admin listener has no credentials.
  const withBody = (p) => `GET ${p} HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}`;
  await raw('internal', 'GET', '/healthz', withBody('/healthz'), { expect: 401 });
  await raw('sdk', 'GET', '/metrics', withBody('/metrics'), { expect: 401 });
  await raw('internal', 'GET', '/console/', withBody('/console/'), { expect: 401 });
  await raw('admin', 'GET', '/readyz', withBody('/readyz'), { expect: 200 });

  // ---- drift, live: methods a documented path does not document get 405
  // with the documented ones in Allow; paths get 404 on other listeners and
  // unknown paths 404 everywhere.
  const concrete = (p) => p.replace('{id}', String(nid)).replace('{file}', 'index.html');
  for (const [p, item] of Object.entries(doc.paths)) {
    if (p === '/ws') continue;
    for (const l of ['sdk', 'internal', 'admin']) {
      if (!listenersOf(item).includes(l)) {
        await call(l, 'GET', concrete(p), { expect: 404 });
        continue;
      }
      for (const m of METHODS) {
        if (!item[m]) await call(l, m.toUpperCase(), concrete(p), { expect: 405 });
      }
    }
  }
  for (const l of ['sdk', 'internal', 'admin']) {
    await call(l, 'GET', '/v1/not-a-route', { expect: 404 });
    await call(l, 'POST', '/v1/notices/1/hid%65', { token: tok, expect: 404 });
  }

  // ---- dependencies down: 503 with Retry-After, then degraded health
  servers('pg-stop', stack.dir);
  stack.pgStarted = false;
  await waitFor(async () => {
    const r = await call('internal', 'POST', '/v1/messages', { token: key, body: { app_id: '1', to_uids: ['9'], content: 'x' } });
    return r.status === 503;
  }, 20000, 'a send answered 503 with PostgreSQL down');
  await call('sdk', 'GET', '/v1/history', { token: tok });
  await call('internal', 'GET', `/v1/notices/${nid}`, { token: ops, expect: 503 });
  servers('redis-stop', stack.dir);
  stack.redisStarted = false;
  for (const l of ['internal', 'admin']) {
    await waitFor(async () => (await call(l, 'GET', '/healthz')).status === 503, 20000, `${l} /healthz 503`);
    await waitFor(async () => (await call(l, 'GET', '/readyz')).status === 503, 20000, `${l} /readyz 503`);
    await call(l, 'GET', '/livez', { expect: 200 });
  }
  await call('internal', 'GET', `/v1/notices/${nid}/stats`, { token: ops, expect: 503 });

  // ---- coverage: every documented operation was exercised, and the main
  // error statuses came back.
  const notExercised = [];
  for (const [p, item] of Object.entries(doc.paths)) {
    for (const m of METHODS) {
      if (!item[m]) continue;
      const s = seen.get(`${m.toUpperCase()} ${p}`);
      if (!s || ![...s].some((x) => x < 400)) notExercised.push(`${m.toUpperCase()} ${p}`);
    }
  }
  assert.deepEqual(notExercised, [], `operations without a successful live reply: ${notExercised.join(', ')}`);
  for (const s of [101, 204, 301, 304, 400, 401, 403, 404, 405, 408, 409, 412, 413, 415, 426, 431, 501, 503, 505]) {
    assert.ok(statusesSeen.has(s), `no ${s} reply was checked`);
  }
  console.log(`# openapi: ${checked} replies checked against docs/openapi.yaml, ${seen.size} operations`);
});
