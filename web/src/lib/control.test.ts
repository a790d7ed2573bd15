import { describe, expect, it } from 'vitest';
import {
  applyCommand,
  asControlMessage,
  computeDelta,
  editableFields,
  extendIntervals,
  fmtDuration,
  growTo,
  oeeLines,
  parseETag,
  parseField,
  parseForm,
  schemaFields,
  stateClass,
  stateTotals,
  timelineLayout,
  topDowntime,
  twinRows,
  newerTwin,
  type Twin,
  barWidth,
  fmtPct,
  type Command,
  type CommandState,
  type OEEAnswer,
  type OEEFigures,
  twinOfMessage,
} from './control';

describe('twin rows and the delta', () => {
  it('computes the delta as the server does: nested objects recursively, arrays whole', () => {
    const cases: { name: string; desired: Record<string, unknown>; reported: Record<string, unknown>; want: Record<string, unknown> }[] = [
      { name: 'equal', desired: { a: 1 }, reported: { a: 1, b: 2 }, want: {} },
      { name: 'differs', desired: { a: 1, m: 'auto' }, reported: { a: 2, m: 'auto' }, want: { a: 1 } },
      { name: 'not reported', desired: { a: 1 }, reported: {}, want: { a: 1 } },
      { name: 'nested', desired: { s: { t: 1, p: 2 } }, reported: { s: { t: 1, p: 3 } }, want: { s: { p: 2 } } },
      { name: 'nested equal', desired: { s: { t: 1 } }, reported: { s: { t: 1, x: 9 } }, want: {} },
      { name: 'array whole', desired: { l: [1, 2] }, reported: { l: [1, 2, 3] }, want: { l: [1, 2] } },
      { name: 'array equal', desired: { l: [1, { a: 2 }] }, reported: { l: [1, { a: 2 }] }, want: {} },
      { name: 'object vs scalar', desired: { s: { t: 1 } }, reported: { s: 5 }, want: { s: { t: 1 } } },
    ];
    for (const c of cases) expect(computeDelta(c.desired, c.reported), c.name).toEqual(c.want);
  });

  it('lists every leaf of both sides with the delta highlighted and each side’s age', () => {
    const rows = twinRows({
      desired: { tempSetpoint: 180, mode: 'auto', limits: { hi: 5, lo: 1 } },
      reported: { tempSetpoint: 175, mode: 'auto', fw: '1.2', limits: { hi: 5, lo: 0 } },
      delta: { tempSetpoint: 180, limits: { lo: 1 } },
      metadata: {
        desired: { tempSetpoint: { updatedAt: 1000 }, mode: { updatedAt: 900 }, limits: { hi: { updatedAt: 800 }, lo: { updatedAt: 810 } } },
        reported: { tempSetpoint: { updatedAt: 1100 }, fw: { updatedAt: 50 } },
      },
    });
    expect(rows.map((r) => [r.path, r.pending])).toEqual([
      ['fw', false],
      ['limits.hi', false],
      ['limits.lo', true],
      ['mode', false],
      ['tempSetpoint', true],
    ]);
    const t = rows.find((r) => r.path === 'tempSetpoint')!;
    expect(t).toMatchObject({ desired: 180, reported: 175, desiredAt: 1000, reportedAt: 1100, hasDesired: true, hasReported: true });
    const fw = rows.find((r) => r.path === 'fw')!;
    expect(fw).toMatchObject({ hasDesired: false, desired: undefined, reported: '1.2', reportedAt: 50 });
    expect(rows.find((r) => r.path === 'limits.lo')!.desiredAt).toBe(810);
    expect(rows.find((r) => r.path === 'mode')!.reportedAt).toBeUndefined();
  });

  it('computes the delta itself when the twin carries none, and highlights a whole object in the delta', () => {
    const rows = twinRows({ desired: { a: 1, s: { x: 1, y: 2 } }, reported: { a: 1, s: 3 } });
    expect(rows.filter((r) => r.pending).map((r) => r.path)).toEqual(['s.x', 's.y']);
  });

  it('keeps the newer twin when an answer and a stream message cross', () => {
    const t = (version: number, reportedVersion: number): Twin => ({ machine: 'm', desired: {}, reported: {}, delta: {}, version, reportedVersion, metadata: { desired: {}, reported: {} } });
    const cases: [Twin | undefined, Twin, string][] = [
      [undefined, t(1, 1), 'new'],
      [t(2, 5), t(3, 5), 'new'],
      [t(2, 5), t(2, 6), 'new'],
      [t(2, 5), t(2, 5), 'new'],
      [t(2, 5), t(1, 5), 'cur'],
      [t(2, 5), t(2, 4), 'cur'],
    ];
    for (const [cur, next, want] of cases) expect(newerTwin(cur, next), `${cur?.version}.${cur?.reportedVersion} ← ${next.version}.${next.reportedVersion}`).toBe(want === 'new' ? next : cur);
  });

  it('reads ETags and W/ forms', () => {
    expect(parseETag('"7.12"')).toEqual({ version: 7, reportedVersion: 12 });
    expect(parseETag('W/"7"')).toEqual({ version: 7, reportedVersion: undefined });
    expect(parseETag('7')).toBeUndefined();
    expect(parseETag(null)).toBeUndefined();
  });
});

describe('schema → form fields', () => {
  const schema = {
    type: 'object' as const,
    required: ['tempSetpoint'],
    properties: {
      tempSetpoint: { type: 'number' as const, minimum: 20, maximum: 250 },
      mode: { type: 'string' as const, enum: ['auto', 'manual'] },
      count: { type: 'integer' as const },
      label: { type: 'string' as const, maxLength: 3 },
      on: { type: 'boolean' as const },
      recipe: { type: 'object' as const, properties: { a: { type: 'number' as const } } },
    },
  };

  it('makes one field per property, required first, kinds from type and enum', () => {
    const f = schemaFields(schema);
    expect(f.map((x) => [x.name, x.kind, x.required])).toEqual([
      ['tempSetpoint', 'number', true],
      ['count', 'integer', false],
      ['label', 'string', false],
      ['mode', 'enum', false],
      ['on', 'boolean', false],
      ['recipe', 'json', false],
    ]);
    expect(f[0]).toMatchObject({ min: 20, max: 250 });
    expect(f.find((x) => x.name === 'mode')!.options).toEqual(['auto', 'manual']);
    expect(schemaFields(undefined)).toEqual([]);
    expect(schemaFields({ type: 'object' })).toEqual([]);
  });

  it('offers only scalar desired fields for editing', () => {
    expect([...editableFields(schema).keys()].sort()).toEqual(['count', 'label', 'mode', 'on', 'tempSetpoint']);
  });

  it('parses inputs into JSON values with the schema’s reasons', () => {
    const f = Object.fromEntries(schemaFields(schema).map((x) => [x.name, x]));
    const cases: { name: string; field: string; text: string; want: unknown }[] = [
      { name: 'number', field: 'tempSetpoint', text: '180.5', want: { value: 180.5 } },
      { name: 'below minimum', field: 'tempSetpoint', text: '10', want: { error: 'must be ≥ 20' } },
      { name: 'above maximum', field: 'tempSetpoint', text: '251', want: { error: 'must be ≤ 250' } },
      { name: 'not a number', field: 'tempSetpoint', text: '1e', want: { error: 'must be a number' } },
      { name: 'required empty', field: 'tempSetpoint', text: ' ', want: { error: 'required' } },
      { name: 'optional empty', field: 'count', text: '', want: { skip: true } },
      { name: 'integer', field: 'count', text: '3.5', want: { error: 'must be an integer' } },
      { name: 'enum', field: 'mode', text: '"manual"', want: { value: 'manual' } },
      { name: 'enum other', field: 'mode', text: '"fast"', want: { error: 'not one of the allowed values' } },
      { name: 'maxLength in characters', field: 'label', text: 'äöü', want: { value: 'äöü' } },
      { name: 'too long', field: 'label', text: 'abcd', want: { error: 'at most 3 characters' } },
      { name: 'boolean', field: 'on', text: 'false', want: { value: false } },
      { name: 'json', field: 'recipe', text: '{"a":1}', want: { value: { a: 1 } } },
      { name: 'bad json', field: 'recipe', text: '{a', want: { error: 'not valid JSON' } },
    ];
    for (const c of cases) expect(parseField(f[c.field], c.text), c.name).toEqual(c.want);
  });

  it('reads a whole form into params or errors by field', () => {
    const fields = schemaFields({ type: 'object', required: ['counter'], properties: { counter: { enum: ['parts'] }, n: { type: 'integer' } } });
    expect(parseForm(fields, { counter: '"parts"' })).toEqual({ params: { counter: 'parts' }, errors: {} });
    expect(parseForm(fields, { n: 'x' })).toEqual({ params: {}, errors: { counter: 'required', n: 'must be a number' } });
  });
});

function cmd(id: string, state: CommandState, steps: CommandState[], createdAt: string, updatedAt = createdAt): Command {
  return {
    id,
    machine: 'm',
    name: 'reset',
    params: {},
    state,
    timeoutMs: 60_000,
    createdAt,
    updatedAt,
    expiresAt: createdAt,
    history: steps.map((s) => ({ state: s, at: updatedAt })),
  };
}

describe('command lifecycle', () => {
  it('adds new commands newest first and follows each through its states', () => {
    let l: Command[] = [];
    l = applyCommand(l, cmd('a', 'pending', ['pending'], '2026-12-07T15:00:00.000Z'));
    l = applyCommand(l, cmd('b', 'pending', ['pending'], '2026-12-07T15:01:00.000Z'));
    l = applyCommand(l, cmd('a', 'delivered', ['pending', 'delivered'], '2026-12-07T15:00:00.000Z', '2026-12-07T15:00:01.000Z'));
    l = applyCommand(l, cmd('a', 'succeeded', ['pending', 'delivered', 'succeeded'], '2026-12-07T15:00:00.000Z', '2026-12-07T15:00:02.000Z'));
    expect(l.map((c) => [c.id, c.state])).toEqual([
      ['b', 'pending'],
      ['a', 'succeeded'],
    ]);
  });

  it('keeps the further state when an older update arrives after a newer one', () => {
    const done = cmd('a', 'expired', ['pending', 'expired'], '2026-12-07T15:00:00.000Z', '2026-12-07T15:01:00.000Z');
    const cases: { name: string; late: Command }[] = [
      { name: 'replayed creation', late: cmd('a', 'pending', ['pending'], '2026-12-07T15:00:00.000Z') },
      {
        name: 'a delivered listed late with a longer history but not terminal',
        late: cmd('a', 'delivered', ['pending', 'delivered', 'accepted'], '2026-12-07T15:00:00.000Z', '2026-12-07T15:00:30.000Z'),
      },
      { name: 'same progress, older update', late: { ...done, updatedAt: '2026-12-07T15:00:59.000Z', reason: 'old' } },
    ];
    for (const c of cases) {
      const l = applyCommand([done], c.late);
      expect(l, c.name).toHaveLength(1);
      expect(l[0], c.name).toBe(done);
    }
  });

  it('keeps at most limit commands', () => {
    let l: Command[] = [];
    for (let i = 0; i < 5; i++) l = applyCommand(l, cmd(`c${i}`, 'pending', ['pending'], `2026-12-07T15:0${i}:00.000Z`), 3);
    expect(l.map((c) => c.id)).toEqual(['c4', 'c3', 'c2']);
  });

  it('recognises control stream messages only', () => {
    expect(asControlMessage({ type: 'command', seq: 1, machine: 'm', data: cmd('a', 'pending', [], 'x') } as { type: string })?.type).toBe(
      'command',
    );
    expect(asControlMessage({ type: 'samples' })).toBeUndefined();
    expect(asControlMessage({ type: 'twin', machine: 'm' } as { type: string })).toBeUndefined();
  });

  it('reads the twin of a stream twin message, none of a deletion', () => {
    const data = { machine: 'm', desired: { t: 180 }, reported: { t: 175 }, version: 3, reportedVersion: 7 };
    expect(twinOfMessage(data)).toEqual({ ...data, delta: { t: 180 }, metadata: { desired: {}, reported: {} } });
    expect(twinOfMessage({ machine: 'm', deleted: true })).toBeUndefined();
    expect(twinOfMessage({ machine: 'm', desired: {}, reported: {} })).toBeUndefined();
  });
});

describe('state timeline', () => {
  it('clips to the range, merges neighbours of one value and places them in percent', () => {
    const segs = timelineLayout(
      [
        { value: 'RUNNING', from: -50, to: 20 },
        { value: 'RUNNING', from: 20, to: 40 },
        { value: 'DOWN', from: 40, to: 50 },
        { value: 'IDLE', from: 50, to: 50 },
        { value: 'STOPPED', from: 50, to: 150 },
      ],
      0,
      100,
    );
    expect(segs.map((s) => [s.value, s.left, s.width, s.cls])).toEqual([
      ['RUNNING', 0, 40, 'running'],
      ['DOWN', 40, 10, 'down'],
      ['STOPPED', 50, 50, 'stopped'],
    ]);
    expect(timelineLayout([{ value: 'x', from: 0, to: 1 }], 5, 5)).toEqual([]);
  });

  it('extends the intervals with a live change', () => {
    const ivs = [
      { value: 'RUNNING', from: 0, to: 100 },
      { value: 'DOWN', from: 100, to: 150 },
    ];
    expect(extendIntervals(ivs, { value: 'RUNNING', ts: 160 }, 200)).toEqual([
      { value: 'RUNNING', from: 0, to: 100 },
      { value: 'DOWN', from: 100, to: 160 },
      { value: 'RUNNING', from: 160, to: 200 },
    ]);
    // same value: the last interval grows; an older change is left to the next reload
    expect(extendIntervals(ivs, { value: 'DOWN', ts: 170 }, 200).at(-1)).toEqual({ value: 'DOWN', from: 100, to: 200 });
    expect(extendIntervals(ivs, { value: 'IDLE', ts: 50 }, 200)).toBe(ivs);
    expect(extendIntervals([], { value: 'IDLE', ts: 50 }, 60)).toEqual([{ value: 'IDLE', from: 50, to: 60 }]);
    expect(stateTotals(extendIntervals(ivs, { value: 'RUNNING', ts: 160 }, 200))).toEqual([
      { value: 'RUNNING', ms: 140 },
      { value: 'DOWN', ms: 60 },
    ]);
  });

  it('grows the last interval to now, never shrinks it', () => {
    const ivs = [{ value: 'RUNNING', from: 0, to: 100 }];
    expect(growTo(ivs, 150)).toEqual([{ value: 'RUNNING', from: 0, to: 150 }]);
    expect(growTo(ivs, 50)).toBe(ivs);
    expect(growTo([], 50)).toEqual([]);
  });

  it('formats durations', () => {
    expect([0, 12_400, 250_000, 7_500_000].map((ms) => fmtDuration(ms))).toEqual(['0s', '12s', '4m 10s', '2h 05m']);
  });

  it('colours states', () => {
    expect(['RUNNING', 'idle', 'DOWN', 'STOPPED', 'SETUP', undefined].map((v) => stateClass(v))).toEqual([
      'running',
      'idle',
      'down',
      'stopped',
      'neutral',
      'neutral',
    ]);
  });
});

describe('OEE', () => {
  const fig = (oee: number | null, downtime: { state: string; ms: number }[] = []): OEEFigures => ({
    from: 0,
    to: 1,
    plannedMs: 1,
    runMs: 1,
    totalCount: 1,
    goodCount: 1,
    availability: oee,
    performance: oee,
    quality: oee,
    oee,
    downtime,
  });

  it('groups machines under their line, worst OEE first, lines by site and name', () => {
    const a: OEEAnswer = {
      from: 0,
      to: 1,
      step: '8h',
      machines: [
        { machine: 'm2', site: 'lyon', line: 'A', buckets: [], total: fig(0.9) },
        { machine: 'm1', site: 'lyon', line: 'A', buckets: [], total: fig(0.5) },
        { machine: 'm3', site: 'lyon', line: 'A', buckets: [], total: fig(null) },
        { machine: 'p1', site: 'paris', line: '', buckets: [], total: fig(0.7) },
        { machine: 'l10', site: 'lyon', line: 'B10', buckets: [], total: fig(0.7) },
        { machine: 'l2', site: 'lyon', line: 'B2', buckets: [], total: fig(0.7) },
      ],
      lines: [{ site: 'lyon', line: 'A', buckets: [], total: fig(0.7) }],
      sites: [],
    };
    const g = oeeLines(a);
    expect(g.map((x) => `${x.site}/${x.line}`)).toEqual(['lyon/A', 'lyon/B2', 'lyon/B10', 'paris/']);
    expect(g[0].machines.map((m) => m.machine)).toEqual(['m1', 'm2', 'm3']);
    expect(g[0].total.oee).toBe(0.7);
  });

  it('sums downtime reasons and keeps the top ones', () => {
    const top = topDowntime(
      [fig(1, [{ state: 'DOWN', ms: 10 }, { state: 'IDLE', ms: 30 }]), fig(1, [{ state: 'DOWN', ms: 25 }, { state: 'SETUP', ms: 1 }])],
      2,
    );
    expect(top).toEqual([
      { state: 'DOWN', ms: 35 },
      { state: 'IDLE', ms: 30 },
    ]);
  });

  it('formats ratios, null as undefined, and clamps bars', () => {
    expect(fmtPct(0.8461)).toBe('84.6 %');
    expect(fmtPct(null)).toBe('—');
    expect(barWidth(1.2)).toBe(100);
    expect(barWidth(null)).toBe(0);
    expect(barWidth(0.25)).toBe(25);
  });
});
