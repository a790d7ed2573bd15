import { describe, expect, it } from 'vitest';
import { SampleDedup } from './dedup';
import { FrameLoop } from './frame';
import { Dashboard } from './store';
import type { StreamMessage } from './stream';
import type { SamplesMessage } from './wire';

function msg(seq: number, machine: string, ...samples: [string, number, number][]): SamplesMessage {
  return { type: 'samples', seq, machine, ingestTs: 1, samples: samples.map(([metric, ts, value]) => ({ metric, ts, value })) };
}

describe('SampleDedup', () => {
  it('passes new samples through as they are', () => {
    const d = new SampleDedup();
    const m = msg(1, 'a', ['temp', 10, 1], ['rpm', 10, 2]);
    expect(d.fresh(m)).toBe(m);
  });

  it('drops a sample shown again in a new message (a processor restart re-publishes it)', () => {
    const d = new SampleDedup();
    d.fresh(msg(1, 'a', ['temp', 10, 1], ['temp', 20, 2]));
    expect(d.fresh(msg(7, 'a', ['temp', 10, 1], ['temp', 20, 2]))).toBeUndefined();
    expect(d.fresh(msg(8, 'a', ['temp', 20, 2], ['temp', 30, 3]))).toEqual(msg(8, 'a', ['temp', 30, 3]));
  });

  it('tells samples apart by machine, metric and event time', () => {
    const d = new SampleDedup();
    d.fresh(msg(1, 'a', ['temp', 10, 1]));
    const other = msg(2, 'b', ['temp', 10, 1], ['rpm', 10, 1]);
    expect(d.fresh(other)).toBe(other);
    expect(d.fresh(msg(3, 'a', ['temp', 11, 1]))?.samples).toHaveLength(1);
    expect(d.fresh(msg(4, 'a', ['temp', 11, 5], ['temp', 11, 5]))).toBeUndefined();
  });

  it('drops a repeat within one message', () => {
    const d = new SampleDedup();
    expect(d.fresh(msg(1, 'a', ['temp', 10, 1], ['temp', 10, 1]))).toEqual(msg(1, 'a', ['temp', 10, 1]));
  });

  it('remembers the most recent samples only', () => {
    const d = new SampleDedup(2);
    d.fresh(msg(1, 'a', ['t', 1, 1], ['t', 2, 1], ['t', 3, 1]));
    expect(d.fresh(msg(2, 'a', ['t', 3, 1]))).toBeUndefined();
    expect(d.fresh(msg(3, 'a', ['t', 1, 1]))?.samples).toHaveLength(1); // forgotten: shown again
  });

  it('rejects a bad capacity', () => {
    for (const c of [0, -1, 1.5]) expect(() => new SampleDedup(c)).toThrow(RangeError);
  });
});

describe('Dashboard', () => {
  it('hands its views each sample once when the server shows it again', () => {
    const d = new Dashboard(new FrameLoop(() => 0, () => 0));
    const got: StreamMessage[] = [];
    d.onMessages((m) => got.push(m));
    const deliver = (d as unknown as { onMessage(m: StreamMessage, arrival: number): void }).onMessage.bind(d);
    deliver(msg(1, 'a', ['temp', 10, 1], ['temp', 20, 2]), 100);
    deliver(msg(9, 'a', ['temp', 10, 1], ['temp', 20, 2]), 200); // a processor restart shows them again
    deliver(msg(10, 'a', ['temp', 20, 2], ['temp', 30, 3]), 300);
    expect(got).toEqual([msg(1, 'a', ['temp', 10, 1], ['temp', 20, 2]), msg(10, 'a', ['temp', 30, 3])]);
    expect(d.messages).toBe(3);
  });
});
