/**
 * StreamClient keeps one live connection to GET /api/v1/stream: it
 * reconnects by itself with jittered exponential backoff, resumes from the
 * last cursor (`?cursor=`, so the server replays what was missed), watches
 * heartbeats to notice a dead connection, and asks its owner to backfill
 * from the series API when the server cannot replay (a `reset`, e.g. after a
 * restart). When the server requires sign-in, every connection (the first
 * and each reconnect) carries a fresh single-use ticket (`?ticket=`).
 */

/**
 * What a stream carries: every machine (all), with conflateMs a conflated
 * fleet stream (at most one `fleet` message per interval with the latest
 * values; no resume: a reconnect gets a `reset`, so the owner reloads the
 * machine list), or some machines with every sample.
 */
export type Filter = { all: true; conflateMs?: number } | { machines: string[] };

export interface Sample {
  metric: string;
  ts: number;
  value: number | null;
}

export interface WindowData {
  metric: string;
  start: number;
  size: number;
  kind: 'final' | 'correction' | 'late';
  count: number;
  sum: number;
  min: number;
  max: number;
  avg: number;
}

/** One machine's changes in a `fleet` message (only what changed since the last). */
export interface FleetMachine {
  machine: string;
  /** Liveness and alarm flag, both present when the status is known. */
  status?: import('./api').Liveness;
  alarm?: boolean;
  lastSeen?: number;
  metrics: Record<string, { value: number | null; ts: number }>;
}

export type StreamMessage =
  | { type: 'hello'; seq: number; heartbeatMs: number; queue: number }
  | { type: 'samples'; seq: number; machine: string; ingestTs: number; samples: Sample[] }
  | { type: 'window'; seq: number; machine: string; data: WindowData }
  | { type: 'windows'; seq: number; machine: string; windows: WindowData[] }
  | { type: 'fleet'; seq: number; machines: FleetMachine[] }
  | { type: 'note'; seq: number; machine: string; data: import('./api').Note }
  | { type: 'alarm'; seq: number; machine: string; data: import('./api').Alarm }
  | {
      type: 'status';
      seq: number;
      machine: string;
      data: { status: import('./api').Liveness; alarm: boolean; lastSeen?: number };
    }
  | { type: 'heartbeat'; seq: number; ts: number }
  | { type: 'reset'; seq: number; reason: string }
  | { type: 'reconnect'; reason: string; cursor: number; retryMs: number };

export type ConnState = 'connecting' | 'live' | 'reconnecting' | 'stopped';

export interface ConnInfo {
  state: ConnState;
  /** Failed attempts since the stream was last live. */
  attempt: number;
  /** When the next attempt starts (ms since the epoch), while reconnecting. */
  retryAt?: number;
  /** Why the last connection ended. */
  reason?: string;
}

/** The span of event time the client may have missed: reload it from history. */
export interface Gap {
  /** Newest event time received before the gap (ms), or undefined if none. */
  from?: number;
  /** Time the gap was noticed (ms). */
  to: number;
  reason: string;
}

export interface SocketHandlers {
  onOpen(): void;
  onMessage(data: string): void;
  onClose(reason: string): void;
}

export interface Socket {
  close(): void;
}

/** Opens one connection; it must call onClose exactly once when it ends. */
export type Connect = (url: string, h: SocketHandlers) => Socket;

export interface StreamOptions {
  /** Stream path, default /api/v1/stream. */
  path?: string;
  connect?: Connect;
  /**
   * Fetches a single-use ticket before each connection (POST
   * /api/v1/stream/tickets); undefined: the server needs none. A failure
   * counts as a failed attempt (backoff, then a new ticket).
   */
  ticket?: () => Promise<string | undefined>;
  onMessage(msg: StreamMessage, arrival: number): void;
  onState?(info: ConnInfo): void;
  /** Called when the server could not replay what was missed. */
  onGap?(gap: Gap): void;
  now?: () => number;
  setTimer?: (fn: () => void, ms: number) => unknown;
  clearTimer?: (h: unknown) => void;
  random?: () => number;
  minBackoffMs?: number;
  maxBackoffMs?: number;
  /** A connection silent for this many heartbeat periods is presumed dead. */
  heartbeatTolerance?: number;
}

/** The query string for a filter, optional cursor and optional ticket. */
export function streamQuery(filter: Filter, cursor?: number, ticket?: string): string {
  const p = new URLSearchParams();
  if ('all' in filter) {
    p.set('all', '1');
    if (filter.conflateMs) p.set('conflate', `${filter.conflateMs}ms`);
  } else for (const m of filter.machines) p.append('machine', m);
  if (cursor !== undefined) p.set('cursor', String(cursor));
  if (ticket) p.set('ticket', ticket);
  return p.toString();
}

/** Backoff before attempt n (1-based): min·2^(n-1), capped, with ±50% jitter. */
export function backoffMs(attempt: number, min: number, max: number, random: () => number): number {
  const base = Math.min(max, min * 2 ** Math.max(0, attempt - 1));
  return Math.round(base * (0.5 + random() / 2));
}

export class StreamClient {
  private readonly o: Required<Omit<StreamOptions, 'onState' | 'onGap' | 'connect' | 'ticket'>> &
    Pick<StreamOptions, 'onState' | 'onGap' | 'ticket'> & { connect: Connect };
  private filter: Filter | undefined;
  private socket: Socket | undefined;
  private generation = 0;
  private timer: unknown;
  private watchdog: unknown;
  private heartbeatMs = 15_000;
  private attempt = 0;
  private nextDelay: number | undefined;
  private state: ConnState = 'stopped';
  /** The last resume cursor received (the seq of the last message with an id). */
  cursor: number | undefined;
  /** The newest event time received (samples, windows) or heartbeat time. */
  lastEventTime: number | undefined;
  /** Set while the current connection resumed from a cursor. */
  private resuming = false;

  constructor(opts: StreamOptions) {
    this.o = {
      path: '/api/v1/stream',
      connect: opts.connect ?? webSocketConnect,
      now: () => Date.now(),
      setTimer: (fn, ms) => setTimeout(fn, ms),
      clearTimer: (h) => clearTimeout(h as ReturnType<typeof setTimeout>),
      random: Math.random,
      minBackoffMs: 500,
      maxBackoffMs: 10_000,
      heartbeatTolerance: 2.5,
      ...opts,
    } as StreamClient['o'];
  }

  /** Subscribes to filter, replacing the previous subscription (a new one starts without cursor). */
  subscribe(filter: Filter): void {
    if (this.filter && sameFilter(this.filter, filter) && this.state !== 'stopped') return;
    this.filter = filter;
    this.cursor = undefined;
    this.lastEventTime = undefined;
    this.attempt = 0;
    this.open();
  }

  /** Closes the connection for good (until subscribe). */
  stop(): void {
    this.generation++;
    this.o.clearTimer(this.timer);
    this.o.clearTimer(this.watchdog);
    this.socket?.close();
    this.socket = undefined;
    this.setState('stopped');
  }

  /** Reconnects now instead of waiting for the backoff. */
  reconnectNow(): void {
    if (!this.filter) return;
    this.open();
  }

  info(): ConnInfo {
    return { state: this.state, attempt: this.attempt };
  }

  private open(): void {
    const filter = this.filter;
    if (!filter) return;
    this.generation++;
    const gen = this.generation;
    this.o.clearTimer(this.timer);
    this.o.clearTimer(this.watchdog);
    const old = this.socket;
    this.socket = undefined;
    old?.close();
    this.resuming = this.cursor !== undefined;
    this.setState(this.attempt === 0 && !this.resuming ? 'connecting' : 'reconnecting');
    if (!this.o.ticket) {
      this.dial(filter, gen, undefined);
      return;
    }
    // a ticket request that hangs counts as a failed attempt, as a silent connection does
    this.watchdog = this.o.setTimer(() => {
      if (gen === this.generation) this.scheduleReconnect('stream ticket: timed out');
    }, this.heartbeatMs * this.o.heartbeatTolerance);
    this.o.ticket().then(
      (ticket) => {
        if (gen !== this.generation) return;
        this.o.clearTimer(this.watchdog);
        this.dial(filter, gen, ticket);
      },
      (err: Error) => {
        if (gen === this.generation) this.scheduleReconnect(`stream ticket: ${err.message}`);
      },
    );
  }

  private dial(filter: Filter, gen: number, ticket: string | undefined): void {
    const url = `${this.o.path}?${streamQuery(filter, this.cursor, ticket)}`;
    this.socket = this.o.connect(url, {
      onOpen: () => {
        if (gen !== this.generation) return;
        this.armWatchdog(gen);
      },
      onMessage: (data) => {
        if (gen !== this.generation) return;
        this.handle(data, gen);
      },
      onClose: (reason) => {
        if (gen !== this.generation) return;
        this.socket = undefined;
        this.scheduleReconnect(reason);
      },
    });
  }

  private handle(data: string, gen: number): void {
    let msg: StreamMessage;
    try {
      msg = JSON.parse(data) as StreamMessage;
    } catch {
      return; // not ours to crash on
    }
    const arrival = this.o.now();
    this.armWatchdog(gen);
    switch (msg.type) {
      case 'hello':
        this.heartbeatMs = msg.heartbeatMs > 0 ? msg.heartbeatMs : this.heartbeatMs;
        this.attempt = 0;
        if (this.cursor === undefined) this.cursor = msg.seq;
        this.armWatchdog(gen);
        this.setState('live');
        break;
      case 'reset': {
        this.cursor = msg.seq;
        this.o.onGap?.({ from: this.lastEventTime, to: arrival, reason: msg.reason });
        break;
      }
      case 'reconnect':
        this.cursor = msg.cursor || this.cursor;
        this.nextDelay = msg.retryMs;
        break;
      case 'heartbeat':
        this.cursor = msg.seq;
        break;
      case 'samples':
        this.cursor = msg.seq;
        for (const s of msg.samples) {
          if (this.lastEventTime === undefined || s.ts > this.lastEventTime) this.lastEventTime = s.ts;
        }
        break;
      case 'windows':
        // the windows a group closed for one machine: handed on one by one
        this.cursor = msg.seq;
        for (const w of msg.windows) this.o.onMessage({ type: 'window', seq: msg.seq, machine: msg.machine, data: w }, arrival);
        return;
      case 'fleet':
        break; // no id: a conflated stream does not resume
      default:
        if ('seq' in msg && typeof msg.seq === 'number') this.cursor = msg.seq;
    }
    this.o.onMessage(msg, arrival);
  }

  private armWatchdog(gen: number): void {
    this.o.clearTimer(this.watchdog);
    const limit = this.heartbeatMs * this.o.heartbeatTolerance;
    this.watchdog = this.o.setTimer(() => {
      if (gen !== this.generation) return;
      this.socket?.close();
      this.socket = undefined;
      this.scheduleReconnect('heartbeat_timeout');
    }, limit);
  }

  private scheduleReconnect(reason: string): void {
    this.generation++;
    this.o.clearTimer(this.watchdog);
    this.attempt++;
    const delay = this.nextDelay ?? backoffMs(this.attempt, this.o.minBackoffMs, this.o.maxBackoffMs, this.o.random);
    this.nextDelay = undefined;
    const retryAt = this.o.now() + delay;
    this.state = 'reconnecting';
    this.o.onState?.({ state: 'reconnecting', attempt: this.attempt, retryAt, reason });
    this.timer = this.o.setTimer(() => this.open(), delay);
  }

  private setState(s: ConnState): void {
    this.state = s;
    this.o.onState?.({ state: s, attempt: this.attempt });
  }
}

function sameFilter(a: Filter, b: Filter): boolean {
  if ('all' in a || 'all' in b) return 'all' in a && 'all' in b && a.conflateMs === b.conflateMs;
  return a.machines.length === b.machines.length && a.machines.every((m, i) => m === b.machines[i]);
}

/** The browser transport: a same-origin WebSocket. */
export const webSocketConnect: Connect = (url, h) => {
  const loc = window.location;
  const ws = new WebSocket(`${loc.protocol === 'https:' ? 'wss' : 'ws'}://${loc.host}${url}`);
  let closed = false;
  const done = (reason: string) => {
    if (closed) return;
    closed = true;
    h.onClose(reason);
  };
  ws.onopen = () => h.onOpen();
  ws.onmessage = (e) => {
    if (typeof e.data === 'string') h.onMessage(e.data);
  };
  ws.onclose = (e) => done(e.reason || `closed (${e.code})`);
  ws.onerror = () => done('error');
  return {
    close: () => {
      closed = true;
      ws.close();
    },
  };
};
