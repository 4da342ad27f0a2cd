// Pairwise Box3D in delta form (physics.md section 2; Richers et al., PRD 110, 103019 (2024)).
#pragma once

#include <algorithm>
#include <cstdint>
#include <limits>
#include <string>
#include <vector>

#include "../cell_status.hpp"
#include "../conventions.hpp"
#include "../frame.hpp"
#include "lebedev.hpp"
#include "maxent.hpp"

namespace dodo {

struct Box3DSettings {
  int lebedev_order = 17;
  ZMethod z_method = ZMethod::kExact;
  // Flux factors at or above this are not representable on the quadrature: the cell is flagged.
  double max_flux_factor = 0.98;
  // The stability screen decides most stable cells from their moments, with the answer the full
  // computation gives. False sends every cell through the full computation (the tests compare).
  bool screen_stable_cells = true;
};

// Result of one cell.
struct Box3DCell {
  CellFluxes F_box{};            // lab frame, caller's units
  double growth_over_ntot = 0;   // max over crossing pairs of sqrt(I+ I-) (rest frame, units of N_tot)
  double ntot = 0;               // comoving total number density N_tot = sum_a -F_a.u
  std::uint32_t status = kCellOk;
};

// A lobe of a pair's G = ELN_i - ELN_j counts (its integral I+ or I-) only above this fraction of
// the pair's own scale, n_i + nbar_i + n_j + nbar_j. Where the ELNs of two flavours agree as
// functions (isotropic species with equal lepton numbers, species equal up to the boost's last
// bits), G is rounding noise of a few ulp with both signs, ~1e-16 of that scale: read as a
// crossing, it set the 1/k mixing of every pair and equilibrated the pair by a ratio of two
// noise integrals, so the output changed with the input's last bits and its scale (an outside
// probe). A lobe below this is taken as empty: it neither crosses, nor adds to the growth proxy,
// nor shapes the crossing inputs. 1e-12 keeps four orders of magnitude above the noise.
inline constexpr double kLobeNoise = 1e-12;
// A moving cell's rest-frame fluxes carry the boost's rounding, ~W^2 eps of the densities (its
// components cancel terms of size W^2 n): an isotropic cell moving at W = 1000 read fluxes of 6e-11
// N_tot, lobes above kLobeNoise, and was mixed by 5% of N_tot (an outside probe, round 33). The
// bound is then kBoostLobeNoise W^2 of the pair's scale, over 30 times the noise measured there; it
// exceeds kLobeNoise only above W ~ 24, so a cell at a simulation's speeds gets the same bits.
inline constexpr double kBoostLobeNoise = 8.0 * std::numeric_limits<double>::epsilon();
// The lobe bound of a cell whose boost factor is W (1 at rest).
inline double lobe_noise(double W) { return std::max(kLobeNoise, kBoostLobeNoise * (W * W)); }

// Values of a cell's ELN-crossing shape (RestFrameCell::crossing): the network's 18, then the
// three pairs' fractions where G_p < 0.
inline constexpr int kCrossingShapeValues = kCrossingFeatures + kPairs;

// The rest-frame part of one cell: what Box3D computes before the boost back, shared with the
// closure runtime (which adds the learned correction there).
struct RestFrameCell {
  std::uint32_t status = kCellOk;  // rejected cells: the fields below are unspecified
  double ntot = 0;                 // comoving total number density N_tot
  double growth_over_ntot = 0;
  LorentzBoost boost;              // lab <-> rest frame of u (written, like dF, only for a cell
                                   // that goes through the angular computation)
  double F[kCellValues];           // F_init in the rest frame, units of N_tot (not written for a
                                   // cell the screen decides stable: NO_CROSSING without the
                                   // angular computation)
  double dF[kCellValues];          // Box3D's change there, units of N_tot (zeros when NO_CROSSING;
                                   // not written for a rejected cell or one the screen decides
                                   // stable, like F)
  // Only when asked for (rest_frame_cells' crossing_features) and the cell went through the
  // angular computation (not rejected, not decided stable by the screen): per flavour pair p,
  // crossing[6 p + k] = I+, I-, the solid-angle fraction where G_p > 0, |<n>+|, |<n>-| (the lengths
  // of the two lobes' weighted mean directions) and the cosine between those directions; then
  // crossing[kCrossingFeatures + p] = the solid-angle fraction where G_p < 0 (not a network input:
  // the fraction of the pair's mirror image G_p -> -G_p, for the closure's flavour symmetrisation).
  double crossing[kCrossingShapeValues];
};

// Strided view of a batch of cells: element (cell, species, component) lives at
// data[cell*cell_stride + species*species_stride + component*component_stride] (strides in elements).
struct CellArray {
  double* data = nullptr;
  std::ptrdiff_t cell_stride = kCellValues, species_stride = kComponents, component_stride = 1;
};
struct ConstCellArray {
  const double* data = nullptr;
  std::ptrdiff_t cell_stride = kCellValues, species_stride = kComponents, component_stride = 1;
};
struct ConstVelocityArray {
  const double* data = nullptr;  // nullptr: every cell at rest
  std::ptrdiff_t cell_stride = 4, component_stride = 1;
};

// Immutable after construction; apply_* are const and thread-safe; no allocation per cell.
class Box3D {
 public:
  explicit Box3D(const Box3DSettings& settings);  // throws std::invalid_argument on bad settings

  const Box3DSettings& settings() const { return settings_; }
  const LebedevRule& quadrature() const { return rule_; }

  // One cell: F_init (24 values, lab frame) and u (4 values, nullptr = rest frame).
  // A rejected cell (status & kCellRejectedMask) gets realizable_fallback(F_init): finite and
  // realizable whatever the input (the input itself when it is finite and realizable).
  void apply_cell(const double* F_init, const double* u, Box3DCell& out) const;

  // Checks and classifies one cell (lab frame F_init, u as above) and computes its rest-frame
  // pieces. The cell's output is then finalise_cell(F_init, boost, ntot, dF) (realizability.hpp)
  // unless it is rejected (realizable_fallback) or stable (F_init itself).
  void rest_frame_cell(const double* F_init, const double* u, RestFrameCell& out) const;
  // The same for n cells: F_init n x 24 and u n x 4 (nullptr: all at rest), contiguous. Faster
  // than n single calls: step 1 (the moments and the stability screen) runs across cells.
  // crossing_features: also fill out[i].crossing (the network inputs of feature sets with eln18).
  void rest_frame_cells(std::size_t n, const double* F_init, const double* u, RestFrameCell* out,
                        bool crossing_features = false) const;
  // rest_frame_cells works through blocks of this many cells: calls on consecutive runs of
  // whole blocks give the same results as one call on all of them.
  static constexpr std::size_t kBlockCells = 32;

  // Same computation in the fluid rest frame on normalised fluxes (sum of densities = 1),
  // returning the change dF (24 values, rest frame, units of N_tot). Used by the runtime.
  // Returns status bits (NO_CROSSING, FLUX_FACTOR); dF is zero when the cell is rejected.
  std::uint32_t rest_frame_change(const double* F_rest_normalised, double* dF, double* growth_over_ntot) const;

  // Batch over n cells, split over `threads` workers (0 or 1: the caller's thread).
  // Any of F_box/growth/ntot/status may be null when not wanted.
  void apply(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_box,
             double* growth_over_ntot, double* ntot, std::uint32_t* status, int threads) const;

 private:
  // Directions per vector register of the widest code path (AVX-512: 8 doubles).
  static constexpr std::size_t kDirectionLanes = 8;

  // Step 1 and the rest of up to a block of prepared cells (status kCellOk), whose normalised F
  // is value-major in `normalised` (kCellValues x kBlockCells; zeros for cells not kCellOk and
  // lanes past count); writes cells[c].F, dF and boost for the cells that go through the angular
  // computation (the boost from `boost`: W, vx, vy, vz, W^2/(W + 1), each kBlockCells values, as
  // the block preparation computed them; nullptr: the identity).
  void classify_block(std::size_t count, RestFrameCell* cells, const double* normalised, const double* boost,
                      bool crossing_features) const;

  Box3DSettings settings_;
  LebedevRule rule_;
  PairedRule paired_rule_;  // rule_ laid out for the direction loops
};

// The instruction set whose code path Box3D's kernels (and the closure's, DODO_MULTIVERSION) run on
// this CPU: "x86-64-v4" (AVX-512), "x86-64-v3" (AVX2 + FMA) or "baseline". Results agree across paths
// to rounding (~1e-15 N_tot), not bit for bit: outputs stored to the last bit hold on one path.
const char* box3d_instruction_set();

}  // namespace dodo
