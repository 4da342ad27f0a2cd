#include "frame.hpp"

#include <cmath>
#include <cstring>

#include "multiversion.hpp"

namespace dodo {

double four_velocity_norm_error(const double* u) { return std::fabs(minkowski_dot(u, u) + 1.0); }

bool is_valid_four_velocity(const double* u) {
  if (u == nullptr) return true;
  for (int m = 0; m < 4; ++m)
    if (!std::isfinite(u[m])) return false;
  // `<=` is false for a NaN error (an overflowing u.u gives inf - inf).
  return u[0] > 0.0 && four_velocity_norm_error(u) <= four_velocity_norm_tolerance(u[0]);
}

DODO_MULTIVERSION
bool all_valid_four_velocities(std::size_t n, const double* u) {
  constexpr std::size_t kBlock = 64;  // rows per branch-free pass; a bad row ends the scan soon after
  for (std::size_t begin = 0; begin < n; begin += kBlock) {
    const std::size_t end = n - begin < kBlock ? n : begin + kBlock;
    int valid = 1;
#pragma omp simd reduction(& : valid)
    for (std::size_t c = begin; c < end; ++c) {
      const double* v = u + 4 * c;
      // is_valid_four_velocity's operations in its order (fp-contract=off: the same bits). `&` on
      // ints, not bools: branch-free, and clean under clang's -Wbitwise-instead-of-logical (C round forty).
      const int finite = static_cast<int>(std::isfinite(v[0])) & static_cast<int>(std::isfinite(v[1])) &
                         static_cast<int>(std::isfinite(v[2])) & static_cast<int>(std::isfinite(v[3]));
      const double norm_error = std::fabs(-v[0] * v[0] + v[1] * v[1] + v[2] * v[2] + v[3] * v[3] + 1.0);
      valid &= finite & (v[0] > 0.0) & (norm_error <= four_velocity_norm_tolerance(v[0]));
    }
    if (!valid) return false;
  }
  return true;
}

// Pure boost by 3-velocity v = sign * u_spatial / W (physics.md section 1):
// F'^t = W (F^t - v.F), F' = F + ((W - 1)(v.F)/v^2 - W F^t) v.
LorentzBoost::LorentzBoost(const double* u) {
  if (u == nullptr) return;
  identity_ = false;
  // u is accepted with |u.u + 1| up to 1e-6 max(1, u^t^2): boost by the exact Lorentz factor of v = u/u^t
  // (W = u^t / sqrt(-u.u)), so the boost and its inverse are exact inverses and the conservation
  // laws hold to rounding for the normalised u (and so for u, a multiple of it).
  const double spatial2 = u[1] * u[1] + u[2] * u[2] + u[3] * u[3];
  W_ = u[0] / std::sqrt((u[0] - std::sqrt(spatial2)) * (u[0] + std::sqrt(spatial2)));
  vx_ = u[1] / u[0];
  vy_ = u[2] / u[0];
  vz_ = u[3] / u[0];
  // (W - 1)/v^2 = W^2/(W + 1) avoids 0/0 for tiny v (W^2 v^2 = W^2 - 1).
  W2_over_W_plus_1_ = W_ * W_ / (W_ + 1.0);
}

namespace {

// The boost of one four-vector (the helpers below: Python's dodo.boost_to_rest and boost_from_rest;
// Box3D and the closure boost blocks themselves and flag a cell whose boost overflows NONFINITE).
// Its intermediates W^2/(W + 1) v.F and W F^t reach some 4 W |F|: a finite F of 2e306 at W = 1e6,
// whose rest-frame components are near 1e300, overflowed to inf - inf and came back NaN (outside
// probe, Python round fifty-eight's open item; C round fifty). Such a vector is boosted again
// scaled by a power of two, 2^-k, which is exact and makes the same roundings (the boost is
// linear), and the result scaled back by 2^k: the components the unbounded arithmetic gives,
// inf only where one is beyond the double range. Vectors whose boost is finite (every one of a
// physical size) are untouched: the same bits.
void boost_vector(const LorentzBoost& boost, const double* u, bool to_rest, const double* vector, double* out) {
  const double in[4] = {vector[0], vector[1], vector[2], vector[3]};  // out may be the vector itself
  if (to_rest) boost.to_rest(in, out);
  else boost.from_rest(in, out);
  if (std::isfinite(out[0]) && std::isfinite(out[1]) && std::isfinite(out[2]) && std::isfinite(out[3])) return;
  if (u == nullptr || !(u[0] > 0.0) || !std::isfinite(u[0])) return;
  double largest = 0.0;
  for (int m = 0; m < 4; ++m) {
    if (!std::isfinite(in[m])) return;  // non-finite input: its NaN or inf is the answer
    largest = std::fmax(largest, std::fabs(in[m]));
  }
  if (largest == 0.0) return;
  // W is at most sqrt(2) u^t for a u the checks accept (|u.u + 1| <= 0.5): 4 W |F| stays below
  // 2^1023 once |F| is below 2^(1019 - ilogb(u^t) - 1).
  const int room = 1018 - (std::ilogb(u[0]) > 0 ? std::ilogb(u[0]) : 0);
  const int k = std::ilogb(largest) - room;
  if (k <= 0) return;
  double scaled[4], boosted[4];
  for (int m = 0; m < 4; ++m) scaled[m] = std::ldexp(in[m], -k);
  if (to_rest) boost.to_rest(scaled, boosted);
  else boost.from_rest(scaled, boosted);
  for (int m = 0; m < 4; ++m) out[m] = std::ldexp(boosted[m], k);
}

void boost_cell(const double* u, bool to_rest, const double* in, double* out) {
  const LorentzBoost boost(u);
  for (int a = 0; a < kSpecies; ++a) boost_vector(boost, u, to_rest, in + a * kComponents, out + a * kComponents);
}

}  // namespace

void boost_to_rest(const double* u, const double* lab, double* rest) { boost_vector(LorentzBoost(u), u, true, lab, rest); }

void boost_from_rest(const double* u, const double* rest, double* lab) {
  boost_vector(LorentzBoost(u), u, false, rest, lab);
}

void boost_cell_to_rest(const double* u, const double* lab, double* rest) { boost_cell(u, true, lab, rest); }

void boost_cell_from_rest(const double* u, const double* rest, double* lab) { boost_cell(u, false, rest, lab); }

double comoving_total_density(const double* F, const double* u) {
  static const double at_rest[4] = {1.0, 0.0, 0.0, 0.0};
  const double* velocity = u ? u : at_rest;
  double comoving[kSpecies];
  for (int a = 0; a < kSpecies; ++a) comoving[a] = -minkowski_dot(F + a * kComponents, velocity);
  return flavour_symmetric_sum(comoving[0], comoving[1], comoving[2], comoving[3], comoving[4], comoving[5]);
}

bool invariants(const double* F, const double* u, double* out27) {
  static const double at_rest[4] = {1.0, 0.0, 0.0, 0.0};
  const double* velocity = u ? u : at_rest;
  double comoving[kSpecies];
  for (int a = 0; a < kSpecies; ++a) comoving[a] = -minkowski_dot(F + a * kComponents, velocity);
  const double total = flavour_symmetric_sum(comoving[0], comoving[1], comoving[2], comoving[3], comoving[4], comoving[5]);
  if (!(total > 0.0) || !std::isfinite(total)) {
    for (int i = 0; i < kInvariants; ++i) out27[i] = 0.0;
    return false;
  }
  // Normalise the four-vectors first so that products of large densities cannot overflow.
  const double inverse_total = 1.0 / total;
  double normalised[kCellValues];
  if (std::isfinite(inverse_total)) {
    for (int i = 0; i < kCellValues; ++i) normalised[i] = F[i] * inverse_total;
    for (int a = 0; a < kSpecies; ++a) out27[a] = comoving[a] * inverse_total;
  } else {  // subnormal N_tot: 1/N_tot overflows, the quotients do not
    for (int i = 0; i < kCellValues; ++i) normalised[i] = F[i] / total;
    for (int a = 0; a < kSpecies; ++a) out27[a] = comoving[a] / total;
  }
  int index = kSpecies;
  for (int a = 0; a < kSpecies; ++a)
    for (int b = a; b < kSpecies; ++b)
      out27[index++] = minkowski_dot(normalised + a * kComponents, normalised + b * kComponents);
  return true;
}

namespace {

// The body of both rest_frame_invariants: products straight from the species-major values, each
// with minkowski_dot's operations in its order (-a0 b0 + a1 b1 + a2 b2 + a3 b3; fp-contract=off:
// the same bits), written as Out (double, or float for the network's input row). A
// component-major copy first (for vector loops over b) stalled on store forwarding: its scalar
// stores were read back as vectors.
template <typename Out>
inline __attribute__((always_inline)) void invariants_of(const double* F, Out* out27) {
  for (int a = 0; a < kSpecies; ++a) out27[a] = static_cast<Out>(F[a * kComponents]);
  Out* out = out27 + kSpecies;
  for (int a = 0; a < kSpecies; ++a) {
    const double t = -F[a * kComponents], x = F[a * kComponents + 1], y = F[a * kComponents + 2],
                 z = F[a * kComponents + 3];
    for (int b = a; b < kSpecies; ++b) {
      const double* other = F + b * kComponents;
      *out++ = static_cast<Out>(t * other[0] + x * other[1] + y * other[2] + z * other[3]);
    }
  }
}

}  // namespace

DODO_MULTIVERSION
void rest_frame_invariants(const double* F, double* out27) { invariants_of(F, out27); }

DODO_MULTIVERSION
void rest_frame_invariants(const double* F, float* out27) { invariants_of(F, out27); }

#if DODO_MULTIVERSION_ENABLED  // GCC's vector types and __builtin_shuffle
namespace {

typedef double Doubles4 __attribute__((vector_size(32)));
typedef long long Lanes4 __attribute__((vector_size(32)));
typedef float Floats4 __attribute__((vector_size(16)));

// The species pairs a <= b of the 21 products in row-major order.
constexpr int kProducts = kSpecies * (kSpecies + 1) / 2;
struct ProductPairs {
  int a[kProducts], b[kProducts];
};
constexpr ProductPairs product_pairs() {
  ProductPairs out{};
  int k = 0;
  for (int a = 0; a < kSpecies; ++a)
    for (int b = a; b < kSpecies; ++b) {
      out.a[k] = a;
      out.b[k] = b;
      ++k;
    }
  return out;
}
constexpr ProductPairs kProductPairs = product_pairs();

// Four Minkowski products from their componentwise products p_i = F_a * F_b (unsigned):
// ((p1 - p0) + p2) + p3, which is minkowski_dot's ((-t_a t_b + x_a x_b) + y_a y_b) + z_a z_b
// bit for bit (u + v = v + u, and v - u = v + (-u) with -u exact; no contraction in this file),
// by a 4 x 4 transpose, as four floats (one conversion).
inline __attribute__((always_inline)) Floats4 dots4(const Doubles4& p0, const Doubles4& p1, const Doubles4& p2,
                                                    const Doubles4& p3) {
  const Doubles4 t0 = __builtin_shuffle(p0, p1, Lanes4{0, 4, 2, 6}), t1 = __builtin_shuffle(p0, p1, Lanes4{1, 5, 3, 7});
  const Doubles4 t2 = __builtin_shuffle(p2, p3, Lanes4{0, 4, 2, 6}), t3 = __builtin_shuffle(p2, p3, Lanes4{1, 5, 3, 7});
  const Doubles4 c0 = __builtin_shuffle(t0, t2, Lanes4{0, 1, 4, 5}), c1 = __builtin_shuffle(t1, t3, Lanes4{0, 1, 4, 5});
  const Doubles4 c2 = __builtin_shuffle(t0, t2, Lanes4{2, 3, 6, 7}), c3 = __builtin_shuffle(t1, t3, Lanes4{2, 3, 6, 7});
  return __builtin_convertvector(((c1 - c0) + c2) + c3, Floats4);
}

}  // namespace
#endif

DODO_MULTIVERSION
void relabelled_invariants(const double* F, const int* species, float* out27) {
  const double* s[kSpecies];
  for (int a = 0; a < kSpecies; ++a) s[a] = F + species[a] * kComponents;
  for (int a = 0; a < kSpecies; ++a) out27[a] = static_cast<float>(s[a][0]);
  float* out = out27 + kSpecies;
#if DODO_MULTIVERSION_ENABLED
  // A species' four values are one vector (F is species-major): a product of two species is one
  // vector multiply, and four products are lane-summed at once.
  Doubles4 v[kSpecies];
#pragma GCC unroll 6
  for (int a = 0; a < kSpecies; ++a) std::memcpy(&v[a], s[a], sizeof v[a]);
  static_assert(kProducts % 4 == 1, "five groups of four products and one left over");
#pragma GCC unroll 5
  for (int group = 0; group < kProducts / 4; ++group) {
    Doubles4 p[4];
#pragma GCC unroll 4
    for (int i = 0; i < 4; ++i) p[i] = v[kProductPairs.a[4 * group + i]] * v[kProductPairs.b[4 * group + i]];
    const Floats4 sums = dots4(p[0], p[1], p[2], p[3]);
    std::memcpy(out + 4 * group, &sums, sizeof sums);
  }
  const double* last = s[kSpecies - 1];
  out[kProducts - 1] =
      static_cast<float>(-last[0] * last[0] + last[1] * last[1] + last[2] * last[2] + last[3] * last[3]);
#else
  for (int a = 0; a < kSpecies; ++a) {
    const double t = -s[a][0], x = s[a][1], y = s[a][2], z = s[a][3];
    for (int b = a; b < kSpecies; ++b) *out++ = static_cast<float>(t * s[b][0] + x * s[b][1] + y * s[b][2] + z * s[b][3]);
  }
#endif
}

}  // namespace dodo
