/**
 * MachineFeed holds what the machine view draws, outside React: per metric
 * a bounded ring of samples, a ring of sliding medians and the 10 s window
 * bands, plus the machine's alarms and notes. The stream and the history
 * loads write here; the chart's drawer reads it once per frame.
 */
import { api, type Alarm, type Latest, type Machine, type Note } from './api';
import { bandStepMs, minMaxDownsample, pointsForWidth, slidingMedian } from './downsample';
import { SeriesRing } from './ring';
import type { Gap, StreamMessage } from './stream';

export const RAW_CAPACITY = 20_000;
export const MEDIAN_WINDOW = 60;

export interface Band {
  start: number;
  size: number;
  min: number;
  max: number;
}

export class MachineFeed {
  readonly raw = new Map<string, SeriesRing>();
  readonly median = new Map<string, SeriesRing>();
  readonly bands = new Map<string, Map<number, Band>>();
  alarms: Alarm[] = [];
  notes: Note[] = [];
  machine: Machine | undefined;
  latest: Latest | undefined;
  version = 0;
  /** Event times of samples that arrived and are not drawn yet. */
  readonly arrivedTs: number[] = [];

  /** Called on every change (the chart asks the frame loop for a draw). */
  readonly listeners = new Set<() => void>();

  constructor(readonly id: string) {}

  /** Registers fn to run on every change; returns the unsubscribe. */
  listen(fn: () => void): () => void {
    this.listeners.add(fn);
    return () => this.listeners.delete(fn);
  }

  dispose(): void {
    this.listeners.clear();
  }

  ring(metric: string): SeriesRing {
    let r = this.raw.get(metric);
    if (!r) this.raw.set(metric, (r = new SeriesRing(RAW_CAPACITY)));
    return r;
  }

  medianRing(metric: string): SeriesRing {
    let r = this.median.get(metric);
    if (!r) this.median.set(metric, (r = new SeriesRing(4000)));
    return r;
  }

  bandMap(metric: string): Map<number, Band> {
    let b = this.bands.get(metric);
    if (!b) this.bands.set(metric, (b = new Map()));
    return b;
  }

  /** Applies a stream message for this machine; `live` says samples are appended. */
  apply(msg: StreamMessage, live: boolean): void {
    if (!('machine' in msg) || msg.machine !== this.id) return;
    switch (msg.type) {
      case 'samples':
        if (!live) return;
        for (const s of msg.samples) {
          if (s.value === null) continue;
          this.ring(s.metric).insert(s.ts, s.value);
          this.arrivedTs.push(s.ts);
          if (this.latest) {
            const cur = this.latest.metrics[s.metric];
            if (!cur || cur.ts <= s.ts) this.latest.metrics[s.metric] = { ...cur, value: s.value, ts: s.ts };
          }
        }
        if (this.arrivedTs.length > 4096) this.arrivedTs.splice(0, this.arrivedTs.length - 4096);
        if (this.latest) this.latest.lastSeen = Date.now();
        break;
      case 'window': {
        const d = msg.data;
        const m = this.bandMap(d.metric);
        const cur = m.get(d.start);
        if (d.kind === 'late' && cur) {
          cur.min = Math.min(cur.min, d.min);
          cur.max = Math.max(cur.max, d.max);
        } else {
          m.set(d.start, { start: d.start, size: d.size, min: d.min, max: d.max });
        }
        if (m.size > 10_000) {
          const keys = [...m.keys()].sort((a, b) => a - b);
          for (const k of keys.slice(0, m.size - 10_000)) m.delete(k);
        }
        break;
      }
      case 'alarm': {
        const i = this.alarms.findIndex((a) => a.id === msg.data.id);
        if (i >= 0) this.alarms[i] = msg.data;
        else this.alarms.unshift(msg.data);
        break;
      }
      case 'note':
        this.addNote(msg.data);
        break;
      case 'status':
        if (this.latest) {
          this.latest.status = msg.data.status;
          this.latest.alarm = msg.data.alarm;
          if (msg.data.lastSeen) this.latest.lastSeen = msg.data.lastSeen;
        }
        if (this.machine) {
          this.machine.status = msg.data.status;
          this.machine.alarm = msg.data.alarm;
        }
        break;
      default:
        return;
    }
    this.changed();
  }

  addNote(n: Note): void {
    if (this.notes.some((x) => x.id === n.id)) return;
    this.notes.push(n);
    this.notes.sort((a, b) => (a.time < b.time ? -1 : a.time > b.time ? 1 : 0));
    this.changed();
  }

  changed(): void {
    this.version++;
    for (const l of this.listeners) l();
  }

  /** Loads the registry entry, latest values, alarms and notes. */
  async loadMeta(): Promise<void> {
    const [m, l, a, n] = await Promise.allSettled([
      api.machine(this.id),
      api.latest(this.id),
      api.alarms('all', this.id),
      api.notes(this.id),
    ]);
    if (m.status === 'fulfilled') this.machine = m.value;
    if (l.status === 'fulfilled') this.latest = l.value;
    if (a.status === 'fulfilled') {
      const byId = new Map(this.alarms.map((x) => [x.id, x]));
      for (const x of a.value.alarms) if (!byId.has(x.id)) byId.set(x.id, x);
      this.alarms = [...byId.values()].sort((x, y) => (x.raisedAt < y.raisedAt ? 1 : -1));
    }
    if (n.status === 'fulfilled') for (const x of n.value.notes) this.addNote(x);
    if (m.status === 'rejected' && l.status === 'rejected') throw m.reason;
    this.changed();
  }

  /** Polls /latest for the engine's medians and the rates. */
  async pollLatest(): Promise<void> {
    const l = await api.latest(this.id);
    this.latest = l;
    for (const [metric, v] of Object.entries(l.metrics)) {
      if (v.median !== undefined) this.medianRing(metric).insert(v.ts, v.median);
    }
    this.changed();
  }

  /**
   * Loads [from, to] of each metric: at most `widthPx` points (the server
   * keeps each bucket's min and max), the min–max bands, and, for short raw
   * ranges, the sliding median computed from the raw samples.
   */
  async loadHistory(metrics: string[], from: number, to: number, widthPx: number, signal?: AbortSignal): Promise<void> {
    const points = pointsForWidth(widthPx);
    const step = bandStepMs(to - from, Math.max(50, Math.floor(widthPx / 2)));
    // one metric at a time: the server runs few history queries at once
    for (const metric of metrics) {
      await (async () => {
        const [s, lo, hi] = await Promise.all([
          api.series(this.id, { metric, from, to, points }, signal),
          api.series(this.id, { metric, from, to, step: `${step / 1000}s`, agg: 'min' }, signal),
          api.series(this.id, { metric, from, to, step: `${step / 1000}s`, agg: 'max' }, signal),
        ]);
        if (signal?.aborted) return;
        const r = this.ring(metric);
        for (let i = 0; i < s.t.length; i++) {
          const v = s.v[i];
          if (v !== null) r.insert(s.t[i], v);
        }
        const bm = this.bandMap(metric);
        const hiBy = new Map<number, number>();
        hi.t.forEach((t, i) => hi.v[i] !== null && hiBy.set(t, hi.v[i] as number));
        lo.t.forEach((t, i) => {
          const max = hiBy.get(t);
          const min = lo.v[i];
          if (max !== undefined && min !== null && !bm.has(t)) bm.set(t, { start: t, size: step, min, max });
        });
        if (s.t.length < points) {
          // raw samples: the sliding median can be computed as the engine does
          const vs = s.v.filter((x): x is number => x !== null);
          const ts = s.t.filter((_, i) => s.v[i] !== null);
          const med = slidingMedian(vs, MEDIAN_WINDOW);
          const mr = this.medianRing(metric);
          for (let i = 0; i < ts.length; i++) mr.insert(ts[i], med[i]);
        }
      })();
    }
    this.changed();
  }

  /** Reloads the span the stream could not replay. */
  async backfill(gap: Gap, metrics: string[], spanMs: number, widthPx: number, signal?: AbortSignal): Promise<void> {
    const from = Math.max(gap.from ?? gap.to - spanMs, gap.to - spanMs);
    await this.loadHistory(metrics, from, Date.now(), widthPx, signal);
  }

  /**
   * Keeps memory bounded for long live spans: drops what left the span, and
   * when a ring is nearly full, folds it to min/max buckets.
   */
  trim(from: number, widthPx: number): void {
    for (const r of [...this.raw.values(), ...this.median.values()]) {
      r.dropBefore(from);
      if (r.length > r.capacity * 0.9) {
        const all = r.range();
        const d = minMaxDownsample(all.t, all.v, Math.max(2 * widthPx, 2000));
        r.clear();
        for (let i = 0; i < d.t.length; i++) r.push(d.t[i], d.v[i]);
      }
    }
    for (const m of this.bands.values()) {
      for (const k of m.keys()) if (k < from - 60_000) m.delete(k);
    }
  }

  reset(): void {
    this.raw.clear();
    this.median.clear();
    this.bands.clear();
    this.arrivedTs.length = 0;
  }
}
