import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { ArrayPool } from '../src/backend/cpu/pool.js';

describe('ArrayPool (cpu buffer reuse)', () => {
  const arr = (n: number) => new Float32Array(n); // 4n bytes

  it('returns kept arrays by size class, most recent first, and counts bytes', () => {
    const p = new ArrayPool<Float32Array>(1000);
    const a = arr(10), b = arr(10), c = arr(20);
    p.put('f32:10', a);
    p.put('f32:10', b);
    p.put('f32:20', c);
    assert.equal(p.pooledBytes, 160);
    assert.equal(p.take('f32:10'), b);
    assert.equal(p.take('f32:10'), a);
    assert.equal(p.take('f32:10'), undefined);
    assert.equal(p.take('f32:5'), undefined);
    assert.equal(p.pooledBytes, 80);
  });

  it('evicts the least recently used size classes when full, never the class being added', () => {
    const p = new ArrayPool<Float32Array>(400); // room for 100 floats
    p.put('old', arr(40));
    p.put('mid', arr(40));
    p.take('old'); // 'old' is now empty; 'mid' is the oldest class with arrays
    p.put('old', arr(40));
    assert.equal(p.pooledBytes, 320);
    p.put('new', arr(40)); // needs 160 bytes freed: 'mid' (least recently used) goes
    assert.equal(p.take('mid'), undefined);
    assert.ok(p.take('old'));
    assert.ok(p.take('new'));
    p.put('same', arr(60));
    p.put('same', arr(60)); // its own class alone would exceed the limit: not kept
    assert.equal(p.pooledBytes, 240);
    p.put('huge', arr(200)); // larger than the whole budget: never kept, nothing evicted
    assert.equal(p.pooledBytes, 240);
    p.clear();
    assert.equal(p.pooledBytes, 0);
  });

  it('a take marks its class recently used; eviction stops as soon as there is room', () => {
    const p = new ArrayPool<Float32Array>(400);
    p.put('a', arr(20));
    p.put('a', arr(20));
    p.put('b', arr(40));
    p.take('a'); // 'a' (one array left) is now more recent than 'b'
    p.put('c', arr(60)); // 80 + 160 + 240 > 400: 'b' goes, 'a' stays
    assert.equal(p.take('b'), undefined);
    assert.ok(p.take('a'));
    const q = new ArrayPool<Float32Array>(400);
    q.put('q', arr(20));
    q.put('q', arr(20));
    q.put('q', arr(20));
    q.put('r', arr(50)); // 240 + 200 > 400: one 'q' array goes, two stay
    assert.equal(q.pooledBytes, 360);
    assert.ok(q.take('q'));
    assert.ok(q.take('q'));
    assert.equal(q.take('q'), undefined);
  });

  it('does not evict other classes for an array its own class cannot take; rejects a bad limit', () => {
    const p = new ArrayPool<Float32Array>(400);
    p.put('s', arr(80));
    p.put('a', arr(10));
    p.put('s', arr(40)); // 320 + 160 > 400 on its own: 'a' must survive
    assert.ok(p.take('a'));
    assert.throws(() => new ArrayPool(NaN), /limit must be a number of bytes >= 0, got NaN/);
    assert.throws(() => new ArrayPool(-1), /got -1/);
  });
});
