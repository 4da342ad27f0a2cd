#include "maxent.hpp"

#include <cmath>
#include <limits>

#include "langevin_kernel.hpp"

namespace dodo {

double inverse_langevin_jedynak(double f) { return jedynak_inverse_langevin(f); }

double inverse_langevin_exact(double f) {
  if (!(f > 0.0)) return 0.0;
  if (f >= 1.0) return std::numeric_limits<double>::infinity();
  return halley_inverse_langevin(f);
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
