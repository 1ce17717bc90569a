/**
 * Text generation with a KV cache: one prefill over the prompts, then one incremental decode step per
 * new token (the model sees only the new token; keys and values of earlier tokens come from the cache).
 * Works for the dense model and for a model in MoE mode (the FFN override is used by both steps).
 *
 * Batched prompts: prompts of different lengths are right-padded to the longest for one prefill; each
 * row's cache length is then reset to its own prompt length, so its padding is never attended to and
 * is overwritten by its first generated token (results per row do not depend on the padding). Each row
 * samples with its own generator, seeded `seed + row`. Rows that have finished keep being fed (their
 * outputs are dropped) until every row has finished.
 *
 * Each decode step is a `DecodeStep`: the device picks each row's sampling candidates (greedy: its best
 * token; top-k: its k best), and on cuda the step is replayed from a CUDA graph.
 *
 * Generation ends per row at `maxTokens`, at the end-of-text id (`stopId`, not emitted), at a stop
 * string (the text is cut before it), or when the row reaches the context length (no sliding window:
 * learned position embeddings end there).
 */
import type { GPT } from '../nn/gpt.js';
import * as T from '../tensor/index.js';
import { candidateCount, candidatesOf, DecodeStep } from './decode-step.js';
import { KVCache } from './kvcache.js';
import { sampleToken, seededUniform, type SampleOptions } from './sample.js';

export interface GenerateOptions extends SampleOptions {
  /** Seed of the sampling generators (row b uses seed + b). */
  seed: number;
  /** New tokens per row at most. */
  maxTokens: number;
  /** End-of-text id: a row stops when it samples it (the id is not emitted). */
  stopId?: number;
  /** A row stops when its generated text contains one of these; needs `decode`. */
  stop?: string[];
  /** Turns ids into text; required for stop strings and `onText`. */
  decode?: (ids: number[]) => string;
}

export type FinishReason = 'length' | 'eot' | 'stop' | 'context';

export interface GenerateHooks {
  /** Each sampled token of each row, as it comes (before stop-string handling). */
  onToken?: (row: number, id: number) => void;
  /** Text of each row as it becomes final: text that may still turn into a stop string is held back. */
  onText?: (row: number, text: string) => void;
}

export interface GenerateResult {
  /** New token ids per row (a stop string's tokens included; the end-of-text id excluded). */
  tokens: number[][];
  /** Generated text per row, cut before a stop string (empty strings without `decode`). */
  texts: string[];
  finish: FinishReason[];
  /** Seconds spent in the prefill and in the decode steps, and the number of decode steps. */
  prefillSeconds: number;
  decodeSeconds: number;
  decodeSteps: number;
  /** Whether the decode steps were replayed from a captured graph (DecodeStep), and why not if that failed. */
  graphed: boolean;
  graphError: string | null;
}

/**
 * Checks prompts against the model: non-empty, shorter than the context (room for one new token), ids
 * inside the model's vocabulary. Throws an Error naming the prompt and the problem.
 */
export function checkPrompts(model: GPT, prompts: number[][]): void {
  const { seq_len: ctx, vocab_size: V } = model.config;
  if (prompts.length === 0) throw new Error('generate: no prompts given');
  prompts.forEach((p, b) => {
    const which = prompts.length > 1 ? `prompt ${b}` : 'the prompt';
    if (p.length === 0) throw new Error(`generate: ${which} is empty (give some text to continue)`);
    if (p.length >= ctx) {
      throw new Error(`generate: ${which} has ${p.length} tokens but the context length is ${ctx}: at most ${ctx - 1} ` +
        'prompt tokens fit (one position is needed to generate)');
    }
    const bad = p.findIndex((id) => !Number.isInteger(id) || id < 0 || id >= V);
    if (bad >= 0) throw new Error(`generate: ${which}: token ${p[bad]} at position ${bad} is outside the model's vocabulary (0..${V - 1})`);
  });
}

/** Throws unless temperature >= 0 (finite), top-k is an integer >= 0 and top-p is in (0, 1]. */
export function checkSampleOptions(o: SampleOptions): void {
  if (!(Number.isFinite(o.temperature) && o.temperature >= 0)) {
    throw new Error(`generate: temperature must be a finite number >= 0 (0: greedy), got ${o.temperature}`);
  }
  if (!(Number.isInteger(o.topK) && o.topK >= 0)) throw new Error(`generate: top-k must be an integer >= 0 (0: all tokens), got ${o.topK}`);
  if (!(o.topP > 0 && o.topP <= 1)) throw new Error(`generate: top-p must be in (0, 1], got ${o.topP}`);
}

/**
 * Generates continuations of `prompts` (token ids, one array per row) with a KV cache.
 * Throws on an empty prompt, a prompt of context length or more, an id outside the vocabulary, stop
 * strings without `decode`, a bad maxTokens or bad sampling options (`checkSampleOptions`).
 */
export function generateBatch(model: GPT, prompts: number[][], o: GenerateOptions, hooks: GenerateHooks = {}): GenerateResult {
  checkPrompts(model, prompts);
  if (!Number.isInteger(o.maxTokens) || o.maxTokens < 0) throw new Error(`generate: maxTokens must be a non-negative integer, got ${o.maxTokens}`);
  checkSampleOptions(o);
  const stops = (o.stop ?? []).filter((s) => s.length > 0);
  if ((stops.length > 0 || hooks.onText) && !o.decode) throw new Error('generate: stop strings and onText need a decode function');
  const B = prompts.length, L = Math.max(...prompts.map((p) => p.length));
  const maxLen = Math.min(model.config.seq_len, L + Math.max(o.maxTokens, 1));
  const cache = new KVCache(model.config, model.backend, B, maxLen);
  const uniforms = prompts.map((_, b) => seededUniform(o.seed + b));
  const tokens = prompts.map(() => [] as number[]), texts = prompts.map(() => '');
  const emitted = new Int32Array(B);
  const finish: (FinishReason | null)[] = prompts.map(() => null);
  /** Cache position at which a finished row is re-fed (so its length never grows). */
  const frozen = new Int32Array(B);
  let prefillSeconds = 0, decodeSeconds = 0, decodeSteps = 0;

  const finishRow = (b: number, why: FinishReason, text: string) => {
    finish[b] = why;
    frozen[b] = Math.min(cache.lengths[b]!, maxLen - 1);
    texts[b] = text;
    if (text.length > emitted[b]!) hooks.onText?.(b, text.slice(emitted[b]!));
  };
  /** Adds a sampled token to row b: stop checks, streaming. */
  const accept = (b: number, id: number) => {
    if (id === o.stopId) return finishRow(b, 'eot', o.decode ? o.decode(tokens[b]!) : '');
    tokens[b]!.push(id);
    hooks.onToken?.(b, id);
    const text = o.decode ? o.decode(tokens[b]!) : '';
    const cut = firstStop(text, stops);
    if (cut >= 0) return finishRow(b, 'stop', text.slice(0, cut));
    if (tokens[b]!.length >= o.maxTokens) return finishRow(b, 'length', text);
    if (prompts[b]!.length + tokens[b]!.length >= model.config.seq_len) return finishRow(b, 'context', text);
    const safe = text.length - heldBack(text, stops);
    if (safe > emitted[b]!) {
      hooks.onText?.(b, text.slice(emitted[b]!, safe));
      emitted[b] = safe;
    }
  };

  // Each row's candidates: the device's top-k (greedy: 1) of its logits, or the full row.
  const width = candidateCount(o, model.config.vocab_size);
  let step: DecodeStep | null = null;
  let graphed = false;
  try {
    step = new DecodeStep(model, cache, width);
    // Prefill: right-padded prompts (B, L); each row's next-token logits come from its last real position.
    let t0 = performance.now();
    let cand = T.tidy(() => T.noGrad(() => {
      const ids = new Int32Array(B * L); // (B, L), padding id 0
      prompts.forEach((p, b) => ids.set(p, b * L));
      const h = model.hidden(T.tensor(ids, [B, L], { dtype: 'i32', backend: model.backend }), { cache }); // (B, L, d_model)
      prompts.forEach((p, b) => cache.setLength(b, p.length));
      const last = T.tensor(Int32Array.from(prompts, (p, b) => b * L + p.length - 1), [B], { dtype: 'i32', backend: model.backend });
      return candidatesOf(model.logits(T.gatherRows(T.reshape(h, [B * L, model.config.d_model]), last)), width); // (B, V) -> (B, width)
    }));
    prefillSeconds = (performance.now() - t0) / 1000;
    if (o.maxTokens === 0) prompts.forEach((_, b) => finishRow(b, 'length', ''));
    const next = new Int32Array(B);
    t0 = performance.now();
    for (;;) {
      for (let b = 0; b < B; b++) {
        if (finish[b]) continue;
        const j = sampleToken(cand.values.subarray(b * width, (b + 1) * width), o, uniforms[b]!);
        next[b] = cand.ids ? cand.ids[b * width + j]! : j;
        accept(b, next[b]!);
      }
      if (finish.every((f) => f !== null)) break;
      // Decode step: one new token per row; finished rows re-feed at a fixed position (outputs dropped).
      for (let b = 0; b < B; b++) if (finish[b]) cache.setLength(b, frozen[b]!);
      cand = step.run(next);
      decodeSteps++;
    }
    decodeSeconds = (performance.now() - t0) / 1000;
    graphed = step.graphed;
  } finally {
    step?.dispose();
    cache.dispose();
  }
  return { tokens, texts, finish: finish as FinishReason[], prefillSeconds, decodeSeconds, decodeSteps,
    graphed, graphError: step.graphError };
}

/**
 * One prompt (token ids): up to `maxTokens` new ids, `onToken` called for each as it comes. Stops at
 * `stopId` and at the context length. Throws on an empty prompt (see `generateBatch`).
 */
export function generate(model: GPT, prompt: number[], maxTokens: number, o: SampleOptions & { seed: number; stopId?: number },
  onToken?: (id: number) => void): number[] {
  return generateBatch(model, [prompt], { ...o, maxTokens }, onToken ? { onToken: (_, id) => onToken(id) } : {}).tokens[0]!;
}

/** Index of the first occurrence of any stop string in `text`, or −1. */
function firstStop(text: string, stops: string[]): number {
  let at = -1;
  for (const s of stops) {
    const i = text.indexOf(s);
    if (i >= 0 && (at < 0 || i < at)) at = i;
  }
  return at;
}

/** Length of the longest suffix of `text` that is a proper prefix of a stop string (held back while streaming). */
function heldBack(text: string, stops: string[]): number {
  let n = 0;
  for (const s of stops) {
    for (let k = Math.min(s.length - 1, text.length); k > n; k--) {
      if (text.endsWith(s.slice(0, k))) {
        n = k;
        break;
      }
    }
  }
  return n;
}
