// Example 2 (C++): one closure shared by the host's threads, each applying it to its slab of a
// grid stored as an array of cells, double[ncell][6][4] (the default layout).
//
// Build (CMake):  find_package(Dodo CONFIG REQUIRED)
//                 target_link_libraries(grid_closure PRIVATE Dodo::dodo)
// Run:            ./grid_closure MODEL.onnx      (no argument: Box3D only)
#include <dodo/dodo.hpp>

#include <cmath>
#include <cstdio>
#include <exception>
#include <system_error>
#include <thread>
#include <vector>

int main(int argc, char** argv) {
  constexpr int nx = 24, ny = 24, nz = 8, ncell = nx * ny * nz, host_threads = 4;
  std::vector<double> F(ncell * 24), F_pred(ncell * 24), u(ncell * 4);
  for (int c = 0; c < ncell; ++c) {
    const double x = (c % nx + 0.5) / nx, z = (c / (nx * ny) + 0.5) / nz;
    for (int a = 0; a < 6; ++a) {
      const double density = 1e32 * (0.5 + 0.1 * a + 0.2 * x);
      const double flux = (a == 3 ? -1.0 : 1.0) * (0.1 + 0.4 * z) * density;
      double* species = &F[c * 24 + a * 4];
      species[0] = density;
      species[1] = flux * std::cos(a);
      species[2] = flux * std::sin(a);
      species[3] = 0.1 * flux;
    }
    u[c * 4] = 1.0;  // fluid at rest in this toy grid
  }

  try {
    // The C++ wrapper turns error codes into dodo::Error exceptions and frees the handle itself.
    dodo::Closure closure = argc > 1 ? dodo::Closure(argv[1], dodo::Options().threads(0).run_self_test(true))
                                     : dodo::Closure(dodo::Options());
    std::vector<std::thread> workers;
    // An exception must not leave a std::thread (that would call std::terminate): each worker keeps
    // its error, and the first one is rethrown here, after every thread has joined.
    std::vector<std::exception_ptr> errors(host_threads);
    const auto slab = [&](int t) {
      try {
        // Thread t's cells [first, last): every cell once, also when host_threads does not divide
        // ncell (ncell / host_threads cells each would leave the last ncell % host_threads out).
        const std::size_t first = static_cast<std::size_t>(ncell) * static_cast<std::size_t>(t) / host_threads;
        const std::size_t last = static_cast<std::size_t>(ncell) * static_cast<std::size_t>(t + 1) / host_threads;
        closure.apply(last - first, &F[first * 24], &u[first * 4], &F_pred[first * 24]);
      } catch (...) {
        errors[t] = std::current_exception();
      }
    };
    workers.reserve(host_threads);
    for (int t = 0; t < host_threads; ++t) {
      // A thread the system cannot start (a process or thread limit, an address-space limit, whose
      // stack does not fit) throws std::system_error: its slab is done here, on this thread. Left to
      // propagate, it ended the program in std::terminate, the threads already started being
      // joinable (outside probe, C round forty-seven).
      try {
        workers.emplace_back(slab, t);
      } catch (const std::system_error& error) {
        std::fprintf(stderr, "host thread %d not started (%s): its cells run on the main thread\n", t, error.what());
        slab(t);
      }
    }
    for (auto& worker : workers) worker.join();
    for (const auto& error : errors)
      if (error) std::rethrow_exception(error);

    double worst = 0.0;
    for (int c = 0; c < ncell; ++c)
      for (int s = 0; s < 2; ++s)
        for (int m = 0; m < 4; ++m) {
          double change = 0.0, scale = 0.0;
          for (int f = 0; f < 3; ++f) {
            change += F_pred[c * 24 + (3 * s + f) * 4 + m] - F[c * 24 + (3 * s + f) * 4 + m];
            scale += F[c * 24 + (3 * s + f) * 4];
          }
          worst = std::fmax(worst, std::fabs(change) / scale);
        }
    const dodo_counters counters = closure.counters();
    std::printf("dodo %s: %llu cells from %d host threads%s, %s, flavour-sum violation %.2e\n", dodo::version().c_str(),
                static_cast<unsigned long long>(counters.cells), static_cast<int>(workers.size()),
                workers.size() < static_cast<std::size_t>(host_threads) ? " and the main thread" : "",
                closure.has_model() ? ("head " + closure.metadata("dodo.head")).c_str() : "Box3D only", worst);
    return worst < 1e-12 && counters.cells == static_cast<unsigned long long>(ncell) ? 0 : 1;
  } catch (const dodo::Error& error) {
    std::fprintf(stderr, "dodo error %s: %s\n", dodo_status_name(error.status()), error.what());
    return 1;
  }
}
