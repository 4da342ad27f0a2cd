#include "chunk_pool.hpp"

namespace dodo::runtime {

ChunkPool::ChunkPool(int threads) : threads_(threads < 1 ? 1 : threads) {
  workers_.reserve(static_cast<std::size_t>(threads_ - 1));
  for (int slot = 1; slot < threads_; ++slot) workers_.emplace_back([this, slot] { worker_loop(slot); });
}

ChunkPool::~ChunkPool() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stopping_ = true;
  }
  wake_.notify_all();
  for (std::thread& worker : workers_) worker.join();
}

void ChunkPool::work_on_batch(int slot) {
  for (std::size_t chunk = next_chunk_.fetch_add(1); chunk < n_chunks_; chunk = next_chunk_.fetch_add(1))
    body_(context_, chunk, slot);
}

void ChunkPool::worker_loop(int slot) {
  std::size_t seen_generation = 0;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex_);
      wake_.wait(lock, [&] { return stopping_ || generation_ != seen_generation; });
      if (stopping_) return;
      seen_generation = generation_;
    }
    work_on_batch(slot);
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --busy_workers_;
    }
    done_.notify_all();
  }
}

bool ChunkPool::try_run(std::size_t n_chunks, ChunkBody body, void* context) {
  std::unique_lock<std::mutex> batch(batch_mutex_, std::try_to_lock);
  if (!batch.owns_lock()) return false;
  if (workers_.empty() || n_chunks <= 1) {
    for (std::size_t chunk = 0; chunk < n_chunks; ++chunk) body(context, chunk, 0);
    return true;
  }
  {
    std::lock_guard<std::mutex> lock(mutex_);
    body_ = body;
    context_ = context;
    n_chunks_ = n_chunks;
    next_chunk_.store(0);
    busy_workers_ = static_cast<int>(workers_.size());
    ++generation_;
  }
  wake_.notify_all();
  work_on_batch(0);
  std::unique_lock<std::mutex> lock(mutex_);
  done_.wait(lock, [&] { return busy_workers_ == 0; });
  return true;
}

}  // namespace dodo::runtime
