// A strict parser of the Prometheus text exposition format (0.0.4), for tests: every sample must
// belong to a metric declared by # TYPE before it, label values must be properly quoted and
// escaped, values must be numbers. Anything else throws, naming the line.
export interface PromSample {
  name: string;
  labels: Record<string, string>;
  value: number;
}

export interface PromMetric {
  name: string;
  type: 'counter' | 'gauge' | 'histogram' | 'summary' | 'untyped';
  help?: string;
  samples: PromSample[];
}

const NAME = /^[a-zA-Z_:][a-zA-Z0-9_:]*$/;
const LABEL = /^[a-zA-Z_][a-zA-Z0-9_]*$/;

function parseValue(s: string, where: string): number {
  if (s === '+Inf') return Infinity;
  if (s === '-Inf') return -Infinity;
  if (s === 'NaN') return NaN;
  if (!/^[-+]?(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$/.test(s)) throw new Error(`${where}: bad value "${s}"`);
  return Number(s);
}

function parseLabels(s: string, where: string): Record<string, string> {
  const out: Record<string, string> = {};
  let i = 0;
  while (i < s.length) {
    const eq = s.indexOf('=', i);
    if (eq < 0) throw new Error(`${where}: label without "="`);
    const key = s.slice(i, eq);
    if (!LABEL.test(key)) throw new Error(`${where}: bad label name "${key}"`);
    if (s[eq + 1] !== '"') throw new Error(`${where}: label value of ${key} is not quoted`);
    let j = eq + 2;
    let v = '';
    for (;;) {
      if (j >= s.length) throw new Error(`${where}: unterminated label value of ${key}`);
      const c = s[j];
      if (c === '\\') {
        const n = s[j + 1];
        if (n === 'n') v += '\n';
        else if (n === '\\' || n === '"') v += n;
        else throw new Error(`${where}: bad escape \\${n} in label ${key}`);
        j += 2;
      } else if (c === '"') break;
      else {
        v += c;
        j++;
      }
    }
    if (key in out) throw new Error(`${where}: label ${key} repeated`);
    out[key] = v;
    j++;
    if (j < s.length) {
      if (s[j] !== ',') throw new Error(`${where}: expected "," after label ${key}`);
      j++;
    }
    i = j;
  }
  return out;
}

export function parsePrometheusText(text: string): Map<string, PromMetric> {
  const metrics = new Map<string, PromMetric>();
  const lines = text.split('\n');
  lines.forEach((line, idx) => {
    const where = `line ${idx + 1}`;
    if (line.trim() === '') return;
    if (line.startsWith('#')) {
      const m = /^# (HELP|TYPE) (\S+) ?(.*)$/.exec(line);
      if (!m) return; // other comments are allowed
      const [, kind, name, rest] = m;
      if (!NAME.test(name!)) throw new Error(`${where}: bad metric name "${name}"`);
      const metric = metrics.get(name!) ?? { name: name!, type: 'untyped' as const, samples: [] };
      if (kind === 'TYPE') {
        if (!['counter', 'gauge', 'histogram', 'summary', 'untyped'].includes(rest!)) throw new Error(`${where}: bad type "${rest}"`);
        if (metric.samples.length) throw new Error(`${where}: TYPE of ${name} after its samples`);
        metric.type = rest as PromMetric['type'];
      } else metric.help = rest;
      metrics.set(name!, metric);
      return;
    }
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? (\S+)(?: (-?\d+))?$/.exec(line);
    if (!m) throw new Error(`${where}: not a sample: ${line}`);
    const [, name, labelText, value] = m;
    const base = [name!, name!.replace(/_(bucket|sum|count)$/, '')].find((n) => metrics.has(n));
    if (!base) throw new Error(`${where}: sample ${name} of no declared metric`);
    const metric = metrics.get(base)!;
    if (base !== name && metric.type !== 'histogram' && metric.type !== 'summary') throw new Error(`${where}: ${name} is not a sample name of ${metric.type} ${base}`);
    const labels = labelText ? parseLabels(labelText, where) : {};
    if (metric.type === 'histogram' && name!.endsWith('_bucket') && labels.le === undefined) throw new Error(`${where}: bucket without le`);
    metric.samples.push({ name: name!, labels, value: parseValue(value!, where) });
  });
  return metrics;
}

/** The value of one sample (labels must match exactly those given, in any order). */
export function sampleValue(metrics: Map<string, PromMetric>, name: string, labels: Record<string, string> = {}): number | undefined {
  const base = metrics.get(name) ?? metrics.get(name.replace(/_(bucket|sum|count)$/, ''));
  const want = JSON.stringify(Object.entries(labels).sort());
  return base?.samples.find((s) => s.name === name && JSON.stringify(Object.entries(s.labels).sort()) === want)?.value;
}
