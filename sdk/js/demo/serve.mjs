#!/usr/bin/env node
// A small static server for the demo inbox: serves sdk/js/demo/ and
// sdk/js/dist/ (the built SDK the page imports) on loopback only.
//
//   node sdk/js/demo/serve.mjs [--port 8088] [--host 127.0.0.1]
//
// "/" redirects to /demo/. Only GET and HEAD; nothing outside those two
// directories is served. Prints "listening on http://host:port/" once ready.
import http from 'node:http';
import { readFile, stat } from 'node:fs/promises';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const ROOT = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const SERVED = ['demo', 'dist'];
const TYPES = {
  '.html': 'text/html; charset=utf-8',
  '.js': 'text/javascript; charset=utf-8',
  '.mjs': 'text/javascript; charset=utf-8',
  '.css': 'text/css; charset=utf-8',
  '.json': 'application/json',
  '.map': 'application/json',
  '.ts': 'text/plain; charset=utf-8',
  '.png': 'image/png',
  '.svg': 'image/svg+xml',
};

function arg(name, dflt) {
  const i = process.argv.indexOf(`--${name}`);
  return i > 0 && process.argv[i + 1] ? process.argv[i + 1] : dflt;
}
const host = arg('host', '127.0.0.1');
const port = Number(arg('port', '8088'));

/** The file a URL path names, or null when it is outside the served directories. */
function resolve(urlPath) {
  let p;
  try {
    p = decodeURIComponent(urlPath.split('?')[0]);
  } catch {
    return null;
  }
  if (p.includes('\0')) return null;
  if (p.endsWith('/')) p += 'index.html';
  const file = path.resolve(ROOT, '.' + path.posix.normalize(p));
  const top = path.relative(ROOT, file).split(path.sep)[0];
  return SERVED.includes(top) && file.startsWith(ROOT + path.sep) ? file : null;
}

function send(res, status, type, body, head) {
  res.writeHead(status, { 'Content-Type': type, 'Content-Length': Buffer.byteLength(body),
    'Cache-Control': 'no-store', 'X-Content-Type-Options': 'nosniff' });
  res.end(head ? undefined : body);
}

const server = http.createServer(async (req, res) => {
  const head = req.method === 'HEAD';
  if (req.method !== 'GET' && !head) return send(res, 405, 'text/plain', 'method not allowed\n', head);
  if (req.url === '/' || req.url === '/demo') {
    res.writeHead(302, { Location: '/demo/' });
    return res.end();
  }
  if ((req.url ?? '').length > 2048) return send(res, 414, 'text/plain', 'uri too long\n', head);
  const file = resolve(req.url ?? '/');
  if (!file) return send(res, 404, 'text/plain', 'not found\n', head);
  try {
    if (!(await stat(file)).isFile()) return send(res, 404, 'text/plain', 'not found\n', head);
    const body = await readFile(file);
    return send(res, 200, TYPES[path.extname(file)] ?? 'application/octet-stream', body, head);
  } catch {
    return send(res, 404, 'text/plain', 'not found\n', head);
  }
});
server.listen(port, host, () => {
  const a = server.address();
  console.log(`listening on http://${a.address}:${a.port}/`);
});
for (const sig of ['SIGINT', 'SIGTERM']) process.on(sig, () => { server.close(() => process.exit(0)); server.closeAllConnections(); });
