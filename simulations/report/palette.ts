// Fixed colours per condition so every chart and report uses the same ones (Okabe–Ito based,
// distinguishable for the common colour-vision deficiencies).

const FIXED: Record<string, string> = {
  alone: '#4d4d4d',
  mergenet: '#0072b2',
  noise: '#e69f00',
  fedavg: '#009e73',
  distill: '#cc79a7',
  copy: '#d55e00',
};

const EXTRA = ['#56b4e9', '#8c564b', '#7b52ae', '#17a2b8', '#b8860b', '#2f4f4f', '#c71585', '#6b8e23'];

/** Colour per condition, deterministic for a given list (variants get the extra colours in order). */
export function conditionColors(conditions: readonly string[]): Map<string, string> {
  const out = new Map<string, string>();
  let next = 0;
  for (const c of conditions) {
    if (out.has(c)) continue;
    const fixed = FIXED[c];
    if (fixed) out.set(c, fixed);
    else out.set(c, EXTRA[next++ % EXTRA.length]);
  }
  return out;
}

export const DEFAULT_SERIES_COLORS = ['#0072b2', '#e69f00', '#009e73', '#cc79a7', '#d55e00', '#56b4e9', '#4d4d4d', ...EXTRA.slice(1)];
