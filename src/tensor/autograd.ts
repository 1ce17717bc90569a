/**
 * Reverse-mode automatic differentiation over coarse ops. Ops call `record` to attach a GradNode to
 * their output when gradients are enabled and an input requires one; `backward(loss)` walks the graph
 * in reverse topological order and accumulates into the `.grad` of leaves with `requiresGrad`.
 */
import { tidy } from './scope.js';
import { full } from './create.js';
import { Tensor, shapeEq } from './tensor.js';
import type { GradNode } from './tensor.js';

let gradEnabled = true;

/** Runs fn without recording gradients (evaluation, inference, optimizer updates). */
export function noGrad<T>(fn: () => T): T {
  const prev = gradEnabled;
  gradEnabled = false;
  try {
    return fn();
  } finally {
    gradEnabled = prev;
  }
}

export function isGradEnabled(): boolean {
  return gradEnabled;
}

/** True if a gradient will flow into `t`. */
export function needsGrad(t: Tensor): boolean {
  return t.requiresGrad || t.node !== null;
}

/**
 * Attaches a backward function to `out` when recording is on and some input needs a gradient.
 * `backward` returns one gradient per input (null for inputs that need none).
 */
export function record(out: Tensor, op: string, inputs: Tensor[], backward: GradNode['backward']): Tensor {
  if (gradEnabled && inputs.some(needsGrad)) out.node = { op, inputs, backward };
  return out;
}

/**
 * Backpropagates from `loss` (a one-element tensor, or any tensor with an explicit `gradOut` of its
 * shape). Gradients of leaves with `requiresGrad` are accumulated into `leaf.grad` (created on first
 * use, long-lived); all intermediate gradients are freed. `onLeafGrad` is called as each leaf's
 * gradient of this pass is complete (once per leaf, in the order of the pass; data-parallel training
 * starts summing it over the ranks then). Throws if `loss` has no graph.
 */
export function backward(loss: Tensor, gradOut?: Tensor, onLeafGrad?: (leaf: Tensor) => void): void {
  if (!needsGrad(loss)) {
    throw new Error(`backward: the tensor (shape [${loss.shape}]) has no graph: it was computed under noGrad() ` +
      `or from tensors that do not require gradients`);
  }
  if (!gradOut && loss.size !== 1) {
    throw new Error(`backward: loss has shape [${loss.shape}]; pass gradOut for a non-scalar tensor`);
  }
  if (gradOut && !shapeEq(gradOut.shape, loss.shape)) {
    throw new Error(`backward: gradOut shape [${gradOut.shape}] differs from the tensor's [${loss.shape}]`);
  }
  const order = topoOrder(loss);
  noGrad(() => tidy(() => {
    const grads = new Map<Tensor, Tensor>();
    grads.set(loss, gradOut ?? full(loss.shape, 1, loss.backend));
    for (let i = order.length - 1; i >= 0; i--) {
      const t = order[i]!;
      const g = grads.get(t);
      if (!g) continue;
      grads.delete(t);
      if (t.requiresGrad && !t.node) {
        accumulateLeaf(t, g);
        onLeafGrad?.(t);
        continue;
      }
      const node = t.node!;
      const inGrads = node.backward(g);
      node.inputs.forEach((inp, k) => {
        const gi = inGrads[k];
        if (!gi || !needsGrad(inp)) return;
        if (!shapeEq(gi.shape, inp.shape)) {
          throw new Error(`backward of ${node.op}: gradient shape [${gi.shape}] for input shape [${inp.shape}]`);
        }
        const prev = grads.get(inp);
        // Out of place: a gradient may be a view shared with another input's gradient.
        grads.set(inp, prev ? sum2(prev, gi, node.op) : gi);
      });
    }
  }));
}

function accumulateLeaf(leaf: Tensor, g: Tensor): void {
  if (!leaf.grad) leaf.grad = full(leaf.shape, 0, leaf.backend, g.dtype).keep();
  addInto(leaf.grad, g, 'backward');
}

/** a + b as a new tensor (same shapes). */
function sum2(a: Tensor, b: Tensor, op: string): Tensor {
  const out = full(a.shape, 0, a.backend, a.dtype);
  a.backend.binary('add', a.buf(op), [1], b.buf(op), [1], out.buf(op), [a.size]);
  return out;
}

/** acc += g elementwise in place (same shapes). */
function addInto(acc: Tensor, g: Tensor, op: string): void {
  const n = acc.size;
  acc.backend.binary('add', acc.buf(op), [1], g.buf(op), [1], acc.buf(op), [n]);
}

function topoOrder(root: Tensor): Tensor[] {
  const order: Tensor[] = [];
  const visited = new Set<Tensor>();
  // Iterative DFS (graphs of deep models would overflow a recursive one).
  const stack: [Tensor, boolean][] = [[root, false]];
  while (stack.length) {
    const [t, done] = stack.pop()!;
    if (done) {
      order.push(t);
      continue;
    }
    if (visited.has(t)) continue;
    visited.add(t);
    stack.push([t, true]);
    for (const inp of t.node?.inputs ?? []) if (!visited.has(inp) && needsGrad(inp)) stack.push([inp, false]);
  }
  return order;
}
