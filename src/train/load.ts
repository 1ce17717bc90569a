/** Loading a trained model (and its tokenizer) from a checkpoint for evaluation or generation. */
import type { Backend } from '../backend/contract.js';
import { tokenizerFromJSON, type Tokenizer } from '../data/tokenizer/index.js';
import { GPTConfigSchema } from '../nn/config.js';
import { GPT } from '../nn/gpt.js';
import { loadCheckpoint, restoreTensors, type CheckpointState } from './checkpoint.js';

const ROUTER = /^h\.\d+\.mlp\.router$/;

/**
 * Builds the checkpoint's model on `backend` with its weights and returns it with its tokenizer.
 * `p` is a checkpoint directory or a run directory (newest checkpoint). Throws on a missing or corrupt
 * checkpoint, or one whose config is invalid.
 */
export function loadModel(p: string, backend: Backend): { model: GPT; tokenizer: Tokenizer; state: CheckpointState; dir: string } {
  const ck = loadCheckpoint(p);
  const parsed = GPTConfigSchema.safeParse(ck.state.model_config);
  if (!parsed.success) throw new Error(`checkpoint ${ck.dir}: invalid model config (${parsed.error.issues[0]?.message})`);
  const model = new GPT(parsed.data, backend);
  // A checkpoint from inside a sparse phase also holds the routers; the dense model does not use them
  // (MoE inference builds its routers from the expert blocks).
  const dense = new Map([...ck.params].filter(([name]) => !ROUTER.test(name)));
  try {
    restoreTensors(model.params, dense, `checkpoint ${ck.dir}`);
  } catch (e) {
    model.dispose();
    throw e;
  }
  for (const t of model.params.values()) t.requiresGrad = false;
  return { model, tokenizer: tokenizerFromJSON(ck.state.tokenizer), state: ck.state, dir: ck.dir };
}
