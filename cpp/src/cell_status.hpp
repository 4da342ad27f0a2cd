// Per-cell status bits, listed once (X-macro) and expanded into the enum and the name table.
#pragma once

#include <cstdint>

// X(name, bit value, rejects the cell (output = realizable fallback of the input)?, description)
#define DODO_CELL_STATUS_LIST(X)                                                                   \
  X(NO_CROSSING, 1u, false, "no ELN crossing between any flavour pair: stable, output = input")    \
  X(FLUX_FACTOR, 2u, true, "a species has flux factor |F|/n at or above the representable limit") \
  X(NEGATIVE_DENSITY, 4u, true, "a species has negative comoving number density")                  \
  X(NONFINITE, 8u, true, "NaN or Inf in the input four-fluxes or four-velocity, or a result beyond the double range") \
  X(ZERO_DENSITY, 16u, true, "total comoving number density N_tot is zero or below 1e-300 (vacuum: subnormal numbers cannot keep conservation)")                              \
  X(BAD_VELOCITY, 32u, true, "four-velocity not normalised (|u.u+1| > min(1e-6 max(1, u^t^2), 0.5)) or not future-directed") \
  X(BOX3D_LIMITED, 64u, false, "Box3D change scaled down to keep every species realizable")        \
  X(NETWORK_NONFINITE, 128u, false, "network output (or F_box + correction) not finite: Box3D result returned") \
  X(CORRECTION_LIMITED, 256u, false, "learned correction scaled down by the realizability limiter or the crossing-strength bound")

namespace dodo {

enum CellStatus : std::uint32_t {
  kCellOk = 0,
#define DODO_X(name, bit, rejects, text) kCell_##name = bit,
  DODO_CELL_STATUS_LIST(DODO_X)
#undef DODO_X
};

// Bits that mean the cell was rejected: its output is realizable_fallback(input) (realizability.hpp):
// the input when it is finite and realizable; zeros when it is not finite; otherwise negative
// densities set to 0 and fluxes scaled onto the cone |F| = n.
inline constexpr std::uint32_t kCellRejectedMask = 0u
#define DODO_X(name, bit, rejects, text) | ((rejects) ? (bit) : 0u)
    DODO_CELL_STATUS_LIST(DODO_X)
#undef DODO_X
    ;

}  // namespace dodo
