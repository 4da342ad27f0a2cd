// Conventions of the C++ core (physics.md section 1). The one owner in C++.
//
// Species a = 3*s + f, s in (nu, nubar), f in (e, mu, tau).
// Components (t, x, y, z): t is the number density, (x, y, z) the number flux (c = 1).
// Metric signature (-, +, +, +). A cell is 24 doubles: species-major, component-minor.
#pragma once

#include <array>
#include <cstddef>
#include <limits>

namespace dodo {

inline constexpr int kFlavours = 3;
inline constexpr int kSpecies = 6;
inline constexpr int kComponents = 4;
inline constexpr int kCellValues = kSpecies * kComponents;  // 24
inline constexpr int kInvariants = 27;                       // 6 comoving densities + 21 dot products
inline constexpr int kPairs = 3;
// ELN-crossing inputs of a feature set "...+eln18": six per flavour pair (box3d.hpp, crossing_features).
inline constexpr int kCrossingFeaturesPerPair = 6;
inline constexpr int kCrossingFeatures = kPairs * kCrossingFeaturesPerPair;  // 18

// Flavour pairs of pairwise Box3D: (e,mu), (e,tau), (mu,tau).
inline constexpr int kPairFirst[kPairs] = {0, 0, 1};
inline constexpr int kPairSecond[kPairs] = {1, 2, 2};

constexpr int species_index(int antineutrino, int flavour) { return 3 * antineutrino + flavour; }
constexpr int value_index(int species, int component) { return species * kComponents + component; }

// The sum of six per-species numbers (N_tot from the comoving densities) in an order that the
// flavour symmetries leave unchanged: (e + ebar) + ((mu + mubar) + (tau + taubar)). Exchanging mu
// and tau, or nu and nubar, only swaps the operands of single additions, which float addition does
// not notice, so a relabelled cell has the same N_tot to the last bit (summed in species order it
// differed by an ulp, which G = ELN_i - ELN_j of a weak-ELN cell turned into 1e-16/|ELN| of the
// crossing integrals: 3e-10 N_tot in Box3D, 7e-9 in the closure; found by an outside probe).
// T: double, or a vector of doubles (lanes = cells).
template <typename T>
inline T flavour_symmetric_sum(const T& e, const T& mu, const T& tau, const T& ebar, const T& mubar, const T& taubar) {
  return (e + ebar) + ((mu + mubar) + (tau + taubar));
}

// sqrt(2) G_F / hbar in cm^3/s: growth rate [1/s] = growth_over_ntot * N_tot[cm^-3] * this.
inline constexpr double kGrowthRatePerNtot = 1.9255e-22;

// A growth rate in s^-1 as reported: `rate`, except that a crossing cell's (growth_over_ntot > 0 at
// N_tot > 0) whose product rounded to 0 below the normal range (N_tot under ~1e-296 cm^-3, which
// a cell may still have) is the smallest positive double: 0 is the rate of a stable cell only
// (physics-law probe, round seven). Used by the closure and by dodo.box3d.
inline double growth_rate_never_rounded_to_zero(double rate, double growth_over_ntot, double ntot) {
  return (rate > 0.0 || !(growth_over_ntot > 0.0) || !(ntot > 0.0)) ? rate
                                                                       : std::numeric_limits<double>::denorm_min();
}

// Smallest comoving total density N_tot a cell may have; below it the cell is vacuum (status
// ZERO_DENSITY, returned unchanged): subnormal numbers cannot carry conservation to rounding.
inline constexpr double kSmallestNtot = 1e-300;

// |u.u + 1| above this times max(1, u^t^2) is not a four-velocity (relative to u^t^2: the rounding
// of u.u grows as W^2; frame.hpp, four_velocity_norm_tolerance).
inline constexpr double kVelocityNormTolerance = 1e-6;
// ... but never more than this: from u^t ~ 707 on, 1e-6 u^t^2 reached 1, and a null u (u.u = 0) or
// a spacelike one passed as a four-velocity (outside probe, round 29). With |u.u + 1| <= 0.5 every
// accepted u is timelike; a float64 (W, W v) rounds to that only past W ~ 5e7, a float32 one ~ 2e3.
inline constexpr double kVelocityNormToleranceCap = 0.5;

// Most threads a closure or Box3D batch may ask for, in every language; more are refused.
inline constexpr int kMaxThreads = 1024;

using FourVector = std::array<double, 4>;
using CellFluxes = std::array<double, kCellValues>;

// A.B with signature (-, +, +, +).
inline double minkowski_dot(const double* a, const double* b) {
  return -a[0] * b[0] + a[1] * b[1] + a[2] * b[2] + a[3] * b[3];
}

}  // namespace dodo
