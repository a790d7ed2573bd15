/**
 * SampleDedup drops the samples a client has already been shown. On the
 * Kafka path the server shows a sample live before it is stored, and after
 * a processor restart (a crash, a rebalance) the next processor shows the
 * samples it reads again once more, in new messages with new seqs (ADR
 * 0017): the seq and the resume cursor order messages, they do not name
 * samples. A sample is named by its machine, metric and event time — the
 * store's own key — so that is what the client remembers, for the most
 * recent `capacity` samples (a re-publication covers the last seconds).
 */
import type { SamplesMessage } from './wire';

export class SampleDedup {
  private readonly seen = new Set<string>();

  constructor(readonly capacity = 16_384) {
    if (!Number.isInteger(capacity) || capacity < 1) {
      throw new RangeError(`dedup capacity must be a positive integer, got ${capacity}`);
    }
  }

  /**
   * Returns msg with only its samples not seen before — msg itself when all
   * are new — or undefined when every one was, and remembers them.
   */
  fresh(msg: SamplesMessage): SamplesMessage | undefined {
    let kept: SamplesMessage['samples'] | undefined;
    msg.samples.forEach((s, i) => {
      const k = `${msg.machine}\u0000${s.metric}\u0000${s.ts}`;
      if (this.seen.has(k)) {
        kept ??= msg.samples.slice(0, i);
        return;
      }
      this.seen.add(k);
      if (this.seen.size > this.capacity) {
        // A Set iterates in insertion order: the first is the oldest.
        this.seen.delete(this.seen.values().next().value as string);
      }
      kept?.push(s);
    });
    if (!kept) return msg;
    return kept.length > 0 ? { ...msg, samples: kept } : undefined;
  }
}
