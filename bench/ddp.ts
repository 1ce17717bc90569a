/**
 * `npm run bench:ddp`: data-parallel training throughput. Runs `ssd train --method dense` once per world
 * size (default 1 and 2; one GPU per rank on cuda) with the same per-rank batch, and reports tokens/s,
 * tokens/s per rank, MFU per GPU and the scaling efficiency against one rank, timed over the logged
 * steps after the warm-up (evaluation and checkpoints fall outside that window). Then the numerics: the
 * largest world size against one process with its global batch (batch × world size), loss per logged
 * step (they train on the same windows; only the order of the gradient sums differs).
 * Usage: node dist/bench/ddp.js --data DIR [--world-sizes 1,2] [--batch 8] [--steps 40] [--warmup 10]
 *        [--model gpt2-small] [--backend cuda] [--skip-numerics] [--json out.json]
 * DIR is a prepared dataset (`ssd prepare brown --tokenizer gpt2 --out DIR` for the GPT-2 vocabulary).
 */
import { execFileSync } from 'node:child_process';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';

const arg = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const data = arg('--data');
if (!data) throw new Error('--data DIR (a prepared dataset) is required; see the usage in bench/ddp.ts');
const worlds = (arg('--world-sizes') ?? '1,2').split(',').map(Number);
const batch = Number(arg('--batch') ?? 8), steps = Number(arg('--steps') ?? 40), warmup = Number(arg('--warmup') ?? 10);
const model = arg('--model') ?? 'gpt2-small', backend = arg('--backend') ?? 'cuda';
const cli = path.join(path.dirname(fileURLToPath(import.meta.url)), '..', 'src', 'cli', 'main.js');
const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'ssd-bench-ddp-'));

interface Logged { step: number; tokens: number; loss: number; tokens_per_s: number; mfu?: number; elapsed_s: number }

/** Trains `steps` dense steps with `world` ranks of `b` rows each; returns the logged metrics. */
function trainRun(world: number, b: number): Logged[] {
  const out = path.join(tmp, `w${world}b${b}`);
  execFileSync(process.execPath, [cli, 'train', '--backend', backend, '--data', data!, '--model', model, '--method', 'dense',
    '--world-size', String(world), '--batch-size', String(b), '--steps', String(steps), '--log-interval', '5',
    '--eval-interval', String(steps), '--eval-batches', '1', '--ckpt-interval', String(steps), '--keep-checkpoints', '1',
    '--out', out], { stdio: ['ignore', 'ignore', 'inherit'] });
  return fs.readFileSync(path.join(out, 'metrics.jsonl'), 'utf8').trim().split('\n').map((l) => JSON.parse(l) as Logged);
}

/**
 * Tokens/s between the first logged step at or after the warm-up and the last one before the final
 * (evaluated) step, and the MFU per GPU at that rate (from the trainer's, where its backend knows the peak).
 */
function throughput(m: Logged[]): { tokensPerS: number; mfu: number | undefined } {
  const a = m.find((x) => x.step >= warmup), b = [...m].reverse().find((x) => x.step < steps);
  if (!a || !b || b.step <= a.step) throw new Error(`--steps ${steps} leaves no timed window after --warmup ${warmup}`);
  const tokensPerS = (b.tokens - a.tokens) / (b.elapsed_s - a.elapsed_s);
  // The trainer's MFU per token/s is the same on every line of a dense run.
  return { tokensPerS, mfu: b.mfu === undefined ? undefined : tokensPerS * (b.mfu / b.tokens_per_s) };
}

const rows: Record<string, number>[] = [];
let base = 0;
console.log(`data-parallel training: ${model}, ${backend}, batch ${batch} per rank, ${steps} steps (timed from step ${warmup})`);
console.log('world | tokens/s | tokens/s per rank | MFU per GPU | scaling efficiency');
let last: Logged[] = [];
for (const w of worlds) {
  last = trainRun(w, batch);
  const t = throughput(last);
  if (w === worlds[0]) base = t.tokensPerS / w;
  const row = { world: w, tokens_per_s: t.tokensPerS, per_rank: t.tokensPerS / w, efficiency: t.tokensPerS / w / base, ...(t.mfu !== undefined ? { mfu: t.mfu } : {}) };
  rows.push(row);
  console.log(`${w} | ${Math.round(row.tokens_per_s)} | ${Math.round(row.per_rank)} | ` +
    `${t.mfu !== undefined ? `${(t.mfu * 100).toFixed(1)}%` : '-'} | ${(row.efficiency * 100).toFixed(1)}%`);
}
const wMax = worlds[worlds.length - 1]!;
let maxRel = 0;
if (wMax > 1 && !process.argv.includes('--skip-numerics')) {
  const single = trainRun(1, batch * wMax);
  for (let i = 0; i < single.length; i++) maxRel = Math.max(maxRel, Math.abs(last[i]!.loss - single[i]!.loss) / single[i]!.loss);
  console.log(`losses: world ${wMax} × batch ${batch} vs one process × batch ${batch * wMax}, ${single.length} logged steps: ` +
    `largest relative difference ${maxRel.toExponential(2)} (final ${last[last.length - 1]!.loss.toFixed(4)} vs ${single[single.length - 1]!.loss.toFixed(4)})`);
}
const json = arg('--json');
if (json) fs.writeFileSync(json, JSON.stringify({ date: new Date().toISOString(), model, backend, batch, steps, warmup, rows, loss_max_rel_diff: maxRel }, null, 1));
fs.rmSync(tmp, { recursive: true, force: true });
