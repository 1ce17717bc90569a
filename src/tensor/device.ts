/**
 * The default backend that tensor creation uses when none is given. The tensor layer knows no
 * concrete backend: callers (CLI, tests) pick one from `backend/registry.ts` and install it here.
 */
import type { Backend } from '../backend/contract.js';

let current: Backend | null = null;

/** Makes `b` the backend that new tensors use by default. */
export function useBackend(b: Backend): void {
  current = b;
}

/** The backend installed with useBackend(). Throws if none was installed. */
export function defaultBackend(): Backend {
  if (!current) throw new Error('no backend selected: call useBackend(getBackend(name)) first (names: ref, cpu, cuda)');
  return current;
}
