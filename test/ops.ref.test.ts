import { createRefBackend } from '../src/backend/ref/index.js';
import { opSuite } from './ops.suite.js';

opSuite('ref', createRefBackend());
