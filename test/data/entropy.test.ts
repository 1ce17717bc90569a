import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { entropyOfCounts, unigramEntropy } from '../../src/data/entropy.js';
import { TokenSequence } from '../../src/data/tokens.js';

describe('unigramEntropy', () => {
  it('uniform over 4 tokens = ln 4', () => {
    assert.ok(Math.abs(unigramEntropy(new Uint16Array([0, 1, 2, 3, 3, 2, 1, 0])) - Math.log(4)) < 1e-12);
  });
  it('known answers', () => {
    assert.equal(unigramEntropy([7, 7, 7]), 0);
    // p = (1/2, 1/4, 1/4): H = 1.5 ln 2
    assert.ok(Math.abs(unigramEntropy(new TokenSequence([[5, 5], new Uint32Array([9, 70000])])) - 1.5 * Math.log(2)) < 1e-12);
    assert.ok(Math.abs(entropyOfCounts([1, 1, 0]) - Math.log(2)) < 1e-12);
    assert.throws(() => unigramEntropy([]), /empty/);
  });
});
