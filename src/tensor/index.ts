/** The tensor library: Tensor, creation, scopes, autograd and ops. */
export { Tensor, Storage, shapeSize, contiguousStrides } from './tensor.js';
export { tidy } from './scope.js';
export { backward, noGrad, isGradEnabled } from './autograd.js';
export { empty, full, tensor, parameter } from './create.js';
export { useBackend, defaultBackend } from './device.js';
export { add, sub, mul, div, affine, scale, relu, gelu, neg, exp, log, sqrt, square, tanh, dropout, cast, expandTo } from './ops/elementwise.js';
export { reshape, detach, permute, transpose, slice, concat } from './ops/shape.js';
export { sum, mean, sumTo } from './ops/reduce.js';
export { matmul, linear, segmentMatmul } from './ops/matmul.js';
export type { MatmulOpts, LinearOpts, ExpertLayout, SegmentRows, SegmentEpilogue } from './ops/matmul.js';
export { softmax, layerNorm, embedding, attention, attentionCached, crossEntropy } from './ops/nn.js';
export { topk, expertGroups, gatherRows, scatterAddRows, routerGate, activationBits } from './ops/moe.js';
export type { ExpertGrouping } from './ops/moe.js';
