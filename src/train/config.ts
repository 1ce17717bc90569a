/**
 * Training configuration: one strict schema (unknown keys are errors) with documented defaults.
 * A JSON config file and CLI flags both produce this object; flags override the file.
 */
import { z } from 'zod';
import { PRESETS } from '../nn/config.js';

/** The config fields (the CLI derives its flags from this shape). */
export const TrainConfigFields = z.strictObject({
  /** Corpus: 'brown' (embedded default), a text file/folder, .jsonl, .parquet, or a prepared dataset folder. */
  data: z.string().min(1).default('brown'),
  /** Input format for a raw corpus (auto: by extension). */
  format: z.enum(['auto', 'text', 'jsonl', 'parquet']).default('auto'),
  /** JSONL field / Parquet column holding the text. */
  text_field: z.string().default('text'),
  tokenizer: z.enum(['byte', 'bpe', 'gpt2']).default('byte'),
  /** Vocabulary size of a trained BPE tokenizer (ignored for byte / gpt2). */
  bpe_vocab: z.number().int().min(258).max(65536).default(1024),
  /** Where prepared datasets are cached. */
  cache_dir: z.string().default('.ssd-cache'),
  /** Run directory: checkpoints, metrics.jsonl, summary.json. */
  out: z.string().default('runs/default'),
  /** Model size preset; the fields below override it. */
  model: z.enum(Object.keys(PRESETS) as [keyof typeof PRESETS]).default('tiny'),
  n_layer: z.number().int().min(1).optional(),
  n_head: z.number().int().min(1).optional(),
  d_model: z.number().int().min(1).optional(),
  d_ff: z.number().int().min(1).optional(),
  seq_len: z.number().int().min(1).optional(),
  activation: z.enum(['relu', 'gelu']).default('relu'),
  ffn_bias: z.boolean().default(true),
  dropout: z.number().min(0).max(0.9).default(0),
  batch_size: z.number().int().min(1).default(32),
  grad_accum: z.number().int().min(1).default(1),
  /**
   * Data-parallel processes (one GPU each on cuda; ranks sum their gradients through NCCL, or through
   * host files elsewhere). batch_size is per rank: a step trains batch_size × grad_accum × world_size
   * windows, the same ones a single process with batch_size × world_size would.
   */
  world_size: z.number().int().min(1).max(1024).default(1),
  steps: z.number().int().min(1).default(2500),
  lr: z.number().positive().default(2e-3),
  /** Final learning rate as a fraction of lr (cosine decay). */
  min_lr_ratio: z.number().min(0).max(1).default(0.1),
  /** Linear warm-up steps (default: min(100, steps / 10)). */
  warmup_steps: z.number().int().min(0).optional(),
  weight_decay: z.number().min(0).default(0.1),
  beta1: z.number().min(0).max(1).default(0.9),
  beta2: z.number().min(0).max(1).default(0.95),
  eps: z.number().positive().default(1e-8),
  /** Global gradient-norm clip (0 disables). */
  grad_clip: z.number().min(0).default(1),
  eval_interval: z.number().int().min(1).default(250),
  eval_batches: z.number().int().min(1).default(20),
  ckpt_interval: z.number().int().min(1).default(500),
  keep_checkpoints: z.number().int().min(1).default(3),
  log_interval: z.number().int().min(1).default(10),
  seed: z.number().int().min(0).default(1337),
  // ---- SSD (method page §3; values marked "ours" in the method page are our defaults)
  /** dense: never sparse; ssd: switch dense <-> sparse; moe: MoEfy once when stable and stay sparse. */
  method: z.enum(['dense', 'ssd', 'moe']).default('ssd'),
  /** Steps between activation-pattern checks in dense phases (ours). */
  check_interval: z.number().int().min(1).default(50),
  /** Held-out tokens in the probe set (ours). */
  probe_tokens: z.number().int().min(1).default(2048),
  /** Pattern similarity at which it counts as stable (ours: 0.9). */
  stable_threshold: z.number().default(0.9),
  /** ...or a rise of the similarity since the last check below this (ours: 0.01). */
  stable_delta: z.number().default(0.01),
  /** No sparse phase while the mean activation ratio is at or above this (ours: 0.5). */
  max_active_ratio: z.number().default(0.5),
  /** Minimum length of a dense phase (default: 10% of steps, ours). */
  min_dense_steps: z.number().int().min(0).optional(),
  /** Length of a sparse phase (default: 10% of steps, ours). */
  sparse_steps: z.number().int().min(1).optional(),
  /** The last share of training that is dense (ours: 0.1). */
  final_dense_fraction: z.number().default(0.1),
  /** Experts per FFN layer (default: d_ff / 64, i.e. 64 neurons per expert; ours). */
  n_expert: z.number().int().min(1).optional(),
  /** Experts per token in sparse phases (default: n_expert × active_ratio). */
  moe_top_k: z.number().int().min(1).optional(),
  /** moe_top_k / n_expert when moe_top_k is not given. */
  active_ratio: z.number().gt(0).max(1).default(0.25),
  /** Train the routers through 1 + s − stopgrad(s) (reference MoE layer). */
  train_router: z.boolean().default(true),
  /**
   * Let the router's gradient also flow into the FFN input, i.e. into the layers below (ours: false;
   * the router then learns from its own scores only). Measured on `mini` (BENCHMARKS.md, issue 5):
   * with it, the final dense-mode loss was +3.0% vs dense; without it, −0.7%.
   */
  router_input_grad: z.boolean().default(false),
  /** Expert split at MoEfication: balanced k-means (default) or a random balanced split (ablation). */
  moefy_method: z.enum(['kmeans', 'random']).default('kmeans'),
  /** Pattern-stability metric: Jaccard of active-neuron sets (default) or adjusted Rand index of consecutive partitions. */
  similarity: z.enum(['jaccard', 'ari']).default('jaccard'),
  /** Balanced k-means iterations per start at MoEfication (reference: 100). */
  moefy_max_iter: z.number().int().min(1).default(100),
  backend: z.enum(['ref', 'cpu', 'cuda']).optional(),
  threads: z.number().int().min(1).optional(),
});

export const TrainConfigSchema = TrainConfigFields
  .refine((c) => c.warmup_steps === undefined || c.warmup_steps <= c.steps, { message: 'warmup_steps must not exceed steps', path: ['warmup_steps'] })
  .transform((c) => ({ ...c, warmup_steps: c.warmup_steps ?? Math.min(100, Math.floor(c.steps / 10)) }));

export type TrainConfig = z.output<typeof TrainConfigSchema>;

/**
 * Validates a raw config object (from a file and flags). Throws one Error listing every problem,
 * e.g. "unknown key 'lerning_rate'".
 */
export function parseTrainConfig(raw: unknown): TrainConfig {
  const r = TrainConfigSchema.safeParse(raw);
  if (r.success) return r.data;
  const msgs = r.error.issues.map((i) => {
    if (i.code === 'unrecognized_keys') return `unknown key${i.keys.length > 1 ? 's' : ''} ${i.keys.map((k) => `'${k}'`).join(', ')}`;
    return `${i.path.join('.') || '(config)'}: ${i.message}`;
  });
  throw new Error(`invalid training config: ${msgs.join('; ')}`);
}

/** Keys that may differ when a run is resumed (they do not change what is computed). */
export const RESUME_OVERRIDABLE = ['eval_interval', 'eval_batches', 'ckpt_interval', 'keep_checkpoints', 'log_interval',
  'backend', 'threads'] as const;

/**
 * The config of a resumed run: the checkpoint's stored training config, writing into its run
 * directory, with only RESUME_OVERRIDABLE keys taken from `explicit` (keys the user set), and
 * batch_size and world_size when their product (the global batch) stays the same: a data-parallel run
 * may resume on another number of GPUs, training on the same windows (up to the order of the gradient
 * sums). Throws naming every other key set to a different value, since that would not continue the run
 * exactly.
 */
export function resumeConfig(stored: Record<string, unknown>, explicit: Record<string, unknown>, runDir: string): TrainConfig {
  const base = parseTrainConfig(stored);
  const batch = Number(explicit['batch_size'] ?? base.batch_size), world = Number(explicit['world_size'] ?? base.world_size);
  const regroup = batch * world === base.batch_size * base.world_size ? { batch_size: batch, world_size: world } : {};
  const allowed = [...RESUME_OVERRIDABLE, ...Object.keys(regroup)];
  const changed = Object.entries(explicit).filter(([k, v]) => k !== 'out' && !allowed.includes(k) &&
    JSON.stringify(v) !== JSON.stringify((base as Record<string, unknown>)[k]));
  if (changed.length) {
    throw new Error(`cannot resume with a changed ${changed.map(([k, v]) => `${k} (checkpoint: ${JSON.stringify((base as Record<string, unknown>)[k])}, given: ${JSON.stringify(v)})`).join(', ')}: ` +
      `a resumed run continues exactly; start a new run with another --out instead` +
      (changed.some(([k]) => k === 'batch_size' || k === 'world_size') ?
        ` (batch_size and world_size may change together when batch_size × world_size stays ${base.batch_size * base.world_size})` : ''));
  }
  const over = Object.fromEntries(Object.entries(explicit).filter(([k]) => (RESUME_OVERRIDABLE as readonly string[]).includes(k)));
  return parseTrainConfig({ ...stored, ...over, ...regroup, out: runDir });
}
