/**
 * The host collective: sums buffers over the ranks of a data-parallel run through files in the
 * rendezvous folder (on Linux a tmpfs, /dev/shm). Serves every backend (the cpu backend on a machine
 * with several sockets, tests on a machine without GPUs, cuda without NCCL via SSD_COLLECTIVE=host).
 * Each rank downloads its buffers, publishes them as one f32 file per call, reads the others' files and
 * adds them in rank order, so every rank computes the same bits; then uploads the sums.
 */
import type { Backend, Buf, Collective } from '../backend/contract.js';
import { FileRendezvous } from './rendezvous.js';

export class HostCollective implements Collective {
  readonly transport: string;
  readonly overlaps = false;
  private calls = 0;
  private open = true;

  constructor(private readonly backend: Backend, readonly rank: number, readonly size: number, private readonly rdzv: FileRendezvous) {
    this.transport = `host files in ${rdzv.dir}`;
  }

  allReduceSum(bufs: Buf[]): void {
    if (!this.open) throw new Error('allReduceSum: the collective was disposed');
    bufs.forEach((b, i) => {
      if (b.dtype !== 'f32') throw new Error(`allReduceSum: bufs[${i}] must be f32, got ${b.dtype}`);
    });
    const total = bufs.reduce((n, b) => n + b.size, 0);
    const mine = new Float32Array(total);
    let off = 0;
    for (const b of bufs) {
      mine.set(this.backend.download(b) as Float32Array, off);
      off += b.size;
    }
    const call = ++this.calls;
    this.rdzv.put(this.fileName(call, this.rank), new Uint8Array(mine.buffer));
    const sum = new Float32Array(total);
    for (let r = 0; r < this.size; r++) {
      const v = r === this.rank ? mine : this.read(call, r, total);
      for (let i = 0; i < total; i++) sum[i]! += v[i]!;
    }
    // Every rank published this call's file after reading all of the previous call's: ours can go.
    if (call > 1) this.rdzv.remove(this.fileName(call - 1, this.rank));
    off = 0;
    for (const b of bufs) {
      this.backend.upload(b, sum.subarray(off, off + b.size));
      off += b.size;
    }
  }

  /** Sums here are synchronous: nothing to wait for. */
  wait(): void {}

  dispose(): void {
    this.open = false;
  }

  private fileName(call: number, rank: number): string {
    return `allreduce.${call}.rank${rank}`;
  }

  private read(call: number, rank: number, total: number): Float32Array {
    const b = this.rdzv.get(this.fileName(call, rank), `rank ${rank}'s buffers (all-reduce ${call})`);
    if (b.byteLength !== total * 4) {
      throw new Error(`allReduceSum: rank ${rank} sent ${b.byteLength / 4} values, rank ${this.rank} has ${total}: ` +
        'the ranks do not hold the same model (a bug; every rank must build the same parameters)');
    }
    // A Float32Array view needs a 4-byte aligned offset; a pooled Buffer may not have one.
    return b.byteOffset % 4 === 0 ? new Float32Array(b.buffer, b.byteOffset, total) : new Float32Array(new Uint8Array(b).buffer);
  }
}
