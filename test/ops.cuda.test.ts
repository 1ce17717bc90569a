/**
 * The shared op suite on the cuda backend, twice: as shipped (bf16 tensor-core GEMMs and attention,
 * bf16 tolerances) and in an exact configuration (fp32 GEMMs, grouped ones included, fp32 SIMT
 * attention) at fp32 tolerances, which catches indexing errors that bf16 rounding could hide. Skipped
 * without a device.
 */
import { describe, it } from 'node:test';
import { createCudaBackend, cudaUnavailableReason } from '../src/backend/cuda/index.js';
import { getBackend } from '../src/backend/registry.js';
import { opSuite } from './ops.suite.js';

const why = cudaUnavailableReason();
if (why) {
  describe('ops on cuda', () => {
    it('needs a CUDA device', { skip: why }, () => {});
  });
} else {
  opSuite('cuda (bf16)', getBackend('cuda'), { forwardTol: 1e-2, gradTol: 3e-2 });
  // Grouped products through fp32 cuBLAS too: the built-in grouped kernel (more than 4 groups) is bf16,
  // covered by the suite above.
  opSuite('cuda (fp32 GEMM, SIMT attention)', createCudaBackend({ matmul: 'f32', attention: 'simt', grouped: 'cublas' }),
    { forwardTol: 1e-4, gradTol: 1e-3 });
}
