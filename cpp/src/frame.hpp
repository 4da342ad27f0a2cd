// Frames and invariants (physics.md sections 1 and 4).
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>

#include "conventions.hpp"

namespace dodo {

// |u.u + 1|, computed the one way every check uses (the Python API reports this number).
double four_velocity_norm_error(const double* u);
// The largest |u.u + 1| accepted for a u with time component u0: kVelocityNormTolerance *
// max(1, u0^2) (rounding alone leaves |u.u + 1| ~ W^2 eps: a float32 u at v = 0.98, or a float64
// one at W = 1e5, was refused by an absolute 1e-6), at most kVelocityNormToleranceCap (so u.u < 0:
// timelike). Inline: the vectorised checks use it too.
inline double four_velocity_norm_tolerance(double u0) {
  const double W2 = u0 * u0;
  // u0 beyond ~1.3e154 overflows u0^2 to inf: the tolerance was inf, and the error |u.u + 1| (inf
  // for any u with a finite spatial part) passed it, so u = (1e160, 0, 0, 0), whose u.u is -1e320,
  // was taken for a unit vector (a degenerate boost, the cell flagged ZERO_DENSITY; round sixteen).
  // A finite cap keeps every finite tolerance's bits and makes that inf error fail. No unit vector
  // is lost: with u0^2 = inf, u.u = -1 needs |u_spatial|^2 = inf too, whose error is NaN already.
  constexpr double kLargest = std::numeric_limits<double>::max();
  const double capped = W2 < kLargest ? W2 : kLargest;
  const double tolerance = kVelocityNormTolerance * (capped > 1.0 ? capped : 1.0);
  return tolerance < kVelocityNormToleranceCap ? tolerance : kVelocityNormToleranceCap;
}
// True when u is finite, future-directed (u^t > 0) and four_velocity_norm_error(u) <=
// four_velocity_norm_tolerance(u): the one velocity check, shared by the C API and Python (issue 11.4).
bool is_valid_four_velocity(const double* u);
// is_valid_four_velocity of every row of u (n x 4), as one branch-free loop that vectorises:
// Python's up-front check of a batch, which every call makes.
bool all_valid_four_velocities(std::size_t n, const double* u);

// The pure boost between the lab frame and the rest frame of a four-velocity u, its coefficients
// computed once (per cell) and applied to many four-vectors. u = nullptr: identity.
class LorentzBoost {
 public:
  LorentzBoost() = default;  // the identity (inline: no call for every RestFrameCell)
  explicit LorentzBoost(const double* u);  // u = nullptr: the identity
  // Makes this the boost whose coefficients W, v = u_spatial/u^t and W^2/(W + 1) a caller
  // computed itself, by the constructor's formulas (Box3D does so for blocks of cells at once).
  // Assigned in place: a temporary copied into a RestFrameCell stalled on store forwarding.
  void set_coefficients(double W, double vx, double vy, double vz, double W2_over_W_plus_1) {
    identity_ = false;
    W_ = W;
    vx_ = vx;
    vy_ = vy;
    vz_ = vz;
    W2_over_W_plus_1_ = W2_over_W_plus_1;
  }
  void set_identity() { *this = LorentzBoost(); }
  void to_rest(const double* lab, double* rest) const { apply(1.0, lab, rest); }
  void from_rest(const double* rest, double* lab) const { apply(-1.0, rest, lab); }
  void cell_to_rest(const double* lab, double* rest) const {  // 6 species, 24 values
    for (int a = 0; a < kSpecies; ++a) apply(1.0, lab + a * kComponents, rest + a * kComponents);
  }
  void cell_from_rest(const double* rest, double* lab) const {
    for (int a = 0; a < kSpecies; ++a) apply(-1.0, rest + a * kComponents, lab + a * kComponents);
  }

 private:
  // F'^t = W (F^t - v.F), F' = F + (W^2/(W + 1) v.F - W F^t) v with v = sign * u_spatial / u^t.
  void apply(double sign, const double* in, double* out) const {
    if (identity_) {
      for (int m = 0; m < 4; ++m) out[m] = in[m];
      return;
    }
    const double vx = sign * vx_, vy = sign * vy_, vz = sign * vz_;
    const double vF = vx * in[1] + vy * in[2] + vz * in[3];
    const double coefficient = W2_over_W_plus_1_ * vF - W_ * in[0];
    out[0] = W_ * (in[0] - vF);
    out[1] = in[1] + coefficient * vx;
    out[2] = in[2] + coefficient * vy;
    out[3] = in[3] + coefficient * vz;
  }
  bool identity_ = true;
  double W_ = 1.0, vx_ = 0.0, vy_ = 0.0, vz_ = 0.0, W2_over_W_plus_1_ = 0.5;
};

// Pure boost of a four-vector into the rest frame of u (and back). u = nullptr: identity.
void boost_to_rest(const double* u, const double* lab, double* rest);
void boost_from_rest(const double* u, const double* rest, double* lab);
// All 6 species of a cell (24 values).
void boost_cell_to_rest(const double* u, const double* lab, double* rest);
void boost_cell_from_rest(const double* u, const double* rest, double* lab);

// N_tot = sum_a -F_a.u.
double comoving_total_density(const double* F, const double* u);

// The 27 invariants: x_a = -F_a.u / N_tot (6), F_a.F_b / N_tot^2 for a <= b (21, row-major).
// Returns false (and writes zeros) when N_tot is not positive and finite.
bool invariants(const double* F, const double* u, double* out27);

// The same 27 invariants from the cell in the fluid rest frame in units of N_tot (as Box3D
// computes it): x_a = F_a^t, then the 21 products. Equal to invariants() up to rounding.
void rest_frame_invariants(const double* F_rest_normalised, double* out27);
// The same, each value rounded to float (the network's input row: the closure runtime).
void rest_frame_invariants(const double* F_rest_normalised, float* out27);
// The float invariants of the relabelled cell whose species a is F's species species[a] (a
// permutation; {0, ..., 5}: the cell itself), the same bits as rest_frame_invariants of the
// relabelled copy, without the copy (the closure's flavour images).
void relabelled_invariants(const double* F_rest_normalised, const int* species, float* out27);

}  // namespace dodo
