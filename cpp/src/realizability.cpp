#include "realizability.hpp"

#include <cmath>

#include "conventions.hpp"

namespace dodo {
namespace {

inline double flux_norm(const double* species) {
  return std::sqrt(species[1] * species[1] + species[2] * species[2] + species[3] * species[3]);
}

// Slack of a species at step theta, with the margin: (1 - margin) n - |F| (>= 0 is admissible).
inline double slack(const double* base, const double* change, double theta, double margin) {
  double shifted[4];
  for (int m = 0; m < 4; ++m) shifted[m] = base[m] + theta * change[m];
  return (1.0 - margin) * shifted[0] - flux_norm(shifted);
}

}  // namespace

bool cell_is_realizable(const double* F) {
  for (int a = 0; a < kSpecies; ++a) {
    const double* species = F + a * kComponents;
    if (!(species[0] >= 0.0) || flux_norm(species) > species[0]) return false;
  }
  return true;
}

double realizable_step(const double* F_base, const double* dF) {
  constexpr double kMargin = 1e-12;
  double theta = 1.0;
  for (int a = 0; a < kSpecies; ++a) {
    const double* base = F_base + a * kComponents;
    const double* change = dF + a * kComponents;
    // A species already (slightly) outside the cone may not move further out.
    const double floor = std::fmin(0.0, slack(base, change, 0.0, 0.0));
    if (slack(base, change, theta, 0.0) >= floor) continue;
    // The slack is concave in theta and admissible at 0: bisect for its last admissible point.
    double lo = 0.0, hi = theta;
    for (int iteration = 0; iteration < 64 && hi - lo > 1e-17; ++iteration) {
      const double mid = 0.5 * (lo + hi);
      if (slack(base, change, mid, kMargin) >= floor) lo = mid; else hi = mid;
    }
    theta = lo;
  }
  return theta;
}

}  // namespace dodo
