#include "box3d.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <string>
#include <thread>

#include "../frame.hpp"
#include "../realizability.hpp"
#include "../thread_start.hpp"
#include "../multiversion.hpp"
#include "exp_kernel.hpp"
#include "langevin_kernel.hpp"

namespace dodo {
namespace {

constexpr double kOneThird = 1.0 / 3.0;
constexpr double kInverseFourPi = 0.25 / 3.14159265358979323846;

// Per-thread scratch for the angular distributions: sized at first use (warm-up), then reused.
struct AngularScratch {
  std::vector<double> distribution;  // [species][direction]
  double* species(int a, std::size_t points) { return distribution.data() + a * points; }
  void reserve(std::size_t points) {
    if (distribution.size() < kSpecies * points) distribution.resize(kSpecies * points);
  }
};

AngularScratch& thread_scratch() {
  thread_local AngularScratch scratch;
  return scratch;
}

// Maximum-entropy distribution of one species on the quadrature (physics.md section 2, step 1):
// g(n_hat) = n/(4 pi) Z/sinh(Z) exp(Z F_hat.n_hat), written as 2Z/(1 - e^{-2Z}) e^{Z(mu - 1)}.
DODO_MULTIVERSION
void reconstruct_species(const LebedevRule& rule, double density, double Z, const double* flux_direction,
                         double* g) {
  const std::size_t points = rule.size();
  const double* x = rule.x.data();
  const double* y = rule.y.data();
  const double* z = rule.z.data();
  if (density == 0.0) {
    std::fill(g, g + points, 0.0);
    return;
  }
  const double isotropic = density * kInverseFourPi;
  if (Z < 1e-8) {
    // Linear in Z: the exact form's error here is O(Z^2) < 1e-16.
    const double hx = Z * flux_direction[0], hy = Z * flux_direction[1], hz = Z * flux_direction[2];
    for (std::size_t q = 0; q < points; ++q) g[q] = isotropic * (1.0 + hx * x[q] + hy * y[q] + hz * z[q]);
    return;
  }
  const double amplitude = isotropic * 2.0 * Z / (-std::expm1(-2.0 * Z));
  const double hx = Z * flux_direction[0], hy = Z * flux_direction[1], hz = Z * flux_direction[2];
  for (std::size_t q = 0; q < points; ++q) g[q] = amplitude * clamped_exp(hx * x[q] + hy * y[q] + hz * z[q] - Z);
}

// Survival probabilities of one crossing flavour pair (physics.md section 2, step 3).
struct PairMixing {
  bool crosses = false;
  bool positive_side_smaller = false;  // the side with G > 0 carries the smaller integral
  double large_side_survival = 1.0;    // P = 1 - (2/3) I_small / I_large
};

}  // namespace

Box3D::Box3D(const Box3DSettings& settings) : settings_(settings), rule_(lebedev_rule(settings.lebedev_order)) {
  if (!(settings.max_flux_factor > 0.0 && settings.max_flux_factor < 1.0))
    throw std::invalid_argument("max_flux_factor must lie in (0, 1); got " + std::to_string(settings.max_flux_factor));
}

namespace {

DODO_MULTIVERSION
std::uint32_t pairwise_box3d_change(const Box3DSettings& settings, const LebedevRule& rule, const double* F,
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
    reconstruct_species(rule, density[a], Z[a], direction[a], scratch.species(a, points));
    g[a] = scratch.species(a, points);
  }
  const double* weight = rule.weight.data();

  // Steps 2-3: ELN differences G = ELN_i - ELN_j and their positive/negative integrals.
  double positive[kPairs] = {0, 0, 0}, negative[kPairs] = {0, 0, 0};
  for (int p = 0; p < kPairs; ++p) {
    const int i = kPairFirst[p], j = kPairSecond[p];
    const double *gi = g[i], *gj = g[j], *gbi = g[i + 3], *gbj = g[j + 3];
    // `omp simd` (compiled with -fopenmp-simd, no OpenMP runtime) allows the reordered sums
    // that vectorising a reduction needs; the order changes results only at rounding level.
    double plus = 0.0, minus = 0.0;
#pragma omp simd reduction(+ : plus, minus)
    for (std::size_t q = 0; q < points; ++q) {
      const double G = (gi[q] - gbi[q]) - (gj[q] - gbj[q]);
      plus += weight[q] * std::max(G, 0.0);
      minus += weight[q] * std::max(-G, 0.0);
    }
    positive[p] = plus;
    negative[p] = minus;
  }

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
    const double large_survival = mixing[p].large_side_survival;
    const double tie_mixing = (1.0 - 0.5 * (kOneThird + large_survival)) * inverse_k;
    const double small_mixing = (1.0 - kOneThird) * inverse_k;
    const double large_mixing = (1.0 - large_survival) * inverse_k;
    const double positive_mixing = mixing[p].positive_side_smaller ? small_mixing : large_mixing;
    const double negative_mixing = mixing[p].positive_side_smaller ? large_mixing : small_mixing;
    double n_nu = 0, fx_nu = 0, fy_nu = 0, fz_nu = 0, n_nubar = 0, fx_nubar = 0, fy_nubar = 0, fz_nubar = 0;
#pragma omp simd reduction(+ : n_nu, fx_nu, fy_nu, fz_nu, n_nubar, fx_nubar, fy_nubar, fz_nubar)
    for (std::size_t q = 0; q < points; ++q) {
      const double G = (gi[q] - gbi[q]) - (gj[q] - gbj[q]);
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
  return pairwise_box3d_change(settings_, rule_, F, dF, growth_over_ntot);
}

void Box3D::apply_cell(const double* F_init, const double* u, Box3DCell& out) const {
  classify_and_apply(F_init, u, out);
  // The one place where rejected cells get their output (Python, C, C++ and Fortran alike):
  // never NaN and never outside the realizable cone, even for a negative density or |F| > n.
  if (out.status & kCellRejectedMask) {
    realizable_fallback(F_init, out.F_box.data());
  }
}

void Box3D::classify_and_apply(const double* F_init, const double* u, Box3DCell& out) const {
  out.growth_over_ntot = 0.0;
  out.ntot = 0.0;
  out.status = kCellOk;
  bool finite = true;
  for (int v = 0; v < kCellValues; ++v) finite = finite && std::isfinite(F_init[v]);
  if (u)
    for (int m = 0; m < 4; ++m) finite = finite && std::isfinite(u[m]);
  if (!finite) {
    // No finite answer is meaningful: return zeros, never NaN, and say why.
    out.F_box.fill(0.0);
    out.status = kCell_NONFINITE;
    return;
  }
  std::copy(F_init, F_init + kCellValues, out.F_box.begin());
  if (!is_valid_four_velocity(u)) {
    out.status = kCell_BAD_VELOCITY;
    return;
  }
  double rest[kCellValues];
  boost_cell_to_rest(u, F_init, rest);
  for (double value : rest)
    if (!std::isfinite(value)) {  // finite input, but the boost overflowed (huge densities times W)
      out.status = kCell_NONFINITE;
      return;
    }
  double total = 0.0;
  for (int a = 0; a < kSpecies; ++a) {
    if (rest[a * kComponents] < 0.0) out.status |= kCell_NEGATIVE_DENSITY;
    total += rest[a * kComponents];
  }
  if (out.status) return;
  if (!(total > 0.0)) {
    out.status = kCell_ZERO_DENSITY;
    return;
  }
  if (!std::isfinite(total)) {
    out.status = kCell_NONFINITE;
    out.F_box.fill(0.0);
    return;
  }
  out.ntot = total;
  const double inverse_total = 1.0 / total;
  if (std::isfinite(inverse_total)) {
    for (double& value : rest) value *= inverse_total;
  } else {  // subnormal N_tot (< 5.6e-309): 1/N_tot overflows, the quotients do not
    for (double& value : rest) value /= total;
  }

  double change[kCellValues];
  out.status = rest_frame_change(rest, change, &out.growth_over_ntot);
  if (out.status & kCellRejectedMask) return;
  for (double& value : change) value *= total;
  double change_lab[kCellValues];
  boost_cell_from_rest(u, change, change_lab);
  for (int v = 0; v < kCellValues; ++v) out.F_box[v] = F_init[v] + change_lab[v];
  for (double value : out.F_box)
    if (!std::isfinite(value)) {  // densities near DBL_MAX: the result is not representable
      out.status = kCell_NONFINITE;
      return;
    }
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
