#include "row_fft.hpp"

#include <cmath>
#include <stdexcept>
#include <string>

#include "../multiversion.hpp"

namespace dodo::qke {

namespace {

constexpr double kPi = 3.14159265358979323846;

struct Twiddle {
  double re, im;
};

// Radix-2 butterfly without twiddle on rows a, b: (a + b, a - b).
inline void plain_butterfly(double* __restrict ar, double* __restrict ai, double* __restrict br,
                            double* __restrict bi, std::size_t width) {
  for (std::size_t d = 0; d < width; ++d) {
    const double xr = ar[d], xi = ai[d], yr = br[d], yi = bi[d];
    ar[d] = xr + yr;
    ai[d] = xi + yi;
    br[d] = xr - yr;
    bi[d] = xi - yi;
  }
}

// Two decimation-in-frequency stages on rows x0..x3 = j, j + Q, j + 2Q, j + 3Q of a block of
// 4Q rows: stage 1 pairs (x0, x2), (x1, x3) with twiddles w, w_q; stage 2 pairs (x0, x1), (x2, x3)
// with twiddle u.
inline void dif_radix4(double* __restrict r0, double* __restrict i0, double* __restrict r1, double* __restrict i1,
                       double* __restrict r2, double* __restrict i2, double* __restrict r3, double* __restrict i3,
                       Twiddle w, Twiddle wq, Twiddle u, std::size_t width) {
  for (std::size_t d = 0; d < width; ++d) {
    const double y0r = r0[d] + r2[d], y0i = i0[d] + i2[d];
    const double dr = r0[d] - r2[d], di = i0[d] - i2[d];
    const double y2r = dr * w.re - di * w.im, y2i = dr * w.im + di * w.re;
    const double y1r = r1[d] + r3[d], y1i = i1[d] + i3[d];
    const double er = r1[d] - r3[d], ei = i1[d] - i3[d];
    const double y3r = er * wq.re - ei * wq.im, y3i = er * wq.im + ei * wq.re;
    r0[d] = y0r + y1r;
    i0[d] = y0i + y1i;
    const double fr = y0r - y1r, fi = y0i - y1i;
    r1[d] = fr * u.re - fi * u.im;
    i1[d] = fr * u.im + fi * u.re;
    r2[d] = y2r + y3r;
    i2[d] = y2i + y3i;
    const double gr = y2r - y3r, gi = y2i - y3i;
    r3[d] = gr * u.re - gi * u.im;
    i3[d] = gr * u.im + gi * u.re;
  }
}

// Two decimation-in-time stages on rows x0..x3 = j, j + h, j + 2h, j + 3h of a block of 4h rows:
// stage 1 pairs (x0, x1), (x2, x3) with twiddle t; stage 2 pairs (x0, x2) with u, (x1, x3) with u_h.
inline void dit_radix4(double* __restrict r0, double* __restrict i0, double* __restrict r1, double* __restrict i1,
                       double* __restrict r2, double* __restrict i2, double* __restrict r3, double* __restrict i3,
                       Twiddle t, Twiddle u, Twiddle uh, std::size_t width) {
  for (std::size_t d = 0; d < width; ++d) {
    const double ar = r1[d] * t.re - i1[d] * t.im, ai = r1[d] * t.im + i1[d] * t.re;
    const double y0r = r0[d] + ar, y0i = i0[d] + ai, y1r = r0[d] - ar, y1i = i0[d] - ai;
    const double br = r3[d] * t.re - i3[d] * t.im, bi = r3[d] * t.im + i3[d] * t.re;
    const double y2r = r2[d] + br, y2i = i2[d] + bi, y3r = r2[d] - br, y3i = i2[d] - bi;
    const double cr = y2r * u.re - y2i * u.im, ci = y2r * u.im + y2i * u.re;
    r0[d] = y0r + cr;
    i0[d] = y0i + ci;
    r2[d] = y0r - cr;
    i2[d] = y0i - ci;
    const double er = y3r * uh.re - y3i * uh.im, ei = y3r * uh.im + y3i * uh.re;
    r1[d] = y1r + er;
    i1[d] = y1i + ei;
    r3[d] = y1r - er;
    i3[d] = y1i - ei;
  }
}

// dif_radix4 with the twiddles of j = 0 (w = 1, w_q = -i, u = 1): additions only.
inline void dif_radix4_first(double* __restrict r0, double* __restrict i0, double* __restrict r1,
                             double* __restrict i1, double* __restrict r2, double* __restrict i2,
                             double* __restrict r3, double* __restrict i3, std::size_t width) {
  for (std::size_t d = 0; d < width; ++d) {
    const double y0r = r0[d] + r2[d], y0i = i0[d] + i2[d];
    const double y2r = r0[d] - r2[d], y2i = i0[d] - i2[d];
    const double y1r = r1[d] + r3[d], y1i = i1[d] + i3[d];
    const double y3r = i1[d] - i3[d], y3i = r3[d] - r1[d];  // (x1 - x3) (-i)
    r0[d] = y0r + y1r;
    i0[d] = y0i + y1i;
    r1[d] = y0r - y1r;
    i1[d] = y0i - y1i;
    r2[d] = y2r + y3r;
    i2[d] = y2i + y3i;
    r3[d] = y2r - y3r;
    i3[d] = y2i - y3i;
  }
}

// dit_radix4 with the twiddles of j = 0 (t = 1, u = 1, u_h = +i): additions only.
inline void dit_radix4_first(double* __restrict r0, double* __restrict i0, double* __restrict r1,
                             double* __restrict i1, double* __restrict r2, double* __restrict i2,
                             double* __restrict r3, double* __restrict i3, std::size_t width) {
  for (std::size_t d = 0; d < width; ++d) {
    const double y0r = r0[d] + r1[d], y0i = i0[d] + i1[d], y1r = r0[d] - r1[d], y1i = i0[d] - i1[d];
    const double y2r = r2[d] + r3[d], y2i = i2[d] + i3[d], y3r = r2[d] - r3[d], y3i = i2[d] - i3[d];
    r0[d] = y0r + y2r;
    i0[d] = y0i + y2i;
    r2[d] = y0r - y2r;
    i2[d] = y0i - y2i;
    // i y3 = (-y3i, y3r)
    r1[d] = y1r - y3i;
    i1[d] = y1i + y3r;
    r3[d] = y1r + y3i;
    i3[d] = y1i - y3r;
  }
}

DODO_MULTIVERSION
void forward_rows(double* re, double* im, std::size_t n, std::size_t width, const double* tw_re, const double* tw_im) {
  std::size_t half = n / 2;
  for (; half >= 2; half /= 4) {
    const std::size_t quarter = half / 2;
    for (std::size_t start = 0; start < n; start += 2 * half) {
      for (std::size_t j = 0; j < quarter; ++j) {
        const std::size_t x0 = (start + j) * width, x1 = x0 + quarter * width, x2 = x1 + quarter * width,
                          x3 = x2 + quarter * width;
        if (j == 0) {  // exact unit twiddles (the whole last pass): no multiplications
          dif_radix4_first(re + x0, im + x0, re + x1, im + x1, re + x2, im + x2, re + x3, im + x3, width);
          continue;
        }
        const Twiddle w{tw_re[half + j], tw_im[half + j]};
        const Twiddle wq{tw_re[half + j + quarter], tw_im[half + j + quarter]};
        const Twiddle u{tw_re[quarter + j], tw_im[quarter + j]};
        dif_radix4(re + x0, im + x0, re + x1, im + x1, re + x2, im + x2, re + x3, im + x3, w, wq, u, width);
      }
    }
  }
  if (half == 1) {
    for (std::size_t start = 0; start < n; start += 2)
      plain_butterfly(re + start * width, im + start * width, re + (start + 1) * width, im + (start + 1) * width, width);
  }
}

DODO_MULTIVERSION
void inverse_rows(double* re, double* im, std::size_t n, std::size_t width, const double* tw_re, const double* tw_im,
                  bool odd_stages) {
  std::size_t half = 1;
  if (odd_stages) {
    for (std::size_t start = 0; start < n; start += 2)
      plain_butterfly(re + start * width, im + start * width, re + (start + 1) * width, im + (start + 1) * width, width);
    half = 2;
  }
  for (; half < n; half *= 4) {
    for (std::size_t start = 0; start < n; start += 4 * half) {
      for (std::size_t j = 0; j < half; ++j) {
        const std::size_t x0 = (start + j) * width, x1 = x0 + half * width, x2 = x1 + half * width,
                          x3 = x2 + half * width;
        if (j == 0) {  // exact unit twiddles (the whole first pass): no multiplications
          dit_radix4_first(re + x0, im + x0, re + x1, im + x1, re + x2, im + x2, re + x3, im + x3, width);
          continue;
        }
        // Conjugate twiddles: the inverse transform.
        const Twiddle t{tw_re[half + j], -tw_im[half + j]};
        const Twiddle u{tw_re[2 * half + j], -tw_im[2 * half + j]};
        const Twiddle uh{tw_re[3 * half + j], -tw_im[3 * half + j]};
        dit_radix4(re + x0, im + x0, re + x1, im + x1, re + x2, im + x2, re + x3, im + x3, t, u, uh, width);
      }
    }
  }
}

}  // namespace

RowFft::RowFft(std::size_t n) : n_(n), bit_reversed_(n), twiddle_re_(n, 0.0), twiddle_im_(n, 0.0) {
  if (!is_power_of_two(n))
    throw std::invalid_argument("FFT length must be a power of two >= 2; got " + std::to_string(n));
  std::size_t bits = 0;
  while ((std::size_t{1} << bits) < n) ++bits;
  for (std::size_t row = 0; row < n; ++row) {
    std::size_t reversed = 0;
    for (std::size_t b = 0; b < bits; ++b)
      if (row & (std::size_t{1} << b)) reversed |= std::size_t{1} << (bits - 1 - b);
    bit_reversed_[row] = reversed;
  }
  for (std::size_t half = 1; half < n; half *= 2) {
    for (std::size_t j = 0; j < half; ++j) {
      const double angle = -kPi * static_cast<double>(j) / static_cast<double>(half);
      twiddle_re_[half + j] = std::cos(angle);
      twiddle_im_[half + j] = std::sin(angle);
    }
  }
}

void RowFft::forward(double* re, double* im, std::size_t width) const {
  forward_rows(re, im, n_, width, twiddle_re_.data(), twiddle_im_.data());
}

void RowFft::inverse(double* re, double* im, std::size_t width) const {
  std::size_t stages = 0;
  while ((std::size_t{1} << stages) < n_) ++stages;
  inverse_rows(re, im, n_, width, twiddle_re_.data(), twiddle_im_.data(), stages % 2 == 1);
}

}  // namespace dodo::qke
