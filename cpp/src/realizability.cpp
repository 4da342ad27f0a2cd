#include "realizability.hpp"

#include <cfloat>
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

// |F| without overflow or underflow of the squares: scale by the largest component first.
inline double scaled_flux_norm(const double* species) {
  const double largest = std::fmax(std::fabs(species[1]), std::fmax(std::fabs(species[2]), std::fabs(species[3])));
  if (!(largest > 0.0)) return 0.0;
  const double x = species[1] / largest, y = species[2] / largest, z = species[3] / largest;
  return largest * std::sqrt(x * x + y * y + z * z);
}

}  // namespace

void realizable_fallback(const double* F, double* out) {
  bool finite = true;
  for (int v = 0; v < kCellValues; ++v) finite = finite && std::isfinite(F[v]);
  if (!finite) {
    for (int v = 0; v < kCellValues; ++v) out[v] = 0.0;
    return;
  }
  for (int a = 0; a < kSpecies; ++a) {
    const double* in = F + a * kComponents;
    double* species = out + a * kComponents;
    const double density = std::fmax(in[0], 0.0);
    const double flux = scaled_flux_norm(in);
    species[0] = density;
    if (flux <= density) {
      for (int m = 1; m < kComponents; ++m) species[m] = in[m];
      continue;
    }
    // Onto the cone, a few ulp inside so that rounding of the product cannot leave it. The unit
    // direction is scaled by the density: the ratio density/flux itself may be subnormal (n = 1e-16,
    // |F| = 1e300) and would lose its precision (fuzz_apply found |F| = 1.000000005 n that way).
    const double shrink = 1.0 - 4.0 * DBL_EPSILON;
    for (int m = 1; m < kComponents; ++m) species[m] = density > 0.0 ? (in[m] / flux) * density * shrink : 0.0;
    // Subnormal densities (no precision left to stay inside the cone), or rounding that still
    // leaves it: drop the flux.
    if (!(density >= DBL_MIN) || scaled_flux_norm(species) > density * shrink)
      for (int m = 1; m < kComponents; ++m) species[m] = 0.0;
  }
}

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
