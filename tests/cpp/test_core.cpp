// C++ unit tests of the physics core, run by ctest (and so by the README's test command).
// A failed CHECK prints the expression and the line; main returns the number of failures.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <random>
#include <stdexcept>
#include <vector>

#include "box3d/box3d.hpp"
#include "box3d/lebedev.hpp"
#include "box3d/maxent.hpp"
#include "frame.hpp"
#include "qke/row_fft.hpp"
#include "realizability.hpp"

namespace {

int failures = 0;
#define CHECK(condition)                                                  \
  do {                                                                    \
    if (!(condition)) {                                                   \
      std::printf("FAILED line %d: %s\n", __LINE__, #condition);          \
      ++failures;                                                         \
    }                                                                     \
  } while (0)

constexpr double kPi = 3.14159265358979323846;

// Random realizable cell at rest with flux factors below max_flux_factor.
std::vector<double> random_cell(std::mt19937_64& rng, double max_flux_factor) {
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::normal_distribution<double> normal;
  std::vector<double> F(dodo::kCellValues);
  for (int a = 0; a < dodo::kSpecies; ++a) {
    const double density = 0.05 + uniform(rng), flux_factor = max_flux_factor * uniform(rng);
    double direction[3] = {normal(rng), normal(rng), normal(rng)};
    const double norm = std::sqrt(direction[0] * direction[0] + direction[1] * direction[1] + direction[2] * direction[2]);
    F[a * 4] = density;
    for (int i = 0; i < 3; ++i) F[a * 4 + 1 + i] = density * flux_factor * direction[i] / norm;
  }
  return F;
}

void test_lebedev_rules() {
  for (int order : dodo::available_lebedev_orders()) {
    const dodo::LebedevRule rule = dodo::lebedev_rule(order);
    double total = 0.0, first_moment = 0.0, second_moment_zz = 0.0;
    for (std::size_t q = 0; q < rule.size(); ++q) {
      total += rule.weight[q];
      first_moment += rule.weight[q] * rule.x[q];
      second_moment_zz += rule.weight[q] * rule.z[q] * rule.z[q];
    }
    CHECK(std::fabs(total - 4 * kPi) < 1e-12);  // naive summation of up to 5810 terms
    CHECK(std::fabs(first_moment) < 1e-14);
    CHECK(std::fabs(second_moment_zz - 4 * kPi / 3) < 1e-13);
  }
  bool refused = false;
  try {
    dodo::lebedev_rule(18);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  CHECK(refused);
}

// Box3D's layout: every point beside its antipode (q, q + half), same weights, padding of zero
// weight, and the same quadrature as the table (sums of weights and moments unchanged).
void test_paired_rules() {
  for (int order : dodo::available_lebedev_orders()) {
    const dodo::LebedevRule rule = dodo::lebedev_rule(order);
    const dodo::PairedRule paired = dodo::paired_rule(rule, 8);
    CHECK(paired.half % 8 == 0 && paired.size() == 2 * paired.half);
    CHECK(2 * paired.half >= rule.size() && 2 * paired.half < rule.size() + 16);
    std::size_t real_points = 0;
    double total = 0.0, second_moment_xy = 0.0, second_moment_zz = 0.0;
    for (std::size_t q = 0; q < paired.half; ++q) {
      const std::size_t p = q + paired.half;
      CHECK(paired.x[p] == -paired.x[q] && paired.y[p] == -paired.y[q] && paired.z[p] == -paired.z[q]);
      CHECK(paired.weight[p] == paired.weight[q]);
      if (paired.weight[q] == 0.0) CHECK(paired.x[q] == 0.0 && paired.y[q] == 0.0 && paired.z[q] == 0.0);
      else real_points += 2;
    }
    for (std::size_t q = 0; q < paired.size(); ++q) {
      total += paired.weight[q];
      second_moment_xy += paired.weight[q] * paired.x[q] * paired.y[q];
      second_moment_zz += paired.weight[q] * paired.z[q] * paired.z[q];
    }
    CHECK(real_points == rule.size());
    CHECK(std::fabs(total - 4 * kPi) < 1e-12);
    CHECK(std::fabs(second_moment_xy) < 1e-14);
    CHECK(std::fabs(second_moment_zz - 4 * kPi / 3) < 1e-13);
  }
  dodo::LebedevRule lopsided = dodo::lebedev_rule(17);
  lopsided.weight[0] *= 1.5;  // its antipode keeps the old weight
  bool refused = false;
  try {
    dodo::paired_rule(lopsided, 8);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  CHECK(refused);
}

void test_inverse_langevin() {
  for (double f = 0.001; f < 0.985; f += 0.013) {
    const double Z = dodo::inverse_langevin_exact(f);
    const double L = 1.0 / std::tanh(Z) - 1.0 / Z;
    CHECK(std::fabs(L - f) < 1e-13);
    CHECK(std::fabs(dodo::inverse_langevin_jedynak(f) - Z) < 2e-3 * Z);
  }
  CHECK(dodo::inverse_langevin_exact(0.0) == 0.0);
  CHECK(std::fabs(dodo::maxent_shape(0.0, 0.3) - 1.0) < 1e-15);
}

void test_boost_round_trip() {
  const double W = 1.0 / std::sqrt(1.0 - 0.81);
  const double u[4] = {W, 0.0, W * 0.9, 0.0};
  CHECK(dodo::is_valid_four_velocity(u));
  const double lab[4] = {2.0, 0.3, -0.5, 1.1};
  double rest[4], back[4];
  dodo::boost_to_rest(u, lab, rest);
  dodo::boost_from_rest(u, rest, back);
  for (int m = 0; m < 4; ++m) CHECK(std::fabs(back[m] - lab[m]) < 1e-14);
  CHECK(std::fabs(dodo::minkowski_dot(lab, lab) - dodo::minkowski_dot(rest, rest)) < 1e-13);
  double u_rest[4];
  dodo::boost_to_rest(u, u, u_rest);  // u itself goes to (1, 0, 0, 0)
  CHECK(std::fabs(u_rest[0] - 1.0) < 1e-14 && std::fabs(u_rest[2]) < 1e-14);
  const double bad_u[4] = {1.0, 0.5, 0.0, 0.0};
  CHECK(!dodo::is_valid_four_velocity(bad_u));
}

void test_conservation_and_realizability() {
  const dodo::Box3D box3d{dodo::Box3DSettings{}};
  std::mt19937_64 rng(7);
  int crossing = 0;
  for (int trial = 0; trial < 2000; ++trial) {
    const std::vector<double> F = random_cell(rng, 0.9);
    dodo::Box3DCell result;
    box3d.apply_cell(F.data(), nullptr, result);
    CHECK((result.status & dodo::kCellRejectedMask) == 0);
    if (!(result.status & dodo::kCell_NO_CROSSING)) ++crossing;
    for (int s = 0; s < 2; ++s)
      for (int m = 0; m < 4; ++m) {
        double flavour_sum = 0.0;
        for (int f = 0; f < 3; ++f) flavour_sum += result.F_box[(3 * s + f) * 4 + m] - F[(3 * s + f) * 4 + m];
        CHECK(std::fabs(flavour_sum) < 1e-12 * result.ntot);
      }
    for (int f = 0; f < 3; ++f) {
      const double lepton = (result.F_box[f * 4] - F[f * 4]) - (result.F_box[(f + 3) * 4] - F[(f + 3) * 4]);
      CHECK(std::fabs(lepton) < 1e-12 * result.ntot);
    }
    CHECK(dodo::cell_is_realizable(result.F_box.data()));
  }
  CHECK(crossing > 1000);
}

void test_flags() {
  const dodo::Box3D box3d{dodo::Box3DSettings{}};
  std::vector<double> F(24, 0.0);
  dodo::Box3DCell result;
  box3d.apply_cell(F.data(), nullptr, result);
  CHECK(result.status == dodo::kCell_ZERO_DENSITY);
  F[0] = 1.0;
  F[3] = std::numeric_limits<double>::quiet_NaN();
  box3d.apply_cell(F.data(), nullptr, result);
  CHECK(result.status == dodo::kCell_NONFINITE);
  for (double value : result.F_box) CHECK(value == 0.0);
  F[3] = 0.0;
  F[4] = -1.0;
  box3d.apply_cell(F.data(), nullptr, result);
  CHECK(result.status == dodo::kCell_NEGATIVE_DENSITY);
  F[4] = 1.0;
  F[7] = 0.99;
  box3d.apply_cell(F.data(), nullptr, result);
  CHECK(result.status == dodo::kCell_FLUX_FACTOR);
  CHECK(result.F_box[7] == 0.99);
  const double bad_u[4] = {1.0, 0.5, 0.0, 0.0};
  F[7] = 0.0;
  box3d.apply_cell(F.data(), bad_u, result);
  CHECK(result.status == dodo::kCell_BAD_VELOCITY);
}

void test_strided_batch_and_threads() {
  const dodo::Box3D box3d{dodo::Box3DSettings{}};
  std::mt19937_64 rng(11);
  const std::size_t n = 5000;
  std::vector<double> cells(n * 24), fortran(n * 24);
  for (std::size_t c = 0; c < n; ++c) {
    const std::vector<double> F = random_cell(rng, 0.9);
    for (int v = 0; v < 24; ++v) cells[c * 24 + v] = F[v];
    // Fortran (4, 6, n) column-major is the same as C (n, 6, 4): use a transposed (n, 4, 6) layout instead.
    for (int a = 0; a < 6; ++a)
      for (int m = 0; m < 4; ++m) fortran[c * 24 + m * 6 + a] = F[a * 4 + m];
  }
  std::vector<double> one(n * 24), many(n * 24), strided(n * 24);
  std::vector<std::uint32_t> status_one(n), status_many(n);
  box3d.apply(n, {cells.data()}, {nullptr}, {one.data()}, nullptr, nullptr, status_one.data(), 1);
  box3d.apply(n, {cells.data()}, {nullptr}, {many.data()}, nullptr, nullptr, status_many.data(), 4);
  box3d.apply(n, {fortran.data(), 24, 1, 6}, {nullptr}, {strided.data(), 24, 1, 6}, nullptr, nullptr, nullptr, 2);
  bool identical = true, strided_identical = true;
  for (std::size_t c = 0; c < n; ++c) {
    identical = identical && status_one[c] == status_many[c];
    for (int a = 0; a < 6; ++a)
      for (int m = 0; m < 4; ++m) {
        identical = identical && one[c * 24 + a * 4 + m] == many[c * 24 + a * 4 + m];
        strided_identical = strided_identical && one[c * 24 + a * 4 + m] == strided[c * 24 + m * 6 + a];
      }
  }
  CHECK(identical);
  CHECK(strided_identical);

  // In place (F_box == F_init, moving cells): the same bits as out of place. Box3D::apply writes
  // contiguous outputs directly, except over the input it still reads.
  std::vector<double> velocity(n * 4), out_of_place(n * 24), in_place = cells;
  for (std::size_t c = 0; c < n; ++c) {
    const double v[3] = {0.3 * std::sin(c * 0.7), 0.2 * std::cos(c * 1.3), 0.1 * std::sin(c * 2.1)};
    const double W = 1.0 / std::sqrt(1.0 - v[0] * v[0] - v[1] * v[1] - v[2] * v[2]);
    velocity[c * 4] = W;
    for (int i = 0; i < 3; ++i) velocity[c * 4 + 1 + i] = W * v[i];
  }
  box3d.apply(n, {cells.data()}, {velocity.data()}, {out_of_place.data()}, nullptr, nullptr, nullptr, 1);
  box3d.apply(n, {in_place.data()}, {velocity.data()}, {in_place.data()}, nullptr, nullptr, nullptr, 1);
  CHECK(std::equal(in_place.begin(), in_place.end(), out_of_place.begin()));
  CHECK(!std::equal(out_of_place.begin(), out_of_place.end(), cells.begin()));  // the cells did change
}

void test_realizable_step() {
  std::vector<double> base(24, 0.0), change(24, 0.0);
  for (int a = 0; a < 6; ++a) base[a * 4] = 1.0;
  base[3] = 0.5;
  change[3] = 1.0;  // pushes species 0 to |F| = 1.5 > n at theta = 1
  const double theta = dodo::realizable_step(base.data(), change.data());
  CHECK(theta > 0.49 && theta < 0.5);
  std::vector<double> moved(24);
  for (int v = 0; v < 24; ++v) moved[v] = base[v] + theta * change[v];
  CHECK(dodo::cell_is_realizable(moved.data()));
  change[3] = -0.1;
  CHECK(dodo::realizable_step(base.data(), change.data()) == 1.0);
}

}  // namespace

// The QKE kernel's row FFT against a direct DFT: lengths with an even and an odd number of
// radix-2 stages, several row widths; forward output in bit-reversed row order; inverse(forward)
// = n x.
void test_row_fft() {
  std::mt19937 rng(7);
  std::uniform_real_distribution<double> uniform(-1.0, 1.0);
  for (std::size_t n : {2u, 4u, 8u, 16u, 32u, 64u, 128u}) {
    const std::size_t width = 5;
    dodo::qke::RowFft fft(n);
    std::vector<double> re(n * width), im(n * width);
    for (auto& x : re) x = uniform(rng);
    for (auto& x : im) x = uniform(rng);
    std::vector<double> re0 = re, im0 = im;
    fft.forward(re.data(), im.data(), width);
    double worst = 0;
    for (std::size_t row = 0; row < n; ++row) {
      const std::size_t k = fft.spectral_bin(row);
      for (std::size_t d = 0; d < width; ++d) {
        double sr = 0, si = 0;
        for (std::size_t z = 0; z < n; ++z) {
          const double angle = -2 * kPi * static_cast<double>(k * z % n) / static_cast<double>(n);
          sr += re0[z * width + d] * std::cos(angle) - im0[z * width + d] * std::sin(angle);
          si += re0[z * width + d] * std::sin(angle) + im0[z * width + d] * std::cos(angle);
        }
        worst = std::max(worst, std::hypot(re[row * width + d] - sr, im[row * width + d] - si));
      }
    }
    CHECK(worst < 1e-13 * static_cast<double>(n));
    fft.inverse(re.data(), im.data(), width);
    double round_trip = 0;
    for (std::size_t i = 0; i < n * width; ++i)
      round_trip = std::max(round_trip, std::hypot(re[i] / n - re0[i], im[i] / n - im0[i]));
    CHECK(round_trip < 1e-15 * static_cast<double>(n));
  }
  bool refused = false;
  try {
    dodo::qke::RowFft bad(48);
  } catch (const std::invalid_argument&) {
    refused = true;
  }
  CHECK(refused);
}

int main() {
  test_lebedev_rules();
  test_paired_rules();
  test_inverse_langevin();
  test_boost_round_trip();
  test_conservation_and_realizability();
  test_flags();
  test_strided_batch_and_threads();
  test_realizable_step();
  test_row_fft();
  std::printf("%s: %d failure(s)\n", failures ? "FAILED" : "OK", failures);
  return failures == 0 ? 0 : 1;
}
