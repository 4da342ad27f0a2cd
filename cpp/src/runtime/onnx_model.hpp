// One ONNX Runtime session over a model package (docs/model_package.md): input `invariants`
// float32 [N, 27], output `head_output` float32 [N, K]. Intra-op threads 1 (parallelism is
// over chunks, by Dodo or by the caller); Run is called concurrently on the one session.
#pragma once

#include <cstddef>
#include <map>
#include <string>
#include <vector>

#include "ort_library.hpp"

namespace dodo::runtime {

// Buffers and pre-made tensors for evaluating up to `capacity` rows without allocating: one
// input/output tensor pair per tier of row counts, all views of the same two buffers. Tiers are
// the powers of two below a granule (capacity/32, at least 32) and then every multiple of the
// granule, so a batch of n rows runs on at most n + granule rows (rows past n are don't-care).
class EvaluationBuffers {
 public:
  EvaluationBuffers(const OrtApi* api, std::size_t capacity, int output_size);
  ~EvaluationBuffers();
  EvaluationBuffers(const EvaluationBuffers&) = delete;
  EvaluationBuffers& operator=(const EvaluationBuffers&) = delete;

  float* input_row(std::size_t row) { return input_.data() + row * kInputs; }
  const float* output_row(std::size_t row) const { return output_.data() + row * output_size_; }
  std::size_t capacity() const { return capacity_; }

 private:
  friend class OnnxModel;
  static constexpr std::size_t kInputs = 27;
  const OrtApi* api_;
  std::size_t capacity_;
  int output_size_;
  std::vector<float> input_, output_;
  std::size_t tier_of(std::size_t rows) const;
  std::size_t granule_, granule_log2_;
  std::vector<OrtValue*> input_tensors_, output_tensors_;  // one per tier
};

class OnnxModel {
 public:
  // Reads the file and its metadata_props, checks the content digest (onnx_package.hpp), creates
  // the session (device "cpu" or "cuda") and checks the graph's inputs and outputs.
  OnnxModel(const OrtLibrary& library, const std::string& path, const std::string& device);
  ~OnnxModel();
  OnnxModel(const OnnxModel&) = delete;
  OnnxModel& operator=(const OnnxModel&) = delete;

  const std::map<std::string, std::string>& metadata() const { return metadata_; }
  int output_size() const { return output_size_; }  // K of the graph (-1 if dynamic)
  const OrtApi* api() const { return api_; }

  // Evaluates rows [0, n) of buffers' input into its output; thread-safe for distinct buffers.
  void run(EvaluationBuffers& buffers, std::size_t n) const;

 private:
  void check_signature();

  const OrtApi* api_;
  OrtSession* session_ = nullptr;
  int output_size_ = -1;
  std::map<std::string, std::string> metadata_;
};

}  // namespace dodo::runtime
