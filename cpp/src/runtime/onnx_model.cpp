#include "onnx_model.hpp"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <limits>
#include <memory>
#include <new>
#include <set>
#include <utility>

#include "errors.hpp"
#include "json.hpp"
#include "memory_limit.hpp"
#include "model_metadata.hpp"
#include "onnx_package.hpp"

namespace dodo::runtime {
namespace {

constexpr const char* kInputName = "invariants";
constexpr const char* kOutputName = "head_output";
// Optional per-cell outputs (docs/model_package.md), used only when "dodo.outputs" declares them.
constexpr const char* kUncertaintyName = "uncertainty";
constexpr const char* kLogGrowthRatioName = "log_growth_ratio";
constexpr const char* kOutputsKey = "dodo.outputs";

std::size_t ceil_log2(std::size_t rows) {  // smallest t with 2^t >= rows
  std::size_t tier = 0;
  while ((std::size_t{1} << tier) < rows) ++tier;
  return tier;
}

// ORT prefixes some messages with its source location and C++ signature
// ("/onnxruntime_src/...cc:256 onnxruntime::Model::Model(...) Unsupported model IR version: 99");
// the user needs only the text after it. ORT ends some with a line break ("Unsupported model IR
// version: 99, max supported IR version: 14\n", the opset warnings), which the runtime's one-line
// messages then carried to the host's buffer and log (outside probe, C round 31): line breaks
// inside become spaces, those at the end are dropped.
std::string without_source_location_raw(const std::string& message);
// The locations inside a message ("Status Message: /onnxruntime_src/...h:91 onnxruntime::...(...)",
// a kernel's failure at the probe evaluation) go too: ort_message_text (C round 33).
std::string without_source_location(const std::string& message) {
  return ort_message_text(without_source_location_raw(message));
}
std::string without_source_location_raw(const std::string& message) {
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

// Appends ONNX Runtime's CUDA execution provider for device `device_id`. A library built without
// it (the CPU wheel) is refused up front with a message that says what to install, instead of
// ORT's own text about a provider library it failed to dlopen.
// library_path: the library this process loaded, named in the refusal, since a process keeps the
// first it loads: a second try in the same process naming onnxruntime-gpu's library got the same
// refusal and the same advice (outside probe, new user's journey round three).
void enable_cuda(const OrtApi* api, OrtSessionOptions* options, int device_id, const std::string& library_path) {
  char** providers = nullptr;
  int count = 0;
  check_ort(api, api->GetAvailableProviders(&providers, &count), "listing execution providers");
  bool available = false;
  std::string names;
  for (int i = 0; i < count; ++i) {
    available = available || std::string(providers[i]) == "CUDAExecutionProvider";
    names += (i ? ", " : "") + std::string(providers[i]);
  }
  if (OrtStatus* released = api->ReleaseAvailableProviders(providers, count)) api->ReleaseStatus(released);
  if (!available)
    throw Error(DODO_ERROR_ONNXRUNTIME_UNAVAILABLE,
                "device cuda:" + std::to_string(device_id) +
                    " requested, but the ONNX Runtime library this process loaded (" + quoted_path(library_path) +
                    ") has no CUDA execution provider (it offers: " + names +
                    "); install onnxruntime-gpu and point onnxruntime_library or DODO_ONNXRUNTIME_LIBRARY at its "
                    "libonnxruntime.so in a new process (a process keeps the first ONNX Runtime library it loads), "
                    "or use the CPU");
  OrtCUDAProviderOptionsV2* cuda = nullptr;
  check_ort(api, api->CreateCUDAProviderOptions(&cuda), "creating CUDA provider options");
  const std::string id = std::to_string(device_id);
  const char* keys[] = {"device_id"};
  const char* values[] = {id.c_str()};
  OrtStatus* updated = api->UpdateCUDAProviderOptions(cuda, keys, values, 1);
  OrtStatus* appended = updated ? nullptr : api->SessionOptionsAppendExecutionProvider_CUDA_V2(options, cuda);
  api->ReleaseCUDAProviderOptions(cuda);
  check_ort(api, updated, ("selecting CUDA device " + id).c_str());
  check_ort(api, appended, ("enabling the CUDA execution provider on device " + id).c_str());
}

}  // namespace

// Reads a model file, refusing before reading anything that cannot be a model package: a
// directory, a device (/dev/zero never ends), a FIFO (would block) or a socket, and files larger
// than DODO_MAX_MODEL_FILE_BYTES. Files whose size stat does not know (/proc) are read up to the
// limit.
std::string read_model_file(const std::string& path) {
  const std::string quoted = quoted_path(path);
  // O_NONBLOCK: opening a FIFO must not wait for a writer; regular files ignore the flag.
  const int fd = ::open(path.c_str(), O_RDONLY | O_NONBLOCK | O_CLOEXEC);
  if (fd < 0) {
    const int error = errno;
    if (error == ENOENT) {
      // a link to nothing on the path is named (outside probe, C round forty: "does not exist" of a link `ls` shows)
      const std::string dangling = dangling_link_of(path);
      std::string problem = dangling.empty() ? " does not exist" : " is " + dangling;
      // A relative path after the working directory was removed names nothing, whatever files
      // exist: said so, in Python's words (outside probe, C round forty-two; round forty-one's
      // "true but not naming the cause").
      char directory[4096];
      if (dangling.empty() && !path.empty() && path[0] != '/' && !::getcwd(directory, sizeof directory) &&
          errno == ENOENT)
        problem += " (the current directory was removed, so relative paths name nothing: give an absolute path, "
                   "or chdir into the directory again)";
      throw Error(DODO_ERROR_FILE, "model file " + quoted + problem, error);
    }
    throw Error(DODO_ERROR_FILE, "cannot open model file " + quoted + ": " + std::strerror(error), error);
  }
  struct Closer {
    int fd;
    ~Closer() { ::close(fd); }
  } closer{fd};
  struct stat info {};
  if (::fstat(fd, &info) != 0) {
    const int error = errno;
    throw Error(DODO_ERROR_FILE, "cannot stat model file " + quoted + ": " + std::strerror(error), error);
  }
  if (S_ISDIR(info.st_mode)) throw Error(DODO_ERROR_FILE, "model path " + quoted + " is a directory, not a model file");
  if (!S_ISREG(info.st_mode))
    throw Error(DODO_ERROR_FILE, "model path " + quoted + " is not a regular file (a device, FIFO or socket)");
  constexpr std::size_t limit = DODO_MAX_MODEL_FILE_BYTES;
  auto too_large = [&](const std::string& size) {
    return Error(DODO_ERROR_MODEL_FORMAT, "model file " + quoted + " is " + size + " bytes; a model package is at most " +
                                              std::to_string(limit) + " bytes (DODO_MAX_MODEL_FILE_BYTES)");
  };
  if (static_cast<unsigned long long>(info.st_size) > limit) throw too_large(std::to_string(info.st_size));
  // Blocking reads from here on (the file is regular).
  ::fcntl(fd, F_SETFL, ::fcntl(fd, F_GETFL) & ~O_NONBLOCK);
  std::string bytes;
  try {
    bytes.resize(static_cast<std::size_t>(info.st_size) + 1);  // + 1: EOF needs no regrowth
  } catch (const std::bad_alloc&) {  // said what needed the memory, not "out of memory" alone (C round 43)
    throw Error(DODO_ERROR_OUT_OF_MEMORY, "not enough memory to read model file " + quoted + " (" +
                                              std::to_string(info.st_size) + " bytes): " +
                                              memory_shortage_cause(static_cast<double>(info.st_size)));
  }
  std::size_t have = 0;
  while (true) {
    if (have == bytes.size()) {
      if (bytes.size() > limit) throw too_large("more than " + std::to_string(limit));
      bytes.resize(std::min<std::size_t>(limit + 1, std::max<std::size_t>(2 * bytes.size(), 1 << 16)));
    }
    const ssize_t got = ::read(fd, &bytes[have], bytes.size() - have);
    if (got < 0) {
      const int error = errno;
      if (error == EINTR) continue;
      throw Error(DODO_ERROR_FILE, "cannot read model file " + quoted + ": " + std::strerror(error), error);
    }
    if (got == 0) break;
    have += static_cast<std::size_t>(got);
  }
  bytes.resize(have);
  if (bytes.size() > limit) throw too_large("more than " + std::to_string(limit));
  if (bytes.empty()) throw Error(DODO_ERROR_MODEL_FORMAT, "model file " + quoted + " is empty");
  return bytes;
}

DeviceSelection parse_device(const std::string& device) {
  DeviceSelection selection;
  if (device == "cpu") return selection;
  selection.cuda = true;
  if (device == "cuda") return selection;
  const std::string prefix = "cuda:";
  const std::string number = device.compare(0, prefix.size(), prefix) == 0 ? device.substr(prefix.size()) : "";
  bool digits = !number.empty() && number.size() <= 6;
  for (char c : number) digits = digits && c >= '0' && c <= '9';
  if (!digits)
    throw Error(DODO_ERROR_INVALID_ARGUMENT,  // the device quoted bounded (C round 26)
                "unknown device " + quoted_value(device) + " (known: \"cpu\", \"cuda\", \"cuda:N\")");
  selection.cuda_device = std::stoi(number);
  return selection;
}

std::size_t EvaluationBuffers::tier_of(std::size_t rows) const {
  if (rows <= granule_) return ceil_log2(rows);
  return granule_log2_ + (rows + granule_ - 1) / granule_ - 1;
}

std::size_t EvaluationBuffers::next_tier_rows(std::size_t rows) const {
  return rows < granule_ ? 2 * rows : rows + granule_;
}

EvaluationBuffers::EvaluationBuffers(const OrtApi* api, std::size_t capacity, int input_size, int output_size,
                                     OptionalOutputs optional)
    : api_(api),
      capacity_(std::size_t{1} << ceil_log2(capacity)),
      input_size_(static_cast<std::size_t>(input_size)),
      output_size_(output_size) {
  granule_ = std::max<std::size_t>(std::min<std::size_t>(32, capacity_), capacity_ / 32);
  granule_log2_ = ceil_log2(granule_);
  input_.assign(capacity_ * input_size_, 0.0f);
  output_.assign(capacity_ * static_cast<std::size_t>(output_size_), 0.0f);
  if (optional.uncertainty) uncertainty_.assign(capacity_, 0.0f);
  if (optional.log_growth_ratio) log_growth_ratio_.assign(capacity_, 0.0f);
  OrtMemoryInfo* memory = nullptr;
  check_ort(api_, api_->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory), "creating memory info");
  std::unique_ptr<OrtMemoryInfo, OrtReleaser<OrtMemoryInfo>> memory_guard(memory, {api_, api_->ReleaseMemoryInfo});
  try {
    for (std::size_t rows = 1; rows <= capacity_; rows = next_tier_rows(rows)) {
      int64_t input_shape[2] = {static_cast<int64_t>(rows), static_cast<int64_t>(input_size_)};
      int64_t output_shape[2] = {static_cast<int64_t>(rows), output_size_};
      OrtValue* input = nullptr;
      check_ort(api_,
                api_->CreateTensorWithDataAsOrtValue(memory, input_.data(), rows * input_size_ * sizeof(float), input_shape, 2,
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
    // Rank-1 views [rows] of the optional outputs' buffers, one per tier like the others.
    for (auto [buffer, tensors] : {std::pair{&uncertainty_, &uncertainty_tensors_},
                                   std::pair{&log_growth_ratio_, &log_growth_ratio_tensors_}}) {
      if (buffer->empty()) continue;
      for (std::size_t rows = 1; rows <= capacity_; rows = next_tier_rows(rows)) {
        int64_t shape[1] = {static_cast<int64_t>(rows)};
        OrtValue* value = nullptr;
        check_ort(api_,
                  api_->CreateTensorWithDataAsOrtValue(memory, buffer->data(), rows * sizeof(float), shape, 1,
                                                       ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &value),
                  "creating an optional output tensor");
        tensors->push_back(value);
      }
    }
  } catch (...) {
    for (auto* tensors : {&input_tensors_, &output_tensors_, &uncertainty_tensors_, &log_growth_ratio_tensors_})
      for (OrtValue* value : *tensors) api_->ReleaseValue(value);
    throw;
  }
}

EvaluationBuffers::~EvaluationBuffers() {
  for (auto* tensors : {&input_tensors_, &output_tensors_, &uncertainty_tensors_, &log_growth_ratio_tensors_})
    for (OrtValue* value : *tensors) api_->ReleaseValue(value);
}

OnnxModel::OnnxModel(const OrtLibrary& library, std::string_view bytes, const std::string& source,
                     PackageOrigin origin, const DeviceSelection& device, bool allow_native)
    : api_(library.api) {
  if (bytes.empty()) throw Error(DODO_ERROR_MODEL_FORMAT, source + " is empty");
  // The same bound as for files (read_model_file), so a package in memory gets no more than one on disk.
  if (bytes.size() > DODO_MAX_MODEL_FILE_BYTES)
    throw Error(DODO_ERROR_MODEL_FORMAT, source + " is larger than a model package may be: at most " +
                                             std::to_string(DODO_MAX_MODEL_FILE_BYTES) + " bytes (DODO_MAX_MODEL_FILE_BYTES)");
  // Our own reading of the bytes comes first: a damaged or altered package is refused by its
  // digest before ONNX Runtime parses it, and the metadata is read once, the same way for every caller.
  try {
    PackageContents package = read_package(bytes, origin);
    verify_content_digest(package);
    refuse_graph_operators(package);
    metadata_ = std::move(package.metadata);
  } catch (const Error& error) {
    throw Error(error.status(), source + ": " + error.what());
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
  for (const auto& [key, value] : session_memory_cap_entries())  // the memory cap (ort_library.hpp)
    check_ort(api_, api_->AddSessionConfigEntry(options, key, value), "configuring the session's memory");
  if (device.cuda) enable_cuda(api_, options, device.cuda_device, library.path);
  OrtStatus* created = api_->CreateSessionFromArray(library.env, bytes.data(), bytes.size(), options, &session_);
  if (created) {
    const std::string ort_text = without_source_location(api_->GetErrorMessage(created));
    api_->ReleaseStatus(created);
    if (ran_out_of_memory(ort_text))  // the process's memory, not the package (C round 38)
      throw Error(DODO_ERROR_OUT_OF_MEMORY, "loading " + source + " into ONNX Runtime: " + ort_text + out_of_memory_note());
    throw Error(DODO_ERROR_MODEL_FORMAT, "cannot load " + source + " as an ONNX model: " + ort_text);
  }
  try {
    check_signature();
    check_declared_outputs();
    check_computed_shape();
    const auto native = metadata_.find(kNativeNetworkKey);
    if (native != metadata_.end() && allow_native && !device.cuda && output_size_ > 0) {
      native_ = std::make_unique<NativeNetwork>(native->second, read_float_initializers(bytes), input_size_,
                                                output_size_);
      if (!check_native_agreement()) native_.reset();
    }
  } catch (const Error& error) {
    api_->ReleaseSession(session_);
    throw Error(error.status(), source + ": " + error.what());
  } catch (...) {
    api_->ReleaseSession(session_);
    throw;
  }
}

// A graph may declare head_output [N, K] and compute another shape; the runtime's buffers are
// sized from the declaration, so one evaluation with ORT's own output allocation checks what the
// graph really returns before any caller's data goes through it (issue 11, item 14).
void OnnxModel::check_computed_shape() {
  if (output_size_ < 1) return;  // dynamic K: describe_model refuses it against the head
  const std::size_t width = static_cast<std::size_t>(input_size_);
  const char* output_names[3] = {kOutputName, nullptr, nullptr};
  std::size_t outputs = 1;
  if (optional_outputs_.uncertainty) output_names[outputs++] = kUncertaintyName;
  if (optional_outputs_.log_growth_ratio) output_names[outputs++] = kLogGrowthRatioName;
  for (const int64_t rows : {int64_t{1}, int64_t{3}}) {
    std::vector<float> input(static_cast<std::size_t>(rows) * width, 0.0f);
    for (int64_t r = 0; r < rows; ++r) input[static_cast<std::size_t>(r) * width] = 1.0f;
    OrtMemoryInfo* memory = nullptr;
    check_ort(api_, api_->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory), "creating memory info");
    std::unique_ptr<OrtMemoryInfo, OrtReleaser<OrtMemoryInfo>> memory_guard(memory, {api_, api_->ReleaseMemoryInfo});
    const int64_t shape[2] = {rows, static_cast<int64_t>(width)};
    OrtValue* in = nullptr;
    check_ort(api_, api_->CreateTensorWithDataAsOrtValue(memory, input.data(), input.size() * sizeof(float), shape, 2,
                                                         ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT, &in),
              "creating the probe input");
    std::unique_ptr<OrtValue, OrtReleaser<OrtValue>> in_guard(in, {api_, api_->ReleaseValue});
    const char* input_names[] = {kInputName};
    OrtValue* out[3] = {nullptr, nullptr, nullptr};
    OrtStatus* ran = api_->Run(session_, nullptr, input_names, &in, 1, output_names, outputs, out);
    std::unique_ptr<OrtValue, OrtReleaser<OrtValue>> out_guards[3] = {
        {out[0], {api_, api_->ReleaseValue}}, {out[1], {api_, api_->ReleaseValue}}, {out[2], {api_, api_->ReleaseValue}}};
    if (ran) {
      const std::string ort_text = without_source_location(api_->GetErrorMessage(ran));
      api_->ReleaseStatus(ran);
      if (refused_by_memory_cap(ort_text))  // a graph that broadcasts small tensors into a huge one
        throw Error(DODO_ERROR_OUT_OF_MEMORY, "evaluating the graph on a probe batch of " + std::to_string(rows) +
                                                  " rows asked for more memory than allowed: " + ort_text + memory_cap_note());
      if (ran_out_of_memory(ort_text))  // the process's memory, not the package
        throw Error(DODO_ERROR_OUT_OF_MEMORY, "evaluating the graph on a probe batch of " + std::to_string(rows) +
                                                  " rows: " + ort_text + out_of_memory_note());
      throw Error(DODO_ERROR_MODEL_FORMAT, "evaluating the graph on a probe batch failed: " + ort_text);
    }
    for (std::size_t o = 0; o < outputs; ++o) {
      OrtTensorTypeAndShapeInfo* info = nullptr;
      check_ort(api_, api_->GetTensorTypeAndShape(out[o], &info), "reading the probe output's shape");
      std::unique_ptr<OrtTensorTypeAndShapeInfo, OrtReleaser<OrtTensorTypeAndShapeInfo>> info_guard(
          info, {api_, api_->ReleaseTensorTypeAndShapeInfo});
      ONNXTensorElementDataType element{};
      check_ort(api_, api_->GetTensorElementType(info, &element), "reading the probe output's type");
      std::size_t rank = 0;
      check_ort(api_, api_->GetDimensionsCount(info, &rank), "reading the probe output's rank");
      std::vector<int64_t> dims(rank);
      check_ort(api_, api_->GetDimensions(info, dims.data(), rank), "reading the probe output's dimensions");
      // head_output [N, K]; the optional per-cell outputs [N].
      const bool head = o == 0;
      const bool right = element == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT && rank == (head ? 2u : 1u) && dims[0] == rows &&
                         (!head || dims[1] == output_size_);
      if (!right) {
        std::string computed;
        for (std::size_t d = 0; d < rank; ++d) computed += (d ? ", " : "") + std::to_string(dims[d]);
        throw Error(DODO_ERROR_MODEL_FORMAT, "graph declares \"" + std::string(output_names[o]) + "\" float32 [N" +
                                                 (head ? ", " + std::to_string(output_size_) : std::string()) +
                                                 "] but computes [" + computed + "] for N = " + std::to_string(rows) +
                                                 (element != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT ? " (not float32)" : ""));
      }
    }
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
    if (!tensor) throw Error(DODO_ERROR_MODEL_FORMAT, "graph value " + quoted_value(name) + " is not a tensor");
    ONNXTensorElementDataType element{};
    check_ort(api_, api_->GetTensorElementType(tensor, &element), "reading an element type");
    if (element != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)
      throw Error(DODO_ERROR_MODEL_FORMAT, "graph value " + quoted_value(name) + " must be float32 (export the model in fp32)");
    size_t rank = 0;
    check_ort(api_, api_->GetDimensionsCount(tensor, &rank), "reading a rank");
    std::vector<int64_t> dims(rank);
    check_ort(api_, api_->GetDimensions(tensor, dims.data(), rank), "reading dimensions");
    return dims;
  };

  const std::string input = name_of(true, 0);
  if (input != kInputName)
    throw Error(DODO_ERROR_MODEL_FORMAT, "model input is named " + quoted_value(input) + "; the contract says \"invariants\"");
  std::vector<int64_t> input_dims = float_shape(true, 0, input);
  // Row width of the package's feature set: an unknown set is refused here, by its key, before the
  // graph's width is judged by it (a package without the key is refused by describe_model).
  const auto features = metadata_.find("dodo.features");
  input_size_ = features == metadata_.end() ? kInvariants : known_feature_size(features->second);
  // A dynamic N is -1 to ONNX Runtime; a declared 0 is a fixed 0 rows, which passed as dynamic and was
  // refused only by the first evaluation, in ONNX Runtime's words (outside probe of the C side,
  // round twenty; head_output's [0, K] as DODO_ERROR_ONNXRUNTIME).
  if (input_dims.size() != 2 || input_dims[1] != input_size_ || input_dims[0] >= 0) {
    std::string shape;
    for (const int64_t dim : input_dims) shape += (shape.empty() ? "" : ", ") + (dim < 0 ? std::string("N") : std::to_string(dim));
    throw Error(DODO_ERROR_MODEL_FORMAT, "model input \"invariants\" must have shape [N, " + std::to_string(input_size_) +
                                             "] with a dynamic N" +
                                             (features == metadata_.end() ? std::string()
                                                                          : " (metadata \"dodo.features\" is \"" +
                                                                                features->second + "\")") +
                                             "; the graph's is [" + shape + "]");
  }

  for (size_t index = 0; index < outputs; ++index) {
    if (name_of(false, index) != kOutputName) continue;
    if (index != 0) throw Error(DODO_ERROR_MODEL_FORMAT, "\"head_output\" must be the model's first output");
    std::vector<int64_t> output_dims = float_shape(false, index, kOutputName);
    // K fixed and positive: the runtime's buffers are sized from it. A dynamic K (-1) sized them
    // by (size_t)-1, "internal error: cannot create std::vector larger than max_size()"
    // (DODO_ERROR_INTERNAL), and a K beyond int was cut to its low 32 bits (outside probe of the C
    // side, round twenty).
    if (output_dims.size() != 2 || output_dims[0] >= 0 || output_dims[1] < 1 ||
        output_dims[1] > std::numeric_limits<int>::max()) {
      std::string shape;
      for (std::size_t d = 0; d < output_dims.size(); ++d)
        shape += (d ? ", " : "") + (output_dims[d] >= 0 ? std::to_string(output_dims[d]) : std::string(d ? "K" : "N"));
      throw Error(DODO_ERROR_MODEL_FORMAT, "model output \"head_output\" must have shape [N, K] with a dynamic N and a "
                                           "fixed K; the graph's is [" + shape + "]");
    }
    output_size_ = static_cast<int>(output_dims[1]);
    return;
  }
  throw Error(DODO_ERROR_MODEL_FORMAT, "model has no output named \"head_output\"");
}

void OnnxModel::run(EvaluationBuffers& buffers, std::size_t n) const {
  if (n == 0) return;
  if (native_) {
    native_->evaluate(buffers.input_.data(), n, buffers.output_.data(),
                      buffers.uncertainty_.empty() ? nullptr : buffers.uncertainty_.data(),
                      buffers.log_growth_ratio_.empty() ? nullptr : buffers.log_growth_ratio_.data());
    return;
  }
  run_graph(buffers, n);
}

bool OnnxModel::check_native_agreement() const {
  constexpr std::size_t kRows = 64;
  EvaluationBuffers graph(api_, kRows, input_size_, output_size_, optional_outputs_);
  const std::vector<float> probe = native_->probe_inputs(kRows);
  std::copy(probe.begin(), probe.end(), graph.input_row(0));
  // A failure here is the graph's, as at check_computed_shape's probe: a graph whose rows differ from
  // N only beyond 3 rows (a Concat of head_output and its rows from the fourth on) was refused as
  // DODO_ERROR_ONNXRUNTIME, "evaluating the network: ..." (outside probe, C round 33).
  try {
    run_graph(graph, kRows);
  } catch (const Error& error) {
    if (error.status() != DODO_ERROR_ONNXRUNTIME) throw;
    std::string message = error.what();
    const std::string context = "evaluating the network: ";
    if (message.compare(0, context.size(), context) == 0) message.erase(0, context.size());
    throw Error(DODO_ERROR_MODEL_FORMAT,
                "evaluating the graph on " + std::to_string(kRows) + " probe rows failed: " + message);
  }
  std::vector<float> head(kRows * static_cast<std::size_t>(output_size_)), uncertainty(kRows), growth(kRows);
  native_->evaluate(probe.data(), kRows, head.data(), uncertainty.data(), growth.data());
  // Float32 sums in another order differ by about 1e-6 of the values' scale; a description of
  // another network differs by the scale itself.
  auto check = [&](const char* what, const float* expected, const float* got, std::size_t count) {
    float scale = 0.0f;
    for (std::size_t i = 0; i < count; ++i) scale = std::max(scale, std::fabs(expected[i]));
    for (std::size_t i = 0; i < count; ++i)
      if (!(std::fabs(got[i] - expected[i]) <= 1e-3f * scale + 1e-30f))
        throw Error(DODO_ERROR_MODEL_FORMAT,
                    std::string("metadata \"") + kNativeNetworkKey + "\" does not reproduce the graph's " + what +
                        " (probe row " + std::to_string(i / std::max<std::size_t>(1, count / kRows)) + ": " +
                        number_text(got[i], 9) + " instead of " + number_text(expected[i], 9) + ")");
  };
  // The graph's own outputs at the probes, near its training data, are finite in any working
  // package. A NaN or infinite constant that the description does not read (the graph's copy of
  // error_per_spread, say) made them NaN, and the comparison below then blamed the description:
  // "does not reproduce the graph's head_output (probe row 0: 0 instead of nan)" (outside probe,
  // C round 31).
  auto finite = [&](const char* what, const float* expected, std::size_t count) {
    for (std::size_t i = 0; i < count; ++i)
      if (!std::isfinite(expected[i]))
        throw Error(DODO_ERROR_MODEL_FORMAT,
                    std::string("the graph's ") + what + " is " + (std::isnan(expected[i]) ? "NaN" : "infinite") +
                        " at probe row " + std::to_string(i / std::max<std::size_t>(1, count / kRows)) +
                        " (inputs near its training mean): a weight or constant of the graph is not finite, or "
                        "divides by zero (edited after export?)");
  };
  finite("head_output", graph.output_row(0), kRows * static_cast<std::size_t>(output_size_));
  if (graph.uncertainty()) finite("uncertainty", graph.uncertainty(), kRows);
  if (graph.log_growth_ratio()) finite("log_growth_ratio", graph.log_growth_ratio(), kRows);
  // Every probe gated off (a model whose correction is 0 there): nothing to compare, so the
  // graph keeps the evaluation.
  bool open = false;
  for (std::size_t i = 0; i < head.size(); ++i) open = open || graph.output_row(0)[i] != 0.0f;
  if (!open) return false;
  check("head_output", graph.output_row(0), head.data(), head.size());
  if (graph.uncertainty()) check("uncertainty", graph.uncertainty(), uncertainty.data(), kRows);
  if (graph.log_growth_ratio()) check("log_growth_ratio", graph.log_growth_ratio(), growth.data(), kRows);
  return true;
}

void OnnxModel::run_graph(EvaluationBuffers& buffers, std::size_t n) const {
  const std::size_t tier = buffers.tier_of(n);
  const char* input_names[] = {kInputName};
  const char* output_names[3] = {kOutputName, nullptr, nullptr};
  OrtValue* outputs[3] = {buffers.output_tensors_[tier], nullptr, nullptr};
  std::size_t count = 1;
  if (!buffers.uncertainty_tensors_.empty()) {
    output_names[count] = kUncertaintyName;
    outputs[count++] = buffers.uncertainty_tensors_[tier];
  }
  if (!buffers.log_growth_ratio_tensors_.empty()) {
    output_names[count] = kLogGrowthRatioName;
    outputs[count++] = buffers.log_growth_ratio_tensors_[tier];
  }
  check_ort(api_,
            api_->Run(session_, nullptr, input_names, &buffers.input_tensors_[tier], 1, output_names, count, outputs),
            "evaluating the network");
}

void OnnxModel::check_declared_outputs() {
  // A package from before the key declares head_output alone, and its graph is held to that: a
  // graph with more outputs but no key (a tampered package) would otherwise load with its growth
  // rate and uncertainty silently dropped.
  const auto entry = metadata_.find(kOutputsKey);
  const std::string listed = entry == metadata_.end() ? std::string("[\"") + kOutputName + "\"]" : entry->second;
  const std::string declaration = entry == metadata_.end() ? "no list (head_output alone)" : entry->second;
  const std::string prefix = std::string("metadata \"") + kOutputsKey + "\" ";
  const std::string known = "\"head_output\", \"uncertainty\", \"log_growth_ratio\"";
  std::set<std::string> declared;
  try {
    const JsonValue list = JsonValue::parse(listed);
    if (!list.is_array()) throw std::invalid_argument("not a list");
    for (const JsonValue& name : list.array()) {
      if (!name.is_string()) throw std::invalid_argument("not a list of strings");
      if (!declared.insert(name.string()).second)
        throw Error(DODO_ERROR_MODEL_METADATA, prefix + "names " + quoted_value(name.string()) + " twice");
    }
  } catch (const std::invalid_argument& error) {
    throw Error(DODO_ERROR_MODEL_METADATA, prefix + "must be a JSON list of output names (" + known +
                                               "); got " + excerpt(listed) + " (" + error.what() + ")");
  }
  for (const std::string& name : declared)
    if (name != kOutputName && name != kUncertaintyName && name != kLogGrowthRatioName)
      throw Error(DODO_ERROR_MODEL_METADATA, prefix + "names an unknown output " + quoted_value(name) + " (known: " + known + ")");
  if (!declared.count(kOutputName))
    throw Error(DODO_ERROR_MODEL_METADATA, prefix + "must include \"head_output\"; got " + excerpt(listed));

  // The graph must have exactly the declared outputs; the optional ones float32 [N], N dynamic.
  OrtAllocator* allocator = nullptr;
  check_ort(api_, api_->GetAllocatorWithDefaultOptions(&allocator), "getting the default allocator");
  size_t outputs = 0;
  check_ort(api_, api_->SessionGetOutputCount(session_, &outputs), "counting outputs");
  std::set<std::string> graph;
  std::string graph_list;
  for (size_t index = 0; index < outputs; ++index) {
    char* raw = nullptr;
    check_ort(api_, api_->SessionGetOutputName(session_, index, allocator, &raw), "reading a graph name");
    const std::string name = raw;
    allocator->Free(allocator, raw);
    // One output listed twice (ONNX Runtime accepts it): the set held it once, and the package
    // loaded with a graph of four outputs against a contract of exactly the declared three (outside
    // probe, C round 33).
    if (!graph.insert(name).second)
      throw Error(DODO_ERROR_MODEL_FORMAT, "the graph lists output " + quoted_value(name) +
                                               " twice (ONNX wants each output once; edited after export?)");
    // Names from the graph, quoted by their first bytes: a re-signed graph's output names may be
    // megabytes long, and were quoted whole (probe round nineteen).
    if (graph_list.size() < 1000) graph_list += (index ? ", " : "") + quoted_value(name);
    else if (index + 1 == outputs) graph_list += ", ... (" + std::to_string(outputs) + " outputs)";
    if (name == kOutputName || !declared.count(name)) continue;
    OrtTypeInfo* type_info = nullptr;
    check_ort(api_, api_->SessionGetOutputTypeInfo(session_, index, &type_info), "reading a graph type");
    std::unique_ptr<OrtTypeInfo, OrtReleaser<OrtTypeInfo>> guard(type_info, {api_, api_->ReleaseTypeInfo});
    const OrtTensorTypeAndShapeInfo* tensor = nullptr;
    check_ort(api_, api_->CastTypeInfoToTensorInfo(type_info, &tensor), "reading a tensor type");
    ONNXTensorElementDataType element{};
    size_t rank = 0;
    int64_t first = 0;
    if (tensor) {
      check_ort(api_, api_->GetTensorElementType(tensor, &element), "reading an element type");
      check_ort(api_, api_->GetDimensionsCount(tensor, &rank), "reading a rank");
      if (rank == 1) check_ort(api_, api_->GetDimensions(tensor, &first, 1), "reading dimensions");
    }
    if (!tensor || element != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT || rank != 1 || first >= 0)  // 0: fixed, not dynamic
      throw Error(DODO_ERROR_MODEL_FORMAT, "output " + quoted_value(name) + " (declared in \"" + kOutputsKey +
                                               "\") must be a float32 tensor of shape [N] with a dynamic N (one "
                                               "number per cell)" + (rank > 1 ? "; it has rank " + std::to_string(rank) : ""));
  }
  for (const std::string& name : declared)
    if (!graph.count(name))
      throw Error(DODO_ERROR_MODEL_FORMAT, std::string("metadata \"") + kOutputsKey + "\" declares output " + quoted_value(name) +
                                               ", which the graph does not have (graph outputs: " + graph_list + ")");
  for (const std::string& name : graph)
    if (!declared.count(name))
      throw Error(DODO_ERROR_MODEL_FORMAT, "the graph has output " + quoted_value(name) + ", which metadata \"" +
                                               kOutputsKey + "\" does not declare (it declares " + excerpt(declaration) + ")");
  optional_outputs_.uncertainty = declared.count(kUncertaintyName) != 0;
  optional_outputs_.log_growth_ratio = declared.count(kLogGrowthRatioName) != 0;
}

}  // namespace dodo::runtime
