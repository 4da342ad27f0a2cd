// Realizability of four-fluxes: n >= 0 and |F| <= n for every species (physics.md section 3).
#pragma once

namespace dodo {

class LorentzBoost;

// True when none of the values is infinite or NaN: v - v is 0 for finite v and NaN otherwise,
// and a NaN survives the sums. Branch-free, 32 bytes of lanes at a time (four doubles, eight
// floats: the per-cell checks of the hot paths; floats: the network's head outputs).
template <typename T>
inline bool all_values_finite(const T* values, int count) {
  constexpr int kLanes = 32 / static_cast<int>(sizeof(T));
  T probe[kLanes] = {};
  int i = 0;
  for (; i + kLanes <= count; i += kLanes)
    for (int lane = 0; lane < kLanes; ++lane) probe[lane] += values[i + lane] - values[i + lane];
  for (; i < count; ++i) probe[0] += values[i] - values[i];
  T total = 0;
  for (int lane = 0; lane < kLanes; ++lane) total += probe[lane];
  return total == 0;
}

// True when every species of the 24-value cell satisfies n >= 0 and |F| <= n, |F| evaluated as
// sqrt(Fx^2 + Fy^2 + Fz^2) in double precision (after an exact power-of-two scaling where the
// squares would overflow or underflow): the test a host code applies.
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

// The one place where a computed cell gets its output (Box3D and the closure runtime, every
// language): F_out = F_init + (boost back of ntot * dF_rest), then clamp_to_cone. Returns false
// (F_out unspecified) when a value is not finite.
bool finalise_cell(const double* F_init, const LorentzBoost& boost, double ntot, const double* dF_rest,
                   double* F_out);

// Makes |F| <= n hold exactly in double precision (cell_is_realizable) for every species with
// n >= 0 that rounding left outside the cone (|F| > n by ~1e-16 n at rest, up to ~1e-10 n after
// a boost with W = 1e4): its flux is shrunk by a few ulp, and the flux taken off goes to the
// species of the same kind (nu or nubar) with the most room (two of equal room, as mu and tau of a
// cell with mu = tau, share it in halves, so that mu = tau stays bit for bit), so that the flavour
// sums of every component, which the closure conserves, keep their values to rounding. (With no room in the
// other two flavours the few-ulp remainder is dropped.) Returns true when anything changed.
bool clamp_to_cone(double* F);

}  // namespace dodo
