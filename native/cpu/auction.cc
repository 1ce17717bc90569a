// Balanced assignment by the auction algorithm with ε-scaling (Bertsekas 1988; Bertsekas & Castañon
// 1989): the bidding phases of src/moefy/auction.ts, which documents the method and stays the
// reference. The same operations in the same order (there are no products to contract into fma), so
// the same prices, assignment and bid count to the bit.
#include "auction.h"

#include <immintrin.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

namespace ssd {

namespace {

constexpr double kNegInf = -std::numeric_limits<double>::infinity();

// max of v[0, n), n a multiple of 4 (no NaN: scores and prices are finite).
inline double max_of(const double* v, int64_t n) {
  __m256d m = _mm256_loadu_pd(v);
  for (int64_t j = 4; j < n; j += 4) m = _mm256_max_pd(m, _mm256_loadu_pd(v + j));
  const __m128d h = _mm_max_pd(_mm256_castpd256_pd128(m), _mm256_extractf128_pd(m, 1));
  return std::max(_mm_cvtsd_f64(h), _mm_cvtsd_f64(_mm_unpackhi_pd(h, h)));
}

// Moves the entry at heap position k of one cluster's slot heap down to its place. Floyd's variant:
// the hole walks the smaller-child path to a leaf without comparing (branch-free child choice), then
// the entry climbs back while the parent is >= it. The path's prices do not decrease, so the entry
// lands where the reference's sift-down puts it (after every price < it): the same heap, ties included.
void sift_down(double* price, int32_t* holder, int64_t s, int64_t k) {
  const double p = price[k];
  const int32_t h = holder[k];
  const int64_t top = k;
  for (;;) {
    const int64_t l = 2 * k + 1;
    if (l >= s) break;
    const int64_t c = l + (int64_t)(l + 1 < s && price[l + 1] < price[l]);
    price[k] = price[c];
    holder[k] = holder[c];
    k = c;
  }
  while (k > top) {
    const int64_t parent = (k - 1) / 2;
    if (!(price[parent] >= p)) break;
    price[k] = price[parent];
    holder[k] = holder[parent];
    k = parent;
  }
  price[k] = p;
  holder[k] = h;
}

}  // namespace

int64_t balanced_auction(const double* score, int64_t n, int64_t E, double* price, int32_t* holder, double eps,
                         double eps_final, double factor) {
  const int64_t s = n / E;
  const int64_t E4 = (E + 3) / 4 * 4;
  std::vector<double> cheapest((size_t)E), value((size_t)E4, kNegInf);  // value: padded with -inf
  std::vector<int32_t> queue;
  queue.reserve((size_t)n);
  int64_t bids = 0;
  for (;;) {
    std::fill(holder, holder + n, -1);
    for (int64_t j = 0; j < E; ++j) {
      for (int64_t k = s / 2 - 1; k >= 0; --k) sift_down(price + j * s, holder + j * s, s, k);
      cheapest[(size_t)j] = price[j * s];
    }
    queue.clear();
    for (int64_t i = n - 1; i >= 0; --i) queue.push_back((int32_t)i);
    while (!queue.empty()) {
      const int32_t i = queue.back();
      queue.pop_back();
      // The reference's sequential scan keeps the first index of the largest value and the largest of
      // the others (v2 = v1 on a tie): the same values, found branch-free 4 lanes at a time.
      const double* row = score + (int64_t)i * E;
      for (int64_t j = 0; j < E; ++j) value[(size_t)j] = row[j] - cheapest[(size_t)j];
      const double v1 = max_of(value.data(), E4);
      int64_t best = 0;
      while (best < E - 1 && value[(size_t)best] != v1) ++best;
      value[(size_t)best] = kNegInf;
      const double v2 = max_of(value.data(), E4);
      const int64_t root = best * s;
      const double gap = std::isfinite(v2) ? v1 - v2 : 0.0;
      const int32_t evicted = holder[root];
      price[root] = price[root] + gap + eps;
      holder[root] = i;
      ++bids;
      if (evicted >= 0) queue.push_back(evicted);
      sift_down(price + root, holder + root, s, 0);
      cheapest[(size_t)best] = price[root];
    }
    if (eps <= eps_final) break;
    eps = std::max(eps / factor, eps_final);
  }
  return bids;
}

}  // namespace ssd
