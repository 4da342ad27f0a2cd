// Turns fuzzer bytes into numbers and cells. Shared by the libFuzzer targets (fuzz/README.md).
//
// Values are drawn in three ways so that the fuzzer reaches both the rejection paths (NaN, Inf,
// negative densities, huge and tiny magnitudes) and the full closure (physical cells with ELN
// crossings, moving fluids): raw IEEE bit patterns, a table of edge values, and cells built from
// bounded parameters (density, flux factor, direction, fluid speed).
#pragma once

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <limits>

namespace dodo_fuzz {

class Bytes {
 public:
  Bytes(const std::uint8_t* data, std::size_t size) : data_(data), size_(size) {}
  bool empty() const { return pos_ >= size_; }
  std::uint8_t byte() { return pos_ < size_ ? data_[pos_++] : 0; }
  std::uint16_t u16() { return static_cast<std::uint16_t>(byte() | (byte() << 8)); }
  // A number in [0, 1] from two bytes.
  double unit() { return u16() / 65535.0; }
  double raw_double() {
    std::uint64_t bits = 0;
    for (int i = 0; i < 8; ++i) bits |= static_cast<std::uint64_t>(byte()) << (8 * i);
    double value;
    std::memcpy(&value, &bits, sizeof value);
    return value;
  }
  // Any double: a tag byte picks raw bits, an edge value, or a moderate number.
  double any_double() {
    static const double kEdges[] = {0.0,
                                    -0.0,
                                    1.0,
                                    -1.0,
                                    0.5,
                                    1e-300,
                                    1e300,
                                    -1e300,
                                    1e-310,
                                    std::numeric_limits<double>::denorm_min(),
                                    std::numeric_limits<double>::min(),
                                    std::numeric_limits<double>::max(),
                                    -std::numeric_limits<double>::max(),
                                    std::numeric_limits<double>::epsilon(),
                                    std::numeric_limits<double>::infinity(),
                                    -std::numeric_limits<double>::infinity(),
                                    std::numeric_limits<double>::quiet_NaN(),
                                    1e33,
                                    0.98,
                                    0.9799999999999999,
                                    1.0000001};
    const std::uint8_t tag = byte();
    if (tag < 48) return raw_double();
    if (tag < 128) return kEdges[tag % (sizeof kEdges / sizeof kEdges[0])];
    // Moderate: mantissa in [-1, 1], decimal exponent in [-40, 40].
    const double mantissa = 2.0 * unit() - 1.0;
    const int exponent = static_cast<int>(byte() % 81) - 40;
    return mantissa * std::pow(10.0, exponent);
  }

 private:
  const std::uint8_t* data_;
  std::size_t size_;
  std::size_t pos_ = 0;
};

// One cell: F[6][4] (species-major) and u[4]. Mode byte: physical, physical with a few values
// replaced, or entirely arbitrary.
inline void make_cell(Bytes& in, double* F, double* u) {
  const std::uint8_t mode = in.byte();
  const int kind = mode % 4;
  if (kind == 3) {
    for (int v = 0; v < 24; ++v) F[v] = in.any_double();
    for (int m = 0; m < 4; ++m) u[m] = in.any_double();
    return;
  }
  // Physical: a common scale, per-species density fraction, flux factor and direction.
  const double scale = std::pow(10.0, static_cast<int>(in.byte() % 121) - 60) * (0.5 + in.unit());
  for (int a = 0; a < 6; ++a) {
    const double n = scale * (0.01 + in.unit());
    const double flux_factor = in.unit();  // may reach 1: flagged above max_flux_factor
    const double cos_theta = 2.0 * in.unit() - 1.0, phi = 6.283185307179586 * in.unit();
    const double sin_theta = std::sqrt(std::fmax(0.0, 1.0 - cos_theta * cos_theta));
    F[4 * a] = n;
    F[4 * a + 1] = n * flux_factor * sin_theta * std::cos(phi);
    F[4 * a + 2] = n * flux_factor * sin_theta * std::sin(phi);
    F[4 * a + 3] = n * flux_factor * cos_theta;
  }
  if (mode & 4) {  // mu = tau (shared distributions)
    for (int m = 0; m < 4; ++m) {
      F[8 + m] = F[4 + m];
      F[20 + m] = F[16 + m];
    }
  }
  // Near a flavour-swap symmetric state, inside the band where the runtime blends the network over
  // the cell's flavour images (runtime/flavour_symmetry.hpp, half-width 0.01 N_tot): mode 16 puts
  // n_nubar_e within +-0.02 N_tot of n_nu_e (a_e), mode 32 puts n_tau + n_taubar within
  // +-0.02 N_tot of n_mu + n_mubar (a_mt); each species keeps its flux factor and direction.
  // (Lab-frame densities: for a moving fluid the comoving asymmetry differs a little.)
  double total = 0.0;
  for (int a = 0; a < 6; ++a) total += F[4 * a];
  const auto set_density = [F](int species, double n) {
    const double ratio = n / F[4 * species];
    for (int m = 0; m < 4; ++m) F[4 * species + m] *= ratio;
  };
  if (mode & 16) set_density(3, std::fmax(F[0] + total * 0.02 * (2.0 * in.unit() - 1.0), 1e-3 * F[0]));
  if (mode & 32) {
    const double target = F[4] + F[16] - F[20] + total * 0.02 * (2.0 * in.unit() - 1.0);
    set_density(2, std::fmax(target, 1e-3 * F[4]));
  }
  const double speed = (mode & 8) ? 0.0 : std::pow(in.unit(), 0.25) * 0.999;
  const double cos_theta = 2.0 * in.unit() - 1.0, phi = 6.283185307179586 * in.unit();
  const double sin_theta = std::sqrt(std::fmax(0.0, 1.0 - cos_theta * cos_theta));
  const double W = 1.0 / std::sqrt(1.0 - speed * speed);
  u[0] = W;
  u[1] = W * speed * sin_theta * std::cos(phi);
  u[2] = W * speed * sin_theta * std::sin(phi);
  u[3] = W * speed * cos_theta;
  if (kind == 2) {  // replace up to three values by arbitrary ones
    const int count = 1 + in.byte() % 3;
    for (int k = 0; k < count; ++k) {
      const int index = in.byte() % 28;
      const double value = in.any_double();
      if (index < 24) F[index] = value; else u[index - 24] = value;
    }
  }
}

}  // namespace dodo_fuzz
