/**
 * Browser tracing (docs/observability.md, "Browser spans and the relay").
 * When the server sampled a batch, its live `samples` message carries the
 * W3C `traceparent` of the server's publish span; the dashboard then
 * records a `render` span, child of that span, from the message's arrival
 * to the next frame after the one that drew it, and exports it through the
 * server (POST /api/v1/traces) to the server's collector: one trace shows
 * sensor → screen.
 *
 * This module is small and always in the page. The OpenTelemetry SDK
 * (./otel) is imported lazily, only once the server says tracing is on
 * (GET /api/v1/session → tracing.enabled), so a dashboard without tracing
 * never downloads it.
 */
import type { StreamMessage } from './stream';

/** A parsed W3C traceparent (https://www.w3.org/TR/trace-context/). */
export interface TraceParent {
  /** 32 lower-case hex digits. */
  traceId: string;
  /** The parent span's id: 16 lower-case hex digits. */
  spanId: string;
  /** trace-flags; bit 0 is "sampled". */
  flags: number;
}

const TRACEPARENT = /^([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?$/;

/**
 * Parses a traceparent header value, or returns undefined when it is not
 * one: upper-case hex, version ff, all-zero ids, or a version-00 value with
 * more than its four fields are invalid; a later version may add fields.
 */
export function parseTraceparent(v: unknown): TraceParent | undefined {
  if (typeof v !== 'string') return undefined;
  const m = TRACEPARENT.exec(v.trim());
  if (!m) return undefined;
  const [, version, traceId, spanId, flags, rest] = m;
  if (version === 'ff' || (version === '00' && rest !== undefined)) return undefined;
  if (/^0+$/.test(traceId) || /^0+$/.test(spanId)) return undefined;
  return { traceId, spanId, flags: parseInt(flags, 16) };
}

/** Whether the traceparent's sampled flag is set. */
export function isSampled(tp: TraceParent): boolean {
  return (tp.flags & 1) === 1;
}

/** The trace viewer's URL for traceId: template with {traceId} replaced; undefined without either. */
export function traceUrl(template: string | undefined, traceId: string | undefined): string | undefined {
  if (!template || !traceId) return undefined;
  return template.split('{traceId}').join(encodeURIComponent(traceId));
}

/** The span name of a traced render. */
export const RENDER_SPAN = 'render';

/** One finished render, for the exporter. Times are ms since the epoch. */
export interface Render {
  parent: TraceParent;
  machine: string;
  seq: number;
  samples: number;
  start: number;
  end: number;
  /** False when no frame drew the message within maxWaitMs (a hidden tab). */
  drawn: boolean;
}

/** What the lazily loaded SDK (./otel) offers. */
export interface RenderExporter {
  /** Records a finished render span; spans are exported in batches. */
  record(r: Render): void;
  /** Exports what is batched. */
  flush(): Promise<void>;
}

export interface ExporterConfig {
  /** Where spans are posted: the relay. */
  url: string;
  /** Headers each export sends (the CSRF token of a signed-in dashboard). */
  headers: () => Record<string, string>;
}

export interface RenderTracerOptions {
  /** Loads the SDK and makes the exporter (a dynamic import in the page). */
  load: (c: ExporterConfig) => Promise<RenderExporter>;
  now?: () => number;
  /** Calls fn at the next frame (requestAnimationFrame). */
  nextFrame?: (fn: () => void) => void;
  /** Renders waiting for a frame at most (older ones are dropped). */
  maxPending?: number;
  /** How long a render may wait for its frame before it is recorded undrawn. */
  maxWaitMs?: number;
}

/** The relay's path (internal/api). */
export const RELAY_PATH = '/api/v1/traces';

type Pending = Omit<Render, 'end' | 'drawn'>;

/**
 * RenderTracer turns traced samples messages into render spans: received()
 * notes a message's arrival, drawn() (called when a frame has drawn what
 * arrived) ends every pending render at the next frame. Off until
 * enable(); nothing is loaded before.
 */
export class RenderTracer {
  enabled = false;
  /** The trace viewer's URL template (with {traceId}), if the server has one. */
  uiUrl?: string;
  /** The trace of the newest recorded render (the latency badge links to it). */
  lastTraceId?: string;
  /** Renders recorded, and those dropped (too many waiting, or the SDK failed to load). */
  recorded = 0;
  dropped = 0;
  loaded = false;
  private pending: Pending[] = [];
  /** Renders finished before the SDK was loaded. */
  private early: Render[] = [];
  private exporter?: RenderExporter;
  private loading?: Promise<void>;
  private readonly o: Required<RenderTracerOptions>;

  constructor(o: RenderTracerOptions) {
    this.o = {
      now: () => Date.now(),
      nextFrame: (fn) => void requestAnimationFrame(() => fn()),
      maxPending: 256,
      maxWaitMs: 10_000,
      ...o,
    };
  }

  /** Turns tracing on (the session said so) and starts loading the SDK. */
  enable(cfg: { uiUrl?: string }, headers: () => Record<string, string>): void {
    this.enabled = true;
    this.uiUrl = cfg.uiUrl || undefined;
    // a load that throws at once fails like one that rejects: never in the caller (the session's listeners)
    this.loading ??= Promise.resolve()
      .then(() => this.o.load({ url: RELAY_PATH, headers }))
      .then(
      (e) => {
        this.exporter = e;
        this.loaded = true;
        for (const r of this.early.splice(0)) this.record(r);
      },
      (err: unknown) => {
        console.warn('tracing: loading the OpenTelemetry SDK', err);
        this.dropped += this.early.length + this.pending.length;
        this.early.length = 0;
        this.pending.length = 0;
        this.enabled = false;
      },
    );
  }

  /** Turns tracing off (signed out): what is waiting is forgotten. */
  disable(): void {
    this.enabled = false;
    this.pending.length = 0;
    this.early.length = 0;
    this.lastTraceId = undefined;
  }

  /** Notes a stream message that arrived at `arrival` (ms since the epoch). */
  received(msg: StreamMessage, arrival: number): void {
    if (!this.enabled || msg.type !== 'samples' || !msg.traceparent) return;
    const parent = parseTraceparent(msg.traceparent);
    if (!parent || !isSampled(parent)) return;
    this.expire(arrival);
    if (this.pending.length >= this.o.maxPending) {
      this.pending.shift();
      this.dropped++;
    }
    this.pending.push({ parent, machine: msg.machine, seq: msg.seq, samples: msg.samples.length, start: arrival });
  }

  /** A frame drew what had arrived: the pending renders end at the next frame. */
  drawn(): void {
    if (this.pending.length === 0) return;
    const done = this.pending.splice(0);
    this.o.nextFrame(() => {
      const end = this.o.now();
      for (const p of done) this.record({ ...p, end: Math.max(end, p.start), drawn: true });
    });
  }

  /** Exports what is batched (tests, and before the page goes away). */
  async flush(): Promise<void> {
    await this.loading;
    await this.exporter?.flush();
  }

  /** Pending renders that waited longer than maxWaitMs are recorded as not drawn. */
  private expire(now: number): void {
    while (this.pending.length > 0 && now - this.pending[0].start > this.o.maxWaitMs) {
      const p = this.pending.shift()!;
      this.record({ ...p, end: now, drawn: false });
    }
  }

  private record(r: Render): void {
    if (!this.enabled) return;
    if (!this.exporter) {
      if (this.early.length >= this.o.maxPending) {
        this.dropped++;
        return;
      }
      this.early.push(r);
      return;
    }
    this.exporter.record(r);
    this.recorded++;
    this.lastTraceId = r.parent.traceId;
  }
}
