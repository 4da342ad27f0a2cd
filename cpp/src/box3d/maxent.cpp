#include "maxent.hpp"

#include <cmath>
#include <limits>

namespace dodo {
namespace {

// Langevin function L(Z) = coth Z - 1/Z and its derivative, accurate near Z = 0 where the
// closed form cancels: below Z = 0.3 use the Laurent series of coth (coefficients
// 2^{2n} B_{2n} / (2n)!), whose next omitted term is below 1e-16 relative there.
double langevin(double Z) {
  if (Z < 0.3) {
    const double Z2 = Z * Z;
    return Z * (1.0 / 3.0 +
                Z2 * (-1.0 / 45.0 +
                      Z2 * (2.0 / 945.0 +
                            Z2 * (-1.0 / 4725.0 +
                                  Z2 * (2.0 / 93555.0 + Z2 * (-1382.0 / 638512875.0 + Z2 * (4.0 / 18243225.0)))))));
  }
  // coth Z = 1 + 2/(e^{2Z} - 1), exact for large Z without overflow (expm1 -> inf gives 1).
  return 1.0 + 2.0 / std::expm1(2.0 * Z) - 1.0 / Z;
}

double langevin_derivative(double Z) {
  if (Z < 0.3) {
    const double Z2 = Z * Z;
    return 1.0 / 3.0 + Z2 * (-3.0 / 45.0 + Z2 * (10.0 / 945.0 + Z2 * (-7.0 / 4725.0 + Z2 * (18.0 / 93555.0))));
  }
  if (Z > 350.0) return 1.0 / (Z * Z);  // 1/sinh^2 underflows
  const double s = std::sinh(Z);
  return 1.0 / (Z * Z) - 1.0 / (s * s);
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
  for (int iteration = 0; iteration < 100; ++iteration) {
    const double residual = langevin(Z) - f;
    if (residual > 0.0) hi = Z; else lo = Z;
    double next = Z - residual / langevin_derivative(Z);
    if (!(next > lo && next < hi)) next = 0.5 * (lo + hi);
    if (std::fabs(next - Z) <= 4.0 * std::numeric_limits<double>::epsilon() * next) return next;
    Z = next;
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
