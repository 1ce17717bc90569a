/**
 * Backend selection: `--backend ref|cpu|cuda` or `SSD_BACKEND`, default the fastest available
 * (cuda, then cpu, then ref). A missing backend is a clear error that says how to get it.
 */
import type { Backend } from './contract.js';
import { createCpuBackend } from './cpu/index.js';
import { createCudaBackend } from './cuda/index.js';
import { createRefBackend } from './ref/index.js';

export const BACKEND_NAMES = ['ref', 'cpu', 'cuda'] as const;
export type BackendName = (typeof BACKEND_NAMES)[number];

const cache = new Map<BackendName, Backend>();

/** Returns the named backend (created once). Throws with a hint if it is unknown or not available. */
export function getBackend(name: string): Backend {
  if (!(BACKEND_NAMES as readonly string[]).includes(name)) {
    throw new Error(`unknown backend '${name}': choose one of ${BACKEND_NAMES.join(', ')}`);
  }
  const key = name as BackendName;
  let b = cache.get(key);
  if (!b) {
    b = create(key);
    cache.set(key, b);
  }
  return b;
}

function create(name: BackendName): Backend {
  switch (name) {
    case 'ref': return createRefBackend();
    case 'cpu': return createCpuBackend();
    case 'cuda': return createCudaBackend();
  }
}

/** True if `getBackend(name)` would succeed. */
export function isAvailable(name: BackendName): boolean {
  try {
    getBackend(name);
    return true;
  } catch {
    return false;
  }
}

/** The backend named by `requested`, else SSD_BACKEND, else the fastest available. */
export function selectBackend(requested?: string): Backend {
  const name = requested ?? process.env.SSD_BACKEND;
  if (name) return getBackend(name);
  for (const n of ['cuda', 'cpu'] as const) if (isAvailable(n)) return getBackend(n);
  return getBackend('ref');
}
