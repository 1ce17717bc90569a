/**
 * Automatic ownership of tensors: every tensor created inside `tidy(fn)` is freed when fn returns,
 * except the tensors fn returns (handed to the enclosing scope) and those marked with `keep()`.
 * Outside any scope tensors are untracked (parameters, optimizer state): they live until disposed.
 */
import type { Tensor } from './tensor.js';

class Scope {
  readonly tensors = new Set<Tensor>();
  track(t: Tensor): void {
    this.tensors.add(t);
  }
}

const stack: Scope[] = [];

/** The innermost open scope, or null at top level. */
export function currentScope(): Scope | null {
  return stack.length ? stack[stack.length - 1]! : null;
}

/** Stops tracking a tensor in every open scope (it becomes long-lived). */
export function untrack(t: Tensor): void {
  for (const s of stack) s.tensors.delete(t);
}

/** A value returned from tidy: tensors found in it (arrays and plain objects, one level deep or more) survive. */
type Returned = unknown;

function collect(value: Returned, out: Set<Tensor>, seen = new Set<unknown>()): void {
  if (value === null || typeof value !== 'object' || seen.has(value)) return;
  seen.add(value);
  if (isTensor(value)) {
    out.add(value);
    return;
  }
  if (Array.isArray(value)) for (const v of value) collect(v, out, seen);
  else if (Object.getPrototypeOf(value) === Object.prototype) for (const v of Object.values(value)) collect(v, out, seen);
}

function isTensor(v: object): v is Tensor {
  return 'storage' in v && 'shape' in v && typeof (v as { dispose?: unknown }).dispose === 'function';
}

/**
 * Runs fn in a new scope and frees every tensor it created, except those it returns (found in the
 * returned value: a tensor, an array or a plain object of them) which move to the enclosing scope.
 * Async functions are not supported (the scope would close before they finish).
 */
export function tidy<T>(fn: () => T): T {
  const scope = new Scope();
  stack.push(scope);
  let result: T;
  try {
    result = fn();
  } catch (e) {
    stack.pop();
    for (const t of scope.tensors) t.dispose();
    throw e;
  }
  stack.pop();
  if (result instanceof Promise) throw new Error('tidy: fn returned a Promise; scopes are synchronous');
  const survivors = new Set<Tensor>();
  collect(result, survivors);
  const parent = currentScope();
  for (const t of scope.tensors) {
    if (survivors.has(t)) parent?.track(t);
    else t.dispose();
  }
  return result;
}
