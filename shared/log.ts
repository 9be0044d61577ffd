// Structured logs (pino, JSON lines) on stderr, so stdout stays free for results and tables.
import { pino, type Logger } from 'pino';

export type { Logger };

/** True under the CLI's --debug (which sets MERGENET_DEBUG=1): only then do logs carry stack traces. */
export function debugEnabled(): boolean {
  // globalThis.process: this module also runs in the browser device (no process there).
  return globalThis.process?.env?.MERGENET_DEBUG === '1';
}

/** An error as a log field: type, message and code; the stack only with --debug. */
function errorField(err: unknown): unknown {
  if (debugEnabled()) return pino.stdSerializers.err(err as Error);
  if (!(err instanceof Error)) return err;
  const out: Record<string, unknown> = { type: err.name, message: err.message };
  const code = (err as NodeJS.ErrnoException).code;
  if (code !== undefined) out.code = code;
  return out;
}

export function createLogger(name: string, level: string = process.env.MERGENET_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid }, serializers: { err: errorField } }, pino.destination(2));
}

/** A logger that drops everything: for tests and in-process simulations that report elsewhere. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
