// libFuzzer target: the model package's metadata (docs/model_package.md) as the runtime reads it,
// without ONNX Runtime: JSON parser, format/features/head/output-size checks, Box3D settings and
// test vectors. A mutated ONNX file rarely keeps a valid protobuf, so fuzz_loader seldom reaches
// this code; here the values are fuzzed directly.
//
// Input: up to six values separated by 0xFF bytes, for dodo.format_version, dodo.features,
// dodo.head, dodo.output_size, dodo.box3d and dodo.test_vectors (a missing value keeps the
// default; a value of exactly one byte 0xFE removes the key). The first byte picks the graph's
// output width and the requested Box3D settings. describe_model must succeed or throw
// runtime::Error (a status code and a message); anything else propagates and is a finding.
//
// A seventh value, when present, is the "dodo.native_network" entry (native_network.hpp): it is
// read against the initializers of the default model (qke_default.onnx, whose entry it is in the
// seeds) with that model's widths (52 inputs, 78 outputs), and a description that is accepted
// is evaluated on a few rows with every kernel this CPU runs. The constructor must succeed or
// throw runtime::Error; evaluation must not trip a sanitizer (its outputs are not checked: the
// fuzzed scalars may well make them NaN).
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "box3d/box3d.hpp"
#include "runtime/errors.hpp"
#include "runtime/model_metadata.hpp"
#include "runtime/native_network.hpp"
#include "runtime/onnx_package.hpp"

#ifndef DODO_FUZZ_DEFAULT_MODEL_PATH
#define DODO_FUZZ_DEFAULT_MODEL_PATH ""
#endif

namespace {

std::map<std::string, dodo::runtime::FloatTensor> default_initializers;

void fuzz_native_network(const std::string& description) {
  try {
    dodo::runtime::NativeNetwork network(description, default_initializers, 52, 78);
    constexpr std::size_t kRows = 5;
    const std::vector<float> rows = network.probe_inputs(kRows);
    std::vector<float> head(kRows * 78), uncertainty(kRows), growth(kRows);
    for (const char* kernel : {"baseline", "avx2", "avx512"}) {
      if (!network.use_instruction_set(kernel)) continue;
      network.evaluate(rows.data(), kRows, head.data(), uncertainty.data(), growth.data());
      network.evaluate(rows.data(), 1, head.data(), nullptr, nullptr);
    }
  } catch (const dodo::runtime::Error&) {
    // Refused description (DODO_ERROR_MODEL_METADATA and a message).
  }
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* path = std::getenv("DODO_FUZZ_DEFAULT_MODEL");
  if (!path || !*path) path = DODO_FUZZ_DEFAULT_MODEL_PATH;
  std::ifstream file(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(file)), std::istreambuf_iterator<char>());
  if (!file.good() && bytes.empty()) {
    std::fprintf(stderr, "fuzz_metadata: cannot read the default model %s\n", path);
    std::exit(2);
  }
  default_initializers = dodo::runtime::read_float_initializers(bytes);
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const char* const kKeys[6] = {"dodo.format_version", "dodo.features", "dodo.head",
                                       "dodo.output_size",   "dodo.box3d",    "dodo.test_vectors"};
  std::map<std::string, std::string> metadata = {
      {"dodo.format_version", "1"},
      {"dodo.features", "invariants27-v1"},
      {"dodo.head", "equivariant"},
      {"dodo.output_size", "78"},
      {"dodo.box3d",
       "{\"scheme\": \"pairwise\", \"form\": \"delta\", \"lebedev_order\": 17, \"z_method\": \"exact\", "
       "\"max_flux_factor\": 0.98}"},
  };
  if (size == 0) return 0;
  const std::uint8_t selector = data[0];
  std::size_t key = 0, start = 1;
  for (std::size_t i = 1; i <= size && key < 6; ++i) {
    if (i == size || data[i] == 0xFF) {
      std::string value(reinterpret_cast<const char*>(data + start), i - start);
      if (value == "\xFE") metadata.erase(kKeys[key]);
      else metadata[kKeys[key]] = value;
      ++key;
      start = i + 1;
    }
  }
  if (key == 6 && start <= size) {  // the rest: "dodo.native_network"
    const std::string native(reinterpret_cast<const char*>(data + start), size - start);
    metadata[dodo::runtime::kNativeNetworkKey] = native;
    fuzz_native_network(native);
  }
  static const int kWidths[4] = {-1, 24, 78, 5};
  dodo::runtime::RequestedBox3D requested;
  if (selector & 4) requested.lebedev_order = (selector & 8) ? 17 : 41;
  if (selector & 16) requested.z_method = (selector & 32) ? "exact" : "jedynak";
  if (selector & 64) requested.max_flux_factor = (selector & 128) ? 0.98 : 0.5;
  try {
    dodo::runtime::ModelDescription model = dodo::runtime::describe_model(metadata, kWidths[selector & 3], requested);
    try {
      dodo::Box3D box3d(model.box3d);  // the closure builds this next
      (void)box3d;
    } catch (const std::invalid_argument&) {
      // Refused settings (the closure turns this into DODO_ERROR_INVALID_ARGUMENT).
    }
  } catch (const dodo::runtime::Error&) {
    // A status code and a message: the expected way to refuse.
  }
  return 0;
}
