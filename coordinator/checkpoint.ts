// Atomic checkpoints of every pair: one file of serialized adapter state per pair plus a JSON
// manifest (format version, pairs, next cycle ids, counters, updates).
//
// Atomicity across several files: pair files carry the checkpoint's generation in their name and
// are never overwritten; the manifest, written last (temp file, fsync, rename, fsync of the
// directory), names the files of its generation. A crash at any point leaves the previous manifest
// pointing at a complete, consistent set. Files of older generations are removed only after the
// new manifest is durable.
import { createHash } from 'node:crypto';
import { mkdir, open, readFile, readdir, rm } from 'node:fs/promises';
import { join } from 'node:path';
import { z } from 'zod';
import { isAtomicTempName, writeFileAtomic } from '../shared/fs/atomic-write.js';
import { PROTOCOL_VERSION } from '../shared/protocol/version.js';
import { ALIGNMENTS, type Alignment } from './adapter/pass-through.js';
import { gateStateSchema, type GateState } from './gate/trust-gate.js';

export const CHECKPOINT_FORMAT = 'mergenet-fed/coordinator-checkpoint';
export const CHECKPOINT_FORMAT_VERSION = 1;
export const MANIFEST_NAME = 'manifest.json';

const endpoint = z.object({ device: z.string(), slot: z.string() });
const count = z.number().int().nonnegative();

export const pairCountersSchema = z.object({
  cyclesStarted: count,
  updates: count,
  drops: z.record(z.string(), count),
  lastGradNorm: z.number().optional(),
  lastCycleStep: count.optional(),
});
export type PairCountersSnapshot = z.infer<typeof pairCountersSchema>;

const manifestPairSchema = z.object({
  id: z.string(),
  source: endpoint,
  target: endpoint,
  /** effective rank (the adapter's), or the requested one if the pair has no adapter yet */
  rank: z.number().int().positive(),
  auto: z.boolean(),
  sourceMode: z.enum(['real', 'noise']),
  nextCycleId: count,
  adapterStep: count,
  counters: pairCountersSchema,
  /** the trust gate (absent in checkpoints written before the gate existed: it starts fresh) */
  gate: gateStateSchema.optional(),
  alignment: z.enum(ALIGNMENTS).optional(),
  state: z.object({ file: z.string(), bytes: count, sha256: z.string() }).optional(),
});

const manifestSchema = z.object({
  format: z.literal(CHECKPOINT_FORMAT),
  formatVersion: z.literal(CHECKPOINT_FORMAT_VERSION),
  protocolVersion: z.number().int(),
  generation: count,
  savedAt: z.string(),
  totals: z.object({ updates: count, cyclesStarted: count }),
  pairs: z.array(manifestPairSchema),
});
export type CheckpointManifest = z.infer<typeof manifestSchema>;

/** One pair as saved or restored. `state` is serializeAdapterState's bytes (absent: no adapter yet). */
export interface CheckpointPair {
  id: string;
  source: { device: string; slot: string };
  target: { device: string; slot: string };
  rank: number;
  auto: boolean;
  sourceMode: 'real' | 'noise';
  nextCycleId: number;
  adapterStep: number;
  counters: PairCountersSnapshot;
  gate?: GateState;
  alignment?: Alignment;
  state?: Uint8Array;
  /**
   * Saving only: the adapter state is the one of the last checkpoint this Checkpointer wrote or
   * loaded (same adapter step; see hasState), whose file is reused instead of writing it again.
   */
  stateUnchanged?: boolean;
}

export interface CheckpointData {
  totals: { updates: number; cyclesStarted: number };
  pairs: CheckpointPair[];
}

/** Adds one pair to a streaming save at its index in the manifest (see Checkpointer.saveStreaming). */
export type PutPair = (index: number, pair: CheckpointPair) => Promise<void>;

export interface LoadedCheckpoint extends CheckpointData {
  generation: number;
  savedAt: string;
}

export class CheckpointError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'CheckpointError';
  }
}

function sha256(bytes: Uint8Array): string {
  return createHash('sha256').update(bytes).digest('hex');
}

/** Safe in a file name on any OS, and unique thanks to the index prefix. */
function fileNameFor(index: number, pairId: string, generation: number): string {
  return `pair-${index}-${pairId.replace(/[^A-Za-z0-9_.-]/g, '_')}.g${generation}.bin`;
}

/** fsync a directory so that renames in it survive a crash (Linux; a no-op failure elsewhere). */
async function syncDir(dir: string): Promise<void> {
  let fh;
  try {
    fh = await open(dir, 'r');
    await fh.sync();
  } catch {
    // Some platforms cannot fsync a directory; the rename is still atomic there.
  } finally {
    await fh?.close();
  }
}

/**
 * Reads and writes checkpoints of one directory. Saves are queued, so two never interleave. A save
 * takes its pairs when it runs, one at a time (saveStreaming), or all at once (save).
 */
export class Checkpointer {
  private generation = 0;
  private queue: Promise<unknown> = Promise.resolve();
  /** each pair's state file in the last checkpoint written or loaded, with its adapter step */
  private readonly files = new Map<string, { adapterStep: number; ref: NonNullable<CheckpointManifest['pairs'][number]['state']> }>();

  constructor(readonly dir: string) {}

  /** The checkpoint in the directory, or undefined if there is none. Throws CheckpointError if it is corrupt. */
  async load(): Promise<LoadedCheckpoint | undefined> {
    let text: string;
    try {
      text = await readFile(join(this.dir, MANIFEST_NAME), 'utf8');
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
      throw err;
    }
    let manifest: CheckpointManifest;
    try {
      const res = manifestSchema.safeParse(JSON.parse(text));
      if (!res.success) {
        throw new Error(res.error.issues.slice(0, 5).map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; '));
      }
      manifest = res.data;
    } catch (err) {
      throw new CheckpointError(`checkpoint manifest ${join(this.dir, MANIFEST_NAME)} is invalid: ${(err as Error).message}`);
    }
    const pairs: CheckpointPair[] = [];
    for (const p of manifest.pairs) {
      let state: Uint8Array | undefined;
      if (p.state) {
        const path = join(this.dir, p.state.file);
        const bytes = new Uint8Array(await readFile(path));
        if (bytes.byteLength !== p.state.bytes || sha256(bytes) !== p.state.sha256) {
          throw new CheckpointError(`checkpoint file ${path} of pair ${p.id} does not match its manifest (size or sha256)`);
        }
        state = bytes;
      }
      const { state: _s, ...rest } = p;
      pairs.push({ ...rest, state });
      if (p.state) this.files.set(p.id, { adapterStep: p.adapterStep, ref: p.state });
    }
    this.generation = Math.max(this.generation, manifest.generation);
    return { generation: manifest.generation, savedAt: manifest.savedAt, totals: manifest.totals, pairs };
  }

  /**
   * Whether the last checkpoint written or loaded holds this pair's state at this adapter step,
   * so that the next save may pass it as `stateUnchanged` (the state changes only with a step).
   */
  hasState(pairId: string, adapterStep: number): boolean {
    return this.files.get(pairId)?.adapterStep === adapterStep;
  }

  /** Queue a save of `data`; resolves when it is durable. Returns the generation written. */
  save(data: CheckpointData): Promise<number> {
    return this.saveStreaming(async (put) => {
      for (const [i, p] of data.pairs.entries()) await put(i, p);
      return data.totals;
    });
  }

  /**
   * Queue a save whose pairs arrive one at a time: `fill` calls `put(index, pair)` for each pair
   * (concurrent puts are fine) and resolves with the totals. Each state file is written as its pair
   * arrives, so only the states in flight are held in memory, never all of them at once; the
   * manifest, which lists the pairs by index, is written last. Resolves with the generation once
   * it is durable.
   */
  saveStreaming(fill: (put: PutPair) => Promise<CheckpointData['totals']>): Promise<number> {
    const generation = ++this.generation;
    const run = this.queue.then(() => this.write(generation, fill));
    // A failed save must not wedge the queue for the next one.
    this.queue = run.catch(() => undefined);
    return run;
  }

  private async write(generation: number, fill: (put: PutPair) => Promise<CheckpointData['totals']>): Promise<number> {
    await mkdir(this.dir, { recursive: true });
    const entries: CheckpointManifest['pairs'] = [];
    const keep = new Set<string>([MANIFEST_NAME]);
    const put: PutPair = async (i, p) => {
      const { state, stateUnchanged, ...rest } = p;
      let stateRef: CheckpointManifest['pairs'][number]['state'];
      if (stateUnchanged) {
        // Unchanged since the last checkpoint: its file is already durable.
        const prev = this.files.get(p.id);
        if (!prev || prev.adapterStep !== p.adapterStep) throw new CheckpointError(`pair ${p.id}: no saved state at adapter step ${p.adapterStep} to reuse`);
        stateRef = prev.ref;
        keep.add(prev.ref.file);
      } else if (state) {
        const file = fileNameFor(i, p.id, generation);
        if (keep.has(file)) throw new CheckpointError(`pair ${p.id}: index ${i} was put twice`);
        keep.add(file);
        await writeFileAtomic(join(this.dir, file), state);
        stateRef = { file, bytes: state.byteLength, sha256: sha256(state) };
      }
      entries[i] = { ...rest, state: stateRef };
    };
    const totals = await fill(put);
    const manifest: CheckpointManifest = {
      format: CHECKPOINT_FORMAT,
      formatVersion: CHECKPOINT_FORMAT_VERSION,
      protocolVersion: PROTOCOL_VERSION,
      generation,
      savedAt: new Date().toISOString(),
      totals,
      // indexes a fill skipped leave holes; the manifest lists the pairs that were put, in index order
      pairs: entries.filter((e) => e !== undefined),
    };
    // The pair files must be durable before the manifest that names them.
    await syncDir(this.dir);
    await writeFileAtomic(join(this.dir, MANIFEST_NAME), Buffer.from(JSON.stringify(manifest, null, 2) + '\n', 'utf8'));
    await syncDir(this.dir);
    this.files.clear();
    for (const p of manifest.pairs) if (p.state) this.files.set(p.id, { adapterStep: p.adapterStep, ref: p.state });
    for (const name of await readdir(this.dir)) {
      if (keep.has(name)) continue;
      if (/^pair-.*\.g\d+\.bin$/.test(name) || isAtomicTempName(name)) {
        await rm(join(this.dir, name), { force: true });
      }
    }
    return generation;
  }
}
