// Realizability of four-fluxes: n >= 0 and |F| <= n for every species (physics.md section 3).
#pragma once

namespace dodo {

// True when every species of the 24-value cell satisfies n >= 0 and |F| <= n.
bool cell_is_realizable(const double* F);

// Largest theta in [0, 1] such that every species of F_base + theta * dF is realizable (the
// limiter of physics.md section 3, used by Box3D and by the closure runtime). The realizable
// set is a convex cone, so the feasible thetas form an interval [0, theta_max]. A species of
// F_base already slightly outside (rounding, quadrature error) may not move further out. When
// theta_max < 1 a relative margin of 1e-12 of the density is kept so that later rounding (the
// boost back to the lab frame) cannot cross the boundary.
double realizable_step(const double* F_base, const double* dF);

}  // namespace dodo
