// Standalone correctness test + benchmark for ssd::sgemm_own (native/cpu/gemm_own.cc).
// Not part of binding.gyp. Build and run from the repository root:
//
//   g++ -O3 -march=x86-64-v3 -std=c++17 -pthread -Inative/cpu native/cpu/test/gemm_own_bench.cc native/cpu/parallel.cc -o /tmp/gemm_own_bench
//   /tmp/gemm_own_bench            # correctness tests + benchmark
//   /tmp/gemm_own_bench test       # correctness tests only
//   /tmp/gemm_own_bench bench      # benchmark only
//   /tmp/gemm_own_bench bench M N K   # benchmark one shape (all 4 transpose cases)
//
// The .cc is #included so the portable fallback (ssd::gemm_detail::sgemm_fallback) can be tested
// on this AVX-512 machine too. Blocking can be overridden for tuning with -DSSD_GEMM_MR=.. etc.
#include "../gemm_own.cc"

#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

using ssd::gemm_detail::sgemm_fallback;

namespace {

using GemmFn = void (*)(bool, bool, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                        int64_t, float, float*, int64_t);

struct Case {
  int64_t M, N, K;
};

int g_fail = 0;
int64_t g_checked = 0;

// Returns true when the test passed.
bool run_case(GemmFn fn, const char* fname, bool tA, bool tB, int64_t M, int64_t N, int64_t K, float alpha,
              float beta, int64_t pad, std::mt19937& rng) {
  const int64_t rowsA = tA ? K : M, colsA = tA ? M : K;
  const int64_t rowsB = tB ? N : K, colsB = tB ? K : N;
  const int64_t lda = std::max<int64_t>(colsA + pad, 1), ldb = std::max<int64_t>(colsB + pad, 1);
  const int64_t ldc = N + pad;
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  std::vector<float> A(size_t(std::max<int64_t>(rowsA * lda, 1))), B(size_t(std::max<int64_t>(rowsB * ldb, 1)));
  for (auto& x : A) x = U(rng);
  for (auto& x : B) x = U(rng);
  // Poison the padding of A and B with NaN: it must never be read.
  const float qnan = std::numeric_limits<float>::quiet_NaN();
  for (int64_t r = 0; r < rowsA; ++r)
    for (int64_t c = colsA; c < lda; ++c) A[size_t(r * lda + c)] = qnan;
  for (int64_t r = 0; r < rowsB; ++r)
    for (int64_t c = colsB; c < ldb; ++c) B[size_t(r * ldb + c)] = qnan;
  std::vector<float> C(size_t(M * ldc)), C0;
  for (int64_t i = 0; i < M; ++i)
    for (int64_t j = 0; j < ldc; ++j)
      C[size_t(i * ldc + j)] = (j >= N) ? 12345.0f : (beta == 0.0f ? qnan : U(rng));
  C0 = C;
  fn(tA, tB, M, N, K, alpha, A.data(), lda, B.data(), ldb, beta, C.data(), ldc);
  bool ok = true;
  double worst = 0;
  for (int64_t i = 0; i < M && ok; ++i) {
    for (int64_t j = 0; j < ldc; ++j) {
      const float got = C[size_t(i * ldc + j)];
      if (j >= N) {
        if (got != 12345.0f) { ok = false; std::printf("    padding of C modified at (%lld,%lld)\n", (long long)i, (long long)j); break; }
        continue;
      }
      double ref = 0, mag = 0;
      for (int64_t k = 0; k < K; ++k) {
        const double a = tA ? A[size_t(k * lda + i)] : A[size_t(i * lda + k)];
        const double b = tB ? B[size_t(j * ldb + k)] : B[size_t(k * ldb + j)];
        ref += a * b;
        mag += std::fabs(a * b);
      }
      ref *= alpha;
      mag *= std::fabs(alpha);
      if (beta != 0.0f) {
        const double c0 = C0[size_t(i * ldc + j)];
        ref += double(beta) * c0;
        mag += std::fabs(double(beta) * c0);
      }
      const double tol = 2.5e-7 * double(K + 4) * (mag + 1e-30) + 1e-30;
      const double err = std::fabs(double(got) - ref);
      if (!(err <= tol)) {
        ok = false;
        std::printf("    mismatch at (%lld,%lld): got %.9g ref %.9g tol %.3g\n", (long long)i, (long long)j, got,
                    ref, tol);
        break;
      }
      worst = std::max(worst, err / (mag + 1e-30));
    }
  }
  ++g_checked;
  if (!ok) {
    ++g_fail;
    std::printf("FAIL %s tA=%d tB=%d M=%lld N=%lld K=%lld alpha=%g beta=%g pad=%lld\n", fname, tA, tB,
                (long long)M, (long long)N, (long long)K, alpha, beta, (long long)pad);
  }
  return ok;
}

// Bit-identity of the result across thread counts.
void check_thread_invariance(GemmFn fn, const char* fname, const std::vector<Case>& cases) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  for (const Case& cs : cases) {
    for (int t = 0; t < 4; ++t) {
      const bool tA = t & 1, tB = t & 2;
      const int64_t M = cs.M, N = cs.N, K = cs.K;
      std::vector<float> A(size_t(M * K)), B(size_t(K * N)), C1(size_t(M * N)), Cn;
      for (auto& x : A) x = U(rng);
      for (auto& x : B) x = U(rng);
      for (auto& x : C1) x = U(rng);
      const std::vector<float> Cinit = C1;
      ssd::set_num_threads(1);
      fn(tA, tB, M, N, K, 0.75f, A.data(), tA ? M : K, B.data(), tB ? K : N, 0.5f, C1.data(), N);
      for (int nt : {2, 3, 5}) {
        ssd::set_num_threads(nt);
        Cn = Cinit;
        fn(tA, tB, M, N, K, 0.75f, A.data(), tA ? M : K, B.data(), tB ? K : N, 0.5f, Cn.data(), N);
        ++g_checked;
        if (std::memcmp(C1.data(), Cn.data(), C1.size() * sizeof(float)) != 0) {
          ++g_fail;
          std::printf("FAIL %s thread invariance tA=%d tB=%d M=%lld N=%lld K=%lld threads=%d\n", fname, tA, tB,
                      (long long)M, (long long)N, (long long)K, nt);
        }
      }
    }
  }
  ssd::set_num_threads(0);
}

void run_tests() {
  std::mt19937 rng(12345);
  const std::vector<Case> shapes = {
      {1, 1, 1},     {1, 1, 7},     {7, 1, 1},      {1, 9, 1},      {2, 3, 4},     {17, 33, 65},
      {14, 32, 16},  {15, 33, 17},  {13, 31, 15},   {16, 16, 16},   {29, 65, 385}, {100, 1, 50},
      {1, 100, 50},  {3, 700, 20},  {50, 3, 700},   {97, 130, 33},  {28, 64, 768}, {385, 97, 769},
      {13, 3100, 20}, {700, 40, 30}, {350, 350, 390}, {64, 64, 1},   {31, 47, 400},
  };
  const float ab[][2] = {{1.0f, 0.0f}, {1.0f, 1.0f}, {0.5f, -1.5f}, {-2.0f, 0.0f}};
  struct Impl { GemmFn fn; const char* name; };
  const Impl impls[] = {{ssd::sgemm_own, "sgemm_own"}, {sgemm_fallback, "fallback"}};
  for (int nt : {1, 2}) {
    ssd::set_num_threads(nt);
    for (const Impl& im : impls) {
      int fails_before = g_fail;
      for (const Case& cs : shapes)
        for (int t = 0; t < 4; ++t)
          for (int p = 0; p < 4; ++p)
            for (int64_t pad : {int64_t(0), int64_t(3)}) {
              // Keep the O(MNK) reference cheap for big shapes: only a subset of combinations.
              if (cs.M * cs.N * cs.K > 2000000 && (p & 1) != (pad != 0)) continue;
              run_case(im.fn, im.name, t & 1, t & 2, cs.M, cs.N, cs.K, ab[p][0], ab[p][1], pad, rng);
            }
      // K == 0: C = beta * C; beta == 0 -> zeros even with NaN in C.
      for (float beta : {0.0f, 1.0f, 0.5f}) run_case(im.fn, im.name, false, false, 5, 7, 0, 1.0f, beta, 2, rng);
      // M == 0 / N == 0: no-op (no crash with null pointers).
      im.fn(false, false, 0, 5, 5, 1.0f, nullptr, 5, nullptr, 5, 0.0f, nullptr, 5);
      im.fn(false, false, 5, 0, 5, 1.0f, nullptr, 5, nullptr, 0, 0.0f, nullptr, 0);
      std::printf("[%d thread(s)] %-9s : %s\n", nt, im.name, g_fail == fails_before ? "ok" : "FAILED");
    }
  }
  const std::vector<Case> inv = {{301, 257, 777}, {1000, 90, 400}, {90, 1000, 400}, {14, 4000, 50}};
  check_thread_invariance(ssd::sgemm_own, "sgemm_own", inv);
  check_thread_invariance(sgemm_fallback, "fallback", inv);
  std::printf("tests: %lld checks, %d failures\n", (long long)g_checked, g_fail);
}

double now_s() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

// Best-of-reps GFLOP/s for C = A*B (beta = 0).
double bench_one(bool tA, bool tB, int64_t M, int64_t N, int64_t K, int reps) {
  std::vector<float> A(size_t(M * K)), B(size_t(K * N)), C(size_t(M * N));
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> U(-1.0f, 1.0f);
  for (auto& x : A) x = U(rng);
  for (auto& x : B) x = U(rng);
  const int64_t lda = tA ? M : K, ldb = tB ? K : N;
  ssd::sgemm_own(tA, tB, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), N);  // warm-up
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const double t0 = now_s();
    ssd::sgemm_own(tA, tB, M, N, K, 1.0f, A.data(), lda, B.data(), ldb, 0.0f, C.data(), N);
    best = std::min(best, now_s() - t0);
  }
  return 2.0 * double(M) * double(N) * double(K) / best * 1e-9;
}

void run_bench(const std::vector<Case>& shapes) {
  std::printf("blocking: MR=%d NR=%d KC=%lld MC=%lld NC=%lld\n", ssd::gemm_detail::MR, ssd::gemm_detail::NR,
              (long long)ssd::gemm_detail::KC, (long long)ssd::gemm_detail::MC, (long long)ssd::gemm_detail::NC);
  std::printf("%-18s %-6s %12s %12s\n", "M x N x K", "op", "1 thr GF/s", "2 thr GF/s");
  for (const Case& cs : shapes) {
    for (int t = 0; t < 4; ++t) {
      const bool tA = t & 1, tB = t & 2;
      double g[2];
      for (int i = 0; i < 2; ++i) {
        ssd::set_num_threads(i + 1);
        g[i] = bench_one(tA, tB, cs.M, cs.N, cs.K, 10);
      }
      char shape[64], op[8];
      std::snprintf(shape, sizeof shape, "%lldx%lldx%lld", (long long)cs.M, (long long)cs.N, (long long)cs.K);
      std::snprintf(op, sizeof op, "%s%s", tA ? "AT" : "A", tB ? "BT" : "B");
      std::printf("%-18s %-6s %12.1f %12.1f\n", shape, op, g[0], g[1]);
      std::fflush(stdout);
    }
  }
  ssd::set_num_threads(0);
}

}  // namespace

int main(int argc, char** argv) {
  std::string mode = argc > 1 ? argv[1] : "all";
  if (mode == "test" || mode == "all") run_tests();
  if (mode == "bench" || mode == "all") {
    std::vector<Case> shapes;
    if (argc >= 5) shapes.push_back({std::atoll(argv[2]), std::atoll(argv[3]), std::atoll(argv[4])});
    else shapes = {{1024, 1024, 1024}, {2048, 3072, 768}, {2048, 768, 3072}, {768, 3072, 2048}, {2048, 768, 768}};
    run_bench(shapes);
  }
  return g_fail ? 1 : 0;
}
