// frameStats (lib.mjs): the definition of a dropped frame the fleet e2e and
// the benchmark share. No browser needed.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { frameStats } from './lib.mjs';

/** Timestamps from frame-to-frame deltas, starting at 0. */
const at = (deltas) => deltas.reduce((ts, d) => [...ts, ts.at(-1) + d], [0]);

describe('frameStats', () => {
  it('counts nothing at a steady 60 Hz', () => {
    const s = frameStats(at(Array(100).fill(16.7)));
    assert.equal(s.frames, 100);
    assert.equal(s.frameP50, 16.7);
    assert.equal(s.dropped, 0);
    assert.equal(s.droppedPct, 0);
  });

  it('counts the vsyncs a long frame missed', () => {
    // 97 frames on time, one of 50 ms (2 missed), one of 100 ms (5 missed)
    const s = frameStats(at([...Array(97).fill(16.7), 50, 100]));
    assert.equal(s.late, 2);
    assert.equal(s.dropped, 2 + 5);
    assert.equal(s.droppedPct, Math.round((1000 * 7) / (99 + 7)) / 10);
  });

  it('counts a delta over 20 ms as at least one dropped frame, under 1.5 × the median', () => {
    // median 16.7: 1.5 × = 25 ms; 21 ms is under it but over 20 ms
    const s = frameStats(at([...Array(50).fill(16.7), 21]));
    assert.equal(s.late, 1);
    assert.equal(s.dropped, 1);
  });

  it('uses 1.5 × the median on a display slower than 20 ms a frame', () => {
    // 30 Hz: 33.3 ms frames are on time; 45 ms is under 1.5 × 33.3
    const s = frameStats(at([...Array(50).fill(33.3), 45, 70]));
    assert.equal(s.late, 1, 'only the 70 ms frame is late');
    assert.equal(s.dropped, 1);
  });
});
