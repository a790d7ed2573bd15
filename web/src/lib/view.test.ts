import { describe, expect, it, vi } from 'vitest';
import { layoutGrid, visibleRows } from './grid';
import { percentile, LatencyTracker } from './latency';
import { FrameLoop } from './frame';
import { formatRoute, parseRoute } from './route';
import { Dashboard, FleetStore, matchesStatus } from './store';

describe('routes', () => {
  it('round-trips machine, range and metrics through the hash', () => {
    const cases = [
      '#/',
      '#/alarms',
      '#/oee',
      '#/oee?period=day&site=lyon',
      '#/m/press-07',
      '#/m/press-07?range=1h',
      '#/m/a%20b?range=1796020000000~1796023600000&metrics=temp,rpm',
      '#/?q=oven&status=alarm&group=line',
    ];
    for (const h of cases) expect(formatRoute(parseRoute(h))).toBe(h);
  });

  it('falls back to live for a bad range', () => {
    expect(parseRoute('#/m/x?range=9~3')).toMatchObject({ range: { kind: 'live', label: 'live' } });
    expect(parseRoute('#/m/x?range=bogus')).toMatchObject({ range: { kind: 'live' } });
    expect(parseRoute('#/m/x?range=1~2')).toMatchObject({ range: { kind: 'custom', from: 1, to: 2 } });
  });
});

describe('virtualised grid', () => {
  const items = Array.from({ length: 10_000 }, (_, i) => i);

  it('lays out groups in rows and renders only what is in view', () => {
    const layout = layoutGrid([{ key: 'a', label: 'A', items }], 6, 132, 36, false);
    expect(layout.rows).toHaveLength(Math.ceil(10_000 / 6));
    expect(layout.height).toBe(Math.ceil(10_000 / 6) * 132);
    const rows = visibleRows(layout, 100_000, 900, 264);
    expect(rows.length).toBeLessThanOrEqual(Math.ceil((900 + 2 * 264) / 132) + 1);
    expect(rows[0].top).toBeLessThanOrEqual(100_000 - 264 + 132);
    expect(rows.at(-1)!.top).toBeGreaterThanOrEqual(100_000 + 900);
  });

  it('puts a header before each group', () => {
    const layout = layoutGrid(
      [
        { key: 'a', label: 'A', items: [1, 2, 3] },
        { key: 'b', label: 'B', items: [4] },
      ],
      2,
      100,
      30,
      true,
    );
    expect(layout.rows.map((r) => r.kind)).toEqual(['header', 'tiles', 'tiles', 'header', 'tiles']);
    expect(layout.rows.map((r) => r.top)).toEqual([0, 30, 130, 230, 260]);
  });
});

describe('latency and frames', () => {
  it('measures arrival to draw', () => {
    const t = new LatencyTracker(4);
    t.arrived(1000);
    t.arrived(1100);
    t.drawn(1200);
    expect(t.stats()).toMatchObject({ p50: 100, p99: 200, n: 2 });
    expect(percentile([], 50)).toBeUndefined();
    expect(percentile([5, 1, 3], 100)).toBe(5);
  });

  it('runs each requested drawer once per frame', () => {
    const frames: ((t: number) => void)[] = [];
    const loop = new FrameLoop((cb) => frames.push(cb), () => 0);
    let a = 0;
    let b = 0;
    const da = () => a++;
    const db = () => b++;
    loop.request(da);
    loop.request(da);
    loop.request(db);
    expect(frames).toHaveLength(1);
    frames.shift()!(0);
    expect([a, b]).toEqual([1, 1]);
    loop.request(da);
    loop.cancel(da);
    frames.shift()!(0);
    expect(a).toBe(1);
  });
});

describe('FleetStore', () => {
  it('merges the list with streamed values and counts statuses', () => {
    const f = new FleetStore();
    f.load([
      { id: 'b', status: 'online', alarm: false, metrics: { temp: { value: 1, ts: 10 } } },
      { id: 'a', status: 'online', alarm: true },
      { id: 'c', status: 'offline', alarm: false },
    ]);
    f.apply({ type: 'samples', seq: 1, machine: 'b', ingestTs: 20, samples: [{ metric: 'temp', ts: 20, value: 2 }] }, 25);
    f.apply({ type: 'status', seq: 2, machine: 'c', data: { status: 'online', alarm: false, lastSeen: 30 } }, 30);
    expect(f.list().map((e) => e.m.id)).toEqual(['a', 'b', 'c']);
    expect(f.counts()).toEqual({ online: 3, offline: 0, alarm: 1, total: 3 });
    // an older list does not roll back a streamed value
    f.load([{ id: 'b', status: 'online', alarm: false, metrics: { temp: { value: 1, ts: 10 } } }]);
    expect(f.entries.get('b')!.m.metrics!.temp).toEqual({ value: 2, ts: 20 });
    expect(f.list().map((e) => e.m.id)).toEqual(['b']);
  });
});

describe('FleetStore counts liveness and alarms apart', () => {
  it('counts an offline machine as offline, also while in alarm', () => {
    const f = new FleetStore();
    f.load([
      { id: 'on', status: 'online', alarm: false },
      { id: 'on-alarm', status: 'online', alarm: true },
      { id: 'off', status: 'offline', alarm: false },
      { id: 'off-alarm', status: 'offline', alarm: true },
    ]);
    expect(f.counts()).toEqual({ online: 2, offline: 2, alarm: 2, total: 4 });
    const shown = (filter: string) =>
      f
        .list()
        .filter((e) => matchesStatus(e, filter))
        .map((e) => e.m.id);
    expect(shown('all')).toEqual(['off', 'off-alarm', 'on', 'on-alarm']);
    expect(shown('online')).toEqual(['on', 'on-alarm']);
    expect(shown('offline')).toEqual(['off', 'off-alarm']);
    expect(shown('alarm')).toEqual(['off-alarm', 'on-alarm']);

    // the offline alarm raised: a status message says offline, not in alarm
    f.apply({ type: 'status', seq: 1, machine: 'on', data: { status: 'offline', alarm: false, lastSeen: 5 } }, 10);
    // a threshold alarm cleared while offline
    f.apply({ type: 'status', seq: 2, machine: 'off-alarm', data: { status: 'offline', alarm: false } }, 10);
    expect(f.counts()).toEqual({ online: 1, offline: 3, alarm: 1, total: 4 });
    // a conflated fleet update: back online, in alarm
    f.apply({ type: 'fleet', seq: 3, machines: [{ machine: 'off', status: 'online', alarm: true, metrics: {} }] }, 20);
    expect(f.counts()).toEqual({ online: 2, offline: 2, alarm: 2, total: 4 });
  });
});

describe('FleetStore and the conflated stream', () => {
  it('merges fleet messages: newer values, status, alarm, lastSeen, new machines', () => {
    const f = new FleetStore();
    f.load([
      { id: 'a', status: 'offline', alarm: false, metrics: { temp: { value: 1, ts: 10 } } },
      { id: 'b', status: 'online', alarm: false },
    ]);
    const changed = f.apply(
      {
        type: 'fleet',
        seq: 5,
        machines: [
          { machine: 'a', lastSeen: 40, metrics: { temp: { value: 3, ts: 30 } } },
          { machine: 'b', status: 'offline', alarm: true, lastSeen: 41, metrics: {} },
          { machine: 'c', lastSeen: 42, metrics: { vib: { value: 0.5, ts: 31 } } },
        ],
      },
      50,
    );
    expect(changed).toBe(true);
    expect(f.entries.get('a')!.m).toMatchObject({ status: 'online', lastSeen: 40, metrics: { temp: { value: 3, ts: 30 } } });
    expect(f.entries.get('b')!.m).toMatchObject({ status: 'offline', alarm: true, lastSeen: 41 });
    expect(f.entries.get('c')!.m.metrics).toEqual({ vib: { value: 0.5, ts: 31 } });
    expect(f.counts()).toEqual({ online: 2, offline: 1, alarm: 1, total: 3 });
    // an older value in a later message does not roll back
    f.apply({ type: 'fleet', seq: 6, machines: [{ machine: 'a', metrics: { temp: { value: 9, ts: 20 } } }] }, 60);
    expect(f.entries.get('a')!.m.metrics!.temp).toEqual({ value: 3, ts: 30 });
  });
});

describe('plot time conversions', () => {
  it('round-trips epoch ms through what Plotly reports', async () => {
    const { fromPlotX, toPlotX } = await import('./time');
    const t = Date.UTC(2026, 10, 30, 8, 30, 15, 250);
    const x = toPlotX(t);
    // Plotly reports ranges as "YYYY-MM-DD HH:MM:SS.sss" in the shifted (UTC-looking) time
    const s = new Date(x).toISOString().replace('T', ' ').replace('Z', '');
    expect(fromPlotX(s)).toBe(t);
    expect(fromPlotX(x)).toBe(t);
    expect(fromPlotX('2026-11-30')).toBe(fromPlotX('2026-11-30 00:00:00'));
    expect(Number.isNaN(fromPlotX('2026-11-30'))).toBe(false);
  });
});

describe('FleetStore and machine states', () => {
  it('takes a streamed state change and keeps the newer of listed and streamed states', () => {
    const f = new FleetStore();
    f.load([{ id: 'm', status: 'online', alarm: false, states: { state: { value: 'RUNNING', ts: 10 } } }]);
    const v = f.entries.get('m')!.v;
    // the stream hands on message types ./wire does not know yet
    const msg = (value: string, ts: number, machine = 'm') =>
      ({ type: 'state', seq: 1, machine, data: { name: 'state', value, ts } }) as unknown as Parameters<FleetStore['apply']>[0];
    expect(f.apply(msg('DOWN', 20), 21)).toBe(true);
    expect(f.entries.get('m')!.m.states?.state).toEqual({ value: 'DOWN', ts: 20 });
    expect(f.entries.get('m')!.v).toBeGreaterThan(v);
    // an older change is not shown over a newer one
    expect(f.apply(msg('IDLE', 15), 22)).toBe(false);
    expect(f.entries.get('m')!.m.states?.state.value).toBe('DOWN');
    // a list from before the change does not roll it back; a newer list wins
    f.load([{ id: 'm', status: 'online', alarm: false, states: { state: { value: 'RUNNING', ts: 10 } } }]);
    expect(f.entries.get('m')!.m.states?.state.value).toBe('DOWN');
    f.load([{ id: 'm', status: 'online', alarm: false, states: { state: { value: 'STOPPED', ts: 30 } } }]);
    expect(f.entries.get('m')!.m.states?.state.value).toBe('STOPPED');
    // a state message for an unknown machine changes nothing
    expect(f.apply(msg('DOWN', 40, 'x'), 41)).toBe(false);
  });
});

describe('Dashboard fleet prefetch', () => {
  const machine = (id: string) => ({ id, status: 'online', alarm: false, metrics: { temp: { value: 1, ts: 1 } } });
  const answer = (body: unknown, status = 200) =>
    Promise.resolve(new Response(JSON.stringify(body), { status, headers: { 'Content-Type': 'application/json' } }));

  it('uses the list asked for at start-up once, then asks again', async () => {
    const d = new Dashboard();
    d.prefetchFleet(answer({ count: 1, machines: [machine('early')] }));
    const later: string[] = [];
    vi.stubGlobal('fetch', (url: string) => (later.push(url), answer({ count: 1, machines: [machine('later')] })));
    try {
      await d.refreshFleet();
      expect(later).toEqual([]);
      expect([...d.fleet.entries.keys()]).toEqual(['early']);
      await d.refreshFleet();
      expect(later).toEqual(['/api/v1/machines']);
      expect([...d.fleet.entries.keys()]).toEqual(['later']);
    } finally {
      vi.unstubAllGlobals();
    }
  });

  it('drops a stale prefetch', async () => {
    const d = new Dashboard();
    d.prefetchFleet(answer({ count: 1, machines: [machine('old')] }), Date.now() - 60_000);
    vi.stubGlobal('fetch', () => answer({ count: 1, machines: [machine('new')] }));
    try {
      await d.refreshFleet();
      expect([...d.fleet.entries.keys()]).toEqual(['new']);
    } finally {
      vi.unstubAllGlobals();
    }
  });

  it('drops a refused prefetch (signed out) and asks through the API', async () => {
    const d = new Dashboard();
    d.prefetchFleet(answer({ title: 'Unauthorized' }, 401));
    vi.stubGlobal('fetch', () => answer({ count: 1, machines: [machine('m1')] }));
    try {
      await d.refreshFleet();
      expect([...d.fleet.entries.keys()]).toEqual(['m1']);
    } finally {
      vi.unstubAllGlobals();
    }
  });
});
