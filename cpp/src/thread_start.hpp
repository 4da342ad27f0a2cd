// Starting a worker thread without betting the process on it (issue 11, item 6). Under an
// address-space limit (ulimit -v) thread stacks can use up the last free memory, after which
// glibc aborts ("cannot allocate memory for thread-local data") the moment a new thread touches
// thread_local data. So a thread is started only while a probe mapping of kThreadHeadroomBytes
// still fits, and a refused start (EAGAIN, ENOMEM) is an answer, not an exception: the caller
// keeps the workers it has.
#pragma once

#include <pthread.h>
#include <signal.h>
#include <sys/mman.h>

#include <cstddef>
#include <new>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

#include "own_stack.hpp"

namespace dodo {

// Free address space to leave for the new thread's first allocations (one glibc malloc arena).
inline constexpr std::size_t kThreadHeadroomBytes = std::size_t{64} << 20;

inline bool address_space_has_headroom() {
  void* probe = ::mmap(nullptr, kThreadHeadroomBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (probe == MAP_FAILED) return false;
  ::munmap(probe, kThreadHeadroomBytes);
  return true;
}

// Blocks the asynchronous signals (SIGINT, SIGTERM, SIGUSR1, SIGCHLD, ...) in the calling thread
// while it lives, so that threads started meanwhile (Dodo's workers, ONNX Runtime's own) inherit
// the mask: a signal sent to the process then goes to one of the host's threads, never to a
// library thread. Without it, a host that blocks SIGTERM and waits for it with sigwait or a
// signalfd (after making its closure) was killed by the default action run on a Dodo worker
// (outside probe, round seventeen). Faults (SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS)
// and SIGABRT stay deliverable to the thread that raises them.
class AsyncSignalsBlocked {
 public:
  AsyncSignalsBlocked() {
    sigset_t asynchronous;
    sigfillset(&asynchronous);
    for (int fault : {SIGSEGV, SIGBUS, SIGFPE, SIGILL, SIGTRAP, SIGSYS, SIGABRT}) sigdelset(&asynchronous, fault);
    blocked_ = ::pthread_sigmask(SIG_BLOCK, &asynchronous, &previous_) == 0;
  }
  ~AsyncSignalsBlocked() {
    if (blocked_) ::pthread_sigmask(SIG_SETMASK, &previous_, nullptr);
  }
  AsyncSignalsBlocked(const AsyncSignalsBlocked&) = delete;
  AsyncSignalsBlocked& operator=(const AsyncSignalsBlocked&) = delete;

 private:
  sigset_t previous_;
  bool blocked_ = false;
};

// Appends a thread running `function` to `threads`; false (nothing started) when the system
// cannot give it one. `threads` must have capacity for it (no reallocation can throw).
template <typename Function>
bool try_start_thread(std::vector<std::thread>& threads, Function&& function) {
  if (threads.size() == threads.capacity() || !address_space_has_headroom()) return false;
  try {
    const AsyncSignalsBlocked library_thread;  // the new thread starts with them blocked
    // Under a small `ulimit -s` (glibc's default thread stack) the worker's body runs on a stack
    // of its own (own_stack.hpp): a worker of 48 KiB died of SIGSEGV in Box3D (C round fifty).
    threads.emplace_back([body = std::forward<Function>(function)]() mutable { run_with_room(body); });
  } catch (const std::system_error&) {
    return false;
  } catch (const std::bad_alloc&) {
    return false;
  }
  return true;
}

}  // namespace dodo
