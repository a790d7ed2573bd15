/**
 * Bounded ring buffers for streamed samples. They live outside React state:
 * the stream pushes into them, the frame loop reads them when it draws.
 */

/** A fixed-capacity ring of (time, value) pairs kept in typed arrays. */
export class SeriesRing {
  readonly capacity: number;
  private t: Float64Array;
  private v: Float64Array;
  private head = 0; // index of the oldest element
  private len = 0;
  /** Bumped on every change, so a drawer can tell whether to redraw. */
  version = 0;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`ring capacity must be a positive integer, got ${capacity}`);
    }
    this.capacity = capacity;
    this.t = new Float64Array(capacity);
    this.v = new Float64Array(capacity);
  }

  get length(): number {
    return this.len;
  }

  /** Appends one point; the oldest is dropped when full. */
  push(t: number, v: number): void {
    const i = (this.head + this.len) % this.capacity;
    this.t[i] = t;
    this.v[i] = v;
    if (this.len < this.capacity) this.len++;
    else this.head = (this.head + 1) % this.capacity;
    this.version++;
  }

  /**
   * Inserts a point keeping time order (samples may arrive out of order). A
   * point at an existing time replaces it. Late points older than the oldest
   * kept point are dropped when the ring is full.
   */
  insert(t: number, v: number): void {
    if (this.len === 0 || t > this.timeAt(this.len - 1)) {
      this.push(t, v);
      return;
    }
    // find the first index with time >= t
    let lo = 0;
    let hi = this.len;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.timeAt(mid) < t) lo = mid + 1;
      else hi = mid;
    }
    if (lo < this.len && this.timeAt(lo) === t) {
      this.v[(this.head + lo) % this.capacity] = v;
      this.version++;
      return;
    }
    if (this.len === this.capacity) {
      if (lo === 0) return; // older than everything kept
      // drop the oldest, shift [1, lo) one step down, place at lo-1
      for (let k = 1; k < lo; k++) this.copy(k, k - 1);
      this.set(lo - 1, t, v);
      this.version++;
      return;
    }
    // grow by one and shift [lo, len) one step up
    this.len++;
    for (let k = this.len - 1; k > lo; k--) this.copy(k - 1, k);
    this.set(lo, t, v);
    this.version++;
  }

  timeAt(i: number): number {
    return this.t[(this.head + i) % this.capacity];
  }

  valueAt(i: number): number {
    return this.v[(this.head + i) % this.capacity];
  }

  /** The newest point, or undefined when empty. */
  last(): { t: number; v: number } | undefined {
    if (this.len === 0) return undefined;
    return { t: this.timeAt(this.len - 1), v: this.valueAt(this.len - 1) };
  }

  /** Copies the points with from <= t <= to (all by default) into plain arrays. */
  range(from = -Infinity, to = Infinity): { t: number[]; v: number[] } {
    const t: number[] = [];
    const v: number[] = [];
    let i = this.lowerBound(from);
    for (; i < this.len; i++) {
      const ti = this.timeAt(i);
      if (ti > to) break;
      t.push(ti);
      v.push(this.valueAt(i));
    }
    return { t, v };
  }

  /** Drops every point older than t. */
  dropBefore(t: number): void {
    const n = this.lowerBound(t);
    if (n === 0) return;
    this.head = (this.head + n) % this.capacity;
    this.len -= n;
    this.version++;
  }

  clear(): void {
    this.head = 0;
    this.len = 0;
    this.version++;
  }

  /** Index of the first point with time >= t (assumes time order). */
  private lowerBound(t: number): number {
    let lo = 0;
    let hi = this.len;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (this.timeAt(mid) < t) lo = mid + 1;
      else hi = mid;
    }
    return lo;
  }

  private copy(from: number, to: number): void {
    const a = (this.head + from) % this.capacity;
    const b = (this.head + to) % this.capacity;
    this.t[b] = this.t[a];
    this.v[b] = this.v[a];
  }

  private set(i: number, t: number, v: number): void {
    const k = (this.head + i) % this.capacity;
    this.t[k] = t;
    this.v[k] = v;
  }
}

/** A fixed-capacity ring of arbitrary items, oldest first. */
export class Ring<T> {
  readonly capacity: number;
  private items: (T | undefined)[];
  private head = 0;
  private len = 0;

  constructor(capacity: number) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`ring capacity must be a positive integer, got ${capacity}`);
    }
    this.capacity = capacity;
    this.items = new Array(capacity);
  }

  get length(): number {
    return this.len;
  }

  push(x: T): void {
    this.items[(this.head + this.len) % this.capacity] = x;
    if (this.len < this.capacity) this.len++;
    else this.head = (this.head + 1) % this.capacity;
  }

  at(i: number): T | undefined {
    if (i < 0 || i >= this.len) return undefined;
    return this.items[(this.head + i) % this.capacity];
  }

  toArray(): T[] {
    const out: T[] = [];
    for (let i = 0; i < this.len; i++) out.push(this.items[(this.head + i) % this.capacity] as T);
    return out;
  }

  clear(): void {
    this.items = new Array(this.capacity);
    this.head = 0;
    this.len = 0;
  }
}
