/** Learning-rate schedule: linear warm-up, then cosine decay to min_lr_ratio · lr (nanoGPT / GPT-3). */

/** The learning rate at 0-based `step` of `total`. */
export function learningRate(step: number, total: number, lr: number, warmup: number, minRatio: number): number {
  if (step < warmup) return (lr * (step + 1)) / warmup;
  const progress = total > warmup ? Math.min(1, (step - warmup) / (total - warmup)) : 1;
  const minLr = lr * minRatio;
  return minLr + 0.5 * (1 + Math.cos(Math.PI * progress)) * (lr - minLr);
}
