// libFuzzer target: the model loader. Arbitrary bytes are written to a temporary file and given to
// dodo_closure_create (with the self-test on). It must return a known status code; on failure the
// handle is NULL and the message is not empty; DODO_ERROR_INTERNAL (an unexpected exception) counts
// as a finding. When a mutated file still loads, one batch is applied and its output must be
// finite. A failed check aborts (a libFuzzer crash).
//
// Almost every mutant of a model is refused by its content digest (docs/model_package.md) before
// ONNX Runtime sees it. DODO_FUZZ_LOADER_RESIGN=1 gives each mutant that still parses as protobuf
// a fresh digest first, so the graph checks, ONNX Runtime's parser and the self-test get the
// mutants instead (much slower: most of those create a session).
#include <dodo/dodo.h>
#include <unistd.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <string_view>

#include "runtime/errors.hpp"
#include "runtime/onnx_package.hpp"

namespace {

std::string model_path;
bool resign = false;

[[noreturn]] void fail(const char* what, const char* detail) {
  std::fprintf(stderr, "fuzz_loader: %s: %s\n", what, detail);
  std::abort();
}

void write_file(const char* data, std::size_t size) {
  std::FILE* file = std::fopen(model_path.c_str(), "wb");
  if (!file) fail("cannot write the temporary model file", model_path.c_str());
  if (size && std::fwrite(data, 1, size, file) != size) fail("short write", model_path.c_str());
  std::fclose(file);
}

}  // namespace

extern "C" int LLVMFuzzerInitialize(int*, char***) {
  const char* resign_setting = std::getenv("DODO_FUZZ_LOADER_RESIGN");
  resign = resign_setting && std::strcmp(resign_setting, "1") == 0;
  const char* directory = std::getenv("TMPDIR");
  std::string pattern = std::string(directory && *directory ? directory : "/tmp") + "/dodo_fuzz_model_XXXXXX";
  std::string buffer = pattern;
  const int fd = mkstemp(buffer.data());
  if (fd < 0) {
    std::perror("fuzz_loader: mkstemp");
    std::exit(2);
  }
  close(fd);
  model_path = buffer;
  std::atexit([] { std::remove(model_path.c_str()); });
  return 0;
}

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  std::string_view bytes(reinterpret_cast<const char*>(data), size);
  std::string resigned;
  if (resign) {
    try {
      resigned = dodo::runtime::with_content_digest(bytes);
      bytes = resigned;
    } catch (const dodo::runtime::Error&) {
      // not protobuf: the loader gets the bytes as they are
    }
  }
  write_file(bytes.data(), bytes.size());
  dodo_options options;
  dodo_options_init(&options);
  options.chunk_size = 4;
  options.run_self_test = 1;
  dodo_closure* closure = reinterpret_cast<dodo_closure*>(0x1);  // must be overwritten
  char message[512];
  std::memset(message, 'x', sizeof message);
  const dodo_status status = dodo_closure_create(model_path.c_str(), &options, &closure, message, sizeof message);
  if (std::memchr(message, '\0', sizeof message) == nullptr) fail("message not NUL-terminated", "");
  if (status == DODO_OK) {
    if (!closure) fail("DODO_OK but no handle", "");
    double F[2][6][4] = {};
    double u[2][4] = {{1, 0, 0, 0}, {1.25, 0.75, 0, 0}};
    for (int c = 0; c < 2; ++c)
      for (int a = 0; a < 6; ++a) {
        F[c][a][0] = 1.0 + 0.1 * a;
        F[c][a][3] = (a == 0 ? 0.5 : (a == 3 ? -0.5 : 0.1));
      }
    double out[2][6][4];
    uint32_t flags[2];
    const dodo_status applied = dodo_apply(closure, 2, &F[0][0][0], nullptr, &u[0][0], nullptr, &out[0][0][0], nullptr, flags);
    if (applied != DODO_OK) {
      char text[512];
      dodo_last_error(closure, text, sizeof text);
      // The network may fail at run time (ORT error): a status, which is allowed; INTERNAL is not.
      if (applied == DODO_ERROR_INTERNAL) fail("dodo_apply: internal error", text);
    } else {
      for (int v = 0; v < 48; ++v)
        if (!std::isfinite((&out[0][0][0])[v])) fail("loaded model gave a non-finite output", "");
    }
    dodo_closure_destroy(closure);
    return 0;
  }
  if (closure != nullptr) fail("failure but the handle is not NULL", dodo_status_name(status));
  if (message[0] == '\0') fail("failure without a message", dodo_status_name(status));
  if (status == DODO_ERROR_INTERNAL) fail("internal error", message);
  if (std::strcmp(dodo_status_name(status), "DODO_UNKNOWN_STATUS") == 0) fail("unknown status code", message);
  return 0;
}
