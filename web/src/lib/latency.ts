import { Ring } from './ring';

/**
 * LatencyTracker measures sensor → screen delay: a sample's event time is
 * noted when it arrives, and its latency is taken when the frame that shows
 * it has been drawn.
 */
export class LatencyTracker {
  private pending: number[] = [];
  private readonly recent: Ring<number>;
  private readonly server: Ring<number>;
  /** Every latency recorded since start (for benchmarks), capped. */
  readonly all: number[] = [];
  /** Called after each drawn(): the render tracer ends its spans at the next frame. */
  onDrawn?: () => void;
  private readonly maxAll: number;

  constructor(window = 2048, maxAll = 200_000) {
    this.recent = new Ring(window);
    this.server = new Ring(window);
    this.maxAll = maxAll;
  }

  /** Notes a sample with event time ts that arrived (not yet drawn). */
  arrived(ts: number): void {
    if (this.pending.length < 8192) this.pending.push(ts);
  }

  /** Notes the server's share: arrival − ingest time. */
  serverShare(ms: number): void {
    this.server.push(ms);
  }

  /** The frame showing the pending samples was drawn at `now`. */
  drawn(now: number): void {
    for (const ts of this.pending) {
      const d = now - ts;
      this.recent.push(d);
      if (this.all.length < this.maxAll) this.all.push(d);
    }
    this.pending.length = 0;
    this.onDrawn?.();
  }

  /** Forgets pending samples (their view was left undrawn). */
  discardPending(): void {
    this.pending.length = 0;
  }

  stats(): { p50?: number; p99?: number; n: number; serverP50?: number } {
    const v = this.recent.toArray();
    const s = this.server.toArray();
    return { p50: percentile(v, 50), p99: percentile(v, 99), n: v.length, serverP50: percentile(s, 50) };
  }
}

/** The p-th percentile (nearest rank) of xs, or undefined when empty. */
export function percentile(xs: readonly number[], p: number): number | undefined {
  if (xs.length === 0) return undefined;
  const s = [...xs].sort((a, b) => a - b);
  const rank = Math.ceil((p / 100) * s.length);
  return s[Math.min(s.length - 1, Math.max(0, rank - 1))];
}
