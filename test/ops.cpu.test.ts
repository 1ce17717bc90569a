import { getBackend } from '../src/backend/registry.js';
import { opSuite } from './ops.suite.js';

opSuite('cpu', getBackend('cpu'));
