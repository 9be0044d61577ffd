// The trust gate of one pair (docs/DESIGN.md §6): a single scalar g = sigmoid(θ) that scales the
// pair's knowledge branch, K = s·g·(A′B′ − AB), trained on the coordinator from the target's
// held-out feedback, with a go/no-go guard that shuts a useless source for good.
//
// Why one scalar: the big adapter gets a signal far too weak to learn from (a target that has
// memorised its few labels has a training gradient of about 0); one number trained on held-out
// data can learn whether the source's slice helps. ∂loss/∂θ = g(1−g)·⟨G, ∂K/∂g⟩, and the device
// sends the scalar ⟨G, ∂K/∂g⟩ = s·⟨G, A′B′ − AB⟩ with its feedback (`gateGrad`).
//
// Why a guard: a held-out loss also rewards taking out the target's own top slice (−AB acts as a
// regulariser), so once the target has memorised its data even a noise source's gate reopens.
// The decision is therefore taken early, before that happens:
// - 'relevance' (default): a guard against a useless source, not a judge of a useful one. At each
//               update the coordinator checks whether the source's factor is more aligned with the
//               held-out gradient than each of `shadows` random factors whose directions have
//               its directions' norms (coordinator/gate/relevance.ts). For the noise control that happens with chance
//               1/(shadows + 1) exactly (its slice IS such a random draw); for a trained source
//               most of the time. A sequential binomial test accepts once the wins are
//               significantly above that chance (p < alphaSource), and refuses once they are
//               significantly below one half, or after `decideAfter` updates. How much of an
//               accepted source to take stays the gate's job. Measured (§6): the 'source' sign test
//               below refused a real source in 1 of 5 seeds whose swap, left to the gate, gained.
//               Where the start is the target's own slice (no shared axis) there is no source
//               factor to test, and it tests as 'source' does.
// - 'source': the gate's gradient ⟨G, A′B′ − AB⟩ mixes two things: what the source's
//               slice does, and what taking out the target's own slice does. Only the first says
//               anything about the source; the second is the confound. The target also reports the
//               source's part alone, s·⟨G, A′B′⟩, and a sequential sign test on it accepts the
//               source once adding its slice lowers the held-out loss significantly more often than
//               not (p < alphaSource), and refuses it when it raises it significantly more often, or
//               when `decideAfter` updates pass without a verdict. For a noise source the sign is
//               a coin toss, so it is refused unless the coin is very lucky.
// - 'signtest': while the target has not memorised its training data (it reports its
//               training accuracy over its last minibatches; memorised = ≥ `memorisedAt`), a
//               one-sided binomial test on the signs of the gradient pushes refuses the source as
//               soon as the downward pushes outnumber the upward ones significantly (p < alpha).
//               When the window closes (memorisation, or `decideAfter` updates), the source is
//               refused unless θ has risen above its start, else accepted. Tied to the target's
//               own state, not to a cycle count: a target that memorises in 8 cycles decides then.
// - 'early':    after `decideAfter` updates, refuse for good unless θ has risen above its start
//               (a fixed count; the reference's rule);
// - 'readout':  the output channel's trial (docs/DESIGN.md §10): after `decideAfter` updates, keep
//               the source only if its gate rose AND the readout of its logits, applied to the
//               target's own held-out examples, labels them better than chance (one-sided binomial
//               test at alphaReadout on the trial's mean accuracy). The gate alone is not enough:
//               an untrained source's readout mostly shrinks the target's classifier, which a
//               held-out loss likes once the target has memorised its labels (measured: 1 of 5).
// - 'none':     never decide (the gate alone).
// Pure: no tensors, no I/O. Its state is plain numbers, checkpointed as JSON.
import { z } from 'zod';

export const GATE_GUARDS = ['relevance', 'source', 'signtest', 'early', 'readout', 'none'] as const;
export type GateGuard = (typeof GATE_GUARDS)[number];

export const gateConfigSchema = z.strictObject({
  /** false: g is 1 and never trained (the plain MergeNet branch of earlier versions) */
  enabled: z.boolean().default(true),
  /** θ at the start; g = sigmoid(init) (−3 → 0.047) */
  init: z.number().finite().default(-3),
  /** Adam learning rate of θ */
  lr: z.number().nonnegative().finite().default(0.2),
  beta1: z.number().min(0).max(0.999999).default(0.9),
  beta2: z.number().min(0).max(0.999999999).default(0.999),
  eps: z.number().positive().finite().default(1e-8),
  guard: z.enum(GATE_GUARDS).default('relevance'),
  /** gate updates before the guard decides (at the latest, for 'signtest') */
  decideAfter: z.number().int().positive().default(25),
  /** 'signtest': the target's training accuracy at which it counts as having memorised its data */
  memorisedAt: z.number().min(0).max(1).default(0.95),
  /** significance of the 'signtest' guard */
  alpha: z.number().positive().max(0.5).default(0.05),
  /** 'relevance': random factors the source's factor is compared with at each update */
  shadows: z.number().int().min(1).max(99).default(9),
  /** significance of the 'relevance' and 'source' guards: a useless source passes with about this chance */
  alphaSource: z.number().positive().max(0.5).default(0.01),
  /** significance of the 'readout' guard's test against chance */
  alphaReadout: z.number().positive().max(0.5).default(0.01),
});
export type GateConfig = z.infer<typeof gateConfigSchema>;
export const DEFAULT_GATE_CONFIG: GateConfig = gateConfigSchema.parse({});

export type GateDecision = 'pending' | 'accepted' | 'refused';

export const gateStateSchema = z.object({
  theta: z.number().finite(),
  m: z.number().finite(),
  v: z.number().finite().nonnegative(),
  /** Adam steps taken */
  t: z.number().int().nonnegative(),
  /** gradient pushes that would raise θ (∂loss/∂θ < 0) and lower it, while the guard was testing */
  ups: z.number().int().nonnegative(),
  downs: z.number().int().nonnegative(),
  /** held-out gradients that said adding the source's slice lowers the loss (wins) or raises it */
  wins: z.number().int().nonnegative().default(0),
  losses: z.number().int().nonnegative().default(0),
  /** 'relevance': updates at which the source's factor beat every shadow, and updates tested */
  relevanceWins: z.number().int().nonnegative().default(0),
  relevanceN: z.number().int().nonnegative().default(0),
  /** 'relevance': shadows per update (chance of a win: 1/(shadows + 1)) */
  shadows: z.number().int().positive().optional(),
  /** 'readout': held-out examples the trial's readouts labelled right, and examples tried, summed over updates */
  readoutHits: z.number().int().nonnegative().default(0),
  readoutN: z.number().int().nonnegative().default(0),
  /** 'readout': the number of classes (the chance level is 1/classes) */
  classes: z.number().int().positive().optional(),
  decision: z.enum(['pending', 'accepted', 'refused']),
  /** the update at which the guard decided, and why */
  decidedAt: z.number().int().nonnegative().optional(),
  reason: z.string().optional(),
});
export type GateState = z.infer<typeof gateStateSchema>;

export function sigmoid(x: number): number {
  // Written so that large |x| neither overflows nor loses the exact 0 and 1 at the ends.
  return x >= 0 ? 1 / (1 + Math.exp(-x)) : Math.exp(x) / (1 + Math.exp(x));
}

/** P(X ≥ k) for X ~ Binomial(n, p) (p ½ by default): a one-sided p-value of k successes out of n. */
export function binomialUpperTail(k: number, n: number, p = 0.5): number {
  if (k <= 0) return 1;
  if (k > n) return 0;
  // Sum in log space: n is at most a few hundred, exact enough and never overflows.
  let logC = 0; // log C(n, 0)
  let total = 0;
  const lp = Math.log(p);
  const lq = Math.log1p(-p);
  for (let i = 0; i <= n; i++) {
    if (i > 0) logC += Math.log(n - i + 1) - Math.log(i);
    if (i >= k) total += Math.exp(logC + i * lp + (n - i) * lq);
  }
  return Math.min(1, total);
}

/** What the target reported with the feedback that the guard reads. */
export interface TargetReport {
  /** training accuracy over its last minibatches ('signtest': memorisation closes the window) */
  trainAcc?: number;
  /** s·⟨G, A′B′⟩, the source's part of the gate gradient ('source') */
  sourceGrad?: number;
  /** 'relevance': whether the source's factor beat every random shadow at this update */
  relevance?: { beatAll: boolean; shadows: number };
  /** 'readout': the trial's readout on the target's held-out split: hits of n, among `classes` */
  readout?: { hits: number; n: number; classes: number };
}

/** One update of a gate as reports and /status show it: g after it, and the evidence it read. */
export interface GateTracePoint {
  update: number;
  gate: number;
  /** ⟨G, ∂K/∂g⟩ as the target reported it */
  gateGrad?: number;
  /** s·⟨G, A′B′⟩, where the target reported it */
  sourceGrad?: number;
  /** the target's training accuracy over its last minibatches */
  trainAcc?: number;
  /** 'relevance': whether the source's factor beat every random shadow */
  beatShadows?: boolean;
}

export interface GateStep {
  /** ∂loss/∂θ of this update */
  dTheta: number;
  /** g before and after the step */
  before: number;
  after: number;
  /** the guard's decision if it decided at this update */
  decided?: Exclude<GateDecision, 'pending'>;
}

export class TrustGate {
  readonly config: GateConfig;
  private s: GateState;

  constructor(config: Partial<GateConfig> = {}, state?: GateState) {
    this.config = gateConfigSchema.parse(config);
    this.s = state ? gateStateSchema.parse(state) : { theta: this.config.init, m: 0, v: 0, t: 0, ups: 0, downs: 0, wins: 0, losses: 0, relevanceWins: 0, relevanceN: 0, readoutHits: 0, readoutN: 0, decision: 'pending' };
  }

  /** The factor the device applies: sigmoid(θ); 1 when the gate is disabled; 0 once refused. */
  get value(): number {
    if (!this.config.enabled) return 1;
    if (this.s.decision === 'refused') return 0;
    return sigmoid(this.s.theta);
  }

  get decision(): GateDecision {
    return this.s.decision;
  }

  get updates(): number {
    return this.s.t;
  }

  get theta(): number {
    return this.s.theta;
  }

  /** Why the guard decided as it did (undefined while pending). */
  get reason(): string | undefined {
    return this.s.reason;
  }

  /** Refuse the source for good, before any update (a pair the coordinator will not run). */
  refuse(reason: string): void {
    if (this.s.decision !== 'pending') return;
    this.s.decision = 'refused';
    this.s.decidedAt = this.s.t;
    this.s.reason = reason;
  }

  /** A copy of the state, for checkpoints and status. */
  state(): GateState {
    return { ...this.s };
  }

  /**
   * One Adam step on θ from a feedback's gateGrad = ⟨G, ∂K/∂g⟩, taken with the g that cycle's
   * transfer carried (the device applied that g, so the chain rule must use it too). A refused or
   * disabled gate does not move.
   */
  step(gateGrad: number, appliedGate: number, target: TargetReport = {}): GateStep {
    const before = this.value;
    if (!this.config.enabled || this.s.decision === 'refused') return { dTheta: 0, before, after: before };
    if (!Number.isFinite(gateGrad)) throw new Error(`gate gradient must be finite, got ${gateGrad}`);
    const g = appliedGate;
    const dTheta = g * (1 - g) * gateGrad;
    const { lr, beta1, beta2, eps } = this.config;
    const s = this.s;
    s.t += 1;
    s.m = beta1 * s.m + (1 - beta1) * dTheta;
    s.v = beta2 * s.v + (1 - beta2) * dTheta * dTheta;
    const mHat = s.m / (1 - beta1 ** s.t);
    const vHat = s.v / (1 - beta2 ** s.t);
    s.theta -= (lr * mHat) / (Math.sqrt(vHat) + eps);
    if (s.decision === 'pending') {
      if (dTheta < 0) s.ups += 1;
      else if (dTheta > 0) s.downs += 1;
      if (target.sourceGrad !== undefined) {
        if (target.sourceGrad < 0) s.wins += 1;
        else if (target.sourceGrad > 0) s.losses += 1;
      }
    }
    if (s.decision === 'pending' && target.relevance) {
      s.relevanceN += 1;
      if (target.relevance.beatAll) s.relevanceWins += 1;
      s.shadows = target.relevance.shadows;
    }
    if (s.decision === 'pending' && target.readout && target.readout.n > 0) {
      s.readoutHits += target.readout.hits;
      s.readoutN += target.readout.n;
      s.classes = target.readout.classes;
    }
    const memorised = target.trainAcc !== undefined && target.trainAcc >= this.config.memorisedAt;
    const decided = this.decide(memorised);
    return { dTheta, before, after: this.value, decided };
  }

  private decide(memorised: boolean): Exclude<GateDecision, 'pending'> | undefined {
    const s = this.s;
    const { guard, decideAfter, alpha, init } = this.config;
    if (s.decision !== 'pending' || guard === 'none') return undefined;
    const finish = (d: Exclude<GateDecision, 'pending'>, reason: string) => {
      s.decision = d;
      s.decidedAt = s.t;
      s.reason = reason;
      return d;
    };
    if (guard === 'relevance' && s.relevanceN > 0 && s.shadows) {
      const n = s.relevanceN;
      const w = s.relevanceWins;
      const chance = 1 / (s.shadows + 1);
      const a = this.config.alphaSource;
      const pWin = binomialUpperTail(w, n, chance);
      const pNoise = binomialUpperTail(n - w, n, 0.5);
      const record = `the source's factor beat all ${s.shadows} random factors with its directions' norms in ${w} of ${n} held-out gradients (chance ${(100 * chance).toFixed(0)} %)`;
      if (pWin < a) return finish('accepted', `${record}: p ${pWin.toPrecision(2)} < ${a}`);
      if (pNoise < a) return finish('refused', `${record}: no more aligned with the data than noise (p ${pNoise.toPrecision(2)} < ${a})`);
      if (s.t >= decideAfter) return finish('refused', `${record} in ${s.t} updates: no significant evidence`);
      return undefined;
    }
    if (guard === 'source' || guard === 'relevance') {
      const n = s.wins + s.losses;
      const a = this.config.alphaSource;
      const pWin = binomialUpperTail(s.wins, n);
      const pLose = binomialUpperTail(s.losses, n);
      const record = `${s.wins} of ${n} held-out gradients favoured the source's slice`;
      if (s.wins > s.losses && pWin < a) return finish('accepted', `${record} (p ${pWin.toPrecision(2)} < ${a})`);
      if (s.losses > s.wins && pLose < a) return finish('refused', `${record}: it raises the held-out loss (p ${pLose.toPrecision(2)} < ${a})`);
      if (s.t >= decideAfter) return finish('refused', `${record} in ${s.t} updates: no significant evidence that it helps`);
      return undefined;
    }
    if (guard === 'signtest') {
      const n = s.ups + s.downs;
      const p = binomialUpperTail(s.downs, n);
      if (s.downs > s.ups && p < alpha) {
        return finish('refused', `sign test: ${s.downs} of ${n} held-out gradients pushed the gate down (p ${p.toPrecision(2)} < ${alpha})`);
      }
      if (!memorised && s.t < decideAfter) return undefined;
      const when = memorised ? `the target memorised its data at update ${s.t}` : `${s.t} updates`;
      const g = sigmoid(s.theta);
      if (s.theta <= init) return finish('refused', `${when}: the gate is ${g.toFixed(3)}, not above its start ${sigmoid(init).toFixed(3)} (${s.ups} up, ${s.downs} down)`);
      return finish('accepted', `${when}: the gate rose to ${g.toFixed(3)} (${s.ups} up, ${s.downs} down)`);
    }
    if (s.t < decideAfter) return undefined;
    const g = sigmoid(s.theta);
    const g0 = sigmoid(init);
    if (guard === 'readout') {
      if (s.theta <= init) return finish('refused', `after ${s.t} updates the gate is ${g.toFixed(3)}, not above its start ${g0.toFixed(3)}`);
      if (s.readoutN === 0 || !s.classes) return finish('refused', `after ${s.t} updates the gate rose to ${g.toFixed(3)}, but no readout accuracy was reported`);
      // The held-out examples are the same at every update: test the trial's mean accuracy on one
      // held-out split's worth of examples, not the pooled count (which would overstate n).
      const perUpdate = Math.max(1, Math.round(s.readoutN / s.t));
      const acc = s.readoutHits / s.readoutN;
      const hits = Math.round(acc * perUpdate);
      const chance = 1 / s.classes;
      const p = binomialUpperTail(hits, perUpdate, chance);
      const record = `the readout labelled ${(100 * acc).toFixed(0)} % of ${perUpdate} held-out examples right (chance ${(100 * chance).toFixed(0)} %, p ${p.toPrecision(2)})`;
      if (p >= this.config.alphaReadout) return finish('refused', `after ${s.t} updates the gate rose to ${g.toFixed(3)}, but ${record}: no better than chance`);
      return finish('accepted', `after ${s.t} updates the gate rose from ${g0.toFixed(3)} to ${g.toFixed(3)} and ${record}`);
    }
    if (s.theta <= init) return finish('refused', `after ${s.t} updates the gate is ${g.toFixed(3)}, not above its start ${g0.toFixed(3)}`);
    return finish('accepted', `after ${s.t} updates the gate rose from ${g0.toFixed(3)} to ${g.toFixed(3)}`);
  }
}
