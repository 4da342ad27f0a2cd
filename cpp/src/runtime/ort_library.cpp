#include "ort_library.hpp"

#include <dirent.h>
#include <dlfcn.h>
#include <glob.h>
#include <limits.h>
#include <pthread.h>
#include <sys/stat.h>
#include <sys/statvfs.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cmath>
#include <condition_variable>
#include <cstdlib>
#include <limits>
#include <mutex>
#include <new>
#include <string>
#include <string_view>
#include <system_error>
#include <vector>

#include "errors.hpp"
#include "memory_limit.hpp"

// The lock that makes ONNX Runtime sessions one at a time (session_creation_mutex below), one for
// every copy of the runtime in the process. Each copy had its own: a host linking libdodo that also
// imports Python's dodo (dodo._core holds a copy) or dlopens a plugin holding one (RTLD_LOCAL) made
// sessions in two copies at once, and ThreadSanitizer reported rounds thirty-eight and forty-one's race
// inside CreateSessionFromArray again, between the copies (outside probe, C round forty-three). An
// inline variable is a GNU unique symbol (nm: "u"), which the dynamic loader makes one object in the
// process whatever the copies' RTLD_LOCAL; at global scope its name is unmangled, so the export map's
// dodo_* keeps it in libdodo's table. Its type may never change under this name (hence _v1). A copy
// built by a compiler that makes no unique symbols (clang: a weak symbol) shares it only with a
// copy in the global scope (linked by the program, or loaded RTLD_GLOBAL).
__attribute__((visibility("default"))) inline std::mutex dodo_onnxruntime_session_creation_lock_v1;

namespace dodo::runtime {
namespace {

// This library's file, its links resolved (library_directories()), filled when the library is
// loaded (before any host code can change the working directory or fork); "" if that failed.
// Found by dladdr of an address of this file's own (internal linkage: never another object's by
// symbol interposition). Never destroyed.
char loaded_file[PATH_MAX] = "";
[[maybe_unused]] const bool kLoadedFileResolved = [] {
  Dl_info info{};
  if (dladdr(static_cast<const void*>(loaded_file), &info) && info.dli_fname && ::realpath(info.dli_fname, loaded_file))
    return true;
  loaded_file[0] = '\0';
  return false;
}();

std::string directory_of(const std::string& file) {
  const auto slash = file.rfind('/');
  return slash == std::string::npos ? std::string(".") : file.substr(0, slash);
}

// Wheels ship libonnxruntime.so.<version> without the .so.1 link: glob for it. A directory that
// exists but cannot be listed (no descriptor left in a host at its RLIMIT_NOFILE, no permission)
// gets a line in `unreadable`: glob found nothing there without a word, so the message listed only
// the loader's names and advised "pip install onnxruntime" for an installed wheel (C round 27).
void add_wheel_libraries(const std::string& capi_dir, std::vector<std::string>& paths, std::string& unreadable) {
  glob_t found{};
  std::string pattern = capi_dir + "/libonnxruntime.so*";
  const int result = glob(pattern.c_str(), 0, nullptr, &found);
  if (result == 0) {
    for (size_t i = 0; i < found.gl_pathc; ++i) paths.push_back(found.gl_pathv[i]);
  }
  globfree(&found);
  struct stat status {};
  if (result == 0 || ::stat(capi_dir.c_str(), &status) != 0 || !S_ISDIR(status.st_mode)) return;
  errno = 0;
  if (DIR* directory = ::opendir(capi_dir.c_str())) {  // listed: it holds no libonnxruntime.so*
    ::closedir(directory);
    return;
  }
  const int error = errno;
  unreadable += "\n  " + shortened_path(pattern, false) + ": the directory cannot be listed (" +
                std::error_code(error, std::generic_category()).message() + ")";
}

// ORT's default logger writes to stderr; the host owns stderr, so messages are dropped.
void discard_ort_log(void*, OrtLoggingLevel, const char*, const char*, const char*, const char*) {}

// The paths to try, in order; `unreadable` gets a line for each wheel directory that could not be listed.
std::vector<std::string> candidate_paths(const std::string& explicit_path, std::string& unreadable) {
  std::vector<std::string> paths;
  if (!explicit_path.empty()) {
    paths.push_back(explicit_path);  // an explicit request is honoured or fails: no fallback
    return paths;
  }
  if (const char* env = std::getenv("DODO_ONNXRUNTIME_LIBRARY"); env && *env) {
    paths.push_back(env);
    return paths;
  }
  // An `onnxruntime` wheel beside the `dodo` wheel (libdodo in dodo/lib, or _core in dodo/):
  // site-packages/dodo/lib/libdodo.so -> site-packages/onnxruntime/capi. Beside the name the
  // loader opened, then beside the real file: from a link farm, or after the host changed its
  // working directory having found libdodo through a relative LD_LIBRARY_PATH entry, only the
  // first was tried, and a closure with a model failed with DODO_ERROR_ONNXRUNTIME_UNAVAILABLE
  // ("pip install onnxruntime") beside an installed wheel (outside probe, C round thirty-two).
  for (const std::string& here : library_directories())
    for (const char* up : {"/../../onnxruntime/capi", "/../onnxruntime/capi", "/onnxruntime/capi"})
      add_wheel_libraries(here + up, paths, unreadable);
#ifdef DODO_ORT_BUILD_HINT
  paths.push_back(DODO_ORT_BUILD_HINT);
#endif
  paths.push_back("libonnxruntime.so.1");
  paths.push_back("libonnxruntime.so");
  return paths;
}

// ONNX Runtime's Linux builds (1.32 here) start a telemetry uploader thread (1DS) with their
// environment unless ORT_DISABLE_TELEMETRY is set (or a CI variable). That thread made every child
// of a fork() that left with exit() hang for ever (ONNX Runtime's static destructor waited on a
// condition variable for the parent's thread, which the child does not have; pthread_cond_destroy
// in the child's exit handlers) or abort (std::system_error "No such process" joining it), in C
// and in Python (os.fork(), then sys.exit) alike (outside probe, round eighteen); and it would send
// usage data from compute nodes. So libdodo asks for no telemetry before ONNX Runtime is loaded,
// unless the host set the variable itself (ORT_DISABLE_TELEMETRY=0 keeps ONNX Runtime's default).
// ONNX Runtime reads it when its environment is made (CreateEnv starts the thread; its
// DisableTelemetryEvents afterwards neither stops it nor the hang: checked with 1.32), so only the
// variable does it. It is set when libdodo is loaded (a static initialiser: before main for a host
// linked to libdodo), not at the first closure with a model: glibc's setenv may move the
// environment array under a host thread inside getenv, and by the first closure a host has its
// threads (outside probe, round fourteen). At the load itself it is asked again only if the
// variable has gone since (a host that cleared its environment).
void ask_for_no_onnxruntime_telemetry() {
  if (std::getenv("ORT_DISABLE_TELEMETRY") == nullptr) ::setenv("ORT_DISABLE_TELEMETRY", "1", 0);
}

[[maybe_unused]] const bool kTelemetryAskedAtLoad = (ask_for_no_onnxruntime_telemetry(), true);

// The cap on ONNX Runtime's CPU memory for Dodo's sessions: DODO_ONNXRUNTIME_MEMORY_LIMIT bytes
// (a decimal integer of at least 1 MiB), or half of the usable memory (memory_limit.hpp); 0 where
// neither is known. A graph that broadcasts small initializers into a large tensor ([K, 1] + [1, K]
// makes [K, K]: a 116 KB package asked for 557 MB, a 212 KB one for 1.6 GB; C round 33) then gets
// ONNX Runtime's allocation failure, which check_ort reports, not the kernel's out-of-memory killer.
std::size_t session_memory_cap_bytes() {
  const char* text = std::getenv(kOrtMemoryLimitVariable);
  if (text && *text) {
    std::size_t digits = 0;
    while (text[digits] >= '0' && text[digits] <= '9') ++digits;
    errno = 0;
    const unsigned long long value = digits > 0 && text[digits] == '\0' ? std::strtoull(text, nullptr, 10) : 0;
    if (errno != 0 || value < (1ull << 20))
      throw Error(DODO_ERROR_INVALID_ARGUMENT,
                  std::string(kOrtMemoryLimitVariable) + " must be a number of bytes, at least 1048576 (1 MiB), "
                  "written as decimal digits; it is \"" + printable_message(text, false) + "\"");
    return static_cast<std::size_t>(std::min<unsigned long long>(value, std::numeric_limits<std::size_t>::max()));
  }
  const double usable = usable_memory_bytes();
  if (!(usable > 0.0) || !std::isfinite(usable)) return 0;
  return static_cast<std::size_t>(std::min(usable / 2.0, 0x1p62));
}

// Registers, on the environment, the arena that sessions opting in (session_memory_cap_entries)
// share, with the cap as its limit; returns the cap, or 0 where none was set (unknown memory, or an
// arena already registered by the host's own use of ONNX Runtime in this process, which then serves).
std::size_t register_capped_arena(const OrtApi* api, OrtEnv* env) {
  const std::size_t cap = session_memory_cap_bytes();
  if (cap == 0) return 0;
  OrtMemoryInfo* memory = nullptr;
  OrtArenaCfg* arena = nullptr;
  const char* keys[] = {"max_mem"};
  const std::size_t values[] = {cap};
  std::size_t registered = 0;
  if (OrtStatus* status = api->CreateCpuMemoryInfo(OrtArenaAllocator, OrtMemTypeDefault, &memory)) {
    api->ReleaseStatus(status);
    return 0;
  }
  if (OrtStatus* status = api->CreateArenaCfgV2(keys, values, 1, &arena)) {
    api->ReleaseStatus(status);
  } else if (OrtStatus* status = api->CreateAndRegisterAllocator(env, memory, arena)) {
    api->ReleaseStatus(status);
  } else {
    registered = cap;
  }
  if (arena) api->ReleaseArenaCfg(arena);
  api->ReleaseMemoryInfo(memory);
  return registered;
}

// What a path that dlopen must not open is ("" for a regular file, or for a name without a slash,
// which dlopen looks up in the loader's own directories). dlopen opens a FIFO for reading and waits
// for a writer for ever, here with the asynchronous signals blocked (Closure::initialise), so that
// neither Ctrl-C nor a batch system's SIGTERM ended the host (outside probe of the C side, round
// thirteen: `onnxruntime_library` or DODO_ONNXRUNTIME_LIBRARY naming a FIFO).
std::string not_a_library_file(const std::string& path) {
  struct stat status {};
  if (path.find('/') == std::string::npos || ::stat(path.c_str(), &status) != 0) return {};  // dlopen says why
  if (S_ISREG(status.st_mode)) return {};
  if (S_ISFIFO(status.st_mode)) return "a FIFO";
  if (S_ISDIR(status.st_mode)) return "a directory";
  if (S_ISSOCK(status.st_mode)) return "a socket";
  if (S_ISCHR(status.st_mode) || S_ISBLK(status.st_mode)) return "a device";
  return "not a file";
}

// Calls into ONNX Runtime under way in this process. ONNX Runtime's own locks (its arena, the
// session's state) are not fork-aware: fork() while another thread was inside OrtApi::Run copied
// such a lock, held, into the child, whose first call on a closure with the "onnxruntime"
// evaluator (the parent's closure, or one made in the child) then waited for ever: 1 fork in ~25
// with two threads evaluating small chunks, 1 in ~500 with the default chunks (outside probe,
// round forty-three; gdb: both of the child's threads in pthread_mutex_lock under OrtApi::Run).
// fork now waits for the calls under way to end (one chunk each) and lets none start meanwhile;
// the child gets a fresh gate (the parent's may count the parent's other threads).
struct OrtCallGate {
  std::mutex mutex;
  std::condition_variable changed;
  long active = 0;       // calls under way
  bool forking = false;  // a thread is forking: no call starts
};

std::atomic<OrtCallGate*>& call_gate() {
  static std::atomic<OrtCallGate*> gate{new OrtCallGate};  // replaced in a child, never freed
  return gate;
}

// One call through the gate (no exception: the API's functions are noexcept; a lock that cannot be
// taken, which std::mutex reports by throwing, leaves the call ungated rather than ending the host).
class InOrtCall {
 public:
  InOrtCall() noexcept {
    try {
      OrtCallGate* gate = call_gate().load(std::memory_order_acquire);
      std::unique_lock<std::mutex> lock(gate->mutex);
      gate->changed.wait(lock, [gate] { return !gate->forking; });
      ++gate->active;
      gate_ = gate;
    } catch (...) {
    }
  }
  ~InOrtCall() {
    if (!gate_) return;
    try {
      std::lock_guard<std::mutex> lock(gate_->mutex);
      if (--gate_->active == 0 && gate_->forking) gate_->changed.notify_all();
    } catch (...) {
    }
  }
  InOrtCall(const InOrtCall&) = delete;
  InOrtCall& operator=(const InOrtCall&) = delete;

 private:
  OrtCallGate* gate_ = nullptr;
};

// The library's own table, kept for the gated functions, which call through it.
OrtApi& original_api() {
  static OrtApi original{};
  return original;
}

// One session made at a time in this process. Two threads' first closures with a model made at
// once (a host's OpenMP threads each creating its own) raced inside CreateSessionFromArray: under
// ThreadSanitizer a read by ONNX Runtime's memcpy of a heap block another thread's session creation
// had just allocated, both frames in libonnxruntime, in every run of 8 threads (outside probe,
// rounds thirty-eight and forty-one). ONNX Runtime promises concurrent Run only (its issue 27089
// asks for concurrent session creation; 32461 is a race there). Taken inside the gate, so a thread
// holds it only while the gate counts it: fork (prepare_fork) waits for it to be let go, and a
// child never inherits it held. Every copy's gate drains before fork, so no copy holds the shared
// lock then either. One for all the copies in the process (the unique symbol above). Sessions are
// released under it too: with two copies, a release in one against another's creation was
// ThreadSanitizer's last report (inside ONNX Runtime, 1 run of 52; none in 200 since).
std::mutex& session_creation_mutex() { return dodo_onnxruntime_session_creation_lock_v1; }

// A function of the table through the gate; kOneAtATime: also under the session creation mutex.
// One template for both kinds (there were two alike; outside probe, C round forty-two).
template <auto Member, bool kOneAtATime = false>
struct Gated;
template <typename R, typename... A, bool kNoexcept, R (*OrtApi::*Member)(A...) noexcept(kNoexcept), bool kOneAtATime>
struct Gated<Member, kOneAtATime> {
  static R call(A... arguments) noexcept(kNoexcept) {
    InOrtCall in_call;
    std::unique_lock<std::mutex> one_at_a_time;
    if constexpr (kOneAtATime) {
      one_at_a_time = std::unique_lock<std::mutex>(session_creation_mutex(), std::defer_lock);
      try {
        one_at_a_time.lock();
      } catch (...) {  // a lock that cannot be taken leaves the call unserialised, as the gate does
      }
    }
    return (original_api().*Member)(arguments...);
  }
};

// The table Dodo calls through: the library's, with the calls that take ONNX Runtime's locks
// (evaluating, making and releasing sessions and values) passing through the gate.
const OrtApi* gated_api(const OrtApi* api) {
  static OrtApi gated{};
  original_api() = *api;
  gated = *api;
  gated.Run = &Gated<&OrtApi::Run>::call;
  gated.CreateSession = &Gated<&OrtApi::CreateSession, true>::call;
  gated.CreateSessionFromArray = &Gated<&OrtApi::CreateSessionFromArray, true>::call;
  gated.ReleaseSession = &Gated<&OrtApi::ReleaseSession, true>::call;
  gated.CreateTensorAsOrtValue = &Gated<&OrtApi::CreateTensorAsOrtValue>::call;
  gated.CreateTensorWithDataAsOrtValue = &Gated<&OrtApi::CreateTensorWithDataAsOrtValue>::call;
  gated.ReleaseValue = &Gated<&OrtApi::ReleaseValue>::call;
  gated.SessionGetInputName = &Gated<&OrtApi::SessionGetInputName>::call;
  gated.SessionGetOutputName = &Gated<&OrtApi::SessionGetOutputName>::call;
  gated.AllocatorFree = &Gated<&OrtApi::AllocatorFree>::call;
  return &gated;
}

// Whether dlopen's `reason` for `path` is a want of memory: the loader could not map the library's
// segments ("failed to map segment from shared object", as under `ulimit -v`), unless its file
// system is mounted noexec (the same words), or an allocation failed with ENOMEM's "Cannot allocate
// memory" (strerror's capital: glibc's "cannot allocate memory in static TLS block" is the static
// TLS space, which no memory gives). The message advised on the library's path ("pip install
// onnxruntime", "the onnxruntime_library option names it") for a library that is there and a
// process short of address space (outside probe, C round forty-three).
bool on_a_noexec_file_system(const std::string& path);
bool ran_out_of_memory_mapping(const std::string& reason, const std::string& path) {
  if (reason.find("Cannot allocate memory") != std::string::npos) return true;
  return reason.find("failed to map segment") != std::string::npos && !on_a_noexec_file_system(path);
}

// Whether `path` (one with a slash) lies on a file system mounted noexec, where dlopen fails with
// the same "failed to map segment" (said so in the list of paths tried; C round forty-three).
bool on_a_noexec_file_system(const std::string& path) {
  struct statvfs file_system {};
  return path.find('/') != std::string::npos && ::statvfs(path.c_str(), &file_system) == 0 &&
         (file_system.f_flag & ST_NOEXEC) != 0;
}

// ONNX Runtime registers its operator schemas in static tables while it makes its environment; an
// allocation failing part way (a process short of memory at its first closure with a model) leaves
// them half filled, and every later attempt in the process fails with ONNX Runtime's "Trying to add a
// domain to DomainToVersion map, but the domain is already exist": a host that freed memory (or
// raised `ulimit -v`, as the first message advised) and made its closure again got that, status 6,
// for ever (outside probe, C round fifty-one). A second failure after a first names the first and
// says that only a new process can load a model. Called under load_mutex.
void make_environment(const OrtApi* api, OrtEnv*& env) {
  static std::string* earlier_failure = nullptr;  // the first attempt's message; lives until exit
  try {
    check_ort(api, api->CreateEnvWithCustomLogger(discard_ort_log, nullptr, ORT_LOGGING_LEVEL_FATAL, "dodo", &env),
              "creating the ONNX Runtime environment");
  } catch (const Error& error) {
    // The tables' own words: the attempt that failed may have been another copy's of the runtime in
    // the process (Python's dodo._core beside libdodo) or the host's own, which keep no record here.
    const bool half_filled = std::string_view(error.what()).find("is already exist") != std::string_view::npos;
    if (!earlier_failure && !half_filled) {
      earlier_failure = new std::string(error.what());
      if (error.status() != DODO_ERROR_OUT_OF_MEMORY) throw;
      throw Error(error.status(), std::string(error.what()) +
                                      "; ONNX Runtime may not be able to make its environment again in this process, "
                                      "so give the process the memory before its first closure with a model");
    }
    const std::string earlier =
        earlier_failure ? "an earlier attempt in this process failed part way (" + *earlier_failure + ")"
                        : "an earlier attempt in this process (by another copy of Dodo's runtime, or the host's own "
                          "use of ONNX Runtime) failed part way";
    throw Error(DODO_ERROR_ONNXRUNTIME,
                "creating the ONNX Runtime environment failed again (" + std::string(error.what()) + "): " + earlier +
                    ", after which ONNX Runtime cannot make it, so no closure with a model can be made in this "
                    "process; start the process again with the memory it needs (Box3D-only closures still work)");
  }
}

OrtLibrary open_library(const std::string& explicit_path) {
  ask_for_no_onnxruntime_telemetry();
  std::string tried, unreadable;
  bool short_of_memory = false;  // a library there that could not be mapped for want of memory
  for (const std::string& path : candidate_paths(explicit_path, unreadable)) {
    const std::string shown = shortened_path(path, false);  // one line per path tried
    if (const std::string what = not_a_library_file(path); !what.empty()) {
      tried += "\n  " + shown + ": not a regular file (" + what + "): not opened";
      continue;
    }
    void* handle = dlopen(path.c_str(), RTLD_NOW | RTLD_LOCAL);
    if (!handle) {
      const char* why = dlerror();
      std::string reason = why ? why : "not found";
      // glibc's text starts with the path again: once is enough (a 1 MB path came back twice).
      if (reason.compare(0, path.size() + 2, path + ": ") == 0) reason.erase(0, path.size() + 2);
      short_of_memory = short_of_memory || ran_out_of_memory_mapping(reason, path);
      if (reason.find("failed to map segment") != std::string::npos && on_a_noexec_file_system(path))
        reason += " (its file system is mounted noexec, where no library can be mapped: put it on another)";
      // "cannot open shared object file: No such file or directory" of a link that is there
      if (const std::string dangling = path.find('/') == std::string::npos ? "" : dangling_link_of(path);
          !dangling.empty())
        reason = dangling;
      tried += "\n  " + shown + ": " + printable_message(reason, false);
      continue;
    }
    using GetApiBase = const OrtApiBase* (*)();
    auto get_api_base = reinterpret_cast<GetApiBase>(dlsym(handle, "OrtGetApiBase"));
    if (!get_api_base) {
      tried += "\n  " + shown + ": no symbol OrtGetApiBase (not ONNX Runtime?)";
      continue;  // keep the handle: unloading foreign libraries is not worth the risk
    }
    // A library whose OrtGetApiBase gives no table, or a table without its functions (a wrapper in
    // front of ONNX Runtime that failed to find the real one), crashed the host here, SIGSEGV
    // (outside probe, C round forty-one): it is one more library tried that is not usable.
    const OrtApiBase* base = get_api_base();
    if (!base || !base->GetApi || !base->GetVersionString) {
      tried += "\n  " + shown + ": its OrtGetApiBase gave " + (base ? "an incomplete table" : "no table") +
               " (not a working ONNX Runtime?)";
      continue;
    }
    const char* version_text = base->GetVersionString();
    const std::string version = version_text ? printable_message(version_text, false) : "(of no version)";
    const OrtApi* api = base->GetApi(ORT_API_VERSION);
    if (!api) {
      tried += "\n  " + shown + ": ONNX Runtime " + version + " is older than API version " +
               std::to_string(ORT_API_VERSION) + " that Dodo was built against";
      continue;
    }
    OrtLibrary library;
    library.api = gated_api(api);
    library.path = path;
    library.version = version;
    make_environment(api, library.env);
    library.session_memory_cap = register_capped_arena(api, library.env);
    return library;
  }
  // Memory, not the path, is what to change: a library that is there, whatever else was tried.
  if (short_of_memory)
    throw Error(DODO_ERROR_OUT_OF_MEMORY, "cannot load the ONNX Runtime library: not enough memory to map it into "
                                          "the process (" + memory_shortage_cause() + "); tried:" + unreadable + tried);
  // The advice fits the way the library was asked for: an explicit path (the option) is used
  // alone, so setting DODO_ONNXRUNTIME_LIBRARY, which the message used to suggest, changed nothing
  // (probe round thirteen of the C side).
  const char* env = std::getenv("DODO_ONNXRUNTIME_LIBRARY");
  // "pip install onnxruntime" mends a libdodo inside a Python environment (the dodo wheel, whose
  // onnxruntime/capi it searches); a libdodo vendored into a C, C++ or Fortran code or installed by
  // CMake elsewhere never looks in a Python environment, so that advice led nowhere (outside probe,
  // C round fifty; new user's journey round three's open item).
  bool in_python_environment = false;
  for (const std::string& directory : library_directories())
    in_python_environment = in_python_environment || directory.find("/site-packages/") != std::string::npos ||
                            directory.find("/dist-packages/") != std::string::npos;
  std::string advice =
      in_python_environment
          ? "pip install onnxruntime, or set DODO_ONNXRUNTIME_LIBRARY to the path of libonnxruntime.so"
          : "this libdodo is outside a Python environment, where pip install onnxruntime does not reach it: set "
            "DODO_ONNXRUNTIME_LIBRARY or the onnxruntime_library option to the path of a libonnxruntime.so, from an "
            "ONNX Runtime release's lib/ (github.com/microsoft/onnxruntime/releases) or a Python onnxruntime "
            "package's onnxruntime/capi/, or put libonnxruntime.so.1 on the loader's path (LD_LIBRARY_PATH)";
  if (!explicit_path.empty())
    advice = "the onnxruntime_library option names it: give the path of a libonnxruntime.so, or leave the option "
             "empty to search";
  else if (env && *env)
    advice = "DODO_ONNXRUNTIME_LIBRARY names it: set it to the path of a libonnxruntime.so, or unset it to search";
  else if (!unreadable.empty())
    advice = "an onnxruntime wheel's directory could not be listed (first lines below): retry when it can be, or set "
             "DODO_ONNXRUNTIME_LIBRARY to the path of libonnxruntime.so";
  throw Error(DODO_ERROR_ONNXRUNTIME_UNAVAILABLE,
              "cannot load the ONNX Runtime library (" + advice + "); tried:" + unreadable + tried);
}

}  // namespace

namespace {

// Set once exit() (or a dlclose of libdodo) has begun destroying static objects, at the latest
// before ONNX Runtime's own: a host's atexit handler that runs after those gets ORT's failure
// ("GetElementType is not implemented"), which then says why (probe round sixteen).
std::atomic<bool> static_objects_destroyed{false};

struct StaticDestructionMarker {
  ~StaticDestructionMarker() { static_objects_destroyed.store(true, std::memory_order_relaxed); }
};

}  // namespace

std::vector<std::string> library_directories() {
  std::vector<std::string> directories;
  Dl_info info{};
  if (dladdr(static_cast<const void*>(loaded_file), &info) && info.dli_fname)
    directories.push_back(directory_of(info.dli_fname));
  if (loaded_file[0] != '\0') {
    const std::string real = directory_of(loaded_file);
    if (directories.empty() || directories.front() != real) directories.push_back(real);
  }
  return directories;
}

std::string ort_message_text(const std::string& message) {
  // ONNX Runtime writes its source location and the C++ signature of the function that failed into
  // its messages, at the start or after "Status Message: " inside a kernel's failure
  // ("/onnxruntime_src/onnxruntime/core/providers/cpu/tensor/reshape_helper.h:91
  // onnxruntime::ReshapeHelper::ReshapeHelper(const onnxruntime::TensorShape&, ...) input_shape_size
  // == ...": a re-signed package's Reshape, outside probe, C round 33). The user needs the words
  // after them. A location is a word that starts with '/' and ends in ":<line>", followed by a
  // qualified C++ name ("::") and its parenthesised arguments; it goes, with " const" and spaces after it.
  std::string text;
  text.reserve(message.size());
  std::size_t i = 0;
  while (i < message.size()) {
    if (message[i] == '/' && (i == 0 || message[i - 1] == ' ')) {
      const std::size_t word_end = message.find(' ', i);
      const std::size_t colon = word_end == std::string::npos ? std::string::npos : message.rfind(':', word_end);
      bool line = colon != std::string::npos && colon > i && colon + 1 < word_end;
      for (std::size_t d = colon + 1; line && d < word_end; ++d) line = message[d] >= '0' && message[d] <= '9';
      const std::size_t open = line ? message.find('(', word_end) : std::string::npos;
      if (open != std::string::npos && message.substr(word_end, open - word_end).find("::") != std::string::npos) {
        int depth = 0;
        std::size_t close = std::string::npos;
        for (std::size_t j = open; j < message.size() && close == std::string::npos; ++j) {
          if (message[j] == '(') ++depth;
          if (message[j] == ')' && --depth == 0) close = j;
        }
        if (close != std::string::npos) {
          std::size_t next = close + 1;
          if (message.compare(next, 6, " const") == 0) next += 6;
          while (next < message.size() && message[next] == ' ') ++next;
          if (next < message.size()) {  // words remain after the location: keep those alone
            i = next;
            continue;
          }
        }
      }
    }
    text.push_back(message[i++]);
  }
  // ONNX Runtime ends some messages with a line break ("... max supported IR version: 14\n"): line
  // breaks inside become spaces, those at the end go (C round 31).
  while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ' || text.back() == '\t'))
    text.pop_back();
  for (char& c : text)
    if (c == '\n' || c == '\r') c = ' ';
  return text;
}

const std::vector<std::pair<const char*, const char*>>& session_memory_cap_entries() {
  static const std::vector<std::pair<const char*, const char*>> entries = {
      {"session.use_env_allocators", "1"}, {"optimization.disable_specified_optimizers", "ConstantFolding"}};
  return entries;
}

bool refused_by_memory_cap(const std::string& ort_text) {
  // The arena's refusal (BFCArena: "Available memory of N is smaller than requested bytes of M").
  return ort_text.find("Available memory of") != std::string::npos;
}

// ONNX Runtime reports an allocation that failed as an error of the operator that made it
// ("Non-zero status code returned while running Div node ... std::bad_alloc"), which Dodo passed on
// as DODO_ERROR_ONNXRUNTIME (or, in the load's probe, DODO_ERROR_MODEL_FORMAT: the package blamed),
// though it is the process's memory (outside probe, C round 38: a rank under `ulimit -v 90000`).
bool ran_out_of_memory(const std::string& ort_text) {
  return ort_text.find("bad_alloc") != std::string::npos ||
         ort_text.find("Failed to allocate memory") != std::string::npos;
}

std::string out_of_memory_note() {
  return " (the process ran out of memory: " + memory_shortage_cause() + ")";
}

std::string memory_cap_note() {
  return " (the cap on ONNX Runtime's memory for Dodo's sessions: " + std::string(kOrtMemoryLimitVariable) +
         " bytes, by default half of the usable memory; a Dodo network needs a small part of it)";
}

void check_ort(const OrtApi* api, OrtStatus* status, const char* context) {
  if (!status) return;
  const std::string ort_text = ort_message_text(api->GetErrorMessage(status));
  std::string message = std::string(context) + ": " + ort_text;
  const bool over_cap = refused_by_memory_cap(ort_text);
  const bool out_of_memory = !over_cap && ran_out_of_memory(ort_text);
  if (over_cap) message += memory_cap_note();
  if (out_of_memory) message += out_of_memory_note();
  if (static_objects_destroyed.load(std::memory_order_relaxed))
    message += " (the process is exiting and ONNX Runtime's own objects are destroyed by now: call dodo before "
               "exit(), or from an atexit handler registered after the first closure with a model)";
  OrtErrorCode code = api->GetErrorCode(status);
  api->ReleaseStatus(status);
  dodo_status dodo_code = over_cap || out_of_memory ? DODO_ERROR_OUT_OF_MEMORY : DODO_ERROR_ONNXRUNTIME;
  if (code == ORT_NO_SUCHFILE) dodo_code = DODO_ERROR_FILE;
  if (code == ORT_INVALID_PROTOBUF || code == ORT_INVALID_GRAPH) dodo_code = DODO_ERROR_MODEL_FORMAT;
  throw Error(dodo_code, message);
}

namespace {

// Held while the library is loaded (dlopen, the environment: tens of milliseconds).
std::mutex& load_mutex() {
  static std::mutex mutex;
  return mutex;
}

// fork() while another thread was loading the library copied the mutex locked into the child,
// whose first closure with a model then waited for ever (probe round fourteen: a C host forking
// while a thread creates its closure, Python multiprocessing beside a thread making a Closure).
// fork now waits for a load under way to finish: the child finds the mutex free and the library
// either loaded or not yet (then it loads its own). Then it waits for the calls into ONNX Runtime
// under way (the gate above). One handler, in this order: a load holds load_mutex while it calls
// ONNX Runtime, never the other way round.
void prepare_fork() {
  load_mutex().lock();
  OrtCallGate* gate = call_gate().load(std::memory_order_acquire);
  std::unique_lock<std::mutex> lock(gate->mutex);
  gate->forking = true;
  gate->changed.wait(lock, [gate] { return gate->active == 0; });
}

void parent_after_fork() {
  OrtCallGate* gate = call_gate().load(std::memory_order_acquire);
  {
    std::lock_guard<std::mutex> lock(gate->mutex);
    gate->forking = false;
  }
  gate->changed.notify_all();
  load_mutex().unlock();
}

// The parent's gate may hold waiters (threads the child does not have) on its condition variable:
// the child leaves it alone and starts a fresh one.
void child_after_fork() {
  call_gate().store(new OrtCallGate, std::memory_order_release);
  load_mutex().unlock();
}

const int kForkHandlers = pthread_atfork(prepare_fork, parent_after_fork, child_after_fork);

}  // namespace

std::string dangling_link_of(const std::string& path) {
  std::string prefix = path;
  while (!prefix.empty()) {
    while (prefix.size() > 1 && prefix.back() == '/') prefix.pop_back();
    struct stat link {}, target {};
    if (::lstat(prefix.c_str(), &link) == 0 && S_ISLNK(link.st_mode) && ::stat(prefix.c_str(), &target) != 0 &&
        errno == ENOENT) {
      // A chain of links is followed to the name that is missing: "chain2" alone was called missing
      // where it is a link to a file that is.
      std::string chain, at = prefix;
      for (int hops = 0; hops < 40; ++hops) {
        std::string to(PATH_MAX, '\0');
        const ssize_t length = ::readlink(at.c_str(), &to[0], to.size());
        if (length < 0) break;
        to.resize(static_cast<std::size_t>(length));
        chain += (chain.empty() ? "" : " -> ") + quoted_path(to);
        const std::size_t slash = at.find_last_of('/');
        at = (!to.empty() && to[0] == '/') || slash == std::string::npos ? to : at.substr(0, slash + 1) + to;
        if (::lstat(at.c_str(), &link) != 0 || !S_ISLNK(link.st_mode)) break;
      }
      if (chain.empty()) return "";
      return (prefix == path ? std::string() : "under " + quoted_path(prefix) + ", ") + "a symbolic link to " + chain +
             ", which does not exist (a dangling link: its target was moved or deleted)";
    }
    const std::size_t slash = prefix.find_last_of('/');
    if (slash == std::string::npos || slash == 0) break;
    prefix.resize(slash);
  }
  return "";
}

const OrtLibrary& load_onnxruntime(const std::string& explicit_path) {
  // Loaded once; a failed attempt may be retried (e.g. after fixing the environment variable).
  static OrtLibrary* loaded = nullptr;
  (void)kForkHandlers;
  std::lock_guard<std::mutex> lock(load_mutex());
  if (!loaded) {
    // Under the sessions' lock too: another copy of the runtime in the process (its own load_mutex)
    // may be loading the library or making a session from the environment this makes, and
    // ThreadSanitizer reported those as races (C round forty-three). Taken after load_mutex, as fork
    // takes them; a session's creation holds it without load_mutex.
    const std::lock_guard<std::mutex> one_at_a_time(session_creation_mutex());
    // A failed allocation here (the list of paths tried, before dlopen maps anything) was "out of
    // memory (the address-space limit ...)", naming nothing (outside probe, C round forty-six: a limit
    // at the host's size that the package's read fitted under). Static text: with no room left, no
    // message can be made before the call has unwound. One inside ONNX Runtime's own static
    // initialisers, run by dlopen, ends the host in std::terminate: not ours to catch.
    try {
      loaded = new OrtLibrary(open_library(explicit_path));  // lives until process exit
    } catch (const std::bad_alloc&) {
      throw OutOfMemoryFor("not enough memory to look for and load the ONNX Runtime library");
    }
    // Made after ONNX Runtime's static objects, so destroyed before them at exit.
    static StaticDestructionMarker marker;
    (void)marker;
  }
  return *loaded;
}

}  // namespace dodo::runtime
