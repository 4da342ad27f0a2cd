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
#include <thread>
#include <utility>

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

template <typename Work>
void without_gil(Work&& work) {
  PyThreadState* state = PyEval_SaveThread();
  try {
    std::forward<Work>(work)();
  } catch (...) {  // an exception of the work itself (never a forced unwind: no Python inside)
    restore_gil(state);
    throw;
  }
  restore_gil(state);
}

// Cells per slice of a long call (dodo._core._set_interrupt_slice_cells changes it, for tests).
inline std::atomic<std::size_t>& interrupt_slice_cells() {
  static std::atomic<std::size_t> cells{std::size_t{1} << 18};
  return cells;
}

// A call over n cells in slices, each without the GIL: between slices the GIL is taken back and
// pending signals run, so Ctrl-C (or dodo's SIGTERM handler) ends a 10^8-cell call within one
// slice's time (a few tenths of a second) instead of at its end. work(begin, count) computes
// cells [begin, begin + count); results do not depend on how a batch is split (test_api,
// test_out_arrays), so the slicing is invisible. n = 0 still calls work(0, 0) once.
template <typename Work>
void in_interruptible_slices(std::size_t n, Work&& work) {
  const std::size_t slice = std::max<std::size_t>(1, interrupt_slice_cells().load());
  std::size_t begin = 0;
  do {
    const std::size_t count = std::min(slice, n - begin);
    without_gil([&] { work(begin, count); });
    begin += count;
    if (begin < n && PyErr_CheckSignals() != 0) throw pybind11::error_already_set();
  } while (begin < n);
}

}  // namespace dodo_python
