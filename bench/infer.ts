/**
 * `npm run bench:infer`: the inference benchmark (src/infer/bench.ts) on a random-weight
 * gpt2-small-shaped model with a vocabulary of 8192, or a checkpoint.
 * Usage: node dist/bench/infer.js [--checkpoint DIR] [--ratios 0.25,0.5] [--rounds N] [--json out.json]
 */
import * as fs from 'node:fs';
import { selectBackend } from '../src/backend/registry.js';
import { benchInference } from '../src/infer/bench.js';
import * as T from '../src/tensor/index.js';

const arg = (name: string) => (process.argv.includes(name) ? process.argv[process.argv.indexOf(name) + 1] : undefined);
const backend = selectBackend(arg('--backend'));
T.useBackend(backend);
const checkpoint = arg('--checkpoint'), ratios = arg('--ratios'), rounds = arg('--rounds'), json = arg('--json');
const report = benchInference(backend, {
  ...(checkpoint ? { checkpoint } : {}),
  ...(ratios ? { ratios: ratios.split(',').map(Number) } : {}),
  ...(rounds ? { rounds: Number(rounds) } : {}),
  log: (l) => console.log(l),
});
if (json) fs.writeFileSync(json, JSON.stringify(report, null, 2) + '\n');
