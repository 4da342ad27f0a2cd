// The closure's flavour symmetries (physics.md section 3): exchanging mu and tau, or neutrinos and
// antineutrinos, in a cell's input must exchange them in its output. Box3D obeys both by
// construction; a network on the invariants obeys them only as well as training taught it (an
// outside probe measured 2.7e-3 N_tot on average, up to 3.6e-2, for mu <-> tau). So the runtime
// evaluates the network on a crossing cell's images under the group {identity, mu <-> tau,
// nu <-> nubar, both} and blends their outputs, mapped back to the cell's own labelling, with
// weights that follow the images: image g weighs s(a_e(g x)) s(a_mt(g x)), s the logistic
// function of a steep multiple of a_e = n_nubar_e - n_nu_e and a_mt = (n_tau + n_taubar) -
// (n_mu + n_mubar) (units of N_tot; each swap negates one of them). A relabelled cell has the same
// images with the same weights, so the closure's answer is relabelled with it; and the blend is
// continuous. Outside a band of half-width kImageBlendWidth around a_e = 0 and around a_mt = 0
// (where the other side's weight would be under 1e-7) a single image has weight 1 and is the only
// one evaluated, so most cells cost one network row (a cell with mu = tau is its own mu <-> tau
// image: one row for both). The images' rows are made from the cell's rest-frame pieces (no second
// Box3D).
#pragma once

#include <algorithm>
#include <cmath>
#include <utility>

#include "../box3d/box3d.hpp"
#include "../conventions.hpp"
#include "../frame.hpp"
#include "residual.hpp"

namespace dodo::runtime {

inline constexpr int kFlavourImages = 4;  // identity, mu <-> tau, nu <-> nubar, both

// kImageSpecies[g][a]: the cell's species that plays species a in image g.
inline constexpr int kImageSpecies[kFlavourImages][kSpecies] = {
    {0, 1, 2, 3, 4, 5}, {0, 2, 1, 3, 5, 4}, {3, 4, 5, 0, 1, 2}, {3, 5, 4, 0, 2, 1}};
// The flavour that plays flavour f in image g, and whether the image swaps nu and nubar (which
// turns every ELN, and so every pair's G, into its negative).
inline constexpr int kImageFlavour[kFlavourImages][kFlavours] = {{0, 1, 2}, {0, 2, 1}, {0, 1, 2}, {0, 2, 1}};
inline constexpr bool kImageNegatesEln[kFlavourImages] = {false, false, true, true};

// Blend band half-width (units of N_tot) and the weight below which an image is left out.
inline constexpr double kImageBlendWidth = 0.01;
inline constexpr double kImageWeightFloor = 1e-7;
// |t| beyond which a side's weight is under the floor, and t per unit asymmetry. Namespace-scope
// constants (GCC folds them at compile time, as it did the function-local statics they were):
// a function-local static a compiler initialises at run time has a guard variable, which a
// fork() during the first cell's evaluation could leave taken in the child.
inline const double kImageBandEdge = std::log((1.0 - kImageWeightFloor) / kImageWeightFloor);
inline const double kImageSteepness = kImageBandEdge / kImageBlendWidth;

// The images' weights for a cell F (rest frame, units of N_tot); 0: the image is not evaluated.
struct ImageWeights {
  double weight[kFlavourImages];
  // The image of weight 1 when it is the only one (the cell lies outside both bands: most cells),
  // else -1. A side inside its band is below 1 (1/(1 + e^{-t}) with |t| < kImageBandEdge), and a product
  // with a factor below 1 is below 1: weight[g] == 1.0 exactly when g == single.
  int single;
};

inline ImageWeights image_weights(const double* F) {
  // s(t) and s(-t) as the same expression of t and -t, so that a swap, which negates t exactly,
  // exchanges them to the last bit.
  // Outside the band (|t| beyond kImageBandEdge, where the smaller side is under the floor) the sides are
  // exactly 1 and 0, without an exponential: the cell's one image, unscaled.
  // Returns the side of weight 1 outside the band, else -1.
  const auto sides = [](double a, double* side) {
    const double t = kImageSteepness * a;
    if (!(std::fabs(t) < kImageBandEdge)) {
      side[0] = t > 0.0 ? 1.0 : 0.0;
      side[1] = t > 0.0 ? 0.0 : 1.0;
      return t > 0.0 ? 0 : 1;
    }
    side[0] = 1.0 / (1.0 + std::exp(-t));
    side[1] = 1.0 / (1.0 + std::exp(t));
    return -1;
  };
  const double eln_e = F[value_index(3, 0)] - F[value_index(0, 0)];
  const double mu_tau = (F[value_index(2, 0)] + F[value_index(5, 0)]) - (F[value_index(1, 0)] + F[value_index(4, 0)]);
  double e_side[2], mt_side[2];
  const int e_single = sides(eln_e, e_side);    // images 0, 1 keep nu and nubar; 2, 3 swap them
  const int mt_single = sides(mu_tau, mt_side);  // images 0, 2 keep mu and tau; 1, 3 swap them
  ImageWeights out;
  for (int g = 0; g < kFlavourImages; ++g) out.weight[g] = e_side[g / 2] * mt_side[g % 2];
  out.single = (e_single >= 0 && mt_single >= 0) ? 2 * e_single + mt_single : -1;
  return out;
}

// True when the mu <-> tau image of a cell (24 values, species-major) is the cell itself; its
// rows then equal the identity's and the nu <-> nubar image's, and are not evaluated again.
inline bool mu_tau_symmetric(const double* F) {
  return std::equal(F + 1 * kComponents, F + 2 * kComponents, F + 2 * kComponents) &&
         std::equal(F + 4 * kComponents, F + 5 * kComponents, F + 5 * kComponents);
}

// Position of pair {f1, f2} (f1 < f2) in the pair order of conventions.hpp.
constexpr int pair_position(int f1, int f2) { return f1 == 0 ? f2 - 1 : 2; }
static_assert(pair_position(kPairFirst[0], kPairSecond[0]) == 0 && pair_position(kPairFirst[1], kPairSecond[1]) == 1 &&
                  pair_position(kPairFirst[2], kPairSecond[2]) == 2,
              "pair order");

// Network inputs (`size` columns): the 27 invariants; for feature sets with Box3D's answer, its six
// rest-frame density changes and its proxy; for "+eln18", the three pairs' six crossing inputs.
inline constexpr int kCrossingColumn = kInvariants + kSpecies + 1;

// Image g's network input, made directly from the cell's rest-frame pieces (no row of the cell
// itself first): the invariants of the relabelled cell (the products of the same numbers, so the
// same bits as permuting the cell's own), Box3D's changes of the species that play each part, and
// each pair's crossing inputs from the cell's pair of the same two flavours. A pair whose G
// changes sign in the image swaps its lobes: I+ <-> I-, |<n>+| <-> |<n>-|, and the fraction where
// G > 0 becomes the fraction where G < 0 (which Box3D's kernel also sums). The invariants come
// from relabelled_invariants (vector products, no relabelled copy of the cell: the copy and
// the scalar products cost ~460 instructions a cell, a fifth of the closure's own work outside
// the network and the crossing pass, by callgrind), the crossing inputs by a table made once
// from the rule above:
// kImageCrossingSource.source[g][k] is the value of rest.crossing (the pairs' six inputs, then
// the fractions where G < 0) that becomes image g's crossing input k.
struct ImageCrossingSources {
  int source[kFlavourImages][kCrossingFeatures];
};
constexpr ImageCrossingSources image_crossing_sources() {
  ImageCrossingSources out{};
  for (int g = 0; g < kFlavourImages; ++g)
    for (int q = 0; q < kPairs; ++q) {
      int f1 = kImageFlavour[g][kPairFirst[q]], f2 = kImageFlavour[g][kPairSecond[q]];
      bool negated = kImageNegatesEln[g];
      if (f1 > f2) {
        const int f = f1;
        f1 = f2;
        f2 = f;
        negated = !negated;
      }
      const int r = pair_position(f1, f2), from = r * kCrossingFeaturesPerPair;
      int* to = out.source[g] + q * kCrossingFeaturesPerPair;
      to[0] = from + (negated ? 1 : 0);
      to[1] = from + (negated ? 0 : 1);
      to[2] = negated ? kCrossingFeatures + r : from + 2;
      to[3] = from + (negated ? 4 : 3);
      to[4] = from + (negated ? 3 : 4);
      to[5] = from + 5;
    }
  return out;
}
inline constexpr ImageCrossingSources kImageCrossingSource = image_crossing_sources();

// One body per image (the tables' indices constants, the copies unrolled).
template <int g>
inline void image_row_of(const RestFrameCell& rest, int size, float* out) {
  constexpr const int* species = kImageSpecies[g];
  relabelled_invariants(rest.F, species, out);
  if (size <= kInvariants) return;
#pragma GCC unroll 6
  for (int a = 0; a < kSpecies; ++a) out[kInvariants + a] = static_cast<float>(rest.dF[value_index(species[a], 0)]);
  out[kInvariants + kSpecies] = static_cast<float>(rest.growth_over_ntot);  // invariant
  if (size <= kCrossingColumn) return;
#pragma GCC unroll 18
  for (int k = 0; k < kCrossingFeatures; ++k)
    out[kCrossingColumn + k] = static_cast<float>(rest.crossing[kImageCrossingSource.source[g][k]]);
}

inline void image_row(const RestFrameCell& rest, int size, int g, float* out) {
  static_assert(kFlavourImages == 4, "four images");
  switch (g) {
    case 0: return image_row_of<0>(rest, size, out);
    case 1: return image_row_of<1>(rest, size, out);
    case 2: return image_row_of<2>(rest, size, out);
    default: return image_row_of<3>(rest, size, out);
  }
}

// Image g's head output (in the image's labelling) mapped to the cell's own: the output for
// species a of the image is that of species kImageSpecies[g][a] of the cell. direct: dF per
// species; equivariant: c_ab, d_ab (both indices mapped) and e_a. Returns whether cell_output's
// c_ab, d_ab are now all 0 (an equivariant density-only output); `coupled_zero`: they already are
// (the zeros are then not written again: a fill per cell was most of this function's time);
// `known_density_only`: the evaluator writes only such rows (OnnxModel::density_only_rows), so
// the check is skipped (a non-finite row then carries its NaN in e_a, where the caller tests it).
inline bool head_to_cell(Head head, const float* image_output, int g, float* cell_output, bool coupled_zero = false,
                         bool known_density_only = false) {
  const int* species = kImageSpecies[g];
  if (head == Head::kEquivariant && (known_density_only || density_only_output(image_output))) {  // c_ab, d_ab all 0
    if (!coupled_zero) std::fill(cell_output, cell_output + 2 * kSpecies * kSpecies, 0.0f);
    for (int a = 0; a < kSpecies; ++a)
      cell_output[2 * kSpecies * kSpecies + species[a]] = image_output[2 * kSpecies * kSpecies + a];
    return true;
  }
  if (head == Head::kDirect) {
    for (int a = 0; a < kSpecies; ++a)
      for (int m = 0; m < kComponents; ++m) cell_output[value_index(species[a], m)] = image_output[value_index(a, m)];
    return false;
  }
  for (int block = 0; block < 2; ++block) {  // c_ab, then d_ab
    const float* from = image_output + block * kSpecies * kSpecies;
    float* to = cell_output + block * kSpecies * kSpecies;
    for (int a = 0; a < kSpecies; ++a)
      for (int b = 0; b < kSpecies; ++b) to[species[a] * kSpecies + species[b]] = from[a * kSpecies + b];
  }
  for (int a = 0; a < kSpecies; ++a) cell_output[2 * kSpecies * kSpecies + species[a]] = image_output[2 * kSpecies * kSpecies + a];
  return false;
}

// The blend of the four images' values (v[g] weighted by w[g]) in the order
// ((image 0 + image 1) + (image 2 + image 3)): a relabelling of the cell permutes the images within
// and between the two brackets, which float addition does not notice (it is commutative), so the
// blend is the same to the last bit. Images of weight 0 are not read.
inline double image_blend(const double* w, const float* const* v, int k) {
  double term[kFlavourImages];
  for (int g = 0; g < kFlavourImages; ++g) term[g] = w[g] > 0.0 ? w[g] * static_cast<double>(v[g][k]) : 0.0;
  return (term[0] + term[1]) + (term[2] + term[3]);
}

}  // namespace dodo::runtime
