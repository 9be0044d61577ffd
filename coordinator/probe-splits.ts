// The public probe splits the coordinator announces (docs/DESIGN.md §10): each one named (which
// examples of which shipped corpus) and fingerprinted once at start-up, so a device can check that
// the examples it holds are the ones every other device of its input space runs its model on.
import { createHash } from 'node:crypto';
import { loadProbeExamples, PROBE_DATASETS } from '../client/data/probe-data.js';
import type { ProbeDesc } from '../shared/protocol/messages.js';
import type { ProbeConfig } from './config.js';

export class ProbeSplits {
  private readonly bySpace = new Map<string, ProbeDesc>();

  constructor(configs: readonly ProbeConfig[]) {
    for (const c of configs) {
      const space = PROBE_DATASETS[c.dataset].inputSpace;
      if (this.bySpace.has(space)) throw new Error(`probes: two probe splits for input space "${space}" (${this.bySpace.get(space)!.id}, ${c.id}); keep one`);
      const ex = loadProbeExamples({ dataset: c.dataset, seed: c.seed, offset: c.offset }, c.count);
      const bytes = new Uint8Array(ex.x.buffer, ex.x.byteOffset, ex.x.byteLength);
      this.bySpace.set(space, {
        id: c.id,
        inputSpace: space,
        source: { dataset: c.dataset, seed: c.seed, offset: c.offset },
        count: c.count,
        exampleShape: ex.exampleShape,
        sha256: createHash('sha256').update(bytes).digest('hex'),
      });
    }
  }

  /** The probe split of an input space, if the coordinator has one. */
  forSpace(inputSpace: string | undefined): ProbeDesc | undefined {
    return inputSpace === undefined ? undefined : this.bySpace.get(inputSpace);
  }

  all(): ProbeDesc[] {
    return [...this.bySpace.values()];
  }
}
