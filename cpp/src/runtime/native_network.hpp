// The default model's network evaluated by Dodo itself, without ONNX Runtime (issue 13).
//
// A package whose graph is the distilled density-residual ensemble (a SiLU MLP, then the gate
// on its spread and the Mahalanobis distance of its inputs; python/dodo/training/ensemble.py)
// describes that computation in the metadata entry "dodo.native_network" (docs/model_package.md):
// the names of the graph's initializers that hold its weights, and its few scalars. The runtime
// then evaluates the same arithmetic with its own kernels: float32 like the graph, weights
// transposed so that each row's outputs are computed a vector at a time with the accumulators in
// registers, and one fused pass per layer (bias, multiply-adds, SiLU). Per row of the 52-64-64-3
// student ONNX Runtime's graph (51 nodes, each a pass over memory) costs about 5,100 instructions
// on the AVX2 path, this about 3,700, and on AVX-512 it runs 1.5x the graph's rows per second
// (README, Speed).
//
// The graph stays the definition: OnnxModel checks at load that both agree on a set of rows
// (NativeNetwork::agreement), and refuses a package where they do not.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "onnx_package.hpp"

namespace dodo::runtime {

inline constexpr const char* kNativeNetworkKey = "dodo.native_network";
// v2: the log growth ratio times the distance gate, as the exporter's graph computes it since
// 2026-12-07; v1 (packages exported before): the ratio ungated. Both are evaluated.
inline constexpr const char* kNativeNetworkForm = "silu-mlp-density-residual-v2";
inline constexpr const char* kNativeNetworkFormUngatedGrowth = "silu-mlp-density-residual-v1";

class NativeNetwork {
 public:
  // From the metadata entry's JSON text and the graph's initializers. Throws
  // Error(DODO_ERROR_MODEL_METADATA) for an entry it cannot use (unknown form, a missing or
  // misshapen tensor, shapes that do not chain, an input width other than `input_size`, a head
  // pattern of another length than `output_size`).
  NativeNetwork(const std::string& description, const std::map<std::string, FloatTensor>& initializers,
                int input_size, int output_size);

  // `rows` input rows spread around the training inputs (mean + std * a fixed pattern in
  // [-2, 2]), for checking this evaluator against the graph.
  std::vector<float> probe_inputs(std::size_t rows) const;

  int input_size() const { return input_size_; }
  int output_size() const { return output_size_; }

  // Rows [0, n) of `input` (n x input_size floats) -> head (n x output_size), uncertainty (n) and
  // log growth ratio (n); the last two may be null. Thread-safe; allocates nothing.
  void evaluate(const float* input, std::size_t n, float* head, float* uncertainty, float* log_growth_ratio) const {
    kernel_(*this, input, n, head, uncertainty, log_growth_ratio);
  }
  // Layers this narrow (the last) are evaluated as dot products along their weight rows.
  static constexpr int kNarrowOutputs = 4;
  // The instruction set the kernel was compiled for: "avx512", "avx2" or "baseline".
  const char* instruction_set() const;
  // Evaluates with the kernel of `name` ("avx512", "avx2" or "baseline") instead of the widest
  // this CPU runs, so that tests can compare every kernel the CPU can run (the test suite's
  // machines would otherwise only ever run the widest); false, kernel unchanged, when this CPU
  // cannot run it or the name is none of these.
  bool use_instruction_set(const std::string& name);
  // True when the head pattern is an equivariant head's with every c_ab and d_ab 0 (the
  // density-residual ensemble's): each output row is the used correction times the pattern, so
  // its c_ab, d_ab are exactly +-0 whenever its e_a are finite, and all NaN or infinite otherwise.
  bool density_only() const { return density_only_; }

 private:
  struct Layer {
    int inputs = 0, outputs = 0, padded_outputs = 0;  // padded to whole vectors (zero weights)
    std::vector<float> weight_t;                      // [inputs][padded_outputs]; empty: weight_rows
    std::vector<float> bias;                          // [padded_outputs]
    // The last layer when narrow (at most kNarrowOutputs outputs), as dot products along its rows
    // instead of weight_t: [outputs][padded inputs], zero beyond `inputs` (the previous layer's
    // padding is 0). Empty for every other layer.
    std::vector<float> weight_rows;
  };
  static constexpr int kMaxWidth = 512;  // widest layer (padded) the stack buffers take
  static constexpr int kMaxDistanceColumns = 256;  // likewise for the distance's columns
  // The kernels (native_network.cpp), one per instruction set, chosen once at construction.
  template <int Bytes>
  friend void evaluate_rows(const NativeNetwork&, const float*, std::size_t, float*, float*, float*);
  using Kernel = void (*)(const NativeNetwork&, const float*, std::size_t, float*, float*, float*);

  int input_size_ = 0, output_size_ = 0;
  std::vector<float> input_mean_, input_std_;
  std::vector<Layer> layers_;  // SiLU after every layer but the last
  float r_scale_ = 1, sigma_floor_ = 0, error_per_spread_ = 0, sigma0_ = 1, tiny_ = 0, d2_max_ = 1;
  int distance_columns_ = 0;
  std::vector<float> feature_mean_;
  // The Mahalanobis form c^T P c in double as a sum over i <= j: its upper triangle, row-major
  // (Q_ii = P_ii, Q_ij = P_ij + P_ji for j > i), so that each product is taken once.
  std::vector<double> feature_mean_double_, distance_form_;
  std::vector<float> input_inverse_std_;  // 1 / input_std_: a multiply per input, not a division
  std::vector<float> pattern_;  // head output per unit of the used correction
  bool density_only_ = false;
  bool growth_gated_ = true;  // form v2 (see kNativeNetworkForm)
  Kernel kernel_ = nullptr;
};

}  // namespace dodo::runtime
