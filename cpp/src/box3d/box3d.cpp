#include "box3d.hpp"

#include <pthread.h>

#include <algorithm>
#include <cstring>
#include <cfloat>
#include <cmath>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <thread>

#include "../lane_sum.hpp"
#include "../multiversion.hpp"
#include "../number_text.hpp"
#include "../realizability.hpp"
#include "../thread_start.hpp"
#include "exp_kernel.hpp"
#include "langevin_kernel.hpp"

namespace dodo {
namespace {

constexpr double kOneThird = 1.0 / 3.0;
constexpr double kInverseFourPi = 0.25 / 3.14159265358979323846;

// The 24 values of a cell, as inline moves (a library memmove call per cell costs more than the
// copy itself).
inline void copy_cell(const double* from, double* to) {
  double values[kCellValues];
  for (int v = 0; v < kCellValues; ++v) values[v] = from[v];
  for (int v = 0; v < kCellValues; ++v) to[v] = values[v];
}

// Per-thread scratch: sized at first use (warm-up), then reused.
struct AngularScratch {
  std::vector<double> distribution;    // [species][direction]
  std::vector<double> eln_difference;  // [pair][direction]: G_p = ELN_i - ELN_j
  double* species(int a, std::size_t points) { return distribution.data() + a * points; }
  double* pair(int p, std::size_t points) { return eln_difference.data() + p * points; }
  void reserve(std::size_t points) {
    if (distribution.size() < kSpecies * points) distribution.resize(kSpecies * points);
    if (eln_difference.size() < kPairs * points) eln_difference.resize(kPairs * points);
  }
};

// The thread's scratch, made at its first use, is held by a trivially destructible thread_local
// pointer and freed when the thread ends by a pthread key's destructor. Not a thread_local object
// with a destructor: glibc registers those at first use with __cxa_thread_atexit, which aborts the
// process ("Fatal glibc error: failed to register TLS destructor: out of memory", SIGABRT) where it
// cannot allocate (outside probe of the C side, round forty-three: a worker's first cell under an
// RLIMIT_AS at the host's size); here that is a std::bad_alloc, which the caller reports. Key
// destructors do not run for the main thread at exit(), so its scratch stays valid for atexit
// handlers and static destructors that still call the closure (round fifteen: a thread_local
// scratch destroyed by exit() was written after it was freed).
void free_scratch(void* scratch);
thread_local AngularScratch* scratch_of_thread = nullptr;
pthread_key_t scratch_key;
const int scratch_key_status = pthread_key_create(&scratch_key, &free_scratch);

void free_scratch(void* scratch) {
  delete static_cast<AngularScratch*>(scratch);
  scratch_of_thread = nullptr;  // a later use in this thread's teardown makes a new one
}

// The key is deleted with the library (dlclose of a copy that can be unloaded), so that no
// thread's end calls free_scratch in unmapped code; a scratch already made stays usable.
struct ScratchKeyDeleter {
  ~ScratchKeyDeleter() {
    if (scratch_key_status == 0) pthread_key_delete(scratch_key);
  }
} scratch_key_deleter;

AngularScratch& thread_scratch() {
  if (scratch_of_thread) return *scratch_of_thread;
  if (scratch_key_status != 0) throw std::bad_alloc();
  std::unique_ptr<AngularScratch> scratch(new AngularScratch);
  if (pthread_setspecific(scratch_key, scratch.get()) != 0) throw std::bad_alloc();
  scratch_of_thread = scratch.release();
  return *scratch_of_thread;
}

// Up to this Z (f < 0.9972) the paired form's exponents +-k - kZ stay within [-1022, 1]: 2^e
// is built from its bits without a clamp. Beyond it the per-direction form takes over.
constexpr double kPairedFormLargestZ = 350.0;

// Maximum-entropy distribution of one species on the quadrature (physics.md section 2, step 1):
// g(n_hat) = n/(4 pi) Z/sinh(Z) exp(Z F_hat.n_hat), written as A e^{+-s - Z} with
// A = n/(4 pi) 2Z/(1 - e^{-2Z}) and s = Z F_hat.n_hat for the antipodal directions +-n_hat.
// With s = k ln2 + r and Z = kZ ln2 + rZ: e^{+-s - Z} = e^{-rZ} P(+-r) 2^{+-k - kZ}, where
// P(+-r) = even +- odd come from one polynomial evaluation. `amplitude` is A (per unit density).
DODO_MULTIVERSION
void reconstruct_species(const PairedRule& rule, double density, double Z, double amplitude, double paired_scale,
                         double power_offset, double direction_x, double direction_y, double direction_z, double* g) {
  const std::size_t points = rule.size(), half = rule.half;
  const double* x = rule.x.data();
  const double* y = rule.y.data();
  const double* z = rule.z.data();
  if (density == 0.0) {
    std::fill(g, g + points, 0.0);
    return;
  }
  const double isotropic = density * kInverseFourPi;
  const double hx = Z * direction_x, hy = Z * direction_y, hz = Z * direction_z;
  if (Z < 1e-8) {
    // Linear in Z: the exact form's error here is O(Z^2) < 1e-16.
    for (std::size_t q = 0; q < points; ++q) g[q] = isotropic * (1.0 + hx * x[q] + hy * y[q] + hz * z[q]);
    return;
  }
  const double scale = isotropic * amplitude;
  if (Z > kPairedFormLargestZ) {
    for (std::size_t q = 0; q < points; ++q) g[q] = scale * clamped_exp(hx * x[q] + hy * y[q] + hz * z[q] - Z);
    return;
  }
  // scale e^{-rZ} and 1023 - kZ come from block_species_values (vectorised across cells: a scalar
  // exponential here, before a loop of seven vectors, cost a sixth of this function's time).
  const double scaled_amplitude = paired_scale;
  // Bits of 2^{k - kZ} are (k - kZ + 1023) << 52; those of 2^{-k - kZ} follow by one subtraction.
  const std::int64_t plus_offset = integer_of(power_offset);
  const std::int64_t both_exponents = (2 * plus_offset) << 52;  // bits(2^{k-kZ}) + bits(2^{-k-kZ})
  // Iterations are independent and g does not alias the rule: no run-time overlap checks.
#pragma omp simd
  for (std::size_t q = 0; q < half; ++q) {
    double k, r, even, odd;
    reduce_by_ln2(hx * x[q] + hy * y[q] + hz * z[q], k, r);
    exp_even_odd(r, even, odd);
    const std::int64_t plus_bits = (integer_of(k) + plus_offset) << 52;
    const std::int64_t minus_bits = both_exponents - plus_bits;
    double plus_power, minus_power;
    std::memcpy(&plus_power, &plus_bits, sizeof plus_power);
    std::memcpy(&minus_power, &minus_bits, sizeof minus_power);
    g[q] = scaled_amplitude * (even + odd) * plus_power;
    g[q + half] = scaled_amplitude * (even - odd) * minus_power;
  }
}

// 2Z/(1 - e^{-2Z}) (the amplitude of the maximum-entropy distribution per n/(4 pi)), branch-free:
// the Bernoulli series of x/(1 - e^{-x}) below x = 2Z = 0.3 (omitted terms < 1e-18), the
// closed form above (1 - e^{-x} > 0.25 there, so no cancellation). e2 = e^{-2Z}, from the
// caller's e^{-Z} (one exponential fewer).
inline double maxent_amplitude(double Z, double e2) {
  const double x = 2.0 * Z, x2 = x * x;
  const double series =
      1.0 + 0.5 * x +
      x2 * (1.0 / 12.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 30240.0 + x2 * (-1.0 / 1209600.0 + x2 * (1.0 / 47900160.0 + x2 * (-691.0 / 1307674368000.0))))));
  const double closed = x / (1.0 - e2);
  return x < 0.3 ? series : closed;
}

// Survival probabilities of one crossing flavour pair (physics.md section 2, step 3).
struct PairMixing {
  bool crosses = false;
  bool positive_side_smaller = false;  // the side with G > 0 carries the smaller integral
  double large_side_survival = 1.0;    // P = 1 - (2/3) I_small / I_large
};

// Step 1 for a block of cells, as flat loops over cells x species that vectorise across cells
// (one cell's chain of inverse Langevin, amplitude and exponentials is long and serial; eight
// cells side by side fill the vector lanes and hide it). Species-major: slot(cell, species), so
// that a species' values over the cells are contiguous; lanes past the block's count hold zeros.
constexpr std::size_t kBlockCells = Box3D::kBlockCells;
constexpr std::size_t kBlockSpecies = kBlockCells * kSpecies;
constexpr std::size_t slot(std::size_t cell, int species) { return species * kBlockCells + cell; }
// Lanes computed for a block of `count` cells: count rounded up to a whole vector (8 doubles).
constexpr std::size_t block_lanes(std::size_t count) { return (count + 7) / 8 * 8; }

struct BlockMoments {
  double density[kBlockSpecies], flux_x[kBlockSpecies], flux_y[kBlockSpecies], flux_z[kBlockSpecies];
  double flux_factor[kBlockSpecies], Z[kBlockSpecies], amplitude[kBlockSpecies];
  // The paired reconstruction's n/(4 pi) A e^{-rZ} and 1023 - kZ, for Z = kZ ln2 + rZ.
  double paired_scale[kBlockSpecies], power_offset[kBlockSpecies];
  double direction_x[kBlockSpecies], direction_y[kBlockSpecies], direction_z[kBlockSpecies];
  // Values of g * 4 pi over the sphere: peak n A (along the flux), across n A e^{-Z} (across
  // it), floor n A e^{-2Z} (against it). Used by the stability screen.
  double peak[kBlockSpecies], across[kBlockSpecies], floor[kBlockSpecies];
  int eln_sign[kBlockCells * kFlavours];  // the screen's sign of ELN_f, [flavour * kBlockCells + cell]
  // ELN_f's sign is undecided, but its other sign is confined to a cap of angular radius below
  // 26 degrees, which may fall between the quadrature's points: worth quadrature_eln_sign.
  int near_edge[kBlockCells * kFlavours];
  // Species whose rows of the values above (Z to floor) hold their values or zeros over the
  // block's lanes: block_species_values fills a row (or zeroes it before filling some of its
  // slots) when it first computes a slot of it; block_moments leaves every row unwritten (zeroing
  // seven whole arrays a block cost more than a stable cell's use of them). Only the slots marked
  // computed and the rows marked here are read.
  bool row_ready[kSpecies];
};

// Flux factors and directions of the cells whose status is still kCellOk (F: normalised rest
// frame, 24 values each); a flux factor the quadrature cannot represent sets FLUX_FACTOR.
// Rejected cells carry zeros through, harmlessly.
// `normalised`: the block's F, value-major (normalised[v * kBlockCells + c] is value v of cell c,
// zeros for cells not kCellOk and for the lanes past count), as prepare_block writes it: a
// species' values over the cells are rows of it, copied as whole vectors. Without contracting
// a * b + c (fp-contract=off), as prepare_block: the AVX2 and AVX-512 clones fused |F|^2's
// multiply-adds and the baseline did not, so a species within an ulp of max_flux_factor was
// FLUX_FACTOR on one CPU and a crossing on another (physics-law probe, round twelve); now the flux
// factors, and the limit's decision, are the same bits on every path.
DODO_MULTIVERSION DODO_NO_CONTRACTION
void block_moments(const Box3DSettings& settings, std::size_t count, RestFrameCell* cells, const double* normalised,
                   BlockMoments& m) {
  DODO_NO_CONTRACTION_BODY
  const std::size_t lanes = block_lanes(count);
  for (int a = 0; a < kSpecies; ++a) {
    const double* row = normalised + a * kComponents * kBlockCells;
#pragma omp simd
    for (std::size_t c = 0; c < lanes; ++c) {
      const std::size_t i = slot(c, a);
      m.density[i] = row[c];
      m.flux_x[i] = row[kBlockCells + c];
      m.flux_y[i] = row[2 * kBlockCells + c];
      m.flux_z[i] = row[3 * kBlockCells + c];
    }
  }
  const double largest_flux_factor = settings.max_flux_factor;
  double flux_norm[kBlockSpecies];  // |F| of each species (a double, so that the loop vectorises)
  // Squares below the normal range: a species ~1e-154 of N_tot or less (beside a far denser one)
  // whose |F|^2 underflowed read flux factor 0, and one with |F| > n passed as stable and
  // unflagged (outside probe, round 33). Those few are redone below, scaled.
  std::int64_t tiny_squares = 0;
  for (int a = 0; a < kSpecies; ++a) {
#pragma omp simd reduction(| : tiny_squares)
    for (std::size_t i = slot(0, a); i < slot(lanes, a); ++i) {
      const double density = m.density[i];
      const double square = m.flux_x[i] * m.flux_x[i] + m.flux_y[i] * m.flux_y[i] + m.flux_z[i] * m.flux_z[i];
      const double flux = std::sqrt(square);
      tiny_squares |= (square < DBL_MIN) & ((m.flux_x[i] != 0.0) | (m.flux_y[i] != 0.0) | (m.flux_z[i] != 0.0));
      const bool has_density = density > 0.0, has_flux = flux > 0.0;
      const double flux_factor = flux / (has_density ? density : 1.0);
      m.flux_factor[i] = has_density ? flux_factor : 0.0;
      flux_norm[i] = flux;
      const double inverse_flux = has_flux ? 1.0 / (has_flux ? flux : 1.0) : 0.0;
      m.direction_x[i] = m.flux_x[i] * inverse_flux;
      m.direction_y[i] = m.flux_y[i] * inverse_flux;
      m.direction_z[i] = m.flux_z[i] * inverse_flux;
    }
  }
  if (tiny_squares) {
    for (std::size_t i = 0; i < kBlockSpecies; ++i) {
      if (i % kBlockCells >= lanes) continue;  // lanes past the block's: never written
      const double x = m.flux_x[i], y = m.flux_y[i], z = m.flux_z[i];
      const double largest = std::fmax(std::fabs(x), std::fmax(std::fabs(y), std::fabs(z)));
      if (!(largest > 0.0) || !(x * x + y * y + z * z < DBL_MIN)) continue;
      // Scaled by a power of two (exact): the norm and direction the squares would give unrounded.
      const int shift = -std::ilogb(largest);
      const double sx = std::ldexp(x, shift), sy = std::ldexp(y, shift), sz = std::ldexp(z, shift);
      const double scaled_flux = std::sqrt(sx * sx + sy * sy + sz * sz);  // in [1, 2)
      const double flux = std::ldexp(scaled_flux, -shift);  // may round to 0 or a subnormal: only kept as a flag
      const double density = m.density[i];
      // |F| / n from the scaled values: n scaled likewise (0 where n underflows: flux without density).
      const double scaled_density = std::ldexp(density, shift);
      m.flux_factor[i] = density > 0.0 ? scaled_flux / scaled_density : 0.0;
      flux_norm[i] = flux > 0.0 ? flux : largest;
      m.direction_x[i] = sx / scaled_flux;
      m.direction_y[i] = sy / scaled_flux;
      m.direction_z[i] = sz / scaled_flux;
    }
  }
  // A flux without density is not a distribution; nor is one the quadrature cannot represent.
  // Across cells, a species at a time (64-bit flags, so that the loop vectorises).
  alignas(64) std::int64_t unrepresentable[kBlockCells] = {};
  for (int a = 0; a < kSpecies; ++a)
#pragma omp simd
    for (std::size_t c = 0; c < lanes; ++c) {
      const std::size_t i = slot(c, a);
      unrepresentable[c] |= m.density[i] > 0.0 ? !(m.flux_factor[i] < largest_flux_factor) : flux_norm[i] > 0.0;
    }
  for (std::size_t c = 0; c < count; ++c)
    if (unrepresentable[c] && cells[c].status == kCellOk) cells[c].status = kCell_FLUX_FACTOR;
  // Z and the values derived from it come from block_species_values, for the species that need
  // them (row_ready).
  for (int a = 0; a < kSpecies; ++a) m.row_ready[a] = false;
}

// The per-species values of `lanes` entries (a whole number of vectors): Z (inverse Langevin of
// the flux factor), the amplitude, the screen's values (peak, across, floor) and the paired
// reconstruction's scale and exponent offset (reconstruct_species). Loops across entries that
// vectorise; an entry's values depend on its own density and flux factor alone.
struct SpeciesValues {
  double *Z, *amplitude, *peak, *across, *floor, *paired_scale, *power_offset;
};
// One compiled body per instruction set (not inlined), whichever caller: inlined into two call
// sites, its loops were contracted into multiply-adds differently, and a cell's values depended
// on the cells that shared its block (test_api's batch-shape test saw the last bit move).
DODO_MULTIVERSION __attribute__((noinline)) void species_values(const Box3DSettings& settings, std::size_t lanes,
                                                                const double* density,
                           const double* flux_factor, const SpeciesValues& out) {
  double* const Z = out.Z;
  if (settings.z_method == ZMethod::kJedynak) {
    for (std::size_t k = 0; k < lanes; ++k) Z[k] = jedynak_inverse_langevin(flux_factor[k]);
  } else {
#pragma omp simd
    for (std::size_t k = 0; k < lanes; ++k) Z[k] = halley_inverse_langevin(flux_factor[k]);
  }
#pragma omp simd
  for (std::size_t k = 0; k < lanes; ++k) {
    const double across_factor = clamped_exp(-Z[k]);
    const double amplitude = maxent_amplitude(Z[k], across_factor * across_factor);
    out.amplitude[k] = amplitude;
    out.peak[k] = density[k] * amplitude;
    out.across[k] = out.peak[k] * across_factor;
    out.floor[k] = out.across[k] * across_factor;
    double kZ, rZ;
    reduce_by_ln2(Z[k], kZ, rZ);
    out.paired_scale[k] = density[k] * kInverseFourPi * amplitude * clamped_exp(-rZ);
    out.power_offset[k] = 1023.0 - kZ;
  }
}

// The species values (species_values) of the slots that `wanted` marks and `computed` does not
// yet, which it then marks computed. Where those are most of the block's slots (crossing cells
// whose six species differ) every slot is computed in place, a species' lanes at a time; else
// they are gathered into a compact list so that only these are computed (a stable M1-like grid's
// screen wants two species of six), and a species whose density and flux factor equal those of
// an earlier species of its cell (mu = tau, the heavy species of M1 data) takes that one's values,
// which are the same numbers. Either way a slot gets the same bits (one species_values body).
DODO_MULTIVERSION
void block_species_values(const Box3DSettings& settings, std::size_t count, const bool* wanted, bool* computed,
                          BlockMoments& m) {
  const std::size_t cell_lanes = block_lanes(count);
  // Bit c of pending[a]: slot(c, a) wanted and not computed, c < count. Eight bools a word (0 or
  // 1 each, so wanted & ~computed is a byte's 0 or 1, and a multiply gathers eight bytes' low
  // bits into one byte): scalar loops over the 192 slots were a third of this function's
  // instructions in a grid of stable and crossing cells.
  static_assert(kBlockCells == 32, "a row's lanes are one 32-bit mask");
  const std::uint32_t count_mask = count >= kBlockCells ? ~0u : (1u << count) - 1u;
  std::uint32_t pending[kSpecies];
  std::size_t candidates = 0;
  for (int a = 0; a < kSpecies; ++a) {
    std::uint32_t bits = 0;
    for (std::size_t k = 0; k < kBlockCells / 8; ++k) {
      std::uint64_t w, d;
      std::memcpy(&w, wanted + slot(8 * k, a), sizeof w);
      std::memcpy(&d, computed + slot(8 * k, a), sizeof d);
      bits |= static_cast<std::uint32_t>(((w & ~d) * 0x0102040810204080ull) >> 56) << (8 * k);
    }
    pending[a] = bits & count_mask;
    candidates += static_cast<std::size_t>(__builtin_popcount(pending[a]));
  }
  if (candidates == 0) return;
  // A species' lanes in place (rejected cells and lanes past `count` hold zero moments: harmless
  // values).
  const auto in_place = [&](int a) {
    const std::size_t i = slot(0, a);
    species_values(settings, cell_lanes, m.density + i, m.flux_factor + i,
                   {m.Z + i, m.amplitude + i, m.peak + i, m.across + i, m.floor + i, m.paired_scale + i,
                    m.power_offset + i});
    std::fill(computed + i, computed + i + cell_lanes, true);
    m.row_ready[a] = true;
  };
  if (4 * candidates >= 3 * kSpecies * cell_lanes) {
    for (int a = 0; a < kSpecies; ++a) in_place(a);  // every slot of the first cell_lanes cells
    return;
  }
  // A species most of whose cells want it (nu_e and nubar_e of a stable M1-like grid, wanted by
  // the screen in every cell) in place too: no gathering and scattering of those slots.
  for (int a = 0; a < kSpecies; ++a) {
    const std::size_t row = static_cast<std::size_t>(__builtin_popcount(pending[a]));
    if (row > 0 && 4 * row >= 3 * cell_lanes) {
      in_place(a);
      candidates -= row;
      pending[a] = 0;
    }
  }
  if (candidates == 0) return;
  alignas(64) double density[kBlockSpecies], flux_factor[kBlockSpecies], Z[kBlockSpecies], amplitude[kBlockSpecies],
      peak[kBlockSpecies], across[kBlockSpecies], floor[kBlockSpecies], paired_scale[kBlockSpecies],
      power_offset[kBlockSpecies];
  std::uint16_t where[kBlockSpecies], copy_to[kBlockSpecies], copy_from[kBlockSpecies];
  bool listed[kBlockSpecies] = {};
  std::size_t n = 0, copies = 0;
  std::uint32_t cells_pending = 0;
  for (int a = 0; a < kSpecies; ++a) cells_pending |= pending[a];
  for (; cells_pending != 0; cells_pending &= cells_pending - 1) {  // cells in increasing order
    const std::size_t c = static_cast<std::size_t>(__builtin_ctz(cells_pending));
    for (int a = 0; a < kSpecies; ++a) {
      const std::size_t i = slot(c, a);
      if (!(pending[a] >> c & 1u)) continue;
      std::size_t source = i;
      for (int b = 0; b < a && source == i; ++b) {
        const std::size_t j = slot(c, b);
        if ((computed[j] || listed[j]) && m.density[j] == m.density[i] && m.flux_factor[j] == m.flux_factor[i]) source = j;
      }
      if (source != i) {
        copy_to[copies] = static_cast<std::uint16_t>(i);
        copy_from[copies++] = static_cast<std::uint16_t>(source);
        continue;
      }
      listed[i] = true;
      where[n] = static_cast<std::uint16_t>(i);
      density[n] = m.density[i];
      flux_factor[n++] = m.flux_factor[i];
    }
  }
  const std::size_t lanes = block_lanes(n);
  for (std::size_t k = n; k < lanes; ++k) density[k] = flux_factor[k] = 0.0;  // whole vectors
  species_values(settings, lanes, density, flux_factor, {Z, amplitude, peak, across, floor, paired_scale, power_offset});
  // A row's first slots: the rest of its lanes zeros (no slot of a row not ready is computed yet).
  for (int a = 0; a < kSpecies; ++a) {
    if (pending[a] == 0 || m.row_ready[a]) continue;  // no slot of the row listed or copied
    const std::size_t i = slot(0, a);
    for (double* values : {m.Z, m.amplitude, m.peak, m.across, m.floor, m.paired_scale, m.power_offset})
      std::fill(values + i, values + i + kBlockCells, 0.0);  // a whole row: a few vector stores
    m.row_ready[a] = true;
  }
  for (std::size_t k = 0; k < n; ++k) {
    const std::size_t i = where[k];
    m.Z[i] = Z[k];
    m.amplitude[i] = amplitude[k];
    m.peak[i] = peak[k];
    m.across[i] = across[k];
    m.floor[i] = floor[k];
    m.paired_scale[i] = paired_scale[k];
    m.power_offset[i] = power_offset[k];
    computed[i] = true;
  }
  for (std::size_t k = 0; k < copies; ++k) {
    const std::size_t i = copy_to[k], j = copy_from[k];
    m.Z[i] = m.Z[j];
    m.amplitude[i] = m.amplitude[j];
    m.peak[i] = m.peak[j];
    m.across[i] = m.across[j];
    m.floor[i] = m.floor[j];
    m.paired_scale[i] = m.paired_scale[j];
    m.power_offset[i] = m.power_offset[j];
    computed[i] = true;
  }
}

// The stability screen: true only when no flavour pair can have an ELN crossing on the
// quadrature, so that the full computation would return NO_CROSSING with no change and growth
// 0; a cell it cannot decide goes through the full computation. Two sufficient conditions per
// pair (i, j), G = ELN_i - ELN_j:
//  - flavour signs: ELN_f = g_f - gbar_f keeps one sign over the sphere iff the ratio g_f/gbar_f
//    does, and that ratio spans n A e^{-Z} / (nbar Abar e^{-Zbar}) e^{+-|v|}, v = Zbar Fhatbar -
//    Z Fhat. The pair cannot cross when ELN_i and ELN_j have opposite signs or one vanishes
//    (equal moments: computed exactly zero);
//  - pair bounds: each g lies in [floor, peak] (its values against and along its flux); with
//    species of equal moments and opposite signs in G cancelled (their computed distributions
//    are the same numbers), G > 0 everywhere when the positive terms' floors exceed the negative
//    terms' peaks (and G < 0 in the mirror case);
//  - linearised pair bounds, for nearly isotropic species, where [floor, peak] spans +-Z of each
//    density and the bounds above fail on small ELN differences (optically thick cells whose
//    heavy species differ by ~1%: 72% of such stable cells went through the direction loops, 34%
//    with these bounds; callgrind, README's Speed section): 4 pi g = across e^x with
//    x = Z Fhat.n_hat in [-Z, Z], and
//    e^x = 1 + x + rho(x) with 0 <= rho(x) <= rho(Z) = e^Z - 1 - Z. So G = c0 + c.n_hat + R with
//    c0 = sum sign across, c = sum sign across Z Fhat, and R between minus the negative terms'
//    across rho(Z) and plus the positive terms'; G > 0 everywhere when c0 - |c| - (negative terms'
//    across rho(Z)) exceeds the margin, and G < 0 in the mirror case. Exact for isotropic species,
//    tight while Z is small (rho(Z) ~ Z^2/2).
// A relative margin of 1e-9 of the magnitudes involved keeps every decision far above the
// rounding of the computed distributions and of the differences of the ELN pass (about 1e-13
// relative, from the exponent Z Fhat.n_hat), so a decided sign is the one the quadrature shows.
// Beyond Z = 300 the reconstruction clamps tiny values: no decision there.
constexpr int kUndecided = 2;
// quadrature_eln_sign is tried only where the other sign's cap is smaller than this cosine says
// (radius 26 degrees): larger caps hold quadrature points (the covering radius of the order-17
// rule is 13 degrees, smaller for the finer rules), so trying would only cost time.
constexpr double kNearEdge = 0.9;
constexpr double kScreenMargin = 1e-9;
// The linearised pair bounds are tried only while every live species has Z at most this: their
// curvature term across (e^Z - 1 - Z) is already 4.4 across at Z = 2.
constexpr double kLinearisedLargestZ = 2.0;

// Species a and b of cell c have equal moments (then equal computed distributions).
inline bool same_species(const BlockMoments& m, std::size_t c, int a, int b) {
  const std::size_t i = slot(c, a), j = slot(c, b);
  return (m.density[i] == m.density[j]) & (m.flux_x[i] == m.flux_x[j]) & (m.flux_y[i] == m.flux_y[j]) &
         (m.flux_z[i] == m.flux_z[j]);
}

// The flavour signs of every cell of the block, branch-free: +1 when ELN_f > 0 on the whole
// sphere, -1 when < 0, 0 when it vanishes identically (equal moments), kUndecided otherwise.
// `differing`: bit f set when some live cell of the block has nu_f and nubar_f with different
// moments (flavours_differing); a flavour without one has sign 0 and no near edge in every live
// cell (equal moments, and zero values: no slot of the flavour computed), without its loop of two
// exponentials and a square root a lane (the heavy flavours of a block of stable M1-like cells).
// Rejected cells' signs are never read.
DODO_MULTIVERSION
void block_eln_signs(std::size_t count, unsigned differing, BlockMoments& m) {
  // Slot a = slot(cell, flavour) is nu_flavour's; a + kAntineutrinos its nubar's.
  constexpr std::size_t kAntineutrinos = kFlavours * kBlockCells;
  const std::size_t lanes = block_lanes(count);
  for (int flavour = 0; flavour < kFlavours; ++flavour) {
    if (!(differing >> flavour & 1u)) {
      std::fill(m.eln_sign + slot(0, flavour), m.eln_sign + slot(kBlockCells, flavour), 0);
      std::fill(m.near_edge + slot(0, flavour), m.near_edge + slot(kBlockCells, flavour), 0);
      continue;
    }
#pragma omp simd
    for (std::size_t a = slot(0, flavour); a < slot(lanes, flavour); ++a) {
      const std::size_t b = a + kAntineutrinos;
      const double vx = m.Z[b] * m.direction_x[b] - m.Z[a] * m.direction_x[a];
      const double vy = m.Z[b] * m.direction_y[b] - m.Z[a] * m.direction_y[a];
      const double vz = m.Z[b] * m.direction_z[b] - m.Z[a] * m.direction_z[a];
      const double norm_v = std::sqrt(vx * vx + vy * vy + vz * vz);
      const double spread = clamped_exp(-norm_v);  // |v| <= 600: no clamping
      // |ln(across/across_bar)| > 0.9 |v|: the cap where the ratio crosses 1 has cos(radius) > 0.9
      const double near_spread = clamped_exp(-kNearEdge * norm_v);
      m.near_edge[a] = (m.across[a] * near_spread > m.across[b]) | (m.across[b] * near_spread > m.across[a]);
      const bool clamped = (m.Z[a] > 300.0) | (m.Z[b] > 300.0);
      const bool positive = m.across[a] * spread > (1.0 + kScreenMargin) * m.across[b];
      const bool negative = m.across[b] * spread > (1.0 + kScreenMargin) * m.across[a];
      const bool same = (m.density[a] == m.density[b]) & (m.flux_x[a] == m.flux_x[b]) & (m.flux_y[a] == m.flux_y[b]) &
                        (m.flux_z[a] == m.flux_z[b]);
      const int sign = clamped ? kUndecided : (positive ? 1 : (negative ? -1 : kUndecided));
      m.eln_sign[a] = same ? 0 : sign;
    }
  }
}

// wanted[slot(c, a)] for the live cells c whose flavour of species a has nu and nubar with
// different moments (the species whose values the flavour signs need); false elsewhere. Across
// cells, a flavour at a time: vector compares (a scalar loop of compares and flag moves was half
// of classify_block's instructions on a stable cell). Returns the flavours with such a cell (bit f
// for flavour f).
DODO_MULTIVERSION
unsigned flavours_differing(std::size_t count, const bool* live, const BlockMoments& m, bool* wanted) {
  constexpr std::size_t kAntineutrinos = kFlavours * kBlockCells;
  const std::size_t lanes = block_lanes(count);  // live is false past count
  unsigned differing = 0;
#if DODO_MULTIVERSION_ENABLED
  // Four cells a step in GCC's vector types (an `omp simd` loop over bools stayed scalar).
  typedef double Doubles4 __attribute__((vector_size(32)));
  typedef long long Lanes4 __attribute__((vector_size(32)));
  typedef signed char Bytes4 __attribute__((vector_size(4)));
  for (int flavour = 0; flavour < kFlavours; ++flavour) {
    std::uint32_t any = 0;
    for (std::size_t c = 0; c < lanes; c += 4) {
      const std::size_t a = slot(c, flavour), b = a + kAntineutrinos;
      Lanes4 same = Lanes4{} - 1;
      for (const double* values : {m.density, m.flux_x, m.flux_y, m.flux_z}) {
        Doubles4 x, y;
        std::memcpy(&x, values + a, sizeof x);
        std::memcpy(&y, values + b, sizeof y);
        same &= x == y;
      }
      Bytes4 alive;
      std::memcpy(&alive, live + c, sizeof alive);  // bools: 0 or 1
      const Bytes4 differ = alive & ~__builtin_convertvector(same, Bytes4);
      std::memcpy(wanted + a, &differ, sizeof differ);
      std::memcpy(wanted + b, &differ, sizeof differ);
      std::uint32_t bytes;
      std::memcpy(&bytes, &differ, sizeof bytes);
      any |= bytes;
    }
    differing |= (any != 0 ? 1u : 0u) << flavour;
  }
#else
  for (int flavour = 0; flavour < kFlavours; ++flavour)
    for (std::size_t c = 0; c < lanes; ++c) {
      const std::size_t a = slot(c, flavour), b = a + kAntineutrinos;
      const bool same = (m.density[a] == m.density[b]) & (m.flux_x[a] == m.flux_x[b]) & (m.flux_y[a] == m.flux_y[b]) &
                        (m.flux_z[a] == m.flux_z[b]);
      wanted[a] = wanted[b] = live[c] & !same;
      differing |= (wanted[a] ? 1u : 0u) << flavour;
    }
#endif
  return differing;
}

// Pair bounds (see above): true when G_p keeps one strict sign over the sphere.
bool pair_bounded(int i, int j, const BlockMoments& m, std::size_t c) {
  const int species[4] = {i, i + kFlavours, j, j + kFlavours};
  const double sign[4] = {1.0, -1.0, -1.0, 1.0};
  bool live[4] = {true, true, true, true};
  // Cancel the opposite-signed terms of equal moments: (nu_i, nubar_i), (nu_j, nubar_j),
  // (nu_i, nu_j), (nubar_i, nubar_j).
  const int opposite[4][2] = {{0, 1}, {2, 3}, {0, 2}, {1, 3}};
  for (const auto& pair : opposite)
    if (live[pair[0]] && live[pair[1]] && same_species(m, c, species[pair[0]], species[pair[1]]))
      live[pair[0]] = live[pair[1]] = false;
  double lowest = 0.0, highest = 0.0, magnitude = 0.0, largest_Z = 0.0;
  for (int k = 0; k < 4; ++k) {
    const std::size_t index = slot(c, species[k]);
    magnitude += m.peak[index];  // the scale of the computed difference's rounding
    if (!live[k]) continue;
    if (m.Z[index] > 300.0) return false;
    largest_Z = std::max(largest_Z, m.Z[index]);
    lowest += sign[k] > 0 ? m.floor[index] : -m.peak[index];
    highest += sign[k] > 0 ? m.peak[index] : -m.floor[index];
  }
  const double margin = kScreenMargin * magnitude;
  if (lowest > margin || highest < -margin) return true;
  // The linearised bounds are for nearly isotropic species (Z ~ 3 x flux factor); a crossing cell
  // usually has a species beyond Z = 2 (flux factor 0.54) and then skips them.
  if (largest_Z > kLinearisedLargestZ) return false;
  // Linearised bounds (see above). The computed distributions and these sums carry rounding of
  // about 1e-13 of the magnitude (sum of peaks = across e^Z), far below the margin.
  double constant = 0.0, linear_x = 0.0, linear_y = 0.0, linear_z = 0.0;
  for (int k = 0; k < 4; ++k) {
    if (!live[k]) continue;
    const std::size_t index = slot(c, species[k]);
    const double term = sign[k] * m.across[index], Z = m.Z[index];
    constant += term;
    linear_x += term * Z * m.direction_x[index];
    linear_y += term * Z * m.direction_y[index];
    linear_z += term * Z * m.direction_z[index];
  }
  const double linear = std::sqrt(linear_x * linear_x + linear_y * linear_y + linear_z * linear_z);
  // The curvature only widens the bounds: without it neither holding (a crossing cell's usual
  // case) decides the pair undecided without the exponentials.
  const bool may_be_positive = constant - linear > margin, may_be_negative = constant + linear < -margin;
  if (!may_be_positive && !may_be_negative) return false;
  double curvature = 0.0;  // sum of across rho(Z) >= 0 over the terms of the sign that works against
  for (int k = 0; k < 4; ++k) {
    if (!live[k] || (sign[k] < 0) != may_be_positive) continue;
    const std::size_t index = slot(c, species[k]);
    curvature += m.across[index] * std::max(0.0, std::expm1(m.Z[index]) - m.Z[index]);
  }
  return may_be_positive ? constant - linear - curvature > margin : constant + linear + curvature < -margin;
}

// The sign of ELN_f on the quadrature's points, for a flavour whose sign over the whole sphere
// block_eln_signs left undecided (a crossing there may fall between the points, where Box3D does
// not see it). ln(g_f/gbar_f) = ln(across/across_bar) + (Z Fhat - Zbar Fhatbar).n_hat at each
// point, with no exponential; a point within kScreenMargin of zero leaves it undecided (far above
// the rounding of the computed distributions, as for the flavour signs). Stops at the first
// point that shows both signs are possible (the usual case for a crossing cell).
int quadrature_eln_sign(const LebedevRule& rule, const BlockMoments& m, std::size_t c, int flavour) {
  const std::size_t a = slot(c, flavour), b = slot(c, flavour + kFlavours);
  if (m.Z[a] > 300.0 || m.Z[b] > 300.0) return kUndecided;  // clamped reconstruction: no decision
  if (!(m.across[a] > 0.0 && m.across[b] > 0.0)) return kUndecided;
  const double log_ratio = std::log(m.across[a] / m.across[b]);
  if (!std::isfinite(log_ratio)) return kUndecided;
  const double vx = m.Z[a] * m.direction_x[a] - m.Z[b] * m.direction_x[b];
  const double vy = m.Z[a] * m.direction_y[a] - m.Z[b] * m.direction_y[b];
  const double vz = m.Z[a] * m.direction_z[a] - m.Z[b] * m.direction_z[b];
  const std::size_t points = rule.size();
  bool positive = true, negative = true;
  for (std::size_t q = 0; q < points && (positive || negative); ++q) {
    const double exponent = log_ratio + vx * rule.x[q] + vy * rule.y[q] + vz * rule.z[q];
    positive &= exponent > kScreenMargin;
    negative &= exponent < -kScreenMargin;
  }
  return positive ? 1 : (negative ? -1 : kUndecided);
}

// True when the flavour signs alone (or vanishing G) settle every pair of cell c: the cell is
// stable with no species' values beyond those of the flavours whose nu and nubar differ.
bool stable_by_signs(const BlockMoments& m, std::size_t c) {
  for (int p = 0; p < kPairs; ++p) {
    const int i = kPairFirst[p], j = kPairSecond[p];
    const int sign_i = m.eln_sign[i * kBlockCells + c], sign_j = m.eln_sign[j * kBlockCells + c];
    if ((sign_i != kUndecided) & (sign_j != kUndecided) & (sign_i * sign_j <= 0)) continue;
    if (same_species(m, c, i, j) && same_species(m, c, i + kFlavours, j + kFlavours)) continue;  // G = 0
    return false;
  }
  return true;
}

bool stable_by_moments(const BlockMoments& m, std::size_t c) {
  int sign[kFlavours];
  for (int f = 0; f < kFlavours; ++f) sign[f] = m.eln_sign[f * kBlockCells + c];
  for (int p = 0; p < kPairs; ++p) {
    const int i = kPairFirst[p], j = kPairSecond[p];
    const bool signs_decide = (sign[i] != kUndecided) & (sign[j] != kUndecided) & (sign[i] * sign[j] <= 0);
    if (signs_decide) continue;
    if (same_species(m, c, i, j) && same_species(m, c, i + kFlavours, j + kFlavours)) continue;  // G = 0
    if (!pair_bounded(i, j, m, c)) return false;
  }
  return true;
}

}  // namespace

Box3D::Box3D(const Box3DSettings& settings)
    : settings_(settings),
      rule_(lebedev_rule(settings.lebedev_order)),
      paired_rule_(paired_rule(rule_, kDirectionLanes)) {
  if (!(settings.max_flux_factor > 0.0 && settings.max_flux_factor < 1.0))
    throw std::invalid_argument("max_flux_factor must lie in (0, 1); got " + number_text(settings.max_flux_factor));
}

namespace {

// The ELN-crossing shape of one cell (RestFrameCell::crossing) from its pairs' G_p on the
// points and their integrals I+ (positive) and I- (negative). The growth rate follows the shape
// of the crossing, which the moments' invariants give the network only implicitly (docs/training.md).
// The crossing sums' max(a, 0) and min(a, 0) as single max and min instructions: GCC emits them
// for `a > 0 ? a : 0` only where it may ignore NaN and the sign of zero (a G_p value is finite:
// cells with non-finite moments are rejected before; +0 and -0 add the same to a sum).
// no-math-errno: the tail's square roots, of sums of squares, then vectorise across the pairs.
// (clang has no optimize attribute and warns of it: there only always_inline; the results are the
// same, the max and min are a speed matter.)
#if defined(__clang__)
#define DODO_CROSSING_MATH __attribute__((always_inline))
#else
#define DODO_CROSSING_MATH \
  __attribute__((always_inline, optimize("finite-math-only", "no-signed-zeros", "no-math-errno")))
#endif

// Sums per pair in the crossing pass: the weight where G > 0, the two lobes' moments (3 + 3), the
// weight where G < 0.
constexpr int kCrossingSums = 8;

// Sums over the antipodal pairs q, q + half (same weight, opposite directions: the rule is laid
// out so) of pair p's G = value (at q), opposite (at q + half): sums[0] the weight where G > 0,
// sums[1..3] the moment sum_G>0 w G n_hat, sums[4..6] sum_G<0 w |G| n_hat, on antipodes as
// (max(value, 0) - max(opposite, 0)) w n_q and (min(opposite, 0) - min(value, 0)) w n_q; sums[7]
// the weight where G < 0 (the fraction of the pair's mirror image, G -> -G: the closure's flavour
// symmetrisation). `a > 0 ? a : 0` and `a < 0 ? a : 0` are one max and one min instruction each
// (x86's operand order).
template <typename Vector>
inline DODO_CROSSING_MATH void accumulate_crossing(const Vector& w, const Vector& wx, const Vector& wy,
                                                   const Vector& wz, const Vector& value, const Vector& opposite,
                                                   Vector* sums) {
  const Vector zero = Vector{};
  // The lobes' differences times the weighted directions w n_q (PairedRule): no multiply by w here.
  const Vector up_moment = (value > zero ? value : zero) - (opposite > zero ? opposite : zero);
  const Vector down_moment = (opposite < zero ? opposite : zero) - (value < zero ? value : zero);
  // Conditional adds (merge-masked adds on AVX-512), not a select and an add each.
  sums[0] = value > zero ? sums[0] + w : sums[0];
  sums[0] = opposite > zero ? sums[0] + w : sums[0];
  sums[7] = value < zero ? sums[7] + w : sums[7];
  sums[7] = opposite < zero ? sums[7] + w : sums[7];
  sums[1] += up_moment * wx;
  sums[2] += up_moment * wy;
  sums[3] += up_moment * wz;
  sums[4] += down_moment * wx;
  sums[5] += down_moment * wy;
  sums[6] += down_moment * wz;
}

#if DODO_MULTIVERSION_ENABLED  // GCC (__builtin_shuffle); the 8-lane path below is its x86-64-v4 clone's
// The lane sums of eight vectors of eight doubles, lane j of the result that of v[j], in
// lane_sum's order (lanes l + l+4, then + l+2, then + l+1: the same bits) by three levels of
// shuffles and adds: 7 adds and 14 shuffles against lane_sum's 8 x 6 instructions. (Result by
// reference: GCC warns that vectors by value change the ABI between targets.)
typedef double Doubles8 __attribute__((vector_size(64)));
typedef long long Lanes8 __attribute__((vector_size(64)));
inline DODO_CROSSING_MATH void fold8(const Doubles8* v, Doubles8& sums) {
  // The levels below leave the sum of input j in lane order 0, 2, 1, 3, 4, 6, 5, 7; the inputs are
  // taken in that order, so that lane j holds v[j]'s sum.
  constexpr int kOrder[8] = {0, 2, 1, 3, 4, 6, 5, 7};
  Doubles8 halves[4], quarters[2];
  for (int i = 0; i < 4; ++i)  // lanes l + l+4 of two inputs, four lanes each
    halves[i] = __builtin_shuffle(v[kOrder[2 * i]], v[kOrder[2 * i + 1]], Lanes8{0, 1, 2, 3, 8, 9, 10, 11}) +
                __builtin_shuffle(v[kOrder[2 * i]], v[kOrder[2 * i + 1]], Lanes8{4, 5, 6, 7, 12, 13, 14, 15});
  for (int i = 0; i < 2; ++i)  // + lanes l+2
    quarters[i] = __builtin_shuffle(halves[2 * i], halves[2 * i + 1], Lanes8{0, 1, 8, 9, 4, 5, 12, 13}) +
                  __builtin_shuffle(halves[2 * i], halves[2 * i + 1], Lanes8{2, 3, 10, 11, 6, 7, 14, 15});
  sums = __builtin_shuffle(quarters[0], quarters[1], Lanes8{0, 2, 4, 6, 8, 10, 12, 14}) +  // + lane l+1
         __builtin_shuffle(quarters[0], quarters[1], Lanes8{1, 3, 5, 7, 9, 11, 13, 15});
}

typedef double Doubles4 __attribute__((vector_size(32)));
typedef long long Lanes4 __attribute__((vector_size(32)));

// The lane sums of four vectors of four doubles, lane j of the result that of v[j], in
// lane_sum's order ((l0 + l2) + (l1 + l3): the same bits) by shuffles and three vector adds.
// (Result by reference, as fold8's.)
inline DODO_CROSSING_MATH void fold4(const Doubles4* v, Doubles4& sums) {
  const Doubles4 h01 = __builtin_shuffle(v[0], v[1], Lanes4{0, 1, 4, 5}) + __builtin_shuffle(v[0], v[1], Lanes4{2, 3, 6, 7});
  const Doubles4 h23 = __builtin_shuffle(v[2], v[3], Lanes4{0, 1, 4, 5}) + __builtin_shuffle(v[2], v[3], Lanes4{2, 3, 6, 7});
  sums = __builtin_shuffle(h01, h23, Lanes4{0, 2, 4, 6}) + __builtin_shuffle(h01, h23, Lanes4{1, 3, 5, 7});
}

// r[k] = (c[0][k], c[1][k], c[2][k], c[3][k]): a 4 x 4 transpose by shuffles.
inline DODO_CROSSING_MATH void transpose4(const Doubles4& c0, const Doubles4& c1, const Doubles4& c2,
                                          const Doubles4& c3, Doubles4* r) {
  const Doubles4 t0 = __builtin_shuffle(c0, c1, Lanes4{0, 4, 2, 6}), t1 = __builtin_shuffle(c0, c1, Lanes4{1, 5, 3, 7});
  const Doubles4 t2 = __builtin_shuffle(c2, c3, Lanes4{0, 4, 2, 6}), t3 = __builtin_shuffle(c2, c3, Lanes4{1, 5, 3, 7});
  r[0] = __builtin_shuffle(t0, t2, Lanes4{0, 1, 4, 5});
  r[1] = __builtin_shuffle(t1, t3, Lanes4{0, 1, 4, 5});
  r[2] = __builtin_shuffle(t0, t2, Lanes4{2, 3, 6, 7});
  r[3] = __builtin_shuffle(t1, t3, Lanes4{2, 3, 6, 7});
}
#endif

#if DODO_MULTIVERSION_ENABLED
// All three pairs' sums (AVX-512: eight lanes each), folded four rows of totals at a time in
// registers and handed to the tail as vectors (a scalar store per total, read back as a vector,
// stalled on store forwarding: perf put 40% of the crossing pass's time after its loop;
// whole-vector stores to a stack array, read back by the tail, were the next step). fold8's adds
// are lane_sum's, in its order: the same bits. rows[k]: sum k of each pair, a fourth lane of 0.
template <typename Vector>
inline DODO_CROSSING_MATH void fold_pairs8(const Vector (&sums)[kPairs][kCrossingSums], Doubles4* rows) {
  static_assert(sizeof(Vector) == sizeof(Doubles8), "eight lanes");
  static_assert(kPairs == 3 && kCrossingSums % 2 == 0, "two rows of totals per fold: three pairs and a zero");
#pragma GCC unroll 4
  for (int k = 0; k < kCrossingSums; k += 2) {
    Doubles8 lanes[8] = {}, folded;  // inputs 3 and 7 stay zero: the fourth pair
    for (int half = 0; half < 2; ++half)
      for (int g = 0; g < kPairs; ++g) std::memcpy(&lanes[4 * half + g], &sums[g][k + half], sizeof(Doubles8));
    fold8(lanes, folded);
    std::memcpy(&rows[k], &folded, sizeof rows[k]);  // rows k and k + 1
    std::memcpy(&rows[k + 1], reinterpret_cast<const char*>(&folded) + sizeof rows[k], sizeof rows[k + 1]);
  }
}
#endif

// The sums of kGroup pairs (first, first + 1, ...) in lane-wise partial sums over blocks of
// kLanes antipodal pairs (half is padded to a multiple of 8 with zero weights), on GCC's vector
// types so that the accumulators stay in registers (a seven-variable `omp simd` reduction ran
// scalar; arrays of partial sums were zeroed and folded through memory), then folded in halves
// (a tree): with GCC's vectors (DODO_MULTIVERSION_ENABLED), one pair into its two columns
// (Totals: Doubles4[2], sums 0-3 and 4-7) or, all three pairs on AVX-512, into the rows of
// totals (Totals: Doubles4[8], row k: sum k of each pair, kept in registers for the tail);
// otherwise into totals[0..7][p] (Totals: double[8][4]).
template <std::size_t kLanes, int kGroup, typename Totals>
inline DODO_CROSSING_MATH void crossing_sums(const PairedRule& rule, const double* const G[kPairs],
                                                         const int* pairs, Totals& totals) {
  static_assert(8 % kLanes == 0, "half is padded to a multiple of 8 (Box3D::kDirectionLanes)");
  typedef double Vector __attribute__((vector_size(kLanes * sizeof(double))));
  const double *weight = rule.weight.data(), *x = rule.weighted_x.data(), *y = rule.weighted_y.data(),
               *z = rule.weighted_z.data();
  const std::size_t half = rule.half;
  Vector sums[kGroup][kCrossingSums];
#pragma GCC unroll 8
  for (int g = 0; g < kGroup; ++g)
#pragma GCC unroll 8
    for (int k = 0; k < kCrossingSums; ++k) sums[g][k] = Vector{};
  for (std::size_t q = 0; q < half; q += kLanes) {
    Vector w, xq, yq, zq;
    std::memcpy(&w, weight + q, sizeof w);
    std::memcpy(&xq, x + q, sizeof xq);
    std::memcpy(&yq, y + q, sizeof yq);
    std::memcpy(&zq, z + q, sizeof zq);
#pragma GCC unroll 8
    for (int g = 0; g < kGroup; ++g) {
      Vector value, opposite;
      std::memcpy(&value, G[pairs[g]] + q, sizeof value);
      std::memcpy(&opposite, G[pairs[g]] + q + half, sizeof opposite);
      accumulate_crossing(w, xq, yq, zq, value, opposite, sums[g]);
    }
  }
#if DODO_MULTIVERSION_ENABLED
  if constexpr (kLanes == 8 && kGroup == kPairs) {
    return fold_pairs8(sums, totals);
  } else if constexpr (kGroup == 1) {
    // One pair: its eight sums as two vectors of four (totals[0]: sums 0-3, totals[1]: 4-7),
    // folded across four sums at a time in lane_sum's order (8 lanes: l + l+4 first, then as 4
    // lanes: (l0 + l2) + (l1 + l3)): the same bits, without a scalar store per sum that the
    // tail read back as vectors (store forwarding).
    static_assert(kLanes == 4 || kLanes == 8, "fold4 takes four lanes");
    Doubles4 quarter[kCrossingSums];
#pragma GCC unroll 8
    for (int k = 0; k < kCrossingSums; ++k) {
      if constexpr (kLanes == 8) {
        Doubles4 low, high;
        std::memcpy(&low, &sums[0][k], sizeof low);
        std::memcpy(&high, reinterpret_cast<const char*>(&sums[0][k]) + sizeof low, sizeof high);
        quarter[k] = low + high;
      } else {
        std::memcpy(&quarter[k], &sums[0][k], sizeof quarter[k]);
      }
    }
    fold4(quarter, totals[0]);
    fold4(quarter + 4, totals[1]);
  } else {
    static_assert(kGroup == 1, "the three pairs at once only on AVX-512 (kLanes 8)");
  }
#else
#pragma GCC unroll 8
  for (int g = 0; g < kGroup; ++g)
#pragma GCC unroll 8
    for (int k = 0; k < kCrossingSums; ++k) {
      double lanes[kLanes];
      std::memcpy(lanes, &sums[g][k], sizeof lanes);
      totals[k][pairs[g]] = lane_sum<double, kLanes>(lanes);
    }
#endif
}

#if DODO_MULTIVERSION_ENABLED
// The crossing inputs of the four pairs side by side (the fourth: zeros) from the rows of
// totals (row k: sum k of each pair): the scalar tail's operations (below, #else) on the same
// numbers lane by lane, as vector operations (one square root or division instruction for all
// pairs; divisors made 1 where the quotient is not used, so that no division is conditional),
// and written to `out` by two 4 x 4 transposes instead of a scalar store per value. The same bits.
inline DODO_CROSSING_MATH void crossing_tail(const Doubles4* rows, const double* positive, const double* negative,
                                             double* out) {
  constexpr double kInverseFourPi = 0.25 / 3.14159265358979323846;  // the weights sum to 4 pi
  const Doubles4 zero = Doubles4{}, one = zero + 1.0;
  const Doubles4 plus = {positive[0], positive[1], positive[2], 0.0};
  const Doubles4 minus = {negative[0], negative[1], negative[2], 0.0};
  const Doubles4 px = rows[1], py = rows[2], pz = rows[3], mx = rows[4], my = rows[5], mz = rows[6];
  Doubles4 plus_length = px * px + py * py + pz * pz, minus_length = mx * mx + my * my + mz * mz;
#pragma GCC unroll 4
  for (int p = 0; p < 4; ++p) plus_length[p] = std::sqrt(plus_length[p]);
#pragma GCC unroll 4
  for (int p = 0; p < 4; ++p) minus_length[p] = std::sqrt(minus_length[p]);
  const Doubles4 lengths = plus_length * minus_length;
  const Lanes4 has_plus = plus > zero, has_minus = minus > zero, has_lengths = lengths > zero;
  const Doubles4 f0 = plus, f1 = minus;
  const Doubles4 f2 = has_plus ? rows[0] * kInverseFourPi : zero;  // a lobe below kLobeNoise is empty
  const Doubles4 to_plus = plus_length / (has_plus ? plus : one);
  const Doubles4 to_minus = minus_length / (has_minus ? minus : one);
  const Doubles4 cosine = (px * mx + py * my + pz * mz) / (has_lengths ? lengths : one);
  const Doubles4 f3 = has_plus ? to_plus : zero;
  const Doubles4 f4 = has_minus ? to_minus : zero;
  const Doubles4 f5 = (has_plus & has_minus & has_lengths) ? cosine : zero;
  const Doubles4 f7 = has_minus ? rows[7] * kInverseFourPi : zero;
  static_assert(kPairs == 3 && kCrossingFeaturesPerPair == 6, "three pairs of six inputs: out[6 p + k]");
  const Doubles4 t0 = __builtin_shuffle(f0, f1, Lanes4{0, 4, 2, 6}), t1 = __builtin_shuffle(f0, f1, Lanes4{1, 5, 3, 7});
  const Doubles4 t2 = __builtin_shuffle(f2, f3, Lanes4{0, 4, 2, 6}), t3 = __builtin_shuffle(f2, f3, Lanes4{1, 5, 3, 7});
  const Doubles4 pair0 = __builtin_shuffle(t0, t2, Lanes4{0, 1, 4, 5});  // f0..f3 of pair 0
  const Doubles4 pair1 = __builtin_shuffle(t1, t3, Lanes4{0, 1, 4, 5});
  const Doubles4 pair2 = __builtin_shuffle(t0, t2, Lanes4{2, 3, 6, 7});
  const Doubles4 u0 = __builtin_shuffle(f4, f5, Lanes4{0, 4, 2, 6});  // f4, f5 of pairs 0 and 2
  const Doubles4 u1 = __builtin_shuffle(f4, f5, Lanes4{1, 5, 3, 7});  // of pairs 1 and 3
  std::memcpy(out, &pair0, sizeof pair0);
  std::memcpy(out + 4, &u0, 2 * sizeof(double));
  std::memcpy(out + 6, &pair1, sizeof pair1);
  std::memcpy(out + 10, &u1, 2 * sizeof(double));
  std::memcpy(out + 12, &pair2, sizeof pair2);
  std::memcpy(out + 16, reinterpret_cast<const double*>(&u0) + 2, 2 * sizeof(double));
  std::memcpy(out + kCrossingFeatures, &f7, kPairs * sizeof(double));
}
#endif

// kLanes: antipodal pairs summed side by side, one vector of doubles; kAllPairs: the three pairs
// in one pass over the points (their 21 accumulators fit AVX-512's 32 registers, not AVX2's 16,
// where one pair at a time keeps its seven in registers).
template <std::size_t kLanes, bool kAllPairs>
inline DODO_CROSSING_MATH void crossing_shape_lanes(const PairedRule& rule, const double* const G[kPairs],
                                                                const double* positive, const double* negative,
                                                                double* out) {
  // A pair with G_p = 0 on every point (mu = tau) has all sums 0: skipped.
  int active[kPairs], count = 0;
  for (int p = 0; p < kPairs; ++p)
    if (!(positive[p] == 0.0 && negative[p] == 0.0)) active[count++] = p;
#if DODO_MULTIVERSION_ENABLED
  Doubles4 rows[kCrossingSums];  // [sum], lanes: the pairs and a fourth of zeros
  if constexpr (kAllPairs) {
    if (count == kPairs) {
      crossing_sums<kLanes, kPairs>(rule, G, active, rows);  // writes every row
      return crossing_tail(rows, positive, negative, out);
    }
  }
  // Pair by pair: each pair's sums as two vectors (columns), transposed to the rows of four
  // pairs; inactive pairs and the fourth stay 0.
  Doubles4 columns[4][2];
#pragma GCC unroll 8
  for (int p = 0; p < 4; ++p) columns[p][0] = columns[p][1] = Doubles4{};  // (`= {}` became a memset call)
  for (int i = 0; i < count; ++i) crossing_sums<kLanes, 1>(rule, G, active + i, columns[active[i]]);
  transpose4(columns[0][0], columns[1][0], columns[2][0], columns[3][0], rows);
  transpose4(columns[0][1], columns[1][1], columns[2][1], columns[3][1], rows + 4);
  crossing_tail(rows, positive, negative, out);
#else
  constexpr double kInverseFourPi = 0.25 / 3.14159265358979323846;  // the weights sum to 4 pi
  double totals[kCrossingSums][4];  // [sum][pair], a fourth pair of zeros: vectors of four pairs below
  std::memset(totals, 0, sizeof totals);
  for (int i = 0; i < count; ++i) crossing_sums<kLanes, 1>(rule, G, active + i, totals);
  // Four pairs side by side (simple loops over them, which GCC vectorises: one square root or
  // division instruction for all pairs; divisors made 1 where the quotient is not used, so that
  // no division is conditional).
  const double* const px = totals[1], *const py = totals[2], *const pz = totals[3];
  const double* const mx = totals[4], *const my = totals[5], *const mz = totals[6];
  double plus[4], minus[4], plus_length[4], minus_length[4], lengths[4], features[kCrossingFeaturesPerPair][4];
  for (int p = 0; p < 4; ++p) {
    plus[p] = p < kPairs ? positive[p] : 0.0;
    minus[p] = p < kPairs ? negative[p] : 0.0;
  }
  for (int p = 0; p < 4; ++p) plus_length[p] = std::sqrt(px[p] * px[p] + py[p] * py[p] + pz[p] * pz[p]);
  for (int p = 0; p < 4; ++p) minus_length[p] = std::sqrt(mx[p] * mx[p] + my[p] * my[p] + mz[p] * mz[p]);
  for (int p = 0; p < 4; ++p) lengths[p] = plus_length[p] * minus_length[p];
  for (int p = 0; p < 4; ++p) {
    features[0][p] = plus[p];
    features[1][p] = minus[p];
    features[2][p] = plus[p] > 0.0 ? totals[0][p] * kInverseFourPi : 0.0;  // a lobe below kLobeNoise is empty
    const double to_plus = plus_length[p] / (plus[p] > 0.0 ? plus[p] : 1.0);
    const double to_minus = minus_length[p] / (minus[p] > 0.0 ? minus[p] : 1.0);
    const double cosine = (px[p] * mx[p] + py[p] * my[p] + pz[p] * mz[p]) / (lengths[p] > 0.0 ? lengths[p] : 1.0);
    features[3][p] = plus[p] > 0.0 ? to_plus : 0.0;
    features[4][p] = minus[p] > 0.0 ? to_minus : 0.0;
    features[5][p] = plus[p] > 0.0 && minus[p] > 0.0 && lengths[p] > 0.0 ? cosine : 0.0;
  }
  for (int p = 0; p < kPairs; ++p)
    for (int k = 0; k < kCrossingFeaturesPerPair; ++k) out[p * kCrossingFeaturesPerPair + k] = features[k][p];
  for (int p = 0; p < kPairs; ++p) out[kCrossingFeatures + p] = minus[p] > 0.0 ? totals[7][p] * kInverseFourPi : 0.0;
#endif
}

#if DODO_MULTIVERSION_ENABLED
__attribute__((target("arch=x86-64-v4"))) void crossing_shape(const PairedRule& rule, const double* const G[kPairs],
                                                              const double* positive, const double* negative,
                                                              double* out) {
  crossing_shape_lanes<8, true>(rule, G, positive, negative, out);
}
__attribute__((target("arch=x86-64-v3"))) void crossing_shape(const PairedRule& rule, const double* const G[kPairs],
                                                              const double* positive, const double* negative,
                                                              double* out) {
  crossing_shape_lanes<4, false>(rule, G, positive, negative, out);
}
__attribute__((target("default")))
#endif
void crossing_shape(const PairedRule& rule, const double* const G[kPairs], const double* positive,
                    const double* negative, double* out) {
  crossing_shape_lanes<4, false>(rule, G, positive, negative, out);
}

#if DODO_MULTIVERSION_ENABLED
// The integrals' terms of eight points: I+ += w max(G, 0), I- -= w min(G, 0) (the same number as
// + w max(-G, 0); the min is the crossing sums' own).
inline DODO_CROSSING_MATH void add_integrals(const Doubles8& w, const Doubles8 (&at)[kPairs], Doubles8* plus,
                                             Doubles8* minus) {
  const Doubles8 zero = Doubles8{};
#pragma GCC unroll 4
  for (int p = 0; p < kPairs; ++p) {
    plus[p] += w * (at[p] > zero ? at[p] : zero);
    minus[p] -= w * (at[p] < zero ? at[p] : zero);
  }
}
#endif

// Steps 2-3 of a cell on AVX-512 (eight lanes) in one pass over the rule's antipodal pairs q,
// q + half (same weight): the ELN differences G_p = ELN_i - ELN_j of the three pairs (stored: the
// mixing pass reads them) and their integrals I+_p = sum w max(G_p, 0) and I-_p = sum w max(-G_p, 0)
// (each lane's sum over the pairs in order, the lanes folded by lane_sum). The integrals are summed
// in another order than the loop of angular_change (a point and its antipode together): Box3D's
// results on AVX-512 moved by at most ~1e-16 N_tot (docs/speed.md, twenty-fourth round). With
// kCrossing, then the pairs' crossing sums by crossing_sums over the G just stored (the crossing inputs
// are the same bits as the other paths' own pass gives). rows: the folded crossing sums, as
// crossing_tail takes them.
// The crossing sums were made in the first loop until 2026-12-07 (twenty-fourth round), beside the
// integrals: their 24 accumulators and the integrals' 6 needed more than the 32 vector registers, and
// the spilled sums went through the stack every iteration (perf: ~15% of the closure's time in this
// function, against ~5% now; docs/speed.md, twenty-fifth round). G is read back from L1.
#if DODO_MULTIVERSION_ENABLED
template <bool kCrossing>
__attribute__((target("arch=x86-64-v4"))) inline DODO_CROSSING_MATH void fused_eln_pass(
    const PairedRule& rule, const double* const g[kSpecies], double* const G[kPairs], double* positive,
    double* negative, Doubles4* rows) {
  static_assert(kSpecies == 6 && kPairFirst[0] == 0 && kPairSecond[0] == 1 && kPairFirst[1] == 0 &&
                    kPairSecond[1] == 2 && kPairFirst[2] == 1 && kPairSecond[2] == 2,
                "the pass names the pairs (e,mu), (e,tau), (mu,tau)");
  typedef Doubles8 Vector;
  const double* weight = rule.weight.data();
  const std::size_t half = rule.half;  // a multiple of 8 (Box3D::kDirectionLanes)
  // The arrays' pointers in locals: the stores into G (memcpy, which may alias anything) made GCC
  // load every pointer again in each iteration.
  const double* species[kSpecies];
  double* differences[kPairs];
  for (int s = 0; s < kSpecies; ++s) species[s] = g[s];
  for (int p = 0; p < kPairs; ++p) differences[p] = G[p];
  Vector plus[kPairs], minus[kPairs];
#pragma GCC unroll 4
  for (int p = 0; p < kPairs; ++p) plus[p] = minus[p] = Vector{};
  for (std::size_t q = 0; q < half; q += 8) {
    Vector w;
    std::memcpy(&w, weight + q, sizeof w);
    Vector at[2][kPairs];  // G_p at q and at its antipode q + half
#pragma GCC unroll 2
    for (int side = 0; side < 2; ++side) {
      const std::size_t point = q + side * half;
      Vector eln[kFlavours];
#pragma GCC unroll 4
      for (int f = 0; f < kFlavours; ++f) {
        Vector nu, nubar;
        std::memcpy(&nu, species[f] + point, sizeof nu);
        std::memcpy(&nubar, species[f + kFlavours] + point, sizeof nubar);
        eln[f] = nu - nubar;
      }
      at[side][0] = eln[0] - eln[1];
      at[side][1] = eln[0] - eln[2];
      at[side][2] = eln[1] - eln[2];
#pragma GCC unroll 4
      for (int p = 0; p < kPairs; ++p) std::memcpy(differences[p] + point, &at[side][p], sizeof(Vector));
    }
    add_integrals(w, at[0], plus, minus);
    add_integrals(w, at[1], plus, minus);
  }
  if constexpr (kCrossing) {  // crossing_sums' own loop and fold, over the G just stored
    static constexpr int kAllPairs[kPairs] = {0, 1, 2};
    const double* const stored[kPairs] = {differences[0], differences[1], differences[2]};
    crossing_sums<8, kPairs>(rule, stored, kAllPairs, rows);
  }
#pragma GCC unroll 4
  for (int p = 0; p < kPairs; ++p) {
    double lanes[8];
    std::memcpy(lanes, &plus[p], sizeof lanes);
    positive[p] = lane_sum<double, 8>(lanes);
    std::memcpy(lanes, &minus[p], sizeof lanes);
    negative[p] = lane_sum<double, 8>(lanes);
  }
}
#endif

// Lobes at the level of rounding noise are empty (noise[p]: box3d.hpp, kLobeNoise).
inline __attribute__((always_inline)) void empty_noise_lobes(const double* noise, double* positive, double* negative) {
  for (int p = 0; p < kPairs; ++p) {
    if (positive[p] <= noise[p]) positive[p] = 0.0;
    if (negative[p] <= noise[p]) negative[p] = 0.0;
  }
}

// Steps 2-3 (and with crossing, the crossing shape) in one pass (fused_eln_pass), where the CPU
// has AVX-512: its 32 registers hold the pass's sums. False elsewhere: the caller makes them.
#if DODO_MULTIVERSION_ENABLED
__attribute__((target("arch=x86-64-v4"))) bool fused_eln_integrals(const PairedRule& rule,
                                                                   const double* const g[kSpecies],
                                                                   double* const G[kPairs], const double* noise,
                                                                   double* positive, double* negative,
                                                                   double* crossing) {
  Doubles4 rows[kCrossingSums];
  if (crossing) fused_eln_pass<true>(rule, g, G, positive, negative, rows);
  else fused_eln_pass<false>(rule, g, G, positive, negative, rows);
  empty_noise_lobes(noise, positive, negative);
  // A pair whose two lobes are empty gets crossing inputs 0 whatever its sums (crossing_tail's
  // gates): what crossing_shape's skipping of it gives.
  if (crossing) crossing_tail(rows, positive, negative, crossing);
  return true;
}
__attribute__((target("default")))
#endif
bool fused_eln_integrals(const PairedRule&, const double* const*, double* const*, const double*, double*, double*,
                         double*) {
  return false;
}

// Steps 2-6 of one cell (F: normalised rest frame) whose step 1 is m's cell c: the angular
// distributions, the pairs' crossing integrals, the mixing and the limiter. dF and the growth
// are zero on entry. crossing: nullptr, or where the cell's crossing shape goes. scratch: the
// thread's (thread_scratch(), looked up once a block by the caller: in a shared library each
// lookup is a call to __tls_get_addr, ~110 instructions a cell under callgrind).
DODO_MULTIVERSION
std::uint32_t angular_change(const PairedRule& rule, const double* F, const BlockMoments& m, std::size_t c,
                             double noise_fraction, double* dF, double* growth_over_ntot, double* crossing,
                             AngularScratch& scratch) {
  double density[kSpecies], Z[kSpecies], amplitude[kSpecies], paired_scale[kSpecies], power_offset[kSpecies],
      direction_x[kSpecies], direction_y[kSpecies], direction_z[kSpecies];
  for (int a = 0; a < kSpecies; ++a) {
    const std::size_t i = slot(c, a);
    density[a] = m.density[i];
    Z[a] = m.Z[i];
    amplitude[a] = m.amplitude[i];
    paired_scale[a] = m.paired_scale[i];
    power_offset[a] = m.power_offset[i];
    direction_x[a] = m.direction_x[i];
    direction_y[a] = m.direction_y[i];
    direction_z[a] = m.direction_z[i];
  }
  const std::size_t points = rule.size();  // scratch: reserved for `points` by the caller (no allocation here)
  // Species with identical moments (mu = tau, the common case) share one distribution.
  const double* g[kSpecies];
  for (int a = 0; a < kSpecies; ++a) {
    g[a] = nullptr;
    for (int b = 0; b < a && !g[a]; ++b)
      if (std::equal(F + a * kComponents, F + (a + 1) * kComponents, F + b * kComponents)) g[a] = g[b];
    if (g[a]) continue;
    reconstruct_species(rule, density[a], Z[a], amplitude[a], paired_scale[a], power_offset[a], direction_x[a], direction_y[a], direction_z[a],
                        scratch.species(a, points));
    g[a] = scratch.species(a, points);
  }
  const double* weight = rule.weight.data();

  // Steps 2-3: ELN differences G_p = ELN_i - ELN_j of the three pairs and their positive and
  // negative integrals, in one pass; G_p is kept for the mixing pass. On AVX-512 one pass over the
  // antipodal pairs makes them, and the crossing shape when asked (fused_eln_integrals); elsewhere
  // the loop below, and crossing_shape's own pass. `omp simd` (compiled with -fopenmp-simd, no
  // OpenMP runtime) allows the reordered sums that vectorising a reduction needs; the order
  // changes results only at rounding level.
  static_assert(kPairFirst[0] == 0 && kPairSecond[0] == 1 && kPairFirst[1] == 0 && kPairSecond[1] == 2 &&
                    kPairFirst[2] == 1 && kPairSecond[2] == 2,
                "the fused pass below names the pairs (e,mu), (e,tau), (mu,tau)");
  double* G01 = scratch.pair(0, points);
  double* G02 = scratch.pair(1, points);
  double* G12 = scratch.pair(2, points);
  // Lobes at the level of rounding noise are empty (box3d.hpp, kLobeNoise; noise_fraction is
  // lobe_noise of the cell's W).
  double noise[kPairs];
  for (int p = 0; p < kPairs; ++p) {
    const int i = kPairFirst[p], j = kPairSecond[p];
    noise[p] = noise_fraction * ((density[i] + density[i + kFlavours]) + (density[j] + density[j + kFlavours]));
  }
  double positive[kPairs], negative[kPairs];
  double* const G[kPairs] = {G01, G02, G12};
  if (!fused_eln_integrals(rule, g, G, noise, positive, negative, crossing)) {
    double plus01 = 0, minus01 = 0, plus02 = 0, minus02 = 0, plus12 = 0, minus12 = 0;
    const double *g0 = g[0], *g1 = g[1], *g2 = g[2], *gb0 = g[3], *gb1 = g[4], *gb2 = g[5];
#pragma omp simd reduction(+ : plus01, minus01, plus02, minus02, plus12, minus12)
    for (std::size_t q = 0; q < points; ++q) {
      const double eln0 = g0[q] - gb0[q], eln1 = g1[q] - gb1[q], eln2 = g2[q] - gb2[q];
      const double d01 = eln0 - eln1, d02 = eln0 - eln2, d12 = eln1 - eln2;
      G01[q] = d01;
      G02[q] = d02;
      G12[q] = d12;
      plus01 += weight[q] * std::max(d01, 0.0);
      minus01 += weight[q] * std::max(-d01, 0.0);
      plus02 += weight[q] * std::max(d02, 0.0);
      minus02 += weight[q] * std::max(-d02, 0.0);
      plus12 += weight[q] * std::max(d12, 0.0);
      minus12 += weight[q] * std::max(-d12, 0.0);
    }
    positive[0] = plus01, positive[1] = plus02, positive[2] = plus12;
    negative[0] = minus01, negative[1] = minus02, negative[2] = minus12;
    empty_noise_lobes(noise, positive, negative);
    if (crossing) crossing_shape(rule, G, positive, negative, crossing);
  }

  PairMixing mixing[kPairs];
  int crossing_pairs = 0;
  double growth = 0.0;
  for (int p = 0; p < kPairs; ++p) {
    // Step 6. The product underflows for species ~1e-154 N_tot and below (beside a far denser
    // one): the crossing's growth read 0; there as two roots (elsewhere one, the same bits as before).
    const double product = positive[p] * negative[p];
    growth = std::max(growth, product >= DBL_MIN ? std::sqrt(product)
                                                  : std::sqrt(positive[p]) * std::sqrt(negative[p]));
    if (!(positive[p] > 0.0 && negative[p] > 0.0)) continue;
    mixing[p].crosses = true;
    mixing[p].positive_side_smaller = positive[p] <= negative[p];
    const double small = std::min(positive[p], negative[p]);
    const double large = std::max(positive[p], negative[p]);
    mixing[p].large_side_survival = 1.0 - (2.0 / 3.0) * small / large;
    ++crossing_pairs;
  }
  *growth_over_ntot = growth;
  if (crossing_pairs == 0) return kCell_NO_CROSSING;

  // Steps 4-5: M_ij = (1 - P_ij)/k; (M - I) g moves number along each pair: with the pair flow
  // t_p = M_ij (g_j - g_i), species i gains t_p and j loses it. One pass takes the three pairs
  // (a pair without crossing has M = 0) and integrates the changes of the first two flavours,
  // A_0 = t_01 + t_02 and A_1 = t_12 - t_01, times (1, n_hat); the third flavour's change is
  // -(A_0 + A_1), so flavour sums vanish by construction, lepton number because M acts on nu
  // and nubar alike.
  static_assert(kSpecies == 6 && kFlavours == 3, "the mixing pass names three flavours");
  double positive_mixing[kPairs] = {}, negative_mixing[kPairs] = {}, tie_mixing[kPairs] = {};
  const double inverse_k = 1.0 / crossing_pairs;
  for (int p = 0; p < kPairs; ++p) {
    if (!mixing[p].crosses) continue;
    const double large_survival = mixing[p].large_side_survival;
    const double small_mixing = (1.0 - kOneThird) * inverse_k;
    const double large_mixing = (1.0 - large_survival) * inverse_k;
    tie_mixing[p] = (1.0 - 0.5 * (kOneThird + large_survival)) * inverse_k;
    positive_mixing[p] = mixing[p].positive_side_smaller ? small_mixing : large_mixing;
    negative_mixing[p] = mixing[p].positive_side_smaller ? large_mixing : small_mixing;
  }
  const double* x = rule.x.data();
  const double* y = rule.y.data();
  const double* z = rule.z.data();
  const double *g0 = g[0], *g1 = g[1], *g2 = g[2], *gb0 = g[3], *gb1 = g[4], *gb2 = g[5];
  const double p01 = positive_mixing[0], p02 = positive_mixing[1], p12 = positive_mixing[2];
  const double n01 = negative_mixing[0], n02 = negative_mixing[1], n12 = negative_mixing[2];
  const double e01 = tie_mixing[0], e02 = tie_mixing[1], e12 = tie_mixing[2];
  double n0 = 0, x0 = 0, y0 = 0, z0 = 0, n1 = 0, x1 = 0, y1 = 0, z1 = 0;          // nu_e, nu_mu
  double nb0 = 0, xb0 = 0, yb0 = 0, zb0 = 0, nb1 = 0, xb1 = 0, yb1 = 0, zb1 = 0;  // nubar_e, nubar_mu
#pragma omp simd reduction(+ : n0, x0, y0, z0, n1, x1, y1, z1, nb0, xb0, yb0, zb0, nb1, xb1, yb1, zb1)
  for (std::size_t q = 0; q < points; ++q) {
    const double w = weight[q];
    const double c01 = w * (G01[q] > 0.0 ? p01 : (G01[q] < 0.0 ? n01 : e01));
    const double c02 = w * (G02[q] > 0.0 ? p02 : (G02[q] < 0.0 ? n02 : e02));
    const double c12 = w * (G12[q] > 0.0 ? p12 : (G12[q] < 0.0 ? n12 : e12));
    const double t01 = c01 * (g1[q] - g0[q]), t02 = c02 * (g2[q] - g0[q]), t12 = c12 * (g2[q] - g1[q]);
    const double tb01 = c01 * (gb1[q] - gb0[q]), tb02 = c02 * (gb2[q] - gb0[q]), tb12 = c12 * (gb2[q] - gb1[q]);
    const double a0 = t01 + t02, a1 = t12 - t01, b0 = tb01 + tb02, b1 = tb12 - tb01;
    n0 += a0;
    x0 += a0 * x[q];
    y0 += a0 * y[q];
    z0 += a0 * z[q];
    n1 += a1;
    x1 += a1 * x[q];
    y1 += a1 * y[q];
    z1 += a1 * z[q];
    nb0 += b0;
    xb0 += b0 * x[q];
    yb0 += b0 * y[q];
    zb0 += b0 * z[q];
    nb1 += b1;
    xb1 += b1 * x[q];
    yb1 += b1 * y[q];
    zb1 += b1 * z[q];
  }
  const double change[2][2][kComponents] = {{{n0, x0, y0, z0}, {n1, x1, y1, z1}},
                                            {{nb0, xb0, yb0, zb0}, {nb1, xb1, yb1, zb1}}};
  for (int s = 0; s < 2; ++s)
    for (int m = 0; m < kComponents; ++m) {
      dF[value_index(species_index(s, 0), m)] = change[s][0][m];
      dF[value_index(species_index(s, 1), m)] = change[s][1][m];
      dF[value_index(species_index(s, 2), m)] = -(change[s][0][m] + change[s][1][m]);
    }

  // Reconstruction error can push a nearly beamed species out of the realizable cone
  // (physics.md section 3): scale the whole change back, which keeps conservation exact.
  std::uint32_t status = kCellOk;
  const double theta = realizable_step(F, dF);
  if (theta < 1.0) {
    for (int v = 0; v < kCellValues; ++v) dF[v] *= theta;
    status |= kCell_BOX3D_LIMITED;
  }
  return status;
}

}  // namespace

namespace {

// |F|/n of one species (n, Fx, Fy, Fz) from its values scaled exactly by a power of two, so that no
// square leaves the normal range; inf for a flux without density (prepare_block's subnormal species).
inline double exact_flux_factor(const double* species) {
  const double largest = std::fmax(std::fabs(species[1]), std::fmax(std::fabs(species[2]), std::fabs(species[3])));
  if (!(largest > 0.0)) return 0.0;
  const int shift = -std::ilogb(largest);
  const double x = std::ldexp(species[1], shift), y = std::ldexp(species[2], shift), z = std::ldexp(species[3], shift);
  const double density = std::ldexp(species[0], shift);
  return density > 0.0 ? std::sqrt(x * x + y * y + z * z) / density : HUGE_VAL;
}

// Lab values below this (any component) may lose digits on the subnormal grid inside the boost.
constexpr double kTinyLabValue = DBL_MIN * 0x1p53;

// One species' rest-frame values from its lab values scaled exactly by a power of two (returned;
// `scaled_rest` is 2^shift times the rest frame), by prepare_block's boost and its order of
// operations: the boost of a species of subnormal lab values rounded on the subnormal grid, so its
// rest-frame flux factor and the sign of its density were decided by rounding, not by the values
// (a cell's status changed when it was scaled by 2^600; physics-law probe, round seventeen).
DODO_NO_CONTRACTION
int scaled_rest_species(const double* lab, double W, double vx, double vy, double vz, double W2, double* scaled_rest) {
  DODO_NO_CONTRACTION_BODY
  const double largest = std::fmax(std::fmax(std::fabs(lab[0]), std::fabs(lab[1])), std::fmax(std::fabs(lab[2]), std::fabs(lab[3])));
  const int shift = largest > 0.0 ? -std::ilogb(largest) : 0;
  const double t = std::ldexp(lab[0], shift), x = std::ldexp(lab[1], shift), y = std::ldexp(lab[2], shift),
               z = std::ldexp(lab[3], shift);
  const double vF = vx * x + vy * y + vz * z;
  const double coefficient = W2 * vF - W * t;
  scaled_rest[0] = W * (t - vF);
  scaled_rest[1] = x + coefficient * vx;
  scaled_rest[2] = y + coefficient * vy;
  scaled_rest[3] = z + coefficient * vz;
  return shift;
}

// Species a of block cell c (lab: value-major, as prepare_block holds it) where its lab values are of
// subnormal range (the largest nonzero and below kTinyLabValue): true, and its rest-frame values times
// 2^shift (scaled_rest_species) in `scaled`; false for any other species.
inline __attribute__((always_inline)) bool tiny_species_scaled_rest(const double (&lab)[kCellValues][kBlockCells], int a,
                                                                    std::size_t c, double W, double vx, double vy,
                                                                    double vz, double W2, double* scaled, int& shift) {
  const double given[kComponents] = {lab[a * kComponents][c], lab[a * kComponents + 1][c], lab[a * kComponents + 2][c],
                                     lab[a * kComponents + 3][c]};
  const double largest = std::fmax(std::fmax(std::fabs(given[0]), std::fabs(given[1])),
                                   std::fmax(std::fabs(given[2]), std::fabs(given[3])));
  if (!(largest > 0.0 && largest < kTinyLabValue)) return false;
  shift = scaled_rest_species(given, W, vx, vy, vz, W2, scaled);
  return true;
}

// Checks a block of `count` <= kBlockCells cells (lab frame F_init count x 24, u count x 4 or
// nullptr; max_flux_factor: Box3D's limit, for species below DBL_MIN N_tot), boosts them to the
// rest frame and normalises them (out.ntot, the boost's coefficients in `boost` (W, vx, vy, vz,
// W^2/(W + 1), kBlockCells values each), and the normalised F value-major in `normalised`, zeros
// for rejected cells and past count: out.F, out.dF and out.boost are written by classify_block for
// the cells that need them); out.status says why not; zeroes the growth. Loops across cells that vectorise: the
// checks, the boost's coefficients (two square roots and five divisions per cell) and the boost
// itself, by the operations of is_valid_four_velocity and LorentzBoost in their order and
// without contracting a * b + c into one rounding (fp-contract=off): the same bits as the
// per-cell code.
DODO_MULTIVERSION DODO_NO_CONTRACTION
void prepare_block(double max_flux_factor, std::size_t count, const double* F_init, const double* u, RestFrameCell* out,
                   double* normalised, double* __restrict boost) {
  DODO_NO_CONTRACTION_BODY
  const std::size_t lanes = block_lanes(count);
  // Value-major copies: lab[v][c] is value v of cell c; lanes past count hold a harmless cell.
  alignas(64) double lab[kCellValues][kBlockCells];
  alignas(64) double velocity[4][kBlockCells];
  std::size_t first_partial = 0;  // cells before this were copied four at a time
#if DODO_MULTIVERSION_ENABLED
  // Four cells at a time, a 4 x 4 transpose per species (and of u): two levels of shuffles
  // instead of a scalar load and store per value (a third of this function's instructions).
  typedef double Doubles4 __attribute__((vector_size(32)));
  typedef long long Lanes4 __attribute__((vector_size(32)));
  // Rows r[0..3] (four values each) into columns[m][c..c+3].
#define DODO_TRANSPOSE4(first_row, row_stride, column_of, c)                                                        \
  do {                                                                                                               \
    Doubles4 r0, r1, r2, r3;                                                                                         \
    std::memcpy(&r0, (first_row), sizeof r0);                                                                        \
    std::memcpy(&r1, (first_row) + (row_stride), sizeof r1);                                                         \
    std::memcpy(&r2, (first_row) + 2 * (row_stride), sizeof r2);                                                     \
    std::memcpy(&r3, (first_row) + 3 * (row_stride), sizeof r3);                                                     \
    const Doubles4 t0 = __builtin_shuffle(r0, r1, Lanes4{0, 4, 2, 6}), t1 = __builtin_shuffle(r0, r1, Lanes4{1, 5, 3, 7}); \
    const Doubles4 t2 = __builtin_shuffle(r2, r3, Lanes4{0, 4, 2, 6}), t3 = __builtin_shuffle(r2, r3, Lanes4{1, 5, 3, 7}); \
    const Doubles4 k0 = __builtin_shuffle(t0, t2, Lanes4{0, 1, 4, 5}), k1 = __builtin_shuffle(t1, t3, Lanes4{0, 1, 4, 5}); \
    const Doubles4 k2 = __builtin_shuffle(t0, t2, Lanes4{2, 3, 6, 7}), k3 = __builtin_shuffle(t1, t3, Lanes4{2, 3, 6, 7}); \
    std::memcpy(column_of(0) + (c), &k0, sizeof k0);                                                                 \
    std::memcpy(column_of(1) + (c), &k1, sizeof k1);                                                                 \
    std::memcpy(column_of(2) + (c), &k2, sizeof k2);                                                                 \
    std::memcpy(column_of(3) + (c), &k3, sizeof k3);                                                                 \
  } while (0)
  for (; first_partial + 4 <= count; first_partial += 4) {
    const std::size_t c = first_partial;
#pragma GCC unroll 6
    for (int a = 0; a < kSpecies; ++a) {
#define DODO_LAB_COLUMN(m) lab[a * kComponents + (m)]
      DODO_TRANSPOSE4(F_init + c * kCellValues + a * kComponents, kCellValues, DODO_LAB_COLUMN, c);
#undef DODO_LAB_COLUMN
    }
    if (u) {
#define DODO_VELOCITY_COLUMN(m) velocity[m]
      DODO_TRANSPOSE4(u + c * 4, 4, DODO_VELOCITY_COLUMN, c);
#undef DODO_VELOCITY_COLUMN
    } else {
      for (std::size_t k = c; k < c + 4; ++k)
        for (int m = 0; m < 4; ++m) velocity[m][k] = m == 0 ? 1.0 : 0.0;
    }
  }
#undef DODO_TRANSPOSE4
#endif
  for (std::size_t c = first_partial; c < lanes; ++c) {
    for (int v = 0; v < kCellValues; ++v) lab[v][c] = c < count ? F_init[c * kCellValues + v] : 1.0;
    for (int m = 0; m < 4; ++m) velocity[m][c] = c < count && u ? u[c * 4 + m] : (m == 0 ? 1.0 : 0.0);
  }
  // The boost's coefficients, in the caller's block (classify_block gives them to the cells that
  // need them).
  double* const W = boost;
  double* const vx = boost + kBlockCells;
  double* const vy = boost + 2 * kBlockCells;
  double* const vz = boost + 3 * kBlockCells;
  double* const W2 = boost + 4 * kBlockCells;
  alignas(64) double total[kBlockCells];
  alignas(64) std::int64_t status[kBlockCells];
  // Checks (NONFINITE input before BAD_VELOCITY) and the boost coefficients.
  alignas(64) double probe[kBlockCells] = {}, velocity_probe[kBlockCells] = {};  // NaN: a value not finite
  for (int v = 0; v < kCellValues; ++v)
#pragma omp simd
    for (std::size_t c = 0; c < lanes; ++c) probe[c] += lab[v][c] - lab[v][c];
  for (int m = 0; m < 4; ++m)
#pragma omp simd
    for (std::size_t c = 0; c < lanes; ++c) velocity_probe[c] += velocity[m][c] - velocity[m][c];
#pragma omp simd
  for (std::size_t c = 0; c < lanes; ++c) {
    const double u0 = velocity[0][c], u1 = velocity[1][c], u2 = velocity[2][c], u3 = velocity[3][c];
    const double norm_error = std::fabs(-u0 * u0 + u1 * u1 + u2 * u2 + u3 * u3 + 1.0);
    const bool finite_input = (probe[c] == 0.0) & (velocity_probe[c] == 0.0);
    const bool valid_velocity = (u0 > 0.0) & (norm_error <= four_velocity_norm_tolerance(u0));
    const double spatial2 = u1 * u1 + u2 * u2 + u3 * u3;
    W[c] = u0 / std::sqrt((u0 - std::sqrt(spatial2)) * (u0 + std::sqrt(spatial2)));
    vx[c] = u1 / u0;
    vy[c] = u2 / u0;
    vz[c] = u3 / u0;
    W2[c] = W[c] * W[c] / (W[c] + 1.0);
    status[c] = !finite_input ? kCell_NONFINITE : (!valid_velocity ? kCell_BAD_VELOCITY : kCellOk);
  }
  // The boost to the rest frame (the identity without u), its checks and N_tot.
  alignas(64) double rest[kCellValues][kBlockCells];
  if (u) {
    for (int a = 0; a < kSpecies; ++a) {
      double* t = rest[a * kComponents];
      double* x = rest[a * kComponents + 1];
      double* y = rest[a * kComponents + 2];
      double* z = rest[a * kComponents + 3];
      const double* in_t = lab[a * kComponents];
      const double* in_x = lab[a * kComponents + 1];
      const double* in_y = lab[a * kComponents + 2];
      const double* in_z = lab[a * kComponents + 3];
#pragma omp simd
      for (std::size_t c = 0; c < lanes; ++c) {
        const double vF = vx[c] * in_x[c] + vy[c] * in_y[c] + vz[c] * in_z[c];
        const double coefficient = W2[c] * vF - W[c] * in_t[c];
        t[c] = W[c] * (in_t[c] - vF);
        x[c] = in_x[c] + coefficient * vx[c];
        y[c] = in_y[c] + coefficient * vy[c];
        z[c] = in_z[c] + coefficient * vz[c];
      }
    }
  } else {
    std::memcpy(rest, lab, sizeof rest);
  }
  // The input is checked as given too (lab frame), the values a stable cell returns (physics-law
  // probe, round six): the future cone is Lorentz invariant, but a species of subnormal lab values
  // can be realizable in the computed rest frame and not as given (n_lab = -4.9e-323 beside a
  // realizable rest-frame species at W = 10), or, at rest, realizable once divided by N_tot and
  // not as given (F = (9, -7, 7, 4) ulp of the subnormal grid, |F| = 1.19 n, divided by N_tot =
  // 15.4: an isotropic species of 1 ulp). Such a cell was NO_CROSSING and returned as its
  // unrealizable input. Now NEGATIVE_DENSITY / FLUX_FACTOR and realizable_fallback, in every frame,
  // and u = (1, 0, 0, 0) gives u = None's status (the same test on the same values).
  // Vectorised: a species whose |F|^2 is below (1 - 8 eps) n^2 with n in [1e-150, 1e150] is
  // inside; the few cells with another species (a zero, tiny, huge or negative density) get the
  // exact test: a negative density is NEGATIVE_DENSITY, then cell_is_realizable's (the test of
  // realizable_fallback) FLUX_FACTOR. Cells rejected already (ZERO_DENSITY included) keep their flag.
  alignas(64) std::int64_t lab_unchecked[kBlockCells] = {};
  {
    for (int a = 0; a < kSpecies; ++a) {
      const double* in_t = lab[a * kComponents];
      const double* in_x = lab[a * kComponents + 1];
      const double* in_y = lab[a * kComponents + 2];
      const double* in_z = lab[a * kComponents + 3];
#pragma omp simd
      for (std::size_t c = 0; c < lanes; ++c) {
        const double n = in_t[c];
        const double flux2 = in_x[c] * in_x[c] + in_y[c] * in_y[c] + in_z[c] * in_z[c];
        // Negative, zero, tiny or huge densities fail it and are tested below.
        const bool inside = (n > 1e-150) & (n < 1e150) & (flux2 <= (1.0 - 8.0 * DBL_EPSILON) * (n * n));
        lab_unchecked[c] |= !inside;
      }
    }
  }
  alignas(64) double rest_probe[kBlockCells] = {};  // finite input, but the boost overflowed (huge densities times W)
  alignas(64) std::int64_t negative[kBlockCells] = {};
  // A species of subnormal lab values: its rest-frame values boosted from the values scaled
  // exactly, rounded once to the subnormal grid; a density that is negative there stays negative.
  // Only cells the lab test above flagged (a density below 1e-150 among them) are looked at.
  if (u) {
    for (std::size_t c = 0; c < count; ++c) {
      if (!lab_unchecked[c]) continue;
      for (int a = 0; a < kSpecies; ++a) {
        double scaled[kComponents];
        int shift;
        if (!tiny_species_scaled_rest(lab, a, c, W[c], vx[c], vy[c], vz[c], W2[c], scaled, shift)) continue;
        for (int m = 0; m < kComponents; ++m) rest[a * kComponents + m][c] = std::ldexp(scaled[m], -shift);
        negative[c] |= scaled[0] < 0.0;
      }
    }
  }
  for (int v = 0; v < kCellValues; ++v)
#pragma omp simd
    for (std::size_t c = 0; c < lanes; ++c) rest_probe[c] += rest[v][c] - rest[v][c];
  for (int a = 0; a < kSpecies; ++a)
#pragma omp simd
    for (std::size_t c = 0; c < lanes; ++c) negative[c] |= rest[a * kComponents][c] < 0.0;
  // N_tot in the order the flavour symmetries keep (conventions.hpp, flavour_symmetric_sum).
#pragma omp simd
  for (std::size_t c = 0; c < lanes; ++c)
    total[c] = flavour_symmetric_sum(rest[value_index(0, 0)][c], rest[value_index(1, 0)][c], rest[value_index(2, 0)][c],
                                     rest[value_index(3, 0)][c], rest[value_index(4, 0)][c], rest[value_index(5, 0)][c]);
#pragma omp simd
  for (std::size_t c = 0; c < lanes; ++c) {
    // Vacuum: below kSmallestNtot the changes would be rounded to the subnormal grid, which
    // cannot keep the flavour sums to rounding of N_tot (1e-310: 8e-15 N_tot; 1e-320: 8e-5 N_tot).
    const double sum = total[c];
    const std::int64_t flags = !(rest_probe[c] == 0.0)    ? kCell_NONFINITE
                               : negative[c]               ? kCell_NEGATIVE_DENSITY
                               : !(sum - sum == 0.0)       ? kCell_NONFINITE
                               : !(sum >= kSmallestNtot)   ? kCell_ZERO_DENSITY
                                                           : kCellOk;
    status[c] = status[c] == kCellOk ? flags : status[c];
  }
  for (std::size_t c = 0; c < count; ++c) {  // the exact test (above), for the few cells it needs
    if (!lab_unchecked[c] || status[c] != kCellOk) continue;
    const double* cell = F_init + c * kCellValues;
    bool negative_density = false;
    for (int a = 0; a < kSpecies; ++a) negative_density |= cell[a * kComponents] < 0.0;
    if (negative_density) status[c] = kCell_NEGATIVE_DENSITY;
    else if (!cell_is_realizable(cell)) status[c] = kCell_FLUX_FACTOR;
  }
  // The normalised values, value-major and across cells (the same product rest * (1 / total) per
  // value as a per-cell loop: the same bits); zeros where block_moments wants no cell.
  alignas(64) double inverse_total[kBlockCells];
#pragma omp simd
  for (std::size_t c = 0; c < lanes; ++c) {
    const bool keep = (c < count) & (status[c] == kCellOk);
    inverse_total[c] = keep ? 1.0 / total[c] : 0.0;
  }
  for (int v = 0; v < kCellValues; ++v)
#pragma omp simd
    for (std::size_t c = 0; c < lanes; ++c)
      normalised[v * kBlockCells + c] = inverse_total[c] == 0.0 ? 0.0 : rest[v][c] * inverse_total[c];
  // A species of subnormal lab values divided from its values scaled exactly (the product the same
  // cell times 2^k rounds), not from their few digits on the subnormal grid, which decided its flux
  // factor (physics-law probe, round seventeen).
  if (u) {
    for (std::size_t c = 0; c < count; ++c) {
      if (!lab_unchecked[c] || inverse_total[c] == 0.0) continue;
      for (int a = 0; a < kSpecies; ++a) {
        double scaled[kComponents];
        int shift;
        if (!tiny_species_scaled_rest(lab, a, c, W[c], vx[c], vy[c], vz[c], W2[c], scaled, shift)) continue;
        for (int m = 0; m < kComponents; ++m) {
          const double divided = scaled[m] * inverse_total[c];
          if (std::isfinite(divided)) normalised[(a * kComponents + m) * kBlockCells + c] = std::ldexp(divided, -shift);
        }
      }
    }
  }
  // A species below DBL_MIN N_tot (1e-22 beside densities of 1e300) is divided into a few ulp of the
  // subnormal grid, e.g. (5e-324, 0, 0, -5e-324): its rounded flux factor (1 here, inf where n rounds
  // to 0) rejected ~7% of such crossing cells as FLUX_FACTOR though the species' flux factor is 0.9
  // (physics-law probe, round nine). Its flux factor is that of its lab values scaled exactly and
  // boosted: below the limit it is reconstructed isotropic (it weighs 2e-308 N_tot at most), at or
  // above it the cell is FLUX_FACTOR, as for any other species, whatever the cell's scale.
  // One vectorised test of the block's densities first (a scalar pass cost a stable cell +13%).
  std::int64_t any_tiny = 0;
#pragma omp simd reduction(| : any_tiny)
  for (std::size_t c = 0; c < lanes; ++c) {
    double smallest = rest[0][c];  // the smallest density (a compare per species: std::fmin was a call)
    for (int a = 1; a < kSpecies; ++a)
      smallest = rest[a * kComponents][c] < smallest ? rest[a * kComponents][c] : smallest;
    any_tiny |= (smallest * inverse_total[c] < DBL_MIN) & (inverse_total[c] != 0.0);  // normalised's product
  }
  for (std::size_t c = 0; any_tiny && c < count; ++c) {
    if (inverse_total[c] == 0.0) continue;  // rejected already
    for (int a = 0; a < kSpecies; ++a) {
      double* values[kComponents];
      for (int m = 0; m < kComponents; ++m) values[m] = normalised + (a * kComponents + m) * kBlockCells + c;
      if (!(*values[0] < DBL_MIN)) continue;
      const double given[kComponents] = {lab[a * kComponents][c], lab[a * kComponents + 1][c], lab[a * kComponents + 2][c],
                                         lab[a * kComponents + 3][c]};
      if (given[1] == 0.0 && given[2] == 0.0 && given[3] == 0.0 && *values[1] == 0.0 && *values[2] == 0.0 &&
          *values[3] == 0.0)
        continue;
      // The flux factor of the values as given (boosted scaled exactly), not of their rounding below
      // DBL_MIN N_tot (which depended on the cell's scale: physics-law probe, round seventeen).
      double scaled[kComponents] = {given[0], given[1], given[2], given[3]};
      if (u) scaled_rest_species(given, W[c], vx[c], vy[c], vz[c], W2[c], scaled);
      if (exact_flux_factor(scaled) < max_flux_factor) {
        for (int m = 1; m < kComponents; ++m) *values[m] = 0.0;
      } else {
        status[c] = kCell_FLUX_FACTOR;
        inverse_total[c] = 0.0;
        for (int v = 0; v < kCellValues; ++v) normalised[v * kBlockCells + c] = 0.0;
        break;
      }
    }
  }
  for (std::size_t c = 0; c < count; ++c) {
    RestFrameCell& cell = out[c];
    cell.growth_over_ntot = 0.0;  // dF: zeroed by classify_block for the cells that use it
    cell.status = static_cast<std::uint32_t>(status[c]);
    cell.ntot = 0.0;
    if (cell.status != kCellOk) continue;  // rejected: the other fields are unspecified
    cell.ntot = total[c];
  }
}

}  // namespace

void Box3D::classify_block(std::size_t count, RestFrameCell* cells, const double* normalised, const double* boost,
                           bool crossing_features) const {
  BlockMoments moments;
  block_moments(settings_, count, cells, normalised, moments);
  const bool screen = settings_.screen_stable_cells;
  bool wanted[kBlockSpecies] = {}, computed[kBlockSpecies] = {};
  bool decided[kBlockCells] = {};  // stable by the flavour signs alone
  if (screen) {
    // Most cells of a real grid are stable, and the flavour signs decide most of them from the
    // values of the flavours whose nu and nubar differ (in M1 data nu_e and nubar_e alone): those
    // first; every species of the cells they leave undecided after.
    bool live[kBlockCells] = {};
    for (std::size_t c = 0; c < count; ++c) live[c] = cells[c].status == kCellOk;
    const unsigned differing = flavours_differing(count, live, moments, wanted);
    block_species_values(settings_, count, wanted, computed, moments);
    block_eln_signs(count, differing, moments);
    for (std::size_t c = 0; c < count; ++c) {
      if (cells[c].status != kCellOk) continue;
      decided[c] = stable_by_signs(moments, c);
      if (decided[c]) continue;
      // Signs undecided over the sphere may still be decided on the quadrature's points.
      bool refined = false;
      for (int f = 0; f < kFlavours; ++f) {
        int& sign = moments.eln_sign[f * kBlockCells + c];
        if (sign != kUndecided || !moments.near_edge[f * kBlockCells + c]) continue;
        sign = quadrature_eln_sign(rule_, moments, c, f);
        refined |= sign != kUndecided;
      }
      decided[c] = refined && stable_by_signs(moments, c);
    }
  }
  // Every species of the cells left undecided (none in a block of stable M1-like cells).
  bool undecided = false;
  for (std::size_t c = 0; c < count; ++c) undecided |= cells[c].status == kCellOk && !decided[c];
  if (undecided) {
    bool need[kBlockCells] = {};  // false past count, as the first pass left those lanes
    for (std::size_t c = 0; c < count; ++c) need[c] = cells[c].status == kCellOk && !decided[c];
    for (int a = 0; a < kSpecies; ++a) std::memcpy(wanted + slot(0, a), need, sizeof need);
    block_species_values(settings_, count, wanted, computed, moments);
  }
  AngularScratch* scratch = nullptr;
  for (std::size_t c = 0; c < count; ++c) {
    RestFrameCell& cell = cells[c];
    if (cell.status != kCellOk) continue;
    // The screen decides stable cells with the answer the full computation gives (NO_CROSSING,
    // growth 0, no change).
    if (decided[c] || (screen && stable_by_moments(moments, c))) {
      cell.status = kCell_NO_CROSSING;
      continue;
    }
    // The cell's F from the block's normalised values, its boost and dF zeros (a stable cell's
    // are never read: prepare_block wrote them for every cell).
    for (int v = 0; v < kCellValues; ++v) cell.F[v] = normalised[v * kBlockCells + c];
    if (boost)
      cell.boost.set_coefficients(boost[c], boost[kBlockCells + c], boost[2 * kBlockCells + c], boost[3 * kBlockCells + c],
                                  boost[4 * kBlockCells + c]);
    else
      cell.boost.set_identity();
    // Zeros as unrolled stores (whole vectors): std::fill became a `rep stos` per cell, whose
    // start-up costs more than the 192 bytes.
#pragma GCC unroll 24
    for (int v = 0; v < kCellValues; ++v) cell.dF[v] = 0.0;
    if (!scratch) {
      // Sized here, outside the multiversioned kernels: GCC 12 cannot unwind an exception out of a
      // target_clones function (std::terminate, whatever catch the callers have), so a failed
      // allocation at a thread's first crossing cell aborted the host (outside probe, C round
      // forty-five); here it is the std::bad_alloc that the callers turn into an error.
      scratch = &thread_scratch();
      scratch->reserve(paired_rule_.size());
    }
    const double noise_fraction = boost ? lobe_noise(boost[c]) : kLobeNoise;
    cell.status = angular_change(paired_rule_, cell.F, moments, c, noise_fraction, cell.dF, &cell.growth_over_ntot,
                                 crossing_features ? cell.crossing : nullptr, *scratch);
  }
}

void Box3D::rest_frame_cells(std::size_t n, const double* F_init, const double* u, RestFrameCell* out,
                             bool crossing_features) const {
  alignas(64) double normalised[kCellValues * kBlockCells];
  alignas(64) double boost[5 * kBlockCells];
  for (std::size_t begin = 0; begin < n; begin += kBlockCells) {
    const std::size_t count = std::min(kBlockCells, n - begin);
    prepare_block(settings_.max_flux_factor, count, F_init + begin * kCellValues, u ? u + begin * 4 : nullptr,
                  out + begin, normalised, boost);
    classify_block(count, out + begin, normalised, u ? boost : nullptr, crossing_features);
  }
}

void Box3D::rest_frame_cell(const double* F_init, const double* u, RestFrameCell& out) const {
  rest_frame_cells(1, F_init, u, &out);
}

std::uint32_t Box3D::rest_frame_change(const double* F, double* dF, double* growth_over_ntot) const {
  RestFrameCell cell;
  cell.status = kCellOk;
  std::copy(F, F + kCellValues, cell.F);
  std::fill(cell.dF, cell.dF + kCellValues, 0.0);
  cell.growth_over_ntot = 0.0;
  alignas(64) double normalised[kCellValues * kBlockCells] = {};  // the cell in lane 0
  for (int v = 0; v < kCellValues; ++v) normalised[v * kBlockCells] = F[v];
  classify_block(1, &cell, normalised, nullptr, false);
  std::copy(cell.dF, cell.dF + kCellValues, dF);
  *growth_over_ntot = cell.growth_over_ntot;
  if (cell.status & kCellRejectedMask) std::fill(dF, dF + kCellValues, 0.0);
  return cell.status;
}

namespace {

// A cell's F_box (24 values, written to F_box) from its rest-frame pieces (F_init: lab frame,
// as given to rest_frame_cell); returns its status.
std::uint32_t cell_result(const double* F_init, const RestFrameCell& cell, double* F_box) {
  if (!(cell.status & kCellRejectedMask)) {
    if (cell.status & kCell_NO_CROSSING) {
      copy_cell(F_init, F_box);  // stable: the input itself
      return cell.status;
    }
    if (finalise_cell(F_init, cell.boost, cell.ntot, cell.dF, F_box)) return cell.status;
  }
  // The one place where rejected cells get their output (Python, C, C++ and Fortran alike):
  // never NaN and never outside the realizable cone, even for a negative density or |F| > n.
  realizable_fallback(F_init, F_box);
  // Not rejected before: densities near DBL_MAX, the result is not representable.
  return cell.status & kCellRejectedMask ? cell.status : kCell_NONFINITE;
}

}  // namespace

void Box3D::apply_cell(const double* F_init, const double* u, Box3DCell& out) const {
  RestFrameCell cell;
  rest_frame_cell(F_init, u, cell);
  out.ntot = cell.ntot;
  out.growth_over_ntot = cell.growth_over_ntot;
  out.status = cell_result(F_init, cell, out.F_box.data());
}

void Box3D::apply(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_box,
                  double* growth_over_ntot, double* ntot, std::uint32_t* status, int threads) const {
  // The common layout (species then components, contiguous) is copied without index arithmetic,
  // and read in place when the cells follow each other (u likewise).
  const bool contiguous_input = F_init.species_stride == kComponents && F_init.component_stride == 1;
  const bool contiguous_output = F_box.species_stride == kComponents && F_box.component_stride == 1;
  const bool packed_input = contiguous_input && F_init.cell_stride == kCellValues;
  const bool packed_u = u.data && u.cell_stride == 4 && u.component_stride == 1;
  auto run_range = [&](std::size_t begin, std::size_t end) {
    // Blocks of cells gathered from the caller's strides, so that step 1 runs across cells.
    double cells[kBlockCells * kCellValues];
    double velocities[kBlockCells * 4];
    RestFrameCell rest[kBlockCells];
    double F_cell[kCellValues];  // a cell's result, for outputs not laid out contiguously
    for (std::size_t block = begin; block < end; block += kBlockCells) {
      const std::size_t count = std::min(kBlockCells, end - block);
      for (std::size_t i = 0; i < count && !(packed_input && (packed_u || !u.data)); ++i) {
        const std::size_t c = block + i;
        if (!packed_input) {
          const double* source = F_init.data + static_cast<std::ptrdiff_t>(c) * F_init.cell_stride;
          if (contiguous_input) {
            copy_cell(source, cells + i * kCellValues);
          } else {
            for (int a = 0; a < kSpecies; ++a)
              for (int m = 0; m < kComponents; ++m)
                cells[i * kCellValues + value_index(a, m)] = source[a * F_init.species_stride + m * F_init.component_stride];
          }
        }
        if (u.data && !packed_u) {
          const double* source_u = u.data + static_cast<std::ptrdiff_t>(c) * u.cell_stride;
          for (int m = 0; m < 4; ++m) velocities[i * 4 + m] = source_u[m * u.component_stride];
        }
      }
      const double* block_F = packed_input ? F_init.data + block * kCellValues : cells;
      const double* block_u = !u.data ? nullptr : packed_u ? u.data + block * 4 : velocities;
      rest_frame_cells(count, block_F, block_u, rest);
      for (std::size_t i = 0; i < count; ++i) {
        const std::size_t c = block + i;
        // Contiguous outputs receive the cell's result directly (no copy through F_cell), unless
        // they overlap the cell's input (an in-place call), which finalise_cell still reads.
        const double* source = block_F + i * kCellValues;
        double* target = F_box.data ? F_box.data + static_cast<std::ptrdiff_t>(c) * F_box.cell_stride : nullptr;
        const bool direct = target && contiguous_output && (target + kCellValues <= source || source + kCellValues <= target);
        const std::uint32_t cell_status = cell_result(source, rest[i], direct ? target : F_cell);
        if (target && !direct) {
          for (int a = 0; a < kSpecies; ++a)
            for (int m = 0; m < kComponents; ++m)
              target[a * F_box.species_stride + m * F_box.component_stride] = F_cell[value_index(a, m)];
        }
        if (growth_over_ntot) growth_over_ntot[c] = rest[i].growth_over_ntot;
        if (ntot) ntot[c] = rest[i].ntot;
        if (status) status[c] = cell_status;
      }
    }
  };

  // Below a few thousand cells per worker, starting threads costs more than it saves.
  constexpr std::size_t kMinimumCellsPerWorker = 2048;
  std::size_t workers = threads > 1 ? static_cast<std::size_t>(threads) : 1;
  workers = std::min(workers, std::max<std::size_t>(1, n / kMinimumCellsPerWorker));
  if (workers <= 1) {
    run_range(0, n);
    return;
  }
  workers = std::min(workers, static_cast<std::size_t>(kMaxThreads));
  std::vector<std::thread> pool;
  pool.reserve(workers - 1);
  const std::size_t share = (n + workers - 1) / workers;
  std::size_t caller_begin = share;  // ranges no thread took run on the caller's thread
  for (std::size_t w = 1; w < workers; ++w, caller_begin += share) {
    const std::size_t begin = std::min(n, w * share), end = std::min(n, begin + share);
    // No more threads (address-space or thread limit): fewer workers, same results.
    if (!try_start_thread(pool, [&run_range, begin, end] { run_range(begin, end); })) break;
  }
  run_range(0, std::min(n, share));
  run_range(std::min(n, caller_begin), n);
  for (auto& worker : pool) worker.join();
}

namespace {
// The same dispatch as DODO_MULTIVERSION's clones (GCC picks a hand-written target version by the
// rules it uses for target_clones), so the name is the path the kernels took. Called from this
// file only: a caller in another file, which sees a plain declaration, gets the default version.
#if DODO_MULTIVERSION_ENABLED
__attribute__((target("arch=x86-64-v4"))) const char* dispatched_instruction_set() { return "x86-64-v4"; }
__attribute__((target("arch=x86-64-v3"))) const char* dispatched_instruction_set() { return "x86-64-v3"; }
__attribute__((target("default")))
#endif
const char* dispatched_instruction_set() {
  return "baseline";
}
}  // namespace

const char* box3d_instruction_set() { return dispatched_instruction_set(); }

}  // namespace dodo
