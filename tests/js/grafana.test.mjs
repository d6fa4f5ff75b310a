// ops/grafana/mbox.json against the daemons: every metric name the
// dashboard's PromQL expressions (and its template variables) reference
// must be a series that a running logicd or lcsd exposes on /metrics after
// some traffic (sends, syncs, a paced notice, recalls). The stack is
// PostgreSQL, Redis, logicd and lcsd of MBOX_BUILD_ROOT on free ports
// (sdk/js/test/harness.mjs). Also checked: the dashboard is valid JSON,
// its data source is the ${DS_PROMETHEUS} variable everywhere, and the name
// extraction finds what it must (so an empty extraction cannot pass).
import test from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';

import { REPO, waitFor } from './util.mjs';
import { startStack } from '../../sdk/js/test/harness.mjs';

const DASHBOARD = path.join(REPO, 'ops/grafana/mbox.json');

const KEYWORDS = new Set(['by', 'without', 'on', 'ignoring', 'group_left', 'group_right', 'bool',
  'and', 'or', 'unless', 'offset', 'inf', 'nan', 'atan2']);

/** The metric names a PromQL expression selects (functions, labels, keywords and variables left out). */
export function metricNames(expr) {
  const e = expr
    .replace(/"(?:[^"\\]|\\.)*"/g, '""') // string literals (label values, regexes)
    .replace(/\{[^}]*\}/g, ' ') // label matchers
    .replace(/\[[^\]]*\]/g, ' ') // range and subquery selectors
    .replace(/\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)/g, ' ') // label lists
    .replace(/(?<![a-zA-Z_:])\d[\w.]*/g, ' '); // numbers and durations (0.99, 1e3, 5m)
  const names = new Set();
  for (const m of e.matchAll(/(\$\{?)?([a-zA-Z_:][a-zA-Z0-9_:]*)(\s*\()?/g)) {
    if (m[1] || m[3] || KEYWORDS.has(m[2].toLowerCase())) continue; // variable, function call, keyword
    names.add(m[2]);
  }
  return names;
}

/** Every PromQL expression of the dashboard: panel targets (rows included) and query variables. */
export function dashboardExpressions(dash) {
  const exprs = [];
  const walk = (panels) => {
    for (const p of panels ?? []) {
      for (const t of p.targets ?? []) if (t.expr) exprs.push({ where: `panel "${p.title}"`, expr: t.expr });
      walk(p.panels);
    }
  };
  walk(dash.panels);
  for (const v of dash.templating?.list ?? []) {
    if (v.type !== 'query') continue;
    const q = typeof v.query === 'string' ? v.query : v.query?.query ?? '';
    // label_values(metric, label) and query_result(expr): the metric or the expression.
    const lv = q.match(/^\s*label_values\(\s*(.*),\s*[a-zA-Z_][a-zA-Z0-9_]*\s*\)\s*$/);
    const qr = q.match(/^\s*query_result\((.*)\)\s*$/);
    if (lv) exprs.push({ where: `variable $${v.name}`, expr: lv[1] });
    else if (qr) exprs.push({ where: `variable $${v.name}`, expr: qr[1] });
  }
  return exprs;
}

/** The sample names of a Prometheus text body (histograms as _bucket, _sum, _count). */
export function sampleNames(text) {
  const names = new Set();
  for (const line of text.split('\n')) {
    if (!line || line.startsWith('#')) continue;
    names.add(line.match(/^[a-zA-Z_:][a-zA-Z0-9_:]*/)[0]);
  }
  return names;
}

/** [{name, where}] of the names the dashboard references that no body has. */
export function missingMetrics(dash, bodies) {
  const have = new Set();
  for (const b of bodies) for (const n of sampleNames(b)) have.add(n);
  const missing = [];
  for (const { where, expr } of dashboardExpressions(dash)) {
    for (const name of metricNames(expr)) if (!have.has(name)) missing.push({ name, where });
  }
  return missing;
}

const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8'));

test('the name extraction finds metrics and only metrics', () => {
  assert.deepEqual([...metricNames(
    'histogram_quantile(0.99, sum by (le, route) (rate(mbox_http_request_duration_seconds_bucket{instance=~"$instance",route!="x y"}[$__rate_interval])))',
  )], ['mbox_http_request_duration_seconds_bucket']);
  assert.deepEqual([...metricNames(
    'mbox_build_info{instance=~"$instance"} * on (instance, job) group_left () (time() - process_start_time_seconds)',
  )].sort(), ['mbox_build_info', 'process_start_time_seconds']);
  assert.deepEqual([...metricNames('count(mbox_dependency_up == 0) or vector(0)')], ['mbox_dependency_up']);
  assert.deepEqual([...metricNames('process_open_fds / process_max_fds offset 5m')].sort(),
    ['process_max_fds', 'process_open_fds']);
  // A dashboard naming a series that does not exist is caught.
  const fake = { panels: [{ title: 'x', targets: [{ expr: 'rate(mbox_does_not_exist_total[5m]) + mbox_sync_total' }] }],
    templating: { list: [{ type: 'query', name: 'v', query: 'label_values(mbox_nowhere_info, instance)' }] } };
  assert.deepEqual(missingMetrics(fake, ['mbox_sync_total{path="db"} 1\n']).map((m) => m.name).sort(),
    ['mbox_does_not_exist_total', 'mbox_nowhere_info']);
});

test('the dashboard is importable: ${DS_PROMETHEUS} everywhere, unique ids, expressions present', () => {
  assert.ok(dash.__inputs.some((i) => i.name === 'DS_PROMETHEUS' && i.pluginId === 'prometheus'));
  assert.ok(dash.templating.list.some((v) => v.name === 'DS_PROMETHEUS' && v.type === 'datasource'));
  const ids = new Set();
  for (const p of dash.panels) {
    assert.ok(!ids.has(p.id), `duplicate panel id ${p.id}`);
    ids.add(p.id);
    if (p.type === 'row') continue;
    assert.equal(p.datasource?.uid, '${DS_PROMETHEUS}', `panel "${p.title}" data source`);
    assert.ok(p.targets?.length > 0, `panel "${p.title}" has no query`);
    for (const t of p.targets) assert.equal(t.datasource?.uid, '${DS_PROMETHEUS}', `panel "${p.title}" target`);
  }
  const names = new Set();
  for (const { expr } of dashboardExpressions(dash)) for (const n of metricNames(expr)) names.add(n);
  // What the dashboard is for (docs/deploy.md, Monitoring): each area has its series.
  for (const n of ['mbox_http_requests_total', 'mbox_http_request_duration_seconds_bucket', 'mbox_sync_total',
    'mbox_notify_batches_total', 'mbox_lcs_notify_delivered_total', 'mbox_lcs_connections',
    'mbox_notice_deliveries_total', 'mbox_dependency_up', 'mbox_dependency_latency_seconds_bucket',
    'process_resident_memory_bytes', 'process_cpu_seconds_total', 'mbox_build_info']) {
    assert.ok(names.has(n), `the dashboard does not query ${n}`);
  }
});

test('every metric the dashboard queries exists on a live logicd and lcsd', { timeout: 180000 }, async () => {
  const stack = await startStack();
  try {
    // Traffic: messages, syncs (private side from PostgreSQL, then from the
    // hint), a paced notice seen in a sync (a reach delivery), a recall.
    const tok = await stack.mintToken(42);
    const sync = async (cursor) => {
      const r = await fetch(`${stack.sdkUrl}/v1/sync`, {
        method: 'POST', headers: { Authorization: `Bearer ${tok}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ cursor, limit: 100 }),
      });
      assert.equal(r.status, 200, await r.clone().text());
      return r.json();
    };
    let cursor = '';
    const msgId = await stack.send([42], 'hello');
    await stack.send([42, 43], 'hello both');
    cursor = (await sync(cursor)).cursor;
    const notice = await stack.publishNotice('maintenance', 'tonight');
    await waitFor(async () => {
      const r = await sync(cursor);
      cursor = r.cursor;
      return r.items.some((i) => i.kind === 'notice' && i.notice_id === notice.notice_id);
    }, 15000, 'the notice in a sync');
    await stack.recall(42, msgId);
    await sync(cursor);

    const scrape = async (url) => {
      const r = await fetch(`${url}/metrics`);
      assert.equal(r.status, 200);
      return r.text();
    };
    const adminUrl = `http://127.0.0.1:${stack.adminPort}`;
    // The dependency checks run at start and every 5 s: wait for their first results.
    const [logicd, lcsd] = await waitFor(async () => {
      const b = [await scrape(stack.internalUrl), await scrape(adminUrl)];
      return b.every((t) => /^mbox_dependency_up\{dep="redis"\} 1$/m.test(t)) ? b : null;
    }, 15000, 'the first dependency checks');
    const missing = missingMetrics(dash, [logicd, lcsd]);
    assert.deepEqual(missing, [], `the dashboard queries series no daemon exposes:\n${
      missing.map((m) => `  ${m.name} (${m.where})`).join('\n')}`);
    // Both daemons carry the build and process metrics the Processes row shows.
    for (const t of [logicd, lcsd]) {
      for (const n of ['mbox_build_info', 'process_cpu_seconds_total', 'process_resident_memory_bytes',
        'process_open_fds', 'process_max_fds', 'process_start_time_seconds']) {
        assert.ok(sampleNames(t).has(n), `${n} missing`);
      }
    }
  } finally {
    await stack.stop();
  }
});
