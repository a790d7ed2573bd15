/**
 * The page's live state outside React: one StreamClient, the fleet table
 * with a small sparkline ring per machine, the latency tracker, and the
 * connection state. Views subscribe to what they draw.
 */
import { api, type Machine } from './api';
import { asControlMessage } from './control';
import type { StateValue } from './wire';
import { SampleDedup } from './dedup';
import { FrameLoop, frameLoop } from './frame';
import { LatencyTracker } from './latency';
import { session, type SessionStore } from './session';
import { SeriesRing } from './ring';
import { StreamClient, type ConnInfo, type Filter, type Gap, type StreamMessage } from './stream';
import { RenderTracer } from './tracing';

/** A tile's sparkline: one point per SPARK_BUCKET_MS (the bucket's last value), SPARK_POINTS of them. */
export const SPARK_POINTS = 60;
export const SPARK_BUCKET_MS = 2_000;

/** The sparkline time of a sample: the start of its bucket. */
export function sparkTime(ts: number): number {
  return Math.floor(ts / SPARK_BUCKET_MS) * SPARK_BUCKET_MS;
}

export interface FleetEntry {
  m: Machine;
  primary?: string;
  spark: SeriesRing;
  /** Event time of the sample in the spark's newest bucket. */
  sparkTs?: number;
  /** Bumped on every change of this entry (tiles re-render only then). */
  v: number;
}

/**
 * The fleet and alarms views' subscription: a conflated fleet stream, at
 * most one update per machine every 250 ms whatever the event rate (alarms
 * and notes come at once). The machine view subscribes to its machine with
 * every sample.
 */
export const FLEET_FILTER: Filter = { all: true, conflateMs: 250 };

/** Picks the metric a tile shows: temp when there is one, else the first by name. */
export function primaryMetric(metrics: Record<string, unknown> | undefined): string | undefined {
  if (!metrics) return undefined;
  if ('temp' in metrics) return 'temp';
  return Object.keys(metrics).sort()[0];
}

export class FleetStore {
  readonly entries = new Map<string, FleetEntry>();
  private sorted: FleetEntry[] | undefined;
  version = 0;

  /** Merges a GET /api/v1/machines answer; machines missing from it are dropped. */
  load(list: Machine[]): void {
    const seen = new Set<string>();
    for (const m of list) {
      seen.add(m.id);
      const e = this.entries.get(m.id);
      if (!e) {
        const entry: FleetEntry = { m, primary: primaryMetric(m.metrics), spark: new SeriesRing(SPARK_POINTS), v: 0 };
        const p = entry.primary && m.metrics?.[entry.primary];
        if (p) entry.spark.push(sparkTime(p.ts), p.value);
        this.entries.set(m.id, entry);
        this.sorted = undefined;
        continue;
      }
      // keep the newer of streamed and listed values
      const metrics = { ...(m.metrics ?? {}) };
      for (const [k, v] of Object.entries(e.m.metrics ?? {})) {
        if (!metrics[k] || metrics[k].ts < v.ts) metrics[k] = v;
      }
      e.m = { ...m, metrics, states: newerStates(m.states, e.m.states), lastSeen: Math.max(m.lastSeen ?? 0, e.m.lastSeen ?? 0) || undefined };
      e.primary ??= primaryMetric(metrics);
      e.v++;
    }
    for (const id of [...this.entries.keys()]) {
      if (!seen.has(id)) {
        this.entries.delete(id);
        this.sorted = undefined;
      }
    }
    this.version++;
  }

  /** Applies a stream message; returns whether anything shown changed. */
  apply(msg: StreamMessage, arrival: number): boolean {
    if (msg.type === 'samples') {
      let e = this.entries.get(msg.machine);
      if (!e) {
        e = { m: { id: msg.machine, status: 'online', alarm: false, metrics: {} }, spark: new SeriesRing(SPARK_POINTS), v: 0 };
        this.entries.set(msg.machine, e);
        this.sorted = undefined;
      }
      const metrics = (e.m.metrics ??= {});
      for (const s of msg.samples) {
        if (s.value === null) continue;
        const cur = metrics[s.metric];
        if (!cur || cur.ts <= s.ts) metrics[s.metric] = { value: s.value, ts: s.ts };
        e.primary ??= s.metric;
        if (s.metric === e.primary) {
          // the bucket keeps its newest sample
          const t = sparkTime(s.ts);
          const last = e.spark.last();
          if (!last || t > last.t || (t === last.t && s.ts >= (e.sparkTs ?? 0))) {
            e.spark.insert(t, s.value);
            e.sparkTs = s.ts;
          } else if (t < last.t) {
            e.spark.insert(t, s.value);
          }
        }
      }
      e.m.lastSeen = arrival;
      if (e.m.status === 'offline') e.m.status = 'online';
      e.v++;
      this.version++;
      return true;
    }
    if (msg.type === 'fleet') {
      for (const u of msg.machines) {
        let e = this.entries.get(u.machine);
        if (!e) {
          e = {
            m: { id: u.machine, status: u.status ?? 'online', alarm: u.alarm ?? false, metrics: {} },
            spark: new SeriesRing(SPARK_POINTS),
            v: 0,
          };
          this.entries.set(u.machine, e);
          this.sorted = undefined;
        }
        const metrics = (e.m.metrics ??= {});
        for (const [metric, x] of Object.entries(u.metrics)) {
          if (x.value === null) continue;
          const cur = metrics[metric];
          if (!cur || cur.ts <= x.ts) metrics[metric] = { value: x.value, ts: x.ts };
          e.primary ??= metric;
          if (metric === e.primary) {
            const t = sparkTime(x.ts);
            const last = e.spark.last();
            if (!last || t >= last.t) {
              e.spark.insert(t, x.value);
              e.sparkTs = x.ts;
            }
          }
        }
        if (u.alarm !== undefined) e.m.alarm = u.alarm;
        if (u.status) e.m.status = u.status;
        else if (e.m.status === 'offline' && Object.keys(u.metrics).length > 0) e.m.status = 'online';
        if (u.lastSeen) e.m.lastSeen = Math.max(e.m.lastSeen ?? 0, u.lastSeen);
        e.v++;
      }
      this.version++;
      return msg.machines.length > 0;
    }
    const c = asControlMessage(msg);
    if (c?.type === 'state') {
      const e = this.entries.get(c.machine);
      if (!e) return false;
      const cur = e.m.states?.[c.data.name];
      if (cur && cur.ts > c.data.ts) return false;
      e.m.states = { ...e.m.states, [c.data.name]: { value: c.data.value, ts: c.data.ts } };
      e.v++;
      this.version++;
      return true;
    }
    if (msg.type === 'status') {
      const e = this.entries.get(msg.machine);
      if (e) {
        e.m.status = msg.data.status;
        e.m.alarm = msg.data.alarm;
        if (msg.data.lastSeen) e.m.lastSeen = msg.data.lastSeen;
        e.v++;
        this.version++;
        return true;
      }
    }
    return false;
  }

  /** All entries ordered by id. */
  list(): FleetEntry[] {
    if (!this.sorted) this.sorted = [...this.entries.values()].sort((a, b) => (a.m.id < b.m.id ? -1 : 1));
    return this.sorted;
  }

  /**
   * Machines by liveness (online + offline = total) and, apart, those in
   * alarm — offline or not.
   */
  counts(): { online: number; offline: number; alarm: number; total: number } {
    const c = { online: 0, offline: 0, alarm: 0, total: 0 };
    for (const e of this.entries.values()) {
      c.total++;
      if (e.m.status === 'offline') c.offline++;
      else c.online++;
      if (e.m.alarm) c.alarm++;
    }
    return c;
  }
}

type Listener<T> = (x: T) => void;

/** The listed states merged with those streamed: per name the newer. */
export function newerStates(
  listed: Record<string, StateValue> | undefined,
  streamed: Record<string, StateValue> | undefined,
): Record<string, StateValue> | undefined {
  if (!streamed) return listed;
  const out = { ...(listed ?? {}) };
  for (const [k, v] of Object.entries(streamed)) if (!out[k] || out[k].ts < v.ts) out[k] = v;
  return out;
}

/**
 * Whether a machine passes the fleet's status filter: all, a liveness
 * (online, offline), or alarm — in alarm, whatever its liveness.
 */
export function matchesStatus(e: FleetEntry, filter: string): boolean {
  if (filter === 'all') return true;
  if (filter === 'alarm') return e.m.alarm === true;
  return (e.m.status === 'offline' ? 'offline' : 'online') === filter;
}

/** The page's single live connection and what hangs off it. */
export class Dashboard {
  readonly fleet = new FleetStore();
  readonly latency = new LatencyTracker();
  /** Render spans of traced messages (off unless the server traces). */
  readonly traces = new RenderTracer({
    // its own chunk, fetched only when tracing is on (vite.config.ts)
    load: (c) => import('./otel').then((m) => m.createRenderExporter(c)),
  });
  readonly loop: FrameLoop;
  readonly stream: StreamClient;
  conn: ConnInfo = { state: 'stopped', attempt: 0 };
  private msgListeners = new Set<(m: StreamMessage, arrival: number) => void>();
  private connListeners = new Set<Listener<ConnInfo>>();
  private gapListeners = new Set<Listener<Gap>>();
  private fleetListeners = new Set<() => void>();
  private fleetTimer: ReturnType<typeof setTimeout> | undefined;
  private lastFleetDraw = 0;
  private fleetLive = false;
  /** Samples shown already (see SampleDedup). */
  private readonly dedup = new SampleDedup();
  /** Stream messages received and gaps reported (diagnostics). */
  messages = 0;
  gaps = 0;

  constructor(loop = frameLoop, s: SessionStore = session) {
    this.loop = loop;
    this.stream = new StreamClient({
      ticket: () => s.streamTicket(),
      onMessage: (m, arrival) => this.onMessage(m, arrival),
      onState: (c) => {
        this.conn = c;
        for (const l of this.connListeners) l(c);
      },
      onGap: (g) => {
        this.gaps++;
        if (this.fleetLive) void this.refreshFleet();
        for (const l of this.gapListeners) l(g);
      },
    });
    this.latency.onDrawn = () => this.traces.drawn();
    s.subscribe((st) => {
      if (st.status !== 'signed-in') {
        this.reset();
        this.traces.disable();
      } else if (st.session.tracing?.enabled) {
        this.traces.enable(st.session.tracing, () => s.headers('POST'));
      }
    });
  }

  subscribe(filter: Filter): void {
    this.stream.subscribe(filter);
  }

  /** Forgets what the last identity saw (on sign-out): closes the stream, empties the fleet. */
  reset(): void {
    this.stream.stop();
    this.fleet.load([]);
    this.prefetched = undefined;
  }

  /** The machine list asked for at start-up (prefetchFleet), and when. */
  private prefetched: { at: number; list: Promise<{ machines: Machine[] } | undefined> } | undefined;

  /**
   * Takes the machine list that index.html asked for before the app's
   * script was parsed, when the page opened on the fleet view: the first
   * tiles need it, and asking after the session would delay them by the
   * script's start and a round trip (ADR 0034). A plain fetch: a 401
   * (signed out) or an error only drops the prefetch — the session decides
   * what the page shows, and the fleet view asks again.
   */
  prefetchFleet(res: Promise<Response>, at = Date.now()): void {
    const list = res.then((r) => (r.ok ? (r.json() as Promise<{ machines: Machine[] }>) : undefined)).catch(() => undefined);
    this.prefetched = { at, list };
  }

  onMessages(l: (m: StreamMessage, arrival: number) => void): () => void {
    this.msgListeners.add(l);
    return () => this.msgListeners.delete(l);
  }

  onConn(l: Listener<ConnInfo>): () => void {
    this.connListeners.add(l);
    return () => this.connListeners.delete(l);
  }

  onGap(l: Listener<Gap>): () => void {
    this.gapListeners.add(l);
    return () => this.gapListeners.delete(l);
  }

  /**
   * Keeps the fleet table live while a fleet view is shown: the machine list
   * is polled for registry fields, status and rates; the stream updates the
   * rest. Listeners are called from the frame loop, at most every throttleMs.
   */
  watchFleet(l: () => void, throttleMs = 250): () => void {
    this.fleetListeners.add(l);
    this.fleetThrottle = throttleMs;
    if (!this.fleetLive) {
      this.fleetLive = true;
      void this.refreshFleet();
      this.scheduleFleetPoll();
    }
    return () => {
      this.fleetListeners.delete(l);
      if (this.fleetListeners.size === 0) {
        this.fleetLive = false;
        clearTimeout(this.fleetTimer);
      }
    };
  }

  private fleetThrottle = 250;

  /**
   * Polls the machine list for registry fields, status and rates: every
   * 10 s, stretched for large fleets (the list of 10 000 machines is a few
   * MB) to about 1 s per 1 000 machines; the stream carries the values.
   */
  private scheduleFleetPoll(): void {
    const every = Math.max(10_000, this.fleet.entries.size * 3);
    this.fleetTimer = setTimeout(() => {
      if (!this.fleetLive) return;
      void this.refreshFleet().finally(() => this.fleetLive && this.scheduleFleetPoll());
    }, every);
  }

  async refreshFleet(): Promise<void> {
    try {
      // the start-up prefetch, once, when still fresh
      const early = this.prefetched && Date.now() - this.prefetched.at < 10_000 ? this.prefetched.list : undefined;
      this.prefetched = undefined;
      const r = (early && (await early)) || (await api.machines());
      this.fleet.load(r.machines);
      this.requestFleetDraw();
    } catch {
      /* the connection indicator tells; the next poll retries */
    }
  }

  private requestFleetDraw(): void {
    if (this.fleetListeners.size === 0) return;
    this.loop.request(this.drawFleet);
  }

  private drawFleet = (now: number): void => {
    if (now - this.lastFleetDraw < this.fleetThrottle) {
      this.loop.request(this.drawFleet); // try again in a later frame
      return;
    }
    this.lastFleetDraw = now;
    for (const l of this.fleetListeners) l();
    // React commits synchronously in the listeners' flushSync; count the frame as drawn
    this.latency.drawn(Date.now());
  };

  private onMessage(m: StreamMessage, arrival: number): void {
    this.messages++;
    if (m.type === 'samples') {
      // On the Kafka path a processor restart shows samples again: keep
      // what is new (the charts would only redraw them; the latency would
      // count them twice).
      const fresh = this.dedup.fresh(m);
      if (!fresh) return;
      m = fresh;
    }
    this.traces.received(m, arrival);
    if (m.type === 'samples') this.latency.serverShare(arrival - m.ingestTs);
    if (this.fleetLive && this.fleet.apply(m, arrival)) {
      if (m.type === 'samples') {
        let newest = -Infinity;
        for (const s of m.samples) newest = Math.max(newest, s.ts);
        if (Number.isFinite(newest)) this.latency.arrived(newest);
      } else if (m.type === 'fleet') {
        let newest = -Infinity;
        for (const u of m.machines) for (const x of Object.values(u.metrics)) newest = Math.max(newest, x.ts);
        if (Number.isFinite(newest)) this.latency.arrived(newest);
      }
      this.requestFleetDraw();
    }
    for (const l of this.msgListeners) l(m, arrival);
  }
}

export const dashboard = new Dashboard();

declare global {
  interface Window {
    __twinline?: unknown;
  }
}

if (typeof window !== 'undefined') {
  // For the end-to-end tests and the benchmark: read-only diagnostics.
  window.__twinline = {
    latency: () => ({ ...dashboard.latency.stats(), all: dashboard.latency.all.slice() }),
    drawTimes: () => dashboard.loop.drawTimes.slice(),
    /** Starts a measurement: forgets the draw times and latencies so far. */
    resetStats: () => {
      dashboard.loop.drawTimes.length = 0;
      dashboard.latency.all.length = 0;
    },
    conn: () => dashboard.conn,
    cursor: () => dashboard.stream.cursor,
    messages: () => dashboard.messages,
    gaps: () => dashboard.gaps,
    traces: () => {
      const t = dashboard.traces;
      return { enabled: t.enabled, loaded: t.loaded, recorded: t.recorded, dropped: t.dropped, lastTraceId: t.lastTraceId };
    },
    /** Exports the batched render spans now. */
    flushTraces: () => dashboard.traces.flush(),
  };
}
