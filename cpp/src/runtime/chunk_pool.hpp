// A fixed set of worker threads that share out the chunks of one batch. The caller's thread
// works too. One batch at a time: a second caller that finds the pool busy runs its chunks on
// its own thread instead of waiting, so a handle shared by a host's threads never deadlocks and
// never changes results (a chunk's result does not depend on which thread ran it).
//
// Fork-safe (issue 11, item 5): a child made by fork() has none of the parent's workers, and the
// parent's mutexes and condition variables may be in any state there. The workers and everything
// they wait on live in one Crew tagged with the process (its id and its count of forks, since ids
// are reused: process_identity.hpp); the first batch in a child finds a foreign Crew, abandons
// it (never touched again, its memory left alone) and starts a new one.
//
// Thread creation may fail (address-space limit, thread limit): the pool then keeps the workers
// it could start (issue 11, item 6); threads() reports how many run.
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

#include <sys/types.h>

#include "../conventions.hpp"

namespace dodo::runtime {

class ChunkPool {
 public:
  // The body receives (chunk index, worker slot); slots are 0..threads-1 and unique at any time
  // within one batch, so a per-slot workspace needs no lock.
  using ChunkBody = void (*)(void* context, std::size_t chunk, int slot);

  explicit ChunkPool(int threads);  // threads <= 1: no worker threads at all
  ~ChunkPool();
  ChunkPool(const ChunkPool&) = delete;
  ChunkPool& operator=(const ChunkPool&) = delete;

  // Threads that work on a batch (the caller's included): the requested count, or fewer when
  // the system refused to start more.
  int threads() const;

  // Runs body for every chunk in [0, n_chunks). Returns false (having run nothing) when the
  // pool is busy with another caller's batch; the caller then runs the chunks itself.
  bool try_run(std::size_t n_chunks, ChunkBody body, void* context);

  // Stops the workers beyond the first `threads` - 1 (threads() becomes at most `threads`, and a
  // child of fork() starts as many). For the pool's creator only, before any batch: a closure
  // whose workers started but whose workspaces did not all fit keeps the threads it has
  // workspaces for (outside probe, C round forty-four).
  void keep_threads(int threads);

 private:
  struct Crew;
  Crew* crew_for_this_process();

  int requested_;
  std::atomic<Crew*> crew_;
};

}  // namespace dodo::runtime
