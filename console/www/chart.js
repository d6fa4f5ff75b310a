// @ts-check
// The reach chart: an SVG line with one circle per sample, drawn here (no
// library). Points carry <title>s so the figures are readable without
// hovering precision, and the whole chart has a text alternative.

const SVG = 'http://www.w3.org/2000/svg';

/** @param {string} tag @param {Record<string, string | number>} attrs */
function el(tag, attrs) {
  const e = document.createElementNS(SVG, tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, String(v));
  return e;
}

/**
 * Draws series ([{at: µs string, reach: number}], oldest first).
 * @param {{at: string, reach: number}[]} series
 * @returns {SVGSVGElement}
 */
export function reachChart(series, width = 560, height = 200) {
  const pad = { l: 48, r: 12, t: 12, b: 28 };
  const svg = /** @type {SVGSVGElement} */ (el('svg', { width, height, viewBox: `0 0 ${width} ${height}`, class: 'chart', role: 'img' }));
  const last = series[series.length - 1];
  svg.setAttribute('aria-label', series.length
    ? `Reach over time: ${series.length} samples, latest ${last.reach} at ${new Date(Number(BigInt(last.at) / 1000n)).toLocaleString()}`
    : 'Reach over time: no samples yet');
  const xs = series.map((p) => Number(BigInt(p.at) / 1000n));
  const ys = series.map((p) => p.reach);
  const x0 = Math.min(...xs), x1 = Math.max(...xs);
  const y1 = Math.max(1, ...ys);
  const X = (/** @type {number} */ t) => pad.l + (x1 === x0 ? (width - pad.l - pad.r) / 2 : ((t - x0) / (x1 - x0)) * (width - pad.l - pad.r));
  const Y = (/** @type {number} */ v) => height - pad.b - (v / y1) * (height - pad.t - pad.b);
  svg.append(el('line', { x1: pad.l, y1: height - pad.b, x2: width - pad.r, y2: height - pad.b, stroke: '#8a94a3' }));
  svg.append(el('line', { x1: pad.l, y1: pad.t, x2: pad.l, y2: height - pad.b, stroke: '#8a94a3' }));
  for (const v of [0, y1]) {
    const t = el('text', { x: pad.l - 6, y: Y(v) + 4, 'text-anchor': 'end', 'font-size': 11, fill: '#5a6472' });
    t.textContent = String(v);
    svg.append(t);
  }
  if (series.length) {
    for (const [i, t] of [[0, x0], [1, x1]]) {
      if (i === 1 && x1 === x0) break;
      const lab = el('text', { x: X(t), y: height - 8, 'text-anchor': i ? 'end' : 'start', 'font-size': 11, fill: '#5a6472' });
      lab.textContent = new Date(t).toLocaleTimeString();
      svg.append(lab);
    }
    svg.append(el('polyline', {
      points: series.map((p, i) => `${X(xs[i])},${Y(p.reach)}`).join(' '), fill: 'none', stroke: '#1f3a5f', 'stroke-width': 2,
    }));
    series.forEach((p, i) => {
      const c = el('circle', { cx: X(xs[i]), cy: Y(p.reach), r: 3.5, fill: '#f0a202', class: 'point' });
      const title = el('title', {});
      title.textContent = `${new Date(xs[i]).toLocaleString()}: ${p.reach}`;
      c.append(title);
      svg.append(c);
    });
  }
  return svg;
}
