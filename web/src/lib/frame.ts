/**
 * FrameLoop is the one requestAnimationFrame loop of the page: views ask it
 * to draw when their data changed, and each frame runs every pending drawer
 * once. Hidden tabs get no frames, so drawing pauses there by itself.
 */
export type Drawer = (now: number) => void;

export class FrameLoop {
  private pending = new Set<Drawer>();
  private scheduled = false;
  /** Time spent in drawers by each frame that drew (the last 10 000), for diagnostics. */
  readonly drawTimes: number[] = [];

  constructor(
    private readonly raf: (cb: (t: number) => void) => unknown = (cb) => requestAnimationFrame(cb),
    private readonly clock: () => number = () => performance.now(),
  ) {}

  /** Asks for d to run in the next frame; several requests in one frame run it once. */
  request(d: Drawer): void {
    this.pending.add(d);
    if (!this.scheduled) {
      this.scheduled = true;
      this.raf(this.tick);
    }
  }

  cancel(d: Drawer): void {
    this.pending.delete(d);
  }

  private tick = (): void => {
    this.scheduled = false;
    const ds = [...this.pending];
    this.pending.clear();
    const start = this.clock();
    for (const d of ds) {
      try {
        d(start);
      } catch (err) {
        console.error('drawing', err);
      }
    }
    this.drawTimes.push(this.clock() - start);
    if (this.drawTimes.length > 10_000) this.drawTimes.splice(0, this.drawTimes.length - 10_000);
  };
}

export const frameLoop = new FrameLoop();
