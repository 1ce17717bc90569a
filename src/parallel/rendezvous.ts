/**
 * A folder shared by the ranks of one data-parallel run (like torchrun's `file://` rendezvous): a rank
 * publishes named bytes atomically (written aside, then renamed) and the others wait for them. The
 * waits are synchronous (the training loop is), polling with short sleeps.
 */
import * as fs from 'node:fs';
import * as path from 'node:path';

/** Default longest wait for another rank (SSD_DIST_TIMEOUT_S overrides), in seconds. */
const DEFAULT_TIMEOUT_S = 1800;

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
function sleepMs(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

export class FileRendezvous {
  private readonly timeoutMs: number;

  /**
   * @throws Error if `dir` is not an existing folder, or SSD_DIST_TIMEOUT_S is not a positive number of
   *   seconds (it bounds the waits for other ranks' files; NCCL's own waits are not bounded by it).
   */
  constructor(readonly dir: string, readonly rank: number) {
    if (!fs.existsSync(dir) || !fs.statSync(dir).isDirectory()) {
      throw new Error(`data-parallel rendezvous folder ${dir} does not exist (SSD_RENDEZVOUS); start the run with ssd train --world-size N`);
    }
    const t = Number(process.env['SSD_DIST_TIMEOUT_S'] ?? DEFAULT_TIMEOUT_S);
    if (!Number.isFinite(t) || t <= 0) throw new Error(`SSD_DIST_TIMEOUT_S must be a positive number of seconds, got '${process.env['SSD_DIST_TIMEOUT_S']}'`);
    this.timeoutMs = t * 1000;
  }

  /**
   * Publishes `data` under `name` (atomically: readers see all of it or nothing).
   * @throws Error saying what to do when the folder's file system is full
   */
  put(name: string, data: Uint8Array): void {
    const file = path.join(this.dir, name);
    const tmp = `${file}.tmp${process.pid}`;
    try {
      fs.writeFileSync(tmp, data);
    } catch (e) {
      fs.rmSync(tmp, { force: true });
      if ((e as NodeJS.ErrnoException).code !== 'ENOSPC') throw e;
      throw new Error(`the rendezvous folder ${this.dir} is full (${data.byteLength} bytes to write): free space there, ` +
        'or point SSD_RENDEZVOUS_DIR at a folder with more room');
    }
    fs.renameSync(tmp, file);
  }

  /**
   * The bytes published under `name`, waiting for them; `from` names the publisher in the error.
   * @throws Error after SSD_DIST_TIMEOUT_S (default 1800) seconds without them.
   */
  get(name: string, from: string): Buffer {
    const file = path.join(this.dir, name);
    const t0 = Date.now();
    for (let wait = 0.05; ; wait = Math.min(wait * 2, 2)) {
      try {
        return fs.readFileSync(file);
      } catch (e) {
        if ((e as NodeJS.ErrnoException).code !== 'ENOENT') throw e;
      }
      if (Date.now() - t0 > this.timeoutMs) {
        throw new Error(`rank ${this.rank} waited ${Math.round(this.timeoutMs / 1000)} s for ${from} (${file}); did that rank fail? ` +
          '(its error is above; SSD_DIST_TIMEOUT_S sets this wait)');
      }
      sleepMs(wait);
    }
  }

  /** Removes what this rank published under `name` (no error if it is gone). */
  remove(name: string): void {
    fs.rmSync(path.join(this.dir, name), { force: true });
  }
}
