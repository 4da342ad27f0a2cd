#include "maxent.hpp"

#include <cmath>
#include <limits>

namespace dodo {
namespace {

// Langevin function L(Z) = coth Z - 1/Z and its derivative, accurate near Z = 0 where the
// closed form cancels: below Z = 0.3 use the Laurent series of coth (coefficients
// 2^{2n} B_{2n} / (2n)!), whose next omitted term is below 1e-16 relative there.
struct LangevinValue {
  double value;       // L(Z) = coth Z - 1/Z
  double derivative;  // L'(Z) = 1/Z^2 - 1/sinh^2 Z
};

// L and L' from one exponential. Below Z = 0.3 the closed forms cancel, so use the Laurent
// series of coth (coefficients 2^{2n} B_{2n} / (2n)!); the next omitted term is < 1e-16 there.
LangevinValue langevin(double Z) {
  if (Z < 0.3) {
    const double Z2 = Z * Z;
    const double value =
        Z * (1.0 / 3.0 +
             Z2 * (-1.0 / 45.0 +
                   Z2 * (2.0 / 945.0 +
                         Z2 * (-1.0 / 4725.0 +
                               Z2 * (2.0 / 93555.0 + Z2 * (-1382.0 / 638512875.0 + Z2 * (4.0 / 18243225.0)))))));
    const double derivative =
        1.0 / 3.0 + Z2 * (-3.0 / 45.0 + Z2 * (10.0 / 945.0 + Z2 * (-7.0 / 4725.0 + Z2 * (18.0 / 93555.0))));
    return {value, derivative};
  }
  // e = e^{2Z} - 1: coth Z = 1 + 2/e and 1/sinh^2 Z = 4 (e + 1)/e^2 (-> 0 when e overflows).
  const double e = std::expm1(2.0 * Z);
  const double inverse_Z = 1.0 / Z;
  const double inverse_sinh2 = std::isfinite(e) ? 4.0 * (e + 1.0) / (e * e) : 0.0;
  return {1.0 + 2.0 / e - inverse_Z, inverse_Z * inverse_Z - inverse_sinh2};
}

}  // namespace

double inverse_langevin_jedynak(double f) {
  // R. Jedynak, "New facts concerning the approximation of the inverse Langevin function",
  // J. Non-Newtonian Fluid Mech. 249, 8 (2017), eq. (16): the form used by the Rhea code.
  const double f2 = f * f;
  const double numerator = f * (3.0 + f2 * (-1.00651 + f2 * (-0.962251 + f2 * (1.47353 + f2 * (-0.48953)))));
  return numerator / ((1.0 - f) * (1.0 + 1.01524 * f));
}

double inverse_langevin_exact(double f) {
  if (!(f > 0.0)) return 0.0;
  if (f >= 1.0) return std::numeric_limits<double>::infinity();
  // Safeguarded Newton: L is increasing and concave on Z > 0, so keep a bracket [lo, hi]
  // and fall back to bisection whenever a Newton step leaves it.
  double lo = 0.0;
  double hi = 1.0 / (1.0 - f) + 1.0;  // L(Z) > 1 - 1/Z, so L(hi) > f
  double Z = inverse_langevin_jedynak(f);
  if (!(Z > lo && Z < hi)) Z = 0.5 * (lo + hi);
  // Quadratic convergence from Jedynak's start (relative error < 1e-2): once a step is below
  // 1e-9 relative, one more step reaches the rounding level of L itself.
  bool polishing = false;
  for (int iteration = 0; iteration < 60; ++iteration) {
    const LangevinValue L = langevin(Z);
    const double residual = L.value - f;
    if (residual > 0.0) hi = Z; else lo = Z;
    double next = Z - residual / L.derivative;
    if (!(next >= lo && next <= hi)) next = 0.5 * (lo + hi);
    const bool small_step = std::fabs(next - Z) <= 1e-9 * next;
    Z = next;
    if (polishing) break;
    polishing = small_step;
  }
  return Z;
}

double inverse_langevin(double f, ZMethod method) {
  return method == ZMethod::kJedynak ? inverse_langevin_jedynak(f) : inverse_langevin_exact(f);
}

double maxent_shape(double Z, double mu) {
  if (Z < 1e-8) return 1.0 + Z * mu;
  // Z/sinh(Z) exp(Z mu) = 2Z/(1 - e^{-2Z}) exp(Z (mu - 1)): no overflow for large Z.
  return 2.0 * Z / (-std::expm1(-2.0 * Z)) * std::exp(Z * (mu - 1.0));
}

}  // namespace dodo
