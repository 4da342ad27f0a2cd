#include "closure.hpp"

#include <algorithm>
#include <condition_variable>
#include <cstring>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <exception>
#include <limits>
#include <new>
#include <optional>
#include <tuple>

#include <unistd.h>

#include "../box3d/lebedev.hpp"
#include "../frame.hpp"
#include "../multiversion.hpp"
#include "../process_identity.hpp"
#include "../realizability.hpp"
#include "../thread_start.hpp"
#include "errors.hpp"
#include "flavour_symmetry.hpp"
#include "memory_limit.hpp"
#include "residual.hpp"

namespace dodo::runtime {

// A network cell's flavour images (flavour_symmetry.hpp): their weights (0: not evaluated) and
// network rows (the mu <-> tau image of a cell that is its own shares its partner's row).
struct CellImages {
  ImageWeights weights;
  std::uint32_t row[kFlavourImages];
};

// Scratch for one chunk: the lab inputs gathered from the caller's strides and the rest-frame
// pieces of each cell (Box3D's, reused by the head), and the network's buffers. Sized once for
// chunk_size cells, with network rows for each cell's flavour images (flavour_symmetry.hpp).
struct Closure::Workspace {
  explicit Workspace(std::size_t chunk_size, const OnnxModel* model)
      : F_init(chunk_size * kCellValues), u(chunk_size * 4), cells(chunk_size), network_row(chunk_size),
        images(chunk_size) {
    if (model)
      network = std::make_unique<EvaluationBuffers>(model->api(), chunk_size * kFlavourImages, model->input_size(),
                                                    model->output_size(), model->optional_outputs());
  }
  std::vector<double> F_init;
  std::vector<double> u;
  std::vector<RestFrameCell> cells;
  std::vector<std::uint32_t> network_row;  // row of the cell in the network's input (cells that need it)
  std::vector<CellImages> images;          // with flavour images: their rows and weights
  std::unique_ptr<EvaluationBuffers> network;
};

// The workspaces of one process (closure.hpp, Workspaces).
struct Closure::WorkspacePool {
  const ProcessIdentity owner;  // not the process id alone: ids are reused (process_identity.hpp)
  std::mutex mutex;
  std::condition_variable released;  // a workspace came back (acquire_workspace's wait)
  std::vector<std::unique_ptr<Workspace>> all;
  std::vector<Workspace*> free;
};

Closure::WorkspacePool& Closure::Workspaces::for_this_process() {
  WorkspacePool* current = pool.load(std::memory_order_acquire);
  if (current && current->owner.is_this_process()) return *current;
  // Construction, or the first chunk in a child of fork(): a pool of this process's own (the
  // parent's is abandoned: its lock may be held by a thread that does not exist here).
  WorkspacePool* fresh = new WorkspacePool;
  if (pool.compare_exchange_strong(current, fresh, std::memory_order_acq_rel)) return *fresh;
  delete fresh;  // another thread of this process was first; `current` now holds its pool
  return *current;
}

Closure::Workspaces::~Workspaces() {
  WorkspacePool* current = pool.load();
  if (current && current->owner.is_this_process()) delete current;
}

// One apply() call as seen by the chunks.
struct Closure::Batch {
  const Closure* closure;
  std::size_t n;
  ConstCellArray F_init;
  ConstVelocityArray u;
  CellArray F_pred;
  std::uint32_t* status;
  CellDiagnostics diagnostics;
  // First failure of any chunk (an ORT error); reported after the batch.
  std::mutex error_mutex;
  std::exception_ptr error;
  // Average the network over the cell's flavour images (every call but the self-test, which checks
  // the package's network as exported).
  bool flavour_images = true;
  // Add the batch's cells and events to the counters (every call but the self-test: the counters
  // describe the caller's cells only).
  bool counted = true;
};

namespace {

ClosureOptions checked(const ClosureOptions& options) {
  if (options.threads < 0 || options.threads > kMaxThreads)
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "threads must lie in [0, " + std::to_string(kMaxThreads) + "]; got " +
                                                 std::to_string(options.threads));
  if (options.chunk_size < 1 || options.chunk_size > (1 << 20))
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "chunk_size must lie in [1, 1048576]; got " + std::to_string(options.chunk_size));
  // Written so that NaN fails it too (it passed `< 0 || >= 1`, then the model check, and a closure
  // with a model silently took the model's value for it).
  // Each refusal names the value given, as threads' and chunk_size's do (probe round thirteen of
  // the C side: a host reading it from an input deck could not see what it had passed).
  if (!(options.box3d.max_flux_factor >= 0 && options.box3d.max_flux_factor < 1)) {
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "max_flux_factor must lie in (0, 1), or 0 for the model's; got " +
                                                 number_text(options.box3d.max_flux_factor));
  }
  if (options.box3d.lebedev_order < 0)
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "lebedev_order must be positive, or 0 for the model's; got " +
                                                 std::to_string(options.box3d.lebedev_order));
  // A value the library does not know is refused as such before any model is read: with a model a
  // z_method typo ("Exact") or an order it lacks (5) came back as DODO_ERROR_MODEL_METADATA, "model
  // \"dodo.box3d\" z_method is \"exact\" but z_method \"Exact\" was requested", the package blamed
  // for the host's typo, where Box3D alone named it (outside probe of the C side, round fourteen).
  if (!options.box3d.z_method.empty()) z_method_from_name(options.box3d.z_method);
  if (options.box3d.lebedev_order > 0) {
    const std::vector<int> orders = available_lebedev_orders();
    if (std::find(orders.begin(), orders.end(), options.box3d.lebedev_order) == orders.end()) {
      std::string known;
      for (int order : orders) known += " " + std::to_string(order);
      throw Error(DODO_ERROR_INVALID_ARGUMENT, "Box3D settings: lebedev_order " +
                                                   std::to_string(options.box3d.lebedev_order) +
                                                   " is not available; available orders:" + known);
    }
  }
  return options;
}

std::unique_ptr<const Box3D> make_box3d(const Box3DSettings& settings) {
  try {
    return std::make_unique<const Box3D>(settings);
  } catch (const std::invalid_argument& error) {
    throw Error(DODO_ERROR_INVALID_ARGUMENT, std::string("Box3D settings: ") + error.what());
  }
}

// Growth rate (units of N_tot) and uncertainty of a cell from its network outputs `log_ratio` and
// `spread` (null where the model lacks that output, which leaves `growth` (the proxy) or
// `uncertainty` (0) as they are). False when an output is not finite or the rate overflows: the
// cell's network output is then void.
bool learned_diagnostics(const float* log_ratio, const float* spread, double proxy, double ntot, double& growth,
                         double& uncertainty) {
  if (log_ratio) {
    if (!std::isfinite(*log_ratio)) return false;
    growth = proxy * std::exp(static_cast<double>(*log_ratio));
    if (!std::isfinite(growth * (ntot * kGrowthRatePerNtot))) return false;
  }
  if (spread) {
    if (!std::isfinite(*spread)) return false;
    uncertainty = *spread;
  }
  return true;
}

// A network cell's outputs in its own labelling: with flavour images, the blend of its images'
// outputs (each mapped back by head_to_cell); without, row `row` itself. `head` points to
// head_output_size(head) floats: the network's own row where the cell's one image is itself (most
// cells), else `blended`; log_ratio and spread are left alone where the model lacks them.
struct CellNetworkOutput {
  const float* head;
  float blended[kEquivariantOutputs];
  float log_ratio, spread;
  bool coupled_zero = false;  // blended's c_ab, d_ab are all 0 (kept from cell to cell: not refilled)
};

// known_density_only: every row is density-only or non-finite (OnnxModel::density_only_rows).
void cell_network_output(const EvaluationBuffers& network, Head head, std::size_t row, const CellImages* images,
                         bool known_density_only, CellNetworkOutput& out) {
  const int size = head_output_size(head);
  const float* log_ratio = network.log_growth_ratio();
  const float* spread = network.uncertainty();
  const auto single = [&](std::size_t r, int g) {
    if (g == 0) {
      out.head = network.output_row(r);
    } else {
      out.coupled_zero = head_to_cell(head, network.output_row(r), g, out.blended, out.coupled_zero, known_density_only);
      out.head = out.blended;
    }
    if (log_ratio) out.log_ratio = log_ratio[r];
    if (spread) out.spread = spread[r];
  };
  if (!images) return single(row, 0);
  const double* w = images->weights.weight;
  // One image of weight 1 (most cells): its outputs mapped back, nothing to blend.
  if (images->weights.single >= 0) return single(images->row[images->weights.single], images->weights.single);
  float mapped[kFlavourImages][kEquivariantOutputs];
  float log_ratios[kFlavourImages] = {}, spreads[kFlavourImages] = {};
  const float* head_of[kFlavourImages];
  bool density_only = head == Head::kEquivariant;
  for (int g = 0; g < kFlavourImages; ++g) {
    head_of[g] = mapped[g];
    if (!(w[g] > 0.0)) continue;
    const std::size_t r = images->row[g];
    density_only = head_to_cell(head, network.output_row(r), g, mapped[g], false, known_density_only) && density_only;
    if (log_ratio) log_ratios[g] = log_ratio[r];
    if (spread) spreads[g] = spread[r];
  }
  // Density-only outputs (every c_ab, d_ab 0: the density-residual models) blend their e_a alone.
  const int first = density_only ? 2 * kSpecies * kSpecies : 0;
  if (!(density_only && out.coupled_zero)) std::fill(out.blended, out.blended + first, 0.0f);
  for (int k = first; k < size; ++k) out.blended[k] = static_cast<float>(image_blend(w, head_of, k));
  out.coupled_zero = density_only;
  out.head = out.blended;
  const float* log_ratio_of[kFlavourImages] = {&log_ratios[0], &log_ratios[1], &log_ratios[2], &log_ratios[3]};
  const float* spread_of[kFlavourImages] = {&spreads[0], &spreads[1], &spreads[2], &spreads[3]};
  if (log_ratio) out.log_ratio = static_cast<float>(image_blend(w, log_ratio_of, 0));
  if (spread) out.spread = static_cast<float>(image_blend(w, spread_of, 0));
}

// The 24 values of a cell, as inline moves: a library memmove call per cell costs more than the
// copy itself, and the stable cells of a grid are mostly copies.
inline void copy_cell(const double* from, double* to) {
  double values[kCellValues];
  for (int v = 0; v < kCellValues; ++v) values[v] = from[v];
  for (int v = 0; v < kCellValues; ++v) to[v] = values[v];
}

// A growth rate in s^-1 from a rate in units of N_tot: growth_over_ntot * (N_tot * kGrowthRatePerNtot),
// as before for every result in the normal range. Below it (N_tot under ~1e-280 cm^-3, a cell
// the closure still accepts down to N_tot = 1e-300) the product was rounded to the subnormal grid
// or to 0: a crossing cell reported growth_rate 0, which the spec and the docs give to stable
// cells only (physics-law probe, round seven). There the rate is recomputed as
// (growth_over_ntot * N_tot) * kGrowthRatePerNtot (one rounding less into the subnormal range) and
// a positive rate never becomes 0: the smallest positive double stands for one below it.
inline double growth_rate_in_per_second(double growth_over_ntot, double ntot, double rate_per_ntot) {
  const double rate = growth_over_ntot * rate_per_ntot;
  if (!(rate < DBL_MIN) || !(growth_over_ntot > 0.0) || !(ntot > 0.0)) return rate;
  const double recomputed = (growth_over_ntot * ntot) * kGrowthRatePerNtot;
  return growth_rate_never_rounded_to_zero(recomputed, growth_over_ntot, ntot);
}

// A stable cell's diagnostics (as the general path below writes them): growth 0, Box3D's proxy
// (0 for a cell without crossing), no uncertainty.
inline void write_stable_diagnostics(const CellDiagnostics& out, std::size_t cell, const RestFrameCell& rest) {
  const double rate_per_ntot = rest.ntot * kGrowthRatePerNtot;
  if (out.growth_over_ntot) out.growth_over_ntot[cell] = 0.0;
  if (out.growth_rate) out.growth_rate[cell] = 0.0 * rate_per_ntot;
  if (out.growth_over_ntot_proxy) out.growth_over_ntot_proxy[cell] = rest.growth_over_ntot;
  // A stable cell's proxy is 0 (no pair crosses), so growth_rate_in_per_second has nothing to do here.
  if (out.growth_rate_proxy) out.growth_rate_proxy[cell] = rest.growth_over_ntot * rate_per_ntot;
  if (out.uncertainty) out.uncertainty[cell] = 0.0;
}

// The stable cells (NO_CROSSING) of a block of `count` cells, for a contiguous output: each cell's
// input F (24 values a cell) copied to the caller's array at cell `first + i` (an exact in-place
// call copies each onto itself), its status and diagnostics (write_stable_diagnostics); returns
// how many. One body per instruction set and out of line: a cell's copy is a few whole-vector
// moves (inlined into process_chunk's baseline code it went through the stack, two 16-byte moves
// per 16 bytes, most of a stable cell's time in this file).
DODO_MULTIVERSION __attribute__((noinline)) std::size_t finish_stable_cells(
    const RestFrameCell* cells, std::size_t count, const double* F, std::size_t first, double* F_pred,
    std::ptrdiff_t cell_stride, std::uint32_t* status, const CellDiagnostics& diagnostics) {
  // A local copy of the diagnostics' pointers: the stores through them cannot alias it, so its
  // loads and tests leave the loop (through the caller's struct they were repeated every cell).
  const CellDiagnostics local = diagnostics;
  std::size_t stable = 0;
  for (std::size_t i = 0; i < count; ++i) {
    const RestFrameCell& rest = cells[i];
    if (rest.status != kCell_NO_CROSSING) continue;
    const std::size_t cell = first + i;
    const double* from = F + i * kCellValues;
    double* to = F_pred + static_cast<std::ptrdiff_t>(cell) * cell_stride;
#if DODO_MULTIVERSION_ENABLED
    // Six loads, then six stores, in registers (copy_cell's array went through the stack).
    // (Named, not an array: an array of them stayed two loops through the stack.)
    typedef double Doubles4 __attribute__((vector_size(32)));
    static_assert(kCellValues == 24, "six vectors a cell");
    Doubles4 v0, v1, v2, v3, v4, v5;
    std::memcpy(&v0, from, sizeof v0);
    std::memcpy(&v1, from + 4, sizeof v1);
    std::memcpy(&v2, from + 8, sizeof v2);
    std::memcpy(&v3, from + 12, sizeof v3);
    std::memcpy(&v4, from + 16, sizeof v4);
    std::memcpy(&v5, from + 20, sizeof v5);
    std::memcpy(to, &v0, sizeof v0);
    std::memcpy(to + 4, &v1, sizeof v1);
    std::memcpy(to + 8, &v2, sizeof v2);
    std::memcpy(to + 12, &v3, sizeof v3);
    std::memcpy(to + 16, &v4, sizeof v4);
    std::memcpy(to + 20, &v5, sizeof v5);
#else
    copy_cell(from, to);
#endif
    if (status) status[cell] = rest.status;
    write_stable_diagnostics(local, cell, rest);
    ++stable;
  }
  return stable;
}

// The learned change of a cell is at most kLearnedChangePerProxy times Box3D's growth proxy
// sqrt(I+ I-) (units of N_tot), per species: on each species the larger of |dn| and |flux change|.
// On the 102,986 training and 1,021 held-out solver states of the default model's families the
// solver's own departure from Box3D is at most 3.5 times the proxy (the model's at most 2.6), so the
// bound never acts there; it acts where no solver state exists, on crossings far weaker than any
// the campaign could simulate (proxy < 0.0056), where the network extrapolated a change of 3e-2
// N_tot onto a crossing of 1e-12 (outside probe, physics round ten): the correction then fades with
// the crossing, continuously, toward Box3D. A common factor on the conserving change keeps
// conservation, and F_box + s c lies between two realizable states (the cone is convex).
constexpr double kLearnedChangePerProxy = 4.0;

// The factor (<= 1) that brings a learned change within the bound; 1 when it is within already.
// largest: the largest per-species size of the change (see above).
inline double crossing_bound_factor(double largest, double growth_over_ntot) {
  const double bound = kLearnedChangePerProxy * growth_over_ntot;
  return largest > bound ? bound / largest : 1.0;
}

// The learned part of a cell whose head output changes densities only (every c_ab and d_ab 0: the
// density-residual ensemble's pattern) and whose whole step is admissible, the common case: the
// operations of assemble_correction, project_conserving and realizable_step's quick accept on the
// six densities in registers, so the same bits as the general path below, without writing the
// 24-value correction and reading it back (each pass stalled on store forwarding). False, with
// `change` unwritten, for any other cell: the general path takes it. known_density_only: the
// output is density-only by construction (its check skipped).
inline bool density_only_change(const float* head_output, const RestFrameCell& rest, double* change,
                                bool known_density_only, bool& bounded) {
  if (!known_density_only && !density_only_output(head_output)) return false;
  const float* e = head_output + 2 * kSpecies * kSpecies;
  double common[kFlavours], mean = 0;
  for (int f = 0; f < kFlavours; ++f) {
    common[f] = 0.5 * (static_cast<double>(e[species_index(0, f)]) + static_cast<double>(e[species_index(1, f)]));
    mean += common[f];
  }
  mean /= kFlavours;
  double dn[kSpecies];
  for (int f = 0; f < kFlavours; ++f) dn[species_index(0, f)] = dn[species_index(1, f)] = common[f] - mean;
  double largest = 0.0;
  for (int a = 0; a < kSpecies; ++a) largest = std::max(largest, std::fabs(dn[a]));
  const double factor = crossing_bound_factor(largest, rest.growth_over_ntot);
  bounded = factor < 1.0;
  if (bounded)
    for (int a = 0; a < kSpecies; ++a) dn[a] *= factor;
  // both_ends_inside (realizability.cpp) at F_box and F_box + correction. The correction's spatial
  // components are +0 after the projection, so both ends have the same squared flux (x + 0 is x,
  // or +0 for x = -0: the same square).
#if DODO_MULTIVERSION_ENABLED
  // Four species side by side (species 4, 5 twice in the second group): each species' F_box is
  // one vector add, its squares one multiply; a transpose gives the lanes' n0^2, x^2, y^2, z^2
  // columns, summed in the scalar order. The same operations on the same numbers: the same bits
  // and the same decision (a scalar pass with its spills was most of this function's time).
  typedef double Doubles4 __attribute__((vector_size(32)));
  typedef long long Lanes4 __attribute__((vector_size(32)));
  Doubles4 box[kSpecies];
  for (int a = 0; a < kSpecies; ++a) {
    Doubles4 F, dF;
    std::memcpy(&F, rest.F + a * kComponents, sizeof F);
    std::memcpy(&dF, rest.dF + a * kComponents, sizeof dF);
    box[a] = F + dF;
  }
  const Doubles4 limit = Doubles4{} + (1.0 - 8.0 * DBL_EPSILON), zero = Doubles4{};
  Lanes4 outside = Lanes4{};
  const auto check = [&](const Doubles4& s0, const Doubles4& s1, const Doubles4& s2, const Doubles4& s3,
                         const Doubles4& dn4) {
    const Doubles4 q0 = s0 * s0, q1 = s1 * s1, q2 = s2 * s2, q3 = s3 * s3;
    const Doubles4 t0 = __builtin_shuffle(q0, q1, Lanes4{0, 4, 2, 6}), t1 = __builtin_shuffle(q0, q1, Lanes4{1, 5, 3, 7});
    const Doubles4 t2 = __builtin_shuffle(q2, q3, Lanes4{0, 4, 2, 6}), t3 = __builtin_shuffle(q2, q3, Lanes4{1, 5, 3, 7});
    const Doubles4 n0_squared = __builtin_shuffle(t0, t2, Lanes4{0, 1, 4, 5});
    const Doubles4 x2 = __builtin_shuffle(t1, t3, Lanes4{0, 1, 4, 5}), y2 = __builtin_shuffle(t0, t2, Lanes4{2, 3, 6, 7});
    const Doubles4 z2 = __builtin_shuffle(t1, t3, Lanes4{2, 3, 6, 7});
    const Doubles4 u0 = __builtin_shuffle(s0, s1, Lanes4{0, 4, 2, 6}), u2 = __builtin_shuffle(s2, s3, Lanes4{0, 4, 2, 6});
    const Doubles4 n0 = __builtin_shuffle(u0, u2, Lanes4{0, 1, 4, 5});
    const Doubles4 n1 = n0 + dn4;
    const Doubles4 flux = (x2 + y2) + z2;
    outside |= ~((n0 >= zero) & (n1 >= zero) & (flux <= limit * n0_squared) & (flux <= limit * (n1 * n1)));
  };
  static_assert(species_index(0, 0) == 0 && species_index(1, 0) == 3 && kSpecies == 6, "dn of species 0-5");
  const Doubles4 dn_first = {dn[0], dn[1], dn[2], dn[3]}, dn_last = {dn[4], dn[5], dn[4], dn[5]};
  check(box[0], box[1], box[2], box[3], dn_first);
  check(box[4], box[5], box[4], box[5], dn_last);
  if ((outside[0] | outside[1] | outside[2] | outside[3]) != 0) return false;
  // The scalar path's dF + 1.0 dn and dF + 1.0 * 0.0 (so -0 becomes +0), a vector per species.
  for (int a = 0; a < kSpecies; ++a) {
    Doubles4 dF;
    std::memcpy(&dF, rest.dF + a * kComponents, sizeof dF);
    const Doubles4 sum = dF + Doubles4{dn[a], 0.0, 0.0, 0.0};
    std::memcpy(change + a * kComponents, &sum, sizeof sum);
  }
  return true;
#else
  bool inside = true;
  for (int a = 0; a < kSpecies; ++a) {
    const double* F = rest.F + a * kComponents;
    const double* dF = rest.dF + a * kComponents;
    const double n0 = F[0] + dF[0], x0 = F[1] + dF[1], y0 = F[2] + dF[2], z0 = F[3] + dF[3];
    const double n1 = n0 + dn[a];
    const double flux = x0 * x0 + y0 * y0 + z0 * z0;
    inside = inside & (n0 >= 0.0) & (n1 >= 0.0) & (flux <= (1.0 - 8.0 * DBL_EPSILON) * (n0 * n0)) &
             (flux <= (1.0 - 8.0 * DBL_EPSILON) * (n1 * n1));
  }
  if (!inside) return false;
  for (int a = 0; a < kSpecies; ++a) {
    change[value_index(a, 0)] = rest.dF[value_index(a, 0)] + 1.0 * dn[a];
    for (int m = 1; m < kComponents; ++m) change[value_index(a, m)] = rest.dF[value_index(a, m)] + 1.0 * 0.0;
  }
  return true;
#endif
}

// The learned part of a crossing cell in its rest frame (units of N_tot): the head's correction,
// projected onto the conserving changes and limited to the realizable cone, added to Box3D's
// change. Returns kCell_NETWORK_NONFINITE (change not written) or kCell_CORRECTION_LIMITED or 0.
// Cloned per instruction set like Box3D's kernel, with the head and the projection inlined; this
// file is compiled with -ffp-contract=off, so every clone gives the baseline build's bits.
// known_density_only: the evaluator writes density-only rows (OnnxModel::density_only_rows), whose
// 78 values are finite exactly when their six e_a are: only those are tested, and the 72 zeros
// are not checked (perf: the two 78-value passes took 2% of the closure's time).
DODO_MULTIVERSION
std::uint32_t learned_change(Head head, const float* head_output, const RestFrameCell& rest, double* change,
                             bool known_density_only) {
  // The correction is finite exactly when the head's outputs are (it is a sum of a dozen
  // products of them with the cell's finite values in units of N_tot, far from overflow). Tested
  // on the network's floats: reading the correction's doubles back as vectors right after its
  // scalar stores stalled on store forwarding (measured: half of this function's time).
  const bool known = known_density_only && head == Head::kEquivariant;
  if (known) {
    // all_values_finite's test on the six e_a, as six terms in one sum (its eight-lane form cost
    // four times as much for six values).
    const float* e = head_output + 2 * kSpecies * kSpecies;
    float probe = 0.0f;
    for (int a = 0; a < kSpecies; ++a) probe += e[a] - e[a];
    if (!(probe == 0.0f)) return kCell_NETWORK_NONFINITE;
  } else if (!all_values_finite(head_output, head_output_size(head))) {
    return kCell_NETWORK_NONFINITE;
  }
  bool bounded = false;
  if (head == Head::kEquivariant && density_only_change(head_output, rest, change, known, bounded))
    return bounded ? kCell_CORRECTION_LIMITED : 0u;
  double correction[kCellValues];
  assemble_correction(head, head_output, rest.F, rest.dF, correction);
  project_conserving(correction);
  double largest = 0.0;
  for (int a = 0; a < kSpecies; ++a) {
    const double* c = correction + a * kComponents;
    largest = std::max(largest, std::max(std::fabs(c[0]), std::sqrt(c[1] * c[1] + c[2] * c[2] + c[3] * c[3])));
  }
  const double factor = crossing_bound_factor(largest, rest.growth_over_ntot);
  bounded = factor < 1.0;
  if (bounded)
    for (int v = 0; v < kCellValues; ++v) correction[v] *= factor;
  double F_box_rest[kCellValues];
  for (int v = 0; v < kCellValues; ++v) F_box_rest[v] = rest.F[v] + rest.dF[v];
  const double theta = realizable_step(F_box_rest, correction);
  for (int v = 0; v < kCellValues; ++v) change[v] = rest.dF[v] + theta * correction[v];
  return theta < 1.0 || bounded ? kCell_CORRECTION_LIMITED : 0u;
}

// Bytes of one thread's workspace for chunk_size cells (Workspace and its network buffers).
std::size_t workspace_bytes(std::size_t chunk_size, const OnnxModel* model) {
  std::size_t per_cell = sizeof(double) * (kCellValues + 4) + sizeof(RestFrameCell) + sizeof(std::uint32_t) +
                         sizeof(CellImages);
  if (model)
    per_cell += kFlavourImages * sizeof(float) *
                static_cast<std::size_t>(model->input_size() + model->output_size() + 2);
  return chunk_size * per_cell;
}

// The workspaces are made (and touched) at construction: threads x chunk_size cells beyond the
// memory the process may use would end in the kernel's out-of-memory killer, not in an error, so
// they are refused first. That memory is the machine's, or less where a control group confines
// the process (a batch system's job, a container): physical memory alone let a job under a cgroup
// limit be killed (outside probe, round twelve of the C side). The estimate leaves out ONNX
// Runtime's arena, so it errs toward allowing.
void refuse_workspaces_beyond_memory(std::size_t chunk_size, int threads, const OnnxModel* model) {
  const double memory = usable_memory_bytes();
  if (!std::isfinite(memory)) return;  // unknown: the allocation's own bad_alloc remains
  const double needed = static_cast<double>(workspace_bytes(chunk_size, model)) * std::max(threads, 1);
  if (needed <= memory) return;
  throw Error(DODO_ERROR_OUT_OF_MEMORY,
              std::to_string(std::max(threads, 1)) + " thread(s) x chunk_size " + std::to_string(chunk_size) + " need " +
                  number_text(needed / (1 << 30), 1, true) + " GiB of workspaces, more than this machine's " +
                  number_text(memory / (1 << 30), 1, true) +
                  " GiB of memory (its physical memory, or the process's control-group limit where lower): lower "
                  "chunk_size or threads");
}

}  // namespace

Closure::Closure(const std::string& model_path, const ClosureOptions& options)
    : chunk_size_(checked(options).chunk_size), pool_(options.threads) {
  // An empty path is a mistake (an unset parameter), never a request for Box3D alone (issue 11.15).
  if (model_path.empty())
    throw Error(DODO_ERROR_INVALID_ARGUMENT, std::string("empty model path: give a model package, or \"") +
                                                 DODO_BOX3D_ONLY + "\" for Box3D without a learned correction");
  if (model_path == DODO_BOX3D_ONLY) {
    initialise(nullptr, "", PackageOrigin::kFile, options);
    return;
  }
  // Read before ONNX Runtime is loaded, so that a missing file is reported as such.
  const std::string bytes = read_model_file(model_path);
  const std::string_view view(bytes);
  initialise(&view, "model file " + quoted_path(model_path), PackageOrigin::kFile, options);
}

Closure::Closure(ModelInMemory model, const ClosureOptions& options)
    : chunk_size_(checked(options).chunk_size), pool_(options.threads) {
  // The host's bytes are read three times (the digests with the metadata, ONNX Runtime's parse, the
  // native network's weights), so they are copied once, as a file's are read once: the digests
  // then vouch for exactly what the other two read, even if the host's buffer changes during the
  // call (a thread of its own, a file mapped MAP_SHARED that another process rewrites; probe round
  // seventeen: a byte changed between the digest and the parse was loaded). A size above the bound
  // is not copied: OnnxModel refuses it by its size without reading it.
  const std::string source =
      "model in memory (" + std::to_string(model.bytes.size()) + (model.bytes.size() == 1 ? " byte)" : " bytes)");
  if (model.bytes.size() > DODO_MAX_MODEL_FILE_BYTES) {
    initialise(&model.bytes, source, PackageOrigin::kMemory, options);
    return;
  }
  // Said what needed the memory: a copy that did not fit (an address-space limit a few MB above the
  // host) was "out of memory (the address-space limit ...)" alone, naming nothing (outside probe, C
  // round forty-six), where a file's read says "not enough memory to read model file".
  std::string copy;
  try {
    copy.assign(model.bytes);
  } catch (const std::bad_alloc&) {
    throw Error(DODO_ERROR_OUT_OF_MEMORY, source + ": not enough memory for libdodo's copy of them (made at the "
                                              "start, so that every check reads the bytes that load): " +
                                              memory_shortage_cause(static_cast<double>(model.bytes.size())));
  }
  const std::string_view view(copy);
  initialise(&view, source, PackageOrigin::kMemory, options);
}

void Closure::initialise(const std::string_view* bytes, const std::string& source, PackageOrigin origin,
                         const ClosureOptions& options) {
  // The device is checked whether or not a model is given (probe round twenty-five: a closure
  // without a model took device "tpu" silently), with the wording the model path gives.
  const DeviceSelection device = parse_device(options.device);
  if (!bytes) {
    box3d_ = make_box3d(box3d_settings_without_model(options.box3d));
  } else {
    // ONNX Runtime starts threads of its own while it is loaded and a session made: they inherit
    // this mask, so a signal sent to the process is never given to one of them.
    std::optional<AsyncSignalsBlocked> library_threads(std::in_place);
    const OrtLibrary& library = load_onnxruntime(options.onnxruntime_library);
    onnxruntime_path_ = library.path;
    onnxruntime_version_ = library.version;
    // DODO_NETWORK_EVALUATOR=onnxruntime does for C, C++ and Fortran callers (and "auto" callers
    // in Python) what the option does: the graph in ONNX Runtime, whatever the package describes.
    std::string evaluator = options.evaluator;
    const char* from_environment = std::getenv("DODO_NETWORK_EVALUATOR");
    if (evaluator == "auto" && from_environment && *from_environment) evaluator = from_environment;
    if (evaluator != "auto" && evaluator != "onnxruntime")
      throw Error(DODO_ERROR_INVALID_ARGUMENT, "unknown network evaluator " + quoted_value(evaluator) +  // bounded (C round 26)
                                                   " (known: \"auto\", \"onnxruntime\"; option or DODO_NETWORK_EVALUATOR)");
    model_ = std::make_unique<OnnxModel>(library, *bytes, source, origin, device, evaluator == "auto");
    library_threads.reset();
    metadata_ = model_->metadata();
    try {
      description_ = describe_model(metadata_, model_->output_size(), options.box3d);
      // The test vectors are the package's proof that it computes what it was exported to
      // compute (issue 11, item 13): without them only an explicit development opt-out loads it.
      const char* allow = std::getenv(kAllowUntestedModelVariable);
      if (description_.test_vectors.cells == 0 && !(allow && std::string(allow) == "1"))
        throw Error(DODO_ERROR_MODEL_METADATA,
                    std::string("model package carries no test vectors (\"dodo.test_vectors\" missing or empty), so "
                                "nothing shows that it computes what it was exported to compute; re-export it with "
                                "`dodo export` (development only: set ") +
                        kAllowUntestedModelVariable + "=1 to load it anyway)");
    } catch (const Error& error) {
      throw Error(error.status(), source + ": " + error.what());
    }
    box3d_ = make_box3d(description_.box3d);
  }
  // Warm-up: one workspace per thread, and one network call each so ORT sizes its arena now.
  refuse_workspaces_beyond_memory(static_cast<std::size_t>(chunk_size_), pool_.threads(), model_.get());
  WorkspacePool& workspaces = workspaces_.for_this_process();
  // Workers that started under an address-space limit (ulimit -v) take its room for their stacks:
  // threads 16 under the process's size + 100,000 kB started 6 and then failed with "out of memory
  // making the closure's 6 workspaces", where + 60,000 kB (one thread started) worked. As with the
  // workers that cannot start (chunk_pool.hpp), the closure keeps the threads it has workspaces for,
  // and fails only when not even the caller's thread has one (outside probe, C round forty-four).
  const int threads = pool_.threads();
  for (int slot = 0; slot < threads; ++slot) {
    try {
      if (slot == 0) {
        workspaces.all.reserve(static_cast<std::size_t>(threads));
        workspaces.free.reserve(static_cast<std::size_t>(threads));
      }
      auto workspace = std::make_unique<Workspace>(static_cast<std::size_t>(chunk_size_), model_.get());
      if (model_) model_->run(*workspace->network, workspace->network->capacity());
      workspaces.free.push_back(workspace.get());  // reserved: neither push allocates
      workspaces.all.push_back(std::move(workspace));
    } catch (const std::bad_alloc&) {
      if (slot == 0) {
        std::string cause;
        try {
          cause = " (" + memory_shortage_cause() + ")";
        } catch (...) {
        }
        // One workspace (threads 0 or 1, or the workers an address-space limit left) is "1 workspace", and
        // fewer threads cannot help it: "1 workspaces ...: lower chunk_size or threads" (outside probe, C
        // round forty-six).
        throw Error(DODO_ERROR_OUT_OF_MEMORY,
                    "out of memory making the closure's " +
                        (threads == 1 ? std::string("1 workspace") : std::to_string(threads) + " workspaces") + " of " +
                        std::to_string(chunk_size_) + " cells" + cause +
                        (threads == 1 ? ": lower chunk_size" : ": lower chunk_size or threads"));
      }
      pool_.keep_threads(slot);
      break;
    } catch (const Error& error) {
      if (slot == 0 || error.status() != DODO_ERROR_OUT_OF_MEMORY) throw;
      pool_.keep_threads(slot);
      break;
    }
  }
  // A package without test vectors gets here only with the development opt-out.
  if (options.run_self_test && model_ && description_.test_vectors.cells > 0) {
    self_test();  // its cells are not counted: the counters describe the caller's cells only
  }
}

Closure::~Closure() = default;

Closure::Workspace* Closure::acquire_workspace() const {
  WorkspacePool& workspaces = workspaces_.for_this_process();
  std::unique_lock<std::mutex> lock(workspaces.mutex);
  if (workspaces.free.empty()) {
    // More concurrent callers than ever before (a host's threads sharing the handle): grow once.
    // Where memory is short (an address-space limit: 4 host threads on a closure of threads 1 under
    // the process's size + 4 MB), a caller waits for a workspace to come back instead: each one
    // taken is given back when its chunk ends. The growth's failure was the caller's
    // DODO_ERROR_OUT_OF_MEMORY, "out of memory" and the limit with no word of what needed it,
    // though the closure had the workspaces to compute with (outside probe, C round forty-five).
    // None at all is a child of fork() before its first chunk: its failure is the call's, with what
    // needed the memory (it was "out of memory" and the limit alone). Room in `free` first, so that
    // no workspace is made that could not be given back.
    const auto first_in_process = [&](const std::string& detail) {
      std::string cause;  // ONNX Runtime's message (detail) names the limit itself
      try {
        if (detail.empty())
          cause = " (" + memory_shortage_cause(static_cast<double>(
                             workspace_bytes(static_cast<std::size_t>(chunk_size_), model_.get()))) + ")";
      } catch (...) {
      }
      return Error(DODO_ERROR_OUT_OF_MEMORY, "out of memory making this process's first workspace of " +
                                                 std::to_string(chunk_size_) + " cells (a child of fork() makes its "
                                                 "own; its parent's are not usable there)" + detail + cause +
                                                 ": lower chunk_size");
    };
    try {
      workspaces.free.reserve(workspaces.all.size() + 1);
      workspaces.all.push_back(std::make_unique<Workspace>(static_cast<std::size_t>(chunk_size_), model_.get()));
      return workspaces.all.back().get();
    } catch (const std::bad_alloc&) {
      if (workspaces.all.empty()) throw first_in_process("");
    } catch (const Error& error) {  // ONNX Runtime's out-of-memory making the network's tensors
      if (error.status() != DODO_ERROR_OUT_OF_MEMORY) throw;
      if (workspaces.all.empty()) throw first_in_process(std::string(": ") + error.what());
    }
    workspaces.released.wait(lock, [&] { return !workspaces.free.empty(); });
  }
  Workspace* workspace = workspaces.free.back();
  workspaces.free.pop_back();
  return workspace;
}

void Closure::release_workspace(Workspace* workspace) const {
  // The pool the workspace came from: this thread took it from this process's pool.
  WorkspacePool& workspaces = *workspaces_.pool.load(std::memory_order_acquire);
  {
    std::lock_guard<std::mutex> lock(workspaces.mutex);
    workspaces.free.push_back(workspace);  // capacity reserved when the workspace was made
  }
  workspaces.released.notify_one();
}

void Closure::run_chunk(void* context, std::size_t chunk, int /*slot*/) {
  Batch& batch = *static_cast<Batch*>(context);
  const Closure& self = *batch.closure;
  const std::size_t begin = chunk * static_cast<std::size_t>(self.chunk_size_);
  const std::size_t end = std::min(batch.n, begin + static_cast<std::size_t>(self.chunk_size_));
  Workspace* workspace = nullptr;
  try {
    workspace = self.acquire_workspace();
    self.process_chunk(batch, begin, end, *workspace);
  } catch (...) {
    std::lock_guard<std::mutex> lock(batch.error_mutex);
    if (!batch.error) batch.error = std::current_exception();
  }
  if (workspace) self.release_workspace(workspace);
}

void Closure::apply(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_pred,
                    std::uint32_t* status, double* growth_over_ntot) const {
  CellDiagnostics diagnostics;
  diagnostics.growth_over_ntot_proxy = growth_over_ntot;
  apply(n, F_init, u, F_pred, status, diagnostics);
}

void Closure::apply(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_pred,
                    std::uint32_t* status, const CellDiagnostics& diagnostics) const {
  apply_batch(n, F_init, u, F_pred, status, diagnostics, true, true);
}

void Closure::apply_batch(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_pred,
                          std::uint32_t* status, const CellDiagnostics& diagnostics, bool flavour_images,
                          bool counted) const {
  if (n == 0) return;
  if (!F_init.data || !F_pred.data) throw Error(DODO_ERROR_INVALID_ARGUMENT, "F_init and F_pred must not be null");
  Batch batch{this, n, F_init, u, F_pred, status, diagnostics, {}, {}, flavour_images, counted};
  // Written so that n near SIZE_MAX cannot wrap to zero chunks.
  const std::size_t size = static_cast<std::size_t>(chunk_size_);
  const std::size_t chunks = n / size + (n % size != 0);
  if (!pool_.try_run(chunks, &Closure::run_chunk, &batch)) {
    // The pool serves another caller's batch: this thread does its own chunks.
    for (std::size_t chunk = 0; chunk < chunks; ++chunk) run_chunk(&batch, chunk, 0);
  }
  if (batch.error) std::rethrow_exception(batch.error);
}

void Closure::process_chunk(const Batch& batch, std::size_t begin, std::size_t end, Workspace& w) const {
  const std::size_t count = end - begin;
  ClosureCounters events;
  std::size_t network_rows = 0;  // cells that need the network, packed at the front of its input
  // Models of the "+eln18" feature set read the kernel's crossing shape of each crossing cell.
  const bool wants_crossing =
      model_ && w.network->input_size() == static_cast<std::size_t>(kInvariants + kSpecies + 1 + kCrossingFeatures);
  const bool density_only_rows = model_ && model_->density_only_rows();

  // 1. Gather; Box3D in the rest frame (all cells of the chunk in one call, so that its moments
  //    step runs across cells); invariants of the cells that need the network: not rejected and
  //    not stable (a NO_CROSSING cell is returned unchanged, network skipped).
  // Packed input (cells of 24 contiguous values, one after the other; u likewise) is read in
  // place; other layouts are gathered into the workspace first.
  const bool contiguous_input = batch.F_init.species_stride == kComponents && batch.F_init.component_stride == 1;
  const bool contiguous_output = batch.F_pred.species_stride == kComponents && batch.F_pred.component_stride == 1;
  const bool packed_input = contiguous_input && batch.F_init.cell_stride == kCellValues;
  const bool packed_u = batch.u.data && batch.u.cell_stride == 4 && batch.u.component_stride == 1;
  const double* F_chunk = packed_input ? batch.F_init.data + begin * kCellValues : w.F_init.data();
  const double* u_chunk = !batch.u.data ? nullptr : packed_u ? batch.u.data + begin * 4 : w.u.data();
  for (std::size_t i = 0; i < count && !(packed_input && (packed_u || !batch.u.data)); ++i) {
    const std::size_t cell = begin + i;
    if (!packed_input) {
      double* F = &w.F_init[i * kCellValues];
      const double* source = batch.F_init.data + static_cast<std::ptrdiff_t>(cell) * batch.F_init.cell_stride;
      if (contiguous_input) {
        copy_cell(source, F);
      } else {
        for (int a = 0; a < kSpecies; ++a)
          for (int m = 0; m < kComponents; ++m)
            F[value_index(a, m)] = source[a * batch.F_init.species_stride + m * batch.F_init.component_stride];
      }
    }
    if (batch.u.data && !packed_u) {
      const double* source_u = batch.u.data + static_cast<std::ptrdiff_t>(cell) * batch.u.cell_stride;
      for (int m = 0; m < 4; ++m) w.u[i * 4 + m] = source_u[m * batch.u.component_stride];
    }
  }
  // Box3D's blocks one at a time, so that a stable cell (most cells of a real grid) is finished
  //    while its input and rest-frame pieces are still in the L1 cache: the input itself,
  //    copied straight to the caller's array (an exact in-place call copies each cell onto
  //    itself). The other cells are finished in step 2.
  for (std::size_t block = 0; block < count; block += Box3D::kBlockCells) {
    const std::size_t block_end = std::min(count, block + Box3D::kBlockCells);
    box3d_->rest_frame_cells(block_end - block, F_chunk + block * kCellValues, u_chunk ? u_chunk + block * 4 : nullptr,
                             w.cells.data() + block, wants_crossing);
    if (contiguous_output)
      events.no_crossing += finish_stable_cells(w.cells.data() + block, block_end - block, F_chunk + block * kCellValues,
                                                begin + block, batch.F_pred.data, batch.F_pred.cell_stride, batch.status,
                                                batch.diagnostics);
    for (std::size_t i = block; i < block_end; ++i) {
      RestFrameCell& rest = w.cells[i];
      if (rest.status == kCell_NO_CROSSING && contiguous_output) continue;  // finished above
      if (!model_ || (rest.status & (kCellRejectedMask | kCell_NO_CROSSING))) continue;
      const int input_size = static_cast<int>(w.network->input_size());
      w.network_row[i] = static_cast<std::uint32_t>(network_rows);
      if (!batch.flavour_images) {
        image_row(rest, input_size, 0, w.network->input_row(network_rows++));
        continue;
      }
      // The images of non-zero weight (flavour_symmetry.hpp), a row each; a cell that is its own
      // mu <-> tau image gives images 1 and 3 the rows of 0 and 2.
      CellImages& images = w.images[i];
      images.weights = image_weights(rest.F);
      if (images.weights.single >= 0) {  // one image of weight 1 (most cells): its row, nothing to order
        images.row[images.weights.single] = static_cast<std::uint32_t>(network_rows);
        image_row(rest, input_size, images.weights.single, w.network->input_row(network_rows++));
        continue;
      }
      const bool symmetric = mu_tau_symmetric(rest.F);
      const std::size_t first_row = network_rows;
      int own[kFlavourImages], rows = 0;  // the images with a row of their own, in the rows' order
      for (int g = 0; g < kFlavourImages; ++g) {
        if (!(images.weights.weight[g] > 0.0)) continue;
        if (symmetric && g % 2 == 1 && images.weights.weight[g - 1] > 0.0) continue;  // row of g - 1
        image_row(rest, input_size, g, w.network->input_row(network_rows++));
        own[rows++] = g;
      }
      // A blended cell's rows in an order its relabellings share (weight, then the row's bytes): a
      // relabelled cell has the same images with the same weights and rows, so each row lands at
      // the same place in the batch, where ONNX Runtime's kernels round it the same way (in
      // another place they rounded differently: 8e-10 N_tot under nu <-> nubar, outside probe
      // round ten). One-image cells, most of a grid, skip this; the native evaluator does not
      // depend on a row's place.
      for (int a = 1; a < rows; ++a)
        for (int b = a; b > 0; --b) {
          float* earlier = w.network->input_row(first_row + b - 1);
          float* later = w.network->input_row(first_row + b);
          const double w_earlier = images.weights.weight[own[b - 1]], w_later = images.weights.weight[own[b]];
          const bool swap = w_later > w_earlier ||
                            (w_later == w_earlier && std::memcmp(later, earlier, input_size * sizeof(float)) < 0);
          if (!swap) break;
          std::swap_ranges(earlier, earlier + input_size, later);
          std::swap(own[b - 1], own[b]);
        }
      for (int k = 0; k < rows; ++k) images.row[own[k]] = static_cast<std::uint32_t>(first_row + k);
      if (symmetric)
        for (int g = 1; g < kFlavourImages; g += 2)
          if (images.weights.weight[g] > 0.0 && images.weights.weight[g - 1] > 0.0) images.row[g] = images.row[g - 1];
    }
  }
  // ONNX Runtime's CPU kernels (MLAS) evaluate a one-row batch by a matrix-vector kernel that sums in
  // another order than a batch's: a cell alone, or the only network row of its chunk, got other float32
  // bits than in a grid (up to 2e-9 N_tot), so the answer depended on its neighbours and the chunking
  // (outside probe, physics round ten). A second, don't-care row (every workspace holds 4 rows a cell)
  // takes the batch kernel; the native evaluator does not depend on a row's place.
  const bool graph = std::strcmp(model_ ? model_->evaluator() : "", "onnxruntime") == 0;
  if (network_rows > 0) model_->run(*w.network, network_rows == 1 && graph ? 2 : network_rows);

  // 2. Head, projection, limiter, boost back (finalise_cell); scatter to the caller's strides.
  CellNetworkOutput output;  // one for the chunk: its zero c_ab, d_ab are kept from cell to cell
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t cell = begin + i;
    const double* F = F_chunk + i * kCellValues;
    const RestFrameCell& rest = w.cells[i];
    std::uint32_t flags = rest.status;
    double* target = batch.F_pred.data + static_cast<std::ptrdiff_t>(cell) * batch.F_pred.cell_stride;
    if (flags == kCell_NO_CROSSING && contiguous_output) continue;  // finished in step 1
    // Contiguous outputs receive the result directly (no copy through F_local), unless they
    // overlap the cell's input (an in-place call), which the finishing still reads.
    double F_local[kCellValues];
    const bool direct = contiguous_output && (target + kCellValues <= F || F + kCellValues <= target);
    double* F_out = direct ? target : F_local;
    // Growth rate (units of N_tot) and uncertainty: Box3D's proxy and 0 unless the network's
    // optional outputs for this cell's packed row say otherwise.
    double growth = rest.growth_over_ntot, uncertainty = 0.0;
    bool done = false;
    if (flags & (kCellRejectedMask | kCell_NO_CROSSING)) {
      if (flags & kCellRejectedMask) realizable_fallback(F, F_out);
      else copy_cell(F, F_out);  // stable: returned unchanged
      done = true;
    } else if (model_) {
      cell_network_output(*w.network, description_.head, w.network_row[i], batch.flavour_images ? &w.images[i] : nullptr,
                          density_only_rows, output);
      // A non-finite optional output voids the cell's whole network output (Box3D's result and
      // proxy, as for a non-finite correction).
      double change[kCellValues];
      if (!learned_diagnostics(w.network->log_growth_ratio() ? &output.log_ratio : nullptr,
                               w.network->uncertainty() ? &output.spread : nullptr, rest.growth_over_ntot, rest.ntot,
                               growth, uncertainty))
        flags |= kCell_NETWORK_NONFINITE;
      else
        flags |= learned_change(description_.head, output.head, rest, change, density_only_rows);
      if (!(flags & kCell_NETWORK_NONFINITE)) {
        done = finalise_cell(F, rest.boost, rest.ntot, change, F_out);
        if (!done) flags |= kCell_NETWORK_NONFINITE;  // overflow near DBL_MAX: Box3D's result instead
      }
    }
    if (!done && !finalise_cell(F, rest.boost, rest.ntot, rest.dF, F_out)) {
      flags = kCell_NONFINITE;  // Box3D's own result is not representable: rejected
      realizable_fallback(F, F_out);
    }
    if (contiguous_output && !direct) {
      copy_cell(F_out, target);  // in place: each cell onto itself
    } else if (!contiguous_output) {
      for (int a = 0; a < kSpecies; ++a)
        for (int m = 0; m < kComponents; ++m)
          target[a * batch.F_pred.species_stride + m * batch.F_pred.component_stride] = F_out[value_index(a, m)];
    }
    if (batch.status) batch.status[cell] = flags;
    // Stable cells: growth 0 (no instability) and no correction; rejected cells: growth 0 and
    // N_tot 0; network-nonfinite cells: Box3D's proxy and no uncertainty.
    const bool rejected = (flags & kCellRejectedMask) != 0;
    const double proxy = rejected ? 0.0 : rest.growth_over_ntot;
    if (flags & (kCellRejectedMask | kCell_NO_CROSSING | kCell_NETWORK_NONFINITE)) {
      growth = (flags & (kCellRejectedMask | kCell_NO_CROSSING)) ? 0.0 : proxy;
      uncertainty = 0.0;
    }
    const CellDiagnostics& out = batch.diagnostics;
    const double rate_per_ntot = rejected ? 0.0 : rest.ntot * kGrowthRatePerNtot;
    if (out.growth_over_ntot) out.growth_over_ntot[cell] = growth;
    const double ntot = rejected ? 0.0 : rest.ntot;
    if (out.growth_rate) out.growth_rate[cell] = growth_rate_in_per_second(growth, ntot, rate_per_ntot);
    if (out.growth_over_ntot_proxy) out.growth_over_ntot_proxy[cell] = proxy;
    if (out.growth_rate_proxy) out.growth_rate_proxy[cell] = growth_rate_in_per_second(proxy, ntot, rate_per_ntot);
    if (out.uncertainty) out.uncertainty[cell] = uncertainty;
    events.rejected += (flags & kCellRejectedMask) != 0;
    events.no_crossing += (flags & kCell_NO_CROSSING) != 0;
    events.box3d_limited += (flags & kCell_BOX3D_LIMITED) != 0;
    events.network_nonfinite += (flags & kCell_NETWORK_NONFINITE) != 0;
    events.correction_limited += (flags & kCell_CORRECTION_LIMITED) != 0;
  }
  if (!batch.counted) return;
  cells_.fetch_add(count, std::memory_order_relaxed);
  rejected_.fetch_add(events.rejected, std::memory_order_relaxed);
  no_crossing_.fetch_add(events.no_crossing, std::memory_order_relaxed);
  box3d_limited_.fetch_add(events.box3d_limited, std::memory_order_relaxed);
  network_nonfinite_.fetch_add(events.network_nonfinite, std::memory_order_relaxed);
  correction_limited_.fetch_add(events.correction_limited, std::memory_order_relaxed);
}

double Closure::self_test() const {
  const TestVectors& vectors = description_.test_vectors;
  if (!model_) throw Error(DODO_ERROR_NO_MODEL, "self-test needs a model; this closure is Box3D-only");
  if (vectors.cells == 0) throw Error(DODO_ERROR_SELF_TEST, "model package has no \"dodo.test_vectors\"");
  std::vector<double> predicted(vectors.cells * kCellValues), growth(vectors.cells), uncertainty(vectors.cells);
  std::vector<std::uint32_t> flags(vectors.cells);
  ConstVelocityArray velocity;
  velocity.data = vectors.u.empty() ? nullptr : vectors.u.data();
  CellDiagnostics diagnostics;
  diagnostics.growth_over_ntot = growth.data();
  diagnostics.uncertainty = uncertainty.data();
  // The package's network as exported, without the flavour images: its test vectors were computed so.
  apply_batch(vectors.cells, ConstCellArray{vectors.F_init.data()}, velocity, CellArray{predicted.data()}, flags.data(),
              diagnostics, false, false);
  // Test vectors that never reach the network (every cell stable or rejected: its output is its
  // input, whatever the weights) or whose network output is not finite (Box3D's result returned)
  // pass with 0 and check no weight: a package re-signed with such vectors loaded as tested
  // (outside probe, round seventeen). `dodo export` draws unflagged crossing cells.
  std::size_t reaching_network = 0;
  for (std::size_t c = 0; c < vectors.cells; ++c) {
    if (flags[c] & kCell_NETWORK_NONFINITE) {
      char text[200];
      std::snprintf(text, sizeof text,
                    "self-test failed: the network's output for test vector %zu is not finite (Box3D's result was "
                    "returned in its place)", c);
      throw Error(DODO_ERROR_SELF_TEST, text);
    }
    reaching_network += (flags[c] & (kCellRejectedMask | kCell_NO_CROSSING)) == 0;
  }
  const char* allow = std::getenv(kAllowUntestedModelVariable);
  if (reaching_network == 0 && !(allow && std::string(allow) == "1"))
    throw Error(DODO_ERROR_SELF_TEST,
                "self-test failed: none of the package's " + std::to_string(vectors.cells) +
                    " test vectors reaches the network (each is stable or rejected, so its output is its input "
                    "whatever the weights): they test nothing; re-export the package with `dodo export` "
                    "(development only: set " + kAllowUntestedModelVariable + "=1 to load it anyway)");
  double worst = 0.0;
  std::size_t worst_cell = 0;
  for (std::size_t c = 0; c < vectors.cells; ++c) {
    const double* F = &vectors.F_init[c * kCellValues];
    double ntot = comoving_total_density(F, velocity.data ? &vectors.u[c * 4] : nullptr);
    if (!(ntot > 0)) ntot = 1.0;
    for (int v = 0; v < kCellValues; ++v) {
      const double error = std::fabs(predicted[c * kCellValues + v] - vectors.F_pred[c * kCellValues + v]) / ntot;
      if (!(error <= worst)) {  // also catches NaN
        worst = std::isnan(error) ? INFINITY : error;
        worst_cell = c;
      }
    }
  }
  if (!(worst <= vectors.atol_over_ntot)) {
    throw Error(DODO_ERROR_SELF_TEST, "self-test failed: test vector " + std::to_string(worst_cell) + " differs by " +
                                          number_text(worst, 3) + " N_tot (tolerance " +
                                          number_text(vectors.atol_over_ntot, 3) + " N_tot)");
  }
  // The optional outputs' results, where the package gives them (both in units of N_tot).
  for (auto [name, expected, got] : {std::tuple{"growth rate", &vectors.growth_over_ntot, &growth},
                                     std::tuple{"uncertainty", &vectors.uncertainty, &uncertainty}}) {
    for (std::size_t c = 0; c < expected->size(); ++c) {
      const double error = std::fabs((*got)[c] - (*expected)[c]);
      if (!(error <= vectors.atol_over_ntot)) {
        throw Error(DODO_ERROR_SELF_TEST, "self-test failed: test vector " + std::to_string(c) + "'s " + name +
                                              " differs by " + number_text(std::isnan(error) ? INFINITY : error, 3) +
                                              " N_tot (tolerance " + number_text(vectors.atol_over_ntot, 3) + " N_tot)");
      }
    }
  }
  return worst;
}

ClosureCounters Closure::counters() const {
  ClosureCounters out;
  out.cells = cells_.load();
  out.rejected = rejected_.load();
  out.no_crossing = no_crossing_.load();
  out.box3d_limited = box3d_limited_.load();
  out.network_nonfinite = network_nonfinite_.load();
  out.correction_limited = correction_limited_.load();
  return out;
}

void Closure::reset_counters() const {
  cells_ = 0;
  rejected_ = 0;
  no_crossing_ = 0;
  box3d_limited_ = 0;
  network_nonfinite_ = 0;
  correction_limited_ = 0;
}

}  // namespace dodo::runtime
