// Baseline 'distill': knowledge distillation from another device, the data-sharing alternative to
// MergeNet. The teacher device first trains alone for its own steps on its own data; then the
// target trains on its own inputs with the targets (1 − α)·onehot + α·teacher(xs).
//
// Why mixed targets are distillation: the cross-entropy is linear in its targets, so
//   CE((1−α)·y + α·t, p) = (1−α)·CE(y, p) + α·CE(t, p),
// and CE(t, p) = KL(t ‖ p) + H(t) with H(t) constant in the student. Training on the mixed targets
// is therefore exactly Hinton-style distillation at temperature 1 with weight α. With α = 0 the
// targets are the one-hot labels bit for bit (1·y + 0·t = y), so the run equals 'alone'.
//
// The teacher must read the target's inputs and speak its labels: same task (hence the same label
// set), same example size (an image can be viewed as [784] or [28, 28, 1]), same vocabulary for
// text. In a real fleet this means shipping the teacher's whole model to the target (or the
// target's data to the teacher); bytesSent counts the former.
import * as tf from '@tensorflow/tfjs';
import { featureSize } from '../../client/data/dataset.js';
import { buildModelFor } from '../../client/models/registry.js';
import type { ZooDeviceData } from '../../client/data/registry.js';
import type { DeviceSpec, Experiment } from '../experiment/schema.js';
import type { ConditionRun } from '../report/types.js';
import { deviceById, loadDataFor, modelFloats, trainLocally, type LocalProgress } from './local-training.js';

/** The example shape the model reads (its input layer, without the batch axis). */
function modelInputShape(model: tf.LayersModel): number[] {
  return model.inputs[0].shape.slice(1).map((d) => d ?? -1);
}

/**
 * Throws a readable error unless `teacher` (trained on teacherData) can label the target's inputs:
 * the same task and classes, an input of the same size, and for text the same vocabulary.
 */
export function checkTeacherFits(
  teacherDevice: DeviceSpec,
  teacher: tf.LayersModel,
  teacherData: ZooDeviceData,
  targetDevice: DeviceSpec,
  targetData: ZooDeviceData,
): void {
  const who = `distill: teacher "${teacherDevice.id}" cannot teach target "${targetDevice.id}"`;
  if (teacherData.task !== targetData.task || teacherData.train.numClasses !== targetData.train.numClasses) {
    throw new Error(
      `${who}: their labels differ (teacher task ${teacherData.task} with ${teacherData.train.numClasses} classes, ` +
        `target task ${targetData.task} with ${targetData.train.numClasses}); distillation needs a shared label set`,
    );
  }
  const tIn = modelInputShape(teacher);
  if (featureSize(tIn) !== featureSize(targetData.train.inputShape)) {
    throw new Error(
      `${who}: the teacher reads examples of shape [${tIn.join(', ')}], the target's are [${targetData.train.inputShape.join(', ')}]`,
    );
  }
  const tv = teacherData.vocab, sv = targetData.vocab;
  if ((tv || sv) && (!tv || !sv || tv.length !== sv.length || tv.some((w, i) => w !== sv[i]))) {
    throw new Error(`${who}: their token vocabularies differ, so token ids do not mean the same tokens`);
  }
}

/**
 * Soft targets (1 − α)·ys + α·teacher(xs), xs viewed in the teacher's input shape. The caller
 * owns the result.
 */
export function distillTargets(teacher: tf.LayersModel, alpha: number, xs: tf.Tensor, ys: tf.Tensor): tf.Tensor {
  return tf.tidy(() => {
    const shape = modelInputShape(teacher);
    const input = shape.every((d, i) => d === xs.shape[i + 1]) && shape.length === xs.rank - 1 ? xs : tf.reshape(xs, [xs.shape[0], ...shape]);
    const probs = teacher.predict(input) as tf.Tensor;
    return tf.add(tf.mul(ys, 1 - alpha), tf.mul(probs, alpha));
  });
}

export async function runDistill(e: Experiment, seed: number, onProgress?: (p: LocalProgress) => void): Promise<ConditionRun> {
  if (!e.distill) throw new Error(`experiment "${e.name}": the distill baseline needs a \`distill\` section (teacher, alpha)`);
  const t0 = performance.now();
  const { teacher: teacherId, alpha } = e.distill;
  const targetDevice = deviceById(e, e.target);
  const teacherDevice = deviceById(e, teacherId);
  const targetData = loadDataFor(targetDevice, seed);
  const teacherData = loadDataFor(teacherDevice, seed);
  // Check the fit on an untrained build first: a mismatch should not cost the teacher's training.
  const probe = buildModelFor(teacherDevice.model, teacherData, seed);
  try {
    checkTeacherFits(teacherDevice, probe, teacherData, targetDevice, targetData);
  } finally {
    probe.dispose();
  }
  const teacherRun = await trainLocally({
    device: teacherDevice,
    data: teacherData,
    seed,
    keepModel: true,
    onProgress: onProgress && ((p) => onProgress({ ...p, phase: 'teacher' })),
  });
  const teacher = teacherRun.model!;
  try {
    const r = await trainLocally({
      device: targetDevice,
      data: targetData,
      seed,
      targets: (xs, ys) => distillTargets(teacher, alpha, xs, ys),
      onProgress: onProgress && ((p) => onProgress({ ...p, phase: 'target' })),
    });
    const floats = modelFloats(teacher);
    return {
      condition: 'distill',
      seed,
      device: e.target,
      curve: r.curve,
      finalAcc: r.finalAcc,
      bestAcc: r.bestAcc,
      bytesSent: floats * 4,
      bytesFullWeights: floats * 4,
      wallMs: Math.round(performance.now() - t0),
      extra: { alpha, teacherAcc: teacherRun.finalAcc, teacherMs: teacherRun.wallMs, targetMs: r.wallMs },
    };
  } finally {
    teacher.dispose();
  }
}
