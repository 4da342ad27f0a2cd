#include "flavour_box.hpp"

#include <pthread.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <new>
#include <stdexcept>
#include <string>
#include <system_error>
#include <thread>
#include <utility>

#include "../multiversion.hpp"
#include "../number_text.hpp"
#include "../thread_start.hpp"

namespace dodo::qke {

namespace {

constexpr double kPi = 3.14159265358979323846;
constexpr std::size_t kEntries = 6;    // packed Hermitian entries: ee, mm, tt, em, et, mt
constexpr std::size_t kBlocks = 9;     // 3 diagonal (nu + i nubar) + 3 off-diagonal x (nu, nubar)
constexpr std::size_t kMoments = 4;    // (1, vx, vy, vz)
constexpr std::size_t kPad = 8;        // direction rows padded to a multiple of 8 doubles
constexpr std::size_t kMaxStepThreads = 64;

// Block of off-diagonal entry e (0: em, 1: et, 2: mt) of species s (0: nu, 1: nubar).
constexpr std::size_t offdiag_block(std::size_t e, std::size_t s) { return 3 + 2 * e + s; }

// One Hermitian 3x3 matrix: real diagonal, upper off-diagonal entries.
struct Hermitian {
  double d0, d1, d2, r01, i01, r02, i02, r12, i12;
};

// -i [H, R] for Hermitian H, R, written out: diagonal 2 Im (H R)_ii (the k = i term is real),
// off-diagonal -i sum_k (H_ik R_kj - R_ik H_kj), lower entries as conjugates of upper ones.
inline Hermitian commutator_rate(const Hermitian& h, const Hermitian& r) {
  Hermitian out;
  out.d0 = 2.0 * (h.i01 * r.r01 - h.r01 * r.i01 + h.i02 * r.r02 - h.r02 * r.i02);
  out.d1 = 2.0 * (h.r01 * r.i01 - h.i01 * r.r01 + h.i12 * r.r12 - h.r12 * r.i12);
  out.d2 = 2.0 * (h.r02 * r.i02 - h.i02 * r.r02 + h.r12 * r.i12 - h.i12 * r.r12);
  // s01 = (H00 - H11) R01 + (R11 - R00) H01 + H02 conj(R12) - R02 conj(H12)
  const double s01r = (h.d0 - h.d1) * r.r01 + (r.d1 - r.d0) * h.r01 + (h.r02 * r.r12 + h.i02 * r.i12) -
                      (r.r02 * h.r12 + r.i02 * h.i12);
  const double s01i = (h.d0 - h.d1) * r.i01 + (r.d1 - r.d0) * h.i01 + (h.i02 * r.r12 - h.r02 * r.i12) -
                      (r.i02 * h.r12 - r.r02 * h.i12);
  // s02 = (H00 - H22) R02 + (R22 - R00) H02 + H01 R12 - R01 H12
  const double s02r = (h.d0 - h.d2) * r.r02 + (r.d2 - r.d0) * h.r02 + (h.r01 * r.r12 - h.i01 * r.i12) -
                      (r.r01 * h.r12 - r.i01 * h.i12);
  const double s02i = (h.d0 - h.d2) * r.i02 + (r.d2 - r.d0) * h.i02 + (h.r01 * r.i12 + h.i01 * r.r12) -
                      (r.r01 * h.i12 + r.i01 * h.r12);
  // s12 = (H11 - H22) R12 + (R22 - R11) H12 + conj(H01) R02 - conj(R01) H02
  const double s12r = (h.d1 - h.d2) * r.r12 + (r.d2 - r.d1) * h.r12 + (h.r01 * r.r02 + h.i01 * r.i02) -
                      (r.r01 * h.r02 + r.i01 * h.i02);
  const double s12i = (h.d1 - h.d2) * r.i12 + (r.d2 - r.d1) * h.i12 + (h.r01 * r.i02 - h.i01 * r.r02) -
                      (r.r01 * h.i02 - r.i01 * h.r02);
  // -i s = (Im s, -Re s)
  out.r01 = s01i;
  out.i01 = -s01r;
  out.r02 = s02i;
  out.i02 = -s02r;
  out.r12 = s12i;
  out.i12 = -s12r;
  return out;
}

// Pointers to the nine blocks of one cell row of a buffer.
struct RowSet {
  const double* re[kBlocks];
  const double* im[kBlocks];
};
struct MutableRowSet {
  double* re[kBlocks];
  double* im[kBlocks];
};

// Flavour rate of one cell row: H_v = sum_m w_m(v) L_m (w = mu (1, -v)), Hbar = -conj(H),
// rate = -i [H, rho] for neutrinos and -i [Hbar, rhobar] for antineutrinos.
DODO_MULTIVERSION
void commutator_row(const RowSet& rho, MutableRowSet rate, const double* lepton_re, const double* lepton_im,
                    const double* __restrict w0, const double* __restrict w1, const double* __restrict w2,
                    const double* __restrict w3, std::size_t width) {
  auto H = [&](std::size_t entry, const double* L, std::size_t d) {
    const double* l = L + kMoments * entry;
    return w0[d] * l[0] + w1[d] * l[1] + w2[d] * l[2] + w3[d] * l[3];
  };
#pragma omp simd
  for (std::size_t d = 0; d < width; ++d) {
    Hermitian h;
    h.d0 = H(0, lepton_re, d);
    h.d1 = H(1, lepton_re, d);
    h.d2 = H(2, lepton_re, d);
    h.r01 = H(3, lepton_re, d);
    h.i01 = H(3, lepton_im, d);
    h.r02 = H(4, lepton_re, d);
    h.i02 = H(4, lepton_im, d);
    h.r12 = H(5, lepton_re, d);
    h.i12 = H(5, lepton_im, d);
    const Hermitian nu{rho.re[0][d], rho.re[1][d], rho.re[2][d],
                       rho.re[offdiag_block(0, 0)][d], rho.im[offdiag_block(0, 0)][d],
                       rho.re[offdiag_block(1, 0)][d], rho.im[offdiag_block(1, 0)][d],
                       rho.re[offdiag_block(2, 0)][d], rho.im[offdiag_block(2, 0)][d]};
    const Hermitian nubar{rho.im[0][d], rho.im[1][d], rho.im[2][d],
                          rho.re[offdiag_block(0, 1)][d], rho.im[offdiag_block(0, 1)][d],
                          rho.re[offdiag_block(1, 1)][d], rho.im[offdiag_block(1, 1)][d],
                          rho.re[offdiag_block(2, 1)][d], rho.im[offdiag_block(2, 1)][d]};
    const Hermitian hbar{-h.d0, -h.d1, -h.d2, -h.r01, h.i01, -h.r02, h.i02, -h.r12, h.i12};
    const Hermitian a = commutator_rate(h, nu);
    const Hermitian b = commutator_rate(hbar, nubar);
    rate.re[0][d] = a.d0;
    rate.im[0][d] = b.d0;
    rate.re[1][d] = a.d1;
    rate.im[1][d] = b.d1;
    rate.re[2][d] = a.d2;
    rate.im[2][d] = b.d2;
    rate.re[offdiag_block(0, 0)][d] = a.r01;
    rate.im[offdiag_block(0, 0)][d] = a.i01;
    rate.re[offdiag_block(1, 0)][d] = a.r02;
    rate.im[offdiag_block(1, 0)][d] = a.i02;
    rate.re[offdiag_block(2, 0)][d] = a.r12;
    rate.im[offdiag_block(2, 0)][d] = a.i12;
    rate.re[offdiag_block(0, 1)][d] = b.r01;
    rate.im[offdiag_block(0, 1)][d] = b.i01;
    rate.re[offdiag_block(1, 1)][d] = b.r02;
    rate.im[offdiag_block(1, 1)][d] = b.i02;
    rate.re[offdiag_block(2, 1)][d] = b.r12;
    rate.im[offdiag_block(2, 1)][d] = b.i12;
  }
}

// Moments (1, v) of one block: out[cell][m][re, im] = sum_d w_m(d) x[cell][d].
DODO_MULTIVERSION
void moments_of_block(const double* __restrict re, const double* __restrict im, const double* __restrict weights,
                      std::size_t ncell, std::size_t width, double* __restrict out) {
  for (std::size_t z = 0; z < ncell; ++z) {
    const double* xr = re + z * width;
    const double* xi = im + z * width;
    for (std::size_t m = 0; m < kMoments; ++m) {
      const double* w = weights + m * width;
      double sr = 0, si = 0;
#pragma omp simd reduction(+ : sr, si)
      for (std::size_t d = 0; d < width; ++d) {
        sr += w[d] * xr[d];
        si += w[d] * xi[d];
      }
      out[(z * kMoments + m) * 2] = sr;
      out[(z * kMoments + m) * 2 + 1] = si;
    }
  }
}

// Stage 1 in Fourier space: ah = p S / n, a1 = p K / n; S <- ah, X <- ah + h/2 a1, acc <- ah + h/6 a1.
DODO_MULTIVERSION
void lawson_first(double* __restrict sr, double* __restrict si, const double* __restrict kr, const double* __restrict ki,
                  double* __restrict xr, double* __restrict xi, double* __restrict ar, double* __restrict ai,
                  const double* __restrict pr, const double* __restrict pi, double inv_n, double h, std::size_t count) {
  const double half = 0.5 * h, sixth = h / 6.0;
#pragma omp simd
  for (std::size_t i = 0; i < count; ++i) {
    const double qr = pr[i] * inv_n, qi = pi[i] * inv_n;
    const double ahr = qr * sr[i] - qi * si[i], ahi = qr * si[i] + qi * sr[i];
    const double a1r = qr * kr[i] - qi * ki[i], a1i = qr * ki[i] + qi * kr[i];
    sr[i] = ahr;
    si[i] = ahi;
    xr[i] = ahr + half * a1r;
    xi[i] = ahi + half * a1i;
    ar[i] = ahr + sixth * a1r;
    ai[i] = ahi + sixth * a1i;
  }
}

// Stage 2: acc += c_acc K, X <- S + c_x K.
DODO_MULTIVERSION
void lawson_middle(const double* __restrict sr, const double* __restrict si, const double* __restrict kr,
                   const double* __restrict ki, double* __restrict xr, double* __restrict xi, double* __restrict ar,
                   double* __restrict ai, double c_acc, double c_x, std::size_t count) {
#pragma omp simd
  for (std::size_t i = 0; i < count; ++i) {
    ar[i] += c_acc * kr[i];
    ai[i] += c_acc * ki[i];
    xr[i] = sr[i] + c_x * kr[i];
    xi[i] = si[i] + c_x * ki[i];
  }
}

// Stage 3: acc += c_acc K, X <- p (S + c_x K).
DODO_MULTIVERSION
void lawson_last(const double* __restrict sr, const double* __restrict si, const double* __restrict kr,
                 const double* __restrict ki, double* __restrict xr, double* __restrict xi, double* __restrict ar,
                 double* __restrict ai, const double* __restrict pr, const double* __restrict pi, double c_acc,
                 double c_x, std::size_t count) {
#pragma omp simd
  for (std::size_t i = 0; i < count; ++i) {
    ar[i] += c_acc * kr[i];
    ai[i] += c_acc * ki[i];
    const double yr = sr[i] + c_x * kr[i], yi = si[i] + c_x * ki[i];
    xr[i] = pr[i] * yr - pi[i] * yi;
    xi[i] = pr[i] * yi + pi[i] * yr;
  }
}

// acc <- p acc (filtered phase), before the final inverse transform.
DODO_MULTIVERSION
void multiply_phase(double* __restrict ar, double* __restrict ai, const double* __restrict pr,
                    const double* __restrict pi, std::size_t count) {
#pragma omp simd
  for (std::size_t i = 0; i < count; ++i) {
    const double yr = ar[i], yi = ai[i];
    ar[i] = pr[i] * yr - pi[i] * yi;
    ai[i] = pr[i] * yi + pi[i] * yr;
  }
}

// x += c y.
DODO_MULTIVERSION
void add_scaled(double* __restrict xr, double* __restrict xi, const double* __restrict yr, const double* __restrict yi,
                double c, std::size_t count) {
#pragma omp simd
  for (std::size_t i = 0; i < count; ++i) {
    xr[i] += c * yr[i];
    xi[i] += c * yi[i];
  }
}

}  // namespace

// Fork safety. Each kernel runs one call at a time under its mutex_. A fork() while another
// thread was inside a call copied that mutex held into the child, where its holder does not
// exist: the child's first call on the kernel waited for ever (outside probe, round twenty-one;
// only the Python guard in dodo/qke/compiled.py refused such a call, not dodo._core.QkeKernel
// itself nor a C++ host). Now every live kernel sits in one list; before a fork the prepare
// handler tries (never waits for) each kernel's lock. An idle kernel's lock is held across the
// fork, so the child's copy is whole, and released on both sides. A busy kernel's copy in the
// child is mid-call: the child handler gives it a fresh, free lock and marks it, and every call
// on it throws instead of waiting (a parent's kernel whose call ends between the try and the
// fork is refused too: a conservative refusal, its state was whole). The list's own lock is
// held across the fork, so no kernel is added or removed half way. No code holds a kernel's
// lock while it takes the list's, so this order cannot deadlock. The list and its lock are
// trivially destructible: nothing here is destroyed by exit() before a kernel that outlives it.
struct KernelForkHandlers {
  static std::mutex list_mutex;
  static FlavourBoxKernel* first;

  static void add(FlavourBoxKernel* kernel) {
    std::lock_guard<std::mutex> guard(list_mutex);
    kernel->fork_next_ = first;
    if (first) first->fork_prev_ = kernel;
    first = kernel;
  }
  static void remove(FlavourBoxKernel* kernel) {
    std::lock_guard<std::mutex> guard(list_mutex);
    if (kernel->fork_prev_) kernel->fork_prev_->fork_next_ = kernel->fork_next_;
    else if (first == kernel) first = kernel->fork_next_;
    if (kernel->fork_next_) kernel->fork_next_->fork_prev_ = kernel->fork_prev_;
    kernel->fork_prev_ = kernel->fork_next_ = nullptr;
  }
  static void prepare() {
    list_mutex.lock();
    for (FlavourBoxKernel* k = first; k; k = k->fork_next_) k->held_for_fork_ = k->mutex_.try_lock();
  }
  static void parent() {
    for (FlavourBoxKernel* k = first; k; k = k->fork_next_) {
      if (k->held_for_fork_) k->mutex_.unlock();
      k->held_for_fork_ = false;
    }
    list_mutex.unlock();
  }
  static void child() {
    for (FlavourBoxKernel* k = first; k; k = k->fork_next_) {
      if (k->held_for_fork_) {
        k->mutex_.unlock();
      } else {
        // Its holder is a thread of the parent: the copy is never unlocked. A new mutex in its
        // storage (std::mutex's constructor only writes the free state; nothing waits on it here).
        k->forked_mid_call_.store(true, std::memory_order_relaxed);
        new (&k->mutex_) std::mutex;
      }
      k->held_for_fork_ = false;
    }
    list_mutex.unlock();
  }
};
std::mutex KernelForkHandlers::list_mutex;
FlavourBoxKernel* KernelForkHandlers::first = nullptr;

namespace {
[[maybe_unused]] const int kKernelForkHandlers =
    pthread_atfork(KernelForkHandlers::prepare, KernelForkHandlers::parent, KernelForkHandlers::child);
}  // namespace

std::unique_lock<std::mutex> FlavourBoxKernel::lock() const {
  if (forked_mid_call())
    throw std::runtime_error(
        "this QKE box was being stepped by another thread when the process forked (a call on its compiled "
        "kernel was in progress, in a thread the child does not have): its state in this process is "
        "incomplete, so every call on it is refused; make the box again in the child");
  return std::unique_lock<std::mutex>(mutex_);
}

FlavourBoxKernel::~FlavourBoxKernel() { KernelForkHandlers::remove(this); }

FlavourBoxKernel::FlavourBoxKernel(FlavourBoxSettings settings, std::vector<double> cell_size_cm,
                                   std::vector<double> moment_filter)
    : settings_(std::move(settings)),
      nsim_(cell_size_cm.size()),
      ncell_(settings_.ncell),
      ndir_(settings_.directions.size() / 3),
      width_((ndir_ + kPad - 1) / kPad * kPad),
      fft_(2) {  // its real tables come after the storage, below
  if (!RowFft::is_power_of_two(ncell_))
    throw std::invalid_argument("the compiled QKE kernel needs ncell a power of two >= 2; got " +
                                std::to_string(ncell_));
  if (nsim_ == 0) throw std::invalid_argument("need at least one simulation");
  if (ndir_ == 0 || settings_.directions.size() != 3 * ndir_)
    throw std::invalid_argument("directions must be a non-empty [ndir][3] array");
  if (settings_.state_filter.size() != ncell_) throw std::invalid_argument("state_filter must have ncell entries");
  if (!moment_filter.empty() && moment_filter.size() != nsim_ * ncell_)
    throw std::invalid_argument("moment_filter must be empty or have nsim x ncell entries");
  // Checked before their symmetry, which a NaN would fail under a misleading name.
  const auto all_finite = [](const std::vector<double>& values) {
    return std::all_of(values.begin(), values.end(), [](double v) { return std::isfinite(v); });
  };
  if (!all_finite(settings_.state_filter)) throw std::invalid_argument("state_filter must be finite");
  if (!all_finite(moment_filter)) throw std::invalid_argument("moment_filter must be finite");
  // Real multipliers even in k keep real signals real: the diagonal blocks rely on it (nu and
  // nubar share one complex transform).
  auto even_in_k = [&](const double* filter) {
    for (std::size_t bin = 1; bin < ncell_; ++bin)
      if (!(std::fabs(filter[bin] - filter[ncell_ - bin]) <= 1e-12 * std::fabs(filter[bin]))) return false;
    return true;
  };
  if (!even_in_k(settings_.state_filter.data())) throw std::invalid_argument("state_filter must be even in k");
  for (std::size_t s = 0; s < moment_filter.size() / ncell_; ++s)
    if (!even_in_k(moment_filter.data() + s * ncell_)) throw std::invalid_argument("moment_filter must be even in k");
  for (double size : cell_size_cm)
    if (!(size > 0) || !std::isfinite(size)) throw std::invalid_argument("cell sizes must be positive and finite");
  // Non-finite settings were taken and every step gave NaN states without a word (an infinite
  // self_interaction or speed_of_light, a NaN direction, a NaN or inf filter at k = 0, which
  // even_in_k does not compare; outside probe, C round twenty-four). Finite values only refuse.
  if (!(settings_.self_interaction > 0) || !(settings_.speed_of_light > 0) ||
      !std::isfinite(settings_.self_interaction) || !std::isfinite(settings_.speed_of_light))
    throw std::invalid_argument("self_interaction and speed_of_light must be positive and finite");
  if (!all_finite(settings_.directions)) throw std::invalid_argument("directions must be finite");
  // The directions are unit vectors (the header's contract; the advection phase is c k v dt):
  // a vector of length 2 advected at twice the speed of light without a word (outside probe,
  // C round twenty-five). Rounding of a normalised vector is a few ulps; 1e-10 leaves room.
  for (std::size_t d = 0; d < ndir_; ++d) {
    const double* v = &settings_.directions[3 * d];
    const double length = std::sqrt(v[0] * v[0] + v[1] * v[1] + v[2] * v[2]);
    if (!(std::fabs(length - 1.0) <= 1e-10)) {
      // In the "C" locale (snprintf's "%.17g" followed the host's LC_NUMERIC: "1,0000000002"; C round 27).
      throw std::invalid_argument("directions must be unit vectors: direction " + std::to_string(d) + " has length " +
                                  number_text(length) + " (|length - 1| must be <= 1e-10)");
    }
  }
  // The fastest advection, c pi / cell size (the Nyquist bin): past the largest double (a cell of
  // 5e-324 cm) the phases of every step were NaN.
  for (double size : cell_size_cm)
    if (!std::isfinite(settings_.speed_of_light * (kPi / size)))
      throw std::invalid_argument("cell sizes too small: the advection rate c pi / cell size is not finite");

  // The storage's size, checked before anything is allocated: the products below wrapped past
  // 2^64 for large enough ncell x ndir x nsim, and a wrapped size could be small enough to
  // allocate (ncell 65536, 2,732,696 directions, 1,355,297 simulations: 251 MB accepted for a
  // kernel whose boxes lie far beyond it; the first step writes out of bounds); an unwrapped one
  // beyond a vector's maximum was refused as "cannot create std::vector larger than max_size()"
  // (outside probe, round fourteen).
  {
    const auto times = [](std::size_t a, std::size_t b, std::size_t& out) { return !__builtin_mul_overflow(a, b, &out); };
    // Doubles per box = ncell * (76 width + 193) at most: 8 fields and 4 phase rows per direction
    // (76 width), the moments and lepton moments (192), the moment filter (1).
    std::size_t row = 0, per_box_doubles = 0, total = 0;
    const bool fits = width_ >= ndir_ && times(76, width_, row) && !__builtin_add_overflow(row, 193, &row) &&
                      times(ncell_, row, per_box_doubles) && times(per_box_doubles, nsim_, total) &&
                      times(total, sizeof(double), total) &&
                      total <= static_cast<std::size_t>(std::numeric_limits<std::ptrdiff_t>::max());
    if (!fits)
      throw std::invalid_argument("the compiled QKE kernel cannot hold " + std::to_string(nsim_) + " simulation(s) of " +
                                  std::to_string(ncell_) + " cells x " + std::to_string(ndir_) +
                                  " directions: its storage (about 76 doubles per cell, direction and simulation) "
                                  "would exceed the address space");
  }
  moment_weights_.assign(kMoments * width_, 0.0);
  hamiltonian_weights_.assign(kMoments * width_, 0.0);
  for (std::size_t d = 0; d < ndir_; ++d) {
    moment_weights_[d] = 1.0;
    hamiltonian_weights_[d] = settings_.self_interaction;
    for (std::size_t axis = 0; axis < 3; ++axis) {
      const double v = settings_.directions[3 * d + axis];
      moment_weights_[(axis + 1) * width_ + d] = v;
      hamiltonian_weights_[(axis + 1) * width_ + d] = -settings_.self_interaction * v;
    }
  }

  const std::size_t field = kBlocks * ncell_ * width_;
  const std::size_t moments = kBlocks * ncell_ * kMoments * 2;
  const std::size_t phases = ncell_ * width_;
  const bool filtered = !moment_filter.empty();
  const std::size_t lepton = ncell_ * kEntries * kMoments;
  const std::size_t per_box = 8 * field + 2 * moments + 4 * phases + 2 * lepton + (filtered ? ncell_ : 0);
  // = ncell * (76 width + 192) (+ ncell): within the bound checked above.
  storage_.assign(per_box * nsim_, 0.0);
  // The FFT tables (~24 bytes a cell) only now: built first, an ncell of 2^31 spent minutes filling
  // 48 GB of them before the storage, 30 times larger, failed to allocate (C round 23).
  fft_ = RowFft(ncell_);
  state_filter_.resize(ncell_);
  for (std::size_t row = 0; row < ncell_; ++row) state_filter_[row] = settings_.state_filter[fft_.spectral_bin(row)];
  boxes_.resize(nsim_);
  for (std::size_t s = 0; s < nsim_; ++s) {
    double* p = storage_.data() + s * per_box;
    Box& box = boxes_[s];
    box.state_re = p; p += field;
    box.state_im = p; p += field;
    box.acc_re = p; p += field;
    box.acc_im = p; p += field;
    box.arg_re = p; p += field;
    box.arg_im = p; p += field;
    box.rate_re = p; p += field;
    box.rate_im = p; p += field;
    box.moments_state = p; p += moments;
    box.moments_arg = p; p += moments;
    box.phase_re = p; p += phases;
    box.phase_im = p; p += phases;
    box.filtered_phase_re = p; p += phases;
    box.filtered_phase_im = p; p += phases;
    box.lepton_re = p; p += lepton;
    box.lepton_im = p; p += lepton;
    box.moment_filter = nullptr;
    if (filtered) {
      box.moment_filter = p;
      for (std::size_t row = 0; row < ncell_; ++row)
        box.moment_filter[row] = moment_filter[s * ncell_ + fft_.spectral_bin(row)] / static_cast<double>(ncell_);
    }
    box.cell_size_cm = cell_size_cm[s];
    box.phase_dt = std::numeric_limits<double>::quiet_NaN();
  }
  KernelForkHandlers::add(this);  // last: a constructor that throws leaves nothing in the list
}

void FlavourBoxKernel::build_phases(Box& box, double dt) const {
  const double n = static_cast<double>(ncell_);
  for (std::size_t row = 0; row < ncell_; ++row) {
    const std::size_t bin = fft_.spectral_bin(row);
    const bool nyquist = bin == ncell_ / 2;
    const double frequency = (bin < ncell_ / 2 ? static_cast<double>(bin) : static_cast<double>(bin) - n) * (1.0 / n);
    const double wavenumber = 2.0 * kPi * frequency / box.cell_size_cm;
    for (std::size_t d = 0; d < width_; ++d) {
      double re = 0, im = 0;
      if (d < ndir_) {
        const double angle = settings_.speed_of_light * wavenumber * settings_.directions[3 * d + 2] * (0.5 * dt);
        re = std::cos(angle);
        // The Nyquist bin has no +k/-k partner: the real average cos keeps rho Hermitian.
        im = nyquist ? 0.0 : -std::sin(angle);
      }
      box.phase_re[row * width_ + d] = re;
      box.phase_im[row * width_ + d] = im;
      box.filtered_phase_re[row * width_ + d] = re * state_filter_[row];
      box.filtered_phase_im[row * width_ + d] = im * state_filter_[row];
    }
  }
  box.phase_dt = dt;
}

void FlavourBoxKernel::block_moments(const double* re, const double* im, double* out) const {
  moments_of_block(re, im, moment_weights_.data(), ncell_, width_, out);
}

void FlavourBoxKernel::state_moments(Box& box) const {
  for (std::size_t b = 0; b < kBlocks; ++b)
    block_moments(box.state_re + block_offset(b), box.state_im + block_offset(b),
                  box.moments_state + b * ncell_ * kMoments * 2);
}

void FlavourBoxKernel::flavour_rate(Box& box, const double* re, const double* im, const double* moments) const {
  const std::size_t field = kBlocks * ncell_ * width_;
  if (!settings_.coupling) {
    std::fill(box.rate_re, box.rate_re + field, 0.0);
    std::fill(box.rate_im, box.rate_im + field, 0.0);
    return;
  }
  // Lepton-number moments L = N - conj(Nbar) per entry [cell][entry][moment].
  double* lre = box.lepton_re;
  double* lim = box.lepton_im;
  const std::size_t block_stride = ncell_ * kMoments * 2;
  for (std::size_t z = 0; z < ncell_; ++z) {
    for (std::size_t m = 0; m < kMoments; ++m) {
      const std::size_t at = (z * kMoments + m) * 2;
      for (std::size_t c = 0; c < 3; ++c) {  // diagonal: real nu - real nubar
        const double* block = moments + c * block_stride;
        lre[(z * kEntries + c) * kMoments + m] = block[at] - block[at + 1];
        lim[(z * kEntries + c) * kMoments + m] = 0.0;
      }
      for (std::size_t e = 0; e < 3; ++e) {
        const double* nu = moments + offdiag_block(e, 0) * block_stride;
        const double* nubar = moments + offdiag_block(e, 1) * block_stride;
        lre[(z * kEntries + 3 + e) * kMoments + m] = nu[at] - nubar[at];
        lim[(z * kEntries + 3 + e) * kMoments + m] = nu[at + 1] + nubar[at + 1];
      }
    }
  }
  if (box.moment_filter != nullptr) {  // Emu's particle-mesh transfer function on the moments
    const std::size_t row = kEntries * kMoments;
    fft_.forward(lre, lim, row);
    for (std::size_t z = 0; z < ncell_; ++z)
      for (std::size_t i = 0; i < row; ++i) {
        lre[z * row + i] *= box.moment_filter[z];
        lim[z * row + i] *= box.moment_filter[z];
      }
    fft_.inverse(lre, lim, row);
  }
  const double* w = hamiltonian_weights_.data();
  for (std::size_t z = 0; z < ncell_; ++z) {
    RowSet rho;
    MutableRowSet rate;
    for (std::size_t b = 0; b < kBlocks; ++b) {
      const std::size_t at = block_offset(b) + z * width_;
      rho.re[b] = re + at;
      rho.im[b] = im + at;
      rate.re[b] = box.rate_re + at;
      rate.im[b] = box.rate_im + at;
    }
    commutator_row(rho, rate, lre + z * kEntries * kMoments, lim + z * kEntries * kMoments, w, w + width_,
                   w + 2 * width_, w + 3 * width_, width_);
  }
}

void FlavourBoxKernel::step_box(Box& box, double dt) const {
  if (!(box.phase_dt == dt)) build_phases(box, dt);
  const double inv_n = 1.0 / static_cast<double>(ncell_);
  const std::size_t count = ncell_ * width_;
  const std::size_t moment_stride = ncell_ * kMoments * 2;
  auto blocks = [&](auto&& body) {
    for (std::size_t b = 0; b < kBlocks; ++b) {
      const std::size_t o = block_offset(b);
      body(o, box.moments_arg + b * moment_stride);
    }
  };
  // k1 = f(S); then S^ <- P S^ / n (the half-step advected state), X = A + h/2 P k1, acc = A + h/6 P k1.
  flavour_rate(box, box.state_re, box.state_im, box.moments_state);
  blocks([&](std::size_t o, double* moments) {
    fft_.forward(box.state_re + o, box.state_im + o, width_);
    fft_.forward(box.rate_re + o, box.rate_im + o, width_);
    lawson_first(box.state_re + o, box.state_im + o, box.rate_re + o, box.rate_im + o, box.arg_re + o, box.arg_im + o,
                 box.acc_re + o, box.acc_im + o, box.phase_re, box.phase_im, inv_n, dt, count);
    fft_.inverse(box.arg_re + o, box.arg_im + o, width_);
    block_moments(box.arg_re + o, box.arg_im + o, moments);
  });
  // k2; X = A + h/2 k2, acc += h/3 k2.
  flavour_rate(box, box.arg_re, box.arg_im, box.moments_arg);
  blocks([&](std::size_t o, double* moments) {
    fft_.forward(box.rate_re + o, box.rate_im + o, width_);
    lawson_middle(box.state_re + o, box.state_im + o, box.rate_re + o, box.rate_im + o, box.arg_re + o,
                  box.arg_im + o, box.acc_re + o, box.acc_im + o, dt / 3.0 * inv_n, 0.5 * dt * inv_n, count);
    fft_.inverse(box.arg_re + o, box.arg_im + o, width_);
    block_moments(box.arg_re + o, box.arg_im + o, moments);
  });
  // k3; X = P (A + h k3), acc += h/3 k3.
  flavour_rate(box, box.arg_re, box.arg_im, box.moments_arg);
  blocks([&](std::size_t o, double* moments) {
    fft_.forward(box.rate_re + o, box.rate_im + o, width_);
    lawson_last(box.state_re + o, box.state_im + o, box.rate_re + o, box.rate_im + o, box.arg_re + o, box.arg_im + o,
                box.acc_re + o, box.acc_im + o, box.phase_re, box.phase_im, dt / 3.0 * inv_n, dt * inv_n, count);
    fft_.inverse(box.arg_re + o, box.arg_im + o, width_);
    block_moments(box.arg_re + o, box.arg_im + o, moments);
  });
  // k4; S_new = P_filtered acc + h/6 k4 (k4 enters unfiltered, as in the NumPy solver).
  flavour_rate(box, box.arg_re, box.arg_im, box.moments_arg);
  for (std::size_t b = 0; b < kBlocks; ++b) {
    const std::size_t o = block_offset(b);
    multiply_phase(box.acc_re + o, box.acc_im + o, box.filtered_phase_re, box.filtered_phase_im, count);
    fft_.inverse(box.acc_re + o, box.acc_im + o, width_);
    add_scaled(box.acc_re + o, box.acc_im + o, box.rate_re + o, box.rate_im + o, dt / 6.0, count);
    block_moments(box.acc_re + o, box.acc_im + o, box.moments_state + b * moment_stride);
  }
  std::swap(box.state_re, box.acc_re);
  std::swap(box.state_im, box.acc_im);
}

void FlavourBoxKernel::set_state(const std::complex<double>* packed) {
  const auto held = lock();
  // packed index: (((entry * nsim + sim) * 2 + species) * ncell + cell) * ndir + dir
  auto at = [&](std::size_t entry, std::size_t sim, std::size_t species, std::size_t cell) {
    return packed + (((entry * nsim_ + sim) * 2 + species) * ncell_ + cell) * ndir_;
  };
  for (std::size_t s = 0; s < nsim_; ++s) {
    Box& box = boxes_[s];
    std::fill(box.state_re, box.state_re + kBlocks * ncell_ * width_, 0.0);
    std::fill(box.state_im, box.state_im + kBlocks * ncell_ * width_, 0.0);
    for (std::size_t z = 0; z < ncell_; ++z) {
      for (std::size_t c = 0; c < 3; ++c) {
        const std::complex<double>* nu = at(c, s, 0, z);
        const std::complex<double>* nubar = at(c, s, 1, z);
        double* re = box.state_re + block_offset(c) + z * width_;
        double* im = box.state_im + block_offset(c) + z * width_;
        for (std::size_t d = 0; d < ndir_; ++d) {
          re[d] = nu[d].real();
          im[d] = nubar[d].real();
        }
      }
      for (std::size_t e = 0; e < 3; ++e)
        for (std::size_t species = 0; species < 2; ++species) {
          const std::complex<double>* source = at(3 + e, s, species, z);
          double* re = box.state_re + block_offset(offdiag_block(e, species)) + z * width_;
          double* im = box.state_im + block_offset(offdiag_block(e, species)) + z * width_;
          for (std::size_t d = 0; d < ndir_; ++d) {
            re[d] = source[d].real();
            im[d] = source[d].imag();
          }
        }
    }
    state_moments(box);
  }
}

void FlavourBoxKernel::get_state(std::complex<double>* packed) const {
  const auto held = lock();
  auto at = [&](std::size_t entry, std::size_t sim, std::size_t species, std::size_t cell) {
    return packed + (((entry * nsim_ + sim) * 2 + species) * ncell_ + cell) * ndir_;
  };
  for (std::size_t s = 0; s < nsim_; ++s) {
    const Box& box = boxes_[s];
    for (std::size_t z = 0; z < ncell_; ++z) {
      for (std::size_t c = 0; c < 3; ++c) {
        std::complex<double>* nu = at(c, s, 0, z);
        std::complex<double>* nubar = at(c, s, 1, z);
        const double* re = box.state_re + block_offset(c) + z * width_;
        const double* im = box.state_im + block_offset(c) + z * width_;
        for (std::size_t d = 0; d < ndir_; ++d) {
          nu[d] = {re[d], 0.0};
          nubar[d] = {im[d], 0.0};
        }
      }
      for (std::size_t e = 0; e < 3; ++e)
        for (std::size_t species = 0; species < 2; ++species) {
          std::complex<double>* target = at(3 + e, s, species, z);
          const double* re = box.state_re + block_offset(offdiag_block(e, species)) + z * width_;
          const double* im = box.state_im + block_offset(offdiag_block(e, species)) + z * width_;
          for (std::size_t d = 0; d < ndir_; ++d) target[d] = {re[d], im[d]};
        }
    }
  }
}

void FlavourBoxKernel::moments(std::complex<double>* out) const {
  const auto held = lock();
  write_moments(out);
}

void FlavourBoxKernel::write_moments(std::complex<double>* out) const {
  // out index: (((entry * nsim + sim) * 2 + species) * ncell + cell) * 4 + moment
  const std::size_t block_stride = ncell_ * kMoments * 2;
  for (std::size_t s = 0; s < nsim_; ++s) {
    const double* m = boxes_[s].moments_state;
    for (std::size_t z = 0; z < ncell_; ++z)
      for (std::size_t k = 0; k < kMoments; ++k) {
        const std::size_t at = (z * kMoments + k) * 2;
        auto target = [&](std::size_t entry, std::size_t species) {
          return out + (((entry * nsim_ + s) * 2 + species) * ncell_ + z) * kMoments + k;
        };
        for (std::size_t c = 0; c < 3; ++c) {
          *target(c, 0) = {m[c * block_stride + at], 0.0};
          *target(c, 1) = {m[c * block_stride + at + 1], 0.0};
        }
        for (std::size_t e = 0; e < 3; ++e)
          for (std::size_t species = 0; species < 2; ++species) {
            const double* block = m + offdiag_block(e, species) * block_stride;
            *target(3 + e, species) = {block[at], block[at + 1]};
          }
      }
  }
}

void FlavourBoxKernel::step(const double* dt, std::complex<double>* moments_at_start, int threads) {
  for (std::size_t s = 0; s < nsim_; ++s)
    if (!(dt[s] > 0) || !std::isfinite(dt[s])) throw std::invalid_argument("time steps must be positive and finite");
  // One hold of the lock for the moments and the step: a set_state from another thread between
  // two holds made the moments returned those of a state the step did not start from (outside
  // probe, round fourteen).
  const auto held = lock();
  if (moments_at_start != nullptr) write_moments(moments_at_start);
  const std::size_t requested = threads > 1 ? static_cast<std::size_t>(threads) : 1;
  const std::size_t workers = std::min({requested, nsim_, kMaxStepThreads});
  // Worker w steps boxes w, w + workers, ...: each box touches only its own memory.
  auto run = [&](std::size_t first) {
    for (std::size_t s = first; s < nsim_; s += workers) step_box(boxes_[s], dt[s]);
  };
  std::thread pool[kMaxStepThreads];
  {
    // Workers start with the asynchronous signals blocked, as the closure's (thread_start.hpp):
    // a host that blocks SIGTERM and waits for it (sigwait, signalfd) is not killed by its default
    // action run on a solver thread (outside probe, round eighteen). A start is tried only while
    // address space is left for the thread (under ulimit -v glibc otherwise aborts).
    const AsyncSignalsBlocked solver_threads;
    for (std::size_t w = 1; w < workers; ++w) {
      if (!address_space_has_headroom()) break;
      try {
        pool[w] = std::thread(run, w);
      } catch (const std::system_error&) {
        break;
      }
    }
  }
  for (std::size_t w = 1; w < workers; ++w)
    if (!pool[w].joinable()) run(w);  // the system could not start its thread: its share here
  run(0);
  for (std::size_t w = 1; w < workers; ++w)
    if (pool[w].joinable()) pool[w].join();
}

}  // namespace dodo::qke
