#include "onnx_model.hpp"

#include <algorithm>
#include <fstream>
#include <iterator>
#include <memory>
#include <utility>

#include "errors.hpp"
#include "onnx_package.hpp"

namespace dodo::runtime {
namespace {

constexpr const char* kInputName = "invariants";
constexpr const char* kOutputName = "head_output";

std::size_t ceil_log2(std::size_t rows) {  // smallest t with 2^t >= rows
  std::size_t tier = 0;
  while ((std::size_t{1} << tier) < rows) ++tier;
  return tier;
}

std::string read_file(const std::string& path) {
  std::ifstream file(path, std::ios::binary);
  if (!file) throw Error(DODO_ERROR_FILE, "cannot open model file \"" + path + "\"");
  std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (file.bad()) throw Error(DODO_ERROR_FILE, "cannot read model file \"" + path + "\"");
  if (bytes.empty()) throw Error(DODO_ERROR_MODEL_FORMAT, "model file \"" + path + "\" is empty");
  return bytes;
}

// ORT prefixes some messages with its source location and C++ signature
// ("/onnxruntime_src/...cc:256 onnxruntime::Model::Model(...) Unsupported model IR version: 99");
// the user needs only the text after it.
std::string without_source_location(const std::string& message) {
  const std::size_t location = message.find(':');
  if (message.empty() || message[0] != '/' || location == std::string::npos) return message;
  const std::size_t open = message.find('(', location);
  if (open == std::string::npos) return message;
  int depth = 0;
  for (std::size_t i = open; i < message.size(); ++i) {
    if (message[i] == '(') ++depth;
    if (message[i] == ')' && --depth == 0) {
      std::size_t start = i + 1;
      if (message.compare(start, 6, " const") == 0) start += 6;
      while (start < message.size() && message[start] == ' ') ++start;
      return start < message.size() ? message.substr(start) : message;
    }
  }
  return message;
}

// Releases ORT objects on every path out of a scope.
template <typename T>
struct OrtReleaser {
  const OrtApi* api;
  void (*release)(T*);
  void operator()(T* object) const {
    if (object) release(object);
  }
};

}  // namespace

std::size_t EvaluationBuffers::tier_of(std::size_t rows) const {
  if (rows <= granule_) return ceil_log2(rows);
  return granule_log2_ + (rows + granule_ - 1) / granule_ - 1;
}

EvaluationBuffers::EvaluationBuffers(const OrtApi* api, std::size_t capacity, int output_size)
    : api_(api), capacity_(std::size_t{1} << ceil_log2(capacity)), output_size_(output_size) {
  granule_ = std::max<std::size_t>(std::min<std::size_t>(32, capacity_), capacity_ / 32);
  granule_log2_ = ceil_log2(granule_);
  input_.assign(capacity_ * kInputs, 0.0f);
  output_.assign(capacity_ * static_cast<std::size_t>(output_size_), 0.0f);
  OrtMemoryInfo* memory = nullptr;
  check_ort(api_, api_->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory), "creating memory info");
  std::unique_ptr<OrtMemoryInfo, OrtReleaser<OrtMemoryInfo>> memory_guard(memory, {api_, api_->ReleaseMemoryInfo});
  try {
    for (std::size_t rows = 1; rows <= capacity_; rows = rows < granule_ ? 2 * rows : rows + granule_) {
      int64_t input_shape[2] = {static_cast<int64_t>(rows), static_cast<int64_t>(kInputs)};
      int64_t output_shape[2] = {static_cast<int64_t>(rows), output_size_};
      OrtValue* input = nullptr;
      check_ort(api_,
                api_->CreateTensorWithDataAsOrtValue(memory, input_.data(), rows * kInputs * sizeof(float), input_shape, 2,
                                                     ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &input),
                "creating the input tensor");
      input_tensors_.push_back(input);
      OrtValue* output = nullptr;
      check_ort(api_,
                api_->CreateTensorWithDataAsOrtValue(memory, output_.data(), rows * output_size_ * sizeof(float),
                                                     output_shape, 2, ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &output),
                "creating the output tensor");
      output_tensors_.push_back(output);
    }
  } catch (...) {
    for (OrtValue* value : input_tensors_) api_->ReleaseValue(value);
    for (OrtValue* value : output_tensors_) api_->ReleaseValue(value);
    throw;
  }
}

EvaluationBuffers::~EvaluationBuffers() {
  for (OrtValue* value : input_tensors_) api_->ReleaseValue(value);
  for (OrtValue* value : output_tensors_) api_->ReleaseValue(value);
}

OnnxModel::OnnxModel(const OrtLibrary& library, const std::string& path, const std::string& device)
    : api_(library.api) {
  const std::string bytes = read_file(path);
  // Our own reading of the file comes first: a damaged or altered file is refused by its digest
  // before ONNX Runtime parses it, and the metadata is read once, the same way for every caller.
  try {
    PackageContents package = read_package(bytes);
    verify_content_digest(package);
    metadata_ = std::move(package.metadata);
  } catch (const Error& error) {
    throw Error(error.status(), "model file \"" + path + "\": " + error.what());
  }
  OrtSessionOptions* options = nullptr;
  check_ort(api_, api_->CreateSessionOptions(&options), "creating session options");
  std::unique_ptr<OrtSessionOptions, OrtReleaser<OrtSessionOptions>> options_guard(options,
                                                                                   {api_, api_->ReleaseSessionOptions});
  // One intra-op thread: measured faster for chunked evaluation (architecture.md).
  check_ort(api_, api_->SetIntraOpNumThreads(options, 1), "setting intra-op threads");
  check_ort(api_, api_->SetInterOpNumThreads(options, 1), "setting inter-op threads");
  check_ort(api_, api_->SetSessionExecutionMode(options, ORT_SEQUENTIAL), "setting execution mode");
  check_ort(api_, api_->SetSessionGraphOptimizationLevel(options, ORT_ENABLE_ALL), "setting optimisation level");
  check_ort(api_, api_->SetSessionLogSeverityLevel(options, ORT_LOGGING_LEVEL_FATAL), "setting log level");
  if (device == "cuda") {
    OrtCUDAProviderOptionsV2* cuda = nullptr;
    check_ort(api_, api_->CreateCUDAProviderOptions(&cuda), "creating CUDA provider options");
    OrtStatus* appended = api_->SessionOptionsAppendExecutionProvider_CUDA_V2(options, cuda);
    api_->ReleaseCUDAProviderOptions(cuda);
    check_ort(api_, appended, "enabling the CUDA execution provider (needs onnxruntime-gpu)");
  } else if (device != "cpu") {
    throw Error(DODO_ERROR_INVALID_ARGUMENT, "unknown device \"" + device + "\" (known: \"cpu\", \"cuda\")");
  }
  OrtStatus* created = api_->CreateSessionFromArray(library.env, bytes.data(), bytes.size(), options, &session_);
  if (created) {
    std::string message = std::string("cannot load \"") + path + "\" as an ONNX model: " +
                          without_source_location(api_->GetErrorMessage(created));
    api_->ReleaseStatus(created);
    throw Error(DODO_ERROR_MODEL_FORMAT, message);
  }
  try {
    check_signature();
  } catch (...) {
    api_->ReleaseSession(session_);
    throw;
  }
}

OnnxModel::~OnnxModel() {
  if (session_) api_->ReleaseSession(session_);
}

void OnnxModel::check_signature() {
  OrtAllocator* allocator = nullptr;
  check_ort(api_, api_->GetAllocatorWithDefaultOptions(&allocator), "getting the default allocator");
  size_t inputs = 0, outputs = 0;
  check_ort(api_, api_->SessionGetInputCount(session_, &inputs), "counting inputs");
  check_ort(api_, api_->SessionGetOutputCount(session_, &outputs), "counting outputs");
  if (inputs != 1 || outputs < 1)
    throw Error(DODO_ERROR_MODEL_FORMAT, "model must have exactly one input (\"invariants\") and an output "
                                         "\"head_output\"; it has " + std::to_string(inputs) + " inputs and " +
                                             std::to_string(outputs) + " outputs");

  auto name_of = [&](bool input, size_t index) {
    char* name = nullptr;
    check_ort(api_, input ? api_->SessionGetInputName(session_, index, allocator, &name)
                          : api_->SessionGetOutputName(session_, index, allocator, &name),
              "reading a graph name");
    std::string copy = name;
    allocator->Free(allocator, name);
    return copy;
  };
  // Shape of a float tensor, or an error naming what is wrong.
  auto float_shape = [&](bool input, size_t index, const std::string& name) {
    OrtTypeInfo* type_info = nullptr;
    check_ort(api_, input ? api_->SessionGetInputTypeInfo(session_, index, &type_info)
                          : api_->SessionGetOutputTypeInfo(session_, index, &type_info),
              "reading a graph type");
    std::unique_ptr<OrtTypeInfo, OrtReleaser<OrtTypeInfo>> guard(type_info, {api_, api_->ReleaseTypeInfo});
    const OrtTensorTypeAndShapeInfo* tensor = nullptr;
    check_ort(api_, api_->CastTypeInfoToTensorInfo(type_info, &tensor), "reading a tensor type");
    if (!tensor) throw Error(DODO_ERROR_MODEL_FORMAT, "graph value \"" + name + "\" is not a tensor");
    ONNXTensorElementDataType element{};
    check_ort(api_, api_->GetTensorElementType(tensor, &element), "reading an element type");
    if (element != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw Error(DODO_ERROR_MODEL_FORMAT, "graph value \"" + name + "\" must be float32 (export the model in fp32)");
    size_t rank = 0;
    check_ort(api_, api_->GetDimensionsCount(tensor, &rank), "reading a rank");
    std::vector<int64_t> dims(rank);
    check_ort(api_, api_->GetDimensions(tensor, dims.data(), rank), "reading dimensions");
    return dims;
  };

  const std::string input = name_of(true, 0);
  if (input != kInputName)
    throw Error(DODO_ERROR_MODEL_FORMAT, "model input is named \"" + input + "\"; the contract says \"invariants\"");
  std::vector<int64_t> input_dims = float_shape(true, 0, input);
  if (input_dims.size() != 2 || input_dims[1] != 27 || input_dims[0] > 0)
    throw Error(DODO_ERROR_MODEL_FORMAT, "model input \"invariants\" must have shape [N, 27] with a dynamic N");

  for (size_t index = 0; index < outputs; ++index) {
    if (name_of(false, index) != kOutputName) continue;
    if (index != 0) throw Error(DODO_ERROR_MODEL_FORMAT, "\"head_output\" must be the model's first output");
    std::vector<int64_t> output_dims = float_shape(false, index, kOutputName);
    if (output_dims.size() != 2 || output_dims[0] > 0)
      throw Error(DODO_ERROR_MODEL_FORMAT, "model output \"head_output\" must have shape [N, K] with a dynamic N");
    output_size_ = static_cast<int>(output_dims[1]);
    return;
  }
  throw Error(DODO_ERROR_MODEL_FORMAT, "model has no output named \"head_output\"");
}

void OnnxModel::run(EvaluationBuffers& buffers, std::size_t n) const {
  if (n == 0) return;
  const std::size_t tier = buffers.tier_of(n);
  const char* input_names[] = {kInputName};
  const char* output_names[] = {kOutputName};
  check_ort(api_,
            api_->Run(session_, nullptr, input_names, &buffers.input_tensors_[tier], 1, output_names, 1,
                      &buffers.output_tensors_[tier]),
            "evaluating the network");
}

}  // namespace dodo::runtime
