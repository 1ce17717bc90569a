/**
 * Training / evaluation batches of token windows.
 *
 * A batch is `{ x, y }`, both Int32Array of B*T (row-major [B, T]) with y[b, t] = x[b, t+1] in the
 * underlying sequence (the next token).
 */
import { Rng, type RngState } from './rng.js';
import { TokenSequence, type TokenInput } from './tokens.js';

/** One batch of B windows of T tokens. */
export interface Batch {
  /** Inputs, B*T token ids, row-major [B, T]. */
  x: Int32Array;
  /** Targets, B*T token ids: the inputs shifted by one. */
  y: Int32Array;
  /** Number of rows B in this batch (the last eval batch may be short). */
  batchSize: number;
  /** Window length T. */
  seqLen: number;
}

/** Serialisable state of a {@link RandomBatchSampler}; JSON-safe. */
export interface SamplerState {
  version: 1;
  kind: 'random-windows';
  batchSize: number;
  seqLen: number;
  seed: number;
  /** Length of the token sequence sampled from (checked on resume). */
  tokens: number;
  /** Batches produced so far. */
  step: number;
  rng: RngState;
}

/**
 * Throws unless a window of T+1 tokens fits in the data.
 * @throws Error "sequence length T is larger than the data (M tokens); …"
 */
export function checkSeqLen(seqLen: number, tokens: number): void {
  if (!Number.isInteger(seqLen) || seqLen < 1) throw new RangeError(`sequence length must be a positive integer (got ${seqLen})`);
  if (seqLen + 1 > tokens) {
    throw new Error(`sequence length ${seqLen} is larger than the data (${tokens} tokens); use a shorter --seq-len or more data`);
  }
}

function checkBatch(batchSize: number): void {
  if (!Number.isInteger(batchSize) || batchSize < 1) throw new RangeError(`batch size must be a positive integer (got ${batchSize})`);
}

/**
 * Random training windows: each row starts at a uniform position in [0, N-T-1] drawn from a seeded
 * xoshiro128** generator. Deterministic for a given (data, B, T, seed), and resumable exactly via
 * `state()` / `RandomBatchSampler.fromState()`.
 */
export class RandomBatchSampler {
  readonly batchSize: number;
  readonly seqLen: number;
  readonly seed: number;
  private readonly data: TokenSequence;
  private rng: Rng;
  private step = 0;

  /**
   * @param tokens the split's tokens (array or TokenSequence of shards)
   * @param opts batchSize B ≥ 1, seqLen T ≥ 1, seed (integer, default 0)
   * @throws Error if T+1 exceeds the number of tokens; RangeError on bad B/T/seed
   */
  constructor(tokens: TokenInput, opts: { batchSize: number; seqLen: number; seed?: number }) {
    this.data = TokenSequence.from(tokens);
    checkBatch(opts.batchSize);
    checkSeqLen(opts.seqLen, this.data.length);
    this.batchSize = opts.batchSize;
    this.seqLen = opts.seqLen;
    this.seed = opts.seed ?? 0;
    this.rng = new Rng(this.seed);
  }

  /** Number of batches produced so far. */
  get steps(): number {
    return this.step;
  }

  /** Next batch: x, y of B*T tokens. */
  next(): Batch {
    const B = this.batchSize, T = this.seqLen;
    const x = new Int32Array(B * T), y = new Int32Array(B * T);
    const range = this.data.length - T; // starts in [0, N-T-1]
    const win = new Int32Array(T + 1);
    for (let b = 0; b < B; b++) {
      const s = this.rng.nextInt(range);
      this.data.copyTo(s, T + 1, win);
      x.set(win.subarray(0, T), b * T);
      y.set(win.subarray(1), b * T);
    }
    this.step++;
    return { x, y, batchSize: B, seqLen: T };
  }

  /** JSON-safe snapshot; `fromState` continues with exactly the batches that would follow. */
  state(): SamplerState {
    return {
      version: 1, kind: 'random-windows', batchSize: this.batchSize, seqLen: this.seqLen,
      seed: this.seed, tokens: this.data.length, step: this.step, rng: this.rng.state(),
    };
  }

  /**
   * Restores a sampler on the same data.
   * @throws Error if the state is malformed or was taken on data of a different length
   */
  static fromState(tokens: TokenInput, state: SamplerState): RandomBatchSampler {
    if (state?.version !== 1 || state.kind !== 'random-windows') throw new Error('unrecognised sampler state');
    const data = TokenSequence.from(tokens);
    if (data.length !== state.tokens) {
      throw new Error(`sampler state was saved on ${state.tokens} tokens but the data has ${data.length}; resume with the same dataset`);
    }
    const s = new RandomBatchSampler(data, { batchSize: state.batchSize, seqLen: state.seqLen, seed: state.seed });
    s.rng = new Rng(state.rng);
    s.step = state.step;
    return s;
  }
}

/** Options for {@link evalBatches}. */
export interface EvalOptions {
  batchSize: number;
  seqLen: number;
  /** Stop after this many batches (default: all). */
  maxBatches?: number;
  /** Drop a final batch with fewer than batchSize rows (default false). */
  dropLast?: boolean;
}

/**
 * Number of non-overlapping evaluation windows: floor((N-1)/T).
 * @throws Error if T+1 > N
 */
export function evalWindowCount(tokens: number, seqLen: number): number {
  checkSeqLen(seqLen, tokens);
  return Math.floor((tokens - 1) / seqLen);
}

/**
 * Fixed sequential evaluation batches: windows start at 0, T, 2T, … (non-overlapping, each with
 * its next-token targets), grouped B per batch; identical on every call.
 * The last batch may have fewer rows (see `batchSize` in the result) unless `dropLast`.
 * @throws Error if T+1 exceeds the number of tokens; RangeError on bad B/T
 */
export function* evalBatches(tokens: TokenInput, opts: EvalOptions): Generator<Batch> {
  const data = TokenSequence.from(tokens);
  checkBatch(opts.batchSize);
  const W = evalWindowCount(data.length, opts.seqLen);
  const T = opts.seqLen, B = opts.batchSize;
  const max = opts.maxBatches ?? Infinity;
  const win = new Int32Array(T + 1);
  let produced = 0;
  for (let w0 = 0; w0 < W && produced < max; w0 += B) {
    const rows = Math.min(B, W - w0);
    if (rows < B && opts.dropLast) break;
    const x = new Int32Array(rows * T), y = new Int32Array(rows * T);
    for (let r = 0; r < rows; r++) {
      data.copyTo((w0 + r) * T, T + 1, win);
      x.set(win.subarray(0, T), r * T);
      y.set(win.subarray(1), r * T);
    }
    produced++;
    yield { x, y, batchSize: rows, seqLen: T };
  }
}
