/// <reference lib="dom" />
// The browser device: the page the coordinator serves at /device (coordinator/device-page/). A
// person enters the device id and token, picks a zoo model and the data, and presses join; from
// then on this tab is a device like any Node one: the same DeviceClient (client/device.ts) trains
// continuously, sends slices, applies transfers and sends feedback over socket.io, keeps training
// while offline and reconnects. Only this file, backend.ts and image-folder.ts know of the DOM.
import * as tf from '@tensorflow/tfjs';
import { pino } from 'pino';
import { decodeShard } from '../../shared/data/shard.js';
import type { DeviceData } from '../data/dataset.js';
import { DeviceClient, DeviceRefusedError, type DeviceStatus, type EvalEvent } from '../device.js';
import { buildModel } from '../models/mnist-models.js';
import { BROWSER_BACKENDS, initBrowserBackend, type BrowserBackend } from './backend.js';
import { imageFolderData } from './image-folder.js';
import { mathProbe, type MathProbeInput, type MathProbeOutput } from './math-probe.js';

interface ZooChoice {
  label: string;
  build(data: DeviceData, seed: number): tf.LayersModel;
  architecture(data: DeviceData): string;
}

const classesOf = (d: DeviceData) => d.train.numClasses;
const mlp = (hidden: number[]): ZooChoice => ({
  label: `MLP 784-${hidden.join('-')}`,
  build: (d, seed) => buildModel({ kind: 'mlp', inputShape: [784], hidden, classes: classesOf(d) }, seed),
  architecture: (d) => `mlp 784-${hidden.join('-')}-${classesOf(d)}`,
});

/** The zoo models that fit 28×28 images (client/models/mnist-models.ts). */
export const ZOO: Record<string, ZooChoice> = {
  'mlp-64': mlp([64]),
  'mlp-128': mlp([128]),
  'mlp-32-16': mlp([32, 16]),
  cnn: {
    label: 'CNN conv 8-16, dense 64',
    build: (d, seed) => buildModel({ kind: 'cnn', inputShape: [28, 28, 1], filters: [8, 16], kernelSize: 3, dense: [64], classes: classesOf(d) }, seed),
    architecture: (d) => `cnn 8-16 dense 64-${classesOf(d)}`,
  },
};

const $ = <T extends HTMLElement = HTMLElement>(id: string) => document.getElementById(id) as T;

interface PageState {
  device?: DeviceClient;
  model?: tf.LayersModel;
  backend?: string;
  evals: EvalEvent[];
  log: string[];
  joinedAt?: number;
}
const state: PageState = { evals: [], log: [] };

function logLine(line: string): void {
  const at = new Date().toISOString().slice(11, 19);
  state.log.push(`${at} ${line}`);
  if (state.log.length > 200) state.log.shift();
  const box = $('log');
  const li = document.createElement('li');
  li.textContent = `${at} ${line}`;
  box.prepend(li);
  while (box.childElementCount > 60) box.lastElementChild?.remove();
}

function setText(testid: string, text: string): void {
  const el = document.querySelector(`[data-testid="${testid}"]`);
  if (el && el.textContent !== text) el.textContent = text;
}

const pct = (v: number | undefined) => (v === undefined ? '–' : `${(100 * v).toFixed(1)} %`);

function render(): void {
  const d = state.device;
  if (!d) return;
  const s: DeviceStatus = d.status();
  const stopped = s.stopped;
  setText('connection', stopped ? 'stopped' : s.connected ? 'connected' : 'offline: training goes on, reconnecting');
  $('connection').dataset.state = stopped ? 'stopped' : s.connected ? 'connected' : 'offline';
  setText('step', String(s.step));
  setText('loss', s.loss === undefined ? '–' : s.loss.toFixed(4));
  setText('val-acc', pct(s.valAcc));
  setText('steps-per-sec', s.stepsPerSec === undefined ? '–' : s.stepsPerSec.toFixed(1));
  setText('slices-sent', String(s.slicesSent));
  setText('transfers-applied', String(s.transfersApplied));
  setText('feedback', `${s.feedbackSent} sent, ${s.feedbackAcked} acknowledged`);
  setText('connections', String(s.connections));
  setText('pairs', s.pairs.length === 0 ? 'none yet' : s.pairs.map((p) => `${p.pairId} (${p.role}, ${p.slot}, r${p.rank})`).join('; '));
  setText('backend-used', state.backend ?? '–');
  drawChart();
}

function drawChart(): void {
  const canvas = $<HTMLCanvasElement>('acc-chart');
  const ctx = canvas.getContext('2d');
  if (!ctx) return;
  const w = canvas.width;
  const h = canvas.height;
  ctx.clearRect(0, 0, w, h);
  ctx.strokeStyle = '#ccd';
  ctx.lineWidth = 1;
  ctx.font = '11px system-ui, sans-serif';
  ctx.fillStyle = '#667';
  for (const v of [0, 0.25, 0.5, 0.75, 1]) {
    const y = h - 18 - v * (h - 28);
    ctx.beginPath();
    ctx.moveTo(34, y);
    ctx.lineTo(w - 4, y);
    ctx.stroke();
    ctx.fillText(`${v * 100}%`, 2, y + 4);
  }
  const pts = state.evals.filter((e) => e.valAcc !== undefined);
  canvas.dataset.points = String(pts.length);
  if (pts.length === 0) return;
  const maxStep = Math.max(pts[pts.length - 1].step, 1);
  ctx.fillText(`step ${maxStep}`, w - 70, h - 3);
  ctx.strokeStyle = '#2563eb';
  ctx.lineWidth = 2;
  ctx.beginPath();
  pts.forEach((e, i) => {
    const x = 34 + (e.step / maxStep) * (w - 40);
    const y = h - 18 - e.valAcc! * (h - 28);
    if (i === 0) ctx.moveTo(x, y);
    else ctx.lineTo(x, y);
  });
  ctx.stroke();
}

function showRefusal(message: string | undefined): void {
  const box = $('refusal');
  box.hidden = message === undefined;
  box.textContent = message ?? '';
}

async function loadData(form: FormData, seed: number): Promise<DeviceData> {
  if (form.get('data') === 'folder') {
    const list = $<HTMLInputElement>('folder').files;
    const files = list ? Array.from({ length: list.length }, (_, i) => list.item(i)!) : [];
    return imageFolderData(files, seed);
  }
  const q = new URLSearchParams({
    seed: String(seed),
    offset: String(form.get('offset') ?? 0),
    train: String(form.get('train') ?? 500),
    val: String(form.get('val') ?? 200),
    test: String(form.get('test') ?? 500),
    task: 'digit',
  });
  const res = await fetch(`${location.origin}/device/data/mnist?${q}`);
  if (!res.ok) throw new Error(`the coordinator did not serve the MNIST shard: HTTP ${res.status}: ${await res.text()}`);
  return decodeShard(await res.arrayBuffer());
}

async function join(ev: SubmitEvent): Promise<void> {
  ev.preventDefault();
  const formEl = ev.target as HTMLFormElement;
  const form = new FormData(formEl);
  const deviceId = String(form.get('device') ?? '').trim();
  const token = String(form.get('token') ?? '');
  const zoo = ZOO[String(form.get('model'))] ?? ZOO['mlp-64'];
  const seed = Number(form.get('seed') ?? 1) || 1;
  showRefusal(undefined);
  formEl.querySelector('fieldset')!.disabled = true;
  $('run').hidden = false;
  try {
    state.backend = await initBrowserBackend(String(form.get('backend')) as BrowserBackend, `${location.origin}/device/wasm/`);
    logLine(`tfjs backend: ${state.backend}`);
    const data = await loadData(form, seed);
    logLine(`data: ${data.task}, ${data.train.n} training, ${data.val.n} held-out and ${data.test.n} test examples`);
    state.model?.dispose();
    const model = zoo.build(data, seed);
    state.model = model;
    const logger = pino({
      level: 'info',
      browser: {
        asObject: true,
        write: (o: object) => {
          const r = o as { msg?: string; level?: number; reason?: string; code?: string };
          if ((r.level ?? 30) >= 40 && r.msg) logLine(`${r.msg}${r.code ? ` (${r.code})` : ''}${r.reason ? `: ${r.reason}` : ''}`);
        },
      },
    });
    const device = new DeviceClient({
      url: location.origin,
      deviceId,
      token,
      model,
      data,
      rank: 8,
      trainer: { optimizer: 'adam', lr: 0.002, batchSize: 32 },
      seed,
      evalEvery: 25,
      description: { name: `browser ${zoo.label}`, architecture: zoo.architecture(data), task: data.task, modality: 'image' },
      reconnect: { delayMs: 500, maxDelayMs: 5000 },
      logger,
    });
    state.device = device;
    state.evals = [];
    state.joinedAt = performance.now();
    let transfers = 0;
    device.on('plan', (p) => logLine(`plan: ${p.pairs.length === 0 ? 'no pairs yet' : p.pairs.map((x) => `${x.pairId} as ${x.role}`).join(', ')}`));
    device.on('connect', ({ connections }) => logLine(connections === 1 ? 'connected' : `reconnected (connection ${connections})`));
    device.on('disconnect', ({ reason }) => logLine(`disconnected (${reason}): training goes on offline`));
    device.on('transfer', () => {
      transfers += 1;
      if (transfers === 1 || transfers % 10 === 0) {
        logLine(`transfers applied: ${transfers}`);
        render(); // the counters agree with the log line at once, not at the next refresh
      }
    });
    device.on('eval', (e) => state.evals.push(e));
    device.on('reject', (r) => logLine(`coordinator rejected a ${r.event ?? ''} message: ${r.code}: ${r.reason}`));
    device.on('unreachable', (f) => logLine(`cannot reach the coordinator: ${f.cause}`));
    $('stop').onclick = () => device.stop();
    render();
    await device.start();
    logLine(`stopped at step ${device.status().step}`);
  } catch (err) {
    if (err instanceof DeviceRefusedError) {
      showRefusal(`The coordinator refused this device: ${err.reason} (${err.code})`);
      logLine(`refused: ${err.code}: ${err.reason}`);
    } else {
      showRefusal(`Error: ${(err as Error).message}`);
      logLine(`error: ${(err as Error).message}`);
    }
  } finally {
    render();
    formEl.querySelector('fieldset')!.disabled = false;
  }
}

/** Hooks for the browser test and for curious people (window.mergenet in the console). */
declare global {
  interface Window {
    mergenet: {
      status(): DeviceStatus | undefined;
      evals(): EvalEvent[];
      dropConnection(): void;
      mathProbe(input: MathProbeInput, backend: BrowserBackend): Promise<MathProbeOutput>;
      /** tensors alive in tfjs (tests check that the probe frees what it makes) */
      numTensors(): number;
    };
  }
}

window.mergenet = {
  status: () => state.device?.status(),
  evals: () => [...state.evals],
  dropConnection: () => state.device?.dropConnection(),
  async mathProbe(input, backend) {
    await initBrowserBackend(backend, `${location.origin}/device/wasm/`);
    return mathProbe(input);
  },
  numTensors: () => tf.memory().numTensors,
};

function prefill(): void {
  // The ready-made link of `npm run demo:browser` carries the fields in the fragment, which never
  // reaches a server log: /device#device=browser&token=…
  const p = new URLSearchParams(location.hash.slice(1));
  const form = $<HTMLFormElement>('join-form');
  p.forEach((v, k) => {
    const field = form.elements.namedItem(k);
    if (field instanceof HTMLInputElement || field instanceof HTMLSelectElement) field.value = v;
  });
  const backend = $<HTMLSelectElement>('backend');
  if (!BROWSER_BACKENDS.includes(backend.value as BrowserBackend)) backend.value = 'auto';
}

function init(): void {
  const select = $<HTMLSelectElement>('model');
  for (const [value, z] of Object.entries(ZOO)) select.add(new Option(z.label, value));
  prefill();
  const form = $<HTMLFormElement>('join-form');
  const syncData = () => {
    const folder = (form.elements.namedItem('data') as HTMLSelectElement).value === 'folder';
    $('mnist-fields').hidden = folder;
    $('folder-fields').hidden = !folder;
  };
  (form.elements.namedItem('data') as HTMLSelectElement).addEventListener('change', syncData);
  syncData();
  form.addEventListener('submit', (ev) => void join(ev));
  setInterval(render, 250);
  document.body.dataset.ready = 'true';
}

init();
