/**
 * Data-parallel training: the host all-reduce, the launcher, and `ssd train --world-size N` against the
 * single-process run it stands for (batch_size × N), with exact resume. Runs on the cpu backend.
 */
import assert from 'node:assert/strict';
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { after, before, describe, it } from 'node:test';
import type { Collective } from '../src/backend/contract.js';
import { getBackend } from '../src/backend/registry.js';
import { loadDataset, prepare } from '../src/data/index.js';
import { defaultBucketBytes, GradientBuckets } from '../src/parallel/buckets.js';
import { joinGroup, rankFromEnv } from '../src/parallel/group.js';
import { launchRanks, type LaunchError } from '../src/parallel/launch.js';
import { loadCheckpoint } from '../src/train/checkpoint.js';
import { parseTrainConfig, resumeConfig } from '../src/train/config.js';
import { train } from '../src/train/trainer.js';

const here = path.dirname(fileURLToPath(import.meta.url));
const fixture = path.join(here, 'fixtures', 'parallel-rank.js');
const cli = path.join(here, '..', 'src', 'cli', 'main.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ssd-dist-'));
const run = promisify(execFile);

/** Runs `ssd train` with the given flags on the test dataset; returns its standard error. */
async function ssdTrain(flags: string[]): Promise<string> {
  const r = await run(process.execPath, [cli, 'train', '--backend', 'cpu', '--data', path.join(tmp, 'data'), '--model', 'tiny',
    '--n-layer', '2', '--d-model', '32', '--n-head', '2', '--d-ff', '128', '--seq-len', '32', '--lr', '0.003', '--steps', '16',
    '--eval-interval', '8', '--eval-batches', '3', '--log-interval', '2', '--ckpt-interval', '8', ...flags],
  { env: { ...process.env, SSD_THREADS: '1' } });
  return r.stderr;
}

/** Polls `get` every 50 ms until it returns a value (not undefined and not throwing); fails after 30 s. */
async function waitFor<V>(get: () => V | undefined): Promise<V> {
  for (const t0 = Date.now(); Date.now() - t0 < 30_000; await new Promise((r) => setTimeout(r, 50))) {
    try {
      const v = get();
      if (v !== undefined) return v;
    } catch { /* not yet */ }
  }
  throw new Error('timed out');
}

/** Whether `pid` (> 0) runs: it exists and is not a zombie waiting to be reaped. */
function isAlive(pid: number): boolean {
  if (!(pid > 0)) throw new Error(`bad pid ${pid}`);
  try {
    process.kill(pid, 0);
  } catch {
    return false;
  }
  try {
    return fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]?.[0] !== 'Z';
  } catch {
    return false;
  }
}

/** Kills the processes still running (the tests' leftovers when an assertion fails). */
function killAll(pids: number[]): void {
  for (const pid of pids) try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}

function metrics(run: string): { step: number; loss: number; val_loss?: number; phase?: string }[] {
  return fs.readFileSync(path.join(run, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l));
}

function params(run: string): Map<string, Float32Array> {
  return new Map([...loadCheckpoint(run).params].map(([k, v]) => [k, new Float32Array(new Uint8Array(v.data).buffer)]));
}

describe('data parallel', () => {
  before(async () => {
    await prepare({ input: 'brown', brownLimit: 8, tokenizer: 'byte', outDir: path.join(tmp, 'data') });
  });
  after(() => fs.rmSync(tmp, { recursive: true, force: true }));

  it('the host all-reduce of 3 ranks: sums in rank order, the same bits on every rank, calls in a row', async () => {
    const out = path.join(tmp, 'allreduce');
    fs.mkdirSync(out);
    await launchRanks({ size: 3, script: fixture, args: [], env: { DIST_FIXTURE: 'allreduce', DIST_OUT: out } });
    const f = Math.fround;
    const sum = (v: (r: number) => number) => f(f(f(0 + f(v(0))) + f(v(1))) + f(v(2)));
    const wantA = Array.from({ length: 1000 }, (_, i) => sum((r) => (r + 1) / (i + 3)));
    const wantB = [sum((r) => r), sum((r) => -r), sum((r) => 0.1 * r)];
    for (let r = 0; r < 3; r++) {
      const got = JSON.parse(fs.readFileSync(path.join(out, `rank${r}.json`), 'utf8'));
      assert.deepEqual(got.first.a, wantA);
      assert.deepEqual(got.first.b, wantB);
      const twice = wantB.map((x) => f(f(f(0 + x) + x) + x));
      assert.deepEqual(got.second, twice);
      assert.deepEqual(got.third, twice.map((x) => f(f(f(0 + x) + x) + x)), 'an overlapped sum, waited for');
      assert.match(got.transport, /host files in .*ssd-rendezvous-/);
    }
    const leftover = fs.readdirSync(fs.existsSync('/dev/shm') ? '/dev/shm' : os.tmpdir()).filter((n) => n.startsWith('ssd-rendezvous-'));
    assert.ok(!leftover.some((n) => JSON.parse(fs.readFileSync(path.join(out, 'rank0.json'), 'utf8')).transport.includes(n)),
      'the launcher removes its rendezvous folder');
  });

  it('a failing rank stops the others, and the launcher names it and passes on its exit code', async () => {
    const t0 = Date.now();
    await assert.rejects(launchRanks({ size: 2, script: fixture, args: [], env: { DIST_FIXTURE: 'fail', DIST_OUT: tmp, SSD_DIST_TIMEOUT_S: '60' } }),
      (e: LaunchError) => /rank 1 of 2 failed \(exit code 3\); the other ranks are stopped/.test(e.message) && e.exitCode === 3);
    assert.ok(Date.now() - t0 < 30_000);
  });

  it('ranks keep the same parameters through SSD phases with grad_accum 2, and a diverging rank is caught', async () => {
    const out = path.join(tmp, 'same');
    fs.mkdirSync(out);
    const env = { DIST_OUT: out, DIST_DATA: path.join(tmp, 'data') };
    await launchRanks({ size: 3, script: fixture, args: [], env: { ...env, DIST_FIXTURE: 'train' } });
    const hashes = [0, 1, 2].map((r) => fs.readFileSync(path.join(out, `rank${r}.hash`), 'utf8'));
    assert.match(hashes[0]!, /sparse/);
    assert.deepEqual(hashes, [hashes[0], hashes[0], hashes[0]]);
    // The trainer's bucket path (taken where sums overlap): sums in rank order all the same, so the same bits.
    await launchRanks({ size: 3, script: fixture, args: [], env: { ...env, DIST_FIXTURE: 'train', DIST_OVERLAP: '1' } });
    assert.deepEqual([0, 1, 2].map((r) => fs.readFileSync(path.join(out, `rank${r}.hash`), 'utf8')), hashes);
    await launchRanks({ size: 2, script: fixture, args: [], env: { ...env, DIST_FIXTURE: 'diverge' } });
    for (const r of [0, 1]) {
      assert.match(fs.readFileSync(path.join(out, `rank${r}.error`), 'utf8'), /the ranks diverged at step 0: .*this is a bug/);
    }
  });

  it('ranks die with their launcher; an interrupted launcher stops its ranks and exits with 128 + the signal', async () => {
    const out = path.join(tmp, 'orphans');
    fs.mkdirSync(out);
    const launcher = spawn(process.execPath, ['--input-type=module', '-e',
      `import(${JSON.stringify(path.join(here, '..', 'src', 'parallel', 'launch.js'))}).then((m) => ` +
      `m.launchRanks({ size: 2, script: ${JSON.stringify(fixture)}, args: [], env: { DIST_FIXTURE: 'orphan', DIST_OUT: ${JSON.stringify(out)} } }))`],
    { stdio: 'ignore' });
    let pids: number[] = [];
    try {
      pids = await waitFor(() => [0, 1].map((r) => Number(fs.readFileSync(path.join(out, `rank${r}.pid`), 'utf8'))));
      launcher.kill('SIGKILL');
      await waitFor(() => pids.every((pid) => !isAlive(pid)) || undefined);
    } finally {
      killAll([launcher.pid!, ...pids]);
      // A killed launcher leaves its rendezvous folder behind.
      fs.rmSync(fs.readFileSync(path.join(out, 'rank0.dir'), 'utf8'), { recursive: true, force: true });
    }
    const run2 = path.join(tmp, 'interrupted');
    const cliRun = spawn(process.execPath, [cli, 'train', '--backend', 'cpu', '--data', path.join(tmp, 'data'), '--model', 'tiny',
      '--n-layer', '1', '--d-model', '32', '--n-head', '2', '--d-ff', '64', '--seq-len', '32', '--steps', '100000', '--log-interval', '1',
      '--world-size', '2', '--batch-size', '2', '--out', run2], { stdio: ['ignore', 'ignore', 'pipe'] });
    let stderr = '';
    cliRun.stderr.on('data', (d) => { stderr += d; });
    const code = new Promise<number | null>((resolve) => cliRun.on('exit', (c) => resolve(c)));
    try {
      await waitFor(() => fs.existsSync(path.join(run2, 'metrics.jsonl')) || undefined);
      cliRun.kill('SIGINT');
      assert.equal(await Promise.race([code, new Promise((r) => setTimeout(() => r('timed out'), 30_000))]), 130);
      assert.match(stderr, /interrupted \(SIGINT\); the ranks were stopped/);
    } finally {
      killAll([cliRun.pid!]);
    }
  });

  it('a rank cannot launch ranks of its own', async () => {
    process.env['SSD_RANK'] = '0';
    try {
      await assert.rejects(launchRanks({ size: 2, script: fixture, args: [] }), /rank 0 cannot launch ranks of its own/);
    } finally {
      delete process.env['SSD_RANK'];
    }
  });

  it('world_size 2 trains the run of batch_size × 2 (losses, val loss, phases, weights); rank 0 alone writes', async () => {
    const ssd = ['--method', 'ssd', '--check-interval', '4', '--min-dense-steps', '4', '--sparse-steps', '4', '--stable-threshold', '0.01',
      '--final-dense-fraction', '0.25', '--max-active-ratio', '0.95'];
    const one = path.join(tmp, 'one'), two = path.join(tmp, 'two');
    await ssdTrain([...ssd, '--batch-size', '8', '--out', one]);
    const log = await ssdTrain([...ssd, '--batch-size', '4', '--world-size', '2', '--out', two]);
    assert.match(log, /2 data-parallel ranks/);
    assert.match(log, /gradients summed by host files/);
    const a = metrics(one), b = metrics(two);
    assert.deepEqual(b.map((m) => [m.step, m.phase]), a.map((m) => [m.step, m.phase]));
    assert.ok(a.some((m) => m.phase === 'sparse'), 'the run has a sparse phase');
    for (let i = 0; i < a.length; i++) {
      // Dense steps differ only in the order of the gradient sums; top-k routing amplifies that a little.
      const tol = a[i]!.phase === 'dense' && a.slice(0, i).every((m) => m.phase === 'dense') ? 1e-5 : 2e-3;
      assert.ok(Math.abs(b[i]!.loss - a[i]!.loss) <= tol * a[i]!.loss, `step ${a[i]!.step}: loss ${b[i]!.loss} vs ${a[i]!.loss}`);
      if (a[i]!.val_loss !== undefined) assert.ok(Math.abs(b[i]!.val_loss! - a[i]!.val_loss!) <= 2e-3 * a[i]!.val_loss!);
    }
    const pa = params(one), pb = params(two);
    assert.deepEqual([...pb.keys()], [...pa.keys()]);
    for (const [k, w] of pa) {
      const v = pb.get(k)!;
      let d = 0;
      for (let i = 0; i < w.length; i++) d = Math.max(d, Math.abs(v[i]! - w[i]!));
      assert.ok(d < 2e-3, `${k}: max difference ${d}`);
    }
    assert.deepEqual(fs.readdirSync(two).sort(), ['metrics.jsonl', 'ssd.jsonl', 'step_00000008', 'step_00000016', 'summary.json']);
    assert.equal(fs.readFileSync(path.join(two, 'metrics.jsonl'), 'utf8').trim().split('\n').length, a.length, 'one line per logged step');
    const summary = JSON.parse(fs.readFileSync(path.join(two, 'summary.json'), 'utf8'));
    assert.equal(summary.tokens, 16 * 8 * 32);
  });

  it('a data-parallel run resumes exactly (losses and weights bit for bit)', async () => {
    const two = path.join(tmp, 'two'), again = path.join(tmp, 'again');
    fs.cpSync(two, again, { recursive: true });
    fs.rmSync(path.join(again, 'step_00000016'), { recursive: true });
    await ssdTrain(['--resume', again, '--out', again]);
    assert.deepEqual(metrics(again).map((m) => [m.step, m.loss, m.val_loss, m.phase]), metrics(two).map((m) => [m.step, m.loss, m.val_loss, m.phase]));
    for (const [k, w] of params(two)) assert.deepEqual(params(again).get(k), w, k);
  });

  it('a data-parallel run resumes on another number of ranks with the same global batch', async () => {
    const two = path.join(tmp, 'two'), one = path.join(tmp, 'regrouped');
    fs.cpSync(two, one, { recursive: true });
    fs.rmSync(path.join(one, 'step_00000016'), { recursive: true });
    await ssdTrain(['--resume', one, '--out', one, '--world-size', '1', '--batch-size', '8']);
    const a = metrics(two), b = metrics(one);
    assert.deepEqual(b.map((m) => [m.step, m.phase]), a.map((m) => [m.step, m.phase]));
    for (let i = 0; i < a.length; i++) assert.ok(Math.abs(b[i]!.loss - a[i]!.loss) <= 2e-3 * a[i]!.loss, `step ${a[i]!.step}`);
    assert.equal(loadCheckpoint(one).state.train_config.world_size, 1);
    const stored = loadCheckpoint(two).state.train_config;
    assert.throws(() => resumeConfig(stored, { world_size: 4 }, two),
      /changed world_size \(checkpoint: 2, given: 4\).*may change together when batch_size × world_size stays 8/);
    assert.deepEqual([resumeConfig(stored, { world_size: 4, batch_size: 2 }, two)].map((c) => [c.world_size, c.batch_size]), [[4, 2]]);
  });

  it('clear errors: bad rank variables, an unknown collective, a group that is not the config\'s world size', () => {
    assert.equal(rankFromEnv({}), null);
    assert.throws(() => rankFromEnv({ SSD_RANK: '2', SSD_WORLD_SIZE: '2', SSD_RENDEZVOUS: tmp }), /0 <= rank < size/);
    assert.throws(() => rankFromEnv({ SSD_RANK: '0', SSD_WORLD_SIZE: '2' }), /SSD_RENDEZVOUS is not set/);
    const cpu = getBackend('cpu');
    assert.throws(() => joinGroup(cpu, { rank: 0, size: 2, dir: path.join(tmp, 'nowhere') }), /rendezvous folder .* does not exist/);
    process.env['SSD_COLLECTIVE'] = 'mpi';
    try {
      assert.throws(() => joinGroup(cpu, { rank: 0, size: 2, dir: tmp }), /unknown SSD_COLLECTIVE 'mpi'/);
    } finally {
      delete process.env['SSD_COLLECTIVE'];
    }
    const pair: Collective = { rank: 0, size: 2, transport: 'none', overlaps: false, allReduceSum: () => {}, wait: () => {}, dispose: () => {} };
    const cfg = parseTrainConfig({ model: 'tiny', n_layer: 1, d_model: 16, n_head: 2, d_ff: 32, seq_len: 16, steps: 2, out: path.join(tmp, 'x') });
    assert.throws(() => train(cfg, loadDataset(path.join(tmp, 'data')), cpu, { collective: pair }),
      /world_size is 1 but this process trains in a group of 2/);
  });

  it('gradient buckets start a sum (overlapped) whenever they hold bucketBytes, and flush the rest', () => {
    const cpu = getBackend('cpu'), calls: [number[], boolean | undefined][] = [];
    const spy: Collective = { rank: 0, size: 2, transport: 'spy', overlaps: true, allReduceSum: (bufs, overlap) => { calls.push([bufs.map((b) => b.size), overlap]); },
      wait: () => {}, dispose: () => {} };
    const buckets = new GradientBuckets(spy, 400);
    const bufs = [30, 80, 10, 200, 5].map((n) => cpu.alloc('f32', n));
    for (const b of bufs) buckets.add(b);
    buckets.flush();
    buckets.flush();
    assert.deepEqual(calls, [[[30, 80], true], [[10, 200], true], [[5], true]]);
    assert.equal(buckets.added.size, 5);
    process.env['SSD_BUCKET_MB'] = '0';
    try {
      assert.throws(() => defaultBucketBytes(), /SSD_BUCKET_MB must be a positive number of megabytes, got '0'/);
    } finally {
      delete process.env['SSD_BUCKET_MB'];
    }
    for (const b of bufs) cpu.free(b);
  });

  it('ssd compare refuses --world-size', async () => {
    await assert.rejects(run(process.execPath, [cli, 'compare', '--world-size', '2', '--steps', '1']), /compare runs in one process/);
  });
});
