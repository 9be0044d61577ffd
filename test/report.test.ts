import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { afterAll, describe, expect, it } from 'vitest';
import { renderHtml } from '../simulations/report/html.js';
import { renderMarkdown } from '../simulations/report/markdown.js';
import { ci95OfMean, mean, pairedDiff, sampleStd, studentTCdf, studentTQuantile } from '../simulations/report/stats.js';
import { curveBands, orderConditions, summarize } from '../simulations/report/summary.js';
import { diffChartSvg, lineChartSvg, niceTicks } from '../simulations/report/svg-chart.js';
import type { ConditionRun, ExperimentResult } from '../simulations/report/types.js';
import { writeReport } from '../simulations/report/write-report.js';

function run(condition: string, seed: number, finalAcc: number, over: Partial<ConditionRun> = {}): ConditionRun {
  return {
    condition,
    seed,
    device: 'tgt',
    curve: [
      { step: 0, acc: 0.1, loss: 2.3 },
      { step: 100, acc: finalAcc - 0.01, loss: 0.5 },
      { step: 200, acc: finalAcc, loss: 0.3 },
    ],
    finalAcc,
    bestAcc: finalAcc + 0.005,
    bytesSent: condition === 'alone' ? 0 : 1000,
    bytesFullWeights: condition === 'alone' ? 0 : 20000,
    wallMs: 12000,
    ...over,
  };
}

function experiment(runs: ConditionRun[], seeds: number[]): ExperimentResult {
  return {
    name: 'unit <test> & co',
    description: 'report unit test',
    scenario: 'unit',
    startedAt: '2025-01-01T00:00:00.000Z',
    finishedAt: '2025-01-01T00:01:30.000Z',
    backend: 'cpu',
    mode: 'inprocess',
    target: 'tgt',
    devices: [
      { id: 'src', model: 'cnn', dataset: 'mnist', task: 'digit', modality: 'image' },
      { id: 'tgt', model: 'mlp', dataset: 'mnist', task: 'digit', modality: 'image' },
    ],
    pairs: [{ source: 'src', sourceSlot: 'conv1', target: 'tgt', targetSlot: 'dense1', rank: 8, tCycle: 50, k: 2 }],
    seeds,
    runs,
    notes: ['a note with | pipe'],
  };
}

/** Minimal XML well-formedness check: every open tag is closed in order, one root, attributes quoted. */
function checkXml(xml: string): { ok: boolean; tags: Map<string, number>; error?: string } {
  const tags = new Map<string, number>();
  const stack: string[] = [];
  const re = /<(\/?)([a-zA-Z][\w:-]*)((?:\s+[\w:-]+="[^"<]*")*)\s*(\/?)>/g;
  let last = 0;
  let roots = 0;
  for (let m = re.exec(xml); m; m = re.exec(xml)) {
    const between = xml.slice(last, m.index);
    if (between.includes('<') || between.includes('>')) return { ok: false, tags, error: `stray markup near ${m.index}: ${between.slice(0, 40)}` };
    if (/&(?!amp;|lt;|gt;|quot;|#39;)/.test(between)) return { ok: false, tags, error: 'unescaped &' };
    last = re.lastIndex;
    const [, close, name, , selfClose] = m;
    if (close) {
      if (stack.pop() !== name) return { ok: false, tags, error: `mismatched </${name}>` };
    } else {
      if (stack.length === 0) roots++;
      tags.set(name, (tags.get(name) ?? 0) + 1);
      if (!selfClose) stack.push(name);
    }
  }
  if (xml.slice(last).trim() !== '') return { ok: false, tags, error: 'trailing text' };
  if (stack.length !== 0) return { ok: false, tags, error: `unclosed ${stack.join(',')}` };
  return { ok: roots === 1, tags, error: roots === 1 ? undefined : `${roots} roots` };
}

describe('stats', () => {
  it('Student t quantiles match the published table', () => {
    const table: [number, number][] = [
      [1, 12.706],
      [2, 4.303],
      [4, 2.776],
      [9, 2.262],
      [19, 2.093],
      [30, 2.042],
      [1e7, 1.96],
    ];
    for (const [df, q] of table) expect(studentTQuantile(0.975, df)).toBeCloseTo(q, 3);
    expect(studentTQuantile(0.995, 1)).toBeCloseTo(63.657, 2);
    expect(studentTQuantile(0.025, 4)).toBeCloseTo(-2.776, 3);
    expect(studentTCdf(0, 7)).toBeCloseTo(0.5, 12);
    expect(studentTCdf(2.262157, 9)).toBeCloseTo(0.975, 6);
  });

  it('mean, sample std and the CI of a known sample', () => {
    expect(mean([2, 4, 4, 4, 5, 5, 7, 9])).toBe(5);
    expect(sampleStd([2, 4, 4, 4, 5, 5, 7, 9])).toBeCloseTo(Math.sqrt(32 / 7), 12);
    expect(Number.isNaN(sampleStd([3]))).toBe(true);
    // 1..5: mean 3, s = sqrt(2.5), half-width = 2.776445 * sqrt(2.5) / sqrt(5) = 1.963243.
    const [lo, hi] = ci95OfMean([1, 2, 3, 4, 5]);
    expect(lo).toBeCloseTo(1.036757, 5);
    expect(hi).toBeCloseTo(4.963243, 5);
    expect(ci95OfMean([1]).every(Number.isNaN)).toBe(true);
  });

  it('pairedDiff pairs by seed and ignores unmatched seeds', () => {
    const a = new Map([
      [1, 0.9],
      [2, 0.8],
      [3, 0.7],
      [4, 0.6],
    ]);
    const b = new Map([
      [4, 0.5],
      [2, 0.7],
      [3, 0.65],
      [5, 0.1],
    ]);
    const d = pairedDiff(a, b);
    expect(d.n).toBe(3);
    expect([...d.diffs.keys()]).toEqual([2, 3, 4]);
    expect(d.diffs.get(2)).toBeCloseTo(0.1, 12);
    expect(d.diffs.get(3)).toBeCloseTo(0.05, 12);
    expect(d.diffs.get(4)).toBeCloseTo(0.1, 12);
    expect(d.mean).toBeCloseTo(0.25 / 3, 12);
    expect(d.std).toBeCloseTo(sampleStd([0.1, 0.05, 0.1]), 12);
    const half = (studentTQuantile(0.975, 2) * d.std) / Math.sqrt(3);
    expect(d.ci95[0]).toBeCloseTo(d.mean - half, 12);
    expect(d.ci95[1]).toBeCloseTo(d.mean + half, 12);
  });
});

describe('summary', () => {
  const seeds = [1, 2, 3, 4, 5];
  const base = [0.8, 0.84, 0.78, 0.82, 0.86];
  const jitter = [0.002, -0.003, 0.001, 0.004, -0.002];
  const noisy = [0.05, -0.05, 0.04, -0.06, 0.01];
  const runs: ConditionRun[] = [];
  seeds.forEach((s, i) => {
    runs.push(run('noise', s, base[i] - 0.05 + jitter[i]));
    runs.push(run('alone', s, base[i]));
    runs.push(run('mergenet', s, base[i] + 0.05 + jitter[i]));
    runs.push(run('fedavg', s, base[i] + noisy[i]));
  });
  const result = experiment(runs, seeds);
  const sum = summarize(result);
  const row = (c: string) => sum.rows.find((r) => r.condition === c)!;

  it('orders conditions alone, mergenet, noise, others; variants after their base', () => {
    expect(sum.conditions).toEqual(['alone', 'mergenet', 'noise', 'fedavg']);
    expect(orderConditions(['zz', 'noise', 'mergenet:heldout', 'alone', 'mergenet'])).toEqual([
      'alone',
      'mergenet',
      'mergenet:heldout',
      'noise',
      'zz',
    ]);
  });

  it('gives the verdict from the CI of the paired difference', () => {
    expect(row('alone').verdict).toBe('reference');
    expect(row('alone').diffVsAlone).toBeNull();
    expect(row('mergenet').verdict).toBe('better than alone');
    expect(row('noise').verdict).toBe('worse than alone');
    expect(row('fedavg').verdict).toBe('no significant difference');
    expect(row('mergenet').diffVsAlone!.mean).toBeCloseTo(5 + mean(jitter) * 100, 9);
    expect(row('mergenet').diffVsAlone!.perSeed.map((p) => p.seed)).toEqual(seeds);
    expect(row('fedavg').diffVsAlone!.ci95[0]).toBeLessThan(0);
    expect(row('fedavg').diffVsAlone!.ci95[1]).toBeGreaterThan(0);
    expect(sum.warnings).toEqual([]);
  });

  it('summarises accuracy, bytes and wall time', () => {
    const a = row('alone');
    expect(a.n).toBe(5);
    expect(a.finalAcc.mean).toBeCloseTo(mean(base), 12);
    expect(a.finalAcc.std).toBeCloseTo(sampleStd(base), 12);
    expect(a.bestAcc.mean).toBeCloseTo(mean(base) + 0.005, 12);
    expect(Number.isNaN(a.bytesRatio)).toBe(true);
    expect(row('mergenet').bytesSent).toBe(1000);
    expect(row('mergenet').bytesRatio).toBeCloseTo(0.05, 12);
    expect(a.wallMs.mean).toBe(12000);
    expect(sum.perSeed[2].seed).toBe(3);
    const f = sum.perSeed[2].finalAcc;
    expect(Object.keys(f)).toEqual(['alone', 'mergenet', 'noise', 'fedavg']);
    expect(f.alone).toBeCloseTo(0.78, 12);
    expect(f.mergenet).toBeCloseTo(0.831, 12);
    expect(f.noise).toBeCloseTo(0.731, 12);
    expect(f.fedavg).toBeCloseTo(0.82, 12);
  });

  it('warns about duplicates and missing seeds, and pairs only shared seeds', () => {
    const r = experiment(
      [run('alone', 1, 0.8), run('alone', 2, 0.7), run('mergenet', 2, 0.75), run('mergenet', 3, 0.9), run('mergenet', 2, 0.1)],
      [1, 2, 3],
    );
    const s = summarize(r);
    const m = s.rows.find((x) => x.condition === 'mergenet')!;
    expect(m.diffVsAlone!.n).toBe(1);
    expect(m.diffVsAlone!.mean).toBeCloseTo(5, 9);
    expect(m.verdict).toBe('too few paired seeds');
    expect(s.warnings.some((w) => w.includes('duplicate') && w.includes('seed 2'))).toBe(true);
    expect(s.warnings.some((w) => w.includes("'alone'") && w.includes('3'))).toBe(true);
  });

  it('curve bands: mean ± 1 std across seeds per step, no band for a step only one seed logged', () => {
    const r = experiment(
      [
        run('alone', 1, 0.8, { curve: [{ step: 0, acc: 0.2 }, { step: 10, acc: 0.6 }, { step: 20, acc: 0.7 }] }),
        run('alone', 2, 0.8, { curve: [{ step: 0, acc: 0.4 }, { step: 10, acc: 0.8 }] }),
      ],
      [1, 2],
    );
    const [b] = curveBands(r);
    expect(b.condition).toBe('alone');
    expect(b.points.map((p) => p.x)).toEqual([0, 10, 20]);
    expect(b.points[0].mean).toBeCloseTo(0.3, 12);
    expect(b.points[0].hi! - b.points[0].mean).toBeCloseTo(sampleStd([0.2, 0.4]), 12);
    expect(b.points[2]).toEqual({ x: 20, mean: 0.7, n: 1 });
  });
});

describe('markdown', () => {
  // alone 80/82/84 → 82.0 ± 2.0; mergenet 81/83/85 → 83.0 ± 2.0, Δ +1.0 on every seed.
  const r = experiment(
    [
      run('alone', 1, 0.8),
      run('alone', 2, 0.82),
      run('alone', 3, 0.84),
      run('mergenet', 1, 0.81),
      run('mergenet', 2, 0.83),
      run('mergenet', 3, 0.85),
      run('noise', 1, 0.79, { wallMs: 30000 }),
      run('noise', 2, 0.83, { wallMs: 31000 }),
      run('noise', 3, 0.83, { wallMs: 32000 }),
    ],
    [1, 2, 3],
  );
  const md = renderMarkdown(r);

  it('has the summary rows with formatted numbers', () => {
    expect(md).toMatch(/\|\s*alone\s*\|\s*3\s*\|\s*82\.0 ± 2\.0\s*\|\s*82\.5 ± 2\.0\s*\|\s*—\s*\|\s*—\s*\|\s*reference\s*\|\s*0 B\s*\|\s*0 B\s*\|\s*—\s*\|\s*12\.0 s\s*\|/);
    expect(md).toMatch(
      /\|\s*mergenet\s*\|\s*3\s*\|\s*83\.0 ± 2\.0\s*\|\s*83\.5 ± 2\.0\s*\|\s*\+1\.0 ± 0\.0\s*\|\s*\[\+1\.0, \+1\.0\]\s*\|\s*better than alone\s*\|\s*1000 B\s*\|\s*19\.5 KiB\s*\|\s*5\.0 %\s*\|\s*12\.0 s\s*\|/,
    );
    // noise: diffs -1, +1, -1 pts → mean -0.3, std 1.2, CI -0.33 ± 4.303·1.155/√3 = [-3.2, +2.5].
    expect(md).toMatch(/\|\s*noise\s*\|\s*3\s*\|\s*81\.7 ± 2\.3\s*\|.*\|\s*-0\.3 ± 1\.2\s*\|\s*\[-3\.2, \+2\.5\]\s*\|\s*no significant difference\s*\|.*\|\s*31\.0 s\s*\|/);
  });

  it('has the per-seed table, devices, pairs, notes, and aligned columns', () => {
    expect(md).toMatch(/\|\s*seed\s*\|\s*alone\s*\|\s*mergenet\s*\|\s*noise\s*\|/);
    expect(md).toMatch(/\|\s*2\s*\|\s*82\.0\s*\|\s*83\.0\s*\|\s*83\.0\s*\|/);
    expect(md).toContain('tgt (target)');
    expect(md).toMatch(/\|\s*src\s*\|\s*conv1\s*\|\s*tgt\s*\|\s*dense1\s*\|\s*8\s*\|\s*50\s*\|\s*2\s*\|/);
    expect(md).toContain('a note with | pipe');
    expect(md).toContain('(1 min 30 s)');
    // Every line of a table has the same length, so it reads in a terminal.
    const summaryLines = md.split('\n').filter((l) => /^\| (condition|-|alone|mergenet|noise) /.test(l) && l.includes('verdict') === false);
    const lengths = new Set(md.split('\n').filter((l) => /^\| (alone|mergenet|noise) +\| +3 /.test(l)).map((l) => l.length));
    expect(summaryLines.length).toBeGreaterThan(0);
    expect(lengths.size).toBe(1);
  });
});

describe('svg charts', () => {
  const series = [
    { name: 'alone', points: [0, 50, 100].map((x, i) => ({ x, mean: 0.2 + i * 0.3, lo: 0.15 + i * 0.3, hi: 0.25 + i * 0.3 })) },
    { name: 'mergenet', color: '#0072b2', points: [0, 50, 100].map((x, i) => ({ x, mean: 0.25 + i * 0.3 })) },
    { name: 'a<b & "c"', points: [0, 100].map((x) => ({ x, mean: 0.5, lo: 0.4, hi: 0.6 })) },
  ];
  const svg = lineChartSvg({ title: 'T & <acc>', xLabel: 'step', yLabel: 'acc', series });

  it('is well-formed, with a line per series and a band per series that has one', () => {
    const chk = checkXml(svg);
    expect(chk.error).toBeUndefined();
    expect(chk.ok).toBe(true);
    expect(svg.startsWith('<svg xmlns="http://www.w3.org/2000/svg"')).toBe(true);
    expect(svg.match(/class="series-line"/g)!.length).toBe(3);
    expect(svg.match(/class="band"/g)!.length).toBe(2);
    expect(svg).toContain('a&lt;b &amp; &quot;c&quot;');
    expect(svg).toContain('T &amp; &lt;acc&gt;');
    expect(svg).not.toMatch(/NaN|undefined|<script/);
    // Ticks: the x axis has 0 and 100 labels.
    expect(svg).toMatch(/>0<\/text>/);
    expect(svg).toMatch(/>100<\/text>/);
  });

  it('is deterministic', () => {
    expect(lineChartSvg({ title: 'T & <acc>', xLabel: 'step', yLabel: 'acc', series })).toBe(svg);
  });

  it('nice ticks cover the range on round numbers', () => {
    const t = niceTicks(0.13, 0.87, 6);
    expect(t.ticks[0]).toBeLessThanOrEqual(0.13);
    expect(t.ticks[t.ticks.length - 1]).toBeGreaterThanOrEqual(0.87);
    for (const v of t.ticks) expect(Math.abs(v / t.step - Math.round(v / t.step))).toBeLessThan(1e-9);
  });

  it('diff chart is well-formed and shows a CI per row', () => {
    const d = diffChartSvg({
      title: 'diff',
      xLabel: 'pts',
      rows: [
        { name: 'mergenet', values: [1, 2, 3].map((v) => ({ label: `seed ${v}`, value: v })), mean: 2, lo: -0.5, hi: 4.5 },
        { name: 'noise', values: [{ label: 'seed 1', value: -1 }], mean: -1, lo: NaN, hi: NaN },
      ],
    });
    const chk = checkXml(d);
    expect(chk.error).toBeUndefined();
    expect(d.match(/class="ci"/g)!.length).toBe(1);
    expect(d.match(/class="mean"/g)!.length).toBe(2);
    expect(chk.tags.get('circle')).toBeGreaterThanOrEqual(4);
    expect(d).not.toMatch(/NaN|undefined/);
  });
});

describe('html and writeReport', () => {
  const seeds = [1, 2, 3];
  const runs = seeds.flatMap((s) => [
    run('alone', s, 0.8 + s * 0.01),
    run('mergenet', s, 0.81 + s * 0.01, { extra: { branchRatio: 0.1 } }),
    run('noise', s, 0.79 + s * 0.01),
    run('distill, "soft"', s, 0.8),
  ]);
  const result = experiment(runs, seeds);
  const dirs: string[] = [];
  afterAll(() => {
    for (const d of dirs) rmSync(d, { recursive: true, force: true });
  });

  it('renders a self-contained page with the table and the charts', () => {
    const html = renderHtml(result);
    expect(html.startsWith('<!DOCTYPE html>')).toBe(true);
    expect(html).not.toMatch(/<script|<link|src=|https?:\/\/(?!www\.w3\.org\/2000\/svg)/);
    expect(html.match(/<svg /g)!.length).toBe(4); // accuracy, zoom, differences, loss
    expect(html).toContain('unit &lt;test&gt; &amp; co');
    expect(html).toContain('better than alone');
    expect(html).toContain('±1 sample standard deviation');
    for (const svg of html.match(/<svg [\s\S]*?<\/svg>/g)!) expect(checkXml(svg).error).toBeUndefined();
  });

  it('writes report.md, report.html, result.json and curves.csv', () => {
    const dir = mkdtempSync(join(tmpdir(), 'report-test-'));
    dirs.push(dir);
    const out = writeReport(result, join(dir, 'nested'));
    for (const p of Object.values(out.paths)) expect(existsSync(p)).toBe(true);
    expect(readFileSync(out.paths.md, 'utf8')).toBe(out.markdown);
    expect(JSON.parse(readFileSync(out.paths.json, 'utf8'))).toEqual(result);
    const csv = readFileSync(out.paths.csv, 'utf8').trimEnd().split('\n');
    expect(csv[0]).toBe('condition,seed,device,step,acc,loss');
    expect(csv.length).toBe(1 + runs.reduce((n, r) => n + r.curve.length, 0));
    expect(csv).toContain('alone,1,tgt,200,0.81,0.3');
    expect(csv).toContain('"distill, ""soft""",2,tgt,0,0.1,2.3');
    expect(readFileSync(out.paths.html, 'utf8')).toContain('<svg ');
  });
});
