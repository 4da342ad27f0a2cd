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

// Output of a rejected cell (issue 5: finite and realizable whatever the input): zeros when any
// value of F is not finite; otherwise each species with n = max(n, 0) and, where |F| > n, its flux
// scaled onto the cone (|F| <= n). A finite realizable input is returned unchanged. Components
// are lab-frame: the cone n >= |F| is Lorentz invariant, so the result is realizable in every
// frame. The flux norm is computed without overflow (densities up to DBL_MAX).
void realizable_fallback(const double* F, double* out);

}  // namespace dodo
