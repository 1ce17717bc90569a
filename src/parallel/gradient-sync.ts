/**
 * The data-parallel part of a training step (src/train/trainer.ts): during the step's last backward
 * pass, each complete gradient of an optimized parameter joins a bucket whose sum over the ranks starts
 * at once, where the collective's sums overlap later work (buckets.ts); `finish` then sums the remaining
 * gradients with the loss and a fingerprint of what this rank trains, in one all-reduce, and checks that
 * every rank trains the same.
 */
import type { Backend, Buf, Collective } from '../backend/contract.js';
import type { Tensor } from '../tensor/index.js';
import { defaultBucketBytes, GradientBuckets } from './buckets.js';

/** What a rank trains: the optimized parameters and the phase label (the SSD controller's), read per step. */
export interface TrainedState {
  params(): Tensor[];
  isOptimized(t: Tensor): boolean;
  label(): string;
}

export class GradientSync {
  private readonly bucketBytes: number;
  private buckets: GradientBuckets | null = null;

  /** @throws Error on a bad SSD_BUCKET_MB (where the collective's sums overlap) */
  constructor(private readonly group: Collective, private readonly backend: Backend, private readonly state: TrainedState) {
    this.bucketBytes = group.overlaps ? defaultBucketBytes() : 0;
  }

  /**
   * The `onLeafGrad` hook of the step's last backward pass (see T.backward), or undefined where the sums
   * do not overlap (then all of them run in `finish`).
   */
  lastPassHook(): ((leaf: Tensor) => void) | undefined {
    if (!this.bucketBytes) return undefined;
    const buckets = new GradientBuckets(this.group, this.bucketBytes);
    this.buckets = buckets;
    return (leaf) => {
      if (this.state.isOptimized(leaf)) buckets.add(leaf.grad!.buf('allReduce'));
    };
  }

  /**
   * After the step's backward passes: orders the started sums before what follows, sums the other
   * gradients, this rank's `loss` and the fingerprint; returns the loss averaged over the ranks.
   * @throws Error when the ranks' fingerprints differ (they diverged: a bug)
   */
  finish(loss: number, step: number): number {
    const buckets = this.buckets;
    this.buckets = null;
    buckets?.flush();
    this.group.wait();
    const world = this.group.size, params = this.state.params();
    const rest = params.filter((p) => p.grad && !buckets?.added.has(p.grad.buf('allReduce')));
    const mine = fingerprint(params, world, this.state.label());
    const sums = allReduceNumbers(this.backend, this.group, [loss, ...mine], rest.map((p) => p.grad!.buf('allReduce')));
    if (mine.some((x, i) => sums[i + 1] !== x * world)) {
      throw new Error(`data parallel: the ranks diverged at step ${step}: this rank trains ${params.length} parameters ` +
        `in phase '${this.state.label()}', and the ranks' fingerprints (parameters, elements, phase) sum to ` +
        `${sums.slice(1).join(', ')} instead of ${mine.map((x) => x * world).join(', ')}; this is a bug, please report it with the run's logs`);
    }
    return sums[0]! / world;
  }
}

/**
 * Sums host numbers `xs` (through a small f32 buffer: losses, counts) and device buffers `bufs` (the
 * gradients) over the ranks, in one all-reduce; returns the summed numbers.
 */
export function allReduceNumbers(backend: Backend, collective: Collective, xs: number[], bufs: Buf[] = []): number[] {
  const buf = backend.alloc('f32', xs.length);
  try {
    backend.upload(buf, xs);
    collective.allReduceSum([buf, ...bufs]);
    return Array.from(backend.download(buf));
  } finally {
    backend.free(buf);
  }
}

/**
 * What every rank must share at each step: the number of parameters, their elements, and a code of the
 * phase label, each modulo 2^(24 − ⌈log2 world⌉) so that their sum over the ranks is exact in f32.
 */
function fingerprint(params: Tensor[], world: number, label: string): number[] {
  const m = 2 ** Math.max(1, 24 - Math.ceil(Math.log2(world)));
  const elements = params.reduce((n, p) => (n + p.size) % m, 0);
  let code = 0;
  for (let i = 0; i < label.length; i++) code = (code * 31 + label.charCodeAt(i)) % m;
  return [params.length % m, elements, code];
}
