// Grouped GEMM (the MoE expert kernel), optionally with row-indexed operands: the token gather fused
// into the products' input and the scatter-add into their output (MegaBlocks-style; SSD method page
// §4.5). Without the fusion an MoE FFN at top-k materialises k copies of its (N, d_model) input, output
// and their gradients.
//
// With AVX-512 each group is one product of the own kernel (native/cpu/gemm_own.cc) whose indexed
// operands are row pointers into the real ones: gathered rows are packed (or read) in place and
// scattered output rows are added to in place by the micro-kernel's epilogue; nothing is copied.
// Threads own whole groups, or ranges of C's absolute columns when C is scattered (a scattered row may
// be hit by several groups) or there are few groups. Per element the arithmetic is the own kernel's
// and a scattered element is added in group order by the one thread that owns its column, so results
// are bit-identical for any thread count.
//
// Without AVX-512 the providers (oneDNN, OpenBLAS) run one product at a time on gathered copies: an
// indexed dimension is cut into chunks of kChunk rows (M when A's rows (no transA) or C's rows are
// indexed; K when A is indexed with transA or B without transB; N when B is indexed with transB).
#include <algorithm>
#include <cstring>
#include <vector>

#include "gemm.h"
#include "gemm_own.h"
#include "gemm_small.h"
#include "parallel.h"

namespace ssd {
namespace {

constexpr int64_t kChunk = 336;  // gathered rows per copied block (providers' path)
constexpr int64_t kColBlock = 32;  // columns per parallel task: the own kernel's default micro-tile width
// Gathered rows (floats) per K block above which a K-gathered weight gradient runs transposed: 512 KB,
// half of the 1 MB L2 per core of the machines measured (AMD EPYC, Zen 4).
constexpr int64_t kTransposeMinBlock = 128 * 1024;

struct Group {
  int64_t m, n, k, offA, lda, offB, ldb, offC, ldc;
};

// A group's operand, possibly read (for C: written) through a row index.
struct Operand {
  const float* base;
  int64_t ld;
  const int32_t* rows;  // nullptr: plain strided operand
  int64_t row0, col0;   // the group's first stored row (an index position when indexed) and column
  const float* at(int64_t r, int64_t c) const {
    return base + (rows ? (int64_t)rows[row0 + r] : row0 + r) * ld + col0 + c;
  }
};

// ld == 0 only for operands a group never reads (k == 0).
Operand operand(const float* base, int64_t off, int64_t ld, const int32_t* rows) {
  return ld > 0 ? Operand{base, ld, rows, off / ld, off % ld} : Operand{base, 0, rows, 0, 0};
}

// Copies stored rows [r0, r1) × columns [c0, c1) of `op` into buf (ld c1 - c0); returns buf.
const float* gather(const Operand& op, int64_t r0, int64_t r1, int64_t c0, int64_t c1, std::vector<float>& buf) {
  const int64_t w = c1 - c0;
  buf.resize((size_t)((r1 - r0) * w));
  for (int64_t r = r0; r < r1; ++r) std::memcpy(buf.data() + (r - r0) * w, op.at(r, c0), (size_t)w * sizeof(float));
  return buf.data();
}

// dst[idx[row0 + i]] (ld ldd, from column col0) += src[i] (ld lds), i < m, columns [0, n).
void scatter_add(const float* src, int64_t lds, int64_t m, int64_t n, float* dst, int64_t ldd, const int32_t* idx,
                 int64_t row0, int64_t col0) {
  for (int64_t i = 0; i < m; ++i) {
    float* d = dst + (int64_t)idx[row0 + i] * ldd + col0;
    const float* s = src + i * lds;
    for (int64_t j = 0; j < n; ++j) d[j] += s[j];
  }
}

struct Buffers {
  std::vector<float> a, b, c;
};

// Without AVX-512: group g through the provider, one product per chunk of gathered rows (copies).
void run_group(bool transA, bool transB, const Group& g, int64_t n0, int64_t n1, const float* A, const float* B,
               float* C, float alpha, float beta, const GemmRows& rows, Buffers& buf) {
  if (g.m == 0 || n1 <= n0) return;
  const Operand a = operand(A, g.offA, g.lda, rows.a), b = operand(B, g.offB, g.ldb, rows.b);
  const Operand c = operand(C, g.offC, g.ldc, rows.c);
  const bool chunkM = (rows.a && !transA) || rows.c, chunkK = (rows.a && transA) || (rows.b && !transB);
  const int64_t stepM = chunkM ? kChunk : g.m, stepK = chunkK ? kChunk : std::max<int64_t>(g.k, 1);
  const int64_t stepN = rows.b && transB ? kChunk : n1 - n0;
  for (int64_t j0 = n0; j0 < n1; j0 += stepN) {
    const int64_t j1 = std::min(n1, j0 + stepN), nc = j1 - j0;
    for (int64_t i0 = 0; i0 < g.m; i0 += stepM) {
      const int64_t i1 = std::min(g.m, i0 + stepM), mc = i1 - i0;
      if (rows.c) buf.c.resize((size_t)(mc * nc));
      float* out = rows.c ? buf.c.data() : C + (c.row0 + i0) * g.ldc + c.col0 + j0;
      const int64_t ldo = rows.c ? nc : g.ldc;
      for (int64_t p0 = 0; p0 < std::max<int64_t>(g.k, 1); p0 += stepK) {
        const int64_t p1 = std::min(g.k, p0 + stepK), kc = p1 - p0;
        const float beta_p = p0 > 0 ? 1.f : rows.c ? 0.f : beta;
        if (kc == 0) {  // K == 0: C = beta · C
          sgemm(transA, transB, mc, nc, 0, alpha, A, 1, B, 1, beta_p, out, ldo);
          break;
        }
        // op(B)[p0:p1, j0:j1], stored (nc, kc) when transB.
        const float* pb = !rows.b ? b.at(transB ? j0 : p0, transB ? p0 : j0)
                          : transB ? gather(b, j0, j1, p0, p1, buf.b) : gather(b, p0, p1, j0, j1, buf.b);
        const int64_t lb = !rows.b ? g.ldb : transB ? kc : nc;
        // op(A)[i0:i1, p0:p1], stored (kc, mc) when transA.
        const float* pa = !rows.a ? a.at(transA ? p0 : i0, transA ? i0 : p0)
                          : transA ? gather(a, p0, p1, i0, i1, buf.a) : gather(a, i0, i1, p0, p1, buf.a);
        const int64_t la = !rows.a ? g.lda : transA ? mc : kc;
        sgemm(transA, transB, mc, nc, kc, alpha, pa, la, pb, lb, beta_p, out, ldo);
      }
      if (rows.c) scatter_add(out, nc, mc, nc, C, g.ldc, rows.c, c.row0 + i0, c.col0 + j0);
    }
  }
}

// Row pointers for `count` stored rows of an indexed operand, from column `col` of the group's columns.
template <typename T>
T* const* row_pointers(T* base, const Operand& op, int64_t first, int64_t count, int64_t col, std::vector<T*>& out) {
  out.resize((size_t)count);
  for (int64_t r = 0; r < count; ++r) out[(size_t)r] = base + (int64_t)op.rows[op.row0 + first + r] * op.ld + op.col0 + col;
  return out.data();
}

struct RowPointers {
  std::vector<const float*> a, b;
  std::vector<float*> c;
  std::vector<float> t;  // a transposed product's output (run_indexed)
};

// With AVX-512: group g restricted to output columns [n0, n1) as one own-kernel product (single
// thread), indexed operands read and written in place through row pointers (no copies).
void run_indexed(bool transA, bool transB, const Group& g, int64_t n0, int64_t n1, const float* A, const float* B,
                 float* C, float alpha, float beta, const GemmRows& rows, RowPointers& ptr) {
  if (g.m == 0 || n1 <= n0) return;
  // Offsets of an indexed operand address the virtual (gathered) matrix: only its row pointers are
  // formed. A and B of a k == 0 group are never read (nor validated): left empty.
  GemmOperand pa, pb;
  if (g.k > 0) {
    const Operand a = operand(A, g.offA, g.lda, rows.a), b = operand(B, g.offB, g.ldb, rows.b);
    pa = rows.a ? GemmOperand{nullptr, g.lda, row_pointers(A, a, 0, transA ? g.k : g.m, 0, ptr.a)}
                : GemmOperand{A + g.offA, g.lda, nullptr};
    // The column range [n0, n1): rows n0.. of B when transB, else columns n0.. of every row.
    pb = !rows.b ? GemmOperand{B + g.offB + (transB ? n0 * g.ldb : n0), g.ldb, nullptr}
         : GemmOperand{nullptr, g.ldb, transB ? row_pointers(B, b, n0, n1 - n0, 0, ptr.b) : row_pointers(B, b, 0, g.k, n0, ptr.b)};
  }
  const Operand c = operand(C, g.offC, g.ldc, rows.c);
  if (g.k > 0 && transA && !transB && rows.b && !rows.c && beta == 0.f && g.m < n1 - n0 &&
      sgemm_own_k_block(g.k) * (n1 - n0) >= kTransposeMinBlock) {
    // A weight gradient whose token rows are B's (dW_in = dhᵀ · x[g]: few rows, K gathered) and whose K
    // block of gathered rows exceeds kTransposeMinBlock: computed as Cᵀ = op(B)ᵀ · op(A)ᵀ, so the gathered rows
    // become the transA operand, packed by walking each token row once in order (as B they are packed
    // in NR-column pieces, each a cache miss once the block has left L2). fma is symmetric and the K
    // blocking depends on K only: the same bits. (32-neuron experts, d_model 768: −6%.)
    const int64_t n = n1 - n0;
    ptr.t.resize((size_t)(n * g.m));
    sgemm_own_indexed(true, false, n, g.m, g.k, alpha, pb, pa, 0.f, GemmOutput{ptr.t.data(), g.m, nullptr});
    float* out = C + g.offC + n0;
    for (int64_t i = 0; i < g.m; ++i)
      for (int64_t j = 0; j < n; ++j) out[i * g.ldc + j] = ptr.t[(size_t)(j * g.m + i)];
    return;
  }
  const GemmOutput pc = rows.c ? GemmOutput{nullptr, g.ldc, row_pointers(C, c, 0, g.m, n0, ptr.c)}
                               : GemmOutput{C + g.offC + n0, g.ldc, nullptr};
  sgemm_own_indexed(transA, transB, g.m, n1 - n0, g.k, alpha, pa, pb, rows.c ? 1.f : beta, pc);
}

// Every group has m <= kSmallM (MoE decode): all groups in one parallel region of the small-M kernel.
// Indexed A rows (no transA) are gathered and scattered outputs computed into compact buffers first.
void run_small(bool transA, bool transB, const std::vector<Group>& groups, const float* A, const float* B, float* C,
               float alpha, float beta, const GemmRows& rows) {
  int64_t packedA = 0, packedC = 0;
  for (const Group& g : groups) {
    if (g.m == 0 || g.n == 0) continue;
    if (rows.a) packedA += g.m * g.k;
    if (rows.c) packedC += g.m * g.n;
  }
  std::vector<float> bufA((size_t)packedA), bufC((size_t)packedC);
  std::vector<SmallGemm> work;
  int64_t offA = 0, offC = 0;
  for (const Group& g : groups) {
    if (g.m == 0 || g.n == 0) continue;
    const Operand a = operand(A, g.offA, g.lda, rows.a);
    float* pc = rows.c ? bufC.data() + offC : C + g.offC;
    const int64_t ldc = rows.c ? g.n : g.ldc;
    if (g.k == 0) {
      sgemm(transA, transB, g.m, g.n, 0, alpha, A, 1, B, 1, rows.c ? 0.f : beta, pc, ldc);
    } else {
      const float* pa = A + g.offA;
      if (rows.a) {
        for (int64_t i = 0; i < g.m; ++i) std::memcpy(bufA.data() + offA + i * g.k, a.at(i, 0), (size_t)g.k * sizeof(float));
        pa = bufA.data() + offA;
      }
      work.push_back({g.m, g.n, g.k, pa, rows.a ? g.k : g.lda, B + g.offB, g.ldb, pc, ldc});
    }
    offA += rows.a ? g.m * g.k : 0;
    offC += rows.c ? g.m * g.n : 0;
  }
  sgemm_small_grouped(transA, transB, work.data(), (int64_t)work.size(), alpha, rows.c ? 0.f : beta);
  if (!rows.c) return;
  offC = 0;
  for (const Group& g : groups) {
    if (g.m == 0 || g.n == 0) continue;
    const Operand c = operand(C, g.offC, g.ldc, rows.c);
    scatter_add(bufC.data() + offC, g.n, g.m, g.n, C, g.ldc, rows.c, c.row0, c.col0);
    offC += g.m * g.n;
  }
}

}  // namespace

void sgemm_grouped(bool transA, bool transB, const int32_t* problems, int64_t G, const float* A, const float* B,
                   float* C, float alpha, float beta, const GemmRows& rows) {
  std::vector<Group> groups((size_t)G);
  std::vector<double> upto((size_t)G + 1, 0.0);  // cumulative FLOPs
  int64_t maxCol = 0;  // one past the last C column any group writes
  bool small = cpu_has_avx512() && !(rows.a && transA) && !rows.b;
  for (int64_t g = 0; g < G; ++g) {
    const int32_t* p = problems + 9 * g;
    groups[(size_t)g] = {p[0], p[1], p[2], p[3], p[4], p[5], p[6], p[7], p[8]};
    if (p[0] > 0 && p[1] > 0) maxCol = std::max<int64_t>(maxCol, (p[8] > 0 ? p[7] % p[8] : 0) + p[1]);
    upto[(size_t)g + 1] = upto[(size_t)g] + (double)p[0] * p[1] * std::max(p[2], 1);
    small = small && p[0] <= kSmallM;
  }
  if (small) return run_small(transA, transB, groups, A, B, C, alpha, beta, rows);
  if (!cpu_has_avx512()) {
    // The providers run their own threads: one product at a time.
    Buffers buf;
    for (const Group& g : groups) run_group(transA, transB, g, 0, g.n, A, B, C, alpha, beta, rows, buf);
    return;
  }
  const int threads = pool().size();
  if (rows.c || (int64_t)G < 2 * threads) {
    // Threads own ranges of blocks of C's columns (absolute columns of its rows, so groups that start
    // at different columns still never share an element between threads): a scattered row may be
    // hit by several groups.
    parallel_for((maxCol + kColBlock - 1) / kColBlock, 1, [&](int64_t b0, int64_t b1) {
      RowPointers ptr;
      for (const Group& g : groups) {
        const int64_t col0 = g.ldc > 0 ? g.offC % g.ldc : 0;
        const auto clamp = [&](int64_t c) { return std::min(g.n, std::max<int64_t>(0, c - col0)); };
        run_indexed(transA, transB, g, clamp(b0 * kColBlock), clamp(b1 * kColBlock), A, B, C, alpha, beta, rows, ptr);
      }
    });
    return;
  }
  // Many groups with disjoint outputs (expert-sized products): groups in parallel, each product on one
  // thread, in contiguous runs of about equal FLOPs. (The own kernel measured 2.6× faster here than
  // per-group oneDNN calls: MoE prefill, gpt2-small, 24 experts of 128.)
  parallel_for(threads, 1, [&](int64_t t0, int64_t t1) {
    RowPointers ptr;
    const double share = std::max(upto[(size_t)G] / threads, 1e-30);
    for (int64_t g = 0; g < G; ++g) {
      const int64_t owner = std::min<int64_t>(threads - 1, (int64_t)((upto[(size_t)g] + upto[(size_t)g + 1]) / 2 / share));
      if (owner >= t0 && owner < t1) run_indexed(transA, transB, groups[(size_t)g], 0, groups[(size_t)g].n, A, B, C, alpha, beta, rows, ptr);
    }
  });
}

}  // namespace ssd
