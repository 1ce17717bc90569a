import { createRefBackend } from '../src/backend/ref/index.js';
import { opSuite } from './ops.suite.js';

// The oracle itself must agree with finite differences.
opSuite('ref-f64', createRefBackend({ f64: true }));
