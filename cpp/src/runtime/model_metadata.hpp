// Reading and checking a model package's metadata_props (docs/model_package.md).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "../box3d/box3d.hpp"
#include "residual.hpp"

namespace dodo::runtime {

inline constexpr const char* kFormatVersion = "1";
inline constexpr const char* kFeatures = "invariants27-v1";
// The invariants, then Box3D's own answer: its six rest-frame comoving density changes and its
// growth proxy, in units of N_tot (python/dodo/training/features.py).
inline constexpr const char* kFeaturesWithBox = "invariants27+box7-v1";
// Those 34, then the shape of the ELN crossing Box3D's kernel integrates (RestFrameCell::crossing,
// 18 values: per flavour pair I+, I-, the solid-angle fraction with G > 0, both lobes' mean-direction
// lengths and the cosine between them).
inline constexpr const char* kFeaturesWithCrossing = "invariants27+box7+eln18-v1";

// Network inputs per cell for a feature set ("dodo.features"); 0 for a set this runtime does not compute.
int feature_size(const std::string& features);
// feature_size, or a refusal (DODO_ERROR_MODEL_METADATA) naming "dodo.features", its value and the
// sets this runtime computes, for any other set: the one check of the key, made before the graph's
// input width is judged by it.
int known_feature_size(const std::string& features);

// Box3D settings a caller asks for; unset fields take the model's value.
struct RequestedBox3D {
  int lebedev_order = 0;       // 0: unset
  std::string z_method;        // empty: unset
  double max_flux_factor = 0;  // 0: unset
};

// Largest self-test tolerance a package may declare, in units of N_tot: the network runs in
// float32 (errors ~1e-6); a larger tolerance would let wrong weights pass.
inline constexpr double kMaxSelfTestTolerance = 1e-3;

// Environment variable that lets a package without test vectors load (development only; off
// unless set to "1").
inline constexpr const char* kAllowUntestedModelVariable = "DODO_ALLOW_UNTESTED_MODEL";

struct TestVectors {
  std::vector<double> F_init, u, F_pred;  // [n][24], [n][4], [n][24]
  // Expected growth rate (units of N_tot) and uncertainty [n] of a package with the optional
  // outputs (docs/model_package.md); empty when the package gives none.
  std::vector<double> growth_over_ntot, uncertainty;
  std::size_t cells = 0;
  double atol_over_ntot = 1e-5;
};

struct ModelDescription {
  Head head = Head::kEquivariant;
  int input_size = kInvariants;  // feature_size("dodo.features")
  Box3DSettings box3d;
  TestVectors test_vectors;  // cells == 0 when the package has none
};

// Checks format version, features, head and output size (against the graph's K), and that the
// Box3D settings equal the requested ones. Throws Error(DODO_ERROR_MODEL_METADATA) naming the key
// and both values.
ModelDescription describe_model(const std::map<std::string, std::string>& metadata, int graph_output_size,
                                const RequestedBox3D& requested);

// Box3D settings for a model-free closure: the requested ones, defaults otherwise.
Box3DSettings box3d_settings_without_model(const RequestedBox3D& requested);

ZMethod z_method_from_name(const std::string& name);  // throws Error(DODO_ERROR_INVALID_ARGUMENT)
const char* z_method_name(ZMethod method);

}  // namespace dodo::runtime
