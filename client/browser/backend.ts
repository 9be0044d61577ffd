/// <reference lib="dom" />
// The tfjs backend of the browser device: webgl where the browser has it, else wasm (the .wasm
// files come from the coordinator, /device/wasm/), else cpu. shared/tf/backend.ts is the Node
// counterpart (it probes tfjs-node and reads the environment).
import * as tf from '@tensorflow/tfjs';
import { setWasmPaths } from '@tensorflow/tfjs-backend-wasm';
import { registerWasmGradientKernels } from '../../shared/tf/wasm-kernels.js';

export type BrowserBackend = 'auto' | 'webgl' | 'wasm' | 'cpu';
export const BROWSER_BACKENDS: readonly BrowserBackend[] = ['auto', 'webgl', 'wasm', 'cpu'];

let wasmPathsSet = false;

/**
 * The WebGL renderer's name when it is a software rasteriser (SwiftShader, llvmpipe: a headless or
 * GPU-less browser), where tfjs's webgl backend runs several times slower than wasm; else undefined.
 */
export function softwareWebgl(): string | undefined {
  try {
    const gl = document.createElement('canvas').getContext('webgl');
    if (!gl) return undefined;
    const info = gl.getExtension('WEBGL_debug_renderer_info');
    const name = String(gl.getParameter(info ? info.UNMASKED_RENDERER_WEBGL : gl.RENDERER));
    return /swiftshader|llvmpipe|softpipe|software/i.test(name) ? name : undefined;
  } catch {
    return undefined;
  }
}

/**
 * Activate `want` (auto: webgl on a real GPU, then wasm, then cpu); resolves to the backend in use.
 */
export async function initBrowserBackend(want: BrowserBackend, wasmPrefix: string): Promise<string> {
  if (!wasmPathsSet) {
    // Only the non-threaded builds are used: threads need a cross-origin-isolated page.
    setWasmPaths(wasmPrefix);
    wasmPathsSet = true;
  }
  // wasm lacks a few gradient kernels conv nets need (docs/DESIGN.md §8): the same patch as in Node.
  registerWasmGradientKernels();
  const order: string[] = want === 'auto' ? (softwareWebgl() ? ['wasm', 'webgl', 'cpu'] : ['webgl', 'wasm', 'cpu']) : [want];
  const failures: string[] = [];
  for (const name of order) {
    try {
      if (tf.getBackend() === name) return name;
      if (await tf.setBackend(name)) {
        await tf.ready();
        if (tf.getBackend() === name) return name;
      }
      failures.push(`${name}: not available`);
    } catch (err) {
      failures.push(`${name}: ${(err as Error).message}`);
    }
  }
  throw new Error(`no tfjs backend could be initialised (${failures.join('; ')})`);
}
