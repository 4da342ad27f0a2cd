// A fixed set of worker threads that share out the chunks of one batch. The caller's thread
// works too. One batch at a time: a second caller that finds the pool busy runs its chunks on
// its own thread instead of waiting, so a handle shared by a host's threads never deadlocks and
// never changes results (a chunk's result does not depend on which thread ran it).
#pragma once

#include <atomic>
#include <condition_variable>
#include <cstddef>
#include <mutex>
#include <thread>
#include <vector>

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

  int threads() const { return threads_; }

  // Runs body for every chunk in [0, n_chunks). Returns false (having run nothing) when the
  // pool is busy with another caller's batch; the caller then runs the chunks itself.
  bool try_run(std::size_t n_chunks, ChunkBody body, void* context);

 private:
  void worker_loop(int slot);
  void work_on_batch(int slot);

  int threads_;
  std::vector<std::thread> workers_;
  std::mutex batch_mutex_;  // held by the caller for the whole batch

  std::mutex mutex_;
  std::condition_variable wake_, done_;
  std::size_t generation_ = 0;
  bool stopping_ = false;
  int busy_workers_ = 0;

  // The batch in progress.
  ChunkBody body_ = nullptr;
  void* context_ = nullptr;
  std::size_t n_chunks_ = 0;
  std::atomic<std::size_t> next_chunk_{0};
};

}  // namespace dodo::runtime
