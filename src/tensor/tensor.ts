/**
 * Tensor: a shape, a dtype and a reference-counted storage on one backend, plus the autograd links.
 * Views (reshape) share storage. Ownership is automatic through scopes (`tidy`, see scope.ts): a
 * tensor created inside a scope is freed when the scope ends unless it is returned or kept.
 */
import type { Backend, Buf, DType, HostArray } from '../backend/contract.js';
import { currentScope, untrack } from './scope.js';

/** A buffer shared by a tensor and its views. */
export class Storage {
  refs = 1;
  constructor(readonly backend: Backend, readonly buf: Buf) {}
  release(): void {
    if (--this.refs === 0) this.backend.free(this.buf);
  }
}

/** One recorded operation: its inputs and how to map the output gradient to input gradients. */
export interface GradNode {
  op: string;
  inputs: Tensor[];
  /** Returns one gradient per input (null where the input needs none). Runs under noGrad. */
  backward(gradOut: Tensor): (Tensor | null)[];
}

let nextId = 1;

export class Tensor {
  readonly id = nextId++;
  /** Set by the op that produced this tensor while gradients are recorded. */
  node: GradNode | null = null;
  /** Accumulated gradient of a leaf that requires it (kept across scopes). */
  grad: Tensor | null = null;
  requiresGrad = false;
  /** A stable parameter name (`h.3.mlp.w_in`) for leaves that are parameters. */
  name: string | null = null;
  private disposed = false;

  constructor(readonly storage: Storage, readonly shape: readonly number[], readonly dtype: DType) {
    currentScope()?.track(this);
  }

  get backend(): Backend {
    return this.storage.backend;
  }
  get size(): number {
    return shapeSize(this.shape);
  }
  get rank(): number {
    return this.shape.length;
  }
  get isDisposed(): boolean {
    return this.disposed;
  }

  /** The raw buffer, for kernels. Throws if this tensor was freed. */
  buf(op: string): Buf {
    if (this.disposed) {
      throw new Error(`${op}: use of a freed tensor (shape [${this.shape}], ${this.dtype}${this.name ? `, ${this.name}` : ''}); ` +
        `keep tensors that must outlive a tidy() scope with keep() or by returning them`);
    }
    return this.storage.buf;
  }

  /** Copies the data to the host. */
  toArray(): HostArray {
    return this.backend.download(this.buf('toArray'));
  }
  /** Overwrites the content with host data (`size` values; an asynchronous upload where the backend allows). */
  set(data: ArrayLike<number>): void {
    this.backend.upload(this.buf('set'), data);
  }
  /** The single value of a one-element tensor. */
  item(): number {
    if (this.size !== 1) throw new Error(`item: tensor has ${this.size} elements (shape [${this.shape}]), expected 1`);
    return this.toArray()[0]!;
  }

  /** Frees this tensor's reference to its storage (idempotent). Its gradient is freed too. */
  dispose(): void {
    if (this.disposed) return;
    this.disposed = true;
    this.node = null;
    this.storage.release();
    this.grad?.dispose();
    this.grad = null;
  }

  /** Removes this tensor from scope tracking: it lives until disposed explicitly. */
  keep(): this {
    untrack(this);
    return this;
  }

  toString(): string {
    return `Tensor(shape=[${this.shape}], dtype=${this.dtype}, backend=${this.backend.name})`;
  }
}

export function shapeSize(shape: readonly number[]): number {
  let n = 1;
  for (const d of shape) n *= d;
  return n;
}

/** Row-major strides of a contiguous shape. */
export function contiguousStrides(shape: readonly number[]): number[] {
  const s = new Array<number>(shape.length);
  let acc = 1;
  for (let i = shape.length - 1; i >= 0; i--) {
    s[i] = acc;
    acc *= shape[i]!;
  }
  return s;
}

export function shapeEq(a: readonly number[], b: readonly number[]): boolean {
  return a.length === b.length && a.every((d, i) => d === b[i]);
}

export function checkShape(shape: readonly number[], op: string): number[] {
  for (const d of shape) {
    if (!Number.isInteger(d) || d < 0) throw new Error(`${op}: invalid shape [${shape}]`);
  }
  return [...shape];
}
