// Writes one experiment's report files: report.md, report.html, result.json, curves.csv.

import { mkdirSync, writeFileSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { renderHtml } from './html.js';
import { renderMarkdown } from './markdown.js';
import { summarize } from './summary.js';
import type { ExperimentResult } from './types.js';

function csvField(s: string): string {
  return /[",\n\r]/.test(s) ? `"${s.replace(/"/g, '""')}"` : s;
}

/** Per-step metrics, one row per (run, step): condition,seed,device,step,acc,loss (loss empty if absent). */
export function curvesCsv(result: ExperimentResult): string {
  const lines = ['condition,seed,device,step,acc,loss'];
  for (const r of result.runs)
    for (const p of r.curve)
      lines.push(
        [csvField(r.condition), String(r.seed), csvField(r.device), String(p.step), String(p.acc), p.loss === undefined ? '' : String(p.loss)].join(','),
      );
  return lines.join('\n') + '\n';
}

export function writeReport(
  result: ExperimentResult,
  outDir: string,
): { markdown: string; paths: { md: string; html: string; json: string; csv: string } } {
  const dir = resolve(outDir);
  mkdirSync(dir, { recursive: true });
  const summary = summarize(result);
  const markdown = renderMarkdown(result, summary);
  const paths = {
    md: join(dir, 'report.md'),
    html: join(dir, 'report.html'),
    json: join(dir, 'result.json'),
    csv: join(dir, 'curves.csv'),
  };
  writeFileSync(paths.md, markdown);
  writeFileSync(paths.html, renderHtml(result, summary));
  writeFileSync(paths.json, JSON.stringify(result, null, 2) + '\n');
  writeFileSync(paths.csv, curvesCsv(result));
  return { markdown, paths };
}
