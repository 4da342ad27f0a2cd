// Checks of the caller's strided arrays before dodo_apply touches them (issue 11, item 10): the
// addresses must fit in the address space, no two output elements may share memory, and an output
// may not overlap an input except as exact in-place use (F_pred == F_init, same strides;
// for one cell the cell strides may differ).
#pragma once

#include <cstddef>
#include <cstdint>

#include "../box3d/box3d.hpp"

namespace dodo::runtime {

// Throws Error(DODO_ERROR_INVALID_ARGUMENT) naming the argument when the arrays of one
// dodo_apply call break the rules above. u.data and status may be null.
void check_apply_layout(std::size_t n, const ConstCellArray& F_init, const ConstVelocityArray& u,
                        const CellArray& F_pred, const std::uint32_t* status);

// The same rule for dodo_apply_diagnostics' per-cell outputs (n contiguous doubles each, either
// may be null): neither may overlap the other, F_pred, F_init, u or status.
void check_diagnostics_layout(std::size_t n, const ConstCellArray& F_init, const ConstVelocityArray& u,
                              const CellArray& F_pred, const std::uint32_t* status, const double* growth_rate,
                              const double* uncertainty);

}  // namespace dodo::runtime
