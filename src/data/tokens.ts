/**
 * A read-only token sequence made of one or more arrays (e.g. the shards of a split), addressed
 * as if concatenated.
 */

/** Anything usable as a token sequence by the loader. */
export type TokenInput = TokenSequence | ArrayLike<number>;

/** Concatenation of token arrays (no copy). */
export class TokenSequence {
  /** Total number of tokens. */
  readonly length: number;
  /** The underlying arrays, in order. */
  readonly parts: readonly ArrayLike<number>[];
  private readonly starts: number[];

  /** @param parts token arrays (empty ones allowed) */
  constructor(parts: readonly ArrayLike<number>[]) {
    this.parts = parts.filter((p) => p.length > 0);
    this.starts = [];
    let n = 0;
    for (const p of this.parts) {
      this.starts.push(n);
      n += p.length;
    }
    this.length = n;
  }

  /** Wraps an array (or returns a TokenSequence unchanged). */
  static from(t: TokenInput): TokenSequence {
    return t instanceof TokenSequence ? t : new TokenSequence([t]);
  }

  private partOf(i: number): number {
    let lo = 0, hi = this.starts.length - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.starts[mid]! <= i) lo = mid;
      else hi = mid - 1;
    }
    return lo;
  }

  /** Token at index i. @throws RangeError if i is outside [0, length) */
  get(i: number): number {
    if (!(i >= 0 && i < this.length)) throw new RangeError(`token index ${i} out of range [0, ${this.length})`);
    const p = this.partOf(i);
    return this.parts[p]![i - this.starts[p]!]!;
  }

  /**
   * Copies tokens [start, start+count) into dst[dstOffset …], crossing part boundaries as needed.
   * @throws RangeError if the range is outside the sequence or dst is too short
   */
  copyTo(start: number, count: number, dst: Int32Array | number[], dstOffset = 0): void {
    if (start < 0 || count < 0 || start + count > this.length) {
      throw new RangeError(`token range [${start}, ${start + count}) out of range [0, ${this.length})`);
    }
    if (dstOffset + count > dst.length) throw new RangeError('destination too short');
    let p = count > 0 ? this.partOf(start) : 0;
    let i = start, o = dstOffset, left = count;
    while (left > 0) {
      const part = this.parts[p]!;
      const local = i - this.starts[p]!;
      const n = Math.min(left, part.length - local);
      if (ArrayBuffer.isView(part) && dst instanceof Int32Array) {
        dst.set((part as unknown as Uint32Array).subarray(local, local + n), o);
      } else {
        for (let k = 0; k < n; k++) dst[o + k] = part[local + k]!;
      }
      i += n; o += n; left -= n; p++;
    }
  }
}
