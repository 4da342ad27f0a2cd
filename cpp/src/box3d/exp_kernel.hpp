// exp() of non-positive arguments, branch-free and inline so that the compiler vectorises the
// loops calling it without -ffast-math (std::exp is a scalar library call). Used for the maximum-entropy
// distribution, where the argument Z (mu - 1) lies in [-2Z, 0].
//
// exp(x) = 2^k exp(r), k = round(x / ln 2), r = x - k ln 2 split in two parts (Cody & Waite),
// |r| <= ln2/2; exp(r) by its Taylor series to degree 13 (truncation < 4e-18 relative).
// Relative error about 2 ulp for -700 <= x <= 0. Arguments below -700 are clamped there
// (result 1e-304 instead of smaller: negligible against the distribution's scale, and it keeps
// the loop free of branches and of denormals).
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>

namespace dodo {

inline double clamped_exp(double argument) {
  constexpr double kLog2e = 1.4426950408889634;
  constexpr double kLn2High = 0.693147180369123816490;      // ln 2 with trailing zero bits
  constexpr double kLn2Low = 1.90821492927058770002e-10;    // ln 2 - kLn2High
  constexpr double kRoundingShift = 6755399441055744.0;      // 1.5 * 2^52: x + shift rounds x
  constexpr double kLowest = -700.0;
  const double x = argument > kLowest ? argument : kLowest;
  const double shifted = x * kLog2e + kRoundingShift;
  const double k = shifted - kRoundingShift;
  const double r = (x - k * kLn2High) - k * kLn2Low;
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
  // 2^k from its bits: the low bits of `shifted` hold k (|k| < 2^31).
  std::int64_t k_bits, shift_bits;
  std::memcpy(&k_bits, &shifted, sizeof k_bits);
  std::memcpy(&shift_bits, &kRoundingShift, sizeof shift_bits);
  const std::int64_t exponent = (k_bits - shift_bits + 1023) << 52;
  double scale;
  std::memcpy(&scale, &exponent, sizeof scale);
  return p * scale;
}

}  // namespace dodo
