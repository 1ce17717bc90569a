/**
 * The per-token step of incremental decoding: B new ids in, what the sampler needs of each row's next-
 * token logits out. Two savings over running the model and downloading its logits:
 *  - candidates: greedy decoding needs each row's best token only, and top-k sampling its k best, so
 *    the device picks them (`topk`: value descending, ties to the lower id, the order `sampleToken`
 *    ranks by) and the host receives B·k values instead of B·V logits. Sampling from them gives the
 *    same tokens as sampling from the full rows.
 *  - CUDA graphs: on a backend with `captureGraph` the step (hundreds of small kernels for a small
 *    batch, each with its host-side cost) is recorded once, at the second decode step (the first runs
 *    eagerly, so every lazily-built device copy of a weight exists before the capture), then replayed
 *    by one launch per token. The ids and positions are uploaded into the buffers the graph reads. If
 *    the capture fails, the step stays eager (`graphError` says why). `SSD_CUDA_GRAPHS=0` turns graphs off.
 */
import type { CapturedGraph } from '../backend/contract.js';
import type { GPT } from '../nn/gpt.js';
import * as T from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';
import type { KVCache } from './kvcache.js';
import type { SampleOptions } from './sample.js';

/** Most candidates per row picked on the device (larger top-k: the full logits are downloaded). */
export const MAX_DEVICE_CANDIDATES = 256;

/** Each row's sampling candidates: `width` logits per row, best first when `ids` is given. */
export interface Candidates {
  /** (B, width) logits. */
  values: Float32Array;
  /** (B, width) token ids of `values`; null: values are the full rows (width = vocab_size, id = column). */
  ids: Int32Array | null;
  width: number;
}

/** Candidates per row that sampling with `o` needs: 1 (greedy), top-k, or V (all). */
export function candidateCount(o: SampleOptions, V: number): number {
  if (o.temperature <= 0) return 1;
  if (o.topK > 0 && o.topK < V && o.topK <= MAX_DEVICE_CANDIDATES) return o.topK;
  return V;
}

/**
 * Candidates from logits (B, V): the device's top `width` of each row (width < V), else all of them.
 * Downloads (a synchronisation).
 */
export function candidatesOf(logits: Tensor, width: number): Candidates {
  return readCandidates(pickCandidates(logits, width), width);
}

/** The candidate tensors of logits (B, V): top-k values and ids (width < V), or the logits themselves. */
function pickCandidates(logits: Tensor, width: number): Tensor[] {
  if (width >= logits.shape[1]!) return [logits];
  const { values, indices } = T.topk(logits, width); // (B, width) each
  return [values, indices];
}

/**
 * Downloads candidate tensors. With one candidate per row its value is not read back: sampling can only
 * pick it (greedy, or top-1), so zeros stand in and one copy per token is saved.
 */
function readCandidates(t: Tensor[], width: number): Candidates {
  const ids = t[1] ? t[1].toArray() as Int32Array : null;
  const values = width === 1 && ids ? new Float32Array(ids.length) : t[0]!.toArray() as Float32Array;
  return { values, ids, width };
}

export class DecodeStep {
  /** Why the step is not replayed as a graph (capture failure), or null. */
  graphError: string | null = null;
  private readonly ids: Tensor;
  private graph: CapturedGraph | null = null;
  /** The captured step's outputs (kept until the graph is disposed). */
  private outs: Tensor[] = [];
  private steps = 0;
  private readonly useGraph: boolean;

  /** A step for `cache.batch` rows, returning `width` candidates per row (`candidateCount`). */
  constructor(private readonly model: GPT, private readonly cache: KVCache, private readonly width: number) {
    this.ids = T.tensor(new Int32Array(cache.batch), [cache.batch, 1], { dtype: 'i32', backend: model.backend }).keep();
    this.useGraph = model.backend.captureGraph !== undefined && process.env['SSD_CUDA_GRAPHS'] !== '0';
  }

  /** Whether steps are replayed from a captured graph. */
  get graphed(): boolean {
    return this.graph !== null;
  }

  /**
   * Feeds one new id per row (B) at each row's cache length, advances the cache by one and returns the
   * candidates of each row's next token. Throws if a row's cache is full.
   */
  run(next: Int32Array): Candidates {
    this.cache.checkRoom(1);
    this.ids.set(next);
    const n = this.steps++;
    if (this.graph === null && this.useGraph && n === 1) this.capture();
    if (this.graph === null) return T.tidy(() => T.noGrad(() => readCandidates(this.forward(), this.width)));
    this.cache.syncPositions();
    this.graph.launch();
    this.cache.advance(1);
    return readCandidates(this.outs, this.width);
  }

  dispose(): void {
    this.graph?.dispose();
    this.graph = null;
    for (const t of this.outs) t.dispose();
    this.outs = [];
    this.ids.dispose();
  }

  /** The step's work: (B, 1) ids -> candidate tensors; advances the cache's host lengths. */
  private forward(): Tensor[] {
    const h = this.model.hidden(this.ids, { cache: this.cache }); // (B, 1, d_model)
    return pickCandidates(this.model.logits(T.reshape(h, [this.cache.batch, this.model.config.d_model])), this.width); // (B, V) -> candidates
  }

  /**
   * Records the step. `forward` advances the host lengths as it goes, so they are restored afterwards
   * (the replays advance them); on failure the step stays eager.
   */
  private capture(): void {
    const lengths = Int32Array.from(this.cache.lengths);
    this.cache.syncPositions();
    let outs: Tensor[] = [];
    try {
      this.graph = this.model.backend.captureGraph!(() => {
        outs = T.tidy(() => T.noGrad(() => this.forward().map((t) => t.keep())));
      });
      this.outs = outs;
    } catch (e) {
      for (const t of outs) t.dispose();
      this.graphError = (e as Error).message;
    }
    lengths.forEach((len, b) => this.cache.setLength(b, len));
  }
}
