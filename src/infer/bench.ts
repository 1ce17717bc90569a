/**
 * The inference benchmark (`ssd bench`, `npm run bench:infer`): dense vs MoE at chosen active ratios,
 * measured side by side in one process (modes interleaved round by round, best round kept):
 *  - prefill tokens/s (one prompt of `prefillTokens`, fresh cache; logits of the last token only);
 *  - decode tokens/s at each batch size (greedy, after a short prompt; steady state, see timeDecode);
 *  - validation perplexity of each mode when a checkpoint is given;
 * beside the ideal speed-ups: decode from weight bytes read per token (attention, embeddings, LM head,
 * routers and the KV cache included: MoE does not save those), prefill from FLOPs per token.
 */
import * as os from 'node:os';
import type { Backend } from '../backend/contract.js';
import { loadDataset, type TokenSequence } from '../data/index.js';
import { makeConfig, type GPTConfig } from '../nn/config.js';
import { GPT } from '../nn/gpt.js';
import * as T from '../tensor/index.js';
import { evaluate } from '../train/trainer.js';
import { generateBatch } from './generate.js';
import { KVCache } from './kvcache.js';
import { disposeExperts, loadForInference, prepareExperts, resolveTopK, storedPartition, useDense, useMoE, type MoEExperts } from './mode.js';
import { datasetDirOfCheckpoint } from '../train/dataset.js';

export interface BenchOptions {
  /** Checkpoint or run directory; without one, a random-weight gpt2-small-shaped model with `vocab` tokens. */
  checkpoint?: string;
  /** Vocabulary of the random model (default 8192). */
  vocab?: number;
  /** MoE active ratios k/E to measure (default [0.25, 0.5]). */
  ratios?: number[];
  /** Experts per layer (default: the checkpoint's partition, else d_ff / DEFAULT_EXPERT_SIZE). */
  nExpert?: number;
  /** Prompt length of the prefill measurement (default 512, capped at the context length). */
  prefillTokens?: number;
  /** Decode batch sizes (default [1, 8]). */
  batches?: number[];
  /** Prompt length before decoding (default 32) and decode steps measured (default 64). */
  decodePrompt?: number;
  decodeTokens?: number;
  /** Interleaved rounds; the best of each mode is kept (default 3). */
  rounds?: number;
  /** Validation data for perplexity (default: the checkpoint's dataset); batches of it (default 20). */
  data?: string;
  valBatches?: number;
  /** MoEfy at load a checkpoint without a stored partition (default true). */
  moefy?: boolean;
  log?: (line: string) => void;
}

export interface ModeResult {
  mode: string;
  /** null for dense. */
  topK: number | null;
  activeRatio: number;
  prefillTokensPerS: number;
  decodeTokensPerS: Record<string, number>;
  valPerplexity: number | null;
  /** Bytes of weights (+ KV cache) read per decoded token at batch 1, and prefill FLOPs per token. */
  decodeBytesPerToken: number;
  prefillFlopsPerToken: number;
}

export interface BenchReport {
  machine: { cpu: string; cores: number; backend: string; date: string };
  model: GPTConfig & { source: string };
  nExpert: number;
  expertSource: MoEExperts['source'];
  settings: { prefillTokens: number; decodePrompt: number; decodeTokens: number; batches: number[]; rounds: number };
  modes: ModeResult[];
  /** Per MoE mode: measured speed-ups over dense beside the ideal ones. */
  speedups: { mode: string; decode: Record<string, number>; decodeIdealB1: number; prefill: number; prefillIdeal: number;
    perplexityRatio: number | null }[];
}

/** Bytes read per decoded token at batch 1 (f32): every weight once (the FFN's active share in MoE), wpe one row, KV cache at `ctx`. */
export function decodeBytesPerToken(c: GPTConfig, activeRatio: number, nExpert: number, ctx: number, moe: boolean): number {
  const d = c.d_model, ffnBias = c.ffn_bias ? c.d_ff + d : 0;
  const attn = 3 * d * d + 3 * d + d * d + d + 4 * d; // w_qkv, b_qkv, w_proj, b_proj, ln_1, ln_2
  const ffn = 2 * d * c.d_ff + ffnBias;
  const router = moe ? d * nExpert : 0;
  const perLayer = attn + (moe ? activeRatio : 1) * ffn + router + 2 * ctx * d; // + K and V of ctx tokens
  return 4 * (c.n_layer * perLayer + c.vocab_size * d + d + 2 * d); // + LM head (tied wte), wpe row, ln_f
}

/** Forward FLOPs per prompt token of a `len`-token prefill (LM head on the last token only). */
export function prefillFlopsPerToken(c: GPTConfig, activeRatio: number, nExpert: number, len: number, moe: boolean): number {
  const d = c.d_model;
  const perLayer = 2 * 4 * d * d + (moe ? activeRatio : 1) * 4 * d * c.d_ff + (moe ? 2 * d * nExpert : 0)
    + 4 * d * (len + 1) / 2; // QKᵀ and PV over the mean causal context
  return c.n_layer * perLayer + (2 * d * c.vocab_size) / len;
}

function randomIds(n: number, V: number, seed: number): number[] {
  let a = seed >>> 0;
  return Array.from({ length: n }, () => {
    a = (Math.imul(a, 1664525) + 1013904223) >>> 0;
    return a % V;
  });
}

/** Seconds of one prefill of `ids` (fresh cache, last-token logits). */
function timePrefill(model: GPT, ids: number[]): number {
  const cache = new KVCache(model.config, model.backend, 1, ids.length);
  try {
    const t0 = performance.now();
    T.tidy(() => T.noGrad(() => {
      const h = model.hidden(T.tensor(ids, [1, ids.length], { dtype: 'i32', backend: model.backend }), { cache }); // (1, L, d_model)
      model.logits(T.slice(h, 1, ids.length - 1, ids.length)).toArray();
    }));
    return (performance.now() - t0) / 1000;
  } finally {
    cache.dispose();
  }
}

/**
 * Decoded tokens per second at batch B: greedy, `steps` decode steps after a `promptLen`-token prompt,
 * timed in the steady state: from the third new token on (the first decode step runs eagerly and the
 * second is captured where the backend replays decode steps from a graph; see infer/decode-step.ts).
 * A failed capture is reported through `log` (the rate is then the eager step's).
 */
export function timeDecode(model: GPT, B: number, promptLen: number, steps: number, log?: (line: string) => void): number {
  const prompts = Array.from({ length: B }, (_, b) => randomIds(promptLen, model.config.vocab_size, 7 + b));
  const at: number[] = []; // arrival time of each of row 0's new tokens
  const r = generateBatch(model, prompts, { temperature: 0, topK: 0, topP: 1, seed: 0, maxTokens: steps + 3 },
    { onToken: (row) => { if (row === 0) at.push(performance.now()); } });
  if (r.graphError) log?.(`decode b${B}: ran op by op, the CUDA graph capture failed: ${r.graphError}`);
  if (at.length < steps + 3) throw new Error(`decode benchmark: ${at.length} tokens for ${steps + 3} asked (the context is too short)`);
  return (B * steps) / ((at[steps + 2]! - at[2]!) / 1000);
}

/**
 * Runs the benchmark and returns the report (also logged as a table through `log`). Throws on a bad
 * checkpoint, ratios outside (0, 1], or a context too short for the chosen lengths.
 */
export function benchInference(backend: Backend, o: BenchOptions = {}): BenchReport {
  const log = o.log ?? (() => {});
  const ratios = o.ratios ?? [0.25, 0.5];
  const batches = o.batches ?? [1, 8];
  const rounds = o.rounds ?? 3;
  let model: GPT, stored: { n_expert: number } | null = null, source: string, valTokens: TokenSequence | null = null;
  if (o.checkpoint) {
    const loaded = loadForInference(o.checkpoint, backend, 'dense');
    model = loaded.model;
    stored = storedPartition(loaded.state);
    source = loaded.dir;
    valTokens = loadDataset(o.data ?? datasetDirOfCheckpoint(loaded.state.train_config)).val;
  } else {
    model = new GPT(makeConfig('gpt2-small', { vocab_size: o.vocab ?? 8192 }), backend, 1);
    for (const t of model.params.values()) t.requiresGrad = false;
    source = `random weights, gpt2-small shape, vocab ${model.config.vocab_size}`;
  }
  const c = model.config;
  const prefillTokens = Math.min(o.prefillTokens ?? 512, c.seq_len);
  const decodePrompt = o.decodePrompt ?? 32, decodeTokens = o.decodeTokens ?? 64;
  if (decodePrompt + decodeTokens + 3 > c.seq_len) {
    throw new Error(`bench: decode prompt ${decodePrompt} + ${decodeTokens} tokens + 3 (before the steady state) exceed the ` +
      `context length ${c.seq_len}`);
  }
  log(`model: ${source}; ${c.n_layer} layers, d_model ${c.d_model}, d_ff ${c.d_ff}, context ${c.seq_len}`);
  const experts = prepareExperts(model, stored, { ...(o.nExpert !== undefined ? { nExpert: o.nExpert } : {}),
    ...(o.moefy !== undefined ? { moefy: o.moefy } : {}), blocks: !o.checkpoint });
  log(`experts: ${experts.nExpert} per layer (${experts.source}, ${experts.seconds.toFixed(1)} s)`);
  try {
    const modes = [{ mode: 'dense', topK: null as number | null, ratio: 1 },
      ...ratios.map((r) => {
        const k = resolveTopK(experts.nExpert, { activeRatio: r });
        return { mode: `moe ${k}/${experts.nExpert}`, topK: k as number | null, ratio: k / experts.nExpert };
      })];
    const use = (topK: number | null) => (topK === null ? useDense(model) : useMoE(model, experts, topK));
    const prompt = randomIds(prefillTokens, c.vocab_size, 1);
    const best = modes.map(() => ({ prefill: Infinity, decode: new Map<number, number>() }));
    for (let round = 0; round < rounds; round++) {
      modes.forEach((m, i) => {
        use(m.topK);
        best[i]!.prefill = Math.min(best[i]!.prefill, timePrefill(model, prompt));
        for (const B of batches) {
          best[i]!.decode.set(B, Math.max(best[i]!.decode.get(B) ?? 0, timeDecode(model, B, decodePrompt, decodeTokens, log)));
        }
      });
      log(`round ${round + 1}/${rounds} done`);
    }
    const ctx = decodePrompt + decodeTokens / 2;
    const results: ModeResult[] = modes.map((m, i) => {
      use(m.topK);
      const ppl = valTokens ? Math.exp(evaluate(model, valTokens, 8, Math.min(c.seq_len, valTokens.length - 1), o.valBatches ?? 20)) : null;
      const moe = m.topK !== null;
      return {
        mode: m.mode, topK: m.topK, activeRatio: m.ratio, prefillTokensPerS: prefillTokens / best[i]!.prefill,
        decodeTokensPerS: Object.fromEntries([...best[i]!.decode].map(([B, v]) => [`b${B}`, v])), valPerplexity: ppl,
        decodeBytesPerToken: decodeBytesPerToken(c, m.ratio, experts.nExpert, ctx, moe),
        prefillFlopsPerToken: prefillFlopsPerToken(c, m.ratio, experts.nExpert, prefillTokens, moe),
      };
    });
    const dense = results[0]!;
    const speedups = results.slice(1).map((r) => ({
      mode: r.mode,
      decode: Object.fromEntries(Object.keys(r.decodeTokensPerS).map((k) => [k, r.decodeTokensPerS[k]! / dense.decodeTokensPerS[k]!])),
      decodeIdealB1: dense.decodeBytesPerToken / r.decodeBytesPerToken,
      prefill: r.prefillTokensPerS / dense.prefillTokensPerS,
      prefillIdeal: dense.prefillFlopsPerToken / r.prefillFlopsPerToken,
      perplexityRatio: r.valPerplexity !== null && dense.valPerplexity !== null ? r.valPerplexity / dense.valPerplexity : null,
    }));
    const report: BenchReport = {
      machine: { cpu: os.cpus()[0]?.model ?? '?', cores: os.cpus().length, backend: backend.name, date: new Date().toISOString() },
      model: { ...c, source }, nExpert: experts.nExpert, expertSource: experts.source,
      settings: { prefillTokens, decodePrompt, decodeTokens, batches, rounds }, modes: results, speedups,
    };
    for (const line of formatReport(report)) log(line);
    return report;
  } finally {
    useDense(model);
    disposeExperts(experts);
    model.dispose();
  }
}

/** The report as a plain-text table (one line per mode, then the speed-ups beside their ideals). */
export function formatReport(r: BenchReport): string[] {
  const pad = (s: string, n: number) => s.padStart(n);
  const bs = r.settings.batches;
  const head = ['mode', 'ratio', `prefill${r.settings.prefillTokens} tok/s`, ...bs.map((b) => `decode b${b} tok/s`), 'MB/token b1',
    'GFLOP/token', 'val ppl'];
  const rows = r.modes.map((m) => [m.mode, m.activeRatio.toFixed(3), m.prefillTokensPerS.toFixed(1),
    ...bs.map((b) => m.decodeTokensPerS[`b${b}`]!.toFixed(2)), (m.decodeBytesPerToken / 1e6).toFixed(1),
    (m.prefillFlopsPerToken / 1e9).toFixed(3), m.valPerplexity === null ? '-' : m.valPerplexity.toFixed(3)]);
  const w = head.map((h, j) => Math.max(h.length, ...rows.map((row) => row[j]!.length)));
  const lines = [head, ...rows].map((row) => row.map((x, j) => pad(x, w[j]!)).join('  '));
  lines.push('', 'speed-up over dense (measured / ideal):');
  for (const s of r.speedups) {
    lines.push(`  ${s.mode}: decode ${bs.map((b) => `b${b} ${s.decode[`b${b}`]!.toFixed(2)}×`).join(', ')} ` +
      `(ideal b1 ${s.decodeIdealB1.toFixed(2)}×, ${(100 * s.decode['b1']! / s.decodeIdealB1).toFixed(0)}% of ideal); ` +
      `prefill ${s.prefill.toFixed(2)}× (ideal ${s.prefillIdeal.toFixed(2)}×)` +
      (s.perplexityRatio !== null ? `; perplexity ×${s.perplexityRatio.toFixed(4)}` : ''));
  }
  return lines;
}
