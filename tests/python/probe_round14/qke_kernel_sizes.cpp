// The compiled QKE kernel asked for a storage whose size (about 76 doubles per cell, direction
// and simulation) wraps past 2^64 or exceeds the address space: refused by name, or (before)
// accepted with a wrapped, far too small allocation that the first step writes beyond.
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <vector>
#include "qke/flavour_box.hpp"

int main(int argc, char** argv) {
  if (argc != 4) return 2;
  const std::size_t ncell = std::strtoull(argv[1], nullptr, 10), ndir = std::strtoull(argv[2], nullptr, 10),
                    nsim = std::strtoull(argv[3], nullptr, 10);
  dodo::qke::FlavourBoxSettings settings;
  settings.ncell = ncell;
  settings.directions.assign(3 * ndir, 0.0);
  for (std::size_t d = 0; d < ndir; ++d) settings.directions[3 * d + 2] = 1.0;
  settings.state_filter.assign(ncell, 1.0);
  settings.self_interaction = 1.0;
  settings.speed_of_light = 1.0;
  try {
    dodo::qke::FlavourBoxKernel kernel(settings, std::vector<double>(nsim, 1.0), {});
    std::printf("accepted\n");
    std::fflush(stdout);
    std::vector<double> dt(nsim, 1e-12);
    kernel.step(dt.data(), nullptr, 1);
    std::printf("stepped\n");
  } catch (const std::invalid_argument& error) {
    std::printf("refused: %s\n", error.what());
  } catch (const std::exception& error) {
    std::printf("other %s\n", error.what());
  }
  return 0;
}
