/**
 * Starts the ranks of a data-parallel run (what torchrun does for PyTorch): `size` Node.js processes
 * running the same script and arguments, each with SSD_RANK, SSD_WORLD_SIZE, SSD_RENDEZVOUS (a fresh
 * folder, removed at the end), SSD_LAUNCHER_PID, SSD_CUDA_DEVICE = its rank and, unless set,
 * SSD_THREADS = the host's cores / size (so that cpu ranks do not oversubscribe the cores). Rank 0 keeps
 * the terminal; the others' standard output is dropped and their standard error shown with a
 * `[rank r]` prefix. When a rank fails, the others (which would wait for it forever) are stopped; when
 * the launcher is interrupted, so are all ranks; when it dies, the ranks die with it (`exitWithLauncher`),
 * though its rendezvous folder then stays behind. Node's own flags are not passed on (NODE_OPTIONS is).
 */
import { spawn, type ChildProcess } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { loadAddon } from '../backend/cpu/addon.js';

export interface LaunchOptions {
  /** Number of ranks (≥ 1). */
  size: number;
  /** The script each rank runs, and its arguments. */
  script: string;
  args: string[];
  /** Extra environment for every rank. */
  env?: NodeJS.ProcessEnv;
}

/** A failed or interrupted launch; `exitCode` is what the launcher should exit with. */
export class LaunchError extends Error {
  constructor(message: string, readonly exitCode: number) {
    super(message);
  }
}

/** Seconds a rank gets to exit after SIGTERM before it is killed. */
const KILL_AFTER_S = 10;

/**
 * A folder for the rendezvous, in SSD_RENDEZVOUS_DIR if set, else on tmpfs (/dev/shm) where there is one
 * with at least 1 GiB free (the host collective keeps up to two gradient copies per rank there), else in
 * the system's temp folder.
 */
function rendezvousDir(): string {
  const chosen = process.env['SSD_RENDEZVOUS_DIR'];
  if (chosen) return fs.mkdtempSync(path.join(chosen, 'ssd-rendezvous-'));
  let base = os.tmpdir();
  try {
    const s = fs.statfsSync('/dev/shm');
    fs.accessSync('/dev/shm', fs.constants.W_OK);
    if (s.bavail * s.bsize >= 2 ** 30) base = '/dev/shm';
  } catch { /* no usable tmpfs: the temp folder */ }
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
 * Runs the ranks to completion. Call it from the main thread (the ranks' parent-death signal follows
 * the thread that started them).
 * @throws LaunchError naming the first rank that failed (exitCode: its exit code, or 128 + its signal),
 *   or saying the launcher was interrupted (exitCode 128 + the signal); the other ranks are stopped.
 */
export async function launchRanks(o: LaunchOptions): Promise<void> {
  if (!Number.isInteger(o.size) || o.size < 1) throw new Error(`the number of ranks must be a positive integer, got ${o.size}`);
  if (process.env['SSD_RANK'] !== undefined) throw new Error(`rank ${process.env['SSD_RANK']} cannot launch ranks of its own`);
  const dir = rendezvousDir();
  const children: ChildProcess[] = [];
  let failure: LaunchError | null = null;
  const alive = (c: ChildProcess) => c.exitCode === null && c.signalCode === null;
  const stopAll = () => {
    for (const c of children) if (alive(c)) c.kill('SIGTERM');
    setTimeout(() => { for (const c of children) if (alive(c)) c.kill('SIGKILL'); }, KILL_AFTER_S * 1000).unref();
  };
  const onSignal = (signal: NodeJS.Signals) => {
    failure ??= new LaunchError(`interrupted (${signal}); the ranks were stopped`, 128 + os.constants.signals[signal]);
    stopAll();
  };
  process.on('SIGINT', onSignal);
  process.on('SIGTERM', onSignal);
  process.on('SIGHUP', onSignal);
  try {
    await Promise.all(Array.from({ length: o.size }, (_, rank) => new Promise<void>((resolve) => {
      // Node's own flags are not passed on (`-e` would run the launcher again, `--inspect` wait in each rank);
      // NODE_OPTIONS, inherited with the environment, reaches every rank.
      const child = spawn(process.execPath, [o.script, ...o.args], {
        env: {
          ...process.env, SSD_THREADS: process.env['SSD_THREADS'] ?? String(Math.max(1, Math.floor(os.availableParallelism() / o.size))),
          ...o.env, SSD_RANK: String(rank), SSD_WORLD_SIZE: String(o.size), SSD_RENDEZVOUS: dir,
          SSD_LAUNCHER_PID: String(process.pid), SSD_CUDA_DEVICE: String(rank),
        },
        stdio: rank === 0 ? 'inherit' : ['ignore', 'ignore', 'pipe'],
      });
      children.push(child);
      if (child.stderr) prefixLines(child.stderr, `[rank ${rank}] `);
      child.on('error', (e) => {
        failure ??= new LaunchError(`rank ${rank} could not start: ${e.message}`, 1);
        stopAll();
        resolve();
      });
      // 'close': the rank has exited and its error output has been read to the end.
      child.on('close', (code, signal) => {
        if (code !== 0 && !failure) {
          failure = new LaunchError(`rank ${rank} of ${o.size} failed (${signal ? `signal ${signal}` : `exit code ${code}`}); ` +
            'the other ranks are stopped', code ?? 128 + (signal ? os.constants.signals[signal] : 0));
          stopAll();
        }
        resolve();
      });
    })));
  } finally {
    process.off('SIGINT', onSignal);
    process.off('SIGTERM', onSignal);
    process.off('SIGHUP', onSignal);
    fs.rmSync(dir, { recursive: true, force: true });
  }
  if (failure) throw failure;
}

/**
 * In a rank: makes the kernel stop this process (SIGTERM) when its launcher exits, and exits at once if
 * the launcher is already gone (Linux; elsewhere a no-op). Without it a rank whose launcher was killed
 * would train on, or wait for its peers forever.
 */
export function exitWithLauncher(env: NodeJS.ProcessEnv = process.env): void {
  const launcher = Number(env['SSD_LAUNCHER_PID']);
  if (!launcher) return;
  let armed = false;
  try {
    armed = loadAddon().parentDeathSignal(os.constants.signals.SIGTERM);
  } catch { /* no native addon: rely on the launcher's own signals */ }
  if (armed && process.ppid !== launcher) {
    console.error(`ssd: rank ${env['SSD_RANK']}: its launcher (pid ${launcher}) is gone; exiting`);
    process.exit(1);
  }
}
