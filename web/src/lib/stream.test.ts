import { afterEach, describe, expect, it, vi } from 'vitest';
import type { Alarm } from './api';
import { MachineFeed } from './feed';
import { backoffMs, streamQuery, StreamClient, type ConnInfo, type Gap, type SocketHandlers, type StreamMessage } from './stream';

/** A manual clock and timer queue: tests advance time explicitly. */
class FakeTime {
  now = 1_000_000;
  private seq = 0;
  timers = new Map<number, { at: number; fn: () => void }>();
  setTimer = (fn: () => void, ms: number) => {
    const id = ++this.seq;
    this.timers.set(id, { at: this.now + ms, fn });
    return id;
  };
  clearTimer = (h: unknown) => {
    this.timers.delete(h as number);
  };
  advance(ms: number) {
    const end = this.now + ms;
    for (;;) {
      let next: [number, { at: number; fn: () => void }] | undefined;
      for (const e of this.timers) if (e[1].at <= end && (!next || e[1].at < next[1].at)) next = e;
      if (!next) break;
      this.timers.delete(next[0]);
      this.now = next[1].at;
      next[1].fn();
    }
    this.now = end;
  }
}

interface Conn {
  url: string;
  h: SocketHandlers;
  closed: boolean;
}

function setup(extra: { random?: () => number; ticket?: () => Promise<string | undefined> } = {}) {
  const time = new FakeTime();
  const conns: Conn[] = [];
  const msgs: StreamMessage[] = [];
  const states: ConnInfo[] = [];
  const gaps: Gap[] = [];
  const client = new StreamClient({
    connect: (url, h) => {
      const c: Conn = { url, h, closed: false };
      conns.push(c);
      return { close: () => (c.closed = true) };
    },
    onMessage: (m) => msgs.push(m),
    onState: (s) => states.push(s),
    onGap: (g) => gaps.push(g),
    now: () => time.now,
    setTimer: time.setTimer,
    clearTimer: time.clearTimer,
    random: extra.random ?? (() => 1), // no jitter: delays are exact
    ticket: extra.ticket,
    minBackoffMs: 500,
    maxBackoffMs: 8000,
  });
  const send = (c: Conn, m: object) => c.h.onMessage(JSON.stringify(m));
  const hello = (c: Conn, seq = 100) => {
    c.h.onOpen();
    send(c, { type: 'hello', seq, heartbeatMs: 15_000, queue: 256 });
  };
  const last = () => conns[conns.length - 1];
  return { time, conns, msgs, states, gaps, client, send, hello, last };
}

const samples = (seq: number, ts: number) => ({
  type: 'samples',
  seq,
  machine: 'm1',
  ingestTs: ts + 5,
  samples: [{ metric: 'temp', ts, value: 1 }],
});

describe('streamQuery and backoffMs', () => {
  it('encodes the filter and cursor', () => {
    expect(streamQuery({ all: true })).toBe('all=1');
    expect(streamQuery({ all: true, conflateMs: 250 })).toBe('all=1&conflate=250ms');
    expect(streamQuery({ machines: ['a', 'b c'] }, 42)).toBe('machine=a&machine=b+c&cursor=42');
  });

  it('grows exponentially, is capped, and is jittered', () => {
    const one = () => 1;
    expect([1, 2, 3, 4, 5, 6].map((n) => backoffMs(n, 500, 8000, one))).toEqual([500, 1000, 2000, 4000, 8000, 8000]);
    expect(backoffMs(3, 500, 8000, () => 0)).toBe(1000);
  });
});

describe('StreamClient', () => {
  it('hands on the windows of one message one by one', () => {
    const { client, msgs, hello, send, last } = setup();
    client.subscribe({ machines: ['m1'] });
    hello(last());
    const w = { metric: 'temp', start: 0, size: 10_000, kind: 'final', count: 1, sum: 1, min: 1, max: 1, avg: 1 };
    send(last(), { type: 'windows', seq: 101, machine: 'm1', windows: [w, { ...w, metric: 'vib' }] });
    expect(msgs.slice(1)).toEqual([
      { type: 'window', seq: 101, machine: 'm1', data: w },
      { type: 'window', seq: 101, machine: 'm1', data: { ...w, metric: 'vib' } },
    ]);
    expect(client.cursor).toBe(101);
  });

  it('resubscribes when the conflation changes, and asks for it', () => {
    const { client, conns } = setup();
    client.subscribe({ all: true });
    client.subscribe({ all: true, conflateMs: 250 });
    expect(conns.map((c) => c.url)).toEqual(['/api/v1/stream?all=1', '/api/v1/stream?all=1&conflate=250ms']);
  });

  it('connects with the filter and goes live on hello', () => {
    const { client, conns, hello, states } = setup();
    client.subscribe({ machines: ['m1'] });
    expect(conns).toHaveLength(1);
    expect(conns[0].url).toBe('/api/v1/stream?machine=m1');
    expect(states.at(-1)?.state).toBe('connecting');
    hello(conns[0]);
    expect(states.at(-1)?.state).toBe('live');
    expect(client.cursor).toBe(100);
  });

  it('resumes from the last cursor after the connection drops', () => {
    const { client, conns, hello, send, time, states, last } = setup();
    client.subscribe({ all: true });
    hello(conns[0]);
    send(conns[0], samples(101, 5000));
    send(conns[0], { type: 'window', seq: 102, machine: 'm1', data: {} });
    conns[0].h.onClose('closed (1006)');
    expect(states.at(-1)).toMatchObject({ state: 'reconnecting', attempt: 1, retryAt: time.now + 500 });
    time.advance(499);
    expect(conns).toHaveLength(1);
    time.advance(1);
    expect(last().url).toBe('/api/v1/stream?all=1&cursor=102');
  });

  it('backs off further on each failed attempt and resets once live', () => {
    const { client, conns, hello, time, states, last } = setup();
    client.subscribe({ all: true });
    const delays: number[] = [];
    for (let i = 0; i < 6; i++) {
      last().h.onClose('error');
      const s = states.at(-1)!;
      delays.push(s.retryAt! - time.now);
      time.advance(s.retryAt! - time.now);
    }
    expect(delays).toEqual([500, 1000, 2000, 4000, 8000, 8000]);
    hello(last());
    last().h.onClose('error');
    expect(states.at(-1)!.retryAt! - time.now).toBe(500);
    expect(conns.length).toBe(7);
  });

  it('asks for a backfill when the server cannot replay (reset)', () => {
    const { client, hello, send, time, gaps, last } = setup();
    client.subscribe({ machines: ['m1'] });
    hello(last());
    send(last(), samples(101, 7000));
    send(last(), samples(102, 6000)); // older event time: the newest stays
    last().h.onClose('closed (1012)');
    time.advance(10_000);
    expect(last().url).toContain('cursor=102');
    // the server restarted: the cursor is from before its start
    last().h.onOpen();
    send(last(), { type: 'hello', seq: 9_000_000, heartbeatMs: 15_000, queue: 256 });
    send(last(), { type: 'reset', seq: 9_000_000, reason: 'cursor_expired' });
    expect(gaps).toEqual([{ from: 7000, to: time.now, reason: 'cursor_expired' }]);
    expect(client.cursor).toBe(9_000_000);
  });

  it('reports no gap when the replay covered it', () => {
    const { client, hello, send, time, gaps, msgs, last } = setup();
    client.subscribe({ machines: ['m1'] });
    hello(last());
    send(last(), samples(101, 7000));
    last().h.onClose('error');
    time.advance(500);
    hello(last(), 150);
    send(last(), samples(102, 7100)); // replayed
    expect(gaps).toEqual([]);
    expect(client.cursor).toBe(102);
    expect(msgs.filter((m) => m.type === 'samples')).toHaveLength(2);
  });

  it('follows the server: reconnect message cursor and retry delay', () => {
    const { client, hello, send, time, last } = setup();
    client.subscribe({ all: true });
    hello(last());
    send(last(), samples(101, 1));
    send(last(), { type: 'reconnect', reason: 'slow_client', cursor: 140, retryMs: 2500 });
    last().h.onClose('closed (1013)');
    time.advance(2499);
    expect(last().url).not.toContain('cursor=');
    time.advance(1);
    expect(last().url).toBe('/api/v1/stream?all=1&cursor=140');
  });

  it('treats a silent connection as dead after missed heartbeats', () => {
    const { client, hello, send, time, conns, states, last } = setup();
    client.subscribe({ all: true });
    hello(last());
    time.advance(30_000);
    send(last(), { type: 'heartbeat', seq: 120, ts: time.now });
    time.advance(37_499);
    expect(conns[0].closed).toBe(false);
    time.advance(1);
    expect(conns[0].closed).toBe(true);
    expect(states.at(-1)).toMatchObject({ state: 'reconnecting', reason: 'heartbeat_timeout' });
    time.advance(500);
    expect(last().url).toBe('/api/v1/stream?all=1&cursor=120');
  });

  it('switches filters without mixing the old connection in', () => {
    const { client, hello, send, conns, msgs } = setup();
    client.subscribe({ machines: ['a'] });
    hello(conns[0]);
    client.subscribe({ machines: ['b'] });
    expect(conns[0].closed).toBe(true);
    expect(conns[1].url).toBe('/api/v1/stream?machine=b');
    send(conns[0], samples(200, 1)); // late message of the old connection
    expect(msgs.filter((m) => m.type === 'samples')).toHaveLength(0);
    conns[0].h.onClose('closed');
    expect(conns).toHaveLength(2);
  });

  it('ignores malformed frames and stops for good', () => {
    const { client, hello, conns, msgs, time, states } = setup();
    client.subscribe({ all: true });
    hello(conns[0]);
    conns[0].h.onMessage('not json');
    expect(msgs).toHaveLength(1);
    client.stop();
    expect(states.at(-1)?.state).toBe('stopped');
    time.advance(60_000);
    expect(conns).toHaveLength(1);
  });
});

/** Ticket requests the test answers by hand, in order. */
function tickets() {
  const pending: { resolve(t: string | undefined): void; reject(e: Error): void }[] = [];
  let n = 0;
  return {
    pending,
    fetch: () => {
      n++;
      return new Promise<string | undefined>((resolve, reject) => pending.push({ resolve, reject }));
    },
    get count() {
      return n;
    },
  };
}

/** Lets the promise callbacks run. */
const settle = () => new Promise((r) => setTimeout(r, 0));

describe('StreamClient with tickets', () => {
  it('fetches a ticket before connecting and puts it on the URL', async () => {
    const t = tickets();
    const { client, conns, states } = setup({ ticket: t.fetch });
    client.subscribe({ machines: ['m1'] });
    expect(t.count).toBe(1);
    expect(conns).toHaveLength(0); // not before the ticket
    expect(states.at(-1)?.state).toBe('connecting');
    t.pending[0].resolve('tk1');
    await settle();
    expect(conns.map((c) => c.url)).toEqual(['/api/v1/stream?machine=m1&ticket=tk1']);
  });

  it('fetches a fresh ticket for every reconnect and resumes from the cursor', async () => {
    const t = tickets();
    const { client, conns, hello, send, time, last } = setup({ ticket: t.fetch });
    client.subscribe({ all: true });
    t.pending[0].resolve('tk1');
    await settle();
    hello(last());
    send(last(), samples(101, 5000));
    last().h.onClose('closed (1006)');
    time.advance(500);
    expect(t.count).toBe(2);
    t.pending[1].resolve('tk2');
    await settle();
    expect(last().url).toBe('/api/v1/stream?all=1&cursor=101&ticket=tk2');
    // and again after a dead connection (missed heartbeats)
    hello(last(), 101);
    time.advance(37_500);
    time.advance(500);
    t.pending[2].resolve('tk3');
    await settle();
    expect(conns.map((c) => new URL(c.url, 'http://x').searchParams.get('ticket'))).toEqual(['tk1', 'tk2', 'tk3']);
  });

  it('backs off and tries a new ticket when the ticket request fails', async () => {
    const t = tickets();
    const { client, conns, states, time, last } = setup({ ticket: t.fetch });
    client.subscribe({ all: true });
    t.pending[0].reject(new Error('503 not ready'));
    await settle();
    expect(conns).toHaveLength(0);
    expect(states.at(-1)).toMatchObject({ state: 'reconnecting', attempt: 1, reason: 'stream ticket: 503 not ready' });
    time.advance(499);
    expect(t.count).toBe(1);
    time.advance(1);
    expect(t.count).toBe(2);
    t.pending[1].reject(new Error('503 not ready'));
    await settle();
    expect(states.at(-1)).toMatchObject({ attempt: 2, retryAt: time.now + 1000 });
    time.advance(1000);
    t.pending[2].resolve('tk3');
    await settle();
    expect(last().url).toBe('/api/v1/stream?all=1&ticket=tk3');
  });

  it('gives up on a ticket request that hangs', async () => {
    const t = tickets();
    const { client, states, time, conns } = setup({ ticket: t.fetch });
    client.subscribe({ all: true });
    time.advance(37_500); // 2.5 heartbeat periods of 15 s
    expect(states.at(-1)).toMatchObject({ state: 'reconnecting', reason: 'stream ticket: timed out' });
    t.pending[0].resolve('late'); // too late: not used
    await settle();
    expect(conns).toHaveLength(0);
    time.advance(500);
    expect(t.count).toBe(2);
  });

  it('drops a ticket that arrives after stop or a new subscription', async () => {
    const t = tickets();
    const { client, conns } = setup({ ticket: t.fetch });
    client.subscribe({ machines: ['a'] });
    client.subscribe({ machines: ['b'] });
    t.pending[0].resolve('for-a');
    t.pending[1].resolve('for-b');
    await settle();
    expect(conns.map((c) => c.url)).toEqual(['/api/v1/stream?machine=b&ticket=for-b']);
    client.subscribe({ all: true });
    client.stop();
    t.pending[2].resolve('for-all');
    await settle();
    expect(conns).toHaveLength(1);
  });

  it('connects without a ticket when the server needs none', async () => {
    const { client, conns } = setup({ ticket: async () => undefined });
    client.subscribe({ all: true });
    await settle();
    expect(conns.map((c) => c.url)).toEqual(['/api/v1/stream?all=1']);
  });
});

describe('MachineFeed backfill', () => {
  afterEach(() => vi.unstubAllGlobals());

  it('reloads the gap from the series API and merges it into the rings', async () => {
    const calls: URL[] = [];
    vi.stubGlobal('fetch', async (path: string) => {
      const u = new URL(path, 'http://x');
      calls.push(u);
      const from = Number(u.searchParams.get('from'));
      const body = u.searchParams.get('agg')
        ? { machine: 'm1', metric: 'temp', from, to: from, t: [from], v: [u.searchParams.get('agg') === 'min' ? 1 : 9] }
        : { machine: 'm1', metric: u.searchParams.get('metric'), from, to: from, t: [from + 100, from + 200], v: [5, 6] };
      return new Response(JSON.stringify(body), { status: 200 });
    });
    const feed = new MachineFeed('m1');
    feed.ring('temp').insert(1_000, 4); // received before the gap
    let changes = 0;
    feed.listen(() => changes++);
    const now = Date.now();
    await feed.backfill({ from: now - 30_000, to: now, reason: 'cursor_expired' }, ['temp'], 120_000, 800);
    const series = calls.filter((u) => u.pathname === '/api/v1/machines/m1/series');
    expect(series).toHaveLength(3);
    const raw = series.find((u) => !u.searchParams.get('agg'))!;
    expect(Number(raw.searchParams.get('from'))).toBe(now - 30_000);
    expect(Number(raw.searchParams.get('points'))).toBe(800);
    expect(feed.ring('temp').range().t).toEqual([1_000, now - 30_000 + 100, now - 30_000 + 200]);
    expect([...feed.bands.get('temp')!.values()][0]).toMatchObject({ min: 1, max: 9 });
    expect(changes).toBeGreaterThan(0);
  });

  it('bounds the backfill to the chart span', async () => {
    const froms: number[] = [];
    vi.stubGlobal('fetch', async (path: string) => {
      const u = new URL(path, 'http://x');
      froms.push(Number(u.searchParams.get('from')));
      return new Response(JSON.stringify({ t: [], v: [] }), { status: 200 });
    });
    const feed = new MachineFeed('m1');
    const now = Date.now();
    await feed.backfill({ from: undefined, to: now, reason: 'cursor_unknown' }, ['temp'], 60_000, 400);
    expect(Math.min(...froms)).toBe(now - 60_000);
  });

  it('applies stream messages: samples, windows, notes and alarms', () => {
    const feed = new MachineFeed('m1');
    feed.apply(samples(1, 500) as StreamMessage, true);
    feed.apply(samples(2, 400) as StreamMessage, true);
    feed.apply({ ...samples(3, 600), machine: 'other' } as StreamMessage, true);
    expect(feed.ring('temp').range().t).toEqual([400, 500]);
    feed.apply({ type: 'window', seq: 4, machine: 'm1', data: { metric: 'temp', start: 0, size: 10_000, kind: 'final', count: 2, sum: 3, min: 1, max: 2, avg: 1.5 } }, true);
    feed.apply({ type: 'window', seq: 5, machine: 'm1', data: { metric: 'temp', start: 0, size: 10_000, kind: 'late', count: 1, sum: 7, min: 7, max: 7, avg: 7 } }, true);
    expect(feed.bands.get('temp')!.get(0)).toMatchObject({ min: 1, max: 7 });
    const note = { id: '1', machine: 'm1', text: 'hi', author: 'a', time: '2026-01-01T00:00:00Z' };
    feed.apply({ type: 'note', seq: 6, machine: 'm1', data: note }, true);
    feed.addNote(note);
    expect(feed.notes).toHaveLength(1);
    const alarm: Alarm = { id: '7', machine: 'm1', kind: 'high', state: 'active', raisedAt: '2026-01-01T00:00:00Z', acknowledged: false };
    feed.apply({ type: 'alarm', seq: 7, machine: 'm1', data: alarm }, true);
    feed.apply({ type: 'alarm', seq: 8, machine: 'm1', data: { ...alarm, acknowledged: true } }, true);
    expect(feed.alarms).toEqual([{ ...alarm, acknowledged: true }]);
  });
});
