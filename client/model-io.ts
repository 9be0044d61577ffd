// Load and save a user's tfjs LayersModel on disk (model.json + weight shards) without tfjs-node:
// tfjs' `file://` handler lives in tfjs-node, which cannot install on every machine, so the files
// are read with fs and handed to tfjs through in-memory IOHandlers.
import * as tf from '@tensorflow/tfjs';
import { mkdir, readFile } from 'node:fs/promises';
import { basename, dirname, isAbsolute, join, normalize, resolve, sep } from 'node:path';
import { writeFileAtomic } from '../shared/fs/atomic-write.js';

type ModelJSON = tf.io.ModelJSON;
type WeightsManifestConfig = tf.io.WeightsManifestConfig;
type WeightsManifestEntry = tf.io.WeightsManifestEntry;

const BYTES_PER_ELEMENT: Record<string, number> = { float32: 4, int32: 4, bool: 1, uint8: 1, uint16: 2, float16: 2, complex64: 8 };

/** Bytes a weight occupies in its shard, or undefined when that cannot be known up front (strings). */
function entryBytes(e: WeightsManifestEntry): number | undefined {
  const n = e.shape.reduce((a, b) => a * b, 1);
  const stored = e.quantization?.dtype ?? e.dtype;
  const per = BYTES_PER_ELEMENT[stored];
  return per === undefined ? undefined : n * per;
}

/** A shard path from the manifest, resolved inside the model's directory (no escaping it). */
function shardPath(modelDir: string, p: string, modelJsonPath: string): string {
  if (isAbsolute(p) || /^[a-z]+:\/\//i.test(p)) {
    throw new Error(`${modelJsonPath}: weight path "${p}" must be relative to the model.json directory`);
  }
  const full = resolve(modelDir, normalize(p));
  if (full !== modelDir && !full.startsWith(modelDir + sep)) {
    throw new Error(`${modelJsonPath}: weight path "${p}" points outside the model directory`);
  }
  return full;
}

async function readShards(modelJsonPath: string, manifest: WeightsManifestConfig): Promise<[WeightsManifestEntry[], ArrayBuffer]> {
  if (!Array.isArray(manifest)) throw new Error(`${modelJsonPath}: "weightsManifest" must be an array of {paths, weights}`);
  const modelDir = resolve(dirname(modelJsonPath));
  const specs: WeightsManifestEntry[] = [];
  const buffers: Uint8Array[] = [];
  for (const [gi, group] of manifest.entries()) {
    if (!Array.isArray(group?.paths) || !Array.isArray(group?.weights)) {
      throw new Error(`${modelJsonPath}: weightsManifest[${gi}] must have "paths" and "weights" arrays`);
    }
    let groupBytes = 0;
    for (const p of group.paths) {
      const file = shardPath(modelDir, p, modelJsonPath);
      let bytes: Buffer;
      try {
        bytes = await readFile(file);
      } catch (err) {
        throw new Error(`${modelJsonPath}: cannot read weight shard "${p}" (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
      }
      buffers.push(bytes);
      groupBytes += bytes.byteLength;
    }
    let expected: number | undefined = 0;
    for (const w of group.weights) {
      const b = entryBytes(w);
      expected = expected === undefined || b === undefined ? undefined : expected + b;
    }
    if (expected !== undefined && expected !== groupBytes) {
      throw new Error(
        `${modelJsonPath}: weightsManifest[${gi}] describes ${expected} bytes of weights but its shards ` +
          `(${group.paths.join(', ')}) hold ${groupBytes} bytes`,
      );
    }
    specs.push(...group.weights);
  }
  const total = buffers.reduce((a, b) => a + b.byteLength, 0);
  const out = new Uint8Array(total);
  let off = 0;
  for (const b of buffers) {
    out.set(b, off);
    off += b.byteLength;
  }
  return [specs, out.buffer];
}

/** Read model.json and its shards into tfjs ModelArtifacts. */
export async function readModelArtifacts(modelJsonPath: string): Promise<tf.io.ModelArtifacts> {
  let text: string;
  try {
    text = await readFile(modelJsonPath, 'utf8');
  } catch (err) {
    throw new Error(`cannot read model file ${modelJsonPath} (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`);
  }
  let json: ModelJSON;
  try {
    json = JSON.parse(text) as ModelJSON;
  } catch (err) {
    throw new Error(`${modelJsonPath} is not valid JSON: ${(err as Error).message}`);
  }
  if (typeof json !== 'object' || json === null || json.modelTopology == null) {
    throw new Error(`${modelJsonPath}: expected a tfjs Layers model.json with a "modelTopology" field`);
  }
  return tf.io.getModelArtifactsForJSON(json, (manifest) => readShards(modelJsonPath, manifest));
}

/**
 * Load a tfjs LayersModel saved as model.json + weight shards (the format of `model.save()` and of
 * the tfjs converter's layers-model output). Weight paths are relative to model.json's directory.
 */
export async function loadModelFromDisk(modelJsonPath: string): Promise<tf.LayersModel> {
  const artifacts = await readModelArtifacts(modelJsonPath);
  return tf.loadLayersModel(tf.io.fromMemory(artifacts));
}

export interface SavedModelFiles {
  modelJson: string;
  weights: string;
  weightBytes: number;
}

/**
 * Save `model` as `<dir>/model.json` plus one shard `<dir>/<weightsFile>` (default weights.bin),
 * loadable by loadModelFromDisk and by tfjs' own loaders. The directory is created if needed.
 */
export async function saveModelToDisk(model: tf.LayersModel, dir: string, weightsFile = 'weights.bin'): Promise<SavedModelFiles> {
  if (basename(weightsFile) !== weightsFile) throw new Error(`weights file name "${weightsFile}" must not contain a directory`);
  await mkdir(dir, { recursive: true });
  const modelJson = join(dir, 'model.json');
  const weights = join(dir, weightsFile);
  let weightBytes = 0;
  await model.save(
    tf.io.withSaveHandler(async (artifacts) => {
      const data = artifacts.weightData === undefined
        ? new ArrayBuffer(0)
        : tf.io.CompositeArrayBuffer.join(artifacts.weightData);
      weightBytes = data.byteLength;
      const json: ModelJSON = {
        modelTopology: artifacts.modelTopology as object,
        format: artifacts.format ?? 'layers-model',
        generatedBy: artifacts.generatedBy ?? `TensorFlow.js tfjs-layers v${tf.version_layers}`,
        convertedBy: artifacts.convertedBy ?? null,
        weightsManifest: [{ paths: [weightsFile], weights: artifacts.weightSpecs ?? [] }],
      };
      if (artifacts.trainingConfig) json.trainingConfig = artifacts.trainingConfig;
      if (artifacts.userDefinedMetadata) json.userDefinedMetadata = artifacts.userDefinedMetadata;
      // Shard first, so a model.json on disk always points at complete weights.
      await writeFileAtomic(weights, new Uint8Array(data));
      await writeFileAtomic(modelJson, JSON.stringify(json));
      return { modelArtifactsInfo: tf.io.getModelArtifactsInfoForJSON(artifacts) };
    }),
  );
  return { modelJson, weights, weightBytes };
}
