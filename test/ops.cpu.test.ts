import { after, before, describe } from 'node:test';
import { getBackend } from '../src/backend/registry.js';
import { cpuBackendInfo, createCpuBackend, gemmProviders, setGemmProvider } from '../src/backend/cpu/index.js';
import { opSuite } from './ops.suite.js';

opSuite('cpu', getBackend('cpu'));
// Outputs that kernels claim to overwrite in full skip their zero-fill; poisoned with NaN here (and
// every pending buffer NaN until its deferred fill), so a kernel that reads or skips part of such an
// output, or a missing fill, fails the suite. Once per GEMM provider: their beta = 0 must not read C.
const poisoned = createCpuBackend({ poisonOutputs: true });
const defaultProvider = cpuBackendInfo().gemm.split(/[ -]/)[0]!;
for (const provider of gemmProviders()) {
  describe(`GEMM provider ${provider}`, () => {
    before(() => setGemmProvider(provider));
    after(() => setGemmProvider(defaultProvider));
    opSuite(`cpu (deferred zero-fill, outputs poisoned, ${provider})`, poisoned);
  });
}
