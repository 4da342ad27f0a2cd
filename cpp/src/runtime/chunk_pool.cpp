#include "chunk_pool.hpp"

#include <unistd.h>

#include "../process_identity.hpp"
#include "../thread_start.hpp"

namespace dodo::runtime {

// The workers of one process and the state they share.
struct ChunkPool::Crew {
  explicit Crew(int threads);
  ~Crew();
  void worker_loop(int slot);
  void work_on_batch(int slot);
  bool try_run(std::size_t n_chunks, ChunkBody body, void* context);

  const ProcessIdentity owner;  // not the process id alone: ids are reused (process_identity.hpp)
  std::vector<std::thread> workers;
  std::mutex batch_mutex;  // held by the caller for the whole batch

  std::mutex mutex;
  std::condition_variable wake, done;
  std::size_t generation = 0;
  bool stopping = false;
  std::size_t kept_workers = static_cast<std::size_t>(-1);  // workers at slots above it return (keep_threads)
  int busy_workers = 0;

  // The batch in progress.
  ChunkBody body = nullptr;
  void* context = nullptr;
  std::size_t n_chunks = 0;
  std::atomic<std::size_t> next_chunk{0};
};

ChunkPool::Crew::Crew(int threads) {
  workers.reserve(static_cast<std::size_t>(threads > 1 ? threads - 1 : 0));
  // A refused start (thread or address-space limit) keeps the workers that started: slots 1..size.
  for (int slot = 1; slot < threads; ++slot)
    if (!try_start_thread(workers, [this, slot] { worker_loop(slot); })) break;
}

ChunkPool::Crew::~Crew() {
  {
    std::lock_guard<std::mutex> lock(mutex);
    stopping = true;
  }
  wake.notify_all();
  for (std::thread& worker : workers) worker.join();
}

void ChunkPool::Crew::work_on_batch(int slot) {
  for (std::size_t chunk = next_chunk.fetch_add(1); chunk < n_chunks; chunk = next_chunk.fetch_add(1))
    body(context, chunk, slot);
}

void ChunkPool::Crew::worker_loop(int slot) {
  std::size_t seen_generation = 0;
  while (true) {
    {
      std::unique_lock<std::mutex> lock(mutex);
      const auto stopped = [&] { return stopping || static_cast<std::size_t>(slot) > kept_workers; };
      wake.wait(lock, [&] { return stopped() || generation != seen_generation; });
      if (stopped()) return;
      seen_generation = generation;
    }
    work_on_batch(slot);
    {
      std::lock_guard<std::mutex> lock(mutex);
      --busy_workers;
    }
    done.notify_all();
  }
}

bool ChunkPool::Crew::try_run(std::size_t chunks, ChunkBody batch_body, void* batch_context) {
  std::unique_lock<std::mutex> batch(batch_mutex, std::try_to_lock);
  if (!batch.owns_lock()) return false;
  if (workers.empty() || chunks <= 1) {
    for (std::size_t chunk = 0; chunk < chunks; ++chunk) batch_body(batch_context, chunk, 0);
    return true;
  }
  {
    std::lock_guard<std::mutex> lock(mutex);
    body = batch_body;
    context = batch_context;
    n_chunks = chunks;
    next_chunk.store(0);
    busy_workers = static_cast<int>(workers.size());
    ++generation;
  }
  wake.notify_all();
  work_on_batch(0);
  std::unique_lock<std::mutex> lock(mutex);
  done.wait(lock, [&] { return busy_workers == 0; });
  return true;
}

ChunkPool::ChunkPool(int threads) : requested_(threads < 1 ? 1 : threads), crew_(new Crew(requested_)) {}

ChunkPool::~ChunkPool() {
  Crew* crew = crew_.load();
  // A Crew inherited from a parent process has no threads here and its locks may be held by
  // threads that do not exist: destroying it could block for ever, so it is left alone.
  if (crew->owner.is_this_process()) delete crew;
}

ChunkPool::Crew* ChunkPool::crew_for_this_process() {
  Crew* crew = crew_.load(std::memory_order_acquire);
  if (crew->owner.is_this_process()) return crew;
  // First batch in a child of fork(): start this process's own workers.
  Crew* fresh = new Crew(requested_);
  if (crew_.compare_exchange_strong(crew, fresh, std::memory_order_acq_rel)) return fresh;  // parent's abandoned
  delete fresh;  // another thread of this child was first; `crew` now holds its Crew
  return crew;
}

void ChunkPool::keep_threads(int threads) {
  Crew* crew = crew_.load(std::memory_order_acquire);
  const std::size_t workers = static_cast<std::size_t>(threads > 1 ? threads - 1 : 0);
  if (!crew->owner.is_this_process() || workers >= crew->workers.size()) return;
  {
    std::lock_guard<std::mutex> lock(crew->mutex);
    crew->kept_workers = workers;
  }
  crew->wake.notify_all();
  for (std::size_t index = workers; index < crew->workers.size(); ++index) crew->workers[index].join();
  crew->workers.resize(workers);
  requested_ = static_cast<int>(workers) + 1;
}

int ChunkPool::threads() const {
  const Crew* crew = crew_.load(std::memory_order_acquire);
  return static_cast<int>(crew->workers.size()) + 1;
}

bool ChunkPool::try_run(std::size_t n_chunks, ChunkBody body, void* context) {
  return crew_for_this_process()->try_run(n_chunks, body, context);
}

}  // namespace dodo::runtime
