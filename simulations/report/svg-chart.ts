// Self-contained SVG charts (no scripts, no fonts or files fetched). Output is a pure function of the
// input: coordinates are rounded to 2 decimals and nothing depends on time or randomness.

import { DEFAULT_SERIES_COLORS } from './palette.js';

export interface LineSeries {
  name: string;
  color?: string;
  /** lo/hi draw a translucent band; points without them break the band, not the line. */
  points: { x: number; mean: number; lo?: number; hi?: number }[];
}

export interface LineChartOptions {
  title: string;
  xLabel: string;
  yLabel: string;
  series: LineSeries[];
  width?: number;
  height?: number;
  /** Fixed y range; by default the data range (bands included), widened to round ticks. */
  yDomain?: [number, number];
  /** Keep an automatic y range inside these limits (e.g. [0, 1] for accuracy). */
  yClamp?: [number, number];
  yTickFormat?: (v: number) => string;
  xTickFormat?: (v: number) => string;
}

export function escapeXml(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

const f2 = (v: number) => {
  const r = Math.round(v * 100) / 100;
  return Object.is(r, -0) ? '0' : String(r);
};

/** A "nice" tick step (1, 2, 2.5 or 5 × 10^k) giving about `count` intervals over `span`. */
export function niceStep(span: number, count: number): number {
  if (!(span > 0)) return 1;
  const raw = span / Math.max(1, count);
  const p = Math.pow(10, Math.floor(Math.log10(raw)));
  const m = raw / p;
  const nice = m <= 1 ? 1 : m <= 2 ? 2 : m <= 2.5 ? 2.5 : m <= 5 ? 5 : 10;
  return nice * p;
}

/** Ticks covering [lo, hi] at a nice step, and the domain widened to the outer ticks. */
export function niceTicks(lo: number, hi: number, count: number): { ticks: number[]; domain: [number, number]; step: number } {
  if (!Number.isFinite(lo) || !Number.isFinite(hi)) return niceTicks(0, 1, count);
  if (hi < lo) [lo, hi] = [hi, lo];
  if (hi === lo) {
    const d = lo === 0 ? 1 : Math.abs(lo) * 0.05;
    lo -= d;
    hi += d;
  }
  const step = niceStep(hi - lo, count);
  const eps = step * 1e-9;
  const start = Math.floor((lo + eps) / step) * step;
  const end = Math.ceil((hi - eps) / step) * step;
  const ticks: number[] = [];
  for (let i = 0; start + i * step <= end + eps; i++) ticks.push(Number((start + i * step).toPrecision(12)));
  return { ticks, domain: [start, end], step };
}

/** Fewest decimals that print every multiple of `step` exactly (0.25 → 2, 5 → 0, 0.1 → 1). */
function decimalsFor(step: number): number {
  for (let d = 0; d <= 8; d++) {
    const v = step * Math.pow(10, d);
    if (Math.abs(v - Math.round(v)) < 1e-6 * Math.max(1, v)) return d;
  }
  return 8;
}

/** Approximate rendered width of a label (system sans-serif), for legend layout. */
function textWidth(s: string, fontSize: number): number {
  return s.length * fontSize * 0.54;
}

/** The opening of a chart: the <svg> element, its <title>, a white background and the visible title at x = titleX. */
function svgOpening(title: string, width: number, height: number, titleX: number): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" role="img" aria-label="${escapeXml(title)}" font-family="system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif">`,
    `<title>${escapeXml(title)}</title>`,
    `<rect x="0" y="0" width="${width}" height="${height}" fill="#ffffff"/>`,
    `<text x="${titleX}" y="22" font-size="15" font-weight="600" fill="#1f2328">${escapeXml(title)}</text>`,
  ];
}

/** Line chart with optional bands, axes, ticks, grid and legend. */
export function lineChartSvg(opts: LineChartOptions): string {
  const width = opts.width ?? 760;
  const height = opts.height ?? 420;
  const series = opts.series.map((s, i) => ({ ...s, color: s.color ?? DEFAULT_SERIES_COLORS[i % DEFAULT_SERIES_COLORS.length] }));

  // Legend layout: rows of items under the title, wrapped to the chart width.
  const legendFont = 12;
  const legendItems: { name: string; color: string; x: number; row: number; hasBand: boolean }[] = [];
  {
    let x = 64;
    let row = 0;
    for (const s of series) {
      const w = 30 + textWidth(s.name, legendFont) + 16;
      if (x + w > width - 16 && x > 64) {
        row++;
        x = 64;
      }
      legendItems.push({ name: s.name, color: s.color, x, row, hasBand: s.points.some((p) => p.lo !== undefined && p.hi !== undefined) });
      x += w;
    }
  }
  const legendRows = series.length === 0 ? 0 : Math.max(...legendItems.map((l) => l.row)) + 1;
  const titleH = 30;
  const legendTop = titleH + 6;
  const margin = { top: legendTop + legendRows * 20 + 10, right: 24, bottom: 52, left: 64 };
  const plotW = width - margin.left - margin.right;
  const plotH = Math.max(40, height - margin.top - margin.bottom);

  // Domains.
  const xs: number[] = [];
  const ys: number[] = [];
  for (const s of series)
    for (const p of s.points) {
      if (Number.isFinite(p.x)) xs.push(p.x);
      for (const v of [p.mean, p.lo, p.hi]) if (typeof v === 'number' && Number.isFinite(v)) ys.push(v);
    }
  const xMin = xs.length ? Math.min(...xs) : 0;
  const xMax = xs.length ? Math.max(...xs) : 1;
  const xt = niceTicks(xMin, xMax === xMin ? xMin + 1 : xMax, 8);
  // The x axis spans the data exactly (curves start at step 0 or 1); ticks stay inside it.
  const xDomain: [number, number] = [xMin, xMax === xMin ? xMin + 1 : xMax];
  const xTicks = xt.ticks.filter((t) => t >= xDomain[0] - 1e-9 && t <= xDomain[1] + 1e-9);

  let yt: { ticks: number[]; domain: [number, number]; step: number };
  if (opts.yDomain) {
    const t = niceTicks(opts.yDomain[0], opts.yDomain[1], 6);
    yt = { ticks: t.ticks.filter((v) => v >= opts.yDomain![0] - 1e-9 && v <= opts.yDomain![1] + 1e-9), domain: opts.yDomain, step: t.step };
  } else {
    let lo = ys.length ? Math.min(...ys) : 0;
    let hi = ys.length ? Math.max(...ys) : 1;
    const pad = (hi - lo) * 0.04;
    lo -= pad;
    hi += pad;
    if (opts.yClamp) {
      lo = Math.max(opts.yClamp[0], lo);
      hi = Math.min(opts.yClamp[1], hi);
    }
    yt = niceTicks(lo, hi, 6);
    if (opts.yClamp) {
      yt.domain = [Math.max(opts.yClamp[0], yt.domain[0]), Math.min(opts.yClamp[1], yt.domain[1])];
      yt.ticks = yt.ticks.filter((v) => v >= yt.domain[0] - 1e-9 && v <= yt.domain[1] + 1e-9);
    }
  }
  const yDomain = yt.domain;

  const sx = (x: number) => margin.left + ((x - xDomain[0]) / (xDomain[1] - xDomain[0])) * plotW;
  const sy = (y: number) => margin.top + plotH - ((y - yDomain[0]) / (yDomain[1] - yDomain[0])) * plotH;
  const yFmt = opts.yTickFormat ?? ((v: number) => v.toFixed(decimalsFor(yt.step)));
  const xFmt = opts.xTickFormat ?? ((v: number) => (Math.abs(v) >= 10000 ? `${f2(v / 1000)}k` : v.toFixed(decimalsFor(xt.step))));

  const o = svgOpening(opts.title, width, height, margin.left);

  // Clip so bands and lines never spill outside the plot when the y range is fixed or clamped.
  const clipId = `clip-${hashId(opts.title + width + 'x' + height)}`;
  o.push(`<defs><clipPath id="${clipId}"><rect x="${f2(margin.left)}" y="${f2(margin.top)}" width="${f2(plotW)}" height="${f2(plotH)}"/></clipPath></defs>`);

  // Grid and y ticks.
  o.push('<g class="grid" stroke="#e6e8eb" stroke-width="1">');
  for (const t of yt.ticks) o.push(`<line x1="${f2(margin.left)}" x2="${f2(margin.left + plotW)}" y1="${f2(sy(t))}" y2="${f2(sy(t))}"/>`);
  for (const t of xTicks) o.push(`<line x1="${f2(sx(t))}" x2="${f2(sx(t))}" y1="${f2(margin.top)}" y2="${f2(margin.top + plotH)}" stroke="#f1f2f4"/>`);
  o.push('</g>');

  // Bands first, lines on top.
  o.push(`<g class="bands" clip-path="url(#${clipId})">`);
  for (const s of series) {
    for (const seg of bandSegments(s.points)) {
      const upper = seg.map((p) => `${f2(sx(p.x))},${f2(sy(p.hi as number))}`);
      const lower = seg
        .slice()
        .reverse()
        .map((p) => `${f2(sx(p.x))},${f2(sy(p.lo as number))}`);
      o.push(`<path class="band" data-series="${escapeXml(s.name)}" d="M${upper.join('L')}L${lower.join('L')}Z" fill="${s.color}" fill-opacity="0.16" stroke="none"/>`);
    }
  }
  o.push('</g>');
  o.push(`<g class="lines" clip-path="url(#${clipId})" fill="none" stroke-width="2" stroke-linejoin="round" stroke-linecap="round">`);
  for (const s of series) {
    const pts = s.points.filter((p) => Number.isFinite(p.x) && Number.isFinite(p.mean)).sort((a, b) => a.x - b.x);
    const d = pts.length ? 'M' + pts.map((p) => `${f2(sx(p.x))},${f2(sy(p.mean))}`).join('L') : '';
    o.push(`<path class="series-line" data-series="${escapeXml(s.name)}" d="${d}" stroke="${s.color}"/>`);
    if (pts.length <= 15)
      for (const p of pts) o.push(`<circle cx="${f2(sx(p.x))}" cy="${f2(sy(p.mean))}" r="2.5" fill="${s.color}" stroke="none"/>`);
  }
  o.push('</g>');

  // Axes.
  const axisY = margin.top + plotH;
  o.push('<g class="axes" stroke="#57606a" stroke-width="1" fill="#57606a" font-size="11">');
  o.push(`<line x1="${f2(margin.left)}" x2="${f2(margin.left + plotW)}" y1="${f2(axisY)}" y2="${f2(axisY)}"/>`);
  o.push(`<line x1="${f2(margin.left)}" x2="${f2(margin.left)}" y1="${f2(margin.top)}" y2="${f2(axisY)}"/>`);
  for (const t of xTicks) {
    o.push(`<line x1="${f2(sx(t))}" x2="${f2(sx(t))}" y1="${f2(axisY)}" y2="${f2(axisY + 5)}"/>`);
    o.push(`<text x="${f2(sx(t))}" y="${f2(axisY + 18)}" text-anchor="middle" stroke="none">${escapeXml(xFmt(t))}</text>`);
  }
  for (const t of yt.ticks) {
    o.push(`<line x1="${f2(margin.left - 5)}" x2="${f2(margin.left)}" y1="${f2(sy(t))}" y2="${f2(sy(t))}"/>`);
    o.push(`<text x="${f2(margin.left - 8)}" y="${f2(sy(t) + 4)}" text-anchor="end" stroke="none">${escapeXml(yFmt(t))}</text>`);
  }
  o.push('</g>');
  o.push(`<text x="${f2(margin.left + plotW / 2)}" y="${f2(height - 10)}" text-anchor="middle" font-size="12" fill="#1f2328">${escapeXml(opts.xLabel)}</text>`);
  o.push(
    `<text transform="translate(16 ${f2(margin.top + plotH / 2)}) rotate(-90)" text-anchor="middle" font-size="12" fill="#1f2328">${escapeXml(opts.yLabel)}</text>`,
  );

  // Legend.
  o.push(`<g class="legend" font-size="${legendFont}" fill="#1f2328">`);
  for (const l of legendItems) {
    const y = legendTop + l.row * 20 + 8;
    if (l.hasBand) o.push(`<rect x="${f2(l.x)}" y="${f2(y - 6)}" width="24" height="12" fill="${l.color}" fill-opacity="0.16"/>`);
    o.push(`<line x1="${f2(l.x)}" x2="${f2(l.x + 24)}" y1="${f2(y)}" y2="${f2(y)}" stroke="${l.color}" stroke-width="2.5"/>`);
    o.push(`<text x="${f2(l.x + 30)}" y="${f2(y + 4)}">${escapeXml(l.name)}</text>`);
  }
  o.push('</g>');
  o.push('</svg>');
  return o.join('\n');
}

function bandSegments(points: LineSeries['points']): LineSeries['points'][] {
  const sorted = points.filter((p) => Number.isFinite(p.x)).sort((a, b) => a.x - b.x);
  const segs: LineSeries['points'][] = [];
  let cur: LineSeries['points'] = [];
  for (const p of sorted) {
    if (typeof p.lo === 'number' && typeof p.hi === 'number' && Number.isFinite(p.lo) && Number.isFinite(p.hi)) cur.push(p);
    else {
      if (cur.length >= 2) segs.push(cur);
      cur = [];
    }
  }
  if (cur.length >= 2) segs.push(cur);
  return segs;
}

/** Short deterministic id (FNV-1a) so several charts on one page get distinct clip ids. */
function hashId(s: string): string {
  let h = 0x811c9dc5;
  for (let i = 0; i < s.length; i++) {
    h ^= s.charCodeAt(i);
    h = Math.imul(h, 0x01000193) >>> 0;
  }
  return h.toString(36);
}

// ---- Paired differences: one row per condition, a dot per seed, the mean and its 95 % CI ------

export interface DiffRow {
  name: string;
  color?: string;
  values: { label: string; value: number }[];
  mean: number;
  lo: number;
  hi: number;
}

export interface DiffChartOptions {
  title: string;
  xLabel: string;
  rows: DiffRow[];
  width?: number;
  valueFormat?: (v: number) => string;
}

/** Horizontal dot-and-interval chart around a dashed zero line. */
export function diffChartSvg(opts: DiffChartOptions): string {
  const width = opts.width ?? 760;
  const rowH = 46;
  const labelW = Math.min(220, Math.max(90, ...opts.rows.map((r) => textWidth(r.name, 12) + 20)));
  const margin = { top: 58, right: 28, bottom: 52, left: labelW + 10 };
  const plotW = width - margin.left - margin.right;
  const plotH = Math.max(1, opts.rows.length) * rowH;
  const height = margin.top + plotH + margin.bottom;
  const fmt = opts.valueFormat ?? ((v: number) => (Number.isFinite(v) ? (v > 0 ? '+' : '') + f2(v) : '—'));

  const vals: number[] = [0];
  for (const r of opts.rows) {
    for (const v of r.values) if (Number.isFinite(v.value)) vals.push(v.value);
    for (const v of [r.mean, r.lo, r.hi]) if (Number.isFinite(v)) vals.push(v);
  }
  const lo = Math.min(...vals);
  const hi = Math.max(...vals);
  const span = hi - lo || 1;
  const t = niceTicks(lo - span * 0.05, hi + span * 0.05, 8);
  const [d0, d1] = t.domain;
  const sx = (v: number) => margin.left + ((v - d0) / (d1 - d0)) * plotW;
  const tickFmt = (v: number) => {
    const s = v.toFixed(decimalsFor(t.step));
    return Number(s) === 0 ? '0' : v > 0 ? `+${s}` : s;
  };

  const o = svgOpening(opts.title, width, height, margin.left);
  // Key.
  const ky = 42;
  o.push(`<g class="key" font-size="11" fill="#57606a">`);
  o.push(`<circle cx="${margin.left + 5}" cy="${ky}" r="4" fill="#57606a" fill-opacity="0.35" stroke="#57606a"/>`);
  o.push(`<text x="${margin.left + 14}" y="${ky + 4}">one seed</text>`);
  o.push(`<line x1="${margin.left + 80}" x2="${margin.left + 110}" y1="${ky}" y2="${ky}" stroke="#57606a" stroke-width="3"/>`);
  o.push(`<rect x="${margin.left + 91}" y="${ky - 4}" width="8" height="8" transform="rotate(45 ${margin.left + 95} ${ky})" fill="#57606a"/>`);
  o.push(`<text x="${margin.left + 118}" y="${ky + 4}">mean and 95 % CI (Student t)</text>`);
  o.push('</g>');

  // Row shading first, so the grid and the zero line stay visible on top of it.
  opts.rows.forEach((_, i) => {
    if (i % 2 === 1) o.push(`<rect x="0" y="${f2(margin.top + i * rowH)}" width="${width}" height="${rowH}" fill="#f6f8fa"/>`);
  });
  // Grid, zero line.
  o.push('<g class="grid" stroke="#eceef1">');
  for (const v of t.ticks) o.push(`<line x1="${f2(sx(v))}" x2="${f2(sx(v))}" y1="${margin.top}" y2="${margin.top + plotH}"/>`);
  o.push('</g>');
  o.push(`<line class="zero" x1="${f2(sx(0))}" x2="${f2(sx(0))}" y1="${margin.top - 4}" y2="${margin.top + plotH}" stroke="#57606a" stroke-width="1.2" stroke-dasharray="4 3"/>`);

  opts.rows.forEach((r, i) => {
    const color = r.color ?? DEFAULT_SERIES_COLORS[i % DEFAULT_SERIES_COLORS.length];
    const cy = margin.top + i * rowH + rowH / 2;
    o.push(`<text x="${margin.left - 12}" y="${f2(cy + 4)}" text-anchor="end" font-size="12" fill="#1f2328">${escapeXml(r.name)}</text>`);
    o.push(`<g class="diff-row" data-series="${escapeXml(r.name)}">`);
    // Seeds spread vertically a little so that equal values stay visible.
    const n = r.values.length;
    r.values.forEach((v, j) => {
      if (!Number.isFinite(v.value)) return;
      const dy = n > 1 ? (j - (n - 1) / 2) * Math.min(5, 24 / (n - 1)) : 0;
      o.push(
        `<circle cx="${f2(sx(v.value))}" cy="${f2(cy - 6 + dy)}" r="4" fill="${color}" fill-opacity="0.35" stroke="${color}" stroke-width="1"><title>${escapeXml(`${r.name}, ${v.label}: ${fmt(v.value)}`)}</title></circle>`,
      );
    });
    const ciY = cy + 12;
    if (Number.isFinite(r.lo) && Number.isFinite(r.hi)) {
      o.push(`<line class="ci" x1="${f2(sx(r.lo))}" x2="${f2(sx(r.hi))}" y1="${f2(ciY)}" y2="${f2(ciY)}" stroke="${color}" stroke-width="3"/>`);
      for (const e of [r.lo, r.hi]) o.push(`<line x1="${f2(sx(e))}" x2="${f2(sx(e))}" y1="${f2(ciY - 5)}" y2="${f2(ciY + 5)}" stroke="${color}" stroke-width="1.5"/>`);
    }
    if (Number.isFinite(r.mean)) {
      const mx = sx(r.mean);
      o.push(
        `<rect class="mean" x="${f2(mx - 4.5)}" y="${f2(ciY - 4.5)}" width="9" height="9" transform="rotate(45 ${f2(mx)} ${f2(ciY)})" fill="${color}" stroke="#ffffff" stroke-width="1"><title>${escapeXml(`${r.name} mean: ${fmt(r.mean)}` + (Number.isFinite(r.lo) && Number.isFinite(r.hi) ? ` [${fmt(r.lo)}, ${fmt(r.hi)}]` : ''))}</title></rect>`,
      );
    }
    o.push('</g>');
  });

  const axisY = margin.top + plotH;
  o.push('<g class="axes" stroke="#57606a" fill="#57606a" font-size="11">');
  o.push(`<line x1="${margin.left}" x2="${margin.left + plotW}" y1="${axisY}" y2="${axisY}"/>`);
  for (const v of t.ticks) {
    o.push(`<line x1="${f2(sx(v))}" x2="${f2(sx(v))}" y1="${axisY}" y2="${axisY + 5}"/>`);
    o.push(`<text x="${f2(sx(v))}" y="${axisY + 18}" text-anchor="middle" stroke="none">${escapeXml(tickFmt(v))}</text>`);
  }
  o.push('</g>');
  o.push(`<text x="${f2(margin.left + plotW / 2)}" y="${height - 10}" text-anchor="middle" font-size="12" fill="#1f2328">${escapeXml(opts.xLabel)}</text>`);
  o.push('</svg>');
  return o.join('\n');
}
