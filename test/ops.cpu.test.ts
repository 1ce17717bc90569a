import { getBackend } from '../src/backend/registry.js';
import { createCpuBackend } from '../src/backend/cpu/index.js';
import { opSuite } from './ops.suite.js';

opSuite('cpu', getBackend('cpu'));
// Outputs that kernels claim to overwrite in full skip their zero-fill; poisoned with NaN here, so a
// kernel that reads or skips part of such an output fails the suite.
opSuite('cpu (deferred zero-fill, outputs poisoned)', createCpuBackend({ poisonOutputs: true }));
