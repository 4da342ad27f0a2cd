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
#include <sys/resource.h>

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

// Whether a thread started now gets a stack short enough for own_stack.hpp's room check to matter:
// the process's default thread stack (pthread_setattr_default_np), else RLIMIT_STACK, which glibc
// takes for it, below 1 MiB. Asked in the starting thread: the check in each worker
// (pthread_getattr_np) mallocs, so every worker made a malloc arena of its own, 64 MiB of address
// space each, and a closure under an address-space limit that had fitted its workers' workspaces no
// longer did (test_probe_c_round44, a non-editable build).
inline bool default_thread_stack_is_small() {
  constexpr std::size_t kSmall = std::size_t{1} << 20;
  pthread_attr_t attributes;
  if (::pthread_getattr_default_np(&attributes) == 0) {
    std::size_t size = 0;
    const bool known = ::pthread_attr_getstacksize(&attributes, &size) == 0 && size != 0;
    ::pthread_attr_destroy(&attributes);
    if (known) return size < kSmall;
  }
  struct rlimit limit;
  if (::getrlimit(RLIMIT_STACK, &limit) != 0 || limit.rlim_cur == RLIM_INFINITY) return false;
  return limit.rlim_cur < kSmall;
}

// Appends a thread running `function` to `threads`; false (nothing started) when the system
// cannot give it one. `threads` must have capacity for it (no reallocation can throw).
template <typename Function>
bool try_start_thread(std::vector<std::thread>& threads, Function&& function) {
  if (threads.size() == threads.capacity() || !address_space_has_headroom()) return false;
  try {
    const AsyncSignalsBlocked library_thread;  // the new thread starts with them blocked
    // Under a small `ulimit -s` (glibc's default thread stack) the worker's body runs on a stack
    // of its own (own_stack.hpp): a worker of 48 KiB died of SIGSEGV in Box3D (C round fifty).
    if (default_thread_stack_is_small())
      threads.emplace_back([body = std::forward<Function>(function)]() mutable { run_with_room(body); });
    else
      threads.emplace_back(std::forward<Function>(function));
  } catch (const std::system_error&) {
    return false;
  } catch (const std::bad_alloc&) {
    return false;
  }
  return true;
}

}  // namespace dodo
