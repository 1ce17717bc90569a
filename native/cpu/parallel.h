// A persistent thread pool and a static parallel_for.
// Work is split into contiguous chunks by index; the chunk a given index lands in never changes the
// arithmetic done for it, so results do not depend on the thread count as long as each index's
// computation is independent (reductions must use fixed blocking, not per-thread partials).
//
// Between jobs, workers (and the caller waiting for them) first spin for a short while, yielding the
// core to any other runnable thread (e.g. the OpenMP threads of a GEMM library), then sleep on a
// condition variable: waking a sleeping thread costs about 50 µs on a virtual machine, more than a
// whole decode-sized kernel, and back-to-back kernels (decode: ~100 per token) arrive within the spin.
// SSD_SPIN_US sets the spin time (default 200; 0 sleeps at once).
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <exception>
#include <functional>
#include <mutex>
#include <thread>
#include <vector>

namespace ssd {

class ThreadPool {
 public:
  explicit ThreadPool(int n);
  ~ThreadPool();
  ThreadPool(const ThreadPool&) = delete;
  ThreadPool& operator=(const ThreadPool&) = delete;

  int size() const { return n_; }
  // Changes the number of threads (>= 1). Must not be called from inside a parallel region.
  void resize(int n);

  // Runs fn(begin, end) over [0, total) split into at most size() contiguous chunks of at least
  // `grain` items; the calling thread takes chunk 0. Blocks until all chunks are done. Nested calls
  // (from inside a chunk) run inline; calls from several outside threads are serialised. An
  // exception thrown by a chunk is rethrown in the caller (after all chunks have finished).
  void parallel_for(int64_t total, int64_t grain, const std::function<void(int64_t, int64_t)>& fn);

  // True while the current thread executes a chunk of this pool.
  static bool in_parallel();

 private:
  void run_chunk(int64_t c);
  void loop(int t, uint64_t seen);
  void stop();

  int n_ = 1;
  std::vector<std::thread> workers_;
  std::mutex call_mu_;  // serialises top-level parallel_for calls and resize
  std::mutex mu_;
  std::condition_variable cv_, done_cv_;
  const std::function<void(int64_t, int64_t)>* job_ = nullptr;
  int64_t total_ = 0, chunks_ = 0;
  std::atomic<int> pending_{0};
  std::atomic<uint64_t> generation_{0};  // written under mu_, read by spinning threads without it
  std::atomic<bool> quit_{false};  // written under mu_, read by spinning workers without it
  std::exception_ptr error_;
};

// The process-wide pool (defined in parallel.cc); its initial size comes from SSD_THREADS or the
// core count.
ThreadPool& pool();

// Sets the pool size (n < 1: back to the default from SSD_THREADS / the core count).
void set_num_threads(int n);
int default_num_threads();

inline void parallel_for(int64_t total, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return;
  if (total <= grain || ThreadPool::in_parallel()) { fn(0, total); return; }
  pool().parallel_for(total, grain, fn);
}

}  // namespace ssd
