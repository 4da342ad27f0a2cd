// exp() pieces, branch-free and inline so that the compiler vectorises the loops calling them
// without -ffast-math (std::exp is a scalar library call). Used for the maximum-entropy
// distribution: clamped_exp for arguments Z (mu - 1) in [-2Z, 0]; reduce_by_ln2, exp_even_odd and
// exact_power_of_two for exp(+-s) of antipodal directions from one range reduction (box3d.cpp).
//
// exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 split in two parts (Cody & Waite),
// |r| <= ln2/2; exp(r) by its Taylor series to degree 13 (truncation < 4e-18 relative), or for
// the antipodal pairs by a near-minimax polynomial of degree 9 (exp_even_odd).
// Relative error about 2 ulp for -700 <= x <= 0. Arguments below -700 are clamped there
// (result 1e-304 instead of smaller: negligible against the distribution's scale, and it keeps
// the loop free of branches and of denormals).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace dodo {

// x = k ln 2 + r with k integer-valued (returned as a double) and |r| <= ln2/2, for |x| < 2^50.
inline void reduce_by_ln2(double x, double& k, double& r) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2High = 0.693147180369123816490;      // ln 2 with trailing zero bits
  constexpr double kLn2Low = 1.90821492927058770002e-10;    // ln 2 - kLn2High
  constexpr double kRoundingShift = 6755399441055744.0;      // 1.5 * 2^52: x + shift rounds x
  k = (x * kLog2e + kRoundingShift) - kRoundingShift;
  r = (x - k * kLn2High) - k * kLn2Low;
}

// An integer-valued double |e| < 2^51 as an integer, without a conversion instruction (which
// AVX2 lacks for 64-bit integers): the low bits of e + 1.5 * 2^52 hold e.
inline std::int64_t integer_of(double e) {
  constexpr double kRoundingShift = 6755399441055744.0;
  const double shifted = e + kRoundingShift;
  std::int64_t e_bits, shift_bits;
  std::memcpy(&e_bits, &shifted, sizeof e_bits);
  std::memcpy(&shift_bits, &kRoundingShift, sizeof shift_bits);
  return e_bits - shift_bits;
}

// 2^e for an integer-valued e in [-1022, 1023], built from its bits.
inline double exact_power_of_two(double e) {
  const std::int64_t exponent = (integer_of(e) + 1023) << 52;
  double power;
  std::memcpy(&power, &exponent, sizeof power);
  return power;
}

// e^r = even + odd and e^{-r} = even - odd for |r| <= ln2/2: a degree-9 polynomial split into
// its even and odd parts (one evaluation serves both signs). Its coefficients interpolate e^r at
// the 10 Chebyshev nodes of [-ln2/2, ln2/2] (near-minimax, computed in 40-digit arithmetic and
// rounded): relative error 1.8e-14 with these doubles, which moves Box3D's results by about 1e-14
// N_tot (the issue-13 budget is 1e-12); two multiply-adds a direction pair fewer than degree 11
// (1.7e-17), in the kernel's hottest loop.
inline void exp_even_odd(double r, double& even, double& odd) {
  const double r2 = r * r;
  double e = 2.4884459751751116e-5;
  e = e * r2 + 1.3888801749656543e-3;
  e = e * r2 + 4.166666704055191e-2;
  e = e * r2 + 0.4999999999943859;
  e = e * r2 + 1.0000000000000135;
  double o = 2.7632640675430236e-6;
  o = o * r2 + 1.984119064754424e-4;
  o = o * r2 + 8.333333367311603e-3;
  o = o * r2 + 0.16666666666615648;
  o = o * r2 + 1.0000000000000013;
  even = e;
  odd = o * r;
}

// e^argument for argument in [-700, 700] (clamped there; NaN gives e^-700). Blocks of cells run
// every lane, including cells already flagged (flux factor >= 1, NaN input), whose arguments may
// be anything: the clamp keeps the exponent's bit construction defined for them.
inline double clamped_exp(double argument) {
  constexpr double kLowest = -700.0, kHighest = 700.0;
  const double low_clamped = argument > kLowest ? argument : kLowest;
  const double x = low_clamped < kHighest ? low_clamped : kHighest;
  double k, r;
  reduce_by_ln2(x, k, r);
  double p = 1.0 / 6227020800.0;  // 1/13!
  p = p * r + 1.0 / 479001600.0;
  p = p * r + 1.0 / 39916800.0;
  p = p * r + 1.0 / 3628800.0;
  p = p * r + 1.0 / 362880.0;
  p = p * r + 1.0 / 40320.0;
  p = p * r + 1.0 / 5040.0;
  p = p * r + 1.0 / 720.0;
  p = p * r + 1.0 / 120.0;
  p = p * r + 1.0 / 24.0;
  p = p * r + 1.0 / 6.0;
  p = p * r + 0.5;
  p = p * r + 1.0;
  p = p * r + 1.0;
  return p * exact_power_of_two(k);
}

}  // namespace dodo
