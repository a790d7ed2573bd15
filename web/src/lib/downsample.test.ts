import { describe, expect, it } from 'vitest';
import { bandStepMs, mergeSeries, minMaxDownsample, pointsForWidth, slidingMedian } from './downsample';

describe('minMaxDownsample', () => {
  it('returns a small series unchanged', () => {
    expect(minMaxDownsample([1, 2, 3], [4, 5, 6], 10)).toEqual({ t: [1, 2, 3], v: [4, 5, 6] });
  });

  it('keeps at most the requested number of points', () => {
    const t = Array.from({ length: 10_000 }, (_, i) => i);
    const v = t.map((x) => Math.sin(x / 50));
    for (const points of [2, 3, 10, 100, 999]) {
      const d = minMaxDownsample(t, v, points);
      expect(d.t.length).toBeLessThanOrEqual(points);
      expect(d.t.length).toBe(d.v.length);
    }
  });

  it('keeps spikes and time order', () => {
    const t = Array.from({ length: 1000 }, (_, i) => i);
    const v = t.map(() => 1);
    v[501] = 100;
    v[733] = -50;
    const d = minMaxDownsample(t, v, 20);
    expect(d.v).toContain(100);
    expect(d.v).toContain(-50);
    for (let i = 1; i < d.t.length; i++) expect(d.t[i]).toBeGreaterThan(d.t[i - 1]);
  });

  it('puts each bucket min and max in time order', () => {
    // one bucket: max first, then min
    const d = minMaxDownsample([0, 1, 2, 3], [5, 9, 0, 4], 2, 0, 4);
    expect(d).toEqual({ t: [1, 2], v: [9, 0] });
  });

  it('skips points outside [from, to] and NaN values', () => {
    const d = minMaxDownsample([0, 1, 2, 3, 4, 5], [1, NaN, 3, 4, 5, 6], 4, 1, 4);
    expect(d.t.every((x) => x >= 1 && x <= 4)).toBe(true);
    expect(d.v.some(Number.isNaN)).toBe(false);
  });
});

describe('slidingMedian', () => {
  it('matches a brute-force median', () => {
    const v = Array.from({ length: 300 }, (_, i) => ((i * 7919) % 101) - 50);
    const w = 60;
    const got = slidingMedian(v, w);
    const want = v.map((_, i) => {
      const s = v.slice(Math.max(0, i - w + 1), i + 1).sort((a, b) => a - b);
      const m = s.length;
      return m % 2 ? s[(m - 1) / 2] : (s[m / 2 - 1] + s[m / 2]) / 2;
    });
    expect(got).toEqual(want);
  });

  it('rejects a window below one', () => {
    expect(() => slidingMedian([1], 0)).toThrow(RangeError);
  });
});

describe('mergeSeries', () => {
  it('merges in time order and lets the second win at equal times', () => {
    const got = mergeSeries({ t: [1, 3, 5], v: [1, 3, 5] }, { t: [2, 3, 6], v: [20, 30, 60] });
    expect(got).toEqual({ t: [1, 2, 3, 5, 6], v: [1, 20, 30, 5, 60] });
  });
});

describe('pointsForWidth and bandStepMs', () => {
  it('clamps points to what the API accepts', () => {
    expect(pointsForWidth(0)).toBe(2);
    expect(pointsForWidth(NaN)).toBe(2);
    expect(pointsForWidth(1234.4)).toBe(1234);
    expect(pointsForWidth(1e9)).toBe(100_000);
  });

  it('uses 10 s windows when they fit, else multiples of 10 s', () => {
    expect(bandStepMs(3_600_000, 600)).toBe(10_000);
    expect(bandStepMs(86_400_000, 600)).toBe(150_000);
    expect(bandStepMs(0, 600)).toBe(10_000);
  });
});
