/**
 * AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) over named
 * parameters, one fused kernel call per parameter. Moments are f32 tensors of each parameter's shape.
 */
import { full, noGrad } from '../tensor/index.js';
import type { Tensor } from '../tensor/index.js';

export interface AdamWConfig {
  lr: number;
  beta1: number;
  beta2: number;
  eps: number;
  weightDecay: number;
  /** Parameters for which this returns true get no weight decay (biases, norms, embeddings). */
  noDecay?: (p: Tensor) => boolean;
}

export class AdamW {
  /** Number of completed steps (the bias-correction step count). */
  step = 0;
  readonly m = new Map<Tensor, Tensor>();
  readonly v = new Map<Tensor, Tensor>();

  readonly params: Tensor[] = [];

  constructor(params: Tensor[], readonly config: AdamWConfig) {
    for (const p of params) this.addParam(p);
  }

  /** Starts optimizing `p` with zero moments (e.g. a router created at MoEfication). */
  addParam(p: Tensor): void {
    if (!p.requiresGrad) throw new Error(`AdamW: parameter ${p.name ?? p.toString()} does not require gradients`);
    if (this.m.has(p)) throw new Error(`AdamW: parameter ${p.name ?? p.toString()} is already optimized`);
    this.params.push(p);
    this.m.set(p, full(p.shape, 0, p.backend).keep());
    this.v.set(p, full(p.shape, 0, p.backend).keep());
  }

  /** Stops optimizing `p` and frees its moments (e.g. a router dropped at merge). */
  removeParam(p: Tensor): void {
    const i = this.params.indexOf(p);
    if (i < 0) throw new Error(`AdamW: parameter ${p.name ?? p.toString()} is not optimized`);
    this.params.splice(i, 1);
    this.m.get(p)!.dispose();
    this.v.get(p)!.dispose();
    this.m.delete(p);
    this.v.delete(p);
  }

  /**
   * One update of every parameter that has a gradient. `lr` overrides the configured rate (schedules);
   * gradients are multiplied by `gradScale` first (clipping, accumulation averaging).
   */
  update(lr = this.config.lr, gradScale = 1): void {
    this.step++;
    const c = this.config;
    noGrad(() => {
      for (const p of this.params) {
        if (!p.grad) continue;
        const wd = c.noDecay?.(p) ? 0 : c.weightDecay;
        p.backend.adamw(p.buf('adamw'), p.grad.buf('adamw'), this.m.get(p)!.buf('adamw'), this.v.get(p)!.buf('adamw'), {
          lr, beta1: c.beta1, beta2: c.beta2, eps: c.eps, weightDecay: wd, step: this.step, gradScale,
        });
      }
    });
  }

  /** Sets every parameter gradient to zero (keeps the buffers). */
  zeroGrad(): void {
    for (const p of this.params) if (p.grad) p.backend.fill(p.grad.buf('zeroGrad'), 0);
  }

  /** Frees the moment tensors. */
  dispose(): void {
    for (const t of [...this.m.values(), ...this.v.values()]) t.dispose();
    this.m.clear();
    this.v.clear();
  }
}

/** Global L2 norm of all parameter gradients (f64 accumulation, one read back), for clipping and logging. */
export function gradNorm(params: Tensor[]): number {
  const grads = params.filter((p) => p.grad).map((p) => p.grad!.buf('gradNorm'));
  return grads.length ? Math.sqrt(params[0]!.backend.sumSquares(grads)) : 0;
}
