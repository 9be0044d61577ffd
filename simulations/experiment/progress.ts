// Progress of an experiment on stderr (stdout stays for the report): a cli-progress MultiBar with
// one bar per device of the run in progress (step/steps, loss, accuracy, transfers applied), and a
// line per finished condition/seed above the bars. When stderr is not a TTY (a log file, CI), the
// bars become plain lines: one per device at each quarter of its steps, and the same finish lines.
import cliProgress from 'cli-progress';

export interface ProgressUpdate {
  device: string;
  step: number;
  steps: number;
  loss?: number;
  acc?: number;
  transfers?: number;
  /** what the device is within a baseline ('teacher', 'source', …) */
  phase?: string;
}

export interface ProgressReporter {
  /** A run (condition × seed) begins; its bars appear as its devices report. */
  beginRun(label: string): void;
  update(p: ProgressUpdate): void;
  /** The run ended: its bars go, `line` stays. */
  endRun(line: string): void;
  /** A line above the bars. */
  log(line: string): void;
  stop(): void;
}

export interface ProgressOptions {
  stream?: NodeJS.WriteStream;
  /** Force bars (true) or plain lines (false); default: bars when the stream is a TTY. */
  tty?: boolean;
}

const fmtLoss = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '  —  ' : x.toFixed(3).padStart(5));
const fmtAcc = (x: number | undefined) => (x === undefined || !Number.isFinite(x) ? '   —  ' : `${(100 * x).toFixed(1).padStart(5)}%`);

/** A reporter that prints nothing (for tests and --no-progress). */
export function silentProgress(): ProgressReporter {
  return { beginRun() {}, update() {}, endRun() {}, log() {}, stop() {} };
}

export function createProgress(opts: ProgressOptions = {}): ProgressReporter {
  const stream = opts.stream ?? process.stderr;
  const tty = opts.tty ?? Boolean(stream.isTTY);
  return tty ? new BarsProgress(stream) : new LineProgress(stream);
}

class BarsProgress implements ProgressReporter {
  private multi?: cliProgress.MultiBar;
  private bars = new Map<string, cliProgress.SingleBar>();
  private label = '';

  constructor(private readonly stream: NodeJS.WriteStream) {}

  private ensureMulti(): cliProgress.MultiBar {
    this.multi ??= new cliProgress.MultiBar(
      {
        stream: this.stream,
        format: '{label} {device} |{bar}| {value}/{total} | loss {loss} | test {acc} | transfers {transfers}',
        barsize: 24,
        hideCursor: true,
        clearOnComplete: true,
        stopOnComplete: false,
        autopadding: true,
        fps: 5,
      },
      cliProgress.Presets.shades_classic,
    );
    return this.multi;
  }

  beginRun(label: string): void {
    this.label = label;
  }

  update(p: ProgressUpdate): void {
    const key = p.phase ? `${p.device}:${p.phase}` : p.device;
    const payload = {
      label: this.label,
      device: (p.phase ? `${p.device} (${p.phase})` : p.device).padEnd(14),
      loss: fmtLoss(p.loss),
      acc: fmtAcc(p.acc),
      transfers: String(p.transfers ?? 0).padStart(4),
    };
    let bar = this.bars.get(key);
    if (!bar) {
      bar = this.ensureMulti().create(p.steps, p.step, payload);
      this.bars.set(key, bar);
    } else bar.update(p.step, payload);
  }

  /** Each run has its own MultiBar; stopping it clears its bars, and the run's line stays. */
  endRun(line: string): void {
    this.stop();
    this.stream.write(line + '\n');
  }

  log(line: string): void {
    // MultiBar.log buffers until the next redraw; written now, the line survives a stop().
    if (this.multi) this.multi.log(line + '\n');
    else this.stream.write(line + '\n');
  }

  stop(): void {
    this.bars.clear();
    this.multi?.stop();
    this.multi = undefined;
  }
}

class LineProgress implements ProgressReporter {
  private label = '';
  /** last quarter printed per device */
  private quarter = new Map<string, number>();

  constructor(private readonly stream: NodeJS.WriteStream) {}

  beginRun(label: string): void {
    this.label = label;
    this.quarter.clear();
  }

  update(p: ProgressUpdate): void {
    const key = p.phase ? `${p.device}:${p.phase}` : p.device;
    const q = Math.floor((4 * p.step) / Math.max(1, p.steps));
    if (q <= (this.quarter.get(key) ?? 0)) return;
    this.quarter.set(key, q);
    const who = p.phase ? `${p.device} (${p.phase})` : p.device;
    this.stream.write(
      `${this.label} ${who}: step ${p.step}/${p.steps}, loss ${fmtLoss(p.loss).trim()}, test ${fmtAcc(p.acc).trim()}, transfers ${p.transfers ?? 0}\n`,
    );
  }

  endRun(line: string): void {
    this.log(line);
  }

  log(line: string): void {
    this.stream.write(line + '\n');
  }

  stop(): void {}
}
