// Compiled time stepping of Dodo's fast-flavour QKE solver (docs/qke.md, python/dodo/qke/solver.py).
//
// A batch of independent periodic 1D boxes (axis z), each with its own cell size and step. Per
// box the equations are those of the NumPy FastFlavourBox, with the same numerics: exact Fourier
// advection with the real cos phase at the Nyquist bin, integrating-factor ("Lawson") RK4 for
// the flavour term, the optional particle-mesh moment filter and the state filter applied with
// the last half-step advection. The NumPy class stays as the test oracle (parity to ~1e-12).
//
// Storage per box, split real/imaginary, [block][cell][direction] with the direction index
// contiguous (rows padded to a multiple of 8), so that FFT butterflies, phases and the commutator
// are loops over whole direction rows. Nine complex blocks per box: the three diagonal entries,
// with the neutrino's (real) value in the real part and the antineutrino's in the imaginary part
// (advection and filters are Hermitian-symmetric multipliers, so a pair of real signals shares
// one complex transform), and the three off-diagonal entries for neutrinos and antineutrinos.
// Lawson RK4 runs in Fourier space: 4 forward and 4 inverse transforms of the state per step.
// All the boxes' memory is allocated at construction; step() allocates none of it (with threads > 1
// it starts and joins its worker threads within the call, whose start records and stacks the
// system allocates: fork-safe, not allocation-free).
#pragma once

#include <atomic>
#include <complex>
#include <cstddef>
#include <mutex>
#include <vector>

#include "row_fft.hpp"

namespace dodo::qke {

struct FlavourBoxSettings {
  std::size_t ncell = 64;            // a power of two
  std::vector<double> directions;    // [ndir][3] unit vectors
  double self_interaction = 0;       // mu = sqrt(2) G_F / hbar, cm^3 s^-1
  double speed_of_light = 0;         // cm s^-1
  std::vector<double> state_filter;  // [ncell] real multiplier per FFT bin (numpy.fft order), symmetric in k
  bool coupling = true;              // false: pure advection (tests of the transport)
};

class FlavourBoxKernel {
 public:
  // cell_size_cm [nsim]; moment_filter [nsim][ncell] (numpy.fft order) or empty for none.
  // Throws std::invalid_argument on inconsistent sizes or an ncell that is not a power of two.
  FlavourBoxKernel(FlavourBoxSettings settings, std::vector<double> cell_size_cm, std::vector<double> moment_filter);
  ~FlavourBoxKernel();
  FlavourBoxKernel(const FlavourBoxKernel&) = delete;
  FlavourBoxKernel& operator=(const FlavourBoxKernel&) = delete;

  std::size_t nsim() const { return nsim_; }
  std::size_t ncell() const { return ncell_; }
  std::size_t ndir() const { return ndir_; }

  // Packed Hermitian state [6 entries (ee, mm, tt, em, et, mt)][nsim][2 (nu, nubar)][ncell][ndir]
  // (the layout of FastFlavourBox.state). Diagonal entries keep only their real part.
  void set_state(const std::complex<double>* packed);
  void get_state(std::complex<double>* packed) const;
  // Four-moments (1, v) of the current state, [6][nsim][2][ncell][4 (t, x, y, z)].
  void moments(std::complex<double>* out) const;
  // One Lawson-RK4 step of dt[nsim] seconds; writes the four-moments at the start of the step.
  // threads > 1 steps the boxes on up to that many threads (boxes are independent; results do not
  // depend on it). Threads start and end within the call (fork-safe); when the system cannot
  // start one, the calling thread does its share.
  void step(const double* dt, std::complex<double>* moments_at_start, int threads = 1);

  // Fork: one call at a time runs per kernel (a mutex). A process that forks while another thread
  // is inside a call on a kernel (any of the four above) copies that kernel mid-call; in the child
  // every call on it throws std::runtime_error saying so (make the kernel again there), where it
  // waited for ever on the copied lock before (its holder does not exist in the child). Kernels
  // idle at the fork are copied whole and work in the child. pthread_atfork handlers
  // (flavour_box.cpp) tell the two apart; they never wait for a call to end.
  bool forked_mid_call() const { return forked_mid_call_.load(std::memory_order_relaxed); }

 private:
  struct Box {
    double* state_re;  // real-space state; during a step, its Fourier transform after advection
    double* state_im;
    double* acc_re;    // Fourier-space RK4 accumulator
    double* acc_im;
    double* arg_re;    // argument of the next flavour-rate evaluation
    double* arg_im;
    double* rate_re;   // flavour rate, then its transform
    double* rate_im;
    double* moments_state;  // [9 blocks][ncell][4][re, im] of the state
    double* moments_arg;    // same for the argument
    double* phase_re;       // half-step advection phase [ncell (bit-reversed bins)][width]
    double* phase_im;
    double* filtered_phase_re;  // the same times the state filter
    double* filtered_phase_im;
    double* moment_filter;      // [ncell] bit-reversed, including 1/ncell; nullptr: none
    double* lepton_re;          // scratch: L = N - conj(Nbar), [ncell][6 entries][4 moments]
    double* lepton_im;
    double cell_size_cm;
    double phase_dt;            // dt the phases were built for (NaN: none yet)
  };

  void build_phases(Box& box, double dt) const;  // const: touches only the box's own memory
  void flavour_rate(Box& box, const double* re, const double* im, const double* block_moments) const;
  void block_moments(const double* re, const double* im, double* out) const;
  void state_moments(Box& box) const;
  void step_box(Box& box, double dt) const;
  std::size_t block_offset(std::size_t block) const { return block * ncell_ * width_; }

  FlavourBoxSettings settings_;
  std::size_t nsim_, ncell_, ndir_, width_;
  RowFft fft_;
  std::vector<double> moment_weights_;       // [4][width]: 1, vx, vy, vz (0 in the padding)
  std::vector<double> hamiltonian_weights_;  // [4][width]: mu (1, -vx, -vy, -vz)
  std::vector<double> state_filter_;         // [ncell] bit-reversed
  std::vector<double> storage_;
  std::vector<Box> boxes_;
  std::unique_lock<std::mutex> lock() const;  // mutex_, after the fork check
  void write_moments(std::complex<double>* out) const;  // moments() with the lock held by the caller

  mutable std::mutex mutex_;  // one call at a time per kernel
  // Fork bookkeeping (flavour_box.cpp): every kernel alive sits in one list, so that the
  // pthread_atfork handlers can find them; all three fields under that list's lock.
  FlavourBoxKernel* fork_prev_ = nullptr;
  FlavourBoxKernel* fork_next_ = nullptr;
  bool held_for_fork_ = false;             // the prepare handler took mutex_ (the kernel was idle)
  std::atomic<bool> forked_mid_call_{false};  // set in a child only: the kernel was busy at the fork
  friend struct KernelForkHandlers;
};

}  // namespace dodo::qke
