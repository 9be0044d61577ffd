// One self-contained HTML page per experiment: inline CSS, inline SVG, no scripts, no network.

import { duration } from './format.js';
import { extraTableRows, perSeedTableRows, summaryTableRows } from './markdown.js';
import { conditionColors } from './palette.js';
import { curveBands, summarize, type Summary } from './summary.js';
import { diffChartSvg, escapeXml as esc, lineChartSvg } from './svg-chart.js';
import type { ExperimentResult } from './types.js';

const CSS = `
:root { color-scheme: light; }
* { box-sizing: border-box; }
body { margin: 0; background: #f6f7f9; color: #1f2328; font: 14px/1.5 system-ui, -apple-system, "Segoe UI", Roboto, "DejaVu Sans", sans-serif; }
main { max-width: 1140px; margin: 0 auto; padding: 28px 28px 48px; }
header { margin-bottom: 20px; }
h1 { font-size: 24px; margin: 0 0 4px; }
h2 { font-size: 17px; margin: 0 0 10px; }
.scenario { display: inline-block; font-size: 12px; padding: 2px 8px; border-radius: 10px; background: #ddf4ff; color: #0550ae; margin-left: 6px; vertical-align: 3px; font-weight: 500; }
.desc { color: #424a53; margin: 6px 0 12px; max-width: 900px; }
.meta { display: flex; flex-wrap: wrap; gap: 6px 22px; color: #57606a; font-size: 13px; }
.meta b { color: #1f2328; font-weight: 600; }
section.card { background: #fff; border: 1px solid #d8dee4; border-radius: 8px; padding: 18px 20px; margin: 16px 0; }
.scroll { overflow-x: auto; }
table { border-collapse: collapse; font-size: 13px; font-variant-numeric: tabular-nums; }
th, td { padding: 6px 9px; border-bottom: 1px solid #eaeef2; text-align: left; white-space: nowrap; }
th { font-weight: 600; color: #424a53; background: #f6f8fa; border-bottom: 1px solid #d8dee4; white-space: normal; vertical-align: bottom; line-height: 1.3; }
table.wide { width: 100%; }
td.r, th.r { text-align: right; }
tr:last-child td { border-bottom: none; }
.swatch { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 7px; vertical-align: 0; }
.chip { display: inline-block; padding: 1px 8px; border-radius: 10px; font-size: 12px; }
.chip.better { background: #dafbe1; color: #116329; }
.chip.worse { background: #ffebe9; color: #a40e26; }
.chip.nsd { background: #eaeef2; color: #424a53; }
.chip.ref { background: #fff; color: #57606a; border: 1px solid #d8dee4; }
.chip.na { background: #fff8c5; color: #7d4e00; }
.note { color: #57606a; font-size: 12.5px; margin: 10px 0 0; max-width: 980px; }
figure { margin: 0; }
figure svg { max-width: 100%; height: auto; display: block; }
figcaption { color: #57606a; font-size: 12.5px; margin-top: 6px; }
.grid2 { display: grid; grid-template-columns: 1fr 1fr; gap: 16px; }
.grid2 > * { min-width: 0; }
.charts2 { display: grid; grid-template-columns: 1fr 1fr; gap: 12px; }
.charts2 > * { min-width: 0; }
@media (max-width: 900px) { .grid2, .charts2 { grid-template-columns: 1fr; } }
ul { margin: 0; padding-left: 20px; }
.warn { border-color: #d4a72c; background: #fff8c5; }
footer { color: #8c959f; font-size: 12px; margin-top: 24px; }
`;

function chipClass(verdict: string): string {
  if (verdict === 'better than alone') return 'better';
  if (verdict === 'worse than alone') return 'worse';
  if (verdict === 'no significant difference') return 'nsd';
  if (verdict === 'reference') return 'ref';
  return 'na';
}

function table(
  t: { header: string[]; rows: string[][]; align?: ('l' | 'r')[] },
  decorate?: (row: number, col: number, text: string) => string | null,
  wide = false,
): string {
  const a = (i: number) => (t.align?.[i] === 'r' ? ' class="r"' : '');
  const head = `<tr>${t.header.map((h, i) => `<th${a(i)}>${esc(h)}</th>`).join('')}</tr>`;
  const body = t.rows
    .map((r, ri) => `<tr>${r.map((c, ci) => `<td${a(ci)}>${decorate?.(ri, ci, c) ?? esc(c)}</td>`).join('')}</tr>`)
    .join('\n');
  return `<div class="scroll"><table${wide ? ' class="wide"' : ''}><thead>${head}</thead><tbody>\n${body}\n</tbody></table></div>`;
}

export function renderHtml(result: ExperimentResult, summary: Summary = summarize(result)): string {
  const colors = conditionColors(summary.conditions);
  const swatch = (c: string) => `<span class="swatch" style="background:${colors.get(c) ?? '#888'}"></span>${esc(c)}`;

  // Accuracy curves, in percent.
  const acc = curveBands(result, 'acc', summary.device);
  const maxN = Math.max(0, ...acc.flatMap((s) => s.points.map((p) => p.n)));
  const accSeries = acc.map((s) => ({
    name: s.condition,
    color: colors.get(s.condition),
    points: s.points.map((p) => ({ x: p.x, mean: p.mean * 100, lo: p.lo === undefined ? undefined : p.lo * 100, hi: p.hi === undefined ? undefined : p.hi * 100 })),
  }));
  const accSvg = lineChartSvg({
    title: `Test accuracy of ${result.target}`,
    xLabel: 'training step',
    yLabel: 'test accuracy (%)',
    yClamp: [0, 100],
    width: 520,
    height: 380,
    series: accSeries,
  });
  // The gaps that matter are often under a point; a zoom on the second half of training shows them.
  const lastStep = Math.max(0, ...acc.flatMap((s) => s.points.map((p) => p.x)));
  const firstStep = Math.min(lastStep, ...acc.flatMap((s) => s.points.map((p) => p.x)));
  const zoomFrom = firstStep + (lastStep - firstStep) / 2;
  const zoomSeries = accSeries.map((s) => ({ ...s, points: s.points.filter((p) => p.x >= zoomFrom) }));
  const zoomSvg = zoomSeries.some((s) => s.points.length > 1)
    ? lineChartSvg({
        title: `Second half of training (zoomed)`,
        xLabel: 'training step',
        yLabel: 'test accuracy (%)',
        yClamp: [0, 100],
        width: 520,
        height: 380,
        series: zoomSeries,
      })
    : '';

  // Loss curves, only when runs logged a loss.
  const loss = curveBands(result, 'loss', summary.device).filter((s) => s.points.length > 0);
  const lossSvg =
    loss.length > 0
      ? lineChartSvg({
          title: `Training loss of ${result.target}`,
          xLabel: 'training step',
          yLabel: 'loss',
          width: 1060,
          height: 320,
          yClamp: [0, Infinity],
          series: loss.map((s) => ({ name: s.condition, color: colors.get(s.condition), points: s.points })),
        })
      : '';

  // The trust gates over their updates: one line per (condition, seed, pair), so a refused source
  // (the line drops to 0) and an accepted one (rising) can be told apart at a glance.
  const gateRuns = result.runs.filter((r) => r.gates && r.gates.some((g) => g.trace.length > 1));
  const gateSvg = gateRuns.length
    ? lineChartSvg({
        title: 'Trust gate g of the target\'s pairs',
        xLabel: 'gate update (one per accepted feedback)',
        yLabel: 'g',
        yDomain: [0, 1],
        width: 1060,
        height: 320,
        series: gateRuns.flatMap((r) =>
          r.gates!.map((g) => ({
            name: `${r.condition} s${r.seed}${r.gates!.length > 1 ? ` ${g.pairId}` : ''}: ${g.decision}`,
            color: colors.get(r.condition),
            points: g.trace.map((t) => ({ x: t.update, mean: t.gate })),
          })),
        ),
      })
    : '';

  // The other devices of the fleet (sources, peers): their own test accuracy, mean over the
  // mergenet runs' seeds, so a source still early in its training shows.
  const srcRuns = result.runs.filter((r) => r.condition === 'mergenet' && r.sources);
  const srcIds = [...new Set(srcRuns.flatMap((r) => Object.keys(r.sources!)))];
  const sourcesSvg = srcIds.length
    ? lineChartSvg({
        title: 'The other devices (mergenet runs): their own test accuracy',
        xLabel: 'their training step',
        yLabel: 'test accuracy (%)',
        yClamp: [0, 100],
        width: 1060,
        height: 300,
        series: srcIds.map((id, i) => {
          const bySteps = new Map<number, number[]>();
          for (const r of srcRuns) for (const p of r.sources![id] ?? []) bySteps.set(p.step, [...(bySteps.get(p.step) ?? []), p.acc]);
          const points = [...bySteps].sort((a, b) => a[0] - b[0]).map(([x, v]) => ({ x, mean: (100 * v.reduce((a, b) => a + b, 0)) / v.length }));
          return { name: id, color: ['#6b7280', '#0891b2', '#a16207', '#7c3aed'][i % 4], points };
        }),
      })
    : '';

  // Paired differences.
  const diffRows = summary.rows
    .filter((r) => r.diffVsAlone)
    .map((r) => ({
      name: r.condition,
      color: colors.get(r.condition),
      values: r.diffVsAlone!.perSeed.map((p) => ({ label: `seed ${p.seed}`, value: p.diff })),
      mean: r.diffVsAlone!.mean,
      lo: r.diffVsAlone!.ci95[0],
      hi: r.diffVsAlone!.ci95[1],
    }));
  const diffSvg =
    diffRows.length > 0
      ? diffChartSvg({
          title: `Final accuracy minus alone, same seed`,
          xLabel: 'difference in final test accuracy (percentage points)',
          rows: diffRows,
          width: 1060,
          valueFormat: (v) => (Number.isFinite(v) ? `${v > 0 ? '+' : ''}${v.toFixed(1)} pts` : '—'),
        })
      : '';

  const st = summaryTableRows(summary);
  const verdictCol = st.header.indexOf('verdict');
  const summaryHtml = table(st, (ri, ci, text) => {
    if (ci === 0) return swatch(text);
    if (ci === verdictCol) return `<span class="chip ${chipClass(text)}">${esc(text)}</span>`;
    return null;
  }, true);
  const perSeed = perSeedTableRows(summary);
  const perSeedHtml = table(perSeed);
  const extra = extraTableRows(summary);

  const devices = {
    header: ['id', 'model', 'dataset', 'task', 'modality'],
    rows: result.devices.map((d) => [d.id + (d.id === result.target ? ' (target)' : ''), d.model, d.dataset, d.task, d.modality]),
  };
  const pairs = {
    header: ['source', 'source slot', 'target', 'target slot', 'rank', 'T_cycle', 'k'],
    rows: result.pairs.map((p) => [p.source, p.sourceSlot, p.target, p.targetSlot, String(p.rank), String(p.tCycle), String(p.k)]),
    align: ['l', 'l', 'l', 'l', 'r', 'r', 'r'] as ('l' | 'r')[],
  };

  const h: string[] = [];
  h.push('<!DOCTYPE html>', '<html lang="en">', '<head>', '<meta charset="utf-8">');
  h.push('<meta name="viewport" content="width=device-width, initial-scale=1">');
  h.push(`<title>${esc(result.name)} — mergenet-fed report</title>`);
  h.push(`<style>${CSS}</style>`, '</head>', '<body>', '<main>');

  h.push('<header>');
  h.push(`<h1>${esc(result.name)}<span class="scenario">${esc(result.scenario)}</span></h1>`);
  if (result.description) h.push(`<p class="desc">${esc(result.description)}</p>`);
  h.push('<div class="meta">');
  h.push(`<span>target <b>${esc(result.target)}</b></span>`);
  h.push(`<span>seeds <b>${esc(result.seeds.join(', '))}</b> (n = ${result.seeds.length})</span>`);
  h.push(`<span>backend <b>${esc(result.backend)}</b></span>`);
  h.push(`<span>mode <b>${esc(result.mode)}</b></span>`);
  h.push(`<span>started <b>${esc(result.startedAt)}</b></span>`);
  h.push(`<span>took <b>${esc(duration(result.startedAt, result.finishedAt))}</b></span>`);
  h.push('</div>', '</header>');

  if (summary.warnings.length > 0) {
    h.push('<section class="card warn"><h2>Warnings</h2><ul>');
    for (const w of summary.warnings) h.push(`<li>${esc(w)}</li>`);
    h.push('</ul></section>');
  }

  h.push('<section class="card"><h2>Summary over seeds</h2>');
  h.push(summaryHtml);
  h.push(
    '<p class="note">Test accuracy in %, mean ± sample std across seeds. Δ is the paired difference of final accuracy against ' +
      '<i>alone</i> on the same seed, in percentage points, with a 95 % confidence interval from Student t (n − 1 degrees of freedom). ' +
      'The verdict says whether that interval excludes zero. Bytes are per run; “sent / full” compares them with sending the full slot weights for the same cycles.</p>',
  );
  h.push('</section>');

  h.push('<section class="card"><figure>');
  h.push(`<div class="charts2"><div>${accSvg}</div><div>${zoomSvg}</div></div>`);
  h.push(
    `<figcaption>Lines: mean test accuracy across seeds at each logged step (right: steps from ${Math.round(zoomFrom)} on, y axis zoomed). Bands: ±1 sample standard deviation across seeds (up to ${maxN} seeds per step; no band where fewer than 2 seeds logged the step).</figcaption>`,
  );
  h.push('</figure></section>');

  if (diffSvg) {
    h.push('<section class="card"><figure>');
    h.push(diffSvg);
    h.push(
      '<figcaption>Each dot is one seed: the condition’s final accuracy minus <i>alone</i>’s on that seed. The diamond is the mean, the bar its 95 % confidence interval. A bar that crosses the dashed zero line is no significant difference.</figcaption>',
    );
    h.push('</figure></section>');
  }

  if (sourcesSvg) {
    h.push('<section class="card"><figure>');
    h.push(sourcesSvg);
    h.push('<figcaption>Mean over the mergenet runs\' seeds. With a source warm-up, the target started once the sources had trained that many steps; the report\'s notes flag a source that first transferred before half its training.</figcaption>');
    h.push('</figure></section>');
  }

  if (gateSvg) {
    h.push('<section class="card"><figure>');
    h.push(gateSvg);
    h.push(
      '<figcaption>Each line is one pair in one run: the gate g = sigmoid(θ) after each update. The legend gives the guard\'s decision; a refused source\'s gate is 0 from then on and its pair stops.</figcaption>',
    );
    h.push('</figure></section>');
  }

  h.push('<div class="grid2">');
  h.push(`<section class="card"><h2>Final accuracy per seed (%)</h2>${perSeedHtml}</section>`);
  if (extra) h.push(`<section class="card"><h2>Other metrics (mean over seeds)</h2>${table(extra)}</section>`);
  h.push('</div>');

  if (lossSvg) {
    h.push('<section class="card"><figure>');
    h.push(lossSvg);
    h.push('<figcaption>Mean training loss across seeds, band ±1 sample standard deviation.</figcaption>');
    h.push('</figure></section>');
  }

  h.push(`<section class="card"><h2>Devices</h2>${table(devices)}</section>`);
  h.push(`<section class="card"><h2>Pairs</h2>${pairs.rows.length ? table(pairs) : '<p class="note">No pairs.</p>'}</section>`);

  if (result.notes && result.notes.length > 0) {
    h.push('<section class="card"><h2>Notes</h2><ul>');
    for (const n of result.notes) h.push(`<li>${esc(n)}</li>`);
    h.push('</ul></section>');
  }

  h.push('<footer>mergenet-fed simulation report · result.json and curves.csv in the same folder hold the raw data.</footer>');
  h.push('</main>', '</body>', '</html>');
  return h.join('\n');
}
