// Complex FFT of length n (a power of two) along the row index of an [n][width] array, the
// width contiguous (split real and imaginary arrays), so that every butterfly is a loop over a
// whole row that the compiler vectorises. Used by the QKE kernel (flavour_box.hpp): one
// transform moves all directions of one matrix entry at once.
//
// The forward transform (decimation in frequency) leaves the spectrum in bit-reversed order and
// the inverse (decimation in time) reads it in that order, so no permutation pass is needed: a
// caller that only multiplies spectra pointwise keeps its multipliers in bit-reversed order
// (spectral_bin gives the frequency held by each row). Both are unnormalised
// (inverse(forward(x)) = n x). Radix-4 passes (two radix-2 stages per pass over the data) with
// one radix-2 pass when log2 n is odd.
#pragma once

#include <cstddef>
#include <vector>

namespace dodo::qke {

class RowFft {
 public:
  explicit RowFft(std::size_t n);  // throws std::invalid_argument unless n is a power of two >= 2

  std::size_t size() const { return n_; }
  // FFT bin (0..n-1, numpy.fft.fftfreq order) held by row `row` of a forward transform's output.
  std::size_t spectral_bin(std::size_t row) const { return bit_reversed_[row]; }

  // In place: X_k = sum_z x_z exp(-2 pi i k z / n), output rows bit-reversed.
  void forward(double* re, double* im, std::size_t width) const;
  // In place: x_z = sum_k X_k exp(+2 pi i k z / n), input rows bit-reversed, output natural.
  void inverse(double* re, double* im, std::size_t width) const;

  static bool is_power_of_two(std::size_t n) { return n >= 2 && (n & (n - 1)) == 0; }

 private:
  std::size_t n_;
  std::vector<std::size_t> bit_reversed_;
  // Twiddles exp(-2 pi i j / (2 half)) of the stage with half-length `half` at index half + j.
  std::vector<double> twiddle_re_, twiddle_im_;
};

}  // namespace dodo::qke
