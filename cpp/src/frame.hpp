// Frames and invariants (physics.md sections 1 and 4).
#pragma once

#include <cstdint>

#include "conventions.hpp"

namespace dodo {

// |u.u + 1|, computed the one way every check uses (the Python API reports this number).
double four_velocity_norm_error(const double* u);
// True when u is finite, future-directed (u^t > 0) and four_velocity_norm_error(u) <=
// kVelocityNormTolerance: the one velocity check, shared by the C API and Python (issue 11.4).
bool is_valid_four_velocity(const double* u);

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

}  // namespace dodo
