/**
 * A profiling wrapper: forwards every call to a backend and accumulates wall time and call counts per
 * entry (kernels are synchronous on host backends, so wall time is the kernel's time).
 */
import type { Backend } from './contract.js';

export interface KernelProfile {
  /** Milliseconds and calls per backend entry. */
  entries: Map<string, { ms: number; calls: number }>;
  reset(): void;
}

export interface ProfileOptions {
  /** Called after every call, inside the timed span (e.g. a device synchronisation for async backends). */
  after?: () => void;
  /** The entry a call is counted under (default: the method name). */
  key?: (method: string, args: unknown[]) => string;
}

/** Wraps `backend`; the returned profile fills as the wrapper is used. */
export function profiled<B extends Backend>(backend: B, o: ProfileOptions = {}): { backend: B; profile: KernelProfile } {
  const entries = new Map<string, { ms: number; calls: number }>();
  const wrapped = new Proxy(backend, {
    get(target, prop, receiver) {
      const v = Reflect.get(target, prop, receiver);
      if (typeof v !== 'function' || typeof prop !== 'string') return v;
      return (...args: unknown[]) => {
        const t0 = performance.now();
        try {
          return (v as (...a: unknown[]) => unknown).apply(target, args);
        } finally {
          o.after?.();
          const key = o.key ? o.key(prop, args) : prop;
          const e = entries.get(key) ?? { ms: 0, calls: 0 };
          e.ms += performance.now() - t0;
          e.calls++;
          entries.set(key, e);
        }
      };
    },
  });
  return { backend: wrapped, profile: { entries, reset: () => entries.clear() } };
}
