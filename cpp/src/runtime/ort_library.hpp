// ONNX Runtime, loaded at run time with dlopen so that libdodo is not tied to one ORT build
// (the CPU or GPU wheel, Debian's package, a user's release directory all work).
//
// Search order for the library: an explicit path (option), $DODO_ONNXRUNTIME_LIBRARY, the
// `onnxruntime` Python package's capi/ directory found at build time (DODO_ORT_BUILD_HINT),
// then the dynamic loader's own search ("libonnxruntime.so.1", "libonnxruntime.so").
#pragma once

#include <cstddef>
#include <string>
#include <utility>
#include <vector>

#include <onnxruntime_c_api.h>

namespace dodo::runtime {

// The loaded library: the API table and one process-wide OrtEnv whose logger drops every
// message (a library inside a host's MPI job must not print). Never unloaded.
struct OrtLibrary {
  const OrtApi* api = nullptr;
  OrtEnv* env = nullptr;
  // The cap on the CPU memory of Dodo's sessions (bytes; 0: none could be set), an arena shared
  // through the environment that each session opts into (session_memory_cap_entries).
  std::size_t session_memory_cap = 0;
  std::string path;     // what was loaded
  std::string version;  // OrtGetApiBase()->GetVersionString()
};

// Why a path that open() or dlopen() says does not exist (ENOENT) is not there, when a symbolic link
// on it points at nothing: 'a symbolic link to "T", which does not exist (a dangling link: ...)' for
// the path itself, 'under "D", a symbolic link to "T", ...' for one of its directories (the last
// such first). Empty when no link on the path dangles. The C side said "does not exist" of a model
// path or ONNX Runtime library that is a link `ls` shows, where Python names the link's target
// (outside probe, C round forty).
std::string dangling_link_of(const std::string& path);

// Loads once per process (thread-safe); later calls return the same library whatever path they
// ask for. Throws Error(DODO_ERROR_ONNXRUNTIME_UNAVAILABLE) listing every place it tried, or
// Error(DODO_ERROR_OUT_OF_MEMORY) where a library was there but could not be mapped for want of memory.
const OrtLibrary& load_onnxruntime(const std::string& explicit_path);

// The directories to look in for files installed beside the shared object holding this code
// (libdodo, or Python's _core): the one of the name the loader opened (dladdr), then the one of
// that file with its symbolic links resolved, where it differs. The name is a link's in a link
// farm (a Spack view, `ln -s .../libdodo.so.0 /usr/local/lib`), and relative where a relative
// LD_LIBRARY_PATH entry or dlopen("./libdodo.so") found it, so relative to a directory no longer
// current once the host changes its working directory: the real file is resolved when the
// library is loaded, with the loader's working directory.
std::vector<std::string> library_directories();

// The variable that sets the cap on ONNX Runtime's CPU memory for Dodo's sessions, in bytes (by
// default half of usable_memory_bytes()): a graph whose broadcasting asks for more fails with
// DODO_ERROR_OUT_OF_MEMORY instead of meeting the kernel's out-of-memory killer (docs/model_package.md).
inline constexpr const char* kOrtMemoryLimitVariable = "DODO_ONNXRUNTIME_MEMORY_LIMIT";

// Session configuration entries (key, value) that put a session under the cap: the environment's
// arena, and no constant folding (ONNX Runtime folds constants at load with memory of its own,
// outside any arena: an Add of a [K, 1] and a [1, K] initializer made [K, K] there).
const std::vector<std::pair<const char*, const char*>>& session_memory_cap_entries();

// Whether ONNX Runtime's message (ort_message_text) is the capped arena's refusal of an allocation,
// and the words that name the cap for a message that reports it.
bool refused_by_memory_cap(const std::string& ort_text);
std::string memory_cap_note();
// Whether ONNX Runtime's message says the process itself ran out of memory (its own operator new's
// std::bad_alloc, or its allocator's "Failed to allocate memory"; RLIMIT_AS, a cgroup limit), and
// the words that say so (naming the RLIMIT_AS limit where one is set: memory_shortage_cause).
bool ran_out_of_memory(const std::string& ort_text);
std::string out_of_memory_note();

// Throws Error(DODO_ERROR_ONNXRUNTIME, context + ORT's message) when status is not null; an
// allocation the cap refused is DODO_ERROR_OUT_OF_MEMORY, naming the cap and its variable.
// ONNX Runtime's message without its source locations and C++ signatures (wherever they stand), on one line.
std::string ort_message_text(const std::string& message);
void check_ort(const OrtApi* api, OrtStatus* status, const char* context);

}  // namespace dodo::runtime
