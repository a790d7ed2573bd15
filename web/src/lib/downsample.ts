/**
 * Downsampling and summary helpers for charts: the same min/max bucketing
 * the server's `points=` uses (spikes survive), the sliding median, and
 * merging fetched history with streamed points.
 */

export interface Columns {
  t: number[];
  v: number[];
}

/**
 * Keeps at most `points` points of (t, v), which must be in time order: the
 * span [from, to] is cut into points/2 buckets and each keeps its minimum
 * and maximum, in time order. A series already small enough is returned as
 * is.
 */
export function minMaxDownsample(
  t: ArrayLike<number>,
  v: ArrayLike<number>,
  points: number,
  from?: number,
  to?: number,
): Columns {
  const n = Math.min(t.length, v.length);
  if (points < 2 || n <= points) return { t: Array.from(t).slice(0, n), v: Array.from(v).slice(0, n) };
  const lo = from ?? t[0];
  const hi = to ?? t[n - 1];
  const buckets = Math.max(1, Math.floor(points / 2));
  const width = (hi - lo) / buckets || 1;
  const out: Columns = { t: [], v: [] };
  let b = -1;
  let minI = -1;
  let maxI = -1;
  const flush = () => {
    if (minI < 0) return;
    if (minI === maxI) {
      out.t.push(t[minI]);
      out.v.push(v[minI]);
    } else {
      const [a, c] = minI < maxI ? [minI, maxI] : [maxI, minI];
      out.t.push(t[a], t[c]);
      out.v.push(v[a], v[c]);
    }
  };
  for (let i = 0; i < n; i++) {
    const ti = t[i];
    if (ti < lo || ti > hi) continue;
    const vi = v[i];
    if (Number.isNaN(vi)) continue;
    const bi = Math.min(buckets - 1, Math.floor((ti - lo) / width));
    if (bi !== b) {
      flush();
      b = bi;
      minI = maxI = i;
      continue;
    }
    if (vi < v[minI]) minI = i;
    if (vi > v[maxI]) maxI = i;
  }
  flush();
  return out;
}

/** The median of each value and the `window - 1` before it. */
export function slidingMedian(v: ArrayLike<number>, window: number): number[] {
  if (window < 1) throw new RangeError(`median window must be at least 1, got ${window}`);
  const out: number[] = [];
  const sorted: number[] = [];
  for (let i = 0; i < v.length; i++) {
    insertSorted(sorted, v[i]);
    if (i >= window) removeSorted(sorted, v[i - window]);
    const m = sorted.length;
    out.push(m % 2 === 1 ? sorted[(m - 1) / 2] : (sorted[m / 2 - 1] + sorted[m / 2]) / 2);
  }
  return out;
}

function insertSorted(a: number[], x: number): void {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  a.splice(lo, 0, x);
}

function removeSorted(a: number[], x: number): void {
  let lo = 0;
  let hi = a.length;
  while (lo < hi) {
    const mid = (lo + hi) >> 1;
    if (a[mid] < x) lo = mid + 1;
    else hi = mid;
  }
  if (lo < a.length && a[lo] === x) a.splice(lo, 1);
}

/**
 * Merges two time-ordered series; at equal times `b` wins (history fetched
 * from the store replaces what the stream delivered for the same instant).
 */
export function mergeSeries(a: Columns, b: Columns): Columns {
  const out: Columns = { t: [], v: [] };
  let i = 0;
  let j = 0;
  while (i < a.t.length || j < b.t.length) {
    if (j >= b.t.length || (i < a.t.length && a.t[i] < b.t[j])) {
      out.t.push(a.t[i]);
      out.v.push(a.v[i]);
      i++;
    } else {
      if (i < a.t.length && a.t[i] === b.t[j]) i++;
      out.t.push(b.t[j]);
      out.v.push(b.v[j]);
      j++;
    }
  }
  return out;
}

/** How many points to ask the server for a chart this wide (2…100 000). */
export function pointsForWidth(widthPx: number): number {
  const n = Math.round(widthPx);
  if (!Number.isFinite(n) || n < 2) return 2;
  return Math.min(100_000, n);
}

/**
 * A bucket step for min–max bands over a span: 10 s (the engine's window)
 * when that gives at most `maxBuckets` buckets, else a multiple of 10 s.
 */
export function bandStepMs(spanMs: number, maxBuckets: number): number {
  const base = 10_000;
  if (spanMs <= 0 || maxBuckets < 1) return base;
  return Math.max(1, Math.ceil(spanMs / base / maxBuckets)) * base;
}
