import { SpanKind } from '@opentelemetry/api';
import { InMemorySpanExporter } from '@opentelemetry/sdk-trace';
import { describe, expect, it } from 'vitest';
import { createRenderExporter } from './otel';
import type { StreamMessage } from './stream';
import { parseTraceparent, RELAY_PATH, RenderTracer, traceUrl, type ExporterConfig, type Render } from './tracing';

const TRACE = '4bf92f3577b34da6a3ce929d0e0e4736';
const PARENT = '00f067aa0ba902b7';
const TP = `00-${TRACE}-${PARENT}-01`;

describe('parseTraceparent', () => {
  it.each([
    ['sampled', TP, { traceId: TRACE, spanId: PARENT, flags: 1 }],
    ['not sampled', `00-${TRACE}-${PARENT}-00`, { traceId: TRACE, spanId: PARENT, flags: 0 }],
    ['surrounding spaces', ` ${TP} `, { traceId: TRACE, spanId: PARENT, flags: 1 }],
    ['a later version with more fields', `01-${TRACE}-${PARENT}-01-what-ever`, { traceId: TRACE, spanId: PARENT, flags: 1 }],
    ['version 00 with more fields', `${TP}-extra`, undefined],
    ['version ff', `ff-${TRACE}-${PARENT}-01`, undefined],
    ['upper case', TP.toUpperCase(), undefined],
    ['zero trace id', `00-${'0'.repeat(32)}-${PARENT}-01`, undefined],
    ['zero span id', `00-${TRACE}-${'0'.repeat(16)}-01`, undefined],
    ['short trace id', `00-${TRACE.slice(2)}-${PARENT}-01`, undefined],
    ['empty', '', undefined],
    ['not a string', 42, undefined],
  ])('%s', (_, input, want) => {
    expect(parseTraceparent(input)).toEqual(want);
  });
});

describe('traceUrl', () => {
  it('fills {traceId} wherever it is', () => {
    expect(traceUrl('http://jaeger:16686/trace/{traceId}', TRACE)).toBe(`http://jaeger:16686/trace/${TRACE}`);
    expect(traceUrl('http://g/explore?q={traceId}&x={traceId}', TRACE)).toBe(`http://g/explore?q=${TRACE}&x=${TRACE}`);
  });
  it('is undefined without a template or a trace', () => {
    expect(traceUrl(undefined, TRACE)).toBeUndefined();
    expect(traceUrl('http://j/{traceId}', undefined)).toBeUndefined();
  });
});

function samples(seq: number, traceparent?: string, machine = 'press-07'): StreamMessage {
  return {
    type: 'samples',
    seq,
    machine,
    ingestTs: 1000,
    samples: [
      { metric: 'temp', ts: 900, value: 71.3 },
      { metric: 'vib', ts: 901, value: 0.2 },
    ],
    traceparent,
  };
}

/** A tracer with a controlled clock, frames, and SDK load. */
function setup(opts: { maxPending?: number; maxWaitMs?: number } = {}) {
  let now = 10_000;
  const frames: (() => void)[] = [];
  const recorded: Render[] = [];
  const configs: ExporterConfig[] = [];
  let resolve!: () => void;
  const loaded = new Promise<void>((r) => (resolve = r));
  const tracer = new RenderTracer({
    load: async (c) => {
      configs.push(c);
      await loaded;
      return { record: (r) => void recorded.push(r), flush: async () => {} };
    },
    now: () => now,
    nextFrame: (fn) => void frames.push(fn),
    ...opts,
  });
  return {
    tracer,
    recorded,
    configs,
    /** Lets the SDK load finish. */
    load: async () => {
      resolve();
      await tracer.flush();
    },
    frame: (at: number) => {
      now = at;
      for (const f of frames.splice(0)) f();
    },
    setNow: (t: number) => (now = t),
  };
}

describe('RenderTracer', () => {
  it('records nothing and loads nothing until enabled', async () => {
    const s = setup();
    s.tracer.received(samples(1, TP), 10_000);
    s.tracer.drawn();
    s.frame(10_050);
    expect(s.configs).toHaveLength(0);
    expect(s.recorded).toHaveLength(0);
  });

  it('spans a traced message from arrival to the frame after the one that drew it', async () => {
    const s = setup();
    s.tracer.enable({ uiUrl: 'http://j/{traceId}' }, () => ({ 'X-CSRF-Token': 'c' }));
    await s.load();
    expect(s.configs[0].url).toBe(RELAY_PATH);
    expect(s.configs[0].headers()).toEqual({ 'X-CSRF-Token': 'c' });

    s.tracer.received(samples(7, TP), 10_000);
    s.tracer.received(samples(8), 10_001); // not sampled by the server: no traceparent
    s.tracer.received(samples(9, `00-${TRACE}-${PARENT}-00`), 10_002); // flags say not sampled
    s.tracer.received({ type: 'heartbeat', ts: 1, seq: 9 }, 10_003);
    expect(s.recorded).toHaveLength(0);
    s.tracer.drawn(); // the frame that drew it
    expect(s.recorded).toHaveLength(0); // ends at the next frame
    s.frame(10_040);
    expect(s.recorded).toEqual([
      { parent: { traceId: TRACE, spanId: PARENT, flags: 1 }, machine: 'press-07', seq: 7, samples: 2, start: 10_000, end: 10_040, drawn: true },
    ]);
    expect(s.tracer.lastTraceId).toBe(TRACE);
    expect(s.tracer.uiUrl).toBe('http://j/{traceId}');

    s.tracer.drawn(); // nothing pending: no frame asked for
    s.frame(10_080);
    expect(s.recorded).toHaveLength(1);
  });

  it('keeps renders that end before the SDK is loaded, and records them once it is', async () => {
    const s = setup();
    s.tracer.enable({}, () => ({}));
    s.tracer.received(samples(1, TP), 10_000);
    s.tracer.drawn();
    s.frame(10_020);
    expect(s.recorded).toHaveLength(0);
    await s.load();
    expect(s.recorded.map((r) => [r.seq, r.end])).toEqual([[1, 10_020]]);
    expect(s.tracer.recorded).toBe(1);
  });

  it('records a render no frame drew within maxWaitMs as not drawn', async () => {
    const s = setup({ maxWaitMs: 5_000 });
    s.tracer.enable({}, () => ({}));
    await s.load();
    s.tracer.received(samples(1, TP), 10_000); // a hidden tab draws nothing
    s.tracer.received(samples(2, TP), 15_001);
    expect(s.recorded.map((r) => [r.seq, r.start, r.end, r.drawn])).toEqual([[1, 10_000, 15_001, false]]);
  });

  it('drops the oldest past maxPending', async () => {
    const s = setup({ maxPending: 2 });
    s.tracer.enable({}, () => ({}));
    await s.load();
    for (const seq of [1, 2, 3]) s.tracer.received(samples(seq, TP), 10_000 + seq);
    s.tracer.drawn();
    s.frame(10_050);
    expect(s.recorded.map((r) => r.seq)).toEqual([2, 3]);
    expect(s.tracer.dropped).toBe(1);
  });

  it('forgets everything when disabled (signed out)', async () => {
    const s = setup();
    s.tracer.enable({}, () => ({}));
    await s.load();
    s.tracer.received(samples(1, TP), 10_000);
    s.tracer.disable();
    s.tracer.drawn();
    s.frame(10_050);
    s.tracer.received(samples(2, TP), 10_060);
    s.tracer.drawn();
    s.frame(10_070);
    expect(s.recorded).toHaveLength(0);
  });

  it('turns itself off when the SDK cannot load', async () => {
    const tracer = new RenderTracer({ load: () => Promise.reject(new Error('no chunk')), nextFrame: (fn) => fn() });
    const warn = console.warn;
    console.warn = () => {};
    try {
      tracer.enable({}, () => ({}));
      tracer.received(samples(1, TP), Date.now());
      await tracer.flush().catch(() => {});
    } finally {
      console.warn = warn;
    }
    expect(tracer.enabled).toBe(false);
    expect(tracer.dropped).toBe(1);
  });

  it('does not throw into its caller when the load throws at once', async () => {
    const tracer = new RenderTracer({
      load: () => {
        throw new ReferenceError('__VITE_PRELOAD__ is not defined');
      },
    });
    const warn = console.warn;
    console.warn = () => {};
    try {
      expect(() => tracer.enable({}, () => ({}))).not.toThrow();
      await tracer.flush();
    } finally {
      console.warn = warn;
    }
    expect(tracer.enabled).toBe(false);
  });
});

describe('createRenderExporter', () => {
  it('makes a render span, child of the message traceparent, with its attributes and times', async () => {
    const mem = new InMemorySpanExporter();
    const e = createRenderExporter({ url: RELAY_PATH, headers: () => ({}) }, mem);
    const start = 1_765_000_000_000;
    e.record({ parent: { traceId: TRACE, spanId: PARENT, flags: 1 }, machine: 'press-07', seq: 42, samples: 3, start, end: start + 16, drawn: true });
    await e.flush();
    const spans = mem.getFinishedSpans();
    expect(spans).toHaveLength(1);
    const s = spans[0];
    expect(s.name).toBe('render');
    expect(s.kind).toBe(SpanKind.CONSUMER);
    expect(s.spanContext().traceId).toBe(TRACE);
    expect(s.spanContext().spanId).not.toBe(PARENT);
    expect(s.parentSpanContext?.spanId).toBe(PARENT);
    expect(s.parentSpanContext?.isRemote).toBe(true);
    expect(s.attributes).toEqual({ 'twinline.machine': 'press-07', 'twinline.stream.seq': 42, 'twinline.samples': 3, 'twinline.drawn': true });
    expect(s.resource.attributes['service.name']).toBe('twinline-dashboard');
    const ms = (t: [number, number]) => t[0] * 1000 + t[1] / 1e6;
    expect(ms(s.startTime)).toBeCloseTo(start, 3);
    expect(ms(s.endTime)).toBeCloseTo(start + 16, 3);
  });

  it('records nothing under a parent that was not sampled', async () => {
    const mem = new InMemorySpanExporter();
    const e = createRenderExporter({ url: RELAY_PATH, headers: () => ({}) }, mem);
    e.record({ parent: { traceId: TRACE, spanId: PARENT, flags: 0 }, machine: 'm', seq: 1, samples: 1, start: 1, end: 2, drawn: true });
    await e.flush();
    expect(mem.getFinishedSpans()).toHaveLength(0);
  });
});
