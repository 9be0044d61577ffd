// `coordinator --fresh`: start over instead of resuming. The old checkpoint is moved aside (never
// deleted: it may be the only copy of a long run's adapters) to DIR.old-<time>, and said so.
import { readdir, rename, stat } from 'node:fs/promises';

/** Move `dir` aside if it exists and holds anything; returns where it went (undefined: nothing to move). */
export async function moveCheckpointAside(dir: string, now: Date = new Date()): Promise<string | undefined> {
  try {
    if (!(await stat(dir)).isDirectory()) throw new Error(`checkpoint.dir ${dir} is not a directory`);
  } catch (err) {
    if ((err as NodeJS.ErrnoException).code === 'ENOENT') return undefined;
    throw err;
  }
  if ((await readdir(dir)).length === 0) return undefined;
  const stamp = now.toISOString().replace(/[:.]/g, '-');
  const aside = `${dir.replace(/[\\/]+$/, '')}.old-${stamp}`;
  await rename(dir, aside);
  return aside;
}

/** The start-up line about checkpoints, in plain words. */
export function describeRestore(r: { resumed: boolean; dir?: string; updates?: number; pairs?: number; savedAt?: string }): string {
  if (!r.dir) return 'checkpoints off (no checkpoint.dir in the config): adapters start fresh and are not saved';
  if (!r.resumed) return `no checkpoint in ${r.dir}: starting fresh (checkpoints will be written there)`;
  return `resumed from checkpoint ${r.dir} (step ${r.updates ?? 0}, ${r.pairs ?? 0} pairs), saved ${r.savedAt ?? '?'}; use --fresh to start over`;
}
