/**
 * Checkpoints: a directory `step_000100/` holding `model.safetensors` (parameters), `optimizer.safetensors`
 * (AdamW moments, `m.<name>` and `v.<name>`) and `state.json` (configs, tokenizer, step, optimizer step,
 * data position, controller state, SHA-256 of both tensor files). Writes are atomic: everything goes to
 * a temporary directory that is renamed into place only once complete, so a crash or a full disk never
 * damages the last good checkpoint. The newest `keep` checkpoints are kept.
 */
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { Tensor } from '../tensor/index.js';
import { decodeSafetensors, encodeSafetensors, entryF32, f32Entry, type HostTensor } from '../io/safetensors.js';

export const CHECKPOINT_FORMAT = 'ssd-checkpoint';
export const CHECKPOINT_VERSION = 1;

/** The JSON part of a checkpoint; `extra` holds state owned by other layers (SSD controller, sampler). */
export interface CheckpointState {
  format: typeof CHECKPOINT_FORMAT;
  version: number;
  step: number;
  model_config: Record<string, unknown>;
  tokenizer: unknown;
  train_config: Record<string, unknown>;
  optimizer_step: number;
  extra: Record<string, unknown>;
  files: Record<string, string>;
  saved_at: string;
}

export interface LoadedCheckpoint {
  dir: string;
  state: CheckpointState;
  params: Map<string, HostTensor>;
  moments: Map<string, HostTensor>;
}

/** File-system calls used for writing (replaceable in tests to simulate a full disk). */
export interface WriteIO {
  writeFileSync(file: string, data: Uint8Array | string): void;
}

const realIO: WriteIO = {
  writeFileSync(file, data) {
    const fd = fs.openSync(file, 'w');
    try {
      fs.writeFileSync(fd, data);
      fs.fsyncSync(fd);
    } finally {
      fs.closeSync(fd);
    }
  },
};

function sha256(data: Uint8Array): string {
  return createHash('sha256').update(data).digest('hex');
}

function stepDirName(step: number): string {
  return `step_${String(step).padStart(8, '0')}`;
}

function toHost(tensors: Iterable<[string, Tensor]>): Map<string, HostTensor> {
  const m = new Map<string, HostTensor>();
  for (const [name, t] of tensors) m.set(name, f32Entry(t.toArray() as Float32Array, t.shape));
  return m;
}

/**
 * Writes a checkpoint for `state.step` under `runDir` atomically and prunes all but the newest `keep`.
 * Returns the checkpoint directory. On failure (e.g. ENOSPC) the partial directory is removed, earlier
 * checkpoints are untouched, and an Error says what happened.
 */
export function saveCheckpoint(runDir: string, params: Map<string, Tensor>, moments: Map<string, Tensor>,
  state: Omit<CheckpointState, 'format' | 'version' | 'files' | 'saved_at'>, keep = 3, io: WriteIO = realIO): string {
  fs.mkdirSync(runDir, { recursive: true });
  const final = path.join(runDir, stepDirName(state.step));
  // Temporary directories left by an interrupted save are never complete checkpoints: remove them.
  for (const d of fs.readdirSync(runDir)) if (d.startsWith('.tmp-step_')) fs.rmSync(path.join(runDir, d), { recursive: true, force: true });
  const tmp = path.join(runDir, `.tmp-${stepDirName(state.step)}-${process.pid}`);
  fs.mkdirSync(tmp);
  try {
    const model = encodeSafetensors(toHost(params), { format: 'pt' });
    const opt = encodeSafetensors(toHost(moments));
    io.writeFileSync(path.join(tmp, 'model.safetensors'), model);
    io.writeFileSync(path.join(tmp, 'optimizer.safetensors'), opt);
    const full: CheckpointState = {
      format: CHECKPOINT_FORMAT, version: CHECKPOINT_VERSION, ...state,
      files: { 'model.safetensors': sha256(model), 'optimizer.safetensors': sha256(opt) },
      saved_at: new Date().toISOString(),
    };
    io.writeFileSync(path.join(tmp, 'state.json'), JSON.stringify(full, null, 1));
    // Replacing a checkpoint of the same step: move the old one aside first, so one complete copy
    // exists at every moment.
    const old = `${tmp}-replaced`;
    if (fs.existsSync(final)) fs.renameSync(final, old);
    fs.renameSync(tmp, final);
    fs.rmSync(old, { recursive: true, force: true });
  } catch (e) {
    fs.rmSync(tmp, { recursive: true, force: true });
    const err = e as NodeJS.ErrnoException;
    const hint = err.code === 'ENOSPC' ? ' (the disk is full: free space or point --out elsewhere)' : '';
    throw new Error(`could not save checkpoint step ${state.step} in ${runDir}: ${err.message}${hint}; ` +
      `earlier checkpoints are intact`);
  }
  for (const old of listCheckpoints(runDir).slice(0, -keep)) fs.rmSync(old, { recursive: true, force: true });
  return final;
}

/** Complete checkpoint directories under runDir, oldest first. */
export function listCheckpoints(runDir: string): string[] {
  if (!fs.existsSync(runDir)) return [];
  return fs.readdirSync(runDir).filter((d) => /^step_\d{8}$/.test(d)).sort().map((d) => path.join(runDir, d))
    .filter((d) => fs.existsSync(path.join(d, 'state.json')));
}

/**
 * Loads a checkpoint: `p` is a checkpoint directory, or a run directory (its newest checkpoint).
 * Verifies the format and the SHA-256 of both tensor files. Throws a clear Error for a missing path,
 * a run with no checkpoint, or a truncated / corrupt file.
 */
export function loadCheckpoint(p: string): LoadedCheckpoint {
  const { dir, state } = readCheckpointState(p);
  const read = (f: string) => {
    const file = path.join(dir, f);
    if (!fs.existsSync(file)) throw new Error(`checkpoint ${dir}: ${f} is missing`);
    const buf = fs.readFileSync(file);
    if (sha256(buf) !== state.files[f]) {
      throw new Error(`checkpoint ${dir}: ${f} is corrupt or truncated (checksum mismatch); use an earlier checkpoint`);
    }
    return decodeSafetensors(buf, path.join(dir, f)).tensors;
  };
  return { dir, state, params: read('model.safetensors'), moments: read('optimizer.safetensors') };
}

/**
 * Reads only the JSON state of a checkpoint (`p`: a checkpoint directory, or a run directory for its
 * newest one) and the run directory holding it. Throws like `loadCheckpoint`.
 */
export function readCheckpointState(p: string): { dir: string; runDir: string; state: CheckpointState } {
  if (!fs.existsSync(p)) throw new Error(`checkpoint not found: ${p}`);
  let dir = p;
  if (!fs.existsSync(path.join(p, 'state.json'))) {
    const all = listCheckpoints(p);
    if (!all.length) throw new Error(`no checkpoint in ${p} (expected step_NNNNNNNN/ directories with state.json)`);
    dir = all[all.length - 1]!;
  }
  let state: CheckpointState;
  try {
    state = JSON.parse(fs.readFileSync(path.join(dir, 'state.json'), 'utf8'));
  } catch (e) {
    throw new Error(`checkpoint ${dir}: state.json is unreadable or corrupt (${(e as Error).message})`);
  }
  if (state.format !== CHECKPOINT_FORMAT || state.version !== CHECKPOINT_VERSION) {
    throw new Error(`checkpoint ${dir}: not an ssd checkpoint of version ${CHECKPOINT_VERSION} (format ${state.format}, version ${state.version})`);
  }
  return { dir, runDir: path.dirname(path.resolve(dir)), state };
}

/**
 * Copies host tensors into live tensors of the same names and shapes. Throws naming the first missing,
 * unexpected or mis-shaped tensor ("checkpoint from a different model").
 */
export function restoreTensors(into: Map<string, Tensor>, from: Map<string, HostTensor>, what: string): void {
  for (const name of from.keys()) {
    if (!into.has(name)) throw new Error(`${what}: unexpected tensor '${name}': the checkpoint is from a different model`);
  }
  for (const [name, t] of into) {
    const h = from.get(name);
    if (!h) throw new Error(`${what}: tensor '${name}' is missing: the checkpoint is from a different model`);
    if (h.shape.join(',') !== t.shape.join(',')) {
      throw new Error(`${what}: '${name}' has shape [${h.shape}] in the checkpoint but [${t.shape}] in the model: ` +
        `the checkpoint is from a different model`);
    }
    t.backend.upload(t.buf('restore'), entryF32(h, name));
  }
}
