// Durable file writes: the data goes to a temp file beside the target, is fsynced, then renamed
// over the target, so a reader (or a restart after a crash) sees the old file or the new one, never
// a torn one.
import { open, rename } from 'node:fs/promises';
import { basename, dirname, join } from 'node:path';

/**
 * Start of the names of this process's temp files, so that a directory's owner can remove the
 * ones a crash left behind (they are hidden: the prefix begins with a dot).
 */
export function atomicTempPrefix(): string {
  return `.tmp-${process.pid}-`;
}

/** Write `data` to `path` atomically: a temp file in the same directory, fsync, rename. */
export async function writeFileAtomic(path: string, data: Uint8Array | string): Promise<void> {
  const tmp = join(dirname(path), `${atomicTempPrefix()}${Date.now()}-${basename(path)}`);
  const fh = await open(tmp, 'w');
  try {
    await fh.writeFile(data);
    await fh.sync();
  } finally {
    await fh.close();
  }
  await rename(tmp, path);
}
