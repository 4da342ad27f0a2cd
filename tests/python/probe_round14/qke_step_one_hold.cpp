// step(dt, moments_at_start) against a set_state from another caller that lands right after the
// kernel's lock is first released inside the call: pthread_mutex_unlock is interposed, and its
// first call on this thread while armed runs set_state(Y) (deterministic, no timing).
#include <dlfcn.h>
#include <pthread.h>
#include <cmath>
#include <complex>
#include <cstdio>
#include <vector>
#include "qke/flavour_box.hpp"

using dodo::qke::FlavourBoxKernel;
using cplx = std::complex<double>;

static int (*real_unlock)(pthread_mutex_t*) = nullptr;
static bool armed = false;
static int unlocks_in_step = 0;
static void (*on_first_unlock)() = nullptr;

extern "C" int pthread_mutex_unlock(pthread_mutex_t* m) {
  if (!real_unlock) real_unlock = reinterpret_cast<int (*)(pthread_mutex_t*)>(dlsym(RTLD_NEXT, "pthread_mutex_unlock"));
  const int rc = real_unlock(m);
  if (armed) {
    ++unlocks_in_step;
    armed = false;  // once; set_state's own unlock does not re-enter
    if (on_first_unlock) on_first_unlock();
  }
  return rc;
}

static FlavourBoxKernel* kernel = nullptr;
static std::vector<cplx> state_y;

static std::vector<cplx> make_state(std::size_t n, std::size_t per_entry, double tilt) {
  std::vector<cplx> s(n, cplx(0, 0));
  for (std::size_t i = 0; i < n; ++i) {
    const std::size_t entry = i / per_entry;
    const double x = static_cast<double>(i % 97) / 97.0;
    if (entry < 3) s[i] = cplx((entry == 0 ? 1.0 : 0.5) + tilt * x, 0.0);
    else s[i] = cplx(1e-3 * x * (1 + tilt), 1e-3 * tilt);
  }
  return s;
}

int main() {
  const std::size_t ncell = 8, nsim = 1;
  dodo::qke::FlavourBoxSettings settings;
  settings.ncell = ncell;
  const double dirs[6][3] = {{1, 0, 0}, {-1, 0, 0}, {0, 1, 0}, {0, -1, 0}, {0, 0, 1}, {0, 0, -1}};
  for (auto& d : dirs) settings.directions.insert(settings.directions.end(), d, d + 3);
  settings.self_interaction = 1.0;
  settings.speed_of_light = 1.0;
  settings.state_filter.assign(ncell, 1.0);
  const std::size_t ndir = 6, per_entry = nsim * 2 * ncell * ndir, nstate = 6 * per_entry;
  const std::size_t nmom = 6 * nsim * 2 * ncell * 4;
  FlavourBoxKernel k(settings, std::vector<double>(nsim, 1.0), {});
  kernel = &k;
  const std::vector<cplx> x = make_state(nstate, per_entry, 0.0);
  state_y = make_state(nstate, per_entry, 0.75);
  const double dt[1] = {0.01};
  std::vector<cplx> moments_x(nmom), moments_y(nmom), stepped_y(nstate), scratch(nmom);
  k.set_state(x.data());
  k.moments(moments_x.data());
  k.set_state(state_y.data());
  k.moments(moments_y.data());
  k.step(dt, scratch.data(), 1);
  k.get_state(stepped_y.data());

  // The probe: the state is X; the other caller's set_state(Y) runs at the first release.
  k.set_state(x.data());
  on_first_unlock = [] { kernel->set_state(state_y.data()); };
  std::vector<cplx> returned(nmom), after(nstate);
  unlocks_in_step = 0;
  armed = true;
  k.step(dt, returned.data(), 1);
  armed = false;
  on_first_unlock = nullptr;
  k.get_state(after.data());
  auto same = [](const std::vector<cplx>& a, const std::vector<cplx>& b) {
    for (std::size_t i = 0; i < a.size(); ++i) if (a[i] != b[i]) return false;
    return true;
  };
  const bool moments_of_x = same(returned, moments_x), moments_of_y = same(returned, moments_y);
  const bool stepped_from_y = same(after, stepped_y), left_y = same(after, state_y);
  std::printf("moments %s; state %s\n", moments_of_x ? "of X" : moments_of_y ? "of Y" : "of neither",
              stepped_from_y ? "Y stepped" : left_y ? "Y (set after the step)" : "other");
  if (same(moments_x, moments_y) || same(stepped_y, state_y)) { std::printf("probe states not distinct\n"); return 2; }
  // Consistent: the moments returned are those of the state the step started from.
  const bool consistent = (moments_of_x && left_y) || (moments_of_y && stepped_from_y);
  return consistent ? 0 : 1;
}
