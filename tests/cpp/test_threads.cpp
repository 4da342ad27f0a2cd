// Thread stress test (issue 5): 8 threads share one closure handle (C API, with a model, 2 pool
// workers) and apply random batches for a fixed time; every result must be bitwise identical to the
// same batch applied single-threaded beforehand, and the handle's cell counter must add up.
// First, the process's first closures are 8 threads' own, created at once: each must be made, and
// under ThreadSanitizer (scripts/tsan.sh) their ONNX Runtime sessions must not race (they did in
// CreateSessionFromArray before libdodo made them one at a time; outside probe, C round 41).
//
// Usage: test_threads MODEL.onnx [SECONDS]   (SECONDS also from $DODO_STRESS_SECONDS; default 3)
#include <dodo/dodo.h>

#include <atomic>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <thread>
#include <vector>

namespace {

struct Batch {
  std::size_t n = 0;
  bool at_rest = false;  // u = NULL
  std::vector<double> F, u, expected;
  std::vector<std::uint32_t> expected_status;
};

// Random cells: mostly physical (ELN crossings, moving fluid), some rejected (NaN, negative
// density, flux factor above the limit, bad velocity) so that every path runs concurrently.
Batch make_batch(std::mt19937_64& rng) {
  std::uniform_real_distribution<double> unit(0.0, 1.0);
  Batch batch;
  batch.n = 1 + rng() % 700;  // up to 11 chunks of 64
  batch.at_rest = rng() % 5 == 0;
  batch.F.resize(batch.n * 24);
  batch.u.resize(batch.n * 4);
  for (std::size_t c = 0; c < batch.n; ++c) {
    double* F = &batch.F[c * 24];
    const double scale = std::pow(10.0, 20.0 + 15.0 * unit(rng));
    for (int a = 0; a < 6; ++a) {
      const double density = scale * (0.05 + unit(rng));
      const double flux_factor = 0.95 * unit(rng);
      const double cos_theta = 2.0 * unit(rng) - 1.0, phi = 6.283185307179586 * unit(rng);
      const double sin_theta = std::sqrt(1.0 - cos_theta * cos_theta);
      F[4 * a] = density;
      F[4 * a + 1] = density * flux_factor * sin_theta * std::cos(phi);
      F[4 * a + 2] = density * flux_factor * sin_theta * std::sin(phi);
      F[4 * a + 3] = density * flux_factor * cos_theta;
    }
    const double speed = 0.6 * unit(rng);
    const double cos_theta = 2.0 * unit(rng) - 1.0, phi = 6.283185307179586 * unit(rng);
    const double sin_theta = std::sqrt(1.0 - cos_theta * cos_theta);
    const double W = 1.0 / std::sqrt(1.0 - speed * speed);
    double* u = &batch.u[c * 4];
    u[0] = W;
    u[1] = W * speed * sin_theta * std::cos(phi);
    u[2] = W * speed * sin_theta * std::sin(phi);
    u[3] = W * speed * cos_theta;
    switch (rng() % 40) {
      case 0: F[rng() % 24] = NAN; break;
      case 1: F[4 * (rng() % 6)] *= -1.0; break;
      case 2: F[4 * (rng() % 6) + 3] = 2.0 * scale * 1.1; break;
      case 3: u[0] = 0.5; break;
      default: break;
    }
  }
  return batch;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 2) {
    std::fprintf(stderr, "usage: test_threads MODEL.onnx [SECONDS]\n");
    return 2;
  }
  double seconds = 3.0;
  if (const char* env = std::getenv("DODO_STRESS_SECONDS")) seconds = std::atof(env);
  if (argc > 2) seconds = std::atof(argv[2]);
  constexpr int kThreads = 8;
  constexpr int kBatches = 48;

  {
    std::atomic<int> waiting{kThreads}, made{0};
    std::vector<std::thread> creators;
    for (int t = 0; t < kThreads; ++t)
      creators.emplace_back([&] {
        --waiting;
        while (waiting.load() > 0) std::this_thread::yield();  // all start together
        dodo_closure* own = nullptr;
        if (dodo_closure_create(argv[1], nullptr, &own, nullptr, 0) == DODO_OK) ++made;
        dodo_closure_destroy(own);
      });
    for (std::thread& creator : creators) creator.join();
    if (made != kThreads) {
      std::fprintf(stderr, "%d of %d closures created at once were made\n", made.load(), kThreads);
      return 1;
    }
  }

  dodo_options options;
  dodo_options_init(&options);
  options.threads = 2;
  options.chunk_size = 64;
  dodo_closure* closure = nullptr;
  char message[1024];
  if (dodo_closure_create(argv[1], &options, &closure, message, sizeof message) != DODO_OK) {
    std::fprintf(stderr, "cannot create the closure: %s\n", message);
    return 1;
  }

  // References: each batch applied once, from this thread alone.
  std::mt19937_64 rng(20251126);
  std::vector<Batch> batches;
  std::uint64_t expected_cells = 0;
  for (int b = 0; b < kBatches; ++b) {
    batches.push_back(make_batch(rng));
    Batch& batch = batches.back();
    batch.expected.assign(batch.n * 24, 0.0);
    batch.expected_status.assign(batch.n, 0);
    if (dodo_apply(closure, batch.n, batch.F.data(), nullptr, batch.at_rest ? nullptr : batch.u.data(), nullptr,
                   batch.expected.data(), nullptr, batch.expected_status.data()) != DODO_OK) {
      dodo_last_error(closure, message, sizeof message);
      std::fprintf(stderr, "reference apply failed: %s\n", message);
      return 1;
    }
    expected_cells += batch.n;
  }

  std::atomic<bool> stop{false};
  std::atomic<long> calls{0}, mismatches{0}, failures{0};
  std::atomic<std::uint64_t> cells{0};
  std::vector<long> per_thread(kThreads, 0);
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    threads.emplace_back([&, t] {
      std::mt19937_64 local(1000 + t);
      std::vector<double> out;
      std::vector<std::uint32_t> status;
      while (!stop.load(std::memory_order_relaxed)) {
        const Batch& batch = batches[local() % kBatches];
        out.assign(batch.n * 24, -1.0);
        status.assign(batch.n, 0xFFFFFFFFu);
        const dodo_status result = dodo_apply(closure, batch.n, batch.F.data(), nullptr,
                                              batch.at_rest ? nullptr : batch.u.data(), nullptr, out.data(), nullptr,
                                              status.data());
        if (result != DODO_OK) {
          ++failures;
          continue;
        }
        if (std::memcmp(out.data(), batch.expected.data(), out.size() * sizeof(double)) != 0 ||
            status != batch.expected_status)
          ++mismatches;
        if (t == 0 && local() % 8 == 0) {  // counters are read while others apply
          dodo_counters counters;
          if (dodo_get_counters(closure, &counters) != DODO_OK) ++failures;
        }
        cells += batch.n;
        ++calls;
        ++per_thread[t];
      }
    });
  }
  std::this_thread::sleep_for(std::chrono::duration<double>(seconds));
  stop = true;
  for (std::thread& thread : threads) thread.join();

  dodo_counters counters;
  dodo_get_counters(closure, &counters);
  dodo_closure_destroy(closure);
  long least = per_thread[0];
  for (long count : per_thread) least = count < least ? count : least;
  std::printf("test_threads: %d threads, %.1f s: %ld calls (fewest per thread %ld), %llu cells, %ld mismatches, "
              "%ld failed calls; counter %llu cells (expected %llu)\n",
              kThreads, seconds, calls.load(), least, static_cast<unsigned long long>(cells.load()), mismatches.load(),
              failures.load(), static_cast<unsigned long long>(counters.cells),
              static_cast<unsigned long long>(expected_cells + cells.load()));
  const bool ok = mismatches == 0 && failures == 0 && least > 0 && counters.cells == expected_cells + cells.load();
  std::printf("%s\n", ok ? "PASSED" : "FAILED");
  return ok ? 0 : 1;
}
