/**
 * Starts the ranks of a data-parallel run (what torchrun does for PyTorch): `size` Node.js processes
 * running the same script and arguments, each with SSD_RANK, SSD_WORLD_SIZE, SSD_RENDEZVOUS (a fresh
 * folder, removed at the end), SSD_CUDA_DEVICE = its rank and, unless set, SSD_THREADS = the host's
 * cores / size (for cpu ranks, so that they do not oversubscribe the cores). Rank 0 keeps the terminal; the others'
 * standard output is dropped and their standard error shown with a `[rank r]` prefix. When a rank
 * fails, the others (which would wait for it forever) are stopped.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';

export interface LaunchOptions {
  /** Number of ranks (≥ 1). */
  size: number;
  /** The script each rank runs, and its arguments. */
  script: string;
  args: string[];
  /** Extra environment for every rank. */
  env?: NodeJS.ProcessEnv;
}

/** A folder for the rendezvous: on tmpfs (/dev/shm) where there is one, else the system's temp folder. */
function rendezvousDir(): string {
  const shm = '/dev/shm';
  let base = os.tmpdir();
  try {
    fs.accessSync(shm, fs.constants.W_OK);
    base = shm;
  } catch { /* no tmpfs: the temp folder */ }
  return fs.mkdtempSync(path.join(base, 'ssd-rendezvous-'));
}

/** Writes each complete line of a rank's stream to stderr with its prefix. */
function prefixLines(stream: NodeJS.ReadableStream, prefix: string): void {
  let rest = '';
  stream.setEncoding('utf8');
  stream.on('data', (chunk: string) => {
    const lines = (rest + chunk).split('\n');
    rest = lines.pop()!;
    for (const l of lines) process.stderr.write(`${prefix}${l}\n`);
  });
  stream.on('end', () => {
    if (rest) process.stderr.write(`${prefix}${rest}\n`);
  });
}

/**
 * Runs the ranks to completion.
 * @throws Error naming the first rank that failed (exit code or signal); the others are then stopped.
 */
export async function launchRanks(o: LaunchOptions): Promise<void> {
  if (!Number.isInteger(o.size) || o.size < 1) throw new Error(`the number of ranks must be a positive integer, got ${o.size}`);
  const dir = rendezvousDir();
  const children: ChildProcess[] = [];
  let failure: Error | null = null;
  const stopAll = (signal: NodeJS.Signals) => {
    for (const c of children) if (c.exitCode === null && c.signalCode === null) c.kill(signal);
  };
  const onSignal = (signal: NodeJS.Signals) => stopAll(signal);
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  try {
    const exits = Array.from({ length: o.size }, (_, rank) => new Promise<void>((resolve) => {
      const child = spawn(process.execPath, [...process.execArgv, o.script, ...o.args], {
        env: {
          ...process.env, ...o.env, SSD_RANK: String(rank), SSD_WORLD_SIZE: String(o.size), SSD_RENDEZVOUS: dir,
          SSD_CUDA_DEVICE: String(rank),
          SSD_THREADS: process.env['SSD_THREADS'] ?? String(Math.max(1, Math.floor(os.availableParallelism() / o.size))),
        },
        stdio: rank === 0 ? 'inherit' : ['ignore', 'ignore', 'pipe'],
      });
      children.push(child);
      if (child.stderr) prefixLines(child.stderr, `[rank ${rank}] `);
      child.on('error', (e) => {
        failure ??= new Error(`rank ${rank} could not start: ${e.message}`);
        stopAll('SIGTERM');
        resolve();
      });
      child.on('exit', (code, signal) => {
        if (code !== 0 && !failure) {
          failure = new Error(`rank ${rank} of ${o.size} failed (${signal ? `signal ${signal}` : `exit code ${code}`}); the other ranks were stopped`);
          stopAll('SIGTERM');
        }
        resolve();
      });
    }));
    await Promise.all(exits);
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (failure) throw failure;
}
