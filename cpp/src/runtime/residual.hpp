// The learned correction after the network (physics.md sections 3-4; docs/model_package.md):
// head assembly, conservation projection, realizability limiter. Pure functions on one cell in
// the fluid rest frame, four-fluxes in units of the cell's N_tot (24 values, species-major).
#pragma once

#include <string>

namespace dodo::runtime {

enum class Head { kDirect, kEquivariant };

inline constexpr int kDirectOutputs = 24;
inline constexpr int kEquivariantOutputs = 78;  // c_ab (36), d_ab (36), e_a (6)

int head_output_size(Head head);
Head head_from_name(const std::string& name);  // throws std::invalid_argument
const char* head_name(Head head);

// dF_ml from the head's raw outputs (float, as the network wrote them).
// direct: the 24 numbers. equivariant: dF_a = sum_b c_ab F_b + sum_b d_ab dFbox_b + e_a u_rest,
// u_rest = (1, 0, 0, 0). F_init_rest and dF_box_rest are in units of N_tot.
void assemble_correction(Head head, const float* head_output, const double* F_init_rest, const double* dF_box_rest,
                         double* dF_ml);

// Orthogonal projection of 24 numbers onto the 14-dimensional subspace of conserving changes:
// sum_f dF_{s,f}^mu = 0 for s = nu, nubar and every mu, and dn_{nu,f} = dn_{nubar,f} per flavour.
// (Spatial parts: subtract the flavour mean per s; densities: average nu and nubar of each
// flavour, then subtract the flavour mean. The subspaces are nested, so this is the orthogonal
// projection.)
void project_conserving(double* dF);

// The realizability limiter is the core's: dodo::realizable_step (cpp/src/realizability.hpp).


}  // namespace dodo::runtime
