// Starting a worker thread without betting the process on it (issue 11, item 6). Under an
// address-space limit (ulimit -v) thread stacks can use up the last free memory, after which
// glibc aborts ("cannot allocate memory for thread-local data") the moment a new thread touches
// thread_local data. So a thread is started only while a probe mapping of kThreadHeadroomBytes
// still fits, and a refused start (EAGAIN, ENOMEM) is an answer, not an exception: the caller
// keeps the workers it has.
#pragma once

#include <sys/mman.h>

#include <cstddef>
#include <new>
#include <system_error>
#include <thread>
#include <utility>
#include <vector>

namespace dodo {

// Free address space to leave for the new thread's first allocations (one glibc malloc arena).
inline constexpr std::size_t kThreadHeadroomBytes = std::size_t{64} << 20;

inline bool address_space_has_headroom() {
  void* probe = ::mmap(nullptr, kThreadHeadroomBytes, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
  if (probe == MAP_FAILED) return false;
  ::munmap(probe, kThreadHeadroomBytes);
  return true;
}

// Appends a thread running `function` to `threads`; false (nothing started) when the system
// cannot give it one. `threads` must have capacity for it (no reallocation can throw).
template <typename Function>
bool try_start_thread(std::vector<std::thread>& threads, Function&& function) {
  if (threads.size() == threads.capacity() || !address_space_has_headroom()) return false;
  try {
    threads.emplace_back(std::forward<Function>(function));
  } catch (const std::system_error&) {
    return false;
  } catch (const std::bad_alloc&) {
    return false;
  }
  return true;
}

}  // namespace dodo
