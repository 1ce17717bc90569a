/**
 * Gradient buckets (as in PyTorch DDP): during the last backward pass of a step, the gradients are
 * gathered, as they become complete, into buckets of about `bucketBytes`, and each full bucket's sum over
 * the ranks starts at once (overlapped), beside the rest of the backward pass; `Collective.wait` then
 * orders the sums before the update. Every rank fills the same
 * buckets in the same order, since every rank runs the same graph.
 */
import type { Buf, Collective } from '../backend/contract.js';

/** Default bucket size in bytes: SSD_BUCKET_MB, else 25 (PyTorch DDP's bucket_cap_mb). */
export function defaultBucketBytes(): number {
  const mb = Number(process.env['SSD_BUCKET_MB'] ?? 25);
  if (!Number.isFinite(mb) || mb <= 0) throw new Error(`SSD_BUCKET_MB must be a positive number of megabytes, got '${process.env['SSD_BUCKET_MB']}'`);
  return mb * 2 ** 20;
}

export class GradientBuckets {
  private bucket: Buf[] = [];
  private bytes = 0;
  /** The buffers added (summed already, or in the bucket that `flush` starts). */
  readonly added = new Set<Buf>();

  constructor(private readonly collective: Collective, private readonly bucketBytes: number) {}

  /** Adds a complete f32 gradient; starts the bucket's sum once it holds `bucketBytes` or more. */
  add(grad: Buf): void {
    this.bucket.push(grad);
    this.added.add(grad);
    this.bytes += grad.size * 4;
    if (this.bytes >= this.bucketBytes) this.flush();
  }

  /** Starts the sum of what the current bucket holds (if anything). */
  flush(): void {
    if (!this.bucket.length) return;
    this.collective.allReduceSum(this.bucket, true);
    this.bucket = [];
    this.bytes = 0;
  }
}
