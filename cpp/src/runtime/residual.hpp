// The learned correction after the network (physics.md sections 3-4; docs/model_package.md):
// head assembly, conservation projection, realizability limiter. Pure functions on one cell in
// the fluid rest frame, four-fluxes in units of the cell's N_tot (24 values, species-major).
#pragma once

#include <cstdint>
#include <cstring>
#include <string>

#include "../conventions.hpp"

namespace dodo::runtime {

enum class Head { kDirect, kEquivariant };

inline constexpr int kDirectOutputs = 24;
inline constexpr int kEquivariantOutputs = 78;  // c_ab (36), d_ab (36), e_a (6)

int head_output_size(Head head);
Head head_from_name(const std::string& name);  // throws std::invalid_argument
const char* head_name(Head head);

// True when an equivariant head output has every c_ab and d_ab zero (the density-residual
// ensemble's pattern): its correction changes the densities alone.
inline bool density_only_output(const float* head_output) {
  // On the bits without the sign (so -0 counts as 0, as == 0.0f says; NaN is not 0): an OR over
  // integers, which vectorises, where a chain of float compares did not.
  // Each value's bits read straight from the output (a copy of the whole block to the stack first
  // was read back stalled on store forwarding).
  std::uint32_t coupled = 0;
  for (int i = 0; i < 2 * kSpecies * kSpecies; ++i) {
    std::uint32_t bits;
    std::memcpy(&bits, head_output + i, sizeof bits);
    coupled |= bits & 0x7fffffffu;
  }
  return coupled == 0;
}

// dF_ml from the head's raw outputs (float, as the network wrote them).
// direct: the 24 numbers. equivariant: dF_a = sum_b c_ab F_b + sum_b d_ab dFbox_b + e_a u_rest,
// u_rest = (1, 0, 0, 0). F_init_rest and dF_box_rest are in units of N_tot.
// Inline (defined below): the closure inlines it into the instruction-set clones of its
// per-cell code (closure.cpp).
inline void assemble_correction(Head head, const float* head_output, const double* F_init_rest,
                                const double* dF_box_rest, double* dF_ml);

// Orthogonal projection of 24 numbers onto the 14-dimensional subspace of conserving changes:
// sum_f dF_{s,f}^mu = 0 for s = nu, nubar and every mu, and dn_{nu,f} = dn_{nubar,f} per flavour.
// (Spatial parts: subtract the flavour mean per s; densities: average nu and nubar of each
// flavour, then subtract the flavour mean. The subspaces are nested, so this is the orthogonal
// projection.)
inline void project_conserving(double* dF);

// The realizability limiter is the core's: dodo::realizable_step (cpp/src/realizability.hpp).

inline void assemble_correction(Head head, const float* head_output, const double* F_init_rest,
                                const double* dF_box_rest, double* dF_ml) {
  if (head == Head::kDirect) {
    for (int i = 0; i < kCellValues; ++i) dF_ml[i] = head_output[i];
    return;
  }
  const float* c = head_output;                    // c_ab, row-major
  const float* d = head_output + kSpecies * kSpecies;  // d_ab
  const float* e = head_output + 2 * kSpecies * kSpecies;  // e_a
  // A density-only output is e_a u_rest alone; skipping the 288 multiply-adds by zero gives the
  // same numbers.
  if (density_only_output(head_output)) {
    for (int a = 0; a < kSpecies; ++a) {
      dF_ml[value_index(a, 0)] = e[a];
      for (int m = 1; m < kComponents; ++m) dF_ml[value_index(a, m)] = 0.0;
    }
    return;
  }
  for (int a = 0; a < kSpecies; ++a) {
    double sum[kComponents] = {static_cast<double>(e[a]), 0.0, 0.0, 0.0};  // e_a u_rest
    for (int b = 0; b < kSpecies; ++b) {
      const double c_ab = c[a * kSpecies + b];
      const double d_ab = d[a * kSpecies + b];
      for (int m = 0; m < kComponents; ++m)
        sum[m] += c_ab * F_init_rest[value_index(b, m)] + d_ab * dF_box_rest[value_index(b, m)];
    }
    for (int m = 0; m < kComponents; ++m) dF_ml[value_index(a, m)] = sum[m];
  }
}

inline void project_conserving(double* dF) {
  // Spatial components: flavour sum zero per (s, component).
  for (int s = 0; s < 2; ++s) {
    for (int m = 1; m < kComponents; ++m) {
      double mean = 0;
      for (int f = 0; f < kFlavours; ++f) mean += dF[value_index(species_index(s, f), m)];
      mean /= kFlavours;
      for (int f = 0; f < kFlavours; ++f) dF[value_index(species_index(s, f), m)] -= mean;
    }
  }
  // Densities: lepton number per flavour (nu = nubar), then flavour sum zero.
  double common[kFlavours];
  double mean = 0;
  for (int f = 0; f < kFlavours; ++f) {
    common[f] = 0.5 * (dF[value_index(species_index(0, f), 0)] + dF[value_index(species_index(1, f), 0)]);
    mean += common[f];
  }
  mean /= kFlavours;
  for (int f = 0; f < kFlavours; ++f) {
    dF[value_index(species_index(0, f), 0)] = common[f] - mean;
    dF[value_index(species_index(1, f), 0)] = common[f] - mean;
  }
}

}  // namespace dodo::runtime
