// Structured logs (pino, JSON lines) on stderr, so stdout stays free for results and tables.
import { pino, type Logger } from 'pino';

export type { Logger };

export function createLogger(name: string, level: string = process.env.MERGENET_LOG_LEVEL ?? 'info'): Logger {
  return pino({ name, level, base: { pid: process.pid } }, pino.destination(2));
}

/** A logger that drops everything: for tests and in-process simulations that report elsewhere. */
export function silentLogger(): Logger {
  return pino({ level: 'silent' });
}
