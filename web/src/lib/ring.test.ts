import { describe, expect, it } from 'vitest';
import { Ring, SeriesRing } from './ring';

function contents(r: SeriesRing) {
  return r.range();
}

describe('SeriesRing', () => {
  it('rejects a bad capacity', () => {
    for (const c of [0, -1, 1.5, NaN]) expect(() => new SeriesRing(c)).toThrow(RangeError);
  });

  it('keeps the newest points once full', () => {
    const r = new SeriesRing(3);
    for (let i = 1; i <= 5; i++) r.push(i, i * 10);
    expect(r.length).toBe(3);
    expect(contents(r)).toEqual({ t: [3, 4, 5], v: [30, 40, 50] });
    expect(r.last()).toEqual({ t: 5, v: 50 });
  });

  it('inserts out-of-order points in time order', () => {
    const r = new SeriesRing(10);
    for (const t of [1, 3, 5]) r.push(t, t);
    r.insert(4, 4);
    r.insert(0, 0);
    r.insert(2, 2);
    expect(contents(r).t).toEqual([0, 1, 2, 3, 4, 5]);
  });

  it('replaces a point at an existing time', () => {
    const r = new SeriesRing(4);
    r.push(1, 1);
    r.push(2, 2);
    r.insert(1, 9);
    expect(contents(r)).toEqual({ t: [1, 2], v: [9, 2] });
  });

  it('drops the oldest when a late point is inserted into a full ring', () => {
    const r = new SeriesRing(4);
    for (const t of [10, 20, 30, 40]) r.push(t, t);
    r.insert(25, 25);
    expect(contents(r).t).toEqual([20, 25, 30, 40]);
    r.insert(5, 5); // older than everything kept: dropped
    expect(contents(r).t).toEqual([20, 25, 30, 40]);
  });

  it('keeps order across the wrap-around', () => {
    const r = new SeriesRing(5);
    for (let t = 0; t < 12; t++) r.push(t * 10, t);
    r.insert(95, -1);
    expect(contents(r).t).toEqual([80, 90, 95, 100, 110]);
  });

  it('returns a time range and drops points before a time', () => {
    const r = new SeriesRing(8);
    for (let t = 0; t < 8; t++) r.push(t, t);
    expect(r.range(2, 4).t).toEqual([2, 3, 4]);
    r.dropBefore(5);
    expect(contents(r).t).toEqual([5, 6, 7]);
    r.push(8, 8);
    expect(contents(r).t).toEqual([5, 6, 7, 8]);
  });

  it('bumps its version on every change', () => {
    const r = new SeriesRing(2);
    const v0 = r.version;
    r.push(1, 1);
    r.insert(0, 0);
    r.clear();
    expect(r.version).toBe(v0 + 3);
    expect(r.length).toBe(0);
    expect(r.last()).toBeUndefined();
  });

  it('stays bounded under a long stream', () => {
    const r = new SeriesRing(1000);
    for (let i = 0; i < 100_000; i++) r.insert(i % 2 === 0 ? i : i - 1.5, i);
    expect(r.length).toBe(1000);
    const t = contents(r).t;
    for (let i = 1; i < t.length; i++) expect(t[i]).toBeGreaterThan(t[i - 1]);
  });
});

describe('Ring', () => {
  it('keeps the newest items in order', () => {
    const r = new Ring<string>(2);
    r.push('a');
    r.push('b');
    r.push('c');
    expect(r.toArray()).toEqual(['b', 'c']);
    expect(r.at(0)).toBe('b');
    expect(r.at(2)).toBeUndefined();
    r.clear();
    expect(r.length).toBe(0);
  });
});
