// One ONNX Runtime session over a model package (docs/model_package.md): input `invariants`
// float32 [N, F] (F = 27, or 34 for "invariants27+box7-v1"), output `head_output` float32 [N, K], and the optional per-cell outputs
// `uncertainty` and `log_growth_ratio` float32 [N] that the package declares in "dodo.outputs".
// Intra-op threads 1 (parallelism is over chunks, by Dodo or by the caller); Run is called
// concurrently on the one session.
#pragma once

#include <cstddef>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "../conventions.hpp"
#include "native_network.hpp"
#include "onnx_package.hpp"
#include "ort_library.hpp"

namespace dodo::runtime {

// Which optional per-cell outputs a package's graph has (metadata "dodo.outputs").
struct OptionalOutputs {
  bool uncertainty = false;       // spread of the correction, units of N_tot
  bool log_growth_ratio = false;  // ln(growth rate / Box3D's proxy)
};

// Buffers and pre-made tensors for evaluating up to `capacity` rows without allocating: one
// input/output tensor pair (and optional-output tensors) per tier of row counts, all views of the
// same buffers. Tiers are
// the powers of two below a granule (capacity/32, at least 32) and then every multiple of the
// granule, so a batch of n rows runs on at most n + granule rows (rows past n are don't-care).
class EvaluationBuffers {
 public:
  EvaluationBuffers(const OrtApi* api, std::size_t capacity, int input_size, int output_size,
                    OptionalOutputs optional = {});
  ~EvaluationBuffers();
  EvaluationBuffers(const EvaluationBuffers&) = delete;
  EvaluationBuffers& operator=(const EvaluationBuffers&) = delete;

  float* input_row(std::size_t row) { return input_.data() + row * input_size_; }
  std::size_t input_size() const { return input_size_; }
  const float* output_row(std::size_t row) const { return output_.data() + row * output_size_; }
  // Per-row optional outputs; null when the model has no such output.
  const float* uncertainty() const { return uncertainty_.empty() ? nullptr : uncertainty_.data(); }
  const float* log_growth_ratio() const { return log_growth_ratio_.empty() ? nullptr : log_growth_ratio_.data(); }
  std::size_t capacity() const { return capacity_; }

 private:
  friend class OnnxModel;
  const OrtApi* api_;
  std::size_t capacity_;
  std::size_t input_size_;
  int output_size_;
  std::vector<float> input_, output_;
  std::size_t tier_of(std::size_t rows) const;
  std::size_t next_tier_rows(std::size_t rows) const;  // row count of the tier after `rows`
  std::size_t granule_, granule_log2_;
  std::vector<OrtValue*> input_tensors_, output_tensors_;  // one per tier
  std::vector<float> uncertainty_, log_growth_ratio_;      // empty when the model lacks them
  std::vector<OrtValue*> uncertainty_tensors_, log_growth_ratio_tensors_;  // one per tier
};

// Where the network runs: the CPU, or CUDA device `cuda_device` through ONNX Runtime's CUDA
// execution provider (needs an onnxruntime-gpu library).
struct DeviceSelection {
  bool cuda = false;
  int cuda_device = 0;
};

// Parses "cpu", "cuda" (device 0) or "cuda:N"; throws Error(DODO_ERROR_INVALID_ARGUMENT) otherwise.
DeviceSelection parse_device(const std::string& device);

// The bytes of a model file. Error(DODO_ERROR_FILE) when it does not exist, cannot be read, or is
// a directory, device, FIFO or socket; Error(DODO_ERROR_MODEL_FORMAT) when it is empty or larger
// than DODO_MAX_MODEL_FILE_BYTES (refused before reading where stat knows the size).
std::string read_model_file(const std::string& path);

class OnnxModel {
 public:
  // Reads the package's metadata_props from `bytes`, checks the content digest (onnx_package.hpp),
  // creates the session on `device` and checks the graph's inputs and outputs. `source` names the
  // bytes in messages ("model file \"x.onnx\"", "model in memory (N bytes)"), `origin` says which
  // (the words of a refusal: a buffer is no file). The bytes are not kept: the caller may free them
  // once this returns.
  // On the CPU, a package that describes its network for Dodo's own evaluator
  // ("dodo.native_network", native_network.hpp) is evaluated by it unless `allow_native` is false;
  // the description must reproduce the graph on probe rows, or the package is refused.
  OnnxModel(const OrtLibrary& library, std::string_view bytes, const std::string& source, PackageOrigin origin,
            const DeviceSelection& device, bool allow_native = true);
  ~OnnxModel();
  OnnxModel(const OnnxModel&) = delete;
  OnnxModel& operator=(const OnnxModel&) = delete;

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  int output_size() const { return output_size_; }  // K of the graph (-1 if dynamic)
  int input_size() const { return input_size_; }    // features per row ("dodo.features")
  const OptionalOutputs& optional_outputs() const { return optional_outputs_; }
  const OrtApi* api() const { return api_; }
  // "native" (Dodo's evaluator of the package's network) or "onnxruntime".
  const char* evaluator() const { return native_ ? "native" : "onnxruntime"; }

  // True when run() evaluates with the native evaluator a density-only head (NativeNetwork::
  // density_only): an output row is then finite exactly when its e_a are, and its c_ab, d_ab are 0.
  bool density_only_rows() const { return native_ && native_->density_only(); }
  // Evaluates rows [0, n) of buffers' input into its output; thread-safe for distinct buffers.
  void run(EvaluationBuffers& buffers, std::size_t n) const;

 private:
  void check_signature();
  void check_computed_shape();
  // Checks "dodo.outputs" against the graph and sets optional_outputs_.
  void check_declared_outputs();
  // Refuses a native description that does not reproduce the graph (head, uncertainty, growth)
  // on probe rows; false when every probe row's correction is 0 (nothing to compare).
  bool check_native_agreement() const;
  // Evaluates rows [0, n) with ONNX Runtime, whatever evaluator run() uses.
  void run_graph(EvaluationBuffers& buffers, std::size_t n) const;

  const OrtApi* api_;
  OrtSession* session_ = nullptr;
  int output_size_ = -1;
  int input_size_ = kInvariants;
  OptionalOutputs optional_outputs_;
  std::map<std::string, std::string> metadata_;
  std::unique_ptr<NativeNetwork> native_;
};

}  // namespace dodo::runtime
