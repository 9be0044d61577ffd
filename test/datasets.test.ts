// The zoo's datasets: sizes and caps, disjoint splits, determinism per seed, label and id ranges,
// train-only statistics (spam vocabulary, penguin standardisation) and spec validation.
import { describe, expect, it } from 'vitest';
import { carveSplits, type Split } from '../client/data/dataset.js';
import {
  datasetSpecSchema,
  describeDataset,
  loadDeviceData,
  parseDatasetSpec,
  type DatasetSpec,
  type ZooDeviceData,
} from '../client/data/registry.js';
import { buildVocab, messageText, spamCorpus, tokenizeText, SPAM_DEFAULTS } from '../client/data/spam.js';
import { encodeName, namesCorpus, CHAR_VOCAB } from '../client/data/names.js';
import { penguinsCorpus, penguinsSplits } from '../client/data/penguins.js';

function rows(s: Split): string[] {
  const d = s.inputShape.reduce((a, b) => a * b, 1);
  return Array.from({ length: s.n }, (_, i) => Array.from(s.x.subarray(i * d, (i + 1) * d)).join(','));
}

function classCounts(s: Split): number[] {
  const c = new Array<number>(s.numClasses).fill(0);
  for (const v of s.y) c[v]++;
  return c;
}

function expectWellFormed(d: ZooDeviceData, sizes: [number, number, number]): void {
  const [train, val, test] = sizes;
  expect([d.train.n, d.val.n, d.test.n]).toEqual([train, val, test]);
  const dim = d.train.inputShape.reduce((a, b) => a * b, 1);
  for (const s of [d.train, d.val, d.test]) {
    expect(s.x.length).toBe(s.n * dim);
    expect(s.y.length).toBe(s.n);
    expect(s.inputShape).toEqual(d.train.inputShape);
    expect(s.numClasses).toBe(d.train.numClasses);
    for (const v of s.y) expect(v >= 0 && v < s.numClasses).toBe(true);
    if (d.vocabSize !== undefined) {
      for (const v of s.x) if (!(Number.isInteger(v) && v >= 0 && v < d.vocabSize)) throw new Error(`token id ${v} out of range`);
    } else {
      for (const v of s.x) if (!Number.isFinite(v)) throw new Error(`non-finite feature ${v}`);
    }
  }
  // Every class occurs in training (the splits are large enough for that here).
  expect(classCounts(d.train).every((c) => c > 0)).toBe(true);
  expect(d.classNames).toHaveLength(d.train.numClasses);
}

function expectSameData(a: ZooDeviceData, b: ZooDeviceData): void {
  for (const k of ['train', 'val', 'test'] as const) {
    expect(Buffer.from(a[k].x.buffer).equals(Buffer.from(b[k].x.buffer))).toBe(true);
    expect(Array.from(a[k].y)).toEqual(Array.from(b[k].y));
  }
}

describe('carveSplits', () => {
  it('gives disjoint splits of the requested sizes, test from the tail, train capped', () => {
    const s = carveSplits('x', 100, { trainSize: 1000, valSize: 10, testSize: 20 }, 5);
    expect([s.train.length, s.val.length, s.test.length]).toEqual([70, 10, 20]);
    expect(new Set([...s.train, ...s.val, ...s.test]).size).toBe(100);
    const smaller = carveSplits('x', 100, { trainSize: 30, valSize: 10, testSize: 20 }, 5);
    expect(smaller.test).toEqual(s.test); // the test split does not depend on trainSize
    expect(smaller.train).toEqual(s.train.slice(0, 30));
    expect(carveSplits('x', 100, { trainSize: 30, valSize: 10, testSize: 20 }, 6).test).not.toEqual(s.test);
    expect(carveSplits('y', 100, { trainSize: 30, valSize: 10, testSize: 20 }, 5).test).not.toEqual(s.test);
  });

  it('rejects sizes that leave no training data, and non-integer sizes', () => {
    expect(() => carveSplits('x', 100, { trainSize: 10, valSize: 50, testSize: 50 }, 1)).toThrow(/leaves no training data/);
    expect(() => carveSplits('x', 100, { trainSize: 0, valSize: 5, testSize: 5 }, 1)).toThrow(/trainSize must be an integer ≥ 1/);
    expect(() => carveSplits('x', 100, { trainSize: 10, valSize: 5, testSize: 2.5 }, 1)).toThrow(/testSize/);
  });
});

describe('spam (SpamAssassin)', () => {
  it('strips headers and tokenises subject + body', () => {
    const raw = 'From: a@b.c\nX-Junk: zzz\nSubject: Cheap MEDS!\nContent-Type: text/html\n\n<p>Buy now at http://x.y/z for $99</p>\n';
    const toks = tokenizeText(messageText(raw));
    expect(toks).toEqual(['cheap', 'meds', '!', 'buy', 'now', 'at', '_url_', 'for', '$', '_num_']);
  });

  it('loads the default splits, well formed, with a vocabulary from the train split only', () => {
    const d = loadDeviceData({ name: 'spam' }, 1);
    expectWellFormed(d, [2000, 500, 1000]);
    expect(d.task).toBe('spam-ham');
    expect(d.classNames).toEqual(['ham', 'spam']);
    expect(d.train.inputShape).toEqual([SPAM_DEFAULTS.seqLen]);
    expect(d.vocabSize).toBe(SPAM_DEFAULTS.vocabSize);
    expect(d.vocab!.slice(0, 2)).toEqual(['<pad>', '<unk>']);
    // Rebuild the vocabulary from exactly the train messages: it must match, and differ from one
    // built from the test messages.
    const corpus = spamCorpus(SPAM_DEFAULTS.seqLen);
    const idx = carveSplits('spam', corpus.length, { trainSize: 2000, valSize: 500, testSize: 1000 }, 1);
    expect(d.vocab).toEqual(buildVocab(idx.train.map((i) => corpus[i].tokens), SPAM_DEFAULTS.vocabSize));
    expect(d.vocab).not.toEqual(buildVocab(idx.test.map((i) => corpus[i].tokens), SPAM_DEFAULTS.vocabSize));
    expect(Array.from(d.test.y)).toEqual(idx.test.map((i) => corpus[i].label));
    // Both classes in realistic proportion (the corpus is ~30 % spam).
    const spamRate = classCounts(d.test)[1] / d.test.n;
    expect(spamRate).toBeGreaterThan(0.2);
    expect(spamRate).toBeLessThan(0.4);
  });

  it('keeps each distinct message once, so no test message equals a training message', () => {
    const corpus = spamCorpus(64);
    expect(corpus.length).toBeGreaterThan(5000);
    const keys = new Set(corpus.map((m) => m.tokens.join(' ')));
    expect(keys.size).toBe(corpus.length);
    // At the level of model inputs (ids after the train vocabulary maps rare words to <unk>), a
    // few distinct messages of one campaign can coincide; bound that.
    const d = loadDeviceData({ name: 'spam' }, 1);
    const train = new Set(rows(d.train));
    const collide = rows(d.test).filter((r) => train.has(r)).length;
    expect(collide / d.test.n).toBeLessThan(0.03);
  });

  it('is deterministic per seed, honours seqLen/vocabSize and caps trainSize', () => {
    const spec: DatasetSpec = { name: 'spam', trainSize: 300, valSize: 50, testSize: 100, seqLen: 32, vocabSize: 500 };
    const a = loadDeviceData(spec, 7);
    expectSameData(a, loadDeviceData(spec, 7));
    expect(rows(loadDeviceData(spec, 8).test)).not.toEqual(rows(a.test));
    expect(a.train.inputShape).toEqual([32]);
    expect(a.vocabSize).toBe(500);
    expect(Math.max(...a.train.x)).toBeLessThan(500);
    const capped = loadDeviceData({ name: 'spam', trainSize: 1e9, valSize: 50, testSize: 100, seqLen: 32 }, 7);
    expect(capped.train.n).toBe(spamCorpus(32).length - 150);
    expect(() => loadDeviceData({ name: 'spam', valSize: 3000, testSize: 3000 }, 1)).toThrow(/leaves no training data/);
  });
});

describe('names (first names → gender)', () => {
  it('drops names listed as both female and male', () => {
    const corpus = namesCorpus();
    const seen = new Set(corpus.map((m) => m.name));
    expect(seen.size).toBe(corpus.length);
    expect(corpus.length).toBe(8003); // 4944 + 3897 distinct, minus 2 × 419 ambiguous
    expect(seen.has('aaron')).toBe(true);
    expect(seen.has('abbe')).toBe(false); // in both lists
  });

  it('loads the default splits, disjoint, deterministic, with char ids', () => {
    const d = loadDeviceData({ name: 'names' }, 3);
    expectWellFormed(d, [4000, 1000, 2000]);
    expect(d.task).toBe('names-gender');
    expect(d.vocabSize).toBe(CHAR_VOCAB.length);
    expect(d.train.inputShape).toEqual([12]);
    // Names are unique, so equal rows would mean a shared example.
    const tr = new Set(rows(d.train));
    const va = new Set(rows(d.val));
    expect(tr.size).toBeGreaterThan(d.train.n - 5); // at most a few collide by truncation at 12
    expect(rows(d.test).filter((r) => tr.has(r) || va.has(r)).length).toBe(0);
    expect(rows(d.val).filter((r) => tr.has(r)).length).toBe(0);
    expectSameData(d, loadDeviceData({ name: 'names' }, 3));
    expect(rows(loadDeviceData({ name: 'names' }, 4).train)).not.toEqual(rows(d.train));
    // 'Aaron' → a a r o n → 2 2 19 16 15, then pads; '-' → unk; truncation at maxLen.
    expect(Array.from(encodeName('Aaron', 6))).toEqual([2, 2, 19, 16, 15, 0]);
    expect(Array.from(encodeName('jo-ann', 4))).toEqual([11, 16, 1, 2]);
    expect(loadDeviceData({ name: 'names', maxLen: 6 }, 3).train.inputShape).toEqual([6]);
  });

  it('gives devices with non-overlapping offset windows disjoint training data and one test split', () => {
    const a = loadDeviceData({ name: 'names', trainSize: 500, valSize: 100 }, 9);
    const b = loadDeviceData({ name: 'names', trainSize: 500, valSize: 100, offset: 600 }, 9);
    expect(rows(b.test)).toEqual(rows(a.test));
    const seenA = new Set([...rows(a.train), ...rows(a.val)]);
    expect([...rows(b.train), ...rows(b.val)].filter((r) => seenA.has(r)).length).toBe(0);
    expect(() => loadDeviceData({ name: 'penguins', offset: 300 }, 1)).toThrow(/offset 300 .* leaves no training data/);
  });

  it('caps trainSize at the corpus and keeps test independent of trainSize', () => {
    const big = loadDeviceData({ name: 'names', trainSize: 1e9 }, 3);
    expect(big.train.n).toBe(8003 - 3000);
    const small = loadDeviceData({ name: 'names', trainSize: 100 }, 3);
    expect(small.train.n).toBe(100);
    expect(rows(small.test)).toEqual(rows(big.test));
  });
});

describe('penguins (vega-datasets)', () => {
  it('drops incomplete rows and standardises with train statistics only', () => {
    expect(penguinsCorpus().length).toBe(333);
    const d = penguinsSplits({ seed: 2 });
    expectWellFormed(d, [200, 40, 80]);
    expect(d.task).toBe('penguins-species');
    expect(d.classNames).toEqual(['adelie', 'chinstrap', 'gentoo']);
    expect(d.featureNames).toHaveLength(9);
    const dim = 9;
    for (let j = 0; j < 4; j++) {
      const col = (s: Split) => Array.from({ length: s.n }, (_, i) => s.x[i * dim + j]);
      const tr = col(d.train);
      const mean = tr.reduce((a, b) => a + b, 0) / tr.length;
      const sd = Math.sqrt(tr.reduce((a, b) => a + (b - mean) ** 2, 0) / tr.length);
      expect(Math.abs(mean)).toBeLessThan(1e-5);
      expect(Math.abs(sd - 1)).toBeLessThan(1e-5);
      const te = col(d.test);
      expect(Math.abs(te.reduce((a, b) => a + b, 0) / te.length)).toBeGreaterThan(1e-4); // not re-fitted on test
    }
    const tr = new Set(rows(d.train));
    expect(rows(d.test).filter((r) => tr.has(r)).length).toBe(0);
    expectSameData(d, penguinsSplits({ seed: 2 }));
    expect(rows(penguinsSplits({ seed: 3 }).test)).not.toEqual(rows(d.test));
  });

  it('offers island and sex tasks without the label among the features', () => {
    const island = loadDeviceData({ name: 'penguins', task: 'island' }, 1);
    expectWellFormed(island, [200, 40, 80]);
    expect(island.featureNames!.some((f) => f.startsWith('island='))).toBe(false);
    expect(island.featureNames!.some((f) => f.startsWith('species='))).toBe(true);
    const sex = loadDeviceData({ name: 'penguins', task: 'sex', trainSize: 1000, valSize: 0, testSize: 100 }, 1);
    expectWellFormed(sex, [233, 0, 100]);
    expect(sex.train.numClasses).toBe(2);
    expect(sex.featureNames!.some((f) => f.startsWith('sex='))).toBe(false);
  });
});

describe('registry', () => {
  it('describes every dataset consistently with what it loads', () => {
    const specs: DatasetSpec[] = [
      { name: 'mnist', trainSize: 100, valSize: 20, testSize: 50 },
      { name: 'mnist', task: 'parity', trainSize: 100, valSize: 20, testSize: 50 },
      { name: 'spam', trainSize: 100, valSize: 20, testSize: 50 },
      { name: 'names', trainSize: 100, valSize: 20, testSize: 50 },
      { name: 'penguins', task: 'island', trainSize: 100, valSize: 20, testSize: 50 },
      { name: 'penguins', task: 'sex', trainSize: 100, valSize: 20, testSize: 50 },
    ];
    const modality = { mnist: 'image', spam: 'text', names: 'text', penguins: 'tabular' } as const;
    for (const spec of specs) {
      const info = describeDataset(spec);
      const d = loadDeviceData(spec, 0);
      expect(info.modality).toBe(modality[spec.name]);
      expect(info.numClasses).toBe(d.train.numClasses);
      expect(info.task).toBe(d.task);
      expectWellFormed(d, [100, 20, 50]);
    }
  });

  it('validates specs with errors that name the bad field', () => {
    expect(datasetSpecSchema.parse({ name: 'penguins', task: 'island' })).toEqual({ name: 'penguins', task: 'island' });
    expect(() => parseDatasetSpec({ name: 'cifar' })).toThrow(/dataset\.name: unknown dataset name: expected one of mnist, spam, names, penguins/);
    expect(() => parseDatasetSpec({ name: 'spam', trainsize: 10 })).toThrow(/trainsize/);
    expect(() => parseDatasetSpec({ name: 'spam', trainSize: -3 })).toThrow(/dataset\.trainSize/);
    expect(() => parseDatasetSpec({ name: 'penguins', task: 'beak' }, 'devices.2.dataset')).toThrow(/devices\.2\.dataset\.task/);
    expect(() => parseDatasetSpec({ name: 'mnist', seqLen: 10 })).toThrow(/seqLen/);
    expect(() => loadDeviceData({ name: 'names', maxLen: 0 }, 1)).toThrow(/maxLen/);
  });
});
