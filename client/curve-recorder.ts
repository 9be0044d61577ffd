// The accuracy curve of one training run, kept the same way by every loop that reports one (the
// device, the baselines, the fleet's device runner, the reference loop): each point is a test
// accuracy at a step, and its loss is the mean training loss of the steps since the previous point.

export interface CurvePoint {
  step: number;
  /** Test accuracy, 0..1. */
  acc: number;
  /** Mean training loss since the previous point (undefined when no step was taken since). */
  loss?: number;
}

export interface CurveSummary {
  curve: CurvePoint[];
  finalAcc: number;
  bestAcc: number;
}

export class CurveRecorder {
  private readonly points: CurvePoint[] = [];
  private lossSum = 0;
  private lossN = 0;

  /** One training step's loss. */
  addLoss(loss: number): void {
    this.lossSum += loss;
    this.lossN += 1;
  }

  /** Mean loss of the steps since the last point or reset (undefined when none). */
  get meanLoss(): number | undefined {
    return this.lossN > 0 ? this.lossSum / this.lossN : undefined;
  }

  /**
   * A test accuracy at `step`. A second measurement at the same step replaces the accuracy and
   * keeps the loss (no step happened in between), so the curve never holds a step twice.
   */
  point(step: number, acc: number): CurvePoint {
    const last = this.points.at(-1);
    if (last && last.step === step) {
      last.acc = acc;
      return last;
    }
    const p: CurvePoint = { step, acc, loss: this.meanLoss };
    this.points.push(p);
    this.lossSum = 0;
    this.lossN = 0;
    return p;
  }

  get last(): CurvePoint | undefined {
    return this.points.at(-1);
  }

  get length(): number {
    return this.points.length;
  }

  /** A copy of the curve with its final and best accuracy (NaN for an empty curve). */
  summary(): CurveSummary {
    const curve = this.points.map((p) => ({ ...p }));
    const accs = curve.map((p) => p.acc);
    return { curve, finalAcc: accs.at(-1) ?? NaN, bestAcc: accs.length ? Math.max(...accs) : NaN };
  }
}
