// ONNX Runtime, loaded at run time with dlopen so that libdodo is not tied to one ORT build
// (the CPU or GPU wheel, Debian's package, a user's release directory all work).
//
// Search order for the library: an explicit path (option), $DODO_ONNXRUNTIME_LIBRARY, the
// `onnxruntime` Python package's capi/ directory found at build time (DODO_ORT_BUILD_HINT),
// then the dynamic loader's own search ("libonnxruntime.so.1", "libonnxruntime.so").
#pragma once

#include <string>
#include <vector>

#include <onnxruntime_c_api.h>

namespace dodo::runtime {

// The loaded library: the API table and one process-wide OrtEnv whose logger drops every
// message (a library inside a host's MPI job must not print). Never unloaded.
struct OrtLibrary {
  const OrtApi* api = nullptr;
  OrtEnv* env = nullptr;
  std::string path;     // what was loaded
  std::string version;  // OrtGetApiBase()->GetVersionString()
};

// Loads once per process (thread-safe); later calls return the same library whatever path they
// ask for. Throws Error(DODO_ERROR_ONNXRUNTIME_UNAVAILABLE) listing every place it tried.
const OrtLibrary& load_onnxruntime(const std::string& explicit_path);

// The directories to look in for files installed beside the shared object holding this code
// (libdodo, or Python's _core): the one of the name the loader opened (dladdr), then the one of
// that file with its symbolic links resolved, where it differs. The name is a link's in a link
// farm (a Spack view, `ln -s .../libdodo.so.0 /usr/local/lib`), and relative where a relative
// LD_LIBRARY_PATH entry or dlopen("./libdodo.so") found it, so relative to a directory no longer
// current once the host changes its working directory: the real file is resolved when the
// library is loaded, with the loader's working directory.
std::vector<std::string> library_directories();

// Throws Error(DODO_ERROR_ONNXRUNTIME, context + ORT's message) when status is not null.
// ONNX Runtime's message without its source locations and C++ signatures (wherever they stand), on one line.
std::string ort_message_text(const std::string& message);
void check_ort(const OrtApi* api, OrtStatus* status, const char* context);

}  // namespace dodo::runtime
