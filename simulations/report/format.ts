// Number formatting shared by the Markdown and HTML renderers. Deterministic; ASCII minus signs.

const DASH = '—';

/** 0..1 → "84.5" (percent, 1 decimal). */
export function pct(x: number, digits = 1): string {
  return Number.isFinite(x) ? (x * 100).toFixed(digits) : DASH;
}

/** Accuracy mean ± std in percent: "84.5 ± 1.2" (std omitted when undefined). */
export function pctMeanStd(m: number, s: number): string {
  if (!Number.isFinite(m)) return DASH;
  return Number.isFinite(s) ? `${pct(m)} ± ${pct(s)}` : pct(m);
}

/** Signed points: "+1.3", "-0.4", "+0.0". */
export function signedPts(x: number, digits = 1): string {
  if (!Number.isFinite(x)) return DASH;
  const r = x.toFixed(digits);
  // Avoid "-0.0": a rounded zero carries no sign information.
  if (Number(r) === 0) return `+${(0).toFixed(digits)}`;
  return x > 0 ? `+${r}` : r;
}

/** "[-0.2, +2.8]" */
export function ciPts(ci: [number, number]): string {
  if (!Number.isFinite(ci[0]) || !Number.isFinite(ci[1])) return DASH;
  return `[${signedPts(ci[0])}, ${signedPts(ci[1])}]`;
}

/** Bytes in binary units: "812 B", "12.3 KiB", "4.56 MiB". */
export function bytes(n: number): string {
  if (!Number.isFinite(n)) return DASH;
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let v = n;
  let u = 0;
  while (Math.abs(v) >= 1024 && u < units.length - 1) {
    v /= 1024;
    u++;
  }
  if (u === 0) return `${Math.round(v)} B`;
  return `${v >= 100 ? v.toFixed(0) : v >= 10 ? v.toFixed(1) : v.toFixed(2)} ${units[u]}`;
}

/** Bytes ratio as a percentage of full weights: "3.1 %". */
export function ratioPct(r: number): string {
  if (!Number.isFinite(r)) return DASH;
  const p = r * 100;
  return `${p >= 10 ? p.toFixed(0) : p >= 1 ? p.toFixed(1) : p.toFixed(2)} %`;
}

/** Milliseconds as seconds: "12.3 s". */
export function seconds(ms: number): string {
  if (!Number.isFinite(ms)) return DASH;
  const s = ms / 1000;
  return `${s >= 100 ? s.toFixed(0) : s.toFixed(1)} s`;
}

/** A generic number with up to 4 significant digits, for `extra` metrics. */
export function num(x: number): string {
  if (!Number.isFinite(x)) return DASH;
  if (Number.isInteger(x)) return String(x);
  const a = Math.abs(x);
  if (a >= 1000) return x.toFixed(0);
  if (a >= 1e-3) return String(Number(x.toPrecision(4)));
  return x.toExponential(2);
}

/** Duration between two ISO timestamps, "3 min 12 s"; "—" if either does not parse. */
export function duration(startIso: string, endIso: string): string {
  const ms = Date.parse(endIso) - Date.parse(startIso);
  if (!Number.isFinite(ms) || ms < 0) return DASH;
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${s % 60} s`;
  return `${Math.floor(m / 60)} h ${m % 60} min`;
}
