// Host-side MoEfication helper: the balanced auction of src/moefy/auction.ts.
#pragma once
#include <cstdint>

namespace ssd {

// Bidding phases of the balanced auction: score (n, E) row-major; price (n) slot prices (E heaps of
// s = n / E slots, in/out); holder (n) out: the item holding each slot. ε starts at `eps` and is
// divided by `factor` (not below `eps_final`) after each phase until a phase ran at `eps_final`.
// Returns the number of bids. The caller validates n % E == 0, n, E >= 1 and finite scores and prices
// (src/moefy/auction.ts does).
int64_t balanced_auction(const double* score, int64_t n, int64_t E, double* price, int32_t* holder, double eps,
                         double eps_final, double factor);

}  // namespace ssd
