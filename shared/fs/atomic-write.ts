// Durable file writes: the data goes to a temp file beside the target, is fsynced, then renamed
// over the target, so a reader (or a restart after a crash) sees the old file or the new one, never
// a torn one.
import { open, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/** Temp files are hidden (a leading dot) and carry the writer's pid and a timestamp. */
function tempName(path: string): string {
  return `.tmp-${process.pid}-${Date.now()}-${basename(path)}`;
}

/**
 * Whether a file name is one of writeFileAtomic's temp files, of any process: the directory's
 * owner removes those a crash left behind.
 */
export function isAtomicTempName(name: string): boolean {
  return /^\.tmp-\d+-\d+-/.test(name);
}

/** Write `data` to `path` atomically: a temp file in the same directory, fsync, rename. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = join(dirname(path), tempName(path));
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}
