// Markdown summary of one experiment. Tables are padded so the text also reads well in a terminal.

import { bytes, ciPts, duration, num, pct, pctMeanStd, ratioPct, seconds, signedPts } from './format.js';
import { summarize, type Summary } from './summary.js';
import type { ExperimentResult } from './types.js';

function cell(s: string): string {
  return s.replace(/\|/g, '\\|').replace(/\r?\n/g, ' ');
}

/** A Markdown table with columns padded to equal width. `align` per column: 'l' or 'r'. */
/** What each "other metric" column means (shown under the table). */
export const METRIC_NOTES: Record<string, string> = {
  gate: "the trust gate g of the target's pairs at the end of the run (mean over pairs); 0 once its guard refused the source",
  sourceStepFirst: "the training step of the source's slice at the target's first cycle (min over pairs): how far the source had trained when transfer began",
  joined: "the target's pairs whose join-time transfer it kept (the source's mapped slice written into its weight once, at its first transfer)",
  refused: "pairs whose trust gate's guard refused the source (of the target's pairs; 0 if it accepted or had not decided)",
  branchRatio: '‖K‖/‖W‖ of the applied transfers, mean over transfers: how large the knowledge branch was relative to the slot',
  capBound: 'fraction of transfers where the cap (‖K‖ ≤ τ‖W‖) bound, s < 1',
  cycles: "cycles the coordinator started for the target's pairs",
  cycleCoverage: 'cycles started / cycles T_cycle allows over the target\'s steps (1 = every cycle happened)',
  skippedInFlight: "target slices that started no cycle because the previous cycle's feedback had not come",
  updates: 'accepted feedback (each one gate step, and an adapter step where an adapter runs)',
  drops: 'cycles abandoned and feedback refused by the coordinator',
  transfersApplied: 'transfers the target applied',
  feedbackSent: 'feedback messages the target sent',
  fleetWallS: 'wall time of the whole fleet run, including process start-up and source warm-up (s)',
  sourceAcc: "the copy source's own final test accuracy",
  sourceMs: "the copy source's training time (ms)",
  targetMs: "the target's training time after the copy (ms)",
  rank: 'rank of the copied part of the slot',
};

export function markdownTable(header: string[], rows: string[][], align?: ('l' | 'r')[]): string {
  const all = [header, ...rows].map((r) => r.map(cell));
  const widths = header.map((_, i) => Math.max(3, ...all.map((r) => (r[i] ?? '').length)));
  const pad = (s: string, i: number) => (align?.[i] === 'r' ? s.padStart(widths[i]) : s.padEnd(widths[i]));
  const line = (r: string[]) => `| ${r.map((c, i) => pad(c ?? '', i)).join(' | ')} |`;
  const sep = `| ${widths.map((w, i) => (align?.[i] === 'r' ? '-'.repeat(w - 1) + ':' : '-'.repeat(w))).join(' | ')} |`;
  return [line(all[0]), sep, ...all.slice(1).map(line)].join('\n');
}

/** Rows of the main summary table (shared with the HTML renderer). */
export function summaryTableRows(summary: Summary): { header: string[]; rows: string[][]; align: ('l' | 'r')[] } {
  const header = [
    'condition',
    'seeds',
    'final acc %',
    'best acc %',
    'Δ final vs alone (pts)',
    '95 % CI (pts)',
    'verdict',
    'bytes sent / run',
    'full weights / run',
    'sent / full',
    'wall / run',
  ];
  const rows = summary.rows.map((r) => [
    r.condition,
    String(r.n),
    pctMeanStd(r.finalAcc.mean, r.finalAcc.std),
    pctMeanStd(r.bestAcc.mean, r.bestAcc.std),
    r.diffVsAlone ? `${signedPts(r.diffVsAlone.mean)} ± ${Number.isFinite(r.diffVsAlone.std) ? r.diffVsAlone.std.toFixed(1) : '—'}` : '—',
    r.diffVsAlone ? ciPts(r.diffVsAlone.ci95) : '—',
    r.verdict,
    bytes(r.bytesSent),
    bytes(r.bytesFullWeights),
    ratioPct(r.bytesRatio),
    seconds(r.wallMs.mean),
  ]);
  return { header, rows, align: ['l', 'r', 'r', 'r', 'r', 'r', 'l', 'r', 'r', 'r', 'r'] };
}

export function perSeedTableRows(summary: Summary): { header: string[]; rows: string[][]; align: ('l' | 'r')[] } {
  const header = ['seed', ...summary.conditions];
  const rows = summary.perSeed.map((s) => [String(s.seed), ...summary.conditions.map((c) => pct(s.finalAcc[c] ?? NaN))]);
  return { header, rows, align: header.map((_, i) => (i === 0 ? 'l' : 'r')) };
}

export function extraTableRows(summary: Summary): { header: string[]; rows: string[][]; align: ('l' | 'r')[] } | null {
  const keys = [...new Set(summary.rows.flatMap((r) => Object.keys(r.extra)))].sort();
  if (keys.length === 0) return null;
  const header = ['condition', ...keys];
  const rows = summary.rows.map((r) => [r.condition, ...keys.map((k) => num(r.extra[k] ?? NaN))]);
  return { header, rows, align: header.map((_, i) => (i === 0 ? 'l' : 'r')) };
}

export function renderMarkdown(result: ExperimentResult, summary: Summary = summarize(result)): string {
  const out: string[] = [];
  out.push(`# ${result.name}`);
  out.push('');
  if (result.description) out.push(result.description, '');
  out.push(
    `- scenario: ${result.scenario}`,
    `- target device: ${result.target}`,
    `- seeds: ${result.seeds.join(', ')} (n = ${result.seeds.length})`,
    `- backend: ${result.backend}, mode: ${result.mode}`,
    `- started: ${result.startedAt}, finished: ${result.finishedAt} (${duration(result.startedAt, result.finishedAt)})`,
    '',
  );

  const st = summaryTableRows(summary);
  out.push(`## Target ${result.target}: summary over seeds`, '');
  out.push(markdownTable(st.header, st.rows, st.align), '');
  out.push(
    'Accuracies are test accuracy in %, mean ± sample std across seeds. Δ is the paired difference of ' +
      'final accuracy against `alone` on the same seed, in percentage points; the 95 % CI uses Student t ' +
      'with n − 1 degrees of freedom. The verdict says whether that CI excludes zero.',
    '',
  );

  const ps = perSeedTableRows(summary);
  out.push('## Final accuracy per seed (%)', '');
  out.push(markdownTable(ps.header, ps.rows, ps.align), '');

  const gated = result.runs.filter((r) => r.gates && r.gates.length > 0);
  if (gated.length) {
    out.push('## Trust gate decisions', '');
    out.push(
      markdownTable(
        ['condition', 'seed', 'pair', 'channel', 'decision', 'final g', 'updates', 'reason'],
        gated.flatMap((r) =>
          r.gates!.map((g) => [r.condition, String(r.seed), g.pairId, g.channel ?? '', g.decision, (g.trace.at(-1)?.gate ?? 0).toFixed(3), String(g.trace.at(-1)?.update ?? 0), g.reason ?? '']),
        ),
        ['l', 'r', 'l', 'l', 'l', 'r', 'r', 'l'],
      ),
      '',
    );
  }

  const ex = extraTableRows(summary);
  if (ex) {
    out.push('## Other metrics (mean over seeds)', '');
    out.push(markdownTable(ex.header, ex.rows, ex.align), '');
    const known = ex.header.filter((h) => METRIC_NOTES[h]);
    if (known.length) out.push(...known.map((h) => `- \`${h}\`: ${METRIC_NOTES[h]}`), '');
  }

  out.push('## Devices', '');
  out.push(
    markdownTable(
      ['id', 'model', 'dataset', 'task', 'modality'],
      result.devices.map((d) => [d.id + (d.id === result.target ? ' (target)' : ''), d.model, d.dataset, d.task, d.modality]),
    ),
    '',
  );
  out.push('## Pairs', '');
  out.push(
    result.pairs.length === 0
      ? '(none)'
      : markdownTable(
          ['source', 'source slot', 'target', 'target slot', 'rank', 'T_cycle', 'k'],
          result.pairs.map((p) => [p.source, p.sourceSlot, p.target, p.targetSlot, String(p.rank), String(p.tCycle), String(p.k)]),
          ['l', 'l', 'l', 'l', 'r', 'r', 'r'],
        ),
    '',
  );

  if (result.notes && result.notes.length > 0) {
    out.push('## Notes', '');
    for (const n of result.notes) out.push(`- ${n}`);
    out.push('');
  }
  if (summary.warnings.length > 0) {
    out.push('## Warnings', '');
    for (const w of summary.warnings) out.push(`- ${w}`);
    out.push('');
  }
  return out.join('\n');
}
