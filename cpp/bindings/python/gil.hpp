// Releasing the GIL around C++ work so that interpreter exit cannot abort the process (issue 11,
// item 7). When the interpreter finalizes while a daemon thread computes, that thread's attempt
// to take the GIL back ends it with pthread_exit, a forced unwind. pybind11's
// gil_scoped_release takes the GIL back in its destructor, which is noexcept: the unwind reaches
// std::terminate ("terminate called without an active exception"). Here the GIL is taken back
// in ordinary code, so the unwind passes through to pybind11, which lets it end the thread.
#pragma once

#include <Python.h>

#include <pybind11/pybind11.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <cstddef>
#include <exception>
#include <new>
#include <thread>
#include <utility>

#include "own_stack.hpp"

namespace dodo_python {

inline bool interpreter_finalizing() {
#if PY_VERSION_HEX >= 0x030D0000
  return Py_IsFinalizing() != 0;
#else
  return _Py_IsFinalizing() != 0;
#endif
}

// Takes the GIL back after C++ work. During finalization the thread is parked instead (as
// Python 3.14 does itself): no unwinding through frames that hold Python objects, and the
// process exits around it. Should finalization begin between the check and the call,
// PyEval_RestoreThread ends the thread with a forced unwind from ordinary code (not terminate).
inline void restore_gil(PyThreadState* state) {
  while (interpreter_finalizing()) std::this_thread::sleep_for(std::chrono::hours(1));
  PyEval_RestoreThread(state);
}

// A Python thread of a small stack (threading.stack_size(64 * 1024)) died of SIGSEGV in dodo.box3d,
// and at 96 KiB creating a Closure (outside probe, Python round fifty-eight; C round fifty fixed the
// C API's calls alone). Where the calling thread has less than kStackWanted of stack left, the work
// runs on a stack of this thread's own (own_stack.hpp), mapped at its first short call and kept for
// its later ones. A thread_local with a destructor frees it: Python never unloads an extension
// module, so the C API's pthread key (capi.cpp, for a library that can be dlclosed) is not needed.
struct ThreadOwnStack {
  void* memory = nullptr;
  ~ThreadOwnStack() { dodo::unmap_own_stack(memory); }
};
inline thread_local ThreadOwnStack thread_own_stack;

// MemoryError (pybind11 passes what() on) where no stack could be mapped: running on the short
// stack would end the process.
struct NoRoomOnTheStack : std::bad_alloc {
  const char* what() const noexcept override {
    return "out of memory: this thread has less than 160 KiB of stack left, and no stack of 512 KiB could be "
           "mapped to run the call on: give the thread a larger stack (threading.stack_size(1024 * 1024) "
           "before starting it)";
  }
};

// Runs work() where the stack has room. An exception cannot unwind across swapcontext (nothing
// above call_on_own_stack catches it), so it is caught on the own stack and thrown again here.
template <typename Work>
void with_room(Work& work) {
  if (!dodo::stack_is_short()) {
    work();
    return;
  }
  ThreadOwnStack& own = thread_own_stack;
  if (!own.memory) own.memory = dodo::map_own_stack();
  if (!own.memory) throw NoRoomOnTheStack();
  struct Pending {
    Work* work;
    std::exception_ptr error;
  } pending{&work, nullptr};
  const bool ran = dodo::run_on_stack(own.memory, [](void* argument) {
    auto* call = static_cast<Pending*>(argument);
    try {
      (*call->work)();
    } catch (...) {
      call->error = std::current_exception();
    }
  }, &pending);
  if (!ran) throw NoRoomOnTheStack();
  if (pending.error) std::rethrow_exception(pending.error);
}

template <typename Work>
void without_gil(Work&& work) {
  // While Python finalizes, a thread that holds the GIL here is the finalizing one (the others are
  // parked or gone): released, restore_gil would park it for ever, and a call from a __del__ run at
  // exit waited for ever (outside probe, Python round sixty-four). It keeps the GIL instead; nothing
  // else can want it then, and the work touches no Python object.
  if (interpreter_finalizing()) {
    with_room(work);
    return;
  }
  PyThreadState* state = PyEval_SaveThread();
  try {
    with_room(work);
  } catch (...) {  // an exception of the work itself (never a forced unwind: no Python inside)
    restore_gil(state);
    throw;
  }
  restore_gil(state);
}

// Cells per slice of a long call at Box3D's cheapest quadrature (Lebedev order 17)
// (dodo._core._set_interrupt_slice_cells changes it, for tests).
inline std::atomic<std::size_t>& interrupt_slice_cells() {
  static std::atomic<std::size_t> cells{std::size_t{1} << 16};
  return cells;
}

// Work per cell relative to Box3D at Lebedev order 17: the angular integrals dominate a cell's
// cost and grow with the quadrature's points, about (order + 1)^2 / 3 (110 at order 17, 590 at
// 41, 5810 at 131). A slice of a fixed number of cells took 50 times longer at order 131 than at
// 17: Ctrl-C during dodo.box3d(..., lebedev_order=131) of 300,000 cells was seen 20 s after the
// signal, during crossing_features (which had no slices) only at the call's end (outside probe,
// round forty-three).
inline double lebedev_cost(int lebedev_order) {
  const double side = static_cast<double>(std::max(lebedev_order, 17)) + 1.0;
  return side * side / (18.0 * 18.0);
}

// Cells per slice for work of `cost` per cell (lebedev_cost), at least `minimum` (enough cells to
// keep a call's threads busy: a closure's workers take chunk_size cells at a time, and Box3D starts
// its threads per slice): a multiple of Box3D's block of 32 cells, so that the blocks, and the
// bits, are those of a call in one piece.
inline std::size_t slice_cells(double cost, std::size_t minimum) {
  constexpr std::size_t kBlock = 32;
  const double base = static_cast<double>(std::max<std::size_t>(1, interrupt_slice_cells().load()));
  const auto cells = std::max(minimum, static_cast<std::size_t>(std::max(1.0, base / std::max(1.0, cost))));
  return cells < kBlock ? cells : cells - cells % kBlock;
}

// Cells that keep `threads` workers busy in one slice, each taking `per_thread` cells at a time.
inline std::size_t busy_cells(int threads, std::size_t per_thread) {
  return static_cast<std::size_t>(std::max(threads, 1)) * per_thread;
}

// A call over n cells in slices, each without the GIL: between slices the GIL is taken back and
// pending signals run, so Ctrl-C (or dodo's SIGTERM handler) ends a 10^8-cell call within one
// slice's time (a few tenths of a second) instead of at its end. work(begin, count) computes
// cells [begin, begin + count); results do not depend on how a batch is split (test_api,
// test_out_arrays), so the slicing is invisible. n = 0 still calls work(0, 0) once. `cost`: the
// work per cell relative to Box3D at order 17 (lebedev_cost), so that a slice takes about as long
// at any quadrature; `minimum`: cells a slice holds at least (busy_cells).
template <typename Work>
void in_interruptible_slices(std::size_t n, Work&& work, double cost = 1.0, std::size_t minimum = 1) {
  const std::size_t slice = slice_cells(cost, minimum);
  std::size_t begin = 0;
  do {
    const std::size_t count = std::min(slice, n - begin);
    without_gil([&] { work(begin, count); });
    begin += count;
    if (begin < n && PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
  } while (begin < n);
}

}  // namespace dodo_python
