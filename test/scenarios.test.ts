// The shipped scenario files: each parses, each device's model can read its dataset, every pair
// names slots that exist in the built models with a rank both slots allow, the baselines each
// asks for can apply, and the MNIST devices of one file hold disjoint training windows and share
// one test split.
import { readdirSync } from 'node:fs';
import { join } from 'node:path';
import * as tf from '@tensorflow/tfjs';
import { beforeAll, describe, expect, it } from 'vitest';
import { initBackend } from '../shared/tf/backend.js';
import { loadExperiment, type Experiment } from '../simulations/experiment/schema.js';
import { carveLabels, loadDeviceData } from '../client/data/registry.js';
import { buildModelFor, modelDatasetMismatch } from '../client/models/registry.js';
import { slotInfo } from '../client/slot.js';
import { experimentConditions, preflight } from '../simulations/baselines/index.js';

const DIR = join(import.meta.dirname, '..', 'simulations', 'scenarios');
const FILES = readdirSync(DIR).filter((f) => f.endsWith('.yaml')).sort();
const MNIST_N = 10_000;

beforeAll(async () => {
  await initBackend('wasm', () => {});
});

const loaded = new Map<string, Experiment>();
const load = (f: string) => {
  if (!loaded.has(f)) loaded.set(f, loadExperiment(join(DIR, f)));
  return loaded.get(f)!;
};

describe('the shipped scenarios', () => {
  it('are the four scenarios of issue 4, the cross-width scenario and the demo', () => {
    expect(FILES).toEqual(['aligned.yaml', 'cross-architecture.yaml', 'cross-modality.yaml', 'cross-task.yaml', 'cross-width.yaml', 'demo.yaml']);
    const kinds = FILES.map((f) => load(f).scenario);
    for (const k of ['cross-architecture', 'cross-task', 'cross-modality', 'aligned']) expect(kinds).toContain(k);
    // FedAvg runs where the devices share an architecture, and the aligned case has its copy oracle
    expect(FILES.some((f) => load(f).baselines.includes('fedavg'))).toBe(true);
    expect(load('aligned.yaml').baselines).toEqual(expect.arrayContaining(['alone', 'mergenet', 'noise', 'copy', 'fedavg']));
    expect(experimentConditions(load('aligned.yaml'))).toContain('copy:rank8');
    expect(load('cross-architecture.yaml').baselines).toContain('distill');
    // the cross-width oracle swaps a mapped slice across two shapes that share their rows
    expect(load('cross-width.yaml').copy?.rank).toBe(8);
    expect(load('cross-width.yaml').pairs[0]).toMatchObject({ align: 'rows', join: 'once' });
    // the demo: three devices, as processes, and the trust gate's baselines
    const demo = load('demo.yaml');
    expect(demo.devices).toHaveLength(3);
    expect(demo.mode).toBe('process');
  });

  for (const file of FILES) {
    describe(file, () => {
      it('parses, names its output after itself, states no time of its own, and has enough seeds', () => {
        const e = load(file);
        expect(e.output).toBe(`runs/${e.name}`);
        expect(file).toBe(`${e.name}.yaml`);
        // Times are stated once, measured, in the README; a file's own guess goes stale.
        expect(e.description).not.toMatch(/minutes? on 2 cores/);
        expect(e.seeds.length).toBeGreaterThanOrEqual(e.name === 'demo' ? 2 : 3);
        expect(new Set(e.seeds).size).toBe(e.seeds.length);
        for (const b of ['alone', 'mergenet', 'noise'] as const) expect(e.baselines).toContain(b);
        const target = e.devices.find((d) => d.id === e.target)!;
        if (e.name !== 'demo') expect(target.steps).toBeGreaterThanOrEqual(600);
        expect(target.steps).toBeLessThanOrEqual(1500);
      });

      it('pairs every model with a dataset it can read, and every pair with existing slots and a possible rank', () => {
        const e = load(file);
        const models = new Map<string, tf.LayersModel>();
        try {
          for (const d of e.devices) {
            expect(modelDatasetMismatch(d.model, d.dataset), `${d.id}`).toBeUndefined();
            models.set(d.id, buildModelFor(d.model, loadDeviceData(d.dataset, e.seeds[0]), e.seeds[0]));
          }
          for (const p of e.pairs) {
            const s = slotInfo(models.get(p.source.device)!, p.source.slot);
            const t = slotInfo(models.get(p.target.device)!, p.target.slot);
            expect(p.rank).toBeLessThanOrEqual(Math.min(...s.shape));
            expect(p.rank).toBeLessThanOrEqual(Math.min(...t.shape));
          }
          expect(e.pairs.some((p) => p.target.device === e.target)).toBe(true);
        } finally {
          for (const m of models.values()) m.dispose();
        }
        // and the baselines' own requirements (fedavg architectures, distill labels, copy shapes)
        expect(() => preflight(e)).not.toThrow();
      });

      it('gives its MNIST devices disjoint training windows and one shared test split', () => {
        const e = load(file);
        const mnist = e.devices.flatMap((d) => (d.dataset.name === 'mnist' ? [{ id: d.id, ds: d.dataset }] : []));
        const tests = new Set(mnist.map((m) => m.ds.testSize));
        expect(tests.size).toBeLessThanOrEqual(1);
        const windows = mnist
          .map(({ id, ds }) => {
            const c = carveLabels(ds); // labels + heldout → trainSize + valSize
            return { id, start: ds.offset ?? 0, end: (ds.offset ?? 0) + (c.trainSize ?? 0) + (c.valSize ?? 0) };
          })
          .sort((a, b) => a.start - b.start);
        windows.forEach((w, i) => {
          if (i > 0) expect(w.start, `${w.id} overlaps ${windows[i - 1].id}`).toBeGreaterThanOrEqual(windows[i - 1].end);
          expect(w.end, `${w.id} reaches into the test split`).toBeLessThanOrEqual(MNIST_N - [...tests][0]!);
        });
      });
    });
  }
});
