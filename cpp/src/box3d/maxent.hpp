// Maximum-entropy (Minerbo) angular reconstruction (physics.md section 2, step 1).
#pragma once

namespace dodo {

enum class ZMethod { kExact, kJedynak };

// Z solving coth(Z) - 1/Z = f (inverse Langevin), 0 <= f < 1.
double inverse_langevin_exact(double flux_factor);    // to machine precision
double inverse_langevin_jedynak(double flux_factor);  // Jedynak (2018) rational approximation
double inverse_langevin(double flux_factor, ZMethod method);

// Normalised shape Z/sinh(Z) exp(Z mu) written without overflow; 1 + Z mu for tiny Z.
// g(n_hat) = n/(4 pi) * maxent_shape(Z, F_hat . n_hat).
double maxent_shape(double Z, double mu);

}  // namespace dodo
