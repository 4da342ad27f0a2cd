#include "residual.hpp"

#include <cmath>
#include <stdexcept>

#include "../conventions.hpp"

namespace dodo::runtime {

int head_output_size(Head head) { return head == Head::kDirect ? kDirectOutputs : kEquivariantOutputs; }

Head head_from_name(const std::string& name) {
  if (name == "direct") return Head::kDirect;
  if (name == "equivariant") return Head::kEquivariant;
  throw std::invalid_argument("unknown head \"" + name + "\" (known: \"direct\", \"equivariant\")");
}

const char* head_name(Head head) { return head == Head::kDirect ? "direct" : "equivariant"; }

void assemble_correction(Head head, const float* head_output, const double* F_init_rest, const double* dF_box_rest,
                         double* dF_ml) {
  if (head == Head::kDirect) {
    for (int i = 0; i < kCellValues; ++i) dF_ml[i] = head_output[i];
    return;
  }
  const float* c = head_output;                    // c_ab, row-major
  const float* d = head_output + kSpecies * kSpecies;  // d_ab
  const float* e = head_output + 2 * kSpecies * kSpecies;  // e_a
  for (int a = 0; a < kSpecies; ++a) {
    double sum[kComponents] = {static_cast<double>(e[a]), 0.0, 0.0, 0.0};  // e_a u_rest
    for (int b = 0; b < kSpecies; ++b) {
      const double c_ab = c[a * kSpecies + b];
      const double d_ab = d[a * kSpecies + b];
      for (int m = 0; m < kComponents; ++m)
        sum[m] += c_ab * F_init_rest[value_index(b, m)] + d_ab * dF_box_rest[value_index(b, m)];
    }
    for (int m = 0; m < kComponents; ++m) dF_ml[value_index(a, m)] = sum[m];
  }
}

void project_conserving(double* dF) {
  // Spatial components: flavour sum zero per (s, component).
  for (int s = 0; s < 2; ++s) {
    for (int m = 1; m < kComponents; ++m) {
      double mean = 0;
      for (int f = 0; f < kFlavours; ++f) mean += dF[value_index(species_index(s, f), m)];
      mean /= kFlavours;
      for (int f = 0; f < kFlavours; ++f) dF[value_index(species_index(s, f), m)] -= mean;
    }
  }
  // Densities: lepton number per flavour (nu = nubar), then flavour sum zero.
  double common[kFlavours];
  double mean = 0;
  for (int f = 0; f < kFlavours; ++f) {
    common[f] = 0.5 * (dF[value_index(species_index(0, f), 0)] + dF[value_index(species_index(1, f), 0)]);
    mean += common[f];
  }
  mean /= kFlavours;
  for (int f = 0; f < kFlavours; ++f) {
    dF[value_index(species_index(0, f), 0)] = common[f] - mean;
    dF[value_index(species_index(1, f), 0)] = common[f] - mean;
  }
}

double realizability_margin(const double* four_flux) {
  return four_flux[0] - std::sqrt(four_flux[1] * four_flux[1] + four_flux[2] * four_flux[2] + four_flux[3] * four_flux[3]);
}

namespace {

// n(theta) - |F(theta)| is concave in theta, so {theta : margin >= floor} is an interval.
bool feasible(const double* F_box, const double* dF, const double* floors, double theta) {
  for (int a = 0; a < kSpecies; ++a) {
    double species[kComponents];
    for (int m = 0; m < kComponents; ++m) species[m] = F_box[value_index(a, m)] + theta * dF[value_index(a, m)];
    if (!(realizability_margin(species) >= floors[a])) return false;
  }
  return true;
}

}  // namespace

double realizable_fraction(const double* F_box, const double* dF) {
  double floors[kSpecies];
  for (int a = 0; a < kSpecies; ++a) floors[a] = std::fmin(0.0, realizability_margin(F_box + value_index(a, 0)));
  if (feasible(F_box, dF, floors, 1.0)) return 1.0;
  double lo = 0.0, hi = 1.0;  // feasible(lo) holds by construction of the floors
  for (int iteration = 0; iteration < 60 && hi - lo > 1e-15; ++iteration) {
    double mid = 0.5 * (lo + hi);
    if (feasible(F_box, dF, floors, mid)) lo = mid; else hi = mid;
  }
  return lo;
}

}  // namespace dodo::runtime
