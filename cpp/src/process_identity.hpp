// Which process made a piece of per-process state (the closure's worker threads, its
// workspaces), so that a child of fork() never takes its parent's for its own.
//
// The process id alone does not say it: a process id is reused once its process has ended. A
// process that inherited a closure, never called it and forked after its parent had ended could
// give a child the parent's old id; that child took the parent's workers (which do not exist in
// it) for its own and waited for ever for them to finish its first batch (outside probe of the C
// side, round fifteen: a double-forking host, the id given by ns_last_pid). So the identity is the
// id together with the number of fork()s the process descends through, counted by a
// pthread_atfork child handler: it only grows along a line of descent, so no descendant shares
// it with a process whose memory it inherited. The id still tells apart a child made by a fork
// that runs no atfork handlers (_Fork, a raw clone).
#pragma once

#include <pthread.h>
#include <sys/types.h>
#include <unistd.h>

#include <atomic>
#include <cstdint>

namespace dodo {

// fork()s between the program's start and this process (0 in a process that never forked from
// one holding this library).
inline std::atomic<std::uint64_t> forks_to_this_process{0};
inline void count_fork_in_child() noexcept { forks_to_this_process.fetch_add(1, std::memory_order_relaxed); }
// Registered when the library is loaded, before any state it tags can exist.
[[maybe_unused]] inline const int kForkCounterRegistered = pthread_atfork(nullptr, nullptr, count_fork_in_child);

struct ProcessIdentity {
  // User-provided: a `const ProcessIdentity` member needs it for its class to stay default
  // constructible (clang refuses default member initializers alone there).
  ProcessIdentity() noexcept : pid(::getpid()), forks(forks_to_this_process.load(std::memory_order_relaxed)) {}

  pid_t pid;
  std::uint64_t forks;

  bool is_this_process() const noexcept {
    return forks == forks_to_this_process.load(std::memory_order_relaxed) && pid == ::getpid();
  }
};

}  // namespace dodo
