/**
 * Permutations of FFN neurons and the centroid router (MoEfication §3; SSD method page §4.3–4.4).
 * Pure functions over host arrays.
 */

/**
 * The neuron order that makes experts contiguous: perm[new] = old, experts in order 0..E−1, neurons of
 * one expert in ascending original index. Throws unless every expert has exactly n / E neurons.
 */
export function partitionPermutation(assignment: Int32Array, nExpert: number): Int32Array {
  const n = assignment.length, s = n / nExpert;
  const count = new Int32Array(nExpert);
  for (const e of assignment) {
    if (e < 0 || e >= nExpert) throw new Error(`partition: expert ${e} is outside [0, ${nExpert})`);
    count[e]!++;
  }
  if (!Number.isInteger(s) || count.some((c) => c !== s)) {
    throw new Error(`partition: experts must have exactly ${s} neurons each, got sizes [${[...count].slice(0, 8)}…]`);
  }
  const next = Int32Array.from({ length: nExpert }, (_, e) => e * s);
  const perm = new Int32Array(n);
  for (let i = 0; i < n; i++) perm[next[assignment[i]!]!++] = i;
  return perm;
}

/** out[r, :] = a[perm[r], :] for a (rows, cols). */
export function permuteRows(a: Float32Array, rows: number, cols: number, perm: Int32Array): Float32Array {
  checkPerm(perm, rows, 'rows');
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) out.set(a.subarray(perm[r]! * cols, perm[r]! * cols + cols), r * cols);
  return out;
}

/** out[:, c] = a[:, perm[c]] for a (rows, cols). */
export function permuteCols(a: Float32Array, rows: number, cols: number, perm: Int32Array): Float32Array {
  checkPerm(perm, cols, 'columns');
  const out = new Float32Array(rows * cols);
  for (let r = 0; r < rows; r++) for (let c = 0; c < cols; c++) out[r * cols + c] = a[r * cols + perm[c]!]!;
  return out;
}

function checkPerm(perm: Int32Array, n: number, what: string): void {
  if (perm.length !== n) throw new Error(`permutation of ${perm.length} entries does not fit ${n} ${what}`);
}

/**
 * The centroid router W_g (d_model, E) for a permuted W_in (d_ff, d_model): column e is the mean of the
 * L2-normalised rows of expert e, rescaled to unit length, times `scale`. The reference scales by the
 * norm of one neuron row; we use the mean row norm of W_in (ours), so scores have the size of x · w_i.
 */
export function centroidRouter(w_in: Float32Array, dff: number, dm: number, nExpert: number): Float32Array {
  const s = dff / nExpert;
  const Wg = new Float32Array(dm * nExpert);
  let normSum = 0;
  const c = new Float64Array(dm);
  for (let e = 0; e < nExpert; e++) {
    c.fill(0);
    for (let i = e * s; i < (e + 1) * s; i++) {
      let nn = 0;
      for (let k = 0; k < dm; k++) nn += w_in[i * dm + k]! ** 2;
      const norm = Math.sqrt(nn);
      normSum += norm;
      if (norm > 0) for (let k = 0; k < dm; k++) c[k]! += w_in[i * dm + k]! / norm;
    }
    let cn = 0;
    for (let k = 0; k < dm; k++) cn += c[k]! ** 2;
    const inv = cn > 0 ? 1 / Math.sqrt(cn) : 0;
    for (let k = 0; k < dm; k++) Wg[k * nExpert + e] = c[k]! * inv;
  }
  const scale = normSum / dff;
  for (let i = 0; i < Wg.length; i++) Wg[i]! *= scale;
  return Wg;
}
