import assert from 'node:assert/strict';
import { it } from 'node:test';
import { createRefBackend } from '../src/backend/ref/index.js';
import { put } from './helpers.js';
import { opSuite } from './ops.suite.js';

opSuite('ref', createRefBackend());

it('ref: row-indexed grouped products need one leading dimension per indexed operand, and beta = 1 to scatter', () => {
  const b = createRefBackend();
  const x = put(b, new Float32Array(16)), o = b.alloc('f32', 16), idx = put(b, [0, 1], 'i32');
  const problems = Int32Array.from([1, 2, 2, 0, 4, 0, 4, 0, 4, 1, 2, 2, 4, 2, 0, 4, 4, 4]);
  assert.throws(() => b.groupedMatmul(x, x, o, { problems, transA: false, transB: true, alpha: 1, beta: 0, rows: { a: idx } }),
    /indexed A needs one leading dimension for all groups \(4 and 2\)/);
  assert.throws(() => b.groupedMatmul(x, x, o, { problems, transA: false, transB: true, alpha: 1, beta: 0, rows: { c: idx } }),
    /a scattered C \(rows.c\) accumulates, beta must be 1 \(got 0\)/);
  for (const t of [x, o, idx]) b.free(t);
});
