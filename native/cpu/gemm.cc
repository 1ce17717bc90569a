// GEMM provider selection. Libraries are loaded at run time with dlopen, never linked, so the addon
// builds and runs without them.
#include "gemm.h"

#include <dlfcn.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>

#include "gemm_own.h"
#include "gemm_small.h"
#include "parallel.h"

namespace ssd {

namespace {

using dnnl_sgemm_t = int (*)(char, char, int64_t, int64_t, int64_t, float, const float*, int64_t, const float*,
                             int64_t, float, float*, int64_t);
struct dnnl_version_t_ {
  int major, minor, patch;
  const char* hash;
  unsigned cpu_runtime, gpu_runtime;
};
using dnnl_version_fn = const dnnl_version_t_* (*)();
using omp_set_num_threads_t = void (*)(int);

// CBLAS enums
enum { CblasRowMajor = 101 };
enum { CblasNoTrans = 111, CblasTrans = 112 };
using cblas_sgemm_t = void (*)(int, int, int, int, int, int, float, const float*, int, const float*, int, float,
                               float*, int);
using openblas_set_num_threads_t = void (*)(int);
using openblas_get_config_t = char* (*)();

enum Provider { P_NONE = -1, P_ONEDNN = 0, P_OPENBLAS = 1, P_OWN = 2 };

struct State {
  std::mutex mu;
  bool inited = false;
  Provider cur = P_NONE;
  // oneDNN
  bool dnnl_tried = false;
  void* dnnl_lib = nullptr;
  dnnl_sgemm_t dnnl_sgemm = nullptr;
  omp_set_num_threads_t omp_set_num_threads = nullptr;
  std::string dnnl_version;
  // OpenBLAS
  bool oblas_tried = false;
  void* oblas_lib = nullptr;
  cblas_sgemm_t cblas_sgemm = nullptr;
  openblas_set_num_threads_t openblas_set_num_threads = nullptr;
  std::string oblas_version;
  int threads = 0;
};

State& st() {
  static State s;
  return s;
}

bool load_onednn(State& s) {
  if (s.dnnl_tried) return s.dnnl_sgemm != nullptr;
  s.dnnl_tried = true;
  // Keep idle OpenMP threads from spinning for long after each GEMM: they would steal the cores our
  // own pool needs for the next kernel. Respect explicit user settings.
  setenv("GOMP_SPINCOUNT", "10000", 0);
  const char* names[] = {"libdnnl.so.3", "libdnnl.so.2"};
  for (const char* n : names) {
    void* h = dlopen(n, RTLD_NOW | RTLD_LOCAL);
    if (!h) continue;
    auto f = (dnnl_sgemm_t)dlsym(h, "dnnl_sgemm");
    if (!f) {
      dlclose(h);
      continue;
    }
    s.dnnl_lib = h;
    s.dnnl_sgemm = f;
    auto ver = (dnnl_version_fn)dlsym(h, "dnnl_version");
    if (ver) {
      const dnnl_version_t_* v = ver();
      char buf[64];
      snprintf(buf, sizeof buf, "%d.%d.%d", v->major, v->minor, v->patch);
      s.dnnl_version = buf;
    } else {
      s.dnnl_version = n[12] == '3' ? "3" : "2";
    }
    // dlsym on a handle also searches the library's dependencies (libgomp).
    s.omp_set_num_threads = (omp_set_num_threads_t)dlsym(h, "omp_set_num_threads");
    if (!s.omp_set_num_threads) s.omp_set_num_threads = (omp_set_num_threads_t)dlsym(RTLD_DEFAULT, "omp_set_num_threads");
    return true;
  }
  return false;
}

bool load_openblas(State& s) {
  if (s.oblas_tried) return s.cblas_sgemm != nullptr;
  s.oblas_tried = true;
  // OpenBLAS 0.3.21 misdetects recent AMD CPUs with AVX-512 and falls back to a slow kernel.
  if (cpu_has_avx512() && !getenv("OPENBLAS_CORETYPE")) setenv("OPENBLAS_CORETYPE", "SkylakeX", 1);
  void* h = dlopen("libopenblas.so.0", RTLD_NOW | RTLD_LOCAL);
  if (!h) return false;
  auto f = (cblas_sgemm_t)dlsym(h, "cblas_sgemm");
  if (!f) {
    dlclose(h);
    return false;
  }
  s.oblas_lib = h;
  s.cblas_sgemm = f;
  s.openblas_set_num_threads = (openblas_set_num_threads_t)dlsym(h, "openblas_set_num_threads");
  auto cfg = (openblas_get_config_t)dlsym(h, "openblas_get_config");
  s.oblas_version = "?";
  if (cfg) {
    // e.g. "OpenBLAS 0.3.21 DYNAMIC_ARCH NO_AFFINITY SkylakeX MAX_THREADS=64"
    const char* c = cfg();
    const char* p = c ? strstr(c, "OpenBLAS ") : nullptr;
    if (p) {
      p += 9;
      const char* e = p;
      while (*e && *e != ' ') ++e;
      s.oblas_version.assign(p, e);
    }
  }
  return true;
}

bool load(State& s, Provider p) {
  switch (p) {
    case P_ONEDNN: return load_onednn(s);
    case P_OPENBLAS: return load_openblas(s);
    case P_OWN: return true;
    default: return false;
  }
}

void apply_threads(State& s) {
  int n = pool().size();
  s.threads = n;
  if (s.cur == P_ONEDNN && s.omp_set_num_threads) s.omp_set_num_threads(n);
  if (s.cur == P_OPENBLAS && s.openblas_set_num_threads) s.openblas_set_num_threads(n);
}

Provider parse(const std::string& name) {
  if (name == "onednn" || name == "dnnl") return P_ONEDNN;
  if (name == "openblas") return P_OPENBLAS;
  if (name == "own") return P_OWN;
  return P_NONE;
}

void init_locked(State& s) {
  if (s.inited) return;
  const char* env = getenv("SSD_GEMM");
  if (env && *env) {
    Provider p = parse(env);
    if (p == P_NONE) throw std::runtime_error(std::string("SSD_GEMM=") + env + ": unknown GEMM provider (use onednn, openblas or own)");
    if (!load(s, p)) throw std::runtime_error(std::string("SSD_GEMM=") + env + ": provider could not be loaded");
    s.cur = p;
  } else if (load(s, P_ONEDNN)) {
    s.cur = P_ONEDNN;
  } else if (load(s, P_OPENBLAS)) {
    s.cur = P_OPENBLAS;
  } else {
    s.cur = P_OWN;
  }
  s.inited = true;
  apply_threads(s);
}

// Portable fallback for CPUs without AVX-512 (the own kernel needs it): rows of C in parallel with a
// packed op(B); only used with SSD_GEMM=own or when neither library is available.
void sgemm_portable(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A,
                    int64_t lda, const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  std::vector<float> Bp;
  const float* Bk = B;
  int64_t ldbk = ldb;
  if (transB) {
    Bp.resize((size_t)(K * N));
    for (int64_t j = 0; j < N; ++j)
      for (int64_t k = 0; k < K; ++k) Bp[(size_t)(k * N + j)] = B[j * ldb + k];
    Bk = Bp.data();
    ldbk = N;
  }
  parallel_for(M, 4, [&](int64_t i0, int64_t i1) {
    std::vector<float> acc((size_t)N);
    for (int64_t i = i0; i < i1; ++i) {
      for (int64_t j = 0; j < N; ++j) acc[(size_t)j] = 0.f;
      for (int64_t k = 0; k < K; ++k) {
        float a = transA ? A[k * lda + i] : A[i * lda + k];
        const float* b = Bk + k * ldbk;
        float* ac = acc.data();
        for (int64_t j = 0; j < N; ++j) ac[j] = std::fma(a, b[j], ac[j]);
      }
      float* c = C + i * ldc;
      if (beta == 0.f) {
        for (int64_t j = 0; j < N; ++j) c[j] = alpha * acc[(size_t)j];
      } else {
        for (int64_t j = 0; j < N; ++j) c[j] = alpha * acc[(size_t)j] + beta * c[j];
      }
    }
  });
}

}  // namespace

bool cpu_has_avx512() {
  static const bool has = [] {
    const char* off = getenv("SSD_NO_AVX512");  // testing switch: force the AVX2 / portable paths
    if (off && *off && strcmp(off, "0") != 0) return false;
    __builtin_cpu_init();
    return __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bw") &&
           __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512dq") && __builtin_cpu_supports("fma");
  }();
  return has;
}

void gemm_init() {
  State& s = st();
  std::lock_guard<std::mutex> g(s.mu);
  init_locked(s);
}

std::string gemm_provider() {
  State& s = st();
  std::lock_guard<std::mutex> g(s.mu);
  init_locked(s);
  switch (s.cur) {
    case P_ONEDNN: return "onednn " + s.dnnl_version;
    case P_OPENBLAS: return "openblas " + s.oblas_version;
    default: return cpu_has_avx512() ? "own-avx512" : "own-portable";
  }
}

std::vector<std::string> gemm_available() {
  State& s = st();
  std::lock_guard<std::mutex> g(s.mu);
  std::vector<std::string> r;
  if (load(s, P_ONEDNN)) r.push_back("onednn");
  if (load(s, P_OPENBLAS)) r.push_back("openblas");
  r.push_back("own");
  return r;
}

void gemm_set_provider(const std::string& name) {
  State& s = st();
  std::lock_guard<std::mutex> g(s.mu);
  Provider p = parse(name);
  if (p == P_NONE) throw std::runtime_error("unknown GEMM provider '" + name + "' (use onednn, openblas or own)");
  if (!load(s, p)) throw std::runtime_error("GEMM provider '" + name + "' could not be loaded");
  s.inited = true;
  s.cur = p;
  apply_threads(s);
}

void gemm_set_threads(int) {
  State& s = st();
  std::lock_guard<std::mutex> g(s.mu);
  if (!s.inited) return;  // applied at init
  apply_threads(s);
}

void sgemm(bool transA, bool transB, int64_t M, int64_t N, int64_t K, float alpha, const float* A, int64_t lda,
           const float* B, int64_t ldb, float beta, float* C, int64_t ldc) {
  if (M <= 0 || N <= 0) return;
  if (K <= 0) {
    for (int64_t i = 0; i < M; ++i) {
      float* c = C + i * ldc;
      if (beta == 0.f) {
        for (int64_t j = 0; j < N; ++j) c[j] = 0.f;
      } else if (beta != 1.f) {
        for (int64_t j = 0; j < N; ++j) c[j] *= beta;
      }
    }
    return;
  }
  if (M <= kSmallM && cpu_has_avx512()) {
    // Decode-sized products are memory-bound: the small-M kernel streams B once (any provider).
    const SmallGemm p{M, N, K, A, lda, B, ldb, C, ldc};
    sgemm_small_grouped(transA, transB, &p, 1, alpha, beta);
    return;
  }
  State& s = st();
  if (!s.inited) gemm_init();
  if (s.threads != pool().size()) gemm_set_threads(pool().size());
  switch (s.cur) {
    case P_ONEDNN: {
      int rc = s.dnnl_sgemm(transA ? 'T' : 'N', transB ? 'T' : 'N', M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      if (rc != 0) throw std::runtime_error("dnnl_sgemm failed with status " + std::to_string(rc));
      return;
    }
    case P_OPENBLAS: {
      if (M > INT32_MAX || N > INT32_MAX || K > INT32_MAX || lda > INT32_MAX || ldb > INT32_MAX || ldc > INT32_MAX)
        throw std::runtime_error("openblas sgemm: dimensions exceed 32-bit range");
      s.cblas_sgemm(CblasRowMajor, transA ? CblasTrans : CblasNoTrans, transB ? CblasTrans : CblasNoTrans, (int)M, (int)N,
                    (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
      return;
    }
    default:
      if (cpu_has_avx512())
        sgemm_own(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      else
        sgemm_portable(transA, transB, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
      return;
  }
}

}  // namespace ssd
