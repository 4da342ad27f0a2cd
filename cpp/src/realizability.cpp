#include "realizability.hpp"

#include <cfloat>
#include <cmath>

#include "conventions.hpp"
#include "frame.hpp"
#include "multiversion.hpp"

namespace dodo {
namespace {

inline double flux_norm(const double* species) {
  return std::sqrt(species[1] * species[1] + species[2] * species[2] + species[3] * species[3]);
}

// Slack of a species at step theta, with the margin: (1 - margin) n - |F| (>= 0 is admissible).
inline double slack(const double* base, const double* change, double theta, double margin) {
  double shifted[4];
  for (int m = 0; m < 4; ++m) shifted[m] = base[m] + theta * change[m];
  return (1.0 - margin) * shifted[0] - flux_norm(shifted);
}

// d/dtheta of slack(): (1 - margin) dn - (F + theta dF).dF / |F + theta dF|.
inline double slack_derivative(const double* base, const double* change, double theta, double margin) {
  double shifted[4];
  for (int m = 0; m < 4; ++m) shifted[m] = base[m] + theta * change[m];
  const double norm = flux_norm(shifted);
  const double along = shifted[1] * change[1] + shifted[2] * change[2] + shifted[3] * change[3];
  return (1.0 - margin) * change[0] - (norm > 0.0 ? along / norm : flux_norm(change));
}

// |F| without overflow or underflow of the squares: scale by the largest component first.
inline double scaled_flux_norm(const double* species) {
  const double largest = std::fmax(std::fabs(species[1]), std::fmax(std::fabs(species[2]), std::fabs(species[3])));
  if (!(largest > 0.0)) return 0.0;
  const double x = species[1] / largest, y = species[2] / largest, z = species[3] / largest;
  return largest * std::sqrt(x * x + y * y + z * z);
}

// sqrt(Fx^2 + Fy^2 + Fz^2) - n computed as a host would, after scaling the species by a power of
// two (exact) where the squares would leave the normal range; > 0: outside the cone.
inline double cone_excess(const double* species) {
  double largest = 0.0;
  for (int m = 0; m < kComponents; ++m) largest = std::fabs(species[m]) > largest ? std::fabs(species[m]) : largest;
  if (largest > 0x1p+500 || (largest > 0.0 && largest < 0x1p-500)) {
    // ldexp per value: a power of two as one factor overflows for subnormal species (2^1051 for
    // 3e-317 is inf, and inf - inf read as inside the cone; outside probe, round nine).
    const int shift = -std::ilogb(largest);
    const double x = std::ldexp(species[1], shift), y = std::ldexp(species[2], shift), z = std::ldexp(species[3], shift);
    return std::sqrt(x * x + y * y + z * z) - std::ldexp(species[0], shift);
  }
  const double x = species[1], y = species[2], z = species[3];
  return std::sqrt(x * x + y * y + z * z) - species[0];
}

inline double cone_room(const double* species) {
  return species[0] - scaled_flux_norm(species);
}

// The bodies of clamp_to_cone and of realizable_step's quick accept, inlined into each
// instruction-set clone of their callers below.
inline bool clamp_into_cone(double* F);
inline bool both_ends_inside(const double* F_base, const double* dF);

}  // namespace

// The finishing functions of every crossing cell (Box3D and the closure) are cloned per instruction
// set like Box3D's kernel; this file is compiled with -ffp-contract=off, so the clones give the
// baseline build's bits.
DODO_MULTIVERSION
bool finalise_cell(const double* F_init, const LorentzBoost& boost, double ntot, const double* dF_rest,
                   double* F_out) {
  double change_rest[kCellValues], change_lab[kCellValues];
  for (int v = 0; v < kCellValues; ++v) change_rest[v] = dF_rest[v] * ntot;
  boost.cell_from_rest(change_rest, change_lab);
  for (int v = 0; v < kCellValues; ++v) F_out[v] = F_init[v] + change_lab[v];
  if (!all_values_finite(F_out, kCellValues)) return false;  // densities near DBL_MAX: not representable
  clamp_into_cone(F_out);
  return true;
}

DODO_MULTIVERSION
bool clamp_to_cone(double* F) { return clamp_into_cone(F); }

namespace {

inline bool clamp_into_cone(double* F) {
  bool changed = false;
  double total = -1.0;  // the cell's summed |density|, computed only when a species is negative
  for (int a = 0; a < kSpecies; ++a) {
    double* species = F + a * kComponents;
    // Quick accept: squares in the safe range and a few ulp inside, so sqrt(|F|^2) <= n holds.
    const double n = species[0];
    const double flux2 = species[1] * species[1] + species[2] * species[2] + species[3] * species[3];
    if (n < 1e150 && n > 1e-150 && flux2 <= (1.0 - 8.0 * DBL_EPSILON) * (n * n)) continue;
    if (n < 0.0) {
      // A species ~1e-300 of the cell's density can come out of Box3D's change (rounding of the
      // cell's scale) as -n (outside probe, round nine): a density below the cell's rounding is
      // no number at all, so the species is set to zero (realizable; conservation moves by less
      // than the rounding). A larger negative density is left for the caller to see.
      if (total < 0.0) {
        total = 0.0;
        for (int b = 0; b < kSpecies; ++b) total += std::fabs(F[b * kComponents]);
      }
      if (-n <= 64.0 * DBL_EPSILON * total) {
        for (int m = 0; m < kComponents; ++m) species[m] = 0.0;
        changed = true;
      }
      continue;
    }
    if (!(cone_excess(species) > 0.0)) continue;
    changed = true;
    // Shrink the flux until the host's test passes (one step almost always).
    double shrunk[kComponents] = {species[0], 0.0, 0.0, 0.0};
    if (species[0] > 0.0) {
      double factor = species[0] / scaled_flux_norm(species);
      for (int attempt = 0; attempt < 8; ++attempt) {
        factor *= 1.0 - 4.0 * DBL_EPSILON;
        for (int m = 1; m < kComponents; ++m) shrunk[m] = species[m] * factor;
        if (!(cone_excess(shrunk) > 0.0)) break;
      }
      if (cone_excess(shrunk) > 0.0)
        for (int m = 1; m < kComponents; ++m) shrunk[m] = 0.0;
    }
    double removed[kComponents] = {0.0, 0.0, 0.0, 0.0};
    for (int m = 1; m < kComponents; ++m) removed[m] = species[m] - shrunk[m];
    for (int m = 1; m < kComponents; ++m) species[m] = shrunk[m];
    // Hand the removed flux to the other flavour of the same kind with the most room; two with the
    // same room share it in halves (exact), so that a cell with mu = tau keeps mu = tau bit for bit
    // (the first of the two took it all: physics-law probe, round fourteen).
    const int kind = a / kFlavours;
    int best = -1, tied = -1;
    double best_room = 0.0;
    for (int f = 0; f < kFlavours; ++f) {
      const int b = species_index(kind, f);
      if (b == a) continue;
      const double room = cone_room(F + b * kComponents);
      if (room > best_room) {
        best_room = room;
        best = b;
        tied = -1;
      } else if (best >= 0 && room == best_room) {
        tied = b;
      }
    }
    const double removed_norm = scaled_flux_norm(removed);
    if (best < 0 || !(best_room > 4.0 * removed_norm)) continue;
    const double share = tied >= 0 ? 0.5 : 1.0;
    for (const int r : {best, tied}) {
      if (r < 0) continue;
      double* recipient = F + r * kComponents;
      double given[kComponents];
      for (int m = 0; m < kComponents; ++m) given[m] = recipient[m] + share * removed[m];
      if (!(cone_excess(given) > 0.0))
        for (int m = 1; m < kComponents; ++m) recipient[m] = given[m];
    }
  }
  return changed;
}

}  // namespace

void realizable_fallback(const double* F, double* out) {
  bool finite = true;
  for (int v = 0; v < kCellValues; ++v) finite = finite && std::isfinite(F[v]);
  if (!finite) {
    for (int v = 0; v < kCellValues; ++v) out[v] = 0.0;
    return;
  }
  for (int a = 0; a < kSpecies; ++a) {
    const double* in = F + a * kComponents;
    double* species = out + a * kComponents;
    // A negative density becomes 0; -0.0 stays -0.0 (fmax gave +0.0: a rejected all-zero cell written
    // as -0.0 came back with other bits than its input, outside probe round fifteen).
    const double density = in[0] >= 0.0 ? in[0] : 0.0;
    const double flux = scaled_flux_norm(in);
    species[0] = density;
    // Inside by the host's own test (sqrt(Fx^2 + Fy^2 + Fz^2) <= n, cone_excess) alone: the scaled
    // norm passed beamed species 1 ulp outside it unchanged (outside probe, round nine), and, kept
    // beside that test, it read species on the cone's edge that the host's test passes (|F| = n as
    // evaluated, flux factor 1 or 1 - 1e-15) as an ulp outside and shrank their flux, so a rejected
    // cell that is realizable as given did not come back as its input (physics-law probe, round eight).
    if (in[0] >= 0.0 && !(cone_excess(in) > 0.0)) {
      for (int m = 1; m < kComponents; ++m) species[m] = in[m];
      continue;
    }
    // Onto the cone, a few ulp inside so that rounding of the product cannot leave it. The unit
    // direction is scaled by the density: the ratio density/flux itself may be subnormal (n = 1e-16,
    // |F| = 1e300) and would lose its precision (fuzz_apply found |F| = 1.000000005 n that way).
    double shrink = 1.0 - 4.0 * DBL_EPSILON;
    for (int m = 1; m < kComponents; ++m) species[m] = density > 0.0 ? (in[m] / flux) * density * shrink : 0.0;
    // Rounding may leave the product an ulp outside the host's test: a few ulp further in, as
    // clamp_into_cone does. (The scaled norm compared with n (1 - 4 eps) failed by an ulp on ~22% of
    // species 1 ulp outside the cone, and their whole flux was dropped, up to 0.8 N_tot; physics-law
    // probe, round six.)
    for (int attempt = 0; attempt < 8 && density >= DBL_MIN && cone_excess(species) > 0.0; ++attempt) {
      shrink *= 1.0 - 4.0 * DBL_EPSILON;
      for (int m = 1; m < kComponents; ++m) species[m] = (in[m] / flux) * density * shrink;
    }
    // Subnormal densities (no precision left to stay inside the cone), or a direction still outside
    // after those steps: drop the flux.
    if (!(density >= DBL_MIN) || cone_excess(species) > 0.0)
      for (int m = 1; m < kComponents; ++m) species[m] = 0.0;
  }
}

bool cell_is_realizable(const double* F) {
  for (int a = 0; a < kSpecies; ++a) {
    const double* species = F + a * kComponents;
    if (!(species[0] >= 0.0) || cone_excess(species) > 0.0) return false;
  }
  return true;
}

// True when every species is inside the cone both at F_base and at F_base + dF, tested on the
// squares (no square roots; branch-free, vectorises): then the full step is admissible.
namespace {

inline bool both_ends_inside(const double* F_base, const double* dF) {
  bool inside = true;
  for (int a = 0; a < kSpecies; ++a) {
    const double* base = F_base + a * kComponents;
    const double* change = dF + a * kComponents;
    const double n0 = base[0], n1 = base[0] + change[0];
    const double x1 = base[1] + change[1], y1 = base[2] + change[2], z1 = base[3] + change[3];
    const double flux0 = base[1] * base[1] + base[2] * base[2] + base[3] * base[3];
    const double flux1 = x1 * x1 + y1 * y1 + z1 * z1;
    inside = inside & (n0 >= 0.0) & (n1 >= 0.0) & (flux0 <= (1.0 - 8.0 * DBL_EPSILON) * (n0 * n0)) &
             (flux1 <= (1.0 - 8.0 * DBL_EPSILON) * (n1 * n1));
  }
  return inside;
}

}  // namespace

DODO_MULTIVERSION
double realizable_step(const double* F_base, const double* dF) {
  constexpr double kMargin = 1e-12;
  // Most cells: both ends well inside (squares compared with a few ulp to spare, so the square
  // roots below would agree), so the whole step is admissible.
  if (both_ends_inside(F_base, dF)) return 1.0;
  double theta = 1.0;
  for (int a = 0; a < kSpecies; ++a) {
    const double* base = F_base + a * kComponents;
    const double* change = dF + a * kComponents;
    // A species already (slightly) outside the cone may not move further out.
    const double floor = std::fmin(0.0, slack(base, change, 0.0, 0.0));
    if (slack(base, change, theta, 0.0) >= floor) continue;
    // The slack g is concave in theta and admissible at 0. For a concave g a chord between an
    // admissible lo and an inadmissible hi meets zero at an admissible point, and a tangent at
    // hi meets zero at an inadmissible one: both ends close in (quadratically from hi), and lo
    // stays admissible. A bisection step whenever the bracket fails to halve bounds the count;
    // it ends when lo and hi agree to 8 ulp (there the slack is rounding noise; the margin
    // above is 1e-12 of the density).
    double lo = 0.0, hi = theta;
    double g_lo = slack(base, change, lo, kMargin) - floor;
    if (!(g_lo >= 0.0)) {
      theta = 0.0;
      continue;
    }
    double g_hi = slack(base, change, hi, kMargin) - floor;
    // Evaluate the slack at x inside the bracket and move the end on its side to x.
    const auto narrow = [&](double x) {
      const double g = slack(base, change, x, kMargin) - floor;
      if (g >= 0.0) {
        lo = x;
        g_lo = g;
      } else {
        hi = x;
        g_hi = g;
      }
    };
    for (int iteration = 0; iteration < 100 && hi - lo > 8.0 * DBL_EPSILON * hi; ++iteration) {
      const double width = hi - lo;
      double chord = lo + width * (g_lo / (g_lo - g_hi));
      if (!(chord > lo && chord < hi)) chord = 0.5 * (lo + hi);
      narrow(chord);
      const double tangent = hi - g_hi / slack_derivative(base, change, hi, kMargin);
      if (tangent > lo && tangent < hi) narrow(tangent);
      if (hi - lo > 0.5 * width) narrow(0.5 * (lo + hi));
    }
    theta = lo;
  }
  return theta;
}

}  // namespace dodo
