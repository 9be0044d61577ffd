import { AdapterWithOptimizer } from '../../coordinator/adapter/update.js';
import { defaultAdapterConfig } from '../../coordinator/adapter/config.js';
import { setLpkaEngine } from '../../coordinator/adapter/lpka.js';
setLpkaEngine('kernels');
const shapes = (process.env.SHAPES ?? '64,10,128,10').split(';').map(s => s.split(',').map(Number));
function rnd(n: number, s: number) { const a = new Float32Array(n); let x = s; for (let i = 0; i < n; i++) { x = (x * 1103515245 + 12345) % 2147483648; a[i] = (x / 2147483648 - 0.5) * 0.2; } return a; }
const r = 8;
for (const [tm, tn, sm, sn] of shapes) {
  const p = AdapterWithOptimizer.create(defaultAdapterConfig(r, { seed: 1, initScale: 1 }));
  const t = { A: rnd(tm * r, 1), B: rnd(r * tn, 2), m: tm, n: tn };
  const s = { A: rnd(sm * r, 3), B: rnd(r * sn, 4), m: sm, n: sn };
  const gA = rnd(tm * r, 5), gB = rnd(r * tn, 6);
  const reps = Number(process.env.REPS ?? 50);
  const tf: number[] = [], tv: number[] = [], to: number[] = [];
  for (let i = 0; i < reps + 5; i++) {
    let t0 = performance.now();
    p.adapter.forwardFactors(t, s);
    let t1 = performance.now();
    const g = p.adapter.vjpFactors(t, s, gA, gB);
    let t2 = performance.now();
    p.opt.step(g);
    let t3 = performance.now();
    if (i >= 5) { tf.push(t1 - t0); tv.push(t2 - t1); to.push(t3 - t2); }
  }
  const med = (a: number[]) => a.sort((x, y) => x - y)[a.length >> 1].toFixed(2);
  const min = (a: number[]) => Math.min(...a).toFixed(2);
  console.log(`${tm}x${tn}/${sm}x${sn}: fwd ${med(tf)} (${min(tf)}) vjp ${med(tv)} (${min(tv)}) adamw ${med(to)} (${min(to)})`);
}
