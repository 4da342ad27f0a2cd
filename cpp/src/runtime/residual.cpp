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

}  // namespace dodo::runtime
