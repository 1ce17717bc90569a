/**
 * GPT model configuration and named size presets. Every field can be overridden; validation is
 * strict (unknown keys are errors) via zod.
 */
import { z } from 'zod';

export const GPTConfigSchema = z.strictObject({
  vocab_size: z.number().int().min(2),
  /** Context length (maximum sequence length, learned position embeddings). */
  seq_len: z.number().int().min(1),
  n_layer: z.number().int().min(1),
  n_head: z.number().int().min(1),
  d_model: z.number().int().min(1),
  d_ff: z.number().int().min(1),
  /** FFN activation: ReLU (default; SSD needs exact zeros) or GELU. */
  activation: z.enum(['relu', 'gelu']),
  /** Biases in the FFN (b_in, b_out). */
  ffn_bias: z.boolean(),
  dropout: z.number().min(0).max(0.99),
}).refine((c) => c.d_model % c.n_head === 0, { message: 'd_model must be divisible by n_head' });

export type GPTConfig = z.infer<typeof GPTConfigSchema>;

/** Size presets; vocab_size and seq_len come from the data unless set. */
export const PRESETS = {
  /** The CPU default: trains on the Brown corpus in minutes on 2 cores. */
  tiny: { n_layer: 4, n_head: 4, d_model: 128, d_ff: 512, seq_len: 128 },
  /** FFN-dominated enough for SSD experiments on CPU. */
  mini: { n_layer: 6, n_head: 6, d_model: 384, d_ff: 1536, seq_len: 256 },
  /** GPT-2 small shape (124M with the GPT-2 vocabulary). */
  'gpt2-small': { n_layer: 12, n_head: 12, d_model: 768, d_ff: 3072, seq_len: 1024 },
} as const;

export type PresetName = keyof typeof PRESETS;

/** Builds and validates a config from a preset plus overrides. Throws a readable message on bad values. */
export function makeConfig(preset: PresetName, overrides: Partial<GPTConfig> & { vocab_size: number }): GPTConfig {
  const base = PRESETS[preset];
  if (!base) throw new Error(`unknown model preset '${preset}': choose one of ${Object.keys(PRESETS).join(', ')}`);
  const merged = { activation: 'relu', ffn_bias: true, dropout: 0, ...base, ...overrides };
  const r = GPTConfigSchema.safeParse(merged);
  if (!r.success) {
    throw new Error(`invalid model config: ${r.error.issues.map((i) => `${i.path.join('.') || '(config)'}: ${i.message}`).join('; ')}`);
  }
  return r.data;
}
