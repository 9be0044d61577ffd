// Palmer penguins (npm vega-datasets, data/penguins.json read from disk; the package's own
// loader fetches from a CDN and is not used). Rows with a missing value are dropped (333 of 344
// remain). The label is one categorical column — species (default), island or sex — and the
// features are the four measurements, standardised with the TRAIN split's mean and std only,
// plus one-hot encodings of the other two categorical columns.
import { createRequire } from 'node:module';
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { carveSplits, mapSplits, sizesWithDefaults, type Split, type SplitSizes } from './dataset.js';
import type { TabularDeviceData } from './registry.js';

export const PENGUIN_TASKS = ['species', 'island', 'sex'] as const;
export type PenguinTask = (typeof PENGUIN_TASKS)[number];

const NUMERIC = ['Beak Length (mm)', 'Beak Depth (mm)', 'Flipper Length (mm)', 'Body Mass (g)'] as const;
const CATEGORICAL: Record<PenguinTask, { column: string; values: readonly string[] }> = {
  species: { column: 'Species', values: ['Adelie', 'Chinstrap', 'Gentoo'] },
  island: { column: 'Island', values: ['Biscoe', 'Dream', 'Torgersen'] },
  sex: { column: 'Sex', values: ['FEMALE', 'MALE'] },
};

export const PENGUINS_DEFAULTS = { trainSize: 200, valSize: 40, testSize: 80 };

export interface PenguinsOptions extends Partial<SplitSizes> {
  seed: number;
  task?: PenguinTask;
}

interface Row {
  numeric: number[];
  cat: Record<PenguinTask, number>; // index into CATEGORICAL[task].values
}

let cached: Row[] | undefined;

/** The complete rows of the penguins table, in file order. */
export function penguinsCorpus(): readonly Row[] {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const file = join(dirname(require.resolve('vega-datasets')), '..', 'data', 'penguins.json');
  const raw = JSON.parse(readFileSync(file, 'utf8')) as Array<Record<string, unknown>>;
  const out: Row[] = [];
  for (const r of raw) {
    const numeric = NUMERIC.map((k) => r[k]);
    if (!numeric.every((v): v is number => typeof v === 'number' && Number.isFinite(v))) continue;
    const cat = {} as Record<PenguinTask, number>;
    let complete = true;
    for (const t of PENGUIN_TASKS) {
      const i = CATEGORICAL[t].values.indexOf(String(r[CATEGORICAL[t].column]));
      if (i < 0) complete = false; // null, '.' or an unknown value
      cat[t] = i;
    }
    if (complete) out.push({ numeric, cat });
  }
  cached = out;
  return out;
}

/** Feature names in column order for `task`: the measurements, then one-hots of the other columns. */
export function penguinFeatureNames(task: PenguinTask): string[] {
  const names: string[] = [...NUMERIC];
  for (const t of PENGUIN_TASKS) if (t !== task) for (const v of CATEGORICAL[t].values) names.push(`${t}=${v}`);
  return names;
}

/**
 * Deterministic penguin splits for `seed` (carveSplits: the test split depends only on seed and
 * testSize). trainSize is capped at what the table has left after test, offset and val (333
 * complete rows in all).
 */
export function penguinsSplits(opts: PenguinsOptions): TabularDeviceData {
  const task = opts.task ?? 'species';
  if (!PENGUIN_TASKS.includes(task)) throw new Error(`penguins: unknown task "${task}": expected one of ${PENGUIN_TASKS.join(', ')}`);
  const rows = penguinsCorpus();
  const idx = carveSplits('penguins', rows.length, sizesWithDefaults(opts, PENGUINS_DEFAULTS), opts.seed);

  // Standardisation statistics from the train split only, so nothing of val/test leaks into it.
  const k = NUMERIC.length;
  const mean = new Array<number>(k).fill(0);
  const std = new Array<number>(k).fill(0);
  for (const i of idx.train) for (let j = 0; j < k; j++) mean[j] += rows[i].numeric[j] / idx.train.length;
  for (const i of idx.train) for (let j = 0; j < k; j++) std[j] += (rows[i].numeric[j] - mean[j]) ** 2 / idx.train.length;
  for (let j = 0; j < k; j++) std[j] = Math.sqrt(std[j]) || 1;

  const featureNames = penguinFeatureNames(task);
  const d = featureNames.length;
  const numClasses = CATEGORICAL[task].values.length;
  const split = (ix: number[]): Split => {
    const x = new Float32Array(ix.length * d);
    ix.forEach((i, r) => {
      const row = rows[i];
      let c = r * d;
      for (let j = 0; j < k; j++) x[c++] = (row.numeric[j] - mean[j]) / std[j];
      for (const t of PENGUIN_TASKS) {
        if (t === task) continue;
        x[c + row.cat[t]] = 1;
        c += CATEGORICAL[t].values.length;
      }
    });
    return { x, y: Int32Array.from(ix, (i) => rows[i].cat[task]), n: ix.length, inputShape: [d], numClasses };
  };
  return {
    ...mapSplits(idx, split),
    task: `penguins-${task}`,
    classNames: CATEGORICAL[task].values.map((v) => v.toLowerCase()),
    featureNames,
  };
}
