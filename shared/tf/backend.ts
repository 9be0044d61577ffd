// The one place that chooses the tfjs backend. Native TensorFlow (tfjs-node) is an optional
// dependency that cannot install on machines without internet, so it is probed at run time;
// wasm is the default, cpu the last resort. The wasm gaps the project needs are patched here,
// before any model trains.
import * as tf from '@tensorflow/tfjs';
import '@tensorflow/tfjs-backend-wasm';
import { registerWasmGradientKernels } from './wasm-kernels.js';
import { createSimdGemm } from '../math/simd-gemm.js';
import { setDeviceGemm } from '../math/device-gemm.js';

export type BackendName = 'tensorflow' | 'wasm' | 'cpu';
export const BACKENDS: readonly BackendName[] = ['tensorflow', 'wasm', 'cpu'];

export interface BackendChoice {
  backend: BackendName;
  /** Why this backend: requested explicitly, or the first that loaded in auto mode. */
  reason: string;
}

// The device's slice, knowledge branch and feedback do their products on plain arrays through the
// coordinator's WebAssembly SIMD gemm (shared/math/device-gemm.ts). Registered here, the Node-only
// bootstrap, because simd-gemm.ts imports node:v8, which the browser bundle must not reach; the
// browser device keeps the tfjs path. MERGENET_DEVICE_GEMM=0 keeps it in Node too.
if (process.env.MERGENET_DEVICE_GEMM !== '0') setDeviceGemm(() => createSimdGemm(1));

let chosen: BackendChoice | undefined;
let logged = false;

async function tryNative(): Promise<boolean> {
  try {
    // A variable keeps bundlers and tsc from resolving the optional module statically.
    const name = '@tensorflow/tfjs-node';
    await import(name);
    return tf.findBackend('tensorflow') !== null || tf.engine().registryFactory['tensorflow'] !== undefined;
  } catch {
    return false;
  }
}

function parseBackend(value: string | undefined): BackendName | 'auto' {
  if (value === undefined || value === '' || value === 'auto') return 'auto';
  if ((BACKENDS as readonly string[]).includes(value)) return value as BackendName;
  throw new Error(`unknown backend "${value}": expected one of auto, ${BACKENDS.join(', ')}`);
}

async function activate(name: BackendName): Promise<boolean> {
  if (name === 'tensorflow' && !(await tryNative())) return false;
  try {
    const ok = await tf.setBackend(name);
    await tf.ready();
    return ok && tf.getBackend() === name;
  } catch {
    return false;
  }
}

/**
 * Select the backend: an explicit request (argument, else MERGENET_BACKEND) or auto
 * (tensorflow, else wasm, else cpu). An explicit request that cannot load is an error, never a
 * silent fallback, so benchmarks measure what they claim to. The choice is logged once per process.
 */
export async function initBackend(
  requested?: string,
  log: (line: string) => void = (l) => process.stderr.write(l + '\n'),
): Promise<BackendChoice> {
  const want = parseBackend(requested ?? process.env.MERGENET_BACKEND);
  if (chosen && (want === 'auto' || want === chosen.backend) && tf.getBackend() === chosen.backend) {
    return chosen;
  }
  registerWasmGradientKernels();
  if (want !== 'auto') {
    if (!(await activate(want))) {
      const hint = want === 'tensorflow' ? ' (install @tensorflow/tfjs-node; see README "Backends")' : '';
      throw new Error(`backend "${want}" is not available${hint}`);
    }
    chosen = { backend: want, reason: 'requested' };
  } else {
    for (const name of BACKENDS) {
      if (await activate(name)) {
        chosen = { backend: name, reason: name === 'tensorflow' ? 'auto: tfjs-node installed' : `auto: ${name === 'wasm' ? 'tfjs-node not installed' : 'wasm failed to load'}` };
        break;
      }
    }
    if (!chosen) throw new Error('no tfjs backend could be initialised');
  }
  if (!logged) {
    log(`[mergenet-fed] tfjs backend: ${chosen.backend} (${chosen.reason})`);
    logged = true;
  }
  return chosen;
}

/** Backends that load in this process, for benchmarks and cross-backend tests. */
export async function availableBackends(): Promise<BackendName[]> {
  const out: BackendName[] = [];
  const before = tf.getBackend();
  for (const name of BACKENDS) if (await activate(name)) out.push(name);
  if (before) await tf.setBackend(before);
  return out;
}
