#include "box3d.hpp"

#include <algorithm>
#include <cstring>
#include <cmath>
#include <stdexcept>
#include <string>
#include <thread>

#include "../realizability.hpp"
#include "../thread_start.hpp"
#include "../multiversion.hpp"
#include "exp_kernel.hpp"
#include "langevin_kernel.hpp"

namespace dodo {
namespace {

constexpr double kOneThird = 1.0 / 3.0;
constexpr double kInverseFourPi = 0.25 / 3.14159265358979323846;

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

AngularScratch& thread_scratch() {
  thread_local AngularScratch scratch;
  return scratch;
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
void reconstruct_species(const PairedRule& rule, double density, double Z, double amplitude,
                         const double* flux_direction, double* g) {
  const std::size_t points = rule.size(), half = rule.half;
  const double* x = rule.x.data();
  const double* y = rule.y.data();
  const double* z = rule.z.data();
  if (density == 0.0) {
    std::fill(g, g + points, 0.0);
    return;
  }
  const double isotropic = density * kInverseFourPi;
  const double hx = Z * flux_direction[0], hy = Z * flux_direction[1], hz = Z * flux_direction[2];
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
  double kZ, rZ;
  reduce_by_ln2(Z, kZ, rZ);
  const double scaled_amplitude = scale * clamped_exp(-rZ);
  // Bits of 2^{k - kZ} are (k - kZ + 1023) << 52; those of 2^{-k - kZ} follow by one subtraction.
  const std::int64_t plus_offset = 1023 - integer_of(kZ);
  const std::int64_t both_exponents = (2 * plus_offset) << 52;  // bits(2^{k-kZ}) + bits(2^{-k-kZ})
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
// closed form above (1 - e^{-x} > 0.25 there, so no cancellation).
inline double maxent_amplitude(double Z) {
  const double x = 2.0 * Z, x2 = x * x;
  const double series =
      1.0 + 0.5 * x +
      x2 * (1.0 / 12.0 + x2 * (-1.0 / 720.0 + x2 * (1.0 / 30240.0 + x2 * (-1.0 / 1209600.0 + x2 * (1.0 / 47900160.0 + x2 * (-691.0 / 1307674368000.0))))));
  const double closed = x / (1.0 - clamped_exp(-x));
  return x < 0.3 ? series : closed;
}

// Survival probabilities of one crossing flavour pair (physics.md section 2, step 3).
struct PairMixing {
  bool crosses = false;
  bool positive_side_smaller = false;  // the side with G > 0 carries the smaller integral
  double large_side_survival = 1.0;    // P = 1 - (2/3) I_small / I_large
};

// Sign of ELN_f = g_f - gbar_f over the whole sphere, decided from the moments alone (no
// distributions): +1 when ELN_f >= 0 everywhere, -1 when <= 0 everywhere, 0 when ELN_f = 0
// identically (equal moments), kUndecided otherwise. With g = n A(Z) e^{Z (Fhat.n - 1)}/(4 pi),
// g_f > gbar_f for every direction iff n A e^{-Z - |v|} > nbar Abar e^{-Zbar}, v = Zbar Fhatbar
// - Z Fhat (the exponent's range over the sphere is [-|v|, |v|]). A relative margin of 1e-9
// keeps the decision far above the rounding of the computed distributions, so a decided sign is
// the one the quadrature values would show.
constexpr int kUndecided = 2;

int eln_sign(const double* F, int flavour, const double* density, const double* Z, const double* amplitude,
             const double (*direction)[3]) {
  const int a = flavour, b = flavour + kFlavours;
  if (std::equal(F + a * kComponents, F + (a + 1) * kComponents, F + b * kComponents)) return 0;
  // Beyond Z = 300 the reconstruction clamps tiny values, and so would clamped_exp: no shortcut.
  if (Z[a] > 300.0 || Z[b] > 300.0) return kUndecided;
  double v2 = 0.0;
  for (int i = 0; i < 3; ++i) {
    const double component = Z[b] * direction[b][i] - Z[a] * direction[a][i];
    v2 += component * component;
  }
  const double v = std::sqrt(v2);
  constexpr double kMargin = 1.0 + 1e-9;
  // n A e^{-Z} of each side (its value across the flux direction) and the factor e^{-|v|}
  // (|v| <= Z + Zbar <= 600: no clamping).
  const double across_nu = density[a] * amplitude[a] * clamped_exp(-Z[a]);
  const double across_nubar = density[b] * amplitude[b] * clamped_exp(-Z[b]);
  const double spread = clamped_exp(-v);
  if (across_nu * spread > kMargin * across_nubar) return 1;
  if (across_nubar * spread > kMargin * across_nu) return -1;
  return kUndecided;
}

// True when no flavour pair can have an ELN crossing, decided from the moments (eln_sign): a pair
// (i, j) cannot cross when ELN_i and ELN_j have opposite signs or one of them vanishes (then
// G = ELN_i - ELN_j has one sign), or when both flavours have equal moments (G = 0).
bool stable_by_moments(const double* F, const double* density, const double* Z, const double* amplitude,
                       const double (*direction)[3]) {
  int sign[kFlavours];
  for (int f = 0; f < kFlavours; ++f) sign[f] = eln_sign(F, f, density, Z, amplitude, direction);
  for (int p = 0; p < kPairs; ++p) {
    const int i = kPairFirst[p], j = kPairSecond[p];
    const bool same_moments = std::equal(F + i * kComponents, F + (i + 1) * kComponents, F + j * kComponents) &&
                              std::equal(F + (i + 3) * kComponents, F + (i + 4) * kComponents, F + (j + 3) * kComponents);
    if (same_moments) continue;
    if (sign[i] == kUndecided || sign[j] == kUndecided || sign[i] * sign[j] > 0) return false;
  }
  return true;
}

}  // namespace

Box3D::Box3D(const Box3DSettings& settings)
    : settings_(settings),
      rule_(lebedev_rule(settings.lebedev_order)),
      paired_rule_(paired_rule(rule_, kDirectionLanes)) {
  if (!(settings.max_flux_factor > 0.0 && settings.max_flux_factor < 1.0))
    throw std::invalid_argument("max_flux_factor must lie in (0, 1); got " + std::to_string(settings.max_flux_factor));
}

namespace {

DODO_MULTIVERSION
std::uint32_t pairwise_box3d_change(const Box3DSettings& settings, const PairedRule& rule, const double* F,
                                    double* dF, double* growth_over_ntot) {
  std::fill(dF, dF + kCellValues, 0.0);
  *growth_over_ntot = 0.0;

  // Step 1: flux factors; flag those the quadrature cannot represent; then Z for all six
  // species at once (a fixed-count, branch-free solve that vectorises).
  double density[kSpecies], flux_factor[kSpecies], Z[kSpecies], direction[kSpecies][3];
  for (int a = 0; a < kSpecies; ++a) {
    const double* species = F + a * kComponents;
    density[a] = species[0];
    const double flux = std::sqrt(species[1] * species[1] + species[2] * species[2] + species[3] * species[3]);
    if (density[a] <= 0.0) {
      if (flux > 0.0) return kCell_FLUX_FACTOR;  // flux without density: not a distribution
      flux_factor[a] = 0.0;
    } else {
      flux_factor[a] = flux / density[a];
      if (!(flux_factor[a] < settings.max_flux_factor)) return kCell_FLUX_FACTOR;
    }
    for (int i = 0; i < 3; ++i) direction[a][i] = flux > 0.0 ? species[1 + i] / flux : 0.0;
  }
  if (settings.z_method == ZMethod::kJedynak) {
    for (int a = 0; a < kSpecies; ++a) Z[a] = jedynak_inverse_langevin(flux_factor[a]);
  } else {
#pragma omp simd
    for (int a = 0; a < kSpecies; ++a) Z[a] = halley_inverse_langevin(flux_factor[a]);
  }
  double amplitude[kSpecies];
#pragma omp simd
  for (int a = 0; a < kSpecies; ++a) amplitude[a] = maxent_amplitude(Z[a]);

  // Most cells of a real grid are stable: decide those from the moments when possible, with the
  // same answer (status NO_CROSSING, growth 0, no change) as the full computation below.
  if (stable_by_moments(F, density, Z, amplitude, direction)) return kCell_NO_CROSSING;

  const std::size_t points = rule.size();
  AngularScratch& scratch = thread_scratch();
  scratch.reserve(points);
  // Species with identical moments (mu = tau, the common case) share one distribution.
  const double* g[kSpecies];
  for (int a = 0; a < kSpecies; ++a) {
    g[a] = nullptr;
    for (int b = 0; b < a && !g[a]; ++b)
      if (std::equal(F + a * kComponents, F + (a + 1) * kComponents, F + b * kComponents)) g[a] = g[b];
    if (g[a]) continue;
    reconstruct_species(rule, density[a], Z[a], amplitude[a], direction[a], scratch.species(a, points));
    g[a] = scratch.species(a, points);
  }
  const double* weight = rule.weight.data();

  // Steps 2-3: ELN differences G_p = ELN_i - ELN_j of the three pairs and their positive and
  // negative integrals, in one pass; G_p is kept for the mixing pass.
  // `omp simd` (compiled with -fopenmp-simd, no OpenMP runtime) allows the reordered sums
  // that vectorising a reduction needs; the order changes results only at rounding level.
  static_assert(kPairFirst[0] == 0 && kPairSecond[0] == 1 && kPairFirst[1] == 0 && kPairSecond[1] == 2 &&
                    kPairFirst[2] == 1 && kPairSecond[2] == 2,
                "the fused pass below names the pairs (e,mu), (e,tau), (mu,tau)");
  double* G01 = scratch.pair(0, points);
  double* G02 = scratch.pair(1, points);
  double* G12 = scratch.pair(2, points);
  double plus01 = 0, minus01 = 0, plus02 = 0, minus02 = 0, plus12 = 0, minus12 = 0;
  {
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
  }
  const double positive[kPairs] = {plus01, plus02, plus12}, negative[kPairs] = {minus01, minus02, minus12};

  PairMixing mixing[kPairs];
  int crossing_pairs = 0;
  double growth = 0.0;
  for (int p = 0; p < kPairs; ++p) {
    growth = std::max(growth, std::sqrt(positive[p] * negative[p]));  // step 6
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

  // Steps 4-5: M_ij = (1 - P_ij)/k; (M - I) g moves number along each pair, so the change is
  // accumulated as pair flows T_p = int M_ij (g_j - g_i)(1, n_hat): species i gains T_p and j
  // loses it. Flavour sums vanish by construction, lepton number because M acts on nu and nubar.
  const double* x = rule.x.data();
  const double* y = rule.y.data();
  const double* z = rule.z.data();
  const double inverse_k = 1.0 / crossing_pairs;
  for (int p = 0; p < kPairs; ++p) {
    if (!mixing[p].crosses) continue;
    const int i = kPairFirst[p], j = kPairSecond[p];
    const double *gi = g[i], *gj = g[j], *gbi = g[i + 3], *gbj = g[j + 3];
    const double* G_pair = scratch.pair(p, points);
    const double large_survival = mixing[p].large_side_survival;
    const double tie_mixing = (1.0 - 0.5 * (kOneThird + large_survival)) * inverse_k;
    const double small_mixing = (1.0 - kOneThird) * inverse_k;
    const double large_mixing = (1.0 - large_survival) * inverse_k;
    const double positive_mixing = mixing[p].positive_side_smaller ? small_mixing : large_mixing;
    const double negative_mixing = mixing[p].positive_side_smaller ? large_mixing : small_mixing;
    double n_nu = 0, fx_nu = 0, fy_nu = 0, fz_nu = 0, n_nubar = 0, fx_nubar = 0, fy_nubar = 0, fz_nubar = 0;
#pragma omp simd reduction(+ : n_nu, fx_nu, fy_nu, fz_nu, n_nubar, fx_nubar, fy_nubar, fz_nubar)
    for (std::size_t q = 0; q < points; ++q) {
      const double G = G_pair[q];
      const double m = G > 0.0 ? positive_mixing : (G < 0.0 ? negative_mixing : tie_mixing);
      const double neutrino = weight[q] * m * (gj[q] - gi[q]);
      const double antineutrino = weight[q] * m * (gbj[q] - gbi[q]);
      n_nu += neutrino;
      fx_nu += neutrino * x[q];
      fy_nu += neutrino * y[q];
      fz_nu += neutrino * z[q];
      n_nubar += antineutrino;
      fx_nubar += antineutrino * x[q];
      fy_nubar += antineutrino * y[q];
      fz_nubar += antineutrino * z[q];
    }
    const double flow[2][4] = {{n_nu, fx_nu, fy_nu, fz_nu}, {n_nubar, fx_nubar, fy_nubar, fz_nubar}};
    for (int s = 0; s < 2; ++s)
      for (int m = 0; m < kComponents; ++m) {
        dF[value_index(species_index(s, i), m)] += flow[s][m];
        dF[value_index(species_index(s, j), m)] -= flow[s][m];
      }
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

std::uint32_t Box3D::rest_frame_change(const double* F, double* dF, double* growth_over_ntot) const {
  return pairwise_box3d_change(settings_, paired_rule_, F, dF, growth_over_ntot);
}

void Box3D::apply_cell(const double* F_init, const double* u, Box3DCell& out) const {
  RestFrameCell cell;
  rest_frame_cell(F_init, u, cell);
  out.status = cell.status;
  out.ntot = cell.ntot;
  out.growth_over_ntot = cell.growth_over_ntot;
  if (!(cell.status & kCellRejectedMask)) {
    if (cell.status & kCell_NO_CROSSING) {
      std::copy(F_init, F_init + kCellValues, out.F_box.begin());  // stable: the input itself
      return;
    }
    if (finalise_cell(F_init, cell.boost, cell.ntot, cell.dF, out.F_box.data())) return;
    out.status = kCell_NONFINITE;  // densities near DBL_MAX: the result is not representable
  }
  // The one place where rejected cells get their output (Python, C, C++ and Fortran alike):
  // never NaN and never outside the realizable cone, even for a negative density or |F| > n.
  realizable_fallback(F_init, out.F_box.data());
}

void Box3D::rest_frame_cell(const double* F_init, const double* u, RestFrameCell& out) const {
  out.growth_over_ntot = 0.0;
  out.ntot = 0.0;
  out.status = kCellOk;
  bool finite = true;
  for (int v = 0; v < kCellValues; ++v) finite = finite && std::isfinite(F_init[v]);
  if (u)
    for (int m = 0; m < 4; ++m) finite = finite && std::isfinite(u[m]);
  if (!finite) {
    out.status = kCell_NONFINITE;  // no finite answer is meaningful
    return;
  }
  if (!is_valid_four_velocity(u)) {
    out.status = kCell_BAD_VELOCITY;
    return;
  }
  out.boost = LorentzBoost(u);
  double* rest = out.F;
  out.boost.cell_to_rest(F_init, rest);
  for (int v = 0; v < kCellValues; ++v)
    if (!std::isfinite(rest[v])) {  // finite input, but the boost overflowed (huge densities times W)
      out.status = kCell_NONFINITE;
      return;
    }
  double total = 0.0;
  for (int a = 0; a < kSpecies; ++a) {
    if (rest[a * kComponents] < 0.0) out.status |= kCell_NEGATIVE_DENSITY;
    total += rest[a * kComponents];
  }
  if (out.status) return;
  if (!std::isfinite(total)) {
    out.status = kCell_NONFINITE;
    return;
  }
  // Vacuum: below kSmallestNtot the changes would be rounded to the subnormal grid, which cannot
  // keep the flavour sums to rounding of N_tot (1e-310: 8e-15 N_tot; 1e-320: 8e-5 N_tot).
  if (!(total >= kSmallestNtot)) {
    out.status = kCell_ZERO_DENSITY;
    return;
  }
  out.ntot = total;
  const double inverse_total = 1.0 / total;
  for (int v = 0; v < kCellValues; ++v) rest[v] *= inverse_total;
  out.status = rest_frame_change(rest, out.dF, &out.growth_over_ntot);
}

void Box3D::apply(std::size_t n, ConstCellArray F_init, ConstVelocityArray u, CellArray F_box,
                  double* growth_over_ntot, double* ntot, std::uint32_t* status, int threads) const {
  auto run_range = [&](std::size_t begin, std::size_t end) {
    double cell[kCellValues];
    double velocity[4];
    Box3DCell result;
    for (std::size_t c = begin; c < end; ++c) {
      const double* source = F_init.data + static_cast<std::ptrdiff_t>(c) * F_init.cell_stride;
      for (int a = 0; a < kSpecies; ++a)
        for (int m = 0; m < kComponents; ++m)
          cell[value_index(a, m)] = source[a * F_init.species_stride + m * F_init.component_stride];
      const double* cell_velocity = nullptr;
      if (u.data) {
        const double* source_u = u.data + static_cast<std::ptrdiff_t>(c) * u.cell_stride;
        for (int m = 0; m < 4; ++m) velocity[m] = source_u[m * u.component_stride];
        cell_velocity = velocity;
      }
      apply_cell(cell, cell_velocity, result);
      if (F_box.data) {
        double* target = F_box.data + static_cast<std::ptrdiff_t>(c) * F_box.cell_stride;
        for (int a = 0; a < kSpecies; ++a)
          for (int m = 0; m < kComponents; ++m)
            target[a * F_box.species_stride + m * F_box.component_stride] = result.F_box[value_index(a, m)];
      }
      if (growth_over_ntot) growth_over_ntot[c] = result.growth_over_ntot;
      if (ntot) ntot[c] = result.ntot;
      if (status) status[c] = result.status;
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

}  // namespace dodo
