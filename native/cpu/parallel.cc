#include "parallel.h"

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <sched.h>

namespace ssd {

namespace {
thread_local bool t_in_parallel = false;

// Spin budget before sleeping (SSD_SPIN_US, microseconds).
std::chrono::microseconds spin_budget() {
  static const std::chrono::microseconds us = [] {
    const char* env = std::getenv("SSD_SPIN_US");
    return std::chrono::microseconds(env && *env ? std::max(0, std::atoi(env)) : 200);
  }();
  return us;
}

// Spins until done() or the budget runs out, yielding the core to other runnable threads.
// Returns done().
template <class F>
bool spin_until(F done) {
  if (done()) return true;
  const auto budget = spin_budget();
  if (budget.count() == 0) return false;
  const auto end = std::chrono::steady_clock::now() + budget;
  for (uint64_t i = 1;; ++i) {
    if (done()) return true;
    if ((i & 63) == 0) {
      if (std::chrono::steady_clock::now() > end) return done();
      sched_yield();
    }
  }
}

struct InParallel {
  bool prev;
  InParallel() : prev(t_in_parallel) { t_in_parallel = true; }
  ~InParallel() { t_in_parallel = prev; }
};
}  // namespace

bool ThreadPool::in_parallel() { return t_in_parallel; }

ThreadPool::ThreadPool(int n) { resize(n); }
ThreadPool::~ThreadPool() { stop(); }

void ThreadPool::resize(int n) {
  if (n < 1) n = 1;
  if (n > 1024) n = 1024;
  std::lock_guard<std::mutex> call(call_mu_);
  if (n == n_ && (int)workers_.size() == n_ - 1) return;
  stop();
  {
    std::lock_guard<std::mutex> g(mu_);
    n_ = n;
    quit_ = false;
    chunks_ = 0;
  }
  uint64_t gen;
  {
    std::lock_guard<std::mutex> g(mu_);
    gen = generation_.load();
  }
  for (int t = 1; t < n_; ++t) workers_.emplace_back([this, t, gen] { loop(t, gen); });
}

void ThreadPool::parallel_for(int64_t total, int64_t grain, const std::function<void(int64_t, int64_t)>& fn) {
  if (total <= 0) return;
  if (grain < 1) grain = 1;
  if (t_in_parallel) { fn(0, total); return; }  // nested: inline
  std::lock_guard<std::mutex> call(call_mu_);
  int64_t chunks = (total + grain - 1) / grain;
  if (chunks > n_) chunks = n_;
  if (chunks <= 1) {
    InParallel ip;
    fn(0, total);
    return;
  }
  {
    std::lock_guard<std::mutex> lk(mu_);
    job_ = &fn;
    total_ = total;
    chunks_ = chunks;
    pending_ = (int)chunks - 1;
    error_ = nullptr;
    ++generation_;
  }
  cv_.notify_all();
  std::exception_ptr mine;
  {
    InParallel ip;
    try {
      run_chunk(0);
    } catch (...) {
      mine = std::current_exception();
    }
  }
  std::exception_ptr err;
  spin_until([this] { return pending_.load(std::memory_order_acquire) == 0; });
  {
    std::unique_lock<std::mutex> lk(mu_);
    done_cv_.wait(lk, [this] { return pending_.load() == 0; });
    job_ = nullptr;
    chunks_ = 0;
    err = error_;
    error_ = nullptr;
  }
  if (mine) std::rethrow_exception(mine);
  if (err) std::rethrow_exception(err);
}

void ThreadPool::run_chunk(int64_t c) {
  int64_t b = total_ * c / chunks_, e = total_ * (c + 1) / chunks_;
  if (b < e) (*job_)(b, e);
}

void ThreadPool::loop(int t, uint64_t seen) {
  t_in_parallel = true;
  for (;;) {
    bool mine;
    spin_until([&] { return quit_.load(std::memory_order_relaxed) || generation_.load(std::memory_order_acquire) != seen; });
    {
      std::unique_lock<std::mutex> lk(mu_);
      cv_.wait(lk, [&] { return quit_ || generation_.load() != seen; });
      if (quit_) return;
      seen = generation_.load();
      mine = t < chunks_;
    }
    if (mine) {
      std::exception_ptr err;
      try {
        run_chunk(t);
      } catch (...) {
        err = std::current_exception();
      }
      std::lock_guard<std::mutex> g(mu_);
      if (err && !error_) error_ = err;
      if (pending_.fetch_sub(1, std::memory_order_acq_rel) == 1) done_cv_.notify_one();
    }
  }
}

void ThreadPool::stop() {
  {
    std::lock_guard<std::mutex> g(mu_);
    quit_ = true;
  }
  cv_.notify_all();
  for (auto& w : workers_) w.join();
  workers_.clear();
}

int default_num_threads() {
  const char* env = std::getenv("SSD_THREADS");
  if (env && *env) {
    int n = std::atoi(env);
    if (n >= 1) return n;
  }
  unsigned hc = std::thread::hardware_concurrency();
  return hc ? (int)hc : 1;
}

ThreadPool& pool() {
  static ThreadPool p(default_num_threads());
  return p;
}

void set_num_threads(int n) { pool().resize(n < 1 ? default_num_threads() : n); }

}  // namespace ssd
